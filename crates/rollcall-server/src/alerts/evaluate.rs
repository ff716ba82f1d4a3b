//! The alerter's rules as a pure step: committed events (with the facts the
//! driver looked up for them) and the clock in, incident changes and the
//! notifications they owe out. No store, no tasks: tested directly.
//!
//! Every incident is *current* (pending or open) or resolved; a rule has at
//! most one current incident per subject (a worker, a machine, or itself for
//! `mass_failure`). A pending incident is the rule's memory of a condition
//! that has not yet paged: a crashed worker waiting out `for`, the crashes
//! of a worker counted towards `crashes`, the crashes of the fleet counted
//! towards `percent`. Keeping that memory in the store makes a restart or a
//! takeover lose none of it.

use std::collections::{BTreeSet, HashMap};

use rollcall_core::{
    EventType, IncidentId, Labels, MachineId, OfflineClass, OfflineReason, Timestamp, WorkerId,
};
use rollcall_store::{
    AlertCommit, EventRecord, IncidentEvent, IncidentRecord, IncidentStatus, NewNotification,
};
use serde_json::{json, Value};

use super::rules::{Alerting, Rule, RuleKind};

/// Share of a mass failure's workers that must be live again to resolve it.
pub const MASS_RECOVERED_PERCENT: usize = 90;

/// What the driver knows about an event's worker and machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The worker's name and labels (absent once it is deleted).
    pub worker: Option<(String, Labels)>,
    /// The machine's labels.
    pub machine_labels: Labels,
    /// For `machine.offline`: whether one of its workers' current offline is
    /// a crash (not all of them stopped gracefully).
    pub machine_crashed: bool,
}

/// The pure alerter. See the module docs.
#[derive(Debug, Clone)]
pub struct Evaluator {
    alerting: Alerting,
    /// Current incidents by (rule, subject).
    current: HashMap<(String, String), IncidentRecord>,
    /// The changes of the step under way.
    out: Out,
    /// The last repeat enqueued per open incident and channel (the n-th
    /// repeat is due `n × repeat_interval` after the opening). Not stored:
    /// a repeat's idempotency key names its n, and the outbox keeps a key
    /// once, so one enqueued again after a restart is not sent twice.
    repeated: HashMap<(IncidentId, String), u64>,
}

#[derive(Debug, Clone, Default)]
struct Out {
    /// Ids in the order of their first change, with the last record.
    order: Vec<IncidentId>,
    changed: HashMap<IncidentId, IncidentRecord>,
    notifications: Vec<NewNotification>,
    suppress: Vec<IncidentId>,
    withdraw: Vec<IncidentId>,
    events: Vec<IncidentEvent>,
}

fn ms(t: Timestamp) -> i64 {
    t.as_millis()
}

impl Evaluator {
    /// An evaluator over the incidents the store holds as current.
    pub fn new(alerting: Alerting, current: Vec<IncidentRecord>) -> Self {
        let current = current
            .into_iter()
            .filter(|i| i.status != IncidentStatus::Resolved)
            .map(|i| ((i.rule.clone(), i.subject.clone()), i))
            .collect();
        Evaluator {
            alerting,
            current,
            out: Out::default(),
            repeated: HashMap::new(),
        }
    }

    pub fn alerting(&self) -> &Alerting {
        &self.alerting
    }

    /// The current (pending and open) incidents.
    pub fn current(&self) -> impl Iterator<Item = &IncidentRecord> {
        self.current.values()
    }

    /// Takes the changes made since the last call, as a store step.
    pub fn take(&mut self, cursor: Option<(i64, i64)>) -> AlertCommit {
        let mut out = std::mem::take(&mut self.out);
        let incidents = out
            .order
            .iter()
            .filter_map(|id| out.changed.remove(id))
            .collect();
        AlertCommit {
            cursor,
            incidents,
            notifications: out.notifications,
            suppress: out.suppress,
            withdraw: out.withdraw,
            events: out.events,
        }
    }

    /// Records `i`'s opening or resolve for the event log.
    fn event(&mut self, i: &IncidentRecord, kind: EventType, now: Timestamp) {
        self.out.events.push(IncidentEvent {
            at: now,
            kind,
            incident_id: i.id.clone(),
            worker_id: i.worker_id.clone(),
            machine_id: i.machine_id.clone().unwrap_or_else(MachineId::fleet),
        });
    }

    fn record(&mut self, i: &IncidentRecord) {
        if !self.out.changed.contains_key(&i.id) {
            self.out.order.push(i.id.clone());
        }
        self.out.changed.insert(i.id.clone(), i.clone());
    }

    fn notify(&mut self, rule: &Rule, i: &IncidentRecord, transition: &str, now: Timestamp) {
        let body = incident_json(i).to_string();
        for name in &rule.channels {
            let Some(channel) = self.alerting.channel(name) else {
                continue;
            };
            let not_before = if transition == "opened" {
                now.plus(channel.group_wait)
            } else {
                now
            };
            self.out.notifications.push(NewNotification {
                incident_id: i.id.clone(),
                channel: name.clone(),
                transition: transition.into(),
                idempotency_key: format!("{}:{transition}:{name}", i.id),
                body: body.clone(),
                created_at: now,
                not_before,
            });
        }
    }

