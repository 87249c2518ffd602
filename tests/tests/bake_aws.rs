//! Issue 8 — `coordinator bake --provider aws` against moto's EC2 server on loopback, through
//! the real binary. What the bake made is read back with a separate EC2 client, never taken
//! from the bake's own word.
//!
//! moto boots nothing, so the lab test (`…_lab_…`) does what `aws_path_end_to_end` in
//! `tests/aws.rs` does: the builder instance's user-data, read back through
//! DescribeInstanceAttribute, boots a lab host on a lab network whose gateway is the bake's
//! `--advertise` address. That host installs, reports to the bake's endpoint, and — when moto
//! says the builder stopped — is stopped too, so its seal unit runs; its file system is then
//! checked for what the seal must have removed.
//!
//! Scopes: `bakeaws` (the lab test), `bakeaws2` (the builder that never reports).

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
use base64::Engine as _;
use flotilla_coordinator::providers::LaunchSpec;
use flotilla_tests::moto::{self, AWS_ENV, Moto};
use flotilla_tests::{Cli, crash};
use serde_json::Value;

const NAME: &str = "flotilla-test/aws-baked";
const FAIL_NAME: &str = "flotilla-test/aws-bakefail";

fn bake_cmd(c: &Cli, cwd: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = c.command();
    cmd.envs(AWS_ENV).current_dir(cwd).args(["--cluster", c.cluster, "bake", "--provider", "aws"]).args(args);
    cmd
}

fn run(c: &Cli, cwd: &std::path::Path, args: &[&str]) -> Output {
    let out = bake_cmd(c, cwd, args).output().expect("run coordinator");
    eprintln!(
        "$ coordinator --cluster {} bake --provider aws {}\n{}{}",
        c.cluster,
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tag(tags: &[aws_sdk_ec2::types::Tag], k: &str) -> String {
    tags.iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).unwrap_or_default().to_string()
}

/// Every instance a bake of `scope` launched, in any state.
async fn builders(ec2: &aws_sdk_ec2::Client, scope: &str) -> Vec<aws_sdk_ec2::types::Instance> {
    ec2.describe_instances()
        .filters(Filter::builder().name("tag:flotilla:bake").values(scope).build())
        .send()
        .await
        .expect("describe instances")
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .cloned()
        .collect()
}

fn state(i: &aws_sdk_ec2::types::Instance) -> String {
    i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default()
}

async fn bake_groups(ec2: &aws_sdk_ec2::Client, scope: &str) -> Vec<aws_sdk_ec2::types::SecurityGroup> {
    ec2.describe_security_groups()
        .filters(Filter::builder().name("tag:flotilla:bake").values(scope).build())
        .send()
        .await
        .expect("describe groups")
        .security_groups()
        .to_vec()
}

async fn own_images(ec2: &aws_sdk_ec2::Client) -> Vec<aws_sdk_ec2::types::Image> {
    ec2.describe_images().owners("self").send().await.expect("describe images").images().to_vec()
}

async fn user_data(ec2: &aws_sdk_ec2::Client, id: &str) -> String {
    let attr = ec2
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .expect("user-data");
    let b64 = attr.user_data().and_then(|u| u.value()).unwrap_or_default();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).expect("base64")).expect("utf-8")
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .output()
        .expect("docker CLI")
}

/// A file of a (stopped) container: `None` when it does not exist.
fn container_file(container: &str, path: &str) -> Option<Vec<u8>> {
    let out = Command::new("docker")
        .args(["cp", &format!("{container}:{path}"), "-"])
        .env_remove("DOCKER_HOST")
        .output()
        .expect("docker cp");
    if !out.status.success() {
        return None;
    }
    // A tar stream of one regular file: the header's size field, then the bytes.
    let size = std::str::from_utf8(&out.stdout[124..136])
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok())
        .unwrap_or(0) as usize;
    Some(out.stdout[512..512 + size].to_vec())
}

