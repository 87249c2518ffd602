//! Issue 2 — the foundation: enrollment with one-time tokens, mTLS sessions, revocation,
//! restarts, renewal, status. Real TLS on loopback, real gRPC, real redb.

use std::time::Duration;

use flotilla_proto::tls;
use flotilla_proto::v1::{self, AgentMessage, EnrollRequest, agent_message, agent_service_client::AgentServiceClient};
use flotilla_tests::{Coord, eventually};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

fn csr_for(cn: &str) -> (KeyPair, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    let csr = params.serialize_request(&key).expect("csr").pem().expect("pem");
    (key, csr)
}

fn client(coord: &Coord, identity: Option<&tls::Identity>) -> AgentServiceClient<Channel> {
    let ca = tls::certs_from_pem("ca", &coord.ca_pem()).expect("ca");
    let cfg = tls::client_config(&ca, identity).expect("client config");
    AgentServiceClient::new(tls::channel(&coord.endpoint(), cfg).expect("channel"))
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    flotilla_proto::add_protocol_header(&mut req);
    req
}

async fn enroll(coord: &Coord, token: &str, host: &str, csr: &str) -> Result<v1::EnrollResponse, tonic::Status> {
    client(coord, None)
        .enroll(with_header(EnrollRequest {
            token: token.into(),
            host_name: host.into(),
            csr_pem: csr.into(),
            facts: Some(v1::HostFacts { hostname: host.into(), ..Default::default() }),
        }))
        .await
        .map(|r| r.into_inner())
}

async fn host_names(coord: &Coord) -> Vec<String> {
    coord.status().await.hosts.into_iter().map(|h| h.name).collect()
}

/// The kinds in the audit: its events', then its counted refusals'.
async fn audit_kinds(coord: &Coord) -> Vec<String> {
    let audit = coord.admin().await.audit(v1::AuditRequest { limit: 0 }).await.expect("audit").into_inner();
    audit.events.into_iter().map(|e| e.kind).chain(audit.refusals.into_iter().map(|r| r.kind)).collect()
}

/// An identity (key + signed cert) for `host`, enrolled through the real RPC.
async fn enrolled_identity(coord: &Coord, host: &str) -> tls::Identity {
    let token = coord.token(host).await;
    let (key, csr) = csr_for(host);
    let resp = enroll(coord, &token, host, &csr).await.expect("enroll");
    tls::Identity::from_pem("test", &resp.certificate_pem, &key.serialize_pem()).expect("identity")
}

/// Opens a session as `claimed`, sending Hello; returns the first response or the error.
async fn open_session(
    coord: &Coord,
    identity: Option<&tls::Identity>,
    claimed: &str,
) -> Result<tonic::Streaming<v1::CoordinatorMessage>, tonic::Status> {
    open_session_with_facts(coord, identity, claimed, None).await
}

