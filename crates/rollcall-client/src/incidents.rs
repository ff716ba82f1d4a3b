//! Incidents: what the server's alert rules found (see the server's
//! docs/ALERTS.md).

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
