//! A real browser on the chat demo page, through Ringway: headless Chromium
//! loads `examples/chat/index.html` from a `ringway-chat` backend, connects
//! through a data-plane shard, chats, and, when a snapshot moves its room to
//! the other backend, reads the 1012 close and its `retry-after-ms=` hint
//! and reconnects by itself.
//!
//! Chromium is driven over the Chrome DevTools Protocol, spoken with
//! tokio-tungstenite: `Target.attachToTarget` (flattened sessions),
//! `Page.navigate`, and `Runtime.evaluate` polling `window.ringwayChat`,
//! the page's state.
//!
//! Runs when Chromium is at `/usr/bin/chromium` (`apt-get install
//! chromium`), or wherever `RINGWAY_CHROMIUM` says; otherwise it says so and
//! passes.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, PoisonError, mpsc as std_mpsc},
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use ringway_control::proto as v1;
use ringway_dataplane::routing::{Rendezvous, hash_key};
use ringway_e2e::fleet::{Binaries, Fleet, ShardSettings, TempDir};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

/// Where Debian puts Chromium.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// How long Chromium may take to start, and the page to do each step. The
/// steps take well under a second each; the margin is for a loaded
/// 2-core machine.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// One DevTools call's deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Between two looks at the page's state.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// The room the page joins.
const ROOM: &str = "lobby";

#[tokio::test]
async fn the_chat_page_reconnects_by_itself_when_its_room_moves_to_another_backend() {
    let Some(chromium) = chromium() else {
        return;
    };
    // Quick drains: one connection, closed within 0.2 s of the snapshot.
    // The fleet's shards hint `retry-after-ms=` of at most 100 ms.
    let settings = ShardSettings {
        drain: v1::DrainSettings {
            window_ms: 200,
            close_timeout_ms: 2_000,
            max_closes_per_second: 1_000,
        },
        ..ShardSettings::default()
    };
    let binaries = Binaries::beside(env!("CARGO_BIN_EXE_ringway-echo")).expect("binaries");
    let mut fleet = Fleet::start_with(binaries, 1, 0, settings)
        .await
        .expect("a shard");
    let chat = Path::new(env!("CARGO_BIN_EXE_ringway-chat"));
    for _ in 0..2 {
        fleet.add_backend_with(chat).await.expect("a chat backend");
    }
    let snapshot = fleet.snapshot(&[0], &[], 0, &[0, 1]);
    fleet.push(&snapshot).await.expect("pushed");
    fleet.wait_ready(&[0]).await.expect("ready");

    let browser = match Chromium::start(&chromium).await {
        Ok(browser) => browser,
        Err(e) => panic!("{e:#}"),
    };
    let mut page = None;
    let result = scenario(&mut fleet, &browser, &mut page).await;
    if let Err(e) = result {
        let events = page.map(|p: Page| p.events.join("\n")).unwrap_or_default();
        panic!(
            "{e:#}\n\n--- page console ---\n{events}\n\n--- shard log ---\n{}\n--- chromium log ---\n{}",
            fleet.log(0),
            browser.log()
        );
    }
}

/// The user's story, step by step.
async fn scenario(
    fleet: &mut Fleet,
    browser: &Chromium,
    page: &mut Option<Page>,
) -> anyhow::Result<()> {
    // Where the room lands, from the routing contract, not from the shard.
    let ids = [fleet.backends[0].id.clone(), fleet.backends[1].id.clone()];
    let first = Rendezvous::new(&ids)
        .pick(hash_key(ROOM.as_bytes()))
        .context("no backend")?;
    let (first, other) = (first, 1 - first);

    let url = format!(
        "http://{}/?gateway=ws://{}&room={ROOM}",
        fleet.backends[other].address, fleet.shards[0].client
    );
    let page = page.insert(Page::open(&browser.devtools_url, &url).await?);

    // 1. The page connects through Ringway and gets its backend's welcome.
    let state = page
        .wait_for("the page is welcomed", |s| s["backend"].is_string())
        .await?;
    ensure!(
        state["backend"] == ids[first].as_str(),
        "the room should be on {}, the page says {}",
        ids[first],
        state["backend"]
    );
    ensure!(
        state["url"] == format!("ws://{}/chat?room={ROOM}", fleet.shards[0].client),
        "the page dialed {} instead of the gateway",
        state["url"]
    );

    // 2. A message comes back, relayed by the room's backend.
    page.say("hello through ringway").await?;
    page.wait_for("the first message comes back", |s| {
        has_message(s, "hello through ringway", &ids[first])
    })
    .await?;

    // 3. The room's backend leaves: the page is closed with 1012 and a hint,
    //    and reconnects by itself to the other backend.
    let snapshot = fleet.snapshot(&[0], &[], 0, &[other]);
    let draining = fleet.push(&snapshot).await?;
    ensure!(
        draining == [1],
        "the snapshot should drain the page's connection only, drained {draining:?}"
    );
    let state = page
        .wait_for("the page reconnects to the other backend", |s| {
            s["connected"] == true && s["backend"] == ids[other].as_str()
        })
        .await?;
    let closes = state["closes"].as_array().context("closes")?;
    ensure!(
        closes.len() == 1,
        "one close expected, the page saw {closes:?}"
    );
    ensure!(closes[0]["code"] == 1012, "close {}", closes[0]);
    let reason = closes[0]["reason"].as_str().unwrap_or_default();
    let hint = reason
        .strip_prefix("key moved; retry-after-ms=")
        .and_then(|ms| ms.parse::<u64>().ok());
    ensure!(
        hint.is_some_and(|ms| ms <= 10_000),
        "the close reason should carry the reconnect hint: {reason:?}"
    );
    ensure!(
        state["reconnects"] == 1,
        "one reconnect expected: {}",
        state["reconnects"]
    );

    // 4. Chatting goes on, on the other backend.
    page.say("hello again").await?;
    let state = page
        .wait_for("the second message comes back", |s| {
            has_message(s, "hello again", &ids[other])
        })
        .await?;
    let welcomes: Vec<&Value> = state["received"]
        .as_array()
        .context("received")?
        .iter()
        .filter(|m| m["type"] == "welcome")
        .map(|m| &m["backend"])
        .collect();
    ensure!(
        welcomes == [ids[first].as_str(), ids[other].as_str()],
        "welcomes from {welcomes:?}"
    );

    // 5. What the user reads in the page's log.
    let text = page
        .evaluate("document.getElementById('log').innerText")
        .await?;
    let text = text.as_str().unwrap_or_default();
    for line in [
        format!("joined room {ROOM} on backend {}", ids[first]),
        format!("[{}] hello through ringway", ids[first]),
        "closed 1012 key moved; retry-after-ms=".to_owned(),
        format!("joined room {ROOM} on backend {}", ids[other]),
        format!("[{}] hello again", ids[other]),
    ] {
        ensure!(text.contains(&line), "the log lacks {line:?}:\n{text}");
    }
    Ok(())
}

