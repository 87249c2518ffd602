//! `coordinator deploy`: from nothing (or from whatever exists) to a verified cluster. The
//! flow is [`deploy`]; each step is a function in a file of its own:
//!
//! 1. Validate the config, print the plan ([`crate::ops::plan`]).
//! 2. The provider's side ([`provider`]; lab: images, network, registry preloaded with role
//!    images; EC2: VPC, security group, AMI).
//! 3. The control plane ([`control_plane`]): started in the background if none runs (it
//!    holds the PKI), on the cluster's own port ([`port`]).
//! 4. Hosts ([`launch`]): found by label; only missing ones are launched (in parallel), each
//!    with its own user-data and a fresh one-time token. Hosts no longer in the plan are
//!    drained, demoted, removed from the swarm and terminated — managers one at a time
//!    ([`scale_down`]).
//! 5. Wait for the Consul servers' agents to enroll and connect ([`wait`]; every agent when
//!    hosts are to be removed).
//! 6. Assign roles in dependency order — Consul, the first manager, the other managers,
//!    the nodes; agents wait on their dependencies through Consul — to every connected host
//!    at once, then to the others as they connect, and wait for every role to run
//!    ([`assign`]).
//! 7. Verify with Swarm's and Consul's own views; run the smoke test ([`verify_and_smoke`]);
//!    report ([`report`]).
//!
//! Every step is idempotent: the provider's labels and the control plane's store are the
//! record, so a deploy interrupted anywhere completes on the next run.

pub mod assign;
pub mod control_plane;
pub mod drain;
pub mod launch;
pub mod port;
pub mod provider;
pub mod report;
pub mod scale_down;
pub mod verify_and_smoke;
pub mod wait;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_proto::v1::{self, admin_client::AdminClient};
use tonic::transport::Channel;

use crate::admin_client::ConnectError;
use crate::control_plane::settings::StatePaths;
use crate::ops::cluster_config::{ClusterConfig, ConfigError, HealMode};
use crate::ops::host_names::{HostNames, HostNamesError};
use crate::ops::plan::{self, PlanError, PlannedHost, RoleKind};
use crate::ops::verify;
use crate::providers::{Host, ProviderError};
use crate::ui::Progress;

pub use crate::ops::plan::Changes;
pub use control_plane::{ServeSpec, ensure_control_plane};
pub use provider::{AWS_CONSUL_IMAGE, AWS_HELLO_IMAGE, Prepared, prepare_provider};
pub use report::{Report, ReportHost};

/// How long hosts get to boot and enroll.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long each role phase gets to converge.
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(240);

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("host {host} is {state}; wait until it settles (`coordinator status`) and re-run `coordinator deploy`")]
    HostBusy { host: String, state: String },
    /// Reading or writing the cluster's state directory (the provider record, the CA, the
    /// operator certificate for `docker`).
    #[error("control plane: {}: {source}", path.display())]
    StateDir { path: PathBuf, source: std::io::Error },
    /// The admin socket of a running control plane refused the connection.
    #[error("control plane: {0}")]
    AdminSocket(#[source] ConnectError),
    #[error("control plane: {0}")]
    OperatorKey(#[source] crate::control_plane::pki::PkiError),
    /// `coordinator serve` could not be started.
    #[error("control plane: {what}: {source}")]
    Spawn { what: String, source: std::io::Error },
    #[error("control plane: `coordinator serve` exited ({status}); its log says:\n{tail}")]
    ServeExited { status: std::process::ExitStatus, tail: String },
    #[error("control plane: the control plane did not answer within 30 s; see {}", log.display())]
    ServeSilent { log: PathBuf },
    #[error("the AWS launch context is missing")]
    NoLaunchContext,
    #[error("{0}")]
    Rpc(#[from] tonic::Status),
    #[error("user-data for {host}: {source}")]
    UserData { host: String, source: flotilla_cloud_init::Error },
    #[error(
        "timed out after {after:?} waiting for {what}; hosts still pending: {pending}. `coordinator status` shows what exists; re-run `coordinator deploy` to continue"
    )]
    Timeout { what: String, after: Duration, pending: String },
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
    #[error("control plane: {0}")]
    Port(#[from] port::PortError),
    #[error(transparent)]
    Lock(#[from] crate::ops::lock::LockError),
    /// Hosts the deploy waits for are down and will not come up by themselves.
    #[error(
        "while waiting for {what}, host(s) went down and will not come up by themselves:{}\nLook at them (lab: `docker logs CONTAINER`, and free disk space: `df -h`, `docker system df`), then re-run `coordinator deploy`: it starts a stopped host and re-creates one that never ran",
        down.iter().map(ToString::to_string).collect::<String>()
    )]
    HostDown { what: String, down: Vec<crate::providers::HostDown> },
    #[error(transparent)]
    HostNames(#[from] HostNamesError),
    /// `upgrade --image` was interrupted while replacing a host: deploy would remove the old
    /// host before its replacement joined.
    #[error(
        "an interrupted `coordinator upgrade --image {image}` is replacing {old} by {new}: finish it first (run that command again), then deploy; nothing was touched"
    )]
    UpgradePending { old: String, new: String, image: String },
    /// A worker to remove was drained, but its tasks did not all run elsewhere in time.
    #[error(
        "{host} was drained but after {after:?} its tasks do not all run elsewhere: {last}. The host is still in the swarm (drained); make room for them, then re-run"
    )]
    NotDrained { host: String, after: Duration, last: String },
    /// A failpoint's injected error (a `failpoints` build under test: [`crate::failpoint`]).
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
}

