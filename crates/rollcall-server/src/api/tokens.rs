//! Token endpoints (admin only).

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use rollcall_core::{TokenHash, TokenId, TokenKind, TokenScope};
use rollcall_store::TokenRecord;
use serde::Deserialize;

use super::dto::{self, CreateTokenRequest, CreatedToken, Page, TokenInfo};
use super::error::{ApiError, ErrorBody};
use super::extract::{json_body, Caller, PathId, BODY_LIMIT, Q};
use super::{next_cursor, parse_limit, AppState};

/// The longest a token may be created for (about 100 years).
const MAX_EXPIRES_IN_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// Create an enroll or read token; an enroll token may be given a scope
/// (the workers it may register).
#[utoipa::path(
    post, path = "/v1/tokens", tag = "tokens",
    request_body = CreateTokenRequest,
    responses(
        (status = 201, body = CreatedToken),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(s): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<
    (
        StatusCode,
        [(axum::http::HeaderName, axum::http::HeaderValue); 1],
        Json<CreatedToken>,
    ),
    ApiError,
> {
    caller.require(&[TokenKind::Admin])?;
    let req: CreateTokenRequest = json_body(body, BODY_LIMIT).await?;
    let kind = match req.kind.as_str() {
        "enroll" => TokenKind::Enroll,
        "read" => TokenKind::Read,
        other => {
            return Err(ApiError::invalid(format!(
                "kind must be \"enroll\" or \"read\", got {other:?}"
            )))
        }
    };
    let name_len = req.name.chars().count();
    if name_len == 0 || name_len > 128 {
        return Err(ApiError::invalid("name must be 1 to 128 characters"));
    }
    rollcall_core::check_text(&req.name).map_err(|e| ApiError::invalid(format!("name {e}")))?;
    let now = s.clock.now();
    let expires_at = match req.expires_in_ms {
        None => None,
        Some(0) => return Err(ApiError::invalid("expires_in_ms must be at least 1")),
        Some(ms) if ms > MAX_EXPIRES_IN_MS => {
            return Err(ApiError::invalid(format!(
                "expires_in_ms must be at most {MAX_EXPIRES_IN_MS}"
            )))
        }
        Some(ms) => Some(now.plus(Duration::from_millis(ms))),
    };
    let scope = match req.scope {
        None => None,
        Some(_) if kind != TokenKind::Enroll => {
            return Err(ApiError::invalid(
                "scope: only enroll tokens have a scope (leave it out, or null)",
            ))
        }
        Some(spec) => Some(
            TokenScope::parse_input(spec.machines, spec.labels.unwrap_or_default())
                .map_err(|e| ApiError::invalid(e.to_string()))?,
        ),
    };
    let secret = kind.secret(rand::random());
    let record = TokenRecord {
        id: TokenId::generate(now, rand::random()),
        kind,
        name: req.name,
        hash: TokenHash::of(&secret),
        created_at: now,
        expires_at,
        last_used_at: None,
        scope,
    };
    s.store.insert_token(&record).await?;
    s.tokens.insert(&record);
    Ok((
        StatusCode::CREATED,
        super::NO_STORE,
        Json(CreatedToken {
            id: record.id.to_string(),
            kind,
            name: record.name,
            token: secret,
            expires_at,
            scope: record.scope.as_ref().map(dto::TokenScope::from),
        }),
    ))
}

/// Paging of `GET /v1/tokens`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    /// 1–1000, default 100.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The last token id of the previous page.
    #[param(pattern = r"^tok_[0-9A-HJKMNP-TV-Z]{26}$")]
    pub cursor: Option<String>,
}

/// List tokens (never their secrets).
#[utoipa::path(
    get, path = "/v1/tokens", tag = "tokens",
    params(TokenQuery),
    responses(
        (status = 200, body = Page<TokenInfo>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    q: Q<TokenQuery>,
) -> Result<Json<Page<TokenInfo>>, ApiError> {
    caller.require(&[TokenKind::Admin])?;
    let q = q.get()?;
    let limit = parse_limit(q.limit.as_deref())?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            TokenId::parse(c).map_err(|_| ApiError::invalid("cursor is not one this server issued"))
        })
        .transpose()?;
    let page = s.store.list_tokens(after.as_ref(), limit).await?;
    let next_cursor = next_cursor(&page, |t| t.id.to_string());
    Ok(Json(Page {
        items: page.items.iter().map(TokenInfo::from).collect(),
        next_cursor,
    }))
}

/// Delete a token; it stops working at once.
#[utoipa::path(
    delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
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
    let not_found = || ApiError::not_found("token not found");
    let id = path
        .0
        .as_deref()
        .and_then(|p| TokenId::parse(p).ok())
        .ok_or_else(not_found)?;
    if !s.store.delete_token(&id).await? {
        return Err(not_found());
    }
    s.tokens.remove(std::slice::from_ref(&id));
    Ok(StatusCode::NO_CONTENT)
}
