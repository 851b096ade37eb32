//! The server side of the isolate workers: a pool of confined worker processes.
//!
//! The pool keeps `size` workers (pre-spawned; `size` is the backend's concurrency).
//! An execution takes an idle worker, sends it the job and relays its log lines until
//! the result comes. The server owns the deadline: on cancel or deadline it sends
//! `Cancel`, and a worker that has not answered within the grace is SIGKILLed. A worker
//! that dies, breaks the protocol or is killed fails only the job it was running
//! ("worker crashed: …", never retried) and is replaced in the background; every
//! replacement is counted, per slot and in total.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use super::cgroup::{CgroupParent, WorkerCgroup};
use super::protocol::{
    self, FromWorker, Outcome, Program, RunRequest, ToWorker, WorkerInit, FRAME_OVERHEAD,
    MAX_ERROR_BYTES,
};
use crate::backends::{BackendError, ExecContext, WorkerInfo, WorkloadResult};

/// How long a fresh worker may take to confine itself and answer `Ready`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a dead or killed worker's exit status is waited for.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// First and longest pause between attempts to start a worker that failed to start.
const RESPAWN_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

/// Bytes of a worker's standard error kept for crash reports.
const STDERR_TAIL_BYTES: usize = 2048;

/// Lines of a worker's standard error copied to the server log (per worker life).
const STDERR_LOG_LINES: usize = 20;

/// Everything needed to start a worker.
pub(super) struct Settings {
    /// The `vulcan` executable (run as `vulcan worker`).
    pub path: PathBuf,
    /// The first frame every worker gets (`address_space_bytes` is filled per worker).
    pub init: WorkerInit,
    /// The server-wide output cap: bounds every frame a worker may send.
    pub max_output_bytes: usize,
    /// Hard memory limit of each worker's cgroup.
    pub memory_bytes: u64,
    /// `RLIMIT_AS` used when no cgroup backs the worker.
    pub address_space_fallback: u64,
    /// Memory cgroups, when they can be used (root, a memory controller).
    pub cgroups: Option<CgroupParent>,
    /// Why there are no cgroups, when there are none.
    pub cgroup_problem: Option<String>,
    /// How long a worker has to answer a cancel before it is killed.
    pub cancel_grace: Duration,
}

/// A live, confined, idle or busy worker process.
struct Worker {
    slot: usize,
    pid: u32,
    child: Child,
    frames: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    writer: OwnedWriteHalf,
    stderr: Arc<Mutex<VecDeque<u8>>>,
    cgroup: Option<WorkerCgroup>,
    jobs: u64,
}

impl Worker {
    async fn send(&mut self, msg: &ToWorker) -> std::io::Result<()> {
        let frame = protocol::encode(msg)?;
        self.writer.write_all(&frame).await
    }

    fn stderr_tail(&self) -> String {
        let tail = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        let bytes: Vec<u8> = tail.iter().copied().collect();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string()
    }

    /// SIGKILL (idempotent) and wait for the exit status.
    async fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        let _ = self.child.start_kill();
        self.reap().await
    }

    async fn reap(&mut self) -> Option<ExitStatus> {
        match tokio::time::timeout(REAP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                let _ = self.child.start_kill();
                None
            }
        }
    }
}

#[derive(Debug, Clone)]
struct SlotStatus {
    state: &'static str,
    pid: Option<u32>,
    restarts: u64,
    last_error: Option<String>,
}

#[derive(Debug)]
struct Status {
    slots: Vec<SlotStatus>,
    restarts: u64,
    limitations: Vec<String>,
}

/// The pool. See the module documentation.
///
/// Invariant: `ready` holds exactly one permit per worker in `idle`; every slot has at
/// most one worker, idle, busy (owned by an execution) or being started.
pub(super) struct WorkerPool {
    settings: Settings,
    size: usize,
    idle: Mutex<Vec<Worker>>,
    ready: Semaphore,
    status: Mutex<Status>,
}

