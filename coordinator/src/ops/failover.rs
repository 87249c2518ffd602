//! `coordinator failover-test`: the seed's HA test ("kill the primary manager, watch a
//! replica take over, bring the old primary back as a replica") as one measured drill, of
//! the Swarm managers (`--component swarm`, the default) or of the Consul servers
//! (`--component consul`).
//!
//! 1. **Pre-checks** on the control plane's status ([`precheck`]): at least 3 members
//!    of the drilled component (else the quorum table, unless `--force`), every host
//!    connected, every role running; then a long-running hello service ([`HELLO_SERVICE`],
//!    2 replicas on the workers) is made to run, to prove workloads survive.
//! 2. **Live logs** ([`watch`]): before the fault, the members' logs — every manager's Engine
//!    journal, or every Consul server's container — are followed through the admin
//!    `FollowLogs` RPC and printed merged as `host/source | line`; the election lines go into
//!    the report. A stream the control plane cuts (it restarted) is resumed from each
//!    source's last line, so no line is lost or printed twice.
//! 3. **The fault** ([`fault`]): the leader (as the members report it; `--target` picks
//!    another one) goes down. `--mode engine`: for Swarm its agent stops the Docker Engine
//!    (as the seed kills the manager process); for Consul its agent kills the Consul
//!    container and holds the role down (see below). `--mode host`: the provider stops the
//!    whole host. `--mode handover` is the planned counterpart: no fault, the target is
//!    demoted so swarmkit transfers its leadership ([`crate::ops::handover`]), and the
//!    restore promotes it back.
//! 4. **Measure** by probing the members directly every 100 ms ([`probe`]), each call
//!    bounded, so a slow answer never delays the next probe and the control plane is not in
//!    the measuring path ([`swarm`]: the Engines over mutual TLS; [`consul`]: Consul's HTTP
//!    API): `detect`, `elect`, `api_back`, the workload; then the restore and `rejoin`, and
//!    the cluster healthy again in the control plane's status. Every time is measured from
//!    the fault, except `rejoin_s` and `healthy_s`, which count from the restore.
//! 5. **The verdict** ([`report`]): the timeline, what could not be observed, and whether
//!    the drill passed.
//!
//! The control plane is watched all along ([`watch::CpWatch`]): if it stops answering (it
//! was restarted), the drill goes on with the members' own views, retries what needs the
//! control plane (the Engine-mode restore), and its report names what it could not observe
//! in `unobserved`. Whatever the drill did is undone on every way out — an error midway,
//! no leader found, SIGINT/SIGTERM ([`run`]'s clean-up, [`fault::clean_up`]): the target
//! restored, the hello service and the KV probe key removed.
//!
//! Why the Consul fault in engine mode holds the role down instead of stopping the Engine:
//! every Consul server runs on a Swarm manager, so stopping the Engine would also take a
//! Swarm manager down and the drill would time two elections at once. Killing only the
//! Consul container (SIGKILL, a crash: no graceful leave, the others still count it as a
//! voter) isolates Consul's own failover. The agent's reconcile loop would restart a
//! missing container within a pass, so the agent holds the role down until told (or until
//! a lease runs out, so an abandoned drill cannot leave Consul down for good).
//!
//! This file holds the flow of one drill ([`run`] and its phases); the parts live beside it.

mod consul;
mod fault;
mod live;
mod node;
mod precheck;
mod probe;
mod replaced;
mod report;
mod swarm;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use flotilla_proto::v1::{self, admin_client::AdminClient};
use tokio::sync::mpsc;
use tonic::transport::Channel;

pub use self::consul::{ConsulCallError, JoinDataError};
use self::fault::Pending;
use self::report::Say;
pub use self::report::{Event, Gap, LogGap, Report};
use self::watch::{CpWatch, LogFollower};
use crate::ops::verify;
use crate::poll::{Attempt, poll_until};
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
/// The drill's hello image on AWS (a shell to stay up; the lab uses its own from its registry).
pub const AWS_DRILL_IMAGE: &str = "busybox:1.36";
/// How long a manager's Engine gets to answer before the fault.
const ENGINE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The operator's Consul token (management), as the control plane wrote it in the cluster's
/// state directory.
fn operator_consul_token(state_dir: &std::path::Path) -> Result<String, FailoverError> {
    let path = crate::control_plane::consul::operator_token_path(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(t.trim().to_string()),
        Err(source) => Err(FailoverError::ConsulToken { path, source }),
    }
}

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
    /// The provider takes the host away for good (lab: its container removed; EC2:
    /// TerminateInstances); auto-heal must replace it.
    Terminate,
    /// Planned (Swarm only): the target is demoted through another manager's Engine, so
    /// swarmkit hands its leadership over ([`crate::ops::handover`]), then promoted back.
    Handover,
}