impl From<PlanError> for DeployError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Config(e) => DeployError::Config(e),
            PlanError::Provider(e) => DeployError::Provider(e),
            PlanError::HostNames(e) => DeployError::HostNames(e),
        }
    }
}

impl From<crate::providers::lab::LabError> for DeployError {
    fn from(e: crate::providers::lab::LabError) -> Self {
        DeployError::Provider(e.into())
    }
}

impl From<crate::providers::aws::AwsError> for DeployError {
    fn from(e: crate::providers::aws::AwsError) -> Self {
        DeployError::Provider(e.into())
    }
}

impl DeployError {
    /// An I/O error on `path` in the cluster's state directory.
    fn state_dir(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| DeployError::StateDir { path: path.to_path_buf(), source }
    }
}

pub struct DeployOptions {
    pub config: ClusterConfig,
    pub origin: String,
    pub state_root: PathBuf,
    pub quiet: bool,
    /// Run the smoke test even when nothing changed.
    pub force_smoke: bool,
}

/// One deploy under way: what every step after the control plane is up works with.
#[derive(Clone)]
pub struct Run<'a> {
    pub config: &'a ClusterConfig,
    pub planned: &'a [PlannedHost],
    pub prepared: &'a Prepared,
    /// A client of the control plane (clones share its connection).
    pub admin: AdminClient<Channel>,
    pub state_dir: &'a Path,
    pub p: &'a Progress,
}

/// What a run changed.
#[derive(Debug, Default)]
pub struct Changed {
    /// Hosts launched.
    pub launched: Vec<String>,
    /// Whether a stopped host was started.
    pub started: bool,
    /// Hosts no longer in the plan, removed.
    pub removed: Vec<String>,
    /// Whether any host's assignment changed.
    pub assigned: bool,
}

impl Changed {
    pub fn any(&self) -> bool {
        !self.launched.is_empty() || !self.removed.is_empty() || self.started || self.assigned
    }
}

