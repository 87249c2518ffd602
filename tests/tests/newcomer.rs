//! Issue 13 — the README followed as a new user would, through the real `coordinator` binary:
//!
//! - After `eval "$(coordinator env)"` (`DOCKER_HOST`, `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`
//!   pointing at the swarm leader), a re-deploy is a no-op on the lab (nothing built or looked
//!   for inside the manager, a note says `DOCKER_HOST` is ignored) and `destroy` removes every
//!   container, network and volume.
//! - A lab cluster and an AWS (moto) cluster deployed from one machine at the same time, each
//!   control plane on its own port; `destroy` of the AWS one against an empty endpoint refuses
//!   and keeps its CA.
//! - `destroy` of a lab cluster whose state records hosts the Engine does not have refuses and
//!   keeps the CA; `--force` then removes the state.
//! - A lab host whose container exits fails the deploy at once, naming it, instead of waiting
//!   out the enrollment time-out.
//! - Shell completions parse; `env --unset` undoes `env`; a closed stdout ends a command
//!   quietly.
//!
//! One lab cluster serves the first two (a lab deploy costs 30-60 s on 2 cores).

use std::collections::{BTreeSet, HashMap};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use flotilla_coordinator::control_plane::store::{HostRecord, Store};
use flotilla_coordinator::providers::lab::{Lab, images};
use flotilla_coordinator::providers::{LaunchSpec, ProviderKind, ProviderRecord};
use flotilla_tests::Cli;
use flotilla_tests::moto::{self, AWS_ENV, Moto, REGION};
use serde_json::Value;

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `docker` against this machine's Engine.
fn docker(args: &[&str]) -> String {
    let o = Command::new("docker")
        .args(args)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Everything on this machine's Engine labelled with `cluster`: containers, networks, volumes.
fn labelled(cluster: &str) -> Vec<String> {
    let f = format!("label=flotilla.cluster={cluster}");
    [
        docker(&["ps", "-aq", "--filter", &f]),
        docker(&["network", "ls", "-q", "--filter", &f]),
        docker(&["volume", "ls", "-q", "--filter", &f]),
    ]
    .iter()
    .flat_map(|s| s.lines().map(str::to_string))
    .collect()
}

/// A cluster's state as a control plane leaves it — its CA, a store recording `hosts`, its
/// provider — with no control plane running and nothing at the provider.
fn recorded_state(c: &Cli, record: &ProviderRecord, hosts: &[&str]) -> std::path::PathBuf {
    let dir = c.state_root.join(c.cluster);
    let _ = std::fs::remove_dir_all(&dir);
    flotilla_proto::fs::private_dir(&dir).expect("state dir");
    flotilla_coordinator::control_plane::pki::Pki::load_or_create(&dir, c.cluster, &["10.0.0.5".into()]).expect("CA");
    let store = Store::open(&dir.join("state.redb")).expect("store");
    store
        .write(|tx| {
            for h in hosts {
                tx.put_host(&HostRecord { name: h.to_string(), host_id: format!("id-{h}"), ..Default::default() })?;
            }
            Ok::<_, flotilla_coordinator::control_plane::store::StoreError>(())
        })
        .expect("hosts recorded");
    drop(store);
    record.save(&dir).expect("provider.json");
    dir
}

#[test]
fn issue_13_destroy_refuses_when_the_engine_has_none_of_the_recorded_hosts_and_force_goes_on() {
    let c = Cli::new("nc-guard");
    let record = ProviderRecord { provider: ProviderKind::Lab, aws: None, lab: None };
    let dir = recorded_state(&c, &record, &["manager0", "node0"]);
    let ca = std::fs::read(dir.join("pki/ca.pem")).expect("ca.pem");

    let out = c.run(&["destroy", "--yes"]);
    assert_eq!(out.status.code(), Some(64), "refused as a usage error: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("records 2 host(s) (manager0, node0)")
            && err.contains("finds none of them on the Docker Engine at unix:///var/run/docker.sock")
            && err.contains("the state and its CA are kept")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("pki/ca.pem")).expect("the CA is kept"), ca);
    assert!(dir.join("state.redb").is_file(), "the store is kept");

    let out = c.run(&["destroy", "--yes", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not find manager0, node0"), "{}", text(&out));
    assert!(!dir.exists(), "--force removes the state");
}

#[test]
fn issue_13_completions_parse_env_unset_undoes_env_and_a_closed_stdout_ends_quietly() {
    let c = Cli::new("nc-shell");
    let bash = c.run(&["completions", "bash"]);
    assert!(bash.status.success());
    let script = c.state_root.join("coordinator.bash");
    std::fs::create_dir_all(&c.state_root).expect("dir");
    std::fs::write(&script, &bash.stdout).expect("write");
    let n = Command::new("bash").arg("-n").arg(&script).output().expect("bash -n");
    assert!(n.status.success(), "bash -n: {}", text(&n));
    let s = String::from_utf8_lossy(&bash.stdout);
    assert!(s.contains("failover-test") && s.contains("--unset"), "every command and flag is completed");
    for shell in ["zsh", "fish"] {
        let o = c.run(&["completions", shell]);
        assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("coordinator"), "{shell}");
    }

    // `env --unset` in the same shell as `env`'s exports: none of them is left.
    let unset = c.run(&["env", "--unset"]);
    assert!(unset.status.success());
    let shell = format!(
        "export DOCKER_HOST=tcp://10.0.0.5:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=/x\n{}\necho \"${{DOCKER_HOST-none}} ${{DOCKER_TLS_VERIFY-none}} ${{DOCKER_CERT_PATH-none}}\"",
        String::from_utf8_lossy(&unset.stdout)
    );
    let o = Command::new("bash").arg("-c").arg(&shell).output().expect("bash");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "none none none", "{}", text(&unset));

    // stdout whose reader is gone (`coordinator completions bash | head -0`): no panic.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let o = c.command().args(["completions", "bash"]).stdout(writer).stderr(Stdio::piped()).output().expect("run");
    assert_eq!(o.status.code(), Some(141), "128 + SIGPIPE, as other CLIs: {}", text(&o));
    assert!(o.stderr.is_empty(), "quietly: {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn issue_13_a_lab_host_that_exits_fails_the_deploy_at_once_naming_it() {
    let c = Cli::new("nc-down");
    let _ = c.run(&["destroy", "--yes", "--force"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let hello = rt.block_on(async {
        images::ensure(true, &flotilla_tests::lab_engine().await.address).await.expect("lab images").hello
    });
    // Hosts booted from the hello image print one line and exit: they will never enroll.
    let t = Instant::now();
    let out = c.run(&["deploy", "--managers", "1", "--force", "--nodes", "1", "--image", &hello]);
    let took = t.elapsed();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("manager0 (lab container flotilla-nc-down-manager0) is exited, exit code 0")
            && err.contains("Hello from flotilla/lab-hello")
            && err.contains("re-run `coordinator deploy`"),
        "{err}"
    );
    assert!(took < Duration::from_secs(120), "failed fast, not after the 300 s enrollment time-out ({took:?})");
    let out = c.run(&["destroy", "--yes"]);
    assert!(out.status.success(), "hosts that never enrolled are no recorded hosts: {}", text(&out));
    assert!(labelled(c.cluster).is_empty(), "{:?}", labelled(c.cluster));
}

/// `coordinator env`'s exports, as a map.
fn env_of(c: &Cli) -> HashMap<String, String> {
    let out = c.run(&["env"]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// The port of a cluster's `agent_endpoint`, from `status`.
fn agent_port(c: &Cli, env: &[(&str, &str)]) -> u16 {
    let st = json(&c.run_env(env, &["status", "--output", "json"]));
    let e = st["agent_endpoint"].as_str().unwrap_or_default().to_string();
    e.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("no port in {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_after_eval_env_redeploy_is_a_no_op_an_aws_cluster_runs_alongside_and_destroy_leaves_nothing() {
    let lab_cli = Cli::new("newcomer");
    let _ = lab_cli.run(&["destroy", "--yes", "--force"]);
    assert!(labelled(lab_cli.cluster).is_empty(), "a clean start");
    let small = ["--managers", "1", "--force", "--nodes", "1"];
    let first = json(&lab_cli.run(&[&["deploy", "--output", "json"], &small[..]].concat()));
    assert_eq!(first["launched"].as_array().map(Vec::len), Some(2), "{first}");

    // eval "$(coordinator env)": the plain docker CLI reaches the swarm.
    let env = env_of(&lab_cli);
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(vars.len(), 3, "{env:?}");
    let nodes = Command::new("docker")
        .args(["node", "ls", "--format", "{{.Hostname}}"])
        .envs(vars.iter().copied())
        .output()
        .expect("docker node ls");
    assert_eq!(String::from_utf8_lossy(&nodes.stdout).lines().count(), 2, "{}", text(&nodes));

    // The same shell: a re-deploy is a no-op on the lab, and says DOCKER_HOST is ignored.
    let again = lab_cli.run_env(&vars, &[&["deploy", "--output", "json"], &small[..]].concat());
    let r = json(&again);
    assert_eq!((r["changed"].as_bool(), r["launched"].as_array().map(Vec::len)), (Some(false), Some(0)), "{r}");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains(&format!("DOCKER_HOST={} is ignored for the lab", env["DOCKER_HOST"]))
            && err.contains("it points at manager0 of lab cluster 'newcomer'"),
        "{err}"
    );
    assert_eq!(err.matches("is ignored for the lab").count(), 1, "said once: {err}");
    let inner = docker(&["exec", "flotilla-newcomer-manager0", "docker", "images", "--format", "{{.Repository}}"]);
    assert!(!inner.contains("flotilla/lab-"), "no lab image was built inside the manager: {inner}");

    aws_cluster_alongside(&lab_cli, &vars).await;

    // destroy, still in that shell: every container, network and volume of it goes.
    let out = lab_cli.run_env(&vars, &["destroy", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(labelled(lab_cli.cluster).is_empty(), "left behind: {:?}", labelled(lab_cli.cluster));
    assert!(!lab_cli.state_root.join(lab_cli.cluster).exists(), "the state is gone");
}

/// An AWS (moto) cluster deployed while the lab cluster runs: its own control plane port,
/// its instances booted as lab hosts from their user-data; `destroy` against an empty endpoint
/// refuses and keeps its CA; then it is destroyed for real.
async fn aws_cluster_alongside(lab_cli: &Cli, docker_env: &[(&str, &str)]) {
    let c = Cli { cluster: "newcomer-aws", state_root: lab_cli.state_root.clone() };
    let engine = flotilla_tests::lab_engine().await;
    let images = images::ensure(true, &engine.address).await.expect("lab images");
    let lab_state = tempfile::tempdir().expect("tempdir");
    let lab = Lab::new(engine, c.cluster, lab_state.path(), images);
    lab.destroy().await.expect("clean lab");
    let push = [(lab.images.consul.as_str(), "flotilla/consul:1.8.7"), (lab.images.hello.as_str(), "flotilla/hello:1")];
    let (network, refs) = lab.ensure(&push).await.expect("lab network and registry");
    let gateway = network.coordinator_ip.expect("gateway").to_string();
    let moto = Moto::start(&[]);
    let ec2 = moto::ec2(&moto.endpoint()).await;
    let toml = lab_state.path().join("flotilla.toml");
    let registry = network.registry.clone().expect("registry");
    // The default listen address (0.0.0.0): before issue 13 it collided with the lab's 7443.
    std::fs::write(
        &toml,
        format!(
            "provider = \"aws\"\nmanagers = 1\nforce = true\nnodes = 1\nsmoke_test = false\n\
             [images]\nconsul = \"{}\"\nhello = \"{}\"\ninsecure_registries = [\"{registry}\"]\n\
             [coordinator]\nadvertise = \"{gateway}\"\n\
             [aws]\nendpoint_url = \"{}\"\nregion = \"{REGION}\"\nadmin_cidr = \"{gateway}/32\"\n",
            refs[0],
            refs[1],
            moto.endpoint()
        ),
    )
    .expect("flotilla.toml");
    let toml = toml.to_str().unwrap_or_default().to_string();
    deploy_booting_instances(&c, &toml, &ec2, &lab).await;
    let lab_port = agent_port(lab_cli, &[]);
    let aws_port = agent_port(&c, &AWS_ENV);
    assert_ne!(lab_port, aws_port, "each cluster has its own control-plane port");
    let listen = std::fs::read_to_string(c.state_root.join(c.cluster).join("listen")).expect("listen recorded");
    assert_eq!(listen.trim(), format!("0.0.0.0:{aws_port}"));
    let table = c.run_env(&AWS_ENV, &["status"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains(&format!("hosts dial {gateway}:{aws_port}")));

    // destroy against an endpoint that has none of its instances: refused, the CA kept.
    let ca = std::fs::read(c.state_root.join(c.cluster).join("pki/ca.pem")).expect("ca.pem");
    let empty = Moto::start(&[]);
    let mut env: Vec<(&str, &str)> = AWS_ENV.to_vec();
    env.extend_from_slice(docker_env);
    let out = c.run_env(&env, &["destroy", "--yes", "--endpoint-url", &empty.endpoint()]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("finds none of them in AWS region {REGION} at {}", empty.endpoint())), "{err}");
    assert_eq!(std::fs::read(c.state_root.join(c.cluster).join("pki/ca.pem")).expect("CA kept"), ca);
    assert!(json(&c.run_env(&AWS_ENV, &["status", "--output", "json"]))["hosts"][0]["connected"] == true);

    let out = c.run_env(&env, &["destroy", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    lab.destroy().await.expect("the instances' lab hosts");
}

/// `deploy -f toml` in the background; every instance moto reports is booted as a lab host
/// from its user-data until the deploy ends, successfully.
async fn deploy_booting_instances(c: &Cli, toml: &str, ec2: &aws_sdk_ec2::Client, lab: &Lab) {
    let mut child = c
        .command()
        .envs(AWS_ENV)
        .args(["--cluster", c.cluster, "deploy", "-f", toml])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start deploy");
    let mut booted = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(400);
    let status = loop {
        boot_new_instances(ec2, lab, c.cluster, &mut booted).await;
        if let Some(s) = child.try_wait().expect("wait deploy") {
            break s;
        }
        assert!(Instant::now() < deadline, "deploy did not finish within 400 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let out = child.wait_with_output().expect("deploy output");
    eprintln!("deploy --provider aws:\n{}", text(&out));
    assert!(status.success(), "the AWS cluster deploys while the lab cluster runs");
    assert_eq!(booted.len(), 2, "{booted:?}");
}

async fn boot_new_instances(ec2: &aws_sdk_ec2::Client, lab: &Lab, cluster: &str, booted: &mut BTreeSet<String>) {
    use base64::Engine as _;
    let filter = aws_sdk_ec2::types::Filter::builder().name("tag:flotilla:cluster").values(cluster).build();
    let r = ec2.describe_instances().filters(filter).send().await.expect("describe instances");
    for i in r.reservations().iter().flat_map(|r| r.instances()) {
        let tag = |k: &str| i.tags().iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).unwrap_or_default();
        let (name, running) = (tag("flotilla:host").to_string(), i.state().and_then(|s| s.name()));
        if booted.contains(&name) || running.is_some_and(|s| s.as_str() == "terminated") {
            continue;
        }
        let attr = ec2
            .describe_instance_attribute()
            .instance_id(i.instance_id().unwrap_or_default())
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .expect("user-data");
        let b64 = attr.user_data().and_then(|u| u.value()).unwrap_or_default();
        let ud = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).expect("b64")).expect("utf-8");
        let spec = LaunchSpec {
            name: name.clone(),
            role: tag("flotilla:role").to_string(),
            user_data: ud,
            instance_type: String::new(),
            image: None,
            private_ip: None,
        };
        lab.launch(&spec).await.expect("boot a lab host from the instance's user-data");
        booted.insert(name);
    }
}
