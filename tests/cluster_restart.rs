//! A cluster survives a restart of its PostgreSQL server: two nodes take submissions
//! while `pg_ctl restart` drops every connection; the submissions of that moment are
//! refused clearly (507/503), no accepted workload is lost or run twice, both nodes
//! recover by themselves, keep heartbeating (neither is declared lost) and run the
//! next workload at once.
//!
//! Its own test binary: the restart hits the whole PostgreSQL cluster of the test
//! process.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::cluster::{node, scripted};
use common::scripted::job;
use serde_json::{json, Value};

const SOON: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_postgres_restart_under_a_clusters_load_loses_no_work_and_both_nodes_recover() {
    let test = "a_postgres_restart_under_a_clusters_load";
    let Some(pg) = common::store::test_pg::cluster(test) else {
        return;
    };
    let url = common::store::test_pg::fresh_database(test).expect("database");
    let (fa, seen_a) = scripted(4);
    let (fb, seen_b) = scripted(4);
    let nodes = [
        node(&url, "a").backend(fa).spawn().await,
        node(&url, "b").backend(fb).spawn().await,
    ];
    let script = job("node", json!({"delay_ms": 20, "output": 1}));

    let (accepted, refused) =
        common::store::submit_through_a_restart(pg, &[&nodes[0], &nodes[1]], &script).await;
    for n in &nodes {
        let deadline = Instant::now() + SOON;
        while n.get("/readyz").await.status().as_u16() != 200 {
            assert!(Instant::now() < deadline, "/readyz stays unready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut failed_to_start = 0;
    for id in &accepted {
        let w = nodes[0].wait_terminal(id, SOON).await;
        match w["status"].as_str() {
            Some("completed") => assert_eq!(w["output"], 1, "{w}"),
            Some("failed") => {
                assert_eq!(w["error"], "could not start: store error", "{w}");
                failed_to_start += 1;
            }
            _ => panic!("{w}"),
        }
    }
    let mut runs: HashMap<String, usize> = HashMap::new();
    for seen in [&seen_a, &seen_b] {
        for (id, n) in seen.runs.lock().expect("lock").iter() {
            *runs.entry(id.to_string()).or_default() += n;
        }
    }
    assert!(
        runs.values().all(|n| *n == 1),
        "nothing ran twice: {runs:?}"
    );
    // Heartbeats resumed: both alive under their first generation.
    let list = nodes[1].get_json("/v1/nodes", 200).await;
    for n in list.as_array().expect("array") {
        assert_eq!(n["state"], "alive", "{n}");
        assert_eq!(n["generation"], 1, "{n}");
    }
    for n in &nodes {
        let w: Value = n
            .post("/v1/workloads", &script)
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(w["status"], "completed", "{w}");
    }
    println!(
        "{} accepted ({failed_to_start} failed to start), {} refused during the restart",
        accepted.len(),
        refused
    );
}