impl WorkerPool {
    /// Create the pool and start its `size` workers in the background (needs a tokio
    /// runtime). Executions wait for the first one to be ready.
    pub(super) fn start(settings: Settings, size: usize) -> Result<Arc<Self>, BackendError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            BackendError::Internal("the isolate backend needs a tokio runtime".into())
        })?;
        let mut limitations = Vec::new();
        if let Some(problem) = &settings.cgroup_problem {
            limitations.push(problem.clone());
        }
        let pool = Arc::new(Self {
            settings,
            size,
            idle: Mutex::new(Vec::new()),
            ready: Semaphore::new(0),
            status: Mutex::new(Status {
                slots: vec![
                    SlotStatus {
                        state: "starting",
                        pid: None,
                        restarts: 0,
                        last_error: None,
                    };
                    size
                ],
                restarts: 0,
                limitations,
            }),
        });
        for slot in 0..size {
            handle.spawn(fill(Arc::downgrade(&pool), slot));
        }
        Ok(pool)
    }

    fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Worker>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of workers.
    pub(super) fn size(&self) -> usize {
        self.size
    }

    /// Unavailable when no worker can be started (every slot failed its last start).
    pub(super) fn health(&self) -> crate::backends::BackendHealth {
        let status = self.status();
        if !status.slots.is_empty() && status.slots.iter().all(|s| s.state == "failed") {
            let why = status.slots[0]
                .last_error
                .clone()
                .unwrap_or_else(|| "unknown".into());
            // The cause may name the worker executable or a cgroup path: log only.
            return crate::backends::BackendHealth::unavailable(
                "no isolate worker can be started (the server log says why)",
                format!("no isolate worker can be started: {why}"),
            );
        }
        crate::backends::BackendHealth::Healthy
    }

    /// Replacements since the pool started.
    pub(super) fn restarts(&self) -> u64 {
        self.status().restarts
    }

    /// Protections that could not be applied (server side and as reported by workers).
    pub(super) fn limitations(&self) -> Vec<String> {
        self.status().limitations.clone()
    }

    /// One entry per worker slot.
    pub(super) fn workers(&self, backend: &str) -> Vec<WorkerInfo> {
        self.status()
            .slots
            .iter()
            .enumerate()
            .map(|(n, s)| WorkerInfo {
                name: format!("worker:{backend}/{n}"),
                state: s.state,
                pid: s.pid,
                restarts: s.restarts,
                last_error: s.last_error.clone(),
            })
            .collect()
    }

    fn set_slot(&self, slot: usize, state: &'static str, pid: Option<u32>) {
        if let Some(s) = self.status().slots.get_mut(slot) {
            s.state = state;
            s.pid = pid;
        }
    }

    /// Put a worker back for the next job.
    fn release(&self, worker: Worker) {
        self.set_slot(worker.slot, "idle", Some(worker.pid));
        self.idle().push(worker);
        self.ready.add_permits(1);
    }

    /// Take an idle, live worker (waiting for one if none is idle).
    async fn acquire(self: &Arc<Self>) -> Result<Worker, BackendError> {
        loop {
            let permit = self
                .ready
                .acquire()
                .await
                .map_err(|_| BackendError::Unavailable("the worker pool is closed".into()))?;
            permit.forget();
            let Some(mut worker) = self.idle().pop() else {
                // Cannot happen (one permit per idle worker); do not spin on it.
                return Err(BackendError::Internal("worker pool out of step".into()));
            };
            match worker.child.try_wait() {
                Ok(None) => {
                    self.set_slot(worker.slot, "busy", Some(worker.pid));
                    return Ok(worker);
                }
                // Died while idle (killed from outside): no job is to blame.
                _ => {
                    let status = worker.reap().await;
                    let what =
                        describe_exit(status, worker.cgroup.as_ref(), &worker.stderr_tail(), None);
                    log::warn!("isolate worker {} died while idle: {what}", worker.pid);
                    self.retire(worker, format!("died while idle: {what}"));
                }
            }
        }
    }

    /// Forget `worker` (its process is dead or being killed) and start a replacement.
    fn retire(self: &Arc<Self>, worker: Worker, reason: String) {
        let slot = worker.slot;
        {
            let mut status = self.status();
            status.restarts += 1;
            if let Some(s) = status.slots.get_mut(slot) {
                s.state = "starting";
                s.pid = None;
                s.restarts += 1;
                s.last_error = Some(reason);
            }
        }
        // Dropping the worker kills its process (kill_on_drop).
        drop(worker);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(fill(Arc::downgrade(self), slot));
            }
            // The runtime is shutting down, and the pool with it.
            Err(_) => log::debug!("isolate worker slot {slot}: not replaced (no runtime)"),
        }
    }

    /// Run one job on a worker, relaying its log lines to `ctx.log`.
    ///
    /// A worker that died while idle (killed from outside) can still be handed the job
    /// before its death is noticed; the job then cannot be sent. No guest code ran, so the
    /// job goes to another worker (at most [`DELIVERY_ATTEMPTS`] tries) instead of
    /// failing a workload for a death it did not cause.
    pub(super) async fn run(
        self: &Arc<Self>,
        program: Program,
        input: Vec<u8>,
        mem_mb: u32,
        max_output_bytes: usize,
        ctx: ExecContext,
    ) -> Result<WorkloadResult, BackendError> {
        let deadline = tokio::time::Instant::from_std(ctx.deadline);
        let (mut program, mut input) = (program, input);
        let mut attempt = 1;
        loop {
            let worker = tokio::select! {
                w = self.acquire() => w?,
                () = ctx.cancel.cancelled() => return Err(BackendError::Cancelled),
                () = tokio::time::sleep_until(deadline) => return Err(BackendError::Cancelled),
            };
            let started = Instant::now();
            let mut lease = Lease {
                pool: Arc::clone(self),
                worker: Some(worker),
            };
            let ending = match lease.worker.as_mut() {
                Some(worker) => {
                    self.drive(worker, program, input, mem_mb, max_output_bytes, &ctx)
                        .await
                }
                None => return Err(BackendError::Internal("lease without a worker".into())),
            };
            let Some(mut worker) = lease.worker.take() else {
                return Err(BackendError::Internal("lease without a worker".into()));
            };
            return match ending {
                Ending::Answered(result) => {
                    self.release(worker);
                    result
                }
                Ending::NotDelivered {
                    why,
                    program: p,
                    input: i,
                } if attempt < DELIVERY_ATTEMPTS => {
                    log::warn!(
                        "isolate worker {}: the job could not be sent ({why}); \
                         the worker is replaced and the job goes to another",
                        worker.pid
                    );
                    let _ = worker.kill_and_reap().await;
                    self.retire(worker, format!("died before taking a job: {why}"));
                    (program, input) = (p, i);
                    attempt += 1;
                    continue;
                }
                Ending::NotDelivered { why, .. } => Ok(self
                    .crashed(
                        worker,
                        started,
                        Some(format!("the job could not be sent: {why}")),
                    )
                    .await),
                Ending::Crashed(violation) => Ok(self.crashed(worker, started, violation).await),
                Ending::Unresponsive => {
                    let grace_ms = self.settings.cancel_grace.as_millis();
                    log::warn!(
                        "isolate worker {}: no answer {grace_ms} ms after a cancel; killing it",
                        worker.pid
                    );
                    let _ = worker.kill_and_reap().await;
                    self.retire(
                        worker,
                        format!("killed: did not stop within {grace_ms} ms of a cancel"),
                    );
                    Err(BackendError::Cancelled)
                }
            };
        }
    }

    /// Send the job and follow the conversation until it ends one way or another.
    async fn drive(
        &self,
        worker: &mut Worker,
        program: Program,
        input: Vec<u8>,
        mem_mb: u32,
        max_output_bytes: usize,
        ctx: &ExecContext,
    ) -> Ending {
        let deadline = tokio::time::Instant::from_std(ctx.deadline);
        worker.jobs += 1;
        let job = worker.jobs;
        let request = ToWorker::Run(RunRequest {
            job,
            program,
            input,
            mem_mb,
            max_output_bytes,
            // Rounded up: the worker must never stop before the server's deadline (a stop
            // it reports before then would not read as the timeout it is).
            timeout_ms: u64::try_from(
                ctx.deadline
                    .saturating_duration_since(Instant::now())
                    .as_micros()
                    .div_ceil(1000),
            )
            .unwrap_or(u64::MAX),
        });
        if let Err(e) = worker.send(&request).await {
            let why = e.to_string();
            return match request {
                ToWorker::Run(r) => Ending::NotDelivered {
                    why,
                    program: r.program,
                    input: r.input,
                },
                _ => Ending::Crashed(Some(format!("the job could not be sent: {why}"))),
            };
        }
        // Set once a cancel went out: the instant the worker is killed if still busy.
        let mut kill_at: Option<tokio::time::Instant> = None;
        loop {
            let grace = async {
                match kill_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                frame = worker.frames.next() => {
                    let message = match frame {
                        Some(Ok(bytes)) => protocol::decode::<FromWorker>(&bytes)
                            .map_err(|e| format!("protocol violation: {e}")),
                        Some(Err(e)) => Err(format!("protocol violation: {e}")),
                        // The socket closed: the process is dead or dying.
                        None => return Ending::Crashed(None),
                    };
                    match message {
                        Ok(FromWorker::Log { job: j, line }) if j == job => ctx.log.line(line),
                        Ok(FromWorker::Done { job: j, outcome }) if j == job => {
                            return Ending::Answered(outcome_result(outcome));
                        }
                        Ok(other) => {
                            let what = format!("protocol violation: unexpected {}", kind(&other));
                            return Ending::Crashed(Some(what));
                        }
                        Err(what) => return Ending::Crashed(Some(what)),
                    }
                }
                () = ctx.cancel.cancelled(), if kill_at.is_none() => {
                    kill_at = Some(self.cancel(worker, job).await);
                }
                () = tokio::time::sleep_until(deadline), if kill_at.is_none() => {
                    kill_at = Some(self.cancel(worker, job).await);
                }
                () = grace => return Ending::Unresponsive,
            }
        }
    }

    /// Ask the worker to stop `job`; returns when it gets killed if it does not.
    async fn cancel(&self, worker: &mut Worker, job: u64) -> tokio::time::Instant {
        // A failed write means the worker is dying: the frame loop sees it next.
        let _ = worker.send(&ToWorker::Cancel { job }).await;
        tokio::time::Instant::now() + self.settings.cancel_grace
    }

    /// The worker died or broke the protocol during a job: the job fails with what
    /// happened, and the worker is replaced.
    async fn crashed(
        self: &Arc<Self>,
        mut worker: Worker,
        started: Instant,
        violation: Option<String>,
    ) -> WorkloadResult {
        let status = if violation.is_some() {
            worker.kill_and_reap().await
        } else {
            worker.reap().await
        };
        let what = describe_exit(
            status,
            worker.cgroup.as_ref(),
            &worker.stderr_tail(),
            violation,
        );
        log::warn!("isolate worker {} crashed: {what}", worker.pid);
        self.retire(worker, format!("crashed: {what}"));
        WorkloadResult {
            exit_code: None,
            output: Vec::new(),
            error: Some(format!("worker crashed: {what}")),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// How a job's conversation with its worker ended.
enum Ending {
    /// The worker answered the job (done, stopped or invalid): it is fine for the next.
    Answered(Result<WorkloadResult, BackendError>),
    /// The worker died or broke the protocol (`Some` says how it broke it).
    Crashed(Option<String>),
    /// The worker did not answer a cancel within the grace.
    Unresponsive,
    /// The job could not be written to the worker (it is dead): nothing ran; the job's
    /// program and input come back for another worker.
    NotDelivered {
        /// The write's error.
        why: String,
        /// The job's program, unused.
        program: Program,
        /// The job's input, unused.
        input: Vec<u8>,
    },
}

/// How many workers a job may be offered to when the ones before were found dead.
const DELIVERY_ATTEMPTS: u32 = 3;

/// A worker taken for a job. Whoever drops it still holding the worker (an execution
/// abandoned half-way) retires the worker: its state is unknown, so it is replaced.
struct Lease {
    pool: Arc<WorkerPool>,
    worker: Option<Worker>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            self.pool
                .retire(worker, "killed: its execution was abandoned".into());
        }
    }
}

