//! The store contract suite.
//!
//! Every guarantee of [`rollcall_store::Store`] (see the crate docs) and every
//! method of the trait is tested here once, as an `async fn(Arc<dyn Store>)`,
//! and [`contract_suite!`] instantiates the whole list for each backend:
//!
//! - `sqlite`: a fresh database in a temporary directory per test;
//! - `postgres`: a fresh database per test on the server of
//!   `ROLLCALL_TEST_POSTGRES_URL` (or a local one on 127.0.0.1:5432);
//!   without one each test prints `SKIPPED …` and returns (unless
//!   `ROLLCALL_REQUIRE_POSTGRES=1`); see [`common::postgres`].
//!
//! Tests that need to reach around the trait (the file lock, reopening a
//! file, editing rows from outside) are SQLite-specific and live in
//! [`sqlite_only`] at the end.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rollcall_core::health::{Observation, Observations, Span, Window};
use rollcall_core::{
    Command, CrashKind, EventReason, EventType, ExitStatus, MachineStatus, OfflineClass,
    OfflineReason, Status, TokenHash, TokenKind, TokenScope,
};
use rollcall_core::{IncidentId, MachineId, Timestamp};
use rollcall_store::{
    AlertCommit, Attempt, CommitResult, EventFilter, EventRecord, FleetQuery, HealthSpan,
    HeartbeatMark, IncidentRecord, IncidentStatus, MachineUpsert, NewNotification, Notification,
    SpansOf, Store, WorkerFilter, WorkerRecord, WorkerWrite,
};

/// Instantiates every contract test for one backend: `$make` is an async
/// constructor returning `Option<Backend>` (`None` skips the backend).
macro_rules! contract_suite {
    ($backend:ident = $make:path) => {
        contract_suite!(@tests $backend = $make;
            empty_store_answers,
            registration_inserts_worker_machine_and_events,
            worker_records_round_trip,
            insert_of_an_existing_worker_is_not_applied,
            put_with_a_wrong_expectation_is_not_applied,
            delete_is_conditional_and_forgets,
            a_failing_batch_changes_nothing,
            conditional_writes_racing_apply_once,
            seq_strictly_increases_in_commit_order,
            seq_is_not_reused_after_pruning_everything,
            prune_events_deletes_at_or_before,
            machine_status_follows_its_live_workers,
            machine_events_come_after_the_worker_events_of_a_batch,
            machine_upsert_merges_details,
            reregistration_replaces_the_session,
            stale_then_resume_records_both_transitions,
            reconcile_on_a_consistent_store_records_nothing,
            flush_heartbeats_moves_forward_within_the_session,
            flush_heartbeats_ignores_marks_of_an_ended_session,
            put_does_not_move_last_heartbeat_back_within_a_session,
            get_machine_counts_workers,
            list_workers_pages_and_filters,
            list_machines_pages_and_filters,
            list_events_pages_and_filters,
            tokens_insert_list_all_delete,
            token_scopes_round_trip,
            touch_tokens_moves_last_used_forward,
            delete_expired_tokens_deletes_at_or_before_now,
            offline_workers_since_lists_long_offline_workers,
            forget_empty_machines_keeps_machines_with_workers,
            health_spans_follow_every_commit,
            health_history_survives_deletion,
            fleet_health_sums_and_ranks,
            observations_make_no_data,
            prune_health_keeps_open_and_recent_spans,
            alert_steps_apply_once_and_keep_acknowledgements,
            outbox_delivers_in_order_per_incident,
            incident_events_join_the_log_in_order,
            alert_rules_put_replace_and_delete,
            fleet_rollup_equals_the_spans,
        );
    };
    (@tests $backend:ident = $make:path; $($test:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $test() {
                    // A backend that is not there said so (`testing::skip`).
                    let Some(backend) = $make().await else {
                        return;
                    };
                    super::$test(backend.store.clone()).await;
                }
            )+
        }
    };
}

contract_suite!(sqlite = crate::common::sqlite);
contract_suite!(postgres = crate::common::postgres);

// ===========================================================================
// Basics
// ===========================================================================

async fn empty_store_answers(store: Arc<dyn Store>) {
    let s = &*store;
    s.ping().await.unwrap();
    assert_eq!(s.last_seq().await.unwrap(), 0);
    assert!(s.load_workers().await.unwrap().is_empty());
    assert_eq!(s.get_worker(&wid(1)).await.unwrap(), None);
    assert_eq!(s.get_machine(&mid("m1")).await.unwrap(), None);

    let w = s
        .list_workers(&WorkerFilter::default(), None, 10)
        .await
        .unwrap();
    assert!(w.items.is_empty() && !w.more);
    let m = s.list_machines(None, None, 10).await.unwrap();
    assert!(m.items.is_empty() && !m.more);
    let e = s.list_events(&EventFilter::default(), 0, 10).await.unwrap();
    assert!(e.items.is_empty() && !e.more);
    let t = s.list_tokens(None, 10).await.unwrap();
    assert!(t.items.is_empty() && !t.more);
    assert!(s.all_tokens().await.unwrap().is_empty());

    // Empty batches and no-op maintenance succeed and record nothing.
    assert_eq!(s.commit(vec![]).await.unwrap(), CommitResult::default());
    s.flush_heartbeats(&[]).await.unwrap();
    s.touch_tokens(&[]).await.unwrap();
    assert!(s.reconcile_machines(at(0)).await.unwrap().is_empty());
    assert!(s.delete_expired_tokens(at(0)).await.unwrap().is_empty());
    assert!(s.offline_workers_since(at(0)).await.unwrap().is_empty());
    assert_eq!(s.forget_empty_machines().await.unwrap(), 0);
    assert_eq!(s.prune_events(at(1_000_000)).await.unwrap(), 0);
    assert!(!s.delete_token(&tid(1)).await.unwrap());
    // The readiness probe commits, again and again, and records no event.
    s.probe_write(at(5)).await.unwrap();
    s.probe_write(at(6)).await.unwrap();
    assert_eq!(s.last_seq().await.unwrap(), 0);
}

async fn registration_inserts_worker_machine_and_events(store: Arc<dyn Store>) {
    let s = &*store;
    let now = at(0);
    let mut record = new_worker(1, "m1", now);
    record.labels = labels(&[("role", "api")]);
    let t = rollcall_core::transition(None, Command::Register, now).unwrap();
    let res = s
        .commit(vec![WorkerWrite::Put {
            record: record.clone(),
            expect: None,
            machine: Some(MachineUpsert {
                id: mid("m1"),
                hostname: Some("host-1".into()),
                labels: Some(labels(&[("rack", "r1")])),
                seen_at: now,
            }),
            events: new_events(&t.events, now, None),
        }])
        .await
        .unwrap();
    assert_eq!(res.applied, [true]);
    assert_eq!(
        kinds(&res.events),
        [
            EventType::WorkerRegistered,
            EventType::WorkerOnline,
            EventType::MachineOnline
        ]
    );
    assert!(res.events[0].seq > 0);
    assert_strictly_increasing(&res.events);
    for e in &res.events[..2] {
        assert_eq!(e.worker_id.as_ref(), Some(&record.id));
        assert_eq!(e.machine_id, mid("m1"));
        assert_eq!(e.session, Some(1));
        assert_eq!(e.at, now);
        assert_eq!(e.detection_lag_ms, None);
    }
    assert_eq!(res.events[0].reason, None);
    assert_eq!(res.events[1].reason, Some(EventReason::Registered));
    let m = &res.events[2];
    assert_eq!(
        (
            m.worker_id.as_ref(),
            &m.machine_id,
            m.reason,
            m.session,
            m.at
        ),
        (None, &mid("m1"), None, None, now)
    );

    // What commit returned is exactly what was stored.
    assert_eq!(all_events(s, &EventFilter::default()).await, res.events);
    assert_eq!(s.last_seq().await.unwrap(), res.events[2].seq);
    assert_eq!(worker(s, &record.id).await, record);
    assert_eq!(s.load_workers().await.unwrap(), [record.clone()]);

    let machine = machine(s, "m1").await;
    assert_eq!(machine.id, mid("m1"));
    assert_eq!(machine.hostname.as_deref(), Some("host-1"));
    assert_eq!(machine.labels, labels(&[("rack", "r1")]));
    assert_eq!(machine.status, MachineStatus::Online);
    assert_eq!((machine.workers_online, machine.workers_total), (1, 1));
    assert_eq!(machine.first_seen_at, now);
    assert_eq!(machine.last_seen_at, now);
    assert_eq!(machine.status_changed_at, now);
}

async fn worker_records_round_trip(store: Arc<dyn Store>) {
    let s = &*store;
    // An imported worker that is already offline, with every field set.
    let mut rec = new_worker(7, "m1", at(0));
    rec.status = Status::Offline;
    rec.offline_reason = Some(OfflineReason::Exited);
    rec.session = 41;
    rec.token_hash = worker_token(&rec.id, 41);
    rec.labels = labels(&[("a", "1"), ("b", &"x".repeat(256))]);
    rec.heartbeat_interval = Duration::from_millis(1_234);
    rec.stale_after = Duration::from_millis(98_765);
    rec.registered_at = at(-5_000);
    rec.last_heartbeat_at = Some(at(-10));
    rec.status_changed_at = at(-1);
    let res = s
        .commit(vec![WorkerWrite::Put {
            record: rec.clone(),
            expect: None,
            machine: Some(machine_upsert("m1", at(0))),
            events: vec![],
        }])
        .await
        .unwrap();
    assert_eq!(res.applied, [true]);
    // A new machine whose only worker is offline is offline: no change.
    assert!(res.events.is_empty(), "{:?}", res.events);
    assert_eq!(worker(s, &rec.id).await, rec);
    assert_eq!(machine(s, "m1").await.status, MachineStatus::Offline);

    // A full replacement of every field round-trips too.
    let mut next = rec.clone();
    next.status = Status::Online;
    next.offline_reason = None;
    next.session = 42;
    next.token_hash = worker_token(&rec.id, 42);
    next.labels = labels(&[]);
    next.heartbeat_interval = Duration::from_secs(5);
    next.stale_after = Duration::from_secs(15);
    next.registered_at = at(100);
    next.last_heartbeat_at = Some(at(100));
    next.status_changed_at = at(100);
    let res = s
        .commit(vec![WorkerWrite::Put {
            record: next.clone(),
            expect: Some(rollcall_store::Expect {
                status: Status::Offline,
                session: 41,
            }),
            machine: None,
            events: vec![],
        }])
        .await
        .unwrap();
    assert_eq!(res.applied, [true]);
    assert_eq!(worker(s, &rec.id).await, next);
    assert_eq!(s.load_workers().await.unwrap(), [next]);
}

// ===========================================================================
// Conditional writes
// ===========================================================================

async fn insert_of_an_existing_worker_is_not_applied(store: Arc<dyn Store>) {
    let s = &*store;
    let (w1, _) = register(s, 1, "m1", at(0)).await;
    let m1 = machine(s, "m1").await;
    let events = all_events(s, &EventFilter::default()).await;
    let seq = s.last_seq().await.unwrap();

    // The same id again, under another name, on another machine.
    let (mut dup, write) = register_write(1, "m2", at(10));
    dup.name = wname("someone-else");
    dup.token_hash = TokenHash::of("rc_worker_dup");
    let WorkerWrite::Put {
        machine: upsert,
        events: e,
        ..
    } = write
    else {
        unreachable!()
    };
    let res = s
        .commit(vec![WorkerWrite::Put {
            record: dup,
            expect: None,
            machine: upsert,
            events: e,
        }])
        .await
        .unwrap();
    assert_eq!(res.applied, [false]);
    assert!(res.events.is_empty());

    // The same identity (machine, name) under another id, with new machine
    // details that must not be applied either.
    let (mut same_name, write) = register_write(2, "m1", at(20));
    same_name.name = w1.name.clone();
    let WorkerWrite::Put { events: e, .. } = write else {
        unreachable!()
    };
    let res = s
        .commit(vec![WorkerWrite::Put {
            record: same_name,
            expect: None,
            machine: Some(MachineUpsert {
                id: mid("m1"),
                hostname: Some("changed".into()),
                labels: Some(labels(&[("changed", "yes")])),
                seen_at: at(20),
            }),
            events: e,
        }])
        .await
        .unwrap();
    assert_eq!(res.applied, [false]);
    assert!(res.events.is_empty());

    // Nothing changed and nothing was recorded, not even the machine parts.
    assert_eq!(worker(s, &w1.id).await, w1);
    assert_eq!(s.get_worker(&wid(2)).await.unwrap(), None);
    assert_eq!(
        s.get_machine(&mid("m2")).await.unwrap(),
        None,
        "a write that was not applied created its machine"
    );
    assert_eq!(
        machine(s, "m1").await,
        m1,
        "a write that was not applied changed its machine"
    );
    assert_eq!(all_events(s, &EventFilter::default()).await, events);
    assert_eq!(s.last_seq().await.unwrap(), seq);

    // In a batch, only the failing write is skipped.
    let (_, again) = register_write(1, "m1", at(30));
    let (w3, fresh) = register_write(3, "m1", at(30));
    let res = s.commit(vec![again, fresh]).await.unwrap();
    assert_eq!(res.applied, [false, true]);
    assert_eq!(
        kinds(&res.events),
        [EventType::WorkerRegistered, EventType::WorkerOnline]
    );
    assert!(res
        .events
        .iter()
        .all(|e| e.worker_id == Some(w3.id.clone())));
    assert!(res.events[0].seq > seq);
    assert_eq!(worker(s, &w3.id).await, w3);
}

