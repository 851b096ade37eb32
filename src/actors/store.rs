//! The StoreActor: the one writer of the database.
//!
//! Writes are queued to a dedicated writer thread that owns the only write connection.
//! Everything queued while a transaction commits goes into the next transaction together;
//! one failing write does not undo its neighbours, except a fault of the storage itself
//! (full disk, I/O error): then the whole batch is rolled back and every write of it is
//! answered with that fault (nothing half-written, nothing committed twice), the writer
//! reopens its connection, and [`StoreHealth`] says the store cannot write until a probe
//! write succeeds again (tried every [`PROBE_EVERY`]). Log lines lost meanwhile are
//! counted and, once writes resume, replaced by one marker line per workload.
//! Queries use a small read pool on blocking threads. Handlers and other actors only
//! ever send messages here.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::actors::webhooks::DeliveriesEnqueued;
use crate::actors::Restarts;
use crate::metrics::Metrics;
use chrono::{DateTime, Utc};

use crate::model::{
    Deliveries, IdempotencyKey, IdempotencyRecord, LogLine, Payload, Status, Workload, WorkloadId,
};
use crate::store::counters::{Delta, StatsCounters, Tally};
use crate::store::deliveries::{self, AttemptRecord, DeliveryQueue};
use crate::store::queries::{
    self, KeyedInsert, ListQuery, Recovered, Stats, StatusChange, SweepBatch, Swept,
};
use crate::store::{
    isolated, notify, open_read_pool, open_writer, write_transaction, Database, DbConnection,
    Fence, LogReads, ReadPool, StoreError,
};

/// How a batch ended, as each of its writes is told (cloneable, unlike `StoreError`).
#[derive(Debug, Clone)]
enum BatchFault {
    Full,
    WriteFailed(String),
    Other(String),
}

impl BatchFault {
    fn of(e: &StoreError) -> Self {
        match e {
            StoreError::Full => BatchFault::Full,
            StoreError::WriteFailed(m) => BatchFault::WriteFailed(m.clone()),
            other => BatchFault::Other(other.to_string()),
        }
    }

    fn into_error(self) -> StoreError {
        match self {
            BatchFault::Full => StoreError::Full,
            BatchFault::WriteFailed(m) => StoreError::WriteFailed(m),
            BatchFault::Other(m) => StoreError::Connection(format!("commit failed: {m}")),
        }
    }
}

type Reply = Box<dyn FnOnce(Result<(), BatchFault>) + Send>;

/// What the writer thread is sent.
enum ToWriter {
    /// A write, batched with its neighbours.
    Job(Job),
    /// A status change: batched like a job, and folded into one statement with the
    /// same workload's next change when a running change and a terminal one meet in
    /// one batch (see [`plan`]).
    Change(ChangeReq),
    /// Drop the connection and open a fresh one (an operator's restart), then answer.
    Restart(String, oneshot::Sender<()>),
}

/// A status change waiting in the writer's queue.
struct ChangeReq {
    id: WorkloadId,
    change: StatusChange,
    /// A cluster node's fence (see [`crate::store::Fence`]); `None` on a single node.
    fence: Option<Fence>,
    tx: oneshot::Sender<Result<Workload, StoreError>>,
    /// The database is shared: a terminal record is announced ([`notify::TERMINAL`])
    /// in the transaction that commits it.
    notify: bool,
}

/// Announce `w` to the other nodes when it is terminal (inside the committing
/// transaction: delivered only on commit).
fn notify_terminal(c: &mut DbConnection, w: &Workload) -> Result<(), StoreError> {
    if w.status.is_terminal() {
        notify::notify(c, notify::TERMINAL, &[w.id.to_string()])?;
    }
    Ok(())
}

/// What a write did when it ran: its reply (told the batch's outcome), the storage
/// fault it hit (the batch is then rolled back), and how it moves the statistics once
/// committed.
type Ran = (Reply, Option<BatchFault>, Vec<Delta>);

/// A queued write: run on the connection (`Some`), or skipped (`None`) because its
/// batch failed before its turn.
type Job = Box<dyn FnOnce(Option<&mut DbConnection>) -> Ran + Send>;

/// How a committed status change moves the statistics: out of the status it left,
/// into the one it reached.
fn change_deltas(w: &Workload) -> Vec<Delta> {
    let now = Tally::of(w);
    vec![
        Delta::Remove(now.before_change(queries::moved_from(w))),
        Delta::Add(now),
    ]
}

/// Turn a closure over the connection into a job answering `tx`; `deltas` tells how a
/// successful result moves the statistics.
fn job_of<T: Send + 'static>(
    op: impl FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    deltas: impl FnOnce(&T) -> Vec<Delta> + Send + 'static,
    tx: oneshot::Sender<Result<T, StoreError>>,
) -> Job {
    Box::new(move |conn| {
        // A failed write never leaves anything behind in the batch (see
        // `isolated`). A storage fault rolls back the whole batch instead (see the
        // module docs).
        let res = match conn {
            Some(c) => isolated(c, op),
            None => Err(StoreError::Unavailable),
        };
        let fault = match &res {
            Err(e) if e.is_storage_fault() => Some(BatchFault::of(e)),
            _ => None,
        };
        let moved = res.as_ref().map(deltas).unwrap_or_default();
        let reply: Reply = Box::new(move |commit: Result<(), BatchFault>| {
            let _ = tx.send(commit.map_err(BatchFault::into_error).and(res));
        });
        (reply, fault, moved)
    })
}

/// The job of one status change.
fn change_job(req: ChangeReq) -> Job {
    let ChangeReq {
        id,
        change,
        fence,
        tx,
        notify,
    } = req;
    job_of(
        move |c| {
            let w = queries::apply_fenced_change(c, id, &change, fence.as_ref())?;
            if notify {
                notify_terminal(c, &w)?;
            }
            Ok(w)
        },
        change_deltas,
        tx,
    )
}

/// The job of a running change and the terminal change that followed it in the same
/// batch: one statement when the state machine allows both in turn (the running reply
/// gets the row as the running change alone would have left it), otherwise the two
/// changes one after the other, each answered as if alone.
fn merged_job(running: ChangeReq, end: ChangeReq, coalesced: prometheus::IntCounter) -> Job {
    Box::new(move |conn| {
        let res = match conn {
            None => Ok((Err(StoreError::Unavailable), Err(StoreError::Unavailable))),
            Some(c) => {
                let merged = if end.notify {
                    // In one savepoint, so a failed notify leaves nothing behind.
                    isolated(c, |c| {
                        let done =
                            queries::apply_start_and_end(c, end.id, &running.change, &end.change)?;
                        if let Some(w) = &done {
                            notify_terminal(c, w)?;
                        }
                        Ok(done)
                    })
                } else {
                    queries::apply_start_and_end(c, end.id, &running.change, &end.change)
                };
                match merged {
                    Ok(Some(done)) => {
                        coalesced.inc();
                        let mut started = done.clone();
                        started.status = Status::Running;
                        started.finished_at = None;
                        started.output = None;
                        started.exit_code = None;
                        started.error = None;
                        started.duration_ms = None;
                        Ok((Ok(started), Ok(done)))
                    }
                    Ok(None) => {
                        let first = queries::apply_change(c, running.id, &running.change);
                        match &first {
                            Err(e) if e.is_storage_fault() => Err(BatchFault::of(e)),
                            _ => {
                                let second = if end.notify {
                                    isolated(c, |c| {
                                        let w = queries::apply_change(c, end.id, &end.change)?;
                                        notify_terminal(c, &w)?;
                                        Ok(w)
                                    })
                                } else {
                                    queries::apply_change(c, end.id, &end.change)
                                };
                                Ok((first, second))
                            }
                        }
                    }
                    Err(e) => Err(BatchFault::of(&e)),
                }
            }
        };
        let (first, second, fault) = match res {
            Ok((first, second)) => {
                let fault = match &second {
                    Err(e) if e.is_storage_fault() => Some(BatchFault::of(e)),
                    _ => None,
                };
                (first, second, fault)
            }
            Err(fault) => (
                Err(fault.clone().into_error()),
                Err(fault.clone().into_error()),
                Some(fault),
            ),
        };
        // Net move: out of the status before the running change, into the last one.
        let mut moved = first.as_ref().map(change_deltas).unwrap_or_default();
        if let Ok(w) = &second {
            moved.extend(change_deltas(w));
        }
        let (tx_run, tx_end) = (running.tx, end.tx);
        let reply: Reply = Box::new(move |commit: Result<(), BatchFault>| {
            let _ = tx_run.send(commit.clone().map_err(BatchFault::into_error).and(first));
            let _ = tx_end.send(commit.map_err(BatchFault::into_error).and(second));
        });
        (reply, fault, moved)
    })
}

