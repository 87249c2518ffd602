//! Leadership handed over, not lost: every planned operation that takes a Swarm manager
//! down (deploy's scale-down, replacements, maintenance, the `handover` drill) demotes it
//! first when it leads ([`step_down`]).
//!
//! Why: a leader that just stops does not hand over; the others wait out swarmkit's election
//! timeout (`ElectionTick` 10 of 1 s ticks, randomised by raft to 10–19 s) before they elect
//! a new one, and stock Engines do not let that be tuned. A leader that is *demoted* makes
//! swarmkit's role manager transfer leadership first (raft's `TransferLeadership`: the most
//! up-to-date follower is told to campaign at once), then take the old leader out of Raft —
//! the swarm is without a leader for about one round trip instead of 10–19 s.
//!
//! The Engine calls go through a manager's Engine (mutual TLS on 2376, [`crate::ops::verify::engine`]);
//! Swarm's node updates are applied by whichever manager leads. [`demote`] and [`promote`]
//! are the two node updates; heal's membership clean-up demotes through the same [`demote`].

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{Node, NodeSpecRoleEnum};
use bollard::query_parameters::{ListNodesOptions, UpdateNodeOptions};

use crate::poll::{Attempt, PollError, poll_until};

/// How often the swarm's leader is looked at while it changes hands.
const EVERY: Duration = Duration::from_millis(100);
/// One node list's bound: a manager's node list blocks while the swarm has no leader.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// No manager's Engine answered a node list.
    #[error("no manager's Engine answered a node list: {0}")]
    NoManager(String),
    /// The swarm refused the node update (its own message).
    #[error("{what} {host}: {message}")]
    Refused { what: &'static str, host: String, message: String },
    /// The swarm has no node for this host.
    #[error("the swarm has no node for {0}")]
    NoNode(String),
    #[error("no other manager took over from {host} within {} s (last seen: {last})", .after.as_secs())]
    NotHandedOver { host: String, after: Duration, last: String },
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
}

/// A node matched to a host: by its hostname, or by its manager address `ip:port`.
fn is_host(n: &Node, host: &str, ip: Option<&str>) -> bool {
    let hostname = n.description.as_ref().and_then(|d| d.hostname.as_deref());
    let addr_ip = n.manager_status.as_ref().and_then(|m| m.addr.as_deref()).and_then(|a| a.split(':').next());
    hostname == Some(host) || (ip.is_some() && addr_ip == ip)
}

/// The leader's hostname in `nodes`.
pub fn leader_hostname(nodes: &[Node]) -> Option<String> {
    nodes
        .iter()
        .find(|n| n.manager_status.as_ref().and_then(|m| m.leader) == Some(true))
        .and_then(|n| n.description.as_ref().and_then(|d| d.hostname.clone()))
}

/// The swarm's node for `host` (see [`is_host`]) in `nodes`.
pub fn node_of<'a>(nodes: &'a [Node], host: &str, ip: Option<&str>) -> Option<&'a Node> {
    nodes.iter().find(|n| is_host(n, host, ip))
}

/// Whether `n` leads the swarm.
pub fn leads(n: &Node) -> bool {
    n.manager_status.as_ref().and_then(|m| m.leader) == Some(true)
}

async fn set_role(d: &Docker, id: &str, role: NodeSpecRoleEnum) -> Result<(), bollard::errors::Error> {
    let node = d.inspect_node(id).await?;
    let mut spec = node.spec.unwrap_or_default();
    if spec.role == Some(role) {
        return Ok(());
    }
    let version = node.version.and_then(|v| v.index).unwrap_or_default();
    spec.role = Some(role);
    d.update_node(id, spec, UpdateNodeOptions { version: version as i64 }).await
}

/// Demotes a manager node (unreachable or not; a worker already is success). swarmkit
/// refuses it when quorum would not survive, and says so; demoting the leader transfers
/// leadership first.
pub async fn demote(d: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    set_role(d, id, NodeSpecRoleEnum::WORKER).await
}

/// Promotes a worker node back to a manager (a manager already is success).
pub async fn promote(d: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    set_role(d, id, NodeSpecRoleEnum::MANAGER).await
}

