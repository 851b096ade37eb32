//! The StoreActor: the one writer of the database.
//!
//! Writes are queued to a dedicated writer thread that owns the only write connection.
//! Everything queued while a transaction commits goes into the next transaction together;
//! one failing write does not undo its neighbours.
//! Queries use a small read pool on blocking threads. Handlers and other actors only
//! ever send messages here.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use diesel::sqlite::SqliteConnection;
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use chrono::{DateTime, Utc};

use crate::model::{IdempotencyKey, IdempotencyRecord, LogLine, Payload, Workload, WorkloadId};
use crate::store::queries::{self, KeyedInsert, ListQuery, Recovered, Stats, StatusChange};
use crate::store::{open_read_pool, open_writer, ReadPool, StoreError};

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&mut SqliteConnection) -> Reply + Send>;

/// The single database writer (and query front-end).
pub struct StoreActor {
    writer: mpsc::Sender<Job>,
    reads: ReadPool,
    /// How long `Idempotency-Key`s are kept; older ones are swept periodically.
    key_ttl: Option<Duration>,
}

/// The longest pause between two sweeps of expired `Idempotency-Key`s.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

impl StoreActor {
    /// Open the database (running migrations) and start the writer thread.
    pub fn open(
        path: &Path,
        read_pool_size: u32,
        max_batch: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let conn = open_writer(path)?;
        let reads = open_read_pool(path, read_pool_size)?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("vulcan-store-writer".into())
            .spawn(move || writer_loop(conn, rx, max_batch.max(1), metrics))
            .map_err(|e| StoreError::Connection(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            writer: tx,
            reads,
            key_ttl: None,
        })
    }

    /// Forget `Idempotency-Key`s older than `ttl`: swept at start and then at least
    /// every minute (more often for short TTLs).
    pub fn sweep_idempotency_keys(mut self, ttl: Duration) -> Self {
        self.key_ttl = Some(ttl);
        self
    }

    fn sweep(&self, ttl: Duration) {
        let before = chrono::Duration::from_std(ttl)
            .ok()
            .and_then(|ttl| Utc::now().checked_sub_signed(ttl))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        // Fire and forget: failures are logged here, the next sweep tries again.
        drop(self.write(move |c| {
            match queries::sweep_idempotency_keys(c, before) {
                Ok(0) => {}
                Ok(n) => log::debug!("store: {n} expired idempotency key(s) swept"),
                Err(e) => log::error!("store: sweeping idempotency keys failed: {e}"),
            }
            Ok(())
        }));
    }

    fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut SqliteConnection) -> Result<T, StoreError> + Send + 'static,
    ) -> oneshot::Receiver<Result<T, StoreError>> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // No savepoint per write: every write op either is a single mutating
            // statement (SQLite undoes a failed statement by itself) or opens its own
            // savepoint, so a failed write never leaves anything behind in the batch.
            let res = op(conn);
            Box::new(move |commit: Result<(), String>| {
                let _ = tx.send(commit.map_err(StoreError::Connection).and(res));
            })
        });
        // If the writer is gone the job (and its reply sender) is dropped here, so the
        // caller is answered `Unavailable` at once instead of waiting forever.
        let _ = self.writer.send(job);
        rx
    }

    fn read<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut SqliteConnection) -> Result<T, StoreError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> {
        let pool = self.reads.clone();
        async move {
            actix_web::rt::task::spawn_blocking(move || {
                let mut conn = pool
                    .get()
                    .map_err(|e| StoreError::Connection(e.to_string()))?;
                op(&mut conn)
            })
            .await
            .map_err(|_| StoreError::Unavailable)?
        }
    }
}

async fn answer<T>(rx: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    rx.await.unwrap_or(Err(StoreError::Unavailable))
}

