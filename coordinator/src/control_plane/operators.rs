//! Operators and their certificates (issue 14): who may call the admin API, and who did.
//!
//! - The unix socket (0600 in a 0700 directory) is the root of trust: whoever can open it can
//!   read the CA key next to it anyway. Only its callers mint or revoke credentials —
//!   operator certificates ([`ControlPlane::issue_operator_cert`],
//!   [`ControlPlane::revoke_operator`]) and the Engine client certificate `docker` uses
//!   ([`ControlPlane::issue_engine_client_cert`]) — so a certificate cannot mint more of
//!   itself, nor outlive its revocation by minting a successor first.
//! - An operator certificate (OU `flotilla-operator`) is recorded by serial when issued; the
//!   admin API checks the caller's serial against the record on every call
//!   ([`ControlPlane::check_operator`]): unknown, revoked or expired serials are refused at
//!   their next call.
//! - The Engine client certificate (OU `flotilla-engine-client`, signed by the Engine client
//!   CA the control plane does not trust) is for the managers' Engines: its TLS handshake with
//!   the agent port already fails; should one chain to the cluster CA, its OU is refused here.
//! - Every admin mutation's audit event names its [`Caller`].

pub mod caller;

use flotilla_proto::tls::PeerIdentity;

use crate::control_plane::core::ControlPlane;
use crate::control_plane::pki::{self, Issued, PkiError};
use crate::control_plane::settings::valid_name;
use crate::control_plane::store::{OperatorCert, OperatorRecord, StoreError};
pub use caller::Caller;

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("the admin API requires an operator certificate (or the local admin socket)")]
    NoCertificate,
    #[error(
        "certificate of '{name}' is an Engine client certificate: it drives the managers' Docker Engines, not the admin API; use an operator bundle (`coordinator operator-cert create`)"
    )]
    EngineClient { name: String },
    #[error("certificate of '{name}' is not an operator certificate (OU '{ou}')")]
    NotAnOperator { name: String, ou: String },
    #[error(
        "operator certificate '{name}' (serial {serial}) was not issued by this control plane; ask for a new bundle (`coordinator operator-cert create {name}` on the control plane's machine)"
    )]
    Unknown { name: String, serial: String },
    #[error("operator certificate '{name}' (serial {serial}) was revoked")]
    Revoked { name: String, serial: String },
    #[error("operator certificate '{name}' (serial {serial}) has expired")]
    Expired { name: String, serial: String },
    #[error(
        "{what} is only possible over the control plane's local admin socket (on its machine), not with a certificate"
    )]
    LocalOnly { what: &'static str },
    #[error("'{0}' is not a valid operator name (1-63 of a-z, 0-9, '-')")]
    BadName(String),
    #[error("no operator certificate was ever issued to '{0}'")]
    UnknownName(String),
    #[error("invalid CSR: {0}")]
    Csr(String),
    #[error(transparent)]
    Pki(PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<PkiError> for OperatorError {
    fn from(e: PkiError) -> Self {
        match e {
            PkiError::BadCsr(m) => OperatorError::Csr(m),
            other => OperatorError::Pki(other),
        }
    }
}

/// What an operator certificate in the list says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorCertView {
    pub name: String,
    pub cert: OperatorCert,
}

impl ControlPlane {
    /// Whether the certificate `id` (verified by rustls, from the agent port) may call the
    /// admin API now: an operator certificate this control plane issued, not revoked, not
    /// expired. Returns the caller as the audit names it.
    pub fn check_operator(&self, id: &PeerIdentity, peer: &str) -> Result<Caller, OperatorError> {
        let (name, serial) = (id.common_name.clone(), id.serial.clone());
        match id.organizational_unit.as_str() {
            flotilla_proto::OU_OPERATOR => {}
            flotilla_proto::OU_ENGINE_CLIENT => return Err(OperatorError::EngineClient { name }),
            ou => return Err(OperatorError::NotAnOperator { name, ou: ou.to_string() }),
        }
        let record = self.store.operator(&name)?;
        let Some(cert) = record.as_ref().and_then(|r| r.certs.iter().find(|c| c.serial == serial)) else {
            return Err(OperatorError::Unknown { name, serial });
        };
        if cert.revoked_unix_ms.is_some() {
            return Err(OperatorError::Revoked { name, serial });
        }
        if self.clock.now_ms() / 1000 >= cert.not_after_unix {
            return Err(OperatorError::Expired { name, serial });
        }
        Ok(Caller::Operator { name, serial, peer: peer.to_string() })
    }

    /// Signs an operator's CSR and records its serial. Local socket only.
    pub fn issue_operator_cert(&self, name: &str, csr_pem: &str, by: &Caller) -> Result<Issued, OperatorError> {
        only_local(by, "issuing an operator certificate")?;
        if !valid_name(name) {
            return Err(OperatorError::BadName(name.to_string()));
        }
        let issued = self.pki.sign_operator_csr(name, csr_pem, pki::OPERATOR_CERT_VALIDITY)?;
        let now = self.clock.now_ms();
        self.store.write(|tx| {
            let mut rec = tx.operator(name)?.unwrap_or_else(|| OperatorRecord { name: name.into(), certs: Vec::new() });
            rec.certs.push(OperatorCert {
                serial: issued.serial.clone(),
                issued_unix_ms: now,
                not_after_unix: issued.not_after_unix,
                revoked_unix_ms: None,
                issued_by: by.to_string(),
            });
            tx.put_operator(&rec)
        })?;
        let detail = format!("operator {name}: serial {} until {}", issued.serial, issued.not_after_unix);
        self.audit_by("operator.cert.issued", "", detail, "", &by.to_string());
        Ok(issued)
    }

    /// Signs the CSR of an Engine client certificate (`docker`, `coordinator env`, the
    /// failover drill) with the Engine client CA. Local socket only; not an admin credential.
    pub fn issue_engine_client_cert(&self, name: &str, csr_pem: &str, by: &Caller) -> Result<Issued, OperatorError> {
        only_local(by, "issuing an Engine client certificate")?;
        if !valid_name(name) {
            return Err(OperatorError::BadName(name.to_string()));
        }
        let issued = self.pki.sign_engine_client_csr(name, csr_pem, pki::OPERATOR_CERT_VALIDITY)?;
        let detail = format!("Engine client {name} (serial {}) until {}", issued.serial, issued.not_after_unix);
        self.audit_by("engine.client.cert.issued", "", detail, "", &by.to_string());
        Ok(issued)
    }

    /// Revokes every certificate issued to `name`: each is refused at its next admin call.
    /// Returns the serials this call revoked. Local socket only.
    pub fn revoke_operator(&self, name: &str, by: &Caller) -> Result<Vec<String>, OperatorError> {
        only_local(by, "revoking an operator certificate")?;
        let now = self.clock.now_ms();
        let revoked = self.store.write(|tx| {
            let Some(mut rec) = tx.operator(name)? else {
                return Err(OperatorError::UnknownName(name.to_string()));
            };
            let mut revoked = Vec::new();
            for c in rec.certs.iter_mut().filter(|c| c.revoked_unix_ms.is_none()) {
                c.revoked_unix_ms = Some(now);
                revoked.push(c.serial.clone());
            }
            tx.put_operator(&rec)?;
            Ok(revoked)
        })?;
        let detail = format!(
            "operator {name}: serials {}",
            if revoked.is_empty() { "none new".into() } else { revoked.join(",") }
        );
        self.audit_by("operator.cert.revoked", "", detail, "", &by.to_string());
        Ok(revoked)
    }

    /// Every operator certificate issued, by name then issue time.
    pub fn operator_certs(&self) -> Result<Vec<OperatorCertView>, OperatorError> {
        let mut out: Vec<OperatorCertView> = self
            .store
            .operators()?
            .into_iter()
            .flat_map(|r| {
                let name = r.name;
                r.certs.into_iter().map(move |cert| OperatorCertView { name: name.clone(), cert })
            })
            .collect();
        out.sort_by(|a, b| (&a.name, a.cert.issued_unix_ms).cmp(&(&b.name, b.cert.issued_unix_ms)));
        Ok(out)
    }
}

fn only_local(by: &Caller, what: &'static str) -> Result<(), OperatorError> {
    if by.is_local() { Ok(()) } else { Err(OperatorError::LocalOnly { what }) }
}
