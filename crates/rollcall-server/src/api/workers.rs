//! Worker endpoints: registration, heartbeats, drain, offline, delete, reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use rollcall_core::{
    ExitStatus, Labels, MachineId, OfflineReason, Status, Timestamp, TokenKind, TokenScope,
    WorkerId, WorkerName,
};
use rollcall_store::WorkerFilter;
use serde::Deserialize;

use super::dto::{
    BatchError, BatchRequest, BatchResponse, BatchResult, HeartbeatResponse, OfflineRequest, Page,
    RegisterRequest, Registered, Worker,
};
use super::error::{ApiError, ErrorBody};
use super::extract::{
    json_body, optional_json_body, Caller, PathId, BATCH_BODY_LIMIT, BODY_LIMIT, Q,
};
use super::{next_cursor, parse_limit, AppState};
use crate::engine::{Beat, FastBeat};
use crate::metrics::HeartbeatMode;
use crate::writer::{Changed, RegisteredWorker, Registration};

/// The most heartbeats in one batch.
pub const MAX_BATCH_HEARTBEATS: usize = 1000;
/// Hostnames: at most the DNS limit.
const MAX_HOSTNAME: usize = 253;

fn labels(
    map: Option<std::collections::BTreeMap<String, String>>,
    what: &str,
) -> Result<Labels, ApiError> {
    Labels::parse_input(map.unwrap_or_default())
        .map_err(|e| ApiError::invalid(format!("{what}: {e}")))
}

/// Under `re_register = own_token`, registering the name of a live worker
/// again needs that worker's current token (or an admin token). A worker
/// that is offline, or unknown, may be registered by any enroll token.
fn check_re_register(
    s: &AppState,
    caller: &Caller,
    headers: &axum::http::HeaderMap,
    machine_id: &MachineId,
    name: &WorkerName,
) -> Result<(), ApiError> {
    if s.re_register == crate::config::ReRegister::Any || caller.0 == crate::auth::Principal::Admin
    {
        return Ok(());
    }
    let Some(id) = s.engine.by_name(machine_id, name) else {
        return Ok(());
    };
    if !s.engine.get(&id).is_some_and(|w| w.record.status.is_live()) {
        return Ok(());
    }
    let presented = headers
        .get("x-rollcall-worker-token")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| s.tokens.worker_of(&s.engine, t.trim()));
    if presented.as_ref() == Some(&id) {
        return Ok(());
    }
    Err(ApiError::Conflict(format!(
        "worker {name} on {machine_id} is live; this server (re_register = own_token) registers \
         it again only with its current token in X-Rollcall-Worker-Token, or once it is offline"
    )))
}

/// An enroll token with a scope registers only workers inside it (403
/// otherwise). Checked here, after the content, so that a refusal comes
/// before the `re_register` conflict; the writer checks again against the
/// worker as it is when the registration commits.
fn check_scope(
    s: &AppState,
    caller: &Caller,
    machine_id: &MachineId,
    name: &WorkerName,
    labels: &Labels,
) -> Result<Option<Arc<TokenScope>>, ApiError> {
    let crate::auth::Principal::Enroll(Some(scope)) = &caller.0 else {
        return Ok(None);
    };
    let existing = s
        .engine
        .by_name(machine_id, name)
        .and_then(|id| s.engine.get(&id))
        .map(|w| w.record.labels.clone());
    match crate::auth::outside_scope(scope, machine_id, name, labels, existing.as_ref()) {
        Some(why) => Err(ApiError::forbidden(why)),
        None => Ok(Some(scope.clone())),
    }
}

