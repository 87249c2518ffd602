//! A small client for the Consul HTTP API (the discovery backend): leader and peers for
//! health, KV with check-and-set for the swarm's join data, and the ACL objects the Consul
//! servers keep (`consul/acl.rs`). Plain HTTP to the local Consul server or one on the
//! cluster's private network (see `roles::consul`), every call with the client's ACL token
//! (`X-Consul-Token`): Consul runs with ACLs on and the default policy deny.

mod acl;

pub use acl::{AclPolicy, AclToken, NodeIdentity, PolicyLink};

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one Consul call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a snapshot (`GET /v1/snapshot`) may take: the leader writes its whole state.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("Consul at {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    /// 403: the token does not allow the call (or Consul does not know the token yet).
    #[error(
        "Consul at {addr} refused {what} ({body}): the ACL token lacks the permission, or Consul does not know it (yet)"
    )]
    Denied { addr: String, what: String, body: String },
    #[error("Consul at {addr} answered {status} to {what}: {body}")]
    Status { addr: String, what: String, status: u16, body: String },
    #[error("Consul at {addr}: unexpected answer to {what}: {detail}")]
    Decode { addr: String, what: String, detail: String },
}

#[derive(Clone)]
pub struct Consul {
    addr: String,
    /// The ACL token sent with every call (empty: none, Consul's anonymous token).
    token: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Consul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consul").field("addr", &self.addr).field("token", &!self.token.is_empty()).finish()
    }
}

/// One server in autopilot's health report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct ServerHealth {
    /// The node name (the host's name: servers run with `-node=<host>`).
    #[serde(rename = "Name")]
    pub name: String,
    /// `ip:8300`.
    #[serde(rename = "Address")]
    pub address: String,
    /// alive, failed, left, …
    #[serde(rename = "SerfStatus")]
    pub serf_status: String,
    #[serde(rename = "Leader")]
    pub leader: bool,
    #[serde(rename = "Voter")]
    pub voter: bool,
    #[serde(rename = "Healthy")]
    pub healthy: bool,
    /// The server's node ID (a new one for each fresh data directory).
    #[serde(rename = "ID", default)]
    pub id: String,
    /// The last Raft index the server has.
    #[serde(rename = "LastIndex", default)]
    pub last_index: u64,
    #[serde(rename = "LastTerm", default)]
    pub last_term: u64,
}

/// A KV entry and the index to use for a check-and-set update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    pub value: Vec<u8>,
    pub modify_index: u64,
}

impl Consul {
    /// `addr` is `host:port` of a Consul HTTP API. Calls carry no token (Consul's anonymous
    /// token: enough for `/v1/status/*` only); see [`Consul::with_token`].
    pub fn new(addr: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Self {
            addr: addr.to_string(),
            token: String::new(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// The same client, its calls made with the ACL token `token`.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = token.to_string();
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn call(&self, method: http::Method, path: &str, body: Option<Vec<u8>>) -> Result<(u16, Bytes), ConsulError> {
        self.call_within(CALL_TIMEOUT, method, path, body).await
    }

    async fn call_within(
        &self,
        timeout: Duration,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), ConsulError> {
        let uri = format!("http://{}{}", self.addr, path);
        let mut req = http::Request::builder().method(method).uri(&uri);
        if !self.token.is_empty() {
            req = req.header("X-Consul-Token", &self.token);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ConsulError::Unreachable { addr: self.addr.clone(), detail: e.to_string() })?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ConsulError::Unreachable { addr: self.addr.clone(), detail: e.to_string() })?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ConsulError::Unreachable { addr: self.addr.clone(), detail: e.to_string() })?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(timeout, fut).await.map_err(|_| ConsulError::Unreachable {
            addr: self.addr.clone(),
            detail: format!("no answer within {timeout:?}"),
        })?
    }

    fn expect_ok(&self, what: &str, status: u16, body: &Bytes) -> Result<(), ConsulError> {
        if (200..300).contains(&status) {
            Ok(())
        } else if status == 403 {
            Err(ConsulError::Denied {
                addr: self.addr.clone(),
                what: what.to_string(),
                body: String::from_utf8_lossy(body).trim().to_string(),
            })
        } else {
            Err(ConsulError::Status {
                addr: self.addr.clone(),
                what: what.to_string(),
                status,
                body: String::from_utf8_lossy(body).trim().to_string(),
            })
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, what: &str, body: &Bytes) -> Result<T, ConsulError> {
        serde_json::from_slice(body).map_err(|e| ConsulError::Decode {
            addr: self.addr.clone(),
            what: what.to_string(),
            detail: e.to_string(),
        })
    }

    /// The Raft leader's address (`ip:8300`), empty when there is none.
    pub async fn leader(&self) -> Result<String, ConsulError> {
        let (status, body) = self.call(http::Method::GET, "/v1/status/leader", None).await?;
        self.expect_ok("status/leader", status, &body)?;
        self.decode("status/leader", &body)
    }

    /// The Raft peers' addresses.
    pub async fn peers(&self) -> Result<Vec<String>, ConsulError> {
        let (status, body) = self.call(http::Method::GET, "/v1/status/peers", None).await?;
        self.expect_ok("status/peers", status, &body)?;
        self.decode("status/peers", &body)
    }

    /// Autopilot's view of the servers (`/v1/operator/autopilot/health`, answered by the
    /// leader): each server's Serf status, whether it votes, whether it is healthy.
    pub async fn autopilot_health(&self) -> Result<Vec<ServerHealth>, ConsulError> {
        let what = "operator/autopilot/health";
        let (status, body) = self.call(http::Method::GET, "/v1/operator/autopilot/health", None).await?;
        // 429 means "not healthy" and still carries the body.
        if status != 429 {
            self.expect_ok(what, status, &body)?;
        }
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(rename = "Servers")]
            servers: Vec<ServerHealth>,
        }
        Ok(self.decode::<Raw>(what, &body)?.servers)
    }