/// One queued item of a batch, before [`plan`] turns the batch into jobs.
enum Item {
    Job(Job),
    Change(ChangeReq),
}

/// The jobs of a batch, in order, with each running change that is followed in the
/// batch by a terminal change of the same workload folded into that terminal change's
/// place (nothing in between reads or writes that workload's status).
fn plan(items: Vec<Item>, coalesced: &prometheus::IntCounter) -> Vec<Job> {
    let mut open: HashMap<WorkloadId, usize> = HashMap::new();
    // terminal change's index -> index of the running change it absorbs
    let mut absorbs: HashMap<usize, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Item::Change(c) = item {
            // A fenced change is guarded one by one (the merged statement has no fence).
            if c.fence.is_some() {
                continue;
            }
            if c.change.to == Status::Running {
                open.insert(c.id, i);
            } else if let Some(r) = open.remove(&c.id) {
                if c.change.to.is_terminal() {
                    absorbs.insert(i, r);
                }
            }
        }
    }
    let absorbed: std::collections::HashSet<usize> = absorbs.values().copied().collect();
    let mut slots: Vec<Option<Item>> = items.into_iter().map(Some).collect();
    let mut jobs = Vec::with_capacity(slots.len());
    for i in 0..slots.len() {
        if absorbed.contains(&i) {
            continue;
        }
        let Some(item) = slots[i].take() else {
            continue;
        };
        let job = match item {
            Item::Job(job) => job,
            Item::Change(end) => match absorbs.get(&i).and_then(|r| slots[*r].take()) {
                Some(Item::Change(running)) => merged_job(running, end, coalesced.clone()),
                _ => change_job(end),
            },
        };
        jobs.push(job);
    }
    jobs
}

/// Whether the store can write, shared with `/readyz`.
#[derive(Debug, Default)]
pub struct StoreHealth {
    /// Set by a storage fault, cleared by a successful probe write.
    fault: Mutex<Option<String>>,
    unwritable: AtomicBool,
    /// The writer's restarts (after a panic, or on request).
    restarts: Arc<Restarts>,
}

impl StoreHealth {
    /// The writer's restarts and last failure.
    pub fn restarts(&self) -> Arc<Restarts> {
        self.restarts.clone()
    }

    /// False while the last write hit a storage fault and no probe has succeeded since.
    pub fn writable(&self) -> bool {
        !self.unwritable.load(Ordering::SeqCst)
    }

    /// The fault that made the store unwritable, while it is.
    pub fn fault(&self) -> Option<String> {
        self.fault.lock().ok().and_then(|f| f.clone())
    }

    fn set_fault(&self, why: String) {
        if let Ok(mut f) = self.fault.lock() {
            *f = Some(why);
        }
        self.unwritable.store(true, Ordering::SeqCst);
    }

    fn clear(&self) {
        if let Ok(mut f) = self.fault.lock() {
            *f = None;
        }
        self.unwritable.store(false, Ordering::SeqCst);
    }
}

/// Log lines of one workload that could not be stored.
#[derive(Debug, Clone, Copy)]
struct Lost {
    /// The seq of the first of them: the marker takes its place.
    first_seq: u64,
    count: u64,
}

/// The single database writer (and query front-end).
pub struct StoreActor {
    /// The writer's group-commit wait, µs (see [`StoreActor::group_commit`]).
    group_wait_us: Arc<AtomicU64>,
    writer: mpsc::Sender<ToWriter>,
    reads: ReadPool,
    /// How long `Idempotency-Key`s are kept; older ones are swept periodically.
    key_ttl: Option<Duration>,
    health: Arc<StoreHealth>,
    /// Log lines lost to storage faults, per workload, until their markers are written.
    lost: Arc<Mutex<HashMap<WorkloadId, Lost>>>,
    /// A probe write is on its way.
    probing: bool,
    metrics: Arc<Metrics>,
    /// Finished work older than this is deleted, every `.1`.
    retention: Option<(Duration, Duration)>,
    /// A retention sweep is under way (its steps follow one another).
    sweeping: bool,
    /// Told after a committed terminal status enqueued a webhook delivery.
    deliveries: Option<Recipient<DeliveriesEnqueued>>,
    /// Where log pages are read ([`StoreActor::log_reads`]); without one (an actor
    /// built for a unit test) on the general read pool.
    log_reads: Option<LogReads>,
    /// `GET /v1/stats`, moved by the writer as writes commit (a single node's only).
    counters: Arc<Mutex<StatsCounters>>,
    /// On a cluster node ([`StoreActor::cluster_node`]): whose status writes these are,
    /// with the generation the node registered with (0 until it has).
    fence: Option<Arc<Mutex<Fence>>>,
    /// The database is shared with other nodes: log appends, terminal records and kill
    /// requests are announced with NOTIFY (see [`crate::store::notify`]). Never on
    /// a database of one node.
    notify: bool,
    /// On a cluster node: `GET /v1/stats` counted from the shared table, shared by the
    /// requests of a short period ([`cluster::StatsCache`]).
    stats_cache: Option<cluster::StatsCache>,
    /// Shared with the writer and, once started, the checkpointer thread.
    checkpoints: Arc<checkpoint::Checkpoints>,
}

mod checkpoint;
mod cluster;
pub use cluster::{
    ClaimWork, Heartbeat, LeaveCluster, ListNodes, ReapLostNodes, RegisterNode, RequeueOrphans,
    StillUnclaimed,
};

/// How often a store that cannot write tries a probe write.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Most free pages returned to the file system after one retention step.
const VACUUM_PAGES: u32 = 4096;

/// The longest pause between two sweeps of expired `Idempotency-Key`s.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

impl StoreActor {
    /// Open the database (running migrations) and start the writer thread.
    pub fn open(
        db: &Database,
        read_pool_size: u32,
        max_batch: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let mut conn = open_writer(db)?;
        let reads = open_read_pool(db, read_pool_size)?;
        let counters = Arc::new(Mutex::new(StatsCounters::seeded(queries::stat_groups(
            &mut conn,
        )?)));
        let (tx, rx) = mpsc::channel::<ToWriter>();
        let health = Arc::new(StoreHealth::default());
        let group_wait_us = Arc::new(AtomicU64::new(0));
        let checkpoints = Arc::new(checkpoint::Checkpoints::default());
        let writer = Writer {
            wal_file: checkpoint::wal_file(db),
            checkpoints: checkpoints.clone(),
            checkpoints_elsewhere: Cell::new(false),
            db: db.clone(),
            max_batch: max_batch.max(1),
            group_wait_us: group_wait_us.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            restarts: health.restarts.clone(),
            counters: counters.clone(),
        };
        std::thread::Builder::new()
            .name("vulcan-store-writer".into())
            .spawn(move || writer.run(conn, rx))
            .map_err(|e| StoreError::Connection(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            writer: tx,
            group_wait_us,
            reads,
            key_ttl: None,
            health,
            lost: Arc::default(),
            probing: false,
            metrics,
            retention: None,
            sweeping: false,
            deliveries: None,
            log_reads: None,
            counters,
            fence: None,
            notify: db.is_shared(),
            stats_cache: None,
            checkpoints,
        })
    }

    /// SQLite: checkpoint the write-ahead log on a thread of its own every `every` in
    /// which something was committed, instead of inside the writer's commits, keeping the
    /// log near `wal_max_bytes` (see [`checkpoint`]). `db` is the database this store
    /// opened. Without it, or on PostgreSQL, or if the thread cannot start, SQLite
    /// checkpoints on the writer's commits (its default).
    pub fn background_checkpoints(
        self,
        db: &Database,
        every: Duration,
        wal_max_bytes: u64,
    ) -> Self {
        checkpoint::start(
            db,
            &self.checkpoints,
            every,
            wal_max_bytes,
            self.metrics.clone(),
        );
        self
    }

