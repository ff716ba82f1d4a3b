//! Health arithmetic: availability, downtime, crashes and MTBF of a worker
//! or a machine over a window, exactly, in integer milliseconds. No I/O.
//!
//! The history of an entity (a worker or a machine) is a sequence of
//! [`Span`]s: from one status change to the next it was either *live*
//! (`online` or `draining`; a machine: with a live worker) or *down*
//! (`offline`). Its first span begins when it was registered (a machine:
//! first seen) and its last ends when it was deleted, or is still open.
//!
//! Time when no rollcall server was observing is **no data**. The servers
//! record their observations ([`Observation`]); each carries the total
//! no-data time before it (`no_data_before_ms`), so the no-data time up to
//! any instant, `N(t)`, is one lookup, and the no-data time within any
//! interval `[a, b)` is `N(b) − N(a)`. Within a window, per entity:
//!
//! - existed = time of its spans within the window;
//! - no data = the part of that when no server observed;
//! - observed = existed − no data = live + down;
//! - availability = live ÷ observed (none when nothing was observed);
//! - MTBF = live ÷ crashes (none without a crash).

use std::time::Duration;

use crate::model::{CrashKind, OfflineClass};
use crate::time::Timestamp;

/// How often a running server extends its observation: a server killed
/// without warning leaves at most this much observed time it did not see.
pub const OBSERVE_INTERVAL: Duration = Duration::from_secs(1);

/// The latest observation counts as still running at query time when it was
/// extended at most this long ago (three extension intervals), so a live
/// server's last second is not shown as no data.
pub const ONGOING_SLACK_MS: i64 = 3_000;

/// The longest window and the most buckets a query may ask for.
pub const MAX_BUCKETS: u32 = 1_000;

/// One span of time a rollcall server observed (from its start, or its
/// takeover of the active role, to its last extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub start: Timestamp,
    pub end: Timestamp,
    /// Total no-data time before `start`, since the first observation.
    pub no_data_before_ms: i64,
}

/// The observations relevant to a query, ordered by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observations {
    rows: Vec<Observation>,
}

impl Observations {
    /// Orders `rows` by start. When `now` is given and the latest
    /// observation was extended within [`ONGOING_SLACK_MS`] of it, that
    /// observation is taken to run until `now` (a server is observing).
    pub fn new(mut rows: Vec<Observation>, now: Option<Timestamp>) -> Self {
        rows.sort_by_key(|o| o.start);
        if let (Some(now), Some(last)) = (now, rows.last_mut()) {
            if now.diff_ms(last.end) <= ONGOING_SLACK_MS && now > last.end {
                last.end = now;
            }
        }
        Observations { rows }
    }

    /// The rows, ordered by start.
    pub fn rows(&self) -> &[Observation] {
        &self.rows
    }

    /// `N(t)`: total no-data time before `t`. Time before the first
    /// observation counts as observed (history older than the records of
    /// observation); with no observation at all, everything does.
    pub fn no_data_before(&self, t: Timestamp) -> i64 {
        let i = self.rows.partition_point(|o| o.start <= t);
        if i == 0 {
            return 0;
        }
        let o = self.rows[i - 1];
        if t <= o.end {
            o.no_data_before_ms
        } else {
            o.no_data_before_ms + t.diff_ms(o.end)
        }
    }

    /// No-data time within `[a, b)` (0 when `b <= a`).
    pub fn no_data(&self, a: Timestamp, b: Timestamp) -> i64 {
        if b <= a {
            return 0;
        }
        (self.no_data_before(b) - self.no_data_before(a)).clamp(0, b.diff_ms(a))
    }

    /// `no_data_before_ms` for an observation that begins at `start`, after
    /// every one here: the time since the latest one ended is no data.
    pub fn next_no_data_before(&self, start: Timestamp) -> i64 {
        match self.rows.last() {
            None => 0,
            Some(o) => o.no_data_before_ms + start.diff_ms(o.end).max(0),
        }
    }
}

/// `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: Timestamp,
    pub to: Timestamp,
}

/// A window or a bucket count that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error(
        "window must be a duration such as 1h, 24h, 7d or 30d (<n>m, <n>h or <n>d), got {0:?}"
    )]
    Syntax(String),
    #[error("the window must end after it begins")]
    Empty,
    #[error("buckets must be within 1..={MAX_BUCKETS}, got {0}")]
    Buckets(u64),
    #[error(
        "{buckets} buckets do not fit a window of {ms} ms: at most one bucket per millisecond"
    )]
    TooManyBuckets { buckets: u64, ms: i64 },
}

