//! A control plane in its own process (`flotilla-serve`: `serve::run`, as `coordinator serve`
//! runs it) on `127.0.0.1:<ephemeral>` in a temporary state directory, its log in a file. For
//! tests whose load must not share the control plane's descriptor table or runtime (the
//! hostile-client suite floods it from other processes and reads its `/proc/<pid>/fd`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flotilla_agent::config::AgentConfig;
use flotilla_proto::v1::{self, admin_client::AdminClient};
use tonic::transport::Channel;

use crate::eventually;

/// How long the control plane gets to start, and to stop.
const START: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(10);

pub struct ServeProcess {
    pub dir: tempfile::TempDir,
    pub cluster: String,
    /// `<state root>/<cluster>`.
    pub state_dir: PathBuf,
    /// The agent port, as the control plane wrote it to its `endpoint` file.
    pub endpoint: String,
    /// The control plane's stdout and stderr.
    pub log: PathBuf,
    child: Child,
}

impl ServeProcess {
    /// Starts `<bin> --cluster <cluster> --state-dir <tmp> --listen 127.0.0.1:0 <args>`
    /// (`bin`: the test's `env!("CARGO_BIN_EXE_flotilla-serve")`; INFO logs) and returns once
    /// its admin API answers.
    pub async fn start(bin: &Path, cluster: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = dir.path().join("state").join(cluster);
        let log = dir.path().join("coordinator.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(bin)
            .env("FLOTILLA_LOG", "info")
            .env_remove("DOCKER_HOST")
            .args(["--cluster", cluster, "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start the control plane");
        let endpoint_file = state_dir.join("endpoint");
        let endpoint = eventually(START, "the control plane's endpoint file", || {
            let e = std::fs::read_to_string(&endpoint_file).ok().filter(|e| !e.is_empty());
            async move { e }
        })
        .await;
        let mut me = Self { dir, cluster: cluster.to_string(), state_dir, endpoint, log, child };
        eventually(START, "the control plane's admin socket", || {
            let me = &me;
            async move { me.admin().await.ok()?.status(v1::StatusRequest::default()).await.ok().map(|_| ()) }
        })
        .await;
        assert!(me.child.try_wait().expect("wait").is_none(), "the control plane exited:\n{}", me.log_text());
        me
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn admin(&self) -> Result<AdminClient<Channel>, flotilla_coordinator::admin_client::ConnectError> {
        flotilla_coordinator::admin_client::connect_local(&self.cluster, &self.state_dir.join("admin.sock")).await
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("pki/ca.pem")).expect("ca.pem")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Descriptors the control plane has open now, and its limit (soft RLIMIT_NOFILE).
    pub fn descriptors(&self) -> (u64, u64) {
        descriptors_of(self.pid())
    }

    /// An agent config for `host` in its own directory, with `token` written (0600).
    pub fn agent_config(&self, host: &str, token: &str) -> AgentConfig {
        let dir = self.dir.path().join("agents").join(host);
        std::fs::create_dir_all(&dir).expect("agent dir");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, self.ca_pem()).expect("ca");
        let token_file = dir.join("token");
        flotilla_proto::fs::write_private(&token_file, token.as_bytes()).expect("token file");
        AgentConfig {
            host_name: host.to_string(),
            cluster: self.cluster.clone(),
            coordinator: vec![self.endpoint.clone()],
            ca_file,
            token_file,
            state_dir: dir.join("state"),
            heartbeat_interval_s: 1,
            backoff_cap_s: 2,
            backoff_base_ms: 100,
        }
    }

    /// Asks the control plane to stop (admin `Shutdown`) and waits for it; kills it when it
    /// does not stop within [`STOP`].
    pub async fn stop(mut self) {
        if let Ok(mut admin) = self.admin().await {
            let _ = tokio::time::timeout(STOP, admin.shutdown(v1::ShutdownRequest {})).await;
        }
        let deadline = std::time::Instant::now() + STOP;
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Descriptors process `pid` has open (`/proc/<pid>/fd`) and its soft descriptor limit
/// (`/proc/<pid>/limits`); 0 for what cannot be read.
pub fn descriptors_of(pid: u32) -> (u64, u64) {
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
    let limit = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    (open, limit)
}
