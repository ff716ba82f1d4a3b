//! The rows the store reads and writes, as typed values.

use std::time::Duration;

use rollcall_core::{
    EventReason, EventType, ExitStatus, IncidentId, Labels, MachineId, MachineStatus,
    OfflineReason, Status, Timestamp, TokenHash, TokenId, TokenKind, TokenScope, WorkerId,
    WorkerName, WorkerState,
};

/// A worker as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRecord {
    pub id: WorkerId,
    pub name: WorkerName,
    pub machine_id: MachineId,
    pub status: Status,
    pub offline_reason: Option<OfflineReason>,
    pub session: u64,
    pub labels: Labels,
    pub heartbeat_interval: Duration,
    pub stale_after: Duration,
    pub registered_at: Timestamp,
    /// Written behind: may lag the engine by up to one flush interval.
    pub last_heartbeat_at: Option<Timestamp>,
    pub status_changed_at: Timestamp,
    pub token_hash: TokenHash,
}

impl WorkerRecord {
    /// The lifecycle part of the record.
    pub fn state(&self) -> WorkerState {
        WorkerState {
            status: self.status,
            offline_reason: self.offline_reason,
            session: self.session,
            status_changed_at: self.status_changed_at,
        }
    }

    /// Copies a lifecycle state into the record.
    pub fn set_state(&mut self, s: WorkerState) {
        self.status = s.status;
        self.offline_reason = s.offline_reason;
        self.session = s.session;
        self.status_changed_at = s.status_changed_at;
    }
}

/// A machine as stored, with its worker counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineRecord {
    pub id: MachineId,
    pub hostname: Option<String>,
    pub labels: Labels,
    pub status: MachineStatus,
    /// Online or draining workers.
    pub workers_online: u64,
    pub workers_total: u64,
    pub first_seen_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub status_changed_at: Timestamp,
}

/// An entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Strictly increasing, in commit order.
    pub seq: i64,
    pub at: Timestamp,
    pub kind: EventType,
    pub worker_id: Option<WorkerId>,
    pub machine_id: MachineId,
    pub reason: Option<EventReason>,
    pub session: Option<u64>,
    /// For stale transitions: how long after the deadline it was marked.
    pub detection_lag_ms: Option<i64>,
    /// For `exited` offlines: how the supervised process ended, if reported.
    pub exit: Option<ExitStatus>,
    /// For `incident.*` events: the incident.
    pub incident_id: Option<IncidentId>,
}

/// An event to append; the store assigns `seq`, and the worker and machine
/// come from the write that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub at: Timestamp,
    pub kind: EventType,
    pub reason: Option<EventReason>,
    pub session: Option<u64>,
    pub detection_lag_ms: Option<i64>,
    /// For `exited` offlines: how the supervised process ended, if reported.
    pub exit: Option<ExitStatus>,
}

/// An API token (admin, enroll or read) as stored: never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: TokenId,
    pub kind: TokenKind,
    pub name: String,
    pub hash: TokenHash,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    /// Enroll tokens only: which workers it may register; `None`: any.
    pub scope: Option<TokenScope>,
}

/// What a conditional write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    pub status: Status,
    pub session: u64,
}

/// Machine details carried by a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineUpsert {
    pub id: MachineId,
    /// Replaces the stored hostname when given.
    pub hostname: Option<String>,
    /// Replaces the stored labels when given.
    pub labels: Option<Labels>,
    pub seen_at: Timestamp,
}

/// One write of a batch.
// `Put` is the common case (every transition but a delete); boxing its
// record would cost an allocation per write and change the public API for
// no gain: writes are moved into a batch, not copied around.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerWrite {
    /// Inserts the worker (`expect: None`, fails if it exists) or replaces
    /// it, only if it still has the expected status and session.
    Put {
        record: WorkerRecord,
        expect: Option<Expect>,
        machine: Option<MachineUpsert>,
        events: Vec<NewEvent>,
    },
    /// Forgets the worker, only if it still has the expected status and
    /// session.
    Delete {
        id: WorkerId,
        machine_id: MachineId,
        expect: Expect,
        events: Vec<NewEvent>,
    },
}

/// What a committed batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitResult {
    /// Per write, in order: whether its condition held and it was applied.
    /// A write that was not applied changed nothing and recorded nothing.
    pub applied: Vec<bool>,
    /// Every event the transaction appended (the writes' events, then the
    /// machine transitions they caused), in `seq` order.
    pub events: Vec<EventRecord>,
}

/// A write-behind heartbeat mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatMark {
    pub worker_id: WorkerId,
    pub machine_id: MachineId,
    /// Only applied while the worker is still in this session.
    pub session: u64,
    pub at: Timestamp,
}

/// Filters for listing workers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerFilter {
    pub status: Option<Status>,
    pub machine_id: Option<MachineId>,
}

/// Filters for listing events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub worker_id: Option<WorkerId>,
    pub machine_id: Option<MachineId>,
    pub kind: Option<EventType>,
}

/// A page of results, oldest (or smallest id) first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Whether more items follow the last one.
    pub more: bool,
}
