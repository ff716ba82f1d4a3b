//! The OpenAPI document, generated from the handlers' annotations.

use rollcall_core::{ExitStatus, Labels, LivenessPolicy, TokenScope};
use serde_json::{json, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    dashboard, dto, error, events, health, incidents, machines, ops, stream, summary, tokens,
    workers,
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

/// The answer of any operation that takes a token once its client address
/// has failed authentication too often (`failed_auth_burst`).
fn throttled() -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    use utoipa::openapi::{header::HeaderBuilder, ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(
            "Too many failed authentications from this client address; retry after \
             `Retry-After` seconds with a valid token",
        )
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(SchemaType::Type(Type::Integer)))
                .description(Some("Seconds to wait"))
                .build(),
        )
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
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
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    op.responses
                        .responses
                        .entry("429".to_owned())
                        .or_insert_with(throttled);
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
        incidents::list, incidents::get, incidents::ack, incidents::rules,
        incidents::get_rule, incidents::put_rule, incidents::delete_rule,
        events::list, stream::stream,
        ops::cleanup_stale, ops::cleanup_all, ops::healthz, ops::readyz, ops::metrics,
        dashboard::page,
    ),
    components(schemas(error::ErrorBody, dto::Worker, dto::Machine, dto::Event)),
    modifiers(&Bearer, &Wire),
)]
struct ApiDoc;

/// The document served at `/openapi.json`, with the bounds of the running
/// server's `policy`.
pub fn document(policy: &LivenessPolicy) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    exact(&mut doc, policy);
    doc
}

/// Free text (hostnames, label keys and values, token names): no control or
/// bidirectional formatting characters (`rollcall_core::forbidden_char`).
const TEXT: &str = r"^[^\u0000-\u001F\u007F-\u009F\u061C\u200E\u200F\u2028-\u202E\u2066-\u2069]*$";

