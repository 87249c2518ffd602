//! Step 3's port: every cluster on this machine gets an agent port of its own, so a lab
//! cluster and an AWS cluster run side by side (issue 13: the lab's control plane held
//! 7443 and the AWS one, listening on 0.0.0.0, could not start).
//!
//! The port is recorded in `<state>/listen` (`ip:port`) when the control plane is started,
//! and every later deploy of the cluster reuses it: its hosts dial that port. Without a
//! request (`deploy --port N`, `coordinator.port` in flotilla.toml), a new cluster gets the
//! first port from [`FIRST_PORT`] that no other cluster under the state root records and that
//! binds on its listen address now. A requested port that is taken is refused, naming the
//! cluster that holds it (from its record) or saying another program does. Choosing and
//! starting the control plane happen under `<state root>/.ports.lock`, so two deploys at once
//! never pick the same port.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::control_plane::settings::StatePaths;

/// The first port tried (Flotilla's agent port before ports were picked per cluster).
pub const FIRST_PORT: u16 = 7443;
/// How many ports from [`FIRST_PORT`] are tried.
const RANGE: u16 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error(
        "port {port} is taken by cluster '{holder}' (its control plane listens on {held}, recorded in {}): deploy '{cluster}' on another port (`--port N`, or `coordinator.port` in flotilla.toml), or set neither to have a free one picked",
        file.display()
    )]
    HeldByCluster { port: u16, cluster: String, holder: String, held: String, file: PathBuf },
    #[error(
        "port {port} on {ip} is in use by a program that is not a Flotilla cluster under {} ({error}): deploy '{cluster}' on another port (`--port N`, or `coordinator.port` in flotilla.toml), or set neither to have a free one picked",
        root.display()
    )]
    InUse { port: u16, ip: IpAddr, cluster: String, root: PathBuf, error: std::io::Error },
    #[error(
        "cluster '{cluster}' listens on port {recorded} (recorded in {}), and its hosts dial that port: leave `--port` and `coordinator.port` unset (or set them to {recorded}); to move it to {requested}, destroy the cluster first",
        file.display()
    )]
    Changed { cluster: String, recorded: u16, requested: u16, file: PathBuf },
    #[error("no free port in {FIRST_PORT}-{} on {ip}: pass `--port N`", FIRST_PORT + RANGE - 1)]
    NoneFree { ip: IpAddr },
    #[error("'{0}' is not an IP address to listen on (coordinator.listen)")]
    ListenIp(String),
    #[error("{}: {source}", path.display())]
    File { path: PathBuf, source: std::io::Error },
}

/// A cluster's recorded listen address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub cluster: String,
    pub listen: String,
    pub port: u16,
    pub file: PathBuf,
}

/// The cluster's `<state>/listen`, if it has one.
pub fn recorded(state_dir: &Path) -> Option<Recorded> {
    let file = StatePaths::new(state_dir).listen_file();
    let listen = std::fs::read_to_string(&file).ok()?.trim().to_string();
    let port = listen.rsplit_once(':')?.1.parse().ok()?;
    let cluster = state_dir.file_name()?.to_string_lossy().to_string();
    Some(Recorded { cluster, listen, port, file })
}

/// Refuses a requested port that is not the one the cluster records.
pub fn check_unchanged(state_dir: &Path, requested: Option<u16>) -> Result<(), PortError> {
    match (recorded(state_dir), requested) {
        (Some(r), Some(n)) if r.port != n => {
            Err(PortError::Changed { cluster: r.cluster, recorded: r.port, requested: n, file: r.file })
        }
        _ => Ok(()),
    }
}

