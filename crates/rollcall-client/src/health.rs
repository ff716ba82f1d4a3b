//! Fleet health: availability, downtime and crash history over a window
//! (`GET /v1/health`, `GET /v1/machines/{id}/health`,
//! `GET /v1/workers/{id}/health`).
//!
//! Time when no rollcall server was observing is *no data*: it is reported
//! as `no_data_ms` and left out of every ratio, never counted as downtime.

use rollcall_core::{CrashKind, MachineId, Timestamp, WorkerId, WorkerName};
use serde::{Deserialize, Serialize};

use crate::query::Params;

/// Crashes by kind (`stale`, `replaced`, `exited` with a failure).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crashes {
    pub total: u64,
    pub stale: u64,
    pub replaced: u64,
    pub exited: u64,
}

/// The latest crash within the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCrash {
    pub at: Timestamp,
    pub kind: CrashKind,
}

/// One part of a window, for charts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub from: Timestamp,
    pub to: Timestamp,
    pub observed_ms: u64,
    pub no_data_ms: u64,
    pub live_ms: u64,
    pub down_ms: u64,
    /// `live / observed`; `None` when nothing was observed.
    pub availability: Option<f64>,
    pub crashes: u64,
}

/// The figures of one worker or machine over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Time it existed while a server was observing.
    pub observed_ms: u64,
    /// Time it existed while no server was observing.
    pub no_data_ms: u64,
    /// Observed time online or draining (a machine: with a live worker).
    pub live_ms: u64,
    /// Observed time offline.
    pub down_ms: u64,
    /// `live / observed`; `None` when nothing was observed.
    pub availability: Option<f64>,
    pub crashes: Crashes,
    /// Offlines it meant: `shutdown`, or `exited` with exit code 0.
    #[serde(default)]
    pub graceful: u64,
    /// Offlines an admin caused (`revoked`).
    #[serde(default)]
    pub administrative: u64,
    /// Mean time between failures: live time ÷ crashes; `None` without one.
    pub mtbf_ms: Option<u64>,
    pub last_crash: Option<LastCrash>,
    /// Crashed at least the server's `flapping_crashes_per_hour` times in
    /// the window's last hour.
    #[serde(default)]
    pub flapping: bool,
}

/// `GET /v1/workers/{id}/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerHealth {
    pub worker_id: WorkerId,
    pub machine_id: MachineId,
    /// `None` for a worker deleted before the history recorded its name.
    pub name: Option<WorkerName>,
    pub from: Timestamp,
    pub to: Timestamp,
    #[serde(flatten)]
    pub figures: Figures,
    #[serde(default)]
    pub buckets: Vec<Bucket>,
}

/// `GET /v1/machines/{id}/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineHealth {
    pub machine_id: MachineId,
    #[serde(default)]
    pub hostname: Option<String>,
    pub from: Timestamp,
    pub to: Timestamp,
    #[serde(flatten)]
    pub figures: Figures,
    #[serde(default)]
    pub buckets: Vec<Bucket>,
    /// Every worker the machine had within the window.
    #[serde(default)]
    pub workers: Vec<WorkerHealth>,
}

/// A machine in one of the fleet's rankings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedMachine {
    pub machine_id: MachineId,
    #[serde(default)]
    pub hostname: Option<String>,
    pub availability: Option<f64>,
    pub down_ms: u64,
    pub crashes: Crashes,
    pub mtbf_ms: Option<u64>,
    pub last_crash: Option<LastCrash>,
}

/// A worker in one of the fleet's rankings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedWorker {
    pub worker_id: WorkerId,
    pub machine_id: MachineId,
    /// `None` for a worker deleted before the history recorded its name.
    pub name: Option<WorkerName>,
    pub availability: Option<f64>,
    pub down_ms: u64,
    pub crashes: Crashes,
    pub mtbf_ms: Option<u64>,
    pub last_crash: Option<LastCrash>,
}

