//! The real `vulcan` binary as a child process: started with exactly the environment a
//! test gives it (nothing inherited but `PATH`), its log captured, killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running (or exited) `vulcan` process.
pub struct Binary {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// `http://127.0.0.1:<port>` once it listens.
    pub base: String,
}

/// Run `vulcan <args>` with `env` (and `PATH`) only; the log goes to a buffer.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vulcan"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start vulcan");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().expect("log").push(line);
        }
    });
    (child, log)
}

impl Binary {
    /// `vulcan serve` with `env` on a fresh database and a loopback port chosen by
    /// the OS (unless `env` names a listen address); waits until it listens.
    pub async fn serve(dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let db_path = dir.join("vulcan.db");
        let db = db_path.to_str().expect("utf8");
        let mut all: Vec<(&str, &str)> = vec![
            ("VULCAN_DB_PATH", db),
            ("VULCAN_BACKENDS__GVISOR__ENABLED", "false"),
            ("VULCAN_BACKENDS__MICROVM__ENABLED", "false"),
        ];
        let url = super::store::db_url(&db_path);
        if let Some(url) = &url {
            all.push(("VULCAN_DB_URL", url));
        }
        if !env.iter().any(|(k, _)| *k == "VULCAN_LISTEN_ADDR") {
            all.push(("VULCAN_LISTEN_ADDR", "127.0.0.1:0"));
        }
        all.extend_from_slice(env);
        let (child, log) = spawn(&["serve"], &all);
        let mut bin = Self {
            child,
            log,
            base: String::new(),
        };
        let started = Instant::now();
        let port = loop {
            if let Some(port) = bin.lines().iter().find_map(|l| {
                let addr = l.split("listening on ").nth(1)?;
                addr.rsplit_once(':')?.1.trim().parse::<u16>().ok()
            }) {
                break port;
            }
            if let Ok(Some(status)) = bin.child.try_wait() {
                panic!(
                    "vulcan exited ({status}) before listening:\n{}",
                    bin.log_text()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "vulcan did not listen within 30 s:\n{}",
                bin.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        bin.base = format!("http://127.0.0.1:{port}");
        bin
    }

    /// Run `vulcan <args>` with `env` to completion (bounded); its exit code and log.
    pub async fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
        let (mut child, log) = spawn(args, env);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "vulcan {args:?} still running after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The reader thread sees end of file once the process is gone.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = log.lock().expect("log").join("\n");
        (status.code().unwrap_or(-1), text)
    }

    /// SIGTERM, then wait (bounded) for the exit and for the log's end of file; the exit
    /// code.
    pub async fn terminate(&mut self) -> i32 {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "vulcan still running 30 s after SIGTERM:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The reader thread sees end of file once the process is gone.
        tokio::time::sleep(Duration::from_millis(100)).await;
        status.code().unwrap_or(-1)
    }

    /// The log lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    /// The log so far, one string.
    pub fn log_text(&self) -> String {
        self.lines().join("\n")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