/// Held while a port is chosen and the control plane started on it.
pub struct PortsLock(#[allow(dead_code)] std::fs::File);

/// Takes `<state root>/.ports.lock` (waits for another deploy that holds it).
pub fn lock(state_root: &Path) -> Result<PortsLock, PortError> {
    let path = state_root.join(".ports.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| PortError::File { path: path.clone(), source })?;
    file.lock().map_err(|source| PortError::File { path, source })?;
    Ok(PortsLock(file))
}

/// The port for `state_dir`'s cluster on `listen_ip` (see the module docs), recorded in its
/// `<state>/listen`. Call it holding [`lock`].
pub fn choose(state_dir: &Path, listen_ip: &str, requested: Option<u16>) -> Result<u16, PortError> {
    let ip: IpAddr = listen_ip.parse().map_err(|_| PortError::ListenIp(listen_ip.to_string()))?;
    check_unchanged(state_dir, requested)?;
    let root = state_dir.parent().unwrap_or(Path::new("."));
    let cluster = state_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let others: Vec<Recorded> = others(root, &cluster);
    let port = match requested.or(recorded(state_dir).map(|r| r.port)) {
        Some(port) => match std::net::TcpListener::bind((ip, port)) {
            Ok(_) => port,
            Err(error) => return Err(taken(port, ip, &cluster, root, &others, error)),
        },
        None => (FIRST_PORT..FIRST_PORT + RANGE)
            .find(|p| !others.iter().any(|o| o.port == *p) && std::net::TcpListener::bind((ip, *p)).is_ok())
            .ok_or(PortError::NoneFree { ip })?,
    };
    let file = StatePaths::new(state_dir).listen_file();
    let addr = std::net::SocketAddr::new(ip, port);
    flotilla_proto::fs::write_public(&file, format!("{addr}\n").as_bytes())
        .map_err(|source| PortError::File { path: file, source })?;
    Ok(port)
}

/// Every other cluster's record under the state root.
fn others(root: &Path, cluster: &str) -> Vec<Recorded> {
    let Ok(dirs) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    dirs.filter_map(Result::ok)
        .map(|d| d.path())
        .filter(|p| p.file_name().is_some_and(|n| n != cluster))
        .filter_map(|p| recorded(&p))
        .collect()
}

/// Why `port` did not bind: the cluster whose record holds it, else another program.
fn taken(port: u16, ip: IpAddr, cluster: &str, root: &Path, others: &[Recorded], error: std::io::Error) -> PortError {
    match others.iter().find(|o| o.port == port) {
        Some(o) => PortError::HeldByCluster {
            port,
            cluster: cluster.to_string(),
            holder: o.cluster.clone(),
            held: o.listen.clone(),
            file: o.file.clone(),
        },
        None => PortError::InUse { port, ip, cluster: cluster.to_string(), root: root.to_path_buf(), error },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(root: &Path, name: &str) -> PathBuf {
        let d = root.join(name);
        std::fs::create_dir_all(&d).expect("state dir");
        d
    }

    #[test]
    fn each_cluster_gets_its_own_port_and_keeps_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let a = cluster(root.path(), "a");
        let b = cluster(root.path(), "b");
        let pa = choose(&a, "127.0.0.1", None).expect("a's port");
        let pb = choose(&b, "127.0.0.1", None).expect("b's port");
        assert_ne!(pa, pb, "two clusters, two ports");
        assert_eq!(recorded(&a).map(|r| r.port), Some(pa));
        assert_eq!(std::fs::read_to_string(a.join("listen")).expect("listen"), format!("127.0.0.1:{pa}\n"));
        assert_eq!(choose(&a, "127.0.0.1", None).expect("again"), pa, "a re-deploy reuses the port");
        let e = choose(&a, "127.0.0.1", Some(pb)).expect_err("moving a cluster's port");
        assert!(matches!(e, PortError::Changed { recorded, .. } if recorded == pa), "{e}");
    }

    #[test]
    fn a_requested_port_that_is_taken_names_the_cluster_holding_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let lab = cluster(root.path(), "lab");
        let aws = cluster(root.path(), "aws");
        // The lab cluster's control plane, listening on the port its record names.
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("addr").port();
        std::fs::write(lab.join("listen"), format!("127.0.0.1:{port}\n")).expect("record");
        let e = choose(&aws, "0.0.0.0", Some(port)).expect_err("taken").to_string();
        assert!(e.contains(&format!("port {port} is taken by cluster 'lab'")) && e.contains("--port N"), "{e}");
        // Not a cluster's: another program.
        std::fs::remove_file(lab.join("listen")).expect("rm");
        let e = choose(&aws, "0.0.0.0", Some(port)).expect_err("taken").to_string();
        assert!(e.contains("not a Flotilla cluster"), "{e}");
        assert!(recorded(&aws).is_none(), "a refused port is not recorded");
    }
}
