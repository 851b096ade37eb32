//! Confinement of an isolate worker process, applied by the worker itself before it
//! accepts its first job (docs/security.md describes each step and how it is tested).
//!
//! Order matters, and [`crate::backends::isolate::worker`] keeps it:
//! 1. (server side) the worker is placed in a memory cgroup of its own;
//! 2. [`die_with_parent`]; 3. [`enter_namespaces`] and [`empty_root`] (root only);
//! 4. [`drop_identity`] while the process is still single-threaded (a uid belongs to a
//!    thread at the system-call level); 5. [`set_limits`];
//! 6. the worker starts its few threads (epoch ticker, socket reader);
//! 7. [`forbid_new_processes`] and [`install_seccomp`], which applies to every thread.
//!
//! Each step either holds or is reported as a limitation (a sentence the server shows
//! in `GET /v1/backends`); only the seccomp filter is mandatory.

use std::collections::BTreeMap;

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{Resource, Rlimit};
use rustix::thread::{CapabilitySet, CapabilitySets, UnshareFlags};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Open file descriptors a worker may hold (it needs about ten).
pub const MAX_OPEN_FILES: u64 = 64;

/// Where the private tmpfs that becomes the worker's root is mounted before
/// `pivot_root` (in the worker's own mount namespace, so the host never sees it; any
/// directory that exists on every Linux host will do).
const NEW_ROOT: &str = "/proc";

/// What could not be applied, one sentence per protection.
#[derive(Debug, Default)]
pub struct Report {
    /// Human-readable limitations, in the order they were found.
    pub limitations: Vec<String>,
}

