//! The control plane's shared state — store, PKI, live sessions, clock, settings — and the
//! operations the admin API exposes on it (tokens, revocation, status — from the agents'
//! last samples, or fresh ones asked for).

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
use crate::control_plane::store::{AuditEvent, Facts, Store, StoreError};
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

    /// Sets `host`'s desired roles as a new generation, stores it, and sends it to the
    /// host's agent when connected (it is sent again on every session open).
    pub fn assign(
        &self,
        host: &str,
        roles: Vec<v1::RoleSpec>,
        host_address: &str,
        by: &Caller,
    ) -> Result<(u64, bool), ControlError> {
        let requested = v1::Assignment {
            generation: 0,
            roles,
            host_address: host_address.to_string(),
            cluster: self.config.cluster.clone(),
        };
        let Some(rec) = self.store.host(host)? else {
            return Err(ControlError::UnknownHost(host.to_string()));
        };
        // Same request as the one in force: keep it and its generation (re-running deploy is
        // a no-op; nothing is signed).
        let a = match self.assignment_of(host)? {
            Some(p) if self.in_force(&p, &requested, &rec.facts) => p,
            prev => self.store_assignment(host, &requested, prev.as_ref(), &rec.facts, by)?,
        };
        let generation = a.generation;
        let delivered = self
            .sessions
            .send(host, v1::CoordinatorMessage { body: Some(v1::coordinator_message::Body::Assignment(a)) });
        Ok((generation, delivered))
    }

    /// Whether `stored` is what `requested` would make now, for a host with `facts`.
    fn in_force(&self, stored: &v1::Assignment, requested: &v1::Assignment, facts: &Facts) -> bool {
        completions_current(stored, requested, self.pki.engine_client_ca_pem(), &facts.engine_csr_pem)
            && strip_completions(stored, requested) == requested.roles
            && stored.host_address == requested.host_address
            && stored.cluster == requested.cluster
    }

    /// Completes `requested` (see [`ControlPlane::complete`], carrying over what the assignment
    /// `in_force` was given), checks it and stores it as the next generation — unless an
    /// identical request got there first. Returns what is in force.
    fn store_assignment(
        &self,
        host: &str,
        requested: &v1::Assignment,
        in_force: Option<&v1::Assignment>,
        facts: &Facts,
        by: &Caller,
    ) -> Result<v1::Assignment, ControlError> {
        use prost::Message;
        let mut a = requested.clone();
        if let Some(prev) = in_force {
            carry_over(prev, &mut a);
        }
        self.complete(host, facts, &mut a)?;
        flotilla_agent::reconcile::validate(&a)
            .map_err(|e| ControlError::BadAssignment { host: host.to_string(), message: e.to_string() })?;
        let names: Vec<String> = a
            .roles
            .iter()
            .filter_map(|r| r.spec.as_ref())
            .map(|s| match s {
                v1::role_spec::Spec::Consul(_) => "consul".to_string(),
                v1::role_spec::Spec::Manager(_) => "manager".to_string(),
                v1::role_spec::Spec::Node(_) => "node".to_string(),
            })
            .collect();
        let now = self.clock.now_ms();
        self.store.write(|tx| {
            let Some(mut rec) = tx.host(host)? else {
                return Err(ControlError::UnknownHost(host.to_string()));
            };
            let prev = tx.assignment(host)?.and_then(|b| v1::Assignment::decode(b.as_slice()).ok());
            if let Some(p) = &prev
                && self.in_force(p, requested, &rec.facts)
            {
                return Ok(p.clone());
            }
            a.generation = prev.map(|p| p.generation).unwrap_or(0) + 1;
            tx.put_assignment(host, &a.encode_to_vec())?;
            rec.roles = names.clone();
            tx.put_host(&rec)?;
            tx.audit(&AuditEvent {
                unix_ms: now,
                kind: "host.assigned".into(),
                host_name: host.into(),
                detail: format!("generation {}: {}", a.generation, names.join(",")),
                peer: String::new(),
                actor: by.to_string(),
            })?;
            Ok(a)
        })
    }

    /// Fills what only the control plane can, where the request left it empty: Consul's
    /// gossip key (made once per cluster), its tokens and TLS material, each host's Consul
    /// token, and a manager's Engine TLS server certificate from the cluster CA (signed from
    /// the host's CSR when its facts carry one).
    fn complete(&self, host: &str, facts: &Facts, a: &mut v1::Assignment) -> Result<(), ControlError> {
        use base64::Engine as _;
        let needs_address = a.roles.iter().any(|r| {
            matches!(&r.spec, Some(v1::role_spec::Spec::Consul(c)) if c.tls_cert_pem.is_empty())
                || matches!(&r.spec, Some(v1::role_spec::Spec::Manager(m)) if m.engine_tls_cert_pem.is_empty())
        });
        if needs_address && a.host_address.parse::<std::net::IpAddr>().is_err() {
            return Err(ControlError::BadAssignment {
                host: host.to_string(),
                message: format!("host_address '{}' is not an IP address", a.host_address),
            });
        }
        for r in &mut a.roles {
            match &mut r.spec {
                Some(v1::role_spec::Spec::Consul(c)) => {
                    if c.encrypt_key.is_empty() {
                        let fresh: [u8; 32] = rand::random();
                        let key = self.store.meta_get_or_insert(
                            "consul_encrypt_key",
                            base64::engine::general_purpose::STANDARD.encode(fresh).as_bytes(),
                        )?;
                        c.encrypt_key = String::from_utf8_lossy(&key).to_string();
                    }
                    self.consul.complete(host, &a.host_address, c)?;
                }
                Some(v1::role_spec::Spec::Manager(m)) => {
                    if m.consul_token.is_empty() {
                        m.consul_token = self.consul.token(host, v1::Role::Manager).1;
                    }
                    // Issued anew also when the one carried over predates the Engine client CA
                    // or no longer certifies the key of the host's CSR.
                    if m.engine_tls_cert_pem.is_empty()
                        || m.engine_tls_ca_pem != self.pki.engine_client_ca_pem()
                        || !engine_cert_fits(m, &facts.engine_csr_pem)
                    {
                        (m.engine_tls_cert_pem, m.engine_tls_key_pem) =
                            self.engine_server_cert(host, &a.host_address, facts)?;
                        // What the Engine trusts for its clients: the Engine client CA only.
                        m.engine_tls_ca_pem = self.pki.engine_client_ca_pem().to_string();
                    }
                }
                Some(v1::role_spec::Spec::Node(n)) if n.consul_token.is_empty() => {
                    n.consul_token = self.consul.token(host, v1::Role::Node).1;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The server certificate for a manager's Engine on 2376, and the key to send with it:
    /// none when the host sent a CSR (its key never leaves it). An older agent sends no CSR;
    /// for it the key is made here, as before `HostFacts.engine_csr_pem` existed, and travels
    /// in the assignment (over the mTLS session) and stays in the store with it.
    fn engine_server_cert(&self, host: &str, address: &str, facts: &Facts) -> Result<(String, String), ControlError> {
        if address.parse::<std::net::IpAddr>().is_err() {
            return Err(ControlError::BadAssignment {
                host: host.to_string(),
                message: format!("host_address '{address}' is not an IP address"),
            });
        }
        if facts.engine_csr_pem.is_empty() {
            return Ok(self.pki.issue_engine_server(host, address)?);
        }
        let cert = self
            .pki
            .sign_engine_server_csr(host, address, &facts.engine_csr_pem)
            .map_err(|source| ControlError::EngineCsr { host: host.to_string(), source })?;
        Ok((cert, String::new()))
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

/// Whether what [`ControlPlane::complete`] filled in for `requested` is still what it would
/// fill in: an assignment from before the Engine client CA (whose Engines trust the cluster
/// CA, so every host identity) is re-issued by the next identical request, and so is an
/// Engine certificate that no longer fits the host's CSR (see [`engine_cert_fits`]).
fn completions_current(
    stored: &v1::Assignment,
    requested: &v1::Assignment,
    engine_client_ca_pem: &str,
    engine_csr_pem: &str,
) -> bool {
    stored.roles.iter().zip(&requested.roles).all(|(s, r)| match (&s.spec, &r.spec) {
        (Some(v1::role_spec::Spec::Manager(s)), Some(v1::role_spec::Spec::Manager(r)))
            if r.engine_tls_cert_pem.is_empty() =>
        {
            (s.engine_tls_ca_pem.is_empty() || s.engine_tls_ca_pem == engine_client_ca_pem)
                && engine_cert_fits(s, engine_csr_pem)
        }
        _ => true,
    })
}

/// Whether a manager's stored Engine certificate fits a host whose facts carry
/// `engine_csr_pem`: it must certify that CSR's key. That also moves a host whose agent now
/// sends a CSR off the key the coordinator made for it (whose certificate certifies that
/// key, not the host's) at the next deploy. Without a CSR (an older agent) the coordinator's
/// key stays.
fn engine_cert_fits(stored: &v1::ManagerSpec, engine_csr_pem: &str) -> bool {
    engine_csr_pem.is_empty()
        || crate::control_plane::pki::certifies_csr_key(&stored.engine_tls_cert_pem, engine_csr_pem)
}

/// Certificates the assignment in force (`prev`) already gave this host, copied into `a`
/// where it leaves them empty and the host's address is unchanged: a new generation for
/// another reason (a Consul server's token list changes when nodes are added or removed)
/// must not issue new ones, which would restart the Engine and recreate the Consul container.
fn carry_over(prev: &v1::Assignment, a: &mut v1::Assignment) {
    use v1::role_spec::Spec;
    if prev.host_address != a.host_address {
        return;
    }
    let prev_consul = prev.roles.iter().find_map(|r| match &r.spec {
        Some(Spec::Consul(c)) => Some(c),
        _ => None,
    });
    let prev_manager = prev.roles.iter().find_map(|r| match &r.spec {
        Some(Spec::Manager(m)) => Some(m),
        _ => None,
    });
    for r in &mut a.roles {
        match (&mut r.spec, prev_consul, prev_manager) {
            (Some(Spec::Consul(c)), Some(p), _) if c.tls_cert_pem.is_empty() && p.datacenter == c.datacenter => {
                c.tls_cert_pem = p.tls_cert_pem.clone();
                c.tls_key_pem = p.tls_key_pem.clone();
                c.tls_ca_pem = p.tls_ca_pem.clone();
            }
            (Some(Spec::Manager(m)), _, Some(p)) if m.engine_tls_cert_pem.is_empty() => {
                m.engine_tls_cert_pem = p.engine_tls_cert_pem.clone();
                m.engine_tls_key_pem = p.engine_tls_key_pem.clone();
                m.engine_tls_ca_pem = p.engine_tls_ca_pem.clone();
            }
            _ => {}
        }
    }
}

/// The stored roles with what [`ControlPlane::complete`] filled in removed again, where the
/// request left it empty — so a repeated request compares equal to what is in force.
fn strip_completions(stored: &v1::Assignment, requested: &v1::Assignment) -> Vec<v1::RoleSpec> {
    use v1::role_spec::Spec;
    let mut roles = stored.roles.clone();
    for (s, r) in roles.iter_mut().zip(&requested.roles) {
        match (&mut s.spec, &r.spec) {
            (Some(Spec::Consul(s)), Some(Spec::Consul(r))) => strip_consul(s, r),
            (Some(Spec::Manager(s)), Some(Spec::Manager(r))) => {
                if r.engine_tls_cert_pem.is_empty() {
                    s.engine_tls_cert_pem.clear();
                    s.engine_tls_key_pem.clear();
                    s.engine_tls_ca_pem.clear();
                }
                if r.consul_token.is_empty() {
                    s.consul_token.clear();
                }
            }
            (Some(Spec::Node(s)), Some(Spec::Node(r))) if r.consul_token.is_empty() => s.consul_token.clear(),
            _ => {}
        }
    }
    roles
}

/// [`strip_completions`] of a Consul server's spec.
fn strip_consul(s: &mut v1::ConsulSpec, r: &v1::ConsulSpec) {
    if r.encrypt_key.is_empty() {
        s.encrypt_key.clear();
    }
    if r.management_token.is_empty() {
        s.management_token.clear();
    }
    if r.agent_token.is_empty() {
        s.agent_token.clear();
    }
    if r.tls_cert_pem.is_empty() {
        s.tls_cert_pem.clear();
        s.tls_key_pem.clear();
        s.tls_ca_pem.clear();
    }
    for (st, rt) in s.tokens.iter_mut().zip(&r.tokens) {
        if rt.accessor_id.is_empty() {
            st.accessor_id.clear();
            st.secret_id.clear();
        }
    }
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
