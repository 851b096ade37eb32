//! The HTTP contract of the foundation: endpoints, the error format, every bad-input
//! rule (status + JSON error + nothing written), body limits, auth.

mod common;

use std::time::Duration;

use common::scripted::{self, job, Options};
use serde_json::{json, Value};

async fn error_of(res: reqwest::Response, status: u16) -> String {
    assert_eq!(res.status().as_u16(), status);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("application/json"),
        "error body must be JSON"
    );
    let v: Value = res.json().await.expect("json");
    let msg = v["error"].as_str().expect("error string").to_string();
    assert!(!msg.is_empty());
    assert!(
        !msg.contains("/tmp/") && !msg.to_lowercase().contains("sqlite"),
        "leaks: {msg}"
    );
    msg
}

#[tokio::test]
async fn healthz_and_metrics_answer() {
    let app = common::app().spawn().await;
    assert_eq!(app.get_json("/healthz", 200).await, json!({"status": "ok"}));
    let res = app.get("/metrics").await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.expect("text");
    assert!(text.contains("vulcan_http_requests_total"), "{text}");
    assert!(text.contains("vulcan_queue_depth"));
}

#[tokio::test]
async fn database_is_created_and_reopened() {
    let app = common::app().spawn().await;
    assert!(common::store::on_postgres() || app.db_path.exists());
    let path = app.db_path.clone();
    let dir = app.stop().await;
    // Second start on the same file: migrations are idempotent.
    let again = common::app().db(path).spawn().await;
    assert_eq!(again.get_json("/healthz", 200).await["status"], "ok");
    assert_eq!(again.get_json("/v1/workloads", 200).await["total"], 0);
    again.stop().await;
    drop(dir);
}

#[tokio::test]
async fn unknown_ids_are_404() {
    let app = common::app().spawn().await;
    for path in [
        "/v1/workloads/01JKQX7V8MZRN3B4HTGFWDCS9E",
        "/v1/workloads/not-an-id",
        "/v1/workloads/01JKQX7V8MZRN3B4HTGFWDCS9E/logs",
        "/v1/workloads/01JKQX7V8MZRN3B4HTGFWDCS9E/logs/history",
        "/v1/nothing-here",
    ] {
        error_of(app.get(path).await, 404).await;
    }
    error_of(
        app.delete("/v1/workloads/01JKQX7V8MZRN3B4HTGFWDCS9E").await,
        404,
    )
    .await;
}

#[tokio::test]
async fn wrong_method_is_405_json() {
    let app = common::app().spawn().await;
    let res = app
        .client
        .put(app.url("/v1/workloads"))
        .send()
        .await
        .expect("req");
    error_of(res, 405).await;
    let res = app
        .client
        .post(app.url("/healthz"))
        .send()
        .await
        .expect("req");
    error_of(res, 405).await;
}

