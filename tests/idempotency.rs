//! `Idempotency-Key` on both submit endpoints: a retry with the same key and body
//! answers the same workload and never runs it twice (also concurrently, while the
//! first is still being recorded, and across a restart); another body is a 422; keys
//! are validated, scoped per token, kept durably and swept after the TTL.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::scripted::{self, job, Observed, Options};
use common::TestApp;
use serde_json::{json, Value};

const SOON: Duration = Duration::from_secs(20);

async fn scripted_app() -> (TestApp, Arc<Observed>) {
    let (f, seen) = scripted::factory(Options::default());
    (common::app().backend(f).spawn().await, seen)
}

/// POST `body` to `path` with `key`; (status, replayed header, body).
async fn post_keyed(app: &TestApp, path: &str, key: &str, body: &Value) -> (u16, bool, Value) {
    let res = app
        .client
        .post(app.url(path))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = res.status().as_u16();
    let replayed = match res.headers().get("idempotent-replayed") {
        None => false,
        Some(v) => {
            assert_eq!(v, "true");
            true
        }
    };
    (status, replayed, res.json().await.expect("json"))
}

#[tokio::test]
async fn an_async_retry_with_the_same_key_and_body_answers_the_same_workload() {
    let (app, seen) = scripted_app().await;
    let body = job("node", json!({"output": {"n": 1}, "delay_ms": 50}));
    let (status, replayed, first) = post_keyed(&app, "/v1/workloads/async", "k-1", &body).await;
    assert_eq!((status, replayed), (202, false), "{first}");
    let (status, replayed, again) = post_keyed(&app, "/v1/workloads/async", "\"k-1\"", &body).await;
    assert_eq!((status, replayed), (202, true), "{again}");
    assert_eq!(again["id"], first["id"]);
    let id = first["id"].as_str().expect("id");
    app.wait_terminal(id, SOON).await;
    // After it finished: still the same workload, now with its result.
    let (status, replayed, late) = post_keyed(&app, "/v1/workloads/async", "k-1", &body).await;
    assert_eq!((status, replayed), (202, true));
    assert_eq!(late["id"], first["id"]);
    assert_eq!(late["status"], "completed");
    assert_eq!(late["output"], json!({"n": 1}));
    assert_eq!(seen.started.load(Ordering::SeqCst), 1, "ran once");
    assert_eq!(app.count_rows("workloads"), 1);
    // The same body without a key, or with another key, is a new workload.
    assert_ne!(app.submit_async(&body).await["id"], first["id"]);
    let (_, replayed, other) = post_keyed(&app, "/v1/workloads/async", "k-2", &body).await;
    assert!(!replayed);
    assert_ne!(other["id"], first["id"]);
}

