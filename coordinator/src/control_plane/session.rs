//! One agent session: Hello, then health and status in, control messages out, certificate
//! renewal in between — until the agent goes away, is replaced, revoked, re-enrolled, its
//! certificate expires, or we shut down.
//!
//! Issue 14: a session ends when the certificate it was opened with stops being valid for its
//! host — revoked, superseded by a re-enrollment, or dropped from the kept set by renewals
//! ([`grants`]) — and when that certificate (or the one it renewed to) expires, by a timer on
//! its notAfter. `Renew` is answered only for the host's newest, unrevoked certificate, only
//! past half its validity, one at a time per host ([`renewing::Renewing`]); the host keeps at most
//! [`KEPT_CERTS`] certificates (the one the session holds and the new one); signing and the
//! store's commit run on a blocking thread.

pub mod grants;
pub mod registry;
pub mod renewing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1::{self, agent_message, coordinator_message};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::control_plane::core::{ControlPlane, facts_from_proto};
use crate::control_plane::pki::Issued;
use crate::control_plane::store::{AuditEvent, IssuedCert, StoreError};
use crate::control_plane::untrusted::{NAME_MAX, clean};
use registry::{OUTBOUND_CAPACITY, Outbound, Registration};

/// How long an agent has to say Hello after opening a session.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Certificates a host may hold at once: the one its open session was opened (or last
/// renewed) with, and the one a renewal just issued.
pub const KEPT_CERTS: usize = 2;

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
    #[error(
        "certificate serial {serial} is no longer valid for host '{host}' (the host enrolled again, or renewed past it)"
    )]
    Superseded { host: String, serial: String },
    #[error("certificate serial {serial} of host '{host}' has expired; the agent must enroll again")]
    Expired { host: String, serial: String },
    #[error("{0}")]
    Protocol(String),
}

/// A caller whose client certificate passed every check (see `agent_api::authenticate`).
#[derive(Clone, Debug)]
pub struct AuthenticatedHost {
    pub name: String,
    pub serial: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    pub peer: String,
    pub remote: Option<SocketAddr>,
    /// Cancelled when this certificate stops being valid for the host ([`grants`]).
    pub grant: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the first message of a session must be Hello")]
    NoHello,
    #[error("no Hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("certificate is for host '{cert}' but the agent claims to be '{claimed}'")]
    IdentityMismatch { cert: String, claimed: String },
    /// The Hello's protocol is one this coordinator does not accept: why, and what to upgrade.
    #[error("{0}")]
    Protocol(String),
    #[error("stream error before Hello: {0}")]
    Stream(Status),
    #[error("the certificate of host '{0}' stopped being valid while the session opened")]
    Invalidated(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the session's store task failed: {0}")]
    Task(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("a renewal for host '{0}' is already in progress")]
    InFlight(String),
    #[error("too early: certificate serial {serial} is renewable from {from_unix} (half its validity), not before")]
    TooEarly { serial: String, from_unix: i64 },
    #[error("host '{0}' was revoked by the operator")]
    Revoked(String),
    #[error("host '{0}' is not enrolled in this cluster")]
    UnknownHost(String),
    #[error(
        "certificate serial {serial} is not the newest certificate of host '{host}': only the current certificate renews"
    )]
    NotCurrent { host: String, serial: String },
    #[error(transparent)]
    Pki(#[from] crate::control_plane::pki::PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the renewal task failed: {0}")]
    Task(String),
}

/// The certificate a session holds now: the one it was opened with, then each one it renewed
/// to.
#[derive(Clone, Debug)]
struct Held {
    serial: String,
    not_before_unix: i64,
    not_after_unix: i64,
    grant: CancellationToken,
}

/// Why an open session ended, as the log and the agent's last status say it.
enum Ended {
    Reason(&'static str),
    Final(&'static str, Status),
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
        let host_id = self.record_hello(&who.name, &hello, now).await?;

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
        // Revoked or re-enrolled while saying Hello: do not displace the host's valid session.
        if who.grant.is_cancelled() {
            return Err(SessionError::Invalidated(who.name));
        }
        let reg = self.sessions.register(&who.name, tx.clone(), now, who.not_after_unix);
        if !hello.running.is_empty() {
            self.sessions.record_status(&who.name, reg.session_id, hello.running.clone());
        }
        tracing::info!(host = %who.name, peer = %who.peer, serial = %who.serial, agent = %clean(&hello.agent_version, NAME_MAX), agent_sha256 = %clean(&hello.agent_sha256, NAME_MAX), "session open");
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
            let claimed = clean(&hello.host_name, NAME_MAX);
            self.refused("session.refused.identity", &who.name, &format!("claimed to be '{claimed}'"), who.remote);
            return Err(SessionError::IdentityMismatch { cert: who.name.clone(), claimed });
        }
        if let Some(why) = flotilla_proto::agent_protocol_refusal(hello.protocol_version) {
            return Err(SessionError::Protocol(why));
        }
        Ok(hello)
    }

