//! Several nodes of one cluster (`cluster.enabled`) sharing one fresh PostgreSQL
//! database of the test process's throw-away cluster. Every node is a whole app booted
//! in-process like any test app, with its own `node_id` and its own `db_path` (unused:
//! the database is `db_url`).

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
