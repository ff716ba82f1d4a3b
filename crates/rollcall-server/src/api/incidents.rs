//! Incidents and the alert rules that open them.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::Json;
use rollcall_core::{IncidentId, TokenKind};
use rollcall_store::{IncidentRecord, IncidentStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::dto::Page;
use super::error::{ApiError, ErrorBody};
use super::extract::{optional_json_body, Caller, PathId, BODY_LIMIT, Q};
use super::{next_cursor, parse_limit, AppState};
use crate::alerts::rules::RuleKind;

/// An incident: a rule's finding about a worker, a machine or the fleet.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Incident {
    #[schema(pattern = r"^inc_[0-9A-HJKMNP-TV-Z]{26}$")]
    pub id: String,
    /// The rule that opened it.
    pub rule: String,
    /// The rule's kind.
    #[schema(pattern = r"^(worker_offline|worker_crashes|machine_offline|mass_failure)$")]
    pub kind: String,
    pub severity: String,
    /// `pending`: its condition holds but not yet for the rule's `for`
    /// (nobody was told); `open`: notified; `resolved`: over.
    #[schema(pattern = r"^(pending|open|resolved)$")]
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
    /// The open mass failure that covers it: it is not notified on its own.
    pub inhibited_by: Option<String>,
    /// What the rule knows: for `worker_crashes` the crash times (ms),
    /// for `mass_failure` the workers it covers (`covered`), their machines
    /// (`machines`), those live again (`recovered`) and how many selected
    /// workers were live when the window began (`live_at_start`).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl From<&IncidentRecord> for Incident {
    fn from(i: &IncidentRecord) -> Self {
        let t = |t: Option<rollcall_core::Timestamp>| t.map(|t| t.to_rfc3339());
        Incident {
            id: i.id.to_string(),
            rule: i.rule.clone(),
            kind: i.kind.clone(),
            severity: i.severity.clone(),
            status: i.status.as_str().into(),
            subject: i.subject.clone(),
            worker_id: i.worker_id.as_ref().map(|w| w.to_string()),
            machine_id: i.machine_id.as_ref().map(|m| m.to_string()),
            summary: i.summary.clone(),
            since: i.since.to_rfc3339(),
            opened_at: t(i.opened_at),
            resolved_at: t(i.resolved_at),
            acked_at: t(i.acked_at),
            acked_by: i.acked_by.clone(),
            inhibited_by: i.inhibited_by.as_ref().map(|x| x.to_string()),
            details: i.details.clone(),
        }
    }
}

/// Filters and paging of `GET /v1/incidents`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IncidentQuery {
    /// Only incidents of this status.
    #[param(value_type = Option<String>, pattern = r"^(pending|open|resolved)$")]
    pub status: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = r"^inc_[0-9A-HJKMNP-TV-Z]{26}$")]
    pub cursor: Option<String>,
    /// 1–1000, default 100.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
}

/// List incidents, newest first.
#[utoipa::path(
    get, path = "/v1/incidents", tag = "incidents",
    params(IncidentQuery),
    responses(
        (status = 200, body = Page<Incident>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    q: Q<IncidentQuery>,
) -> Result<Json<Page<Incident>>, ApiError> {
    caller.require(&[TokenKind::Read, TokenKind::Admin])?;
    let q = q.get()?;
    let limit = parse_limit(q.limit.as_deref())?;
    let status = q
        .status
        .as_deref()
        .map(|v| {
            IncidentStatus::parse(v).ok_or_else(|| {
                ApiError::invalid(format!(
                    "status must be \"pending\", \"open\" or \"resolved\", got {v:?}"
                ))
            })
        })
        .transpose()?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| IncidentId::parse(c).map_err(|e| ApiError::invalid(format!("cursor: {e}"))))
        .transpose()?;
    let page = s
        .store
        .list_incidents(status, before.as_ref(), limit)
        .await?;
    let next_cursor = next_cursor(&page, |i| i.id.to_string());
    Ok(Json(Page {
        items: page.items.iter().map(Incident::from).collect(),
        next_cursor,
    }))
}

fn incident_id(path: &PathId) -> Result<IncidentId, ApiError> {
    path.0
        .as_deref()
        .and_then(|p| IncidentId::parse(p).ok())
        .ok_or_else(|| ApiError::not_found("incident not found"))
}

