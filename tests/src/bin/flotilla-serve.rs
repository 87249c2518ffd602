//! A control plane in its own process for tests: `serve::run` (what `coordinator serve`
//! runs) with the given cluster, state directory, listen address, heartbeat interval and
//! enrollment rate limit (`--enroll-burst N --enroll-rate R`, per source and in total: the
//! audit-flood test lifts it to reach the audit with every attempt), its
//! logs on stderr (`FLOTILLA_LOG`, default `info`), until SIGINT/SIGTERM or the admin API's
//! `Shutdown`. Built with the tests from the same sources, so a test never runs a
//! `coordinator` binary some other build left in the target directory.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use flotilla_coordinator::control_plane::{serve, settings::ServeConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Its stderr is a file the tests read: no colour codes in it.
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let (mut cluster, mut state_dir, mut listen, mut heartbeat) =
        (String::from("test"), PathBuf::new(), String::from("127.0.0.1:0"), Duration::from_secs(5));
    let (mut enroll_burst, mut enroll_rate) = (None::<u32>, None::<f64>);
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--cluster" => cluster = v,
            "--state-dir" => state_dir = v.into(),
            "--listen" => listen = v,
            "--heartbeat-s" => heartbeat = Duration::from_secs(v.parse()?),
            "--enroll-burst" => enroll_burst = Some(v.parse()?),
            "--enroll-rate" => enroll_rate = Some(v.parse()?),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    anyhow::ensure!(!state_dir.as_os_str().is_empty(), "--state-dir is required");
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("--listen {listen}"))?;
    let mut config = ServeConfig::new(&cluster, state_dir);
    config.heartbeat_interval = heartbeat;
    for limit in [&mut config.limits.enroll_per_source, &mut config.limits.enroll_total] {
        limit.burst = enroll_burst.unwrap_or(limit.burst);
        limit.per_second = enroll_rate.unwrap_or(limit.per_second);
    }
    serve::run(config, listener, stop_signal()).await?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
