//! Step 7: the cluster checked with its own views — Swarm's node list from a manager's
//! Engine, Consul's leader and peers — and, when something changed (or it is asked for),
//! the seed's smoke test: a hello service on the nodes.
//!
//! A deploy that launched or assigned anything starts the smoke test early ([`smoke_early`]):
//! as soon as the workers run their role (the swarm exists and they are in it), through a
//! manager already in the swarm, while the other managers are still joining (one at a time:
//! swarmkit changes its Raft membership one member at a time) — ~2 s that were waited in
//! sequence. The cluster is then verified as before, with all of its managers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use flotilla_proto::v1;

use super::{DeployError, Run};
use crate::ops::plan::{PlannedHost, RoleKind};
use crate::ops::verify::{self, ConsulSummary, SmokeResult, SwarmSummary, VerifyError};
use crate::poll::{Attempt, PollError, poll_until};
use crate::providers::Provider;

/// How long the Consul servers' agents get to agree on Consul's view (AWS).
const CONSUL_AGREE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the cluster says about itself.
pub struct Verified {
    pub swarm: SwarmSummary,
    pub consul: ConsulSummary,
    pub smoke_test: Option<SmokeResult>,
}

/// The smoke test, as [`verify_and_smoke`] is asked for it.
pub enum Smoke {
    /// Not run (nothing changed, or `smoke_test = false`).
    Skip,
    /// Run it once the cluster is verified.
    Run,
    /// Run already ([`smoke_early`]).
    Done(SmokeResult),
}

/// Verifies the swarm and Consul; runs the smoke test when asked to.
pub async fn verify_and_smoke(
    run: &Run<'_>,
    addresses: &HashMap<String, String>,
    manager_ips: &[String],
    docker_dir: &Path,
    smoke: Smoke,
) -> Result<Verified, DeployError> {
    let c = run.config;
    let p = run.p;
    p.step("verify", "asking Swarm and Consul for their own view");
    let (via, d) = crate::ops::heal::membership::a_manager(manager_ips, docker_dir)
        .await
        .map_err(|e| DeployError::Verify(VerifyError::Swarm(e.to_string())))?;
    let stale = crate::ops::heal::membership::prune_replaced(&d)
        .await
        .map_err(|e| DeployError::Verify(VerifyError::Swarm(format!("{via}: {e}"))))?;
    if !stale.is_empty() {
        p.step("verify", format!("removed swarm nodes left by hosts that came back as new ones: {}", stale.join(", ")));
    }
    let swarm = verify::swarm(manager_ips, docker_dir, c.managers as usize, c.nodes as usize).await?;
    let consul = consul(run, addresses).await?;
    p.step(
        "verify",
        format!(
            "swarm: {} managers (leader {}), {} workers ready; consul: {} servers, leader {}",
            swarm.managers.len(),
            swarm.leader,
            swarm.workers.len(),
            consul.peers.len(),
            consul.leader
        ),
    );
    let smoke_test = match smoke {
        Smoke::Skip => {
            remove_leftover_smoke(run, &swarm.leader_ip, docker_dir).await?;
            None
        }
        Smoke::Run => Some(smoke_through(run, &swarm.leader_ip, docker_dir).await?),
        Smoke::Done(r) => Some(r),
    };
    Ok(Verified { swarm, consul, smoke_test })
}

/// The smoke test through the manager at `via` (leftovers of an interrupted one removed
/// first), with its progress lines.
async fn smoke_through(run: &Run<'_>, via: &str, docker_dir: &Path) -> Result<SmokeResult, DeployError> {
    remove_leftover_smoke(run, via, docker_dir).await?;
    let image = &run.prepared.hello_image;
    run.p.step("smoke", format!("hello service on the nodes ({image})"));
    let r = verify::smoke(via, docker_dir, image, run.config.nodes as usize).await?;
    run.p.step("smoke", r.line());
    Ok(r)
}

/// A smoke test interrupted after creating its service (the process killed) left it.
async fn remove_leftover_smoke(run: &Run<'_>, via: &str, docker_dir: &Path) -> Result<(), DeployError> {
    let left = verify::remove_leftover_smoke(via, docker_dir).await?;
    if left > 0 {
        run.p.step("verify", format!("removed {left} smoke-test service(s) an interrupted run left"));
    }
    Ok(())
}

/// How often [`smoke_early`] asks the managers' Engines whether the workers are in.
const EARLY_EVERY: Duration = Duration::from_millis(200);

