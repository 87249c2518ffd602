//! One agent session: Hello, then health and status in, control messages out, certificate
//! renewal in between — until the agent goes away, is replaced, revoked, or we shut down.

pub mod registry;

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1::{self, agent_message, coordinator_message};
use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::Status;

use crate::control_plane::core::{ControlPlane, facts_from_proto};
use crate::control_plane::store::{AuditEvent, IssuedCert, StoreError};
use registry::{OUTBOUND_CAPACITY, Outbound, Registration};

/// How long an agent has to say Hello after opening a session.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a caller was refused before reaching a handler.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("this RPC requires a client certificate issued by the cluster CA; enroll first")]
    NoCertificate,
    #[error("client certificate is not a host certificate (OU '{0}')")]
    NotAHost(String),
    #[error("client certificate does not parse")]
    Unparseable,
    #[error("host '{0}' is not enrolled in this cluster")]
    UnknownHost(String),
    #[error("host '{0}' was revoked by the operator")]
    Revoked(String),
    #[error("certificate serial {serial} is no longer valid for host '{host}' (superseded by a re-enrollment)")]
    Superseded { host: String, serial: String },
    #[error("{0}")]
    Protocol(String),
}

/// A caller whose client certificate passed every check (see `agent_api::authenticate`).
#[derive(Clone, Debug)]
pub struct AuthenticatedHost {
    pub name: String,
    pub serial: String,
    pub not_after_unix: i64,
    pub peer: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the first message of a session must be Hello")]
    NoHello,
    #[error("no Hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("certificate is for host '{cert}' but the agent claims to be '{claimed}'")]
    IdentityMismatch { cert: String, claimed: String },
    #[error("agent speaks protocol v{agent}, this coordinator speaks v{ours}; upgrade the older side")]
    Protocol { agent: u32, ours: u32 },
    #[error("stream error before Hello: {0}")]
    Stream(Status),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error(transparent)]
    Pki(#[from] crate::control_plane::pki::PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ControlPlane {
    /// Runs the opening of a session (Hello) and spawns its inbound loop; returns the
    /// receiver that feeds the outbound stream.
    pub async fn open_session(
        self: &Arc<Self>,
        who: AuthenticatedHost,
        mut inbound: tonic::Streaming<v1::AgentMessage>,
    ) -> Result<mpsc::Receiver<Outbound>, SessionError> {
        let hello = self.read_hello(&who, &mut inbound).await?;
        let now = self.clock.now_ms();
        let host_id = self.record_hello(&who.name, &hello, now)?;

        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let _ = tx.try_send(Ok(v1::CoordinatorMessage {
            body: Some(coordinator_message::Body::Welcome(v1::Welcome {
                host_id,
                protocol_version: flotilla_proto::PROTOCOL_VERSION,
                heartbeat_interval_s: self.config.heartbeat_interval.as_secs() as u32,
            })),
        }));
        // The host's current assignment follows the Welcome, on every session open.
        if let Ok(Some(a)) = self.assignment_of(&who.name) {
            let _ = tx.try_send(Ok(v1::CoordinatorMessage { body: Some(coordinator_message::Body::Assignment(a)) }));
        }
        let reg = self.sessions.register(&who.name, tx.clone(), now, who.not_after_unix);
        if !hello.running.is_empty() {
            self.sessions.record_status(&who.name, reg.session_id, hello.running.clone());
        }
        tracing::info!(host = %who.name, peer = %who.peer, agent = %hello.agent_version, "session open");
        tokio::spawn(Arc::clone(self).inbound_loop(who, reg, inbound, tx));
        Ok(rx)
    }

    /// The first message must be a Hello from the certificate's own host, in our protocol.
    async fn read_hello(
        &self,
        who: &AuthenticatedHost,
        inbound: &mut tonic::Streaming<v1::AgentMessage>,
    ) -> Result<v1::Hello, SessionError> {
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| SessionError::HelloTimeout(HELLO_TIMEOUT))?
            .map_err(SessionError::Stream)?;
        let Some(v1::AgentMessage { body: Some(agent_message::Body::Hello(hello)) }) = first else {
            return Err(SessionError::NoHello);
        };
        if hello.host_name != who.name {
            self.audit(
                "session.refused.identity",
                &who.name,
                format!("claimed to be '{}'", hello.host_name),
                &who.peer,
            );
            return Err(SessionError::IdentityMismatch { cert: who.name.clone(), claimed: hello.host_name });
        }
        if hello.protocol_version != flotilla_proto::PROTOCOL_VERSION {
            return Err(SessionError::Protocol {
                agent: hello.protocol_version,
                ours: flotilla_proto::PROTOCOL_VERSION,
            });
        }
        Ok(hello)
    }

    /// Stores what the Hello says about the host (facts, agent version, last seen); returns
    /// the host's id (empty when the host is not in the store).
    fn record_hello(&self, host: &str, hello: &v1::Hello, now: i64) -> Result<String, SessionError> {
        self.store.write(|tx| {
            let Some(mut rec) = tx.host(host)? else {
                return Ok::<_, SessionError>(String::new());
            };
            if let Some(f) = &hello.facts {
                rec.facts = facts_from_proto(f);
            }
            rec.agent_version = hello.agent_version.clone();
            rec.last_seen_unix_ms = now;
            tx.put_host(&rec)?;
            Ok(rec.host_id)
        })
    }

    /// Handles the agent's messages until it goes away, the coordinator closes the session,
    /// or the control plane shuts down; then unregisters the session.
    async fn inbound_loop(
        self: Arc<Self>,
        who: AuthenticatedHost,
        reg: Registration,
        mut inbound: tonic::Streaming<v1::AgentMessage>,
        tx: mpsc::Sender<Outbound>,
    ) {
        let shutdown = self.shutdown.clone();
        let reason = loop {
            let msg = tokio::select! {
                m = inbound.next() => m,
                () = reg.close.cancelled() => break "closed by the coordinator",
                () = shutdown.cancelled() => break "coordinator shutting down",
            };
            match msg {
                None => break "agent closed the session",
                Some(Err(e)) => {
                    tracing::debug!(host = %who.name, error = %e, "session stream error");
                    break "stream error";
                }
                Some(Ok(m)) => self.handle(&who, reg.session_id, m, &tx),
            }
        };
        drop(tx);
        self.sessions.unregister(&who.name, reg.session_id);
        let now = self.clock.now_ms();
        let _ = self.store.write(|t| {
            if let Some(mut rec) = t.host(&who.name)? {
                rec.last_seen_unix_ms = now;
                t.put_host(&rec)?;
            }
            Ok::<_, StoreError>(())
        });
        tracing::info!(host = %who.name, reason, "session closed");
    }

    fn handle(&self, who: &AuthenticatedHost, session_id: u64, msg: v1::AgentMessage, tx: &mpsc::Sender<Outbound>) {
        let now = self.clock.now_ms();
        match msg.body {
            Some(agent_message::Body::Health(sample)) => {
                let seq = sample.seq;
                self.sessions.record_health(&who.name, session_id, sample, now);
                let _ = tx.try_send(Ok(v1::CoordinatorMessage {
                    body: Some(coordinator_message::Body::HeartbeatAck(v1::HeartbeatAck { seq })),
                }));
            }
            Some(agent_message::Body::Status(report)) => {
                self.sessions.record_status(&who.name, session_id, report.roles);
            }
            Some(agent_message::Body::Renew(req)) => match self.renew(who, &req.csr_pem) {
                Ok(renewed) => {
                    if let Ok(ids) = flotilla_proto::tls::certs_from_pem("renewed", &renewed.certificate_pem)
                        && let Some(id) = ids.first().and_then(flotilla_proto::tls::identity_of)
                    {
                        self.sessions.record_cert(&who.name, session_id, id.not_after_unix);
                    }
                    let _ = tx.try_send(Ok(v1::CoordinatorMessage {
                        body: Some(coordinator_message::Body::Renewed(renewed)),
                    }));
                }
                Err(e) => {
                    self.audit("cert.renew.refused", &who.name, e.to_string(), &who.peer);
                    let _ = tx.try_send(Err(Status::invalid_argument(format!("certificate renewal refused: {e}"))));
                }
            },
            Some(agent_message::Body::Hello(_)) | None => {}
        }
    }

    /// Signs a renewal CSR from a live session and adds the new serial to the host's set;
    /// the old certificate stays valid until it expires, so the open session is not cut.
    fn renew(&self, who: &AuthenticatedHost, csr_pem: &str) -> Result<v1::RenewedCertificate, RenewError> {
        let issued = self.pki.sign_host_csr(&who.name, csr_pem, self.config.host_cert_validity)?;
        let now = self.clock.now_ms();
        let now_s = now / 1000;
        self.store.write(|tx| {
            if let Some(mut rec) = tx.host(&who.name)? {
                rec.certs.retain(|c| c.not_after_unix > now_s);
                rec.certs.push(IssuedCert { serial: issued.serial.clone(), not_after_unix: issued.not_after_unix });
                tx.put_host(&rec)?;
            }
            tx.audit(&AuditEvent {
                unix_ms: now,
                kind: "cert.renewed".into(),
                host_name: who.name.clone(),
                detail: format!("serial {} until {}", issued.serial, issued.not_after_unix),
                peer: who.peer.clone(),
            })
        })?;
        Ok(v1::RenewedCertificate {
            certificate_pem: issued.certificate_pem,
            ca_chain_pem: vec![self.pki.ca_pem().to_string()],
        })
    }
}
