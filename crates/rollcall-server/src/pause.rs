//! Pause detection: rollcall notices when it was not running.
//!
//! A stopped process (SIGSTOP), a paused or migrated VM, a CPU-throttled
//! container, a sleeping host or a long stall all look the same from the
//! inside: time passed and nobody was looking. The workers' heartbeats of
//! that time wait in the socket buffers; the deadlines they would have moved
//! passed on the wall clock. Without a rule, whichever task wakes first —
//! often the detector — expires live workers before their waiting
//! heartbeats are read: false offlines because rollcall was not looking.
//!
//! [`PauseWatch::check`] compares the time since anyone last looked, on the
//! monotonic clock and on the wall clock, with the threshold. A ticker calls
//! it every [`TICK`]; the detector and the sweep call it before they expire
//! anything, so a pause is noticed by whoever wakes first. A pause is then
//! treated like a restart (ARCHITECTURE.md, invariant 6): every live worker
//! gets the restart grace, a full `stale_after` from the wake-up; the pause
//! is logged (one warn line) and counted (`rollcall_pauses_total`,
//! `rollcall_paused_seconds_total`). A worker that stays silent after the
//! wake-up is still detected, within `stale_after` of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rollcall_core::Timestamp;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::clock::Clock;
use crate::engine::Engine;
use crate::metrics::Metrics;

/// How often the ticker looks.
pub const TICK: Duration = Duration::from_millis(100);

/// A gap since the last look longer than this is a pause. Well above the
/// ticker's period and a busy runtime's scheduling delays, so that load is
/// not mistaken for a pause (each pause grants a grace, which delays the
/// detection of silent workers).
pub const THRESHOLD: Duration = Duration::from_secs(1);

/// The last look, on both clocks.
#[derive(Debug, Clone, Copy)]
struct Look {
    mono: Instant,
    wall: Timestamp,
}

/// A pause that was noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    /// How long nobody was looking (the larger of the two clocks' gaps).
    pub length: Duration,
    /// The wake-up, on the wall clock: the grace counts from here.
    pub woke_at: Timestamp,
}

/// See the module docs.
#[derive(Debug)]
pub struct PauseWatch {
    last: Mutex<Look>,
    threshold: Duration,
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl PauseWatch {
    pub fn new(engine: Arc<Engine>, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        Self::with_threshold(engine, clock, metrics, THRESHOLD)
    }

    pub fn with_threshold(
        engine: Arc<Engine>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        threshold: Duration,
    ) -> Self {
        let last = Look {
            mono: Instant::now(),
            wall: clock.now(),
        };
        PauseWatch {
            last: Mutex::new(last),
            threshold,
            engine,
            clock,
            metrics,
        }
    }

    /// Looks now. When the last look is longer ago than the threshold, the
    /// server was paused: every live worker gets the restart grace before
    /// this returns (a concurrent `check` waits for it), so a caller that
    /// goes on to expire deadlines never expires one the pause let pass.
    pub fn check(&self) -> Option<Pause> {
        let mut last = self.last.lock();
        let mono = Instant::now();
        let wall = self.clock.now();
        let mono_gap = mono.saturating_duration_since(last.mono);
        // A wall clock stepped backwards is not a pause.
        let wall_gap = Duration::from_millis(wall.diff_ms(last.wall).max(0) as u64);
        *last = Look { mono, wall };
        let length = mono_gap.max(wall_gap);
        if length <= self.threshold {
            return None;
        }
        let graced = self.engine.grace_live(wall);
        warn!(
            paused_ms = length.as_millis() as u64,
            monotonic_gap_ms = mono_gap.as_millis() as u64,
            wall_gap_ms = wall_gap.as_millis() as u64,
            workers = graced,
            "this server was not running (paused, stopped or starved); live workers get the restart grace"
        );
        self.metrics.paused(length);
        Some(Pause {
            length,
            woke_at: wall,
        })
    }

    /// Looks every [`TICK`] until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            self.check();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use rollcall_core::{Labels, MachineId, Status, TokenHash, WorkerId, WorkerName};
    use rollcall_store::WorkerRecord;

    use super::*;

    /// A wall clock the test moves by hand (the monotonic clock is the
    /// real one and barely moves).
    #[derive(Debug, Default)]
    struct Wall(AtomicI64);

    impl Clock for Wall {
        fn now(&self) -> Timestamp {
            Timestamp::from_millis(self.0.load(Ordering::SeqCst))
        }
    }

    #[test]
    fn a_jump_of_the_wall_clock_past_the_threshold_is_a_pause_that_graces_live_workers() {
        let wall = Arc::new(Wall(AtomicI64::new(100_000)));
        let engine = Arc::new(Engine::new());
        let stale = Duration::from_secs(2);
        let id = WorkerId::generate(Timestamp::from_millis(1), [1; 10]);
        engine.apply(
            WorkerRecord {
                id: id.clone(),
                name: WorkerName::parse("w").unwrap(),
                machine_id: MachineId::parse("m").unwrap(),
                status: Status::Online,
                offline_reason: None,
                session: 1,
                labels: Labels::default(),
                heartbeat_interval: stale / 4,
                stale_after: stale,
                registered_at: Timestamp::from_millis(1),
                last_heartbeat_at: None,
                status_changed_at: Timestamp::from_millis(1),
                token_hash: TokenHash::of("rc_worker_test"),
            },
            Timestamp::from_millis(101_000),
        );
        let metrics = Arc::new(Metrics::new());
        let watch = PauseWatch::new(engine.clone(), wall.clone(), metrics.clone());

        // Within the threshold: nothing.
        wall.0.store(100_900, Ordering::SeqCst);
        assert_eq!(watch.check(), None);
        // Woken 5 s later: a pause, and the worker's deadline (passed on
        // the wall clock) is a full stale_after from the wake-up.
        wall.0.store(105_900, Ordering::SeqCst);
        let pause = watch.check().expect("a pause");
        assert!(pause.length >= Duration::from_secs(5), "{pause:?}");
        assert_eq!(pause.woke_at, Timestamp::from_millis(105_900));
        assert_eq!(
            engine.get(&id).unwrap().deadline,
            Timestamp::from_millis(107_900)
        );
        assert!(engine
            .claim_expired(Timestamp::from_millis(107_000), 10)
            .is_empty());
        // Counted once; the next look is calm again.
        assert_eq!(watch.check(), None);
        let text = metrics.render(&engine.census());
        assert!(text.contains("rollcall_pauses_total 1"), "{text}");
        // A wall clock stepped backwards is not a pause.
        wall.0.store(50_000, Ordering::SeqCst);
        assert_eq!(watch.check(), None);
    }
}
