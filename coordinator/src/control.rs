//! The control plane's shared state — store, PKI, live sessions, clock, settings — and the
//! operations the admin API exposes on it (tokens, revocation, status).

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1;

use crate::clock::Clock;
use crate::config::{ServeConfig, valid_name};
use crate::pki::{Pki, PkiError};
use crate::sessions::Sessions;
use crate::store::{AuditEvent, Store, StoreError};
use crate::tokens;

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
}

pub struct ControlPlane {
    pub config: ServeConfig,
    pub store: Store,
    pub pki: Pki,
    pub sessions: Sessions,
    pub logs: crate::logs::LogRouter,
    pub clock: Clock,
    /// The agent port's address as bound.
    pub agent_endpoint: String,
    /// The agent binary this control plane serves, if any.
    pub agent_binary: Option<Arc<crate::agent_binary::AgentBinary>>,
    /// Cancelled to stop the control plane (`coordinator stop`).
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl ControlPlane {
    pub fn audit(&self, kind: &str, host: &str, detail: impl Into<String>, peer: &str) {
        let event = AuditEvent {
            unix_ms: self.clock.now_ms(),
            kind: kind.to_string(),
            host_name: host.to_string(),
            detail: detail.into(),
            peer: peer.to_string(),
        };
        tracing::info!(kind, host, detail = %event.detail, peer, "audit");
        if let Err(e) = self.store.audit(event) {
            tracing::error!(error = %e, "could not record an audit event");
        }
    }

    /// Mints a one-time join token for `host`.
    pub fn create_token(&self, host: &str, ttl: Duration) -> Result<tokens::Minted, ControlError> {
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
            })?;
            Ok::<_, ControlError>(())
        })?;
        Ok(minted)
    }

    /// Revokes `host`: its certificates stop working at its next call, its open session is
    /// closed now, and its outstanding join tokens are deleted.
    pub fn revoke_host(&self, host: &str) -> Result<bool, ControlError> {
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
            })?;
            Ok(())
        })?;
        Ok(self.sessions.close(
            host,
            tonic::Status::permission_denied(format!("host '{host}' was revoked by the operator")),
        ))
    }

    /// Sets `host`'s desired roles as a new generation, stores it, and sends it to the
    /// host's agent when connected (it is sent again on every session open).
    pub fn assign(
        &self,
        host: &str,
        roles: Vec<v1::RoleSpec>,
        host_address: &str,
    ) -> Result<(u64, bool), ControlError> {
        use prost::Message;
        let mut a = v1::Assignment {
            generation: 0,
            roles,
            host_address: host_address.to_string(),
            cluster: self.config.cluster.clone(),
        };
        flotilla_agent::reconcile::validate(&a).map_err(|e| ControlError::BadAssignment {
            host: host.to_string(),
            message: e.to_string(),
        })?;
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
        let a = self.store.write(|tx| {
            let Some(mut rec) = tx.host(host)? else {
                return Err(ControlError::UnknownHost(host.to_string()));
            };
            let prev = tx
                .assignment(host)?
                .and_then(|b| v1::Assignment::decode(b.as_slice()).ok());
            // Same roles, same address: keep the generation (re-running deploy is a no-op).
            if let Some(p) = &prev
                && p.roles == a.roles
                && p.host_address == a.host_address
                && p.cluster == a.cluster
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
            })?;
            Ok(a)
        })?;
        let generation = a.generation;
        let delivered = self.sessions.send(
            host,
            v1::CoordinatorMessage {
                body: Some(v1::coordinator_message::Body::Assignment(a)),
            },
        );
        Ok((generation, delivered))
    }

    /// The stored assignment of `host`.
    pub fn assignment_of(&self, host: &str) -> Result<Option<v1::Assignment>, ControlError> {
        use prost::Message;
        Ok(self
            .store
            .assignment(host)?
            .and_then(|b| v1::Assignment::decode(b.as_slice()).ok()))
    }

    /// Every known host, merged with what its live session (if any) last reported.
    pub fn status(&self) -> Result<v1::StatusResponse, ControlError> {
        let now = self.clock.now_ms();
        let hb = self.config.heartbeat_interval.as_secs_f64();
        let mut hosts = Vec::new();
        for rec in self.store.hosts()? {
            let live = self.sessions.view(&rec.name);
            let last_hb_age = live
                .as_ref()
                .and_then(|l| l.last_heartbeat_ms)
                .map(|t| (now - t) as f64 / 1000.0)
                .unwrap_or(-1.0);
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
            let roles = rec.roles.iter().filter_map(|r| role_from_name(r)).map(|r| r as i32).collect();
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
                role_status: live.as_ref().map(|l| l.status.clone()).unwrap_or_default(),
                generation: self.assignment_of(&rec.name)?.map(|a| a.generation).unwrap_or(0),
            });
        }
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v1::StatusResponse {
            cluster: self.config.cluster.clone(),
            hosts,
            heartbeat_interval_s: self.config.heartbeat_interval.as_secs() as u32,
            agent_endpoint: self.agent_endpoint.clone(),
        })
    }
}

pub fn role_from_name(name: &str) -> Option<v1::Role> {
    match name {
        "consul" => Some(v1::Role::Consul),
        "manager" => Some(v1::Role::Manager),
        "node" => Some(v1::Role::Node),
        _ => None,
    }
}

pub fn role_name(role: v1::Role) -> &'static str {
    match role {
        v1::Role::Consul => "consul",
        v1::Role::Manager => "manager",
        v1::Role::Node => "node",
        v1::Role::Unspecified => "unspecified",
    }
}

pub fn facts_from_proto(f: &v1::HostFacts) -> crate::store::Facts {
    crate::store::Facts {
        hostname: f.hostname.clone(),
        instance_id: f.instance_id.clone(),
        private_addresses: f.private_addresses.clone(),
        os: f.os.clone(),
        kernel: f.kernel.clone(),
        arch: f.arch.clone(),
        cpus: f.cpus,
        memory_bytes: f.memory_bytes,
        engine_version: f.engine_version.clone(),
    }
}

pub fn facts_to_proto(f: &crate::store::Facts) -> v1::HostFacts {
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
    }
}

pub type Shared = Arc<ControlPlane>;
