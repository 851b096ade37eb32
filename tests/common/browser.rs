//! A real browser for tests: Debian's `chromium` driven through `chromedriver` (started
//! on a free port by the test, killed when dropped) over WebDriver with fantoccini. The
//! browser's console is read through chromedriver's log endpoint, so CSP violations,
//! failed loads and script errors are all seen. Screenshots go under
//! `<target dir>/dashboard-screenshots/`.
//!
//! Also a second origin: a tiny actix-web server serving one HTML page, for the CORS
//! tests of a dashboard hosted elsewhere.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

/// One browser at a time per test binary: chromium is heavy on a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A headless chromium session.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    driver: tokio::process::Child,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `POST /session/{id}/se/log {"type": "browser"}`: the console entries since the
/// last call (chromedriver's extension; needs `goog:loggingPrefs`).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or("")))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

impl Browser {
    /// Start chromedriver and a headless chromium, or `None` (after a loud SKIPPED
    /// line) when they are not installed.
    pub async fn start(test: &str) -> Option<Browser> {
        if !on_path("chromium") || !on_path("chromedriver") {
            eprintln!(
                "SKIPPED: {test}: chromium and chromedriver are not installed \
                 (apt-get install chromium chromium-driver; .ci/install-browser.sh)"
            );
            return None;
        }
        let turn = ONE_AT_A_TIME.lock().await;
        let port = free_port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        while http.get(format!("{url}/status")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1000", "--no-first-run", "--disable-extensions"
                ]
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        // Plain HTTP: chromedriver listens on loopback.
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("WebDriver session");
        Some(Browser {
            client,
            driver,
            _turn: turn,
        })
    }

    /// Console entries of level SEVERE since the last call (CSP violations, failed
    /// loads, uncaught errors, console.error).
    pub async fn console_errors(&self) -> Vec<String> {
        let entries = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("browser log");
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Write a PNG screenshot to `<target dir>/dashboard-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Poll the JavaScript expression `js` until it is truthy; returns its value.
    pub async fn wait_js(&self, js: &str, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            // A condition that throws (an element not rendered yet: `null.textContent`)
            // is not true yet; what it threw is reported if it never becomes true.
            let v = self
                .client
                .execute(
                    &format!(
                        "try {{ return ({js}); }} catch (e) {{ return {{thrown: String(e)}}; }}"
                    ),
                    vec![],
                )
                .await
                .expect("execute");
            if let Some(thrown) = v.get("thrown") {
                if started.elapsed() > within {
                    let _ = self.screenshot("timeout").await;
                    panic!(
                        "not true after {within:?}: {js} threw {thrown} (screenshot: timeout.png)"
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
            if truthy {
                return v;
            }
            if started.elapsed() > within {
                let _ = self.screenshot("timeout").await;
                panic!("not true after {within:?}: {js} (screenshot: timeout.png)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Evaluate `js` once.
    pub async fn js(&self, js: &str) -> Value {
        self.client
            .execute(&format!("return ({js});"), vec![])
            .await
            .expect("execute")
    }

    /// The element with `id`.
    pub async fn by_id(&self, id: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"))
    }

    /// End the session and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }
}

/// Where screenshots go: `$CARGO_TARGET_DIR` or the crate's `target/`.
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("dashboard-screenshots")
}

/// A second origin: serves `page` at `/` from its own loopback port.
pub struct SecondOrigin {
    /// `http://127.0.0.1:<port>`: the page's origin.
    pub origin: String,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SecondOrigin {
    /// Start serving `page` (HTML).
    pub async fn start(page: &'static str) -> SecondOrigin {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let sys = actix_web::rt::System::new();
            sys.block_on(async move {
                let server = HttpServer::new(move || {
                    App::new().route(
                        "/",
                        web::get().to(move || async move {
                            HttpResponse::Ok()
                                .content_type("text/html; charset=utf-8")
                                .body(page)
                        }),
                    )
                })
                .workers(1)
                .disable_signals()
                .shutdown_timeout(1)
                .bind(("127.0.0.1", 0))
                .expect("bind second origin");
                let port = server.addrs()[0].port();
                let server = server.run();
                tx.send((port, server.handle())).expect("send port");
                let _ = server.await;
            });
        });
        let (port, handle) = tokio::task::spawn_blocking(move || rx.recv())
            .await
            .expect("join")
            .expect("second origin started");
        SecondOrigin {
            origin: format!("http://127.0.0.1:{port}"),
            handle,
            thread: Some(thread),
        }
    }

    /// Stop serving.
    pub async fn stop(mut self) {
        self.handle.stop(false).await;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}
