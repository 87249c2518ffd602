//! Hosts that exist but are not in the plan: each is told to take no role (a manager is
//! demoted, then leaves — a leading one demoted by the coordinator first, and the next
//! leader awaited, so leadership is handed over rather than lost: [`crate::ops::handover`];
//! a node is drained and leaves once its tasks run elsewhere: [`super::drain`]), terminated at the provider, removed
//! from the swarm's node list and forgotten by the control plane — nodes first, then
//! managers, one at a time, so never more leave at once than quorum tolerates.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_proto::v1;

use super::{DeployError, Run};
use crate::ops::{handover, verify};
use crate::poll::{Attempt, poll_until};
use crate::providers::Host;

/// How long a leaving host's agent gets to report that it left the swarm.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Removes the hosts of `hosts` the plan does not name; returns their names.
pub async fn scale_down(
    run: &Run<'_>,
    hosts: &[Host],
    addresses: &HashMap<String, String>,
    manager_ips: &[String],
    docker_dir: &Path,
) -> Result<Vec<String>, DeployError> {
    let mut extra: Vec<&Host> = hosts.iter().filter(|h| !run.planned.iter().any(|x| x.name == h.name)).collect();
    // Nodes first, then managers, one by one.
    extra.sort_by_key(|h| (h.role == "manager", h.name.clone()));
    let mut removed = Vec::new();
    for h in extra {
        run.p.host(&h.name, "not in the plan: draining and leaving the swarm");
        let addr = addresses.get(&h.name).cloned().unwrap_or_default();
        if h.role == "manager" {
            hand_over(run, &h.name, &addr, manager_ips, docker_dir).await;
        } else {
            let d = super::drain::drain_and_wait(manager_ips, docker_dir, &h.name).await?;
            if !d.moved.is_empty() {
                run.p.host(&h.name, format!("drained: the tasks of {} service(s) run elsewhere", d.moved.len()));
            }
        }
        crate::failpoint!("scale_down.leave.before");
        let r = run
            .admin
            .clone()
            .assign(v1::AssignRequest { host_name: h.name.clone(), roles: vec![], host_address: addr })
            .await;
        crate::failpoint!("scale_down.leave.after");
        if r.is_ok() {
            wait_left_swarm(run, &h.name).await?;
        }
        crate::failpoint!("scale_down.terminate.before");
        run.prepared.provider.terminate(&h.name).await?;
        crate::failpoint!("scale_down.terminate.after");
        forget(run, &h.name, manager_ips, docker_dir).await?;
        run.p.host(&h.name, "terminated");
        removed.push(h.name.clone());
    }
    removed.extend(forget_departed(run, hosts, manager_ips, docker_dir).await?);
    Ok(removed)
}

/// A terminated host removed from the swarm's node list (which keeps a departed node as
/// "down" until a manager removes it) and forgotten by the control plane.
async fn forget(run: &Run<'_>, host: &str, manager_ips: &[String], docker_dir: &Path) -> Result<(), DeployError> {
    if let Err(e) = verify::forget_node(manager_ips, docker_dir, host).await {
        run.p.host(host, format!("could not remove it from the swarm's node list: {e}"));
    }
    crate::failpoint!("scale_down.forget.after");
    run.admin.clone().remove_host(v1::RevokeHostRequest { host_name: host.to_string() }).await?;
    crate::failpoint!("scale_down.revoke.after");
    Ok(())
}

/// Hosts an interrupted run terminated but had not yet forgotten — no longer planned, gone at
/// the provider, still recorded by the control plane (and perhaps listed by the swarm as
/// down): removed from the swarm's node list and revoked. Their names.
async fn forget_departed(
    run: &Run<'_>,
    hosts: &[Host],
    manager_ips: &[String],
    docker_dir: &Path,
) -> Result<Vec<String>, DeployError> {
    let st = run.admin.clone().status(v1::StatusRequest::default()).await?.into_inner();
    let mut forgotten = Vec::new();
    for s in st.hosts.iter().filter(|s| !s.revoked) {
        if run.planned.iter().any(|p| p.name == s.name) || hosts.iter().any(|h| h.name == s.name) {
            continue;
        }
        forget(run, &s.name, manager_ips, docker_dir).await?;
        run.p.host(&s.name, "gone at the provider: removed from the swarm and its record forgotten");
        forgotten.push(s.name.clone());
    }
    Ok(forgotten)
}

/// How long the other managers get to take over from a leading manager that leaves.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// When manager `host` (at `addr`) leads, demotes it through another manager and waits for
/// the next leader. Best effort: on failure the host still leaves (its own agent demotes it),
/// at the cost of an election.
async fn hand_over(run: &Run<'_>, host: &str, addr: &str, manager_ips: &[String], docker_dir: &Path) {
    let mut others = Vec::new();
    for ip in manager_ips.iter().filter(|ip| *ip != addr) {
        if let Ok(d) = verify::engine(ip, docker_dir).await {
            others.push((ip.clone(), d));
        }
    }
    match handover::step_down(&others, host, Some(addr).filter(|a| !a.is_empty()), HANDOVER_TIMEOUT).await {
        Ok(handover::StepDown::NotLeader) => {}
        Ok(handover::StepDown::HandedOver { new_leader, after }) => run.p.host(
            host,
            format!("led the swarm: demoted first, {new_leader} took over in {:.2} s", after.as_secs_f64()),
        ),
        Err(e) => run.p.host(host, format!("could not hand its leadership over first ({e}); it leaves anyway")),
    }
}

/// Waits (bounded; past it the host is terminated anyway) until the agent of `host` reports
/// its Engine out of the swarm.
async fn wait_left_swarm(run: &Run<'_>, host: &str) -> Result<(), DeployError> {
    let every = Duration::from_millis(500);
    let waited = poll_until("the host to leave the swarm", Instant::now() + LEAVE_TIMEOUT, every, || {
        let mut admin = run.admin.clone();
        async move {
            let st = admin.status(v1::StatusRequest::default()).await?.into_inner();
            let left = st
                .hosts
                .iter()
                .find(|x| x.name == host)
                .and_then(|x| x.health.as_ref())
                .and_then(|s| s.swarm.as_ref())
                .is_some_and(|s| s.local_state == "inactive");
            Ok::<_, DeployError>(if left { Attempt::Done(()) } else { Attempt::NotYet("still in the swarm".into()) })
        }
    })
    .await;
    // A time-out is no error: the host is terminated next either way.
    waited.or_else(|e| e.into_failed().map_or(Ok(()), Err))
}
