//! The wire types of the HTTP contract, with their OpenAPI schemas.

use std::collections::BTreeMap;

use rollcall_core::{
    policy, EventReason, EventType, MachineStatus, OfflineReason, Status, Timestamp, TokenKind,
};
use rollcall_store::{EventRecord, MachineRecord, TokenRecord, WorkerRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::engine::Engine;

fn ms(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

/// A worker.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Worker {
    #[schema(example = "wkr_01JDQ5ZK3M8Y2W0N4T6R9B7C5A")]
    pub id: String,
    #[schema(example = "render-1")]
    pub name: String,
    #[schema(example = "host-a")]
    pub machine_id: String,
    pub status: Status,
    pub offline_reason: Option<OfflineReason>,
    /// +1 on every offline → online transition and every registration.
    pub session: u64,
    pub labels: BTreeMap<String, String>,
    pub heartbeat_interval_ms: u64,
    pub stale_after_ms: u64,
    #[schema(value_type = String, format = DateTime)]
    pub registered_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_heartbeat_at: Option<Timestamp>,
    /// When the worker goes stale unless it beats; null while offline.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deadline_at: Option<Timestamp>,
    #[schema(value_type = String, format = DateTime)]
    pub status_changed_at: Timestamp,
}

impl Worker {
    /// A worker as committed, with a known deadline.
    pub fn new(r: &WorkerRecord, deadline: Option<Timestamp>) -> Self {
        Worker {
            id: r.id.to_string(),
            name: r.name.to_string(),
            machine_id: r.machine_id.to_string(),
            status: r.status,
            offline_reason: r.offline_reason,
            session: r.session,
            labels: r.labels.as_map().clone(),
            heartbeat_interval_ms: ms(r.heartbeat_interval),
            stale_after_ms: ms(r.stale_after),
            registered_at: r.registered_at,
            last_heartbeat_at: r.last_heartbeat_at,
            deadline_at: if r.status.is_live() { deadline } else { None },
            status_changed_at: r.status_changed_at,
        }
    }

    /// A worker read from the store, with the engine's fresher heartbeat
    /// time and deadline when it holds the same session.
    pub fn from_store(r: &WorkerRecord, engine: &Engine) -> Self {
        if let Some(live) = engine.get(&r.id) {
            if live.record.session == r.session && live.record.status == r.status {
                let mut merged = r.clone();
                merged.last_heartbeat_at =
                    merged.last_heartbeat_at.max(live.record.last_heartbeat_at);
                return Worker::new(&merged, Some(live.deadline));
            }
        }
        let d = policy::deadline(r.last_heartbeat_at, Some(r.registered_at), r.stale_after);
        Worker::new(r, Some(d))
    }
}

/// A machine.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Machine {
    #[schema(example = "host-a")]
    pub id: String,
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub status: MachineStatus,
    /// Online or draining workers.
    pub workers_online: u64,
    pub workers_total: u64,
    #[schema(value_type = String, format = DateTime)]
    pub first_seen_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub last_seen_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub status_changed_at: Timestamp,
}

impl From<&MachineRecord> for Machine {
    fn from(m: &MachineRecord) -> Self {
        Machine {
            id: m.id.to_string(),
            hostname: m.hostname.clone(),
            labels: m.labels.as_map().clone(),
            status: m.status,
            workers_online: m.workers_online,
            workers_total: m.workers_total,
            first_seen_at: m.first_seen_at,
            last_seen_at: m.last_seen_at,
            status_changed_at: m.status_changed_at,
        }
    }
}

/// A machine with its workers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MachineDetail {
    #[serde(flatten)]
    pub machine: Machine,
    pub workers: Vec<Worker>,
}

/// An entry of the event log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub seq: i64,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The worker, for `worker.*` events and the incidents of one worker.
    pub worker_id: Option<String>,
    /// The machine; for an incident about the whole fleet (`mass_failure`),
    /// `*`, which no machine can be named.
    pub machine_id: String,
    pub reason: Option<EventReason>,
    pub session: Option<u64>,
    /// `incident.*` events only: the incident (`GET /v1/incidents/{id}`).
    pub incident_id: Option<String>,
    /// Stale transitions only: milliseconds from the deadline to marking.
    pub detection_lag_ms: Option<i64>,
    /// `exited` offlines an agent reported a status for: the exit code.
    pub exit_code: Option<u8>,
    /// `exited` offlines ended by a signal: its number.
    pub signal: Option<u8>,
}

