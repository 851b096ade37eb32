//! JavaScript on QuickJS (rquickjs): a fresh runtime and context per workload.
//!
//! A worker's [`JsEngine`] keeps the prelude compiled to bytecode once, a bounded cache
//! of compiled workload modules keyed by the sha256 of their source, and the runtime and
//! context of the next job, created (with the prelude installed) while the worker waits
//! for it. A context serves one job and is dropped with its runtime; bytecode is copied
//! into the context that loads it (QuickJS-ng reads it without keeping the buffer), so
//! nothing of one job's state reaches the next.
//!
//! Everything here runs on the job thread of a worker process (QuickJS values are
//! `!Send`), never in the server. The only host
//! surface a workload sees is `console.*`, `setTimeout` and `clearTimeout`; there is no
//! `std`/`os` module, no `require`, no `process`, no `fetch`, and every `import` is
//! refused by the module resolver.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rquickjs::loader::{ImportAttributes, Loader, Resolver};
use rquickjs::module::{Declared, WriteOptions};
use rquickjs::{
    CatchResultExt, CaughtError, Context, Ctx, Exception, Function, Module, Persistent, Runtime,
    Value,
};
use sha2::{Digest, Sha256};

use super::StopSignal;
use crate::backends::{output_exceeds, BackendError, LogSink, WorkloadResult};

/// QuickJS's stack limit. Far below the worker process's main-thread stack (8 MiB by
/// default), so deep recursion throws a catchable `RangeError` instead of overflowing
/// the host stack.
pub(super) const JS_MAX_STACK_BYTES: usize = 1024 * 1024;

/// Most timers a workload may have pending at once (the queue lives on the host heap,
/// outside the QuickJS memory limit, so it needs its own cap).
const MAX_PENDING_TIMERS: usize = 100_000;

/// Longest the event loop sleeps between checks of the cancellation token while it
/// waits for a timer.
const IDLE_POLL: Duration = Duration::from_millis(5);

/// How [`describe`] reports a thrown `null`.
const UNCAUGHT_NULL: &str = "uncaught null";

/// Name of the workload's module or script in stack traces.
const MAIN_NAME: &str = "main.js";

/// Module name of the prelude.
const PRELUDE_NAME: &str = "vulcan:prelude";

/// Installed before the workload runs. Its default export receives the host functions
/// as arguments and keeps them in a closure, so the workload cannot reach or replace
/// them; it returns the function the event loop calls when a timer is due.
const PRELUDE: &str = r#"
export default function (emit, schedule, unschedule) {
  const fmt = (v) => {
    try {
      if (typeof v === "string") return v;
      if (v instanceof Error) {
        const head = `${v.name}: ${v.message}`;
        return v.stack ? `${head}\n${String(v.stack).trimEnd()}` : head;
      }
      if (typeof v === "function") return `[Function: ${v.name || "anonymous"}]`;
      if (typeof v === "object" && v !== null) {
        const s = JSON.stringify(v);
        if (s !== undefined) return s;
      }
      return String(v);
    } catch (_) {
      return Object.prototype.toString.call(v);
    }
  };
  const write = (...args) => emit(args.map(fmt).join(" "));
  globalThis.console = Object.freeze({
    log: write, info: write, warn: write, error: write, debug: write, trace: write,
  });
  const pending = new Map();
  globalThis.setTimeout = function setTimeout(fn, ms, ...args) {
    if (typeof fn !== "function") throw new TypeError("setTimeout: callback is not a function");
    const id = schedule(Number(ms) || 0);
    pending.set(id, () => fn(...args));
    return id;
  };
  globalThis.clearTimeout = function clearTimeout(id) {
    if (pending.delete(id)) unschedule(id);
  };
  return function fire(id) {
    const f = pending.get(id);
    if (f) {
      pending.delete(id);
      f();
    }
  };
}
"#;

/// Where a job's `console.*` lines go: set when the job starts (the prelude was
/// installed before the job, and its sink, arrived).
type SinkSlot = Rc<RefCell<LogSink>>;

/// A runtime and a context with the prelude installed, made before the job it serves
/// arrives; used by exactly one job. Fields drop in order: the saved function before
/// the context, the context before the runtime.
struct Prepared {
    fire: Persistent<Function<'static>>,
    context: Context,
    rt: Runtime,
    sink: SinkSlot,
    timers: Rc<RefCell<Timers>>,
}