async fn put_with_a_wrong_expectation_is_not_applied(store: Arc<dyn Store>) {
    let s = &*store;
    let (w, _) = register(s, 1, "m1", at(0)).await;
    let m1 = machine(s, "m1").await;
    let events = all_events(s, &EventFilter::default()).await;
    let seq = s.last_seq().await.unwrap();

    // Going offline would also take the machine offline, if it applied.
    let (next, write) = write_for(&w, Command::Offline(OfflineReason::Shutdown), at(10));
    for (status, session) in [
        (Status::Offline, 1),
        (Status::Draining, 1),
        (Status::Online, 2),
        (Status::Online, 0),
    ] {
        let res = s
            .commit(vec![with_expect(write.clone(), status, session)])
            .await
            .unwrap();
        assert_eq!(
            res.applied,
            [false],
            "expecting {status} in session {session}"
        );
        assert!(res.events.is_empty());
    }
    assert_eq!(worker(s, &w.id).await, w);
    assert_eq!(machine(s, "m1").await, m1);
    assert_eq!(all_events(s, &EventFilter::default()).await, events);
    assert_eq!(s.last_seq().await.unwrap(), seq);

    // The right expectation applies, once: replaying it no longer matches.
    let res = s.commit(vec![write.clone()]).await.unwrap();
    assert_eq!(res.applied, [true]);
    assert_eq!(
        kinds(&res.events),
        [EventType::WorkerOffline, EventType::MachineOffline]
    );
    assert_eq!(worker(s, &w.id).await, next.clone().unwrap());
    let seq = s.last_seq().await.unwrap();
    let res = s.commit(vec![write]).await.unwrap();
    assert_eq!(res.applied, [false]);
    assert!(res.events.is_empty());
    assert_eq!(s.last_seq().await.unwrap(), seq);
    assert_eq!(worker(s, &w.id).await, next.unwrap());
}

async fn delete_is_conditional_and_forgets(store: Arc<dyn Store>) {
    let s = &*store;
    let (w1, _) = register(s, 1, "m1", at(0)).await;
    let (w2, _) = register(s, 2, "m1", at(0)).await;
    let seq = s.last_seq().await.unwrap();

    let (_, delete) = write_for(&w1, Command::Delete, at(10));
    assert!(matches!(delete, WorkerWrite::Delete { .. }));
    for (status, session) in [
        (Status::Offline, 1),
        (Status::Draining, 1),
        (Status::Online, 2),
    ] {
        let res = s
            .commit(vec![with_expect(delete.clone(), status, session)])
            .await
            .unwrap();
        assert_eq!(res.applied, [false]);
        assert!(res.events.is_empty());
    }
    assert_eq!(worker(s, &w1.id).await, w1);
    assert_eq!(s.last_seq().await.unwrap(), seq);
    assert_eq!(machine(s, "m1").await.workers_total, 2);

    // The right expectation forgets the worker; w2 keeps the machine online.
    let res = s.commit(vec![delete.clone()]).await.unwrap();
    assert_eq!(res.applied, [true]);
    assert_eq!(
        kinds(&res.events),
        [EventType::WorkerOffline, EventType::WorkerDeleted]
    );
    assert_eq!(res.events[0].reason, Some(EventReason::Revoked));
    assert!(res
        .events
        .iter()
        .all(|e| e.worker_id == Some(w1.id.clone())));
    assert_eq!(s.get_worker(&w1.id).await.unwrap(), None);
    let m = machine(s, "m1").await;
    assert_eq!(
        (m.status, m.workers_online, m.workers_total),
        (MachineStatus::Online, 1, 1)
    );

    // Deleting a worker that is gone is not applied.
    let res = s.commit(vec![delete]).await.unwrap();
    assert_eq!(res.applied, [false]);
    assert!(res.events.is_empty());

    // Deleting the last live worker takes the machine offline; the machine
    // itself is kept (forget_empty_machines removes it).
    let (gone, res) = apply(s, &w2, Command::Delete, at(20)).await;
    assert_eq!(gone, None);
    assert_eq!(
        kinds(&res.events),
        [
            EventType::WorkerOffline,
            EventType::WorkerDeleted,
            EventType::MachineOffline
        ]
    );
    let m = machine(s, "m1").await;
    assert_eq!(
        (m.status, m.workers_online, m.workers_total),
        (MachineStatus::Offline, 0, 0)
    );
    assert_eq!(m.status_changed_at, at(20));
    assert!(s.load_workers().await.unwrap().is_empty());
}

async fn a_failing_batch_changes_nothing(store: Arc<dyn Store>) {
    let s = &*store;
    let (w1, _) = register(s, 1, "m1", at(0)).await;
    let (w2, _) = register(s, 2, "m2", at(0)).await;
    let events = all_events(s, &EventFilter::default()).await;

    // A valid write, then one that breaks the uniqueness of token hashes.
    let (_, drain) = write_for(&w1, Command::Drain, at(10));
    let (_, offline) = write_for(&w2, Command::Offline(OfflineReason::Shutdown), at(10));
    let WorkerWrite::Put {
        mut record,
        expect,
        machine: upsert,
        events: e,
    } = offline
    else {
        unreachable!()
    };
    record.token_hash = w1.token_hash;
    let clash = WorkerWrite::Put {
        record,
        expect,
        machine: upsert,
        events: e,
    };
    assert!(s.commit(vec![drain.clone(), clash]).await.is_err());

    // One transaction: the valid write was rolled back with the rest.
    assert_eq!(worker(s, &w1.id).await, w1);
    assert_eq!(worker(s, &w2.id).await, w2);
    assert_eq!(machine(s, "m2").await.status, MachineStatus::Online);
    assert_eq!(all_events(s, &EventFilter::default()).await, events);

    // The store is still usable, and seq still moves forward.
    let res = s.commit(vec![drain]).await.unwrap();
    assert_eq!(res.applied, [true]);
    assert!(res.events[0].seq > events.last().unwrap().seq);
}

async fn conditional_writes_racing_apply_once(store: Arc<dyn Store>) {
    let (w, _) = register(&*store, 1, "m1", at(0)).await;
    let reasons = [
        OfflineReason::Shutdown,
        OfflineReason::Exited,
        OfflineReason::Stale,
    ];
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = store.clone();
        let reason = reasons[i % reasons.len()];
        let (next, write) = write_for(&w, Command::Offline(reason), at(10 + i as i64));
        tasks.push(tokio::spawn(async move {
            let res = store.commit(vec![write]).await.unwrap();
            (next.unwrap(), res)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (next, res) = t.await.unwrap();
        assert_eq!(res.applied.len(), 1);
        if res.applied[0] {
            winners.push((next, res));
        } else {
            assert!(res.events.is_empty());
        }
    }
    assert_eq!(winners.len(), 1, "exactly one racing write applies");
    let (next, res) = winners.pop().unwrap();
    assert_eq!(worker(&*store, &w.id).await, next);
    let all = all_events(&*store, &EventFilter::default()).await;
    assert_eq!(
        kinds(&all),
        [
            EventType::WorkerRegistered,
            EventType::WorkerOnline,
            EventType::MachineOnline,
            EventType::WorkerOffline,
            EventType::MachineOffline
        ]
    );
    assert_eq!(all[3..], res.events[..]);
}

// ===========================================================================
// Event sequence
// ===========================================================================

async fn seq_strictly_increases_in_commit_order(store: Arc<dyn Store>) {
    let s = &*store;
    let mut committed: Vec<EventRecord> = Vec::new();
    let mut last = s.last_seq().await.unwrap();
    for n in 0..6 {
        let (_, res) = register(s, n, if n % 2 == 0 { "even" } else { "odd" }, at(n.into())).await;
        assert_strictly_increasing(&res.events);
        assert!(res.events[0].seq > last, "a later commit has larger seqs");
        last = res.events.last().unwrap().seq;
        assert_eq!(s.last_seq().await.unwrap(), last);
        committed.extend(res.events);
    }
    assert_eq!(all_events(s, &EventFilter::default()).await, committed);

    // Concurrent commits: each commit's seqs form a range that does not
    // interleave with another's, and nothing is lost or duplicated.
    let mut tasks = Vec::new();
    for n in 100..116 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let (w, res) = register(&*store, n, &format!("c{}", n % 4), at(n.into())).await;
            let (_, off) = write_for(&w, Command::Offline(OfflineReason::Shutdown), at(1_000));
            let (_, reg) = register_write(n + 100, &format!("d{n}"), at(1_000));
            let res2 = store.commit(vec![off, reg]).await.unwrap();
            assert_eq!(res2.applied, [true, true]);
            vec![res, res2]
        }));
    }
    let mut results: Vec<CommitResult> = Vec::new();
    for t in tasks {
        results.extend(t.await.unwrap());
    }
    let mut ranges = Vec::new();
    for r in &results {
        assert!(!r.events.is_empty());
        assert_strictly_increasing(&r.events);
        assert!(r.events[0].seq > last);
        ranges.push((r.events[0].seq, r.events.last().unwrap().seq));
    }
    ranges.sort();
    for pair in ranges.windows(2) {
        assert!(pair[0].1 < pair[1].0, "commits interleave: {pair:?}");
    }
    let mut expected: Vec<EventRecord> = committed.clone();
    let mut concurrent: Vec<EventRecord> = results.into_iter().flat_map(|r| r.events).collect();
    concurrent.sort_by_key(|e| e.seq);
    expected.extend(concurrent);
    let stored = all_events(s, &EventFilter::default()).await;
    assert_strictly_increasing(&stored);
    assert_eq!(stored, expected);
    assert_eq!(s.last_seq().await.unwrap(), stored.last().unwrap().seq);
}

async fn seq_is_not_reused_after_pruning_everything(store: Arc<dyn Store>) {
    let s = &*store;
    for n in 0..3 {
        register(s, n, "m1", at(0)).await;
    }
    let before = all_events(s, &EventFilter::default()).await;
    let max = s.last_seq().await.unwrap();
    assert_eq!(max, before.last().unwrap().seq);

    let pruned = s.prune_events(at(1_000_000)).await.unwrap();
    assert_eq!(pruned, before.len() as u64);
    assert!(all_events(s, &EventFilter::default()).await.is_empty());
    assert_eq!(
        s.last_seq().await.unwrap(),
        max,
        "last_seq survives pruning"
    );

    let (_, res) = register(s, 3, "m2", at(2_000_000)).await;
    assert!(
        res.events.iter().all(|e| e.seq > max),
        "seq reused after pruning: {:?} <= {max}",
        res.events.iter().map(|e| e.seq).collect::<Vec<_>>()
    );
    assert_eq!(all_events(s, &EventFilter::default()).await, res.events);
    assert_eq!(s.last_seq().await.unwrap(), res.events.last().unwrap().seq);
    // Reading after the old maximum finds exactly the new events.
    let page = s
        .list_events(&EventFilter::default(), max, 100)
        .await
        .unwrap();
    assert_eq!(page.items, res.events);
}

async fn prune_events_deletes_at_or_before(store: Arc<dyn Store>) {
    let s = &*store;
    let (w, _) = register(s, 1, "m1", at(0)).await; // 3 events at 0
    let (w, _) = step(s, &w, Command::Drain, at(100)).await; // 1 at 100
    let (_, last) = step(s, &w, Command::Offline(OfflineReason::Shutdown), at(200)).await; // 2 at 200
    assert_eq!(s.prune_events(at(-1)).await.unwrap(), 0);
    assert_eq!(s.prune_events(at(100)).await.unwrap(), 4);
    assert_eq!(all_events(s, &EventFilter::default()).await, last.events);
    assert_eq!(s.prune_events(at(199)).await.unwrap(), 0);
    assert_eq!(s.prune_events(at(200)).await.unwrap(), 2);
    assert!(all_events(s, &EventFilter::default()).await.is_empty());
    // Pruning events touches no worker or machine.
    assert_eq!(worker(s, &w.id).await.status, Status::Offline);
    assert_eq!(machine(s, "m1").await.status, MachineStatus::Offline);
}

// ===========================================================================
// Machine status derivation
// ===========================================================================

async fn machine_status_follows_its_live_workers(store: Arc<dyn Store>) {
    let s = &*store;
    let machine_events = |r: &CommitResult| -> Vec<EventRecord> {
        r.events
            .iter()
            .filter(|e| is_machine_event(e))
            .cloned()
            .collect()
    };

    // A bystander machine that must never be affected.
    let (_, r) = register(s, 9, "other", at(0)).await;
    assert_eq!(machine_events(&r).len(), 1);

    let (w1, r) = register(s, 1, "m1", at(0)).await;
    assert_eq!(kinds(&machine_events(&r)), [EventType::MachineOnline]);
    assert_eq!(machine_events(&r)[0].machine_id, mid("m1"));
    let (w2, r) = register(s, 2, "m1", at(10)).await;
    assert!(machine_events(&r).is_empty(), "second worker: no change");

    let (w1, r) = step(s, &w1, Command::Drain, at(20)).await;
    assert!(machine_events(&r).is_empty(), "draining counts as live");
    let m = machine(s, "m1").await;
    assert_eq!((m.status, m.workers_online), (MachineStatus::Online, 2));

    let (w2, r) = step(s, &w2, Command::Offline(OfflineReason::Shutdown), at(30)).await;
    assert!(machine_events(&r).is_empty(), "a draining worker is left");
    let m = machine(s, "m1").await;
    assert_eq!(
        (m.status, m.workers_online, m.workers_total),
        (MachineStatus::Online, 1, 2)
    );
    assert_eq!(m.status_changed_at, at(0));

    let (_w1, r) = step(s, &w1, Command::Expire { session: 1 }, at(40)).await;
    assert_eq!(
        kinds(&r.events),
        [EventType::WorkerOffline, EventType::MachineOffline],
        "the last live worker takes the machine offline"
    );
    let m = machine(s, "m1").await;
    assert_eq!(
        (m.status, m.workers_online, m.workers_total),
        (MachineStatus::Offline, 0, 2)
    );
    assert_eq!(m.status_changed_at, at(40));
    assert_eq!(r.events[1].at, at(40));

    let (_w2, r) = step(s, &w2, Command::Heartbeat, at(50)).await;
    assert_eq!(
        kinds(&r.events),
        [EventType::WorkerOnline, EventType::MachineOnline]
    );
    let m = machine(s, "m1").await;
    assert_eq!(
        (m.status, m.status_changed_at),
        (MachineStatus::Online, at(50))
    );

    // Exactly one machine event per change, alternating.
    let filter = EventFilter {
        machine_id: Some(mid("m1")),
        ..Default::default()
    };
    let m1_events: Vec<_> = all_events(s, &filter)
        .await
        .into_iter()
        .filter(is_machine_event)
        .collect();
    assert_eq!(
        kinds(&m1_events),
        [
            EventType::MachineOnline,
            EventType::MachineOffline,
            EventType::MachineOnline
        ]
    );
    let other = machine(s, "other").await;
    assert_eq!(
        (other.status, other.status_changed_at),
        (MachineStatus::Online, at(0))
    );
    let filter = EventFilter {
        machine_id: Some(mid("other")),
        ..Default::default()
    };
    assert_eq!(all_events(s, &filter).await.len(), 3);
}

