//! `coordinator failover-test`: the failover drill ([`crate::ops::failover`]) with SIGINT and
//! SIGTERM wired to stop it cleanly, and its report as a table (timeline, measurements,
//! election lines from the members' logs, verdict) or JSON. A drill that did not pass exits
//! non-zero after printing its report.

use std::time::Duration;

use clap::Args;
use tokio::sync::mpsc;

use super::args::parse_duration;
use super::{CliError, Global, Output, json_pretty};
use crate::ops::failover::{self, Component, FailoverError, Mode};

#[derive(Args, Debug)]
pub struct FailoverArgs {
    /// engine: the agent stops the host's Docker Engine (for consul: kills the Consul
    /// container and holds it down); host: the provider stops the host; terminate: the
    /// provider removes it for good (auto-heal replaces it); handover (swarm, planned): the
    /// target is demoted so its leadership is handed over, then promoted back.
    #[arg(long, value_enum, default_value = "engine")]
    pub mode: Mode,
    /// What to drill: the Swarm managers' leader, the Consul servers' leader, or a worker
    /// (node: its tasks must run on another worker).
    #[arg(long, value_enum, default_value = "swarm")]
    pub component: Component,
    /// Take down this manager (or Consul server) instead of the leader.
    #[arg(long)]
    pub target: Option<String>,
    /// Drill even with fewer than 3 managers or Consul servers (the quorum is lost).
    #[arg(long)]
    pub force: bool,
    /// How long each phase may take (fault → recovered; restore → rejoined) before the drill
    /// fails.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub bound: Duration,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

pub async fn run(g: &Global, args: FailoverArgs) -> Result<(), CliError> {
    use std::io::IsTerminal;
    let admin = g.admin().await?;
    let report = failover::run(
        admin,
        failover::Options {
            cluster: g.cluster(),
            state_dir: g.state_dir(),
            mode: args.mode,
            component: args.component,
            target: args.target,
            force: args.force,
            bound: args.bound,
            colour: std::io::stderr().is_terminal(),
        },
        signals()?,
    )
    .await?;
    match args.output {
        Output::Json => outln!("{}", json_pretty(&report)),
        Output::Table => print_table(&report),
    }
    if report.passed { Ok(()) } else { Err(FailoverError::NotPassed(report.verdict).into()) }
}

/// SIGINT and SIGTERM, by name, for as long as the drill listens: they stop the drill, which
/// then undoes its fault before exiting.
fn signals() -> Result<mpsc::UnboundedReceiver<&'static str>, CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let (sig_tx, sig_rx) = mpsc::unbounded_channel();
    let mut int = signal(SignalKind::interrupt()).map_err(|error| CliError::Signal { signal: "SIGINT", error })?;
    let mut term = signal(SignalKind::terminate()).map_err(|error| CliError::Signal { signal: "SIGTERM", error })?;
    tokio::spawn(async move {
        loop {
            let sig = tokio::select! {
                Some(()) = int.recv() => "SIGINT",
                Some(()) = term.recv() => "SIGTERM",
                else => return,
            };
            if sig_tx.send(sig).is_err() {
                return;
            }
        }
    });
    Ok(sig_rx)
}

fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "-".into())
}

/// The drill's report: who took over, the timeline, the measurements, what the logs showed,
/// and the verdict.
fn print_table(report: &failover::Report) {
    let consul = report.component == "consul";
    outln!(
        "\nfailover drill of {} on cluster '{}' ({} mode): {} → {}",
        if consul { "Consul" } else { "the swarm" },
        report.cluster,
        report.mode,
        report.old_leader,
        if report.new_leader.is_empty() { "?" } else { &report.new_leader }
    );
    outln!("\ntimeline (from the fault):");
    for e in &report.timeline {
        outln!("  {:>+8.2} s  {}", e.t_s, e.what);
    }
    print_measurements(report, consul);
    outln!("\nelection lines from the members' logs ({} log lines streamed):", report.log_lines);
    for l in &report.election_lines {
        outln!("  {l}");
    }
    for e in &report.log_errors {
        outln!("  (could not stream {e})");
    }
    if !report.unobserved.is_empty() {
        outln!("\nnot observed:");
        for u in &report.unobserved {
            outln!("  - {u}");
        }
    }
    for c in &report.cleanup {
        outln!("clean-up: {c}");
    }
    outln!("\n{}", report.verdict);
}

/// detect, elect, api back, join data, workload, rejoin, healthy.
fn print_measurements(report: &failover::Report, consul: bool) {
    if report.component == "node" {
        outln!("\n  down      {}  (the swarm marks the worker down)", secs(report.detect_s));
        outln!(
            "  moved     {}  ({} hello tasks running on the other workers)",
            secs(report.workload_s),
            report.tasks_after
        );
        outln!("  rejoin    {} after the restore", secs(report.rejoin_s));
        outln!("  healthy   {} after the restore", secs(report.healthy_s));
        return;
    }
    outln!("\n  detect    {}  (control plane: {})", secs(report.detect_s), secs(report.control_plane_detect_s));
    let (own, logged) = if consul {
        ("Consul's own election, from the new leader's log", report.consul_elected_s)
    } else {
        ("Swarm's own election, from the new leader's journal", report.swarm_elected_s)
    };
    outln!("  elect     {}  ({own}: {}; seen {} later)", secs(report.elect_s), secs(logged), secs(report.report_lag_s));
    if report.leaderless_s.is_some() {
        outln!(
            "  no leader {}  (from the last node list naming the old leader to the first naming the new)",
            secs(report.leaderless_s)
        );
    }
    outln!("  api back  {}{}", secs(report.api_back_s), if consul { "  (a KV write accepted)" } else { "" });
    if let Some(ok) = report.join_data_ok {
        outln!("  join data {}", if ok { "readable from the surviving servers" } else { "NOT readable" });
    }
    outln!(
        "  workload  {} of {} hello tasks running{}",
        report.tasks_after,
        failover::HELLO_REPLICAS,
        if report.tasks_rescheduled { " (rescheduled)" } else { " (kept running)" }
    );
    outln!(
        "  rejoin    {} after the restore, as {}",
        secs(report.rejoin_s),
        if report.rejoined_as.is_empty() { "-" } else { &report.rejoined_as }
    );
    if let (Some(before), Some(after)) = (report.managers_before, report.managers_after) {
        outln!("  managers  {after} of {before} reachable at the end");
    }
    outln!("  healthy   {} after the restore", secs(report.healthy_s));
}
