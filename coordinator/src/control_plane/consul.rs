//! What the control plane gives the cluster's Consul (issue 14), filled into role specs as
//! they are assigned and sent over the agents' mTLS sessions only:
//!
//! - the **management token**: random, made once (kept in the store), handed to the Consul
//!   servers as their initial management token and to the operator in
//!   `<state>/consul-operator.token` (0600) — what the failover drill and `verify` use;
//! - **one token per host and role**, its accessor and secret ids derived from the
//!   management token, the cluster, the host and the role (the first 16 bytes of a SHA-256
//!   over them, in UUID form). Deterministic, so nothing more is stored, a re-assignment
//!   hands out the same token, and the Consul servers can create exactly these tokens in
//!   Consul's ACL system (`roles::consul::acl` in the agent) without the coordinator
//!   reaching Consul's API — which on AWS it cannot;
//! - the **Consul CA** (`<state>/pki/consul-ca.{pem,key}`), separate from the cluster CA so
//!   that no host identity or operator certificate can pass as a Consul server, and one
//!   `server.<datacenter>.consul` certificate per Consul server for RPC over mutual TLS.

use std::path::{Path, PathBuf};

use flotilla_proto::v1;
use rcgen::{ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType};
use sha2::{Digest, Sha256};

use crate::control_plane::pki::{self, PkiError};
use crate::control_plane::store::Store;

/// Where the management token is kept in the store.
const META_MANAGEMENT_TOKEN: &str = "consul_management_token";
/// Consul's default datacenter.
const DEFAULT_DATACENTER: &str = "dc1";

/// The file the operator's Consul token is written to, in a cluster's state directory.
pub fn operator_token_path(state_dir: &Path) -> PathBuf {
    state_dir.join("consul-operator.token")
}

