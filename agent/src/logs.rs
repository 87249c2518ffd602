//! Log streams: what the coordinator asked for with `OpenLogStream` — a container's log on
//! the local Engine, or the Engine's own journal — pushed up the `Logs` RPC. That RPC runs
//! on its own connection ([`Link`]), never on the session's, so a flood of lines cannot
//! delay a control message.
//!
//! One task per stream. Its *reader* parses the source's lines, stamps each with a
//! strictly increasing `unix_ns` ([`Stamper`]), and batches them ([`MAX_LINES`] lines or
//! [`MAX_BYTES`] per chunk) into a bounded channel that is the RPC's request stream: a
//! slow coordinator stops the reader, which stops reading the Engine. Memory stays bounded.
//! The coordinator answers every chunk it routed with the last `unix_ns` it received.
//!
//! # Resume, exactly once
//!
//! When the RPC fails (the coordinator restarts, the network drops), the task waits until
//! the session is up again, dials with back-off, and re-reads its source from the last
//! acknowledged `unix_ns`, dropping every line at or before it. Lines that were sent but
//! not acknowledged go again; they carry the same `unix_ns` as before, so the coordinator
//! drops the ones it had already routed. Stamps are reproducible because a re-read starts
//! well before the resume point ([`RESUME_MARGIN_S`]; the Engine's `since` is in whole
//! seconds) and the stamper only moves a timestamp that is not after its predecessor's.
//!
//! A coordinator that no longer knows the stream answers NOT_FOUND (it restarted and its
//! followers went with it): the stream ends here, and the follower asks again with its own
//! resume point. A source that fails (no such container, no journal) sends one chunk with
//! the message in `error`, and ends.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use flotilla_proto::tls;
use flotilla_proto::v1::{
    self, LogChunk, LogLine, agent_service_client::AgentServiceClient, log_line, open_log_stream,
};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::backoff::Backoff;

/// At most this many lines per chunk.
pub const MAX_LINES: usize = 256;
/// A chunk is sent once its text reaches this many bytes.
pub const MAX_BYTES: usize = 64 * 1024;
/// A longer line is cut to this many bytes.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Chunks queued between a reader and its RPC.
pub const CHUNK_QUEUE: usize = 4;
/// Reconnect back-off of one stream.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);

const NS_PER_S: i64 = 1_000_000_000;

/// Where log streams dial: the coordinator the open session reached, with the agent's
/// current identity, on a connection of its own. The session publishes one when it opens
/// (and after a renewal), and `None` when it ends.
#[derive(Clone)]
pub struct Link {
    pub addr: String,
    channel: tonic::transport::Channel,
}

impl Link {
    pub fn new(
        addr: &str,
        ca: &[rustls_pki_types::CertificateDer<'static>],
        identity: &tls::Identity,
    ) -> Result<Self, tls::TlsError> {
        let config = tls::client_config(ca, Some(identity))?;
        Ok(Self { addr: addr.to_string(), channel: tls::channel(addr, config)? })
    }
}

/// The open streams of this agent, by stream id.
pub struct LogStreams {
    docker: Option<Docker>,
    link: watch::Receiver<Option<Link>>,
    shutdown: CancellationToken,
    open: HashMap<String, Open>,
}

struct Open {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl LogStreams {
    pub fn new(docker: Option<Docker>, link: watch::Receiver<Option<Link>>, shutdown: CancellationToken) -> Self {
        Self { docker, link, shutdown, open: HashMap::new() }
    }

    /// Starts the stream `req` asks for (replacing one with the same id).
    pub fn open(&mut self, req: v1::OpenLogStream) {
        self.open.retain(|_, o| !o.task.is_finished());
        if let Some(old) = self.open.remove(&req.stream_id) {
            old.cancel.cancel();
        }
        tracing::info!(stream = %req.stream_id, source = ?req.source, since = req.since_unix_ns, follow = req.follow, "log stream opened");
        let cancel = self.shutdown.child_token();
        let id = req.stream_id.clone();
        let stream = LogStream { req, docker: self.docker.clone(), link: self.link.clone(), cancel: cancel.clone() };
        let task = tokio::spawn(stream.run());
        self.open.insert(id, Open { cancel, task });
    }

