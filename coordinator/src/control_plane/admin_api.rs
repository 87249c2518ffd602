//! The operator's API (`Admin` in `admin.proto`): served on the state directory's unix
//! socket (0600) and, to operator certificates, on the agent port. Every RPC starts by asking
//! who is calling ([`AdminApi::caller`]); mutations record that caller in the audit. The
//! CLI's side — how a command finds and dials the running control plane — is
//! [`crate::admin_client`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::tls::{PeerInfo, identity_of};
use flotilla_proto::v1::{self, admin_server::Admin};
use futures::{Stream, StreamExt};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::control_plane::core::ControlPlane;
use crate::control_plane::operators::{Caller, OperatorError};
use crate::control_plane::pki::Issued;
use crate::control_plane::status::IntoStatus;
use crate::control_plane::tokens;

pub struct AdminApi {
    pub cp: Arc<ControlPlane>,
}

impl AdminApi {
    /// Who is calling, checked on every RPC: the unix socket (0600 in a 0700 directory) is
    /// the operator; on the agent port, an operator certificate this control plane issued and
    /// has not revoked (`operators.rs`). A request with neither is refused.
    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        if let Some(uds) = req.extensions().get::<UdsConnectInfo>() {
            return Ok(Caller::LocalSocket { uid: uds.peer_cred.map(|c| c.uid()) });
        }
        let Some(peer) = req.extensions().get::<PeerInfo>() else {
            return Err(OperatorError::NoCertificate.into_status());
        };
        let id = peer
            .certs
            .as_ref()
            .and_then(|c| c.first())
            .and_then(identity_of)
            .ok_or_else(|| OperatorError::NoCertificate.into_status())?;
        let from = peer.remote_addr.map(|a| a.to_string()).unwrap_or_default();
        self.cp.check_operator(&id, &from).map_err(|e| {
            self.cp.refused("admin.refused", &id.common_name, &e.to_string(), peer.remote_addr);
            e.into_status()
        })
    }
}