/// Says in the document what the handlers check that the annotations
/// cannot: the bounds a server's configuration sets, labels, the rules
/// between fields of one body, and optional parameters that are absent
/// rather than null.
fn exact(doc: &mut Value, policy: &LivenessPolicy) {
    // An optional query or header parameter is left out, never `null` (a
    // literal "null" is just a wrong value).
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                    continue;
                };
                for param in params {
                    if let Some(Value::Array(types)) = param.pointer_mut("/schema/type") {
                        types.retain(|t| t != "null");
                        if types.len() == 1 {
                            let only = types[0].clone();
                            param["schema"]["type"] = only;
                        }
                    }
                    // A repeated `label=key=value` filter: the key as each
                    // handler checks it, then any value.
                    if param["name"] == "label" && param["schema"]["type"] == "array" {
                        let pattern = if path.ends_with("/health") {
                            format!(
                                r"^[A-Za-z0-9._/-]{{1,{}}}=[\s\S]{{0,{}}}$",
                                Labels::MAX_KEY,
                                Labels::MAX_VALUE
                            )
                        } else {
                            r"^[^=]+=[\s\S]*$".to_owned()
                        };
                        param["schema"]["items"] = json!({"type": "string", "pattern": pattern});
                    }
                }
            }
        }
    }
    // A rule's name, as the handlers check it.
    if let Some(item) = doc
        .pointer_mut("/paths/~1v1~1alert-rules~1{name}")
        .and_then(Value::as_object_mut)
    {
        for op in item.values_mut() {
            if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                for p in params.iter_mut().filter(|p| p["name"] == "name") {
                    p["schema"]["pattern"] = json!(r"^[A-Za-z0-9._-]{1,64}$");
                }
            }
        }
    }
    // Bodies the handlers read as optional: none, or a JSON object.
    for path in ["/v1/workers/{id}/heartbeat", "/v1/workers/{id}/offline"] {
        if let Some(body) = doc
            .pointer_mut(&format!(
                "/paths/{}/post/requestBody",
                path.replace('/', "~1")
            ))
            .and_then(Value::as_object_mut)
        {
            body.insert("required".into(), Value::Bool(false));
        }
    }
    // Open API 3.1 has an event stream's schema describe one message.
    if let Some(stream) =
        doc.pointer_mut("/paths/~1v1~1events~1stream/get/responses/200/content/text~1event-stream")
    {
        stream["schema"] = json!({
            "type": "object",
            "description": "One message: `id` is the event's seq, `event` its type, `data` the Event as JSON.",
            "required": ["id", "event", "data"],
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "event": {"$ref": "#/components/schemas/EventType"},
                "data": {"type": "string", "contentMediaType": "application/json",
                         "contentSchema": {"$ref": "#/components/schemas/Event"}},
            },
        });
    }
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let labels = json!({
        "type": ["object", "null"],
        "maxProperties": Labels::MAX_PAIRS,
        "propertyNames": {"minLength": 1, "maxLength": Labels::MAX_KEY, "pattern": TEXT},
        "additionalProperties": {"type": "string", "maxLength": Labels::MAX_VALUE, "pattern": TEXT},
    });
    if let Some(machine) = schemas.get_mut("MachineSpec") {
        machine["properties"]["labels"] = labels.clone();
    }
    if let Some(register) = schemas.get_mut("RegisterRequest") {
        register["properties"]["labels"] = labels.clone();
        register_intervals(register, policy);
    }
    if let Some(batch) = schemas.get_mut("BatchRequest") {
        batch["properties"]["heartbeats"]["maxItems"] = json!(super::workers::MAX_BATCH_HEARTBEATS);
    }
    if let Some(token) = schemas.get_mut("CreateTokenRequest") {
        token["properties"]["kind"] = json!({
            "type": "string", "enum": ["enroll", "read"],
            "description": "`enroll` or `read`.",
        });
        // Only enroll tokens have a scope.
        token["anyOf"] = json!([
            {"properties": {"kind": {"const": "enroll"}}},
            {"properties": {"kind": {"const": "read"}, "scope": {"type": "null"}}},
        ]);
    }
    if let Some(scope) = schemas.get_mut("ScopeSpec") {
        scope["properties"]["machines"]["minItems"] = json!(1);
        scope["properties"]["machines"]["maxItems"] = json!(TokenScope::MAX_PATTERNS);
        scope["properties"]["machines"]["items"] = json!({
            "type": "string",
            "pattern": format!(r"^[A-Za-z0-9._:*-]{{1,{}}}$", TokenScope::MAX_PATTERN),
        });
        let description = scope["properties"]["labels"]["description"].clone();
        scope["properties"]["labels"] = labels.clone();
        scope["properties"]["labels"]["description"] = description;
        // A scope limits something: a list of patterns, or a label.
        scope["anyOf"] = json!([
            {"required": ["machines"], "properties": {"machines": {"type": "array"}}},
            {"required": ["labels"], "properties": {"labels": {"type": "object", "minProperties": 1}}},
        ]);
    }
    if let Some(offline) = schemas.get_mut("OfflineRequest") {
        offline_rules(offline);
    }
    if let Some(rule) = schemas.get_mut("RuleSpec") {
        rule_spec(rule, &labels);
    }
}

/// An alert rule's body: the bounds [`crate::alerts::rules::RuleSpec::check`]
/// applies, and which keys each kind takes. (That every channel is one of
/// the config file's cannot be said here: a 400 names it.)
fn rule_spec(rule: &mut Value, labels: &Value) {
    use crate::alerts::rules::MAX_RULE_MS;
    let name = r"^[A-Za-z0-9._-]{1,64}$";
    let ms =
        |min: u64| json!({"type": ["integer", "null"], "minimum": min, "maximum": MAX_RULE_MS});
    let props = &mut rule["properties"];
    props["kind"] = json!({"type": "string",
        "enum": ["worker_offline", "worker_crashes", "machine_offline", "mass_failure"]});
    props["severity"] = json!({"type": ["string", "null"], "pattern": name});
    props["channels"] = json!({"type": "array", "minItems": 1, "uniqueItems": true,
        "items": {"type": "string", "pattern": name}});
    let mut select = labels.clone();
    select["type"] = json!("object");
    props["select"] = select;
    props["for_ms"] = ms(0);
    props["within_ms"] = ms(1);
    props["window_ms"] = ms(1);
    props["crashes"] = json!({"type": ["integer", "null"], "minimum": 1, "maximum": u32::MAX});
    props["percent"] = json!({"type": ["integer", "null"], "minimum": 1, "maximum": 100});
    let none = json!({"type": "null"});
    rule["anyOf"] = json!([
        {"properties": {"kind": {"enum": ["worker_offline", "machine_offline"]},
            "crashes": none, "within_ms": none, "percent": none, "window_ms": none}},
        {"properties": {"kind": {"const": "worker_crashes"},
            "for_ms": none, "percent": none, "window_ms": none}},
        {"properties": {"kind": {"const": "mass_failure"},
            "for_ms": none, "crashes": none, "within_ms": none}},
    ]);
}

