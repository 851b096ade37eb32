//! The isolate backend through the [`Backend`] trait, with the real engines in real
//! worker processes (the `vulcan` binary Cargo built for these tests).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vulcan::backends::isolate::IsolateBackend;
use vulcan::backends::{
    Backend, BackendError, BackendHealth, ExecContext, LogSink, WorkloadResult, WorkloadSpec,
};
use vulcan::config::Config;
use vulcan::model::{Isolation, Payload, Runtime, WorkloadId};

fn config(max_concurrency: usize) -> Config {
    Config::load_from(HashMap::from([
        (
            "VULCAN_BACKENDS__ISOLATE__MAX_CONCURRENCY".to_string(),
            max_concurrency.to_string(),
        ),
        (
            "VULCAN_BACKENDS__ISOLATE__WORKER_PATH".to_string(),
            env!("CARGO_BIN_EXE_vulcan").to_string(),
        ),
        (
            "VULCAN_BACKENDS__ISOLATE__WASM_MODULE_CACHE".to_string(),
            "8".to_string(),
        ),
    ]))
    .expect("config")
}

fn backend(max_concurrency: usize) -> IsolateBackend {
    IsolateBackend::new(&config(max_concurrency)).expect("backend starts")
}

/// One worker with the JavaScript bytecode cache set to `bytes`.
fn backend_with_js_cache(bytes: usize) -> IsolateBackend {
    let mut cfg = config(1);
    cfg.backends.isolate.js_bytecode_cache_bytes = bytes;
    IsolateBackend::new(&cfg).expect("backend starts")
}

fn spec(runtime: Runtime, payload: Payload, input: Value, mem_mb: u32) -> WorkloadSpec {
    WorkloadSpec {
        id: WorkloadId::new(),
        runtime,
        isolation: Isolation::Isolate,
        payload,
        input: serde_json::to_vec(&input).expect("json"),
        cpus: 1,
        mem_mb,
        timeout: Duration::from_secs(10),
        max_output_bytes: config(1).max_output_bytes,
    }
}

fn js(code: &str, input: Value) -> WorkloadSpec {
    spec(Runtime::Node, Payload::Code(code.into()), input, 64)
}

fn wat(code: &str, input: Value) -> WorkloadSpec {
    spec(Runtime::Wasm, Payload::Code(code.into()), input, 16)
}

/// A sink that records lines, and the record.
fn recording_sink() -> (LogSink, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&lines);
    let sink = LogSink::new(move |line| record.lock().expect("lock").push(line));
    (sink, lines)
}

async fn run(
    backend: &IsolateBackend,
    spec: WorkloadSpec,
    timeout: Duration,
) -> Result<WorkloadResult, BackendError> {
    backend
        .execute(spec, ExecContext::new(LogSink::discard(), timeout))
        .await
}

async fn run_ok(backend: &IsolateBackend, spec: WorkloadSpec) -> WorkloadResult {
    run(backend, spec, Duration::from_secs(10))
        .await
        .expect("backend answers")
}

/// Run `spec` (it waits far longer than the test) and cancel it after 200 ms: it must end
/// `Cancelled` within a second of the cancel (a liveness bound, not a timing figure).
async fn cancel_after_200_ms_ends_it_within_a_second(backend: &IsolateBackend, spec: WorkloadSpec) {
    let ctx = ExecContext::new(LogSink::discard(), Duration::from_secs(60));
    let token = ctx.cancel.clone();
    let running = backend.execute(spec, ctx);
    let killer = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        token.cancel();
        Instant::now()
    };
    let (r, killed_at) = tokio::join!(running, killer);
    assert_eq!(r, Err(BackendError::Cancelled));
    assert!(
        killed_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        killed_at.elapsed()
    );
}

fn output_json(result: &WorkloadResult) -> Value {
    serde_json::from_slice(&result.output).unwrap_or_else(|e| {
        panic!(
            "output {:?} is not JSON ({e}); error: {:?}",
            String::from_utf8_lossy(&result.output),
            result.error
        )
    })
}

