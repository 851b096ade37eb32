//! The dashboard in a real browser (headless chromium over WebDriver): the page loads
//! under its strict CSP with no console errors, at desktop and 375 px width; the
//! backends panel restarts a backend; a workload submitted through the form streams
//! its log lines in order while it runs and completes; a dropped log stream resumes
//! without loss or repeats; validation errors show inline; a running workload is
//! killed from the page; a token-protected server asks for the token and keeps it for
//! the tab; a page on a second origin reads the log stream when its origin is allowed
//! and is refused otherwise. Screenshots: `<target dir>/dashboard-screenshots/`.
//!
//! Without chromium and chromedriver every test prints a SKIPPED line and passes.

mod common;

use std::time::Duration;

use common::browser::{Browser, SecondOrigin};
use fantoccini::key::Key;
use fantoccini::Locator;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// A node module that logs `tick 1..=5`, 500 ms apart, then returns a + b.
const TICKS: &str = "export default async (input) => { for (let i = 1; i <= 5; i++) { \
    console.log(\"tick\", i); await new Promise((r) => setTimeout(r, 500)); } \
    return { sum: input.a + input.b }; };";

/// A node module that logs forever.
const FOREVER: &str = "export default async () => { for (let i = 0; ; i++) { \
    console.log(\"line\", i); await new Promise((r) => setTimeout(r, 200)); } };";

async fn no_console_errors(b: &Browser, allowed: &[&str]) {
    let errors: Vec<String> = b
        .console_errors()
        .await
        .into_iter()
        .filter(|e| !allowed.iter().any(|a| e.contains(a)))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}

async fn set_code(b: &Browser, code: &str) {
    let area = b.by_id("f-code").await;
    area.clear().await.expect("clear");
    area.send_keys(code).await.expect("type code");
}

/// Submit the form and wait for the detail view of the new workload; returns its id.
async fn run_from_form(b: &Browser) -> String {
    b.by_id("run").await.click().await.expect("click run");
    let hash = b
        .wait_js("location.hash.startsWith('#/w/') && location.hash", WAIT)
        .await;
    hash.as_str()
        .and_then(|h| h.strip_prefix("#/w/"))
        .expect("id in hash")
        .to_string()
}

async fn log_lines(b: &Browser) -> Vec<String> {
    let v = b
        .js("[...document.querySelectorAll('#logs li[data-seq]')].map((li) => li.textContent)")
        .await;
    serde_json::from_value(v).expect("lines")
}

#[tokio::test]
async fn the_page_loads_under_a_strict_csp_without_console_errors_at_desktop_and_375px() {
    let Some(b) = Browser::start("dashboard page load").await else {
        return;
    };
    let app = common::app().builtin().spawn().await;
    let res = app.get("/").await;
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_string();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));

    b.client.goto(&app.address).await.expect("goto");
    b.wait_js(
        "document.querySelector('#backend-rows tr[data-name=isolate]')",
        WAIT,
    )
    .await;
    b.wait_js(
        "document.getElementById('conn').textContent === 'connected'",
        WAIT,
    )
    .await;
    assert!(b
        .js("document.getElementById('f-code').value.includes('export default')")
        .await
        .as_bool()
        .unwrap_or(false));
    b.screenshot("home").await;
    b.client.set_window_size(375, 812).await.expect("resize");
    b.wait_js("window.innerWidth <= 400", WAIT).await;
    // Nothing sticks out of the 375 px viewport (no horizontal scrolling of the page;
    // wide tables scroll inside their own box).
    let outside = b
        .js("[...document.querySelectorAll('body *')]
              .filter((e) => e.offsetParent && !e.closest('.scroll')
                && e.getBoundingClientRect().right > window.innerWidth + 1)
              .map((e) => e.tagName + '#' + e.id + '.' + e.className)")
        .await;
    assert_eq!(outside, json!([]), "elements outside the 375 px viewport");
    let widths = b
        .js("[document.documentElement.scrollWidth, window.innerWidth]")
        .await;
    assert!(
        widths[0].as_u64() <= widths[1].as_u64(),
        "horizontal overflow at 375 px: {widths}"
    );
    b.screenshot("home-375px").await;
    no_console_errors(&b, &[]).await;
    b.close().await;
    app.stop().await;
}