/// [`open_session`] with `facts` in the Hello.
async fn open_session_with_facts(
    coord: &Coord,
    identity: Option<&tls::Identity>,
    claimed: &str,
    facts: Option<v1::HostFacts>,
) -> Result<tonic::Streaming<v1::CoordinatorMessage>, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(AgentMessage {
        body: Some(agent_message::Body::Hello(v1::Hello {
            host_name: claimed.into(),
            protocol_version: flotilla_proto::PROTOCOL_VERSION,
            facts,
            ..Default::default()
        })),
    })
    .await
    .expect("queue hello");
    // Keep the sender alive for the session's lifetime.
    std::mem::forget(tx);
    let mut stream = client(coord, identity)
        .session(with_header(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await?
        .into_inner();
    match stream.message().await {
        Ok(Some(_welcome)) => Ok(stream),
        Ok(None) => Err(tonic::Status::unknown("stream ended")),
        Err(s) => Err(s),
    }
}

#[tokio::test]
async fn a_token_enrolls_once_and_every_bad_token_is_refused_with_its_own_message() {
    let coord = Coord::start(|_| {}).await;
    let token = coord.token("host-a").await;
    let (_k, csr_a) = csr_for("host-a");

    let ok = enroll(&coord, &token, "host-a", &csr_a).await.expect("first use enrolls");
    assert!(ok.certificate_pem.contains("BEGIN CERTIFICATE"));
    assert!(!ok.host_id.is_empty());

    // The same token again.
    let e = enroll(&coord, &token, "host-a", &csr_a).await.expect_err("reuse");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("already used"), "{}", e.message());

    // A token minted for host A, presented by host B.
    let token_a2 = coord.token("host-a").await;
    let (_k, csr_b) = csr_for("host-b");
    let e = enroll(&coord, &token_a2, "host-b", &csr_b).await.expect_err("wrong host");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("minted for host 'host-a'"), "{}", e.message());

    // A random token.
    let random = hex_token();
    let e = enroll(&coord, &random, "host-b", &csr_b).await.expect_err("random");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("unknown"), "{}", e.message());

    // An expired token: move the control plane's clock past the 1 h TTL.
    let token_c = coord.token("host-c").await;
    coord.clock.advance(Duration::from_secs(3601));
    let (_k, csr_c) = csr_for("host-c");
    let e = enroll(&coord, &token_c, "host-c", &csr_c).await.expect_err("expired");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("expired"), "{}", e.message());

    // Nothing was stored for the refused ones.
    assert_eq!(host_names(&coord).await, vec!["host-a".to_string()]);
    // Each refusal is counted in the audit under its own kind.
    let kinds = audit_kinds(&coord).await;
    for kind in [
        "enroll.ok",
        "enroll.refused.reused",
        "enroll.refused.wrong-host",
        "enroll.refused.unknown",
        "enroll.refused.expired",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "missing audit {kind} in {kinds:?}");
    }
    // Tokens are stored only as hashes: the secret is nowhere in the state file.
    let state = std::fs::read(coord.state_dir().join("state.redb")).expect("state file");
    assert!(!state.windows(token.len()).any(|w| w == token.as_bytes()), "the raw token must not be stored");
}

fn hex_token() -> String {
    let b: [u8; 32] = rand_bytes();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn rand_bytes() -> [u8; 32] {
    // A CSR's key makes good random bytes without another dependency.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let raw = key.public_key_raw();
    let mut out = [0u8; 32];
    out.copy_from_slice(&raw[1..33]);
    out
}

#[tokio::test]
async fn bad_csrs_are_invalid_argument_and_do_not_burn_the_token() {
    let coord = Coord::start(|_| {}).await;
    let token = coord.token("node0").await;

    let e = enroll(&coord, &token, "node0", "garbage").await.expect_err("garbage");
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("CSR"), "{}", e.message());

    // A weak key: RSA is refused whatever its size (we issue ECDSA P-256 only).
    let rsa = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).expect("rsa key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "node0");
    let rsa_csr = params.serialize_request(&rsa).expect("csr").pem().expect("pem");
    let e = enroll(&coord, &token, "node0", &rsa_csr).await.expect_err("weak key");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("weak or unsupported key"), "{}", e.message());

    // A CSR naming another host.
    let (_k, other) = csr_for("node1");
    let e = enroll(&coord, &token, "node0", &other).await.expect_err("other host");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("names 'node1'"), "{}", e.message());

    // The token survived all three: a good CSR still enrolls with it.
    let (_k, good) = csr_for("node0");
    enroll(&coord, &token, "node0", &good).await.expect("token still valid after bad CSRs");
}

#[tokio::test]
async fn sessions_require_a_cluster_certificate_for_the_host_claimed() {
    let coord = Coord::start(|_| {}).await;
    let a = enrolled_identity(&coord, "host-a").await;
    let _b = enrolled_identity(&coord, "host-b").await;

    // A's own certificate works.
    open_session(&coord, Some(&a), "host-a").await.expect("own identity");

    // No client certificate at all.
    let e = open_session(&coord, None, "host-a").await.expect_err("no cert");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("client certificate"), "{}", e.message());

    // A's certificate, claiming to be B.
    let e = open_session(&coord, Some(&a), "host-b").await.expect_err("impersonation");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("certificate is for host 'host-a' but the agent claims to be 'host-b'"),
        "{}",
        e.message()
    );

    // A certificate from another CA: the TLS handshake itself fails.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other =
        flotilla_coordinator::control_plane::pki::Pki::load_or_create(other_dir.path(), "other", &["127.0.0.1".into()])
            .expect("other CA");
    let (key, csr) = csr_for("host-a");
    let foreign = other.sign_host_csr("host-a", &csr, Duration::from_secs(3600)).expect("sign");
    let foreign = tls::Identity::from_pem("foreign", &foreign.certificate_pem, &key.serialize_pem()).expect("id");
    let e = open_session(&coord, Some(&foreign), "host-a").await.expect_err("foreign CA");
    assert!(matches!(e.code(), Code::Unavailable | Code::Unknown | Code::Internal), "{e:?}");
    assert!(audit_kinds(&coord).await.iter().any(|k| k == "session.refused.identity"));
}

