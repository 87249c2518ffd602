//! Step 4: hosts. What the provider already has (found by label) is kept, a stopped host is
//! started, and every missing host is launched — all in parallel — with its own rendered
//! user-data carrying a fresh one-time join token.

use flotilla_proto::v1;

use super::{Changed, DeployError, Run};
use crate::ops::plan::PlannedHost;
use crate::providers::{HostState, LaunchSpec};

/// Starts the stopped hosts of the plan and launches the missing ones; what it did.
pub async fn launch_missing(run: &Run<'_>, ca_pem: &str) -> Result<Changed, DeployError> {
    let st = run.admin.clone().status(v1::StatusRequest::default()).await?.into_inner();
    let existing = run.prepared.provider.describe().await?;
    let mut changed = Changed::default();
    let mut launches = Vec::new();
    for h in run.planned {
        match existing.iter().find(|e| e.name == h.name) {
            Some(e) if matches!(e.state, HostState::Running | HostState::Pending) => {}
            Some(e) if e.state == HostState::Stopped => {
                run.p.host(&h.name, "starting the stopped host");
                changed.started = true;
                run.prepared.provider.start(&h.name).await?;
            }
            Some(e) if e.state == HostState::Stopping => {
                return Err(DeployError::HostBusy { host: h.name.clone(), state: "stopping".into() });
            }
            _ => {
                let spec = launch_spec(run, h, &st, ca_pem).await?;
                changed.launched.push(h.name.clone());
                launches.push((spec, h.index, h.has(crate::ops::plan::RoleKind::Consul)));
            }
        }
    }
    launch_all(run, &launches).await?;
    Ok(changed)
}

/// What one missing host is launched with: its user-data (the control plane's endpoint and
/// CA, a one-time token, the agent binary to fetch, how the Engine gets there), its
/// instance type and image.
pub async fn launch_spec(
    run: &Run<'_>,
    h: &PlannedHost,
    st: &v1::StatusResponse,
    ca_pem: &str,
) -> Result<LaunchSpec, DeployError> {
    let c = run.config;
    crate::failpoint!("launch.token.before");
    let token = run
        .admin
        .clone()
        .create_token(v1::CreateTokenRequest { host_name: h.name.clone(), ttl_s: 0 })
        .await?
        .into_inner()
        .token;
    crate::failpoint!("launch.token.after");
    let inputs = flotilla_cloud_init::HostInputs {
        cluster: c.name.clone(),
        host_name: h.name.clone(),
        coordinator: vec![st.agent_endpoint.clone()],
        ca_pem: ca_pem.to_string(),
        join_token: Some(token),
        agent: flotilla_cloud_init::AgentBinary {
            url: format!("https://{}{}", st.agent_endpoint, crate::control_plane::agent_binary::PATH),
            sha256: st.agent_binary_sha256.clone(),
            version: st.agent_version.clone(),
        },
        engine: run.prepared.engine,
        insecure_registries: run.prepared.insecure_registries.clone(),
        heartbeat_interval_s: flotilla_cloud_init::DEFAULT_HEARTBEAT_INTERVAL_S,
        // The plan gives each host its roles before launch: only a manager's Engine gets the
        // TLS listener, so only its first start waits for the agent to write it.
        engine_tls: h.has(crate::ops::plan::RoleKind::Manager),
    };
    let user_data = flotilla_cloud_init::render_host(&inputs)
        .map_err(|source| DeployError::UserData { host: h.name.clone(), source })?;
    Ok(LaunchSpec {
        name: h.name.clone(),
        role: h.primary.name().to_string(),
        user_data,
        instance_type: h.instance_type(c).to_string(),
        image: (!c.images.host.is_empty()).then(|| c.images.host.clone()),
        private_ip: None,
    })
}

/// Launches the Consul servers' hosts at once, then every other host at once (the third item
/// of each launch says which it is); reports each outcome, and fails with the first failure.
///
/// Why two waves: everything after the hosts boot waits for the last Consul server (Consul
/// elects a leader with all of them; the swarm and the workers wait for Consul), while a
/// worker has seconds to spare. On the lab, hosts are created one at a time and boot on the
/// same cores, so a Consul server created after the workers enrolled ~1 s later; on EC2 the
/// workers' RunInstances calls go out one round trip later.
async fn launch_all(run: &Run<'_>, launches: &[(LaunchSpec, usize, bool)]) -> Result<(), DeployError> {
    if launches.is_empty() {
        return Ok(());
    }
    run.p.step("hosts", format!("launching {} host(s) in parallel, the Consul servers' first", launches.len()));
    crate::failpoint!("launch.hosts.before");
    let wave = |first: bool| {
        futures::future::join_all(
            launches
                .iter()
                .filter(move |l| l.2 == first)
                .map(|(s, i, _)| async move { (s, run.prepared.launch(s, *i).await) }),
        )
    };
    let mut results = wave(true).await;
    results.extend(wave(false).await);
    crate::failpoint!("launch.hosts.after");
    let mut first_err = None;
    for (s, r) in results {
        match r {
            Ok(h) => run.p.host(
                &s.name,
                format!("launched ({}, {})", h.instance_id, h.private_ip.map(|i| i.to_string()).unwrap_or_default()),
            ),
            Err(e) => {
                run.p.host(&s.name, format!("launch failed: {e}"));
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}
