//! The event log.

use axum::extract::State;
use axum::Json;
use rollcall_core::{EventType, MachineId, TokenKind, WorkerId};
use rollcall_store::EventFilter;
use serde::Deserialize;

use super::dto::{Event, Page};
use super::error::{ApiError, ErrorBody};
use super::extract::{Caller, Q};
use super::{next_cursor, parse_limit, AppState};

/// Paging and filters of `GET /v1/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only events with a larger `seq` (default 0).
    #[param(value_type = Option<i64>, minimum = 0)]
    pub after: Option<String>,
    /// 1–1000, default 100.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    #[param(pattern = r"^wkr_[0-9A-HJKMNP-TV-Z]{26}$")]
    pub worker_id: Option<String>,
    #[param(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    pub machine_id: Option<String>,
    /// An event type, e.g. `worker.offline`.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<rollcall_core::EventType>)]
    pub kind: Option<String>,
}

/// Parses the filters of an event query.
pub fn event_filter(q: &EventQuery) -> Result<EventFilter, ApiError> {
    Ok(EventFilter {
        worker_id: q
            .worker_id
            .as_deref()
            .map(|w| WorkerId::parse(w).map_err(|e| ApiError::invalid(format!("worker_id: {e}"))))
            .transpose()?,
        machine_id: q
            .machine_id
            .as_deref()
            .map(|m| MachineId::parse(m).map_err(|e| ApiError::invalid(format!("machine_id: {e}"))))
            .transpose()?,
        kind: q
            .kind
            .as_deref()
            .map(|k| {
                k.parse::<EventType>()
                    .map_err(|_| ApiError::invalid(format!("unknown event type {k:?}")))
            })
            .transpose()?,
    })
}

/// Parses `after` (a `seq`, 0 if absent).
pub fn parse_after(after: Option<&str>) -> Result<i64, ApiError> {
    match after {
        None => Ok(0),
        Some(a) => a.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::invalid(format!("after must be a non-negative integer, got {a:?}"))
        }),
    }
}

/// List events, oldest first.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(EventQuery),
    responses(
        (status = 200, body = Page<Event>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    q: Q<EventQuery>,
) -> Result<Json<Page<Event>>, ApiError> {
    caller.require(&[TokenKind::Read, TokenKind::Admin])?;
    let q = q.get()?;
    let limit = parse_limit(q.limit.as_deref())?;
    let after = parse_after(q.after.as_deref())?;
    let filter = event_filter(&q)?;
    let page = s.store.list_events(&filter, after, limit).await?;
    let next_cursor = next_cursor(&page, |e| e.seq.to_string());
    Ok(Json(Page {
        items: page.items.iter().map(Event::from).collect(),
        next_cursor,
    }))
}