#[tokio::test]
async fn an_incompatible_protocol_version_is_refused_naming_both_versions() {
    let coord = Coord::start(|_| {}).await;
    let token = coord.token("node0").await;
    let (_k, csr) = csr_for("node0");
    let mut req = tonic::Request::new(EnrollRequest { token, host_name: "node0".into(), csr_pem: csr, facts: None });
    req.metadata_mut().insert(flotilla_proto::PROTOCOL_HEADER, "2".parse().expect("header"));
    let e = client(&coord, None).enroll(req).await.expect_err("v2 agent");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("v2") && e.message().contains("v1"), "{}", e.message());
}

#[tokio::test]
async fn an_agent_enrolls_once_deletes_its_token_and_reconnects_with_its_certificate() {
    let coord = Coord::start(|_| {}).await;
    let cfg = coord.agent_config("node0").await;
    let mut agent = flotilla_agent::start(cfg.clone()).await.expect("agent");
    let st = agent
        .wait_for(WAIT, |s| s.connected && s.last_rtt.is_some())
        .await
        .expect("enrolled, connected, heartbeat acknowledged");
    assert!(st.enrolled);
    assert!(!cfg.token_file.exists(), "the used token must be deleted");
    let identity = cfg.state_dir.join("identity.pem");
    assert_eq!(flotilla_proto::fs::mode_of(&identity).expect("mode"), 0o600);
    let serial = st.cert_serial.clone();
    agent.stop().await;

    // Restarted: no token on disk, the stored certificate is enough.
    let mut agent = flotilla_agent::start(cfg.clone()).await.expect("agent again");
    let st = agent.wait_for(WAIT, |s| s.connected).await.expect("reconnected");
    assert_eq!(st.cert_serial, serial, "same certificate, no re-enrollment");
    assert_eq!(audit_kinds(&coord).await.iter().filter(|k| *k == "enroll.ok").count(), 1, "enrolled exactly once");

    // Status shows it with a fresh heartbeat and its health figures.
    let json = eventually(WAIT, "a heartbeat in status", || async {
        let st = coord.admin().await.status(v1::StatusRequest::default()).await.ok()?.into_inner();
        let v = flotilla_coordinator::cli::status_json(&st);
        (v["hosts"][0]["last_heartbeat_age_s"].as_f64()? >= 0.0).then_some(v)
    })
    .await;
    let h = &json["hosts"][0];
    assert_eq!(h["name"], "node0");
    assert_eq!(h["connected"], true);
    assert_eq!(h["unreachable"], false);
    assert!(h["roles"].is_array());
    assert!(h["health"]["memory_total_bytes"].as_u64().expect("memory") > 0);
    assert!(h["health"]["uptime_s"].as_u64().is_some());

    // Three missed heartbeats (the coordinator's clock jumps 4 intervals): unreachable. A
    // heartbeat landing between the jump and the read would hide it, so try a few jumps.
    let mut seen_unreachable = false;
    for _ in 0..3 {
        coord.clock.advance(Duration::from_secs(4));
        let st = coord.admin().await.status(v1::StatusRequest::default()).await.expect("status").into_inner();
        if st.hosts[0].unreachable {
            assert!(st.hosts[0].last_heartbeat_age_s > 3.0, "{:?}", st.hosts[0]);
            seen_unreachable = true;
            break;
        }
    }
    assert!(seen_unreachable, "a host 3 heartbeats late must show as unreachable");
    // The next heartbeat makes it reachable again.
    eventually(WAIT, "reachable again after a heartbeat", || async {
        let st = coord.admin().await.status(v1::StatusRequest::default()).await.ok()?.into_inner();
        (!st.hosts[0].unreachable).then_some(())
    })
    .await;
    agent.stop().await;
}