impl Mode {
    /// A planned change (the target never goes down), not a fault.
    pub fn planned(self) -> bool {
        self == Mode::Handover
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    /// The Swarm managers' Raft (the seed's primary/replica managers).
    Swarm,
    /// The Consul servers' Raft (the discovery backend holding the swarm's join data).
    Consul,
    /// A worker (issue 19): it goes down and the swarm must run its tasks on another
    /// worker ([`node`]).
    Node,
}

impl Component {
    /// The role whose members are drilled.
    pub fn role(self) -> v1::Role {
        match self {
            Component::Swarm => v1::Role::Manager,
            Component::Consul => v1::Role::Consul,
            Component::Node => v1::Role::Node,
        }
    }
    fn members_noun(self) -> &'static str {
        match self {
            Component::Swarm => "managers",
            Component::Consul => "Consul servers",
            Component::Node => "workers",
        }
    }
    /// How a member that came back is expected to be listed by the leader.
    pub fn rejoined_as(self) -> &'static str {
        match self {
            Component::Swarm => "reachable",
            Component::Consul => "voter",
            Component::Node => "ready",
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
    #[error("{host}'s Engine ({ip}) did not answer within {} s", .after.as_secs())]
    EngineTimeout { host: String, ip: String, after: Duration },
    /// Connecting to a manager's Engine failed (`message`: the connection's own error).
    #[error("{host}'s Engine: {message}")]
    EngineConnect { host: String, message: String },
    #[error("no manager's Engine names a swarm leader")]
    NoSwarmLeader,
    #[error("Consul: no Consul server names a leader")]
    NoConsulLeader,
    /// The swarm's join data was not readable before the fault (reading it after would
    /// prove nothing).
    #[error("Consul: the swarm's join data before the fault: {0}")]
    JoinData(Box<consul::JoinDataError>),
    #[error("the hello workload: cluster '{cluster}' has no lab registry to pull the hello image from")]
    NoRegistry { cluster: String },
    #[error("the hello workload: creating {HELLO_SERVICE}: {0}")]
    CreateHello(bollard::errors::Error),
    #[error("the hello workload: {running} of {HELLO_REPLICAS} tasks of {HELLO_SERVICE} running after {after:?}")]
    HelloNotRunning { running: usize, after: Duration },
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("the drill did not pass: {0}")]
    NotPassed(String),
    #[error(
        "the operator's Consul token {path}: {source} (the control plane writes it at start; run the drill where the cluster was deployed)"
    )]
    ConsulToken { path: PathBuf, source: std::io::Error },
    #[error("the handover: {0}")]
    Handover(#[from] crate::ops::handover::HandoverError),
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What every phase of one drill shares.
struct Drill {
    opts: Options,
    admin: AdminClient<Channel>,
    say: Arc<Say>,
    /// The cluster's provider, as its state directory records it (lab or AWS).
    provider: Arc<Provider>,
    /// The operator's Consul token (`<state>/consul-operator.token`).
    consul_token: String,
    pending: Mutex<Pending>,
}

/// What the drill knows before the fault: the members, their Engines, who leads and who
/// goes down.
struct Setup {
    members: Vec<Member>,
    /// Every manager's Engine, by host name.
    engines: HashMap<String, Docker>,
    old_leader: String,
    target: String,
    target_ip: String,
    /// The hello service's running tasks before the fault.
    tasks_before: Vec<String>,
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
    let consul_token = operator_consul_token(&opts.state_dir)?;
    let live = live::Live::new(admin.clone());
    live.started(&format!("{:?}", opts.component).to_lowercase()).await;
    let d = Drill {
        opts,
        admin,
        say: Arc::new(Say::reporting(live)),
        provider,
        consul_token,
        pending: Mutex::new(Pending::default()),
    };
    let outcome = tokio::select! {
        r = drill(&d) => Ok(r),
        Some(sig) = signals.recv() => Err(sig),
    };
    if let Err(sig) = outcome {
        d.say.note(format!("{sig}: stopping the drill and undoing it (again to skip that)"));
    }
    let cleanup = tokio::select! {
        notes = fault::clean_up(&d) => notes,
        Some(sig) = signals.recv() => {
            let mut notes = vec![format!("clean-up cut short by {sig}")];
            notes.extend(fault::left_over(&d));
            notes
        }
    };
    for n in &cleanup {
        d.say.note(format!("clean-up: {n}"));
    }
    match outcome {
        Ok(Ok(mut report)) => {
            report.cleanup = cleanup;
            if let Some(live) = d.say.live() {
                live.finished(&report).await;
            }
            Ok(report)
        }
        Ok(Err(e)) => Err(e),
        Err(signal) => Err(FailoverError::Interrupted {
            signal,
            cleanup: if cleanup.is_empty() { "nothing to undo".to_string() } else { cleanup.join("; ") },
        }),
    }
}

/// One drill, phase by phase (the module doc's steps).
async fn drill(d: &Drill) -> Result<Report, FailoverError> {
    if d.opts.component == Component::Node {
        return node::drill(d).await;
    }
    // 1. Pre-checks, the members' Engines, the leaders, the hello workload.
    let s = prepare(d).await?;

    // 2. Live logs from every member.
    let logs = LogFollower::start(d, s.members.iter().map(|m| m.name.clone()).collect(), watch::now_unix_ns()).await?;
    d.say.note(match d.opts.component {
        Component::Swarm | Component::Node => "following every manager's Engine journal; lines below are live",
        Component::Consul => "following every Consul server's log; lines below are live",
    });

    // 3. The fault.
    let fault_at = Instant::now();
    let fault_unix_ns = watch::now_unix_ns();
    d.say.start_fault(fault_at);
    let cp = CpWatch::start(d, s.target.clone());
    let accepted = fault::fault(d, &s, fault_at).await?;

    let mut r = Report {
        cluster: d.opts.cluster.clone(),
        mode: format!("{:?}", d.opts.mode).to_lowercase(),
        component: format!("{:?}", d.opts.component).to_lowercase(),
        old_leader: s.old_leader.clone(),
        target: s.target.clone(),
        tasks_before: s.tasks_before.len(),
        bound_s: d.opts.bound.as_secs_f64(),
        // A planned handover has nothing to detect: its "detection" is the swarm accepting it.
        detect_s: accepted,
        managers_before: Some(s.engines.len()),
        ..Default::default()
    };
    let m = Measure {
        target: &s.target,
        target_ip: &s.target_ip,
        target_is_leader: s.target == s.old_leader,
        old_leader: &s.old_leader,
        members: &s.members,
        fault_at,
        deadline: fault_at + d.opts.bound,
    };

    // 4. Measure, then the workload; then restore, and watch the target rejoin and the
    //    cluster healthy again.
    measure(d, &s, &m, &mut r).await;
    let (restore_at, rejoin_deadline) = restore_and_rejoin(d, &s, &m, &mut r).await;
    wait_healthy(d, fault_at, restore_at, rejoin_deadline, &mut r).await;

    // A last moment for the restored member's own lines to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut kept = logs.stop().await;
    let seen = cp.stop().await;

    // 5. What was seen, what was not, and the verdict.
    kept.record_election(&mut r, &d.say, d.opts.component, &s.target, fault_unix_ns, m.target_is_leader);
    seen.record(&mut r, &s.target, d.opts.mode.planned());
    kept.record_cuts(&mut r, &d.say);
    r.timeline = d.say.timeline();
    report::judge(&mut r, m.target_is_leader);
    Ok(r)
}

/// Step 1: the cluster fit for a drill, every manager's Engine connected, the leaders found
/// in the members' own views, and the hello workload running.
async fn prepare(d: &Drill) -> Result<Setup, FailoverError> {
    let component = d.opts.component;
    let (members, managers) = precheck::wait_until_fit(d).await?;
    let names = members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ");
    d.say.note(format!(
        "pre-check: {} {} ({names}), every host connected, every role running",
        members.len(),
        component.members_noun(),
    ));
    let engines = connect_engines(&managers, &d.opts.state_dir.join("docker")).await?;
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
        Component::Swarm | Component::Node => swarm_leader.clone().ok_or(FailoverError::NoSwarmLeader)?,
        Component::Consul => consul::find_leader(&members).await.ok_or(FailoverError::NoConsulLeader)?,
    };
    let target = d.opts.target.clone().unwrap_or_else(|| old_leader.clone());
    let target_ip = members.iter().find(|m| m.name == target).map(|m| m.ip.clone()).unwrap_or_default();
    let what = match component {
        Component::Swarm | Component::Node => "swarm leader",
        Component::Consul => "Consul leader",
    };
    d.say.note(format!("{what}: {old_leader}; taking down: {target} ({:?} mode)", d.opts.mode));

    // The hello workload, through the swarm's leader.
    let swarm_leader = swarm_leader.ok_or(FailoverError::NoSwarmLeader)?;
    let tasks_before = start_hello(d, &engines[&swarm_leader], &members).await?;
    Ok(Setup { members, engines, old_leader, target, target_ip, tasks_before })
}

