//! The isolate worker process (`vulcan worker`, started by the server only).
//!
//! Its standard input is a socket to the server ([`super::protocol`]). It reads its
//! settings, builds the engines (wasmtime's engine and linker: no guest input has been
//! seen yet), confines itself ([`super::confine`]), answers `Ready`, then runs one job
//! at a time on its main thread with a fresh engine instance each, forwarding log lines
//! as they are printed. The main thread reads its jobs from the socket itself (no
//! hand-off, no wake-up of another thread per job); while a job runs, the epoch ticker
//! thread, which wakes every few milliseconds anyway, looks for a `Cancel` frame without
//! blocking and cancels the job's token before it advances the epoch, so a kill stops
//! JavaScript and Wasm code within one tick. A closed socket ends the process.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::confine::{self, Report};
use super::js::JsEngine;
use super::protocol::{
    self, FromWorker, Outcome, Probe, Program, RunRequest, ToWorker, WorkerInit, MAX_ERROR_BYTES,
    MAX_TO_WORKER_FRAME,
};
use super::wasm::WasmEngine;
use super::StopSignal;
use crate::backends::{BackendError, CancellationToken, LogSink, WorkloadResult};
use crate::model::cap_line;

/// Exit code of a worker that gave up because of a protocol or set-up error (the server
/// reports it as such; a guest cannot cause it).
pub const EXIT_SETUP_FAILED: u8 = 70;

/// Entry point of `vulcan worker`.
pub fn main() -> ExitCode {
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vulcan worker: {e}");
            ExitCode::from(EXIT_SETUP_FAILED)
        }
    }
}

/// The write side of the socket, shared by the job thread (logs, results) and nobody
/// else; a frame is written whole under the lock.
#[derive(Clone)]
struct Writer(Arc<Mutex<UnixStream>>);

impl Writer {
    fn lock(&self) -> MutexGuard<'_, UnixStream> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, msg: &FromWorker) -> io::Result<()> {
        protocol::write_frame(&mut *self.lock(), msg)
    }
}

/// Who may read the socket, and the job running now with its cancellation token.
///
/// Invariant: while `job` is `None` only the job thread reads the socket (it is idle,
/// waiting for a `Run`); while it is `Some` only the ticker reads it, through `socket`
/// and under this lock. The job thread changes `job` under the lock, before it sends
/// `Done`, so the ticker never reads a frame sent after that `Done` (the next `Run`).
struct Watch {
    /// A second handle on the socket (the same open file), for the ticker.
    socket: UnixStream,
    /// The running job, if any.
    job: Option<(u64, CancellationToken)>,
}

/// The [`Watch`], shared by the job thread and the ticker.
#[derive(Clone)]
struct Current(Arc<Mutex<Watch>>);

impl Current {
    fn lock(&self) -> MutexGuard<'_, Watch> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, job: Option<(u64, CancellationToken)>) {
        self.lock().job = job;
    }

    /// Called by the ticker: while a job runs, read every frame already waiting on the
    /// socket without blocking for one (while a job runs the server sends nothing but
    /// `Cancel`, whole, in one write). Ends the process when the server closed the
    /// socket or broke the protocol, as the job thread does when idle.
    fn poll_cancel(&self) {
        let mut watch = self.lock();
        let Watch { socket, job } = &mut *watch;
        let Some((running, token)) = job.as_ref() else {
            return;
        };
        loop {
            let mut probe = [0u8; 1];
            match rustix::net::recv(
                &*socket,
                &mut probe,
                rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
            ) {
                Ok((0, _)) => std::process::exit(0),
                Ok(_) => {}
                Err(rustix::io::Errno::AGAIN) => return,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => protocol_failure(&format!("polling the socket: {e}")),
            }
            match protocol::read_frame::<_, ToWorker>(&mut *socket, MAX_TO_WORKER_FRAME) {
                Ok(ToWorker::Cancel { job }) => {
                    if job == *running {
                        token.cancel();
                    }
                }
                Ok(other) => protocol_failure(&format!("unexpected frame {other:?} during a job")),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => std::process::exit(0),
                Err(e) => protocol_failure(&format!("reading a frame: {e}")),
            }
        }
    }
}

/// End the process: the server sent something outside the protocol.
fn protocol_failure(what: &str) -> ! {
    eprintln!("vulcan worker: {what}");
    std::process::exit(i32::from(EXIT_SETUP_FAILED));
}

/// What the job thread was asked to do.
enum Task {
    Run(RunRequest),
    Probe(Probe),
}