async fn machine_events_come_after_the_worker_events_of_a_batch(store: Arc<dyn Store>) {
    let s = &*store;
    let assert_worker_events_first = |r: &CommitResult| {
        let first_machine = r.events.iter().position(is_machine_event);
        if let Some(i) = first_machine {
            assert!(
                r.events[i..].iter().all(is_machine_event),
                "machine events must follow the worker events: {:?}",
                kinds(&r.events)
            );
        }
        assert_strictly_increasing(&r.events);
    };
    let machine_kinds = |r: &CommitResult| -> BTreeMap<String, Vec<EventType>> {
        let mut m: BTreeMap<String, Vec<EventType>> = BTreeMap::new();
        for e in r.events.iter().filter(|e| is_machine_event(e)) {
            m.entry(e.machine_id.to_string()).or_default().push(e.kind);
        }
        m
    };

    // Batch 1: three registrations on two machines.
    let (w1, a) = register_write(1, "m1", at(0));
    let (w2, b) = register_write(2, "m2", at(0));
    let (w3, c) = register_write(3, "m1", at(0));
    let r = s.commit(vec![a, b, c]).await.unwrap();
    assert_eq!(r.applied, [true, true, true]);
    assert_worker_events_first(&r);
    let worker_order: Vec<_> = r
        .events
        .iter()
        .filter_map(|e| e.worker_id.clone())
        .collect();
    assert_eq!(
        worker_order,
        [&w1.id, &w1.id, &w2.id, &w2.id, &w3.id, &w3.id].map(Clone::clone),
        "worker events in the order of the writes"
    );
    assert_eq!(
        machine_kinds(&r),
        BTreeMap::from([
            ("m1".into(), vec![EventType::MachineOnline]),
            ("m2".into(), vec![EventType::MachineOnline]),
        ])
    );
    assert!(r
        .events
        .iter()
        .filter(|e| is_machine_event(e))
        .all(|e| e.at == at(0)));

    // Batch 2: m2 loses its only worker; m1 keeps a draining one.
    let (w1, a) = write_for(&w1, Command::Offline(OfflineReason::Shutdown), at(10));
    let (w2, b) = write_for(&w2, Command::Expire { session: 1 }, at(10));
    let (w3, c) = write_for(&w3, Command::Drain, at(10));
    let (w1, w2, w3) = (w1.unwrap(), w2.unwrap(), w3.unwrap());
    let r = s.commit(vec![a, b, c]).await.unwrap();
    assert_eq!(r.applied, [true, true, true]);
    assert_worker_events_first(&r);
    assert_eq!(r.events.len(), 4);
    assert_eq!(
        machine_kinds(&r),
        BTreeMap::from([("m2".into(), vec![EventType::MachineOffline])])
    );
    assert_eq!(machine(s, "m1").await.status, MachineStatus::Online);
    assert_eq!(machine(s, "m2").await.status, MachineStatus::Offline);

    // Batch 3: on m1 one worker leaves while another comes back: the
    // machine's status is derived from the end of the batch, unchanged.
    let (w3, a) = write_for(&w3, Command::Offline(OfflineReason::Shutdown), at(20));
    let (w1, b) = write_for(&w1, Command::Heartbeat, at(20));
    let (w3, w1) = (w3.unwrap(), w1.unwrap());
    let r = s.commit(vec![a, b]).await.unwrap();
    assert_eq!(r.applied, [true, true]);
    assert_eq!(
        kinds(&r.events),
        [EventType::WorkerOffline, EventType::WorkerOnline]
    );

    // Batch 4: one worker twice in one batch (expiry lost to a resume), and
    // a machine that goes online and back offline within the batch.
    let (w1_off, a) = write_for(&w1, Command::Expire { session: 2 }, at(30));
    let (w1, b) = write_for(&w1_off.unwrap(), Command::Heartbeat, at(30));
    let (w2_on, c) = write_for(&w2, Command::Heartbeat, at(30));
    let (_, d) = write_for(
        &w2_on.unwrap(),
        Command::Offline(OfflineReason::Exited),
        at(30),
    );
    let r = s.commit(vec![a, b, c, d]).await.unwrap();
    assert_eq!(r.applied, [true, true, true, true]);
    assert!(
        machine_kinds(&r).is_empty(),
        "no net change, no machine event: {:?}",
        kinds(&r.events)
    );
    assert_eq!(worker(s, &w1.as_ref().unwrap().id).await.session, 3);
    assert_eq!(machine(s, "m1").await.status, MachineStatus::Online);
    assert_eq!(machine(s, "m2").await.status, MachineStatus::Offline);

    // Batch 5: both machines change, in one commit.
    let (_, a) = write_for(w1.as_ref().unwrap(), Command::Drain, at(40));
    let (_, b) = register_write(4, "m2", at(40));
    let (_, c) = write_for(&w3, Command::Delete, at(40));
    let r = s.commit(vec![a, b, c]).await.unwrap();
    assert_eq!(r.applied, [true, true, true]);
    assert_worker_events_first(&r);
    assert_eq!(
        machine_kinds(&r),
        BTreeMap::from([("m2".into(), vec![EventType::MachineOnline])])
    );
    let (_, a) = write_for(
        &worker(s, &w1.unwrap().id).await,
        Command::Offline(OfflineReason::Shutdown),
        at(50),
    );
    let (_, b) = write_for(&worker(s, &wid(4)).await, Command::Delete, at(50));
    let r = s.commit(vec![a, b]).await.unwrap();
    assert_worker_events_first(&r);
    assert_eq!(
        machine_kinds(&r),
        BTreeMap::from([
            ("m1".into(), vec![EventType::MachineOffline]),
            ("m2".into(), vec![EventType::MachineOffline]),
        ])
    );
    assert_eq!(
        &kinds(&r.events)[..3],
        [
            EventType::WorkerOffline,
            EventType::WorkerOffline,
            EventType::WorkerDeleted
        ]
    );
}

async fn machine_upsert_merges_details(store: Arc<dyn Store>) {
    let s = &*store;
    let upsert = |n: u32, hostname: Option<&str>, l: Option<&[(&str, &str)]>, seen: i64| {
        let (_, write) = register_write(n, "m1", at(seen));
        let WorkerWrite::Put { record, events, .. } = write else {
            unreachable!()
        };
        WorkerWrite::Put {
            record,
            expect: None,
            machine: Some(MachineUpsert {
                id: mid("m1"),
                hostname: hostname.map(str::to_owned),
                labels: l.map(labels),
                seen_at: at(seen),
            }),
            events,
        }
    };
    s.commit(vec![upsert(1, Some("h1"), Some(&[("a", "1")]), 100)])
        .await
        .unwrap();
    let m = machine(s, "m1").await;
    assert_eq!(m.hostname.as_deref(), Some("h1"));
    assert_eq!(m.labels, labels(&[("a", "1")]));
    assert_eq!((m.first_seen_at, m.last_seen_at), (at(100), at(100)));

    // Absent details are kept; last_seen_at moves forward.
    s.commit(vec![upsert(2, None, None, 200)]).await.unwrap();
    let m = machine(s, "m1").await;
    assert_eq!(m.hostname.as_deref(), Some("h1"));
    assert_eq!(m.labels, labels(&[("a", "1")]));
    assert_eq!((m.first_seen_at, m.last_seen_at), (at(100), at(200)));

    // Given details replace (even with no labels); last_seen_at never goes back.
    s.commit(vec![upsert(3, Some("h2"), Some(&[]), 150)])
        .await
        .unwrap();
    let m = machine(s, "m1").await;
    assert_eq!(m.hostname.as_deref(), Some("h2"));
    assert!(m.labels.is_empty());
    assert_eq!((m.first_seen_at, m.last_seen_at), (at(100), at(200)));
    assert_eq!((m.workers_online, m.workers_total), (3, 3));
    assert_eq!(m.status_changed_at, at(100));
}

async fn reregistration_replaces_the_session(store: Arc<dyn Store>) {
    let s = &*store;
    let (w, _) = register(s, 1, "m1", at(0)).await;
    let old_hash = w.token_hash;
    let (w2, r) = step(s, &w, Command::Register, at(100)).await;
    assert_eq!(
        kinds(&r.events),
        [
            EventType::WorkerOffline,
            EventType::WorkerRegistered,
            EventType::WorkerOnline
        ],
        "the machine stays online: no machine event"
    );
    assert_eq!(r.events[0].reason, Some(EventReason::Replaced));
    assert_eq!(
        r.events.iter().map(|e| e.session).collect::<Vec<_>>(),
        [Some(1), Some(2), Some(2)]
    );
    let stored = worker(s, &w.id).await;
    assert_eq!(stored, w2);
    assert_eq!((stored.session, stored.status), (2, Status::Online));
    assert_ne!(stored.token_hash, old_hash, "the token is rotated");
    assert!(s
        .load_workers()
        .await
        .unwrap()
        .iter()
        .all(|w| w.token_hash != old_hash));
    assert_eq!(machine(s, "m1").await.last_seen_at, at(100));
}

async fn stale_then_resume_records_both_transitions(store: Arc<dyn Store>) {
    let s = &*store;
    let (w, _) = register(s, 1, "m1", at(0)).await;
    // The deadline is registered_at + stale_after; detected 37 ms late.
    let late = at(0).plus(w.stale_after).plus(Duration::from_millis(37));
    let (w, stale) = step(s, &w, Command::Expire { session: 1 }, late).await;
    assert_eq!(
        kinds(&stale.events),
        [EventType::WorkerOffline, EventType::MachineOffline]
    );
    assert_eq!(stale.events[0].reason, Some(EventReason::Stale));
    assert_eq!(stale.events[0].detection_lag_ms, Some(37));
    assert_eq!(stale.events[0].session, Some(1));
    let stored = worker(s, &w.id).await;
    assert_eq!(
        (
            stored.status,
            stored.offline_reason,
            stored.status_changed_at
        ),
        (Status::Offline, Some(OfflineReason::Stale), late)
    );

    let back = late.plus(Duration::from_secs(5));
    let (w, r) = step(s, &w, Command::Heartbeat, back).await;
    assert_eq!(
        kinds(&r.events),
        [EventType::WorkerOnline, EventType::MachineOnline]
    );
    assert_eq!(r.events[0].reason, Some(EventReason::Heartbeat));
    assert_eq!(r.events[0].session, Some(2));
    assert_eq!(worker(s, &w.id).await, w);
    assert_eq!(w.last_heartbeat_at, Some(back));
    // The stored events are the ones commit returned.
    let listed = all_events(s, &EventFilter::default()).await;
    let mut expected = stale.events;
    expected.extend(r.events);
    assert_eq!(listed[listed.len() - 4..], expected[..]);
}

async fn reconcile_on_a_consistent_store_records_nothing(store: Arc<dyn Store>) {
    let s = &*store;
    let (w1, _) = register(s, 1, "m1", at(0)).await;
    register(s, 2, "m2", at(0)).await;
    step(s, &w1, Command::Offline(OfflineReason::Shutdown), at(10)).await;
    let events = all_events(s, &EventFilter::default()).await;
    let machines = s.list_machines(None, None, 100).await.unwrap().items;
    assert!(s.reconcile_machines(at(20)).await.unwrap().is_empty());
    assert_eq!(all_events(s, &EventFilter::default()).await, events);
    assert_eq!(
        s.list_machines(None, None, 100).await.unwrap().items,
        machines
    );
}

// ===========================================================================
// Heartbeats written behind
// ===========================================================================

fn mark(w: &WorkerRecord, session: u64, t: i64) -> HeartbeatMark {
    HeartbeatMark {
        worker_id: w.id.clone(),
        machine_id: w.machine_id.clone(),
        session,
        at: at(t),
    }
}

async fn flush_heartbeats_moves_forward_within_the_session(store: Arc<dyn Store>) {
    let s = &*store;
    let (w1, _) = register(s, 1, "m1", at(0)).await;
    let (w2, _) = register(s, 2, "m2", at(0)).await;
    let seq = s.last_seq().await.unwrap();
    let hb = |w: WorkerRecord| async move { worker(s, &w.id).await.last_heartbeat_at };

    s.flush_heartbeats(&[mark(&w1, 1, 100), mark(&w2, 1, 150)])
        .await
        .unwrap();
    assert_eq!(hb(w1.clone()).await, Some(at(100)));
    assert_eq!(hb(w2.clone()).await, Some(at(150)));
    assert_eq!(machine(s, "m1").await.last_seen_at, at(100));
    assert_eq!(machine(s, "m2").await.last_seen_at, at(150));

    // An older mark moves nothing back, on the worker or the machine.
    s.flush_heartbeats(&[mark(&w1, 1, 50)]).await.unwrap();
    assert_eq!(hb(w1.clone()).await, Some(at(100)));
    assert_eq!(machine(s, "m1").await.last_seen_at, at(100));

    // Within a batch the order of marks does not matter: the latest wins.
    s.flush_heartbeats(&[mark(&w1, 1, 90), mark(&w1, 1, 300), mark(&w1, 1, 200)])
        .await
        .unwrap();
    assert_eq!(hb(w1.clone()).await, Some(at(300)));
    assert_eq!(machine(s, "m1").await.last_seen_at, at(300));

    // Marks of another session are ignored, machine included.
    s.flush_heartbeats(&[mark(&w1, 2, 1_000), mark(&w1, 0, 1_000)])
        .await
        .unwrap();
    assert_eq!(hb(w1.clone()).await, Some(at(300)));
    assert_eq!(machine(s, "m1").await.last_seen_at, at(300));

    // A mark of a worker that does not exist is harmless.
    let mut ghost = w1.clone();
    ghost.id = wid(99);
    s.flush_heartbeats(&[mark(&ghost, 1, 2_000), mark(&w2, 1, 400)])
        .await
        .unwrap();
    assert_eq!(s.get_worker(&ghost.id).await.unwrap(), None);
    assert_eq!(hb(w2.clone()).await, Some(at(400)));

    // Heartbeats change no status and record nothing.
    assert_eq!(s.last_seq().await.unwrap(), seq);
    let stored = worker(s, &w1.id).await;
    assert_eq!(stored.state(), w1.state());
    let m = machine(s, "m1").await;
    assert_eq!(
        (m.status, m.status_changed_at),
        (MachineStatus::Online, at(0))
    );
}

