//! `coordinator heal`: a host that died is replaced and the cluster returns to full
//! strength. Run by hand, or by the control plane's auto-heal (`heal --auto`; see
//! `control_plane::healer`), the same way:
//!
//! 1. What was deployed: `<state>/cluster.toml` (the deploy's record) → the plan; the
//!    provider from `<state>/provider.json`. One operation at a time (`ops::lock`).
//! 2. Which hosts are lost ([`assess`]): the control plane says the agent has been
//!    unreachable past the grace period AND the provider says the host is gone or stopped.
//!    An unreachable host that still runs is reported, never replaced.
//! 3. Refuse when acting could cost quorum (a majority of managers not healthy): that is
//!    `recover`'s job. Nothing is removed or launched then.
//! 4. One host at a time ([`replace`]): its swarm membership ended from the survivors' side
//!    ([`membership`]: demoted and removed from Raft and the node list; Consul's dead server
//!    is autopilot's to remove), its remains removed at the provider, its identity revoked and forgotten; a
//!    replacement of the same name launched (AWS: a new launch generation, so a new
//!    ClientToken), enrolled, assigned its roles, and waited for until it is a ready node /
//!    reachable manager and its Consul server a voter.
//! 5. Verify the whole cluster with Swarm's and Consul's own views.
//!
//! Every step is idempotent and found again from the world, not from a journal: a heal
//! interrupted anywhere completes on the next run (a forgotten host is completed first), and
//! a host's name is never launched while the provider still has one.

pub mod assess;
pub mod membership;
pub mod replace;

use std::path::PathBuf;
use std::time::Instant;

use flotilla_proto::v1::{self, admin_client::AdminClient};
use serde::Serialize;
use tonic::transport::Channel;

use crate::admin_client::ConnectError;
use crate::control_plane::healer::{EXIT_NO_PROVIDER, EXIT_REFUSED};
use crate::control_plane::settings::StatePaths;
use crate::ops::cluster_config::{ClusterConfig, ConfigError};
use crate::ops::deploy::{DeployError, Run};
use crate::ops::host_names::{HostNames, HostNamesError};
use crate::ops::lock::{LockError, OpsLock};
use crate::ops::plan;
use crate::providers::{Provider, ProviderError, ProviderRecord};
use crate::ui::Progress;

pub use assess::{Assessment, HostAssessment, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum HealError {
    #[error(
        "cluster '{cluster}' has no record of a deploy ({source}); heal rebuilds what `coordinator deploy` recorded: deploy it first"
    )]
    NotDeployed { cluster: String, source: ConfigError },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The provider cannot be reached with this process's settings and credentials.
    #[error(
        "the provider: {0}; heal needs what deploy used (lab: the Engine; aws: credentials for the recorded region)"
    )]
    Provider(#[source] ProviderError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{0}. Restore quorum first with `coordinator recover` (`--dry-run` shows what it would do)")]
    Quorum(String),
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error("{}", .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("swarm: {0}")]
    Swarm(String),
    #[error("consul: {0}")]
    Consul(String),
    #[error("{}: {source}", path.display())]
    State { path: PathBuf, source: std::io::Error },
    #[error("after replacing {host}: {problem}")]
    NotFull { host: String, problem: String },
    #[error(transparent)]
    HostNames(HostNamesError),
    /// `upgrade --image` was interrupted while replacing a host: heal would work against it.
    #[error(
        "an interrupted `coordinator upgrade --image {image}` is replacing {old} by {new}: finish it first (run that command again); nothing was touched"
    )]
    UpgradePending { old: String, new: String, image: String },
    /// A failpoint's injected error (a `failpoints` build under test: [`crate::failpoint`]).
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
}

impl From<ProviderError> for HealError {
    fn from(e: ProviderError) -> Self {
        HealError::Provider(e)
    }
}

impl HealError {
    /// The exit code auto-heal's supervisor reads: a refusal (try later), no provider (stop
    /// trying until the next deploy), or a failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            HealError::Quorum(_) | HealError::Lock(_) => EXIT_REFUSED,
            HealError::Provider(_) | HealError::NotDeployed { .. } => EXIT_NO_PROVIDER,
            _ => 1,
        }
    }
}

pub struct HealOptions {
    pub cluster: String,
    pub state_root: PathBuf,
    pub dry_run: bool,
    /// Started by the control plane's auto-heal.
    pub automatic: bool,
    pub quiet: bool,
    /// Run by `recover` once the survivor holds a quorum of its own (see `ops::recover`):
    /// a manager gone at the provider counts as lost at once (no grace: the operator said
    /// so), and the manager-count quorum check is `recover`'s, already passed.
    pub recovering: bool,
}

/// One replaced (or completed) host and when each step ended, seconds from the heal's start.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Replaced {
    pub host: String,
    pub instance_id: String,
    pub removed_s: f64,
    pub launched_s: f64,
    pub enrolled_s: f64,
    pub full_strength_s: f64,
}

#[derive(Debug, Serialize)]
pub struct HealReport {
    pub cluster: String,
    pub dry_run: bool,
    /// The hosts as heal found them.
    pub assessment: Assessment,
    /// What it would do (`--dry-run`) or did, in order.
    pub plan: Vec<String>,
    pub replaced: Vec<Replaced>,
    /// The cluster's own view at the end, when anything was replaced.
    pub verified: Option<String>,
}

/// A heal under way: the deploy's building blocks plus who to tell.
pub struct Heal<'a> {
    pub run: Run<'a>,
    pub automatic: bool,
    pub docker_dir: PathBuf,
    pub started: Instant,
}