/// The first node list one of `via` (managers' Engines, by host name) answers, bounded.
pub async fn list_nodes(via: &[(String, Docker)]) -> Result<(String, Vec<Node>), HandoverError> {
    let mut errors = Vec::new();
    for (name, d) in via {
        match tokio::time::timeout(CALL_TIMEOUT, d.list_nodes(None::<ListNodesOptions>)).await {
            Ok(Ok(nodes)) => return Ok((name.clone(), nodes)),
            Ok(Err(e)) => errors.push(format!("{name}: {}", flotilla_agent::roles::engine_message(&e))),
            Err(_) => errors.push(format!("{name}: no answer within {CALL_TIMEOUT:?}")),
        }
    }
    Err(HandoverError::NoManager(errors.join("; ")))
}

/// What [`step_down`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepDown {
    /// `host` did not lead: nothing was done.
    NotLeader,
    /// `host` led; it was demoted and `new_leader` took over after `after`.
    HandedOver { new_leader: String, after: Duration },
}

/// Before a planned operation takes manager `host` (at `ip`, if known) down: when it leads, demote it (through
/// one of `via`, the other managers' Engines) and wait until another manager leads, up to
/// `bound`. The host is left a worker: the operation removes it, or promotes it back
/// ([`promote`]) when done.
pub async fn step_down(
    via: &[(String, Docker)],
    host: &str,
    ip: Option<&str>,
    bound: Duration,
) -> Result<StepDown, HandoverError> {
    let (through, nodes) = list_nodes(via).await?;
    let node = node_of(&nodes, host, ip).ok_or_else(|| HandoverError::NoNode(host.to_string()))?;
    if !leads(node) {
        return Ok(StepDown::NotLeader);
    }
    let id = node.id.clone().unwrap_or_default();
    let d = via.iter().find(|(n, _)| *n == through).map(|(_, d)| d.clone()).expect("answered");
    let asked = Instant::now();
    demote(&d, &id).await.map_err(|e| HandoverError::Refused {
        what: "demoting",
        host: host.to_string(),
        message: flotilla_agent::roles::engine_message(&e),
    })?;
    crate::failpoint!("handover.demote.after");
    let waited = poll_until("another manager to lead", asked + bound, EVERY, || async move {
        Ok::<_, std::convert::Infallible>(match list_nodes(via).await {
            Ok((_, nodes)) => match leader_hostname(&nodes) {
                Some(l) if l != host => Attempt::Done(l),
                Some(l) => Attempt::NotYet(format!("{l} still leads")),
                None => Attempt::NotYet("no leader".into()),
            },
            Err(e) => Attempt::NotYet(e.to_string()),
        })
    })
    .await;
    match waited {
        Ok(new_leader) => Ok(StepDown::HandedOver { new_leader, after: asked.elapsed() }),
        Err(PollError::TimedOut { last, .. }) => {
            Err(HandoverError::NotHandedOver { host: host.to_string(), after: bound, last })
        }
        Err(PollError::Failed(e)) => match e {},
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{ManagerStatus, NodeDescription};

    use super::*;

    fn node(hostname: &str, addr: &str, leader: bool) -> Node {
        Node {
            id: Some(format!("id-{hostname}")),
            description: Some(NodeDescription { hostname: Some(hostname.into()), ..Default::default() }),
            manager_status: Some(ManagerStatus {
                leader: Some(leader),
                addr: Some(format!("{addr}:2377")),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn issue_19_the_leader_and_a_hosts_node_are_found_by_hostname_or_address() {
        let nodes = vec![node("manager0", "10.0.0.2", false), node("ip-10-0-0-3", "10.0.0.3", true)];
        assert_eq!(leader_hostname(&nodes).as_deref(), Some("ip-10-0-0-3"));
        assert_eq!(node_of(&nodes, "manager0", None).and_then(|n| n.id.as_deref()), Some("id-manager0"));
        // A host whose Engine calls itself something else is matched by its address.
        let n = node_of(&nodes, "manager1", Some("10.0.0.3")).expect("by address");
        assert!(leads(n));
        assert!(node_of(&nodes, "manager1", None).is_none());
        assert!(node_of(&nodes, "manager1", Some("10.0.0.9")).is_none());
        assert_eq!(leader_hostname(&[node("manager0", "10.0.0.2", false)]), None);
    }
}