impl Prepared {
    /// A fresh runtime and context, the prelude loaded from `prelude` (bytecode made by
    /// [`compile_prelude`]). No memory limit or interrupt handler yet: the job sets them.
    fn new(prelude: &[u8]) -> Result<Self, BackendError> {
        let rt = Runtime::new()
            .map_err(|e| BackendError::Internal(format!("cannot create a QuickJS runtime: {e}")))?;
        rt.set_max_stack_size(JS_MAX_STACK_BYTES);
        rt.set_loader(DenyImports, DenyImports);
        let context = Context::full(&rt).map_err(|e| {
            BackendError::Internal(format!("cannot create a JavaScript context: {e}"))
        })?;
        let sink: SinkSlot = Rc::new(RefCell::new(LogSink::discard()));
        let timers = Rc::new(RefCell::new(Timers::default()));
        let fire = context
            .with(|ctx| {
                install_globals(&ctx, prelude, &sink, &timers)
                    .catch(&ctx)
                    .map(|fire| Persistent::save(&ctx, fire))
                    .map_err(|e| describe(&ctx, e))
            })
            .map_err(|e| BackendError::Internal(format!("cannot install the prelude: {e}")))?;
        Ok(Self {
            fire,
            context,
            rt,
            sink,
            timers,
        })
    }
}

/// Compiled workload modules by the sha256 of their source, at most `capacity` bytes
/// of bytecode in all; the oldest entry goes first when full.
struct BytecodeCache {
    capacity: usize,
    used: usize,
    entries: HashMap<[u8; 32], Rc<[u8]>>,
    order: VecDeque<[u8; 32]>,
}

impl BytecodeCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            used: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, key: &[u8; 32]) -> Option<Rc<[u8]>> {
        self.entries.get(key).cloned()
    }

    fn insert(&mut self, key: [u8; 32], bytecode: Vec<u8>) {
        // An entry larger than a quarter of the cache would flush most of it.
        if bytecode.len() > self.capacity / 4 || self.entries.contains_key(&key) {
            return;
        }
        while self.used + bytecode.len() > self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(b) = self.entries.remove(&old) {
                self.used -= b.len();
            }
        }
        self.used += bytecode.len();
        self.entries.insert(key, bytecode.into());
        self.order.push_back(key);
    }
}

/// A finished job's context and runtime, kept until [`JsEngine::prepare`] so that freeing
/// its heap happens after the result was sent, off the request path. Fields drop in
/// order: the context before the runtime. Nothing of it is ever reachable from another
/// job (each job has its own runtime).
struct Spent {
    _context: Context,
    _rt: Runtime,
}

/// The JavaScript engine of one worker (its job thread): see the module docs.
pub(super) struct JsEngine {
    prelude: Vec<u8>,
    cache: BytecodeCache,
    next: Option<Prepared>,
    spent: Option<Spent>,
}

impl JsEngine {
    /// Compile the prelude; keep at most `cache_bytes` of compiled workload modules
    /// (0 disables the cache).
    pub(super) fn new(cache_bytes: usize) -> Result<Self, BackendError> {
        Ok(Self {
            prelude: compile_prelude()?,
            cache: BytecodeCache::new(cache_bytes),
            next: None,
            spent: None,
        })
    }

    /// Free the last job's heap and make the runtime and context of the next job now
    /// (between jobs, off the request path). A failure is left for the job to meet and
    /// report.
    pub(super) fn prepare(&mut self) {
        self.spent = None;
        if self.next.is_none() {
            self.next = Prepared::new(&self.prelude).ok();
        }
    }

    /// Run one JavaScript workload to completion on the calling thread, in the
    /// prepared context (made now if there is none).
    ///
    /// `Ok` with `error` set when the code threw (or ran out of memory);
    /// `Err(Cancelled)` when `stop` fired (kill or deadline).
    pub(super) fn run(
        &mut self,
        code: &str,
        input: &[u8],
        mem_mb: u32,
        max_output_bytes: usize,
        log: &LogSink,
        stop: &StopSignal,
    ) -> Result<WorkloadResult, BackendError> {
        if stop.should_stop() {
            return Err(BackendError::Cancelled);
        }
        let prepared = match self.next.take() {
            Some(p) => p,
            None => Prepared::new(&self.prelude)?,
        };
        let (result, spent) = run_in(
            prepared,
            &mut self.cache,
            code,
            input,
            mem_mb,
            max_output_bytes,
            log,
            stop,
        );
        self.spent = Some(spent);
        if stop.should_stop() {
            return Err(BackendError::Cancelled);
        }
        result
    }
}

