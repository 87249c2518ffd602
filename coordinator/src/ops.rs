//! Operations that run in the CLI process, each from start to finish: they read
//! `flotilla.toml`, drive a provider directly, and talk to the control plane through
//! [`crate::admin_client`].
//!
//! - [`cluster_config`]: `flotilla.toml` — typed, validated, with the field and file named.
//! - [`plan`]: config → hosts → roles; what `plan` / `deploy --dry-run` prints.
//! - [`deploy`]: converge a cluster to its plan (launch, enroll, assign, verify, scale down).
//! - [`verify`]: Swarm's and Consul's own views of the cluster, and the smoke test.
//! - [`destroy`]: remove a cluster — refused when its state records hosts the provider
//!   cannot find.
//! - [`failover`]: `failover-test`, the seed's HA test as a measured drill.
//! - [`recover`]: a cluster that lost its quorum brought back, from a survivor or from the
//!   backups.
//! - [`handover`]: a leading manager demoted before a planned operation takes it down, so
//!   swarmkit hands leadership over instead of losing it.
//! - [`state`]: `state export | import`, the coordinator's own state sealed and carried.
//! - [`bake`]: a host image with the Engine and the agent installed.
//! - [`upgrade`]: a running cluster onto new software, one host at a time (`--agent`: the
//!   agents replaced in place).

pub mod bake;
pub mod cluster_config;
pub mod deploy;
pub mod destroy;
pub mod failover;
pub mod handover;
pub mod heal;
pub mod host_names;
pub mod lock;
pub mod plan;
pub mod recover;
pub mod state;
pub mod upgrade;
pub mod verify;
