//! Verifying a cluster with its own views — Swarm's node list from a manager's Engine (over
//! its mutual-TLS port 2376, with the operator certificate `coordinator env` hands to
//! `docker`), Consul's leader and peers — and the seed's smoke test: a hello-world service
//! scheduled by the swarm onto the nodes, its output read back.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    NodeSpecRoleEnum, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec,
    TaskSpecPlacement, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{ListNodesOptions, ListServicesOptionsBuilder, ListTasksOptions, LogsOptions};
use futures::StreamExt;

use crate::poll::{Attempt, PollError, poll_until};

pub const ENGINE_TLS_PORT: u16 = 2376;
/// How often a refused call is retried.
const RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("no manager's Engine answered on :{ENGINE_TLS_PORT} with TLS: {0}")]
    NoManager(String),
    #[error("the swarm is not as planned: {0}")]
    Swarm(String),
    #[error("Consul is not as planned: {0}")]
    Consul(String),
    #[error("smoke test: {0}")]
    Smoke(String),
    /// A manager's Engine did not answer on its TLS port.
    #[error("{ip}: {source}")]
    Engine { ip: String, source: bollard::errors::Error },
    /// A manager's Engine answered, but refused or failed a call.
    #[error("{source}")]
    EngineCall { ip: String, source: bollard::errors::Error },
    /// A failpoint's injected error (a `failpoints` build under test: [`crate::failpoint`]).
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SwarmNode {
    pub hostname: String,
    pub addr: String,
    pub role: String,
    /// leader, reachable, unreachable; empty for workers.
    pub manager_status: String,
    pub ready: bool,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SwarmSummary {
    pub leader: String,
    pub leader_ip: String,
    pub managers: Vec<SwarmNode>,
    pub workers: Vec<SwarmNode>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ConsulSummary {
    pub leader: String,
    pub peers: Vec<String>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SmokeResult {
    pub service: String,
    pub tasks: usize,
    /// Hostnames of the nodes the tasks ran on.
    pub nodes: Vec<String>,
    pub output: Vec<String>,
    pub seconds: f64,
}

impl SmokeResult {
    /// The progress line: `2 task(s) ran on node0, node1; output: "Hello from …"` (no Rust
    /// debug formatting).
    pub fn line(&self) -> String {
        let output = match self.output.first() {
            Some(o) => format!("\"{o}\""),
            None => "none".to_string(),
        };
        format!("{} task(s) ran on {}; output: {output}", self.tasks, self.nodes.join(", "))
    }
}

/// A TLS client for a manager's Engine.
pub async fn engine(ip: &str, cert_dir: &Path) -> Result<Docker, VerifyError> {
    let unreachable = |source| VerifyError::Engine { ip: ip.to_string(), source };
    let d = Docker::connect_with_ssl(
        &format!("tcp://{ip}:{ENGINE_TLS_PORT}"),
        &cert_dir.join("key.pem"),
        &cert_dir.join("cert.pem"),
        &cert_dir.join("ca.pem"),
        20,
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(unreachable)?;
    d.negotiate_version().await.map_err(unreachable)
}

/// The swarm's nodes as a manager sees them; checks the counts and that exactly one
/// leader exists and every node is ready.
pub async fn swarm(
    manager_ips: &[String],
    cert_dir: &Path,
    managers: usize,
    workers: usize,
) -> Result<SwarmSummary, VerifyError> {
    let mut errors = Vec::new();
    for ip in manager_ips {
        let d = match engine(ip, cert_dir).await {
            Ok(d) => d,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let nodes = match d.list_nodes(None::<ListNodesOptions>).await {
            Ok(n) => n,
            Err(e) => {
                errors.push(format!("{ip}: {e}"));
                continue;
            }
        };
        let mut s = SwarmSummary::default();
        for n in nodes {
            let (node, leader_ip) = swarm_node(n);
            if let Some(ip) = leader_ip {
                s.leader = node.hostname.clone();
                s.leader_ip = ip;
            }
            if node.role == "manager" {
                s.managers.push(node);
            } else {
                s.workers.push(node);
            }
        }
        s.managers.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        s.workers.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        let leaders = s.managers.iter().filter(|m| m.manager_status == "leader").count();
        let reachable = s.managers.iter().filter(|m| m.manager_status == "reachable").count();
        let not_ready: Vec<_> =
            s.managers.iter().chain(&s.workers).filter(|n| !n.ready).map(|n| n.hostname.clone()).collect();
        if s.managers.len() != managers
            || s.workers.len() != workers
            || leaders != 1
            || reachable != managers - 1
            || !not_ready.is_empty()
        {
            return Err(VerifyError::Swarm(format!(
                "want {managers} managers (1 leader, {} reachable) and {workers} ready workers; {ip} reports {} managers ({leaders} leader, {reachable} reachable), {} workers, not ready: {not_ready:?}",
                managers - 1,
                s.managers.len(),
                s.workers.len()
            )));
        }
        return Ok(s);
    }
    Err(VerifyError::NoManager(errors.join("; ")))
}

/// One node of a manager's node list as [`SwarmNode`]; with the leader's IP when it leads.
fn swarm_node(n: bollard::models::Node) -> (SwarmNode, Option<String>) {
    let hostname = n.description.and_then(|d| d.hostname).unwrap_or_default();
    let ready = n.status.as_ref().and_then(|s| s.state).is_some_and(|st| st == bollard::models::NodeState::READY);
    let addr = n.status.and_then(|s| s.addr).unwrap_or_default();
    let role = n.spec.and_then(|s| s.role);
    let ms = n.manager_status;
    let manager_status = match &ms {
        Some(m) if m.leader == Some(true) => "leader".to_string(),
        Some(m) => m.reachability.map(|r| r.to_string()).unwrap_or_default(),
        None => String::new(),
    };
    let leader_ip = (manager_status == "leader")
        .then(|| ms.and_then(|m| m.addr).and_then(|a| a.split(':').next().map(str::to_string)).unwrap_or(addr.clone()));
    let role = if role == Some(NodeSpecRoleEnum::MANAGER) { "manager" } else { "worker" };
    (SwarmNode { hostname, addr, role: role.into(), manager_status, ready }, leader_ip)
}

/// Every node of the swarm as the manager `d` lists them.
pub async fn nodes(d: &Docker) -> Result<Vec<SwarmNode>, bollard::errors::Error> {
    Ok(d.list_nodes(None::<ListNodesOptions>).await?.into_iter().map(|n| swarm_node(n).0).collect())
}

/// Removes the departed node `hostname` from the swarm's node list (it must be down or have
/// left; a live node is not forced out). The first manager whose Engine answers decides.
pub async fn forget_node(manager_ips: &[String], cert_dir: &Path, hostname: &str) -> Result<(), VerifyError> {
    let mut last = VerifyError::NoManager("no manager answered".into());
    for ip in manager_ips {
        let d = match engine(ip, cert_dir).await {
            Ok(d) => d,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let call = |source| VerifyError::EngineCall { ip: ip.clone(), source };
        let nodes = d.list_nodes(None::<ListNodesOptions>).await.map_err(call)?;
        for n in nodes {
            if n.description.as_ref().and_then(|d| d.hostname.as_deref()) == Some(hostname)
                && let Some(id) = n.id
            {
                delete_node(&d, &id).await.map_err(call)?;
            }
        }
        return Ok(());
    }
    Err(last)
}

/// Deletes a swarm node; it may still be "ready" for a moment after leaving, so a refusal
/// is retried briefly (30 s) and the last one returned.
async fn delete_node(d: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    let last: RefCell<Option<bollard::errors::Error>> = RefCell::new(None);
    let deleted = poll_until("the node to be removable", Instant::now() + Duration::from_secs(30), RETRY, || {
        let last = &last;
        async move {
            match d.delete_node(id, None::<bollard::query_parameters::DeleteNodeOptions>).await {
                Ok(()) => Ok::<_, Infallible>(Attempt::Done(())),
                Err(e) => {
                    let seen = e.to_string();
                    *last.borrow_mut() = Some(e);
                    Ok(Attempt::NotYet(seen))
                }
            }
        }
    })
    .await;
    match (deleted, last.into_inner()) {
        (Ok(()), _) | (Err(_), None) => Ok(()),
        (Err(_), Some(e)) => Err(e),
    }
}

/// Consul's leader and peers, as its servers report them.
pub async fn consul(ips: &[String], want: usize) -> Result<ConsulSummary, VerifyError> {
    let mut errors = Vec::new();
    for ip in ips {
        let c = flotilla_agent::consul::Consul::new(&format!("{ip}:8500"));
        match (c.leader().await, c.peers().await) {
            (Ok(leader), Ok(peers)) => {
                if leader.is_empty() || peers.len() != want {
                    return Err(VerifyError::Consul(format!(
                        "want {want} servers with a leader; {ip} reports leader '{leader}' and {} peers",
                        peers.len()
                    )));
                }
                return Ok(ConsulSummary { leader, peers });
            }
            (Err(e), _) | (_, Err(e)) => errors.push(e.to_string()),
        }
    }
    Err(VerifyError::Consul(errors.join("; ")))
}

/// Consul's own view as the Consul servers' agents report it in their health (each reads its
/// local Consul over loopback): every server names the same leader and `want` peers. Used
/// where the coordinator may not reach Consul's HTTP port itself (on AWS the security group
/// opens 8500 to the cluster's group only).
pub fn consul_from_agents(
    st: &flotilla_proto::v1::StatusResponse,
    servers: &[String],
    want: usize,
) -> Result<ConsulSummary, VerifyError> {
    let mut summary: Option<ConsulSummary> = None;
    for name in servers {
        let view = st
            .hosts
            .iter()
            .find(|h| &h.name == name)
            .and_then(|h| h.health.as_ref())
            .and_then(|h| h.consul.as_ref())
            .ok_or_else(|| VerifyError::Consul(format!("{name} has not reported Consul's view yet")))?;
        if view.leader.is_empty() || view.peers.len() != want {
            return Err(VerifyError::Consul(format!(
                "want {want} servers with a leader; {name} reports leader '{}' and {} peers",
                view.leader,
                view.peers.len()
            )));
        }
        match &summary {
            Some(s) if s.leader != view.leader => {
                return Err(VerifyError::Consul(format!(
                    "servers disagree on the leader: '{}' and '{}' ({name})",
                    s.leader, view.leader
                )));
            }
            Some(_) => {}
            None => {
                summary = Some(ConsulSummary { leader: view.leader.clone(), peers: view.peers.clone() });
            }
        }
    }
    summary.ok_or_else(|| VerifyError::Consul("no Consul server in the plan".into()))
}

/// How long swarmkit waits before starting a long-running task again — also one whose node
/// went down (issue 19; its default, 5 s, is half the 10 s budget for moving a dead
/// worker's tasks). Shorter means a crash-looping task restarts more often.
pub const RESTART_DELAY: Duration = Duration::from_secs(1);

/// A replicated service of `replicas` tasks placed on the swarm's workers, labelled `label`;
/// `one_shot` tasks are not restarted when they exit, the others after [`RESTART_DELAY`].
/// The smoke test's and the failover drill's workloads.
pub fn worker_service(
    name: &str,
    label: (&str, &str),
    image: &str,
    command: Option<Vec<String>>,
    replicas: usize,
    one_shot: bool,
) -> ServiceSpec {
    ServiceSpec {
        name: Some(name.to_string()),
        labels: Some(HashMap::from([(label.0.to_string(), label.1.to_string())])),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(image.to_string()),
                command,
                ..Default::default()
            }),
            restart_policy: Some(if one_shot {
                TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                    ..Default::default()
                }
            } else {
                TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                    delay: Some(RESTART_DELAY.as_nanos() as i64),
                    ..Default::default()
                }
            }),
            placement: Some(TaskSpecPlacement {
                constraints: Some(vec!["node.role==worker".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(replicas as i64) }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The seed's "docker run hello-world", as a swarm service: `replicas` one-shot tasks on
/// the workers; waits for them to complete, reads their output through the swarm's service
/// logs, removes the service.
pub async fn smoke(leader_ip: &str, cert_dir: &Path, image: &str, replicas: usize) -> Result<SmokeResult, VerifyError> {
    let started = Instant::now();
    let d = engine(leader_ip, cert_dir).await.map_err(|e| VerifyError::Smoke(e.to_string()))?;
    let suffix: u32 = rand::random::<u32>() % 100_000;
    let name = format!("flotilla-hello-{suffix}");
    let spec = worker_service(&name, ("flotilla.smoke", "1"), image, None, replicas, true);
    let created =
        d.create_service(spec, None).await.map_err(|e| VerifyError::Smoke(format!("creating the service: {e}")))?;
    let id = created.id.unwrap_or_else(|| name.clone());
    crate::failpoint!("smoke.service.after");
    let result = run_smoke(&d, &id, &name, replicas, started).await;
    let _ = d.delete_service(&id).await;
    result
}

/// Removes the smoke-test services an interrupted run left (labelled `flotilla.smoke`: a
/// smoke test removes its own service when it ends); how many.
pub async fn remove_leftover_smoke(leader_ip: &str, cert_dir: &Path) -> Result<usize, VerifyError> {
    let d = engine(leader_ip, cert_dir).await.map_err(|e| VerifyError::Smoke(e.to_string()))?;
    let filters = HashMap::from([("label".to_string(), vec!["flotilla.smoke=1".to_string()])]);
    let call = |e: bollard::errors::Error| VerifyError::EngineCall { ip: leader_ip.to_string(), source: e };
    let left =
        d.list_services(Some(ListServicesOptionsBuilder::new().filters(&filters).build())).await.map_err(call)?;
    for s in &left {
        d.delete_service(s.id.as_deref().unwrap_or_default()).await.map_err(call)?;
    }
    Ok(left.len())
}

async fn run_smoke(
    d: &Docker,
    id: &str,
    name: &str,
    replicas: usize,
    started: Instant,
) -> Result<SmokeResult, VerifyError> {
    let node_names: HashMap<String, String> = d
        .list_nodes(None::<ListNodesOptions>)
        .await
        .map_err(|e| VerifyError::Smoke(e.to_string()))?
        .into_iter()
        .filter_map(|n| Some((n.id?, n.description?.hostname?)))
        .collect();
    let tasks = smoke_tasks(d, name, replicas).await?;
    let mut nodes: Vec<String> = tasks
        .iter()
        .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::COMPLETE))
        .filter_map(|t| t.node_id.as_ref().and_then(|n| node_names.get(n).cloned()))
        .collect();
    nodes.sort();
    let output = smoke_output(d, id, replicas).await;
    if output.is_empty() {
        return Err(VerifyError::Smoke("the hello tasks completed but their output did not come back".into()));
    }
    Ok(SmokeResult {
        service: name.to_string(),
        tasks: nodes.len(),
        nodes,
        output,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Waits (120 s) until `replicas` tasks of the service completed; a failed or rejected task
/// ends the wait at once.
async fn smoke_tasks(d: &Docker, name: &str, replicas: usize) -> Result<Vec<bollard::models::Task>, VerifyError> {
    let every = Duration::from_millis(100);
    let waited = poll_until("the hello tasks", Instant::now() + Duration::from_secs(120), every, || async move {
        let tasks = d
            .list_tasks(Some(ListTasksOptions {
                filters: Some(HashMap::from([("service".to_string(), vec![name.to_string()])])),
            }))
            .await
            .map_err(|e| VerifyError::Smoke(e.to_string()))?;
        let done =
            tasks.iter().filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::COMPLETE)).count();
        if let Some(failed) = tasks
            .iter()
            .find(|t| matches!(t.status.as_ref().and_then(|s| s.state), Some(TaskState::FAILED | TaskState::REJECTED)))
        {
            let msg = failed.status.as_ref().and_then(|s| s.err.clone().or(s.message.clone())).unwrap_or_default();
            return Err(VerifyError::Smoke(format!("a hello task failed: {msg}")));
        }
        Ok(if done >= replicas {
            Attempt::Done(tasks)
        } else {
            Attempt::NotYet(format!("{done} of {replicas} hello tasks completed"))
        })
    })
    .await;
    waited.map_err(|e| match e {
        PollError::Failed(e) => e,
        PollError::TimedOut { last, .. } => VerifyError::Smoke(format!("{last} within 120 s")),
    })
}

/// The tasks' output through the swarm's service logs (from the workers' Engines): read
/// again (30 s at most) until every replica's line is there; what came back by then.
async fn smoke_output(d: &Docker, id: &str, replicas: usize) -> Vec<String> {
    let last: RefCell<Vec<String>> = RefCell::new(Vec::new());
    let every = Duration::from_millis(100);
    // A time-out is no error here: what came back by then is the answer.
    let _ = poll_until("the hello output", Instant::now() + Duration::from_secs(30), every, || {
        let last = &last;
        async move {
            let mut output = Vec::new();
            let mut s = d.service_logs(id, Some(LogsOptions { stdout: true, stderr: true, ..Default::default() }));
            while let Some(Ok(line)) = s.next().await {
                let l = line.to_string().trim().to_string();
                if !l.is_empty() {
                    output.push(l);
                }
            }
            let seen = format!("{} of {replicas} lines", output.len());
            let complete = output.len() >= replicas;
            *last.borrow_mut() = output;
            Ok::<_, Infallible>(if complete { Attempt::Done(()) } else { Attempt::NotYet(seen) })
        }
    })
    .await;
    last.into_inner()
}

/// The variables [`docker_env`] sets (`coordinator env --unset` unsets them).
pub const DOCKER_ENV_VARS: [&str; 3] = ["DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"];

/// Docker Machine's convention: what to export so the plain `docker` CLI talks to the
/// cluster's leader with the operator certificate.
pub fn docker_env(leader_ip: &str, cert_dir: &Path) -> Vec<(String, String)> {
    let [host, verify, certs] = DOCKER_ENV_VARS.map(String::from);
    vec![
        (host, format!("tcp://{leader_ip}:{ENGINE_TLS_PORT}")),
        (verify, "1".into()),
        (certs, cert_dir.display().to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::SmokeResult;

    #[test]
    fn the_smoke_line_reads_as_text_not_as_rust_debug_output() {
        let r = SmokeResult {
            tasks: 2,
            nodes: vec!["node0".into(), "node1".into()],
            output: vec!["Hello from flotilla/lab-hello on 5df517cc1f25".into()],
            ..Default::default()
        };
        assert_eq!(
            r.line(),
            "2 task(s) ran on node0, node1; output: \"Hello from flotilla/lab-hello on 5df517cc1f25\""
        );
        let none = SmokeResult { tasks: 1, nodes: vec!["node0".into()], ..Default::default() };
        assert_eq!(none.line(), "1 task(s) ran on node0; output: none");
    }
}
