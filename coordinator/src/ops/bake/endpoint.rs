//! The bake's short-lived HTTPS endpoint: the agent binary at
//! [`crate::control_plane::agent_binary::PATH`] (and its digest), on an address of this
//! machine the builder reaches, with a certificate from a CA that exists only in this process
//! ([`crate::control_plane::pki::throwaway_server`]). There is no cluster during a bake, so no
//! cluster CA to pin: the builder's user-data pins this one, and checks the binary's SHA-256
//! as well. It serves until it is dropped.
//!
//! It also takes the builder's report at [`REPORT_PATH`] (a builder the baker cannot look
//! into, an EC2 instance, says how its bake ended: `flotilla_cloud_init::BakeReport`), kept as
//! a [`Reported`] for the backend's `poll`: a POST whose `X-Flotilla-Bake-Nonce` header is
//! this bake's random nonce, and whose body is `status=complete` + `engine=<version>` or
//! `status=failed` + `reason=<text>`, a blank line, then the tail of the builder's cloud-init
//! output. A wrong or missing nonce is refused (403), a body of another shape too (400); the
//! last good report is kept.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use flotilla_proto::tls;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::BakeError;
use crate::control_plane::agent_binary::AgentBinary;
use crate::providers::bake::{Outcome, Reported};

/// The throwaway certificates' lifetime: longer than any bake, short if one ever leaked.
const VALIDITY: Duration = Duration::from_secs(2 * 3600);

/// Where builders POST their report.
pub const REPORT_PATH: &str = "/v1/bake/report";
/// The header that carries the bake's nonce.
pub const NONCE_HEADER: &str = "x-flotilla-bake-nonce";
/// How much of a report is kept (the tail of a cloud-init output is far less).
const REPORT_LIMIT: usize = 256 * 1024;

type Slot = Arc<Mutex<Option<Reported>>>;

pub struct Endpoint {
    url: String,
    report_url: String,
    ca_pem: String,
    nonce: String,
    reported: Slot,
    shutdown: CancellationToken,
}

impl Endpoint {
    /// Listens on `ip` (an ephemeral port) and serves `binary`.
    pub async fn start(ip: IpAddr, binary: Arc<AgentBinary>) -> Result<Self, BakeError> {
        tls::install_default_provider();
        let (ca_pem, identity) = crate::control_plane::pki::throwaway_server(ip, VALIDITY)?;
        let ca = tls::certs_from_pem("bake CA", &ca_pem).map_err(BakeError::EndpointTls)?;
        let config = tls::server_config(&identity, &ca).map_err(BakeError::EndpointTls)?;
        let listener =
            tokio::net::TcpListener::bind((ip, 0)).await.map_err(|source| BakeError::Listen { ip, source })?;
        let port = listener.local_addr().map_err(BakeError::LocalAddr)?.port();
        let nonce: String = rand::rng().sample_iter(&rand::distr::Alphanumeric).take(32).map(char::from).collect();
        let reported: Slot = Arc::default();
        let router = crate::control_plane::agent_binary::routes(report_routes(&nonce, reported.clone()), Some(binary));
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
            url: format!("https://{host}:{port}{}", crate::control_plane::agent_binary::PATH),
            report_url: format!("https://{host}:{port}{REPORT_PATH}"),
            ca_pem,
            nonce,
            reported,
            shutdown,
        })
    }

    /// Where the builder reports.
    pub fn report_url(&self) -> &str {
        &self.report_url
    }

    /// This bake's nonce (for the bake user-data): tells this bake's reports from any other.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// The builder's last report, if it sent one.
    pub fn reported(&self) -> Option<Reported> {
        self.reported.lock().map(|r| r.clone()).unwrap_or_else(|p| p.into_inner().clone())
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

/// The report route: checks the nonce, parses the body, keeps it in `slot`.
fn report_routes(nonce: &str, slot: Slot) -> axum::Router {
    let nonce = nonce.to_string();
    axum::Router::new()
        .route(
            REPORT_PATH,
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let nonce = nonce.clone();
                let slot = slot.clone();
                async move {
                    let given = headers.get(NONCE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
                    // Compared in constant time: the report URL is reachable by anything
                    // that reaches this machine while the bake runs.
                    let same: bool = subtle::ConstantTimeEq::ct_eq(given.as_bytes(), nonce.as_bytes()).into();
                    if given.is_empty() || !same {
                        tracing::warn!("refused a bake report without this bake's nonce");
                        return (StatusCode::FORBIDDEN, "not this bake's nonce\n");
                    }
                    match parse_report(&String::from_utf8_lossy(&body)) {
                        Some(r) => {
                            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
                            *s = Some(r);
                            (StatusCode::NO_CONTENT, "")
                        }
                        None => (
                            StatusCode::BAD_REQUEST,
                            "expected status=complete|failed, engine= or reason=, a blank line, the output\n",
                        ),
                    }
                }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(REPORT_LIMIT))
}

/// `status=…\n(engine|reason)=…\n\n<output>` → a report; anything else → `None`.
pub fn parse_report(body: &str) -> Option<Reported> {
    let (head, output) = body.split_once("\n\n").unwrap_or((body, ""));
    let mut lines = head.lines();
    let status = lines.next()?.strip_prefix("status=")?;
    let detail = lines.next().unwrap_or_default();
    let outcome = match status {
        "complete" => Outcome::Complete { engine_version: detail.strip_prefix("engine=")?.trim().to_string() },
        "failed" => Outcome::Failed(detail.strip_prefix("reason=").unwrap_or(detail).trim().to_string()),
        _ => return None,
    };
    Some(Reported { outcome, output: output.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn post(router: axum::Router, nonce: Option<&str>, body: &str) -> StatusCode {
        let mut req = axum::http::Request::post(REPORT_PATH);
        if let Some(n) = nonce {
            req = req.header(NONCE_HEADER, n);
        }
        let req = req.body(axum::body::Body::from(body.to_string())).expect("request");
        router.oneshot(req).await.expect("response").status()
    }

    #[tokio::test]
    async fn reports_need_this_bakes_nonce_and_the_documented_shape() {
        let slot: Slot = Arc::default();
        let r = report_routes("n0nce0123456789abcdef", slot.clone());
        let good = "status=complete\nengine=24.0.7\n\nline 1\nflotilla-bake: done\n";
        assert_eq!(post(r.clone(), None, good).await, StatusCode::FORBIDDEN);
        assert_eq!(post(r.clone(), Some("another-bake-nonce"), good).await, StatusCode::FORBIDDEN);
        assert_eq!(*slot.lock().expect("lock"), None, "a refused report was kept");
        assert_eq!(post(r.clone(), Some("n0nce0123456789abcdef"), "hello").await, StatusCode::BAD_REQUEST);
        assert_eq!(post(r.clone(), Some("n0nce0123456789abcdef"), good).await, StatusCode::NO_CONTENT);
        assert_eq!(
            *slot.lock().expect("lock"),
            Some(Reported {
                outcome: Outcome::Complete { engine_version: "24.0.7".into() },
                output: "line 1\nflotilla-bake: done\n".into(),
            })
        );
    }

    #[test]
    fn failed_reports_carry_the_reason() {
        assert_eq!(
            parse_report("status=failed\nreason=agent: download failed (curl exit 7)\n\nout\n"),
            Some(Reported {
                outcome: Outcome::Failed("agent: download failed (curl exit 7)".into()),
                output: "out\n".into(),
            })
        );
        assert_eq!(parse_report("status=complete\n\nout"), None, "complete without an engine");
        assert_eq!(parse_report("status=maybe\nengine=1\n\n"), None);
    }
}