    /// Group commit: a batch that found more than one write queued waits up to `wait`
    /// for further writes before it commits, so a loaded writer pays `BEGIN`/`COMMIT`
    /// and the WAL frames of the pages it touches once for more writes. A lone write
    /// (an idle server, one sync client) never waits. Zero turns it off.
    pub fn group_commit(self, wait: Duration) -> Self {
        let us = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        self.group_wait_us.store(us, Ordering::Relaxed);
        self
    }

    /// This store serves node `node_id` of a cluster: its status writes are fenced by
    /// the generation [`cluster::RegisterNode`] answers, and the statistics are read
    /// from the shared table (the counters only see this node's writes), one count
    /// answering every request within `stats_max_age` of it.
    pub fn cluster_node(mut self, node_id: String, stats_max_age: Duration) -> Self {
        self.fence = Some(Arc::new(Mutex::new(Fence {
            node_id,
            generation: 0,
        })));
        self.stats_cache = Some(cluster::StatsCache::new(stats_max_age));
        self
    }

    /// The current fence, on a cluster node.
    fn fence(&self) -> Option<Fence> {
        self.fence
            .as_ref()
            .map(|f| f.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Read log pages ([`GetLogs`]) on `pool`'s threads, apart from every other read.
    pub fn log_reads(mut self, pool: LogReads) -> Self {
        self.log_reads = Some(pool);
        self
    }

    /// Delete finished work whose `finished_at` is older than `max_age`: swept at start
    /// and then every `every`, in small steps (see [`queries::sweep_step`]), each its
    /// own write so other writes are never held long.
    pub fn retention(mut self, max_age: Duration, every: Duration) -> Self {
        self.retention = Some((max_age, every.max(Duration::from_secs(1))));
        self
    }

    fn sweep_retention(&mut self, ctx: &mut Context<Self>) {
        let Some((max_age, _)) = self.retention else {
            return;
        };
        if self.sweeping {
            return;
        }
        self.sweeping = true;
        let before = chrono::Duration::from_std(max_age)
            .ok()
            .and_then(|age| Utc::now().checked_sub_signed(age))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        self.sweep_step(before, Swept::default(), ctx);
    }

    fn sweep_step(&mut self, before: DateTime<Utc>, total: Swept, ctx: &mut Context<Self>) {
        let rx = self.write_counted(
            move |c| {
                let swept = queries::sweep_step(c, before, SweepBatch::STORE)?;
                if swept.workloads + swept.log_lines > 0 {
                    queries::incremental_vacuum(c, VACUUM_PAGES)?;
                }
                Ok(swept)
            },
            |s: &Swept| s.deleted.iter().cloned().map(Delta::Remove).collect(),
        );
        async move { answer(rx).await }
            .into_actor(self)
            .map(move |res, act, ctx| match res {
                Ok(s) => {
                    act.metrics
                        .retention_swept
                        .with_label_values(&["workloads"])
                        .inc_by(s.workloads as u64);
                    act.metrics
                        .retention_swept
                        .with_label_values(&["log_lines"])
                        .inc_by(s.log_lines as u64);
                    let total = Swept {
                        workloads: total.workloads + s.workloads,
                        log_lines: total.log_lines + s.log_lines,
                        more: s.more,
                        deleted: Vec::new(),
                    };
                    if s.more {
                        act.sweep_step(before, total, ctx);
                    } else {
                        act.sweeping = false;
                        if total.workloads > 0 {
                            log::info!(
                                "retention: {} finished workload(s) and {} log line(s) deleted",
                                total.workloads,
                                total.log_lines
                            );
                        }
                    }
                }
                Err(e) => {
                    act.sweeping = false;
                    log::error!("retention: sweep failed (tried again later): {e}");
                }
            })
            .spawn(ctx);
    }

    /// Whether the store can write (read by `/readyz`).
    pub fn health(&self) -> Arc<StoreHealth> {
        self.health.clone()
    }

    /// While the store cannot write: one probe write at a time; when it commits, the
    /// store is writable again and the markers of lost log lines are written.
    fn probe(&mut self, ctx: &mut Context<Self>) {
        if self.health.writable() || self.probing {
            return;
        }
        self.probing = true;
        let rx = self.write(queries::probe_write);
        let health = self.health.clone();
        async move { answer(rx).await }
            .into_actor(self)
            .map(move |res, act, _| {
                act.probing = false;
                match res {
                    Ok(()) => {
                        log::info!("store: writes succeed again");
                        health.clear();
                        act.write_lost_markers();
                    }
                    Err(e) => log::debug!("store: probe write failed: {e}"),
                }
            })
            .spawn(ctx);
    }

    /// Replace the first line lost of each workload by a marker saying how many were
    /// lost (fire and forget; counted as lost again when it fails).
    fn write_lost_markers(&self) {
        let lost = match self.lost.lock() {
            Ok(mut l) if !l.is_empty() => std::mem::take(&mut *l),
            _ => return,
        };
        let markers: Vec<(WorkloadId, LogLine)> = lost
            .iter()
            .map(|(id, l)| {
                let line = LogLine {
                    seq: l.first_seq,
                    line: format!(
                        "[vulcan: {} log line(s) from here on could not be stored (storage fault)]",
                        l.count
                    ),
                    created_at: Utc::now(),
                };
                (*id, line)
            })
            .collect();
        let back = self.lost.clone();
        let rx = self.write(move |c| queries::append_logs(c, &markers));
        actix::spawn(async move {
            if answer(rx).await.is_err() {
                if let Ok(mut l) = back.lock() {
                    for (id, v) in lost {
                        l.entry(id)
                            .and_modify(|e| {
                                e.first_seq = e.first_seq.min(v.first_seq);
                                e.count += v.count;
                            })
                            .or_insert(v);
                    }
                }
            }
        });
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
        op: impl FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    ) -> oneshot::Receiver<Result<T, StoreError>> {
        self.write_counted(op, |_| Vec::new())
    }

    /// A write whose successful result moves the statistics by `deltas` (applied by
    /// the writer once the batch has committed).
    fn write_counted<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
        deltas: impl FnOnce(&T) -> Vec<Delta> + Send + 'static,
    ) -> oneshot::Receiver<Result<T, StoreError>> {
        let (tx, rx) = oneshot::channel();
        // If the writer is gone the job (and its reply sender) is dropped here, so the
        // caller is answered `Unavailable` at once instead of waiting forever.
        let _ = self.writer.send(ToWriter::Job(job_of(op, deltas, tx)));
        rx
    }

    fn read<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
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

/// The writer thread's settings.
struct Writer {
    db: Database,
    max_batch: usize,
    /// Group commit, µs: how long a batch that found company waits for more writes
    /// (0: never). Set once by [`StoreActor::group_commit`].
    group_wait_us: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    health: Arc<StoreHealth>,
    restarts: Arc<Restarts>,
    counters: Arc<Mutex<StatsCounters>>,
    /// Commits counted for the checkpointer, and whether it runs.
    checkpoints: Arc<checkpoint::Checkpoints>,
    /// The write-ahead log's file (SQLite).
    wal_file: Option<std::path::PathBuf>,
    /// The current connection has been told not to checkpoint on commit (reset when the
    /// connection is replaced).
    checkpoints_elsewhere: Cell<bool>,
}

impl Writer {
    fn run(self, mut conn: DbConnection, rx: mpsc::Receiver<ToWriter>) {
        let mut next = rx.recv().ok();
        while let Some(msg) = next.take() {
            let first = match msg {
                ToWriter::Job(job) => Item::Job(job),
                ToWriter::Change(req) => Item::Change(req),
                ToWriter::Restart(why, ack) => {
                    self.restart(&mut conn, why);
                    let _ = ack.send(());
                    next = rx.recv().ok();
                    continue;
                }
            };
            let mut items = vec![first];
            self.gather(&rx, &mut items, &mut next);
            let wait = Duration::from_micros(self.group_wait_us.load(Ordering::Relaxed));
            if items.len() > 1 && !wait.is_zero() {
                // Under load: give the writes on their way a moment to join this batch.
                let until = Instant::now() + wait;
                while next.is_none() && items.len() < self.max_batch {
                    let left = until.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(msg) => {
                            match msg {
                                ToWriter::Job(job) => items.push(Item::Job(job)),
                                ToWriter::Change(req) => items.push(Item::Change(req)),
                                restart @ ToWriter::Restart(..) => next = Some(restart),
                            }
                            self.gather(&rx, &mut items, &mut next);
                        }
                        Err(_) => break,
                    }
                }
            }
            self.metrics.store_batch_size.observe(items.len() as f64);
            self.leave_checkpoints_elsewhere(&mut conn);
            let batch = plan(items, &self.metrics.store_status_writes_coalesced);
            let mut moved: Vec<Delta> = Vec::new();
            let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
            let mut jobs = batch.into_iter();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                write_transaction(&mut conn, |c| {
                    for job in jobs.by_ref() {
                        let (reply, fault, deltas) = job(Some(c));
                        replies.push(reply);
                        moved.extend(deltas);
                        if let Some(fault) = fault {
                            return Err(fault.into_error());
                        }
                    }
                    Ok::<_, StoreError>(())
                })
                .map_err(|e| BatchFault::of(&e))
            }));
            let commit = match outcome {
                Ok(commit) => commit,
                Err(panic) => {
                    // Nothing of the batch was committed (its transaction dies with the
                    // connection): every write of it is answered with an error, the one
                    // that panicked by its dropped reply.
                    let why = format!(
                        "store writer panicked: {}",
                        crate::actors::backend::panic_message(panic.as_ref())
                    );
                    self.restart(&mut conn, why.clone());
                    Err(BatchFault::Other(why))
                }
            };
            // Skipped after a fault: answered with it, never run.
            replies.extend(jobs.map(|job| job(None).0));
            if commit.is_ok() && !moved.is_empty() {
                let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
                for d in &moved {
                    counters.apply(d);
                }
            }
            if let Err(fault) = &commit {
                log::error!(
                    "store: batch of {} write(s) failed: {fault:?}",
                    replies.len()
                );
                if matches!(fault, BatchFault::Full | BatchFault::WriteFailed(_)) {
                    self.health
                        .set_fault(fault.clone().into_error().to_string());
                    // SQLite may have rolled back on its own: start from a clean
                    // connection rather than trust its transaction state.
                    reopen(&self.db, &mut conn);
                    self.checkpoints_elsewhere.set(false);
                }
            }
            let committed = commit.is_ok();
            for reply in replies {
                reply(commit.clone());
            }
            if committed && self.checkpoints.committed(self.wal_file.as_deref()) {
                // The log passed its bound: checkpoint once here, after the batch was
                // answered and before the next one appends (see `checkpoint`).
                match queries::wal_checkpoint(&mut conn) {
                    Ok(_) => self
                        .metrics
                        .store_checkpoints
                        .with_label_values(&["writer"])
                        .inc(),
                    Err(e) => log::warn!("store: writer checkpoint failed: {e}"),
                }
            }
            if next.is_none() {
                next = rx.recv().ok();
            }
        }
        log::debug!("store: writer thread stopped");
    }

    /// Add every write already queued to `items`, up to the batch limit; a restart
    /// ends the batch and waits in `next`, handled after it, in order.
    fn gather(
        &self,
        rx: &mpsc::Receiver<ToWriter>,
        items: &mut Vec<Item>,
        next: &mut Option<ToWriter>,
    ) {
        while next.is_none() && items.len() < self.max_batch {
            match rx.try_recv() {
                Ok(ToWriter::Job(job)) => items.push(Item::Job(job)),
                Ok(ToWriter::Change(req)) => items.push(Item::Change(req)),
                Ok(restart) => *next = Some(restart),
                Err(_) => break,
            }
        }
    }

    /// Count a restart and reopen the connection (the old one, and any transaction
    /// left open on it, is dropped: SQLite rolls it back).
    fn restart(&self, conn: &mut DbConnection, why: String) {
        self.restarts.record(why);
        reopen(&self.db, conn);
        self.checkpoints_elsewhere.set(false);
    }

    /// While a checkpointer runs, make sure `conn` does not checkpoint on commit.
    fn leave_checkpoints_elsewhere(&self, conn: &mut DbConnection) {
        let Some(wal_max_bytes) = self.checkpoints.wal_max_bytes() else {
            return;
        };
        if self.checkpoints_elsewhere.get() {
            return;
        }
        match queries::checkpoint_elsewhere(conn, wal_max_bytes) {
            Ok(()) => self.checkpoints_elsewhere.set(true),
            Err(e) => log::warn!("store: writer still checkpoints on commit: {e}"),
        }
    }
}

