//! End to end through HTTP with the real `isolate` backend (QuickJS and wasmtime):
//! results, async exports, live logs over SSE, timeouts, kills that free their thread,
//! memory limits, absence of host access, WASI modules from WAT text and from archives,
//! and the log history.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::sse::SseStream;
use common::TestApp;
use serde_json::{json, Value};

const SOON: Duration = Duration::from_secs(10);

/// The real app with only the isolate backend (gvisor and microvm off: nothing here
/// needs them, and a gvisor backend would sweep its shared default state dir).
async fn isolate_app() -> TestApp {
    common::app()
        .builtin()
        .env("VULCAN_BACKENDS__ISOLATE__MAX_CONCURRENCY", "4")
        .env("VULCAN_BACKENDS__GVISOR__ENABLED", "false")
        .env("VULCAN_BACKENDS__MICROVM__ENABLED", "false")
        .spawn()
        .await
}

fn id(w: &Value) -> String {
    w["id"].as_str().expect("id").to_string()
}

fn node(code: &str) -> Value {
    json!({"runtime": "node", "code": code})
}

fn wat(code: &str) -> Value {
    json!({"runtime": "wasm", "code": code})
}

/// Synchronous submit; asserts 200 and returns the terminal workload.
async fn run(app: &TestApp, body: &Value) -> Value {
    let res = app.post("/v1/workloads", body).await;
    let status = res.status().as_u16();
    let w: Value = res.json().await.expect("json");
    assert_eq!(status, 200, "{w}");
    w
}

fn error_of(w: &Value) -> &str {
    w["error"]
        .as_str()
        .unwrap_or_else(|| panic!("an error: {w}"))
}

#[tokio::test]
async fn api_example_sums_its_input() {
    let app = isolate_app().await;
    let mut body = node("export default (input) => ({ sum: input.a + input.b });");
    body["input"] = json!({"a": 1, "b": 2});
    let w = run(&app, &body).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], json!({"sum": 3}));
    assert_eq!(w["isolation"], "isolate");
    assert_eq!(w["requested_isolation"], "auto");
    assert_eq!(w["backend"], "isolate");
    assert_eq!(w["runtime"], "node");
    assert_eq!(w["exit_code"], 0);
    assert_eq!(w["error"], Value::Null);
    assert!(w["duration_ms"].is_u64(), "{w}");
    let stored = app
        .get_json(&format!("/v1/workloads/{}", id(&w)), 200)
        .await;
    assert_eq!(stored["output"], json!({"sum": 3}));
    assert_eq!(stored["status"], "completed");
}

#[tokio::test]
async fn async_default_export_is_awaited() {
    let app = isolate_app().await;
    let mut body = node(
        "export default async (input) => {\n\
           await new Promise((resolve) => setTimeout(resolve, 50));\n\
           const doubled = await Promise.resolve(input.n * 2);\n\
           return { doubled, kind: typeof input };\n\
         };",
    );
    body["input"] = json!({"n": 21});
    let w = run(&app, &body).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], json!({"doubled": 42, "kind": "object"}));
    assert!(w["duration_ms"].as_u64().expect("duration") >= 50, "{w}");
}

#[tokio::test]
async fn console_lines_arrive_live_over_sse() {
    let app = isolate_app().await;
    let w = app
        .submit_async(&node(
            "export default async () => {\n\
               console.log(\"first\");\n\
               await new Promise((resolve) => setTimeout(resolve, 1000));\n\
               console.log(\"second\");\n\
               return 2;\n\
             };",
        ))
        .await;
    let wid = id(&w);
    let mut sse = SseStream::open(&app, &wid).await;
    let first = sse.next_event(SOON).await.expect("first event");
    assert_eq!(first.data, "first");
    assert_eq!(first.id.as_deref(), Some("0"));
    assert_eq!(first.event, None);
    // The line came while the workload was still busy with its timer.
    let now = app.get_json(&format!("/v1/workloads/{wid}"), 200).await;
    assert_eq!(now["status"], "running", "{now}");
    let (rest, done) = sse.until_done(SOON).await;
    assert_eq!(done, "completed");
    let rest: Vec<(Option<String>, String)> = rest.into_iter().map(|e| (e.id, e.data)).collect();
    assert_eq!(rest, vec![(Some("1".to_string()), "second".to_string())]);
    let end = app.get_json(&format!("/v1/workloads/{wid}"), 200).await;
    assert_eq!(end["output"], 2);
}

