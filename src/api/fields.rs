//! Request bodies as types: each handler reads its body into a struct (or, for the action-style
//! endpoints, an enum of one struct per `action`) that both deserializes the request and
//! describes it in the OpenAPI document (`openapi`), so the document cannot drift from what the
//! handler accepts. Ids, names, tags and addresses are types here ([`OrgId`], [`Tag`], …) whose
//! deserializer checks them and whose schema says the same limits.
//!
//! Every refusal names the field (`capabilities.devices.create.tags[2]`), what was wrong with it
//! and what it allows; unknown fields are refused with the list of known ones. A field sent as
//! `null` is a field left out wherever it may be left out.
//!
//! This module checks shapes only; what a value means for a key or a machine is the state
//! machine's decision.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::openapi::schema::{Object, ObjectBuilder, OneOf, Schema, Type};
use utoipa::openapi::{Discriminator, RefOr};

use super::error::ApiError;
use crate::secret::ID_LEN;
use crate::sm::model::{
    API_KEY_ID_PREFIX, AUTH_KEY_ID_PREFIX, MACHINE_ID_PREFIX, MAX_DESCRIPTION_CHARS, MAX_TAGS, MAX_TAG_NAME,
    ORG_ID_PREFIX,
};

/// Reads `body` (a JSON object) as `T`.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    from_object(object(body)?)
}

/// Reads `body` as `T`, an empty body being `{}` (endpoints whose every field is optional).
pub fn parse_or_empty<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return from_object(Map::new());
    }
    parse(body)
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body must be a JSON object: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::bad_request(
            "the body must be a JSON object, e.g. {\"action\": \"list_auth_keys\", \"org_id\": \"org_…\"}",
        )),
    }
}

/// Reads an object as `T`, naming the field at fault in the refusal.
fn from_object<T: DeserializeOwned>(map: Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        refusal(if path == "." { "" } else { &path }, &message)
    })
}

/// serde's message as a refusal of a field: `missing field `x`` and `unknown field `x`, expected
/// …` name their field inside the object at `path`.
fn refusal(path: &str, message: &str) -> ApiError {
    let within = |name: &str| if path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
    if let Some(name) = quoted_after(message, "missing field `") {
        return ApiError::bad_field(&within(name), "is required");
    }
    if let Some(name) = quoted_after(message, "unknown field `") {
        // The path already ends at the unknown field (a name the client chose: shortened).
        let field = short(&if path.ends_with(name) { path.to_string() } else { within(name) });
        let accepts = match message.rsplit_once(", expected ") {
            Some((_, known)) => format!("this request accepts {}", listed(known)),
            None => "this request takes no fields".to_string(),
        };
        return ApiError::bad_field(&field, format!("unknown field; {accepts}"));
    }
    if path.is_empty() {
        return ApiError::bad_request(plain(message));
    }
    // The message names the item (`tags[2]`); `field` names the field, for a form to put the
    // message beside.
    let mut refusal = ApiError::bad_field(path, plain(message));
    let mut field = path;
    while let Some(open) = field.strip_suffix(']').and_then(|f| f.rfind('[')) {
        field = &field[..open];
    }
    refusal.field = Some(field.to_string());
    refusal
}

/// serde's wording of a wrong value, as this API words it: `must be true or false, got …`.
fn plain(message: &str) -> String {
    // `got` quotes the client's value (which may itself hold ", expected "): split at the last.
    let wrong = message.strip_prefix("invalid type: ").or_else(|| message.strip_prefix("invalid value: "));
    if let Some((got, expected)) = wrong.and_then(|rest| rest.rsplit_once(", expected ")) {
        let wanted = match expected {
            "u64" | "u32" | "u16" | "usize" => "a non-negative integer",
            "a boolean" => "true or false",
            "a sequence" => "a list",
            "a map" => "an object",
            e if e.starts_with("struct ") => "an object",
            e => e,
        };
        return format!("must be {wanted}, got {}", short(&got.replace('`', "")));
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (value, expected) = rest.rsplit_once("`, expected ").unwrap_or((rest, ""));
        return format!("unknown value {:?}; must be one of {}", short(value), listed(expected));
    }
    short(&message.replace('`', ""))
}

/// serde's list of names (`one of `a`, `b``, `` `a` or `b` ``) as `a, b`.
fn listed(names: &str) -> String {
    names.trim_start_matches("one of ").replace('`', "").replace(" or ", ", ")
}

