//! The planner: cluster config → hosts → roles. Pure.
//!
//! The seed's topology on Swarm mode: `manager0…` (each also a Consul server by default, a
//! 3-server Consul cluster for the default 3 managers), `node0…`. `manager0` is designated to
//! initialise the swarm.

use flotilla_proto::v1;

use crate::ops::cluster_config::{ClusterConfig, ConsulPlacement};

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
}

impl PlannedHost {
    pub fn has(&self, r: RoleKind) -> bool {
        self.roles.contains(&r)
    }
}

pub fn plan(c: &ClusterConfig) -> Vec<PlannedHost> {
    let mut out = Vec::new();
    for i in 0..c.managers {
        let mut roles = vec![RoleKind::Manager];
        if c.consul == ConsulPlacement::Managers {
            roles.insert(0, RoleKind::Consul);
        }
        out.push(PlannedHost { name: format!("manager{i}"), roles, primary: RoleKind::Manager });
    }
    for i in 0..c.nodes {
        out.push(PlannedHost { name: format!("node{i}"), roles: vec![RoleKind::Node], primary: RoleKind::Node });
    }
    out
}

/// What the role specs need to know about the cluster.
pub struct SpecInputs<'a> {
    pub plan: &'a [PlannedHost],
    /// host name → private IP.
    pub addresses: &'a std::collections::HashMap<String, String>,
    pub consul_image: &'a str,
    /// Registry credentials for role images: (username, password); empty: anonymous.
    pub registry_auth: (String, String),
    pub cluster: &'a str,
}

/// The role specs of one host. The control plane fills in secrets (Consul's gossip key,
/// the Engine's TLS certificate) when it stores the assignment.
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
                encrypt_key: String::new(),
                datacenter: inp.cluster.to_string(),
            }),
            RoleKind::Manager => v1::role_spec::Spec::Manager(v1::ManagerSpec {
                designated_initializer: first_manager == Some(host.name.as_str()),
                consul_http_addrs: consul_http.clone(),
                ..Default::default()
            }),
            RoleKind::Node => v1::role_spec::Spec::Node(v1::NodeSpec { consul_http_addrs: consul_http.clone() }),
        };
        out.push(v1::RoleSpec { spec: Some(spec) });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_plan_is_three_managers_with_consul_and_two_nodes() {
        let p = plan(&ClusterConfig::default());
        let names: Vec<_> = p.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["manager0", "manager1", "manager2", "node0", "node1"]);
        assert!(p[..3].iter().all(|h| h.roles == [RoleKind::Consul, RoleKind::Manager]));
        assert!(p[3..].iter().all(|h| h.roles == [RoleKind::Node]));
    }

    #[test]
    fn only_the_first_manager_may_initialise_and_everyone_finds_consul() {
        let p = plan(&ClusterConfig::default());
        let addrs: std::collections::HashMap<_, _> =
            p.iter().enumerate().map(|(i, h)| (h.name.clone(), format!("10.0.0.{}", 10 + i))).collect();
        let inp = SpecInputs {
            plan: &p,
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
    }
}
