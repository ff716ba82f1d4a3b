//! `GET /v1/events/stream` against the real server on port 0: live delivery,
//! replay with `Last-Event-ID` and `?after=`, filters, permissions,
//! keep-alive comments, no gap and no duplicate while transitions are being
//! committed, a client that stops reading, and shutdown with open streams.
//!
//! Tests never sleep and hope: they read until a deadline and assert on what
//! arrived. Deadlines are generous; the machine running them may be slow.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use rollcall_server::{RawConfig, Running, StreamSettings, SystemClock};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};

const ADMIN: &str = "rc_admin_stream-tests-admin-token-0123456789";
/// How long anything that should happen "now" may take on a busy machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// A running server on a fresh data directory.
struct App {
    base: String,
    addr: std::net::SocketAddr,
    client: reqwest::Client,
    running: Option<Running>,
    _dir: TempDir,
}

/// How a test wants its server.
#[derive(Default)]
struct Setup {
    stream: StreamSettings,
    /// A small kernel send buffer on accepted connections, so that a client
    /// that stops reading blocks the server's writes after little data.
    small_send_buffer: bool,
    /// Changes to the configuration.
    tweak: Option<fn(&mut RawConfig)>,
}

async fn spawn(setup: Setup) -> App {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let raw = RawConfig {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.path().to_str().expect("a UTF-8 path").into()),
        heartbeat_interval: Some("1s".into()),
        stale_after: Some("1h".into()),
        max_stale_after: Some("2h".into()),
        flush_interval: Some("200ms".into()),
        sweep_interval: Some("1h".into()),
        cleanup_interval: Some("1h".into()),
        admin_token: Some(ADMIN.into()),
        ..RawConfig::default()
    };
    let mut raw = raw;
    if let Some(tweak) = setup.tweak {
        tweak(&mut raw);
    }
    let config = raw.resolve().expect("a valid config");
    let socket = TcpSocket::new_v4().unwrap();
    if setup.small_send_buffer {
        // Accepted sockets inherit it; it also turns off autotuning.
        socket.set_send_buffer_size(4096).unwrap();
    }
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener: TcpListener = socket.listen(1024).unwrap();
    let running = rollcall_server::start_with_stream_settings(
        config,
        listener,
        Arc::new(SystemClock),
        setup.stream,
    )
    .await
    .expect("the server starts");
    let addr = running.addr();
    App {
        base: format!("http://{addr}"),
        addr,
        client: reqwest::Client::new(),
        running: Some(running),
        _dir: dir,
    }
}

/// A registered worker.
#[derive(Debug, Clone)]
struct Worker {
    id: String,
    token: String,
}

impl App {
    async fn register(&self, name: &str, machine: &str) -> Worker {
        let r = self
            .client
            .post(format!("{}/v1/workers", self.base))
            .bearer_auth(ADMIN)
            .json(&json!({"name": name, "machine": {"id": machine}}))
            .send()
            .await
            .expect("registration answered");
        assert!(r.status().is_success(), "registration: {}", r.status());
        let body: Value = r.json().await.unwrap();
        Worker {
            id: body["worker"]["id"].as_str().unwrap().into(),
            token: body["token"].as_str().unwrap().into(),
        }
    }

    async fn offline(&self, w: &Worker) {
        let r = self
            .client
            .post(format!("{}/v1/workers/{}/offline", self.base, w.id))
            .bearer_auth(&w.token)
            .send()
            .await
            .expect("offline answered");
        assert_eq!(r.status(), StatusCode::OK);
    }

    async fn heartbeat(&self, w: &Worker) {
        let r = self
            .client
            .post(format!("{}/v1/workers/{}/heartbeat", self.base, w.id))
            .bearer_auth(&w.token)
            .send()
            .await
            .expect("heartbeat answered");
        assert_eq!(r.status(), StatusCode::OK);
    }

