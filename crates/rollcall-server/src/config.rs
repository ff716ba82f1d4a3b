//! Server configuration: flags > `ROLLCALL_*` environment > TOML file >
//! defaults.
//!
//! Each layer is a [`RawConfig`] of optional strings; [`RawConfig::over`]
//! stacks them and [`RawConfig::resolve`] checks the result, failing with a
//! message that names the offending key. Durations are written like `200ms`,
//! `30s`, `2m`, `7d`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rollcall_core::policy::IntervalKeys;
use rollcall_core::{Intervals, LivenessPolicy};
use serde::Deserialize;
use thiserror::Error;

/// Where a setting may be given besides the TOML file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A flag of `rollcall serve` and a `ROLLCALL_*` variable.
    Flag,
    /// A `ROLLCALL_*` variable only: a secret, never a flag (flags show in
    /// the process list).
    Env,
    /// The file only.
    File,
}

/// One setting of the server: its key, where it may be given, its default
/// and its help. [`SETTINGS`] lists them all; the file's keys, the flags of
/// `rollcall serve`, their variables and the defaults of
/// [`RawConfig::resolve`] all come from it.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The key in the TOML file.
    pub key: &'static str,
    pub source: Source,
    /// The default as it would be written in the file; `None` when there is
    /// none or it follows from other settings.
    pub default: Option<&'static str>,
    /// One line for `rollcall serve --help` (no final period).
    pub help: &'static str,
}

impl Setting {
    /// The flag's long name (`stale-after`), if it has one.
    pub fn flag(&self) -> Option<String> {
        (self.source == Source::Flag).then(|| self.key.replace('_', "-"))
    }

    /// The environment variable (`ROLLCALL_STALE_AFTER`), if it has one.
    pub fn env(&self) -> Option<String> {
        (self.source != Source::File).then(|| format!("ROLLCALL_{}", self.key.to_uppercase()))
    }
}

