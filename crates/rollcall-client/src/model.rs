//! The JSON objects of the HTTP contract, one Rust type each.
//!
//! Field names and shapes follow the HTTP contract (`docs/API.md`) exactly;
//! the wire names of statuses, reasons, event types and token kinds come
//! from `rollcall-core`, so they live in one place for the server and the
//! client.
//!
//! Conventions:
//!
//! - Timestamps are [`rollcall_core::Timestamp`] (milliseconds since the
//!   epoch, rendered as RFC 3339 UTC with millisecond precision — exactly the
//!   wire format). Convert with `Timestamp::as_millis` if you need a
//!   `time::OffsetDateTime` or a `SystemTime`.
//! - Durations keep the contract's `*_ms` integer fields, so a model
//!   serialises back to the same JSON; each has a `Duration` accessor.
//! - Labels are plain `BTreeMap<String, String>`: the server enforces the
//!   limits (32 pairs, keys ≤ 64, values ≤ 256 chars), the client does not
//!   duplicate them.
//! - Unknown fields are ignored, so a newer server's additions do not break
//!   this client. Unknown *enum values* (a new status or event type) do fail
//!   decoding: the contract lists them exhaustively.

use std::collections::BTreeMap;
use std::time::Duration;

use rollcall_core::{
    CrashKind, EventReason, EventType, ExitStatus, IncidentId, MachineId, MachineStatus,
    OfflineClass, OfflineReason, Status, Timestamp, TokenId, TokenKind, TokenScope, WorkerId,
    WorkerName,
};
use serde::{Deserialize, Serialize};

use crate::error::ErrorBody;
use crate::secret::TokenSecret;

/// Free-form labels on a worker or a machine.
pub type Labels = BTreeMap<String, String>;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Whole milliseconds of a duration, saturating.
pub(crate) fn to_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ----------------------------------------------------------------------------
// Pagination

/// One page of a list: `{"items": [...], "next_cursor": "..." | null}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items of this page, in the server's order.
    pub items: Vec<T>,
    /// Where the next page starts, `None` on the last page. Opaque: pass it
    /// back as the query's `cursor` (for events: it is a seq, pass it back
    /// as `after`; see [`Page::next_after`]).
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Whether this is the last page.
    pub fn is_last(&self) -> bool {
        self.next_cursor.is_none()
    }
}

impl Page<Event> {
    /// For event pages: the `after` value that fetches the next page, i.e.
    /// the `next_cursor` read as a seq. `None` on the last page (or if the
    /// server sent a cursor that is not a number).
    pub fn next_after(&self) -> Option<u64> {
        self.next_cursor.as_deref().and_then(|c| c.parse().ok())
    }
}

// ----------------------------------------------------------------------------
// Tokens

/// A token as listed by `GET /v1/tokens` (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// `tok_…`.
    pub id: TokenId,
    /// What the token may do.
    pub kind: TokenKind,
    /// The name given at creation, for people.
    pub name: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it stops working by itself; `None` = never.
    pub expires_at: Option<Timestamp>,
    /// When it was last presented; `None` = never used.
    pub last_used_at: Option<Timestamp>,
    /// Enroll tokens: the workers it may register; `None` = any worker.
    #[serde(default)]
    pub scope: Option<TokenScope>,
}

/// The body of `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// `Enroll` or `Read`; the server refuses other kinds with 400.
    pub kind: TokenKind,
    /// A name for people (e.g. the fleet or team it is for).
    pub name: String,
    /// Lifetime in milliseconds; `None` = never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
    /// Enroll tokens only: the workers it may register (machine-id patterns,
    /// required labels); `None` = any worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<TokenScope>,
}

impl NewToken {
    /// A token of `kind` called `name` that never expires.
    pub fn new(kind: TokenKind, name: impl Into<String>) -> Self {
        NewToken {
            kind,
            name: name.into(),
            expires_in_ms: None,
            scope: None,
        }
    }

    /// Sets the lifetime.
    pub fn expires_in(mut self, d: Duration) -> Self {
        self.expires_in_ms = Some(to_ms(d));
        self
    }

    /// Limits an enroll token to the workers inside `scope` (build it with
    /// [`TokenScope::parse_input`]); the server refuses a scope on a read
    /// token with 400.
    pub fn scope(mut self, scope: TokenScope) -> Self {
        self.scope = Some(scope);
        self
    }
}