    async fn token(&self, kind: &str) -> (String, String) {
        let body: Value = self
            .client
            .post(format!("{}/v1/tokens", self.base))
            .bearer_auth(ADMIN)
            .json(&json!({"kind": kind, "name": "stream test"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            body["id"].as_str().unwrap().into(),
            body["token"].as_str().unwrap().into(),
        )
    }

    /// The event log after `after`, oldest first, with an optional filter
    /// query (`type=…&…`).
    async fn log(&self, after: i64, filter: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut after = after;
        loop {
            let body: Value = self
                .client
                .get(format!(
                    "{}/v1/events?limit=1000&after={after}&{filter}",
                    self.base
                ))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            items.extend(body["items"].as_array().unwrap().iter().cloned());
            match body["next_cursor"].as_str() {
                Some(c) => after = c.parse().unwrap(),
                None => return items,
            }
        }
    }

    async fn last_seq(&self) -> i64 {
        self.log(0, "")
            .await
            .last()
            .map_or(0, |e| e["seq"].as_i64().unwrap())
    }

    async fn shutdown(&mut self) {
        let running = self.running.take().expect("running");
        running.shutdown().await.expect("a clean shutdown");
    }
}

/// One message of a stream.
#[derive(Debug, Clone)]
struct Msg {
    id: i64,
    event: String,
    data: Value,
}

/// A test's client of the stream, parsing messages as they come.
struct Sse {
    resp: reqwest::Response,
    buf: String,
    messages: std::collections::VecDeque<Msg>,
    comments: usize,
    ended: bool,
}

impl Sse {
    /// Opens `/v1/events/stream?query` with an optional `Last-Event-ID`.
    async fn open(app: &App, query: &str, last_event_id: Option<&str>, token: &str) -> Sse {
        let resp = Self::request(app, query, last_event_id, token).await;
        assert_eq!(resp.status(), StatusCode::OK, "opening the stream");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(ct, "text/event-stream");
        assert_eq!(resp.headers()["cache-control"], "no-cache");
        Sse {
            resp,
            buf: String::new(),
            messages: Default::default(),
            comments: 0,
            ended: false,
        }
    }

    async fn request(
        app: &App,
        query: &str,
        last_event_id: Option<&str>,
        token: &str,
    ) -> reqwest::Response {
        let mut req = app
            .client
            .get(format!("{}/v1/events/stream?{query}", app.base))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        timeout(PATIENCE, req.send())
            .await
            .expect("the stream answers")
            .expect("the stream answers")
    }

    /// Reads one more chunk; false at the end of the stream or at `until`.
    async fn read_more(&mut self, until: Instant) -> bool {
        if self.ended {
            return false;
        }
        match tokio::time::timeout_at(until, self.resp.chunk()).await {
            Err(_) => false,
            Ok(Ok(Some(bytes))) => {
                self.buf
                    .push_str(std::str::from_utf8(&bytes).expect("UTF-8"));
                self.parse();
                true
            }
            Ok(Ok(None)) | Ok(Err(_)) => {
                self.ended = true;
                false
            }
        }
    }

    fn parse(&mut self) {
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, None, None);
            for line in block.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse::<i64>().expect("a numeric id"));
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<Value>(v).expect("JSON data"));
                } else if !line.is_empty() {
                    panic!("an unexpected line in the stream: {line:?}");
                }
            }
            if let (Some(id), Some(event), Some(data)) = (id, event, data) {
                assert_eq!(data["seq"].as_i64(), Some(id), "id is the event's seq");
                assert_eq!(
                    data["type"].as_str(),
                    Some(event.as_str()),
                    "event is its type"
                );
                self.messages.push_back(Msg { id, event, data });
            }
        }
    }

    /// The next message, or `None` if none comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Msg> {
        let until = Instant::now() + wait;
        loop {
            if let Some(m) = self.messages.pop_front() {
                return Some(m);
            }
            if !self.read_more(until).await {
                return None;
            }
        }
    }

    /// Every message up to and including `seq`, in order; panics if they do
    /// not all arrive in time.
    async fn until_seq(&mut self, seq: i64) -> Vec<Msg> {
        let mut got = Vec::new();
        while got.last().is_none_or(|m: &Msg| m.id < seq) {
            match self.next(PATIENCE).await {
                Some(m) => got.push(m),
                None => panic!(
                    "the stream stopped before seq {seq}; last {:?}",
                    got.last().map(|m| m.id)
                ),
            }
        }
        got
    }

    /// Reads until the stream ends; panics if it does not end in time.
    async fn until_end(&mut self) {
        let until = Instant::now() + PATIENCE;
        while self.read_more(until).await {}
        assert!(self.ended, "the stream did not end");
    }
}

fn seqs(msgs: &[Msg]) -> Vec<i64> {
    msgs.iter().map(|m| m.id).collect()
}

