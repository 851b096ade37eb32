//! End to end through HTTP with the real `gvisor` backend (runsc): python from stdin to
//! JSON, archives, traversal, live logs, timeout, kill, memory limit, confinement,
//! auto-routing, and no leftovers after many runs.
//!
//! Every app gets its own state dir and cgroup parent: the backend sweeps leftovers of
//! both at start-up and would otherwise kill another test app's sandboxes. Where runsc
//! is missing or the tests do not run as root, each test prints `SKIPPED: <reason>`.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::sse::SseStream;
use common::TestApp;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};

/// Generous: runsc on the ptrace platform is slow on a loaded two-core machine.
const SOON: Duration = Duration::from_secs(60);

/// A test app whose gvisor backend is healthy, with its private state.
struct GvApp {
    app: TestApp,
    state: tempfile::TempDir,
    parent: String,
}

impl Drop for GvApp {
    fn drop(&mut self) {
        // Leave no empty per-test parents behind (children are checked by the tests).
        for root in cgroup_roots() {
            let _ = std::fs::remove_dir(root.join(&self.parent));
        }
    }
}

/// Boot an app with the built-in backends, a private gvisor state dir and cgroup
/// parent, and `env` on top. `None` (after a loud `SKIPPED:` line) when the gvisor
/// backend cannot run python here.
async fn gvisor_app(name: &str, env: &[(&str, &str)]) -> Option<GvApp> {
    let state = tempfile::Builder::new()
        .prefix("vulcan-gvisor-http-")
        .tempdir()
        .expect("state dir");
    let parent = format!(
        "vulcan-test-{name}-{}-{}",
        std::process::id(),
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    );
    let mut builder = common::app()
        .builtin()
        .env(
            "VULCAN_BACKENDS__GVISOR__STATE_DIR",
            &state.path().to_string_lossy(),
        )
        .env("VULCAN_BACKENDS__GVISOR__CGROUP_PARENT", &parent);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    let app = builder.spawn().await;
    let gv = GvApp { app, state, parent };
    let entry = gv.backend("gvisor").await;
    if entry["status"] != "healthy" {
        eprintln!(
            "SKIPPED: gvisor backend is {} here: {}",
            entry["status"], entry["reason"]
        );
        return None;
    }
    let runtimes = &entry["capabilities"]["supported_runtimes"];
    if !runtimes
        .as_array()
        .is_some_and(|r| r.contains(&json!("python")))
    {
        eprintln!("SKIPPED: the gvisor backend offers no python here: {entry}");
        return None;
    }
    Some(gv)
}

