//! # rollcall-core
//!
//! The domain of rollcall, free of I/O: no tokio, no SQL, no HTTP. Everything
//! here is a value or a pure function with `now` passed in, so it can be unit-
//! and property-tested without a runtime.
//!
//! ## Layout
//!
//! - [`time`]: [`Timestamp`](time::Timestamp), milliseconds since the Unix
//!   epoch, rendered as RFC 3339 with millisecond precision.
//! - [`id`]: validated identifiers — worker ids, token ids, machine ids and
//!   worker names.
//! - [`model`]: statuses, reasons, event types, labels.
//! - [`fsm`]: the worker lifecycle as one transition function. Every layer
//!   that changes a worker's status goes through [`fsm::transition`].
//! - [`policy`]: the liveness policy — interval resolution and deadline
//!   arithmetic, including the restart grace.
//! - [`token`]: token kinds, prefixes, hashing and constant-time comparison.
//! - [`scope`]: the scope of an enroll token (machine-id patterns, required
//!   labels) and its matching rules.

pub mod fsm;
pub mod health;
pub mod id;
pub mod model;
pub mod policy;
pub mod scope;
pub mod time;
pub mod token;

pub use fsm::{transition, Command, FsmError, Transition, WorkerEvent, WorkerState};
pub use id::{IncidentId, MachineId, TokenId, WorkerId, WorkerName};
pub use model::{
    check_text, forbidden_char, CrashKind, EventReason, EventType, ExitStatus, ExitStatusError,
    Labels, MachineStatus, OfflineClass, OfflineReason, Status,
};
pub use policy::{Intervals, IntervalsError, LivenessPolicy};
pub use scope::{ScopeError, TokenScope};
pub use time::Timestamp;
pub use token::{TokenHash, TokenKind};
