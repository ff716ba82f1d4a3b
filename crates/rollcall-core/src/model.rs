//! The vocabulary of rollcall: statuses, reasons, event types and labels.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $s)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire name.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err(UnknownValue { what: stringify!($name), value: s.to_owned() }),
                }
            }
        }
    };
}

/// A string that names no value of the enum it was parsed as.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown {what} value {value:?}")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
}

string_enum!(
    /// A worker's status.
    Status {
        /// Alive: heartbeats arrive before each deadline.
        Online => "online",
        /// Alive but finishing its work; takes no new work. Counts as live.
        Draining => "draining",
        /// Not alive; `offline_reason` says why.
        Offline => "offline",
    }
);

impl Status {
    /// Online or draining: the worker counts towards its machine being online.
    pub const fn is_live(self) -> bool {
        matches!(self, Status::Online | Status::Draining)
    }
}

string_enum!(
    /// Why a worker is offline.
    OfflineReason {
        /// It said goodbye (graceful shutdown).
        Shutdown => "shutdown",
        /// Its deadline passed without a heartbeat.
        Stale => "stale",
        /// The process supervised by an agent ended.
        Exited => "exited",
        /// It registered again while still online: it crashed and restarted.
        Replaced => "replaced",
        /// An admin deleted it; its token no longer works.
        Revoked => "revoked",
    }
);

string_enum!(
    /// A machine's status, derived from its workers' statuses.
    MachineStatus {
        Online => "online",
        Offline => "offline",
    }
);

string_enum!(
    /// What an event records.
    EventType {
        WorkerRegistered => "worker.registered",
        WorkerOnline => "worker.online",
        WorkerDraining => "worker.draining",
        WorkerOffline => "worker.offline",
        WorkerDeleted => "worker.deleted",
        MachineOnline => "machine.online",
        MachineOffline => "machine.offline",
        /// An alert rule's incident opened (its channels are being told).
        IncidentOpened => "incident.opened",
        /// An open incident resolved.
        IncidentResolved => "incident.resolved",
    }
);

impl EventType {
    /// `incident.*`: written by the alerter, not by a worker's transition.
    pub const fn is_incident(self) -> bool {
        matches!(
            self,
            EventType::IncidentOpened | EventType::IncidentResolved
        )
    }
}

string_enum!(
    /// Why a transition happened, as recorded on its event.
    EventReason {
        Registered => "registered",
        Heartbeat => "heartbeat",
        Shutdown => "shutdown",
        Stale => "stale",
        Exited => "exited",
        Replaced => "replaced",
        Revoked => "revoked",
    }
);

/// How a supervised process ended, as an agent reports it with an `exited`
/// offline: its exit code, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this code (0–255).
    Code(u8),
    /// A signal (1–64) ended it.
    Signal(u8),
}

impl ExitStatus {
    /// The largest signal number accepted (Linux's real-time signals end at 64).
    pub const MAX_SIGNAL: u8 = 64;

    /// From the two optional wire fields `exit_code` and `signal`: at most one
    /// may be given, a code in 0–255 and a signal in 1–64. The error names the
    /// field.
    pub fn from_parts(
        exit_code: Option<i64>,
        signal: Option<i64>,
    ) -> Result<Option<ExitStatus>, ExitStatusError> {
        match (exit_code, signal) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(ExitStatusError::Both),
            (Some(c), None) => u8::try_from(c)
                .map(|c| Some(ExitStatus::Code(c)))
                .map_err(|_| ExitStatusError::Code(c)),
            (None, Some(s)) => match u8::try_from(s) {
                Ok(n) if (1..=Self::MAX_SIGNAL).contains(&n) => Ok(Some(ExitStatus::Signal(n))),
                _ => Err(ExitStatusError::Signal(s)),
            },
        }
    }

    /// The exit code, if it exited.
    pub const fn code(self) -> Option<u8> {
        match self {
            ExitStatus::Code(c) => Some(c),
            ExitStatus::Signal(_) => None,
        }
    }

    /// The signal, if one ended it.
    pub const fn signal(self) -> Option<u8> {
        match self {
            ExitStatus::Signal(s) => Some(s),
            ExitStatus::Code(_) => None,
        }
    }

    /// Exit code 0: the process finished on its own terms.
    pub const fn is_success(self) -> bool {
        matches!(self, ExitStatus::Code(0))
    }
}

/// An exit status that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExitStatusError {
    #[error("exit_code and signal are exclusive: give at most one")]
    Both,
    #[error("exit_code must be within 0..=255, got {0}")]
    Code(i64),
    #[error("signal must be within 1..=64, got {0}")]
    Signal(i64),
}

impl ExitStatusError {
    /// The wire field at fault.
    pub const fn field(&self) -> &'static str {
        match self {
            ExitStatusError::Both | ExitStatusError::Signal(_) => "signal",
            ExitStatusError::Code(_) => "exit_code",
        }
    }
}

