//! The `gvisor` backend: python, go and node workloads in OCI bundles under gVisor's
//! `runsc`.
//!
//! Each execution gets a fresh bundle (see [`bundle`]) whose root file system exposes
//! the host's `/usr` read-only, with the code in a private writable `/work`, a tmpfs
//! `/tmp`, no network and no host `/etc` or environment. The workload runs as an
//! unprivileged user; memory and CPU are limited through a cgroup unique to the run,
//! processes and file sizes through rlimits. Input JSON arrives on stdin and in
//! `VULCAN_INPUT`; stdout is the output; every stdout/stderr line is logged live.
//!
//! Runs are named `vulcan-<workload id>` (container id, bundle directory and cgroup
//! leaf alike), so [`Backend::cleanup`] and the start-up sweep can find everything a
//! run may have left behind. The state directory and cgroup parent belong to one
//! server: two servers must not share them.

mod bundle;
pub(crate) mod cgroup;
mod go;
pub mod go_cache;
mod image;
pub(crate) mod runsc;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use futures_util::future::BoxFuture;
use serde::Deserialize;

use self::bundle::{BundleLayout, SpecParams, WORK_MOUNT};
use self::go_cache::GoCache;
use self::runsc::Runsc;
use super::archive::{self, ArchiveError, ArchiveLimits};
use super::isolate::looks_like_module;
use super::{
    output_exceeds, Backend, BackendCapabilities, BackendError, BackendHealth, CancellationToken,
    ExecContext, Preparation, WorkloadResult, WorkloadSpec,
};
use crate::images::{ImageLease, ImageStore};
use crate::model::{Isolation, Payload, Runtime, WorkloadId};

/// `[backends.gvisor]`: see `config/default.toml` for each key's meaning.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GvisorConfig {
    /// Register this backend.
    pub enabled: bool,
    /// Concurrent workloads; 0 = one per CPU core.
    pub max_concurrency: usize,
    /// Workloads waiting for a slot; beyond it submissions to this backend get 429.
    pub max_queue: usize,
    /// The `runsc` binary: a path, or a name looked up in `PATH`.
    pub runsc_path: String,
    /// runsc `--platform` (`ptrace` works everywhere; `kvm` needs usable hardware KVM).
    pub platform: String,
    /// Private state: bundles and runsc's `--root`. Owned by this server alone.
    pub state_dir: PathBuf,
    /// Parent of the per-run cgroups (one path component, owned by this server).
    pub cgroup_parent: String,
    /// Largest unpacked size of a code archive, in bytes.
    pub max_archive_bytes: u64,
    /// Most entries in a code archive.
    pub max_archive_entries: usize,
    /// `RLIMIT_NPROC`: processes and threads of the workload user in the sandbox.
    pub max_processes: u64,
    /// `RLIMIT_FSIZE`: largest file the workload may write, in MiB.
    pub max_file_mb: u64,
    /// Size of the sandbox's tmpfs `/tmp`, in MiB (counts against the memory limit).
    pub tmp_size_mb: u64,
    /// Most bytes of built go binaries kept for reuse (least recently used evicted
    /// first); 0 keeps none, so every go run builds.
    pub go_cache_max_bytes: u64,
}

/// Inputs larger than this are only given on stdin, not in `VULCAN_INPUT` (a single
/// environment string is limited to 128 KiB by execve).
pub(crate) const MAX_ENV_INPUT: usize = 100 * 1024;

/// How long the output readers may take to drain after the runsc process exited.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Language toolchains found on the host, under `/usr` (the only host tree the sandbox
/// sees). Paths are canonical, so they are valid inside the sandbox as well.
#[derive(Debug, Clone, Default)]
pub(crate) struct Toolchains {
    python: Option<PathBuf>,
    go: Option<PathBuf>,
    node: Option<PathBuf>,
}

