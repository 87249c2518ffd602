//! Issue 14 — the hostile-client suite, identities: what a stolen or outlived credential can
//! still do against a real control plane (in-process, real TLS and gRPC on loopback), each
//! played by a raw client that does what an attacker would rather than what the agent does.
//!
//! - A host identity stolen, then re-enrolled by the real host: the thief's live session and
//!   log stream end at the re-enrollment, it cannot open another, and a `Renew` it sends is
//!   never answered (before: its session and streams lived on, and `Renew` signed it a fresh
//!   certificate that survived the re-enrollment).
//! - `Renew` is answered only for the host's newest certificate, only past half its life; a
//!   host keeps two certificates, a third renewal drops the oldest.
//! - A certificate's open session and log stream end when it expires (before: never).
//! - An operator certificate is refused at its next call once revoked, cannot mint or revoke
//!   credentials, and the audit names who made each change.
//! - The Engine client certificate `docker` uses cannot call the admin API, and only the local
//!   socket has one issued.

use std::time::{Duration, Instant};

use flotilla_proto::tls;
use flotilla_proto::v1::{self, AgentMessage, agent_message, agent_service_client::AgentServiceClient};
use flotilla_tests::Coord;
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    flotilla_proto::add_protocol_header(&mut req);
    req
}

fn agent_client(coord: &Coord, identity: Option<&tls::Identity>) -> AgentServiceClient<Channel> {
    let ca = tls::certs_from_pem("ca", &coord.ca_pem()).expect("ca");
    let cfg = tls::client_config(&ca, identity).expect("client config");
    AgentServiceClient::new(tls::channel(&coord.endpoint(), cfg).expect("channel"))
}

/// A key made here and the certificate the control plane signed for it.
struct Held {
    identity: tls::Identity,
    serial: String,
}

fn held(cert_pem: &str, key_pem: &str) -> Held {
    let identity = tls::Identity::from_pem("held", cert_pem, key_pem).expect("identity");
    let serial = tls::identity_of(&identity.chain[0]).expect("parses").serial;
    Held { identity, serial }
}

/// Enrolls `host` through the real RPC with a fresh token and key.
async fn enroll_as(coord: &Coord, host: &str) -> Held {
    let token = coord.token(host).await;
    let (key, csr) = flotilla_coordinator::control_plane::pki::new_key_and_csr(host).expect("csr");
    let r = agent_client(coord, None)
        .enroll(with_header(v1::EnrollRequest { token, host_name: host.into(), csr_pem: csr, facts: None }))
        .await
        .expect("enrolls")
        .into_inner();
    held(&r.certificate_pem, &key.serialize_pem())
}

/// A session opened by hand: Hello sent, Welcome read.
struct RawSession {
    tx: mpsc::Sender<AgentMessage>,
    rx: tonic::Streaming<v1::CoordinatorMessage>,
}

async fn open_session(coord: &Coord, id: &tls::Identity, host: &str) -> Result<RawSession, tonic::Status> {
    let (tx, out) = mpsc::channel(8);
    let hello =
        v1::Hello { host_name: host.into(), protocol_version: flotilla_proto::PROTOCOL_VERSION, ..Default::default() };
    tx.send(AgentMessage { body: Some(agent_message::Body::Hello(hello)) }).await.expect("queue hello");
    let mut rx = agent_client(coord, Some(id))
        .session(with_header(tokio_stream::wrappers::ReceiverStream::new(out)))
        .await?
        .into_inner();
    match rx.message().await? {
        Some(_welcome) => Ok(RawSession { tx, rx }),
        None => Err(tonic::Status::unknown("the session ended before its Welcome")),
    }
}

