//! The cluster's PKI: a CA created on first use, the coordinator's server certificate,
//! host and operator client certificates signed from CSRs.
//!
//! Client certificates say what they are for in their OU, and the services check it: a
//! host's (`flotilla-host`) may call the agent API as that host; an operator's
//! (`flotilla-operator`) may call the admin API while its serial is on record and not
//! revoked (`operators.rs`); an Engine client's (`flotilla-engine-client`, from the second CA
//! below) may call neither.
//!
//! Files under `<state>/pki/`: `ca.pem`, `ca.key` (0600, never leaves this directory),
//! `server.pem`, `server.key` (0600), and a second CA, `engine-client-ca.{pem,key}`, that
//! signs only the certificates of the managers' Engine clients (`docker`, the coordinator's
//! own Engine calls): the Engines on 2376 trust that CA alone, so no host identity and no
//! operator certificate drives an Engine, and an Engine client certificate cannot call the
//! control plane (which trusts only the cluster CA). All keys are ECDSA P-256 made with
//! aws-lc-rs.
//! The server certificate is re-issued when the advertised addresses change or a third of
//! its life is left; hosts keep trusting it because they trust the CA.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_proto::tls::{self, Identity};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

pub(crate) const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub(crate) const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default validity of a host's client certificate.
pub const HOST_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default validity of an operator certificate.
pub const OPERATOR_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Issued certificates start up to this long in the past (a tenth of their validity at
/// most), to absorb clock skew between hosts.
const BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("PKI file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "PKI file {path} is unreadable: {detail}; move the pki/ directory aside to start a new CA (every host must then re-enroll)"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("CSR: {0}")]
    BadCsr(String),
}

/// The cluster CA and the coordinator's server identity.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    engine_clients: Issuer<'static, KeyPair>,
    engine_client_ca_pem: String,
    server: Identity,
    server_pem: String,
}

/// A certificate issued from a CSR.
#[derive(Clone, Debug)]
pub struct Issued {
    pub certificate_pem: String,
    pub serial: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

impl Pki {
    /// Loads the PKI from `<state>/pki`, creating the CA on first use, and makes sure the
    /// server certificate covers exactly `advertised` (host names or IP addresses).
    pub fn load_or_create(state_dir: &Path, cluster: &str, advertised: &[String]) -> Result<Self, PkiError> {
        let dir = state_dir.join("pki");
        flotilla_proto::fs::private_dir(&dir).map_err(|source| PkiError::Io { path: dir.clone(), source })?;
        let (issuer, ca_pem) = load_or_create_ca(&dir, "ca", || ca_params(cluster))?;
        let (engine_clients, engine_client_ca_pem) =
            load_or_create_ca(&dir, "engine-client-ca", || engine_client_ca_params(cluster))?;

        let mut pki = Self {
            dir,
            issuer,
            ca_pem,
            engine_clients,
            engine_client_ca_pem,
            server: Identity {
                chain: Vec::new(),
                key: std::sync::Arc::new(rustls_pki_types::PrivateKeyDer::Pkcs8(Vec::new().into())),
            },
            server_pem: String::new(),
        };
        pki.ensure_server_cert(cluster, advertised)?;
        Ok(pki)
    }

