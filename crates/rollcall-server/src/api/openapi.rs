//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    dashboard, dto, error, events, health, machines, ops, stream, summary, tokens, workers,
};

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

/// Makes the document say what the wire carries: enums by their wire names
/// (`online`, `worker.registered`; the derive, through the `string_enum!`
/// macro, publishes the Rust variant names), and operation ids unique across tags (`workers_list`,
/// `machines_list`).
struct Wire;

fn wire_enum(
    description: &str,
    values: &[&'static str],
) -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .description(Some(description))
        .enum_values(Some(values.iter().copied()))
        .into()
}

impl Modify for Wire {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use rollcall_core::{
            CrashKind, EventReason, EventType, MachineStatus, OfflineReason, Status,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        let enums: [(&str, &str, Vec<&'static str>); 6] = [
            (
                "Status",
                "A worker's status.",
                Status::ALL.iter().map(|s| s.as_str()).collect(),
            ),
            (
                "MachineStatus",
                "A machine's status, derived from its workers' statuses.",
                MachineStatus::ALL.iter().map(|s| s.as_str()).collect(),
            ),
            (
                "EventType",
                "What an event records.",
                EventType::ALL.iter().map(|s| s.as_str()).collect(),
            ),
            (
                "EventReason",
                "Why a transition happened, as recorded on its event.",
                EventReason::ALL.iter().map(|s| s.as_str()).collect(),
            ),
            (
                "OfflineReason",
                "Why a worker is offline.",
                OfflineReason::ALL.iter().map(|s| s.as_str()).collect(),
            ),
            (
                "CrashKind",
                "The kind of a crash, by the offline reason that recorded it.",
                CrashKind::ALL.iter().map(|s| s.as_str()).collect(),
            ),
        ];
        for (name, description, values) in enums {
            components
                .schemas
                .insert(name.to_owned(), wire_enum(description, &values));
        }
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                if let (Some(id), Some(tag)) =
                    (&op.operation_id, op.tags.as_ref().and_then(|t| t.first()))
                {
                    op.operation_id = Some(format!("{tag}_{id}"));
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rollcall",
        description = "rollcall knows which workers of a fleet are really alive.\n\nEvery error \
            answers `{\"error\": {\"code\", \"message\"}}`. A method a path does not have is \
            answered 405 (`invalid_request`); every request body is a JSON object.",
    ),
    paths(
        tokens::create, tokens::list, tokens::delete,
        workers::register, workers::heartbeat, workers::batch_heartbeats, workers::drain,
        workers::offline, workers::delete, workers::list, workers::get,
        machines::list, machines::get, summary::get,
        health::fleet, health::machine, health::worker,
        events::list, stream::stream,
        ops::cleanup_stale, ops::cleanup_all, ops::healthz, ops::readyz, ops::metrics,
        dashboard::page,
    ),
    components(schemas(error::ErrorBody, dto::Worker, dto::Machine, dto::Event)),
    modifiers(&Bearer, &Wire),
)]
struct ApiDoc;

/// The document served at `/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
