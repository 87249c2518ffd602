//! `coordinator failover-test`: the seed's HA test ("kill the primary manager, watch a
//! replica take over, bring the old primary back as a replica") as one measured drill, of
//! the Swarm managers (`--component swarm`, the default) or of the Consul servers
//! (`--component consul`).
//!
//! 1. **Pre-checks** on the control plane's status ([`precheck`], pure): at least 3 members
//!    of the drilled component (else the quorum table, unless `--force`), every host
//!    connected, every role running; then a long-running hello service ([`HELLO_SERVICE`],
//!    2 replicas on the workers) is made to run, to prove workloads survive.
//! 2. **Live logs**: before the fault, the members' logs — every manager's Engine journal,
//!    or every Consul server's container — are followed through the admin `FollowLogs` RPC
//!    and printed merged as `host/source | line`; the election lines go into the report.
//!    A stream the control plane cuts (it restarted) is resumed from each source's last
//!    line, so no line is lost or printed twice.
//! 3. **The fault**: the leader (as the members report it; `--target` picks another one)
//!    goes down. `--mode engine`: for Swarm its agent stops the Docker Engine (as the seed
//!    kills the manager process); for Consul its agent kills the Consul container and holds
//!    the role down (see below). `--mode host`: the provider stops the whole host.
//! 4. **Measure** by probing the members directly every 100 ms, each call bounded, so a slow
//!    answer never delays the next probe and the control plane is not in the measuring path
//!    ([`swarm`]: the Engines over mutual TLS; [`consul`]: Consul's HTTP API): `detect`,
//!    `elect`, `api_back`, the workload; then the restore and `rejoin`, and the cluster
//!    healthy again in the control plane's status. Every time is measured from the fault,
//!    except `rejoin_s` and `healthy_s`, which count from the restore.
//!
//! The control plane is watched all along ([`CpWatch`]): if it stops answering (it was
//! restarted), the drill goes on with the members' own views, retries what needs the
//! control plane (the Engine-mode restore), and its report names what it could not observe
//! in `unobserved`. Whatever the drill did is undone on every way out — an error midway,
//! no leader found, SIGINT/SIGTERM ([`run`]'s clean-up): the target restored, the hello
//! service and the KV probe key removed.
//!
//! Why the Consul fault in engine mode holds the role down instead of stopping the Engine:
//! every Consul server runs on a Swarm manager, so stopping the Engine would also take a
//! Swarm manager down and the drill would time two elections at once. Killing only the
//! Consul container (SIGKILL, a crash: no graceful leave, the others still count it as a
//! voter) isolates Consul's own failover. The agent's reconcile loop would restart a
//! missing container within a pass, so the agent holds the role down until told (or until
//! a lease runs out, so an abandoned drill cannot leave Consul down for good).

mod consul;
mod swarm;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use flotilla_proto::v1::{self, admin_client::AdminClient};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
use tonic::transport::Channel;

use crate::ops::cluster_config::QUORUM_TABLE;
use crate::ops::verify;
use crate::providers::lab::LabError;
use crate::providers::{Provider, ProviderError, ProviderRecord};

/// The drill's long-running hello service.
pub const HELLO_SERVICE: &str = "flotilla-drill-hello";
pub const HELLO_REPLICAS: usize = 2;
/// How often the members are probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// One probe's bound: a manager's node list blocks while the swarm has no leader.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// A ping's bound: a stopped host does not refuse, it just stops answering.
pub const PING_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the pre-check waits for an unhealthy cluster (e.g. one just drilled) to settle.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the hello service gets to run its replicas before the fault.
pub const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// The clean-up's patience: removing the hello service needs a swarm leader, which may take
/// an election after the restore.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the control plane's status is read during the drill.
pub const CP_POLL: Duration = Duration::from_millis(500);

/// The key the Consul drill writes to prove Consul's KV answers again (removed afterwards).
pub fn kv_probe_key(cluster: &str) -> String {
    format!("flotilla/{cluster}/drill/kv-probe")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Swarm: the agent stops the host's Docker Engine (the seed kills the manager
    /// process). Consul: the agent kills the Consul container and holds the role down.
    Engine,
    /// The provider stops the whole host.
    Host,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    /// The Swarm managers' Raft (the seed's primary/replica managers).
    Swarm,
    /// The Consul servers' Raft (the discovery backend holding the swarm's join data).
    Consul,
}

impl Component {
    /// The role whose members are drilled.
    pub fn role(self) -> v1::Role {
        match self {
            Component::Swarm => v1::Role::Manager,
            Component::Consul => v1::Role::Consul,
        }
    }
    fn members_noun(self) -> &'static str {
        match self {
            Component::Swarm => "managers",
            Component::Consul => "Consul servers",
        }
    }
    /// How a member that came back is expected to be listed by the leader.
    pub fn rejoined_as(self) -> &'static str {
        match self {
            Component::Swarm => "reachable",
            Component::Consul => "voter",
        }
    }
}

pub struct Options {
    pub cluster: String,
    pub state_dir: PathBuf,
    pub mode: Mode,
    pub component: Component,
    /// A member to take down instead of the leader.
    pub target: Option<String>,
    pub force: bool,
    /// Each phase's bound (fault → recovered; restore → rejoined).
    pub bound: Duration,
    /// Colour the live log prefixes per host.
    pub colour: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("refusing the drill: {0}")]
    Refused(String),
    #[error("the cluster is not healthy enough to drill (waited {waited:?}): {problems}")]
    Unhealthy { waited: Duration, problems: String },
    #[error("control plane: {}", .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("{0}")]
    Engine(String),
    #[error("Consul: {0}")]
    Consul(String),
    #[error("the hello workload: {0}")]
    Workload(String),
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Aws(#[from] crate::providers::aws::AwsError),
    #[error("the drill did not pass: {0}")]
    NotPassed(String),
    #[error("interrupted by {signal}; {cleanup}")]
    Interrupted { signal: &'static str, cleanup: String },
}

/// A member of the drilled component (a manager, or a Consul server) as the control plane
/// knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub ip: String,
}

/// One line of the timeline (seconds from the fault; negative before it).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Event {
    pub t_s: f64,
    pub what: String,
}

/// A span (seconds from the fault) during which something could not be observed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Gap {
    pub from_s: f64,
    /// `None`: it had not ended when the drill finished.
    pub to_s: Option<f64>,
    pub error: String,
}

/// A cut in one host's log stream.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LogGap {
    pub host: String,
    pub from_s: f64,
    /// `None`: not resumed before the drill ended.
    pub to_s: Option<f64>,
    pub error: String,
}