#[tokio::test]
async fn revoking_a_host_closes_its_session_and_refuses_its_next_call() {
    let coord = Coord::start(|_| {}).await;
    let cfg = coord.agent_config("node0").await;
    let mut agent = flotilla_agent::start(cfg).await.expect("agent");
    agent.wait_for(WAIT, |s| s.connected).await.expect("connected");

    let r = coord
        .admin()
        .await
        .revoke_host(v1::RevokeHostRequest { host_name: "node0".into() })
        .await
        .expect("revoke")
        .into_inner();
    assert!(r.session_closed);
    let st = agent
        .wait_for(WAIT, |s| !s.connected && s.last_error.contains("revoked"))
        .await
        .expect("session closed with the reason");
    assert!(st.last_error.contains("revoked"), "{}", st.last_error);
    // Its next attempts are refused too.
    let st = agent.wait_for(WAIT, |s| s.failures >= 2).await.expect("refused again");
    assert!(!st.connected);
    assert!(st.last_error.contains("revoked"), "{}", st.last_error);
    let status = coord.admin().await.status(v1::StatusRequest::default()).await.expect("status").into_inner();
    assert!(status.hosts[0].revoked);
    agent.stop().await;
}

#[tokio::test]
async fn a_coordinator_restart_under_twenty_agents_loses_nothing_and_all_reconnect() {
    let mut coord = Coord::start(|_| {}).await;
    let mut agents = Vec::new();
    for i in 0..20 {
        let cfg = coord.agent_config(&format!("node{i}")).await;
        agents.push(flotilla_agent::start(cfg).await.expect("agent"));
    }
    for a in &mut agents {
        a.wait_for(WAIT, |s| s.connected).await.expect("connected");
    }
    let before: Vec<_> = agents.iter().map(|a| a.status.borrow().sessions_opened).collect();

    coord.restart().await;
    let restarted = std::time::Instant::now();
    for (a, n) in agents.iter_mut().zip(before) {
        a.wait_for(WAIT, |s| s.connected && s.sessions_opened > n).await.expect("reconnected after the restart");
    }
    // Back-off cap is 2 s in this test's agent config; allow scheduling slack on 2 cores.
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(6), "all 20 reconnected in {took:?}");
    let names = host_names(&coord).await;
    assert_eq!(names.len(), 20, "{names:?}");
    let st = coord.admin().await.status(v1::StatusRequest::default()).await.expect("status").into_inner();
    assert!(st.hosts.iter().all(|h| h.connected), "{:?}", st.hosts);
    for a in agents {
        a.stop().await;
    }
}

#[tokio::test]
async fn certificates_renew_before_two_thirds_of_their_life_without_dropping_the_session() {
    // 9 s certificates (back-dated 0.9 s): renewal is due about 5.7 s after issue, at two
    // thirds of the validity, well before expiry.
    let coord = Coord::start(|c| c.host_cert_validity = Duration::from_secs(9)).await;
    let cfg = coord.agent_config("node0").await;
    let mut agent = flotilla_agent::start(cfg.clone()).await.expect("agent");
    let first = agent.wait_for(WAIT, |s| s.connected).await.expect("connected");
    let st = agent.wait_for(WAIT, |s| s.renewals >= 1).await.expect("renewed over the session");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let left = first.cert_not_after_unix - now;
    assert!((1..=5).contains(&left), "renewed with {left} s of a 9 s certificate left: not before 2/3, not too early");
    assert_ne!(st.cert_serial, first.cert_serial, "a new certificate");
    assert_eq!(st.sessions_opened, 1, "the session was not dropped");
    assert!(st.connected);
    // The renewed certificate is on disk and is what a restarted agent uses.
    agent.stop().await;
    let stored = flotilla_agent::identity::StoredIdentity::load(&cfg.state_dir).expect("load").expect("identity");
    let mut agent = flotilla_agent::start(cfg).await.expect("agent");
    let again = agent.wait_for(WAIT, |s| s.connected).await.expect("reconnected");
    assert_eq!(again.cert_serial, stored.facts.serial);
    assert!(audit_kinds(&coord).await.iter().any(|k| k == "cert.renewed"));
    agent.stop().await;
}

