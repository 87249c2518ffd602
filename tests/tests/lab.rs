//! Issue 3 — the lab: images built here and tagged by recipe, hosts that boot like EC2
//! instances from exactly the rendered user-data (real systemd, real cloud-init, their own
//! Engine), the agent binary fetched from the coordinator and verified, the lab registry,
//! and a teardown that leaves nothing.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use flotilla_coordinator::providers::LaunchSpec;
use flotilla_coordinator::providers::lab::{self, Lab};
use flotilla_proto::v1;
use flotilla_tests::{Coord, agent_binary_path};

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).env_remove("DOCKER_HOST").output().expect("docker CLI")
}

fn out(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The lab's images on the lab's Engine.
async fn images() -> lab::images::LabImages {
    lab::images::ensure(true, &flotilla_tests::lab_engine().await.address).await.expect("images")
}

fn labelled(cluster: &str) -> usize {
    let f = format!("label=flotilla.cluster={cluster}");
    [
        docker(&["ps", "-aq", "--filter", &f]),
        docker(&["volume", "ls", "-q", "--filter", &f]),
        docker(&["network", "ls", "-q", "--filter", &f]),
    ]
    .iter()
    .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
    .sum()
}

#[tokio::test]
async fn rebuilding_unchanged_lab_images_is_a_no_op() {
    let first = images().await;
    let t = Instant::now();
    let second = images().await;
    let took = t.elapsed();
    assert_eq!(first.host, second.host);
    assert_eq!(first.consul, second.consul);
    assert_eq!(first.hello, second.hello);
    assert_eq!(first.registry, second.registry);
    assert!(took < Duration::from_secs(10), "an unchanged recipe must not rebuild (took {took:?})");
    for tag in [&first.host, &first.consul, &first.hello, &first.registry] {
        let o = docker(&["image", "inspect", "-f", "{{index .Config.Labels \"flotilla.recipe-hash\"}}", tag]);
        let hash = String::from_utf8_lossy(&o.stdout).trim().to_string();
        assert!(tag.ends_with(&hash) && hash.len() == 12, "{tag} labelled with its recipe hash {hash}");
    }
}

#[tokio::test]
async fn every_rendered_user_data_passes_cloud_init_schema_in_the_lab_host_image() {
    let images = images().await;
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cloud-init/tests/golden");
    let golden = golden.canonicalize().expect("golden dir");
    let mut checked = 0;
    for entry in std::fs::read_dir(&golden).expect("golden files") {
        let name = entry.expect("entry").file_name().to_string_lossy().to_string();
        if !name.ends_with(".yaml") {
            continue;
        }
        let o = docker(&[
            "run",
            "--rm",
            "--pull",
            "never",
            "--network",
            "none",
            "-v",
            &format!("{}:/golden:ro", golden.display()),
            &images.host,
            "cloud-init",
            "schema",
            "--config-file",
            &format!("/golden/{name}"),
        ]);
        assert!(o.status.success(), "{name} fails cloud-init schema: {}", out(&o));
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} golden files");
    // The check is real: an invalid document is refused.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bad.yaml"), "#cloud-config\nwrite_files: 42\n").expect("write");
    let o = docker(&[
        "run",
        "--rm",
        "--pull",
        "never",
        "--network",
        "none",
        "-v",
        &format!("{}:/d:ro", dir.path().display()),
        &images.host,
        "cloud-init",
        "schema",
        "--config-file",
        "/d/bad.yaml",
    ]);
    assert!(!o.status.success(), "cloud-init schema accepted an invalid document");
}

#[tokio::test]
async fn lab_hosts_boot_from_rendered_user_data_enroll_and_a_tampered_agent_is_refused() {
    const CLUSTER: &str = "t-lab";
    let images = images().await;
    let state = tempfile::tempdir().expect("tempdir");
    let lab = Lab::new(flotilla_tests::lab_engine().await, CLUSTER, state.path(), images);
    lab.destroy().await.expect("clean start");
    let hello = lab.images.hello.clone();
    let (net, refs) = lab.ensure(&[(&hello, "flotilla/hello:1")]).await.expect("lab network and registry");
    // Twice more at once, as deploy's background push and an upgrade it finishes push: both
    // succeed (each tags, pushes and untags the same loopback name: one at a time).
    let push = [(hello.as_str(), "flotilla/hello:1")];
    let (a, b) = tokio::join!(lab.ensure(&push), lab.ensure(&push));
    assert_eq!(a.expect("a push beside another").1, refs);
    assert_eq!(b.expect("the other").1, refs);
    let gateway = net.coordinator_ip.expect("gateway");
    let machine_cgroups = std::fs::read_dir("/sys/fs/cgroup").map(|d| d.count()).unwrap_or(0);

    // A control plane on the lab's gateway, serving the agent binary.
    let bin = agent_binary_path();
    let coord = Coord::start_on(&format!("{gateway}:0"), |c| c.agent_binary = Some(bin.clone())).await;
    let mut admin = coord.admin().await;
    let st = admin.status(v1::StatusRequest::default()).await.expect("status").into_inner();

    let mut specs = Vec::new();
    for (host, tamper) in [("lab0", false), ("lab1", false), ("labbad", true)] {
        let token = coord.token(host).await;
        let sha = if tamper { "0".repeat(64) } else { st.agent_binary_sha256.clone() };
        let user_data = flotilla_cloud_init::render_host(&flotilla_cloud_init::HostInputs {
            cluster: CLUSTER.into(),
            host_name: host.into(),
            coordinator: vec![st.agent_endpoint.clone()],
            ca_pem: coord.ca_pem(),
            join_token: Some(token),
            agent: flotilla_cloud_init::AgentBinary {
                url: format!("https://{}/v1/agent/flotilla-agent", st.agent_endpoint),
                sha256: sha,
                version: st.agent_version.clone(),
            },
            engine: flotilla_cloud_init::Engine::Preinstalled,
            insecure_registries: net.registry.iter().cloned().collect(),
            heartbeat_interval_s: 2,
            engine_tls: false,
        })
        .expect("render");
        specs.push(LaunchSpec {
            name: host.into(),
            role: "node".into(),
            user_data,
            instance_type: String::new(),
            image: None,
            private_ip: None,
        });
    }
    let booted = Instant::now();
    for r in futures::future::join_all(specs.iter().map(|s| lab.launch(s))).await {
        r.expect("launch");
    }

    // The two good hosts enroll over mTLS and hold sessions.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let st = admin.status(v1::StatusRequest::default()).await.expect("status").into_inner();
        let up = st.hosts.iter().filter(|h| h.connected).map(|h| h.name.clone()).collect::<Vec<_>>();
        if up.contains(&"lab0".to_string()) && up.contains(&"lab1".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "lab hosts did not enroll: {up:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("two lab hosts booted and enrolled in {:?}", booted.elapsed());
    let name0 = lab.container_name("lab0");
    let exec = |c: &str, cmd: &[&str]| {
        let mut a = vec!["exec", c];
        a.extend_from_slice(cmd);
        docker(&a)
    };
    // cloud-init finished without errors; the agent's unit runs; the binary was verified.
    let o = exec(&name0, &["cloud-init", "status", "--wait", "--long"]);
    assert!(o.status.success() && out(&o).contains("status: done"), "{}", out(&o));
    let log = out(&exec(&name0, &["cat", "/var/log/cloud-init-output.log"]));
    assert!(log.contains("flotilla-bootstrap: done"), "{log}");
    // Downloaded from the coordinator (verified against the user-data's sha256: the tampered
    // host below shows the check refusing).
    assert!(log.contains("agent: downloading") && log.contains("installed at /usr/local/bin/flotilla-agent"), "{log}");
    assert_eq!(out(&exec(&name0, &["systemctl", "is-active", "flotilla-agent"])).trim(), "active");
    assert!(exec(&name0, &["docker", "info"]).status.success(), "the inner Engine answers");
    // cloud-init never looks beyond NoCloud (no metadata address is probed).
    let ds = out(&exec(&name0, &["sh", "-c", "cat /etc/cloud/cloud.cfg.d/*.cfg"]));
    assert!(ds.contains("datasource_list") && ds.contains("NoCloud") && !ds.contains("Ec2"), "{ds}");
    // The token file is gone (the agent deleted it after enrolling); its identity is 0600.
    assert!(!exec(&name0, &["test", "-e", "/etc/flotilla/token"]).status.success());
    assert_eq!(out(&exec(&name0, &["stat", "-c", "%a", "/var/lib/flotilla/identity.pem"])).trim(), "600");

    // Two hosts reach each other; a host pulls the hello image from the lab registry.
    let ip1 = lab.host("lab1").await.expect("lab1").private_ip.expect("ip").to_string();
    assert!(exec(&name0, &["ping", "-c", "1", "-W", "3", &ip1]).status.success(), "lab0 → lab1");
    let hello = exec(&name0, &["docker", "run", "--rm", &refs[0]]);
    assert!(out(&hello).contains("Hello from"), "{}", out(&hello));

    // The tampered binary is refused and reported; that host never starts the agent.
    let bad = lab.container_name("labbad");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !exec(&bad, &["test", "-f", "/var/lib/flotilla/bootstrap-failed"]).status.success() {
        assert!(Instant::now() < deadline, "the tampered host did not report its failure");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let why = out(&exec(&bad, &["cat", "/var/lib/flotilla/bootstrap-failed"]));
    assert!(why.contains("sha256 mismatch"), "{why}");
    assert_ne!(out(&exec(&bad, &["systemctl", "is-active", "flotilla-agent"])).trim(), "active");
    assert!(!exec(&bad, &["test", "-e", "/usr/local/bin/flotilla-agent"]).status.success());
    let names: Vec<String> = admin
        .status(v1::StatusRequest::default())
        .await
        .expect("status")
        .into_inner()
        .hosts
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert!(!names.contains(&"labbad".to_string()), "{names:?}");

    // Hosts do not touch the machine's cgroup tree (the trap in shared/LAB.md's flags).
    assert_eq!(std::fs::read_dir("/sys/fs/cgroup").map(|d| d.count()).unwrap_or(0), machine_cgroups);
    let mnt = String::from_utf8_lossy(
        &Command::new("findmnt").args(["-no", "OPTIONS", "/sys/fs/cgroup"]).output().expect("findmnt").stdout,
    )
    .to_string();
    assert!(mnt.starts_with("rw"), "the machine's /sys/fs/cgroup became {mnt}");

    // Teardown leaves nothing labelled with the cluster.
    lab.destroy().await.expect("destroy");
    assert_eq!(labelled(CLUSTER), 0);
}
