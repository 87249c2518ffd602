//! The Engine's TLS listener on managers: `tcp://<private ip>:2376` with `--tlsverify`, a
//! server certificate from the cluster CA, and client certificates required and checked
//! against the CA the spec names (the cluster's Engine client CA, which signs no host
//! identity) — never a plain TCP port. Written as a systemd drop-in that extends the distribution's own `ExecStart`,
//! so it works with Debian's and Amazon Linux's units alike; the Engine is restarted only
//! when the drop-in or the certificates change.

use std::path::Path;

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
}

pub const TLS_DIR: &str = "/etc/docker/flotilla-tls";
pub const DROP_IN: &str = "/etc/systemd/system/docker.service.d/flotilla-tls.conf";
pub const PORT: u16 = 2376;

/// Converges the Engine's TLS configuration. Returns true when it restarted the Engine.
pub async fn ensure(ctx: &RoleCtx<'_>, spec: &ManagerSpec) -> Result<bool, EngineTlsError> {
    let io = |what: &str, source: std::io::Error| EngineTlsError::Write { what: what.to_string(), source };
    let dir = Path::new(TLS_DIR);
    std::fs::create_dir_all(dir).map_err(|e| io(TLS_DIR, e))?;
    let mut changed = false;
    for (name, body, private) in [
        ("ca.pem", &spec.engine_tls_ca_pem, false),
        ("cert.pem", &spec.engine_tls_cert_pem, false),
        ("key.pem", &spec.engine_tls_key_pem, true),
    ] {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(body.as_str()) {
            let w = if private {
                flotilla_proto::fs::write_private(&path, body.as_bytes())
            } else {
                flotilla_proto::fs::write_public(&path, body.as_bytes())
            };
            w.map_err(|e| io(&path.display().to_string(), e))?;
            changed = true;
        }
    }
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
    if !changed {
        return Ok(false);
    }
    tracing::info!("restarting the Docker Engine with its TLS listener on {PORT}");
    systemctl(&["daemon-reload"]).await?;
    systemctl(&["restart", "docker.service"]).await?;
    // Wait (bounded) for the Engine to answer again.
    for _ in 0..120 {
        if ctx.docker.ping().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    Ok(true)
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
