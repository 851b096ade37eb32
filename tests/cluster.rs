//! Several Vulcan nodes sharing one PostgreSQL database (`cluster.enabled`): a real
//! throw-away PostgreSQL cluster, nodes booted in-process, talked to over HTTP.

mod common;

use std::time::Duration;

use common::cluster::{node, shared_database};
use common::scripted::{self, job, Options};

const SOON: Duration = Duration::from_secs(60);

#[tokio::test]
async fn two_nodes_share_one_database_and_either_answers_reads_of_the_others_work() {
    let Some(url) = shared_database("two_nodes_share_one_database") else {
        return;
    };
    let a = node(&url, "a")
        .backend(scripted::factory(Options::default()).0)
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