impl From<&EventRecord> for Event {
    fn from(e: &EventRecord) -> Self {
        Event {
            seq: e.seq,
            at: e.at,
            kind: e.kind,
            worker_id: e.worker_id.as_ref().map(|w| w.to_string()),
            machine_id: e.machine_id.to_string(),
            reason: e.reason,
            session: e.session,
            incident_id: e.incident_id.as_ref().map(|i| i.to_string()),
            detection_lag_ms: e.detection_lag_ms,
            exit_code: e.exit.and_then(|x| x.code()),
            signal: e.exit.and_then(|x| x.signal()),
        }
    }
}

/// A page of a list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back as `cursor` (events: as `after`) for the next page; null on
    /// the last page.
    pub next_cursor: Option<String>,
}

/// The machine part of a registration.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct MachineSpec {
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    pub id: String,
    /// No control or bidirectional formatting characters.
    #[schema(
        min_length = 1,
        max_length = 253,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F\u061C\u200E\u200F\u2028-\u202E\u2066-\u2069]*$"
    )]
    pub hostname: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
}

/// `POST /v1/workers`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct RegisterRequest {
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    pub name: String,
    pub machine: MachineSpec,
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "whole::u64")]
    pub heartbeat_interval_ms: Option<u64>,
    #[serde(default, deserialize_with = "whole::u64")]
    pub stale_after_ms: Option<u64>,
}

/// A registered worker and its token (shown once).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    pub worker: Worker,
    #[schema(example = "rc_worker_…")]
    pub token: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatResponse {
    pub status: Status,
    pub session: u64,
    /// True when this heartbeat brought an offline worker back.
    pub resumed: bool,
    #[schema(value_type = String, format = DateTime)]
    pub deadline_at: Timestamp,
    pub heartbeat_interval_ms: u64,
}

/// One entry of a batch heartbeat.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct BatchEntry {
    pub worker_id: String,
    pub token: String,
}

/// `POST /v1/heartbeats`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct BatchRequest {
    pub heartbeats: Vec<BatchEntry>,
}

/// One result of a batch heartbeat, in request order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    pub worker_id: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deadline_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<BatchError>,
}

/// Why one entry of a batch failed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchError {
    pub code: String,
    pub message: String,
}

/// The answer to a batch heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// `POST /v1/workers/{id}/offline`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct OfflineRequest {
    /// `shutdown` (default) or `exited`.
    #[schema(pattern = r"^(shutdown|exited)$")]
    pub reason: Option<String>,
    /// With `exited`: the supervised process's exit code. 0 makes the offline
    /// graceful; any other code makes it a crash. Exclusive with `signal`.
    #[schema(minimum = 0, maximum = 255)]
    #[serde(default, deserialize_with = "whole::i64")]
    pub exit_code: Option<i64>,
    /// With `exited`: the signal that ended the supervised process (a crash).
    /// Exclusive with `exit_code`.
    #[schema(minimum = 1, maximum = 64)]
    #[serde(default, deserialize_with = "whole::i64")]
    pub signal: Option<i64>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CreateTokenRequest {
    /// `enroll` or `read`.
    #[schema(pattern = r"^(enroll|read)$")]
    pub kind: String,
    /// No control or bidirectional formatting characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F\u061C\u200E\u200F\u2028-\u202E\u2066-\u2069]*$"
    )]
    pub name: String,
    /// At most 100 years.
    #[schema(minimum = 1, maximum = 3_153_600_000_000_u64)]
    #[serde(default, deserialize_with = "whole::u64")]
    pub expires_in_ms: Option<u64>,
    /// Enroll tokens only: the workers the token may register. Absent or
    /// null: any worker.
    pub scope: Option<ScopeSpec>,
}

/// The scope asked for in `POST /v1/tokens`: which workers an enroll token
/// may register. At least one of the two limits is given.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ScopeSpec {
    /// Machine-id patterns (1 to 32); the worker's `machine.id` must match
    /// one. `*` stands for any run of characters; everything else for
    /// itself; a pattern matches the whole id. Absent or null: any machine.
    pub machines: Option<Vec<String>>,
    /// Labels the worker's `labels` must all carry, with exactly these
    /// values. Absent, null or `{}`: none required.
    pub labels: Option<BTreeMap<String, String>>,
}

/// An enroll token's scope: which workers it may register.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenScope {
    /// Machine-id patterns, one of which the worker's machine id must match
    /// (`*`: any run of characters); null: any machine.
    pub machines: Option<Vec<String>>,
    /// Labels the worker must carry with exactly these values; `{}`: none.
    pub labels: BTreeMap<String, String>,
}