/// Whether the page received `text` relayed by `backend`.
fn has_message(state: &Value, text: &str, backend: &str) -> bool {
    state["received"].as_array().is_some_and(|received| {
        received
            .iter()
            .any(|m| m["type"] == "message" && m["text"] == text && m["backend"] == backend)
    })
}

/// Chromium's path, or `None` (after saying that the test is skipped) when
/// it is not installed.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RINGWAY_CHROMIUM").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "RINGWAY_CHROMIUM={} does not exist",
            path.display()
        );
        return Some(path);
    }
    let path = PathBuf::from(DEFAULT_CHROMIUM);
    if path.exists() {
        return Some(path);
    }
    println!(
        "skipped: chromium not found at {DEFAULT_CHROMIUM} (apt-get install chromium, or set RINGWAY_CHROMIUM) — the browser test did not run"
    );
    None
}

/// A headless Chromium with a fresh profile, killed and its profile removed
/// on drop. It stays in the test's process group, so that nextest's kill of
/// a hung test reaches it too.
struct Chromium {
    child: Child,
    /// The browser's DevTools WebSocket.
    devtools_url: String,
    log: Arc<Mutex<String>>,
    /// Signals the end of Chromium's stderr: every process of it is gone.
    stderr_closed: std_mpsc::Receiver<()>,
    _profile: TempDir,
}

/// Chromium's log kept for a failure message: the last this many bytes.
const LOG_BYTES: usize = 64 << 10;

impl Chromium {
    async fn start(path: &Path) -> anyhow::Result<Self> {
        let profile = TempDir::new("ringway-chromium")?;
        let mut child = Command::new(path)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-dev-shm-usage",
                "--no-proxy-server",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let log = Arc::new(Mutex::new(String::new()));
        let (url_tx, url_rx) = tokio::sync::oneshot::channel();
        let (closed_tx, stderr_closed) = std_mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut url_tx = Some(url_tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    // A machine without D-Bus makes Chromium complain at
                    // length; none of it matters here.
                    if line.contains(":ERROR:dbus/") {
                        continue;
                    }
                    if let Some(url) = line.split("DevTools listening on ").nth(1)
                        && let Some(tx) = url_tx.take()
                    {
                        let _ = tx.send(url.trim().to_owned());
                    }
                    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                    log.push_str(&line);
                    log.push('\n');
                    if log.len() > LOG_BYTES {
                        let mut cut = log.len() - LOG_BYTES / 2;
                        while !log.is_char_boundary(cut) {
                            cut += 1;
                        }
                        log.replace_range(..cut, "[...]\n");
                    }
                }
                let _ = closed_tx.send(());
            });
        }
        let mut browser = Self {
            child,
            devtools_url: String::new(),
            log,
            stderr_closed,
            _profile: profile,
        };
        match tokio::time::timeout(STEP_TIMEOUT, url_rx).await {
            Ok(Ok(url)) => browser.devtools_url = url,
            Ok(Err(_)) => bail!(
                "chromium exited before it opened DevTools:\n{}",
                browser.log()
            ),
            Err(_) => bail!(
                "chromium did not open DevTools within {STEP_TIMEOUT:?}:\n{}",
                browser.log()
            ),
        }
        Ok(browser)
    }

    fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Its helper processes (renderer, GPU, utility) exit with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        // They share its stderr: once it is closed, no process of the
        // browser is left to write to the profile.
        let _ = self.stderr_closed.recv_timeout(Duration::from_secs(5));
    }
}

