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
//!
//! This module is the stream to the coordinator and what every source shares ([`RawLine`],
//! [`Stamper`], [`SourceError`]); one file per source reads it:
//!
//! - [`container`]: a container's log through the Engine's API.
//! - [`journal`]: the Engine's own journal through `journalctl`.

pub mod container;
pub mod journal;

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use flotilla_proto::tls;
use flotilla_proto::v1::{
    self, LogChunk, LogLine, agent_service_client::AgentServiceClient, log_line, open_log_stream,
};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
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

    /// The channel to the coordinator (mutual TLS, this identity): backups upload on it too.
    pub fn channel(&self) -> tonic::transport::Channel {
        self.channel.clone()
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
    Lost(Lost),
}

/// Why a connection of a stream broke (the stream dials again and resumes).
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("request queue closed")]
    QueueClosed,
    #[error("{:?}: {}", .0.code(), .0.message())]
    Rpc(tonic::Status),
    #[error("the coordinator ended the log stream early")]
    EndedEarly,
}

/// Why a source cannot be read (to the end): the stream's last chunk carries it in `error`.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the Docker Engine is not reachable from the agent")]
    NoEngine,
    #[error("OpenLogStream names no source")]
    NoSource,
    /// The Engine's own message ("No such container: x").
    #[error("{}", crate::roles::engine_message(.0))]
    Container(bollard::errors::Error),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
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
            return Outcome::Lost(Lost::QueueClosed);
        }
        let mut client = AgentServiceClient::with_interceptor(link.channel.clone(), flotilla_proto::protocol_header);
        let mut acks = match client.logs(ReceiverStream::new(rx)).await {
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
                        _ => Outcome::Lost(Lost::EndedEarly),
                    };
                }
                Err(status) => return classify(status),
            }
        }
    }

    fn source(&self, since: i64, tail: u32) -> BoxStream<'static, Result<RawLine, SourceError>> {
        let failed = |e| futures::stream::once(async { Err(e) }).boxed();
        match &self.req.source {
            Some(open_log_stream::Source::Container(name)) => match &self.docker {
                Some(docker) => container::read(docker, name, since, tail, self.req.follow),
                None => failed(SourceError::NoEngine),
            },
            Some(open_log_stream::Source::Engine(_)) => journal::read(since, tail, self.req.follow),
            None => failed(SourceError::NoSource),
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
        _ => Outcome::Lost(Lost::Rpc(status)),
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
    mut source: BoxStream<'static, Result<RawLine, SourceError>>,
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
                Some(Err(e)) => chunk.error = e.to_string(),
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

/// A line's text: lossy UTF-8 without a trailing `\r`, cut to [`MAX_LINE_BYTES`] on a char
/// boundary.
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn batches_are_bounded_and_the_end_is_sent() {
        let lines: Vec<Result<RawLine, SourceError>> = (1..=600)
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
        let engine = bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            message: "No such container: nope".to_string(),
        };
        let source = futures::stream::iter(vec![Err(SourceError::Container(engine))]).boxed();
        assert!(pump(source, Stamper::new(0), tx).await);
        let c = rx.recv().await.expect("a chunk");
        assert_eq!(c.error, "No such container: nope");
        assert!(rx.recv().await.is_none());
    }
}