impl Toolchains {
    pub(crate) fn detect() -> Self {
        Self {
            python: find_under_usr(&["/usr/local/bin/python3", "/usr/bin/python3"]),
            go: find_under_usr(&["/usr/local/go/bin/go", "/usr/local/bin/go", "/usr/bin/go"]),
            node: find_under_usr(&["/usr/local/bin/node", "/usr/bin/node", "/usr/bin/nodejs"]),
        }
    }

    pub(crate) fn get(&self, runtime: Runtime) -> Option<&Path> {
        match runtime {
            Runtime::Python => self.python.as_deref(),
            Runtime::Go => self.go.as_deref(),
            Runtime::Node => self.node.as_deref(),
            Runtime::Wasm | Runtime::Oci => None,
        }
    }

    pub(crate) fn runtimes(&self) -> Vec<Runtime> {
        [Runtime::Node, Runtime::Python, Runtime::Go]
            .into_iter()
            .filter(|r| self.get(*r).is_some())
            .collect()
    }
}

/// The first candidate that is an executable file whose real path stays under `/usr`.
fn find_under_usr(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().find_map(|c| {
        let real = fs::canonicalize(c).ok()?;
        let meta = fs::metadata(&real).ok()?;
        let executable = meta.is_file() && meta.permissions().mode() & 0o111 != 0;
        (executable && real.starts_with("/usr/")).then_some(real)
    })
}

/// State shared by the backend and its in-flight executions.
struct Inner {
    cfg: GvisorConfig,
    runsc: Runsc,
    bundles_dir: PathBuf,
    toolchains: Toolchains,
    /// The image store, when `oci` workloads are offered.
    images: Option<ImageStore>,
    /// Images pinned by [`Backend::prepare`] for workloads not over yet.
    prepared: Mutex<HashMap<WorkloadId, ImageLease>>,
    /// Built go binaries; set once the state directory is ready (unset: no caching).
    go_cache: OnceLock<Arc<GoCache>>,
    /// The toolchain part of go cache keys, computed at the first go run (`None`: the
    /// go binary could not be read, so nothing is cached).
    go_toolchain: OnceLock<Option<String>>,
}

/// The gVisor backend. Cheap to share; every execution is independent.
pub struct GvisorBackend {
    inner: Arc<Inner>,
    health: BackendHealth,
    max_concurrency: usize,
}

impl GvisorBackend {
    /// Probe the host (runsc, root, toolchains), prepare the state directory and
    /// remove whatever a previous, crashed server left behind. Succeeds on hosts
    /// without runsc: the backend then reports [`BackendHealth::Unavailable`].
    /// Fails only on an invalid configuration. Without an image store: no `oci`.
    pub fn new(cfg: &GvisorConfig) -> Result<Self, BackendError> {
        Self::with_images(cfg, None)
    }

