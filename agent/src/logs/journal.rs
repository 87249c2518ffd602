//! The Engine's journal as a log source: `journalctl -u docker -o json`, one JSON object a
//! line, stamped with the journal's own microsecond timestamps. A host without a journal
//! (no systemd, no journal files) is an error the stream reports, not a silent end.

use flotilla_proto::v1::log_line;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::{RawLine, SourceError, bounded_text, engine_since};

/// Why the journal cannot be read (to the end).
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the Engine's journal cannot be read: journalctl: {0}")]
    Spawn(std::io::Error),
    #[error("journalctl: no output pipes")]
    NoPipes,
    /// journalctl's own line saying so.
    #[error("the Engine's journal is not available on this host: {0}")]
    NotAvailable(String),
    #[error("journalctl exited with {status}: {stderr}")]
    Exit { status: std::process::ExitStatus, stderr: String },
    #[error("journalctl: {0}")]
    Wait(std::io::Error),
}

/// The Engine's journal from a margin before `since` (see [`engine_since`]), or its last
/// `tail` entries.
pub fn read(since: i64, tail: u32, follow: bool) -> BoxStream<'static, Result<RawLine, SourceError>> {
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
        Err(e) => return failed(JournalError::Spawn(e)),
    };
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return failed(JournalError::NoPipes);
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
        let item = j.next().await?.map_err(SourceError::from);
        let more = item.is_ok().then_some(j);
        Some((item, more))
    })
    .boxed()
}

/// A stream of the one error `e`.
fn failed(e: JournalError) -> BoxStream<'static, Result<RawLine, SourceError>> {
    futures::stream::once(async move { Err(e.into()) }).boxed()
}

/// A running journalctl.
struct Journal {
    child: tokio::process::Child,
    out: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    err: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    err_open: bool,
    /// What journalctl said on stderr (bounded), for the error when it fails.
    err_text: String,
}

impl Journal {
    async fn next(&mut self) -> Option<Result<RawLine, JournalError>> {
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
                            return Some(Err(JournalError::NotAvailable(l.trim().to_string())));
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
    async fn finish(&mut self) -> Option<Result<RawLine, JournalError>> {
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
            Ok(status) => Some(Err(JournalError::Exit { status, stderr: self.err_text.clone() })),
            Err(e) => Some(Err(JournalError::Wait(e))),
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
}
