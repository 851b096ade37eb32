//! A memory cgroup per isolate worker: the backstop above the engines' own limits.
//!
//! The engines cap a workload's heap at its `mem_mb`; the cgroup caps the whole worker
//! process (engine, compiled code, host-side buffers) at `max_mem_mb` plus an overhead,
//! so a bug that bypasses an engine limit ends in an OOM kill of that one worker instead
//! of exhausting the host. Works on cgroup v2 (`memory.max`) and on v1 hierarchies
//! (`memory.limit_in_bytes`), found under `/sys/fs/cgroup`.
//!
//! Layout: `<memory hierarchy>/<parent>/w<server pid>-<n>`. Leaves whose server process
//! is gone are removed when a pool starts; a leaf is removed when its worker is retired.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// Leaf names are unique within the server process (several pools may coexist, as in
/// tests or after a backend restart).
static NEXT_LEAF: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The parent directory worker cgroups are made in.
#[derive(Debug, Clone)]
pub(super) struct CgroupParent {
    dir: PathBuf,
    version: Version,
}

/// Where the memory controller lives: `(hierarchy root, version)`.
fn memory_hierarchy() -> Option<(PathBuf, Version)> {
    let base = Path::new(CGROUP_MOUNT);
    for root in [base.to_path_buf(), base.join("unified")] {
        if let Ok(controllers) = fs::read_to_string(root.join("cgroup.controllers")) {
            if controllers.split_whitespace().any(|c| c == "memory") {
                return Some((root, Version::V2));
            }
        }
    }
    let v1 = base.join("memory");
    v1.join("memory.limit_in_bytes")
        .exists()
        .then_some((v1, Version::V1))
}

impl CgroupParent {
    /// Find the memory hierarchy and make `<hierarchy>/<parent>` (one path component)
    /// ready for worker leaves; remove leaves left by servers that are gone.
    pub(super) fn open(parent: &str) -> Result<Self, String> {
        if parent.is_empty() || parent.contains('/') || parent == "." || parent == ".." {
            return Err(format!(
                "cgroup_parent {parent:?} must be one path component"
            ));
        }
        let (root, version) =
            memory_hierarchy().ok_or("no cgroup memory controller under /sys/fs/cgroup")?;
        let dir = root.join(parent);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
        if version == Version::V2 {
            // Leaves get memory.max only if the controller is enabled for children.
            fs::write(dir.join("cgroup.subtree_control"), "+memory").map_err(|e| {
                format!(
                    "cannot enable the memory controller in {}: {e}",
                    dir.display()
                )
            })?;
        }
        let found = Self { dir, version };
        found.sweep();
        Ok(found)
    }

    /// A new leaf with `memory_bytes` as its hard limit (no swap beyond it).
    pub(super) fn create(&self, memory_bytes: u64) -> io::Result<WorkerCgroup> {
        let name = format!(
            "w{}-{}",
            std::process::id(),
            NEXT_LEAF.fetch_add(1, Ordering::Relaxed)
        );
        let dir = self.dir.join(name);
        fs::create_dir(&dir)?;
        let leaf = WorkerCgroup {
            dir,
            version: self.version,
        };
        let limit = memory_bytes.to_string();
        match self.version {
            Version::V2 => {
                fs::write(leaf.dir.join("memory.max"), &limit)?;
                // Absent without swap accounting; nothing to cap then.
                let _ = fs::write(leaf.dir.join("memory.swap.max"), "0");
            }
            Version::V1 => {
                fs::write(leaf.dir.join("memory.limit_in_bytes"), &limit)?;
                let _ = fs::write(leaf.dir.join("memory.memsw.limit_in_bytes"), &limit);
            }
        }
        Ok(leaf)
    }

    /// Remove leaves of server processes that no longer exist.
    fn sweep(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix('w')
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                // Still populated (a worker that outlived its server): left alone.
                let _ = fs::remove_dir(entry.path());
            }
        }
    }
}

/// One worker's cgroup. Dropping it removes the directory once its process is gone.
#[derive(Debug)]
pub(super) struct WorkerCgroup {
    dir: PathBuf,
    version: Version,
}

impl WorkerCgroup {
    /// Move process `pid` (the whole process) into this cgroup.
    pub(super) fn place(&self, pid: u32) -> io::Result<()> {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string())
    }

    /// How many times the kernel's OOM killer acted in this cgroup.
    pub(super) fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }

    /// The directory (for tests and diagnostics).
    pub(super) fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for WorkerCgroup {
    fn drop(&mut self) {
        let dir = std::mem::take(&mut self.dir);
        if fs::remove_dir(&dir).is_ok() {
            return;
        }
        // The worker is still being torn down (a killed process leaves its cgroup a
        // moment later): retry off the async runtime for a little while.
        let _ = std::thread::Builder::new()
            .name("isolate-cgroup-rm".into())
            .spawn(move || {
                for _ in 0..40 {
                    std::thread::sleep(Duration::from_millis(50));
                    match fs::remove_dir(&dir) {
                        Ok(()) => return,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                        Err(_) => {}
                    }
                }
                log::warn!("isolate: could not remove cgroup {}", dir.display());
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_names_are_single_components() {
        for bad in ["", "a/b", "..", "."] {
            assert!(CgroupParent::open(bad).is_err(), "{bad:?}");
        }
    }
}
