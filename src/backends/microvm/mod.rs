//! The `microvm` backend: each python or go workload in its own QEMU `microvm` machine
//! (virtio-mmio only, no PCI, no firmware), with KVM in production and TCG (software
//! emulation, seconds per run) for tests and hosts without KVM.
//!
//! A run: the code (or the archive, unpacked and checked on the host by
//! [`crate::backends::archive`]) and the input travel in one [`RunRequest`] over
//! virtio-serial to the guest agent (PID 1 of a generated initramfs, see [`guest`]),
//! which writes them to a tmpfs `/work`, runs the program as an unprivileged user in a
//! cgroup limited to `mem_mb`, and streams stdout/stderr back as they come. The guest
//! sees the host's `/usr` read-only over virtio-9p and has no network device at all.
//!
//! QEMU itself is confined: a cgroup per VM (memory = guest RAM + QEMU's overhead, CPU
//! quota = vCPUs), the seccomp sandbox (`-sandbox on,…`), `-runas` an unprivileged user,
//! `-nodefaults -no-user-config`. Timeout and kill stop QEMU (SIGTERM, SIGKILL after
//! `stop_grace_ms`). Every run's cgroup and scratch directory are named after the
//! workload, removed after every outcome and swept at start-up.
//!
//! `accel = "auto"` (the default) boots a probe VM with KVM once at start-up; where that
//! fails or hangs the backend reports `unavailable` with the reason and `auto` routing
//! falls back to gvisor.

mod cgroup;
mod guest;
mod probe;
mod qemu;
mod vm;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use vulcan_guest_proto::{Entry, FromGuest, RunRequest};

use self::guest::GuestImage;
use self::probe::{ProbeCell, ProbeState};
pub use self::qemu::AccelMode;
use self::qemu::{Accel, VmParams};
use self::vm::VmError;
use super::archive::{self, ArchiveError, ArchiveLimits};
use super::gvisor::cgroup as shared_cgroup;
use super::gvisor::runsc::pump;
use super::gvisor::{command_line, entry_file, environment, Toolchains};
use super::{
    output_exceeds, Backend, BackendCapabilities, BackendError, BackendHealth, ExecContext,
    WorkloadResult, WorkloadSpec,
};
use crate::model::{Isolation, Payload, Runtime, WorkloadId};

/// `[backends.microvm]`: see `config/default.toml` for each key's meaning.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MicrovmConfig {
    /// Register this backend.
    pub enabled: bool,
    /// Concurrent VMs; 0 = one per CPU core.
    pub max_concurrency: usize,
    /// Workloads waiting for a slot; beyond it submissions to this backend get 429.
    pub max_queue: usize,
    /// `auto` (KVM if the probe boots), `kvm` or `tcg` (software, slow).
    pub accel: AccelMode,
    /// The QEMU binary: a path, or a name looked up in `PATH`.
    pub qemu_path: String,
    /// Where the install step put `vmlinux`, `modules/` and `vulcan-agent`.
    pub guest_dir: PathBuf,
    /// Kernel modules loaded in the guest, in this order (`<name>.ko` in `modules/`).
    pub guest_modules: Vec<String>,
    /// Private state (initramfs, one scratch dir per run). Owned by this server alone.
    pub state_dir: PathBuf,
    /// Parent of the per-VM cgroups (one path component, owned by this server).
    pub cgroup_parent: String,
    /// User QEMU switches to once started (`-runas`); empty keeps root.
    pub run_as: String,
    /// Guest RAM on top of the workload's `mem_mb` (kernel, agent), MiB.
    pub guest_overhead_mb: u64,
    /// Host memory for QEMU on top of guest RAM (its own heap, TCG's code cache), MiB.
    pub qemu_overhead_mb: u64,
    /// How long the start-up probe may take to boot a guest before it counts as a hang.
    pub probe_timeout_s: u64,
    /// Between SIGTERM and SIGKILL when a VM is stopped, in milliseconds.
    pub stop_grace_ms: u64,
    /// Largest unpacked size of a code archive, in bytes (it also sizes guest RAM).
    pub max_archive_bytes: u64,
    /// Most entries in a code archive.
    pub max_archive_entries: usize,
    /// `pids.max` of the workload's cgroup in the guest.
    pub max_processes: u64,
    /// Room in the guest's `/work` tmpfs beyond the code, MiB.
    pub work_size_mb: u64,
    /// Size of the guest's `/tmp` tmpfs, MiB.
    pub tmp_size_mb: u64,
}

