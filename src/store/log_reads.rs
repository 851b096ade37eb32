//! The log-read pool: where pages of log lines (history and SSE replay) are read and
//! rendered, apart from everything else.
//!
//! Why its own threads: a page of a large log is milliseconds of SQLite and
//! serialisation. Run on the actix workers (serialisation) or the shared blocking pool
//! (the query), a few clients re-reading large histories took the CPU the submit path
//! needs. Here a fixed number of threads (`logs.read_threads`) do every log read, each
//! on its own connection, at a lower CPU priority ([`super::BACKGROUND_NICE`]): under contention the
//! kernel gives the submit path's threads the CPU first. Reads beyond the thread count
//! wait their turn in order (never refused); a waiting read is a future of an open
//! request, holding nothing but its parameters.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::{mpsc, oneshot, Semaphore, TryAcquireError};

use super::{Database, DbConnection, StoreError};

type Job = Box<dyn FnOnce(&mut DbConnection) + Send>;

/// Gauges of the pool (registered with the server's metrics).
#[derive(Clone)]
struct Gauges {
    running: IntGauge,
    peak: IntGauge,
    queued: IntCounter,
    /// The source of truth for `running`/`peak` (a gauge has no atomic max).
    now: Arc<AtomicI64>,
}

impl Gauges {
    /// Counts a read as running until the guard is dropped (a panic included).
    fn running(&self) -> Running<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.running.set(now);
        if now > self.peak.get() {
            self.peak.set(now);
        }
        Running(self)
    }
}

struct Running<'a>(&'a Gauges);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let now = self.0.now.fetch_sub(1, Ordering::SeqCst) - 1;
        self.0.running.set(now);
    }
}

/// The pool. Cheap to clone; the threads end when the last clone is dropped.
///
/// Invariant: at most `threads` log reads run at any time (`vulcan_log_reads_peak`
/// never exceeds it); the others wait in order.
#[derive(Clone)]
pub struct LogReads {
    /// To the threads; never holds more than `threads` jobs (one per permit of `free`).
    jobs: mpsc::UnboundedSender<Job>,
    /// One permit per thread, held by a job from its queueing to its end: a read waits
    /// here (in order) while every thread is busy.
    free: Arc<Semaphore>,
    gauges: Gauges,
}

impl LogReads {
    /// Start `threads` (at least one) reader threads on the database `db` (opened
    /// by the writer first, so the schema exists). Their connections are opened here,
    /// at start-up: a reader must not need to open one while the disk is full (reads
    /// go on then); a thread opens a new one only after a job panicked.
    pub fn start(db: &Database, threads: usize) -> Result<Self, StoreError> {
        let threads = threads.max(1);
        let gauge = |name: &str, help: &str| {
            IntGauge::new(name, help).map_err(|e| StoreError::Connection(e.to_string()))
        };
        let gauges = Gauges {
            running: gauge("log_reads_running", "Log pages being read now")?,
            peak: gauge(
                "log_reads_peak",
                "Most log pages ever read at the same time (at most logs.read_threads)",
            )?,
            queued: IntCounter::new(
                "log_reads_queued_total",
                "Log page reads that waited because every log-read thread was busy",
            )
            .map_err(|e| StoreError::Connection(e.to_string()))?,
            now: Arc::default(),
        };
        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let (rx, db, conn) = (rx.clone(), db.clone(), db.connect()?);
            std::thread::Builder::new()
                .name(format!("vulcan-log-read-{i}"))
                .spawn(move || reader(rx, db, conn))
                .map_err(|e| {
                    StoreError::Connection(format!("cannot start a log-read thread: {e}"))
                })?;
        }
        Ok(Self {
            jobs: tx,
            free: Arc::new(Semaphore::new(threads)),
            gauges,
        })
    }

    /// The pool's metrics, to register with the server's.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.gauges.running.clone()),
            Box::new(self.gauges.peak.clone()),
            Box::new(self.gauges.queued.clone()),
        ]
    }

    /// Run `op` on a log-read thread (waiting for one to be free) and answer its result.
    pub async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let permit = match self.free.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                self.gauges.queued.inc();
                self.free
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| StoreError::Unavailable)?
            }
            Err(TryAcquireError::Closed) => return Err(StoreError::Unavailable),
        };
        let (tx, rx) = oneshot::channel();
        let gauges = self.gauges.clone();
        let job: Job = Box::new(move |conn| {
            let _permit = permit;
            let out = {
                let _running = gauges.running();
                op(conn)
            };
            let _ = tx.send(out);
        });
        self.jobs.send(job).map_err(|_| StoreError::Unavailable)?;
        rx.await.unwrap_or(Err(StoreError::Unavailable))
    }
}

/// One log-read thread: lowers its own priority, then runs jobs until the pool is gone.
fn reader(jobs: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>, db: Database, conn: DbConnection) {
    super::lower_this_threads_priority("log-read thread");
    let mut conn = Some(conn);
    loop {
        // One thread waits in `blocking_recv`, the others for the lock: jobs go to
        // whichever is free, in order.
        let job = match jobs.lock() {
            Ok(mut rx) => rx.blocking_recv(),
            Err(_) => return,
        };
        let Some(job) = job else { return };
        let c = match conn.take() {
            Some(c) => c,
            None => match db.connect() {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("log-read thread: cannot open the database: {e}");
                    // The job's answer channel is dropped: its caller gets `Unavailable`.
                    drop(job);
                    continue;
                }
            },
        };
        let mut c = c;
        // A panicking job must not take the thread with it; its connection is dropped
        // (its caller gets `Unavailable`) and the next job opens a fresh one.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut c))).is_ok() {
            conn = Some(c);
        }
    }
}
