//! Storage stays bounded and faults are answered clearly: a full disk (a real one: a
//! small tmpfs holding the database) gets 507 while reads go on and the server
//! recovers by itself; retention deletes old finished work only.

mod common;

use std::time::{Duration, Instant};

use common::scripted::{self, job, Options};
use common::tmpfs::Tmpfs;
use serde_json::{json, Value};

const SOON: Duration = Duration::from_secs(20);

fn id(w: &Value) -> String {
    w["id"].as_str().expect("id").to_string()
}

async fn ready(app: &common::TestApp) -> u16 {
    app.get("/readyz").await.status().as_u16()
}

#[tokio::test]
async fn a_full_disk_answers_507_keeps_serving_reads_and_recovers_when_space_returns() {
    let Some(fs) = Tmpfs::mount("8m", "full disk") else {
        return;
    };
    let (f, _) = scripted::factory(Options::default());
    let app = common::app()
        .backend(f)
        .db(fs.path().join("vulcan.db"))
        .spawn()
        .await;
    assert_eq!(ready(&app).await, 200);
    let earlier: Value = app
        .post(
            "/v1/workloads",
            &job("node", json!({"logs": ["kept 0", "kept 1"], "output": 7})),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(earlier["status"], "completed", "{earlier}");
    let history = format!("/v1/workloads/{}/logs/history", id(&earlier));

    // A workload logging all along: its lines printed while the disk is full are lost,
    // counted and marked once writes resume.
    let ticks: Vec<String> = (0..100).map(|i| format!("tick {i}")).collect();
    let logger = app
        .submit_async(&job("node", json!({"logs": ticks, "log_interval_ms": 30})))
        .await;
    app.wait_status(&id(&logger), "running", SOON).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let filler = fs.fill();
    // The WAL may still have room for a few writes: submit until the disk is full.
    let big = "x".repeat(64 * 1024);
    let mut refused = None;
    for _ in 0..400 {
        let res = app
            .post(
                "/v1/workloads/async",
                &job("node", json!({"raw_output": big, "delay_ms": 60000})),
            )
            .await;
        if res.status() == 507 {
            refused = Some(res.json::<Value>().await.expect("json"));
            break;
        }
        assert_eq!(res.status(), 202, "{:?}", res.text().await);
    }
    let refused = refused.expect("a full disk is answered 507");
    assert_eq!(refused, json!({"error": "storage full"}));
    // The server is alive, answers reads, and says it is not ready.
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(ready(&app).await, 503);
    let w = app
        .get_json(&format!("/v1/workloads/{}", id(&earlier)), 200)
        .await;
    assert_eq!(
        (w["status"].as_str(), w["output"].as_i64()),
        (Some("completed"), Some(7))
    );
    let h = app.get_json(&history, 200).await;
    assert_eq!(h["lines"].as_array().map(Vec::len), Some(2));
    // The sync endpoint is refused the same way.
    let res = app
        .post("/v1/workloads", &job("node", json!({"raw_output": big})))
        .await;
    assert_eq!(res.status(), 507);

    // Space returns: the server notices by itself.
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::remove_file(filler).expect("free space");
    let start = Instant::now();
    while ready(&app).await != 200 {
        assert!(
            start.elapsed() < SOON,
            "not ready again after space returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let next: Value = app
        .post(
            "/v1/workloads",
            &job("node", json!({"logs": ["back"], "output": 8})),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(next["status"], "completed", "{next}");
    let h = app
        .get_json(&format!("/v1/workloads/{}/logs/history", id(&next)), 200)
        .await;
    assert_eq!(h["lines"][0]["line"], "back");
    let w = app
        .get_json(&format!("/v1/workloads/{}", id(&earlier)), 200)
        .await;
    assert_eq!(w["status"], "completed");
    // The logger ran on; the lines lost are marked where they were.
    let done = app.wait_terminal(&id(&logger), SOON).await;
    assert_eq!(done["status"], "completed", "{done}");
    let h = app
        .get_json(
            &format!("/v1/workloads/{}/logs/history?limit=10000", id(&logger)),
            200,
        )
        .await;
    let lines: Vec<(u64, String)> = h["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            (
                l["seq"].as_u64().expect("seq"),
                l["line"].as_str().expect("line").to_string(),
            )
        })
        .collect();
    let marker = lines
        .iter()
        .position(|(_, l)| l.contains("could not be stored"))
        .unwrap_or_else(|| panic!("a marker for the lost lines: {lines:?}"));
    let lost: u64 = lines[marker]
        .1
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("count");
    assert!(lost > 0);
    // Kept lines are the ticks with their own seq; the marker sits at the first lost one.
    for (seq, line) in lines.iter().filter(|(_, l)| l.starts_with("tick")) {
        assert_eq!(line, &format!("tick {seq}"));
    }
    assert_eq!(lines.len() as u64 + lost - 1, 100, "{lines:?}");
    let dir = app.stop().await;
    drop(dir);
    drop(fs);
}
