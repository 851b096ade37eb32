//! The workload's side of the guest: its work directory and its cgroup.

use std::fs;
use std::io;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command};

use nix::mount::{mount, MsFlags};
use vulcan_guest_proto::{Entry, RunRequest};

/// The workload's private, writable directory (a tmpfs) and its working directory.
pub const WORK_DIR: &str = "/work";

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP: &str = "/sys/fs/cgroup/workload";

/// `rel` below [`WORK_DIR`] when it is made of plain components only. The host checked
/// the archive already; this keeps a confused host from writing elsewhere.
fn inside_work(rel: &str) -> Result<PathBuf, String> {
    let path = Path::new(rel);
    if rel.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!("refusing entry path {rel:?}"));
    }
    Ok(Path::new(WORK_DIR).join(path))
}

fn tmpfs(target: &str, size_mb: u64, mode: &str) -> Result<(), String> {
    fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
    let data = format!("size={size_mb}m,mode={mode}");
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| format!("mount tmpfs on {target}: {e}"))
}

/// Mount `/work` and `/tmp`, write the entries, hand everything to the workload user.
pub fn prepare(req: &RunRequest) -> Result<(), String> {
    tmpfs(WORK_DIR, req.work_size_mb.max(1), "0755")?;
    tmpfs("/tmp", req.tmp_size_mb.max(1), "1777")?;
    let io_err = |what: &Path, e: io::Error| format!("{}: {e}", what.display());
    for entry in &req.entries {
        match entry {
            Entry::Dir { path } => {
                let p = inside_work(path)?;
                fs::create_dir_all(&p).map_err(|e| io_err(&p, e))?;
            }
            Entry::File { path, mode, data } => {
                let p = inside_work(path)?;
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
                }
                fs::write(&p, data).map_err(|e| io_err(&p, e))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o755))
                    .map_err(|e| io_err(&p, e))?;
            }
            Entry::Symlink { path, target } => {
                let p = inside_work(path)?;
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
                }
                symlink(target, &p).map_err(|e| io_err(&p, e))?;
            }
        }
    }
    chown_tree(Path::new(WORK_DIR), req.uid).map_err(|e| format!("chown {WORK_DIR}: {e}"))
}

fn chown_tree(path: &Path, uid: u32) -> io::Result<()> {
    lchown(path, Some(uid), Some(uid))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid)?;
        }
    }
    Ok(())
}

/// The workload's cgroup: memory (no swap) and process limits, an OOM counter, and a
/// way to kill every process in it.
pub struct Cgroup;

impl Cgroup {
    /// Create it with the request's limits.
    pub fn create(req: &RunRequest) -> Result<Self, String> {
        let write = |file: &str, value: &str| {
            fs::write(file, value).map_err(|e| format!("write {value:?} to {file}: {e}"))
        };
        write(
            &format!("{CGROUP_ROOT}/cgroup.subtree_control"),
            "+memory +pids",
        )?;
        fs::create_dir_all(CGROUP).map_err(|e| format!("mkdir {CGROUP}: {e}"))?;
        write(
            &format!("{CGROUP}/memory.max"),
            &req.mem_limit_bytes.to_string(),
        )?;
        // Absent without swap support; there is no swap device anyway.
        let _ = fs::write(format!("{CGROUP}/memory.swap.max"), "0");
        write(
            &format!("{CGROUP}/pids.max"),
            &req.max_processes.max(1).to_string(),
        )?;
        Ok(Self)
    }

    /// Spawn `cmd` so that the child starts inside the cgroup (before it can allocate
    /// anything): the agent joins it for the fork and leaves right after.
    pub fn spawn_inside(&self, cmd: &mut Command) -> io::Result<Child> {
        let me = std::process::id().to_string();
        fs::write(format!("{CGROUP}/cgroup.procs"), &me)?;
        let child = cmd.spawn();
        fs::write(format!("{CGROUP_ROOT}/cgroup.procs"), &me)?;
        child
    }

    /// Kill every process left in the cgroup.
    pub fn kill_all(&self) {
        let _ = fs::write(format!("{CGROUP}/cgroup.kill"), "1");
    }

    /// Whether the kernel OOM-killed a process of the workload.
    pub fn oom_killed(&self) -> bool {
        fs::read_to_string(format!("{CGROUP}/memory.events"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("oom_kill "))
            .any(|n| n.trim().parse::<u64>().unwrap_or(0) > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_stay_inside_work() {
        assert_eq!(
            inside_work("pkg/mod.py").ok(),
            Some(PathBuf::from("/work/pkg/mod.py"))
        );
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./a"] {
            assert!(inside_work(bad).is_err(), "{bad}");
        }
    }
}
