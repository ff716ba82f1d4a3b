//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{dashboard, dto, error, events, machines, ops, stream, tokens, workers};

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rollcall",
        description = "rollcall knows which workers of a fleet are really alive.",
    ),
    paths(
        tokens::create, tokens::list, tokens::delete,
        workers::register, workers::heartbeat, workers::batch_heartbeats, workers::drain,
        workers::offline, workers::delete, workers::list, workers::get,
        machines::list, machines::get,
        events::list, stream::stream,
        ops::cleanup_stale, ops::cleanup_all, ops::healthz, ops::readyz, ops::metrics,
        dashboard::page,
    ),
    components(schemas(error::ErrorBody, dto::Worker, dto::Machine, dto::Event)),
    modifiers(&Bearer),
)]
struct ApiDoc;

/// The document served at `/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
