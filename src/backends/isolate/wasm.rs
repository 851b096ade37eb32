//! Wasm on wasmtime: WASI preview 1 commands, a fresh `Store` per workload.
//!
//! One [`Engine`] per worker process with epoch interruption; a ticker thread advances
//! the epoch every [`EPOCH_TICK`], and each store's epoch callback checks the
//! workload's cancellation token and deadline, so a kill is noticed within about one
//! tick. Memory is capped by [`InstanceLimits`]: every linear memory and every table of
//! the instance count against one budget of `mem_mb` (a `memory.grow` past it returns
//! -1); proposals the runtime does not need (multi-memory, threads, memory64) are off.
//! The WASI context has stdin (the input JSON), stdout and stderr, one argument (the
//! program name), no environment, no preopened directories and no sockets. The WASI
//! functions that take a guest-chosen size (`poll_oneoff`, `random_get`) are our own
//! versions that check it against guest memory before touching the host heap.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use wasmtime::{
    Caller, Config, Engine, Linker, Module, ResourceLimiter, Store, Strategy, Trap, UpdateDeadline,
    WasmBacktrace,
};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, I32Exit, WasiCtxBuilder};

use super::StopSignal;
use crate::backends::{output_exceeds, BackendError, LogSink, WorkloadResult};

/// How often the ticker thread advances the engine epoch; bounds how late a kill or a
/// deadline is noticed inside Wasm code.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A line still without its newline is forwarded once it reaches this size, so a guest
/// that never prints `\n` cannot grow the host-side buffer without bound.
const MAX_PARTIAL_LINE: usize = 16 * 1024;

/// The only import module a workload may use.
const WASI_P1_MODULE: &str = "wasi_snapshot_preview1";

/// Program name passed as `argv[0]`.
const PROGRAM_NAME: &str = "main.wasm";

/// Bytes a table element is charged against the memory budget (a function reference
/// and its bookkeeping; generous on purpose).
const TABLE_ELEMENT_BYTES: usize = 16;

/// Tables one instance may define or import.
const MAX_TABLES: usize = 16;

/// Bytes `random_get` fills per step; the stop signal is checked between steps.
const RANDOM_CHUNK: usize = 1024 * 1024;

/// One budget for all linear memories and tables of a workload's instance.
///
/// Invariant: `used` is the sum of the bytes every memory and table of the store has
/// been allowed to grow to; it never exceeds `budget`.
pub(super) struct InstanceLimits {
    budget: usize,
    used: usize,
}

impl InstanceLimits {
    pub(super) fn new(budget: usize) -> Self {
        Self { budget, used: 0 }
    }

    fn grow(&mut self, extra: usize) -> bool {
        match self.used.checked_add(extra) {
            Some(total) if total <= self.budget => {
                self.used = total;
                true
            }
            _ => false,
        }
    }
}

impl ResourceLimiter for InstanceLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(desired.saturating_sub(current)))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(
            desired
                .saturating_sub(current)
                .saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        1
    }
}

/// The host state of one workload's store.
struct WasmState {
    wasi: WasiP1Ctx,
    limits: InstanceLimits,
    stop: StopSignal,
    /// Zero of the guest's monotonic clock (see [`StoreClock`]).
    origin: Instant,
}

/// The guest's monotonic clock: nanoseconds since the store was made. Owned here (not
/// wasmtime-wasi's default) so `poll_oneoff` can turn absolute deadlines into instants.
struct StoreClock(Instant);

impl HostMonotonicClock for StoreClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The shared engine, linker and compiled-module cache.
///
/// Invariant: while a `WasmEngine` is alive its ticker thread advances the engine epoch;
/// the ticker stops on its own once the engine is dropped.
pub(super) struct WasmEngine {
    engine: Engine,
    linker: Linker<WasmState>,
    cache: Mutex<ModuleCache>,
}

