//! Remote log streaming, end to end: `FollowLogs` on the admin API → `OpenLogStream` on the
//! agent's session → the agent's `Logs` RPC → the follower. Real TLS on loopback, real
//! gRPC, and the machine's real Docker Engine running a container from a local image (the
//! lab's busybox; nothing is pulled). Containers are labelled `flotilla.test=logs` and
//! removed when the test ends, failed or not.

use std::process::Command;
use std::time::Duration;

use flotilla_agent::AgentHandle;
use flotilla_proto::v1::{self, log_line};
use flotilla_tests::Coord;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);
/// The lab's hello image (FROM scratch with `/bin/busybox`), built locally from its recipe
/// (`coordinator lab-images`; `bash tests/run` builds it first). The newest build wins.
fn hello_image() -> String {
    let out = std::process::Command::new("docker")
        .args(["image", "ls", "--filter", "label=flotilla.image=hello", "--format", "{{.Repository}}:{{.Tag}}"])
        .env_remove("DOCKER_HOST")
        .output()
        .expect("docker CLI");
    let tag = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string();
    assert!(
        tag.starts_with("flotilla/lab-hello:"),
        "the lab's hello image is missing: build the lab images (`coordinator lab-images`; `bash tests/run` does it)"
    );
    tag
}

/// A container of this test; removed (with its logs) when dropped.
struct Container {
    name: String,
}

impl Container {
    /// Runs `script` under busybox `sh` in the background.
    fn run(script: &str) -> Self {
        let name = format!("flotilla-test-logs-{:08x}", rand::random::<u32>());
        let image = hello_image();
        let out = docker(&[
            "run",
            "--detach",
            "--pull",
            "never",
            "--name",
            &name,
            "--label",
            "flotilla.test=logs",
            "--entrypoint",
            "/bin/busybox",
            &image,
            "sh",
            "-c",
            script,
        ]);
        assert!(
            out.status.success(),
            "docker run {image} failed (the image must be local; nothing is pulled): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "--force", "--volumes", &self.name]);
    }
}

/// `docker` against the machine's own Engine.
fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .output()
        .expect("docker CLI")
}

/// A script printing `line 1` … `line n` on stdout, `pause` seconds apart. (One stream:
/// the Engine reads stdout and stderr separately, so it does not keep their lines in the
/// program's order when it is busy.)
fn numbered(n: u32, pause: &str) -> String {
    format!("for i in $(seq 1 {n}); do echo line $i; sleep {pause}; done")
}

async fn connected_agent(coord: &Coord, host: &str) -> AgentHandle {
    let mut agent = flotilla_agent::start(coord.agent_config(host).await).await.expect("agent starts");
    agent.wait_for(WAIT, |s| s.connected).await.expect("agent connects");
    agent
}

fn request(host: &str, container: &str, follow: bool, since_unix_ns: i64) -> v1::FollowLogsRequest {
    v1::FollowLogsRequest {
        hosts: vec![host.into()],
        containers: vec![container.into()],
        follow,
        since_unix_ns,
        ..Default::default()
    }
}

async fn follow(coord: &Coord, req: v1::FollowLogsRequest) -> Result<tonic::Streaming<v1::LogLineOut>, tonic::Status> {
    coord.admin().await.follow_logs(req).await.map(|r| r.into_inner())
}

/// Everything a stream delivers until it ends: the lines, the source's end (eof or error)
/// if it came, and the stream's own end (OK, or the status it failed with).
struct Received {
    lines: Vec<v1::LogLineOut>,
    end: Option<v1::LogLineOut>,
    status: Result<(), tonic::Status>,
}

async fn receive(mut stream: tonic::Streaming<v1::LogLineOut>, mut each: impl FnMut(&v1::LogLineOut)) -> Received {
    let mut r = Received { lines: Vec::new(), end: None, status: Ok(()) };
    loop {
        match tokio::time::timeout(WAIT, stream.message()).await {
            Err(_) => panic!("no log line for {WAIT:?} (got {} lines so far)", r.lines.len()),
            Ok(Ok(None)) => return r,
            Ok(Err(status)) => {
                r.status = Err(status);
                return r;
            }
            Ok(Ok(Some(l))) => {
                each(&l);
                if l.eof || !l.error.is_empty() {
                    assert!(r.end.is_none(), "a second end for one source: {l:?}");
                    r.end = Some(l);
                } else {
                    assert!(r.end.is_none(), "a line after the source's end: {l:?}");
                    r.lines.push(l);
                }
            }
        }
    }
}

