//! Connection timeouts and the connection cap, over real sockets: a slow
//! or idle client is closed once its configured time is up (and not
//! before), and a flood of idle connections does not lock out a heartbeat.
//!
//! Times are asserted as "closed, and not before the timeout", with a
//! generous upper bound: short configured timeouts, no guess at how fast a
//! busy machine is.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The configured timeout in these tests.
const SHORT: Duration = Duration::from_millis(1500);
/// Far longer than SHORT: the timeout a test does not exercise.
const LONG: &str = "1h";
/// How long "at once" may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(20);

/// Reads until the server closes the connection; returns what it sent.
/// Panics if it is still open after `PATIENCE`.
async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => panic!(
                "the connection is still open after {PATIENCE:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .expect("connects")
}

#[tokio::test]
async fn a_slow_request_head_is_closed_after_header_read_timeout() {
    let app = spawn_app_with(|c| {
        c.header_read_timeout = Some("1500ms".into());
        c.idle_timeout = Some(LONG.into());
    })
    .await;
    let mut tcp = connect(&app).await;
    let started = Instant::now();
    // One byte every 100 ms: progress, but never a whole head.
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let (mut rd, mut wr) = tcp.split();
    let trickle = async {
        for b in head {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let closed = async {
        let mut buf = [0u8; 1024];
        let deadline = Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
                Err(_) => panic!("a slow head kept its connection for {PATIENCE:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
            }
        }
    };
    tokio::select! {
        _ = closed => {}
        _ = trickle => panic!("the whole slow head was accepted"),
    }
    assert!(
        started.elapsed() >= SHORT,
        "closed after {:?}, before header_read_timeout",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_header_read_timeout() {
    let app = spawn_app_with(|c| {
        c.header_read_timeout = Some("1500ms".into());
        c.idle_timeout = Some(LONG.into());
    })
    .await;
    let mut tcp = connect(&app).await;
    let started = Instant::now();
    let got = read_to_close(&mut tcp).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(
        started.elapsed() >= SHORT,
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let app = spawn_app_with(|c| {
        c.idle_timeout = Some("1500ms".into());
        c.header_read_timeout = Some(LONG.into());
    })
    .await;
    let mut tcp = connect(&app).await;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The answer comes, then the connection stays open, idle.
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    let idle_from = Instant::now();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    read_to_close(&mut tcp).await;
    assert!(
        idle_from.elapsed() >= SHORT - Duration::from_millis(50),
        "closed after {:?} idle",
        idle_from.elapsed()
    );
}

#[tokio::test]
async fn a_slow_body_is_answered_408_after_body_read_timeout() {
    let app = spawn_app_with(|c| {
        c.body_read_timeout = Some("1500ms".into());
        c.header_read_timeout = Some(LONG.into());
        c.idle_timeout = Some(LONG.into());
    })
    .await;
    let mut tcp = connect(&app).await;
    let head = format!(
        "POST /v1/workers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{{",
        app.admin
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = tcp.split();
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(b" ").await.is_err() {
                // The server closed: wait for the reader to finish.
                std::future::pending::<()>().await;
            }
        }
    };
    let answer = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
                Err(_) => panic!("a slow body kept its connection for {PATIENCE:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return got,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let got = tokio::select! {
        got = answer => got,
        _ = trickle => unreachable!(),
    };
    assert!(started.elapsed() >= SHORT, "after {:?}", started.elapsed());
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body = &text[text.find("\r\n\r\n").expect("a body") + 4..];
    let v: Value = serde_json::from_str(body).expect("a JSON error body");
    assert_eq!(v["error"]["code"], "request_timeout", "{v}");
    // Nothing was registered.
    assert!(app.workers().await.is_empty());
}

/// Connections opened and left idle (sending nothing, or a partial head).
async fn flood(app: &TestApp, n: usize, partial_head: bool) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut tcp = connect(app).await;
        if partial_head {
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
        }
        held.push(tcp);
    }
    held
}

#[tokio::test]
async fn a_flood_of_idle_connections_does_not_lock_out_a_heartbeat() {
    let app = spawn_app_with(|c| {
        c.max_connections = Some("20".into());
        c.max_streams = Some("5".into());
        c.header_read_timeout = Some(LONG.into());
        c.idle_timeout = Some(LONG.into());
    })
    .await;
    let w = app.register("flooded", "host-a").await;
    // Four times the cap, some silent, some stuck in their head; none
    // times out during the test.
    let mut held = flood(&app, 40, false).await;
    held.extend(flood(&app, 40, true).await);
    // A new client's heartbeat is answered.
    let client = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = client
            .post(app.url(&format!("/v1/workers/{}/heartbeat", w.id)))
            .bearer_auth(&w.token)
            .send()
            .await
            .expect("the heartbeat is answered during the flood");
        assert_eq!(r.status(), 200);
        // Fresh connections each time: more flood in between.
        held.extend(flood(&app, 20, true).await);
    }
    drop(held);
}