impl RawSession {
    /// Sends a `Renew` with a fresh key's CSR; returns the key (PEM).
    async fn renew(&self, host: &str) -> String {
        let (key, csr) = flotilla_coordinator::control_plane::pki::new_key_and_csr(host).expect("csr");
        let body = agent_message::Body::Renew(v1::RenewRequest { csr_pem: csr });
        // The session may already be closed: then the message goes nowhere, as it should.
        let _ = self.tx.send(AgentMessage { body: Some(body) }).await;
        key.serialize_pem()
    }

    /// The next message `pick` takes (others skipped), or how the session ended.
    async fn next<T>(&mut self, pick: impl Fn(v1::coordinator_message::Body) -> Option<T>) -> Result<T, tonic::Status> {
        let wait = async {
            loop {
                match self.rx.message().await? {
                    Some(m) => {
                        if let Some(t) = m.body.and_then(&pick) {
                            return Ok(t);
                        }
                    }
                    None => return Err(tonic::Status::ok("the session ended")),
                }
            }
        };
        tokio::time::timeout(WAIT, wait).await.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("still open")))
    }

    /// Reads until the session ends; its final status (`DeadlineExceeded` while still open
    /// after [`WAIT`]). A `Renewed` on the way is an error of the test.
    async fn ended(&mut self) -> tonic::Status {
        let renewed = self
            .next(|b| match b {
                v1::coordinator_message::Body::Renewed(r) => Some(r),
                _ => None,
            })
            .await;
        match renewed {
            Ok(r) => panic!("the coordinator renewed a certificate it should have refused: {:.80}", r.certificate_pem),
            Err(status) => status,
        }
    }

    /// Sends a health sample and waits for its ack.
    async fn heartbeat(&mut self) -> Result<(), tonic::Status> {
        let sample = v1::HealthSample { seq: 7, ..Default::default() };
        let _ = self.tx.send(AgentMessage { body: Some(agent_message::Body::Health(sample)) }).await;
        self.next(|b| match b {
            v1::coordinator_message::Body::HeartbeatAck(a) if a.seq == 7 => Some(()),
            _ => None,
        })
        .await
    }

    async fn renewed(&mut self) -> Result<String, tonic::Status> {
        self.next(|b| match b {
            v1::coordinator_message::Body::Renewed(r) => Some(r.certificate_pem),
            _ => None,
        })
        .await
    }
}

/// `coordinator logs HOST --engine -f` over the admin socket, and the `Logs` stream the
/// (raw) agent on `session` opens for it with one line: the follower has received that line.
struct LogStream {
    follower: tonic::Streaming<v1::LogLineOut>,
    acks: tonic::Streaming<v1::LogAck>,
    _lines: mpsc::Sender<v1::LogChunk>,
}

async fn open_log_stream(coord: &Coord, session: &mut RawSession, id: &tls::Identity, host: &str) -> LogStream {
    let req = v1::FollowLogsRequest { hosts: vec![host.into()], engine: true, follow: true, ..Default::default() };
    let mut follower = coord.admin().await.follow_logs(req).await.expect("follow").into_inner();
    let open = session
        .next(|b| match b {
            v1::coordinator_message::Body::OpenLogs(o) => Some(o),
            _ => None,
        })
        .await
        .expect("the coordinator asks for the log stream");
    let (tx, out) = mpsc::channel(8);
    let line = v1::LogLine { unix_ns: 1, text: "a line".into(), ..Default::default() };
    tx.send(v1::LogChunk { stream_id: open.stream_id, lines: vec![line], ..Default::default() }).await.expect("queue");
    let mut acks = agent_client(coord, Some(id))
        .logs(with_header(tokio_stream::wrappers::ReceiverStream::new(out)))
        .await
        .expect("logs stream")
        .into_inner();
    acks.message().await.expect("ack").expect("acked");
    let first = follower.message().await.expect("follower").expect("a line");
    assert_eq!(first.text, "a line");
    LogStream { follower, acks, _lines: tx }
}

