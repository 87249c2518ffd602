//! The Swarm side of the drill: the managers' Engines (over mutual TLS, port 2376), probed
//! every [`PROBE_INTERVAL`](super::PROBE_INTERVAL): the target's ping, the survivors' node
//! lists (who leads); the hello service's tasks; the target listed `reachable` again.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{NodeSpecRoleEnum, TaskState};
use bollard::query_parameters::{ListNodesOptions, ListTasksOptions};
use tokio::sync::mpsc;

use super::probe::{self, Sighting};
use super::report::Say;
use super::{
    CALL_TIMEOUT, Drill, FailoverError, HELLO_REPLICAS, HELLO_SERVICE, Measure, Member, PING_TIMEOUT, Report,
    WORKLOAD_TIMEOUT, lock,
};
use crate::ops::verify;
use crate::poll::{Attempt, poll_until};

/// Why a call to a manager's Engine gave nothing.
#[derive(Debug, thiserror::Error)]
pub(super) enum EngineCallError {
    /// The Engine's own message.
    #[error("{}", flotilla_agent::roles::engine_message(.0))]
    Engine(#[from] bollard::errors::Error),
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
}

/// Why the hello service could not be removed.
#[derive(Debug, thiserror::Error)]
pub(super) enum RemoveHelloError {
    #[error("no manager's Engine is known")]
    NoEngine,
    /// The last manager tried, and what its Engine said.
    #[error("{host}: {error}")]
    Engine { host: String, error: EngineCallError },
}

/// A call to an Engine, bounded by `bound`.
async fn bounded<T>(
    bound: Duration,
    call: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, EngineCallError> {
    Ok(tokio::time::timeout(bound, call).await.map_err(|_| EngineCallError::NoAnswer(bound))??)
}

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

pub(super) async fn list_managers(d: &Docker, managers: &[Member]) -> Result<Vec<NodeView>, EngineCallError> {
    Ok(node_views(bounded(CALL_TIMEOUT, d.list_nodes(None::<ListNodesOptions>)).await?, managers))
}

/// The managers the leader counts in its Raft: listed `leader` or `reachable`.
fn voting(nodes: &[NodeView]) -> usize {
    nodes.iter().filter(|n| n.manager_status == "leader" || n.manager_status == "reachable").count()
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
pub(super) async fn running_tasks(d: &Docker) -> Result<Vec<String>, EngineCallError> {
    let tasks = bounded(
        CALL_TIMEOUT,
        d.list_tasks(Some(ListTasksOptions {
            filters: Some(HashMap::from([
                ("service".to_string(), vec![HELLO_SERVICE.to_string()]),
                ("desired-state".to_string(), vec!["running".to_string()]),
            ])),
        })),
    )
    .await?;
    let mut ids: Vec<String> = tasks
        .into_iter()
        .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
        .filter_map(|t| t.id)
        .collect();
    ids.sort();
    Ok(ids)
}

/// Creates the hello service (or keeps the one a previous drill left) and waits (up to
/// [`WORKLOAD_TIMEOUT`], looking every 300 ms) until its replicas run.
pub(super) async fn ensure_hello(leader: &Docker, image: &str) -> Result<Vec<String>, FailoverError> {
    if leader.inspect_service(HELLO_SERVICE, None).await.is_err() {
        let spec = verify::worker_service(
            HELLO_SERVICE,
            ("flotilla.drill", "1"),
            image,
            Some(vec!["sh".into(), "-c".into(), "while true; do sleep 1; done".into()]),
            HELLO_REPLICAS,
            false,
        );
        leader.create_service(spec, None).await.map_err(FailoverError::CreateHello)?;
    }
    let running = &AtomicUsize::new(0);
    let deadline = Instant::now() + WORKLOAD_TIMEOUT;
    poll_until("the hello service's replicas", deadline, Duration::from_millis(300), move || async move {
        let tasks = running_tasks(leader).await.unwrap_or_default();
        running.store(tasks.len(), Ordering::Relaxed);
        Ok::<_, Infallible>(if tasks.len() >= HELLO_REPLICAS {
            Attempt::Done(tasks)
        } else {
            Attempt::NotYet(format!("{} of {HELLO_REPLICAS} running", tasks.len()))
        })
    })
    .await
    .map_err(|_| FailoverError::HelloNotRunning { running: running.load(Ordering::Relaxed), after: WORKLOAD_TIMEOUT })
}

/// Removes the hello service through the first manager whose Engine can (the swarm needs a
/// leader for that: retried every 500 ms until `deadline`). `Ok(false)`: there was none.
pub(super) async fn remove_hello(engines: &[(String, Docker)], deadline: Instant) -> Result<bool, RemoveHelloError> {
    if engines.is_empty() {
        return Err(RemoveHelloError::NoEngine);
    }
    let last = &Mutex::new(None);
    let removed = poll_until("the hello service removed", deadline, Duration::from_millis(500), move || async move {
        for (name, e) in engines {
            match bounded(CALL_TIMEOUT * 5, e.delete_service(HELLO_SERVICE)).await {
                Ok(()) => return Ok(Attempt::Done(true)),
                Err(EngineCallError::Engine(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    ..
                })) => return Ok(Attempt::Done(false)),
                Err(error) => *lock(last) = Some(RemoveHelloError::Engine { host: name.clone(), error }),
            }
        }
        let seen = lock(last).as_ref().map(ToString::to_string).unwrap_or_default();
        Ok::<_, Infallible>(Attempt::NotYet(seen))
    })
    .await;
    removed.map_err(|_| lock(last).take().unwrap_or(RemoveHelloError::NoEngine))
}

/// What a probe saw.
enum Seen {
    /// The target's Engine answered a ping (or did not).
    Ping(bool),
    /// A surviving manager's node list.
    Nodes { from: String, nodes: Result<Vec<NodeView>, EngineCallError> },
}

/// Probes until the loss is detected and the leader's API answers (or the deadline):
/// `detect_s`, `elect_s`, `api_back_s`. Returns the leader after the fault.
pub(super) async fn measure(
    d: &Drill,
    m: &Measure<'_>,
    engines: &HashMap<String, Docker>,
    r: &mut Report,
) -> Option<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    let _probing = probe::every_interval(probe_round(m, engines, tx));
    let mut new_leader = None;
    // The last time a node list still named the old leader, after the fault.
    let mut last_old: Option<Duration> = None;
    probe::collect("the swarm's failover measured", m.deadline, rx, |at, seen| {
        if let Seen::Nodes { nodes: Ok(nodes), .. } = &seen
            && new_leader.is_none()
            && leader_of(nodes).as_deref() == Some(m.old_leader)
        {
            last_old = Some(at);
        }
        take(&d.say, m, r, &mut new_leader, at, seen);
        r.detect_s.is_some() && r.api_back_s.is_some()
    })
    .await;
    if m.target_is_leader {
        // A planned demotion went through the old leader's Raft: it still led when the swarm
        // accepted it.
        let accepted = d.opts.mode.planned().then_some(r.detect_s).flatten().map(Duration::from_secs_f64);
        r.leaderless_s = leaderless(r.elect_s, last_old.max(accepted));
    }
    new_leader
}

/// Seconds no manager named a leader: from the last time the old one was seen leading (or
/// the fault, when it was not seen after it) to the first node list naming the new one.
fn leaderless(elect_s: Option<f64>, last_old: Option<Duration>) -> Option<f64> {
    elect_s.map(|e| (e - last_old.map(|t| t.as_secs_f64()).unwrap_or(0.0)).max(0.0))
}

/// One round of probes, each its own task: the target's ping, every survivor's node list.
fn probe_round(
    m: &Measure<'_>,
    engines: &HashMap<String, Docker>,
    tx: mpsc::UnboundedSender<Sighting<Seen>>,
) -> impl FnMut() + Send + 'static {
    let fault_at = m.fault_at;
    let survivors: Vec<(Member, Docker)> =
        m.members.iter().filter(|x| x.name != m.target).map(|x| (x.clone(), engines[&x.name].clone())).collect();
    let target_engine = engines[m.target].clone();
    let managers = m.members.to_vec();
    move || {
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
}

/// What one sighting at `at` tells: the loss detected (the target's first failed ping), the
/// leader after the fault (a survivor's node list names it), its API back (it answers).
fn take(say: &Say, m: &Measure<'_>, r: &mut Report, new_leader: &mut Option<String>, at: Duration, seen: Seen) {
    let target = m.target;
    match seen {
        Seen::Ping(false) if r.detect_s.is_none() => {
            r.detect_s = Some(say.event(
                at,
                format!("detect: {target}'s Engine stopped answering ({}:{})", m.target_ip, verify::ENGINE_TLS_PORT),
            ));
        }
        Seen::Ping(_) => {}
        Seen::Nodes { from, nodes: Ok(nodes) } => {
            let leader = leader_of(&nodes);
            if new_leader.is_none()
                && let Some(l) = &leader
                && (l != m.old_leader || (!m.target_is_leader && r.detect_s.is_some()))
            {
                *new_leader = Some(l.clone());
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
    }
}

/// The hello service's tasks through the new leader: all replicas running again (looked at
/// every 200 ms until the measure's deadline).
pub(super) async fn workload(
    d: &Drill,
    m: &Measure<'_>,
    leader: Option<&Docker>,
    tasks_before: &[String],
    r: &mut Report,
) {
    let mut tasks_after = Vec::new();
    match leader {
        None => r.unobserved.push("the hello tasks after the fault: no manager named a new leader to ask".into()),
        Some(e) => {
            let last = &Mutex::new(Vec::new());
            let whole =
                poll_until("the hello tasks running", m.deadline, Duration::from_millis(200), move || async move {
                    if let Ok(t) = running_tasks(e).await {
                        let n = t.len();
                        *lock(last) = t;
                        if n >= HELLO_REPLICAS {
                            return Ok(Attempt::Done(n));
                        }
                    }
                    Ok::<_, Infallible>(Attempt::NotYet(format!("{} of {HELLO_REPLICAS} running", lock(last).len())))
                })
                .await;
            tasks_after = std::mem::take(&mut *lock(last));
            if let Ok(n) = whole {
                r.workload_s = Some(
                    d.say.event(m.fault_at.elapsed(), format!("workload: {n} of {HELLO_REPLICAS} hello tasks running")),
                );
            }
        }
    }
    r.tasks_after = tasks_after.len();
    r.tasks_rescheduled = tasks_after != tasks_before;
    r.workload_ok = r.workload_s.is_some();
}

/// After the restore: the target back as a `reachable` manager in the leader's node list
/// (`rejoin_s`, `rejoined_as`), looked at every 200 ms until `deadline`.
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
    let (target_back, listed_as) = (&AtomicBool::new(false), &Mutex::new(None::<String>));
    let managers = &AtomicUsize::new(0);
    let back = poll_until("the target rejoined", deadline, Duration::from_millis(200), move || async move {
        if !target_back.load(Ordering::Relaxed) && list_managers(target_engine, m.members).await.is_ok() {
            target_back.store(true, Ordering::Relaxed);
            d.say.event(m.fault_at.elapsed(), format!("{target}'s Engine answers a node list again"));
        }
        let nodes = list_managers(leader, m.members).await.ok();
        if let Some(nodes) = &nodes {
            managers.store(voting(nodes), Ordering::Relaxed);
        }
        let listed = nodes.and_then(|nodes| nodes.into_iter().find(|n| n.name == target));
        let Some(status) = listed.map(|n| n.manager_status) else {
            return Ok(Attempt::NotYet(format!("{target} not listed by the leader")));
        };
        *lock(listed_as) = Some(status.clone());
        let rejoined = target_back.load(Ordering::Relaxed) && (status == "reachable" || status == "leader");
        Ok::<_, Infallible>(if rejoined { Attempt::Done(status) } else { Attempt::NotYet(status) })
    })
    .await;
    if let Some(status) = lock(listed_as).take() {
        r.rejoined_as = status;
    }
    r.managers_after = Some(managers.load(Ordering::Relaxed));
    if let Ok(status) = back {
        let at = restore_at.elapsed().as_secs_f64();
        r.rejoin_s = Some(at);
        d.say.event(
            m.fault_at.elapsed(),
            format!("rejoin: {target} is back as a {status} manager ({at:.2} s after the restore)"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, status: &str) -> NodeView {
        NodeView { name: name.into(), manager_status: status.into() }
    }

    #[test]
    fn issue_19_seconds_without_a_leader_count_from_the_last_sighting_of_the_old_one() {
        assert_eq!(leaderless(Some(1.5), Some(Duration::from_millis(1200))), Some(1.5 - 1.2));
        assert_eq!(leaderless(Some(11.0), None), Some(11.0), "never seen after the fault: from the fault");
        assert_eq!(leaderless(None, Some(Duration::from_secs(1))), None, "no new leader: nothing measured");
    }

    #[test]
    fn issue_19_the_managers_counted_are_the_leader_and_the_reachable_ones() {
        let nodes = [view("manager0", "leader"), view("manager1", "reachable"), view("manager2", "unreachable")];
        assert_eq!(voting(&nodes), 2);
        assert_eq!(leader_of(&nodes).as_deref(), Some("manager0"));
    }
}
