//! The control plane's shared state — store, PKI, live sessions, clock, settings — and the
//! operations the admin API exposes on it (tokens, revocation, status — from the agents'
//! last samples, or fresh ones asked for).

mod assign;
mod follow_logs;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1;

use crate::control_plane::audit::refusals::Refusals;
use crate::control_plane::clock::Clock;
use crate::control_plane::consul::ConsulSecrets;
use crate::control_plane::operators::caller::Caller;
use crate::control_plane::pki::{Pki, PkiError};
use crate::control_plane::session::grants::Grants;
use crate::control_plane::session::registry::Sessions;
use crate::control_plane::session::renewing::Renewing;
use crate::control_plane::settings::{ServeConfig, valid_name};
use crate::control_plane::store::{AuditEvent, Store, StoreError};
use crate::control_plane::tokens;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("'{0}' is not a valid host name: use 1-63 of a-z, 0-9 and '-', not starting or ending with '-'")]
    BadHostName(String),
    #[error("token TTL {0:?} is too long (at most {max:?})", max = tokens::MAX_TTL)]
    TtlTooLong(Duration),
    #[error("no host named '{0}' is known to this cluster")]
    UnknownHost(String),
    #[error("invalid assignment for host '{host}': {message}")]
    BadAssignment { host: String, message: String },
    #[error(
        "host '{host}' sent a CSR for its Engine's key that cannot be signed: {source}; remove engine-key.pem from its agent's state directory and restart the agent to make a new one"
    )]
    EngineCsr { host: String, source: PkiError },
    #[error("host '{0}' has no open session; its agent cannot be asked now")]
    NotConnected(String),
    #[error("an engine action needs a kind (stop or start the Engine, stop or start a role)")]
    NoActionKind,
    #[error(
        "a role action needs a role with a container of its own: only consul (manager and node run inside the Engine: stop the Engine instead)"
    )]
    NoRoleContainer,
}

/// How long a role stays held down when `EngineActionRequest.hold_s` is 0.
pub const DEFAULT_ROLE_HOLD_S: u32 = 600;

/// How long a `StatusRequest { fresh: true }` waits for the agents' samples.
pub const FRESH_SAMPLE_WAIT: Duration = Duration::from_secs(3);

pub struct ControlPlane {
    pub config: ServeConfig,
    pub store: Store,
    pub pki: Pki,
    /// The Consul management token, the per-host Consul tokens, the Consul CA.
    pub consul: ConsulSecrets,
    pub sessions: Sessions,
    pub logs: crate::control_plane::log_router::LogRouter,
    pub clock: Clock,
    /// The agent port's address as bound.
    pub agent_endpoint: String,
    /// The agent binary this control plane serves, if any.
    pub agent_binary: Option<Arc<crate::control_plane::agent_binary::AgentBinary>>,
    /// Cancelled to stop the control plane (`coordinator stop`).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The agent port's caps and counters.
    pub port: flotilla_proto::tls::Port,
    /// The descriptor limit in force (raised to the hard limit at start).
    pub descriptor_limit: u64,
    pub enroll_limit: crate::control_plane::enroll_limit::EnrollLimit,
    /// What each host certificate holds open, to end it when the certificate stops counting.
    pub grants: Grants,
    /// Hosts with a certificate renewal in progress.
    pub renewing: Renewing,
    /// Refused calls counted since the last flush to the store.
    pub refusals: Refusals,
    /// Prometheus counters (`metrics.rs`); the rest is read live at scrape time.
    pub metrics: crate::control_plane::metrics::Metrics,
    /// Auto-heal's policy and progress.
    pub healer: crate::control_plane::healer::Healer,
    /// Backups being taken (issue 16).
    pub backups: crate::control_plane::backup::Backups,
    /// Agent upgrades under way (issue 17, `upgrade --agent`).
    pub agent_upgrades: crate::control_plane::agent_upgrade::AgentUpgrades,
    /// Where `/metrics` and the status page listen, once bound (`web.rs`); `status` shows it.
    pub metrics_address: std::sync::OnceLock<std::net::SocketAddr>,
}

