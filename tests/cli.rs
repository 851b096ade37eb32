//! The `vulcan` CLI, run as the real binary against a real server booted by the test
//! harness: running files (node, wasm, python), `--json`, every exit status, following
//! logs live (and across a dropped connection), listing, killing, status, the
//! operator's commands, the token, and the runtime guessed from the extension.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::cli::{self, Output};
use common::scripted::{self, job, Observed, Options};
use common::TestApp;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Generous liveness bound for server-side waits.
const SOON: Duration = Duration::from_secs(30);

/// An app whose only backend is the scripted one (runtimes node, wasm, python, go).
async fn scripted_app() -> (TestApp, Arc<Observed>) {
    let (f, seen) = scripted::factory(Options::default());
    (common::app().backend(f).spawn().await, seen)
}

/// Write `content` to `dir/name` and return the path as a string.
fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> String {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, content).expect("write file");
    path.to_string_lossy().into_owned()
}

fn script(value: Value) -> String {
    value.to_string()
}

fn assert_code(out: &Output, code: i32) {
    assert_eq!(out.code, Some(code), "{out:#?}");
}

async fn total(app: &TestApp) -> u64 {
    app.get_json("/v1/stats", 200).await["total"]
        .as_u64()
        .expect("total")
}

/// The one workload the server knows about with `status` (waits for it).
async fn only_workload_with(app: &TestApp, status: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let page = app
            .get_json(&format!("/v1/workloads?status={status}"), 200)
            .await;
        if let Some(w) = page["workloads"].as_array().and_then(|a| a.first()) {
            return w["id"].as_str().expect("id").to_string();
        }
        assert!(start.elapsed() < SOON, "no {status} workload appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const ADD_JS: &str = "export default (input) => ({ sum: input.a + input.b });";

#[tokio::test]
async fn run_prints_a_node_files_output_and_exits_0() {
    let app = common::app().builtin().spawn().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = write(dir.path(), "add.js", ADD_JS);
    let out = cli::run(&app.address, &["run", &file, "--input", r#"{"a":1,"b":2}"#]).await;
    assert_code(&out, 0);
    assert_eq!(out.stdout.trim(), r#"{"sum":3}"#);
    // --input @file reads the JSON from a file.
    let input = write(dir.path(), "in.json", r#"{"a": 40, "b": 2}"#);
    let out = cli::run(
        &app.address,
        &["run", &file, "--input", &format!("@{input}")],
    )
    .await;
    assert_code(&out, 0);
    assert_eq!(out.stdout.trim(), r#"{"sum":42}"#);
}

#[tokio::test]
async fn run_a_wasm_module_prints_what_it_writes() {
    let app = common::app().builtin().spawn().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = write(
        dir.path(),
        "hello.wat",
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32))) (memory (export "memory") 1) (data (i32.const 8) "42") (func (export "_start") (i32.store (i32.const 0) (i32.const 8)) (i32.store (i32.const 4) (i32.const 2)) (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#,
    );
    let out = cli::run(&app.address, &["run", &file, "--json"]).await;
    assert_code(&out, 0);
    let w = out.json();
    assert_eq!(w["runtime"], "wasm");
    assert_eq!(w["status"], "completed");
    assert_eq!(w["output"], 42);
}

#[tokio::test]
async fn run_python_files_and_directories_under_gvisor() {
    let Some(py) =
        common::gvisor::python_app("run_python_files_and_directories_under_gvisor").await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let file = write(
        dir.path(),
        "double.py",
        "import json, sys\nd = json.load(sys.stdin)\nprint(json.dumps({'r': d['x'] * 2}))\n",
    );
    let out = cli::run(
        &py.app.address,
        &["run", &file, "--input", r#"{"x": 21}"#, "--timeout", "60"],
    )
    .await;
    assert_code(&out, 0);
    assert_eq!(out.stdout.trim(), r#"{"r":42}"#);

    // A directory goes as a tar.gz archive; its runtime comes from main.py.
    let app_dir = dir.path().join("app");
    std::fs::create_dir(&app_dir).expect("mkdir");
    write(&app_dir, "helper.py", "def triple(x):\n    return x * 3\n");
    write(
        &app_dir,
        "main.py",
        "import json, sys\nfrom helper import triple\nprint(json.dumps(triple(json.load(sys.stdin))))\n",
    );
    let out = cli::run(
        &py.app.address,
        &[
            "run",
            &app_dir.to_string_lossy(),
            "--input",
            "14",
            "--timeout",
            "60",
            "--json",
        ],
    )
    .await;
    assert_code(&out, 0);
    let w = out.json();
    assert_eq!(w["runtime"], "python");
    assert_eq!(w["isolation"], "gvisor");
    assert_eq!(w["output"], 42);
}

#[tokio::test]
async fn run_json_prints_the_servers_workload_object() {
    let app = common::app().builtin().spawn().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = write(dir.path(), "add.js", ADD_JS);
    let out = cli::run(
        &app.address,
        &[
            "run",
            &file,
            "--input",
            r#"{"a":1,"b":2}"#,
            "--json",
            "--cpus",
            "1",
            "--mem",
            "64",
            "--timeout",
            "5",
        ],
    )
    .await;
    assert_code(&out, 0);
    let w = out.json();
    let id = w["id"].as_str().expect("id");
    let server = app.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert_eq!(w, server, "the CLI prints the server's object as it is");
    for key in [
        "id",
        "status",
        "isolation",
        "requested_isolation",
        "backend",
        "runtime",
        "node_id",
        "input_hash",
        "output",
        "exit_code",
        "error",
        "cpu_limit",
        "mem_limit",
        "timeout_s",
        "duration_ms",
        "created_at",
        "started_at",
        "finished_at",
    ] {
        assert!(w.get(key).is_some(), "{key} missing from {w}");
    }
    assert_eq!(w["output"], json!({"sum": 3}));
    assert_eq!(
        (w["mem_limit"].as_u64(), w["timeout_s"].as_u64()),
        (Some(64), Some(5))
    );
}

#[tokio::test]
async fn exit_status_is_1_when_the_workload_fails() {
    let app = common::app().builtin().spawn().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = write(
        dir.path(),
        "boom.js",
        "export default () => { throw new Error('boom'); };",
    );
    let out = cli::run(&app.address, &["run", &file]).await;
    assert_code(&out, 1);
    assert!(
        out.stderr.contains("failed") && out.stderr.contains("boom"),
        "{out:#?}"
    );
    let out = cli::run(&app.address, &["run", &file, "--json"]).await;
    assert_code(&out, 1);
    assert_eq!(out.json()["status"], "failed");
}

#[tokio::test]
async fn exit_status_is_3_when_the_workload_is_killed() {
    let (app, seen) = scripted_app().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = write(dir.path(), "wait.js", script(json!({"delay_ms": 60000})));
    let child = cli::command(&app.address, &["run", &file])
        .spawn()
        .expect("spawn");
    let id = only_workload_with(&app, "running").await;
    app.delete(&format!("/v1/workloads/{id}")).await;
    let out = cli::finish(child).await;
    assert_code(&out, 3);
    assert!(out.stderr.contains("killed"), "{out:#?}");
    assert!(seen.saw_cancel(&id));
    // `status` reports the same outcome.
    assert_code(&cli::run(&app.address, &["status", &id]).await, 3);
}

#[tokio::test]
async fn usage_errors_exit_2_and_send_nothing() {
    let (app, _) = scripted_app().await;
    let dir = tempfile::tempdir().expect("dir");
    let js = write(dir.path(), "ok.js", script(json!({})));
    let txt = write(dir.path(), "notes.txt", "hello");
    let cases: Vec<Vec<&str>> = vec![
        vec!["run", "--bogus"],
        vec!["run"],
        vec!["frobnicate"],
        vec!["run", &txt],
        vec!["run", "-"],
        vec!["run", &js, "--runtime", "cobol"],
        vec!["run", &js, "--cpus", "0"],
        vec!["run", &js, "--input", "{not json"],
        vec!["run", &js, "--async", "--follow"],
        vec!["run", "/no/such/file.js"],
        vec!["status", "not-an-id"],
        vec!["ls", "--limit", "0"],
        vec!["ls", "--status", "sleeping"],
    ];
    for args in cases {
        let out = cli::run(&app.address, &args).await;
        assert_eq!(out.code, Some(2), "{args:?}: {out:#?}");
        assert!(!out.stderr.trim().is_empty(), "{args:?}: no message");
        assert!(out.stdout.is_empty(), "{args:?}: {out:#?}");
    }
    assert_eq!(total(&app).await, 0, "nothing reached the server");
    // A request the server refuses (an explicit isolation it has no backend for) is an
    // error too: exit 2 with the server's message.
    let out = cli::run(&app.address, &["run", &js, "--isolation", "gvisor"]).await;
    assert_code(&out, 2);
    assert!(out.stderr.contains("422"), "{out:#?}");
}

#[tokio::test]
async fn an_unreachable_server_exits_2() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("dir");
    let js = write(dir.path(), "ok.js", ADD_JS);
    for args in [
        vec!["run", js.as_str()],
        vec!["ls"],
        vec!["status", "01JKQX7V8MZRN3B4HTGFWDCS9E"],
        vec!["logs", "-f", "01JKQX7V8MZRN3B4HTGFWDCS9E"],
        vec!["backends"],
    ] {
        let out = cli::run(&server, &args).await;
        assert_eq!(out.code, Some(2), "{args:?}: {out:#?}");
        assert!(out.stderr.contains("cannot connect"), "{args:?}: {out:#?}");
    }
    // --server wins over VULCAN_SERVER.
    let app = common::app().builtin().spawn().await;
    let out = cli::run(&server, &["ls", "--server", &app.address]).await;
    assert_code(&out, 0);
}

#[tokio::test]
async fn logs_follow_prints_lines_while_the_workload_runs() {
    let (app, _) = scripted_app().await;
    let w = app
        .submit_async(&job(
            "node",
            json!({"logs": ["l0", "l1", "l2", "l3", "l4"], "log_interval_ms": 1000, "delay_ms": 200}),
        ))
        .await;
    let id = w["id"].as_str().expect("id");
    let mut child = cli::command(&app.address, &["logs", "-f", id])
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(SOON, stdout.next_line())
        .await
        .expect("a first line in time")
        .expect("read")
        .expect("a line");
    assert_eq!(first, "l0");
    let now = app.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert_eq!(
        now["status"], "running",
        "the first line arrived while the workload was still running"
    );
    let mut rest = Vec::new();
    while let Some(line) = tokio::time::timeout(SOON, stdout.next_line())
        .await
        .expect("lines in time")
        .expect("read")
    {
        rest.push(line);
    }
    assert_eq!(rest, ["l1", "l2", "l3", "l4"]);
    let status = tokio::time::timeout(SOON, child.wait())
        .await
        .expect("exit in time")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "completed");
}

#[tokio::test]
async fn logs_follow_resumes_after_a_dropped_connection_without_loss() {
    let (app, _) = scripted_app().await;
    let proxy = cli::cutting_proxy(&app.address).await;
    // Long enough (4 s) that the stream is cut while the workload still runs, however
    // late the CLI connects.
    let lines: Vec<String> = (0..8).map(|i| format!("line {i}")).collect();
    let w = app
        .submit_async(&job(
            "node",
            json!({"logs": lines, "log_interval_ms": 500, "error": "bad end", "exit_code": 1}),
        ))
        .await;
    let id = w["id"].as_str().expect("id");
    let out = cli::run(&proxy.address, &["logs", "-f", id]).await;
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1, "the stream was cut");
    assert!(
        proxy.resumptions.load(Ordering::SeqCst) >= 1,
        "the CLI resumed with Last-Event-ID"
    );
    let printed: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(printed, lines, "every line once, in order: {out:#?}");
    assert!(out.stderr.contains("resumed"), "{out:#?}");
    assert_code(&out, 1);
}

#[tokio::test]
async fn logs_prints_the_history_or_what_follows_a_sequence_number() {
    let (app, _) = scripted_app().await;
    let w = app
        .submit_async(&job("node", json!({"logs": ["a", "b", "c", "d"]})))
        .await;
    let id = w["id"].as_str().expect("id").to_string();
    app.wait_terminal(&id, SOON).await;
    let out = cli::run(&app.address, &["logs", &id]).await;
    assert_code(&out, 0);
    assert_eq!(out.stdout, "a\nb\nc\nd\n");
    let out = cli::run(&app.address, &["logs", &id, "--after", "1"]).await;
    assert_eq!(out.stdout, "c\nd\n");
    let out = cli::run(&app.address, &["logs", &id, "--after", "1", "--json"]).await;
    let objects: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(objects.len(), 2);
    assert_eq!(
        (objects[0]["seq"].as_u64(), &objects[0]["line"]),
        (Some(2), &json!("c"))
    );
    assert!(objects[1]["created_at"].is_string());
    // -f on a finished workload: replay, then the exit status of its outcome.
    let out = cli::run(&app.address, &["logs", "-f", &id, "--after", "2", "--json"]).await;
    assert_code(&out, 0);
    assert_eq!(
        out.stdout,
        "{\"line\":\"d\",\"seq\":3}\n{\"done\":\"completed\"}\n"
    );
    let out = cli::run(&app.address, &["logs", "01JKQX7V8MZRN3B4HTGFWDCS9E"]).await;
    assert_code(&out, 2);
    assert!(out.stderr.contains("404"), "{out:#?}");
}

#[tokio::test]
async fn run_follow_streams_the_logs_then_prints_the_result() {
    let (app, _) = scripted_app().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = write(
        dir.path(),
        "job.js",
        script(json!({"logs": ["one", "two"], "log_interval_ms": 50, "output": {"ok": true}})),
    );
    let out = cli::run(&app.address, &["run", &file, "--follow"]).await;
    assert_code(&out, 0);
    assert_eq!(out.stdout, "one\ntwo\n{\"ok\":true}\n");
    // With --json the lines go to stderr and stdout holds only the workload.
    let out = cli::run(&app.address, &["run", &file, "--follow", "--json"]).await;
    assert_code(&out, 0);
    assert_eq!(out.json()["output"], json!({"ok": true}));
    assert!(out.stderr.contains("one\ntwo\n"), "{out:#?}");
}

#[tokio::test]
async fn ctrl_c_during_run_follow_kills_when_told_to() {
    let (app, seen) = scripted_app().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = write(
        dir.path(),
        "long.js",
        script(json!({"logs": ["started"], "delay_ms": 60000})),
    );
    let mut child = cli::command(
        &app.address,
        &["run", &file, "--follow", "--kill-on-interrupt"],
    )
    .spawn()
    .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(SOON, stdout.next_line())
        .await
        .expect("first line in time")
        .expect("read");
    assert_eq!(first.as_deref(), Some("started"));
    cli::interrupt(&child);
    let status = tokio::time::timeout(SOON, child.wait())
        .await
        .expect("exit in time")
        .expect("wait");
    assert_eq!(status.code(), Some(3), "killed");
    let id = only_workload_with(&app, "killed").await;
    assert!(seen.saw_cancel(&id), "the execution was really stopped");
}

#[tokio::test]
async fn ctrl_c_during_run_follow_without_a_terminal_leaves_the_workload_running() {
    let (app, _) = scripted_app().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = write(
        dir.path(),
        "long.js",
        script(json!({"logs": ["started"], "delay_ms": 60000})),
    );
    let mut child = cli::command(&app.address, &["run", &file, "--follow"])
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(SOON, stdout.next_line())
        .await
        .expect("first line in time")
        .expect("read");
    assert_eq!(first.as_deref(), Some("started"));
    cli::interrupt(&child);
    let out = cli::finish(child).await;
    assert_code(&out, 130);
    let id = only_workload_with(&app, "running").await;
    assert!(
        out.stderr.contains(&format!("vulcan kill {id}")),
        "says how to kill it: {out:#?}"
    );
    // It really is still running, and the hint works.
    let out = cli::run(&app.address, &["kill", &id]).await;
    assert_code(&out, 0);
}

#[tokio::test]
async fn ls_filters_by_status_and_runtime_and_pages() {
    let (app, _) = scripted_app().await;
    for (runtime, script) in [
        ("node", json!({})),
        ("node", json!({})),
        ("python", json!({"error": "nope", "exit_code": 1})),
        ("go", json!({})),
    ] {
        let mut body = job(runtime, script);
        body["isolation"] = json!("isolate");
        let w = app.submit_async(&body).await;
        app.wait_terminal(w["id"].as_str().expect("id"), SOON).await;
    }
    let failed = cli::run(&app.address, &["ls", "--status", "failed", "--json"]).await;
    assert_code(&failed, 0);
    let page = failed.json();
    assert_eq!(page["total"], 1);
    assert_eq!(page["workloads"][0]["runtime"], "python");
    let go = cli::run(&app.address, &["ls", "--runtime", "go", "--json"])
        .await
        .json();
    assert_eq!(go["total"], 1);
    assert_eq!(go["workloads"][0]["runtime"], "go");
    let two = cli::run(
        &app.address,
        &["ls", "--limit", "2", "--offset", "1", "--json"],
    )
    .await
    .json();
    assert_eq!(
        (two["total"].as_u64(), two["limit"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(two["workloads"].as_array().map(Vec::len), Some(2));
    // Human: a header, one aligned row per workload, and a note about the rest.
    let human = cli::run(&app.address, &["ls", "--limit", "3"]).await;
    assert_code(&human, 0);
    let lines: Vec<&str> = human.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{human:#?}");
    assert!(lines[0].starts_with("ID") && lines[0].contains("STATUS"));
    let status_col = lines[0].find("STATUS").expect("column");
    for row in &lines[1..] {
        let word = row[status_col..].split_whitespace().next().expect("status");
        assert!(["completed", "failed"].contains(&word), "{row}");
    }
    assert!(human.stderr.contains("3 of 4"), "{human:#?}");
}

#[tokio::test]
async fn kill_stops_a_running_workload_and_refuses_a_finished_one() {
    let (app, seen) = scripted_app().await;
    let w = app
        .submit_async(&job("node", json!({"delay_ms": 60000})))
        .await;
    let id = w["id"].as_str().expect("id").to_string();
    app.wait_status(&id, "running", SOON).await;
    let out = cli::run(&app.address, &["kill", &id, "--json"]).await;
    assert_code(&out, 0);
    assert_eq!(out.json()["status"], "killed");
    assert!(seen.saw_cancel(&id));
    let again = cli::run(&app.address, &["kill", &id]).await;
    assert_code(&again, 2);
    assert!(again.stderr.contains("409"), "{again:#?}");
}

#[tokio::test]
async fn status_shows_a_workload_and_exits_with_its_outcome() {
    let (app, _) = scripted_app().await;
    let ok = app
        .submit_async(&job("node", json!({"output": [1, 2]})))
        .await;
    let ok = ok["id"].as_str().expect("id").to_string();
    let bad = app
        .submit_async(&job("node", json!({"error": "it broke", "exit_code": 2})))
        .await;
    let bad = bad["id"].as_str().expect("id").to_string();
    app.wait_terminal(&ok, SOON).await;
    app.wait_terminal(&bad, SOON).await;

    let out = cli::run(&app.address, &["status", &ok]).await;
    assert_code(&out, 0);
    for (label, value) in [
        ("status", "completed"),
        ("runtime", "node"),
        ("output", "[1,2]"),
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(label) && l.trim_end().ends_with(value)),
            "{label}: {value} in {out:#?}"
        );
    }
    let json = cli::run(&app.address, &["status", &ok, "--json"])
        .await
        .json();
    assert_eq!(
        json,
        app.get_json(&format!("/v1/workloads/{ok}"), 200).await
    );

    let out = cli::run(&app.address, &["status", &bad]).await;
    assert_code(&out, 1);
    assert!(out.stdout.contains("it broke"), "{out:#?}");
    let unknown = cli::run(&app.address, &["status", "01JKQX7V8MZRN3B4HTGFWDCS9E"]).await;
    assert_code(&unknown, 2);
    assert!(unknown.stderr.contains("404"), "{unknown:#?}");
}

#[tokio::test]
async fn backends_restart_and_stats_show_the_servers_view() {
    let (app, seen) = scripted_app().await;
    let w = app.submit_async(&job("node", json!({}))).await;
    app.wait_terminal(w["id"].as_str().expect("id"), SOON).await;

    let out = cli::run(&app.address, &["backends", "--json"]).await;
    assert_code(&out, 0);
    assert_eq!(out.json(), app.get_json("/v1/backends", 200).await);
    let human = cli::run(&app.address, &["backends"]).await;
    assert!(human
        .stdout
        .lines()
        .next()
        .is_some_and(|h| h.starts_with("NAME")));
    assert!(
        human
            .stdout
            .lines()
            .any(|l| l.starts_with("scripted") && l.contains("healthy")),
        "{human:#?}"
    );

    let before = seen.instances.load(Ordering::SeqCst);
    let out = cli::run(&app.address, &["restart", "scripted", "--json"]).await;
    assert_code(&out, 0);
    assert_eq!(out.json()["restarts"], 1);
    assert_eq!(
        seen.instances.load(Ordering::SeqCst),
        before + 1,
        "a fresh instance"
    );
    let out = cli::run(&app.address, &["restart", "nosuch"]).await;
    assert_code(&out, 2);

    let out = cli::run(&app.address, &["stats", "--json"]).await;
    assert_code(&out, 0);
    let stats = out.json();
    assert_eq!(stats["total"], 1);
    assert_eq!(stats["by_status"]["completed"], 1);
    let human = cli::run(&app.address, &["stats"]).await;
    assert_code(&human, 0);
    assert!(human.stdout.starts_with("total 1"), "{human:#?}");
    assert!(human.stdout.contains("completed 1"), "{human:#?}");
    assert!(
        human.stdout.lines().any(|l| l.starts_with("scripted")),
        "per-backend row: {human:#?}"
    );
}

/// A worker process that dies is replaced, and `vulcan backends` shows the restart in
/// the isolate row (the server's `worker_restarts`), next to its actor restarts.
#[tokio::test]
async fn backends_show_the_isolate_worker_restarts() {
    let app = common::app()
        .builtin()
        .env("VULCAN_BACKENDS__ISOLATE__MAX_CONCURRENCY", "1")
        .env("VULCAN_BACKENDS__GVISOR__ENABLED", "false")
        .env("VULCAN_BACKENDS__MICROVM__ENABLED", "false")
        .spawn()
        .await;
    let w = app
        .submit_async(&json!({"runtime": "node", "code": "1"}))
        .await;
    app.wait_terminal(w["id"].as_str().expect("id"), SOON).await;
    let pid = worker_pid(&app).await;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    // `kill` returns once the signal is sent; wait until the worker has died (a zombie
    // or gone), so the pool can tell it is dead when the next workload asks for it.
    common::wait_dead(pid).await;
    // The next workload gets a fresh worker.
    let w = app
        .submit_async(&json!({"runtime": "node", "code": "'next'"}))
        .await;
    let done = app.wait_terminal(w["id"].as_str().expect("id"), SOON).await;
    assert_eq!(done["status"], "completed", "{done}");

    let out = cli::run(&app.address, &["backends", "--json"]).await;
    assert_code(&out, 0);
    let isolate = out
        .json()
        .as_array()
        .expect("array")
        .iter()
        .find(|b| b["name"] == "isolate")
        .expect("isolate listed")
        .clone();
    assert_eq!(isolate["worker_restarts"], 1, "{isolate}");

    let human = cli::run(&app.address, &["backends"]).await;
    assert_code(&human, 0);
    let header: Vec<&str> = human
        .stdout
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    let column = header
        .iter()
        .position(|h| *h == "WORKER_RESTARTS")
        .unwrap_or_else(|| panic!("a worker restarts column: {human:#?}"));
    let restarts = header
        .iter()
        .position(|h| *h == "RESTARTS")
        .expect("restarts column");
    let row: Vec<&str> = human
        .stdout
        .lines()
        .find(|l| l.starts_with("isolate"))
        .unwrap_or_else(|| panic!("isolate row: {human:#?}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[column], "1", "{human:#?}");
    assert_eq!(row[restarts], "0", "the actor did not restart: {human:#?}");
    // Where the server is not root, what could not be applied is said below the table.
    for limitation in isolate["limitations"].as_array().expect("limitations") {
        let text = limitation.as_str().expect("text");
        assert!(
            human
                .stderr
                .contains(&format!("isolate: limitation: {text}")),
            "{human:#?}"
        );
    }
}

/// The pid of the app's one ready isolate worker (from /v1/system/actors).
async fn worker_pid(app: &TestApp) -> u32 {
    let start = std::time::Instant::now();
    loop {
        let actors = app.get_json("/v1/system/actors", 200).await;
        let pid = actors["actors"]
            .as_array()
            .expect("actors")
            .iter()
            .filter(|a| a["name"] == "worker:isolate/0")
            .filter(|a| a["state"] == "idle")
            .find_map(|a| a["pid"].as_u64().and_then(|p| u32::try_from(p).ok()));
        if let Some(pid) = pid {
            return pid;
        }
        assert!(start.elapsed() < SOON, "no idle worker: {actors}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_token_comes_from_the_environment_or_the_flag() {
    let (f, _) = scripted::factory(Options::default());
    let app = common::app()
        .backend(f)
        .env("VULCAN_API_TOKEN", "s3cret")
        .spawn()
        .await;
    let out = cli::run(&app.address, &["ls"]).await;
    assert_code(&out, 2);
    assert!(
        out.stderr.contains("401") && out.stderr.contains("--token"),
        "{out:#?}"
    );
    let out = cli::run(&app.address, &["ls", "--token", "wrong"]).await;
    assert_code(&out, 2);
    let out = cli::run(&app.address, &["ls", "--token", "s3cret"]).await;
    assert_code(&out, 0);
    let out = cli::finish(
        cli::command(&app.address, &["ls", "--json"])
            .env("VULCAN_API_TOKEN", "s3cret")
            .spawn()
            .expect("spawn"),
    )
    .await;
    assert_code(&out, 0);
    assert_eq!(out.json()["total"], 0);
}

#[tokio::test]
async fn the_runtime_is_guessed_from_the_extension() {
    let (app, _) = scripted_app().await;
    let dir = tempfile::tempdir().expect("dir");
    let body = script(json!({"output": "ok"}));
    for (name, runtime) in [
        ("job.js", "node"),
        ("job.mjs", "node"),
        ("job.py", "python"),
        ("job.go", "go"),
        ("job.wat", "wasm"),
        ("job.wasm", "wasm"),
    ] {
        let file = write(dir.path(), name, &body);
        // The scripted backend offers every runtime under the isolate class.
        let out = cli::run(&app.address, &["run", &file, "-i", "isolate", "--json"]).await;
        assert_code(&out, 0);
        assert_eq!(out.json()["runtime"], runtime, "{name}");
    }
    // --runtime wins over the extension.
    let file = write(dir.path(), "job.js", &body);
    let out = cli::run(
        &app.address,
        &["run", &file, "--runtime", "go", "-i", "isolate", "--json"],
    )
    .await;
    assert_eq!(out.json()["runtime"], "go");
}

#[tokio::test]
async fn code_from_stdin_takes_the_runtime_from_the_flag() {
    let (app, _) = scripted_app().await;
    let out = cli::run_with_stdin(
        &app.address,
        &[
            "run",
            "-",
            "--runtime",
            "python",
            "--isolation",
            "isolate",
            "--json",
        ],
        script(json!({"output": {"from": "stdin"}})).as_bytes(),
    )
    .await;
    assert_code(&out, 0);
    let w = out.json();
    assert_eq!(w["runtime"], "python");
    assert_eq!(w["output"], json!({"from": "stdin"}));
}

#[tokio::test]
async fn a_body_above_the_server_limit_is_refused_before_sending() {
    let (app, _) = scripted_app().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = write(dir.path(), "huge.js", vec![b'x'; 16 * 1024 * 1024]);
    let out = cli::run(&app.address, &["run", &file]).await;
    assert_code(&out, 2);
    assert!(out.stderr.contains("request body limit"), "{out:#?}");
    assert_eq!(total(&app).await, 0);
}

#[tokio::test]
async fn run_image_submits_an_oci_workload() {
    // No backend here runs images: the server's refusal names the oci runtime, which
    // proves what was sent.
    let (app, _) = scripted_app().await;
    let out = cli::run(
        &app.address,
        &["run", "--image", "busybox:1.36", "--", "echo", "hi"],
    )
    .await;
    assert_code(&out, 2);
    assert!(
        out.stderr.contains("422") && out.stderr.contains("oci"),
        "{out:#?}"
    );
    assert_eq!(total(&app).await, 0);
}

#[tokio::test]
async fn run_async_prints_the_id_and_returns_at_once() {
    let (app, _) = scripted_app().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = write(dir.path(), "wait.js", script(json!({"delay_ms": 60000})));
    let out = cli::run(&app.address, &["run", &file, "--async"]).await;
    assert_code(&out, 0);
    let id = out.stdout.trim();
    let w = app.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert!(
        ["pending", "running"].contains(&w["status"].as_str().unwrap_or("")),
        "{w}"
    );
    let out = cli::run(&app.address, &["run", &file, "--async", "--json"]).await;
    assert_code(&out, 0);
    assert_eq!(out.json()["status"], "pending");
}