    /// Stores what the Hello says about the host (facts, agent version, last seen), on a
    /// blocking thread; returns the host's id (empty when the host is not in the store).
    async fn record_hello(self: &Arc<Self>, host: &str, hello: &v1::Hello, now: i64) -> Result<String, SessionError> {
        let (cp, host, hello) = (Arc::clone(self), host.to_string(), hello.clone());
        let write = move || {
            cp.store.write(|tx| {
                let Some(mut rec) = tx.host(&host)? else {
                    return Ok::<_, SessionError>(String::new());
                };
                if let Some(f) = &hello.facts {
                    rec.facts = facts_from_proto(f);
                }
                rec.agent_version = clean(&hello.agent_version, NAME_MAX);
                rec.agent_sha256 = clean(&hello.agent_sha256, NAME_MAX);
                rec.last_seen_unix_ms = now;
                tx.put_host(&rec)?;
                Ok(rec.host_id)
            })
        };
        tokio::task::spawn_blocking(write).await.map_err(|e| SessionError::Task(e.to_string()))?
    }

    /// Handles the agent's messages until it goes away, the coordinator closes the session,
    /// its certificate stops being valid or expires, or the control plane shuts down; then
    /// unregisters the session.
    async fn inbound_loop(
        self: Arc<Self>,
        who: AuthenticatedHost,
        reg: Registration,
        mut inbound: tonic::Streaming<v1::AgentMessage>,
        tx: mpsc::Sender<Outbound>,
    ) {
        let shutdown = self.shutdown.clone();
        let mut held = Held {
            serial: who.serial.clone(),
            not_before_unix: who.not_before_unix,
            not_after_unix: who.not_after_unix,
            grant: who.grant.clone(),
        };
        // The timer on the held certificate's notAfter, moved when a renewal replaces it.
        let mut expiry = Box::pin(self.until_expiry(held.not_after_unix));
        let ended = loop {
            let grant = held.grant.clone();
            let msg = tokio::select! {
                m = inbound.next() => m,
                () = reg.close.cancelled() => break Ended::Reason("closed by the coordinator"),
                () = shutdown.cancelled() => break Ended::Reason("coordinator shutting down"),
                () = grant.cancelled() => break Ended::Final("certificate no longer valid", Status::permission_denied(format!(
                    "the certificate this session holds (serial {}) is no longer valid for host '{}': it was revoked, or the host enrolled again",
                    held.serial, who.name
                ))),
                () = &mut expiry => break Ended::Final("certificate expired", Status::unauthenticated(format!(
                    "the certificate this session holds (serial {}) expired at {} (unix); the agent renews before then, or enrolls again",
                    held.serial, held.not_after_unix
                ))),
            };
            match msg {
                None => break Ended::Reason("agent closed the session"),
                Some(Err(e)) => {
                    tracing::debug!(host = %who.name, error = %e, "session stream error");
                    break Ended::Reason("stream error");
                }
                Some(Ok(m)) => {
                    let before = held.not_after_unix;
                    if let Err(refused) = self.handle(&who, &mut held, reg.session_id, m, &tx).await {
                        break Ended::Final("renewal refused", refused);
                    }
                    if held.not_after_unix != before {
                        expiry = Box::pin(self.until_expiry(held.not_after_unix));
                    }
                }
            }
        };
        let reason = match ended {
            Ended::Reason(r) => r,
            Ended::Final(r, status) => {
                let _ = tx.try_send(Err(status));
                r
            }
        };
        drop(tx);
        self.sessions.unregister(&who.name, reg.session_id);
        self.record_last_seen(&who.name).await;
        tracing::info!(host = %who.name, reason, "session closed");
    }

    /// Completes when the certificate expiring at `not_after_unix` (seconds) has expired, by
    /// the control plane's clock.
    pub async fn until_expiry(&self, not_after_unix: i64) {
        let left_ms = (not_after_unix * 1000 - self.clock.now_ms()).max(0);
        tokio::time::sleep(Duration::from_millis(left_ms as u64)).await;
    }

