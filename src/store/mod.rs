//! Persistence: Diesel on SQLite (the embedded default) or PostgreSQL (`db_url`). The
//! [`crate::actors::store::StoreActor`] is the only writer; this module holds the
//! connection setup, the row types and the queries it runs.
//!
//! One schema and one set of queries serve both engines through a Diesel
//! `MultiConnection` ([`DbConnection`]); the few statements the engines spell
//! differently branch on the variant in one place each (see docs/architecture.md for
//! why this and not a store trait with two implementations, and the answer per
//! SQLite-only feature).
//!
//! Storage types stay here: rows and schema are private to this module, the queries
//! to the crate (the StoreActor runs them); everyone else speaks the domain types
//! re-exported below, through the StoreActor's messages.

/// Run `$body` on the inner connection of either engine, bound to `$c`: for the few
/// statements Diesel's `MultiConnection` cannot build generically (`RETURNING` a
/// selection, `ON CONFLICT`). The body is written once and type-checked per engine.
macro_rules! per_engine {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::store::DbConnection::Sqlite($c) => $body,
            $crate::store::DbConnection::Pg($c) => $body,
        }
    };
}

pub(crate) mod counters;
pub(crate) mod deliveries;
mod log_reads;
mod models;
pub(crate) mod nodes;
pub mod notify;
mod prepared;
pub(crate) mod queries;
mod schema;
#[cfg(test)]
pub(crate) mod test_pg;
#[cfg(test)]
mod tests;

pub use log_reads::LogReads;
pub use nodes::{Fence, Reaped, NODE_LOST};
pub use notify::{Listener, Notice, Subscription};
pub use queries::{
    BackendStats, KeyedInsert, ListQuery, PendingWork, Recovered, Stats, StatusChange, INTERRUPTED,
};

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::r2d2::{ManageConnection, Pool, R2D2Connection};
use diesel::result::DatabaseErrorKind;
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::model::TransitionError;

/// The SQLite migrations in `migrations/sqlite/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// The PostgreSQL migrations in `migrations/postgres/`: one twin per SQLite migration,
/// with the same directory name (a test holds the two trees to that), so both engines
/// end with the same schema.
pub const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// A connection to either engine. Queries written once with Diesel's DSL run on both;
/// code that must differ matches on the variant.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    /// The embedded default.
    Sqlite(SqliteConnection),
    /// The shared store (`db_url = "postgres://…"`).
    Pg(PgConnection),
}

impl DbConnection {
    /// Whether this is a PostgreSQL connection.
    pub fn is_pg(&self) -> bool {
        matches!(self, DbConnection::Pg(_))
    }
}

/// Where the database lives. Chosen once from the configuration; every connection of
/// the process (writer and readers) opens the same one.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file, created if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL server, by libpq connection URL, owned by this server (its writer
    /// holds [`WRITER_LOCK`]). The database must exist; its tables are created by the
    /// migrations.
    Postgres(String),
    /// A PostgreSQL server shared by the nodes of a cluster (`cluster.enabled`): no
    /// writer lock; each node recovers only the workloads recorded with its `node_id`.
    SharedPostgres(String),
}

impl Database {
    /// `db_url` when set (it must be a `postgres://` or `postgresql://` URL; shared with
    /// other nodes when `cluster` is on), the SQLite file `db_path` otherwise. A cluster
    /// needs `db_url`.
    pub fn from_config(
        db_path: &std::path::Path,
        db_url: &str,
        cluster: bool,
    ) -> Result<Self, StoreError> {
        if db_url.is_empty() {
            if cluster {
                return Err(StoreError::Connection(
                    "cluster.enabled needs db_url: the nodes of a cluster share one PostgreSQL \
                     database"
                        .into(),
                ));
            }
            return Ok(Database::Sqlite(db_path.to_path_buf()));
        }
        if db_url.starts_with("postgres://") || db_url.starts_with("postgresql://") {
            let url = db_url.to_string();
            return Ok(if cluster {
                Database::SharedPostgres(url)
            } else {
                Database::Postgres(url)
            });
        }
        Err(StoreError::Connection(
            "db_url must start with postgres:// or postgresql:// (leave it empty for SQLite at db_path)"
                .into(),
        ))
    }

