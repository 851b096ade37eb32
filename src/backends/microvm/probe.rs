//! The start-up probe: boot the guest once with the configured accelerator and measure
//! the time to the agent's `Ready`. A hang (no `Ready` within the probe timeout) or a
//! QEMU failure (an assert on a software `/dev/kvm`, say) means "not usable", with the
//! reason. The result is shared by every backend instance of the process with the same
//! QEMU, accelerator and guest (restarts and test apps do not boot again).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::qemu::{Accel, VmParams};
use super::vm::{self, VmError};
use super::{cgroup, Inner};
use crate::backends::gvisor::cgroup as shared_cgroup;

/// Memory of the probe VM above the guest overhead, in MiB.
const PROBE_MEM_MB: u64 = 64;

/// What a successful probe measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probed {
    /// The accelerator that booted the guest.
    pub accel: Accel,
    /// From QEMU's start to the agent's `Ready`, in milliseconds.
    pub boot_ms: u64,
}

/// Where a probe stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeState {
    /// The probe VM is booting.
    Running,
    /// Finished: what it measured, or why the accelerator is not usable.
    Done(Result<Probed, String>),
}

/// A probe's state, shared between the probing thread and every backend using it.
#[derive(Debug)]
pub struct ProbeCell(Mutex<ProbeState>);

impl ProbeCell {
    /// The current state.
    pub fn state(&self) -> ProbeState {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, state: ProbeState) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }
}

/// What makes two probes the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ProbeKey {
    accel: Accel,
    qemu: PathBuf,
    kernel: PathBuf,
    modules: Vec<String>,
}

fn probes() -> &'static Mutex<HashMap<ProbeKey, Arc<ProbeCell>>> {
    static PROBES: OnceLock<Mutex<HashMap<ProbeKey, Arc<ProbeCell>>>> = OnceLock::new();
    PROBES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The probe for `inner`'s QEMU, accelerator and guest: the running or finished one of
/// this process, or a new one started on a thread of its own (the caller never waits).
pub fn shared(inner: &Arc<Inner>, accel: Accel) -> Arc<ProbeCell> {
    let key = ProbeKey {
        accel,
        qemu: inner.qemu.clone(),
        kernel: inner.image.kernel.clone(),
        modules: inner.cfg.guest_modules.clone(),
    };
    let mut map = probes().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(cell) = map.get(&key) {
        return cell.clone();
    }
    let cell = Arc::new(ProbeCell(Mutex::new(ProbeState::Running)));
    map.insert(key, cell.clone());
    drop(map);
    let (probe_cell, probe_inner) = (cell.clone(), inner.clone());
    let spawned = std::thread::Builder::new()
        .name("microvm-probe".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the probe's runtime: {e}"))
                .and_then(|rt| rt.block_on(boot_once(&probe_inner, accel)));
            match &result {
                Ok(p) => log::info!(
                    "microvm: {} guest booted in {} ms",
                    accel.as_str(),
                    p.boot_ms
                ),
                Err(reason) => log::warn!("microvm: {} is not usable: {reason}", accel.as_str()),
            }
            probe_cell.set(ProbeState::Done(result));
        });
    if let Err(e) = spawned {
        cell.set(ProbeState::Done(Err(format!(
            "cannot start the probe thread: {e}"
        ))));
    }
    cell
}

/// Boot one VM to `Ready` and stop it.
async fn boot_once(inner: &Inner, accel: Accel) -> Result<Probed, String> {
    let name = format!(
        "probe-{}-{}",
        std::process::id(),
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    );
    let dir = inner.runs_dir.join(&name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = boot_in(inner, accel, &name, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = shared_cgroup::remove(&inner.cfg.cgroup_parent, &name) {
        log::warn!("microvm: cannot remove the probe's cgroup: {e}");
    }
    result
}

async fn boot_in(
    inner: &Inner,
    accel: Accel,
    name: &str,
    dir: &std::path::Path,
) -> Result<Probed, String> {
    let mem_mb = inner.cfg.guest_overhead_mb + PROBE_MEM_MB;
    let leaf = cgroup::create(
        &inner.cfg.cgroup_parent,
        name,
        cgroup::VmLimits {
            mem_bytes: (mem_mb + inner.cfg.qemu_overhead_mb) << 20,
            cpus: 1,
        },
    )?;
    let socket = dir.join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    let params = VmParams {
        qemu: inner.qemu.clone(),
        accel,
        image: inner.image.clone(),
        cpus: 1,
        mem_mb,
        socket,
        run_as: inner.run_as.clone(),
        tsc_khz: inner.tsc_khz,
    };
    let timeout = Duration::from_secs(inner.cfg.probe_timeout_s.max(1));
    let never = CancellationToken::new();
    let grace = inner.grace();
    match vm::boot(
        &params,
        &leaf.procs_files,
        listener,
        &never,
        Instant::now() + timeout,
        grace,
    )
    .await
    {
        Ok(vm) => {
            let boot_ms = u64::try_from(vm.boot.as_millis()).unwrap_or(u64::MAX);
            vm.shut_down(Duration::ZERO, grace).await;
            Ok(Probed { accel, boot_ms })
        }
        Err(VmError::TimedOut) => Err(format!(
            "the guest did not boot within {}s with {} (a hang: this /dev/kvm cannot run it)",
            timeout.as_secs(),
            accel.as_str()
        )),
        Err(VmError::Failed(why)) => Err(format!(
            "the guest does not boot with {}: {why}",
            accel.as_str()
        )),
        Err(VmError::Cancelled) => Err("the probe was cancelled".into()),
    }
}
