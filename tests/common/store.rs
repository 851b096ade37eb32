//! The store the test apps boot on: a temporary SQLite file (the default), or, with
//! `VULCAN_TEST_STORE=postgres`, a fresh database of its own on a throw-away PostgreSQL
//! cluster (one per test process: `test_pg`, shared with the unit tests). Either way a
//! test names its database by the app's `db_path`, so a test that restarts an app on
//! the same `db_path` gets the same PostgreSQL database back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use vulcan::store::{Database, DbConnection};

#[path = "../../src/store/test_pg.rs"]
pub mod test_pg;

/// Which store the HTTP tests run on.
pub const STORE_VAR: &str = "VULCAN_TEST_STORE";

/// PostgreSQL databases handed out, by the `db_path` they stand for.
static DATABASES: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);

/// Whether this run is on PostgreSQL (`VULCAN_TEST_STORE=postgres`).
pub fn on_postgres() -> bool {
    match std::env::var(STORE_VAR).as_deref() {
        Ok("postgres") => true,
        Ok("" | "sqlite") | Err(_) => false,
        Ok(other) => panic!("{STORE_VAR}={other:?}: use sqlite or postgres"),
    }
}

/// The `db_url` an app on `db_path` boots with: `None` on SQLite; on PostgreSQL the
/// database created for that path (created on first use). Panics on PostgreSQL when
/// the server binaries are missing: a run that asked for PostgreSQL must not pass on
/// SQLite.
pub fn db_url(db_path: &Path) -> Option<String> {
    if !on_postgres() {
        return None;
    }
    let mut all = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
    let all = all.get_or_insert_with(HashMap::new);
    if let Some(url) = all.get(db_path) {
        return Some(url.clone());
    }
    let url = test_pg::fresh_database("the HTTP suite")
        .unwrap_or_else(|| panic!("{STORE_VAR}=postgres, but PostgreSQL is not installed"));
    all.insert(db_path.to_path_buf(), url.clone());
    Some(url)
}

/// The database of the app that runs on `db_path`.
pub fn database(db_path: &Path) -> Database {
    match db_url(db_path) {
        Some(url) => Database::Postgres(url),
        None => Database::Sqlite(db_path.to_path_buf()),
    }
}

/// A connection to the database of the app on `db_path` (which created its tables),
/// opened as the server opens its readers (PRAGMAs), patient with a writer that is
/// still closing. Not a writer: the app may be running.
pub fn connect(db_path: &Path) -> DbConnection {
    let mut conn = database(db_path).connect().expect("open db");
    if !conn.is_pg() {
        conn.batch_execute("PRAGMA busy_timeout = 10000;")
            .expect("busy timeout");
    }
    conn
}

/// Run `sql` (statements without parameters) on the database of the app on `db_path`.
pub fn execute(db_path: &Path, sql: &str) {
    connect(db_path)
        .batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Rows in `table`.
pub fn count_rows(db_path: &Path, table: &str) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {table}"))
        .get_result::<N>(&mut connect(db_path))
        .expect("count")
        .n
}

/// A BLOB literal of `bytes` in the dialect of the app's engine.
pub fn blob_literal(bytes: &[u8]) -> String {
    if on_postgres() {
        format!("'\\x{}'::bytea", hex::encode(bytes))
    } else {
        format!("X'{}'", hex::encode(bytes))
    }
}

/// For tests of what only a SQLite file has (its disk filling up, its file on disk):
/// `true` on SQLite; on PostgreSQL prints `SKIPPED: <test> …` and answers `false`.
pub fn sqlite_only(test: &str) -> bool {
    if !on_postgres() {
        return true;
    }
    println!("SKIPPED: {test}: it tests the SQLite file itself ({STORE_VAR}=postgres)");
    eprintln!("SKIPPED: {test}: it tests the SQLite file itself ({STORE_VAR}=postgres)");
    false
}

/// Submit `body` asynchronously, round-robin over `apps`, while `cluster` restarts
/// (300 ms in), until the apps accept again for 500 ms after it. Every refusal must be
/// a clear 503/507 with a JSON error; returns the ids accepted (more than five) and
/// how many were refused.
pub async fn submit_through_a_restart(
    cluster: &'static test_pg::PgCluster,
    apps: &[&super::TestApp],
    body: &serde_json::Value,
) -> (Vec<String>, usize) {
    use std::time::{Duration, Instant};
    let restart = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(300));
        cluster.restart();
    });
    let mut accepted: Vec<String> = Vec::new();
    let mut refused: Vec<(u16, serde_json::Value)> = Vec::new();
    let start = Instant::now();
    let mut restarted_at: Option<Instant> = None;
    for i in 0.. {
        let res = apps[i % apps.len()].post("/v1/workloads/async", body).await;
        let status = res.status().as_u16();
        let answer: serde_json::Value = res.json().await.expect("a JSON answer, always");
        match status {
            202 => accepted.push(answer["id"].as_str().expect("id").to_string()),
            _ => refused.push((status, answer)),
        }
        if restart.is_finished() && restarted_at.is_none() {
            restarted_at = Some(Instant::now());
        }
        // Keep going a while after the restart, until the apps accept again.
        if let Some(at) = restarted_at {
            if at.elapsed() > Duration::from_millis(500) && status == 202 {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never accepted again after the restart"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    restart.await.expect("restart");
    for (status, answer) in &refused {
        assert!(
            matches!(status, 503 | 507) && answer["error"].is_string(),
            "refused clearly: {status} {answer}"
        );
    }
    assert!(accepted.len() > 5, "{} accepted", accepted.len());
    (accepted, refused.len())
}
