//! Go workloads under gVisor reuse their built binary: the second submission of the
//! same code is served from the backend's cache (its `go_cache` counters in
//! `GET /v1/backends` say so, not timing), a tampered entry is rejected and rebuilt,
//! the cache stays under its cap, concurrent cold runs do not corrupt it, and a failed
//! build is never kept. Where runsc or go is missing, each test prints `SKIPPED:`.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use flate2::write::GzEncoder;
use flate2::Compression;

use common::gvisor::{go_app, gvisor_entry, GoApp};
use common::TestApp;
use serde_json::{json, Value};

/// Sums the JSON array on stdin. `variant` makes otherwise equal programs differ.
fn sum_program(variant: &str) -> String {
    format!(
        "package main\n\
         // {variant}\n\
         import (\"encoding/json\"; \"fmt\"; \"os\")\n\
         func main() {{\n\
         \tvar xs []int\n\
         \tjson.NewDecoder(os.Stdin).Decode(&xs)\n\
         \tt := 0\n\
         \tfor _, x := range xs {{ t += x }}\n\
         \tfmt.Println(t)\n\
         }}\n"
    )
}

fn go_body(code: &str, input: Value) -> Value {
    // The compiler and linker need more than the 128 MiB default.
    json!({
        "runtime": "go", "isolation": "gvisor", "code": code, "input": input,
        "resources": {"mem_mb": 512, "timeout_s": 300}
    })
}

/// Synchronous run; asserts 200 and returns the terminal workload.
async fn run(app: &TestApp, body: &Value) -> Value {
    let res = app.post("/v1/workloads", body).await;
    let status = res.status().as_u16();
    let w: Value = res.json().await.expect("json");
    assert_eq!(status, 200, "{w}");
    w
}

async fn cache_stats(app: &TestApp) -> Value {
    let entry = gvisor_entry(app).await;
    let stats = entry["details"]["go_cache"].clone();
    assert!(stats.is_object(), "go_cache details listed: {entry}");
    stats
}

fn cache_dir(state: &Path) -> std::path::PathBuf {
    state.join("go-cache")
}

/// The binaries stored on disk and their total size.
fn stored(state: &Path) -> (Vec<std::path::PathBuf>, u64) {
    let bins: Vec<_> = std::fs::read_dir(cache_dir(state))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "bin"))
                .collect()
        })
        .unwrap_or_default();
    let total = bins
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    (bins, total)
}

fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vulcan-go-cache-")
        .tempdir()
        .expect("state dir")
}