fn writer_loop(
    mut conn: SqliteConnection,
    rx: mpsc::Receiver<Job>,
    max_batch: usize,
    metrics: Arc<Metrics>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics.store_batch_size.observe(batch.len() as f64);
        let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
        let commit = conn
            .immediate_transaction(|c| {
                for job in batch {
                    replies.push(job(c));
                }
                Ok::<_, diesel::result::Error>(())
            })
            .map_err(|e| {
                log::error!("store: batch commit failed: {e}");
                format!("commit failed: {e}")
            });
        for reply in replies {
            reply(commit.clone());
        }
    }
    log::debug!("store: writer thread stopped");
}

impl Actor for StoreActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(ttl) = self.key_ttl {
            self.sweep(ttl);
            let every = ttl.clamp(Duration::from_secs(1), MAX_SWEEP_INTERVAL);
            ctx.run_interval(every, move |act, _| act.sweep(ttl));
        }
    }
}

/// Record a newly accepted workload (status pending) with its payload, and with the
/// `Idempotency-Key` that created it when there is one.
///
/// With a key that is remembered already, nothing is written and the answer is
/// [`KeyedInsert::Existing`]: the submission is a replay.
#[derive(Message)]
#[rtype(result = "Result<KeyedInsert, StoreError>")]
pub struct InsertWorkload {
    /// The record.
    pub workload: Workload,
    /// What it runs.
    pub payload: Payload,
    /// Its input JSON bytes.
    pub input: Vec<u8>,
    /// The key to remember with it.
    pub key: Option<KeyToRemember>,
}

/// An `Idempotency-Key` recorded together with the workload it creates.
#[derive(Debug, Clone)]
pub struct KeyToRemember {
    /// The client's key.
    pub key: IdempotencyKey,
    /// What it stands for (its `workload_id` is the new workload's).
    pub record: IdempotencyRecord,
    /// Remembered keys older than this are expired and forgotten.
    pub not_before: DateTime<Utc>,
}

/// The remembered record of an `Idempotency-Key` (not older than `not_before`).
#[derive(Message)]
#[rtype(result = "Result<Option<IdempotencyRecord>, StoreError>")]
pub struct FindIdempotencyKey {
    /// The client's key.
    pub key: IdempotencyKey,
    /// Keys older than this are expired.
    pub not_before: DateTime<Utc>,
}

/// Change a workload's status. Validated by the state machine inside the transaction;
/// an invalid change writes nothing and answers `InvalidTransition`.
#[derive(Message)]
#[rtype(result = "Result<Workload, StoreError>")]
pub struct ChangeStatus {
    /// Which workload.
    pub id: WorkloadId,
    /// The change.
    pub change: StatusChange,
}

/// Persist log lines, each with its workload (fire and forget; batched with other
/// writes). Their `seq` was assigned by the log broker; a line already stored is kept.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AppendLogs(pub Vec<(WorkloadId, LogLine)>);

/// One workload.
#[derive(Message)]
#[rtype(result = "Result<Workload, StoreError>")]
pub struct GetWorkload(pub WorkloadId);

/// A page of workloads and the total.
#[derive(Message)]
#[rtype(result = "Result<(Vec<Workload>, u64), StoreError>")]
pub struct ListWorkloads(pub ListQuery);

/// One page of a workload's log lines in `seq` order, read from the read pool (never
/// through the writer): those after `after` and below `before` when set, at most
/// `limit`. Memory is bounded by the page.
#[derive(Message)]
#[rtype(result = "Result<Vec<LogLine>, StoreError>")]
pub struct GetLogs {
    /// Which workload.
    pub id: WorkloadId,
    /// Only lines with a larger seq.
    pub after: Option<i64>,
    /// Only lines with a smaller seq.
    pub before: Option<i64>,
    /// At most this many lines.
    pub limit: i64,
}

/// The payload and input of a workload, from the read pool (a recovered workload
/// reads them only when it is dispatched).
#[derive(Message)]
#[rtype(result = "Result<(Payload, Vec<u8>), StoreError>")]
pub struct GetPayload(pub WorkloadId);

/// Aggregate statistics.
#[derive(Message)]
#[rtype(result = "Result<Stats, StoreError>")]
pub struct GetStats;

