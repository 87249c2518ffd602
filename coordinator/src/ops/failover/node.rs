//! `--component node` (issue 19): a worker goes down — the provider stops its host
//! (`--mode host`), or its agent stops its Engine (`--mode engine`) — and the swarm must run
//! its hello tasks on another worker. Looked at through the swarm's leader every
//! [`PROBE_INTERVAL`]: the worker marked `down` (`detect_s`: the dispatcher missed its
//! heartbeats, three periods of [`flotilla_agent::roles::manager::DISPATCHER_HEARTBEAT`]),
//! every hello task running again on the other workers (`workload_s`; the target: 10 s);
//! then the restore, the worker `ready` again (`rejoin_s`), the control plane healthy.
//! Nothing is elected: the leader stays (`old_leader` = `new_leader`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{NodeState, TaskState};
use bollard::query_parameters::{ListNodesOptions, ListTasksOptions};

use super::watch::CpWatch;
use super::{
    CALL_TIMEOUT, Drill, FailoverError, HELLO_REPLICAS, HELLO_SERVICE, Member, PROBE_INTERVAL, Report, Setup,
    connect_engines, fault, lock, precheck, report, start_hello, swarm, wait_healthy,
};
use crate::poll::{Attempt, poll_until};

/// A worker as the leader lists it: its name in the cluster and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Worker {
    name: String,
    ready: bool,
}

/// What the leader said in one look: the nodes by id, and the running hello tasks (id,
/// node id).
#[derive(Default)]
struct Look {
    nodes: HashMap<String, Worker>,
    tasks: Vec<(String, String)>,
}

impl Look {
    fn state_of(&self, host: &str) -> Option<bool> {
        self.nodes.values().find(|w| w.name == host).map(|w| w.ready)
    }
    /// The running hello tasks on `host`, and on every other node.
    fn split(&self, host: &str) -> (Vec<String>, Vec<String>) {
        let on = |id: &str| self.nodes.get(id).is_some_and(|w| w.name == host);
        let (mut here, mut elsewhere) = (Vec::new(), Vec::new());
        for (task, node) in &self.tasks {
            if on(node) { here.push(task.clone()) } else { elsewhere.push(task.clone()) }
        }
        (here, elsewhere)
    }
}

/// One look through `leader`: its node list and the hello service's running tasks, each
/// bounded. Nodes are named by the workers' addresses (else their hostnames).
async fn look(leader: &Docker, workers: &[Member]) -> Option<Look> {
    let nodes = tokio::time::timeout(CALL_TIMEOUT, leader.list_nodes(None::<ListNodesOptions>)).await.ok()?.ok()?;
    let filters = HashMap::from([
        ("service".to_string(), vec![HELLO_SERVICE.to_string()]),
        ("desired-state".to_string(), vec!["running".to_string()]),
    ]);
    let tasks =
        tokio::time::timeout(CALL_TIMEOUT, leader.list_tasks(Some(ListTasksOptions { filters: Some(filters) })))
            .await
            .ok()?
            .ok()?;
    let nodes = nodes
        .into_iter()
        .filter_map(|n| {
            let status = n.status.unwrap_or_default();
            let hostname = n.description.and_then(|d| d.hostname).unwrap_or_default();
            let addr = status.addr.unwrap_or_default();
            let name = workers.iter().find(|w| w.ip == addr).map(|w| w.name.clone()).unwrap_or(hostname);
            Some((n.id?, Worker { name, ready: status.state == Some(NodeState::READY) }))
        })
        .collect();
    let tasks = tasks
        .into_iter()
        .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
        .filter_map(|t| Some((t.id?, t.node_id?)))
        .collect();
    Some(Look { nodes, tasks })
}