impl GvApp {
    async fn backend(&self, name: &str) -> Value {
        let all = self.app.get_json("/v1/backends", 200).await;
        all.as_array()
            .expect("array")
            .iter()
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("backend {name} listed: {all}"))
            .clone()
    }

    /// Synchronous submit; asserts 200 and returns the terminal workload.
    async fn run(&self, body: &Value) -> Value {
        let res = self.app.post("/v1/workloads", body).await;
        let status = res.status().as_u16();
        let w: Value = res.json().await.expect("json");
        assert_eq!(status, 200, "{w}");
        w
    }

    /// Wait until the backend counts nothing running or queued (its bookkeeping
    /// follows the end of each execution by a message).
    async fn wait_idle(&self) {
        let start = Instant::now();
        loop {
            let entry = self.backend("gvisor").await;
            if entry["running"] == 0 && entry["queued"] == 0 {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "{entry}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn bundles(&self) -> Vec<String> {
        std::fs::read_dir(self.state.path().join("bundles"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Per-run cgroup directories under this app's parent, in every hierarchy.
    fn cgroups(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for root in cgroup_roots() {
            if let Ok(entries) = std::fs::read_dir(root.join(&self.parent)) {
                found.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        found
    }

    /// Containers `runsc list` still knows in this app's runsc root.
    fn containers(&self) -> Vec<String> {
        let root = self.state.path().join("runsc-root");
        let out = std::process::Command::new("runsc")
            .arg("--root")
            .arg(&root)
            .args(["list", "--quiet"])
            .output()
            .expect("runsc list");
        assert!(
            out.status.success(),
            "runsc list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Wait until no bundle, cgroup or container is left (cleanup may finish just
    /// after the terminal status is recorded, e.g. after a kill).
    async fn assert_clean_soon(&self) {
        let start = Instant::now();
        loop {
            let (b, c, r) = (self.bundles(), self.cgroups(), self.containers());
            if b.is_empty() && c.is_empty() && r.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "leftovers: bundles {b:?}, cgroups {c:?}, containers {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Root of every mounted cgroup hierarchy (v1 controllers and a v2 mount).
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.procs").exists() {
        return vec![base.to_path_buf()];
    }
    std::fs::read_dir(base)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn id(w: &Value) -> String {
    w["id"].as_str().expect("id").to_string()
}

fn python(code: &str) -> Value {
    json!({"runtime": "python", "isolation": "gvisor", "code": code})
}

fn error_of(w: &Value) -> &str {
    w["error"]
        .as_str()
        .unwrap_or_else(|| panic!("an error: {w}"))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
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

/// A tar.gz with `main.py` and one regular file under a raw, unchecked name (the tar
/// crate's own builder refuses `..`).
fn traversal_tar_gz(name: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let main = b"print('ran')\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(main.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "main.py", &main[..])
        .expect("append");
    let data = b"import os\n";
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    let old = h.as_old_mut();
    old.name = [0; 100];
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    builder.append(&h, &data[..]).expect("append raw");
    builder.into_inner().expect("tar").finish().expect("gzip")
}

#[tokio::test]
async fn python_sums_stdin_into_json() {
    let Some(gv) = gvisor_app("sum", &[]).await else {
        return;
    };
    let mut body = python(
        "import json,sys; d=json.load(sys.stdin); print(json.dumps({\"sum\": d[\"a\"]+d[\"b\"]}))",
    );
    body["input"] = json!({"a": 1, "b": 2});
    let w = gv.run(&body).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], json!({"sum": 3}));
    assert_eq!(w["exit_code"], 0);
    assert_eq!(w["isolation"], "gvisor");
    assert_eq!(w["requested_isolation"], "gvisor");
    assert_eq!(w["backend"], "gvisor");
    assert_eq!(w["error"], Value::Null);
    // The input is also in VULCAN_INPUT.
    let mut body = python("import os; print(os.environ['VULCAN_INPUT'])");
    body["input"] = json!({"via": "env"});
    let w = gv.run(&body).await;
    assert_eq!(w["output"], json!({"via": "env"}), "{w}");
    gv.assert_clean_soon().await;
}

#[tokio::test]
async fn archive_with_two_modules_fails_with_exit_code_3() {
    let Some(gv) = gvisor_app("archive", &[]).await else {
        return;
    };
    let archive = tar_gz(&[
        (
            "main.py",
            b"import sys\nimport helper\nprint(helper.double(21))\nsys.exit(3)\n",
        ),
        (
            "helper.py",
            b"def double(n):\n    print('helper called', file=__import__('sys').stderr)\n    return n * 2\n",
        ),
    ]);
    let w = gv
        .run(&json!({
            "runtime": "python",
            "isolation": "gvisor",
            "code_archive": b64(&archive),
        }))
        .await;
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(w["exit_code"], 3);
    assert_eq!(w["error"], "exited with code 3");
    // The second module was imported and ran: its result is the stdout.
    assert_eq!(w["output"], 42);
    let history = gv
        .app
        .get_json(&format!("/v1/workloads/{}/logs/history", id(&w)), 200)
        .await;
    let lines: Vec<&str> = history["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["line"].as_str().expect("line"))
        .collect();
    assert!(lines.contains(&"helper called"), "{history}");
    assert!(lines.contains(&"42"), "{history}");
    gv.assert_clean_soon().await;
}

#[tokio::test]
async fn archive_traversal_is_rejected_and_nothing_is_written_outside() {
    let Some(gv) = gvisor_app("traversal", &[]).await else {
        return;
    };
    // The work dir is <state>/bundles/vulcan-<id>/work: these names would land in the
    // bundle dir, the bundles dir, the state dir and beside the state dir.
    let unique = format!(
        "evil-{}.py",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    );
    let state = gv.state.path();
    let outside = [
        state.join("bundles").join(&unique),
        state.join(&unique),
        state.parent().expect("parent").join(&unique),
    ];
    for depth in 1..=4 {
        let name = format!("{}{unique}", "../".repeat(depth));
        let w = gv
            .run(&json!({
                "runtime": "python",
                "isolation": "gvisor",
                "code_archive": b64(&traversal_tar_gz(&name)),
            }))
            .await;
        assert_eq!(w["status"], "failed", "{name}: {w}");
        let error = error_of(&w);
        assert!(
            error.contains("..") || error.to_lowercase().contains("escape"),
            "{name}: the error should say why: {error}"
        );
        assert!(
            !error.contains(&*state.to_string_lossy()),
            "host path leaked: {error}"
        );
        assert_eq!(w["output"], Value::Null, "{name}: nothing ran: {w}");
        for path in &outside {
            assert!(!path.exists(), "{name}: wrote {}", path.display());
        }
    }
    gv.assert_clean_soon().await;
}

#[tokio::test]
async fn stdout_and_stderr_lines_arrive_live_over_sse() {
    let Some(gv) = gvisor_app("sse", &[]).await else {
        return;
    };
    let w = gv
        .app
        .submit_async(&python(
            "import sys, time\n\
             print('first')\n\
             time.sleep(1.5)\n\
             print('on stderr', file=sys.stderr)\n\
             sys.stderr.flush()\n\
             time.sleep(0.2)\n\
             print('second')\n",
        ))
        .await;
    let wid = id(&w);
    let mut sse = SseStream::open(&gv.app, &wid).await;
    let first = sse.next_event(SOON).await.expect("first event");
    assert_eq!(first.data, "first");
    assert_eq!(first.id.as_deref(), Some("0"));
    let now = gv.app.get_json(&format!("/v1/workloads/{wid}"), 200).await;
    assert_eq!(now["status"], "running", "the line must arrive live: {now}");
    let (rest, done) = sse.until_done(SOON).await;
    assert_eq!(done, "completed");
    let rest: Vec<(String, String)> = rest
        .into_iter()
        .map(|e| (e.id.expect("id"), e.data))
        .collect();
    assert_eq!(
        rest,
        vec![
            ("1".to_string(), "on stderr".to_string()),
            ("2".to_string(), "second".to_string())
        ]
    );
    let end = gv.app.get_json(&format!("/v1/workloads/{wid}"), 200).await;
    assert_eq!(end["output"], "first\nsecond\n");
    gv.assert_clean_soon().await;
}

/// One output cap for every backend: the global `max_output_bytes` holds under gVisor
/// for python and for node's module wrapper; above it the workload fails clearly and
/// keeps no output, the server is fine and the next workload runs at once.
#[tokio::test]
async fn an_output_above_the_global_cap_fails_and_keeps_nothing() {
    let Some(gv) = gvisor_app("output-cap", &[("VULCAN_MAX_OUTPUT_BYTES", "1000")]).await else {
        return;
    };
    let mut cases = vec![python("import sys\nsys.stdout.write('x' * 5000)\n")];
    let runtimes = gv.backend("gvisor").await["capabilities"]["supported_runtimes"].clone();
    if runtimes
        .as_array()
        .is_some_and(|r| r.contains(&json!("node")))
    {
        cases.push(json!({"runtime": "node", "isolation": "gvisor",
                          "code": "export default () => 'x'.repeat(5000);"}));
    } else {
        eprintln!("SKIPPED (node part): the gvisor backend offers no node here: {runtimes}");
    }
    for body in cases {
        let w = gv.run(&body).await;
        assert_eq!(w["status"], "failed", "{w}");
        assert_eq!(w["error"], "output exceeds 1000 bytes", "{w}");
        assert_eq!(w["output"], Value::Null, "{w}");
        assert_eq!(gv.app.get_json("/healthz", 200).await["status"], "ok");
        let w = gv.run(&python("print('y' * 900)\n")).await;
        assert_eq!(w["status"], "completed", "{w}");
        assert_eq!(w["output"], format!("{}\n", "y".repeat(900)));
    }
    gv.assert_clean_soon().await;
}

#[tokio::test]
async fn a_busy_loop_times_out() {
    let Some(gv) = gvisor_app("timeout", &[]).await else {
        return;
    };
    let mut body = python("while True: pass\n");
    body["resources"] = json!({"timeout_s": 1});
    let started = Instant::now();
    let w = gv.run(&body).await;
    let took = started.elapsed();
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(w["error"], "timed out after 1s");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    gv.assert_clean_soon().await;
}

#[tokio::test]
async fn killing_a_sleeping_workload_stops_it_promptly() {
    let Some(gv) = gvisor_app("kill", &[]).await else {
        return;
    };
    let w = gv
        .app
        .submit_async(&python("import time\nprint('asleep')\ntime.sleep(60)\n"))
        .await;
    let wid = id(&w);
    // Wait until the sandbox really runs the code (its first line is logged).
    let mut sse = SseStream::open(&gv.app, &wid).await;
    assert_eq!(sse.next_event(SOON).await.expect("line").data, "asleep");
    // While it runs, its bundle, cgroups and container exist (so the checks below,
    // and the leftover checks of the other tests, look in the right places).
    let leaf = format!("vulcan-{}", wid.to_ascii_lowercase());
    assert_eq!(gv.bundles(), vec![leaf.clone()]);
    let cgroups = gv.cgroups();
    assert!(!cgroups.is_empty(), "no cgroup found for the run");
    assert!(cgroups.iter().all(|c| c.ends_with(&leaf)), "{cgroups:?}");
    assert_eq!(gv.containers(), vec![leaf.clone()]);
    let started = Instant::now();
    let res = gv.app.delete(&format!("/v1/workloads/{wid}")).await;
    assert_eq!(res.status(), 200);
    let killed: Value = res.json().await.expect("json");
    assert_eq!(killed["status"], "killed", "{killed}");
    let (_, done) = sse.until_done(SOON).await;
    assert_eq!(done, "killed");
    // The sandbox is gone well before the 60 s sleep would end.
    gv.assert_clean_soon().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    gv.wait_idle().await;
    assert_eq!(
        gv.app
            .delete(&format!("/v1/workloads/{wid}"))
            .await
            .status(),
        409
    );
}

#[tokio::test]
async fn a_64_mib_limit_stops_a_400_mb_allocation() {
    let Some(gv) = gvisor_app("oom", &[]).await else {
        return;
    };
    let mut body = python("x = b'x' * (400 * 1024 * 1024)\nprint(len(x))\n");
    body["resources"] = json!({"mem_mb": 64});
    let w = gv.run(&body).await;
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(w["mem_limit"], 64);
    assert_ne!(w["exit_code"], 0, "{w}");
    assert_eq!(w["output"], Value::Null, "{w}");
    // The backend carries on.
    let w = gv.run(&python("print('still here')")).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], "still here\n");
    gv.assert_clean_soon().await;
}

#[tokio::test]
async fn the_sandbox_has_no_network_host_secrets_or_writable_runtime() {
    let Some(gv) = gvisor_app("confine", &[]).await else {
        return;
    };
    // The app runs in this process: a variable set here is in the server's own
    // environment (set before the workload starts; Rust serialises env access).
    std::env::set_var("VULCAN_SECRET_PROBE", "s3cr3t-value-from-the-host");
    let port: u16 = gv
        .app
        .address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let code = r#"
import json, os, socket, sys
port = json.load(sys.stdin)["port"]
r = {}
def attempt(name, f):
    try:
        f()
        r[name] = "allowed"
    except Exception as e:
        r[name] = "denied: " + type(e).__name__
def connect():
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    r["reply"] = s.recv(100).decode("latin-1")
    s.close()
attempt("own_port", connect)
attempt("shadow", lambda: open("/etc/shadow").read())
attempt("write_usr", lambda: open("/usr/x", "w").write("x"))
r["shadow_exists"] = os.path.exists("/etc/shadow")
r["env"] = dict(os.environ)
r["uid"] = os.getuid()
print(json.dumps(r))
"#;
    let mut body = python(code);
    body["input"] = json!({"port": port});
    let w = gv.run(&body).await;
    assert_eq!(w["status"], "completed", "{w}");
    let r = &w["output"];
    for denied in ["own_port", "shadow", "write_usr"] {
        assert!(
            r[denied].as_str().expect(denied).starts_with("denied"),
            "{denied}: {r}"
        );
    }
    assert_eq!(r["shadow_exists"], false, "{r}");
    assert_eq!(r["uid"], 65534, "{r}");
    let env = r["env"].as_object().expect("env");
    // The sandbox's whole environment is the backend's own few variables.
    let allowed = ["HOME", "LANG", "LC_CTYPE", "PATH", "TMPDIR", "VULCAN_INPUT"];
    for key in env.keys() {
        assert!(allowed.contains(&key.as_str()), "host env leaked: {key}");
    }
    assert_ne!(
        env.get("HOME").and_then(Value::as_str),
        std::env::var("HOME").ok().as_deref(),
        "the host HOME leaked"
    );
    assert!(
        !env.contains_key("VULCAN_SECRET_PROBE"),
        "host env leaked: {r}"
    );
    assert!(
        !env.values()
            .any(|v| v.as_str().is_some_and(|s| s.contains("s3cr3t-value"))),
        "host env leaked: {r}"
    );
    // The server itself was reachable all along (so the refusal was the sandbox's).
    assert_eq!(gv.app.get_json("/healthz", 200).await["status"], "ok");
    assert!(!Path::new("/usr/x").exists());
    gv.assert_clean_soon().await;
}

#[tokio::test]
async fn auto_python_routes_to_gvisor_when_microvm_is_unavailable() {
    let Some(gv) = gvisor_app("auto", &[]).await else {
        return;
    };
    let microvm = gv.backend("microvm").await;
    if microvm["status"] == "healthy" {
        eprintln!("SKIPPED: microvm is healthy here, auto python would not fall back");
        return;
    }
    let w = gv
        .run(&json!({
            "runtime": "python",
            "code": "print(6 * 7)",
        }))
        .await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], 42);
    assert_eq!(w["isolation"], "gvisor");
    assert_eq!(w["requested_isolation"], "auto");
    assert_eq!(w["backend"], "gvisor");
    // An explicit microvm never falls back.
    let res = gv
        .app
        .post(
            "/v1/workloads",
            &json!({"runtime": "python", "isolation": "microvm", "code": "print(1)"}),
        )
        .await;
    assert_eq!(res.status(), 422);
    gv.assert_clean_soon().await;
}

/// What one of the mixed runs is expected to end as.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Completes,
    Fails,
    TimesOut,
    Killed,
}

#[tokio::test]
async fn no_leftovers_after_fifty_mixed_runs() {
    let Some(gv) = gvisor_app(
        "fifty",
        &[("VULCAN_BACKENDS__GVISOR__MAX_CONCURRENCY", "10")],
    )
    .await
    else {
        return;
    };
    let kinds = [
        Kind::Completes,
        Kind::Fails,
        Kind::TimesOut,
        Kind::Completes,
        Kind::Killed,
    ];
    let started = Instant::now();
    let mut tally = std::collections::HashMap::new();
    for batch in 0..5 {
        let mut submitted = Vec::new();
        for i in 0..10 {
            let kind = kinds[(batch * 10 + i) % kinds.len()];
            let mut body = match kind {
                Kind::Completes => python(&format!("print({i} + 1)")),
                Kind::Fails => python("import sys\nprint('bad', file=sys.stderr)\nsys.exit(2)"),
                Kind::TimesOut => python("while True: pass"),
                Kind::Killed => python("import time\nprint('asleep')\ntime.sleep(60)"),
            };
            if kind == Kind::TimesOut {
                body["resources"] = json!({"timeout_s": 1});
            }
            let w = gv.app.submit_async(&body).await;
            submitted.push((id(&w), kind, i));
        }
        for (wid, kind, _) in &submitted {
            if *kind == Kind::Killed {
                gv.app.wait_status(wid, "running", SOON).await;
                let res = gv.app.delete(&format!("/v1/workloads/{wid}")).await;
                assert_eq!(res.status(), 200);
            }
        }
        for (wid, kind, i) in &submitted {
            let w = gv.app.wait_terminal(wid, SOON).await;
            match kind {
                Kind::Completes => {
                    assert_eq!(w["status"], "completed", "{w}");
                    assert_eq!(w["output"], i + 1, "{w}");
                }
                Kind::Fails => {
                    assert_eq!(w["status"], "failed", "{w}");
                    assert_eq!(w["exit_code"], 2, "{w}");
                }
                Kind::TimesOut => {
                    assert_eq!(w["status"], "failed", "{w}");
                    assert_eq!(w["error"], "timed out after 1s", "{w}");
                }
                Kind::Killed => assert_eq!(w["status"], "killed", "{w}"),
            }
            *tally.entry(format!("{kind:?}")).or_insert(0) += 1;
        }
    }
    eprintln!("50 mixed runs took {:?}: {tally:?}", started.elapsed());
    assert_eq!(tally.values().sum::<i32>(), 50);
    gv.assert_clean_soon().await;
    gv.wait_idle().await;
    let stats = gv.app.get_json("/v1/stats", 200).await;
    assert_eq!(stats["by_isolation"]["gvisor"], 50, "{stats}");
}

#[tokio::test]
async fn node_means_an_es_module_default_export_on_every_isolation() {
    let Some(gv) = gvisor_app("node-module", &[]).await else {
        return;
    };
    let runtimes = gv.backend("gvisor").await["capabilities"]["supported_runtimes"].clone();
    if !runtimes
        .as_array()
        .is_some_and(|r| r.contains(&json!("node")))
    {
        eprintln!("SKIPPED: the gvisor backend offers no node here: {runtimes}");
        return;
    }
    let cases = [
        (
            "export default (input) => ({ sum: input.a + input.b });",
            json!({"sum": 3}),
        ),
        (
            "export default async function (input) {\n  console.log('adding', input.a);\n  await new Promise((r) => setTimeout(r, 10));\n  return [input.a, input.b];\n}",
            json!([1, 2]),
        ),
        ("const answer = 42;\nexport default answer;", json!(42)),
    ];
    for (code, want) in cases {
        for isolation in ["isolate", "gvisor"] {
            let w = gv
                .run(
                    &json!({"runtime": "node", "isolation": isolation, "code": code,
                             "input": {"a": 1, "b": 2}, "resources": {"timeout_s": 30}}),
                )
                .await;
            let logs = gv
                .app
                .get_json(&format!("/v1/workloads/{}/logs/history", id(&w)), 200)
                .await;
            assert_eq!(w["status"], "completed", "{isolation}: {code}: {w}\n{logs}");
            assert_eq!(w["output"], want, "{isolation}: {code}");
        }
    }
    // console output is logged, never mixed into the result.
    let w = gv
        .run(&json!({"runtime": "node", "isolation": "gvisor",
                     "code": "export default (i) => { console.log('hello', i); console.error('warn'); return 'ok'; }",
                     "input": 5}))
        .await;
    assert_eq!(w["output"], "ok", "{w}");
    let h = gv
        .app
        .get_json(&format!("/v1/workloads/{}/logs/history", id(&w)), 200)
        .await;
    let lines: Vec<&str> = h["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["line"].as_str().expect("line"))
        .collect();
    assert!(
        lines.contains(&"hello 5") && lines.contains(&"warn"),
        "{lines:?}"
    );
    // A module without a default export fails on both, saying so.
    for isolation in ["isolate", "gvisor"] {
        let w = gv
            .run(&json!({"runtime": "node", "isolation": isolation,
                         "code": "export const x = 1;"}))
            .await;
        assert_eq!(w["status"], "failed", "{isolation}: {w}");
    }
    // A plain script under gvisor still reads stdin and prints its output.
    let w = gv
        .run(&json!({"runtime": "node", "isolation": "gvisor", "input": {"a": 20},
                     "code": "let s = '';\nprocess.stdin.on('data', (d) => (s += d));\nprocess.stdin.on('end', () => console.log(JSON.stringify(JSON.parse(s).a + 1)));"}))
        .await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], 21);
    gv.assert_clean_soon().await;
}
