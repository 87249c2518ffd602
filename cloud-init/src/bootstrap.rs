//! The bootstrap script (host) and bake script: one bash template, `src/bootstrap.sh`, whose
//! marker line is replaced by a block of shell-quoted values. Everything per host or per bake
//! lives in that block; the rest of the script is the same bytes for every render.
//!
//! The script's comments count against EC2's 16 KiB user-data limit, so some reasons live
//! here. The agent download retries any error (`--retry 10 --retry-all-errors`, about 20 s):
//! a control plane restarting mid-download cuts the stream (curl exit 18) and then refuses
//! connections until it is back; giving up at once left a host that never enrolled (the chaos
//! soak, issue 20).

use crate::paths::{
    AGENT_BINARY_PATH, AGENT_UNIT_NAME, BAKE_CA_PATH, BAKE_COMPLETE_PATH, BAKE_FAILED_PATH, BOOTSTRAP_FAILED_PATH,
    CA_PATH, CLOUD_INIT_OUTPUT_PATH, DOCKER_DAEMON_JSON_PATH, ENGINE_HOLD_PATHS, ENGINE_TLS_DROP_IN_PATH,
    SEAL_UNIT_NAME, STATE_DIR,
};
use crate::{AgentBinary, BakeReport, Engine, OsFamily};

/// The template. Valid bash as is: the marker is a comment.
pub(crate) const TEMPLATE: &str = include_str!("bootstrap.sh");
const MARKER: &str = "# @flotilla-rendered-values@\n";

/// Which script to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Install the Engine and the agent, start the agent.
    Host,
    /// Install the Engine and the agent, leave the agent disabled, mark the bake complete.
    Bake,
}

/// The script for `mode`. `agent` and `report` must be validated; the digest is lower-cased
/// here. `report` (bake only): where the script reports, and whether it installs the seal unit.
pub(crate) fn render(
    mode: Mode,
    engine: Engine,
    insecure_registries: &[String],
    agent: &AgentBinary,
    report: Option<&BakeReport>,
) -> String {
    let (mode_name, ca_file, failed_file) = match mode {
        Mode::Host => ("host", CA_PATH, BOOTSTRAP_FAILED_PATH),
        Mode::Bake => ("bake", BAKE_CA_PATH, BAKE_FAILED_PATH),
    };
    let engine_name = match engine {
        Engine::Preinstalled => "preinstalled",
        Engine::InstallIfAbsent(OsFamily::AmazonLinux2023) => "amazon-linux-2023",
        Engine::InstallIfAbsent(OsFamily::Debian) => "debian",
    };
    let registries: Vec<String> = insecure_registries.iter().map(|r| sh_quote(r)).collect();
    let values = [
        ("FLOTILLA_MODE", sh_quote(mode_name)),
        ("FLOTILLA_ENGINE", sh_quote(engine_name)),
        ("FLOTILLA_INSECURE_REGISTRIES", format!("({})", registries.join(" "))),
        ("FLOTILLA_CA_FILE", sh_quote(ca_file)),
        ("FLOTILLA_AGENT_URL", sh_quote(&agent.url)),
        ("FLOTILLA_AGENT_SHA256", sh_quote(&agent.sha256.to_ascii_lowercase())),
        ("FLOTILLA_AGENT_VERSION", sh_quote(&agent.version)),
        ("AGENT_BIN", sh_quote(AGENT_BINARY_PATH)),
        ("AGENT_UNIT", sh_quote(AGENT_UNIT_NAME)),
        ("STATE_DIR", sh_quote(STATE_DIR)),
        ("FAILED_FILE", sh_quote(failed_file)),
        ("BAKE_COMPLETE", sh_quote(BAKE_COMPLETE_PATH)),
        ("DAEMON_JSON", sh_quote(DOCKER_DAEMON_JSON_PATH)),
        ("ENGINE_HOLD", sh_quote(ENGINE_HOLD_PATHS[0])),
        ("FLOTILLA_REPORT_URL", sh_quote(report.map(|r| r.url.as_str()).unwrap_or_default())),
        ("FLOTILLA_REPORT_NONCE", sh_quote(report.map(|r| r.nonce.as_str()).unwrap_or_default())),
        ("CLOUD_INIT_OUTPUT", sh_quote(CLOUD_INIT_OUTPUT_PATH)),
        ("SEAL_UNIT", sh_quote(SEAL_UNIT_NAME)),
    ];
    let mut block = String::from("# Rendered by flotilla-cloud-init.\n");
    for (name, value) in values {
        block.push_str(name);
        block.push('=');
        block.push_str(&value);
        block.push('\n');
    }
    TEMPLATE.replacen(MARKER, &block, 1)
}

