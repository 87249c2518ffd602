//! The Consul server's secrets as files, never in its argv or environment (which `ps` and
//! `docker inspect` show): the gossip key, the ACL tokens and the RPC TLS settings in
//! `flotilla.json`, the certificates under `tls/`, all 0600 in a 0700 directory on the host
//! ([`HOST_DIR`]) that the container mounts read-only at [`CONTAINER_DIR`] and loads with
//! `-config-dir`.
//!
//! The settings are Consul 1.8's names; later versions (the AWS default, 1.20) accept them
//! as deprecated aliases (`acl.tokens.master` → `initial_management`, the top-level TLS keys
//! → `tls.*`).

use std::path::{Path, PathBuf};

use flotilla_proto::v1::ConsulSpec;

/// Where the agent writes the files on the host.
pub const HOST_DIR: &str = "/etc/flotilla/consul";
/// Where the container sees them.
pub const CONTAINER_DIR: &str = "/consul/flotilla";

#[derive(Debug, thiserror::Error)]
#[error("writing Consul's configuration {path}: {source}")]
pub struct ConfigError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The files of one spec: (path relative to the directory, content). All secret.
pub fn files(spec: &ConsulSpec) -> Vec<(&'static str, String)> {
    let tls = !spec.tls_cert_pem.is_empty();
    let mut config = serde_json::json!({
        "encrypt": spec.encrypt_key,
        "acl": {
            "enabled": true,
            "default_policy": "deny",
            "enable_token_persistence": true,
            "tokens": { "master": spec.management_token, "agent": spec.agent_token },
        },
    });
    if tls {
        let rpc = serde_json::json!({
            "verify_incoming_rpc": true,
            "verify_outgoing": true,
            "verify_server_hostname": true,
            "ca_file": format!("{CONTAINER_DIR}/tls/ca.pem"),
            "cert_file": format!("{CONTAINER_DIR}/tls/server.pem"),
            "key_file": format!("{CONTAINER_DIR}/tls/server.key"),
        });
        if let (Some(c), Some(r)) = (config.as_object_mut(), rpc.as_object()) {
            c.extend(r.clone());
        }
    }
    let mut out = vec![("flotilla.json", serde_json::to_string_pretty(&config).unwrap_or_default())];
    if tls {
        out.push(("tls/ca.pem", spec.tls_ca_pem.clone()));
        out.push(("tls/server.pem", spec.tls_cert_pem.clone()));
        out.push(("tls/server.key", spec.tls_key_pem.clone()));
    }
    out
}

/// Writes `files` under `dir` (0700; files 0600), replacing only what differs, and removes
/// what is no longer among them. Whether anything changed.
pub fn write(dir: &Path, files: &[(&str, String)]) -> Result<bool, ConfigError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConfigError { path, source }
    };
    let mut changed = false;
    for (name, body) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            flotilla_proto::fs::private_dir(parent).map_err(err(parent))?;
        }
        let same = std::fs::read_to_string(&path).ok().as_deref() == Some(body.as_str())
            && flotilla_proto::fs::mode_of(&path).ok() == Some(0o600);
        if !same {
            flotilla_proto::fs::write_private(&path, body.as_bytes()).map_err(err(&path))?;
            changed = true;
        }
    }
    flotilla_proto::fs::private_dir(dir).map_err(err(dir))?;
    for stale in ["tls/ca.pem", "tls/server.pem", "tls/server.key"] {
        let path = dir.join(stale);
        if !files.iter().any(|(n, _)| *n == stale) && path.exists() {
            std::fs::remove_file(&path).map_err(err(&path))?;
            changed = true;
        }
    }
    Ok(changed)
}

/// The management token in the configuration under `dir`, if any (to leave gracefully once
/// the role's spec is gone).
pub fn management_token(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("flotilla.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["acl"]["tokens"]["master"].as_str().map(str::to_string)
}

/// Removes the directory (the role was taken away).
pub fn remove(dir: &Path) -> Result<(), ConfigError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ConfigError { path: dir.to_path_buf(), source: e }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ConsulSpec {
        ConsulSpec {
            encrypt_key: "k".repeat(44),
            management_token: "m-token".into(),
            agent_token: "a-token".into(),
            tls_cert_pem: "CERT".into(),
            tls_key_pem: "KEY".into(),
            tls_ca_pem: "CA".into(),
            ..Default::default()
        }
    }

    #[test]
    fn issue_14_secrets_are_in_0600_files_and_acls_default_to_deny() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("consul");
        let f = files(&spec());
        assert!(write(&d, &f).expect("write"));
        assert!(!write(&d, &f).expect("write again"), "unchanged files are not rewritten");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("flotilla.json")).expect("read")).expect("json");
        assert_eq!(json["acl"]["default_policy"], "deny");
        assert_eq!(json["acl"]["tokens"]["master"], "m-token");
        assert_eq!(json["encrypt"], "k".repeat(44));
        assert_eq!(json["verify_incoming_rpc"], true);
        assert_eq!(json["verify_server_hostname"], true);
        for name in ["flotilla.json", "tls/ca.pem", "tls/server.pem", "tls/server.key"] {
            assert_eq!(flotilla_proto::fs::mode_of(&d.join(name)).expect("mode"), 0o600, "{name}");
        }
        assert_eq!(flotilla_proto::fs::mode_of(&d).expect("mode"), 0o700);

        // Without TLS material the RPC settings and the certificates go.
        let plain = ConsulSpec { tls_cert_pem: String::new(), ..spec() };
        assert!(write(&d, &files(&plain)).expect("write"));
        assert!(!d.join("tls/server.key").exists());
        assert_eq!(management_token(&d).as_deref(), Some("m-token"));
        remove(&d).expect("remove");
        assert!(!d.exists());
        remove(&d).expect("idempotent");
    }
}
