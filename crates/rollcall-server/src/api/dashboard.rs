//! The dashboard at `GET /`: one HTML page, a script and a stylesheet,
//! embedded in the binary so that there is nothing to build or install.
//!
//! The page itself holds no data and needs no token. The script asks for a
//! read or admin token, keeps it in the tab's `sessionStorage` only and
//! sends it in the `Authorization` header of its API calls and of its
//! `fetch()` of `GET /v1/events/stream`, never in a URL. The assets are in
//! `crates/rollcall-server/assets/`.
//!
//! Every response carries a strict Content-Security-Policy: the page loads
//! nothing but its own assets and talks to nothing but this server, so even
//! an injected string could not send the token elsewhere.

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::extract::PathId;

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const DASHBOARD_JS: &str = include_str!("../../assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../assets/dashboard.css");
const FAVICON_SVG: &str = include_str!("../../assets/favicon.svg");

/// Only this server's own assets, no inline script or style, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The dashboard page.
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 200, description = "The dashboard (HTML); it asks for a read or admin token", content_type = "text/html")))]
pub async fn page() -> Response {
    embedded("text/html; charset=utf-8", INDEX_HTML)
}

/// The dashboard's script, stylesheet and icon.
pub async fn asset(name: PathId) -> Result<Response, ApiError> {
    let (content_type, body) = match name.0.as_deref() {
        Some("dashboard.js") => ("text/javascript; charset=utf-8", DASHBOARD_JS),
        Some("dashboard.css") => ("text/css; charset=utf-8", DASHBOARD_CSS),
        Some("favicon.svg") => ("image/svg+xml", FAVICON_SVG),
        _ => return Err(ApiError::not_found("no such asset")),
    };
    Ok(embedded(content_type, body))
}

fn embedded(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Small files; revalidating on every load keeps a new binary's
            // page and script from being mixed with an old one's.
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
            (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        ],
        body,
    )
        .into_response()
}
