//! # rollcall-client
//!
//! An async client for rollcall's HTTP API (v1, `docs/API.md`), and a worker
//! handle that registers a process, heartbeats for it in the background and
//! says goodbye when it stops.
//!
//! ```no_run
//! use rollcall_client::{Client, WorkerHandle, WorkerName, WorkerOptions};
//!
//! # async fn demo() -> Result<(), rollcall_client::Error> {
//! // An enroll token may register workers.
//! let client = Client::builder()
//!     .server("http://127.0.0.1:7373")
//!     .token("rc_enroll_…")
//!     .build()?;
//!
//! let mut options = WorkerOptions::new(WorkerName::parse("render-1").unwrap());
//! options.labels.insert("queue".into(), "gpu".into());
//! let worker = WorkerHandle::register(&client, options).await?;
//! println!("worker {:?}, session {:?}", worker.id(), worker.session());
//!
//! // … do the work; the handle heartbeats meanwhile …
//!
//! worker.shutdown().await?; // offline now, reason "shutdown"
//! # Ok(()) }
//! ```
//!
//! And the admin side:
//!
//! ```no_run
//! use rollcall_client::{Client, ErrorCode, EventQuery, WorkerId};
//!
//! # async fn demo(id: WorkerId) -> Result<(), rollcall_client::Error> {
//! let admin = Client::builder().server("http://127.0.0.1:7373").token("rc_admin_…").build()?;
//! match admin.get_worker(&id).await {
//!     Ok(w) => println!("{} is {}", w.name, w.status),
//!     Err(e) if e.code() == Some(&ErrorCode::NotFound) => println!("no such worker"),
//!     Err(e) => return Err(e),
//! }
//! let page = admin.list_events(&EventQuery { after: Some(0), ..Default::default() }).await?;
//! for event in page.items {
//!     println!("{} {} {}", event.seq, event.event_type, event.machine_id);
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`client`]: [`Client`] and its builder — one method per endpoint,
//!   failover between replicas, the bearer token and timeouts.
//! - [`model`]: the contract's JSON objects ([`Worker`], [`Machine`],
//!   [`Event`], [`Token`], heartbeat, batch and cleanup results, [`Page`]).
//!   Wire names of statuses, reasons, event types and token kinds come from
//!   `rollcall-core` and are re-exported here, with the classification of
//!   offlines ([`OfflineClass`], [`CrashKind`]): [`Event::offline_class`]
//!   says whether a `worker.offline` was graceful, a crash or
//!   administrative.
//! - [`query`]: list filters and pagination parameters.
//! - [`error`]: [`Error`], with the server's answers parsed into
//!   [`ApiError`] / [`ErrorCode`] and transport failures kept apart.
//! - [`worker`]: [`WorkerHandle`] — register (now, or in the background),
//!   heartbeat at the server's interval with jitter, back off while the
//!   server is away, register again when the token is refused, drain,
//!   shutdown, or `exited` with the process's [`ExitStatus`] when it
//!   supervises one.
//! - [`sse`]: the live event stream ([`EventStream`]) and its parser.
//! - [`backoff`]: heartbeat jitter and retry backoff as pure functions.
//! - [`host`]: the host's name, the default machine id.
//! - [`secret`]: [`TokenSecret`], a token that `Debug` never prints.
//!
//! # Conventions
//!
//! - Timestamps are [`Timestamp`] from `rollcall-core`: integer milliseconds
//!   since the epoch that (de)serialise as the contract's RFC 3339 UTC
//!   strings with millisecond precision. Compare and subtract them as
//!   integers; `Timestamp::as_millis` converts to anything else.
//! - `*_ms` fields stay integers, as on the wire, with `Duration` accessors.
//! - Ids are `rollcall-core`'s validated types ([`WorkerId`], [`MachineId`],
//!   [`TokenId`], [`WorkerName`]), so an id that cannot exist is caught
//!   before a request is sent.
//! - Nothing in this crate logs or `Debug`-prints a token.
//!
//! # Invariants
//!
//! - The client never retries by itself beyond one pass over the replicas,
//!   and never sends a non-idempotent call twice once a replica may have
//!   acted on it. Timed retries belong to the worker handle.
//! - The worker handle's background task is owned by the handle: dropping
//!   the handle stops it.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod client;
pub mod error;
pub mod health;
pub mod host;
pub mod incidents;
pub mod model;
pub mod query;
pub mod secret;
pub mod sse;
pub mod worker;

pub use client::{Client, ClientBuilder};
pub use error::{ApiError, Error, ErrorBody, ErrorCode};
pub use health::{
    Bucket, Crashes, FleetHealth, HealthQuery, LastCrash, MachineHealth, RankedMachine,
    RankedWorker, WorkerHealth,
};
pub use incidents::{AlertRule, AlertRuleSpec, Incident, IncidentQuery};
pub use model::{
    BatchHeartbeat, BatchHeartbeatOk, BatchHeartbeatResult, CreatedToken, Event, FullCleanup,
    HeartbeatAck, Labels, Machine, MachineSpec, MachineWithWorkers, NewToken, Page,
    RegisterRequest, Registration, StaleCleanup, Token, Worker,
};
pub use query::{EventQuery, MachineQuery, PageQuery, WorkerQuery};
pub use secret::TokenSecret;
pub use sse::EventStream;
pub use worker::{Phase, WorkerHandle, WorkerOptions, WorkerState};

pub use reqwest::{StatusCode, Url};
pub use rollcall_core::{
    CrashKind, EventReason, EventType, ExitStatus, ExitStatusError, IncidentId, MachineId,
    MachineStatus, OfflineClass, OfflineReason, ScopeError, Status, Timestamp, TokenId, TokenKind,
    TokenScope, WorkerId, WorkerName,
};
