//! Headless Chromium (Debian's `chromium`) driven over the DevTools protocol on loopback, for
//! the tests that check the control plane's status page in a real browser
//! (`tests/observability.rs`, `tests/failover.rs`). Chromium talks to loopback only: its
//! background networking is off and every host name but 127.0.0.1 maps to nothing.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A program the tests need from a Debian package, found on `PATH` (`bash tests/run`
/// installs them); fails loudly, naming the package, when it is missing.
pub fn tool(name: &str) -> PathBuf {
    let out = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "`{name}` is missing: `bash tests/run` installs it (apt-get install -y prometheus chromium)"
    );
    PathBuf::from(path)
}

/// A child process killed (and waited for) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Headless Chromium with the DevTools protocol on loopback; no network beyond it.
pub struct Chromium {
    _proc: KillOnDrop,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Chromium {
    /// Starts Chromium on a blank page and returns once its DevTools port is known.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(tool("chromium"))
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-domain-reliability",
                "--disable-breakpad",
                "--disable-client-side-phishing-detection",
                "--metrics-recording-only",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--window-size=1400,1000",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", dir.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let proc = KillOnDrop(child);
        let active = dir.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            let port = std::fs::File::open(&active)
                .ok()
                .and_then(|f| BufReader::new(f).lines().next()?.ok()?.trim().parse::<u16>().ok());
            if let Some(p) = port {
                break p;
            }
            assert!(Instant::now() < deadline, "Chromium did not open its DevTools port within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        };
        Self { _proc: proc, _dir: dir, port }
    }

    /// Opens `url` in a new tab: its DevTools session.
    pub async fn open(&self, url: &str) -> Tab {
        let out = Command::new("curl")
            .args(["-sf", "-X", "PUT", &format!("http://127.0.0.1:{}/json/new?{url}", self.port)])
            .output()
            .expect("curl");
        let target: Value = serde_json::from_slice(&out.stdout).expect("DevTools /json/new answers JSON");
        let ws = target["webSocketDebuggerUrl"].as_str().expect("a DevTools websocket").to_string();
        let (socket, _) = tokio_tungstenite::connect_async(ws).await.expect("DevTools websocket");
        Tab { socket, next_id: 0 }
    }
}

/// One tab's DevTools session.
pub struct Tab {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
}

impl Tab {
    /// One DevTools call: its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(v) => v,
            Err(e) => panic!("{method}: {e}"),
        }
    }

    /// One DevTools call: its result, or the error it answered.
    pub async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.socket.send(Message::text(msg)).await.expect("send");
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .expect("DevTools answers within 30 s")
                .expect("the DevTools socket is open")
                .expect("a message");
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if v["id"] == id {
                    return match v.get("error") {
                        Some(e) => Err(e.clone()),
                        None => Ok(v["result"].clone()),
                    };
                }
            }
        }
    }

    /// Evaluates `js` in the page: its value (null while the page has no context yet, e.g.
    /// mid-navigation).
    pub async fn eval(&mut self, js: &str) -> Value {
        match self.try_call("Runtime.evaluate", json!({ "expression": js, "returnByValue": true })).await {
            Ok(r) => r["result"]["value"].clone(),
            Err(_) => Value::Null,
        }
    }

    /// Evaluates `js` until it is true (bounded).
    pub async fn until(&mut self, what: &str, timeout: Duration, js: &str) {
        let deadline = Instant::now() + timeout;
        while self.eval(js).await != Value::Bool(true) {
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for the page: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