impl Window {
    /// `[from, to)`, which must not be empty.
    pub fn new(from: Timestamp, to: Timestamp) -> Result<Self, WindowError> {
        if to <= from {
            return Err(WindowError::Empty);
        }
        Ok(Window { from, to })
    }

    /// Length in milliseconds.
    pub fn len_ms(self) -> i64 {
        self.to.diff_ms(self.from)
    }

    /// The window cut into `n` consecutive buckets that cover it exactly
    /// (lengths differ by at most one millisecond).
    pub fn split(self, n: u64) -> Result<Vec<Window>, WindowError> {
        if n == 0 || n > u64::from(MAX_BUCKETS) {
            return Err(WindowError::Buckets(n));
        }
        let len = self.len_ms();
        if n as i64 > len {
            return Err(WindowError::TooManyBuckets {
                buckets: n,
                ms: len,
            });
        }
        let n = n as i64;
        let at = |i: i64| {
            // i * len / n without overflow for any window a timestamp holds.
            let v = (i as i128 * len as i128 / n as i128) as i64;
            Timestamp::from_millis(self.from.as_millis() + v)
        };
        Ok((0..n)
            .map(|i| Window {
                from: at(i),
                to: at(i + 1),
            })
            .collect())
    }

    fn clip(self, start: Timestamp, end: Option<Timestamp>) -> Option<(Timestamp, Timestamp)> {
        let a = start.max(self.from);
        let b = end.map_or(self.to, |e| e.min(self.to));
        (a < b).then_some((a, b))
    }

    fn contains(self, t: Timestamp) -> bool {
        self.from <= t && t < self.to
    }
}

/// Parses a window length: `<n>m`, `<n>h` or `<n>d` (e.g. `1h`, `24h`,
/// `7d`, `30d`), n ≥ 1.
pub fn parse_window(s: &str) -> Result<Duration, WindowError> {
    let err = || WindowError::Syntax(s.to_owned());
    let unit = s.chars().last().ok_or_else(err)?;
    let n = &s[..s.len() - unit.len_utf8()];
    // 1 to 9 digits, without a leading zero (so never zero).
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.len() > 9 || n.starts_with('0') {
        return Err(err());
    }
    let n: u64 = n.parse().map_err(|_| err())?;
    let secs = match unit {
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return Err(err()),
    };
    if n == 0 {
        return Err(err());
    }
    Ok(Duration::from_secs(n * secs))
}

/// Why an entity went down, as classified by
/// [`OfflineReason::classify`](crate::OfflineReason::classify).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offline {
    pub at: Timestamp,
    pub class: OfflineClass,
    pub kind: Option<CrashKind>,
}

/// A span of an entity's history: live or down from `start` to `end`
/// (`None`: still so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    pub live: bool,
    /// For a worker's down span: the offline that began it.
    pub cause: Option<(OfflineClass, Option<CrashKind>)>,
}

impl Span {
    /// The offline that began this span, if it is one.
    pub fn offline(&self) -> Option<Offline> {
        self.cause.map(|(class, kind)| Offline {
            at: self.start,
            class,
            kind,
        })
    }
}

/// Crashes by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Crashes {
    pub stale: u64,
    pub replaced: u64,
    pub exited: u64,
}

impl Crashes {
    pub fn total(&self) -> u64 {
        self.stale + self.replaced + self.exited
    }

    pub fn add(&mut self, kind: CrashKind, n: u64) {
        match kind {
            CrashKind::Stale => self.stale += n,
            CrashKind::Replaced => self.replaced += n,
            CrashKind::Exited => self.exited += n,
        }
    }
}

/// The figures of an entity (or of the sum of many) over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Time it existed within the window.
    pub existed_ms: i64,
    /// Existed time when no server was observing.
    pub no_data_ms: i64,
    /// Observed time live.
    pub live_ms: i64,
    /// Observed time down.
    pub down_ms: i64,
    pub crashes: Crashes,
    pub graceful: u64,
    pub administrative: u64,
    /// The latest crash in the window.
    pub last_crash: Option<(Timestamp, CrashKind)>,
    /// Crashes in the window's last hour.
    pub crashes_last_hour: u64,
}

impl Figures {
    /// Observed time: live + down = existed − no data.
    pub fn observed_ms(&self) -> i64 {
        self.live_ms + self.down_ms
    }

    /// live ÷ observed; `None` when nothing was observed.
    pub fn availability(&self) -> Option<f64> {
        let o = self.observed_ms();
        (o > 0).then(|| self.live_ms as f64 / o as f64)
    }

