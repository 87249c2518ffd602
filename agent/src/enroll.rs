//! Enrollment: trade the one-time join token and a CSR for a client certificate, over
//! server-authenticated TLS (the agent has no certificate yet). The key never leaves.

use std::path::PathBuf;

use flotilla_proto::tls;
use flotilla_proto::v1::{EnrollRequest, agent_service_client::AgentServiceClient};
use rustls_pki_types::CertificateDer;

use crate::config::AgentConfig;
use crate::identity::{IdentityError, PendingKey, StoredIdentity};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "not enrolled and no join token at {0}: mint one with `coordinator token create --host <name>` and write it there"
    )]
    NoToken(PathBuf),
    #[error("join token file {path}: {source}")]
    TokenFile { path: PathBuf, source: std::io::Error },
    #[error("enrollment refused by the coordinator: {}", .0.message())]
    Refused(tonic::Status),
    #[error("coordinator {addr} unreachable: {}", status.message())]
    Unreachable { addr: String, status: tonic::Status },
    #[error("the coordinator returned a certificate for '{got}', expected '{want}'")]
    WrongCertificate { got: String, want: String },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

impl EnrollError {
    /// A refusal will not change by retrying with the same token.
    pub fn is_refusal(&self) -> bool {
        matches!(self, EnrollError::Refused(_) | EnrollError::NoToken(_))
    }
}

/// Enrolls through `addr`, saves the identity, deletes the token file.
pub async fn enroll(
    cfg: &AgentConfig,
    ca: &[CertificateDer<'static>],
    addr: &str,
    facts: flotilla_proto::v1::HostFacts,
) -> Result<(StoredIdentity, String), EnrollError> {
    let token = match std::fs::read_to_string(&cfg.token_file) {
        Ok(t) => t.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(EnrollError::NoToken(cfg.token_file.clone()));
        }
        Err(source) => {
            return Err(EnrollError::TokenFile { path: cfg.token_file.clone(), source });
        }
    };
    let pending = PendingKey::generate(&cfg.host_name)?;
    let channel = tls::channel(addr, tls::client_config(ca, None)?)?;
    let mut client = AgentServiceClient::with_interceptor(channel, flotilla_proto::protocol_header);
    let req =
        EnrollRequest { token, host_name: cfg.host_name.clone(), csr_pem: pending.csr_pem.clone(), facts: Some(facts) };
    let resp = client.enroll(req).await.map_err(|status| match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded => {
            EnrollError::Unreachable { addr: addr.to_string(), status }
        }
        _ => EnrollError::Refused(status),
    })?;
    let resp = resp.into_inner();
    let identity = pending.into_stored(&resp.certificate_pem)?;
    if identity.facts.common_name != cfg.host_name {
        return Err(EnrollError::WrongCertificate { got: identity.facts.common_name, want: cfg.host_name.clone() });
    }
    identity.save(&cfg.state_dir)?;
    // The token is spent; do not leave it lying around.
    if let Err(e) = std::fs::remove_file(&cfg.token_file) {
        tracing::warn!(path = %cfg.token_file.display(), error = %e, "could not delete the used join token");
    }
    tracing::info!(host = %cfg.host_name, host_id = %resp.host_id, serial = %identity.facts.serial, "enrolled");
    Ok((identity, resp.host_id))
}
