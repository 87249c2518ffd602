//! The Swarm side of the drill: the managers' Engines (over mutual TLS, port 2376), probed
//! every [`PROBE_INTERVAL`]: the target's ping, the survivors' node lists (who leads); the
//! hello service's tasks; the target listed `reachable` again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{NodeSpecRoleEnum, TaskState};
use bollard::query_parameters::{ListNodesOptions, ListTasksOptions};
use tokio::sync::mpsc;

use super::{
    CALL_TIMEOUT, Drill, FailoverError, HELLO_REPLICAS, HELLO_SERVICE, Measure, Member, PING_TIMEOUT, PROBE_INTERVAL,
    Report, WORKLOAD_TIMEOUT,
};
use crate::ops::verify;

/// A node as a manager's Engine lists it.
#[derive(Clone, Debug)]
pub(super) struct NodeView {
    /// The host's name in the cluster (matched by address, else the Engine's hostname).
    pub name: String,
    /// leader, reachable, unreachable; empty for workers.
    pub manager_status: String,
}

fn node_views(nodes: Vec<bollard::models::Node>, managers: &[Member]) -> Vec<NodeView> {
    nodes
        .into_iter()
        .filter(|n| n.spec.as_ref().and_then(|s| s.role) == Some(NodeSpecRoleEnum::MANAGER))
        .map(|n| {
            let hostname = n.description.and_then(|d| d.hostname).unwrap_or_default();
            let ms = n.manager_status.unwrap_or_default();
            let ip = ms.addr.as_deref().and_then(|a| a.split(':').next()).unwrap_or_default().to_string();
            let name = managers.iter().find(|m| m.ip == ip).map(|m| m.name.clone()).unwrap_or(hostname);
            let manager_status = if ms.leader == Some(true) {
                "leader".to_string()
            } else {
                ms.reachability.map(|r| r.to_string()).unwrap_or_default()
            };
            NodeView { name, manager_status }
        })
        .collect()
}

