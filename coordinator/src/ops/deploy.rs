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
//! 7. With `--rolling`, the hosts on another image than the one hosts are launched from
//!    ([`drift`]) replaced one at a time, add before remove, exactly as `upgrade --image`
//!    does ([`crate::ops::upgrade::rolling`]); without it, they are left and reported.
//! 8. Verify with Swarm's and Consul's own views; run the smoke test ([`verify_and_smoke`]);
//!    report ([`report`], with the image drift left).
//!
//! An interrupted rolling replacement (`upgrade --image` or `deploy --rolling`, recorded in
//! `hosts.json`) refuses a plain deploy; `deploy --rolling` onto the same image finishes it
//! first, through the same resumable path as a re-run of `upgrade --image`.
//!
//! Every step is idempotent: the provider's labels and the control plane's store are the
//! record, so a deploy interrupted anywhere completes on the next run.

pub mod assign;
pub mod control_plane;
pub mod drain;
pub mod drift;
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
        "an interrupted `coordinator upgrade --image {image}` is replacing {old} by {new}: finish it first (run that command again, or `coordinator deploy --rolling` with images.host = {image}), then deploy; nothing was touched"
    )]
    UpgradePending { old: String, new: String, image: String },
    /// `deploy --rolling` onto another image than the interrupted replacement's.
    #[error(
        "an interrupted `coordinator upgrade --image {image}` is replacing {old} by {new}, but this deploy launches hosts from {target}: finish that one first (`coordinator upgrade --image {image}`, or `deploy --rolling` with images.host = {image}), then deploy onto {target}; nothing was touched"
    )]
    RollingOtherImage { old: String, new: String, image: String, target: String },
    /// `deploy --rolling`'s replacement stopped (the host and why).
    #[error(transparent)]
    Rolling(Box<crate::ops::upgrade::UpgradeError>),
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
    /// Replace the hosts on another image than the launch image, one at a time (`--rolling`).
    pub rolling: bool,
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
    /// Hosts replaced onto the launch image (`--rolling`), in order.
    pub replaced: Vec<crate::ops::upgrade::rolling::HostReplaced>,
}

impl Changed {
    pub fn any(&self) -> bool {
        !self.launched.is_empty()
            || !self.removed.is_empty()
            || self.started
            || self.assigned
            || !self.replaced.is_empty()
    }
}

impl From<crate::ops::upgrade::UpgradeError> for DeployError {
    fn from(e: crate::ops::upgrade::UpgradeError) -> Self {
        match e {
            crate::ops::upgrade::UpgradeError::Deploy(e) => e,
            e => DeployError::Rolling(Box::new(e)),
        }
    }
}

/// Converges the cluster to its plan, step by step (the module docs).
pub async fn deploy(opts: DeployOptions) -> Result<Report, DeployError> {
    let c = &opts.config;
    c.validate(&opts.origin)?;
    let p = Progress::new(opts.quiet);
    let state_dir = opts.state_root.join(&c.name);
    let names = HostNames::load(&state_dir)?;
    check_pending(names.pending.as_ref(), opts.rolling, None)?;
    let mut planned = plan::plan(c, &names);
    p.step("plan", format!("cluster '{}' on the {} provider:", c.name, c.provider.name()));
    for h in &planned {
        p.step("plan", format!("  {:<10} {}", h.name, h.roles_text()));
    }
    let paths = StatePaths::new(&state_dir);
    flotilla_proto::fs::private_dir(&state_dir).map_err(DeployError::state_dir(&state_dir))?;
    let _lock = crate::ops::lock::OpsLock::take(&state_dir, &c.name, "deploy")?;

    // 2. The provider; 3. the control plane.
    let prepared = provider::prepare_provider_early(c, &state_dir, opts.quiet, &p).await?;
    let target = drift::launch_image(c, &prepared);
    let serve = ServeSpec {
        cluster: &c.name,
        state_root: &opts.state_root,
        paths: &paths,
        listen_ip: &prepared.listen,
        advertise: &prepared.advertise,
        port: c.coordinator.port,
        metrics_listen: &c.coordinator.metrics_listen,
    };
    let resumed = finish_pending(&names, opts.rolling, &serve, &target, &p).await?;
    if names.pending.is_some() {
        planned = plan::plan(c, &HostNames::load(&state_dir)?);
    }
    provider::record(c, &prepared, &state_dir)?;
    c.record(&state_dir)?;
    crate::failpoint!("deploy.provider.after");
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
    changed.replaced = resumed;
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
    let manager_ips = manager_ips(&planned, &addresses);
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

    // The smoke test starts as soon as the workers are in the swarm, while the other managers
    // still join ([`verify_and_smoke`]); `--rolling` replaces hosts first, so it tests after.
    let smoke_done = if c.smoke_test && (changed.any() || opts.force_smoke) && !opts.rolling {
        let (_, r) = tokio::try_join!(
            wait::every_role_running(&run),
            verify_and_smoke::smoke_early(&run, &manager_ips, &docker_dir)
        )?;
        Some(r)
    } else {
        wait::every_role_running(&run).await?;
        None
    };

    // 7. With `--rolling`, the hosts on another image replaced (the plan then names their
    // replacements); 8. verify and smoke-test.
    if opts.rolling {
        changed.replaced.extend(roll_drifted(&run, &target).await?);
    }
    let planned = plan::plan(c, &HostNames::load(&state_dir)?);
    verify_and_report(Run { planned: &planned, ..run }, changed, &docker_dir, &target, opts.force_smoke, smoke_done)
        .await
}