/// Register a worker (or register it again).
#[utoipa::path(
    post, path = "/v1/workers", tag = "workers",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered a new worker", body = Registered),
        (status = 200, description = "Registered an existing worker again: new session, new token", body = Registered),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "A token that may not register workers, or an enroll token whose scope the worker is outside of", body = ErrorBody),
        (status = 409, description = "With `re_register = own_token`: the name is a live worker's, and its current token was not presented", body = ErrorBody),
        (status = 413, body = ErrorBody),
    ),
    params(
        ("X-Rollcall-Worker-Token" = Option<String>, Header,
            description = "The live worker's current token, when registering its name again under `re_register = own_token`"),
    ),
    security(("bearer" = []))
)]
pub async fn register(
    State(s): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<
    (
        StatusCode,
        [(axum::http::HeaderName, axum::http::HeaderValue); 1],
        Json<Registered>,
    ),
    ApiError,
> {
    caller.require(&[TokenKind::Enroll, TokenKind::Admin])?;
    let req: RegisterRequest = json_body(body, BODY_LIMIT).await?;
    let name = WorkerName::parse(&req.name).map_err(|e| ApiError::invalid(format!("name: {e}")))?;
    let machine_id = MachineId::parse(&req.machine.id)
        .map_err(|e| ApiError::invalid(format!("machine.id: {e}")))?;
    if let Some(h) = &req.machine.hostname {
        if h.is_empty() || h.chars().count() > MAX_HOSTNAME {
            return Err(ApiError::invalid(format!(
                "machine.hostname must be 1 to {MAX_HOSTNAME} characters"
            )));
        }
        rollcall_core::check_text(h)
            .map_err(|e| ApiError::invalid(format!("machine.hostname {e}")))?;
    }
    let machine_labels = match req.machine.labels {
        Some(m) => Some(labels(Some(m), "machine.labels")?),
        None => None,
    };
    let labels = labels(req.labels, "labels")?;
    let intervals = s
        .policy
        .resolve(
            req.heartbeat_interval_ms.map(Duration::from_millis),
            req.stale_after_ms.map(Duration::from_millis),
        )
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    // Content is checked before the scope and conflicts: a bad request is
    // 400 whoever holds the name.
    let scope = check_scope(&s, &caller, &machine_id, &name, &labels)?;
    check_re_register(&s, &caller, &headers, &machine_id, &name)?;
    let RegisteredWorker {
        record,
        deadline,
        token,
        created,
    } = s
        .writer
        .register(Registration {
            name,
            machine_id,
            hostname: req.machine.hostname,
            machine_labels,
            labels,
            intervals,
            scope,
        })
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        super::NO_STORE,
        Json(Registered {
            worker: Worker::new(&record, Some(deadline)),
            token,
        }),
    ))
}

fn beat_response(beat: Beat, resumed: bool) -> HeartbeatResponse {
    HeartbeatResponse {
        status: beat.status,
        session: beat.session,
        resumed,
        deadline_at: beat.deadline,
        heartbeat_interval_ms: beat.heartbeat_interval.as_millis() as u64,
    }
}

/// Takes one heartbeat of an authenticated worker, in memory, whatever
/// its state: it never waits for a commit. A heartbeat of an offline worker
/// queues its resume and answers at once with what the resume makes of it
/// (`resumed: true`); the `worker.online` event is published once the
/// resume is durable, as every event.
async fn beat(s: &AppState, id: &WorkerId, now: Timestamp) -> Result<HeartbeatResponse, ApiError> {
    match s.engine.heartbeat(id, now) {
        FastBeat::Done(b) => Ok(beat_response(b, false)),
        FastBeat::Resuming { beat, first } => {
            if first {
                s.writer.resume(id.clone(), now).await?;
            }
            Ok(beat_response(beat, first))
        }
        FastBeat::Unknown => Err(ApiError::Unauthorized(
            "unknown, expired or revoked token".into(),
        )),
    }
}

