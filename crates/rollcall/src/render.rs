//! How the admin CLI prints: aligned tables and `key  value` lines (text
//! from the server escaped, status coloured only when stdout is a terminal,
//! times relative: "12s ago"), health figures, and `--json`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rollcall_client::{Crashes, LastCrash, MachineId, Timestamp, TokenScope};
use serde::Serialize;

use crate::admin::Failure;

pub(crate) fn print_json<T: Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure {
        message: e.to_string(),
        code: 1,
    })?;
    println!("{text}");
    Ok(())
}

/// One line of health figures: availability, crashes, MTBF, last crash.
pub(crate) fn health_line(f: &rollcall_client::health::Figures) -> String {
    let mut s = format!(
        "{} available, {}",
        percent(f.availability),
        crash_text(&f.crashes)
    );
    if let Some(m) = f.mtbf_ms {
        s.push_str(&format!(", MTBF {}", span(m)));
    }
    if f.last_crash.is_some() {
        s.push_str(&format!(
            ", last crash {}",
            last_crash(now_ms(), f.last_crash.as_ref())
        ));
    }
    if f.no_data_ms > 0 {
        s.push_str(&format!(", no data {}", span(f.no_data_ms)));
    }
    if f.flapping {
        s.push_str(", FLAPPING");
    }
    s
}

pub(crate) fn print_health_lines(lines: &[(&str, Option<String>)]) {
    let pairs: Vec<(String, String)> = lines
        .iter()
        .map(|(w, l)| {
            (
                format!("health {w}"),
                l.clone().unwrap_or_else(|| "unavailable".into()),
            )
        })
        .collect();
    let refs: Vec<(&str, String)> = pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    kv(&refs);
}

/// "99.95%", or "no data" when nothing was observed.
pub(crate) fn percent(a: Option<f64>) -> String {
    a.map_or_else(|| "no data".into(), |a| format!("{:.2}%", a * 100.0))
}

/// "2 crashes (1 stale, 0 replaced, 1 exited)".
pub(crate) fn crash_text(c: &Crashes) -> String {
    if c.total == 0 {
        return "no crashes".into();
    }
    format!(
        "{} crash{} ({} stale, {} replaced, {} exited)",
        c.total,
        if c.total == 1 { "" } else { "es" },
        c.stale,
        c.replaced,
        c.exited
    )
}

/// "5m ago (stale)", or "-".
pub(crate) fn last_crash(now: i64, c: Option<&LastCrash>) -> String {
    c.map_or_else(
        || "-".into(),
        |c| format!("{} ({})", ago(now, c.at), c.kind),
    )
}

