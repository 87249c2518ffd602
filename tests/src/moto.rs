//! moto's EC2 server on loopback, from the venv `bash tests/run` prepares
//! (`target/moto-venv`), and a fault proxy in front of it: the EC2 API the AWS provider is
//! tested against. Every client the tests make has static test credentials, an explicit
//! region and the metadata service disabled, so nothing ever leaves loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const REGION: &str = "us-east-1";

/// The environment every AWS client in the tests (the CLI included) runs with.
pub const AWS_ENV: [(&str, &str); 6] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", REGION),
    // Never the instance metadata service, never the operator's own profiles.
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/dev/null"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
];

/// `target/moto-venv/bin/moto_server`; fails loudly when `bash tests/run` did not make it.
pub fn moto_server_path() -> PathBuf {
    let p = crate::target_dir().parent().map(|t| t.join("moto-venv/bin/moto_server")).expect("target dir");
    assert!(
        p.is_file(),
        "{} missing: `bash tests/run` prepares moto's venv (python3 -m venv target/moto-venv && target/moto-venv/bin/pip install 'moto[server]==5.2.5')",
        p.display()
    );
    p
}

/// A moto server on a free loopback port, killed on drop.
pub struct Moto {
    child: Child,
    pub addr: SocketAddr,
}

impl Moto {
    /// Starts moto; `env` adds settings (e.g. `INITIAL_NO_AUTH_ACTION_COUNT=0` to enforce
    /// credentials).
    pub fn start(env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let mut cmd = Command::new(moto_server_path());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start moto_server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on {addr} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, addr }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An EC2 client on `endpoint` with the tests' credentials, to look at what the provider made.
pub async fn ec2(endpoint: &str) -> aws_sdk_ec2::Client {
    let creds = aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "flotilla-tests");
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .region(aws_sdk_ec2::config::Region::new(REGION))
        .credentials_provider(creds)
        .endpoint_url(endpoint)
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

/// A proxy in front of moto that answers the first `throttle` requests with EC2's
/// `RequestLimitExceeded` (HTTP 503) and the next `unavailable` with a bare 503, then
/// forwards everything.
pub struct FaultProxy {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub faulted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// What the proxy breaks.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// The first this many requests: `RequestLimitExceeded` (503).
    pub throttle: usize,
    /// The next this many: a bare `Unavailable` 503.
    pub unavailable: usize,
    /// Every RunInstances into this subnet: `InsufficientInstanceCapacity` (500), as EC2
    /// answers when a zone has no capacity for the type.
    pub no_capacity_in_subnet: Option<String>,
    /// Every call of this EC2 action (e.g. `CreateSecurityGroup`): `UnauthorizedOperation`
    /// (403), as EC2 answers an identity whose policy lacks it. (moto's own IAM enforcement
    /// cannot be used: it refuses the Rust SDK's SigV4 signatures outright.)
    pub deny_action: Option<String>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr, throttle: usize, unavailable: usize) -> Self {
        Self::with(upstream, Faults { throttle, unavailable, ..Default::default() }).await
    }