/// The Consul secrets of one cluster.
pub struct ConsulSecrets {
    cluster: String,
    management_token: String,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl ConsulSecrets {
    /// Loads (or makes, on first use) the management token and the Consul CA, and writes
    /// the operator's token file.
    pub fn load_or_create(state_dir: &Path, store: &Store, cluster: &str) -> Result<Self, ConsulSecretsError> {
        let fresh = uuid_from(&rand::random::<[u8; 16]>());
        let token = store.meta_get_or_insert(META_MANAGEMENT_TOKEN, fresh.as_bytes())?;
        let management_token = String::from_utf8_lossy(&token).to_string();
        let path = operator_token_path(state_dir);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(management_token.as_str()) {
            flotilla_proto::fs::write_private(&path, management_token.as_bytes())
                .map_err(|source| ConsulSecretsError::TokenFile { path, source })?;
        }
        let (issuer, ca_pem) = load_or_create_ca(&state_dir.join("pki"), cluster)?;
        Ok(Self { cluster: cluster.to_string(), management_token, issuer, ca_pem })
    }

    pub fn management_token(&self) -> &str {
        &self.management_token
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The token of `host` in `role`: (accessor id, secret id).
    pub fn token(&self, host: &str, role: v1::Role) -> (String, String) {
        (self.derive(host, role, "accessor"), self.derive(host, role, "secret"))
    }

    fn derive(&self, host: &str, role: v1::Role, which: &str) -> String {
        let mut h = Sha256::new();
        for part in ["flotilla consul token v1", &self.management_token, &self.cluster, host, role.name(), which] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        let digest = h.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid_from(&bytes)
    }

    /// Fills what `spec` (a Consul server's, on `host` at `address`) left empty: the gossip
    /// key is the caller's; here the tokens and the TLS material.
    pub fn complete(&self, host: &str, address: &str, spec: &mut v1::ConsulSpec) -> Result<(), PkiError> {
        if spec.management_token.is_empty() {
            spec.management_token = self.management_token.clone();
        }
        if spec.agent_token.is_empty() {
            spec.agent_token = self.token(host, v1::Role::Consul).1;
        }
        for t in spec.tokens.iter_mut().filter(|t| t.accessor_id.is_empty()) {
            let role = v1::Role::try_from(t.role).unwrap_or(v1::Role::Unspecified);
            (t.accessor_id, t.secret_id) = self.token(&t.host, role);
        }
        if spec.tls_cert_pem.is_empty() {
            let dc = if spec.datacenter.is_empty() { DEFAULT_DATACENTER } else { spec.datacenter.as_str() };
            let (cert, key) = self.issue_server(dc, host, address)?;
            spec.tls_cert_pem = cert;
            spec.tls_key_pem = key;
            spec.tls_ca_pem = self.ca_pem.clone();
        }
        Ok(())
    }

    /// A Consul server certificate: `server.<dc>.consul` (what `verify_server_hostname`
    /// checks), `localhost`, 127.0.0.1 and the host's address; for both ends of RPC.
    pub fn issue_server(&self, datacenter: &str, host: &str, address: &str) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let server_name = format!("server.{datacenter}.consul");
        let mut params = pki::leaf_params();
        params.distinguished_name = pki::dn(&server_name, &format!("flotilla-consul {host}"));
        params.subject_alt_names = vec![
            pki::san(&server_name)?,
            pki::san("localhost")?,
            SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])),
            pki::san(address)?,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        pki::set_validity(&mut params, pki::SERVER_VALIDITY);
        params.serial_number = Some(pki::random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsulSecretsError {
    #[error(transparent)]
    Store(#[from] crate::control_plane::store::StoreError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("writing the Consul operator token {path}: {source}")]
    TokenFile { path: PathBuf, source: std::io::Error },
}

/// The Consul CA under `dir` (`consul-ca.pem`, `consul-ca.key` 0600), made on first use.
fn load_or_create_ca(dir: &Path, cluster: &str) -> Result<(Issuer<'static, KeyPair>, String), PkiError> {
    flotilla_proto::fs::private_dir(dir).map_err(|source| PkiError::Io { path: dir.to_path_buf(), source })?;
    pki::load_or_create_ca(dir, "consul-ca", || {
        let mut params = pki::ca_params(cluster);
        params.distinguished_name = pki::dn(&format!("Flotilla Consul CA {cluster}"), "flotilla-consul-ca");
        params
    })
}

/// 16 bytes as a (version 4) UUID, the form Consul wants for token ids.
fn uuid_from(bytes: &[u8; 16]) -> String {
    let mut b = *bytes;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(dir: &Path) -> ConsulSecrets {
        let store = Store::open(&dir.join("state.redb")).expect("store");
        ConsulSecrets::load_or_create(dir, &store, "c1").expect("secrets")
    }

    #[test]
    fn issue_14_tokens_are_stable_distinct_per_host_and_role_and_the_operator_file_is_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = secrets(dir.path());
        let management = a.management_token().to_string();
        assert!(flotilla_agent::roles::consul::is_uuid(&management), "{management}");
        let file = operator_token_path(dir.path());
        assert_eq!(std::fs::read_to_string(&file).expect("token file"), management);
        assert_eq!(flotilla_proto::fs::mode_of(&file).expect("mode"), 0o600);

        let (acc, sec) = a.token("node0", v1::Role::Node);
        assert!(flotilla_agent::roles::consul::is_uuid(&acc) && flotilla_agent::roles::consul::is_uuid(&sec));
        assert_ne!(acc, sec);
        assert_ne!(a.token("node1", v1::Role::Node), (acc.clone(), sec.clone()), "per host");
        assert_ne!(a.token("node0", v1::Role::Manager).1, sec, "per role");
        assert_ne!(sec, management);

        // A restarted control plane hands out the same management token, tokens and CA.
        let ca = a.ca_pem().to_string();
        drop(a);
        let b = secrets(dir.path());
        assert_eq!(b.management_token(), management);
        assert_eq!(b.token("node0", v1::Role::Node), (acc, sec));
        assert_eq!(b.ca_pem(), ca);
    }

    #[test]
    fn issue_14_consul_server_certificates_name_the_server_and_chain_to_the_consul_ca_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = secrets(dir.path());
        let cluster = pki::Pki::load_or_create(dir.path(), "c1", &["127.0.0.1".into()]).expect("cluster pki");
        assert_ne!(s.ca_pem(), cluster.ca_pem(), "a CA of its own");
        let mut spec = v1::ConsulSpec {
            datacenter: "c1".into(),
            tokens: vec![v1::ConsulToken { host: "node0".into(), role: v1::Role::Node as i32, ..Default::default() }],
            ..Default::default()
        };
        s.complete("manager0", "10.0.0.10", &mut spec).expect("complete");
        assert_eq!(spec.management_token, s.management_token());
        assert_eq!(spec.agent_token, s.token("manager0", v1::Role::Consul).1);
        assert_eq!(
            (spec.tokens[0].accessor_id.clone(), spec.tokens[0].secret_id.clone()),
            s.token("node0", v1::Role::Node)
        );
        let der = flotilla_proto::tls::certs_from_pem("consul", &spec.tls_cert_pem).expect("pem");
        let (_, cert) = x509_parser::parse_x509_certificate(der[0].as_ref()).expect("x509");
        let sans = format!("{:?}", cert.subject_alternative_name().ok().flatten().expect("SANs").value.general_names);
        assert!(sans.contains("server.c1.consul") && sans.contains("localhost"), "{sans}");
        let ca_der = flotilla_proto::tls::certs_from_pem("ca", s.ca_pem()).expect("ca");
        let (_, ca) = x509_parser::parse_x509_certificate(ca_der[0].as_ref()).expect("ca");
        cert.verify_signature(Some(ca.public_key())).expect("signed by the Consul CA");
        let cluster_der = flotilla_proto::tls::certs_from_pem("cluster", cluster.ca_pem()).expect("ca");
        let (_, cluster_ca) = x509_parser::parse_x509_certificate(cluster_der[0].as_ref()).expect("ca");
        assert!(cert.verify_signature(Some(cluster_ca.public_key())).is_err(), "not by the cluster CA");
        assert_eq!(flotilla_proto::fs::mode_of(&dir.path().join("pki/consul-ca.key")).expect("mode"), 0o600);
    }
}