/// Asserts `lines` are exactly `line {first}` … `line {last}` from stdout, in order, once
/// each, with strictly increasing timestamps.
fn assert_numbered(lines: &[v1::LogLineOut], first: u32, last: u32) {
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    let want: Vec<String> = (first..=last).map(|i| format!("line {i}")).collect();
    if texts != want {
        let missing: Vec<_> = want.iter().filter(|w| !texts.contains(&w.as_str())).collect();
        let mut seen = std::collections::HashSet::new();
        let repeated: Vec<_> = texts.iter().filter(|t| !seen.insert(**t)).collect();
        let disorder = texts.iter().zip(&want).position(|(t, w)| *t != w.as_str()).map(|i| {
            lines[i.saturating_sub(3)..(i + 3).min(lines.len())]
                .iter()
                .map(|l| format!("{} @{} ({})", l.text, l.unix_ns, l.stream))
                .collect::<Vec<_>>()
        });
        panic!(
            "expected line {first}..={last} once each, in order; got {} lines, missing {missing:?}, repeated {repeated:?}, first out of place: {disorder:?}",
            texts.len()
        );
    }
    for w in lines.windows(2) {
        assert!(w[0].unix_ns < w[1].unix_ns, "timestamps not increasing: {w:?}");
    }
    for l in lines {
        assert_eq!(l.stream, log_line::Stream::Stdout as i32, "stream of {:?}", l.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_a_container_arrives_once_in_order() {
    let coord = Coord::start(|_| {}).await;
    let agent = connected_agent(&coord, "logs0").await;
    let c = Container::run(&numbered(300, "0.01"));

    let stream = follow(&coord, request("logs0", &c.name, true, 0)).await.expect("follow");
    let got = receive(stream, |_| {}).await;
    assert!(got.status.is_ok(), "stream failed: {:?}", got.status);
    let end = got.end.expect("the container's exit ends the source");
    assert!(end.eof && end.error.is_empty(), "{end:?}");
    assert_eq!((end.host.as_str(), end.source.as_str()), ("logs0", c.name.as_str()));
    assert!(got.lines.iter().all(|l| l.host == "logs0" && l.source == c.name));
    assert_numbered(&got.lines, 1, 300);

    // Not following, the last 5: then the stream ends by itself.
    let mut req = request("logs0", &c.name, false, 0);
    req.tail = 5;
    let tail = receive(follow(&coord, req).await.expect("tail"), |_| {}).await;
    assert!(tail.status.is_ok(), "{:?}", tail.status);
    assert_numbered(&tail.lines, 296, 300);
    assert_eq!(tail.lines.last().map(|l| l.unix_ns), got.lines.last().map(|l| l.unix_ns), "same stamps on a re-read");

    // From a resume point: only what follows it.
    let since = got.lines[149].unix_ns;
    let rest = receive(follow(&coord, request("logs0", &c.name, false, since)).await.expect("since"), |_| {}).await;
    assert_numbered(&rest.lines, 151, 300);

    // stderr is told apart from stdout.
    let both = Container::run("echo out; echo err >&2");
    let got = receive(follow(&coord, request("logs0", &both.name, true, 0)).await.expect("follow"), |_| {}).await;
    let mut seen: Vec<(String, i32)> = got.lines.into_iter().map(|l| (l.text, l.stream)).collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("err".to_string(), log_line::Stream::Stderr as i32),
            ("out".to_string(), log_line::Stream::Stdout as i32)
        ]
    );
    agent.stop().await;
}

/// The control plane restarts while a container is still printing. The follower's stream
/// is cut (UNAVAILABLE); once the agent is back it asks again with `since_unix_ns` = the
/// last `unix_ns` it received. Nothing is lost or repeated because every line of a source
/// has a strictly increasing `unix_ns` that a re-read reproduces (the Engine's timestamp,
/// moved only when not after its predecessor's, re-read from well before the resume point), and
/// the agent sends only lines strictly after the resume point — while the follower, on its
/// side, passes on only lines after the last one it passed on, which covers the agent
/// re-sending what was sent but not acknowledged when its `Logs` RPC broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_restart_mid_stream_loses_and_repeats_nothing() {
    let mut coord = Coord::start(|_| {}).await;
    let mut agent = connected_agent(&coord, "logs1").await;
    let c = Container::run(&numbered(600, "0.01"));

    let stream = follow(&coord, request("logs1", &c.name, true, 0)).await.expect("follow");
    let (count_tx, mut count) = tokio::sync::watch::channel(0usize);
    let first = tokio::spawn(receive(stream, move |_| count_tx.send_modify(|n| *n += 1)));
    tokio::time::timeout(WAIT, count.wait_for(|n| *n >= 50))
        .await
        .expect("50 lines within the wait")
        .expect("the first stream is being read");
    coord.restart().await;

    let first = first.await.expect("first reader");
    assert!(first.end.is_none(), "the source ended before the restart: make the container slower");
    let status = first.status.expect_err("a cut stream does not end with OK");
    assert!(matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled), "cut with {status:?}");
    let cut_at = first.lines.len();
    assert!((50..600).contains(&cut_at), "cut after {cut_at} lines");
    assert_numbered(&first.lines, 1, cut_at as u32);

    agent
        .wait_for(WAIT, |s| s.connected && s.sessions_opened >= 2)
        .await
        .expect("the agent reconnects to the restarted control plane");
    let since = first.lines.last().map(|l| l.unix_ns).unwrap_or(0);
    let second =
        receive(follow(&coord, request("logs1", &c.name, true, since)).await.expect("follow again"), |_| {}).await;
    assert!(second.status.is_ok(), "{:?}", second.status);
    assert!(second.end.as_ref().is_some_and(|e| e.eof), "{:?}", second.end);

    let mut all = first.lines;
    all.extend(second.lines);
    assert_numbered(&all, 1, 600);
    agent.stop().await;
}

