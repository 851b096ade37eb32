//! QEMU's own cgroup: one leaf per VM (`/<parent>/<leaf>`) with a memory limit (guest
//! RAM plus QEMU's overhead, no swap) and a CPU quota (the VM's vCPUs), on cgroup v2 or
//! on the v1 `memory` and `cpu` hierarchies. Finding and removing hierarchies is the
//! shared code of [`crate::backends::gvisor::cgroup`]; this module only creates leaves,
//! writes limits and finds the processes left in them.

use std::fs;
use std::path::{Path, PathBuf};

use crate::backends::gvisor::cgroup::{hierarchy_roots, leaves};

/// The CFS period the CPU quota is expressed in, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// Limits of one VM's cgroup.
#[derive(Debug, Clone, Copy)]
pub struct VmLimits {
    /// Memory of the whole QEMU process (guest RAM included), in bytes.
    pub mem_bytes: u64,
    /// CPUs the QEMU process may use.
    pub cpus: u32,
}

/// A created leaf: the `cgroup.procs` files a process joins to fall under its limits.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// One per hierarchy that carries a limit.
    pub procs_files: Vec<PathBuf>,
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    fs::write(dir.join(file), value).map_err(|e| {
        format!(
            "cannot write {value:?} to {}: {e}",
            dir.join(file).display()
        )
    })
}

fn controllers(root: &Path) -> Option<String> {
    fs::read_to_string(root.join("cgroup.controllers")).ok()
}

/// Create `/<parent>/<leaf>` with `limits`. Fails unless both memory and CPU are
/// limited (a VM without limits must not start).
pub fn create(parent: &str, leaf: &str, limits: VmLimits) -> Result<Leaf, String> {
    let mut procs_files = Vec::new();
    let (mut memory, mut cpu) = (false, false);
    let quota = CPU_PERIOD_US * u64::from(limits.cpus.max(1));
    for root in hierarchy_roots() {
        if let Some(available) = controllers(&root) {
            // cgroup v2: usable only where this hierarchy owns the controllers.
            let words: Vec<&str> = available.split_whitespace().collect();
            if !(words.contains(&"memory") && words.contains(&"cpu")) {
                continue;
            }
            let parent_dir = root.join(parent);
            fs::create_dir_all(&parent_dir)
                .map_err(|e| format!("cannot create {}: {e}", parent_dir.display()))?;
            write(&root, "cgroup.subtree_control", "+memory +cpu")?;
            write(&parent_dir, "cgroup.subtree_control", "+memory +cpu")?;
            let dir = parent_dir.join(leaf);
            fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            write(&dir, "memory.max", &limits.mem_bytes.to_string())?;
            let _ = fs::write(dir.join("memory.swap.max"), "0");
            write(&dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
            procs_files.push(dir.join("cgroup.procs"));
            memory = true;
            cpu = true;
            continue;
        }
        let is_memory = root.join("memory.limit_in_bytes").exists();
        let is_cpu = root.join("cpu.cfs_quota_us").exists();
        if !is_memory && !is_cpu {
            continue;
        }
        let dir = root.join(parent).join(leaf);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if is_memory {
            write(&dir, "memory.limit_in_bytes", &limits.mem_bytes.to_string())?;
            // With swap accounting, the same bound for memory + swap: no swapping out.
            if dir.join("memory.memsw.limit_in_bytes").exists() {
                write(
                    &dir,
                    "memory.memsw.limit_in_bytes",
                    &limits.mem_bytes.to_string(),
                )?;
            }
            memory = true;
        }
        if is_cpu {
            write(&dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            write(&dir, "cpu.cfs_quota_us", &quota.to_string())?;
            cpu = true;
        }
        procs_files.push(dir.join("cgroup.procs"));
    }
    if !memory || !cpu {
        return Err(format!(
            "no usable cgroup {} controller on this host: micro-VMs cannot be limited",
            if memory { "cpu" } else { "memory" }
        ));
    }
    Ok(Leaf { procs_files })
}

/// Every process still in `/<parent>/<leaf>` (all of `parent` when `leaf` is `None`).
pub fn processes(parent: &str, leaf: Option<&str>) -> Vec<i32> {
    let dirs: Vec<PathBuf> = match leaf {
        Some(leaf) => hierarchy_roots()
            .into_iter()
            .map(|r| r.join(parent).join(leaf))
            .collect(),
        None => leaves(parent),
    };
    let mut pids: Vec<i32> = dirs
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}