fn quoted_after<'a>(message: &'a str, start: &str) -> Option<&'a str> {
    message.strip_prefix(start)?.split('`').next()
}

/// The `action` of an action-style body and the rest of its fields.
pub fn split_action(body: &[u8], actions: &[&str]) -> Result<(String, Map<String, Value>), ApiError> {
    let mut map = object(body)?;
    match map.remove("action") {
        Some(Value::String(action)) if actions.contains(&action.as_str()) => Ok((action, map)),
        Some(Value::String(other)) => Err(ApiError::bad_field(
            "action",
            format!("unknown action {:?}; must be one of {}", short(&other), actions.join(", ")),
        )),
        None | Some(Value::Null) => {
            Err(ApiError::bad_field("action", format!("is required; one of {}", actions.join(", "))))
        }
        Some(_) => Err(ApiError::bad_field("action", format!("must be a string, one of {}", actions.join(", ")))),
    }
}

/// Reads the fields of one action as `T`.
pub fn action_body<T: DeserializeOwned>(rest: Map<String, Value>) -> Result<T, ApiError> {
    from_object(rest)
}

/// The schema of an action-style body: one object per action, each the action's own fields
/// plus `"action": "<name>"`, told apart by `action`.
pub fn action_union(actions: Vec<(&'static str, RefOr<Schema>)>) -> RefOr<Schema> {
    let mut union = OneOf::new();
    for (name, schema) in actions {
        let mut object = match schema {
            RefOr::T(Schema::Object(object)) => object,
            _ => Object::new(),
        };
        let action = ObjectBuilder::new().schema_type(Type::String).enum_values(Some([name])).build();
        object.properties.insert("action".to_string(), action.into());
        object.required.insert(0, "action".to_string());
        object.title = Some(name.to_string());
        union.items.push(Schema::Object(object).into());
    }
    union.discriminator = Some(Discriminator::new("action"));
    Schema::OneOf(union).into()
}

/// An enum of one body type per `action` of an action-style endpoint: its `parse` reads a
/// request, its schema is [`action_union`] of the actions' bodies, and `ACTIONS` lists them.
macro_rules! actions {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($action:literal => $variant:ident($body:ty),)+ }) => {
        $(#[$meta])*
        $vis enum $name {
            $($variant($body),)+
        }

        impl $name {
            pub const ACTIONS: &'static [&'static str] = &[$($action),+];

            pub fn parse(body: &[u8]) -> Result<Self, $crate::api::error::ApiError> {
                let (action, rest) = $crate::api::fields::split_action(body, Self::ACTIONS)?;
                match action.as_str() {
                    $($action => Ok($name::$variant($crate::api::fields::action_body(rest)?)),)+
                    other => Err($crate::api::error::ApiError::bad_field(
                        "action",
                        format!("unknown action {:?}", $crate::api::fields::short(other)),
                    )),
                }
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $crate::api::fields::action_union(vec![
                    $(($action, <$body as utoipa::PartialSchema>::schema()),)+
                ])
            }
        }

        impl utoipa::ToSchema for $name {
            fn schemas(
                schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>,
            ) {
                $(<$body as utoipa::ToSchema>::schemas(schemas);)+
            }
        }
    };
}
pub(crate) use actions;