    /// Mean time between failures: live time ÷ crashes; `None` without one.
    pub fn mtbf_ms(&self) -> Option<u64> {
        let c = self.crashes.total();
        (c > 0).then(|| self.live_ms.max(0) as u64 / c)
    }

    /// Whether it crashed at least `threshold` times in the window's last
    /// hour (never with a threshold of 0).
    pub fn flapping(&self, threshold: u32) -> bool {
        threshold > 0 && self.crashes_last_hour >= u64::from(threshold)
    }

    /// Counts one offline.
    pub fn count(&mut self, o: Offline, window: Window) {
        if !window.contains(o.at) {
            return;
        }
        match o.class {
            OfflineClass::Graceful => self.graceful += 1,
            OfflineClass::Administrative => self.administrative += 1,
            OfflineClass::Crash => {
                let kind = o.kind.unwrap_or(CrashKind::Exited);
                self.crashes.add(kind, 1);
                if self.last_crash.is_none_or(|(at, _)| o.at >= at) {
                    self.last_crash = Some((o.at, kind));
                }
                if o.at.diff_ms(window.to) >= -3_600_000 {
                    self.crashes_last_hour += 1;
                }
            }
        }
    }

    /// Adds one span's time.
    pub fn add_span(&mut self, span: &Span, obs: &Observations, window: Window) {
        let Some((a, b)) = window.clip(span.start, span.end) else {
            return;
        };
        let existed = b.diff_ms(a);
        let no_data = obs.no_data(a, b);
        self.existed_ms += existed;
        self.no_data_ms += no_data;
        if span.live {
            self.live_ms += existed - no_data;
        } else {
            self.down_ms += existed - no_data;
        }
    }

    /// Adds another entity's figures (for totals).
    pub fn merge(&mut self, o: &Figures) {
        self.existed_ms += o.existed_ms;
        self.no_data_ms += o.no_data_ms;
        self.live_ms += o.live_ms;
        self.down_ms += o.down_ms;
        self.crashes.stale += o.crashes.stale;
        self.crashes.replaced += o.crashes.replaced;
        self.crashes.exited += o.crashes.exited;
        self.graceful += o.graceful;
        self.administrative += o.administrative;
        self.crashes_last_hour += o.crashes_last_hour;
        if let Some((at, k)) = o.last_crash {
            if self.last_crash.is_none_or(|(mine, _)| at >= mine) {
                self.last_crash = Some((at, k));
            }
        }
    }
}

/// The figures of one entity over `window`: the time of its `spans`, and
/// the `offlines` that count against it (a worker's own; a machine's
/// workers').
pub fn figures(
    spans: &[Span],
    offlines: &[Offline],
    obs: &Observations,
    window: Window,
) -> Figures {
    let mut f = Figures::default();
    for s in spans {
        f.add_span(s, obs, window);
    }
    for o in offlines {
        f.count(*o, window);
    }
    f
}