/// The node drill (see the module's doc).
pub(super) async fn drill(d: &Drill) -> Result<Report, FailoverError> {
    let (workers, managers) = precheck::wait_until_fit(d).await?;
    let names = workers.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ");
    d.say.note(format!("pre-check: {} workers ({names}), every host connected, every role running", workers.len()));
    let engines = connect_engines(&managers, &d.opts.state_dir.join("docker")).await?;
    lock(&d.pending).engines = engines.iter().map(|(n, e)| (n.clone(), e.clone())).collect();
    let leader_name = swarm::find_leader(&engines, &managers).await.ok_or(FailoverError::NoSwarmLeader)?;
    let leader = engines[&leader_name].clone();
    let tasks_before = start_hello(d, &leader, &workers).await?;
    let before = look(&leader, &workers).await.unwrap_or_default();
    let target = match &d.opts.target {
        Some(t) => t.clone(),
        None => before
            .tasks
            .iter()
            .find_map(|(_, node)| before.nodes.get(node).map(|w| w.name.clone()))
            .ok_or_else(|| FailoverError::Refused("no worker runs a hello task".into()))?,
    };
    let (moving, _) = before.split(&target);
    if moving.is_empty() {
        return Err(FailoverError::Refused(format!("{target} runs none of the hello tasks: nothing would move")));
    }
    d.say.note(format!(
        "swarm leader: {leader_name}; taking down worker {target}, which runs {} hello task(s) ({:?} mode)",
        moving.len(),
        d.opts.mode
    ));
    let target_ip = workers.iter().find(|m| m.name == target).map(|m| m.ip.clone()).unwrap_or_default();
    let s = Setup { members: workers, engines, old_leader: leader_name.clone(), target, target_ip, tasks_before };

    let fault_at = Instant::now();
    d.say.start_fault(fault_at);
    let cp = CpWatch::start(d, s.target.clone());
    fault::fault(d, &s, fault_at).await?;
    let mut r = Report {
        cluster: d.opts.cluster.clone(),
        mode: format!("{:?}", d.opts.mode).to_lowercase(),
        component: "node".into(),
        old_leader: leader_name.clone(),
        new_leader: leader_name,
        target: s.target.clone(),
        tasks_before: s.tasks_before.len(),
        bound_s: d.opts.bound.as_secs_f64(),
        ..Default::default()
    };
    measure(d, &s, &leader, &moving, fault_at, &mut r).await;
    let restore_at = Instant::now();
    match fault::restore(d, &s.target, restore_at + d.opts.bound).await {
        Ok(what) => r.restore_s = Some(d.say.event(fault_at.elapsed(), format!("restore: {what}"))),
        Err(e) => {
            d.say.event(fault_at.elapsed(), format!("restore failed: {e}"));
        }
    }
    let deadline = Instant::now() + d.opts.bound;
    if r.restore_s.is_some() {
        rejoin(d, &s, &leader, fault_at, restore_at, deadline, &mut r).await;
    }
    wait_healthy(d, fault_at, restore_at, deadline, &mut r).await;
    cp.stop().await.record(&mut r, &s.target, false);
    r.timeline = d.say.timeline();
    report::judge(&mut r, false);
    Ok(r)
}

/// Looks every [`PROBE_INTERVAL`] until the target is marked down (`detect_s`) and every
/// hello task runs, none of them on the target (`workload_s`), or the bound.
async fn measure(d: &Drill, s: &Setup, leader: &Docker, moving: &[String], fault_at: Instant, r: &mut Report) {
    let target = s.target.as_str();
    // (detect_s, workload_s, the running tasks elsewhere at the last look)
    let seen: &Mutex<(Option<f64>, Option<f64>, Vec<String>)> = &Mutex::default();
    let _ = poll_until("the tasks moved", fault_at + d.opts.bound, PROBE_INTERVAL, || async move {
        let Some(l) = look(leader, &s.members).await else {
            return Ok::<_, Infallible>(Attempt::NotYet("no answer".into()));
        };
        let mut seen = lock(seen);
        if seen.0.is_none() && l.state_of(target) == Some(false) {
            seen.0 = Some(d.say.event(fault_at.elapsed(), format!("detect: the swarm marks {target} down")));
        }
        let (_, elsewhere) = l.split(target);
        if seen.1.is_none() && elsewhere.len() >= HELLO_REPLICAS {
            seen.1 = Some(d.say.event(
                fault_at.elapsed(),
                format!("workload: {} hello tasks running, none on {target}", elsewhere.len()),
            ));
        }
        seen.2 = elsewhere;
        Ok(if seen.0.is_some() && seen.1.is_some() { Attempt::Done(()) } else { Attempt::NotYet(String::new()) })
    })
    .await;
    let (detect, moved, last) = std::mem::take(&mut *lock(seen));
    (r.detect_s, r.workload_s) = (detect, moved);
    r.tasks_after = last.len();
    r.tasks_rescheduled = moving.iter().all(|t| !last.contains(t));
    r.workload_ok = r.workload_s.is_some();
}

/// After the restore: the target `ready` again in the leader's node list (`rejoin_s`).
async fn rejoin(
    d: &Drill,
    s: &Setup,
    leader: &Docker,
    fault_at: Instant,
    restore_at: Instant,
    deadline: Instant,
    r: &mut Report,
) {
    let target = s.target.as_str();
    let ready = poll_until("the worker ready again", deadline, Duration::from_millis(200), || async move {
        Ok::<_, Infallible>(match look(leader, &s.members).await.and_then(|l| l.state_of(target)) {
            Some(true) => Attempt::Done(()),
            _ => Attempt::NotYet("not ready".into()),
        })
    })
    .await;
    if ready.is_ok() {
        let at = restore_at.elapsed().as_secs_f64();
        r.rejoin_s = Some(at);
        r.rejoined_as = "ready".into();
        d.say.event(fault_at.elapsed(), format!("rejoin: {target} is ready again ({at:.2} s after the restore)"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_19_tasks_are_split_by_the_node_they_run_on() {
        let l = Look {
            nodes: HashMap::from([
                ("n0".to_string(), Worker { name: "node0".into(), ready: false }),
                ("n1".to_string(), Worker { name: "node1".into(), ready: true }),
            ]),
            tasks: vec![("t0".into(), "n0".into()), ("t1".into(), "n1".into()), ("t2".into(), "n1".into())],
        };
        assert_eq!(l.split("node0"), (vec!["t0".to_string()], vec!["t1".to_string(), "t2".to_string()]));
        assert_eq!(l.state_of("node0"), Some(false));
        assert_eq!(l.state_of("node1"), Some(true));
        assert_eq!(l.state_of("node9"), None);
    }
}
