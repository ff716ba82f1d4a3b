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

/// One layer of configuration; every key optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub data_dir: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub stale_after: Option<String>,
    pub sweep_interval: Option<String>,
    pub cleanup_interval: Option<String>,
    pub flush_interval: Option<String>,
    pub min_heartbeat_interval: Option<String>,
    pub max_stale_after: Option<String>,
    pub metrics_listen: Option<String>,
    pub metrics_token: Option<String>,
    pub forget_offline_after: Option<String>,
    pub event_retention: Option<String>,
    pub health_retention: Option<String>,
    pub flapping_crashes_per_hour: Option<String>,
    pub admin_token: Option<String>,
    pub admin_token_file: Option<String>,
    pub advertise_url: Option<String>,
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<String>,
    pub max_streams: Option<String>,
    pub max_streams_per_token: Option<String>,
    pub failed_auth_burst: Option<String>,
    pub failed_auth_refill: Option<String>,
    pub re_register: Option<String>,
    /// `[[alert]]` tables (file only).
    pub alert: Option<Vec<crate::alerts::rules::RawRule>>,
    /// `[[channel]]` tables (file only).
    pub channel: Option<Vec<crate::alerts::rules::RawChannel>>,
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

fn opt_count(key: &'static str, v: &Option<String>) -> Result<Option<usize>, ConfigError> {
    v.as_deref()
        .map(|s| match s.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(invalid(
                key,
                format!("{s:?} is not a whole number greater than zero"),
            )),
        })
        .transpose()
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

    /// `self`, with keys it lacks taken from `lower`.
    pub fn over(self, lower: RawConfig) -> RawConfig {
        macro_rules! pick {
            ($($f:ident),*) => { RawConfig { $($f: self.$f.or(lower.$f)),* } };
        }
        pick!(
            listen,
            database_url,
            data_dir,
            heartbeat_interval,
            stale_after,
            sweep_interval,
            cleanup_interval,
            flush_interval,
            min_heartbeat_interval,
            max_stale_after,
            metrics_listen,
            metrics_token,
            forget_offline_after,
            event_retention,
            health_retention,
            flapping_crashes_per_hour,
            admin_token,
            admin_token_file,
            advertise_url,
            header_read_timeout,
            body_read_timeout,
            idle_timeout,
            max_connections,
            max_streams,
            max_streams_per_token,
            failed_auth_burst,
            failed_auth_refill,
            re_register,
            alert,
            channel
        )
    }

    /// Applies defaults and checks everything.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let listen = addr("listen", self.listen.as_deref().unwrap_or("127.0.0.1:7373"))?;
        let data_dir = PathBuf::from(self.data_dir.as_deref().unwrap_or("./rollcall-data"));
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
                heartbeat_interval: Duration::from_secs(30),
                stale_after: Duration::from_secs(90),
            },
        );
        defaults
            .check_consistent(IntervalKeys::CONFIG)
            .map_err(|e| invalid("stale_after", e.to_string()))?;
        let min_heartbeat_interval =
            opt_duration("min_heartbeat_interval", &self.min_heartbeat_interval)?
                .unwrap_or(Duration::from_millis(50));
        let max_stale_after = opt_duration("max_stale_after", &self.max_stale_after)?
            .unwrap_or(Duration::from_secs(86_400));
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
            header_read_timeout: opt_duration("header_read_timeout", &self.header_read_timeout)?
                .unwrap_or(d.header_read_timeout),
            body_read_timeout: opt_duration("body_read_timeout", &self.body_read_timeout)?
                .unwrap_or(d.body_read_timeout),
            idle_timeout: opt_duration("idle_timeout", &self.idle_timeout)?
                .unwrap_or(d.idle_timeout),
            max_connections: opt_count("max_connections", &self.max_connections)?
                .unwrap_or(d.max_connections),
            max_streams: 0,
            max_streams_per_token: opt_count("max_streams_per_token", &self.max_streams_per_token)?
                .unwrap_or(d.max_streams_per_token),
            failed_auth_burst: opt_count("failed_auth_burst", &self.failed_auth_burst)?
                .unwrap_or(d.failed_auth_burst),
            failed_auth_refill: opt_duration("failed_auth_refill", &self.failed_auth_refill)?
                .unwrap_or(d.failed_auth_refill),
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

        let event_retention = opt_duration("event_retention", &self.event_retention)?
            .unwrap_or(Duration::from_secs(30 * 86_400));
        let health_retention = opt_duration("health_retention", &self.health_retention)?
            .unwrap_or(Duration::from_secs(400 * 86_400));
        if health_retention <= event_retention {
            return Err(invalid(
                "health_retention",
                format!(
                    "{health_retention:?} must be longer than event_retention \
                     ({event_retention:?}): the health history outlives the event log"
                ),
            ));
        }
        let flapping_crashes_per_hour =
            match opt_count("flapping_crashes_per_hour", &self.flapping_crashes_per_hour)? {
                None => 3,
                Some(n) => u32::try_from(n).map_err(|_| {
                    invalid("flapping_crashes_per_hour", "must be at most 4294967295")
                })?,
            };

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
            sweep_interval: opt_duration("sweep_interval", &self.sweep_interval)?
                .unwrap_or(Duration::from_secs(120)),
            cleanup_interval: opt_duration("cleanup_interval", &self.cleanup_interval)?
                .unwrap_or(Duration::from_secs(600)),
            flush_interval: opt_duration("flush_interval", &self.flush_interval)?
                .unwrap_or(Duration::from_secs(5)),
            metrics_listen,
            metrics_token,
            forget_offline_after: opt_duration("forget_offline_after", &self.forget_offline_after)?
                .unwrap_or(Duration::from_secs(7 * 86_400)),
            event_retention,
            health_retention,
            flapping_crashes_per_hour,
            admin_token,
            admin_token_file: self.admin_token_file.map(PathBuf::from),
            advertise_url,
            limits,
            re_register: match self.re_register.as_deref().map(str::trim) {
                None | Some("any") => ReRegister::Any,
                Some("own_token") => ReRegister::OwnToken,
                Some(other) => {
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
