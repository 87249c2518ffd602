//! `coordinator upgrade` (issue 17): a running cluster onto new software, one host at a time.
//!
//! - [`agent`]: `--agent`, every host's agent replaced in place by another build (served by
//!   the control plane, SHA-256 pinned, installed by the agent itself, restarted by systemd)
//!   while every container keeps running.
//! - [`image`]: `--image IMAGE`, a rolling replacement onto a new host image: its plan
//!   (`--dry-run`, the order) and the replacement itself ([`rolling`]: add before remove,
//!   each replacement under the slot's next generation name).

pub mod agent;
pub mod image;
pub mod rolling;

use std::path::PathBuf;

use flotilla_proto::v1;
use std::time::Duration;

use crate::admin_client::ConnectError;
use crate::control_plane::healer::EXIT_REFUSED;
use crate::ops::lock::LockError;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "`upgrade` runs on the control plane's machine (the control plane reads the new binary there): drop --remote"
    )]
    Remote,
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Provider(#[from] crate::providers::ProviderError),
    #[error(
        "cluster '{cluster}' has no record of a deploy ({source}); upgrade replaces what `coordinator deploy` recorded"
    )]
    NotDeployed { cluster: String, source: crate::ops::cluster_config::ConfigError },
    #[error(transparent)]
    Deploy(#[from] crate::ops::deploy::DeployError),
    #[error(transparent)]
    HostNames(#[from] crate::ops::host_names::HostNamesError),
    #[error("{}: {source}", path.display())]
    State { path: PathBuf, source: std::io::Error },
    /// The cluster is not at full strength: replacing a host now could cost quorum or tasks.
    #[error(
        "the cluster is not healthy {when}: {why}. Nothing more was replaced; bring it back (`coordinator status`, `coordinator heal`) and run the upgrade again"
    )]
    NotHealthy { when: String, why: String },
    /// An interrupted upgrade onto another image is still half-done.
    #[error(
        "an interrupted `coordinator upgrade --image {image}` is replacing {old} by {new}: finish it first (run that command again); nothing was touched"
    )]
    OtherPending { old: String, new: String, image: String },
    /// A replacement joined but Swarm or Consul did not count it: the old host is kept.
    #[error(
        "the replacement {host} is not counted by Swarm and Consul: {last}. The host it replaces is still there; look at it (`coordinator status`, `coordinator logs --host {host}`) and run the upgrade again to continue"
    )]
    NotCounted { host: String, last: String },
    /// A replacement came up on another image than the target: replacing it again would not
    /// converge.
    #[error(
        "the replacement {host} runs {image}, not {target}: the provider launched it from another image (a bug; `coordinator status`, and the recorded `images.host`); it is in the cluster, nothing more was replaced"
    )]
    WrongImage { host: String, image: String, target: String },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{}", .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("the agent binary {}: {source}", path.display())]
    Binary { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    AgentBinary(crate::control_plane::agent_binary::AgentBinaryError),
    /// A failpoint's injected error (a `failpoints` build under test: [`crate::failpoint`]).
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
    #[error("--announce-sha256 '{0}' is no SHA-256 (64 lowercase hex digits)")]
    BadDigest(String),
    /// Some hosts to upgrade have no session: nothing was started.
    #[error(
        "no agent session for {}: no agent was upgraded (bring the host back — `coordinator status`, `coordinator heal` — and run the upgrade again)",
        .hosts.join(", ")
    )]
    NotConnected { hosts: Vec<String> },
    /// Agents that report no digest predate the in-place upgrade: they would not answer it.
    #[error(
        "the agents of {} predate `upgrade --agent` (they report no SHA-256 of their build) and cannot replace themselves: replace those hosts (`coordinator heal` after removing them, or a fresh deploy) — no agent was upgraded",
        .hosts.join(", ")
    )]
    Predates { hosts: Vec<String> },
    /// One host's agent refused or failed: it keeps its old build; the later hosts were not
    /// touched.
    #[error(
        "host '{host}': {reason}; it still runs sha256 {from}; not touched: {rest} (a re-run skips the hosts already on sha256 {to})"
    )]
    Host { host: String, reason: String, from: String, to: String, rest: String },
    /// The new build was installed but its session did not come back with it.
    #[error(
        "host '{host}': the new agent (sha256 {to}) did not come back within {after:?}: {last} (see `coordinator logs --host {host} --engine` and the host's `journalctl -u flotilla-agent`); not touched: {rest}"
    )]
    NotBack { host: String, to: String, after: Duration, last: String, rest: String },
}

impl UpgradeError {
    /// 75 when another operation holds the cluster (nothing was done); else 1 (the CLI maps
    /// its usage errors to 64).
    pub fn exit_code(&self) -> i32 {
        match self {
            UpgradeError::Lock(_) => EXIT_REFUSED,
            _ => 1,
        }
    }
}

/// Where a host goes in the order: workers, managers, the leader last.
fn rank(h: &v1::HostStatus) -> (u8, String) {
    let swarm = h.health.as_ref().and_then(|s| s.swarm.as_ref());
    let r = match swarm {
        Some(s) if s.manager_status == "leader" => 2,
        Some(s) if s.is_manager => 1,
        _ => 0,
    };
    (r, h.name.clone())
}

fn role_of(h: &v1::HostStatus) -> String {
    match rank(h).0 {
        2 => "leader".into(),
        1 => "manager".into(),
        _ if h.health.as_ref().and_then(|s| s.swarm.as_ref()).is_some_and(|s| s.local_state == "active") => {
            "worker".into()
        }
        _ => {
            h.roles.iter().filter_map(|r| v1::Role::try_from(*r).ok()).map(v1::Role::name).collect::<Vec<_>>().join(",")
        }
    }
}
