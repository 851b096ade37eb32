//! A fixed pool of worker threads that run engine jobs.
//!
//! QuickJS runtimes are `!Send` and sync WASI blocks, so neither may run on an actix or
//! tokio thread. Each job is a closure sent over a channel to whichever worker is free;
//! its answer comes back through a tokio oneshot so callers can `.await` it from any
//! async context.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use tokio::sync::oneshot;

use crate::backends::BackendError;

/// Stack of each worker thread. QuickJS's own stack limit
/// ([`super::js::JS_MAX_STACK_BYTES`]) and wasmtime's (`max_wasm_stack`, 512 KiB by
/// default) sit well below it, so deep recursion in a workload ends in a catchable
/// error, never in a host stack overflow.
const WORKER_STACK_BYTES: usize = 8 * 1024 * 1024;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The worker threads and the queue feeding them.
///
/// Invariant: exactly `size` threads exist while the pool is alive; they exit once the
/// pool (the only sender) is dropped and the queue is drained.
pub(super) struct WorkerPool {
    sender: Mutex<mpsc::Sender<Job>>,
    size: usize,
}

impl WorkerPool {
    /// Spawn `size` named worker threads.
    pub(super) fn new(size: usize) -> Result<Self, BackendError> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for n in 0..size {
            let receiver = Arc::clone(&receiver);
            thread::Builder::new()
                .name(format!("isolate-worker-{n}"))
                .stack_size(WORKER_STACK_BYTES)
                .spawn(move || worker_loop(&receiver))
                .map_err(|e| BackendError::Internal(format!("cannot spawn worker thread: {e}")))?;
        }
        Ok(Self {
            sender: Mutex::new(sender),
            size,
        })
    }

    /// Number of worker threads.
    pub(super) fn size(&self) -> usize {
        self.size
    }

    /// Run `job` on a worker and wait for its answer. A job that panics yields
    /// [`BackendError::Internal`] and leaves the worker usable.
    pub(super) async fn run<T, F>(&self, job: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, BackendError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let wrapped: Job = Box::new(move || {
            let outcome = catch_unwind(AssertUnwindSafe(job)).unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Err(BackendError::Internal(format!("engine panicked: {what}")))
            });
            // The caller may have gone away (its future dropped); nothing to do then.
            let _ = tx.send(outcome);
        });
        {
            let sender = self
                .sender
                .lock()
                .map_err(|_| BackendError::Internal("worker queue poisoned".into()))?;
            sender
                .send(wrapped)
                .map_err(|_| BackendError::Unavailable("worker threads have stopped".into()))?;
        }
        rx.await
            .map_err(|_| BackendError::Internal("worker dropped the job".into()))?
    }
}

fn worker_loop(receiver: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // Hold the lock only while taking a job, never while running it.
        let job = match receiver.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}
