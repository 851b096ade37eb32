//! The OCI bundle of one run: directory layout, root file system and `config.json`.
//!
//! Layout, all private to the backend (`0700`, owned by root):
//!
//! ```text
//! <state_dir>/bundles/<container id>/
//!     config.json   generated here with oci-spec builders
//!     rootfs/       read-only root: empty mount points, a generated /etc, and the
//!                   host's /bin, /lib... as the same symlinks into /usr (merged-/usr
//!                   hosts) or as read-only bind mounts
//!     work/         the code (owned by the sandbox user), bind-mounted read-write at /work
//! ```
//!
//! Inside the sandbox the process sees the host's `/usr` read-only (the language
//! runtimes), `/work`, a tmpfs `/tmp`, its own `/proc` and `/dev`, and nothing else of
//! the host: no `/etc`, no `/home`, no `/root`, no host environment, no network.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

/// The unprivileged user (and group) the workload runs as inside the sandbox.
pub const SANDBOX_UID: u32 = 65534;

/// Where the work directory appears inside the sandbox.
pub const WORK_MOUNT: &str = "/work";

/// Host top-level directories a language runtime may need besides `/usr`.
const HOST_TOP_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// CFS period used for the CPU quota, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// The paths of one bundle.
#[derive(Debug, Clone)]
pub struct BundleLayout {
    /// The bundle directory (`runsc run --bundle`).
    pub dir: PathBuf,
    /// The read-only root file system.
    pub rootfs: PathBuf,
    /// The writable work directory holding the code.
    pub work: PathBuf,
}

impl BundleLayout {
    /// The layout of `container_id` below `bundles_dir` (nothing is created).
    pub fn new(bundles_dir: &Path, container_id: &str) -> Self {
        let dir = bundles_dir.join(container_id);
        Self {
            rootfs: dir.join("rootfs"),
            work: dir.join("work"),
            dir,
        }
    }

    /// Create the bundle, root file system and empty work directory. Fails if the
    /// bundle directory already exists (a leftover must be cleaned first).
    /// Returns the host top-level directories that need a read-only bind mount.
    pub fn create(&self) -> io::Result<Vec<PathBuf>> {
        fs::create_dir(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        fs::create_dir(&self.rootfs)?;
        fs::set_permissions(&self.rootfs, fs::Permissions::from_mode(0o755))?;
        fs::create_dir(&self.work)?;
        // Mount points: the root is read-only, so each must exist beforehand.
        for dir in ["usr", "work", "tmp", "proc", "dev", "etc"] {
            fs::create_dir(self.rootfs.join(dir))?;
        }
        fs::set_permissions(self.rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))?;
        let mut binds = Vec::new();
        for name in HOST_TOP_DIRS {
            let host = Path::new("/").join(name);
            match fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = fs::read_link(&host)?;
                    std::os::unix::fs::symlink(target, self.rootfs.join(name))?;
                }
                Ok(m) if m.is_dir() => {
                    fs::create_dir(self.rootfs.join(name))?;
                    binds.push(host);
                }
                _ => {}
            }
        }
        self.write_etc()?;
        Ok(binds)
    }

    /// A minimal `/etc`: enough for user and host name lookups, nothing from the host.
    fn write_etc(&self) -> io::Result<()> {
        let etc = self.rootfs.join("etc");
        let files: [(&str, String); 6] = [
            (
                "passwd",
                format!(
                    "root:x:0:0:root:/root:/usr/sbin/nologin\n\
                     sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:{WORK_MOUNT}:/usr/sbin/nologin\n"
                ),
            ),
            ("group", format!("root:x:0:\nsandbox:x:{SANDBOX_UID}:\n")),
            (
                "hosts",
                "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost\n".to_string(),
            ),
            ("hostname", "sandbox\n".to_string()),
            ("resolv.conf", String::new()),
            (
                "nsswitch.conf",
                "passwd: files\ngroup: files\nhosts: files\n".to_string(),
            ),
        ];
        for (name, content) in files {
            let path = etc.join(name);
            fs::write(&path, content)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    }

    /// Hand the work directory (and everything unpacked in it) to the sandbox user,
    /// without following links.
    pub fn chown_work(&self) -> io::Result<()> {
        chown_tree(&self.work)
    }

    /// Write `config.json`.
    pub fn write_spec(&self, spec: &Spec) -> io::Result<()> {
        let text = serde_json::to_vec_pretty(spec).map_err(io::Error::other)?;
        fs::write(self.dir.join("config.json"), text)
    }
}

fn chown_tree(path: &Path) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(SANDBOX_UID), Some(SANDBOX_UID))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path())?;
        }
    }
    Ok(())
}

