//! `coordinator upgrade --agent` (issue 17, part 2): every host's agent replaced in place by
//! another build, one host at a time — workers, then managers, the swarm's leader last.
//!
//! The binary (`--binary`, else the one this coordinator serves at boot) is read and hashed
//! here; that SHA-256 is the pin. For each host not already running it, the control plane
//! (`UpgradeAgent` admin RPC, local socket only) hands the path and the pin to the host's
//! agent, which downloads the bytes over its mutual TLS session, checks them, installs them
//! over its own executable (the old kept as `.previous`) and restarts under systemd; then the
//! host's session must come back with the new digest before the next host is touched. A
//! refusal or failure (a digest that does not match, a download that breaks) stops there,
//! naming the host and why; that host keeps its old agent, the later ones are untouched.
//! Re-running skips the hosts already on the pinned digest: the command is resumable. Builds
//! are told apart by the SHA-256 of the agent's executable (its Hello), not by the crate
//! version, which two builds may share.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_proto::v1;
use serde::Serialize;

use super::{UpgradeError, rank, role_of};
use crate::control_plane::agent_binary::AgentBinary;
use crate::control_plane::settings::StatePaths;
use crate::ops::lock::OpsLock;
use crate::poll::{Attempt, PollError, poll_until};
use crate::ui::Progress;

/// How long a host's session may take to come back on the new build (systemd waits 2 s).
pub const BACK_TIMEOUT: Duration = Duration::from_secs(90);

pub struct AgentUpgradeOptions {
    pub cluster: String,
    pub state_root: PathBuf,
    /// The new agent binary; `None`: the one the control plane serves at boot.
    pub binary: Option<PathBuf>,
    /// Testing: the digest the agents are told to expect instead of the binary's own.
    pub announce_sha256: Option<String>,
    pub dry_run: bool,
    pub quiet: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgentUpgradeReport {
    pub cluster: String,
    pub dry_run: bool,
    pub binary: String,
    /// `flotilla-agent --version` of the new binary ("unknown" when it does not say).
    pub target_version: String,
    pub target_sha256: String,
    /// Every host, in the order they are (or would be) upgraded.
    pub hosts: Vec<HostStep>,
    pub upgraded: usize,
    pub skipped: usize,
    pub total_s: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostStep {
    pub order: usize,
    pub host: String,
    /// worker, manager, leader, or the assigned roles when the host is in no swarm.
    pub role: String,
    pub current_version: String,
    pub current_sha256: String,
    /// "upgrade" or "skip" (already on the target).
    pub action: &'static str,
    /// Seconds from the request to the session back on the new build (`None`: not done).
    pub seconds: Option<f64>,
}

/// The order and what happens to each host (pure: the plan `--dry-run` prints).
pub fn plan(hosts: &[v1::HostStatus], target_sha256: &str) -> Vec<HostStep> {
    let mut live: Vec<&v1::HostStatus> = hosts.iter().filter(|h| !h.revoked).collect();
    live.sort_by_key(|h| rank(h));
    live.iter()
        .enumerate()
        .map(|(i, h)| HostStep {
            order: i + 1,
            host: h.name.clone(),
            role: role_of(h),
            current_version: h.agent_version.clone(),
            current_sha256: h.agent_sha256.clone(),
            action: if h.agent_sha256 == target_sha256 { "skip" } else { "upgrade" },
            seconds: None,
        })
        .collect()
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What `<binary> --version` says (its last word), bounded; "unknown" when it does not.
async fn version_of(binary: &Path) -> String {
    let run = tokio::process::Command::new(binary).arg("--version").kill_on_drop(true).output();
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(out)) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().last())
            .map(str::to_string)
            .unwrap_or_else(|| "unknown".into()),
        _ => "unknown".into(),
    }
}

/// The binary to install: its canonical path, the pin, what `--version` says.
struct Target {
    path: PathBuf,
    sha256: String,
    version: String,
}

