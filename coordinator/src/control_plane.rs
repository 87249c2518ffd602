//! The control plane of one cluster (`coordinator serve`, state in one directory). It depends
//! on no other module of the crate: the CLI side reaches it through its gRPC APIs.
//!
//! - [`serve`]: starts it — the agent port (TLS 1.3) and the admin unix socket.
//! - [`core`]: the [`core::ControlPlane`] every handler shares, and the admin operations.
//! - [`store`]: the durable state (redb): hosts, join-token hashes, the audit trail, counted
//!   refusals, operator certificates.
//! - [`audit`]: recording events, and counting refused calls instead of writing each
//!   ([`audit::refusals`]).
//! - [`untrusted`]: text from outside, cut and escaped before it is stored, logged or printed.
//! - [`operators`]: who may call the admin API ([`operators::caller`]: the local socket, or
//!   an operator certificate checked per call), minting and revoking operator certificates,
//!   minting Engine client certificates.
//! - [`pki`]: the cluster CA, the server certificate, signing host and operator CSRs.
//! - [`consul`]: what Consul gets: the management (operator) token, per-host ACL tokens,
//!   the Consul CA and its server certificates.
//! - [`tokens`]: one-time join tokens (mint, check, consume).
//! - [`enroll`]: where an agent's enrollment is checked (token + CSR → certificate).
//! - [`session`]: one agent session's life and its certificate's renewal;
//!   [`session::registry`]: the live ones; [`session::grants`]: what each certificate holds
//!   open, ended when it stops being valid; [`session::renewing`]: one renewal per host.
//! - [`log_router`]: routing agents' log streams to followers.
//! - [`agent_api`]: the `AgentService` gRPC edge (authentication; what a connection without
//!   a certificate may call, enrollment's rate limit from [`enroll_limit`]).
//! - [`descriptors`]: the descriptor limit (raised at start) and the agent port's connection
//!   caps derived from it.
//! - [`admin_api`]: the `Admin` gRPC service (operators and the CLI).
//! - [`status`]: every error of the control plane → `tonic::Status`, in one place.
//! - [`agent_binary`]: serving the agent binary over HTTPS for user-data to fetch.
//! - [`backup`]: backups taken by the agents (Swarm with the Engine stopped on a manager that
//!   does not lead, Consul snapshots), uploaded over their sessions, kept encrypted
//!   ([`backup::archive`]), pruned and scheduled ([`backup::policy`]).
//! - [`metrics`]: Prometheus series, counted as things happen or read live at scrape time
//!   ([`metrics::live`]); [`web`]: their listener, with `/metrics` and the read-only status
//!   page (`/`, a live log tail over server-sent events).
//! - [`clock`]: the control plane's clock (movable in tests).
//! - [`settings`]: `serve` settings and the state directory's layout.

pub mod admin_api;
pub mod agent_api;
pub mod agent_binary;
pub mod agent_upgrade;
pub mod audit;
pub mod backup;
pub mod clock;
pub mod consul;
pub mod core;
pub mod descriptors;
pub mod enroll;
pub mod enroll_limit;
pub mod healer;
pub mod log_router;
pub mod metrics;
pub mod operators;
pub mod pending;
pub mod pki;
pub mod serve;
pub mod session;
pub mod settings;
pub mod status;
pub mod store;
pub mod tokens;
pub mod untrusted;
pub mod web;