#[tokio::test]
async fn every_bad_input_rule_is_400_and_writes_nothing() {
    let (f, _) = scripted::factory(Options::default());
    let app = common::app().backend(f).spawn().await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"code": "x"}), "runtime is required"),
        (json!({"runtime": "ruby", "code": "x"}), "unknown runtime"),
        (
            json!({"runtime": "node", "isolation": "vm", "code": "x"}),
            "unknown isolation",
        ),
        (
            json!({"runtime": "node", "code": "x", "code_archive": "eA=="}),
            "mutually exclusive",
        ),
        (json!({"runtime": "node"}), "code or code_archive"),
        (json!({"runtime": "wasm", "code_archive": "***"}), "base64"),
        (
            json!({"runtime": "node", "code": "x", "resources": {"cpus": 0}}),
            "positive",
        ),
        (
            json!({"runtime": "node", "code": "x", "resources": {"mem_mb": -1}}),
            "positive",
        ),
        (
            json!({"runtime": "node", "code": "x", "resources": {"timeout_s": 100000}}),
            "maximum",
        ),
        (
            json!({"runtime": "node", "code": "x", "resources": {"cpus": 1.5}}),
            "invalid",
        ),
        (
            json!({"runtime": "node", "code": "x", "image": "busybox"}),
            "oci",
        ),
        (
            json!({"runtime": "python", "code": "x", "command": ["ls"]}),
            "oci",
        ),
        (json!({"runtime": "oci"}), "image is required"),
        (
            json!({"runtime": "node", "code": "x", "extra": 1}),
            "unknown field `extra`",
        ),
        (
            json!({"runtime": "node", "code": "x", "resources": {"disk": 1}}),
            "unknown field `disk`",
        ),
        (json!({"runtime": 7, "code": "x"}), "invalid"),
        (json!([1, 2]), "invalid"),
    ];
    for (body, want) in cases {
        for path in ["/v1/workloads", "/v1/workloads/async"] {
            let msg = error_of(app.post(path, &body).await, 400).await;
            assert!(msg.contains(want), "{body} -> {msg:?} (wanted {want:?})");
        }
    }
    let res = app
        .client
        .post(app.url("/v1/workloads"))
        .header("content-type", "application/json")
        .body("{\"runtime\": \"node\", ")
        .send()
        .await
        .expect("req");
    error_of(res, 400).await;
    assert_eq!(
        app.count_rows("workloads"),
        0,
        "a rejected request was recorded"
    );
}