async fn target(opts: &AgentUpgradeOptions) -> Result<Target, UpgradeError> {
    let path = match &opts.binary {
        Some(b) => b.clone(),
        None => AgentBinary::default_path().map_err(UpgradeError::AgentBinary)?,
    };
    let path = std::fs::canonicalize(&path).map_err(|source| UpgradeError::Binary { path: path.clone(), source })?;
    let load = path.clone();
    let binary = tokio::task::spawn_blocking(move || AgentBinary::load(&load))
        .await
        .map_err(|e| UpgradeError::Binary { path: path.clone(), source: std::io::Error::other(e) })?
        .map_err(UpgradeError::AgentBinary)?;
    let sha256 = match &opts.announce_sha256 {
        Some(d) if !is_sha256(d) => return Err(UpgradeError::BadDigest(d.clone())),
        Some(d) => d.clone(),
        None => binary.sha256.clone(),
    };
    let version = version_of(&path).await;
    Ok(Target { path, sha256, version })
}

type Admin = v1::admin_client::AdminClient<tonic::transport::Channel>;

pub async fn upgrade_agent(opts: AgentUpgradeOptions) -> Result<AgentUpgradeReport, UpgradeError> {
    let p = Progress::new(opts.quiet);
    let state_dir = opts.state_root.join(&opts.cluster);
    let mut admin =
        crate::admin_client::connect_local(&opts.cluster, &StatePaths::new(&state_dir).admin_socket()).await?;
    let t = target(&opts).await?;
    let status = admin.status(v1::StatusRequest::default()).await?.into_inner();
    let mut steps = plan(&status.hosts, &t.sha256);
    let mut report = AgentUpgradeReport {
        cluster: opts.cluster.clone(),
        dry_run: opts.dry_run,
        binary: t.path.display().to_string(),
        target_version: t.version.clone(),
        target_sha256: t.sha256.clone(),
        upgraded: 0,
        skipped: steps.iter().filter(|s| s.action == "skip").count(),
        hosts: Vec::new(),
        total_s: 0.0,
    };
    if opts.dry_run {
        report.hosts = steps;
        return Ok(report);
    }
    let down: Vec<String> = status
        .hosts
        .iter()
        .filter(|h| !h.revoked && (!h.connected || h.unreachable) && h.agent_sha256 != t.sha256)
        .map(|h| h.name.clone())
        .collect();
    if !down.is_empty() {
        return Err(UpgradeError::NotConnected { hosts: down });
    }
    let old: Vec<String> =
        steps.iter().filter(|s| s.action == "upgrade" && s.current_sha256.is_empty()).map(|s| s.host.clone()).collect();
    if !old.is_empty() {
        return Err(UpgradeError::Predates { hosts: old });
    }
    let _lock = OpsLock::take(&state_dir, &opts.cluster, "upgrade")?;
    p.step("agent", format!("{} → sha256 {} ({})", report.binary, short(&t.sha256), t.version));
    let todo: Vec<usize> = (0..steps.len()).filter(|i| steps[*i].action == "upgrade").collect();
    for (n, &i) in todo.iter().enumerate() {
        let rest: Vec<String> = todo[n + 1..].iter().map(|j| steps[*j].host.clone()).collect();
        let rest = if rest.is_empty() { "none".to_string() } else { rest.join(", ") };
        let secs = upgrade_one(&mut admin, &p, &steps[i], &t, rest).await?;
        steps[i].seconds = Some(secs);
        report.upgraded += 1;
    }
    report.hosts = steps;
    report.total_s = p.elapsed().as_secs_f64();
    p.finish();
    Ok(report)
}