    /// [`GvisorBackend::new`], also running `oci` workloads from `images`.
    pub fn with_images(
        cfg: &GvisorConfig,
        images: Option<ImageStore>,
    ) -> Result<Self, BackendError> {
        let parent_ok = !cfg.cgroup_parent.is_empty()
            && cfg
                .cgroup_parent
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !parent_ok {
            return Err(BackendError::Internal(format!(
                "[backends.gvisor] cgroup_parent {:?} must be one path component of letters, \
                 digits, '-' or '_'",
                cfg.cgroup_parent
            )));
        }
        if !cfg.state_dir.is_absolute() {
            return Err(BackendError::Internal(format!(
                "[backends.gvisor] state_dir {:?} must be an absolute path",
                cfg.state_dir
            )));
        }
        let max_concurrency = if cfg.max_concurrency == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            cfg.max_concurrency
        };
        let bundles_dir = cfg.state_dir.join("bundles");
        let bin = resolve_binary(&cfg.runsc_path);
        let runsc = Runsc {
            bin: bin
                .clone()
                .unwrap_or_else(|| PathBuf::from(&cfg.runsc_path)),
            root: cfg.state_dir.join("runsc-root"),
            platform: cfg.platform.clone(),
        };
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            runsc,
            bundles_dir,
            toolchains: Toolchains::detect(),
            images,
            prepared: Mutex::new(HashMap::new()),
            go_cache: OnceLock::new(),
            go_toolchain: OnceLock::new(),
        });
        let health = match probe(&inner, bin.as_deref()) {
            Ok(()) => {
                if first_start_in_process(&cfg.state_dir) {
                    inner.sweep_leftovers();
                }
                let dir = cfg.state_dir.join("go-cache");
                match GoCache::shared(&dir, cfg.go_cache_max_bytes) {
                    Ok(cache) => {
                        let _ = inner.go_cache.set(cache);
                    }
                    Err(e) => log::warn!(
                        "gvisor: go cache {} unusable, every go run builds: {e}",
                        dir.display()
                    ),
                }
                BackendHealth::Healthy
            }
            Err(health) => {
                if let BackendHealth::Unavailable { detail, .. } = &health {
                    log::warn!("gvisor backend unavailable: {detail}");
                }
                health
            }
        };
        Ok(Self {
            inner,
            health,
            max_concurrency,
        })
    }
}

/// State dirs already swept by this process. The supervisor rebuilds a backend when its
/// actor restarts, while executions of the previous instance may still be running: only
/// the first construction per process may treat what it finds as a crashed server's.
static SWEPT_STATE_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn first_start_in_process(state_dir: &Path) -> bool {
    let mut swept = SWEPT_STATE_DIRS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if swept.iter().any(|d| d == state_dir) {
        return false;
    }
    swept.push(state_dir.to_path_buf());
    true
}

/// Make the next construction on `state_dir` sweep again, as after a process restart.
#[cfg(test)]
fn forget_sweep(state_dir: &Path) {
    SWEPT_STATE_DIRS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|d| d != state_dir);
}

