//! Several Vulcan nodes sharing one PostgreSQL database (`cluster.enabled`): a real
//! throw-away PostgreSQL cluster, nodes booted in-process, talked to over HTTP.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{
    loopback_webhooks, node, quick_node, scripted, shared_database, terminate_listen_connections,
};
use common::receiver::Receiver;
use common::scripted::{self as script, job, Observed, Options};
use common::sse::SseStream;
use common::TestApp;
use futures_util::StreamExt;
use serde_json::{json, Value};

const SOON: Duration = Duration::from_secs(60);

/// Every workload of the cluster, read through `app` page by page.
async fn all_workloads(app: &TestApp) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let page = app
            .get_json(
                &format!("/v1/workloads?limit=100&offset={}", out.len()),
                200,
            )
            .await;
        let items = page["workloads"].as_array().expect("workloads").clone();
        if items.is_empty() {
            return out;
        }
        out.extend(items);
    }
}

/// Executions per workload id (as text) seen by one node's backend.
fn runs(seen: &Observed) -> HashMap<String, usize> {
    seen.runs
        .lock()
        .expect("lock")
        .iter()
        .map(|(id, n)| (id.to_string(), *n))
        .collect()
}

/// Poll `f` until it holds (or panic after `within`).
async fn eventually<F: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_nodes_share_one_database_and_either_answers_reads_of_the_others_work() {
    let Some(url) = shared_database("two_nodes_share_one_database") else {
        return;
    };
    let a = node(&url, "a")
        .backend(script::factory(Options::default()).0)
        .spawn()
        .await;
    let b = node(&url, "b").spawn().await;
    let w = a
        .submit_async(&job("node", serde_json::json!({"output": 42})))
        .await;
    let id = w["id"].as_str().expect("id").to_string();
    let done = a.wait_terminal(&id, SOON).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["node_id"], "a", "{done}");
    let seen = b.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert_eq!(seen, done, "node b reads the same record");
}