/// Step 8 on the plan as it is now (`--rolling` renamed slots): Swarm's and Consul's views,
/// the smoke test when something changed (or `force_smoke`) unless it ran already
/// (`smoke_done`), the report with the image drift left.
async fn verify_and_report(
    run: Run<'_>,
    changed: Changed,
    docker_dir: &Path,
    target: &str,
    force_smoke: bool,
    smoke_done: Option<verify::SmokeResult>,
) -> Result<Report, DeployError> {
    let (hosts, addresses) = self::addresses(&run).await?;
    let manager_ips = self::manager_ips(run.planned, &addresses);
    let smoke = match smoke_done {
        Some(r) => verify_and_smoke::Smoke::Done(r),
        None if run.config.smoke_test && (changed.any() || force_smoke) => verify_and_smoke::Smoke::Run,
        None => verify_and_smoke::Smoke::Skip,
    };
    let checked = verify_and_smoke::verify_and_smoke(&run, &addresses, &manager_ips, docker_dir, smoke).await?;
    if !changed.any() {
        run.p.step("deploy", "nothing to change: the cluster already matches the plan");
    }
    run.p.finish();
    let drift = drift::report(&run.config.name, run.planned, &hosts, target);
    Ok(report::report(&run, changed, &hosts, &addresses, checked, docker_dir, drift))
}

/// An interrupted rolling replacement: refused unless `rolling` onto its image
/// ([`check_pending`]), then finished first, with the recorded config, exactly as a re-run of `upgrade --image` would.
async fn finish_pending(
    names: &HostNames,
    rolling: bool,
    serve: &ServeSpec<'_>,
    target: &str,
    p: &Progress,
) -> Result<Vec<crate::ops::upgrade::rolling::HostReplaced>, DeployError> {
    check_pending(names.pending.as_ref(), rolling, Some(target))?;
    let Some(r) = &names.pending else { return Ok(vec![]) };
    let admin = control_plane::ensure_control_plane(serve, p).await?;
    p.step("rolling", format!("finishing the interrupted replacement of {} by {} first", r.old, r.new));
    let state_dir = serve.state_root.join(serve.cluster);
    Ok(crate::ops::upgrade::rolling::roll(serve.cluster, &state_dir, target, admin, p.is_quiet()).await?)
}

/// `--rolling`, once converged: the planned hosts on another image than `target` replaced one
/// at a time, as `upgrade --image` does.
async fn roll_drifted(
    run: &Run<'_>,
    target: &str,
) -> Result<Vec<crate::ops::upgrade::rolling::HostReplaced>, DeployError> {
    let drifted = drift::drifted(run.planned, &run.prepared.provider.describe().await?, target);
    if drifted.is_empty() {
        return Ok(vec![]);
    }
    run.p.step("rolling", format!("{} host(s) not on {target}: replacing them one at a time", drifted.len()));
    let (c, admin) = (run.config.clone(), run.admin.clone());
    Ok(crate::ops::upgrade::rolling::roll_with(c, run.prepared, run.state_dir, target, admin, run.p).await?)
}

