//! The reconcile loop: the agent as a controller. The desired state is the latest
//! assignment; every pass re-reads the Engine's actual state (containers labelled
//! `flotilla.*`, the swarm), converges it role by role — consul, then manager, then node —
//! publishes each role's status, and requeues: soon while converging or failing, slowly when
//! all is running. Passes are idempotent: a second pass over a converged host changes
//! nothing, and a restarted agent adopts what it finds.
//!
//! A role the coordinator asked to hold down ([`Holds`], the failover drill's fault) is the
//! one exception: while its lease runs, the pass keeps its container stopped instead of
//! restoring it, and reports the role degraded.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use flotilla_proto::v1::{self, Role, RoleState, RoleStatus, role_spec::Spec};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::roles::{self, RoleCtx, RoleError, consul, manager, node, status, swarm};

/// Requeue after a pass where every role runs.
pub const REQUEUE_STEADY: Duration = Duration::from_secs(10);
/// Requeue while converging.
pub const REQUEUE_CONVERGING: Duration = Duration::from_secs(1);

/// What the health samples report besides role statuses.
#[derive(Clone, Debug, Default)]
pub struct Views {
    pub consul: Option<v1::ConsulView>,
    pub swarm: Option<v1::SwarmView>,
}

/// Roles held down by the coordinator (`EngineAction` STOP_ROLE), each until its lease ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holds(HashMap<i32, tokio::time::Instant>);

impl Holds {
    /// Holds `role` down for `lease`.
    pub fn hold(&mut self, role: Role, lease: Duration) {
        self.0.insert(role as i32, tokio::time::Instant::now() + lease);
    }

    /// Releases `role`; whether it was held.
    pub fn release(&mut self, role: Role) -> bool {
        self.0.remove(&(role as i32)).is_some()
    }