async fn flush_heartbeats_ignores_marks_of_an_ended_session(store: Arc<dyn Store>) {
    let s = &*store;
    let (w, _) = register(s, 1, "m1", at(0)).await;
    s.flush_heartbeats(&[mark(&w, 1, 100)]).await.unwrap();
    let w = worker(s, &w.id).await;
    let (w, _) = step(s, &w, Command::Expire { session: 1 }, at(90_200)).await;
    // A mark of session 1 that was still in flight is fine while the
    // worker is offline in session 1 (it was measured in that session).
    s.flush_heartbeats(&[mark(&w, 1, 150)]).await.unwrap();
    assert_eq!(worker(s, &w.id).await.last_heartbeat_at, Some(at(150)));

    let (w, _) = step(s, &w, Command::Heartbeat, at(100_000)).await;
    assert_eq!(w.session, 2);
    let seen = machine(s, "m1").await.last_seen_at;
    // Session 1 has ended: its marks no longer apply, even later ones.
    s.flush_heartbeats(&[mark(&w, 1, 200_000)]).await.unwrap();
    assert_eq!(worker(s, &w.id).await.last_heartbeat_at, Some(at(100_000)));
    assert_eq!(machine(s, "m1").await.last_seen_at, seen);
    s.flush_heartbeats(&[mark(&w, 2, 200_000)]).await.unwrap();
    assert_eq!(worker(s, &w.id).await.last_heartbeat_at, Some(at(200_000)));
    assert_eq!(machine(s, "m1").await.last_seen_at, at(200_000));
}

async fn put_does_not_move_last_heartbeat_back_within_a_session(store: Arc<dyn Store>) {
    let s = &*store;
    let (w, _) = register(s, 1, "m1", at(0)).await;
    s.flush_heartbeats(&[mark(&w, 1, 500)]).await.unwrap();
    // `w` was read before the flush: its last_heartbeat_at is older.
    assert_eq!(w.last_heartbeat_at, None);
    let (_, drain) = write_for(&w, Command::Drain, at(600));
    assert_eq!(s.commit(vec![drain]).await.unwrap().applied, [true]);
    let stored = worker(s, &w.id).await;
    assert_eq!(stored.status, Status::Draining);
    assert_eq!(stored.last_heartbeat_at, Some(at(500)));

    let mut older = stored.clone();
    older.last_heartbeat_at = Some(at(400));
    let (_, off) = write_for(&older, Command::Offline(OfflineReason::Shutdown), at(700));
    assert_eq!(s.commit(vec![off]).await.unwrap().applied, [true]);
    assert_eq!(worker(s, &w.id).await.last_heartbeat_at, Some(at(500)));

    // A later time in the same session is taken.
    let mut newer = worker(s, &w.id).await;
    newer.last_heartbeat_at = Some(at(800));
    newer.labels = labels(&[("k", "v")]);
    let write = WorkerWrite::Put {
        record: newer.clone(),
        expect: Some(rollcall_store::Expect {
            status: Status::Offline,
            session: 1,
        }),
        machine: None,
        events: vec![],
    };
    assert_eq!(s.commit(vec![write]).await.unwrap().applied, [true]);
    assert_eq!(worker(s, &w.id).await, newer);

    // A new session starts from the time it brings (none, on registration).
    let (w, _) = step(s, &newer, Command::Register, at(900)).await;
    assert_eq!(worker(s, &w.id).await.last_heartbeat_at, None);
    assert_eq!(worker(s, &w.id).await, w);
}

// ===========================================================================
// Reads
// ===========================================================================

async fn get_machine_counts_workers(store: Arc<dyn Store>) {
    let s = &*store;
    let (_w1, _) = register(s, 1, "m1", at(0)).await;
    let (w2, _) = register(s, 2, "m1", at(0)).await;
    let (w3, _) = register(s, 3, "m1", at(0)).await;
    let (w4, _) = register(s, 4, "m1", at(0)).await;
    register(s, 5, "m2", at(0)).await;
    step(s, &w2, Command::Drain, at(10)).await;
    step(s, &w3, Command::Offline(OfflineReason::Exited), at(10)).await;
    apply(s, &w4, Command::Delete, at(10)).await;

    let m1 = machine(s, "m1").await;
    assert_eq!(m1.status, MachineStatus::Online);
    assert_eq!(
        (m1.workers_online, m1.workers_total),
        (2, 3),
        "online + draining of 3 workers"
    );
    let m2 = machine(s, "m2").await;
    assert_eq!((m2.workers_online, m2.workers_total), (1, 1));
    // Listing gives the same records as getting.
    assert_eq!(
        s.list_machines(None, None, 10).await.unwrap().items,
        [m1, m2]
    );
}

/// Asserts that paging with `limit` went through `expected` in order with
/// no gap and no overlap, `more` true on every page but the last.
fn check_pages<K: PartialEq + std::fmt::Debug>(
    pages: &[(Vec<K>, bool)],
    limit: usize,
    expected: &[K],
) {
    let n = expected.len();
    let want_pages = n.div_ceil(limit).max(1);
    assert_eq!(
        pages.len(),
        want_pages,
        "page count for {n} items by {limit}"
    );
    for (i, (items, more)) in pages.iter().enumerate() {
        let last = i + 1 == pages.len();
        assert_eq!(*more, !last, "`more` on page {i}");
        let want = if last { n - limit * i } else { limit };
        assert_eq!(items.len(), want, "size of page {i}");
    }
    let flat: Vec<&K> = pages.iter().flat_map(|(items, _)| items).collect();
    assert_eq!(flat, expected.iter().collect::<Vec<_>>());
}

async fn worker_pages(
    s: &dyn Store,
    filter: &WorkerFilter,
    limit: usize,
) -> Vec<(Vec<WorkerRecord>, bool)> {
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = s.list_workers(filter, after.as_ref(), limit).await.unwrap();
        after = page.items.last().map(|w| w.id.clone());
        let more = page.more;
        pages.push((page.items, more));
        if !more {
            return pages;
        }
        assert!(pages.len() < 1_000, "paging does not end");
    }
}

async fn list_workers_pages_and_filters(store: Arc<dyn Store>) {
    let s = &*store;
    // 25 workers on 3 machines, registered out of id order.
    let writes: Vec<_> = (0..25u32)
        .rev()
        .map(|n| register_write(n, &format!("m{}", n % 3), at(0)))
        .collect();
    let mut all: Vec<WorkerRecord> = writes.iter().map(|(r, _)| r.clone()).collect();
    let res = s
        .commit(writes.into_iter().map(|(_, w)| w).collect())
        .await
        .unwrap();
    assert_eq!(res.applied, [true; 25]);
    // Some drain, some go offline.
    let mut changes = Vec::new();
    for (i, rec) in all.iter_mut().enumerate() {
        let cmd = match i % 4 {
            1 => Command::Drain,
            2 => Command::Offline(OfflineReason::Shutdown),
            _ => continue,
        };
        let (next, w) = write_for(rec, cmd, at(10));
        *rec = next.unwrap();
        changes.push(w);
    }
    assert!(s.commit(changes).await.unwrap().applied.iter().all(|a| *a));
    all.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(all.len(), 25);

    for limit in [7, 5, 1, 24, 25, 26, usize::MAX] {
        let pages = worker_pages(s, &WorkerFilter::default(), limit).await;
        check_pages(&pages, limit, &all);
    }

    let by = |status: Option<Status>, machine: Option<&str>| -> Vec<WorkerRecord> {
        all.iter()
            .filter(|w| status.is_none_or(|st| w.status == st))
            .filter(|w| machine.is_none_or(|m| w.machine_id.as_str() == m))
            .cloned()
            .collect()
    };
    for status in [Status::Online, Status::Draining, Status::Offline] {
        for machine in [None, Some("m0"), Some("m1"), Some("m2"), Some("nowhere")] {
            let filter = WorkerFilter {
                status: Some(status),
                machine_id: machine.map(mid),
            };
            let expected = by(Some(status), machine);
            if machine != Some("nowhere") {
                assert!(
                    !expected.is_empty(),
                    "the test covers {status} on {machine:?}"
                );
            }
            check_pages(&worker_pages(s, &filter, 2).await, 2, &expected);
        }
    }
    for machine in ["m0", "m1", "m2"] {
        let filter = WorkerFilter {
            status: None,
            machine_id: Some(mid(machine)),
        };
        check_pages(
            &worker_pages(s, &filter, 3).await,
            3,
            &by(None, Some(machine)),
        );
    }
    // load_workers gives everyone, in any order.
    let mut loaded = s.load_workers().await.unwrap();
    loaded.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(loaded, all);
}

async fn list_machines_pages_and_filters(store: Arc<dyn Store>) {
    let s = &*store;
    // 25 machines with one worker each; every third one goes offline.
    let writes: Vec<_> = (0..25u32)
        .rev()
        .map(|n| register_write(n, &format!("m{n:02}"), at(0)))
        .collect();
    let records: Vec<WorkerRecord> = writes.iter().map(|(r, _)| r.clone()).collect();
    s.commit(writes.into_iter().map(|(_, w)| w).collect())
        .await
        .unwrap();
    let offline: Vec<_> = records
        .iter()
        .filter(|r| {
            r.machine_id.as_str()[1..]
                .parse::<u32>()
                .unwrap()
                .is_multiple_of(3)
        })
        .map(|r| write_for(r, Command::Offline(OfflineReason::Shutdown), at(10)).1)
        .collect();
    s.commit(offline).await.unwrap();

    let mut ids: Vec<String> = (0..25).map(|n| format!("m{n:02}")).collect();
    ids.sort();
    for limit in [7, 5, 25, 26, usize::MAX] {
        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let page = s.list_machines(None, after.as_ref(), limit).await.unwrap();
            after = page.items.last().map(|m| m.id.clone());
            for m in &page.items {
                let n: u32 = m.id.as_str()[1..].parse().unwrap();
                let live = !n.is_multiple_of(3);
                assert_eq!(m.status == MachineStatus::Online, live);
                assert_eq!((m.workers_online, m.workers_total), (u64::from(live), 1));
            }
            let more = page.more;
            pages.push((
                page.items.into_iter().map(|m| m.id.to_string()).collect(),
                more,
            ));
            if !more {
                break;
            }
        }
        check_pages(&pages, limit, &ids);
    }

    for status in [MachineStatus::Online, MachineStatus::Offline] {
        let expected: Vec<String> = ids
            .iter()
            .filter(|id| {
                let n: u32 = id[1..].parse().unwrap();
                n.is_multiple_of(3) == (status == MachineStatus::Offline)
            })
            .cloned()
            .collect();
        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let page = s
                .list_machines(Some(status), after.as_ref(), 4)
                .await
                .unwrap();
            assert!(page.items.iter().all(|m| m.status == status));
            after = page.items.last().map(|m| m.id.clone());
            let more = page.more;
            pages.push((
                page.items.into_iter().map(|m| m.id.to_string()).collect(),
                more,
            ));
            if !more {
                break;
            }
        }
        check_pages(&pages, 4, &expected);
    }
}

async fn event_pages(
    s: &dyn Store,
    filter: &EventFilter,
    limit: usize,
) -> Vec<(Vec<EventRecord>, bool)> {
    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let page = s.list_events(filter, after, limit).await.unwrap();
        if let Some(e) = page.items.last() {
            after = e.seq;
        }
        let more = page.more;
        pages.push((page.items, more));
        if !more {
            return pages;
        }
        assert!(pages.len() < 1_000, "paging does not end");
    }
}