/// The drill's report (`--output json` prints it).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub cluster: String,
    pub mode: String,
    /// swarm or consul.
    pub component: String,
    /// The leader before the fault.
    pub old_leader: String,
    /// The host taken down (the old leader unless `--target` named another member).
    pub target: String,
    /// The leader after the fault (the old one when a follower was the target).
    pub new_leader: String,
    /// The target stopped answering the drill's probes (its Engine, or its Consul).
    pub detect_s: Option<f64>,
    /// The control plane's status showed the target down (Engine down, Consul role not
    /// running, host without a session or unreachable).
    pub control_plane_detect_s: Option<f64>,
    /// A surviving member named the new leader (none for a follower target).
    pub elect_s: Option<f64>,
    /// The new leader's Engine logged `became leader` (Swarm's own election time).
    pub swarm_elected_s: Option<f64>,
    /// The new leader's Consul logged `cluster leadership acquired` (Consul's own time).
    pub consul_elected_s: Option<f64>,
    /// `elect_s` minus the logged election: how long after the election the drill saw it.
    pub report_lag_s: Option<f64>,
    /// Swarm: the new leader's own API answered a node list. Consul: the new leader's KV
    /// accepted a write.
    pub api_back_s: Option<f64>,
    /// The workload was whole again (from the fault): the hello service's replicas running,
    /// and (Consul) the swarm's join data readable.
    pub workload_s: Option<f64>,
    pub workload_ok: bool,
    /// Consul: the swarm's join data (`flotilla/<cluster>/swarm/join`) read back after the
    /// fault.
    pub join_data_ok: Option<bool>,
    /// Running hello tasks before and after, and whether any was replaced.
    pub tasks_before: usize,
    pub tasks_after: usize,
    pub tasks_rescheduled: bool,
    /// The restore was issued (from the fault).
    pub restore_s: Option<f64>,
    /// The target back in the leader's view (from the restore): Swarm lists it
    /// `reachable`; Consul's autopilot lists it a healthy voter.
    pub rejoin_s: Option<f64>,
    /// The target's status in the leader's view when the drill stopped looking.
    pub rejoined_as: String,
    /// Every host connected with every role running in the control plane's status (from the
    /// restore).
    pub healthy_s: Option<f64>,
    pub bound_s: f64,
    pub passed: bool,
    pub verdict: String,
    pub timeline: Vec<Event>,
    /// Log lines received from the members while the drill ran.
    pub log_lines: usize,
    /// The members' election lines (`host/source | line`).
    pub election_lines: Vec<String>,
    /// Log sources that could not be streamed, with their error.
    pub log_errors: Vec<String>,
    /// When the control plane did not answer.
    pub control_plane_gaps: Vec<Gap>,
    /// When a host's log stream was cut (and resumed from its sources' last lines).
    pub log_gaps: Vec<LogGap>,
    /// What the drill could not observe, and why. Empty when it saw everything.
    pub unobserved: Vec<String>,
    /// What the clean-up did (hello service removed, …).
    pub cleanup: Vec<String>,
}

/// The hosts of `st` assigned `role`, with their first private address.
pub fn members(st: &v1::StatusResponse, role: v1::Role) -> Vec<Member> {
    st.hosts
        .iter()
        .filter(|h| !h.revoked && h.roles.contains(&(role as i32)))
        .map(|h| Member {
            name: h.name.clone(),
            ip: h.facts.as_ref().and_then(|f| f.private_addresses.first().cloned()).unwrap_or_default(),
        })
        .collect()
}

/// The members of `component` in `st` — checked: at least 3 of them (unless `force`;
/// never fewer than 2), `target` one of them, at least one manager, and every host
/// connected and running its roles. Pure: the CLI's pre-check on a status snapshot.
pub fn precheck(
    st: &v1::StatusResponse,
    component: Component,
    target: Option<&str>,
    force: bool,
) -> Result<Vec<Member>, FailoverError> {
    let members = members(st, component.role());
    let n = members.len();
    let noun = component.members_noun();
    // Same numbers for Consul's Raft as for Swarm's.
    let table = match component {
        Component::Swarm => QUORUM_TABLE.to_string(),
        Component::Consul => QUORUM_TABLE.replacen("managers", "servers ", 1),
    };
    let one = if n == 1 { noun.trim_end_matches('s') } else { noun };
    if n < 2 {
        return Err(FailoverError::Refused(format!(
            "cluster '{}' has {n} {one}: there is no other one to take over, so there is no failover to test:\n{table}",
            st.cluster
        )));
    }
    if n < 3 && !force {
        return Err(FailoverError::Refused(format!(
            "cluster '{}' has {n} {noun}: losing one loses the Raft quorum, so the cluster stops instead of failing over \
             (pass --force to watch that happen; deploy 3 or 5 managers to drill a real failover):\n{table}",
            st.cluster
        )));
    }
    if let Some(t) = target
        && !members.iter().any(|m| m.name == t)
    {
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        let what = match component {
            Component::Swarm => "a manager",
            Component::Consul => "a Consul server",
        };
        return Err(FailoverError::Refused(format!(
            "--target '{t}' is not {what} of cluster '{}' ({noun}: {})",
            st.cluster,
            names.join(", ")
        )));
    }
    let problems = health_problems(st);
    if !problems.is_empty() {
        return Err(FailoverError::Unhealthy { waited: Duration::ZERO, problems: problems.join("; ") });
    }
    let managers = self::members(st, v1::Role::Manager);
    if managers.is_empty() {
        return Err(FailoverError::Refused(format!(
            "cluster '{}' has no manager to run the hello workload on",
            st.cluster
        )));
    }
    if let Some(m) = members.iter().chain(&managers).find(|m| m.ip.is_empty()) {
        return Err(FailoverError::Unhealthy {
            waited: Duration::ZERO,
            problems: format!("{} has no known address", m.name),
        });
    }
    Ok(members)
}

/// What keeps `st` from being a healthy cluster: hosts without a session or unreachable,
/// assigned roles not running.
pub fn health_problems(st: &v1::StatusResponse) -> Vec<String> {
    let mut out = Vec::new();
    for h in &st.hosts {
        if h.revoked {
            continue;
        }
        if !h.connected {
            out.push(format!("{} has no session", h.name));
            continue;
        }
        if h.unreachable {
            out.push(format!("{} is unreachable (heartbeats missed)", h.name));
            continue;
        }
        for r in &h.roles {
            let status = h.role_status.iter().find(|s| s.role == *r);
            if status.is_none_or(|s| s.state != v1::RoleState::Running as i32) {
                let role = v1::Role::try_from(*r).map(v1::Role::name).unwrap_or("?");
                let msg = status.map(|s| s.message.clone()).unwrap_or_else(|| "no status yet".into());
                out.push(format!("{}'s {role} role is not running ({msg})", h.name));
            }
        }
    }
    if st.hosts.is_empty() {
        out.push("the cluster has no hosts".into());
    }
    out
}

/// Why the control plane's status shows `target` down for `component`, if it does.
pub fn shown_down(st: &v1::StatusResponse, target: &str, component: Component) -> Option<&'static str> {
    let h = st.hosts.iter().find(|h| h.name == target)?;
    if !h.connected {
        return Some("no session");
    }
    if h.unreachable {
        return Some("heartbeats missed");
    }
    if h.health.as_ref().is_some_and(|s| !s.engine_ok) {
        return Some("its Engine down");
    }
    if component == Component::Consul
        && h.role_status.iter().any(|s| s.role == v1::Role::Consul as i32 && s.state != v1::RoleState::Running as i32)
    {
        return Some("its consul role not running");
    }
    None
}

