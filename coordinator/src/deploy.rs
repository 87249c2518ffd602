//! `coordinator deploy`: from nothing (or from whatever exists) to a verified cluster.
//!
//! 1. Validate the config, print the plan.
//! 2. The provider's network (lab: images, network, registry preloaded with role images).
//! 3. The control plane: started in the background if none runs (it holds the PKI).
//! 4. Hosts: found by label; only missing ones are launched (in parallel), each with its own
//!    user-data and a fresh one-time token. Hosts no longer in the plan are drained,
//!    demoted, removed from the swarm and terminated — managers one at a time.
//! 5. Wait for every agent to enroll and connect.
//! 6. Assign roles in dependency order — Consul, the first manager, the other managers,
//!    the nodes; agents wait on their dependencies through Consul — and wait for every
//!    role to run.
//! 7. Verify with Swarm's and Consul's own views; run the smoke test; report.
//!
//! Every step is idempotent: the provider's labels and the control plane's store are the
//! record, so a deploy interrupted anywhere completes on the next run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_proto::v1::{self, admin_client::AdminClient};
use tonic::transport::Channel;

use crate::cluster::{ClusterConfig, ProviderKind};
use crate::config::StatePaths;
use crate::plan::{self, PlannedHost, RoleKind};
use crate::providers::lab::{self, Lab};
use crate::providers::{HostState, LaunchSpec};
use crate::verify;

