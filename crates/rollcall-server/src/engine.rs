//! The liveness engine: every known worker in memory, with its deadline.
//!
//! A heartbeat of a live worker is a hash-map update under one shard's lock:
//! no I/O, no allocation, no timer operation. Deadlines sit in a min-heap
//! with lazy re-insertion: a heartbeat only moves the deadline stored on the
//! worker; when the heap's entry comes due, the detector compares it with the
//! worker's current deadline and pushes it back if it moved. So the heap
//! holds about one entry per live worker, and each is revisited about once
//! per `stale_after`, however often the worker beats.
//!
//! Status changes are not made here. They are planned by the transition
//! writer (which owns them, one at a time, in order), committed to the store,
//! and only then applied to the engine with [`Engine::apply`]. Heartbeats
//! never wait for the writer, but a heartbeat and an expiry are always
//! ordered under the worker's shard lock: a heartbeat taken before the
//! writer seals the expiry ([`Engine::seal_expiry`]) moves the deadline and
//! the expiry is dropped; one taken after the seal (or while the worker is
//! offline) claims a resume, which the writer commits behind the expiry.

use std::cmp::Reverse;
use std::collections::hash_map::{Entry, RandomState};
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::time::Duration;

use parking_lot::Mutex;
use rollcall_core::fsm::{self, Command};
use rollcall_core::policy;
use rollcall_core::{Labels, MachineId, Status, Timestamp, TokenHash, WorkerId, WorkerName};
use rollcall_store::{HeartbeatMark, WorkerRecord};
use tokio::sync::Notify;

const SHARDS: usize = 64;

/// Hashes a [`TokenHash`] key by folding its bytes: the key is already a
/// SHA-256, uniformly distributed, so hashing it again would only cost time
/// on every authenticated heartbeat.
#[derive(Debug, Default, Clone, Copy)]
struct TokenKeyHasher(u64);

impl Hasher for TokenKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(23) ^ u64::from_le_bytes(word);
        }
    }
}

/// Token hash → worker.
type TokenIndex = HashMap<TokenHash, WorkerId, BuildHasherDefault<TokenKeyHasher>>;

/// A worker as the engine holds it.
#[derive(Debug, Clone)]
pub struct Live {
    /// The worker as last committed, except `last_heartbeat_at`, which runs
    /// ahead of the store (written behind).
    pub record: WorkerRecord,
    /// When the worker goes stale unless it beats; meaningful while live.
    pub deadline: Timestamp,
    /// Changes queued in the writer for this worker.
    pending: u32,
    /// `last_heartbeat_at` changed since the last flush.
    dirty: bool,
    /// The writer planned this worker's stale transition and is committing
    /// it: a heartbeat now must resume the worker after it (see
    /// [`Engine::heartbeat`]).
    expiring: bool,
    /// A resume of this worker is queued in the writer.
    resume_queued: bool,
    /// The latest heartbeat taken while the worker was offline (or
    /// expiring), not yet installed: the resume gives the worker at least
    /// `stale_after` from it.
    resume_beat: Option<Timestamp>,
}

#[derive(Debug, Default)]
struct Shard {
    /// Boxed: a `Live` is about 200 bytes, and a hash table keeps up to
    /// twice as many slots as entries, so slots of a pointer waste far less
    /// than slots of a whole worker (about 160 bytes per worker at a
    /// million).
    workers: HashMap<WorkerId, Box<Live>>,
    /// Workers whose heartbeat time has not been written behind yet.
    dirty: Vec<WorkerId>,
}

/// A heartbeat accepted in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub status: Status,
    pub session: u64,
    pub deadline: Timestamp,
    pub heartbeat_interval: Duration,
}

/// The outcome of a heartbeat; it never waits for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastBeat {
    /// Accepted in memory: the worker is live.
    Done(Beat),
    /// The worker is offline (or its stale transition is being committed):
    /// the heartbeat is taken in memory — no expiry can take the worker for
    /// the time it bought — and resumes it. `first`: this heartbeat claimed
    /// the resume, and the caller must queue [`crate::writer::Request::Resume`]
    /// (a change is already marked as queued for it). `beat` is what the
    /// worker will be once the resume is committed (the FSM's plan).
    Resuming { beat: Beat, first: bool },
    /// No such worker.
    Unknown,
}

/// A worker whose deadline passed, claimed for a stale transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub id: WorkerId,
    pub session: u64,
    pub deadline: Timestamp,
}