/// The addresses of the planned managers.
pub fn manager_ips(planned: &[PlannedHost], addresses: &HashMap<String, String>) -> Vec<String> {
    planned.iter().filter(|h| h.has(RoleKind::Manager)).filter_map(|h| addresses.get(&h.name).cloned()).collect()
}

/// Whether a deploy may go on with `pending`, the rolling replacement an interrupted run left:
/// a plain deploy may not (it would remove the old host before its replacement counts);
/// `--rolling` may, once the image hosts are launched from (`target`, known after the
/// provider is prepared) is the replacement's.
fn check_pending(
    pending: Option<&crate::ops::host_names::Replacement>,
    rolling: bool,
    target: Option<&str>,
) -> Result<(), DeployError> {
    let Some(r) = pending else { return Ok(()) };
    let (old, new, image) = (r.old.clone(), r.new.clone(), r.image.clone());
    match (rolling, target) {
        (false, _) => Err(DeployError::UpgradePending { old, new, image }),
        (true, Some(t)) if t != r.image => Err(DeployError::RollingOtherImage { old, new, image, target: t.into() }),
        (true, _) => Ok(()),
    }
}

/// `coordinator plan` (`deploy --dry-run`): [`plan::dry_run`], its errors as a deploy's.
pub async fn dry_run(
    config: &ClusterConfig,
    origin: &str,
    state_root: &Path,
    rolling: bool,
) -> Result<Changes, DeployError> {
    Ok(plan::dry_run(config, origin, state_root, rolling).await?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::host_names::Replacement;

    fn pending() -> Replacement {
        Replacement {
            slot: "manager1".into(),
            old: "manager1".into(),
            new: "manager1-u1".into(),
            image: "img:2".into(),
        }
    }

    #[test]
    fn an_interrupted_replacement_refuses_a_plain_deploy_and_a_rolling_one_onto_another_image() {
        let r = pending();
        assert!(check_pending(None, false, None).is_ok());
        let plain = check_pending(Some(&r), false, None).expect_err("a plain deploy").to_string();
        assert!(plain.contains("upgrade --image img:2") && plain.contains("deploy --rolling"), "{plain}");
        assert!(plain.contains("manager1 by manager1-u1") && plain.contains("nothing was touched"), "{plain}");
        let plain = check_pending(Some(&r), false, Some("img:2")).expect_err("a plain deploy, target known");
        assert!(matches!(plain, DeployError::UpgradePending { .. }), "{plain}");
        // --rolling: on until the target is known, then only onto the same image.
        assert!(check_pending(Some(&r), true, None).is_ok());
        assert!(check_pending(Some(&r), true, Some("img:2")).is_ok());
        let other = check_pending(Some(&r), true, Some("img:3")).expect_err("another image").to_string();
        assert!(other.contains("launches hosts from img:3") && other.contains("upgrade --image img:2"), "{other}");
    }

    #[tokio::test]
    async fn a_plain_deploy_with_an_interrupted_replacement_refuses_before_touching_anything() {
        let root = tempfile::tempdir().expect("tempdir");
        let config = ClusterConfig { name: "pendingc".into(), ..Default::default() };
        let state_dir = root.path().join("pendingc");
        std::fs::create_dir_all(&state_dir).expect("state dir");
        let mut names = HostNames::default();
        names.begin("manager1", "img:2");
        names.save(&state_dir).expect("save");
        let before: Vec<_> =
            std::fs::read_dir(&state_dir).expect("ls").filter_map(Result::ok).map(|e| e.file_name()).collect();
        let opts = DeployOptions {
            config,
            origin: "defaults".into(),
            state_root: root.path().to_path_buf(),
            quiet: true,
            force_smoke: false,
            rolling: false,
        };
        let e = deploy(opts).await.expect_err("refused");
        assert!(matches!(&e, DeployError::UpgradePending { image, .. } if image == "img:2"), "{e}");
        let after: Vec<_> =
            std::fs::read_dir(&state_dir).expect("ls").filter_map(Result::ok).map(|e| e.file_name()).collect();
        assert_eq!(before, after, "the refused deploy wrote into the state directory");
    }
}
