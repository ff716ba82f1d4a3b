//! The scope of an enroll token: which workers it may register.
//!
//! An enroll token without a scope registers any worker. A scoped one
//! registers only workers that are inside its scope:
//!
//! - `machines`: patterns of machine ids. The worker's machine id must match
//!   at least one of them. A pattern is 1–128 characters of the machine-id
//!   alphabet (`A-Z a-z 0-9 . _ : -`) and `*`, the only wildcard: it stands
//!   for any run of characters, none included. Everything else stands for
//!   itself, case-sensitively, and a pattern matches the whole id (`gpu-*`
//!   matches `gpu-1` and `gpu-`, not `xgpu-1`; `gpu` matches only `gpu`).
//!   Absent: any machine.
//! - `labels`: `key=value` pairs the worker's labels must all carry, with
//!   exactly that value (extra labels are allowed). Empty: no requirement.
//!
//! Both given, both must hold. A scope limits something: at least one
//! pattern, or at least one label.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::id::MachineId;
use crate::model::{Labels, LabelsError};

/// Why a scope was refused. The messages name the field (`scope.machines[1]`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScopeError {
    #[error(
        "scope must limit machines or labels: give scope.machines or scope.labels (or leave \
         scope out for a token that registers any worker)"
    )]
    Empty,
    #[error(
        "scope.machines must list 1 to {max} patterns, got {got}",
        max = TokenScope::MAX_PATTERNS
    )]
    PatternCount { got: usize },
    #[error(
        "scope.machines[{index}] must be 1 to {max} characters of A-Z, a-z, 0-9, '.', '_', ':', \
         '-' and the wildcard '*'",
        max = TokenScope::MAX_PATTERN
    )]
    Pattern { index: usize },
    #[error("scope.labels: {0}")]
    Labels(LabelsError),
}

/// What an enroll token may register; see the module documentation for the
/// matching rules. Built only through validation, so a value is always
/// well-formed. On the wire and in the store it is
/// `{"machines": [..] | null, "labels": {..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ScopeWire", into = "ScopeWire")]
pub struct TokenScope {
    machines: Option<Vec<String>>,
    labels: Labels,
}

/// The serialised form of a [`TokenScope`].
#[derive(Serialize, Deserialize)]
struct ScopeWire {
    machines: Option<Vec<String>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

impl TryFrom<ScopeWire> for TokenScope {
    type Error = ScopeError;
    fn try_from(w: ScopeWire) -> Result<Self, ScopeError> {
        let labels = Labels::parse(w.labels.unwrap_or_default()).map_err(ScopeError::Labels)?;
        TokenScope::build(w.machines, labels)
    }
}

impl From<TokenScope> for ScopeWire {
    fn from(s: TokenScope) -> Self {
        ScopeWire {
            machines: s.machines,
            labels: Some(s.labels.into()),
        }
    }
}

impl TokenScope {
    /// Patterns in `machines` at most.
    pub const MAX_PATTERNS: usize = 32;
    /// Characters of a pattern at most (as of a machine id).
    pub const MAX_PATTERN: usize = 128;

    /// Validates a scope sent by a client: the patterns, and the labels as
    /// [`Labels::parse_input`] checks a worker's.
    pub fn parse_input(
        machines: Option<Vec<String>>,
        labels: BTreeMap<String, String>,
    ) -> Result<Self, ScopeError> {
        let labels = Labels::parse_input(labels).map_err(ScopeError::Labels)?;
        Self::build(machines, labels)
    }

    fn build(machines: Option<Vec<String>>, labels: Labels) -> Result<Self, ScopeError> {
        if let Some(patterns) = &machines {
            if patterns.is_empty() || patterns.len() > Self::MAX_PATTERNS {
                return Err(ScopeError::PatternCount {
                    got: patterns.len(),
                });
            }
            if let Some(index) = patterns.iter().position(|p| !valid_pattern(p)) {
                return Err(ScopeError::Pattern { index });
            }
        } else if labels.is_empty() {
            return Err(ScopeError::Empty);
        }
        Ok(TokenScope { machines, labels })
    }

    /// The machine-id patterns; `None`: any machine.
    pub fn machines(&self) -> Option<&[String]> {
        self.machines.as_deref()
    }

    /// The labels a worker must carry (possibly none).
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// Whether a worker on `machine` is inside the scope's machines.
    pub fn admits_machine(&self, machine: &MachineId) -> bool {
        match &self.machines {
            None => true,
            Some(patterns) => patterns
                .iter()
                .any(|p| pattern_matches(p, machine.as_str())),
        }
    }

