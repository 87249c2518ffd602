//! `coordinator recover`: bring back a cluster that lost its quorum ([`crate::ops::recover`]).
//! The plan is shown first; the CLI then asks for the cluster's name on a terminal (or needs
//! `--yes`). A refusal (a quorum remains, a manager is cut off but running, another operation
//! under way) exits 75 and changes nothing.

use clap::Args;

use super::{CliError, Global, Output, json_pretty};
use crate::ops::recover::{self, RecoverOptions, RecoverReport, Route};

#[derive(Args, Debug)]
pub struct RecoverArgs {
    /// Say which way back and exactly what it would do, without touching anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

pub async fn run(g: &Global, args: RecoverArgs) -> Result<(), CliError> {
    let opts = |dry_run| RecoverOptions {
        cluster: g.cluster(),
        state_root: g.state_root(),
        dry_run,
        quiet: args.output == Output::Json,
    };
    if !args.dry_run && !args.yes {
        let plan = recover::recover(opts(true)).await?;
        print(&plan, Output::Table);
        confirm(&g.cluster())?;
    }
    let report = recover::recover(opts(args.dry_run)).await?;
    print(&report, args.output);
    Ok(())
}

fn print(r: &RecoverReport, output: Output) {
    if output == Output::Json {
        outln!("{}", json_pretty(r));
        return;
    }
    let how = match &r.route {
        Route::Survivor { host, .. } => format!("from the surviving manager {host}"),
        Route::Restore { .. } => "from the backups, onto new hosts".to_string(),
        Route::Resume { .. } => "by finishing the recovery begun earlier".to_string(),
    };
    if r.dry_run {
        outln!("cluster '{}': recover would bring it back {how}, in this order:", r.cluster);
        for (i, line) in r.plan.iter().enumerate() {
            outln!("  {}. {line}", i + 1);
        }
        return;
    }
    for s in &r.steps {
        outln!("{:>7.1} s  {}", s.at_s, s.what);
    }
    if let Some(l) = r.leader_s {
        outln!("the swarm had a leader again at {l:.1} s");
    }
    if let (Some(v), Some(t)) = (&r.verified, r.full_strength_s) {
        outln!("{v} (at {t:.1} s)");
    }
}

/// Asks for the cluster's name on a terminal; without one, `--yes` is needed.
fn confirm(cluster: &str) -> Result<(), CliError> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(CliError::NeedsConfirmation { doing: "recovering", cluster: cluster.to_string() });
    }
    eprint!("recover cluster '{cluster}' as above? type the cluster name: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(CliError::Confirmation)?;
    if line.trim() != cluster {
        return Err(CliError::NotConfirmed);
    }
    Ok(())
}
