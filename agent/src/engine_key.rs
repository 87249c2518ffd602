//! The key of this host's Docker Engine TLS listener (a manager's 2376): made once by the
//! agent and kept in `<state>/engine-key.pem` (0600); it never leaves the host. Every Hello
//! and the enrollment carry a CSR for it (`HostFacts.engine_csr_pem`), so the coordinator
//! can sign the Engine's server certificate whenever it makes this host a manager, and
//! [`crate::engine_tls`] writes this key next to that certificate.

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

#[derive(Debug, thiserror::Error)]
pub enum EngineKeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {detail}; delete it and restart the agent to make a new one (the next deploy signs it)")]
    Corrupt { path: PathBuf, detail: String },
    #[error("the Engine's key and CSR: {0}")]
    Keygen(#[from] rcgen::Error),
}

/// The Engine's key (PEM) and a CSR for it whose CN is the host name.
#[derive(Clone)]
pub struct EngineKey {
    pub key_pem: String,
    pub csr_pem: String,
}

impl std::fmt::Debug for EngineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineKey").field("csr_pem", &self.csr_pem).finish_non_exhaustive()
    }
}

impl EngineKey {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("engine-key.pem")
    }

    /// Loads `<state>/engine-key.pem`, or makes an ECDSA P-256 key there (0600) on first use;
    /// then a CSR for it, `CN=<host>`.
    pub fn load_or_create(state_dir: &Path, host: &str) -> Result<Self, EngineKeyError> {
        let path = Self::path(state_dir);
        let key = match std::fs::read_to_string(&path) {
            Ok(pem) => KeyPair::from_pem(&pem)
                .map_err(|e| EngineKeyError::Corrupt { path: path.clone(), detail: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                flotilla_proto::fs::private_dir(state_dir)
                    .map_err(|source| EngineKeyError::Io { path: state_dir.to_path_buf(), source })?;
                flotilla_proto::fs::write_private(&path, key.serialize_pem().as_bytes())
                    .map_err(|source| EngineKeyError::Io { path: path.clone(), source })?;
                key
            }
            Err(source) => return Err(EngineKeyError::Io { path, source }),
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        let csr_pem = params.serialize_request(&key)?.pem()?;
        Ok(Self { key_pem: key.serialize_pem(), csr_pem })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let first = EngineKey::load_or_create(&state, "manager0").expect("create");
        assert_eq!(flotilla_proto::fs::mode_of(&EngineKey::path(&state)).expect("mode"), 0o600);
        let again = EngineKey::load_or_create(&state, "manager0").expect("load");
        assert_eq!(again.key_pem, first.key_pem, "the same key after a restart");
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&again.csr_pem).expect("csr parses");
        let key = KeyPair::from_pem(&first.key_pem).expect("key");
        use rcgen::PublicKeyData as _;
        assert_eq!(
            csr.public_key.subject_public_key_info(),
            key.subject_public_key_info(),
            "the CSR is for the kept key"
        );
        assert!(!again.csr_pem.contains("PRIVATE KEY"));
        std::fs::write(EngineKey::path(&state), "garbage").expect("write");
        let err = EngineKey::load_or_create(&state, "manager0").expect_err("corrupt");
        assert!(err.to_string().contains("engine-key.pem") && err.to_string().contains("delete it"), "{err}");
    }
}
