//! Issue 6 — the AWS provider against moto's EC2 server on loopback (and a fault proxy in
//! front of it). What the provider made is read back with a separate EC2 client, never
//! taken from the provider's own word.
//!
//! The end-to-end test, which boots lab hosts from the instances' user-data, is in
//! `aws_e2e.rs`.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::process::Output;

use aws_sdk_ec2::types::InstanceAttributeName;
use base64::Engine as _;
use flotilla_coordinator::ops::cluster_config::AwsSettings;
use flotilla_coordinator::providers::LaunchSpec;
use flotilla_coordinator::providers::aws::{Aws, TAG_CLUSTER};
use flotilla_tests::Cli;
use flotilla_tests::moto::{self, AWS_ENV, FaultProxy, Moto, REGION, cluster_groups, live_instances, tag};
use serde_json::Value;

fn settings(endpoint: &str) -> AwsSettings {
    AwsSettings {
        region: REGION.into(),
        endpoint_url: endpoint.into(),
        admin_cidr: "198.51.100.7/32".into(),
        key_name: "ops".into(),
        ..Default::default()
    }
}

async fn provider(cluster: &str, endpoint: &str, state: &std::path::Path) -> Aws {
    let creds = aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "flotilla-tests");
    Aws::connect_with(
        cluster,
        &settings(endpoint),
        state,
        Some(aws_sdk_ec2::config::SharedCredentialsProvider::new(creds)),
    )
    .await
    .expect("aws provider")
}

fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    rcgen::CertificateParams::new(Vec::<String>::new()).expect("params").self_signed(&key).expect("ca").pem()
}

fn user_data(cluster: &str, host: &str, ca: &str) -> String {
    flotilla_cloud_init::render_host(&flotilla_cloud_init::HostInputs {
        cluster: cluster.into(),
        host_name: host.into(),
        coordinator: vec!["10.0.0.5:7443".into()],
        ca_pem: ca.into(),
        join_token: Some("3f9a1c0e5b7d2468ace13579bdf02468ace13579bdf0246813579bdf02468ace".into()),
        agent: flotilla_cloud_init::AgentBinary {
            url: "https://10.0.0.5:7443/v1/agent/flotilla-agent".into(),
            sha256: "a".repeat(64),
            version: "0.1.0".into(),
        },
        engine: flotilla_cloud_init::Engine::InstallIfAbsent(flotilla_cloud_init::OsFamily::AmazonLinux2023),
        insecure_registries: vec![],
        heartbeat_interval_s: 5,
        engine_tls: false,
    })
    .expect("render")
}

#[tokio::test]
async fn issue_6_security_group_instances_and_destroy_as_ec2_reports_them() {
    let moto = Moto::start(&[]);
    let ec2 = moto::ec2(&moto.endpoint()).await;
    let state = tempfile::tempdir().expect("tempdir");
    let a = provider("prod", &moto.endpoint(), state.path()).await;
    provider_checks(&a, &ec2, "prod").await;
}