impl Heal<'_> {
    /// Progress, to the terminal and to the control plane (`status`, the audit trail).
    pub async fn say(&self, host: &str, message: impl Into<String>) {
        let message = message.into();
        if host.is_empty() {
            self.run.p.step("heal", &message);
        } else {
            self.run.p.host(host, &message);
        }
        let progress = v1::HealProgress { host: host.into(), message, automatic: self.automatic, ..Default::default() };
        if let Err(e) = self.run.admin.clone().report_heal(progress).await {
            tracing::warn!(error = %e, "could not report heal progress to the control plane");
        }
    }

    pub fn at(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Tells the control plane a run ended (success or failure).
async fn finished(admin: &mut AdminClient<Channel>, automatic: bool, message: String, failed: bool) {
    let p = v1::HealProgress { message, finished: true, failed, automatic, ..Default::default() };
    if let Err(e) = admin.report_heal(p).await {
        tracing::warn!(error = %e, "could not report the heal's end to the control plane");
    }
}

/// Runs a heal (the module's doc). A refusal is an error ([`HealError::Quorum`]); the
/// control plane hears how the run ended either way.
pub async fn heal(opts: HealOptions) -> Result<HealReport, HealError> {
    let state_dir = opts.state_root.join(&opts.cluster);
    let paths = StatePaths::new(&state_dir);
    let mut admin = crate::admin_client::connect_local(&opts.cluster, &paths.admin_socket()).await?;
    let result = run(&opts, &mut admin).await;
    if !opts.dry_run {
        let (message, failed) = match &result {
            Ok(r) if r.replaced.is_empty() => (nothing_done(&r.assessment), false),
            Ok(r) => (format!("replaced {}; {}", names(&r.replaced), r.verified.clone().unwrap_or_default()), false),
            Err(e) => (format!("failed: {e}"), !matches!(e, HealError::Quorum(_) | HealError::Lock(_))),
        };
        finished(&mut admin, opts.automatic, message, failed).await;
    }
    result
}

fn names(r: &[Replaced]) -> String {
    r.iter().map(|r| r.host.as_str()).collect::<Vec<_>>().join(", ")
}

/// The end of a run that replaced nothing, naming what it left alone.
fn nothing_done(a: &Assessment) -> String {
    let left: Vec<String> =
        a.hosts.iter().filter(|h| h.verdict != Verdict::Healthy).map(|h| format!("{} {}", h.name, h.line())).collect();
    match left.as_slice() {
        [] => "nothing to heal: every host is healthy".into(),
        _ => format!("nothing replaced: {}", left.join("; ")),
    }
}

async fn run(opts: &HealOptions, admin: &mut AdminClient<Channel>) -> Result<HealReport, HealError> {
    let state_dir = opts.state_root.join(&opts.cluster);
    let config = ClusterConfig::recorded(&state_dir)
        .map_err(|source| HealError::NotDeployed { cluster: opts.cluster.clone(), source })?;
    let _lock = if opts.dry_run { None } else { Some(OpsLock::take(&state_dir, &opts.cluster, "heal")?) };
    let record = ProviderRecord::load(&state_dir);
    let provider = Provider::from_record(&opts.cluster, &state_dir, &record).await?;
    let names = HostNames::load(&state_dir).map_err(HealError::HostNames)?;
    if let Some(r) = names.pending.as_ref().filter(|_| !opts.dry_run) {
        return Err(HealError::UpgradePending { old: r.old.clone(), new: r.new.clone(), image: r.image.clone() });
    }
    let planned = plan::plan(&config, &names);
    let first = assess_now(admin, &provider, &planned, None).await?;
    let p = Progress::new(opts.quiet);
    for h in first.hosts.iter().filter(|h| h.verdict != Verdict::Healthy) {
        p.host(&h.name, h.line());
    }
    if let Some(why) = first.quorum_refusal() {
        return Err(HealError::Quorum(why));
    }
    let plan: Vec<String> = first.to_act_on().iter().map(|h| format!("{}: {}", h.name, h.line())).collect();
    let mut report = HealReport {
        cluster: opts.cluster.clone(),
        dry_run: opts.dry_run,
        assessment: first,
        plan,
        replaced: vec![],
        verified: None,
    };
    if opts.dry_run || report.plan.is_empty() {
        if report.plan.is_empty() {
            p.step("heal", nothing_done(&report.assessment));
        }
        return Ok(report);
    }
    (report.replaced, report.verified) = replace::every_lost(opts, &config, &planned, admin, &p).await?;
    p.finish();
    Ok(report)
}

/// The hosts as the control plane and the provider see them now (`grace_override`: how long
/// an agent must have been unreachable, instead of the cluster's heal policy).
pub async fn assess_now(
    admin: &mut AdminClient<Channel>,
    provider: &Provider,
    planned: &[plan::PlannedHost],
    grace_override: Option<u32>,
) -> Result<Assessment, HealError> {
    let st = admin.status(v1::StatusRequest::default()).await?.into_inner();
    let heal = st.heal.clone().unwrap_or_default();
    let policy_grace =
        heal.policy.map(|p| p.grace_s).filter(|g| *g > 0).unwrap_or(crate::control_plane::healer::DEFAULT_GRACE_S);
    let grace = grace_override.unwrap_or(policy_grace);
    let hosts = provider.describe().await?;
    Ok(assess::assess(planned, &st, &heal.unreachable_s, &hosts, grace))
}
