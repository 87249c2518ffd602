//! The Flotilla coordinator: the control plane of one cluster, and the CLI that drives it.
//!
//! Control plane (`coordinator serve`, one per cluster, state in one directory):
//! - [`serve`]: starts it — the agent port (TLS 1.3) and the admin unix socket.
//! - [`control`]: the shared state every handler works on, and the admin operations.
//! - [`store`]: the durable state (redb): hosts, join-token hashes, the audit trail.
//! - [`pki`]: the cluster CA, the server certificate, signing host and operator CSRs.
//! - [`tokens`]: one-time join tokens (mint, check, consume).
//! - [`enroll`]: the `Enroll` RPC's logic (token + CSR → certificate).
//! - [`session`]: one agent session's life; [`sessions`]: the registry of live ones.
//! - [`logs`]: routing agents' log streams to followers.
//! - [`agent_api`]: the `AgentService` gRPC edge (authentication, error → status).
//! - [`admin`]: the `Admin` gRPC service and the CLI's client for it.
//! - [`agent_binary`]: serving the agent binary over HTTPS for user-data to fetch.
//! - [`clock`]: the control plane's clock (movable in tests).
//! - [`config`]: `serve` settings and the state directory's layout.
//! - [`providers`]: where hosts come from (the lab; AWS).
//!
//! Deploying (the CLI side, talking to the control plane and a provider):
//! - [`cluster`]: `flotilla.toml`; [`plan`]: config → hosts → roles.
//! - [`deploy`]: the deploy flow; [`verify`]: Swarm's and Consul's views, the smoke test.
//! - [`failover`]: `failover-test`, the seed's HA test as a measured drill.
//! - [`bake`]: `bake`, a host image with the Engine and the agent installed (lab; AWS next).
//!
//! CLI: [`cli`] parses arguments and runs one command against the control plane.

pub mod admin;
pub mod agent_api;
pub mod agent_binary;
pub mod bake;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod deploy;
pub mod enroll;
pub mod failover;
pub mod logs;
pub mod pki;
pub mod plan;
pub mod providers;
pub mod serve;
pub mod session;
pub mod sessions;
pub mod store;
pub mod tokens;
pub mod verify;