#[tokio::test]
async fn three_nodes_drain_3000_submissions_each_run_exactly_once_by_the_node_recorded() {
    let Some(url) = shared_database("three_nodes_drain_3000") else {
        return;
    };
    let mut nodes = Vec::new();
    let mut seen: Vec<(String, Arc<Observed>)> = Vec::new();
    for name in ["a", "b", "c"] {
        let (f, obs) = scripted(4);
        nodes.push(node(&url, name).backend(f).spawn().await);
        seen.push((name.to_string(), obs));
    }
    const N: usize = 3000;
    let nodes = Arc::new(nodes);
    let accepted: Vec<String> = futures_util::stream::iter(0..N)
        .map(|i| {
            let nodes = nodes.clone();
            async move {
                let w = nodes[i % 3]
                    .submit_async(&job("node", json!({"delay_ms": 1, "output": i})))
                    .await;
                w["id"].as_str().expect("id").to_string()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(accepted.iter().collect::<HashSet<_>>().len(), N);
    eventually(
        Duration::from_secs(300),
        "every submission completed",
        || {
            let a = &nodes[0];
            async move {
                let stats = a.get_json("/v1/stats", 200).await;
                stats["by_status"]["completed"] == N
            }
        },
    )
    .await;
    // Stats are the cluster's on every node (a grouped query over the shared table).
    for n in nodes.iter() {
        let stats = n.get_json("/v1/stats", 200).await;
        assert_eq!(stats["total"], N, "{stats}");
        assert_eq!(stats["by_status"]["completed"], N, "{stats}");
    }
    let per_node: Vec<(String, HashMap<String, usize>)> =
        seen.iter().map(|(n, obs)| (n.clone(), runs(obs))).collect();
    let total: usize = per_node
        .iter()
        .map(|(_, r)| r.values().sum::<usize>())
        .sum();
    assert_eq!(total, N, "executions over all nodes");
    let records = all_workloads(&nodes[1]).await;
    assert_eq!(records.len(), N);
    for w in &records {
        let id = w["id"].as_str().expect("id");
        assert_eq!(w["status"], "completed", "{w}");
        let ran_on: Vec<&str> = per_node
            .iter()
            .filter(|(_, r)| r.get(id) == Some(&1))
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(
            ran_on.len(),
            1,
            "{id} ran once, on exactly one node: {ran_on:?}"
        );
        assert_eq!(
            w["node_id"], ran_on[0],
            "recorded on the node that ran it: {w}"
        );
    }
    let busy = per_node.iter().filter(|(_, r)| !r.is_empty()).count();
    assert!(busy > 1, "work spread over more than one node");
    // `nodes` is shared with the finished stream only.
    let nodes = Arc::try_unwrap(nodes).ok().expect("sole owner");
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test]
async fn get_nodes_lists_every_node_with_its_backends_capacity_and_heartbeat() {
    let Some(url) = shared_database("get_nodes_lists_every_node") else {
        return;
    };
    let a = node(&url, "a").backend(scripted(3).0).spawn().await;
    let b = node(&url, "b").backend(scripted(5).0).spawn().await;
    let busy = a
        .submit_async(&job("node", json!({"delay_ms": 60000})))
        .await;
    let busy = busy["id"].as_str().expect("id").to_string();
    let running = a.wait_status(&busy, "running", SOON).await;
    let runner = running["node_id"].as_str().expect("node").to_string();
    // The heartbeat (every second by default) carries the running count.
    eventually(SOON, "a heartbeat shows the running workload", || {
        let b = &b;
        let runner = runner.clone();
        async move {
            let list = b.get_json("/v1/nodes", 200).await;
            list.as_array()
                .expect("array")
                .iter()
                .any(|n| n["node_id"] == runner.as_str() && n["backends"][0]["running"] == 1)
        }
    })
    .await;
    let list = a.get_json("/v1/nodes", 200).await;
    let list = list.as_array().expect("array");
    let ids: Vec<&str> = list
        .iter()
        .map(|n| n["node_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, vec!["a", "b"]);
    for (n, slots) in list.iter().zip([3, 5]) {
        assert_eq!(n["state"], "alive", "{n}");
        assert_eq!(n["generation"], 1, "{n}");
        assert_eq!(n["backends"][0]["name"], "scripted", "{n}");
        assert_eq!(n["backends"][0]["slots"], slots, "{n}");
        let beat =
            chrono::DateTime::parse_from_rfc3339(n["last_heartbeat"].as_str().expect("heartbeat"))
                .expect("rfc3339");
        let age = chrono::Utc::now().signed_duration_since(beat);
        assert!(age < chrono::Duration::seconds(30), "{n}");
        assert!(n["started_at"].is_string(), "{n}");
    }
    let killed = a.delete(&format!("/v1/workloads/{busy}")).await;
    assert!(killed.status().is_success() || killed.status() == 409);
}

#[tokio::test]
async fn a_single_server_lists_itself_alone() {
    let app = common::app()
        .env("VULCAN_NODE_ID", "solo")
        .backend(scripted(2).0)
        .spawn()
        .await;
    let list = app.get_json("/v1/nodes", 200).await;
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["node_id"], "solo");
    assert_eq!(list[0]["state"], "alive");
    assert_eq!(list[0]["backends"][0]["slots"], 2);
    assert_eq!(list[0]["backends"][0]["running"], 0);
}

#[tokio::test]
async fn a_second_server_with_a_live_nodes_id_refuses_to_start() {
    let Some(url) = shared_database("live_node_id_refused_at_start") else {
        return;
    };
    let a = node(&url, "a").backend(scripted(1).0).spawn().await;
    let err = node(&url, "a")
        .backend(scripted(1).0)
        .try_spawn()
        .await
        .err()
        .expect("a live node already has node_id a");
    assert!(err.to_string().contains("live node"), "{err}");
    // The first one is unharmed.
    let w = a.submit_async(&job("node", json!({"output": 1}))).await;
    let done = a.wait_terminal(w["id"].as_str().expect("id"), SOON).await;
    assert_eq!(done["status"], "completed", "{done}");
}

#[tokio::test]
async fn a_sync_submission_run_by_another_node_answers_with_its_result() {
    let Some(url) = shared_database("sync_run_elsewhere") else {
        return;
    };
    let (fa, seen_a) = scripted(1);
    let a = node(&url, "a").backend(fa).spawn().await;
    let busy = script::occupy_slot(&a).await;
    let (fb, seen_b) = scripted(2);
    let b = node(&url, "b").backend(fb).spawn().await;
    // a's only slot is taken: b claims the work a accepted.
    let res = a
        .post(
            "/v1/workloads",
            &job("node", json!({"output": {"ran": "elsewhere"}})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let w: Value = res.json().await.expect("json");
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"]["ran"], "elsewhere", "{w}");
    assert_eq!(w["node_id"], "b", "{w}");
    let id = w["id"].as_str().expect("id");
    assert_eq!(runs(&seen_b).get(id), Some(&1));
    assert_eq!(runs(&seen_a).get(id), None);
    let _ = a.delete(&format!("/v1/workloads/{busy}")).await;
    let _ = b;
}

#[tokio::test]
async fn a_sync_submission_run_by_another_node_is_answered_on_its_terminal_notification() {
    let Some(url) = shared_database("sync_woken_by_notify") else {
        return;
    };
    // A looks at the shared queue only every ten minutes and re-reads a followed row
    // as rarely: only the terminal notification of B's record can answer in time.
    let (fa, _) = scripted(1);
    let a = node(&url, "a")
        .env("VULCAN_CLUSTER__POLL_MS", "600000")
        .env("VULCAN_CLUSTER__RECHECK_S", "600")
        .backend(fa)
        .spawn()
        .await;
    let busy = script::occupy_slot(&a).await;
    let (fb, seen_b) = scripted(1);
    let b = node(&url, "b").backend(fb).spawn().await;
    let res = a
        .client
        .post(a.url("/v1/workloads"))
        .json(&job("node", json!({"delay_ms": 300, "output": "woken"})))
        // A lost wake-up fails here, not in a hung test.
        .timeout(SOON)
        .send()
        .await
        .expect("answered before the timeout (woken by the terminal notification)");
    assert_eq!(res.status(), 200);
    let w: Value = res.json().await.expect("json");
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], "woken", "{w}");
    assert_eq!(w["node_id"], "b", "{w}");
    let id = w["id"].as_str().expect("id");
    assert_eq!(runs(&seen_b).get(id), Some(&1));
    // A is fine: its own slot frees and its next submission runs at once.
    assert_eq!(
        a.delete(&format!("/v1/workloads/{busy}")).await.status(),
        200
    );
    let next = a.submit_async(&job("node", json!({"output": 1}))).await;
    let done = a
        .wait_terminal(next["id"].as_str().expect("id"), SOON)
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let _ = b;
}

#[tokio::test]
async fn a_crashed_nodes_running_work_fails_node_lost_and_its_queue_runs_on_a_survivor() {
    let Some(url) = shared_database("crashed_node_work_recovered") else {
        return;
    };
    let (fa, seen_a) = scripted(2);
    let a = quick_node(&url, "a").backend(fa).spawn().await;
    let mut doomed = Vec::new();
    for _ in 0..2 {
        let w = a
            .submit_async(&job("node", json!({"delay_ms": 600000})))
            .await;
        let id = w["id"].as_str().expect("id").to_string();
        a.wait_status(&id, "running", SOON).await;
        doomed.push(id);
    }
    // a's slots are full: what it accepts now waits in the shared queue.
    let mut queued = Vec::new();
    for i in 0..3 {
        let w = a.submit_async(&job("node", json!({"output": i}))).await;
        queued.push(w["id"].as_str().expect("id").to_string());
    }
    let (fb, seen_b) = scripted(4);
    let b = quick_node(&url, "b").backend(fb).spawn().await;
    for id in &queued {
        let done = b.wait_terminal(id, SOON).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["node_id"], "b", "{done}");
    }

    let crashed_at = Instant::now();
    a.crash().await;
    for id in &doomed {
        let w = b.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!(w["status"], "failed", "{w}");
        assert_eq!(w["error"], "node lost", "{w}");
        assert_eq!(w["node_id"], "a", "{w}");
    }
    // Liveness bound only: node_timeout_s is 2 s, heartbeats every 200 ms.
    assert!(crashed_at.elapsed() < Duration::from_secs(30));
    let list = b.get_json("/v1/nodes", 200).await;
    let a_row = list
        .as_array()
        .expect("array")
        .iter()
        .find(|n| n["node_id"] == "a")
        .expect("a listed")
        .clone();
    assert_eq!(a_row["state"], "lost", "{a_row}");
    assert_eq!(a_row["generation"], 2, "fenced: {a_row}");

    // The survivor keeps working at once; nothing ran twice.
    let w = b
        .submit_async(&job("node", json!({"output": "next"})))
        .await;
    let next = b.wait_terminal(w["id"].as_str().expect("id"), SOON).await;
    assert_eq!(next["status"], "completed", "{next}");
    let (ra, rb) = (runs(&seen_a), runs(&seen_b));
    for id in &doomed {
        assert_eq!(ra.get(id), Some(&1), "{id} ran once on a");
        assert_eq!(rb.get(id), None, "{id} was not run again");
    }
    for id in &queued {
        assert_eq!(rb.get(id), Some(&1), "{id} ran once on b");
        assert_eq!(ra.get(id), None);
    }

    // a comes back under its id (its row is lost, not live): a new generation.
    let (fa2, seen_a2) = scripted(2);
    let a2 = quick_node(&url, "a").backend(fa2).spawn().await;
    let list = a2.get_json("/v1/nodes", 200).await;
    let a_row = list
        .as_array()
        .expect("array")
        .iter()
        .find(|n| n["node_id"] == "a")
        .expect("a listed")
        .clone();
    assert_eq!(a_row["state"], "alive", "{a_row}");
    assert_eq!(a_row["generation"], 3, "{a_row}");
    for id in &doomed {
        let w = a2.get_json(&format!("/v1/workloads/{id}"), 200).await;
        assert_eq!(
            w["error"], "node lost",
            "the survivor's decision stands: {w}"
        );
    }
    assert!(
        runs(&seen_a2).is_empty(),
        "nothing of the old work ran again"
    );
}

#[tokio::test]
async fn a_node_stopped_gracefully_leaves_and_starts_again_at_once_under_its_id() {
    let Some(url) = shared_database("graceful_leave") else {
        return;
    };
    let a = node(&url, "a").backend(scripted(1).0).spawn().await;
    let (fb, _) = scripted(1);
    let b = node(&url, "b").backend(fb).spawn().await;
    a.stop().await;
    let list = b.get_json("/v1/nodes", 200).await;
    let a_row = list
        .as_array()
        .expect("array")
        .iter()
        .find(|n| n["node_id"] == "a")
        .expect("a listed")
        .clone();
    assert_eq!(a_row["state"], "lost", "left the cluster: {a_row}");
    let (fa, seen) = scripted(1);
    let a = node(&url, "a")
        .backend(fa)
        .try_spawn()
        .await
        .expect("not refused: the node left, it is not live");
    let w = a.submit_async(&job("node", json!({"output": 7}))).await;
    let done = a.wait_terminal(w["id"].as_str().expect("id"), SOON).await;
    assert_eq!(done["status"], "completed", "{done}");
    let ran = runs(&seen).len() + usize::from(done["node_id"] == "b");
    assert_eq!(ran, 1, "{done}");
}

#[tokio::test]
async fn a_nodes_admission_bound_holds_for_work_waiting_in_the_shared_queue() {
    let Some(url) = shared_database("admission_bound_per_node") else {
        return;
    };
    let a = node(&url, "a")
        .env("VULCAN_MAX_QUEUE", "3")
        .backend(scripted(1).0)
        .spawn()
        .await;
    let busy = script::occupy_slot(&a).await;
    // No node has a free slot: these wait unclaimed, counted against a's bound.
    for _ in 0..3 {
        a.submit_async(&job("node", json!({"output": 1}))).await;
    }
    let res = a
        .post("/v1/workloads/async", &job("node", json!({"output": 1})))
        .await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let v: Value = res.json().await.expect("json");
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .contains("pending workloads"),
        "{v}"
    );
    // Another node with room takes them; a's bound frees and it accepts again.
    let b = node(&url, "b").backend(scripted(4).0).spawn().await;
    eventually(SOON, "a accepts again once b took its queue", || {
        let a = &a;
        async move {
            a.post("/v1/workloads/async", &job("node", json!({"output": 2})))
                .await
                .status()
                == 202
        }
    })
    .await;
    let _ = a.delete(&format!("/v1/workloads/{busy}")).await;
    let _ = b;
}

#[tokio::test]
async fn work_waiting_in_the_shared_queue_is_killed_where_it_waits_and_never_runs() {
    let Some(url) = shared_database("kill_unclaimed") else {
        return;
    };
    let (f, seen) = scripted(1);
    let a = node(&url, "a").backend(f).spawn().await;
    let busy = script::occupy_slot(&a).await;
    let w = a.submit_async(&job("node", json!({"output": 1}))).await;
    let id = w["id"].as_str().expect("id").to_string();
    let waiting = a.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert_eq!(waiting["status"], "pending", "{waiting}");
    assert_eq!(waiting["node_id"], "", "claimed by no node yet: {waiting}");
    let res = a.delete(&format!("/v1/workloads/{id}")).await;
    assert_eq!(res.status(), 200);
    let killed: Value = res.json().await.expect("json");
    assert_eq!(killed["status"], "killed", "{killed}");
    // The slot frees: the killed one is not claimed, the next submission runs.
    let res = a.delete(&format!("/v1/workloads/{busy}")).await;
    assert_eq!(res.status(), 200);
    let next = a.submit_async(&job("node", json!({"output": 2}))).await;
    let next = a
        .wait_terminal(next["id"].as_str().expect("id"), SOON)
        .await;
    assert_eq!(next["status"], "completed", "{next}");
    assert_eq!(runs(&seen).get(&id), None, "the killed workload never ran");
}

#[tokio::test]
async fn a_sigkilled_vulcan_serve_nodes_running_work_fails_node_lost_and_its_queue_runs_elsewhere()
{
    let Some(url) = shared_database("sigkilled_node") else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let quick = [
        ("VULCAN_DB_URL", url.as_str()),
        ("VULCAN_CLUSTER__ENABLED", "true"),
        ("VULCAN_CLUSTER__HEARTBEAT_MS", "200"),
        ("VULCAN_CLUSTER__NODE_TIMEOUT_S", "2"),
        ("VULCAN_BACKENDS__ISOLATE__MAX_CONCURRENCY", "2"),
    ];
    let mut env = quick.to_vec();
    env.push(("VULCAN_NODE_ID", "a"));
    let a = common::binary::Binary::serve(dir.path(), &env).await;
    let client = reqwest::Client::new();
    let submit = |code: &str, timeout_s: u32| {
        let client = client.clone();
        let url = format!("{}/v1/workloads/async", a.base);
        let body = json!({"runtime": "node", "code": code, "resources": {"timeout_s": timeout_s}});
        async move {
            let res = client.post(url).json(&body).send().await.expect("submit");
            assert_eq!(res.status(), 202);
            let w: Value = res.json().await.expect("json");
            w["id"].as_str().expect("id").to_string()
        }
    };
    let read = |id: String| {
        let client = client.clone();
        let url = format!("{}/v1/workloads/{id}", a.base);
        async move {
            let w: Value = client
                .get(url)
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("json");
            w
        }
    };
    let long = "export default async () => { await new Promise((r) => setTimeout(r, 600000)); return 1; };";
    let mut doomed = Vec::new();
    for _ in 0..2 {
        let id = submit(long, 900).await;
        eventually(SOON, "running on a", || {
            let w = read(id.clone());
            async move { w.await["status"] == "running" }
        })
        .await;
        doomed.push(id);
    }
    // a's two slots are taken: these wait in the shared queue.
    let mut queued = Vec::new();
    for _ in 0..2 {
        queued.push(submit("export default () => 2;", 30).await);
    }
    drop(a); // SIGKILL, then reaped by wait(): no shutdown work at all.

    let b = quick
        .iter()
        .fold(node(&url, "b"), |n, (k, v)| n.env(k, v))
        .env("VULCAN_BACKENDS__GVISOR__ENABLED", "false")
        .env("VULCAN_BACKENDS__MICROVM__ENABLED", "false")
        .builtin()
        .spawn()
        .await;
    for id in &queued {
        let w = b.wait_terminal(id, SOON).await;
        assert_eq!(w["status"], "completed", "{w}");
        assert_eq!(w["output"], 2, "{w}");
        assert_eq!(w["node_id"], "b", "{w}");
    }
    for id in &doomed {
        let w = b.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!(w["status"], "failed", "{w}");
        assert_eq!(w["error"], "node lost", "{w}");
        assert_eq!(w["node_id"], "a", "{w}");
        assert!(w["output"].is_null(), "{w}");
    }
    let stats = b.get_json("/v1/stats", 200).await;
    assert_eq!(stats["total"], 4, "nothing lost, nothing added: {stats}");
    assert_eq!(stats["by_status"]["completed"], 2, "{stats}");
    assert_eq!(stats["by_status"]["failed"], 2, "{stats}");
}

#[tokio::test]
async fn a_node_declared_lost_stops_its_work_without_overwriting_it_and_registers_again() {
    let Some(url) = shared_database("fenced_node_rejoins") else {
        return;
    };
    let (f, seen) = scripted(2);
    let a = quick_node(&url, "a").backend(f).spawn().await;
    let w = a
        .submit_async(&job("node", json!({"delay_ms": 600000})))
        .await;
    let id = w["id"].as_str().expect("id").to_string();
    a.wait_status(&id, "running", SOON).await;
    // While a was cut off, a survivor declared it lost (the statements of the reaping
    // pass): generation bumped, its running work failed.
    common::cluster::execute(
        &url,
        "UPDATE nodes SET state = 'lost', generation = generation + 1 WHERE node_id = 'a';
         UPDATE workloads SET status = 'failed', error = 'node lost',
             finished_at = '2026-01-01T00:00:00.000Z' WHERE node_id = 'a' AND status = 'running';",
    );
    // a's next heartbeat finds it fenced: it stops the execution and registers again.
    eventually(SOON, "the execution is stopped", || {
        let seen = seen.clone();
        let id = id.clone();
        async move { seen.saw_cancel(&id) }
    })
    .await;
    eventually(SOON, "a is back under a new generation", || {
        let a = &a;
        async move {
            let list = a.get_json("/v1/nodes", 200).await;
            list[0]["state"] == "alive" && list[0]["generation"] == 3
        }
    })
    .await;
    let w = a.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(
        w["error"], "node lost",
        "the survivor's decision stands: {w}"
    );
    assert_eq!(w["finished_at"], "2026-01-01T00:00:00.000Z", "{w}");
    let next = a.submit_async(&job("node", json!({"output": 5}))).await;
    let next = a
        .wait_terminal(next["id"].as_str().expect("id"), SOON)
        .await;
    assert_eq!(next["status"], "completed", "{next}");
    assert_eq!(next["node_id"], "a", "{next}");
}

#[tokio::test]
async fn a_node_declared_lost_before_it_starts_a_claimed_workload_never_runs_it() {
    let Some(url) = shared_database("declared_lost_before_start") else {
        return;
    };
    // Node a claims the work and prepares it for 6 s (as an image pull would), and
    // stays silent meanwhile: it heartbeats and polls once a minute.
    let (slow, seen_a) = script::factory(Options {
        prepare_ms: 6000,
        ..Options::default()
    });
    let a = node(&url, "a")
        .env("VULCAN_CLUSTER__HEARTBEAT_MS", "60000")
        .env("VULCAN_CLUSTER__POLL_MS", "60000")
        .env("VULCAN_CLUSTER__NODE_TIMEOUT_S", "130")
        .backend(slow)
        .spawn()
        .await;
    let w = a
        .submit_async(&job("node", json!({"output": "once"})))
        .await;
    let id = w["id"].as_str().expect("id").to_string();
    eventually(SOON, "a claims it", || async {
        a.get_json(&format!("/v1/workloads/{id}"), 200).await["node_id"] == "a"
    })
    .await;
    // Node b finds a silent past its 2 s timeout, declares it lost, takes the work back
    // from the queue and runs it.
    let (fast, seen_b) = scripted(4);
    let b = quick_node(&url, "b").backend(fast).spawn().await;
    let done = b.wait_terminal(&id, SOON).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["node_id"], "b", "{done}");
    assert_eq!(runs(&seen_b).get(&id), Some(&1), "the survivor ran it once");
    // a's preparation ends after b's run: its running write is refused (a's generation
    // is fenced), so a never starts it, and b's record stands.
    tokio::time::sleep(Duration::from_millis(6500)).await;
    assert_eq!(
        runs(&seen_a).get(&id),
        None,
        "the lost node never started it"
    );
    let after = b.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert_eq!(after, done, "nothing of a's overwrote b's record");
    b.get_json("/healthz", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_database_is_declared_lost_and_comes_back_fenced() {
    let Some(url) = shared_database("cut_off_node") else {
        return;
    };
    // Node a reaches the database only through a proxy this test can cut.
    let server = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in the url");
    let proxy = common::proxy::CutProxy::start(server).await;
    let a_url = url.replacen(server, &proxy.addr, 1);
    let (fa, seen_a) = scripted(2);
    let a = quick_node(&a_url, "a").backend(fa).spawn().await;
    let w = a
        .submit_async(&job("node", json!({"delay_ms": 600000})))
        .await;
    let id = w["id"].as_str().expect("id").to_string();
    a.wait_status(&id, "running", SOON).await;
    let (fb, _) = scripted(2);
    let b = quick_node(&url, "b").backend(fb).spawn().await;

    proxy.cut();
    // b declares a lost once a has been silent for 2 s: a's running work fails.
    let lost = b.wait_terminal(&id, SOON).await;
    assert_eq!(lost["status"], "failed", "{lost}");
    assert_eq!(lost["error"], "node lost", "{lost}");
    // a itself cannot write: it says so instead of accepting work it cannot record.
    eventually(SOON, "a is not ready while cut off", || {
        let a = &a;
        async move { a.get("/readyz").await.status() == 503 }
    })
    .await;
    assert!(
        !seen_a.saw_cancel(&id),
        "a's execution went on while cut off"
    );

    proxy.restore();
    // Back: a learns it was fenced, stops the execution without recording anything and
    // registers again under a new generation.
    eventually(SOON, "a stops the execution", || {
        let seen = seen_a.clone();
        let id = id.clone();
        async move { seen.saw_cancel(&id) }
    })
    .await;
    eventually(SOON, "a is back, alive under a new generation", || {
        let b = &b;
        async move {
            let nodes = b.get_json("/v1/nodes", 200).await;
            nodes
                .as_array()
                .expect("nodes")
                .iter()
                .any(|n| n["node_id"] == "a" && n["state"] == "alive" && n["generation"] == 3)
        }
    })
    .await;
    let after = b.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert_eq!(after, lost, "the survivor's decision stands");
    eventually(SOON, "a is ready again", || {
        let a = &a;
        async move { a.get("/readyz").await.status() == 200 }
    })
    .await;
    let next = a.submit_async(&job("node", json!({"output": 7}))).await;
    let next = b
        .wait_terminal(next["id"].as_str().expect("id"), SOON)
        .await;
    assert_eq!(next["status"], "completed", "{next}");
    assert_eq!(runs(&seen_a).get(&id), Some(&1), "run once, never again");
}

/// Node `a` (heartbeats every 200 ms, lost after 2 s) with a backend that prepares each
/// workload for a minute, and one workload it has claimed and not started.
async fn a_claims_and_prepares(url: &str) -> (TestApp, String) {
    let (slow, _) = script::factory(Options {
        prepare_ms: 60000,
        ..Options::default()
    });
    let a = quick_node(url, "a").backend(slow).spawn().await;
    let w = a
        .submit_async(&job("node", json!({"output": "never"})))
        .await;
    let id = w["id"].as_str().expect("id").to_string();
    eventually(SOON, "a claims it", || async {
        a.get_json(&format!("/v1/workloads/{id}"), 200).await["node_id"] == "a"
    })
    .await;
    (a, id)
}

/// The answer to a kill of `id` sent to `b` while it is pending and never started.
fn assert_killed_unstarted(killed: &Value) {
    assert_eq!(killed["status"], "killed", "{killed}");
    assert_eq!(killed["error"], "killed by request", "{killed}");
    assert!(killed["started_at"].is_null(), "never started: {killed}");
}

#[tokio::test]
async fn a_kill_requested_for_work_a_lost_node_claimed_ends_it_killed_not_requeued() {
    let Some(url) = shared_database("kill_request_at_reaping") else {
        return;
    };
    let (a, id) = a_claims_and_prepares(&url).await;
    // b could run it (a free scripted slot) once it is back in the queue.
    let (fast, seen_b) = scripted(4);
    let b = quick_node(&url, "b")
        .env("VULCAN_CLUSTER__KILL_TIMEOUT_S", "30")
        .backend(fast)
        .spawn()
        .await;
    a.crash().await;
    // a never hears the request; b's reaper declares a lost 2 s later and finds it.
    let res = b.delete(&format!("/v1/workloads/{id}")).await;
    assert_eq!(res.status(), 200);
    let killed: Value = res.json().await.expect("json");
    assert_killed_unstarted(&killed);
    assert_eq!(runs(&seen_b).get(&id), None, "never run by the survivor");
    // It stays killed: b's next polls find nothing to claim, and b works on.
    let next = b.submit_async(&job("node", json!({"output": 1}))).await;
    let done = b
        .wait_terminal(next["id"].as_str().expect("id"), SOON)
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        b.get_json(&format!("/v1/workloads/{id}"), 200).await,
        killed
    );
    assert_eq!(runs(&seen_b).get(&id), None, "never run by the survivor");
}

#[tokio::test]
async fn a_kill_requested_for_work_a_node_claimed_before_it_restarted_ends_it_killed() {
    let Some(url) = shared_database("kill_request_at_restart") else {
        return;
    };
    let (a, id) = a_claims_and_prepares(&url).await;
    // b declares nobody lost (its timeout is ten minutes) and runs nothing itself.
    let b = node(&url, "b")
        .env("VULCAN_CLUSTER__NODE_TIMEOUT_S", "600")
        .env("VULCAN_CLUSTER__KILL_TIMEOUT_S", "60")
        .spawn()
        .await;
    a.crash().await;
    let kill = {
        let client = b.client.clone();
        let url = b.url(&format!("/v1/workloads/{id}"));
        tokio::spawn(async move { client.delete(url).send().await.expect("kill on b") })
    };
    eventually(SOON, "the kill request is on the row", || async {
        common::cluster::kill_requested(&url, &id)
    })
    .await;
    // a comes back under its id (once its old heartbeat is past its 2 s timeout) with
    // a backend that would run the work at once if it re-queued and claimed it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (fast, seen_a) = scripted(4);
    let a = quick_node(&url, "a").backend(fast).spawn().await;
    let res = kill.await.expect("join");
    assert_eq!(res.status(), 200);
    let killed: Value = res.json().await.expect("json");
    assert_killed_unstarted(&killed);
    assert_eq!(runs(&seen_a).get(&id), None, "never run after the restart");
    let next = a.submit_async(&job("node", json!({"output": 1}))).await;
    let done = a
        .wait_terminal(next["id"].as_str().expect("id"), SOON)
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(runs(&seen_a).get(&id), None, "never run after the restart");
}

#[tokio::test]
async fn a_lost_nodes_running_work_with_a_kill_request_ends_killed_and_the_rest_fails_node_lost() {
    let Some(url) = shared_database("kill_request_running_at_reaping") else {
        return;
    };
    let receiver = Receiver::start().await;
    let (fa, seen_a) = scripted(2);
    let a = loopback_webhooks(quick_node(&url, "a"))
        .backend(fa)
        .spawn()
        .await;
    // Both run on a; each reports to its own path of the receiver.
    let mut ids = Vec::new();
    for path in ["/asked", "/unasked"] {
        let mut body = job("node", json!({"delay_ms": 600000}));
        body["callback_url"] = json!(receiver.url(path));
        let w = a.submit_async(&body).await;
        let id = w["id"].as_str().expect("id").to_string();
        a.wait_status(&id, "running", SOON).await;
        ids.push(id);
    }
    let (asked, unasked) = (ids[0].clone(), ids[1].clone());
    // b takes the kill and follows both; it declares nobody lost (a ten-minute timeout),
    // so the kill request is on the row before any survivor looks at a.
    let (fb, seen_b) = scripted(2);
    let b = loopback_webhooks(node(&url, "b"))
        .env("VULCAN_CLUSTER__NODE_TIMEOUT_S", "600")
        .env("VULCAN_CLUSTER__KILL_TIMEOUT_S", "60")
        .backend(fb)
        .spawn()
        .await;
    let mut streams = Vec::new();
    for id in &ids {
        streams.push(SseStream::open(&b, id).await);
    }
    a.crash().await;
    let kill = {
        let client = b.client.clone();
        let url = b.url(&format!("/v1/workloads/{asked}"));
        tokio::spawn(async move { client.delete(url).send().await.expect("kill on b") })
    };
    eventually(SOON, "the kill request is on the row", || async {
        common::cluster::kill_requested(&url, &asked)
    })
    .await;
    // c finds a silent past its 2 s timeout and declares it lost.
    let c = loopback_webhooks(quick_node(&url, "c")).spawn().await;

    let res = kill.await.expect("join");
    assert_eq!(
        res.status(),
        200,
        "the kill is answered with the killed record"
    );
    let killed: Value = res.json().await.expect("json");
    assert_eq!(killed["status"], "killed", "{killed}");
    assert_eq!(killed["error"], "killed by request", "{killed}");
    assert_eq!(killed["node_id"], "a", "{killed}");
    assert!(!killed["started_at"].is_null(), "it ran: {killed}");
    assert!(!killed["finished_at"].is_null(), "{killed}");
    assert!(killed["output"].is_null(), "{killed}");
    assert!(
        killed["duration_ms"].is_null(),
        "unknown, as for node lost: {killed}"
    );
    let lost = b.wait_terminal(&unasked, SOON).await;
    assert_eq!(lost["status"], "failed", "{lost}");
    assert_eq!(lost["error"], "node lost", "no kill asked: {lost}");
    assert_eq!(lost["node_id"], "a", "{lost}");
    // Every node reads the same records.
    for (id, record) in [(&asked, &killed), (&unasked, &lost)] {
        assert_eq!(
            &c.get_json(&format!("/v1/workloads/{id}"), 200).await,
            record
        );
    }
    // The streams on b end on the reaper's terminal notification.
    let (_, status) = streams[0].until_done(SOON).await;
    assert_eq!(status, "killed");
    let (_, status) = streams[1].until_done(SOON).await;
    assert_eq!(status, "failed");
    // Each webhook carries the record as stored.
    for (path, record) in [("/asked", &killed), ("/unasked", &lost)] {
        let got = receiver.wait_for(path, 1, SOON).await;
        assert_eq!(&got[0].json(), record, "{path}");
    }
    // Ran once on a, never again; b works on at once.
    let (ra, rb) = (runs(&seen_a), runs(&seen_b));
    for id in &ids {
        assert_eq!(ra.get(id), Some(&1), "{id} ran once on a");
        assert_eq!(rb.get(id), None, "{id} was not run again");
    }
    let next = b.submit_async(&job("node", json!({"output": 1}))).await;
    let done = b
        .wait_terminal(next["id"].as_str().expect("id"), SOON)
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    receiver.stop().await;
}

#[tokio::test]
async fn a_node_leaving_gracefully_kills_claimed_work_with_a_kill_request_and_requeues_the_rest() {
    let Some(url) = shared_database("kill_request_at_leave") else {
        return;
    };
    // a claims two workloads and prepares them for ten minutes (as image pulls).
    let (slow, seen_a) = script::factory(Options {
        max_concurrency: 2,
        prepare_ms: 600_000,
        ..Options::default()
    });
    let a = node(&url, "a")
        .env("VULCAN_CLUSTER__LISTEN_POLL_MS", "60000")
        .backend(slow)
        .spawn()
        .await;
    let mut ids = Vec::new();
    for i in 0..2 {
        let w = a.submit_async(&job("node", json!({"output": i}))).await;
        ids.push(w["id"].as_str().expect("id").to_string());
    }
    for id in &ids {
        eventually(SOON, "a claims it", || async {
            a.get_json(&format!("/v1/workloads/{id}"), 200).await["node_id"] == "a"
        })
        .await;
    }
    let (asked, unasked) = (ids[0].clone(), ids[1].clone());
    // a goes deaf: it finds its listen connection gone at its next poll, a minute from
    // now, and reopens it ten minutes after that. It never hears the kill.
    assert_eq!(terminate_listen_connections(&url), 1, "a's");
    // b declares nobody lost (a ten-minute timeout) and could run the work at once.
    let (fast, seen_b) = scripted(4);
    let b = node(&url, "b")
        .env("VULCAN_CLUSTER__NODE_TIMEOUT_S", "600")
        .env("VULCAN_CLUSTER__KILL_TIMEOUT_S", "60")
        .backend(fast)
        .spawn()
        .await;
    let mut stream = SseStream::open(&b, &asked).await;
    let kill = {
        let client = b.client.clone();
        let url = b.url(&format!("/v1/workloads/{asked}"));
        tokio::spawn(async move { client.delete(url).send().await.expect("kill on b") })
    };
    eventually(SOON, "the kill request is on the row", || async {
        common::cluster::kill_requested(&url, &asked)
    })
    .await;
    assert_eq!(
        b.get_json(&format!("/v1/workloads/{asked}"), 200).await["status"],
        "pending",
        "a did not hear the kill"
    );

    a.stop().await;
    let res = kill.await.expect("join");
    assert_eq!(res.status(), 200, "answered once a left");
    let killed: Value = res.json().await.expect("json");
    assert_killed_unstarted(&killed);
    assert_eq!(killed["node_id"], "a", "{killed}");
    let (_, status) = stream.until_done(SOON).await;
    assert_eq!(status, "killed");
    let done = b.wait_terminal(&unasked, SOON).await;
    assert_eq!(done["status"], "completed", "re-queued, run by b: {done}");
    assert_eq!(done["node_id"], "b", "{done}");
    let list = b.get_json("/v1/nodes", 200).await;
    let a_row = list
        .as_array()
        .expect("array")
        .iter()
        .find(|n| n["node_id"] == "a")
        .expect("a listed")
        .clone();
    assert_eq!(a_row["state"], "lost", "a left the cluster: {a_row}");
    let (ra, rb) = (runs(&seen_a), runs(&seen_b));
    assert_eq!(rb.get(&unasked), Some(&1), "b ran the re-queued one once");
    assert_eq!(rb.get(&asked), None, "the killed one never ran");
    assert!(ra.is_empty(), "a started nothing: {ra:?}");
    assert_eq!(
        b.get_json(&format!("/v1/workloads/{asked}"), 200).await,
        killed,
        "it stays killed"
    );
}

#[tokio::test]
async fn orphaned_claims_with_a_kill_request_are_killed_and_the_rest_requeued_and_run() {
    let Some(url) = shared_database("kill_request_orphaned_claim") else {
        return;
    };
    // a looks for orphaned claims every 25 polls: about every 1.25 s here.
    let (f, seen_a) = scripted(1);
    let a = node(&url, "a")
        .env("VULCAN_CLUSTER__POLL_MS", "50")
        .backend(f)
        .spawn()
        .await;
    let busy = script::occupy_slot(&a).await;
    // b runs nothing; it follows the work from the table.
    let b = node(&url, "b").spawn().await;
    // a's only slot is taken: these wait in the shared queue, claimed by no node.
    let mut ids = Vec::new();
    for i in 0..2 {
        let w = a.submit_async(&job("node", json!({"output": i}))).await;
        ids.push(w["id"].as_str().expect("id").to_string());
    }
    let (asked, unasked) = (ids[0].clone(), ids[1].clone());
    for id in &ids {
        let w = b.get_json(&format!("/v1/workloads/{id}"), 200).await;
        assert_eq!(
            (&w["status"], &w["node_id"]),
            (&json!("pending"), &json!(""))
        );
    }
    let mut stream = SseStream::open(&b, &asked).await;
    // a's claim of both committed but its answer never reached a (the connection broke
    // at the commit), and a client asked to kill the first meanwhile.
    common::cluster::execute(
        &url,
        &format!(
            "UPDATE workloads SET node_id = 'a',
                 node_generation = (SELECT generation FROM nodes WHERE node_id = 'a'),
                 kill_requested_at = CASE WHEN id = '{asked}'
                     THEN '2026-01-01T00:00:00.000Z' END
             WHERE id IN ('{asked}', '{unasked}');"
        ),
    );
    // a finds both claimed by it and held nowhere: one killed, one back in the queue.
    let (_, status) = stream.until_done(SOON).await;
    assert_eq!(status, "killed");
    let killed = b.get_json(&format!("/v1/workloads/{asked}"), 200).await;
    assert_killed_unstarted(&killed);
    assert_eq!(killed["node_id"], "a", "{killed}");
    eventually(SOON, "the other one is back in the queue", || async {
        let w = b.get_json(&format!("/v1/workloads/{unasked}"), 200).await;
        w["status"] == "pending" && w["node_id"] == ""
    })
    .await;
    // A slot frees: the re-queued one is claimed and runs, the killed one never.
    assert_eq!(
        a.delete(&format!("/v1/workloads/{busy}")).await.status(),
        200
    );
    let done = b.wait_terminal(&unasked, SOON).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["node_id"], "a", "{done}");
    let ran = runs(&seen_a);
    assert_eq!(ran.get(&unasked), Some(&1), "the re-queued one ran once");
    assert_eq!(ran.get(&asked), None, "the killed one never ran");
    assert_eq!(
        b.get_json(&format!("/v1/workloads/{asked}"), 200).await,
        killed,
        "it stays killed"
    );
}

#[tokio::test]
async fn a_fenced_node_that_drops_its_queued_work_closes_their_log_topics() {
    let Some(url) = shared_database("fenced_node_topics") else {
        return;
    };
    let topics = "vulcan_log_topics";
    // a claims three workloads and prepares them for ten minutes (as image pulls).
    let (slow, seen_a) = script::factory(Options {
        max_concurrency: 3,
        prepare_ms: 600_000,
        ..Options::default()
    });
    let a = quick_node(&url, "a").backend(slow).spawn().await;
    let baseline = common::gauge(&a, topics).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let w = a.submit_async(&job("node", json!({"output": i}))).await;
        ids.push(w["id"].as_str().expect("id").to_string());
    }
    for id in &ids {
        eventually(SOON, "a claims it", || async {
            a.get_json(&format!("/v1/workloads/{id}"), 200).await["node_id"] == "a"
        })
        .await;
    }
    common::wait_gauge(&a, topics, baseline + 3, SOON).await;
    // A survivor declares a lost (the reaping pass's statements): its claims go back
    // to the queue, where b takes and runs them.
    common::cluster::execute(
        &url,
        "UPDATE nodes SET state = 'lost', generation = generation + 1 WHERE node_id = 'a';
         UPDATE workloads SET node_id = '', node_generation = 0
             WHERE node_id = 'a' AND status = 'pending';",
    );
    let (fast, seen_b) = scripted(4);
    let b = node(&url, "b").backend(fast).spawn().await;
    for id in &ids {
        let done = b.wait_terminal(id, SOON).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["node_id"], "b", "{done}");
        assert_eq!(runs(&seen_b).get(id), Some(&1));
        assert_eq!(runs(&seen_a).get(id), None);
    }
    // a found itself fenced, dropped the three, and closed their topics.
    common::wait_gauge(&a, topics, baseline, SOON).await;
    eventually(SOON, "a is back under a new generation", || async {
        let list = a.get_json("/v1/nodes", 200).await;
        list[0]["node_id"] == "a" && list[0]["state"] == "alive" && list[0]["generation"] == 3
    })
    .await;
    assert_eq!(common::gauge(&a, topics).await, baseline);
}

