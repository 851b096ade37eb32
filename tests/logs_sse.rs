//! Live logs: replay + live + resume + done over SSE, persisted history, limits with
//! visible markers, slow subscribers that never stall the workload.

mod common;

use std::time::{Duration, Instant};

use common::scripted::{self, job, Options};
use common::sse::{Event, Item, Reader};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const SOON: Duration = Duration::from_secs(20);

async fn scripted_app() -> common::TestApp {
    let (f, _) = scripted::factory(Options::default());
    common::app().backend(f).spawn().await
}

fn id(w: &Value) -> String {
    w["id"].as_str().expect("id").to_string()
}

fn lines(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("line {i}")).collect()
}

async fn subscribe(app: &common::TestApp, wid: &str, last_event_id: Option<u64>) -> Reader {
    let mut req = app
        .client
        .get(app.url(&format!("/v1/workloads/{wid}/logs")));
    if let Some(l) = last_event_id {
        req = req.header("Last-Event-ID", l.to_string());
    }
    let res = req.send().await.expect("subscribe");
    assert_eq!(res.headers()["cache-control"], "no-cache");
    Reader::new(res)
}

/// Every line event has `id == seq` and the events are exactly `expected`, then `done`.
fn assert_exact(events: &[Event], expected: &[String], first_seq: u64, status: &str) {
    let (done, line_events) = events.split_last().expect("at least done");
    assert_eq!(done.event.as_deref(), Some("done"), "{events:?}");
    assert_eq!(done.data, status);
    // `done` carries the id after the last line: resuming from it finds nothing left.
    let next = first_seq + (events.len() as u64 - 1);
    assert_eq!(done.id.as_deref(), Some(next.to_string().as_str()));
    let got: Vec<&str> = line_events.iter().map(|e| e.data.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(got, want);
    for (i, e) in line_events.iter().enumerate() {
        assert_eq!(
            e.id.as_deref(),
            Some((first_seq + i as u64).to_string().as_str())
        );
        assert_eq!(e.event, None);
    }
}

#[tokio::test]
async fn lines_arrive_live_while_the_workload_runs() {
    let app = scripted_app().await;
    let w = app
        .submit_async(&job(
            "node",
            json!({"logs": ["first", "second"], "log_interval_ms": 600, "delay_ms": 600}),
        ))
        .await;
    let wid = id(&w);
    let mut r = subscribe(&app, &wid, None).await;
    let first = r.next_event().await.expect("first line");
    assert_eq!(first.data, "first");
    let status = app.get_json(&format!("/v1/workloads/{wid}"), 200).await["status"].clone();
    assert_eq!(
        status, "running",
        "the line must arrive before the workload ends"
    );
    let rest = r.collect(SOON).await;
    assert_exact(&rest, &["second".to_string()], 1, "completed");
}

#[tokio::test]
async fn a_late_subscriber_gets_every_line_exactly_once_in_order() {
    let app = scripted_app().await;
    let all = lines(60);
    let w = app
        .submit_async(&job("node", json!({"logs": all, "log_interval_ms": 4})))
        .await;
    let wid = id(&w);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut r = subscribe(&app, &wid, None).await;
    let events = r.collect(SOON).await;
    assert_exact(&events, &all, 0, "completed");
}

#[tokio::test]
async fn last_event_id_resumes_after_that_line() {
    let app = scripted_app().await;
    let all = lines(40);
    let w = app
        .submit_async(&job("node", json!({"logs": all, "log_interval_ms": 5})))
        .await;
    let wid = id(&w);
    // Mid-run resume.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let events = subscribe(&app, &wid, Some(9)).await.collect(SOON).await;
    assert_exact(&events, &all[10..], 10, "completed");
    // Resume after the end: the rest, then done.
    let events = subscribe(&app, &wid, Some(37)).await.collect(SOON).await;
    assert_exact(&events, &all[38..], 38, "completed");
    let res = app
        .client
        .get(app.url(&format!("/v1/workloads/{wid}/logs")))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn a_terminal_workload_replays_then_done_then_closes() {
    let app = scripted_app().await;
    let w: Value = app
        .post(
            "/v1/workloads",
            &job("node", json!({"logs": ["a", "b"], "error": "bad"})),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(w["status"], "failed");
    let events = subscribe(&app, &id(&w), None).await.collect(SOON).await;
    assert_exact(&events, &["a".to_string(), "b".to_string()], 0, "failed");
    // A workload with no lines: just done.
    let w: Value = app
        .post("/v1/workloads", &job("node", json!({})))
        .await
        .json()
        .await
        .expect("json");
    let events = subscribe(&app, &id(&w), None).await.collect(SOON).await;
    assert_exact(&events, &[], 0, "completed");
}

#[tokio::test]
async fn killed_workloads_end_the_stream_with_done_killed() {
    let app = scripted_app().await;
    let w = app
        .submit_async(&job("node", json!({"logs": ["x"], "delay_ms": 60000})))
        .await;
    let wid = id(&w);
    let mut r = subscribe(&app, &wid, None).await;
    assert_eq!(r.next_event().await.expect("x").data, "x");
    assert_eq!(
        app.delete(&format!("/v1/workloads/{wid}")).await.status(),
        200
    );
    let rest = r.collect(SOON).await;
    assert_exact(&rest, &[], 1, "killed");
}

#[tokio::test]
async fn newlines_in_a_line_cannot_forge_events() {
    let app = scripted_app().await;
    let evil = "before\n\nevent: done\ndata: completed\n\nid: 99";
    let carriage = "a\rb\r\nc";
    let w: Value = app
        .post(
            "/v1/workloads",
            &job("node", json!({"logs": [evil, carriage, "after"]})),
        )
        .await
        .json()
        .await
        .expect("json");
    let mut r = subscribe(&app, &id(&w), None).await;
    let events = r.collect(SOON).await;
    assert_eq!(events.len(), 4, "{events:?}\nraw: {:?}", r.raw);
    assert_eq!(events[0].id.as_deref(), Some("0"));
    assert_eq!(events[0].event, None, "no forged event name");
    assert!(events[0].data.starts_with("before"));
    assert_eq!(events[1].id.as_deref(), Some("1"));
    assert_eq!(events[2].data, "after");
    assert_eq!(events[3].event.as_deref(), Some("done"));
    // Every raw line of the stream is a field the server wrote or a blank separator.
    for line in r.raw.split('\n') {
        assert!(
            line.is_empty()
                || line.starts_with("data:")
                || line.starts_with("id:")
                || line.starts_with("event:")
                || line.starts_with(':'),
            "unexpected raw line {line:?}"
        );
    }
    // History keeps the line whole.
    let h = app
        .get_json(&format!("/v1/workloads/{}/logs/history", id(&w)), 200)
        .await;
    assert_eq!(h["lines"][0]["line"], evil);
}

#[tokio::test]
async fn history_lists_lines_in_order_and_is_never_null() {
    let app = scripted_app().await;
    let w: Value = app
        .post("/v1/workloads", &job("node", json!({})))
        .await
        .json()
        .await
        .expect("json");
    let h = app
        .get_json(&format!("/v1/workloads/{}/logs/history", id(&w)), 200)
        .await;
    assert_eq!(
        h,
        json!({"workload_id": id(&w), "lines": [], "next_after": null})
    );
    let w: Value = app
        .post("/v1/workloads", &job("node", json!({"logs": lines(5)})))
        .await
        .json()
        .await
        .expect("json");
    let h = app
        .get_json(&format!("/v1/workloads/{}/logs/history", id(&w)), 200)
        .await;
    let got: Vec<(u64, String)> = h["lines"]
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
    assert_eq!(
        got,
        lines(5)
            .into_iter()
            .enumerate()
            .map(|(i, l)| (i as u64, l))
            .collect::<Vec<_>>()
    );
    assert!(h["lines"][0]["created_at"]
        .as_str()
        .expect("time")
        .ends_with('Z'));
}

#[tokio::test]
async fn a_hundred_concurrent_subscribers_all_get_everything() {
    let app = std::sync::Arc::new(scripted_app().await);
    let all = lines(100);
    let w = app
        .submit_async(&job(
            "node",
            json!({"logs": all, "log_interval_ms": 3, "delay_ms": 50}),
        ))
        .await;
    let wid = id(&w);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (app, wid) = (app.clone(), wid.clone());
        tasks.push(tokio::spawn(async move {
            subscribe(&app, &wid, None).await.collect(SOON).await
        }));
    }
    for t in tasks {
        assert_exact(&t.await.expect("task"), &all, 0, "completed");
    }
}

#[tokio::test]
async fn subscribers_that_never_read_do_not_delay_the_workload() {
    let (f, _) = scripted::factory(Options::default());
    let app = common::app()
        .env("VULCAN_LOGS__SUBSCRIBER_BUFFER", "16")
        .backend(f)
        .spawn()
        .await;
    let big: Vec<String> = (0..3000)
        .map(|i| format!("{i:05} {}", "y".repeat(1000)))
        .collect();
    let w = app
        .submit_async(&job("node", json!({"logs": big, "delay_ms": 200})))
        .await;
    let wid = id(&w);
    let port = app.address.rsplit(':').next().expect("port").to_string();
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
            .await
            .expect("connect");
        s.write_all(format!("GET /v1/workloads/{wid}/logs HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        stalled.push(s); // never read
    }
    let started = Instant::now();
    let done = app.wait_terminal(&wid, SOON).await;
    assert_eq!(done["status"], "completed");
    // A reading subscriber still gets every line (from the store after a disconnect at worst).
    let events = subscribe(&app, &wid, None).await.collect(SOON).await;
    assert_eq!(events.len(), 3001);
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains("vulcan_log_lines_persisted_total 3000"),
        "{metrics}"
    );
    eprintln!(
        "workload with 20 stalled subscribers finished {:?} after they connected",
        started.elapsed()
    );
    drop(stalled);
}

#[tokio::test]
async fn disconnecting_frees_the_subscription() {
    let app = scripted_app().await;
    let w = app
        .submit_async(&job("node", json!({"logs": ["x"], "delay_ms": 60000})))
        .await;
    let wid = id(&w);
    let mut readers = Vec::new();
    for _ in 0..5 {
        let mut r = subscribe(&app, &wid, None).await;
        assert_eq!(r.next_event().await.expect("x").data, "x");
        readers.push(r);
    }
    let gauge = |text: &str| -> i64 {
        text.lines()
            .find(|l| l.starts_with("vulcan_sse_subscribers "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("gauge")
    };
    assert_eq!(
        gauge(&app.get("/metrics").await.text().await.expect("m")),
        5
    );
    drop(readers);
    let t = Instant::now();
    loop {
        let n = gauge(&app.get("/metrics").await.text().await.expect("m"));
        if n == 0 {
            break;
        }
        assert!(t.elapsed() < SOON, "gauge stuck at {n}");
        // Disconnects are noticed when the next write fails or the poll sees the close.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.delete(&format!("/v1/workloads/{wid}")).await;
}

#[tokio::test]
async fn long_lines_and_too_many_lines_are_cut_with_visible_markers() {
    let (f, _) = scripted::factory(Options::default());
    let app = common::app()
        .env("VULCAN_LOGS__MAX_LINE_BYTES", "16")
        .env("VULCAN_LOGS__MAX_LINES", "5")
        .backend(f)
        .spawn()
        .await;
    let mut logs = vec!["é".repeat(20)];
    logs.extend(lines(10));
    let w: Value = app
        .post("/v1/workloads", &job("node", json!({"logs": logs})))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        w["status"], "completed",
        "the workload itself is not affected"
    );
    let h = app
        .get_json(&format!("/v1/workloads/{}/logs/history", id(&w)), 200)
        .await;
    let got: Vec<&str> = h["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["line"].as_str().expect("line"))
        .collect();
    assert_eq!(got.len(), 6, "{got:?}");
    assert!(
        got[0].starts_with(&"é".repeat(8)) && got[0].contains("line truncated"),
        "{got:?}"
    );
    assert_eq!(&got[1..5], &["line 0", "line 1", "line 2", "line 3"]);
    assert!(got[5].contains("log truncated"), "{got:?}");
    let events = subscribe(&app, &id(&w), None).await.collect(SOON).await;
    assert_eq!(events.len(), 7);
}

#[tokio::test]
async fn idle_streams_get_keep_alive_comments() {
    let (f, _) = scripted::factory(Options::default());
    let app = common::app()
        .env("VULCAN_LOGS__KEEPALIVE_S", "1")
        .backend(f)
        .spawn()
        .await;
    let w = app
        .submit_async(&job("node", json!({"delay_ms": 60000})))
        .await;
    let wid = id(&w);
    let mut r = subscribe(&app, &wid, None).await;
    let item = tokio::time::timeout(Duration::from_secs(5), r.next_item())
        .await
        .expect("within 5s");
    assert_eq!(item, Some(Item::Comment("keep-alive".into())));
    app.delete(&format!("/v1/workloads/{wid}")).await;
}

#[tokio::test]
async fn sequence_numbers_outside_the_stored_range_are_400() {
    let app = scripted_app().await;
    let w: Value = app
        .post("/v1/workloads", &job("node", json!({"logs": lines(3)})))
        .await
        .json()
        .await
        .expect("json");
    let wid = id(&w);
    let logs = app.url(&format!("/v1/workloads/{wid}/logs"));
    for bad in [
        "18446744073709551615",
        "9223372036854775808",
        "-1",
        "1.5",
        "abc",
        "0x10",
    ] {
        let res = app
            .client
            .get(&logs)
            .header("Last-Event-ID", bad)
            .send()
            .await
            .expect("req");
        assert_eq!(res.status(), 400, "Last-Event-ID {bad}");
        let msg = res.json::<Value>().await.expect("json")["error"].to_string();
        assert!(msg.contains("Last-Event-ID"), "{msg}");
    }
    // The largest valid one: nothing after it.
    let res = app
        .client
        .get(&logs)
        .header("Last-Event-ID", i64::MAX.to_string())
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 204);
    let history = format!("/v1/workloads/{wid}/logs/history");
    for bad in [
        "after=18446744073709551615",
        "after=9223372036854775808",
        "after=-1",
        "after=x",
        "limit=0",
        "limit=10001",
        "limit=-3",
        "cursor=1",
    ] {
        let res = app.get(&format!("{history}?{bad}")).await;
        assert_eq!(res.status(), 400, "{bad}");
    }
    let h = app
        .get_json(&format!("{history}?after={}", i64::MAX), 200)
        .await;
    assert_eq!(h["lines"], json!([]));
}

#[tokio::test]
async fn history_pages_with_after_and_limit() {
    let app = scripted_app().await;
    let all = lines(25);
    let w: Value = app
        .post("/v1/workloads", &job("node", json!({"logs": all})))
        .await
        .json()
        .await
        .expect("json");
    let history = format!("/v1/workloads/{}/logs/history", id(&w));
    let mut after: Option<u64> = None;
    let mut got = Vec::new();
    let mut pages = 0;
    loop {
        let q = match after {
            None => "?limit=10".to_string(),
            Some(a) => format!("?limit=10&after={a}"),
        };
        let page = app.get_json(&format!("{history}{q}"), 200).await;
        pages += 1;
        for l in page["lines"].as_array().expect("lines") {
            got.push(l["line"].as_str().expect("line").to_string());
        }
        match page["next_after"].as_u64() {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(got, all);
    // The default page holds them all.
    let page = app.get_json(&history, 200).await;
    assert_eq!(page["lines"].as_array().expect("lines").len(), 25);
    assert_eq!(page["next_after"], Value::Null);
}

#[tokio::test]
async fn a_reconnect_with_nothing_left_after_done_gets_204() {
    let app = scripted_app().await;
    let w: Value = app
        .post("/v1/workloads", &job("node", json!({"logs": lines(3)})))
        .await
        .json()
        .await
        .expect("json");
    let wid = id(&w);
    let events = subscribe(&app, &wid, None).await.collect(SOON).await;
    let done = events.last().expect("done");
    assert_eq!(done.id.as_deref(), Some("3"));
    let get = |last: Option<&str>, head: bool| {
        let mut req = if head {
            app.client
                .head(app.url(&format!("/v1/workloads/{wid}/logs")))
        } else {
            app.client
                .get(app.url(&format!("/v1/workloads/{wid}/logs")))
        };
        if let Some(l) = last {
            req = req.header("Last-Event-ID", l);
        }
        req.send()
    };
    // What an EventSource sends after `done` (its id), or after only the last line.
    for last in ["3", "2"] {
        for head in [false, true] {
            let res = get(Some(last), head).await.expect("req");
            assert_eq!(res.status(), 204, "Last-Event-ID {last} (HEAD: {head})");
            assert!(res.bytes().await.expect("body").is_empty());
        }
    }
    // Something left: the rest, then done again.
    let res = get(Some("1"), false).await.expect("req");
    let events = Reader::new(res).collect(SOON).await;
    assert_exact(&events, &lines(3)[2..], 2, "completed");
    // A workload without lines: done has id 0, resuming from it is 204 as well.
    let w: Value = app
        .post("/v1/workloads", &job("node", json!({})))
        .await
        .json()
        .await
        .expect("json");
    let events = subscribe(&app, &id(&w), None).await.collect(SOON).await;
    assert_eq!(events.last().expect("done").id.as_deref(), Some("0"));
    let res = app
        .client
        .get(app.url(&format!("/v1/workloads/{}/logs", id(&w))))
        .header("Last-Event-ID", "0")
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 204);
}

/// Open the log stream of `wid`, asserting the answer comes at once (headers within
/// a liveness bound, not after a wait for the workload).
async fn subscribe_at_once(app: &common::TestApp, wid: &str) -> Reader {
    let res = tokio::time::timeout(
        Duration::from_secs(3),
        app.client
            .get(app.url(&format!("/v1/workloads/{wid}/logs")))
            .send(),
    )
    .await
    .expect("the stream must open at once")
    .expect("subscribe");
    Reader::new(res)
}

#[tokio::test]
async fn subscribing_to_a_queued_workload_opens_at_once_and_streams_when_it_runs() {
    let (f, _) = scripted::factory(Options {
        max_concurrency: 1,
        ..Options::default()
    });
    let app = common::app()
        .backend(f)
        .env("VULCAN_LOGS__KEEPALIVE_S", "1")
        .spawn()
        .await;
    let holder = scripted::occupy_slot(&app).await;
    let w = app
        .submit_async(&job("node", json!({"logs": ["one", "two"]})))
        .await;
    let wid = id(&w);
    let mut r = subscribe_at_once(&app, &wid).await;
    // Idle but alive while it waits.
    let first = tokio::time::timeout(SOON, r.next_item())
        .await
        .expect("keep-alive");
    assert_eq!(first, Some(Item::Comment("keep-alive".into())));
    assert_eq!(
        app.get_json(&format!("/v1/workloads/{wid}"), 200).await["status"],
        "pending"
    );
    app.delete(&format!("/v1/workloads/{holder}")).await;
    let events = r.collect(SOON).await;
    assert_exact(
        &events,
        &["one".to_string(), "two".to_string()],
        0,
        "completed",
    );
}

#[tokio::test]
async fn subscribing_to_a_recorded_but_unadmitted_workload_opens_at_once_and_ends_with_done() {
    let app = common::app()
        .backend(scripted::factory(Options::default()).0)
        .env("VULCAN_LOGS__KEEPALIVE_S", "1")
        .spawn()
        .await;
    let topics = "vulcan_log_topics";
    assert_eq!(common::gauge(&app, topics).await, 0);
    let wid = common::insert_unadmitted(&app.db_path, "scripted");

    let mut r = subscribe_at_once(&app, &wid).await;
    let first = tokio::time::timeout(SOON, r.next_item())
        .await
        .expect("keep-alive");
    assert_eq!(first, Some(Item::Comment("keep-alive".into())));
    assert_eq!(common::gauge(&app, topics).await, 1);
    // A second subscriber that leaves does not close the stream of the first.
    let second = subscribe_at_once(&app, &wid).await;
    drop(second);
    common::wait_gauge(&app, "vulcan_sse_subscribers", 1, SOON).await;
    assert_eq!(common::gauge(&app, topics).await, 1);

    // It ends without ever being admitted (here: killed): the stream ends with done.
    let killed = app.delete(&format!("/v1/workloads/{wid}")).await;
    assert_eq!(killed.status(), 200);
    let events = r.collect(SOON).await;
    assert_exact(&events, &[], 0, "killed");
    common::wait_gauge(&app, topics, 0, SOON).await;

    // A subscriber that leaves a workload that never runs leaves nothing behind.
    let never = common::insert_unadmitted(&app.db_path, "scripted");
    let r = subscribe_at_once(&app, &never).await;
    common::wait_gauge(&app, topics, 1, SOON).await;
    drop(r);
    common::wait_gauge(&app, topics, 0, SOON).await;
    common::wait_gauge(&app, "vulcan_sse_subscribers", 0, SOON).await;
}

#[tokio::test]
async fn the_client_ends_a_stream_answered_204_with_the_final_status() {
    let app = scripted_app().await;
    let w: Value = app
        .post(
            "/v1/workloads",
            &job("node", json!({"logs": lines(3), "error": "bad"})),
        )
        .await
        .json()
        .await
        .expect("json");
    let client = vulcan::client::Client::new(&app.address, None).expect("client");
    let wid: vulcan::model::WorkloadId = id(&w).parse().expect("id");
    // Resuming after the last line of a finished workload: 204, then the status.
    let mut stream = client.logs_stream(wid, Some(2));
    assert_eq!(
        stream.next().await.expect("no error"),
        Some(vulcan::client::LogEvent::Done(
            vulcan::model::Status::Failed
        ))
    );
    assert_eq!(stream.next().await.expect("no error"), None);
}

/// Every `line` of a history page, with its seq.
fn page_lines(page: &Value) -> Vec<(u64, String)> {
    page["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            (
                l["seq"].as_u64().expect("seq"),
                l["line"].as_str().expect("line").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn history_pages_through_25000_lines_in_three_page_sizes() {
    let app = scripted_app().await;
    let all = lines(25_000);
    let w: Value = app
        .post("/v1/workloads", &job("node", json!({"logs": all})))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(w["status"], "completed", "{w}");
    let history = format!("/v1/workloads/{}/logs/history", id(&w));
    for limit in [333_u64, 1000, 10_000] {
        let mut got: Vec<(u64, String)> = Vec::new();
        let mut after: Option<u64> = None;
        let mut pages = 0;
        loop {
            let q = match after {
                None => format!("{history}?limit={limit}"),
                Some(a) => format!("{history}?limit={limit}&after={a}"),
            };
            let page = app.get_json(&q, 200).await;
            pages += 1;
            let lines = page_lines(&page);
            assert!(lines.len() as u64 <= limit);
            if lines.len() as u64 == limit {
                assert_eq!(
                    page["next_after"].as_u64(),
                    lines.last().map(|l| l.0),
                    "a full page names its last seq"
                );
            } else {
                assert!(page["next_after"].is_null(), "a short page ends the log");
            }
            got.extend(lines);
            match page["next_after"].as_u64() {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(pages as u64, 25_000 / limit + 1, "limit {limit}");
        assert_eq!(got.len(), 25_000, "limit {limit}");
        for (i, (seq, line)) in got.iter().enumerate() {
            assert_eq!(*seq, i as u64);
            assert_eq!(line, &all[i]);
        }
    }
    // Without `limit`: the default page of 1000.
    let first = app.get_json(&history, 200).await;
    assert_eq!(page_lines(&first).len(), 1000);
    assert_eq!(first["next_after"], 999);
}

/// Follow a log stream to its `done` as an EventSource would: whenever the stream
/// ends early (the client drops it after `read_at_most` events, or the server
/// disconnects a subscriber that fell behind), reconnect with the last id seen.
async fn follow(client: reqwest::Client, url: String, read_at_most: usize) -> Vec<Event> {
    let mut got: Vec<Event> = Vec::new();
    let mut last: Option<String> = None;
    for _ in 0..200 {
        let mut req = client.get(&url);
        if let Some(l) = &last {
            req = req.header("Last-Event-ID", l.as_str());
        }
        let res = req.send().await.expect("subscribe");
        if res.status() == 204 {
            return got;
        }
        let mut r = Reader::new(res);
        for _ in 0..read_at_most {
            let Some(e) = r.next_event().await else {
                break;
            };
            last = e.id.clone();
            let done = e.event.as_deref() == Some("done");
            got.push(e);
            if done {
                return got;
            }
        }
    }
    panic!("no done after 200 connections ({} events)", got.len());
}

/// Exactly `all`, each once, in order with `id == seq`, then `done: completed`
/// (compact on failure: the first difference, not every event).
fn assert_once(events: &[Event], all: &[String]) {
    let (done, lines) = events.split_last().expect("events");
    assert_eq!(done.event.as_deref(), Some("done"));
    assert_eq!(done.data, "completed");
    for (i, e) in lines.iter().enumerate() {
        assert_eq!(
            (e.id.as_deref(), e.data.as_str()),
            (
                Some(i.to_string().as_str()),
                all.get(i).map_or("<none>", |s| s.as_str())
            ),
            "event {i} of {}",
            lines.len()
        );
    }
    assert_eq!(lines.len(), all.len());
}

#[tokio::test]
async fn late_subscribers_and_reconnects_during_a_fast_logging_run_see_every_line_once() {
    let app = scripted_app().await;
    // 20,000 lines in bursts of 100 every 2 ms: replay spans many pages while new
    // lines keep arriving live.
    let all = lines(20_000);
    let w = app
        .submit_async(&job(
            "node",
            json!({"logs": all, "log_interval_ms": 2, "log_burst": 100}),
        ))
        .await;
    let url = app.url(&format!("/v1/workloads/{}/logs", id(&w)));
    let mut readers = Vec::new();
    // Late subscribers (reading everything they can), and clients that drop their
    // stream every 3,000 events and resume.
    for (delay_ms, read_at_most) in [
        (0_u64, usize::MAX),
        (50, usize::MAX),
        (150, usize::MAX),
        (300, 3000),
        (600, usize::MAX),
        (0, 3000),
    ] {
        let (client, url) = (app.client.clone(), url.clone());
        readers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            follow(client, url, read_at_most).await
        }));
    }
    for r in readers {
        let events = r.await.expect("reader");
        assert_once(&events, &all);
    }
}

#[tokio::test]
async fn the_byte_cap_keeps_a_log_to_its_size_with_one_marker() {
    let (f, _) = scripted::factory(Options::default());
    let app = common::app()
        .env("VULCAN_LOGS__MAX_BYTES", "1000")
        .backend(f)
        .spawn()
        .await;
    // 100-byte lines: ten fit, the eleventh is the marker, the rest are dropped.
    let line = "x".repeat(100);
    let w: Value = app
        .post(
            "/v1/workloads",
            &job("node", json!({"logs": [line], "log_repeat": 50_000})),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        w["status"], "completed",
        "the workload itself is not affected"
    );
    let h = app
        .get_json(&format!("/v1/workloads/{}/logs/history", id(&w)), 200)
        .await;
    let got = page_lines(&h);
    assert_eq!(got.len(), 11, "{got:?}");
    assert!(got[..10].iter().all(|(_, l)| l == &line));
    assert!(
        got[10].1.contains("log truncated") && got[10].1.contains("1000 bytes"),
        "{got:?}"
    );
    // The stream says the same, then done.
    let events = subscribe(&app, &id(&w), None).await.collect(SOON).await;
    assert_eq!(events.len(), 12);
    // The server is fine: the next workload runs at once with its own log.
    let next: Value = app
        .post("/v1/workloads", &job("node", json!({"logs": ["after"]})))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(next["status"], "completed");
    let h = app
        .get_json(&format!("/v1/workloads/{}/logs/history", id(&next)), 200)
        .await;
    assert_eq!(page_lines(&h), vec![(0, "after".to_string())]);
}

#[tokio::test]
async fn history_pages_of_long_lines_stop_at_4_mib_and_say_where_to_go_on() {
    let app = scripted_app().await;
    let line = "y".repeat(16_000);
    let w: Value = app
        .post(
            "/v1/workloads",
            &job("node", json!({"logs": [line], "log_repeat": 600})),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(w["status"], "completed");
    let history = format!("/v1/workloads/{}/logs/history?limit=10000", id(&w));
    let mut seen = 0u64;
    let mut pages = 0;
    let mut after: Option<u64> = None;
    loop {
        let q = match after {
            None => history.clone(),
            Some(a) => format!("{history}&after={a}"),
        };
        let page = app.get_json(&q, 200).await;
        let lines = page_lines(&page);
        let bytes: usize = lines.iter().map(|(_, l)| l.len()).sum();
        assert!(
            bytes < 4 * 1024 * 1024 + 16_000,
            "{bytes} bytes in one page"
        );
        for (seq, _) in &lines {
            assert_eq!(*seq, seen);
            seen += 1;
        }
        pages += 1;
        match page["next_after"].as_u64() {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, 600);
    assert_eq!(pages, 3, "4 MiB of 16,000-byte lines is 263 lines a page");
}

/// p50 and p99 (nearest rank) of `samples`.
fn p50_p99(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    let rank =
        |p: f64| samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    (rank(0.5), rank(0.99))
}

/// Async submissions of a trivial script, one after the other; their round trips.
async fn timed_submits(app: &common::TestApp, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let res = app
            .post("/v1/workloads/async", &job("node", json!({"output": 1})))
            .await;
        out.push(start.elapsed());
        assert_eq!(res.status(), 202);
    }
    out
}

#[tokio::test]
async fn history_reads_of_a_large_log_run_beside_submissions() {
    let app = scripted_app().await;
    let w: Value = app
        .post(
            "/v1/workloads",
            &job(
                "node",
                json!({"logs": ["x".repeat(90)], "log_repeat": 100_000}),
            ),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(w["status"], "completed");
    let history = format!("/v1/workloads/{}/logs/history", id(&w));
    let idle = timed_submits(&app, 200).await;
    // Four clients page through the whole log again and again meanwhile.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (client, url, stop) = (app.client.clone(), app.url(&history), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut full_reads = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut after: Option<u64> = None;
                let mut next_seq = 0u64;
                loop {
                    let q = match after {
                        None => format!("{url}?limit=10000"),
                        Some(a) => format!("{url}?limit=10000&after={a}"),
                    };
                    let page: Value = client
                        .get(q)
                        .send()
                        .await
                        .expect("get")
                        .json()
                        .await
                        .expect("json");
                    for l in page["lines"].as_array().expect("lines") {
                        assert_eq!(l["seq"].as_u64(), Some(next_seq));
                        next_seq += 1;
                    }
                    match page["next_after"].as_u64() {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
                assert_eq!(next_seq, 100_000, "every read sees the whole log");
                full_reads += 1;
            }
            full_reads
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let loaded = timed_submits(&app, 200).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut reads = 0;
    for r in readers {
        reads += r.await.expect("reader");
    }
    let (i50, i99) = p50_p99(idle);
    let (l50, l99) = p50_p99(loaded);
    // Figures, not assertions (shared 2-core machines): see `vulcan bench` for release
    // figures.
    eprintln!(
        "async submit idle p50 {i50:?} p99 {i99:?}; while 4 clients page through a \
         100,000-line log ({reads} full reads finished): p50 {l50:?} p99 {l99:?}"
    );
    assert!(reads > 0, "the readers read the whole log meanwhile");
    // Every submission was recorded and ran.
    let start = Instant::now();
    loop {
        let stats = app.get_json("/v1/stats", 200).await;
        if stats["by_status"]["completed"] == 401 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A counter or gauge of `/metrics`.
fn metric(text: &str, name: &str) -> i64 {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as i64)
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test]
async fn concurrent_history_readers_get_complete_pages_while_at_most_read_threads_reads_run() {
    let (f, _) = scripted::factory(Options::default());
    let app = common::app()
        .env("VULCAN_LOGS__READ_THREADS", "2")
        .backend(f)
        .spawn()
        .await;
    let w: Value = app
        .post(
            "/v1/workloads",
            &job(
                "node",
                json!({"logs": ["x".repeat(90)], "log_repeat": 30_000}),
            ),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(w["status"], "completed", "{w}");
    let history = app.url(&format!("/v1/workloads/{}/logs/history", id(&w)));
    // Eight clients at once, each paging through the whole log twice.
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (app.client.clone(), history.clone());
            tokio::spawn(async move {
                for _ in 0..2 {
                    let mut next_seq = 0u64;
                    let mut after: Option<u64> = None;
                    loop {
                        let q = match after {
                            None => format!("{url}?limit=5000"),
                            Some(a) => format!("{url}?limit=5000&after={a}"),
                        };
                        let res = client.get(q).send().await.expect("get");
                        assert_eq!(res.status(), 200);
                        let page: Value = res.json().await.expect("json");
                        for (seq, line) in page_lines(&page) {
                            assert_eq!(seq, next_seq, "in order, none missing or repeated");
                            assert_eq!(line.len(), 90);
                            next_seq += 1;
                        }
                        match page["next_after"].as_u64() {
                            Some(n) => after = Some(n),
                            None => break,
                        }
                    }
                    assert_eq!(next_seq, 30_000, "every read sees the whole log");
                }
            })
        })
        .collect();
    for r in readers {
        r.await.expect("reader");
    }
    let text = app.get("/metrics").await.text().await.expect("metrics");
    let peak = metric(&text, "vulcan_log_reads_peak");
    assert!(
        (1..=2).contains(&peak),
        "at most logs.read_threads pages were read at once, got {peak}"
    );
    assert!(
        metric(&text, "vulcan_log_reads_queued_total") > 0,
        "with 8 clients and 2 threads, some reads waited their turn (none refused)"
    );
    assert_eq!(metric(&text, "vulcan_log_reads_running"), 0);
    // The server is fine: the next workload runs at once.
    let next: Value = app
        .post("/v1/workloads", &job("node", json!({"output": 1})))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(next["status"], "completed", "{next}");
}
