//! The `AgentService` gRPC edge: who is calling (certificate checks), protocol version
//! checks. Errors become `tonic::Status` in [`crate::control_plane::status`].
//!
//! In front of it, [`gate`] (issue 14), before routing and before any body is read: a
//! connection without a client certificate may only call `Enroll` and download the agent
//! binary, and every `Enroll` takes a token from [`crate::control_plane::enroll_limit`].
//! `Enroll` messages are capped at [`MAX_ENROLL_MESSAGE`], the session's and log streams' at
//! [`MAX_AGENT_MESSAGE`].
//!
//! Refused calls are counted, not written one by one (`ControlPlane::refused`). A `Logs`
//! stream, like a session, ends when its certificate stops being valid for its host or
//! expires (`session::grants`).

use std::pin::Pin;
use std::sync::Arc;

use flotilla_proto::tls::{self, PeerInfo, identity_of};
use flotilla_proto::v1::{self, agent_service_server::AgentService};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::control_plane::core::ControlPlane;
use crate::control_plane::log_router::LogEvent;
use crate::control_plane::session::{AuthError, AuthenticatedHost};
use crate::control_plane::status::IntoStatus;

pub struct AgentApi {
    pub cp: Arc<ControlPlane>,
}

/// The gRPC path of `Enroll`, the one RPC a connection without a client certificate may call.
pub const ENROLL_PATH: &str = "/flotilla.v1.AgentService/Enroll";
/// The largest `EnrollRequest` decoded: a token, a name, a CSR and host facts are a few KiB.
pub const MAX_ENROLL_MESSAGE: usize = 64 * 1024;
/// The largest session or log stream message decoded. The largest legitimate one is a
/// `LogChunk`: sent once its text passes 64 KiB (the agent's `logs::MAX_BYTES`), of at most
/// 256 lines cut at 64 KiB each — under 130 KiB; a session's messages are smaller.
pub const MAX_AGENT_MESSAGE: usize = 1024 * 1024;

/// The agent port's front door (an axum middleware over every route).
pub async fn gate(
    axum::extract::State(cp): axum::extract::State<Arc<ControlPlane>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let peer = req.extensions().get::<PeerInfo>();
    let path = req.uri().path();
    if path == ENROLL_PATH {
        if let Some(source) = peer.and_then(|p| p.remote_addr).map(|a| tls::source_of(a.ip()))
            && let Err(throttled) = cp.enroll_limit.take(source)
        {
            return Status::resource_exhausted(throttled.to_string()).into_http();
        }
    } else if peer.is_none_or(|p| p.certs.is_none()) && !is_download(path) {
        // Refused here, without an audit record: an unauthenticated client cannot make the
        // control plane write.
        return AuthError::NoCertificate.into_status().into_http();
    }
    next.run(req).await
}

fn is_download(path: &str) -> bool {
    let bin = crate::control_plane::agent_binary::PATH;
    path == bin || path.strip_prefix(bin) == Some(".sha256")
}

fn remote_of<T>(req: &Request<T>) -> Option<std::net::SocketAddr> {
    req.extensions().get::<PeerInfo>().and_then(|p| p.remote_addr)
}

fn peer_of<T>(req: &Request<T>) -> String {
    remote_of(req).map(|a| a.to_string()).unwrap_or_default()
}

