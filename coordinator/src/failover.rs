//! `coordinator failover-test`: the seed's HA test ("kill the primary manager, watch a
//! replica take over, bring the old primary back as a replica") as one measured drill.
//!
//! 1. **Pre-checks** on the control plane's status ([`precheck`], pure): at least 3 managers
//!    (else the quorum table, unless `--force`), every host connected, every role running;
//!    then a long-running hello service ([`HELLO_SERVICE`], 2 replicas on the workers) is
//!    made to run, to prove workloads survive.
//! 2. **Live logs**: before the fault, every manager's Engine journal is followed through the
//!    admin `FollowLogs` RPC and printed merged as `host/engine | line`; the lines are kept,
//!    and the election lines (`became leader`, `elected leader`, …) go into the report.
//! 3. **The fault**: the leader (as the managers' Engines report it; `--target` picks
//!    another manager) loses its Engine (`--mode engine`: its agent stops it through
//!    systemd) or the whole host (`--mode host`: the provider stops it).
//! 4. **Measure** by polling the managers' Engines over mutual TLS every 100 ms, each call
//!    bounded (a manager's node list blocks while the swarm has no leader), so a slow
//!    answer never delays the next probe: `detect` (the target's Engine stops answering),
//!    `elect` (a surviving manager's node list names a new leader), `api_back` (the new
//!    leader's own API answers a node list), the hello service's running tasks; then the
//!    restore (Engine started again / host started) and `rejoin` (the old leader is listed
//!    `reachable` by the new leader), and the cluster healthy again in the control plane's
//!    status. Every time is measured from the fault, except `rejoin_s` and `healthy_s`,
//!    which count from the restore.
//!
//! The drill passes when each phase finished within the bound, the leader changed (or, for
//! a follower target, stayed), the hello service kept its replicas running, and the old
//! leader came back as a reachable manager.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{NodeSpecRoleEnum, TaskState};
use bollard::query_parameters::{ListNodesOptions, ListTasksOptions};
use flotilla_proto::v1::{self, admin_client::AdminClient};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::cluster::QUORUM_TABLE;
use crate::providers::lab::{Lab, LabError};
use crate::verify;

/// The drill's long-running hello service.
pub const HELLO_SERVICE: &str = "flotilla-drill-hello";
pub const HELLO_REPLICAS: usize = 2;
/// How often the managers' Engines are probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// One probe's bound: a node list blocks while the swarm has no leader.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// A ping's bound: a stopped host does not refuse, it just stops answering.
pub const PING_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the pre-check waits for an unhealthy cluster (e.g. one just drilled) to settle.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the hello service gets to run its replicas before the fault.
pub const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The agent stops the host's Docker Engine (the seed kills the manager process).
    Engine,
    /// The provider stops the whole host.
    Host,
}

pub struct Options {
    pub cluster: String,
    pub state_dir: PathBuf,
    pub mode: Mode,
    /// A manager to take down instead of the leader.
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
    #[error("control plane: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("{0}")]
    Engine(String),
    #[error("the hello workload: {0}")]
    Workload(String),
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("the local Docker Engine does not answer ({0}); the lab provider needs it")]
    NoLocalEngine(String),
    #[error("the drill did not pass: {0}")]
    NotPassed(String),
}

/// A manager as the control plane knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manager {
    pub name: String,
    pub ip: String,
}

/// One line of the timeline (seconds from the fault; negative before it).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Event {
    pub t_s: f64,
    pub what: String,
}

