//! Machine endpoints (read-only: a machine's status is derived).

use axum::extract::State;
use axum::Json;
use rollcall_core::{MachineId, MachineStatus, TokenKind};
use rollcall_store::WorkerFilter;
use serde::Deserialize;

use super::dto::{Machine, MachineDetail, Page, Worker};
use super::error::{ApiError, ErrorBody};
use super::extract::{Caller, PathId, Q};
use super::{next_cursor, parse_limit, AppState};

/// Filters and paging of `GET /v1/machines`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MachineQuery {
    /// `online` or `offline`.
    #[param(pattern = r"^(online|offline)$")]
    pub status: Option<String>,
    /// 1–1000, default 100.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The last machine id of the previous page.
    #[param(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    pub cursor: Option<String>,
}

/// List machines.
#[utoipa::path(
    get, path = "/v1/machines", tag = "machines",
    params(MachineQuery),
    responses(
        (status = 200, body = Page<Machine>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    q: Q<MachineQuery>,
) -> Result<Json<Page<Machine>>, ApiError> {
    caller.require(&[TokenKind::Read, TokenKind::Admin])?;
    let q = q.get()?;
    let limit = parse_limit(q.limit.as_deref())?;
    let status = q
        .status
        .as_deref()
        .map(|v| {
            v.parse::<MachineStatus>().map_err(|_| {
                ApiError::invalid(format!("status must be online or offline, got {v:?}"))
            })
        })
        .transpose()?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            MachineId::parse(c)
                .map_err(|_| ApiError::invalid("cursor is not one this server issued"))
        })
        .transpose()?;
    let page = s.store.list_machines(status, after.as_ref(), limit).await?;
    let next_cursor = next_cursor(&page, |m| m.id.to_string());
    Ok(Json(Page {
        items: page.items.iter().map(Machine::from).collect(),
        next_cursor,
    }))
}

/// Get one machine with its workers.
#[utoipa::path(
    get, path = "/v1/machines/{id}", tag = "machines",
    params(("id" = String, Path, description = "Machine id")),
    responses(
        (status = 200, body = MachineDetail),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    path: PathId,
) -> Result<Json<MachineDetail>, ApiError> {
    caller.require(&[TokenKind::Read, TokenKind::Admin])?;
    let not_found = || ApiError::not_found("machine not found");
    let id = path
        .0
        .as_deref()
        .and_then(|p| MachineId::parse(p).ok())
        .ok_or_else(not_found)?;
    let machine = s.store.get_machine(&id).await?.ok_or_else(not_found)?;
    let filter = WorkerFilter {
        status: None,
        machine_id: Some(id),
    };
    let mut workers = Vec::new();
    let mut after = None;
    loop {
        let page = s.store.list_workers(&filter, after.as_ref(), 1000).await?;
        workers.extend(page.items.iter().map(|r| Worker::from_store(r, &s.engine)));
        if !page.more {
            break;
        }
        after = page.items.last().map(|w| w.id.clone());
    }
    Ok(Json(MachineDetail {
        machine: Machine::from(&machine),
        workers,
    }))
}