/// Replace `conn` by a fresh writer connection. Whatever transaction the old one may
/// still hold is rolled back first, so its lock does not stand in the new one's way.
fn reopen(db: &Database, conn: &mut DbConnection) {
    use diesel::connection::SimpleConnection;
    // Fails harmlessly when no transaction is open.
    let _ = conn.batch_execute("ROLLBACK");
    match open_writer(db) {
        Ok(fresh) => *conn = fresh,
        Err(e) => log::error!("store: cannot reopen the writer: {e}"),
    }
}

impl Actor for StoreActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(PROBE_EVERY, |act, ctx| act.probe(ctx));
        if let Some((_, every)) = self.retention {
            self.sweep_retention(ctx);
            ctx.run_interval(every, |act, ctx| act.sweep_retention(ctx));
        }
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

/// One page of a workload's log lines in `seq` order, read on a log-read thread (see
/// [`crate::store::LogReads`]; never through the writer): those after `after` and below
/// `before` when set, at most `limit`, and no more once their text reaches
/// `max_bytes`. Memory is bounded by the page. Answers what `render` makes of the lines
/// and whether the page is full (more may follow); it runs on the log-read thread too,
/// so a large page is serialised there, not on an HTTP worker.
pub struct GetLogs<R> {
    /// Which workload.
    pub id: WorkloadId,
    /// Only lines with a larger seq.
    pub after: Option<i64>,
    /// Only lines with a smaller seq.
    pub before: Option<i64>,
    /// At most this many lines.
    pub limit: i64,
    /// No more lines once their text holds this many bytes.
    pub max_bytes: usize,
    /// What the caller wants of the page: the lines and whether it is full.
    pub render: Box<dyn FnOnce(Vec<LogLine>, bool) -> R + Send>,
}

impl<R: Send + 'static> Message for GetLogs<R> {
    type Result = Result<R, StoreError>;
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

/// Start-up recovery (see [`queries::recover`]): of every workload, or on a database
/// shared by a cluster only of those recorded with this node's `node_id` (the field).
#[derive(Message)]
#[rtype(result = "Result<Recovered, StoreError>")]
pub struct Recover(pub Option<String>);

/// Restart the writer: it reopens its connection once the writes queued before this
/// are done (an operator's request; a panic does the same by itself).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RestartWriter(pub String);

/// Test only: a write that panics in the writer thread, as a bug in a query would.
#[cfg(test)]
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct PanicInWriter;
/// From now on, tell `0` each time a committed status change enqueued a webhook
/// delivery (a workload with a `callback_url` reached a terminal status).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchDeliveries(pub Recipient<DeliveriesEnqueued>);

/// Look at the webhook queue (see [`deliveries::due_deliveries`]).
#[derive(Message)]
#[rtype(result = "Result<DeliveryQueue, StoreError>")]
pub struct DueDeliveries {
    /// Due means `next_attempt_at <= now`.
    pub now: chrono::DateTime<chrono::Utc>,
    /// At most this many due deliveries.
    pub limit: usize,
    /// Deliveries in flight, left out.
    pub exclude: Vec<WorkloadId>,
}

/// Record a webhook attempt (see [`deliveries::record_attempt`]); answers whether it
/// was recorded.
#[derive(Message)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct RecordAttempt(pub AttemptRecord);

/// The webhook delivery and attempts of a workload.
#[derive(Message)]
#[rtype(result = "Result<Deliveries, StoreError>")]
pub struct GetDeliveries(pub WorkloadId);