/// The answer of `POST /v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    /// `tok_…`, for listing and deleting.
    pub id: TokenId,
    /// What the token may do.
    pub kind: TokenKind,
    /// The name given at creation.
    pub name: String,
    /// The secret (`rc_enroll_…` / `rc_read_…`); redacted in `Debug`.
    pub token: TokenSecret,
    /// When it stops working; `None` = never.
    pub expires_at: Option<Timestamp>,
    /// Enroll tokens: the workers it may register; `None` = any worker.
    #[serde(default)]
    pub scope: Option<TokenScope>,
}

// ----------------------------------------------------------------------------
// Workers

/// A worker: one process that registers and heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    /// `wkr_…`, kept across re-registrations of the same name on the same
    /// machine.
    pub id: WorkerId,
    /// Unique per machine.
    pub name: WorkerName,
    /// The machine it runs on.
    pub machine_id: MachineId,
    /// Online, draining or offline.
    pub status: Status,
    /// Why it is offline; `None` unless `status` is offline.
    pub offline_reason: Option<OfflineReason>,
    /// +1 on every registration and every return from offline; fence work
    /// on (id, session).
    pub session: u64,
    /// The worker's labels.
    #[serde(default)]
    pub labels: Labels,
    /// How often it is expected to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// How long without a heartbeat before it is marked stale.
    pub stale_after_ms: u64,
    /// When the worker was (last) registered.
    pub registered_at: Timestamp,
    /// The last acknowledged heartbeat (written behind by the server, so up
    /// to its flush interval old); `None` if none yet.
    pub last_heartbeat_at: Option<Timestamp>,
    /// When it becomes stale without a heartbeat; `None` while offline.
    pub deadline_at: Option<Timestamp>,
    /// When `status` last changed.
    pub status_changed_at: Timestamp,
}

impl Worker {
    /// `heartbeat_interval_ms` as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        ms(self.heartbeat_interval_ms)
    }

    /// `stale_after_ms` as a duration.
    pub fn stale_after(&self) -> Duration {
        ms(self.stale_after_ms)
    }
}

/// The `machine` part of a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSpec {
    /// The machine's id (by default the host's name).
    pub id: MachineId,
    /// The host's name for display; not sent when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The machine's labels; not sent when `None`, so that a worker that
    /// has no opinion does not overwrite labels another worker gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
}

impl MachineSpec {
    /// A machine known only by its id.
    pub fn new(id: MachineId) -> Self {
        MachineSpec {
            id,
            hostname: None,
            labels: None,
        }
    }
}

/// The body of `POST /v1/workers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The worker's name, unique per machine.
    pub name: WorkerName,
    /// The machine it runs on.
    pub machine: MachineSpec,
    /// The worker's labels (always sent: a registration states them all).
    #[serde(default)]
    pub labels: Labels,
    /// Ask for this heartbeat interval instead of the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Ask for this staleness threshold instead of the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after_ms: Option<u64>,
}

impl RegisterRequest {
    /// A registration of `name` on `machine` with the server's intervals and
    /// no labels.
    pub fn new(name: WorkerName, machine: MachineId) -> Self {
        RegisterRequest {
            name,
            machine: MachineSpec::new(machine),
            labels: Labels::new(),
            heartbeat_interval_ms: None,
            stale_after_ms: None,
        }
    }
}

/// The answer of `POST /v1/workers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The worker, online, with its new session.
    pub worker: Worker,
    /// The worker's own token (`rc_worker_…`) for heartbeat, drain and
    /// offline; the previous session's token no longer works.
    pub token: TokenSecret,
    /// `true` for 201 (a new worker), `false` for 200 (the same name on the
    /// same machine registered again). Not part of the JSON body.
    #[serde(skip)]
    pub created: bool,
}

/// The answer of `POST /v1/workers/{id}/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// Online or draining.
    pub status: Status,
    /// The current session.
    pub session: u64,
    /// `true` when the worker was offline and this heartbeat brought it
    /// back (a new session).
    pub resumed: bool,
    /// The new deadline.
    pub deadline_at: Timestamp,
    /// The interval to heartbeat at.
    pub heartbeat_interval_ms: u64,
}

impl HeartbeatAck {
    /// `heartbeat_interval_ms` as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        ms(self.heartbeat_interval_ms)
    }
}