impl LogStream {
    /// How the agent's `Logs` RPC ended, and the follower's last word on the source.
    async fn ended(&mut self) -> (tonic::Status, String) {
        let acks = async {
            loop {
                match self.acks.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return tonic::Status::ok("ended"),
                    Err(s) => return s,
                }
            }
        };
        let agent =
            tokio::time::timeout(WAIT, acks).await.unwrap_or_else(|_| tonic::Status::deadline_exceeded("still open"));
        let follower = tokio::time::timeout(WAIT, self.follower.message()).await;
        let said = match follower {
            Ok(Ok(Some(l))) => l.error,
            other => format!("{other:?}"),
        };
        (agent, said)
    }
}

#[tokio::test]
async fn issue_14_a_stolen_then_re_enrolled_identity_loses_its_session_and_logs_and_cannot_renew() {
    let coord = Coord::start(|_| {}).await;
    let stolen = enroll_as(&coord, "node0").await;
    let mut thief = open_session(&coord, &stolen.identity, "node0").await.expect("the thief's session");
    let mut logs = open_log_stream(&coord, &mut thief, &stolen.identity, "node0").await;

    // The real host enrolls again: the thief's session and log stream end now, saying why.
    let real = enroll_as(&coord, "node0").await;
    // Past half the stolen certificate's life, so only its identity can stop a renewal.
    coord.clock.advance(16 * DAY);
    thief.renew("node0").await;
    let st = thief.ended().await;
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    assert!(st.message().contains("enrolled again"), "{}", st.message());
    let (agent, follower) = logs.ended().await;
    assert_eq!(agent.code(), Code::PermissionDenied, "{agent:?}");
    assert!(follower.contains("no longer valid"), "the follower was not told: {follower}");

    // It cannot come back; the real host can.
    let e = open_session(&coord, &stolen.identity, "node0").await.err().expect("the stolen certificate is refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains(&stolen.serial) && e.message().contains("no longer valid"), "{}", e.message());
    open_session(&coord, &real.identity, "node0").await.expect("the real host's session");
    let audit = coord.admin().await.audit(v1::AuditRequest { limit: 0 }).await.expect("audit").into_inner();
    assert!(!audit.events.iter().any(|e| e.kind == "cert.renewed"), "{:?}", audit.events);
}

#[tokio::test]
async fn issue_14_renew_only_for_the_current_certificate_past_half_its_life_and_two_are_kept() {
    let coord = Coord::start(|_| {}).await; // 30-day certificates
    let a = enroll_as(&coord, "node0").await;

    // Too early: refused, the session ends saying from when.
    let mut s = open_session(&coord, &a.identity, "node0").await.expect("session");
    s.renew("node0").await;
    let st = s.ended().await;
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    assert!(st.message().contains("too early"), "{}", st.message());

    // Past half its life (by the control plane's clock): renewed on the open session, which
    // then holds the new certificate B — and renews B in turn (certificates are issued on the
    // real clock, so B is past its half-life by the moved one).
    coord.clock.advance(16 * DAY);
    let mut s = open_session(&coord, &a.identity, "node0").await.expect("session");
    let key = s.renew("node0").await;
    let b = held(&s.renewed().await.expect("A renews"), &key);
    s.renew("node0").await;
    s.renewed().await.expect("the session holds B now, and B renews");
    s.heartbeat().await.expect("the session holds");

    // Two certificates are kept: B and C. A, a third, is refused; B opens a session but is
    // not the current one, and cannot renew.
    let e = open_session(&coord, &a.identity, "node0").await.err().expect("A was dropped");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains(&a.serial), "{}", e.message());
    let mut s = open_session(&coord, &b.identity, "node0").await.expect("B is kept");
    s.renew("node0").await;
    let st = s.ended().await;
    assert!(st.message().contains("not the newest"), "{}", st.message());

    let audit = coord.admin().await.audit(v1::AuditRequest { limit: 0 }).await.expect("audit").into_inner();
    assert_eq!(audit.events.iter().filter(|e| e.kind == "cert.renewed").count(), 2);
    let refused = audit.refusals.iter().find(|r| r.kind == "cert.renew.refused").expect("refusals counted");
    assert_eq!(refused.count, 2, "{refused:?}");
}