fn serve() -> Result<(), String> {
    let fd = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("no socket on stdin: {e}"))?;
    let mut socket = UnixStream::from(fd);
    let init = match protocol::read_frame(&mut socket, MAX_TO_WORKER_FRAME) {
        Ok(ToWorker::Init(init)) => init,
        Ok(other) => return Err(format!("expected Init, got {other:?}")),
        Err(e) => return Err(format!("reading Init: {e}")),
    };

    // Heavy one-time set-up while nothing untrusted has been seen.
    let wasm =
        Arc::new(WasmEngine::new(init.wasm_module_cache).map_err(|e| format!("wasm engine: {e}"))?);
    // wasmtime-wasi drives its (always ready) streams through the ambient tokio
    // runtime, and would start a multi-threaded one of its own on first use, after the
    // filter forbids threads: give the job thread a driverless current-thread runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let _runtime = runtime.enter();

    let mut js = JsEngine::new(init.js_bytecode_cache_bytes)
        .map_err(|e| format!("JavaScript engine: {e}"))?;

    let mut report = Report::default();
    confine::die_with_parent(&mut report);
    if confine::enter_namespaces(&mut report) {
        confine::empty_root(&mut report);
    }
    confine::drop_identity(init.uid, init.gid, &mut report);
    confine::set_limits(init.address_space_bytes, &mut report);

    // Handles on the socket are made now: `dup` is outside the filter's allowlist.
    let mut reader = socket
        .try_clone()
        .map_err(|e| format!("socket clone: {e}"))?;
    // The only other thread this process will ever have, started after the identity
    // drop (so it is not root either) and before the filter (which forbids new ones).
    let current = Current(Arc::new(Mutex::new(Watch {
        socket: socket
            .try_clone()
            .map_err(|e| format!("socket clone: {e}"))?,
        job: None,
    })));
    {
        let current = current.clone();
        wasm.start_ticker(move || current.poll_cancel())
            .map_err(|e| format!("epoch ticker: {e}"))?;
    }
    // Everything the engines initialise lazily on first use happens now, on trusted
    // code, before the filter: a JavaScript job and a WASI command that touches every
    // stream, the clocks, randomness and poll_oneoff.
    warm_up(&mut js, &wasm)?;
    confine::forbid_new_processes(&mut report);
    confine::install_seccomp()?;

    let writer = Writer(Arc::new(Mutex::new(socket)));
    writer
        .send(&FromWorker::Ready {
            limitations: report.limitations,
        })
        .map_err(|e| format!("sending Ready: {e}"))?;

    loop {
        // The next job's runtime and context are made while no job is waiting.
        js.prepare();
        let answer = match next_task(&mut reader, init.probes) {
            Task::Run(req) => {
                let job = req.job;
                let outcome = run_job(req, &init, &mut js, &wasm, &writer, &current);
                FromWorker::Done { job, outcome }
            }
            Task::Probe(probe) => FromWorker::ProbeResult(run_probe(&probe)),
        };
        if writer.send(&answer).is_err() {
            // The server is gone; so are we.
            return Ok(());
        }
    }
}

/// Block until the server asks for something (no job runs: the socket is ours, see
/// [`Watch`]). A `Cancel` of a job that already ended is dropped. Ends the process when
/// the server closed the socket or broke the protocol (at once, as the ticker does: no
/// teardown runs under the filter).
fn next_task(socket: &mut UnixStream, probes: bool) -> Task {
    loop {
        return match protocol::read_frame::<_, ToWorker>(socket, MAX_TO_WORKER_FRAME) {
            Ok(ToWorker::Run(req)) => Task::Run(req),
            Ok(ToWorker::Cancel { .. }) => continue,
            Ok(ToWorker::Probe(p)) if probes => Task::Probe(p),
            Ok(other) => protocol_failure(&format!("unexpected frame {other:?}")),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => std::process::exit(0),
            Err(e) => protocol_failure(&format!("reading a frame: {e}")),
        };
    }
}

/// The log sink of one job: lines are cut to `max_line_bytes`, and after `max_lines`
/// lines (plus one that the server's broker turns into its truncation marker) nothing
/// more is sent, so a flooding guest costs the server bounded memory.
fn job_sink(job: u64, init: &WorkerInit, writer: &Writer) -> LogSink {
    let writer = writer.clone();
    let max_line = init.max_line_bytes;
    let max_lines = init.max_lines;
    let sent = AtomicU64::new(0);
    LogSink::new(move |line| {
        if sent.fetch_add(1, Ordering::Relaxed) > max_lines {
            return;
        }
        let (line, _) = cap_line(line, max_line);
        // A write error means the server is gone; the job thread (or the ticker,
        // polling for a cancel) sees the closed socket and ends the process.
        let _ = writer.send(&FromWorker::Log { job, line });
    })
}