/// A duration in milliseconds, to the second ("3h 2m 5s"; "250ms" below a
/// second).
pub(crate) fn span(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

/// A scope on one line: `machines gpu-*,render-*; labels pool=gpu`.
pub(crate) fn scope_text(scope: &TokenScope) -> String {
    let mut parts = Vec::new();
    if let Some(m) = scope.machines() {
        parts.push(format!("machines {}", m.join(",")));
    }
    if !scope.labels().is_empty() {
        parts.push(format!("labels {}", labels(scope.labels().as_map())));
    }
    parts.join("; ")
}

pub(crate) fn print_workers(workers: &[rollcall_client::Worker]) {
    let now = now_ms();
    let rows = workers
        .iter()
        .map(|w| {
            let status = match w.offline_reason {
                Some(r) => format!("{} ({r})", w.status),
                None => w.status.to_string(),
            };
            vec![
                Cell::plain(w.id.to_string()),
                Cell::plain(w.name.to_string()),
                Cell::plain(w.machine_id.to_string()),
                Cell {
                    text: status,
                    colour: Some(w.status.as_str()),
                },
                Cell::plain(w.session.to_string()),
                Cell::plain(
                    w.last_heartbeat_at
                        .map_or_else(|| "never".into(), |t| ago(now, t)),
                ),
                Cell::plain(ago(now, w.status_changed_at)),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "MACHINE",
            "STATUS",
            "SESSION",
            "LAST HEARTBEAT",
            "SINCE",
        ],
        rows,
    );
}

pub(crate) fn print_worker(w: &rollcall_client::Worker) {
    let now = now_ms();
    let colour = colour_enabled();
    let status = match w.offline_reason {
        Some(r) => format!("{} ({r})", paint(w.status.as_str(), colour)),
        None => paint(w.status.as_str(), colour),
    };
    kv(&[
        ("id", w.id.to_string()),
        ("name", w.name.to_string()),
        ("machine", w.machine_id.to_string()),
        ("status", status),
        ("session", w.session.to_string()),
        ("labels", labels(&w.labels)),
        (
            "heartbeat",
            format!(
                "every {} ms, stale after {} ms",
                w.heartbeat_interval_ms, w.stale_after_ms
            ),
        ),
        ("registered", ago(now, w.registered_at)),
        (
            "last heartbeat",
            w.last_heartbeat_at
                .map_or_else(|| "never".into(), |t| ago(now, t)),
        ),
        (
            "deadline",
            w.deadline_at.map_or_else(|| "-".into(), |t| ago(now, t)),
        ),
        ("status changed", ago(now, w.status_changed_at)),
    ]);
}

/// `s` with every character that could move the cursor, colour the
/// terminal, fake a line or reorder text (controls, bidirectional
/// formatting) written as `\u{…}`. The server refuses them in new input;
/// older data, or another server, may still hold them.
pub(crate) fn printable(s: &str) -> String {
    if rollcall_core::forbidden_char(s).is_none() {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if rollcall_core::forbidden_char(c.encode_utf8(&mut [0; 4])).is_some() {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn labels(l: &rollcall_client::Labels) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter()
        .map(|(k, v)| format!("{}={}", printable(k), printable(v)))
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn list_or_none(ids: &[MachineId]) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    ids.iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints `key  value` lines. Values are escaped ([`printable`]) except
/// `status`, which rollcall colours itself.
pub(crate) fn kv(pairs: &[(&str, String)]) {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in pairs {
        let v = if *k == "status" {
            v.clone()
        } else {
            printable(v)
        };
        println!("{k:<width$}  {v}");
    }
}

/// A table cell: its text, and the status to colour it by (if any).
pub(crate) struct Cell {
    pub(crate) text: String,
    colour: Option<&'static str>,
}

impl Cell {
    /// A cell of text from the server, escaped ([`printable`]).
    pub(crate) fn plain(text: String) -> Self {
        Cell {
            text: printable(&text),
            colour: None,
        }
    }
    pub(crate) fn status(s: &'static str) -> Self {
        Cell {
            text: s.to_owned(),
            colour: Some(s),
        }
    }
}

pub(crate) fn table(headers: &[&str], rows: Vec<Vec<Cell>>) {
    let colour = colour_enabled();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.text.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let last = headers.len() - 1;
    let header: Vec<String> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| pad(h, widths[i], i == last))
        .collect();
    let _ = writeln!(out, "{}", header.join("  "));
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let padded = pad(&c.text, widths[i], i == last);
                match c.colour {
                    Some(s) if colour => {
                        // Colour the text, keep the padding outside the
                        // escape codes so columns stay aligned.
                        let pad_len = padded.len() - c.text.len();
                        format!("{}{}", paint_with(&c.text, s), " ".repeat(pad_len))
                    }
                    _ => padded,
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  "));
    }
}

pub(crate) fn pad(s: &str, width: usize, last: bool) -> String {
    if last {
        return s.to_owned();
    }
    let n = width.saturating_sub(s.chars().count());
    format!("{s}{}", " ".repeat(n))
}

pub(crate) fn colour_enabled() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

pub(crate) fn paint(status: &str, colour: bool) -> String {
    if colour {
        paint_with(status, status)
    } else {
        status.to_owned()
    }
}

pub(crate) fn paint_with(text: &str, status: &str) -> String {
    let code = match status {
        "online" => "32",
        "draining" => "33",
        "offline" => "31",
        _ => return text.to_owned(),
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

pub(crate) fn paint_event(t: &str, colour: bool) -> String {
    let padded = format!("{t:<17}");
    if !colour {
        return padded;
    }
    let code = if t.ends_with(".online") || t.ends_with(".registered") {
        "32"
    } else if t.ends_with(".draining") {
        "33"
    } else {
        "31"
    };
    format!("\x1b[{code}m{padded}\x1b[0m")
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// "12s ago", "in 3s", "just now".
pub(crate) fn ago(now_ms: i64, t: Timestamp) -> String {
    relative(now_ms - t.as_millis())
}

pub(crate) fn relative(diff_ms: i64) -> String {
    let future = diff_ms < 0;
    let secs = diff_ms.unsigned_abs() / 1000;
    if secs == 0 {
        return if future {
            "in <1s".into()
        } else {
            "just now".into()
        };
    }
    let text = if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m", secs / 60)
    } else if secs < 86_400 {
        format!("{}h", secs / 3600)
    } else {
        format!("{}d", secs / 86_400)
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

pub(crate) fn print_incident(i: &rollcall_client::Incident) {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    kv(&[
        ("id", i.id.clone()),
        ("status", i.status.clone()),
        ("rule", format!("{} ({})", i.rule, i.kind)),
        ("severity", i.severity.clone()),
        ("summary", i.summary.clone()),
        ("since", i.since.clone()),
        ("opened", opt(&i.opened_at)),
        ("resolved", opt(&i.resolved_at)),
        (
            "acked",
            match (&i.acked_at, &i.acked_by) {
                (Some(at), Some(by)) => format!("{at} by {by}"),
                _ => "-".into(),
            },
        ),
        ("inhibited by", opt(&i.inhibited_by)),
        ("details", i.details.to_string()),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_text() {
        assert_eq!(percent(Some(0.99951)), "99.95%");
        assert_eq!(percent(None), "no data");
        assert_eq!(span(250), "250ms");
        assert_eq!(span(3_725_400), "1h 2m 5s");
        let c = Crashes {
            total: 2,
            stale: 1,
            replaced: 0,
            exited: 1,
        };
        assert_eq!(crash_text(&c), "2 crashes (1 stale, 0 replaced, 1 exited)");
        assert_eq!(crash_text(&Crashes::default()), "no crashes");
    }

    #[test]
    fn relative_times() {
        assert_eq!(relative(12_400), "12s ago");
        assert_eq!(relative(300), "just now");
        assert_eq!(relative(-3_000), "in 3s");
        assert_eq!(relative(125_000), "2m ago");
        assert_eq!(relative(7_300_000), "2h ago");
        assert_eq!(relative(3 * 86_400_000), "3d ago");
    }

    #[test]
    fn non_printables_are_escaped() {
        assert_eq!(printable("plain Zürich 🚀"), "plain Zürich 🚀");
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("x\ny"), "x\\u{a}y");
        assert_eq!(printable("evil\u{202e}cod.exe"), "evil\\u{202e}cod.exe");
        assert_eq!(printable("\u{9b}"), "\\u{9b}");
        let cell = Cell::plain("t\u{1b}]0;pwned\u{7}".into());
        assert!(!cell.text.contains('\u{1b}') && !cell.text.contains('\u{7}'));
    }

    #[test]
    fn padding_keeps_the_last_column_unpadded() {
        assert_eq!(pad("ab", 4, false), "ab  ");
        assert_eq!(pad("ab", 4, true), "ab");
    }
}
