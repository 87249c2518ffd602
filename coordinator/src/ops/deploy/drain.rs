//! A worker leaving the swarm (scale-down, `upgrade --image`): drained through a manager, then
//! waited for until the tasks it ran run elsewhere. The tasks are polled — the drain call
//! returns before anything moved (moby#33220) — so the host leaves only once every replicated
//! service it ran has as many running tasks on other nodes as it had in all before the drain.
//! Global services are not counted (they run everywhere, so nowhere else).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{NodeSpecAvailabilityEnum, Task, TaskState};
use bollard::query_parameters::{ListNodesOptions, ListServicesOptions, ListTasksOptions, UpdateNodeOptions};

use super::DeployError;
use crate::ops::verify;
use crate::poll::{Attempt, PollError, poll_until};

/// How long a drained worker's tasks get to run elsewhere.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

/// What the drain moved: services and their running-task count before it.
#[derive(Debug, Default)]
pub struct Drained {
    pub moved: HashMap<String, usize>,
}

/// Drains worker `host` through the first manager of `manager_ips` that answers and waits
/// until its tasks run elsewhere. A host the swarm does not list (or no manager answering)
/// has nothing to move.
pub async fn drain_and_wait(manager_ips: &[String], cert_dir: &Path, host: &str) -> Result<Drained, DeployError> {
    let Some(d) = a_manager(manager_ips, cert_dir).await else { return Ok(Drained::default()) };
    let call = |e: bollard::errors::Error| DeployError::NotDrained {
        host: host.to_string(),
        after: Duration::ZERO,
        last: format!("a manager's Engine: {e}"),
    };
    let nodes = d.list_nodes(None::<ListNodesOptions>).await.map_err(call)?;
    let Some(node) = crate::ops::handover::node_of(&nodes, host, None) else {
        return Ok(Drained::default());
    };
    let id = node.id.clone().unwrap_or_default();
    let global = global_services(&d).await.map_err(call)?;
    let before = running(&d).await.map_err(call)?;
    let moved: HashMap<String, usize> = before
        .iter()
        .filter(|t| t.node_id.as_deref() == Some(id.as_str()))
        .filter_map(|t| t.service_id.clone())
        .filter(|s| !global.contains(s))
        .map(|s| {
            let total = before.iter().filter(|t| t.service_id.as_ref() == Some(&s)).count();
            (s, total)
        })
        .collect();
    let mut spec = node.spec.clone().unwrap_or_default();
    if spec.availability != Some(NodeSpecAvailabilityEnum::DRAIN) {
        spec.availability = Some(NodeSpecAvailabilityEnum::DRAIN);
        let version = node.version.as_ref().and_then(|v| v.index).unwrap_or_default();
        d.update_node(&id, spec, UpdateNodeOptions { version: version as i64 }).await.map_err(call)?;
        crate::failpoint!("drain.update.after");
    }
    let waited = poll_until(
        "the drained tasks to run elsewhere",
        Instant::now() + DRAIN_TIMEOUT,
        Duration::from_millis(500),
        || {
            let (d, id, moved) = (&d, &id, &moved);
            async move {
                let now = match running(d).await {
                    Ok(t) => t,
                    Err(e) => return Ok::<_, DeployError>(Attempt::NotYet(e.to_string())),
                };
                Ok(match short(&now, id, moved) {
                    None => Attempt::Done(()),
                    Some(why) => Attempt::NotYet(why),
                })
            }
        },
    )
    .await;
    waited.map_err(|e| match e {
        PollError::Failed(e) => e,
        PollError::TimedOut { last, after, .. } => DeployError::NotDrained { host: host.to_string(), after, last },
    })?;
    Ok(Drained { moved })
}

/// What is still short (pure): a task still meant to run on node `id`, or a service with
/// fewer running tasks on other nodes than `moved` says it had.
pub fn short(tasks: &[Task], id: &str, moved: &HashMap<String, usize>) -> Option<String> {
    if tasks.iter().any(|t| t.node_id.as_deref() == Some(id) && !moved_off(t)) {
        let n = tasks.iter().filter(|t| t.node_id.as_deref() == Some(id)).count();
        return Some(format!("{n} task(s) still run on the drained node"));
    }
    let mut short: Vec<String> = moved
        .iter()
        .filter_map(|(s, want)| {
            let elsewhere = tasks
                .iter()
                .filter(|t| t.service_id.as_ref() == Some(s) && t.node_id.as_deref() != Some(id))
                .filter(|t| t.status.as_ref().and_then(|x| x.state) == Some(TaskState::RUNNING))
                .count();
            (elsewhere < *want).then(|| format!("service {s}: {elsewhere} of {want} running elsewhere"))
        })
        .collect();
    short.sort();
    (!short.is_empty()).then(|| short.join("; "))
}

/// A task on the drained node whose desired state is no longer running (being stopped).
fn moved_off(t: &Task) -> bool {
    t.desired_state.is_some_and(|s| s != TaskState::RUNNING)
}

/// Every task meant to run (desired state running).
async fn running(d: &Docker) -> Result<Vec<Task>, bollard::errors::Error> {
    let filters = HashMap::from([("desired-state".to_string(), vec!["running".to_string()])]);
    let tasks = d.list_tasks(Some(ListTasksOptions { filters: Some(filters) })).await?;
    Ok(tasks
        .into_iter()
        .filter(|t| {
            t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)
                || t.desired_state == Some(TaskState::RUNNING)
        })
        .collect())
}

async fn global_services(d: &Docker) -> Result<Vec<String>, bollard::errors::Error> {
    let services = d.list_services(None::<ListServicesOptions>).await?;
    Ok(services
        .into_iter()
        .filter(|s| s.spec.as_ref().and_then(|x| x.mode.as_ref()).is_some_and(|m| m.global.is_some()))
        .filter_map(|s| s.id)
        .collect())
}

async fn a_manager(manager_ips: &[String], cert_dir: &Path) -> Option<Docker> {
    for ip in manager_ips {
        if let Ok(d) = verify::engine(ip, cert_dir).await {
            return Some(d);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::TaskStatus;

    fn task(service: &str, node: &str, state: TaskState, desired: TaskState) -> Task {
        Task {
            service_id: Some(service.into()),
            node_id: Some(node.into()),
            desired_state: Some(desired),
            status: Some(TaskStatus { state: Some(state), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_drain_is_done_only_when_the_moved_tasks_run_on_other_nodes() {
        use TaskState::{RUNNING, SHUTDOWN, STARTING};
        let moved = HashMap::from([("web".to_string(), 2)]);
        // Right after the drain call: the task still runs on the drained node.
        let t0 = [task("web", "old", RUNNING, RUNNING), task("web", "b", RUNNING, RUNNING)];
        assert!(short(&t0, "old", &moved).expect("not yet").contains("still run on the drained node"));
        // Being stopped there, its replacement only starting: still short.
        let t1 = [
            task("web", "old", RUNNING, SHUTDOWN),
            task("web", "b", RUNNING, RUNNING),
            task("web", "c", STARTING, RUNNING),
        ];
        assert_eq!(short(&t1, "old", &moved).as_deref(), Some("service web: 1 of 2 running elsewhere"));
        let t2 = [task("web", "b", RUNNING, RUNNING), task("web", "c", RUNNING, RUNNING)];
        assert_eq!(short(&t2, "old", &moved), None);
    }
}