#[tokio::test]
async fn an_infinite_loop_times_out() {
    let app = isolate_app().await;
    let mut body = node("while (true) {}");
    body["resources"] = json!({"timeout_s": 1});
    let started = Instant::now();
    let w = run(&app, &body).await;
    let took = started.elapsed();
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(w["error"], "timed out after 1s");
    assert_eq!(w["output"], Value::Null);
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test]
async fn killing_infinite_loops_frees_their_threads_at_once() {
    let app = isolate_app().await;
    let mut body = node("while (true) {}");
    body["resources"] = json!({"timeout_s": 600});
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(id(&app.submit_async(&body).await));
    }
    for wid in &ids {
        app.wait_status(wid, "running", SOON).await;
    }
    for wid in &ids {
        let res = app.delete(&format!("/v1/workloads/{wid}")).await;
        assert_eq!(res.status(), 200);
        let killed: Value = res.json().await.expect("json");
        assert_eq!(killed["status"], "killed", "{killed}");
    }
    // All four worker threads are free again: four trivial workloads (one per
    // worker) run right away. A thread still spinning would leave one of them queued.
    let started = Instant::now();
    let trivial = node("export default () => 'free'");
    let runs = futures_util::future::join_all((0..4).map(|_| run(&app, &trivial))).await;
    for w in &runs {
        assert_eq!(w["status"], "completed", "{w}");
        assert_eq!(w["output"], "free");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // And the backend's count drops to zero (its bookkeeping follows each answer).
    let t = Instant::now();
    loop {
        let backends = app.get_json("/v1/backends", 200).await;
        let isolate = backends
            .as_array()
            .expect("array")
            .iter()
            .find(|b| b["name"] == "isolate")
            .expect("isolate listed")
            .clone();
        if isolate["running"] == 0 && isolate["queued"] == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{isolate}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for wid in &ids {
        let w = app.get_json(&format!("/v1/workloads/{wid}"), 200).await;
        assert_eq!(w["status"], "killed");
    }
}

#[tokio::test]
async fn a_memory_bomb_fails_and_the_server_carries_on() {
    let app = isolate_app().await;
    let mut body = node(
        "const chunks = [];\n\
         for (let i = 0; i < 32; i++) chunks.push(new Uint8Array(1024 * 1024).fill(1));\n\
         chunks.length",
    );
    body["resources"] = json!({"mem_mb": 16});
    let w = run(&app, &body).await;
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(w["mem_limit"], 16);
    assert!(error_of(&w).contains("out of memory"), "{w}");
    assert_eq!(w["output"], Value::Null);

    let health = app.get_json("/healthz", 200).await;
    assert_eq!(health["status"], "ok");
    let w = run(&app, &node("export default () => [1, 2, 3].length")).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], 3);
}

#[tokio::test]
async fn every_host_access_probe_fails() {
    let app = isolate_app().await;
    for module in ["fs", "std", "os"] {
        let code = format!("import * as m from \"{module}\";\nexport default () => Object.keys(m)");
        let w = run(&app, &node(&code)).await;
        assert_eq!(w["status"], "failed", "import {module}: {w}");
        assert!(
            error_of(&w).contains(&format!("import of \"{module}\" is not allowed")),
            "{w}"
        );
        assert_eq!(w["output"], Value::Null);
    }
    for code in [
        "require(\"fs\").readFileSync(\"/etc/passwd\", \"utf8\")",
        "process.env",
        "fetch(\"http://127.0.0.1/\")",
        "export default async () => (await import(\"fs\")).readFileSync(\"/etc/passwd\")",
    ] {
        let w = run(&app, &node(code)).await;
        assert_eq!(w["status"], "failed", "{code}: {w}");
        assert_eq!(w["output"], Value::Null, "{code}");
    }
    let w = run(
        &app,
        &node(
            "[typeof process, typeof require, typeof fetch, typeof std, typeof os, \
             typeof XMLHttpRequest, typeof WebSocket, typeof Deno, typeof Bun]",
        ),
    )
    .await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], json!(vec!["undefined"; 9]));
}