/// Whose a presented worker token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOwner {
    /// The token belongs to the given worker.
    Worker(WorkerId),
    /// No worker has this token.
    Unknown,
}

/// Counts of workers by status, and of the machines they run on by derived
/// status, for metrics and the start-up log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    pub online: u64,
    pub draining: u64,
    pub offline: u64,
    /// Machines with an online or draining worker.
    pub machines_online: u64,
    /// Machines whose workers are all offline. A machine left without any
    /// worker is not in the engine and not counted (cleanup forgets it).
    pub machines_offline: u64,
}

/// What the engine knows of a machine besides its workers: its hostname and
/// labels as last registered (for the fleet summary's display and search).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineInfo {
    pub hostname: Option<String>,
    pub labels: Labels,
}

/// See the module docs.
#[derive(Debug)]
pub struct Engine {
    shards: Box<[Mutex<Shard>]>,
    /// Token hash → worker, for authenticating worker tokens.
    tokens: Box<[Mutex<TokenIndex>]>,
    /// (machine, name) → worker, for re-registration. Only the writer uses it.
    names: Mutex<HashMap<(MachineId, WorkerName), WorkerId>>,
    /// Hostname and labels of the machines, as committed.
    machines: Mutex<HashMap<MachineId, MachineInfo>>,
    timers: Mutex<BinaryHeap<Reverse<(Timestamp, WorkerId)>>>,
    /// Wakes the detector when an earlier deadline than it sleeps for arrives.
    timer_changed: Notify,
    hasher: RandomState,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    /// An empty engine.
    pub fn new() -> Self {
        Engine {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            tokens: (0..SHARDS).map(|_| Mutex::default()).collect(),
            names: Mutex::default(),
            machines: Mutex::default(),
            timers: Mutex::default(),
            timer_changed: Notify::new(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, id: &WorkerId) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(id) as usize) % SHARDS]
    }

    fn token_shard(&self, hash: &TokenHash) -> &Mutex<TokenIndex> {
        &self.tokens[hash.as_bytes()[0] as usize % SHARDS]
    }

    /// Loads workers from the store at start-up (or when this replica takes
    /// over). Live workers get the restart grace: a full `stale_after` from
    /// `ready_at` (ARCHITECTURE.md, invariant 6).
    pub fn load(&self, records: Vec<WorkerRecord>, ready_at: Timestamp) {
        for record in records {
            let stored = policy::deadline(
                record.last_heartbeat_at,
                Some(record.registered_at),
                record.stale_after,
            );
            let deadline = policy::restart_deadline(stored, ready_at, record.stale_after);
            self.apply(record, deadline);
        }
    }

    /// Gives every live worker the restart grace counted from `at` (the
    /// server noticed it had been paused: see `pause`). Timers need no
    /// change: a timer that comes due finds the later deadline and is pushed
    /// back. Returns how many workers are live.
    pub fn grace_live(&self, at: Timestamp) -> usize {
        let mut n = 0;
        for shard in self.shards.iter() {
            for live in shard.lock().workers.values_mut() {
                if live.record.status.is_live() {
                    live.deadline =
                        policy::restart_deadline(live.deadline, at, live.record.stale_after);
                    n += 1;
                }
            }
        }
        n
    }

    /// Who a worker token belongs to. The lookup is by hash; the final
    /// comparison against the worker's stored hash is constant-time.
    pub fn token_owner(&self, hash: &TokenHash) -> TokenOwner {
        let Some(id) = self.token_shard(hash).lock().get(hash).cloned() else {
            return TokenOwner::Unknown;
        };
        let shard = self.shard(&id).lock();
        match shard.workers.get(&id) {
            Some(live) if live.record.token_hash.ct_eq(hash) => TokenOwner::Worker(id),
            _ => TokenOwner::Unknown,
        }
    }

    /// A heartbeat: memory only, whatever the worker's state.
    ///
    /// A live worker's deadline moves, also while a change is queued for
    /// it: a queued expiry that the writer has not planned yet then finds
    /// the deadline moved and is dropped ([`Engine::seal_expiry`]); a queued
    /// drain, offline or deletion is ordered after this heartbeat.
    ///
    /// An offline worker — or one whose stale transition the writer is
    /// committing — is resumed: the heartbeat is recorded here, the first
    /// one claims the resume (a change queued, so neither the detector nor
    /// the sweep can expire the worker until the resume is installed with a
    /// deadline at least `stale_after` after the latest such heartbeat).
    /// The status changes only when the writer commits the resume.
    pub fn heartbeat(&self, id: &WorkerId, now: Timestamp) -> FastBeat {
        let mut guard = self.shard(id).lock();
        let shard = &mut *guard;
        let Some(live) = shard.workers.get_mut(id) else {
            return FastBeat::Unknown;
        };
        if !live.record.status.is_live() || live.expiring {
            let mut state = live.record.state();
            if live.expiring {
                if let Ok(t) = fsm::transition(
                    Some(state),
                    Command::Expire {
                        session: state.session,
                    },
                    now,
                ) {
                    state = t.next.unwrap_or(state);
                }
            }
            if let Ok(fsm::Transition { next: Some(n), .. }) =
                fsm::transition(Some(state), Command::Heartbeat, now)
            {
                state = n;
            }
            live.resume_beat = live.resume_beat.max(Some(now));
            let first = !live.resume_queued;
            if first {
                live.resume_queued = true;
                live.pending += 1;
            }
            return FastBeat::Resuming {
                beat: Beat {
                    status: state.status,
                    session: state.session,
                    deadline: policy::extend_deadline(None, now, live.record.stale_after),
                    heartbeat_interval: live.record.heartbeat_interval,
                },
                first,
            };
        }
        live.record.last_heartbeat_at = Some(now);
        live.deadline = policy::extend_deadline(Some(live.deadline), now, live.record.stale_after);
        if !live.dirty {
            live.dirty = true;
            shard.dirty.push(id.clone());
        }
        FastBeat::Done(Beat {
            status: live.record.status,
            session: live.record.session,
            deadline: live.deadline,
            heartbeat_interval: live.record.heartbeat_interval,
        })
    }

    /// A copy of a worker's state.
    pub fn get(&self, id: &WorkerId) -> Option<Live> {
        self.shard(id)
            .lock()
            .workers
            .get(id)
            .map(|live| Live::clone(live))
    }

    /// The worker registered under a name on a machine, if any.
    pub fn by_name(&self, machine: &MachineId, name: &WorkerName) -> Option<WorkerId> {
        self.names
            .lock()
            .get(&(machine.clone(), name.clone()))
            .cloned()
    }

    /// Marks a change as queued for a worker (see the module docs). Returns
    /// false if the worker is unknown.
    pub fn begin_change(&self, id: &WorkerId) -> bool {
        match self.shard(id).lock().workers.get_mut(id) {
            Some(live) => {
                live.pending += 1;
                true
            }
            None => false,
        }
    }

    /// Called by the writer as it plans a stale transition: confirms, under
    /// the worker's lock, that the deadline has still passed at `now` (no
    /// heartbeat moved it since the claim) and marks the worker as expiring,
    /// so that a heartbeat from now on resumes it after the expiry instead
    /// of being answered as if it were still online. False: the expiry lost
    /// the race and must be dropped.
    pub fn seal_expiry(&self, id: &WorkerId, now: Timestamp) -> bool {
        match self.shard(id).lock().workers.get_mut(id) {
            Some(live) if policy::is_expired(live.deadline, now) && !live.resume_queued => {
                live.expiring = true;
                true
            }
            _ => false,
        }
    }

    /// Ends an expiry's seal (its commit is installed, or failed).
    pub fn end_expiry(&self, id: &WorkerId) {
        if let Some(live) = self.shard(id).lock().workers.get_mut(id) {
            live.expiring = false;
        }
    }

    /// The latest heartbeat taken for a worker's queued resume, if any.
    pub fn resume_beat(&self, id: &WorkerId) -> Option<Timestamp> {
        self.shard(id)
            .lock()
            .workers
            .get(id)
            .and_then(|l| l.resume_beat)
    }

    /// Ends a resume claim (its commit is settled, or it could not be
    /// queued). The change mark is released separately.
    pub fn end_resume(&self, id: &WorkerId) {
        if let Some(live) = self.shard(id).lock().workers.get_mut(id) {
            live.resume_queued = false;
        }
    }

    /// Marks a queued change as done.
    pub fn end_change(&self, id: &WorkerId) {
        if let Some(live) = self.shard(id).lock().workers.get_mut(id) {
            live.pending = live.pending.saturating_sub(1);
        }
    }

    /// Installs a committed worker state. Within one session the heartbeat
    /// time and the deadline only move forward, so a heartbeat taken in
    /// memory meanwhile is never lost.
    pub fn apply(&self, record: WorkerRecord, deadline: Timestamp) {
        let id = record.id.clone();
        let new_hash = record.token_hash;
        let key = (record.machine_id.clone(), record.name.clone());
        let live_now = record.status.is_live();
        let old_hash;
        {
            let mut shard = self.shard(&id).lock();
            match shard.workers.entry(id.clone()) {
                Entry::Occupied(mut o) => {
                    let live = o.get_mut();
                    old_hash = Some(live.record.token_hash);
                    let mut record = record;
                    let mut deadline = deadline;
                    if live.record.session == record.session {
                        record.last_heartbeat_at =
                            record.last_heartbeat_at.max(live.record.last_heartbeat_at);
                        if live.record.status.is_live() && record.status.is_live() {
                            deadline = deadline.max(live.deadline);
                        }
                    }
                    // Heartbeats taken while the worker was offline or
                    // expiring: the live state installed now keeps the time
                    // they bought.
                    if record.status.is_live() {
                        if let Some(b) = live.resume_beat.take() {
                            record.last_heartbeat_at = record.last_heartbeat_at.max(Some(b));
                            deadline =
                                policy::extend_deadline(Some(deadline), b, record.stale_after);
                        }
                    }
                    live.expiring = false;
                    live.record = record;
                    live.deadline = deadline;
                }
                Entry::Vacant(v) => {
                    old_hash = None;
                    v.insert(Box::new(Live {
                        record,
                        deadline,
                        pending: 0,
                        dirty: false,
                        expiring: false,
                        resume_queued: false,
                        resume_beat: None,
                    }));
                }
            }
        }
        if old_hash.is_none_or(|h| h != new_hash) {
            if let Some(old) = old_hash {
                self.token_shard(&old).lock().remove(&old);
            }
            self.token_shard(&new_hash)
                .lock()
                .insert(new_hash, id.clone());
        }
        self.names.lock().insert(key, id.clone());
        if live_now {
            self.arm(id, deadline);
        }
    }

    /// Forgets a worker (deleted or forgotten).
    pub fn remove(&self, id: &WorkerId) {
        let removed = self.shard(id).lock().workers.remove(id);
        if let Some(live) = removed {
            let hash = live.record.token_hash;
            let mut tokens = self.token_shard(&hash).lock();
            if tokens.get(&hash) == Some(id) {
                tokens.remove(&hash);
            }
            drop(tokens);
            let key = (live.record.machine_id, live.record.name);
            let mut names = self.names.lock();
            if names.get(&key) == Some(id) {
                names.remove(&key);
            }
        }
    }

    /// Puts a timer for `id` at `at` into the heap.
    pub fn arm(&self, id: WorkerId, at: Timestamp) {
        let mut timers = self.timers.lock();
        let earliest = timers.peek().map(|Reverse((t, _))| *t);
        timers.push(Reverse((at, id)));
        drop(timers);
        if earliest.is_none_or(|e| at < e) {
            self.timer_changed.notify_one();
        }
    }

    /// The earliest armed deadline.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.timers.lock().peek().map(|Reverse((t, _))| *t)
    }

    /// Resolves when a timer earlier than the one last seen is armed.
    pub async fn timer_changed(&self) {
        self.timer_changed.notified().await
    }

    /// Takes due timers and claims up to `max` workers whose deadline has
    /// really passed (marking a change as queued for each). Timers of workers
    /// that beat meanwhile are pushed back to their current deadline; timers
    /// of workers that are gone, offline or busy are dropped (the writer arms
    /// a fresh one when it finishes a change).
    pub fn claim_expired(&self, now: Timestamp, max: usize) -> Vec<Expiry> {
        let mut claimed = Vec::new();
        let mut timers = self.timers.lock();
        while claimed.len() < max {
            match timers.peek() {
                Some(Reverse((t, _))) if policy::is_expired(*t, now) => {}
                _ => break,
            }
            let Some(Reverse((_, id))) = timers.pop() else {
                break;
            };
            let mut shard = self.shard(&id).lock();
            let Some(live) = shard.workers.get_mut(&id) else {
                continue;
            };
            if !live.record.status.is_live() || live.pending > 0 {
                continue;
            }
            if policy::is_expired(live.deadline, now) {
                live.pending += 1;
                claimed.push(Expiry {
                    id: id.clone(),
                    session: live.record.session,
                    deadline: live.deadline,
                });
            } else {
                timers.push(Reverse((live.deadline, id.clone())));
            }
        }
        claimed
    }

    /// Live workers whose deadline has passed and that have no change
    /// queued, found by a full scan. Only the periodic sweep uses this, as a
    /// safety net behind the timers.
    pub fn overdue(&self, now: Timestamp) -> Vec<Expiry> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            for (id, live) in shard.workers.iter_mut() {
                if live.record.status.is_live()
                    && live.pending == 0
                    && policy::is_expired(live.deadline, now)
                {
                    live.pending += 1;
                    out.push(Expiry {
                        id: id.clone(),
                        session: live.record.session,
                        deadline: live.deadline,
                    });
                }
            }
        }
        out
    }

    /// Takes the heartbeat times not yet written behind.
    pub fn take_dirty(&self) -> Vec<HeartbeatMark> {
        let mut marks = Vec::new();
        for shard in self.shards.iter() {
            let mut guard = shard.lock();
            let shard = &mut *guard;
            for id in std::mem::take(&mut shard.dirty) {
                if let Some(live) = shard.workers.get_mut(&id) {
                    live.dirty = false;
                    if let Some(at) = live.record.last_heartbeat_at {
                        marks.push(HeartbeatMark {
                            worker_id: id,
                            machine_id: live.record.machine_id.clone(),
                            session: live.record.session,
                            at,
                        });
                    }
                }
            }
        }
        marks
    }

    /// Marks again the heartbeat times of `marks` as not yet written
    /// behind (their write failed), so the next flush retries them. A mark
    /// of a session that has ended since is dropped: the store ignores it
    /// anyway.
    pub fn restore_dirty(&self, marks: &[HeartbeatMark]) {
        for m in marks {
            let mut guard = self.shard(&m.worker_id).lock();
            let shard = &mut *guard;
            if let Some(live) = shard.workers.get_mut(&m.worker_id) {
                if live.record.session == m.session && !live.dirty {
                    live.dirty = true;
                    shard.dirty.push(m.worker_id.clone());
                }
            }
        }
    }

    /// Records a machine's hostname and labels as committed: each replaces
    /// the known one when given (as a registration's machine upsert does).
    pub fn note_machine(&self, id: &MachineId, hostname: Option<&str>, labels: Option<&Labels>) {
        let mut machines = self.machines.lock();
        let info = machines.entry(id.clone()).or_default();
        if let Some(h) = hostname {
            info.hostname = Some(h.to_owned());
        }
        if let Some(l) = labels {
            info.labels = l.clone();
        }
    }

    /// The hostname and labels of every machine noted.
    pub fn machine_infos(&self) -> HashMap<MachineId, MachineInfo> {
        self.machines.lock().clone()
    }

    /// Calls `f` with every worker and its deadline, one shard at a time
    /// (under that shard's lock: `f` must not call back into the engine).
    pub fn visit(&self, mut f: impl FnMut(&WorkerRecord, Timestamp)) {
        for shard in self.shards.iter() {
            for live in shard.lock().workers.values() {
                f(&live.record, live.deadline);
            }
        }
    }

    /// Ids, statuses and sessions of every worker (for the sweep).
    pub fn statuses(&self) -> HashMap<WorkerId, (Status, u64)> {
        let mut out = HashMap::new();
        for shard in self.shards.iter() {
            for (id, live) in shard.lock().workers.iter() {
                out.insert(id.clone(), (live.record.status, live.record.session));
            }
        }
        out
    }

    /// Workers by status, and their machines by derived status.
    pub fn census(&self) -> Census {
        let mut c = Census::default();
        // Machines are told apart by a 64-bit hash of their id rather than
        // a copy of it, so a census of a million workers allocates no
        // strings; two ids colliding is far less likely than a scrape
        // racing a transition.
        let mut machines: HashMap<u64, bool> = HashMap::new();
        for shard in self.shards.iter() {
            for live in shard.lock().workers.values() {
                let status = live.record.status;
                match status {
                    Status::Online => c.online += 1,
                    Status::Draining => c.draining += 1,
                    Status::Offline => c.offline += 1,
                }
                *machines
                    .entry(self.hasher.hash_one(&live.record.machine_id))
                    .or_default() |= status.is_live();
            }
        }
        c.machines_online = machines.values().filter(|live| **live).count() as u64;
        c.machines_offline = machines.len() as u64 - c.machines_online;
        c
    }
}

