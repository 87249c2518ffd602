//! A hostile client for the hostile-client suite (issue 14, `tests/tests/hostile.rs`): opens
//! many TLS connections to an agent port **without a client certificate** and holds them open
//! for as long as the server lets it, speaking just enough HTTP/2 to look alive (the preface,
//! an empty SETTINGS, a PING every few seconds, and acks of the server's SETTINGS and PINGs),
//! so neither an idle timer nor the server's keep-alive closes them. An attempt that fails
//! before its handshake completes is tried again (`--retries`); a connection the server
//! closes later is not reopened.
//!
//! Connection `i` leaves from source address `--source` + `i % --sources` (last octet counted
//! up: any 127.0.0.0/8 address is the loopback), so one process can look like one attacker or
//! like many.
//!
//! Prints JSON lines on stdout: `{"phase":"ramped",...}` once every connection was tried,
//! then `{"phase":"holding",...}` every two seconds, and exits by itself at `--hold-s` after
//! its start (or when its stdin closes, i.e. when the test that started it went away).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_proto::tls;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_SETTINGS: u8 = 4;
const FRAME_PING: u8 = 6;
const FLAG_ACK: u8 = 1;

struct Args {
    endpoint: SocketAddr,
    ca: PathBuf,
    connections: usize,
    source: Ipv4Addr,
    sources: u32,
    concurrency: usize,
    hold: Duration,
    ping: Duration,
    retries: u32,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        endpoint: SocketAddr::from(([127, 0, 0, 1], 0)),
        ca: PathBuf::new(),
        connections: 5000,
        source: Ipv4Addr::LOCALHOST,
        sources: 1,
        concurrency: 128,
        hold: Duration::from_secs(120),
        ping: Duration::from_secs(4),
        retries: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--endpoint" => a.endpoint = v.parse()?,
            "--ca" => a.ca = v.into(),
            "--connections" => a.connections = v.parse()?,
            "--source" => a.source = v.parse()?,
            "--sources" => a.sources = v.parse::<u32>()?.max(1),
            "--concurrency" => a.concurrency = v.parse::<usize>()?.max(1),
            "--hold-s" => a.hold = Duration::from_secs(v.parse()?),
            "--ping-s" => a.ping = Duration::from_secs(v.parse()?),
            "--retries" => a.retries = v.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    anyhow::ensure!(a.endpoint.port() != 0, "--endpoint is required");
    Ok(a)
}

/// What the flood saw, shared by its connection tasks.
#[derive(Default)]
struct Counts {
    /// TCP connections established (the kernel's accept queue counts).
    connected: AtomicU64,
    /// TLS handshakes completed.
    handshaked: AtomicU64,
    /// Open now, after a completed handshake.
    held: AtomicU64,
    /// Of those, closed later by the server.
    closed: AtomicU64,
    /// Attempts that did not complete a handshake (connect or handshake failed or timed out)
    /// and were tried again.
    retried: AtomicU64,
    /// Connections that never completed a handshake, after their retries.
    failed: AtomicU64,
}

impl Counts {
    fn json(&self, phase: &str, started: Instant) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            r#"{{"phase":"{phase}","elapsed_ms":{},"connected":{},"handshaked":{},"held":{},"closed":{},"retried":{},"failed":{}}}"#,
            started.elapsed().as_millis(),
            g(&self.connected),
            g(&self.handshaked),
            g(&self.held),
            g(&self.closed),
            g(&self.retried),
            g(&self.failed)
        )
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tls::install_default_provider();
    let args = Arc::new(parse_args()?);
    let started = Instant::now();
    let deadline = started + args.hold;
    let ca_pem = std::fs::read_to_string(&args.ca).with_context(|| format!("{}", args.ca.display()))?;
    let ca = tls::certs_from_pem("ca", &ca_pem)?;
    let connector = tokio_rustls::TlsConnector::from(tls::client_config(&ca, None)?);
    let counts = Arc::new(Counts::default());

    // Bounded in time whatever happens: the deadline, or the test going away (stdin closes).
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        let eof = async { while stdin.read(&mut buf).await.is_ok_and(|n| n > 0) {} };
        tokio::select! {
            () = tokio::time::sleep_until(deadline.into()) => {}
            () = eof => {}
        }
        std::process::exit(0);
    });

    let permits = Arc::new(Semaphore::new(args.concurrency));
    for i in 0..args.connections {
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let (args, connector, counts) = (Arc::clone(&args), connector.clone(), Arc::clone(&counts));
        tokio::spawn(async move { hold(i, &args, connector, &counts, permit).await });
    }
    // Every connection was tried once all permits are back.
    let _all = permits.acquire_many(args.concurrency as u32).await?;
    report(&counts.json("ramped", started));
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        report(&counts.json("holding", started));
    }
}

/// One report line; nobody reading any more (the test went away) ends the flood.
fn report(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// One connection: connect from its source address, handshake without a certificate (an
/// attempt that fails is tried again, `--retries` times), then keep the HTTP/2 connection
/// alive until the server closes it.
async fn hold(
    i: usize,
    args: &Args,
    connector: tokio_rustls::TlsConnector,
    counts: &Counts,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let source = Ipv4Addr::from(u32::from(args.source) + (i as u32 % args.sources));
    let mut attempt = 0;
    let tls = loop {
        match connect(args, source, &connector, counts).await {
            Ok(t) => break t,
            Err(_) if attempt < args.retries => {
                attempt += 1;
                counts.retried.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    };
    counts.handshaked.fetch_add(1, Ordering::Relaxed);
    counts.held.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    let _ = keep_alive(tls, args.ping).await;
    counts.held.fetch_sub(1, Ordering::Relaxed);
    counts.closed.fetch_add(1, Ordering::Relaxed);
}

async fn connect(
    args: &Args,
    source: Ipv4Addr,
    connector: &tokio_rustls::TlsConnector,
    counts: &Counts,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(args.endpoint)).await??;
    counts.connected.fetch_add(1, Ordering::Relaxed);
    let name = ServerName::IpAddress(args.endpoint.ip().into());
    Ok(tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp)).await??)
}

/// Just enough HTTP/2 to look like a live, idle client. The reader and the writer are two
/// futures polled together (a read is never cut in the middle of a frame).
async fn keep_alive<S: AsyncRead + AsyncWrite>(stream: S, every: Duration) -> std::io::Result<()> {
    let (mut r, mut w) = tokio::io::split(stream);
    let (replies, mut to_send) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let reader = async move {
        loop {
            let (kind, flags, payload) = read_frame(&mut r).await?;
            let reply = match kind {
                FRAME_SETTINGS if flags & FLAG_ACK == 0 => frame(FRAME_SETTINGS, FLAG_ACK, &[]),
                FRAME_PING if flags & FLAG_ACK == 0 => frame(FRAME_PING, FLAG_ACK, &payload),
                _ => continue,
            };
            if replies.send(reply).await.is_err() {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    let writer = async move {
        w.write_all(PREFACE).await?;
        w.write_all(&frame(FRAME_SETTINGS, 0, &[])).await?;
        w.flush().await?;
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            let out = tokio::select! {
                reply = to_send.recv() => match reply {
                    Some(reply) => reply,
                    None => return Ok::<(), std::io::Error>(()),
                },
                _ = tick.tick() => frame(FRAME_PING, 0, &[0u8; 8]),
            };
            w.write_all(&out).await?;
            w.flush().await?;
        }
    };
    tokio::select! {
        r = reader => r,
        w = writer => w,
    }
}

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok((head[3], head[4], payload))
}
