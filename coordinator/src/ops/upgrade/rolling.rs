//! `coordinator upgrade --image IMAGE` (issue 17, part 1): every host whose image differs
//! replaced, one at a time, add before remove, in [`super::image::plan`]'s order (workers,
//! managers, the swarm's leader last).
//!
//! A replacement goes by the slot's next generation name (`node0` → `node0-u1`:
//! [`crate::ops::host_names`]), so both hosts can exist at once. For each host:
//!
//! 1. The cluster is checked healthy (every manager reachable, a leader, every worker ready;
//!    every Consul server reporting the leader and every server) — else the upgrade stops
//!    and says why ([`UpgradeError::NotHealthy`]).
//! 2. The intent (slot, old and new name, target image) is recorded in `<state>/hosts.json`
//!    first: from then on the plan names the replacement, so deploy's own steps apply.
//! 3. Deploy's steps: the missing host (the replacement) launched from the target image
//!    ([`launch::launch_missing`]), enrolled, every connected host assigned (the new
//!    address enters Consul's join lists; a running Consul server keeps its container, as
//!    `-retry-join` is not part of its spec hash), its roles running.
//! 4. Counted ([`counted`]): listed once and ready by the swarm (a manager: reachable), and
//!    for a Consul server every server reporting one more peer than planned (the old one
//!    still there) and one leader.
//! 5. The old host, no longer in the plan, removed by deploy's scale-down: a worker drained
//!    until its tasks run elsewhere, a manager handed over first when it leads, demoted,
//!    its Consul server leaving gracefully; terminated, removed from the node list, its
//!    identity revoked. What an interrupted run left behind (terminated but still listed)
//!    is removed too (scale-down's `forget_departed`).
//! 6. The intent cleared. The recorded cluster config names the target image once every host
//!    runs it (heal launches from it).
//!
//! Interrupted anywhere (SIGKILL included), a re-run finds the intent and continues with step
//! 3 — every step is idempotent — then goes on with the next host; hosts on the target are
//! skipped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_proto::v1::{self, admin_client::AdminClient};
use serde::Serialize;
use tonic::transport::Channel;

use super::UpgradeError;
use crate::control_plane::settings::StatePaths;
use crate::ops::cluster_config::ClusterConfig;
use crate::ops::deploy::{self, Prepared, Run, assign, launch, manager_ips, scale_down, wait};
use crate::ops::heal::membership;
use crate::ops::host_names::{HostNames, Replacement};
use crate::ops::plan::{self, PlannedHost, RoleKind};
use crate::ops::verify;
use crate::poll::{Attempt, PollError, poll_until};
use crate::ui::Progress;

/// How long the cluster gets to be healthy before (and after) each replacement.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a replacement gets, once its roles run, until Swarm and Consul count it.
const COUNTED_TIMEOUT: Duration = Duration::from_secs(180);

/// One host replaced.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostReplaced {
    pub slot: String,
    pub old: String,
    pub new: String,
    /// worker, manager or leader, when the replacement started.
    pub role: String,
    pub old_image: String,
    pub new_image: String,
    /// From the replacement's launch to the old host's removal.
    pub seconds: f64,
    /// Whether this run picked it up from an interrupted one.
    pub resumed: bool,
}

/// What the rolling replacement works with.
struct Roll<'a> {
    config: &'a ClusterConfig,
    prepared: &'a Prepared,
    admin: AdminClient<Channel>,
    state_dir: &'a Path,
    docker_dir: PathBuf,
    ca_pem: String,
    target: &'a str,
    p: &'a Progress,
}

