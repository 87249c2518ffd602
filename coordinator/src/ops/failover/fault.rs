//! The fault and its undoing: taking the target down ([`fault`]: its agent stops the Engine
//! or holds Consul down, or the provider stops the host; or, planned, demoting it so its
//! leadership is handed over), restoring it ([`restore`], a handover's by promoting it back,
//! retried while the control plane is away), and the clean-up on every way out of the drill
//! ([`clean_up`], with [`left_over`] and a manual fix when it is cut short).

use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::Docker;
use flotilla_proto::v1;

use super::{
    CLEANUP_TIMEOUT, Component, Drill, FailoverError, HELLO_SERVICE, Mode, Setup, consul, kv_probe_key, lock, swarm,
};
use crate::ops::handover;
use crate::poll::{Attempt, PollError, poll_until};
use crate::providers::{HostState, Provider, ProviderError};

/// What the drill has done that the clean-up must undo.
#[derive(Default)]
pub(super) struct Pending {
    /// The managers' Engines (to remove the hello service through).
    pub(super) engines: Vec<(String, Docker)>,
    /// The Consul servers' HTTP APIs (`ip:8500`, to remove the KV probe key through).
    pub(super) consul_addrs: Vec<String>,
    /// The hello service may exist.
    pub(super) hello: bool,
    /// The KV probe key may exist.
    pub(super) kv_probe: bool,
    /// The fault was issued on this host and is not undone yet.
    pub(super) faulted: Option<String>,
}

/// Why the target could not be restored.
#[derive(Debug, thiserror::Error)]
pub(super) enum RestoreError {
    /// The control plane refused the engine action, or was still away (restarting, or the
    /// agent not reconnected) at the deadline.
    #[error("{host}: {}", .status.message())]
    ControlPlane { host: String, status: tonic::Status },
    #[error("starting host {host}: {error}")]
    Start { host: String, error: ProviderError },
    /// Promoting a demoted target back failed until the deadline (the last reason).
    #[error("promoting {host} back: {last}")]
    Promote { host: String, last: String },
}

/// How long the agent holds Consul down for the drill at most: well past the drill's end,
/// so only an abandoned drill ever reaches it.
fn hold_lease(bound: Duration) -> u32 {
    u32::try_from(bound.as_secs() * 3 + 60).unwrap_or(u32::MAX)
}

/// Takes the target down; a planned handover returns when the swarm accepted it (from the
/// fault).
pub(super) async fn fault(d: &Drill, s: &Setup, fault_at: Instant) -> Result<Option<f64>, FailoverError> {
    let target = s.target.as_str();
    // Recorded first: an interrupt while the fault is being issued still restores.
    lock(&d.pending).faulted = Some(target.to_string());
    let say = &d.say;
    match (d.opts.mode, d.opts.component) {
        (Mode::Handover, _) => return demote_target(d, s, fault_at).await.map(Some),
        (Mode::Engine, Component::Swarm | Component::Node) => {
            d.admin
                .clone()
                .engine_action(v1::EngineActionRequest {
                    host_name: target.to_string(),
                    kind: v1::engine_action::Kind::StopEngine as i32,
                    ..Default::default()
                })
                .await?;
            say.event(fault_at.elapsed(), format!("fault: {target}'s agent told to stop its Docker Engine"));
        }
        (Mode::Engine, Component::Consul) => {
            let hold_s = hold_lease(d.opts.bound);
            d.admin
                .clone()
                .engine_action(v1::EngineActionRequest {
                    host_name: target.to_string(),
                    kind: v1::engine_action::Kind::StopRole as i32,
                    role: v1::Role::Consul as i32,
                    hold_s,
                })
                .await?;
            say.event(
                fault_at.elapsed(),
                format!("fault: {target}'s agent told to kill its Consul container and hold the role down (lease {hold_s} s)"),
            );
        }
        (Mode::Terminate, _) => {
            say.event(
                Duration::ZERO,
                format!(
                    "fault: the {} provider terminates host {target} for good; auto-heal must replace it",
                    d.provider.kind()
                ),
            );
            let (provider, t, say) = (d.provider.clone(), target.to_string(), d.say.clone());
            tokio::spawn(async move {
                match provider.terminate(&t).await {
                    Ok(()) => say.event(fault_at.elapsed(), format!("host {t} terminated (provider)")),
                    Err(e) => say.event(fault_at.elapsed(), format!("terminating host {t} failed: {e}")),
                };
            });
        }
        (Mode::Host, _) => {
            say.event(Duration::ZERO, format!("fault: the {} provider stops host {target}", d.provider.kind()));
            // Stopping waits for the host's shutdown; probing runs meanwhile.
            let (provider, t, say) = (d.provider.clone(), target.to_string(), d.say.clone());
            tokio::spawn(async move {
                match provider.stop(&t).await {
                    Ok(()) => say.event(fault_at.elapsed(), format!("host {t} stopped (provider)")),
                    Err(e) => say.event(fault_at.elapsed(), format!("stopping host {t} failed: {e}")),
                };
            });
        }
    }
    Ok(None)
}

