//! CORS: pages on the origins in `cors.allowed_origins` may call the API (preflight
//! answered, `Authorization` and `Last-Event-ID` allowed, the log stream readable);
//! pages on any other origin get no CORS grant; same-origin requests are untouched.
//! (The browser half, a real page on a second origin, is in tests/dashboard_browser.rs.)

mod common;

use std::time::Duration;

use common::scripted::{self, job, Options};
use serde_json::json;

const ALLOWED: &str = "http://dash.example:3000";
const OTHER: &str = "http://evil.example";

async fn cors_app(token: Option<&str>) -> common::TestApp {
    let (f, _) = scripted::factory(Options::default());
    let mut b = common::app()
        .backend(f)
        .env("VULCAN_CORS__ALLOWED_ORIGINS", ALLOWED);
    if let Some(t) = token {
        b = b.env("VULCAN_API_TOKEN", t);
    }
    b.spawn().await
}

async fn preflight(
    app: &common::TestApp,
    origin: &str,
    method: &str,
    headers: &str,
) -> reqwest::Response {
    app.client
        .request(reqwest::Method::OPTIONS, app.url("/v1/workloads/x/logs"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", method)
        .header("Access-Control-Request-Headers", headers)
        .send()
        .await
        .expect("preflight")
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn preflight_from_an_allowed_origin_grants_authorization_and_last_event_id() {
    let app = cors_app(Some("t0k3n")).await;
    let res = preflight(&app, ALLOWED, "GET", "authorization,last-event-id").await;
    assert_eq!(
        res.status(),
        200,
        "preflight answered before the token check"
    );
    assert_eq!(header(&res, "access-control-allow-origin"), Some(ALLOWED));
    let allowed = header(&res, "access-control-allow-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    for h in ["authorization", "last-event-id"] {
        assert!(allowed.contains(h), "{h} not allowed: {allowed}");
    }
    let methods = header(&res, "access-control-allow-methods").unwrap_or("");
    for m in ["GET", "POST", "DELETE"] {
        assert!(methods.contains(m), "{m} not allowed: {methods}");
    }
    assert!(header(&res, "access-control-max-age").is_some());
    app.stop().await;
}

#[tokio::test]
async fn preflight_from_another_origin_is_refused() {
    let app = cors_app(None).await;
    let res = preflight(&app, OTHER, "POST", "content-type").await;
    assert_eq!(res.status(), 400, "refused");
    assert_eq!(header(&res, "access-control-allow-origin"), None);
    let body: serde_json::Value = res.json().await.expect("a JSON error");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("Origin is not allowed"),
        "{body}"
    );
    // A listed origin asking for a header that is not allowed: refused, with the reason.
    let res = preflight(&app, ALLOWED, "GET", "x-forwarded-host").await;
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.expect("a JSON error");
    assert!(
        body["error"].as_str().unwrap_or("").contains("headers"),
        "{body}"
    );
    // The server is fine and still serves the allowed origin.
    let res = preflight(&app, ALLOWED, "POST", "content-type").await;
    assert_eq!(res.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn an_allowed_origin_reads_the_log_stream_with_a_token_and_resumes() {
    let app = cors_app(Some("t0k3n")).await;
    let w = app
        .client
        .post(app.url("/v1/workloads"))
        .bearer_auth("t0k3n")
        .header("Origin", ALLOWED)
        .json(&job("node", json!({"logs": ["one", "two", "three"]})))
        .send()
        .await
        .expect("submit");
    assert_eq!(w.status(), 200);
    assert_eq!(header(&w, "access-control-allow-origin"), Some(ALLOWED));
    let id = w.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let res = app
        .client
        .get(app.url(&format!("/v1/workloads/{id}/logs")))
        .bearer_auth("t0k3n")
        .header("Origin", ALLOWED)
        .header("Last-Event-ID", "0")
        .send()
        .await
        .expect("stream");
    assert_eq!(header(&res, "access-control-allow-origin"), Some(ALLOWED));
    let mut reader = common::sse::Reader::new(res);
    let events = reader.collect(Duration::from_secs(10)).await;
    let lines: Vec<&str> = events
        .iter()
        .filter(|e| e.event.is_none())
        .map(|e| e.data.as_str())
        .collect();
    assert_eq!(lines, ["two", "three"], "resumed after seq 0");
    assert_eq!(events.last().and_then(|e| e.event.as_deref()), Some("done"));
    app.stop().await;
}

#[tokio::test]
async fn a_refused_token_still_tells_an_allowed_page_why() {
    let app = cors_app(Some("t0k3n")).await;
    let res = app
        .client
        .get(app.url("/v1/workloads"))
        .header("Origin", ALLOWED)
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 401);
    assert_eq!(header(&res, "access-control-allow-origin"), Some(ALLOWED));
    app.stop().await;
}

#[tokio::test]
async fn another_origin_gets_no_grant_and_same_origin_is_untouched() {
    let app = cors_app(None).await;
    let res = app
        .client
        .get(app.url("/v1/workloads"))
        .header("Origin", OTHER)
        .send()
        .await
        .expect("get");
    // Not blocked by the server (the browser withholds the answer from the page),
    // but no grant: the page cannot read it.
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "access-control-allow-origin"), None);
    // A same-origin POST (browsers send Origin on it) works as before.
    let res = app
        .client
        .post(app.url("/v1/workloads"))
        .header("Origin", &app.address)
        .json(&job("node", json!({"output": 1})))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn without_allowed_origins_no_origin_gets_a_grant() {
    let (f, _) = scripted::factory(Options::default());
    let app = common::app().backend(f).spawn().await;
    let res = preflight(&app, ALLOWED, "GET", "authorization").await;
    assert!(res.status().is_client_error(), "{}", res.status());
    assert_eq!(header(&res, "access-control-allow-origin"), None);
    let res = app
        .client
        .get(app.url("/v1/workloads"))
        .header("Origin", ALLOWED)
        .send()
        .await
        .expect("get");
    assert_eq!(header(&res, "access-control-allow-origin"), None);
    app.stop().await;
}
