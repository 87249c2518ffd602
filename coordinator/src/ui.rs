//! What the CLI prints while it works: progress lines for long operations, and the
//! `host/source` prefix of streamed log lines.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Where progress goes. On a terminal: a live line per host (indicatif) with its latest
/// state, and events above them; otherwise (CI, pipes, `--output json`'s stderr) one plain
/// line per event, prefixed with the elapsed time and the host.
pub struct Progress {
    start: Instant,
    quiet: bool,
    live: Option<(indicatif::MultiProgress, std::sync::Mutex<HashMap<String, indicatif::ProgressBar>>)>,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        let live = (!quiet && std::io::stderr().is_terminal()).then(|| {
            (
                indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr()),
                std::sync::Mutex::new(HashMap::new()),
            )
        });
        Self { start: Instant::now(), quiet, live }
    }

    /// A step of the operation (`plan`, `hosts`, `verify`, …): always its own line.
    pub fn step(&self, step: &str, msg: impl AsRef<str>) {
        if self.quiet {
            return;
        }
        let line = self.line(step, msg.as_ref());
        match &self.live {
            Some((mp, _)) => {
                let _ = mp.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// A host's latest state: on a terminal, that host's live line is updated in place.
    pub fn host(&self, host: &str, msg: impl AsRef<str>) {
        if self.quiet {
            return;
        }
        let Some((mp, bars)) = &self.live else {
            eprintln!("{}", self.line(host, msg.as_ref()));
            return;
        };
        let mut bars = bars.lock().unwrap_or_else(|p| p.into_inner());
        let bar = bars.entry(host.to_string()).or_insert_with(|| {
            let b = mp.add(indicatif::ProgressBar::new_spinner());
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {prefix:<10} [{elapsed:>4}] {wide_msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            b.set_prefix(host.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        bar.set_message(msg.as_ref().to_string());
    }

    fn line(&self, name: &str, msg: &str) -> String {
        format!("[{:>5.1}s] {:<10} {}", self.start.elapsed().as_secs_f64(), name, msg)
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Stops the live lines (they stay on screen with their last state).
    /// Whether progress lines are off (`--output json`).
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    pub fn finish(&self) {
        if let Some((_, bars)) = &self.live {
            for b in bars.lock().unwrap_or_else(|p| p.into_inner()).values() {
                b.finish();
            }
        }
    }
}

/// `host/source`, coloured by host (the same host always gets the same colour) when
/// `colour` is set.
pub fn log_prefix(host: &str, source: &str, colour: bool) -> String {
    if !colour {
        return format!("{host}/{source}");
    }
    const COLOURS: [u8; 6] = [36, 33, 32, 35, 34, 31];
    // FNV-1a: stable across runs and builds.
    let hash = host.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let code = COLOURS[(hash % COLOURS.len() as u64) as usize];
    format!("\x1b[{code}m{host}/{source}\x1b[0m")
}

#[cfg(test)]
mod tests {
    use super::log_prefix;

    #[test]
    fn log_prefixes_are_plain_off_a_terminal_and_coloured_per_host_on_one() {
        assert_eq!(log_prefix("node0", "flotilla-consul", false), "node0/flotilla-consul");
        let a = log_prefix("node0", "engine", true);
        assert!(a.starts_with("\x1b[") && a.ends_with("node0/engine\x1b[0m"), "{a:?}");
        assert_eq!(a, log_prefix("node0", "engine", true));
        assert_eq!(
            a.split('m').next(),
            log_prefix("node0", "flotilla-consul", true).split('m').next(),
            "one colour per host"
        );
    }
}

/// The exit code when stdout is a closed pipe (`coordinator status | head -1`): 128 + SIGPIPE,
/// what a shell reports for other CLIs in that place.
pub const EXIT_BROKEN_PIPE: i32 = 141;

/// Writes to stdout, as `print!` does, except that a closed pipe ends the process quietly
/// ([`EXIT_BROKEN_PIPE`]) instead of panicking; any other write error is named on stderr
/// (exit 1). The CLI prints through `outln!`/`out!`, which call this.
pub fn out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(EXIT_BROKEN_PIPE),
        Err(e) => {
            eprintln!("error: writing to stdout: {e}");
            std::process::exit(1);
        }
    }
}

/// How to run this program in a hint: `coordinator` when that name on `PATH` is this very
/// executable (after `cargo install --path coordinator`), else this executable's path (e.g.
/// `target/release/coordinator` after `cargo run`), so the hint works when pasted.
pub fn self_command() -> String {
    command_for(std::env::current_exe().ok().as_deref(), std::env::var_os("PATH").as_deref())
}

fn command_for(exe: Option<&std::path::Path>, path: Option<&std::ffi::OsStr>) -> String {
    let Some(exe) = exe else {
        return "coordinator".into();
    };
    let real = |p: &std::path::Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let first_on_path =
        path.into_iter().flat_map(std::env::split_paths).map(|d| d.join("coordinator")).find(|c| c.is_file());
    match first_on_path {
        Some(c) if real(&c) == real(exe) => "coordinator".into(),
        _ => shell_word(&exe.display().to_string()),
    }
}

/// `s` as one shell word: as it is when plain, else single-quoted.
fn shell_word(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod self_command_tests {
    use super::command_for;

    #[test]
    fn the_hint_names_coordinator_only_when_path_finds_this_executable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        let build = dir.path().join("my build/release");
        std::fs::create_dir_all(&bin).expect("bin");
        std::fs::create_dir_all(&build).expect("build");
        let installed = bin.join("coordinator");
        std::fs::write(&installed, b"x").expect("write");
        let built = build.join("coordinator");
        std::fs::write(&built, b"y").expect("write");
        let path = std::env::join_paths([&bin]).expect("PATH");
        assert_eq!(command_for(Some(&installed), Some(&path)), "coordinator");
        // Another `coordinator` on PATH is not this one: the path, quoted for the shell.
        let quoted = format!("'{}'", built.display());
        assert_eq!(command_for(Some(&built), Some(&path)), quoted);
        assert_eq!(command_for(Some(&built), None), quoted);
    }
}