#[tokio::test]
async fn a_repeated_go_submission_runs_from_the_cache() {
    let state = state_dir();
    let Some(GoApp { app, parent: _p }) = go_app("repeated", state.path(), &[]).await else {
        return;
    };
    let code = sum_program("repeated");
    let cold = run(&app, &go_body(&code, json!([40, 2]))).await;
    assert_eq!(cold["status"], "completed", "{cold}");
    assert_eq!(cold["output"], json!(42));
    let stats = cache_stats(&app).await;
    assert_eq!(
        (stats["misses"].as_u64(), stats["hits"].as_u64()),
        (Some(1), Some(0)),
        "{stats}"
    );
    assert_eq!(stats["entries"], 1, "{stats}");

    // The same code with another input: the cached binary runs and reads the new input.
    let warm = run(&app, &go_body(&code, json!([1, 2, 3]))).await;
    assert_eq!(warm["status"], "completed", "{warm}");
    assert_eq!(warm["output"], json!(6));
    assert_eq!(warm["exit_code"], 0);
    let stats = cache_stats(&app).await;
    assert_eq!(
        (stats["misses"].as_u64(), stats["hits"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    let (bins, total) = stored(state.path());
    assert_eq!(bins.len(), 1);
    assert_eq!(stats["bytes"].as_u64(), Some(total));

    // Another program is another entry.
    let other = run(&app, &go_body(&sum_program("other"), json!([5]))).await;
    assert_eq!(other["output"], json!(5), "{other}");
    let stats = cache_stats(&app).await;
    assert_eq!(
        (stats["misses"].as_u64(), stats["entries"].as_u64()),
        (Some(2), Some(2)),
        "{stats}"
    );
}

#[tokio::test]
async fn a_tampered_entry_is_rejected_and_rebuilt() {
    let state = state_dir();
    let Some(GoApp { app, parent: _p }) = go_app("tamper", state.path(), &[]).await else {
        return;
    };
    let code = sum_program("tamper");
    let first = run(&app, &go_body(&code, json!([2, 2]))).await;
    assert_eq!(first["output"], json!(4), "{first}");
    let (bins, _) = stored(state.path());
    assert_eq!(bins.len(), 1);
    // Same size, other bytes: a binary that would exit at once with code 0 and no output
    // if it were trusted. Only the recorded hash can tell.
    let mut bytes = std::fs::read(&bins[0]).expect("read entry");
    let len = bytes.len();
    bytes[len / 2..].fill(0);
    std::fs::write(&bins[0], &bytes).expect("tamper");

    let second = run(&app, &go_body(&code, json!([3, 4]))).await;
    assert_eq!(second["status"], "completed", "{second}");
    assert_eq!(second["output"], json!(7));
    let stats = cache_stats(&app).await;
    assert_eq!(stats["rejected"], 1, "{stats}");
    assert_eq!(
        (stats["misses"].as_u64(), stats["hits"].as_u64()),
        (Some(2), Some(0)),
        "{stats}"
    );
    // Rebuilt and stored again, then served.
    let third = run(&app, &go_body(&code, json!([5, 5]))).await;
    assert_eq!(third["output"], json!(10), "{third}");
    let stats = cache_stats(&app).await;
    assert_eq!(
        (stats["hits"].as_u64(), stats["entries"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    assert_ne!(std::fs::read(&bins[0]).expect("rebuilt entry"), bytes);
}

#[tokio::test]
async fn eviction_keeps_the_cache_under_its_cap() {
    let state = state_dir();
    let Some(GoApp { app, parent }) = go_app("evict", state.path(), &[]).await else {
        return;
    };
    let first = run(&app, &go_body(&sum_program("evict-a"), json!([1]))).await;
    assert_eq!(first["output"], json!(1), "{first}");
    let (_, one) = stored(state.path());
    assert!(one > 0);
    app.stop().await;
    drop(parent);

    // Room for one binary, not two: the restarted server keeps the first entry (it is
    // on disk with its record) until the second needs the room.
    let cap = one + one / 2;
    let cap_text = cap.to_string();
    let Some(GoApp { app, parent: _p }) = go_app(
        "evict",
        state.path(),
        &[("VULCAN_BACKENDS__GVISOR__GO_CACHE_MAX_BYTES", &cap_text)],
    )
    .await
    else {
        return;
    };
    let stats = cache_stats(&app).await;
    assert_eq!(stats["entries"], 1, "kept across a restart: {stats}");
    let second = run(&app, &go_body(&sum_program("evict-b"), json!([2]))).await;
    assert_eq!(second["output"], json!(2), "{second}");
    let stats = cache_stats(&app).await;
    assert_eq!(stats["evictions"], 1, "{stats}");
    assert_eq!(stats["entries"], 1, "{stats}");
    assert!(stats["bytes"].as_u64().is_some_and(|b| b <= cap), "{stats}");
    let (bins, total) = stored(state.path());
    assert_eq!(bins.len(), 1);
    assert!(total <= cap, "{total} bytes on disk, cap {cap}");
    // The evicted program builds again.
    let again = run(&app, &go_body(&sum_program("evict-a"), json!([3]))).await;
    assert_eq!(again["output"], json!(3), "{again}");
    let stats = cache_stats(&app).await;
    assert_eq!(
        (stats["misses"].as_u64(), stats["hits"].as_u64()),
        (Some(2), Some(0)),
        "{stats}"
    );
    assert!(stored(state.path()).1 <= cap);
}

#[tokio::test]
async fn a_failed_build_is_not_cached() {
    let state = state_dir();
    let Some(GoApp { app, parent: _p }) = go_app("failed", state.path(), &[]).await else {
        return;
    };
    let broken = "package main\nfunc main() { undefined_function() }\n";
    for _ in 0..2 {
        let w = run(&app, &go_body(broken, json!(null))).await;
        assert_eq!(w["status"], "failed", "{w}");
        let error = w["error"].as_str().unwrap_or_default();
        assert!(error.starts_with("go build failed"), "{w}");
        let logs = app
            .get_json(
                &format!(
                    "/v1/workloads/{}/logs/history",
                    w["id"].as_str().unwrap_or_default()
                ),
                200,
            )
            .await;
        assert!(
            logs.to_string().contains("undefined"),
            "compiler message logged: {logs}"
        );
    }
    let stats = cache_stats(&app).await;
    assert_eq!(
        (stats["misses"].as_u64(), stats["hits"].as_u64()),
        (Some(2), Some(0)),
        "{stats}"
    );
    assert_eq!(stats["entries"], 0, "{stats}");
    assert!(stored(state.path()).0.is_empty());
    // The server is fine: the next (good) workload runs at once.
    let ok = run(&app, &go_body(&sum_program("after-failure"), json!([9]))).await;
    assert_eq!(ok["output"], json!(9), "{ok}");
}

#[tokio::test]
async fn concurrent_cold_runs_of_the_same_code_leave_one_valid_entry() {
    let state = state_dir();
    let Some(GoApp { app, parent: _p }) = go_app("concurrent", state.path(), &[]).await else {
        return;
    };
    let code = sum_program("concurrent");
    let a = app.submit_async(&go_body(&code, json!([1, 1]))).await;
    let b = app.submit_async(&go_body(&code, json!([2, 2]))).await;
    for (w, want) in [(a, 2), (b, 4)] {
        let id = w["id"].as_str().expect("id").to_string();
        let done = app.wait_terminal(&id, Duration::from_secs(300)).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["output"], json!(want));
    }
    let (bins, _) = stored(state.path());
    assert_eq!(bins.len(), 1, "one entry for one program");
    let third = run(&app, &go_body(&code, json!([3, 3]))).await;
    assert_eq!(third["output"], json!(6), "{third}");
    let stats = cache_stats(&app).await;
    assert_eq!(stats["hits"], 1, "{stats}");
    assert_eq!(stats["rejected"], 0, "{stats}");
}

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, *data)
            .expect("append");
    }
    let mut gz = builder.into_inner().expect("tar");
    gz.flush().expect("flush");
    gz.finish().expect("gzip")
}

#[tokio::test]
async fn a_cached_module_archive_still_reads_its_own_files() {
    let state = state_dir();
    let Some(GoApp { app, parent: _p }) = go_app("archive", state.path(), &[]).await else {
        return;
    };
    let archive = tar_gz(&[
        ("go.mod", b"module example.com/greet\n\ngo 1.19\n"),
        (
            "main.go",
            b"package main\nimport (\"fmt\"; \"os\")\nfunc main() {\n\tb, err := os.ReadFile(\"greeting.txt\")\n\tif err != nil { panic(err) }\n\tfmt.Printf(\"%q\", string(b))\n}\n",
        ),
        ("greeting.txt", b"hello from the archive"),
    ]);
    let body = json!({
        "runtime": "go", "isolation": "gvisor",
        "code_archive": base64::engine::general_purpose::STANDARD.encode(&archive),
        "resources": {"mem_mb": 512, "timeout_s": 300}
    });
    for round in 0..2 {
        let w = run(&app, &body).await;
        assert_eq!(w["status"], "completed", "round {round}: {w}");
        assert_eq!(w["output"], json!("hello from the archive"));
    }
    let stats = cache_stats(&app).await;
    assert_eq!(
        (stats["misses"].as_u64(), stats["hits"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
}

#[tokio::test]
async fn the_programs_own_exit_code_is_reported_cold_and_warm() {
    let state = state_dir();
    let Some(GoApp { app, parent: _p }) = go_app("exit", state.path(), &[]).await else {
        return;
    };
    let code = "package main\nimport (\"fmt\"; \"os\")\nfunc main() { fmt.Print(7); os.Exit(3) }\n";
    for round in 0..2 {
        let w = run(&app, &go_body(code, json!(null))).await;
        assert_eq!(w["status"], "failed", "round {round}: {w}");
        assert_eq!(w["exit_code"], 3, "{w}");
        assert_eq!(w["error"], "exited with code 3");
        assert_eq!(w["output"], json!(7));
    }
    assert_eq!(cache_stats(&app).await["hits"], 1);
}