    /// A snapshot of the servers' state (`GET /v1/snapshot`, Consul's own backup: a gzipped
    /// tar of the Raft snapshot and its metadata; needs `management`). Answered by the leader.
    pub async fn snapshot(&self) -> Result<Bytes, ConsulError> {
        let (status, body) = self.call_within(SNAPSHOT_TIMEOUT, http::Method::GET, "/v1/snapshot", None).await?;
        self.expect_ok("GET snapshot", status, &body)?;
        Ok(body)
    }

    /// Restores a snapshot taken by [`Consul::snapshot`] (`PUT /v1/snapshot`; needs
    /// `management`): the servers' state — KV, ACLs, sessions — replaced by the snapshot's.
    pub async fn restore(&self, snapshot: Vec<u8>) -> Result<(), ConsulError> {
        let (status, body) =
            self.call_within(SNAPSHOT_TIMEOUT, http::Method::PUT, "/v1/snapshot", Some(snapshot)).await?;
        self.expect_ok("PUT snapshot", status, &body)
    }

    /// The version of the Consul agent answering (`/v1/agent/self`'s `Config.Version`).
    pub async fn version(&self) -> Result<String, ConsulError> {
        let (status, body) = self.call(http::Method::GET, "/v1/agent/self", None).await?;
        self.expect_ok("agent/self", status, &body)?;
        let v: serde_json::Value = self.decode("agent/self", &body)?;
        Ok(v["Config"]["Version"].as_str().unwrap_or_default().to_string())
    }

    /// Asks the agent to leave the cluster gracefully (`consul leave`; needs `agent:write`).
    pub async fn leave(&self) -> Result<(), ConsulError> {
        let (status, body) = self.call(http::Method::PUT, "/v1/agent/leave", None).await?;
        self.expect_ok("PUT agent/leave", status, &body)
    }

    /// Reads a key; `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<KvEntry>, ConsulError> {
        let what = format!("GET kv/{key}");
        let (status, body) = self.call(http::Method::GET, &format!("/v1/kv/{key}"), None).await?;
        if status == 404 {
            return Ok(None);
        }
        self.expect_ok(&what, status, &body)?;
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(rename = "Value")]
            value: Option<String>,
            #[serde(rename = "ModifyIndex")]
            modify_index: u64,
        }
        let raw: Vec<Raw> = self.decode(&what, &body)?;
        let Some(first) = raw.into_iter().next() else {
            return Ok(None);
        };
        let value = match first.value {
            Some(v) => base64::engine::general_purpose::STANDARD.decode(v).map_err(|e| ConsulError::Decode {
                addr: self.addr.clone(),
                what: what.clone(),
                detail: e.to_string(),
            })?,
            None => Vec::new(),
        };
        Ok(Some(KvEntry { value, modify_index: first.modify_index }))
    }

    /// Writes a key. With `cas = Some(0)` it is created only if absent; with `Some(i)` it is
    /// replaced only if unchanged since index `i`. Returns whether the write happened.
    pub async fn put(&self, key: &str, value: &[u8], cas: Option<u64>) -> Result<bool, ConsulError> {
        let path = match cas {
            Some(i) => format!("/v1/kv/{key}?cas={i}"),
            None => format!("/v1/kv/{key}"),
        };
        let what = format!("PUT kv/{key}");
        let (status, body) = self.call(http::Method::PUT, &path, Some(value.to_vec())).await?;
        self.expect_ok(&what, status, &body)?;
        self.decode(&what, &body)
    }

    /// Deletes a key (idempotent).
    pub async fn delete(&self, key: &str) -> Result<(), ConsulError> {
        let what = format!("DELETE kv/{key}");
        let (status, body) = self.call(http::Method::DELETE, &format!("/v1/kv/{key}"), None).await?;
        self.expect_ok(&what, status, &body)
    }

    /// The keys under a prefix (`?keys`), as the server asked holds them when `stale`
    /// (`?stale`: any server answers from its own state), else through the leader.
    pub async fn keys(&self, prefix: &str, stale: bool) -> Result<Vec<String>, ConsulError> {
        let what = format!("GET kv/{prefix}?keys");
        let path = format!("/v1/kv/{prefix}?keys=true{}", if stale { "&stale=true" } else { "" });
        let (status, body) = self.call(http::Method::GET, &path, None).await?;
        if status == 404 {
            return Ok(Vec::new());
        }
        self.expect_ok(&what, status, &body)?;
        self.decode(&what, &body)
    }

    /// Keys under a prefix with their values.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, ConsulError> {
        let what = format!("GET kv/{prefix}?recurse");
        let (status, body) = self.call(http::Method::GET, &format!("/v1/kv/{prefix}?recurse=true"), None).await?;
        if status == 404 {
            return Ok(Vec::new());
        }
        self.expect_ok(&what, status, &body)?;
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(rename = "Key")]
            key: String,
            #[serde(rename = "Value")]
            value: Option<String>,
        }
        let raw: Vec<Raw> = self.decode(&what, &body)?;
        Ok(raw
            .into_iter()
            .map(|r| {
                let v =
                    r.value.and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok()).unwrap_or_default();
                (r.key, v)
            })
            .collect())
    }
}
