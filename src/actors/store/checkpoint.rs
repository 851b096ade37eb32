//! SQLite write-ahead log checkpoints off the writer's path.
//!
//! By default SQLite checkpoints inside the commit that finds the log past 1,000 pages:
//! on the writer thread, which then copies the log into the database file and waits for
//! two `fsync`s (~5 ms each on the disks measured) while every write queued behind it
//! waits too. With [`StoreActor::background_checkpoints`] the writer's connection never
//! checkpoints on commit; a checkpointer thread with its own connection runs a `PASSIVE`
//! checkpoint (it waits for nobody, and nobody waits for it) every interval in which
//! something was committed.
//!
//! The bound: a checkpoint running beside a busy writer copies only the frames that
//! existed when it began, so under sustained writes the log might never be wholly
//! copied, and SQLite starts it over only once it is. So after each commit the writer
//! looks at the log file's size; past the bound it checkpoints once itself (nothing is
//! appended meanwhile, so that one completes unless a reader still needs old frames),
//! the next write starts the log over, and `journal_size_limit` truncates the file back
//! to the bound: the log's disk use stays within the bound and one transaction, as
//! SQLite's own policy keeps it near 4 MiB.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::store::queries;
use crate::store::{Database, DbConnection};

#[cfg(doc)]
use super::StoreActor;

/// What the writer and the checkpointer share.
#[derive(Debug, Default)]
pub(super) struct Checkpoints {
    /// The log's bound in bytes while a checkpointer runs; 0: none runs, SQLite
    /// checkpoints on the writer's commits as it does by default.
    wal_max_bytes: AtomicU64,
    /// Transactions the writer committed.
    commits: AtomicU64,
}

impl Checkpoints {
    /// The log's bound, if a checkpointer runs.
    pub(super) fn wal_max_bytes(&self) -> Option<u64> {
        Some(self.wal_max_bytes.load(Ordering::Relaxed)).filter(|&b| b > 0)
    }

    /// The writer committed a transaction: answers whether it must checkpoint now, the
    /// log's file `wal` being past its bound (and a checkpointer running).
    pub(super) fn committed(&self, wal: Option<&Path>) -> bool {
        self.commits.fetch_add(1, Ordering::Relaxed);
        match (self.wal_max_bytes(), wal) {
            (Some(max), Some(wal)) => std::fs::metadata(wal).is_ok_and(|m| m.len() > max),
            _ => false,
        }
    }
}

/// The write-ahead log file of `db` (SQLite's `<file>-wal`); `None` on PostgreSQL.
pub(super) fn wal_file(db: &Database) -> Option<PathBuf> {
    let Database::Sqlite(path) = db else {
        return None;
    };
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    Some(PathBuf::from(name))
}

/// Start the checkpointer of `db` (SQLite only: PostgreSQL manages its own log) every
/// `every`, bounding the log to `wal_max_bytes`. Its connection is opened here, before
/// the writer is busy (opening one runs PRAGMAs that may wait for the write lock). The
/// thread ends within `every` of the last holder of `state` (the store actor and its
/// writer) going away. Answers whether it runs; if it does not, SQLite keeps
/// checkpointing on the writer's commits.
pub(super) fn start(
    db: &Database,
    state: &Arc<Checkpoints>,
    every: Duration,
    wal_max_bytes: u64,
    metrics: Arc<Metrics>,
) -> bool {
    if !matches!(db, Database::Sqlite(_)) || every.is_zero() || wal_max_bytes == 0 {
        return false;
    }
    let conn = match db.connect() {
        Ok(c) => c,
        Err(e) => {
            log::warn!("store: no checkpointer ({e}); SQLite checkpoints on commit");
            return false;
        }
    };
    let weak = Arc::downgrade(state);
    let started = std::thread::Builder::new()
        .name("vulcan-store-checkpoint".into())
        .spawn(move || run(conn, weak, every, metrics));
    match started {
        Ok(_) => {
            // Only now: the writer stops checkpointing once a checkpointer exists.
            state.wal_max_bytes.store(wal_max_bytes, Ordering::Relaxed);
            true
        }
        Err(e) => {
            log::warn!("store: no checkpointer thread ({e}); SQLite checkpoints on commit");
            false
        }
    }
}

fn run(mut conn: DbConnection, state: Weak<Checkpoints>, every: Duration, metrics: Arc<Metrics>) {
    // Bulk copying: the writer and the submit path go first.
    crate::store::lower_this_threads_priority("checkpointer thread");
    let mut seen = 0;
    loop {
        std::thread::sleep(every);
        let Some(state) = state.upgrade() else { break };
        let commits = state.commits.load(Ordering::Relaxed);
        if commits == seen {
            continue;
        }
        seen = commits;
        match queries::wal_checkpoint(&mut conn) {
            Ok(_) => metrics
                .store_checkpoints
                .with_label_values(&["background"])
                .inc(),
            // Tried again after the next commits; the bound holds without it.
            Err(e) => log::warn!("store: background checkpoint failed: {e}"),
        }
    }
    log::debug!("store: checkpointer thread stopped");
}
