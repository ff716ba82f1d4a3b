//! The dashboard in a real browser: Debian's headless Chromium, driven over
//! the DevTools protocol, against the real server on port 0.
//!
//! It opens the page, enters a token with the keyboard, watches a worker
//! that the test registers and heartbeats appear online without a reload,
//! then stops the heartbeats and watches the worker and its machine turn
//! offline (`stale`), still without a reload. Any console error, uncaught
//! exception or error log entry fails it. It saves screenshots to
//! `target/dashboard.png` (light) and `target/dashboard-dark.png`.
//!
//! Without Chromium at `/usr/bin/chromium` the test is skipped, loudly,
//! unless `ROLLCALL_REQUIRE_BROWSER` is set (CI sets it): then it fails.

#[path = "browser/cdp.rs"]
mod cdp;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rollcall_server::{RawConfig, Running, SystemClock};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const CHROMIUM: &str = "/usr/bin/chromium";
const ADMIN: &str = "rc_admin_browser-tests-admin-token-0123456789";
/// How long the page may take to show something; the machine may be busy.
const PATIENCE: Duration = Duration::from_secs(30);

/// The browser to use, or `None` (after saying so, loudly) to skip.
fn chromium_or_skip() -> Option<PathBuf> {
    let path = Path::new(CHROMIUM);
    if path.exists() {
        return Some(path.to_owned());
    }
    if std::env::var_os("ROLLCALL_REQUIRE_BROWSER").is_some() {
        panic!("ROLLCALL_REQUIRE_BROWSER is set but {CHROMIUM} does not exist; install chromium");
    }
    rollcall_store::testing::skip(&format!(
        "needs Chromium at {CHROMIUM} (apt-get install chromium); \
         CI sets ROLLCALL_REQUIRE_BROWSER=1 so that it never skips"
    ));
    None
}

/// Where screenshots go: the workspace's target directory.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
    }
}

/// The real server on a fresh data directory.
struct App {
    base: String,
    client: reqwest::Client,
    running: Option<Running>,
    _dir: TempDir,
}

async fn spawn(stale_after: &str) -> App {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let raw = RawConfig {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.path().to_str().expect("a UTF-8 path").into()),
        stale_after: Some(stale_after.into()),
        min_heartbeat_interval: Some("50ms".into()),
        max_stale_after: Some("1h".into()),
        flush_interval: Some("200ms".into()),
        sweep_interval: Some("1h".into()),
        cleanup_interval: Some("1h".into()),
        admin_token: Some(ADMIN.into()),
        ..RawConfig::default()
    };
    // A crash opens an incident, which the page shows in its banner. (The
    // channel is a closed port: the notifications wait in the outbox.)
    let alerting = RawConfig::from_toml(
        "alerting",
        "[[channel]]\nname = \"nowhere\"\nkind = \"slack\"\nurl = \"http://127.0.0.1:9/\"\n\
         [[alert]]\nname = \"down\"\nkind = \"worker_offline\"\nchannels = [\"nowhere\"]\n",
    )
    .expect("valid alerting");
    let raw = RawConfig {
        alert: alerting.alert,
        channel: alerting.channel,
        ..raw
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = rollcall_server::start(
        raw.resolve().expect("a valid config"),
        listener,
        Arc::new(SystemClock),
    )
    .await
    .expect("the server starts");
    App {
        base: format!("http://{}", running.addr()),
        client: reqwest::Client::builder()
            .timeout(PATIENCE)
            .build()
            .unwrap(),
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
    async fn register(&self, body: Value) -> Worker {
        let r = self
            .client
            .post(format!("{}/v1/workers", self.base))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .expect("registration answered");
        assert!(r.status().is_success(), "registration: {}", r.status());
        let v: Value = r.json().await.unwrap();
        Worker {
            id: v["worker"]["id"].as_str().unwrap().into(),
            token: v["token"].as_str().unwrap().into(),
        }
    }

    async fn post_as(&self, path: &str, token: &str, body: Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("answered");
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    /// Heartbeats `w` every `every` until the task is aborted.
    fn heartbeats(&self, w: &Worker, every: Duration) -> JoinHandle<()> {
        let (client, url, token) = (
            self.client.clone(),
            format!("{}/v1/workers/{}/heartbeat", self.base, w.id),
            w.token.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let _ = client.post(&url).bearer_auth(&token).send().await;
            }
        })
    }

    async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("a clean shutdown");
        }
    }
}

