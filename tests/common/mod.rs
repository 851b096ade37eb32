//! Test harness: boots the real application (its own thread and actix System, port 0,
//! a temporary SQLite file, or a fresh PostgreSQL database with
//! `VULCAN_TEST_STORE=postgres`: see [`store`]) and talks to it over HTTP.
#![allow(dead_code)]

pub mod binary;
pub mod browser;
pub mod cli;
pub mod cluster;
pub mod gvisor;
pub mod oci;
pub mod proxy;
pub mod receiver;
pub mod scripted;
pub mod sse;
pub mod store;
pub mod tmpfs;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vulcan::backends::BackendFactory;
use vulcan::config::Config;
use vulcan::startup::{builtin_backends, AppThread};

/// A running application.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// A client with no default auth header.
    pub client: reqwest::Client,
    /// The SQLite file (on PostgreSQL: the name of the app's database, see [`store`]).
    pub db_path: PathBuf,
    dir: Option<tempfile::TempDir>,
    /// `None` once stopped.
    app: Option<AppThread>,
}

/// Configures a [`TestApp`].
pub struct TestAppBuilder {
    env: HashMap<String, String>,
    backends: Vec<BackendFactory>,
    builtin: bool,
    db_path: Option<PathBuf>,
}

impl TestAppBuilder {
    /// Set a configuration variable (as `VULCAN_*` environment would).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    /// Register a backend (in addition to the built-ins when enabled).
    pub fn backend(mut self, f: BackendFactory) -> Self {
        self.backends.push(f);
        self
    }

    /// Also register the built-in backends enabled by the configuration.
    pub fn builtin(mut self) -> Self {
        self.builtin = true;
        self
    }

    /// Use this database file (to restart on the same data).
    pub fn db(mut self, path: PathBuf) -> Self {
        self.db_path = Some(path);
        self
    }

    /// Boot the app and wait until it listens.
    pub async fn spawn(self) -> TestApp {
        self.try_spawn().await.expect("app started")
    }

    /// Boot the app, or answer why it refused to start.
    pub async fn try_spawn(mut self) -> Result<TestApp, vulcan::startup::StartupError> {
        let _ = env_logger::builder().is_test(true).try_init();
        let (dir, db_path) = match self.db_path.take() {
            Some(p) => (None, p),
            None => {
                let dir = tempfile::tempdir().expect("temp dir");
                let p = dir.path().join("vulcan.db");
                (Some(dir), p)
            }
        };
        let mut env = self.env.clone();
        env.entry("VULCAN_LISTEN_ADDR".into())
            .or_insert("127.0.0.1:0".into());
        env.insert(
            "VULCAN_DB_PATH".into(),
            db_path.to_string_lossy().into_owned(),
        );
        if let Some(url) = store::db_url(&db_path) {
            env.entry("VULCAN_DB_URL".into()).or_insert(url);
        }
        env.entry("VULCAN_NODE_ID".into())
            .or_insert("test-node".into());
        env.entry("VULCAN_SHUTDOWN_TIMEOUT_S".into())
            .or_insert("2".into());
        // Isolate workers are `vulcan worker` processes; this test binary is not vulcan.
        env.entry("VULCAN_BACKENDS__ISOLATE__WORKER_PATH".into())
            .or_insert(worker_path().into());
        let config = Config::load_from(env).expect("test config");
        let mut backends = if self.builtin {
            builtin_backends(&config)
        } else {
            Vec::new()
        };
        backends.extend(self.backends);
        let app = tokio::task::spawn_blocking(move || AppThread::spawn(config, backends))
            .await
            .expect("join")?;
        Ok(TestApp {
            address: format!("http://127.0.0.1:{}", app.port()),
            client: reqwest::Client::new(),
            db_path,
            dir,
            app: Some(app),
        })
    }
}

/// The vulcan binary Cargo built for these tests (isolate workers run from it).
pub fn worker_path() -> &'static str {
    env!("CARGO_BIN_EXE_vulcan")
}

/// Start configuring a test app (no built-in backends unless asked).
pub fn app() -> TestAppBuilder {
    TestAppBuilder {
        env: HashMap::new(),
        backends: Vec::new(),
        builtin: false,
        db_path: None,
    }
}

impl TestApp {
    /// `address + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// POST JSON.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// GET.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// GET and parse JSON, asserting the status.
    pub async fn get_json(&self, path: &str, status: u16) -> Value {
        let res = self.get(path).await;
        assert_eq!(res.status().as_u16(), status, "GET {path}");
        res.json().await.expect("json")
    }

