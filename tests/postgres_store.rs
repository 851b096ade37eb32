//! The PostgreSQL store survives its server: a restart of PostgreSQL under load (a
//! real one: `pg_ctl restart` of the test's own throw-away cluster, dropping every
//! connection) fails the submissions of that moment clearly (507/503, nothing
//! recorded), loses no accepted workload (each one ends, with its result, or failed
//! with "could not start: store error"), and the server recovers by itself.
//!
//! Its own test binary: the restart hits the whole cluster of the test process.

mod common;

use std::time::{Duration, Instant};

use common::scripted::{self, job, Options};
use serde_json::{json, Value};

const SOON: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_postgres_restart_under_load_loses_no_accepted_work_and_the_server_recovers() {
    let test = "a_postgres_restart_under_load";
    let Some(cluster) = common::store::test_pg::cluster(test) else {
        return;
    };
    let url = common::store::test_pg::fresh_database(test).expect("database");
    let (f, _) = scripted::factory(Options::default());
    let app = common::app()
        .backend(f)
        .env("VULCAN_DB_URL", &url)
        .spawn()
        .await;
    let script = job(
        "node",
        json!({"logs": ["a", "b"], "delay_ms": 20, "output": 1}),
    );

    // Submissions flow; midway the server restarts.
    let (accepted, refused) =
        common::store::submit_through_a_restart(cluster, &[&app], &script).await;

    // Writable and ready again, by itself.
    let deadline = Instant::now() + SOON;
    while app.get("/readyz").await.status().as_u16() != 200 {
        assert!(Instant::now() < deadline, "/readyz stays unready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every accepted workload ends and its outcome is recorded: it ran (its result is
    // there, even when its running write was lost and had to be made again), or its
    // start could not be recorded and it failed saying so. None stays pending or running.
    let mut failed_to_start = 0;
    for id in &accepted {
        let w = app.wait_terminal(id, SOON).await;
        match w["status"].as_str() {
            Some("completed") => {
                assert_eq!(w["output"], 1, "{w}");
                assert!(w["started_at"].is_string(), "{w}");
            }
            Some("failed") => {
                assert_eq!(w["error"], "could not start: store error", "{w}");
                failed_to_start += 1;
            }
            _ => panic!("{w}"),
        }
    }
    // The next workload runs at once.
    let w: Value = app
        .post("/v1/workloads", &script)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(w["status"], "completed", "{w}");
    println!(
        "{} accepted ({failed_to_start} failed to start), {} refused during the restart",
        accepted.len(),
        refused
    );
    app.stop().await;
}
