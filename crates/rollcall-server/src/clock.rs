//! Time as an input. The server reads the current time only through a
//! [`Clock`], so tests can substitute one; production uses the system clock.

use std::fmt::Debug;
use std::time::{SystemTime, UNIX_EPOCH};

use rollcall_core::Timestamp;

/// A source of the current time.
pub trait Clock: Send + Sync + Debug + 'static {
    /// Now, in milliseconds since the Unix epoch.
    fn now(&self) -> Timestamp;
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp::from_millis(ms)
    }
}

/// A wall clock that advances with tokio's (pausable) clock: with
/// `tokio::time::pause()` a test moves it forward by advancing tokio's time.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin_wall: Timestamp,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start` now.
    pub fn starting_at(start: Timestamp) -> Self {
        TokioClock {
            origin_wall: start,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.origin_wall.plus(self.origin.elapsed())
    }
}
