//! The coordinator's own state, carried to another machine (issue 16): `state export` packs
//! a cluster's state directory (the store, the cluster CA and its key, the Engine client CA,
//! Consul's secrets, the backups and their key, the recorded port) into one age-encrypted
//! file — with a passphrase (scrypt) or to a key file's identity — so no key is ever written
//! in the clear; `state import` unpacks it into a state root where the cluster has no state
//! and starts its control plane on the recorded address and port.
//!
//! A consistent copy of the store needs its writer stopped: a running control plane is shut
//! down for the copy (agents keep their containers and reconnect) and started again after.
//!
//! How agents find the imported control plane: they dial the endpoint in their
//! `/etc/flotilla/agent.toml` (the address the cluster advertised, `<state>/endpoint`) and
//! check the server certificate against the cluster CA (carried in the export) and that
//! address (the certificate's SAN, kept: import advertises the exported endpoint unless told
//! otherwise). So the imported control plane must answer at that address: on the same
//! machine, or on one that took over its IP address or DNS name (`coordinator.advertise` set
//! to a name makes that a DNS change). Agents reconnect by themselves with their back-off.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use age::secrecy::{ExposeSecret, SecretString};

use crate::admin_client::{self, ConnectError};
use crate::control_plane::settings::StatePaths;
use crate::ops::deploy::{DeployError, ServeSpec, control_plane, ensure_control_plane, port};
use crate::ui::Progress;

/// The shortest passphrase accepted for an export.
pub const MIN_PASSPHRASE: usize = 12;
/// The environment variable a passphrase may come from.
pub const PASSPHRASE_ENV: &str = "FLOTILLA_STATE_PASSPHRASE";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cluster '{cluster}' has no state at {} (nothing to export)", dir.display())]
    NoState { cluster: String, dir: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "an export needs a secret: --passphrase-file FILE, the environment variable {PASSPHRASE_ENV}, or --key-file FILE"
    )]
    NoSecret,
    #[error("the passphrase is {0} characters; use at least {MIN_PASSPHRASE}")]
    ShortPassphrase(usize),
    #[error("key file {}: {detail}", path.display())]
    Key { path: PathBuf, detail: String },
    #[error("encrypting the export: {0}")]
    Encrypt(String),
    #[error("{} does not decrypt with the {what} given: {detail}", path.display())]
    Decrypt { path: PathBuf, what: &'static str, detail: String },
    #[error("{} is not a state export of cluster '{cluster}': {detail}", path.display())]
    NotAnExport { path: PathBuf, cluster: String, detail: String },
    #[error(
        "{} already holds state for cluster '{cluster}'; import into another --state-root, or remove it first (after `coordinator --cluster {cluster} stop`)",
        dir.display()
    )]
    Exists { cluster: String, dir: PathBuf },
    #[error("stopping the control plane for a consistent copy: {0}")]
    Stop(String),
    #[error("the imported state records no agent port ({}); it cannot be served", file.display())]
    NoListen { file: PathBuf },
    #[error("starting the control plane: {0}")]
    Serve(Box<DeployError>),
}

/// How an export is sealed (and opened).
pub enum Secret {
    Passphrase(SecretString),
    /// An age identity file: made (0600) on export when absent; its identity opens the export.
    KeyFile(PathBuf),
}

impl Secret {
    /// From `--passphrase-file`, `--key-file` or [`PASSPHRASE_ENV`], in that order.
    pub fn from_args(passphrase_file: Option<&Path>, key_file: Option<&Path>) -> Result<Self, StateError> {
        let phrase = match (passphrase_file, key_file) {
            (Some(f), _) => {
                let text = std::fs::read_to_string(f).map_err(|source| StateError::Io { path: f.into(), source })?;
                text.trim_end_matches(['\n', '\r']).to_string()
            }
            (None, Some(k)) => return Ok(Secret::KeyFile(k.to_path_buf())),
            (None, None) => std::env::var(PASSPHRASE_ENV).map_err(|_| StateError::NoSecret)?,
        };
        if phrase.chars().count() < MIN_PASSPHRASE {
            return Err(StateError::ShortPassphrase(phrase.chars().count()));
        }
        Ok(Secret::Passphrase(SecretString::from(phrase)))
    }