#[tokio::test]
async fn the_admin_socket_and_keys_are_private_and_operator_certificates_work_remotely() {
    let coord = Coord::start(|_| {}).await;
    let sock = coord.state_dir().join("admin.sock");
    assert_eq!(flotilla_proto::fs::mode_of(&sock).expect("mode") & 0o777, 0o600);
    assert_eq!(flotilla_proto::fs::mode_of(coord.state_dir()).expect("mode"), 0o700);
    for key in ["pki/ca.key", "pki/server.key"] {
        assert_eq!(flotilla_proto::fs::mode_of(&coord.state_dir().join(key)).expect("mode"), 0o600, "{key}");
    }

    // An operator bundle, signed through the admin socket, used over TLS.
    let (key, csr) = flotilla_coordinator::control_plane::pki::new_key_and_csr("alice").expect("csr");
    let r = coord
        .admin()
        .await
        .issue_operator_certificate(v1::IssueOperatorCertificateRequest { operator_name: "alice".into(), csr_pem: csr })
        .await
        .expect("operator cert")
        .into_inner();
    let bundle = coord.dir.path().join("alice");
    std::fs::create_dir_all(&bundle).expect("dir");
    std::fs::write(bundle.join("ca.pem"), r.ca_chain_pem.join("")).expect("ca");
    std::fs::write(bundle.join("cert.pem"), &r.certificate_pem).expect("cert");
    std::fs::write(bundle.join("key.pem"), key.serialize_pem()).expect("key");
    std::fs::write(bundle.join("endpoint"), coord.endpoint()).expect("endpoint");
    let mut remote = flotilla_coordinator::admin_client::connect_remote(&bundle).expect("remote");
    remote.status(v1::StatusRequest::default()).await.expect("operator may call Status");

    // A host certificate may not use the admin API.
    let host = enrolled_identity(&coord, "node0").await;
    let ca = tls::certs_from_pem("ca", &coord.ca_pem()).expect("ca");
    let ch = tls::channel(&coord.endpoint(), tls::client_config(&ca, Some(&host)).expect("cfg")).expect("ch");
    let e = v1::admin_client::AdminClient::new(ch)
        .status(v1::StatusRequest::default())
        .await
        .expect_err("host cert on admin");
    assert_eq!(e.code(), Code::PermissionDenied);
    // And no certificate at all is refused too.
    let ch = tls::channel(&coord.endpoint(), tls::client_config(&ca, None).expect("cfg")).expect("ch");
    let e =
        v1::admin_client::AdminClient::new(ch).status(v1::StatusRequest::default()).await.expect_err("anonymous admin");
    assert_eq!(e.code(), Code::Unauthenticated);
}

/// The next `EngineAction` the coordinator sends on `session` (other messages skipped).
async fn next_action(
    session: &mut tonic::Streaming<v1::CoordinatorMessage>,
) -> Result<v1::EngineAction, tokio::time::error::Elapsed> {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(v1::coordinator_message::Body::EngineAction(a)) =
                session.message().await.expect("session message").expect("session open").body
            {
                return a;
            }
        }
    })
    .await
}