fn kind(msg: &FromWorker) -> &'static str {
    match msg {
        FromWorker::Ready { .. } => "Ready",
        FromWorker::Log { .. } => "Log for another job",
        FromWorker::Done { .. } => "Done for another job",
        FromWorker::ProbeResult(_) => "ProbeResult",
    }
}

fn outcome_result(outcome: Outcome) -> Result<WorkloadResult, BackendError> {
    match outcome {
        Outcome::Finished {
            exit_code,
            output,
            error,
            duration_us,
        } => Ok(WorkloadResult {
            exit_code,
            output,
            error,
            duration_ms: duration_us / 1000,
        }),
        Outcome::Stopped => Err(BackendError::Cancelled),
        Outcome::Invalid(message) => Err(BackendError::InvalidPayload(message)),
    }
}

/// What a dead worker's exit says, in words: the signal (and what it means here), the
/// OOM killer, the exit code, and the last line it printed on stderr.
fn describe_exit(
    status: Option<ExitStatus>,
    cgroup: Option<&WorkerCgroup>,
    stderr_tail: &str,
    violation: Option<String>,
) -> String {
    let oom = cgroup.is_some_and(|c| c.oom_kills() > 0);
    let mut what = match (violation, status) {
        (Some(v), _) => v,
        (None, None) => "the process did not exit".to_string(),
        (None, Some(status)) => match (status.signal(), status.code()) {
            (Some(libc::SIGKILL), _) if oom => {
                "killed by SIGKILL: out of memory (the worker's memory backstop)".to_string()
            }
            (Some(libc::SIGSYS), _) => {
                "killed by SIGSYS: a system call outside the seccomp allowlist".to_string()
            }
            (Some(sig), _) => format!("killed by {}", signal_name(sig)),
            (None, Some(code)) => format!("exited with code {code}"),
            (None, None) => "ended".to_string(),
        },
    };
    if !stderr_tail.is_empty() {
        what.push_str(&format!(" ({stderr_tail})"));
    }
    what
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGABRT => "SIGABRT (abort)",
        libc::SIGSEGV => "SIGSEGV (segmentation fault)",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

/// Start a worker for `slot` until one starts (with backoff) or the pool is gone.
async fn fill(pool: Weak<WorkerPool>, slot: usize) {
    let mut backoff = RESPAWN_BACKOFF.0;
    loop {
        let Some(strong) = pool.upgrade() else {
            return;
        };
        strong.set_slot(slot, "starting", None);
        match spawn_worker(&strong.settings, slot).await {
            Ok((worker, limitations)) => {
                {
                    let mut status = strong.status();
                    for l in limitations {
                        if !status.limitations.contains(&l) {
                            status.limitations.push(l);
                        }
                    }
                }
                strong.release(worker);
                return;
            }
            Err(e) => {
                log::error!("isolate worker {slot}: could not start: {e}");
                if let Some(s) = strong.status().slots.get_mut(slot) {
                    s.state = "failed";
                    s.last_error = Some(format!("could not start: {e}"));
                }
            }
        }
        drop(strong);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RESPAWN_BACKOFF.1);
    }
}

