//! Step 6: roles. Assignments go out in dependency order — Consul, the first manager, the
//! other managers, the nodes — and each agent waits on what its roles depend on through
//! Consul (join data appears only once the first manager initialised the swarm), so the
//! steps overlap instead of waiting on one another. A re-run never takes a role away.

use std::collections::HashMap;

use flotilla_proto::v1;

use super::{DeployError, Run};
use crate::ops::plan::{self, PlannedHost, RoleKind};

/// Assigns every planned host its roles, in [`dependency_order`]; whether any host's
/// assignment changed (a new generation).
pub async fn assign_in_dependency_order(
    run: &Run<'_>,
    addresses: &HashMap<String, String>,
) -> Result<bool, DeployError> {
    assign(run, addresses, &[], |_| true).await
}

/// Assigns every planned host whose agent is connected (enrolled, session up) its roles, in
/// [`dependency_order`]; the others are left for a later call. Whether any host's assignment
/// changed.
pub async fn assign_connected(run: &Run<'_>, addresses: &HashMap<String, String>) -> Result<bool, DeployError> {
    assign(run, addresses, &[], connected).await
}

/// [`assign_connected`], and the connected hosts of `leaving` (no longer planned, still
/// there: `upgrade --image`'s host being replaced) assigned their roles again with the
/// others' current specs, so whichever Consul server leads keeps every host's token.
pub async fn assign_connected_and_leaving(
    run: &Run<'_>,
    addresses: &HashMap<String, String>,
    leaving: &[PlannedHost],
) -> Result<bool, DeployError> {
    assign(run, addresses, leaving, connected).await
}

fn connected(s: Option<&v1::HostStatus>) -> bool {
    s.is_some_and(|s| s.connected && !s.unreachable)
}

async fn assign(
    run: &Run<'_>,
    addresses: &HashMap<String, String>,
    leaving: &[PlannedHost],
    ready: impl Fn(Option<&v1::HostStatus>) -> bool,
) -> Result<bool, DeployError> {
    let c = run.config;
    let inputs = plan::SpecInputs {
        plan: run.planned,
        leaving,
        addresses,
        consul_image: &run.prepared.consul_image,
        registry_auth: (
            c.images.registry_username.clone(),
            std::env::var(&c.images.registry_password_env).unwrap_or_default(),
        ),
        cluster: &c.name,
    };
    let mut admin = run.admin.clone();
    let current = admin.status(v1::StatusRequest::default()).await?.into_inner();
    let mut changed = false;
    for h in dependency_order(run.planned).into_iter().chain(leaving) {
        let status = current.hosts.iter().find(|s| s.name == h.name);
        if !ready(status) {
            continue;
        }
        let specs = plan::role_specs(h, &inputs);
        let addr = addresses.get(&h.name).cloned().unwrap_or_default();
        crate::failpoint!("assign.before");
        let r = admin
            .assign(v1::AssignRequest { host_name: h.name.clone(), roles: specs, host_address: addr })
            .await?
            .into_inner();
        crate::failpoint!("assign.after");
        let before = status.map(|s| s.generation).unwrap_or(0);
        if r.generation != before {
            changed = true;
            run.p.host(&h.name, format!("assigned {} (generation {})", h.roles_text(), r.generation));
        }
    }
    Ok(changed)
}

/// Consul servers that are not managers, the managers (the first one initialises the
/// swarm), then everything else.
pub fn dependency_order(planned: &[PlannedHost]) -> Vec<&PlannedHost> {
    let mut order: Vec<&PlannedHost> = Vec::new();
    order.extend(planned.iter().filter(|h| h.has(RoleKind::Consul) && !h.has(RoleKind::Manager)));
    order.extend(planned.iter().filter(|h| h.has(RoleKind::Manager)));
    order.extend(planned.iter().filter(|h| !h.has(RoleKind::Manager) && !h.has(RoleKind::Consul)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cluster_config::ClusterConfig;

    #[test]
    fn managers_come_before_nodes_and_the_first_manager_first() {
        let planned = plan::plan(&ClusterConfig::default(), &Default::default());
        let names: Vec<_> = dependency_order(&planned).iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["manager0", "manager1", "manager2", "node0", "node1"]);
    }
}