/// The uid/gid the workload runs as inside the guest (there are no other users there).
const WORKLOAD_UID: u32 = 1000;

/// How long a guest may take from the agent's `Exited` to powering itself off before
/// QEMU is stopped anyway.
const POWER_OFF_WAIT: Duration = Duration::from_millis(500);

/// Host-side state shared by the backend and its in-flight executions.
pub(crate) struct Inner {
    cfg: MicrovmConfig,
    qemu: PathBuf,
    runs_dir: PathBuf,
    image: GuestImage,
    toolchains: Toolchains,
    run_as: Option<String>,
    tsc_khz: Option<u64>,
}

impl Inner {
    fn grace(&self) -> Duration {
        Duration::from_millis(self.cfg.stop_grace_ms)
    }
}

/// Why the backend cannot run here, decided at construction or by the probe.
enum Readiness {
    /// A missing piece (not root, no QEMU, no guest image…): no probe was started.
    /// Always [`BackendHealth::Unavailable`] (a public reason and the host detail).
    Missing(BackendHealth),
    /// The probe decides.
    Probe(Arc<ProbeCell>),
}

/// The micro-VM backend. Cheap to share; every execution is its own VM.
pub struct MicrovmBackend {
    inner: Option<Arc<Inner>>,
    readiness: Readiness,
    accel_mode: AccelMode,
    max_concurrency: usize,
    runtimes: Vec<Runtime>,
}

impl MicrovmBackend {
    /// Check the host (root, QEMU, `/dev/kvm`, the installed guest, toolchains), sweep
    /// what a previous server left, write the initramfs, and start (or join) the probe.
    /// Never blocks on a VM: until the probe has booted one the backend reports
    /// `unavailable` ("probing…"). Fails only on an invalid configuration.
    pub fn new(cfg: &MicrovmConfig) -> Result<Self, BackendError> {
        validate(cfg)?;
        let max_concurrency = if cfg.max_concurrency == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            cfg.max_concurrency
        };
        let toolchains = Toolchains::detect();
        let runtimes: Vec<Runtime> = [Runtime::Python, Runtime::Go]
            .into_iter()
            .filter(|r| toolchains.get(*r).is_some())
            .collect();
        let mut backend = Self {
            inner: None,
            readiness: Readiness::Missing(BackendHealth::unavailable("not prepared", "")),
            accel_mode: cfg.accel,
            max_concurrency,
            runtimes,
        };
        match prepare(cfg, toolchains) {
            Ok(inner) => {
                let inner = Arc::new(inner);
                backend.readiness = Readiness::Probe(probe::shared(&inner, cfg.accel.accel()));
                backend.inner = Some(inner);
            }
            Err(health) => {
                if let BackendHealth::Unavailable { detail, .. } = &health {
                    log::warn!("microvm backend unavailable: {detail}");
                }
                backend.readiness = Readiness::Missing(health);
            }
        }
        Ok(backend)
    }

    /// The VM machinery and accelerator, or why not (an unavailable health: a public
    /// reason without host paths, and the detail for the log).
    fn ready(&self) -> Result<(Arc<Inner>, Accel), BackendHealth> {
        match (&self.readiness, &self.inner) {
            (Readiness::Missing(health), _) => Err(health.clone()),
            (Readiness::Probe(cell), Some(inner)) => match cell.state() {
                ProbeState::Running => {
                    let probing = format!(
                        "probing: booting a test micro-VM with {}",
                        self.accel_mode.accel().as_str()
                    );
                    Err(BackendHealth::unavailable(probing.clone(), probing))
                }
                ProbeState::Done(Ok(p)) => Ok((inner.clone(), p.accel)),
                ProbeState::Done(Err(detail)) => {
                    let accel = self.accel_mode.accel().as_str();
                    let reason = match self.accel_mode {
                        AccelMode::Auto => format!(
                            "a test micro-VM did not boot with {accel}; accel \"auto\" needs \
                             working KVM (set backends.microvm.accel = \"tcg\" for slow \
                             software emulation)"
                        ),
                        _ => format!("a test micro-VM did not boot with {accel}"),
                    };
                    Err(BackendHealth::unavailable(reason, detail))
                }
            },
            (Readiness::Probe(_), None) => Err(BackendHealth::unavailable(
                "micro-VMs are not prepared",
                "micro-VMs are not prepared",
            )),
        }
    }
}