/// The prelude as module bytecode, compiled once per worker in a throwaway context.
fn compile_prelude() -> Result<Vec<u8>, BackendError> {
    let fail = |e: String| BackendError::Internal(format!("cannot compile the prelude: {e}"));
    let rt = Runtime::new().map_err(|e| fail(e.to_string()))?;
    let context = Context::full(&rt).map_err(|e| fail(e.to_string()))?;
    context.with(|ctx| {
        Module::declare(ctx.clone(), PRELUDE_NAME, PRELUDE)
            .and_then(|m| m.write(WriteOptions::default()))
            .catch(&ctx)
            .map_err(|e| fail(describe(&ctx, e)))
    })
}

/// A module from bytecode this worker compiled itself.
#[allow(unsafe_code)]
fn load_module<'js>(ctx: &Ctx<'js>, bytecode: &[u8]) -> rquickjs::Result<Module<'js, Declared>> {
    // SAFETY: `bytecode` was written by `Module::write` of this same QuickJS build in
    // this process (the prelude, or a workload's module in the worker's own cache); it
    // never comes from outside the worker. QuickJS-ng copies what it reads
    // (`JS_READ_OBJ_ROM_DATA` is 0), so the module does not borrow the buffer.
    unsafe { Module::load(ctx.clone(), bytecode) }
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    prepared: Prepared,
    cache: &mut BytecodeCache,
    code: &str,
    input: &[u8],
    mem_mb: u32,
    max_output_bytes: usize,
    log: &LogSink,
    stop: &StopSignal,
) -> (Result<WorkloadResult, BackendError>, Spent) {
    let Prepared {
        fire,
        context,
        rt,
        sink,
        timers,
    } = prepared;
    let limit = usize::try_from(mem_mb)
        .unwrap_or(usize::MAX)
        .saturating_mul(1024 * 1024);
    rt.set_memory_limit(limit);
    let interrupt = stop.clone();
    // QuickJS calls this every few thousand instructions; once it says yes it keeps
    // saying yes, so a `catch` that resumes looping is interrupted again at once.
    rt.set_interrupt_handler(Some(Box::new(move || interrupt.should_stop())));
    *sink.borrow_mut() = log.clone();

    let outcome = context.with(|ctx| {
        let job = Job {
            code,
            input,
            cache,
            timers,
        };
        match fire.restore(&ctx) {
            Ok(fire) => evaluate(&ctx, job, fire, stop),
            Err(e) => Outcome::Failed(format!("cannot restore the prelude: {e}")),
        }
    });
    // Measured while the context (and whatever the workload left reachable) still
    // exists: when QuickJS runs out of memory it may throw without even an error
    // object, and this is how such a failure is told apart. Only on failure: computing
    // it walks the whole heap.
    let heap_full = matches!(outcome, Outcome::Failed(_))
        && usize::try_from(rt.memory_usage().malloc_size).unwrap_or(0) >= limit / 4 * 3;
    // The heap is freed later (see `Spent`); the limits must not outlive the job.
    rt.set_interrupt_handler(None);
    let spent = Spent {
        _context: context,
        _rt: rt,
    };
    let result = Ok(match outcome {
        Outcome::Done(Some(output)) if output.len() > max_output_bytes => WorkloadResult {
            exit_code: Some(1),
            output: Vec::new(),
            error: Some(output_exceeds(max_output_bytes)),
            duration_ms: 0,
        },
        Outcome::Done(output) => WorkloadResult {
            exit_code: Some(0),
            output: output.map(String::into_bytes).unwrap_or_default(),
            error: None,
            duration_ms: 0,
        },
        Outcome::Failed(message) => {
            let message = if message.contains("out of memory") {
                format!("{message}\n(memory limit: {mem_mb} MiB)")
            } else if message == UNCAUGHT_NULL {
                // QuickJS throws null when it cannot allocate the error object itself.
                format!("out of memory (memory limit: {mem_mb} MiB), or the code threw null")
            } else if heap_full {
                format!("out of memory (memory limit: {mem_mb} MiB): {message}")
            } else {
                message
            };
            WorkloadResult {
                exit_code: Some(1),
                output: Vec::new(),
                error: Some(message),
                duration_ms: 0,
            }
        }
    });
    (result, spent)
}

