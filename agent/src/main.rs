//! `flotilla-agent --config /etc/flotilla/agent.toml`

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "flotilla-agent", version, about = "The Flotilla host agent.")]
struct Args {
    #[arg(long, default_value = "/etc/flotilla/agent.toml")]
    config: PathBuf,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = match flotilla_agent::config::AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(64);
        }
    };
    let shutdown = async {
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
    };
    if let Err(e) = flotilla_agent::run(config, shutdown).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