    fn ensure_server_cert(&mut self, cluster: &str, advertised: &[String]) -> Result<(), PkiError> {
        let cert_path = self.dir.join("server.pem");
        let key_path = self.dir.join("server.key");
        let mut wanted: Vec<String> = advertised.to_vec();
        wanted.sort();
        wanted.dedup();
        if cert_path.exists() && key_path.exists() {
            let cert_pem = read(&cert_path)?;
            let key_pem = read(&key_path)?;
            if let Some((mut sans, not_before, not_after)) = server_cert_facts(&cert_pem) {
                sans.sort();
                let now = OffsetDateTime::now_utc().unix_timestamp();
                let third = (not_after - not_before) / 3;
                if sans == wanted && now < not_after - third {
                    self.server = Identity::from_pem("server certificate", &cert_pem, &key_pem)?;
                    self.server_pem = cert_pem;
                    return Ok(());
                }
            }
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = leaf_params();
        params.distinguished_name = dn(&format!("coordinator.{cluster}"), flotilla_proto::OU_COORDINATOR);
        params.subject_alt_names = wanted.iter().map(|a| san(a)).collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, SERVER_VALIDITY);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_public(&cert_path, cert.pem().as_bytes())?;
        self.server = Identity::from_pem("server certificate", &cert.pem(), &key.serialize_pem())?;
        self.server_pem = cert.pem();
        Ok(())
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA the managers' Engines trust for their clients (and nothing else does).
    pub fn engine_client_ca_pem(&self) -> &str {
        &self.engine_client_ca_pem
    }

    pub fn ca_certs(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        Ok(tls::certs_from_pem("cluster CA", &self.ca_pem)?)
    }

    pub fn server_identity(&self) -> &Identity {
        &self.server
    }

    pub fn server_pem(&self) -> &str {
        &self.server_pem
    }

    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a server certificate (and its new key) for a host's Docker Engine TLS
    /// listener: SANs are the host's address and name. Returns (certificate, key) PEMs.
    pub fn issue_engine_server(&self, host: &str, address: &str) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = leaf_params();
        params.distinguished_name = dn(host, "flotilla-engine");
        params.subject_alt_names = vec![san(address)?, san(host)?, SanType::IpAddress(IpAddr::from([127, 0, 0, 1]))];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, SERVER_VALIDITY);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs a host's CSR: the subject is rewritten to `CN=<host>, OU=flotilla-host` and the
    /// certificate is for client authentication only. Refuses a CSR that does not parse,
    /// whose signature is wrong, whose key is not ECDSA P-256/P-384 or Ed25519, or whose
    /// subject names another host.
    pub fn sign_host_csr(&self, host: &str, csr_pem: &str, validity: Duration) -> Result<Issued, PkiError> {
        self.sign_client_csr(host, flotilla_proto::OU_HOST, csr_pem, validity)
    }

    /// Signs an operator's CSR (`CN=<name>, OU=flotilla-operator`).
    pub fn sign_operator_csr(&self, name: &str, csr_pem: &str, validity: Duration) -> Result<Issued, PkiError> {
        self.sign_client_csr(name, flotilla_proto::OU_OPERATOR, csr_pem, validity)
    }

    /// Signs the CSR of an Engine client (`CN=<name>, OU=flotilla-engine-client`) with the
    /// Engine client CA: good on the managers' 2376, refused by the control plane.
    pub fn sign_engine_client_csr(&self, name: &str, csr_pem: &str, validity: Duration) -> Result<Issued, PkiError> {
        self.sign_client_csr_with(&self.engine_clients, name, flotilla_proto::OU_ENGINE_CLIENT, csr_pem, validity)
    }

    fn sign_client_csr(&self, name: &str, ou: &str, csr_pem: &str, validity: Duration) -> Result<Issued, PkiError> {
        self.sign_client_csr_with(&self.issuer, name, ou, csr_pem, validity)
    }

    fn sign_client_csr_with(
        &self,
        issuer: &Issuer<'static, KeyPair>,
        name: &str,
        ou: &str,
        csr_pem: &str,
        validity: Duration,
    ) -> Result<Issued, PkiError> {
        let der = check_csr(csr_pem, name)?;
        let mut csr = CertificateSigningRequestParams::from_der(&der.into())
            .map_err(|e| PkiError::BadCsr(format!("does not verify: {e}")))?;
        let mut params = leaf_params();
        params.distinguished_name = dn(name, ou);
        params.subject_alt_names = vec![SanType::DnsName(
            name.try_into().map_err(|_| PkiError::BadCsr(format!("'{name}' is not a valid DNS name")))?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity);
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let (not_before, not_after) = (params.not_before.unix_timestamp(), params.not_after.unix_timestamp());
        csr.params = params;
        let cert = csr.signed_by(issuer)?;
        Ok(Issued {
            certificate_pem: cert.pem(),
            serial: hex::encode(serial.to_bytes()),
            not_before_unix: not_before,
            not_after_unix: not_after,
        })
    }
}

/// Parses and vets a CSR before rcgen sees it: the key algorithm, and the subject's CN.
fn check_csr(csr_pem: &str, expected_cn: &str) -> Result<Vec<u8>, PkiError> {
    use x509_parser::prelude::FromDer;
    let pem = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
        .map_err(|_| PkiError::BadCsr("not a PEM certificate signing request".into()))?
        .1;
    if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
        return Err(PkiError::BadCsr(format!("expected a PEM 'CERTIFICATE REQUEST', got '{}'", pem.label)));
    }
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| PkiError::BadCsr(format!("does not parse: {e}")))?;
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let alg = spki.algorithm.algorithm.to_id_string();
    const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
    const ED25519: &str = "1.3.101.112";
    const RSA: &str = "1.2.840.113549.1.1.1";
    const P256: &str = "1.2.840.10045.3.1.7";
    const P384: &str = "1.3.132.0.34";
    match alg.as_str() {
        EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            if curve != P256 && curve != P384 {
                return Err(PkiError::BadCsr(format!(
                    "weak or unsupported key: elliptic curve {curve} is not accepted; use ECDSA P-256"
                )));
            }
        }
        ED25519 => {}
        RSA => {
            let bits = match spki.parsed() {
                Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => rsa.key_size(),
                _ => 0,
            };
            return Err(PkiError::BadCsr(format!(
                "weak or unsupported key: RSA ({bits} bits) is not accepted; use ECDSA P-256"
            )));
        }
        other => {
            return Err(PkiError::BadCsr(format!("weak or unsupported key algorithm {other}; use ECDSA P-256")));
        }
    }
    csr.verify_signature().map_err(|_| PkiError::BadCsr("signature does not verify".into()))?;
    let cn = info.subject.iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or_default();
    if cn != expected_cn {
        use crate::control_plane::untrusted::{NAME_MAX, clean};
        return Err(PkiError::BadCsr(format!(
            "names '{}' but was presented for '{}'",
            clean(cn, NAME_MAX),
            clean(expected_cn, NAME_MAX)
        )));
    }
    Ok(pem.contents)
}

