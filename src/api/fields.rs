//! Reading a JSON request body field by field, so that every refusal names the field, what was
//! wrong with it and what it allows. Unknown fields are refused with the list of known ones.

use serde_json::{Map, Value};

use super::error::ApiError;

/// The fields of one JSON object body. Call [`Fields::finish`] after reading every field the
/// action knows, so that misspelt fields are reported instead of ignored.
pub struct Fields {
    map: Map<String, Value>,
    known: Vec<&'static str>,
    /// Where this object sits in the body (`capabilities.devices.`), for the field names of
    /// refusals; empty for the body itself.
    path: String,
}

impl Fields {
    /// Parses `body` as a JSON object.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body must be a JSON object: {e}")))?;
        match value {
            Value::Object(map) => Ok(Fields { map, known: Vec::new(), path: String::new() }),
            _ => Err(ApiError::bad_request(
                "the body must be a JSON object, e.g. {\"action\": \"list_auth_keys\", \"org_id\": \"org_…\"}",
            )),
        }
    }

    /// A refusal of field `name` of this object, named by its path in the body.
    fn bad(&self, name: &str, message: impl std::fmt::Display) -> ApiError {
        ApiError::bad_field(&format!("{}{name}", self.path), message)
    }

    /// A nested object, read field by field like the body (and finished by the caller).
    pub fn object(&mut self, name: &'static str) -> Result<Option<Fields>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Object(map)) => {
                Ok(Some(Fields { map, known: Vec::new(), path: format!("{}{name}.", self.path) }))
            }
            Some(other) => Err(self.bad(name, format!("must be an object, got {}", kind(&other)))),
        }
    }

    fn take(&mut self, name: &'static str) -> Option<Value> {
        self.known.push(name);
        match self.map.remove(name) {
            Some(Value::Null) | None => None,
            Some(v) => Some(v),
        }
    }

    pub fn opt_str(&mut self, name: &'static str) -> Result<Option<String>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.bad(name, format!("must be a string, got {}", kind(&other)))),
        }
    }

    pub fn str(&mut self, name: &'static str) -> Result<String, ApiError> {
        self.opt_str(name)?.ok_or_else(|| self.bad(name, "is required (a string)"))
    }

    pub fn bool_or(&mut self, name: &'static str, default: bool) -> Result<bool, ApiError> {
        Ok(self.opt_bool(name)?.unwrap_or(default))
    }

    pub fn opt_bool(&mut self, name: &'static str) -> Result<Option<bool>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(self.bad(name, format!("must be true or false, got {}", kind(&other)))),
        }
    }

    pub fn opt_u64(&mut self, name: &'static str) -> Result<Option<u64>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                n.as_u64().map(Some).ok_or_else(|| self.bad(name, format!("must be a non-negative integer, got {n}")))
            }
            Some(other) => Err(self.bad(name, format!("must be a non-negative integer, got {}", kind(&other)))),
        }
    }

    pub fn string_list(&mut self, name: &'static str) -> Result<Vec<String>, ApiError> {
        match self.take(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s),
                    other => Err(self.bad(name, format!("must be a list of strings, found {}", kind(&other)))),
                })
                .collect(),
            Some(other) => Err(self.bad(name, format!("must be a list of strings, got {}", kind(&other)))),
        }
    }

    /// A list of strings that may be left out (`None`), unlike an empty list.
    pub fn opt_string_list(&mut self, name: &'static str) -> Result<Option<Vec<String>>, ApiError> {
        if self.map.get(name).is_none_or(|v| v.is_null()) {
            self.known.push(name);
            self.map.remove(name);
            return Ok(None);
        }
        self.string_list(name).map(Some)
    }

    /// Refuses any field that was not read.
    pub fn finish(self) -> Result<(), ApiError> {
        if let Some(unknown) = self.map.keys().next() {
            return Err(self.bad(unknown, format!("unknown field; this action accepts {}", self.known.join(", "))));
        }
        Ok(())
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// An optional client-chosen request id: 1 to 128 printable ASCII characters.
pub fn request_id(fields: &mut Fields) -> Result<Option<String>, ApiError> {
    match fields.opt_str("request_id")? {
        None => Ok(None),
        Some(id) if (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(id)),
        Some(_) => Err(ApiError::bad_field("request_id", "must be 1 to 128 printable ASCII characters without spaces")),
    }
}

/// Checks an id of the form `<prefix><12 letters or digits>` (`ak_…`, `m_…`).
pub fn check_id(field: &str, prefix: &str, value: &str) -> Result<(), ApiError> {
    let id_len = crate::secret::ID_LEN;
    let ok = value
        .strip_prefix(prefix)
        .is_some_and(|id| id.len() == id_len && id.bytes().all(|b| b.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_field(
            field,
            format!("must be \"{prefix}\" followed by {id_len} letters or digits, got {:?}", short(value)),
        ))
    }
}

/// Checks an org id: `org_` followed by 8 letters or digits.
pub fn check_org_id(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = value
        .strip_prefix(crate::sm::model::ORG_ID_PREFIX)
        .is_some_and(|id| id.len() == 8 && id.bytes().all(|b| b.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_field(
            field,
            format!("must be \"org_\" followed by 8 letters or digits, got {:?}", short(value)),
        ))
    }
}

/// At most 64 characters of `value`, for an error message about it.
fn short(value: &str) -> String {
    let mut text: String = value.chars().take(64).collect();
    if text.len() < value.len() {
        text.push('…');
    }
    text
}
