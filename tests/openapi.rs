//! `GET /openapi.json`: an OpenAPI 3.1 document generated from the code. Every route
//! the app serves is in it (and nothing else), and real answers of every endpoint
//! validate against the schemas it gives for their status and content type.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::scripted::{self, job, Options};
use serde_json::{json, Value};

async fn document(app: &common::TestApp) -> Value {
    let res = app.get("/openapi.json").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("application/json"));
    res.json().await.expect("json")
}

#[tokio::test]
async fn the_document_is_openapi_3_1_served_without_a_token() {
    let app = common::app().env("VULCAN_API_TOKEN", "t0k3n").spawn().await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Vulcan");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // The log stream is documented as an event stream.
    let sse = &doc["paths"]["/v1/workloads/{id}/logs"]["get"]["responses"]["200"]["content"];
    assert!(sse["text/event-stream"].is_object(), "{sse}");
    app.stop().await;
}

#[test]
fn every_served_route_is_in_the_document_and_nothing_else() {
    let doc: Value =
        serde_json::from_str(&vulcan::api::openapi::json().expect("document")).expect("json");
    let table = vulcan::api::route_table();
    assert!(table.len() >= 15, "route table looks empty: {table:?}");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, methods) in &table {
        let item = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} is served but not documented"));
        assert!(!methods.is_empty(), "{path} has no methods");
        for m in methods {
            // HEAD is GET without a body (docs/api.md); the document lists the GET.
            let m = if *m == "HEAD" { "get" } else { m };
            assert!(
                item.get(m.to_ascii_lowercase()).is_some(),
                "{m} {path} is served but not documented"
            );
        }
    }
    for (path, item) in paths {
        let served = table
            .get(path)
            .unwrap_or_else(|| panic!("{path} is documented but not served"));
        for m in item.as_object().expect("item").keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&m.as_str()) {
                assert!(
                    served.iter().any(|s| s.eq_ignore_ascii_case(m)),
                    "{m} {path} is documented but not served"
                );
            }
        }
    }
}

/// Validates answers against the document.
struct Contract {
    doc: Value,
    /// (METHOD, path pattern) seen, to prove every route was exercised.
    seen: BTreeSet<(String, String)>,
}

impl Contract {
    /// A validator for `schema`, resolving `#/components/...` against the document.
    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        jsonschema::draft202012::new(&root).expect("a valid JSON Schema")
    }

    /// Check one real answer of `method pattern` against the document.
    async fn check(&mut self, method: &str, pattern: &str, res: reqwest::Response) -> Value {
        let status = res.status().as_u16().to_string();
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let op = &self.doc["paths"][pattern][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {pattern} not documented");
        let answer = &op["responses"][&status];
        assert!(
            answer.is_object(),
            "{method} {pattern} answered {status}, which is not documented: {}",
            op["responses"]
        );
        self.seen.insert((method.to_string(), pattern.to_string()));
        if status == "204" {
            return Value::Null;
        }
        let content = answer["content"].as_object().expect("content documented");
        let media = ct.split(';').next().unwrap_or("").trim().to_string();
        let Some(declared) = content.get(&media) else {
            panic!("{method} {pattern} {status} answered {media}, documented: {content:?}");
        };
        if media != "application/json" {
            return Value::Null;
        }
        let body: Value = res.json().await.expect("json body");
        let validator = self.validator(&declared["schema"]);
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {pattern} {status}: body does not match the schema: {errors:?}\n{body}"
        );
        body
    }
}

#[tokio::test]
async fn the_schemas_reject_what_does_not_match() {
    let doc: Value =
        serde_json::from_str(&vulcan::api::openapi::json().expect("document")).expect("json");
    let c = Contract {
        doc,
        seen: BTreeSet::new(),
    };
    let workload = c.validator(&json!({"$ref": "#/components/schemas/Workload"}));
    assert!(!workload.is_valid(&json!({})), "required fields");
    assert!(!workload.is_valid(&json!({"id": 1})));
    let err = c.validator(&json!({"$ref": "#/components/schemas/ErrorBody"}));
    assert!(err.is_valid(&json!({"error": "x"})));
    assert!(!err.is_valid(&json!({"message": "x"})));
}