fn log_seqs(log: &[Value]) -> Vec<i64> {
    log.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn committed_events_arrive_live_as_the_log_has_them() {
    let app = spawn(Setup::default()).await;
    let before = app.last_seq().await;
    let mut sse = Sse::open(&app, "", None, ADMIN).await;

    let w = app.register("render-1", "host-a").await;
    let log = app.log(before, "").await;
    let kinds: Vec<_> = log.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["worker.registered", "worker.online", "machine.online"]
    );
    let got = sse.until_seq(log_seqs(&log)[2]).await;
    assert_eq!(seqs(&got), log_seqs(&log));
    for (m, e) in got.iter().zip(&log) {
        assert_eq!(&m.data, e, "the stream carries the log's events");
        assert_eq!(m.event, e["type"].as_str().unwrap());
    }
    assert_eq!(got[0].data["worker_id"], w.id.as_str());

    app.offline(&w).await;
    let m = sse.next(PATIENCE).await.expect("worker.offline");
    assert_eq!(m.event, "worker.offline");
    assert_eq!(m.data["reason"], "shutdown");
    assert_eq!(sse.next(PATIENCE).await.unwrap().event, "machine.offline");
}

#[tokio::test]
async fn a_stream_without_a_position_starts_from_now() {
    let app = spawn(Setup::default()).await;
    app.register("old", "host-a").await;
    let mut sse = Sse::open(&app, "", None, ADMIN).await;
    let before = app.last_seq().await;
    app.register("new", "host-a").await;
    let first = sse.next(PATIENCE).await.expect("a live event");
    assert_eq!(first.id, before + 1, "nothing from before the connection");
    // An empty Last-Event-ID is no position either.
    let mut sse = Sse::open(&app, "", Some(""), ADMIN).await;
    app.register("newer", "host-a").await;
    let first = sse.next(PATIENCE).await.expect("a live event");
    assert_eq!(first.event, "worker.registered");
}

#[tokio::test]
async fn last_event_id_and_after_replay_the_log_then_go_live() {
    let app = spawn(Setup::default()).await;
    for i in 0..4 {
        app.register(&format!("w{i}"), &format!("host-{}", i % 2))
            .await;
    }
    let log = app.log(0, "").await;
    let all = log_seqs(&log);
    let from = all[3];
    let expected: Vec<i64> = all.iter().copied().filter(|s| *s > from).collect();
    let last = *all.last().unwrap();

    let mut by_header = Sse::open(&app, "", Some(&from.to_string()), ADMIN).await;
    let mut by_query = Sse::open(&app, &format!("after={from}"), None, ADMIN).await;
    // A reconnecting EventSource keeps its URL and adds Last-Event-ID: the
    // header wins.
    let mut both = Sse::open(&app, "after=0", Some(&from.to_string()), ADMIN).await;
    // An empty Last-Event-ID is no position: `?after=` applies.
    let mut empty_header = Sse::open(&app, &format!("after={from}"), Some(""), ADMIN).await;
    for sse in [&mut by_header, &mut by_query, &mut both, &mut empty_header] {
        let got = sse.until_seq(last).await;
        assert_eq!(seqs(&got), expected);
        for (m, e) in got
            .iter()
            .zip(log.iter().filter(|e| e["seq"].as_i64() > Some(from)))
        {
            assert_eq!(&m.data, e);
        }
    }

    // Then the live events, without a duplicate or a gap at the seam.
    app.register("w-live", "host-9").await;
    let live = app.log(last, "").await;
    for sse in [&mut by_header, &mut by_query, &mut both] {
        let got = sse.until_seq(*log_seqs(&live).last().unwrap()).await;
        assert_eq!(seqs(&got), log_seqs(&live));
    }

    // Resuming at the end replays nothing.
    let mut at_end = Sse::open(&app, "", Some(&last.to_string()), ADMIN).await;
    let first = at_end.next(PATIENCE).await.unwrap();
    assert_eq!(first.id, log_seqs(&live)[0]);
}

#[tokio::test]
async fn filters_apply_to_the_replay_and_to_live_events() {
    let app = spawn(Setup::default()).await;
    let a = app.register("a", "host-a").await;
    let b = app.register("b", "host-b").await;

    let mut by_worker = Sse::open(&app, &format!("after=0&worker_id={}", a.id), None, ADMIN).await;
    let mut by_type = Sse::open(&app, "after=0&type=machine.online", None, ADMIN).await;
    let mut by_machine = Sse::open(&app, "after=0&machine_id=host-b", None, ADMIN).await;

    app.offline(&a).await;
    app.offline(&b).await;
    app.heartbeat(&a).await; // resumes: worker.online, machine.online

    for (sse, filter) in [
        (&mut by_worker, format!("worker_id={}", a.id)),
        (&mut by_type, "type=machine.online".to_owned()),
        (&mut by_machine, "machine_id=host-b".to_owned()),
    ] {
        let want = app.log(0, &filter).await;
        assert!(want.len() >= 2, "{filter}: {want:?}");
        let got = sse.until_seq(*log_seqs(&want).last().unwrap()).await;
        assert_eq!(seqs(&got), log_seqs(&want), "{filter}");
    }
}