string_enum!(
    /// What kind of end an offline was, for health history and alerts.
    OfflineClass {
        /// It meant to stop: `shutdown`, or `exited` with exit code 0.
        Graceful => "graceful",
        /// It did not mean to: `stale`, `replaced`, or `exited` with a
        /// non-zero code, a signal, or no reported status.
        Crash => "crash",
        /// An admin ended it: `revoked`.
        Administrative => "administrative",
    }
);

string_enum!(
    /// The kinds of crash, by the offline reason that recorded it.
    CrashKind {
        /// Its deadline passed without a heartbeat (hung, killed, lost network).
        Stale => "stale",
        /// It registered again while still live: it restarted without a goodbye.
        Replaced => "replaced",
        /// Its supervised process ended with a failure or a signal.
        Exited => "exited",
    }
);

impl OfflineReason {
    /// Classifies an offline with this reason and, for `exited`, the exit
    /// status the agent reported. An `exited` without a status is a crash:
    /// the process ended and nothing says it meant to.
    pub const fn classify(self, exit: Option<ExitStatus>) -> (OfflineClass, Option<CrashKind>) {
        match self {
            OfflineReason::Shutdown => (OfflineClass::Graceful, None),
            OfflineReason::Stale => (OfflineClass::Crash, Some(CrashKind::Stale)),
            OfflineReason::Replaced => (OfflineClass::Crash, Some(CrashKind::Replaced)),
            OfflineReason::Revoked => (OfflineClass::Administrative, None),
            OfflineReason::Exited => match exit {
                Some(e) if e.is_success() => (OfflineClass::Graceful, None),
                _ => (OfflineClass::Crash, Some(CrashKind::Exited)),
            },
        }
    }
}

impl From<OfflineReason> for EventReason {
    fn from(r: OfflineReason) -> Self {
        match r {
            OfflineReason::Shutdown => EventReason::Shutdown,
            OfflineReason::Stale => EventReason::Stale,
            OfflineReason::Exited => EventReason::Exited,
            OfflineReason::Replaced => EventReason::Replaced,
            OfflineReason::Revoked => EventReason::Revoked,
        }
    }
}

/// Free-form key/value labels on a worker or machine.
///
/// At most 32 pairs; keys 1–64 characters, values at most 256 characters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct Labels(BTreeMap<String, String>);

/// The first character of `s` that free text (hostnames, labels, token
/// names) may not hold: C0 and C1 control characters (newlines, ESC, NUL,
/// DEL…), the Unicode bidirectional formatting characters (U+061C,
/// U+200E–U+200F, U+202A–U+202E, U+2066–U+2069) and the line and paragraph
/// separators U+2028–U+2029. They let a value rewrite a terminal or fake
/// lines when it is printed.
pub fn forbidden_char(s: &str) -> Option<char> {
    s.chars().find(|&c| {
        c.is_control()
            || matches!(
                c,
                '\u{061C}'
                    | '\u{200E}'
                    | '\u{200F}'
                    | '\u{2028}'
                    | '\u{2029}'
                    | '\u{202A}'..='\u{202E}'
                    | '\u{2066}'..='\u{2069}'
            )
    })
}

/// Checks free text for [`forbidden_char`]; the error describes the
/// character without printing it.
pub fn check_text(s: &str) -> Result<(), String> {
    match forbidden_char(s) {
        None => Ok(()),
        Some(c) => Err(format!(
            "contains U+{:04X}; control characters and bidirectional formatting characters are not allowed",
            u32::from(c)
        )),
    }
}

/// Why a set of labels was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LabelsError {
    #[error("at most {max} labels are allowed, got {got}", max = Labels::MAX_PAIRS)]
    TooMany { got: usize },
    #[error("label keys must be 1 to {max} characters", max = Labels::MAX_KEY)]
    Key,
    #[error("label values must be at most {max} characters (key {key:?})", max = Labels::MAX_VALUE)]
    Value { key: String },
    #[error("a label key {0}")]
    KeyText(String),
    #[error("the value of label {key:?} {problem}")]
    ValueText { key: String, problem: String },
}

impl Labels {
    pub const MAX_PAIRS: usize = 32;
    pub const MAX_KEY: usize = 64;
    pub const MAX_VALUE: usize = 256;

    /// Validates a map of labels.
    pub fn parse(map: BTreeMap<String, String>) -> Result<Self, LabelsError> {
        if map.len() > Self::MAX_PAIRS {
            return Err(LabelsError::TooMany { got: map.len() });
        }
        for (k, v) in &map {
            let klen = k.chars().count();
            if klen == 0 || klen > Self::MAX_KEY {
                return Err(LabelsError::Key);
            }
            if v.chars().count() > Self::MAX_VALUE {
                return Err(LabelsError::Value { key: k.clone() });
            }
        }
        Ok(Labels(map))
    }

