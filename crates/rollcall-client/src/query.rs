//! Filters and pagination for the list calls.
//!
//! Each list call takes a query struct whose fields are the endpoint's query
//! parameters; `None` leaves a parameter out, so the server's default applies
//! (`limit` defaults to 100 and must be 1–1000). Build them with struct
//! update syntax:
//!
//! ```
//! use rollcall_client::{Status, WorkerQuery};
//! let q = WorkerQuery { status: Some(Status::Online), limit: Some(500), ..Default::default() };
//! # let _ = q;
//! ```

use rollcall_core::{EventType, MachineId, MachineStatus, Status, WorkerId};

/// The largest page the server hands out; what the `list_all_*` helpers ask
/// for when the query sets no limit.
pub const MAX_LIMIT: u32 = 1000;

/// Query parameters as `(name, value)` pairs, before URL encoding.
pub(crate) type Params = Vec<(&'static str, String)>;

fn push(params: &mut Params, name: &'static str, value: Option<impl ToString>) {
    if let Some(v) = value {
        params.push((name, v.to_string()));
    }
}

/// Pagination only: for `GET /v1/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// Page size, 1–1000 (server default 100).
    pub limit: Option<u32>,
    /// Where to start: a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl PageQuery {
    pub(crate) fn params(&self) -> Params {
        let mut p = Params::new();
        push(&mut p, "limit", self.limit);
        push(&mut p, "cursor", self.cursor.as_ref());
        p
    }
}

/// `GET /v1/workers` filters and pagination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerQuery {
    /// Only workers with this status.
    pub status: Option<Status>,
    /// Only workers on this machine.
    pub machine_id: Option<MachineId>,
    /// Page size, 1–1000 (server default 100).
    pub limit: Option<u32>,
    /// Where to start: a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl WorkerQuery {
    pub(crate) fn params(&self) -> Params {
        let mut p = Params::new();
        push(&mut p, "status", self.status.map(Status::as_str));
        push(&mut p, "machine_id", self.machine_id.as_ref());
        push(&mut p, "limit", self.limit);
        push(&mut p, "cursor", self.cursor.as_ref());
        p
    }
}

/// `GET /v1/machines` filters and pagination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineQuery {
    /// Only machines with this status.
    pub status: Option<MachineStatus>,
    /// Page size, 1–1000 (server default 100).
    pub limit: Option<u32>,
    /// Where to start: a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl MachineQuery {
    pub(crate) fn params(&self) -> Params {
        let mut p = Params::new();
        push(&mut p, "status", self.status.map(MachineStatus::as_str));
        push(&mut p, "limit", self.limit);
        push(&mut p, "cursor", self.cursor.as_ref());
        p
    }
}

/// `GET /v1/events` filters and position. Events come oldest first; the
/// position is a seq, not an opaque cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events after this seq (server default 0: from the start).
    pub after: Option<u64>,
    /// Page size, 1–1000 (server default 100).
    pub limit: Option<u32>,
    /// Only events of this worker.
    pub worker_id: Option<WorkerId>,
    /// Only events of this machine.
    pub machine_id: Option<MachineId>,
    /// Only events of this type.
    pub event_type: Option<EventType>,
}

impl EventQuery {
    pub(crate) fn params(&self) -> Params {
        let mut p = Params::new();
        push(&mut p, "after", self.after);
        push(&mut p, "limit", self.limit);
        push(&mut p, "worker_id", self.worker_id.as_ref());
        push(&mut p, "machine_id", self.machine_id.as_ref());
        push(&mut p, "type", self.event_type.map(EventType::as_str));
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_are_left_out() {
        assert!(WorkerQuery::default().params().is_empty());
        assert!(MachineQuery::default().params().is_empty());
        assert!(EventQuery::default().params().is_empty());
        assert!(PageQuery::default().params().is_empty());
    }

    #[test]
    fn wire_names_are_used() {
        let q = WorkerQuery {
            status: Some(Status::Draining),
            machine_id: Some(MachineId::parse("host-a").unwrap()),
            limit: Some(10),
            cursor: Some("a b/c".into()),
        };
        assert_eq!(
            q.params(),
            vec![
                ("status", "draining".to_owned()),
                ("machine_id", "host-a".to_owned()),
                ("limit", "10".to_owned()),
                ("cursor", "a b/c".to_owned()),
            ]
        );
        let q = EventQuery {
            after: Some(42),
            event_type: Some(EventType::MachineOffline),
            ..Default::default()
        };
        assert_eq!(
            q.params(),
            vec![
                ("after", "42".to_owned()),
                ("type", "machine.offline".to_owned())
            ]
        );
        let q = MachineQuery {
            status: Some(MachineStatus::Offline),
            ..Default::default()
        };
        assert_eq!(q.params(), vec![("status", "offline".to_owned())]);
    }
}