#[cfg(test)]
mod tests {
    //! The orderings of a heartbeat against the writer's changes, at the
    //! engine's level (the writer side is covered by the API, storm and
    //! fault tests).
    use super::*;
    use rollcall_core::{Labels, OfflineReason};

    const STALE: Duration = Duration::from_millis(1_000);

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn record(status: Status, session: u64) -> WorkerRecord {
        WorkerRecord {
            id: WorkerId::generate(t(1), [7; 10]),
            name: WorkerName::parse("w").unwrap(),
            machine_id: MachineId::parse("m").unwrap(),
            status,
            offline_reason: (status == Status::Offline).then_some(OfflineReason::Stale),
            session,
            labels: Labels::default(),
            heartbeat_interval: STALE / 4,
            stale_after: STALE,
            registered_at: t(1),
            last_heartbeat_at: None,
            status_changed_at: t(1),
            token_hash: TokenHash::of("rc_worker_test"),
        }
    }

    #[test]
    fn a_heartbeat_of_an_offline_worker_claims_one_resume_and_changes_no_status() {
        let e = Engine::new();
        let r = record(Status::Offline, 3);
        let id = r.id.clone();
        e.apply(r, t(0));
        let FastBeat::Resuming { beat, first } = e.heartbeat(&id, t(10_000)) else {
            panic!("not a resume");
        };
        assert!(first);
        assert_eq!((beat.status, beat.session), (Status::Online, 4));
        assert_eq!(beat.deadline, t(10_000).plus(STALE));
        let FastBeat::Resuming { first, .. } = e.heartbeat(&id, t(10_500)) else {
            panic!("not a resume");
        };
        assert!(!first, "one resume per worker is queued");
        let live = e.get(&id).unwrap();
        assert_eq!(
            live.record.status,
            Status::Offline,
            "only the writer changes it"
        );
        assert_eq!(live.pending, 1);
        // Neither the detector nor the sweep can take it meanwhile.
        assert!(e.claim_expired(t(99_999), 10).is_empty());
        assert!(e.overdue(t(99_999)).is_empty());
        // The resume installed keeps the time the later heartbeat bought.
        let mut online = record(Status::Online, 4);
        online.id = id.clone();
        e.apply(online, t(10_000).plus(STALE));
        e.end_resume(&id);
        e.end_change(&id);
        let live = e.get(&id).unwrap();
        assert_eq!(live.deadline, t(10_500).plus(STALE));
        assert_eq!(live.record.last_heartbeat_at, Some(t(10_500)));
        assert!(matches!(e.heartbeat(&id, t(11_000)), FastBeat::Done(_)));
    }

