//! Alert rules and notification channels: `[[alert]]` and `[[channel]]` in
//! the TOML config, checked at start (a bad one names its key and the server
//! exits 2).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use rollcall_core::Labels;
use rollcall_store::StoredRule;
use serde::{Deserialize, Serialize};

use crate::config::{parse_duration, ConfigError};

/// An `[[alert]]` table as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub severity: Option<String>,
    /// Labels a worker (a machine, for `machine_offline`) must carry.
    pub select: Option<BTreeMap<String, String>>,
    pub channels: Option<Vec<String>>,
    /// `worker_offline`, `machine_offline`: how long the condition must hold.
    #[serde(rename = "for")]
    pub for_: Option<String>,
    /// `worker_crashes`: how many crashes…
    pub crashes: Option<u32>,
    /// …within how long.
    pub within: Option<String>,
    /// `mass_failure`: the share of the selected live workers (1–100)…
    pub percent: Option<u32>,
    /// …that crash within this window (default: the stale window).
    pub window: Option<String>,
}

/// A `[[channel]]` table as written.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub url: Option<String>,
    /// `webhook`: the shared secret of the signature.
    pub secret: Option<String>,
    pub group_wait: Option<String>,
    pub repeat_interval: Option<String>,
    pub timeout: Option<String>,
    pub give_up_after: Option<String>,
}

impl fmt::Debug for RawChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawChannel")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &self.url.as_deref().map(crate::config::redact_url))
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// A selected worker offline by a crash for at least `for_`.
    WorkerOffline { for_: Duration },
    /// A selected worker crashed `crashes` times within `within`.
    WorkerCrashes { crashes: u32, within: Duration },
    /// A selected machine offline, not all of its workers gracefully, for
    /// at least `for_`.
    MachineOffline { for_: Duration },
    /// `percent` % of the selected workers live at the start of `window`
    /// crashed within it.
    MassFailure { percent: u32, window: Duration },
}

impl RuleKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            RuleKind::WorkerOffline { .. } => "worker_offline",
            RuleKind::WorkerCrashes { .. } => "worker_crashes",
            RuleKind::MachineOffline { .. } => "machine_offline",
            RuleKind::MassFailure { .. } => "mass_failure",
        }
    }
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub kind: RuleKind,
    pub severity: String,
    pub select: BTreeMap<String, String>,
    pub channels: Vec<String>,
}

impl Rule {
    /// Whether labels carry every selected pair.
    pub fn selects(&self, labels: &Labels) -> bool {
        self.select
            .iter()
            .all(|(k, v)| labels.as_map().get(k) == Some(v))
    }
}

/// How a channel is spoken to.
#[derive(Clone, PartialEq, Eq)]
pub enum ChannelKind {
    /// rollcall's JSON body, signed with HMAC-SHA256.
    Webhook { secret: String },
    /// Slack's incoming-webhook format.
    Slack,
    /// Prometheus Alertmanager's `/api/v2/alerts`.
    Alertmanager,
}

impl fmt::Debug for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.write_str(self.as_str())
    }
}

impl ChannelKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ChannelKind::Webhook { .. } => "webhook",
            ChannelKind::Slack => "slack",
            ChannelKind::Alertmanager => "alertmanager",
        }
    }
}

/// A checked channel. Its `Debug` shows neither the secret nor the URL's
/// credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    pub url: reqwest::Url,
    /// Openings within this time of each other go out as one notification.
    pub group_wait: Duration,
    /// An open incident is told again this often (`None`: never; an
    /// Alertmanager repeats by its own routes).
    pub repeat_interval: Option<Duration>,
    /// Of one outbound request.
    pub timeout: Duration,
    /// Retries end this long after the notification was created.
    pub give_up_after: Duration,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("kind", &self.kind.as_str())
            .field("url", &crate::config::redact_url(self.url.as_str()))
            .field("group_wait", &self.group_wait)
            .field("repeat_interval", &self.repeat_interval)
            .field("timeout", &self.timeout)
            .field("give_up_after", &self.give_up_after)
            .finish()
    }
}

/// Every rule and channel of a server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alerting {
    pub rules: Vec<Rule>,
    pub channels: Vec<Channel>,
    /// A `mass_failure` rule's window when it names none: the stale window.
    pub default_window: Duration,
}

