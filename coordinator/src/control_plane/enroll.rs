//! Enrollment: a host trades its one-time join token and a CSR for a client certificate.
//!
//! The token is checked first (read-only), then the CSR; only when both are good is the
//! token consumed, the certificate issued and the host recorded — in one transaction. A bad
//! CSR therefore does not burn the token, and a refused token stores nothing.

use flotilla_proto::v1;

use crate::control_plane::core::{ControlPlane, facts_from_proto};
use crate::control_plane::pki::PkiError;
use crate::control_plane::store::{AuditEvent, HostRecord, IssuedCert, StoreError};
use crate::control_plane::tokens::{self, TokenRefusal};

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
    pub fn enroll(&self, req: &v1::EnrollRequest, peer: &str) -> Result<v1::EnrollResponse, EnrollError> {
        let host = req.host_name.as_str();
        let result = self.enroll_inner(req);
        match &result {
            Ok(_) => self.audit("enroll.ok", host, "", peer),
            Err(EnrollError::Token(r)) => {
                self.audit(&format!("enroll.refused.{}", r.reason()), host, r.to_string(), peer)
            }
            Err(EnrollError::Csr(m)) => self.audit("enroll.refused.csr", host, m.clone(), peer),
            Err(EnrollError::BadHostName(_)) => self.audit("enroll.refused.host-name", host, "invalid host name", peer),
            Err(e) => tracing::error!(host, error = %e, "enrollment failed"),
        }
        result
    }

    fn enroll_inner(&self, req: &v1::EnrollRequest) -> Result<v1::EnrollResponse, EnrollError> {
        let host = req.host_name.as_str();
        if !crate::control_plane::settings::valid_name(host) {
            return Err(EnrollError::BadHostName(host.to_string()));
        }
        let now = self.clock.now_ms();
        // Token first (a read: no commit, no fsync): a stranger learns nothing about CSR
        // handling.
        tokens::check_with(|h| self.store.token(h), &req.token, host, now)?.map_err(EnrollError::Token)?;
        let issued = self.pki.sign_host_csr(host, &req.csr_pem, self.config.host_cert_validity)?;
        let facts = req.facts.as_ref().map(facts_from_proto).unwrap_or_default();
        let host_id = self.store.write(|tx| {
            // Re-check inside the transaction that consumes it: two racing enrollments with
            // the same token cannot both win.
            let hash = tokens::check(tx, &req.token, host, now)?.map_err(EnrollError::Token)?;
            tokens::consume(tx, &hash, now)?;
            let mut rec = tx.host(host)?.unwrap_or_else(|| HostRecord {
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
            })?;
            Ok::<_, EnrollError>(rec.host_id)
        })?;
        Ok(v1::EnrollResponse {
            host_id,
            certificate_pem: issued.certificate_pem,
            ca_chain_pem: vec![self.pki.ca_pem().to_string()],
        })
    }
}

fn new_host_id() -> String {
    let b: [u8; 8] = rand::random();
    format!("h-{}", hex::encode(b))
}