/// A CA that exists only in memory, and a server identity it signed for `address`: the
/// bake's HTTPS endpoint (see `bake`). Nothing is written anywhere; when the value is
/// dropped the CA's key is gone, so nothing it signed can be vouched for again. Returns the
/// CA certificate (PEM, for the builder's user-data) and the server identity.
pub fn throwaway_server(address: IpAddr, validity: Duration) -> Result<(String, Identity), PkiError> {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca = ca_params("");
    ca.distinguished_name = dn("Flotilla bake CA (throwaway, in memory only)", "flotilla-bake");
    set_validity(&mut ca, validity);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = leaf_params();
    params.distinguished_name = dn("bake", "flotilla-bake");
    params.subject_alt_names = vec![SanType::IpAddress(address)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, validity);
    params.serial_number = Some(random_serial());
    let cert = params.signed_by(&key, &issuer)?;
    let identity = Identity::from_pem("bake server certificate", &cert.pem(), &key.serialize_pem())?;
    Ok((ca_cert.pem(), identity))
}

/// Makes a key pair and a CSR for `cn` (used by the CLI for operator certificates; the
/// agent has its own copy of this two-liner so it does not depend on the coordinator).
pub fn new_key_and_csr(cn: &str) -> Result<(KeyPair, String), PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    let csr = params.serialize_request(&key)?;
    Ok((key, csr.pem()?))
}

/// Parameters for a certificate that is not a CA: basicConstraints `CA:FALSE` stated
/// explicitly, so no verifier has to assume it from a missing extension.
pub(crate) fn leaf_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params
}

/// Loads the CA `<dir>/<stem>.{pem,key}`, or creates it from `params` on first use.
pub(crate) fn load_or_create_ca(
    dir: &Path,
    stem: &str,
    params: impl FnOnce() -> CertificateParams,
) -> Result<(Issuer<'static, KeyPair>, String), PkiError> {
    let pem_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    let (key, pem) = if key_path.exists() {
        let key_pem = read(&key_path)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| PkiError::Corrupt { path: key_path.clone(), detail: e.to_string() })?;
        (key, read(&pem_path)?)
    } else {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params().self_signed(&key)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_public(&pem_path, cert.pem().as_bytes())?;
        (key, cert.pem())
    };
    let issuer =
        Issuer::from_ca_cert_pem(&pem, key).map_err(|e| PkiError::Corrupt { path: pem_path, detail: e.to_string() })?;
    Ok((issuer, pem))
}

/// The Engine client CA: a CA of its own so the Engines can trust it alone.
fn engine_client_ca_params(cluster: &str) -> CertificateParams {
    let mut params = ca_params(cluster);
    params.distinguished_name = dn(&format!("Flotilla Engine client CA {cluster}"), "flotilla-engine-client-ca");
    params
}

pub(crate) fn ca_params(cluster: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&format!("Flotilla cluster CA {cluster}"), "flotilla-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, CA_VALIDITY);
    params.serial_number = Some(random_serial());
    params
}

pub(crate) fn dn(cn: &str, ou: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Flotilla");
    dn.push(DnType::OrganizationalUnitName, ou);
    dn.push(DnType::CommonName, cn);
    dn
}

