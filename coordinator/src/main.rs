//! `coordinator`: parse arguments, run one command, print the error chain and exit with a
//! distinct code (64 for bad usage or configuration).
//!
//! Invoked under the name `flotilla-agent` (as it is on hosts that downloaded it from a
//! control plane built without a separate agent binary), it is the agent.

use clap::Parser;
use flotilla_coordinator::cli::{self, Cli};

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name().is_some_and(|n| n == "flotilla-agent") {
        flotilla_agent::cli::main();
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { cli::EXIT_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    // The control plane logs what it does; a CLI command shows its own output and only
    // warnings (FLOTILLA_LOG overrides both).
    // The AWS SDK warns on every credential provider it tries; its final error says it all.
    let default = if matches!(cli.command, cli::Command::Serve(_)) { "info" } else { "warn,aws_config=error" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // `serve --log-file`: a size-capped file, written from its own thread; held until exit.
    let log_file = match &cli.command {
        cli::Command::Serve(args) => args.log_file.as_deref(),
        _ => None,
    };
    let log_guard = match log_file.map(|p| (p, cli::serve::LogFile::open(p))) {
        Some((_, Ok(file))) => {
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(file.writer).init();
            Some(file.guard)
        }
        Some((path, Err(e))) => {
            eprintln!("error: --log-file {}: {e}", path.display());
            std::process::exit(cli::EXIT_USAGE);
        }
        None => {
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            None
        }
    };
    // Failpoints (a `failpoints` build only): FAILPOINTS configures a CLI command, never the
    // control plane, which `deploy` starts without it.
    #[cfg(feature = "failpoints")]
    let _failpoints = (!matches!(cli.command, cli::Command::Serve(_))).then(flotilla_coordinator::failpoint::setup);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(cli::run(cli)) {
        let mut msg = format!("error: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(&format!("\n  caused by: {s}"));
            source = s.source();
        }
        if log_guard.is_some() {
            tracing::error!("{msg}");
        }
        eprintln!("{msg}");
        drop(log_guard);
        std::process::exit(e.exit_code());
    }
}