/// The smoke test as soon as the swarm counts every planned worker ready, asked of the first
/// of `manager_ips` that is a manager of the swarm already (the others may still be joining).
/// Each manager's Engine client is made once and asked again at every poll.
pub async fn smoke_early(run: &Run<'_>, manager_ips: &[String], docker_dir: &Path) -> Result<SmokeResult, DeployError> {
    let workers = run.planned.iter().filter(|h| h.has(RoleKind::Node) && !h.has(RoleKind::Manager)).count();
    let engines: RefCell<HashMap<String, Docker>> = RefCell::new(HashMap::new());
    let what = "the workers to be ready in the swarm";
    let via = poll_until(what, Instant::now() + super::PHASE_TIMEOUT, EARLY_EVERY, || {
        let engines = &engines;
        async move {
            Ok::<_, DeployError>(match workers_ready(manager_ips, docker_dir, engines).await {
                Some((ip, n)) if n >= workers => Attempt::Done(ip),
                Some((ip, n)) => Attempt::NotYet(format!("{n} of {workers} workers ready (asked {ip})")),
                None => Attempt::NotYet("no manager's Engine answers as a swarm manager yet".into()),
            })
        }
    })
    .await
    .map_err(|e| match e {
        PollError::Failed(e) => e,
        PollError::TimedOut { last, .. } => {
            DeployError::Timeout { what: what.into(), after: super::PHASE_TIMEOUT, pending: last }
        }
    })?;
    smoke_through(run, &via, docker_dir).await
}

/// The first of `manager_ips` whose Engine lists the swarm's nodes (only a swarm manager
/// does), and how many of them are ready workers; `None` while none does. Clients are kept
/// in `engines`.
async fn workers_ready(
    manager_ips: &[String],
    docker_dir: &Path,
    engines: &RefCell<HashMap<String, Docker>>,
) -> Option<(String, usize)> {
    for ip in manager_ips {
        let known = engines.borrow().get(ip).cloned();
        let d = match known {
            Some(d) => d,
            None => {
                let Ok(d) = verify::engine(ip, docker_dir).await else { continue };
                engines.borrow_mut().insert(ip.clone(), d.clone());
                d
            }
        };
        let Ok(nodes) = d.list_nodes(None::<bollard::query_parameters::ListNodesOptions>).await else { continue };
        let ready = nodes
            .iter()
            .filter(|n| n.spec.as_ref().and_then(|s| s.role) == Some(bollard::models::NodeSpecRoleEnum::WORKER))
            .filter(|n| n.status.as_ref().and_then(|s| s.state) == Some(bollard::models::NodeState::READY))
            .count();
        return Some((ip.clone(), ready));
    }
    None
}

/// Consul's view: asked of the servers directly in the lab; on AWS, where 8500 is open to
/// the cluster's own group only, from the servers' agents, which read their local Consul,
/// until they agree (their health arrives every few seconds).
pub async fn consul(run: &Run<'_>, addresses: &HashMap<String, String>) -> Result<ConsulSummary, DeployError> {
    let servers: Vec<&PlannedHost> = run.planned.iter().filter(|h| h.has(RoleKind::Consul)).collect();
    if let Provider::Lab(_) = run.prepared.provider {
        let ips: Vec<String> = servers.iter().filter_map(|h| addresses.get(&h.name).cloned()).collect();
        return Ok(verify::consul(&ips, servers.len()).await?);
    }
    let names: Vec<String> = servers.iter().map(|h| h.name.clone()).collect();
    let last: std::cell::RefCell<Option<VerifyError>> = std::cell::RefCell::new(None);
    let every = Duration::from_millis(500);
    let agreed = poll_until("the Consul servers to agree", Instant::now() + CONSUL_AGREE_TIMEOUT, every, || {
        let (last, names) = (&last, &names);
        let mut admin = run.admin.clone();
        async move {
            let st = admin.status(v1::StatusRequest::default()).await?.into_inner();
            Ok::<_, DeployError>(match verify::consul_from_agents(&st, names, names.len()) {
                Ok(s) => Attempt::Done(s),
                Err(e) => {
                    let seen = e.to_string();
                    *last.borrow_mut() = Some(e);
                    Attempt::NotYet(seen)
                }
            })
        }
    })
    .await;
    match agreed {
        Ok(s) => Ok(s),
        Err(PollError::Failed(e)) => Err(e),
        // The servers' own last disagreement is the answer.
        Err(PollError::TimedOut { last: seen, .. }) => {
            Err(last.into_inner().unwrap_or(VerifyError::Consul(seen)).into())
        }
    }
}