/// Issue 7 — the Consul drill's fault travels as an `EngineAction` on the host's session:
/// STOP_ROLE/START_ROLE name the role and (for a stop) the hold's lease; a role without a
/// container of its own, an unknown host, a host without a session are refused with their
/// reason.
#[tokio::test]
async fn issue_7_role_actions_reach_the_agent_with_their_role_and_lease_and_bad_ones_are_refused() {
    use v1::engine_action::Kind;
    let coord = Coord::start(|_| {}).await;
    let id = enrolled_identity(&coord, "manager0").await;
    let mut admin = coord.admin().await;
    let action = |host: &str, kind: Kind, role: v1::Role, hold_s: u32| v1::EngineActionRequest {
        host_name: host.into(),
        kind: kind as i32,
        role: role as i32,
        hold_s,
    };

    // Known host, no session yet: UNAVAILABLE, naming it.
    let e =
        admin.engine_action(action("manager0", Kind::StopRole, v1::Role::Consul, 30)).await.expect_err("no session");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("manager0"), "{}", e.message());

    let mut session = open_session(&coord, Some(&id), "manager0").await.expect("session");

    admin.engine_action(action("manager0", Kind::StopRole, v1::Role::Consul, 30)).await.expect("stop consul");
    let got = next_action(&mut session).await.expect("the action reaches the session");
    assert_eq!((got.kind, got.role, got.hold_s), (Kind::StopRole as i32, v1::Role::Consul as i32, 30));
    // No lease given: the default, never "forever".
    admin.engine_action(action("manager0", Kind::StopRole, v1::Role::Consul, 0)).await.expect("stop consul");
    let got = next_action(&mut session).await.expect("the action reaches the session");
    assert_eq!(got.hold_s, flotilla_coordinator::control_plane::core::DEFAULT_ROLE_HOLD_S);
    admin.engine_action(action("manager0", Kind::StartRole, v1::Role::Consul, 0)).await.expect("release consul");
    let got = next_action(&mut session).await.expect("the action reaches the session");
    assert_eq!((got.kind, got.role, got.hold_s), (Kind::StartRole as i32, v1::Role::Consul as i32, 0));

    // The Swarm roles run inside the Engine: no role action for them.
    let e = admin.engine_action(action("manager0", Kind::StopRole, v1::Role::Manager, 30)).await.expect_err("manager");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("only consul") && e.message().contains("stop the Engine"), "{}", e.message());
    let e = admin.engine_action(action("nobody", Kind::StopRole, v1::Role::Consul, 30)).await.expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(audit_kinds(&coord).await.iter().filter(|k| *k == "engine.action").count() >= 3);
}

/// Issue 14: a Consul server's spec lists every host's Consul token, so adding a node gives
/// the managers a new generation. What the control plane filled in before must carry over —
/// new certificates would restart the manager's Engine (its 2376 listener) and recreate its
/// Consul container — and the tokens it derives stay the same.
#[tokio::test]
async fn issue_14_a_new_generation_keeps_the_certificates_and_tokens_in_force() {
    let coord = Coord::start(|_| {}).await;
    let token = coord.token("manager0").await;
    let (_key, csr) = csr_for("manager0");
    enroll(&coord, &token, "manager0", &csr).await.expect("enroll");
    let roles = |nodes: &[&str]| {
        let mut tokens = vec![
            v1::ConsulToken { host: "manager0".into(), role: v1::Role::Consul as i32, ..Default::default() },
            v1::ConsulToken { host: "manager0".into(), role: v1::Role::Manager as i32, ..Default::default() },
        ];
        tokens.extend(nodes.iter().map(|n| v1::ConsulToken {
            host: n.to_string(),
            role: v1::Role::Node as i32,
            ..Default::default()
        }));
        let consul = v1::ConsulSpec {
            image: Some(v1::ImageRef { reference: "consul:1".into(), ..Default::default() }),
            bootstrap_expect: 1,
            datacenter: "test".into(),
            tokens,
            ..Default::default()
        };
        let manager = v1::ManagerSpec {
            designated_initializer: true,
            consul_http_addrs: vec!["127.0.0.1:8500".into()],
            ..Default::default()
        };
        vec![
            v1::RoleSpec { spec: Some(v1::role_spec::Spec::Consul(consul)) },
            v1::RoleSpec { spec: Some(v1::role_spec::Spec::Manager(manager)) },
        ]
    };
    let mut admin = coord.admin().await;
    let assign = |roles| v1::AssignRequest { host_name: "manager0".into(), roles, host_address: "10.0.0.10".into() };
    let specs = |a: &v1::Assignment| {
        let consul = a.roles.iter().find_map(|r| match &r.spec {
            Some(v1::role_spec::Spec::Consul(c)) => Some(c.clone()),
            _ => None,
        });
        let manager = a.roles.iter().find_map(|r| match &r.spec {
            Some(v1::role_spec::Spec::Manager(m)) => Some(m.clone()),
            _ => None,
        });
        (consul.expect("consul spec"), manager.expect("manager spec"))
    };
    let stored = || coord.running().cp.assignment_of("manager0").expect("store").expect("assignment");

    let g1 = admin.assign(assign(roles(&["node0"]))).await.expect("assign").into_inner().generation;
    let (c1, m1) = specs(&stored());
    assert!(!c1.tls_cert_pem.is_empty() && !m1.engine_tls_cert_pem.is_empty() && !m1.consul_token.is_empty());
    assert!(c1.tokens.iter().all(|t| !t.accessor_id.is_empty() && !t.secret_id.is_empty()));

    let g2 = admin.assign(assign(roles(&["node0", "node1"]))).await.expect("assign").into_inner().generation;
    assert_eq!(g2, g1 + 1, "a node more is a new generation for the Consul server");
    let (c2, m2) = specs(&stored());
    assert_eq!(c2.tls_cert_pem, c1.tls_cert_pem, "the Consul server certificate carries over");
    assert_eq!(c2.tls_key_pem, c1.tls_key_pem);
    assert_eq!(m2.engine_tls_cert_pem, m1.engine_tls_cert_pem, "the Engine certificate carries over");
    assert_eq!(
        (&c2.management_token, &c2.agent_token, &m2.consul_token),
        (&c1.management_token, &c1.agent_token, &m1.consul_token)
    );
    assert_eq!(c2.tokens[..3], c1.tokens[..3], "the tokens in force stay the same");
    assert!(!c2.tokens[3].secret_id.is_empty() && c2.tokens[3].secret_id != c2.tokens[2].secret_id);

    let g3 = admin.assign(assign(roles(&["node0", "node1"]))).await.expect("assign").into_inner().generation;
    assert_eq!(g3, g2, "the same request again changes nothing");
}

