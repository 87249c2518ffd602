//! Step 3: the cluster's control plane — connected to when one runs, else started in the
//! background as `coordinator serve` on the cluster's own port ([`super::port`]; it outlives
//! the deploy, logs to `<state>/coordinator.log`, rotated past 10 MiB; what it prints before
//! logging starts goes to `<state>/coordinator.out`) — and the Engine client certificate
//! `docker` and `coordinator env` use against the managers' Engines (not an admin credential).

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_proto::v1::{self, admin_client::AdminClient};
use tonic::transport::Channel;

use super::{DeployError, Run, port};
use crate::admin_client::{self, ConnectError};
use crate::control_plane::settings::StatePaths;
use crate::control_plane::store::{Store, StoreError};
use crate::poll::{Attempt, PollError, poll_until};
use crate::ui::Progress;

/// How long a control plane that is just stopping gets to let go of the cluster's state.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a started control plane gets to answer on its admin socket.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how `coordinator serve` runs for a cluster.
pub struct ServeSpec<'a> {
    pub cluster: &'a str,
    pub state_root: &'a Path,
    pub paths: &'a StatePaths,
    /// The agent port listens here.
    pub listen_ip: &'a str,
    /// Hosts dial this (the server certificate's name).
    pub advertise: &'a str,
    /// The port asked for (`--port`, `coordinator.port`); `None`: the cluster's recorded one,
    /// else a free one ([`super::port::choose`]).
    pub port: Option<u16>,
    /// `coordinator.metrics_listen`; empty: loopback, a free port.
    pub metrics_listen: &'a str,
}

/// Where `/metrics` and the status page listen when `coordinator.metrics_listen` is empty:
/// loopback, a free port (the bound address is recorded in `<state>/metrics-address`).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:0";

/// Connects to the cluster's control plane, starting one in the background when none
/// runs: it listens on `listen_ip` (the lab's gateway) and the cluster's port, and logs to
/// `<state>/coordinator.log`.
pub async fn ensure_control_plane(s: &ServeSpec<'_>, p: &Progress) -> Result<AdminClient<Channel>, DeployError> {
    port::check_unchanged(&s.paths.dir, s.port)?;
    match admin_client::connect_local(s.cluster, &s.paths.admin_socket()).await {
        Ok(c) => return Ok(c),
        Err(ConnectError::NotRunning { .. }) => {}
        Err(e) => return Err(DeployError::AdminSocket(e)),
    }
    wait_for_store_release(s.paths).await;
    // Another deploy may be picking a port right now: one at a time, until ours listens.
    let _lock = port::lock(s.state_root)?;
    let chosen = port::choose(&s.paths.dir, s.listen_ip, s.port)?;
    spawn_control_plane(s, chosen, p).await
}

/// A control plane that is just stopping has closed its socket but still holds the store
/// for a moment ([`StoreError::Locked`]): wait (bounded) until it lets go. Past the wait, the
/// new control plane's own error says who holds it.
pub async fn wait_for_store_release(paths: &StatePaths) {
    let store = paths.store();
    let every = Duration::from_secs(1);
    let _ = poll_until("the cluster state to be released", Instant::now() + RELEASE_TIMEOUT, every, || {
        let store = &store;
        async move {
            Ok::<_, Infallible>(match Store::check_free(store) {
                Err(e @ StoreError::Locked { .. }) => Attempt::NotYet(e.to_string()),
                // Free, or another problem `coordinator serve` will name.
                _ => Attempt::Done(()),
            })
        }
    })
    .await;
}

/// Starts `coordinator serve` detached (its own process group) and waits until its admin
/// socket answers.
async fn spawn_control_plane(s: &ServeSpec<'_>, port: u16, p: &Progress) -> Result<AdminClient<Channel>, DeployError> {
    let ServeSpec { cluster, state_root, paths, listen_ip, advertise, metrics_listen, .. } = *s;
    let spawn = |what: String| move |source| DeployError::Spawn { what, source };
    let exe = std::env::current_exe().map_err(spawn("the path of this program".into()))?;
    let log_path = paths.log_file();
    let out_path = paths.output_file();
    let out = std::fs::File::create(&out_path).map_err(spawn(out_path.display().to_string()))?;
    let out2 = out.try_clone().map_err(spawn(out_path.display().to_string()))?;
    p.step("control", format!("starting the control plane on {listen_ip}:{port} (log: {})", log_path.display()));
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--cluster")
        .arg(cluster)
        .arg("--state-root")
        .arg(state_root)
        .arg("serve")
        .arg("--listen")
        .arg(format!("{listen_ip}:{port}"))
        .arg("--advertise")
        .arg(advertise)
        .arg("--log-file")
        .arg(&log_path)
        .arg("--metrics-listen")
        .arg(if metrics_listen.is_empty() { DEFAULT_METRICS_LISTEN } else { metrics_listen })
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(out2)
        .process_group(0)
        .env_remove("FAILPOINTS");
    let child = cmd.spawn().map_err(spawn("cannot start `coordinator serve`".into()))?;
    let client = wait_for_answer(child, cluster, paths).await?;
    Ok(client)
}

