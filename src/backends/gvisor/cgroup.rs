//! The per-run cgroups runsc creates from `linux.cgroupsPath`, and their removal.
//!
//! Every run gets the path `/<parent>/<container id>`; runsc creates it in every
//! hierarchy (all v1 controllers, the v1 `name=systemd` tree and a v2 mount), applies
//! `linux.resources` and normally removes it on exit. After a kill, a crash or a lost
//! `runsc` process the directories stay, and a later run on the same path would join them
//! with their old limits, so the backend removes them itself after every run and at
//! start-up. Only `rmdir` is ever used: cgroup directories hold no removable files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where cgroup file systems are mounted.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// The path runsc is given (`linux.cgroupsPath`): absolute, relative to each hierarchy.
pub fn cgroups_path(parent: &str, leaf: &str) -> PathBuf {
    PathBuf::from(format!("/{parent}/{leaf}"))
}

/// The root directory of every mounted cgroup hierarchy: `/sys/fs/cgroup` itself on a
/// pure v2 host, otherwise each controller directory (symlinked aliases such as
/// `cpu,cpuacct` are skipped) including a hybrid host's `unified` v2 mount.
pub fn hierarchy_roots() -> Vec<PathBuf> {
    let base = Path::new(CGROUP_MOUNT);
    let mut roots = Vec::new();
    if base.join("cgroup.procs").exists() {
        roots.push(base.to_path_buf());
        return roots;
    }
    let Ok(entries) = fs::read_dir(base) else {
        return roots;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && entry.path().join("cgroup.procs").exists() {
            roots.push(entry.path());
        }
    }
    roots.sort();
    roots
}

/// Every existing per-run directory below `parent`, across all hierarchies.
pub fn leaves(parent: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for root in hierarchy_roots() {
        let Ok(entries) = fs::read_dir(root.join(parent)) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// Remove `/<parent>/<leaf>` from every hierarchy. Missing directories are fine; a
/// directory still busy (the sandbox is exiting) is retried for up to about a second.
pub fn remove(parent: &str, leaf: &str) -> io::Result<()> {
    let mut first_error = None;
    for root in hierarchy_roots() {
        let dir = root.join(parent).join(leaf);
        if let Err(e) = remove_tree(&dir) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Remove every per-run directory below `parent` (start-up cleanup).
pub fn remove_all(parent: &str) -> io::Result<()> {
    let mut first_error = None;
    for dir in leaves(parent) {
        if let Err(e) = remove_tree(&dir) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Remove the `parent` directories themselves where they are empty. Used by tests,
/// which create throw-away parents; a server keeps its parent between runs.
#[cfg(test)]
pub fn remove_parent_if_empty(parent: &str) {
    for root in hierarchy_roots() {
        let _ = fs::remove_dir(root.join(parent));
    }
}

/// `rmdir` a cgroup directory and any child cgroups, deepest first.
fn remove_tree(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path())?;
            }
        }
    }
    let mut attempts = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // EBUSY while the last sandbox processes are being reaped.
            Err(_) if attempts < 40 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn path_is_absolute_under_the_parent() {
        assert_eq!(
            cgroups_path("vulcan-gvisor", "vulcan-abc"),
            PathBuf::from("/vulcan-gvisor/vulcan-abc")
        );
    }

    #[test]
    fn removing_a_missing_cgroup_is_a_no_op() {
        assert!(remove("vulcan-test-no-such-parent", "vulcan-nothing").is_ok());
        assert!(leaves("vulcan-test-no-such-parent").is_empty());
    }
}
