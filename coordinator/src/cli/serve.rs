//! `coordinator serve`: the control plane of one cluster, in the foreground, until SIGINT or
//! SIGTERM. Its log goes to stderr, or with `--log-file` to a file capped in size
//! ([`LogFile`]: rotated at [`LOG_FILE_MAX_BYTES`], [`LOG_FILES_KEPT`] old files kept, written
//! from a thread of its own).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::args::parse_duration;
use super::{CliError, Global};
use crate::control_plane::settings::{HOST_CERT_VALIDITY_MAX, HOST_CERT_VALIDITY_MIN, ServeConfig};

/// The log file is rotated when it passes this size ...
pub const LOG_FILE_MAX_BYTES: usize = 10 * 1024 * 1024;
/// ... and this many rotated files are kept (`coordinator.log.1` the newest).
pub const LOG_FILES_KEPT: usize = 3;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Where the agent port listens.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: String,
    /// Address(es) agents dial (IP or DNS name); the server certificate's SANs.
    #[arg(long)]
    pub advertise: Vec<String>,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// Validity of host client certificates (renewed at two thirds), 10m to 365d.
    #[arg(long, default_value = "30d", value_parser = parse_host_cert_validity)]
    pub host_cert_validity: Duration,
    /// The agent binary to serve to hosts (default: `flotilla-agent` next to this
    /// executable, else this executable, which doubles as the agent).
    #[arg(long)]
    pub agent_binary: Option<PathBuf>,
    /// Log to this file instead of stderr, rotated past 10 MiB (3 old files kept).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Where `/metrics` (Prometheus) and the read-only status page (`/`) listen; the bound
    /// address is written to `<state>/metrics-address`. Loopback unless you mean to expose it.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub metrics_listen: std::net::SocketAddr,
}

/// Why a `--host-cert-validity` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidityError {
    #[error(transparent)]
    Duration(#[from] super::args::DurationError),
    #[error(
        "{given:?} is shorter than {min:?}: agents renew at two thirds of it, over their session, and would renew without pause"
    )]
    TooShort { given: Duration, min: Duration },
    #[error(
        "{given:?} is longer than {max:?}: a stolen host key would stay good that long (renewal is automatic; there is no need)"
    )]
    TooLong { given: Duration, max: Duration },
}

/// `--host-cert-validity`: a duration within [`HOST_CERT_VALIDITY_MIN`]..=[`HOST_CERT_VALIDITY_MAX`].
pub fn parse_host_cert_validity(s: &str) -> Result<Duration, ValidityError> {
    let given = parse_duration(s)?;
    if given < HOST_CERT_VALIDITY_MIN {
        return Err(ValidityError::TooShort { given, min: HOST_CERT_VALIDITY_MIN });
    }
    if given > HOST_CERT_VALIDITY_MAX {
        return Err(ValidityError::TooLong { given, max: HOST_CERT_VALIDITY_MAX });
    }
    Ok(given)
}

/// `serve --log-file`: a size-capped, rotated file written from a thread of its own, so a
/// burst of log lines never blocks the reactor (lines past its buffer are dropped, and
/// counted by tracing-appender).
pub struct LogFile {
    pub writer: tracing_appender::non_blocking::NonBlocking,
    /// Flushes what is buffered when dropped: keep it until the process exits.
    pub guard: tracing_appender::non_blocking::WorkerGuard,
}

impl LogFile {
    pub fn open(path: &std::path::Path) -> Result<Self, std::io::Error> {
        // Opened here first: a path that cannot be written is an error, not file-rotate's panic.
        std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let (writer, guard) = tracing_appender::non_blocking(rotating(path, LOG_FILE_MAX_BYTES));
        Ok(Self { writer, guard })
    }
}

/// `path`, rotated once it passes `max_bytes` (at a write's end: lines stay whole), with
/// [`LOG_FILES_KEPT`] older files beside it.
fn rotating(path: &std::path::Path, max_bytes: usize) -> file_rotate::FileRotate<file_rotate::suffix::AppendCount> {
    file_rotate::FileRotate::new(
        path,
        file_rotate::suffix::AppendCount::new(LOG_FILES_KEPT),
        file_rotate::ContentLimit::BytesSurpassed(max_bytes),
        file_rotate::compression::Compression::None,
        None,
    )
}

pub async fn run(g: &Global, args: ServeArgs) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|error| CliError::Listen { addr: args.listen.clone(), error })?;
    let mut config = ServeConfig::new(&g.cluster(), g.state_dir());
    config.advertise = args.advertise;
    config.heartbeat_interval = args.heartbeat_interval;
    config.host_cert_validity = args.host_cert_validity;
    config.metrics_listen = Some(args.metrics_listen);
    config.agent_binary = Some(match args.agent_binary {
        Some(p) => p,
        None => crate::control_plane::agent_binary::AgentBinary::default_path().map_err(CliError::AgentBinary)?,
    });
    config.heal_command = heal_command(g);
    crate::control_plane::serve::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// What auto-heal runs: this very executable's `heal --auto` for this cluster (`None` when
/// the executable cannot be found: auto-heal then shows as unavailable).
fn heal_command(g: &Global) -> Option<Vec<std::ffi::OsString>> {
    let exe = std::env::current_exe().ok()?;
    Some(vec![
        exe.into_os_string(),
        "--state-root".into(),
        g.state_root().into_os_string(),
        "--cluster".into(),
        g.cluster().into(),
        "heal".into(),
        "--auto".into(),
    ])
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_cert_validity_is_bounded_on_both_sides() {
        assert_eq!(parse_host_cert_validity("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(parse_host_cert_validity("10m"), Ok(HOST_CERT_VALIDITY_MIN));
        assert_eq!(parse_host_cert_validity("365d"), Ok(HOST_CERT_VALIDITY_MAX));
        assert!(matches!(parse_host_cert_validity("9s"), Err(ValidityError::TooShort { .. })));
        assert!(matches!(parse_host_cert_validity("3650d"), Err(ValidityError::TooLong { .. })));
        assert!(parse_host_cert_validity("soon").is_err());
    }

    /// Issue 14: the control plane's log stays within its cap however much is logged.
    #[test]
    fn the_log_file_is_rotated_and_capped() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("coordinator.log");
        let mut rotating = rotating(&path, 64 * 1024);
        let line = format!("{}\n", "x".repeat(199));
        for _ in 0..10_000 {
            rotating.write_all(line.as_bytes()).expect("write");
        }
        let total: u64 = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").metadata().expect("meta").len())
            .sum();
        let files = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(files, LOG_FILES_KEPT + 1);
        assert!(total <= ((LOG_FILES_KEPT + 1) * (64 * 1024 + 200)) as u64, "{total} bytes for 2 MB written");
    }
}
