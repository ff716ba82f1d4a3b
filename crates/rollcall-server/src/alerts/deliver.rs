//! The deliverer: empties the outbox into the channels.
//!
//! Due notifications (past their `group_wait`, and each after every older
//! one of its incident to its channel) go to each channel **as one request**
//! per channel and round: a webhook body or a Slack message lists them all,
//! an Alertmanager POST carries one alert per incident. A failure is retried
//! with capped exponential backoff (1 s doubling to 10 min) until the
//! channel's `give_up_after` (24 h by default) has passed since the
//! notification was created; then it is given up and counted. Delivery is
//! at least once: a notification sent but not recorded as delivered (a crash
//! in between) is sent again with the same idempotency key.
//!
//! Alertmanager forgets an alert that is not posted again within its
//! `resolve_timeout`, so every open incident routed to an Alertmanager
//! channel is posted again every [`ALERTMANAGER_REFRESH`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rollcall_core::Timestamp;
use rollcall_store::{Attempt, IncidentRecord, IncidentStatus, Notification, Store};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::evaluate::incident_json;
use super::rules::{Alerting, Channel, ChannelKind};
use crate::clock::Clock;
use crate::metrics::Metrics;

/// The header that carries a webhook's signature.
pub const SIGNATURE_HEADER: &str = "rollcall-signature";

/// How often open incidents are posted again to Alertmanager channels.
pub const ALERTMANAGER_REFRESH: Duration = Duration::from_secs(60);

/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Notifications read per round.
const ROUND: usize = 500;