/// The drill's report (`--output json` prints it).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub cluster: String,
    pub mode: String,
    /// The leader before the fault.
    pub old_leader: String,
    /// The host taken down (the old leader unless `--target` named another manager).
    pub target: String,
    /// The leader after the fault (the old one when a follower was the target).
    pub new_leader: String,
    /// The target's Engine stopped answering the drill's pings.
    pub detect_s: Option<f64>,
    /// The control plane's status showed the target's Engine down or the host unreachable.
    pub control_plane_detect_s: Option<f64>,
    /// A surviving manager's node list named the new leader (none for a follower target).
    pub elect_s: Option<f64>,
    /// The new leader's Engine logged `became leader` (Swarm's own election time).
    pub swarm_elected_s: Option<f64>,
    /// `elect_s - swarm_elected_s`: how long after Swarm elected the leader the drill saw it.
    pub report_lag_s: Option<f64>,
    /// The new leader's own API answered a node list.
    pub api_back_s: Option<f64>,
    /// The hello service had all its replicas running again (from the fault).
    pub workload_s: Option<f64>,
    pub workload_ok: bool,
    /// Running hello tasks before and after, and whether any was replaced.
    pub tasks_before: usize,
    pub tasks_after: usize,
    pub tasks_rescheduled: bool,
    /// The restore was issued (from the fault).
    pub restore_s: Option<f64>,
    /// The target (the old leader) listed `reachable` by the new leader (from the restore).
    pub rejoin_s: Option<f64>,
    /// The target's manager status when the drill stopped looking.
    pub rejoined_as: String,
    /// Every host connected with every role running in the control plane's status (from the
    /// restore).
    pub healthy_s: Option<f64>,
    pub bound_s: f64,
    pub passed: bool,
    pub verdict: String,
    pub timeline: Vec<Event>,
    /// Engine log lines received from the managers while the drill ran.
    pub log_lines: usize,
    /// The managers' election lines (`host/engine | line`).
    pub election_lines: Vec<String>,
    /// Log sources that could not be streamed, with their error.
    pub log_errors: Vec<String>,
}