/// `heartbeat_interval_ms` and `stale_after_ms` of a registration, as the
/// server's `min_heartbeat_interval` and `max_stale_after` bound them. What
/// is allowed depends on which of the two are given (the other follows by
/// the ×3 / ⅓ rule), so the body is one of four shapes. With both given,
/// `stale_after_ms` must also be at least twice `heartbeat_interval_ms`,
/// which JSON Schema cannot say.
fn register_intervals(register: &mut Value, policy: &LivenessPolicy) {
    let min = policy.min_heartbeat_interval.as_millis() as u64;
    let max = policy.max_stale_after.as_millis() as u64;
    let absent = json!({"type": "null"});
    let hb = |lo: u64, hi: u64| json!({"type": "integer", "minimum": lo, "maximum": hi});
    register["properties"]["heartbeat_interval_ms"] = json!({
        "type": ["integer", "null"], "minimum": min, "maximum": max / 2,
        "description": format!(
            "At least this server's min_heartbeat_interval ({min} ms). Alone: at most a third \
             of max_stale_after ({} ms); stale_after_ms defaults to 3 × it.", max / 3),
    });
    register["properties"]["stale_after_ms"] = json!({
        "type": ["integer", "null"], "minimum": 2 * min, "maximum": max,
        "description": format!(
            "At most this server's max_stale_after ({max} ms), and at least twice \
             heartbeat_interval_ms. Alone: at least {} ms; heartbeat_interval_ms defaults \
             to a third of it.", 3 * min),
    });
    register["anyOf"] = json!([
        {"properties": {"heartbeat_interval_ms": absent, "stale_after_ms": absent}},
        {"required": ["heartbeat_interval_ms"],
         "properties": {"heartbeat_interval_ms": hb(min, max / 3), "stale_after_ms": absent}},
        {"required": ["stale_after_ms"],
         "properties": {"heartbeat_interval_ms": absent, "stale_after_ms": hb(3 * min, max)}},
        {"required": ["heartbeat_interval_ms", "stale_after_ms"],
         "properties": {"heartbeat_interval_ms": hb(min, max / 2), "stale_after_ms": hb(2 * min, max)}},
    ]);
}

/// An offline's `exit_code` or `signal` (one at most) goes only with
/// `reason: "exited"`.
fn offline_rules(offline: &mut Value) {
    let absent = json!({"type": "null"});
    offline["properties"]["reason"] = json!({
        "type": ["string", "null"], "enum": ["shutdown", "exited", null],
        "description": "`shutdown` (default) or `exited`.",
    });
    let exited = json!({"const": "exited"});
    let code = json!({"type": "integer", "minimum": 0, "maximum": 255});
    let signal = json!({"type": "integer", "minimum": 1, "maximum": ExitStatus::MAX_SIGNAL});
    offline["anyOf"] = json!([
        {"properties": {"reason": {"enum": ["shutdown", null]}, "exit_code": absent, "signal": absent}},
        {"required": ["reason"], "properties": {"reason": exited, "exit_code": absent, "signal": absent}},
        {"required": ["reason", "exit_code"], "properties": {"reason": exited, "exit_code": code, "signal": absent}},
        {"required": ["reason", "signal"], "properties": {"reason": exited, "exit_code": absent, "signal": signal}},
    ]);
}