fn run_job(
    req: RunRequest,
    init: &WorkerInit,
    js: &mut JsEngine,
    wasm: &WasmEngine,
    writer: &Writer,
    current: &Current,
) -> Outcome {
    let started = Instant::now();
    let token = CancellationToken::new();
    current.set(Some((req.job, token.clone())));
    let stop = StopSignal::new(token, started + Duration::from_millis(req.timeout_ms));
    let log = job_sink(req.job, init, writer);
    let max_output = req.max_output_bytes;
    let result = match &req.program {
        Program::Js(code) => js.run(code, &req.input, req.mem_mb, max_output, &log, &stop),
        Program::Wasm(bytes) => wasm.run(bytes, &req.input, req.mem_mb, max_output, &log, &stop),
    };
    current.set(None);
    let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    match result {
        Ok(WorkloadResult {
            exit_code,
            output,
            error,
            ..
        }) => Outcome::Finished {
            exit_code,
            output,
            error: error.map(|e| cut_error(e, MAX_ERROR_BYTES)),
            duration_us,
        },
        Err(BackendError::Cancelled) => Outcome::Stopped,
        Err(e) => Outcome::Invalid(cut_error(e.to_string(), MAX_ERROR_BYTES)),
    }
}

/// A WASI command that reads stdin, writes stdout and stderr, reads a clock, gets
/// random bytes and sleeps for zero nanoseconds through `poll_oneoff`.
const WARM_UP_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 512) "ok\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 64))
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 512))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (drop (call $write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 16)))
    (drop (call $random (i32.const 32) (i32.const 16)))
    (i64.store (i32.const 128) (i64.const 1))
    (i32.store8 (i32.const 136) (i32.const 0))
    (i32.store (i32.const 144) (i32.const 1))
    (i64.store (i32.const 152) (i64.const 0))
    (i32.store16 (i32.const 168) (i32.const 0))
    (drop (call $poll (i32.const 128) (i32.const 256) (i32.const 1) (i32.const 320)))))"#;

/// Run one trusted JavaScript and one trusted Wasm job, so every lazily initialised
/// part of the engines exists before the seccomp filter is installed.
fn warm_up(js_engine: &mut JsEngine, wasm: &WasmEngine) -> Result<(), String> {
    let log = LogSink::discard();
    let stop = StopSignal::new(
        CancellationToken::new(),
        Instant::now() + Duration::from_secs(60),
    );
    let js = js_engine
        .run(
            "export default (i) => { console.log(new Date().toISOString(), Math.random()); \
         return i.n + 1; }",
            br#"{"n":1}"#,
            16,
            1024,
            &log,
            &stop,
        )
        .map_err(|e| format!("JavaScript warm-up: {e}"))?;
    if js.output != b"2" {
        return Err(format!("JavaScript warm-up returned {js:?}"));
    }
    let wasm_run = wasm
        .run(WARM_UP_WAT.as_bytes(), b"{}", 16, 1024, &log, &stop)
        .map_err(|e| format!("Wasm warm-up: {e}"))?;
    match wasm_run.error {
        None => Ok(()),
        Some(e) => Err(format!("Wasm warm-up failed: {e}")),
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn cut_error(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Run a confinement check from inside (tests only; see [`WorkerInit::probes`]).
fn run_probe(probe: &Probe) -> String {
    match probe {
        Probe::Identity => {
            let groups = rustix::process::getgroups()
                .map(|g| g.iter().map(|g| g.as_raw()).collect::<Vec<_>>())
                .unwrap_or_default();
            let caps = rustix::thread::capabilities(None).ok();
            serde_json::json!({
                "uid": rustix::process::getuid().as_raw(),
                "euid": rustix::process::geteuid().as_raw(),
                "gid": rustix::process::getgid().as_raw(),
                "groups": groups,
                "caps_effective": caps.map(|c| c.effective.bits()),
                "caps_permitted": caps.map(|c| c.permitted.bits()),
                "no_new_privs": rustix::thread::no_new_privs().ok(),
                "seccomp": format!("{:?}", rustix::thread::secure_computing_mode().ok()),
            })
            .to_string()
        }
        Probe::ListRoot => match std::fs::read_dir("/") {
            Ok(entries) => format!(
                "listed: {:?}",
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            ),
            Err(e) => format!("error: {e}"),
        },
        Probe::OpenFile(path) => match std::fs::read(path) {
            Ok(bytes) => format!("read {} bytes", bytes.len()),
            Err(e) => format!("error: {e}"),
        },
        Probe::Connect(addr) => match std::net::TcpStream::connect(addr) {
            Ok(_) => "connected".into(),
            Err(e) => format!("error: {e}"),
        },
        Probe::SpawnThread => match std::thread::Builder::new().spawn(|| ()) {
            Ok(h) => {
                let _ = h.join();
                "spawned".into()
            }
            Err(e) => format!("error: {e}"),
        },
        Probe::ForbiddenSyscall => format!("uname: {:?}", rustix::system::uname().nodename()),
    }
}
