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

use crate::engine_tls::Applied;
use crate::roles::{self, RoleCtx, RoleError, consul, manager, node, status, swarm};

/// Requeue after a pass where every role runs.
pub const REQUEUE_STEADY: Duration = Duration::from_secs(10);
/// Requeue while converging. Roles wait on each other through Consul (its leader, the ACLs,
/// the swarm's join data): each wait ends at the first pass after what it waits for appears,
/// so this interval is paid once per hop of a deploy (issue 19: 1 s cost ~0.5 s a hop; a
/// pass is a few local Engine and Consul calls).
pub const REQUEUE_CONVERGING: Duration = Duration::from_millis(250);

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
    /// The Engine's own key ([`crate::engine_key`]), for a manager's TLS listener.
    pub engine_key_pem: String,
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
        let spec = r.spec.as_ref().ok_or_else(|| RoleError::Spec("a role spec is empty".into()))?;
        match spec {
            Spec::Consul(s) => consul::validate(s)?,
            Spec::Manager(s) => manager::validate(s)?,
            Spec::Node(s) => node::validate(s)?,
        }
        let role = role_of(spec);
        if seen.contains(&role) {
            return Err(RoleError::Spec(format!("role {} is assigned twice", role.name())));
        }
        seen.push(role);
    }
    Ok(())
}

/// The role a spec is for.
fn role_of(spec: &Spec) -> Role {
    match spec {
        Spec::Consul(_) => Role::Consul,
        Spec::Manager(_) => Role::Manager,
        Spec::Node(_) => Role::Node,
    }
}

/// An assignment's spec of each role (`None`: the role is not assigned).
struct Specs<'a> {
    consul: Option<&'a v1::ConsulSpec>,
    manager: Option<&'a v1::ManagerSpec>,
    node: Option<&'a v1::NodeSpec>,
}

impl<'a> Specs<'a> {
    fn of(a: &'a v1::Assignment) -> Self {
        let specs = || a.roles.iter().filter_map(|r| r.spec.as_ref());
        Self {
            consul: specs().find_map(|s| match s {
                Spec::Consul(s) => Some(s),
                _ => None,
            }),
            manager: specs().find_map(|s| match s {
                Spec::Manager(s) => Some(s),
                _ => None,
            }),
            node: specs().find_map(|s| match s {
                Spec::Node(s) => Some(s),
                _ => None,
            }),
        }
    }
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
        let wanted: Vec<Role> = a.roles.iter().filter_map(|r| r.spec.as_ref().map(role_of)).collect();
        if let Err(e) = validate(a) {
            return failed_all(&wanted, &e.to_string());
        }
        let ctx = RoleCtx {
            docker: &self.docker,
            cluster: &a.cluster,
            host: &self.host,
            host_address: &a.host_address,
            progress: &self.statuses,
        };
        let specs = Specs::of(a);
        // The Engine's configuration comes first: a manager's Engine held at boot starts here,
        // with its listener, and a restart must not interrupt roles that were just started.
        if let Some(restarting) = configure_engine(&ctx, &specs, &wanted, &self.engine_key_pem).await {
            return restarting;
        }
        if let Err(e) = self.docker.ping().await {
            self.views.send_replace(Views::default());
            return failed_all(&wanted, &format!("the Docker Engine does not answer: {}", roles::engine_message(&e)));
        }
        remove_unassigned(&ctx, &specs).await;
        let consul_held = self.holds.borrow().remaining(Role::Consul).is_some();
        let out = ensure_assigned(&ctx, &specs, consul_held).await;
        let views = Views {
            consul: if specs.consul.is_some() && !consul_held { consul::view().await } else { None },
            swarm: swarm::view(&self.docker).await,
        };
        self.views.send_replace(views);
        out
    }
}

/// Removes the roles `specs` does not assign, in reverse dependency order: node, manager
/// (demoted first), consul. Failures are logged; the next pass tries again.
async fn remove_unassigned(ctx: &RoleCtx<'_>, specs: &Specs<'_>) {
    if specs.manager.is_none()
        && let Err(e) = manager::remove(ctx, specs.node.is_some()).await
    {
        tracing::warn!(error = %e, "removing the manager role");
    }
    if specs.manager.is_none() && specs.node.is_none() {
        match node::remove(ctx).await {
            Ok(true) => tracing::info!("left the swarm"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leaving the swarm"),
        }
    }
    if specs.consul.is_none() {
        match consul::remove(ctx).await {
            Ok(true) => tracing::info!("removed the consul role"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "removing the consul role"),
        }
    }
}

/// Converges the Engine's TLS listener of a manager (starting an Engine held at boot with
/// it); with no listener asked for, lifts a hold and starts the Engine as it is. `Some` ends
/// the pass with these statuses: the Engine restarted for it, or it failed.
async fn configure_engine(
    ctx: &RoleCtx<'_>,
    specs: &Specs<'_>,
    wanted: &[Role],
    own_key_pem: &str,
) -> Option<Vec<RoleStatus>> {
    let Some(m) = specs.manager.filter(|m| !m.engine_tls_cert_pem.is_empty()) else {
        return match crate::engine_tls::lift_hold_and_start(ctx.docker).await {
            Ok(_) => None,
            Err(e) => Some(failed_all(wanted, &format!("starting the Engine held at boot: {e}"))),
        };
    };
    match crate::engine_tls::ensure(ctx, m, own_key_pem).await {
        Ok(Applied::Unchanged | Applied::Started) => None,
        Ok(Applied::Restarted) => {
            let mut st =
                vec![status(Role::Manager, RoleState::Starting, "Engine restarted with its TLS listener on 2376")];
            if specs.consul.is_some() {
                st.insert(0, status(Role::Consul, RoleState::Pending, "waiting for the Engine's restart"));
            }
            if specs.node.is_some() {
                st.push(status(Role::Node, RoleState::Pending, "waiting for the Engine's restart"));
            }
            Some(st)
        }
        Err(e) => Some(failed_all(wanted, &format!("configuring the Engine's TLS listener: {e}"))),
    }
}

/// Converges the assigned roles in dependency order — consul (or holds it down), manager,
/// node — and returns their statuses.
async fn ensure_assigned(ctx: &RoleCtx<'_>, specs: &Specs<'_>, consul_held: bool) -> Vec<RoleStatus> {
    let mut out = Vec::new();
    match (specs.consul, consul_held) {
        (Some(_), true) => out.push(settle(Role::Consul, consul::hold_down(ctx).await)),
        (Some(s), false) => out.push(settle(Role::Consul, consul::ensure(ctx, s).await)),
        (None, _) => {}
    }
    if let Some(s) = specs.manager {
        out.push(settle(Role::Manager, manager::ensure(ctx, s).await));
    }
    if let Some(s) = specs.node {
        out.push(settle(Role::Node, node::ensure(ctx, s, specs.manager.is_some()).await));
    }
    out
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