    /// Applies committed events, in `seq` order. `live_selected` counts the
    /// workers a `mass_failure` rule selects that were live when its window
    /// began: live now, or offline since then.
    pub fn on_events(
        &mut self,
        events: &[(EventRecord, Facts)],
        live_selected: &mut dyn FnMut(&Rule) -> u64,
        now: Timestamp,
        new_id: &mut dyn FnMut() -> IncidentId,
    ) {
        let rules = self.alerting.rules.clone();
        for (e, facts) in events {
            match e.kind {
                EventType::WorkerOffline => {
                    let Some(worker) = &e.worker_id else { continue };
                    let reason = e.reason.and_then(offline_reason);
                    let crash = reason.map(|r| r.classify(e.exit));
                    let Some((OfflineClass::Crash, kind)) = crash else {
                        continue;
                    };
                    let Some((name, labels)) = &facts.worker else {
                        continue;
                    };
                    let kind = kind.map(|k| k.as_str()).unwrap_or("crash");
                    for rule in &rules {
                        if !rule.selects(labels) {
                            continue;
                        }
                        self.on_crash(rule, e, worker, name, kind, live_selected, now, new_id);
                    }
                }
                EventType::WorkerOnline | EventType::WorkerDeleted => {
                    let Some(worker) = &e.worker_id else { continue };
                    let deleted = e.kind == EventType::WorkerDeleted;
                    for rule in &rules {
                        match rule.kind {
                            RuleKind::WorkerOffline { .. } => {
                                self.end(rule, worker.as_str(), now);
                            }
                            RuleKind::WorkerCrashes { .. } if deleted => {
                                self.end(rule, worker.as_str(), now);
                            }
                            RuleKind::MassFailure { .. } => {
                                self.mass_recovered(rule, worker, deleted, now);
                            }
                            _ => {}
                        }
                    }
                }
                EventType::MachineOffline if facts.machine_crashed => {
                    for rule in &rules {
                        if let RuleKind::MachineOffline { for_ } = rule.kind {
                            if !rule.selects(&facts.machine_labels) {
                                continue;
                            }
                            let subject = e.machine_id.as_str().to_owned();
                            if self
                                .current
                                .contains_key(&(rule.name.clone(), subject.clone()))
                            {
                                continue;
                            }
                            let mut i = self.new_incident(rule, subject, e.at, new_id());
                            i.machine_id = Some(e.machine_id.clone());
                            i.summary =
                                format!("machine {} is offline: its workers crashed", e.machine_id);
                            i.inhibited_by = self.covering_mass(None, Some(&e.machine_id));
                            self.put(i.clone());
                            if for_.is_zero() {
                                self.open(rule, &i.id, now);
                            }
                        }
                    }
                }
                EventType::MachineOnline => {
                    for rule in &rules {
                        if let RuleKind::MachineOffline { .. } = rule.kind {
                            self.end(rule, e.machine_id.as_str(), now);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Applies the passing of time: `for` waited out, crash windows ended.
    pub fn on_tick(&mut self, now: Timestamp) {
        let rules = self.alerting.rules.clone();
        for rule in &rules {
            let subjects: Vec<String> = self
                .current
                .keys()
                .filter(|(r, _)| r == &rule.name)
                .map(|(_, s)| s.clone())
                .collect();
            for subject in subjects {
                let key = (rule.name.clone(), subject);
                let Some(i) = self.current.get(&key).cloned() else {
                    continue;
                };
                match rule.kind {
                    RuleKind::WorkerOffline { for_ } | RuleKind::MachineOffline { for_ } => {
                        if i.status == IncidentStatus::Pending && i.since.plus(for_) <= now {
                            self.open(rule, &i.id, now);
                        }
                    }
                    RuleKind::WorkerCrashes { within, .. } => {
                        let crashes = crash_times(&i.details);
                        let last = crashes.iter().copied().max().unwrap_or(ms(i.since));
                        let horizon = ms(now) - within.as_millis() as i64;
                        if last <= horizon {
                            // No crash within the window.
                            self.end(rule, &key.1, now);
                        } else if i.status == IncidentStatus::Pending {
                            let kept: Vec<i64> =
                                crashes.into_iter().filter(|&t| t > horizon).collect();
                            let mut i = i.clone();
                            i.details["crashes"] = json!(kept);
                            i.updated_at = now;
                            self.put(i);
                        }
                    }
                    RuleKind::MassFailure { window, .. } => {
                        if i.status == IncidentStatus::Pending {
                            let horizon = ms(now) - window.as_millis() as i64;
                            let mut i = i.clone();
                            prune_recent(&mut i.details, horizon);
                            if recent(&i.details).is_empty() {
                                self.withdraw(&key);
                            } else {
                                i.updated_at = now;
                                self.put(i);
                            }
                        }
                    }
                }
            }
        }
        self.repeat(now);
    }

    /// Tells the channels again of every open incident that no mass
    /// failure covers, every channel's `repeat_interval` after its opening.
    fn repeat(&mut self, now: Timestamp) {
        let open: Vec<IncidentRecord> = self
            .current
            .values()
            .filter(|i| i.status == IncidentStatus::Open && i.inhibited_by.is_none())
            .cloned()
            .collect();
        for i in open {
            let (Some(rule), Some(opened)) = (
                self.alerting.rules.iter().find(|r| r.name == i.rule),
                i.opened_at,
            ) else {
                continue;
            };
            for name in &rule.channels {
                let Some(every) = self.alerting.channel(name).and_then(|c| c.repeat_interval)
                else {
                    continue;
                };
                let n = (now.diff_ms(opened).max(0) as u128 / every.as_millis().max(1)) as u64;
                let last = self
                    .repeated
                    .entry((i.id.clone(), name.clone()))
                    .or_insert(0);
                if n == 0 || *last >= n {
                    continue;
                }
                *last = n;
                self.out.notifications.push(NewNotification {
                    incident_id: i.id.clone(),
                    channel: name.clone(),
                    transition: "repeated".into(),
                    idempotency_key: format!("{}:repeated-{n}:{name}", i.id),
                    body: incident_json(&i).to_string(),
                    created_at: now,
                    not_before: now,
                });
            }
        }
    }

    fn new_incident(
        &self,
        rule: &Rule,
        subject: String,
        since: Timestamp,
        id: IncidentId,
    ) -> IncidentRecord {
        IncidentRecord {
            id,
            rule: rule.name.clone(),
            kind: rule.kind.as_str().into(),
            severity: rule.severity.clone(),
            subject,
            worker_id: None,
            machine_id: None,
            status: IncidentStatus::Pending,
            since,
            opened_at: None,
            resolved_at: None,
            acked_at: None,
            acked_by: None,
            inhibited_by: None,
            summary: String::new(),
            details: json!({}),
            updated_at: since,
        }
    }

    /// Makes `i` current (or updates it) and records the change.
    fn put(&mut self, i: IncidentRecord) {
        self.record(&i);
        self.current.insert((i.rule.clone(), i.subject.clone()), i);
    }

    fn get_by_id(&self, id: &IncidentId) -> Option<IncidentRecord> {
        self.current.values().find(|i| &i.id == id).cloned()
    }

    /// Opens a pending incident: notified unless a mass failure covers it.
    fn open(&mut self, rule: &Rule, id: &IncidentId, now: Timestamp) {
        let Some(mut i) = self.get_by_id(id) else {
            return;
        };
        if i.status != IncidentStatus::Pending {
            return;
        }
        i.status = IncidentStatus::Open;
        i.opened_at = Some(now);
        i.updated_at = now;
        if i.inhibited_by.is_none() {
            self.notify(rule, &i, "opened", now);
        }
        self.event(&i, EventType::IncidentOpened, now);
        self.put(i);
    }

    /// The condition of `rule` about `subject` ended: a pending incident is
    /// withdrawn, an open one resolved.
    fn end(&mut self, rule: &Rule, subject: &str, now: Timestamp) {
        let key = (rule.name.clone(), subject.to_owned());
        let Some(i) = self.current.get(&key).cloned() else {
            return;
        };
        match i.status {
            IncidentStatus::Pending => self.withdraw(&key),
            IncidentStatus::Open => self.resolve(rule, i, now),
            IncidentStatus::Resolved => {}
        }
    }

    fn withdraw(&mut self, key: &(String, String)) {
        if let Some(i) = self.current.remove(key) {
            if self.out.changed.remove(&i.id).is_some() {
                self.out.order.retain(|x| x != &i.id);
            }
            self.out.notifications.retain(|n| n.incident_id != i.id);
            self.out.withdraw.push(i.id);
        }
    }

    fn resolve(&mut self, rule: &Rule, mut i: IncidentRecord, now: Timestamp) {
        self.current.remove(&(i.rule.clone(), i.subject.clone()));
        self.repeated.retain(|(id, _), _| id != &i.id);
        i.status = IncidentStatus::Resolved;
        i.resolved_at = Some(now);
        i.updated_at = now;
        // An opening still waiting out `group_wait` is not sent at all; a
        // resolve goes only to channels that were told of the opening.
        self.out.suppress.push(i.id.clone());
        self.notify(rule, &i, "resolved", now);
        self.event(&i, EventType::IncidentResolved, now);
        self.record(&i);
    }

    /// The open mass failure that covers a worker or a machine, if any.
    fn covering_mass(
        &self,
        worker: Option<&WorkerId>,
        machine: Option<&MachineId>,
    ) -> Option<IncidentId> {
        self.current
            .values()
            .filter(|m| m.kind == "mass_failure" && m.status == IncidentStatus::Open)
            .find(|m| {
                let has = |field: &str, v: &str| {
                    m.details[field]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(v)))
                };
                worker.is_some_and(|w| has("covered", w.as_str()))
                    || machine.is_some_and(|mc| has("machines", mc.as_str()))
            })
            .map(|m| m.id.clone())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_crash(
        &mut self,
        rule: &Rule,
        e: &EventRecord,
        worker: &WorkerId,
        name: &str,
        crash_kind: &str,
        live_selected: &mut dyn FnMut(&Rule) -> u64,
        now: Timestamp,
        new_id: &mut dyn FnMut() -> IncidentId,
    ) {
        let subject = worker.as_str().to_owned();
        let key = (rule.name.clone(), subject.clone());
        match rule.kind {
            RuleKind::WorkerOffline { for_ } => {
                if self.current.contains_key(&key) {
                    return;
                }
                let mut i = self.new_incident(rule, subject, e.at, new_id());
                i.worker_id = Some(worker.clone());
                i.machine_id = Some(e.machine_id.clone());
                i.summary = format!(
                    "worker {name} ({worker}) on {} is offline: {crash_kind}",
                    e.machine_id
                );
                i.details = json!({ "name": name, "crash_kind": crash_kind, "exit": exit_json(e) });
                i.inhibited_by = self.covering_mass(Some(worker), Some(&e.machine_id));
                let id = i.id.clone();
                self.put(i);
                if for_.is_zero() {
                    self.open(rule, &id, now);
                }
            }
            RuleKind::WorkerCrashes { crashes, within } => {
                let horizon = ms(e.at) - within.as_millis() as i64;
                let mut i = match self.current.get(&key) {
                    Some(i) => i.clone(),
                    None => {
                        let mut i = self.new_incident(rule, subject, e.at, new_id());
                        i.worker_id = Some(worker.clone());
                        i.machine_id = Some(e.machine_id.clone());
                        i.details = json!({ "name": name, "crashes": [] });
                        i
                    }
                };
                let mut times: Vec<i64> = crash_times(&i.details)
                    .into_iter()
                    .filter(|&t| t > horizon)
                    .collect();
                times.push(ms(e.at));
                let n = times.iter().filter(|&&t| t > horizon).count();
                i.details["crashes"] = json!(times);
                i.details["last_crash_kind"] = json!(crash_kind);
                i.summary = format!(
                    "worker {name} ({worker}) on {} crashed {n} times within {}",
                    e.machine_id,
                    humantime::format_duration(within)
                );
                i.updated_at = now;
                if i.inhibited_by.is_none() {
                    i.inhibited_by = self.covering_mass(Some(worker), Some(&e.machine_id));
                }
                let id = i.id.clone();
                self.put(i);
                if n >= crashes as usize {
                    self.open(rule, &id, now);
                }
            }
            RuleKind::MassFailure { percent, window } => {
                // One incident per rule: its subject is the rule.
                let key = (rule.name.clone(), rule.name.clone());
                let mut i = match self.current.get(&key) {
                    Some(i) => i.clone(),
                    None => {
                        let mut i = self.new_incident(rule, rule.name.clone(), e.at, new_id());
                        i.details =
                            json!({ "recent": [], "covered": [], "machines": [], "recovered": [] });
                        i
                    }
                };
                i.updated_at = now;
                if i.status == IncidentStatus::Open {
                    // The outage grows: the worker is covered too.
                    add_unique(&mut i.details, "covered", worker.as_str());
                    add_unique(&mut i.details, "machines", e.machine_id.as_str());
                    remove(&mut i.details, "recovered", worker.as_str());
                    mass_summary(&mut i);
                    let id = i.id.clone();
                    self.put(i);
                    self.inhibit(&id, now);
                    return;
                }
                let horizon = ms(e.at) - window.as_millis() as i64;
                prune_recent(&mut i.details, horizon);
                if let Some(a) = i.details["recent"].as_array_mut() {
                    if !a.iter().any(|r| r["worker"] == worker.as_str()) {
                        a.push(json!({ "at": ms(e.at), "worker": worker.as_str(), "machine": e.machine_id.as_str() }));
                    }
                }
                let crashed = recent(&i.details).len() as u64;
                // Live at the window's start (at least those that crashed
                // within it).
                let base = live_selected(rule).max(crashed);
                i.details["live_at_start"] = json!(base);
                let id = i.id.clone();
                if crashed >= 2 && crashed * 100 >= u64::from(percent) * base {
                    let workers: Vec<String> = recent(&i.details)
                        .iter()
                        .filter_map(|r| r["worker"].as_str().map(str::to_owned))
                        .collect();
                    let machines: BTreeSet<String> = recent(&i.details)
                        .iter()
                        .filter_map(|r| r["machine"].as_str().map(str::to_owned))
                        .collect();
                    i.details["covered"] = json!(workers);
                    i.details["machines"] = json!(machines);
                    mass_summary(&mut i);
                    self.put(i);
                    self.open(rule, &id, now);
                    self.inhibit(&id, now);
                } else {
                    self.put(i);
                }
            }
            RuleKind::MachineOffline { .. } => {}
        }
    }

    /// Marks every current per-worker and per-machine incident that the open
    /// mass failure `mass` covers as inhibited by it; their undelivered
    /// notifications are suppressed.
    fn inhibit(&mut self, mass: &IncidentId, now: Timestamp) {
        let Some(m) = self.get_by_id(mass) else {
            return;
        };
        let set = |field: &str| -> BTreeSet<String> {
            m.details[field]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (workers, machines) = (set("covered"), set("machines"));
        let covered: Vec<IncidentRecord> = self
            .current
            .values()
            .filter(|i| i.kind != "mass_failure" && i.inhibited_by.is_none())
            .filter(|i| {
                i.worker_id
                    .as_ref()
                    .is_some_and(|w| workers.contains(w.as_str()))
                    || (i.worker_id.is_none()
                        && i.machine_id
                            .as_ref()
                            .is_some_and(|mc| machines.contains(mc.as_str())))
            })
            .cloned()
            .collect();
        for mut i in covered {
            i.inhibited_by = Some(mass.clone());
            i.updated_at = now;
            self.out.suppress.push(i.id.clone());
            self.out
                .notifications
                .retain(|n| !(n.incident_id == i.id && n.transition == "opened"));
            self.put(i);
        }
    }

    /// A worker covered by an open mass failure is live again (or deleted);
    /// at 90 % the mass failure resolves, and every incident it covered.
    fn mass_recovered(&mut self, rule: &Rule, worker: &WorkerId, deleted: bool, now: Timestamp) {
        let key = (rule.name.clone(), rule.name.clone());
        let Some(mut m) = self.current.get(&key).cloned() else {
            return;
        };
        if m.status == IncidentStatus::Pending {
            // A crash that came back within the window counts no more.
            if let Some(a) = m.details["recent"].as_array_mut() {
                let before = a.len();
                a.retain(|r| r["worker"] != worker.as_str());
                if a.len() != before {
                    m.updated_at = now;
                    if a.is_empty() {
                        self.withdraw(&key);
                    } else {
                        self.put(m);
                    }
                }
            }
            return;
        }
        let covered = m.details["covered"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == worker.as_str()));
        if !covered {
            return;
        }
        if deleted {
            remove(&mut m.details, "covered", worker.as_str());
        }
        add_unique(&mut m.details, "recovered", worker.as_str());
        if deleted {
            remove(&mut m.details, "recovered", worker.as_str());
        }
        m.updated_at = now;
        let total = m.details["covered"].as_array().map_or(0, Vec::len);
        let back = m.details["recovered"].as_array().map_or(0, Vec::len);
        mass_summary(&mut m);
        if total == 0 || back * 100 >= MASS_RECOVERED_PERCENT * total {
            let rules = self.alerting.rules.clone();
            self.resolve_mass(rule, m, &rules, now);
        } else {
            self.put(m);
        }
    }

    /// Resolves an open mass failure and every incident it covers (their
    /// rules looked up in `rules`).
    fn resolve_mass(&mut self, rule: &Rule, m: IncidentRecord, rules: &[Rule], now: Timestamp) {
        let id = m.id.clone();
        self.resolve(rule, m, now);
        let inhibited: Vec<IncidentRecord> = self
            .current
            .values()
            .filter(|i| i.inhibited_by.as_ref() == Some(&id))
            .cloned()
            .collect();
        for i in inhibited {
            let Some(r) = rules.iter().find(|r| r.name == i.rule) else {
                continue;
            };
            match i.status {
                IncidentStatus::Pending => self.withdraw(&(i.rule.clone(), i.subject.clone())),
                _ => self.resolve(r, i, now),
            }
        }
    }

    /// Replaces the rules (the API changed them): see [`Self::end_orphans`].
    pub fn set_alerting(&mut self, alerting: Alerting, now: Timestamp) {
        self.alerting = alerting;
        self.end_orphans(now);
    }

    /// Ends the current incidents of rules that are gone or changed kind:
    /// pending ones are withdrawn, open ones resolve (a mass failure with
    /// what it covers). The resolve is addressed to every channel; only
    /// those that were told of the opening hear of it.
    pub fn end_orphans(&mut self, now: Timestamp) {
        let mut orphans: Vec<IncidentRecord> = self
            .current
            .values()
            .filter(|i| {
                !self
                    .alerting
                    .rules
                    .iter()
                    .any(|r| r.name == i.rule && r.kind.as_str() == i.kind)
            })
            .cloned()
            .collect();
        // Mass failures first: they resolve what they cover.
        orphans.sort_by_key(|i| i.kind != "mass_failure");
        let channels: Vec<String> = self
            .alerting
            .channels
            .iter()
            .map(|c| c.name.clone())
            .collect();
        // An orphan resolves under a stand-in of its rule: only its name,
        // severity and channels matter to a resolve.
        let stand_in = |i: &IncidentRecord| Rule {
            name: i.rule.clone(),
            kind: RuleKind::WorkerOffline {
                for_: std::time::Duration::ZERO,
            },
            severity: i.severity.clone(),
            select: Default::default(),
            channels: channels.clone(),
        };
        // What a mass failure covers resolves under its own rule, or a
        // stand-in if that is an orphan too.
        let mut rules = self.alerting.rules.clone();
        rules.extend(orphans.iter().map(&stand_in));
        for i in orphans {
            // Resolved already (covered by a mass failure resolved above)?
            let key = (i.rule.clone(), i.subject.clone());
            let Some(i) = self.current.get(&key).cloned() else {
                continue;
            };
            let rule = stand_in(&i);
            match i.status {
                IncidentStatus::Pending => self.withdraw(&key),
                _ if i.kind == "mass_failure" => self.resolve_mass(&rule, i, &rules, now),
                _ => self.resolve(&rule, i, now),
            }
        }
    }

    /// Whether the step under way has changes to commit.
    pub fn has_changes(&self) -> bool {
        !(self.out.changed.is_empty()
            && self.out.notifications.is_empty()
            && self.out.withdraw.is_empty()
            && self.out.suppress.is_empty()
            && self.out.events.is_empty())
    }
}

fn offline_reason(r: rollcall_core::EventReason) -> Option<OfflineReason> {
    use rollcall_core::EventReason as E;
    Some(match r {
        E::Shutdown => OfflineReason::Shutdown,
        E::Stale => OfflineReason::Stale,
        E::Exited => OfflineReason::Exited,
        E::Replaced => OfflineReason::Replaced,
        E::Revoked => OfflineReason::Revoked,
        E::Registered | E::Heartbeat => return None,
    })
}

fn exit_json(e: &EventRecord) -> Value {
    match e.exit {
        Some(rollcall_core::ExitStatus::Code(c)) => json!({ "code": c }),
        Some(rollcall_core::ExitStatus::Signal(s)) => json!({ "signal": s }),
        None => Value::Null,
    }
}

fn crash_times(details: &Value) -> Vec<i64> {
    details["crashes"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

fn recent(details: &Value) -> Vec<Value> {
    details["recent"].as_array().cloned().unwrap_or_default()
}

fn prune_recent(details: &mut Value, horizon: i64) {
    if let Some(a) = details["recent"].as_array_mut() {
        a.retain(|r| r["at"].as_i64().is_some_and(|t| t > horizon));
    }
}

fn add_unique(details: &mut Value, field: &str, v: &str) {
    if !details[field].is_array() {
        details[field] = json!([]);
    }
    if let Some(a) = details[field].as_array_mut() {
        if !a.iter().any(|x| x == v) {
            a.push(json!(v));
        }
    }
}

fn remove(details: &mut Value, field: &str, v: &str) {
    if let Some(a) = details[field].as_array_mut() {
        a.retain(|x| x != v);
    }
}

fn mass_summary(i: &mut IncidentRecord) {
    let n = i.details["covered"].as_array().map_or(0, Vec::len);
    let m = i.details["machines"].as_array().map_or(0, Vec::len);
    let base = i.details["live_at_start"].as_u64().unwrap_or(0);
    i.summary = format!(
        "mass failure: {n} of {base} workers crashed, on {m} machine{}",
        if m == 1 { "" } else { "s" }
    );
}

/// An incident as the API and the notifications show it: the API's own
/// wire type ([`crate::api::incidents::Incident`]), so the two never differ.
pub fn incident_json(i: &IncidentRecord) -> Value {
    serde_json::to_value(crate::api::incidents::Incident::from(i))
        .expect("an incident serialises to JSON")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rollcall_core::{EventReason, ExitStatus};

    use super::super::rules::{resolve, RawChannel, RawRule};
    use super::*;

    fn alerting(rules: Vec<RawRule>) -> Alerting {
        let hook = RawChannel {
            name: Some("hook".into()),
            kind: Some("slack".into()),
            url: Some("http://127.0.0.1:9/".into()),
            group_wait: Some("10s".into()),
            ..RawChannel::default()
        };
        resolve(rules, vec![hook], Duration::from_secs(90)).unwrap()
    }

    fn rule(name: &str, kind: &str) -> RawRule {
        RawRule {
            name: Some(name.into()),
            kind: Some(kind.into()),
            channels: Some(vec!["hook".into()]),
            ..RawRule::default()
        }
    }

    fn worker(n: u8) -> WorkerId {
        WorkerId::generate(Timestamp::from_millis(1), [n; 10])
    }

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn ev(
        seq: i64,
        at: i64,
        kind: EventType,
        w: &WorkerId,
        reason: Option<EventReason>,
    ) -> EventRecord {
        EventRecord {
            seq,
            at: t(at),
            kind,
            worker_id: Some(w.clone()),
            machine_id: MachineId::parse("m1").unwrap(),
            reason,
            session: Some(1),
            detection_lag_ms: None,
            exit: None,
            incident_id: None,
        }
    }

    fn facts() -> Facts {
        Facts {
            worker: Some(("job".into(), Labels::default())),
            ..Facts::default()
        }
    }

    struct Run {
        e: Evaluator,
        live: u64,
        n: u8,
    }

    impl Run {
        fn new(rules: Vec<RawRule>) -> Run {
            Run {
                e: Evaluator::new(alerting(rules), vec![]),
                live: 100,
                n: 0,
            }
        }

        fn events(&mut self, events: Vec<EventRecord>, now: i64) -> AlertCommit {
            let with: Vec<_> = events.into_iter().map(|e| (e, facts())).collect();
            let live = self.live;
            let n = &mut self.n;
            let mut new_id = || {
                *n += 1;
                IncidentId::generate(t(now), [*n; 10])
            };
            self.e.on_events(&with, &mut |_| live, t(now), &mut new_id);
            self.e.take(None)
        }

        fn tick(&mut self, now: i64) -> AlertCommit {
            self.e.on_tick(t(now));
            self.e.take(None)
        }
    }

    #[test]
    fn a_graceful_stop_or_a_clean_exit_opens_nothing() {
        let mut r = Run::new(vec![rule("down", "worker_offline")]);
        let w = worker(1);
        let mut clean = ev(
            1,
            1_000,
            EventType::WorkerOffline,
            &w,
            Some(EventReason::Exited),
        );
        clean.exit = Some(ExitStatus::Code(0));
        let step = r.events(
            vec![
                ev(
                    1,
                    1_000,
                    EventType::WorkerOffline,
                    &w,
                    Some(EventReason::Shutdown),
                ),
                clean,
                ev(
                    2,
                    1_000,
                    EventType::WorkerOffline,
                    &w,
                    Some(EventReason::Revoked),
                ),
            ],
            1_000,
        );
        assert_eq!(step, AlertCommit::default());
    }

    #[test]
    fn for_keeps_a_quick_restart_from_paging() {
        let mut raw = rule("down", "worker_offline");
        raw.for_ = Some("1m".into());
        let mut r = Run::new(vec![raw]);
        let w = worker(1);
        let step = r.events(
            vec![ev(
                1,
                1_000,
                EventType::WorkerOffline,
                &w,
                Some(EventReason::Stale),
            )],
            1_000,
        );
        assert_eq!(step.incidents.len(), 1);
        assert_eq!(step.incidents[0].status, IncidentStatus::Pending);
        assert!(step.notifications.is_empty());
        // Back after 30 s: withdrawn, nobody told.
        let step = r.events(
            vec![ev(
                2,
                31_000,
                EventType::WorkerOnline,
                &w,
                Some(EventReason::Heartbeat),
            )],
            31_000,
        );
        assert_eq!(step.withdraw.len(), 1);
        assert!(step.notifications.is_empty());
        // Down again, and for a minute: it opens, with a notification that
        // waits out the channel's group_wait.
        r.events(
            vec![ev(
                3,
                40_000,
                EventType::WorkerOffline,
                &w,
                Some(EventReason::Replaced),
            )],
            40_000,
        );
        assert!(r.tick(99_999).incidents.is_empty());
        let step = r.tick(100_000);
        assert_eq!(step.incidents[0].status, IncidentStatus::Open);
        assert_eq!(step.notifications.len(), 1);
        assert_eq!(step.notifications[0].not_before, t(110_000));
        assert!(step.incidents[0].summary.contains("replaced"));
    }

    #[test]
    fn crashes_within_the_window_open_and_a_quiet_window_resolves() {
        let mut raw = rule("flaky", "worker_crashes");
        raw.crashes = Some(3);
        raw.within = Some("1h".into());
        let mut r = Run::new(vec![raw]);
        let w = worker(1);
        let crash = |seq, at| {
            ev(
                seq,
                at,
                EventType::WorkerOffline,
                &w,
                Some(EventReason::Stale),
            )
        };
        let hour = 3_600_000;
        r.events(vec![crash(1, 0)], 0);
        r.events(vec![crash(2, 1_000)], 1_000);
        // The first crash left the window before the third: still pending.
        let step = r.events(vec![crash(3, hour + 500)], hour + 500);
        assert_eq!(step.incidents[0].status, IncidentStatus::Pending);
        let step = r.events(vec![crash(4, hour + 600)], hour + 600);
        assert_eq!(step.incidents[0].status, IncidentStatus::Open);
        assert_eq!(step.notifications.len(), 1);
        // An hour after the last crash without another: resolved.
        assert!(r.tick(2 * hour + 599).incidents.is_empty());
        let step = r.tick(2 * hour + 600);
        assert_eq!(step.incidents[0].status, IncidentStatus::Resolved);
        assert_eq!(step.notifications[0].transition, "resolved");
    }

    #[test]
    fn a_mass_failure_covers_the_workers_it_names_and_resolves_at_ninety_percent() {
        let mut mass = rule("outage", "mass_failure");
        mass.percent = Some(20);
        let mut r = Run::new(vec![rule("down", "worker_offline"), mass]);
        r.live = 40;
        let workers: Vec<WorkerId> = (1..=10).map(worker).collect();
        let crash = |i: usize| {
            ev(
                i as i64,
                1_000,
                EventType::WorkerOffline,
                &workers[i],
                Some(EventReason::Stale),
            )
        };
        // 9 crashed of 50 live at the start: 18 % — not yet.
        r.live = 50;
        let step = r.events((0..9).map(crash).collect(), 1_000);
        assert_eq!(
            step.notifications.len(),
            9,
            "nine worker openings wait out group_wait"
        );
        let pending = r.e.current().find(|i| i.kind == "mass_failure").unwrap();
        assert_eq!(pending.status, IncidentStatus::Pending);
        assert_eq!(
            pending.details["recent"].as_array().unwrap().len(),
            9,
            "{pending:#?}"
        );
        // The tenth: 10 of 50 = 20 %. One opening, the nine suppressed.
        let step = r.events(vec![crash(9)], 1_100);
        let opened: Vec<_> = step
            .notifications
            .iter()
            .map(|n| n.transition.as_str())
            .collect();
        assert_eq!(opened, ["opened"], "{step:#?}");
        let mass = step
            .incidents
            .iter()
            .find(|i| i.kind == "mass_failure")
            .unwrap()
            .clone();
        assert_eq!(
            mass.details["covered"].as_array().unwrap().len(),
            10,
            "{mass:#?}"
        );
        assert_eq!(step.suppress.len(), 10);
        assert!(r
            .e
            .current()
            .filter(|i| i.kind == "worker_offline")
            .all(|i| i.inhibited_by.as_ref() == Some(&mass.id)));
        // Eight back: 80 % — still open. The ninth: resolved, with all it covered.
        let back = |i: usize| {
            ev(
                20 + i as i64,
                5_000,
                EventType::WorkerOnline,
                &workers[i],
                Some(EventReason::Heartbeat),
            )
        };
        r.events((0..8).map(back).collect(), 5_000);
        assert!(r.e.current().any(|i| i.kind == "mass_failure"));
        let step = r.events(vec![back(8)], 5_100);
        assert!(step
            .incidents
            .iter()
            .any(|i| i.id == mass.id && i.status == IncidentStatus::Resolved));
        assert_eq!(
            r.e.current().count(),
            0,
            "{:?}",
            r.e.current().collect::<Vec<_>>()
        );
    }

    #[test]
    fn openings_and_resolves_are_events_a_fleet_wide_one_of_the_fleet() {
        let mut r = Run::new(vec![rule("down", "worker_offline")]);
        let w = worker(1);
        let crash = ev(
            1,
            1_000,
            EventType::WorkerOffline,
            &w,
            Some(EventReason::Stale),
        );
        let step = r.events(vec![crash], 1_000);
        assert_eq!(step.events.len(), 1);
        let opened = &step.events[0];
        assert_eq!(opened.kind, EventType::IncidentOpened);
        assert_eq!(opened.incident_id, step.incidents[0].id);
        assert_eq!(opened.worker_id.as_ref(), Some(&w));
        assert_eq!(opened.machine_id.as_str(), "m1");
        // A tick with nothing to change appends nothing.
        assert!(r.tick(2_000).events.is_empty());
        let back = ev(
            2,
            3_000,
            EventType::WorkerOnline,
            &w,
            Some(EventReason::Heartbeat),
        );
        let step = r.events(vec![back], 3_000);
        assert_eq!(step.events.len(), 1);
        assert_eq!(step.events[0].kind, EventType::IncidentResolved);
        assert_eq!(step.events[0].at, t(3_000));

        let mut mass = rule("outage", "mass_failure");
        mass.percent = Some(50);
        let mut r = Run::new(vec![mass]);
        r.live = 2;
        let crashes = (1..=2)
            .map(|n| {
                ev(
                    n,
                    1_000,
                    EventType::WorkerOffline,
                    &worker(n as u8),
                    Some(EventReason::Stale),
                )
            })
            .collect();
        let step = r.events(crashes, 1_000);
        let opened: Vec<_> = step
            .events
            .iter()
            .filter(|e| e.kind == EventType::IncidentOpened)
            .collect();
        assert_eq!(opened.len(), 1, "{step:#?}");
        assert!(opened[0].machine_id.is_fleet());
        assert!(opened[0].worker_id.is_none());
    }

    #[test]
    fn an_open_incident_is_repeated_every_repeat_interval_until_it_resolves() {
        let mut r = Run::new(vec![rule("down", "worker_offline")]);
        let w = worker(1);
        let crash = ev(1, 0, EventType::WorkerOffline, &w, Some(EventReason::Stale));
        let step = r.events(vec![crash], 0);
        let id = step.incidents[0].id.clone();
        let hours = |h: i64| h * 3_600_000;
        let repeats = |step: &AlertCommit| -> Vec<String> {
            step.notifications
                .iter()
                .filter(|n| n.transition == "repeated")
                .map(|n| n.idempotency_key.clone())
                .collect()
        };
        // The default repeat_interval: 4 h.
        assert!(repeats(&r.tick(hours(4) - 1)).is_empty());
        assert_eq!(
            repeats(&r.tick(hours(4))),
            [format!("{id}:repeated-1:hook")]
        );
        assert!(repeats(&r.tick(hours(5))).is_empty(), "once per interval");
        // A server that was not looking for two intervals repeats once.
        assert_eq!(
            repeats(&r.tick(hours(13))),
            [format!("{id}:repeated-3:hook")]
        );
        // A restart forgets the count; the key it enqueues again is the same
        // (the outbox keeps a key once).
        let current: Vec<IncidentRecord> = r.e.current().cloned().collect();
        r.e = Evaluator::new(r.e.alerting().clone(), current);
        assert_eq!(
            repeats(&r.tick(hours(14))),
            [format!("{id}:repeated-3:hook")]
        );
        let back = ev(
            2,
            hours(15),
            EventType::WorkerOnline,
            &w,
            Some(EventReason::Heartbeat),
        );
        r.events(vec![back], hours(15));
        assert!(repeats(&r.tick(hours(17))).is_empty(), "resolved: no more");
    }

    #[test]
    fn repeat_interval_zero_never_repeats_and_alertmanager_repeats_itself() {
        let mut hook = RawChannel {
            name: Some("hook".into()),
            kind: Some("slack".into()),
            url: Some("http://127.0.0.1:9/".into()),
            repeat_interval: Some("0s".into()),
            ..RawChannel::default()
        };
        let a = resolve(
            vec![rule("down", "worker_offline")],
            vec![hook.clone()],
            Duration::from_secs(90),
        )
        .unwrap();
        assert_eq!(a.channels[0].repeat_interval, None);
        let mut r = Run::new(vec![]);
        r.e = Evaluator::new(a, vec![]);
        let crash = ev(
            1,
            0,
            EventType::WorkerOffline,
            &worker(1),
            Some(EventReason::Stale),
        );
        r.events(vec![crash], 0);
        assert!(r.tick(100 * 3_600_000).notifications.is_empty());
        hook.repeat_interval = Some("30s".into());
        let e = resolve(vec![], vec![hook.clone()], Duration::from_secs(90)).unwrap_err();
        assert!(e.to_string().contains("channel[0].repeat_interval"), "{e}");
        hook.kind = Some("alertmanager".into());
        hook.repeat_interval = Some("1h".into());
        let e = resolve(vec![], vec![hook], Duration::from_secs(90)).unwrap_err();
        assert!(e.to_string().contains("channel[0].repeat_interval"), "{e}");
    }

    #[test]
    fn a_deleted_rule_resolves_its_incidents_and_a_changed_one_keeps_them() {
        let mut slow = rule("slow", "worker_offline");
        slow.for_ = Some("1h".into());
        let mut r = Run::new(vec![rule("down", "worker_offline"), slow.clone()]);
        let w = worker(1);
        let crash = ev(1, 0, EventType::WorkerOffline, &w, Some(EventReason::Stale));
        let step = r.events(vec![crash], 0);
        assert_eq!(step.incidents.len(), 2, "{step:#?}");
        // The same rules with another severity: nothing ends.
        let mut down = rule("down", "worker_offline");
        down.severity = Some("warning".into());
        r.e.set_alerting(alerting(vec![down, slow]), t(1_000));
        assert!(!r.e.has_changes());
        // "down" deleted, "slow" now of another kind: the open incident
        // resolves (told, and in the log), the pending one is withdrawn.
        let mut slow = rule("slow", "worker_crashes");
        slow.crashes = Some(2);
        r.e.set_alerting(alerting(vec![slow]), t(2_000));
        let step = r.e.take(None);
        assert_eq!(step.withdraw.len(), 1, "{step:#?}");
        assert_eq!(step.incidents.len(), 1);
        assert_eq!(step.incidents[0].status, IncidentStatus::Resolved);
        assert_eq!(step.incidents[0].rule, "down");
        assert_eq!(step.notifications.len(), 1);
        assert_eq!(step.notifications[0].transition, "resolved");
        assert_eq!(step.events.len(), 1);
        assert_eq!(step.events[0].kind, EventType::IncidentResolved);
        assert_eq!(r.e.current().count(), 0);
    }
}
