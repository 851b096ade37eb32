//! Reaching a workload from any node of a cluster: a kill sent to node B reaches node
//! A that runs it, a wait on B wakes when A records the result, and an SSE stream on B
//! gets A's lines (replay, then live) once each, in order, then `done`. A real
//! throw-away PostgreSQL cluster; only node A has a backend, so the work runs there.

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use common::cluster::{listen_connections, node, shared_database, terminate_listen_connections};
use common::scripted::{self, job, Observed, Options};
use common::sse::{Reader, SseStream};
use common::TestApp;

const SOON: Duration = Duration::from_secs(60);

/// Node A (with the scripted backend) and node B (without any) on one fresh database;
/// `None` after `SKIPPED:` without PostgreSQL.
async fn two_nodes(
    test: &str,
    opts: Options,
    env: &[(&str, &str)],
) -> Option<(String, TestApp, Arc<Observed>, TestApp)> {
    let url = shared_database(test)?;
    let (factory, seen) = scripted::factory(opts);
    // No periodic re-read during a test: every wake-up must come from a notification
    // (or the Missed that follows a reconnect), so a lost one fails the test.
    let mut a = node(&url, "a")
        .backend(factory)
        .env("VULCAN_CLUSTER__RECHECK_S", "600");
    let mut b = node(&url, "b").env("VULCAN_CLUSTER__RECHECK_S", "600");
    for (k, v) in env {
        a = a.env(k, v);
        b = b.env(k, v);
    }
    Some((url, a.spawn().await, seen, b.spawn().await))
}

fn id_of(w: &Value) -> String {
    w["id"].as_str().expect("id").to_string()
}

/// A's next workload runs at once: the node is fine after whatever the test did.
async fn next_runs_at_once(a: &TestApp) {
    let w = a
        .submit_async(&job("node", json!({"output": "next"})))
        .await;
    let done = a.wait_terminal(&id_of(&w), SOON).await;
    assert_eq!(done["status"], "completed", "{done}");
}

#[tokio::test]
async fn a_kill_sent_to_another_node_reaches_the_node_running_the_workload() {
    let Some((_url, a, seen, b)) = two_nodes("kill_running", Options::default(), &[]).await else {
        return;
    };
    let w = a
        .submit_async(&job("node", json!({"delay_ms": 60000})))
        .await;
    let id = id_of(&w);
    a.wait_status(&id, "running", SOON).await;

    let res = b.delete(&format!("/v1/workloads/{id}")).await;
    assert_eq!(res.status(), 200);
    let killed: Value = res.json().await.expect("json");
    assert_eq!(killed["status"], "killed", "{killed}");
    assert_eq!(killed["error"], "killed by request", "{killed}");
    assert_eq!(killed["node_id"], "a", "{killed}");
    // A really stopped it, and both nodes read the same record.
    assert!(seen.saw_cancel(&id), "node a cancelled the execution");
    assert_eq!(
        a.get_json(&format!("/v1/workloads/{id}"), 200).await,
        killed
    );
    // Killing it again: 409 from either node, as on one node.
    assert_eq!(b.delete(&format!("/v1/workloads/{id}")).await.status(), 409);
    next_runs_at_once(&a).await;
}

#[tokio::test]
async fn a_kill_sent_to_another_node_kills_queued_work_in_the_table_and_it_never_runs() {
    let opts = Options {
        max_concurrency: 1,
        ..Options::default()
    };
    let Some((_url, a, seen, b)) = two_nodes("kill_queued", opts, &[]).await else {
        return;
    };
    let busy = scripted::occupy_slot(&a).await;
    let queued = a
        .submit_async(&job("node", json!({"output": "never"})))
        .await;
    let id = id_of(&queued);
    assert_eq!(
        a.get_json(&format!("/v1/workloads/{id}"), 200).await["status"],
        "pending"
    );

    let res = b.delete(&format!("/v1/workloads/{id}")).await;
    assert_eq!(res.status(), 200);
    let killed: Value = res.json().await.expect("json");
    assert_eq!(killed["status"], "killed", "{killed}");
    assert!(killed["started_at"].is_null(), "never started: {killed}");

    // Freeing the slot on A does not start it: A dropped it from its queue.
    let res = b.delete(&format!("/v1/workloads/{busy}")).await;
    assert_eq!(res.status(), 200);
    next_runs_at_once(&a).await;
    assert_eq!(
        seen.started.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "only the slot holder and the next one ran"
    );
    let after = a.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert_eq!(after, killed, "the record stays as B answered it");
}

