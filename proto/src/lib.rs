//! The wire between a Flotilla agent and its coordinator.
//!
//! - [`v1`]: the protobuf messages and gRPC services of `proto/flotilla/v1/*.proto`
//!   (`AgentService`: Enroll, Session, Logs; `Admin`: the operator's API). The `.proto`
//!   files are the documentation of the protocol.
//! - [`tls`]: the one TLS configuration both ends speak — TLS 1.3 only, the aws-lc-rs
//!   crypto provider everywhere, the cluster CA as the only root — plus the accept loop and
//!   the client connector that carry tonic over it, and [`tls::PeerIdentity`], who is on the
//!   other end of a connection.
//! - [`fs`]: secret files (atomic, 0600 from the first byte) and private directories.
//! - [`PROTOCOL_VERSION`] and [`PROTOCOL_HEADER`]: how the two ends agree they can talk.

pub mod fs;
pub mod tls;

/// Generated from `proto/flotilla/v1/*.proto`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("flotilla.v1");
}

/// The protocol version this build speaks. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// The request header every agent RPC carries its protocol version in.
pub const PROTOCOL_HEADER: &str = "flotilla-protocol";

/// The organizational unit of a host's client certificate.
pub const OU_HOST: &str = "flotilla-host";
/// The organizational unit of an operator's client certificate.
pub const OU_OPERATOR: &str = "flotilla-operator";
/// The organizational unit of the coordinator's server certificate.
pub const OU_COORDINATOR: &str = "flotilla-coordinator";
