//! A container's log as a log source: the Engine's `logs` API with `timestamps=1`, split
//! into [`RawLine`]s stamped with the Engine's own RFC 3339 timestamps.

use bollard::Docker;
use bollard::container::LogOutput;
use flotilla_proto::v1::log_line;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{RawLine, SourceError, bounded_text, engine_since};

/// A container's log through the Engine's API, with its timestamps, from a margin before
/// `since` (see [`engine_since`]).
pub fn read(
    docker: &Docker,
    name: &str,
    since: i64,
    tail: u32,
    follow: bool,
) -> BoxStream<'static, Result<RawLine, SourceError>> {
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
                Err(e) => vec![Err(SourceError::Container(e))],
            };
            futures::stream::iter(lines)
        })
        .boxed()
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

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
}
