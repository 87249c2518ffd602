//! Test harness shared by the integration tests: a control plane on `127.0.0.1:0` in a
//! temporary state directory, its admin client, and agents pointed at it; [`serve_process`]:
//! the same in its own process (the real `coordinator serve`); [`moto`]: moto's EC2 server;
//! [`chromium`]: a headless browser for the status page; [`crash`]: a command interrupted at
//! each of its failpoints in turn; [`lab_cluster`]: a lab cluster checked from outside;
//! [`chaos`]: the chaos soak.

pub mod chaos;
pub mod chromium;
pub mod crash;
pub mod lab_cluster;
pub mod moto;
pub mod serve_process;

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_agent::config::AgentConfig;
use flotilla_coordinator::control_plane::clock::Clock;
use flotilla_coordinator::control_plane::serve::{self, Running};
use flotilla_coordinator::control_plane::settings::ServeConfig;
use flotilla_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

/// Logs to the test's output when `FLOTILLA_TEST_LOG` is set (e.g. `debug`).
pub fn init_tracing() {
    if let Ok(filter) = std::env::var("FLOTILLA_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// A control plane under test.
pub struct Coord {
    pub dir: tempfile::TempDir,
    pub running: Option<Running>,
    pub clock: Clock,
    pub config: ServeConfig,
    pub addr: std::net::SocketAddr,
}

impl Coord {
    /// Starts a control plane on a fresh port with `tweak` applied to its config.
    pub async fn start(tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::start_on("127.0.0.1:0", tweak).await
    }

    /// Starts a control plane listening on `addr` (e.g. a lab network's gateway, port 0).
    pub async fn start_on(addr: &str, tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ServeConfig::new("test", dir.path().join("state"));
        config.heartbeat_interval = Duration::from_secs(1);
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let clock = Clock::default();
        let running =
            serve::start_with_clock(config.clone(), listener, clock.clone()).await.expect("control plane starts");
        Self { dir, running: Some(running), clock, config, addr }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("pki/ca.pem")).expect("ca.pem")
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        flotilla_coordinator::admin_client::connect_local("test", &self.state_dir().join("admin.sock"))
            .await
            .expect("admin socket")
    }

    /// The control plane's status, over the admin socket.
    pub async fn status(&self) -> flotilla_proto::v1::StatusResponse {
        self.admin().await.status(flotilla_proto::v1::StatusRequest::default()).await.expect("status").into_inner()
    }

    pub async fn token(&self, host: &str) -> String {
        self.admin()
            .await
            .create_token(flotilla_proto::v1::CreateTokenRequest { host_name: host.into(), ttl_s: 0 })
            .await
            .expect("token")
            .into_inner()
            .token
    }

    /// Stops the control plane (its state stays on disk).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean stop");
        }
    }

    /// Starts it again on the same port and state directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = bind_retry(self.addr).await;
        self.running = Some(
            serve::start_with_clock(self.config.clone(), listener, self.clock.clone())
                .await
                .expect("control plane restarts"),
        );
    }

    /// An agent config for `host` in its own directory under this test's temp dir, with
    /// its join token written (0600).
    pub async fn agent_config(&self, host: &str) -> AgentConfig {
        let token = self.token(host).await;
        self.agent_config_with_token(host, Some(&token))
    }

    pub fn agent_config_with_token(&self, host: &str, token: Option<&str>) -> AgentConfig {
        let dir = self.dir.path().join("agents").join(host);
        std::fs::create_dir_all(&dir).expect("agent dir");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, self.ca_pem()).expect("ca");
        let token_file = dir.join("token");
        if let Some(t) = token {
            flotilla_proto::fs::write_private(&token_file, t.as_bytes()).expect("token file");
        }
        AgentConfig {
            host_name: host.to_string(),
            cluster: "test".into(),
            coordinator: vec![self.endpoint()],
            ca_file,
            token_file,
            state_dir: dir.join("state"),
            heartbeat_interval_s: 1,
            backoff_cap_s: 2,
            backoff_base_ms: 100,
        }
    }
}

/// Rebinds a port just released by a stopped control plane.
async fn bind_retry(addr: std::net::SocketAddr) -> tokio::net::TcpListener {
    let mut last = None;
    for _ in 0..100 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("could not rebind {addr}: {last:?}");
}

/// The lab's Engine as the lab provider finds it (`FLOTILLA_LAB_DOCKER_HOST`, else the local
/// socket; never `DOCKER_HOST`). Fails loudly when it does not answer: these tests need it.
pub async fn lab_engine() -> flotilla_coordinator::providers::lab::engine::LabEngine {
    flotilla_coordinator::providers::lab::engine::LabEngine::local()
        .await
        .unwrap_or_else(|e| panic!("the lab's Docker Engine must answer: these tests need it: {e}"))
}

/// Polls `f` until it returns `Some`, every 20 ms, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The workspace's target directory for this build profile (`target/debug` in tests):
/// the test executable lives in `<it>/deps/`.
/// A binary of this package (`flotilla-chaos`) lives in it directly.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().map(Path::to_path_buf).expect("the executable's directory");
    if dir.ends_with("deps") { dir.parent().map(Path::to_path_buf).expect("target directory") } else { dir }
}

/// The `flotilla-agent` binary built alongside the tests. Fails loudly when it is missing:
/// `bash tests/run` builds the whole workspace before running tests.
pub fn agent_binary_path() -> PathBuf {
    let p = target_dir().join("flotilla-agent");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`; `bash tests/run` does it)",
        p.display()
    );
    p
}

/// Driving the real `coordinator` binary for one lab cluster, as an operator would: its own
/// fixed state root under the target directory (so a run after a failed one can destroy what
/// that one left), warnings-only logs, the machine's Engine.
pub struct Cli {
    pub cluster: &'static str,
    pub state_root: PathBuf,
}

impl Cli {
    pub fn new(cluster: &'static str) -> Self {
        Self { cluster, state_root: target_dir().join(format!("{cluster}-state")) }
    }

    /// A `coordinator` command with the environment set, stdin closed.
    pub fn command(&self) -> std::process::Command {
        let bin = target_dir().join("coordinator");
        assert!(bin.is_file(), "{} missing: build the workspace first (bash tests/run does)", bin.display());
        let mut c = std::process::Command::new(bin);
        c.env("FLOTILLA_STATE_DIR", &self.state_root)
            .env("FLOTILLA_LOG", "warn")
            .env_remove("DOCKER_HOST")
            .stdin(std::process::Stdio::null());
        c
    }

    /// Runs `coordinator --cluster <cluster> <args>`, echoing what it printed to the test log.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.run_env(&[], args)
    }

    /// [`Cli::run`] with `env` added (e.g. [`moto::AWS_ENV`]).
    pub fn run_env(&self, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
        let out = self
            .command()
            .envs(env.iter().copied())
            .args(["--cluster", self.cluster])
            .args(args)
            .output()
            .expect("run coordinator");
        eprintln!(
            "$ coordinator --cluster {} {}\n{}{}",
            self.cluster,
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}