/// Spawn `vulcan worker`, place it in its cgroup, send `Init` and wait for `Ready`.
///
/// The worker's parent-death signal follows the spawning thread: the pool is driven from
/// the runtime that owns the backend (the actix system arbiter), which lives as long as
/// the backend does.
async fn spawn_worker(settings: &Settings, slot: usize) -> Result<(Worker, Vec<String>), String> {
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let cgroup = match &settings.cgroups {
        Some(parent) => Some(
            parent
                .create(settings.memory_bytes)
                .map_err(|e| format!("cannot create the worker's cgroup: {e}"))?,
        ),
        None => None,
    };
    let mut child = Command::new(&settings.path)
        .arg("worker")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Nothing of the server's environment (tokens, paths) reaches a worker.
        .env_clear()
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", settings.path.display()))?;
    let pid = child
        .id()
        .ok_or_else(|| "the worker exited at once".to_string())?;
    // Before Init: the worker runs nothing until it has its settings.
    if let Some(cg) = &cgroup {
        cg.place(pid).map_err(|e| {
            let _ = child.start_kill();
            format!("cannot place the worker in {}: {e}", cg.path().display())
        })?;
    }
    let stderr = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_BYTES)));
    if let Some(pipe) = child.stderr.take() {
        tokio::spawn(collect_stderr(pipe, pid, Arc::clone(&stderr)));
    }
    ours.set_nonblocking(true)
        .map_err(|e| format!("socket: {e}"))?;
    let stream = tokio::net::UnixStream::from_std(ours).map_err(|e| format!("socket: {e}"))?;
    let (read, writer) = stream.into_split();
    let max_frame = settings
        .max_output_bytes
        .max(settings.init.max_line_bytes.saturating_mul(2))
        .saturating_add(MAX_ERROR_BYTES + FRAME_OVERHEAD);
    let mut worker = Worker {
        slot,
        pid,
        child,
        frames: FramedRead::new(read, protocol::codec(max_frame)),
        writer,
        stderr,
        cgroup,
        jobs: 0,
    };
    let mut init = settings.init.clone();
    init.address_space_bytes = worker
        .cgroup
        .is_none()
        .then_some(settings.address_space_fallback);
    let handshake = async {
        worker
            .send(&ToWorker::Init(init))
            .await
            .map_err(|e| format!("sending Init: {e}"))?;
        match worker.frames.next().await {
            Some(Ok(bytes)) => match protocol::decode::<FromWorker>(&bytes) {
                Ok(FromWorker::Ready { limitations }) => Ok(limitations),
                Ok(other) => Err(format!("expected Ready, got {}", kind(&other))),
                Err(e) => Err(format!("bad Ready frame: {e}")),
            },
            Some(Err(e)) => Err(format!("bad Ready frame: {e}")),
            None => Err("the worker closed its socket before Ready".to_string()),
        }
    };
    match tokio::time::timeout(START_TIMEOUT, handshake).await {
        Ok(Ok(limitations)) => Ok((worker, limitations)),
        Ok(Err(e)) => {
            let status = worker.kill_and_reap().await;
            let exit = describe_exit(status, worker.cgroup.as_ref(), &worker.stderr_tail(), None);
            Err(format!("{e}; {exit}"))
        }
        Err(_) => {
            let _ = worker.kill_and_reap().await;
            Err(format!("no Ready within {START_TIMEOUT:?}"))
        }
    }
}

/// Keep the tail of a worker's standard error and copy its first lines to the log.
/// Reads in fixed chunks: a worker printing without newlines costs no more memory.
async fn collect_stderr(
    mut pipe: tokio::process::ChildStderr,
    pid: u32,
    tail: Arc<Mutex<VecDeque<u8>>>,
) {
    let mut chunk = vec![0u8; 4096];
    let mut logged = 0;
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let bytes = &chunk[..n];
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if logged < STDERR_LOG_LINES {
                logged += 1;
                log::warn!("isolate worker {pid}: {}", String::from_utf8_lossy(line));
            }
        }
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.extend(bytes.iter().copied());
        while tail.len() > STDERR_TAIL_BYTES {
            tail.pop_front();
        }
    }
}