/// The next `Assignment` the coordinator sends on `session` (other messages skipped).
async fn next_assignment(session: &mut tonic::Streaming<v1::CoordinatorMessage>) -> v1::Assignment {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(v1::coordinator_message::Body::Assignment(a)) =
                session.message().await.expect("session message").expect("session open").body
            {
                return a;
            }
        }
    })
    .await
    .expect("an assignment reaches the session")
}

/// The manager spec in `a`.
fn manager_spec(a: &v1::Assignment) -> v1::ManagerSpec {
    a.roles
        .iter()
        .find_map(|r| match &r.spec {
            Some(v1::role_spec::Spec::Manager(m)) => Some(m.clone()),
            _ => None,
        })
        .expect("a manager spec")
}

/// Whether `cert_pem` certifies `key`.
fn certifies(cert_pem: &str, key: &KeyPair) -> bool {
    tls::Identity::from_pem("engine", cert_pem, &key.serialize_pem()).expect("pem").check_keys_match().is_ok()
}

/// Issue 14 — the managers' Engine key never leaves the host: a host whose facts carry a CSR
/// for its Engine's key gets a certificate for that key and no private key in any
/// assignment; a repeated identical request keeps the stored assignment (same generation,
/// same certificate); a host whose agent sends no CSR (an older agent) still gets a key made
/// by the coordinator, until its facts carry a CSR; a new key's CSR is signed at the next
/// request.
#[tokio::test]
async fn engine_certificates_are_signed_from_the_hosts_csr_and_no_private_key_is_sent() {
    let coord = Coord::start(|_| {}).await;
    let facts =
        |csr: &str| v1::HostFacts { hostname: "manager0".into(), engine_csr_pem: csr.into(), ..Default::default() };
    let (engine_key, engine_csr) = csr_for("manager0");
    let token = coord.token("manager0").await;
    let (key, csr) = csr_for("manager0");
    let resp = client(&coord, None)
        .enroll(with_header(EnrollRequest {
            token,
            host_name: "manager0".into(),
            csr_pem: csr,
            facts: Some(facts(&engine_csr)),
        }))
        .await
        .expect("enroll")
        .into_inner();
    let id0 = tls::Identity::from_pem("manager0", &resp.certificate_pem, &key.serialize_pem()).expect("identity");
    let mut s0 = open_session(&coord, Some(&id0), "manager0").await.expect("session");
    let mut admin = coord.admin().await;
    let manager = v1::RoleSpec {
        spec: Some(v1::role_spec::Spec::Manager(v1::ManagerSpec {
            consul_http_addrs: vec!["10.0.0.9:8500".into()],
            ..Default::default()
        })),
    };
    let assign = |host: &str, address: &str| v1::AssignRequest {
        host_name: host.into(),
        roles: vec![manager.clone()],
        host_address: address.into(),
    };

    let generation = admin.assign(assign("manager0", "10.0.0.5")).await.expect("assign").into_inner().generation;
    let a0 = next_assignment(&mut s0).await;
    assert_eq!(a0.generation, generation);
    let m0 = manager_spec(&a0);
    assert!(m0.engine_tls_key_pem.is_empty(), "no key travels to a host that sent a CSR");
    assert!(!format!("{a0:?}").contains("PRIVATE KEY"), "no private key anywhere in the assignment");
    assert!(certifies(&m0.engine_tls_cert_pem, &engine_key), "the certificate is for the host's own key");

    // The same request again: the same generation and certificate, nothing re-signed.
    let again = admin.assign(assign("manager0", "10.0.0.5")).await.expect("again").into_inner();
    assert_eq!(again.generation, generation, "a repeated request is a no-op");
    assert_eq!(next_assignment(&mut s0).await, a0, "the stored assignment, as it was");

    // An older agent sends no CSR: the coordinator makes its Engine key, as before.
    let id1 = enrolled_identity(&coord, "manager1").await;
    let mut s1 = open_session(&coord, Some(&id1), "manager1").await.expect("session");
    admin.assign(assign("manager1", "10.0.0.6")).await.expect("assign");
    let m1 = manager_spec(&next_assignment(&mut s1).await);
    assert!(m1.engine_tls_key_pem.contains("PRIVATE KEY"), "an agent without a CSR gets a key");
    drop(s1);
    // Upgraded, it sends a CSR: the next identical request signs it and sends no key.
    let (key1, csr1) = csr_for("manager1");
    let mut s1 = open_session_with_facts(&coord, Some(&id1), "manager1", Some(facts(&csr1))).await.expect("session");
    next_assignment(&mut s1).await;
    admin.assign(assign("manager1", "10.0.0.6")).await.expect("assign");
    let a1 = next_assignment(&mut s1).await;
    let m1 = manager_spec(&a1);
    assert!(m1.engine_tls_key_pem.is_empty() && !format!("{a1:?}").contains("PRIVATE KEY"), "{m1:?}");
    assert!(certifies(&m1.engine_tls_cert_pem, &key1));

    // manager0 made a new Engine key: the next identical request signs its CSR.
    drop(s0);
    let (engine_key2, engine_csr2) = csr_for("manager0");
    let mut s0 =
        open_session_with_facts(&coord, Some(&id0), "manager0", Some(facts(&engine_csr2))).await.expect("session");
    next_assignment(&mut s0).await;
    let renewed = admin.assign(assign("manager0", "10.0.0.5")).await.expect("assign").into_inner();
    assert_eq!(renewed.generation, generation + 1);
    let m0 = manager_spec(&next_assignment(&mut s0).await);
    assert!(m0.engine_tls_key_pem.is_empty());
    assert!(certifies(&m0.engine_tls_cert_pem, &engine_key2) && !certifies(&m0.engine_tls_cert_pem, &engine_key));

    // A CSR that names another host is refused, naming the host and the fix.
    let (_, foreign) = csr_for("manager9");
    drop(s0);
    let mut s0 = open_session_with_facts(&coord, Some(&id0), "manager0", Some(facts(&foreign))).await.expect("session");
    next_assignment(&mut s0).await;
    let e = admin.assign(assign("manager0", "10.0.0.5")).await.expect_err("a foreign CSR");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("manager0") && e.message().contains("engine-key.pem"), "{}", e.message());
}
