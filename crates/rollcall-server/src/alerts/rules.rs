//! Alert rules and notification channels: `[[alert]]` and `[[channel]]` in
//! the TOML config, checked at start (a bad one names its key and the server
//! exits 2).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use rollcall_core::Labels;
use serde::Deserialize;

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
}

impl Alerting {
    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }
}

fn bad(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

fn name_ok(s: &str) -> bool {
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
        channels.push(Channel {
            name,
            kind,
            url,
            group_wait,
            timeout,
            give_up_after,
        });
    }

    let mut rules: Vec<Rule> = Vec::new();
    for (i, r) in raw_rules.into_iter().enumerate() {
        let key = |k: &str| format!("alert[{i}].{k}");
        let name = r.name.ok_or_else(|| bad(key("name"), "is required"))?;
        if !name_ok(&name) {
            return Err(bad(
                key("name"),
                "must be 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        if rules.iter().any(|o| o.name == name) {
            return Err(bad(key("name"), format!("{name:?} is declared twice")));
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
            if present && !kinds.contains(&kind_name) {
                Err(bad(key(k), format!("does not apply to a {kind_name} rule")))
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
        rules.push(Rule {
            name,
            kind,
            severity,
            select,
            channels: wanted,
        });
    }
    Ok(Alerting { rules, channels })
}