    /// The PostgreSQL URL, owned or shared; `None` for SQLite.
    pub fn postgres_url(&self) -> Option<&str> {
        match self {
            Database::Sqlite(_) => None,
            Database::Postgres(url) | Database::SharedPostgres(url) => Some(url),
        }
    }

    /// Shared with other nodes: recovery and dispatch must only take this node's work.
    pub fn is_shared(&self) -> bool {
        matches!(self, Database::SharedPostgres(_))
    }

    /// Open one connection, set up as every connection of the store is (SQLite: the
    /// PRAGMAs). Never falls back from one engine to the other.
    pub fn connect(&self) -> Result<DbConnection, StoreError> {
        match self {
            Database::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(&path.to_string_lossy())
                    .map_err(|e| StoreError::Connection(e.to_string()))?;
                conn.batch_execute(PRAGMAS)?;
                Ok(DbConnection::Sqlite(conn))
            }
            Database::Postgres(url) | Database::SharedPostgres(url) => PgConnection::establish(url)
                .map(DbConnection::Pg)
                // libpq's messages name host and port, never the password.
                .map_err(|e| StoreError::Connection(e.to_string())),
        }
    }
}

/// Never shows a password of a PostgreSQL URL (it ends up in logs).
impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            Database::Postgres(u) | Database::SharedPostgres(u) => match url::Url::parse(u) {
                Ok(mut url) => {
                    if url.password().is_some() {
                        let _ = url.set_password(Some("***"));
                    }
                    write!(f, "{url}")
                }
                Err(_) => f.write_str("postgres://(unparsable url)"),
            },
        }
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The nice value of the store's background threads, log reads and write-ahead log
/// checkpoints (0 is the default of every other thread; 19 the lowest priority). At 10
/// a busy background thread gets about a tenth of the CPU share of a thread at 0 when
/// both want it, and all of it when the CPU is free: the submit path goes first.
pub const BACKGROUND_NICE: i32 = 10;

/// Lower the calling thread's CPU priority to [`BACKGROUND_NICE`] (`what` names it in
/// the warning if the kernel refuses).
pub(crate) fn lower_this_threads_priority(what: &str) {
    let me = Some(rustix::thread::gettid());
    if let Err(e) = rustix::process::setpriority_process(me, BACKGROUND_NICE) {
        log::warn!("{what}: cannot lower its priority: {e}");
    }
}

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
pub type ReadPool = Pool<Manager>;

/// Errors of the persistence layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No workload with that id.
    #[error("workload not found")]
    NotFound,
    /// The state machine refused the change; nothing was written.
    #[error(transparent)]
    InvalidTransition(#[from] TransitionError),
    /// The database or Diesel failed.
    #[error("database error: {0}")]
    Database(diesel::result::Error),
    /// The disk holding the database is full (SQLITE_FULL): nothing of the write was
    /// kept.
    #[error("storage full")]
    Full,
    /// The database cannot be written (SQLITE_IOERR and the like; on PostgreSQL, the
    /// connection to the server is lost): nothing of the write was kept.
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
    /// A cluster node's write refused by its fence: a survivor declared the node lost
    /// (or the work was claimed by another node) and decided about the workload; the
    /// node must not overwrite that.
    #[error(
        "the write was refused: the workload is held by another node, or this node was \
         declared lost (fenced)"
    )]
    Fenced,
    /// A cluster node could not register: a live node already has its `node_id`.
    #[error("{0}")]
    NodeLive(String),
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
        // A connection whose transaction could not be rolled back (the server went away
        // in the middle of it) cannot be used again: a fault of the storage, so the
        // writer reopens its connection.
        if matches!(e, diesel::result::Error::BrokenTransactionManager) {
            return StoreError::WriteFailed("connection lost mid-transaction".into());
        }
        if let diesel::result::Error::DatabaseError(kind, info) = &e {
            // Diesel has no kind for these; SQLite's messages for SQLITE_FULL and
            // SQLITE_IOERR are fixed text, as is the OS's ENOSPC text PostgreSQL passes on.
            let message = info.message();
            if message.contains("database or disk is full")
                || message.contains("No space left on device")
            {
                return StoreError::Full;
            }
            if message.contains("disk I/O error") {
                return StoreError::WriteFailed(message.to_string());
            }
            // A PostgreSQL server that went away (restart, network): the writer reopens
            // its connection and probes until writes succeed again.
            if matches!(
                kind,
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand
            ) {
                return StoreError::WriteFailed(format!("connection lost: {message}"));
            }
        }
        StoreError::Database(e)
    }
}

