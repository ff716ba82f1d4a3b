//! The worker lifecycle, as one pure transition function.
//!
//! ```text
//!            register                 heartbeat (extends deadline)
//!   (none) ───────────► online ◄───────────────────────────────┐
//!                        │  │ drain                             │
//!                        │  ▼                                   │ heartbeat from an
//!                        │ draining                             │ offline worker:
//!       offline (reason) │  │                                   │ resumes, session+1
//!                        ▼  ▼                                   │
//!                       offline ────────────────────────────────┘
//! ```
//!
//! [`transition`] takes the worker's current state (or `None` if it does not
//! exist), a [`Command`] and `now`, and returns the next state with the events
//! to record, or a typed error. It does no I/O. Every layer that changes a
//! status goes through it; no other code writes a status of its own.
//!
//! A transition whose `events` are empty changed nothing (an idempotent
//! `offline`, a heartbeat on an online worker, an expiry that lost a race):
//! callers record nothing for it.

use thiserror::Error;

use crate::model::{EventReason, EventType, OfflineReason, Status};
use crate::time::Timestamp;

/// The part of a worker the lifecycle is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerState {
    pub status: Status,
    /// Set exactly when `status` is offline.
    pub offline_reason: Option<OfflineReason>,
    /// +1 on every offline → online transition and on every registration.
    pub session: u64,
    pub status_changed_at: Timestamp,
}

/// Something that may change a worker's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// A (re-)registration of this name on this machine: always a new session.
    Register,
    /// A heartbeat from the worker's own token.
    Heartbeat,
    /// The worker finishes its work and takes no more.
    Drain,
    /// A graceful goodbye (`Shutdown`) or an agent reporting that its child
    /// ended (`Exited`).
    Offline(OfflineReason),
    /// The detector found the deadline of `session` passed. Losing a race
    /// (the worker already left that session, or is offline) is a no-op.
    Expire { session: u64 },
    /// An admin deletes the worker: its token is revoked, its record
    /// forgotten.
    Delete,
}

/// One event a transition records for the worker itself. Machine events are
/// derived by the store from the workers' statuses in the same transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerEvent {
    pub kind: EventType,
    pub reason: Option<EventReason>,
    /// The session the event belongs to.
    pub session: u64,
}

/// The result of applying a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The next state; `None` when the worker is forgotten (deleted).
    pub next: Option<WorkerState>,
    /// Events to record, in order. Empty when nothing changed.
    pub events: Vec<WorkerEvent>,
}

impl Transition {
    /// Whether anything changed (and so must be stored).
    pub fn changed(&self) -> bool {
        !self.events.is_empty()
    }

    /// Whether an offline worker came back (a heartbeat that resumed it).
    pub fn resumed(&self) -> bool {
        self.events
            .iter()
            .any(|e| e.kind == EventType::WorkerOnline && e.reason == Some(EventReason::Heartbeat))
    }
}

/// Commands that cannot apply to the worker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FsmError {
    #[error("worker not found")]
    NotFound,
    #[error("worker is offline and cannot be drained")]
    DrainOffline,
    #[error("offline reason {0} cannot be requested")]
    ReasonNotRequestable(OfflineReason),
}

fn event(kind: EventType, reason: Option<EventReason>, session: u64) -> WorkerEvent {
    WorkerEvent {
        kind,
        reason,
        session,
    }
}

fn unchanged(s: WorkerState) -> Transition {
    Transition {
        next: Some(s),
        events: Vec::new(),
    }
}

fn go_offline(s: WorkerState, reason: OfflineReason, now: Timestamp) -> Transition {
    Transition {
        next: Some(WorkerState {
            status: Status::Offline,
            offline_reason: Some(reason),
            session: s.session,
            status_changed_at: now,
        }),
        events: vec![event(
            EventType::WorkerOffline,
            Some(reason.into()),
            s.session,
        )],
    }
}