fn validate(cfg: &MicrovmConfig) -> Result<(), BackendError> {
    let parent_ok = !cfg.cgroup_parent.is_empty()
        && cfg
            .cgroup_parent
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !parent_ok {
        return Err(BackendError::Internal(format!(
            "[backends.microvm] cgroup_parent {:?} must be one path component of letters, \
             digits, '-' or '_'",
            cfg.cgroup_parent
        )));
    }
    if !cfg.state_dir.is_absolute() || !cfg.guest_dir.is_absolute() {
        return Err(BackendError::Internal(
            "[backends.microvm] state_dir and guest_dir must be absolute paths".into(),
        ));
    }
    // A unix socket path holds at most 107 bytes: runs/<name>/agent.sock must fit.
    let longest = cfg
        .state_dir
        .join("runs")
        .join(format!("vm-{}", "x".repeat(26)))
        .join("agent.sock");
    if longest.as_os_str().len() > 107 {
        return Err(BackendError::Internal(format!(
            "[backends.microvm] state_dir {:?} is too long for the VMs' unix sockets",
            cfg.state_dir
        )));
    }
    Ok(())
}

/// Everything short of booting: privileges, binaries, state dirs, the guest image.
/// Fails with an unavailable health: a public reason, and the host detail for the log.
fn prepare(cfg: &MicrovmConfig, toolchains: Toolchains) -> Result<Inner, BackendHealth> {
    if !nix::unistd::geteuid().is_root() {
        return Err(BackendHealth::unavailable(
            "the server is not root: each VM needs a cgroup of its own",
            format!(
                "the server runs as uid {}, not root",
                nix::unistd::geteuid()
            ),
        ));
    }
    let qemu = resolve_binary(&cfg.qemu_path).ok_or_else(|| {
        BackendHealth::unavailable(
            "QEMU is not installed (Debian package qemu-system-x86; .ci/install-microvm.sh)",
            format!("{} not found", cfg.qemu_path),
        )
    })?;
    if cfg.accel.accel() == Accel::Kvm {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_err(|e| {
                BackendHealth::unavailable(
                    "KVM is not usable here: no hardware virtualisation",
                    format!("/dev/kvm is not usable ({e})"),
                )
            })?;
    }
    if toolchains.get(Runtime::Python).is_none() && toolchains.get(Runtime::Go).is_none() {
        return Err(BackendHealth::unavailable(
            "no python3 or go toolchain is installed",
            "no python3 or go found under /usr",
        ));
    }
    let runs_dir = cfg.state_dir.join("runs");
    for dir in [&cfg.state_dir, &runs_dir] {
        fs::create_dir_all(dir)
            .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
            .map_err(|e| {
                BackendHealth::unavailable(
                    "its state directory cannot be prepared",
                    format!("cannot prepare state dir {}: {e}", dir.display()),
                )
            })?;
    }
    if first_start_in_process(&cfg.state_dir) {
        sweep(cfg, &runs_dir);
    }
    let image = guest::build(
        &cfg.guest_dir,
        &cfg.guest_modules,
        &cfg.state_dir.join("initramfs.cpio"),
    )
    .map_err(|e| {
        BackendHealth::unavailable(
            "the micro-VM guest is not installed or not usable (.ci/install-microvm.sh \
             installs it)",
            e,
        )
    })?;
    Ok(Inner {
        cfg: cfg.clone(),
        qemu,
        runs_dir,
        image,
        toolchains,
        run_as: (!cfg.run_as.is_empty()).then(|| cfg.run_as.clone()),
        tsc_khz: qemu::host_tsc_khz(),
    })
}

