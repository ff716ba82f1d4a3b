//! The liveness policy: how heartbeat intervals are resolved, and when a
//! worker's deadline falls.
//!
//! Everything is arithmetic on values passed in; the current time is always a
//! parameter.

use std::time::Duration;

use thiserror::Error;

use crate::time::Timestamp;

/// A worker's heartbeat timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intervals {
    /// How often the worker is expected to send a heartbeat.
    pub heartbeat_interval: Duration,
    /// How long after its last heartbeat (or registration) the worker is
    /// declared stale.
    pub stale_after: Duration,
}

/// Why requested intervals were refused. Each variant names the field, so
/// the message can be shown to the caller (or the operator, for config) as is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IntervalsError {
    #[error(
        "{stale_key} ({stale_ms} ms) must be at least 2 × {heartbeat_key} ({heartbeat_ms} ms)"
    )]
    TooTight {
        heartbeat_key: &'static str,
        stale_key: &'static str,
        heartbeat_ms: u128,
        stale_ms: u128,
    },
    #[error("{heartbeat_key} ({heartbeat_ms} ms) is below the server's minimum of {min_ms} ms")]
    BelowMinimum {
        heartbeat_key: &'static str,
        heartbeat_ms: u128,
        min_ms: u128,
    },
    #[error("{stale_key} ({stale_ms} ms) is above the server's maximum of {max_ms} ms")]
    AboveMaximum {
        stale_key: &'static str,
        stale_ms: u128,
        max_ms: u128,
    },
}

/// Field names used in error messages; the API and the config use different
/// spellings for the same two values.
#[derive(Debug, Clone, Copy)]
pub struct IntervalKeys {
    pub heartbeat: &'static str,
    pub stale: &'static str,
}

impl IntervalKeys {
    /// As in the registration request body.
    pub const API: IntervalKeys = IntervalKeys {
        heartbeat: "heartbeat_interval_ms",
        stale: "stale_after_ms",
    };
    /// As in the server configuration.
    pub const CONFIG: IntervalKeys = IntervalKeys {
        heartbeat: "heartbeat_interval",
        stale: "stale_after",
    };
}

impl Intervals {
    /// Fills in whichever of the two is missing by the ×3 / ⅓ rule: a missing
    /// `stale_after` is three heartbeat intervals; a missing heartbeat interval
    /// is a third of `stale_after`, rounded down to the millisecond. With
    /// neither, `defaults` apply.
    pub fn complete(
        heartbeat_interval: Option<Duration>,
        stale_after: Option<Duration>,
        defaults: Intervals,
    ) -> Intervals {
        match (heartbeat_interval, stale_after) {
            (Some(h), Some(s)) => Intervals {
                heartbeat_interval: h,
                stale_after: s,
            },
            (Some(h), None) => Intervals {
                heartbeat_interval: h,
                stale_after: h.saturating_mul(3),
            },
            (None, Some(s)) => Intervals {
                heartbeat_interval: Duration::from_millis((s.as_millis() / 3) as u64),
                stale_after: s,
            },
            (None, None) => defaults,
        }
    }

    /// Checks that `stale_after` leaves room for at least one lost heartbeat.
    pub fn check_consistent(&self, keys: IntervalKeys) -> Result<(), IntervalsError> {
        if self.stale_after < self.heartbeat_interval.saturating_mul(2) {
            return Err(IntervalsError::TooTight {
                heartbeat_key: keys.heartbeat,
                stale_key: keys.stale,
                heartbeat_ms: self.heartbeat_interval.as_millis(),
                stale_ms: self.stale_after.as_millis(),
            });
        }
        Ok(())
    }
}

/// The server-wide liveness settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessPolicy {
    /// Used when a worker asks for nothing.
    pub defaults: Intervals,
    /// Smallest heartbeat interval a worker may ask for.
    pub min_heartbeat_interval: Duration,
    /// Largest `stale_after` a worker may ask for.
    pub max_stale_after: Duration,
}

