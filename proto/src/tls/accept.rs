//! The server side of a TLS port: the accept loop that carries tonic over rustls, and what it
//! bounds (issue 14).
//!
//! - Every connection needs a place ([`super::admission`]): caps on all connections, on those
//!   without a client certificate, and on those from one source; the oldest anonymous one
//!   makes room for a newcomer.
//! - A TLS handshake has [`AcceptLimits::handshake_timeout`].
//! - A connection that presented no client certificate is closed once idle (no byte either
//!   way) for [`AcceptLimits::anonymous_idle`], and at the latest after
//!   [`AcceptLimits::anonymous_lifetime`].
//! - Refusals, evictions, failed handshakes and expiries are counted ([`Port::counts`]) and
//!   summarised in one log line per [`AcceptLimits::report_interval`] at most; each failed
//!   handshake is a DEBUG line.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use super::admission::{Admission, Counters, Eviction, Slot};

/// How long a TLS handshake may take before the connection is dropped (the default).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a TLS port allows. The default keeps today's timeouts for connections without a
/// certificate (none: a slow download over a thin link must finish) and caps connections.
#[derive(Clone, Debug)]
pub struct AcceptLimits {
    /// Connections at once, all kinds.
    pub max_connections: usize,
    /// Of which without a (verified) client certificate, handshakes in progress included.
    pub max_anonymous: usize,
    /// Of which from one source (an IPv4 address or an IPv6 /64).
    pub max_anonymous_per_source: usize,
    pub handshake_timeout: Duration,
    /// A connection without a client certificate is closed after this long without a byte
    /// read or written.
    pub anonymous_idle: Option<Duration>,
    /// ... and this long after it was accepted, whatever it does.
    pub anonymous_lifetime: Option<Duration>,
    /// At most one summary log line per interval.
    pub report_interval: Duration,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_anonymous: 1024,
            max_anonymous_per_source: 128,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            anonymous_idle: None,
            anonymous_lifetime: None,
            report_interval: Duration::from_secs(60),
        }
    }
}

/// A port's limits and counters, shared with its accept loop ([`incoming_with`]).
#[derive(Clone, Debug)]
pub struct Port(Arc<Admission>);

impl Port {
    pub fn new(limits: AcceptLimits) -> Self {
        Self(Arc::new(Admission::new(limits)))
    }

    pub fn limits(&self) -> &AcceptLimits {
        &self.0.limits
    }

    /// Connections open now and what happened since the port opened.
    pub fn counts(&self) -> AcceptCounts {
        let c = &self.0.counters;
        let now = self.0.occupancy();
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        AcceptCounts {
            connections: now.total as u64,
            anonymous: now.anonymous as u64,
            accepted: g(&c.accepted),
            refused: g(&c.refused),
            evicted: g(&c.evicted),
            handshakes_failed: g(&c.handshakes_failed),
            handshakes_timed_out: g(&c.handshakes_timed_out),
            expired: g(&c.expired),
            accept_errors: g(&c.accept_errors),
        }
    }
}

/// A snapshot of a [`Port`]: gauges (`connections`, `anonymous`), then counters since it
/// opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptCounts {
    pub connections: u64,
    pub anonymous: u64,
    pub accepted: u64,
    /// Closed at once: every place was held by authenticated connections.
    pub refused: u64,
    /// Anonymous connections closed to make room for a newcomer.
    pub evicted: u64,
    pub handshakes_failed: u64,
    pub handshakes_timed_out: u64,
    /// Anonymous connections closed idle or at the end of their lifetime.
    pub expired: u64,
    /// `accept` itself failed (e.g. `EMFILE`).
    pub accept_errors: u64,
}