pub(super) async fn list_managers(d: &Docker, managers: &[Member]) -> Result<Vec<NodeView>, String> {
    match tokio::time::timeout(CALL_TIMEOUT, d.list_nodes(None::<ListNodesOptions>)).await {
        Ok(Ok(n)) => Ok(node_views(n, managers)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

fn leader_of(nodes: &[NodeView]) -> Option<String> {
    nodes.iter().find(|n| n.manager_status == "leader").map(|n| n.name.clone())
}

/// The swarm's leader, as the first manager that answers names it.
pub(super) async fn find_leader(engines: &HashMap<String, Docker>, managers: &[Member]) -> Option<String> {
    for m in managers {
        if let Some(e) = engines.get(&m.name)
            && let Ok(nodes) = list_managers(e, managers).await
            && let Some(l) = leader_of(&nodes)
        {
            return Some(l);
        }
    }
    None
}

/// The ids of the hello service's running tasks.
pub(super) async fn running_tasks(d: &Docker) -> Result<Vec<String>, String> {
    let fut = d.list_tasks(Some(ListTasksOptions {
        filters: Some(HashMap::from([
            ("service".to_string(), vec![HELLO_SERVICE.to_string()]),
            ("desired-state".to_string(), vec!["running".to_string()]),
        ])),
    }));
    let tasks = match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer within {CALL_TIMEOUT:?}")),
    };
    let mut ids: Vec<String> = tasks
        .into_iter()
        .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
        .filter_map(|t| t.id)
        .collect();
    ids.sort();
    Ok(ids)
}

/// Creates the hello service (or keeps the one a previous drill left) and waits until its
/// replicas run.
pub(super) async fn ensure_hello(d: &Docker, image: &str) -> Result<Vec<String>, FailoverError> {
    if d.inspect_service(HELLO_SERVICE, None).await.is_err() {
        let spec = verify::worker_service(
            HELLO_SERVICE,
            ("flotilla.drill", "1"),
            image,
            Some(vec!["sh".into(), "-c".into(), "while true; do sleep 1; done".into()]),
            HELLO_REPLICAS,
            false,
        );
        d.create_service(spec, None)
            .await
            .map_err(|e| FailoverError::Workload(format!("creating {HELLO_SERVICE}: {e}")))?;
    }
    let deadline = Instant::now() + WORKLOAD_TIMEOUT;
    loop {
        let running = running_tasks(d).await.unwrap_or_default();
        if running.len() >= HELLO_REPLICAS {
            return Ok(running);
        }
        if Instant::now() > deadline {
            return Err(FailoverError::Workload(format!(
                "{} of {HELLO_REPLICAS} tasks of {HELLO_SERVICE} running after {WORKLOAD_TIMEOUT:?}",
                running.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Removes the hello service through the first manager whose Engine can (the swarm needs a
/// leader for that: retried until `deadline`). `Ok(false)`: there was none.
pub(super) async fn remove_hello(engines: &[(String, Docker)], deadline: Instant) -> Result<bool, String> {
    if engines.is_empty() {
        return Err("no manager's Engine is known".into());
    }
    loop {
        let mut last = String::new();
        for (name, e) in engines {
            match tokio::time::timeout(CALL_TIMEOUT * 5, e.delete_service(HELLO_SERVICE)).await {
                Ok(Ok(())) => return Ok(true),
                Ok(Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })) => {
                    return Ok(false);
                }
                Ok(Err(err)) => last = format!("{name}: {}", flotilla_agent::roles::engine_message(&err)),
                Err(_) => last = format!("{name}: no answer within {:?}", CALL_TIMEOUT * 5),
            }
        }
        if Instant::now() > deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a probe saw.
enum Seen {
    /// The target's Engine answered a ping (or did not).
    Ping(bool),
    /// A surviving manager's node list.
    Nodes { from: String, nodes: Result<Vec<NodeView>, String> },
}

/// Probes until the loss is detected and the leader's API answers (or the deadline):
/// `detect_s`, `elect_s`, `api_back_s`. Returns the leader after the fault.
pub(super) async fn measure(
    d: &Drill,
    m: &Measure<'_>,
    engines: &HashMap<String, Docker>,
    r: &mut Report,
) -> Option<String> {
    let say = &d.say;
    let (target, fault_at) = (m.target.to_string(), m.fault_at);
    let survivors: Vec<(Member, Docker)> =
        m.members.iter().filter(|x| x.name != target).map(|x| (x.clone(), engines[&x.name].clone())).collect();
    let (tx, mut rx) = mpsc::unbounded_channel::<(Duration, Seen)>();
    let probing = tokio_util::sync::CancellationToken::new();
    let _stop = probing.clone().drop_guard();
    {
        let target_engine = engines[&target].clone();
        let managers = m.members.to_vec();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = probing.cancelled() => return,
                }
                let (tx1, e) = (tx.clone(), target_engine.clone());
                tokio::spawn(async move {
                    let ok = matches!(tokio::time::timeout(PING_TIMEOUT, e.ping()).await, Ok(Ok(_)));
                    let _ = tx1.send((fault_at.elapsed(), Seen::Ping(ok)));
                });
                for (s, e) in &survivors {
                    let (tx1, e, s, all) = (tx.clone(), e.clone(), s.clone(), managers.clone());
                    tokio::spawn(async move {
                        let nodes = list_managers(&e, &all).await;
                        let _ = tx1.send((fault_at.elapsed(), Seen::Nodes { from: s.name, nodes }));
                    });
                }
            }
        });
    }
    let mut new_leader: Option<String> = None;
    loop {
        if (r.detect_s.is_some() && r.api_back_s.is_some()) || Instant::now() > m.deadline {
            break;
        }
        tokio::select! {
            Some((at, seen)) = rx.recv() => match seen {
                Seen::Ping(false) if r.detect_s.is_none() => {
                    r.detect_s = Some(say.event(at, format!("detect: {target}'s Engine stopped answering ({}:{})", m.target_ip, verify::ENGINE_TLS_PORT)));
                }
                Seen::Ping(_) => {}
                Seen::Nodes { from, nodes: Ok(nodes) } => {
                    let leader = leader_of(&nodes);
                    if new_leader.is_none()
                        && let Some(l) = &leader
                        && (l != m.old_leader || (!m.target_is_leader && r.detect_s.is_some()))
                    {
                        new_leader = Some(l.clone());
                        if m.target_is_leader {
                            r.elect_s = Some(say.event(at, format!("elect: {from}'s node list names {l} the new leader")));
                        } else {
                            say.event(at, format!("{from}'s node list still names {l} the leader"));
                        }
                    }
                    if r.api_back_s.is_none() && new_leader.as_deref() == Some(from.as_str()) {
                        r.api_back_s = Some(say.event(at, format!("api back: the leader {from}'s API answers a node list")));
                    }
                }
                Seen::Nodes { .. } => {}
            },
            () = tokio::time::sleep_until(m.deadline.into()) => {}
        }
    }
    new_leader
}

/// The hello service's tasks through the new leader: all replicas running again.
pub(super) async fn workload(
    d: &Drill,
    m: &Measure<'_>,
    leader: Option<&Docker>,
    tasks_before: &[String],
    r: &mut Report,
) {
    let mut tasks_after = Vec::new();
    if leader.is_none() {
        r.unobserved.push("the hello tasks after the fault: no manager named a new leader to ask".into());
    }
    if let Some(e) = leader {
        loop {
            if let Ok(t) = running_tasks(e).await {
                tasks_after = t;
                if tasks_after.len() >= HELLO_REPLICAS {
                    r.workload_s = Some(d.say.event(
                        m.fault_at.elapsed(),
                        format!("workload: {} of {HELLO_REPLICAS} hello tasks running", tasks_after.len()),
                    ));
                    break;
                }
            }
            if Instant::now() > m.deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    r.tasks_after = tasks_after.len();
    r.tasks_rescheduled = tasks_after != tasks_before;
    r.workload_ok = r.workload_s.is_some();
}

/// After the restore: the target back as a `reachable` manager in the leader's node list.
pub(super) async fn rejoin(
    d: &Drill,
    m: &Measure<'_>,
    engines: &HashMap<String, Docker>,
    leader: Option<&Docker>,
    restore_at: Instant,
    deadline: Instant,
    r: &mut Report,
) {
    let Some(leader) = leader else { return };
    let target = m.target;
    // Right after an election the new leader may still list the target as reachable from
    // before the fault: the rejoin counts only once the target's own Engine answers a node
    // list (it is a manager again, talking to the leader) and the leader lists it.
    let target_engine = &engines[target];
    let mut target_back = false;
    loop {
        if !target_back && list_managers(target_engine, m.members).await.is_ok() {
            target_back = true;
            d.say.event(m.fault_at.elapsed(), format!("{target}'s Engine answers a node list again"));
        }
        if let Ok(nodes) = list_managers(leader, m.members).await
            && let Some(n) = nodes.iter().find(|n| n.name == target)
        {
            r.rejoined_as = n.manager_status.clone();
            if target_back && (n.manager_status == "reachable" || n.manager_status == "leader") {
                let at = restore_at.elapsed().as_secs_f64();
                r.rejoin_s = Some(at);
                d.say.event(
                    m.fault_at.elapsed(),
                    format!("rejoin: {target} is back as a {} manager ({at:.2} s after the restore)", n.manager_status),
                );
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