/// Start-up recovery (see [`queries::recover`]).
#[derive(Message)]
#[rtype(result = "Result<Recovered, StoreError>")]
pub struct Recover;

/// Resolves once everything queued before it is committed.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Flush;

impl Handler<InsertWorkload> for StoreActor {
    type Result = ResponseFuture<Result<KeyedInsert, StoreError>>;

    fn handle(&mut self, msg: InsertWorkload, _: &mut Self::Context) -> Self::Result {
        let rx = self.write(move |c| match &msg.key {
            None => queries::insert_workload(c, &msg.workload, &msg.payload, &msg.input)
                .map(|()| KeyedInsert::Inserted),
            Some(k) => queries::insert_keyed_workload(
                c,
                &msg.workload,
                &msg.payload,
                &msg.input,
                &k.key,
                &k.record,
                k.not_before,
            ),
        });
        Box::pin(answer(rx))
    }
}

impl Handler<FindIdempotencyKey> for StoreActor {
    type Result = ResponseFuture<Result<Option<IdempotencyRecord>, StoreError>>;

    fn handle(&mut self, msg: FindIdempotencyKey, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.read(move |c| queries::find_idempotency_key(c, &msg.key, msg.not_before)))
    }
}

impl Handler<ChangeStatus> for StoreActor {
    type Result = ResponseFuture<Result<Workload, StoreError>>;

    fn handle(&mut self, msg: ChangeStatus, _: &mut Self::Context) -> Self::Result {
        let rx = self.write(move |c| queries::apply_change(c, msg.id, &msg.change));
        Box::pin(answer(rx))
    }
}

impl Handler<AppendLogs> for StoreActor {
    type Result = ();

    fn handle(&mut self, msg: AppendLogs, _: &mut Self::Context) {
        let lines = msg.0;
        // Fire and forget: nobody waits for the answer, so failures are logged here.
        drop(self.write(move |c| {
            if let Err(e) = queries::append_logs(c, &lines) {
                log::error!("store: could not persist {} log line(s): {e}", lines.len());
            }
            Ok(())
        }));
    }
}

impl Handler<GetWorkload> for StoreActor {
    type Result = ResponseFuture<Result<Workload, StoreError>>;

    fn handle(&mut self, msg: GetWorkload, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.read(move |c| queries::get_workload(c, msg.0)))
    }
}

impl Handler<ListWorkloads> for StoreActor {
    type Result = ResponseFuture<Result<(Vec<Workload>, u64), StoreError>>;

    fn handle(&mut self, msg: ListWorkloads, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.read(move |c| queries::list_workloads(c, &msg.0)))
    }
}

impl Handler<GetLogs> for StoreActor {
    type Result = ResponseFuture<Result<Vec<LogLine>, StoreError>>;

    fn handle(&mut self, msg: GetLogs, _: &mut Self::Context) -> Self::Result {
        let GetLogs {
            id,
            after,
            before,
            limit,
        } = msg;
        Box::pin(self.read(move |c| queries::log_lines(c, id, after, before, Some(limit))))
    }
}

impl Handler<GetPayload> for StoreActor {
    type Result = ResponseFuture<Result<(Payload, Vec<u8>), StoreError>>;

    fn handle(&mut self, msg: GetPayload, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.read(move |c| queries::load_payload(c, msg.0)))
    }
}

impl Handler<GetStats> for StoreActor {
    type Result = ResponseFuture<Result<Stats, StoreError>>;

    fn handle(&mut self, _: GetStats, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.read(queries::stats))
    }
}

impl Handler<Recover> for StoreActor {
    type Result = ResponseFuture<Result<Recovered, StoreError>>;

    fn handle(&mut self, _: Recover, _: &mut Self::Context) -> Self::Result {
        Box::pin(answer(self.write(queries::recover)))
    }
}

impl Handler<Flush> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, _: Flush, _: &mut Self::Context) -> Self::Result {
        Box::pin(answer(self.write(|_| Ok(()))))
    }
}