/// One host: the upgrade asked for, its session awaited on the new build; the seconds taken.
async fn upgrade_one(
    admin: &mut Admin,
    p: &Progress,
    step: &HostStep,
    t: &Target,
    rest: String,
) -> Result<f64, UpgradeError> {
    let host = step.host.clone();
    let from = step.current_sha256.clone();
    p.host(&host, format!("{}: agent sha256 {} → {}", step.role, short(&from), short(&t.sha256)));
    let t0 = Instant::now();
    let req = v1::UpgradeAgentRequest {
        host_name: host.clone(),
        binary_path: t.path.display().to_string(),
        sha256: t.sha256.clone(),
    };
    if let Err(s) = admin.upgrade_agent(req).await {
        return Err(UpgradeError::Host {
            host,
            reason: s.message().to_string(),
            from: if from.is_empty() { "(unknown)".into() } else { from },
            to: t.sha256.clone(),
            rest,
        });
    }
    p.host(&host, "installed; waiting for its session on the new build");
    back_on(admin, &host, &t.sha256).await.map_err(|(after, last)| UpgradeError::NotBack {
        host: host.clone(),
        to: t.sha256.clone(),
        after,
        last,
        rest,
    })?;
    let secs = t0.elapsed().as_secs_f64();
    p.host(&host, format!("agent on sha256 {} in {secs:.1} s", short(&t.sha256)));
    Ok(secs)
}

/// The first 12 characters of a digest (what agents report is cut on characters, never
/// bytes); "(unknown)" for none.
pub fn short(sha: &str) -> String {
    if sha.is_empty() { "(unknown)".into() } else { sha.chars().take(12).collect() }
}

/// Waits until `host`'s session is open on the build `target`.
async fn back_on(admin: &mut Admin, host: &str, target: &str) -> Result<(), (Duration, String)> {
    let what = format!("host '{host}' back on the new agent");
    let got = poll_until(&what, std::time::Instant::now() + BACK_TIMEOUT, Duration::from_millis(250), || {
        let mut admin = admin.clone();
        async move {
            let st = match admin.status(v1::StatusRequest::default()).await {
                Ok(s) => s.into_inner(),
                Err(e) => return Ok::<_, ()>(Attempt::NotYet(format!("status: {}", e.message()))),
            };
            let Some(h) = st.hosts.iter().find(|h| h.name == host) else {
                return Ok(Attempt::NotYet("not in status".into()));
            };
            if h.connected && !h.unreachable && h.agent_sha256 == target {
                return Ok(Attempt::Done(()));
            }
            Ok(Attempt::NotYet(format!(
                "connected {}, agent sha256 {}",
                h.connected && !h.unreachable,
                short(&h.agent_sha256)
            )))
        }
    })
    .await;
    match got {
        Ok(()) => Ok(()),
        Err(PollError::TimedOut { after, last, .. }) => Err((after, last)),
        Err(PollError::Failed(())) => Err((Duration::ZERO, "status failed".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, sha: &str, manager_status: &str, is_manager: bool) -> v1::HostStatus {
        v1::HostStatus {
            name: name.into(),
            agent_version: "0.1.0".into(),
            agent_sha256: sha.into(),
            connected: true,
            health: Some(v1::HealthSample {
                swarm: Some(v1::SwarmView {
                    local_state: "active".into(),
                    is_manager,
                    manager_status: manager_status.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn workers_first_then_managers_the_leader_last_and_hosts_on_the_target_skipped() {
        let t = "t".repeat(64);
        let hosts = vec![
            host("manager-1", "old", "leader", true),
            host("node-2", "old", "", false),
            host("manager-2", &t, "reachable", true),
            host("manager-3", "old", "reachable", true),
            host("node-1", "old", "", false),
        ];
        let p = plan(&hosts, &t);
        let order: Vec<(&str, &str, &str)> = p.iter().map(|s| (s.host.as_str(), s.role.as_str(), s.action)).collect();
        assert_eq!(
            order,
            [
                ("node-1", "worker", "upgrade"),
                ("node-2", "worker", "upgrade"),
                ("manager-2", "manager", "skip"),
                ("manager-3", "manager", "upgrade"),
                ("manager-1", "leader", "upgrade"),
            ]
        );
        assert_eq!(p.iter().map(|s| s.order).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_revoked_host_is_no_part_of_the_plan() {
        let mut gone = host("node-9", "old", "", false);
        gone.revoked = true;
        assert!(plan(&[gone], "x").is_empty());
    }
}
