//! The control plane's HTTP listener for people and Prometheus (issue 18), apart from the
//! agent port: `GET /metrics` (Prometheus, [`crate::control_plane::metrics`]), the read-only
//! status page `GET /` ([`page`]), its data `GET /state.json`, and a live log tail
//! `GET /logs?host=NAME` (server-sent events). Loopback by default (`--metrics-listen`,
//! `coordinator.metrics_listen`); plain HTTP, no login: expose it only through a tunnel or a
//! proxy that authenticates (docs/SECURITY.md).
//!
//! Nothing here changes the cluster. Everything a host reported is escaped for HTML by
//! [`page`] (and set as text by the script), the page loads nothing from elsewhere (its
//! script and style are compiled in, and its Content-Security-Policy allows only itself),
//! and a request whose `Host` is a DNS name other than `localhost` is refused, so a web page
//! elsewhere cannot read this one through DNS rebinding.

pub mod page;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flotilla_proto::v1;
use futures::StreamExt;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use crate::control_plane::core::ControlPlane;
use crate::control_plane::metrics;
use crate::control_plane::metrics::live::Snapshot;
use crate::control_plane::settings::StatePaths;

/// Live log tails open at once (each follows every connected host's sources).
pub const MAX_LOG_TAILS: usize = 8;
/// Audit events the page shows.
pub const AUDIT_SHOWN: usize = 25;
/// Lines of each source a new log tail starts with.
const LOG_TAIL_START: u32 = 20;

const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CONTENT_TYPE_CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(
        "cannot listen for /metrics and the status page on {addr}: {source} (pick another address with `coordinator.metrics_listen` in flotilla.toml, or `serve --metrics-listen`)"
    )]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot record the metrics address in {path}: {source}")]
    Record { path: std::path::PathBuf, source: std::io::Error },
}

struct Web {
    cp: std::sync::Weak<ControlPlane>,
    registry: Registry,
    tails: Arc<Semaphore>,
    /// The last scrape's size, what the next one's buffer starts with.
    last_scrape_len: std::sync::atomic::AtomicUsize,
}

type Shared = Arc<Web>;

/// Binds `at`, records the bound address in `<state>/metrics-address`, and serves until the
/// control plane shuts down. Returns the bound address.
pub async fn start(cp: &Arc<ControlPlane>, at: SocketAddr, paths: &StatePaths) -> Result<SocketAddr, WebError> {
    let listener = tokio::net::TcpListener::bind(at).await.map_err(|source| WebError::Bind { addr: at, source })?;
    let addr = listener.local_addr().map_err(|source| WebError::Bind { addr: at, source })?;
    let file = paths.metrics_address_file();
    flotilla_proto::fs::write_public(&file, addr.to_string().as_bytes())
        .map_err(|source| WebError::Record { path: file, source })?;
    // Once per control plane: `start` runs once, at serve's start.
    let _ = cp.metrics_address.set(addr);
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "/metrics and the status page listen beyond loopback, without authentication (docs/SECURITY.md)");
    }
    let web = Arc::new(Web {
        cp: Arc::downgrade(cp),
        registry: metrics::registry(cp),
        tails: Arc::new(Semaphore::new(MAX_LOG_TAILS)),
        last_scrape_len: Default::default(),
    });
    let app = router(web);
    let shutdown = cp.shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    tracing::info!(%addr, "serving /metrics and the status page");
    Ok(addr)
}

fn router(web: Shared) -> axum::Router {
    axum::Router::new()
        .route("/", get(index))
        .route("/metrics", get(scrape))
        .route("/state.json", get(state_json))
        .route("/logs", get(logs))
        .route("/assets/page.js", get(|| async { asset("text/javascript; charset=utf-8", page::SCRIPT) }))
        .route("/assets/page.css", get(|| async { asset("text/css; charset=utf-8", page::STYLE) }))
        .layer(axum::middleware::from_fn(guard))
        .with_state(web)
}