/// The managers of `st` — checked: at least 3 of them (unless `force`; never fewer than 2),
/// `target` one of them, and every host connected and running its roles. Pure: the CLI's
/// pre-check on a status snapshot.
pub fn precheck(st: &v1::StatusResponse, target: Option<&str>, force: bool) -> Result<Vec<Manager>, FailoverError> {
    let managers: Vec<Manager> = st
        .hosts
        .iter()
        .filter(|h| h.roles.contains(&(v1::Role::Manager as i32)))
        .map(|h| Manager {
            name: h.name.clone(),
            ip: h.facts.as_ref().and_then(|f| f.private_addresses.first().cloned()).unwrap_or_default(),
        })
        .collect();
    let n = managers.len();
    if n < 2 {
        return Err(FailoverError::Refused(format!(
            "cluster '{}' has {n} manager{}: there is no other manager to take over, so there is no failover to test:\n{QUORUM_TABLE}",
            st.cluster,
            if n == 1 { "" } else { "s" }
        )));
    }
    if n < 3 && !force {
        return Err(FailoverError::Refused(format!(
            "cluster '{}' has {n} managers: losing one loses the Raft quorum, so the swarm stops instead of failing over \
             (pass --force to watch that happen; deploy 3 or 5 managers to drill a real failover):\n{QUORUM_TABLE}",
            st.cluster
        )));
    }
    if let Some(t) = target
        && !managers.iter().any(|m| m.name == t)
    {
        let names: Vec<&str> = managers.iter().map(|m| m.name.as_str()).collect();
        return Err(FailoverError::Refused(format!(
            "--target '{t}' is not a manager of cluster '{}' (managers: {})",
            st.cluster,
            names.join(", ")
        )));
    }
    let problems = health_problems(st);
    if !problems.is_empty() {
        return Err(FailoverError::Unhealthy {
            waited: Duration::ZERO,
            problems: problems.join("; "),
        });
    }
    if let Some(m) = managers.iter().find(|m| m.ip.is_empty()) {
        return Err(FailoverError::Unhealthy {
            waited: Duration::ZERO,
            problems: format!("{} has no known address", m.name),
        });
    }
    Ok(managers)
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
                let role = v1::Role::try_from(*r).map(crate::control::role_name).unwrap_or("?");
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

/// A node as a manager's Engine lists it.
#[derive(Clone, Debug)]
struct NodeView {
    /// The host's name in the cluster (matched by address, else the Engine's hostname).
    name: String,
    /// leader, reachable, unreachable; empty for workers.
    manager_status: String,
}

fn node_views(nodes: Vec<bollard::models::Node>, managers: &[Manager]) -> Vec<NodeView> {
    nodes
        .into_iter()
        .filter(|n| n.spec.as_ref().and_then(|s| s.role) == Some(NodeSpecRoleEnum::MANAGER))
        .map(|n| {
            let hostname = n.description.and_then(|d| d.hostname).unwrap_or_default();
            let ms = n.manager_status.unwrap_or_default();
            let ip = ms.addr.as_deref().and_then(|a| a.split(':').next()).unwrap_or_default().to_string();
            let name = managers.iter().find(|m| m.ip == ip).map(|m| m.name.clone()).unwrap_or(hostname);
            let manager_status = if ms.leader == Some(true) {
                "leader".to_string()
            } else {
                ms.reachability.map(|r| r.to_string()).unwrap_or_default()
            };
            NodeView { name, manager_status }
        })
        .collect()
}

async fn list_managers(d: &Docker, managers: &[Manager]) -> Result<Vec<NodeView>, String> {
    match tokio::time::timeout(CALL_TIMEOUT, d.list_nodes(None::<ListNodesOptions>)).await {
        Ok(Ok(n)) => Ok(node_views(n, managers)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

fn leader_of(nodes: &[NodeView]) -> Option<String> {
    nodes.iter().find(|n| n.manager_status == "leader").map(|n| n.name.clone())
}

/// The ids of the hello service's running tasks.
async fn running_tasks(d: &Docker) -> Result<Vec<String>, String> {
    let fut = d.list_tasks(Some(ListTasksOptions {
        filters: Some(HashMap::from([
            ("service".to_string(), vec![HELLO_SERVICE.to_string()]),
            ("desired-state".to_string(), vec!["running".to_string()]),
        ])),
    }));
    let tasks = match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer within {CALL_TIMEOUT:?}")),
    };
    let mut ids: Vec<String> = tasks
        .into_iter()
        .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
        .filter_map(|t| t.id)
        .collect();
    ids.sort();
    Ok(ids)
}

/// Creates the hello service (or keeps the one a previous drill left) and waits until its
/// replicas run.
async fn ensure_hello(d: &Docker, image: &str) -> Result<Vec<String>, FailoverError> {
    if d.inspect_service(HELLO_SERVICE, None).await.is_err() {
        let spec = crate::verify::worker_service(
            HELLO_SERVICE,
            ("flotilla.drill", "1"),
            image,
            Some(vec!["sh".into(), "-c".into(), "while true; do sleep 1; done".into()]),
            HELLO_REPLICAS,
            false,
        );
        d.create_service(spec, None)
            .await
            .map_err(|e| FailoverError::Workload(format!("creating {HELLO_SERVICE}: {e}")))?;
    }
    let deadline = Instant::now() + WORKLOAD_TIMEOUT;
    loop {
        let running = running_tasks(d).await.unwrap_or_default();
        if running.len() >= HELLO_REPLICAS {
            return Ok(running);
        }
        if Instant::now() > deadline {
            return Err(FailoverError::Workload(format!(
                "{} of {HELLO_REPLICAS} tasks of {HELLO_SERVICE} running after {WORKLOAD_TIMEOUT:?}",
                running.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Election lines in the Engine's journal (swarmkit's Raft).
pub fn is_election_line(text: &str) -> bool {
    ["became leader", "elected leader", "lost leader", "became candidate", "became follower"]
        .iter()
        .any(|p| text.contains(p))
}

/// Where the drill writes as it goes (stderr): progress and the live log lines.
struct Say {
    start: Instant,
    fault: Mutex<Option<Instant>>,
    timeline: Mutex<Vec<Event>>,
}

impl Say {
    /// `+1.23s` from the fault, or `(12.3s)` from the drill's start before it.
    fn t(&self) -> String {
        match *self.fault.lock().unwrap_or_else(|p| p.into_inner()) {
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
        let what = what.into();
        let t = at.as_secs_f64();
        eprintln!("[drill {t:>+7.2}s] {what}");
        self.timeline.lock().unwrap_or_else(|p| p.into_inner()).push(Event { t_s: t, what });
        t
    }
}

/// What the live log follower kept: a count, the election lines, the sources' errors.
#[derive(Default)]
struct Kept {
    lines: usize,
    election: Vec<String>,
    errors: Vec<String>,
    /// `became leader` lines: host, the line's time (ns since the epoch).
    became_leader: Vec<(String, i64)>,
}

/// What a probe saw.
enum Seen {
    /// The target's Engine answered a ping (or did not).
    Ping(bool),
    /// A surviving manager's node list.
    Nodes { from: String, nodes: Result<Vec<NodeView>, String> },
}

/// Runs the drill. A report that did not pass is returned as `Ok`; the caller decides the
/// exit code.
pub async fn run(admin: &mut AdminClient<Channel>, opts: Options) -> Result<Report, FailoverError> {
    let say = Arc::new(Say {
        start: Instant::now(),
        fault: Mutex::new(None),
        timeline: Mutex::new(Vec::new()),
    });
    let cert_dir = opts.state_dir.join("docker");

    // 1. Pre-checks (waiting a while for a cluster that is still settling).
    let settle_deadline = Instant::now() + SETTLE_TIMEOUT;
    let managers = loop {
        let st = admin.status(v1::StatusRequest {}).await?.into_inner();
        match precheck(&st, opts.target.as_deref(), opts.force) {
            Ok(m) => break m,
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
    say.note(format!(
        "pre-check: {} managers ({}), every host connected, every role running",
        managers.len(),
        managers.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
    ));
    let mut engines: HashMap<String, Docker> = HashMap::new();
    for m in &managers {
        let d = tokio::time::timeout(Duration::from_secs(10), verify::engine(&m.ip, &cert_dir))
            .await
            .map_err(|_| FailoverError::Engine(format!("{}'s Engine ({}) did not answer within 10 s", m.name, m.ip)))?
            .map_err(|e| FailoverError::Engine(format!("{}'s Engine: {e}", m.name)))?;
        engines.insert(m.name.clone(), d);
    }
    // The leader, from the managers' own view.
    let mut old_leader = None;
    for m in &managers {
        if let Ok(nodes) = list_managers(&engines[&m.name], &managers).await
            && let Some(l) = leader_of(&nodes)
        {
            old_leader = Some(l);
            break;
        }
    }
    let old_leader = old_leader.ok_or_else(|| FailoverError::Engine("no manager's Engine names a swarm leader".into()))?;
    let target = opts.target.clone().unwrap_or_else(|| old_leader.clone());
    let target_is_leader = target == old_leader;
    let target_ip = managers.iter().find(|m| m.name == target).map(|m| m.ip.clone()).unwrap_or_default();
    say.note(format!("swarm leader: {old_leader}; taking down: {target} ({:?} mode)", opts.mode));

    // The hello workload, through the leader's Engine.
    let docker = bollard::Docker::connect_with_defaults()
        .map_err(|e| FailoverError::NoLocalEngine(e.to_string()))?
        .negotiate_version()
        .await
        .map_err(|e| FailoverError::NoLocalEngine(e.to_string()))?;
    let lab = Lab::new(docker, &opts.cluster, &opts.state_dir, Default::default());
    let registry = lab
        .registry_addr()
        .await?
        .ok_or_else(|| FailoverError::Workload(format!("cluster '{}' has no lab registry to pull the hello image from", opts.cluster)))?;
    let image = format!("{registry}/flotilla/hello:1");
    say.note(format!("hello workload: {HELLO_SERVICE}, {HELLO_REPLICAS} replicas on the workers ({image})"));
    let tasks_before = ensure_hello(&engines[&old_leader], &image).await?;
    say.note(format!("hello workload: {} tasks running", tasks_before.len()));

    // 2. Live logs from every manager's Engine.
    let since_unix_ns = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(0);
    let mut logs = admin
        .follow_logs(v1::FollowLogsRequest {
            hosts: managers.iter().map(|m| m.name.clone()).collect(),
            engine: true,
            follow: true,
            since_unix_ns,
            ..Default::default()
        })
        .await?
        .into_inner();
    let kept: Arc<Mutex<Kept>> = Arc::default();
    let log_task = {
        let kept = kept.clone();
        let say = say.clone();
        let colour = opts.colour;
        tokio::spawn(async move {
            while let Ok(Some(l)) = logs.message().await {
                let mut k = kept.lock().unwrap_or_else(|p| p.into_inner());
                if !l.error.is_empty() {
                    eprintln!("{}: {}", crate::cli::log_prefix(&l.host, &l.source, colour), l.error);
                    k.errors.push(format!("{}/{}: {}", l.host, l.source, l.error));
                    continue;
                }
                if l.eof {
                    continue;
                }
                k.lines += 1;
                eprintln!("[drill {}] {} | {}", say.t(), crate::cli::log_prefix(&l.host, &l.source, colour), l.text.trim_end());
                if l.text.contains("became leader") {
                    k.became_leader.push((l.host.clone(), l.unix_ns));
                }
                if is_election_line(&l.text) {
                    k.election.push(format!("{}/{} | {}", l.host, l.source, l.text));
                }
            }
        })
    };
    say.note("following every manager's Engine journal; lines below are live");

    // 3. The fault.
    let fault_at = Instant::now();
    let fault_unix_ns = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(0);
    *say.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(fault_at);
    match opts.mode {
        Mode::Engine => {
            admin
                .engine_action(v1::EngineActionRequest {
                    host_name: target.clone(),
                    kind: v1::engine_action::Kind::StopEngine as i32,
                })
                .await?;
            say.event(fault_at.elapsed(), format!("fault: {target}'s agent told to stop its Docker Engine"));
        }
        Mode::Host => {
            say.event(Duration::ZERO, format!("fault: the lab provider stops host {target}"));
            // Stopping waits for the host's shutdown; probing runs meanwhile.
            let lab = Lab::new(lab.docker.clone(), &opts.cluster, &opts.state_dir, Default::default());
            let t = target.clone();
            let say2 = say.clone();
            tokio::spawn(async move {
                match lab.stop(&t).await {
                    Ok(()) => say2.event(fault_at.elapsed(), format!("host {t} stopped (provider)")),
                    Err(e) => say2.event(fault_at.elapsed(), format!("stopping host {t} failed: {e}")),
                };
            });
        }
    }

    let mut r = Report {
        cluster: opts.cluster.clone(),
        mode: format!("{:?}", opts.mode).to_lowercase(),
        old_leader: old_leader.clone(),
        target: target.clone(),
        tasks_before: tasks_before.len(),
        bound_s: opts.bound.as_secs_f64(),
        ..Default::default()
    };

    // 4. Measure: probes every 100 ms, each bounded and on its own task.
    let survivors: Vec<Manager> = managers.iter().filter(|m| m.name != target).cloned().collect();
    let (tx, mut rx) = mpsc::unbounded_channel::<(Duration, Seen)>();
    let probing = tokio_util::sync::CancellationToken::new();
    {
        let probing = probing.clone();
        let target_engine = engines[&target].clone();
        let survivors: Vec<(Manager, Docker)> = survivors.iter().map(|m| (m.clone(), engines[&m.name].clone())).collect();
        let managers = managers.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = probing.cancelled() => return,
                }
                let (tx1, d) = (tx.clone(), target_engine.clone());
                tokio::spawn(async move {
                    let ok = matches!(tokio::time::timeout(PING_TIMEOUT, d.ping()).await, Ok(Ok(_)));
                    let _ = tx1.send((fault_at.elapsed(), Seen::Ping(ok)));
                });
                for (m, d) in &survivors {
                    let (tx1, d, m, all) = (tx.clone(), d.clone(), m.clone(), managers.clone());
                    tokio::spawn(async move {
                        let nodes = list_managers(&d, &all).await;
                        let _ = tx1.send((fault_at.elapsed(), Seen::Nodes { from: m.name, nodes }));
                    });
                }
            }
        });
    }
    let deadline = fault_at + opts.bound;
    let mut cp_poll = tokio::time::interval(Duration::from_millis(500));
    let mut new_leader: Option<String> = None;
    loop {
        let done = r.detect_s.is_some() && r.api_back_s.is_some() && r.control_plane_detect_s.is_some();
        if done || Instant::now() > deadline {
            break;
        }
        tokio::select! {
            Some((at, seen)) = rx.recv() => match seen {
                Seen::Ping(false) if r.detect_s.is_none() => {
                    r.detect_s = Some(say.event(at, format!("detect: {target}'s Engine stopped answering ({target_ip}:{})", verify::ENGINE_TLS_PORT)));
                }
                Seen::Ping(_) => {}
                Seen::Nodes { from, nodes: Ok(nodes) } => {
                    let leader = leader_of(&nodes);
                    if new_leader.is_none()
                        && let Some(l) = &leader
                        && (l != &old_leader || (!target_is_leader && r.detect_s.is_some()))
                    {
                        new_leader = Some(l.clone());
                        if target_is_leader {
                            r.elect_s = Some(say.event(at, format!("elect: {from}'s node list names {l} the new leader")));
                        } else {
                            say.event(at, format!("{from}'s node list still names {l} the leader"));
                        }
                    }
                    if r.api_back_s.is_none() && new_leader.as_deref() == Some(from.as_str()) {
                        r.api_back_s = Some(say.event(at, format!("api back: the leader {from}'s API answers a node list")));
                    }
                }
                Seen::Nodes { .. } => {}
            },
            _ = cp_poll.tick(), if r.control_plane_detect_s.is_none() => {
                if let Ok(st) = admin.status(v1::StatusRequest {}).await {
                    let st = st.into_inner();
                    if let Some(h) = st.hosts.iter().find(|h| h.name == target) {
                        let engine_down = h.health.as_ref().is_some_and(|s| !s.engine_ok);
                        if !h.connected || h.unreachable || engine_down {
                            let why = if engine_down { "its Engine down" } else if !h.connected { "no session" } else { "heartbeats missed" };
                            r.control_plane_detect_s = Some(say.event(fault_at.elapsed(), format!("control plane: status shows {target} with {why}")));
                        }
                    }
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
    probing.cancel();
    r.new_leader = new_leader.clone().unwrap_or_default();

    // The workload, through the new leader.
    let leader_engine = new_leader.as_ref().and_then(|l| engines.get(l)).cloned();
    let mut tasks_after = Vec::new();
    if let Some(d) = &leader_engine {
        loop {
            if let Ok(t) = running_tasks(d).await {
                tasks_after = t;
                if tasks_after.len() >= HELLO_REPLICAS {
                    r.workload_s = Some(say.event(
                        fault_at.elapsed(),
                        format!("workload: {} of {HELLO_REPLICAS} hello tasks running", tasks_after.len()),
                    ));
                    break;
                }
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    r.tasks_after = tasks_after.len();
    r.tasks_rescheduled = tasks_after != tasks_before;
    r.workload_ok = r.workload_s.is_some();

    // 5. Restore, then watch the old leader rejoin.
    let restore_at = Instant::now();
    match opts.mode {
        Mode::Engine => {
            // The agent kept its session; retry briefly in case it was between sessions.
            let mut last = None;
            for _ in 0..20 {
                match admin
                    .engine_action(v1::EngineActionRequest {
                        host_name: target.clone(),
                        kind: v1::engine_action::Kind::StartEngine as i32,
                    })
                    .await
                {
                    Ok(_) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if let Some(e) = last {
                say.event(fault_at.elapsed(), format!("restore failed: {}", e.message()));
            } else {
                r.restore_s = Some(say.event(fault_at.elapsed(), format!("restore: {target}'s agent told to start its Docker Engine")));
            }
        }
        Mode::Host => {
            // The stop may still be in progress: start only once the host is stopped.
            let stop_wait = Instant::now() + Duration::from_secs(60);
            while lab.host(&target).await.is_ok_and(|h| h.state == crate::providers::HostState::Running) && Instant::now() < stop_wait {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            lab.start(&target).await?;
            r.restore_s = Some(say.event(fault_at.elapsed(), format!("restore: the lab provider started host {target}")));
        }
    }
    let rejoin_deadline = Instant::now() + opts.bound;
    if let (Some(d), Some(_)) = (&leader_engine, r.restore_s) {
        // Right after an election the new leader may still list the target as reachable from
        // before the fault: the rejoin counts only once the target's own Engine answers a node
        // list (it is a manager again, talking to the leader) and the leader lists it.
        let target_engine = &engines[&target];
        let mut target_back = false;
        loop {
            if !target_back && list_managers(target_engine, &managers).await.is_ok() {
                target_back = true;
                say.event(fault_at.elapsed(), format!("{target}'s Engine answers a node list again"));
            }
            if let Ok(nodes) = list_managers(d, &managers).await
                && let Some(n) = nodes.iter().find(|n| n.name == target)
            {
                r.rejoined_as = n.manager_status.clone();
                if target_back && (n.manager_status == "reachable" || n.manager_status == "leader") {
                    let at = restore_at.elapsed();
                    r.rejoin_s = Some(at.as_secs_f64());
                    say.event(fault_at.elapsed(), format!("rejoin: {target} is back as a {} manager ({:.2} s after the restore)", n.manager_status, at.as_secs_f64()));
                    break;
                }
            }
            if Instant::now() > rejoin_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The control plane's view: every host connected, every role running.
    loop {
        if let Ok(st) = admin.status(v1::StatusRequest {}).await
            && health_problems(&st.into_inner()).is_empty()
        {
            let at = restore_at.elapsed();
            r.healthy_s = Some(at.as_secs_f64());
            say.event(fault_at.elapsed(), format!("healthy: every host connected, every role running ({:.2} s after the restore)", at.as_secs_f64()));
            break;
        }
        if Instant::now() > rejoin_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Clean up: the drill's service, the log streams.
    if let Some(d) = &leader_engine {
        let _ = d.delete_service(HELLO_SERVICE).await;
    }
    // A last moment for the restored Engine's own lines to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    log_task.abort();
    let _ = log_task.await;
    {
        let k = kept.lock().unwrap_or_else(|p| p.into_inner());
        r.log_lines = k.lines;
        r.election_lines = k.election.clone();
        r.log_errors = k.errors.clone();
        // Swarm's own election time, from the new leader's journal (same clock on the lab;
        // on separate machines it is as good as their clock sync).
        if let Some((host, ns)) = k.became_leader.iter().filter(|(h, ns)| *h != target && *ns > fault_unix_ns).min_by_key(|(_, ns)| *ns) {
            let t = (ns - fault_unix_ns) as f64 / 1e9;
            r.swarm_elected_s = Some(t);
            r.report_lag_s = r.elect_s.map(|e| e - t);
            say.timeline.lock().unwrap_or_else(|p| p.into_inner()).push(Event {
                t_s: t,
                what: format!("swarm: {host}'s Engine logged \"became leader\""),
            });
        }
    }
    r.timeline = say.timeline.lock().unwrap_or_else(|p| p.into_inner()).clone();
    r.timeline.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    judge(&mut r, target_is_leader);
    Ok(r)
}

/// Sets `passed` and the verdict from what was measured.
pub fn judge(r: &mut Report, target_is_leader: bool) {
    let mut failed = Vec::new();
    if r.detect_s.is_none() {
        failed.push(format!("the loss of {} was not detected", r.target));
    }
    if r.new_leader.is_empty() {
        failed.push("no surviving manager named a leader".to_string());
    } else if target_is_leader && r.new_leader == r.old_leader {
        failed.push("the leader did not change".to_string());
    } else if !target_is_leader && r.new_leader != r.old_leader {
        failed.push(format!("the leader changed ({} → {}) though a follower was taken down", r.old_leader, r.new_leader));
    }
    if r.api_back_s.is_none() {
        failed.push("the leader's API did not answer again".to_string());
    }
    if !r.workload_ok {
        failed.push(format!("{} of {HELLO_REPLICAS} hello tasks running", r.tasks_after));
    }
    if r.restore_s.is_none() {
        failed.push(format!("{} could not be restored", r.target));
    }
    if r.rejoin_s.is_none() || r.rejoined_as != "reachable" {
        failed.push(format!(
            "{} is not back as a reachable manager (last seen: {})",
            r.target,
            if r.rejoined_as.is_empty() { "not listed" } else { &r.rejoined_as }
        ));
    }
    if r.healthy_s.is_none() {
        failed.push("the control plane does not see every host connected with every role running".to_string());
    }
    r.passed = failed.is_empty();
    r.verdict = if r.passed {
        if target_is_leader {
            format!(
                "PASSED: {} took over from {} in {:.2} s; the API answered at {:.2} s; {} hello tasks {}; {} rejoined as reachable {:.2} s after the restore",
                r.new_leader,
                r.old_leader,
                r.elect_s.unwrap_or_default(),
                r.api_back_s.unwrap_or_default(),
                r.tasks_after,
                if r.tasks_rescheduled { "running (rescheduled)" } else { "kept running" },
                r.old_leader,
                r.rejoin_s.unwrap_or_default()
            )
        } else {
            format!(
                "PASSED: follower {} went down and came back as reachable {:.2} s after the restore; {} stayed leader",
                r.target,
                r.rejoin_s.unwrap_or_default(),
                r.new_leader
            )
        }
    } else {
        format!("FAILED within the {:.0} s bound: {}", r.bound_s, failed.join("; "))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, roles: &[v1::Role], ip: &str) -> v1::HostStatus {
        v1::HostStatus {
            name: name.into(),
            roles: roles.iter().map(|r| *r as i32).collect(),
            connected: true,
            facts: Some(v1::HostFacts {
                private_addresses: vec![ip.into()],
                ..Default::default()
            }),
            role_status: roles
                .iter()
                .map(|r| v1::RoleStatus {
                    role: *r as i32,
                    state: v1::RoleState::Running as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn cluster(managers: usize) -> v1::StatusResponse {
        let mut hosts: Vec<_> = (0..managers)
            .map(|i| host(&format!("manager{i}"), &[v1::Role::Consul, v1::Role::Manager], &format!("10.0.0.{}", 10 + i)))
            .collect();
        hosts.push(host("node0", &[v1::Role::Node], "10.0.0.20"));
        v1::StatusResponse {
            cluster: "c".into(),
            hosts,
            ..Default::default()
        }
    }

    #[test]
    fn issue_7_two_managers_are_refused_with_the_quorum_table_unless_forced() {
        let e = precheck(&cluster(2), None, false).expect_err("2 managers refused").to_string();
        assert!(e.contains("2 managers") && e.contains("quorum") && e.contains("tolerates the loss of"), "{e}");
        assert!(e.contains("--force"), "{e}");
        assert_eq!(precheck(&cluster(2), None, true).expect("forced").len(), 2);
        let e = precheck(&cluster(1), None, true).expect_err("1 manager: nothing to fail over to").to_string();
        assert!(e.contains("no other manager"), "{e}");
        assert_eq!(precheck(&cluster(3), None, false).expect("3 managers").len(), 3);
    }

    #[test]
    fn issue_7_a_target_must_be_a_manager_and_the_cluster_healthy() {
        let e = precheck(&cluster(3), Some("node0"), false).expect_err("node0 is no manager").to_string();
        assert!(e.contains("'node0' is not a manager") && e.contains("manager0, manager1, manager2"), "{e}");
        precheck(&cluster(3), Some("manager2"), false).expect("a manager target");

        let mut st = cluster(3);
        st.hosts[1].connected = false;
        st.hosts[3].role_status[0].state = v1::RoleState::Failed as i32;
        st.hosts[3].role_status[0].message = "Engine does not answer".into();
        match precheck(&st, None, false) {
            Err(FailoverError::Unhealthy { problems, .. }) => {
                assert!(problems.contains("manager1 has no session"), "{problems}");
                assert!(problems.contains("node0's node role is not running (Engine does not answer)"), "{problems}");
            }
            other => panic!("want Unhealthy, got {other:?}"),
        }
    }

    #[test]
    fn election_lines_are_recognised() {
        assert!(is_election_line("raft.node: 4eca261bb047ef85 elected leader 4fe1f1eb79046f00 at term 2"));
        assert!(is_election_line("4fe1f1eb79046f00 became leader at term 3"));
        assert!(!is_election_line("worker d35wanhwtb4gdfsmyikqtf47l was successfully registered"));
    }

    #[test]
    fn the_verdict_needs_a_new_leader_the_workload_and_a_reachable_rejoin() {
        let mut r = Report {
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
            rejoined_as: "reachable".into(),
            healthy_s: Some(4.0),
            bound_s: 60.0,
            ..Default::default()
        };
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
}