    /// Validates labels sent by a client: [`Labels::parse`], and no
    /// [`forbidden_char`] in keys or values. (Stored labels are read with
    /// `parse`, so that a database written before this check still loads.)
    pub fn parse_input(map: BTreeMap<String, String>) -> Result<Self, LabelsError> {
        let labels = Self::parse(map)?;
        for (k, v) in &labels.0 {
            check_text(k).map_err(LabelsError::KeyText)?;
            check_text(v).map_err(|problem| LabelsError::ValueText {
                key: k.clone(),
                problem,
            })?;
        }
        Ok(labels)
    }

    /// The labels as a map.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<BTreeMap<String, String>> for Labels {
    type Error = LabelsError;
    fn try_from(map: BTreeMap<String, String>) -> Result<Self, LabelsError> {
        Labels::parse(map)
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(l: Labels) -> Self {
        l.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_parts() {
        assert_eq!(ExitStatus::from_parts(None, None), Ok(None));
        assert_eq!(
            ExitStatus::from_parts(Some(0), None),
            Ok(Some(ExitStatus::Code(0)))
        );
        assert_eq!(
            ExitStatus::from_parts(Some(255), None),
            Ok(Some(ExitStatus::Code(255)))
        );
        assert_eq!(
            ExitStatus::from_parts(None, Some(9)),
            Ok(Some(ExitStatus::Signal(9)))
        );
        assert_eq!(
            ExitStatus::from_parts(Some(256), None).unwrap_err().field(),
            "exit_code"
        );
        assert_eq!(
            ExitStatus::from_parts(Some(-1), None).unwrap_err().field(),
            "exit_code"
        );
        assert_eq!(
            ExitStatus::from_parts(None, Some(0)).unwrap_err().field(),
            "signal"
        );
        assert_eq!(
            ExitStatus::from_parts(None, Some(65)).unwrap_err().field(),
            "signal"
        );
        assert_eq!(
            ExitStatus::from_parts(Some(1), Some(9)),
            Err(ExitStatusError::Both)
        );
    }

    #[test]
    fn every_offline_is_classified() {
        use OfflineClass::*;
        let c = |r: OfflineReason, e| r.classify(e);
        assert_eq!(c(OfflineReason::Shutdown, None), (Graceful, None));
        assert_eq!(
            c(OfflineReason::Exited, Some(ExitStatus::Code(0))),
            (Graceful, None)
        );
        for e in [Some(ExitStatus::Code(3)), Some(ExitStatus::Signal(9)), None] {
            assert_eq!(
                c(OfflineReason::Exited, e),
                (Crash, Some(CrashKind::Exited))
            );
        }
        assert_eq!(
            c(OfflineReason::Stale, None),
            (Crash, Some(CrashKind::Stale))
        );
        assert_eq!(
            c(OfflineReason::Replaced, None),
            (Crash, Some(CrashKind::Replaced))
        );
        assert_eq!(c(OfflineReason::Revoked, None), (Administrative, None));
    }

    #[test]
    fn wire_names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(*t));
            assert_eq!(
                serde_json::to_string(t).unwrap(),
                format!("\"{}\"", t.as_str())
            );
        }
        assert!("worker.exploded".parse::<EventType>().is_err());
    }

    #[test]
    fn labels_limits() {
        let many: BTreeMap<_, _> = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(Labels::parse(many), Err(LabelsError::TooMany { got: 33 }));
        let long_key = BTreeMap::from([("k".repeat(65), "v".into())]);
        assert_eq!(Labels::parse(long_key), Err(LabelsError::Key));
        let long_value = BTreeMap::from([("k".into(), "v".repeat(257))]);
        assert!(Labels::parse(long_value).is_err());
        for bad in [
            "\u{1b}[2J",
            "a\nb",
            "\0",
            "\u{7f}",
            "\u{85}",
            "x\u{202e}y",
            "\u{2066}",
            "\u{2028}",
        ] {
            assert!(forbidden_char(bad).is_some(), "{bad:?}");
            let key = BTreeMap::from([(bad.to_owned(), "v".to_owned())]);
            assert!(matches!(
                Labels::parse_input(key),
                Err(LabelsError::KeyText(_))
            ));
            let value = BTreeMap::from([("k".to_owned(), bad.to_owned())]);
            assert!(Labels::parse(value.clone()).is_ok(), "stored labels load");
            let e = Labels::parse_input(value).unwrap_err();
            assert!(matches!(e, LabelsError::ValueText { .. }), "{e}");
            assert!(!e.to_string().contains(bad), "the message does not echo it");
        }
        for good in ["gpu", "Zürich", "日本", "a b", "emoji 🚀", ""] {
            assert_eq!(forbidden_char(good), None, "{good:?}");
        }
        let ok = BTreeMap::from([("k".repeat(64), "v".repeat(256))]);
        assert!(Labels::parse(ok).is_ok());
    }
}