#[tokio::test]
async fn a_kill_of_a_workload_whose_node_is_gone_answers_504_in_bounded_time() {
    let env = [("VULCAN_CLUSTER__KILL_TIMEOUT_S", "2")];
    let Some((_url, a, _seen, b)) = two_nodes("kill_node_gone", Options::default(), &env).await
    else {
        return;
    };
    let w = a
        .submit_async(&job("node", json!({"delay_ms": 60000})))
        .await;
    let id = id_of(&w);
    a.wait_status(&id, "running", SOON).await;
    a.crash().await;

    let started = std::time::Instant::now();
    let res = b.delete(&format!("/v1/workloads/{id}")).await;
    assert_eq!(res.status(), 504);
    let body: Value = res.json().await.expect("a JSON error");
    let error = body["error"].as_str().expect("error");
    assert!(
        error.contains("(a)") && error.contains("did not record"),
        "{error}"
    );
    assert!(started.elapsed() < SOON, "bounded wait");
    // B is fine: it answers reads at once, the record is untouched.
    let w = b.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert_eq!(w["status"], "running", "{w}");
}

#[tokio::test]
async fn a_kill_that_reaches_a_deaf_running_node_is_applied_when_it_hears_again() {
    // A polls slowly: its listen connection is reopened 5 s after it was cut, so the
    // kill's notification is lost to it; the request kept on the row is not.
    let Some(url) = shared_database("kill_deaf_node") else {
        return;
    };
    let (factory, seen) = scripted::factory(Options::default());
    let a = node(&url, "a")
        .backend(factory)
        .env("VULCAN_CLUSTER__LISTEN_POLL_MS", "500")
        .env("VULCAN_CLUSTER__RECHECK_S", "600")
        .spawn()
        .await;
    let b = node(&url, "b")
        .env("VULCAN_CLUSTER__RECHECK_S", "600")
        .env("VULCAN_CLUSTER__KILL_TIMEOUT_S", "30")
        .spawn()
        .await;
    let w = a
        .submit_async(&job("node", json!({"delay_ms": 60000})))
        .await;
    let id = id_of(&w);
    a.wait_status(&id, "running", SOON).await;
    assert_eq!(terminate_listen_connections(&url), 2, "one per node");
    let res = b.delete(&format!("/v1/workloads/{id}")).await;
    assert_eq!(res.status(), 200);
    let killed: Value = res.json().await.expect("json");
    assert_eq!(killed["status"], "killed", "{killed}");
    assert!(seen.saw_cancel(&id), "node a cancelled the execution");
    next_runs_at_once(&a).await;
}

