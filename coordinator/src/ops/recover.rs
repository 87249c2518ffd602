//! `coordinator recover`: a cluster that lost its quorum — a majority of the managers gone
//! at once — comes back with its services, secrets, networks, Consul data and identity.
//!
//! 1. What was deployed (`<state>/cluster.toml`) → the plan; one operation at a time
//!    (`ops::lock`); the hosts assessed as heal does, but with no grace period: a manager gone
//!    at the provider is lost as soon as the control plane too has lost its agent
//!    ([`settled`]).
//! 2. The route ([`decide`]): refused while a quorum of managers is healthy (heal's job) or a
//!    manager runs but cannot be reached (forcing a new cluster could split the swarm); from
//!    a survivor when one manager (or a minority) survives; from the backups when none does.
//! 3. From a survivor: Swarm's `--force-new-cluster` on it ([`swarm`]), Consul's peers.json
//!    outage recovery on its server ([`consul`]) — each skipped when that side already has a
//!    leader, so a rerun resumes — then heal's replacement of every lost host, with the
//!    quorum check passed here, until 3 managers and 3 Consul voters are verified.
//! 4. From the backups ([`restore`]): the newest verified Swarm backup and Consul snapshot
//!    (refused by their digests when changed), every manager relaunched, the Swarm state
//!    restored onto the first (a new address: advertised anew with the forced new cluster),
//!    the Consul snapshot restored into the new servers, the workers rejoined; then verified.
//!
//! 5. A recovery under way is recorded ([`record`]) before the first side effect and removed
//!    at full strength, so a rerun after an interruption once the quorum is back finishes
//!    the replacements ([`Route::Resume`]) instead of being refused as heal's job.
//!
//! `--dry-run` says exactly which route and steps; the CLI asks for confirmation unless
//! `--yes`.

pub mod consul;
pub mod decide;
pub mod record;
pub mod restore;
pub mod swarm;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use flotilla_proto::v1::{self, admin_client::AdminClient};
use serde::Serialize;
use tonic::transport::Channel;

use crate::admin_client::ConnectError;
use crate::control_plane::healer::EXIT_REFUSED;
use crate::control_plane::settings::StatePaths;
use crate::ops::cluster_config::{ClusterConfig, ConfigError};
use crate::ops::deploy::{self, DeployError, Run};
use crate::ops::heal::{self, Assessment, HealError, HealOptions, Replaced, Verdict, assess};
use crate::ops::lock::{LockError, OpsLock};
use crate::ops::plan::{self, PlannedHost};
use crate::ops::verify;
use crate::poll::{Attempt, PollError, poll_until};
use crate::providers::{Provider, ProviderError, ProviderRecord};
use crate::ui::Progress;

pub use decide::{Refusal, Route, decide};

/// How long the control plane gets to notice that an agent whose host is gone has gone too.
const SETTLE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error(
        "cluster '{cluster}' has no record of a deploy ({source}); recover rebuilds what `coordinator deploy` recorded"
    )]
    NotDeployed { cluster: String, source: ConfigError },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(
        "the provider: {0}; recover needs what deploy used (lab: the Engine; aws: credentials for the recorded region)"
    )]
    Provider(#[source] ProviderError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("recover refused, nothing changed: {0}")]
    Refused(Refusal),
    #[error("{0}; nothing changed")]
    NotSettled(String),
    #[error(transparent)]
    Heal(#[from] HealError),
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
    #[error("{}", .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("swarm: {0}")]
    Swarm(String),
    /// A failpoint's injected error (a `failpoints` build under test: [`crate::failpoint`]).
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
    #[error("consul: {0}")]
    Consul(String),
    #[error("restore: {0}")]
    Restore(String),
    #[error("no address for {0}: the provider does not report it and its agent has not either")]
    NoAddress(String),
    #[error(transparent)]
    Record(#[from] record::RecordError),
}

impl From<ProviderError> for RecoverError {
    fn from(e: ProviderError) -> Self {
        RecoverError::Provider(e)
    }
}

impl RecoverError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RecoverError::Refused(_) | RecoverError::Lock(_) | RecoverError::NotSettled(_) => EXIT_REFUSED,
            _ => 1,
        }
    }
}

pub struct RecoverOptions {
    pub cluster: String,
    pub state_root: PathBuf,
    pub dry_run: bool,
    pub quiet: bool,
}