/// A worker's heartbeat.
#[utoipa::path(
    post, path = "/v1/workers/{id}/heartbeat", tag = "workers",
    params(("id" = String, Path, description = "Worker id")),
    request_body(content = Object, description = "Optional, may be empty or {}"),
    responses(
        (status = 200, body = HeartbeatResponse),
        (status = 400, description = "A body that is not a JSON object", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn heartbeat(
    State(s): State<AppState>,
    caller: Result<Caller, ApiError>,
    path: PathId,
    body: Body,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let started = Instant::now();
    let result = async {
        caller?.require_own_worker(&path, false)?;
        let _: Option<serde_json::Value> = optional_json_body(body, BODY_LIMIT).await?;
        let id = path.worker()?;
        beat(&s, &id, s.clock.now()).await
    }
    .await;
    let mode = HeartbeatMode::Single;
    match &result {
        Ok(_) => s.metrics.heartbeats_accepted(mode, 1),
        Err(e) => s.metrics.heartbeats_rejected(mode, e.code(), 1),
    }
    s.metrics.heartbeat_handled(mode, started.elapsed());
    result.map(Json)
}

/// Heartbeats for many workers at once (agents hosting many workers).
#[utoipa::path(
    post, path = "/v1/heartbeats", tag = "workers",
    request_body = BatchRequest,
    responses(
        (status = 200, body = BatchResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn batch_heartbeats(
    State(s): State<AppState>,
    caller: Result<Caller, ApiError>,
    body: Body,
) -> Result<Json<BatchResponse>, ApiError> {
    let started = Instant::now();
    let mode = HeartbeatMode::Batch;
    let result = batch(&s, caller, body).await;
    match &result {
        Ok(r) => {
            let ok = r.results.iter().filter(|r| r.ok).count();
            s.metrics.heartbeats_accepted(mode, ok as u64);
            for r in r.results.iter().filter(|r| !r.ok) {
                if let Some(e) = &r.error {
                    s.metrics.heartbeats_rejected(mode, &e.code, 1);
                }
            }
        }
        Err(e) => s.metrics.heartbeats_rejected(mode, e.code(), 1),
    }
    s.metrics.heartbeat_handled(mode, started.elapsed());
    result.map(Json)
}

/// The batch itself; see [`batch_heartbeats`].
async fn batch(
    s: &AppState,
    caller: Result<Caller, ApiError>,
    body: Body,
) -> Result<BatchResponse, ApiError> {
    caller?.require(&[TokenKind::Enroll, TokenKind::Admin])?;
    let req: BatchRequest = json_body(body, BATCH_BODY_LIMIT).await?;
    if req.heartbeats.len() > MAX_BATCH_HEARTBEATS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_BATCH_HEARTBEATS} heartbeats per batch, got {}",
            req.heartbeats.len()
        )));
    }
    let now = s.clock.now();
    // Every entry is taken in memory, in request order; none waits for a
    // commit (a resume is queued, not awaited), so one entry never delays
    // another.
    let mut results = Vec::with_capacity(req.heartbeats.len());
    for entry in req.heartbeats {
        // Only a worker token authenticates an entry: any other token, valid
        // or not, is answered like an unknown one (no oracle), and its
        // last use is not recorded.
        let outcome = match s.tokens.worker_of(&s.engine, &entry.token) {
            None => Err(ApiError::from(crate::auth::AuthError::Invalid)),
            Some(own) if own.as_str() == entry.worker_id => beat(s, &own, now).await,
            Some(_) => Err(ApiError::forbidden(
                "a worker token may only act on its own worker",
            )),
        };
        results.push(batch_result(entry.worker_id, outcome));
    }
    Ok(BatchResponse { results })
}

/// One entry of a batch answer.
fn batch_result(worker_id: String, outcome: Result<HeartbeatResponse, ApiError>) -> BatchResult {
    match outcome {
        Ok(r) => BatchResult {
            worker_id,
            ok: true,
            status: Some(r.status),
            session: Some(r.session),
            resumed: Some(r.resumed),
            deadline_at: Some(r.deadline_at),
            error: None,
        },
        Err(e) => BatchResult {
            worker_id,
            ok: false,
            status: None,
            session: None,
            resumed: None,
            deadline_at: None,
            error: Some(BatchError {
                code: e.code().into(),
                message: e.message(),
            }),
        },
    }
}

fn worker_reply(c: Changed) -> Json<Worker> {
    Json(Worker::new(&c.record, c.deadline))
}