/// `runsc_path` as given when it contains a `/`, otherwise its first match in `PATH`.
fn resolve_binary(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Why the backend cannot run work here, if it cannot (as an unavailable health: a
/// public reason, and the host specifics for the log). Also creates the state dirs.
fn probe(inner: &Inner, bin: Option<&Path>) -> Result<(), BackendHealth> {
    let Some(bin) = bin else {
        return Err(BackendHealth::unavailable(
            "runsc is not installed (Debian package `runsc`)",
            format!("runsc not found ({:?})", inner.cfg.runsc_path),
        ));
    };
    runsc::version(bin)
        .map_err(|e| BackendHealth::unavailable("runsc does not run on this host", e))?;
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(BackendHealth::unavailable(
            "the server does not run as root: runsc applies memory/CPU limits only when \
             started by root",
            format!("the server runs as uid {euid}, not root"),
        ));
    }
    for dir in [&inner.cfg.state_dir, &inner.bundles_dir, &inner.runsc.root] {
        fs::create_dir_all(dir)
            .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
            .map_err(|e| {
                BackendHealth::unavailable(
                    "its state directory cannot be prepared",
                    format!("cannot prepare state dir {}: {e}", dir.display()),
                )
            })?;
    }
    if inner.toolchains.runtimes().is_empty() && inner.images.is_none() {
        return Err(BackendHealth::unavailable(
            "no python3, go or node toolchain is installed, and no image store",
            "no python3, go or node found under /usr, and no image store",
        ));
    }
    Ok(())
}

impl Inner {
    /// The container id, bundle directory name and cgroup leaf of `id`'s run.
    fn container_id(id: WorkloadId) -> String {
        format!("vulcan-{}", id.to_string().to_ascii_lowercase())
    }

    /// Remove every trace of a previous server's runs (blocking; start-up only).
    fn sweep_leftovers(&self) {
        for id in self.runsc.list_blocking() {
            if id.starts_with("vulcan-") {
                log::info!("gvisor: removing leftover container {id}");
                self.runsc.remove_blocking(&id);
            }
        }
        if let Ok(entries) = fs::read_dir(&self.bundles_dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with("vulcan-") {
                    log::info!(
                        "gvisor: removing leftover bundle {}",
                        entry.path().display()
                    );
                    if let Err(e) = fs::remove_dir_all(entry.path()) {
                        log::warn!("gvisor: cannot remove {}: {e}", entry.path().display());
                    }
                }
            }
        }
        if let Err(e) = cgroup::remove_all(&self.cfg.cgroup_parent) {
            log::warn!("gvisor: cannot remove leftover cgroups: {e}");
        }
    }

    /// Remove the container, bundle and cgroups of `container_id`; idempotent.
    async fn teardown(self: Arc<Self>, container_id: String) {
        self.release(&container_id, true).await;
    }

    /// Remove the container and cgroups of `container_id`, and its bundle when
    /// `bundle` is set (a go build keeps it for the run that follows); idempotent.
    async fn release(self: &Arc<Self>, container_id: &str, bundle: bool) {
        if self.runsc.has_state(container_id) {
            self.runsc.kill(container_id).await;
            self.runsc.delete(container_id).await;
        }
        let inner = self.clone();
        let id = container_id.to_string();
        let joined = tokio::task::spawn_blocking(move || {
            let dir = inner.bundles_dir.join(&id);
            if bundle {
                if let Err(e) = fs::remove_dir_all(&dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        log::warn!("gvisor: cannot remove bundle {}: {e}", dir.display());
                    }
                }
            }
            if let Err(e) = cgroup::remove(&inner.cfg.cgroup_parent, &id) {
                log::warn!("gvisor: cannot remove cgroups of {id}: {e}");
            }
        })
        .await;
        if let Err(e) = joined {
            log::warn!("gvisor: cleanup of {container_id} panicked: {e}");
        }
    }

    /// Write the bundle of one run (blocking). Payload problems are the client's.
    fn prepare(
        &self,
        spec: &WorkloadSpec,
        container_id: &str,
    ) -> Result<BundleLayout, BackendError> {
        let (layout, params) = self.prepare_bundle(spec, container_id)?;
        write_spec(&layout, &params, container_id)?;
        Ok(layout)
    }

    /// The bundle of one run with its code in place, and the parameters of its
    /// `config.json`, not written yet (blocking).
    fn prepare_bundle(
        &self,
        spec: &WorkloadSpec,
        container_id: &str,
    ) -> Result<(BundleLayout, SpecParams), BackendError> {
        let interpreter = self.toolchains.get(spec.runtime).ok_or_else(|| {
            BackendError::Unsupported(format!(
                "runtime {} is not available on this host's gvisor backend",
                spec.runtime
            ))
        })?;
        let mut entry = entry_file(spec.runtime, &spec.payload);
        let layout = BundleLayout::new(&self.bundles_dir, container_id);
        let internal = |what: &str, e: std::io::Error| {
            BackendError::Internal(format!("gvisor: {what} for {container_id}: {e}"))
        };
        let extra_ro_dirs = layout
            .create()
            .map_err(|e| internal("cannot create bundle", e))?;
        match &spec.payload {
            Payload::Code(text) => fs::write(layout.work.join(entry), text)
                .map_err(|e| internal("cannot write code", e))?,
            Payload::Archive(bytes) => {
                let limits = ArchiveLimits {
                    max_total_bytes: self.cfg.max_archive_bytes,
                    max_entries: self.cfg.max_archive_entries,
                };
                archive::unpack_tar_gz(bytes, &layout.work, &limits).map_err(|e| match e {
                    ArchiveError::Io(_) => BackendError::Internal(e.to_string()),
                    other => BackendError::InvalidPayload(other.to_string()),
                })?;
                if spec.runtime == Runtime::Node
                    && fs::metadata(layout.work.join(NODE_MODULE_ENTRY)).is_ok_and(|m| m.is_file())
                {
                    entry = NODE_MODULE_ENTRY;
                }
                if !fs::metadata(layout.work.join(entry)).is_ok_and(|m| m.is_file()) {
                    return Err(BackendError::InvalidPayload(format!(
                        "the archive has no {entry} at its root"
                    )));
                }
            }
            Payload::Image { .. } => {
                return Err(BackendError::InvalidPayload(format!(
                    "runtime {} takes code or an archive, not an image",
                    spec.runtime
                )))
            }
        }
        layout
            .chown_work()
            .map_err(|e| internal("cannot hand the work dir to the sandbox user", e))?;

        let args = command_line(spec.runtime, interpreter, &layout.work, entry);
        let params = SpecParams {
            args,
            env: environment(spec.runtime, &spec.input),
            work_dir: layout.work.clone(),
            extra_ro_dirs,
            cgroups_path: cgroup::cgroups_path(&self.cfg.cgroup_parent, container_id),
            mem_bytes: u64::from(spec.mem_mb.max(1)) * 1024 * 1024,
            cpus: spec.cpus,
            max_processes: self.cfg.max_processes,
            max_file_bytes: self.cfg.max_file_mb.saturating_mul(1024 * 1024),
            tmp_size_mb: self.cfg.tmp_size_mb,
            extra_mounts: Vec::new(),
        };
        Ok((layout, params))
    }

    /// Run a prepared bundle to completion or cancellation (`root_overlay`: image runs,
    /// whose shared root file system gets a private writable layer).
    async fn run(
        &self,
        bundle_dir: &Path,
        root_overlay: bool,
        container_id: &str,
        input: Vec<u8>,
        max_output_bytes: usize,
        ctx: &ExecContext,
    ) -> Result<WorkloadResult, BackendError> {
        if ctx.cancel.is_cancelled() {
            return Err(BackendError::Cancelled);
        }
        let started = Instant::now();
        let mut child = self
            .runsc
            .run_command_with(bundle_dir, container_id, root_overlay)
            .spawn()
            .map_err(|e| BackendError::Internal(format!("gvisor: cannot start runsc: {e}")))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(BackendError::Internal(
                "gvisor: runsc stdio not piped".into(),
            ));
        };
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // The workload may never read stdin: a broken pipe is not an error.
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        });
        let out_task = tokio::spawn(runsc::pump(stdout, ctx.log.clone(), Some(max_output_bytes)));
        let err_task = tokio::spawn(runsc::pump(stderr, ctx.log.clone(), None));

        let deadline = tokio::time::Instant::from_std(ctx.deadline);
        let status = tokio::select! {
            status = child.wait() => Some(status),
            () = ctx.cancel.cancelled() => None,
            () = tokio::time::sleep_until(deadline) => None,
        };
        let Some(status) = status else {
            self.runsc.kill(container_id).await;
            let _ = child.start_kill();
            self.runsc.delete(container_id).await;
            let _ = child.wait().await;
            writer.abort();
            out_task.abort();
            err_task.abort();
            return Err(BackendError::Cancelled);
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let status = status
            .map_err(|e| BackendError::Internal(format!("gvisor: waiting for runsc: {e}")))?;
        writer.abort();
        // The sandbox held the pipes; once it is gone they reach end of file promptly.
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            let out = out_task.await.unwrap_or_default();
            let _ = err_task.await;
            out
        })
        .await;
        let collected = drained.unwrap_or_default();

        let exit_code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        });
        let error = match exit_code {
            0 if collected.truncated => Some(output_exceeds(max_output_bytes)),
            0 => None,
            137 => Some("exited with code 137 (killed: out of memory or SIGKILL)".to_string()),
            n => Some(format!("exited with code {n}")),
        };
        Ok(WorkloadResult {
            exit_code: Some(exit_code),
            // Over the cap the workload fails, and nothing of its output is kept.
            output: if collected.truncated {
                Vec::new()
            } else {
                collected.bytes
            },
            error,
            duration_ms,
        })
    }
}