/// How long hosts get to boot and enroll.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long each role phase gets to converge.
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(240);

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Config(#[from] crate::cluster::ConfigError),
    #[error("the {0} provider is not available in this build yet; use provider = \"lab\"")]
    ProviderUnavailable(&'static str),
    #[error("the local Docker Engine does not answer ({0}); the lab needs it: start dockerd and retry")]
    NoEngine(String),
    #[error(transparent)]
    Lab(#[from] lab::LabError),
    #[error("control plane: {0}")]
    ControlPlane(String),
    #[error("{0}")]
    Rpc(#[from] tonic::Status),
    #[error("user-data for {host}: {source}")]
    UserData {
        host: String,
        source: flotilla_cloud_init::Error,
    },
    #[error("timed out after {after:?} waiting for {what}; hosts still pending: {pending}. `coordinator status` shows what exists; re-run `coordinator deploy` to continue")]
    Timeout {
        what: String,
        after: Duration,
        pending: String,
    },
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
}

/// Where progress goes. On a terminal: a live line per host (indicatif) with its latest
/// state, and events above them; otherwise (CI, pipes, `--output json`'s stderr) one plain
/// line per event, prefixed with the elapsed time and the host.
pub struct Progress {
    start: Instant,
    quiet: bool,
    live: Option<(indicatif::MultiProgress, std::sync::Mutex<HashMap<String, indicatif::ProgressBar>>)>,
}

/// Names of progress lines that are steps of the deploy, not hosts.
const STEPS: [&str; 10] = ["plan", "lab", "control", "hosts", "wait", "verify", "smoke", "deploy", "scale", "bake"];

impl Progress {
    pub fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        let live = (!quiet && std::io::stderr().is_terminal()).then(|| {
            (
                indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr()),
                std::sync::Mutex::new(HashMap::new()),
            )
        });
        Self {
            start: Instant::now(),
            quiet,
            live,
        }
    }

    pub fn say(&self, host: &str, msg: impl AsRef<str>) {
        if self.quiet {
            return;
        }
        let line = format!("[{:>5.1}s] {:<10} {}", self.start.elapsed().as_secs_f64(), host, msg.as_ref());
        match &self.live {
            Some((mp, bars)) if !STEPS.contains(&host) => {
                let mut bars = bars.lock().unwrap_or_else(|p| p.into_inner());
                let bar = bars.entry(host.to_string()).or_insert_with(|| {
                    let b = mp.add(indicatif::ProgressBar::new_spinner());
                    b.set_style(
                        indicatif::ProgressStyle::with_template("{spinner} {prefix:<10} [{elapsed:>4}] {wide_msg}")
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                    );
                    b.set_prefix(host.to_string());
                    b.enable_steady_tick(Duration::from_millis(120));
                    b
                });
                bar.set_message(msg.as_ref().to_string());
            }
            Some((mp, _)) => {
                let _ = mp.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Stops the live lines (they stay on screen with their last state).
    pub fn finish(&self) {
        if let Some((_, bars)) = &self.live {
            for b in bars.lock().unwrap_or_else(|p| p.into_inner()).values() {
                b.finish();
            }
        }
    }
}

/// The final report (`--output json` prints it).
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub cluster: String,
    pub provider: String,
    pub changed: bool,
    pub launched: Vec<String>,
    pub removed: Vec<String>,
    pub hosts: Vec<ReportHost>,
    pub swarm: verify::SwarmSummary,
    pub consul: verify::ConsulSummary,
    pub smoke_test: Option<verify::SmokeResult>,
    pub docker_env: Vec<(String, String)>,
    pub duration_s: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct ReportHost {
    pub name: String,
    pub roles: Vec<String>,
    pub address: String,
    pub instance_id: String,
}

pub struct DeployOptions {
    pub config: ClusterConfig,
    pub origin: String,
    pub state_root: PathBuf,
    pub quiet: bool,
    /// Run the smoke test even when nothing changed.
    pub force_smoke: bool,
}

pub async fn deploy(opts: DeployOptions) -> Result<Report, DeployError> {
    let c = &opts.config;
    c.validate(&opts.origin)?;
    if c.provider == ProviderKind::Aws {
        return Err(DeployError::ProviderUnavailable("aws"));
    }
    let p = Progress::new(opts.quiet);
    let planned = plan::plan(c);
    p.say("plan", format!("cluster '{}' on the {} provider:", c.name, "lab"));
    for h in &planned {
        let roles: Vec<_> = h.roles.iter().map(|r| r.name()).collect();
        p.say("plan", format!("  {:<10} {}", h.name, roles.join(" + ")));
    }
    let state_dir = opts.state_root.join(&c.name);
    let paths = StatePaths::new(&state_dir);
    flotilla_proto::fs::private_dir(&state_dir).map_err(|e| DeployError::ControlPlane(format!("{}: {e}", state_dir.display())))?;

    // 2. The lab: images, network, registry.
    let docker = bollard::Docker::connect_with_defaults().map_err(|e| DeployError::NoEngine(e.to_string()))?;
    let docker = docker.negotiate_version().await.map_err(|e| DeployError::NoEngine(e.to_string()))?;
    p.say("lab", "lab images (built once per recipe; a no-op when present)");
    let images = lab::images::ensure(opts.quiet).await.map_err(lab::LabError::from)?;
    let lab = Lab::new(docker.clone(), &c.name, &state_dir, images);
    if !c.images.host.is_empty() {
        lab.require_image(&c.images.host, "images.host in flotilla.toml, or --image").await?;
        p.say("lab", format!("hosts boot from {}", c.images.host));
    }
    let (network, refs) = lab
        .ensure(&[
            (&lab.images.consul, "flotilla/consul:1.8.7"),
            (&lab.images.hello, "flotilla/hello:1"),
        ])
        .await?;
    let consul_image = if c.images.consul.is_empty() { refs[0].clone() } else { c.images.consul.clone() };
    let hello_image = if c.images.hello.is_empty() { refs[1].clone() } else { c.images.hello.clone() };
    let gateway = network
        .coordinator_ip
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    p.say("lab", format!("network {} (coordinator at {gateway}, registry {})", lab.network_name(), network.registry.clone().unwrap_or_default()));

    // 3. The control plane.
    let mut admin = ensure_control_plane(&c.name, &opts.state_root, &paths, &gateway, c.coordinator.port, &p).await?;
    let st = admin.status(v1::StatusRequest {}).await?.into_inner();
    let ca_pem = std::fs::read_to_string(paths.ca_pem()).map_err(|e| DeployError::ControlPlane(format!("{}: {e}", paths.ca_pem().display())))?;

    // 4. Hosts.
    let existing = lab.describe().await?;
    let mut launched = Vec::new();
    let mut started_any = false;
    let mut launches = Vec::new();
    for h in &planned {
        match existing.iter().find(|e| e.name == h.name) {
            Some(e) if e.state == HostState::Running => {}
            Some(e) if e.state == HostState::Stopped => {
                p.say(&h.name, "starting the stopped host");
                started_any = true;
                lab.start(&h.name).await?;
            }
            _ => {
                let token = admin
                    .create_token(v1::CreateTokenRequest {
                        host_name: h.name.clone(),
                        ttl_s: 0,
                    })
                    .await?
                    .into_inner()
                    .token;
                let inputs = flotilla_cloud_init::HostInputs {
                    cluster: c.name.clone(),
                    host_name: h.name.clone(),
                    coordinator: vec![st.agent_endpoint.clone()],
                    ca_pem: ca_pem.clone(),
                    join_token: Some(token),
                    agent: flotilla_cloud_init::AgentBinary {
                        url: format!("https://{}{}", st.agent_endpoint, crate::agent_binary::PATH),
                        sha256: st.agent_binary_sha256.clone(),
                        version: st.agent_version.clone(),
                    },
                    engine: flotilla_cloud_init::Engine::Preinstalled,
                    insecure_registries: network.registry.iter().cloned().collect(),
                    heartbeat_interval_s: flotilla_cloud_init::DEFAULT_HEARTBEAT_INTERVAL_S,
                };
                let user_data = flotilla_cloud_init::render_host(&inputs).map_err(|source| DeployError::UserData {
                    host: h.name.clone(),
                    source,
                })?;
                launched.push(h.name.clone());
                let spec = LaunchSpec {
                    name: h.name.clone(),
                    role: h.primary.name().to_string(),
                    user_data,
                    instance_type: String::new(),
                    image: (!c.images.host.is_empty()).then(|| c.images.host.clone()),
                };
                launches.push(spec);
            }
        }
    }
    if !launches.is_empty() {
        p.say("hosts", format!("launching {} host(s) in parallel", launches.len()));
        let results = futures::future::join_all(launches.iter().map(|s| lab.launch(s))).await;
        for (s, r) in launches.iter().zip(results) {
            let h = r?;
            p.say(&s.name, format!("launched ({}, {})", h.instance_id, h.private_ip.map(|i| i.to_string()).unwrap_or_default()));
        }
    }

    // 5. Enrollment.
    let names: Vec<String> = planned.iter().map(|h| h.name.clone()).collect();
    wait_hosts(&mut admin, &names, "every agent to enroll and connect", ENROLL_TIMEOUT, &p, |h| {
        h.connected && !h.unreachable
    })
    .await?;

    // Addresses as the provider sees them.
    let hosts = lab.describe().await?;
    let addresses: HashMap<String, String> = hosts
        .iter()
        .filter_map(|h| h.private_ip.map(|ip| (h.name.clone(), ip.to_string())))
        .collect();

    // Scale down: hosts that exist but are not planned.
    let docker_dir = ensure_docker_certs(&mut admin, &state_dir).await?;
    let manager_ips: Vec<String> = planned
        .iter()
        .filter(|h| h.has(RoleKind::Manager))
        .filter_map(|h| addresses.get(&h.name).cloned())
        .collect();
    let removed = scale_down(&mut admin, &lab, &planned, &hosts, &addresses, &manager_ips, &docker_dir, &p).await?;

    // 6. Roles, in dependency order.
    let inputs = plan::SpecInputs {
        plan: &planned,
        addresses: &addresses,
        consul_image: &consul_image,
        registry_auth: (
            c.images.registry_username.clone(),
            std::env::var(&c.images.registry_password_env).unwrap_or_default(),
        ),
        cluster: &c.name,
    };
    let mut changed = !launched.is_empty() || !removed.is_empty() || started_any;
    // Assignments go out in dependency order — Consul, the first manager, the other
    // managers, the nodes — and each agent waits on what its roles depend on through Consul
    // (join data appears only once the first manager initialised the swarm), so the steps
    // overlap instead of waiting on one another. A re-run never takes a role away.
    let consul_hosts: Vec<&PlannedHost> = planned.iter().filter(|h| h.has(RoleKind::Consul)).collect();
    let mut order: Vec<&PlannedHost> = Vec::new();
    order.extend(planned.iter().filter(|h| h.has(RoleKind::Consul) && !h.has(RoleKind::Manager)));
    order.extend(planned.iter().filter(|h| h.has(RoleKind::Manager)));
    order.extend(planned.iter().filter(|h| !h.has(RoleKind::Manager) && !h.has(RoleKind::Consul)));
    let current = admin.status(v1::StatusRequest {}).await?.into_inner();
    for h in &order {
        let specs = plan::role_specs(h, &inputs);
        let addr = addresses.get(&h.name).cloned().unwrap_or_default();
        let r = admin
            .assign(v1::AssignRequest {
                host_name: h.name.clone(),
                roles: specs,
                host_address: addr,
            })
            .await?
            .into_inner();
        let before = current.hosts.iter().find(|s| s.name == h.name).map(|s| s.generation).unwrap_or(0);
        if r.generation != before {
            changed = true;
            let roles: Vec<_> = h.roles.iter().map(|r| r.name()).collect();
            p.say(&h.name, format!("assigned {} (generation {})", roles.join(" + "), r.generation));
        }
    }
    let names: Vec<String> = planned.iter().map(|h| h.name.clone()).collect();
    let by_name: HashMap<String, Vec<i32>> = planned
        .iter()
        .map(|h| (h.name.clone(), h.roles.iter().map(|r| r.proto() as i32).collect()))
        .collect();
    wait_hosts(&mut admin, &names, "every role running (Consul, then the swarm)", PHASE_TIMEOUT, &p, |h| {
        by_name.get(&h.name).is_some_and(|want| {
            want.iter().all(|w| {
                h.role_status
                    .iter()
                    .any(|s| s.role == *w && s.state == v1::RoleState::Running as i32)
            })
        })
    })
    .await?;

    // 7. Verify and smoke-test.
    let consul_ips: Vec<String> = consul_hosts.iter().filter_map(|h| addresses.get(&h.name).cloned()).collect();
    p.say("verify", "asking Swarm and Consul for their own view");
    let swarm = verify::swarm(&manager_ips, &docker_dir, c.managers as usize, c.nodes as usize).await?;
    let consul = verify::consul(&consul_ips, consul_hosts.len()).await?;
    p.say(
        "verify",
        format!(
            "swarm: {} managers (leader {}), {} workers ready; consul: {} servers, leader {}",
            swarm.managers.len(),
            swarm.leader,
            swarm.workers.len(),
            consul.peers.len(),
            consul.leader
        ),
    );
    let smoke_test = if c.smoke_test && (changed || opts.force_smoke) {
        p.say("smoke", format!("hello service on the nodes ({hello_image})"));
        let r = verify::smoke(&swarm.leader_ip, &docker_dir, &hello_image, c.nodes as usize).await?;
        p.say("smoke", format!("{} task(s) ran on {:?}; output: {:?}", r.tasks, r.nodes, r.output.first()));
        Some(r)
    } else {
        None
    };
    if !changed {
        p.say("deploy", "nothing to change: the cluster already matches the plan");
    }
    p.finish();
    let docker_env = verify::docker_env(&swarm.leader_ip, &docker_dir);
    let report = Report {
        cluster: c.name.clone(),
        provider: "lab".into(),
        changed,
        launched,
        removed,
        hosts: planned
            .iter()
            .map(|h| ReportHost {
                name: h.name.clone(),
                roles: h.roles.iter().map(|r| r.name().to_string()).collect(),
                address: addresses.get(&h.name).cloned().unwrap_or_default(),
                instance_id: hosts.iter().find(|x| x.name == h.name).map(|x| x.instance_id.clone()).unwrap_or_default(),
            })
            .collect(),
        swarm,
        consul,
        smoke_test,
        docker_env,
        duration_s: p.elapsed().as_secs_f64(),
    };
    Ok(report)
}



/// Polls status until `ok` holds for every host in `names`.
async fn wait_hosts(
    admin: &mut AdminClient<Channel>,
    names: &[String],
    what: &str,
    timeout: Duration,
    p: &Progress,
    ok: impl Fn(&v1::HostStatus) -> bool,
) -> Result<(), DeployError> {
    let deadline = Instant::now() + timeout;
    let mut last_note: HashMap<String, String> = HashMap::new();
    p.say("wait", what);
    loop {
        let st = admin.status(v1::StatusRequest {}).await?.into_inner();
        let mut pending = Vec::new();
        for n in names {
            let h = st.hosts.iter().find(|h| &h.name == n);
            match h {
                Some(h) if ok(h) => {
                    if last_note.get(n).map(String::as_str) != Some("ok") {
                        p.say(n, "ready");
                        last_note.insert(n.clone(), "ok".into());
                    }
                }
                other => {
                    let note = match other {
                        None => "booting (not enrolled yet)".to_string(),
                        Some(h) if !h.connected => "enrolled; session not up".to_string(),
                        Some(h) => h
                            .role_status
                            .iter()
                            .map(|s| {
                                let state = crate::control::state_name(s.state);
                                let role = v1::Role::try_from(s.role).map(crate::control::role_name).unwrap_or("?");
                                format!("{role}: {state} {}", s.message)
                            })
                            .collect::<Vec<_>>()
                            .join("; "),
                    };
                    if last_note.get(n) != Some(&note) && !note.is_empty() {
                        p.say(n, &note);
                        last_note.insert(n.clone(), note.clone());
                    }
                    pending.push(format!("{n} ({note})"));
                }
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DeployError::Timeout {
                what: what.to_string(),
                after: timeout,
                pending: pending.join(", "),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Removes hosts that exist but are not in the plan: managers are demoted and leave one at
/// a time (never more than quorum tolerates at once), nodes drain and leave; then the host
/// is terminated and forgotten.
async fn scale_down(
    admin: &mut AdminClient<Channel>,
    lab: &Lab,
    planned: &[PlannedHost],
    hosts: &[crate::providers::Host],
    addresses: &HashMap<String, String>,
    manager_ips: &[String],
    docker_dir: &Path,
    p: &Progress,
) -> Result<Vec<String>, DeployError> {
    let mut extra: Vec<&crate::providers::Host> = hosts.iter().filter(|h| !planned.iter().any(|x| x.name == h.name)).collect();
    // Nodes first, then managers, one by one.
    extra.sort_by_key(|h| (h.role == "manager", h.name.clone()));
    let mut removed = Vec::new();
    for h in extra {
        p.say(&h.name, "not in the plan: draining and leaving the swarm");
        let addr = addresses.get(&h.name).cloned().unwrap_or_default();
        let r = admin
            .assign(v1::AssignRequest {
                host_name: h.name.clone(),
                roles: vec![],
                host_address: addr,
            })
            .await;
        if r.is_ok() {
            // The agent demotes (managers) and leaves; wait until it reports no swarm.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let st = admin.status(v1::StatusRequest {}).await?.into_inner();
                let left = st
                    .hosts
                    .iter()
                    .find(|x| x.name == h.name)
                    .and_then(|x| x.health.as_ref())
                    .and_then(|s| s.swarm.as_ref())
                    .is_some_and(|s| s.local_state == "inactive");
                if left || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        lab.terminate(&h.name).await?;
        // The swarm keeps a departed node as "down" until a manager removes it.
        if let Err(e) = verify::forget_node(manager_ips, docker_dir, &h.name).await {
            p.say(&h.name, format!("could not remove it from the swarm's node list: {e}"));
        }
        admin.remove_host(v1::RevokeHostRequest { host_name: h.name.clone() }).await?;
        p.say(&h.name, "terminated");
        removed.push(h.name.clone());
    }
    Ok(removed)
}

/// The operator certificate `docker` and `coordinator env` use against managers' Engines.
async fn ensure_docker_certs(admin: &mut AdminClient<Channel>, state_dir: &Path) -> Result<PathBuf, DeployError> {
    let dir = state_dir.join("docker");
    let fresh = ["ca.pem", "cert.pem", "key.pem"].iter().all(|f| dir.join(f).is_file());
    if fresh {
        return Ok(dir);
    }
    let (key, csr) = crate::pki::new_key_and_csr("docker").map_err(|e| DeployError::ControlPlane(e.to_string()))?;
    let r = admin
        .issue_operator_certificate(v1::IssueOperatorCertificateRequest {
            operator_name: "docker".into(),
            csr_pem: csr,
        })
        .await?
        .into_inner();
    let io = |e: std::io::Error| DeployError::ControlPlane(format!("{}: {e}", dir.display()));
    flotilla_proto::fs::private_dir(&dir).map_err(io)?;
    flotilla_proto::fs::write_private(&dir.join("key.pem"), key.serialize_pem().as_bytes()).map_err(io)?;
    flotilla_proto::fs::write_public(&dir.join("cert.pem"), r.certificate_pem.as_bytes()).map_err(io)?;
    flotilla_proto::fs::write_public(&dir.join("ca.pem"), r.ca_chain_pem.join("").as_bytes()).map_err(io)?;
    Ok(dir)
}

/// Connects to the cluster's control plane, starting one in the background when none
/// runs: it listens on `listen_ip:port` (the lab's gateway) and logs to
/// `<state>/coordinator.log`.
pub async fn ensure_control_plane(
    cluster: &str,
    state_root: &Path,
    paths: &StatePaths,
    listen_ip: &str,
    port: u16,
    p: &Progress,
) -> Result<AdminClient<Channel>, DeployError> {
    match crate::admin::connect_local(cluster, &paths.admin_socket()).await {
        Ok(c) => return Ok(c),
        Err(crate::admin::ConnectError::NotRunning { .. }) => {}
        Err(e) => return Err(DeployError::ControlPlane(e.to_string())),
    }
    // A control plane that is just stopping still holds the store for a moment: retry.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match spawn_control_plane(cluster, state_root, paths, listen_ip, port, p).await {
            Err(DeployError::ControlPlane(m)) if m.contains("in use by another process") && attempt < 15 => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

async fn spawn_control_plane(
    cluster: &str,
    state_root: &Path,
    paths: &StatePaths,
    listen_ip: &str,
    port: u16,
    p: &Progress,
) -> Result<AdminClient<Channel>, DeployError> {
    let exe = std::env::current_exe().map_err(|e| DeployError::ControlPlane(e.to_string()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.log_file())
        .map_err(|e| DeployError::ControlPlane(format!("{}: {e}", paths.log_file().display())))?;
    let log2 = log.try_clone().map_err(|e| DeployError::ControlPlane(e.to_string()))?;
    p.say("control", format!("starting the control plane on {listen_ip}:{port} (log: {})", paths.log_file().display()));
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--cluster")
        .arg(cluster)
        .arg("--state-root")
        .arg(state_root)
        .arg("serve")
        .arg("--listen")
        .arg(format!("{listen_ip}:{port}"))
        .arg("--advertise")
        .arg(listen_ip)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| DeployError::ControlPlane(format!("cannot start `coordinator serve`: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(paths.log_file()).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            return Err(DeployError::ControlPlane(format!(
                "`coordinator serve` exited ({status}); its log says:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        if let Ok(c) = crate::admin::connect_local(cluster, &paths.admin_socket()).await {
            // Detach: the control plane outlives this command.
            std::mem::forget(child);
            return Ok(c);
        }
        if Instant::now() > deadline {
            return Err(DeployError::ControlPlane(format!(
                "the control plane did not answer within 30 s; see {}",
                paths.log_file().display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