#[tokio::test]
async fn stats_on_a_cluster_node_are_answered_from_one_count_for_stats_max_age() {
    let Some(url) = shared_database("stats_max_age") else {
        return;
    };
    let (fa, _) = scripted(2);
    // a counts at most once in ten minutes; b counts for every request.
    let a = node(&url, "a")
        .env("VULCAN_CLUSTER__STATS_MAX_AGE_MS", "600000")
        .backend(fa)
        .spawn()
        .await;
    let (fb, _) = scripted(2);
    let b = node(&url, "b")
        .env("VULCAN_CLUSTER__STATS_MAX_AGE_MS", "0")
        .backend(fb)
        .spawn()
        .await;
    let w = a.submit_async(&job("node", json!({"output": 1}))).await;
    a.wait_terminal(w["id"].as_str().expect("id"), SOON).await;
    let first = a.get_json("/v1/stats", 200).await;
    assert_eq!(first["total"], 1, "{first}");
    let w = b.submit_async(&job("node", json!({"output": 2}))).await;
    b.wait_terminal(w["id"].as_str().expect("id"), SOON).await;
    assert_eq!(b.get_json("/v1/stats", 200).await["total"], 2);
    // a's answer is its count of a moment ago, the same for every request meanwhile.
    for _ in 0..3 {
        assert_eq!(a.get_json("/v1/stats", 200).await, first);
    }
}