impl Report {
    fn missing(&mut self, what: impl Into<String>) {
        self.limitations.push(what.into());
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Die with the server: a worker whose parent is gone gets SIGKILL.
pub fn die_with_parent(report: &mut Report) {
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
    {
        report.missing(format!("parent-death signal not set: {e}"));
    }
}

/// New network, mount, IPC and UTS namespaces: no network interface but a down
/// loopback, mounts private to the worker, no shared System V IPC, its own host name.
pub fn enter_namespaces(report: &mut Report) -> bool {
    if !is_root() {
        report.missing(
            "no network, mount, IPC or UTS namespace (the server is not root): the worker \
             shares the host's network and file system view, and relies on seccomp alone",
        );
        return false;
    }
    match unshare(
        UnshareFlags::NEWNET | UnshareFlags::NEWNS | UnshareFlags::NEWIPC | UnshareFlags::NEWUTS,
    ) {
        Ok(()) => true,
        Err(e) => {
            report.missing(format!("no namespaces (unshare failed: {e})"));
            false
        }
    }
}

/// `unshare(2)` of namespaces only.
#[allow(unsafe_code)]
fn unshare(flags: UnshareFlags) -> rustix::io::Result<()> {
    debug_assert!(!flags.contains(UnshareFlags::FILES));
    // SAFETY: only namespace flags are passed, never `CLONE_FILES`, so no thread can end
    // up with a file descriptor table that differs from another's (the hazard that
    // makes rustix mark `unshare` unsafe). The worker is single-threaded here anyway.
    unsafe { rustix::thread::unshare_unsafe(flags) }
}

/// Replace the root with an empty, read-only tmpfs: no host file is reachable.
/// Needs the mount namespace of [`enter_namespaces`].
pub fn empty_root(report: &mut Report) {
    if let Err(e) = pivot_into_empty_root() {
        report.missing(format!(
            "the host file system stays visible (empty root failed: {e}); seccomp still \
             refuses every file operation"
        ));
    }
}

fn pivot_into_empty_root() -> rustix::io::Result<()> {
    // Nothing done below may propagate back to the host's mounts.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )?;
    rustix::mount::mount(
        "tmpfs",
        NEW_ROOT,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        c"size=4k,nr_inodes=4,mode=0555",
    )?;
    rustix::process::chdir(NEW_ROOT)?;
    // pivot_root(".", ".") stacks the old root on top of the new one; detaching it
    // leaves the empty tmpfs as "/".
    rustix::process::pivot_root(".", ".")?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)?;
    rustix::process::chdir("/")?;
    rustix::mount::mount_remount(
        "/",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    )
}

/// Become `uid`/`gid` with no supplementary groups and no capabilities at all
/// (permitted, effective, inheritable, ambient and bounding sets). Must run while the
/// process has a single thread.
pub fn drop_identity(uid: u32, gid: u32, report: &mut Report) {
    if is_root() {
        // The bounding set can only shrink while CAP_SETPCAP is held, so first.
        for cap in CapabilitySet::all().iter() {
            // Capabilities this kernel does not know are EINVAL: nothing to drop.
            let _ = rustix::thread::remove_capability_from_bounding_set(cap);
        }
        let steps = rustix::thread::set_thread_groups(&[])
            .and_then(|()| {
                let g = rustix::process::Gid::from_raw(gid);
                rustix::thread::set_thread_res_gid(g, g, g)
            })
            .and_then(|()| {
                let u = rustix::process::Uid::from_raw(uid);
                rustix::thread::set_thread_res_uid(u, u, u)
            });
        if let Err(e) = steps {
            report.missing(format!(
                "still root: switching to uid {uid} / gid {gid} failed: {e}"
            ));
        }
    } else {
        report.missing(format!(
            "runs as the server's own user (uid {}), not uid {uid}: the server is not root",
            rustix::process::getuid().as_raw()
        ));
    }
    let _ = rustix::thread::clear_ambient_capability_set();
    let none = CapabilitySets {
        effective: CapabilitySet::empty(),
        permitted: CapabilitySet::empty(),
        inheritable: CapabilitySet::empty(),
    };
    if let Err(e) = rustix::thread::set_capabilities(None, none) {
        report.missing(format!("capabilities not cleared: {e}"));
    }
    if let Err(e) = rustix::thread::set_no_new_privs(true) {
        report.missing(format!("no_new_privs not set: {e}"));
    }
}

/// Resource limits: no core dumps, few descriptors, no files, no locked memory or
/// message queues, and (where no memory cgroup backs the worker) an address-space cap.
pub fn set_limits(address_space_bytes: Option<u64>, report: &mut Report) {
    let mut limit = |resource: Resource, value: u64, what: &str| {
        let r = Rlimit {
            current: Some(value),
            maximum: Some(value),
        };
        if let Err(e) = rustix::process::setrlimit(resource, r) {
            report.missing(format!("{what} not limited: {e}"));
        }
    };
    limit(Resource::Core, 0, "core dumps");
    limit(Resource::Nofile, MAX_OPEN_FILES, "open files");
    limit(Resource::Fsize, 0, "file size");
    limit(Resource::Memlock, 0, "locked memory");
    limit(Resource::Msgqueue, 0, "POSIX message queues");
    if let Some(bytes) = address_space_bytes {
        limit(Resource::As, bytes, "address space");
    }
}

/// `RLIMIT_NPROC` 0: neither processes nor threads can be created any more (the
/// seccomp filter refuses `clone` as well; this holds even if it could not be set).
pub fn forbid_new_processes(report: &mut Report) {
    let zero = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = rustix::process::setrlimit(Resource::Nproc, zero) {
        report.missing(format!("process count not limited: {e}"));
    }
}

/// Install the seccomp filters on every thread of the process (TSYNC): the allowlist
/// of [`allowed_syscalls`] (anything else kills the whole worker with SIGSYS), and a
/// second filter that makes the file-system calls a C library may try on its own (time
/// zone files) fail with `EACCES` instead of killing.
pub fn install_seccomp() -> Result<(), String> {
    let (allow, deny_files) = filters()?;
    // Stacked filters: the stricter answer wins, so a file call is allowed by the
    // allowlist and answered EACCES by the other. The allowlist goes last: it forbids
    // installing anything after it.
    seccompiler::apply_filter_all_threads(&deny_files).map_err(|e| format!("seccomp: {e}"))?;
    seccompiler::apply_filter_all_threads(&allow).map_err(|e| format!("seccomp: {e}"))
}

fn target_arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("seccomp: unsupported architecture: {e}"))
}

