//! The HTTP API (axum): routing, shared state and the handlers, one module
//! per resource. The contract is `docs/API.md`; `/openapi.json` is generated
//! from the handlers here.

pub mod dashboard;
pub mod dto;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod incidents;
pub mod machines;
pub mod openapi;
pub mod ops;
pub mod stream;
pub mod summary;
pub mod tokens;
pub mod workers;

use std::sync::Arc;

use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use rollcall_core::{LivenessPolicy, TokenHash};
use rollcall_store::Store;
use tokio_util::sync::CancellationToken;

use crate::auth::Tokens;
use crate::cleanup::Cleaner;
use crate::clock::Clock;
use crate::engine::Engine;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::writer::Writer;
use error::ApiError;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub engine: Arc<Engine>,
    pub writer: Writer,
    pub tokens: Arc<Tokens>,
    pub hub: Hub,
    pub clock: Arc<dyn Clock>,
    pub policy: LivenessPolicy,
    pub cleaner: Cleaner,
    pub metrics: Arc<Metrics>,
    /// Whether the store can commit (for `/readyz`).
    pub store_health: Arc<crate::health::StoreHealth>,
    /// The hash of `metrics_token`: when set, `GET /metrics` needs it (or
    /// an admin token).
    pub metrics_token: Option<TokenHash>,
    /// Timings of `GET /v1/events/stream`.
    pub stream: stream::StreamSettings,
    /// The open event streams and their limits.
    pub streams: Arc<stream::StreamSlots>,
    /// Failed authentications per client address.
    pub throttle: Arc<crate::auth::FailureThrottle>,
    /// Who may register a live worker's name again.
    pub re_register: crate::config::ReRegister,
    /// Retention and flapping threshold of the health endpoints.
    pub health: health::HealthSettings,
    /// Cancelled when the server shuts down, so that the responses that
    /// never end by themselves (event streams) end and shutdown completes.
    pub shutdown: CancellationToken,
    /// Set on a standby replica: whether the active replica answers (a
    /// standby that cannot reach it is not ready: it could only answer
    /// changes with 503).
    pub active_reach: Option<Arc<crate::cluster::ActiveReach>>,
    /// The alert rules of the config file and the channels (the rules
    /// made through the API are in the store).
    pub alerting: Arc<crate::alerts::rules::Alerting>,
    /// Woken when the API changed the alert rules (the alerter reloads).
    pub rules_changed: Arc<tokio::sync::Notify>,
}

/// Page sizes: 1–1000, default 100.
pub fn parse_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(100),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "limit must be an integer from 1 to 1000, got {l:?}"
                ))
            }),
    }
}

/// The cursor of the page after `page`: the key of its last item, or `None`
/// on the last page.
pub fn next_cursor<T>(
    page: &rollcall_store::Page<T>,
    key: impl Fn(&T) -> String,
) -> Option<String> {
    if page.more {
        page.items.last().map(key)
    } else {
        None
    }
}

/// The router of the whole API; `GET /metrics` is on it when
/// `with_metrics` (that is, unless it has a listener of its own).
pub fn router(state: AppState, with_metrics: bool) -> Router {
    let mut router = Router::new();
    if with_metrics {
        router = router.route("/metrics", get(ops::metrics));
    }
    router
        .route("/", get(dashboard::page))
        .route("/assets/{name}", get(dashboard::asset))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.json", get(ops::openapi))
        .route("/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/v1/tokens/{id}", axum::routing::delete(tokens::delete))
        .route("/v1/workers", post(workers::register).get(workers::list))
        .route(
            "/v1/workers/{id}",
            get(workers::get).delete(workers::delete),
        )
        .route("/v1/workers/{id}/heartbeat", post(workers::heartbeat))
        .route("/v1/workers/{id}/drain", post(workers::drain))
        .route("/v1/workers/{id}/offline", post(workers::offline))
        .route("/v1/heartbeats", post(workers::batch_heartbeats))
        .route("/v1/machines", get(machines::list))
        .route("/v1/machines/{id}", get(machines::get))
        .route("/v1/summary", get(summary::get))
        .route("/v1/machines/{id}/health", get(health::machine))
        .route("/v1/workers/{id}/health", get(health::worker))
        .route("/v1/health", get(health::fleet))
        .route("/v1/incidents", get(incidents::list))
        .route("/v1/incidents/{id}", get(incidents::get))
        .route("/v1/incidents/{id}/ack", post(incidents::ack))
        .route("/v1/alert-rules", get(incidents::rules))
        .route(
            "/v1/alert-rules/{name}",
            get(incidents::get_rule)
                .put(incidents::put_rule)
                .delete(incidents::delete_rule),
        )
        .route("/v1/events", get(events::list))
        .route("/v1/events/stream", get(stream::stream))
        .route("/v1/cleanup/stale", post(ops::cleanup_stale))
        .route("/v1/cleanup/all", post(ops::cleanup_all))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(extract::CloseIfBodyUnreadLayer)
        .with_state(state)
}

/// `Cache-Control: no-store`, on every answer that carries a secret (a new
/// token, a registration's worker token).
pub const NO_STORE: [(axum::http::HeaderName, axum::http::HeaderValue); 1] = [(
    axum::http::header::CACHE_CONTROL,
    axum::http::HeaderValue::from_static("no-store"),
)];

/// The header that tells which role the answering server has.
pub const ROLE_HEADER: &str = "x-rollcall-role";

/// The router of the separate metrics listener (`metrics_listen`): only
/// `GET /metrics`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> impl IntoResponse {
    ApiError::not_found("no such endpoint")
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::MethodNotAllowed
}