/// Election lines in a member's log: swarmkit's Raft in the Engine's journal, or Consul's.
pub fn is_election_line(component: Component, text: &str) -> bool {
    let patterns: &[&str] = match component {
        Component::Swarm => &["became leader", "elected leader", "lost leader", "became candidate", "became follower"],
        Component::Consul => &[
            "New leader elected",
            "cluster leadership acquired",
            "cluster leadership lost",
            "entering candidate state",
            "election won",
            "entering leader state",
            "heartbeat timeout reached",
        ],
    };
    patterns.iter().any(|p| text.contains(p))
}

/// The line a new leader logs when it has won (its time is the component's own election
/// time).
fn is_won_line(component: Component, text: &str) -> bool {
    match component {
        Component::Swarm => text.contains("became leader"),
        Component::Consul => text.contains("cluster leadership acquired"),
    }
}

/// Where the drill writes as it goes (stderr): progress and the live log lines.
struct Say {
    start: Instant,
    fault: Mutex<Option<Instant>>,
    timeline: Mutex<Vec<Event>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Say {
    fn new() -> Self {
        Self { start: Instant::now(), fault: Mutex::new(None), timeline: Mutex::new(Vec::new()) }
    }
    /// Seconds from the fault (0 before it).
    fn now_s(&self) -> f64 {
        lock(&self.fault).map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0)
    }
    /// `+1.23s` from the fault, or `(12.3s)` from the drill's start before it.
    fn t(&self) -> String {
        match *lock(&self.fault) {
            Some(f) => format!("{:>+7.2}s", f.elapsed().as_secs_f64()),
            None => format!("({:>5.1}s)", self.start.elapsed().as_secs_f64()),
        }
    }
    fn note(&self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("[drill {}] {what}", self.t());
    }
    /// A timeline event at `at` (from the fault).
    fn event(&self, at: Duration, what: impl Into<String>) -> f64 {
        self.event_s(at.as_secs_f64(), what)
    }
    fn event_s(&self, t: f64, what: impl Into<String>) -> f64 {
        let what = what.into();
        eprintln!("[drill {t:>+7.2}s] {what}");
        lock(&self.timeline).push(Event { t_s: t, what });
        t
    }
}

fn now_unix_ns() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(0)
}

/// What the live log follower kept.
#[derive(Default)]
struct Kept {
    lines: usize,
    election: Vec<String>,
    errors: Vec<String>,
    /// Lines saying a member won the election: host, the line's time (ns since the epoch).
    won: Vec<(String, i64)>,
    /// The last line's time per (host, source): the resume point, and the filter that
    /// drops lines a resumed stream sends again.
    last: HashMap<(String, String), i64>,
    /// Cuts of a host's stream (the control plane restarted), and when it was resumed.
    cuts: Vec<(String, Gap)>,
}

/// The members' logs, followed live through the control plane — one stream per host, so
/// each resumes on its own after a cut, as soon as its host has a session again.
struct LogFollower {
    kept: Arc<Mutex<Kept>>,
    tasks: Vec<AbortOnDropHandle<()>>,
}

impl LogFollower {
    /// Opens every host's stream (an error here fails the drill: nothing was done yet), then
    /// follows them in the background, resuming a cut one from its sources' last lines.
    async fn start(d: &Drill, hosts: Vec<String>, since_unix_ns: i64) -> Result<Self, FailoverError> {
        let component = d.opts.component;
        let request = move |host: &str, since_unix_ns: i64| v1::FollowLogsRequest {
            hosts: vec![host.to_string()],
            role: match component {
                Component::Swarm => 0,
                Component::Consul => v1::Role::Consul as i32,
            },
            engine: component == Component::Swarm,
            follow: true,
            since_unix_ns,
            ..Default::default()
        };
        let kept: Arc<Mutex<Kept>> = Arc::default();
        let mut tasks = Vec::new();
        for host in hosts {
            let mut admin = d.admin.clone();
            let first = admin.follow_logs(request(&host, since_unix_ns)).await?.into_inner();
            let (say, colour, k) = (d.say.clone(), d.opts.colour, kept.clone());
            tasks.push(AbortOnDropHandle::new(tokio::spawn(async move {
                let mut stream = first;
                loop {
                    let error = loop {
                        match stream.message().await {
                            Ok(Some(l)) => take_line(&k, &say, colour, component, l),
                            // Every source of this host ended.
                            Ok(None) => return,
                            Err(e) => break e.message().to_string(),
                        }
                    };
                    let from_s = say.now_s();
                    say.note(format!("{host}'s log stream cut ({error}); resuming it from its last line"));
                    lock(&k).cuts.push((host.clone(), Gap { from_s, to_s: None, error }));
                    // Until the control plane is back and the host has a session again.
                    stream = loop {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let since = lock(&k)
                            .last
                            .iter()
                            .filter(|((h, _), _)| *h == host)
                            .map(|(_, ns)| *ns)
                            .min()
                            .unwrap_or(since_unix_ns);
                        if let Ok(s) = admin.follow_logs(request(&host, since)).await {
                            break s.into_inner();
                        }
                    };
                    let at = say.now_s();
                    if let Some((_, cut)) = lock(&k).cuts.iter_mut().rev().find(|(h, c)| *h == host && c.to_s.is_none())
                    {
                        cut.to_s = Some(at);
                    }
                    say.note(format!("{host}'s log stream resumed"));
                }
            })));
        }
        Ok(Self { kept, tasks })
    }

    async fn stop(self) -> Kept {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        std::mem::take(&mut *lock(&self.kept))
    }
}

fn take_line(k: &Mutex<Kept>, say: &Say, colour: bool, component: Component, l: v1::LogLineOut) {
    let mut k = lock(k);
    if !l.error.is_empty() {
        eprintln!("{}: {}", crate::ui::log_prefix(&l.host, &l.source, colour), l.error);
        k.errors.push(format!("{}/{}: {}", l.host, l.source, l.error));
        return;
    }
    if l.eof {
        return;
    }
    let key = (l.host.clone(), l.source.clone());
    if k.last.get(&key).is_some_and(|last| l.unix_ns <= *last) {
        return;
    }
    k.last.insert(key, l.unix_ns);
    k.lines += 1;
    eprintln!("[drill {}] {} | {}", say.t(), crate::ui::log_prefix(&l.host, &l.source, colour), l.text.trim_end());
    if is_won_line(component, &l.text) {
        k.won.push((l.host.clone(), l.unix_ns));
    }
    if is_election_line(component, &l.text) {
        k.election.push(format!("{}/{} | {}", l.host, l.source, l.text.trim_end()));
    }
}