/// Every manager's Engine (mutual TLS with the cluster's certificates in `cert_dir`), each
/// given [`ENGINE_CONNECT_TIMEOUT`] to answer.
async fn connect_engines(
    managers: &[Member],
    cert_dir: &std::path::Path,
) -> Result<HashMap<String, Docker>, FailoverError> {
    let mut engines = HashMap::new();
    for m in managers {
        let e = tokio::time::timeout(ENGINE_CONNECT_TIMEOUT, verify::engine(&m.ip, cert_dir))
            .await
            .map_err(|_| FailoverError::EngineTimeout {
                host: m.name.clone(),
                ip: m.ip.clone(),
                after: ENGINE_CONNECT_TIMEOUT,
            })?
            .map_err(|e| FailoverError::EngineConnect { host: m.name.clone(), message: e.to_string() })?;
        engines.insert(m.name.clone(), e);
    }
    Ok(engines)
}

/// The hello service running through the swarm's `leader` (its tasks returned); for a
/// Consul drill, the swarm's join data readable too — before the fault, or reading it after
/// proves nothing.
async fn start_hello(d: &Drill, leader: &Docker, members: &[Member]) -> Result<Vec<String>, FailoverError> {
    let image = match d.provider.as_ref() {
        Provider::Lab(lab) => {
            let registry = lab
                .registry_addr()
                .await
                .map_err(ProviderError::from)?
                .ok_or_else(|| FailoverError::NoRegistry { cluster: d.opts.cluster.clone() })?;
            format!("{registry}/flotilla/hello:1")
        }
        Provider::Aws(_) => AWS_DRILL_IMAGE.to_string(),
    };
    d.say.note(format!("hello workload: {HELLO_SERVICE}, {HELLO_REPLICAS} replicas on the workers ({image})"));
    lock(&d.pending).hello = true;
    let tasks_before = swarm::ensure_hello(leader, &image).await?;
    d.say.note(format!("hello workload: {} tasks running", tasks_before.len()));
    if d.opts.component == Component::Consul {
        let (via, cluster_id) = consul::join_data(members, &d.opts.cluster, &d.consul_token)
            .await
            .map_err(|e| FailoverError::JoinData(Box::new(e)))?;
        d.say.note(format!("swarm join data readable through {via} (cluster id {cluster_id})"));
    }
    Ok(tasks_before)
}