/// Applies `cmd` to a worker in state `current` at time `now`.
pub fn transition(
    current: Option<WorkerState>,
    cmd: Command,
    now: Timestamp,
) -> Result<Transition, FsmError> {
    let Some(s) = current else {
        return match cmd {
            Command::Register => Ok(register(None, 0, now)),
            _ => Err(FsmError::NotFound),
        };
    };
    match cmd {
        Command::Register => {
            // A live worker registering again crashed and restarted: its old
            // session ends as `replaced` before the new one starts.
            let mut events = Vec::new();
            if s.status.is_live() {
                events.extend(go_offline(s, OfflineReason::Replaced, now).events);
            }
            let mut t = register(Some(s), s.session, now);
            events.append(&mut t.events);
            t.events = events;
            Ok(t)
        }
        Command::Heartbeat => match s.status {
            Status::Online | Status::Draining => Ok(unchanged(s)),
            Status::Offline => {
                let session = s.session + 1;
                Ok(Transition {
                    next: Some(WorkerState {
                        status: Status::Online,
                        offline_reason: None,
                        session,
                        status_changed_at: now,
                    }),
                    events: vec![event(
                        EventType::WorkerOnline,
                        Some(EventReason::Heartbeat),
                        session,
                    )],
                })
            }
        },
        Command::Drain => match s.status {
            Status::Online => Ok(Transition {
                next: Some(WorkerState {
                    status: Status::Draining,
                    offline_reason: None,
                    session: s.session,
                    status_changed_at: now,
                }),
                events: vec![event(EventType::WorkerDraining, None, s.session)],
            }),
            Status::Draining => Ok(unchanged(s)),
            Status::Offline => Err(FsmError::DrainOffline),
        },
        Command::Offline(reason) => match reason {
            OfflineReason::Shutdown | OfflineReason::Exited | OfflineReason::Stale => {
                if s.status.is_live() {
                    Ok(go_offline(s, reason, now))
                } else {
                    Ok(unchanged(s))
                }
            }
            OfflineReason::Replaced | OfflineReason::Revoked => {
                Err(FsmError::ReasonNotRequestable(reason))
            }
        },
        Command::Expire { session } => {
            if s.status.is_live() && s.session == session {
                Ok(go_offline(s, OfflineReason::Stale, now))
            } else {
                Ok(unchanged(s))
            }
        }
        Command::Delete => {
            let mut events = Vec::new();
            if s.status.is_live() {
                events.extend(go_offline(s, OfflineReason::Revoked, now).events);
            }
            events.push(event(EventType::WorkerDeleted, None, s.session));
            Ok(Transition { next: None, events })
        }
    }
}

