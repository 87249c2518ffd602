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

use crate::control_plane::settings::StatePaths;
use crate::ops::cluster_config::ClusterConfig;
use crate::ops::plan::{self, PlannedHost, RoleKind};
use crate::ops::verify;
use crate::providers::ProviderKind;
use crate::providers::aws::{self, Aws};
use crate::providers::lab::{self, Lab};
use crate::providers::{HostState, LaunchSpec};
use crate::providers::{Provider, ProviderError};
use crate::ui::Progress;

/// How long hosts get to boot and enroll.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long each role phase gets to converge.
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(240);

impl From<ProviderError> for DeployError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::Lab(e) => DeployError::Lab(e),
            ProviderError::Aws(e) => DeployError::Aws(e),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Config(#[from] crate::ops::cluster_config::ConfigError),
    #[error(transparent)]
    Aws(#[from] aws::AwsError),
    #[error("host {host} is {state}; wait until it settles (`coordinator status`) and re-run `coordinator deploy`")]
    HostBusy { host: String, state: String },
    #[error("the local Docker Engine does not answer ({0}); the lab needs it: start dockerd and retry")]
    NoEngine(String),
    #[error(transparent)]
    Lab(#[from] lab::LabError),
    #[error("control plane: {0}")]
    ControlPlane(String),
    #[error("{0}")]
    Rpc(#[from] tonic::Status),
    #[error("user-data for {host}: {source}")]
    UserData { host: String, source: flotilla_cloud_init::Error },
    #[error(
        "timed out after {after:?} waiting for {what}; hosts still pending: {pending}. `coordinator status` shows what exists; re-run `coordinator deploy` to continue"
    )]
    Timeout { what: String, after: Duration, pending: String },
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
}

/// The final report (`--output json` prints it).
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub cluster: String,
    pub provider: ProviderKind,
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
    let p = Progress::new(opts.quiet);
    let planned = plan::plan(c);
    p.step("plan", format!("cluster '{}' on the {} provider:", c.name, c.provider.name()));
    for h in &planned {
        let roles: Vec<_> = h.roles.iter().map(|r| r.name()).collect();
        p.step("plan", format!("  {:<10} {}", h.name, roles.join(" + ")));
    }
    let state_dir = opts.state_root.join(&c.name);
    let paths = StatePaths::new(&state_dir);
    flotilla_proto::fs::private_dir(&state_dir)
        .map_err(|e| DeployError::ControlPlane(format!("{}: {e}", state_dir.display())))?;

    // 2. The provider: the lab's images, network and registry; or EC2's VPC, security
    //    group and AMI.
    let target = prepare_provider(c, &state_dir, opts.quiet, &p).await?;
    crate::providers::ProviderRecord {
        provider: target.provider.kind(),
        aws: matches!(target.provider, Provider::Aws(_)).then(|| c.aws.clone()),
    }
    .save(&state_dir)
    .map_err(|e| DeployError::ControlPlane(format!("{}: {e}", state_dir.display())))?;
    let provider = &target.provider;

    // 3. The control plane.
    let serve = ServeSpec {
        cluster: &c.name,
        state_root: &opts.state_root,
        paths: &paths,
        listen_ip: &target.listen,
        advertise: &target.advertise,
        port: c.coordinator.port,
    };
    let mut admin = ensure_control_plane(&serve, &p).await?;
    let st = admin.status(v1::StatusRequest {}).await?.into_inner();
    let ca_pem = std::fs::read_to_string(paths.ca_pem())
        .map_err(|e| DeployError::ControlPlane(format!("{}: {e}", paths.ca_pem().display())))?;

    // 4. Hosts.
    let existing = provider.describe().await?;
    let mut launched = Vec::new();
    let mut started_any = false;
    let mut launches = Vec::new();
    let mut per_role: HashMap<&'static str, usize> = HashMap::new();
    for h in &planned {
        let role = h.primary.name();
        let index = *per_role.entry(role).and_modify(|i| *i += 1).or_insert(0);
        match existing.iter().find(|e| e.name == h.name) {
            Some(e) if matches!(e.state, HostState::Running | HostState::Pending) => {}
            Some(e) if e.state == HostState::Stopped => {
                p.host(&h.name, "starting the stopped host");
                started_any = true;
                provider.start(&h.name).await?;
            }
            Some(e) if e.state == HostState::Stopping => {
                return Err(DeployError::HostBusy { host: h.name.clone(), state: "stopping".into() });
            }
            _ => {
                let token = admin
                    .create_token(v1::CreateTokenRequest { host_name: h.name.clone(), ttl_s: 0 })
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
                        url: format!("https://{}{}", st.agent_endpoint, crate::control_plane::agent_binary::PATH),
                        sha256: st.agent_binary_sha256.clone(),
                        version: st.agent_version.clone(),
                    },
                    engine: target.engine,
                    insecure_registries: target.insecure_registries.clone(),
                    heartbeat_interval_s: flotilla_cloud_init::DEFAULT_HEARTBEAT_INTERVAL_S,
                };
                let user_data = flotilla_cloud_init::render_host(&inputs)
                    .map_err(|source| DeployError::UserData { host: h.name.clone(), source })?;
                launched.push(h.name.clone());
                let spec = LaunchSpec {
                    name: h.name.clone(),
                    role: role.to_string(),
                    user_data,
                    instance_type: if h.has(RoleKind::Manager) {
                        c.instance_types.manager.clone()
                    } else {
                        c.instance_types.node.clone()
                    },
                    image: (!c.images.host.is_empty()).then(|| c.images.host.clone()),
                };
                launches.push((spec, index));
            }
        }
    }
    if !launches.is_empty() {
        p.step("hosts", format!("launching {} host(s) in parallel", launches.len()));
        let results = futures::future::join_all(launches.iter().map(|(s, i)| target.launch(s, *i))).await;
        let mut first_err = None;
        for ((s, _), r) in launches.iter().zip(results) {
            match r {
                Ok(h) => p.host(
                    &s.name,
                    format!(
                        "launched ({}, {})",
                        h.instance_id,
                        h.private_ip.map(|i| i.to_string()).unwrap_or_default()
                    ),
                ),
                Err(e) => {
                    p.host(&s.name, format!("launch failed: {e}"));
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
    }

    // 5. Enrollment.
    let names: Vec<String> = planned.iter().map(|h| h.name.clone()).collect();
    wait_hosts(&mut admin, &names, "every agent to enroll and connect", ENROLL_TIMEOUT, &p, |h| {
        h.connected && !h.unreachable
    })
    .await?;

    // Addresses: the provider's private IP, as long as the agent reports having it; else
    // the address the agent reports (an EC2-compatible API whose instances are booted
    // elsewhere, as the lab does with moto's).
    let hosts = provider.describe().await?;
    let st = admin.status(v1::StatusRequest {}).await?.into_inner();
    let addresses = host_addresses(&hosts, &st);

    // Scale down: hosts that exist but are not planned.
    let docker_dir = ensure_docker_certs(&mut admin, &state_dir).await?;
    let manager_ips: Vec<String> =
        planned.iter().filter(|h| h.has(RoleKind::Manager)).filter_map(|h| addresses.get(&h.name).cloned()).collect();
    let removed = scale_down(&mut admin, provider, &planned, &hosts, &addresses, &manager_ips, &docker_dir, &p).await?;

    // 6. Roles, in dependency order.
    let inputs = plan::SpecInputs {
        plan: &planned,
        addresses: &addresses,
        consul_image: &target.consul_image,
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
            .assign(v1::AssignRequest { host_name: h.name.clone(), roles: specs, host_address: addr })
            .await?
            .into_inner();
        let before = current.hosts.iter().find(|s| s.name == h.name).map(|s| s.generation).unwrap_or(0);
        if r.generation != before {
            changed = true;
            let roles: Vec<_> = h.roles.iter().map(|r| r.name()).collect();
            p.host(&h.name, format!("assigned {} (generation {})", roles.join(" + "), r.generation));
        }
    }
    let names: Vec<String> = planned.iter().map(|h| h.name.clone()).collect();
    let by_name: HashMap<String, Vec<i32>> =
        planned.iter().map(|h| (h.name.clone(), h.roles.iter().map(|r| r.proto() as i32).collect())).collect();
    wait_hosts(&mut admin, &names, "every role running (Consul, then the swarm)", PHASE_TIMEOUT, &p, |h| {
        by_name.get(&h.name).is_some_and(|want| {
            want.iter().all(|w| h.role_status.iter().any(|s| s.role == *w && s.state == v1::RoleState::Running as i32))
        })
    })
    .await?;

    // 7. Verify and smoke-test.
    let consul_ips: Vec<String> = consul_hosts.iter().filter_map(|h| addresses.get(&h.name).cloned()).collect();
    p.step("verify", "asking Swarm and Consul for their own view");
    let swarm = verify::swarm(&manager_ips, &docker_dir, c.managers as usize, c.nodes as usize).await?;
    let consul = match provider {
        Provider::Lab(_) => verify::consul(&consul_ips, consul_hosts.len()).await?,
        // 8500 is open to the cluster's own group only: ask the servers' agents, which read
        // their local Consul, until they agree (their health arrives every few seconds).
        Provider::Aws(_) => {
            let names: Vec<String> = consul_hosts.iter().map(|h| h.name.clone()).collect();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let st = admin.status(v1::StatusRequest {}).await?.into_inner();
                match verify::consul_from_agents(&st, &names, consul_hosts.len()) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > deadline => return Err(e.into()),
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
    };
    p.step(
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
        p.step("smoke", format!("hello service on the nodes ({})", target.hello_image));
        let r = verify::smoke(&swarm.leader_ip, &docker_dir, &target.hello_image, c.nodes as usize).await?;
        p.step("smoke", format!("{} task(s) ran on {:?}; output: {:?}", r.tasks, r.nodes, r.output.first()));
        Some(r)
    } else {
        None
    };
    if !changed {
        p.step("deploy", "nothing to change: the cluster already matches the plan");
    }
    p.finish();
    let docker_env = verify::docker_env(&swarm.leader_ip, &docker_dir);
    let report = Report {
        cluster: c.name.clone(),
        provider: provider.kind(),
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

/// What `deploy` would do (`coordinator plan`, `deploy --dry-run`): found out by reading
/// only — nothing is created, changed or deleted, no control plane is started.
#[derive(Debug, Default, serde::Serialize)]
pub struct Changes {
    pub cluster: String,
    pub provider: ProviderKind,
    pub create: Vec<String>,
    pub change: Vec<String>,
    pub delete: Vec<String>,
    pub keep: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.change.is_empty() && self.delete.is_empty()
    }
}

pub async fn dry_run(config: &ClusterConfig, origin: &str, state_root: &Path) -> Result<Changes, DeployError> {
    config.validate(origin)?;
    let planned = plan::plan(config);
    let state_dir = state_root.join(&config.name);
    let mut ch = Changes { cluster: config.name.clone(), provider: config.provider, ..Default::default() };
    let hosts = match config.provider {
        ProviderKind::Lab => {
            let docker = lab::connect_engine().await.map_err(DeployError::NoEngine)?;
            let lab = Lab::new(docker, &config.name, &state_dir, Default::default());
            if lab.registry_addr().await?.is_none() {
                ch.create.push(format!("lab network {} and its registry", lab.network_name()));
            }
            lab.describe().await?
        }
        ProviderKind::Aws => {
            let a = Aws::connect(&config.name, &config.aws, &state_dir).await?;
            let vpc = a.vpc().await?;
            for t in [&config.instance_types.manager, &config.instance_types.node] {
                a.check_instance_type(t).await?;
            }
            let ami = a.ami((!config.images.host.is_empty()).then_some(config.images.host.as_str())).await?;
            let desired = aws::security_group::desired_rules(&config.aws.admin_cidr, &config.aws.ssh_cidr);
            match a.find_security_group(&vpc.id).await? {
                None => {
                    ch.create.push(format!("security group {} in {}", a.group_name(), vpc.id));
                    ch.create.extend(desired.iter().map(|r| format!("  rule {r}")));
                }
                Some(g) => {
                    let (add, revoke) = aws::security_group::diff(&g.rules, &desired);
                    ch.change.extend(add.iter().map(|r| format!("security group {}: add {r}", g.id)));
                    ch.change.extend(revoke.iter().map(|r| format!("security group {}: revoke {r}", g.id)));
                    if add.is_empty() && revoke.is_empty() {
                        ch.keep.push(format!("security group {} ({} rules)", g.id, g.rules.len()));
                    }
                }
            }
            let hosts = a.describe().await?;
            let mut per_role: HashMap<&str, usize> = HashMap::new();
            for h in &planned {
                let index = *per_role.entry(h.primary.name()).and_modify(|i| *i += 1).or_insert(0);
                if !hosts.iter().any(|x| x.name == h.name) {
                    let subnet = &vpc.subnets[index % vpc.subnets.len()];
                    let t = if h.has(RoleKind::Manager) {
                        &config.instance_types.manager
                    } else {
                        &config.instance_types.node
                    };
                    ch.create.push(format!("instance {} ({t}, {}, {} in {})", h.name, ami.id, subnet.id, subnet.zone));
                }
            }
            hosts
        }
    };
    for h in &planned {
        let roles: Vec<_> = h.roles.iter().map(|r| r.name()).collect();
        match hosts.iter().find(|x| x.name == h.name) {
            Some(x) if x.state == HostState::Stopped => {
                ch.change.push(format!("start stopped host {} ({})", h.name, x.instance_id))
            }
            Some(x) => ch.keep.push(format!("host {} ({}, {})", h.name, x.instance_id, roles.join(" + "))),
            None if config.provider == ProviderKind::Lab => {
                ch.create.push(format!("host {} ({})", h.name, roles.join(" + ")))
            }
            None => {}
        }
    }
    for x in hosts.iter().filter(|x| !planned.iter().any(|h| h.name == x.name)) {
        ch.delete.push(format!("host {} ({}): drained, removed from the swarm, terminated", x.name, x.instance_id));
    }
    Ok(ch)
}

/// The provider, ready to launch: where the control plane listens and what hosts dial, the
/// role images, and how user-data gets the Engine.
pub struct Target {
    pub provider: Provider,
    pub listen: String,
    pub advertise: String,
    pub consul_image: String,
    pub hello_image: String,
    pub engine: flotilla_cloud_init::Engine,
    pub insecure_registries: Vec<String>,
    /// AWS only: VPC, security group, AMI.
    pub aws: Option<aws::LaunchContext>,
}

/// On AWS, HashiCorp's official Consul image and Docker's hello-world (the seed's smoke
/// test); the lab builds its own from Debian packages and serves them from its registry.
pub const AWS_CONSUL_IMAGE: &str = "hashicorp/consul:1.20";
pub const AWS_HELLO_IMAGE: &str = "hello-world:latest";

impl Target {
    pub async fn launch(&self, spec: &LaunchSpec, index: usize) -> Result<crate::providers::Host, DeployError> {
        Ok(match (&self.provider, &self.aws) {
            (Provider::Lab(l), _) => l.launch(spec).await?,
            (Provider::Aws(a), Some(ctx)) => a.launch(spec, index, ctx).await?,
            (Provider::Aws(_), None) => {
                return Err(DeployError::ControlPlane("the AWS launch context is missing".into()));
            }
        })
    }
}

/// Step 2: the provider's side of the cluster, made to exist.
pub async fn prepare_provider(
    c: &ClusterConfig,
    state_dir: &Path,
    quiet: bool,
    p: &Progress,
) -> Result<Target, DeployError> {
    let pick = |configured: &str, default: &str| {
        if configured.is_empty() { default.to_string() } else { configured.to_string() }
    };
    match c.provider {
        ProviderKind::Lab => {
            let docker = lab::connect_engine().await.map_err(DeployError::NoEngine)?;
            p.step("lab", "lab images (built once per recipe; a no-op when present)");
            let images = lab::images::ensure(quiet).await.map_err(lab::LabError::from)?;
            let lab = Lab::new(docker, &c.name, state_dir, images);
            if !c.images.host.is_empty() {
                lab.require_image(&c.images.host, "images.host in flotilla.toml, or --image").await?;
                p.step("lab", format!("hosts boot from {}", c.images.host));
            }
            let (network, refs) = lab
                .ensure(&[(&lab.images.consul, "flotilla/consul:1.8.7"), (&lab.images.hello, "flotilla/hello:1")])
                .await?;
            let gateway = network.coordinator_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "127.0.0.1".into());
            p.step(
                "lab",
                format!(
                    "network {} (coordinator at {gateway}, registry {})",
                    lab.network_name(),
                    network.registry.clone().unwrap_or_default()
                ),
            );
            let mut insecure: Vec<String> = network.registry.iter().cloned().collect();
            insecure.extend(c.images.insecure_registries.iter().cloned());
            Ok(Target {
                listen: pick(&c.coordinator.listen, &gateway),
                advertise: pick(&c.coordinator.advertise, &gateway),
                consul_image: pick(&c.images.consul, &refs[0]),
                hello_image: pick(&c.images.hello, &refs[1]),
                engine: flotilla_cloud_init::Engine::Preinstalled,
                insecure_registries: insecure,
                provider: Provider::Lab(lab),
                aws: None,
            })
        }
        ProviderKind::Aws => {
            let a = Aws::connect(&c.name, &c.aws, state_dir).await?;
            p.step("aws", format!("region {} via {}", a.region, a.endpoint));
            let image = (!c.images.host.is_empty()).then_some(c.images.host.as_str());
            let (ctx, change) = a.prepare(image, &[&c.instance_types.manager, &c.instance_types.node]).await?;
            let zones: Vec<String> = ctx.vpc.subnets.iter().map(|s| format!("{} ({})", s.id, s.zone)).collect();
            p.step("aws", format!("VPC {}; subnets {}", ctx.vpc.id, zones.join(", ")));
            p.step("aws", format!("AMI {}", ctx.ami.id));
            p.step(
                "aws",
                format!(
                    "security group {} {}{}{}",
                    change.id,
                    if change.created { "created" } else { "found" },
                    if change.added.is_empty() {
                        String::new()
                    } else {
                        format!("; added {}", change.added.join("; "))
                    },
                    if change.revoked.is_empty() {
                        String::new()
                    } else {
                        format!("; revoked {}", change.revoked.join("; "))
                    },
                ),
            );
            Ok(Target {
                listen: pick(&c.coordinator.listen, "0.0.0.0"),
                advertise: c.coordinator.advertise.clone(),
                consul_image: pick(&c.images.consul, AWS_CONSUL_IMAGE),
                hello_image: pick(&c.images.hello, AWS_HELLO_IMAGE),
                engine: flotilla_cloud_init::Engine::InstallIfAbsent(flotilla_cloud_init::OsFamily::AmazonLinux2023),
                insecure_registries: c.images.insecure_registries.clone(),
                provider: Provider::Aws(a),
                aws: Some(ctx),
            })
        }
    }
}

/// The address each host's roles use: the provider's private IP when the agent reports
/// holding it (always so on EC2 and in the lab), else the first address the agent reports.
pub fn host_addresses(hosts: &[crate::providers::Host], st: &v1::StatusResponse) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for s in &st.hosts {
        let reported: Vec<String> = s.facts.as_ref().map(|f| f.private_addresses.clone()).unwrap_or_default();
        let provider_ip = hosts.iter().find(|h| h.name == s.name).and_then(|h| h.private_ip).map(|ip| ip.to_string());
        let addr = match provider_ip {
            Some(ip) if reported.is_empty() || reported.contains(&ip) => Some(ip),
            _ => reported.first().cloned(),
        };
        if let Some(a) = addr {
            out.insert(s.name.clone(), a);
        }
    }
    for h in hosts {
        if let (false, Some(ip)) = (out.contains_key(&h.name), h.private_ip) {
            out.insert(h.name.clone(), ip.to_string());
        }
    }
    out
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
    p.step("wait", what);
    loop {
        let st = admin.status(v1::StatusRequest {}).await?.into_inner();
        let mut pending = Vec::new();
        for n in names {
            let h = st.hosts.iter().find(|h| &h.name == n);
            match h {
                Some(h) if ok(h) => {
                    if last_note.get(n).map(String::as_str) != Some("ok") {
                        p.host(n, "ready");
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
                                let state = v1::RoleState::name_of(s.state);
                                let role = v1::Role::try_from(s.role).map(v1::Role::name).unwrap_or("?");
                                format!("{role}: {state} {}", s.message)
                            })
                            .collect::<Vec<_>>()
                            .join("; "),
                    };
                    if last_note.get(n) != Some(&note) && !note.is_empty() {
                        p.host(n, &note);
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
            return Err(DeployError::Timeout { what: what.to_string(), after: timeout, pending: pending.join(", ") });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Removes hosts that exist but are not in the plan: managers are demoted and leave one at
/// a time (never more than quorum tolerates at once), nodes drain and leave; then the host
/// is terminated and forgotten.
async fn scale_down(
    admin: &mut AdminClient<Channel>,
    provider: &Provider,
    planned: &[PlannedHost],
    hosts: &[crate::providers::Host],
    addresses: &HashMap<String, String>,
    manager_ips: &[String],
    docker_dir: &Path,
    p: &Progress,
) -> Result<Vec<String>, DeployError> {
    let mut extra: Vec<&crate::providers::Host> =
        hosts.iter().filter(|h| !planned.iter().any(|x| x.name == h.name)).collect();
    // Nodes first, then managers, one by one.
    extra.sort_by_key(|h| (h.role == "manager", h.name.clone()));
    let mut removed = Vec::new();
    for h in extra {
        p.host(&h.name, "not in the plan: draining and leaving the swarm");
        let addr = addresses.get(&h.name).cloned().unwrap_or_default();
        let r = admin.assign(v1::AssignRequest { host_name: h.name.clone(), roles: vec![], host_address: addr }).await;
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
        provider.terminate(&h.name).await?;
        // The swarm keeps a departed node as "down" until a manager removes it.
        if let Err(e) = verify::forget_node(manager_ips, docker_dir, &h.name).await {
            p.host(&h.name, format!("could not remove it from the swarm's node list: {e}"));
        }
        admin.remove_host(v1::RevokeHostRequest { host_name: h.name.clone() }).await?;
        p.host(&h.name, "terminated");
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
    let (key, csr) =
        crate::control_plane::pki::new_key_and_csr("docker").map_err(|e| DeployError::ControlPlane(e.to_string()))?;
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
pub async fn ensure_control_plane(s: &ServeSpec<'_>, p: &Progress) -> Result<AdminClient<Channel>, DeployError> {
    match crate::admin_client::connect_local(s.cluster, &s.paths.admin_socket()).await {
        Ok(c) => return Ok(c),
        Err(crate::admin_client::ConnectError::NotRunning { .. }) => {}
        Err(e) => return Err(DeployError::ControlPlane(e.to_string())),
    }
    // A control plane that is just stopping still holds the store for a moment: retry.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match spawn_control_plane(s, p).await {
            Err(DeployError::ControlPlane(m)) if m.contains("in use by another process") && attempt < 15 => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// Where and how `coordinator serve` runs for a cluster.
pub struct ServeSpec<'a> {
    pub cluster: &'a str,
    pub state_root: &'a Path,
    pub paths: &'a StatePaths,
    /// The agent port listens here.
    pub listen_ip: &'a str,
    /// Hosts dial this (the server certificate's name).
    pub advertise: &'a str,
    pub port: u16,
}

async fn spawn_control_plane(s: &ServeSpec<'_>, p: &Progress) -> Result<AdminClient<Channel>, DeployError> {
    let ServeSpec { cluster, state_root, paths, listen_ip, advertise, port } = *s;
    let exe = std::env::current_exe().map_err(|e| DeployError::ControlPlane(e.to_string()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.log_file())
        .map_err(|e| DeployError::ControlPlane(format!("{}: {e}", paths.log_file().display())))?;
    let log2 = log.try_clone().map_err(|e| DeployError::ControlPlane(e.to_string()))?;
    p.step(
        "control",
        format!("starting the control plane on {listen_ip}:{port} (log: {})", paths.log_file().display()),
    );
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
        .arg(advertise)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    let mut child =
        cmd.spawn().map_err(|e| DeployError::ControlPlane(format!("cannot start `coordinator serve`: {e}")))?;
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
        if let Ok(c) = crate::admin_client::connect_local(cluster, &paths.admin_socket()).await {
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