/// Ask the node running a workload to kill it: the request is kept on the row
/// ([`queries::request_kill`]) and announced ([`notify::KILL`]) in one transaction.
/// Nothing is written or sent on a database of one node.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct RequestKill(pub WorkloadId);

/// The live workloads of a node (by `node_id`) that other nodes asked to kill.
#[derive(Message)]
#[rtype(result = "Result<Vec<WorkloadId>, StoreError>")]
pub struct KillRequests(pub String);

/// Resolves once everything queued before it is committed.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Flush;

impl Handler<InsertWorkload> for StoreActor {
    type Result = ResponseFuture<Result<KeyedInsert, StoreError>>;

    fn handle(&mut self, msg: InsertWorkload, _: &mut Self::Context) -> Self::Result {
        let added = Tally::of(&msg.workload);
        let counted = move |r: &KeyedInsert| match r {
            KeyedInsert::Inserted => vec![Delta::Add(added)],
            KeyedInsert::Existing(_) => Vec::new(),
        };
        let rx = self.write_counted(
            move |c| match &msg.key {
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
            },
            counted,
        );
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
        let (tx, rx) = oneshot::channel();
        let fence = self.fence();
        let _ = self.writer.send(ToWriter::Change(ChangeReq {
            id: msg.id,
            change: msg.change,
            fence,
            tx,
            notify: self.notify,
        }));
        let watcher = self.deliveries.clone();
        Box::pin(async move {
            let res = answer(rx).await;
            if let (Ok(w), Some(watcher)) = (&res, watcher) {
                // The rule apply_change enqueues by; told after the commit, so the
                // deliverer's read sees the delivery.
                if w.status.is_terminal() && w.callback_url.is_some() {
                    watcher.do_send(DeliveriesEnqueued);
                }
            }
            res
        })
    }
}

impl Handler<AppendLogs> for StoreActor {
    type Result = ();

    fn handle(&mut self, msg: AppendLogs, ctx: &mut Self::Context) {
        let lines = msg.0;
        // Which lines a failure loses: the first seq and the count per workload.
        let mut span: HashMap<WorkloadId, Lost> = HashMap::new();
        for (id, l) in &lines {
            let e = span.entry(*id).or_insert(Lost {
                first_seq: l.seq,
                count: 0,
            });
            e.first_seq = e.first_seq.min(l.seq);
            e.count += 1;
        }
        let announce: Vec<String> = if self.notify {
            span.keys().map(WorkloadId::to_string).collect()
        } else {
            Vec::new()
        };
        let rx = self.write(move |c| {
            queries::append_logs(c, &lines)?;
            // One notification per workload of the append, whatever its line count.
            notify::notify(c, notify::LOGS, &announce)
        });
        let lost = self.lost.clone();
        let metrics = self.metrics.clone();
        let health = self.health.clone();
        // Nobody waits for the answer: failures are counted here and, once the store
        // writes again, marked in each log.
        ctx.spawn(
            async move {
                let Err(e) = answer(rx).await else {
                    return false;
                };
                let n: u64 = span.values().map(|l| l.count).sum();
                log::error!("store: could not persist {n} log line(s): {e}");
                metrics.log_lines_lost.inc_by(n);
                if let Ok(mut all) = lost.lock() {
                    for (id, l) in span {
                        let e = all.entry(id).or_insert(Lost {
                            first_seq: l.first_seq,
                            count: 0,
                        });
                        e.first_seq = e.first_seq.min(l.first_seq);
                        e.count += l.count;
                    }
                }
                health.writable()
            }
            .into_actor(self)
            .map(|marks_now, act, _| {
                // Not a storage fault: nothing will probe, so mark now.
                if marks_now {
                    act.write_lost_markers();
                }
            }),
        );
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

impl<R: Send + 'static> Handler<GetLogs<R>> for StoreActor {
    type Result = ResponseFuture<Result<R, StoreError>>;

    fn handle(&mut self, msg: GetLogs<R>, _: &mut Self::Context) -> Self::Result {
        let GetLogs {
            id,
            after,
            before,
            limit,
            max_bytes,
            render,
        } = msg;
        let op = move |c: &mut DbConnection| {
            queries::log_page(c, id, after, before, limit, max_bytes)
                .map(|(lines, full)| render(lines, full))
        };
        match &self.log_reads {
            Some(pool) => {
                let pool = pool.clone();
                Box::pin(async move { pool.run(op).await })
            }
            None => Box::pin(self.read(op)),
        }
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
        if let Some(cache) = self.stats_cache.clone() {
            // Every node writes the shared table: counted there, not by this node's
            // counters.
            let count =
                self.read(|c| Ok(StatsCounters::seeded(queries::stat_groups(c)?).snapshot()));
            return Box::pin(async move { cache.get(count).await });
        }
        let counters = self.counters.clone();
        Box::pin(async move {
            let c = counters.lock().unwrap_or_else(|p| p.into_inner());
            Ok(c.snapshot())
        })
    }
}

impl Handler<Recover> for StoreActor {
    type Result = ResponseFuture<Result<Recovered, StoreError>>;

    fn handle(&mut self, msg: Recover, _: &mut Self::Context) -> Self::Result {
        let only_node = msg.0;
        let announce = self.notify;
        let recover = move |conn: &mut DbConnection| {
            let r = queries::recover(conn, only_node.as_deref())?;
            if announce {
                let ids: Vec<String> = r.interrupted.iter().map(|w| w.id.to_string()).collect();
                notify::notify(conn, notify::TERMINAL, &ids)?;
            }
            Ok(r)
        };
        Box::pin(answer(self.write_counted(recover, |r| {
            r.interrupted.iter().flat_map(change_deltas).collect()
        })))
    }
}

impl Handler<Flush> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, _: Flush, _: &mut Self::Context) -> Self::Result {
        Box::pin(answer(self.write(|_| Ok(()))))
    }
}

impl Handler<RequestKill> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: RequestKill, _: &mut Self::Context) -> Self::Result {
        if !self.notify {
            return Box::pin(async { Ok(()) });
        }
        let id = msg.0;
        Box::pin(answer(self.write(move |c| {
            // Kept only on a live row; announced in any case, since the node holding a
            // workload killed in the table while queued there still drops it.
            queries::request_kill(c, id, Utc::now())?;
            notify::notify(c, notify::KILL, &[id.to_string()])
        })))
    }
}

impl Handler<KillRequests> for StoreActor {
    type Result = ResponseFuture<Result<Vec<WorkloadId>, StoreError>>;

    fn handle(&mut self, msg: KillRequests, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.read(move |c| queries::kill_requests(c, &msg.0)))
    }
}

impl Handler<WatchDeliveries> for StoreActor {
    type Result = ();

    fn handle(&mut self, msg: WatchDeliveries, _: &mut Self::Context) {
        self.deliveries = Some(msg.0);
    }
}

impl Handler<DueDeliveries> for StoreActor {
    type Result = ResponseFuture<Result<DeliveryQueue, StoreError>>;

    fn handle(&mut self, msg: DueDeliveries, _: &mut Self::Context) -> Self::Result {
        Box::pin(
            self.read(move |c| deliveries::due_deliveries(c, msg.now, msg.limit, &msg.exclude)),
        )
    }
}

impl Handler<RecordAttempt> for StoreActor {
    type Result = ResponseFuture<Result<bool, StoreError>>;

    fn handle(&mut self, msg: RecordAttempt, _: &mut Self::Context) -> Self::Result {
        Box::pin(answer(
            self.write(move |c| deliveries::record_attempt(c, &msg.0)),
        ))
    }
}

impl Handler<GetDeliveries> for StoreActor {
    type Result = ResponseFuture<Result<Deliveries, StoreError>>;

    fn handle(&mut self, msg: GetDeliveries, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.read(move |c| deliveries::deliveries(c, msg.0)))
    }
}

impl Handler<RestartWriter> for StoreActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: RestartWriter, _: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let _ = self.writer.send(ToWriter::Restart(msg.0, tx));
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