/// System calls that fail with `EACCES` (allowed by the allowlist, refused by the
/// second filter): file access by path.
fn file_syscalls() -> Vec<i64> {
    let mut calls = vec![
        libc::SYS_openat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_readlinkat,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        libc::SYS_open,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_access,
        libc::SYS_readlink,
    ]);
    calls
}

/// The system calls the engines, the Rust runtime and the C library need once the
/// worker serves jobs. Everything else (sockets, process creation, file systems,
/// mounts, ptrace, BPF, keyrings, namespaces, …) kills the worker.
fn allowed_syscalls() -> Vec<i64> {
    let mut calls = vec![
        // I/O on the descriptors the worker already holds (its socket, stderr).
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_close,
        libc::SYS_fstat,
        libc::SYS_lseek,
        libc::SYS_ppoll,
        // Memory: engine heaps, Wasm linear memories and their guard pages.
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_mremap,
        libc::SYS_brk,
        libc::SYS_membarrier,
        // Threads already running: wait, wake, yield, identify, time.
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_gettimeofday,
        libc::SYS_getrandom,
        libc::SYS_restart_syscall,
        // Signals: wasmtime turns guest faults (out-of-bounds, stack overflow) into
        // traps through its own SIGSEGV/SIGILL/SIGBUS/SIGFPE handlers.
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigaction,
        libc::SYS_sigaltstack,
        // Identity, for the confinement probes (read-only).
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_getgroups,
        libc::SYS_capget,
        // Leaving.
        libc::SYS_exit,
        libc::SYS_exit_group,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([libc::SYS_poll, libc::SYS_arch_prctl]);
    calls.extend(file_syscalls());
    calls
}

fn filters() -> Result<(BpfProgram, BpfProgram), String> {
    let arch = target_arch()?;
    let rule = |conditions: Vec<SeccompCondition>| {
        SeccompRule::new(conditions).map_err(|e| format!("seccomp rule: {e}"))
    };
    let cond = |arg: u8, value: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            .map_err(|e| format!("seccomp condition: {e}"))
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed_syscalls()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    // Signals only to itself: abort() raises SIGABRT through tgkill(own pid, ...).
    let pid = u64::from(
        rustix::process::getpid()
            .as_raw_nonzero()
            .get()
            .unsigned_abs(),
    );
    rules.insert(libc::SYS_tgkill, vec![rule(vec![cond(0, pid)?])?]);
    // prctl only to read the seccomp and no_new_privs state (probes).
    rules.insert(
        libc::SYS_prctl,
        vec![
            rule(vec![cond(0, libc::PR_GET_SECCOMP as u64)?])?,
            rule(vec![cond(0, libc::PR_GET_NO_NEW_PRIVS as u64)?])?,
        ],
    );
    let allow = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| format!("seccomp filter: {e}"))?;
    let deny_files = SeccompFilter::new(
        file_syscalls()
            .into_iter()
            .map(|nr| (nr, Vec::new()))
            .collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch,
    )
    .map_err(|e| format!("seccomp filter: {e}"))?;
    let compile = |f: SeccompFilter| {
        BpfProgram::try_from(f).map_err(|e| format!("seccomp filter does not compile: {e}"))
    };
    Ok((compile(allow)?, compile(deny_files)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_for_this_architecture() {
        let (allow, deny) = filters().expect("filters");
        assert!(!allow.is_empty());
        assert!(!deny.is_empty());
    }

    #[test]
    fn nothing_that_creates_processes_sockets_or_mounts_is_allowed() {
        let allowed = allowed_syscalls();
        for forbidden in [
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_execve,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_bpf,
            libc::SYS_kill,
            libc::SYS_setuid,
            libc::SYS_uname,
            libc::SYS_ioctl,
        ] {
            assert!(
                !allowed.contains(&forbidden),
                "syscall {forbidden} is allowed"
            );
        }
    }
}
