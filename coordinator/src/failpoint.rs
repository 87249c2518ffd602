//! Named failpoints before and after every side effect of the operations (issue 20): a host
//! launched or terminated, a join token minted, roles assigned, a swarm node drained, demoted
//! or removed, a record written, a control plane started or a cluster destroyed.
//!
//! They exist only in a build with the `failpoints` feature (the tests'; a release build has
//! none: [`failpoint!`] expands to nothing), through the [`fail`] crate, configured by the
//! `FAILPOINTS` environment variable of a CLI command (`NAME=return(crash);NAME=return(error)`;
//! `coordinator serve` never reads it). At a configured point the command prints
//! `failpoint NAME: crash` (or `error`) on stderr, then:
//!
//! - `crash`: the process kills itself with SIGKILL — no destructor, no cleanup, as a power
//!   cut or an OOM kill leaves it;
//! - `error`: the function returns [`Injected`] as its error, and the command fails the way
//!   any error there would make it fail.
//!
//! `tests/tests/crash_points.rs` finds every point by reading the sources (each
//! `failpoint!("…")`), so a new point is covered by adding it.

/// The error an `error` failpoint returns.
#[derive(Debug, thiserror::Error)]
#[error("failpoint {0}: injected error (FAILPOINTS)")]
pub struct Injected(pub &'static str);

/// A failpoint named `$name`: in a `failpoints` build, configured as `return(crash)` it kills
/// the process, as `return(error)` it returns `Err(Injected.into())` from the enclosing
/// function (whose error type has a `From<Injected>`).
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {{
        #[cfg(feature = "failpoints")]
        ::fail::fail_point!($name, |arg: Option<String>| Err($crate::failpoint::hit($name, arg.as_deref()).into()));
    }};
}

/// What a configured point does (its `return(ARG)`): crash, or the error to return.
#[cfg(feature = "failpoints")]
pub fn hit(name: &'static str, arg: Option<&str>) -> Injected {
    if arg == Some("crash") {
        eprintln!("failpoint {name}: crash");
        // As SIGKILL leaves it: nothing runs after this.
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
    eprintln!("failpoint {name}: error");
    Injected(name)
}

/// Reads `FAILPOINTS` for the life of a CLI command (`serve` excluded by the caller).
#[cfg(feature = "failpoints")]
pub fn setup() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}

/// Configures point `name` in this process (`actions` as in `FAILPOINTS`, e.g.
/// `1*return(error)`): for tests that drive the library in-process rather than the CLI.
#[cfg(feature = "failpoints")]
pub fn configure(name: &str, actions: &str) -> Result<(), String> {
    fail::cfg(name, actions)
}