impl WasmEngine {
    /// Build the engine and link WASI preview 1. Nothing runs until
    /// [`WasmEngine::start_ticker`] has started the epoch.
    pub(super) fn new(cache_entries: usize) -> Result<Self, BackendError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.strategy(Strategy::Cranelift);
        // Compilation runs on the job's own thread (inside its deadline); a worker
        // process may not start threads once confined.
        config.parallel_compilation(false);
        // One memory per instance, so `mem_mb` bounds what a module can map.
        config.wasm_multi_memory(false);
        config.wasm_memory64(false);
        // Copy-on-write memory images need memfd_create, which the worker's seccomp
        // filter refuses; data segments are copied at instantiation instead.
        config.memory_init_cow(false);
        let engine = Engine::new(&config)
            .map_err(|e| BackendError::Internal(format!("cannot create the wasm engine: {e}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |state: &mut WasmState| &mut state.wasi)
            .map_err(|e| BackendError::Internal(format!("cannot link WASI: {e}")))?;
        // wasmtime-wasi sleeps in `poll_oneoff` with a plain blocking sleep that no
        // epoch interrupt can cut short, and fills `random_get` through a host buffer
        // of the guest's size: replace both.
        linker.allow_shadowing(true);
        linker
            .func_wrap(WASI_P1_MODULE, "poll_oneoff", poll_oneoff)
            .map_err(|e| BackendError::Internal(format!("cannot link poll_oneoff: {e}")))?;
        linker
            .func_wrap(WASI_P1_MODULE, "random_get", random_get)
            .map_err(|e| BackendError::Internal(format!("cannot link random_get: {e}")))?;
        linker.allow_shadowing(false);

        Ok(Self {
            engine,
            linker,
            cache: Mutex::new(ModuleCache::new(cache_entries)),
        })
    }

    /// Start the thread that advances the epoch every [`EPOCH_TICK`], calling `on_tick`
    /// just before each advance (the worker polls its socket for a cancel there, so a
    /// cancel it finds is seen by the very epoch callback that tick triggers); it ends
    /// on its own once the engine is dropped. Returns once the thread runs (its start-up
    /// system calls are done: a seccomp filter installed afterwards need not allow them).
    pub(super) fn start_ticker(
        &self,
        mut on_tick: impl FnMut() + Send + 'static,
    ) -> Result<(), BackendError> {
        let weak = self.engine.weak();
        let (running_tx, running) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("isolate-epoch".into())
            .spawn(move || {
                let _ = running_tx.send(());
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    on_tick();
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(|e| BackendError::Internal(format!("cannot spawn the epoch ticker: {e}")))?;
        running
            .recv()
            .map_err(|_| BackendError::Internal("the epoch ticker did not start".into()))
    }

    /// The compiled module for `bytes` (binary Wasm or WAT text), from the cache when
    /// the same bytes were compiled before.
    fn module(&self, bytes: &[u8]) -> Result<Module, BackendError> {
        let key: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(module) = self.lock_cache().get(&key) {
            return Ok(module);
        }
        // Compile outside the lock: compiling can take a while and other workloads
        // should not wait for it.
        let module = Module::new(&self.engine, bytes)
            .map_err(|e| BackendError::InvalidPayload(format!("invalid wasm module: {e:#}")))?;
        for import in module.imports() {
            if import.module() != WASI_P1_MODULE {
                return Err(BackendError::InvalidPayload(format!(
                    "the module imports \"{}\" \"{}\"; only {WASI_P1_MODULE} is available",
                    import.module(),
                    import.name()
                )));
            }
        }
        self.lock_cache().insert(key, module.clone());
        Ok(module)
    }

    fn lock_cache(&self) -> MutexGuard<'_, ModuleCache> {
        // The cache holds no invariant a panic could break half-way; keep using it.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Run one WASI command to completion on the calling thread.
    ///
    /// `Ok` with `error` set for a trap or a non-zero exit; `Err(Cancelled)` when `stop`
    /// fired; `Err(InvalidPayload)` when the bytes are not a runnable module.
    pub(super) fn run(
        &self,
        bytes: &[u8],
        input: &[u8],
        mem_mb: u32,
        max_output_bytes: usize,
        log: &LogSink,
        stop: &StopSignal,
    ) -> Result<WorkloadResult, BackendError> {
        if stop.should_stop() {
            return Err(BackendError::Cancelled);
        }
        let module = self.module(bytes)?;
        let mem_bytes = usize::try_from(mem_mb)
            .unwrap_or(usize::MAX)
            .saturating_mul(1024 * 1024);
        let stdout = LinePipe::new(log.clone(), Some(max_output_bytes));
        let stderr = LinePipe::new(log.clone(), None);
        let origin = Instant::now();
        let wasi = WasiCtxBuilder::new()
            .monotonic_clock(StoreClock(origin))
            .stdin(MemoryInputPipe::new(input.to_vec()))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .arg(PROGRAM_NAME)
            .build_p1();
        let state = WasmState {
            wasi,
            limits: InstanceLimits::new(mem_bytes),
            stop: stop.clone(),
            origin,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(1);
        let interrupt = stop.clone();
        store.epoch_deadline_callback(move |_| {
            Ok(if interrupt.should_stop() {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Continue(1)
            })
        });

        let outcome = self
            .linker
            .instantiate(&mut store, &module)
            .map_err(|e| format!("cannot instantiate the module: {e:#}"))
            .and_then(|instance| {
                instance
                    .get_typed_func::<(), ()>(&mut store, "_start")
                    .map_err(|_| {
                        "the module has no `_start` function (a WASI preview 1 command is expected)"
                            .to_owned()
                    })
            })
            .map(|start| start.call(&mut store, ()));
        stdout.finish();
        stderr.finish();

        let (exit_code, error) = match outcome {
            Err(setup) => {
                if stop.should_stop() {
                    return Err(BackendError::Cancelled);
                }
                (Some(1), Some(setup))
            }
            Ok(Ok(())) => (Some(0), None),
            Ok(Err(e)) => {
                if let Some(exit) = e.downcast_ref::<I32Exit>() {
                    let code = exit.0;
                    (
                        Some(code),
                        (code != 0).then(|| format!("exited with code {code}")),
                    )
                } else if stop.should_stop() {
                    return Err(BackendError::Cancelled);
                } else {
                    let mut what = match e.downcast_ref::<Trap>() {
                        Some(trap) => trap.to_string(),
                        None => format!("wasm error: {e:#}"),
                    };
                    if let Some(backtrace) = e.downcast_ref::<WasmBacktrace>() {
                        what = format!("{what}\n{backtrace}").trim_end().to_owned();
                    }
                    (Some(1), Some(what))
                }
            }
        };
        let (output, overflowed) = stdout.take_output();
        if overflowed {
            return Ok(WorkloadResult {
                exit_code: Some(exit_code.filter(|c| *c != 0).unwrap_or(1)),
                output: Vec::new(),
                error: Some(output_exceeds(max_output_bytes)),
                duration_ms: 0,
            });
        }
        Ok(WorkloadResult {
            exit_code,
            output,
            error,
            duration_ms: 0,
        })
    }
}

// WASI preview 1 errno values and record layouts used by `poll_oneoff`.
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: u16 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;
const EVENTTYPE_CLOCK: u8 = 0;
const CLOCKID_REALTIME: u32 = 0;
const CLOCKID_MONOTONIC: u32 = 1;
const SUBCLOCKFLAGS_ABSTIME: u16 = 1;

/// One `event` record to hand back to the guest.
struct PollEvent {
    userdata: u64,
    error: u16,
    kind: u8,
}

/// `poll_oneoff` for workloads: clock subscriptions sleep in short slices that check
/// the stop signal (a kill interrupts a sleeping guest within one [`EPOCH_TICK`]);
/// subscriptions on stdin/stdout/stderr are always ready (they are in-memory pipes);
/// any other descriptor gets `EBADF`.
fn poll_oneoff(
    mut caller: Caller<'_, WasmState>,
    subs_ptr: i32,
    events_ptr: i32,
    nsubscriptions: i32,
    nevents_ptr: i32,
) -> wasmtime::Result<i32> {
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return Ok(ERRNO_INVAL);
    };
    // Sizes and pointers are u32 in WASI preview 1, whatever the sign bit says.
    let count = nsubscriptions as u32 as usize;
    if count == 0 {
        return Ok(ERRNO_INVAL);
    }
    // Checked against guest memory before the host copies anything: the copy is then
    // at most the guest's own (limited) memory.
    let Some(subs) =
        guest_range(memory.data(&caller), subs_ptr, count, SUBSCRIPTION_SIZE).map(<[u8]>::to_vec)
    else {
        return Ok(ERRNO_FAULT);
    };
    if guest_range(memory.data(&caller), events_ptr, count, EVENT_SIZE).is_none() {
        return Ok(ERRNO_FAULT);
    }
    let origin = caller.data().origin;
    let stop = caller.data().stop.clone();
    let now = Instant::now();

    let mut ready = Vec::new();
    let mut timers = Vec::new();
    for sub in subs.chunks_exact(SUBSCRIPTION_SIZE) {
        let userdata = le_u64(&sub[0..8]);
        let kind = sub[8];
        if kind == EVENTTYPE_CLOCK {
            let clock = le_u32(&sub[16..20]);
            let timeout = Duration::from_nanos(le_u64(&sub[24..32]));
            let absolute = u16::from_le_bytes([sub[40], sub[41]]) & SUBCLOCKFLAGS_ABSTIME != 0;
            let wake = match (clock, absolute) {
                (_, false) => now.checked_add(timeout),
                (CLOCKID_MONOTONIC, true) => origin.checked_add(timeout),
                (CLOCKID_REALTIME, true) => {
                    let since_epoch = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default();
                    now.checked_add(timeout.saturating_sub(since_epoch))
                }
                _ => {
                    ready.push(PollEvent {
                        userdata,
                        error: ERRNO_INVAL as u16,
                        kind,
                    });
                    continue;
                }
            };
            // An unrepresentable instant is as good as never; the deadline ends it.
            timers.push((wake.unwrap_or(stop.deadline), userdata));
        } else {
            let fd = le_u32(&sub[16..20]);
            let error = if fd <= 2 { 0 } else { ERRNO_BADF };
            ready.push(PollEvent {
                userdata,
                error,
                kind,
            });
        }
    }

    if ready.is_empty() {
        let earliest = timers.iter().map(|(wake, _)| *wake).min().unwrap_or(now);
        loop {
            if stop.should_stop() {
                return Err(wasmtime::Error::msg("interrupted"));
            }
            let now = Instant::now();
            if now >= earliest {
                break;
            }
            std::thread::sleep((earliest - now).min(EPOCH_TICK));
        }
        let now = Instant::now();
        for (wake, userdata) in timers {
            if wake <= now {
                ready.push(PollEvent {
                    userdata,
                    error: 0,
                    kind: EVENTTYPE_CLOCK,
                });
            }
        }
    }

    let mut out = vec![0u8; ready.len() * EVENT_SIZE];
    for (record, event) in out.chunks_exact_mut(EVENT_SIZE).zip(&ready) {
        record[0..8].copy_from_slice(&event.userdata.to_le_bytes());
        record[8..10].copy_from_slice(&event.error.to_le_bytes());
        record[10] = event.kind;
    }
    let written = u32::try_from(ready.len()).unwrap_or(u32::MAX);
    if memory
        .write(&mut caller, events_ptr as u32 as usize, &out)
        .and_then(|()| {
            memory.write(
                &mut caller,
                nevents_ptr as u32 as usize,
                &written.to_le_bytes(),
            )
        })
        .is_err()
    {
        return Ok(ERRNO_FAULT);
    }
    Ok(ERRNO_SUCCESS)
}

/// The guest bytes `[ptr, ptr + count * size)`, or `None` when the range overflows or
/// leaves the guest's memory.
pub(super) fn guest_range(memory: &[u8], ptr: i32, count: usize, size: usize) -> Option<&[u8]> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(count.checked_mul(size)?)?;
    memory.get(start..end)
}

/// `random_get` for workloads: the buffer is checked against guest memory first and
/// then filled in place from the kernel's CSPRNG, a chunk at a time (a kill is noticed
/// between chunks); no host buffer of the guest's size is ever allocated.
fn random_get(mut caller: Caller<'_, WasmState>, buf: i32, len: i32) -> wasmtime::Result<i32> {
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return Ok(ERRNO_INVAL);
    };
    let stop = caller.data().stop.clone();
    let len = len as u32 as usize;
    let (data, _) = memory.data_and_store_mut(&mut caller);
    let start = buf as u32 as usize;
    let Some(dest) = start
        .checked_add(len)
        .and_then(|end| data.get_mut(start..end))
    else {
        return Ok(ERRNO_FAULT);
    };
    for chunk in dest.chunks_mut(RANDOM_CHUNK) {
        if stop.should_stop() {
            return Err(wasmtime::Error::msg("interrupted"));
        }
        fill_random(chunk)?;
    }
    Ok(ERRNO_SUCCESS)
}

fn fill_random(mut buf: &mut [u8]) -> wasmtime::Result<()> {
    while !buf.is_empty() {
        match rustix::rand::getrandom(&mut *buf, rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => buf = &mut buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(wasmtime::Error::msg(format!("getrandom: {e}"))),
        }
    }
    Ok(())
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(b)
}

/// Compiled modules by sha256 of their bytes; the oldest entry goes first when full.
struct ModuleCache {
    capacity: usize,
    modules: HashMap<[u8; 32], Module>,
    order: VecDeque<[u8; 32]>,
}

impl ModuleCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            modules: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, key: &[u8; 32]) -> Option<Module> {
        self.modules.get(key).cloned()
    }