#[tokio::test]
async fn a_sync_retry_waits_for_and_answers_the_same_terminal_workload() {
    let (app, seen) = scripted_app().await;
    let body = job("node", json!({"output": 7, "delay_ms": 300}));
    let app = Arc::new(app);
    let first = {
        let app = app.clone();
        let body = body.clone();
        tokio::spawn(async move { post_keyed(&app, "/v1/workloads", "sync-key", &body).await })
    };
    // The retry arrives while the first is running (the client gave up waiting).
    let t = Instant::now();
    loop {
        if seen.started.load(Ordering::SeqCst) == 1 {
            break;
        }
        assert!(t.elapsed() < SOON, "first never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, replayed, retry) = post_keyed(&app, "/v1/workloads", "sync-key", &body).await;
    let (s1, r1, original) = first.await.expect("join");
    assert_eq!((s1, r1), (200, false));
    assert_eq!((status, replayed), (200, true));
    assert_eq!(retry["id"], original["id"]);
    assert_eq!(
        retry["status"], "completed",
        "the retry waited for the end: {retry}"
    );
    assert_eq!(retry["output"], 7);
    assert_eq!(seen.started.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_first_requests_with_one_key_run_once() {
    let (app, seen) = scripted_app().await;
    let app = Arc::new(app);
    for (path, expected) in [("/v1/workloads/async", 202), ("/v1/workloads", 200)] {
        let key = format!("race-{path}");
        let body = job("node", json!({"output": 1, "delay_ms": 20}));
        let before = seen.started.load(Ordering::SeqCst);
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let (app, key, body) = (app.clone(), key.clone(), body.clone());
                tokio::spawn(async move { post_keyed(&app, path, &key, &body).await })
            })
            .collect();
        let mut ids = std::collections::HashSet::new();
        let mut fresh = 0;
        for t in tasks {
            let (status, replayed, w) = t.await.expect("join");
            assert_eq!(status, expected, "{w}");
            fresh += usize::from(!replayed);
            ids.insert(w["id"].as_str().expect("id").to_string());
        }
        assert_eq!(ids.len(), 1, "one workload for one key: {ids:?}");
        assert_eq!(fresh, 1, "exactly one answer is the original");
        let id = ids.into_iter().next().expect("id");
        app.wait_terminal(&id, SOON).await;
        assert_eq!(seen.started.load(Ordering::SeqCst), before + 1, "{path}");
    }
    assert_eq!(app.count_rows("workloads"), 2);
    assert_eq!(app.count_rows("idempotency_keys"), 2);
}

#[tokio::test]
async fn the_same_key_with_another_request_is_422_and_bad_keys_are_400() {
    let (app, seen) = scripted_app().await;
    let body = job("node", json!({"output": 1}));
    let (status, _, first) = post_keyed(&app, "/v1/workloads/async", "key", &body).await;
    assert_eq!(status, 202);
    let mut other_input = body.clone();
    other_input["input"] = json!({"x": 1});
    let mut other_resources = body.clone();
    other_resources["resources"] = json!({"timeout_s": 5});
    for (path, b) in [
        ("/v1/workloads/async", job("node", json!({"output": 2}))),
        ("/v1/workloads/async", other_input),
        ("/v1/workloads/async", other_resources),
        ("/v1/workloads", body.clone()),
    ] {
        let (status, replayed, v) = post_keyed(&app, path, "key", &b).await;
        assert_eq!((status, replayed), (422, false), "{path} {b}: {v}");
        assert!(
            v["error"]
                .as_str()
                .expect("error")
                .contains("Idempotency-Key"),
            "{v}"
        );
    }
    // The same request in another JSON spelling is the same request.
    let respelled =
        json!({"code": body["code"], "runtime": "node", "isolation": "auto", "input": null});
    let (status, replayed, _) = post_keyed(&app, "/v1/workloads/async", "key", &respelled).await;
    assert_eq!((status, replayed), (202, true));

    let long = "k".repeat(256);
    let res = app
        .client
        .post(app.url("/v1/workloads/async"))
        .header("Idempotency-Key", "x")
        .header("Idempotency-Key", "y")
        .json(&body)
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 400);
    for bad in [long.as_str(), "", "\"\""] {
        let (status, _, v) = post_keyed(&app, "/v1/workloads/async", bad, &body).await;
        assert_eq!(status, 400, "{bad:?}: {v}");
    }
    let (status, _, second) =
        post_keyed(&app, "/v1/workloads/async", &"k".repeat(255), &body).await;
    assert_eq!(status, 202, "255 bytes are fine");
    for w in [first, second] {
        app.wait_terminal(w["id"].as_str().expect("id"), SOON).await;
    }
    assert_eq!(seen.started.load(Ordering::SeqCst), 2);
    assert_eq!(app.count_rows("workloads"), 2);
}

#[tokio::test]
async fn keys_survive_a_restart_and_are_scoped_per_token() {
    let (f, seen) = scripted::factory(Options::default());
    let app = common::app()
        .env("VULCAN_API_TOKEN", "token-a")
        .backend(f.clone())
        .spawn()
        .await;
    let body = job("node", json!({"output": 1}));
    let send = |app: &TestApp, token: &str| {
        app.client
            .post(app.url("/v1/workloads"))
            .bearer_auth(token)
            .header("Idempotency-Key", "durable")
            .json(&body)
            .send()
    };
    let first: Value = send(&app, "token-a")
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(first["status"], "completed");
    let db = app.db_path.clone();
    let dir = app.stop().await;

    let app = common::app()
        .env("VULCAN_API_TOKEN", "token-a")
        .db(db.clone())
        .backend(f.clone())
        .spawn()
        .await;
    let res = send(&app, "token-a").await.expect("req");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    let again: Value = res.json().await.expect("json");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(
        seen.started.load(Ordering::SeqCst),
        1,
        "not run again after the restart"
    );
    app.stop().await;

    // Another token is another client: the same key is theirs to use.
    let app = common::app()
        .env("VULCAN_API_TOKEN", "token-b")
        .db(db)
        .backend(f)
        .spawn()
        .await;
    let res = send(&app, "token-b").await.expect("req");
    assert!(res.headers().get("idempotent-replayed").is_none());
    let theirs: Value = res.json().await.expect("json");
    assert_ne!(theirs["id"], first["id"]);
    assert_eq!(seen.started.load(Ordering::SeqCst), 2);
    app.stop().await;
    drop(dir);
}

#[tokio::test]
async fn keys_are_swept_after_the_ttl_and_free_to_use_again() {
    let (f, _) = scripted::factory(Options::default());
    let app = common::app()
        .env("VULCAN_IDEMPOTENCY_TTL_S", "1")
        .backend(f)
        .spawn()
        .await;
    let (_, _, first) = post_keyed(
        &app,
        "/v1/workloads/async",
        "short",
        &job("node", json!({"output": 1})),
    )
    .await;
    assert_eq!(app.count_rows("idempotency_keys"), 1);
    let t = Instant::now();
    while app.count_rows("idempotency_keys") > 0 {
        assert!(t.elapsed() < SOON, "the key was never swept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The workload stays; the key is forgotten, so another request may use it.
    app.get_json(
        &format!("/v1/workloads/{}", first["id"].as_str().expect("id")),
        200,
    )
    .await;
    let (status, replayed, second) = post_keyed(
        &app,
        "/v1/workloads/async",
        "short",
        &job("node", json!({"output": 2})),
    )
    .await;
    assert_eq!((status, replayed), (202, false), "{second}");
    assert_ne!(second["id"], first["id"]);
}