/// Issue 20, the AWS provider's own failpoints (`aws.…`, outside the bake's) made to fail in
/// this process (the tests build the coordinator with its `failpoints` feature), one at a
/// time: the call fails there, and what the operation does next converges — `prepare` again
/// leaves one group with exactly its rules; after a launch that failed once EC2 had the
/// instance, the provider finds it by name (what deploy checks before launching: no second
/// one); `terminate` and `destroy` again leave nothing. Every such point in the sources is
/// failed at. (Crashes at them, through the CLI: `aws_e2e.rs`.)
#[tokio::test]
async fn issue_20_each_aws_failpoint_failed_at_then_the_operation_converges() {
    use flotilla_coordinator::failpoint::configure;
    let moto = Moto::start(&[]);
    let ec2 = moto::ec2(&moto.endpoint()).await;
    let state = tempfile::tempdir().expect("tempdir");
    let cluster = "fperr";
    let a = provider(cluster, &moto.endpoint(), state.path()).await;
    let mut failed_at = BTreeSet::new();
    let mut arm = |p: &'static str| {
        configure(p, "1*return(error)").expect("configure the failpoint");
        failed_at.insert(p.to_string());
        p
    };

    for p in [arm("aws.security_group.create.after"), arm("aws.security_group.authorize.after")] {
        let e = a.prepare(None, &["t3.small"]).await.err().unwrap_or_else(|| panic!("prepare went past {p}"));
        assert!(e.to_string().contains(p), "{e}");
    }
    let (ctx, change) = a.prepare(None, &["t3.small"]).await.expect("prepare again");
    assert!(!change.created && change.added.is_empty() && change.revoked.is_empty(), "{change:?}");
    let groups = cluster_groups(&ec2, cluster).await;
    assert_eq!(groups.len(), 1, "one group");
    assert_eq!(groups[0].ip_permissions().len(), 8, "{:?}", groups[0].ip_permissions());

    let p = arm("aws.run_instances.after");
    let spec = LaunchSpec {
        name: "manager0".into(),
        role: "manager".into(),
        user_data: user_data(cluster, "manager0", &ca_pem()),
        instance_type: "t3.small".into(),
        image: None,
        private_ip: None,
    };
    let e = a.launch(&spec, 0, &ctx).await.expect_err("launch fails after RunInstances");
    assert!(e.to_string().contains(p), "{e}");
    let found = a.describe().await.expect("describe");
    assert_eq!(found.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["manager0"], "{found:?}");
    // The launch asked again finds the instance its token made, rather than a second one (moto
    // does not answer a reused ClientToken with the first instance, as EC2 does: the provider
    // looks first).
    let again = a.launch(&spec, 0, &ctx).await.expect("the launch again");
    assert_eq!(again.instance_id, found[0].instance_id);
    let live = live_instances(&ec2, cluster).await;
    assert_eq!(live.len(), 1);
    let first_token = live[0].client_token().unwrap_or_default().to_string();

    let p = arm("aws.terminate.after");
    let e = a.terminate("manager0").await.expect_err("terminate fails after TerminateInstances");
    assert!(e.to_string().contains(p), "{e}");
    a.terminate("manager0").await.expect("terminate again");
    assert!(live_instances(&ec2, cluster).await.is_empty());
    // Its replacement (heal's launch of the same name) gets a new token: EC2 would answer the
    // spent one with the terminated instance.
    let replacement = a.launch(&spec, 0, &ctx).await.expect("a replacement");
    assert_ne!(replacement.instance_id, again.instance_id);
    let live = live_instances(&ec2, cluster).await;
    assert_eq!(live.len(), 1);
    assert_ne!(live[0].client_token().unwrap_or_default(), first_token, "the replacement reused the token");

    let p = arm("aws.security_group.delete.before");
    let e = a.destroy().await.expect_err("destroy fails before the group's deletion");
    assert!(e.to_string().contains(p), "{e}");
    a.destroy().await.expect("destroy again");
    assert!(cluster_groups(&ec2, cluster).await.is_empty());

    let in_code: BTreeSet<String> = flotilla_tests::crash::points_in_code()
        .into_iter()
        .filter(|p| p.starts_with(flotilla_tests::crash::AWS) && !p.starts_with(flotilla_tests::crash::AWS_BAKE))
        .collect();
    assert_eq!(failed_at, in_code, "the AWS provider's failpoints failed at, and those in the sources");
}

/// The same checks against a real AWS account (README, "Tests against real AWS"): the
/// standard credential chain and region; 5 t3.small instances for about a minute.
#[tokio::test]
#[ignore = "needs AWS"]
async fn issue_6_real_aws_security_group_instances_and_destroy() {
    let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let state = tempfile::tempdir().expect("tempdir");
    let cluster = format!("flotilla-it-{}", std::process::id());
    let s = AwsSettings { admin_cidr: "198.51.100.7/32".into(), ..Default::default() };
    let a = Aws::connect(&cluster, &s, state.path())
        .await
        .expect("aws provider (credentials and region from the standard chain)");
    provider_checks(&a, &ec2, &cluster).await;
}