/// What the control plane's status showed during the drill.
#[derive(Default)]
struct CpSeen {
    gaps: Vec<Gap>,
    /// When the status first showed the target down, and why.
    detect: Option<(f64, &'static str)>,
    /// The target first shown down only after a gap: the time would measure the control
    /// plane's restart (and the agent's reconnect), not its detection, so it is not kept.
    ambiguous: bool,
}

/// Reads the control plane's status every [`CP_POLL`] from the fault on: when it shows the
/// target down, and when it does not answer.
struct CpWatch {
    seen: Arc<Mutex<CpSeen>>,
    task: AbortOnDropHandle<()>,
}

impl CpWatch {
    fn start(d: &Drill, target: String) -> Self {
        let seen: Arc<Mutex<CpSeen>> = Arc::default();
        let (mut admin, say, component, s) = (d.admin.clone(), d.say.clone(), d.opts.component, seen.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(CP_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let res = tokio::time::timeout(Duration::from_secs(2), admin.status(v1::StatusRequest {})).await;
                let at = say.now_s();
                let st = match res {
                    Ok(Ok(st)) => st.into_inner(),
                    Ok(Err(e)) => {
                        cp_down(&s, &say, at, e.message());
                        continue;
                    }
                    Err(_) => {
                        cp_down(&s, &say, at, "no answer within 2 s");
                        continue;
                    }
                };
                let mut seen = lock(&s);
                if let Some(g) = seen.gaps.last_mut().filter(|g| g.to_s.is_none()) {
                    g.to_s = Some(at);
                    let from = g.from_s;
                    drop(seen);
                    say.event_s(at, format!("control plane: answers again ({:.1} s without it)", at - from));
                    seen = lock(&s);
                }
                if seen.detect.is_none()
                    && let Some(why) = shown_down(&st, &target, component)
                {
                    if !seen.gaps.is_empty() {
                        seen.ambiguous = true;
                    } else {
                        seen.detect = Some((at, why));
                        drop(seen);
                        say.event_s(at, format!("control plane: status shows {target} with {why}"));
                    }
                }
            }
        });
        Self { seen, task: AbortOnDropHandle::new(task) }
    }

    async fn stop(self) -> CpSeen {
        self.task.abort();
        let _ = self.task.await;
        std::mem::take(&mut *lock(&self.seen))
    }
}

fn cp_down(s: &Mutex<CpSeen>, say: &Say, at: f64, error: &str) {
    let mut seen = lock(s);
    if seen.gaps.last().is_some_and(|g| g.to_s.is_none()) {
        return;
    }
    seen.gaps.push(Gap { from_s: at, to_s: None, error: error.to_string() });
    drop(seen);
    say.event_s(at, format!("control plane: no answer ({error}); the drill goes on with the members' own views"));
}

/// What the drill has done that the clean-up must undo.
#[derive(Default)]
struct Pending {
    /// The managers' Engines (to remove the hello service through).
    engines: Vec<(String, Docker)>,
    /// The Consul servers' HTTP APIs (`ip:8500`, to remove the KV probe key through).
    consul_addrs: Vec<String>,
    /// The hello service may exist.
    hello: bool,
    /// The KV probe key may exist.
    kv_probe: bool,
    /// The fault was issued on this host and is not undone yet.
    faulted: Option<String>,
}

/// What every phase of one drill shares.
struct Drill {
    opts: Options,
    admin: AdminClient<Channel>,
    say: Arc<Say>,
    /// The cluster's provider, as its state directory records it (lab or AWS).
    provider: Arc<Provider>,
    pending: Mutex<Pending>,
}

/// The drill's hello image on AWS (a shell to stay up; the lab uses its own from its registry).
pub const AWS_DRILL_IMAGE: &str = "busybox:1.36";

impl From<ProviderError> for FailoverError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::Lab(e) => FailoverError::Lab(e),
            ProviderError::Aws(e) => FailoverError::Aws(e),
        }
    }
}

/// Runs the drill; a report that did not pass is returned as `Ok` (the caller decides the
/// exit code). A signal on `signals` (SIGINT, SIGTERM) stops it: the target is restored, the
/// drill's service removed, and [`FailoverError::Interrupted`] says what was done; a second
/// signal cuts that clean-up short. Every other way out cleans up too.
pub async fn run(
    admin: AdminClient<Channel>,
    opts: Options,
    mut signals: mpsc::UnboundedReceiver<&'static str>,
) -> Result<Report, FailoverError> {
    let record = ProviderRecord::load(&opts.state_dir);
    let provider = Arc::new(Provider::from_record(&opts.cluster, &opts.state_dir, &record).await?);
    let d = Drill { opts, admin, say: Arc::new(Say::new()), provider, pending: Mutex::new(Pending::default()) };
    let outcome = tokio::select! {
        r = drill(&d) => Ok(r),
        Some(sig) = signals.recv() => Err(sig),
    };
    if let Err(sig) = outcome {
        d.say.note(format!("{sig}: stopping the drill and undoing it (again to skip that)"));
    }
    let cleanup = tokio::select! {
        notes = clean_up(&d) => notes,
        Some(sig) = signals.recv() => {
            let mut notes = vec![format!("clean-up cut short by {sig}")];
            notes.extend(left_over(&d));
            notes
        }
    };
    for n in &cleanup {
        d.say.note(format!("clean-up: {n}"));
    }
    match outcome {
        Ok(Ok(mut report)) => {
            report.cleanup = cleanup;
            Ok(report)
        }
        Ok(Err(e)) => Err(e),
        Err(signal) => Err(FailoverError::Interrupted {
            signal,
            cleanup: if cleanup.is_empty() { "nothing to undo".to_string() } else { cleanup.join("; ") },
        }),
    }
}

