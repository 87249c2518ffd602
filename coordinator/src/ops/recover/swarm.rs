//! The swarm's quorum back from one survivor: `swarm init --force-new-cluster` on its Engine
//! (mutual TLS on 2376, the Engine client certificate in `<state>/docker`). Swarmkit keeps
//! the cluster — its id, join tokens, services, secrets, networks, worker nodes — and makes
//! the survivor the only member of Raft; the lost managers stay in the node list, down,
//! until heal's membership step demotes and removes them.

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::SwarmInitRequest;

// Swarmkit's port and the default address pool, as the agents' manager role uses them.
use flotilla_agent::roles::swarm::{DEFAULT_ADDR_POOL, SWARM_PORT};

use super::RecoverError;
use crate::ops::verify;
use crate::poll::{Attempt, PollError, poll_until};

/// How long a forced new cluster gets to elect its only member.
const LEADER_WAIT: Duration = Duration::from_secs(90);

/// The leader's hostname when the swarm answers through `d` with one.
pub async fn leader(d: &Docker) -> Option<String> {
    let nodes = verify::nodes(d).await.ok()?;
    nodes.into_iter().find(|n| n.manager_status == "leader").map(|n| n.hostname)
}

/// Forces a new cluster on `host`'s Engine unless its swarm already has a leader (a resumed
/// recover, or a swarm that came back by itself); waits until `host` leads. Says what it did.
pub async fn force_new_cluster(d: &Docker, host: &str, address: &str) -> Result<String, RecoverError> {
    if let Some(l) = leader(d).await {
        return Ok(format!("the swarm has a leader already ({l}): nothing forced"));
    }
    let req = SwarmInitRequest {
        listen_addr: Some(format!("0.0.0.0:{SWARM_PORT}")),
        advertise_addr: Some(format!("{address}:{SWARM_PORT}")),
        force_new_cluster: Some(true),
        default_addr_pool: Some(vec![DEFAULT_ADDR_POOL.to_string()]),
        subnet_size: Some(24),
        ..Default::default()
    };
    // The call can time out while the node restarts (docker/for-linux#79): the leader
    // check below is the judge, not the call's answer.
    crate::failpoint!("recover.force_new_cluster.before");
    let called = d.init_swarm(req).await;
    crate::failpoint!("recover.force_new_cluster.after");
    let waited = poll_until(
        "the survivor to lead a swarm of its own",
        Instant::now() + LEADER_WAIT,
        Duration::from_millis(250),
        || async {
            Ok::<_, RecoverError>(match leader(d).await {
                Some(l) if l == host => Attempt::Done(()),
                Some(l) => Attempt::NotYet(format!("{l} leads")),
                None => Attempt::NotYet("no leader yet".into()),
            })
        },
    )
    .await;
    match (waited, called) {
        (Ok(()), _) => Ok(format!("forced a new cluster on {host}: it leads the swarm alone")),
        (Err(PollError::Failed(e)), _) => Err(e),
        (Err(PollError::TimedOut { last, .. }), Err(e)) => {
            Err(RecoverError::Swarm(format!("swarm init --force-new-cluster on {host}: {e}; then {last}")))
        }
        (Err(PollError::TimedOut { last, .. }), Ok(_)) => Err(RecoverError::Swarm(format!(
            "swarm init --force-new-cluster on {host} returned, but after {LEADER_WAIT:?}: {last}"
        ))),
    }
}