/// The planned change: the target demoted through the first other manager that lists the
/// swarm's nodes; returns when the swarm accepted it (from the fault).
async fn demote_target(d: &Drill, s: &Setup, fault_at: Instant) -> Result<f64, FailoverError> {
    let target = s.target.as_str();
    let others: Vec<(String, Docker)> =
        s.engines.iter().filter(|(n, _)| **n != s.target).map(|(n, e)| (n.clone(), e.clone())).collect();
    let (through, nodes) = handover::list_nodes(&others).await?;
    let node = handover::node_of(&nodes, target, Some(&s.target_ip))
        .and_then(|n| n.id.clone())
        .ok_or_else(|| handover::HandoverError::NoNode(target.to_string()))?;
    let engine = others.iter().find(|(n, _)| *n == through).map(|(_, e)| e).expect("it answered");
    d.say.event(
        fault_at.elapsed(),
        format!("handover: {target} demoted through {through}'s Engine, so swarmkit hands its leadership over"),
    );
    handover::demote(engine, &node).await.map_err(|e| handover::HandoverError::Refused {
        what: "demoting",
        host: target.to_string(),
        message: flotilla_agent::roles::engine_message(&e),
    })?;
    Ok(d.say.event(fault_at.elapsed(), format!("handover: the swarm accepted {target}'s demotion")))
}

/// Undoes the fault on `target`, retrying until `deadline` what needs the control plane (it
/// may be restarting, or the agent reconnecting). Returns what was done.
pub(super) async fn restore(d: &Drill, target: &str, deadline: Instant) -> Result<String, RestoreError> {
    let what = match d.opts.mode {
        Mode::Engine => restore_engine(d, target, deadline).await?,
        Mode::Host => restore_host(d, target, deadline).await?,
        Mode::Handover => restore_handover(d, target, deadline).await?,
        // Nothing to undo: the host is gone; auto-heal replaces it (`replaced.rs`).
        Mode::Terminate => format!("{target} was terminated; only auto-heal brings it back (`coordinator heal`)"),
    };
    lock(&d.pending).faulted = None;
    Ok(what)
}