/// A string type whose deserializer checks it and whose schema states the same rule.
macro_rules! checked_string {
    ($(#[$meta:meta])* $name:ident, $check:expr, $schema:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                let check: fn(&str) -> Result<(), String> = $check;
                check(&text).map_err(D::Error::custom)?;
                Ok($name(text))
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                let schema: ObjectBuilder = $schema;
                schema.schema_type(Type::String).build().into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl $name {
            pub fn into_inner(self) -> String {
                self.0
            }
        }
    };
}

/// `<prefix>` followed by [`ID_LEN`] letters or digits (`ak_…`, `api_…`, `m_…`).
pub fn check_prefixed(prefix: &str, len: usize, value: &str) -> Result<(), String> {
    let ok =
        value.strip_prefix(prefix).is_some_and(|id| id.len() == len && id.bytes().all(|b| b.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(format!("must be \"{prefix}\" followed by {len} letters or digits, got {:?}", short(value)))
    }
}

fn id_schema(prefix: &str, len: usize, what: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .pattern(Some(format!("^{prefix}[A-Za-z0-9]{{{len}}}$")))
        .description(Some(what.to_string()))
        .examples([format!("{prefix}{}", "a1B2c3D4e5F6g7H8".chars().take(len).collect::<String>())])
}

/// Longest name of an org.
pub const MAX_NAME: usize = 128;

checked_string!(
    /// An org id: `org_` and 8 letters or digits.
    OrgId,
    |v| check_prefixed(ORG_ID_PREFIX, 8, v),
    id_schema(ORG_ID_PREFIX, 8, "An org's id.")
);
checked_string!(
    /// An auth key's id, `ak_…` (its public part: `tskey-auth-<id>-…`).
    AuthKeyId,
    |v| check_prefixed(AUTH_KEY_ID_PREFIX, ID_LEN, v),
    id_schema(AUTH_KEY_ID_PREFIX, ID_LEN, "An auth key's id.")
);
checked_string!(
    /// An API key's id, `api_…`.
    ApiKeyId,
    |v| check_prefixed(API_KEY_ID_PREFIX, ID_LEN, v),
    id_schema(API_KEY_ID_PREFIX, ID_LEN, "An API key's id.")
);
checked_string!(
    /// A machine's id, `m_…`.
    MachineId,
    |v| check_prefixed(MACHINE_ID_PREFIX, ID_LEN, v),
    id_schema(MACHINE_ID_PREFIX, ID_LEN, "A machine's id.")
);
checked_string!(
    /// A client-chosen request id: a retry with the same id applies once.
    RequestId,
    |v| {
        if (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(())
        } else {
            Err("must be 1 to 128 printable ASCII characters without spaces".to_string())
        }
    },
    ObjectBuilder::new()
        .pattern(Some("^[!-~]{1,128}$"))
        .min_length(Some(1))
        .max_length(Some(128))
        .description(Some(
            "Chosen by the client, unique per write: a retry with the same request_id (after a 503 or a lost \
             answer) applies once. Made by the node when left out."
        ))
);
checked_string!(
    /// A machine's host name.
    Hostname,
    |v| {
        let ok = (1..=253).contains(&v.len())
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if ok {
            Ok(())
        } else {
            Err("must be 1 to 253 characters of letters, digits, '-', '_' or '.'".to_string())
        }
    },
    ObjectBuilder::new().pattern(Some("^[A-Za-z0-9._-]{1,253}$")).min_length(Some(1)).max_length(Some(253))
);
checked_string!(
    /// A machine's X25519 public key, 64 hexadecimal characters.
    NodePublicKey,
    |v| {
        if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err("must be 64 hexadecimal characters (a 32-byte public key)".to_string())
        }
    },
    ObjectBuilder::new()
        .pattern(Some("^[0-9a-fA-F]{64}$"))
        .description(Some("The machine's X25519 public key in hex (canonical: below 2^255 - 19)."))
);
checked_string!(
    /// A name (an org's): 1 to [`MAX_NAME`] characters, not only spaces, no control characters.
    Name,
    |v| {
        if v.trim().is_empty() || v.chars().count() > MAX_NAME || v.chars().any(char::is_control) {
            Err(format!("must be 1 to {MAX_NAME} printable characters"))
        } else {
            Ok(())
        }
    },
    ObjectBuilder::new()
        .pattern(Some(r"^[^\u0000-\u001f\u007f-\u009f]*$"))
        .min_length(Some(1))
        .max_length(Some(MAX_NAME))
);
checked_string!(
    /// A description: at most [`MAX_DESCRIPTION_CHARS`] characters, no control characters.
    Description,
    |v| {
        if v.chars().count() > MAX_DESCRIPTION_CHARS || v.chars().any(char::is_control) {
            Err(format!("must be at most {MAX_DESCRIPTION_CHARS} printable characters"))
        } else {
            Ok(())
        }
    },
    ObjectBuilder::new()
        .pattern(Some(r"^[^\u0000-\u001f\u007f-\u009f]*$"))
        .max_length(Some(MAX_DESCRIPTION_CHARS))
);
checked_string!(
    /// A tag: `tag:` and 1 to [`MAX_TAG_NAME`] lowercase letters, digits or `-`.
    Tag,
    |v| crate::sm::model::validate_tags(&[v.to_string()]).map_err(|e| e.message),
    ObjectBuilder::new()
        .pattern(Some(format!("^tag:[a-z0-9-]{{1,{MAX_TAG_NAME}}}$")))
        .examples(["tag:laptop"])
);
checked_string!(
    /// A `host:port` address (a node's): letters, digits, `.`, `-`, IPv6 in `[]`.
    HostPort,
    |v| {
        let valid = v.len() <= 255
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            && v.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if valid {
            Ok(())
        } else {
            Err(format!("must be host:port (letters, digits, '.', '-', IPv6 in []; port 1 to 65535), got {:?}", short(v)))
        }
    },
    ObjectBuilder::new()
        .pattern(Some(r"^[A-Za-z0-9.\-:\[\]]+:[0-9]{1,5}$"))
        .max_length(Some(255))
        .examples(["10.0.0.4:7001"])
);

/// A body without fields (`{}`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// A body whose only field is its request id.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestOnly {
    pub request_id: Option<RequestId>,
}