impl Alerting {
    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }

    /// These rules (the config file's) and the rules made through the API.
    /// A stored rule that no longer checks (it names a channel since
    /// removed from the config, say) is left out, with its problem.
    pub fn with_stored(&self, stored: &[StoredRule]) -> (Alerting, Vec<(String, String)>) {
        let mut all = self.clone();
        let mut problems = Vec::new();
        for s in stored {
            if all.rules.iter().any(|r| r.name == s.name) {
                problems.push((
                    s.name.clone(),
                    "a rule of the config file has its name".into(),
                ));
                continue;
            }
            let checked = serde_json::from_str::<RuleSpec>(&s.spec)
                .map_err(|e| e.to_string())
                .and_then(|spec| spec.check(&s.name, self).map_err(|e| e.to_string()));
            match checked {
                Ok(rule) => all.rules.push(rule),
                Err(e) => problems.push((s.name.clone(), e)),
            }
        }
        (all, problems)
    }
}

/// A rule as the API takes it (`PUT /v1/alert-rules/{name}`) and stores
/// it: the `[[alert]]` keys, durations in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// `worker_offline`, `worker_crashes`, `machine_offline` or `mass_failure`.
    pub kind: String,
    /// Default `critical`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// Labels a worker (a machine, for `machine_offline`) must carry.
    #[serde(default)]
    pub select: BTreeMap<String, String>,
    /// The `[[channel]]`s of the config file it notifies (at least one).
    pub channels: Vec<String>,
    /// `worker_offline`, `machine_offline`: how long, in ms, the condition
    /// must hold (default 0).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::api::dto::whole::u64"
    )]
    pub for_ms: Option<u64>,
    /// `worker_crashes`: this many crashes (default 3)…
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::api::dto::whole::u32"
    )]
    pub crashes: Option<u32>,
    /// …within this many ms (default an hour).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::api::dto::whole::u64"
    )]
    pub within_ms: Option<u64>,
    /// `mass_failure`: this share (1–100, default 20) of the selected live
    /// workers…
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::api::dto::whole::u32"
    )]
    pub percent: Option<u32>,
    /// …crashing within this many ms (default the stale window).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::api::dto::whole::u64"
    )]
    pub window_ms: Option<u64>,
}

impl RuleSpec {
    /// Checks the rule named `name` against the channels of `alerting`;
    /// errors name the API's keys (`percent`, `for_ms`).
    pub fn check(&self, name: &str, alerting: &Alerting) -> Result<Rule, ConfigError> {
        let ms = |v: Option<u64>| v.map(|ms| format!("{ms}ms"));
        let raw = RawRule {
            name: Some(name.to_owned()),
            kind: Some(self.kind.clone()),
            severity: self.severity.clone(),
            select: Some(self.select.clone()),
            channels: Some(self.channels.clone()),
            // 0 is the default: the condition opens at once.
            for_: ms(self.for_ms.filter(|&v| v > 0)),
            crashes: self.crashes,
            within: ms(self.within_ms),
            percent: self.percent,
            window: ms(self.window_ms),
        };
        let key = |k: &str| match k {
            "for" => "for_ms".to_owned(),
            "within" => "within_ms".to_owned(),
            "window" => "window_ms".to_owned(),
            k => k.to_owned(),
        };
        for (k, v) in [
            ("for_ms", self.for_ms),
            ("within_ms", self.within_ms),
            ("window_ms", self.window_ms),
        ] {
            if v.is_some_and(|v| v > MAX_RULE_MS) {
                return Err(bad(k.into(), format!("must be at most {MAX_RULE_MS}")));
            }
        }
        let rule = check_rule(raw, &key, &alerting.channels, alerting.default_window)?;
        if self.for_ms == Some(0) {
            only_for_kinds(
                &key,
                "for",
                &self.kind,
                &["worker_offline", "machine_offline"],
            )?;
        }
        Ok(rule)
    }

    /// The spec of a checked rule.
    pub fn of(rule: &Rule) -> RuleSpec {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut spec = RuleSpec {
            kind: rule.kind.as_str().into(),
            severity: Some(rule.severity.clone()),
            select: rule.select.clone(),
            channels: rule.channels.clone(),
            ..RuleSpec::default()
        };
        match rule.kind {
            RuleKind::WorkerOffline { for_ } | RuleKind::MachineOffline { for_ } => {
                spec.for_ms = Some(ms(for_));
            }
            RuleKind::WorkerCrashes { crashes, within } => {
                spec.crashes = Some(crashes);
                spec.within_ms = Some(ms(within));
            }
            RuleKind::MassFailure { percent, window } => {
                spec.percent = Some(percent);
                spec.window_ms = Some(ms(window));
            }
        }
        spec
    }
}

