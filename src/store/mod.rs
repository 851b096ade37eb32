//! Persistence: Diesel on SQLite. The [`crate::actors::store::StoreActor`] is the only
//! writer; this module holds the connection setup, the row types and the queries it runs.
//!
//! Storage types stay here: rows and schema are private to this module, the queries
//! to the crate (the StoreActor runs them); everyone else speaks the domain types
//! re-exported below, through the StoreActor's messages.

pub(crate) mod counters;
pub(crate) mod deliveries;
mod models;
pub(crate) mod queries;
mod schema;
#[cfg(test)]
mod tests;

pub use queries::{
    BackendStats, KeyedInsert, ListQuery, PendingWork, Recovered, Stats, StatusChange, INTERRUPTED,
};

use std::path::Path;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::model::TransitionError;

/// The SQL migrations in `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Applied to every connection, writer and readers alike.
///
/// `auto_vacuum` only takes effect on a database without any table and before WAL
/// mode is set, i.e. on a new one: freed pages can then be returned to the file system
/// after retention sweeps. An existing database keeps its mode (switching needs a full
/// VACUUM); its freed pages are reused by later writes instead.
const PRAGMAS: &str = "PRAGMA busy_timeout = 5000;
PRAGMA auto_vacuum = INCREMENTAL;
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA foreign_keys = ON;";

/// A pool of read connections.
pub type ReadPool = Pool<ConnectionManager<SqliteConnection>>;

/// Errors of the persistence layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No workload with that id.
    #[error("workload not found")]
    NotFound,
    /// The state machine refused the change; nothing was written.
    #[error(transparent)]
    InvalidTransition(#[from] TransitionError),
    /// SQLite or Diesel failed.
    #[error("database error: {0}")]
    Database(diesel::result::Error),
    /// The disk holding the database is full (SQLITE_FULL): nothing of the write was
    /// kept.
    #[error("storage full")]
    Full,
    /// The database file cannot be written (SQLITE_IOERR and the like): nothing of the
    /// write was kept.
    #[error("storage failing: {0}")]
    WriteFailed(String),
    /// A connection could not be opened or taken from the pool.
    #[error("database connection error: {0}")]
    Connection(String),
    /// A stored value could not be read back (the file was edited or is corrupt).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The store is shutting down or its writer thread is gone.
    #[error("store unavailable")]
    Unavailable,
}

impl StoreError {
    /// A fault of the storage itself (full disk, I/O error): the database cannot be
    /// written until it clears, whatever is written.
    pub fn is_storage_fault(&self) -> bool {
        matches!(self, StoreError::Full | StoreError::WriteFailed(_))
    }
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        if let diesel::result::Error::DatabaseError(_, info) = &e {
            // Diesel has no kind for these; SQLite's messages for SQLITE_FULL and
            // SQLITE_IOERR are fixed text.
            let message = info.message();
            if message.contains("database or disk is full") {
                return StoreError::Full;
            }
            if message.contains("disk I/O error") {
                return StoreError::WriteFailed(message.to_string());
            }
        }
        StoreError::Database(e)
    }
}

#[derive(Debug)]
struct Pragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(PRAGMAS)
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Open the writer connection, set the PRAGMAs and run pending migrations (idempotent).
pub fn open_writer(path: &Path) -> Result<SqliteConnection, StoreError> {
    let url = path.to_string_lossy();
    let mut conn =
        SqliteConnection::establish(&url).map_err(|e| StoreError::Connection(e.to_string()))?;
    conn.batch_execute(PRAGMAS)?;
    conn.run_pending_migrations(MIGRATIONS)
        .map_err(|e| StoreError::Connection(format!("migrations failed: {e}")))?;
    Ok(conn)
}

/// Open the read pool (call after [`open_writer`] so the schema exists).
pub fn open_read_pool(path: &Path, size: u32) -> Result<ReadPool, StoreError> {
    let manager = ConnectionManager::<SqliteConnection>::new(path.to_string_lossy());
    Pool::builder()
        .max_size(size.max(1))
        .connection_timeout(Duration::from_secs(10))
        .connection_customizer(Box::new(Pragmas))
        .build(manager)
        .map_err(|e| StoreError::Connection(e.to_string()))
}