/// Converges the cluster to its plan, step by step (the module docs).
pub async fn deploy(opts: DeployOptions) -> Result<Report, DeployError> {
    let c = &opts.config;
    c.validate(&opts.origin)?;
    let p = Progress::new(opts.quiet);
    let state_dir = opts.state_root.join(&c.name);
    let names = HostNames::load(&state_dir)?;
    if let Some(r) = &names.pending {
        return Err(DeployError::UpgradePending { old: r.old.clone(), new: r.new.clone(), image: r.image.clone() });
    }
    let planned = plan::plan(c, &names);
    p.step("plan", format!("cluster '{}' on the {} provider:", c.name, c.provider.name()));
    for h in &planned {
        p.step("plan", format!("  {:<10} {}", h.name, h.roles_text()));
    }
    let paths = StatePaths::new(&state_dir);
    flotilla_proto::fs::private_dir(&state_dir).map_err(DeployError::state_dir(&state_dir))?;
    let _lock = crate::ops::lock::OpsLock::take(&state_dir, &c.name, "deploy")?;

    // 2. The provider; 3. the control plane.
    let prepared = provider::prepare_provider_early(c, &state_dir, opts.quiet, &p).await?;
    provider::record(c, &prepared, &state_dir)?;
    c.record(&state_dir)?;
    crate::failpoint!("deploy.provider.after");
    let serve = ServeSpec {
        cluster: &c.name,
        state_root: &opts.state_root,
        paths: &paths,
        listen_ip: &prepared.listen,
        advertise: &prepared.advertise,
        port: c.coordinator.port,
        metrics_listen: &c.coordinator.metrics_listen,
    };
    let admin = control_plane::ensure_control_plane(&serve, &p).await?;
    crate::failpoint!("deploy.control_plane.after");
    let policy = v1::HealPolicy { auto: c.heal.mode == HealMode::Auto, grace_s: c.heal.grace };
    admin.clone().set_heal_policy(policy).await?;
    // The backup schedule the control plane reads at every tick (validated above).
    if let Ok(policy) = c.backup.policy() {
        policy.save(&state_dir).map_err(DeployError::state_dir(&state_dir.join("backup-policy.json")))?;
    }
    let ca_pem = std::fs::read_to_string(paths.ca_pem()).map_err(DeployError::state_dir(&paths.ca_pem()))?;
    let run = Run { config: c, planned: &planned, prepared: &prepared, admin, state_dir: &state_dir, p: &p };

    // 4. Hosts; 5. enrollment; the addresses roles use; hosts no longer planned; 6. roles, in
    // dependency order. Every spec names the Consul servers' addresses, so once their agents
    // are connected (the addresses they report settled) they and every other connected host
    // are assigned at once, while the rest still boot; those are assigned as they connect.
    // Hosts to remove first: everything waits, as they must leave before roles change.
    let mut changed = launch::launch_missing(&run, &ca_pem).await?;
    let docker_dir = control_plane::ensure_docker_certs(&run).await?;
    let to_remove = run.prepared.provider.describe().await?.iter().any(|h| !planned.iter().any(|x| x.name == h.name));
    let early: Vec<PlannedHost> =
        if to_remove { planned.clone() } else { planned.iter().filter(|h| h.has(RoleKind::Consul)).cloned().collect() };
    let what = if to_remove {
        "every agent to enroll and connect"
    } else {
        "the Consul servers' agents to enroll and connect"
    };
    wait::agents_connected(&run, &early, what).await?;
    let (hosts, addresses) = addresses(&run).await?;
    let manager_ips: Vec<String> =
        planned.iter().filter(|h| h.has(RoleKind::Manager)).filter_map(|h| addresses.get(&h.name).cloned()).collect();
    changed.removed = scale_down::scale_down(&run, &hosts, &addresses, &manager_ips, &docker_dir).await?;
    // The lab's role images were pushed while the hosts booted; pulled from here on.
    run.prepared.role_images_ready().await?;
    changed.assigned = assign::assign_connected(&run, &addresses).await?;
    let rest: Vec<PlannedHost> = planned.iter().filter(|h| !early.iter().any(|e| e.name == h.name)).cloned().collect();
    if !rest.is_empty() {
        wait::agents_connected(&run, &rest, "the other agents to enroll and connect").await?;
        let (_, addresses) = self::addresses(&run).await?;
        changed.assigned |= assign::assign_connected(&run, &addresses).await?;
    }

    // 7. Every role running; verify and smoke-test.
    wait::every_role_running(&run).await?;
    let smoke = c.smoke_test && (changed.any() || opts.force_smoke);
    let checked = verify_and_smoke::verify_and_smoke(&run, &addresses, &manager_ips, &docker_dir, smoke).await?;
    if !changed.any() {
        p.step("deploy", "nothing to change: the cluster already matches the plan");
    }
    p.finish();
    Ok(report::report(&run, changed, &hosts, &addresses, checked, &docker_dir))
}

/// `coordinator plan` (`deploy --dry-run`): [`plan::dry_run`], its errors as a deploy's.
pub async fn dry_run(config: &ClusterConfig, origin: &str, state_root: &Path) -> Result<Changes, DeployError> {
    Ok(plan::dry_run(config, origin, state_root).await?)
}

/// The hosts as the provider reports them now, and the address each host's roles use
/// (deploy's and heal's).
pub async fn addresses(run: &Run<'_>) -> Result<(Vec<Host>, HashMap<String, String>), DeployError> {
    let hosts = run.prepared.provider.describe().await?;
    let st = run.admin.clone().status(v1::StatusRequest::default()).await?.into_inner();
    let addresses = host_addresses(&hosts, &st);
    Ok((hosts, addresses))
}

/// The address each host's roles use: the provider's private IP when the agent reports
/// holding it (always so on EC2 and in the lab), else the first address the agent reports
/// (an EC2-compatible API whose instances are booted elsewhere, as the lab does with moto's).
pub fn host_addresses(hosts: &[Host], st: &v1::StatusResponse) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for s in &st.hosts {
        let reported: Vec<String> = s.facts.as_ref().map(|f| f.private_addresses.clone()).unwrap_or_default();
        let provider_ip = hosts.iter().find(|h| h.name == s.name).and_then(|h| h.private_ip).map(|ip| ip.to_string());
        let addr = match provider_ip {
            Some(ip) if reported.is_empty() || reported.contains(&ip) => Some(ip),
            _ => reported.first().cloned(),
        };
        if let Some(a) = addr {
            out.insert(s.name.clone(), a);
        }
    }
    for h in hosts {
        if let (false, Some(ip)) = (out.contains_key(&h.name), h.private_ip) {
            out.insert(h.name.clone(), ip.to_string());
        }
    }
    out
}
