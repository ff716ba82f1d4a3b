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
        "(() => {{ const m = document.querySelector('article[data-machine-id=\"{id}\"]'); \
         return m ? m.dataset.status : ''; }})()"
    )
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
        "document.querySelector('article[data-machine-id=\"gpu-node-a\"]').hidden \
         && !document.querySelector('article[data-machine-id=\"edge-c\"]').hidden",
        PATIENCE,
    )
    .await
    .unwrap();
    page.press("Escape", 27).await.unwrap();
    page.wait_for(
        "the cleared search to show every machine",
        "!document.querySelector('article[data-machine-id=\"gpu-node-a\"]').hidden",
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

/// Not a pass/fail test: numbers for the dashboard with 5,000 workers on 50
/// machines, first loading them, then following them all going stale at
/// once (a mass death: 10,000 events within a second or so). Run it with
/// `cargo test -p rollcall-server --test browser -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check; run by hand"]
async fn measure_the_dashboard_with_5000_workers() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    const WORKERS: usize = 5000;
    const MACHINES: usize = 50;
    const STALE_AFTER_MS: u64 = 60_000;
    let app = Arc::new(spawn("1h").await);

    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut ws = Vec::new();
                for i in (t..WORKERS).step_by(32) {
                    let queue = ["gpu", "cpu", "io"][i % 3];
                    ws.push(
                        app.register(json!({
                            "name": format!("worker-{i:04}"),
                            "machine": {"id": format!("node-{:02}", i % MACHINES)},
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
    eprintln!("registered {WORKERS} workers in {:?}", started.elapsed());
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

    let browser = cdp::Browser::launch(&chromium)
        .await
        .expect("chromium starts");
    let page = browser.new_page(1280, 900).await.unwrap();
    page.call("Performance.enable", json!({})).await.unwrap();
    page.navigate(&format!("{}/", app.base)).await.unwrap();
    page.wait_for("the page", "document.readyState === 'complete'", PATIENCE)
        .await
        .unwrap();
    // Frame gaps and long tasks, measured inside the page.
    page.eval(
        "window.__perf = { gaps: [], long: 0 }; \
         new PerformanceObserver(l => { window.__perf.long += l.getEntries().length }) \
           .observe({ type: 'longtask', buffered: false }); \
         (() => { let last = performance.now(); \
           const f = (t) => { window.__perf.gaps.push(t - last); last = t; requestAnimationFrame(f); }; \
           requestAnimationFrame(f); })();",
    )
    .await
    .unwrap();
    const FRAMES: &str = "(() => { const g = window.__perf.gaps.slice().sort((a, b) => a - b); \
         const p = (q) => Math.round(g[Math.min(g.length - 1, Math.floor(q * g.length))]); \
         const r = { frames: g.length, p50: p(0.5), p95: p(0.95), max: p(1), long_tasks: window.__perf.long }; \
         window.__perf = { gaps: [], long: 0 }; return r; })()";

    let before = main_thread_time(&page).await;
    page.call("Profiler.enable", json!({})).await.unwrap();
    page.call("Profiler.start", json!({})).await.unwrap();
    let t0 = Instant::now();
    page.eval("document.getElementById('token').focus()")
        .await
        .unwrap();
    page.type_text(ADMIN).await.unwrap();
    page.press("Enter", 13).await.unwrap();
    page.wait_for(
        "every worker on screen",
        &format!(
            "document.getElementById('count-workers-online').textContent === '{WORKERS}' \
             && window.rollcall.dashboard.dirtyWorkers.size === 0"
        ),
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let load = t0.elapsed();
    let prof = page.call("Profiler.stop", json!({})).await.unwrap();
    eprintln!(
        "first load, CPU profile: {}",
        top_functions(&prof["profile"])
    );
    let loaded = page.eval(FRAMES).await.unwrap();
    let busy = busy_since(&page, &before).await;
    eprintln!("first load: {WORKERS} rows in {load:?}; frames {loaded}; main thread {busy}");

    // Idle, with everything online: the cost of ticking.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = page.eval(FRAMES).await.unwrap();
    let tick = page
        .eval(
            "(() => { const t = performance.now(); window.rollcall.dashboard.tick(); \
             return performance.now() - t; })()",
        )
        .await
        .unwrap();
    eprintln!("idle: frames {idle}; one tick of the visible times {tick} ms");

    // The storm.
    tokio::time::sleep_until(deadline - Duration::from_millis(500)).await;
    page.eval(FRAMES).await.unwrap();
    let before = main_thread_time(&page).await;
    page.call("Profiler.enable", json!({})).await.unwrap();
    page.call("Profiler.start", json!({})).await.unwrap();
    let t1 = Instant::now();
    page.wait_for(
        "every worker offline on the page",
        // Cheap to evaluate: polling must not be what is measured.
        &format!(
            "document.getElementById('count-workers-offline').textContent === '{WORKERS}' \
             && document.getElementById('count-machines-offline').textContent === '{MACHINES}' \
             && window.rollcall.dashboard.dirtyWorkers.size === 0"
        ),
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let storm = t1.elapsed();
    assert_eq!(
        page.eval("document.querySelectorAll('tr[data-status=\"offline\"]').length")
            .await
            .unwrap(),
        json!(WORKERS)
    );
    let prof = page.call("Profiler.stop", json!({})).await.unwrap();
    eprintln!("storm, CPU profile: {}", top_functions(&prof["profile"]));
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
    eprintln!(
        "storm: {WORKERS} workers and {MACHINES} machines offline on the page {storm:?} after \
         their deadline (-0.5 s); frames {during}; main thread {busy}; JS heap {heap_mb:?} MB"
    );
    let problems = browser.problems();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
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

/// The functions that took the most samples of a CPU profile, in percent
/// (`(program)` is the browser's own work: style, layout, paint).
fn top_functions(profile: &Value) -> String {
    let mut by_name: std::collections::HashMap<String, u64> = Default::default();
    let mut total = 0;
    for n in profile["nodes"].as_array().into_iter().flatten() {
        let f = &n["callFrame"];
        let name = format!(
            "{}:{}",
            f["functionName"].as_str().unwrap_or(""),
            f["lineNumber"]
        );
        let hits = n["hitCount"].as_u64().unwrap_or(0);
        total += hits;
        *by_name.entry(name).or_default() += hits;
    }
    let mut top: Vec<_> = by_name.into_iter().collect();
    top.sort_by_key(|(_, hits)| std::cmp::Reverse(*hits));
    top.iter()
        .take(12)
        .map(|(n, h)| format!("{n} {:.0}%", *h as f64 * 100.0 / total.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}