/// A step done, and when it ended (seconds from the start).
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub what: String,
    pub at_s: f64,
}

#[derive(Debug, Serialize)]
pub struct RecoverReport {
    pub cluster: String,
    pub dry_run: bool,
    pub assessment: Assessment,
    #[serde(flatten)]
    pub route: Route,
    /// What it would do (`--dry-run`) or did, in order.
    pub plan: Vec<String>,
    pub steps: Vec<Step>,
    /// When the swarm had a leader again, seconds from the start.
    pub leader_s: Option<f64>,
    pub replaced: Vec<Replaced>,
    /// The cluster's own view at the end.
    pub verified: Option<String>,
    pub full_strength_s: Option<f64>,
}

/// Recovers the cluster (the module's doc).
pub async fn recover(opts: RecoverOptions) -> Result<RecoverReport, RecoverError> {
    let started = Instant::now();
    let state_dir = opts.state_root.join(&opts.cluster);
    let mut admin =
        crate::admin_client::connect_local(&opts.cluster, &StatePaths::new(&state_dir).admin_socket()).await?;
    let config = ClusterConfig::recorded(&state_dir)
        .map_err(|source| RecoverError::NotDeployed { cluster: opts.cluster.clone(), source })?;
    let _lock = if opts.dry_run { None } else { Some(OpsLock::take(&state_dir, &opts.cluster, "recover")?) };
    let provider = Provider::from_record(&opts.cluster, &state_dir, &ProviderRecord::load(&state_dir)).await?;
    let names =
        crate::ops::host_names::HostNames::load(&state_dir).map_err(|e| RecoverError::Restore(e.to_string()))?;
    let planned = plan::plan(&config, &names);
    let p = Progress::new(opts.quiet);
    let assessment = settled(&mut admin, &provider, &planned).await?;
    for h in assessment.hosts.iter().filter(|h| h.verdict != Verdict::Healthy) {
        p.host(&h.name, h.line());
    }
    let st = admin.status(v1::StatusRequest::default()).await?.into_inner();
    let begun = record::load(&state_dir)?;
    let route =
        decide(&assessment, &last_leader(&st), begun.as_ref().map(|b| b.at_unix)).map_err(RecoverError::Refused)?;
    let mut report = RecoverReport {
        cluster: opts.cluster.clone(),
        dry_run: opts.dry_run,
        plan: plan_lines(&route, &assessment, &opts.state_root.join(&opts.cluster))?,
        assessment,
        route: route.clone(),
        steps: vec![],
        leader_s: None,
        replaced: vec![],
        verified: None,
        full_strength_s: None,
    };
    if opts.dry_run {
        return Ok(report);
    }
    let prepared = deploy::prepare_provider(&config, &state_dir, opts.quiet, &p).await?;
    let run = Run {
        config: &config,
        planned: &planned,
        prepared: &prepared,
        admin: admin.clone(),
        state_dir: &state_dir,
        p: &p,
    };
    let docker_dir = deploy::control_plane::ensure_docker_certs(&run).await?;
    record::begin(&state_dir, &route)?;
    crate::failpoint!("recover.record.after");
    let mut step = |what: String| {
        p.step("recover", &what);
        report.steps.push(Step { what, at_s: started.elapsed().as_secs_f64() });
    };
    match &route {
        Route::Survivor { host, gone } => {
            let (_, addresses) = deploy::addresses(&run).await?;
            let address = addresses.get(host).ok_or_else(|| RecoverError::NoAddress(host.clone()))?;
            let alive: Vec<String> =
                addresses.iter().filter(|(name, _)| !gone.contains(name)).map(|(_, ip)| ip.clone()).collect();
            let d = verify::engine(address, &docker_dir).await?;
            step(format!("swarm: forcing a new cluster on {host}"));
            let did = swarm::force_new_cluster(&d, host, address).await?;
            step(did);
            report.leader_s = Some(started.elapsed().as_secs_f64());
            step(format!("consul: recovering {host}'s server"));
            step(consul::recover_from_survivor(&mut admin, &d, host, address, &alive).await?);
        }
        Route::Restore { gone } => {
            let led = restore::from_backups(&run, &docker_dir, gone, &mut step).await?;
            report.leader_s = Some(led.duration_since(started).as_secs_f64());
        }
        Route::Resume { begun_at_unix, .. } => {
            step(format!("resuming the recovery begun at {}: the swarm has its quorum back", at_utc(*begun_at_unix)));
        }
    }
    step("replacing what is lost, as heal does".into());
    let heal = HealOptions {
        cluster: opts.cluster.clone(),
        state_root: opts.state_root.clone(),
        dry_run: false,
        automatic: false,
        quiet: opts.quiet,
        recovering: true,
    };
    let (replaced, verified) = heal::replace::every_lost(&heal, &config, &planned, &mut admin, &p).await?;
    report.replaced = replaced;
    report.verified = Some(match verified {
        Some(v) => v,
        None => {
            let h = heal::Heal { run, automatic: false, docker_dir, started };
            heal::replace::verify_all(&h).await?
        }
    });
    report.full_strength_s = Some(started.elapsed().as_secs_f64());
    record::end(&state_dir)?;
    p.finish();
    Ok(report)
}

