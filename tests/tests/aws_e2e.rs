//! Issue 6 (and 15, 17) — the AWS path end to end: `coordinator deploy --provider aws` against
//! moto's EC2 server on loopback and, for each instance moto reports, a lab host booted from
//! that instance's user-data as read back through DescribeInstanceAttribute: EC2 API →
//! user-data → cloud-init → agent → roles → swarm, all real except the EC2 machines
//! themselves (an instance terminated through EC2 has its lab host removed with it).
//!
//! On that cluster: a re-run launches nothing; `heal` replaces a terminated instance (issue
//! 15); `upgrade --image` onto an AMI made through moto (CreateImage) replaces every instance
//! by one of the new AMI, the old ones terminated, and a re-run does nothing (issue 17); a
//! deploy names the drift of a file whose `images.host` is not what the hosts run; `destroy`
//! leaves nothing tagged.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::Output;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::InstanceAttributeName;
use base64::Engine as _;
use flotilla_coordinator::providers::LaunchSpec;
use flotilla_tests::Cli;
use flotilla_tests::crash::{self, Outcome, points_in_code};
use flotilla_tests::moto::{self, AWS_ENV, Moto, REGION, cluster_groups, live_instances, tag};
use serde_json::Value;

fn cli(cluster: &'static str) -> Cli {
    Cli::new(cluster)
}

fn run_aws(c: &Cli, args: &[&str]) -> Output {
    c.run_env(&AWS_ENV, args)
}

/// Boots a lab host from each instance moto reports for `cluster` (its user-data as
/// DescribeInstanceAttribute returns it), and removes the lab host of each booted instance
/// EC2 no longer reports live (terminated through the API).
async fn boot_instances_as_lab_hosts(
    ec2: &aws_sdk_ec2::Client,
    lab: &flotilla_coordinator::providers::lab::Lab,
    cluster: &str,
    booted: &mut BTreeSet<String>,
) {
    let live = live_instances(ec2, cluster).await;
    let gone: Vec<String> = booted.iter().filter(|b| !live.iter().any(|i| tag(i, "Name") == **b)).cloned().collect();
    for name in gone {
        lab.terminate(&name).await.expect("remove a terminated instance's lab host");
        eprintln!("removed {name}'s lab host: its instance is terminated");
        booted.remove(&name);
    }
    for i in live {
        let name = tag(&i, "Name");
        if booted.contains(&name) {
            continue;
        }
        let id = i.instance_id().unwrap_or_default();
        let attr = ec2
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(InstanceAttributeName::UserData)
            .send()
            .await
            .expect("user-data");
        let b64 = attr.user_data().and_then(|u| u.value()).unwrap_or_default();
        let ud =
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).expect("base64")).expect("utf-8");
        assert!(!ud.contains("PRIVATE KEY"), "{name}: a private key travels in user-data");
        lab.launch(&LaunchSpec {
            name: name.clone(),
            role: tag(&i, "flotilla:role"),
            user_data: ud,
            instance_type: String::new(),
            image: None,
            private_ip: None,
        })
        .await
        .expect("boot a lab host from the instance's user-data");
        eprintln!("booted {name} ({id}) as a lab host");
        booted.insert(name);
    }
}