#[tokio::test]
async fn body_limit_and_content_type() {
    let app = common::app()
        .env("VULCAN_MAX_BODY_BYTES", "1024")
        .spawn()
        .await;
    let big = json!({"runtime": "node", "code": "x".repeat(4096)});
    error_of(app.post("/v1/workloads", &big).await, 413).await;
    let res = app
        .client
        .post(app.url("/v1/workloads/async"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("req");
    error_of(res, 415).await;
    let res = app
        .client
        .post(app.url("/v1/workloads"))
        .body("{}")
        .send()
        .await
        .expect("req");
    error_of(res, 415).await;
    assert_eq!(app.count_rows("workloads"), 0);
}

#[tokio::test]
async fn default_body_limit_is_15_mib() {
    let app = common::app().spawn().await;
    let big = json!({"runtime": "wasm", "code_archive": "A".repeat(16 * 1024 * 1024)});
    error_of(app.post("/v1/workloads", &big).await, 413).await;
}

#[tokio::test]
async fn auth_on_requires_the_bearer_token() {
    let (f, _) = scripted::factory(Options::default());
    let app = common::app()
        .env("VULCAN_API_TOKEN", "s3cret-token")
        .backend(f)
        .spawn()
        .await;
    error_of(app.get("/v1/workloads").await, 401).await;
    let wrong = app
        .client
        .get(app.url("/v1/workloads"))
        .bearer_auth("s3cret-tokem")
        .send()
        .await
        .expect("req");
    error_of(wrong, 401).await;
    let basic = app
        .client
        .get(app.url("/v1/workloads"))
        .header("authorization", "Basic czNjcmV0LXRva2Vu")
        .send()
        .await
        .expect("req");
    error_of(basic, 401).await;
    let body = job("node", json!({"output": 1}));
    let unauth = app
        .client
        .post(app.url("/v1/workloads"))
        .json(&body)
        .send()
        .await
        .expect("req");
    error_of(unauth, 401).await;
    assert_eq!(app.count_rows("workloads"), 0);
    let ok = app
        .client
        .post(app.url("/v1/workloads"))
        .bearer_auth("s3cret-token")
        .json(&body)
        .send()
        .await
        .expect("req");
    assert_eq!(ok.status(), 200);
    // Health and metrics stay open.
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/metrics").await.status(), 200);
}

#[tokio::test]
async fn auth_off_needs_no_token() {
    let app = common::app().spawn().await;
    assert_eq!(app.get("/v1/workloads").await.status(), 200);
}

#[tokio::test]
async fn list_paginates_filters_and_sorts_newest_first() {
    let (f, _) = scripted::factory(Options::default());
    let app = common::app().backend(f).spawn().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let script = if i % 2 == 0 {
            json!({"output": i})
        } else {
            json!({"error": "no"})
        };
        let mut body = job(if i < 3 { "node" } else { "python" }, script);
        body["isolation"] = json!("isolate");
        let w: Value = app
            .post("/v1/workloads", &body)
            .await
            .json()
            .await
            .expect("json");
        ids.push(w["id"].as_str().expect("id").to_string());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let page = app.get_json("/v1/workloads?limit=2", 200).await;
    assert_eq!(page["total"], 5);
    assert_eq!(page["limit"], 2);
    assert_eq!(page["offset"], 0);
    let got: Vec<&str> = page["workloads"]
        .as_array()
        .expect("arr")
        .iter()
        .map(|w| w["id"].as_str().expect("id"))
        .collect();
    assert_eq!(got, vec![ids[4].as_str(), ids[3].as_str()]);
    let page = app.get_json("/v1/workloads?limit=2&offset=4", 200).await;
    assert_eq!(page["workloads"][0]["id"], ids[0].as_str());
    assert_eq!(
        app.get_json("/v1/workloads?status=failed", 200).await["total"],
        2
    );
    assert_eq!(
        app.get_json("/v1/workloads?runtime=python", 200).await["total"],
        2
    );
    assert_eq!(
        app.get_json("/v1/workloads?isolation=isolate&status=completed", 200)
            .await["total"],
        3
    );
    assert_eq!(
        app.get_json("/v1/workloads?isolation=gvisor", 200).await["total"],
        0
    );
    for bad in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "offset=-1",
        "offset=x",
        "status=done",
        "isolation=auto",
        "runtime=ruby",
        "colour=red",
    ] {
        error_of(app.get(&format!("/v1/workloads?{bad}")).await, 400).await;
    }
}

#[tokio::test]
async fn workload_object_has_a_stable_shape() {
    let (f, _) = scripted::factory(Options::default());
    let app = common::app().backend(f).spawn().await;
    let w = app
        .submit_async(&job("node", json!({"delay_ms": 200})))
        .await;
    for key in [
        "id",
        "status",
        "isolation",
        "requested_isolation",
        "backend",
        "runtime",
        "node_id",
        "input_hash",
        "output",
        "exit_code",
        "error",
        "cpu_limit",
        "mem_limit",
        "timeout_s",
        "duration_ms",
        "created_at",
        "started_at",
        "finished_at",
    ] {
        assert!(w.get(key).is_some(), "missing {key}: {w}");
    }
    assert_eq!(w["status"], "pending");
    assert_eq!(w["requested_isolation"], "auto");
    assert_eq!(w["isolation"], "isolate");
    assert_eq!(w["node_id"], "test-node");
    assert_eq!(w["output"], Value::Null);
    assert_eq!(w["timeout_s"], 30);
    assert_eq!(w["mem_limit"], 128);
    assert_eq!(w["id"].as_str().expect("id").len(), 26);
    assert!(w["input_hash"]
        .as_str()
        .expect("hash")
        .starts_with("sha256:"));
    let created = w["created_at"].as_str().expect("time");
    assert!(created.ends_with('Z') && created.len() == 24, "{created}");
}

#[tokio::test]
async fn kill_pending_then_conflict_on_terminal() {
    let (f, seen) = scripted::factory(Options {
        max_concurrency: 1,
        ..Options::default()
    });
    let app = common::app().backend(f).spawn().await;
    let blocker_id = scripted::occupy_slot(&app).await;
    let queued = app.submit_async(&job("node", json!({"output": 1}))).await;
    let id = queued["id"].as_str().expect("id");
    let res = app.delete(&format!("/v1/workloads/{id}")).await;
    assert_eq!(res.status(), 200);
    let killed: Value = res.json().await.expect("json");
    assert_eq!(killed["status"], "killed");
    assert_eq!(killed["started_at"], Value::Null, "never started");
    // Terminal: 409, and the record is unchanged.
    error_of(app.delete(&format!("/v1/workloads/{id}")).await, 409).await;
    assert_eq!(
        app.get_json(&format!("/v1/workloads/{id}"), 200).await["status"],
        "killed"
    );
    // Kill the running one too; the backend never started the killed pending one.
    assert_eq!(
        app.delete(&format!("/v1/workloads/{blocker_id}"))
            .await
            .status(),
        200
    );
    assert_eq!(seen.started.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn every_get_route_answers_head_and_405_lists_the_allowed_methods() {
    let (f, _) = scripted::factory(Options::default());
    let app = common::app().backend(f).spawn().await;
    let w = app.submit_async(&job("node", json!({"logs": ["a"]}))).await;
    let id = w["id"].as_str().expect("id").to_string();
    app.wait_terminal(&id, Duration::from_secs(10)).await;
    let gets = [
        "/healthz".to_string(),
        "/readyz".to_string(),
        "/metrics".to_string(),
        "/v1/workloads".to_string(),
        format!("/v1/workloads/{id}"),
        format!("/v1/workloads/{id}/logs"),
        format!("/v1/workloads/{id}/logs/history"),
        "/v1/backends".to_string(),
        "/v1/stats".to_string(),
        "/v1/system/actors".to_string(),
    ];
    for path in &gets {
        let get = app.get(path).await;
        let head = app.client.head(app.url(path)).send().await.expect("head");
        assert_eq!(head.status(), get.status(), "HEAD {path}");
        assert_eq!(head.status(), 200, "HEAD {path}");
        assert_eq!(
            head.headers().get("content-type").map(|v| v.to_str().ok()),
            get.headers().get("content-type").map(|v| v.to_str().ok()),
            "HEAD {path}"
        );
        assert!(head.bytes().await.expect("body").is_empty(), "HEAD {path}");
    }
    // HEAD of an unknown workload is a 404 like GET.
    let head = app
        .client
        .head(app.url("/v1/workloads/01JKQX7V8MZRN3B4HTGFWDCS9E"))
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), 404);

    let cases: [(reqwest::Method, String, &str); 5] = [
        (
            reqwest::Method::PUT,
            "/v1/workloads".into(),
            "GET, HEAD, POST",
        ),
        (reqwest::Method::GET, "/v1/workloads/async".into(), "POST"),
        (
            reqwest::Method::POST,
            format!("/v1/workloads/{id}"),
            "GET, HEAD, DELETE",
        ),
        (reqwest::Method::DELETE, "/healthz".into(), "GET, HEAD"),
        (
            reqwest::Method::GET,
            "/v1/backends/isolate/restart".into(),
            "POST",
        ),
    ];
    for (method, path, allow) in cases {
        let res = app
            .client
            .request(method.clone(), app.url(&path))
            .send()
            .await
            .expect("req");
        let mut got: Vec<String> = res
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(',')
            .map(|m| m.trim().to_string())
            .collect();
        got.sort();
        let mut want: Vec<&str> = allow.split(", ").collect();
        want.sort();
        assert_eq!(got, want, "{method} {path}");
        error_of(res, 405).await;
    }
}

#[tokio::test]
async fn the_bearer_scheme_matches_in_any_case() {
    let app = common::app()
        .env("VULCAN_API_TOKEN", "s3cret-token")
        .spawn()
        .await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let res = app
            .client
            .get(app.url("/v1/workloads"))
            .header("authorization", format!("{scheme} s3cret-token"))
            .send()
            .await
            .expect("req");
        assert_eq!(res.status(), 200, "{scheme}");
    }
    for bad in [
        "Bearers3cret-token",
        "Basic s3cret-token",
        "bearer",
        "s3cret-token",
    ] {
        let res = app
            .client
            .get(app.url("/v1/workloads"))
            .header("authorization", bad)
            .send()
            .await
            .expect("req");
        error_of(res, 401).await;
    }
}