async fn provider_checks(a: &Aws, ec2: &aws_sdk_ec2::Client, cluster: &str) {
    let (ctx, change) = a.prepare(None, &["t3.small"]).await.expect("prepare");
    assert!(change.created, "{change:?}");
    assert_eq!(
        ctx.vpc.subnets.iter().map(|s| &s.zone).collect::<BTreeSet<_>>().len(),
        ctx.vpc.subnets.len(),
        "one subnet per zone"
    );

    // The group's rules are exactly the least-privilege set.
    let groups = cluster_groups(ec2, cluster).await;
    assert_eq!(groups.len(), 1);
    let g = &groups[0];
    assert_eq!(g.group_id(), Some(ctx.group_id.as_str()));
    let mut seen = BTreeSet::new();
    for p in g.ip_permissions() {
        let key =
            (p.ip_protocol().unwrap_or_default().to_string(), p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1));
        for r in p.ip_ranges() {
            let cidr = r.cidr_ip().unwrap_or_default();
            assert_ne!(cidr, "0.0.0.0/0", "{key:?} open to the world");
            assert_eq!(
                (key.0.as_str(), key.1, cidr),
                ("tcp", 2376, "198.51.100.7/32"),
                "only the Engine API has a CIDR source"
            );
        }
        assert!(p.ipv6_ranges().is_empty(), "{key:?} has an IPv6 source");
        for pair in p.user_id_group_pairs() {
            assert_eq!(pair.group_id(), Some(ctx.group_id.as_str()), "{key:?} references another group");
        }
        seen.insert(key);
    }
    let want: BTreeSet<(String, i32, i32)> = [
        ("tcp", 2377, 2377),
        ("tcp", 7946, 7946),
        ("udp", 7946, 7946),
        ("udp", 4789, 4789),
        ("tcp", 8300, 8302),
        ("udp", 8301, 8302),
        ("tcp", 8500, 8500),
        ("tcp", 2376, 2376),
    ]
    .into_iter()
    .map(|(p, f, t)| (p.to_string(), f, t))
    .collect();
    assert_eq!(seen, want, "no SSH rule without ssh_cidr, nothing else");

    // A rule someone added by hand is revoked on the next run; a clean re-run changes nothing.
    ec2.authorize_security_group_ingress()
        .group_id(&ctx.group_id)
        .ip_permissions(
            aws_sdk_ec2::types::IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(22)
                .to_port(22)
                .ip_ranges(aws_sdk_ec2::types::IpRange::builder().cidr_ip("0.0.0.0/0").build())
                .build(),
        )
        .send()
        .await
        .expect("add a foreign rule");
    let (_, again) = a.prepare(None, &["t3.small"]).await.expect("prepare again");
    assert!(!again.created && again.added.is_empty(), "{again:?}");
    assert_eq!(again.revoked.len(), 1, "{again:?}");
    assert!(again.revoked[0].contains("0.0.0.0/0"), "{again:?}");
    let (_, third) = a.prepare(None, &["t3.small"]).await.expect("prepare a third time");
    assert!(!third.created && third.added.is_empty() && third.revoked.is_empty(), "{third:?}");

    // Five instances.
    let ca = ca_pem();
    let names = ["manager0", "manager1", "manager2", "node0", "node1"];
    let mut rendered = HashMap::new();
    for (i, n) in names.iter().enumerate() {
        let ud = user_data(cluster, n, &ca);
        rendered.insert(n.to_string(), ud.clone());
        let role = if n.starts_with("manager") { "manager" } else { "node" };
        let spec = LaunchSpec {
            name: n.to_string(),
            role: role.into(),
            user_data: ud,
            instance_type: "t3.small".into(),
            image: None,
            private_ip: None,
        };
        a.launch(&spec, if role == "manager" { i } else { i - 3 }, &ctx).await.expect("launch");
    }
    let live = live_instances(ec2, cluster).await;
    assert_eq!(live.len(), 5);
    let mut manager_zones = BTreeSet::new();
    for i in &live {
        let name = tag(i, "Name");
        assert!(names.contains(&name.as_str()), "{name}");
        assert_eq!(tag(i, TAG_CLUSTER), cluster);
        assert_eq!(tag(i, "flotilla:role"), if name.starts_with("manager") { "manager" } else { "node" });
        if a.settings.key_name.is_empty() {
            assert_eq!(i.key_name(), None, "{name}: a key pair nobody asked for");
        } else {
            assert_eq!(i.key_name(), Some(a.settings.key_name.as_str()), "{name}: the key pair");
        }
        assert_eq!(i.instance_type().map(|t| t.as_str()), Some("t3.small"), "{name}");
        let md = i.metadata_options().expect("metadata options");
        assert_eq!(md.http_tokens().map(|t| t.as_str()), Some("required"), "{name}: IMDSv2 not required");
        assert_eq!(md.http_put_response_hop_limit(), Some(1), "{name}: hop limit");
        assert_eq!(
            i.security_groups().iter().filter_map(|g| g.group_id()).collect::<Vec<_>>(),
            vec![ctx.group_id.as_str()]
        );
        // The root volume: encrypted gp3.
        let root = i.root_device_name().unwrap_or_default();
        let vol = i
            .block_device_mappings()
            .iter()
            .find(|b| b.device_name() == Some(root))
            .and_then(|b| b.ebs())
            .and_then(|e| e.volume_id())
            .unwrap_or_else(|| panic!("{name}: no root volume at {root}"));
        let v = ec2.describe_volumes().volume_ids(vol).send().await.expect("describe volume");
        let v = &v.volumes()[0];
        assert_eq!(v.encrypted(), Some(true), "{name}: root volume not encrypted");
        assert_eq!(v.volume_type().map(|t| t.as_str()), Some("gp3"), "{name}");
        // The user-data EC2 holds is the document rendered for that host, with no key in it.
        let attr = ec2
            .describe_instance_attribute()
            .instance_id(i.instance_id().unwrap_or_default())
            .attribute(InstanceAttributeName::UserData)
            .send()
            .await
            .expect("user-data");
        let b64 = attr.user_data().and_then(|u| u.value()).unwrap_or_default();
        let ud =
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).expect("base64")).expect("utf-8");
        assert_eq!(&ud, &rendered[&name], "{name}: user-data differs from the rendered document");
        assert!(!ud.contains("PRIVATE KEY"), "{name}: a private key travels in user-data");
        if name.starts_with("manager") {
            manager_zones.insert(i.placement().and_then(|p| p.availability_zone()).unwrap_or_default().to_string());
        }
    }
    assert_eq!(manager_zones.len(), 3, "managers spread 1-1-1 over zones: {manager_zones:?}");

    // The provider finds them by tag (what deploy checks before launching anything).
    let found = a.describe().await.expect("describe");
    assert_eq!(found.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), names);

    // A launch pinned to an address (recover's restore onto the backup's node's address):
    // manager1 terminated, then launched again pinned to an address of the second subnet —
    // placed in the subnet that holds it, not the one round-robin (index 0) would pick. (moto
    // keeps a terminated instance's address in use, where EC2 frees it with the instance's
    // network interface, so the test pins a fresh address rather than manager1's old one.)
    a.terminate("manager1").await.expect("terminate manager1");
    let holder = &ctx.vpc.subnets[1];
    let (net, _) = holder.cidr.split_once('/').expect("a CIDR");
    let net: std::net::Ipv4Addr = net.parse().expect("ipv4");
    let pinned = std::net::Ipv4Addr::from(u32::from(net) + 200);
    let spec = LaunchSpec {
        name: "manager1".into(),
        role: "manager".into(),
        user_data: rendered["manager1"].clone(),
        instance_type: "t3.small".into(),
        image: None,
        private_ip: Some(pinned),
    };
    assert_ne!(ctx.vpc.subnets[0].id, holder.id);
    let again = a.launch(&spec, 0, &ctx).await.expect("launch on a pinned address");
    assert_eq!(again.private_ip, Some(std::net::IpAddr::V4(pinned)));
    let again = live_instances(ec2, cluster).await.into_iter().find(|i| tag(i, "Name") == "manager1").expect("new");
    let pinned_s = pinned.to_string();
    assert_eq!((again.private_ip_address(), again.subnet_id()), (Some(pinned_s.as_str()), Some(holder.id.as_str())));
    // An address no subnet of the cluster holds is refused before EC2 is asked, naming it.
    let outside = LaunchSpec { name: "manager9".into(), private_ip: Some("192.0.2.10".parse().expect("ip")), ..spec };
    let e = a.launch(&outside, 0, &ctx).await.expect_err("an address outside the subnets").to_string();
    assert!(e.contains("192.0.2.10") && e.contains("aws.subnet_ids"), "{e}");
    assert_eq!(live_instances(ec2, cluster).await.len(), 5, "a refused pinned launch made an instance");

    // destroy: nothing with the cluster's tag is left; a second destroy is a no-op.
    let removed = a.destroy().await.expect("destroy");
    assert_eq!(removed.len(), 6, "{removed:?}");
    assert!(live_instances(ec2, cluster).await.is_empty());
    assert!(cluster_groups(ec2, cluster).await.is_empty());
    assert!(a.destroy().await.expect("destroy again").is_empty());
}

