//! The operator's API (`Admin` in `admin.proto`): served on the state directory's unix
//! socket (0600) and, to operator certificates, on the agent port. Also the CLI's client
//! side: how a command finds and dials the running control plane.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::tls::{self, PeerInfo, identity_of};
use flotilla_proto::v1::{self, admin_client::AdminClient, admin_server::Admin};
use futures::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::agent_api::IntoStatus;
use crate::control::{ControlError, ControlPlane};
use crate::logs::LogsError;
use crate::tokens;

pub struct AdminApi {
    pub cp: Arc<ControlPlane>,
}

impl IntoStatus for ControlError {
    fn into_status(self) -> Status {
        match &self {
            ControlError::BadHostName(_) | ControlError::TtlTooLong(_) => Status::invalid_argument(self.to_string()),
            ControlError::UnknownHost(_) => Status::not_found(self.to_string()),
            ControlError::BadAssignment { .. } | ControlError::NoActionKind | ControlError::NoRoleContainer => {
                Status::invalid_argument(self.to_string())
            }
            ControlError::NotConnected(_) => Status::unavailable(self.to_string()),
            ControlError::Store(_) | ControlError::Pki(_) => Status::internal(self.to_string()),
        }
    }
}

/// Unix-socket callers are the operator (the socket is 0600 in a 0700 directory). TLS
/// callers must present an operator certificate; host certificates are refused.
fn authorize<T>(req: &Request<T>) -> Result<(), Status> {
    let Some(peer) = req.extensions().get::<PeerInfo>() else {
        return Ok(());
    };
    let id = peer
        .certs
        .as_ref()
        .and_then(|c| c.first())
        .and_then(identity_of)
        .ok_or_else(|| Status::unauthenticated("the admin API requires an operator certificate"))?;
    if id.organizational_unit != flotilla_proto::OU_OPERATOR {
        return Err(Status::permission_denied(format!(
            "certificate of '{}' is not an operator certificate",
            id.common_name
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn status(&self, req: Request<v1::StatusRequest>) -> Result<Response<v1::StatusResponse>, Status> {
        authorize(&req)?;
        Ok(Response::new(self.cp.status().map_err(IntoStatus::into_status)?))
    }

    async fn create_token(
        &self,
        req: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let ttl = match r.ttl_s {
            0 => tokens::DEFAULT_TTL,
            s => Duration::from_secs(u64::from(s)),
        };
        let minted = self.cp.create_token(&r.host_name, ttl).map_err(IntoStatus::into_status)?;
        Ok(Response::new(v1::CreateTokenResponse {
            token: minted.token,
            expires_unix_ms: minted.record.expires_unix_ms,
        }))
    }

    async fn revoke_host(
        &self,
        req: Request<v1::RevokeHostRequest>,
    ) -> Result<Response<v1::RevokeHostResponse>, Status> {
        authorize(&req)?;
        let closed = self.cp.revoke_host(&req.into_inner().host_name).map_err(IntoStatus::into_status)?;
        Ok(Response::new(v1::RevokeHostResponse { session_closed: closed }))
    }

    async fn remove_host(
        &self,
        req: Request<v1::RevokeHostRequest>,
    ) -> Result<Response<v1::RevokeHostResponse>, Status> {
        authorize(&req)?;
        let closed = self.cp.remove_host(&req.into_inner().host_name).map_err(IntoStatus::into_status)?;
        Ok(Response::new(v1::RevokeHostResponse { session_closed: closed }))
    }

    async fn issue_operator_certificate(
        &self,
        req: Request<v1::IssueOperatorCertificateRequest>,
    ) -> Result<Response<v1::IssueOperatorCertificateResponse>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        if !crate::config::valid_name(&r.operator_name) {
            return Err(Status::invalid_argument(format!(
                "'{}' is not a valid operator name (1-63 of a-z, 0-9, '-')",
                r.operator_name
            )));
        }
        let issued = self
            .cp
            .pki
            .sign_operator_csr(&r.operator_name, &r.csr_pem, crate::pki::OPERATOR_CERT_VALIDITY)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.cp.audit("operator.cert.issued", "", format!("operator {}", r.operator_name), "");
        Ok(Response::new(v1::IssueOperatorCertificateResponse {
            certificate_pem: issued.certificate_pem,
            ca_chain_pem: vec![self.cp.pki.ca_pem().to_string()],
            endpoints: vec![self.cp.agent_endpoint.clone()],
        }))
    }

    async fn audit(&self, req: Request<v1::AuditRequest>) -> Result<Response<v1::AuditResponse>, Status> {
        authorize(&req)?;
        let limit = req.into_inner().limit as usize;
        let events = self
            .cp
            .store
            .audit_events(limit)
            .map_err(|e| Status::internal(e.to_string()))?
            .into_iter()
            .map(|e| v1::AuditEvent {
                unix_ms: e.unix_ms,
                kind: e.kind,
                host_name: e.host_name,
                detail: e.detail,
                peer: e.peer,
            })
            .collect();
        Ok(Response::new(v1::AuditResponse { events }))
    }

    async fn assign(&self, req: Request<v1::AssignRequest>) -> Result<Response<v1::AssignResponse>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let (generation, delivered) =
            self.cp.assign(&r.host_name, r.roles, &r.host_address).map_err(IntoStatus::into_status)?;
        Ok(Response::new(v1::AssignResponse { generation, delivered }))
    }

    async fn shutdown(&self, req: Request<v1::ShutdownRequest>) -> Result<Response<v1::ShutdownResponse>, Status> {
        authorize(&req)?;
        self.cp.shutdown.cancel();
        Ok(Response::new(v1::ShutdownResponse {}))
    }

    async fn engine_action(
        &self,
        req: Request<v1::EngineActionRequest>,
    ) -> Result<Response<v1::EngineActionResponse>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let action = v1::EngineAction { kind: r.kind, role: r.role, hold_s: r.hold_s };
        self.cp.engine_action(&r.host_name, action).map_err(IntoStatus::into_status)?;
        Ok(Response::new(v1::EngineActionResponse {}))
    }

    type FollowLogsStream = Pin<Box<dyn Stream<Item = Result<v1::LogLineOut, Status>> + Send + 'static>>;

    async fn follow_logs(
        &self,
        req: Request<v1::FollowLogsRequest>,
    ) -> Result<Response<Self::FollowLogsStream>, Status> {
        authorize(&req)?;
        let lines = self.cp.follow_logs(req.into_inner()).map_err(IntoStatus::into_status)?;
        // Cut by a shutdown: end with UNAVAILABLE, not OK, so the client knows to resume.
        let shutdown = self.cp.shutdown.clone();
        let cut = futures::stream::once(async move { shutdown.is_cancelled() }).filter_map(|cut| async move {
            cut.then(|| {
                Err(Status::unavailable(
                    "the control plane is stopping; resume each source with since_unix_ns = its last line's",
                ))
            })
        });
        Ok(Response::new(Box::pin(lines.map(Ok).chain(cut))))
    }
}

/// Errors reaching a control plane from the CLI.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "no control plane is running for cluster '{cluster}' (no admin socket at {socket}); start one with `coordinator serve --cluster {cluster}` (or `coordinator deploy`)"
    )]
    NotRunning { cluster: String, socket: PathBuf },
    #[error("cannot reach the control plane at {socket}: {source}")]
    Socket { socket: PathBuf, source: std::io::Error },
    #[error("remote admin: {0}")]
    Remote(String),
}

