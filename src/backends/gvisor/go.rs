//! `go` workloads: built inside the sandbox once, then only run.
//!
//! A cold run is two sandboxes on the same bundle: the first runs `go build` (no
//! workload code executes there) with a private scratch directory mounted at
//! [`OUT_MOUNT`]; once it is gone, the host adopts the single regular file it left (see
//! [`go_cache::adopt`]), stores a copy in the [`GoCache`] and runs the binary in a
//! second sandbox, mounted read-only at [`PROG_MOUNT`]. A warm run finds a verified
//! entry and only does the second step, with the entry itself mounted read-only. The
//! build and the run share the workload's limits, deadline, cancellation and log; a
//! failed build is reported with its exit code and never cached.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::bundle::{BindMount, BundleLayout, SpecParams, SANDBOX_UID};
use super::go_cache::{self, GoLease};
use super::{write_spec, Inner};
use crate::backends::{BackendError, ExecContext, WorkloadResult, WorkloadSpec};
use crate::model::Runtime;

/// Where the build writes, inside the sandbox (a private, empty, writable directory).
const OUT_MOUNT: &str = "/out";

/// The file the build must leave in [`OUT_MOUNT`].
const OUT_NAME: &str = "main";

/// Where the built binary appears read-only, inside the sandbox.
const PROG_MOUNT: &str = "/app/main";

/// Run one go workload in the bundle of `spec.id`, and remove everything it used.
pub(super) async fn execute(
    inner: Arc<Inner>,
    spec: WorkloadSpec,
    ctx: ExecContext,
) -> Result<WorkloadResult, BackendError> {
    let container_id = Inner::container_id(spec.id);
    // A leftover of an earlier attempt would keep its old cgroup limits.
    inner.clone().teardown(container_id.clone()).await;
    let result = build_and_run(&inner, spec, &ctx, &container_id).await;
    inner.teardown(container_id).await;
    result
}

/// How the first sandbox of a run is set up.
enum Plan {
    /// A verified cache entry: only run it.
    Warm(GoLease),
    /// Build first; store the result under the key, if there is one.
    Cold(Option<String>),
}

async fn build_and_run(
    inner: &Arc<Inner>,
    spec: WorkloadSpec,
    ctx: &ExecContext,
    container_id: &str,
) -> Result<WorkloadResult, BackendError> {
    let input = spec.input.clone();
    let max_output = spec.max_output_bytes;
    let prep_inner = inner.clone();
    let prep_id = container_id.to_string();
    let (layout, params, plan) = blocking(move || {
        let plan = prep_inner.go_plan(&spec);
        let (layout, mut params) = prep_inner.prepare_bundle(&spec, &prep_id)?;
        let internal = |what: &str, e: std::io::Error| {
            BackendError::Internal(format!("gvisor: {what} for {prep_id}: {e}"))
        };
        create_mount_points(&layout).map_err(|e| internal("cannot prepare the go mounts", e))?;
        match &plan {
            Plan::Warm(lease) => set_run(&mut params, lease.path()),
            Plan::Cold(_) => set_build(&layout, &mut params, prep_inner.toolchain_path()?)
                .map_err(|e| internal("cannot prepare the build", e))?,
        }
        write_spec(&layout, &params, &prep_id)?;
        Ok((layout, params, plan))
    })
    .await?;

    let key = match plan {
        Plan::Warm(lease) => {
            let result = inner
                .run(&layout.dir, false, container_id, input, max_output, ctx)
                .await;
            drop(lease);
            return result;
        }
        Plan::Cold(key) => key,
    };

    let built = inner
        .run(
            &layout.dir,
            false,
            container_id,
            Vec::new(),
            max_output,
            ctx,
        )
        .await?;
    if let Some(error) = &built.error {
        return Ok(WorkloadResult {
            exit_code: built.exit_code,
            output: Vec::new(),
            error: Some(format!(
                "go build failed: {error} (the compiler's messages are in the logs)"
            )),
            duration_ms: built.duration_ms,
        });
    }
    // The building sandbox must be gone before the host reads what it left.
    inner.release(container_id, false).await;

    let step_inner = inner.clone();
    let step_id = container_id.to_string();
    let adopted = blocking(move || {
        let prog = layout.dir.join("prog");
        let cap = step_inner.cfg.max_file_mb.saturating_mul(1024 * 1024);
        let (size, sha256) =
            match go_cache::adopt(&layout.dir.join("out").join(OUT_NAME), &prog, cap) {
                Ok(measured) => measured,
                Err(e) => return Ok(Err(format!("the go build left no usable binary: {e}"))),
            };
        if let (Some(key), Some(cache)) = (&key, step_inner.go_cache.get()) {
            if let Err(e) = cache.insert(key, &prog, size, &sha256) {
                log::warn!("gvisor: cannot store the go binary of {step_id}: {e}");
            }
        }
        // The run sees the work directory as a warm run would: without build leftovers.
        for dir in [".cache", ".go"] {
            let _ = fs::remove_dir_all(layout.work.join(dir));
        }
        let _ = fs::remove_dir_all(layout.dir.join("out"));
        let mut params = params;
        params.extra_mounts.clear();
        set_run(&mut params, prog);
        write_spec(&layout, &params, &step_id)?;
        Ok(Ok(layout))
    })
    .await?;
    let layout = match adopted {
        Ok(layout) => layout,
        Err(error) => {
            return Ok(WorkloadResult {
                exit_code: None,
                output: Vec::new(),
                error: Some(error),
                duration_ms: built.duration_ms,
            })
        }
    };
    let mut result = inner
        .run(&layout.dir, false, container_id, input, max_output, ctx)
        .await?;
    result.duration_ms = result.duration_ms.saturating_add(built.duration_ms);
    Ok(result)
}