/// Refuses a `Host` that names something other than an IP address or `localhost` (DNS
/// rebinding), and sets the headers that keep the page to itself.
async fn guard(req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !host_allowed(host) {
        return (StatusCode::MISDIRECTED_REQUEST, "use an IP address or localhost in the URL\n").into_response();
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An IP literal (with or without a port, IPv6 in brackets) or `localhost`; an absent Host
/// (HTTP/1.0) too.
pub fn host_allowed(host: &str) -> bool {
    if host.is_empty() {
        return true;
    }
    let name = match host.strip_prefix('[') {
        Some(v6) => return v6.split(']').next().is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok()),
        None => host.rsplit_once(':').map(|(n, _)| n).unwrap_or(host),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn gone() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "the control plane is shutting down\n").into_response()
}

/// `GET /metrics`: encoded off the reactor (a large cluster's scrape is milliseconds of CPU).
/// OpenMetrics for a client that asks for it (Prometheus does), else the classic text format.
async fn scrape(State(web): State<Shared>, req: Request) -> Response {
    let openmetrics = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let encoded = tokio::task::spawn_blocking(move || {
        use std::sync::atomic::Ordering::Relaxed;
        let hint = web.last_scrape_len.load(Relaxed).max(64 * 1024);
        let text = metrics::encode_sized(&web.registry, hint + hint / 8)?;
        web.last_scrape_len.store(text.len(), Relaxed);
        Ok::<_, std::fmt::Error>(if openmetrics { text } else { metrics::to_classic_text(&text) })
    })
    .await;
    let content_type = if openmetrics { CONTENT_TYPE_OPENMETRICS } else { CONTENT_TYPE_CLASSIC };
    match encoded {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "the metrics could not be encoded\n").into_response(),
    }
}

/// What the page shows: the snapshot, the leaders, recent audit events.
fn view(cp: &Arc<ControlPlane>) -> page::View {
    let snapshot = Snapshot::of(cp);
    let audit = cp.store.audit_events(AUDIT_SHOWN).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "status page: the audit trail cannot be read");
        Vec::new()
    });
    page::View::new(snapshot, audit)
}

async fn index(State(web): State<Shared>) -> Response {
    let Some(cp) = web.cp.upgrade() else { return gone() };
    let html = tokio::task::spawn_blocking(move || page::render(&view(&cp))).await;
    match html {
        Ok(html) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn state_json(State(web): State<Shared>) -> Response {
    let Some(cp) = web.cp.upgrade() else { return gone() };
    let json = tokio::task::spawn_blocking(move || serde_json::to_string(&view(&cp))).await;
    match json {
        Ok(Ok(j)) => ([(header::CONTENT_TYPE, "application/json")], j).into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The host a `/logs?host=NAME` asks for (percent-decoding not needed: host names are DNS
/// labels); none: every connected host.
fn host_param(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "host")
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// `GET /logs?host=NAME`: the sources each host's roles run plus the Engine's journal, as
/// server-sent events (`event: line`, data: JSON `{host, source, unix_ns, text}`; `event:
/// end` when a source ends). At most [`MAX_LOG_TAILS`] at once.
async fn logs(State(web): State<Shared>, req: Request) -> Response {
    let Some(cp) = web.cp.upgrade() else { return gone() };
    let Ok(permit) = Arc::clone(&web.tails).try_acquire_owned() else {
        return (StatusCode::TOO_MANY_REQUESTS, "too many live log tails are open; close one\n").into_response();
    };
    let host = host_param(req.uri().query());
    if let Some(h) = &host
        && !crate::control_plane::settings::valid_name(h)
    {
        return (StatusCode::BAD_REQUEST, "host: not a host name\n").into_response();
    }
    let follow = v1::FollowLogsRequest {
        hosts: host.into_iter().collect(),
        engine: true,
        follow: true,
        tail: LOG_TAIL_START,
        ..Default::default()
    };
    let stream = match cp.follow_logs(follow) {
        Ok(s) => s,
        Err(e) => return (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    };
    drop(cp);
    let events = stream.map(move |line| {
        let _held = &permit;
        Ok::<_, Infallible>(log_event(&line))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

/// One log line (or a source's end) as a server-sent event.
fn log_event(line: &v1::LogLineOut) -> Event {
    let cleaned = page::LogLine::from(line);
    let kind = if line.eof || !line.error.is_empty() { "end" } else { "line" };
    Event::default().event(kind).data(serde_json::to_string(&cleaned).unwrap_or_default())
}