#[tokio::test]
async fn real_answers_of_every_endpoint_match_their_schemas() {
    let (f, _) = scripted::factory(Options::default());
    let app = common::app().backend(f).spawn().await;
    let doc = document(&app).await;
    let mut c = Contract {
        doc,
        seen: BTreeSet::new(),
    };
    let client = &app.client;
    let url = |p: &str| app.url(p);

    // Unguarded routes.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/"] {
        let res = app.get(path).await;
        c.check("GET", path, res).await;
    }
    c.check("GET", "/ui/{file}", app.get("/ui/app.js").await)
        .await;
    c.check("GET", "/ui/{file}", app.get("/ui/nope.exe").await)
        .await;

    // Workloads.
    let done = c
        .check(
            "POST",
            "/v1/workloads",
            app.post(
                "/v1/workloads",
                &job("node", json!({"logs": ["a", "b"], "output": {"x": 1}})),
            )
            .await,
        )
        .await;
    assert_eq!(done["status"], "completed");
    let id = done["id"].as_str().expect("id").to_string();
    c.check(
        "POST",
        "/v1/workloads",
        app.post("/v1/workloads", &json!({"runtime": "node"})).await,
    )
    .await;
    c.check(
        "POST",
        "/v1/workloads",
        client
            .post(url("/v1/workloads"))
            .body("{}")
            .header("content-type", "text/plain")
            .send()
            .await
            .expect("post"),
    )
    .await;
    c.check(
        "POST",
        "/v1/workloads",
        app.post(
            "/v1/workloads",
            &json!({"runtime": "node", "isolation": "microvm", "code": "1"}),
        )
        .await,
    )
    .await;
    let running = c
        .check(
            "POST",
            "/v1/workloads/async",
            app.post(
                "/v1/workloads/async",
                &job("node", json!({"delay_ms": 60_000})),
            )
            .await,
        )
        .await;
    let running_id = running["id"].as_str().expect("id").to_string();
    app.wait_status(&running_id, "running", Duration::from_secs(10))
        .await;
    for q in ["", "?status=completed&runtime=node&limit=5", "?limit=0"] {
        let res = app.get(&format!("/v1/workloads{q}")).await;
        c.check("GET", "/v1/workloads", res).await;
    }
    let w = format!("/v1/workloads/{id}");
    c.check("GET", "/v1/workloads/{id}", app.get(&w).await)
        .await;
    c.check(
        "GET",
        "/v1/workloads/{id}",
        app.get("/v1/workloads/01JKQX7V8MZRN3B4HTGFWDCS9E").await,
    )
    .await;
    c.check("DELETE", "/v1/workloads/{id}", app.delete(&w).await)
        .await;
    c.check(
        "DELETE",
        "/v1/workloads/{id}",
        app.delete(&format!("/v1/workloads/{running_id}")).await,
    )
    .await;
    c.check(
        "GET",
        "/v1/workloads/{id}/deliveries",
        app.get(&format!("{w}/deliveries")).await,
    )
    .await;

    // Logs.
    let logs = format!("{w}/logs");
    c.check("GET", "/v1/workloads/{id}/logs", app.get(&logs).await)
        .await;
    let res = client
        .get(url(&logs))
        .header("Last-Event-ID", "99")
        .send()
        .await
        .expect("get");
    c.check("GET", "/v1/workloads/{id}/logs", res).await;
    let res = client
        .get(url(&logs))
        .header("Last-Event-ID", "x")
        .send()
        .await
        .expect("get");
    c.check("GET", "/v1/workloads/{id}/logs", res).await;
    for q in ["", "?after=0&limit=1", "?limit=0"] {
        let res = app.get(&format!("{logs}/history{q}")).await;
        c.check("GET", "/v1/workloads/{id}/logs/history", res).await;
    }

    // Backends, images, system.
    c.check("GET", "/v1/backends", app.get("/v1/backends").await)
        .await;
    c.check(
        "POST",
        "/v1/backends/{name}/restart",
        app.post("/v1/backends/scripted/restart", &json!({})).await,
    )
    .await;
    c.check(
        "POST",
        "/v1/backends/{name}/restart",
        app.post("/v1/backends/nope/restart", &json!({})).await,
    )
    .await;
    c.check("GET", "/v1/nodes", app.get("/v1/nodes").await)
        .await;
    c.check("GET", "/v1/images", app.get("/v1/images").await)
        .await;
    c.check(
        "POST",
        "/v1/images",
        app.post("/v1/images", &json!({"image": ""})).await,
    )
    .await;
    c.check(
        "DELETE",
        "/v1/images/{digest}",
        app.delete(&format!("/v1/images/sha256:{}", "0".repeat(64)))
            .await,
    )
    .await;
    c.check("GET", "/v1/stats", app.get("/v1/stats").await)
        .await;
    c.check(
        "GET",
        "/v1/system/actors",
        app.get("/v1/system/actors").await,
    )
    .await;
    for name in ["log_broker", "supervisor", "nobody"] {
        c.check(
            "POST",
            "/v1/system/actors/{name}/restart",
            app.post(&format!("/v1/system/actors/{name}/restart"), &json!({}))
                .await,
        )
        .await;
    }

    // Every served route was exercised (a new route needs a line here).
    let mut missing = BTreeMap::new();
    for (path, methods) in vulcan::api::route_table() {
        for m in methods.into_iter().filter(|m| *m != "HEAD") {
            if !c.seen.contains(&(m.to_string(), path.clone())) {
                missing.insert(path.clone(), m);
            }
        }
    }
    assert!(missing.is_empty(), "not exercised: {missing:?}");
    app.stop().await;
}

#[tokio::test]
async fn the_guard_answers_match_their_schemas() {
    let app = common::app().env("VULCAN_API_TOKEN", "t0k3n").spawn().await;
    let mut c = Contract {
        doc: document(&app).await,
        seen: BTreeSet::new(),
    };
    c.check("GET", "/v1/workloads", app.get("/v1/workloads").await)
        .await;
    let app2 = common::app().spawn().await;
    let res = app2
        .client
        .get(app2.url("/v1/stats"))
        .header("Host", "evil.example")
        .send()
        .await
        .expect("get");
    c.check("GET", "/v1/stats", res).await;
    app.stop().await;
    app2.stop().await;
}