impl<'a> Roll<'a> {
    fn run(&self, planned: &'a [PlannedHost]) -> Run<'a> {
        Run {
            config: self.config,
            planned,
            prepared: self.prepared,
            admin: self.admin.clone(),
            state_dir: self.state_dir,
            p: self.p,
        }
    }
}

/// Replaces every host not on `target` (the image as the provider reports it), resuming an
/// interrupted replacement first, with the recorded cluster config (`upgrade --image`). The
/// caller holds the ops lock.
pub async fn roll(
    cluster: &str,
    state_dir: &Path,
    target: &str,
    admin: AdminClient<Channel>,
    quiet: bool,
) -> Result<Vec<HostReplaced>, UpgradeError> {
    let mut config = ClusterConfig::recorded(state_dir)
        .map_err(|source| UpgradeError::NotDeployed { cluster: cluster.to_string(), source })?;
    // Before the provider is prepared: on EC2 its launch context holds the AMI launched from.
    config.images.host = target.to_string();
    let p = Progress::new(quiet);
    let prepared = deploy::prepare_provider(&config, state_dir, quiet, &p).await?;
    let done = roll_with(config, &prepared, state_dir, target, admin, &p).await?;
    p.finish();
    Ok(done)
}

/// [`roll`] with a config and a prepared provider (`deploy --rolling`'s, once it converged),
/// which must launch hosts from `target` (a replacement on another image stops the roll:
/// [`UpgradeError::WrongImage`]); records `config` with `images.host = target` at the end
/// (heal launches from it).
pub async fn roll_with(
    mut config: ClusterConfig,
    prepared: &Prepared,
    state_dir: &Path,
    target: &str,
    admin: AdminClient<Channel>,
    p: &Progress,
) -> Result<Vec<HostReplaced>, UpgradeError> {
    config.images.host = target.to_string();
    let ca_path = StatePaths::new(state_dir).ca_pem();
    let ca_pem =
        std::fs::read_to_string(&ca_path).map_err(|source| UpgradeError::State { path: ca_path.clone(), source })?;
    let names = HostNames::load(state_dir)?;
    let planned = plan::plan(&config, &names);
    let docker_dir = deploy::control_plane::ensure_docker_certs(&Run {
        config: &config,
        planned: &planned,
        prepared,
        admin: admin.clone(),
        state_dir,
        p,
    })
    .await?;
    let roll = Roll { config: &config, prepared, admin, state_dir, docker_dir, ca_pem, target, p };
    let mut done = Vec::new();
    while let Some((r, role, old_image, resumed)) = next(&roll).await? {
        let started = Instant::now();
        replace(&roll, &r, &role, &old_image, resumed).await?;
        let at = prepared.provider.describe().await?;
        if let Some(h) = at.iter().find(|h| h.name == r.new && h.image != target) {
            return Err(UpgradeError::WrongImage {
                host: r.new.clone(),
                image: h.image.clone(),
                target: target.into(),
            });
        }
        let mut names = HostNames::load(state_dir)?;
        names.pending = None;
        names.save(state_dir)?;
        crate::failpoint!("upgrade.cleared.after");
        let seconds = started.elapsed().as_secs_f64();
        p.host(&r.new, format!("replaced {} in {seconds:.0} s", r.old));
        done.push(HostReplaced {
            slot: r.slot,
            old: r.old,
            new: r.new,
            role,
            old_image,
            new_image: target.to_string(),
            seconds,
            resumed,
        });
    }
    healthy(&roll, "after the last replacement").await?;
    config.record(state_dir).map_err(|source| UpgradeError::NotDeployed { cluster: config.name.clone(), source })?;
    Ok(done)
}

/// The replacement to do next: the interrupted one, else the first host of the order not on
/// the target (the cluster checked healthy, the intent recorded); its role and old image.
async fn next(roll: &Roll<'_>) -> Result<Option<(Replacement, String, String, bool)>, UpgradeError> {
    let mut names = HostNames::load(roll.state_dir)?;
    let at = roll.prepared.provider.describe().await?;
    let image_of = |name: &str| at.iter().find(|h| h.name == name).map(|h| h.image.clone()).unwrap_or_default();
    if let Some(r) = names.pending.clone() {
        if r.image != roll.target {
            return Err(UpgradeError::OtherPending { old: r.old, new: r.new, image: r.image });
        }
        roll.p.host(&r.new, format!("resuming the interrupted replacement of {}", r.old));
        let role = if plan::plan(roll.config, &names).iter().any(|h| h.name == r.new && h.has(RoleKind::Manager)) {
            "manager"
        } else {
            "worker"
        };
        let old_image = image_of(&r.old);
        return Ok(Some((r, role.to_string(), old_image, true)));
    }
    let planned = plan::plan(roll.config, &names);
    let status = roll.admin.clone().status(v1::StatusRequest::default()).await?.into_inner();
    let order = super::image::plan(&status.hosts, &at, roll.target);
    let Some(step) = order.iter().find(|s| s.action == "replace" && planned.iter().any(|h| h.name == s.host)) else {
        return Ok(None);
    };
    healthy(roll, &format!("before replacing {}", step.host)).await?;
    let r = names.begin(&step.host, roll.target);
    names.save(roll.state_dir)?;
    crate::failpoint!("upgrade.intent.after");
    roll.p.host(
        &r.new,
        format!("replacing {} ({}, {}) by a host launched from {}", r.old, step.role, step.current_image, roll.target),
    );
    Ok(Some((r, step.role.clone(), step.current_image.clone(), false)))
}

/// Steps 3–5 for one recorded replacement (the module's doc); idempotent.
async fn replace(
    roll: &Roll<'_>,
    r: &Replacement,
    role: &str,
    old_image: &str,
    resumed: bool,
) -> Result<(), UpgradeError> {
    let names = HostNames::load(roll.state_dir)?;
    let planned = plan::plan(roll.config, &names);
    let run = roll.run(&planned);
    let new = planned
        .iter()
        .find(|h| h.name == r.new)
        .ok_or_else(|| UpgradeError::NotCounted { host: r.new.clone(), last: "not in the plan".into() })?;
    let one = std::slice::from_ref(new);
    let old_at = run.prepared.provider.describe().await?.into_iter().find(|h| h.name == r.old);
    if old_at.is_some() || !resumed {
        launch::launch_missing(&run, &roll.ca_pem).await?;
        wait::agents_connected(&run, one, "the replacement to enroll").await?;
        let (_, addresses) = deploy::addresses(&run).await?;
        let leaving: Vec<PlannedHost> =
            old_at.iter().map(|_| PlannedHost { name: r.old.clone(), ..new.clone() }).collect();
        assign::assign_connected_and_leaving(&run, &addresses, &leaving).await?;
        wait::roles_running(&run, one, "the replacement's roles to run").await?;
        roll.p.host(&r.new, "roles running; waiting until Swarm and Consul count it");
        counted(roll, &planned, new, old_at.is_some()).await?;
        roll.p.host(&r.new, format!("counted by Swarm and Consul; removing {} ({role}, {old_image})", r.old));
    }
    let (hosts, addresses) = deploy::addresses(&run).await?;
    let managers = manager_ips(&planned, &addresses);
    // An old host an interrupted run already terminated is forgotten there too.
    scale_down::scale_down(&run, &hosts, &addresses, &managers, &roll.docker_dir).await?;
    Ok(())
}

/// Step 4: the replacement listed once and ready by the swarm (a manager: reachable or the
/// leader) with a leader, and — a Consul server — every planned server (and the old one while
/// it is there: `old_present`) reporting the same leader and all of them as peers.
async fn counted(
    roll: &Roll<'_>,
    planned: &[PlannedHost],
    new: &PlannedHost,
    old_present: bool,
) -> Result<(), UpgradeError> {
    let servers: Vec<String> = planned.iter().filter(|h| h.has(RoleKind::Consul)).map(|h| h.name.clone()).collect();
    let want = servers.len() + usize::from(old_present && new.has(RoleKind::Consul));
    let waited = poll_until(
        "Swarm and Consul to count the replacement",
        Instant::now() + COUNTED_TIMEOUT,
        Duration::from_secs(1),
        || {
            let servers = &servers;
            async move {
                let (_, addresses) = deploy::addresses(&roll.run(planned)).await?;
                let managers = manager_ips(planned, &addresses);
                let d = match membership::a_manager(&managers, &roll.docker_dir).await {
                    Ok((_, d)) => d,
                    Err(e) => return Ok::<_, UpgradeError>(Attempt::NotYet(e.to_string())),
                };
                let nodes = match verify::nodes(&d).await {
                    Ok(n) => n,
                    Err(e) => return Ok(Attempt::NotYet(e.to_string())),
                };
                if let Some(problem) =
                    crate::ops::heal::replace::swarm_problem(&nodes, &new.name, new.has(RoleKind::Manager))
                {
                    return Ok(Attempt::NotYet(problem));
                }
                if new.has(RoleKind::Consul) {
                    let st = roll.admin.clone().status(v1::StatusRequest::default()).await?.into_inner();
                    if let Err(e) = verify::consul_from_agents(&st, servers, want) {
                        return Ok(Attempt::NotYet(e.to_string()));
                    }
                }
                Ok(Attempt::Done(()))
            }
        },
    )
    .await;
    waited.map_err(|e| match e {
        PollError::Failed(e) => e,
        PollError::TimedOut { last, .. } => UpgradeError::NotCounted { host: new.name.clone(), last },
    })
}

/// Step 1 (and the end): polls (bounded) until every planned manager is reachable with one
/// leader, every worker ready, the node counts as planned, and every Consul server reports the
/// same leader and every planned server as a peer; else [`UpgradeError::NotHealthy`].
async fn healthy(roll: &Roll<'_>, when: &str) -> Result<(), UpgradeError> {
    let names = HostNames::load(roll.state_dir)?;
    let planned = plan::plan(roll.config, &names);
    let run = roll.run(&planned);
    let servers: Vec<String> = planned.iter().filter(|h| h.has(RoleKind::Consul)).map(|h| h.name.clone()).collect();
    let (m, n) = (roll.config.managers as usize, roll.config.nodes as usize);
    let waited =
        poll_until("the cluster to be healthy", Instant::now() + HEALTHY_TIMEOUT, Duration::from_secs(1), || {
            let (run, servers, planned) = (&run, &servers, &planned);
            async move {
                let (_, addresses) = deploy::addresses(run).await?;
                let managers = manager_ips(planned, &addresses);
                if let Err(e) = verify::swarm(&managers, &roll.docker_dir, m, n).await {
                    return Ok::<_, UpgradeError>(Attempt::NotYet(e.to_string()));
                }
                if !servers.is_empty() {
                    let st = run.admin.clone().status(v1::StatusRequest::default()).await?.into_inner();
                    if let Err(e) = verify::consul_from_agents(&st, servers, servers.len()) {
                        return Ok(Attempt::NotYet(e.to_string()));
                    }
                }
                Ok(Attempt::Done(()))
            }
        })
        .await;
    waited.map_err(|e| match e {
        PollError::Failed(e) => e,
        PollError::TimedOut { last, .. } => UpgradeError::NotHealthy { when: when.to_string(), why: last },
    })
}