/// A background bake, killed if the test fails while it runs.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs a bake in the background and, meanwhile, boots a lab host from each builder moto
/// reports (once), and stops that host when moto says the builder is stopping or stopped.
/// Returns the bake's output and the builders it booted, with the instance checks made while
/// the builder was running.
async fn bake_with_lab_builder(
    c: &Cli,
    cwd: &std::path::Path,
    args: &[&str],
    ec2: &aws_sdk_ec2::Client,
    lab: &flotilla_coordinator::providers::lab::Lab,
) -> (std::process::ExitStatus, String, String, Vec<String>) {
    bake_with_lab_builder_failing(c, cwd, args, ec2, lab, "").await
}

/// [`bake_with_lab_builder`] with `FAILPOINTS` set (a crash chain's run).
async fn bake_with_lab_builder_failing(
    c: &Cli,
    cwd: &std::path::Path,
    args: &[&str],
    ec2: &aws_sdk_ec2::Client,
    lab: &flotilla_coordinator::providers::lab::Lab,
    failpoints: &str,
) -> (std::process::ExitStatus, String, String, Vec<String>) {
    let mut child = Running(
        bake_cmd(c, cwd, args)
            .env("FAILPOINTS", failpoints)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bake"),
    );
    let mut booted: Vec<String> = vec![];
    let mut stopped = false;
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        for i in builders(ec2, c.cluster).await {
            let id = i.instance_id().unwrap_or_default().to_string();
            let s = state(&i);
            if !booted.contains(&id) && (s == "pending" || s == "running") {
                // The launch as EC2 holds it: bake tags, IMDSv2 with hop 1, the bake group
                // with no inbound rule, an encrypted gp3 root volume.
                assert_eq!(tag(i.tags(), "Name"), "flotilla-bake-builder");
                assert_eq!(tag(i.tags(), "flotilla:role"), "bake-builder");
                assert_eq!(tag(i.tags(), "flotilla:cluster"), "", "a bake builder is no cluster's host");
                let md = i.metadata_options().expect("metadata options");
                assert_eq!(md.http_tokens().map(|t| t.as_str()), Some("required"), "IMDSv2 not required");
                assert_eq!(md.http_put_response_hop_limit(), Some(1));
                let groups = bake_groups(ec2, c.cluster).await;
                assert_eq!(groups.len(), 1, "one bake group");
                assert!(
                    groups[0].ip_permissions().is_empty(),
                    "the bake group has inbound rules: {:?}",
                    groups[0].ip_permissions()
                );
                assert_eq!(
                    i.security_groups().iter().filter_map(|g| g.group_id()).collect::<Vec<_>>(),
                    vec![groups[0].group_id().unwrap_or_default()]
                );
                // moto lists a new instance a moment before its volume is attached (its
                // server is threaded): wait for the attachment, bounded.
                let attached = Instant::now() + Duration::from_secs(10);
                let v = loop {
                    let v = ec2
                        .describe_volumes()
                        .filters(Filter::builder().name("attachment.instance-id").values(&id).build())
                        .send()
                        .await
                        .expect("describe volumes");
                    if !v.volumes().is_empty() || Instant::now() > attached {
                        break v;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                assert_eq!(v.volumes().len(), 1, "{:?}", v.volumes());
                assert_eq!(v.volumes()[0].encrypted(), Some(true), "root volume not encrypted");
                assert_eq!(v.volumes()[0].volume_type().map(|t| t.as_str()), Some("gp3"));
                let ud = user_data(ec2, &id).await;
                assert!(!ud.contains("PRIVATE KEY"), "a private key travels in user-data");
                assert!(
                    ud.contains("FLOTILLA_REPORT_NONCE='") && ud.contains("/v1/bake/report'"),
                    "not a reporting bake"
                );
                lab.terminate("builder").await.expect("remove an earlier lab builder");
                lab.launch(&LaunchSpec {
                    name: "builder".into(),
                    role: "bake-builder".into(),
                    user_data: ud,
                    instance_type: String::new(),
                    image: None,
                    private_ip: None,
                })
                .await
                .expect("boot a lab host from the builder's user-data");
                eprintln!("booted {id} as a lab host");
                booted.push(id);
                stopped = false;
            } else if booted.contains(&id) && !stopped && matches!(s.as_str(), "stopping" | "stopped") {
                // StopInstances: the instance shuts down, and its seal runs.
                lab.stop("builder").await.expect("stop the lab builder");
                stopped = true;
            }
        }
        if let Some(s) = child.0.try_wait().expect("wait bake") {
            break s;
        }
        assert!(Instant::now() < deadline, "bake did not finish within 600 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let mut out = String::new();
    let mut err = String::new();
    child.0.stdout.take().map(|mut s| s.read_to_string(&mut out));
    child.0.stderr.take().map(|mut s| s.read_to_string(&mut err));
    eprintln!("$ coordinator bake --provider aws {}\n{out}\n{err}", args.join(" "));
    (status, out, err, booted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_8_aws_bake_on_moto_with_a_lab_builder_captures_a_tagged_sealed_ami_then_reuses_it() {
    let c = Cli::new("bakeaws");
    let cwd = tempfile::tempdir().expect("tempdir");
    let engine = flotilla_tests::lab_engine().await;
    let images = flotilla_coordinator::providers::lab::images::ensure(true, &engine.address).await.expect("lab images");
    let lab_state = tempfile::tempdir().expect("tempdir");
    let lab = flotilla_coordinator::providers::lab::Lab::new(engine, c.cluster, lab_state.path(), images);
    lab.destroy().await.expect("clean lab");
    let (_, base) = lab.ensure_network().await.expect("lab network");
    let o = base.octets();
    let gateway = std::net::Ipv4Addr::new(o[0], o[1], o[2], 1).to_string();
    let builder_container = lab.container_name("builder");

    let moto = Moto::start(&[]);
    let ec2 = moto::ec2(&moto.endpoint()).await;
    let endpoint = moto.endpoint();
    let args =
        ["--endpoint-url", &endpoint, "--advertise", &gateway, "--name", NAME, "--output", "json", "--timeout", "5m"];

    // A bake: RunInstances → the builder installs and reports → StopInstances → CreateImage.
    // It runs as a crash chain (issue 20) over the AWS bake's failpoints: killed after its
    // security group's creation, then after CreateImage (the image made, its snapshots not yet
    // tagged, the builder still there), and run again each time: the last run finds the image,
    // finishes it and removes the builder.
    let points: BTreeSet<String> =
        crash::points_in_code().into_iter().filter(|p| p.starts_with(crash::AWS_BAKE)).collect();
    let mut chain = crash::Running::new("bake (aws)", &points, crash::Outcome::Crash);
    let mut booted = Vec::new();
    let mut errs = String::new();
    let (out, crashed_at) = loop {
        let (status, out, err, b) =
            bake_with_lab_builder_failing(&c, cwd.path(), &args, &ec2, &lab, &chain.failpoints()).await;
        booted.extend(b);
        errs.push_str(&err);
        if let Some(at) = chain.after(status, &err) {
            break (out, at);
        }
    };
    assert_eq!(crashed_at.iter().collect::<BTreeSet<_>>(), points.iter().collect(), "every AWS bake failpoint");
    assert_eq!(booted.len(), 1, "one builder: {booted:?}");
    assert!(errs.contains("installed: agent "), "the builder's report is shown: {errs}");
    let report: Value = serde_json::from_str(&out).expect("bake json");
    assert_eq!(report["provider"], "aws");
    assert_eq!(report["reused"], true, "the image the interrupted run captured, reused");
    let ami = report["image"].as_str().expect("image").to_string();
    assert!(ami.starts_with("ami-"), "{report}");
    let engine = report["engine_version"].as_str().expect("engine").to_string();
    assert!(!engine.is_empty() && engine != "unknown", "{report}");

    // The image as EC2 holds it, with the version tags.
    let imgs = ec2.describe_images().image_ids(&ami).send().await.expect("describe image");
    let img = &imgs.images()[0];
    assert_eq!(img.state().map(|s| s.as_str()), Some("available"));
    let t = img.tags();
    assert_eq!(tag(t, "flotilla:bake-name"), NAME);
    assert_eq!(tag(t, "flotilla:agent-version"), report["agent_version"].as_str().unwrap_or("?"));
    assert_eq!(tag(t, "flotilla:agent-sha256"), report["agent_sha256"].as_str().unwrap_or("?"));
    assert_eq!(tag(t, "flotilla:engine-version"), engine);
    assert_eq!(tag(t, "flotilla:bake-base"), report["base_id"].as_str().unwrap_or("?"));
    assert!(!tag(t, "flotilla:bake-tag").is_empty());
    assert!(img.name().unwrap_or_default().starts_with(&format!("{NAME}-")), "{:?}", img.name());
    // Its snapshots carry the same tags.
    let snapshots: Vec<String> = img
        .block_device_mappings()
        .iter()
        .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
        .collect();
    assert!(!snapshots.is_empty(), "the image has no snapshot");
    let snaps = ec2.describe_snapshots().set_snapshot_ids(Some(snapshots)).send().await.expect("describe snapshots");
    for s in snaps.snapshots() {
        assert_eq!(tag(s.tags(), "flotilla:agent-sha256"), report["agent_sha256"].as_str().unwrap_or("?"), "{s:?}");
        assert_eq!(tag(s.tags(), "flotilla:engine-version"), engine);
    }
    // The builder is terminated, the bake group gone.
    let all = builders(&ec2, c.cluster).await;
    assert_eq!(all.len(), 1);
    assert_eq!(state(&all[0]), "terminated");
    assert_eq!(all[0].instance_id(), Some(booted[0].as_str()));
    assert!(bake_groups(&ec2, c.cluster).await.is_empty(), "the bake group is left");

    // The builder stopped for capture was sealed by its own unit: nothing of the bake or of
    // that boot is left, and the next boot is a first boot.
    if !docker(&["inspect", "-f", "{{.State.Running}}", &builder_container]).stdout.starts_with(b"false") {
        lab.stop("builder").await.expect("stop the lab builder");
    }
    assert_eq!(container_file(&builder_container, "/etc/machine-id"), Some(vec![]), "machine-id not emptied");
    for gone in [
        "/var/lib/cloud/instance",
        "/var/log/cloud-init-output.log",
        "/usr/local/lib/flotilla/bake-ca.pem",
        "/usr/local/lib/flotilla/bake.sh",
        "/usr/local/lib/flotilla/bake-seal.sh",
        "/etc/systemd/system/flotilla-bake-seal.service",
        "/etc/systemd/system/multi-user.target.wants/flotilla-bake-seal.service",
        "/etc/docker/key.json",
    ] {
        assert_eq!(
            container_file(&builder_container, gone).map(|b| b.len()),
            None,
            "{gone} is left in the sealed builder"
        );
    }
    assert!(
        container_file(&builder_container, "/usr/local/bin/flotilla-agent").is_some_and(|b| !b.is_empty()),
        "no agent"
    );
    let marker =
        String::from_utf8(container_file(&builder_container, "/var/lib/flotilla/bake-complete").expect("bake marker"))
            .expect("utf-8");
    assert!(marker.contains(&format!("engine={engine}\n")), "{marker}");

    // A second bake reuses the image: no RunInstances, no new instance.
    let again = run(&c, cwd.path(), &args);
    assert!(again.status.success());
    let r2: Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(r2["reused"], true, "{r2}");
    assert_eq!(r2["image"], ami.as_str());
    assert_eq!(builders(&ec2, c.cluster).await.len(), 1, "the reuse launched an instance");

    // A builder whose installation fails (an unreachable agent download) reports it: the bake
    // fails with that builder's cloud-init output, and leaves no instance, group or image.
    let fail_args = [
        "--endpoint-url",
        &endpoint,
        "--advertise",
        &gateway,
        "--name",
        FAIL_NAME,
        "--timeout",
        "5m",
        "--agent-url",
        "https://127.0.0.1:9/v1/agent/flotilla-agent",
    ];
    let (status, _, err, booted) = bake_with_lab_builder(&c, cwd.path(), &fail_args, &ec2, &lab).await;
    assert!(!status.success());
    assert_eq!(booted.len(), 1, "{booted:?}");
    assert!(err.contains(&format!("the builder {} failed: agent: download failed (curl exit 7)", booted[0])), "{err}");
    assert!(
        err.contains("--- its cloud-init output") && err.contains("flotilla-bake: agent: downloading version"),
        "{err}"
    );
    assert!(builders(&ec2, c.cluster).await.iter().all(|i| state(i) == "terminated"), "a builder is left");
    assert!(bake_groups(&ec2, c.cluster).await.is_empty(), "the bake group is left");
    assert!(
        own_images(&ec2).await.iter().all(|i| tag(i.tags(), "flotilla:bake-name") != FAIL_NAME),
        "a failed bake made an image"
    );

    lab.destroy().await.expect("remove the lab builder and network");
    let _ = std::fs::remove_dir_all(&c.state_root);
}

#[tokio::test]
async fn issue_8_aws_bake_removes_what_an_interrupted_one_left_and_a_builder_that_never_reports_times_out_leaving_nothing()
 {
    let c = Cli::new("bakeaws2");
    let cwd = tempfile::tempdir().expect("tempdir");
    let moto = Moto::start(&[]);
    let ec2 = moto::ec2(&moto.endpoint()).await;
    let endpoint = moto.endpoint();

    // --advertise is required for aws, and named.
    let out = run(&c, cwd.path(), &["--endpoint-url", &endpoint]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--advertise"));
    assert!(builders(&ec2, c.cluster).await.is_empty(), "a refused bake launched something");

    // What an interrupted bake of this scope left: a builder and the bake group.
    let tags = |r: aws_sdk_ec2::types::ResourceType, extra: &[(&str, &str)]| {
        let mut b = aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(r)
            .tags(aws_sdk_ec2::types::Tag::builder().key("flotilla:bake").value(c.cluster).build());
        for (k, v) in extra {
            b = b.tags(aws_sdk_ec2::types::Tag::builder().key(*k).value(*v).build());
        }
        b.build()
    };
    let ami = ec2.describe_images().owners("amazon").send().await.expect("images").images()[0]
        .image_id()
        .unwrap_or_default()
        .to_string();
    let left = ec2
        .run_instances()
        .image_id(&ami)
        .min_count(1)
        .max_count(1)
        .tag_specifications(tags(aws_sdk_ec2::types::ResourceType::Instance, &[("flotilla:role", "bake-builder")]))
        .send()
        .await
        .expect("a left builder");
    let left_id = left.instances()[0].instance_id().unwrap_or_default().to_string();
    ec2.create_security_group()
        .group_name(format!("flotilla-bake-{}", c.cluster))
        .description("left by an interrupted bake")
        .tag_specifications(tags(aws_sdk_ec2::types::ResourceType::SecurityGroup, &[]))
        .send()
        .await
        .expect("a left group");

    // moto boots nothing: the builder never reports.
    let out = run(
        &c,
        cwd.path(),
        &["--endpoint-url", &endpoint, "--advertise", "127.0.0.1", "--name", FAIL_NAME, "--timeout", "3s"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let all = builders(&ec2, c.cluster).await;
    assert_eq!(all.len(), 2, "the left builder and RunInstances once");
    assert!(all.iter().all(|i| state(i) == "terminated"), "a builder is left (the old one or the new one)");
    let new = all.iter().find(|i| i.instance_id() != Some(left_id.as_str())).expect("the bake's builder");
    let id = new.instance_id().unwrap_or_default();
    assert!(err.contains(&format!("the builder {id} did not finish installing within 3s")), "{err}");
    assert!(err.contains("sent no report"), "{err}");
    assert!(bake_groups(&ec2, c.cluster).await.is_empty(), "the bake group is left");
    assert!(own_images(&ec2).await.is_empty(), "a failed bake made an image");
    let _ = std::fs::remove_dir_all(&c.state_root);
}