impl ControlPlane {
    /// Mints a one-time join token for `host`.
    pub fn create_token(&self, host: &str, ttl: Duration, by: &Caller) -> Result<tokens::Minted, ControlError> {
        if !valid_name(host) {
            return Err(ControlError::BadHostName(host.to_string()));
        }
        if ttl > tokens::MAX_TTL {
            return Err(ControlError::TtlTooLong(ttl));
        }
        let now = self.clock.now_ms();
        let minted = tokens::mint(host, ttl, now);
        self.store.write(|tx| {
            tokens::prune(tx, now)?;
            tx.put_token(&minted.hash, &minted.record)?;
            tx.audit(&AuditEvent {
                unix_ms: now,
                kind: "token.created".into(),
                host_name: host.into(),
                detail: format!("ttl {} s", ttl.as_secs()),
                peer: String::new(),
                actor: by.to_string(),
            })?;
            Ok::<_, ControlError>(())
        })?;
        Ok(minted)
    }

    /// Revokes `host`: its certificates stop working at its next call, its open session and
    /// log streams are closed now, and its outstanding join tokens are deleted.
    pub fn revoke_host(&self, host: &str, by: &Caller) -> Result<bool, ControlError> {
        let now = self.clock.now_ms();
        self.store.write(|tx| {
            let Some(mut rec) = tx.host(host)? else {
                return Err(ControlError::UnknownHost(host.to_string()));
            };
            rec.revoked = true;
            tx.put_host(&rec)?;
            tx.remove_tokens(|t| t.host_name == host)?;
            tx.audit(&AuditEvent {
                unix_ms: now,
                kind: "host.revoked".into(),
                host_name: host.into(),
                detail: String::new(),
                peer: String::new(),
                actor: by.to_string(),
            })?;
            Ok(())
        })?;
        // After the commit (see `session::grants`): the session hears why, then every stream
        // a certificate of the host holds ends.
        let closed = self
            .sessions
            .close(host, tonic::Status::permission_denied(format!("host '{host}' was revoked by the operator")));
        self.grants.cancel_host(host);
        Ok(closed)
    }

    /// Asks `host`'s agent to stop or start its Docker Engine, or to hold a role's container
    /// down and release it (the failover drill's fault and repair; see `EngineAction` in
    /// `agent.proto`). Returns once the action is queued on the host's session.
    pub fn engine_action(&self, host: &str, action: v1::EngineAction, by: &Caller) -> Result<(), ControlError> {
        use v1::engine_action::Kind;
        let kind = Kind::try_from(action.kind).unwrap_or(Kind::Unspecified);
        if kind == Kind::Unspecified {
            return Err(ControlError::NoActionKind);
        }
        let role = v1::Role::try_from(action.role).unwrap_or(v1::Role::Unspecified);
        let role_action = matches!(kind, Kind::StopRole | Kind::StartRole);
        if role_action && crate::control_plane::log_router::role_container(role).is_none() {
            return Err(ControlError::NoRoleContainer);
        }
        if self.store.host(host)?.is_none() {
            return Err(ControlError::UnknownHost(host.to_string()));
        }
        let action = v1::EngineAction {
            kind: kind as i32,
            role: if role_action { role as i32 } else { 0 },
            hold_s: match (kind, action.hold_s) {
                (Kind::StopRole, 0) => DEFAULT_ROLE_HOLD_S,
                (Kind::StopRole, s) => s,
                _ => 0,
            },
        };
        let detail = match kind {
            Kind::StopRole => format!("stop_role {} (hold {} s)", role.name(), action.hold_s),
            Kind::StartRole => format!("start_role {}", role.name()),
            _ => kind.as_str_name().trim_start_matches("KIND_").to_lowercase(),
        };
        let sent = self
            .sessions
            .send(host, v1::CoordinatorMessage { body: Some(v1::coordinator_message::Body::EngineAction(action)) });
        if !sent {
            return Err(ControlError::NotConnected(host.to_string()));
        }
        self.audit_by("engine.action", host, detail, "", &by.to_string());
        Ok(())
    }

    /// The stored assignment of `host`.
    pub fn assignment_of(&self, host: &str) -> Result<Option<v1::Assignment>, ControlError> {
        use prost::Message;
        Ok(self.store.assignment(host)?.and_then(|b| v1::Assignment::decode(b.as_slice()).ok()))
    }