/// A JavaScript expression: the `data-status` (and reason) of a worker's
/// row and of a machine's section, as "online", "offline/stale", or "".
fn worker_state(id: &str) -> String {
    format!(
        "(() => {{ const r = document.querySelector('tr[data-worker-id=\"{id}\"]'); \
         return r && !r.hidden ? r.dataset.status + (r.dataset.reason ? '/' + r.dataset.reason : '') : ''; }})()"
    )
}

fn machine_state(id: &str) -> String {
    format!(
        "(() => {{ const m = document.querySelector('#machines article[data-machine-id=\"{id}\"]'); \
         return m && !m.hidden ? m.dataset.status : ''; }})()"
    )
}

/// A JavaScript expression: whether a machine is listed (the filters are
/// applied by the server, so a machine they hide is not on the page).
fn shown_machine(id: &str) -> String {
    format!("({} !== '')", machine_state(id))
}

async fn expect_state(page: &cdp::Page<'_>, what: &str, expression: &str, want: &str) {
    let check = format!("{expression} === {want:?}");
    if let Err(e) = page.wait_for(what, &check, PATIENCE).await {
        let now = page.eval(expression).await.unwrap_or_default();
        panic!("{e} (it shows {now})");
    }
}

/// Without a browser: the page and its assets are served without a token,
/// hold no data, and forbid loading anything from elsewhere.
#[tokio::test]
async fn the_page_and_its_assets_are_served_without_a_token() {
    let mut app = spawn("1h").await;
    let get = |path: &str| app.client.get(format!("{}{path}", app.base)).send();

    let page = get("/").await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(html.contains("/assets/dashboard.js") && !html.contains("wkr_"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing external"
    );

    for (path, kind) in [
        ("/assets/dashboard.js", "text/javascript"),
        ("/assets/dashboard.css", "text/css"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(kind), "{path}: {ct}");
    }
    let missing = get("/assets/nope.js").await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_workers_come_and_go_without_a_reload() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let mut app = spawn("1500ms").await;

    // A small fleet in every state, for the screenshot and the counts.
    let slow = Duration::from_millis(1000);
    let mut beating = Vec::new();
    for (name, machine, labels) in [
        (
            "render-01",
            "gpu-node-a",
            json!({"queue": "gpu", "pool": "render"}),
        ),
        (
            "render-02",
            "gpu-node-a",
            json!({"queue": "gpu", "pool": "render"}),
        ),
        (
            "render-03",
            "gpu-node-a",
            json!({"queue": "gpu", "pool": "render"}),
        ),
        ("ingest-1", "cpu-node-b", json!({"queue": "ingest"})),
        ("ingest-2", "cpu-node-b", json!({"queue": "ingest"})),
    ] {
        let w = app
            .register(json!({
                "name": name,
                "machine": {"id": machine, "hostname": format!("{machine}.fleet.example"),
                            "labels": {"zone": "eu-west-1"}},
                "labels": labels, "stale_after_ms": 60_000,
            }))
            .await;
        beating.push((name, w));
    }
    let mut tasks: Vec<JoinHandle<()>> = beating
        .iter()
        .filter(|(name, _)| *name != "ingest-2")
        .map(|(_, w)| app.heartbeats(w, slow))
        .collect();
    let render_02 = &beating[1].1;
    app.post_as(
        &format!("/v1/workers/{}/drain", render_02.id),
        &render_02.token,
        json!({}),
    )
    .await;
    let ingest_2 = &beating[4].1;
    app.post_as(
        &format!("/v1/workers/{}/offline", ingest_2.id),
        &ingest_2.token,
        json!({"reason": "shutdown"}),
    )
    .await;

    let browser = cdp::Browser::launch(&chromium)
        .await
        .expect("chromium starts");
    let page = browser.new_page(1280, 900).await.expect("a page");
    // Steady screenshots: no fade-in of new feed entries.
    page.emulate_media(&[("prefers-reduced-motion", "reduce")])
        .await
        .unwrap();
    page.navigate(&format!("{}/", app.base)).await.unwrap();
    page.wait_for(
        "the sign-in form",
        "document.readyState === 'complete' && !!document.getElementById('token')",
        PATIENCE,
    )
    .await
    .unwrap();
    // Survives only if the page never reloads.
    page.eval("window.__sameDocument = 'yes'").await.unwrap();
    let before_sign_in = page
        .eval("document.querySelectorAll('tr[data-worker-id]').length")
        .await
        .unwrap();
    assert_eq!(before_sign_in, json!(0), "no data without a token");

    // The token, entered with the keyboard.
    page.eval("document.getElementById('token').focus()")
        .await
        .unwrap();
    page.type_text(ADMIN).await.unwrap();
    page.press("Enter", 13).await.unwrap();
    page.wait_for(
        "the dashboard to load and go live",
        "document.getElementById('connection').dataset.state === 'live' \
         && document.getElementById('loading').hidden",
        PATIENCE,
    )
    .await
    .unwrap();
    let url = page.eval("location.href").await.unwrap();
    assert!(
        !url.to_string().contains(ADMIN),
        "the token is in the URL: {url}"
    );
    assert_eq!(
        page.eval("sessionStorage.getItem('rollcall.token')")
            .await
            .unwrap(),
        json!(ADMIN)
    );
    expect_state(
        &page,
        "render-02 draining",
        &worker_state(&render_02.id),
        "draining",
    )
    .await;
    expect_state(
        &page,
        "ingest-2 offline",
        &worker_state(&ingest_2.id),
        "offline/shutdown",
    )
    .await;

    // A worker registers after the page loaded, and heartbeats.
    let w = app
        .register(json!({
            "name": "batch-7", "machine": {"id": "edge-c", "labels": {"zone": "eu-west-2"}},
            "labels": {"queue": "batch"}, "heartbeat_interval_ms": 250, "stale_after_ms": 1500,
        }))
        .await;
    let beats = app.heartbeats(&w, Duration::from_millis(250));
    expect_state(&page, "batch-7 online", &worker_state(&w.id), "online").await;
    expect_state(&page, "edge-c online", &machine_state("edge-c"), "online").await;
    let counts = page
        .eval("document.getElementById('count-workers-online').textContent")
        .await
        .unwrap();
    assert_eq!(
        counts,
        json!("4"),
        "render-01, render-03, ingest-1, batch-7"
    );

    // The filter: text narrows to one machine; Escape clears it.
    page.eval("document.getElementById('search').focus()")
        .await
        .unwrap();
    page.type_text("batch").await.unwrap();
    page.wait_for(
        "the search to hide the other machines",
        &format!(
            "!{gpu} && {edge} === 'online'",
            gpu = shown_machine("gpu-node-a"),
            edge = machine_state("edge-c")
        ),
        PATIENCE,
    )
    .await
    .unwrap();
    page.press("Escape", 27).await.unwrap();
    page.wait_for(
        "the cleared search to show every machine",
        &shown_machine("gpu-node-a"),
        PATIENCE,
    )
    .await
    .unwrap();

    // Its heartbeats stop: the detector marks it stale, and the page shows
    // the worker and its machine offline, without a reload.
    beats.abort();
    expect_state(
        &page,
        "batch-7 offline (stale)",
        &worker_state(&w.id),
        "offline/stale",
    )
    .await;
    expect_state(&page, "edge-c offline", &machine_state("edge-c"), "offline").await;
    page.wait_for(
        "the stale transition in the events feed",
        "[...document.querySelectorAll('#events li[data-type=\"worker.offline\"]')]\
         .some(li => li.textContent.includes('batch-7') && li.textContent.includes('stale'))",
        PATIENCE,
    )
    .await
    .unwrap();
    assert_eq!(
        page.eval("window.__sameDocument").await.unwrap(),
        json!("yes"),
        "the page reloaded"
    );

    // Let the relative times tick once, then take the pictures (without
    // the focus ring the search box kept).
    page.eval("document.activeElement && document.activeElement.blur()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let light = page
        .screenshot(&target_dir().join("dashboard.png"))
        .await
        .unwrap();
    page.emulate_media(&[
        ("prefers-reduced-motion", "reduce"),
        ("prefers-color-scheme", "dark"),
    ])
    .await
    .unwrap();
    let dark = page
        .screenshot(&target_dir().join("dashboard-dark.png"))
        .await
        .unwrap();
    eprintln!("screenshots: {} and {}", light.display(), dark.display());

    let problems = browser.problems();
    assert!(
        problems.is_empty(),
        "the page reported errors:\n{}",
        problems.join("\n")
    );

    for t in tasks.drain(..) {
        t.abort();
    }
    drop(page);
    drop(browser);
    app.shutdown().await;
}

/// Not a pass/fail test: numbers for the dashboard with a generated fleet
/// of 100,000 workers on 1,000 machines (override with
/// `ROLLCALL_MEASURE_WORKERS` / `ROLLCALL_MEASURE_MACHINES`): the
/// summary's cost on the server, the first paint (sign-in, then reloads),
/// the time for a live change to appear (a worker on screen, and one that
/// only the counts show), and the page during a mass expiry (every worker
/// going stale at once: 100,000 events within seconds). Run it with
/// `cargo test --release -p rollcall-server --test browser -- --ignored --nocapture measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check; run by hand"]
async fn measure_the_dashboard_with_a_large_fleet() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let workers_n = env("ROLLCALL_MEASURE_WORKERS", 100_000);
    let machines_n = env("ROLLCALL_MEASURE_MACHINES", 1_000);
    const RUNS: usize = 5;
    const STALE_AFTER_MS: u64 = 120_000;
    let app = Arc::new(spawn("1h").await);

    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut ws = Vec::new();
                for i in (t..workers_n).step_by(32) {
                    let queue = ["gpu", "cpu", "io"][i % 3];
                    ws.push(
                        app.register(json!({
                            "name": format!("worker-{i:06}"),
                            "machine": {"id": format!("node-{:04}", i % machines_n)},
                            "labels": {"queue": queue},
                            "stale_after_ms": STALE_AFTER_MS,
                        }))
                        .await,
                    );
                }
                ws
            })
        })
        .collect();
    let mut workers = Vec::new();
    for t in tasks {
        workers.extend(t.await.unwrap());
    }
    eprintln!(
        "registered {workers_n} workers on {machines_n} machines in {:?}",
        started.elapsed()
    );
    // One heartbeat each, all at once (batch calls): from now on they all
    // share one deadline, and then they all die together.
    for chunk in workers.chunks(1000) {
        let beats: Vec<Value> = chunk
            .iter()
            .map(|w| json!({"worker_id": w.id, "token": w.token}))
            .collect();
        app.post_as("/v1/heartbeats", ADMIN, json!({"heartbeats": beats}))
            .await;
    }
    let deadline = Instant::now() + Duration::from_millis(STALE_AFTER_MS);

    // The summary on the server, as the dashboard asks for it.
    let mut server_ms = Vec::new();
    for _ in 0..RUNS * 2 {
        let t = Instant::now();
        let r = app
            .client
            .get(format!(
                "{}/v1/summary?limit=50&workers_limit=10&machine_workers=0",
                app.base
            ))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        server_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(body["counts"]["workers"]["total"], json!(workers_n));
    }
    eprintln!(
        "GET /v1/summary (limit=50): median {:.1} ms, max {:.1} ms",
        median(&server_ms),
        server_ms.iter().cloned().fold(0.0, f64::max)
    );

    let browser = cdp::Browser::launch(&chromium)
        .await
        .expect("chromium starts");
    let page = browser.new_page(1280, 900).await.unwrap();
    page.call("Performance.enable", json!({})).await.unwrap();
    page.navigate(&format!("{}/", app.base)).await.unwrap();
    page.wait_for("the page", "document.readyState === 'complete'", PATIENCE)
        .await
        .unwrap();
    // Null-safe: it is also evaluated while a reload replaces the document.
    let loaded = format!(
        "(() => {{ const l = document.getElementById('loading'); \
           const t = document.getElementById('count-workers-total'); \
           return !!l && l.hidden && !!t && t.dataset.value === '{workers_n}' \
             && document.querySelectorAll('#machines article').length > 0; }})()"
    );
    let t0 = Instant::now();
    page.eval("document.getElementById('token').focus()")
        .await
        .unwrap();
    page.type_text(ADMIN).await.unwrap();
    page.press("Enter", 13).await.unwrap();
    page.wait_for("the summary on screen", &loaded, Duration::from_secs(120))
        .await
        .unwrap();
    eprintln!(
        "sign-in to summary on screen: {:?} (as seen by the test, polling every 50 ms)",
        t0.elapsed()
    );

    // First paint: reloads (the token is in the tab's session storage).
    const PAINTED: &str =
        "(() => { const m = performance.getEntriesByName('rollcall:first-summary-painted')[0]; \
         const f = performance.getEntriesByName('first-contentful-paint')[0]; \
         return m ? [m.startTime, f ? f.startTime : null] : null; })()";
    let mut first_paint = Vec::new();
    let mut fcp = Vec::new();
    for _ in 0..RUNS {
        page.call("Page.reload", json!({})).await.unwrap();
        page.wait_for(
            "the reloaded summary painted",
            &format!("{loaded} && {PAINTED} !== null"),
            Duration::from_secs(120),
        )
        .await
        .unwrap();
        let v = page.eval(PAINTED).await.unwrap();
        first_paint.push(v[0].as_f64().unwrap());
        fcp.push(v[1].as_f64().unwrap_or(f64::NAN));
    }
    let articles = page
        .eval("document.querySelectorAll('#machines article').length")
        .await
        .unwrap();
    eprintln!(
        "first paint of the summary ({articles} machines on screen) after navigation: median {:.0} ms \
         of {RUNS} reloads {first_paint:.0?}; first contentful paint median {:.0} ms",
        median(&first_paint),
        median(&fcp)
    );

    // Frame gaps and long tasks, measured inside the page.
    const PERF: &str = "window.__perf = { gaps: [], long: 0 }; \
         new PerformanceObserver(l => { window.__perf.long += l.getEntries().length }) \
           .observe({ type: 'longtask', buffered: false }); \
         (() => { let last = performance.now(); \
           const f = (t) => { window.__perf.gaps.push(t - last); last = t; requestAnimationFrame(f); }; \
           requestAnimationFrame(f); })();";
    page.eval(PERF).await.unwrap();
    const FRAMES: &str = "(() => { const g = window.__perf.gaps.slice().sort((a, b) => a - b); \
         const p = (q) => Math.round(g[Math.min(g.length - 1, Math.floor(q * g.length))]); \
         const r = { frames: g.length, p50: p(0.5), p95: p(0.95), max: p(1), long_tasks: window.__perf.long }; \
         window.__perf = { gaps: [], long: 0 }; return r; })()";

    // A live change on screen: open the first machine, take its workers
    // offline one by one, and time each row's change in the page.
    page.eval("document.querySelector('#machines article .toggle').click()")
        .await
        .unwrap();
    page.wait_for(
        "the opened machine's workers",
        "document.querySelectorAll('#machines tr[data-worker-id]').length > 0",
        PATIENCE,
    )
    .await
    .unwrap();
    let shown: Vec<String> = serde_json::from_value(
        page.eval(
            "[...document.querySelectorAll('#machines tr[data-worker-id][data-status=\"online\"]')] \
             .map(r => r.dataset.workerId)",
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let mut on_screen = Vec::new();
    for id in shown.iter().take(RUNS) {
        let w = workers.iter().find(|w| &w.id == id).unwrap();
        page.eval(&format!(
            "(() => {{ const r = document.querySelector('tr[data-worker-id=\"{id}\"]'); \
             window.__changed = null; \
             new MutationObserver((_, o) => {{ if (r.dataset.status === 'offline') {{ \
               window.__changed = Date.now(); o.disconnect(); }} }}) \
               .observe(r, {{ attributes: true }}); }})()"
        ))
        .await
        .unwrap();
        let sent = unix_ms();
        app.post_as(
            &format!("/v1/workers/{}/offline", w.id),
            &w.token,
            json!({"reason": "shutdown"}),
        )
        .await;
        page.wait_for("the row offline", "window.__changed !== null", PATIENCE)
            .await
            .unwrap();
        let at = page
            .eval("window.__changed")
            .await
            .unwrap()
            .as_f64()
            .unwrap();
        on_screen.push(at - sent);
    }
    eprintln!(
        "a change of a worker on screen, from the request to the row: median {:.0} ms {on_screen:.0?}",
        median(&on_screen)
    );

    // A change that only the counts show (a worker of a closed machine).
    let mut counts_only = Vec::new();
    let mut offline_now = RUNS as u64;
    for w in workers.iter().rev().take(RUNS) {
        offline_now += 1;
        page.eval(&format!(
            "(() => {{ const c = document.getElementById('count-workers-offline'); \
             window.__changed = null; \
             new MutationObserver((_, o) => {{ if (c.dataset.value === '{offline_now}') {{ \
               window.__changed = Date.now(); o.disconnect(); }} }}) \
               .observe(c, {{ attributes: true }}); }})()"
        ))
        .await
        .unwrap();
        let sent = unix_ms();
        app.post_as(
            &format!("/v1/workers/{}/offline", w.id),
            &w.token,
            json!({"reason": "shutdown"}),
        )
        .await;
        page.wait_for("the counts", "window.__changed !== null", PATIENCE)
            .await
            .unwrap();
        let at = page
            .eval("window.__changed")
            .await
            .unwrap()
            .as_f64()
            .unwrap();
        counts_only.push(at - sent);
    }
    eprintln!(
        "a change of a worker not on screen, from the request to the counts: median {:.0} ms {counts_only:.0?}",
        median(&counts_only)
    );
    let idle = page.eval(FRAMES).await.unwrap();
    eprintln!("frames while idle and changing: {idle}");

    // The storm.
    assert!(
        Instant::now() < deadline - Duration::from_secs(2),
        "the measurements took longer than the workers' stale_after"
    );
    tokio::time::sleep_until(deadline - Duration::from_millis(500)).await;
    page.eval(FRAMES).await.unwrap();
    let before = main_thread_time(&page).await;
    let t1 = Instant::now();
    page.wait_for(
        "every worker offline on the page",
        // Cheap to evaluate: polling must not be what is measured.
        &format!(
            "document.getElementById('count-workers-offline').dataset.value === '{workers_n}' \
             && document.getElementById('count-machines-offline').dataset.value === '{machines_n}'"
        ),
        Duration::from_secs(300),
    )
    .await
    .unwrap();
    let storm = t1.elapsed();
    let during = page.eval(FRAMES).await.unwrap();
    let busy = busy_since(&page, &before).await;
    let heap = page.call("Performance.getMetrics", json!({})).await;
    let heap_mb = heap
        .ok()
        .and_then(|m| {
            m["metrics"].as_array().and_then(|a| {
                a.iter()
                    .find(|x| x["name"] == "JSHeapUsedSize")
                    .and_then(|x| x["value"].as_f64())
            })
        })
        .map(|b| (b / 1e5).round() / 10.0);
    let rows_offline = page
        .eval("document.querySelectorAll('#machines tr[data-status=\"offline\"]').length")
        .await
        .unwrap();
    eprintln!(
        "storm: {workers_n} workers and {machines_n} machines offline in the counts {storm:?} after \
         their deadline (-0.5 s); rows offline on screen {rows_offline}; frames {during}; main thread {busy}; \
         JS heap {heap_mb:?} MB"
    );
    let problems = browser.problems();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[s.len() / 2]
}

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// Main-thread time spent since `before`, by kind.
async fn busy_since(page: &cdp::Page<'_>, before: &[(String, f64)]) -> String {
    main_thread_time(page)
        .await
        .iter()
        .zip(before)
        .map(|((name, a), (_, b))| format!("{name} {:.0} ms", (a - b) * 1000.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The page's main-thread time so far, by kind, in seconds.
async fn main_thread_time(page: &cdp::Page<'_>) -> Vec<(String, f64)> {
    let m = page
        .call("Performance.getMetrics", json!({}))
        .await
        .unwrap();
    [
        "ScriptDuration",
        "RecalcStyleDuration",
        "LayoutDuration",
        "TaskDuration",
    ]
    .iter()
    .map(|name| {
        let v = m["metrics"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == *name))
            .and_then(|x| x["value"].as_f64())
            .unwrap_or(0.0);
        (name.trim_end_matches("Duration").to_owned(), v)
    })
    .collect()
}

/// The `rollcall` binary, for agents: `ROLLCALL_BIN`, or the one cargo
/// built next to this test (`cargo test --workspace` builds it first).
fn rollcall_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ROLLCALL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test's path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join("rollcall");
    assert!(
        bin.exists(),
        "{} does not exist: build it (cargo build -p rollcall) or set ROLLCALL_BIN",
        bin.display()
    );
    bin
}

/// `rollcall agent run` of a child that waits for `go` to exist, then
/// exits with `code`.
fn agent(app: &App, name: &str, machine: &str, go: &Path, code: u8) -> std::process::Child {
    std::process::Command::new(rollcall_bin())
        .args(["agent", "run", "--server", &app.base, "--token", ADMIN])
        .args(["--name", name, "--machine-id", machine, "--", "sh", "-c"])
        .arg(format!(
            "while [ ! -e '{}' ]; do sleep 0.02; done; exit {code}",
            go.display()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the agent starts")
}

impl App {
    async fn get_json(&self, path: &str) -> Value {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("answered");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Waits until the worker `name` on `machine` is offline; returns it.
    async fn wait_offline(&self, machine: &str, name: &str) -> Value {
        let started = Instant::now();
        loop {
            let m = self
                .get_json(&format!("/v1/summary?machine_id={machine}&limit=1"))
                .await;
            if let Some(w) = m["workers"]["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|w| w["name"] == name && w["status"] == "offline")
            {
                return w.clone();
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{machine}/{name} never went offline"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The Health view against the real health endpoints: an agent whose child
/// exits with 3 shows up as a crash, without a reload; an agent told to
/// stop (SIGTERM: a graceful `shutdown`) does not. Saves
/// `target/dashboard-health.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_view_shows_a_crash_without_a_reload() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let mut app = spawn("1500ms").await;
    let dir = tempfile::tempdir().unwrap();
    // A steady machine, so that the view has a machine without crashes.
    let steady = app
        .register(
            json!({"name": "web-1", "machine": {"id": "steady-node"}, "stale_after_ms": 60_000}),
        )
        .await;
    let beats = app.heartbeats(&steady, Duration::from_millis(1000));

    let browser = cdp::Browser::launch(&chromium)
        .await
        .expect("chromium starts");
    let page = browser.new_page(1280, 900).await.expect("a page");
    page.emulate_media(&[("prefers-reduced-motion", "reduce")])
        .await
        .unwrap();
    page.navigate(&format!("{}/", app.base)).await.unwrap();
    page.wait_for(
        "the sign-in form",
        "document.readyState === 'complete' && !!document.getElementById('token')",
        PATIENCE,
    )
    .await
    .unwrap();
    page.eval("window.__sameDocument = 'yes'").await.unwrap();
    page.eval("document.getElementById('token').focus()")
        .await
        .unwrap();
    page.type_text(ADMIN).await.unwrap();
    page.press("Enter", 13).await.unwrap();
    page.wait_for(
        "the Health tab",
        "document.getElementById('connection').dataset.state === 'live' \
         && !document.getElementById('tab-health').hidden",
        PATIENCE,
    )
    .await
    .unwrap();
    page.eval("document.getElementById('tab-health').click()")
        .await
        .unwrap();
    if let Err(e) = page
        .wait_for(
            "the Health view with the steady machine",
            "!document.getElementById('view-health').hidden \
             && !!document.querySelector('#health-machines article[data-machine-id=\"steady-node\"]')",
            PATIENCE,
        )
        .await
    {
        panic!("{e}; the page reported: {:?}", browser.problems());
    }

    // A crash and a graceful stop, by real agents.
    let crash_go = dir.path().join("crash");
    let calm_go = dir.path().join("calm");
    let mut crasher = agent(&app, "crasher", "crash-node", &crash_go, 3);
    let mut calm = agent(&app, "calm", "calm-node", &calm_go, 0);
    for machine in ["crash-node", "calm-node"] {
        let started = Instant::now();
        while app
            .get_json(&format!("/v1/summary?machine_id={machine}&limit=1"))
            .await["matching"]["workers"]
            != 1
        {
            assert!(
                started.elapsed() < PATIENCE,
                "the agent on {machine} never registered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The graceful one is told to stop (SIGTERM): it says goodbye.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &calm.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    std::fs::write(&crash_go, "").unwrap();
    calm.wait().unwrap();
    assert_eq!(crasher.wait().unwrap().code(), Some(3));
    let crashed = app.wait_offline("crash-node", "crasher").await;
    assert_eq!(crashed["offline_reason"], "exited");
    let stopped = app.wait_offline("calm-node", "calm").await;
    assert_eq!(stopped["offline_reason"], "shutdown");

    // The crash is an open incident in the banner; the graceful stop is not.
    page.wait_for(
        "the crash's incident in the banner, without a reload",
        "!document.getElementById('incidents').hidden \
         && document.getElementById('incidents-list').textContent.includes('crasher')",
        PATIENCE,
    )
    .await
    .unwrap();
    let banner = page
        .eval("document.getElementById('incidents-list').textContent")
        .await
        .unwrap();
    assert!(!banner.to_string().contains("calm"), "{banner}");
    // The opening is on the live feed too, named for the worker it is about.
    page.wait_for(
        "the incident's opening in the live feed",
        "[...document.querySelectorAll('#events li')].some(li => \
           li.textContent.includes('incident opened') && li.textContent.includes('crasher'))",
        PATIENCE,
    )
    .await
    .unwrap();
    page.wait_for(
        "the crash in the Health view, without a reload",
        "document.querySelector('#health-machines article[data-machine-id=\"crash-node\"]')\
         ?.dataset.crashes === '1'",
        PATIENCE,
    )
    .await
    .unwrap();
    // A load of the view that began after both stops were committed: sort
    // by downtime instead.
    let loads = page.eval("window.rollcall.health.loads").await.unwrap();
    page.eval("document.querySelector('input[name=\"health-sort\"][value=\"downtime\"]').click()")
        .await
        .unwrap();
    page.wait_for(
        "a load of the Health view sorted by downtime",
        &format!(
            "window.rollcall.health.sort === 'downtime' && window.rollcall.health.loads > {loads}"
        ),
        PATIENCE,
    )
    .await
    .unwrap();
    let calm_crashes = page
        .eval(
            "document.querySelector('#health-machines article[data-machine-id=\"calm-node\"]')\
             ?.dataset.crashes ?? 'absent'",
        )
        .await
        .unwrap();
    assert!(
        calm_crashes == json!("0") || calm_crashes == json!("absent"),
        "a graceful stop shown as a crash: {calm_crashes}"
    );
    assert_eq!(
        page.eval(
            "document.querySelector('#health-machines article[data-machine-id=\"crash-node\"] .hm-crashes').textContent"
        )
        .await
        .unwrap(),
        json!("1 crash (1 exited)")
    );

    // The machine opens to its workers' bars and its transitions.
    page.eval(
        "document.querySelector('#health-machines article[data-machine-id=\"crash-node\"] .toggle').click()",
    )
    .await
    .unwrap();
    page.wait_for(
        "the crashed worker's bars and the exit in the timeline",
        "(() => { const a = document.querySelector('#health-machines article[data-machine-id=\"crash-node\"]'); \
           const w = a.querySelector('.hw'); \
           return !!w && w.dataset.crashes === '1' && w.querySelectorAll('.bars i').length === 24 \
             && [...a.querySelectorAll('.timeline li')].some(li => li.dataset.type === 'worker.offline' \
                  && li.textContent.includes('exited')); })()",
        PATIENCE,
    )
    .await
    .unwrap();
    let day_bars = page
        .eval(
            "[...document.querySelectorAll('#health-machines article[data-machine-id=\"crash-node\"] .bars-day i')]\
             .map(i => i.dataset.level).join(',')",
        )
        .await
        .unwrap();
    let day_bars = day_bars.as_str().unwrap().to_owned();
    assert_eq!(day_bars.split(',').count(), 24, "{day_bars}");
    assert!(
        day_bars.ends_with("warn") || day_bars.ends_with("down"),
        "the hour of the crash is amber or red: {day_bars}"
    );
    assert!(
        day_bars.starts_with("none"),
        "the hours before it existed have no data: {day_bars}"
    );
    assert_eq!(
        page.eval("window.__sameDocument").await.unwrap(),
        json!("yes"),
        "the page reloaded"
    );

    page.eval("document.activeElement && document.activeElement.blur()")
        .await
        .unwrap();
    let shot = page
        .screenshot(&target_dir().join("dashboard-health.png"))
        .await
        .unwrap();
    eprintln!("screenshot: {}", shot.display());
    let problems = browser.problems();
    assert!(
        problems.is_empty(),
        "the page reported errors:\n{}",
        problems.join("\n")
    );
    beats.abort();
    drop(page);
    drop(browser);
    app.shutdown().await;
}