/// The Python that merges insecure registries into daemon.json (exit 0 changed, 3 unchanged):
/// the template's own heredoc, so `bootcmd` and the bootstrap script run the same code.
pub(crate) fn merge_registries_py() -> &'static str {
    TEMPLATE.split_once("<<'PY'\n").and_then(|(_, rest)| rest.split_once("PY\n")).map_or("", |(py, _)| py)
}

/// The `bootcmd` entry that puts the insecure registries into the Engine's daemon.json before
/// the Engine's first start (cloud-init's init stage runs before `network-online.target`,
/// which `docker.service` is ordered after), so no restart is needed to trust them; `None`
/// when there are none. Every boot: a second run finds them listed and changes nothing. The
/// bootstrap script checks again (an Engine started before the user-data ran gets a restart).
pub(crate) fn registries_bootcmd(insecure_registries: &[String]) -> Option<Vec<String>> {
    if insecure_registries.is_empty() {
        return None;
    }
    let mut argv: Vec<String> = [
        "sh",
        "-c",
        r#"py=$1; shift; mkdir -p -- "${1%/*}" && python3 -c "$py" "$@" || [ "$?" = 3 ]"#,
        "flotilla-registries",
        merge_registries_py(),
        DOCKER_DAEMON_JSON_PATH,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(insecure_registries.iter().cloned());
    Some(argv)
}

/// The hold's shell: with no TLS drop-in yet (`$1`), each hold file (`$2`...) makes its unit's
/// start conditional on the drop-in; systemd reloads, and the boot's pending start of the
/// Engine is dropped (stopping the socket stops what requires it). A unit that is not
/// installed yet (an Engine the bootstrap script installs) is no error: the hold is read
/// when it is.
const HOLD_SH: &str = r#"tls=$1; shift; [ -e "$tls" ] && exit 0; for f in "$@"; do mkdir -p -- "${f%/*}" && printf '# flotilla: held until the agent writes %s (a manager Engine starts once, with its TLS listener)\n[Unit]\nConditionPathExists=%s\n' "$tls" "$tls" >"$f" || exit 1; done; systemctl daemon-reload && { systemctl --no-block stop docker.socket docker.service 2>/dev/null || true; }"#;

/// The `bootcmd` entry that holds a manager's Engine at boot until the agent writes its TLS
/// listener ([`crate::paths::ENGINE_HOLD_PATHS`]), so the Engine starts once, already
/// listening on 2376. Runs before `docker.service` (as [`registries_bootcmd`]); a host whose
/// TLS drop-in exists (a reboot) is not held.
pub(crate) fn engine_hold_bootcmd() -> Vec<String> {
    let mut argv: Vec<String> =
        ["sh", "-c", HOLD_SH, "flotilla-engine-hold", ENGINE_TLS_DROP_IN_PATH].iter().map(|s| s.to_string()).collect();
    argv.extend(ENGINE_HOLD_PATHS.iter().map(|s| s.to_string()));
    argv
}

/// `s` as one single-quoted shell word.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r#"'\''"#))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_has_one_marker_and_is_plain_ascii() {
        assert_eq!(TEMPLATE.matches(MARKER).count(), 1);
        assert!(TEMPLATE.bytes().all(|b| b == b'\n' || (0x20..=0x7e).contains(&b)));
        assert!(!TEMPLATE.contains("token") && !TEMPLATE.contains("agent.toml"));
    }

    #[test]
    fn the_bootcmd_runs_the_templates_merge() {
        let py = merge_registries_py();
        assert!(py.starts_with("import json") && py.contains("sys.exit(3)"), "{py}");
        assert_eq!(registries_bootcmd(&[]), None);
        let argv = registries_bootcmd(&["10.0.0.2:5000".into()]).expect("bootcmd");
        assert_eq!(argv[4], py);
        assert_eq!(argv[5..], [DOCKER_DAEMON_JSON_PATH, "10.0.0.2:5000"]);
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r#"'it'\''s'"#);
    }

    #[test]
    fn digest_is_lower_cased() {
        let agent = AgentBinary { url: "https://h/a".into(), sha256: "AB".repeat(32), version: "1".into() };
        let script = render(Mode::Host, Engine::Preinstalled, &[], &agent, None);
        assert!(script.contains(&format!("FLOTILLA_AGENT_SHA256='{}'\n", "ab".repeat(32))));
        assert!(script.contains("FLOTILLA_INSECURE_REGISTRIES=()\n"));
        assert!(!script.contains(MARKER));
    }
}