/// One entry of `POST /v1/heartbeats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHeartbeat {
    /// The worker to heartbeat for.
    pub worker_id: WorkerId,
    /// That worker's own token.
    pub token: TokenSecret,
}

/// What a successful batch entry reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHeartbeatOk {
    /// Online or draining.
    pub status: Status,
    /// The current session.
    pub session: u64,
    /// `true` when this heartbeat brought the worker back from offline.
    pub resumed: bool,
}

/// The result of one entry of a batch heartbeat, in request order. One bad
/// entry does not fail the others; its error is what the single heartbeat
/// would have answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawBatchResult", into = "RawBatchResult")]
pub struct BatchHeartbeatResult {
    /// The entry's worker.
    pub worker_id: WorkerId,
    /// The heartbeat's outcome.
    pub outcome: Result<BatchHeartbeatOk, ErrorBody>,
}

/// The wire shape of [`BatchHeartbeatResult`]: a flat object told apart by
/// `ok`.
#[derive(Serialize, Deserialize)]
struct RawBatchResult {
    worker_id: WorkerId,
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resumed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
}

impl TryFrom<RawBatchResult> for BatchHeartbeatResult {
    type Error = String;
    fn try_from(r: RawBatchResult) -> Result<Self, String> {
        let outcome = if r.ok {
            match (r.status, r.session) {
                (Some(status), Some(session)) => Ok(BatchHeartbeatOk {
                    status,
                    session,
                    resumed: r.resumed.unwrap_or(false),
                }),
                _ => return Err("an ok batch result needs status and session".into()),
            }
        } else {
            match r.error {
                Some(e) => Err(e),
                None => return Err("a failed batch result needs an error".into()),
            }
        };
        Ok(BatchHeartbeatResult {
            worker_id: r.worker_id,
            outcome,
        })
    }
}

impl From<BatchHeartbeatResult> for RawBatchResult {
    fn from(r: BatchHeartbeatResult) -> Self {
        match r.outcome {
            Ok(ok) => RawBatchResult {
                worker_id: r.worker_id,
                ok: true,
                status: Some(ok.status),
                session: Some(ok.session),
                resumed: Some(ok.resumed),
                error: None,
            },
            Err(e) => RawBatchResult {
                worker_id: r.worker_id,
                ok: false,
                status: None,
                session: None,
                resumed: None,
                error: Some(e),
            },
        }
    }
}

/// The wire body of `POST /v1/heartbeats`.
#[derive(Serialize)]
pub(crate) struct BatchRequest<'a> {
    pub heartbeats: &'a [BatchHeartbeat],
}

/// The wire answer of `POST /v1/heartbeats`.
#[derive(Deserialize)]
pub(crate) struct BatchResponse {
    pub results: Vec<BatchHeartbeatResult>,
}

/// The body of `POST /v1/workers/{id}/offline`.
#[derive(Serialize)]
pub(crate) struct OfflineRequest {
    pub reason: OfflineReason,
    /// With `exited`: the process's exit code (exclusive with `signal`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    /// With `exited`: the signal that ended the process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<u8>,
}

impl OfflineRequest {
    /// An offline with `reason` and, for `exited`, how the process ended.
    pub(crate) fn new(reason: OfflineReason, exit: Option<ExitStatus>) -> Self {
        OfflineRequest {
            reason,
            exit_code: exit.and_then(ExitStatus::code),
            signal: exit.and_then(ExitStatus::signal),
        }
    }
}

// ----------------------------------------------------------------------------
// Machines

/// A machine; its status is derived from its workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// The machine's id.
    pub id: MachineId,
    /// The host's name for display, if a worker gave one.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The machine's labels.
    #[serde(default)]
    pub labels: Labels,
    /// Online iff one of its workers is online or draining.
    pub status: MachineStatus,
    /// Workers online or draining.
    pub workers_online: u64,
    /// All its workers, offline ones included.
    pub workers_total: u64,
    /// When the machine was first seen.
    pub first_seen_at: Timestamp,
    /// When one of its workers was last seen.
    pub last_seen_at: Timestamp,
    /// When `status` last changed.
    pub status_changed_at: Timestamp,
}

