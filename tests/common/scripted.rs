//! A scripted backend for engine tests. The workload's `code` is a JSON script:
//!
//! `{"delay_ms": 50, "logs": ["a", "b"], "log_interval_ms": 5, "log_burst": 1,
//!   "log_repeat": 1, "output": {...},
//!   "raw_output": "text", "error": "boom", "exit_code": 3, "panic": "why",
//!   "ignore_cancel_ms": 300, "late_output": {...}}`
//!
//! It records what it saw (executions, cancellations, cleanups) so tests can prove the
//! engine really cancelled and cleaned up.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::Deserialize;
use vulcan::backends::{
    Backend, BackendCapabilities, BackendError, BackendFactory, BackendHealth, CancellationToken,
    ExecContext, Preparation, Prepared, WorkloadResult, WorkloadSpec,
};
use vulcan::model::{Isolation, Payload, Runtime, WorkloadId};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Script {
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    logs: Vec<String>,
    #[serde(default)]
    log_interval_ms: u64,
    /// Lines printed between two pauses of `log_interval_ms` (default 1).
    #[serde(default)]
    log_burst: usize,
    /// Print `logs` this many times over (default 1): big logs from a small script.
    #[serde(default)]
    log_repeat: usize,
    output: Option<serde_json::Value>,
    raw_output: Option<String>,
    error: Option<String>,
    exit_code: Option<i32>,
    panic: Option<String>,
    #[serde(default)]
    ignore_cancel_ms: u64,
    late_output: Option<serde_json::Value>,
}

/// What the backend observed.
#[derive(Debug, Default)]
pub struct Observed {
    /// Executions started.
    pub started: AtomicUsize,
    /// Executions running right now.
    pub running: AtomicUsize,
    /// Highest `running` seen.
    pub max_running: AtomicUsize,
    /// Ids whose cancellation signal was seen.
    pub cancelled: Mutex<HashSet<WorkloadId>>,
    /// Ids cleaned up.
    pub cleaned: Mutex<HashSet<WorkloadId>>,
    /// Instances built (1 + restarts).
    pub instances: AtomicUsize,
    /// Executions started, per workload.
    pub runs: Mutex<std::collections::HashMap<WorkloadId, usize>>,
}

impl Observed {
    /// Whether the cancellation of `id` was seen.
    pub fn saw_cancel(&self, id: &str) -> bool {
        let id: WorkloadId = id.parse().expect("id");
        self.cancelled.lock().expect("lock").contains(&id)
    }

    /// Whether `id` was cleaned up.
    pub fn saw_cleanup(&self, id: &str) -> bool {
        let id: WorkloadId = id.parse().expect("id");
        self.cleaned.lock().expect("lock").contains(&id)
    }
}

/// The scripted backend.
pub struct Scripted {
    caps: BackendCapabilities,
    health: BackendHealth,
    seen: Arc<Observed>,
    prepare: Duration,
}

/// Options for [`factory`].
#[derive(Clone)]
pub struct Options {
    /// Registry name.
    pub name: String,
    /// Class it provides.
    pub isolation: Isolation,
    /// Runtimes it accepts.
    pub runtimes: Vec<Runtime>,
    /// Concurrency.
    pub max_concurrency: usize,
    /// `None` = healthy.
    pub unavailable: Option<String>,
    /// Each admitted workload is prepared (as an image pull would be) for this long
    /// before it may get a slot; 0 = no preparation.
    pub prepare_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            name: "scripted".into(),
            isolation: Isolation::Isolate,
            runtimes: vec![Runtime::Node, Runtime::Wasm, Runtime::Python, Runtime::Go],
            max_concurrency: 64,
            unavailable: None,
            prepare_ms: 0,
        }
    }
}

/// A factory for the engine, and the shared observations.
pub fn factory(opts: Options) -> (BackendFactory, Arc<Observed>) {
    let seen = Arc::new(Observed::default());
    let s = seen.clone();
    let f: BackendFactory = Arc::new(move || {
        s.instances.fetch_add(1, Ordering::SeqCst);
        Arc::new(Scripted {
            caps: BackendCapabilities {
                name: opts.name.clone(),
                supported_runtimes: opts.runtimes.clone(),
                supported_isolations: vec![opts.isolation],
                max_concurrency: opts.max_concurrency,
            },
            health: match &opts.unavailable {
                None => BackendHealth::Healthy,
                Some(r) => BackendHealth::unavailable(r.clone(), format!("{r} (detail)")),
            },
            seen: s.clone(),
            prepare: Duration::from_millis(opts.prepare_ms),
        }) as Arc<dyn Backend>
    });
    (f, seen)
}

