//! The Flotilla coordinator: the control plane of one cluster, and the CLI that drives it.
//! The folders follow the two processes the binary runs as.
//!
//! - [`control_plane`]: the long-running `coordinator serve` process of one cluster — the
//!   agent port (TLS 1.3 gRPC: enrollment, sessions, log streams), the admin API, the CA, the
//!   durable store. It depends on no other module of this crate.
//! - [`ops`]: what runs in the CLI process — `flotilla.toml`, plan, deploy, verify, the
//!   failover drill, bake. Operations drive a [`providers`] directly and the control plane
//!   through [`admin_client`].
//! - [`providers`]: where hosts come from: the lab (containers on this machine's Engine) and
//!   AWS (EC2).
//! - [`admin_client`]: how the CLI reaches a control plane (its unix socket, or a remote one
//!   with an operator certificate).
//! - [`poll`]: [`poll::poll_until`], the one bounded wait every operation uses.
//! - [`ui`]: what the CLI prints while it works: progress lines and host log prefixes.
//! - [`cli`]: argument parsing, and one file per command that calls into the rest.
//! - [`failpoint`]: named failpoints before and after every side effect (tests only).
//!
//! Dependencies run one way: `cli → ops → {providers, admin_client, ui} → control_plane`.

pub mod admin_client;
pub mod cli;
pub mod control_plane;
pub mod failpoint;
pub mod ops;
pub mod poll;
pub mod providers;
pub mod ui;