/// Tells `target`'s agent to start its Engine (Swarm) or release its Consul role (Consul),
/// retried every 500 ms while the control plane or the host's session is away.
async fn restore_engine(d: &Drill, target: &str, deadline: Instant) -> Result<String, RestoreError> {
    let (kind, role, what) = match d.opts.component {
        Component::Swarm | Component::Node => (
            v1::engine_action::Kind::StartEngine,
            v1::Role::Unspecified,
            format!("{target}'s agent told to start its Docker Engine"),
        ),
        Component::Consul => (
            v1::engine_action::Kind::StartRole,
            v1::Role::Consul,
            format!("{target}'s agent told to release its Consul role"),
        ),
    };
    let request =
        v1::EngineActionRequest { host_name: target.to_string(), kind: kind as i32, role: role as i32, hold_s: 0 };
    // When the drill started waiting, and the last refusal it waited through.
    let waited: Mutex<Option<Instant>> = Default::default();
    let last: Mutex<Option<tonic::Status>> = Default::default();
    let done = poll_until("the control plane to carry out the restore", deadline, Duration::from_millis(500), || {
        let (mut admin, request, waited, last) = (d.admin.clone(), request.clone(), &waited, &last);
        async move {
            match admin.engine_action(request).await {
                Ok(_) => Ok(Attempt::Done(())),
                Err(e)
                    if matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled) =>
                {
                    let mut w = lock(waited);
                    if w.is_none() {
                        d.say.note(format!(
                            "restore: waiting for the control plane and {target}'s session ({})",
                            e.message()
                        ));
                        *w = Some(Instant::now());
                    }
                    let seen = e.message().to_string();
                    *lock(last) = Some(e);
                    Ok(Attempt::NotYet(seen))
                }
                Err(e) => Err(e),
            }
        }
    })
    .await;
    let refused = |status| RestoreError::ControlPlane { host: target.to_string(), status };
    match done {
        Ok(()) => {}
        Err(PollError::Failed(status)) => return Err(refused(status)),
        Err(PollError::TimedOut { last: seen, .. }) => {
            return Err(refused(lock(&last).take().unwrap_or_else(|| tonic::Status::unavailable(seen))));
        }
    }
    Ok(match *lock(&waited) {
        Some(w) => {
            format!("{what} (after waiting {:.1} s for the control plane and its session)", w.elapsed().as_secs_f64())
        }
        None => what,
    })
}

/// Has the provider start `target` — once it is stopped: the stop may still be in progress
/// (EC2: `stopping` too — an instance cannot be started until it is `stopped`), so its state
/// is looked at every 200 ms until `deadline` first.
async fn restore_host(d: &Drill, target: &str, deadline: Instant) -> Result<String, RestoreError> {
    let _ = poll_until("the host stopped", deadline, Duration::from_millis(200), move || async move {
        Ok::<_, Infallible>(match d.provider.host(target).await {
            Ok(h) if matches!(h.state, HostState::Running | HostState::Stopping) => {
                Attempt::NotYet(format!("{:?}", h.state))
            }
            _ => Attempt::Done(()),
        })
    })
    .await;
    d.provider.start(target).await.map_err(|error| RestoreError::Start { host: target.to_string(), error })?;
    Ok(format!("the {} provider started host {target}", d.provider.kind()))
}

/// Promotes a demoted target back to a manager through whichever manager lists the
/// swarm's nodes, retried every 500 ms (the swarm may be between leaders) until `deadline`.
async fn restore_handover(d: &Drill, target: &str, deadline: Instant) -> Result<String, RestoreError> {
    let engines = lock(&d.pending).engines.clone();
    let engines = &engines;
    let promoted = poll_until("the target promoted back", deadline, Duration::from_millis(500), || async move {
        let (through, nodes) = match handover::list_nodes(engines).await {
            Ok(x) => x,
            Err(e) => return Ok::<_, Infallible>(Attempt::NotYet(e.to_string())),
        };
        let Some(id) = handover::node_of(&nodes, target, None).and_then(|n| n.id.clone()) else {
            return Ok(Attempt::NotYet(format!("the swarm has no node for {target}")));
        };
        let engine = engines.iter().find(|(n, _)| *n == through).map(|(_, e)| e).expect("it answered");
        Ok(match handover::promote(engine, &id).await {
            Ok(()) => Attempt::Done(through),
            Err(e) => Attempt::NotYet(flotilla_agent::roles::engine_message(&e)),
        })
    })
    .await;
    match promoted {
        Ok(through) => Ok(format!("{target} promoted back to a manager through {through}'s Engine")),
        Err(PollError::TimedOut { last, .. }) => Err(RestoreError::Promote { host: target.to_string(), last }),
        Err(PollError::Failed(e)) => match e {},
    }
}

