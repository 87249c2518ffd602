//! TLS for every Flotilla connection: TLS 1.3 only, aws-lc-rs as the only crypto provider,
//! the cluster CA as the only trust root.
//!
//! The server side accepts TLS itself (rather than through tonic's TLS feature) so that one
//! port can serve `Enroll` to hosts that have no certificate yet and require one for every
//! other RPC: client certificates are *verified* by rustls when presented and *required* per
//! RPC by the service, which reads [`PeerInfo`] from the request. `tls/accept.rs` is that accept
//! loop and the limits it keeps (caps on connections, timeouts for connections without a
//! certificate); `tls/admission.rs` decides who gets a place on a full port.

mod accept;
mod admission;

pub use accept::{AcceptCounts, AcceptLimits, HANDSHAKE_TIMEOUT, PeerInfo, Port, TlsConn, incoming, incoming_with};
pub use admission::source_of;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: no PEM certificate found")]
    NoCertificate { what: String },
    #[error("{what}: not a PEM private key: {source}")]
    BadKey { what: String, source: rustls_pki_types::pem::Error },
    #[error("{what}: bad PEM certificate: {source}")]
    BadCertificate { what: String, source: rustls_pki_types::pem::Error },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("'{0}' is not a valid server name or IP address for TLS")]
    ServerName(String),
    #[error("invalid coordinator endpoint '{endpoint}': {source}")]
    Endpoint { endpoint: String, source: tonic::transport::Error },
}

/// The crypto provider of every TLS context, certificate and CSR in Flotilla (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs aws-lc-rs as the process-wide default provider, for libraries that ask for it
/// (two providers linked into one process otherwise make rustls refuse to pick). Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Parses every certificate in a PEM document.
pub fn certs_from_pem(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadCertificate { what: what.to_string(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what: what.to_string() });
    }
    Ok(certs)
}

/// Parses a PEM private key (PKCS#8, SEC1 or PKCS#1).
pub fn key_from_pem(what: &str, pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|source| TlsError::BadKey { what: what.to_string(), source })
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in ca {
        store.add(c.clone())?;
    }
    Ok(Arc::new(store))
}

/// A PEM identity: a certificate chain and its private key.
#[derive(Clone)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl Identity {
    pub fn from_pem(what: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Ok(Self { chain: certs_from_pem(what, cert_pem)?, key: Arc::new(key_from_pem(what, key_pem)?) })
    }

    /// Checks that the key is the one the first certificate certifies (their public keys
    /// compared): a server given a certificate for another key would not start.
    pub fn check_keys_match(&self) -> Result<(), TlsError> {
        let key = provider().key_provider.load_private_key(self.key.clone_key())?;
        Ok(rustls::sign::CertifiedKey::new(self.chain.clone(), key).keys_match()?)
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("chain_len", &self.chain.len()).finish_non_exhaustive()
    }
}

/// The coordinator's server context: TLS 1.3, its certificate, and client certificates
/// verified against the cluster CA when presented (they are required per RPC, not here).
pub fn server_config(
    identity: &Identity,
    client_ca: &[CertificateDer<'static>],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(client_ca)?, provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client context trusting only the cluster CA, presenting `identity` when given.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?);
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A lazily connecting gRPC channel to `addr` (`host:port`) over TLS with `config`. The
/// server name checked against the coordinator's certificate is the host part of `addr`.
pub fn channel(addr: &str, config: Arc<ClientConfig>) -> Result<Channel, TlsError> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|source| TlsError::Endpoint { endpoint: addr.to_string(), source })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let host = host_of(addr);
    let server_name = ServerName::try_from(host.to_string()).map_err(|_| TlsError::ServerName(host.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let target = addr.to_string();
    Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |_uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let target = target.clone();
        async move {
            let tcp = TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    })))
}

/// The host part of `host:port`, `[v6]:port` or a bare host.
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => addr,
    }
}

/// Who a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub common_name: String,
    pub organizational_unit: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

/// Reads the identity out of a DER certificate (already verified by rustls).
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = x509.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let ou = subject.iter_organizational_unit().next().and_then(|a| a.as_str().ok()).unwrap_or_default().to_string();
    Some(PeerIdentity {
        common_name: cn,
        organizational_unit: ou,
        serial: x509.raw_serial_as_string().replace(':', ""),
        not_before_unix: x509.validity().not_before.timestamp(),
        not_after_unix: x509.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_handles_v4_v6_and_names() {
        assert_eq!(host_of("10.0.0.5:7443"), "10.0.0.5");
        assert_eq!(host_of("[::1]:7443"), "::1");
        assert_eq!(host_of("coord.example:7443"), "coord.example");
        assert_eq!(host_of("coord.example"), "coord.example");
    }
}