/// Declares every setting once: [`RawConfig`]'s fields, [`SETTINGS`] and
/// [`RawConfig::over`].
macro_rules! settings {
    ($($key:ident: $source:ident, $default:expr, $help:literal;)*) => {
        /// One layer of configuration; every key optional.
        #[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
        #[serde(deny_unknown_fields)]
        pub struct RawConfig {
            $(#[doc = $help] pub $key: Option<String>,)*
            /// `[[alert]]` tables (file only).
            pub alert: Option<Vec<crate::alerts::rules::RawRule>>,
            /// `[[channel]]` tables (file only).
            pub channel: Option<Vec<crate::alerts::rules::RawChannel>>,
        }

        /// Every setting, in the order `rollcall serve --help` lists them.
        pub const SETTINGS: &[Setting] = &[$(Setting {
            key: stringify!($key),
            source: Source::$source,
            default: $default,
            help: $help,
        },)*];

        impl RawConfig {
            /// `self`, with keys it lacks taken from `lower`.
            pub fn over(self, lower: RawConfig) -> RawConfig {
                RawConfig {
                    $($key: self.$key.or(lower.$key),)*
                    alert: self.alert.or(lower.alert),
                    channel: self.channel.or(lower.channel),
                }
            }

            /// A setting's value by its key; `None` for an unknown key.
            pub fn value_mut(&mut self, key: &str) -> Option<&mut Option<String>> {
                match key {
                    $(stringify!($key) => Some(&mut self.$key),)*
                    _ => None,
                }
            }
        }
    };
}

settings! {
    listen: Flag, Some("127.0.0.1:7373"),
        "Address to serve on (default 127.0.0.1:7373); a port of 0 picks a free one";
    database_url: Flag, None,
        "sqlite://PATH (default sqlite://<data-dir>/rollcall.db), or postgres://USER@HOST/DB for replicas";
    data_dir: Flag, Some("./rollcall-data"),
        "Where the database and the generated admin token live (default ./rollcall-data)";
    heartbeat_interval: Flag, Some("30s"),
        "Default heartbeat interval of workers (default 30s)";
    stale_after: Flag, Some("90s"),
        "Default time without a heartbeat after which a worker is stale (default 90s; at least 2 × heartbeat interval)";
    sweep_interval: Flag, Some("2m"),
        "How often the safety-net sweep runs (default 2m)";
    cleanup_interval: Flag, Some("10m"),
        "How often the full cleanup runs (default 10m)";
    flush_interval: Flag, Some("5s"),
        "How often heartbeat times are written behind (default 5s)";
    min_heartbeat_interval: Flag, Some("50ms"),
        "Smallest heartbeat interval a worker may ask for (default 50ms)";
    max_stale_after: Flag, Some("1d"),
        "Largest stale_after a worker may ask for (default 1d)";
    metrics_listen: Flag, None,
        "Serve /metrics on a separate address";
    metrics_token: Env, None,
        "A secret that /metrics then needs (or an admin token)";
    forget_offline_after: Flag, Some("7d"),
        "Forget workers offline for longer than this (default 7d)";
    event_retention: Flag, Some("30d"),
        "Prune events older than this (default 30d)";
    health_retention: Flag, Some("400d"),
        "Keep the health history this long (default 400d; longer than event_retention)";
    flapping_crashes_per_hour: Flag, Some("3"),
        "Crashes within the last hour that make a worker or machine flapping (default 3)";
    admin_token: Env, None,
        "The admin token (default: generated into <data-dir>/admin.token)";
    admin_token_file: File, None,
        "A file holding the admin token";
    advertise_url: Flag, None,
        "How the other replicas reach this one (PostgreSQL mode; default http:// + the listen address)";
    header_read_timeout: Flag, Some("10s"),
        "How long a request's head may take (default 10s)";
    body_read_timeout: Flag, Some("30s"),
        "How long a request's body may take after its head (default 30s)";
    idle_timeout: Flag, Some("75s"),
        "Close keep-alive connections idle for this long (default 75s)";
    max_connections: Flag, Some("10000"),
        "Open connections at most (default 10000, lowered to fit the open-file limit)";
    max_streams: Flag, None,
        "Open event streams at most (default 1000)";
    max_streams_per_token: Flag, Some("32"),
        "Open event streams per token at most (default 32)";
    failed_auth_burst: Flag, Some("100"),
        "Failed authentications per client address in a burst before 429 (default 100)";
    failed_auth_refill: Flag, Some("100ms"),
        "A client address regains one failed attempt this often (default 100ms)";
    re_register: Flag, Some("any"),
        "Who may register a live worker's name again: `any` (default) or `own_token` (its current token, or an admin token)";
}

/// A configuration problem, naming the key.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("config key `{key}`: {message}")]
    Invalid {
        key: std::borrow::Cow<'static, str>,
        message: String,
    },
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The resolved configuration.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub data_dir: PathBuf,
    pub policy: LivenessPolicy,
    pub sweep_interval: Duration,
    pub cleanup_interval: Duration,
    pub flush_interval: Duration,
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_token: Option<String>,
    pub forget_offline_after: Duration,
    pub event_retention: Duration,
    /// How long the health history is kept (longer than the event log).
    pub health_retention: Duration,
    /// Crashes within an hour that make a worker or machine `flapping`.
    pub flapping_crashes_per_hour: u32,
    pub admin_token: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    /// How the other replicas reach this one (PostgreSQL mode); `None`
    /// means `http://` + the address it listens on.
    pub advertise_url: Option<String>,
    /// Connection limits and timeouts.
    pub limits: Limits,
    /// Who may register the name of a live worker again.
    pub re_register: ReRegister,
    /// Alert rules and notification channels.
    pub alerting: crate::alerts::rules::Alerting,
}

/// Who may register again the name of a worker that is live (online or
/// draining): `re_register` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReRegister {
    /// Any enroll or admin token (a restarted process takes its name back
    /// at once, without its old token).
    #[default]
    Any,
    /// Only a request that also presents the live worker's current token
    /// (`X-Rollcall-Worker-Token`), or an admin token; others get 409.
    OwnToken,
}