#[tokio::test]
async fn issue_14_an_expired_certificates_open_session_and_log_stream_are_ended() {
    // 4-second certificates, renewed by nobody: the raw client does not renew.
    let coord = Coord::start(|c| c.host_cert_validity = Duration::from_secs(4)).await;
    let a = enroll_as(&coord, "node0").await;
    let mut s = open_session(&coord, &a.identity, "node0").await.expect("session");
    let mut logs = open_log_stream(&coord, &mut s, &a.identity, "node0").await;
    let t = Instant::now();
    let st = s.ended().await;
    assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    assert!(st.message().contains("expired"), "{}", st.message());
    assert!(t.elapsed() < Duration::from_secs(6), "ended {:?} after the session opened", t.elapsed());
    let (agent, follower) = logs.ended().await;
    assert_eq!(agent.code(), Code::Unauthenticated, "{agent:?}");
    assert!(follower.contains("expired"), "the follower was not told: {follower}");
}

/// An operator bundle for `name`, issued over the local socket, and a client that uses it.
async fn operator(coord: &Coord, name: &str) -> (v1::admin_client::AdminClient<Channel>, String) {
    let (key, csr) = flotilla_coordinator::control_plane::pki::new_key_and_csr(name).expect("csr");
    let r = coord
        .admin()
        .await
        .issue_operator_certificate(v1::IssueOperatorCertificateRequest { operator_name: name.into(), csr_pem: csr })
        .await
        .expect("operator certificate")
        .into_inner();
    let bundle = coord.dir.path().join(name);
    std::fs::create_dir_all(&bundle).expect("dir");
    std::fs::write(bundle.join("ca.pem"), r.ca_chain_pem.join("")).expect("ca");
    std::fs::write(bundle.join("cert.pem"), &r.certificate_pem).expect("cert");
    std::fs::write(bundle.join("key.pem"), key.serialize_pem()).expect("key");
    std::fs::write(bundle.join("endpoint"), coord.endpoint()).expect("endpoint");
    let serial = held(&r.certificate_pem, &key.serialize_pem()).serial;
    (flotilla_coordinator::admin_client::connect_remote(&bundle).expect("remote"), serial)
}

fn csr(name: &str) -> String {
    flotilla_coordinator::control_plane::pki::new_key_and_csr(name).expect("csr").1
}

