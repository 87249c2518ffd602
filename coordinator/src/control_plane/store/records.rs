//! The records the store keeps, as JSON values (each table's value type; see [`super`]).

use serde::{Deserialize, Serialize};

/// A certificate issued to a host, still inside its validity.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IssuedCert {
    pub serial: String,
    pub not_after_unix: i64,
}

/// Everything the coordinator remembers about one host.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HostRecord {
    pub name: String,
    pub host_id: String,
    pub enrolled_unix_ms: i64,
    pub last_seen_unix_ms: i64,
    pub roles: Vec<String>,
    /// Certificates the host may connect with: the newest plus, after a renewal, the one
    /// its open session still uses. Re-enrollment replaces the set.
    pub certs: Vec<IssuedCert>,
    pub revoked: bool,
    pub agent_version: String,
    pub facts: Facts,
    /// The SHA-256 of the agent's executable, from its last Hello (empty: an older agent, or
    /// a record stored before it existed).
    #[serde(default)]
    pub agent_sha256: String,
}

/// The host facts as stored (a plain mirror of `HostFacts`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Facts {
    pub hostname: String,
    pub instance_id: String,
    pub private_addresses: Vec<String>,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub engine_version: String,
    /// The CSR for the key the host keeps for its Engine's TLS listener (`HostFacts.
    /// engine_csr_pem`); empty from an older agent, and in records stored before it existed.
    #[serde(default)]
    pub engine_csr_pem: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub host_name: String,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    pub used_unix_ms: Option<i64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEvent {
    pub unix_ms: i64,
    pub kind: String,
    pub host_name: String,
    pub detail: String,
    pub peer: String,
    /// Who made an admin mutation (see `operators::Caller`); empty for an agent's doing.
    #[serde(default)]
    pub actor: String,
}

impl AuditEvent {
    /// The event with every text field cleaned and cut to its budget.
    pub fn cleaned(&self) -> Self {
        use crate::control_plane::untrusted::{DETAIL_MAX, KIND_MAX, NAME_MAX, clean};
        AuditEvent {
            unix_ms: self.unix_ms,
            kind: clean(&self.kind, KIND_MAX),
            host_name: clean(&self.host_name, NAME_MAX),
            detail: clean(&self.detail, DETAIL_MAX),
            peer: clean(&self.peer, KIND_MAX),
            actor: clean(&self.actor, NAME_MAX * 2),
        }
    }
}

/// Refused calls of one kind from one source, counted.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefusalRecord {
    pub kind: String,
    pub source: String,
    pub count: u64,
    pub first_unix_ms: i64,
    pub last_unix_ms: i64,
    pub last_host_name: String,
    pub last_detail: String,
}

impl RefusalRecord {
    pub(super) fn key(&self) -> String {
        format!("{} {}", self.kind, self.source)
    }

    /// Adds `later` (refusals of the same kind and source, after these) to these.
    pub fn absorb(&mut self, later: &RefusalRecord) {
        self.count += later.count;
        self.first_unix_ms = self.first_unix_ms.min(later.first_unix_ms);
        if later.last_unix_ms >= self.last_unix_ms {
            self.last_unix_ms = later.last_unix_ms;
            self.last_host_name.clone_from(&later.last_host_name);
            self.last_detail.clone_from(&later.last_detail);
        }
    }
}

/// The operator certificates issued to one name.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OperatorRecord {
    pub name: String,
    pub certs: Vec<OperatorCert>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OperatorCert {
    pub serial: String,
    pub issued_unix_ms: i64,
    pub not_after_unix: i64,
    pub revoked_unix_ms: Option<i64>,
    pub issued_by: String,
}