#[cfg(test)]
impl Handler<PanicInWriter> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, _: PanicInWriter, _: &mut Self::Context) -> Self::Result {
        let rx = self.write(|_| -> Result<(), StoreError> { panic!("injected fault") });
        Box::pin(answer(rx))
    }
}

/// Test only: a write that holds the writer for a while, so later writes queue up and
/// go into one batch.
#[cfg(test)]
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct HoldWriter(pub Duration);

#[cfg(test)]
impl Handler<HoldWriter> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: HoldWriter, _: &mut Self::Context) -> Self::Result {
        let rx = self.write(move |_| {
            std::thread::sleep(msg.0);
            Ok(())
        });
        Box::pin(answer(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> Workload {
        crate::model::pending_fixture()
    }

    fn insert(w: &Workload) -> InsertWorkload {
        InsertWorkload {
            workload: w.clone(),
            payload: Payload::Code("x".into()),
            input: b"null".to_vec(),
            key: None,
        }
    }

    #[actix_web::test]
    async fn a_panic_in_the_writer_fails_its_batch_whole_and_the_writer_reopens() {
        let dir = tempfile::tempdir().expect("dir");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let db = Database::Sqlite(dir.path().join("t.db"));
        let actor = StoreActor::open(&db, 1, 64, metrics).expect("open");
        let health = actor.health();
        let store = actor.start();
        let before = pending();
        store
            .send(insert(&before))
            .await
            .expect("send")
            .expect("insert");
        // Three writes queued behind a slow one: one batch, the middle one panics.
        let hold = store.send(HoldWriter(Duration::from_millis(500)));
        // The writer takes the slow write alone and is busy with it meanwhile.
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        let (a, b) = (pending(), pending());
        let first = store.send(insert(&a));
        let boom = store.send(PanicInWriter);
        let last = store.send(insert(&b));
        hold.await.expect("send").expect("held");
        assert!(boom.await.expect("send").is_err());
        assert!(
            first.await.expect("send").is_err(),
            "its batch was not committed"
        );
        assert!(
            last.await.expect("send").is_err(),
            "skipped, answered with an error"
        );
        for w in [&a, &b] {
            let got = store.send(GetWorkload(w.id)).await.expect("send");
            assert!(matches!(got, Err(StoreError::NotFound)), "{got:?}");
        }
        let restarts = health.restarts();
        assert_eq!(restarts.count(), 1);
        assert!(restarts
            .last_error()
            .is_some_and(|e| e.contains("injected fault")));
        // The reopened writer works, and committed data is intact.
        store
            .send(insert(&a))
            .await
            .expect("send")
            .expect("insert again");
        store
            .send(GetWorkload(before.id))
            .await
            .expect("send")
            .expect("kept");
        store
            .send(GetWorkload(a.id))
            .await
            .expect("send")
            .expect("now there");
        // An operator's restart is counted the same way.
        store
            .send(RestartWriter("requested".into()))
            .await
            .expect("restart");
        assert_eq!(restarts.count(), 2);
        assert_eq!(restarts.last_error().as_deref(), Some("requested"));
        store
            .send(insert(&b))
            .await
            .expect("send")
            .expect("insert after restart");
    }

    fn finished(to: Status, ms: u64) -> StatusChange {
        StatusChange {
            output: crate::model::output_value(b"42"),
            exit_code: Some(0),
            duration_ms: Some(ms),
            ..StatusChange::to(to)
        }
    }

    /// Background checkpoints: under sustained concurrent writes (each batch its own
    /// commit, ~10 MiB of log frames in all) the write-ahead log file stays within a
    /// small multiple of its bound, where SQLite's own policy (1000 pages, ~4 MiB) or an
    /// unbounded log would pass it; the checkpointer ran; and every write is there when
    /// the database is opened afresh.
    #[actix_web::test]
    async fn background_checkpoints_keep_the_log_bounded_under_sustained_writes_and_lose_nothing() {
        const BOUND: u64 = 256 * 1024;
        const WAVES: usize = 40;
        const PER_WAVE: usize = 200;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t.db");
        let db = Database::Sqlite(path.clone());
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let store = StoreActor::open(&db, 1, 64, metrics.clone())
            .expect("open")
            .background_checkpoints(&db, Duration::from_millis(5), BOUND)
            .start();
        let wal = dir.path().join("t.db-wal");
        let mut largest = 0;
        for _ in 0..WAVES {
            let writes: Vec<_> = (0..PER_WAVE)
                .map(|_| store.send(insert(&pending())))
                .collect();
            for w in futures_util::future::join_all(writes).await {
                w.expect("send").expect("insert");
            }
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        let batches = metrics.store_batch_size.get_sample_count();
        assert!(
            batches > 100,
            "the writes must come in many commits to make a long log: {batches}"
        );
        assert!(
            largest <= 8 * BOUND,
            "the log file reached {largest} bytes against a bound of {BOUND}"
        );
        let background = metrics
            .store_checkpoints
            .with_label_values(&["background"])
            .get();
        assert!(background > 0, "the checkpointer never ran");
        drop(store);
        assert_eq!(scanned(&path).total, (WAVES * PER_WAVE) as u64);
    }

    /// What a scan of the committed table says, for comparison with the counters.
    fn scanned(path: &std::path::Path) -> Stats {
        let mut conn = open_writer(&Database::Sqlite(path.to_path_buf())).expect("scan connection");
        queries::stats(&mut conn).expect("scan")
    }

    fn open_actor(path: &std::path::Path) -> (Addr<StoreActor>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let actor = StoreActor::open(
            &Database::Sqlite(path.to_path_buf()),
            1,
            64,
            metrics.clone(),
        )
        .expect("open");
        (actor.start(), metrics)
    }

    /// Group commit: a batch that found company waits for the writes on their way (here
    /// a running and a terminal change sent after it began, folded into one statement
    /// by the same batch), while a lone write on an idle store commits at once.
    #[actix_web::test]
    async fn a_loaded_writer_waits_for_more_writes_and_a_lone_write_does_not() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t.db");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let store = StoreActor::open(&Database::Sqlite(path.clone()), 1, 64, metrics.clone())
            .expect("open")
            .group_commit(Duration::from_secs(3))
            .start();
        let (a, b) = (pending(), pending());
        let hold = store.send(HoldWriter(Duration::from_millis(300)));
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        let ins_a = store.send(insert(&a));
        let ins_b = store.send(insert(&b));
        hold.await.expect("send").expect("held");
        // The batch of the two inserts has begun and is waiting: these join it.
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        let run = store.send(ChangeStatus {
            id: a.id,
            change: StatusChange::to(Status::Running),
        });
        let end = store.send(ChangeStatus {
            id: a.id,
            change: finished(Status::Completed, 3),
        });
        ins_a.await.expect("send").expect("insert a");
        ins_b.await.expect("send").expect("insert b");
        assert_eq!(
            run.await.expect("send").expect("run").status,
            Status::Running
        );
        assert_eq!(
            end.await.expect("send").expect("end").status,
            Status::Completed
        );
        assert_eq!(metrics.store_status_writes_coalesced.get(), 1, "one batch");
        let batches = &metrics.store_batch_size;
        assert_eq!(batches.get_sample_count(), 2, "the hold, then one batch");
        assert_eq!(batches.get_sample_sum() as u64, 1 + 4);

        // Alone: no company, no wait (the window is far longer than this bound).
        let store = StoreActor::open(&Database::Sqlite(path), 1, 64, metrics.clone())
            .expect("reopen")
            .group_commit(Duration::from_secs(60))
            .start();
        let t = std::time::Instant::now();
        store
            .send(insert(&pending()))
            .await
            .expect("send")
            .expect("insert");
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    }

    #[actix_web::test]
    async fn running_and_terminal_changes_in_one_batch_are_one_statement_answering_both() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t.db");
        let (store, metrics) = open_actor(&path);
        let w = pending();
        store.send(insert(&w)).await.expect("send").expect("insert");
        let hold = store.send(HoldWriter(Duration::from_millis(400)));
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        let running = StatusChange::to(Status::Running);
        let started_at = running.at;
        let run = store.send(ChangeStatus {
            id: w.id,
            change: running,
        });
        let end = store.send(ChangeStatus {
            id: w.id,
            change: finished(Status::Completed, 7),
        });
        hold.await.expect("send").expect("held");
        let run = run.await.expect("send").expect("running answered");
        let end = end.await.expect("send").expect("completed answered");
        assert_eq!(metrics.store_status_writes_coalesced.get(), 1);
        assert_eq!(run.status, Status::Running);
        let ms = |t: Option<DateTime<Utc>>| t.map(|t| crate::model::format_time(&t));
        assert_eq!(ms(run.started_at), ms(Some(started_at)));
        assert!(run.finished_at.is_none() && run.output.is_none() && run.duration_ms.is_none());
        assert_eq!(end.status, Status::Completed);
        assert_eq!(ms(end.started_at), ms(Some(started_at)));
        assert_eq!(end.duration_ms, Some(7));
        let stored = store
            .send(GetWorkload(w.id))
            .await
            .expect("send")
            .expect("get");
        assert_eq!(stored, end);
        let counted = store.send(GetStats).await.expect("send").expect("stats");
        assert_eq!(counted, scanned(&path));
        assert_eq!(counted.by_status["completed"], 1);
        assert_eq!(counted.by_status["pending"], 0);
        assert_eq!(counted.by_status["running"], 0);
    }

    #[actix_web::test]
    async fn a_merged_pair_the_state_machine_refuses_is_answered_change_by_change() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t.db");
        let (store, metrics) = open_actor(&path);
        let w = pending();
        store.send(insert(&w)).await.expect("send").expect("insert");
        store
            .send(ChangeStatus {
                id: w.id,
                change: StatusChange::to(Status::Killed),
            })
            .await
            .expect("send")
            .expect("killed while pending");
        let unknown = pending();
        let hold = store.send(HoldWriter(Duration::from_millis(400)));
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        let mut answers = Vec::new();
        for id in [w.id, unknown.id] {
            answers.push(store.send(ChangeStatus {
                id,
                change: StatusChange::to(Status::Running),
            }));
            answers.push(store.send(ChangeStatus {
                id,
                change: finished(Status::Completed, 3),
            }));
        }
        hold.await.expect("send").expect("held");
        let mut got = Vec::new();
        for a in answers {
            got.push(a.await.expect("send"));
        }
        assert!(
            matches!(got[0], Err(StoreError::InvalidTransition(_))),
            "{got:?}"
        );
        assert!(
            matches!(got[1], Err(StoreError::InvalidTransition(_))),
            "{got:?}"
        );
        assert!(matches!(got[2], Err(StoreError::NotFound)), "{got:?}");
        assert!(matches!(got[3], Err(StoreError::NotFound)), "{got:?}");
        assert_eq!(metrics.store_status_writes_coalesced.get(), 0);
        let stored = store
            .send(GetWorkload(w.id))
            .await
            .expect("send")
            .expect("get");
        assert_eq!(stored.status, Status::Killed);
        assert_eq!(
            store.send(GetStats).await.expect("send").expect("stats"),
            scanned(&path)
        );
    }