    fn insert(&mut self, key: [u8; 32], module: Module) {
        if self.capacity == 0 || self.modules.contains_key(&key) {
            return;
        }
        while self.modules.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.modules.remove(&old);
                }
                None => break,
            }
        }
        self.modules.insert(key, module);
        self.order.push_back(key);
    }
}

/// A guest output stream that forwards each complete line to the log sink as it is
/// written and, for stdout, also keeps the bytes (up to a cap) as the result.
#[derive(Clone)]
struct LinePipe(Arc<Mutex<PipeState>>);

struct PipeState {
    log: LogSink,
    partial: Vec<u8>,
    /// Captured bytes (stdout only) and the cap on them.
    capture: Option<(Vec<u8>, usize)>,
    overflowed: bool,
}

impl LinePipe {
    fn new(log: LogSink, capture_limit: Option<usize>) -> Self {
        Self(Arc::new(Mutex::new(PipeState {
            log,
            partial: Vec::new(),
            capture: capture_limit.map(|limit| (Vec::new(), limit)),
            overflowed: false,
        })))
    }

    fn state(&self) -> MutexGuard<'_, PipeState> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forward and capture `bytes`; `false` once the capture is over its cap (the
    /// guest is then stopped: nothing it writes afterwards could be kept).
    fn push(&self, bytes: &[u8]) -> bool {
        let mut state = self.state();
        let state = &mut *state;
        if let Some((captured, limit)) = state.capture.as_mut() {
            let room = limit.saturating_sub(captured.len());
            if bytes.len() > room {
                state.overflowed = true;
            }
            captured.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
        state.partial.extend_from_slice(bytes);
        while let Some(pos) = state.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = state.partial.drain(..=pos).collect();
            emit(&state.log, &line[..pos]);
        }
        if state.partial.len() >= MAX_PARTIAL_LINE {
            let line = std::mem::take(&mut state.partial);
            emit(&state.log, &line);
        }
        !state.overflowed
    }