/// An operator certificate's response.
fn issued_response(cp: &ControlPlane, issued: Issued) -> v1::IssueOperatorCertificateResponse {
    v1::IssueOperatorCertificateResponse {
        certificate_pem: issued.certificate_pem,
        ca_chain_pem: vec![cp.pki.ca_pem().to_string()],
        endpoints: vec![cp.agent_endpoint.clone()],
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn status(&self, req: Request<v1::StatusRequest>) -> Result<Response<v1::StatusResponse>, Status> {
        self.caller(&req)?;
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
        let by = self.caller(&req)?;
        let r = req.into_inner();
        let ttl = match r.ttl_s {
            0 => tokens::DEFAULT_TTL,
            s => Duration::from_secs(u64::from(s)),
        };
        let minted = self.cp.create_token(&r.host_name, ttl, &by).map_err(IntoStatus::into_status)?;
        Ok(Response::new(v1::CreateTokenResponse {
            token: minted.token,
            expires_unix_ms: minted.record.expires_unix_ms,
        }))
    }

    async fn revoke_host(
        &self,
        req: Request<v1::RevokeHostRequest>,
    ) -> Result<Response<v1::RevokeHostResponse>, Status> {
        let by = self.caller(&req)?;
        let closed = self.cp.revoke_host(&req.into_inner().host_name, &by).map_err(IntoStatus::into_status)?;
        Ok(Response::new(v1::RevokeHostResponse { session_closed: closed }))
    }

    async fn remove_host(
        &self,
        req: Request<v1::RevokeHostRequest>,
    ) -> Result<Response<v1::RevokeHostResponse>, Status> {
        let by = self.caller(&req)?;
        let closed = self.cp.remove_host(&req.into_inner().host_name, &by).map_err(IntoStatus::into_status)?;
        Ok(Response::new(v1::RevokeHostResponse { session_closed: closed }))
    }

    async fn issue_operator_certificate(
        &self,
        req: Request<v1::IssueOperatorCertificateRequest>,
    ) -> Result<Response<v1::IssueOperatorCertificateResponse>, Status> {
        let by = self.caller(&req)?;
        let r = req.into_inner();
        let issued = self.cp.issue_operator_cert(&r.operator_name, &r.csr_pem, &by).map_err(IntoStatus::into_status)?;
        Ok(Response::new(issued_response(&self.cp, issued)))
    }

    async fn issue_engine_client_certificate(
        &self,
        req: Request<v1::IssueEngineClientCertificateRequest>,
    ) -> Result<Response<v1::IssueEngineClientCertificateResponse>, Status> {
        let by = self.caller(&req)?;
        let r = req.into_inner();
        let issued =
            self.cp.issue_engine_client_cert(&r.client_name, &r.csr_pem, &by).map_err(IntoStatus::into_status)?;
        Ok(Response::new(v1::IssueEngineClientCertificateResponse {
            certificate_pem: issued.certificate_pem,
            server_ca_pem: self.cp.pki.ca_pem().to_string(),
            client_ca_pem: self.cp.pki.engine_client_ca_pem().to_string(),
        }))
    }

    async fn revoke_operator_certificate(
        &self,
        req: Request<v1::RevokeOperatorCertificateRequest>,
    ) -> Result<Response<v1::RevokeOperatorCertificateResponse>, Status> {
        let by = self.caller(&req)?;
        let serials = self.cp.revoke_operator(&req.into_inner().operator_name, &by).map_err(IntoStatus::into_status)?;
        Ok(Response::new(v1::RevokeOperatorCertificateResponse { serials }))
    }

    async fn list_operator_certificates(
        &self,
        req: Request<v1::ListOperatorCertificatesRequest>,
    ) -> Result<Response<v1::ListOperatorCertificatesResponse>, Status> {
        self.caller(&req)?;
        let certificates = self
            .cp
            .operator_certs()
            .map_err(IntoStatus::into_status)?
            .into_iter()
            .map(|v| v1::OperatorCertificate {
                operator_name: v.name,
                serial: v.cert.serial,
                issued_unix_ms: v.cert.issued_unix_ms,
                not_after_unix_ms: v.cert.not_after_unix * 1000,
                revoked_unix_ms: v.cert.revoked_unix_ms.unwrap_or(0),
                issued_by: v.cert.issued_by,
            })
            .collect();
        Ok(Response::new(v1::ListOperatorCertificatesResponse { certificates }))
    }

    async fn record_drill(&self, req: Request<v1::DrillReport>) -> Result<Response<v1::DrillReportAck>, Status> {
        self.caller(&req)?;
        self.cp.record_drill(req.into_inner());
        Ok(Response::new(v1::DrillReportAck {}))
    }

    async fn audit(&self, req: Request<v1::AuditRequest>) -> Result<Response<v1::AuditResponse>, Status> {
        self.caller(&req)?;
        let limit = req.into_inner().limit as usize;
        // What was counted since the last flush is part of the answer.
        self.cp.flush_refusals_now().await;
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
                actor: e.actor,
            })
            .collect();
        let refusals = self
            .cp
            .store
            .refusals()
            .map_err(|e| Status::internal(e.to_string()))?
            .into_iter()
            .map(|r| v1::RefusalSummary {
                kind: r.kind,
                source: r.source,
                count: r.count,
                first_unix_ms: r.first_unix_ms,
                last_unix_ms: r.last_unix_ms,
                last_host_name: r.last_host_name,
                last_detail: r.last_detail,
            })
            .collect();
        Ok(Response::new(v1::AuditResponse { events, refusals }))
    }

    async fn assign(&self, req: Request<v1::AssignRequest>) -> Result<Response<v1::AssignResponse>, Status> {
        let by = self.caller(&req)?;
        let r = req.into_inner();
        let (generation, delivered) =
            self.cp.assign(&r.host_name, r.roles, &r.host_address, &by).map_err(IntoStatus::into_status)?;
        Ok(Response::new(v1::AssignResponse { generation, delivered }))
    }

    async fn shutdown(&self, req: Request<v1::ShutdownRequest>) -> Result<Response<v1::ShutdownResponse>, Status> {
        let by = self.caller(&req)?;
        self.cp.audit_by("control-plane.shutdown", "", "", "", &by.to_string());
        self.cp.shutdown.cancel();
        Ok(Response::new(v1::ShutdownResponse {}))
    }

    async fn take_backup(
        &self,
        req: Request<v1::TakeBackupRequest>,
    ) -> Result<Response<v1::TakeBackupResponse>, Status> {
        let by = self.caller(&req)?;
        let kinds: Vec<v1::BackupKind> =
            req.into_inner().kinds.into_iter().filter_map(|k| v1::BackupKind::try_from(k).ok()).collect();
        let taken = self.cp.take_backups(&kinds, &by.to_string()).await.map_err(IntoStatus::into_status)?;
        let dir = &self.cp.config.state_dir;
        Ok(Response::new(v1::TakeBackupResponse {
            backups: taken.iter().map(|m| crate::control_plane::backup::record_of(dir, m)).collect(),
        }))
    }

    async fn restore_backup(
        &self,
        req: Request<v1::RestoreBackupRequest>,
    ) -> Result<Response<v1::RestoreBackupResponse>, Status> {
        let by = self.caller(&req)?;
        let r = req.into_inner();
        let detail = self
            .cp
            .restore_backup(&r.host_name, &r.backup_id, &r.advertise_addr, &by.to_string())
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(v1::RestoreBackupResponse { detail }))
    }

    async fn upgrade_agent(
        &self,
        req: Request<v1::UpgradeAgentRequest>,
    ) -> Result<Response<v1::UpgradeAgentResponse>, Status> {
        use crate::control_plane::agent_upgrade::AgentUpgradeError;
        let by = self.caller(&req)?;
        if !by.is_local() {
            return Err(AgentUpgradeError::NotLocal.into_status());
        }
        let r = req.into_inner();
        let detail = self
            .cp
            .upgrade_agent(&r.host_name, &r.binary_path, &r.sha256, &by.to_string())
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(v1::UpgradeAgentResponse { detail }))
    }

    async fn engine_action(
        &self,
        req: Request<v1::EngineActionRequest>,
    ) -> Result<Response<v1::EngineActionResponse>, Status> {
        let by = self.caller(&req)?;
        let r = req.into_inner();
        let action = v1::EngineAction { kind: r.kind, role: r.role, hold_s: r.hold_s };
        self.cp.engine_action(&r.host_name, action, &by).map_err(IntoStatus::into_status)?;
        Ok(Response::new(v1::EngineActionResponse {}))
    }

    async fn set_heal_policy(&self, req: Request<v1::HealPolicy>) -> Result<Response<v1::HealPolicy>, Status> {
        let by = self.caller(&req)?;
        let p = self.cp.set_heal_policy(req.into_inner(), &by).map_err(IntoStatus::into_status)?;
        Ok(Response::new(p))
    }

    async fn report_heal(&self, req: Request<v1::HealProgress>) -> Result<Response<v1::HealProgressAck>, Status> {
        let by = self.caller(&req)?;
        self.cp.report_heal(req.into_inner(), &by);
        Ok(Response::new(v1::HealProgressAck {}))
    }

    type FollowLogsStream = Pin<Box<dyn Stream<Item = Result<v1::LogLineOut, Status>> + Send + 'static>>;

    async fn follow_logs(
        &self,
        req: Request<v1::FollowLogsRequest>,
    ) -> Result<Response<Self::FollowLogsStream>, Status> {
        self.caller(&req)?;
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

/// The path prefix of every `Admin` method.
const ADMIN_PATH: &str = "/flotilla.v1.Admin/";

/// Counts each `Admin` call by method (`flotilla_admin_rpcs_total`), on the unix socket and
/// on the agent port; a path no method answers (`UNIMPLEMENTED`) counts as `other`, so a
/// caller cannot make new series.
pub async fn count_rpcs(
    axum::extract::State(cp): axum::extract::State<Arc<ControlPlane>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.uri().path().strip_prefix(ADMIN_PATH).map(str::to_string);
    let resp = next.run(req).await;
    if let Some(m) = method {
        let unknown = resp.headers().get("grpc-status").is_some_and(|s| s == "12");
        cp.metrics.admin_rpc(if unknown || m.len() > 64 { "other" } else { &m });
    }
    resp
}
