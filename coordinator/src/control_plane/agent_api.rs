//! The `AgentService` gRPC edge: who is calling (certificate checks), protocol version
//! checks. Errors become `tonic::Status` in [`crate::control_plane::status`].
//!
//! In front of it, [`gate`] (issue 14), before routing and before any body is read: a
//! connection without a client certificate may only call `Enroll` and download the agent
//! binary, and every `Enroll` takes a token from [`crate::control_plane::enroll_limit`].
//! `Enroll` messages are capped at [`MAX_ENROLL_MESSAGE`], the session's and log streams' at
//! [`MAX_AGENT_MESSAGE`].

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

fn peer_of<T>(req: &Request<T>) -> String {
    req.extensions().get::<PeerInfo>().and_then(|p| p.remote_addr).map(|a| a.to_string()).unwrap_or_default()
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
        Some(v) if v == ours => Ok(()),
        Some(v) => Err(AuthError::Protocol(format!(
            "agent speaks protocol v{v}, this coordinator speaks v{ours}; upgrade the older side"
        ))),
        None => Err(AuthError::Protocol(format!(
            "request carries no '{}' header; this coordinator speaks protocol v{ours}",
            flotilla_proto::PROTOCOL_HEADER
        ))),
    }
}

impl AgentApi {
    /// Requires a host certificate from the cluster CA (rustls verified the chain), for an
    /// enrolled, unrevoked host, with a serial the host still holds.
    fn authenticate<T>(&self, req: &Request<T>) -> Result<AuthenticatedHost, AuthError> {
        let peer = peer_of(req);
        let certs = req.extensions().get::<PeerInfo>().and_then(|p| p.certs.clone()).ok_or(AuthError::NoCertificate)?;
        let leaf = certs.first().ok_or(AuthError::NoCertificate)?;
        let id = identity_of(leaf).ok_or(AuthError::Unparseable)?;
        if id.organizational_unit != flotilla_proto::OU_HOST {
            return Err(AuthError::NotAHost(id.organizational_unit));
        }
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
        Ok(AuthenticatedHost { name: id.common_name, serial: id.serial, not_after_unix: id.not_after_unix, peer })
    }

    fn refuse(&self, kind: &str, req_peer: &str, err: AuthError) -> Status {
        let host = match &err {
            AuthError::UnknownHost(h) | AuthError::Revoked(h) => h.clone(),
            AuthError::Superseded { host, .. } => host.clone(),
            _ => String::new(),
        };
        self.cp.audit(kind, &host, err.to_string(), req_peer);
        err.into_status()
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn enroll(&self, req: Request<v1::EnrollRequest>) -> Result<Response<v1::EnrollResponse>, Status> {
        check_protocol(&req).map_err(IntoStatus::into_status)?;
        let peer = peer_of(&req);
        let source = req.extensions().get::<PeerInfo>().and_then(|p| p.remote_addr).map(|a| tls::source_of(a.ip()));
        let cp = Arc::clone(&self.cp);
        let body = req.into_inner();
        // Signing and the fsync'd commit are blocking work: keep them off the reactor.
        let resp = tokio::task::spawn_blocking(move || cp.enroll(&body, &peer))
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
        let peer = peer_of(&req);
        check_protocol(&req).map_err(|e| self.refuse("session.refused.protocol", &peer, e))?;
        let who = self.authenticate(&req).map_err(|e| self.refuse("session.refused", &peer, e))?;
        let rx = self.cp.open_session(who, req.into_inner()).await.map_err(IntoStatus::into_status)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type LogsStream = BoxStream<v1::LogAck>;

    async fn logs(&self, req: Request<Streaming<v1::LogChunk>>) -> Result<Response<Self::LogsStream>, Status> {
        let peer = peer_of(&req);
        check_protocol(&req).map_err(|e| self.refuse("logs.refused.protocol", &peer, e))?;
        let who = self.authenticate(&req).map_err(|e| self.refuse("logs.refused", &peer, e))?;
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.ok_or_else(|| Status::invalid_argument("empty log stream"))?;
        let Some(route) = self.cp.logs.route(&first.stream_id, &who.name) else {
            return Err(Status::not_found(format!(
                "no follower for log stream '{}' of host '{}'",
                first.stream_id, who.name
            )));
        };
        let (ack_tx, ack_rx) = tokio::sync::mpsc::channel::<Result<v1::LogAck, Status>>(16);
        let shutdown = self.cp.shutdown.clone();
        tokio::spawn(async move {
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
                    },
                };
                let last = c.lines.last().map(|l| l.unix_ns);
                if !c.lines.is_empty() && route.send(LogEvent::Lines(c.lines)).await.is_err() {
                    let _ = ack_tx.send(Err(Status::cancelled("the follower went away"))).await;
                    break;
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
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(ack_rx))))
    }
}