    fn what(&self) -> &'static str {
        match self {
            Secret::Passphrase(_) => "passphrase",
            Secret::KeyFile(_) => "key file",
        }
    }

    fn identity(path: &Path, create: bool) -> Result<age::pq::Identity, StateError> {
        let bad = |detail: String| StateError::Key { path: path.to_path_buf(), detail };
        match std::fs::read_to_string(path) {
            Ok(t) => t.trim().parse::<age::pq::Identity>().map_err(|e| bad(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let id = age::pq::Identity::generate();
                let text = format!("{}\n", id.to_string().expose_secret());
                flotilla_proto::fs::write_private(path, text.as_bytes()).map_err(|e| bad(e.to_string()))?;
                Ok(id)
            }
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// `plain`, encrypted.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, StateError> {
        let enc = |e: &dyn std::fmt::Display| StateError::Encrypt(e.to_string());
        let encryptor = match self {
            Secret::Passphrase(p) => age::Encryptor::with_user_passphrase(p.clone()),
            Secret::KeyFile(path) => {
                let r = Self::identity(path, true)?.to_public();
                age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).map_err(|e| enc(&e))?
            }
        };
        let mut out = Vec::with_capacity(plain.len() + 4096);
        let mut w = encryptor.wrap_output(&mut out).map_err(|e| enc(&e))?;
        w.write_all(plain).map_err(|e| enc(&e))?;
        w.finish().map_err(|e| enc(&e))?;
        Ok(out)
    }

    /// `sealed` (read from `path`), decrypted.
    pub fn open(&self, path: &Path, sealed: &[u8]) -> Result<Vec<u8>, StateError> {
        let fail = |e: &dyn std::fmt::Display| StateError::Decrypt {
            path: path.to_path_buf(),
            what: self.what(),
            detail: e.to_string(),
        };
        let d = age::Decryptor::new(sealed).map_err(|e| fail(&e))?;
        let mut reader = match self {
            Secret::Passphrase(p) => {
                let id = age::scrypt::Identity::new(p.clone());
                d.decrypt(std::iter::once(&id as &dyn age::Identity)).map_err(|e| fail(&e))?
            }
            Secret::KeyFile(k) => {
                let id = Self::identity(k, false)?;
                d.decrypt(std::iter::once(&id as &dyn age::Identity)).map_err(|e| fail(&e))?
            }
        };
        let mut plain = Vec::new();
        reader.read_to_end(&mut plain).map_err(|e| fail(&e))?;
        Ok(plain)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

/// Files of a state directory an export leaves out: the admin socket, logs, temp files.
fn left_out(name: &str) -> bool {
    name == "admin.sock"
        || name.starts_with("coordinator.log")
        || name == "coordinator.out"
        || name.starts_with(".flotilla-")
}

/// A state directory as a tar, its entries under `<cluster>/`.
pub fn pack(dir: &Path, cluster: &str) -> Result<Vec<u8>, StateError> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    add_dir(&mut tar, dir, Path::new(cluster))?;
    tar.into_inner().map_err(io(dir))
}

fn add_dir(tar: &mut tar::Builder<Vec<u8>>, src: &Path, name: &Path) -> Result<(), StateError> {
    tar.append_dir(name, src).map_err(io(src))?;
    let mut entries = std::fs::read_dir(src).map_err(io(src))?.collect::<Result<Vec<_>, _>>().map_err(io(src))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let file_name = e.file_name();
        if left_out(&file_name.to_string_lossy()) {
            continue;
        }
        let ft = e.file_type().map_err(io(&path))?;
        if ft.is_dir() {
            add_dir(tar, &path, &name.join(&file_name))?;
        } else if ft.is_file() {
            tar.append_path_with_name(&path, name.join(&file_name)).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Unpacks an export's tar into `root` (a new directory); returns the cluster it holds.
pub fn unpack(tar_bytes: &[u8], root: &Path, file: &Path, cluster: &str) -> Result<(), StateError> {
    let not = |detail: String| StateError::NotAnExport { path: file.into(), cluster: cluster.into(), detail };
    let mut ar = tar::Archive::new(tar_bytes);
    ar.set_preserve_permissions(true);
    let mut saw_store = false;
    for entry in ar.entries().map_err(|e| not(e.to_string()))? {
        let mut entry = entry.map_err(|e| not(e.to_string()))?;
        let path = entry.path().map_err(|e| not(e.to_string()))?.into_owned();
        if path.components().next().map(|c| c.as_os_str().to_string_lossy().to_string()).as_deref() != Some(cluster) {
            return Err(not(format!("it holds '{}'", path.display())));
        }
        saw_store |= path == Path::new(cluster).join("state.redb");
        if !entry.unpack_in(root).map_err(io(root))? {
            return Err(not(format!("'{}' points outside the state directory", path.display())));
        }
    }
    if !saw_store {
        return Err(not("it holds no state.redb".into()));
    }
    Ok(())
}

/// What an export did.
#[derive(Debug, serde::Serialize)]
pub struct Exported {
    pub cluster: String,
    pub file: PathBuf,
    pub bytes: u64,
    /// The control plane was running, stopped for the copy and started again.
    pub restarted: bool,
}

/// `state export`: the state of `cluster` under `state_root`, sealed into `out`.
pub async fn export(state_root: &Path, cluster: &str, out: &Path, secret: &Secret) -> Result<Exported, StateError> {
    let dir = state_root.join(cluster);
    let paths = StatePaths::new(&dir);
    if !paths.store().exists() {
        return Err(StateError::NoState { cluster: cluster.into(), dir });
    }
    let was_running = match admin_client::connect_local(cluster, &paths.admin_socket()).await {
        Ok(mut admin) => {
            admin
                .shutdown(flotilla_proto::v1::ShutdownRequest {})
                .await
                .map_err(|s| StateError::Stop(s.message().into()))?;
            admin_client::wait_gone(&paths.admin_socket()).await;
            control_plane::wait_for_store_release(&paths).await;
            true
        }
        Err(ConnectError::NotRunning { .. }) => false,
        Err(e) => return Err(StateError::Stop(e.to_string())),
    };
    let packed = pack(&dir, cluster);
    if was_running {
        start(state_root, cluster, None, &Progress::new(true)).await?;
    }
    let sealed = secret.seal(&packed?)?;
    flotilla_proto::fs::write_private(out, &sealed).map_err(io(out))?;
    Ok(Exported { cluster: cluster.into(), file: out.into(), bytes: sealed.len() as u64, restarted: was_running })
}

/// What an import did.
#[derive(Debug, serde::Serialize)]
pub struct Imported {
    pub cluster: String,
    pub state_dir: PathBuf,
    /// Where the control plane listens and what agents dial.
    pub listen: String,
    pub endpoint: String,
}

/// `state import`: `file` unpacked as `cluster`'s state under `state_root`, its control
/// plane started (advertising `advertise`, else the exported endpoint's address).
pub async fn import(
    state_root: &Path,
    cluster: &str,
    file: &Path,
    secret: &Secret,
    advertise: Option<&str>,
) -> Result<Imported, StateError> {
    let dir = state_root.join(cluster);
    if dir.join("state.redb").exists() {
        return Err(StateError::Exists { cluster: cluster.into(), dir });
    }
    let sealed = std::fs::read(file).map_err(io(file))?;
    let plain = secret.open(file, &sealed)?;
    flotilla_proto::fs::private_dir(state_root).map_err(io(state_root))?;
    let tmp = tempfile::Builder::new().prefix(".import-").tempdir_in(state_root).map_err(io(state_root))?;
    unpack(&plain, tmp.path(), file, cluster)?;
    if dir.exists() {
        // An empty leftover (no store): replaced.
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::rename(tmp.path().join(cluster), &dir).map_err(io(&dir))?;
    flotilla_proto::fs::private_dir(&dir).map_err(io(&dir))?;
    start(state_root, cluster, advertise, &Progress::new(true)).await?;
    let paths = StatePaths::new(&dir);
    let endpoint = std::fs::read_to_string(paths.endpoint_file()).unwrap_or_default().trim().to_string();
    let listen = port::recorded(&dir).map(|r| r.listen).unwrap_or_default();
    Ok(Imported { cluster: cluster.into(), state_dir: dir, listen, endpoint })
}

/// Starts the cluster's control plane where its state records it listened, advertising
/// `advertise` (else the address of its recorded endpoint).
async fn start(state_root: &Path, cluster: &str, advertise: Option<&str>, p: &Progress) -> Result<(), StateError> {
    let dir = state_root.join(cluster);
    let paths = StatePaths::new(&dir);
    let rec = port::recorded(&dir).ok_or_else(|| StateError::NoListen { file: paths.listen_file() })?;
    let listen_ip =
        rec.listen.rsplit_once(':').map(|(ip, _)| ip.trim_matches(['[', ']']).to_string()).unwrap_or_default();
    let endpoint = std::fs::read_to_string(paths.endpoint_file()).unwrap_or_default();
    let recorded_host = endpoint.trim().rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_string());
    let advertise = advertise.map(str::to_string).or(recorded_host).unwrap_or_else(|| listen_ip.clone());
    // The metrics listener the last deploy asked for, when its record came along.
    let metrics_listen = crate::ops::cluster_config::ClusterConfig::recorded(&dir)
        .map(|c| c.coordinator.metrics_listen)
        .unwrap_or_default();
    let spec = ServeSpec {
        cluster,
        state_root,
        paths: &paths,
        listen_ip: &listen_ip,
        advertise: &advertise,
        port: Some(rec.port),
        metrics_listen: &metrics_listen,
    };
    ensure_control_plane(&spec, p).await.map_err(|e| StateError::Serve(Box::new(e)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_dir() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        let d = root.path().join("c1");
        std::fs::create_dir_all(d.join("pki")).expect("mkdir");
        std::fs::write(d.join("state.redb"), b"store").expect("write");
        flotilla_proto::fs::write_private(&d.join("pki").join("ca.key"), b"-----BEGIN PRIVATE KEY-----\nk\n")
            .expect("write");
        std::fs::write(d.join("coordinator.log"), b"log").expect("write");
        std::fs::write(d.join("listen"), b"10.0.0.1:7443").expect("write");
        root
    }

    #[test]
    fn issue_16_an_export_holds_no_key_in_the_clear_and_round_trips_with_its_passphrase() {
        let root = state_dir();
        let secret = Secret::Passphrase(SecretString::from("correct horse battery".to_string()));
        let sealed = secret.seal(&pack(&root.path().join("c1"), "c1").expect("pack")).expect("seal");
        assert!(!sealed.windows(5).any(|w| w == b"BEGIN"), "a PEM header in the clear");
        let wrong = Secret::Passphrase(SecretString::from("incorrect horse battery".to_string()));
        let err = wrong.open(Path::new("x.age"), &sealed).expect_err("wrong passphrase");
        assert!(err.to_string().contains("passphrase"), "{err}");
        let plain = secret.open(Path::new("x.age"), &sealed).expect("open");
        let to = tempfile::tempdir().expect("tempdir");
        unpack(&plain, to.path(), Path::new("x.age"), "c1").expect("unpack");
        let key = to.path().join("c1").join("pki").join("ca.key");
        assert_eq!(std::fs::read(&key).expect("key"), b"-----BEGIN PRIVATE KEY-----\nk\n");
        assert_eq!(flotilla_proto::fs::mode_of(&key).expect("mode"), 0o600, "modes are kept");
        assert!(!to.path().join("c1").join("coordinator.log").exists(), "logs are left out");
        let other = tempfile::tempdir().expect("tempdir");
        assert!(matches!(unpack(&plain, other.path(), Path::new("x.age"), "c2"), Err(StateError::NotAnExport { .. })));
    }

    #[test]
    fn issue_16_a_key_file_export_is_made_once_and_opens_only_with_it() {
        let root = state_dir();
        let keys = tempfile::tempdir().expect("tempdir");
        let k = keys.path().join("export.key");
        let secret = Secret::KeyFile(k.clone());
        let sealed = secret.seal(b"tar").expect("seal");
        assert_eq!(flotilla_proto::fs::mode_of(&k).expect("mode"), 0o600);
        assert_eq!(secret.open(Path::new("x"), &sealed).expect("open"), b"tar");
        let other = Secret::KeyFile(root.path().join("other.key"));
        assert!(other.open(Path::new("x"), &sealed).is_err(), "a missing key file is no key");
        assert!(matches!(
            Secret::from_args(Some(&write_phrase(keys.path(), "short")), None),
            Err(StateError::ShortPassphrase(5))
        ));
    }

    fn write_phrase(dir: &Path, p: &str) -> PathBuf {
        let f = dir.join("phrase");
        std::fs::write(&f, format!("{p}\n")).expect("write");
        f
    }
}
