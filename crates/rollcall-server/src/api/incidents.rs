//! Incidents and the alert rules that open them.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use rollcall_core::{IncidentId, TokenKind};
use rollcall_store::{IncidentRecord, IncidentStatus, StoredRule};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::dto::Page;
use super::error::{ApiError, ErrorBody};
use super::extract::{json_body, optional_json_body, Caller, PathId, BODY_LIMIT, Q};
use super::{next_cursor, parse_limit, AppState};
use crate::alerts::rules::RuleSpec;

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

/// An alert rule: from the config file (`source: "config"`, changed only
/// there) or made through the API (`source: "api"`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlertRule {
    pub name: String,
    /// `config` or `api`.
    #[schema(pattern = r"^(config|api)$")]
    pub source: String,
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
    /// A rule made through the API that no longer checks (it names a
    /// channel since removed from the config file): why. Such a rule opens
    /// nothing until it is fixed or deleted.
    pub problem: Option<String>,
}

impl AlertRule {
    fn new(name: &str, source: &str, spec: RuleSpec, problem: Option<String>) -> Self {
        AlertRule {
            name: name.to_owned(),
            source: source.into(),
            kind: spec.kind,
            severity: spec.severity.unwrap_or_else(|| "critical".into()),
            select: spec.select,
            channels: spec.channels,
            for_ms: spec.for_ms,
            crashes: spec.crashes,
            within_ms: spec.within_ms,
            percent: spec.percent,
            window_ms: spec.window_ms,
            problem,
        }
    }
}

/// The alert rules of this server.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlertRules {
    pub items: Vec<AlertRule>,
}

/// Every rule: the config file's, then the API's, by name.
async fn all_rules(s: &AppState) -> Result<Vec<AlertRule>, ApiError> {
    let stored = s.store.list_alert_rules().await?;
    let (checked, problems) = s.alerting.with_stored(&stored);
    let mut items: Vec<AlertRule> = s
        .alerting
        .rules
        .iter()
        .map(|r| AlertRule::new(&r.name, "config", RuleSpec::of(r), None))
        .collect();
    for st in &stored {
        let problem = problems
            .iter()
            .find(|(n, _)| n == &st.name)
            .map(|(_, p)| p.clone());
        let spec = match checked.rules.iter().find(|r| r.name == st.name) {
            Some(r) if problem.is_none() => RuleSpec::of(r),
            _ => serde_json::from_str(&st.spec).unwrap_or_default(),
        };
        items.push(AlertRule::new(&st.name, "api", spec, problem));
    }
    Ok(items)
}

/// List the alert rules.
#[utoipa::path(
    get, path = "/v1/alert-rules", tag = "incidents",
    responses(
        (status = 200, body = AlertRules),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn rules(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<AlertRules>, ApiError> {
    caller.require(&[TokenKind::Read, TokenKind::Admin])?;
    Ok(Json(AlertRules {
        items: all_rules(&s).await?,
    }))
}

/// The `{name}` of a rule, checked as a rule's name is (1–64 characters of
/// `A-Z a-z 0-9 - _ .`); anything else names no rule.
fn rule_name(path: &PathId) -> Option<&str> {
    path.0
        .as_deref()
        .filter(|n| crate::alerts::rules::name_ok(n))
}

/// One alert rule.
#[utoipa::path(
    get, path = "/v1/alert-rules/{name}", tag = "incidents",
    params(("name" = String, Path, description = "The rule's name")),
    responses(
        (status = 200, body = AlertRule),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_rule(
    State(s): State<AppState>,
    caller: Caller,
    path: PathId,
) -> Result<Json<AlertRule>, ApiError> {
    caller.require(&[TokenKind::Read, TokenKind::Admin])?;
    let name = rule_name(&path).ok_or_else(|| ApiError::not_found("alert rule not found"))?;
    all_rules(&s)
        .await?
        .into_iter()
        .find(|r| r.name == name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("alert rule not found"))
}

/// Create or replace an alert rule made through the API (201 when created).
/// A rule of the config file cannot be changed here (409). The rule takes
/// effect within a second; a replaced rule of another kind, like a deleted
/// one, resolves the incidents it had open.
#[utoipa::path(
    put, path = "/v1/alert-rules/{name}", tag = "incidents",
    params(("name" = String, Path, description = "The rule's name: 1-64 characters of A-Z a-z 0-9 - _ .")),
    request_body = RuleSpec,
    responses(
        (status = 200, body = AlertRule), (status = 201, body = AlertRule),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_rule(
    State(s): State<AppState>,
    caller: Caller,
    path: PathId,
    body: Body,
) -> Result<(StatusCode, Json<AlertRule>), ApiError> {
    caller.require(&[TokenKind::Admin])?;
    let name = rule_name(&path).ok_or_else(|| {
        ApiError::invalid("a rule's name must be 1-64 characters of A-Z a-z 0-9 - _ .")
    })?;
    let spec: RuleSpec = json_body(body, BODY_LIMIT).await?;
    if s.alerting.rules.iter().any(|r| r.name == name) {
        return Err(ApiError::Conflict(format!(
            "the rule {name:?} is declared in the config file; change it there"
        )));
    }
    let rule = spec.check(name, &s.alerting).map_err(|e| match e {
        crate::config::ConfigError::Invalid { key, message } => {
            ApiError::invalid(format!("{key}: {message}"))
        }
        other => ApiError::invalid(other.to_string()),
    })?;
    let spec = RuleSpec::of(&rule);
    let now = s.clock.now();
    let stored = StoredRule {
        name: name.to_owned(),
        spec: serde_json::to_string(&spec).map_err(|_| ApiError::Internal)?,
        created_at: now,
        updated_at: now,
    };
    let created = s.store.put_alert_rule(&stored).await?;
    s.rules_changed.notify_one();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(AlertRule::new(name, "api", spec, None))))
}

/// Delete an alert rule made through the API; its open incidents resolve.
#[utoipa::path(
    delete, path = "/v1/alert-rules/{name}", tag = "incidents",
    params(("name" = String, Path, description = "The rule's name")),
    responses(
        (status = 204),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_rule(
    State(s): State<AppState>,
    caller: Caller,
    path: PathId,
) -> Result<StatusCode, ApiError> {
    caller.require(&[TokenKind::Admin])?;
    let name = rule_name(&path).ok_or_else(|| ApiError::not_found("alert rule not found"))?;
    if s.alerting.rules.iter().any(|r| r.name == name) {
        return Err(ApiError::Conflict(format!(
            "the rule {name:?} is declared in the config file; remove it there"
        )));
    }
    if !s.store.delete_alert_rule(name).await? {
        return Err(ApiError::not_found("alert rule not found"));
    }
    s.rules_changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
