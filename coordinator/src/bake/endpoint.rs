//! The bake's short-lived HTTPS endpoint: the agent binary at
//! [`crate::agent_binary::PATH`] (and its digest), on an address of this machine the builder
//! reaches, with a certificate from a CA that exists only in this process
//! ([`crate::pki::throwaway_server`]). There is no cluster during a bake, so no cluster CA to
//! pin: the builder's user-data pins this one, and checks the binary's SHA-256 as well. It
//! serves until it is dropped.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::tls;
use tokio_util::sync::CancellationToken;

use super::BakeError;
use crate::agent_binary::AgentBinary;

/// The throwaway certificates' lifetime: longer than any bake, short if one ever leaked.
const VALIDITY: Duration = Duration::from_secs(2 * 3600);

pub struct Endpoint {
    url: String,
    ca_pem: String,
    shutdown: CancellationToken,
}

impl Endpoint {
    /// Listens on `ip` (an ephemeral port) and serves `binary`.
    pub async fn start(ip: IpAddr, binary: Arc<AgentBinary>) -> Result<Self, BakeError> {
        tls::install_default_provider();
        let (ca_pem, identity) = crate::pki::throwaway_server(ip, VALIDITY)?;
        let err = |e: tls::TlsError| BakeError::Endpoint(e.to_string());
        let ca = tls::certs_from_pem("bake CA", &ca_pem).map_err(err)?;
        let config = tls::server_config(&identity, &ca).map_err(err)?;
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .map_err(|e| BakeError::Endpoint(format!("cannot listen on {ip}: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| BakeError::Endpoint(e.to_string()))?
            .port();
        let router = crate::agent_binary::routes(axum::Router::new(), Some(binary));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::from(router))
                .serve_with_incoming_shutdown(tls::incoming(listener, config), stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the bake's agent endpoint stopped");
            }
        });
        let host = match ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
        Ok(Self {
            url: format!("https://{host}:{port}{}", crate::agent_binary::PATH),
            ca_pem,
            shutdown,
        })
    }

    /// Where the builder downloads the agent.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The throwaway CA's certificate (for the bake user-data).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
