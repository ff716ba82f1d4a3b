//! Incidents: what the server's alert rules found (see the server's
//! docs/ALERTS.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An incident as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    /// The rule that opened it.
    pub rule: String,
    /// `worker_offline`, `worker_crashes`, `machine_offline` or `mass_failure`.
    pub kind: String,
    pub severity: String,
    /// `pending`, `open` or `resolved`.
    pub status: String,
    /// A worker id, a machine id, or the rule's name (fleet-wide).
    pub subject: String,
    pub worker_id: Option<String>,
    pub machine_id: Option<String>,
    pub summary: String,
    /// When its condition began (RFC 3339).
    pub since: String,
    pub opened_at: Option<String>,
    pub resolved_at: Option<String>,
    pub acked_at: Option<String>,
    pub acked_by: Option<String>,
    /// The open mass failure that covers it.
    pub inhibited_by: Option<String>,
    /// What the rule knows about it.
    pub details: serde_json::Value,
}

/// Filters and paging of [`crate::Client::list_incidents`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncidentQuery {
    /// `pending`, `open` or `resolved`.
    pub status: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

impl IncidentQuery {
    pub(crate) fn params(&self) -> crate::query::Params {
        let mut p = Vec::new();
        if let Some(s) = &self.status {
            p.push(("status", s.clone()));
        }
        if let Some(c) = &self.cursor {
            p.push(("cursor", c.clone()));
        }
        if let Some(l) = self.limit {
            p.push(("limit", l.to_string()));
        }
        p
    }
}

/// The body of an acknowledgement.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AckRequest<'a> {
    pub by: &'a str,
}

/// An alert rule as the API takes it ([`crate::Client::put_alert_rule`]):
/// the keys of the config file's `[[alert]]`, durations in milliseconds.
/// Fields left `None` take their defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRuleSpec {
    /// `worker_offline`, `worker_crashes`, `machine_offline` or `mass_failure`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// Labels a worker (a machine, for `machine_offline`) must carry.
    #[serde(default)]
    pub select: BTreeMap<String, String>,
    /// The server's `[[channel]]`s to notify (at least one).
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crashes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// An alert rule as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRule {
    pub name: String,
    /// `config` (the server's config file; changed only there) or `api`.
    pub source: String,
    pub kind: String,
    pub severity: String,
    pub select: BTreeMap<String, String>,
    pub channels: Vec<String>,
    pub for_ms: Option<u64>,
    pub crashes: Option<u32>,
    pub within_ms: Option<u64>,
    pub percent: Option<u32>,
    pub window_ms: Option<u64>,
    /// Why a rule made through the API is not in force, if it is not.
    #[serde(default)]
    pub problem: Option<String>,
}

/// `GET /v1/alert-rules`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct AlertRules {
    pub items: Vec<AlertRule>,
}