/// One job's code and what it needs besides the context.
struct Job<'a> {
    code: &'a str,
    input: &'a [u8],
    cache: &'a mut BytecodeCache,
    timers: Rc<RefCell<Timers>>,
}

/// How a workload ended when it was not stopped.
enum Outcome {
    /// The result, JSON-serialised (`None` for `undefined` and other non-JSON values).
    Done(Option<String>),
    /// An uncaught exception or an engine failure, as text.
    Failed(String),
}

fn evaluate<'js>(ctx: &Ctx<'js>, job: Job<'_>, fire: Function<'js>, stop: &StopSignal) -> Outcome {
    match evaluate_inner(ctx, job, fire, stop) {
        Ok(output) => Outcome::Done(output),
        Err(message) => Outcome::Failed(message),
    }
}

/// The workload's module: from the cache when the same source ran before in this
/// worker, else compiled (and its bytecode cached).
fn declare_module<'js>(
    ctx: &Ctx<'js>,
    code: &str,
    cache: &mut BytecodeCache,
) -> rquickjs::Result<Module<'js, Declared>> {
    if cache.capacity == 0 {
        return Module::declare(ctx.clone(), MAIN_NAME, code);
    }
    let key: [u8; 32] = Sha256::digest(code.as_bytes()).into();
    if let Some(bytecode) = cache.get(&key) {
        return load_module(ctx, &bytecode);
    }
    let module = Module::declare(ctx.clone(), MAIN_NAME, code)?;
    if let Ok(bytecode) = module.write(WriteOptions::default()) {
        cache.insert(key, bytecode);
    }
    Ok(module)
}

fn evaluate_inner<'js>(
    ctx: &Ctx<'js>,
    job: Job<'_>,
    fire: Function<'js>,
    stop: &StopSignal,
) -> Result<Option<String>, String> {
    let Job {
        code,
        input,
        cache,
        timers,
    } = job;
    let event_loop = EventLoop {
        ctx,
        fire,
        timers,
        stop,
    };
    let input: Value<'js> = if input.is_empty() {
        Value::new_undefined(ctx.clone())
    } else {
        ctx.json_parse(input.to_vec())
            .catch(ctx)
            .map_err(|e| format!("the input is not valid JSON: {}", describe(ctx, e)))?
    };

    let value =
        if looks_like_module(code) {
            let module = declare_module(ctx, code, cache)
                .catch(ctx)
                .map_err(|e| describe(ctx, e))?;
            let (module, evaluated) = module.eval().catch(ctx).map_err(|e| describe(ctx, e))?;
            event_loop.settle(evaluated.into_value())?;
            let default: Value<'js> = module
                .get("default")
                .catch(ctx)
                .map_err(|e| describe(ctx, e))?;
            match default.as_function() {
                Some(f) => f
                    .call::<_, Value<'js>>((input,))
                    .catch(ctx)
                    .map_err(|e| describe(ctx, e))?,
                None if default.is_undefined() => return Err(
                    "the module has no default export (expected `export default (input) => value`)"
                        .into(),
                ),
                None => default,
            }
        } else {
            ctx.eval::<Value<'js>, _>(code)
                .catch(ctx)
                .map_err(|e| describe(ctx, e))?
        };
    let value = event_loop.settle(value)?;
    event_loop.drain()?;

    let json = ctx.json_stringify(value).catch(ctx).map_err(|e| {
        format!(
            "the result cannot be serialised as JSON: {}",
            describe(ctx, e)
        )
    })?;
    match json {
        None => Ok(None),
        Some(s) => s
            .to_string()
            .map(Some)
            .map_err(|e| format!("the result cannot be serialised as JSON: {e}")),
    }
}