#[tokio::test]
async fn at_the_cap_with_every_connection_busy_a_new_one_gets_503() {
    let app = spawn_app_with(|c| {
        c.max_connections = Some("4".into());
        c.max_streams = Some("3".into());
        c.max_streams_per_token = Some("3".into());
        c.header_read_timeout = Some(LONG.into());
        c.idle_timeout = Some(LONG.into());
    })
    .await;
    // Four connections busy: three event streams and a body arriving.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut tcp = connect(&app).await;
        let req = format!(
            "GET /v1/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            app.admin
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(tcp);
    }
    let mut tcp = connect(&app).await;
    // `Expect: 100-continue`: the interim answer shows that the handler is
    // reading the body, so the connection is busy.
    let head = format!(
        "POST /v1/workers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Expect: 100-continue\r\nContent-Length: 100\r\n\r\n",
        app.admin
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    held.push(tcp);
    let mut tcp = connect(&app).await;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = String::from_utf8_lossy(&read_to_close(&mut tcp).await).into_owned();
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.contains("\"unavailable\""), "{got}");
    assert!(got.to_ascii_lowercase().contains("retry-after: 1"), "{got}");
    drop(held);
}

#[tokio::test]
async fn requests_on_a_kept_alive_connection_are_unaffected() {
    // The timeouts do not end a connection that keeps working.
    let app = spawn_app_with(|c| {
        c.idle_timeout = Some("1500ms".into());
        c.header_read_timeout = Some("1500ms".into());
    })
    .await;
    let w = app.register("steady", "host-a").await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < SHORT * 2 {
        let r = client
            .post(app.url(&format!("/v1/workers/{}/heartbeat", w.id)))
            .bearer_auth(&w.token)
            .json(&json!({}))
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn failed_authentication_is_throttled_per_address_and_valid_heartbeats_continue() {
    let app = spawn_app_with(|c| {
        c.failed_auth_burst = Some("5".into());
        c.failed_auth_refill = Some("1h".into());
    })
    .await;
    let w = app.register("steady", "host-a").await;
    let bad = "rc_read_0000000000000000000000000000000000000000000000000000000000000000";
    let mut statuses = Vec::new();
    for i in 0..12 {
        let r = app.get("/v1/workers", bad).await;
        statuses.push(r.status);
        if r.status == 429 {
            assert_eq!(r.body["error"]["code"], "rate_limited", "{}", r.text);
            let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(retry >= 1, "Retry-After {retry}");
        }
        // A valid heartbeat in between is answered as ever.
        let hb = app.heartbeat_raw(&w.id, &w.token).await;
        assert_eq!(hb.status, 200, "heartbeat after {i} failures: {}", hb.text);
    }
    assert_eq!(statuses[..5], [401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // A request without a token counts as a failure too.
    assert_eq!(
        app.send(reqwest::Method::GET, "/v1/workers", None, None)
            .await
            .status,
        429
    );
    // Valid requests of every kind still pass from the same address.
    app.get("/v1/workers", &app.admin).await.expect(200);
    for _ in 0..50 {
        assert_eq!(app.heartbeat_raw(&w.id, &w.token).await.status, 200);
    }
}

/// A wrong metrics token is a failed authentication like any other: counted
/// per address, 429 beyond the burst; the right one still scrapes.
#[tokio::test]
async fn failed_scrapes_are_throttled_like_any_failed_authentication() {
    const SCRAPE: &str = "scrape-secret-0123456789";
    let app = spawn_app_with(|c| {
        c.metrics_token = Some(SCRAPE.into());
        c.failed_auth_burst = Some("3".into());
        c.failed_auth_refill = Some("1h".into());
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = app.get("/metrics", "scrape-secret-wrong-0123").await;
        if r.status == 429 {
            assert_eq!(r.body["error"]["code"], "rate_limited", "{}", r.text);
            assert!(r.headers.contains_key("retry-after"));
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses[..3], [401; 3], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    // The throttle is shared: an API request with a bad token is 429 too.
    let bad = "rc_read_0000000000000000000000000000000000000000000000000000000000000000";
    assert_eq!(app.get("/v1/workers", bad).await.status, 429);
    // Valid tokens pass.
    let r = app.get("/metrics", SCRAPE).await;
    assert_eq!(r.status, 200, "{}", r.text);
    app.get("/metrics", &app.admin).await.expect(200);
}

/// Sends `head` (a whole request head) and returns the status and body of
/// the answer, read until the server closes the connection.
async fn raw_request(app: &TestApp, head: &[u8]) -> (u16, Vec<u8>) {
    let mut tcp = connect(app).await;
    tcp.write_all(head).await.expect("sends the head");
    let got = read_to_close(&mut tcp).await;
    let text = String::from_utf8_lossy(&got);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = match got.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => got[i + 4..].to_vec(),
        None => Vec::new(),
    };
    (status, body)
}

fn error_code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "not the JSON error shape ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    v["error"]["code"].as_str().expect("error.code").to_owned()
}

/// `GET /healthz?pad=…` whose request target is exactly `len` bytes.
fn target_of(len: usize) -> String {
    let base = "/healthz?pad=";
    format!("{base}{}", "a".repeat(len - base.len()))
}

#[tokio::test]
async fn a_request_target_over_8_kib_is_414_in_the_error_shape() {
    let app = spawn_app().await;
    let at_limit = target_of(8 * 1024);
    let (status, body) = raw_request(
        &app,
        format!("GET {at_limit} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{:?}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"ok");

    let over = target_of(8 * 1024 + 1);
    let (status, body) = raw_request(
        &app,
        format!("GET {over} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 414);
    assert_eq!(error_code(&body), "uri_too_long");

    // An authenticated endpoint too, before any token is looked at.
    let over = format!("/v1/workers?cursor={}", "w".repeat(9000));
    let (status, body) = raw_request(
        &app,
        format!("GET {over} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 414);
    assert_eq!(error_code(&body), "uri_too_long");
}

#[tokio::test]
async fn header_fields_over_32_kib_are_431_in_the_error_shape() {
    let app = spawn_app().await;
    // Each field counts `name: value\r\n`; "Host: x" and "Connection: close"
    // come on top of the padding.
    let fixed = "Host: x\r\n".len() + "Connection: close\r\n".len();
    let pad = |total: usize| {
        let name = "X-Pad";
        let value_len = total - fixed - (name.len() + 4);
        format!("{name}: {}\r\n", "p".repeat(value_len))
    };
    let (status, body) = raw_request(
        &app,
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}\r\n",
            pad(32 * 1024)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{:?}", String::from_utf8_lossy(&body));

    let (status, body) = raw_request(
        &app,
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}\r\n",
            pad(32 * 1024 + 1)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 431);
    assert_eq!(error_code(&body), "headers_too_large");

    // Many small fields add up the same way; a body that was never read
    // does not keep the answer from the client.
    let many: String = (0..90)
        .map(|i| format!("X-Field-{i}: {}\r\n", "v".repeat(400)))
        .collect();
    let (status, body) = raw_request(
        &app,
        format!(
            "POST /v1/heartbeats HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
             content-length: 2\r\n{many}\r\n{{}}"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 431);
    assert_eq!(error_code(&body), "headers_too_large");
}

#[tokio::test]
async fn heads_beyond_what_hyper_parses_are_refused_by_hyper_itself() {
    // Documented in README: these never reach rollcall, and hyper's
    // answers carry no body.
    let app = spawn_app().await;
    let (status, body) = raw_request(
        &app,
        format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", target_of(70 * 1024)).as_bytes(),
    )
    .await;
    assert_eq!(status, 414);
    assert!(body.is_empty(), "{:?}", String::from_utf8_lossy(&body));

    let fields: String = (0..101).map(|i| format!("X-F{i}: v\r\n")).collect();
    let (status, body) = raw_request(
        &app,
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{fields}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 431);
    assert!(body.is_empty(), "{:?}", String::from_utf8_lossy(&body));
}