#[tokio::test]
async fn the_backends_panel_restarts_a_backend() {
    let Some(b) = Browser::start("dashboard backend restart").await else {
        return;
    };
    let app = common::app().builtin().spawn().await;
    b.client.goto(&app.address).await.expect("goto");
    b.wait_js(
        "document.querySelector('#backend-rows tr[data-name=isolate] td:nth-child(5)').textContent === '0'",
        WAIT,
    )
    .await;
    b.client
        .find(Locator::Css("button[aria-label='Restart isolate']"))
        .await
        .expect("restart button")
        .click()
        .await
        .expect("click restart");
    b.wait_js(
        "document.querySelector('#backend-rows tr[data-name=isolate] td:nth-child(5)').textContent === '1'",
        WAIT,
    )
    .await;
    let isolate = app.get_json("/v1/backends", 200).await;
    let restarts = isolate
        .as_array()
        .and_then(|list| list.iter().find(|b| b["name"] == "isolate"))
        .map(|b| b["restarts"].clone());
    assert_eq!(restarts, Some(json!(1)));

    // The restarted backend runs the next workload at once.
    let next = app
        .post(
            "/v1/workloads",
            &json!({"runtime": "node", "code": "export default () => 7;"}),
        )
        .await;
    assert_eq!(next.status(), 200);
    no_console_errors(&b, &[]).await;
    b.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_workload_submitted_through_the_form_streams_its_lines_in_order_and_completes() {
    let Some(b) = Browser::start("dashboard submit").await else {
        return;
    };
    let app = common::app().builtin().spawn().await;
    b.client.goto(&app.address).await.expect("goto");
    b.wait_js(
        "document.getElementById('conn').textContent === 'connected'",
        WAIT,
    )
    .await;
    set_code(&b, TICKS).await;
    let id = run_from_form(&b).await;

    // While it runs: some lines shown, not all, no end marker yet.
    b.wait_js(
        "(() => { const n = document.querySelectorAll('#logs li[data-seq]').length; \
           return n >= 1 && n < 5 && !document.querySelector('#logs li.end'); })()",
        WAIT,
    )
    .await;
    b.screenshot("detail-running").await;
    let partial = log_lines(&b).await;
    b.wait_js("document.querySelector('#logs li.end')", WAIT)
        .await;
    let lines = log_lines(&b).await;
    assert_eq!(
        lines,
        ["tick 1", "tick 2", "tick 3", "tick 4", "tick 5"],
        "in order, once each"
    );
    assert!(lines.starts_with(&partial), "{partial:?} then {lines:?}");
    let end = b
        .js("document.querySelector('#logs li.end').textContent")
        .await;
    assert!(end.as_str().unwrap_or("").contains("completed"), "{end}");
    b.wait_js(
        "document.getElementById('d-status').textContent === 'completed'",
        WAIT,
    )
    .await;
    let output: Value = serde_json::from_str(
        b.js("document.getElementById('d-output').textContent")
            .await
            .as_str()
            .expect("output"),
    )
    .expect("output JSON");
    assert_eq!(output, json!({"sum": 3}));
    assert!(
        b.js("document.getElementById('kill').disabled").await == json!(true),
        "no kill for a terminal workload"
    );
    b.screenshot("detail-completed").await;

    // Back to the list (by keyboard): the workload is there, completed; the filters apply.
    b.client
        .find(Locator::Css("a.back"))
        .await
        .expect("back link")
        .send_keys(&Key::Enter.to_string())
        .await
        .expect("enter");
    b.wait_js(
        &format!("document.querySelector('#rows tr[data-id=\"{id}\"][data-status=completed]')"),
        WAIT,
    )
    .await;
    b.by_id("filter-status")
        .await
        .select_by_value("killed")
        .await
        .expect("filter");
    b.wait_js(
        &format!("!document.querySelector('#rows tr[data-id=\"{id}\"]')"),
        WAIT,
    )
    .await;
    b.by_id("filter-status")
        .await
        .select_by_value("")
        .await
        .expect("filter");
    b.wait_js(
        &format!("document.querySelector('#rows tr[data-id=\"{id}\"]')"),
        WAIT,
    )
    .await;
    b.wait_js(
        "document.querySelector('#stats-rows tr') && document.getElementById('stats-counts').textContent.includes('completed 1')",
        WAIT,
    )
    .await;
    b.screenshot("dashboard").await;
    let w = app.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert_eq!(w["status"], "completed");
    no_console_errors(&b, &[]).await;
    b.close().await;
    app.stop().await;
}

#[tokio::test]
async fn validation_errors_are_shown_inline_and_nothing_is_submitted() {
    let Some(b) = Browser::start("dashboard validation").await else {
        return;
    };
    let app = common::app().builtin().spawn().await;
    b.client.goto(&app.address).await.expect("goto");
    b.wait_js(
        "document.getElementById('conn').textContent === 'connected'",
        WAIT,
    )
    .await;
    let input = b.by_id("f-input").await;
    input.clear().await.expect("clear");
    input.send_keys("{not json").await.expect("type");
    b.by_id("run").await.click().await.expect("click");
    b.wait_js(
        "document.getElementById('input-error').textContent.includes('not valid JSON')",
        WAIT,
    )
    .await;
    assert_eq!(
        b.js("document.getElementById('f-input').getAttribute('aria-invalid')")
            .await,
        json!("true")
    );
    // Fixed input, but a limit above the server's maximum: the server's 400 is shown.
    input.clear().await.expect("clear");
    input.send_keys("{}").await.expect("type");
    b.by_id("f-cpus")
        .await
        .send_keys("999")
        .await
        .expect("cpus");
    b.by_id("run").await.click().await.expect("click");
    b.wait_js(
        "document.getElementById('submit-error').textContent.includes('cpus')",
        WAIT,
    )
    .await;
    assert_eq!(
        b.js("document.getElementById('input-error').textContent")
            .await,
        json!("")
    );
    b.screenshot("validation").await;
    assert_eq!(
        app.get_json("/v1/workloads", 200).await["total"],
        0,
        "nothing recorded"
    );
    b.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_running_workload_is_killed_from_the_page() {
    let Some(b) = Browser::start("dashboard kill").await else {
        return;
    };
    let app = common::app().builtin().spawn().await;
    b.client.goto(&app.address).await.expect("goto");
    b.wait_js(
        "document.getElementById('conn').textContent === 'connected'",
        WAIT,
    )
    .await;
    set_code(&b, FOREVER).await;
    let id = run_from_form(&b).await;
    b.wait_js(
        "document.getElementById('d-status').textContent === 'running' && \
         document.querySelectorAll('#logs li[data-seq]').length >= 2 && \
         !document.getElementById('kill').disabled",
        WAIT,
    )
    .await;
    b.by_id("kill").await.click().await.expect("kill");
    b.wait_js(
        "document.getElementById('d-status').textContent === 'killed'",
        WAIT,
    )
    .await;
    b.wait_js(
        "document.querySelector('#logs li.end') && document.querySelector('#logs li.end').textContent.includes('killed')",
        WAIT,
    )
    .await;
    b.screenshot("killed").await;
    assert_eq!(
        app.get_json(&format!("/v1/workloads/{id}"), 200).await["status"],
        "killed"
    );
    // The server is fine: the next workload runs at once.
    let next = app
        .post(
            "/v1/workloads",
            &json!({"runtime": "node", "code": "export default () => 7;"}),
        )
        .await;
    assert_eq!(next.status(), 200);
    no_console_errors(&b, &[]).await;
    b.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_dropped_log_stream_is_resumed_without_losing_or_repeating_lines() {
    let Some(b) = Browser::start("dashboard resume").await else {
        return;
    };
    // A subscriber that falls 8 events behind is disconnected by the server (it is
    // expected to resume with Last-Event-ID): a burst of big lines makes the page's
    // stream fall behind at once.
    let app = common::app()
        .builtin()
        .env("VULCAN_LOGS__SUBSCRIBER_BUFFER", "8")
        .spawn()
        .await;
    let lines = 2000;
    b.client.goto(&app.address).await.expect("goto");
    b.wait_js(
        "document.getElementById('conn').textContent === 'connected'",
        WAIT,
    )
    .await;
    set_code(
        &b,
        &format!(
            "export default async () => {{ await new Promise((r) => setTimeout(r, 500)); \
             const pad = 'y'.repeat(2000); for (let i = 0; i < {lines}; i++) console.log(i, pad); return 1; }};"
        ),
    )
    .await;
    let id = run_from_form(&b).await;
    b.wait_js(
        "document.querySelector('#logs li.end')",
        Duration::from_secs(60),
    )
    .await;
    let seqs = b
        .js("[...document.querySelectorAll('#logs li[data-seq]')].map((li) => Number(li.dataset.seq))")
        .await;
    let seqs: Vec<u64> = serde_json::from_value(seqs).expect("seqs");
    assert_eq!(seqs.len(), lines, "every line once");
    assert!(
        seqs.iter().enumerate().all(|(i, s)| *s == i as u64),
        "in order, no gap, no repeat"
    );
    let first = b
        .js("document.querySelector('#logs li[data-seq]').textContent")
        .await;
    assert!(first.as_str().unwrap_or("").starts_with("0 yyy"), "{first}");
    // The server really dropped the stream: the page asked for it more than once.
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    let streams: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("vulcan_http_requests_total")
                && l.contains("route=\"/v1/workloads/{id}/logs\"")
                && l.contains("method=\"GET\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        streams >= 2.0,
        "the stream was never dropped and resumed: {streams}"
    );
    assert_eq!(
        app.get_json(&format!("/v1/workloads/{id}"), 200).await["status"],
        "completed"
    );
    no_console_errors(&b, &[]).await;
    b.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_token_protected_server_asks_for_the_token_once_and_keeps_it_for_the_tab() {
    let Some(b) = Browser::start("dashboard token").await else {
        return;
    };
    let token = "s3cret-t0ken";
    let app = common::app()
        .builtin()
        .env("VULCAN_API_TOKEN", token)
        .spawn()
        .await;
    b.client.goto(&app.address).await.expect("goto");
    b.wait_js("!document.getElementById('token-form').hidden", WAIT)
        .await;
    b.screenshot("token").await;
    // A wrong token is refused and asked again.
    b.by_id("token-input")
        .await
        .send_keys("wrong")
        .await
        .expect("type");
    b.by_id("token-input")
        .await
        .send_keys(&Key::Enter.to_string())
        .await
        .expect("enter");
    b.wait_js(
        "!document.getElementById('token-form').hidden && \
         document.getElementById('token-error').textContent.includes('refused')",
        WAIT,
    )
    .await;
    b.by_id("token-input")
        .await
        .send_keys(token)
        .await
        .expect("type");
    b.by_id("token-input")
        .await
        .send_keys(&Key::Enter.to_string())
        .await
        .expect("enter");
    b.wait_js(
        "document.getElementById('token-form').hidden && \
         document.querySelector('#backend-rows tr[data-name=isolate]')",
        WAIT,
    )
    .await;
    assert_eq!(
        b.js("sessionStorage.getItem('vulcan.token')").await,
        json!(token)
    );
    // Kept for the tab: a reload is not asked again.
    b.client.refresh().await.expect("reload");
    b.wait_js(
        "document.querySelector('#backend-rows tr[data-name=isolate]')",
        WAIT,
    )
    .await;
    assert_eq!(
        b.js("document.getElementById('token-form').hidden").await,
        json!(true)
    );
    // The log stream is read with the token in a header.
    set_code(&b, TICKS).await;
    run_from_form(&b).await;
    b.wait_js("document.querySelector('#logs li.end')", WAIT)
        .await;
    assert_eq!(log_lines(&b).await.len(), 5);
    let url = b.client.current_url().await.expect("url");
    assert!(!url.as_str().contains(token), "token in the URL: {url}");
    // The only errors are the 401s that made the page ask.
    no_console_errors(&b, &["401"]).await;
    b.close().await;
    app.stop().await;
}

/// A page on another origin reading a workload's log stream with fetch + a stream
/// reader, with the bearer token and Last-Event-ID (so the browser sends a preflight).
const SECOND_ORIGIN_PAGE: &str = r#"<!doctype html>
<html><head><link rel="icon" href="data:,"></head><body><pre id="out"></pre><script>
const p = new URLSearchParams(location.search);
fetch(`${p.get('api')}/v1/workloads/${p.get('id')}/logs`, {
  headers: { Authorization: `Bearer ${p.get('token')}`, 'Last-Event-ID': '0' },
}).then(async (res) => {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let text = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
  }
  document.getElementById('out').textContent = text;
  document.body.dataset.state = 'read';
}).catch((e) => {
  document.getElementById('out').textContent = String(e);
  document.body.dataset.state = 'refused';
});
</script></body></html>"#;

async fn workload_with_three_lines(app: &common::TestApp, token: &str) -> String {
    let res = app
        .client
        .post(app.url("/v1/workloads"))
        .bearer_auth(token)
        .json(&json!({"runtime": "node", "code":
            "export default () => { console.log('one'); console.log('two'); console.log('three'); return 1; };"}))
        .send()
        .await
        .expect("submit");
    assert_eq!(res.status(), 200);
    let w: Value = res.json().await.expect("json");
    assert_eq!(w["status"], "completed", "{w}");
    w["id"].as_str().expect("id").to_string()
}

async fn read_from_second_origin(
    b: &Browser,
    page: &SecondOrigin,
    app: &common::TestApp,
    id: &str,
    token: &str,
) -> (String, String) {
    b.client
        .goto(&format!(
            "{}/?api={}&id={id}&token={token}",
            page.origin, app.address
        ))
        .await
        .expect("goto second origin");
    let state = b.wait_js("document.body.dataset.state", WAIT).await;
    let out = b.js("document.getElementById('out').textContent").await;
    (
        state.as_str().unwrap_or("").to_string(),
        out.as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test]
async fn a_page_on_an_allowed_second_origin_reads_the_log_stream() {
    let Some(b) = Browser::start("second origin allowed").await else {
        return;
    };
    let page = SecondOrigin::start(SECOND_ORIGIN_PAGE).await;
    let token = "t0k3n";
    let app = common::app()
        .builtin()
        .env("VULCAN_API_TOKEN", token)
        .env("VULCAN_CORS__ALLOWED_ORIGINS", &page.origin)
        .spawn()
        .await;
    let id = workload_with_three_lines(&app, token).await;
    let (state, out) = read_from_second_origin(&b, &page, &app, &id, token).await;
    assert_eq!(state, "read", "{out}");
    assert!(!out.contains("data: one"), "resumed after seq 0: {out}");
    assert!(
        out.contains("data: two") && out.contains("data: three"),
        "{out}"
    );
    assert!(out.contains("event: done"), "{out}");
    b.screenshot("second-origin-allowed").await;
    no_console_errors(&b, &[]).await;
    b.close().await;
    page.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_page_on_another_origin_is_refused() {
    let Some(b) = Browser::start("second origin refused").await else {
        return;
    };
    let page = SecondOrigin::start(SECOND_ORIGIN_PAGE).await;
    let token = "t0k3n";
    let app = common::app()
        .builtin()
        .env("VULCAN_API_TOKEN", token)
        .env("VULCAN_CORS__ALLOWED_ORIGINS", "https://dash.example.com")
        .spawn()
        .await;
    let id = workload_with_three_lines(&app, token).await;
    let (state, out) = read_from_second_origin(&b, &page, &app, &id, token).await;
    assert_eq!(state, "refused", "{out}");
    assert!(!out.contains("data:"), "{out}");
    let errors = b.console_errors().await;
    assert!(
        errors.iter().any(|e| e.contains("CORS")),
        "the browser reports the refusal: {errors:?}"
    );
    // The server is fine.
    assert_eq!(app.get_json("/healthz", 200).await["status"], "ok");
    b.close().await;
    page.stop().await;
    app.stop().await;
}