/// What the server knows about the other end of a connection; a request extension.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// The verified client certificate chain, leaf first; `None` when none was presented.
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// An accepted TLS connection, carrying [`PeerInfo`] into tonic; holds its place on the port
/// until dropped.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    /// Connections without a client certificate only.
    watchdog: Option<Watchdog>,
    _slot: Slot,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl TlsConn {
    /// An error once the watchdog closed the connection (and registers its wake-up).
    fn poll_closed(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let w = self.watchdog.as_mut()?;
        let Poll::Ready(why) = w.poll_closed(cx) else { return None };
        if why == Closed::Expired && !std::mem::replace(&mut w.counted, true) {
            Counters::bump(&self._slot.counters().expired);
        }
        Some(io::Error::new(io::ErrorKind::TimedOut, why.message()))
    }

    fn touch(&mut self) {
        if let Some(w) = self.watchdog.as_mut() {
            w.last_active = Instant::now();
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.poll_closed(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(e) = self.poll_closed(cx) {
            return Poll::Ready(Err(e));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.poll_closed(cx) {
            return Poll::Ready(Err(e));
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Closes a connection without a client certificate: evicted to make room, idle too long,
/// or at the end of its lifetime. Polled from the connection's own reads and writes (hyper
/// always has a read pending), so it needs no task of its own.
struct Watchdog {
    eviction: Eviction,
    idle: Option<Duration>,
    expires: Option<Instant>,
    last_active: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    closed: Option<Closed>,
    /// The expiry was counted.
    counted: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closed {
    Evicted,
    Expired,
}

impl Closed {
    fn message(self) -> &'static str {
        match self {
            Closed::Evicted => "closed to make room on a full port (no client certificate)",
            Closed::Expired => "closed idle or at the end of its lifetime (no client certificate)",
        }
    }
}

impl Watchdog {
    fn new(limits: &AcceptLimits, eviction: Eviction, accepted: Instant) -> Self {
        let expires = limits.anonymous_lifetime.map(|l| accepted + l);
        let idle = limits.anonymous_idle;
        let mut w =
            Self { eviction, idle, expires, last_active: Instant::now(), timer: None, closed: None, counted: false };
        w.timer = w.deadline().map(|d| Box::pin(tokio::time::sleep_until(d)));
        w
    }

    fn deadline(&self) -> Option<Instant> {
        let idle = self.idle.map(|i| self.last_active + i);
        match (idle, self.expires) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<Closed> {
        if self.closed.is_none() && self.eviction.poll_evicted(cx).is_ready() {
            self.closed = Some(Closed::Evicted);
        }
        while self.closed.is_none() {
            let deadline = self.deadline();
            let Some(timer) = self.timer.as_mut() else { break };
            if timer.as_mut().poll(cx).is_pending() {
                break;
            }
            match deadline {
                Some(d) if d <= Instant::now() => self.closed = Some(Closed::Expired),
                Some(d) => timer.as_mut().reset(d),
                None => break,
            }
        }
        match self.closed {
            Some(why) => Poll::Ready(why),
            None => Poll::Pending,
        }
    }
}

/// [`incoming_with`] with [`AcceptLimits::default`].
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, io::Error>> {
    incoming_with(listener, config, Port::new(AcceptLimits::default()))
}

/// Accepts TCP connections on `listener` within `port`'s limits and completes TLS handshakes
/// concurrently (a slow or hostile client never blocks the accept loop); yields only
/// completed handshakes. The accept loop ends when the returned stream is dropped.
pub fn incoming_with(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    port: Port,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        let admission = port.0.clone();
        let mut report = Report { port, last: AcceptCounts::default() };
        let mut tick = tokio::time::interval(admission.limits.report_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: counted and summarised; back off a little
                        // instead of spinning.
                        Counters::bump(&admission.counters.accept_errors);
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tick.tick() => {
                    report.log();
                    continue;
                }
                () = tx.closed() => return,
            };
            Counters::bump(&admission.counters.accepted);
            // Refused: closed at once (dropped), counted.
            let Some((slot, eviction)) = admission.admit(remote.ip()) else { continue };
            let _ = tcp.set_nodelay(true);
            let handshake = Handshake { acceptor: acceptor.clone(), limits: admission.limits.clone(), tx: tx.clone() };
            tokio::spawn(handshake.run(tcp, remote, slot, eviction));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

struct Handshake {
    acceptor: tokio_rustls::TlsAcceptor,
    limits: AcceptLimits,
    tx: mpsc::Sender<Result<TlsConn, io::Error>>,
}

impl Handshake {
    async fn run(self, tcp: TcpStream, remote: SocketAddr, mut slot: Slot, mut eviction: Eviction) {
        let accepted = Instant::now();
        let outcome = tokio::select! {
            r = tokio::time::timeout(self.limits.handshake_timeout, self.acceptor.accept(tcp)) => r,
            // Counted where it was decided.
            () = eviction.evicted() => return,
        };
        let stream = match outcome {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                Counters::bump(&slot.counters().handshakes_failed);
                tracing::debug!(peer = %remote, error = %e, "TLS handshake refused");
                return;
            }
            Err(_) => {
                Counters::bump(&slot.counters().handshakes_timed_out);
                tracing::debug!(peer = %remote, "TLS handshake timed out");
                return;
            }
        };
        let certs = stream.get_ref().1.peer_certificates().map(|c| Arc::new(c.to_vec()));
        let watchdog = match certs {
            Some(_) if !slot.authenticate() => return,
            Some(_) => None,
            None => Some(Watchdog::new(&self.limits, eviction, accepted)),
        };
        let info = PeerInfo { remote_addr: Some(remote), certs };
        let _ = self.tx.send(Ok(TlsConn { inner: stream, info, watchdog, _slot: slot })).await;
    }
}

/// The summary line: what changed since the last one, if anything did.
struct Report {
    port: Port,
    last: AcceptCounts,
}

impl Report {
    fn log(&mut self) {
        let now = self.port.counts();
        let d = |f: fn(&AcceptCounts) -> u64| f(&now) - f(&self.last);
        let (refused, evicted, accept_errors) = (d(|c| c.refused), d(|c| c.evicted), d(|c| c.accept_errors));
        let (failed, timed_out, expired) =
            (d(|c| c.handshakes_failed), d(|c| c.handshakes_timed_out), d(|c| c.expired));
        let interval = self.port.limits().report_interval;
        let (connections, anonymous) = (now.connections, now.anonymous);
        if refused + evicted + accept_errors > 0 {
            tracing::warn!(
                refused,
                evicted,
                accept_errors,
                handshakes_failed = failed,
                handshakes_timed_out = timed_out,
                expired,
                connections,
                anonymous,
                max = self.port.limits().max_connections,
                "TLS port at its limits in the last {interval:?}"
            );
        } else if failed + timed_out + expired > 0 {
            tracing::info!(
                handshakes_failed = failed,
                handshakes_timed_out = timed_out,
                expired,
                connections,
                anonymous,
                "TLS port: connections dropped in the last {interval:?}"
            );
        }
        self.last = now;
    }
}
