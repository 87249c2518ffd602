//! Crash chains (issue 20): a command run again and again, each run interrupted at the next
//! failpoint it reaches (`coordinator/src/failpoint.rs`), until a run completes.
//!
//! Run k arms every failpoint this chain has not yet interrupted — `NAME=1*return(crash)`
//! (the process SIGKILLs itself there) or `return(error)` (the function returns an error) —
//! so it stops at the first such point on its path, and run k+1 goes past it to the next. The
//! chain thus interrupts the command once at each point it passes through, in the order it
//! passes them, each time followed by a run of the same command; the last run meets no armed
//! point and must complete. The list of points is read from the sources, not kept by hand.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus};

/// How a failpoint interrupts the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// SIGKILL: nothing runs after it.
    Crash,
    /// The function returns an injected error.
    Error,
}

impl Outcome {
    fn arg(self) -> &'static str {
        match self {
            Outcome::Crash => "crash",
            Outcome::Error => "error",
        }
    }
}

/// The points only the AWS provider passes: covered against moto — `aws.bake.…` by
/// `bake_aws.rs`, the others by `aws_e2e.rs` (crashes) and `aws.rs` (errors) —, not on the lab.
pub const AWS: &str = "aws.";
/// The AWS bake's points (a subset of [`AWS`]).
pub const AWS_BAKE: &str = "aws.bake.";

/// Every failpoint named in the coordinator's sources (`failpoint!("NAME")`), read from the
/// files under `coordinator/src`.
pub fn points_in_code() -> BTreeSet<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../coordinator/src");
    let mut out = BTreeSet::new();
    let mut dirs = vec![src];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read coordinator/src").flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("read a source file");
                for part in text.split("failpoint!(\"").skip(1) {
                    let name = part.split('"').next().unwrap_or_default();
                    if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == '.') {
                        out.insert(name.to_string());
                    }
                }
            }
        }
    }
    out
}

/// The failpoints a run's stderr says it reached (`failpoint NAME: crash|error`).
fn reached(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("failpoint "))
        .filter_map(|l| l.split(':').next())
        .map(str::to_string)
        .collect()
}

/// One chain's outcome: the points interrupted, in order, and the last (complete) run's stdout.
pub struct Chain {
    pub interrupted: Vec<String>,
    pub stdout: Vec<u8>,
}

/// A chain in progress, for callers that run the command themselves (the AWS end-to-end test
/// boots instances while it runs): [`Running::failpoints`] before each run, [`Running::after`]
/// with how it ended.
pub struct Running<'a> {
    what: &'a str,
    points: &'a BTreeSet<String>,
    outcome: Outcome,
    interrupted: Vec<String>,
    runs: usize,
}

impl<'a> Running<'a> {
    pub fn new(what: &'a str, points: &'a BTreeSet<String>, outcome: Outcome) -> Self {
        Running { what, points, outcome, interrupted: Vec::new(), runs: 0 }
    }

    /// `FAILPOINTS` for the next run: every point not yet interrupted, armed once.
    pub fn failpoints(&self) -> String {
        let armed: Vec<String> = self
            .points
            .iter()
            .filter(|p| !self.interrupted.contains(p))
            .map(|p| format!("{p}=1*return({})", self.outcome.arg()))
            .collect();
        armed.join(";")
    }

    /// Takes a run's end: `Some` (the points interrupted, in order) when it completed; `None`
    /// when it stopped at a failpoint, to be run again. Panics when it failed without one, or
    /// the chain does not end.
    pub fn after(&mut self, status: ExitStatus, stderr: &str) -> Option<Vec<String>> {
        let what = self.what;
        self.runs += 1;
        assert!(
            self.runs <= self.points.len() + 1,
            "{what}: still interrupted after {} runs: {:?}",
            self.runs,
            self.interrupted
        );
        let hit = reached(stderr);
        if status.success() {
            // An error a step shrugs off (best effort) is reached, and the run goes on.
            self.interrupted.extend(hit);
            eprintln!("{what}: completed after {} interruption(s) ({:?})", self.interrupted.len(), self.outcome);
            return Some(std::mem::take(&mut self.interrupted));
        }
        let tail: String =
            stderr.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        match self.outcome {
            Outcome::Crash => {
                assert_eq!(status.signal(), Some(9), "{what}: a run failed without reaching a failpoint:\n{tail}");
                let p =
                    hit.last().cloned().unwrap_or_else(|| panic!("{what}: killed, but no failpoint said so:\n{tail}"));
                eprintln!("{what}: crashed at {p}");
                self.interrupted.push(p);
            }
            Outcome::Error => {
                assert!(!hit.is_empty(), "{what}: a run failed without reaching a failpoint:\n{tail}");
                let last = tail.lines().rev().find(|l| l.starts_with("error:")).unwrap_or_default().to_string();
                eprintln!("{what}: failed at {} ({last})", hit.join(", "));
                self.interrupted.extend(hit);
            }
        }
        None
    }
}

/// Runs `make()` (a fresh command each time) interrupted at each point of `points` it reaches,
/// with `outcome`, until a run completes (see the module's doc). Panics when a run fails
/// without a failpoint, or the chain does not end.
pub fn chain(what: &str, points: &BTreeSet<String>, outcome: Outcome, make: impl Fn() -> Command) -> Chain {
    let mut running = Running::new(what, points, outcome);
    loop {
        let out = make().env("FAILPOINTS", running.failpoints()).output().expect("run the command");
        if let Some(interrupted) = running.after(out.status, &String::from_utf8_lossy(&out.stderr)) {
            return Chain { interrupted, stdout: out.stdout };
        }
    }
}