/// What one client may hold of the server: connection timeouts and caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a request's head may take to arrive, counted from the
    /// connection's start (first request) or from its first byte (later
    /// requests).
    pub header_read_timeout: Duration,
    /// How long a request's body may take to arrive, counted from the end
    /// of its head.
    pub body_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Open connections at most (lowered at start to fit the file limit).
    pub max_connections: usize,
    /// Open event streams at most.
    pub max_streams: usize,
    /// Open event streams per token at most.
    pub max_streams_per_token: usize,
    /// Failed authentications a client address may make in a burst before
    /// further failures are answered 429.
    pub failed_auth_burst: usize,
    /// How often a client address regains one failed attempt.
    pub failed_auth_refill: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            max_connections: 10_000,
            max_streams: 1_000,
            max_streams_per_token: 32,
            failed_auth_burst: 100,
            failed_auth_refill: Duration::from_millis(100),
        }
    }
}

impl Config {
    /// Whether the database is PostgreSQL (replicated, active/standby mode).
    pub fn is_postgres(&self) -> bool {
        is_postgres_url(&self.database_url)
    }
}

fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets are never printed, only whether they are set.
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &redact_url(&self.database_url))
            .field("data_dir", &self.data_dir)
            .field("policy", &self.policy)
            .field("sweep_interval", &self.sweep_interval)
            .field("cleanup_interval", &self.cleanup_interval)
            .field("flush_interval", &self.flush_interval)
            .field("metrics_listen", &self.metrics_listen)
            .field(
                "metrics_token",
                &self.metrics_token.as_ref().map(|_| "<set>"),
            )
            .field("forget_offline_after", &self.forget_offline_after)
            .field("event_retention", &self.event_retention)
            .field("health_retention", &self.health_retention)
            .field("flapping_crashes_per_hour", &self.flapping_crashes_per_hour)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("admin_token_file", &self.admin_token_file)
            .field("advertise_url", &self.advertise_url)
            .field("limits", &self.limits)
            .field("re_register", &self.re_register)
            .field("alerting", &self.alerting)
            .finish()
    }
}

/// A database URL without its password.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Parses a duration such as `200ms`, `30s`, `2m`, `7d`.
pub fn parse_duration(key: &'static str, s: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        invalid(
            key,
            format!("{s:?} is not a duration ({e}); write e.g. 200ms, 30s, 2m, 7d"),
        )
    })?;
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

fn opt_duration(key: &'static str, v: &Option<String>) -> Result<Option<Duration>, ConfigError> {
    v.as_deref().map(|s| parse_duration(key, s)).transpose()
}

/// The default of a setting that has one in [`SETTINGS`].
fn default_of(key: &'static str) -> &'static str {
    SETTINGS
        .iter()
        .find(|s| s.key == key)
        .and_then(|s| s.default)
        .unwrap_or_else(|| panic!("setting `{key}` has no default in SETTINGS"))
}

/// A setting's value, or its default.
fn or_default<'a>(key: &'static str, v: &'a Option<String>) -> &'a str {
    v.as_deref().unwrap_or_else(|| default_of(key))
}

/// A duration setting, or its default.
fn duration(key: &'static str, v: &Option<String>) -> Result<Duration, ConfigError> {
    parse_duration(key, or_default(key, v))
}

/// A count setting, or its default.
fn count(key: &'static str, v: &Option<String>) -> Result<usize, ConfigError> {
    parse_count(key, or_default(key, v))
}

/// The least estimated entropy of a configured secret, in bits.
pub const MIN_SECRET_BITS: f64 = 48.0;

/// An estimate of a secret's entropy: its length times the Shannon entropy
/// of its characters' distribution. It catches repeated, short and
/// low-variety values (`aaaaaaaaaaaaaaaa`, `x`), not a dictionary word.
pub fn entropy_bits(s: &str) -> f64 {
    let mut counts = std::collections::HashMap::new();
    let mut n = 0usize;
    for c in s.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    let n_f = n as f64;
    let per_char: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n_f;
            -p * p.log2()
        })
        .sum();
    let bits = per_char * n_f;
    // One repeated character gives -0.0.
    if bits > 0.0 {
        bits
    } else {
        0.0
    }
}