/// Issue 15 on the AWS path: node1's instance terminated through the EC2 API (and its lab
/// host removed with it): `heal` finds it lost through DescribeInstances, launches a
/// replacement (a new instance, a new ClientToken) that boots and joins, and a re-run
/// launches nothing.
async fn heal_a_terminated_instance(
    c: &Cli,
    ec2: &aws_sdk_ec2::Client,
    lab: &flotilla_coordinator::providers::lab::Lab,
    booted: &mut BTreeSet<String>,
) {
    let old = live_instances(ec2, CLUSTER_E2E).await.into_iter().find(|i| tag(i, "Name") == "node1").expect("node1");
    let old_id = old.instance_id().unwrap_or_default().to_string();
    ec2.terminate_instances().instance_ids(&old_id).send().await.expect("terminate node1");
    boot_instances_as_lab_hosts(ec2, lab, CLUSTER_E2E, booted).await;
    assert!(!booted.contains("node1"), "node1's lab host removed with its instance");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = c.command().envs(AWS_ENV).args(["--cluster", CLUSTER_E2E, "status", "--output", "json"]).output();
        let st: Value = st.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or(Value::Null);
        if st["heal"]["unreachable_s"]["node1"].as_f64().is_some_and(|s| s > 11.0) {
            break;
        }
        assert!(Instant::now() < deadline, "node1 never unreachable past the grace period: {}", st["heal"]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut child = c
        .command()
        .envs(AWS_ENV)
        .args(["--cluster", CLUSTER_E2E, "heal", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start heal");
    let deadline = Instant::now() + Duration::from_secs(400);
    let status = loop {
        boot_instances_as_lab_hosts(ec2, lab, CLUSTER_E2E, booted).await;
        if let Some(s) = child.try_wait().expect("wait heal") {
            break s;
        }
        assert!(Instant::now() < deadline, "heal did not finish within 400 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().map(|mut s| s.read_to_string(&mut out));
    child.stderr.take().map(|mut s| s.read_to_string(&mut err));
    eprintln!("heal (aws):\n{out}\n{err}");
    assert!(status.success(), "heal failed: {err}");
    let r: Value = serde_json::from_str(&out).expect("heal json");
    assert_eq!(r["replaced"][0]["host"], "node1", "{r}");
    let new =
        live_instances(ec2, CLUSTER_E2E).await.into_iter().find(|i| tag(i, "Name") == "node1").expect("new node1");
    assert_ne!(new.instance_id().unwrap_or_default(), old_id, "no new instance");
    assert_eq!(r["replaced"][0]["instance_id"], new.instance_id().unwrap_or_default());
    if let (Some(a), Some(b)) = (old.client_token(), new.client_token()) {
        assert_ne!(a, b, "the replacement reused the lost instance's ClientToken");
    }
    assert!(r["verified"].as_str().is_some_and(|v| v.contains("2 workers ready")), "{r}");
    let again = run_aws(c, &["heal", "--output", "json"]);
    assert!(again.status.success());
    let again: Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(again["replaced"], Value::Array(vec![]), "a re-run replaced something: {again}");
    assert_eq!(live_instances(ec2, CLUSTER_E2E).await.len(), 5);
}

/// Runs `coordinator --cluster CLUSTER_E2E <args>` (moto's credentials) in the background,
/// booting the instances it launches as lab hosts (and removing those it terminates) until it
/// ends; its status, stdout and stderr.
async fn run_booting(
    c: &Cli,
    ec2: &aws_sdk_ec2::Client,
    lab: &flotilla_coordinator::providers::lab::Lab,
    booted: &mut BTreeSet<String>,
    args: &[&str],
) -> (std::process::ExitStatus, String, String) {
    run_booting_with(c, ec2, lab, booted, args, "").await
}

/// [`run_booting`] with `FAILPOINTS` set (a crash chain's run).
async fn run_booting_with(
    c: &Cli,
    ec2: &aws_sdk_ec2::Client,
    lab: &flotilla_coordinator::providers::lab::Lab,
    booted: &mut BTreeSet<String>,
    args: &[&str],
    failpoints: &str,
) -> (std::process::ExitStatus, String, String) {
    let mut child = c
        .command()
        .envs(AWS_ENV)
        .env("FAILPOINTS", failpoints)
        .args(["--cluster", CLUSTER_E2E])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the coordinator");
    // stdout and stderr read as they come, so a full pipe never blocks the command.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        boot_instances_as_lab_hosts(ec2, lab, CLUSTER_E2E, booted).await;
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "`{}` did not finish within 600 s", args.join(" "));
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    boot_instances_as_lab_hosts(ec2, lab, CLUSTER_E2E, booted).await;
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    eprintln!("$ coordinator --cluster {CLUSTER_E2E} {}\n{out}\n{err}", args.join(" "));
    (status, out, err)
}

/// Issue 17 on the AWS path: an AMI made through moto (CreateImage of manager0's instance);
/// `deploy --rolling --dry-run` with `images.host` = that AMI lists the 5 replacements in
/// order; `upgrade --image AMI` replaces every host by an instance of the new AMI
/// (DescribeInstances' ImageId) under the slot's next name, and the old instances end
/// terminated; a deploy of a file naming the AMI verifies the cluster (3 managers, 2 workers,
/// 3 Consul peers) and finds no drift, one of the original file (the default AMI) reports the
/// 5 hosts' drift naming `deploy --rolling`; a re-run of the upgrade does nothing.
async fn upgrade_onto_a_new_ami(
    c: &Cli,
    ec2: &aws_sdk_ec2::Client,
    lab: &flotilla_coordinator::providers::lab::Lab,
    booted: &mut BTreeSet<String>,
    dir: &std::path::Path,
    toml: &str,
) {
    let old: Vec<(String, String, String)> = live_instances(ec2, CLUSTER_E2E)
        .await
        .iter()
        .map(|i| {
            (
                tag(i, "Name"),
                i.instance_id().unwrap_or_default().to_string(),
                i.image_id().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(old.len(), 5, "{old:?}");
    let m0 = old.iter().find(|(n, _, _)| n == "manager0").expect("manager0's instance");
    let ami = ec2
        .create_image()
        .instance_id(&m0.1)
        .name(format!("{CLUSTER_E2E}-u1"))
        .send()
        .await
        .expect("CreateImage")
        .image_id()
        .expect("the new AMI's id")
        .to_string();
    assert!(old.iter().all(|(_, _, image)| *image != ami), "{old:?}");
    let with_ami = dir.join("flotilla-ami.toml");
    let text = std::fs::read_to_string(toml).expect("flotilla.toml");
    std::fs::write(&with_ami, text.replacen("[images]\n", &format!("[images]\nhost = \"{ami}\"\n"), 1)).expect("write");
    let with_ami = with_ami.to_str().expect("path").to_string();

    // The plan: every host replaced, workers first, the leader last.
    let out = run_aws(c, &["deploy", "-f", &with_ami, "--rolling", "--dry-run", "--output", "json"]);
    assert!(out.status.success());
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan json");
    assert_eq!(
        (plan["host_image"].as_str(), plan["image_drift"].as_array().map(Vec::len)),
        (Some(ami.as_str()), Some(5)),
        "{plan}"
    );
    let steps: Vec<&str> = plan["change"]
        .as_array()
        .expect("change")
        .iter()
        .filter_map(Value::as_str)
        .filter(|s| s.contains(". replace host "))
        .collect();
    assert_eq!(steps.len(), 5, "{plan}");
    assert!(steps[0].starts_with("1. replace host node") && steps[4].contains("(leader, "), "{plan}");

    let (status, out, err) = run_booting(c, ec2, lab, booted, &["upgrade", "--image", &ami, "--output", "json"]).await;
    assert!(status.success(), "upgrade --image failed: {err}");
    let r: Value = serde_json::from_str(&out).expect("upgrade json");
    assert_eq!(r["target_image"], ami.as_str(), "{r}");
    let replaced: Vec<(&str, &str)> = r["replaced"]
        .as_array()
        .expect("replaced")
        .iter()
        .map(|h| (h["old"].as_str().unwrap_or_default(), h["new"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(replaced.len(), 5, "{r}");
    assert!(replaced.iter().all(|(o, n)| format!("{o}-u1") == *n), "{r}");

    // EC2's word: 5 live instances, the slots' next names, all on the new AMI; the old ones
    // terminated.
    let live = live_instances(ec2, CLUSTER_E2E).await;
    let mut names: Vec<String> = live.iter().map(|i| tag(i, "Name")).collect();
    names.sort();
    assert_eq!(names, ["manager0-u1", "manager1-u1", "manager2-u1", "node0-u1", "node1-u1"]);
    assert!(live.iter().all(|i| i.image_id() == Some(ami.as_str())), "not every instance on {ami}");
    let ids: Vec<String> = old.iter().map(|(_, id, _)| id.clone()).collect();
    let d = ec2.describe_instances().set_instance_ids(Some(ids)).send().await.expect("describe the old instances");
    let states: Vec<String> = d
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default())
        .collect();
    assert!(states.len() == 5 && states.iter().all(|s| s == "terminated"), "{states:?}");

    // Verified, no drift with the AMI's file; the original file's default AMI: drift reported.
    let out = run_aws(c, &["deploy", "-f", &with_ami, "--output", "json"]);
    assert!(out.status.success());
    let d: Value = serde_json::from_slice(&out.stdout).expect("deploy json");
    // (`changed` may be true: the Consul servers' specs drop the tokens of the hosts that left.)
    let none = |k: &str| d[k].as_array().map(Vec::len);
    assert_eq!((none("launched"), none("removed"), none("replaced")), (Some(0), Some(0), Some(0)), "{d}");
    assert_eq!(d["swarm"]["managers"].as_array().map(Vec::len), Some(3), "{}", d["swarm"]);
    assert_eq!(d["swarm"]["workers"].as_array().map(Vec::len), Some(2), "{}", d["swarm"]);
    assert_eq!(d["consul"]["peers"].as_array().map(Vec::len), Some(3), "{}", d["consul"]);
    assert_eq!(d["image_drift"], Value::Null, "{d}");
    let out = run_aws(c, &["deploy", "-f", toml, "--output", "json"]);
    assert!(out.status.success());
    let d: Value = serde_json::from_slice(&out.stdout).expect("deploy json");
    assert_eq!(d["image_drift"]["hosts"].as_array().map(Vec::len), Some(5), "{d}");
    assert!(d["image_drift"]["hosts"].as_array().expect("hosts").iter().all(|h| h["image"] == ami.as_str()), "{d}");
    assert!(d["image_drift"]["fix"].as_str().is_some_and(|f| f.contains("deploy --rolling")), "{d}");
    assert_eq!(live_instances(ec2, CLUSTER_E2E).await.len(), 5, "a plain deploy replaced nothing");

    // A re-run does nothing.
    let out = run_aws(c, &["upgrade", "--image", &ami, "--output", "json"]);
    assert!(out.status.success());
    let again: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (again["to_replace"].as_u64(), again["replaced"].as_array().map(Vec::len)),
        (Some(0), Some(0)),
        "{again}"
    );
    assert_eq!(live_instances(ec2, CLUSTER_E2E).await.len(), 5);
}

const CLUSTER_E2E: &str = "awse2e";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_6_aws_path_end_to_end_user_data_from_ec2_boots_hosts_that_form_the_verified_cluster() {
    const CLUSTER: &str = CLUSTER_E2E;
    let c = cli(CLUSTER);
    // What a failed earlier run left: its control plane, its state, its lab hosts.
    let _ = c.command().args(["--cluster", CLUSTER, "stop"]).output();
    let _ = std::fs::remove_dir_all(&c.state_root);
    let engine = flotilla_tests::lab_engine().await;
    let images = flotilla_coordinator::providers::lab::images::ensure(true, &engine.address).await.expect("lab images");
    let lab_state = tempfile::tempdir().expect("tempdir");
    let lab = flotilla_coordinator::providers::lab::Lab::new(engine, CLUSTER, lab_state.path(), images);
    lab.destroy().await.expect("clean lab");
    let (network, refs) = lab
        .ensure(&[(&lab.images.consul, "flotilla/consul:1.8.7"), (&lab.images.hello, "flotilla/hello:1")])
        .await
        .expect("lab network and registry");
    let gateway = network.coordinator_ip.expect("gateway").to_string();
    let registry = network.registry.clone().expect("registry");

    let moto = Moto::start(&[]);
    let ec2 = moto::ec2(&moto.endpoint()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = dir.path().join("flotilla.toml");
    std::fs::write(
        &toml,
        format!(
            "provider = \"aws\"\n\
             [images]\nconsul = \"{}\"\nhello = \"{}\"\ninsecure_registries = [\"{registry}\"]\n\
             [coordinator]\nlisten = \"{gateway}\"\nadvertise = \"{gateway}\"\n\
             [heal]\nmode = \"off\"\ngrace = 10\n\
             [aws]\nendpoint_url = \"{}\"\nregion = \"{REGION}\"\nadmin_cidr = \"{gateway}/32\"\n",
            refs[0],
            refs[1],
            moto.endpoint()
        ),
    )
    .expect("write flotilla.toml");
    let toml_s = toml.to_str().unwrap_or_default().to_string();

    // deploy runs in the background; meanwhile each instance moto reports boots as a lab host.
    // It runs as a crash chain (issue 20) over the AWS provider's own failpoints on its path:
    // killed after the security group's creation, after its rules, after the first
    // RunInstances, and run again each time until it completes.
    let points: BTreeSet<String> =
        points_in_code().into_iter().filter(|p| p.starts_with(crash::AWS) && !p.starts_with(crash::AWS_BAKE)).collect();
    let mut booted = BTreeSet::new();
    let deploy = ["deploy", "-f", &toml_s, "--output", "json"];
    let mut chain = crash::Running::new("deploy (aws)", &points, Outcome::Crash);
    let (out, mut crashed_at) = loop {
        let (status, out, err) = run_booting_with(&c, &ec2, &lab, &mut booted, &deploy, &chain.failpoints()).await;
        if let Some(at) = chain.after(status, &err) {
            break (out, at);
        }
    };
    for p in ["aws.security_group.create.after", "aws.security_group.authorize.after", "aws.run_instances.after"] {
        assert!(crashed_at.iter().any(|c| c == p), "deploy was not crashed at {p}: {crashed_at:?}");
    }
    let report: Value = serde_json::from_str(&out).expect("deploy json");
    assert_eq!(report["provider"], "aws");
    // Each host launched once over the chain's runs: exactly the 5 names live.
    let live: Vec<String> = live_instances(&ec2, CLUSTER).await.iter().map(|i| tag(i, "Name")).collect();
    assert_eq!(live.iter().collect::<BTreeSet<_>>().len(), 5, "{live:?}");
    assert_eq!(live.len(), 5, "{live:?}");
    assert_eq!(report["swarm"]["managers"].as_array().map(Vec::len), Some(3), "{}", report["swarm"]);
    assert_eq!(report["swarm"]["workers"].as_array().map(Vec::len), Some(2), "{}", report["swarm"]);
    assert_eq!(report["consul"]["peers"].as_array().map(Vec::len), Some(3), "{}", report["consul"]);
    assert!(report["smoke_test"]["tasks"].as_u64().is_some_and(|t| t >= 1), "{}", report["smoke_test"]);
    assert_eq!(booted.len(), 5, "{booted:?}");
    // Every host's id is its EC2 instance id.
    for h in report["hosts"].as_array().expect("hosts") {
        assert!(h["instance_id"].as_str().is_some_and(|i| i.starts_with("i-")), "{h}");
    }

    // Re-running deploy launches nothing new.
    let again = run_aws(&c, &["deploy", "-f", &toml_s, "--output", "json"]);
    assert!(again.status.success());
    let r2: Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(r2["launched"].as_array().map(Vec::len), Some(0), "{r2}");
    assert_eq!(r2["changed"], false);
    assert_eq!(live_instances(&ec2, CLUSTER).await.len(), 5);

    heal_a_terminated_instance(&c, &ec2, &lab, &mut booted).await;
    let t = Instant::now();
    upgrade_onto_a_new_ami(&c, &ec2, &lab, &mut booted, dir.path(), &toml_s).await;
    eprintln!("the AWS upgrade step took {:.1} s", t.elapsed().as_secs_f64());

    // destroy leaves nothing with the cluster's tag: as a crash chain, killed after
    // TerminateInstances and before the group's deletion, run again each time.
    let destroyed = crash::chain("destroy (aws)", &points, Outcome::Crash, || {
        let mut cmd = c.command();
        cmd.envs(AWS_ENV).args(["--cluster", CLUSTER, "destroy", "--yes"]);
        cmd
    });
    crashed_at.extend(destroyed.interrupted);
    let missed: Vec<&String> = points.iter().filter(|p| !crashed_at.contains(p)).collect();
    assert!(missed.is_empty(), "AWS failpoints never crashed at: {missed:?}");
    assert!(live_instances(&ec2, CLUSTER).await.is_empty());
    assert!(cluster_groups(&ec2, CLUSTER).await.is_empty());
    assert!(!c.state_root.join(CLUSTER).exists(), "the cluster's state (and its CA) is gone");
    // Again, without the state that recorded the provider: by tag, nothing left to remove.
    let out = run_aws(&c, &["destroy", "--yes", "--provider", "aws", "--endpoint-url", &moto.endpoint()]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("removed "), "a second destroy removed something");
    lab.destroy().await.expect("remove the lab hosts");
}