/// `GET /v1/health`: the fleet over a window, and the machines and workers
/// that crashed most and were down longest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetHealth {
    pub from: Timestamp,
    pub to: Timestamp,
    /// Workers that existed within the window.
    pub workers: u64,
    /// Machines that had a worker within the window.
    pub machines: u64,
    pub observed_ms: u64,
    pub no_data_ms: u64,
    pub live_ms: u64,
    pub down_ms: u64,
    pub availability: Option<f64>,
    pub crashes: Crashes,
    #[serde(default)]
    pub graceful: u64,
    #[serde(default)]
    pub administrative: u64,
    pub top_machines_by_crashes: Vec<RankedMachine>,
    pub top_machines_by_downtime: Vec<RankedMachine>,
    pub top_workers_by_crashes: Vec<RankedWorker>,
    pub top_workers_by_downtime: Vec<RankedWorker>,
}

/// The window of a health query: `window` (a duration ending now: `1h`,
/// `24h`, `7d`, `30d`, or any `<n>m`, `<n>h`, `<n>d`) or `from`/`to`. Leave
/// everything `None` for the server's default (the last 24 hours).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthQuery {
    pub window: Option<String>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    /// Parts of the window for charts, 1–1000 (worker and machine health).
    pub buckets: Option<u32>,
    /// Length of each ranking, 1–1000 (fleet health).
    pub top: Option<u32>,
    /// Label filters `key=value` (fleet health).
    pub labels: Vec<(String, String)>,
}

impl HealthQuery {
    /// The last `window` (e.g. `"7d"`).
    pub fn window(window: impl Into<String>) -> Self {
        HealthQuery {
            window: Some(window.into()),
            ..Default::default()
        }
    }

    pub(crate) fn params(&self) -> Params {
        let mut p = Params::new();
        if let Some(w) = &self.window {
            p.push(("window", w.clone()));
        }
        if let Some(t) = self.from {
            p.push(("from", t.to_string()));
        }
        if let Some(t) = self.to {
            p.push(("to", t.to_string()));
        }
        if let Some(n) = self.buckets {
            p.push(("buckets", n.to_string()));
        }
        if let Some(n) = self.top {
            p.push(("top", n.to_string()));
        }
        for (k, v) in &self.labels {
            p.push(("label", format!("{k}={v}")));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_documented_shape() {
        let w: WorkerHealth = serde_json::from_str(
            r#"{"worker_id":"wkr_01JDQ3Z6X8A1B2C3D4E5F6G7H8","machine_id":"m","name":"a",
                "from":"2026-12-01T00:00:00.000Z","to":"2026-12-02T00:00:00.000Z",
                "observed_ms":1000,"no_data_ms":0,"live_ms":900,"down_ms":100,"availability":0.9,
                "crashes":{"total":1,"stale":1,"replaced":0,"exited":0},
                "graceful":0,"administrative":0,"mtbf_ms":900,
                "last_crash":{"at":"2026-12-01T12:00:00.000Z","kind":"stale"},"flapping":false,
                "buckets":[{"from":"2026-12-01T00:00:00.000Z","to":"2026-12-02T00:00:00.000Z",
                  "observed_ms":1000,"no_data_ms":0,"live_ms":900,"down_ms":100,
                  "availability":0.9,"crashes":1}]}"#,
        )
        .unwrap();
        assert_eq!(w.figures.crashes.stale, 1);
        assert_eq!(w.figures.last_crash.unwrap().kind, CrashKind::Stale);
        assert_eq!(w.buckets.len(), 1);
        assert_eq!(w.buckets[0].availability, Some(0.9));
    }

    #[test]
    fn query_parameters() {
        let q = HealthQuery {
            top: Some(20),
            labels: vec![("queue".into(), "gpu".into())],
            ..HealthQuery::window("7d")
        };
        assert_eq!(
            q.params(),
            vec![
                ("window", "7d".to_string()),
                ("top", "20".to_string()),
                ("label", "queue=gpu".to_string())
            ]
        );
    }
}