// ---------------------------------------------------------------- JavaScript

#[tokio::test]
async fn api_example_default_export_gets_the_input() {
    let b = backend(1);
    let r = run_ok(
        &b,
        js(
            "export default (input) => ({ sum: input.a + input.b })",
            json!({"a": 1, "b": 2}),
        ),
    )
    .await;
    assert_eq!(r.error, None);
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(output_json(&r), json!({"sum": 3}));
}

#[tokio::test]
async fn async_default_export_is_awaited_including_timers() {
    let b = backend(1);
    let code = "export default async (input) => {\n\
                  await new Promise((resolve) => setTimeout(resolve, 20));\n\
                  const v = await Promise.resolve(input.n * 2);\n\
                  return { v };\n\
                }";
    let r = run_ok(&b, js(code, json!({"n": 21}))).await;
    assert_eq!(r.error, None);
    assert_eq!(output_json(&r), json!({"v": 42}));
}

/// Mutates everything a workload can reach (module state, globals, built-in
/// prototypes, pending timers) and answers what it found when it started.
const MUTATOR: &str = r#"
let calls = 0;
export default (input) => {
  calls += 1;
  const seen = {
    calls,
    marker: globalThis.marker ?? null,
    polluted: ({}).polluted ?? null,
    push: [1].push(2),
    json: JSON.stringify({ a: 1 }),
  };
  console.log("run " + input.tag);
  globalThis.marker = input.tag;
  Object.prototype.polluted = input.tag;
  Array.prototype.push = () => -1;
  JSON.stringify = () => "tampered";
  setTimeout(() => console.log("late timer of " + input.tag), 0);
  return { calls: seen.calls, marker: seen.marker, polluted: seen.polluted,
           push: seen.push, json: seen.json };
};
"#;

#[tokio::test]
async fn identical_code_from_the_bytecode_cache_never_sees_a_previous_workloads_state() {
    // One worker: the second and third runs load the first one's cached bytecode.
    let b = backend_with_js_cache(1 << 20);
    for tag in ["A", "B", "C"] {
        let (sink, lines) = recording_sink();
        let r = b
            .execute(
                js(MUTATOR, json!({ "tag": tag })),
                ExecContext::new(sink, Duration::from_secs(10)),
            )
            .await
            .expect("backend answers");
        assert_eq!(r.error, None, "run {tag}");
        assert_eq!(
            output_json(&r),
            json!({"calls": 1, "marker": null, "polluted": null, "push": 2, "json": "{\"a\":1}"}),
            "run {tag} started from a fresh context"
        );
        assert_eq!(
            *lines.lock().expect("lock"),
            vec![format!("run {tag}"), format!("late timer of {tag}")],
            "run {tag} logs only its own lines"
        );
    }
}