#[tokio::test]
async fn issue_6_throttling_and_503_answers_are_retried_until_they_succeed() {
    let moto = Moto::start(&[]);
    let proxy = FaultProxy::start(moto.addr, 2, 2).await;
    let state = tempfile::tempdir().expect("tempdir");
    let a = provider("retry", &proxy.endpoint(), state.path()).await;
    let vpc = a.vpc().await.expect("the SDK retried through the faults");
    assert!(!vpc.subnets.is_empty());
    let faulted = proxy.faulted.load(std::sync::atomic::Ordering::SeqCst);
    let total = proxy.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(faulted, 4, "2 RequestLimitExceeded + 2 bare 503s answered");
    assert!(total > faulted, "the calls after the faults reached moto ({total} requests)");
}

#[tokio::test]
async fn issue_6_a_zone_without_capacity_moves_the_launch_to_the_next_subnet() {
    let moto = Moto::start(&[]);
    let ec2 = moto::ec2(&moto.endpoint()).await;
    let state = tempfile::tempdir().expect("tempdir");
    let direct = provider("capacity", &moto.endpoint(), state.path()).await;
    let vpc = direct.vpc().await.expect("vpc");
    let full = vpc.subnets[0].clone();
    let proxy = moto::FaultProxy::with(
        moto.addr,
        moto::Faults { no_capacity_in_subnet: Some(full.id.clone()), ..Default::default() },
    )
    .await;
    let a = provider("capacity", &proxy.endpoint(), state.path()).await;
    let (ctx, _) = a.prepare(None, &["t3.small"]).await.expect("prepare");
    let spec = LaunchSpec {
        name: "manager0".into(),
        role: "manager".into(),
        user_data: user_data("capacity", "manager0", &ca_pem()),
        instance_type: "t3.small".into(),
        image: None,
        private_ip: None,
    };
    // Index 0 places it in the first subnet, which has no capacity: the next one gets it.
    let h = a.launch(&spec, 0, &ctx).await.expect("launched in another zone");
    assert!(proxy.faulted.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the full zone was tried first");
    let live = live_instances(&ec2, "capacity").await;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].instance_id(), Some(h.instance_id.as_str()));
    let zone = live[0].placement().and_then(|p| p.availability_zone()).unwrap_or_default();
    assert_ne!(zone, full.zone, "launched in the zone without capacity");
    assert_eq!(live[0].subnet_id(), Some(vpc.subnets[1].id.as_str()));
}

