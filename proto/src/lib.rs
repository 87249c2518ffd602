//! The wire between a Flotilla agent and its coordinator.
//!
//! - [`v1`]: the protobuf messages and gRPC services of `proto/flotilla/v1/*.proto`
//!   (`AgentService`: Enroll, Session, Logs; `Admin`: the operator's API). The `.proto`
//!   files are the documentation of the protocol.
//! - [`tls`]: the one TLS configuration both ends speak — TLS 1.3 only, the aws-lc-rs
//!   crypto provider everywhere, the cluster CA as the only root — plus the accept loop (and
//!   the caps and timeouts it keeps on connections, [`tls::AcceptLimits`]) and
//!   the client connector that carry tonic over it, and [`tls::PeerIdentity`], who is on the
//!   other end of a connection.
//! - [`fs`]: secret files (atomic, 0600 from the first byte) and private directories.
//! - [`PROTOCOL_VERSION`] and [`PROTOCOL_HEADER`]: how the two ends agree they can talk;
//!   [`protocol_header`] is the client interceptor that sends it on every request.
//! - Names of roles and role states as the CLI, logs and `flotilla.toml` spell them
//!   ([`v1::Role::name`], [`v1::Role::from_name`], [`v1::RoleState::name_of`]).

pub mod fs;
pub mod tls;

/// Generated from `proto/flotilla/v1/*.proto`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("flotilla.v1");
}

/// The protocol version this build speaks. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// The oldest agent protocol a coordinator of this build accepts. An agent below it is
/// refused with a message naming `coordinator upgrade --agent` ([`agent_protocol_refusal`]).
/// Raised, separately from [`PROTOCOL_VERSION`], when support for an older agent is dropped.
pub const MIN_AGENT_PROTOCOL: u32 = 1;

/// Why a coordinator of this build refuses an agent speaking protocol `theirs`: `None` when
/// it accepts it ([`MIN_AGENT_PROTOCOL`] ..= [`PROTOCOL_VERSION`]).
pub fn agent_protocol_refusal(theirs: u32) -> Option<String> {
    agent_protocol_refusal_for(theirs, MIN_AGENT_PROTOCOL, PROTOCOL_VERSION)
}

fn agent_protocol_refusal_for(theirs: u32, min: u32, ours: u32) -> Option<String> {
    if theirs < min {
        return Some(format!(
            "agent speaks protocol v{theirs}, older than v{min}, the oldest this coordinator (v{ours}) accepts; \
             upgrade the agent: `coordinator upgrade --agent` (or replace the host)"
        ));
    }
    (theirs > ours)
        .then(|| format!("agent speaks protocol v{theirs}, this coordinator speaks v{ours}; upgrade the coordinator"))
}

/// The request header every agent RPC carries its protocol version in.
pub const PROTOCOL_HEADER: &str = "flotilla-protocol";

/// A tonic client interceptor that puts [`PROTOCOL_VERSION`] in [`PROTOCOL_HEADER`]: every
/// client of the agent port uses it (`AgentServiceClient::with_interceptor(channel,
/// flotilla_proto::protocol_header)`), and the server refuses requests without it.
#[allow(clippy::result_large_err)] // tonic's `Interceptor` signature
pub fn protocol_header<T>(mut req: tonic::Request<T>) -> Result<tonic::Request<T>, tonic::Status> {
    add_protocol_header(&mut req);
    Ok(req)
}

/// Puts [`PROTOCOL_VERSION`] in [`PROTOCOL_HEADER`] of one request.
pub fn add_protocol_header<T>(req: &mut tonic::Request<T>) {
    req.metadata_mut().insert(PROTOCOL_HEADER, tonic::metadata::MetadataValue::from(PROTOCOL_VERSION));
}

impl v1::Role {
    /// The role's name as `flotilla.toml`, the CLI and the logs spell it.
    pub fn name(self) -> &'static str {
        match self {
            v1::Role::Consul => "consul",
            v1::Role::Manager => "manager",
            v1::Role::Node => "node",
            v1::Role::Unspecified => "unspecified",
        }
    }

    /// The role of a name as [`v1::Role::name`] spells it; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "consul" => Some(v1::Role::Consul),
            "manager" => Some(v1::Role::Manager),
            "node" => Some(v1::Role::Node),
            _ => None,
        }
    }
}

impl v1::RoleState {
    /// A role state's name as the CLI shows it (`running`, `pulling`, …); empty when the
    /// number is no state this build knows.
    pub fn name_of(state: i32) -> String {
        v1::RoleState::try_from(state)
            .map(|x| x.as_str_name().trim_start_matches("ROLE_STATE_").to_lowercase())
            .unwrap_or_default()
    }
}

/// The organizational unit of a host's client certificate.
pub const OU_HOST: &str = "flotilla-host";
/// The organizational unit of an operator's client certificate.
pub const OU_OPERATOR: &str = "flotilla-operator";
/// The organizational unit of the coordinator's server certificate.
pub const OU_COORDINATOR: &str = "flotilla-coordinator";
/// OU of an Engine client certificate (signed by the Engine client CA, not the cluster CA).
pub const OU_ENGINE_CLIENT: &str = "flotilla-engine-client";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_below_the_minimum_is_told_to_upgrade_and_a_newer_one_names_the_coordinator() {
        assert_eq!(agent_protocol_refusal(PROTOCOL_VERSION), None);
        assert_eq!(agent_protocol_refusal(MIN_AGENT_PROTOCOL), None);
        let old = agent_protocol_refusal(MIN_AGENT_PROTOCOL - 1).expect("refused");
        assert!(old.contains("coordinator upgrade --agent") && old.contains("v0"), "{old}");
        // A coordinator that raised its minimum refuses what it accepted before.
        assert_eq!(agent_protocol_refusal_for(2, 2, 3), None);
        assert_eq!(agent_protocol_refusal_for(3, 2, 3), None);
        let old = agent_protocol_refusal_for(1, 2, 3).expect("refused");
        assert!(old.contains("v1, older than v2") && old.contains("(v3)"), "{old}");
        let new = agent_protocol_refusal(PROTOCOL_VERSION + 1).expect("refused");
        assert!(new.contains("upgrade the coordinator") && !new.contains("--agent"), "{new}");
    }
}