/// `name` as given when it contains a `/`, otherwise its first match in `PATH`.
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

/// State dirs already swept by this process: a backend rebuilt on an actor restart must
/// not take the running VMs of its predecessor for a crashed server's leftovers.
fn first_start_in_process(state_dir: &Path) -> bool {
    static SWEPT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut swept = SWEPT.lock().unwrap_or_else(PoisonError::into_inner);
    if swept.iter().any(|d| d == state_dir) {
        return false;
    }
    swept.push(state_dir.to_path_buf());
    true
}

/// Kill the QEMUs a previous server left in its cgroups, remove those cgroups and the
/// scratch dirs (blocking; start-up only).
fn sweep(cfg: &MicrovmConfig, runs_dir: &Path) {
    for pid in cgroup::processes(&cfg.cgroup_parent, None) {
        log::info!("microvm: killing leftover VM process {pid}");
        qemu::signal(pid.unsigned_abs(), nix::sys::signal::Signal::SIGKILL);
    }
    // Killed processes leave their cgroups within moments; remove() retries while busy.
    if let Err(e) = shared_cgroup::remove_all(&cfg.cgroup_parent) {
        log::warn!("microvm: cannot remove leftover cgroups: {e}");
    }
    if let Ok(entries) = fs::read_dir(runs_dir) {
        for entry in entries.flatten() {
            log::info!("microvm: removing leftover {}", entry.path().display());
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                log::warn!("microvm: cannot remove {}: {e}", entry.path().display());
            }
        }
    }
}

/// The scratch dir and cgroup leaf name of `id`'s VM.
fn vm_name(id: WorkloadId) -> String {
    format!("vm-{}", id.to_string().to_ascii_lowercase())
}

/// A prepared run: the request for the agent and the sizes derived from it.
#[derive(Debug)]
struct Prepared {
    request: RunRequest,
    guest_mem_mb: u64,
}

