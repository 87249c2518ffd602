//! `coordinator logs`: hosts' logs (role containers, named containers, the Engine's
//! journal) streamed through the control plane, printed as `host/source | line`.

use std::time::Duration;

use futures::FutureExt as _;

use clap::{Args, ValueEnum};
use flotilla_proto::v1;

use super::args::parse_duration;
use super::{CliError, Global};
use crate::ui::log_prefix;

/// How much of the output is buffered before it is written (a flush also happens whenever no
/// line is waiting).
const OUT_BUFFER: usize = 64 * 1024;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Hosts to read (default: every connected host).
    pub hosts: Vec<String>,
    /// Only hosts with this role, and (without --container) only its sources.
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    /// A container on each host (repeatable; default: the hosts' role sources — the Consul
    /// container for consul, the Engine's journal for manager and node).
    #[arg(long = "container", short = 'c')]
    pub containers: Vec<String>,
    /// Also the Engine's own journal.
    #[arg(long)]
    pub engine: bool,
    /// Keep printing new lines until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only lines from the last DURATION (e.g. 10m, 1h).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Only the last N lines of each source.
    #[arg(long)]
    pub tail: Option<u32>,
}

/// The roles `--role` accepts: [`v1::Role`] without `unspecified` (the proto crate does not
/// depend on clap, so the value enum lives here).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleArg {
    Consul,
    Manager,
    Node,
}

impl From<RoleArg> for v1::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Consul => v1::Role::Consul,
            RoleArg::Manager => v1::Role::Manager,
            RoleArg::Node => v1::Role::Node,
        }
    }
}

pub async fn run(g: &Global, args: LogsArgs) -> Result<(), CliError> {
    use std::io::{IsTerminal, Write};
    let since_unix_ns = match args.since {
        Some(d) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
            i64::try_from(now - d.as_nanos() as i128).unwrap_or(0).max(1)
        }
        None => 0,
    };
    let mut admin = g.admin().await?;
    let mut lines = admin
        .follow_logs(v1::FollowLogsRequest {
            hosts: args.hosts,
            role: args.role.map(|r| v1::Role::from(r) as i32).unwrap_or_default(),
            containers: args.containers,
            engine: args.engine,
            follow: args.follow,
            since_unix_ns,
            tail: args.tail.unwrap_or(0),
        })
        .await?
        .into_inner();
    let colour = std::io::stdout().is_terminal();
    // Buffered (stdout alone writes at every newline: a system call per line), flushed
    // whenever no line is waiting, so `-f` shows each line as soon as it arrives.
    let mut out = std::io::BufWriter::with_capacity(OUT_BUFFER, std::io::stdout().lock());
    let mut failed = Vec::new();
    loop {
        let next = match lines.message().now_or_never() {
            Some(next) => next?,
            None => {
                if out.flush().is_err() {
                    return Ok(());
                }
                lines.message().await?
            }
        };
        let Some(l) = next else { break };
        if !l.error.is_empty() {
            eprintln!("{}/{}: {}", l.host, l.source, l.error);
            failed.push(format!("{}/{}", l.host, l.source));
            continue;
        }
        if l.eof {
            continue;
        }
        // A closed pipe (`| head`) ends the command quietly.
        if writeln!(out, "{} | {}", log_prefix(&l.host, &l.source, colour), l.text).is_err() {
            return Ok(());
        }
    }
    if out.flush().is_err() {
        return Ok(());
    }
    if failed.is_empty() { Ok(()) } else { Err(CliError::LogsUnread { sources: failed }) }
}