    /// How much longer `role` stays held down (`None`: not held, or the lease ran out).
    pub fn remaining(&self, role: Role) -> Option<Duration> {
        let until = *self.0.get(&(role as i32))?;
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

pub struct Reconciler {
    pub docker: Docker,
    pub host: String,
    pub desired: watch::Receiver<Option<v1::Assignment>>,
    /// Roles held down (see [`Holds`]); a change triggers a pass at once.
    pub holds: watch::Receiver<Holds>,
    pub statuses: watch::Sender<Vec<RoleStatus>>,
    pub views: watch::Sender<Views>,
    pub passes: watch::Sender<u64>,
    pub shutdown: CancellationToken,
}

/// Checks an assignment before acting on it.
pub fn validate(a: &v1::Assignment) -> Result<(), RoleError> {
    if a.cluster.is_empty() {
        return Err(RoleError::Spec("assignment.cluster is empty".into()));
    }
    if !a.roles.is_empty() && a.host_address.parse::<std::net::IpAddr>().is_err() {
        return Err(RoleError::Spec(format!("assignment.host_address '{}' is not an IP address", a.host_address)));
    }
    let mut seen = Vec::new();
    for r in &a.roles {
        let (name, res) = match &r.spec {
            Some(Spec::Consul(s)) => ("consul", consul::validate(s)),
            Some(Spec::Manager(s)) => ("manager", manager::validate(s)),
            Some(Spec::Node(s)) => ("node", node::validate(s)),
            None => return Err(RoleError::Spec("a role spec is empty".into())),
        };
        res?;
        if seen.contains(&name) {
            return Err(RoleError::Spec(format!("role {name} is assigned twice")));
        }
        seen.push(name);
    }
    Ok(())
}

impl Reconciler {
    pub async fn run(mut self) {
        loop {
            let assignment = self.desired.borrow_and_update().clone();
            let next = match assignment {
                None => Duration::from_secs(30),
                Some(a) => {
                    let st = self.pass(&a).await;
                    let steady = st.iter().all(|s| s.state == RoleState::Running as i32);
                    self.statuses.send_if_modified(|cur| {
                        if *cur != st {
                            *cur = st;
                            true
                        } else {
                            false
                        }
                    });
                    self.passes.send_modify(|n| *n += 1);
                    if steady { REQUEUE_STEADY } else { REQUEUE_CONVERGING }
                }
            };
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                r = self.desired.changed() => if r.is_err() { return },
                r = self.holds.changed() => if r.is_err() { return },
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    /// One reconcile pass over `a`; returns every desired role's status.
    pub async fn pass(&self, a: &v1::Assignment) -> Vec<RoleStatus> {
        let wanted: Vec<Role> = a
            .roles
            .iter()
            .filter_map(|r| match &r.spec {
                Some(Spec::Consul(_)) => Some(Role::Consul),
                Some(Spec::Manager(_)) => Some(Role::Manager),
                Some(Spec::Node(_)) => Some(Role::Node),
                None => None,
            })
            .collect();
        if let Err(e) = validate(a) {
            return failed_all(&wanted, &e.to_string());
        }
        if let Err(e) = self.docker.ping().await {
            self.views.send_replace(Views::default());
            return failed_all(&wanted, &format!("the Docker Engine does not answer: {}", roles::engine_message(&e)));
        }
        let ctx = RoleCtx {
            docker: &self.docker,
            cluster: &a.cluster,
            host: &self.host,
            host_address: &a.host_address,
            progress: &self.statuses,
        };
        let consul_spec = a.roles.iter().find_map(|r| match &r.spec {
            Some(Spec::Consul(s)) => Some(s),
            _ => None,
        });
        let manager_spec = a.roles.iter().find_map(|r| match &r.spec {
            Some(Spec::Manager(s)) => Some(s),
            _ => None,
        });
        let node_spec = a.roles.iter().find_map(|r| match &r.spec {
            Some(Spec::Node(s)) => Some(s),
            _ => None,
        });
        let mut out = Vec::new();

        // Removals first, in reverse dependency order: node, manager (demoted first), consul.
        let consul_addrs: Vec<String> = manager_spec
            .map(|m| m.consul_http_addrs.clone())
            .or_else(|| node_spec.map(|n| n.consul_http_addrs.clone()))
            .unwrap_or_default();
        if manager_spec.is_none() {
            if let Err(e) = manager::remove(&ctx, &consul_addrs, node_spec.is_some()).await {
                tracing::warn!(error = %e, "removing the manager role");
            }
        }
        if manager_spec.is_none() && node_spec.is_none() {
            match node::remove(&ctx).await {
                Ok(true) => tracing::info!("left the swarm"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leaving the swarm"),
            }
        }
        if consul_spec.is_none() {
            match consul::remove(&ctx).await {
                Ok(true) => tracing::info!("removed the consul role"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "removing the consul role"),
            }
        }

        // The Engine's configuration comes first: a restart for it must not interrupt roles
        // that were just started.
        if let Some(m) = manager_spec.filter(|m| !m.engine_tls_cert_pem.is_empty()) {
            match crate::engine_tls::ensure(&ctx, m).await {
                Ok(false) => {}
                Ok(true) => {
                    let mut st = vec![status(
                        Role::Manager,
                        RoleState::Starting,
                        "Engine restarted with its TLS listener on 2376",
                    )];
                    if consul_spec.is_some() {
                        st.insert(0, status(Role::Consul, RoleState::Pending, "waiting for the Engine's restart"));
                    }
                    if node_spec.is_some() {
                        st.push(status(Role::Node, RoleState::Pending, "waiting for the Engine's restart"));
                    }
                    return st;
                }
                Err(e) => return failed_all(&wanted, &format!("configuring the Engine's TLS listener: {e}")),
            }
        }
        let consul_hold = self.holds.borrow().remaining(Role::Consul);
        match (consul_spec, consul_hold) {
            (Some(_), Some(_)) => out.push(settle(Role::Consul, consul::hold_down(&ctx).await)),
            (Some(s), None) => out.push(settle(Role::Consul, consul::ensure(&ctx, s).await)),
            (None, _) => {}
        }
        if let Some(s) = manager_spec {
            out.push(settle(Role::Manager, manager::ensure(&ctx, s).await));
        }
        if let Some(s) = node_spec {
            out.push(settle(Role::Node, node::ensure(&ctx, s, manager_spec.is_some()).await));
        }

        let views = Views {
            consul: if consul_spec.is_some() && consul_hold.is_none() { consul::view().await } else { None },
            swarm: swarm::view(&self.docker).await,
        };
        self.views.send_replace(views);
        out
    }
}

fn settle(role: Role, r: Result<RoleStatus, RoleError>) -> RoleStatus {
    match r {
        Ok(s) => s,
        Err(RoleError::Engine(e)) => status(role, RoleState::Failed, roles::engine_message(&e)),
        Err(e) => status(role, RoleState::Failed, e.to_string()),
    }
}

fn failed_all(roles: &[Role], message: &str) -> Vec<RoleStatus> {
    roles.iter().map(|r| status(*r, RoleState::Failed, message)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn issue_7_a_held_role_stays_held_until_released_or_its_lease_ends() {
        let mut h = Holds::default();
        assert_eq!(h.remaining(Role::Consul), None);
        h.hold(Role::Consul, Duration::from_secs(30));
        assert_eq!(h.remaining(Role::Consul), Some(Duration::from_secs(30)));
        assert_eq!(h.remaining(Role::Manager), None);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(h.remaining(Role::Consul), Some(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(h.remaining(Role::Consul), None, "the lease ran out: the role is restored");

        h.hold(Role::Consul, Duration::from_secs(30));
        assert!(h.release(Role::Consul));
        assert_eq!(h.remaining(Role::Consul), None);
        assert!(!h.release(Role::Consul));
    }
}
