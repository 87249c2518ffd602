//! A lost host's memberships, ended from the survivors' side — after the host is removed at
//! the provider (`replace::remove_remains`: a stopped host started again after its
//! memberships ended would wait for ever on a swarm that removed it), before its
//! replacement comes:
//!
//! - Swarm (through a healthy manager's Engine, mutual TLS on 2376): a manager is demoted
//!   first — swarmkit accepts demoting an unreachable manager while the others keep a
//!   quorum, and its role manager then removes it from Raft — and its node removed once
//!   that is done; a worker's node is removed once its tasks were rescheduled elsewhere.
//!   A node the swarm still sees `ready` is never touched: it is not lost.
//! - Consul: a lost server is taken out of the Raft configuration by its address
//!   (`consul operator raft remove-peer`, through a healthy server's container with the
//!   operator's token) before its replacement is launched, so that — same node name, new
//!   node ID, perhaps the same address — joins a configuration that no longer counts it. Left
//!   in, an empty server on a reused address answers Raft as the lost one, and Consul 1.8's
//!   Raft does not check the voter's ID: its vote could elect a server missing committed
//!   writes (chaos soak, issue 20). Raft only, not Serf: a `force-leave -prune` of the name
//!   kept the leader from adding the replacement until its next 60 s reconcile (measured on
//!   Consul 1.8.7). Needs a Consul leader (waited for, bounded); without one heal stops.
//!
//! Every step is idempotent: a node or member already gone is success.

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{NodeSpecRoleEnum, NodeState};
use bollard::query_parameters::{DeleteNodeOptions, ListNodesOptions, ListTasksOptions};

use flotilla_agent::roles::consul::{CONTAINER, RPC_PORT};

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

/// How long Consul gets to have a leader that can drop a lost server from Raft.
const CONSUL_LEADER_WAIT: Duration = Duration::from_secs(60);

/// Takes the Consul server at `lost_ip` out of Consul's Raft configuration, through the
/// Consul container on the healthy manager `d` (`via`), with the operator's `token`; what it
/// did, for the log. Already out: success.
pub async fn leave_consul(d: &Docker, via: &str, lost: &str, lost_ip: &str, token: &str) -> Result<String, HealError> {
    let address = format!("{lost_ip}:{RPC_PORT}");
    let waited =
        poll_until("Consul to drop the lost server from Raft", Instant::now() + CONSUL_LEADER_WAIT, EVERY, || {
            let address = address.clone();
            async move {
                let (code, out) =
                    consul_in(d, token, &["operator", "raft", "remove-peer", &format!("-address={address}")])
                        .await
                        .map_err(|e| HealError::Consul(format!("{via}: {e}")))?;
                Ok::<_, HealError>(match removed(code, &out) {
                    Some(Ok(did)) => Attempt::Done(did),
                    Some(Err(e)) => {
                        return Err(HealError::Consul(format!("{via}: removing {lost} ({address}) from Raft: {e}")));
                    }
                    None => Attempt::NotYet(out.trim().to_string()),
                })
            }
        })
        .await;
    waited.map_err(|e| match e {
        PollError::Failed(e) => e,
        PollError::TimedOut { last, .. } => HealError::Consul(format!(
            "Consul could not drop the lost server {lost} ({address}) from its Raft configuration within {CONSUL_LEADER_WAIT:?} ({last}); \
             heal does not launch a replacement that could answer as it. Consul needs a leader first: `coordinator status` shows each server's view"
        )),
    })
}

/// What `consul operator raft remove-peer` said: done (what), failed for good, or not yet
/// (no leader: `None`).
fn removed(code: i64, out: &str) -> Option<Result<String, String>> {
    if code == 0 {
        return Some(Ok("removed from Consul's Raft configuration".into()));
    }
    if out.contains("was not found in the Raft configuration") {
        return Some(Ok("not in Consul's Raft configuration".into()));
    }
    if out.contains("No cluster leader") || out.contains("leadership lost") || out.contains("connection refused") {
        return None;
    }
    Some(Err(out.trim().to_string()))
}