/// A TCP relay to the control plane that can cut every connection through it at once (a
/// network fault between agent and coordinator; the control plane itself stays up).
struct Relay {
    addr: std::net::SocketAddr,
    cuts: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let (cuts, _) = tokio::sync::watch::channel(0u64);
        let cut_rx = cuts.subscribe();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut = cut_rx.clone();
                cut.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { addr, cuts, task }
    }

    /// Drops every connection open now; new ones go through.
    fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The agent's connections drop mid-stream while the control plane (and so the follower)
/// lives on: the agent dials again and resumes from the last line the coordinator
/// acknowledged; lines it sends again are dropped by the follower, which passes on only
/// lines after the last it passed on. One `FollowLogs` stream sees every line once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_agent_connection_resumes_without_loss_or_repeats() {
    let coord = Coord::start(|_| {}).await;
    let relay = Relay::start(coord.addr).await;
    let mut config = coord.agent_config("logs5").await;
    config.coordinator = vec![relay.addr.to_string()];
    let mut agent = flotilla_agent::start(config).await.expect("agent starts");
    agent.wait_for(WAIT, |s| s.connected).await.expect("agent connects");
    let c = Container::run(&numbered(600, "0.01"));

    let stream = follow(&coord, request("logs5", &c.name, true, 0)).await.expect("follow");
    let (count_tx, mut count) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(receive(stream, move |_| count_tx.send_modify(|n| *n += 1)));
    for (at, sessions) in [(100, 2), (250, 3)] {
        tokio::time::timeout(WAIT, count.wait_for(|n| *n >= at))
            .await
            .expect("lines keep coming")
            .expect("the stream is being read");
        relay.cut();
        agent.wait_for(WAIT, |s| s.connected && s.sessions_opened >= sessions).await.expect("the agent reconnects");
    }
    let got = reader.await.expect("reader");
    assert!(got.status.is_ok(), "{:?}", got.status);
    assert!(got.end.as_ref().is_some_and(|e| e.eof), "{:?}", got.end);
    assert_numbered(&got.lines, 1, 600);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_container_is_reported_with_the_engines_message() {
    let coord = Coord::start(|_| {}).await;
    let agent = connected_agent(&coord, "logs2").await;
    let name = format!("flotilla-test-logs-missing-{:08x}", rand::random::<u32>());
    let got = receive(follow(&coord, request("logs2", &name, true, 0)).await.expect("follow"), |_| {}).await;
    assert!(got.status.is_ok(), "{:?}", got.status);
    assert!(got.lines.is_empty());
    let end = got.end.expect("the source's end");
    assert!(!end.eof, "{end:?}");
    assert!(
        end.error.contains("No such container") && end.error.contains(&name),
        "not the Engine's message: {:?}",
        end.error
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_hosts_and_empty_selections_are_refused_up_front() {
    let coord = Coord::start(|_| {}).await;
    let agent = connected_agent(&coord, "logs3").await;
    let unknown = follow(&coord, request("nobody", "x", false, 0)).await.expect_err("unknown host");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    // A host with no role and no container named: nothing to follow.
    let nothing = follow(&coord, v1::FollowLogsRequest { hosts: vec!["logs3".into()], ..Default::default() })
        .await
        .expect_err("nothing to follow");
    assert_eq!(nothing.code(), Code::InvalidArgument, "{nothing:?}");
    // A role nobody runs.
    let role = follow(&coord, v1::FollowLogsRequest { role: v1::Role::Manager as i32, ..Default::default() })
        .await
        .expect_err("no manager");
    assert_eq!(role.code(), Code::InvalidArgument, "{role:?}");
    agent.stop().await;
}

/// `coordinator logs` (the real binary) prints `host/source | text`, plain when stdout is
/// not a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_host_source_and_text() {
    // The CLI finds a cluster's admin socket at <state root>/<cluster>.
    let coord = Coord::start(|c| c.state_dir = c.state_dir.with_file_name("test")).await;
    let agent = connected_agent(&coord, "logs4").await;
    let c = Container::run("echo first; echo second; echo third");
    let bin = flotilla_tests::target_dir().join("coordinator");
    assert!(bin.is_file(), "{} missing: build the workspace first", bin.display());
    let root = coord.dir.path().to_path_buf();
    let out = tokio::process::Command::new(&bin)
        .arg("--state-root")
        .arg(&root)
        .args(["--cluster", "test", "logs", "logs4", "--container", &c.name, "--follow"])
        .env_remove("FLOTILLA_REMOTE")
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(WAIT, out).await.expect("the CLI ends").expect("run the CLI");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let want: String = ["first", "second", "third"].iter().map(|t| format!("logs4/{} | {t}\n", c.name)).collect();
    assert_eq!(stdout, want);
    agent.stop().await;
}

/// `coordinator logs -f` shows a line as soon as it arrives: its output is buffered (a write
/// per line cost a system call each), but flushed whenever no line is waiting — here a
/// container that prints once and then stays quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_a_followed_line_while_the_source_is_quiet() {
    use tokio::io::AsyncBufReadExt;
    let coord = Coord::start(|c| c.state_dir = c.state_dir.with_file_name("test")).await;
    let agent = connected_agent(&coord, "logs5").await;
    let c = Container::run("echo first; sleep 120");
    let bin = flotilla_tests::target_dir().join("coordinator");
    assert!(bin.is_file(), "{} missing: build the workspace first", bin.display());
    let mut cli = tokio::process::Command::new(&bin)
        .arg("--state-root")
        .arg(coord.dir.path())
        .args(["--cluster", "test", "logs", "logs5", "--container", &c.name, "--follow"])
        .env_remove("FLOTILLA_REMOTE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the CLI");
    let mut lines = tokio::io::BufReader::new(cli.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the line is shown while its container still runs (flushed when no line waits)")
        .expect("read the CLI's output");
    assert_eq!(first, Some(format!("logs5/{} | first", c.name)));
    let _ = cli.kill().await;
    agent.stop().await;
}
