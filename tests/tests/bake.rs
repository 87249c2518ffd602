//! Issue 8 — `coordinator bake` on the lab, through the real binary: a bake makes an image
//! with the Engine and the agent installed and nothing secret in it; the default cluster
//! deploys from it, verifies and passes the smoke test, and every host's cloud-init log says
//! the installation was skipped; a second bake reuses the image; a host from an image whose
//! agent is another build replaces it, saying so; a builder whose installation fails makes the
//! bake fail with its cloud-init output and leaves nothing behind.
//!
//! Cluster names — one set per test, as two of them run side by side: `bake` (the bake's
//! builder scope) and `baked` (the cluster deployed from the image); `bakefail` (the failing
//! bake); `bakebad` (the refused requests); `rebake` and `rebaked` (the other agent build).
//! Images: `flotilla-test/baked`, `flotilla-test/bakefail`, `flotilla-test/baked-other`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use flotilla_tests::Cli;
use serde_json::Value;

const IMAGE: &str = "flotilla-test/baked";
const FAIL_IMAGE: &str = "flotilla-test/bakefail";

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .output()
        .expect("docker CLI")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn lines(o: &Output) -> Vec<String> {
    stdout(o).lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// Every tag of `repo` on this machine (the tests' own image names only).
fn images_named(repo: &str) -> Vec<String> {
    lines(&docker(&["images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", &format!("reference={repo}")]))
}

fn remove_images(repo: &str) {
    for i in images_named(repo) {
        docker(&["rmi", "-f", &i]);
    }
}

/// What a bake under `--cluster scope` may leave: its builder container, network, volume.
fn builder_leftovers(scope: &str) -> Vec<String> {
    let builder = format!("flotilla-{scope}.bake-builder");
    let mut left: Vec<String> = [
        ("container", builder.clone()),
        ("network", format!("flotilla-{scope}.bake")),
        ("volume", format!("{builder}-docker")),
    ]
    .into_iter()
    .filter(|(kind, name)| docker(&[kind, "inspect", name]).status.success())
    .map(|(kind, name)| format!("{kind} {name}"))
    .collect();
    left.extend(lines(&docker(&["volume", "ls", "-q", "--filter", &format!("label=flotilla.cluster={scope}.bake")])));
    left
}

fn ok_json(o: &Output) -> Value {
    assert!(o.status.success(), "the command failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

fn sha256_file(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&o.stdout).split(' ').next().unwrap_or_default().to_string()
}

#[test]
fn bake_then_deploy_the_default_cluster_from_the_image_then_reuse_it() {
    let bake = Cli::new("bake");
    let baked = Cli::new("baked");
    baked.run(&["destroy", "--yes"]);
    remove_images(IMAGE);

    // 1. Bake.
    let t = Instant::now();
    let out = bake.run(&["bake", "--name", IMAGE, "--output", "json"]);
    let r = ok_json(&out);
    eprintln!("baked in {:?}", t.elapsed());
    assert_eq!(r["reused"], false);
    assert_eq!(r["provider"], "lab");
    let image = r["image"].as_str().expect("image").to_string();
    let image_id = r["image_id"].as_str().expect("image id").to_string();
    assert!(image.starts_with(&format!("{IMAGE}:")), "{image}");
    let progress = stderr(&out);
    // The builder's newest `flotilla-bake:` line at each poll (the download can start and end
    // between two polls on a fast host: either of its lines shows the progress relayed).
    assert!(
        progress.lines().any(|l| l.contains("builder") && l.contains("flotilla-bake: agent: ")),
        "progress shown: {progress}"
    );
    // The agent baked in is the one this build serves to hosts.
    let agent_sha = sha256_file(&flotilla_tests::agent_binary_path());
    assert_eq!(r["agent_sha256"], agent_sha.as_str());
    assert_eq!(r["agent_version"], flotilla_agent::VERSION);
    // The Engine the builder reports is the one the lab host image's recipe installed (its
    // Debian version, e.g. 26.1.5+dfsg1-9+deb13u1+b1, begins with the Engine's own).
    let engine = r["engine_version"].as_str().expect("engine").to_string();
    let base = r["base"].as_str().expect("base");
    let packaged =
        stdout(&docker(&["image", "inspect", "-f", "{{index .Config.Labels \"flotilla.docker-version\"}}", base]));
    assert!(!engine.is_empty() && packaged.starts_with(&engine), "Engine {engine}, the image's docker.io {packaged}");
    let major: u32 = engine.split('.').next().and_then(|m| m.parse().ok()).expect("a major version");
    assert!(major >= 25, "the lab's Engine is as new as Amazon Linux 2023's (25.x): {engine}");
    // The builder, its network and its volume are gone.
    assert_eq!(builder_leftovers("bake"), Vec::<String>::new());

    // 2. The image's labels and config: versions, and no cluster identity.
    let cfg: Value =
        serde_json::from_str(&stdout(&docker(&["image", "inspect", &image, "--format", "{{json .Config}}"])))
            .expect("config");
    let labels = &cfg["Labels"];
    assert_eq!(labels["flotilla.bake.agent-version"], flotilla_agent::VERSION);
    assert_eq!(labels["flotilla.bake.agent-sha256"], agent_sha.as_str());
    assert_eq!(labels["flotilla.bake.engine-version"], engine.as_str());
    assert_eq!(labels["flotilla.bake.name"], IMAGE);
    assert!(labels.get("flotilla.cluster").is_none() && labels.get("flotilla.host").is_none(), "{labels}");
    let cfg_text = cfg.to_string();
    assert!(!cfg_text.contains("bake.bake") && !cfg_text.contains("builder"), "{cfg_text}");
    assert!(cfg["Hostname"].as_str().unwrap_or_default().is_empty(), "{cfg_text}");

    // 3. The image's filesystem: what the bake added holds no key, token, certificate or
    // cluster identity, and the agent and its (disabled) unit are there.
    scan_bake_layer(&image, &agent_sha);

    // 4. A second bake reuses the image: nothing boots.
    let t = Instant::now();
    let again = ok_json(&bake.run(&["bake", "--name", IMAGE, "--output", "json"]));
    assert_eq!(again["reused"], true);
    assert_eq!(again["image"], image.as_str());
    assert_eq!(again["image_id"], image_id.as_str());
    assert!(t.elapsed() < Duration::from_secs(60), "a reuse took {:?}", t.elapsed());
    assert_eq!(builder_leftovers("bake"), Vec::<String>::new());
    assert_eq!(images_named(IMAGE), vec![image.clone()]);

    // 5. The default cluster deploys from the image, verifies and passes the smoke test. Its
    //    hosts read /usr from a copy of this image's (issue 19, `providers/lab/usr_copy.rs`),
    //    made by the first launch from it, which removes copies whose image is gone.
    let stale = "flotilla-lab-usr-stale0test0";
    let zeros = format!("flotilla.lab-usr-of=sha256:{}", "0".repeat(64));
    assert!(docker(&["volume", "create", "--label", &zeros, stale]).status.success());
    let t = Instant::now();
    let d = ok_json(&baked.run(&["deploy", "--image", &image, "--output", "json"]));
    let copies = stdout(&docker(&["volume", "ls", "-q", "--filter", &format!("label=flotilla.lab-usr-of={image_id}")]));
    assert_eq!(copies.lines().count(), 1, "one /usr copy of the baked image: {copies}");
    assert!(!docker(&["volume", "inspect", stale]).status.success(), "the copy of a gone image was kept");
    eprintln!("deployed from the baked image in {:?}", t.elapsed());
    assert_eq!(d["changed"], true);
    assert_eq!(d["swarm"]["managers"].as_array().map(Vec::len), Some(3), "{d}");
    assert_eq!(d["swarm"]["workers"].as_array().map(Vec::len), Some(2), "{d}");
    assert_eq!(d["consul"]["peers"].as_array().map(Vec::len), Some(3), "{d}");
    assert_eq!(d["smoke_test"]["tasks"], 2, "{d}");

    // 6. Every host booted from the image and skipped both installations, saying so.
    let mut machine_ids = Vec::new();
    for h in ["manager0", "manager1", "manager2", "node0", "node1"] {
        let c = format!("flotilla-baked-{h}");
        assert_eq!(stdout(&docker(&["inspect", "-f", "{{.Image}}", &c])), image_id, "{h} runs another image");
        let log = stdout(&docker(&["exec", &c, "cat", "/var/log/cloud-init-output.log"]));
        assert!(log.contains(&format!("flotilla-bootstrap: engine: already present (version {engine}")), "{h}: {log}");
        assert!(log.contains("installation skipped"), "{h}: {log}");
        assert!(
            log.contains(&format!(
                "flotilla-bootstrap: agent: version {} already installed, download skipped",
                flotilla_agent::VERSION
            )),
            "{h}: {log}"
        );
        assert!(!log.contains("agent: downloading"), "{h} downloaded the agent anyway: {log}");
        assert!(log.contains("flotilla-bootstrap: done"), "{h}: {log}");
        let id = stdout(&docker(&["exec", &c, "cat", "/etc/machine-id"]));
        assert_eq!(id.len(), 32, "{h} has machine-id {id:?}");
        machine_ids.push(id);
    }
    machine_ids.sort();
    machine_ids.dedup();
    assert_eq!(machine_ids.len(), 5, "hosts from one image must each make their own machine-id");

    let gone = baked.run(&["destroy", "--yes"]);
    assert!(gone.status.success());
    remove_images(IMAGE);
}

/// Saves `image`, takes its top layer (what the bake's commit added) and checks every file
/// in it. Names and text contents are checked; binaries only by digest (the agent).
fn scan_bake_layer(image: &str, agent_sha: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tar = dir.path().join("image.tar");
    let o = docker(&["save", "-o", tar.to_str().expect("utf-8"), image]);
    assert!(o.status.success(), "docker save: {}", stderr(&o));
    let untar = |archive: &Path, into: &Path, members: &[&str]| {
        std::fs::create_dir_all(into).expect("mkdir");
        let o = Command::new("tar").arg("-xf").arg(archive).arg("-C").arg(into).args(members).output().expect("tar");
        assert!(o.status.success(), "tar: {}", stderr(&o));
    };
    untar(&tar, dir.path(), &["manifest.json"]);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).expect("manifest")).expect("json");
    let layers = manifest[0]["Layers"].as_array().expect("layers");
    assert!(layers.len() >= 2, "the bake adds a layer on top of the base: {manifest}");
    let top = layers.last().and_then(Value::as_str).expect("top layer");
    untar(&tar, dir.path(), &[top]);
    let root = dir.path().join("rootfs");
    untar(&dir.path().join(top), &root, &[]);
    std::fs::remove_file(&tar).expect("rm");

    let mut files = Vec::new();
    walk(&root, &mut files);
    let rel = |p: &Path| format!("/{}", p.strip_prefix(&root).expect("under root").display());
    let names: Vec<String> = files.iter().map(|p| rel(p)).collect();
    eprintln!("the bake's layer: {} files", names.len());
    for must in [
        "/usr/local/bin/flotilla-agent",
        "/etc/systemd/system/flotilla-agent.service",
        "/var/lib/flotilla/bake-complete",
    ] {
        assert!(names.iter().any(|n| n == must), "{must} missing from the bake's layer: {names:?}");
    }
    // The agent is installed but not enabled: the cluster's user-data starts it.
    assert!(!names.iter().any(|n| n.contains(".wants/flotilla-agent")), "{names:?}");
    let secret_name = |n: &str| {
        let base = n.rsplit('/').next().unwrap_or(n).to_ascii_lowercase();
        [".pem", ".key", ".crt", ".csr", ".p12"].iter().any(|s| base.ends_with(s))
            || base.ends_with("token")
            || ["id_rsa", "id_dsa", "id_ecdsa", "id_ed25519"].iter().any(|k| base.starts_with(k))
            || base == "key.json"
            || base.starts_with("ssh_host_")
            || n.starts_with("/etc/flotilla")
            || n.starts_with("/var/lib/cloud/instance")
            || n.starts_with("/var/lib/cloud/data")
            || n.starts_with("/var/log/cloud-init")
            || n == "/usr/local/lib/flotilla/bake.sh"
            || n == "/var/lib/flotilla/identity.pem"
    };
    let bad: Vec<&String> = names.iter().filter(|n| secret_name(n)).collect();
    assert!(bad.is_empty(), "the baked image holds key/token/certificate/cloud-init state files: {bad:?}");
    for (path, name) in files.iter().zip(&names) {
        let meta = std::fs::symlink_metadata(path).expect("meta");
        if !meta.is_file() {
            continue;
        }
        if name == "/etc/machine-id" {
            assert_eq!(meta.len(), 0, "/etc/machine-id must be empty in the image");
        }
        if name == "/usr/local/bin/flotilla-agent" {
            assert_eq!(sha256_file(path), agent_sha, "the baked agent");
            continue;
        }
        let bytes = std::fs::read(path).expect("read");
        if bytes.iter().take(8192).any(|b| *b == 0) {
            continue; // a binary database (containerd's metadata, wtmp)
        }
        let text = String::from_utf8_lossy(&bytes);
        for needle in ["BEGIN CERTIFICATE", "PRIVATE KEY", "bake.bake", "10.213.", "join_token", "cluster ="] {
            assert!(!text.contains(needle), "{name} in the baked image contains {needle:?}");
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        let meta = std::fs::symlink_metadata(&p).expect("meta");
        if meta.is_dir() {
            walk(&p, out);
        }
        out.push(p);
    }
}

#[test]
fn a_builder_whose_installation_fails_fails_the_bake_with_its_cloud_init_output_and_leaves_nothing() {
    let bake = Cli::new("bakefail");
    remove_images(FAIL_IMAGE);
    // The builder's own loopback: nothing listens there, so the agent download fails.
    let out = bake.run(&[
        "bake",
        "--name",
        FAIL_IMAGE,
        "--agent-url",
        "https://127.0.0.1:1/v1/agent/flotilla-agent",
        "--timeout",
        "5m",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("the builder flotilla-bakefail.bake-builder failed: agent: download failed (curl exit 7)"),
        "the reason is named: {err}"
    );
    assert!(err.contains("--- its cloud-init output (/var/log/cloud-init-output.log) ---"), "{err}");
    assert!(
        err.contains("flotilla-bake: agent: downloading version")
            && err.contains("flotilla-bake: agent: download failed"),
        "the builder's own cloud-init lines are shown: {err}"
    );
    assert_eq!(builder_leftovers("bakefail"), Vec::<String>::new(), "the failed bake left things behind");
    assert_eq!(images_named(FAIL_IMAGE), Vec::<String>::new(), "a failed bake made an image");
}

#[test]
fn bad_bake_and_image_requests_exit_64_naming_the_problem_and_create_nothing() {
    let cli = Cli::new("bakebad");
    let aws = cli.run(&["bake", "--provider", "aws"]);
    assert_eq!(aws.status.code(), Some(64));
    assert!(stderr(&aws).contains("bake --provider aws needs --advertise"), "{}", stderr(&aws));

    let name = cli.run(&["bake", "--name", "Flotilla/Baked:latest"]);
    assert_eq!(name.status.code(), Some(64));
    assert!(stderr(&name).contains("--name 'Flotilla/Baked:latest'"), "{}", stderr(&name));

    let base = cli.run(&["bake", "--base", "flotilla-test/no-such-base:1"]);
    assert_eq!(base.status.code(), Some(64));
    assert!(
        stderr(&base).contains("--base 'flotilla-test/no-such-base:1'") && stderr(&base).contains("never pulls"),
        "{}",
        stderr(&base)
    );
    assert_eq!(builder_leftovers("bakebad"), Vec::<String>::new());

    let deploy = Cli::new("bakebad");
    let d = deploy.run(&["deploy", "--image", "flotilla-test/no-such-image:1"]);
    assert_eq!(d.status.code(), Some(64));
    let e = stderr(&d);
    assert!(
        e.contains("'flotilla-test/no-such-image:1'") && e.contains("--image") && e.contains("coordinator bake"),
        "{e}"
    );
    let f = "label=flotilla.cluster=bakebad";
    let made = [
        docker(&["ps", "-aq", "--filter", f]),
        docker(&["network", "ls", "-q", "--filter", f]),
        docker(&["volume", "ls", "-q", "--filter", f]),
    ];
    assert!(made.iter().all(|o| stdout(o).is_empty()), "a deploy from a missing image created something");
    deploy.run(&["destroy", "--yes"]);
}

/// A host booted from an image whose agent is another build than the cluster's downloads the
/// cluster's agent, and its cloud-init log says why.
#[tokio::test]
async fn a_host_from_an_image_with_another_agent_build_replaces_it_saying_so() {
    use flotilla_coordinator::providers::LaunchSpec;
    use flotilla_coordinator::providers::lab::{self, Lab};
    use flotilla_proto::v1;

    const OTHER: &str = "flotilla-test/baked-other";
    Cli::new("rebaked").run(&["destroy", "--yes"]);
    remove_images(OTHER);
    // Another build: the coordinator executable (which doubles as the agent) baked in as the agent.
    let other = flotilla_tests::target_dir().join("coordinator");
    let r = ok_json(&Cli::new("rebake").run(&[
        "bake",
        "--name",
        OTHER,
        "--agent-binary",
        other.to_str().expect("utf-8"),
        "--output",
        "json",
    ]));
    let image = r["image"].as_str().expect("image").to_string();
    let other_sha = r["agent_sha256"].as_str().expect("sha").to_string();
    assert_eq!(other_sha, sha256_file(&other));

    // One host of the lab cluster `baked`, booted from that image, against a control plane on
    // the lab network that serves this build's agent.
    let engine = flotilla_tests::lab_engine().await;
    let images = lab::images::ensure(true, &engine.address).await.expect("images");
    let state = tempfile::tempdir().expect("tempdir");
    let lab = Lab::new(engine, "rebaked", state.path(), images);
    lab.destroy().await.expect("clean start");
    let (_, base) = lab.ensure_network().await.expect("network");
    let gateway = std::net::Ipv4Addr::from(u32::from(base) | 1);
    let agent = flotilla_tests::agent_binary_path();
    let mut coord =
        flotilla_tests::Coord::start_on(&format!("{gateway}:0"), |c| c.agent_binary = Some(agent.clone())).await;
    let mut admin = coord.admin().await;
    let st = admin.status(v1::StatusRequest::default()).await.expect("status").into_inner();
    assert_ne!(st.agent_binary_sha256, other_sha);
    let user_data = flotilla_cloud_init::render_host(&flotilla_cloud_init::HostInputs {
        cluster: "rebaked".into(),
        host_name: "node0".into(),
        coordinator: vec![st.agent_endpoint.clone()],
        ca_pem: coord.ca_pem(),
        join_token: Some(coord.token("node0").await),
        agent: flotilla_cloud_init::AgentBinary {
            url: format!("https://{}/v1/agent/flotilla-agent", st.agent_endpoint),
            sha256: st.agent_binary_sha256.clone(),
            version: st.agent_version.clone(),
        },
        engine: flotilla_cloud_init::Engine::Preinstalled,
        insecure_registries: vec![],
        heartbeat_interval_s: 2,
        engine_tls: false,
    })
    .expect("render");
    lab.launch(&LaunchSpec {
        name: "node0".into(),
        role: "node".into(),
        user_data,
        instance_type: String::new(),
        image: Some(image.clone()),
        private_ip: None,
    })
    .await
    .expect("launch");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let st = admin.status(v1::StatusRequest::default()).await.expect("status").into_inner();
        if st.hosts.iter().any(|h| h.name == "node0" && h.connected) {
            break;
        }
        assert!(Instant::now() < deadline, "node0 did not enroll");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let c = lab.container_name("node0");
    let log = stdout(&docker_exec(&c, &["cat", "/var/log/cloud-init-output.log"]));
    assert!(
        log.contains(&format!(
            "flotilla-bootstrap: agent: /usr/local/bin/flotilla-agent is not version {} (sha256 {other_sha}), replacing it",
            st.agent_version
        )),
        "{log}"
    );
    assert!(
        log.contains("flotilla-bootstrap: agent: downloading version")
            && log.contains("installed at /usr/local/bin/flotilla-agent"),
        "{log}"
    );
    let installed = stdout(&docker_exec(&c, &["sha256sum", "/usr/local/bin/flotilla-agent"]));
    assert!(installed.starts_with(&st.agent_binary_sha256), "{installed}");

    coord.stop().await;
    lab.destroy().await.expect("destroy");
    remove_images(OTHER);
}

fn docker_exec(container: &str, cmd: &[&str]) -> Output {
    let mut args = vec!["exec", container];
    args.extend_from_slice(cmd);
    docker(&args)
}