pub(crate) fn san(addr: &str) -> Result<SanType, PkiError> {
    Ok(match addr.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => {
            SanType::DnsName(addr.try_into().map_err(|_| {
                PkiError::BadCsr(format!("advertised address '{addr}' is neither an IP nor a DNS name"))
            })?)
        }
    })
}

pub(crate) fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE.min(validity / 10);
    params.not_after = now + validity;
}

pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn server_cert_facts(pem: &str) -> Option<(Vec<String>, i64, i64)> {
    let der = tls::certs_from_pem("server", pem).ok()?.into_iter().next()?;
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = x509.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => sans.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => sans.push(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                    16 => sans.push(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Some((sans, x509.validity().not_before.timestamp(), x509.validity().not_after.timestamp()))
}

pub(crate) fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.to_path_buf(), source })
}

pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    flotilla_proto::fs::write_private(path, data).map_err(|source| PkiError::Io { path: path.to_path_buf(), source })
}

pub(crate) fn write_public(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    flotilla_proto::fs::write_public(path, data).map_err(|source| PkiError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki(dir: &Path) -> Pki {
        Pki::load_or_create(dir, "test", &["127.0.0.1".into(), "localhost".into()]).expect("pki")
    }

    #[test]
    fn ca_is_created_once_and_keys_are_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = pki(dir.path()).ca_pem().to_string();
        let second = pki(dir.path()).ca_pem().to_string();
        assert_eq!(first, second, "the CA must be created on first use only");
        for key in ["ca.key", "server.key"] {
            let mode = flotilla_proto::fs::mode_of(&dir.path().join("pki").join(key)).expect("mode");
            assert_eq!(mode, 0o600, "{key}");
        }
        let dir_mode = flotilla_proto::fs::mode_of(&dir.path().join("pki")).expect("mode");
        assert_eq!(dir_mode, 0o700);
    }

    #[test]
    fn server_cert_is_reissued_when_advertised_addresses_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = pki(dir.path()).server_pem().to_string();
        let b = pki(dir.path()).server_pem().to_string();
        assert_eq!(a, b);
        let c = Pki::load_or_create(dir.path(), "test", &["10.1.2.3".into()]).expect("pki").server_pem().to_string();
        assert_ne!(a, c);
        let (sans, _, _) = server_cert_facts(&c).expect("facts");
        assert_eq!(sans, vec!["10.1.2.3".to_string()]);
    }

    /// Issue 8: the bake's endpoint certificate names exactly its address and chains to a
    /// fresh CA each time; the CA certificate carries no key.
    #[test]
    fn throwaway_server_certificates_chain_to_a_fresh_in_memory_ca() {
        let ip = IpAddr::from([10, 213, 7, 1]);
        let (ca_a, id_a) = throwaway_server(ip, Duration::from_secs(3600)).expect("throwaway");
        let (ca_b, _) = throwaway_server(ip, Duration::from_secs(3600)).expect("throwaway");
        assert_ne!(ca_a, ca_b, "a new CA per bake");
        assert!(!ca_a.contains("PRIVATE KEY"));
        let leaf = id_a.chain.first().expect("leaf").clone();
        let pem = rustls_pki_types::pem::PemObject::pem_slice_iter(ca_a.as_bytes())
            .collect::<Result<Vec<CertificateDer<'static>>, _>>()
            .expect("ca pem");
        let (_, ca) = x509_parser::parse_x509_certificate(pem[0].as_ref()).expect("ca");
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).expect("leaf");
        assert!(ca.is_ca());
        assert_eq!(cert.issuer(), ca.subject());
        cert.verify_signature(Some(ca.public_key())).expect("signed by the throwaway CA");
        let san = cert.subject_alternative_name().ok().flatten().expect("SANs");
        assert_eq!(san.value.general_names, vec![x509_parser::extensions::GeneralName::IPAddress(&[10, 213, 7, 1])]);
        let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(life <= 3600 + 300, "short-lived: {life} s");
    }

    /// Issue 14: Engine clients chain to a CA of their own; nothing the cluster CA signs
    /// (host identities, operators) chains to it, and an Engine client does not chain to
    /// the cluster CA (so the control plane refuses it).
    #[test]
    fn engine_clients_have_a_ca_of_their_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = pki(dir.path());
        assert_ne!(p.engine_client_ca_pem(), p.ca_pem());
        let parse = |pem: &str| {
            let der = rustls_pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<CertificateDer<'static>>, _>>()
                .expect("pem");
            der[0].clone()
        };
        let (ca, engine_ca) = (parse(p.ca_pem()), parse(p.engine_client_ca_pem()));
        let (_, ca) = x509_parser::parse_x509_certificate(ca.as_ref()).expect("ca");
        let (_, engine_ca) = x509_parser::parse_x509_certificate(engine_ca.as_ref()).expect("engine ca");
        let (_, csr) = new_key_and_csr("docker").expect("csr");
        let client =
            parse(&p.sign_engine_client_csr("docker", &csr, Duration::from_secs(3600)).expect("sign").certificate_pem);
        let (_, client) = x509_parser::parse_x509_certificate(client.as_ref()).expect("client");
        client.verify_signature(Some(engine_ca.public_key())).expect("signed by the Engine client CA");
        assert!(client.verify_signature(Some(ca.public_key())).is_err(), "not by the cluster CA");
        let ou: Vec<_> = client.subject().iter_organizational_unit().filter_map(|o| o.as_str().ok()).collect();
        assert_eq!(ou, vec![flotilla_proto::OU_ENGINE_CLIENT]);
        let (_, csr) = new_key_and_csr("node0").expect("csr");
        let host = parse(&p.sign_host_csr("node0", &csr, Duration::from_secs(3600)).expect("sign").certificate_pem);
        let (_, host) = x509_parser::parse_x509_certificate(host.as_ref()).expect("host");
        assert!(host.verify_signature(Some(engine_ca.public_key())).is_err(), "a host identity is no Engine client");
        // The CA survives a restart.
        assert_eq!(pki(dir.path()).engine_client_ca_pem(), p.engine_client_ca_pem());
        let mode = flotilla_proto::fs::mode_of(&dir.path().join("pki").join("engine-client-ca.key")).expect("mode");
        assert_eq!(mode, 0o600);
    }

    /// Every leaf states `CA:FALSE` (basicConstraints present, critical not required).
    #[test]
    fn every_leaf_says_it_is_not_a_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = pki(dir.path());
        let (_, csr) = new_key_and_csr("node0").expect("csr");
        let host = p.sign_host_csr("node0", &csr, Duration::from_secs(3600)).expect("host").certificate_pem;
        let (_, csr) = new_key_and_csr("alice").expect("csr");
        let operator = p.sign_operator_csr("alice", &csr, Duration::from_secs(3600)).expect("op").certificate_pem;
        let (engine, _) = p.issue_engine_server("manager0", "10.0.0.5").expect("engine");
        let (_, bake) = throwaway_server(IpAddr::from([127, 0, 0, 1]), Duration::from_secs(60)).expect("bake");
        let bake_pem = pem_of(bake.chain[0].as_ref());
        for (what, pem) in [
            ("host", host),
            ("operator", operator),
            ("engine", engine),
            ("server", p.server_pem().to_string()),
            ("bake", bake_pem),
        ] {
            let der = rustls_pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<CertificateDer<'static>>, _>>()
                .expect("pem");
            let (_, cert) = x509_parser::parse_x509_certificate(der[0].as_ref()).expect("parse");
            let bc =
                cert.basic_constraints().expect("well-formed").unwrap_or_else(|| panic!("{what}: no basicConstraints"));
            assert!(!bc.value.ca, "{what} must not be a CA");
        }
    }

    fn pem_of(der: &[u8]) -> String {
        use base64::Engine as _;
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    }

    #[test]
    fn host_csr_is_signed_with_the_host_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = pki(dir.path());
        let (_key, csr) = new_key_and_csr("node0").expect("csr");
        let issued = pki.sign_host_csr("node0", &csr, HOST_CERT_VALIDITY).expect("sign");
        let der = tls::certs_from_pem("issued", &issued.certificate_pem).expect("pem");
        let id = tls::identity_of(&der[0]).expect("identity");
        assert_eq!(id.common_name, "node0");
        assert_eq!(id.organizational_unit, flotilla_proto::OU_HOST);
        assert_eq!(id.serial, issued.serial);
        let days = (id.not_after_unix - OffsetDateTime::now_utc().unix_timestamp()) / 86400;
        assert!((29..=30).contains(&days), "validity {days} days");
    }

    #[test]
    fn bad_csrs_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = pki(dir.path());
        let err = pki.sign_host_csr("node0", "garbage", HOST_CERT_VALIDITY).expect_err("garbage");
        assert!(err.to_string().contains("not a PEM"), "{err}");
        let (_key, csr) = new_key_and_csr("node1").expect("csr");
        let err = pki.sign_host_csr("node0", &csr, HOST_CERT_VALIDITY).expect_err("other host");
        assert!(err.to_string().contains("names 'node1'"), "{err}");
    }
}