/// Reads up to 4 KiB of stdin and writes `{"echo":<stdin>}` to stdout and one line
/// to stderr.
const WRAP_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{\"echo\":")
  (data (i32.const 80) "}")
  (data (i32.const 96) "wrapping the input\n")
  (func (export "_start")
    (local $n i32)
    ;; read stdin into 1024.. (one iovec at 0)
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 4096))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (local.set $n (i32.load (i32.const 8)))
    ;; stderr: a log line
    (i32.store (i32.const 0) (i32.const 96))
    (i32.store (i32.const 4) (i32.const 19))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    ;; stdout: prefix, input, suffix (one write each: a write may take only its
    ;; first iovec)
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (local.get $n))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 80))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

#[tokio::test]
async fn a_wasi_module_from_wat_maps_stdin_json_to_stdout_json() {
    let app = isolate_app().await;
    let mut body = wat(WRAP_WAT);
    body["input"] = json!({"a": 1, "list": [true, null, "x"]});
    let w = run(&app, &body).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["isolation"], "isolate");
    assert_eq!(w["runtime"], "wasm");
    assert_eq!(w["exit_code"], 0);
    assert_eq!(
        w["output"],
        json!({"echo": {"a": 1, "list": [true, null, "x"]}})
    );
    let history = app
        .get_json(&format!("/v1/workloads/{}/logs/history", id(&w)), 200)
        .await;
    let lines: Vec<&str> = history["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["line"].as_str().expect("line"))
        .collect();
    assert!(lines.contains(&"wrapping the input"), "{history}");
}

#[tokio::test]
async fn a_wasm_infinite_loop_times_out() {
    let app = isolate_app().await;
    let mut body =
        wat(r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#);
    body["resources"] = json!({"timeout_s": 1});
    let started = Instant::now();
    let w = run(&app, &body).await;
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(w["error"], "timed out after 1s");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The worker is free again.
    let w = run(&app, &wat(WRAP_WAT)).await;
    assert_eq!(w["status"], "completed", "{w}");
}

#[tokio::test]
async fn wasm_memory_is_capped() {
    let app = isolate_app().await;
    // 16 MiB = 256 pages. Growing by one page works; by 1000 more must return -1,
    // which the module reports on stdout.
    let mut body = wat(r#"
        (module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 64) "{\"grow_failed\":true}")
          (func (export "_start")
            (if (i32.ne (memory.grow (i32.const 1)) (i32.const 1)) (then (call $exit (i32.const 9))))
            (if (i32.ne (memory.grow (i32.const 1000)) (i32.const -1)) (then (call $exit (i32.const 8))))
            (i32.store (i32.const 0) (i32.const 64))
            (i32.store (i32.const 4) (i32.const 20))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
        "#);
    body["resources"] = json!({"mem_mb": 16});
    let w = run(&app, &body).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], json!({"grow_failed": true}));

    // A module whose initial memory is above the cap fails cleanly.
    let mut body = wat(r#"(module (memory (export "memory") 1000) (func (export "_start")))"#);
    body["resources"] = json!({"mem_mb": 16});
    let w = run(&app, &body).await;
    assert_eq!(w["status"], "failed", "{w}");
    assert!(!error_of(&w).is_empty());
    assert_eq!(app.get_json("/healthz", 200).await["status"], "ok");
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
async fn wasm_runs_from_code_archive() {
    let app = isolate_app().await;
    let b64 = base64::engine::general_purpose::STANDARD;
    // A binary module.
    let w = run(
        &app,
        &json!({"runtime": "wasm", "code_archive": b64.encode(exit5_wasm())}),
    )
    .await;
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(w["exit_code"], 5);
    assert_eq!(w["error"], "exited with code 5");
    // WAT text bytes are accepted as well.
    let w = run(
        &app,
        &json!({
            "runtime": "wasm",
            "code_archive": b64.encode(WRAP_WAT),
            "input": [1, 2],
        }),
    )
    .await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], json!({"echo": [1, 2]}));
    // Bytes that are no module fail with a message, not a 5xx.
    let w = run(
        &app,
        &json!({"runtime": "wasm", "code_archive": b64.encode(b"\0asm garbage")}),
    )
    .await;
    assert_eq!(w["status"], "failed", "{w}");
    assert!(error_of(&w).contains("invalid wasm module"), "{w}");
}

