//! `coordinator heal`: replace the cluster's lost hosts ([`crate::ops::heal`]) and print what
//! was found and done, as lines or JSON. A refusal (quorum lost, another operation under way)
//! exits 75 after printing; auto-heal (`--auto`, run by the control plane) reads the code.

use clap::Args;

use super::{CliError, Global, Output, json_pretty};
use crate::ops::heal::{self, HealOptions, HealReport};

#[derive(Args, Debug)]
pub struct HealArgs {
    /// Say what would be replaced, and why, without touching anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Run as the control plane's auto-heal (progress marked automatic in status and audit).
    #[arg(long, hide = true)]
    pub auto: bool,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

pub async fn run(g: &Global, args: HealArgs) -> Result<(), CliError> {
    if args.auto {
        tokio::spawn(end_with_the_control_plane());
    }
    let report = heal::heal(HealOptions {
        cluster: g.cluster(),
        state_root: g.state_root(),
        dry_run: args.dry_run,
        automatic: args.auto,
        quiet: args.output == Output::Json,
        recovering: false,
    })
    .await?;
    match args.output {
        Output::Json => outln!("{}", json_pretty(&report)),
        Output::Table => print_summary(&report),
    }
    Ok(())
}

/// How often auto-heal looks whether the control plane that started it is still its parent.
const PARENT_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// Auto-heal is its control plane's child, and ends with it: a heal whose control plane died
/// (killed, its machine rebooted) would go on holding the cluster's ops lock against the
/// `deploy` that starts the control plane again, while it cannot enroll a host without one.
/// It stops as a crash at any of its steps would stop it — every step is resumed from there
/// (the crash-point test) — and the next control plane's auto-heal takes the heal up again if
/// it is still due.
async fn end_with_the_control_plane() {
    // The control plane names itself (it may be gone before this line runs); else the parent
    // now.
    let named = std::env::var(crate::control_plane::healer::PARENT_PID_ENV).ok().and_then(|p| p.parse::<i32>().ok());
    let parent = named.and_then(rustix::process::Pid::from_raw).or_else(rustix::process::getppid);
    let mut tick = tokio::time::interval(PARENT_CHECK);
    loop {
        tick.tick().await;
        if rustix::process::getppid() != parent {
            eprintln!(
                "heal --auto: the control plane that started this heal is gone; stopping here (the next control plane's auto-heal resumes it)"
            );
            std::process::exit(75);
        }
    }
}

fn print_summary(r: &HealReport) {
    if r.plan.is_empty() {
        outln!("cluster '{}': nothing to heal", r.cluster);
        for h in r.assessment.hosts.iter().filter(|h| h.verdict != heal::Verdict::Healthy) {
            outln!("  {:<10} {}", h.name, h.line());
        }
        return;
    }
    if r.dry_run {
        outln!("cluster '{}': heal would replace, in this order:", r.cluster);
        for line in &r.plan {
            outln!("  {line}");
        }
        return;
    }
    for x in &r.replaced {
        outln!(
            "{:<10} replaced by {}: removed at {:.1} s, launched at {:.1} s, enrolled at {:.1} s, counted at {:.1} s",
            x.host,
            x.instance_id,
            x.removed_s,
            x.launched_s,
            x.enrolled_s,
            x.full_strength_s
        );
    }
    if let Some(v) = &r.verified {
        outln!("{v}");
    }
}