/// Define `console`, `setTimeout` and `clearTimeout` by running the prelude (module
/// bytecode); return the timer-firing function. Lines go to whatever sink `sink` holds
/// when they are printed.
fn install_globals<'js>(
    ctx: &Ctx<'js>,
    prelude: &[u8],
    sink: &SinkSlot,
    timers: &Rc<RefCell<Timers>>,
) -> rquickjs::Result<Function<'js>> {
    let sink = Rc::clone(sink);
    let emit = Function::new(ctx.clone(), move |text: String| {
        let sink = sink.borrow();
        for line in text.split('\n') {
            sink.line(line);
        }
    })?;
    let scheduled = Rc::clone(timers);
    let schedule = Function::new(
        ctx.clone(),
        move |ctx: Ctx<'js>, ms: f64| -> rquickjs::Result<u32> {
            let delay = if ms.is_finite() && ms > 0.0 {
                Duration::from_secs_f64(ms.min(1e12) / 1000.0)
            } else {
                Duration::ZERO
            };
            let now = Instant::now();
            // Past the deadline anyway if it cannot be represented.
            let due = now
                .checked_add(delay)
                .unwrap_or(now + Duration::from_secs(86_400));
            scheduled
                .borrow_mut()
                .add(due)
                .ok_or_else(|| Exception::throw_range(&ctx, "too many pending timers"))
        },
    )?;
    let unscheduled = Rc::clone(timers);
    let unschedule = Function::new(ctx.clone(), move |id: u32| {
        unscheduled.borrow_mut().remove(id);
    })?;
    let (module, _) = load_module(ctx, prelude)?.eval()?;
    let prelude: Function<'js> = module.get("default")?;
    prelude.call((emit, schedule, unschedule))
}

/// Whether `code` uses module syntax (a top-level-looking `import`/`export` statement).
/// Scripts may still use `import("x")`, which the resolver refuses like any import.
/// The one test of "module or script" for `node` on every isolation.
pub(crate) fn looks_like_module(code: &str) -> bool {
    code.lines().any(|line| {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("export") {
            rest.starts_with(|c: char| c.is_whitespace() || c == '{' || c == '*')
        } else if let Some(rest) = t.strip_prefix("import") {
            rest.starts_with(|c: char| {
                c.is_whitespace() || c == '{' || c == '*' || c == '"' || c == '\'' || c == '.'
            }) && !rest.trim_start().starts_with('(')
        } else {
            false
        }
    })
}

/// Text of a caught error: `Name: message` plus the stack where there is one.
fn describe<'js>(ctx: &Ctx<'js>, error: CaughtError<'js>) -> String {
    match error {
        CaughtError::Exception(e) => {
            let name: Option<String> = e.get("name").ok().flatten();
            let message = e.message().unwrap_or_default();
            let head = match name {
                Some(name) if !name.is_empty() => format!("{name}: {message}"),
                _ => message,
            };
            match e.stack() {
                Some(stack) if !stack.trim().is_empty() => {
                    format!("{head}\n{}", stack.trim_end())
                }
                _ => head,
            }
        }
        CaughtError::Value(v) => {
            if let Some(s) = v.as_string().and_then(|s| s.to_string().ok()) {
                return format!("uncaught {s}");
            }
            if v.is_null() || v.is_undefined() {
                return format!("uncaught {}", v.type_name());
            }
            match ctx.json_stringify(v) {
                Ok(Some(s)) => s
                    .to_string()
                    .map(|s| format!("uncaught {s}"))
                    .unwrap_or_else(|_| "uncaught exception".into()),
                _ => "uncaught exception".into(),
            }
        }
        CaughtError::Error(e) => e.to_string(),
    }
}

/// Pending `setTimeout` timers, ordered by due time then creation.
#[derive(Default)]
struct Timers {
    next_id: u32,
    by_due: BTreeMap<(Instant, u32), ()>,
    due_of: HashMap<u32, Instant>,
}

impl Timers {
    /// Register a timer; `None` when too many are pending.
    fn add(&mut self, due: Instant) -> Option<u32> {
        if self.due_of.len() >= MAX_PENDING_TIMERS {
            return None;
        }
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let id = self.next_id;
        self.by_due.insert((due, id), ());
        self.due_of.insert(id, due);
        Some(id)
    }

    fn remove(&mut self, id: u32) {
        if let Some(due) = self.due_of.remove(&id) {
            self.by_due.remove(&(due, id));
        }
    }

    fn next(&self) -> Option<(Instant, u32)> {
        self.by_due.keys().next().copied()
    }
}

