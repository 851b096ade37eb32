//! The hostile-workload corpus, over HTTP against the real app with the real isolate
//! backend (two worker processes, so a wedged worker shows at once).
//!
//! Every case asserts the same things: the workload ends failed with a clear error
//! within its deadline plus the kill grace (plus slack for a loaded machine); the server
//! answers `/healthz`; the next trivial workload completes promptly; the server's
//! resident memory stays within a bound of where it started.

mod common;

use std::time::{Duration, Instant};

use common::TestApp;
use serde_json::{json, Value};

/// Timeout given to looping cases (seconds).
const TIMEOUT_S: u64 = 1;
/// How long a workload may take beyond its deadline: the kill grace (500 ms here) plus
/// generous slack for a loaded 2-core CI machine. A liveness bound, not a timing claim.
const LATE: Duration = Duration::from_secs(8);
/// How long the next trivial workload may take (liveness bound).
const PROMPT: Duration = Duration::from_secs(5);
/// How far the server's resident memory may grow over a whole table of cases.
const RSS_BOUND_KB: u64 = 512 * 1024;

async fn hostile_app() -> TestApp {
    common::app()
        .builtin()
        .env("VULCAN_BACKENDS__ISOLATE__MAX_CONCURRENCY", "2")
        .env("VULCAN_BACKENDS__ISOLATE__CANCEL_GRACE_MS", "500")
        .env("VULCAN_BACKENDS__GVISOR__ENABLED", "false")
        .env("VULCAN_BACKENDS__MICROVM__ENABLED", "false")
        .env("VULCAN_LOGS__MAX_LINES", "2000")
        .spawn()
        .await
}

/// One hostile workload and the words its error must contain.
struct Case {
    name: String,
    body: Value,
    error: &'static str,
}

fn js(name: &str, code: &str, error: &'static str) -> Case {
    Case {
        name: name.into(),
        body: json!({"runtime": "node", "code": code, "resources": {"timeout_s": TIMEOUT_S}}),
        error,
    }
}

/// A JavaScript case with 32 MiB and ten seconds: bombs that must hit a limit other
/// than the deadline.
fn js_mem(name: &str, code: &str, error: &'static str) -> Case {
    let mut c = js(name, code, error);
    c.body["resources"] = json!({"timeout_s": 10, "mem_mb": 32});
    c
}

fn wat(name: &str, code: &str, error: &'static str) -> Case {
    Case {
        name: name.into(),
        body: json!({"runtime": "wasm", "code": code,
                     "resources": {"timeout_s": TIMEOUT_S, "mem_mb": 16}}),
        error,
    }
}

