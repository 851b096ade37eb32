//! Confinement from inside a worker: a real `vulcan worker` process is started the way
//! the server starts one, with confinement probes enabled (a test-only switch of the
//! first frame that the server never sets), and asked to try what a compromised engine
//! would try. File access is refused; sockets, threads, processes and any other system
//! call outside the allowlist kill the worker with SIGSYS.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vulcan::backends::isolate::protocol::{
    read_frame, write_frame, FromWorker, Probe, ToWorker, WorkerInit,
};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

struct Worker {
    child: Child,
    socket: UnixStream,
    limitations: Vec<String>,
}

fn start_worker() -> Worker {
    start_worker_with(|_| {})
}

fn start_worker_with(adjust: impl FnOnce(&mut Command)) -> Worker {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let mut command = Command::new(env!("CARGO_BIN_EXE_vulcan"));
    adjust(&mut command);
    let child = command
        .arg("worker")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_clear()
        .spawn()
        .expect("spawn worker");
    let mut socket = ours;
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write_frame(
        &mut socket,
        &ToWorker::Init(WorkerInit {
            uid: 65534,
            gid: 65534,
            wasm_module_cache: 1,
            js_bytecode_cache_bytes: 1 << 20,
            max_line_bytes: 1024,
            max_lines: 10,
            address_space_bytes: None,
            probes: true,
        }),
    )
    .expect("init");
    let limitations = match read_frame::<_, FromWorker>(&mut socket, 1 << 20).expect("ready") {
        FromWorker::Ready { limitations } => limitations,
        other => panic!("expected Ready, got {other:?}"),
    };
    Worker {
        child,
        socket,
        limitations,
    }
}

impl Worker {
    fn probe(&mut self, probe: Probe) -> Option<String> {
        write_frame(&mut self.socket, &ToWorker::Probe(probe)).expect("send probe");
        match read_frame::<_, FromWorker>(&mut self.socket, 1 << 20) {
            Ok(FromWorker::ProbeResult(text)) => Some(text),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => None,
        }
    }

    fn exit_signal(mut self) -> Option<i32> {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.signal();
            }
            assert!(t.elapsed() < Duration::from_secs(10), "worker still alive");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_worker_runs_as_nobody_without_capabilities_under_seccomp() {
    let mut w = start_worker();
    let id: Value = serde_json::from_str(&w.probe(Probe::Identity).expect("answer")).expect("json");
    assert_eq!(id["no_new_privs"], true, "{id}");
    assert!(
        id["seccomp"].as_str().expect("mode").contains("Filter"),
        "{id}"
    );
    assert_eq!(id["caps_effective"], 0, "{id}");
    assert_eq!(id["caps_permitted"], 0, "{id}");
    if !is_root() {
        println!("SKIPPED: not root, so the worker keeps this user: {id}");
        assert!(!w.limitations.is_empty());
        return;
    }
    assert!(w.limitations.is_empty(), "{:?}", w.limitations);
    assert_eq!(id["uid"], 65534, "{id}");
    assert_eq!(id["euid"], 65534, "{id}");
    assert_eq!(id["gid"], 65534, "{id}");
    assert_eq!(id["groups"], serde_json::json!([]), "{id}");
}

#[test]
fn host_files_are_out_of_reach() {
    let mut w = start_worker();
    for path in ["/etc/passwd", "/proc/self/environ", "/work", "/"] {
        let answer = w
            .probe(Probe::OpenFile(path.into()))
            .expect("file calls fail, they do not kill");
        assert!(answer.starts_with("error:"), "{path}: {answer}");
    }
    let root = w.probe(Probe::ListRoot).expect("answer");
    assert!(root.starts_with("error:"), "{root}");
}

#[test]
fn opening_a_socket_kills_the_worker() {
    let mut w = start_worker();
    assert_eq!(w.probe(Probe::Connect("127.0.0.1:9".into())), None);
    assert_eq!(w.exit_signal(), Some(libc::SIGSYS));
}

#[test]
fn starting_a_thread_kills_the_worker() {
    let mut w = start_worker();
    assert_eq!(w.probe(Probe::SpawnThread), None);
    assert_eq!(w.exit_signal(), Some(libc::SIGSYS));
}

#[test]
fn any_system_call_outside_the_allowlist_kills_the_worker() {
    let mut w = start_worker();
    assert_eq!(w.probe(Probe::ForbiddenSyscall), None);
    assert_eq!(w.exit_signal(), Some(libc::SIGSYS));
}

#[test]
fn probes_are_refused_unless_the_first_frame_enabled_them() {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vulcan"))
        .arg("worker")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_clear()
        .spawn()
        .expect("spawn");
    let mut socket = ours;
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write_frame(
        &mut socket,
        &ToWorker::Init(WorkerInit {
            uid: 65534,
            gid: 65534,
            wasm_module_cache: 1,
            js_bytecode_cache_bytes: 1 << 20,
            max_line_bytes: 1024,
            max_lines: 10,
            address_space_bytes: None,
            probes: false,
        }),
    )
    .expect("init");
    assert!(matches!(
        read_frame::<_, FromWorker>(&mut socket, 1 << 20),
        Ok(FromWorker::Ready { .. })
    ));
    write_frame(&mut socket, &ToWorker::Probe(Probe::Identity)).expect("send");
    assert!(read_frame::<_, FromWorker>(&mut socket, 1 << 20).is_err());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(70), "a protocol error ends the worker");
}

#[test]
fn an_unprivileged_worker_applies_what_it_can_and_says_what_it_could_not() {
    if !is_root() {
        println!("SKIPPED: starting a worker as another user needs root");
        return;
    }
    use std::os::unix::process::CommandExt;
    // What a server that is not root gets: no namespaces, no empty root, no uid switch.
    let mut w = start_worker_with(|c| {
        c.uid(65534).gid(65534);
    });
    let limitations = w.limitations.join("\n");
    assert!(
        limitations.contains("no network, mount, IPC or UTS namespace"),
        "{limitations}"
    );
    assert!(
        limitations.contains("runs as the server's own user (uid 65534)"),
        "{limitations}"
    );
    let id: Value = serde_json::from_str(&w.probe(Probe::Identity).expect("answer")).expect("json");
    assert!(
        id["seccomp"].as_str().expect("mode").contains("Filter"),
        "{id}"
    );
    assert_eq!(id["no_new_privs"], true, "{id}");
    // The filter holds all the same.
    assert_eq!(w.probe(Probe::Connect("127.0.0.1:9".into())), None);
    assert_eq!(w.exit_signal(), Some(libc::SIGSYS));
}