    #[actix_web::test]
    async fn stats_counters_equal_a_table_scan_across_writes_retention_and_reopening() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t.db");
        let (store, _) = open_actor(&path);
        let mut ids = Vec::new();
        for i in 0..6u64 {
            let mut w = pending();
            if i % 2 == 1 {
                w.backend = "other".into();
            }
            store.send(insert(&w)).await.expect("send").expect("insert");
            ids.push(w.id);
        }
        let change = |id, change| ChangeStatus { id, change };
        for (n, id) in ids.iter().enumerate().take(4) {
            store
                .send(change(*id, StatusChange::to(Status::Running)))
                .await
                .expect("send")
                .expect("running");
            if n < 3 {
                let to = if n == 2 {
                    Status::Failed
                } else {
                    Status::Completed
                };
                store
                    .send(change(*id, finished(to, 10 * (n as u64 + 1))))
                    .await
                    .expect("send")
                    .expect("terminal");
            }
        }
        store
            .send(change(ids[4], StatusChange::to(Status::Killed)))
            .await
            .expect("send")
            .expect("killed");
        // Refused changes move nothing.
        let refused = store
            .send(change(ids[0], StatusChange::to(Status::Running)))
            .await
            .expect("send");
        assert!(refused.is_err());
        let counted = store.send(GetStats).await.expect("send").expect("stats");
        assert_eq!(counted, scanned(&path));
        assert_eq!(counted.total, 6);
        assert_eq!(counted.by_status["running"], 1);
        assert_eq!(counted.by_status["pending"], 1);
        assert_eq!(counted.by_backend["other"].count, 3);
        drop(store);

        // Reopened: seeded from the table; an immediate retention sweep deletes the
        // finished work and the counters follow.
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let actor = StoreActor::open(&Database::Sqlite(path.clone()), 1, 64, metrics)
            .expect("reopen")
            .retention(Duration::ZERO, Duration::from_secs(3600));
        let counters = actor.counters.clone();
        let seeded = counters.lock().expect("lock").snapshot();
        assert_eq!(seeded, counted, "seeded from one query at start-up");
        let store = actor.start();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let now = store.send(GetStats).await.expect("send").expect("stats");
            if now.total == 2 {
                assert_eq!(now, scanned(&path));
                assert_eq!(now.by_status["pending"] + now.by_status["running"], 2);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "not swept: {now:?}");
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Both engines' databases for a StoreActor test: SQLite in `dir`, and a fresh
    /// PostgreSQL database when the server binaries are installed.
    fn databases(dir: &std::path::Path, test: &str) -> Vec<Database> {
        let mut dbs = vec![Database::Sqlite(dir.join("t.db"))];
        dbs.extend(crate::store::test_pg::fresh_database(test).map(Database::Postgres));
        dbs
    }

    #[actix_web::test]
    async fn a_failing_write_does_not_undo_its_neighbours_in_a_batch() {
        let dir = tempfile::tempdir().expect("dir");
        for db in databases(dir.path(), "a_failing_write_does_not_undo_its_neighbours") {
            let metrics = Arc::new(Metrics::new().expect("metrics"));
            let store = StoreActor::open(&db, 1, 64, metrics).expect("open").start();
            let first = pending();
            store
                .send(insert(&first))
                .await
                .expect("send")
                .expect("insert");
            // One batch: a good write, a duplicate id (the database refuses it), a
            // refused transition, another good write.
            let hold = store.send(HoldWriter(Duration::from_millis(300)));
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
            let (a, b) = (pending(), pending());
            let good = store.send(insert(&a));
            let dup = store.send(insert(&first));
            let refused = store.send(ChangeStatus {
                id: first.id,
                change: StatusChange::to(crate::model::Status::Completed),
            });
            let last = store.send(insert(&b));
            hold.await.expect("send").expect("held");
            good.await
                .expect("send")
                .expect("{db}: the write before commits");
            let dup = dup.await.expect("send");
            assert!(matches!(dup, Err(StoreError::Database(_))), "{db}: {dup:?}");
            let refused = refused.await.expect("send");
            assert!(
                matches!(refused, Err(StoreError::InvalidTransition(_))),
                "{db}: {refused:?}"
            );
            last.await
                .expect("send")
                .expect("{db}: the write after commits");
            for w in [&first, &a, &b] {
                let got = store.send(GetWorkload(w.id)).await.expect("send");
                assert_eq!(
                    got.expect("stored").status,
                    crate::model::Status::Pending,
                    "{db}"
                );
            }
        }
    }