async fn drill(d: &Drill) -> Result<Report, FailoverError> {
    let (opts, say) = (&d.opts, &d.say);
    let mut admin = d.admin.clone();
    let component = opts.component;
    let cert_dir = opts.state_dir.join("docker");

    // 1. Pre-checks (waiting a while for a cluster that is still settling).
    let settle_deadline = Instant::now() + SETTLE_TIMEOUT;
    let (members, managers) = loop {
        let st = admin.status(v1::StatusRequest {}).await?.into_inner();
        // Consul's own view too: a server that just came back (from a drill before this one)
        // may not vote yet, and then the cluster cannot lose another.
        let checked = precheck(&st, component, opts.target.as_deref(), opts.force)
            .map(|m| (m, self::members(&st, v1::Role::Consul)));
        let checked = match checked {
            Ok((m, servers)) if !opts.force && !servers.is_empty() => {
                let problems = consul::fault_tolerance_problems(&servers).await;
                if problems.is_empty() {
                    Ok(m)
                } else {
                    Err(FailoverError::Unhealthy { waited: Duration::ZERO, problems: problems.join("; ") })
                }
            }
            Ok((m, _)) => Ok(m),
            Err(e) => Err(e),
        };
        match checked {
            Ok(m) => break (m, self::members(&st, v1::Role::Manager)),
            Err(FailoverError::Unhealthy { problems, .. }) if Instant::now() < settle_deadline => {
                say.note(format!("waiting for a healthy cluster: {problems}"));
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(FailoverError::Unhealthy { problems, .. }) => {
                return Err(FailoverError::Unhealthy { waited: SETTLE_TIMEOUT, problems });
            }
            Err(e) => return Err(e),
        }
    };
    let names = |ms: &[Member]| ms.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ");
    say.note(format!(
        "pre-check: {} {} ({}), every host connected, every role running",
        members.len(),
        component.members_noun(),
        names(&members)
    ));
    let mut engines: HashMap<String, Docker> = HashMap::new();
    for m in &managers {
        let e = tokio::time::timeout(Duration::from_secs(10), verify::engine(&m.ip, &cert_dir))
            .await
            .map_err(|_| FailoverError::Engine(format!("{}'s Engine ({}) did not answer within 10 s", m.name, m.ip)))?
            .map_err(|e| FailoverError::Engine(format!("{}'s Engine: {e}", m.name)))?;
        engines.insert(m.name.clone(), e);
    }
    {
        let mut p = lock(&d.pending);
        p.engines = engines.iter().map(|(n, e)| (n.clone(), e.clone())).collect();
        if component == Component::Consul {
            p.consul_addrs = members.iter().map(|m| format!("{}:8500", m.ip)).collect();
        }
    }

    // The leaders, from the members' own views.
    let swarm_leader = swarm::find_leader(&engines, &managers).await;
    let old_leader = match component {
        Component::Swarm => swarm_leader
            .clone()
            .ok_or_else(|| FailoverError::Engine("no manager's Engine names a swarm leader".into()))?,
        Component::Consul => consul::find_leader(&members)
            .await
            .ok_or_else(|| FailoverError::Consul("no Consul server names a leader".into()))?,
    };
    let target = opts.target.clone().unwrap_or_else(|| old_leader.clone());
    let target_is_leader = target == old_leader;
    let target_ip = members.iter().find(|m| m.name == target).map(|m| m.ip.clone()).unwrap_or_default();
    let what = match component {
        Component::Swarm => "swarm leader",
        Component::Consul => "Consul leader",
    };
    say.note(format!("{what}: {old_leader}; taking down: {target} ({:?} mode)", opts.mode));

    // The hello workload, through the swarm's leader.
    let swarm_leader =
        swarm_leader.ok_or_else(|| FailoverError::Engine("no manager's Engine names a swarm leader".into()))?;
    let image = match d.provider.as_ref() {
        Provider::Lab(lab) => {
            let registry = lab.registry_addr().await?.ok_or_else(|| {
                FailoverError::Workload(format!(
                    "cluster '{}' has no lab registry to pull the hello image from",
                    opts.cluster
                ))
            })?;
            format!("{registry}/flotilla/hello:1")
        }
        Provider::Aws(_) => AWS_DRILL_IMAGE.to_string(),
    };
    say.note(format!("hello workload: {HELLO_SERVICE}, {HELLO_REPLICAS} replicas on the workers ({image})"));
    lock(&d.pending).hello = true;
    let tasks_before = swarm::ensure_hello(&engines[&swarm_leader], &image).await?;
    say.note(format!("hello workload: {} tasks running", tasks_before.len()));
    if component == Component::Consul {
        // The join data must be there before the fault, or reading it after proves nothing.
        let (via, cluster_id) = consul::join_data(&members, &opts.cluster)
            .await
            .map_err(|e| FailoverError::Consul(format!("the swarm's join data before the fault: {e}")))?;
        say.note(format!("swarm join data readable through {via} (cluster id {cluster_id})"));
    }

    // 2. Live logs from every member.
    let logs = LogFollower::start(d, members.iter().map(|m| m.name.clone()).collect(), now_unix_ns()).await?;
    say.note(match component {
        Component::Swarm => "following every manager's Engine journal; lines below are live",
        Component::Consul => "following every Consul server's log; lines below are live",
    });

    // 3. The fault.
    let fault_at = Instant::now();
    let fault_unix_ns = now_unix_ns();
    *lock(&say.fault) = Some(fault_at);
    let cp = CpWatch::start(d, target.clone());
    fault(d, &target, fault_at).await?;

    let mut r = Report {
        cluster: opts.cluster.clone(),
        mode: format!("{:?}", opts.mode).to_lowercase(),
        component: format!("{component:?}").to_lowercase(),
        old_leader: old_leader.clone(),
        target: target.clone(),
        tasks_before: tasks_before.len(),
        bound_s: opts.bound.as_secs_f64(),
        ..Default::default()
    };
    let deadline = fault_at + opts.bound;
    let m = Measure {
        target: &target,
        target_ip: &target_ip,
        target_is_leader,
        old_leader: &old_leader,
        members: &members,
        fault_at,
        deadline,
    };

    // 4. Measure, then the workload.
    match component {
        Component::Swarm => {
            let new_leader = swarm::measure(d, &m, &engines, &mut r).await;
            r.new_leader = new_leader.clone().unwrap_or_default();
            let leader_engine = new_leader.as_ref().and_then(|l| engines.get(l));
            swarm::workload(d, &m, leader_engine, &tasks_before, &mut r).await;
        }
        Component::Consul => {
            let new_leader = consul::measure(d, &m, &mut r).await;
            r.new_leader = new_leader.unwrap_or_default();
            let survivors: Vec<Docker> =
                engines.iter().filter(|(n, _)| **n != target).map(|(_, e)| e.clone()).collect();
            consul::workload(d, &m, &survivors, &tasks_before, &mut r).await;
        }
    }

    // 5. Restore, then watch the target rejoin.
    match restore(d, &target, Instant::now() + opts.bound).await {
        Ok(what) => r.restore_s = Some(say.event(fault_at.elapsed(), format!("restore: {what}"))),
        Err(e) => {
            say.event(fault_at.elapsed(), format!("restore failed: {e}"));
        }
    }
    let restore_at = fault_at + Duration::from_secs_f64(r.restore_s.unwrap_or_default());
    let rejoin_deadline = Instant::now() + opts.bound;
    if r.restore_s.is_some() {
        match component {
            Component::Swarm => {
                let leader_engine = engines.get(&r.new_leader).cloned();
                swarm::rejoin(d, &m, &engines, leader_engine.as_ref(), restore_at, rejoin_deadline, &mut r).await;
            }
            Component::Consul => consul::rejoin(d, &m, restore_at, rejoin_deadline, &mut r).await,
        }
    }
    // The control plane's view: every host connected, every role running.
    loop {
        if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(2), admin.status(v1::StatusRequest {})).await
            && health_problems(&st.into_inner()).is_empty()
        {
            let at = restore_at.elapsed();
            r.healthy_s = Some(at.as_secs_f64());
            say.event(
                fault_at.elapsed(),
                format!(
                    "healthy: every host connected, every role running ({:.2} s after the restore)",
                    at.as_secs_f64()
                ),
            );
            break;
        }
        if Instant::now() > rejoin_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A last moment for the restored member's own lines to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kept = logs.stop().await;
    let seen = cp.stop().await;
    r.log_lines = kept.lines;
    r.election_lines = kept.election;
    r.log_errors = kept.errors;
    // The component's own election time, from the new leader's log (same clock on the lab;
    // on separate machines it is as good as their clock sync).
    if let Some((host, ns)) =
        kept.won.iter().filter(|(h, ns)| *h != target && *ns > fault_unix_ns).min_by_key(|(_, ns)| *ns)
    {
        let t = (ns - fault_unix_ns) as f64 / 1e9;
        match component {
            Component::Swarm => r.swarm_elected_s = Some(t),
            Component::Consul => r.consul_elected_s = Some(t),
        }
        r.report_lag_s = r.elect_s.map(|e| e - t);
        let line = match component {
            Component::Swarm => "Engine logged \"became leader\"",
            Component::Consul => "Consul logged \"cluster leadership acquired\"",
        };
        lock(&say.timeline).push(Event { t_s: t, what: format!("{component:?}: {host}'s {line}").to_lowercase() });
    } else if target_is_leader && !r.new_leader.is_empty() {
        r.unobserved.push(format!(
            "the new leader's own election line was not among the streamed logs: the {} election's own time and report_lag_s are unknown",
            format!("{component:?}").to_lowercase()
        ));
    }
    r.control_plane_detect_s = seen.detect.map(|(t, _)| t);
    for g in &seen.gaps {
        let until = g.to_s.map(|t| format!("{t:+.2} s")).unwrap_or_else(|| "the end of the drill".into());
        r.unobserved.push(format!(
            "the control plane did not answer from {:+.2} s to {until} ({}): its view of the hosts was not observed then, and what needs it (the engine-mode restore, the healthy check) waited for it",
            g.from_s, g.error
        ));
    }
    if r.control_plane_detect_s.is_none() {
        r.unobserved.push(if seen.ambiguous || !seen.gaps.is_empty() {
            format!("control_plane_detect_s: not observed — the control plane stopped answering before its status showed {target} down, and after its restart the time would measure the restart, not the detection")
        } else {
            format!("control_plane_detect_s: the control plane's status never showed {target} down within the bound")
        });
    }
    r.control_plane_gaps = seen.gaps;
    for (h, g) in &kept.cuts {
        match g.to_s {
            Some(to) => say.note(format!("{h}'s log stream was cut at {:+.2} s and resumed at {to:+.2} s from its last line", g.from_s)),
            None => r.unobserved.push(format!(
                "{h}'s log lines after {:+.2} s: its stream was cut ({}) and could not be resumed before the drill ended",
                g.from_s, g.error
            )),
        }
    }
    r.log_gaps = kept
        .cuts
        .into_iter()
        .map(|(h, g)| LogGap { host: h, from_s: g.from_s, to_s: g.to_s, error: g.error })
        .collect();
    r.timeline = lock(&say.timeline).clone();
    r.timeline.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    judge(&mut r, target_is_leader);
    Ok(r)
}

/// The fault's parameters, shared by the measuring phases.
struct Measure<'a> {
    target: &'a str,
    target_ip: &'a str,
    target_is_leader: bool,
    old_leader: &'a str,
    members: &'a [Member],
    fault_at: Instant,
    deadline: Instant,
}