/// Write the `config.json` of `params` into `layout` (blocking).
fn write_spec(
    layout: &BundleLayout,
    params: &SpecParams,
    container_id: &str,
) -> Result<(), BackendError> {
    let oci = bundle::build_spec(params)
        .map_err(|e| BackendError::Internal(format!("gvisor: invalid OCI spec: {e}")))?;
    layout.write_spec(&oci).map_err(|e| {
        BackendError::Internal(format!(
            "gvisor: cannot write config.json for {container_id}: {e}"
        ))
    })
}

/// A node entry that is an ES module: run through [`node_module_wrapper`].
const NODE_MODULE_ENTRY: &str = "main.mjs";

/// The file the runtime starts from, at the root of the work dir. Node code that is an
/// ES module (the same test as the isolate backend's) is written as `main.mjs`; a
/// plain script stays `main.js`. An archive brings its own (`main.mjs` wins).
pub(crate) fn entry_file(runtime: Runtime, payload: &Payload) -> &'static str {
    match (runtime, payload) {
        (Runtime::Go, _) => "main.go",
        (Runtime::Node, Payload::Code(code)) if looks_like_module(code) => NODE_MODULE_ENTRY,
        (Runtime::Node, _) => "main.js",
        _ => "main.py",
    }
}

/// Gives `node` one meaning on every isolation: imports the module, reads the input
/// JSON from stdin, awaits the default export called with it (or takes a non-function
/// default as is) and prints the result as JSON, alone on stdout. The module's
/// console output goes to stderr, so it is logged but never mixed into the result.
fn node_module_wrapper() -> String {
    format!(
        r#"import {{ readFileSync }} from "node:fs";
import {{ Console }} from "node:console";
globalThis.console = new Console({{ stdout: process.stderr, stderr: process.stderr }});
const text = readFileSync(0, "utf8");
const input = text.trim() === "" ? undefined : JSON.parse(text);
const mod = await import("{WORK_MOUNT}/{NODE_MODULE_ENTRY}");
if (mod.default === undefined) {{
  process.stderr.write("the module has no default export (expected `export default (input) => value`)\n");
  process.exit(1);
}}
const value = typeof mod.default === "function" ? await mod.default(input) : mod.default;
const out = JSON.stringify(value);
if (out !== undefined) process.stdout.write(out);
"#
    )
}

