//! The QEMU command line of one micro-VM, its start inside its cgroup, and its stop.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::process::{Child, Command};

use super::guest::GuestImage;
use vulcan_guest_proto::PORT_NAME;

/// `backends.microvm.accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelMode {
    /// KVM when the start-up probe boots a guest with it; otherwise unavailable.
    Auto,
    /// KVM only (unavailable when the probe fails).
    Kvm,
    /// Software emulation: works everywhere, slow (seconds per run).
    Tcg,
}

/// The accelerator a VM really uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl AccelMode {
    /// The accelerator this mode boots with.
    pub fn accel(self) -> Accel {
        match self {
            Self::Auto | Self::Kvm => Accel::Kvm,
            Self::Tcg => Accel::Tcg,
        }
    }

    /// The mode as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

impl Accel {
    /// `kvm` or `tcg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

/// Environment QEMU and its wrapper shell run with (nothing from the host's).
const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The shell wrapper: join every cgroup given before `--`, then exec QEMU, so QEMU is
/// limited from its first instruction on.
const JOIN_AND_EXEC: &str =
    r#"while [ "$1" != "--" ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@""#;

/// What one VM is made of.
#[derive(Debug, Clone)]
pub struct VmParams {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Accelerator.
    pub accel: Accel,
    /// Kernel and initramfs.
    pub image: GuestImage,
    /// vCPUs.
    pub cpus: u32,
    /// Guest RAM, MiB.
    pub mem_mb: u64,
    /// The host's listening unix socket the guest's port connects to.
    pub socket: PathBuf,
    /// Unprivileged user QEMU switches to after start-up (`-runas`); `None` keeps root.
    pub run_as: Option<String>,
    /// Host TSC frequency in kHz, handed to the guest under TCG (it hangs without).
    pub tsc_khz: Option<u64>,
}

/// QEMU's arguments: a `microvm` machine with no network device, no firmware, no
/// default devices or user config, the seccomp sandbox on, the host's `/usr` read-only
/// over virtio-9p, and the agent's port on virtio-serial.
pub fn args(p: &VmParams) -> Vec<String> {
    let mut cmdline = "quiet panic=-1".to_string();
    if let (Accel::Tcg, Some(khz)) = (p.accel, p.tsc_khz) {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let (accel, cpu) = match p.accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    let mut a: Vec<String> = [
        "-M",
        // ACPI stays on: this kernel finds the virtio-mmio devices through it.
        "microvm,acpi=on",
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        "none",
        "-monitor",
        "none",
        "-sandbox",
        // elevateprivileges stays allowed: -runas needs setuid once, after which the
        // process has nothing to elevate to.
        "on,obsolete=deny,spawn=deny,resourcecontrol=deny",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend([
        "-smp".into(),
        p.cpus.max(1).to_string(),
        "-m".into(),
        p.mem_mb.to_string(),
        "-kernel".into(),
        p.image.kernel.to_string_lossy().into_owned(),
        "-initrd".into(),
        p.image.initramfs.to_string_lossy().into_owned(),
        "-append".into(),
        cmdline,
        "-fsdev".into(),
        "local,id=usr,path=/usr,security_model=none,readonly=on".into(),
        "-device".into(),
        "virtio-9p-device,fsdev=usr,mount_tag=usr".into(),
        "-device".into(),
        "virtio-serial-device".into(),
        "-chardev".into(),
        format!("socket,id=agent,path={}", p.socket.to_string_lossy()),
        "-device".into(),
        format!("virtserialport,chardev=agent,name={PORT_NAME}"),
    ]);
    if let Some(user) = &p.run_as {
        a.extend(["-runas".into(), user.clone()]);
    }
    a
}

/// Start QEMU inside the cgroups whose `cgroup.procs` files are given. Its stderr is
/// piped (the reason when it fails to start); it is killed if the handle is dropped.
pub fn spawn(p: &VmParams, procs_files: &[PathBuf]) -> std::io::Result<Child> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(JOIN_AND_EXEC)
        .arg("vulcan-microvm")
        .args(procs_files)
        .arg("--")
        .arg(&p.qemu)
        .args(args(p))
        .env_clear()
        .env("PATH", PATH_ENV)
        // The VM's scratch dir, removed after the run: nothing QEMU might drop in its
        // working directory (a core file after an assert) outlives it.
        .current_dir(p.socket.parent().unwrap_or(std::path::Path::new("/")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.spawn()
}

/// Send `signal` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Stop a VM: SIGTERM, then SIGKILL if QEMU is still there after `grace`; reaped.
pub async fn stop(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = child.id() {
        signal(pid, Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// The host's TSC frequency in kHz, from `/proc/cpuinfo` (`cpu MHz` of the first CPU).
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(accel: Accel) -> VmParams {
        VmParams {
            qemu: "qemu-system-x86_64".into(),
            accel,
            image: GuestImage {
                kernel: "/g/vmlinux".into(),
                initramfs: "/s/initramfs.cpio".into(),
            },
            cpus: 2,
            mem_mb: 224,
            socket: "/s/runs/x/agent.sock".into(),
            run_as: Some("nobody".into()),
            tsc_khz: Some(2_596_136),
        }
    }

    #[test]
    fn the_vm_has_no_network_and_no_defaults_and_is_sandboxed() {
        let a = args(&params(Accel::Kvm)).join(" ");
        for needed in [
            "-nodefaults",
            "-no-user-config",
            "-sandbox on,",
            "-runas nobody",
            "-smp 2",
            "-m 224",
            "readonly=on",
        ] {
            assert!(a.contains(needed), "{needed} missing from {a}");
        }
        for forbidden in ["-netdev", "-nic", "virtio-net", "tsc_early_khz"] {
            assert!(!a.contains(forbidden), "{forbidden} in {a}");
        }
    }

    #[test]
    fn tcg_guests_get_the_host_tsc_frequency() {
        let a = args(&params(Accel::Tcg)).join(" ");
        assert!(
            a.contains("-accel tcg") && a.contains("tsc_early_khz=2596136"),
            "{a}"
        );
    }
}