    #[actix_web::test]
    async fn a_second_server_on_one_postgres_database_is_refused() {
        let Some(url) = crate::store::test_pg::fresh_database("a_second_server") else {
            return;
        };
        let db = Database::Postgres(url);
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let first = StoreActor::open(&db, 1, 64, metrics.clone()).expect("open");
        let second = StoreActor::open(&db, 1, 64, metrics.clone());
        let err = second.err().expect("refused while the first one writes");
        assert!(err.to_string().contains("another Vulcan server"), "{err}");
        // Once the first one is gone, the database is free again.
        drop(first);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match StoreActor::open(&db, 1, 64, metrics.clone()) {
                Ok(_) => break,
                Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
            }
        }
    }

    #[actix_web::test]
    async fn nodes_of_a_cluster_share_one_postgres_database_and_recover_only_their_own_work() {
        let Some(url) = crate::store::test_pg::fresh_database("nodes_share_one_database") else {
            return;
        };
        let db = Database::SharedPostgres(url);
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let a = StoreActor::open(&db, 1, 64, metrics.clone())
            .expect("node a")
            .start();
        let b = StoreActor::open(&db, 1, 64, metrics.clone())
            .expect("node b opens the same database while a writes")
            .start();
        let mut mine = pending();
        mine.node_id = "a".into();
        let mut theirs = pending();
        theirs.node_id = "b".into();
        let mut running_on_a = pending();
        running_on_a.node_id = "a".into();
        for w in [&mine, &theirs, &running_on_a] {
            a.send(insert(w)).await.expect("send").expect("insert");
        }
        a.send(ChangeStatus {
            id: running_on_a.id,
            change: StatusChange::to(Status::Running),
        })
        .await
        .expect("send")
        .expect("running on a");
        let rec = b
            .send(Recover(Some("b".into())))
            .await
            .expect("send")
            .expect("recover");
        let ids: Vec<_> = rec.pending.iter().map(|p| p.workload.id).collect();
        assert_eq!(ids, vec![theirs.id], "node b re-admits only its own work");
        assert!(
            rec.interrupted.is_empty(),
            "node b fails none of a's running work"
        );
        let still = b
            .send(GetWorkload(running_on_a.id))
            .await
            .expect("send")
            .expect("read");
        assert_eq!(still.status, Status::Running);
        let rec = a
            .send(Recover(Some("a".into())))
            .await
            .expect("send")
            .expect("recover");
        let ids: Vec<_> = rec.pending.iter().map(|p| p.workload.id).collect();
        assert_eq!(ids, vec![mine.id], "node a re-admits only its own work");
        let failed: Vec<_> = rec.interrupted.iter().map(|w| w.id).collect();
        assert_eq!(
            failed,
            vec![running_on_a.id],
            "its own running work is failed"
        );
    }

    #[actix_web::test]
    async fn the_writer_announces_log_appends_and_terminal_records_only_on_a_shared_database() {
        use crate::store::notify::{self, Listener, Notice};
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        for shared in [true, false] {
            let Some(url) = crate::store::test_pg::fresh_database("writer_announces") else {
                return;
            };
            let db = if shared {
                Database::SharedPostgres(url)
            } else {
                Database::Postgres(url)
            };
            let store = StoreActor::open(&db, 1, 64, metrics.clone())
                .expect("open")
                .start();
            let listener = Listener::start(&db, Duration::from_millis(5)).expect("listener");
            let mut logs = listener.subscribe(notify::LOGS, None);
            let mut terminal = listener.subscribe(notify::TERMINAL, None);
            let w = pending();
            store.send(insert(&w)).await.expect("send").expect("insert");
            let line = |seq| LogLine {
                seq,
                line: format!("line {seq}"),
                created_at: Utc::now(),
            };
            // Three lines of one append, then the running and terminal changes.
            store.do_send(AppendLogs((0..3).map(|s| (w.id, line(s))).collect()));
            for to in [Status::Running, Status::Completed] {
                store
                    .send(ChangeStatus {
                        id: w.id,
                        change: StatusChange::to(to),
                    })
                    .await
                    .expect("send")
                    .expect("change");
            }
            store.send(Flush).await.expect("send").expect("flush");
            let within = Duration::from_millis(500);
            let mut got_logs = Vec::new();
            while let Ok(Some(n)) = tokio::time::timeout(within, logs.recv()).await {
                got_logs.push(n);
            }
            let mut got_terminal = Vec::new();
            while let Ok(Some(n)) = tokio::time::timeout(within, terminal.recv()).await {
                got_terminal.push(n);
            }
            if shared {
                let id = Notice::Payload(w.id.to_string());
                assert_eq!(got_logs, vec![id.clone()], "one per workload per append");
                assert_eq!(got_terminal, vec![id], "the terminal record, once");
            } else {
                assert!(
                    got_logs.is_empty() && got_terminal.is_empty(),
                    "one node's database is never notified: {got_logs:?} {got_terminal:?}"
                );
            }
        }
    }

    #[actix_web::test]
    async fn a_lost_postgres_connection_is_reopened_and_writes_resume() {
        use diesel::{Connection, RunQueryDsl};
        let Some(url) = crate::store::test_pg::fresh_database("a_lost_postgres_connection") else {
            return;
        };
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let actor =
            StoreActor::open(&Database::Postgres(url.clone()), 2, 64, metrics).expect("open");
        let health = actor.health();
        let store = actor.start();
        let before = pending();
        store
            .send(insert(&before))
            .await
            .expect("send")
            .expect("insert");
        // The server drops every connection of the store (as a restart or a network
        // cut does).
        let mut admin = diesel::PgConnection::establish(&url).expect("admin");
        diesel::sql_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .execute(&mut admin)
        .expect("terminate");
        let lost = pending();
        let res = store.send(insert(&lost)).await.expect("send");
        assert!(
            matches!(&res, Err(e) if e.is_storage_fault()),
            "the write fails as a storage fault: {res:?}"
        );
        assert!(!health.writable());
        // The probe reopens the connection; writes succeed again (liveness bound only).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !health.writable() {
            assert!(
                std::time::Instant::now() < deadline,
                "store stays unwritable"
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        store
            .send(insert(&lost))
            .await
            .expect("send")
            .expect("insert again");
        for w in [&before, &lost] {
            store
                .send(GetWorkload(w.id))
                .await
                .expect("send")
                .expect("readable");
        }
    }

    /// Not a test: a measurement of the store's write path (insert, running,
    /// completed, 100 workloads in flight so writes batch), on each engine.
    /// `cargo test --release --lib store_write_throughput -- --ignored --nocapture`.
    #[ignore]
    #[actix_web::test]
    async fn store_write_throughput() {
        use crate::model::Status;
        const N: usize = 3000;
        const IN_FLIGHT: usize = 100;
        let dir = tempfile::tempdir().expect("dir");
        let mut dbs = databases(dir.path(), "store_write_throughput");
        // A cluster's database: the same writes, each terminal one with its NOTIFY.
        dbs.extend(
            crate::store::test_pg::fresh_database("store_write_throughput_shared")
                .map(Database::SharedPostgres),
        );
        for db in dbs {
            let metrics = Arc::new(Metrics::new().expect("metrics"));
            let store = StoreActor::open(&db, 4, 64, metrics).expect("open").start();
            let start = std::time::Instant::now();
            let cpu_start = cpu_time();
            for _ in 0..N / IN_FLIGHT {
                let wave: Vec<Workload> = (0..IN_FLIGHT).map(|_| pending()).collect();
                let inserts = wave.iter().map(|w| store.send(insert(w)));
                for r in futures_util::future::join_all(inserts).await {
                    r.expect("send").expect("insert");
                }
                for to in [Status::Running, Status::Completed] {
                    let changes = wave.iter().map(|w| {
                        store.send(ChangeStatus {
                            id: w.id,
                            change: StatusChange::to(to),
                        })
                    });
                    for r in futures_util::future::join_all(changes).await {
                        r.expect("send").expect("change");
                    }
                }
            }
            let secs = start.elapsed().as_secs_f64();
            let cpu = cpu_time() - cpu_start;
            println!("BENCH cpu {:.3} s of this process", cpu);
            let kind = match db {
                Database::Sqlite(_) => "sqlite",
                Database::Postgres(_) => "postgres",
                Database::SharedPostgres(_) => "postgres shared (NOTIFY)",
            };
            println!(
                "BENCH store_write_throughput {kind}: {N} workloads x 3 writes in {secs:.2} s = {:.0} writes/s",
                (3 * N) as f64 / secs
            );
        }
    }

    /// CPU time (user + system) of this process so far, in seconds.
    fn cpu_time() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
        let (_, rest) = stat.rsplit_once(") ").expect("stat format");
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        let f: Vec<f64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().expect("ticks"))
            .collect();
        (f[0] + f[1]) / rustix::param::clock_ticks_per_second() as f64
    }
}