#[tokio::test]
async fn bad_positions_and_filters_are_400() {
    let app = spawn(Setup::default()).await;
    for (query, last_event_id) in [
        ("after=-1", None),
        ("after=abc", None),
        ("type=worker.exploded", None),
        ("worker_id=not-a-worker-id", None),
        ("machine_id=no%20spaces", None),
        ("", Some("12x")),
        ("", Some("-3")),
    ] {
        let r = Sse::request(&app, query, last_event_id, ADMIN).await;
        assert_eq!(
            r.status(),
            StatusCode::BAD_REQUEST,
            "{query} {last_event_id:?}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request");
    }
}

#[tokio::test]
async fn only_read_and_admin_tokens_may_stream() {
    let app = spawn(Setup::default()).await;
    let w = app.register("w", "host-a").await;
    let (_, enroll) = app.token("enroll").await;
    let (_, read) = app.token("read").await;

    let r = app
        .client
        .get(format!("{}/v1/events/stream", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = Sse::request(&app, "", None, "rc_read_not-a-real-token-at-all").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Authentication and permission come before the query is looked at.
    let r = Sse::request(&app, "after=oops", None, &w.token).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = Sse::request(&app, "", None, &enroll).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");

    let mut sse = Sse::open(&app, "after=0", None, &read).await;
    assert_eq!(sse.next(PATIENCE).await.unwrap().event, "worker.registered");
}

#[tokio::test]
async fn a_revoked_token_ends_its_stream() {
    let app = spawn(Setup {
        stream: StreamSettings {
            keep_alive: Duration::from_millis(100),
            ..StreamSettings::default()
        },
        ..Setup::default()
    })
    .await;
    let (id, read) = app.token("read").await;
    let mut sse = Sse::open(&app, "", None, &read).await;
    let r = app
        .client
        .delete(format!("{}/v1/tokens/{id}", app.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    sse.until_end().await;
}

#[tokio::test]
async fn a_token_revoked_while_its_stream_waits_gets_no_more_events() {
    // Keep-alives far apart: the stream is waiting for events, not ticking,
    // when the token is revoked; the next event must not reach it.
    let app = spawn(Setup::default()).await;
    let (id, read) = app.token("read").await;
    let mut sse = Sse::open(&app, "", None, &read).await;
    let before = app.register("before", "host-a").await;
    let first = sse.next(PATIENCE).await.expect("an event before revoking");
    assert_eq!(first.data["worker_id"], before.id.as_str());
    while sse.next(Duration::from_millis(200)).await.is_some() {}
    let r = app
        .client
        .delete(format!("{}/v1/tokens/{id}", app.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let after = app.register("after", "host-a").await;
    sse.until_end().await;
    let leaked: Vec<_> = sse
        .messages
        .iter()
        .filter(|m| m.data["worker_id"] == after.id.as_str())
        .collect();
    assert!(leaked.is_empty(), "a revoked token's stream got {leaked:?}");
}

#[tokio::test]
async fn streams_are_capped_per_token_and_overall() {
    let app = spawn(Setup {
        tweak: Some(|c| {
            c.max_streams = Some("3".into());
            c.max_streams_per_token = Some("2".into());
        }),
        ..Setup::default()
    })
    .await;
    let (_, read) = app.token("read").await;
    let a = Sse::open(&app, "", None, &read).await;
    let _b = Sse::open(&app, "", None, &read).await;
    let third = Sse::request(&app, "", None, &read).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.headers()["retry-after"], "5");
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_streams_per_token"),
        "{body}"
    );
    // Another spelling of the same header is the same token.
    let respelled = app
        .client
        .get(format!("{}/v1/events/stream", app.base))
        .header("authorization", format!("bearer   {read} "))
        .send()
        .await
        .unwrap();
    assert_eq!(respelled.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another token may still open one, up to the overall cap.
    let _c = Sse::open(&app, "", None, ADMIN).await;
    let over = Sse::request(&app, "", None, ADMIN).await;
    assert_eq!(over.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(over.headers().contains_key("retry-after"));
    let body: Value = over.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_streams"),
        "{body}"
    );
    // A closed stream gives its place back (once the server sees it gone:
    // at its next write, a keep-alive or an event).
    drop(a);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let _ = app.register("nudge", "host-a").await;
        let r = Sse::request(&app, "", None, &read).await;
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's slot was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn keep_alive_comments_arrive_while_nothing_happens() {
    let app = spawn(Setup {
        stream: StreamSettings {
            keep_alive: Duration::from_millis(100),
            ..StreamSettings::default()
        },
        ..Setup::default()
    })
    .await;
    let mut sse = Sse::open(&app, "", None, ADMIN).await;
    let until = Instant::now() + PATIENCE;
    while sse.comments < 3 && sse.read_more(until).await {}
    assert!(
        sse.comments >= 3,
        "only {} keep-alive comments",
        sse.comments
    );
    assert!(sse.messages.is_empty());
}

#[tokio::test]
async fn the_default_keep_alive_is_within_the_contracts_15_seconds() {
    let d = StreamSettings::default();
    assert!(d.keep_alive < Duration::from_secs(15), "{d:?}");
}

/// Many transitions committed concurrently while clients connect mid-way,
/// with and without a position: each client gets exactly the log's events
/// after its position (or a contiguous tail of them), each once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_gap_and_no_duplicate_while_transitions_are_committed() {
    let app = Arc::new(spawn(Setup::default()).await);
    let start = app.last_seq().await;
    let mut from_start = Sse::open(&app, &format!("after={start}"), None, ADMIN).await;

    // The load: writers registering, taking offline, resuming and
    // re-registering workers on a few machines, all at once.
    const WRITERS: usize = 8;
    const ROUNDS: usize = 25;
    let load = (0..WRITERS)
        .map(|t| {
            let app = app.clone();
            tokio::spawn(async move {
                for r in 0..ROUNDS {
                    let machine = format!("host-{}", (t + r) % 5);
                    let w = app.register(&format!("w{t}-{}", r % 7), &machine).await;
                    if r % 2 == 0 {
                        app.offline(&w).await;
                    }
                    if r % 4 == 0 {
                        app.heartbeat(&w).await;
                    }
                }
            })
        })
        .collect::<Vec<_>>();

    // Clients joining mid-way: with ?after= at the log's end as read just
    // now (events keep being committed between that read and the
    // subscription), with Last-Event-ID, with a filter, and live from now.
    let mut resuming = Vec::new();
    let mut live = Vec::new();
    for i in 0..6 {
        let until = Instant::now() + PATIENCE;
        let target = start + 40 * (i + 1);
        while app.last_seq().await < target && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let x = app.last_seq().await;
        let sse = match i % 3 {
            0 => Sse::open(&app, &format!("after={x}"), None, ADMIN).await,
            1 => Sse::open(&app, "", Some(&x.to_string()), ADMIN).await,
            _ => Sse::open(&app, &format!("after={x}&type=worker.online"), None, ADMIN).await,
        };
        resuming.push((x, i % 3 == 2, sse));
        live.push(Sse::open(&app, "", None, ADMIN).await);
    }
    for l in load {
        l.await.expect("a load task");
    }

    let log = app.log(start, "").await;
    let all = log_seqs(&log);
    let last = *all.last().unwrap();
    assert!(all.len() >= WRITERS * ROUNDS * 2, "the load made events");

    let got = seqs(&from_start.until_seq(last).await);
    assert_eq!(got, all, "the client that was there from the start");

    for (x, filtered, mut sse) in resuming {
        let want: Vec<i64> = log
            .iter()
            .filter(|e| e["seq"].as_i64().unwrap() > x)
            .filter(|e| !filtered || e["type"] == "worker.online")
            .map(|e| e["seq"].as_i64().unwrap())
            .collect();
        let Some(&want_last) = want.last() else {
            continue;
        };
        let got = seqs(&sse.until_seq(want_last).await);
        assert_eq!(got, want, "a client that joined after seq {x}");
    }

    for mut sse in live {
        // Live from now: it starts wherever it joined, then has everything.
        let got = seqs(&sse.until_seq(last).await);
        let Some(first) = got.first() else { continue };
        let want: Vec<i64> = all.iter().copied().filter(|s| s >= first).collect();
        assert_eq!(got, want, "a client that joined live");
    }
}

/// Fills the log with about `3 * n` events (`n` workers, each on its own
/// machine), `concurrency` registrations at a time.
async fn fill_log(app: &Arc<App>, n: usize) {
    let concurrency = 16;
    let tasks = (0..concurrency)
        .map(|t| {
            let app = app.clone();
            tokio::spawn(async move {
                for i in (t..n).step_by(concurrency) {
                    app.register(&format!("filler-{i}"), &format!("filler-host-{i}"))
                        .await;
                }
            })
        })
        .collect::<Vec<_>>();
    for t in tasks {
        t.await.unwrap();
    }
}

/// A client that asks for the whole log and then never reads, with a tiny
/// receive buffer: with the server's small send buffer it fills hyper's
/// write buffer and blocks the server's writes to it at once.
async fn stuck_client(app: &App) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /v1/events/stream?after=0 HTTP/1.1\r\nHost: {}\r\n\
                 Authorization: Bearer {ADMIN}\r\n\r\n",
                app.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_client_delays_no_one_and_shutdown_still_completes() {
    let app = Arc::new(
        spawn(Setup {
            // The production stall limit: shutdown must not wait for it.
            stream: StreamSettings::default(),
            small_send_buffer: true,
            tweak: None,
        })
        .await,
    );
    fill_log(&app, 1000).await;
    let stuck = stuck_client(&app).await;
    let mut healthy = Sse::open(&app, "", None, ADMIN).await;

    // The server keeps answering, and the healthy client keeps getting
    // every event, while the stuck one holds its connection.
    let before = app.last_seq().await;
    for i in 0..20 {
        let started = Instant::now();
        app.register(&format!("late-{i}"), "host-late").await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a registration took {:?}",
            started.elapsed()
        );
    }
    let log = app.log(before, "").await;
    let got = healthy.until_seq(*log_seqs(&log).last().unwrap()).await;
    assert_eq!(seqs(&got), log_seqs(&log));

    // Shutdown ends the healthy stream and closes the stuck connection
    // after a short grace instead of waiting for it.
    let mut app = Arc::into_inner(app).expect("no other handle");
    let started = Instant::now();
    timeout(Duration::from_secs(20), app.shutdown())
        .await
        .expect("shutdown completes with a stuck client connected");
    eprintln!("shutdown with a stuck client took {:?}", started.elapsed());
    healthy.until_end().await;
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_is_disconnected_and_resumes_from_its_last_id() {
    let app = Arc::new(
        spawn(Setup {
            stream: StreamSettings {
                write_stall: Duration::from_millis(500),
                ..StreamSettings::default()
            },
            small_send_buffer: true,
            tweak: None,
        })
        .await,
    );
    fill_log(&app, 1000).await;
    let last = app.last_seq().await;
    let mut stuck = stuck_client(&app).await;

    // Once the server gave up on it, the client finds what the kernel had
    // buffered, then the end of the connection: not the whole log.
    let mut raw = Vec::new();
    timeout(PATIENCE * 2, async {
        // Start reading only once the server had time to give up.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut buf = [0u8; 64 * 1024];
        loop {
            match stuck.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection of a client that stopped reading");
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 200 OK"),
        "{}",
        &text[..100.min(text.len())]
    );
    // Message ids in order, up to the last message that arrived whole.
    let mut ids = Vec::new();
    for block in text.split("\n\n") {
        let id = block
            .lines()
            .find_map(|l| l.strip_prefix("id: "))
            .and_then(|v| v.parse::<i64>().ok());
        if let (Some(id), true) = (id, block.contains("\ndata: {") && block.ends_with('}')) {
            ids.push(id);
        }
    }
    let resume_from = *ids.last().expect("some events arrived before the cut");
    assert!(
        resume_from < last,
        "the stuck client was cut off before the end of the log ({resume_from} < {last})"
    );

    // It resumes where it was cut off and gets the rest, then live events.
    let mut resumed = Sse::open(&app, "", Some(&resume_from.to_string()), ADMIN).await;
    let got = resumed.until_seq(last).await;
    let want: BTreeSet<i64> = log_seqs(&app.log(resume_from, "").await)
        .into_iter()
        .collect();
    assert_eq!(seqs(&got), want.into_iter().collect::<Vec<_>>());
}

#[tokio::test]
async fn shutdown_with_open_streams_completes_and_ends_them() {
    let mut app = spawn(Setup::default()).await;
    app.register("w", "host-a").await;
    let mut live = Sse::open(&app, "", None, ADMIN).await;
    let mut replaying = Sse::open(&app, "after=0", None, ADMIN).await;
    assert!(replaying.next(PATIENCE).await.is_some());
    timeout(PATIENCE, app.shutdown())
        .await
        .expect("shutdown completes with streams open");
    live.until_end().await;
    replaying.until_end().await;
}