    /// Stops a stream the coordinator no longer needs.
    pub fn close(&mut self, stream_id: &str) {
        if let Some(o) = self.open.remove(stream_id)
            && !o.task.is_finished()
        {
            tracing::info!(stream = stream_id, "log stream closed");
            o.cancel.cancel();
        }
        self.open.retain(|_, o| !o.task.is_finished());
    }
}

/// One stream's task.
struct LogStream {
    req: v1::OpenLogStream,
    docker: Option<Docker>,
    link: watch::Receiver<Option<Link>>,
    cancel: CancellationToken,
}

/// How one connection of a stream ended.
enum Outcome {
    /// The source ended and the coordinator has everything.
    Done,
    /// The coordinator will not take this stream (any more).
    Refused(tonic::Status),
    /// The connection broke: dial again and resume.
    Lost(String),
}

impl LogStream {
    async fn run(mut self) {
        let id = self.req.stream_id.clone();
        // Only lines strictly after this go up: the resume point.
        let mut acked = self.req.since_unix_ns;
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        loop {
            let link = tokio::select! {
                l = self.link.wait_for(Option::is_some) => match l {
                    Ok(l) => l.clone(),
                    Err(_) => return,
                },
                () = self.cancel.cancelled() => return,
            };
            let Some(link) = link else { return };
            let mut connected = false;
            let outcome = tokio::select! {
                o = self.attempt(&link, &mut acked, &mut connected) => o,
                () = self.cancel.cancelled() => return,
            };
            match outcome {
                Outcome::Done => {
                    tracing::debug!(stream = %id, "log stream complete");
                    return;
                }
                Outcome::Refused(status) => {
                    tracing::info!(stream = %id, code = ?status.code(), message = status.message(), "coordinator ended the log stream");
                    return;
                }
                Outcome::Lost(why) => {
                    if connected {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::debug!(stream = %id, error = %why, resume_after = acked, retry_in = ?delay, "log stream lost");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.cancel.cancelled() => return,
                    }
                }
            }
        }
    }