/// The protocol version a request declares; an agent that declares none is older than v1's
/// header and is told so.
fn check_protocol<T>(req: &Request<T>) -> Result<(), AuthError> {
    let ours = flotilla_proto::PROTOCOL_VERSION;
    let theirs = req
        .metadata()
        .get(flotilla_proto::PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    match theirs {
        Some(v) => match flotilla_proto::agent_protocol_refusal(v) {
            None => Ok(()),
            Some(why) => Err(AuthError::Protocol(why)),
        },
        None => Err(AuthError::Protocol(format!(
            "request carries no '{}' header; this coordinator speaks protocol v{ours}",
            flotilla_proto::PROTOCOL_HEADER
        ))),
    }
}

impl AgentApi {
    /// Requires a host certificate from the cluster CA (rustls verified the chain), for an
    /// enrolled, unrevoked host, with a serial the host still holds, not expired. The grant
    /// token is taken before the store is read (see `session::grants`).
    fn authenticate<T>(&self, req: &Request<T>) -> Result<AuthenticatedHost, AuthError> {
        let certs = req.extensions().get::<PeerInfo>().and_then(|p| p.certs.clone()).ok_or(AuthError::NoCertificate)?;
        let leaf = certs.first().ok_or(AuthError::NoCertificate)?;
        let id = identity_of(leaf).ok_or(AuthError::Unparseable)?;
        if id.organizational_unit != flotilla_proto::OU_HOST {
            return Err(AuthError::NotAHost(id.organizational_unit));
        }
        let grant = self.cp.grants.token(&id.common_name, &id.serial);
        let rec = self
            .cp
            .store
            .host(&id.common_name)
            .map_err(|_| AuthError::UnknownHost(id.common_name.clone()))?
            .ok_or_else(|| AuthError::UnknownHost(id.common_name.clone()))?;
        if rec.revoked {
            return Err(AuthError::Revoked(id.common_name));
        }
        if !rec.certs.iter().any(|c| c.serial == id.serial) {
            return Err(AuthError::Superseded { host: id.common_name, serial: id.serial });
        }
        if self.cp.clock.now_ms() / 1000 >= id.not_after_unix {
            return Err(AuthError::Expired { host: id.common_name, serial: id.serial });
        }
        Ok(AuthenticatedHost {
            name: id.common_name,
            serial: id.serial,
            not_before_unix: id.not_before_unix,
            not_after_unix: id.not_after_unix,
            peer: peer_of(req),
            remote: remote_of(req),
            grant,
        })
    }

    /// Counts the refusal (no write per call: `ControlPlane::refused`) and answers it.
    fn refuse(&self, kind: &str, remote: Option<std::net::SocketAddr>, err: AuthError) -> Status {
        let host = match &err {
            AuthError::UnknownHost(h) | AuthError::Revoked(h) => h.clone(),
            AuthError::Superseded { host, .. } | AuthError::Expired { host, .. } => host.clone(),
            _ => String::new(),
        };
        self.cp.refused(kind, &host, &err.to_string(), remote);
        err.into_status()
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn enroll(&self, req: Request<v1::EnrollRequest>) -> Result<Response<v1::EnrollResponse>, Status> {
        check_protocol(&req).map_err(IntoStatus::into_status)?;
        let remote = remote_of(&req);
        let source = remote.map(|a| tls::source_of(a.ip()));
        let cp = Arc::clone(&self.cp);
        let body = req.into_inner();
        // Signing and the fsync'd commit are blocking work: keep them off the reactor.
        let resp = tokio::task::spawn_blocking(move || cp.enroll(&body, remote))
            .await
            .map_err(|e| Status::internal(format!("enrollment task failed: {e}")))?
            .map_err(IntoStatus::into_status)?;
        // Enrolled: the attempt's token goes back to its buckets (see `enroll_limit`).
        if let Some(source) = source {
            self.cp.enroll_limit.give_back(source);
        }
        Ok(Response::new(resp))
    }

    type SessionStream = BoxStream<v1::CoordinatorMessage>;

    async fn session(
        &self,
        req: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let remote = remote_of(&req);
        check_protocol(&req).map_err(|e| self.refuse("session.refused.protocol", remote, e))?;
        let who = self.authenticate(&req).map_err(|e| self.refuse("session.refused", remote, e))?;
        let rx = self.cp.open_session(who, req.into_inner()).await.map_err(IntoStatus::into_status)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type LogsStream = BoxStream<v1::LogAck>;

    async fn logs(&self, req: Request<Streaming<v1::LogChunk>>) -> Result<Response<Self::LogsStream>, Status> {
        let remote = remote_of(&req);
        check_protocol(&req).map_err(|e| self.refuse("logs.refused.protocol", remote, e))?;
        let who = self.authenticate(&req).map_err(|e| self.refuse("logs.refused", remote, e))?;
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.ok_or_else(|| Status::invalid_argument("empty log stream"))?;
        let Some(route) = self.cp.logs.route(&first.stream_id, &who.name) else {
            return Err(Status::not_found(format!(
                "no follower for log stream '{}' of host '{}'",
                first.stream_id, who.name
            )));
        };
        let (ack_tx, ack_rx) = tokio::sync::mpsc::channel::<Result<v1::LogAck, Status>>(16);
        tokio::spawn(Arc::clone(&self.cp).relay_logs(who, first, inbound, route, ack_tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(ack_rx))))
    }

    async fn upload_backup(
        &self,
        req: Request<Streaming<v1::BackupChunk>>,
    ) -> Result<Response<v1::UploadBackupResponse>, Status> {
        let remote = remote_of(&req);
        check_protocol(&req).map_err(|e| self.refuse("backup.refused.protocol", remote, e))?;
        let who = self.authenticate(&req).map_err(|e| self.refuse("backup.refused", remote, e))?;
        let resp = self.cp.receive_backup(&who, req.into_inner()).await.map_err(IntoStatus::into_status)?;
        Ok(Response::new(resp))
    }

    type DownloadBackupStream = BoxStream<v1::BackupChunk>;

    async fn download_backup(
        &self,
        req: Request<v1::DownloadBackupRequest>,
    ) -> Result<Response<Self::DownloadBackupStream>, Status> {
        let remote = remote_of(&req);
        check_protocol(&req).map_err(|e| self.refuse("restore.refused.protocol", remote, e))?;
        let who = self.authenticate(&req).map_err(|e| self.refuse("restore.refused", remote, e))?;
        let chunks = self.cp.restore_download(&who, &req.into_inner().restore_id).map_err(IntoStatus::into_status)?;
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok)))))
    }

    type DownloadAgentStream = BoxStream<v1::AgentBinaryChunk>;

    async fn download_agent(
        &self,
        req: Request<v1::DownloadAgentRequest>,
    ) -> Result<Response<Self::DownloadAgentStream>, Status> {
        let remote = remote_of(&req);
        check_protocol(&req).map_err(|e| self.refuse("agent_upgrade.refused.protocol", remote, e))?;
        let who = self.authenticate(&req).map_err(|e| self.refuse("agent_upgrade.refused", remote, e))?;
        let chunks = self.cp.agent_download(&who, &req.into_inner().upgrade_id).map_err(IntoStatus::into_status)?;
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok)))))
    }

    async fn report_agent_upgrade(
        &self,
        req: Request<v1::AgentUpgradeResult>,
    ) -> Result<Response<v1::AgentUpgradeAck>, Status> {
        let remote = remote_of(&req);
        check_protocol(&req).map_err(|e| self.refuse("agent_upgrade.refused.protocol", remote, e))?;
        let who = self.authenticate(&req).map_err(|e| self.refuse("agent_upgrade.refused", remote, e))?;
        self.cp.agent_upgrade_reported(&who, req.into_inner()).map_err(IntoStatus::into_status)?;
        Ok(Response::new(v1::AgentUpgradeAck {}))
    }

    async fn report_restore(&self, req: Request<v1::RestoreResult>) -> Result<Response<v1::RestoreResultAck>, Status> {
        let remote = remote_of(&req);
        check_protocol(&req).map_err(|e| self.refuse("restore.refused.protocol", remote, e))?;
        let who = self.authenticate(&req).map_err(|e| self.refuse("restore.refused", remote, e))?;
        self.cp.restore_reported(&who, req.into_inner()).map_err(IntoStatus::into_status)?;
        Ok(Response::new(v1::RestoreResultAck {}))
    }
}