/// Everything `config.json` depends on.
#[derive(Debug, Clone)]
pub struct SpecParams {
    /// Command line; `args[0]` is an absolute path inside the sandbox.
    pub args: Vec<String>,
    /// The complete environment (`KEY=value`); nothing is inherited from the host.
    pub env: Vec<String>,
    /// The host work directory bound at [`WORK_MOUNT`].
    pub work_dir: PathBuf,
    /// Host top-level directories bound read-only at the same place (see
    /// [`BundleLayout::create`]).
    pub extra_ro_dirs: Vec<PathBuf>,
    /// `linux.cgroupsPath`, unique to the run.
    pub cgroups_path: PathBuf,
    /// Memory limit in bytes (memory and memory+swap).
    pub mem_bytes: u64,
    /// CPUs, turned into a CFS quota.
    pub cpus: u32,
    /// `RLIMIT_NPROC` for the sandbox user.
    pub max_processes: u64,
    /// `RLIMIT_FSIZE` in bytes.
    pub max_file_bytes: u64,
    /// Size of the `/tmp` tmpfs in MiB.
    pub tmp_size_mb: u64,
    /// More bind mounts (a go run's build output directory or built binary); each
    /// destination must exist in the read-only root file system beforehand.
    pub extra_mounts: Vec<BindMount>,
}

/// One bind mount of a host file or directory into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Absolute path inside the sandbox.
    pub destination: String,
    /// Host path (private to the backend).
    pub source: PathBuf,
    /// Mounted read-only: the sandbox cannot change it.
    pub readonly: bool,
}

/// Build the OCI runtime spec of one code run (python, go, node).
pub fn build_spec(p: &SpecParams) -> Result<Spec, oci_spec::OciSpecError> {
    let process = process(
        &p.args,
        &p.env,
        WORK_MOUNT,
        (SANDBOX_UID, SANDBOX_UID),
        p.max_processes,
        p.max_file_bytes,
    )?;
    let mut mounts = system_mounts()?;
    mounts.push(bind("/usr", Path::new("/usr"), true)?);
    for dir in &p.extra_ro_dirs {
        mounts.push(bind(&dir.to_string_lossy(), dir, true)?);
    }
    mounts.push(bind(WORK_MOUNT, &p.work_dir, false)?);
    for m in &p.extra_mounts {
        mounts.push(bind(&m.destination, &m.source, m.readonly)?);
    }
    let tmp_size = format!("size={}m", p.tmp_size_mb.max(1));
    mounts.push(mount(
        "/tmp",
        "tmpfs",
        "tmpfs",
        &["nosuid", "nodev", "mode=1777", &tmp_size],
    )?);
    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(true)
                .build()?,
        )
        .hostname("sandbox")
        .process(process)
        .mounts(mounts)
        .linux(linux(&p.cgroups_path, p.mem_bytes, p.cpus)?)
        .build()
}

/// Everything `config.json` of an image run depends on.
#[derive(Debug, Clone)]
pub struct ImageSpecParams {
    /// The image's prepared root file system (shared by runs, never written: the run is
    /// started with runsc's root overlay, so its writes land in sandbox memory).
    pub rootfs: PathBuf,
    /// Command line (entrypoint + cmd, or the request's command).
    pub args: Vec<String>,
    /// The complete environment: the image's, then Vulcan's.
    pub env: Vec<String>,
    /// Working directory inside the sandbox (absolute).
    pub cwd: String,
    /// User and group ids inside the sandbox (the image's `User`).
    pub uid: u32,
    /// Group id inside the sandbox.
    pub gid: u32,
    /// `linux.cgroupsPath`, unique to the run.
    pub cgroups_path: PathBuf,
    /// Memory limit in bytes (the run's writable layer counts against it).
    pub mem_bytes: u64,
    /// CPUs, turned into a CFS quota.
    pub cpus: u32,
    /// `RLIMIT_NPROC`.
    pub max_processes: u64,
    /// `RLIMIT_FSIZE` in bytes.
    pub max_file_bytes: u64,
}

/// Build the OCI runtime spec of one image run: the image's root file system (made
/// writable only through runsc's in-memory overlay), its own `/proc` and `/dev`,
/// nothing of the host, no capabilities, no network.
pub fn build_image_spec(p: &ImageSpecParams) -> Result<Spec, oci_spec::OciSpecError> {
    let process = process(
        &p.args,
        &p.env,
        &p.cwd,
        (p.uid, p.gid),
        p.max_processes,
        p.max_file_bytes,
    )?;
    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(p.rootfs.clone())
                // runsc applies its root overlay only to a writable root; the host
                // directory itself is opened read-only by the gofer either way.
                .readonly(false)
                .build()?,
        )
        .hostname("sandbox")
        .process(process)
        .mounts(system_mounts()?)
        .linux(linux(&p.cgroups_path, p.mem_bytes, p.cpus)?)
        .build()
}

