//! The operator's API (`Admin` in `admin.proto`): served on the state directory's unix
//! socket (0600) and, to operator certificates, on the agent port. The CLI's side — how a
//! command finds and dials the running control plane — is [`crate::admin_client`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::tls::{PeerInfo, identity_of};
use flotilla_proto::v1::{self, admin_server::Admin};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::control_plane::core::ControlPlane;
use crate::control_plane::status::IntoStatus;
use crate::control_plane::tokens;

pub struct AdminApi {
    pub cp: Arc<ControlPlane>,
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
        let st = if req.into_inner().fresh {
            self.cp.fresh_status(crate::control_plane::core::FRESH_SAMPLE_WAIT).await
        } else {
            self.cp.status()
        };
        Ok(Response::new(st.map_err(IntoStatus::into_status)?))
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
        if !crate::control_plane::settings::valid_name(&r.operator_name) {
            return Err(Status::invalid_argument(format!(
                "'{}' is not a valid operator name (1-63 of a-z, 0-9, '-')",
                r.operator_name
            )));
        }
        let issued = self
            .cp
            .pki
            .sign_operator_csr(&r.operator_name, &r.csr_pem, crate::control_plane::pki::OPERATOR_CERT_VALIDITY)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.cp.audit("operator.cert.issued", "", format!("operator {}", r.operator_name), "");
        Ok(Response::new(v1::IssueOperatorCertificateResponse {
            certificate_pem: issued.certificate_pem,
            ca_chain_pem: vec![self.cp.pki.ca_pem().to_string()],
            endpoints: vec![self.cp.agent_endpoint.clone()],
        }))
    }

    async fn issue_engine_client_certificate(
        &self,
        req: Request<v1::IssueEngineClientCertificateRequest>,
    ) -> Result<Response<v1::IssueEngineClientCertificateResponse>, Status> {
        authorize(&req)?;
        if req.extensions().get::<PeerInfo>().is_some() {
            return Err(Status::permission_denied(
                "Engine client certificates are issued only over the local admin socket",
            ));
        }
        let r = req.into_inner();
        if !crate::control_plane::settings::valid_name(&r.client_name) {
            return Err(Status::invalid_argument(format!(
                "'{}' is not a valid Engine client name (1-63 of a-z, 0-9, '-')",
                r.client_name
            )));
        }
        let issued = self
            .cp
            .pki
            .sign_engine_client_csr(&r.client_name, &r.csr_pem, crate::control_plane::pki::OPERATOR_CERT_VALIDITY)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.cp.audit(
            "engine.client.cert.issued",
            "",
            format!("Engine client {} (serial {})", r.client_name, issued.serial),
            "local socket",
        );
        Ok(Response::new(v1::IssueEngineClientCertificateResponse {
            certificate_pem: issued.certificate_pem,
            server_ca_pem: self.cp.pki.ca_pem().to_string(),
            client_ca_pem: self.cp.pki.engine_client_ca_pem().to_string(),
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