/// The command line inside the sandbox.
pub(crate) fn command_line(
    runtime: Runtime,
    interpreter: &Path,
    work: &Path,
    entry: &str,
) -> Vec<String> {
    let exe = interpreter.to_string_lossy().into_owned();
    match runtime {
        // -u: unbuffered, so each line reaches the log as it is printed.
        Runtime::Python => vec![exe, "-u".into(), "main.py".into()],
        Runtime::Node if entry == NODE_MODULE_ENTRY => vec![
            exe,
            "--input-type=module".into(),
            "-e".into(),
            node_module_wrapper(),
        ],
        Runtime::Node => vec![exe, "main.js".into()],
        Runtime::Go => {
            let mut args = vec![exe, "run".into()];
            if work.join("go.mod").is_file() {
                args.push(".".into());
            } else {
                // Without a module, every non-test file of package main at the root.
                let mut files: Vec<String> = fs::read_dir(work)
                    .map(|entries| {
                        entries
                            .flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .filter(|n| n.ends_with(".go") && !n.ends_with("_test.go"))
                            .collect()
                    })
                    .unwrap_or_default();
                files.sort();
                if files.is_empty() {
                    files.push("main.go".into());
                }
                args.extend(files);
            }
            args
        }
        Runtime::Wasm | Runtime::Oci => vec![exe],
    }
}