/// Runs `consul ARGS…` in the agent's Consul container on `d` with `token`; its exit code
/// and output.
async fn consul_in(d: &Docker, token: &str, args: &[&str]) -> Result<(i64, String), bollard::errors::Error> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    use futures::StreamExt;
    let mut cmd = vec!["consul"];
    cmd.extend_from_slice(args);
    let env = format!("CONSUL_HTTP_TOKEN={token}");
    let exec = d
        .create_exec(
            CONTAINER,
            CreateExecOptions {
                cmd: Some(cmd),
                env: Some(vec![env.as_str()]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let mut out = String::new();
    if let StartExecResults::Attached { mut output, .. } = d.start_exec(&exec.id, None).await? {
        while let Some(chunk) = output.next().await {
            out.push_str(&chunk?.to_string());
        }
    }
    let code = d.inspect_exec(&exec.id).await?.exit_code.unwrap_or(-1);
    Ok((code, out))
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

/// Ends the membership of the lost host's swarm `nodes` (see the module's doc): called once
/// the host is gone at the provider, so that an interruption never leaves a host that can
/// start again with a membership the swarm has ended (its Engine would wait for a leader of
/// a swarm that no longer has it, for ever). What it did, for the log.
pub async fn leave_swarm(d: &Docker, via: &str, nodes: Vec<(String, bool, bool)>) -> Result<String, HealError> {
    let call = |e: bollard::errors::Error| HealError::Swarm(format!("{via}: {e}"));
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

/// The swarm's nodes of the lost `host` once none of them is `ready` any more: checked before
/// the host is removed at the provider, ended by [`leave_swarm`] after. The provider says the
/// host is gone, but the swarm marks a node down only after missing its heartbeats (about
/// 15 s): that is waited for, bounded; a node still ready then means the host is not lost,
/// and nothing is touched.
pub async fn lost_nodes(d: &Docker, host: &str) -> Result<Vec<(String, bool, bool)>, HealError> {
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

/// Removes the swarm nodes left behind by hosts that came back as new nodes: a node not
/// ready while a ready node of the same hostname exists (a manager demoted first). One pass;
/// what it removed. Such a node is left when a heal is interrupted between removing the lost
/// host and ending its membership, and a `deploy` relaunches the host meanwhile.
pub async fn prune_replaced(d: &Docker) -> Result<Vec<String>, HealError> {
    let call = |e: bollard::errors::Error| HealError::Swarm(e.to_string());
    let nodes = d.list_nodes(None::<ListNodesOptions>).await.map_err(call)?;
    let host = |n: &bollard::models::Node| n.description.as_ref().and_then(|x| x.hostname.clone()).unwrap_or_default();
    let ready = |n: &bollard::models::Node| n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY);
    let ready_names: Vec<String> = nodes.iter().filter(|n| ready(n)).map(host).collect();
    let mut removed = Vec::new();
    for n in nodes.iter().filter(|n| !ready(n) && ready_names.contains(&host(n))) {
        let id = n.id.clone().unwrap_or_default();
        if n.spec.as_ref().and_then(|s| s.role) == Some(NodeSpecRoleEnum::MANAGER) || n.manager_status.is_some() {
            demote_lost(d, &id).await.map_err(call)?;
        }
        remove_node(d, &id).await?;
        removed.push(format!("{} ({id})", host(n)));
    }
    Ok(removed)
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

#[cfg(test)]
mod tests {
    use super::removed;

    #[test]
    fn remove_peer_outcomes_read_as_done_not_yet_or_failed() {
        assert!(matches!(removed(0, "Removed peer with address \"10.0.0.9:8300\"\n"), Some(Ok(_))));
        let gone = "Error removing peer: Unexpected response code: 500 (address \"10.0.0.9:8300\" was not found in the Raft configuration)";
        assert_eq!(removed(1, gone), Some(Ok("not in Consul's Raft configuration".into())));
        assert_eq!(removed(1, "Error removing peer: Unexpected response code: 500 (No cluster leader)"), None);
        let denied = "Error removing peer: Unexpected response code: 403 (Permission denied)";
        assert_eq!(removed(1, denied), Some(Err(denied.into())));
    }
}
