//! Alerting: rules turn the event log into incidents; channels are told.
//!
//! - [`rules`]: `[[alert]]` and `[[channel]]` from the config, checked.
//! - [`evaluate`]: the rules as a pure step (events and the clock in,
//!   incident changes and notifications out).
//! - [`Alerter`] (this module): the task that feeds the step. It reads the
//!   event log from its cursor, looks up what the rules need (labels, a
//!   machine's crashed workers, the live fleet), and commits the step — the
//!   incidents, the outbox rows and the moved cursor — in one store
//!   transaction ([`rollcall_store::alerts`]). Incidents are therefore a
//!   function of the durable event log: nothing is paged that is not
//!   committed, and a crash or a takeover in between loses nothing (the next
//!   active server takes the step again from the cursor).
//! - [`deliver`]: the deliverer, which empties the outbox into the channels
//!   with retries, at least once, each notification with a stable
//!   idempotency key.
//!
//! Both tasks run on the server that changes state (the active replica).

pub mod deliver;
pub mod evaluate;
pub mod rules;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rollcall_core::health::Window;
use rollcall_core::{EventType, IncidentId, OfflineClass, Status, Timestamp};
use rollcall_store::{EventFilter, EventRecord, SpansOf, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::engine::Engine;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::writer::Writer;
use evaluate::{Evaluator, Facts};
use rules::{Alerting, Rule, RuleKind};

/// How often the clock-driven part of the rules runs (`for`, windows).
pub const TICK: Duration = Duration::from_secs(1);

/// How often the cursor moves when there are no rules.
const IDLE_CURSOR_INTERVAL: Duration = Duration::from_secs(10);

/// How often the rules made through the API are read again without being
/// told (another replica's API changed them).
const RULES_INTERVAL: Duration = Duration::from_secs(10);

/// Events read per step.
const STEP_EVENTS: usize = 1_000;

/// The task that turns the event log into incidents. See the module docs.
#[derive(Debug)]
pub struct Alerter {
    pub store: Arc<dyn Store>,
    /// Commits the steps: the writer appends and publishes every event of
    /// the log, the alerter's `incident.*` events included, in `seq` order.
    pub writer: Writer,
    pub engine: Arc<Engine>,
    pub hub: Hub,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// The config file's rules and the channels; the rules made through
    /// the API are read from the store and added.
    pub alerting: Alerting,
    /// Woken when the API changed the rules.
    pub rules_changed: Arc<Notify>,
    /// Woken when the outbox has something new.
    pub outbox: Arc<Notify>,
}

impl Alerter {
    pub async fn run(self, stop: CancellationToken) {
        let mut events = self.hub.subscribe();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state: Option<(Evaluator, i64)> = None;
        let mut last_step = tokio::time::Instant::now();
        let mut rules_read = tokio::time::Instant::now();
        let mut reread = false;
        loop {
            if state.is_none() {
                state = match self.load().await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        warn!(error = %e, "alerting: reading incidents failed; retrying");
                        None
                    }
                };
                rules_read = tokio::time::Instant::now();
                reread = false;
            }
            if let (Some((evaluator, cursor)), true) = (
                state.as_mut(),
                reread || rules_read.elapsed() >= RULES_INTERVAL,
            ) {
                rules_read = tokio::time::Instant::now();
                reread = false;
                match self.rules().await {
                    Ok(alerting) if &alerting != evaluator.alerting() => {
                        info!(rules = alerting.rules.len(), "alerting: the rules changed");
                        if evaluator.alerting().rules.is_empty() {
                            // An idle alerter's cursor lags by seconds; the
                            // new rules start from the present.
                            if let Err(e) = self.catch_up(cursor).await {
                                warn!(error = %e, "alerting: moving the cursor failed");
                                state = None;
                                continue;
                            }
                        }
                        evaluator.set_alerting(alerting, self.clock.now());
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "alerting: reading the rules failed"),
                }
            }
            // Without rules nothing is evaluated: the cursor only has to
            // keep up (so that rules added later start from the present),
            // which it does now and then instead of after every commit of
            // the writer.
            let idle = state
                .as_ref()
                .is_some_and(|(e, _)| e.alerting().rules.is_empty() && !e.has_changes());
            let due = !idle || last_step.elapsed() >= IDLE_CURSOR_INTERVAL;
            if let (Some((evaluator, cursor)), true) = (state.as_mut(), due) {
                last_step = tokio::time::Instant::now();
                match self.step(evaluator, cursor).await {
                    Ok(more) if more => continue,
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "alerting: a step failed; it is taken again from the event log");
                        state = None;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.rules_changed.notified() => reread = true,
                r = events.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                        return;
                    }
                }
            }
        }
    }

    async fn load(&self) -> anyhow::Result<(Evaluator, i64)> {
        let alerting = self.rules().await?;
        let cursor = self.store.alert_cursor().await?;
        let current = self.store.current_incidents().await?;
        debug!(cursor, current = current.len(), "alerting: loaded");
        let mut evaluator = Evaluator::new(alerting, current);
        // Incidents of rules deleted while no server was alerting.
        evaluator.end_orphans(self.clock.now());
        Ok((evaluator, cursor))
    }

    /// The config file's rules and those made through the API.
    async fn rules(&self) -> anyhow::Result<Alerting> {
        let stored = self.store.list_alert_rules().await?;
        let (alerting, problems) = self.alerting.with_stored(&stored);
        for (rule, problem) in problems {
            warn!(rule = %rule, problem = %problem, "alerting: a rule made through the API is not in force");
        }
        Ok(alerting)
    }

    /// Moves the cursor to the end of the log without evaluating anything.
    async fn catch_up(&self, cursor: &mut i64) -> anyhow::Result<()> {
        let last = self.store.last_seq().await?;
        if last > *cursor {
            let step = rollcall_store::AlertCommit {
                cursor: Some((*cursor, last)),
                ..Default::default()
            };
            if !self.writer.commit_alerts(step).await? {
                anyhow::bail!(
                    "the alert cursor moved under this server (another replica is active)"
                );
            }
            *cursor = last;
        }
        Ok(())
    }

    /// One step: the events after the cursor (if any), then the clock.
    /// Returns whether more events wait. On an error the evaluator must be
    /// reloaded (its memory may be ahead of the store).
    async fn step(&self, evaluator: &mut Evaluator, cursor: &mut i64) -> anyhow::Result<bool> {
        if evaluator.alerting().rules.is_empty() && !evaluator.has_changes() {
            self.catch_up(cursor).await?;
            return Ok(false);
        }
        let page = self
            .store
            .list_events(&EventFilter::default(), *cursor, STEP_EVENTS)
            .await?;
        let now = self.clock.now();
        let moved = page.items.last().map(|e| (*cursor, e.seq));
        if !page.items.is_empty() {
            let facts = self.facts(evaluator, &page.items).await?;
            let mut live = HashMap::new();
            let engine = self.engine.clone();
            let mut live_selected = |rule: &Rule| -> u64 {
                *live
                    .entry(rule.name.clone())
                    .or_insert_with(|| live_at_window_start(&engine, rule, now))
            };
            let mut new_id = || IncidentId::generate(now, rand::random());
            evaluator.on_events(&facts, &mut live_selected, now, &mut new_id);
        }
        evaluator.on_tick(now);
        let step = evaluator.take(moved);
        if step.cursor.is_none()
            && step.incidents.is_empty()
            && step.withdraw.is_empty()
            && step.suppress.is_empty()
        {
            return Ok(false);
        }
        let notify = !step.notifications.is_empty() || !step.suppress.is_empty();
        let incidents = step.incidents.clone();
        if !self.writer.commit_alerts(step).await? {
            anyhow::bail!("the alert cursor moved under this server (another replica is active)");
        }
        for i in &incidents {
            match i.status {
                rollcall_store::IncidentStatus::Open if i.opened_at == Some(i.updated_at) => {
                    info!(incident = %i.id, rule = %i.rule, summary = %i.summary, "incident opened");
                    self.metrics.incident(&i.kind, "opened");
                }
                rollcall_store::IncidentStatus::Resolved => {
                    info!(incident = %i.id, rule = %i.rule, "incident resolved");
                    self.metrics.incident(&i.kind, "resolved");
                }
                _ => {}
            }
        }
        if let Some((_, to)) = moved {
            *cursor = to;
        }
        if notify {
            self.outbox.notify_one();
        }
        Ok(page.more)
    }

    /// What the rules need to know about each event.
    async fn facts(
        &self,
        evaluator: &Evaluator,
        events: &[EventRecord],
    ) -> anyhow::Result<Vec<(EventRecord, Facts)>> {
        let wants_machines = evaluator
            .alerting()
            .rules
            .iter()
            .any(|r| matches!(r.kind, RuleKind::MachineOffline { .. }));
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let mut facts = Facts::default();
            if let Some(w) = &e.worker_id {
                if let Some(live) = self.engine.get(w) {
                    facts.worker = Some((live.record.name.to_string(), live.record.labels.clone()));
                }
            }
            if e.kind == EventType::MachineOffline && wants_machines {
                if let Some(m) = self.store.get_machine(&e.machine_id).await? {
                    facts.machine_labels = m.labels;
                }
                facts.machine_crashed = self.machine_crashed(e).await?;
            }
            out.push((e.clone(), facts));
        }
        Ok(out)
    }

    /// Whether, when a machine went offline, the current offline of one of
    /// its workers was a crash (from the health history, written in the
    /// same transaction as the event).
    async fn machine_crashed(&self, e: &EventRecord) -> anyhow::Result<bool> {
        let at = e.at;
        let window = Window::new(at, Timestamp::from_millis(at.as_millis() + 1))?;
        let spans = self
            .store
            .health_spans(
                SpansOf::Machines(std::slice::from_ref(&e.machine_id)),
                window,
            )
            .await?;
        Ok(spans.iter().any(|s| {
            s.worker_id.is_some()
                && s.span.start <= at
                && !s.span.live
                && s.span
                    .offline()
                    .is_some_and(|o| o.class == OfflineClass::Crash)
        }))
    }
}

/// The workers a `mass_failure` rule selects that were live when its
/// window began: live (online or draining) now, or offline only since then.
/// (The engine runs ahead of the log the alerter reads: counting only the
/// live would leave out the crashes not yet read, and page too early.)
fn live_at_window_start(engine: &Engine, rule: &Rule, now: Timestamp) -> u64 {
    let RuleKind::MassFailure { window, .. } = rule.kind else {
        return 0;
    };
    let start = Timestamp::from_millis(now.as_millis() - window.as_millis() as i64);
    let mut n = 0;
    engine.visit(|r, _| {
        let was_live = r.status != Status::Offline || r.status_changed_at >= start;
        if was_live && rule.selects(&r.labels) {
            n += 1;
        }
    });
    n
}
