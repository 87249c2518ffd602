//! The agent's identity: its private key (made here, never sent anywhere) and the client
//! certificate the coordinator signed for it, kept together in `<state>/identity.pem`
//! (0600) so a renewal replaces both in one atomic rename.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_proto::tls::{self, Identity, PeerIdentity};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {detail}; delete it and give the agent a new join token to re-enroll")]
    Corrupt { path: PathBuf, detail: String },
    #[error("key generation: {0}")]
    Keygen(#[from] rcgen::Error),
}

/// A key pair and a CSR for it, before the coordinator signed it.
pub struct PendingKey {
    key: KeyPair,
    pub csr_pem: String,
}

impl PendingKey {
    /// A fresh ECDSA P-256 key and a CSR whose CN is `host`.
    pub fn generate(host: &str) -> Result<Self, IdentityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        let csr_pem = params.serialize_request(&key)?.pem()?;
        Ok(Self { key, csr_pem })
    }

    /// Combines the key with its signed certificate.
    pub fn into_stored(self, certificate_pem: &str) -> Result<StoredIdentity, IdentityError> {
        StoredIdentity::from_parts(certificate_pem, &self.key.serialize_pem(), Path::new("<new certificate>"))
    }
}

/// What lives in `identity.pem`.
#[derive(Clone)]
pub struct StoredIdentity {
    pub cert_pem: String,
    key_pem: String,
    pub tls: Identity,
    pub facts: PeerIdentity,
}

impl StoredIdentity {
    fn from_parts(cert_pem: &str, key_pem: &str, path: &Path) -> Result<Self, IdentityError> {
        let corrupt = |detail: String| IdentityError::Corrupt { path: path.to_path_buf(), detail };
        let tls = Identity::from_pem("identity", cert_pem, key_pem).map_err(|e| corrupt(e.to_string()))?;
        let facts =
            tls.chain.first().and_then(tls::identity_of).ok_or_else(|| corrupt("certificate does not parse".into()))?;
        Ok(Self { cert_pem: cert_pem.to_string(), key_pem: key_pem.to_string(), tls, facts })
    }

    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("identity.pem")
    }

    /// Loads the identity, or `None` when the agent has not enrolled yet.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, IdentityError> {
        let path = Self::path(state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(IdentityError::Io { path, source }),
        };
        let (cert, key) = split_pem(&text);
        Self::from_parts(&cert, &key, &path).map(Some)
    }

    /// Writes `identity.pem` atomically, 0600.
    pub fn save(&self, state_dir: &Path) -> Result<(), IdentityError> {
        flotilla_proto::fs::private_dir(state_dir)
            .map_err(|source| IdentityError::Io { path: state_dir.to_path_buf(), source })?;
        let path = Self::path(state_dir);
        let body = format!("{}{}", self.cert_pem, self.key_pem);
        flotilla_proto::fs::write_private(&path, body.as_bytes()).map_err(|source| IdentityError::Io { path, source })
    }

    /// When to renew: two thirds of the way through the certificate's validity.
    pub fn renew_at(&self) -> SystemTime {
        let nb = self.facts.not_before_unix;
        let na = self.facts.not_after_unix;
        let at = nb + (na - nb) * 2 / 3;
        UNIX_EPOCH + Duration::from_secs(at.max(0) as u64)
    }

    /// How long from now until [`Self::renew_at`] (zero when due).
    pub fn renew_in(&self) -> Duration {
        self.renew_at().duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
    }

    pub fn is_expired(&self) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default();
        now >= self.facts.not_after_unix
    }
}

/// Splits a PEM bundle into (certificates, private key) by block label.
fn split_pem(text: &str) -> (String, String) {
    let mut certs = String::new();
    let mut key = String::new();
    let mut current: Option<&mut String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            current = Some(if line.contains("PRIVATE KEY") { &mut key } else { &mut certs });
        }
        if let Some(buf) = current.as_deref_mut() {
            buf.push_str(line);
            buf.push('\n');
        }
        if line.starts_with("-----END ") {
            current = None;
        }
    }
    (certs, key)
}