/// How long the agent holds Consul down for the drill at most: well past the drill's end,
/// so only an abandoned drill ever reaches it.
fn hold_lease(bound: Duration) -> u32 {
    u32::try_from(bound.as_secs() * 3 + 60).unwrap_or(u32::MAX)
}

/// Takes `target` down.
async fn fault(d: &Drill, target: &str, fault_at: Instant) -> Result<(), FailoverError> {
    // Recorded first: an interrupt while the fault is being issued still restores.
    lock(&d.pending).faulted = Some(target.to_string());
    let say = &d.say;
    match (d.opts.mode, d.opts.component) {
        (Mode::Engine, Component::Swarm) => {
            d.admin
                .clone()
                .engine_action(v1::EngineActionRequest {
                    host_name: target.to_string(),
                    kind: v1::engine_action::Kind::StopEngine as i32,
                    ..Default::default()
                })
                .await?;
            say.event(fault_at.elapsed(), format!("fault: {target}'s agent told to stop its Docker Engine"));
        }
        (Mode::Engine, Component::Consul) => {
            let hold_s = hold_lease(d.opts.bound);
            d.admin
                .clone()
                .engine_action(v1::EngineActionRequest {
                    host_name: target.to_string(),
                    kind: v1::engine_action::Kind::StopRole as i32,
                    role: v1::Role::Consul as i32,
                    hold_s,
                })
                .await?;
            say.event(
                fault_at.elapsed(),
                format!("fault: {target}'s agent told to kill its Consul container and hold the role down (lease {hold_s} s)"),
            );
        }
        (Mode::Host, _) => {
            say.event(Duration::ZERO, format!("fault: the {} provider stops host {target}", d.provider.kind()));
            // Stopping waits for the host's shutdown; probing runs meanwhile.
            let (provider, t, say) = (d.provider.clone(), target.to_string(), d.say.clone());
            tokio::spawn(async move {
                match provider.stop(&t).await {
                    Ok(()) => say.event(fault_at.elapsed(), format!("host {t} stopped (provider)")),
                    Err(e) => say.event(fault_at.elapsed(), format!("stopping host {t} failed: {e}")),
                };
            });
        }
    }
    Ok(())
}