    /// One connection: dial, read the source from `acked` on, push, follow the acks.
    async fn attempt(&self, link: &Link, acked: &mut i64, connected: &mut bool) -> Outcome {
        let since = *acked;
        let (tx, rx) = mpsc::channel::<LogChunk>(CHUNK_QUEUE);
        // The first chunk names the stream; the coordinator answers once it has read it.
        let first = LogChunk { stream_id: self.req.stream_id.clone(), ..Default::default() };
        if tx.try_send(first).is_err() {
            return Outcome::Lost("request queue closed".into());
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        flotilla_proto::add_protocol_header(&mut request);
        let mut client = AgentServiceClient::new(link.channel.clone());
        let mut acks = match client.logs(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => return classify(status),
        };
        *connected = true;
        // The tail only applies to a fresh start; a resume continues after `since`.
        let tail = if since == 0 { self.req.tail } else { 0 };
        let source = self.source(since, tail);
        let mut reader = AbortOnDropHandle::new(tokio::spawn(pump(source, Stamper::new(since), tx)));
        loop {
            match acks.message().await {
                Ok(Some(ack)) => *acked = (*acked).max(ack.unix_ns),
                // The coordinator answers the end of our request stream with the end of its
                // own: if the reader ended the source, everything arrived.
                Ok(None) => {
                    return match tokio::time::timeout(Duration::from_secs(1), &mut reader).await {
                        Ok(Ok(true)) => Outcome::Done,
                        _ => Outcome::Lost("the coordinator ended the log stream early".into()),
                    };
                }
                Err(status) => return classify(status),
            }
        }
    }

    fn source(&self, since: i64, tail: u32) -> BoxStream<'static, Result<RawLine, String>> {
        match &self.req.source {
            Some(open_log_stream::Source::Container(name)) => match &self.docker {
                Some(docker) => container(docker, name, since, tail, self.req.follow),
                None => futures::stream::once(async {
                    Err("the Docker Engine is not reachable from the agent".to_string())
                })
                .boxed(),
            },
            Some(open_log_stream::Source::Engine(_)) => journal(since, tail, self.req.follow),
            None => futures::stream::once(async { Err("OpenLogStream names no source".to_string()) }).boxed(),
        }
    }
}

/// Statuses after which dialling again cannot help.
fn classify(status: tonic::Status) -> Outcome {
    use tonic::Code;
    match status.code() {
        Code::NotFound
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::InvalidArgument
        | Code::Unimplemented => Outcome::Refused(status),
        _ => Outcome::Lost(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// A line as its source gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawLine {
    /// The source's timestamp, ns since the epoch (0 when it had none).
    pub unix_ns: i64,
    pub stream: log_line::Stream,
    pub text: String,
}

/// Makes a source's timestamps strictly increasing and drops what is at or before the
/// resume point. A line whose timestamp is not after its predecessor's gets the
/// predecessor's + 1 ns: the same sequence is always stamped the same way.
#[derive(Debug)]
pub struct Stamper {
    prev: i64,
    since: i64,
}

impl Stamper {
    pub fn new(since: i64) -> Self {
        Self { prev: 0, since }
    }

    /// The line's `unix_ns`, or `None` when it is at or before the resume point.
    pub fn stamp(&mut self, unix_ns: i64) -> Option<i64> {
        let ns = unix_ns.max(self.prev.saturating_add(1));
        self.prev = ns;
        (ns > self.since).then_some(ns)
    }
}

/// How far before a resume point a source is re-read (whole seconds).
///
/// The Engine stamps stdout and stderr lines from two readers, so its log is in timestamp
/// order only roughly: a line can follow one stamped later than itself. A re-read that
/// starts this early sees the same sequence around the resume point as the first read did
/// (so the [`Stamper`] gives every line the same `unix_ns`, and a late-stamped line after
/// the resume point is not skipped) unless the Engine ran this far out of order.
pub const RESUME_MARGIN_S: i64 = 10;

/// The Engine's `since` (whole seconds) for a resume point: [`RESUME_MARGIN_S`] early.
pub fn engine_since(since_unix_ns: i64) -> i64 {
    if since_unix_ns <= 0 { 0 } else { (since_unix_ns.div_euclid(NS_PER_S) - RESUME_MARGIN_S).max(0) }
}

/// Reads `source` into chunks on `tx` until it ends; returns whether its end (eof or
/// error) was queued. Returns early (false) when the RPC went away.
async fn pump(
    mut source: BoxStream<'static, Result<RawLine, String>>,
    mut stamper: Stamper,
    tx: mpsc::Sender<LogChunk>,
) -> bool {
    loop {
        let mut chunk = LogChunk::default();
        let mut bytes = 0;
        let mut next = source.next().await;
        loop {
            match next {
                None => chunk.eof = true,
                Some(Err(e)) => chunk.error = e,
                Some(Ok(raw)) => {
                    if let Some(unix_ns) = stamper.stamp(raw.unix_ns) {
                        bytes += raw.text.len();
                        chunk.lines.push(LogLine { unix_ns, stream: raw.stream as i32, text: raw.text });
                    }
                }
            }
            let ended = chunk.eof || !chunk.error.is_empty();
            if ended || chunk.lines.len() >= MAX_LINES || bytes >= MAX_BYTES {
                break;
            }
            // Take what is already there without waiting; send as soon as nothing is.
            match source.next().now_or_never() {
                Some(n) => next = n,
                None => break,
            }
        }
        let ended = chunk.eof || !chunk.error.is_empty();
        if (ended || !chunk.lines.is_empty()) && tx.send(chunk).await.is_err() {
            return false;
        }
        if ended {
            return true;
        }
    }
}

/// A container's log through the Engine's API, with its timestamps.
fn container(
    docker: &Docker,
    name: &str,
    since: i64,
    tail: u32,
    follow: bool,
) -> BoxStream<'static, Result<RawLine, String>> {
    let tail = if tail == 0 { "all".to_string() } else { tail.to_string() };
    let options = bollard::query_parameters::LogsOptionsBuilder::new()
        .follow(follow)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .since(i32::try_from(engine_since(since)).unwrap_or(i32::MAX))
        .tail(&tail)
        .build();
    let frames = docker.logs(name, Some(options));
    frames
        .flat_map(|frame| {
            let lines = match frame {
                Ok(out) => engine_lines(out).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(engine_message(&e))],
            };
            futures::stream::iter(lines)
        })
        .boxed()
}

/// The Engine's own message for an API error ("No such container: x").
fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// The lines of one frame of `logs?timestamps=1`: `<RFC 3339 nano> <text>\n` each.
pub fn engine_lines(out: LogOutput) -> Vec<RawLine> {
    let (stream, message) = match out {
        LogOutput::StdOut { message } | LogOutput::Console { message } => (log_line::Stream::Stdout, message),
        LogOutput::StdErr { message } => (log_line::Stream::Stderr, message),
        LogOutput::StdIn { .. } => return Vec::new(),
    };
    let mut lines = Vec::new();
    let mut parts: Vec<&[u8]> = message.split(|b| *b == b'\n').collect();
    if parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    for part in parts {
        let (unix_ns, text) = match part.iter().position(|b| *b == b' ') {
            Some(sp) => match parse_rfc3339_ns(&part[..sp]) {
                Some(ns) => (ns, &part[sp + 1..]),
                None => (0, part),
            },
            None => match parse_rfc3339_ns(part) {
                Some(ns) => (ns, &part[part.len()..]),
                None => (0, part),
            },
        };
        lines.push(RawLine { unix_ns, stream, text: bounded_text(text) });
    }
    lines
}

fn parse_rfc3339_ns(s: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(s).ok()?;
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

fn bounded_text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if text.len() > MAX_LINE_BYTES {
        let mut cut = MAX_LINE_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// The Engine's journal: `journalctl -u docker -o json`, one JSON object a line.
fn journal(since: i64, tail: u32, follow: bool) -> BoxStream<'static, Result<RawLine, String>> {
    let mut cmd = tokio::process::Command::new("journalctl");
    cmd.args(["-u", "docker", "-o", "json", "--no-pager"]);
    if follow {
        cmd.arg("--follow");
    }
    if since > 0 {
        cmd.arg(format!("--since=@{}", engine_since(since)));
        cmd.arg("--lines=all");
    } else if tail > 0 {
        cmd.arg(format!("--lines={tail}"));
    } else {
        cmd.arg("--lines=all");
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("the Engine's journal cannot be read: journalctl: {e}");
            return futures::stream::once(async move { Err(msg) }).boxed();
        }
    };
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return futures::stream::once(async { Err("journalctl: no output pipes".to_string()) }).boxed();
    };
    let state = Journal {
        child,
        out: BufReader::new(out).lines(),
        err: BufReader::new(err).lines(),
        err_open: true,
        err_text: String::new(),
    };
    futures::stream::unfold(Some(state), |state| async move {
        let mut j = state?;
        let item = j.next().await?;
        let more = item.is_ok().then_some(j);
        Some((item, more))
    })
    .boxed()
}

struct Journal {
    child: tokio::process::Child,
    out: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    err: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    err_open: bool,
    err_text: String,
}

impl Journal {
    async fn next(&mut self) -> Option<Result<RawLine, String>> {
        loop {
            tokio::select! {
                l = self.out.next_line() => match l {
                    Ok(Some(l)) => {
                        if let Some(raw) = journal_line(&l) {
                            return Some(Ok(raw));
                        }
                    }
                    Ok(None) | Err(_) => return self.finish().await,
                },
                l = self.err.next_line(), if self.err_open => match l {
                    Ok(Some(l)) => {
                        // journalctl says so and then waits forever with --follow.
                        if l.contains("No journal files") {
                            return Some(Err(format!("the Engine's journal is not available on this host: {}", l.trim())));
                        }
                        self.note(&l);
                    }
                    Ok(None) | Err(_) => self.err_open = false,
                },
            }
        }
    }