/// The answer of `GET /v1/machines/{id}`: the machine plus its workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineWithWorkers {
    /// The machine.
    #[serde(flatten)]
    pub machine: Machine,
    /// Its workers.
    pub workers: Vec<Worker>,
}

// ----------------------------------------------------------------------------
// Events

/// One entry of the event log: a status transition of a worker or a
/// machine, or an incident opening or resolving (`incident.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Strictly increasing position in the event log.
    pub seq: u64,
    /// When the transition was committed.
    pub at: Timestamp,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The worker, for `worker.*` events and a worker's incidents.
    pub worker_id: Option<WorkerId>,
    /// The machine concerned; [`MachineId::fleet`] (`*`) for an incident
    /// about the whole fleet.
    #[serde(deserialize_with = "MachineId::deserialize_in_event")]
    pub machine_id: MachineId,
    /// Why it happened, where there is a reason.
    pub reason: Option<EventReason>,
    /// The worker's session, for `worker.*` events.
    pub session: Option<u64>,
    /// For `stale` transitions: the time from the deadline to the marking.
    #[serde(default)]
    pub detection_lag_ms: Option<u64>,
    /// For `exited` offlines whose process exited: its exit code (0–255).
    /// `None` otherwise, and from servers that do not record it.
    #[serde(default)]
    pub exit_code: Option<u8>,
    /// For `exited` offlines whose process a signal ended: the signal
    /// (1–64). `None` otherwise.
    #[serde(default)]
    pub signal: Option<u8>,
    /// For `incident.*` events: the incident ([`crate::Client::get_incident`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_id: Option<IncidentId>,
}

impl Event {
    /// `detection_lag_ms` as a duration.
    pub fn detection_lag(&self) -> Option<Duration> {
        self.detection_lag_ms.map(ms)
    }

    /// How the supervised process ended, for an `exited` offline whose
    /// agent reported it: `exit_code` or `signal` as one value.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match (self.exit_code, self.signal) {
            (Some(code), _) => Some(ExitStatus::Code(code)),
            (None, Some(sig)) => Some(ExitStatus::Signal(sig)),
            (None, None) => None,
        }
    }

    /// The offline's reason, for a `worker.offline` event; `None` for
    /// every other event.
    pub fn offline_reason(&self) -> Option<OfflineReason> {
        if self.event_type != EventType::WorkerOffline {
            return None;
        }
        match self.reason? {
            EventReason::Shutdown => Some(OfflineReason::Shutdown),
            EventReason::Stale => Some(OfflineReason::Stale),
            EventReason::Exited => Some(OfflineReason::Exited),
            EventReason::Replaced => Some(OfflineReason::Replaced),
            EventReason::Revoked => Some(OfflineReason::Revoked),
            EventReason::Registered | EventReason::Heartbeat => None,
        }
    }

    /// What kind of end a `worker.offline` event records: graceful
    /// (`shutdown`, `exited` with code 0), a crash (`stale`, `replaced`,
    /// `exited` otherwise) or administrative (`revoked`). `None` for every
    /// other event.
    pub fn offline_class(&self) -> Option<OfflineClass> {
        self.classify().map(|(class, _)| class)
    }

    /// For a crash, its kind (`stale`, `replaced` or `exited`); `None` for
    /// any other event, graceful and administrative offlines included.
    pub fn crash_kind(&self) -> Option<CrashKind> {
        self.classify().and_then(|(_, kind)| kind)
    }

    fn classify(&self) -> Option<(OfflineClass, Option<CrashKind>)> {
        Some(self.offline_reason()?.classify(self.exit_status()))
    }
}

// ----------------------------------------------------------------------------
// Cleanup

/// The answer of `POST /v1/cleanup/stale` (and the `stale` part of a full
/// cleanup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleCleanup {
    /// Whether the run completed.
    pub success: bool,
    /// Records deleted by the run.
    pub deleted_count: u64,
    /// Workers marked offline (stale) by the run.
    pub marked_offline_count: u64,
    /// Machines whose workers changed.
    pub affected_machine_ids: Vec<MachineId>,
}

/// The answer of `POST /v1/cleanup/all`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullCleanup {
    /// Whether the run completed.
    pub success: bool,
    /// The stale sweep's result.
    pub stale: StaleCleanup,
    /// Long-offline workers forgotten.
    pub forgotten_workers: u64,
    /// Empty machines forgotten.
    pub forgotten_machines: u64,
    /// Old events pruned.
    pub pruned_events: u64,
    /// Expired tokens removed.
    pub expired_tokens: u64,
    /// How long the run took.
    pub duration_ms: u64,
}