async fn list_events_pages_and_filters(store: Arc<dyn Store>) {
    let s = &*store;
    let mut workers = Vec::new();
    for n in 0..6u32 {
        let (w, _) = register(s, n, &format!("m{}", n % 2), at(n.into())).await;
        workers.push(w);
    }
    for (i, w) in workers.iter().enumerate() {
        let (w, _) = step(s, w, Command::Drain, at(100)).await;
        if i % 2 == 0 {
            let (w, _) = step(s, &w, Command::Expire { session: 1 }, at(200)).await;
            step(s, &w, Command::Heartbeat, at(300)).await;
        }
    }
    let all = all_events(s, &EventFilter::default()).await;
    assert!(all.len() >= 25, "enough events to page: {}", all.len());
    assert_strictly_increasing(&all);

    for limit in [7, 5, 1, all.len(), all.len() + 1, usize::MAX] {
        check_pages(
            &event_pages(s, &EventFilter::default(), limit).await,
            limit,
            &all,
        );
    }
    // `after` is exclusive and may point at any seq.
    let mid_seq = all[10].seq;
    let page = s
        .list_events(&EventFilter::default(), mid_seq, 3)
        .await
        .unwrap();
    assert_eq!(page.items, all[11..14]);
    assert!(page.more);
    let page = s
        .list_events(&EventFilter::default(), all.last().unwrap().seq, 3)
        .await
        .unwrap();
    assert!(page.items.is_empty() && !page.more);

    let mut filters = vec![];
    for w in &workers {
        filters.push(EventFilter {
            worker_id: Some(w.id.clone()),
            ..Default::default()
        });
    }
    for m in ["m0", "m1", "elsewhere"] {
        filters.push(EventFilter {
            machine_id: Some(mid(m)),
            ..Default::default()
        });
        filters.push(EventFilter {
            machine_id: Some(mid(m)),
            kind: Some(EventType::MachineOnline),
            ..Default::default()
        });
    }
    for kind in EventType::ALL {
        filters.push(EventFilter {
            kind: Some(*kind),
            ..Default::default()
        });
    }
    filters.push(EventFilter {
        worker_id: Some(workers[2].id.clone()),
        machine_id: Some(mid("m0")),
        kind: Some(EventType::WorkerOnline),
    });
    filters.push(EventFilter {
        worker_id: Some(workers[2].id.clone()),
        machine_id: Some(mid("m1")),
        kind: None,
    });
    for filter in &filters {
        let expected: Vec<EventRecord> = all
            .iter()
            .filter(|e| filter.worker_id.is_none() || e.worker_id == filter.worker_id)
            .filter(|e| {
                filter
                    .machine_id
                    .as_ref()
                    .is_none_or(|m| &e.machine_id == m)
            })
            .filter(|e| filter.kind.is_none_or(|k| e.kind == k))
            .cloned()
            .collect();
        check_pages(&event_pages(s, filter, 3).await, 3, &expected);
    }
    // The filters do select something.
    let machine_m0 = EventFilter {
        machine_id: Some(mid("m0")),
        ..Default::default()
    };
    let m0 = all_events(s, &machine_m0).await;
    assert!(
        m0.iter().any(|e| e.worker_id.is_none()),
        "machine events too"
    );
    assert!(m0.iter().any(|e| e.worker_id.is_some()));
    let stale = all_events(
        s,
        &EventFilter {
            kind: Some(EventType::WorkerOffline),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(stale.len(), 3);
}

// ===========================================================================
// Tokens
// ===========================================================================

async fn tokens_insert_list_all_delete(store: Arc<dyn Store>) {
    let s = &*store;
    let kinds = [TokenKind::Admin, TokenKind::Enroll, TokenKind::Read];
    let mut tokens: Vec<_> = (0..25u32)
        .map(|n| {
            let expires = (n % 2 == 0).then(|| at(1_000 + i64::from(n)));
            token(n, kinds[n as usize % 3], expires)
        })
        .collect();
    for t in tokens.iter().rev() {
        s.insert_token(t).await.unwrap();
    }
    tokens.sort_by(|a, b| a.id.cmp(&b.id));

    for limit in [7, 5, 25, 26, usize::MAX] {
        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let page = s.list_tokens(after.as_ref(), limit).await.unwrap();
            after = page.items.last().map(|t| t.id.clone());
            let more = page.more;
            pages.push((page.items, more));
            if !more {
                break;
            }
        }
        check_pages(&pages, limit, &tokens);
    }
    let mut all = s.all_tokens().await.unwrap();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(all, tokens);

    // Ids and hashes are unique.
    let mut same_id = token(100, TokenKind::Read, None);
    same_id.id = tokens[3].id.clone();
    assert!(s.insert_token(&same_id).await.is_err());
    let mut same_hash = token(101, TokenKind::Read, None);
    same_hash.hash = tokens[4].hash;
    assert!(s.insert_token(&same_hash).await.is_err());
    assert_eq!(s.all_tokens().await.unwrap().len(), 25);

    assert!(s.delete_token(&tokens[3].id).await.unwrap());
    assert!(!s.delete_token(&tokens[3].id).await.unwrap());
    assert!(!s.delete_token(&tid(999)).await.unwrap());
    let left = s.list_tokens(None, 100).await.unwrap();
    assert_eq!(left.items.len(), 24);
    assert!(!left.items.iter().any(|t| t.id == tokens[3].id));
    assert_eq!(s.all_tokens().await.unwrap().len(), 24);
}

async fn token_scopes_round_trip(store: Arc<dyn Store>) {
    let s = &*store;
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let scopes = [
        None,
        Some(
            TokenScope::parse_input(
                Some(vec!["gpu-*".into(), "render.example:7".into(), "*".into()]),
                labels(&[("pool", "gpu"), ("zone", "eu-west \u{2603} \"quoted\"")]),
            )
            .unwrap(),
        ),
        Some(TokenScope::parse_input(Some(vec!["rack*-a*".into()]), labels(&[])).unwrap()),
        Some(TokenScope::parse_input(None, labels(&[("team", "")])).unwrap()),
    ];
    let mut tokens = Vec::new();
    for (n, scope) in scopes.iter().enumerate() {
        let mut t = token(n as u32 + 1, TokenKind::Enroll, None);
        t.scope = scope.clone();
        s.insert_token(&t).await.unwrap();
        tokens.push(t);
    }
    let listed = s.list_tokens(None, 100).await.unwrap();
    assert_eq!(listed.items, tokens);
    let mut all = s.all_tokens().await.unwrap();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(all, tokens);
    assert_eq!(
        all[2].scope.as_ref().unwrap().machines(),
        Some(&["rack*-a*".to_owned()][..])
    );
    assert!(all[3].scope.as_ref().unwrap().machines().is_none());

    // Writing behind a token's use keeps its scope.
    s.touch_tokens(&[(tokens[1].id.clone(), at(500))])
        .await
        .unwrap();
    let touched = s
        .all_tokens()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.id == tokens[1].id)
        .unwrap();
    assert_eq!(touched.last_used_at, Some(at(500)));
    assert_eq!(touched.scope, tokens[1].scope);
}

async fn touch_tokens_moves_last_used_forward(store: Arc<dyn Store>) {
    let s = &*store;
    let t1 = token(1, TokenKind::Admin, None);
    let t2 = token(2, TokenKind::Read, None);
    s.insert_token(&t1).await.unwrap();
    s.insert_token(&t2).await.unwrap();
    let used = |id: rollcall_core::TokenId| async move {
        s.all_tokens()
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.id == id)
            .unwrap()
            .last_used_at
    };
    assert_eq!(used(t1.id.clone()).await, None);

    s.touch_tokens(&[(t1.id.clone(), at(100)), (t2.id.clone(), at(200))])
        .await
        .unwrap();
    assert_eq!(used(t1.id.clone()).await, Some(at(100)));
    assert_eq!(used(t2.id.clone()).await, Some(at(200)));

    s.touch_tokens(&[(t1.id.clone(), at(50))]).await.unwrap();
    assert_eq!(
        used(t1.id.clone()).await,
        Some(at(100)),
        "written behind: never back"
    );

    s.touch_tokens(&[
        (t1.id.clone(), at(300)),
        (t1.id.clone(), at(250)),
        (tid(999), at(300)),
    ])
    .await
    .unwrap();
    assert_eq!(used(t1.id.clone()).await, Some(at(300)));
    assert_eq!(used(t2.id.clone()).await, Some(at(200)));
    // Nothing else about the token changes.
    let stored = s.list_tokens(None, 10).await.unwrap().items;
    assert_eq!(stored[0], {
        let mut t = t1.clone();
        t.last_used_at = Some(at(300));
        t
    });
    assert_eq!(stored.len(), 2);
}

async fn delete_expired_tokens_deletes_at_or_before_now(store: Arc<dyn Store>) {
    let s = &*store;
    let a = token(1, TokenKind::Admin, Some(at(99)));
    let b = token(2, TokenKind::Enroll, Some(at(100)));
    let c = token(3, TokenKind::Read, Some(at(101)));
    let d = token(4, TokenKind::Read, None);
    for t in [&a, &b, &c, &d] {
        s.insert_token(t).await.unwrap();
    }
    let set = |v: Vec<rollcall_core::TokenId>| v.into_iter().collect::<BTreeSet<_>>();
    assert!(s.delete_expired_tokens(at(98)).await.unwrap().is_empty());
    assert_eq!(
        set(s.delete_expired_tokens(at(100)).await.unwrap()),
        set(vec![a.id.clone(), b.id.clone()])
    );
    assert!(s.delete_expired_tokens(at(100)).await.unwrap().is_empty());
    let left: BTreeSet<_> = s
        .all_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(left, set(vec![c.id.clone(), d.id.clone()]));
    assert_eq!(
        s.delete_expired_tokens(at(1_000_000_000)).await.unwrap(),
        std::slice::from_ref(&c.id)
    );
    assert_eq!(s.all_tokens().await.unwrap(), [d]);
}

// ===========================================================================
// Cleanup
// ===========================================================================

async fn offline_workers_since_lists_long_offline_workers(store: Arc<dyn Store>) {
    let s = &*store;
    let mut offline = Vec::new();
    for (n, t) in [(1, 100), (2, 200), (3, 300)] {
        let (w, _) = register(s, n, "m1", at(0)).await;
        let (w, _) = step(s, &w, Command::Offline(OfflineReason::Shutdown), at(t)).await;
        offline.push(w);
    }
    let (_online, _) = register(s, 4, "m1", at(0)).await;
    let (w5, _) = register(s, 5, "m2", at(0)).await;
    step(s, &w5, Command::Drain, at(50)).await;

    let ids = |v: Vec<WorkerRecord>| v.into_iter().map(|w| w.id).collect::<BTreeSet<_>>();
    assert!(s.offline_workers_since(at(99)).await.unwrap().is_empty());
    let mut got = s.offline_workers_since(at(200)).await.unwrap();
    got.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(got, offline[..2], "at or before, full records");
    assert_eq!(
        ids(s.offline_workers_since(at(1_000)).await.unwrap()),
        ids(offline.clone())
    );

    // A worker that came back is not offline any more.
    step(s, &offline[0], Command::Heartbeat, at(400)).await;
    assert_eq!(
        ids(s.offline_workers_since(at(1_000)).await.unwrap()),
        ids(offline[1..].to_vec())
    );
}

async fn forget_empty_machines_keeps_machines_with_workers(store: Arc<dyn Store>) {
    let s = &*store;
    register(s, 1, "m1", at(0)).await;
    let (w2, _) = register(s, 2, "m2", at(0)).await;
    step(s, &w2, Command::Offline(OfflineReason::Shutdown), at(10)).await;
    let (w3, _) = register(s, 3, "m3", at(0)).await;
    apply(s, &w3, Command::Delete, at(10)).await;
    let (w4, _) = register(s, 4, "m4", at(0)).await;
    let (w4, _) = step(s, &w4, Command::Offline(OfflineReason::Exited), at(10)).await;
    apply(s, &w4, Command::Delete, at(20)).await;
    let seq = s.last_seq().await.unwrap();

    assert_eq!(s.forget_empty_machines().await.unwrap(), 2);
    assert_eq!(s.get_machine(&mid("m3")).await.unwrap(), None);
    assert_eq!(s.get_machine(&mid("m4")).await.unwrap(), None);
    assert_eq!(machine(s, "m1").await.status, MachineStatus::Online);
    assert_eq!(machine(s, "m2").await.status, MachineStatus::Offline);
    let left: Vec<_> = s
        .list_machines(None, None, 10)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|m| m.id.to_string())
        .collect();
    assert_eq!(left, ["m1", "m2"]);
    // The forgotten machines' history ends (at the time they were
    // forgotten); the others' open spans stay open.
    let spans = s
        .health_spans(
            SpansOf::Machines(&[mid("m1"), mid("m2"), mid("m3"), mid("m4")]),
            window(0, i64::MAX / 2),
        )
        .await
        .unwrap();
    for sp in spans.iter().filter(|sp| sp.worker_id.is_none()) {
        let forgotten = ["m3", "m4"].contains(&sp.machine_id.as_str());
        if sp.span.end.is_none() {
            assert!(!forgotten, "{sp:?}");
        }
    }
    assert!(spans.iter().any(|sp| sp.worker_id.is_none()
        && sp.machine_id.as_str() == "m2"
        && sp.span.end.is_none()));
    assert_eq!(s.forget_empty_machines().await.unwrap(), 0);
    assert_eq!(
        s.last_seq().await.unwrap(),
        seq,
        "forgetting records nothing"
    );

    // A forgotten machine comes back with its next worker.
    register(s, 5, "m3", at(100)).await;
    let m3 = machine(s, "m3").await;
    assert_eq!(
        (m3.status, m3.first_seen_at),
        (MachineStatus::Online, at(100))
    );
}

// ===========================================================================
// Health history
// ===========================================================================

fn window(from: i64, to: i64) -> Window {
    Window::new(at(from), at(to)).unwrap()
}

/// (worker?, start, end, live, cause) of a span.
type SpanTuple = (
    bool,
    i64,
    Option<i64>,
    bool,
    Option<(OfflineClass, Option<CrashKind>)>,
);

/// (worker?, start, end, live, cause) of every span, in start order.
fn span_list(spans: &[HealthSpan]) -> Vec<SpanTuple> {
    spans
        .iter()
        .map(|s| {
            (
                s.worker_id.is_some(),
                s.span.start.diff_ms(at(0)),
                s.span.end.map(|e| e.diff_ms(at(0))),
                s.span.live,
                s.span.cause,
            )
        })
        .collect()
}

fn fleet_query(from: i64, to: i64, top: u32) -> FleetQuery {
    FleetQuery {
        window: window(from, to),
        no_data_before_from: 0,
        no_data_before_to: 0,
        top,
        labels: vec![],
    }
}

