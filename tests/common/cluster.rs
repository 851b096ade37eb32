//! Several nodes of one cluster (`cluster.enabled`) sharing one fresh PostgreSQL
//! database of the test process's throw-away cluster. Every node is a whole app booted
//! in-process like any test app, with its own `node_id` and its own `db_path` (unused:
//! the database is `db_url`).

use std::sync::Arc;

use super::scripted::{self, Observed, Options};
use super::{app, TestAppBuilder};

/// A fresh database for the nodes of one test, or `None` after printing `SKIPPED:`
/// when PostgreSQL is not installed.
pub fn shared_database(test: &str) -> Option<String> {
    super::store::test_pg::fresh_database(test)
}

/// A node named `node_id` of the cluster on `db_url` (add backends, then `spawn`).
pub fn node(db_url: &str, node_id: &str) -> TestAppBuilder {
    app()
        .env("VULCAN_DB_URL", db_url)
        .env("VULCAN_CLUSTER__ENABLED", "true")
        .env("VULCAN_NODE_ID", node_id)
}

/// A node that notices a silent peer fast: heartbeats every 200 ms, a node silent for
/// 2 s is lost.
pub fn quick_node(db_url: &str, node_id: &str) -> TestAppBuilder {
    node(db_url, node_id)
        .env("VULCAN_CLUSTER__HEARTBEAT_MS", "200")
        .env("VULCAN_CLUSTER__NODE_TIMEOUT_S", "2")
}

/// A scripted backend named `scripted` with `slots` slots, and what it observed: every
/// node of a test registers one, so any node can run any submission.
pub fn scripted(slots: usize) -> (vulcan::backends::BackendFactory, Arc<Observed>) {
    scripted::factory(Options {
        max_concurrency: slots,
        ..Options::default()
    })
}

/// Run `sql` on the cluster's database, as another party would (an operator, or a
/// survivor's decision made while this node was cut off).
pub fn execute(db_url: &str, sql: &str) {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let mut conn = diesel::PgConnection::establish(db_url).expect("connect");
    conn.batch_execute(sql).expect("sql");
}

/// Run `sql` (one row, one BIGINT column `n`) on the database at `db_url`.
fn count(db_url: &str, sql: &str) -> i64 {
    use diesel::{Connection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = diesel::PgConnection::establish(db_url).expect("connect to the test database");
    diesel::sql_query(sql)
        .get_result::<N>(&mut conn)
        .expect("query")
        .n
}

/// How many nodes' LISTEN connections are open on the database at `db_url`.
pub fn listen_connections(db_url: &str) -> i64 {
    count(
        db_url,
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE application_name = 'vulcan-listen' AND datname = current_database()",
    )
}

/// Terminate every node's LISTEN connection on the database at `db_url` (as a network
/// cut or a database restart would); answers how many were terminated.
pub fn terminate_listen_connections(db_url: &str) -> i64 {
    count(
        db_url,
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
         WHERE application_name = 'vulcan-listen' AND datname = current_database()",
    )
}

/// Whether somebody asked to kill workload `id` (its `kill_requested_at` is set).
pub fn kill_requested(db_url: &str, id: &str) -> bool {
    count(
        db_url,
        &format!(
            "SELECT count(*) AS n FROM workloads \
             WHERE id = '{id}' AND kill_requested_at IS NOT NULL"
        ),
    ) > 0
}

/// `builder` with completion webhooks on for a receiver on the loopback
/// (`common::receiver`): every node of a test that submits or delivers needs it.
pub fn loopback_webhooks(builder: TestAppBuilder) -> TestAppBuilder {
    builder
        .env("VULCAN_WEBHOOKS__ALLOWED_HOSTS", "127.0.0.1")
        .env("VULCAN_WEBHOOKS__PRIVATE_HOSTS", "127.0.0.1")
        .env("VULCAN_WEBHOOKS__ALLOW_HTTP", "true")
        .env("VULCAN_WEBHOOKS__SECRET", "whsec_cluster_test")
        .env("VULCAN_WEBHOOKS__RETRY_BASE_MS", "100")
}
