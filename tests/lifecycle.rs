//! The execution engine: sync and async submission, output rules, failures, timeouts,
//! kill, admission control, backend panics and restarts, crash recovery, routing, stats.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::scripted::{self, job, Options};
use serde_json::{json, Value};
use vulcan::model::{Isolation, Runtime};

const SOON: Duration = Duration::from_secs(10);

async fn scripted_app(opts: Options) -> (common::TestApp, std::sync::Arc<scripted::Observed>) {
    let (f, seen) = scripted::factory(opts);
    (common::app().backend(f).spawn().await, seen)
}

fn id(w: &Value) -> String {
    w["id"].as_str().expect("id").to_string()
}

#[tokio::test]
async fn sync_submission_answers_the_terminal_workload() {
    let (app, _) = scripted_app(Options::default()).await;
    let res = app
        .post(
            "/v1/workloads",
            &job("node", json!({"output": {"sum": 3}, "delay_ms": 20})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let w: Value = res.json().await.expect("json");
    assert_eq!(w["status"], "completed");
    assert_eq!(w["output"], json!({"sum": 3}));
    assert_eq!(w["exit_code"], 0);
    assert_eq!(w["error"], Value::Null);
    assert!(w["duration_ms"].as_u64().expect("duration") >= 20);
    assert!(w["started_at"].is_string() && w["finished_at"].is_string());
    // The stored record is the same.
    let stored = app
        .get_json(&format!("/v1/workloads/{}", id(&w)), 200)
        .await;
    assert_eq!(stored, w);
}

#[tokio::test]
async fn async_submission_returns_202_before_execution() {
    let (app, seen) = scripted_app(Options::default()).await;
    let res = app
        .post(
            "/v1/workloads/async",
            &job("node", json!({"delay_ms": 300, "output": 1})),
        )
        .await;
    assert_eq!(res.status(), 202);
    let location = res.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let w: Value = res.json().await.expect("json");
    assert_eq!(w["status"], "pending");
    assert_eq!(location, format!("/v1/workloads/{}", id(&w)));
    // Observed while running (live status), then completed.
    let running = app.wait_status(&id(&w), "running", SOON).await;
    assert!(running["started_at"].is_string());
    let done = app.wait_terminal(&id(&w), SOON).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"], 1);
    assert!(seen.saw_cleanup(&id(&w)), "cleanup must always run");
}

#[tokio::test]
async fn output_that_is_not_json_is_a_string() {
    let (app, _) = scripted_app(Options::default()).await;
    let w: Value = app
        .post(
            "/v1/workloads",
            &job("node", json!({"raw_output": "hello\nworld"})),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(w["output"], "hello\nworld");
}

#[tokio::test]
async fn a_failing_workload_is_failed_with_its_message() {
    let (app, seen) = scripted_app(Options::default()).await;
    let w: Value = app
        .post(
            "/v1/workloads",
            &job(
                "node",
                json!({"error": "exited with code 3", "exit_code": 3}),
            ),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(w["status"], "failed");
    assert_eq!(w["error"], "exited with code 3");
    assert_eq!(w["exit_code"], 3);
    assert!(seen.saw_cleanup(&id(&w)));
    // A backend error (bad script) is also a failed workload, not a 5xx.
    let w: Value = app
        .post(
            "/v1/workloads",
            &json!({"runtime": "node", "code": "not a script"}),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(w["status"], "failed");
    assert!(
        w["error"].as_str().expect("error").contains("bad script"),
        "{w}"
    );
}

#[tokio::test]
async fn timeout_cancels_the_execution_and_fails() {
    let (app, seen) = scripted_app(Options::default()).await;
    let started = Instant::now();
    let mut body = job("node", json!({"delay_ms": 60000}));
    body["resources"] = json!({"timeout_s": 1});
    let w: Value = app
        .post("/v1/workloads", &body)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(w["status"], "failed");
    assert_eq!(w["error"], "timed out after 1s");
    assert!(started.elapsed() < Duration::from_secs(10));
    let wid = id(&w);
    // The backend saw the cancellation and cleaned up.
    let t = Instant::now();
    while !(seen.saw_cancel(&wid) && seen.saw_cleanup(&wid)) {
        assert!(t.elapsed() < SOON, "backend never saw the cancellation");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn kill_stops_a_running_execution_and_a_late_result_is_discarded() {
    let (app, seen) = scripted_app(Options::default()).await;
    let w = app
        .submit_async(&job(
            "node",
            json!({"delay_ms": 60000, "ignore_cancel_ms": 300, "late_output": "too late"}),
        ))
        .await;
    let wid = id(&w);
    app.wait_status(&wid, "running", SOON).await;
    let res = app.delete(&format!("/v1/workloads/{wid}")).await;
    assert_eq!(res.status(), 200);
    let killed: Value = res.json().await.expect("json");
    assert_eq!(killed["status"], "killed");
    assert!(
        seen.saw_cancel(&wid),
        "the backend must see the cancellation"
    );
    // The backend ignores the cancellation for 300 ms, then returns a result: discarded.
    let t = Instant::now();
    while !seen.saw_cleanup(&wid) {
        assert!(t.elapsed() < SOON);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = app.get_json(&format!("/v1/workloads/{wid}"), 200).await;
    assert_eq!(after["status"], "killed");
    assert_eq!(after["output"], Value::Null);
    // And a second kill is a conflict.
    assert_eq!(
        app.delete(&format!("/v1/workloads/{wid}")).await.status(),
        409
    );
}

#[tokio::test]
async fn a_slot_is_freed_only_when_the_execution_really_ended() {
    let (app, seen) = scripted_app(Options {
        max_concurrency: 1,
        ..Options::default()
    })
    .await;
    let stubborn = app
        .submit_async(&job(
            "node",
            json!({"delay_ms": 60000, "ignore_cancel_ms": 400}),
        ))
        .await;
    app.wait_status(&id(&stubborn), "running", SOON).await;
    let next = app.submit_async(&job("node", json!({"output": 2}))).await;
    assert_eq!(
        app.delete(&format!("/v1/workloads/{}", id(&stubborn)))
            .await
            .status(),
        200
    );
    let done = app.wait_terminal(&id(&next), SOON).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(
        seen.max_running.load(Ordering::SeqCst),
        1,
        "concurrency limit exceeded"
    );
}

/// The slot goes to the next workload as soon as the execution has ended, not once the
/// terminal write is committed: with the database locked by another connection, the
/// finished workload's terminal write waits, yet the queued one starts at once; the
/// concurrency limit still holds and both records end right once the lock is gone.
#[tokio::test]
async fn the_next_workload_runs_while_the_previous_terminal_write_waits() {
    use diesel::connection::SimpleConnection;
    let (app, seen) = scripted_app(Options {
        max_concurrency: 1,
        ..Options::default()
    })
    .await;
    let first = id(&app
        .submit_async(&job("node", json!({"delay_ms": 500, "output": 1})))
        .await);
    let second = id(&app
        .submit_async(&job("node", json!({"delay_ms": 200, "output": 2})))
        .await);
    app.wait_status(&first, "running", SOON).await;
    assert_eq!(seen.started.load(Ordering::SeqCst), 1);

    // Lock the workloads table (shorter than the server's busy timeout) while `first`
    // is still running: its terminal write cannot commit until the lock goes.
    let db = app.db_path.clone();
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let mut conn = common::store::connect(&db);
        let lock = if conn.is_pg() {
            "BEGIN; LOCK TABLE workloads IN EXCLUSIVE MODE;"
        } else {
            "BEGIN IMMEDIATE;"
        };
        conn.batch_execute(lock).expect("lock");
        locked_tx.send(()).expect("tell");
        std::thread::sleep(Duration::from_millis(2500));
        conn.batch_execute("ROLLBACK;").expect("unlock");
    });
    locked.recv().expect("locked");
    let t = Instant::now();
    while seen.started.load(Ordering::SeqCst) < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the second workload did not start while the first one's terminal write waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let read = app.get_json(&format!("/v1/workloads/{first}"), 200).await;
    assert_eq!(
        read["status"], "running",
        "the lock held its terminal write: {read}"
    );
    holder.join().expect("holder");

    for (wid, out) in [(&first, 1), (&second, 2)] {
        let w = app.wait_terminal(wid, SOON).await;
        assert_eq!(w["status"], "completed", "{w}");
        assert_eq!(w["output"], json!(out));
    }
    assert_eq!(
        seen.max_running.load(Ordering::SeqCst),
        1,
        "concurrency limit exceeded"
    );
    let backends = app.get_json("/v1/backends", 200).await;
    assert_eq!(backends[0]["running"], 0, "{backends}");
}

#[tokio::test]
async fn max_concurrency_queues_fifo() {
    let (app, seen) = scripted_app(Options {
        max_concurrency: 2,
        ..Options::default()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(id(&app
            .submit_async(&job("node", json!({"delay_ms": 40, "output": i})))
            .await));
    }
    let backends = app.get_json("/v1/backends", 200).await;
    assert!(
        backends[0]["queued"].as_u64().expect("queued") > 0,
        "{backends}"
    );
    let mut started = Vec::new();
    for wid in &ids {
        let w = app.wait_terminal(wid, SOON).await;
        assert_eq!(w["status"], "completed");
        started.push(w["started_at"].as_str().expect("started").to_string());
    }
    assert!(seen.max_running.load(Ordering::SeqCst) <= 2);
    let mut sorted = started.clone();
    sorted.sort();
    assert_eq!(started, sorted, "queued work must start oldest first");
}

#[tokio::test]
async fn a_full_queue_answers_429_and_records_nothing() {
    let (f, _) = scripted::factory(Options {
        max_concurrency: 1,
        ..Options::default()
    });
    let app = common::app()
        .env("VULCAN_MAX_QUEUE", "2")
        .backend(f)
        .spawn()
        .await;
    scripted::occupy_slot(&app).await;
    app.submit_async(&job("node", json!({"output": 1}))).await;
    app.submit_async(&job("node", json!({"output": 2}))).await;
    let before = app.count_rows("workloads");
    for path in ["/v1/workloads/async", "/v1/workloads"] {
        let res = app.post(path, &job("node", json!({"output": 3}))).await;
        assert_eq!(res.status(), 429);
        assert!(res.headers().contains_key("retry-after"));
        let v: Value = res.json().await.expect("json");
        assert!(
            v["error"].as_str().expect("error").contains("pending"),
            "{v}"
        );
    }
    assert_eq!(
        app.count_rows("workloads"),
        before,
        "a refused submission was recorded"
    );
    let metrics = app.get("/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains("vulcan_submissions_rejected_queue_full_total 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_queue_full_by_bytes_answers_429_and_records_nothing() {
    let (f, _) = scripted::factory(Options {
        max_concurrency: 1,
        ..Options::default()
    });
    let app = common::app()
        .env("VULCAN_MAX_QUEUE_BYTES", "3000")
        .backend(f)
        .spawn()
        .await;
    // Running work holds a slot, not queue bytes.
    scripted::occupy_slot(&app).await;
    // A script padded to ~2000 bytes (code) waits; the count is code + input.
    let padded = |n: usize| job("node", json!({"output": "x".repeat(n)}));
    let waiting = app.submit_async(&padded(2000)).await;
    let before = app.count_rows("workloads");
    for path in ["/v1/workloads/async", "/v1/workloads"] {
        let res = app.post(path, &padded(1200)).await;
        assert_eq!(res.status(), 429);
        assert!(res.headers().contains_key("retry-after"));
        let v: Value = res.json().await.expect("json");
        assert!(
            v["error"]
                .as_str()
                .expect("error")
                .contains("max_queue_bytes"),
            "{v}"
        );
    }
    assert_eq!(
        app.count_rows("workloads"),
        before,
        "a refused submission was recorded"
    );
    // A smaller one still fits; once the waiting one leaves the queue, the large one too.
    app.submit_async(&padded(500)).await;
    let res = app.delete(&format!("/v1/workloads/{}", id(&waiting))).await;
    assert_eq!(res.status(), 200);
    app.submit_async(&padded(1200)).await;
}

#[tokio::test]
async fn a_backend_panic_fails_the_workload_restarts_the_backend_and_work_goes_on() {
    let (app, seen) = scripted_app(Options::default()).await;
    let w: Value = app
        .post("/v1/workloads", &job("node", json!({"panic": "kaboom"})))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(w["status"], "failed");
    assert!(
        w["error"].as_str().expect("error").contains("kaboom"),
        "{w}"
    );
    assert!(seen.saw_cleanup(&id(&w)), "cleanup runs after a panic too");
    let t = Instant::now();
    loop {
        let b = app.get_json("/v1/backends", 200).await;
        if b[0]["restarts"] == 1 {
            assert_eq!(b[0]["status"], "healthy");
            break;
        }
        assert!(t.elapsed() < SOON, "backend not restarted: {b}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        seen.instances.load(Ordering::SeqCst),
        2,
        "a fresh backend instance"
    );
    let actors = app.get_json("/v1/system/actors", 200).await;
    let entry = actors["actors"]
        .as_array()
        .expect("actors")
        .iter()
        .find(|a| a["name"] == "backend:scripted")
        .expect("backend actor listed")
        .clone();
    assert_eq!(entry["restarts"], 1);
    assert!(entry["last_error"]
        .as_str()
        .expect("last error")
        .contains("kaboom"));
    let next: Value = app
        .post("/v1/workloads", &job("node", json!({"output": "ok"})))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(next["status"], "completed");
}

#[tokio::test]
async fn operators_restart_a_backend() {
    let (app, seen) = scripted_app(Options::default()).await;
    let res = app
        .client
        .post(app.url("/v1/backends/scripted/restart"))
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 200);
    let b: Value = res.json().await.expect("json");
    assert_eq!(b["name"], "scripted");
    assert_eq!(b["restarts"], 1);
    assert_eq!(seen.instances.load(Ordering::SeqCst), 2);
    let res = app
        .client
        .post(app.url("/v1/backends/nope/restart"))
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 404);
    let w: Value = app
        .post("/v1/workloads", &job("node", json!({"output": 1})))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(w["status"], "completed");
}

#[tokio::test]
async fn backends_are_listed_sorted_with_capabilities() {
    let (a, _) = scripted::factory(Options {
        name: "zeta".into(),
        ..Options::default()
    });
    let (b, _) = scripted::factory(Options {
        name: "alpha".into(),
        isolation: Isolation::Microvm,
        runtimes: vec![Runtime::Python],
        max_concurrency: 3,
        unavailable: Some("no kvm here".into()),
        prepare_ms: 0,
    });
    let app = common::app().backend(a).backend(b).spawn().await;
    let list = app.get_json("/v1/backends", 200).await;
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "alpha");
    assert_eq!(list[0]["status"], "unavailable");
    assert_eq!(
        list[0]["capabilities"]["supported_runtimes"],
        json!(["python"])
    );
    assert_eq!(
        list[0]["capabilities"]["supported_isolations"],
        json!(["microvm"])
    );
    assert_eq!(list[0]["capabilities"]["max_concurrency"], 3);
    assert_eq!(list[1]["name"], "zeta");
    assert_eq!(list[1]["status"], "healthy");
    for entry in list {
        for key in ["running", "queued", "restarts"] {
            assert_eq!(entry[key], 0, "{entry}");
        }
    }
}

#[tokio::test]
async fn auto_routes_along_the_fallback_chain_and_explicit_never_falls_back() {
    let (vm, _) = scripted::factory(Options {
        name: "vm".into(),
        isolation: Isolation::Microvm,
        runtimes: vec![Runtime::Python, Runtime::Go],
        unavailable: Some("no hardware virtualisation".into()),
        prepare_ms: 0,
        ..Options::default()
    });
    let (gv, _) = scripted::factory(Options {
        name: "gv".into(),
        isolation: Isolation::Gvisor,
        runtimes: vec![Runtime::Python],
        ..Options::default()
    });
    let app = common::app().backend(vm).backend(gv).spawn().await;
    // python: microvm unavailable -> gvisor.
    let w: Value = app
        .post("/v1/workloads", &job("python", json!({"output": 1})))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(w["status"], "completed");
    assert_eq!(w["isolation"], "gvisor");
    assert_eq!(w["requested_isolation"], "auto");
    assert_eq!(w["backend"], "gv");
    // Explicit microvm never falls back: 422 naming the reason.
    let mut body = job("python", json!({"output": 1}));
    body["isolation"] = json!("microvm");
    let res = app.post("/v1/workloads", &body).await;
    assert_eq!(res.status(), 422);
    let msg = res.json::<Value>().await.expect("json")["error"]
        .as_str()
        .expect("msg")
        .to_string();
    assert!(
        msg.contains("microvm") && msg.contains("no hardware virtualisation"),
        "{msg}"
    );
    // go: microvm unavailable and gvisor does not support go: 422 naming the preferred class.
    let res = app
        .post("/v1/workloads/async", &job("go", json!({"output": 1})))
        .await;
    assert_eq!(res.status(), 422);
    let msg = res.json::<Value>().await.expect("json")["error"]
        .as_str()
        .expect("msg")
        .to_string();
    assert!(
        msg.contains("prefers microvm") && msg.contains("does not support runtime go"),
        "{msg}"
    );
    // node: isolate is not registered at all.
    let res = app.post("/v1/workloads", &job("node", json!({}))).await;
    assert_eq!(res.status(), 422);
    let msg = res.json::<Value>().await.expect("json")["error"]
        .as_str()
        .expect("msg")
        .to_string();
    assert!(
        msg.contains("prefers isolate")
            && msg.contains("no backend with isolation isolate is registered"),
        "{msg}"
    );
    let res = app
        .post(
            "/v1/workloads",
            &json!({"runtime": "oci", "image": "busybox:1.36"}),
        )
        .await;
    assert_eq!(res.status(), 422);
    let msg = res.json::<Value>().await.expect("json")["error"]
        .as_str()
        .expect("msg")
        .to_string();
    assert!(
        msg.contains("prefers gvisor")
            && msg.contains("backend gv does not support runtime oci")
            && msg.contains("OCI images run on the gvisor backend"),
        "{msg}"
    );
    assert_eq!(
        app.count_rows("workloads"),
        1,
        "refused submissions are not recorded"
    );
}

#[tokio::test]
async fn stats_count_every_status_and_isolation() {
    let (app, _) = scripted_app(Options::default()).await;
    let empty = app.get_json("/v1/stats", 200).await;
    assert_eq!(empty["total"], 0);
    for s in ["pending", "running", "completed", "failed", "killed"] {
        assert_eq!(empty["by_status"][s], 0, "{empty}");
    }
    for i in ["isolate", "gvisor", "microvm"] {
        assert_eq!(empty["by_isolation"][i], 0, "{empty}");
    }
    for d in [10, 20, 30, 40] {
        app.post("/v1/workloads", &job("node", json!({"delay_ms": d})))
            .await;
    }
    app.post("/v1/workloads", &job("node", json!({"error": "x"})))
        .await;
    let s = app.get_json("/v1/stats", 200).await;
    assert_eq!(s["total"], 5);
    assert_eq!(s["by_status"]["completed"], 4);
    assert_eq!(s["by_status"]["failed"], 1);
    assert_eq!(s["by_isolation"]["isolate"], 5);
    let b = &s["by_backend"]["scripted"];
    assert_eq!(b["count"], 5);
    let p50 = b["p50_ms"].as_u64().expect("p50");
    let p95 = b["p95_ms"].as_u64().expect("p95");
    assert!((10..40).contains(&p50), "{s}");
    assert!(p95 >= 40 && p95 >= p50, "{s}");
    assert!(b["avg_duration_ms"].as_f64().expect("avg") > 0.0);
    assert!(s["avg_duration_ms"].as_f64().expect("avg") > 0.0);
}

#[tokio::test]
async fn restart_recovery_fails_interrupted_work_and_runs_pending_work() {
    let (f, _) = scripted::factory(Options {
        max_concurrency: 1,
        ..Options::default()
    });
    let app = common::app().backend(f).spawn().await;
    let running = scripted::occupy_slot(&app).await;
    let pending_a = app.submit_async(&job("node", json!({"output": "a"}))).await;
    let pending_b = app.submit_async(&job("node", json!({"output": "b"}))).await;
    let db = app.db_path.clone();
    let dir = app.crash().await;

    let (f, seen) = scripted::factory(Options {
        max_concurrency: 1,
        ..Options::default()
    });
    let again = common::app().backend(f).db(db).spawn().await;
    let w = again
        .get_json(&format!("/v1/workloads/{running}"), 200)
        .await;
    assert_eq!(w["status"], "failed");
    assert!(w["error"]
        .as_str()
        .expect("error")
        .contains("interrupted by server restart"));
    let a = again.wait_terminal(&id(&pending_a), SOON).await;
    let b = again.wait_terminal(&id(&pending_b), SOON).await;
    assert_eq!(
        (a["status"].as_str(), a["output"].as_str()),
        (Some("completed"), Some("a"))
    );
    assert_eq!(
        (b["status"].as_str(), b["output"].as_str()),
        (Some("completed"), Some("b"))
    );
    assert!(
        a["finished_at"].as_str() <= b["started_at"].as_str(),
        "oldest first (one slot: a ran to the end before b started)"
    );
    assert_eq!(seen.started.load(Ordering::SeqCst), 2);
    again.stop().await;
    drop(dir);
}

#[tokio::test]
async fn graceful_shutdown_marks_running_work_and_keeps_pending_work() {
    let (f, seen) = scripted::factory(Options {
        max_concurrency: 1,
        ..Options::default()
    });
    let app = common::app().backend(f).spawn().await;
    let running = scripted::occupy_slot(&app).await;
    let pending = app.submit_async(&job("node", json!({"output": 1}))).await;
    let db = app.db_path.clone();
    let t = Instant::now();
    let dir = app.stop().await;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        t.elapsed()
    );
    assert!(
        seen.saw_cancel(&running),
        "running work is stopped on shutdown"
    );
    assert_eq!(
        seen.started.load(Ordering::SeqCst),
        1,
        "queued work must not start while the server drains"
    );
    let (f, _) = scripted::factory(Options::default());
    let again = common::app().backend(f).db(db).spawn().await;
    let w = again
        .get_json(&format!("/v1/workloads/{running}"), 200)
        .await;
    assert_eq!(w["status"], "failed");
    assert_eq!(w["error"], "interrupted by server shutdown");
    assert_eq!(
        again.wait_terminal(&id(&pending), SOON).await["status"],
        "completed"
    );
    drop(dir);
}

#[tokio::test]
async fn three_hundred_concurrent_async_submissions_all_finish() {
    let (app, _) = scripted_app(Options {
        max_concurrency: 16,
        ..Options::default()
    })
    .await;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..300 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let res = app
                .post(
                    "/v1/workloads/async",
                    &job(
                        "node",
                        json!({"delay_ms": i % 7, "logs": ["x"], "output": i}),
                    ),
                )
                .await;
            assert_eq!(res.status(), 202);
            id(&res.json::<Value>().await.expect("json"))
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task"));
    }
    for wid in &ids {
        assert_eq!(
            app.wait_terminal(wid, Duration::from_secs(60)).await["status"],
            "completed"
        );
    }
    let stats = app.get_json("/v1/stats", 200).await;
    assert_eq!(stats["total"], 300);
    assert_eq!(stats["by_status"]["completed"], 300);
    let metrics = app.get("/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains("vulcan_queue_depth 0"),
        "queue gauge back to 0"
    );
    assert!(
        metrics.contains("vulcan_workloads_running 0"),
        "running gauge back to 0"
    );
}

#[tokio::test]
async fn a_full_backend_queue_refuses_only_its_own_work() {
    // Registered under the built-in names so their [backends.<name>] max_queue applies.
    let (iso, _) = scripted::factory(Options {
        name: "isolate".into(),
        isolation: Isolation::Isolate,
        runtimes: vec![Runtime::Node],
        max_concurrency: 1,
        ..Options::default()
    });
    let (gv, gv_seen) = scripted::factory(Options {
        name: "gvisor".into(),
        isolation: Isolation::Gvisor,
        runtimes: vec![Runtime::Python],
        max_concurrency: 1,
        ..Options::default()
    });
    let app = common::app()
        .env("VULCAN_BACKENDS__ISOLATE__MAX_QUEUE", "2")
        .backend(iso)
        .backend(gv)
        .spawn()
        .await;
    let holder = scripted::occupy_slot(&app).await;
    let q1 = app.submit_async(&job("node", json!({"output": 1}))).await;
    app.submit_async(&job("node", json!({"output": 2}))).await;
    // isolate holds its 2: its work gets 429, naming the backend, and is not recorded.
    let before = app.count_rows("workloads");
    let res = app
        .post("/v1/workloads/async", &job("node", json!({"output": 3})))
        .await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
    let v: Value = res.json().await.expect("json");
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .contains("backend isolate"),
        "{v}"
    );
    assert_eq!(app.count_rows("workloads"), before);
    // gvisor's work is taken at once, queued behind nothing.
    let w: Value = app
        .post("/v1/workloads", &job("python", json!({"output": 4})))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(w["status"], "completed");
    assert_eq!(w["backend"], "gvisor");
    assert_eq!(gv_seen.started.load(Ordering::SeqCst), 1);
    let backends = app.get_json("/v1/backends", 200).await;
    let queued = |name: &str| {
        backends
            .as_array()
            .expect("array")
            .iter()
            .find(|b| b["name"] == name)
            .map(|b| b["queued"].clone())
    };
    assert_eq!(queued("isolate"), Some(json!(2)));
    assert_eq!(queued("gvisor"), Some(json!(0)));
    // Once a slot frees, isolate accepts again.
    app.delete(&format!("/v1/workloads/{holder}")).await;
    app.wait_terminal(&id(&q1), Duration::from_secs(10)).await;
    app.submit_async(&job("node", json!({"output": 5}))).await;
}

#[tokio::test]
async fn every_422_names_the_class_and_why_without_host_details() {
    let (vm, _) = scripted::factory(Options {
        name: "vm".into(),
        isolation: Isolation::Microvm,
        runtimes: vec![Runtime::Python, Runtime::Go],
        unavailable: Some("no KVM".into()),
        prepare_ms: 0,
        ..Options::default()
    });
    let app = common::app().backend(vm).spawn().await;
    let body = |runtime: &str, isolation: &str| {
        let mut b = job(runtime, json!({"output": 1}));
        b["isolation"] = json!(isolation);
        b
    };
    // (body, what the message must say)
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            body("python", "microvm"),
            vec!["microvm", "backend vm is unavailable: no KVM"],
        ),
        (
            body("python", "gvisor"),
            vec!["gvisor", "no backend with isolation gvisor is registered"],
        ),
        (
            body("node", "microvm"),
            vec!["microvm", "backend vm does not support runtime node"],
        ),
        (
            body("node", "auto"),
            vec!["prefers isolate", "no backend with isolation isolate"],
        ),
        (
            body("go", "auto"),
            vec![
                "prefers microvm",
                "backend vm is unavailable: no KVM",
                "gvisor is not available",
            ],
        ),
        (
            json!({"runtime": "oci", "image": "busybox:1.36"}),
            vec!["prefers gvisor", "no backend with isolation gvisor"],
        ),
    ];
    for (b, wants) in cases {
        for path in ["/v1/workloads", "/v1/workloads/async"] {
            let res = app.post(path, &b).await;
            assert_eq!(res.status(), 422, "{b}");
            let msg = res.json::<Value>().await.expect("json")["error"]
                .as_str()
                .expect("msg")
                .to_string();
            for want in &wants {
                assert!(msg.contains(want), "{b}: {msg:?} lacks {want:?}");
            }
            assert!(!msg.contains("(detail)"), "private detail leaked: {msg}");
        }
    }
    assert_eq!(app.count_rows("workloads"), 0);

    // The built-in backends on a host without runsc or KVM: reasons for clients name
    // what is missing, never where on the host it was looked for.
    let app = common::app()
        .builtin()
        .env(
            "VULCAN_BACKENDS__GVISOR__RUNSC_PATH",
            "/nonexistent/secret-dir/runsc",
        )
        .env("VULCAN_BACKENDS__GVISOR__STATE_DIR", "/nonexistent/state")
        .spawn()
        .await;
    let leaks = ["/nonexistent", "secret-dir", "/dev/", "/usr", "uid "];
    let backends = app.get_json("/v1/backends", 200).await;
    let text = backends.to_string();
    for leak in leaks {
        assert!(!text.contains(leak), "{leak} in /v1/backends: {text}");
    }
    let gvisor = backends
        .as_array()
        .expect("array")
        .iter()
        .find(|b| b["name"] == "gvisor")
        .expect("gvisor listed")
        .clone();
    assert_eq!(gvisor["status"], "unavailable");
    assert!(
        gvisor["reason"].as_str().expect("reason").contains("runsc"),
        "{gvisor}"
    );
    for b in [
        body("python", "gvisor"),
        body("python", "microvm"),
        body("go", "auto"),
    ] {
        let res = app.post("/v1/workloads", &b).await;
        assert_eq!(res.status(), 422);
        let msg = res.json::<Value>().await.expect("json")["error"].to_string();
        for leak in leaks {
            assert!(!msg.contains(leak), "{leak} in {msg}");
        }
        assert!(msg.contains("is unavailable: "), "{msg}");
    }
}

/// The entry of actor `name` in `GET /v1/system/actors`.
async fn actor(app: &common::TestApp, name: &str) -> Value {
    let actors = app.get_json("/v1/system/actors", 200).await;
    actors["actors"]
        .as_array()
        .expect("actors")
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("{name} listed: {actors}"))
        .clone()
}

#[tokio::test]
async fn operators_restart_the_store_and_the_log_broker_and_subscribers_resume() {
    let (app, _) = scripted_app(Options::default()).await;
    for name in ["store", "log_broker"] {
        let a = actor(&app, name).await;
        assert_eq!(
            (a["state"].as_str(), a["restarts"].as_u64()),
            (Some("running"), Some(0))
        );
        assert!(a["last_error"].is_null());
    }
    // A subscriber follows a logging workload while the broker restarts under it.
    let all: Vec<String> = (0..300).map(|i| format!("line {i}")).collect();
    let w = app
        .submit_async(&job(
            "node",
            json!({"logs": all, "log_interval_ms": 5, "log_burst": 5}),
        ))
        .await;
    let url = app.url(&format!("/v1/workloads/{}/logs", id(&w)));
    let res = app.client.get(&url).send().await.expect("subscribe");
    let mut reader = common::sse::Reader::new(res);
    let mut got: Vec<common::sse::Event> = Vec::new();
    for _ in 0..10 {
        got.push(reader.next_event().await.expect("a line"));
    }
    let res = app
        .client
        .post(app.url("/v1/system/actors/log_broker/restart"))
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 200);
    let a: Value = res.json().await.expect("json");
    assert_eq!(
        (a["name"].as_str(), a["restarts"].as_u64()),
        (Some("log_broker"), Some(1))
    );
    assert_eq!(a["last_error"], "restart requested by operator");
    // Its stream ends; it resumes with Last-Event-ID and loses nothing.
    while let Some(e) = reader.next_event().await {
        got.push(e);
    }
    assert_ne!(
        got.last().and_then(|e| e.event.as_deref()),
        Some("done"),
        "cut short"
    );
    let last = got.last().and_then(|e| e.id.clone()).expect("an id");
    let res = app
        .client
        .get(&url)
        .header("Last-Event-ID", last)
        .send()
        .await
        .expect("resume");
    got.extend(common::sse::Reader::new(res).collect(SOON).await);
    let (done, lines) = got.split_last().expect("events");
    assert_eq!(done.event.as_deref(), Some("done"));
    assert_eq!(done.data, "completed");
    let seen: Vec<&str> = lines.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(seen, all.iter().map(String::as_str).collect::<Vec<_>>());

    // The store's writer reopens its connection; work goes on.
    let res = app
        .client
        .post(app.url("/v1/system/actors/store/restart"))
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 200);
    let a: Value = res.json().await.expect("json");
    assert_eq!(
        (a["name"].as_str(), a["restarts"].as_u64()),
        (Some("store"), Some(1))
    );
    let next: Value = app
        .post("/v1/workloads", &job("node", json!({"output": "ok"})))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(next["status"], "completed");
    assert_eq!(actor(&app, "store").await["restarts"], 1);
    // Backends by their actor name; unknown names are 404; the supervisor stays.
    let res = app
        .client
        .post(app.url("/v1/system/actors/backend:scripted/restart"))
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 200);
    for (name, status) in [("nope", 404), ("backend:nope", 404), ("supervisor", 409)] {
        let res = app
            .client
            .post(app.url(&format!("/v1/system/actors/{name}/restart")))
            .send()
            .await
            .expect("req");
        assert_eq!(res.status(), status, "{name}");
        let v: Value = res.json().await.expect("json");
        assert!(v["error"].is_string());
    }
}