    /// Revokes `host` and deletes its record and assignment (scale-down, after the host
    /// was terminated).
    pub fn remove_host(&self, host: &str, by: &Caller) -> Result<bool, ControlError> {
        let closed = match self.revoke_host(host, by) {
            Ok(c) => c,
            Err(ControlError::UnknownHost(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let now = self.clock.now_ms();
        self.store.write(|tx| {
            tx.remove_host(host)?;
            tx.audit(&AuditEvent {
                unix_ms: now,
                kind: "host.removed".into(),
                host_name: host.into(),
                detail: String::new(),
                peer: String::new(),
                actor: by.to_string(),
            })?;
            Ok::<_, ControlError>(())
        })?;
        Ok(closed)
    }

    /// [`ControlPlane::status`] after asking every connected agent for a sample now and
    /// waiting (at most `wait`) for their answers; `HostStatus.fresh` says who answered.
    pub async fn fresh_status(&self, wait: Duration) -> Result<v1::StatusResponse, ControlError> {
        let answered = self.fresh_samples(wait).await;
        let mut st = self.status()?;
        for h in &mut st.hosts {
            h.fresh = answered.contains(&h.name);
        }
        Ok(st)
    }

    /// Asks every connected agent for a sample now; returns the hosts that answered before
    /// `wait` passed (an older agent ignores the request and is simply not among them).
    async fn fresh_samples(&self, wait: Duration) -> HashSet<String> {
        let (id, asked) = self.sessions.request_samples();
        let deadline = tokio::time::Instant::now() + wait;
        let answers = asked.into_iter().map(|(host, mut answered)| async move {
            let ok = matches!(tokio::time::timeout_at(deadline, answered.wait_for(|a| *a >= id)).await, Ok(Ok(_)));
            ok.then_some(host)
        });
        futures::future::join_all(answers).await.into_iter().flatten().collect()
    }

    /// Every known host, merged with what its live session (if any) last reported.
    pub fn status(&self) -> Result<v1::StatusResponse, ControlError> {
        let now = self.clock.now_ms();
        let hb = self.config.heartbeat_interval.as_secs_f64();
        let mut hosts = Vec::new();
        for rec in self.store.hosts()? {
            let live = self.sessions.view(&rec.name);
            let last_hb_age =
                live.as_ref().and_then(|l| l.last_heartbeat_ms).map(|t| (now - t) as f64 / 1000.0).unwrap_or(-1.0);
            let connected = live.is_some();
            // Unreachable: no session, or three heartbeats missed (counting from the session's
            // start when none has arrived yet).
            let unreachable = match &live {
                None => true,
                Some(l) => {
                    let since = l.last_heartbeat_ms.unwrap_or(l.since_ms);
                    (now - since) as f64 / 1000.0 > 3.0 * hb
                }
            };
            let roles = rec.roles.iter().filter_map(|r| v1::Role::from_name(r)).map(|r| r as i32).collect();
            hosts.push(v1::HostStatus {
                name: rec.name.clone(),
                host_id: rec.host_id.clone(),
                roles,
                connected,
                since_unix_ms: live.as_ref().map(|l| l.since_ms).unwrap_or(rec.last_seen_unix_ms),
                last_heartbeat_age_s: last_hb_age,
                unreachable,
                revoked: rec.revoked,
                facts: Some(facts_to_proto(&rec.facts)),
                health: live.as_ref().and_then(|l| l.health.clone()),
                cert_not_after_unix_ms: live
                    .as_ref()
                    .map(|l| l.cert_not_after_unix * 1000)
                    .or_else(|| rec.certs.iter().map(|c| c.not_after_unix * 1000).max())
                    .unwrap_or_default(),
                agent_version: rec.agent_version.clone(),
                agent_sha256: rec.agent_sha256.clone(),
                role_status: live.as_ref().map(|l| l.status.clone()).unwrap_or_default(),
                generation: self.assignment_of(&rec.name)?.map(|a| a.generation).unwrap_or(0),
                swarm_age_s: live
                    .as_ref()
                    .and_then(|l| swarm_age_s(l.last_heartbeat_ms?, l.health.as_ref()?, now))
                    .unwrap_or(-1.0),
                fresh: false,
            });
        }
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        let mut st = v1::StatusResponse {
            cluster: self.config.cluster.clone(),
            hosts,
            heartbeat_interval_s: self.config.heartbeat_interval.as_secs() as u32,
            agent_endpoint: self.agent_endpoint.clone(),
            agent_binary_sha256: self.agent_binary.as_ref().map(|b| b.sha256.clone()).unwrap_or_default(),
            agent_version: flotilla_agent::VERSION.to_string(),
            port: Some(self.port_status()),
            heal: None,
            metrics_address: self.metrics_address.get().map(|a| a.to_string()).unwrap_or_default(),
        };
        st.heal = Some(self.heal_status(&st));
        Ok(st)
    }

    /// The agent port's resources, for `status`.
    pub fn port_status(&self) -> v1::PortStatus {
        let c = self.port.counts();
        let limits = self.port.limits();
        v1::PortStatus {
            descriptor_limit: self.descriptor_limit,
            descriptors_in_use: crate::control_plane::descriptors::in_use().unwrap_or(0),
            max_connections: limits.max_connections as u64,
            max_anonymous_connections: limits.max_anonymous as u64,
            connections: c.connections,
            anonymous_connections: c.anonymous,
            refused_connections: c.refused,
            evicted_connections: c.evicted,
            failed_handshakes: c.handshakes_failed + c.handshakes_timed_out,
            expired_connections: c.expired,
            throttled_enrollments: self.enroll_limit.throttled(),
            refused_calls: self.refusals.total(),
        }
    }
}

/// How old the swarm view carried by `sample` is at `now_ms`, seconds: the time since the
/// sample arrived (`received_ms`, the control plane's clock) plus how old the view already was
/// when the sample was taken (the agent's clock on both ends, so the clocks' skew cancels
/// out). None when the sample has no swarm view.
pub fn swarm_age_s(received_ms: i64, sample: &v1::HealthSample, now_ms: i64) -> Option<f64> {
    let view = sample.swarm.as_ref()?;
    // An older agent does not stamp its view: it is as old as the sample.
    let before_sample = if view.observed_unix_ms > 0 { (sample.unix_ms - view.observed_unix_ms).max(0) } else { 0 };
    Some(((now_ms - received_ms).max(0) + before_sample) as f64 / 1000.0)
}

pub fn facts_from_proto(f: &v1::HostFacts) -> crate::control_plane::store::Facts {
    crate::control_plane::store::Facts {
        hostname: f.hostname.clone(),
        instance_id: f.instance_id.clone(),
        private_addresses: f.private_addresses.clone(),
        os: f.os.clone(),
        kernel: f.kernel.clone(),
        arch: f.arch.clone(),
        cpus: f.cpus,
        memory_bytes: f.memory_bytes,
        engine_version: f.engine_version.clone(),
        engine_csr_pem: f.engine_csr_pem.clone(),
    }
}

/// The facts as `status` shows them: without the Engine's CSR, which is for signing only.
pub fn facts_to_proto(f: &crate::control_plane::store::Facts) -> v1::HostFacts {
    v1::HostFacts {
        hostname: f.hostname.clone(),
        instance_id: f.instance_id.clone(),
        private_addresses: f.private_addresses.clone(),
        os: f.os.clone(),
        kernel: f.kernel.clone(),
        arch: f.arch.clone(),
        cpus: f.cpus,
        memory_bytes: f.memory_bytes,
        engine_version: f.engine_version.clone(),
        engine_csr_pem: String::new(),
    }
}

pub type Shared = Arc<ControlPlane>;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(unix_ms: i64, observed_unix_ms: Option<i64>) -> v1::HealthSample {
        v1::HealthSample {
            unix_ms,
            swarm: observed_unix_ms.map(|o| v1::SwarmView { observed_unix_ms: o, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn the_swarm_views_age_counts_from_its_read_and_ignores_the_clocks_skew() {
        // Read with the sample, received 1.5 s ago.
        assert_eq!(swarm_age_s(10_000, &sample(5_000, Some(5_002)), 11_500), Some(1.5));
        // The Engine did not answer: the sample carried a view read 4 s before it (the agent's
        // clock is 1 h ahead of ours; only differences of one clock are used).
        let skewed = sample(5_000 + 3_600_000, Some(1_000 + 3_600_000));
        assert_eq!(swarm_age_s(10_000, &skewed, 11_000), Some(5.0));
        // An older agent stamps nothing: as old as its sample.
        assert_eq!(swarm_age_s(10_000, &sample(5_000, Some(0)), 12_000), Some(2.0));
        assert_eq!(swarm_age_s(10_000, &sample(5_000, None), 12_000), None);
    }
}