/// `at_unix` as an RFC 3339 UTC time.
fn at_utc(at_unix: u64) -> String {
    let at = i64::try_from(at_unix).ok().and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok());
    at.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{at_unix} (Unix time)"))
}

/// The swarm leader the control plane last heard of (a lost host's last sample included).
fn last_leader(st: &v1::StatusResponse) -> String {
    st.hosts
        .iter()
        .find(|h| h.health.as_ref().and_then(|x| x.swarm.as_ref()).is_some_and(|s| s.manager_status == "leader"))
        .map(|h| h.name.clone())
        .unwrap_or_default()
}

/// The assessment once the control plane agrees with the provider: no manager the provider
/// reports gone or stopped still counts as connected (its session ends within three missed
/// heartbeats).
async fn settled(
    admin: &mut AdminClient<Channel>,
    provider: &Provider,
    planned: &[PlannedHost],
) -> Result<Assessment, RecoverError> {
    let waited = poll_until(
        "the control plane to see the lost agents gone",
        Instant::now() + SETTLE,
        Duration::from_millis(500),
        || {
            let mut admin = admin.clone();
            async move {
                let a = heal::assess_now(&mut admin, provider, planned, Some(0)).await?;
                let hosts = provider.describe().await?;
                let stale: Vec<String> = a
                    .hosts
                    .iter()
                    .filter(|h| h.manager && h.verdict == Verdict::Healthy)
                    .filter(|h| assess::is_down(hosts.iter().find(|x| x.name == h.name)))
                    .map(|h| h.name.clone())
                    .collect();
                Ok::<_, RecoverError>(match stale.as_slice() {
                    [] => Attempt::Done(a),
                    s => Attempt::NotYet(format!(
                        "the provider reports {} gone but the control plane still has their agents connected",
                        s.join(", ")
                    )),
                })
            }
        },
    )
    .await;
    waited.map_err(|e| match e {
        PollError::Failed(e) => e,
        PollError::TimedOut { last, .. } => RecoverError::NotSettled(format!("after {SETTLE:?}, {last}")),
    })
}

/// What the route will do, step by step, in words.
fn plan_lines(route: &Route, a: &Assessment, state_dir: &std::path::Path) -> Result<Vec<String>, RecoverError> {
    let lost: Vec<String> = a.hosts.iter().filter(|h| h.verdict != Verdict::Healthy).map(|h| h.name.clone()).collect();
    let mut lines = match route {
        Route::Survivor { host, gone } => vec![
            format!(
                "swarm: `swarm init --force-new-cluster` on {host}, the surviving manager ({} gone): it keeps the services, secrets, networks and workers and leads alone",
                gone.join(", ")
            ),
            format!(
                "consul: if Consul has no leader, raft/peers.json naming {host}'s server alone, and that server restarted: it keeps the KV data and ACLs"
            ),
        ],
        Route::Restore { gone } => restore::plan_lines(state_dir, gone)?,
        Route::Resume { begun_at_unix, .. } => vec![format!(
            "the recovery begun at {} was interrupted after the swarm had its quorum back: it goes on from there",
            at_utc(*begun_at_unix)
        )],
    };
    lines.push(format!(
        "then, one host at a time as heal does: {} removed from the swarm and the provider and launched anew, until every manager is reachable and every Consul server a voter",
        lost.join(", ")
    ));
    lines.push("verify the whole cluster with Swarm's and Consul's own views".into());
    Ok(lines)
}