impl LivenessPolicy {
    /// Resolves a worker's requested intervals. Nothing is clamped: a value
    /// out of bounds is an error that names the field.
    pub fn resolve(
        &self,
        heartbeat_interval: Option<Duration>,
        stale_after: Option<Duration>,
    ) -> Result<Intervals, IntervalsError> {
        let keys = IntervalKeys::API;
        let iv = Intervals::complete(heartbeat_interval, stale_after, self.defaults);
        if iv.heartbeat_interval < self.min_heartbeat_interval {
            return Err(IntervalsError::BelowMinimum {
                heartbeat_key: keys.heartbeat,
                heartbeat_ms: iv.heartbeat_interval.as_millis(),
                min_ms: self.min_heartbeat_interval.as_millis(),
            });
        }
        if iv.stale_after > self.max_stale_after {
            return Err(IntervalsError::AboveMaximum {
                stale_key: keys.stale,
                stale_ms: iv.stale_after.as_millis(),
                max_ms: self.max_stale_after.as_millis(),
            });
        }
        iv.check_consistent(keys)?;
        Ok(iv)
    }
}

/// When a worker becomes stale: `stale_after` after its last heartbeat, or
/// after its registration if it has not sent one. A record with neither (an
/// imported or legacy row) is stale at once: its deadline is the epoch.
pub fn deadline(
    last_heartbeat: Option<Timestamp>,
    registered_at: Option<Timestamp>,
    stale_after: Duration,
) -> Timestamp {
    match last_heartbeat.or(registered_at) {
        Some(t) => t.plus(stale_after),
        None => Timestamp::EPOCH,
    }
}

/// A worker's deadline after a heartbeat taken at `beat`: `stale_after`
/// after it, and never earlier than the deadline the worker already holds
/// in its live session (`held`). A heartbeat only ever moves a deadline
/// later, so heartbeats applied in any order give the same deadline.
/// `held` is `None` when the worker has no live deadline (it is offline or
/// being resumed): the deadline then starts afresh from the heartbeat.
pub fn extend_deadline(
    held: Option<Timestamp>,
    beat: Timestamp,
    stale_after: Duration,
) -> Timestamp {
    let fresh = beat.plus(stale_after);
    held.map_or(fresh, |d| d.max(fresh))
}

/// The deadline of a live worker when a server (re)starts serving at
/// `ready_at`: at least one full `stale_after` from then, because the worker
/// could not reach a server that was down (the restart grace).
pub fn restart_deadline(
    stored: Timestamp,
    ready_at: Timestamp,
    stale_after: Duration,
) -> Timestamp {
    stored.max(ready_at.plus(stale_after))
}