impl FullCleanup {
    /// `duration_ms` as a duration.
    pub fn duration(&self) -> Duration {
        ms(self.duration_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const WKR: &str = "wkr_01JDQ3Z6X8A1B2C3D4E5F6G7H8";
    const WKR2: &str = "wkr_01JDQ3Z6X8A1B2C3D4E5F6G7H9";

    fn worker_json() -> Value {
        json!({
            "id": WKR, "name": "render-1", "machine_id": "host-a",
            "status": "online",
            "offline_reason": null,
            "session": 3,
            "labels": {"queue": "gpu"},
            "heartbeat_interval_ms": 30000, "stale_after_ms": 90000,
            "registered_at": "2026-11-28T07:18:40.123Z", "last_heartbeat_at": null,
            "deadline_at": "2026-11-28T07:20:10.123Z",
            "status_changed_at": "2026-11-28T07:18:40.123Z"
        })
    }

    /// Decodes `v` as `T` and checks that it encodes back to the same JSON.
    fn round_trip<T: serde::de::DeserializeOwned + Serialize>(v: Value) -> T {
        let t: T = serde_json::from_value(v.clone()).expect("decodes");
        assert_eq!(serde_json::to_value(&t).unwrap(), v);
        t
    }

    #[test]
    fn worker() {
        let w: Worker = round_trip(worker_json());
        assert_eq!(w.id.as_str(), WKR);
        assert_eq!(w.status, Status::Online);
        assert_eq!(w.labels["queue"], "gpu");
        assert_eq!(w.heartbeat_interval(), Duration::from_secs(30));
        assert_eq!(w.stale_after(), Duration::from_secs(90));
        assert_eq!(w.registered_at.as_millis(), 1_795_850_320_123);
        assert_eq!(w.last_heartbeat_at, None);

        let mut offline = worker_json();
        offline["status"] = json!("offline");
        offline["offline_reason"] = json!("replaced");
        offline["deadline_at"] = Value::Null;
        let w: Worker = round_trip(offline);
        assert_eq!(w.offline_reason, Some(OfflineReason::Replaced));
        assert_eq!(w.deadline_at, None);
    }

    #[test]
    fn unknown_fields_are_ignored_and_bad_values_refused() {
        let mut v = worker_json();
        v["added_in_v2"] = json!({"anything": [1, 2]});
        let _: Worker = serde_json::from_value(v).unwrap();

        let mut v = worker_json();
        v["status"] = json!("zombie");
        assert!(serde_json::from_value::<Worker>(v).is_err());
        let mut v = worker_json();
        v["registered_at"] = json!("yesterday");
        assert!(serde_json::from_value::<Worker>(v).is_err());
    }

    #[test]
    fn machine_and_machine_with_workers() {
        let m = json!({
            "id": "host-a", "hostname": "host-a.example", "labels": {},
            "status": "online",
            "workers_online": 2, "workers_total": 3,
            "first_seen_at": "2026-11-28T07:18:40.123Z",
            "last_seen_at": "2026-11-28T07:19:40.000Z",
            "status_changed_at": "2026-11-28T07:18:40.123Z"
        });
        let machine: Machine = round_trip(m.clone());
        assert_eq!(machine.status, MachineStatus::Online);
        assert_eq!(machine.hostname.as_deref(), Some("host-a.example"));
        assert_eq!((machine.workers_online, machine.workers_total), (2, 3));

        let mut with = m;
        with["workers"] = json!([worker_json()]);
        let mw: MachineWithWorkers = round_trip(with);
        assert_eq!(mw.machine, machine);
        assert_eq!(mw.workers.len(), 1);

        // A machine registered without a hostname may come back with null.
        let bare = json!({
            "id": "host-b", "hostname": null, "labels": {}, "status": "offline",
            "workers_online": 0, "workers_total": 0,
            "first_seen_at": "2026-11-28T07:18:40.123Z",
            "last_seen_at": "2026-11-28T07:18:40.123Z",
            "status_changed_at": "2026-11-28T07:18:40.123Z"
        });
        let m: Machine = round_trip(bare);
        assert_eq!(m.hostname, None);
    }

    #[test]
    fn register_request_and_registration() {
        let mut req = RegisterRequest::new(
            WorkerName::parse("render-1").unwrap(),
            MachineId::parse("host-a").unwrap(),
        );
        // Optional parts are left out, so the server's defaults apply.
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"name": "render-1", "machine": {"id": "host-a"}, "labels": {}})
        );
        req.machine.hostname = Some("host-a.example".into());
        req.machine.labels = Some(Labels::new());
        req.labels.insert("queue".into(), "gpu".into());
        req.heartbeat_interval_ms = Some(30000);
        req.stale_after_ms = Some(90000);
        let _: RegisterRequest = round_trip(json!({
            "name": "render-1",
            "machine": {"id": "host-a", "hostname": "host-a.example", "labels": {}},
            "labels": {"queue": "gpu"}, "heartbeat_interval_ms": 30000, "stale_after_ms": 90000
        }));
        assert_eq!(
            serde_json::to_value(&req).unwrap()["machine"]["hostname"],
            "host-a.example"
        );

