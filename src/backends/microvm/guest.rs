//! The guest image: the kernel, the modules and the agent an install step put in
//! `guest_dir`, and the initramfs generated from them.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use cpio::newc::{trailer, Builder, ModeFileType};

/// Files of `guest_dir` (written by `.ci/install-microvm.sh`).
pub const KERNEL_FILE: &str = "vmlinux";
/// Directory of `guest_dir` holding the kernel modules (`<name>.ko`, uncompressed).
pub const MODULES_DIR: &str = "modules";
/// The static guest agent binary in `guest_dir`.
pub const AGENT_FILE: &str = "vulcan-agent";

/// Located guest files. Every path exists when this is built.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The uncompressed kernel (booted directly through PVH).
    pub kernel: PathBuf,
    /// The generated initramfs.
    pub initramfs: PathBuf,
}

/// Find the kernel, modules and agent under `guest_dir`, and write the initramfs to
/// `initramfs` (atomically: readers never see a partial file).
pub fn build(guest_dir: &Path, modules: &[String], initramfs: &Path) -> Result<GuestImage, String> {
    let install_hint = "run .ci/install-microvm.sh (as root) to install the guest kernel and agent";
    let kernel = guest_dir.join(KERNEL_FILE);
    if !kernel.is_file() {
        return Err(format!(
            "no guest kernel at {}: {install_hint}",
            kernel.display()
        ));
    }
    let agent_path = guest_dir.join(AGENT_FILE);
    let agent = fs::read(&agent_path).map_err(|e| {
        format!(
            "no guest agent at {}: {e}: {install_hint}",
            agent_path.display()
        )
    })?;
    let mut module_files = Vec::with_capacity(modules.len());
    for (i, name) in modules.iter().enumerate() {
        let path = guest_dir.join(MODULES_DIR).join(format!("{name}.ko"));
        let bytes = fs::read(&path)
            .map_err(|e| format!("no guest module {}: {e}: {install_hint}", path.display()))?;
        // The agent loads modules in name order: the number keeps the configured order.
        module_files.push((format!("vulcan/modules/{i:02}-{name}.ko"), bytes));
    }
    let archive = initramfs_bytes(&agent, &module_files)
        .map_err(|e| format!("cannot build the initramfs: {e}"))?;
    let tmp = initramfs.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, &archive)
        .and_then(|()| fs::rename(&tmp, initramfs))
        .map_err(|e| format!("cannot write {}: {e}", initramfs.display()))?;
    Ok(GuestImage {
        kernel,
        initramfs: initramfs.to_path_buf(),
    })
}

/// A newc archive: the agent as `/init`, the modules, the mount points, and the merged-
/// `/usr` links so the host's dynamically linked programs find their loader.
fn initramfs_bytes(agent: &[u8], modules: &[(String, Vec<u8>)]) -> io::Result<Vec<u8>> {
    let mut out =
        Vec::with_capacity(agent.len() + modules.iter().map(|m| m.1.len()).sum::<usize>() + 4096);
    let mut ino = 0u32;
    let mut add = |out: Vec<u8>, name: &str, kind: ModeFileType, perm: u32, data: &[u8]| {
        ino += 1;
        let nlink = if matches!(kind, ModeFileType::Directory) {
            2
        } else {
            1
        };
        let len = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{name} too large"))
        })?;
        let mut w = Builder::new(name)
            .ino(ino)
            .mode(perm)
            .set_mode_file_type(kind)
            .nlink(nlink)
            .write(out, len);
        w.write_all(data)?;
        w.finish()
    };
    for dir in [
        "dev",
        "proc",
        "sys",
        "usr",
        "work",
        "tmp",
        "vulcan",
        "vulcan/modules",
    ] {
        out = add(out, dir, ModeFileType::Directory, 0o755, b"")?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        out = add(out, link, ModeFileType::Symlink, 0o777, target.as_bytes())?;
    }
    out = add(out, "init", ModeFileType::Regular, 0o755, agent)?;
    for (name, bytes) in modules {
        out = add(out, name, ModeFileType::Regular, 0o644, bytes)?;
    }
    trailer(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_initramfs_holds_init_modules_and_links() {
        let bytes = initramfs_bytes(
            b"AGENT",
            &[("vulcan/modules/00-virtio.ko".into(), b"KO".to_vec())],
        )
        .unwrap();
        let mut names = Vec::new();
        let mut rest: &[u8] = &bytes;
        loop {
            let reader = cpio::NewcReader::new(rest).unwrap();
            if reader.entry().is_trailer() {
                break;
            }
            let e = reader.entry();
            names.push((e.name().to_string(), e.mode() & 0o170000, e.file_size()));
            rest = reader.finish().unwrap();
        }
        assert!(names.contains(&("init".into(), 0o100000, 5)));
        assert!(names.contains(&("vulcan/modules/00-virtio.ko".into(), 0o100000, 2)));
        assert!(names.contains(&("lib64".into(), 0o120000, 9)));
        assert!(names.contains(&("usr".into(), 0o040000, 0)));
    }

    #[test]
    fn a_missing_kernel_names_the_install_step() {
        let dir = tempfile::tempdir().unwrap();
        let err = build(dir.path(), &[], &dir.path().join("i.cpio")).unwrap_err();
        assert!(err.contains("install-microvm.sh"), "{err}");
    }
}