    /// Submit asynchronously; returns the 202 body.
    pub async fn submit_async(&self, body: &Value) -> Value {
        let res = self.post("/v1/workloads/async", body).await;
        let status = res.status().as_u16();
        let v: Value = res.json().await.expect("json");
        assert_eq!(status, 202, "{v}");
        v
    }

    /// Poll until the workload is terminal (or panic after `within`).
    pub async fn wait_terminal(&self, id: &str, within: Duration) -> Value {
        let start = Instant::now();
        loop {
            let w = self.get_json(&format!("/v1/workloads/{id}"), 200).await;
            if ["completed", "failed", "killed"].contains(&w["status"].as_str().unwrap_or("")) {
                return w;
            }
            assert!(
                start.elapsed() < within,
                "workload {id} not terminal after {within:?}: {w}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Poll until the workload has `status`.
    pub async fn wait_status(&self, id: &str, status: &str, within: Duration) -> Value {
        let start = Instant::now();
        loop {
            let w = self.get_json(&format!("/v1/workloads/{id}"), 200).await;
            if w["status"] == status {
                return w;
            }
            assert!(
                start.elapsed() < within,
                "workload {id} not {status} after {within:?}: {w}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Number of rows in `table`, read straight from the database.
    pub fn count_rows(&self, table: &str) -> i64 {
        count_rows(&self.db_path, table)
    }

    /// Graceful stop (as on SIGTERM), waiting for the app thread to finish.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(mut app) = self.app.take() {
            app.handle().stop(true).await;
            tokio::task::spawn_blocking(move || app.join())
                .await
                .expect("join")
                .expect("app thread");
        }
        self.dir.take()
    }

    /// Abrupt stop: the actor system is torn down without any shutdown work, as in a
    /// crash. Returns the temp dir so the database survives for a restart.
    pub async fn crash(mut self) -> Option<tempfile::TempDir> {
        if let Some(app) = self.app.take() {
            tokio::task::spawn_blocking(move || app.crash())
                .await
                .expect("join")
                .expect("app thread");
        }
        self.dir.take()
    }
}

/// Count rows of `table` in the database of the app on `path`.
pub fn count_rows(path: &std::path::Path, table: &str) -> i64 {
    store::count_rows(path, table)
}

/// A node workload body (for the scripted backend the code is its script).
pub fn body(runtime: &str, code: &str) -> Value {
    json!({"runtime": runtime, "code": code})
}

/// Record a pending workload straight into the database at `db`, behind the running
/// server's back: it exists for every query but was never admitted (as while start-up
/// re-admits a backlog). Returns its id.
pub fn insert_unadmitted(db: &std::path::Path, backend: &str) -> String {
    let id = vulcan::model::WorkloadId::new();
    // Written as the server writes a pending node workload with the code `{}` and the
    // input `null`.
    store::execute(
        db,
        &format!(
            "INSERT INTO workloads (id, status, isolation, requested_isolation, backend, \
             runtime, node_id, input_hash, cpu_limit, mem_limit, timeout_s, created_at, \
             code, input) VALUES ('{id}', 'pending', 'isolate', 'auto', '{backend}', 'node', \
             'elsewhere', 'sha256:00', 1, 128, 30, '{}', '{{}}', {})",
            vulcan::model::format_time(&id.created_at()),
            store::blob_literal(b"null"),
        ),
    );
    id.to_string()
}

/// The value of the unlabelled metric `name` (e.g. `vulcan_log_topics`).
pub async fn gauge(app: &TestApp, name: &str) -> i64 {
    let text = app.get("/metrics").await.text().await.expect("metrics");
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as i64)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Poll until the metric `name` equals `want` (or panic after `within`).
pub async fn wait_gauge(app: &TestApp, name: &str, want: i64, within: Duration) {
    let start = Instant::now();
    loop {
        let got = gauge(app, name).await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{name} is {got}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until process `pid` has exited: gone, or a zombie its parent has not reaped yet
/// with every thread gone. `kill` returns once a signal is sent, and a killed
/// process's threads exit one by one (its leader shows as a zombie while the others
/// still hold its files); a test that kills a process and then relies on its death
/// waits here (a liveness bound of 30 s).
pub async fn wait_dead(pid: u32) {
    let start = std::time::Instant::now();
    while !process_dead(pid) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "process {pid} still alive"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Whether no thread of `pid` is alive (each is gone or a zombie).
fn process_dead(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        match std::fs::read_to_string(task.path().join("stat")) {
            // The state letter follows the command name in parentheses.
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
            Err(_) => true,
        }
    })
}
