//! Enrollment: a host trades its one-time join token and a CSR for a client certificate.
//!
//! The token is checked first (read-only), then the CSR; only when both are good is the
//! token consumed, the certificate issued and the host recorded — in one transaction. A bad
//! CSR therefore does not burn the token, and a refused token stores nothing: refusals are
//! only counted ([`ControlPlane::refused`]), the claimed host name cut and escaped.
//!
//! A (re-)enrollment ends whatever the host's earlier certificates hold open — its session
//! and its log streams (`session::grants`) — so an identity stolen before it loses its live
//! session the moment the real host enrolls again.

use flotilla_proto::v1;

use crate::control_plane::core::{ControlPlane, facts_from_proto};
use crate::control_plane::pki::PkiError;
use crate::control_plane::store::{AuditEvent, HostRecord, IssuedCert, StoreError};
use crate::control_plane::tokens::{self, TokenRefusal};
use crate::control_plane::untrusted::{NAME_MAX, clean};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    Token(#[from] TokenRefusal),
    #[error("invalid CSR: {0}")]
    Csr(String),
    #[error("'{0}' is not a valid host name")]
    BadHostName(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(PkiError),
}

impl From<PkiError> for EnrollError {
    fn from(e: PkiError) -> Self {
        match e {
            PkiError::BadCsr(m) => EnrollError::Csr(m),
            other => EnrollError::Pki(other),
        }
    }
}

impl ControlPlane {
    /// Enrolls a host (blocking: signs and commits; the gRPC edge runs it off the reactor).
    pub fn enroll(
        &self,
        req: &v1::EnrollRequest,
        remote: Option<std::net::SocketAddr>,
    ) -> Result<v1::EnrollResponse, EnrollError> {
        let host = req.host_name.as_str();
        let result = self.enroll_inner(req);
        match &result {
            Ok((_, again)) => {
                self.metrics.enrolled(*again);
                let peer = remote.map(|a| a.to_string()).unwrap_or_default();
                self.audit("enroll.ok", host, "", &peer);
                self.end_earlier_identity(host);
            }
            Err(EnrollError::Token(r)) => {
                self.refused(&format!("enroll.refused.{}", r.reason()), host, &r.to_string(), remote)
            }
            Err(EnrollError::Csr(m)) => self.refused("enroll.refused.csr", host, m, remote),
            Err(EnrollError::BadHostName(_)) => {
                self.refused("enroll.refused.host-name", host, "invalid host name", remote)
            }
            Err(e) => tracing::error!(host = %clean(host, NAME_MAX), error = %e, "enrollment failed"),
        }
        result.map(|(r, _)| r)
    }

    /// After `host` enrolled (again): its open session and log streams, all held by earlier
    /// certificates, end now.
    fn end_earlier_identity(&self, host: &str) {
        let closed = self.sessions.close(
            host,
            tonic::Status::permission_denied(format!(
                "host '{host}' enrolled again: the certificate this session holds is no longer valid"
            )),
        );
        let certs = self.grants.cancel_host(host);
        if closed || certs > 0 {
            tracing::info!(host, session_closed = closed, "re-enrolled: the earlier identity's streams were ended");
        }
    }

    /// Enrolls; also says whether the host name was known already (a re-enrollment).
    fn enroll_inner(&self, req: &v1::EnrollRequest) -> Result<(v1::EnrollResponse, bool), EnrollError> {
        let host = req.host_name.as_str();
        if !crate::control_plane::settings::valid_name(host) {
            return Err(EnrollError::BadHostName(clean(host, NAME_MAX)));
        }
        let now = self.clock.now_ms();
        // Token first (a read: no commit, no fsync): a stranger learns nothing about CSR
        // handling.
        tokens::check_with(|h| self.store.token(h), &req.token, host, now)?.map_err(EnrollError::Token)?;
        let issued = self.pki.sign_host_csr(host, &req.csr_pem, self.config.host_cert_validity)?;
        let facts = req.facts.as_ref().map(facts_from_proto).unwrap_or_default();
        let (host_id, again) = self.store.write(|tx| {
            // Re-check inside the transaction that consumes it: two racing enrollments with
            // the same token cannot both win.
            let hash = tokens::check(tx, &req.token, host, now)?.map_err(EnrollError::Token)?;
            tokens::consume(tx, &hash, now)?;
            let known = tx.host(host)?;
            let again = known.is_some();
            let mut rec = known.unwrap_or_else(|| HostRecord {
                name: host.to_string(),
                host_id: new_host_id(),
                enrolled_unix_ms: now,
                ..Default::default()
            });
            rec.revoked = false;
            rec.enrolled_unix_ms = now;
            rec.last_seen_unix_ms = now;
            rec.facts = facts;
            // A (re-)enrollment makes every earlier certificate of this host worthless.
            rec.certs = vec![IssuedCert { serial: issued.serial.clone(), not_after_unix: issued.not_after_unix }];
            tx.put_host(&rec)?;
            tx.audit(&AuditEvent {
                unix_ms: now,
                kind: "cert.issued".into(),
                host_name: host.into(),
                detail: format!("serial {} until {}", issued.serial, issued.not_after_unix),
                peer: String::new(),
                actor: String::new(),
            })?;
            Ok::<_, EnrollError>((rec.host_id, again))
        })?;
        let response = v1::EnrollResponse {
            host_id,
            certificate_pem: issued.certificate_pem,
            ca_chain_pem: vec![self.pki.ca_pem().to_string()],
        };
        Ok((response, again))
    }
}

fn new_host_id() -> String {
    let b: [u8; 8] = rand::random();
    format!("h-{}", hex::encode(b))
}