    #[test]
    fn a_heartbeat_before_the_seal_drops_the_expiry() {
        let e = Engine::new();
        let r = record(Status::Online, 1);
        let id = r.id.clone();
        e.apply(r, t(1_000));
        let claimed = e.claim_expired(t(1_001), 10);
        assert_eq!(claimed.len(), 1);
        // Claimed but not yet planned: the heartbeat is taken in memory.
        let FastBeat::Done(b) = e.heartbeat(&id, t(1_002)) else {
            panic!("a live worker beats in memory");
        };
        assert_eq!(b.session, 1);
        assert!(!e.seal_expiry(&id, t(1_003)), "the expiry lost the race");
    }

    #[test]
    fn a_heartbeat_after_the_seal_resumes_the_worker_behind_the_expiry() {
        let e = Engine::new();
        let r = record(Status::Draining, 5);
        let id = r.id.clone();
        e.apply(r, t(1_000));
        assert_eq!(e.claim_expired(t(1_001), 10).len(), 1);
        assert!(e.seal_expiry(&id, t(1_002)));
        let FastBeat::Resuming { beat, first } = e.heartbeat(&id, t(1_003)) else {
            panic!("an expiring worker resumes");
        };
        assert!(first);
        assert_eq!((beat.status, beat.session), (Status::Online, 6));
        // The expiry's commit is installed: offline, no longer expiring.
        let mut off = record(Status::Offline, 5);
        off.id = id.clone();
        e.apply(off, t(1_000));
        assert!(!e.get(&id).unwrap().expiring);
        assert!(
            e.get(&id).unwrap().resume_beat.is_some(),
            "kept for the resume"
        );
    }

    #[test]
    fn a_pause_gives_live_workers_the_restart_grace() {
        let e = Engine::new();
        let live = record(Status::Online, 1);
        let live_id = live.id.clone();
        e.apply(live, t(1_000));
        let mut off = record(Status::Offline, 1);
        off.id = WorkerId::generate(t(1), [8; 10]);
        e.apply(off, t(0));
        assert_eq!(e.grace_live(t(5_000)), 1);
        assert_eq!(e.get(&live_id).unwrap().deadline, t(5_000).plus(STALE));
        assert!(e.claim_expired(t(5_500), 10).is_empty());
        assert_eq!(e.claim_expired(t(6_001), 10).len(), 1);
    }
}