/// How to undo by hand what the clean-up could not.
fn manual_fix(d: &Drill, target: &str) -> String {
    let Provider::Lab(lab) = d.provider.as_ref() else {
        return match d.opts.mode {
            Mode::Host => {
                format!("start the instance by hand: `aws ec2 start-instances` for the instance tagged Name={target}")
            }
            Mode::Terminate => format!("replace {target}: `coordinator heal`"),
            Mode::Handover => format!("promote it back through a manager: `docker node promote {target}`"),
            Mode::Engine => format!(
                "on {target} (ssh or SSM): `sudo systemctl start docker` / `sudo systemctl restart flotilla-agent`"
            ),
        };
    };
    let container = lab.container_name(target);
    match (d.opts.mode, d.opts.component) {
        (Mode::Engine, Component::Swarm | Component::Node) => {
            format!("start its Engine by hand: `docker exec {container} systemctl start docker`")
        }
        (Mode::Engine, Component::Consul) => format!(
            "its agent restores Consul by itself when the hold's lease ends ({} s after the fault) or the agent restarts (`docker exec {container} systemctl restart flotilla-agent`)",
            hold_lease(d.opts.bound)
        ),
        (Mode::Host, _) => format!("start the host by hand: `docker start {container}`"),
        (Mode::Terminate, _) => format!("replace {target}: `coordinator heal`"),
        (Mode::Handover, _) => format!("promote it back through a manager: `docker node promote {target}`"),
    }
}

/// What is left undone (after a clean-up was cut short).
pub(super) fn left_over(d: &Drill) -> Vec<String> {
    let p = lock(&d.pending);
    let mut out = Vec::new();
    if let Some(t) = &p.faulted {
        out.push(format!("{t} is still down: {}", manual_fix(d, t)));
    }
    if p.hello {
        out.push(format!("the drill's service may be left: `docker service rm {HELLO_SERVICE}` through the leader"));
    }
    out
}

/// Undoes what the drill did and has not undone itself: restores the target, removes the
/// KV probe key and the hello service. Returns what it did.
pub(super) async fn clean_up(d: &Drill) -> Vec<String> {
    let patience = d.opts.bound.max(CLEANUP_TIMEOUT);
    let mut notes = Vec::new();
    let faulted = lock(&d.pending).faulted.clone();
    if let Some(t) = faulted {
        match restore(d, &t, Instant::now() + patience).await {
            Ok(what) => notes.push(format!("restored {t}: {what}")),
            Err(e) => notes.push(format!("could NOT restore {t} ({e}): {}", manual_fix(d, &t))),
        }
    }
    let (kv, addrs, hello, engines) = {
        let p = lock(&d.pending);
        (p.kv_probe, p.consul_addrs.clone(), p.hello, p.engines.clone())
    };
    if kv {
        let key = kv_probe_key(&d.opts.cluster);
        match consul::delete_key(&addrs, &key, &d.consul_token, Instant::now() + patience).await {
            Ok(()) => lock(&d.pending).kv_probe = false,
            Err(e) => notes.push(format!("could not remove the Consul key {key} ({e})")),
        }
    }
    if hello {
        match swarm::remove_hello(&engines, Instant::now() + patience).await {
            Ok(true) => {
                lock(&d.pending).hello = false;
                notes.push(format!("removed the drill's service {HELLO_SERVICE}"));
            }
            Ok(false) => lock(&d.pending).hello = false,
            Err(e) => notes.push(format!(
                "could not remove the drill's service {HELLO_SERVICE} ({e}): `docker service rm {HELLO_SERVICE}` once the swarm has a leader"
            )),
        }
    }
    notes
}