/// How long to wait before the next attempt after `attempts` failures.
pub fn backoff(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    MIN_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF)
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature(secret: &str, unix_secs: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix_secs},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Checks a signature header against a body, as a receiver would: the
/// timestamp must be within `tolerance` of `now_secs`, the MAC equal (in
/// constant time).
pub fn verify(secret: &str, header: &str, body: &[u8], now_secs: i64, tolerance: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if (now_secs - t).abs() > tolerance {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

/// The deliverer task. See the module docs.
#[derive(Debug)]
pub struct Deliverer {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub alerting: Alerting,
    pub wake: Arc<Notify>,
    pub http: reqwest::Client,
}

/// A request ready for a channel.
struct Outbound {
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Deliverer {
    /// An HTTP client for channels: no redirects followed (a channel's URL
    /// is where it is), each request bounded by its channel's timeout.
    pub fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("rollcall/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a TLS-less HTTP client builds")
    }

    pub async fn run(self, stop: CancellationToken) {
        if self.alerting.channels.is_empty() {
            return;
        }
        let mut refreshed: Option<Timestamp> = None;
        loop {
            let now = self.clock.now();
            if let Err(e) = self.round(now).await {
                warn!(error = %e, "alerting: a delivery round failed");
            }
            let refresh_due = refreshed.is_none_or(|t| {
                now.as_millis() - t.as_millis() >= ALERTMANAGER_REFRESH.as_millis() as i64
            });
            if refresh_due {
                self.refresh_alertmanager(now).await;
                refreshed = Some(now);
            }
            match self.store.outbox_stats().await {
                Ok(s) => {
                    let age = s.oldest.map_or(Duration::ZERO, |o| {
                        Duration::from_millis(
                            u64::try_from(now.as_millis() - o.as_millis()).unwrap_or(0),
                        )
                    });
                    self.metrics.outbox(s.pending, age);
                }
                Err(e) => debug!(error = %e, "alerting: reading the outbox's size failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(MIN_BACKOFF) => {}
            }
        }
    }

    /// Whether the incident of `n` has been acknowledged.
    async fn acknowledged(&self, n: &Notification) -> anyhow::Result<bool> {
        Ok(self
            .store
            .get_incident(&n.incident_id)
            .await?
            .is_some_and(|i| i.acked_at.is_some()))
    }

    /// Sends every due notification, one request per channel.
    async fn round(&self, now: Timestamp) -> anyhow::Result<()> {
        let due = self.store.due_notifications(now, ROUND).await?;
        let mut by_channel: BTreeMap<String, Vec<Notification>> = BTreeMap::new();
        for n in due {
            let follows_opening = matches!(n.transition.as_str(), "resolved" | "repeated");
            if follows_opening && !n.opened_delivered {
                // Nobody on this channel heard of the opening (it was
                // suppressed, or given up): no resolve or repeat either.
                self.store
                    .record_attempt(n.id, now, &Attempt::Suppressed)
                    .await?;
                continue;
            }
            if n.transition == "repeated" && self.acknowledged(&n).await? {
                // Someone is on it: repeats stop at the acknowledgement.
                self.store
                    .record_attempt(n.id, now, &Attempt::Suppressed)
                    .await?;
                continue;
            }
            by_channel.entry(n.channel.clone()).or_default().push(n);
        }
        for (name, batch) in by_channel {
            let Some(channel) = self.alerting.channel(&name) else {
                // A channel removed from the config: its notifications wait
                // until it returns or they are given up.
                for n in &batch {
                    self.failed(n, now, None, "no such channel in the config")
                        .await?;
                }
                continue;
            };
            let result = self.send(channel, &batch, now).await;
            let kind = channel.kind.as_str();
            match result {
                Ok(()) => {
                    for n in &batch {
                        self.store
                            .record_attempt(n.id, now, &Attempt::Delivered)
                            .await?;
                        self.metrics.notified(&name, kind, &n.transition, "sent", 1);
                    }
                    debug!(channel = %name, n = batch.len(), "alerting: delivered");
                }
                Err(e) => {
                    warn!(channel = %name, error = %e, n = batch.len(), "alerting: delivery failed; retrying later");
                    for n in &batch {
                        self.failed(n, now, Some(channel), &e).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn failed(
        &self,
        n: &Notification,
        now: Timestamp,
        channel: Option<&Channel>,
        error: &str,
    ) -> anyhow::Result<()> {
        let give_up_after = channel.map_or(Duration::from_secs(86_400), |c| c.give_up_after);
        let (kind, attempt) = if n.created_at.plus(give_up_after) <= now {
            warn!(notification = n.id, incident = %n.incident_id, channel = %n.channel, "alerting: giving up on a notification");
            (
                "given_up",
                Attempt::GaveUp {
                    error: error.into(),
                },
            )
        } else {
            (
                "failed",
                Attempt::Failed {
                    error: error.into(),
                    retry_at: now.plus(backoff(n.attempts + 1)),
                },
            )
        };
        self.store.record_attempt(n.id, now, &attempt).await?;
        self.metrics.notified(
            &n.channel,
            channel.map_or("unknown", |c| c.kind.as_str()),
            &n.transition,
            kind,
            1,
        );
        Ok(())
    }

    async fn send(
        &self,
        channel: &Channel,
        batch: &[Notification],
        now: Timestamp,
    ) -> Result<(), String> {
        let out = build(channel, batch, now)?;
        post(&self.http, channel, out).await
    }

    /// Posts every open, uncovered incident routed to an Alertmanager
    /// channel again, so that Alertmanager keeps it firing.
    async fn refresh_alertmanager(&self, now: Timestamp) {
        let channels: Vec<&Channel> = self
            .alerting
            .channels
            .iter()
            .filter(|c| c.kind == ChannelKind::Alertmanager)
            .collect();
        if channels.is_empty() {
            return;
        }
        let open = match self.store.current_incidents().await {
            Ok(v) => v,
            Err(e) => {
                debug!(error = %e, "alerting: reading open incidents failed");
                return;
            }
        };
        for c in channels {
            let alerts: Vec<Value> = open
                .iter()
                .filter(|i| i.status == IncidentStatus::Open && i.inhibited_by.is_none())
                .filter(|i| {
                    self.alerting
                        .rules
                        .iter()
                        .any(|r| r.name == i.rule && r.channels.iter().any(|n| n == &c.name))
                })
                .map(|i| alertmanager_alert(i, now))
                .collect();
            if alerts.is_empty() {
                continue;
            }
            let out = Outbound {
                body: serde_json::to_vec(&alerts).expect("JSON"),
                headers: vec![],
            };
            if let Err(e) = post(&self.http, c, out).await {
                debug!(channel = %c.name, error = %e, "alerting: refreshing Alertmanager failed");
            }
        }
    }

    /// Sends one test notification to a channel, now, outside the outbox
    /// (`rollcall alerts test`).
    pub async fn test_channel(channel: &Channel, clock: Arc<dyn Clock>) -> Result<(), String> {
        let now = clock.now();
        let n = Notification {
            id: 0,
            incident_id: rollcall_core::IncidentId::generate(now, rand::random()),
            channel: channel.name.clone(),
            transition: "test".into(),
            idempotency_key: format!("test:{}", now.as_millis()),
            body: json!({
                "id": "test",
                "rule": "test",
                "kind": "test",
                "severity": "info",
                "status": "open",
                "subject": "test",
                "summary": "a test notification from rollcall",
                "since": now.to_rfc3339(),
                "details": {},
            })
            .to_string(),
            created_at: now,
            not_before: now,
            attempts: 0,
            last_error: None,
            opened_delivered: true,
        };
        let out = build(channel, std::slice::from_ref(&n), now)?;
        post(&Deliverer::client(), channel, out).await
    }
}

/// POSTs a request to a channel: any 2xx is delivered.
async fn post(http: &reqwest::Client, channel: &Channel, out: Outbound) -> Result<(), String> {
    let mut req = http
        .post(channel.url.clone())
        .timeout(channel.timeout)
        .header("content-type", "application/json")
        .body(out.body);
    for (k, v) in out.headers {
        req = req.header(k, v);
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("the channel answered {}", r.status())),
        // The error names the URL, which may carry credentials.
        Err(e) => Err(describe(&e)),
    }
}

/// The error of a request, without its URL (which may hold credentials).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_redirect() {
        "answered with a redirect"
    } else {
        "failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        format!("the request {what}")
    } else {
        format!("the request {what}: {detail}")
    }
}

fn build(channel: &Channel, batch: &[Notification], now: Timestamp) -> Result<Outbound, String> {
    let incidents: Vec<(&Notification, Value)> = batch
        .iter()
        .map(|n| {
            serde_json::from_str::<Value>(&n.body)
                .map(|v| (n, v))
                .map_err(|e| format!("a stored notification is not JSON: {e}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(match &channel.kind {
        ChannelKind::Webhook { secret } => {
            let body = json!({
                "version": 1,
                "channel": channel.name,
                "sent_at": now.to_rfc3339(),
                "notifications": incidents.iter().map(|(n, i)| json!({
                    "idempotency_key": n.idempotency_key,
                    "transition": n.transition,
                    "incident": i,
                })).collect::<Vec<_>>(),
            });
            let body = serde_json::to_vec(&body).expect("JSON");
            let sig = signature(secret, now.as_millis().div_euclid(1000), &body);
            Outbound {
                body,
                headers: vec![(SIGNATURE_HEADER, sig)],
            }
        }
        ChannelKind::Slack => {
            let lines: Vec<String> = incidents
                .iter()
                .map(|(n, i)| {
                    let icon = match n.transition.as_str() {
                        "resolved" => ":white_check_mark:",
                        "test" => ":information_source:",
                        _ => ":rotating_light:",
                    };
                    format!(
                        "{icon} *{}* [{}] {} — {}",
                        n.transition,
                        i["severity"].as_str().unwrap_or(""),
                        i["rule"].as_str().unwrap_or(""),
                        i["summary"].as_str().unwrap_or("")
                    )
                })
                .collect();
            let text = lines.join("\n");
            let body = json!({
                "text": text,
                "blocks": [{ "type": "section", "text": { "type": "mrkdwn", "text": text } }],
            });
            Outbound {
                body: serde_json::to_vec(&body).expect("JSON"),
                headers: vec![],
            }
        }
        ChannelKind::Alertmanager => {
            let alerts: Vec<Value> = incidents
                .iter()
                .map(|(n, i)| alertmanager_json(i, n.transition == "resolved", now))
                .collect();
            Outbound {
                body: serde_json::to_vec(&alerts).expect("JSON"),
                headers: vec![],
            }
        }
    })
}

fn alertmanager_alert(i: &IncidentRecord, now: Timestamp) -> Value {
    alertmanager_json(&incident_json(i), i.status == IncidentStatus::Resolved, now)
}

/// An incident as an Alertmanager alert: labels identify it (so a repeat
/// is the same alert), `endsAt` ends it.
fn alertmanager_json(i: &Value, resolved: bool, now: Timestamp) -> Value {
    let mut labels = serde_json::Map::new();
    let s = |k: &str| i[k].as_str().unwrap_or("").to_owned();
    labels.insert("alertname".into(), json!(s("rule")));
    labels.insert("severity".into(), json!(s("severity")));
    labels.insert("rollcall_kind".into(), json!(s("kind")));
    labels.insert("rollcall_incident".into(), json!(s("id")));
    if let Some(m) = i["machine_id"].as_str() {
        labels.insert("machine".into(), json!(m));
    }
    if let Some(w) = i["worker_id"].as_str() {
        labels.insert("worker".into(), json!(w));
    }
    let starts = i["opened_at"]
        .as_str()
        .or(i["since"].as_str())
        .unwrap_or("")
        .to_owned();
    let mut a = json!({
        "labels": labels,
        "annotations": { "summary": s("summary") },
        "startsAt": starts,
    });
    if resolved {
        let ends = i["resolved_at"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| now.to_rfc3339());
        a["endsAt"] = json!(ends);
    }
    a
}