/// Get one incident.
#[utoipa::path(
    get, path = "/v1/incidents/{id}", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")),
    responses(
        (status = 200, body = Incident),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    path: PathId,
) -> Result<Json<Incident>, ApiError> {
    caller.require(&[TokenKind::Read, TokenKind::Admin])?;
    let id = incident_id(&path)?;
    let i = s
        .store
        .get_incident(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("incident not found"))?;
    Ok(Json(Incident::from(&i)))
}

/// The body of an acknowledgement (optional).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct AckRequest {
    /// Who acknowledges (default `admin`); no control or bidirectional
    /// formatting characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F\u061C\u200E\u200F\u2028-\u202E\u2066-\u2069]*$"
    )]
    pub by: Option<String>,
}

/// Acknowledge an incident: someone is on it. The first acknowledgement
/// stands; acknowledging again changes nothing.
#[utoipa::path(
    post, path = "/v1/incidents/{id}/ack", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")),
    request_body(content = AckRequest, description = "Optional: who acknowledges"),
    responses(
        (status = 200, body = Incident),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn ack(
    State(s): State<AppState>,
    caller: Caller,
    path: PathId,
    body: Body,
) -> Result<Json<Incident>, ApiError> {
    caller.require(&[TokenKind::Admin])?;
    let req: Option<AckRequest> = optional_json_body(body, BODY_LIMIT).await?;
    let by = req.and_then(|r| r.by).unwrap_or_else(|| "admin".into());
    let n = by.chars().count();
    if n == 0 || n > 128 {
        return Err(ApiError::invalid("by must be 1 to 128 characters"));
    }
    rollcall_core::check_text(&by).map_err(|e| ApiError::invalid(format!("by {e}")))?;
    let id = incident_id(&path)?;
    let i = s
        .store
        .ack_incident(&id, s.clock.now(), &by)
        .await?
        .ok_or_else(|| ApiError::not_found("incident not found"))?;
    Ok(Json(Incident::from(&i)))
}

/// An alert rule as configured.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlertRule {
    pub name: String,
    #[schema(pattern = r"^(worker_offline|worker_crashes|machine_offline|mass_failure)$")]
    pub kind: String,
    pub severity: String,
    /// Labels a worker (a machine, for `machine_offline`) must carry.
    pub select: BTreeMap<String, String>,
    /// The channels it notifies.
    pub channels: Vec<String>,
    /// `worker_offline`, `machine_offline`: how long, in ms, the condition
    /// must hold before the incident opens.
    pub for_ms: Option<u64>,
    /// `worker_crashes`: this many crashes…
    pub crashes: Option<u32>,
    /// …within this many ms.
    pub within_ms: Option<u64>,
    /// `mass_failure`: this share of the selected live workers…
    pub percent: Option<u32>,
    /// …crashing within this many ms.
    pub window_ms: Option<u64>,
}

/// The alert rules of this server (from its config).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlertRules {
    pub items: Vec<AlertRule>,
}

/// List the alert rules.
#[utoipa::path(
    get, path = "/v1/alert-rules", tag = "incidents",
    responses(
        (status = 200, body = AlertRules),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn rules(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<AlertRules>, ApiError> {
    caller.require(&[TokenKind::Read, TokenKind::Admin])?;
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let items = s
        .alerting
        .rules
        .iter()
        .map(|r| {
            let mut out = AlertRule {
                name: r.name.clone(),
                kind: r.kind.as_str().into(),
                severity: r.severity.clone(),
                select: r.select.clone(),
                channels: r.channels.clone(),
                for_ms: None,
                crashes: None,
                within_ms: None,
                percent: None,
                window_ms: None,
            };
            match r.kind {
                RuleKind::WorkerOffline { for_ } | RuleKind::MachineOffline { for_ } => {
                    out.for_ms = Some(ms(for_));
                }
                RuleKind::WorkerCrashes { crashes, within } => {
                    out.crashes = Some(crashes);
                    out.within_ms = Some(ms(within));
                }
                RuleKind::MassFailure { percent, window } => {
                    out.percent = Some(percent);
                    out.window_ms = Some(ms(window));
                }
            }
            out
        })
        .collect();
    Ok(Json(AlertRules { items }))
}