/// An error if key `k` is given to a rule of a kind that takes none.
fn only_for_kinds(
    key: &dyn Fn(&str) -> String,
    k: &str,
    kind: &str,
    kinds: &[&str],
) -> Result<(), ConfigError> {
    if kinds.contains(&kind) {
        Ok(())
    } else {
        Err(bad(key(k), format!("does not apply to a {kind} rule")))
    }
}

/// The longest duration a rule made through the API may give, in ms (a
/// hundred years).
pub const MAX_RULE_MS: u64 = 100 * 365 * 86_400_000;

/// How often an open incident is told again, unless a channel says.
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3_600);

fn bad(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

pub fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks `[[channel]]` and `[[alert]]` tables. `stale_after` is the
/// default `mass_failure` window.
pub fn resolve(
    raw_rules: Vec<RawRule>,
    raw_channels: Vec<RawChannel>,
    stale_after: Duration,
) -> Result<Alerting, ConfigError> {
    let mut channels: Vec<Channel> = Vec::new();
    for (i, c) in raw_channels.into_iter().enumerate() {
        let key = |k: &str| format!("channel[{i}].{k}");
        let name = c.name.ok_or_else(|| bad(key("name"), "is required"))?;
        if !name_ok(&name) {
            return Err(bad(
                key("name"),
                "must be 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        if channels.iter().any(|o| o.name == name) {
            return Err(bad(key("name"), format!("{name:?} is declared twice")));
        }
        let url = c.url.ok_or_else(|| bad(key("url"), "is required"))?;
        let url = reqwest::Url::parse(&url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| bad(key("url"), "must be an http:// or https:// URL"))?;
        let kind = match c.kind.as_deref() {
            Some("webhook") => {
                let secret = c
                    .secret
                    .ok_or_else(|| bad(key("secret"), "is required for a webhook"))?;
                if crate::config::entropy_bits(&secret) < crate::config::MIN_SECRET_BITS {
                    return Err(bad(
                        key("secret"),
                        "is too easy to guess: use at least 16 random characters",
                    ));
                }
                ChannelKind::Webhook { secret }
            }
            Some(k @ ("slack" | "alertmanager")) => {
                if c.secret.is_some() {
                    return Err(bad(key("secret"), format!("a {k} channel is not signed")));
                }
                if k == "slack" {
                    ChannelKind::Slack
                } else {
                    ChannelKind::Alertmanager
                }
            }
            Some(other) => {
                return Err(bad(
                    key("kind"),
                    format!("expected \"webhook\", \"slack\" or \"alertmanager\", got {other:?}"),
                ))
            }
            None => return Err(bad(key("kind"), "is required")),
        };
        let dur = |k: &'static str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => parse_duration(k, s).map_err(|e| match e {
                ConfigError::Invalid { message, .. } => bad(key(k), message),
                other => other,
            }),
        };
        let group_wait = dur("group_wait", &c.group_wait, Duration::from_secs(10))?;
        let timeout = dur("timeout", &c.timeout, Duration::from_secs(10))?;
        let give_up_after = dur(
            "give_up_after",
            &c.give_up_after,
            Duration::from_secs(86_400),
        )?;
        if timeout.is_zero() {
            return Err(bad(key("timeout"), "must be more than 0s"));
        }
        let repeat_interval =
            match (&kind, &c.repeat_interval) {
                (ChannelKind::Alertmanager, Some(_)) => return Err(bad(
                    key("repeat_interval"),
                    "an Alertmanager repeats notifications itself (its route's repeat_interval)",
                )),
                (ChannelKind::Alertmanager, None) => None,
                // "0s": never.
                (_, Some(v)) if matches!(v.trim(), "0" | "0s") => None,
                (_, v) => Some(dur("repeat_interval", v, DEFAULT_REPEAT_INTERVAL)?),
            };
        if repeat_interval.is_some_and(|d| d < Duration::from_secs(60)) {
            return Err(bad(
                key("repeat_interval"),
                "must be at least 1m (or 0s: never)",
            ));
        }
        channels.push(Channel {
            name,
            kind,
            url,
            group_wait,
            repeat_interval,
            timeout,
            give_up_after,
        });
    }

    let mut rules: Vec<Rule> = Vec::new();
    for (i, r) in raw_rules.into_iter().enumerate() {
        let key = |k: &str| format!("alert[{i}].{k}");
        let rule = check_rule(r, &key, &channels, stale_after)?;
        if rules.iter().any(|o| o.name == rule.name) {
            return Err(bad(
                key("name"),
                format!("{:?} is declared twice", rule.name),
            ));
        }
        rules.push(rule);
    }
    Ok(Alerting {
        rules,
        channels,
        default_window: stale_after,
    })
}

