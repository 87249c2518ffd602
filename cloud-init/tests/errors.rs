//! Every refused input gets its own `Error` variant, and its message names the field.

use flotilla_cloud_init::{
    AgentBinary, BakeInputs, BakeReport, DEFAULT_HEARTBEAT_INTERVAL_S, Engine, Error, HostInputs, OsFamily,
    USER_DATA_LIMIT, render_bake, render_host,
};

const CA_PEM: &str = include_str!("fixtures/ca.pem");
const KEY_PEM: &str =
    "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";

fn inputs() -> HostInputs {
    HostInputs {
        cluster: "demo".into(),
        host_name: "manager0".into(),
        coordinator: vec!["10.0.0.5:7443".into()],
        ca_pem: CA_PEM.into(),
        join_token: Some("3f9a1c0e5b7d2468ace13579bdf02468ace13579bdf0246813579bdf02468ace".into()),
        agent: AgentBinary {
            url: "https://10.0.0.5:7443/v1/agent/flotilla-agent".into(),
            sha256: "285d31fe4a1695380e0fec2794b467c2b35615206366524ca216ad29f5633ce1".into(),
            version: "0.1.0".into(),
        },
        engine: Engine::InstallIfAbsent(OsFamily::AmazonLinux2023),
        insecure_registries: vec![],
        heartbeat_interval_s: DEFAULT_HEARTBEAT_INTERVAL_S,
        engine_tls: false,
    }
}

/// The error of rendering `inputs`, after checking its message starts with `field`.
fn refused(inputs: &HostInputs, field: &str) -> Error {
    let err = render_host(inputs).expect_err("inputs must be refused");
    assert!(err.to_string().starts_with(field), "{field}: {err}");
    assert_eq!(inputs.validate(), Err(err.clone()), "validate() and render disagree");
    err
}

#[test]
fn the_fixture_renders() {
    assert!(render_host(&inputs()).is_ok());
}

#[test]
fn ca_with_a_private_key() {
    let mut i = inputs();
    i.ca_pem = format!("{CA_PEM}{KEY_PEM}");
    assert_eq!(refused(&i, "ca_pem:"), Error::PrivateKeyInCa);
    i.ca_pem = KEY_PEM.replace("PRIVATE KEY", "EC PRIVATE KEY");
    assert_eq!(refused(&i, "ca_pem:"), Error::PrivateKeyInCa);
    let bake = BakeInputs {
        ca_pem: format!("{KEY_PEM}{CA_PEM}"),
        agent: i.agent.clone(),
        engine: Engine::Preinstalled,
        report: None,
    };
    assert_eq!(render_bake(&bake), Err(Error::PrivateKeyInCa));
}

#[test]
fn bad_bake_report_url_and_nonce() {
    let good = BakeReport { url: "https://10.0.0.5:7443/v1/bake/report".into(), nonce: "a1".repeat(16) };
    let bake = |report: BakeReport| BakeInputs {
        ca_pem: CA_PEM.into(),
        agent: inputs().agent,
        engine: Engine::Preinstalled,
        report: Some(report),
    };
    assert!(render_bake(&bake(good.clone())).is_ok());
    for url in ["http://10.0.0.5/r", "https://h/a b", "https://u:p@h/r"] {
        let e = render_bake(&bake(BakeReport { url: url.into(), ..good.clone() })).expect_err(url);
        assert!(matches!(e, Error::InvalidReportUrl { .. }), "{url}: {e:?}");
        assert!(e.to_string().starts_with("report.url:"), "{e}");
    }
    for nonce in ["", "short", "a1-b2c3d4e5f6a7b8c9", &"a".repeat(129)] {
        let e = render_bake(&bake(BakeReport { nonce: nonce.into(), ..good.clone() })).expect_err(nonce);
        assert_eq!(e, Error::InvalidReportNonce, "{nonce}");
        assert!(e.to_string().starts_with("report.nonce:"), "{e}");
    }
}

#[test]
fn ca_that_is_not_a_certificate() {
    let mut i = inputs();
    i.ca_pem = "not a certificate".into();
    assert!(matches!(refused(&i, "ca_pem:"), Error::InvalidCaPem { .. }));
}

#[test]
fn invalid_names() {
    for bad in ["", "Manager0", "manager_0", "-manager0", "manager0.", &"m".repeat(64)] {
        let mut i = inputs();
        i.host_name = bad.into();
        assert!(matches!(refused(&i, "host_name:"), Error::InvalidName { field: "host_name", .. }), "{bad}");
        let mut i = inputs();
        i.cluster = bad.into();
        assert!(matches!(refused(&i, "cluster:"), Error::InvalidName { field: "cluster", .. }), "{bad}");
    }
}

#[test]
fn empty_coordinator_list() {
    let mut i = inputs();
    i.coordinator.clear();
    assert_eq!(refused(&i, "coordinator:"), Error::NoCoordinator);
}

#[test]
fn invalid_coordinator_endpoint() {
    let mut i = inputs();
    i.coordinator.push("10.0.0.6".into());
    assert!(matches!(refused(&i, "coordinator[1]:"), Error::InvalidCoordinator { index: 1, .. }));
}

#[test]
fn bad_sha256() {
    for bad in ["", "abc", &"g".repeat(64), &"a".repeat(63), &"a".repeat(65)] {
        let mut i = inputs();
        i.agent.sha256 = bad.into();
        assert_eq!(refused(&i, "agent.sha256:"), Error::InvalidSha256 { field: "agent.sha256", value: bad.into() });
    }
}

#[test]
fn bad_agent_url_and_version() {
    let mut i = inputs();
    i.agent.url = "http://10.0.0.5:7443/v1/agent/flotilla-agent".into();
    assert!(matches!(refused(&i, "agent.url:"), Error::InvalidAgentUrl { .. }));
    let mut i = inputs();
    i.agent.version = "1.0 beta".into();
    assert!(matches!(refused(&i, "agent.version:"), Error::InvalidAgentVersion { .. }));
}

#[test]
fn bad_token_is_not_echoed() {
    let mut i = inputs();
    i.join_token = Some("secret token".into());
    let err = refused(&i, "join_token:");
    assert!(matches!(err, Error::InvalidToken { .. }));
    assert!(!err.to_string().contains("secret"), "{err}");
    i.join_token = Some(String::new());
    assert!(matches!(refused(&i, "join_token:"), Error::InvalidToken { .. }));
}

#[test]
fn bad_insecure_registry() {
    let mut i = inputs();
    i.insecure_registries = vec!["172.28.0.2:5000".into(), "registry".into()];
    assert!(matches!(refused(&i, "insecure_registries[1]:"), Error::InvalidInsecureRegistry { index: 1, .. }));
}

#[test]
fn bad_heartbeat_interval() {
    for bad in [0, 3601] {
        let mut i = inputs();
        i.heartbeat_interval_s = bad;
        assert_eq!(refused(&i, "heartbeat_interval_s:"), Error::InvalidHeartbeatInterval { value: bad });
    }
}

#[test]
fn user_data_over_the_ec2_limit() {
    let mut i = inputs();
    i.ca_pem = CA_PEM.repeat(12);
    let err = render_host(&i).expect_err("too large");
    assert!(matches!(err, Error::TooLarge { size, limit: USER_DATA_LIMIT } if size > USER_DATA_LIMIT), "{err}");
    // A rotation's worth of CAs still fits.
    i.ca_pem = CA_PEM.repeat(3);
    assert!(render_host(&i).is_ok());
}