/// Time `calls` requests of `GET /v1/stats` on `app`, one after the other; answers the
/// mean per request in milliseconds and the last answer.
async fn time_stats(app: &TestApp, calls: u32) -> (f64, Value) {
    let start = Instant::now();
    let mut last = Value::Null;
    for _ in 0..calls {
        last = app.get_json("/v1/stats", 200).await;
    }
    (
        start.elapsed().as_secs_f64() * 1000.0 / f64::from(calls),
        last,
    )
}

#[tokio::test]
async fn stats_over_100000_rows_cost_one_count_per_period_on_a_cluster_node() {
    let Some(url) = shared_database("stats_100k") else {
        return;
    };
    // The first node creates the tables.
    let counting = node(&url, "counting")
        .env("VULCAN_CLUSTER__STATS_MAX_AGE_MS", "0")
        .spawn()
        .await;
    // 100,000 finished workloads of other nodes (finished now: no retention sweep).
    common::cluster::execute(
        &url,
        "INSERT INTO workloads (id, status, isolation, requested_isolation, backend,
             runtime, node_id, input_hash, cpu_limit, mem_limit, timeout_s, duration_ms,
             created_at, started_at, finished_at, input)
         SELECT gen_random_uuid()::text,
             (ARRAY['completed', 'failed', 'killed'])[1 + g % 3], 'isolate', 'isolate',
             'scripted', 'node', 'elsewhere', 'h', 1000, 256, 30, g % 5000,
             to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
             to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
             to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
             '\\x'::bytea
         FROM generate_series(1, 100000) AS g;
         ANALYZE workloads;",
    );
    let cached = node(&url, "cached")
        .env("VULCAN_CLUSTER__STATS_MAX_AGE_MS", "60000")
        .spawn()
        .await;
    let calls = 20;
    let (per_count, stats) = time_stats(&counting, calls).await;
    assert_eq!(stats["total"], 100_000, "{stats}");
    // The first request counts; those after it within the minute are answered from it.
    let (first, _) = time_stats(&cached, 1).await;
    let (per_cached, stats) = time_stats(&cached, calls).await;
    assert_eq!(stats["total"], 100_000, "{stats}");
    // Figures only (a shared machine, debug build): no assertion on them.
    println!(
        "GET /v1/stats over 100,000 rows, {calls} requests each: a count per request \
         {per_count:.1} ms/request; with stats_max_age_ms, the counting request {first:.1} ms, \
         the next ones {per_cached:.2} ms/request (ratio {:.0}x)",
        per_count / per_cached.max(0.001)
    );
}