    pub async fn with(upstream: SocketAddr, faults: Faults) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let faulted = Arc::new(AtomicUsize::new(0));
        let (r, f) = (requests.clone(), faulted.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { return };
                let (r, f, faults) = (r.clone(), f.clone(), faults.clone());
                tokio::spawn(async move {
                    let _ = serve_conn(conn, upstream, faults, r, f).await;
                });
            }
        });
        Self { addr, requests, faulted, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_conn(
    mut conn: tokio::net::TcpStream,
    upstream: SocketAddr,
    faults: Faults,
    requests: Arc<AtomicUsize>,
    faulted: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let (throttle, unavailable) = (faults.throttle, faults.unavailable);
    let mut buf = Vec::new();
    loop {
        // One request: headers, then Content-Length bytes of body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let request: Vec<u8> = buf.drain(..head_end + len).collect();
        let i = requests.fetch_add(1, Ordering::SeqCst);
        let body_text = String::from_utf8_lossy(&request[head_end..]).to_string();
        let fault = if let Some(subnet) = &faults.no_capacity_in_subnet
            && body_text.contains("Action=RunInstances")
            && body_text.contains(&format!("SubnetId={subnet}"))
        {
            Some((
                "500 Internal Server Error",
                "InsufficientInstanceCapacity",
                "We currently do not have sufficient t3.small capacity in the Availability Zone you requested."
                    .to_string(),
            ))
        } else if let Some(action) = &faults.deny_action
            && body_text.contains(&format!("Action={action}&"))
        {
            Some((
                "403 Forbidden",
                "UnauthorizedOperation",
                format!(
                    "You are not authorized to perform this operation. User: arn:aws:iam::123456789012:user/reader is not authorized to perform: ec2:{action} on resource: arn:aws:ec2:us-east-1:123456789012:security-group/*. Encoded authorization failure message: c2VjcmV0"
                ),
            ))
        } else if i < throttle {
            Some(("503 Service Unavailable", "RequestLimitExceeded", "Request limit exceeded.".to_string()))
        } else if i < throttle + unavailable {
            Some(("503 Service Unavailable", "Unavailable", "The server is overloaded.".to_string()))
        } else {
            None
        };
        if let Some((status, code, message)) = fault {
            faulted.fetch_add(1, Ordering::SeqCst);
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
            );
            let resp =
                format!("HTTP/1.1 {status}\r\ncontent-type: text/xml\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            conn.write_all(resp.as_bytes()).await?;
            continue;
        }
        // Forward, one upstream connection per request, and relay the whole answer.
        let mut head_lines: Vec<&str> =
            head.trim_end().split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect();
        head_lines.push("Connection: close");
        let mut up = tokio::net::TcpStream::connect(upstream).await?;
        up.write_all(format!("{}\r\n\r\n", head_lines.join("\r\n")).as_bytes()).await?;
        up.write_all(&request[head_end..]).await?;
        let mut answer = Vec::new();
        up.read_to_end(&mut answer).await?;
        // This connection ends with this answer: say so, so the client does not reuse it.
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4).unwrap_or(answer.len());
        let ahead = String::from_utf8_lossy(&answer[..split]).to_string();
        let mut lines: Vec<&str> =
            ahead.trim_end().split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect();
        lines.push("Connection: close");
        conn.write_all(format!("{}\r\n\r\n", lines.join("\r\n")).as_bytes()).await?;
        conn.write_all(&answer[split..]).await?;
        return Ok(());
    }
}

/// Instances EC2 (moto) holds for `cluster` that are not terminated.
pub async fn live_instances(ec2: &aws_sdk_ec2::Client, cluster: &str) -> Vec<aws_sdk_ec2::types::Instance> {
    let r = ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{}", flotilla_coordinator::providers::aws::TAG_CLUSTER))
                .values(cluster)
                .build(),
        )
        .send()
        .await
        .expect("describe instances");
    r.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()).is_some_and(|n| n.as_str() != "terminated"))
        .cloned()
        .collect()
}

/// The security groups EC2 (moto) holds tagged for `cluster`.
pub async fn cluster_groups(ec2: &aws_sdk_ec2::Client, cluster: &str) -> Vec<aws_sdk_ec2::types::SecurityGroup> {
    ec2.describe_security_groups()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{}", flotilla_coordinator::providers::aws::TAG_CLUSTER))
                .values(cluster)
                .build(),
        )
        .send()
        .await
        .expect("describe groups")
        .security_groups()
        .to_vec()
}

/// The value of tag `k` of instance `i` ("" when absent).
pub fn tag(i: &aws_sdk_ec2::types::Instance, k: &str) -> String {
    i.tags().iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).unwrap_or_default().to_string()
}