impl Inner {
    /// Warm when the cache holds a verified binary of this payload and toolchain.
    fn go_plan(&self, spec: &WorkloadSpec) -> Plan {
        let Some(cache) = self.go_cache.get() else {
            return Plan::Cold(None);
        };
        let toolchain = self.go_toolchain.get_or_init(|| {
            let go = self.toolchains.get(Runtime::Go)?;
            go_cache::toolchain_key(go)
                .map_err(|e| log::warn!("gvisor: cannot hash {}: {e}", go.display()))
                .ok()
        });
        let Some(toolchain) = toolchain else {
            return Plan::Cold(None);
        };
        let key = go_cache::key(toolchain, &spec.payload);
        match cache.lookup(&key) {
            Some(lease) => Plan::Warm(lease),
            None => Plan::Cold(Some(key)),
        }
    }

    fn toolchain_path(&self) -> Result<&Path, BackendError> {
        self.toolchains.get(Runtime::Go).ok_or_else(|| {
            BackendError::Unsupported(
                "runtime go is not available on this host's gvisor backend".into(),
            )
        })
    }
}

/// The destinations of the go mounts, in the read-only root file system.
fn create_mount_points(layout: &BundleLayout) -> std::io::Result<()> {
    let out = layout.rootfs.join(OUT_MOUNT.trim_start_matches('/'));
    fs::create_dir(&out)?;
    let prog = layout.rootfs.join(PROG_MOUNT.trim_start_matches('/'));
    if let Some(parent) = prog.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&prog, b"")?;
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o555))
}

/// The build sandbox: `go build` of what `go run` would have run, into a scratch
/// directory only the sandbox user can write.
fn set_build(layout: &BundleLayout, params: &mut SpecParams, go: &Path) -> std::io::Result<()> {
    let out = layout.dir.join("out");
    fs::create_dir(&out)?;
    fs::set_permissions(&out, fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::lchown(&out, Some(SANDBOX_UID), Some(SANDBOX_UID))?;
    let run = super::command_line(Runtime::Go, go, &layout.work, "main.go");
    let mut args = vec![
        go.to_string_lossy().into_owned(),
        "build".to_string(),
        // `go run` stamps no version control data either (and there is no git inside).
        "-buildvcs=false".to_string(),
        "-o".to_string(),
        format!("{OUT_MOUNT}/{OUT_NAME}"),
    ];
    // `go run <files…>` / `go run .`: the same targets.
    args.extend(run.into_iter().skip(2));
    params.args = args;
    params.extra_mounts.push(BindMount {
        destination: OUT_MOUNT.to_string(),
        source: out,
        readonly: false,
    });
    Ok(())
}

/// The run sandbox: the binary at `prog`, read-only, started in the work directory.
fn set_run(params: &mut SpecParams, prog: PathBuf) {
    params.args = vec![PROG_MOUNT.to_string()];
    params.extra_mounts.push(BindMount {
        destination: PROG_MOUNT.to_string(),
        source: prog,
        readonly: true,
    });
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackendError::Internal(format!("gvisor: go preparation panicked: {e}")))?
}