/// Checks one rule against the channels; `key` names a field in errors
/// (`alert[0].percent` in the config file, `percent` in the API).
pub fn check_rule(
    r: RawRule,
    key: &dyn Fn(&str) -> String,
    channels: &[Channel],
    stale_after: Duration,
) -> Result<Rule, ConfigError> {
    let name = r.name.ok_or_else(|| bad(key("name"), "is required"))?;
    if !name_ok(&name) {
        return Err(bad(
            key("name"),
            "must be 1-64 characters of A-Z a-z 0-9 - _ .",
        ));
    }
    let dur = |k: &'static str, v: &Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(s) => parse_duration(k, s).map_err(|e| match e {
            ConfigError::Invalid { message, .. } => bad(key(k), message),
            other => other,
        }),
    };
    let kind_name = r
        .kind
        .as_deref()
        .ok_or_else(|| bad(key("kind"), "is required"))?;
    // Keys that only some kinds take.
    let only = |k: &str, present: bool, kinds: &[&str]| {
        if present {
            only_for_kinds(key, k, kind_name, kinds)
        } else {
            Ok(())
        }
    };
    only(
        "for",
        r.for_.is_some(),
        &["worker_offline", "machine_offline"],
    )?;
    only("crashes", r.crashes.is_some(), &["worker_crashes"])?;
    only("within", r.within.is_some(), &["worker_crashes"])?;
    only("percent", r.percent.is_some(), &["mass_failure"])?;
    only("window", r.window.is_some(), &["mass_failure"])?;
    let kind = match kind_name {
        "worker_offline" => RuleKind::WorkerOffline {
            for_: dur("for", &r.for_, Duration::ZERO)?,
        },
        "machine_offline" => RuleKind::MachineOffline {
            for_: dur("for", &r.for_, Duration::ZERO)?,
        },
        "worker_crashes" => {
            let crashes = r.crashes.unwrap_or(3);
            if crashes == 0 {
                return Err(bad(key("crashes"), "must be at least 1"));
            }
            let within = dur("within", &r.within, Duration::from_secs(3_600))?;
            if within.is_zero() {
                return Err(bad(key("within"), "must be more than 0s"));
            }
            RuleKind::WorkerCrashes { crashes, within }
        }
        "mass_failure" => {
            let percent = r.percent.unwrap_or(20);
            if !(1..=100).contains(&percent) {
                return Err(bad(key("percent"), "must be 1-100"));
            }
            let window = dur("window", &r.window, stale_after)?;
            if window.is_zero() {
                return Err(bad(key("window"), "must be more than 0s"));
            }
            RuleKind::MassFailure { percent, window }
        }
        other => {
            return Err(bad(
                key("kind"),
                format!(
                    "expected \"worker_offline\", \"worker_crashes\", \"machine_offline\" \
                     or \"mass_failure\", got {other:?}"
                ),
            ))
        }
    };
    let severity = r.severity.unwrap_or_else(|| "critical".into());
    if !name_ok(&severity) {
        return Err(bad(
            key("severity"),
            "must be 1-64 characters of A-Z a-z 0-9 - _ .",
        ));
    }
    let select = r.select.unwrap_or_default();
    if let Err(e) = Labels::parse(select.clone()) {
        return Err(bad(key("select"), e.to_string()));
    }
    let wanted = r.channels.unwrap_or_default();
    if wanted.is_empty() {
        return Err(bad(key("channels"), "must name at least one [[channel]]"));
    }
    let mut seen = BTreeSet::new();
    for c in &wanted {
        if !channels.iter().any(|o| &o.name == c) {
            return Err(bad(
                key("channels"),
                format!("no [[channel]] is named {c:?}"),
            ));
        }
        if !seen.insert(c) {
            return Err(bad(key("channels"), format!("{c:?} is named twice")));
        }
    }
    Ok(Rule {
        name,
        kind,
        severity,
        select,
        channels: wanted,
    })
}