#[tokio::test]
async fn issue_14_a_revoked_operator_certificate_is_refused_at_its_next_call_and_cannot_mint_itself() {
    let coord = Coord::start(|_| {}).await;
    let (mut alice, serial) = operator(&coord, "alice").await;
    alice.status(v1::StatusRequest::default()).await.expect("an operator may call Status");
    alice.create_token(v1::CreateTokenRequest { host_name: "node7".into(), ttl_s: 0 }).await.expect("and mutate");

    // Credentials are minted and revoked only over the local socket.
    let mint = v1::IssueOperatorCertificateRequest { operator_name: "mallory".into(), csr_pem: csr("mallory") };
    let e = alice.issue_operator_certificate(mint).await.expect_err("an operator mints an operator");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("local admin socket"), "{}", e.message());
    let revoke = v1::RevokeOperatorCertificateRequest { operator_name: "alice".into() };
    let e = alice.revoke_operator_certificate(revoke.clone()).await.expect_err("an operator revokes");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Revoked: refused at the very next call, on the connection it already holds.
    let r = coord.admin().await.revoke_operator_certificate(revoke).await.expect("revoke").into_inner();
    assert_eq!(r.serials, vec![serial.clone()]);
    let e = alice.status(v1::StatusRequest::default()).await.expect_err("a revoked operator");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("revoked") && e.message().contains(&serial), "{}", e.message());
    let e = alice
        .create_token(v1::CreateTokenRequest { host_name: "node8".into(), ttl_s: 0 })
        .await
        .expect_err("a revoked operator mutates");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // The list says so, and the audit names who did what.
    let admin = &mut coord.admin().await;
    let list = admin.list_operator_certificates(v1::ListOperatorCertificatesRequest {}).await.expect("list");
    let certs = list.into_inner().certificates;
    assert_eq!(certs.len(), 1);
    assert!(
        certs[0].revoked_unix_ms > 0 && certs[0].serial == serial && certs[0].issued_by.starts_with("local socket")
    );
    let audit = admin.audit(v1::AuditRequest { limit: 0 }).await.expect("audit").into_inner();
    let by = |kind: &str, host: &str| {
        audit.events.iter().find(|e| e.kind == kind && e.host_name == host).map(|e| e.actor.clone()).unwrap_or_default()
    };
    let alice_made = by("token.created", "node7");
    assert!(alice_made.starts_with(&format!("operator alice (serial {serial}) from 127.0.0.1:")), "{alice_made}");
    assert!(by("operator.cert.revoked", "").starts_with("local socket"), "{:?}", audit.events);
    assert!(by("operator.cert.issued", "").starts_with("local socket"), "{:?}", audit.events);
    assert_eq!(by("token.created", "node8"), "", "the refused call changed nothing");
}

#[tokio::test]
async fn issue_14_the_engine_client_certificate_cannot_call_the_admin_api() {
    let coord = Coord::start(|_| {}).await;
    let (key, csr) = flotilla_coordinator::control_plane::pki::new_key_and_csr("docker").expect("csr");
    let r = coord
        .admin()
        .await
        .issue_engine_client_certificate(v1::IssueEngineClientCertificateRequest {
            client_name: "docker".into(),
            csr_pem: csr,
        })
        .await
        .expect("Engine client certificate")
        .into_inner();
    let engine_client = held(&r.certificate_pem, &key.serialize_pem());
    let id = tls::identity_of(&engine_client.identity.chain[0]).expect("parses");
    assert_eq!(id.organizational_unit, flotilla_proto::OU_ENGINE_CLIENT);

    // The admin API, with the certificate `docker` uses: refused (its CA is not one the
    // control plane trusts), and nothing changes.
    let ca = tls::certs_from_pem("ca", &coord.ca_pem()).expect("ca");
    let cfg = tls::client_config(&ca, Some(&engine_client.identity)).expect("config");
    let mut admin = v1::admin_client::AdminClient::new(tls::channel(&coord.endpoint(), cfg).expect("channel"));
    admin.status(v1::StatusRequest::default()).await.expect_err("the Engine client on the admin API");
    admin
        .create_token(v1::CreateTokenRequest { host_name: "node9".into(), ttl_s: 0 })
        .await
        .expect_err("the Engine client mints a join token");
    open_session(&coord, &engine_client.identity, "docker").await.err().expect("a session as a host");
    let audit = coord.admin().await.audit(v1::AuditRequest { limit: 0 }).await.expect("audit").into_inner();
    assert!(!audit.events.iter().any(|e| e.host_name == "node9"), "{:?}", audit.events);
    let issued = audit.events.iter().find(|e| e.kind == "engine.client.cert.issued").expect("the issue is audited");
    assert!(issued.actor.starts_with("local socket"), "{issued:?}");

    // Over the agent port, even an operator cannot have one issued.
    let (mut alice, _) = operator(&coord, "alice").await;
    let e = alice
        .issue_engine_client_certificate(v1::IssueEngineClientCertificateRequest {
            client_name: "docker".into(),
            csr_pem: flotilla_coordinator::control_plane::pki::new_key_and_csr("docker").expect("csr").1,
        })
        .await
        .expect_err("an operator mints an Engine client certificate");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}
