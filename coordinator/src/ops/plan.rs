//! The planner: cluster config → hosts → roles ([`plan`], [`role_specs`]; pure), and what
//! `coordinator plan` (`deploy --dry-run`) prints: the [`Changes`] a deploy would make,
//! found by reading the provider only ([`dry_run`]).
//!
//! The seed's topology on Swarm mode: `manager0…` (each also a Consul server by default, a
//! 3-server Consul cluster for the default 3 managers), `node0…`. `manager0` is designated to
//! initialise the swarm. A slot replaced by `upgrade --image` goes by its current name
//! (`manager0-u1`: [`crate::ops::host_names`]); the first manager's slot keeps initialising.

use std::path::Path;

use flotilla_proto::v1;

use crate::ops::cluster_config::{ClusterConfig, ConfigError, ConsulPlacement};
use crate::ops::host_names::{HostNames, HostNamesError};
use crate::providers::aws::{self, Aws};
use crate::providers::lab::{self, Lab, LabError};
use crate::providers::{Host, HostState, ProviderError, ProviderKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RoleKind {
    Consul,
    Manager,
    Node,
}

impl RoleKind {
    pub fn proto(self) -> v1::Role {
        match self {
            RoleKind::Consul => v1::Role::Consul,
            RoleKind::Manager => v1::Role::Manager,
            RoleKind::Node => v1::Role::Node,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RoleKind::Consul => "consul",
            RoleKind::Manager => "manager",
            RoleKind::Node => "node",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedHost {
    pub name: String,
    pub roles: Vec<RoleKind>,
    /// The role it is launched for (tags, instance type).
    pub primary: RoleKind,
    /// Its position among the hosts of its primary role (AWS: its subnet, round-robin).
    pub index: usize,
}

impl PlannedHost {
    pub fn has(&self, r: RoleKind) -> bool {
        self.roles.contains(&r)
    }

    /// `consul + manager`: its roles, for messages.
    pub fn roles_text(&self) -> String {
        self.roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(" + ")
    }

    /// The instance type it is launched as.
    pub fn instance_type<'a>(&self, c: &'a ClusterConfig) -> &'a str {
        if self.has(RoleKind::Manager) { &c.instance_types.manager } else { &c.instance_types.node }
    }
}

/// The hosts of `c`, each slot (`manager0`, `node1`) under its current name in `names`
/// (generation 0 — the slot's own name — unless `upgrade --image` replaced it).
pub fn plan(c: &ClusterConfig, names: &HostNames) -> Vec<PlannedHost> {
    let mut out = Vec::new();
    for i in 0..c.managers {
        let mut roles = vec![RoleKind::Manager];
        if c.consul == ConsulPlacement::Managers {
            roles.insert(0, RoleKind::Consul);
        }
        out.push(PlannedHost {
            name: names.name_of(&format!("manager{i}")),
            roles,
            primary: RoleKind::Manager,
            index: i as usize,
        });
    }
    for i in 0..c.nodes {
        out.push(PlannedHost {
            name: names.name_of(&format!("node{i}")),
            roles: vec![RoleKind::Node],
            primary: RoleKind::Node,
            index: i as usize,
        });
    }
    out
}

/// What the role specs need to know about the cluster.
pub struct SpecInputs<'a> {
    pub plan: &'a [PlannedHost],
    /// Hosts no longer planned but still there (`upgrade --image`: the host being replaced):
    /// the Consul servers keep their tokens too (whichever server leads creates the
    /// replacement's), until they are gone.
    pub leaving: &'a [PlannedHost],
    /// host name → private IP.
    pub addresses: &'a std::collections::HashMap<String, String>,
    pub consul_image: &'a str,
    /// Registry credentials for role images: (username, password); empty: anonymous.
    pub registry_auth: (String, String),
    pub cluster: &'a str,
}

/// The role specs of one host. The control plane fills in secrets (Consul's gossip key,
/// tokens and certificates, each host's Consul token, the Engine's TLS certificate) when it
/// stores the assignment.
pub fn role_specs(host: &PlannedHost, inp: &SpecInputs<'_>) -> Vec<v1::RoleSpec> {
    let consul_hosts: Vec<&PlannedHost> = inp.plan.iter().filter(|h| h.has(RoleKind::Consul)).collect();
    let consul_ips: Vec<String> = consul_hosts.iter().filter_map(|h| inp.addresses.get(&h.name).cloned()).collect();
    // Consul HTTP for join data: the local server first when there is one, then the others.
    let mut consul_http: Vec<String> = Vec::new();
    if host.has(RoleKind::Consul) {
        consul_http.push("127.0.0.1:8500".into());
    }
    consul_http.extend(consul_ips.iter().map(|ip| format!("{ip}:8500")));
    let first_manager = inp.plan.iter().find(|h| h.has(RoleKind::Manager)).map(|h| h.name.as_str());

    let mut out = Vec::new();
    for r in &host.roles {
        let spec = match r {
            RoleKind::Consul => v1::role_spec::Spec::Consul(v1::ConsulSpec {
                image: Some(v1::ImageRef {
                    reference: inp.consul_image.to_string(),
                    username: inp.registry_auth.0.clone(),
                    password: inp.registry_auth.1.clone(),
                }),
                bootstrap_expect: consul_hosts.len() as u32,
                retry_join: consul_ips.clone(),
                datacenter: inp.cluster.to_string(),
                tokens: consul_tokens(&[inp.plan, inp.leaving].concat()),
                ..Default::default()
            }),
            RoleKind::Manager => v1::role_spec::Spec::Manager(v1::ManagerSpec {
                designated_initializer: first_manager == Some(host.name.as_str()),
                consul_http_addrs: consul_http.clone(),
                ..Default::default()
            }),
            RoleKind::Node => {
                v1::role_spec::Spec::Node(v1::NodeSpec { consul_http_addrs: consul_http.clone(), ..Default::default() })
            }
        };
        out.push(v1::RoleSpec { spec: Some(spec) });
    }
    out
}

/// The Consul ACL tokens the cluster's agents use — one per host and role — which the
/// Consul servers keep in Consul (the control plane fills in their ids).
fn consul_tokens(plan: &[PlannedHost]) -> Vec<v1::ConsulToken> {
    plan.iter()
        .flat_map(|h| {
            h.roles.iter().map(|r| v1::ConsulToken {
                host: h.name.clone(),
                role: r.proto() as i32,
                ..Default::default()
            })
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    HostNames(#[from] HostNamesError),
}

impl From<LabError> for PlanError {
    fn from(e: LabError) -> Self {
        PlanError::Provider(e.into())
    }
}

impl From<aws::AwsError> for PlanError {
    fn from(e: aws::AwsError) -> Self {
        PlanError::Provider(e.into())
    }
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
    /// The image hosts are launched from, as the provider reports it (the AMI id on EC2).
    pub host_image: String,
    /// Planned hosts on another image: kept by a plain deploy (and reported), replaced one at
    /// a time by `deploy --rolling` (then also listed under `change`, in its order).
    pub image_drift: Vec<crate::ops::deploy::drift::DriftedHost>,
    /// `deploy --rolling`'s plan.
    pub rolling: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.change.is_empty() && self.delete.is_empty()
    }
}

/// The changes a deploy of `config` would make, from what the provider reports; `rolling`:
/// `deploy --rolling`'s replacements too (in the order `upgrade --image` takes: workers,
/// managers, the swarm's leader last, as the control plane reports roles when it answers).
pub async fn dry_run(
    config: &ClusterConfig,
    origin: &str,
    state_root: &Path,
    rolling: bool,
) -> Result<Changes, PlanError> {
    config.validate(origin)?;
    let state_dir = state_root.join(&config.name);
    let names = HostNames::load(&state_dir)?;
    let planned = plan(config, &names);
    let mut ch = Changes { cluster: config.name.clone(), provider: config.provider, rolling, ..Default::default() };
    let hosts = match config.provider {
        ProviderKind::Lab => lab_changes(config, &state_dir, &mut ch).await?,
        ProviderKind::Aws => aws_changes(config, &planned, &state_dir, &mut ch).await?,
    };
    for h in &planned {
        match hosts.iter().find(|x| x.name == h.name) {
            Some(x) if x.state == HostState::Stopped => {
                ch.change.push(format!("start stopped host {} ({})", h.name, x.instance_id))
            }
            Some(x) => ch.keep.push(format!("host {} ({}, {})", h.name, x.instance_id, h.roles_text())),
            None if config.provider == ProviderKind::Lab => {
                ch.create.push(format!("host {} ({})", h.name, h.roles_text()))
            }
            None => {}
        }
    }
    for x in hosts.iter().filter(|x| !planned.iter().any(|h| h.name == x.name)) {
        ch.delete.push(format!("host {} ({}): drained, removed from the swarm, terminated", x.name, x.instance_id));
    }
    ch.image_drift = crate::ops::deploy::drift::drifted(&planned, &hosts, &ch.host_image);
    if let Some(r) = &names.pending {
        ch.change.push(match rolling && r.image == ch.host_image {
            true => format!("finish the interrupted replacement of {} by {} (on {}) first", r.old, r.new, r.image),
            false => format!(
                "refused: an interrupted `upgrade --image {}` is replacing {} by {} (finish it: `upgrade --image {}`, or `deploy --rolling` with images.host = {})",
                r.image, r.old, r.new, r.image, r.image
            ),
        });
    }
    if rolling && !ch.image_drift.is_empty() {
        let socket = crate::control_plane::settings::StatePaths::new(&state_dir).admin_socket();
        let roles = match crate::admin_client::connect_local(&config.name, &socket).await {
            Ok(mut admin) => admin.status(v1::StatusRequest::default()).await.map(|s| s.into_inner().hosts).ok(),
            Err(_) => None,
        };
        let drifted: Vec<&str> = ch.image_drift.iter().map(|d| d.host.as_str()).collect();
        let order: Vec<(String, String)> = match roles {
            Some(st) => crate::ops::upgrade::image::plan(&st, &hosts, &ch.host_image)
                .into_iter()
                .filter(|s| drifted.contains(&s.host.as_str()))
                .map(|s| (s.host, s.role))
                .collect(),
            None => drifted.iter().map(|h| (h.to_string(), "role unknown: no control plane".to_string())).collect(),
        };
        for (i, (host, role)) in order.iter().enumerate() {
            let from = ch.image_drift.iter().find(|d| &d.host == host).map(|d| d.image.as_str()).unwrap_or_default();
            ch.change.push(format!(
                "{}. replace host {host} ({role}, {from}) by {} launched from {}: add before remove, as `upgrade --image`",
                i + 1,
                crate::ops::host_names::next_name(host),
                ch.host_image
            ));
        }
    }
    Ok(ch)
}

/// The lab: its network and registry, if missing; the hosts it has.
async fn lab_changes(config: &ClusterConfig, state_dir: &Path, ch: &mut Changes) -> Result<Vec<Host>, PlanError> {
    let engine = lab::engine::LabEngine::connect(config.lab.engine()).await?;
    let lab = Lab::new(engine, &config.name, state_dir, Default::default());
    ch.host_image = match config.images.host.as_str() {
        "" => lab::images::default_host(),
        named => named.to_string(),
    };
    if lab.registry_addr().await?.is_none() {
        ch.create.push(format!("lab network {} and its registry", lab.network_name()));
    }
    Ok(lab.describe().await?)
}

/// EC2: the VPC, instance types and AMI checked; the security group to create or change;
/// the instances to launch (with their subnets); the hosts it has.
async fn aws_changes(
    config: &ClusterConfig,
    planned: &[PlannedHost],
    state_dir: &Path,
    ch: &mut Changes,
) -> Result<Vec<Host>, PlanError> {
    let a = Aws::connect(&config.name, &config.aws, state_dir).await?;
    let vpc = a.vpc().await?;
    for t in [&config.instance_types.manager, &config.instance_types.node] {
        a.check_instance_type(t).await?;
    }
    let ami = a.ami((!config.images.host.is_empty()).then_some(config.images.host.as_str())).await?;
    ch.host_image = ami.id.clone();
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
    for h in planned.iter().filter(|h| !hosts.iter().any(|x| x.name == h.name)) {
        let subnet = &vpc.subnets[h.index % vpc.subnets.len()];
        let t = h.instance_type(config);
        ch.create.push(format!("instance {} ({t}, {}, {} in {})", h.name, ami.id, subnet.id, subnet.zone));
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_plan_is_three_managers_with_consul_and_two_nodes() {
        let p = plan(&ClusterConfig::default(), &HostNames::default());
        let names: Vec<_> = p.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["manager0", "manager1", "manager2", "node0", "node1"]);
        assert!(p[..3].iter().all(|h| h.roles == [RoleKind::Consul, RoleKind::Manager]));
        assert!(p[3..].iter().all(|h| h.roles == [RoleKind::Node]));
    }

    #[test]
    fn recorded_generations_name_their_slots_which_keep_their_index_and_the_initialiser() {
        let mut names = HostNames::default();
        names.begin("manager0", "img");
        names.begin("node1", "img");
        names.begin("node1-u1", "img");
        let p = plan(&ClusterConfig::default(), &names);
        let got: Vec<_> = p.iter().map(|h| (h.name.as_str(), h.index)).collect();
        assert_eq!(got, [("manager0-u1", 0), ("manager1", 1), ("manager2", 2), ("node0", 0), ("node1-u2", 1)]);
        let addrs: std::collections::HashMap<_, _> =
            p.iter().enumerate().map(|(i, h)| (h.name.clone(), format!("10.0.0.{}", 10 + i))).collect();
        let inp = SpecInputs {
            plan: &p,
            leaving: &[],
            addresses: &addrs,
            consul_image: "consul:x",
            registry_auth: Default::default(),
            cluster: "c",
        };
        let Some(v1::role_spec::Spec::Manager(m)) = &role_specs(&p[0], &inp)[1].spec else { panic!("manager") };
        assert!(m.designated_initializer, "the first manager's slot keeps initialising under its new name");
        // While manager0 is replaced, every server keeps its tokens too (whichever leads
        // creates the replacement's), and the Consul servers stay 3.
        let old = PlannedHost { name: "manager0".into(), ..p[0].clone() };
        let inp = SpecInputs { leaving: std::slice::from_ref(&old), ..inp };
        let Some(v1::role_spec::Spec::Consul(c)) = &role_specs(&p[1], &inp)[0].spec else { panic!("consul") };
        let hosts: Vec<&str> = c.tokens.iter().map(|t| t.host.as_str()).collect();
        assert!(hosts.contains(&"manager0") && hosts.contains(&"manager0-u1"), "{hosts:?}");
        assert_eq!(c.bootstrap_expect, 3);
    }

    #[test]
    fn only_the_first_manager_may_initialise_and_everyone_finds_consul() {
        let p = plan(&ClusterConfig::default(), &HostNames::default());
        let addrs: std::collections::HashMap<_, _> =
            p.iter().enumerate().map(|(i, h)| (h.name.clone(), format!("10.0.0.{}", 10 + i))).collect();
        let inp = SpecInputs {
            plan: &p,
            leaving: &[],
            addresses: &addrs,
            consul_image: "consul:x",
            registry_auth: Default::default(),
            cluster: "c",
        };
        let init: Vec<bool> = p
            .iter()
            .flat_map(|h| role_specs(h, &inp))
            .filter_map(|r| match r.spec {
                Some(v1::role_spec::Spec::Manager(m)) => Some(m.designated_initializer),
                _ => None,
            })
            .collect();
        assert_eq!(init, [true, false, false]);
        let node = role_specs(&p[3], &inp);
        let Some(v1::role_spec::Spec::Node(n)) = &node[0].spec else { panic!("node spec") };
        assert_eq!(n.consul_http_addrs, ["10.0.0.10:8500", "10.0.0.11:8500", "10.0.0.12:8500"]);
        let Some(v1::role_spec::Spec::Consul(c)) = &role_specs(&p[0], &inp)[0].spec else { panic!("consul") };
        assert_eq!(c.bootstrap_expect, 3);
        // Issue 14: the Consul servers keep one token per host and role, and no secret is
        // in the plan (the control plane fills the ids).
        let tokens: Vec<(String, i32)> = c.tokens.iter().map(|t| (t.host.clone(), t.role)).collect();
        assert_eq!(tokens.len(), 3 * 2 + 2, "{tokens:?}");
        assert!(tokens.contains(&("node1".into(), v1::Role::Node as i32)));
        assert!(tokens.contains(&("manager2".into(), v1::Role::Consul as i32)));
        assert!(c.tokens.iter().all(|t| t.accessor_id.is_empty() && t.secret_id.is_empty()));
        assert!(c.management_token.is_empty() && n.consul_token.is_empty());
    }
}
