//! The Engine's TLS listener on managers: `tcp://<private ip>:2376` with `--tlsverify`, a
//! server certificate from the cluster CA for the host's own key ([`crate::engine_key`]; the
//! spec carries a key only when the coordinator made one for an agent that sent no CSR),
//! and client certificates required and checked against the CA the spec names (the
//! cluster's Engine client CA, which signs no host identity) — never a plain TCP port.
//! Written as a systemd drop-in that extends the distribution's own `ExecStart`, so it works
//! with Debian's and Amazon Linux's units alike; the Engine is restarted only when the
//! drop-in, the CA, the certificate or the key change.
//!
//! A planned manager's Engine does not start at boot: the user-data holds it
//! ([`flotilla_cloud_init::paths::ENGINE_HOLD_PATHS`]) until this module has written the
//! listener, then lifts the hold and starts it — once, already configured. An assignment that
//! asks for no listener (the host is no manager after all) lifts the hold and starts the
//! Engine as it is ([`lift_hold_and_start`]), and so does a restore before any role.

use std::path::Path;

use flotilla_cloud_init::paths::ENGINE_HOLD_PATHS;
use flotilla_proto::v1::ManagerSpec;

use crate::roles::RoleCtx;

#[derive(Debug, thiserror::Error)]
pub enum EngineTlsError {
    /// Writing a certificate, a key or the drop-in (`what`: the file or directory).
    #[error("{what}: {source}")]
    Write { what: String, source: std::io::Error },
    #[error("systemctl {command}: {source}")]
    Systemctl { command: String, source: std::io::Error },
    /// systemctl ran and failed: its stderr.
    #[error("systemctl {command}: {stderr}")]
    SystemctlFailed { command: String, stderr: String },
    #[error("docker.service has no ExecStart (is the Engine managed by systemd?)")]
    NoExecStart,
    /// The certificate does not parse, or is not for the key the Engine would get.
    #[error(
        "the Engine's certificate in the assignment does not fit its key ({0}); if engine-key.pem in the agent's state directory was replaced, re-run deploy to have the new key's CSR signed"
    )]
    KeyMismatch(String),
}

pub const TLS_DIR: &str = "/etc/docker/flotilla-tls";
pub const DROP_IN: &str = flotilla_cloud_init::paths::ENGINE_TLS_DROP_IN_PATH;
pub const PORT: u16 = 2376;

/// One file of the TLS directory: its name, its contents, whether it is private (0600).
pub type TlsFile<'a> = (&'static str, &'a str, bool);

/// The TLS directory's files for `spec`: the CA, the certificate, and the key — the spec's
/// when the coordinator sent one, else the host's own `own_key_pem`. Refuses a certificate
/// that is not for that key, so a mismatch never reaches the Engine (it would not start).
pub fn tls_files<'a>(spec: &'a ManagerSpec, own_key_pem: &'a str) -> Result<[TlsFile<'a>; 3], EngineTlsError> {
    let key = if spec.engine_tls_key_pem.is_empty() { own_key_pem } else { spec.engine_tls_key_pem.as_str() };
    flotilla_proto::tls::Identity::from_pem("Engine certificate", &spec.engine_tls_cert_pem, key)
        .and_then(|id| id.check_keys_match())
        .map_err(|e| EngineTlsError::KeyMismatch(e.to_string()))?;
    Ok([
        ("ca.pem", &spec.engine_tls_ca_pem, false),
        ("cert.pem", &spec.engine_tls_cert_pem, false),
        ("key.pem", key, true),
    ])
}

/// Writes each of `files` into `dir` (created if missing) where its contents differ.
/// Returns whether any file changed.
pub fn write_changed(dir: &Path, files: &[TlsFile<'_>]) -> Result<bool, EngineTlsError> {
    let io = |what: &Path, source: std::io::Error| EngineTlsError::Write { what: what.display().to_string(), source };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut changed = false;
    for &(name, body, private) in files {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(body) {
            let w = if private {
                flotilla_proto::fs::write_private(&path, body.as_bytes())
            } else {
                flotilla_proto::fs::write_public(&path, body.as_bytes())
            };
            w.map_err(|e| io(&path, e))?;
            changed = true;
        }
    }
    Ok(changed)
}

/// What [`ensure`] did to the Engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Nothing: the listener was in place and the Engine running.
    Unchanged,
    /// The Engine's first start (it was held at boot), with the listener.
    Started,
    /// The Engine ran without this configuration and was restarted with it.
    Restarted,
}