    /// Forward a last line that had no newline.
    fn finish(&self) {
        let mut state = self.state();
        if !state.partial.is_empty() {
            let line = std::mem::take(&mut state.partial);
            emit(&state.log, &line);
        }
    }

    /// The captured bytes and whether some were cut.
    fn take_output(&self) -> (Vec<u8>, bool) {
        let mut state = self.state();
        let overflowed = state.overflowed;
        let output = state
            .capture
            .as_mut()
            .map(|(captured, _)| std::mem::take(captured))
            .unwrap_or_default();
        (output, overflowed)
    }
}

fn emit(log: &LogSink, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    log.line(String::from_utf8_lossy(line));
}

impl IsTerminal for LinePipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LinePipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LinePipe {
    async fn ready(&mut self) {}
}

impl OutputStream for LinePipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.push(&bytes) {
            Ok(())
        } else {
            Err(StreamError::Trap(wasmtime::Error::msg(
                "output over its cap",
            )))
        }
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LinePipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.push(buf) {
            Poll::Ready(Ok(buf.len()))
        } else {
            Poll::Ready(Err(std::io::Error::other("output over its cap")))
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Guest memory of the test modules: one page.
    const PAGE: u64 = 65_536;

    fn engine() -> WasmEngine {
        let engine = WasmEngine::new(0).expect("engine");
        engine.start_ticker(|| ()).expect("ticker");
        engine
    }

    /// Run a one-page module whose `_start` exits with the errno of `call`.
    fn errno_of(engine: &WasmEngine, import: &str, call: &str) -> i32 {
        let wat = format!(
            r#"(module
                 {import}
                 (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                 (memory (export "memory") 1)
                 (func (export "_start") (call $exit {call})))"#
        );
        let stop = StopSignal::new(
            crate::backends::CancellationToken::new(),
            Instant::now() + Duration::from_secs(30),
        );
        let r = engine
            .run(wat.as_bytes(), b"", 1, 1024, &LogSink::discard(), &stop)
            .expect("runs");
        r.exit_code.expect("an exit code")
    }

    fn fits(ptr: i32, bytes: u64) -> bool {
        u64::from(ptr as u32) + bytes <= PAGE
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        #[test]
        fn guest_ranges_never_overflow_or_leave_memory(
            ptr in any::<i32>(), count in any::<u32>(), size in 1usize..64, len in 0usize..4096,
        ) {
            let memory = vec![0u8; len];
            let got = guest_range(&memory, ptr, count as usize, size);
            let end = u128::from(ptr as u32) + u128::from(count) * size as u128;
            prop_assert_eq!(got.is_some(), end <= len as u128);
            if let Some(slice) = got {
                prop_assert_eq!(slice.len() as u128, u128::from(count) * size as u128);
            }
        }

        #[test]
        fn random_get_fills_in_range_buffers_and_faults_on_the_rest(
            ptr in prop_oneof![0i32..70_000, any::<i32>()],
            len in prop_oneof![0i32..70_000, any::<i32>()],
        ) {
            let engine = engine();
            let errno = errno_of(
                &engine,
                r#"(import "wasi_snapshot_preview1" "random_get" (func $f (param i32 i32) (result i32)))"#,
                &format!("(call $f (i32.const {ptr}) (i32.const {len}))"),
            );
            let expected = if fits(ptr, u64::from(len as u32)) { ERRNO_SUCCESS } else { ERRNO_FAULT };
            prop_assert_eq!(errno, expected);
        }

        #[test]
        fn poll_oneoff_checks_every_range_before_allocating(
            subs in prop_oneof![0i32..70_000, any::<i32>()],
            events in prop_oneof![0i32..70_000, any::<i32>()],
            n in prop_oneof![0i32..1400, any::<i32>()],
            nevents in prop_oneof![0i32..70_000, any::<i32>()],
        ) {
            let engine = engine();
            let errno = errno_of(
                &engine,
                r#"(import "wasi_snapshot_preview1" "poll_oneoff" (func $f (param i32 i32 i32 i32) (result i32)))"#,
                &format!("(call $f (i32.const {subs}) (i32.const {events}) (i32.const {n}) (i32.const {nevents}))"),
            );
            let count = u64::from(n as u32);
            // Zeroed subscriptions are relative realtime clocks of 0 ns: all ready at once.
            let expected = if count == 0 {
                ERRNO_INVAL
            } else if !fits(subs, count * SUBSCRIPTION_SIZE as u64)
                || !fits(events, count * EVENT_SIZE as u64)
                || !fits(nevents, 4)
            {
                ERRNO_FAULT
            } else {
                ERRNO_SUCCESS
            };
            prop_assert_eq!(errno, expected);
        }
    }

    #[test]
    fn memories_and_tables_share_one_budget() {
        let mut limits = InstanceLimits::new(1000);
        assert!(limits.memory_growing(0, 600, None).expect("ok"));
        // 25 table elements are 400 bytes: exactly the rest.
        assert!(limits.table_growing(0, 25, None).expect("ok"));
        assert!(!limits.memory_growing(600, 601, None).expect("ok"));
        assert!(!limits.table_growing(25, 26, None).expect("ok"));
        assert!(!limits.memory_growing(0, usize::MAX, None).expect("ok"));
    }
}