/// Drives promises, jobs and timers on the workload's thread.
struct EventLoop<'a, 'js> {
    ctx: &'a Ctx<'js>,
    fire: Function<'js>,
    timers: Rc<RefCell<Timers>>,
    stop: &'a StopSignal,
}

/// What one turn of the event loop did.
enum Turn {
    /// Ran a job or a timer.
    Worked,
    /// Waited for a timer that is not due yet.
    Waited,
    /// Nothing left to run.
    Idle,
}

impl<'js> EventLoop<'_, 'js> {
    /// If `value` is a promise, run the loop until it settles and return its value.
    fn settle(&self, value: Value<'js>) -> Result<Value<'js>, String> {
        let Some(promise) = value.as_promise().cloned() else {
            return Ok(value);
        };
        loop {
            if let Some(result) = promise.result::<Value<'js>>() {
                return result.catch(self.ctx).map_err(|e| describe(self.ctx, e));
            }
            match self.turn()? {
                Turn::Worked | Turn::Waited => {}
                Turn::Idle => {
                    return Err("the promise never settled (no pending jobs or timers left)".into())
                }
            }
        }
    }

    /// Run remaining jobs and timers until none are left.
    fn drain(&self) -> Result<(), String> {
        loop {
            if let Turn::Idle = self.turn()? {
                return Ok(());
            }
        }
    }

    fn turn(&self) -> Result<Turn, String> {
        if self.stop.should_stop() {
            return Err("interrupted".into());
        }
        if self.ctx.execute_pending_job() {
            return Ok(Turn::Worked);
        }
        let next = self.timers.borrow().next();
        let Some((due, id)) = next else {
            return Ok(Turn::Idle);
        };
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).min(IDLE_POLL));
            return Ok(Turn::Waited);
        }
        self.timers.borrow_mut().remove(id);
        self.fire
            .call::<_, ()>((id,))
            .catch(self.ctx)
            .map_err(|e| describe(self.ctx, e))?;
        Ok(Turn::Worked)
    }
}

/// Resolver and loader that refuse every module: workloads get no host modules.
struct DenyImports;

impl Resolver for DenyImports {
    fn resolve<'js>(
        &mut self,
        _ctx: &Ctx<'js>,
        base: &str,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<String> {
        Err(rquickjs::Error::new_resolving_message(
            base,
            name,
            format!("import of \"{name}\" is not allowed"),
        ))
    }
}

impl Loader for DenyImports {
    fn load<'js>(
        &mut self,
        _ctx: &Ctx<'js>,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js, Declared>> {
        Err(rquickjs::Error::new_loading_message(
            name,
            format!("import of \"{name}\" is not allowed"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{looks_like_module, BytecodeCache};

    #[test]
    fn the_bytecode_cache_stays_within_its_bytes_dropping_the_oldest() {
        let mut c = BytecodeCache::new(1000);
        for k in 0..10u8 {
            c.insert([k; 32], vec![k; 200]);
            assert!(c.used <= 1000, "{} bytes kept", c.used);
            assert_eq!(c.used, c.entries.values().map(|b| b.len()).sum::<usize>());
        }
        assert!(c.get(&[0; 32]).is_none(), "oldest dropped");
        assert_eq!(c.get(&[9; 32]).as_deref(), Some(&[9u8; 200][..]));
        // Larger than a quarter of the cache: not kept, nothing flushed for it.
        let before = c.entries.len();
        c.insert([42; 32], vec![0; 251]);
        assert!(c.get(&[42; 32]).is_none());
        assert_eq!(c.entries.len(), before);
        // Disabled.
        let mut off = BytecodeCache::new(0);
        off.insert([1; 32], vec![1]);
        assert!(off.get(&[1; 32]).is_none());
    }

    #[test]
    fn module_detection_follows_statement_syntax() {
        assert!(looks_like_module("export default (x) => x"));
        assert!(looks_like_module(
            "const a = 1;\n  export { a as default };"
        ));
        assert!(looks_like_module("import fs from \"fs\";"));
        assert!(looks_like_module("import { x } from 'y'"));
        assert!(!looks_like_module("1 + 2"));
        assert!(!looks_like_module("const exported = 1; exported"));
        assert!(!looks_like_module("import(\"fs\")"));
        assert!(!looks_like_module("const s = 'export default'; s"));
    }
}