fn register(_previous: Option<WorkerState>, previous_session: u64, now: Timestamp) -> Transition {
    let session = previous_session + 1;
    Transition {
        next: Some(WorkerState {
            status: Status::Online,
            offline_reason: None,
            session,
            status_changed_at: now,
        }),
        events: vec![
            event(EventType::WorkerRegistered, None, session),
            event(
                EventType::WorkerOnline,
                Some(EventReason::Registered),
                session,
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: Timestamp = Timestamp::from_millis(1_000);

    fn online(session: u64) -> WorkerState {
        WorkerState {
            status: Status::Online,
            offline_reason: None,
            session,
            status_changed_at: T0,
        }
    }

    #[test]
    fn first_registration_starts_session_one() {
        let t = transition(None, Command::Register, T0).unwrap();
        assert_eq!(t.next, Some(online(1)));
        let kinds: Vec<_> = t.events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [EventType::WorkerRegistered, EventType::WorkerOnline]
        );
        assert_eq!(t.events[1].reason, Some(EventReason::Registered));
    }

    #[test]
    fn reregistering_a_live_worker_replaces_its_session() {
        let t = transition(Some(online(4)), Command::Register, T0).unwrap();
        assert_eq!(t.next.unwrap().session, 5);
        assert_eq!(t.events[0].kind, EventType::WorkerOffline);
        assert_eq!(t.events[0].reason, Some(EventReason::Replaced));
        assert_eq!(t.events[0].session, 4);
        assert_eq!(t.events[1].kind, EventType::WorkerRegistered);
        assert_eq!(t.events[2].session, 5);
    }

    #[test]
    fn heartbeat_resumes_an_offline_worker() {
        let off = transition(Some(online(2)), Command::Expire { session: 2 }, T0)
            .unwrap()
            .next;
        let t = transition(off, Command::Heartbeat, T0).unwrap();
        assert!(t.resumed());
        assert_eq!(t.next.unwrap().session, 3);
        let t = transition(t.next, Command::Heartbeat, T0).unwrap();
        assert!(!t.changed());
    }

    #[test]
    fn expiry_of_an_old_session_loses() {
        let t = transition(Some(online(3)), Command::Expire { session: 2 }, T0).unwrap();
        assert!(!t.changed());
        assert_eq!(t.next, Some(online(3)));
    }

    #[test]
    fn offline_is_idempotent_and_drain_of_offline_conflicts() {
        let t = transition(
            Some(online(1)),
            Command::Offline(OfflineReason::Shutdown),
            T0,
        )
        .unwrap();
        assert!(t.changed());
        let again = transition(t.next, Command::Offline(OfflineReason::Exited), T0).unwrap();
        assert!(!again.changed());
        assert_eq!(again.next, t.next);
        assert_eq!(
            transition(t.next, Command::Drain, T0),
            Err(FsmError::DrainOffline)
        );
    }

    #[test]
    fn delete_revokes_then_forgets() {
        let t = transition(Some(online(1)), Command::Delete, T0).unwrap();
        assert_eq!(t.next, None);
        assert_eq!(t.events[0].reason, Some(EventReason::Revoked));
        assert_eq!(t.events[1].kind, EventType::WorkerDeleted);
        assert_eq!(
            transition(None, Command::Heartbeat, T0),
            Err(FsmError::NotFound)
        );
    }

    fn any_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            Just(Command::Register),
            Just(Command::Heartbeat),
            Just(Command::Drain),
            Just(Command::Offline(OfflineReason::Shutdown)),
            Just(Command::Offline(OfflineReason::Exited)),
            Just(Command::Offline(OfflineReason::Stale)),
            Just(Command::Offline(OfflineReason::Replaced)),
            (0u64..6).prop_map(|session| Command::Expire { session }),
            Just(Command::Delete),
        ]
    }

    proptest! {
        /// Over any sequence of commands: sessions never go down and only go
        /// up by one with a registration or a resume; the event log alternates
        /// online/offline (never two offlines or two onlines in a row); the
        /// state after each step agrees with the last event; an offline
        /// worker always has a reason and a live one never does.
        #[test]
        fn the_lifecycle_holds_its_invariants(cmds in proptest::collection::vec(any_command(), 1..60)) {
            let mut state: Option<WorkerState> = None;
            let mut live_in_log: Option<bool> = None;
            let mut now = T0;
            for cmd in cmds {
                now = now.plus(std::time::Duration::from_millis(7));
                let before = state;
                let Ok(t) = transition(state, cmd, now) else {
                    continue;
                };
                for e in &t.events {
                    match e.kind {
                        EventType::WorkerOnline => {
                            prop_assert_ne!(live_in_log, Some(true), "double online");
                            live_in_log = Some(true);
                        }
                        EventType::WorkerOffline => {
                            prop_assert_eq!(live_in_log, Some(true), "offline without online");
                            live_in_log = Some(false);
                        }
                        EventType::WorkerDeleted => live_in_log = None,
                        EventType::WorkerDraining => prop_assert_eq!(live_in_log, Some(true)),
                        _ => {}
                    }
                }
                match (before, t.next) {
                    (Some(b), Some(n)) => {
                        prop_assert!(n.session >= b.session);
                        prop_assert!(n.session <= b.session + 1);
                        if n.session == b.session + 1 {
                            prop_assert!(matches!(cmd, Command::Register | Command::Heartbeat));
                        }
                        if !t.changed() { prop_assert_eq!(n, b); }
                    }
                    (None, Some(n)) => prop_assert_eq!(n.session, 1),
                    (_, None) => prop_assert_eq!(cmd, Command::Delete),
                }
                if let Some(n) = t.next {
                    prop_assert_eq!(n.offline_reason.is_some(), n.status == Status::Offline);
                    prop_assert_eq!(Some(n.status.is_live()), live_in_log);
                    if t.changed() { prop_assert_eq!(n.status_changed_at, now); }
                }
                state = t.next;
            }
        }
    }
}