#[tokio::test]
async fn log_history_has_the_console_lines_in_order() {
    let app = isolate_app().await;
    let w = run(
        &app,
        &node(
            "export default () => {\n\
               console.log(\"one\");\n\
               console.info(\"two\", 2);\n\
               console.warn({ three: 3 });\n\
               console.error(\"four\");\n\
               return \"done\";\n\
             };",
        ),
    )
    .await;
    assert_eq!(w["status"], "completed", "{w}");
    let wid = id(&w);
    let history = app
        .get_json(&format!("/v1/workloads/{wid}/logs/history"), 200)
        .await;
    assert_eq!(history["workload_id"], wid.as_str());
    let lines: Vec<(u64, String)> = history["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            assert!(l["created_at"].is_string(), "{l}");
            (
                l["seq"].as_u64().expect("seq"),
                l["line"].as_str().expect("line").to_string(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            (0, "one".to_string()),
            (1, "two 2".to_string()),
            (2, r#"{"three":3}"#.to_string()),
            (3, "four".to_string()),
        ]
    );
    // A late SSE subscriber gets the same lines replayed, then `done`.
    let mut sse = SseStream::open(&app, &wid).await;
    let (events, done) = sse.until_done(SOON).await;
    assert_eq!(done, "completed");
    let replayed: Vec<(u64, String)> = events
        .into_iter()
        .map(|e| (e.id.expect("id").parse().expect("seq"), e.data))
        .collect();
    assert_eq!(replayed, lines);
    // A workload without logs has an empty list, not null.
    let quiet = run(&app, &node("1")).await;
    let history = app
        .get_json(&format!("/v1/workloads/{}/logs/history", id(&quiet)), 200)
        .await;
    assert_eq!(history["lines"], json!([]));
}

#[tokio::test]
async fn a_1_6_gb_log_attempt_is_kept_to_the_byte_cap_with_its_marker() {
    let app = isolate_app().await;
    // 100,000 lines of 16 KiB: 1.6 GB printed; the default cap keeps 10 MiB.
    let started = Instant::now();
    let w = run(
        &app,
        &json!({
            "runtime": "node",
            "code": "const l = 'x'.repeat(16384); for (let i = 0; i < 100000; i++) console.log(l); 'done'",
            "resources": {"timeout_s": 600}
        }),
    )
    .await;
    eprintln!("1.6 GB log attempt ran in {:?}", started.elapsed());
    assert_eq!(w["status"], "completed", "{w}");
    let history = format!("/v1/workloads/{}/logs/history", id(&w));
    let mut bytes = 0usize;
    let mut count = 0usize;
    let mut last_line = String::new();
    let mut after: Option<u64> = None;
    loop {
        let q = match after {
            None => format!("{history}?limit=10000"),
            Some(a) => format!("{history}?limit=10000&after={a}"),
        };
        let page = app.get_json(&q, 200).await;
        for l in page["lines"].as_array().expect("lines") {
            let text = l["line"].as_str().expect("line");
            bytes += text.len();
            count += 1;
            last_line = text.to_string();
        }
        match page["next_after"].as_u64() {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let cap = 10 * 1024 * 1024;
    assert!(bytes <= cap + 200, "{bytes} bytes kept");
    assert!(bytes > cap - 16_384 - 200, "{bytes} bytes kept");
    assert_eq!(
        count,
        cap / 16_384 + 1,
        "the lines that fit, and the marker"
    );
    assert!(
        last_line.contains("log truncated") && last_line.contains("bytes were kept"),
        "{last_line}"
    );
    // The server is fine and the next workload runs at once.
    let next = run(&app, &node("console.log('next'); 1")).await;
    assert_eq!(next["status"], "completed", "{next}");
}
