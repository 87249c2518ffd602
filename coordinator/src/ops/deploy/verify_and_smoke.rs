//! Step 7: the cluster checked with its own views — Swarm's node list from a manager's
//! Engine, Consul's leader and peers — and, when something changed (or it is asked for),
//! the seed's smoke test: a hello service on the nodes.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

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

/// Verifies the swarm and Consul; runs the smoke test when `smoke`.
pub async fn verify_and_smoke(
    run: &Run<'_>,
    addresses: &HashMap<String, String>,
    manager_ips: &[String],
    docker_dir: &Path,
    smoke: bool,
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
    // A smoke test interrupted after creating its service (the process killed) left it.
    let left = verify::remove_leftover_smoke(&swarm.leader_ip, docker_dir).await?;
    if left > 0 {
        p.step("verify", format!("removed {left} smoke-test service(s) an interrupted run left"));
    }
    let smoke_test = if smoke {
        let image = &run.prepared.hello_image;
        p.step("smoke", format!("hello service on the nodes ({image})"));
        let r = verify::smoke(&swarm.leader_ip, docker_dir, image, c.nodes as usize).await?;
        p.step("smoke", r.line());
        Some(r)
    } else {
        None
    };
    Ok(Verified { swarm, consul, smoke_test })
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
