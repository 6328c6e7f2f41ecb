//! The Tailscale-compatible keys API, driven by a client written only from Tailscale's
//! published API documentation (its shapes are declared here, not shared with the server):
//! create, list, get and delete round-trip, and what Tailscale has that this store lacks is
//! refused with a 400 naming the field.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::support::Cluster;

/// `capabilities` of a key, as Tailscale documents it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyCapabilities {
    devices: KeyDeviceCapabilities,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyDeviceCapabilities {
    create: KeyDeviceCreateCapabilities,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyDeviceCreateCapabilities {
    reusable: bool,
    ephemeral: bool,
    preauthorized: bool,
    tags: Vec<String>,
}

/// The body of "Create auth key".
#[derive(Debug, Serialize)]
struct CreateKeyRequest {
    capabilities: KeyCapabilities,
    #[serde(rename = "expirySeconds")]
    expiry_seconds: i64,
    description: String,
}

/// Tailscale's `Key`.
#[derive(Debug, Deserialize)]
struct Key {
    id: String,
    #[serde(default)]
    key: Option<String>,
    created: String,
    expires: String,
    #[serde(default)]
    revoked: Option<String>,
    #[serde(default)]
    invalid: bool,
    capabilities: KeyCapabilities,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
struct ListKeys {
    keys: Vec<Key>,
}

/// A Tailscale API client: base URL, tailnet, and the API key sent as Tailscale's Go client
/// sends it (basic authentication, the key as the user name) or as a bearer token.
struct Client {
    http: reqwest::Client,
    base: String,
    tailnet: String,
    api_key: String,
    basic: bool,
}

impl Client {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}/api/v2/tailnet/{}{path}", self.base, self.tailnet);
        let request = self.http.request(method, url);
        if self.basic {
            request.basic_auth(&self.api_key, Some(""))
        } else {
            request.bearer_auth(&self.api_key)
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn create(&self, body: &CreateKeyRequest) -> Key {
        let (status, answer) = self.send(self.request(reqwest::Method::POST, "/keys").json(body)).await;
        assert_eq!(status, 200, "create: {answer}");
        serde_json::from_value(answer).expect("a Key")
    }

    async fn get(&self, id: &str) -> (u16, Value) {
        self.send(self.request(reqwest::Method::GET, &format!("/keys/{id}"))).await
    }

    async fn list(&self) -> ListKeys {
        let (status, answer) = self.send(self.request(reqwest::Method::GET, "/keys")).await;
        assert_eq!(status, 200, "list: {answer}");
        serde_json::from_value(answer).expect("a key list")
    }

    async fn delete(&self, id: &str) -> u16 {
        self.send(self.request(reqwest::Method::DELETE, &format!("/keys/{id}"))).await.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailscale_clients_create_list_get_and_delete_keys() {
    let cluster = Cluster::start().await;
    let client = |node: u64, basic: bool| Client {
        http: cluster.http.clone(),
        base: cluster.url(node),
        tailnet: "-".into(),
        api_key: cluster.api_key.clone(),
        basic,
    };
    let tf = client(2, true);

    // Create, as the Terraform provider's tailscale_tailnet_key does.
    let request = CreateKeyRequest {
        capabilities: KeyCapabilities {
            devices: KeyDeviceCapabilities {
                create: KeyDeviceCreateCapabilities {
                    reusable: true,
                    ephemeral: false,
                    preauthorized: true,
                    tags: vec!["tag:server".into()],
                },
            },
        },
        expiry_seconds: 86_400,
        description: "terraform".into(),
    };
    let created = tf.create(&request).await;
    let secret = created.key.clone().expect("the key, on creation");
    assert!(secret.starts_with(&format!("tskey-auth-{}-", created.id)), "{secret} does not carry id {}", created.id);
    assert!(!created.invalid);
    assert_eq!(created.description, "terraform");
    assert_eq!(created.capabilities.devices.create.tags, ["tag:server"]);
    assert!(created.capabilities.devices.create.reusable && created.capabilities.devices.create.preauthorized);
    let lifetime = time::OffsetDateTime::parse(&created.expires, &time::format_description::well_known::Rfc3339)
        .expect("expires")
        - time::OffsetDateTime::parse(&created.created, &time::format_description::well_known::Rfc3339)
            .expect("created");
    assert_eq!(lifetime.whole_seconds(), 86_400);

    // The key is a real one: a machine enrols with it.
    let (status, machine) = cluster.enrol(1, &secret, 77).await;
    assert_eq!(status, 200, "{machine}");

    // Get and list, through other nodes and with a bearer token; the secret is never shown again.
    let bearer = client(3, false);
    let (status, got) = bearer.get(&created.id).await;
    assert_eq!(status, 200, "{got}");
    let got: Key = serde_json::from_value(got).expect("a Key");
    assert_eq!((got.id.as_str(), got.key.as_deref(), got.invalid), (created.id.as_str(), None, false));
    assert_eq!(got.created, created.created);
    let listed = client(1, true).list().await;
    assert!(listed.keys.iter().any(|k| k.id == created.id && k.key.is_none()), "{listed:?}");

    // A one-shot key with the capabilities left out entirely.
    let (status, bare) =
        tf.send(tf.request(reqwest::Method::POST, "/keys").json(&json!({"capabilities": {"devices": {}}}))).await;
    assert_eq!(status, 200, "{bare}");
    assert_eq!(bare["capabilities"]["devices"]["create"]["reusable"], false);

    // Delete: the key is invalid and revoked, gone from the list, and enrols nothing.
    assert_eq!(tf.delete(&created.id).await, 200);
    let (status, gone) = bearer.get(&created.id).await;
    assert_eq!(status, 200, "{gone}");
    let gone: Key = serde_json::from_value(gone).expect("a Key");
    assert!(gone.invalid && gone.revoked.is_some(), "{gone:?}");
    assert!(!client(1, false).list().await.keys.iter().any(|k| k.id == created.id));
    let (status, refused) = cluster.enrol(1, &secret, 78).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (403, Some("key_revoked")));

    // What Tailscale has and this store does not: a 400 naming the field; nothing is created.
    let before = client(1, true).list().await.keys.len();
    let refusals = [
        (json!({"capabilities": {"devices": {"create": {}}}, "expirySeconds": 7_776_000}), "expirySeconds"),
        (json!({"keyType": "client", "capabilities": {"devices": {}}}), "keyType"),
        (json!({"capabilities": {"devices": {"create": {"tags": ["server"]}}}}), "capabilities.devices.create.tags"),
        (json!({"capabilities": {"devices": {"create": {"reusable": "yes"}}}}), "capabilities.devices.create.reusable"),
        (json!({"capabilities": {"devices": {"create": {}}}, "scopes": ["all"]}), "scopes"),
        (json!({"capabilities": {"devices": {"create": {}, "read": {}}}}), "capabilities.devices.read"),
        (json!({"expirySeconds": 3600}), "capabilities"),
    ];
    for (body, field) in refusals {
        let (status, answer) = tf.send(tf.request(reqwest::Method::POST, "/keys").json(&body)).await;
        assert_eq!(status, 400, "{body} → {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(field), "{body} → {message}");
        assert_eq!(answer["field"], field, "{body} → {answer}");
    }
    assert_eq!(client(1, true).list().await.keys.len(), before, "a refused create made a key");

    // Other tailnets, other orgs, the operator key and no key at all.
    let elsewhere = Client { tailnet: "example.com".into(), ..client(1, true) };
    assert_eq!(elsewhere.send(elsewhere.request(reqwest::Method::GET, "/keys")).await.0, 404);
    let operator = Client { api_key: cluster.operator_key.clone(), ..client(1, false) };
    assert_eq!(operator.send(operator.request(reqwest::Method::GET, "/keys")).await.0, 403);
    let anonymous =
        cluster.http.get(format!("{}/api/v2/tailnet/-/keys", cluster.url(1))).send().await.expect("request");
    assert_eq!(anonymous.status().as_u16(), 401);
    let (status, _) = tf.get("nosuchkey12345").await;
    assert_eq!(status, 404);
    let basic_garbage = base64::engine::general_purpose::STANDARD.encode("not-a-key:");
    let garbage = cluster
        .http
        .get(format!("{}/api/v2/tailnet/-/keys", cluster.url(1)))
        .header("authorization", format!("Basic {basic_garbage}"))
        .send()
        .await
        .expect("request");
    assert_eq!(garbage.status().as_u16(), 401);
}