/// A list of tags: at most [`MAX_TAGS`], each a [`Tag`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Tags(pub Vec<String>);

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let tags = Vec::<Tag>::deserialize(deserializer)?;
        if tags.len() > MAX_TAGS {
            return Err(D::Error::custom(format!("at most {MAX_TAGS} tags")));
        }
        Ok(Tags(tags.into_iter().map(Tag::into_inner).collect()))
    }
}

impl utoipa::PartialSchema for Tags {
    fn schema() -> RefOr<Schema> {
        utoipa::openapi::schema::ArrayBuilder::new().items(Tag::schema()).max_items(Some(MAX_TAGS)).build().into()
    }
}

impl utoipa::ToSchema for Tags {}

/// At most 64 characters of `value`, for an error message about it.
pub fn short(value: &str) -> String {
    let mut text: String = value.chars().take(64).collect();
    if text.len() < value.len() {
        text.push('…');
    }
    text
}

/// A request id from the request, or a new one.
pub fn request_id_or_new(id: Option<RequestId>) -> String {
    id.map_or_else(super::new_request_id, RequestId::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[allow(dead_code)]
        org_id: OrgId,
        tags: Option<Tags>,
    }

    #[test]
    fn refusals_name_the_field() {
        let e = parse::<Sample>(br#"{"org_id": "org_12345678", "tags": ["tag:a", "Tag:B"]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("tags"), "{e:?}");
        assert!(e.message.starts_with("tags[1]: "), "{e:?}");
        let e = parse::<Sample>(br#"{"org_id": "nope"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("org_id"));
        assert!(e.message.contains("org_"), "{}", e.message);
        let e = parse::<Sample>(br#"{"tags": []}"#).unwrap_err();
        assert_eq!((e.field.as_deref(), e.message.as_str()), (Some("org_id"), "org_id: is required"));
        let e = parse::<Sample>(br#"{"org_id": "org_12345678", "colour": 1}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("colour"));
        assert!(e.message.contains("accepts org_id, tags"), "{}", e.message);
        let e = parse::<Sample>(br#"{"org_id": "org_12345678", "tags": "tag:a"}"#).unwrap_err();
        assert_eq!(e.message, "tags: must be a list, got string \"tag:a\"");
        let e = parse::<Sample>(br#"{"org_id": 5}"#).unwrap_err();
        assert_eq!(e.message, "org_id: must be a string, got integer 5");
        // A client's text comes back shortened, however it is sent.
        let long = "x".repeat(10_000);
        for body in [
            format!(r#"{{"org_id": "{long}"}}"#),
            format!(r#"{{"org_id": "org_12345678", "tags": ["{long}"]}}"#),
            format!(r#"{{"org_id": "org_12345678", "{long}": 1}}"#),
            format!(r#"{{"org_id": ["{long}`, expected {long}"]}}"#),
        ] {
            let e = parse::<Sample>(body.as_bytes()).unwrap_err();
            assert!(e.message.len() < 600, "{} bytes: {}", e.message.len(), &e.message[..200]);
        }
        let ok = parse::<Sample>(br#"{"org_id": "org_12345678", "tags": null}"#).unwrap();
        assert!(ok.tags.is_none());
    }

    #[test]
    fn actions_are_named_and_listed() {
        let e = split_action(br#"{"action": "fly"}"#, &["walk", "run"]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("action"));
        assert!(e.message.contains("walk, run"));
        let (action, rest) = split_action(br#"{"action": "run", "x": 1}"#, &["walk", "run"]).unwrap();
        assert_eq!((action.as_str(), rest.len()), ("run", 1));
        assert!(split_action(b"[]", &["run"]).is_err());
    }
}
