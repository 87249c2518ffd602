//! A lost host's memberships, ended from the survivors' side before its replacement comes:
//!
//! - Swarm (through a healthy manager's Engine, mutual TLS on 2376): a manager is demoted
//!   first — swarmkit accepts demoting an unreachable manager while the others keep a
//!   quorum, and its role manager then removes it from Raft — and its node removed once
//!   that is done; a worker's node is removed once its tasks were rescheduled elsewhere.
//!   A node the swarm still sees `ready` is never touched: it is not lost.
//! - Consul: nothing. Autopilot's dead-server clean-up (on by default) drops the dead server
//!   from the Raft peers once its replacement — same node name, new node ID — joins.
//!   Measured on Consul 1.8.7: a `force-leave -prune` of the name kept the leader
//!   from adding the replacement to Raft until its next 60 s reconcile (4.5 s without it,
//!   56 s with it, from the roles running to the full peer set); heal's count of every
//!   server's peers catches a dead server left behind.
//!
//! Every step is idempotent: a node or member already gone is success.

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{NodeSpecRoleEnum, NodeState};
use bollard::query_parameters::{DeleteNodeOptions, ListNodesOptions, ListTasksOptions};

use super::HealError;
use crate::ops::{handover, verify};
use crate::poll::{Attempt, PollError, poll_until};

/// How long swarmkit gets to take a demoted manager out of Raft, or to reschedule a lost
/// worker's tasks.
const SWARM_SETTLE: Duration = Duration::from_secs(90);
const EVERY: Duration = Duration::from_millis(500);
/// How long the swarm gets to mark a gone host's node down (its dispatcher's heartbeat
/// period times its grace multiplier: 6 s with the agent's 2 s heartbeat, 15 s with
/// swarmkit's default).
const SWARM_DOWN_WAIT: Duration = Duration::from_secs(45);

/// The first of `manager_ips` whose Engine answers.
pub async fn a_manager(manager_ips: &[String], cert_dir: &Path) -> Result<(String, Docker), HealError> {
    let mut errors = Vec::new();
    for ip in manager_ips {
        match verify::engine(ip, cert_dir).await {
            Ok(d) => return Ok((ip.clone(), d)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(HealError::Swarm(format!("no healthy manager's Engine answered: {}", errors.join("; "))))
}

/// The swarm's node ids for `host` (by hostname), each with whether it is a manager and
/// whether it is ready.
async fn nodes_of(d: &Docker, host: &str) -> Result<Vec<(String, bool, bool)>, bollard::errors::Error> {
    let nodes = d.list_nodes(None::<ListNodesOptions>).await?;
    Ok(nodes
        .into_iter()
        .filter(|n| n.description.as_ref().and_then(|d| d.hostname.as_deref()) == Some(host))
        .filter_map(|n| {
            let manager =
                n.spec.as_ref().and_then(|s| s.role) == Some(NodeSpecRoleEnum::MANAGER) || n.manager_status.is_some();
            let ready = n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY);
            Some((n.id?, manager, ready))
        })
        .collect())
}

/// Ends `host`'s membership of the swarm (see the module's doc); what it did, for the log.
pub async fn leave_swarm(d: &Docker, via: &str, host: &str) -> Result<String, HealError> {
    let call = |e: bollard::errors::Error| HealError::Swarm(format!("{via}: {e}"));
    let nodes = wait_not_ready(d, host).await?;
    if nodes.is_empty() {
        return Ok("not in the swarm's node list".into());
    }
    let mut done = Vec::new();
    for (id, manager, _) in nodes {
        if manager {
            demote_lost(d, &id).await.map_err(call)?;
            done.push(format!("demoted {id}"));
        } else {
            wait_rescheduled(d, &id).await?;
        }
        remove_node(d, &id).await?;
        done.push(format!("removed node {id}"));
    }
    Ok(done.join(", "))
}

/// The swarm's nodes for `host` once none of them is `ready` any more. The provider says the
/// host is gone, but the swarm marks a node down only after missing its heartbeats (about
/// 15 s): that is waited for, bounded; a node still ready then is not touched.
async fn wait_not_ready(d: &Docker, host: &str) -> Result<Vec<(String, bool, bool)>, HealError> {
    let waited = poll_until("the swarm to see the node down", Instant::now() + SWARM_DOWN_WAIT, EVERY, || async move {
        let nodes = nodes_of(d, host).await.map_err(|e| HealError::Swarm(e.to_string()))?;
        Ok::<_, HealError>(match nodes.iter().any(|(_, _, ready)| *ready) {
            false => Attempt::Done(nodes),
            true => Attempt::NotYet("ready".into()),
        })
    })
    .await;
    waited.map_err(|e| match e {
        PollError::Failed(e) => e,
        PollError::TimedOut { .. } => HealError::Swarm(format!(
            "the swarm still sees {host} ready after {SWARM_DOWN_WAIT:?}: it is not lost; nothing was removed"
        )),
    })
}

/// Demotes a lost manager's node. One no longer in Raft (a cluster forced anew from a
/// survivor keeps the others' nodes but not their membership) has nothing to demote:
/// swarmkit removes such a manager's node as it is.
pub async fn demote_lost(d: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    match handover::demote(d, id).await {
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, message })
            if message.contains("raft memberlist") =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Waits (bounded) until no task the swarm wants running is on node `id` any more; past the
/// bound the node is removed all the same (its tasks cannot run on a host that is gone).
async fn wait_rescheduled(d: &Docker, id: &str) -> Result<(), HealError> {
    let filters = std::collections::HashMap::from([
        ("node".to_string(), vec![id.to_string()]),
        ("desired-state".to_string(), vec!["running".to_string()]),
    ]);
    let waited = poll_until("its tasks to be rescheduled", Instant::now() + SWARM_SETTLE, EVERY, || {
        let filters = filters.clone();
        async move {
            let tasks = d
                .list_tasks(Some(ListTasksOptions { filters: Some(filters) }))
                .await
                .map_err(|e| HealError::Swarm(e.to_string()))?;
            Ok::<_, HealError>(match tasks.len() {
                0 => Attempt::Done(()),
                n => Attempt::NotYet(format!("{n} task(s) still meant to run there")),
            })
        }
    })
    .await;
    waited.or_else(|e| e.into_failed().map_or(Ok(()), Err))
}

/// Removes node `id`, retrying while swarmkit is still taking a demoted manager out of Raft
/// ("must be demoted" / "is a member of the raft cluster"); a node already gone is success.
async fn remove_node(d: &Docker, id: &str) -> Result<(), HealError> {
    let last = RefCell::new(String::new());
    let removed = poll_until("the node to be removable", Instant::now() + SWARM_SETTLE, EVERY, || {
        let last = &last;
        async move {
            match d.delete_node(id, Some(DeleteNodeOptions { force: true })).await {
                Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                    Ok::<_, HealError>(Attempt::Done(()))
                }
                Err(e) => {
                    *last.borrow_mut() = e.to_string();
                    Ok(Attempt::NotYet(e.to_string()))
                }
            }
        }
    })
    .await;
    match removed {
        Ok(()) => Ok(()),
        Err(PollError::Failed(e)) => Err(e),
        Err(PollError::TimedOut { .. }) => {
            Err(HealError::Swarm(format!("node {id} could not be removed: {}", last.into_inner())))
        }
    }
}