    /// The first required label (by key) that `labels` lack or carry with
    /// another value; `None` when they are inside the scope.
    pub fn missing_label<'a>(&'a self, labels: &Labels) -> Option<(&'a str, &'a str)> {
        self.labels
            .as_map()
            .iter()
            .find(|(k, v)| labels.as_map().get(*k) != Some(*v))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether a worker on `machine` with `labels` is inside the scope.
    pub fn admits(&self, machine: &MachineId, labels: &Labels) -> bool {
        self.admits_machine(machine) && self.missing_label(labels).is_none()
    }
}

/// A pattern: 1–128 characters of the machine-id alphabet and `*`.
fn valid_pattern(p: &str) -> bool {
    (1..=TokenScope::MAX_PATTERN).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-' | b'*'))
}

/// Whether the whole of `text` matches `pattern`, where `*` stands for any
/// run of characters (none included) and everything else for itself.
///
/// The pieces between stars are found left to right, each at its first
/// place after the previous one: with no other wildcard, the earliest place
/// leaves the most room for the rest, so this never needs to backtrack.
pub fn pattern_matches(pattern: &str, text: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        // No star: the pattern is the text.
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn mid(s: &str) -> MachineId {
        MachineId::parse(s).unwrap()
    }

    #[test]
    fn patterns_match_whole_ids_with_star_as_the_only_wildcard() {
        for (pattern, text, expected) in [
            ("gpu-*", "gpu-1", true),
            ("gpu-*", "gpu-", true),
            ("gpu-*", "xgpu-1", false),
            ("gpu-*", "GPU-1", false),
            ("gpu", "gpu", true),
            ("gpu", "gpu-1", false),
            ("*", "anything", true),
            ("*-a", "rack2-host-a", true),
            ("*-a", "rack2-host-b", false),
            ("rack*-gpu-*", "rack12-gpu-7", true),
            ("rack*-gpu-*", "rack12-cpu-7", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("a*b*b", "abab", true),
            ("a*b*b", "ab", false),
            ("**", "", true),
            ("*.example", "host.example", true),
            ("host.example", "hostXexample", false),
        ] {
            assert_eq!(
                pattern_matches(pattern, text),
                expected,
                "{pattern} ~ {text}"
            );
        }
    }

    /// Matching by trying every split: slow, obviously right.
    fn naive(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| naive(rest, &t[i..])),
            Some((c, rest)) => t.first() == Some(c) && naive(rest, &t[1..]),
        }
    }

    proptest! {
        #[test]
        fn matching_agrees_with_trying_every_split(p in "[ab*]{0,8}", t in "[ab]{0,10}") {
            prop_assert_eq!(pattern_matches(&p, &t), naive(p.as_bytes(), t.as_bytes()));
        }
    }

    #[test]
    fn a_scope_must_limit_something_and_be_well_formed() {
        assert_eq!(
            TokenScope::parse_input(None, BTreeMap::new()),
            Err(ScopeError::Empty)
        );
        assert_eq!(
            TokenScope::parse_input(Some(vec![]), BTreeMap::new()),
            Err(ScopeError::PatternCount { got: 0 })
        );
        assert_eq!(
            TokenScope::parse_input(Some(vec!["x".into(); 33]), BTreeMap::new()),
            Err(ScopeError::PatternCount { got: 33 })
        );
        assert_eq!(
            TokenScope::parse_input(Some(vec!["ok-*".into(), "no?".into()]), BTreeMap::new()),
            Err(ScopeError::Pattern { index: 1 })
        );
        assert_eq!(
            TokenScope::parse_input(Some(vec!["".into()]), BTreeMap::new()),
            Err(ScopeError::Pattern { index: 0 })
        );
        assert_eq!(
            TokenScope::parse_input(Some(vec!["a".repeat(129)]), BTreeMap::new()),
            Err(ScopeError::Pattern { index: 0 })
        );
        assert!(TokenScope::parse_input(Some(vec!["a".repeat(128)]), BTreeMap::new()).is_ok());
        assert!(matches!(
            TokenScope::parse_input(None, labels(&[("pool", "gpu\u{1b}")])),
            Err(ScopeError::Labels(LabelsError::ValueText { .. }))
        ));
        assert!(matches!(
            TokenScope::parse_input(None, labels(&[("", "x")])),
            Err(ScopeError::Labels(LabelsError::Key))
        ));
        let e = TokenScope::parse_input(Some(vec!["a b".into()]), BTreeMap::new()).unwrap_err();
        assert!(e.to_string().starts_with("scope.machines[0] "), "{e}");
    }

    #[test]
    fn admits_workers_inside_every_limit() {
        let both = TokenScope::parse_input(
            Some(vec!["gpu-*".into(), "render".into()]),
            labels(&[("pool", "gpu"), ("team", "ml")]),
        )
        .unwrap();
        let ok = Labels::parse(labels(&[("pool", "gpu"), ("team", "ml"), ("x", "y")])).unwrap();
        assert!(both.admits(&mid("gpu-7"), &ok));
        assert!(both.admits(&mid("render"), &ok));
        assert!(!both.admits(&mid("cpu-7"), &ok));
        let wrong = Labels::parse(labels(&[("pool", "cpu"), ("team", "ml")])).unwrap();
        assert_eq!(both.missing_label(&wrong), Some(("pool", "gpu")));
        assert!(!both.admits(&mid("gpu-7"), &wrong));
        let partial = Labels::parse(labels(&[("pool", "gpu")])).unwrap();
        assert_eq!(both.missing_label(&partial), Some(("team", "ml")));

        let machines_only =
            TokenScope::parse_input(Some(vec!["gpu-*".into()]), BTreeMap::new()).unwrap();
        assert!(machines_only.admits(&mid("gpu-1"), &Labels::default()));
        let labels_only = TokenScope::parse_input(None, labels(&[("pool", "gpu")])).unwrap();
        assert!(labels_only.admits(&mid("anything"), &partial));
        assert!(!labels_only.admits(&mid("anything"), &Labels::default()));
    }

    #[test]
    fn serialises_as_machines_and_labels() {
        let s = TokenScope::parse_input(Some(vec!["gpu-*".into()]), labels(&[("a", "b")])).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"machines": ["gpu-*"], "labels": {"a": "b"}})
        );
        assert_eq!(serde_json::from_value::<TokenScope>(v).unwrap(), s);
        let l = TokenScope::parse_input(None, labels(&[("a", "b")])).unwrap();
        assert_eq!(
            serde_json::to_value(&l).unwrap(),
            serde_json::json!({"machines": null, "labels": {"a": "b"}})
        );
        assert!(serde_json::from_value::<TokenScope>(serde_json::json!({})).is_err());
        assert!(serde_json::from_value::<TokenScope>(serde_json::json!({"machines": []})).is_err());
    }
}