    fn note(&mut self, line: &str) {
        if self.err_text.len() < 4096 {
            if !self.err_text.is_empty() {
                self.err_text.push(' ');
            }
            self.err_text.push_str(line.trim());
        }
    }

    /// stdout is done: the process's exit decides between eof and an error.
    async fn finish(&mut self) -> Option<Result<RawLine, String>> {
        if self.err_open {
            let mut rest = String::new();
            let _ = self.err.get_mut().take(64 * 1024).read_to_string(&mut rest).await;
            for l in rest.lines() {
                self.note(l);
            }
            self.err_open = false;
        }
        match self.child.wait().await {
            Ok(s) if s.success() => None,
            Ok(s) => Some(Err(format!("journalctl exited with {s}: {}", self.err_text))),
            Err(e) => Some(Err(format!("journalctl: {e}"))),
        }
    }
}

/// One entry of `journalctl -o json`: `__REALTIME_TIMESTAMP` is µs since the epoch;
/// `MESSAGE` is a string, or an array of bytes when it is not UTF-8.
pub fn journal_line(line: &str) -> Option<RawLine> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let us: i64 = v.get("__REALTIME_TIMESTAMP")?.as_str()?.parse().ok()?;
    let text = match v.get("MESSAGE") {
        Some(serde_json::Value::String(s)) => bounded_text(s.as_bytes()),
        Some(serde_json::Value::Array(a)) => {
            let bytes: Vec<u8> = a.iter().filter_map(|b| b.as_u64()).map(|b| b as u8).collect();
            bounded_text(&bytes)
        }
        _ => String::new(),
    };
    let priority: u8 = v.get("PRIORITY").and_then(|p| p.as_str()).and_then(|p| p.parse().ok()).unwrap_or(6);
    Some(RawLine {
        unix_ns: us.saturating_mul(1000),
        stream: if priority <= 3 { log_line::Stream::Stderr } else { log_line::Stream::Stdout },
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn stamps_strictly_increase_and_the_resume_point_is_exclusive() {
        let mut s = Stamper::new(0);
        assert_eq!(s.stamp(100), Some(100));
        assert_eq!(s.stamp(100), Some(101));
        assert_eq!(s.stamp(90), Some(102));
        assert_eq!(s.stamp(200), Some(200));
        // Re-reading the same sequence resuming after 101 yields the same stamps after it.
        let mut r = Stamper::new(101);
        let again: Vec<_> = [100, 100, 90, 200].into_iter().map(|t| r.stamp(t)).collect();
        assert_eq!(again, vec![None, None, Some(102), Some(200)]);
    }

    #[test]
    fn the_engine_is_asked_from_a_margin_before_the_resume_point() {
        assert_eq!(engine_since(0), 0);
        assert_eq!(engine_since(1_700_000_000_500_000_000), 1_699_999_990);
        assert_eq!(engine_since(1_700_000_000_000_000_000), 1_699_999_990);
        assert_eq!(engine_since(5), 0);
    }

    #[test]
    fn engine_frames_split_into_timestamped_lines() {
        let out = LogOutput::StdErr {
            message: Bytes::from_static(
                b"2024-05-01T12:00:00.000000001Z hello world\n2024-05-01T12:00:00.5Z second\r\n",
            ),
        };
        let lines = engine_lines(out);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].unix_ns, 1_714_564_800_000_000_001);
        assert_eq!(lines[0].text, "hello world");
        assert_eq!(lines[0].stream, log_line::Stream::Stderr);
        assert_eq!(lines[1].unix_ns, 1_714_564_800_500_000_000);
        assert_eq!(lines[1].text, "second");
        let bare = engine_lines(LogOutput::StdOut { message: Bytes::from_static(b"no timestamp here\n") });
        assert_eq!(bare[0].unix_ns, 0);
        assert_eq!(bare[0].text, "no timestamp here");
    }