/// Opens the read pool's connections ([`Database::connect`]: never another engine than
/// the one configured, unlike Diesel's generic manager for a `MultiConnection`, which
/// tries each engine in turn).
#[derive(Debug)]
pub struct Manager(Database);

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<DbConnection, Self::Error> {
        self.0.connect().map_err(|e| {
            diesel::r2d2::Error::ConnectionError(diesel::ConnectionError::BadConnection(
                e.to_string(),
            ))
        })
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), Self::Error> {
        conn.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        std::thread::panicking() || conn.is_broken()
    }
}

/// Open the writer connection and run pending migrations (idempotent).
///
/// On an owned PostgreSQL database ([`Database::Postgres`]) the writer also holds
/// [`WRITER_LOCK`] for as long as its connection lives: one Vulcan server per database
/// unless the nodes say they share it ([`Database::SharedPostgres`]), since each would
/// re-admit and run the same pending work. A second server waits [`WRITER_LOCK_WAIT`]
/// for it (a restarting server's old connection may still be closing), then fails.
pub fn open_writer(db: &Database) -> Result<DbConnection, StoreError> {
    let mut conn = db.connect()?;
    let ran = match &mut conn {
        DbConnection::Sqlite(c) => c.run_pending_migrations(MIGRATIONS).map(drop),
        DbConnection::Pg(c) => c.run_pending_migrations(PG_MIGRATIONS).map(drop),
    };
    ran.map_err(|e| StoreError::Connection(format!("migrations failed: {e}")))?;
    if let (DbConnection::Pg(c), Database::Postgres(_)) = (&mut conn, db) {
        take_writer_lock(c)?;
    }
    Ok(conn)
}

/// The session advisory lock the writer of a PostgreSQL database holds ("vulcan" in
/// ASCII).
pub const WRITER_LOCK: i64 = 0x76_75_6c_63_61_6e;

/// How long a writer waits for [`WRITER_LOCK`] before it gives up.
pub const WRITER_LOCK_WAIT: Duration = Duration::from_secs(10);

fn take_writer_lock(conn: &mut PgConnection) -> Result<(), StoreError> {
    use diesel::RunQueryDsl;
    conn.batch_execute(&format!(
        "SET lock_timeout = {}",
        WRITER_LOCK_WAIT.as_millis()
    ))?;
    let taken = diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<diesel::sql_types::BigInt, _>(WRITER_LOCK)
        .execute(conn);
    conn.batch_execute("SET lock_timeout = 0")?;
    taken.map(drop).map_err(|e| {
        StoreError::Connection(format!(
            "another Vulcan server writes to this database (several servers on one \
             database are not supported yet): {e}"
        ))
    })
}

/// Open the read pool (call after [`open_writer`] so the schema exists).
pub fn open_read_pool(db: &Database, size: u32) -> Result<ReadPool, StoreError> {
    Pool::builder()
        .max_size(size.max(1))
        .connection_timeout(Duration::from_secs(10))
        .build(Manager(db.clone()))
        .map_err(|e| StoreError::Connection(e.to_string()))
}

/// Run `f` as the writer's batch transaction: `BEGIN IMMEDIATE` on SQLite (the write
/// lock is taken up front, so a batch never fails half-way on a lock upgrade), a plain
/// `BEGIN` on PostgreSQL (row locks are taken as statements run).
pub fn write_transaction<T>(
    conn: &mut DbConnection,
    f: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    match conn {
        DbConnection::Sqlite(c) => {
            AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")?
        }
        DbConnection::Pg(_) => DbConnection::begin_transaction(conn)?,
    }
    match f(conn) {
        Ok(value) => {
            DbConnection::commit_transaction(conn)?;
            Ok(value)
        }
        Err(e) => {
            DbConnection::rollback_transaction(conn)?;
            Err(e)
        }
    }
}

/// Run one write of a batch so that its failure leaves nothing behind and does not
/// undo its neighbours. SQLite undoes a failed statement by itself, and every write
/// either is one statement or opens its own savepoint: nothing to add. On PostgreSQL a
/// failed statement aborts the whole transaction, so each write gets a savepoint.
pub fn isolated<T>(
    conn: &mut DbConnection,
    op: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    if conn.is_pg() {
        conn.transaction(op)
    } else {
        op(conn)
    }
}