async fn health_spans_follow_every_commit(store: Arc<dyn Store>) {
    let s = &*store;
    let (w, _) = register(s, 1, "m1", at(1_000)).await;
    let (w, _) = step(s, &w, Command::Expire { session: 1 }, at(5_000)).await;
    let (w, _) = step(s, &w, Command::Heartbeat, at(6_000)).await;
    let (w, _) = step(s, &w, Command::Drain, at(7_000)).await;
    let (w, _) = step(s, &w, Command::Offline(OfflineReason::Shutdown), at(8_000)).await;
    let crash = Some((OfflineClass::Crash, Some(CrashKind::Stale)));
    let graceful = Some((OfflineClass::Graceful, None));
    let spans = s
        .health_spans(
            SpansOf::Workers(std::slice::from_ref(&w.id)),
            window(0, 10_000),
        )
        .await
        .unwrap();
    assert_eq!(
        span_list(&spans),
        vec![
            (true, 1_000, Some(5_000), true, None),
            (true, 5_000, Some(6_000), false, crash),
            // Draining is live: no new span.
            (true, 6_000, Some(8_000), true, None),
            (true, 8_000, None, false, graceful),
        ]
    );
    assert_eq!(spans[0].name.as_ref().map(|n| n.as_str()), Some("worker-1"));
    let machine = s
        .health_spans(SpansOf::Machines(&[mid("m1")]), window(0, 10_000))
        .await
        .unwrap();
    let own: Vec<_> = span_list(&machine).into_iter().filter(|s| !s.0).collect();
    assert_eq!(
        own,
        vec![
            (false, 1_000, Some(5_000), true, None),
            (false, 5_000, Some(6_000), false, None),
            (false, 6_000, Some(8_000), true, None),
            (false, 8_000, None, false, None),
        ]
    );
    // A window selects what overlaps it.
    let later = s
        .health_spans(
            SpansOf::Workers(std::slice::from_ref(&w.id)),
            window(6_500, 7_000),
        )
        .await
        .unwrap();
    assert_eq!(
        span_list(&later),
        vec![(true, 6_000, Some(8_000), true, None)]
    );

    // A re-registration of a live worker is a `replaced` crash and a new
    // live span, at the same instant.
    let (w, _) = step(s, &w, Command::Heartbeat, at(9_000)).await;
    let (_, _) = step(s, &w, Command::Register, at(9_500)).await;
    let spans = s
        .health_spans(
            SpansOf::Workers(std::slice::from_ref(&w.id)),
            window(9_000, 10_000),
        )
        .await
        .unwrap();
    assert_eq!(
        span_list(&spans),
        vec![
            // A span that ends where the window begins is read too (its
            // part in the window is empty).
            (
                true,
                8_000,
                Some(9_000),
                false,
                Some((OfflineClass::Graceful, None))
            ),
            (true, 9_000, Some(9_500), true, None),
            (
                true,
                9_500,
                Some(9_500),
                false,
                Some((OfflineClass::Crash, Some(CrashKind::Replaced)))
            ),
            (true, 9_500, None, true, None),
        ]
    );
}

async fn health_history_survives_deletion(store: Arc<dyn Store>) {
    let s = &*store;
    let (w, _) = register(s, 1, "m1", at(1_000)).await;
    let (next, _) = apply(s, &w, Command::Delete, at(3_000)).await;
    assert!(next.is_none());
    // Gone from the workers, kept in the history: live until it was
    // revoked, then ended.
    assert_eq!(s.get_worker(&w.id).await.unwrap(), None);
    let spans = s
        .health_spans(
            SpansOf::Workers(std::slice::from_ref(&w.id)),
            window(0, 10_000),
        )
        .await
        .unwrap();
    assert_eq!(
        span_list(&spans),
        vec![
            (true, 1_000, Some(3_000), true, None),
            (
                true,
                3_000,
                Some(3_000),
                false,
                Some((OfflineClass::Administrative, None))
            ),
        ]
    );
    let f = s.fleet_health(&fleet_query(0, 10_000, 5)).await.unwrap();
    assert_eq!(
        (f.workers, f.existed_ms, f.live_ms, f.down_ms),
        (1, 2_000, 2_000, 0)
    );
    assert_eq!(f.offlines, vec![(OfflineClass::Administrative, None, 1)]);
    // The event log can be pruned entirely: the history stays.
    s.prune_events(at(1_000_000)).await.unwrap();
    let f2 = s.fleet_health(&fleet_query(0, 10_000, 5)).await.unwrap();
    assert_eq!(f, f2);
}

async fn fleet_health_sums_and_ranks(store: Arc<dyn Store>) {
    let s = &*store;
    // m1: w1 crashes twice (stale, then exited 3); w2 is always up.
    // m2: w3 shuts down gracefully and exits 0.
    let (w1, _) = register(s, 1, "m1", at(0)).await;
    let (w2, _) = register(s, 2, "m1", at(0)).await;
    let (w3, _) = register(s, 3, "m2", at(0)).await;
    let (w1, _) = step(s, &w1, Command::Expire { session: 1 }, at(1_000)).await;
    let (w1, _) = step(s, &w1, Command::Heartbeat, at(2_000)).await;
    let (next, mut write) = write_for(&w1, Command::Offline(OfflineReason::Exited), at(3_000));
    if let WorkerWrite::Put { events, .. } = &mut write {
        events[0].exit = Some(ExitStatus::Code(3));
    }
    assert_eq!(s.commit(vec![write]).await.unwrap().applied, [true]);
    let _w1 = next.unwrap();
    let (next, mut write) = write_for(&w3, Command::Offline(OfflineReason::Exited), at(4_000));
    if let WorkerWrite::Put { events, .. } = &mut write {
        events[0].exit = Some(ExitStatus::Code(0));
    }
    assert_eq!(s.commit(vec![write]).await.unwrap().applied, [true]);
    let _ = (next, &w2);

    let f = s.fleet_health(&fleet_query(0, 10_000, 10)).await.unwrap();
    assert_eq!((f.workers, f.machines), (3, 2));
    assert_eq!(f.existed_ms, 30_000);
    assert_eq!(f.no_data_ms, 0);
    // w1 live 1 s + 1 s, w2 10 s, w3 4 s.
    assert_eq!(f.live_ms, 16_000);
    assert_eq!(f.down_ms, 14_000);
    let mut offlines = f.offlines.clone();
    offlines.sort_by_key(|o| (o.0.as_str(), o.1.map(|k| k.as_str())));
    assert_eq!(
        offlines,
        vec![
            (OfflineClass::Crash, Some(CrashKind::Exited), 1),
            (OfflineClass::Crash, Some(CrashKind::Stale), 1),
            (OfflineClass::Graceful, None, 1),
        ]
    );
    assert_eq!(f.machines_by_crashes, vec![mid("m1")]);
    // m2 is down from 4 s (6 s); m1 never (w2 is up).
    assert_eq!(f.machines_by_downtime, vec![mid("m2")]);
    assert_eq!(f.workers_by_crashes, vec![w1.id.clone()]);
    // w1 down 1 s + 7 s = 8 s, w3 6 s.
    assert_eq!(f.workers_by_downtime, vec![w1.id.clone(), w3.id.clone()]);
    // top cuts the rankings.
    let f1 = s.fleet_health(&fleet_query(0, 10_000, 1)).await.unwrap();
    assert_eq!(f1.workers_by_downtime, vec![w1.id.clone()]);
    // A window clips spans: [2.5 s, 3.5 s): w1 live 0.5 s down 0.5 s, w2
    // and w3 live 1 s each; the exited crash at 3 s is in it.
    let f = s
        .fleet_health(&fleet_query(2_500, 3_500, 10))
        .await
        .unwrap();
    assert_eq!((f.existed_ms, f.live_ms, f.down_ms), (3_000, 2_500, 500));
    assert_eq!(
        f.offlines,
        vec![(OfflineClass::Crash, Some(CrashKind::Exited), 1)]
    );

    // Label filters select workers by their current labels.
    let (mut w4, write) = register_write(4, "m3", at(0));
    w4.labels = labels(&[("queue", "gpu")]);
    let write = match write {
        WorkerWrite::Put {
            machine,
            events,
            expect,
            ..
        } => WorkerWrite::Put {
            record: w4.clone(),
            expect,
            machine,
            events,
        },
        other => other,
    };
    assert_eq!(s.commit(vec![write]).await.unwrap().applied, [true]);
    let mut q = fleet_query(0, 10_000, 10);
    q.labels = vec![("queue".into(), "gpu".into())];
    let f = s.fleet_health(&q).await.unwrap();
    assert_eq!(
        (f.workers, f.machines, f.existed_ms, f.live_ms),
        (1, 1, 10_000, 10_000)
    );
    assert!(f.offlines.is_empty() && f.workers_by_downtime.is_empty());
    q.labels = vec![("queue".into(), "it's".into())];
    let f = s.fleet_health(&q).await.unwrap();
    assert_eq!(f.workers, 0);
}

async fn observations_make_no_data(store: Arc<dyn Store>) {
    let s = &*store;
    assert!(s.observations().await.unwrap().is_empty());
    s.begin_observation(at(0)).await.unwrap();
    let (w, _) = register(s, 1, "m1", at(1_000)).await;
    s.extend_observation(at(0), at(3_000)).await.unwrap();
    // Never moves back.
    s.extend_observation(at(0), at(2_000)).await.unwrap();
    // The server was away for 2 s.
    s.begin_observation(at(5_000)).await.unwrap();
    s.extend_observation(at(5_000), at(9_000)).await.unwrap();
    let (_w, _) = step(s, &w, Command::Expire { session: 1 }, at(7_000)).await;
    let rows = s.observations().await.unwrap();
    assert_eq!(
        rows,
        vec![
            Observation {
                start: at(0),
                end: at(3_000),
                no_data_before_ms: 0
            },
            Observation {
                start: at(5_000),
                end: at(9_000),
                no_data_before_ms: 2_000
            },
        ]
    );
    let obs = Observations::new(rows, Some(at(10_000)));
    let q = FleetQuery {
        window: window(0, 10_000),
        no_data_before_from: obs.no_data_before(at(0)),
        no_data_before_to: obs.no_data_before(at(10_000)),
        top: 10,
        labels: vec![],
    };
    let f = s.fleet_health(&q).await.unwrap();
    // Existed 9 s; 2 s no data; live 1–7 s but for the gap; down 7–10 s.
    assert_eq!(
        (f.existed_ms, f.no_data_ms, f.live_ms, f.down_ms),
        (9_000, 2_000, 4_000, 3_000)
    );
    // The same from the spans and the core's arithmetic.
    let spans = s
        .health_spans(
            SpansOf::Workers(std::slice::from_ref(&w.id)),
            window(0, 10_000),
        )
        .await
        .unwrap();
    let time: Vec<_> = spans.iter().map(|s| s.span).collect();
    let core = rollcall_core::health::figures(&time, &[], &obs, window(0, 10_000));
    assert_eq!(
        (core.existed_ms, core.no_data_ms, core.live_ms, core.down_ms),
        (9_000, 2_000, 4_000, 3_000)
    );
    // A window inside the gap, and one that begins in it.
    for (from, to) in [(3_500, 4_500), (4_000, 8_000)] {
        let q = FleetQuery {
            window: window(from, to),
            no_data_before_from: obs.no_data_before(at(from)),
            no_data_before_to: obs.no_data_before(at(to)),
            top: 10,
            labels: vec![],
        };
        let f = s.fleet_health(&q).await.unwrap();
        let core = rollcall_core::health::figures(&time, &[], &obs, window(from, to));
        assert_eq!(
            (f.existed_ms, f.no_data_ms, f.live_ms, f.down_ms),
            (core.existed_ms, core.no_data_ms, core.live_ms, core.down_ms),
            "window {from}..{to}"
        );
    }
}

async fn prune_health_keeps_open_and_recent_spans(store: Arc<dyn Store>) {
    let s = &*store;
    s.begin_observation(at(0)).await.unwrap();
    s.extend_observation(at(0), at(1_000)).await.unwrap();
    s.begin_observation(at(2_000)).await.unwrap();
    s.extend_observation(at(2_000), at(3_000)).await.unwrap();
    s.begin_observation(at(4_000)).await.unwrap();
    let (w, _) = register(s, 1, "m1", at(4_000)).await;
    let (w, _) = step(s, &w, Command::Expire { session: 1 }, at(5_000)).await;
    let (_w, _) = step(s, &w, Command::Heartbeat, at(6_000)).await;
    s.extend_observation(at(4_000), at(9_000)).await.unwrap();
    // Spans ended at or before 5 s go, with the observations that ended
    // before the latest of those that ended by then.
    let n = s.prune_health(at(5_000)).await.unwrap();
    assert_eq!(n, 2, "the worker's and the machine's first live spans");
    let spans = s
        .health_spans(SpansOf::Machines(&[mid("m1")]), window(0, 10_000))
        .await
        .unwrap();
    assert_eq!(spans.len(), 4);
    assert!(spans.iter().all(|s| s.span.start >= at(5_000)));
    let starts: Vec<_> = s
        .observations()
        .await
        .unwrap()
        .iter()
        .map(|o| o.start)
        .collect();
    assert_eq!(starts, vec![at(2_000), at(4_000)]);
    assert_eq!(s.prune_health(at(5_000)).await.unwrap(), 0);
}

// ===========================================================================
// SQLite only: the file lock, reopening, rows edited from outside
// ===========================================================================

mod sqlite_only {
    use super::*;
    use rollcall_store::sqlite::SqliteStore;
    use rollcall_store::StoreError;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

    fn db_path(dir: &tempfile::TempDir) -> String {
        dir.path().join("rollcall.db").to_str().unwrap().to_owned()
    }

    /// The migration's backfill rebuilds, from the event log, the history
    /// the commits wrote (but the names of deleted workers, which no event
    /// carries).
    #[tokio::test]
    async fn the_migration_backfills_history_from_the_event_log() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = db_path(&dir);
        let store = SqliteStore::open(&path).await.unwrap();
        let s: &dyn Store = &store;
        let (w1, _) = register(s, 1, "m1", at(1_000)).await;
        let (w2, _) = register(s, 2, "m1", at(2_000)).await;
        let (w3, _) = register(s, 3, "m2", at(2_000)).await;
        let (gone, _) = apply(s, &w2, Command::Delete, at(3_000)).await;
        assert!(gone.is_none());
        let (w1, _) = step(s, &w1, Command::Expire { session: 1 }, at(5_000)).await;
        let (_w1, _) = step(s, &w1, Command::Heartbeat, at(6_000)).await;
        let (_w3, _) = step(s, &w3, Command::Offline(OfflineReason::Shutdown), at(7_000)).await;
        async fn spans(
            s: &SqliteStore,
        ) -> Vec<(
            Option<rollcall_core::WorkerId>,
            rollcall_core::MachineId,
            Span,
        )> {
            let mut v = s
                .health_spans(
                    SpansOf::Machines(&[mid("m1"), mid("m2")]),
                    window(0, 100_000),
                )
                .await
                .unwrap();
            v.sort_by_key(|x| {
                (
                    x.worker_id.clone(),
                    x.machine_id.clone(),
                    x.span.start,
                    x.span.end,
                )
            });
            v.into_iter()
                .map(|x| (x.worker_id, x.machine_id, x.span))
                .collect()
        }
        let written = spans(&store).await;
        assert_eq!(written.len(), 12, "{written:?}");
        store.close().await.unwrap();
        drop(store);