    #[test]
    fn journal_entries_parse_with_microseconds_and_binary_messages() {
        let l = journal_line(
            r#"{"__REALTIME_TIMESTAMP":"1714564800000001","MESSAGE":"API listen on /run/docker.sock","PRIORITY":"6"}"#,
        )
        .expect("entry");
        assert_eq!(l.unix_ns, 1_714_564_800_000_001_000);
        assert_eq!(l.text, "API listen on /run/docker.sock");
        assert_eq!(l.stream, log_line::Stream::Stdout);
        let b = journal_line(r#"{"__REALTIME_TIMESTAMP":"2","MESSAGE":[104,105],"PRIORITY":"3"}"#).expect("entry");
        assert_eq!(b.text, "hi");
        assert_eq!(b.stream, log_line::Stream::Stderr);
        assert!(journal_line("-- No entries --").is_none());
    }

    #[tokio::test]
    async fn batches_are_bounded_and_the_end_is_sent() {
        let lines: Vec<Result<RawLine, String>> = (1..=600)
            .map(|i| Ok(RawLine { unix_ns: i, stream: log_line::Stream::Stdout, text: format!("line {i}") }))
            .collect();
        let (tx, mut rx) = mpsc::channel(CHUNK_QUEUE);
        let source = futures::stream::iter(lines).boxed();
        let pumping = tokio::spawn(pump(source, Stamper::new(10), tx));
        let mut got = Vec::new();
        let mut eof = false;
        while let Some(c) = rx.recv().await {
            assert!(c.lines.len() <= MAX_LINES);
            got.extend(c.lines.iter().map(|l| l.unix_ns));
            eof |= c.eof;
        }
        assert!(pumping.await.expect("pump"));
        assert!(eof);
        assert_eq!(got, (11..=600).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_failing_source_sends_its_error_and_ends() {
        let (tx, mut rx) = mpsc::channel(CHUNK_QUEUE);
        let source = futures::stream::iter(vec![Err("No such container: nope".to_string())]).boxed();
        assert!(pump(source, Stamper::new(0), tx).await);
        let c = rx.recv().await.expect("a chunk");
        assert_eq!(c.error, "No such container: nope");
        assert!(rx.recv().await.is_none());
    }
}