        let reg: Registration = round_trip(json!({
            "worker": worker_json(),
            "token": "rc_worker_abc"
        }));
        assert_eq!(reg.token.expose(), "rc_worker_abc");
        assert!(!format!("{reg:?}").contains("rc_worker_abc"));
    }

    #[test]
    fn heartbeat_ack() {
        let ack: HeartbeatAck = round_trip(json!({
            "status": "draining", "session": 3, "resumed": false,
            "deadline_at": "2026-11-28T07:20:10.123Z", "heartbeat_interval_ms": 30000
        }));
        assert_eq!(ack.status, Status::Draining);
        assert_eq!(ack.heartbeat_interval(), Duration::from_secs(30));
    }

    #[test]
    fn batch_results_keep_order_and_split_on_ok() {
        let body = json!({"results": [
            {"worker_id": WKR, "ok": true, "status": "online", "session": 3, "resumed": false},
            {"worker_id": WKR2, "ok": false, "error": {"code": "unauthorized", "message": "unknown token"}}
        ]});
        let r: BatchResponse = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(r.results.len(), 2);
        assert_eq!(
            r.results[0].outcome,
            Ok(BatchHeartbeatOk {
                status: Status::Online,
                session: 3,
                resumed: false
            })
        );
        assert_eq!(r.results[1].worker_id.as_str(), WKR2);
        let err = r.results[1].outcome.clone().unwrap_err();
        assert_eq!(err.code, crate::ErrorCode::Unauthorized);
        // And back to the same wire shape.
        assert_eq!(serde_json::to_value(&r.results).unwrap(), body["results"]);

        // Inconsistent entries are refused rather than guessed at.
        let bad = json!({"worker_id": WKR, "ok": false});
        assert!(serde_json::from_value::<BatchHeartbeatResult>(bad).is_err());
        let bad = json!({"worker_id": WKR, "ok": true});
        assert!(serde_json::from_value::<BatchHeartbeatResult>(bad).is_err());

        let req = [BatchHeartbeat {
            worker_id: WorkerId::parse(WKR).unwrap(),
            token: "rc_worker_t".into(),
        }];
        assert_eq!(
            serde_json::to_value(BatchRequest { heartbeats: &req }).unwrap(),
            json!({"heartbeats": [{"worker_id": WKR, "token": "rc_worker_t"}]})
        );
    }

    #[test]
    fn events_and_their_pages() {
        let page: Page<Event> = round_trip(json!({
            "items": [
                {"seq": 41, "at": "2026-11-28T07:18:40.123Z", "type": "worker.registered",
                 "worker_id": WKR, "machine_id": "host-a", "reason": null, "session": 3,
                 "detection_lag_ms": null, "exit_code": null, "signal": null},
                {"seq": 42, "at": "2026-11-28T07:20:10.263Z", "type": "worker.offline",
                 "worker_id": WKR, "machine_id": "host-a", "reason": "stale", "session": 3,
                 "detection_lag_ms": 140, "exit_code": null, "signal": null},
                {"seq": 43, "at": "2026-11-28T07:20:10.263Z", "type": "machine.offline",
                 "worker_id": null, "machine_id": "host-a", "reason": "stale", "session": null,
                 "detection_lag_ms": null, "exit_code": null, "signal": null}
            ],
            "next_cursor": "43"
        }));
        assert_eq!(page.items[1].event_type, EventType::WorkerOffline);
        assert_eq!(page.items[1].reason, Some(EventReason::Stale));
        assert_eq!(
            page.items[1].detection_lag(),
            Some(Duration::from_millis(140))
        );
        assert_eq!(page.items[2].worker_id, None);
        assert_eq!(page.items[1].offline_class(), Some(OfflineClass::Crash));
        assert_eq!(page.items[1].crash_kind(), Some(CrashKind::Stale));
        assert_eq!(page.items[1].exit_status(), None);
        // Only worker.offline events are classified.
        assert_eq!(page.items[0].offline_class(), None);
        assert_eq!(page.items[2].offline_class(), None);
        assert_eq!(page.items[2].offline_reason(), None);
        assert_eq!(page.next_after(), Some(43));
        assert!(!page.is_last());

        let last: Page<Event> = round_trip(json!({"items": [], "next_cursor": null}));
        assert!(last.is_last());
        assert_eq!(last.next_after(), None);

        // Without detection_lag_ms at all (older servers) it decodes as None.
        let e: Event = serde_json::from_value(json!({
            "seq": 1, "at": "2026-11-28T07:18:40.123Z", "type": "machine.online",
            "worker_id": null, "machine_id": "host-a", "reason": null, "session": null
        }))
        .unwrap();
        assert_eq!(e.detection_lag_ms, None);
        assert_eq!((e.exit_code, e.signal, e.exit_status()), (None, None, None));
    }

    /// An `exited` offline of a worker: `exit_code` or `signal`, and the
    /// class and crash kind they make of it.
    fn exited(exit_code: Value, signal: Value) -> Event {
        round_trip(json!({
            "seq": 7, "at": "2026-11-28T07:20:10.263Z", "type": "worker.offline",
            "worker_id": WKR, "machine_id": "host-a", "reason": "exited", "session": 2,
            "detection_lag_ms": null, "exit_code": exit_code, "signal": signal
        }))
    }

    #[test]
    fn exited_events_are_classified_by_their_exit_status() {
        let e = exited(json!(0), Value::Null);
        assert_eq!(e.exit_status(), Some(ExitStatus::Code(0)));
        assert_eq!(e.offline_reason(), Some(OfflineReason::Exited));
        assert_eq!(e.offline_class(), Some(OfflineClass::Graceful));
        assert_eq!(e.crash_kind(), None);

        let e = exited(json!(3), Value::Null);
        assert_eq!(e.exit_status(), Some(ExitStatus::Code(3)));
        assert_eq!(e.offline_class(), Some(OfflineClass::Crash));
        assert_eq!(e.crash_kind(), Some(CrashKind::Exited));

        let e = exited(Value::Null, json!(9));
        assert_eq!(e.exit_status(), Some(ExitStatus::Signal(9)));
        assert_eq!(e.offline_class(), Some(OfflineClass::Crash));
        assert_eq!(e.crash_kind(), Some(CrashKind::Exited));

        // An exit nothing was reported about is a crash: nothing says it
        // meant to end.
        let e = exited(Value::Null, Value::Null);
        assert_eq!(e.exit_status(), None);
        assert_eq!(e.crash_kind(), Some(CrashKind::Exited));

        // A code out of range is refused, not wrapped.
        let mut v = serde_json::to_value(exited(json!(3), Value::Null)).unwrap();
        v["exit_code"] = json!(256);
        assert!(serde_json::from_value::<Event>(v).is_err());
    }

    #[test]
    fn every_offline_reason_has_its_class() {
        let offline = |reason: &str| -> Event {
            serde_json::from_value(json!({
                "seq": 1, "at": "2026-11-28T07:18:40.123Z", "type": "worker.offline",
                "worker_id": WKR, "machine_id": "host-a", "reason": reason, "session": 1
            }))
            .unwrap()
        };
        let class = |reason: &str| {
            let e = offline(reason);
            (e.offline_class().unwrap(), e.crash_kind())
        };
        assert_eq!(class("shutdown"), (OfflineClass::Graceful, None));
        assert_eq!(
            class("stale"),
            (OfflineClass::Crash, Some(CrashKind::Stale))
        );
        assert_eq!(
            class("replaced"),
            (OfflineClass::Crash, Some(CrashKind::Replaced))
        );
        assert_eq!(class("revoked"), (OfflineClass::Administrative, None));
    }

    #[test]
    fn tokens() {
        let created: CreatedToken = round_trip(json!({
            "id": "tok_01JDQ3Z6X8A1B2C3D4E5F6G7H8", "kind": "enroll", "name": "fleet-a",
            "token": "rc_enroll_secret", "expires_at": null, "scope": null
        }));
        assert_eq!(created.kind, TokenKind::Enroll);
        assert!(!format!("{created:?}").contains("secret"));

        let page: Page<Token> = round_trip(json!({
            "items": [{"id": "tok_01JDQ3Z6X8A1B2C3D4E5F6G7H8", "kind": "read", "name": "dash",
                       "created_at": "2026-11-28T07:18:40.123Z",
                       "expires_at": "2026-11-29T07:18:40.123Z", "last_used_at": null,
                       "scope": null}],
            "next_cursor": null
        }));
        assert_eq!(page.items[0].kind, TokenKind::Read);

        assert_eq!(
            serde_json::to_value(
                NewToken::new(TokenKind::Enroll, "x").expires_in(Duration::from_secs(86400))
            )
            .unwrap(),
            json!({"kind": "enroll", "name": "x", "expires_in_ms": 86400000})
        );
        assert_eq!(
            serde_json::to_value(NewToken::new(TokenKind::Read, "y")).unwrap(),
            json!({"kind": "read", "name": "y"})
        );

        let scope = TokenScope::parse_input(
            Some(vec!["gpu-*".into()]),
            [("pool".to_owned(), "gpu".to_owned())].into(),
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(NewToken::new(TokenKind::Enroll, "gpus").scope(scope.clone()))
                .unwrap(),
            json!({"kind": "enroll", "name": "gpus",
                   "scope": {"machines": ["gpu-*"], "labels": {"pool": "gpu"}}})
        );
        let scoped: Token = round_trip(json!({
            "id": "tok_01JDQ3Z6X8A1B2C3D4E5F6G7H8", "kind": "enroll", "name": "gpus",
            "created_at": "2026-11-28T07:18:40.123Z", "expires_at": null,
            "last_used_at": null,
            "scope": {"machines": ["gpu-*"], "labels": {"pool": "gpu"}}
        }));
        assert_eq!(scoped.scope, Some(scope));
        let unscoped: Token = round_trip(json!({
            "id": "tok_01JDQ3Z6X8A1B2C3D4E5F6G7H8", "kind": "read", "name": "dash",
            "created_at": "2026-11-28T07:18:40.123Z", "expires_at": null,
            "last_used_at": null, "scope": null
        }));
        assert_eq!(unscoped.scope, None);
    }

    #[test]
    fn cleanup_results() {
        let stale = json!({"success": true, "deleted_count": 0,
                           "marked_offline_count": 2, "affected_machine_ids": ["host-a"]});
        let s: StaleCleanup = round_trip(stale.clone());
        assert_eq!(s.marked_offline_count, 2);
        let all: FullCleanup = round_trip(json!({
            "success": true, "stale": stale,
            "forgotten_workers": 0, "forgotten_machines": 0,
            "pruned_events": 0, "expired_tokens": 0, "duration_ms": 3
        }));
        assert_eq!(all.duration(), Duration::from_millis(3));
        assert_eq!(all.stale, s);
    }

    #[test]
    fn offline_request() {
        assert_eq!(
            serde_json::to_value(OfflineRequest::new(OfflineReason::Exited, None)).unwrap(),
            json!({"reason": "exited"})
        );
        assert_eq!(
            serde_json::to_value(OfflineRequest::new(
                OfflineReason::Exited,
                Some(ExitStatus::Code(3))
            ))
            .unwrap(),
            json!({"reason": "exited", "exit_code": 3})
        );
        assert_eq!(
            serde_json::to_value(OfflineRequest::new(
                OfflineReason::Exited,
                Some(ExitStatus::Signal(9))
            ))
            .unwrap(),
            json!({"reason": "exited", "signal": 9})
        );
        assert_eq!(
            serde_json::to_value(OfflineRequest::new(OfflineReason::Shutdown, None)).unwrap(),
            json!({"reason": "shutdown"})
        );
    }
}