/// Step 4, measuring: the component's own probes (`detect_s`, `elect_s`, `api_back_s`,
/// `new_leader`), then its workload whole again.
async fn measure(d: &Drill, s: &Setup, m: &Measure<'_>, r: &mut Report) {
    match d.opts.component {
        Component::Swarm | Component::Node => {
            let new_leader = swarm::measure(d, m, &s.engines, r).await;
            r.new_leader = new_leader.clone().unwrap_or_default();
            let leader_engine = new_leader.as_ref().and_then(|l| s.engines.get(l));
            swarm::workload(d, m, leader_engine, &s.tasks_before, r).await;
        }
        Component::Consul => {
            let new_leader = consul::measure(d, m, r).await;
            r.new_leader = new_leader.unwrap_or_default();
            let survivors: Vec<Docker> =
                s.engines.iter().filter(|(n, _)| **n != s.target).map(|(_, e)| e.clone()).collect();
            consul::workload(d, m, &survivors, &s.tasks_before, r).await;
        }
    }
}

/// Step 4, restoring: the target restored (`restore_s`), then back in the leader's view
/// (`rejoin_s`, `rejoined_as`). Returns when the restore was issued and the rejoin's
/// deadline.
async fn restore_and_rejoin(d: &Drill, s: &Setup, m: &Measure<'_>, r: &mut Report) -> (Instant, Instant) {
    let (say, fault_at) = (&d.say, m.fault_at);
    if d.opts.mode == Mode::Terminate {
        return replaced_by_heal(d, s, m, r).await;
    }
    match fault::restore(d, &s.target, Instant::now() + d.opts.bound).await {
        Ok(what) => r.restore_s = Some(say.event(fault_at.elapsed(), format!("restore: {what}"))),
        Err(e) => {
            say.event(fault_at.elapsed(), format!("restore failed: {e}"));
        }
    }
    let restore_at = fault_at + Duration::from_secs_f64(r.restore_s.unwrap_or_default());
    let rejoin_deadline = Instant::now() + d.opts.bound;
    if r.restore_s.is_some() {
        match d.opts.component {
            Component::Swarm | Component::Node => {
                let leader_engine = s.engines.get(&r.new_leader).cloned();
                swarm::rejoin(d, m, &s.engines, leader_engine.as_ref(), restore_at, rejoin_deadline, r).await;
            }
            Component::Consul => consul::rejoin(d, m, restore_at, rejoin_deadline, r).await,
        }
    }
    (restore_at, rejoin_deadline)
}