/// GET `path` with the given `Host` header.
async fn with_host(app: &common::TestApp, path: &str, host: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .header("host", host)
        .send()
        .await
        .expect("req")
}

#[tokio::test]
async fn without_a_token_only_allowed_hosts_reach_the_api() {
    let app = common::app().spawn().await;
    for host in [
        "localhost",
        "localhost:8080",
        "LOCALHOST:1",
        "127.0.0.1:9",
        "[::1]:8080",
        "[::1]",
    ] {
        assert_eq!(
            with_host(&app, "/v1/workloads", host).await.status(),
            200,
            "{host}"
        );
    }
    // A page that rebinds its own name to 127.0.0.1 still sends its own name.
    for host in [
        "evil.example",
        "evil.example:8080",
        "127.0.0.1.evil.example",
        "localhost.evil.example",
        "10.0.0.7:8080",
    ] {
        let msg = error_of(with_host(&app, "/v1/workloads", host).await, 403).await;
        assert!(msg.contains("allowed_hosts"), "{msg}");
        // Also for writes and unknown routes under /v1.
        let res = app
            .client
            .post(app.url("/v1/workloads/async"))
            .header("host", host)
            .json(&json!({"runtime": "node", "code": "1"}))
            .send()
            .await
            .expect("req");
        error_of(res, 403).await;
    }
    assert_eq!(app.count_rows("workloads"), 0);
    // Probes from orchestrators send a pod IP: health and metrics stay open.
    assert_eq!(
        with_host(&app, "/healthz", "10.1.2.3:8080").await.status(),
        200
    );
    assert_eq!(
        with_host(&app, "/metrics", "10.1.2.3:8080").await.status(),
        200
    );

    // Configured hosts are allowed, "*" turns the check off, a token replaces it.
    let app = common::app()
        .env("VULCAN_ALLOWED_HOSTS", "vulcan.internal,10.0.0.7:8080")
        .spawn()
        .await;
    assert_eq!(
        with_host(&app, "/v1/workloads", "vulcan.internal:1")
            .await
            .status(),
        200
    );
    assert_eq!(
        with_host(&app, "/v1/workloads", "10.0.0.7:8080")
            .await
            .status(),
        200
    );
    error_of(with_host(&app, "/v1/workloads", "10.0.0.7:9090").await, 403).await;
    error_of(with_host(&app, "/v1/workloads", "localhost").await, 403).await;
    let app = common::app().env("VULCAN_ALLOWED_HOSTS", "*").spawn().await;
    assert_eq!(
        with_host(&app, "/v1/workloads", "anything.example")
            .await
            .status(),
        200
    );
    let app = common::app().env("VULCAN_API_TOKEN", "tok").spawn().await;
    let res = app
        .client
        .get(app.url("/v1/workloads"))
        .header("host", "vulcan.example.com")
        .bearer_auth("tok")
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn metrics_label_only_known_methods_and_route_patterns() {
    let app = common::app().spawn().await;
    let id = "01JKQX7V8MZRN3B4HTGFWDCS9E";
    for method in ["FROBNICATE", "X-EVIL-12345", "GET"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let res = app
            .client
            .request(m, app.url(&format!("/v1/workloads/{id}")))
            .send()
            .await
            .expect("req");
        assert!(res.status() == 405 || res.status() == 404, "{method}");
    }
    app.get("/no/such/path/12345").await;
    let text = app.get("/metrics").await.text().await.expect("text");
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("vulcan_http_requests_total{"))
        .collect();
    assert!(
        requests
            .iter()
            .any(|l| l.contains(r#"method="other""#) && l.contains(r#"route="/v1/workloads/{id}""#)),
        "{requests:#?}"
    );
    for leaked in ["FROBNICATE", "X-EVIL", id, "/no/such/path"] {
        assert!(!text.contains(leaked), "{leaked} became a label:\n{text}");
    }
}