impl Inner {
    /// Build the run request (blocking: an archive is unpacked and checked on the host,
    /// in the run's scratch dir, then read back). Payload problems are the client's.
    fn prepare_run(&self, spec: &WorkloadSpec, dir: &Path) -> Result<Prepared, BackendError> {
        let interpreter = self.toolchains.get(spec.runtime).ok_or_else(|| {
            BackendError::Unsupported(format!(
                "runtime {} is not available on this host's microvm backend",
                spec.runtime
            ))
        })?;
        let internal = |what: &str, e: std::io::Error| {
            BackendError::Internal(format!("microvm: {what} for {}: {e}", spec.id))
        };
        let code = dir.join("code");
        fs::create_dir_all(&code).map_err(|e| internal("cannot create the scratch dir", e))?;
        let entry = entry_file(spec.runtime, &spec.payload);
        match &spec.payload {
            Payload::Code(text) => {
                fs::write(code.join(entry), text).map_err(|e| internal("cannot write code", e))?
            }
            Payload::Archive(bytes) => {
                let limits = ArchiveLimits {
                    max_total_bytes: self.cfg.max_archive_bytes,
                    max_entries: self.cfg.max_archive_entries,
                };
                archive::unpack_tar_gz(bytes, &code, &limits).map_err(|e| match e {
                    ArchiveError::Io(_) => BackendError::Internal(e.to_string()),
                    other => BackendError::InvalidPayload(other.to_string()),
                })?;
                if !fs::metadata(code.join(entry)).is_ok_and(|m| m.is_file()) {
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
        let entries =
            collect_entries(&code).map_err(|e| internal("cannot read the code back", e))?;
        let code_bytes: u64 = entries
            .iter()
            .map(|e| match e {
                Entry::File { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum();
        let code_mb = code_bytes.div_ceil(1 << 20);
        let request = RunRequest {
            argv: command_line(spec.runtime, interpreter, &code, entry),
            env: environment(spec.runtime, &spec.input),
            entries,
            stdin: spec.input.clone(),
            mem_limit_bytes: u64::from(spec.mem_mb.max(1)) << 20,
            max_processes: self.cfg.max_processes,
            work_size_mb: code_mb + self.cfg.work_size_mb,
            tmp_size_mb: self.cfg.tmp_size_mb,
            uid: WORKLOAD_UID,
        };
        // The code lives in guest RAM (tmpfs) outside the workload's own limit.
        let guest_mem_mb = u64::from(spec.mem_mb.max(1)) + self.cfg.guest_overhead_mb + code_mb;
        fs::remove_dir_all(&code).map_err(|e| internal("cannot remove the unpacked code", e))?;
        Ok(Prepared {
            request,
            guest_mem_mb,
        })
    }

    /// Boot a VM, run the request, collect the outcome. QEMU is stopped on every path.
    async fn run(
        &self,
        spec: &WorkloadSpec,
        accel: Accel,
        prepared: Prepared,
        dir: &Path,
        ctx: &ExecContext,
    ) -> Result<WorkloadResult, BackendError> {
        let name = vm_name(spec.id);
        let cpus = spec.cpus.max(1);
        let leaf = cgroup::create(
            &self.cfg.cgroup_parent,
            &name,
            cgroup::VmLimits {
                mem_bytes: (prepared.guest_mem_mb + self.cfg.qemu_overhead_mb) << 20,
                cpus,
            },
        )
        .map_err(|e| BackendError::Internal(format!("microvm: {e}")))?;
        let socket = dir.join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&socket).map_err(|e| {
            BackendError::Internal(format!("microvm: cannot listen on a socket: {e}"))
        })?;
        let params = VmParams {
            qemu: self.qemu.clone(),
            accel,
            image: self.image.clone(),
            cpus,
            mem_mb: prepared.guest_mem_mb,
            socket,
            run_as: self.run_as.clone(),
            tsc_khz: self.tsc_khz,
        };
        let frame = prepared
            .request
            .to_frame()
            .map_err(|e| BackendError::InvalidPayload(format!("the workload is too large: {e}")))?;
        drop(prepared);
        if ctx.cancel.is_cancelled() {
            return Err(BackendError::Cancelled);
        }
        let started = Instant::now();
        let mut vm = match vm::boot(
            &params,
            &leaf.procs_files,
            listener,
            &ctx.cancel,
            ctx.deadline,
            self.grace(),
        )
        .await
        {
            Ok(vm) => vm,
            Err(VmError::Cancelled | VmError::TimedOut) => return Err(BackendError::Cancelled),
            Err(VmError::Failed(why)) => {
                return Err(BackendError::Internal(format!(
                    "microvm: the VM did not boot: {why}"
                )))
            }
        };
        log::debug!("workload {}: micro-VM booted in {:?}", spec.id, vm.boot);

        let (mut out_w, out_r) = tokio::io::duplex(64 * 1024);
        let (mut err_w, err_r) = tokio::io::duplex(64 * 1024);
        let out_task = tokio::spawn(pump(out_r, ctx.log.clone(), Some(spec.max_output_bytes)));
        let err_task = tokio::spawn(pump(err_r, ctx.log.clone(), None));

        let deadline = tokio::time::Instant::from_std(ctx.deadline);
        let exchange = async {
            vm.send(&frame).await?;
            loop {
                match vm.recv().await? {
                    Some(FromGuest::Stdout(b)) => {
                        let _ = out_w.write_all(&b).await;
                    }
                    Some(FromGuest::Stderr(b)) => {
                        let _ = err_w.write_all(&b).await;
                    }
                    Some(FromGuest::Exited {
                        code,
                        signal,
                        oom_killed,
                    }) => {
                        return Ok(Outcome::Exited {
                            code,
                            signal,
                            oom_killed,
                        })
                    }
                    Some(FromGuest::Failed(why)) => return Ok(Outcome::AgentFailed(why)),
                    Some(FromGuest::Ready) => {
                        return Err(VmError::Failed("the guest agent said Ready twice".into()))
                    }
                    None => return Ok(Outcome::Vanished),
                }
            }
        };
        let outcome = tokio::select! {
            r = exchange => Some(r),
            () = ctx.cancel.cancelled() => None,
            () = tokio::time::sleep_until(deadline) => None,
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let Some(outcome) = outcome else {
            vm.shut_down(Duration::ZERO, self.grace()).await;
            out_task.abort();
            err_task.abort();
            return Err(BackendError::Cancelled);
        };
        let exited = vm.exited();
        let wait = if matches!(outcome, Ok(Outcome::Exited { .. })) {
            POWER_OFF_WAIT
        } else {
            Duration::ZERO
        };
        let stderr = vm.shut_down(wait, self.grace()).await;
        drop(out_w);
        drop(err_w);
        let collected = out_task.await.unwrap_or_default();
        let _ = err_task.await;

        let mut result = WorkloadResult {
            exit_code: None,
            // Over the cap the workload fails, and nothing of its output is kept.
            output: if collected.truncated {
                Vec::new()
            } else {
                collected.bytes
            },
            error: None,
            duration_ms,
        };
        match outcome {
            Ok(Outcome::Exited {
                code,
                signal,
                oom_killed,
            }) => {
                let exit_code = code.unwrap_or_else(|| 128 + signal.unwrap_or(0));
                result.exit_code = Some(exit_code);
                result.error = if oom_killed {
                    Some(format!(
                        "out of memory: the workload exceeded its memory limit of {} MiB \
                         (exited with code {exit_code})",
                        spec.mem_mb
                    ))
                } else if exit_code != 0 {
                    Some(format!("exited with code {exit_code}"))
                } else if collected.truncated {
                    Some(output_exceeds(spec.max_output_bytes))
                } else {
                    None
                };
            }
            Ok(Outcome::AgentFailed(why)) => {
                result.error = Some(format!(
                    "the workload could not start in the micro-VM: {why}"
                ));
            }
            Ok(Outcome::Vanished) | Err(VmError::Cancelled | VmError::TimedOut) => {
                result.error = Some(vanished(exited, &stderr));
            }
            Err(VmError::Failed(why)) => {
                log::warn!("workload {}: micro-VM protocol error: {why}", spec.id);
                result.error = Some(format!("the micro-VM failed: {why}"));
            }
        }
        Ok(result)
    }

    /// Remove the VM's processes, cgroup and scratch dir; idempotent (blocking).
    fn teardown(&self, name: &str) {
        for pid in cgroup::processes(&self.cfg.cgroup_parent, Some(name)) {
            qemu::signal(pid.unsigned_abs(), nix::sys::signal::Signal::SIGKILL);
        }
        if let Err(e) = shared_cgroup::remove(&self.cfg.cgroup_parent, name) {
            log::warn!("microvm: cannot remove the cgroup of {name}: {e}");
        }
        let dir = self.runs_dir.join(name);
        if let Err(e) = fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("microvm: cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// How the conversation with the agent ended.
enum Outcome {
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        oom_killed: bool,
    },
    AgentFailed(String),
    /// The port closed without an `Exited`: the VM died (host OOM kill, guest panic).
    Vanished,
}

fn vanished(status: Option<std::process::ExitStatus>, stderr: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match status.and_then(|s| s.signal()) {
        Some(9) => " (QEMU was killed: the VM exceeded its host memory limit)".to_string(),
        Some(sig) => format!(" (QEMU ended by signal {sig})"),
        None if !stderr.is_empty() => format!(" ({stderr})"),
        None => String::new(),
    };
    format!("the micro-VM stopped before the workload finished{how}")
}

/// The unpacked tree under `root` as protocol entries (directories first, in order).
fn collect_entries(root: &Path) -> std::io::Result<Vec<Entry>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Entry>) -> std::io::Result<()> {
        let mut children: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let path = child.path();
            let rel = path
                .strip_prefix(root)
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path)?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path)?.to_string_lossy().into_owned();
                out.push(Entry::Symlink { path: rel, target });
            } else if meta.is_dir() {
                out.push(Entry::Dir { path: rel });
                walk(root, &path, out)?;
            } else if meta.is_file() {
                let mode = if meta.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                out.push(Entry::File {
                    path: rel,
                    mode,
                    data: fs::read(&path)?,
                });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

impl Backend for MicrovmBackend {
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities {
            name: "microvm".into(),
            supported_runtimes: self.runtimes.clone(),
            supported_isolations: vec![Isolation::Microvm],
            max_concurrency: self.max_concurrency,
        }
    }

    fn health(&self) -> BackendHealth {
        match self.ready() {
            Ok(_) => BackendHealth::Healthy,
            Err(unavailable) => unavailable,
        }
    }

    fn details(&self) -> Map<String, Value> {
        let boot_ms = match &self.readiness {
            Readiness::Probe(cell) => match cell.state() {
                ProbeState::Done(Ok(p)) => Some(p.boot_ms),
                _ => None,
            },
            Readiness::Missing(_) => None,
        };
        let mut m = Map::new();
        m.insert("accel".into(), json!(self.accel_mode.as_str()));
        m.insert("boot_ms".into(), json!(boot_ms));
        m
    }

    fn execute(
        &self,
        spec: WorkloadSpec,
        ctx: ExecContext,
    ) -> BoxFuture<'static, Result<WorkloadResult, BackendError>> {
        let ready = self.ready();
        let runtimes = self.runtimes.clone();
        Box::pin(async move {
            let (inner, accel) = ready.map_err(|h| {
                BackendError::Unavailable(h.reason().unwrap_or_default().to_string())
            })?;
            if !runtimes.contains(&spec.runtime) {
                return Err(BackendError::Unsupported(format!(
                    "runtime {} is not available on this host's microvm backend",
                    spec.runtime
                )));
            }
            let name = vm_name(spec.id);
            let dir = inner.runs_dir.join(&name);
            // A leftover of an earlier attempt would keep its old cgroup limits.
            let (i, n) = (inner.clone(), name.clone());
            let _ = tokio::task::spawn_blocking(move || i.teardown(&n)).await;

            let (i, s, d) = (inner.clone(), spec.clone(), dir.clone());
            let prepared = tokio::task::spawn_blocking(move || {
                fs::create_dir_all(&d)
                    .and_then(|()| fs::set_permissions(&d, fs::Permissions::from_mode(0o700)))
                    .map_err(|e| {
                        BackendError::Internal(format!(
                            "microvm: cannot create the scratch dir: {e}"
                        ))
                    })?;
                i.prepare_run(&s, &d)
            })
            .await
            .map_err(|e| BackendError::Internal(format!("microvm: prepare panicked: {e}")))
            .and_then(|r| r);
            let result = match prepared {
                Ok(p) => inner.run(&spec, accel, p, &dir, &ctx).await,
                Err(e) => Err(e),
            };
            let i = inner.clone();
            let _ = tokio::task::spawn_blocking(move || i.teardown(&name)).await;
            result
        })
    }

    fn cleanup(&self, id: WorkloadId) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if let Some(inner) = inner {
                let name = vm_name(id);
                let _ = tokio::task::spawn_blocking(move || inner.teardown(&name)).await;
            }
        })
    }
}
