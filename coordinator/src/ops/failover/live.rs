//! The drill told to the control plane as it runs (`RecordDrill`, issue 18): its start, each
//! timeline event, its verdict and timings — for the status page's drill timeline and the
//! `flotilla_failover_drill_*` series. Best effort: a report that fails or takes longer than
//! [`REPORT_TIMEOUT`] is dropped (logged at debug); the drill never waits on it.

use std::time::Duration;

use flotilla_proto::v1::{self, admin_client::AdminClient};
use tonic::transport::Channel;

use super::report::Report;

/// How long one report may take.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Live {
    admin: AdminClient<Channel>,
}

impl Live {
    pub fn new(admin: AdminClient<Channel>) -> Self {
        Self { admin }
    }

    fn send(&self, report: v1::DrillReport) -> tokio::task::JoinHandle<()> {
        let mut admin = self.admin.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(REPORT_TIMEOUT, admin.record_drill(report)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "the control plane did not take the drill's report"),
                Err(_) => tracing::debug!("the drill's report to the control plane timed out"),
            }
        })
    }

    /// The drill started; waits until that is sent (at most [`REPORT_TIMEOUT`]), so the
    /// events that follow land in this drill's record.
    pub async fn started(&self, component: &str) {
        let start = v1::DrillReport { started: true, component: component.to_string(), ..Default::default() };
        self.send(start).await.ok();
    }

    /// One timeline event, seconds from the fault.
    pub fn event(&self, t_s: f64, what: &str) {
        let events = vec![v1::DrillEvent { t_s, what: what.to_string() }];
        drop(self.send(v1::DrillReport { events, ..Default::default() }));
    }

    /// The drill's verdict and timings; waits (at most [`REPORT_TIMEOUT`]) until it is sent,
    /// as the command ends right after.
    pub async fn finished(&self, r: &Report) {
        let phases = [
            ("detect", r.detect_s),
            ("control_plane_detect", r.control_plane_detect_s),
            ("elect", r.elect_s),
            ("api_back", r.api_back_s),
            ("workload", r.workload_s),
            ("restore", r.restore_s),
            ("rejoin", r.rejoin_s),
            ("healthy", r.healthy_s),
        ];
        let timings_s = phases.into_iter().filter_map(|(k, v)| Some((k.to_string(), v?))).collect();
        self.send(v1::DrillReport {
            component: r.component.clone(),
            finished: true,
            passed: r.passed,
            verdict: r.verdict.clone(),
            timings_s,
            ..Default::default()
        })
        .await
        .ok();
    }
}