/// A deadline has passed once the clock is strictly beyond it.
pub fn is_expired(deadline: Timestamp, now: Timestamp) -> bool {
    now > deadline
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> LivenessPolicy {
        LivenessPolicy {
            defaults: Intervals {
                heartbeat_interval: Duration::from_secs(30),
                stale_after: Duration::from_secs(90),
            },
            min_heartbeat_interval: Duration::from_millis(50),
            max_stale_after: Duration::from_secs(86_400),
        }
    }

    #[test]
    fn thirds_and_triples() {
        let p = policy();
        let iv = p.resolve(None, Some(Duration::from_millis(1000))).unwrap();
        assert_eq!(iv.heartbeat_interval, Duration::from_millis(333));
        let iv = p.resolve(Some(Duration::from_millis(100)), None).unwrap();
        assert_eq!(iv.stale_after, Duration::from_millis(300));
        assert_eq!(p.resolve(None, None).unwrap(), p.defaults);
    }

    #[test]
    fn bounds_are_errors_not_clamps() {
        let p = policy();
        let e = p
            .resolve(Some(Duration::from_millis(10)), None)
            .unwrap_err();
        assert!(e.to_string().contains("heartbeat_interval_ms"), "{e}");
        let e = p
            .resolve(None, Some(Duration::from_secs(86_401)))
            .unwrap_err();
        assert!(e.to_string().contains("stale_after_ms"), "{e}");
        let e = p
            .resolve(Some(Duration::from_secs(10)), Some(Duration::from_secs(19)))
            .unwrap_err();
        assert!(matches!(e, IntervalsError::TooTight { .. }));
        assert!(p
            .resolve(Some(Duration::from_secs(10)), Some(Duration::from_secs(20)))
            .is_ok());
    }

    #[test]
    fn no_heartbeat_measures_from_registration() {
        let reg = Timestamp::from_millis(1_000);
        let d = Duration::from_millis(500);
        assert_eq!(deadline(None, Some(reg), d), Timestamp::from_millis(1_500));
        assert_eq!(
            deadline(Some(Timestamp::from_millis(1_200)), Some(reg), d),
            Timestamp::from_millis(1_700)
        );
        assert_eq!(deadline(None, None, d), Timestamp::EPOCH);
    }

    proptest! {
        #[test]
        fn resolved_intervals_always_satisfy_the_rules(
            h in proptest::option::of(0u64..200_000_000),
            s in proptest::option::of(0u64..200_000_000),
        ) {
            let p = policy();
            let h = h.map(Duration::from_millis);
            let s = s.map(Duration::from_millis);
            if let Ok(iv) = p.resolve(h, s) {
                prop_assert!(iv.stale_after >= iv.heartbeat_interval * 2);
                prop_assert!(iv.heartbeat_interval >= p.min_heartbeat_interval);
                prop_assert!(iv.stale_after <= p.max_stale_after);
                if let Some(h) = h { prop_assert_eq!(iv.heartbeat_interval, h); }
                if let Some(s) = s { prop_assert_eq!(iv.stale_after, s); }
            }
        }

        #[test]
        fn a_heartbeat_within_stale_after_never_expires(
            last in 0i64..1_000_000_000_000,
            stale in 1u64..100_000_000,
            gap in 0u64..100_000_000,
        ) {
            let stale = Duration::from_millis(stale);
            let last = Timestamp::from_millis(last);
            let d = deadline(Some(last), Some(Timestamp::EPOCH), stale);
            let now = last.plus(Duration::from_millis(gap));
            // Expired exactly when more than stale_after has passed.
            prop_assert_eq!(is_expired(d, now), Duration::from_millis(gap) > stale);
        }

        #[test]
        fn a_heartbeat_never_moves_a_deadline_earlier(
            held in proptest::option::of(-1_000_000_000_000i64..2_000_000_000_000),
            beat in -1_000_000_000_000i64..2_000_000_000_000,
            stale in 0u64..100_000_000,
        ) {
            let stale = Duration::from_millis(stale);
            let held = held.map(Timestamp::from_millis);
            let beat = Timestamp::from_millis(beat);
            let d = extend_deadline(held, beat, stale);
            prop_assert!(d >= beat.plus(stale));
            if let Some(h) = held {
                prop_assert!(d >= h);
            }
            // It is one of the two, not something in between or beyond.
            prop_assert!(d == beat.plus(stale) || Some(d) == held);
        }

        #[test]
        fn heartbeats_in_any_order_give_the_same_deadline(
            held in proptest::option::of(0i64..2_000_000_000_000),
            a in 0i64..2_000_000_000_000,
            b in 0i64..2_000_000_000_000,
            stale in 0u64..100_000_000,
        ) {
            let stale = Duration::from_millis(stale);
            let held = held.map(Timestamp::from_millis);
            let (a, b) = (Timestamp::from_millis(a), Timestamp::from_millis(b));
            let ab = extend_deadline(Some(extend_deadline(held, a, stale)), b, stale);
            let ba = extend_deadline(Some(extend_deadline(held, b, stale)), a, stale);
            prop_assert_eq!(ab, ba);
            // And a heartbeat counted twice changes nothing more.
            prop_assert_eq!(extend_deadline(Some(ab), a, stale), ab);
        }

        #[test]
        fn a_worker_is_live_for_stale_after_past_its_latest_heartbeat(
            held in proptest::option::of(0i64..2_000_000_000_000),
            beat in 0i64..2_000_000_000_000,
            stale in 0u64..100_000_000,
            gap in 0u64..200_000_000,
        ) {
            let stale = Duration::from_millis(stale);
            let held = held.map(Timestamp::from_millis);
            let beat = Timestamp::from_millis(beat);
            let d = extend_deadline(held, beat, stale);
            let now = beat.plus(Duration::from_millis(gap));
            if Duration::from_millis(gap) <= stale {
                prop_assert!(!is_expired(d, now));
            } else if held.is_none_or(|h| h < now) {
                prop_assert!(is_expired(d, now));
            }
            // Starting afresh, it is the deadline of a worker whose last
            // heartbeat was `beat`.
            prop_assert_eq!(
                extend_deadline(None, beat, stale),
                deadline(Some(beat), Some(Timestamp::EPOCH), stale)
            );
        }

        #[test]
        fn restart_grace_gives_a_full_period(
            stored in 0i64..2_000_000_000_000,
            ready in 0i64..2_000_000_000_000,
            stale in 0u64..100_000_000,
        ) {
            let stale = Duration::from_millis(stale);
            let ready = Timestamp::from_millis(ready);
            let d = restart_deadline(Timestamp::from_millis(stored), ready, stale);
            prop_assert!(d >= ready.plus(stale));
            prop_assert!(d >= Timestamp::from_millis(stored));
        }
    }
}