/// Converges the Engine's TLS configuration; `own_key_pem` is the host's Engine key
/// ([`crate::engine_key`]). A held Engine is started, a running one restarted only when the
/// configuration changed.
pub async fn ensure(ctx: &RoleCtx<'_>, spec: &ManagerSpec, own_key_pem: &str) -> Result<Applied, EngineTlsError> {
    let io = |what: &str, source: std::io::Error| EngineTlsError::Write { what: what.to_string(), source };
    let mut changed = write_changed(Path::new(TLS_DIR), &tls_files(spec, own_key_pem)?)?;
    let base = base_exec_start().await?;
    let flags = format!(
        "-H tcp://{addr}:{PORT} --tlsverify --tlscacert={TLS_DIR}/ca.pem --tlscert={TLS_DIR}/cert.pem --tlskey={TLS_DIR}/key.pem",
        addr = ctx.host_address
    );
    let drop_in = format!(
        "# Written by flotilla-agent: the Engine's API on {PORT} with mutual TLS (clients: the Engine client CA only).\n[Service]\nExecStart=\nExecStart={base} {flags}\n"
    );
    if std::fs::read_to_string(DROP_IN).ok().as_deref() != Some(drop_in.as_str()) {
        let p = Path::new(DROP_IN);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("docker.service.d", e))?;
        }
        flotilla_proto::fs::write_public(p, drop_in.as_bytes()).map_err(|e| io(DROP_IN, e))?;
        changed = true;
    }
    let held = remove_hold(&ENGINE_HOLD_PATHS.map(Path::new))?;
    if !changed && !held {
        return Ok(Applied::Unchanged);
    }
    systemctl(&["daemon-reload"]).await?;
    let applied = if !is_active().await {
        tracing::info!("starting the Docker Engine with its TLS listener on {PORT}");
        systemctl(&["start", "docker.service"]).await?;
        Applied::Started
    } else if changed {
        tracing::info!("restarting the Docker Engine with its TLS listener on {PORT}");
        systemctl(&["restart", "docker.service"]).await?;
        Applied::Restarted
    } else {
        return Ok(Applied::Unchanged);
    };
    wait_answers(ctx.docker).await;
    Ok(applied)
}