/// Waits until the started control plane answers on its admin socket; the child is then
/// left to run (it outlives this command). Its exit, or silence, is an error that quotes
/// its log.
async fn wait_for_answer(
    child: std::process::Child,
    cluster: &str,
    paths: &StatePaths,
) -> Result<AdminClient<Channel>, DeployError> {
    let child = std::cell::RefCell::new(child);
    let socket = paths.admin_socket();
    let answered = poll_until("the control plane", Instant::now() + ANSWER_TIMEOUT, Duration::from_millis(50), || {
        let (child, socket) = (&child, &socket);
        async move {
            if let Ok(Some(status)) = child.borrow_mut().try_wait() {
                let tail = [log_tail(&paths.output_file(), 5), log_tail(&paths.log_file(), 5)].join("\n");
                return Err(DeployError::ServeExited { status, tail: tail.trim().to_string() });
            }
            Ok(match admin_client::connect_local(cluster, socket).await {
                Ok(c) => Attempt::Done(c),
                Err(e) => Attempt::NotYet(e.to_string()),
            })
        }
    })
    .await;
    match answered {
        Ok(c) => {
            // Detach: the control plane outlives this command.
            std::mem::forget(child);
            Ok(c)
        }
        Err(PollError::Failed(e)) => Err(e),
        Err(PollError::TimedOut { .. }) => Err(DeployError::ServeSilent { log: paths.log_file() }),
    }
}

/// The last `n` lines of a log file (empty when it cannot be read).
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(n).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// The Engine client certificate `docker`, `coordinator env` and the coordinator's own
/// Engine calls use against the managers' 2376: `<state>/docker/{ca,cert,key}.pem`, signed
/// by the cluster's Engine client CA (the only CA the Engines trust for clients; `ca.pem` is
/// the cluster CA, which signed the Engines' server certificates). Issued once; a
/// certificate from before the Engine client CA (signed by the cluster CA) is replaced.
pub async fn ensure_docker_certs(run: &Run<'_>) -> Result<PathBuf, DeployError> {
    let dir = run.state_dir.join("docker");
    if ["ca.pem", "key.pem"].iter().all(|f| dir.join(f).is_file()) && is_engine_client_cert(&dir.join("cert.pem")) {
        return Ok(dir);
    }
    let (key, csr) = crate::control_plane::pki::new_key_and_csr("docker").map_err(DeployError::OperatorKey)?;
    let r = run
        .admin
        .clone()
        .issue_engine_client_certificate(v1::IssueEngineClientCertificateRequest {
            client_name: "docker".into(),
            csr_pem: csr,
        })
        .await?
        .into_inner();
    let io = DeployError::state_dir;
    flotilla_proto::fs::private_dir(&dir).map_err(io(&dir))?;
    flotilla_proto::fs::write_private(&dir.join("key.pem"), key.serialize_pem().as_bytes()).map_err(io(&dir))?;
    flotilla_proto::fs::write_public(&dir.join("cert.pem"), r.certificate_pem.as_bytes()).map_err(io(&dir))?;
    flotilla_proto::fs::write_public(&dir.join("ca.pem"), r.server_ca_pem.as_bytes()).map_err(io(&dir))?;
    Ok(dir)
}

/// Whether `path` holds a certificate with the Engine client OU.
fn is_engine_client_cert(path: &Path) -> bool {
    let Ok(pem) = std::fs::read_to_string(path) else { return false };
    let Ok(certs) = flotilla_proto::tls::certs_from_pem("docker certificate", &pem) else { return false };
    certs
        .first()
        .and_then(flotilla_proto::tls::identity_of)
        .is_some_and(|id| id.organizational_unit == flotilla_proto::OU_ENGINE_CLIENT)
}
