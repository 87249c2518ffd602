//! Consul's ACL API, as far as the Consul servers' agents keep the cluster's ACL objects
//! with it (`roles::consul::acl`): policies read by name and written, tokens listed,
//! written and deleted. Every call needs a token with `acl = "write"` (the management
//! token).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Consul, ConsulError};

/// A policy: its rules in Consul's HCL. `id` is empty for one not created yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclPolicy {
    #[serde(rename = "ID", default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Description", default)]
    pub description: String,
    #[serde(rename = "Rules", default)]
    pub rules: String,
}

/// A link from a token to a policy, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyLink {
    #[serde(rename = "Name")]
    pub name: String,
}

/// A node identity: `node "<name>" write` and `service_prefix "" read`, what a Consul
/// agent's own token needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    #[serde(rename = "NodeName")]
    pub node_name: String,
    #[serde(rename = "Datacenter")]
    pub datacenter: String,
}

/// A token as written (with its secret) or as listed (`secret_id` may be empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclToken {
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    #[serde(rename = "SecretID", default, skip_serializing_if = "String::is_empty")]
    pub secret_id: String,
    #[serde(rename = "Description", default)]
    pub description: String,
    #[serde(rename = "Policies", default, deserialize_with = "null_is_empty")]
    pub policies: Vec<PolicyLink>,
    #[serde(rename = "NodeIdentities", default, deserialize_with = "null_is_empty")]
    pub node_identities: Vec<NodeIdentity>,
}

/// Consul writes `null` for an empty list.
fn null_is_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

impl Consul {
    fn encode<T: Serialize>(&self, what: &str, value: &T) -> Result<Vec<u8>, ConsulError> {
        serde_json::to_vec(value).map_err(|e| ConsulError::Decode {
            addr: self.addr.clone(),
            what: what.to_string(),
            detail: e.to_string(),
        })
    }

    async fn send_json(
        &self,
        method: http::Method,
        path: &str,
        what: &str,
        body: Vec<u8>,
    ) -> Result<Bytes, ConsulError> {
        let (status, reply) = self.call(method, path, Some(body)).await?;
        self.expect_ok(what, status, &reply)?;
        Ok(reply)
    }

    /// The policy named `name`; `None` when there is none.
    pub async fn acl_policy(&self, name: &str) -> Result<Option<AclPolicy>, ConsulError> {
        let what = format!("GET acl/policy/name/{name}");
        let (status, body) = self.call(http::Method::GET, &format!("/v1/acl/policy/name/{name}"), None).await?;
        // Consul 1.8 answers 403 "ACL not found" for a name it does not know, later ones 404.
        if status == 404 || (status == 403 && String::from_utf8_lossy(&body).contains("not found")) {
            return Ok(None);
        }
        self.expect_ok(&what, status, &body)?;
        // Some versions answer 200 with `null`.
        self.decode::<Option<AclPolicy>>(&what, &body)
    }

    /// Creates `policy` (empty `id`) or replaces the one with its `id`.
    pub async fn put_acl_policy(&self, policy: &AclPolicy) -> Result<(), ConsulError> {
        let (path, what) = if policy.id.is_empty() {
            ("/v1/acl/policy".to_string(), format!("create ACL policy {}", policy.name))
        } else {
            (format!("/v1/acl/policy/{}", policy.id), format!("update ACL policy {}", policy.name))
        };
        let body = self.encode(&what, policy)?;
        self.send_json(http::Method::PUT, &path, &what, body).await.map(drop)
    }

    /// Every token (their secrets may be left out).
    pub async fn acl_tokens(&self) -> Result<Vec<AclToken>, ConsulError> {
        let what = "GET acl/tokens";
        let (status, body) = self.call(http::Method::GET, "/v1/acl/tokens", None).await?;
        self.expect_ok(what, status, &body)?;
        Ok(self.decode::<Option<Vec<AclToken>>>(what, &body)?.unwrap_or_default())
    }

    /// Creates `token` with its own accessor and secret ids (`create`), or replaces the
    /// description and links of the existing one.
    pub async fn put_acl_token(&self, token: &AclToken, create: bool) -> Result<(), ConsulError> {
        let (path, what) = if create {
            ("/v1/acl/token".to_string(), format!("create ACL token {}", token.accessor_id))
        } else {
            (format!("/v1/acl/token/{}", token.accessor_id), format!("update ACL token {}", token.accessor_id))
        };
        let body = self.encode(&what, token)?;
        self.send_json(http::Method::PUT, &path, &what, body).await.map(drop)
    }

    /// Deletes the token `accessor_id`.
    pub async fn delete_acl_token(&self, accessor_id: &str) -> Result<(), ConsulError> {
        let what = format!("DELETE acl/token/{accessor_id}");
        let (status, body) = self.call(http::Method::DELETE, &format!("/v1/acl/token/{accessor_id}"), None).await?;
        self.expect_ok(&what, status, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_as_consul_lists_them_and_write_without_an_empty_secret() {
        let listed = r#"[{"AccessorID":"a","Description":"d","Policies":null,"NodeIdentities":[{"NodeName":"m0","Datacenter":"c"}],"Local":false}]"#;
        let t: Vec<AclToken> = serde_json::from_str(listed).expect("parses");
        assert_eq!(t[0].node_identities, vec![NodeIdentity { node_name: "m0".into(), datacenter: "c".into() }]);
        assert!(t[0].policies.is_empty());
        let written = serde_json::to_string(&AclToken { accessor_id: "a".into(), ..Default::default() }).expect("json");
        assert!(!written.contains("SecretID"), "{written}");
    }
}
