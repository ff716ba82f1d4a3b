//! Timestamps as integer milliseconds since the Unix epoch.
//!
//! rollcall stores and compares instants as plain integers: deadlines are
//! additions, ordering is integer ordering, and the store needs no date type.
//! Only at the edges (JSON) is a timestamp rendered as RFC 3339 in UTC with
//! exactly three fractional digits, as the HTTP contract requires.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

/// An instant, in milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// A timestamp from milliseconds since the epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// `self + d`, saturating instead of overflowing.
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_ms(d)))
    }

    /// `self - d`, saturating instead of overflowing.
    pub fn minus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_sub(duration_ms(d)))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    /// Signed difference `self - other` in milliseconds.
    pub fn diff_ms(self, other: Timestamp) -> i64 {
        self.0.saturating_sub(other.0)
    }

    /// RFC 3339 in UTC with millisecond precision: `2026-11-28T07:18:40.123Z`.
    ///
    /// Every heartbeat answer carries one, so years 0–9999 are rendered by
    /// plain arithmetic; the rest go through the `time` crate.
    pub fn to_rfc3339(self) -> String {
        match self.render_fast() {
            Some(s) => s,
            None => self.render_slow(),
        }
    }

    fn render_fast(self) -> Option<String> {
        let days = self.0.div_euclid(86_400_000);
        let in_day = self.0.rem_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days);
        if !(0..=9999).contains(&year) {
            return None;
        }
        let (h, rest) = (in_day / 3_600_000, in_day % 3_600_000);
        let (m, rest) = (rest / 60_000, rest % 60_000);
        let (sec, milli) = (rest / 1000, rest % 1000);
        let mut out = [0u8; 24];
        let mut put = |at: usize, value: i64, digits: usize| {
            let mut v = value;
            for i in (0..digits).rev() {
                out[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, year, 4);
        put(5, month, 2);
        put(8, day, 2);
        put(11, h, 2);
        put(14, m, 2);
        put(17, sec, 2);
        put(20, milli, 3);
        out[4] = b'-';
        out[7] = b'-';
        out[10] = b'T';
        out[13] = b':';
        out[16] = b':';
        out[19] = b'.';
        out[23] = b'Z';
        String::from_utf8(out.to_vec()).ok()
    }

    fn render_slow(self) -> String {
        const FORMAT: &[time::format_description::FormatItem<'static>] = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        match OffsetDateTime::from_unix_timestamp_nanos(self.0 as i128 * 1_000_000) {
            Ok(dt) => dt
                .format(FORMAT)
                .unwrap_or_else(|_| format!("{}ms", self.0)),
            Err(_) => format!("{}ms", self.0),
        }
    }

    /// Parses any RFC 3339 timestamp, truncating to milliseconds.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let dt = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        Some(Timestamp((dt.unix_timestamp_nanos() / 1_000_000) as i64))
    }
}

/// The proleptic Gregorian (year, month, day) of a day number counted from
/// 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A duration in whole milliseconds, saturating at `i64::MAX`.
pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 timestamp: {s}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn renders_millisecond_utc() {
        let t = Timestamp::from_millis(1_795_850_320_123);
        assert_eq!(t.to_rfc3339(), "2026-11-28T07:18:40.123Z");
        assert_eq!(Timestamp::EPOCH.to_rfc3339(), "1970-01-01T00:00:00.000Z");
    }

    proptest! {
        #[test]
        fn fast_rendering_matches_the_time_crate(ms in -62_167_219_200_000i64..253_402_300_800_000) {
            let t = Timestamp::from_millis(ms);
            prop_assert_eq!(t.to_rfc3339(), t.render_slow());
        }

        #[test]
        fn rfc3339_round_trips(ms in 0i64..4_102_444_800_000) {
            let t = Timestamp::from_millis(ms);
            prop_assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
        }

        #[test]
        fn plus_then_since_is_identity(ms in 0i64..4_102_444_800_000, d in 0u64..10_000_000_000) {
            let t = Timestamp::from_millis(ms);
            let d = Duration::from_millis(d);
            prop_assert_eq!(t.plus(d).since(t), d);
        }
    }
}