/// `--mode terminate`'s "restore": auto-heal replaces the target ([`replaced`]); then the
/// replacement back in the leader's view, as after a restore.
async fn replaced_by_heal(d: &Drill, s: &Setup, m: &Measure<'_>, r: &mut Report) -> (Instant, Instant) {
    let st = d.admin.clone().status(v1::StatusRequest::default()).await.map(|s| s.into_inner()).unwrap_or_default();
    let deadline = Instant::now() + replaced::heal_bound(&st, d.opts.bound);
    match replaced::wait_for_heal(d, &s.target, m.fault_at, deadline, r).await {
        Ok(what) => {
            r.restore_s = Some(d.say.event(m.fault_at.elapsed(), format!("replaced: {what}")));
            lock(&d.pending).faulted = None;
        }
        Err(e) => {
            d.say.event(m.fault_at.elapsed(), format!("not replaced: {e}"));
        }
    }
    let restore_at = m.fault_at + Duration::from_secs_f64(r.restore_s.unwrap_or_default());
    let rejoin_deadline = Instant::now() + d.opts.bound;
    if r.restore_s.is_some() {
        let leader_engine = s.engines.get(&r.new_leader).cloned();
        match d.opts.component {
            Component::Swarm | Component::Node => {
                swarm::rejoin(d, m, &s.engines, leader_engine.as_ref(), restore_at, rejoin_deadline, r).await
            }
            Component::Consul => consul::rejoin(d, m, restore_at, rejoin_deadline, r).await,
        }
    }
    (restore_at, rejoin_deadline)
}

/// The control plane's view after the restore: every host connected, every role running
/// (`healthy_s`, from the restore), looked at every 500 ms until `deadline`.
async fn wait_healthy(d: &Drill, fault_at: Instant, restore_at: Instant, deadline: Instant, r: &mut Report) {
    let admin = &d.admin;
    let healthy = poll_until("every host connected, every role running", deadline, Duration::from_millis(500), || {
        let mut admin = admin.clone();
        async move {
            let problems =
                match tokio::time::timeout(Duration::from_secs(2), admin.status(v1::StatusRequest::default())).await {
                    Ok(Ok(st)) => precheck::health_problems(&st.into_inner()),
                    Ok(Err(e)) => vec![format!("control plane: {}", e.message())],
                    Err(_) => vec!["control plane: no answer within 2 s".to_string()],
                };
            Ok::<_, std::convert::Infallible>(if problems.is_empty() {
                Attempt::Done(())
            } else {
                Attempt::NotYet(problems.join("; "))
            })
        }
    })
    .await;
    if healthy.is_ok() {
        let at = restore_at.elapsed();
        r.healthy_s = Some(at.as_secs_f64());
        d.say.event(
            fault_at.elapsed(),
            format!("healthy: every host connected, every role running ({:.2} s after the restore)", at.as_secs_f64()),
        );
    }
}