/// [`figures`] for each bucket of `window`.
pub fn buckets(
    spans: &[Span],
    offlines: &[Offline],
    obs: &Observations,
    buckets: &[Window],
) -> Vec<Figures> {
    buckets
        .iter()
        .map(|b| figures(spans, offlines, obs, *b))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn live(a: i64, b: Option<i64>) -> Span {
        Span {
            start: t(a),
            end: b.map(t),
            live: true,
            cause: None,
        }
    }

    fn down(a: i64, b: Option<i64>, kind: Option<CrashKind>) -> Span {
        let class = if kind.is_some() {
            OfflineClass::Crash
        } else {
            OfflineClass::Graceful
        };
        Span {
            start: t(a),
            end: b.map(t),
            live: false,
            cause: Some((class, kind)),
        }
    }

    fn obs(rows: &[(i64, i64)]) -> Observations {
        // no_data_before from the gaps between rows.
        let mut out: Vec<Observation> = Vec::new();
        for &(s, e) in rows {
            let n = Observations { rows: out.clone() }.next_no_data_before(t(s));
            out.push(Observation {
                start: t(s),
                end: t(e),
                no_data_before_ms: n,
            });
        }
        Observations::new(out, None)
    }

    fn offlines(spans: &[Span]) -> Vec<Offline> {
        spans.iter().filter_map(Span::offline).collect()
    }

    #[test]
    fn a_known_sequence() {
        // Registered at 0, crashed (stale) at 600, back at 700, shut down at
        // 900, back at 950; window [0, 1000), all observed.
        let spans = [
            live(0, Some(600)),
            down(600, Some(700), Some(CrashKind::Stale)),
            live(700, Some(900)),
            down(900, Some(950), None),
            live(950, None),
        ];
        let w = Window::new(t(0), t(1000)).unwrap();
        let f = figures(&spans, &offlines(&spans), &obs(&[(0, 1000)]), w);
        assert_eq!(f.existed_ms, 1000);
        assert_eq!(f.no_data_ms, 0);
        assert_eq!(f.live_ms, 850);
        assert_eq!(f.down_ms, 150);
        assert_eq!(f.availability(), Some(0.85));
        assert_eq!(f.crashes.stale, 1);
        assert_eq!(f.crashes.total(), 1);
        assert_eq!(f.graceful, 1);
        assert_eq!(f.mtbf_ms(), Some(850));
        assert_eq!(f.last_crash, Some((t(600), CrashKind::Stale)));
        assert_eq!(f.crashes_last_hour, 1);
        assert!(f.flapping(1));
        assert!(!f.flapping(2));
        assert!(!f.flapping(0));
    }

    #[test]
    fn time_no_server_observed_is_no_data_not_downtime() {
        // Live from 0 throughout; the server ran [0, 300) and [500, 1000).
        let spans = [live(0, None)];
        let o = obs(&[(0, 300), (500, 1000)]);
        let w = Window::new(t(0), t(1000)).unwrap();
        let f = figures(&spans, &[], &o, w);
        assert_eq!(
            (f.existed_ms, f.no_data_ms, f.live_ms, f.down_ms),
            (1000, 200, 800, 0)
        );
        assert_eq!(f.availability(), Some(1.0));
        // A worker down across the gap: the gap is not downtime either.
        let spans = [live(0, Some(100)), down(100, None, Some(CrashKind::Stale))];
        let f = figures(&spans, &offlines(&spans), &o, w);
        assert_eq!((f.live_ms, f.down_ms, f.no_data_ms), (100, 700, 200));
        // A window inside the gap has no data and no availability.
        let inside = Window::new(t(350), t(450)).unwrap();
        let f = figures(&spans, &[], &o, inside);
        assert_eq!((f.existed_ms, f.no_data_ms, f.observed_ms()), (100, 100, 0));
        assert_eq!(f.availability(), None);
    }

    #[test]
    fn time_before_registration_and_after_deletion_does_not_count() {
        let spans = [live(200, Some(400)), down(400, Some(500), None)];
        let w = Window::new(t(0), t(1000)).unwrap();
        let f = figures(&spans, &offlines(&spans), &obs(&[(0, 1000)]), w);
        assert_eq!((f.existed_ms, f.live_ms, f.down_ms), (300, 200, 100));
        assert_eq!(f.mtbf_ms(), None);
        assert_eq!(f.crashes.total(), 0);
    }

    #[test]
    fn an_ongoing_observation_runs_until_now() {
        let rows = vec![Observation {
            start: t(0),
            end: t(9_000),
            no_data_before_ms: 0,
        }];
        let o = Observations::new(rows.clone(), Some(t(10_000)));
        assert_eq!(o.no_data(t(0), t(10_000)), 0);
        // Extended too long ago: the server is gone, the rest is no data.
        let o = Observations::new(rows, Some(t(20_000)));
        assert_eq!(o.no_data(t(0), t(20_000)), 11_000);
    }

    #[test]
    fn buckets_of_a_day() {
        let w = Window::new(t(0), t(86_400_000)).unwrap();
        let b = w.split(24).unwrap();
        assert_eq!(b.len(), 24);
        assert_eq!(b[1], Window::new(t(3_600_000), t(7_200_000)).unwrap());
        // Crash at 01:30, back at 02:30.
        let spans = [
            live(0, Some(5_400_000)),
            down(5_400_000, Some(9_000_000), Some(CrashKind::Exited)),
            live(9_000_000, None),
        ];
        let figs = buckets(&spans, &offlines(&spans), &obs(&[(0, 86_400_000)]), &b);
        assert_eq!(figs[0].availability(), Some(1.0));
        assert_eq!(figs[1].availability(), Some(0.5));
        assert_eq!(figs[1].crashes.exited, 1);
        assert_eq!(figs[2].availability(), Some(0.5));
        assert_eq!(figs[2].crashes.total(), 0);
    }

    #[test]
    fn windows_and_buckets_refused() {
        assert_eq!(parse_window("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse_window("90m").unwrap(), Duration::from_secs(5_400));
        for bad in [
            "",
            "d",
            "0h",
            "7",
            "7w",
            "-1h",
            "1.5h",
            "1 h",
            "1234567890d",
            "07d",
        ] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
        assert_eq!(Window::new(t(5), t(5)), Err(WindowError::Empty));
        let w = Window::new(t(0), t(10)).unwrap();
        assert_eq!(w.split(0), Err(WindowError::Buckets(0)));
        assert_eq!(w.split(1001), Err(WindowError::Buckets(1001)));
        assert_eq!(
            w.split(11),
            Err(WindowError::TooManyBuckets {
                buckets: 11,
                ms: 10
            })
        );
        assert_eq!(w.split(10).unwrap().len(), 10);
    }

    #[test]
    fn flapping_counts_only_the_last_hour() {
        let h = 3_600_000;
        let w = Window::new(t(0), t(3 * h)).unwrap();
        let crash = |at| Offline {
            at: t(at),
            class: OfflineClass::Crash,
            kind: Some(CrashKind::Stale),
        };
        let f = figures(
            &[],
            &[crash(10), crash(h), crash(2 * h + 1), crash(3 * h - 1)],
            &obs(&[]),
            w,
        );
        assert_eq!(f.crashes.stale, 4);
        assert_eq!(f.crashes_last_hour, 2);
        assert_eq!(f.last_crash, Some((t(3 * h - 1), CrashKind::Stale)));
    }

    fn arb_history() -> impl Strategy<Value = (Vec<Span>, Observations, i64, i64)> {
        (
            proptest::collection::vec((1i64..500, any::<bool>()), 0..12),
            proptest::collection::vec((0i64..300, 1i64..300), 0..6),
            0i64..3000,
            1i64..3000,
            any::<bool>(),
        )
            .prop_map(|(steps, obs_steps, from, len, open)| {
                let mut spans = Vec::new();
                let mut at = 0;
                for (i, (d, is_live)) in steps.iter().enumerate() {
                    let end = if open && i + 1 == steps.len() {
                        None
                    } else {
                        Some(at + d)
                    };
                    spans.push(if *is_live {
                        live(at, end)
                    } else {
                        down(at, end, Some(CrashKind::Stale))
                    });
                    at += d;
                }
                let mut rows = Vec::new();
                let mut o = 0;
                for (gap, run) in obs_steps {
                    rows.push((o + gap, o + gap + run));
                    o += gap + run;
                }
                (spans, obs(&rows), from, len)
            })
    }

    proptest! {
        #[test]
        fn availability_is_a_fraction_and_time_adds_up((spans, o, from, len) in arb_history(), n in 1u64..50) {
            let w = Window::new(t(from), t(from + len)).unwrap();
            let f = figures(&spans, &offlines(&spans), &o, w);
            if let Some(a) = f.availability() {
                prop_assert!((0.0..=1.0).contains(&a));
            }
            prop_assert!(f.no_data_ms >= 0 && f.live_ms >= 0 && f.down_ms >= 0);
            prop_assert_eq!(f.no_data_ms + f.observed_ms(), f.existed_ms);
            prop_assert!(f.existed_ms <= len);
            if let Ok(bs) = w.split(n) {
                prop_assert_eq!(bs.len() as u64, n);
                prop_assert_eq!(bs.iter().map(|b| b.len_ms()).sum::<i64>(), len);
                prop_assert_eq!(bs[0].from, w.from);
                prop_assert_eq!(bs[bs.len() - 1].to, w.to);
                let figs = buckets(&spans, &offlines(&spans), &o, &bs);
                let mut sum = Figures::default();
                for b in &figs {
                    prop_assert_eq!(b.no_data_ms + b.observed_ms(), b.existed_ms);
                    sum.merge(b);
                }
                prop_assert_eq!(sum.existed_ms, f.existed_ms);
                prop_assert_eq!(sum.live_ms, f.live_ms);
                prop_assert_eq!(sum.down_ms, f.down_ms);
                prop_assert_eq!(sum.no_data_ms, f.no_data_ms);
                prop_assert_eq!(sum.crashes, f.crashes);
            }
        }

        #[test]
        fn no_data_never_exceeds_the_interval(rows in proptest::collection::vec((0i64..300, 1i64..300), 0..6), a in 0i64..4000, l in 0i64..4000) {
            let mut v = Vec::new();
            let mut o = 0;
            for (gap, run) in rows { v.push((o + gap, o + gap + run)); o += gap + run; }
            let o = obs(&v);
            let n = o.no_data(t(a), t(a + l));
            prop_assert!(n >= 0 && n <= l);
            // Additive over a cut.
            let m = a + l / 2;
            prop_assert_eq!(o.no_data(t(a), t(m)) + o.no_data(t(m), t(a + l)), n);
        }
    }
}