fn cli(cluster: &'static str) -> Cli {
    Cli::new(cluster)
}

fn run_aws(c: &Cli, args: &[&str]) -> Output {
    c.run_env(&AWS_ENV, args)
}

/// moto's own dump of its state (its admin API, not EC2's).
fn moto_state(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect moto");
    write!(s, "GET /moto-api/data.json HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body
}

#[test]
fn issue_6_bad_credentials_plan_unknown_ami_and_arm_types_are_clear_and_create_nothing() {
    // Credentials enforced: moto refuses every request it cannot authenticate.
    let strict = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let c = cli("awscreds");
    let base = [
        "--provider",
        "aws",
        "--endpoint-url",
        &strict.endpoint(),
        "--admin-cidr",
        "198.51.100.7/32",
        "--advertise",
        "10.0.0.5",
    ];
    let out = run_aws(&c, &[&["deploy"], &base[..]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AWS refused the credentials") && err.contains("Nothing was created"), "{err}");
    let dump = moto_state(strict.addr);
    assert!(
        !dump.contains("flotilla-awscreds") && !dump.contains("flotilla:cluster"),
        "moto holds something of the cluster: {dump}"
    );

    let moto = Moto::start(&[]);
    let base = [
        "--provider",
        "aws",
        "--endpoint-url",
        &moto.endpoint(),
        "--admin-cidr",
        "198.51.100.7/32",
        "--advertise",
        "10.0.0.5",
    ];
    // plan: what would be made, nothing made.
    let out = run_aws(&c, &[&["plan", "--output", "json"], &base[..]].concat());
    assert!(out.status.success());
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan json");
    let create: Vec<&str> = plan["create"].as_array().expect("create").iter().filter_map(Value::as_str).collect();
    assert!(create.iter().any(|l| l.starts_with("security group flotilla-awscreds")), "{create:?}");
    assert_eq!(create.iter().filter(|l| l.starts_with("instance ")).count(), 5, "{create:?}");
    assert!(!create.iter().any(|l| l.contains("0.0.0.0/0")), "{create:?}");
    let dump = moto_state(moto.addr);
    assert!(!dump.contains("flotilla-awscreds"), "plan created something");
    // An unknown AMI and an arm64 instance type: named, refused before anything is made.
    let out = run_aws(&c, &[&["deploy", "--image", "ami-0123456789abcdef0"], &base[..]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AMI ami-0123456789abcdef0 does not exist"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = dir.path().join("flotilla.toml");
    std::fs::write(&toml, "[instance_types]\nmanager = \"t4g.small\"\nnode = \"t3.small\"\n").expect("write");
    let out = run_aws(&c, &[&["deploy", "-f", toml.to_str().unwrap_or_default()], &base[..]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("t4g.small runs on arm64") && err.contains("x86_64"), "{err}");
    // A missing IAM permission is named, with the way to get the policy; nothing is made.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let proxy = rt.block_on(moto::FaultProxy::with(
        moto.addr,
        moto::Faults { deny_action: Some("CreateSecurityGroup".into()), ..Default::default() },
    ));
    let out = run_aws(
        &c,
        &[
            "deploy",
            "--provider",
            "aws",
            "--endpoint-url",
            &proxy.endpoint(),
            "--admin-cidr",
            "198.51.100.7/32",
            "--advertise",
            "10.0.0.5",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("may not call ec2:CreateSecurityGroup")
            && err.contains("coordinator iam-policy")
            && !err.contains("c2VjcmV0"),
        "{err}"
    );
    drop(proxy);
    // An endpoint that does not answer: named, after the SDK's bounded retries.
    let out = run_aws(
        &c,
        &[
            "plan",
            "--provider",
            "aws",
            "--endpoint-url",
            "http://127.0.0.1:9",
            "--admin-cidr",
            "198.51.100.7/32",
            "--advertise",
            "10.0.0.5",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the EC2 API at http://127.0.0.1:9"), "{err}");
    // A missing admin CIDR is a usage error naming the field.
    let out =
        run_aws(&c, &["deploy", "--provider", "aws", "--endpoint-url", &moto.endpoint(), "--advertise", "10.0.0.5"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("aws.admin_cidr"));
    let dump = moto_state(moto.addr);
    assert!(!dump.contains("flotilla-awscreds"), "a refused deploy created something");
    let _ = std::fs::remove_dir_all(&c.state_root);
}