        let migration = include_str!("../migrations/sqlite/0005_health_history.sql");
        let backfill = &migration[migration.find("-- Backfill").unwrap()..];
        let raw = SqlitePool::connect_with(SqliteConnectOptions::new().filename(&path))
            .await
            .unwrap();
        sqlx::query("DELETE FROM health_spans")
            .execute(&raw)
            .await
            .unwrap();
        sqlx::query("DELETE FROM health_observations")
            .execute(&raw)
            .await
            .unwrap();
        sqlx::raw_sql(backfill).execute(&raw).await.unwrap();
        raw.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(spans(&store).await, written);
        let obs = store.observations().await.unwrap();
        assert_eq!(obs.len(), 1);
        assert_eq!((obs[0].start, obs[0].no_data_before_ms), (at(1_000), 0));
    }

    #[tokio::test]
    async fn a_second_store_on_the_same_file_is_refused_while_the_first_lives() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = db_path(&dir);
        let first = SqliteStore::open(&path).await.unwrap();
        register(&first, 1, "m1", at(0)).await;

        for url in [
            path.clone(),
            format!("sqlite://{path}"),
            format!("sqlite:{path}"),
        ] {
            match SqliteStore::open(&url).await {
                Err(StoreError::Locked(msg)) => assert!(!msg.is_empty()),
                other => panic!("opening {url} twice: expected Locked, got {other:?}"),
            }
        }
        // The refused opens did not disturb the first store.
        first.ping().await.unwrap();
        assert_eq!(first.load_workers().await.unwrap().len(), 1);

        drop(first);
        let second = SqliteStore::open(&path).await.unwrap();
        assert_eq!(second.load_workers().await.unwrap().len(), 1);
        assert!(matches!(
            SqliteStore::open(&path).await,
            Err(StoreError::Locked(_))
        ));
        second.close().await.unwrap();
        drop(second);
        SqliteStore::open(&path).await.unwrap();
    }

    #[tokio::test]
    async fn data_survives_drop_and_reopen() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = db_path(&dir);
        let store = SqliteStore::open(&path).await.unwrap();
        let (w1, _) = register(&store, 1, "m1", at(0)).await;
        let (w2, _) = register(&store, 2, "m2", at(0)).await;
        step(&store, &w2, Command::Drain, at(10)).await;
        store.flush_heartbeats(&[mark(&w1, 1, 50)]).await.unwrap();
        let t = token(1, TokenKind::Admin, Some(at(1_000)));
        store.insert_token(&t).await.unwrap();
        store.touch_tokens(&[(t.id.clone(), at(60))]).await.unwrap();

        let workers = all_workers(&store).await;
        let machines = store.list_machines(None, None, 10).await.unwrap().items;
        let events = all_events(&store, &EventFilter::default()).await;
        let tokens = store.all_tokens().await.unwrap();
        let seq = store.last_seq().await.unwrap();
        assert_eq!(workers[0].last_heartbeat_at, Some(at(50)));
        drop(store); // no close: as if the process ended

        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(all_workers(&store).await, workers);
        assert_eq!(
            store.list_machines(None, None, 10).await.unwrap().items,
            machines
        );
        assert_eq!(all_events(&store, &EventFilter::default()).await, events);
        assert_eq!(store.all_tokens().await.unwrap(), tokens);
        assert_eq!(store.last_seq().await.unwrap(), seq);

        // Pruning everything and reopening still never reuses a seq.
        assert_eq!(
            store.prune_events(at(1_000_000)).await.unwrap(),
            events.len() as u64
        );
        store.close().await.unwrap();
        drop(store);
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.last_seq().await.unwrap(), seq);
        let (_, res) = register(&store, 3, "m3", at(100)).await;
        assert!(res.events.iter().all(|e| e.seq > seq));
        assert_eq!(store.path(), std::path::Path::new(&path));
    }

    #[tokio::test]
    async fn reconcile_fixes_machines_edited_from_outside() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = db_path(&dir);
        let store = SqliteStore::open(&path).await.unwrap();
        let (_w1, _) = register(&store, 1, "m1", at(0)).await;
        let (w2, _) = register(&store, 2, "m2", at(0)).await;
        step(
            &store,
            &w2,
            Command::Offline(OfflineReason::Shutdown),
            at(10),
        )
        .await;
        let (_w3, _) = register(&store, 3, "m3", at(0)).await;
        register(&store, 4, "m4", at(0)).await;
        let seq = store.last_seq().await.unwrap();

        // Rows edited behind the store's back.
        let raw = SqlitePool::connect_with(SqliteConnectOptions::new().filename(&path))
            .await
            .unwrap();
        for sql in [
            "UPDATE machines SET status = 'offline' WHERE id = 'm1'",
            "UPDATE machines SET status = 'online' WHERE id = 'm2'",
            "UPDATE workers SET status = 'offline', offline_reason = 'exited' WHERE machine_id = 'm3'",
        ] {
            sqlx::query(sql).execute(&raw).await.unwrap();
        }
        raw.close().await;

        let fixed = store.reconcile_machines(at(500)).await.unwrap();
        let mut got: Vec<_> = fixed
            .iter()
            .map(|e| (e.machine_id.to_string(), e.kind))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [
                ("m1".to_owned(), EventType::MachineOnline),
                ("m2".to_owned(), EventType::MachineOffline),
                ("m3".to_owned(), EventType::MachineOffline),
            ]
        );
        assert_strictly_increasing(&fixed);
        for e in &fixed {
            assert!(e.seq > seq);
            assert_eq!(
                (e.at, e.worker_id.as_ref(), e.session),
                (at(500), None, None)
            );
        }
        assert_eq!(store.last_seq().await.unwrap(), fixed.last().unwrap().seq);
        let stored = store
            .list_events(&EventFilter::default(), seq, 100)
            .await
            .unwrap()
            .items;
        assert_eq!(stored, fixed);

        for (id, status) in [
            ("m1", MachineStatus::Online),
            ("m2", MachineStatus::Offline),
            ("m3", MachineStatus::Offline),
            ("m4", MachineStatus::Online),
        ] {
            let m = machine(&store, id).await;
            assert_eq!(m.status, status, "{id}");
            let changed = if id == "m4" { at(0) } else { at(500) };
            assert_eq!(m.status_changed_at, changed, "{id}");
        }
        // Once fixed, nothing more to do.
        assert!(store.reconcile_machines(at(600)).await.unwrap().is_empty());
    }
}

// ===========================================================================
// Incidents and the outbox
// ===========================================================================

fn incident(rule: &str, subject: &str, status: IncidentStatus, at: i64) -> IncidentRecord {
    IncidentRecord {
        id: IncidentId::generate(Timestamp::from_millis(at), rand_bytes()),
        rule: rule.into(),
        kind: "worker_offline".into(),
        severity: "critical".into(),
        subject: subject.into(),
        worker_id: None,
        machine_id: Some(rollcall_core::MachineId::parse("m1").unwrap()),
        status,
        since: Timestamp::from_millis(at),
        opened_at: (status != IncidentStatus::Pending).then_some(Timestamp::from_millis(at)),
        resolved_at: None,
        acked_at: None,
        acked_by: None,
        inhibited_by: None,
        summary: format!("{rule} {subject}"),
        details: serde_json::json!({"n": 1}),
        updated_at: Timestamp::from_millis(at),
    }
}

fn rand_bytes() -> [u8; 10] {
    use std::sync::atomic::{AtomicU8, Ordering};
    static N: AtomicU8 = AtomicU8::new(0);
    [N.fetch_add(1, Ordering::SeqCst); 10]
}

fn note(i: &IncidentRecord, channel: &str, transition: &str, not_before: i64) -> NewNotification {
    NewNotification {
        incident_id: i.id.clone(),
        channel: channel.into(),
        transition: transition.into(),
        idempotency_key: format!("{}:{transition}:{channel}", i.id),
        body: "{}".into(),
        created_at: i.updated_at,
        not_before: Timestamp::from_millis(not_before),
    }
}