/// Refuses a secret that is short or has too little variety.
fn check_secret(key: &'static str, s: &str) -> Result<(), ConfigError> {
    if s.chars().count() < 16 || entropy_bits(s) < MIN_SECRET_BITS {
        return Err(invalid(
            key,
            format!(
                "too weak: a secret must be at least 16 characters with enough variety \
                 (estimated entropy {:.0} bits, at least {MIN_SECRET_BITS:.0} needed); \
                 use a random value, e.g. `openssl rand -hex 32`",
                entropy_bits(s)
            ),
        ));
    }
    Ok(())
}

fn parse_count(key: &'static str, s: &str) -> Result<usize, ConfigError> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(invalid(
            key,
            format!("{s:?} is not a whole number greater than zero"),
        )),
    }
}

fn opt_count(key: &'static str, v: &Option<String>) -> Result<Option<usize>, ConfigError> {
    v.as_deref().map(|s| parse_count(key, s)).transpose()
}

fn addr(key: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.trim().parse().map_err(|e| {
        invalid(
            key,
            format!("{s:?} is not a socket address such as 127.0.0.1:7373 ({e})"),
        )
    })
}

impl RawConfig {
    /// Parses a TOML file's text.
    pub fn from_toml(path: &str, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
    }

    /// Applies defaults and checks everything.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let listen = addr("listen", or_default("listen", &self.listen))?;
        let data_dir = PathBuf::from(or_default("data_dir", &self.data_dir));
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let database_url = match self.database_url {
            Some(u) => u,
            None => format!("sqlite://{}", data_dir.join("rollcall.db").display()),
        };
        if !(database_url.starts_with("sqlite:") || is_postgres_url(&database_url)) {
            return Err(invalid(
                "database_url",
                "unsupported URL (expected sqlite://PATH or postgres://USER@HOST/DB)",
            ));
        }
        let advertise_url = match self.advertise_url.filter(|u| !u.is_empty()) {
            Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                return Err(invalid(
                    "advertise_url",
                    format!("expected http://HOST:PORT or https://…, got {u:?}"),
                ))
            }
            Some(u) => Some(u.trim_end_matches('/').to_owned()),
            None if is_postgres_url(&database_url) && listen.ip().is_unspecified() => {
                return Err(invalid(
                    "advertise_url",
                    format!(
                        "must be set with PostgreSQL when listening on {listen}: the other \
                         replicas need an address that reaches this one"
                    ),
                ))
            }
            None => None,
        };

        let heartbeat = opt_duration("heartbeat_interval", &self.heartbeat_interval)?;
        let stale = opt_duration("stale_after", &self.stale_after)?;
        let defaults = Intervals::complete(
            heartbeat,
            stale,
            Intervals {
                heartbeat_interval: duration("heartbeat_interval", &None)?,
                stale_after: duration("stale_after", &None)?,
            },
        );
        defaults
            .check_consistent(IntervalKeys::CONFIG)
            .map_err(|e| invalid("stale_after", e.to_string()))?;
        let min_heartbeat_interval =
            duration("min_heartbeat_interval", &self.min_heartbeat_interval)?;
        let max_stale_after = duration("max_stale_after", &self.max_stale_after)?;
        if defaults.heartbeat_interval < min_heartbeat_interval {
            return Err(invalid(
                "heartbeat_interval",
                format!(
                    "{:?} is below min_heartbeat_interval ({:?})",
                    defaults.heartbeat_interval, min_heartbeat_interval
                ),
            ));
        }
        if defaults.stale_after > max_stale_after {
            return Err(invalid(
                "stale_after",
                format!(
                    "{:?} is above max_stale_after ({:?})",
                    defaults.stale_after, max_stale_after
                ),
            ));
        }

        let metrics_listen = self
            .metrics_listen
            .as_deref()
            .map(|s| addr("metrics_listen", s))
            .transpose()?;
        let metrics_token = self.metrics_token.filter(|t| !t.is_empty());
        if let Some(t) = &metrics_token {
            check_secret("metrics_token", t)?;
        }
        let admin_token = match self.admin_token {
            Some(t) => {
                check_secret("admin_token", t.trim())?;
                Some(t.trim().to_owned())
            }
            None => None,
        };
        if let Some(path) = &self.admin_token_file {
            // Read here too, so that a weak or missing file is a
            // configuration error (exit 2) naming the key.
            let t = std::fs::read_to_string(path)
                .map_err(|e| invalid("admin_token_file", format!("reading {path}: {e}")))?;
            check_secret("admin_token_file", t.trim())?;
        }

        let d = Limits::default();
        let limits = Limits {
            header_read_timeout: duration("header_read_timeout", &self.header_read_timeout)?,
            body_read_timeout: duration("body_read_timeout", &self.body_read_timeout)?,
            idle_timeout: duration("idle_timeout", &self.idle_timeout)?,
            max_connections: count("max_connections", &self.max_connections)?,
            max_streams: 0,
            max_streams_per_token: count("max_streams_per_token", &self.max_streams_per_token)?,
            failed_auth_burst: count("failed_auth_burst", &self.failed_auth_burst)?,
            failed_auth_refill: duration("failed_auth_refill", &self.failed_auth_refill)?,
        };
        let mut limits = limits;
        // Unset, it follows a lowered max_connections: at most half of it.
        limits.max_streams = opt_count("max_streams", &self.max_streams)?
            .unwrap_or_else(|| d.max_streams.min(limits.max_connections / 2).max(1));
        if limits.max_streams >= limits.max_connections {
            return Err(invalid(
                "max_streams",
                format!(
                    "must be below max_connections ({}): every stream holds a connection",
                    limits.max_connections
                ),
            ));
        }

        let event_retention = duration("event_retention", &self.event_retention)?;
        let health_retention = duration("health_retention", &self.health_retention)?;
        if health_retention <= event_retention {
            return Err(invalid(
                "health_retention",
                format!(
                    "{health_retention:?} must be longer than event_retention \
                     ({event_retention:?}): the health history outlives the event log"
                ),
            ));
        }
        let flapping_crashes_per_hour = u32::try_from(count(
            "flapping_crashes_per_hour",
            &self.flapping_crashes_per_hour,
        )?)
        .map_err(|_| invalid("flapping_crashes_per_hour", "must be at most 4294967295"))?;

        let alerting = crate::alerts::rules::resolve(
            self.alert.unwrap_or_default(),
            self.channel.unwrap_or_default(),
            defaults.stale_after,
        )?;
        Ok(Config {
            alerting,
            listen,
            database_url,
            data_dir,
            policy: LivenessPolicy {
                defaults,
                min_heartbeat_interval,
                max_stale_after,
            },
            sweep_interval: duration("sweep_interval", &self.sweep_interval)?,
            cleanup_interval: duration("cleanup_interval", &self.cleanup_interval)?,
            flush_interval: duration("flush_interval", &self.flush_interval)?,
            metrics_listen,
            metrics_token,
            forget_offline_after: duration("forget_offline_after", &self.forget_offline_after)?,
            event_retention,
            health_retention,
            flapping_crashes_per_hour,
            admin_token,
            admin_token_file: self.admin_token_file.map(PathBuf::from),
            advertise_url,
            limits,
            re_register: match or_default("re_register", &self.re_register).trim() {
                "any" => ReRegister::Any,
                "own_token" => ReRegister::OwnToken,
                other => {
                    return Err(invalid(
                        "re_register",
                        format!("expected \"any\" or \"own_token\", got {other:?}"),
                    ))
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> RawConfig {
        let text: String = pairs
            .iter()
            .map(|(k, v)| format!("{k} = {v:?}\n"))
            .collect();
        RawConfig::from_toml("test.toml", &text).unwrap()
    }

    #[test]
    fn health_history_outlives_the_event_log() {
        let c = raw(&[
            ("health_retention", "2y"),
            ("flapping_crashes_per_hour", "5"),
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.flapping_crashes_per_hour, 5);
        for bad in [
            vec![("health_retention", "30d")],
            vec![("health_retention", "10d")],
            vec![("event_retention", "500d")],
        ] {
            let e = raw(&bad).resolve().unwrap_err();
            assert!(e.to_string().contains("`health_retention`"), "{e}");
        }
        let e = raw(&[("flapping_crashes_per_hour", "0")])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("`flapping_crashes_per_hour`"), "{e}");
    }

    #[test]
    fn every_setting_is_a_key_and_its_stated_default_is_the_default() {
        let defaults = format!("{:?}", RawConfig::default().resolve().unwrap());
        let mut stated = 0;
        for s in SETTINGS {
            assert!(
                RawConfig::default().value_mut(s.key).is_some(),
                "{} is a field",
                s.key
            );
            let Some(d) = s.default else { continue };
            stated += 1;
            let mut raw = RawConfig::default();
            *raw.value_mut(s.key).unwrap() = Some(d.to_owned());
            let c = raw.resolve().unwrap();
            assert_eq!(format!("{c:?}"), defaults, "{} = {d:?}", s.key);
            assert!(
                s.help.contains(&format!("default {d}"))
                    || s.help.contains(&format!("`{d}` (default)")),
                "the help of {} states its default {d}: {}",
                s.key,
                s.help
            );
        }
        assert!(stated >= 20, "{stated}");
        assert!(RawConfig::default().value_mut("no_such_key").is_none());
    }

    #[test]
    fn the_config_table_of_the_api_document_matches_the_settings() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/API.md"))
                .unwrap();
        for s in SETTINGS {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", s.key)))
                .unwrap_or_else(|| panic!("docs/API.md has a row for {}", s.key));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let quoted = |v: Option<String>, prefix: &str| {
                v.map_or("—".to_owned(), |v| format!("`{prefix}{v}`"))
            };
            assert_eq!(cells[2], quoted(s.flag(), "--"), "{row}");
            assert_eq!(cells[3], quoted(s.env(), ""), "{row}");
            if let Some(d) = s.default {
                assert!(cells[4].contains(&format!("`{d}`")), "{row}");
            }
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = RawConfig::default().resolve().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7373");
        assert_eq!(c.database_url, "sqlite://./rollcall-data/rollcall.db");
        assert_eq!(
            c.policy.defaults.heartbeat_interval,
            Duration::from_secs(30)
        );
        assert_eq!(c.policy.defaults.stale_after, Duration::from_secs(90));
        assert_eq!(c.sweep_interval, Duration::from_secs(120));
        assert_eq!(c.cleanup_interval, Duration::from_secs(600));
        assert_eq!(c.flush_interval, Duration::from_secs(5));
        assert_eq!(c.policy.min_heartbeat_interval, Duration::from_millis(50));
        assert_eq!(c.policy.max_stale_after, Duration::from_secs(86_400));
        assert_eq!(c.forget_offline_after, Duration::from_secs(7 * 86_400));
        assert_eq!(c.event_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.health_retention, Duration::from_secs(400 * 86_400));
        assert_eq!(c.flapping_crashes_per_hour, 3);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.re_register, ReRegister::Any);
        let c = raw(&[("re_register", "own_token")]).resolve().unwrap();
        assert_eq!(c.re_register, ReRegister::OwnToken);
        let e = raw(&[("re_register", "mine")]).resolve().unwrap_err();
        assert!(e.to_string().contains("`re_register`"), "{e}");
    }

    #[test]
    fn limits_are_checked() {
        let c = raw(&[("idle_timeout", "5s"), ("max_connections", "500")])
            .resolve()
            .unwrap();
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.max_connections, 500);
        assert_eq!(c.limits.max_streams, 250, "follows max_connections");
        let e = raw(&[("max_connections", "0")]).resolve().unwrap_err();
        assert!(e.to_string().contains("`max_connections`"), "{e}");
        let e = raw(&[("max_connections", "100"), ("max_streams", "100")])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("`max_streams`"), "{e}");
        let e = raw(&[("header_read_timeout", "0s")]).resolve().unwrap_err();
        assert!(e.to_string().contains("`header_read_timeout`"), "{e}");
    }

    #[test]
    fn one_interval_implies_the_other() {
        let c = raw(&[("heartbeat_interval", "100ms")]).resolve().unwrap();
        assert_eq!(c.policy.defaults.stale_after, Duration::from_millis(300));
        let c = raw(&[("stale_after", "1s")]).resolve().unwrap();
        assert_eq!(
            c.policy.defaults.heartbeat_interval,
            Duration::from_millis(333)
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = raw(&[("heartbeat_interval", "10s"), ("stale_after", "15s")])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("stale_after"), "{e}");
        let e = raw(&[("sweep_interval", "soon")]).resolve().unwrap_err();
        assert!(e.to_string().contains("`sweep_interval`"), "{e}");
        let e = raw(&[("listen", "nowhere")]).resolve().unwrap_err();
        assert!(e.to_string().contains("`listen`"), "{e}");
        let e = raw(&[("heartbeat_interval", "10ms")])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("`heartbeat_interval`"), "{e}");
        let e = raw(&[("flush_interval", "0s")]).resolve().unwrap_err();
        assert!(e.to_string().contains("`flush_interval`"), "{e}");
        let e = RawConfig::from_toml("x.toml", "stale_afterr = \"1s\"").unwrap_err();
        assert!(e.to_string().contains("stale_afterr"), "{e}");
    }

    #[test]
    fn layers_stack_in_order() {
        let flags = raw(&[("listen", "127.0.0.1:1")]);
        let file = raw(&[("listen", "127.0.0.1:2"), ("flush_interval", "7s")]);
        let c = flags.over(file).resolve().unwrap();
        assert_eq!(c.listen.port(), 1);
        assert_eq!(c.flush_interval, Duration::from_secs(7));
    }

    #[test]
    fn postgres_urls_and_advertise_url() {
        let c = raw(&[("database_url", "postgres://u@h/db")])
            .resolve()
            .unwrap();
        assert!(c.is_postgres());
        assert_eq!(c.advertise_url, None);
        let e = raw(&[("database_url", "mysql://h/db")])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("`database_url`"), "{e}");
        // On a wildcard address the replica cannot guess how it is reached.
        let e = raw(&[
            ("database_url", "postgresql://h/db"),
            ("listen", "0.0.0.0:7373"),
        ])
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("`advertise_url`"), "{e}");
        let c = raw(&[
            ("database_url", "postgresql://h/db"),
            ("listen", "0.0.0.0:7373"),
            ("advertise_url", "http://10.0.0.5:7373/"),
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.advertise_url.as_deref(), Some("http://10.0.0.5:7373"));
        let e = raw(&[("advertise_url", "10.0.0.5:7373")])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("`advertise_url`"), "{e}");
    }

    #[test]
    fn weak_secrets_are_refused_naming_the_key() {
        for (key, weak) in [
            ("admin_token", "aaaaaaaaaaaaaaaa"),
            ("admin_token", "abababababababababab"),
            ("admin_token", "short"),
            ("metrics_token", "x"),
            ("metrics_token", "0000000000000000000000000000"),
        ] {
            let e = raw(&[(key, weak)]).resolve().unwrap_err();
            assert!(e.to_string().contains(&format!("`{key}`")), "{e}");
            if weak.len() > 4 {
                assert!(
                    !e.to_string().contains(weak),
                    "the secret is not echoed: {e}"
                );
            }
        }
        for strong in [
            "rc_admin_test-suite-admin-token-0123456789",
            "3f9a1c7e5b2d8064a1f3c5e7b9d0f2a4",
            "scrape-secret-0123456789",
        ] {
            raw(&[("admin_token", strong), ("metrics_token", strong)])
                .resolve()
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.token");
        std::fs::write(&file, "aaaaaaaaaaaaaaaaaaaa\n").unwrap();
        let e = raw(&[("admin_token_file", file.to_str().unwrap())])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("`admin_token_file`"), "{e}");
    }

    #[test]
    fn secrets_are_redacted() {
        let mut c = RawConfig::default().resolve().unwrap();
        c.admin_token = Some("rc_admin_supersecretvalue".into());
        c.database_url = "postgres://u:pw@h/db".into();
        let s = format!("{c:?}");
        assert!(!s.contains("supersecret") && !s.contains("pw@"), "{s}");
    }
}