/// Why a `Logs` stream was cut by the control plane.
fn cut_status(who: &AuthenticatedHost, expired: bool) -> Status {
    if expired {
        Status::unauthenticated(format!(
            "the certificate this log stream holds (serial {}) expired at {} (unix)",
            who.serial, who.not_after_unix
        ))
    } else {
        Status::permission_denied(format!(
            "the certificate this log stream holds (serial {}) is no longer valid for host '{}': it was revoked, or the host enrolled again",
            who.serial, who.name
        ))
    }
}

impl ControlPlane {
    /// Passes one `Logs` stream's chunks to its follower and acknowledges them, until the
    /// agent or the follower goes away, the control plane shuts down, or the stream's
    /// certificate stops being valid or expires (then the follower is told why).
    async fn relay_logs(
        self: Arc<Self>,
        who: AuthenticatedHost,
        first: v1::LogChunk,
        mut inbound: Streaming<v1::LogChunk>,
        route: tokio::sync::mpsc::Sender<LogEvent>,
        ack_tx: tokio::sync::mpsc::Sender<Result<v1::LogAck, Status>>,
    ) {
        let shutdown = self.shutdown.clone();
        let expiry = self.until_expiry(who.not_after_unix);
        tokio::pin!(expiry);
        let mut chunk = Some(first);
        loop {
            let c = match chunk.take() {
                Some(c) => c,
                None => tokio::select! {
                    m = inbound.next() => match m {
                        Some(Ok(c)) => c,
                        _ => break,
                    },
                    () = shutdown.cancelled() => break,
                    () = who.grant.cancelled() => return self.cut_logs(&who, false, &route, &ack_tx).await,
                    () = &mut expiry => return self.cut_logs(&who, true, &route, &ack_tx).await,
                },
            };
            let last = c.lines.last().map(|l| l.unix_ns);
            let n = c.lines.len();
            if n > 0 {
                if route.send(LogEvent::Lines(c.lines)).await.is_err() {
                    self.metrics.log_lines_dropped(n);
                    let _ = ack_tx.send(Err(Status::cancelled("the follower went away"))).await;
                    break;
                }
                self.metrics.log_lines_streamed(n);
            }
            if c.eof || !c.error.is_empty() {
                let error = (!c.error.is_empty()).then_some(c.error);
                let _ = route.send(LogEvent::End { error }).await;
            }
            if let Some(ns) = last
                && ack_tx.send(Ok(v1::LogAck { unix_ns: ns })).await.is_err()
            {
                break;
            }
        }
    }

    /// Ends a `Logs` stream the control plane cut: the follower's source ends with the reason,
    /// the agent's RPC with its status.
    async fn cut_logs(
        &self,
        who: &AuthenticatedHost,
        expired: bool,
        route: &tokio::sync::mpsc::Sender<LogEvent>,
        ack_tx: &tokio::sync::mpsc::Sender<Result<v1::LogAck, Status>>,
    ) {
        let status = cut_status(who, expired);
        tracing::info!(host = %who.name, serial = %who.serial, reason = status.message(), "log stream cut");
        let _ = route.send(LogEvent::End { error: Some(status.message().to_string()) }).await;
        let _ = ack_tx.send(Err(status)).await;
    }
}
