//! The `vulcan bench --gvisor` measurement: python hello through the backend versus the
//! same bundle under a bare `runsc run`, so the backend's own overhead is visible.

use std::time::{Duration, Instant};

use super::{cgroup, GvisorBackend, GvisorConfig, Inner};
use crate::backends::{Backend, BackendHealth, ExecContext, LogSink, WorkloadSpec};
use crate::model::{Isolation, Payload, Runtime, WorkloadId};

fn hello() -> WorkloadSpec {
    WorkloadSpec {
        id: WorkloadId::new(),
        runtime: Runtime::Python,
        isolation: Isolation::Gvisor,
        payload: Payload::Code("print('hello')\n".into()),
        input: b"null".to_vec(),
        cpus: 1,
        mem_mb: 128,
        timeout: Duration::from_secs(60),
        max_output_bytes: crate::config::Config::load_from(std::collections::HashMap::new())
            .map(|c| c.max_output_bytes)
            .unwrap_or(0),
    }
}

/// Run python `print('hello')` `runs` times through a fresh [`GvisorBackend`] (private
/// temporary state directory and cgroup parent), then `runs` times as a bare
/// `runsc run` of one bundle prepared the same way. Returns (backend, bare) wall times.
///
/// Needs root, `runsc` and python3 under `/usr`; otherwise returns why it cannot run.
/// Must be called from a plain thread (it runs its own async runtime).
pub fn bench_python_hello(runs: usize) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let state = tempfile::Builder::new()
        .prefix("vulcan-gvisor-bench-")
        .tempdir()
        .map_err(|e| format!("temporary state directory: {e}"))?;
    let defaults = crate::config::Config::defaults()
        .map_err(|e| format!("embedded defaults: {e}"))?
        .backends
        .gvisor;
    let cfg = GvisorConfig {
        state_dir: state.path().to_path_buf(),
        cgroup_parent: format!("vulcan-bench-{}", std::process::id()),
        ..defaults
    };
    let result = actix_web::rt::System::new().block_on(measure(&cfg, runs));
    cgroup::remove_parent_if_empty(&cfg.cgroup_parent);
    result
}

async fn measure(
    cfg: &GvisorConfig,
    runs: usize,
) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let backend = GvisorBackend::new(cfg).map_err(|e| e.to_string())?;
    if let BackendHealth::Unavailable { detail: reason, .. } = backend.health() {
        return Err(format!("gvisor backend unavailable: {reason}"));
    }
    if !backend
        .capabilities()
        .supported_runtimes
        .contains(&Runtime::Python)
    {
        return Err("python3 is not available to the gvisor backend".into());
    }
    let mut through_backend = Vec::with_capacity(runs);
    for _ in 0..runs {
        let spec = hello();
        let id = spec.id;
        let start = Instant::now();
        let ctx = ExecContext::new(LogSink::discard(), spec.timeout);
        let result = backend.execute(spec, ctx).await;
        through_backend.push(start.elapsed());
        backend.cleanup(id).await;
        let r = result.map_err(|e| format!("backend run: {e}"))?;
        if r.output != b"hello\n" {
            return Err(format!(
                "backend run answered {:?} ({:?})",
                String::from_utf8_lossy(&r.output),
                r.error
            ));
        }
    }

    let spec = hello();
    let id = Inner::container_id(spec.id);
    let inner = backend.inner.clone();
    let layout = inner.prepare(&spec, &id).map_err(|e| e.to_string())?;
    let mut bare = Vec::with_capacity(runs);
    let mut failure = None;
    for i in 0..runs {
        let start = Instant::now();
        let out = inner
            .runsc
            .run_command(&layout.dir, &format!("{id}-{i}"))
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        bare.push(start.elapsed());
        match out {
            Ok(o) if o.stdout == b"hello\n" => {}
            Ok(o) => {
                failure = Some(format!(
                    "bare runsc run answered {:?}: {}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                break;
            }
            Err(e) => {
                failure = Some(format!("cannot run runsc: {e}"));
                break;
            }
        }
    }
    inner.teardown(id).await;
    match failure {
        Some(why) => Err(why),
        None => Ok((through_backend, bare)),
    }
}