/// Drain a worker: it finishes its work and takes no more.
#[utoipa::path(
    post, path = "/v1/workers/{id}/drain", tag = "workers",
    params(("id" = String, Path, description = "Worker id")),
    responses(
        (status = 200, body = Worker),
        (status = 400, description = "A body that is not a JSON object", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The worker is offline", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn drain(
    State(s): State<AppState>,
    caller: Caller,
    path: PathId,
    body: Body,
) -> Result<Json<Worker>, ApiError> {
    caller.require_own_worker(&path, true)?;
    let _: Option<serde_json::Value> = optional_json_body(body, BODY_LIMIT).await?;
    let id = path.worker()?;
    Ok(worker_reply(s.writer.drain(id).await?))
}

/// Mark a worker offline (graceful shutdown, or its process exited).
#[utoipa::path(
    post, path = "/v1/workers/{id}/offline", tag = "workers",
    params(("id" = String, Path, description = "Worker id")),
    request_body(content = OfflineRequest, description = "Optional; reason defaults to shutdown"),
    responses(
        (status = 200, description = "Offline; calling again changes nothing", body = Worker),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn offline(
    State(s): State<AppState>,
    caller: Caller,
    path: PathId,
    body: Body,
) -> Result<Json<Worker>, ApiError> {
    caller.require_own_worker(&path, true)?;
    let req: OfflineRequest = optional_json_body(body, BODY_LIMIT)
        .await?
        .unwrap_or_default();
    let reason = match req.reason.as_deref() {
        None | Some("shutdown") => OfflineReason::Shutdown,
        Some("exited") => OfflineReason::Exited,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "reason must be \"shutdown\" or \"exited\", got {other:?}"
            )))
        }
    };
    let exit = ExitStatus::from_parts(req.exit_code, req.signal)
        .map_err(|e| ApiError::invalid(format!("{}: {e}", e.field())))?;
    if exit.is_some() && reason != OfflineReason::Exited {
        return Err(ApiError::invalid(
            "exit_code and signal go only with reason \"exited\"",
        ));
    }
    let id = path.worker()?;
    Ok(worker_reply(s.writer.offline(id, reason, exit).await?))
}

/// Delete a worker: revoke its token and forget it.
#[utoipa::path(
    delete, path = "/v1/workers/{id}", tag = "workers",
    params(("id" = String, Path, description = "Worker id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    path: PathId,
) -> Result<StatusCode, ApiError> {
    caller.require(&[TokenKind::Admin])?;
    let id = path.worker()?;
    s.writer.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Filters and paging of `GET /v1/workers`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WorkerQuery {
    /// `online`, `draining` or `offline`.
    #[param(pattern = r"^(online|draining|offline)$")]
    pub status: Option<String>,
    #[param(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    pub machine_id: Option<String>,
    /// 1–1000, default 100.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The last worker id of the previous page.
    #[param(pattern = r"^wkr_[0-9A-HJKMNP-TV-Z]{26}$")]
    pub cursor: Option<String>,
}

/// List workers.
#[utoipa::path(
    get, path = "/v1/workers", tag = "workers",
    params(WorkerQuery),
    responses(
        (status = 200, body = Page<Worker>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    q: Q<WorkerQuery>,
) -> Result<Json<Page<Worker>>, ApiError> {
    caller.require(&[TokenKind::Read, TokenKind::Admin])?;
    let q = q.get()?;
    let limit = parse_limit(q.limit.as_deref())?;
    let status = q
        .status
        .as_deref()
        .map(|v| {
            v.parse::<Status>().map_err(|_| {
                ApiError::invalid(format!(
                    "status must be online, draining or offline, got {v:?}"
                ))
            })
        })
        .transpose()?;
    let machine_id = q
        .machine_id
        .as_deref()
        .map(|m| MachineId::parse(m).map_err(|e| ApiError::invalid(format!("machine_id: {e}"))))
        .transpose()?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            WorkerId::parse(c)
                .map_err(|_| ApiError::invalid("cursor is not one this server issued"))
        })
        .transpose()?;
    let page = s
        .store
        .list_workers(&WorkerFilter { status, machine_id }, after.as_ref(), limit)
        .await?;
    let next_cursor = next_cursor(&page, |w| w.id.to_string());
    Ok(Json(Page {
        items: page
            .items
            .iter()
            .map(|r| Worker::from_store(r, &s.engine))
            .collect(),
        next_cursor,
    }))
}

/// Get one worker.
#[utoipa::path(
    get, path = "/v1/workers/{id}", tag = "workers",
    params(("id" = String, Path, description = "Worker id")),
    responses(
        (status = 200, body = Worker),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    path: PathId,
) -> Result<Json<Worker>, ApiError> {
    caller.require(&[TokenKind::Read, TokenKind::Admin])?;
    let id = path.worker()?;
    let record = s
        .store
        .get_worker(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("worker not found"))?;
    Ok(Json(Worker::from_store(&record, &s.engine)))
}
