//! Boot-time set-up of the guest: kernel file systems, modules, `/usr`, the port.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::kmod::{finit_module, ModuleInitFlags};
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};

/// Where the host puts the modules, named so that name order is load order.
const MODULES_DIR: &str = "/vulcan/modules";

/// The 9p tag of the host's `/usr` share, and the largest 9p message (the host's
/// `-fsdev` accepts it; larger messages mean fewer round trips).
const USR_TAG: &str = "usr";
const USR_OPTIONS: &str = "trans=virtio,version=9p2000.L,msize=512000";

fn do_mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
    mount(Some(source), target, Some(fstype), flags, data)
        .map_err(|e| format!("mount {fstype} on {target}: {e}"))
}

/// `/proc`, `/sys`, `/dev` and the cgroup v2 hierarchy.
pub fn mount_kernel_filesystems() -> Result<(), String> {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    do_mount("proc", "/proc", "proc", hardened, None)?;
    do_mount("sysfs", "/sys", "sysfs", hardened, None)?;
    do_mount("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, None)?;
    do_mount("cgroup2", "/sys/fs/cgroup", "cgroup2", hardened, None)
}

/// Load every module of [`MODULES_DIR`] in name order. A module the kernel already has
/// (built in) is fine.
pub fn load_modules() -> Result<(), String> {
    let mut modules: Vec<PathBuf> = match fs::read_dir(MODULES_DIR) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(_) => return Ok(()),
    };
    modules.sort();
    let no_params = CString::default();
    for path in modules {
        let file = File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
        match finit_module(&file, &no_params, ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(format!("load {}: {e}", path.display())),
        }
    }
    Ok(())
}

/// The host's `/usr`, read-only.
pub fn mount_usr() -> Result<(), String> {
    do_mount(
        USR_TAG,
        "/usr",
        "9p",
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        Some(USR_OPTIONS),
    )
}

/// Open the virtio-serial port called `name` (found through sysfs: there is no udev to
/// make `/dev/virtio-ports/<name>`).
pub fn open_port(name: &str) -> Result<File, String> {
    let class = Path::new("/sys/class/virtio-ports");
    let entries = fs::read_dir(class).map_err(|e| format!("{}: {e}", class.display()))?;
    for entry in entries.flatten() {
        let port_name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim() == name {
            let dev = Path::new("/dev").join(entry.file_name());
            return OpenOptions::new()
                .read(true)
                .write(true)
                .open(&dev)
                .map_err(|e| format!("open {}: {e}", dev.display()));
        }
    }
    Err(format!("no virtio-serial port named {name:?}"))
}

/// Power the VM off (QEMU exits). PID 1 must never return: if the call fails, the
/// kernel's panic on init's exit ends the VM all the same (`panic=-1`, `-no-reboot`).
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_POWER_OFF);
    std::process::exit(1)
}