async fn alert_steps_apply_once_and_keep_acknowledgements(store: Arc<dyn Store>) {
    let start = store.alert_cursor().await.unwrap();
    assert_eq!(start, store.last_seq().await.unwrap());
    let mut open = incident("down", "w1", IncidentStatus::Open, 1_000);
    let pending = incident("down", "w2", IncidentStatus::Pending, 1_000);
    let step = AlertCommit {
        cursor: Some((start, start + 5)),
        incidents: vec![open.clone(), pending.clone()],
        notifications: vec![note(&open, "hook", "opened", 1_000)],
        ..AlertCommit::default()
    };
    assert!(store.commit_alerts(&step).await.unwrap().is_some());
    assert_eq!(store.alert_cursor().await.unwrap(), start + 5);
    // The same step again: the cursor moved, nothing is written.
    assert!(store.commit_alerts(&step).await.unwrap().is_none());
    assert_eq!(
        store
            .due_notifications(Timestamp::from_millis(1_000), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let mut current = store.current_incidents().await.unwrap();
    current.sort_by(|a, b| a.subject.cmp(&b.subject));
    assert_eq!(current, vec![open.clone(), pending.clone()]);

    // An acknowledgement outlives the alerter's later writes of the incident.
    let acked = store
        .ack_incident(&open.id, Timestamp::from_millis(2_000), "alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acked.acked_by.as_deref(), Some("alice"));
    let again = store
        .ack_incident(&open.id, Timestamp::from_millis(3_000), "bob")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.acked_at, Some(Timestamp::from_millis(2_000)));
    assert_eq!(again.acked_by.as_deref(), Some("alice"));
    open.status = IncidentStatus::Resolved;
    open.resolved_at = Some(Timestamp::from_millis(4_000));
    open.updated_at = Timestamp::from_millis(4_000);
    // A clock step (no cursor) withdraws the pending one and resolves the
    // open one; a new pending incident may take the withdrawn one's subject.
    let replacement = incident("down", "w2", IncidentStatus::Pending, 4_000);
    let step = AlertCommit {
        cursor: None,
        incidents: vec![open.clone(), replacement.clone()],
        withdraw: vec![pending.id.clone()],
        ..AlertCommit::default()
    };
    assert!(store.commit_alerts(&step).await.unwrap().is_some());
    let got = store.get_incident(&open.id).await.unwrap().unwrap();
    assert_eq!(got.status, IncidentStatus::Resolved);
    assert_eq!(got.acked_by.as_deref(), Some("alice"));
    assert_eq!(store.get_incident(&pending.id).await.unwrap(), None);
    assert_eq!(
        store.current_incidents().await.unwrap(),
        vec![replacement.clone()]
    );
    // Newest first, by status, paged.
    let all = store.list_incidents(None, None, 10).await.unwrap();
    assert_eq!(
        all.items.iter().map(|i| &i.id).collect::<Vec<_>>(),
        vec![&replacement.id, &open.id]
    );
    let resolved = store
        .list_incidents(Some(IncidentStatus::Resolved), None, 10)
        .await
        .unwrap();
    assert_eq!(resolved.items, vec![got]);
    let first = store.list_incidents(None, None, 1).await.unwrap();
    assert!(first.more);
    let second = store
        .list_incidents(None, Some(&first.items[0].id), 1)
        .await
        .unwrap();
    assert_eq!(second.items[0].id, open.id);
    assert!(!second.more);
}

async fn incident_events_join_the_log_in_order(store: Arc<dyn Store>) {
    let s = &*store;
    let (_, before) = register(s, 1, "m1", at(1)).await;
    let last = s.last_seq().await.unwrap();
    assert_eq!(last, before.events.last().unwrap().seq);
    let cursor = s.alert_cursor().await.unwrap();
    let worker = incident("down", "w1", IncidentStatus::Open, 2_000);
    let fleet = incident("mass", "mass", IncidentStatus::Resolved, 2_000);
    let events = vec![
        rollcall_store::IncidentEvent {
            at: Timestamp::from_millis(2_000),
            kind: EventType::IncidentOpened,
            incident_id: worker.id.clone(),
            worker_id: None,
            machine_id: MachineId::parse("m1").unwrap(),
        },
        rollcall_store::IncidentEvent {
            at: Timestamp::from_millis(2_000),
            kind: EventType::IncidentResolved,
            incident_id: fleet.id.clone(),
            worker_id: None,
            machine_id: MachineId::fleet(),
        },
    ];
    let step = AlertCommit {
        cursor: Some((cursor, last)),
        incidents: vec![worker.clone(), fleet.clone()],
        events: events.clone(),
        ..AlertCommit::default()
    };
    let appended = s
        .commit_alerts(&step)
        .await
        .unwrap()
        .expect("the cursor was there");
    assert_eq!(appended.len(), 2);
    assert_eq!(appended[0].seq, last + 1);
    assert_eq!(appended[1].seq, last + 2);
    assert_eq!(appended[0].incident_id.as_ref(), Some(&worker.id));
    assert!(appended[1].machine_id.is_fleet());
    assert_eq!(s.last_seq().await.unwrap(), last + 2);
    // The log lists them as it returned them; filters by type find them.
    let logged = all_events(s, &EventFilter::default()).await;
    assert_eq!(&logged[logged.len() - 2..], &appended[..]);
    let opened = all_events(
        s,
        &EventFilter {
            kind: Some(EventType::IncidentOpened),
            ..EventFilter::default()
        },
    )
    .await;
    assert_eq!(opened, appended[..1]);
    // A refused step appends nothing; the next transitions follow them.
    assert!(s.commit_alerts(&step).await.unwrap().is_none());
    assert_eq!(s.last_seq().await.unwrap(), last + 2);
    let (_, after) = register(s, 2, "m1", at(3)).await;
    assert_eq!(after.events[0].seq, last + 3);
}

async fn alert_rules_put_replace_and_delete(store: Arc<dyn Store>) {
    let s = &*store;
    assert!(s.list_alert_rules().await.unwrap().is_empty());
    let rule = |name: &str, spec: &str, at: i64| rollcall_store::StoredRule {
        name: name.into(),
        spec: spec.into(),
        created_at: Timestamp::from_millis(at),
        updated_at: Timestamp::from_millis(at),
    };
    assert!(s
        .put_alert_rule(&rule("b", r#"{"kind":"worker_offline"}"#, 1_000))
        .await
        .unwrap());
    assert!(s.put_alert_rule(&rule("a", "{}", 2_000)).await.unwrap());
    // A replace keeps the creation time.
    assert!(!s
        .put_alert_rule(&rule("b", r#"{"kind":"mass_failure"}"#, 3_000))
        .await
        .unwrap());
    let listed = s.list_alert_rules().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], rule("a", "{}", 2_000));
    assert_eq!(listed[1].name, "b");
    assert_eq!(listed[1].spec, r#"{"kind":"mass_failure"}"#);
    assert_eq!(listed[1].created_at, Timestamp::from_millis(1_000));
    assert_eq!(listed[1].updated_at, Timestamp::from_millis(3_000));
    assert!(s.delete_alert_rule("b").await.unwrap());
    assert!(!s.delete_alert_rule("b").await.unwrap());
    assert_eq!(
        s.list_alert_rules().await.unwrap(),
        [rule("a", "{}", 2_000)]
    );
}

async fn outbox_delivers_in_order_per_incident(store: Arc<dyn Store>) {
    let a = incident("down", "w1", IncidentStatus::Open, 1_000);
    let b = incident("down", "w2", IncidentStatus::Open, 1_000);
    let step = AlertCommit {
        incidents: vec![a.clone(), b.clone()],
        notifications: vec![
            note(&a, "hook", "opened", 5_000),
            note(&a, "hook", "resolved", 1_000),
            note(&b, "hook", "opened", 1_000),
            note(&b, "slack", "opened", 1_000),
        ],
        ..AlertCommit::default()
    };
    assert!(store.commit_alerts(&step).await.unwrap().is_some());
    let keys = |ns: &[Notification]| {
        ns.iter()
            .map(|n| n.idempotency_key.clone())
            .collect::<Vec<_>>()
    };
    // a's resolve waits for a's opening, which waits for its not_before.
    let due = store
        .due_notifications(Timestamp::from_millis(1_000), 10)
        .await
        .unwrap();
    assert_eq!(
        keys(&due),
        vec![
            format!("{}:opened:hook", b.id),
            format!("{}:opened:slack", b.id)
        ]
    );
    assert_eq!(store.outbox_stats().await.unwrap().pending, 4);
    let due = store
        .due_notifications(Timestamp::from_millis(5_000), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 3);
    let a_open = due.iter().find(|n| n.incident_id == a.id).unwrap().clone();
    assert!(!a_open.opened_delivered);
    // A failure delays it; the resolve still waits.
    store
        .record_attempt(
            a_open.id,
            Timestamp::from_millis(5_000),
            &Attempt::Failed {
                error: "503".into(),
                retry_at: Timestamp::from_millis(6_000),
            },
        )
        .await
        .unwrap();
    let due = store
        .due_notifications(Timestamp::from_millis(5_500), 10)
        .await
        .unwrap();
    assert!(due.iter().all(|n| n.incident_id != a.id));
    let due = store
        .due_notifications(Timestamp::from_millis(6_000), 10)
        .await
        .unwrap();
    let a_open = due.iter().find(|n| n.incident_id == a.id).unwrap().clone();
    assert_eq!(a_open.attempts, 1);
    assert_eq!(a_open.last_error.as_deref(), Some("503"));
    store
        .record_attempt(
            a_open.id,
            Timestamp::from_millis(6_000),
            &Attempt::Delivered,
        )
        .await
        .unwrap();
    let due = store
        .due_notifications(Timestamp::from_millis(6_000), 10)
        .await
        .unwrap();
    let a_resolve = due.iter().find(|n| n.incident_id == a.id).unwrap().clone();
    assert_eq!(a_resolve.transition, "resolved");
    assert!(a_resolve.opened_delivered);
    // b is suppressed: its waiting notifications are gone; one given up.
    let step = AlertCommit {
        suppress: vec![b.id.clone()],
        ..AlertCommit::default()
    };
    assert!(store.commit_alerts(&step).await.unwrap().is_some());
    store
        .record_attempt(
            a_resolve.id,
            Timestamp::from_millis(6_000),
            &Attempt::GaveUp { error: "x".into() },
        )
        .await
        .unwrap();
    assert!(store
        .due_notifications(Timestamp::from_millis(99_000), 10)
        .await
        .unwrap()
        .is_empty());
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.oldest), (0, None));
    // An idempotency key is written once.
    let step = AlertCommit {
        notifications: vec![note(&a, "hook", "opened", 1_000)],
        ..AlertCommit::default()
    };
    assert!(store.commit_alerts(&step).await.unwrap().is_some());
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
}

/// The fleet's figures as the spans give them: every span that overlaps
/// the window, summed one by one (the definition the rollup must keep).
fn fleet_from_spans(
    spans: &[HealthSpan],
    obs: &Observations,
    q: &FleetQuery,
    workers: Option<&BTreeSet<rollcall_core::WorkerId>>,
    machines: Option<&BTreeSet<rollcall_core::MachineId>>,
) -> rollcall_store::FleetSummary {
    let (f, t) = (q.window.from, q.window.to);
    let observed = |a: Timestamp, b: Timestamp| -> i64 {
        let (a, b) = (a.max(f), b.min(t));
        b.diff_ms(a) - (obs.no_data_before(b) - obs.no_data_before(a))
    };
    let mut out = rollcall_store::FleetSummary::default();
    let mut ws = BTreeSet::new();
    let mut ms = BTreeSet::new();
    type Offline = (OfflineClass, Option<CrashKind>, u64);
    let mut offlines: BTreeMap<(&str, Option<&str>), Offline> = BTreeMap::new();
    let mut mc: BTreeMap<String, i64> = BTreeMap::new();
    let mut wc: BTreeMap<String, i64> = BTreeMap::new();
    let mut md: BTreeMap<String, i64> = BTreeMap::new();
    let mut wd: BTreeMap<String, i64> = BTreeMap::new();
    for sp in spans {
        let end = sp.span.end.unwrap_or(t);
        if sp.span.start >= t || sp.span.end.is_some_and(|e| e < f) {
            continue;
        }
        match &sp.worker_id {
            Some(w) => {
                if workers.is_some_and(|set| !set.contains(w)) {
                    continue;
                }
                ws.insert(w.clone());
                ms.insert(sp.machine_id.clone());
                out.existed_ms += end.min(t).diff_ms(sp.span.start.max(f));
                let o = observed(sp.span.start, end);
                if sp.span.live {
                    out.live_ms += o;
                } else {
                    out.down_ms += o;
                    *wd.entry(w.to_string()).or_default() += o;
                }
                if let Some((class, kind)) = sp.span.cause {
                    if sp.span.start >= f {
                        offlines
                            .entry((class.as_str(), kind.map(|k| k.as_str())))
                            .or_insert((class, kind, 0))
                            .2 += 1;
                        if class == OfflineClass::Crash {
                            *mc.entry(sp.machine_id.to_string()).or_default() += 1;
                            *wc.entry(w.to_string()).or_default() += 1;
                        }
                    }
                }
            }
            None => {
                if machines.is_some_and(|set| !set.contains(&sp.machine_id)) {
                    continue;
                }
                if !sp.span.live {
                    *md.entry(sp.machine_id.to_string()).or_default() +=
                        observed(sp.span.start, end);
                }
            }
        }
    }
    out.workers = ws.len() as u64;
    out.machines = ms.len() as u64;
    out.no_data_ms = out.existed_ms - out.live_ms - out.down_ms;
    out.offlines = offlines.into_values().collect();
    let rank = |m: BTreeMap<String, i64>| -> Vec<String> {
        let mut v: Vec<(String, i64)> = m.into_iter().filter(|(_, n)| *n > 0).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.into_iter()
            .take(q.top as usize)
            .map(|(id, _)| id)
            .collect()
    };
    out.machines_by_crashes = rank(mc).iter().map(|m| mid(m)).collect();
    out.machines_by_downtime = rank(md).iter().map(|m| mid(m)).collect();
    out.workers_by_crashes = rank(wc)
        .iter()
        .map(|w| rollcall_core::WorkerId::parse(w).unwrap())
        .collect();
    out.workers_by_downtime = rank(wd)
        .iter()
        .map(|w| rollcall_core::WorkerId::parse(w).unwrap())
        .collect();
    out
}

/// A fleet whose workers come and go over five days, with crashes of every
/// kind, graceful and administrative offlines, batches of several
/// transitions, server gaps (no data) and labels; the fleet query, answered
/// from the rollup, must equal the sums over the spans for awkward windows:
/// partial hours and days, windows inside a gap, ending on an instant with
/// transitions, beyond the last one (open spans), and with label filters.
async fn fleet_rollup_equals_the_spans(store: Arc<dyn Store>) {
    let s = &*store;
    const H: i64 = 3_600_000;
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut obs_start = 1_000;
    s.begin_observation(at(obs_start)).await.unwrap();
    let mut now = 1_000;
    let mut live: Vec<WorkerRecord> = Vec::new();
    let mut ever: Vec<rollcall_core::WorkerId> = Vec::new();
    let mut n = 0u32;
    let mut gaps = 0;
    for round in 0..140 {
        now += 1 + next(4 * H as u64) as i64;
        // Now and then the server was away.
        if round % 23 == 11 {
            gaps += 1;
            now += H / 2 + next(H as u64) as i64;
            obs_start = now;
            s.begin_observation(at(now)).await.unwrap();
        }
        s.extend_observation(at(obs_start), at(now)).await.unwrap();
        let mut writes = Vec::new();
        let mut touched = BTreeSet::new();
        for _ in 0..1 + next(3) {
            let pick = next(10);
            if live.is_empty() || pick == 0 {
                n += 1;
                let machine = format!("m{}", next(4));
                let (mut record, write) = register_write(n, &machine, at(now));
                if next(2) == 0 {
                    record.labels = labels(&[("queue", if next(2) == 0 { "gpu" } else { "cpu" })]);
                }
                let write = match write {
                    WorkerWrite::Put {
                        machine,
                        events,
                        expect,
                        ..
                    } => WorkerWrite::Put {
                        record: record.clone(),
                        expect,
                        machine,
                        events,
                    },
                    other => other,
                };
                ever.push(record.id.clone());
                touched.insert(record.id.clone());
                live.push(record);
                writes.push(write);
                continue;
            }
            let i = next(live.len() as u64) as usize;
            if !touched.insert(live[i].id.clone()) {
                continue;
            }
            let r = live[i].clone();
            let online = r.status == Status::Online;
            let (cmd, exit) = match (online, pick) {
                (_, 1) => (Command::Delete, None),
                (_, 2) => (Command::Register, None),
                (true, 3 | 4) => (Command::Offline(OfflineReason::Exited), Some(next(3) as u8)),
                (true, 5) => (Command::Offline(OfflineReason::Shutdown), None),
                (true, _) => (Command::Expire { session: r.session }, None),
                (false, _) => (Command::Heartbeat, None),
            };
            let (after, mut write) = write_for(&r, cmd, at(now));
            if let (Some(code), WorkerWrite::Put { events, .. }) = (exit, &mut write) {
                events[0].exit = Some(ExitStatus::Code(code));
            }
            match after {
                Some(a) => live[i] = a,
                None => {
                    live.remove(i);
                }
            }
            writes.push(write);
        }
        let res = s.commit(writes).await.unwrap();
        assert!(res.applied.iter().all(|a| *a));
    }
    assert!(
        gaps >= 5 && ever.len() > 20,
        "{gaps} gaps, {} workers",
        ever.len()
    );
    let end = now;
    s.extend_observation(at(obs_start), at(end)).await.unwrap();
    let obs = Observations::new(s.observations().await.unwrap(), None);
    let machines: Vec<_> = (0..4).map(|m| mid(&format!("m{m}"))).collect();

    let day = 24 * H;
    let mut windows = vec![
        (0, end + 1),
        (0, end + 5 * H),
        (1_000, end),
        (day, 2 * day),
        (H, 3 * H + 1),
        (day - 1, day + 1),
        (end - 1, end),
        (end, end + H),
        (end / 2, end / 2 + 1),
    ];
    for _ in 0..25 {
        let a = next(end as u64 + H as u64) as i64;
        let b = a + 1 + next((end as u64) / 2) as i64;
        windows.push((a, b));
    }
    let gpu: BTreeSet<_> = live
        .iter()
        .filter(|w| w.labels.as_map().get("queue").map(|v| v.as_str()) == Some("gpu"))
        .map(|w| w.id.clone())
        .collect();
    let gpu_machines: BTreeSet<_> = live
        .iter()
        .filter(|w| gpu.contains(&w.id))
        .map(|w| w.machine_id.clone())
        .collect();
    for (from, to) in windows {
        let w = window(from, to);
        let mut spans = s.health_spans(SpansOf::Workers(&ever), w).await.unwrap();
        spans.extend(
            s.health_spans(SpansOf::Machines(&machines), w)
                .await
                .unwrap()
                .into_iter()
                .filter(|sp| sp.worker_id.is_none()),
        );
        for (top, labelled) in [(3, false), (50, false), (50, true)] {
            let q = FleetQuery {
                window: w,
                no_data_before_from: obs.no_data_before(at(from)),
                no_data_before_to: obs.no_data_before(at(to)),
                top,
                labels: if labelled {
                    vec![("queue".into(), "gpu".into())]
                } else {
                    vec![]
                },
            };
            let got = s.fleet_health(&q).await.unwrap();
            let want = if labelled {
                fleet_from_spans(&spans, &obs, &q, Some(&gpu), Some(&gpu_machines))
            } else {
                fleet_from_spans(&spans, &obs, &q, None, None)
            };
            assert_eq!(
                got, want,
                "window {from}..{to}, top {top}, labels {labelled}"
            );
        }
    }
}