type DevTools = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One page target of the browser, attached over a flattened session.
struct Page {
    ws: DevTools,
    session: String,
    next_id: u64,
    /// Console messages and exceptions of the page, for failure messages.
    events: Vec<String>,
}

impl Page {
    /// Attaches to the browser's page and navigates it to `url`.
    async fn open(devtools_url: &str, url: &str) -> anyhow::Result<Self> {
        let (ws, _) =
            tokio::time::timeout(CALL_TIMEOUT, tokio_tungstenite::connect_async(devtools_url))
                .await
                .context("connecting to DevTools timed out")?
                .with_context(|| format!("connecting to DevTools at {devtools_url}"))?;
        let mut page = Self {
            ws,
            session: String::new(),
            next_id: 0,
            events: Vec::new(),
        };
        let targets = page.call("Target.getTargets", json!({})).await?;
        let existing = targets["targetInfos"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["targetId"].as_str())
            .map(str::to_owned);
        let target = match existing {
            Some(id) => id,
            None => page
                .call("Target.createTarget", json!({"url": "about:blank"}))
                .await?["targetId"]
                .as_str()
                .context("Target.createTarget gave no targetId")?
                .to_owned(),
        };
        let attached = page
            .call(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await?;
        page.session = attached["sessionId"]
            .as_str()
            .context("Target.attachToTarget gave no sessionId")?
            .to_owned();
        page.call("Runtime.enable", json!({})).await?;
        let navigated = page.call("Page.navigate", json!({"url": url})).await?;
        if let Some(error) = navigated["errorText"].as_str() {
            bail!("navigating to {url}: {error}");
        }
        Ok(page)
    }

    /// Sends one command (in the page's session once attached) and waits
    /// for its answer, keeping the page's console events on the way.
    async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            command["sessionId"] = json!(self.session);
        }
        let answer = tokio::time::timeout(CALL_TIMEOUT, async {
            self.ws.send(Message::text(command.to_string())).await?;
            loop {
                let Some(message) = self.ws.next().await else {
                    bail!("DevTools closed its WebSocket");
                };
                let Message::Text(text) = message? else {
                    continue;
                };
                let value: Value = serde_json::from_str(text.as_str())?;
                if value["id"] == id {
                    return Ok(value);
                }
                self.keep_event(&value);
            }
        })
        .await
        .with_context(|| format!("{method} had no answer within {CALL_TIMEOUT:?}"))??;
        if let Some(error) = answer.get("error") {
            bail!("{method}: {error}");
        }
        Ok(answer["result"].clone())
    }

    fn keep_event(&mut self, event: &Value) {
        let params = &event["params"];
        let line = match event["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = params["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| match &a["value"] {
                        Value::String(s) => s.clone(),
                        Value::Null => a["description"].to_string(),
                        v => v.to_string(),
                    })
                    .collect();
                format!("console.{}: {}", params["type"], args.join(" "))
            }
            Some("Runtime.exceptionThrown") => {
                let details = &params["exceptionDetails"];
                format!(
                    "exception: {} {}",
                    details["text"], details["exception"]["description"]
                )
            }
            Some(m @ ("Target.detachedFromTarget" | "Inspector.detached")) => m.to_owned(),
            _ => return,
        };
        if self.events.len() < 500 {
            self.events.push(line);
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn evaluate(&mut self, expression: &str) -> anyhow::Result<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await?;
        if let Some(details) = result.get("exceptionDetails") {
            bail!("evaluating {expression}: {details}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// `window.ringwayChat` as JSON (without its `send` function), or null
    /// before the page has set it up.
    async fn state(&mut self) -> anyhow::Result<Value> {
        let text = self
            .evaluate("JSON.stringify(window.ringwayChat ?? null)")
            .await?;
        Ok(serde_json::from_str(text.as_str().unwrap_or("null"))?)
    }

    /// Polls the page's state until `done` holds; fails after
    /// [`STEP_TIMEOUT`] naming `what` and the last state seen.
    async fn wait_for(
        &mut self,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            let state = self.state().await?;
            if state.is_object() && done(&state) {
                return Ok(state);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("expected {what} within {STEP_TIMEOUT:?}; the page's state: {state:#}");
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Sends `text` as a user does: types it into the message box and
    /// submits the form, which empties the box once the message is sent.
    async fn say(&mut self, text: &str) -> anyhow::Result<()> {
        let script = format!(
            "(() => {{ const box = document.getElementById('text'); box.value = {}; \
             document.getElementById('say').requestSubmit(); return box.value === ''; }})()",
            json!(text)
        );
        let sent = self.evaluate(&script).await?;
        ensure!(
            sent == true,
            "the page did not send {text:?} (not connected?)"
        );
        Ok(())
    }
}