/// Waits (bounded, 30 s) for the Engine to answer, then negotiates its API version (an Engine
/// held at boot had none to negotiate when the agent connected).
async fn wait_answers(docker: &bollard::Docker) {
    for _ in 0..300 {
        if docker.ping().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    crate::engine::negotiate(docker).await;
}

/// Removes the boot hold's files among `paths`; whether any was there. Systemd reads the
/// change at the caller's `daemon-reload`.
pub fn remove_hold(paths: &[&Path]) -> Result<bool, EngineTlsError> {
    let mut held = false;
    for p in paths {
        match std::fs::remove_file(p) {
            Ok(()) => held = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(EngineTlsError::Write { what: p.display().to_string(), source }),
        }
    }
    Ok(held)
}

/// Lifts the boot hold, if there is one, and starts the Engine as it is configured (no TLS
/// listener); whether it was held. For an assignment that asks for no listener, and before a
/// restore on a host that has no role yet.
pub async fn lift_hold_and_start(docker: &bollard::Docker) -> Result<bool, EngineTlsError> {
    if !lift_hold().await? {
        return Ok(false);
    }
    tracing::info!("starting the Docker Engine held at boot (no TLS listener asked for)");
    systemctl(&["start", "docker.service"]).await?;
    wait_answers(docker).await;
    Ok(true)
}

/// Lifts the boot hold, if there is one (its files removed, systemd reloaded); whether it
/// was held. Starting the Engine is the caller's.
pub async fn lift_hold() -> Result<bool, EngineTlsError> {
    if !remove_hold(&ENGINE_HOLD_PATHS.map(Path::new))? {
        return Ok(false);
    }
    systemctl(&["daemon-reload"]).await?;
    Ok(true)
}

/// Whether docker.service is active (a failing `systemctl` counts as not).
async fn is_active() -> bool {
    tokio::process::Command::new("systemctl")
        .args(["is-active", "--quiet", "docker.service"])
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// The distribution's `ExecStart` for docker.service, without our drop-in's additions.
async fn base_exec_start() -> Result<String, EngineTlsError> {
    // Read the vendor unit's line, not the merged one (which would include our drop-in).
    let out = tokio::process::Command::new("systemctl")
        .args(["cat", "docker.service"])
        .output()
        .await
        .map_err(|source| EngineTlsError::Systemctl { command: "cat docker.service".into(), source })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut base = None;
    let mut in_ours = false;
    for line in text.lines() {
        if line.starts_with("# /") {
            in_ours = line.contains("flotilla-tls.conf");
        }
        if !in_ours
            && let Some(v) = line.strip_prefix("ExecStart=")
            && !v.trim().is_empty()
        {
            base = Some(v.trim().to_string());
        }
    }
    base.ok_or(EngineTlsError::NoExecStart)
}

async fn systemctl(args: &[&str]) -> Result<(), EngineTlsError> {
    let command = args.join(" ");
    let out = match tokio::process::Command::new("systemctl").args(args).output().await {
        Ok(out) => out,
        Err(source) => return Err(EngineTlsError::Systemctl { command, source }),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(EngineTlsError::SystemctlFailed { command, stderr });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn key() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key")
    }

    fn cert_for(key: &KeyPair) -> String {
        CertificateParams::new(vec!["manager0".to_string()]).expect("params").self_signed(key).expect("cert").pem()
    }

    fn spec(cert: &str, key: &str) -> ManagerSpec {
        ManagerSpec {
            engine_tls_cert_pem: cert.into(),
            engine_tls_key_pem: key.into(),
            engine_tls_ca_pem: "the Engine client CA".into(),
            ..Default::default()
        }
    }

    /// The host's own key goes to the TLS directory when the spec has none; a second pass
    /// changes nothing (no Engine restart); a new certificate is a change.
    #[test]
    fn the_hosts_own_key_is_written_and_only_changes_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = dir.path().join("flotilla-tls");
        let own = key();
        let own_pem = own.serialize_pem();
        let s = spec(&cert_for(&own), "");
        assert!(write_changed(&tls, &tls_files(&s, &own_pem).expect("files")).expect("write"));
        assert_eq!(std::fs::read_to_string(tls.join("key.pem")).expect("key"), own_pem);
        assert_eq!(flotilla_proto::fs::mode_of(&tls.join("key.pem")).expect("mode"), 0o600);
        assert!(!write_changed(&tls, &tls_files(&s, &own_pem).expect("files")).expect("again"), "nothing changed");
        let renewed = spec(&cert_for(&own), "");
        assert!(write_changed(&tls, &tls_files(&renewed, &own_pem).expect("files")).expect("renewed"));
        assert_eq!(std::fs::read_to_string(tls.join("key.pem")).expect("key"), own_pem, "the key stays");
    }

    /// The hold's files go, and only a hold that was there counts; a second lift finds none.
    #[test]
    fn removing_the_hold_says_whether_there_was_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("service.conf"), dir.path().join("socket.conf"));
        assert!(!remove_hold(&[&a, &b]).expect("none"), "no hold");
        std::fs::write(&b, "[Unit]\n").expect("hold");
        assert!(remove_hold(&[&a, &b]).expect("lift"), "held");
        assert!(!b.exists());
        assert!(!remove_hold(&[&a, &b]).expect("again"), "lifted once");
    }

    /// A key the coordinator made (an assignment from before the agent sent a CSR) is used
    /// as given; a certificate for another key is refused before anything is written.
    #[test]
    fn a_spec_key_wins_and_a_certificate_for_another_key_is_refused() {
        let (own, theirs) = (key(), key());
        let (own_pem, their_pem) = (own.serialize_pem(), theirs.serialize_pem());
        let s = spec(&cert_for(&theirs), &their_pem);
        let files = tls_files(&s, &own_pem).expect("files");
        assert_eq!(files[2].1, their_pem);
        let stale = spec(&cert_for(&theirs), "");
        let err = tls_files(&stale, &own_pem).expect_err("another key's certificate");
        assert!(matches!(err, EngineTlsError::KeyMismatch(_)), "{err}");
        assert!(err.to_string().contains("re-run deploy"), "{err}");
    }
}
