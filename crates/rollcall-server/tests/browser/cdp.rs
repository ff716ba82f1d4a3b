//! A small client of the Chrome DevTools Protocol, enough to drive the
//! dashboard in headless Chromium: start the browser, open a page, evaluate
//! JavaScript, type, take screenshots, and collect every console error.
//!
//! The browser is started with `--remote-debugging-port=0`; it writes the
//! port it chose and the browser target's path to `DevToolsActivePort` in its
//! profile directory. One WebSocket carries everything; pages are attached
//! with `flatten: true`, so their commands carry a `sessionId`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

/// How long one protocol command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// A headless Chromium and the connection to it. Killed when dropped.
pub struct Browser {
    child: Child,
    profile: TempDir,
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_id: AtomicU64,
    problems: Arc<Mutex<Vec<String>>>,
}

/// One page (tab) of the browser.
pub struct Page<'a> {
    browser: &'a Browser,
    session: String,
}

impl Browser {
    /// Starts `chromium` headless with a fresh profile and connects.
    pub async fn launch(chromium: &Path) -> anyhow::Result<Browser> {
        let profile = tempfile::tempdir()?;
        let log = std::fs::File::create(profile.path().join("chromium.log"))?;
        let child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-quic",
                "--no-first-run",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", chromium.display()))?;
        let mut browser = Browser {
            child,
            profile,
            out: mpsc::unbounded_channel().0,
            pending: Arc::default(),
            next_id: AtomicU64::new(1),
            problems: Arc::default(),
        };
        let url = browser.devtools_url().await?;
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut outbox) = mpsc::unbounded_channel::<Message>();
        browser.out = out;
        tokio::spawn(async move {
            while let Some(m) = outbox.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let pending = browser.pending.clone();
        let problems = browser.problems.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(text) = m else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    let waiter = pending.lock().unwrap().remove(&id);
                    if let Some(w) = waiter {
                        let r = match v.get("error") {
                            Some(e) => Err(e.to_string()),
                            None => Ok(v["result"].clone()),
                        };
                        let _ = w.send(r);
                    }
                } else if let Some(p) = problem(&v) {
                    problems.lock().unwrap().push(p);
                }
            }
        });
        Ok(browser)
    }

    /// Waits for the browser to write its DevTools port.
    async fn devtools_url(&mut self) -> anyhow::Result<String> {
        let file = self.profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    return Ok(format!("ws://127.0.0.1:{}{}", port.trim(), path.trim()));
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "chromium exited ({status}) before it listened:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "chromium did not write DevToolsActivePort in 60 s:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What chromium wrote to stderr (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default()
    }

    /// Sends a command to the browser or, with `session`, to a page.
    pub async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.out
            .send(Message::Text(msg.to_string().into()))
            .map_err(|_| anyhow!("the DevTools connection is closed"))?;
        match timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => bail!("{method}: {e}"),
            Ok(Err(_)) => bail!("{method}: the DevTools connection closed"),
            Err(_) => bail!("{method}: no answer in {COMMAND_TIMEOUT:?}"),
        }
    }

    /// Opens a new page with a fixed viewport and console reporting on.
    pub async fn new_page(&self, width: u32, height: u32) -> anyhow::Result<Page<'_>> {
        let target = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {attached}"))?
            .to_owned();
        let page = Page {
            browser: self,
            session,
        };
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            page.call(domain, json!({})).await?;
        }
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await?;
        Ok(page)
    }

    /// Every console error, uncaught exception and error log entry so far.
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // kill_on_drop also does it; this makes it immediate.
        let _ = self.child.start_kill();
    }
}

/// A console error, an uncaught exception or an error log entry, described.
fn problem(v: &Value) -> Option<String> {
    let p = &v["params"];
    match v["method"].as_str()? {
        "Runtime.consoleAPICalled" if matches!(p["type"].as_str(), Some("error" | "assert")) => {
            let args: Vec<String> = p["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    a.get("value")
                        .map(|v| v.to_string())
                        .or_else(|| a["description"].as_str().map(str::to_owned))
                        .unwrap_or_default()
                })
                .collect();
            Some(format!(
                "console.{}: {}",
                p["type"].as_str()?,
                args.join(" ")
            ))
        }
        "Runtime.exceptionThrown" => {
            let d = &p["exceptionDetails"];
            Some(format!(
                "uncaught: {}",
                d["exception"]["description"]
                    .as_str()
                    .or(d["text"].as_str())
                    .unwrap_or("?")
            ))
        }
        "Log.entryAdded" if p["entry"]["level"] == "error" => Some(format!(
            "log ({}): {} {}",
            p["entry"]["source"].as_str().unwrap_or("?"),
            p["entry"]["text"].as_str().unwrap_or("?"),
            p["entry"]["url"].as_str().unwrap_or("")
        )),
        _ => None,
    }
}

impl Page<'_> {
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.browser.call(Some(&self.session), method, params).await
    }

    pub async fn navigate(&self, url: &str) -> anyhow::Result<()> {
        let r = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(e) = r.get("errorText") {
            bail!("navigating to {url}: {e}");
        }
        Ok(())
    }

    /// Evaluates `expression` (promises awaited) and returns its value.
    pub async fn eval(&self, expression: &str) -> anyhow::Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("evaluating {expression}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expression` until it is truthy; fails naming `what` after
    /// `within`.
    pub async fn wait_for(
        &self,
        what: &str,
        expression: &str,
        within: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let v = self.eval(expression).await?;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("waited {within:?} for {what}; last value {v}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types text into the focused element, as a keyboard would.
    pub async fn type_text(&self, text: &str) -> anyhow::Result<()> {
        self.call("Input.insertText", json!({"text": text})).await?;
        Ok(())
    }

    /// Presses and releases a key such as `Enter` or `Tab`.
    pub async fn press(&self, key: &str, code: u32) -> anyhow::Result<()> {
        let text = if key == "Enter" { "\r" } else { "" };
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({
                    "type": kind, "key": key, "code": key,
                    "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code,
                    "text": if kind == "keyDown" { text } else { "" },
                }),
            )
            .await?;
        }
        Ok(())
    }

    /// Emulates media features such as `prefers-color-scheme`.
    pub async fn emulate_media(&self, features: &[(&str, &str)]) -> anyhow::Result<()> {
        let features: Vec<Value> = features
            .iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect();
        self.call("Emulation.setEmulatedMedia", json!({"features": features}))
            .await?;
        Ok(())
    }

    /// Saves a PNG of the viewport.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<PathBuf> {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        let data = r["data"]
            .as_str()
            .ok_or_else(|| anyhow!("no screenshot data"))?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(path.to_owned())
    }
}
