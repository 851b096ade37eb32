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

/// The worker reads its jobs on the job thread and looks for cancels while one runs:
/// a cancel of another job (a stale one, for a job that already ended) neither stops the
/// running job nor confuses the next read; the running job's own cancel stops it
/// (`Stopped`) while it waits on a timer; the worker then runs the next job.
#[test]
fn cancels_stop_only_the_running_job_and_stale_ones_are_dropped() {
    use vulcan::backends::isolate::protocol::{Outcome, Program, RunRequest};
    let mut w = start_worker();
    let run = |w: &mut Worker, job: u64, code: &str| {
        write_frame(
            &mut w.socket,
            &ToWorker::Run(RunRequest {
                job,
                program: Program::Js(code.into()),
                input: b"{}".to_vec(),
                mem_mb: 64,
                max_output_bytes: 1024,
                timeout_ms: 60_000,
            }),
        )
        .expect("send run");
    };
    let done = |w: &mut Worker| match read_frame::<_, FromWorker>(&mut w.socket, 1 << 20) {
        Ok(FromWorker::Done { job, outcome }) => (job, outcome),
        other => panic!("expected Done, got {other:?}"),
    };
    let output = |outcome: Outcome| match outcome {
        Outcome::Finished { output, .. } => String::from_utf8(output).expect("utf-8"),
        other => panic!("expected Finished, got {other:?}"),
    };

    // A finished job, then its late cancel: dropped by the idle worker.
    run(&mut w, 1, "export default () => 1");
    let (job, outcome) = done(&mut w);
    assert_eq!((job, output(outcome)), (1, "1".to_string()));
    write_frame(&mut w.socket, &ToWorker::Cancel { job: 1 }).expect("cancel");

    // A waiting job: a cancel of another job leaves it running, its own stops it.
    run(
        &mut w,
        2,
        "export default () => new Promise((r) => setTimeout(() => r(2), 3600000))",
    );
    write_frame(&mut w.socket, &ToWorker::Cancel { job: 1 }).expect("cancel");
    std::thread::sleep(Duration::from_millis(100));
    write_frame(&mut w.socket, &ToWorker::Cancel { job: 99 }).expect("cancel");
    w.socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    assert!(
        read_frame::<_, FromWorker>(&mut w.socket, 1 << 20).is_err(),
        "a cancel of another job stopped the running one"
    );
    w.socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let sent = Instant::now();
    write_frame(&mut w.socket, &ToWorker::Cancel { job: 2 }).expect("cancel");
    assert_eq!(done(&mut w), (2, Outcome::Stopped));
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );

    // The same worker runs the next job.
    run(&mut w, 3, "export default () => 3");
    let (job, outcome) = done(&mut w);
    assert_eq!((job, output(outcome)), (3, "3".to_string()));
    assert!(
        w.child.try_wait().expect("wait").is_none(),
        "the worker lives"
    );
}