    async fn record_last_seen(self: &Arc<Self>, host: &str) {
        let (cp, host, now) = (Arc::clone(self), host.to_string(), self.clock.now_ms());
        let _ = tokio::task::spawn_blocking(move || {
            cp.store.write(|t| {
                if let Some(mut rec) = t.host(&host)? {
                    rec.last_seen_unix_ms = now;
                    t.put_host(&rec)?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .await;
    }

    /// Acts on one message; a refused renewal ends the session with the returned status.
    async fn handle(
        self: &Arc<Self>,
        who: &AuthenticatedHost,
        held: &mut Held,
        session_id: u64,
        msg: v1::AgentMessage,
        tx: &mpsc::Sender<Outbound>,
    ) -> Result<(), Status> {
        let now = self.clock.now_ms();
        match msg.body {
            Some(agent_message::Body::Health(sample)) => {
                let seq = sample.seq;
                if sample.last_rtt_us > 0 {
                    self.metrics.heartbeat_round_trip(sample.last_rtt_us as f64 / 1e6);
                }
                self.sessions.record_health(&who.name, session_id, sample, now);
                let _ = tx.try_send(Ok(v1::CoordinatorMessage {
                    body: Some(coordinator_message::Body::HeartbeatAck(v1::HeartbeatAck { seq })),
                }));
            }
            Some(agent_message::Body::Status(report)) => {
                self.sessions.record_status(&who.name, session_id, report.roles);
            }
            Some(agent_message::Body::Renew(req)) => match self.renew(who, held, req.csr_pem).await {
                Ok((issued, grant)) => {
                    *held = Held {
                        serial: issued.serial.clone(),
                        not_before_unix: issued.not_before_unix,
                        not_after_unix: issued.not_after_unix,
                        grant,
                    };
                    self.sessions.record_cert(&who.name, session_id, issued.not_after_unix);
                    let _ = tx.try_send(Ok(v1::CoordinatorMessage {
                        body: Some(coordinator_message::Body::Renewed(v1::RenewedCertificate {
                            certificate_pem: issued.certificate_pem,
                            ca_chain_pem: vec![self.pki.ca_pem().to_string()],
                        })),
                    }));
                }
                Err(e) => {
                    self.refused("cert.renew.refused", &who.name, &e.to_string(), who.remote);
                    return Err(Status::permission_denied(format!("certificate renewal refused: {e}")));
                }
            },
            Some(agent_message::Body::Hello(_)) | None => {}
        }
        Ok(())
    }

    /// Renews the certificate the session holds (see the module's doc for the rules). Returns
    /// the new certificate and the token the session watches from now on.
    async fn renew(
        self: &Arc<Self>,
        who: &AuthenticatedHost,
        held: &Held,
        csr_pem: String,
    ) -> Result<(Issued, CancellationToken), RenewError> {
        let Some(_slot) = self.renewing.begin(&who.name) else {
            return Err(RenewError::InFlight(who.name.clone()));
        };
        let from_unix = held.not_before_unix + (held.not_after_unix - held.not_before_unix) / 2;
        if self.clock.now_ms() / 1000 < from_unix {
            return Err(RenewError::TooEarly { serial: held.serial.clone(), from_unix });
        }
        let (cp, host, serial, peer) = (Arc::clone(self), who.name.clone(), held.serial.clone(), who.peer.clone());
        tokio::task::spawn_blocking(move || cp.renew_blocking(&host, &serial, &csr_pem, &peer))
            .await
            .map_err(|e| RenewError::Task(e.to_string()))?
    }

    /// Signs the renewal CSR and commits it: only for the host's newest, unrevoked serial;
    /// the host keeps that one and the new one.
    fn renew_blocking(
        &self,
        host: &str,
        serial: &str,
        csr_pem: &str,
        peer: &str,
    ) -> Result<(Issued, CancellationToken), RenewError> {
        self.check_current(&self.store.host(host)?, host, serial)?;
        let issued = self.pki.sign_host_csr(host, csr_pem, self.config.host_cert_validity)?;
        // Taken before the commit: a revocation after it cancels this token too (`grants`).
        let grant = self.grants.token(host, &issued.serial);
        let now = self.clock.now_ms();
        self.store.write(|tx| {
            let rec = tx.host(host)?;
            self.check_current(&rec, host, serial)?;
            let Some(mut rec) = rec else { return Err(RenewError::UnknownHost(host.to_string())) };
            rec.certs.retain(|c| c.serial == serial);
            rec.certs.push(IssuedCert { serial: issued.serial.clone(), not_after_unix: issued.not_after_unix });
            debug_assert!(rec.certs.len() <= KEPT_CERTS);
            tx.put_host(&rec)?;
            tx.audit(&AuditEvent {
                unix_ms: now,
                kind: "cert.renewed".into(),
                host_name: host.into(),
                detail: format!("serial {} until {} (renewed from {serial})", issued.serial, issued.not_after_unix),
                peer: peer.to_string(),
                actor: String::new(),
            })?;
            Ok(())
        })?;
        self.grants.cancel_except(host, &[serial, &issued.serial]);
        Ok((issued, grant))
    }

    /// `serial` is the newest certificate of an enrolled, unrevoked `host`.
    fn check_current(
        &self,
        rec: &Option<crate::control_plane::store::HostRecord>,
        host: &str,
        serial: &str,
    ) -> Result<(), RenewError> {
        let Some(rec) = rec else { return Err(RenewError::UnknownHost(host.to_string())) };
        if rec.revoked {
            return Err(RenewError::Revoked(host.to_string()));
        }
        if rec.certs.last().map(|c| c.serial.as_str()) != Some(serial) {
            return Err(RenewError::NotCurrent { host: host.to_string(), serial: serial.to_string() });
        }
        Ok(())
    }
}