/// The same case with ten seconds: it must end on its own limit, not the deadline, even
/// on a slow machine.
fn slow(mut case: Case) -> Case {
    case.body["resources"]["timeout_s"] = json!(10);
    case
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn trivial_runs_promptly(app: &TestApp, after: &str) {
    let started = Instant::now();
    let res = app
        .post(
            "/v1/workloads",
            &json!({"runtime": "node", "code": "export default (i) => i.n + 1", "input": {"n": 41}}),
        )
        .await;
    let w: Value = res.json().await.expect("json");
    assert_eq!(w["status"], "completed", "after {after}: {w}");
    assert_eq!(w["output"], 42, "after {after}: {w}");
    assert!(
        started.elapsed() < PROMPT,
        "after {after}: the next trivial workload took {:?}",
        started.elapsed()
    );
}

/// Run every case: each fails clearly in time, the server stays fine and the next
/// workload runs at once; memory stays bounded over the table.
async fn run_table(app: &TestApp, cases: Vec<Case>) {
    let rss_before = rss_kb();
    for case in cases {
        let timeout = case.body["resources"]["timeout_s"].as_u64().unwrap_or(30);
        let started = Instant::now();
        let res = app.post("/v1/workloads", &case.body).await;
        let status = res.status().as_u16();
        let w: Value = res.json().await.expect("json");
        let took = started.elapsed();
        assert_eq!(status, 200, "{}: {w}", case.name);
        assert_eq!(w["status"], "failed", "{}: {w}", case.name);
        let error = w["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "{}: no error text: {w}", case.name);
        assert!(
            error.contains(case.error),
            "{}: error {error:?} lacks {:?}",
            case.name,
            case.error
        );
        assert!(
            took < Duration::from_secs(timeout) + LATE,
            "{}: took {took:?}",
            case.name
        );
        assert_eq!(app.get_json("/healthz", 200).await["status"], "ok");
        trivial_runs_promptly(app, &case.name).await;
    }
    let grown = rss_kb().saturating_sub(rss_before);
    assert!(grown < RSS_BOUND_KB, "server RSS grew by {grown} kB");
}

fn isolate_entry(backends: &Value) -> Value {
    backends
        .as_array()
        .expect("array")
        .iter()
        .find(|b| b["name"] == "isolate")
        .expect("isolate listed")
        .clone()
}

#[tokio::test]
async fn infinite_loops_time_out_in_every_form() {
    let app = hostile_app().await;
    let timed_out = "timed out after 1s";
    run_table(
        &app,
        vec![
            js("sync loop", "while (true) {}", timed_out),
            js(
                "async loop",
                "export default async () => { while (true) {} }",
                timed_out,
            ),
            js(
                "loop in a promise job",
                "Promise.resolve().then(() => { while (true) {} }); 1",
                timed_out,
            ),
            js(
                "loop in a timer",
                "setTimeout(() => { while (true) {} }, 0); 1",
                timed_out,
            ),
            js(
                "catch cannot swallow the interrupt",
                "for (;;) { try { while (true) {} } catch (e) {} }",
                timed_out,
            ),
            wat(
                "wasm loop",
                r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#,
                timed_out,
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn native_calls_that_ignore_the_interrupt_are_killed_and_replaced() {
    let app = hostile_app().await;
    let timed_out = "timed out after 1s";
    run_table(
        &app,
        vec![
            // QuickJS's naive substring search: billions of steps in one native call.
            js(
                "naive string search",
                "const hay = 'a'.repeat(4000000); hay.indexOf('a'.repeat(200000) + 'b')",
                timed_out,
            ),
            js(
                "catastrophic regex backtracking",
                "/^(a+)+$/.test('a'.repeat(40) + 'b')",
                timed_out,
            ),
        ],
    )
    .await;
    let isolate = isolate_entry(&app.get_json("/v1/backends", 200).await);
    assert_eq!(isolate["status"], "healthy", "{isolate}");
}

#[tokio::test]
async fn recursion_and_allocation_bombs_fail_with_their_reason() {
    let app = hostile_app().await;
    run_table(
        &app,
        vec![
            js(
                "deep recursion",
                "function f(n) { return f(n + 1) + 1; } f(0)",
                "RangeError",
            ),
            js_mem(
                "string doubling",
                "let s = 'x'; while (true) s += s;",
                "string too long",
            ),
            js_mem(
                "array of arrays",
                "const a = []; while (true) a.push(new Array(100000).fill(1.5));",
                "out of memory",
            ),
            js_mem(
                "typed arrays",
                "const a = []; while (true) a.push(new Uint8Array(8 * 1024 * 1024));",
                "out of memory",
            ),
            js_mem(
                "one huge typed array",
                "new Float64Array(1024 * 1024 * 1024)",
                "",
            ),
            wat(
                "wasm memory above the budget",
                r#"(module (memory (export "memory") 1000) (func (export "_start")))"#,
                "memory",
            ),
            wat(
                "wasm grows until refused",
                r#"(module (memory (export "memory") 1)
                     (func (export "_start")
                       (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
                       unreachable))"#,
                "unreachable",
            ),
            wat(
                "wasm table above the budget",
                r#"(module (memory (export "memory") 1) (table 10000000 funcref) (func (export "_start")))"#,
                "table",
            ),
            wat(
                "wasm table grows until refused",
                r#"(module (memory (export "memory") 1) (table $t 1 funcref)
                     (func (export "_start")
                       (loop $l (br_if $l (i32.ne (table.grow $t (ref.null func) (i32.const 100000)) (i32.const -1))))
                       unreachable))"#,
                "unreachable",
            ),
            wat(
                "many memories",
                r#"(module (memory 1) (memory 1) (memory 1) (func (export "_start")))"#,
                "invalid wasm module",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn promise_and_timer_storms_are_bounded() {
    let app = hostile_app().await;
    run_table(
        &app,
        vec![
            js(
                "endless promise chain",
                "export default async () => { for (;;) await Promise.resolve(); }",
                "timed out after 1s",
            ),
            js_mem(
                "promise flood",
                "for (;;) Promise.resolve().then(() => 0);",
                "out of memory",
            ),
            // Given time and memory to reach the cap of pending timers on a slow machine.
            Case {
                name: "timer flood".into(),
                body: json!({"runtime": "node",
                             "code": "for (let i = 0; i < 10000000; i++) setTimeout(() => {}, 1e9);",
                             "resources": {"timeout_s": 20, "mem_mb": 256}}),
                error: "too many pending timers",
            },
            js(
                "timers rescheduling forever",
                "const tick = () => setTimeout(tick, 0); tick(); 1",
                "timed out after 1s",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn output_bombs_and_log_floods_are_capped() {
    let app = hostile_app().await;
    run_table(
        &app,
        vec![
            slow(js(
                "8 MB string result",
                "export default () => 'x'.repeat(8 * 1024 * 1024)",
                "output exceeds 4194304 bytes",
            )),
            slow(wat(
                "wasm stdout flood",
                r#"(module
                     (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
                     (memory (export "memory") 2)
                     (func (export "_start")
                       (i32.store (i32.const 0) (i32.const 1024))
                       (i32.store (i32.const 4) (i32.const 65536))
                       (loop $l (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) (br $l))))"#,
                "output exceeds 4194304 bytes",
            )),
            js(
                "one giant log line",
                "console.log('y'.repeat(3 * 1024 * 1024)); while (true) {}",
                "timed out after 1s",
            ),
            js(
                "console flood",
                "for (;;) console.log('flood '.repeat(100));",
                "timed out after 1s",
            ),
        ],
    )
    .await;
    // The flood's log was cut at the source: at most max_lines lines plus the marker.
    let list = app
        .get_json("/v1/workloads?runtime=node&status=failed&limit=100", 200)
        .await;
    let flood = list["workloads"]
        .as_array()
        .expect("list")
        .iter()
        .find(|w| w["error"] == "timed out after 1s")
        .expect("a flood workload")
        .clone();
    let mut after = None;
    let mut lines = Vec::new();
    loop {
        let path = match after {
            Some(a) => format!(
                "/v1/workloads/{}/logs/history?limit=10000&after={a}",
                flood["id"].as_str().expect("id")
            ),
            None => format!(
                "/v1/workloads/{}/logs/history?limit=10000",
                flood["id"].as_str().expect("id")
            ),
        };
        let page = app.get_json(&path, 200).await;
        let got = page["lines"].as_array().expect("lines").clone();
        lines.extend(got);
        match page["next_after"].as_u64() {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    // The newest timed-out node workload is the flood: exactly max_lines lines and the
    // broker's marker were kept (the worker stopped sending after that).
    assert_eq!(lines.len(), 2001, "{} lines kept", lines.len());
    let last = lines.last().expect("lines")["line"].as_str().expect("line");
    assert!(last.contains("log truncated"), "{last}");
    let longest = lines
        .iter()
        .map(|l| l["line"].as_str().expect("line").len())
        .max()
        .unwrap_or(0);
    assert!(
        longest <= 16 * 1024 + 64,
        "a line of {longest} bytes was kept"
    );
}

/// Every WASI preview 1 function (but `proc_exit`) with its core signature.
const WASI: &[(&str, &str)] = &[
    ("args_get", "i32 i32"),
    ("args_sizes_get", "i32 i32"),
    ("environ_get", "i32 i32"),
    ("environ_sizes_get", "i32 i32"),
    ("clock_res_get", "i32 i32"),
    ("clock_time_get", "i32 i64 i32"),
    ("fd_advise", "i32 i64 i64 i32"),
    ("fd_allocate", "i32 i64 i64"),
    ("fd_close", "i32"),
    ("fd_datasync", "i32"),
    ("fd_fdstat_get", "i32 i32"),
    ("fd_fdstat_set_flags", "i32 i32"),
    ("fd_fdstat_set_rights", "i32 i64 i64"),
    ("fd_filestat_get", "i32 i32"),
    ("fd_filestat_set_size", "i32 i64"),
    ("fd_filestat_set_times", "i32 i64 i64 i32"),
    ("fd_pread", "i32 i32 i32 i64 i32"),
    ("fd_prestat_get", "i32 i32"),
    ("fd_prestat_dir_name", "i32 i32 i32"),
    ("fd_pwrite", "i32 i32 i32 i64 i32"),
    ("fd_read", "i32 i32 i32 i32"),
    ("fd_readdir", "i32 i32 i32 i64 i32"),
    ("fd_renumber", "i32 i32"),
    ("fd_seek", "i32 i64 i32 i32"),
    ("fd_sync", "i32"),
    ("fd_tell", "i32 i32"),
    ("fd_write", "i32 i32 i32 i32"),
    ("path_create_directory", "i32 i32 i32"),
    ("path_filestat_get", "i32 i32 i32 i32 i32"),
    ("path_filestat_set_times", "i32 i32 i32 i32 i64 i64 i32"),
    ("path_link", "i32 i32 i32 i32 i32 i32 i32"),
    ("path_open", "i32 i32 i32 i32 i32 i64 i64 i32 i32"),
    ("path_readlink", "i32 i32 i32 i32 i32 i32"),
    ("path_remove_directory", "i32 i32 i32"),
    ("path_rename", "i32 i32 i32 i32 i32 i32"),
    ("path_symlink", "i32 i32 i32 i32 i32"),
    ("path_unlink_file", "i32 i32 i32"),
    ("poll_oneoff", "i32 i32 i32 i32"),
    ("proc_raise", "i32"),
    ("sched_yield", ""),
    ("random_get", "i32 i32"),
    ("sock_accept", "i32 i32 i32"),
    ("sock_recv", "i32 i32 i32 i32 i32 i32"),
    ("sock_send", "i32 i32 i32 i32 i32"),
    ("sock_shutdown", "i32 i32"),
];

/// A command that calls `name` with every argument set to each of `values` in turn
/// (out-of-range, negative, huge), ignoring the errno, then exits with code 42.
fn wasi_abuse(name: &str, params: &str, values: &[i64]) -> String {
    let types: Vec<&str> = params.split_whitespace().collect();
    let mut calls = String::new();
    for v in values {
        let args: String = types
            .iter()
            .map(|t| {
                format!(
                    "({t}.const {})",
                    if *t == "i32" { (*v as i32) as i64 } else { *v }
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        calls.push_str(&format!("(drop (call $f {args}))\n"));
    }
    format!(
        r#"(module
             (import "wasi_snapshot_preview1" "{name}" (func $f (param {params}) (result i32)))
             (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
             (memory (export "memory") 1)
             (func (export "_start") {calls} (call $exit (i32.const 42))))"#
    )
}

#[tokio::test]
async fn every_wasi_function_survives_absurd_arguments() {
    let app = hostile_app().await;
    let values = [
        0x7fff_ffff,
        -1,
        i64::from(i32::MIN),
        65_536,
        65_530,
        i64::MAX,
    ];
    let mut cases = Vec::new();
    for (name, params) in WASI {
        let mut body = json!({"runtime": "wasm", "code": wasi_abuse(name, params, &values),
                              "resources": {"timeout_s": 10, "mem_mb": 16}});
        body["input"] = json!({"x": 1});
        cases.push(Case {
            name: format!("wasi {name}"),
            body,
            // Each call answers an errno (or traps); none may crash the worker.
            error: "",
        });
    }
    let rss_before = rss_kb();
    for case in cases {
        let w: Value = app
            .post("/v1/workloads", &case.body)
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(w["status"], "failed", "{}: {w}", case.name);
        let error = w["error"].as_str().unwrap_or_default();
        assert!(
            !error.contains("worker crashed") && !error.contains("invalid wasm module"),
            "{}: {error}",
            case.name
        );
        assert!(
            error == "exited with code 42"
                || error.contains("wasm trap")
                || error.contains("error while executing"),
            "{}: {error}",
            case.name
        );
    }
    trivial_runs_promptly(&app, "the WASI table").await;
    let grown = rss_kb().saturating_sub(rss_before);
    assert!(grown < RSS_BOUND_KB, "server RSS grew by {grown} kB");
    let isolate = isolate_entry(&app.get_json("/v1/backends", 200).await);
    assert_eq!(
        isolate["worker_restarts"], 0,
        "no worker may crash: {isolate}"
    );
}

/// A module of `functions` functions, each with a long body, whose `_start` loops.
fn huge_module(functions: usize) -> String {
    let mut wat = String::from(r#"(module (memory (export "memory") 1)"#);
    let body: String = (0..200)
        .map(|i| format!("(drop (i32.add (local.get 0) (i32.const {i})))"))
        .collect();
    for n in 0..functions {
        wat.push_str(&format!("(func $f{n} (param i32) {body})"));
    }
    wat.push_str(r#"(func (export "_start") (loop $l (br $l))))"#);
    wat
}

#[tokio::test]
async fn a_huge_module_is_stopped_at_its_deadline() {
    let app = hostile_app().await;
    let code = huge_module(1200);
    assert!(code.len() > 5 * 1024 * 1024, "{} bytes", code.len());
    run_table(&app, vec![wat("huge module", &code, "timed out after 1s")]).await;
}

#[tokio::test]
async fn more_hostile_workloads_than_slots_all_end_and_leave_free_workers() {
    let app = hostile_app().await;
    let bodies = [
        "while (true) {}",
        "const hay = 'a'.repeat(4000000); hay.indexOf('a'.repeat(200000) + 'b')",
        "for (;;) console.log('x');",
        "/^(a+)+$/.test('a'.repeat(40) + 'b')",
        "export default async () => { for (;;) await null; }",
        "setTimeout(() => { while (true) {} }, 0); 1",
    ];
    let mut ids = Vec::new();
    for code in bodies {
        let w = app
            .submit_async(&json!({"runtime": "node", "code": code, "resources": {"timeout_s": 1}}))
            .await;
        ids.push(w["id"].as_str().expect("id").to_string());
    }
    // Six workloads, two slots: three rounds of deadline + grace at most.
    for id in &ids {
        let w = app
            .wait_terminal(id, Duration::from_secs(3 * (TIMEOUT_S + 1)) + LATE * 2)
            .await;
        assert_eq!(w["status"], "failed", "{w}");
        assert_eq!(w["error"], "timed out after 1s", "{w}");
    }
    // Both workers are free: two trivial workloads at once run promptly.
    let started = Instant::now();
    futures_util::future::join_all((0..2).map(|_| trivial_runs_promptly(&app, "the batch"))).await;
    assert!(started.elapsed() < PROMPT);
}