#[tokio::test]
async fn cached_and_uncached_modules_give_the_same_results_and_errors() {
    let code = "export default (i) => { if (i.fail) { throw new TypeError(\"bad \" + i.n); } return i.n * 2; }";
    for cache in [0, 1 << 20] {
        let b = backend_with_js_cache(cache);
        for n in 1..=3 {
            let r = run_ok(&b, js(code, json!({"n": n, "fail": false}))).await;
            assert_eq!(output_json(&r), json!(n * 2), "cache {cache}");
            let r = run_ok(&b, js(code, json!({"n": n, "fail": true}))).await;
            assert_eq!(r.exit_code, Some(1));
            let err = r.error.expect("failed");
            assert!(
                err.starts_with(&format!("TypeError: bad {n}")) && err.contains("main.js"),
                "cache {cache}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn plain_script_result_is_its_last_value() {
    let b = backend(1);
    let r = run_ok(&b, js("const x = 20;\nx + 22", Value::Null)).await;
    assert_eq!(r.error, None);
    assert_eq!(output_json(&r), json!(42));

    let r = run_ok(&b, js("let unused = 1;\nundefined", Value::Null)).await;
    assert_eq!(r.error, None);
    assert!(r.output.is_empty(), "undefined gives empty output");
}

#[tokio::test]
async fn console_lines_reach_the_sink_in_order_with_objects_as_json() {
    let b = backend(1);
    let (sink, lines) = recording_sink();
    let code = r#"
        console.log("hello", 1, { a: 1 }, [1, 2]);
        console.info("two");
        console.warn("three");
        console.error("four\nfive");
        console.debug(null, undefined, true);
        setTimeout(() => console.log("later"), 5);
        "done"
    "#;
    let r = b
        .execute(
            js(code, Value::Null),
            ExecContext::new(sink, Duration::from_secs(10)),
        )
        .await
        .expect("runs");
    assert_eq!(r.error, None);
    assert_eq!(output_json(&r), json!("done"));
    let lines = lines.lock().expect("lock").clone();
    assert_eq!(
        lines,
        vec![
            r#"hello 1 {"a":1} [1,2]"#,
            "two",
            "three",
            "four",
            "five",
            "null undefined true",
            "later"
        ]
    );
}

#[tokio::test]
async fn an_exception_is_a_failed_result_with_the_stack() {
    let b = backend(1);
    let code = "function inner() { throw new Error(\"bad input\"); }\n\
                export default () => inner();";
    let r = run_ok(&b, js(code, Value::Null)).await;
    assert_eq!(r.exit_code, Some(1));
    let error = r.error.expect("an error");
    assert!(error.contains("Error: bad input"), "{error}");
    assert!(error.contains("inner"), "stack expected: {error}");

    let r = run_ok(
        &b,
        js("export default async () => { throw 'nope'; }", Value::Null),
    )
    .await;
    assert_eq!(r.exit_code, Some(1));
    assert!(r.error.expect("an error").contains("nope"));

    let r = run_ok(&b, js("this is not javascript", Value::Null)).await;
    assert_eq!(r.exit_code, Some(1));
    assert!(r.error.expect("an error").contains("SyntaxError"));
}

#[tokio::test]
async fn an_infinite_loop_stops_at_the_deadline() {
    let b = backend(1);
    let start = Instant::now();
    let r = run(
        &b,
        js("while (true) {}", Value::Null),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(r, Err(BackendError::Cancelled));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn catch_cannot_swallow_the_interrupt() {
    let b = backend(1);
    let code = "for (;;) { try { while (true) {} } catch (e) {} }";
    let start = Instant::now();
    let r = run(&b, js(code, Value::Null), Duration::from_secs(1)).await;
    assert_eq!(r, Err(BackendError::Cancelled));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_timer_past_the_deadline_is_cancelled() {
    let b = backend(1);
    let code = "export default () => new Promise((r) => setTimeout(r, 60000))";
    let start = Instant::now();
    let r = run(&b, js(code, Value::Null), Duration::from_millis(500)).await;
    assert_eq!(r, Err(BackendError::Cancelled));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn kill_stops_loops_and_frees_the_workers() {
    let b = Arc::new(backend(2));
    let mut tokens = Vec::new();
    let mut runs = Vec::new();
    for _ in 0..4 {
        let ctx = ExecContext::new(LogSink::discard(), Duration::from_secs(60));
        tokens.push(ctx.cancel.clone());
        let b = Arc::clone(&b);
        runs.push(tokio::spawn(async move {
            b.execute(js("while (true) {}", Value::Null), ctx).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    for token in &tokens {
        token.cancel();
    }
    for run in runs {
        assert_eq!(run.await.expect("task"), Err(BackendError::Cancelled));
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    // Both workers are free again (no replacement was needed: they stopped in time).
    for _ in 0..2 {
        let r = run_ok(&b, js("1 + 1", Value::Null)).await;
        assert_eq!(output_json(&r), json!(2));
    }
    assert_eq!(b.process_report().worker_restarts, 0);
}

#[tokio::test]
async fn a_memory_bomb_fails_with_out_of_memory_and_the_worker_recovers() {
    let b = backend(1);
    let bomb = "const chunks = [];\n\
                for (let i = 0; i < 32; i++) chunks.push(new Uint8Array(1024 * 1024).fill(1));\n\
                chunks.length";
    let mut s = js(bomb, Value::Null);
    s.mem_mb = 16;
    let r = run_ok(&b, s).await;
    assert_eq!(r.exit_code, Some(1));
    let error = r.error.expect("an error");
    assert!(error.contains("out of memory"), "{error}");

    // Small objects until the heap is full: QuickJS may not even manage the error.
    let mut s = js(
        "(() => { const a = []; while (true) a.push({ x: [1, 2, 3] }); })()",
        Value::Null,
    );
    s.mem_mb = 16;
    let r = run_ok(&b, s).await;
    assert_eq!(r.exit_code, Some(1));
    let error = r.error.expect("an error");
    assert!(error.contains("out of memory"), "{error}");

    let r = run_ok(&b, js("export default () => 'fine'", Value::Null)).await;
    assert_eq!(r.error, None);
    assert_eq!(output_json(&r), json!("fine"));
}

#[tokio::test]
async fn deep_recursion_is_a_catchable_error() {
    let b = backend(1);
    let code = "function f(n) { return f(n + 1) + 1; }\n\
                let caught = false;\n\
                try { f(0); } catch (e) { caught = e instanceof RangeError; }\n\
                caught";
    let r = run_ok(&b, js(code, Value::Null)).await;
    assert_eq!(r.error, None);
    assert_eq!(output_json(&r), json!(true));
}

#[tokio::test]
async fn host_access_probes_all_fail() {
    let b = backend(1);
    for module in ["fs", "std", "os"] {
        let code = format!("import * as m from \"{module}\";\nexport default () => Object.keys(m)");
        let r = run_ok(&b, js(&code, Value::Null)).await;
        let error = r
            .error
            .unwrap_or_else(|| panic!("import {module} succeeded"));
        assert!(
            error.contains(&format!("import of \"{module}\" is not allowed")),
            "{error}"
        );
        assert!(r.output.is_empty());
    }
    for (code, needle) in [
        ("require(\"fs\")", "require"),
        ("fetch(\"http://x\")", "fetch"),
        ("process.env", "process"),
        ("std.open('/etc/passwd', 'r')", "std"),
        ("os.exec(['ls'])", "os"),
    ] {
        let r = run_ok(&b, js(code, Value::Null)).await;
        let error = r.error.unwrap_or_else(|| panic!("{code} succeeded"));
        assert!(
            error.contains("ReferenceError") && error.contains(needle),
            "{code}: {error}"
        );
    }
    let r = run_ok(
        &b,
        js(
            "[typeof process, typeof require, typeof fetch]",
            Value::Null,
        ),
    )
    .await;
    assert_eq!(
        output_json(&r),
        json!(["undefined", "undefined", "undefined"])
    );

    let r = run_ok(
        &b,
        js(
            "export default async () => (await import('fs')).readFileSync",
            Value::Null,
        ),
    )
    .await;
    let error = r.error.expect("dynamic import fails");
    assert!(error.contains("import of \"fs\" is not allowed"), "{error}");
}

#[tokio::test]
async fn node_archives_are_an_invalid_payload() {
    let b = backend(1);
    let r = run(
        &b,
        spec(
            Runtime::Node,
            Payload::Archive(vec![1, 2, 3]),
            Value::Null,
            64,
        ),
        Duration::from_secs(5),
    )
    .await;
    assert!(matches!(r, Err(BackendError::InvalidPayload(_))), "{r:?}");
}

/// Run `spec` until its first log line arrives, then kill it: proves lines are
/// forwarded while the workload runs, not when it ends.
async fn first_line_then_kill(b: &IsolateBackend, spec: WorkloadSpec) -> String {
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let tx = Mutex::new(Some(tx));
    let sink = LogSink::new(move |line| {
        if let Some(tx) = tx.lock().expect("lock").take() {
            let _ = tx.send(line);
        }
    });
    let ctx = ExecContext::new(sink, Duration::from_secs(30));
    let token = ctx.cancel.clone();
    let running = b.execute(spec, ctx);
    let watcher = async {
        let line = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("a line while running")
            .expect("sender alive");
        token.cancel();
        line
    };
    let (r, line) = tokio::join!(running, watcher);
    assert_eq!(r, Err(BackendError::Cancelled));
    line
}

#[tokio::test]
async fn console_lines_are_forwarded_while_the_code_runs() {
    let b = backend(1);
    let line = first_line_then_kill(
        &b,
        js("console.log('started');\nwhile (true) {}", Value::Null),
    )
    .await;
    assert_eq!(line, "started");
}

// ---------------------------------------------------------------- Wasm

#[tokio::test]
async fn wasm_lines_are_forwarded_while_the_module_runs() {
    let b = backend(1);
    let code = r#"
    (module
      (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 16) "working\n")
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 16))
        (i32.store (i32.const 4) (i32.const 8))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (loop $l (br $l))))
    "#;
    let line = first_line_then_kill(&b, wat(code, Value::Null)).await;
    assert_eq!(line, "working");
}

/// Reads stdin into memory, writes it to stdout unchanged and one line to stderr.
const ECHO_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "log line on stderr\n")
  (func (export "_start")
    (local $n i32)
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 4096))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (local.set $n (i32.load (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 19))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (local.get $n))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

#[tokio::test]
async fn wasi_module_echoes_stdin_to_stdout_and_logs_stderr() {
    let b = backend(1);
    let (sink, lines) = recording_sink();
    let r = b
        .execute(
            wat(ECHO_WAT, json!({"hello": "wasm"})),
            ExecContext::new(sink, Duration::from_secs(10)),
        )
        .await
        .expect("runs");
    assert_eq!(r.error, None);
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(output_json(&r), json!({"hello": "wasm"}));
    let lines = lines.lock().expect("lock").clone();
    assert_eq!(lines, vec!["log line on stderr", r#"{"hello":"wasm"}"#]);
}

/// The binary encoding of a WASI command whose `_start` calls `proc_exit(5)`.
fn exit5_wasm() -> Vec<u8> {
    let mut m = vec![0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    // types: (i32) -> (), () -> ()
    m.extend([0x01, 0x08, 0x02, 0x60, 0x01, 0x7f, 0x00, 0x60, 0x00, 0x00]);
    // import wasi_snapshot_preview1.proc_exit as func 0
    m.extend([0x02, 0x24, 0x01, 0x16]);
    m.extend(b"wasi_snapshot_preview1");
    m.push(0x09);
    m.extend(b"proc_exit");
    m.extend([0x00, 0x00]);
    // one function of type 1; one memory of one page
    m.extend([0x03, 0x02, 0x01, 0x01, 0x05, 0x03, 0x01, 0x00, 0x01]);
    // exports: memory, _start
    m.extend([0x07, 0x13, 0x02, 0x06]);
    m.extend(b"memory");
    m.extend([0x02, 0x00, 0x06]);
    m.extend(b"_start");
    m.extend([0x00, 0x01]);
    // body: i32.const 5; call 0; end
    m.extend([0x0a, 0x08, 0x01, 0x06, 0x00, 0x41, 0x05, 0x10, 0x00, 0x0b]);
    m
}

#[tokio::test]
async fn binary_modules_run_from_archives_and_are_cached() {
    let b = backend(1);
    for _ in 0..3 {
        let r = run_ok(
            &b,
            spec(
                Runtime::Wasm,
                Payload::Archive(exit5_wasm()),
                Value::Null,
                16,
            ),
        )
        .await;
        assert_eq!(r.exit_code, Some(5), "{:?}", r.error);
    }
}

#[tokio::test]
async fn proc_exit_code_becomes_the_exit_code() {
    let b = backend(1);
    let code = r#"
    (module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start") (call $exit (i32.const 3))))
    "#;
    let r = run_ok(&b, wat(code, Value::Null)).await;
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.error.as_deref(), Some("exited with code 3"));
}

#[tokio::test]
async fn a_wasm_infinite_loop_times_out() {
    let b = backend(1);
    let code =
        r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#;
    let start = Instant::now();
    let r = run(&b, wat(code, Value::Null), Duration::from_secs(1)).await;
    assert_eq!(r, Err(BackendError::Cancelled));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_killed_wasm_loop_frees_its_worker() {
    let b = backend(1);
    let code =
        r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#;
    let ctx = ExecContext::new(LogSink::discard(), Duration::from_secs(60));
    let token = ctx.cancel.clone();
    let running = b.execute(wat(code, Value::Null), ctx);
    let killer = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        token.cancel();
    };
    let (r, ()) = tokio::join!(running, killer);
    assert_eq!(r, Err(BackendError::Cancelled));
    let r = run_ok(&b, wat(ECHO_WAT, json!(1))).await;
    assert_eq!(output_json(&r), json!(1));
}

/// Sleeps `ns` nanoseconds through `poll_oneoff`, then exits with
/// `errno * 100 + (userdata came back) * 10 + nevents` (11 on success).
fn sleep_wat(ns: u64) -> String {
    format!(
        r#"
    (module
      (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (local $errno i32)
        (i64.store (i32.const 0) (i64.const 42))
        (i32.store8 (i32.const 8) (i32.const 0))
        (i32.store (i32.const 16) (i32.const 1))
        (i64.store (i32.const 24) (i64.const {ns}))
        (i32.store16 (i32.const 40) (i32.const 0))
        (local.set $errno (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
        (call $exit
          (i32.add
            (i32.mul (local.get $errno) (i32.const 100))
            (i32.add
              (i32.mul (i64.eq (i64.load (i32.const 64)) (i64.const 42)) (i32.const 10))
              (i32.load (i32.const 128)))))))
    "#
    )
}

#[tokio::test]
async fn wasm_sleep_works_and_a_long_sleep_can_be_killed() {
    let b = backend(1);
    let start = Instant::now();
    let r = run_ok(&b, wat(&sleep_wat(30_000_000), Value::Null)).await;
    assert_eq!(r.exit_code, Some(11), "{:?}", r.error);
    assert!(start.elapsed() >= Duration::from_millis(30));

    // An hour-long sleep: the kill must still be noticed promptly.
    cancel_after_200_ms_ends_it_within_a_second(
        &b,
        wat(&sleep_wat(3_600_000_000_000), Value::Null),
    )
    .await;
    let r = run_ok(&b, wat(ECHO_WAT, json!(2))).await;
    assert_eq!(output_json(&r), json!(2));
}

#[tokio::test]
async fn memory_grow_past_the_cap_returns_minus_one() {
    let b = backend(1);
    // 16 MiB = 256 pages: growing by 1 works, growing by 1000 more must give -1.
    let code = r#"
    (module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (if (i32.ne (memory.grow (i32.const 1)) (i32.const 1)) (then (call $exit (i32.const 9))))
        (if (i32.eq (memory.grow (i32.const 1000)) (i32.const -1)) (then (call $exit (i32.const 7))))
        (call $exit (i32.const 0))))
    "#;
    let r = run_ok(&b, wat(code, Value::Null)).await;
    assert_eq!(r.exit_code, Some(7));
}

#[tokio::test]
async fn a_module_needing_more_memory_than_the_cap_fails_cleanly() {
    let b = backend(1);
    let code = r#"(module (memory (export "memory") 1000) (func (export "_start")))"#;
    let r = run_ok(&b, wat(code, Value::Null)).await;
    assert_eq!(r.exit_code, Some(1));
    assert!(r.error.is_some());
}

#[tokio::test]
async fn invalid_or_foreign_modules_are_invalid_payloads() {
    let b = backend(1);
    let r = run(
        &b,
        wat("(module (func", Value::Null),
        Duration::from_secs(5),
    )
    .await;
    assert!(matches!(r, Err(BackendError::InvalidPayload(_))), "{r:?}");

    let code = r#"(module (import "env" "host" (func)) (func (export "_start")))"#;
    let r = run(&b, wat(code, Value::Null), Duration::from_secs(5)).await;
    assert!(matches!(r, Err(BackendError::InvalidPayload(_))), "{r:?}");

    let code = r#"(module (memory (export "memory") 1))"#;
    let r = run_ok(&b, wat(code, Value::Null)).await;
    assert!(r.error.expect("error").contains("_start"));
}

#[tokio::test]
async fn a_wasm_trap_is_a_failed_result() {
    let b = backend(1);
    let code = r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#;
    let r = run_ok(&b, wat(code, Value::Null)).await;
    assert_eq!(r.exit_code, Some(1));
    assert!(r.error.expect("error").contains("unreachable"));
}

// ---------------------------------------------------------------- contract & bench

#[tokio::test]
async fn capabilities_and_health() {
    let b = backend(3);
    let caps = b.capabilities();
    assert_eq!(caps.name, "isolate");
    assert_eq!(caps.supported_runtimes, vec![Runtime::Node, Runtime::Wasm]);
    assert_eq!(caps.supported_isolations, vec![Isolation::Isolate]);
    assert_eq!(caps.max_concurrency, 3);
    assert_eq!(b.health(), BackendHealth::Healthy);
    assert!(backend(0).capabilities().max_concurrency >= 1);
}

#[tokio::test]
async fn an_output_above_the_cap_fails_the_workload() {
    let b = backend(1);
    let mut s = js("export default () => 'x'.repeat(2000)", Value::Null);
    s.max_output_bytes = 2002;
    let r = run_ok(&b, s).await;
    assert_eq!(r.error, None);
    assert_eq!(r.output.len(), 2002, "a result of exactly the cap is fine");
    let mut s = js("export default () => 'x'.repeat(2001)", Value::Null);
    s.max_output_bytes = 2002;
    let r = run_ok(&b, s).await;
    assert_eq!(r.error.as_deref(), Some("output exceeds 2002 bytes"));
    assert!(r.output.is_empty());
    let mut s = wat(
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (func (export "_start")
               (i32.store (i32.const 0) (i32.const 64))
               (i32.store (i32.const 4) (i32.const 600))
               (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
               (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        Value::Null,
    );
    s.max_output_bytes = 1000;
    let r = run_ok(&b, s).await;
    assert_eq!(r.error.as_deref(), Some("output exceeds 1000 bytes"));
    assert!(r.output.is_empty());
}

#[tokio::test]
async fn a_native_call_that_ignores_the_interrupt_costs_its_worker() {
    let b = backend(1);
    let code = "const hay = 'a'.repeat(4000000); hay.indexOf('a'.repeat(200000) + 'b')";
    let start = Instant::now();
    let r = run(&b, js(code, Value::Null), Duration::from_millis(300)).await;
    assert_eq!(r, Err(BackendError::Cancelled));
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    let details = b.process_report();
    assert_eq!(details.worker_restarts, 1, "{details:?}");
    assert!(
        details.workers[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("did not stop")),
        "{details:?}"
    );
    let r = run_ok(&b, js("'replaced'", Value::Null)).await;
    assert_eq!(output_json(&r), json!("replaced"));
}

/// A kill of a job that waits (a JavaScript timer, a WASI sleep) is seen by the worker
/// itself while its job thread is not reading the socket: the job stops, the same
/// worker answers the next job and none is replaced (a missed cancel would cost the
/// worker its life after `cancel_grace_ms`).
#[tokio::test]
async fn a_kill_reaches_a_job_waiting_in_the_worker_without_a_restart() {
    let b = backend(1);
    let waiting = [
        js(
            "export default () => new Promise((r) => setTimeout(r, 3600000))",
            Value::Null,
        ),
        wat(&sleep_wat(3_600_000_000_000), Value::Null),
    ];
    for spec in waiting {
        cancel_after_200_ms_ends_it_within_a_second(&b, spec).await;
        let r = run_ok(&b, js("export default (i) => i + 1", json!(1))).await;
        assert_eq!(output_json(&r), json!(2));
    }
    assert_eq!(b.process_report().worker_restarts, 0);
}
