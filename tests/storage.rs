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
    full_disk(true).await;
}

/// With SQLite checkpointing inside the writer's commits (`checkpoint_interval_ms = 0`)
/// the log never starts over inside its file while the disk is full, so the end of a
/// workload that finishes meanwhile must wait for space: that path, exactly.
#[tokio::test]
async fn a_full_disk_defers_a_terminal_write_until_space_returns_with_sqlites_own_checkpoints() {
    full_disk(false).await;
}

/// A disk that fills up and frees again, with or without background checkpoints.
async fn full_disk(background_checkpoints: bool) {
    if !common::store::sqlite_only("a_full_disk_answers_507") {
        return;
    }
    let Some(fs) = Tmpfs::mount("8m", "full disk") else {
        return;
    };
    let (f, _) = scripted::factory(Options::default());
    let mut app = common::app().backend(f).db(fs.path().join("vulcan.db"));
    if !background_checkpoints {
        app = app.env("VULCAN_STORE__CHECKPOINT_INTERVAL_MS", "0");
    }
    let app = app.spawn().await;
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

    // A workload that ends while the disk is full: its outcome is recorded once
    // space returns.
    let finisher = app
        .submit_async(&job("node", json!({"delay_ms": 250, "output": 9})))
        .await;
    app.wait_status(&id(&finisher), "running", SOON).await;

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
    tokio::time::sleep(Duration::from_millis(600)).await;
    let w = app
        .get_json(&format!("/v1/workloads/{}", id(&finisher)), 200)
        .await;
    if background_checkpoints {
        // Its end is recorded once space returns, or already, when it fitted in the
        // write-ahead log's file as it was (a background checkpoint had let the log
        // start over inside it): never lost, never anything else.
        assert!(
            w["status"] == "running" || (w["status"] == "completed" && w["output"] == 9),
            "its end is either waiting for space or recorded whole: {w}"
        );
    } else {
        assert_eq!(
            w["status"], "running",
            "its end cannot be recorded yet: {w}"
        );
    }
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
    let w = app.wait_terminal(&id(&finisher), SOON).await;
    assert_eq!(
        (w["status"].as_str(), w["output"].as_i64()),
        (Some("completed"), Some(9))
    );
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

/// Set `finished_at` of `ids` in the database at `db` to long ago (as if they had
/// finished then), behind the server's back.
fn finished_long_ago(db: &std::path::Path, ids: &[String]) {
    for id in ids {
        common::store::execute(
            db,
            &format!(
                "UPDATE workloads SET finished_at = '2026-01-01T00:00:00.000Z' WHERE id = '{id}'"
            ),
        );
    }
}

#[tokio::test]
async fn retention_deletes_only_old_finished_work_across_a_restart() {
    let opts = Options {
        max_concurrency: 1,
        ..Options::default()
    };
    let (f, _) = scripted::factory(opts.clone());
    let app = common::app()
        .env("VULCAN_RETENTION__MAX_AGE_S", "0")
        .backend(f)
        .spawn()
        .await;
    let mut old = Vec::new();
    for status_script in [
        json!({"logs": ["a", "b", "c"], "output": 1}),
        json!({"logs": ["d"], "error": "boom"}),
    ] {
        let w: Value = app
            .post("/v1/workloads", &job("node", status_script))
            .await
            .json()
            .await
            .expect("json");
        old.push(id(&w));
    }
    let killed = app
        .submit_async(&job("node", json!({"logs": ["e"], "delay_ms": 60000})))
        .await;
    app.wait_status(&id(&killed), "running", SOON).await;
    assert_eq!(
        app.delete(&format!("/v1/workloads/{}", id(&killed)))
            .await
            .status(),
        200
    );
    old.push(id(&killed));
    let recent: Value = app
        .post("/v1/workloads", &job("node", json!({"logs": ["recent"]})))
        .await
        .json()
        .await
        .expect("json");
    // Work that is not finished: one running, one queued behind it.
    let running = scripted::occupy_slot(&app).await;
    let pending = app
        .submit_async(&job("node", json!({"logs": ["later"]})))
        .await;
    let db = app.db_path.clone();
    let dir = app.stop().await;
    finished_long_ago(&db, &old);
    // The running one was interrupted at shutdown; make it old too: interrupted work
    // is finished work.
    finished_long_ago(&db, std::slice::from_ref(&running));
    let lines_before = common::count_rows(&db, "log_lines");

    // Restarted with a week of retention: the old finished work goes, nothing else.
    let (f, _) = scripted::factory(opts);
    let again = common::app()
        .env("VULCAN_RETENTION__SWEEP_INTERVAL_S", "1")
        .backend(f)
        .db(db.clone())
        .spawn()
        .await;
    for gone in old.iter().chain([&running]) {
        let start = Instant::now();
        while again.get(&format!("/v1/workloads/{gone}")).await.status() != 404 {
            assert!(start.elapsed() < SOON, "{gone} was not swept");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let h = again
            .get(&format!("/v1/workloads/{gone}/logs/history"))
            .await;
        assert_eq!(h.status(), 404);
    }
    let w = again
        .get_json(&format!("/v1/workloads/{}", id(&recent)), 200)
        .await;
    assert_eq!(w["status"], "completed");
    let p = again.wait_terminal(&id(&pending), SOON).await;
    assert_eq!(
        p["status"], "completed",
        "the pending one was re-admitted and ran"
    );
    let kept_lines = again
        .get_json(&format!("/v1/workloads/{}/logs/history", id(&recent)), 200)
        .await;
    assert_eq!(kept_lines["lines"][0]["line"], "recent");
    // Only the swept workloads' lines left the table (a, b, c, d, e and the running one's
    // none), and the metric says what went.
    assert_eq!(common::count_rows(&db, "log_lines"), lines_before - 5 + 1);
    let metrics = again.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains("vulcan_retention_swept_rows_total{table=\"workloads\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vulcan_retention_swept_rows_total{table=\"log_lines\"} 5"),
        "{metrics}"
    );
    again.stop().await;
    drop(dir);
}
