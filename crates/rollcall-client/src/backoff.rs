//! Timing arithmetic for heartbeats and retries, as pure functions.
//!
//! Randomness is an input (`r`, uniform in `[0, 1)`), so the arithmetic is
//! tested exhaustively without a clock or a random source; the worker handle
//! draws `r` with [`unit()`].
//!
//! - [`heartbeat_delay`]: the interval ±10 %. Thousands of workers started
//!   together (a fleet rollout, a server restart) would otherwise heartbeat in
//!   lockstep forever and hit the server in bursts. +10 % stays far inside
//!   `stale_after`, which the server keeps at ≥ 2 × the interval.
//! - [`retry_delay`]: exponential backoff with "equal jitter": attempt `n`
//!   waits between half and all of `min(cap, base · 2ⁿ⁻¹)`. The cap is the
//!   heartbeat interval, so once the server is back a worker notices within
//!   one interval rather than after a long exponential sleep; the lower half
//!   stays random so a fleet reconnecting after an outage spreads out.

use std::time::Duration;

/// The fraction by which a heartbeat delay may deviate from the interval.
pub const HEARTBEAT_JITTER: f64 = 0.1;

/// A uniform random number in `[0, 1)` from the thread's generator.
pub fn unit() -> f64 {
    rand::random::<f64>()
}

/// Clamps `r` into `[0, 1)`, treating NaN as 0, so that a bad input can
/// never stretch a delay.
fn clamp_unit(r: f64) -> f64 {
    if r.is_nan() {
        0.0
    } else {
        r.clamp(0.0, 1.0)
    }
}

/// The delay before the next heartbeat: `interval · (0.9 + 0.2 · r)`.
pub fn heartbeat_delay(interval: Duration, r: f64) -> Duration {
    let factor = 1.0 - HEARTBEAT_JITTER + 2.0 * HEARTBEAT_JITTER * clamp_unit(r);
    interval.mul_f64(factor)
}

/// The ceiling of attempt `attempt` (1-based) before jitter:
/// `min(cap, base · 2^(attempt-1))`, computed without overflow.
pub fn retry_ceiling(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << doublings).min(cap)
}

/// The delay before retry number `attempt` (1-based; 0 is treated as 1):
/// uniformly between half and all of [`retry_ceiling`].
pub fn retry_delay(attempt: u32, base: Duration, cap: Duration, r: f64) -> Duration {
    let ceiling = retry_ceiling(attempt.max(1), base, cap);
    let half = ceiling / 2;
    half + (ceiling - half).mul_f64(clamp_unit(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn heartbeat_delay_examples() {
        let i = Duration::from_secs(30);
        assert_eq!(heartbeat_delay(i, 0.0), Duration::from_secs(27));
        assert_eq!(heartbeat_delay(i, 0.5), Duration::from_secs(30));
        assert!(heartbeat_delay(i, 0.999_999) < Duration::from_secs(33));
        // Bad randomness cannot stretch the delay.
        assert_eq!(heartbeat_delay(i, f64::NAN), Duration::from_secs(27));
        assert_eq!(heartbeat_delay(i, 7.0), Duration::from_secs(33));
    }

    #[test]
    fn retry_ceiling_doubles_up_to_the_cap() {
        let base = Duration::from_millis(250);
        let cap = Duration::from_secs(30);
        let ceilings: Vec<_> = (1..=9).map(|n| retry_ceiling(n, base, cap)).collect();
        assert_eq!(
            ceilings,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000].map(Duration::from_millis)
        );
        assert_eq!(retry_ceiling(u32::MAX, base, cap), cap);
        assert_eq!(retry_ceiling(0, base, cap), base);
        // A cap below the base wins: with a 100 ms interval, retries are
        // never slower than the interval.
        assert_eq!(
            retry_ceiling(1, S, Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn retry_delay_examples() {
        let base = Duration::from_millis(200);
        assert_eq!(retry_delay(1, base, S, 0.0), Duration::from_millis(100));
        assert_eq!(retry_delay(1, base, S, 0.5), Duration::from_millis(150));
        assert_eq!(retry_delay(0, base, S, 0.0), Duration::from_millis(100));
        assert_eq!(retry_delay(10, base, S, 0.0), Duration::from_millis(500));
    }

    proptest! {
        #[test]
        fn heartbeat_delay_stays_within_ten_percent(i_ms in 1u64..86_400_000, r in 0.0f64..1.0) {
            let i = Duration::from_millis(i_ms);
            let d = heartbeat_delay(i, r);
            prop_assert!(d >= i.mul_f64(0.9) && d <= i.mul_f64(1.1), "{d:?} for {i:?}");
        }

        #[test]
        fn retry_delay_is_bounded_by_half_and_all_of_the_ceiling(
            attempt in 0u32..200,
            base_ms in 1u64..10_000,
            cap_ms in 1u64..86_400_000,
            r in 0.0f64..1.0,
        ) {
            let base = Duration::from_millis(base_ms);
            let cap = Duration::from_millis(cap_ms);
            let d = retry_delay(attempt, base, cap, r);
            let ceiling = retry_ceiling(attempt.max(1), base, cap);
            prop_assert!(d <= cap);
            prop_assert!(d <= ceiling);
            prop_assert!(d >= ceiling / 2);
        }

        #[test]
        fn retry_ceiling_never_shrinks(
            attempt in 1u32..100,
            base_ms in 1u64..10_000,
            cap_ms in 1u64..86_400_000,
        ) {
            let base = Duration::from_millis(base_ms);
            let cap = Duration::from_millis(cap_ms);
            prop_assert!(retry_ceiling(attempt + 1, base, cap) >= retry_ceiling(attempt, base, cap));
        }
    }
}