#[tokio::test]
async fn a_sync_replay_on_another_node_waits_for_the_result_recorded_by_the_running_node() {
    let Some((_url, a, _seen, b)) = two_nodes("sync_across", Options::default(), &[]).await else {
        return;
    };
    let body = job("node", json!({"delay_ms": 1500, "output": {"answer": 42}}));
    let post = |app: &TestApp| {
        app.client
            .post(app.url("/v1/workloads"))
            .header("Idempotency-Key", "across-nodes")
            .json(&body)
            // A lost wake-up fails here, not in a hung test.
            .timeout(SOON)
            .send()
    };
    let on_a = post(&a);
    let on_a = tokio::spawn(on_a);
    // Recorded by A (the key with it) before B replays it.
    let start = std::time::Instant::now();
    let id = loop {
        let list = a.get_json("/v1/workloads", 200).await;
        if let Some(w) = list["workloads"].as_array().and_then(|v| v.first()) {
            break id_of(w);
        }
        assert!(start.elapsed() < SOON, "A never recorded it: {list}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let res = post(&b).await.expect("request to b");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    let on_b: Value = res.json().await.expect("json");
    assert_eq!(on_b["id"], id.as_str());
    assert_eq!(on_b["status"], "completed", "{on_b}");
    assert_eq!(on_b["output"], json!({"answer": 42}), "{on_b}");
    let res = on_a.await.expect("join").expect("request to a");
    assert_eq!(res.status(), 200);
    let on_a: Value = res.json().await.expect("json");
    assert_eq!(on_a, on_b, "both nodes answer the same terminal record");
}

/// Every recorded line of `id`, read page by page from the table (any node).
async fn recorded_lines(app: &TestApp, id: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let path = match after {
            Some(a) => format!("/v1/workloads/{id}/logs/history?limit=10000&after={a}"),
            None => format!("/v1/workloads/{id}/logs/history?limit=10000"),
        };
        let page = app.get_json(&path, 200).await;
        for l in page["lines"].as_array().expect("lines") {
            out.push((
                l["seq"].as_u64().expect("seq"),
                l["line"].as_str().expect("line").to_string(),
            ));
        }
        match page["next_after"].as_u64() {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

fn chatty(lines: usize) -> Value {
    let distinct: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
    job(
        "node",
        json!({"logs": distinct, "log_repeat": lines / 100, "log_burst": 20,
               "log_interval_ms": 4, "output": "chatty"}),
    )
}

/// Check a stream's line events against the table: each line once, in seq order, the
/// same text; and `done` with the terminal status.
fn assert_same_as_table(events: &[common::sse::Event], table: &[(u64, String)], from: u64) {
    let got: Vec<(u64, String)> = events
        .iter()
        .map(|e| {
            (
                e.id.as_deref().expect("id").parse().expect("seq"),
                e.data.clone(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = table.iter().filter(|(s, _)| *s >= from).cloned().collect();
    assert_eq!(
        got.len(),
        want.len(),
        "line count on the stream vs the table"
    );
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "line {i} differs (gap or duplicate)");
    }
}

#[tokio::test]
async fn an_sse_stream_on_another_node_gets_every_line_once_in_order_then_done() {
    let Some((_url, a, _seen, b)) = two_nodes("sse_across", Options::default(), &[]).await else {
        return;
    };
    // 5000 lines, then a minute of silence: every line must arrive live, before the
    // end (a terminal record would also wake the stream and hide a lost wake-up).
    let mut body = chatty(5000);
    let mut script: Value =
        serde_json::from_str(body["code"].as_str().expect("code")).expect("script");
    script["delay_ms"] = json!(60000);
    body["code"] = json!(script.to_string());
    let w = a.submit_async(&body).await;
    let id = id_of(&w);
    let mut stream = SseStream::open(&b, &id).await;
    let mut events = Vec::new();
    while events.len() < 5000 {
        let e = stream.next_event(SOON).await.expect("open");
        assert_ne!(e.event.as_deref(), Some("done"), "ended early");
        events.push(e);
    }
    let now = a.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert_eq!(now["status"], "running", "all lines came live: {now}");
    assert_eq!(b.delete(&format!("/v1/workloads/{id}")).await.status(), 200);
    let (rest, status) = stream.until_done(SOON).await;
    assert!(rest.is_empty(), "no line after the 5000: {rest:?}");
    assert_eq!(status, "killed");
    let table = recorded_lines(&a, &id).await;
    assert_eq!(table.len(), 5000, "the workload printed 5000 lines");
    assert_same_as_table(&events, &table, 0);
    next_runs_at_once(&a).await;
}

#[tokio::test]
async fn an_sse_stream_on_another_node_resumes_after_last_event_id() {
    let Some((_url, a, _seen, b)) = two_nodes("sse_resume", Options::default(), &[]).await else {
        return;
    };
    let w = a.submit_async(&chatty(2000)).await;
    let id = id_of(&w);
    a.wait_status(&id, "running", SOON).await;
    let res = b
        .client
        .get(b.url(&format!("/v1/workloads/{id}/logs")))
        .header("Last-Event-ID", "99")
        .send()
        .await
        .expect("SSE request");
    let mut reader = Reader::new(res);
    let mut events = Vec::new();
    let status = loop {
        let e = tokio::time::timeout(SOON, reader.next_event())
            .await
            .expect("an event in time")
            .expect("stream open until done");
        if e.event.as_deref() == Some("done") {
            assert_eq!(e.id.as_deref(), Some("2000"), "done carries the next seq");
            break e.data;
        }
        events.push(e);
    };
    assert_eq!(status, "completed");
    let table = recorded_lines(&a, &id).await;
    assert_same_as_table(&events, &table, 100);
}

#[tokio::test]
async fn an_sse_stream_on_another_node_loses_no_line_when_the_listen_connection_drops() {
    // B polls slowly, so its listen connection is reopened 5 s (ten polls) after it
    // was lost: lines committed meanwhile are announced to nobody, and the workload then
    // goes silent. Only the re-read after the reconnect (Missed) brings them.
    let env = [("VULCAN_CLUSTER__LISTEN_POLL_MS", "500")];
    let Some((url, a, _seen, b)) = two_nodes("sse_listen_drop", Options::default(), &env).await
    else {
        return;
    };
    // Two bursts of 100 lines 3 s apart, then silence: the second is committed while
    // B's listen connection is down.
    let lines = 200;
    let distinct: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
    let body = job(
        "node",
        json!({"logs": distinct, "log_repeat": 2, "log_burst": 100,
               "log_interval_ms": 3000, "delay_ms": 60000}),
    );
    let w = a.submit_async(&body).await;
    let id = id_of(&w);
    let mut stream = SseStream::open(&b, &id).await;
    let mut events = Vec::new();
    while events.len() < 100 {
        let e = stream.next_event(SOON).await.expect("open");
        assert_ne!(
            e.event.as_deref(),
            Some("done"),
            "ended too early for the test"
        );
        events.push(e);
    }
    assert_eq!(terminate_listen_connections(&url), 2, "one per node");
    while events.len() < lines {
        let e = stream.next_event(SOON).await.expect("open");
        assert_ne!(e.event.as_deref(), Some("done"), "ended early");
        events.push(e);
    }
    let now = a.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert_eq!(
        now["status"], "running",
        "every line came before the end: {now}"
    );
    // The listeners came back, and kills reach A through them again.
    let start = std::time::Instant::now();
    while listen_connections(&url) < 2 {
        assert!(start.elapsed() < SOON, "listen connections not reopened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.delete(&format!("/v1/workloads/{id}")).await.status(), 200);
    let (rest, status) = stream.until_done(SOON).await;
    assert!(rest.is_empty(), "no line after the last: {rest:?}");
    assert_eq!(status, "killed");
    let table = recorded_lines(&a, &id).await;
    assert_eq!(table.len(), lines);
    assert_same_as_table(&events, &table, 0);
    next_runs_at_once(&a).await;
}

#[tokio::test]
async fn a_node_of_one_owns_its_database_and_opens_no_listen_connection() {
    let Some(url) = shared_database("no_listener_alone") else {
        return;
    };
    let (factory, _) = scripted::factory(Options::default());
    // db_url without cluster.enabled: the single-node PostgreSQL store.
    let app = common::app()
        .env("VULCAN_DB_URL", &url)
        .backend(factory)
        .spawn()
        .await;
    next_runs_at_once(&app).await;
    assert_eq!(listen_connections(&url), 0, "no LISTEN without a cluster");
}

/// Read `stream` until `done`: each line's seq with the moment it arrived.
async fn arrivals(mut stream: SseStream) -> (Vec<(u64, String, std::time::Instant)>, String) {
    let mut out = Vec::new();
    loop {
        let e = stream.next_event(SOON).await.expect("open until done");
        if e.event.as_deref() == Some("done") {
            return (out, e.data);
        }
        let seq = e.id.as_deref().expect("id").parse().expect("seq");
        out.push((seq, e.data, std::time::Instant::now()));
    }
}

#[tokio::test]
async fn a_stream_on_another_node_carries_the_same_lines_as_the_local_one_and_reports_the_lag() {
    let Some((_url, a, _seen, b)) = two_nodes("sse_lag", Options::default(), &[]).await else {
        return;
    };
    let distinct: Vec<String> = (0..40).map(|i| format!("tick {i}")).collect();
    let w = a
        .submit_async(&job(
            "node",
            json!({"logs": distinct, "log_interval_ms": 100, "output": "ok"}),
        ))
        .await;
    let id = id_of(&w);
    let local = tokio::spawn(arrivals(SseStream::open(&a, &id).await));
    let remote = tokio::spawn(arrivals(SseStream::open(&b, &id).await));
    let (local, local_status) = local.await.expect("join");
    let (remote, remote_status) = remote.await.expect("join");
    assert_eq!(
        (local_status.as_str(), remote_status.as_str()),
        ("completed", "completed")
    );
    let strip = |v: &[(u64, String, std::time::Instant)]| -> Vec<(u64, String)> {
        v.iter().map(|(s, l, _)| (*s, l.clone())).collect()
    };
    assert_eq!(
        strip(&remote),
        strip(&local),
        "the same lines on both nodes"
    );
    assert_eq!(remote.len(), 40);
    // Figures only (a shared machine): how much later each line reached B's stream
    // than A's, for the lines both streams got live (after the first five).
    let mut lag: Vec<u128> = local
        .iter()
        .zip(&remote)
        .skip(5)
        .map(|((_, _, at_a), (_, _, at_b))| at_b.saturating_duration_since(*at_a).as_millis())
        .collect();
    lag.sort_unstable();
    println!(
        "cross-node SSE lag behind the local stream: median {} ms, p90 {} ms, max {} ms ({} lines)",
        lag[lag.len() / 2],
        lag[lag.len() * 9 / 10],
        lag[lag.len() - 1],
        lag.len()
    );
}

#[tokio::test]
async fn an_sse_stream_on_another_node_opened_while_the_work_is_queued_follows_it_to_done() {
    let opts = Options {
        max_concurrency: 1,
        ..Options::default()
    };
    let Some((_url, a, _seen, b)) = two_nodes("sse_queued", opts, &[]).await else {
        return;
    };
    let busy = scripted::occupy_slot(&a).await;
    let w = a.submit_async(&chatty(1000)).await;
    let id = id_of(&w);
    let mut stream = SseStream::open(&b, &id).await;
    // Queued on A: the stream is open, nothing to send yet.
    let now = b.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert_eq!(now["status"], "pending", "{now}");
    // Free the slot (through B as well): it runs, and B's stream gets it all.
    assert_eq!(
        b.delete(&format!("/v1/workloads/{busy}")).await.status(),
        200
    );
    let (events, status) = stream.until_done(SOON).await;
    assert_eq!(status, "completed");
    let table = recorded_lines(&a, &id).await;
    assert_eq!(table.len(), 1000);
    assert_same_as_table(&events, &table, 0);
}

/// Open `/v1/workloads/{id}/logs` on `app` resuming after `last_event_id`.
async fn open_after(app: &TestApp, id: &str, last_event_id: u64) -> SseStream {
    let res = app
        .client
        .get(app.url(&format!("/v1/workloads/{id}/logs")))
        .header("Last-Event-ID", last_event_id.to_string())
        .send()
        .await
        .expect("SSE request");
    assert_eq!(res.status(), 200);
    SseStream::from_response(res)
}

/// Read `stream` until `n` line events arrived (none may be `done`).
async fn lines(stream: &mut SseStream, n: usize) -> Vec<common::sse::Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = stream.next_event(SOON).await.expect("open");
        assert_ne!(e.event.as_deref(), Some("done"), "ended early");
        out.push(e);
    }
    out
}

#[tokio::test]
async fn many_streams_on_another_node_share_one_follower_and_each_gets_every_line_once() {
    let Some((_url, a, _seen, b)) = two_nodes("sse_shared_follower", Options::default(), &[]).await
    else {
        return;
    };
    // 3000 lines, then a minute of silence: the streams get every line live.
    let total = 3000;
    let mut body = chatty(total);
    let mut script: Value =
        serde_json::from_str(body["code"].as_str().expect("code")).expect("script");
    script["delay_ms"] = json!(60000);
    body["code"] = json!(script.to_string());
    let w = a.submit_async(&body).await;
    let id = id_of(&w);
    let started = "vulcan_log_followers_started_total";
    assert_eq!(common::gauge(&b, started).await, 0);

    // Four streams from the start, read concurrently.
    let mut early = Vec::new();
    for _ in 0..4 {
        early.push(SseStream::open(&b, &id).await);
    }
    let mut first = early.pop().expect("a stream");
    let head = lines(&mut first, 500).await;
    // Two late ones, once the follower is well on: one from the start (replayed from
    // the table up to the follower's position, then live), one resuming after seq 99.
    let late = SseStream::open(&b, &id).await;
    let resumed = open_after(&b, &id, 99).await;
    assert_eq!(common::gauge(&b, "vulcan_log_followers").await, 1);

    let first_rest = tokio::spawn(async move {
        let rest = lines(&mut first, total - 500).await;
        (first, rest)
    });
    let mut readers = Vec::new();
    for s in early {
        readers.push(tokio::spawn(async move {
            let mut s = s;
            let got = lines(&mut s, total).await;
            (s, got)
        }));
    }
    let late = tokio::spawn(async move {
        let mut s = late;
        let got = lines(&mut s, total).await;
        (s, got)
    });
    let resumed = tokio::spawn(async move {
        let mut s = resumed;
        let got = lines(&mut s, total - 100).await;
        (s, got)
    });
    let (mut first, rest) = first_rest.await.expect("join");
    let mut streams = vec![(first_events(head, rest), 0u64)];
    let mut open = Vec::new();
    for r in readers {
        let (s, got) = r.await.expect("join");
        streams.push((got, 0));
        open.push(s);
    }
    let (late, got) = late.await.expect("join");
    streams.push((got, 0));
    open.push(late);
    let (resumed, got) = resumed.await.expect("join");
    streams.push((got, 100));
    open.push(resumed);

    // Every line arrived while the workload still runs, through one follower.
    let now = a.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert_eq!(now["status"], "running", "all lines came live: {now}");
    assert_eq!(common::gauge(&b, started).await, 1, "one follower for all");
    assert_eq!(common::gauge(&b, "vulcan_log_followers").await, 1);

    assert_eq!(b.delete(&format!("/v1/workloads/{id}")).await.status(), 200);
    let table = recorded_lines(&a, &id).await;
    assert_eq!(table.len(), total);
    for (events, from) in &streams {
        assert_same_as_table(events, &table, *from);
    }
    let (rest, status) = first.until_done(SOON).await;
    assert!(rest.is_empty(), "no line after the last: {rest:?}");
    assert_eq!(status, "killed");
    for mut s in open {
        let (rest, status) = s.until_done(SOON).await;
        assert!(rest.is_empty(), "no line after the last: {rest:?}");
        assert_eq!(status, "killed");
    }
    // The follower ended with the workload.
    common::wait_gauge(&b, "vulcan_log_followers", 0, SOON).await;
    assert_eq!(common::gauge(&b, started).await, 1);
    next_runs_at_once(&a).await;
}

fn first_events(
    mut head: Vec<common::sse::Event>,
    rest: Vec<common::sse::Event>,
) -> Vec<common::sse::Event> {
    head.extend(rest);
    head
}

#[tokio::test]
async fn the_follower_of_another_nodes_workload_ends_when_its_last_stream_leaves() {
    let Some((_url, a, _seen, b)) = two_nodes("sse_follower_ends", Options::default(), &[]).await
    else {
        return;
    };
    let w = a
        .submit_async(&job(
            "node",
            json!({"logs": ["one", "two"], "delay_ms": 60000}),
        ))
        .await;
    let id = id_of(&w);
    let mut one = SseStream::open(&b, &id).await;
    let mut two = SseStream::open(&b, &id).await;
    assert_eq!(lines(&mut one, 2).await.len(), 2);
    assert_eq!(lines(&mut two, 2).await.len(), 2);
    assert_eq!(common::gauge(&b, "vulcan_log_followers").await, 1);
    drop(one);
    // One stream is still attached: the follower goes on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(common::gauge(&b, "vulcan_log_followers").await, 1);
    drop(two);
    // Nobody is attached: it ends although the workload still runs.
    common::wait_gauge(&b, "vulcan_log_followers", 0, SOON).await;
    let now = a.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert_eq!(now["status"], "running", "{now}");
    assert_eq!(b.delete(&format!("/v1/workloads/{id}")).await.status(), 200);
    next_runs_at_once(&a).await;
}