impl From<&rollcall_core::TokenScope> for TokenScope {
    fn from(s: &rollcall_core::TokenScope) -> Self {
        TokenScope {
            machines: s.machines().map(<[String]>::to_vec),
            labels: s.labels().as_map().clone(),
        }
    }
}

/// A created token, with its secret (shown once).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub id: String,
    pub kind: TokenKind,
    pub name: String,
    pub token: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// Enroll tokens: the workers it may register; null: any worker (and
    /// always null for read tokens).
    pub scope: Option<TokenScope>,
}

/// A token as listed: never the secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub kind: TokenKind,
    pub name: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
    /// Enroll tokens: the workers it may register; null: any worker (and
    /// always null for other kinds).
    pub scope: Option<TokenScope>,
}

impl From<&TokenRecord> for TokenInfo {
    fn from(t: &TokenRecord) -> Self {
        TokenInfo {
            id: t.id.to_string(),
            kind: t.kind,
            name: t.name.clone(),
            created_at: t.created_at,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            scope: t.scope.as_ref().map(TokenScope::from),
        }
    }
}

pub use crate::cleanup::{CleanupReport, StaleReport};

/// Integer fields of request bodies. JSON has one number type, and JSON
/// Schema's `integer` is any number without a fraction: `1000.0` is the
/// integer 1000, as `1000` is.
pub(crate) mod whole {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        U(u64),
        I(i64),
        F(f64),
    }

    /// 2^64, the first whole number a `u64` cannot hold.
    const U64_END: f64 = 18_446_744_073_709_551_616.0;
    /// 2^63.
    const I64_END: f64 = 9_223_372_036_854_775_808.0;

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<Number>::deserialize(d)? {
            None => Ok(None),
            Some(Number::U(n)) => Ok(Some(n)),
            Some(Number::F(f)) if f.fract() == 0.0 && (0.0..U64_END).contains(&f) => {
                Ok(Some(f as u64))
            }
            Some(_) => Err(serde::de::Error::custom(
                "expected a whole number from 0 to 18446744073709551615",
            )),
        }
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        u64(d)?
            .map(|n| {
                u32::try_from(n).map_err(|_| {
                    serde::de::Error::custom("expected a whole number from 0 to 4294967295")
                })
            })
            .transpose()
    }

    pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        match Option::<Number>::deserialize(d)? {
            None => Ok(None),
            Some(Number::U(n)) => i64::try_from(n)
                .map(Some)
                .map_err(|_| serde::de::Error::custom("number out of range")),
            Some(Number::I(n)) => Ok(Some(n)),
            Some(Number::F(f)) if f.fract() == 0.0 && (-I64_END..I64_END).contains(&f) => {
                Ok(Some(f as i64))
            }
            Some(_) => Err(serde::de::Error::custom("expected a whole number")),
        }
    }

    #[cfg(test)]
    mod tests {
        #[derive(Debug, serde::Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "super::u64")]
            u: Option<u64>,
            #[serde(default, deserialize_with = "super::i64")]
            i: Option<i64>,
        }

        fn parse(s: &str) -> Result<(Option<u64>, Option<i64>), serde_json::Error> {
            serde_json::from_str::<T>(s).map(|t| (t.u, t.i))
        }

        #[test]
        fn whole_numbers_in_any_spelling() {
            assert_eq!(parse(r#"{}"#).unwrap(), (None, None));
            assert_eq!(parse(r#"{"u": null, "i": null}"#).unwrap(), (None, None));
            assert_eq!(
                parse(r#"{"u": 1000, "i": -3}"#).unwrap(),
                (Some(1000), Some(-3))
            );
            assert_eq!(
                parse(r#"{"u": 1000.0, "i": 3e2}"#).unwrap(),
                (Some(1000), Some(300))
            );
            assert_eq!(
                parse(r#"{"u": 18446744073709551615}"#).unwrap(),
                (Some(u64::MAX), None)
            );
        }

        #[test]
        fn fractions_negatives_and_out_of_range_are_refused() {
            for body in [
                r#"{"u": 1.5}"#,
                r#"{"u": -1}"#,
                r#"{"u": -1.0}"#,
                r#"{"u": 1e20}"#,
                r#"{"u": "5"}"#,
                r#"{"u": true}"#,
                r#"{"i": 0.25}"#,
                r#"{"i": 9223372036854775808}"#,
                r#"{"i": 1e19}"#,
            ] {
                assert!(parse(body).is_err(), "{body} was accepted");
            }
        }
    }
}