/// Dials the admin socket of a running control plane.
pub async fn connect_local(cluster: &str, socket: &Path) -> Result<AdminClient<Channel>, ConnectError> {
    if !socket.exists() {
        return Err(ConnectError::NotRunning { cluster: cluster.to_string(), socket: socket.to_path_buf() });
    }
    // Fail now, with the socket's own error, rather than on the first call.
    match tokio::net::UnixStream::connect(socket).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused || e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConnectError::NotRunning { cluster: cluster.to_string(), socket: socket.to_path_buf() });
        }
        Err(source) => {
            return Err(ConnectError::Socket { socket: socket.to_path_buf(), source });
        }
    }
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://admin.local")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| ConnectError::Socket { socket: socket.to_path_buf(), source: std::io::Error::other(e) })?;
    Ok(AdminClient::new(channel))
}

/// Dials a remote control plane's agent port with an operator certificate bundle (a
/// directory holding `ca.pem`, `cert.pem`, `key.pem`, `endpoint`).
pub fn connect_remote(bundle: &Path) -> Result<AdminClient<Channel>, ConnectError> {
    let read = |f: &str| {
        std::fs::read_to_string(bundle.join(f))
            .map_err(|e| ConnectError::Remote(format!("{}: {e}", bundle.join(f).display())))
    };
    let ca = tls::certs_from_pem("ca.pem", &read("ca.pem")?).map_err(|e| ConnectError::Remote(e.to_string()))?;
    let id = tls::Identity::from_pem("operator certificate", &read("cert.pem")?, &read("key.pem")?)
        .map_err(|e| ConnectError::Remote(e.to_string()))?;
    let endpoint = read("endpoint")?.trim().to_string();
    let config = tls::client_config(&ca, Some(&id)).map_err(|e| ConnectError::Remote(e.to_string()))?;
    let channel = tls::channel(&endpoint, config).map_err(|e| ConnectError::Remote(e.to_string()))?;
    Ok(AdminClient::new(channel))
}

impl IntoStatus for LogsError {
    fn into_status(self) -> Status {
        match &self {
            LogsError::UnknownHost(_) => Status::not_found(self.to_string()),
            LogsError::NotConnected(_) => Status::unavailable(self.to_string()),
            LogsError::Nothing(_) => Status::invalid_argument(self.to_string()),
            LogsError::Store(_) => Status::internal(self.to_string()),
        }
    }
}
