//! The real binary on SIGTERM: running workloads are stopped first (their SSE streams
//! end with `done`), then the server drains, the store is flushed, and it exits 0.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sse::SseStream;
use serde_json::{json, Value};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[tokio::test]
async fn sigterm_stops_running_work_ends_streams_with_done_and_exits_0() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("vulcan.db");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vulcan"))
        .arg("serve")
        .env("VULCAN_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("VULCAN_DB_PATH", &db)
        .envs(common::store::db_url(&db).map(|url| ("VULCAN_DB_URL", url)))
        .env("VULCAN_BACKENDS__GVISOR__ENABLED", "false")
        .env("VULCAN_BACKENDS__MICROVM__ENABLED", "false")
        .env("VULCAN_BACKENDS__ISOLATE__MAX_CONCURRENCY", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vulcan serve");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let t = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let submit = |code: &'static str| {
        let client = client.clone();
        let url = format!("{base}/v1/workloads/async");
        async move {
            let res = client
                .post(url)
                .json(&json!({"runtime": "node", "code": code, "resources": {"timeout_s": 120}}))
                .send()
                .await
                .expect("submit");
            assert_eq!(res.status(), 202);
            res.json::<Value>().await.expect("json")["id"]
                .as_str()
                .expect("id")
                .to_string()
        }
    };
    let running = submit("console.log('started'); while (true) {}").await;
    let queued = submit("42").await;

    // Follow the running workload's log until its first line.
    let mut sse = SseStream::open_at(&client, &base, &running).await;
    assert_eq!(
        sse.next_event(Duration::from_secs(10))
            .await
            .expect("line")
            .data,
        "started"
    );

    let t = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let (_, done) = sse.until_done(Duration::from_secs(10)).await;
    assert_eq!(
        done, "failed",
        "the stream ends with done, not a cut connection"
    );
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        t.elapsed()
    );

    // Restart on the same file: the running one is recorded as interrupted, the queued
    // one never started and now runs.
    let app = common::app()
        .builtin()
        .db(db.clone())
        .env("VULCAN_BACKENDS__GVISOR__ENABLED", "false")
        .spawn()
        .await;
    let w = app.get_json(&format!("/v1/workloads/{running}"), 200).await;
    assert_eq!(w["status"], "failed");
    assert_eq!(w["error"], "interrupted by server shutdown");
    let q = app.wait_terminal(&queued, Duration::from_secs(10)).await;
    assert_eq!(q["status"], "completed");
    assert_eq!(q["output"], 42);
    app.stop().await;
}

/// The access log is buffered (one write per interval, not per request): a line still
/// shows up while the server runs, and a clean shutdown writes every line.
#[tokio::test]
async fn every_access_log_line_is_written_while_running_and_by_a_clean_shutdown() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = common::binary::Binary::serve(
        dir.path(),
        &[("VULCAN_BACKENDS__ISOLATE__ENABLED", "false")],
    )
    .await;
    let client = reqwest::Client::new();
    let healthz = format!("{}/healthz", server.base);
    let access_lines = |server: &common::binary::Binary| {
        server
            .lines()
            .iter()
            .filter(|l| l.contains("\"GET /healthz HTTP/1.1\" 200"))
            .count()
    };
    let get = |url: String| {
        let client = client.clone();
        async move {
            let res = client.get(url).send().await.expect("GET /healthz");
            assert_eq!(res.status(), 200);
        }
    };
    get(healthz.clone()).await;
    let t = Instant::now();
    while access_lines(&server) < 1 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the access line of a request never showed up while running:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Then a burst, and SIGTERM right after its last answer: the lines still buffered
    // are written on the way out.
    for _ in 0..299 {
        get(healthz.clone()).await;
    }
    assert_eq!(server.terminate().await, 0, "{}", server.log_text());
    assert_eq!(access_lines(&server), 300, "{}", server.log_text());
    assert!(
        server
            .lines()
            .iter()
            .any(|l| l.contains("store flushed; bye")),
        "the last line of a clean shutdown is missing:\n{}",
        server.log_text()
    );
}