/// The workload's whole environment: nothing comes from the host.
pub(crate) fn environment(runtime: Runtime, input: &[u8]) -> Vec<String> {
    let mut env = vec![
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        format!("HOME={WORK_MOUNT}"),
        "LANG=C.UTF-8".to_string(),
        "TMPDIR=/tmp".to_string(),
    ];
    if input.len() <= MAX_ENV_INPUT && !input.contains(&0) {
        env.push(format!("VULCAN_INPUT={}", String::from_utf8_lossy(input)));
    }
    if runtime == Runtime::Go {
        env.extend([
            format!("GOCACHE={WORK_MOUNT}/.cache/go-build"),
            format!("GOPATH={WORK_MOUNT}/.go"),
            "GOPROXY=off".to_string(),
            "GOTOOLCHAIN=local".to_string(),
            "CGO_ENABLED=0".to_string(),
        ]);
    }
    env
}

impl Backend for GvisorBackend {
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities {
            name: "gvisor".into(),
            supported_runtimes: {
                let mut runtimes = self.inner.toolchains.runtimes();
                if self.inner.images.is_some() {
                    runtimes.push(Runtime::Oci);
                }
                runtimes
            },
            supported_isolations: vec![Isolation::Gvisor],
            max_concurrency: self.max_concurrency,
        }
    }

    fn health(&self) -> BackendHealth {
        self.health.clone()
    }

    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        if let Some(cache) = self.inner.go_cache.get() {
            if let Ok(stats) = serde_json::to_value(cache.stats()) {
                m.insert("go_cache".into(), stats);
            }
        }
        m
    }

    fn prepare(&self, spec: &WorkloadSpec, cancel: CancellationToken) -> Option<Preparation> {
        let store = self.inner.images.as_ref()?;
        image::prepare(&self.inner, store, spec, cancel)
    }

    fn execute(
        &self,
        spec: WorkloadSpec,
        ctx: ExecContext,
    ) -> BoxFuture<'static, Result<WorkloadResult, BackendError>> {
        let inner = self.inner.clone();
        let health = self.health.clone();
        Box::pin(async move {
            if let Some(reason) = health.reason() {
                return Err(BackendError::Unavailable(reason.to_string()));
            }
            if spec.runtime == Runtime::Oci {
                if inner.images.is_none() {
                    return Err(BackendError::Unsupported(
                        "runtime oci needs an image store, and this gvisor backend has none".into(),
                    ));
                }
                return image::execute(inner, spec, ctx).await;
            }
            if spec.runtime == Runtime::Go && inner.toolchains.get(Runtime::Go).is_some() {
                return go::execute(inner, spec, ctx).await;
            }
            if inner.toolchains.get(spec.runtime).is_none() {
                return Err(BackendError::Unsupported(format!(
                    "runtime {} is not available on this host's gvisor backend",
                    spec.runtime
                )));
            }
            let container_id = Inner::container_id(spec.id);
            // A leftover of an earlier attempt would keep its old cgroup limits.
            inner.clone().teardown(container_id.clone()).await;

            let prep_inner = inner.clone();
            let prep_id = container_id.clone();
            let input = spec.input.clone();
            let max_output_bytes = spec.max_output_bytes;
            let prepared = tokio::task::spawn_blocking(move || prep_inner.prepare(&spec, &prep_id))
                .await
                .map_err(|e| BackendError::Internal(format!("gvisor: prepare panicked: {e}")))
                .and_then(|r| r);
            let result = match prepared {
                Ok(layout) => {
                    inner
                        .run(
                            &layout.dir,
                            false,
                            &container_id,
                            input,
                            max_output_bytes,
                            &ctx,
                        )
                        .await
                }
                Err(e) => Err(e),
            };
            inner.teardown(container_id).await;
            result
        })
    }

    fn cleanup(&self, id: WorkloadId) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let container_id = Inner::container_id(id);
            inner.teardown(container_id).await;
        })
    }
}