/// The process of a run: no capabilities in any set (so uid 0 in the sandbox has no
/// privilege either), no new privileges, the rlimits.
fn process(
    args: &[String],
    env: &[String],
    cwd: &str,
    (uid, gid): (u32, u32),
    max_processes: u64,
    max_file_bytes: u64,
) -> Result<oci_spec::runtime::Process, oci_spec::OciSpecError> {
    let rlimit = |typ, value: u64| {
        PosixRlimitBuilder::default()
            .typ(typ)
            .soft(value)
            .hard(value)
            .build()
    };
    let empty = Capabilities::new();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(empty.clone())
        .effective(empty.clone())
        .inheritable(empty.clone())
        .permitted(empty.clone())
        .ambient(empty)
        .build()?;
    ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .additional_gids(Vec::<u32>::new())
                .build()?,
        )
        .args(args.to_vec())
        .env(env.to_vec())
        .cwd(cwd)
        .capabilities(capabilities)
        .no_new_privileges(true)
        .rlimits(vec![
            rlimit(PosixRlimitType::RlimitNproc, max_processes)?,
            rlimit(PosixRlimitType::RlimitFsize, max_file_bytes)?,
            rlimit(PosixRlimitType::RlimitNofile, 1024)?,
            rlimit(PosixRlimitType::RlimitCore, 0)?,
        ])
        .build()
}

/// `/proc` and `/dev`, private to the sandbox.
fn system_mounts() -> Result<Vec<Mount>, oci_spec::OciSpecError> {
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
    ])
}

/// Limits (a cgroup unique to the run) and namespaces (network among them: no network).
fn linux(
    cgroups_path: &Path,
    mem_bytes: u64,
    cpus: u32,
) -> Result<oci_spec::runtime::Linux, oci_spec::OciSpecError> {
    let mem = i64::try_from(mem_bytes).unwrap_or(i64::MAX);
    let quota = i64::try_from(u64::from(cpus.max(1)) * CPU_PERIOD_US).unwrap_or(i64::MAX);
    let resources = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(mem).swap(mem).build()?)
        .cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()?,
        )
        .build()?;
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<Vec<_>, _>>()?;
    LinuxBuilder::default()
        .cgroups_path(cgroups_path.to_path_buf())
        .resources(resources)
        .namespaces(namespaces)
        .masked_paths(Vec::<String>::new())
        .readonly_paths(Vec::<String>::new())
        .build()
}

fn mount(
    destination: &str,
    typ: &str,
    source: &str,
    options: &[&str],
) -> Result<Mount, oci_spec::OciSpecError> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
}

fn bind(destination: &str, source: &Path, readonly: bool) -> Result<Mount, oci_spec::OciSpecError> {
    let mut options = vec!["rbind", "nosuid", "nodev"];
    options.push(if readonly { "ro" } else { "rw" });
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn params() -> SpecParams {
        SpecParams {
            args: vec!["/usr/bin/python3".into(), "-u".into(), "main.py".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "VULCAN_INPUT=null".into()],
            work_dir: PathBuf::from("/state/bundles/vulcan-x/work"),
            extra_ro_dirs: vec![],
            cgroups_path: PathBuf::from("/vulcan-gvisor/vulcan-x"),
            mem_bytes: 64 << 20,
            cpus: 2,
            max_processes: 128,
            max_file_bytes: 1 << 30,
            tmp_size_mb: 64,
            extra_mounts: vec![],
        }
    }

    #[test]
    fn spec_carries_limits_user_and_mounts() {
        let spec = build_spec(&params()).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["linux"]["cgroupsPath"], "/vulcan-gvisor/vulcan-x");
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 200_000);
        assert_eq!(json["linux"]["resources"]["cpu"]["period"], 100_000);
        assert!(json["linux"]["resources"].get("pids").is_none());
        assert_eq!(json["process"]["user"]["uid"], SANDBOX_UID);
        assert_eq!(json["process"]["terminal"], false);
        assert_eq!(json["root"]["readonly"], true);
        let rlimits = json["process"]["rlimits"].as_array().unwrap();
        assert!(rlimits
            .iter()
            .any(|r| r["type"] == "RLIMIT_NPROC" && r["hard"] == 128));
        assert!(rlimits.iter().any(|r| r["type"] == "RLIMIT_FSIZE"));
        let mounts = json["mounts"].as_array().unwrap();
        let usr = mounts.iter().find(|m| m["destination"] == "/usr").unwrap();
        assert!(usr["options"].as_array().unwrap().contains(&"ro".into()));
        assert!(!mounts.iter().any(|m| m["destination"] == "/etc"));
        let work = mounts.iter().find(|m| m["destination"] == "/work").unwrap();
        assert_eq!(work["source"], "/state/bundles/vulcan-x/work");
        let env = json["process"]["env"].as_array().unwrap();
        assert_eq!(env.len(), 2);
    }

    #[test]
    fn bundle_layout_has_mount_points_and_no_host_etc() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = BundleLayout::new(tmp.path(), "vulcan-test");
        layout.create().unwrap();
        for dir in ["usr", "work", "tmp", "proc", "dev", "etc"] {
            assert!(layout.rootfs.join(dir).is_dir(), "{dir}");
        }
        assert!(!layout.rootfs.join("etc/shadow").exists());
        let passwd = fs::read_to_string(layout.rootfs.join("etc/passwd")).unwrap();
        assert!(passwd.contains("sandbox:x:65534"));
        // A second create on the same id fails instead of reusing a leftover.
        assert!(layout.create().is_err());
    }
}