/// Undoes the fault on `target`, retrying until `deadline` what needs the control plane (it
/// may be restarting, or the agent reconnecting). Returns what was done.
async fn restore(d: &Drill, target: &str, deadline: Instant) -> Result<String, String> {
    let what = match d.opts.mode {
        Mode::Engine => {
            let (kind, role, what) = match d.opts.component {
                Component::Swarm => (
                    v1::engine_action::Kind::StartEngine,
                    v1::Role::Unspecified,
                    format!("{target}'s agent told to start its Docker Engine"),
                ),
                Component::Consul => (
                    v1::engine_action::Kind::StartRole,
                    v1::Role::Consul,
                    format!("{target}'s agent told to release its Consul role"),
                ),
            };
            let mut waited = None;
            loop {
                let res = d
                    .admin
                    .clone()
                    .engine_action(v1::EngineActionRequest {
                        host_name: target.to_string(),
                        kind: kind as i32,
                        role: role as i32,
                        hold_s: 0,
                    })
                    .await;
                match res {
                    Ok(_) => break,
                    Err(e)
                        if Instant::now() < deadline
                            && matches!(
                                e.code(),
                                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                            ) =>
                    {
                        if waited.is_none() {
                            d.say.note(format!(
                                "restore: waiting for the control plane and {target}'s session ({})",
                                e.message()
                            ));
                            waited = Some(Instant::now());
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(format!("{target}: {}", e.message())),
                }
            }
            match waited {
                Some(w) => format!(
                    "{what} (after waiting {:.1} s for the control plane and its session)",
                    w.elapsed().as_secs_f64()
                ),
                None => what,
            }
        }
        Mode::Host => {
            // The stop may still be in progress: start only once the host is stopped.
            // (EC2: `stopping` too — an instance cannot be started until it is `stopped`.)
            while d.provider.host(target).await.is_ok_and(|h| {
                matches!(h.state, crate::providers::HostState::Running | crate::providers::HostState::Stopping)
            }) && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            d.provider.start(target).await.map_err(|e| format!("starting host {target}: {e}"))?;
            format!("the {} provider started host {target}", d.provider.kind())
        }
    };
    lock(&d.pending).faulted = None;
    Ok(what)
}

/// How to undo by hand what the clean-up could not.
fn manual_fix(d: &Drill, target: &str) -> String {
    let Provider::Lab(lab) = d.provider.as_ref() else {
        return match d.opts.mode {
            Mode::Host => {
                format!("start the instance by hand: `aws ec2 start-instances` for the instance tagged Name={target}")
            }
            Mode::Engine => format!(
                "on {target} (ssh or SSM): `sudo systemctl start docker` / `sudo systemctl restart flotilla-agent`"
            ),
        };
    };
    let container = lab.container_name(target);
    match (d.opts.mode, d.opts.component) {
        (Mode::Engine, Component::Swarm) => {
            format!("start its Engine by hand: `docker exec {container} systemctl start docker`")
        }
        (Mode::Engine, Component::Consul) => format!(
            "its agent restores Consul by itself when the hold's lease ends ({} s after the fault) or the agent restarts (`docker exec {container} systemctl restart flotilla-agent`)",
            hold_lease(d.opts.bound)
        ),
        (Mode::Host, _) => format!("start the host by hand: `docker start {container}`"),
    }
}

/// What is left undone (after a clean-up was cut short).
fn left_over(d: &Drill) -> Vec<String> {
    let p = lock(&d.pending);
    let mut out = Vec::new();
    if let Some(t) = &p.faulted {
        out.push(format!("{t} is still down: {}", manual_fix(d, t)));
    }
    if p.hello {
        out.push(format!("the drill's service may be left: `docker service rm {HELLO_SERVICE}` through the leader"));
    }
    out
}

/// Undoes what the drill did and has not undone itself: restores the target, removes the
/// KV probe key and the hello service. Returns what it did.
async fn clean_up(d: &Drill) -> Vec<String> {
    let patience = d.opts.bound.max(CLEANUP_TIMEOUT);
    let mut notes = Vec::new();
    let faulted = lock(&d.pending).faulted.clone();
    if let Some(t) = faulted {
        match restore(d, &t, Instant::now() + patience).await {
            Ok(what) => notes.push(format!("restored {t}: {what}")),
            Err(e) => notes.push(format!("could NOT restore {t} ({e}): {}", manual_fix(d, &t))),
        }
    }
    let (kv, addrs, hello, engines) = {
        let p = lock(&d.pending);
        (p.kv_probe, p.consul_addrs.clone(), p.hello, p.engines.clone())
    };
    if kv {
        let key = kv_probe_key(&d.opts.cluster);
        match consul::delete_key(&addrs, &key, Instant::now() + patience).await {
            Ok(()) => lock(&d.pending).kv_probe = false,
            Err(e) => notes.push(format!("could not remove the Consul key {key} ({e})")),
        }
    }
    if hello {
        match swarm::remove_hello(&engines, Instant::now() + patience).await {
            Ok(true) => {
                lock(&d.pending).hello = false;
                notes.push(format!("removed the drill's service {HELLO_SERVICE}"));
            }
            Ok(false) => lock(&d.pending).hello = false,
            Err(e) => notes.push(format!(
                "could not remove the drill's service {HELLO_SERVICE} ({e}): `docker service rm {HELLO_SERVICE}` once the swarm has a leader"
            )),
        }
    }
    notes
}

/// Sets `passed` and the verdict from what was measured.
pub fn judge(r: &mut Report, target_is_leader: bool) {
    let component = if r.component == "consul" { Component::Consul } else { Component::Swarm };
    let want = component.rejoined_as();
    let mut failed = Vec::new();
    if r.detect_s.is_none() {
        failed.push(format!("the loss of {} was not detected", r.target));
    }
    if r.new_leader.is_empty() {
        failed.push("no surviving member named a leader".to_string());
    } else if target_is_leader && r.new_leader == r.old_leader {
        failed.push("the leader did not change".to_string());
    } else if !target_is_leader && r.new_leader != r.old_leader {
        failed
            .push(format!("the leader changed ({} → {}) though a follower was taken down", r.old_leader, r.new_leader));
    }
    if r.api_back_s.is_none() {
        failed.push(match component {
            Component::Swarm => "the leader's API did not answer again".to_string(),
            Component::Consul => "Consul's KV did not accept a write again".to_string(),
        });
    }
    if r.join_data_ok == Some(false) {
        failed.push("the swarm's join data could not be read from Consul".to_string());
    }
    if component == Component::Swarm && r.new_leader.is_empty() {
        // The tasks are asked of the new leader: without one they were not checked (said above).
    } else if r.tasks_after < HELLO_REPLICAS {
        failed.push(format!("{} of {HELLO_REPLICAS} hello tasks running", r.tasks_after));
    } else if !r.workload_ok && r.join_data_ok != Some(false) {
        failed.push("the workload was not seen whole again within the bound".to_string());
    }
    if r.restore_s.is_none() {
        failed.push(format!("{} could not be restored", r.target));
    }
    if r.rejoin_s.is_none() || r.rejoined_as != want {
        failed.push(format!(
            "{} is not back as a {want} (last seen: {})",
            r.target,
            if r.rejoined_as.is_empty() { "not listed" } else { &r.rejoined_as }
        ));
    }
    if r.healthy_s.is_none() {
        failed.push("the control plane does not see every host connected with every role running".to_string());
    }
    r.passed = failed.is_empty();
    let what = match component {
        Component::Swarm => "the API answered",
        Component::Consul => "KV accepted a write",
    };
    r.verdict = if r.passed {
        if target_is_leader {
            format!(
                "PASSED: {} took over from {} in {:.2} s; {what} at {:.2} s; {} hello tasks {}{}; {} rejoined as {want} {:.2} s after the restore",
                r.new_leader,
                r.old_leader,
                r.elect_s.unwrap_or_default(),
                r.api_back_s.unwrap_or_default(),
                r.tasks_after,
                if r.tasks_rescheduled { "running (rescheduled)" } else { "kept running" },
                if r.join_data_ok == Some(true) { ", the swarm's join data readable" } else { "" },
                r.old_leader,
                r.rejoin_s.unwrap_or_default()
            )
        } else {
            format!(
                "PASSED: follower {} went down and came back as {want} {:.2} s after the restore; {} stayed leader",
                r.target,
                r.rejoin_s.unwrap_or_default(),
                r.new_leader
            )
        }
    } else {
        format!("FAILED within the {:.0} s bound: {}", r.bound_s, failed.join("; "))
    };
    if !r.unobserved.is_empty() {
        r.verdict.push_str(&format!(" (not observed: {} item(s), see `unobserved`)", r.unobserved.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, roles: &[v1::Role], ip: &str) -> v1::HostStatus {
        v1::HostStatus {
            name: name.into(),
            roles: roles.iter().map(|r| *r as i32).collect(),
            connected: true,
            facts: Some(v1::HostFacts { private_addresses: vec![ip.into()], ..Default::default() }),
            role_status: roles
                .iter()
                .map(|r| v1::RoleStatus { role: *r as i32, state: v1::RoleState::Running as i32, ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    fn cluster(managers: usize) -> v1::StatusResponse {
        let mut hosts: Vec<_> = (0..managers)
            .map(|i| {
                host(&format!("manager{i}"), &[v1::Role::Consul, v1::Role::Manager], &format!("10.0.0.{}", 10 + i))
            })
            .collect();
        hosts.push(host("node0", &[v1::Role::Node], "10.0.0.20"));
        v1::StatusResponse { cluster: "c".into(), hosts, ..Default::default() }
    }

    #[test]
    fn issue_7_two_managers_are_refused_with_the_quorum_table_unless_forced() {
        let e = precheck(&cluster(2), Component::Swarm, None, false).expect_err("2 managers refused").to_string();
        assert!(e.contains("2 managers") && e.contains("quorum") && e.contains("tolerates the loss of"), "{e}");
        assert!(e.contains("--force"), "{e}");
        assert_eq!(precheck(&cluster(2), Component::Swarm, None, true).expect("forced").len(), 2);
        let e = precheck(&cluster(1), Component::Swarm, None, true)
            .expect_err("1 manager: nothing to fail over to")
            .to_string();
        assert!(e.contains("1 manager:") && e.contains("no other one"), "{e}");
        assert_eq!(precheck(&cluster(3), Component::Swarm, None, false).expect("3 managers").len(), 3);
    }

    #[test]
    fn issue_7_two_consul_servers_are_refused_with_the_quorum_table_unless_forced() {
        let e = precheck(&cluster(2), Component::Consul, None, false).expect_err("2 servers refused").to_string();
        assert!(e.contains("2 Consul servers") && e.contains("quorum") && e.contains("servers   quorum"), "{e}");
        assert_eq!(precheck(&cluster(3), Component::Consul, None, false).expect("3 servers").len(), 3);
        let e = precheck(&cluster(3), Component::Consul, Some("node0"), false)
            .expect_err("node0 runs no Consul")
            .to_string();
        assert!(e.contains("'node0' is not a Consul server") && e.contains("manager0, manager1, manager2"), "{e}");
    }

    #[test]
    fn issue_7_a_target_must_be_a_manager_and_the_cluster_healthy() {
        let e =
            precheck(&cluster(3), Component::Swarm, Some("node0"), false).expect_err("node0 is no manager").to_string();
        assert!(e.contains("'node0' is not a manager") && e.contains("manager0, manager1, manager2"), "{e}");
        precheck(&cluster(3), Component::Swarm, Some("manager2"), false).expect("a manager target");

        let mut st = cluster(3);
        st.hosts[1].connected = false;
        st.hosts[3].role_status[0].state = v1::RoleState::Failed as i32;
        st.hosts[3].role_status[0].message = "Engine does not answer".into();
        match precheck(&st, Component::Swarm, None, false) {
            Err(FailoverError::Unhealthy { problems, .. }) => {
                assert!(problems.contains("manager1 has no session"), "{problems}");
                assert!(problems.contains("node0's node role is not running (Engine does not answer)"), "{problems}");
            }
            other => panic!("want Unhealthy, got {other:?}"),
        }
    }

    #[test]
    fn the_control_plane_shows_a_target_down_by_component() {
        let mut st = cluster(3);
        assert_eq!(shown_down(&st, "manager0", Component::Swarm), None);
        st.hosts[0].role_status[0].state = v1::RoleState::Degraded as i32;
        assert_eq!(shown_down(&st, "manager0", Component::Swarm), None, "a held Consul is no Swarm fault");
        assert_eq!(shown_down(&st, "manager0", Component::Consul), Some("its consul role not running"));
        st.hosts[1].health = Some(v1::HealthSample { engine_ok: false, ..Default::default() });
        assert_eq!(shown_down(&st, "manager1", Component::Swarm), Some("its Engine down"));
        st.hosts[2].connected = false;
        assert_eq!(shown_down(&st, "manager2", Component::Consul), Some("no session"));
    }

    #[test]
    fn election_lines_are_recognised() {
        assert!(is_election_line(
            Component::Swarm,
            "raft.node: 4eca261bb047ef85 elected leader 4fe1f1eb79046f00 at term 2"
        ));
        assert!(is_election_line(Component::Swarm, "4fe1f1eb79046f00 became leader at term 3"));
        assert!(!is_election_line(Component::Swarm, "worker d35wanhwtb4gdfsmyikqtf47l was successfully registered"));
        let consul = "2026-11-02T10:00:01.123Z [INFO]  agent.server: New leader elected: payload=manager1";
        assert!(is_election_line(Component::Consul, consul) && !is_election_line(Component::Swarm, consul));
        assert!(is_won_line(Component::Consul, "[INFO]  agent.server: cluster leadership acquired"));
        assert!(!is_won_line(Component::Consul, "[INFO]  agent.server: New leader elected: payload=manager1"));
    }

    fn passing(component: &str, rejoined_as: &str) -> Report {
        Report {
            component: component.into(),
            old_leader: "manager0".into(),
            target: "manager0".into(),
            new_leader: "manager1".into(),
            detect_s: Some(0.3),
            elect_s: Some(1.2),
            api_back_s: Some(1.2),
            workload_ok: true,
            tasks_after: 2,
            restore_s: Some(2.0),
            rejoin_s: Some(3.0),
            rejoined_as: rejoined_as.into(),
            healthy_s: Some(4.0),
            bound_s: 60.0,
            ..Default::default()
        }
    }

    #[test]
    fn the_verdict_needs_a_new_leader_the_workload_and_a_reachable_rejoin() {
        let mut r = passing("swarm", "reachable");
        judge(&mut r, true);
        assert!(r.passed, "{}", r.verdict);
        r.new_leader = "manager0".into();
        judge(&mut r, true);
        assert!(!r.passed && r.verdict.contains("did not change"), "{}", r.verdict);
        r.new_leader = "manager1".into();
        r.rejoined_as = "unreachable".into();
        judge(&mut r, true);
        assert!(!r.passed && r.verdict.contains("not back as a reachable"), "{}", r.verdict);
    }

    #[test]
    fn issue_7_a_consul_drill_passes_on_a_voter_rejoin_and_readable_join_data() {
        let mut r = passing("consul", "voter");
        r.join_data_ok = Some(true);
        judge(&mut r, true);
        assert!(r.passed && r.verdict.contains("join data readable"), "{}", r.verdict);
        r.join_data_ok = Some(false);
        judge(&mut r, true);
        assert!(!r.passed && r.verdict.contains("join data could not be read"), "{}", r.verdict);
        let mut r = passing("consul", "non-voter");
        judge(&mut r, true);
        assert!(!r.passed && r.verdict.contains("not back as a voter (last seen: non-voter)"), "{}", r.verdict);
    }

    #[test]
    fn issue_7_what_was_not_observed_is_named_in_the_verdict() {
        let mut r = passing("swarm", "reachable");
        r.unobserved.push("the control plane did not answer from +3.00 s to +9.00 s".into());
        judge(&mut r, true);
        assert!(r.passed, "a gap in the control plane's view does not fail a drill whose own probes saw it all");
        assert!(r.verdict.contains("not observed: 1 item"), "{}", r.verdict);
    }
}