struct RunningGuard(Arc<Observed>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend for Scripted {
    fn capabilities(&self) -> BackendCapabilities {
        self.caps.clone()
    }

    fn health(&self) -> BackendHealth {
        self.health.clone()
    }

    fn prepare(&self, _: &WorkloadSpec, cancel: CancellationToken) -> Option<Preparation> {
        if self.prepare.is_zero() {
            return None;
        }
        let wait = self.prepare;
        Some(Box::pin(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => Ok(Prepared::new(())),
                _ = cancel.cancelled() => Err(BackendError::Cancelled),
            }
        }))
    }

    fn execute(
        &self,
        spec: WorkloadSpec,
        ctx: ExecContext,
    ) -> BoxFuture<'static, Result<WorkloadResult, BackendError>> {
        let seen = self.seen.clone();
        Box::pin(async move {
            let script: Script = match &spec.payload {
                Payload::Code(c) => serde_json::from_str(c)
                    .map_err(|e| BackendError::InvalidPayload(format!("bad script: {e}")))?,
                _ => return Err(BackendError::InvalidPayload("scripts are code".into())),
            };
            seen.started.fetch_add(1, Ordering::SeqCst);
            *seen.runs.lock().expect("lock").entry(spec.id).or_default() += 1;
            let now = seen.running.fetch_add(1, Ordering::SeqCst) + 1;
            seen.max_running.fetch_max(now, Ordering::SeqCst);
            let _guard = RunningGuard(seen.clone());
            let started = Instant::now();
            let cancelled = |seen: &Observed| {
                seen.cancelled.lock().expect("lock").insert(spec.id);
            };
            let burst = script.log_burst.max(1);
            let all = script
                .logs
                .iter()
                .cycle()
                .take(script.logs.len() * script.log_repeat.max(1));
            for (i, line) in all.enumerate() {
                ctx.log.line(line.clone());
                if script.log_interval_ms > 0 && (i + 1) % burst == 0 {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(script.log_interval_ms)) => {}
                        _ = ctx.cancel.cancelled() => {
                            cancelled(&seen);
                            return Err(BackendError::Cancelled);
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(script.delay_ms)) => {}
                _ = ctx.cancel.cancelled() => {
                    cancelled(&seen);
                    if script.ignore_cancel_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(script.ignore_cancel_ms)).await;
                        let output = script.late_output.map(|v| v.to_string().into_bytes()).unwrap_or_default();
                        return Ok(WorkloadResult { exit_code: Some(0), output, error: None, duration_ms: 1 });
                    }
                    return Err(BackendError::Cancelled);
                }
            }
            if let Some(msg) = script.panic {
                panic!("{msg}");
            }
            let output = match (script.output, script.raw_output) {
                (Some(v), _) => v.to_string().into_bytes(),
                (None, Some(raw)) => raw.into_bytes(),
                (None, None) => Vec::new(),
            };
            Ok(WorkloadResult {
                exit_code: script.exit_code.or(Some(0)),
                output,
                error: script.error,
                duration_ms: started.elapsed().as_millis() as u64,
            })
        })
    }

    fn cleanup(&self, id: WorkloadId) -> BoxFuture<'static, ()> {
        let seen = self.seen.clone();
        Box::pin(async move {
            seen.cleaned.lock().expect("lock").insert(id);
        })
    }
}

/// A script body: `{"runtime": runtime, "code": <script JSON>}`.
pub fn job(runtime: &str, script: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"runtime": runtime, "code": script.to_string()})
}

/// Submit a scripted workload that runs for a minute and wait until it is running: with
/// `max_concurrency: 1` it holds the only slot, so later submissions stay queued.
pub async fn occupy_slot(app: &super::TestApp) -> String {
    let w = app
        .submit_async(&job("node", serde_json::json!({"delay_ms": 60000})))
        .await;
    let id = w["id"].as_str().expect("id").to_string();
    app.wait_status(&id, "running", Duration::from_secs(10))
        .await;
    id
}
