//! End to end through HTTP with the real `microvm` backend: QEMU's `microvm` machine
//! under TCG (software emulation: this machine kind's `/dev/kvm` is a software PVM that
//! QEMU cannot use), the installed guest kernel and agent, and the host's python.
//!
//! Each VM costs a core for a few seconds, so the tests are few and each proves several
//! things. Every app gets its own state dir and cgroup parent (the backend sweeps both
//! at start-up); the probe boot is shared by the whole test binary. Where QEMU, the
//! guest (`.ci/install-microvm.sh`) or root is missing, each test prints
//! `SKIPPED: <reason>`.

mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::sse::SseStream;
use common::TestApp;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};

/// Generous: a TCG guest takes seconds to boot, longer while other builds load the
/// two cores.
const SOON: Duration = Duration::from_secs(180);

/// A test app whose microvm backend runs under TCG, with its private state.
struct VmApp {
    app: TestApp,
    state: tempfile::TempDir,
    parent: String,
}

impl Drop for VmApp {
    fn drop(&mut self) {
        for root in cgroup_roots() {
            let _ = std::fs::remove_dir(root.join(&self.parent));
        }
    }
}

/// Boot an app with the built-in backends, the microvm backend in `accel` mode with a
/// private state dir and cgroup parent, and `env` on top; wait for its probe. Returns
/// the app and the backend's entry once the probe is done.
async fn app_with(accel: &str, name: &str, env: &[(&str, &str)]) -> (VmApp, Value) {
    let state = tempfile::Builder::new()
        .prefix("vulcan-mvm-")
        .tempdir()
        .expect("state dir");
    let parent = format!(
        "vulcan-test-mvm-{name}-{}-{}",
        std::process::id(),
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    );
    let mut builder = common::app()
        .builtin()
        .env("VULCAN_BACKENDS__MICROVM__ACCEL", accel)
        .env(
            "VULCAN_BACKENDS__MICROVM__STATE_DIR",
            &state.path().to_string_lossy(),
        )
        .env("VULCAN_BACKENDS__MICROVM__CGROUP_PARENT", &parent);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    let app = builder.spawn().await;
    let vm = VmApp { app, state, parent };
    let start = Instant::now();
    loop {
        let entry = vm.backend("microvm").await;
        let probing = entry["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("probing"));
        if !probing {
            return (vm, entry);
        }
        assert!(start.elapsed() < SOON, "probe never finished: {entry}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCG app, or `None` after a loud `SKIPPED:` line when micro-VMs cannot run here.
async fn tcg_app(name: &str, env: &[(&str, &str)]) -> Option<VmApp> {
    let (vm, entry) = app_with("tcg", name, env).await;
    if entry["status"] != "healthy" {
        eprintln!(
            "SKIPPED: microvm backend (tcg) is {} here: {}",
            entry["status"], entry["reason"]
        );
        return None;
    }
    Some(vm)
}

impl VmApp {
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

    /// Per-VM cgroup directories under this app's parent, in every hierarchy.
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

    /// Scratch dirs (and the sockets in them) left in the state dir.
    fn scratch(&self) -> Vec<String> {
        std::fs::read_dir(self.state.path().join("runs"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// QEMU processes started for this app (their command line names its state dir).
    fn qemus(&self) -> Vec<String> {
        let needle = self.state.path().to_string_lossy().into_owned();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("qemu-system") && cmdline.contains(&needle) {
                found.push(cmdline);
            }
        }
        found
    }

    /// Nothing of any run is left: no QEMU, no cgroup, no scratch dir or socket, and
    /// the backend counts nothing running.
    async fn assert_clean_soon(&self) {
        let start = Instant::now();
        loop {
            let entry = self.backend("microvm").await;
            let (q, c, s) = (self.qemus(), self.cgroups(), self.scratch());
            if q.is_empty() && c.is_empty() && s.is_empty() && entry["running"] == 0 {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "leftovers: qemu {q:?}, cgroups {c:?}, scratch {s:?}, {entry}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn cgroup_roots() -> Vec<PathBuf> {
    let base = PathBuf::from("/sys/fs/cgroup");
    if base.join("cgroup.procs").exists() {
        return vec![base];
    }
    std::fs::read_dir(&base)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("cgroup.procs").exists())
                .collect()
        })
        .unwrap_or_default()
}

fn id(w: &Value) -> String {
    w["id"].as_str().expect("id").to_string()
}

fn python(code: &str) -> Value {
    json!({"runtime": "python", "isolation": "microvm", "code": code, "resources": {"timeout_s": 120}})
}

fn error_of(w: &Value) -> &str {
    w["error"].as_str().unwrap_or("")
}

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        builder.append_data(&mut h, name, *data).expect("append");
    }
    let mut gz = builder.into_inner().expect("tar");
    gz.flush().expect("flush");
    gz.finish().expect("gz")
}

#[tokio::test]
async fn auto_accel_is_unavailable_with_the_probe_reason_where_kvm_does_not_work() {
    let (vm, entry) = app_with("auto", "auto", &[]).await;
    if entry["status"] == "healthy" {
        eprintln!("SKIPPED: KVM works on this host: {entry}");
        return;
    }
    let reason = entry["reason"].as_str().unwrap_or("");
    assert_eq!(entry["status"], "unavailable", "{entry}");
    assert!(
        reason.contains("kvm") || reason.contains("not root") || reason.contains("install"),
        "the reason names what is missing: {entry}"
    );
    assert_eq!(entry["details"]["accel"], "auto");
    assert!(entry["details"]["boot_ms"].is_null(), "{entry}");

    // auto python falls back (gvisor when it can take it, otherwise a 422 naming why);
    // explicit microvm never falls back.
    let res = vm
        .app
        .post(
            "/v1/workloads/async",
            &json!({"runtime": "python", "code": "print(1)"}),
        )
        .await;
    let status = res.status().as_u16();
    let body: Value = res.json().await.expect("json");
    match status {
        202 => assert_eq!(body["isolation"], "gvisor", "{body}"),
        422 => assert!(
            body["error"].as_str().unwrap_or("").contains("microvm"),
            "{body}"
        ),
        other => panic!("unexpected {other}: {body}"),
    }
    let res = vm.app.post("/v1/workloads", &python("print(1)")).await;
    assert_eq!(res.status().as_u16(), 422);
    let body: Value = res.json().await.expect("json");
    assert!(
        body["error"].as_str().unwrap_or("").contains(reason),
        "the 422 carries the probe's reason: {body}"
    );
}

#[tokio::test]
async fn python_sums_stdin_into_json_and_auto_prefers_the_available_microvm() {
    let Some(vm) = tcg_app("sum", &[]).await else {
        return;
    };
    let entry = vm.backend("microvm").await;
    assert_eq!(entry["details"]["accel"], "tcg", "{entry}");
    assert!(
        entry["details"]["boot_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0),
        "{entry}"
    );

    let code = "import json, os, sys\n\
                d = json.load(sys.stdin)\n\
                e = json.loads(os.environ['VULCAN_INPUT'])\n\
                print(json.dumps({'sum': d['a'] + d['b'], 'env': e == d}))\n";
    let w = vm
        .run(
            &json!({"runtime": "python", "isolation": "microvm", "code": code,
                     "input": {"a": 1, "b": 2}, "resources": {"timeout_s": 120}}),
        )
        .await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["isolation"], "microvm");
    assert_eq!(w["backend"], "microvm");
    assert_eq!(w["output"], json!({"sum": 3, "env": true}));
    assert_eq!(w["exit_code"], 0);

    // auto: python prefers microvm while it is available.
    let w = vm
        .run(&json!({"runtime": "python", "code": "print(6 * 7)", "resources": {"timeout_s": 120}}))
        .await;
    assert_eq!(w["requested_isolation"], "auto");
    assert_eq!(w["isolation"], "microvm", "{w}");
    assert_eq!(w["output"], 42);
    vm.assert_clean_soon().await;
}

/// The micro-VM backend holds the global `max_output_bytes` (it has no cap of its
/// own): above it the workload fails clearly and keeps no output; below it the output
/// is whole; the VM is gone either way.
#[tokio::test]
async fn an_output_above_the_global_cap_fails_and_keeps_nothing() {
    let Some(vm) = tcg_app("output-cap", &[("VULCAN_MAX_OUTPUT_BYTES", "1000")]).await else {
        return;
    };
    let w = vm
        .run(&python("import sys\nsys.stdout.write('x' * 5000)\n"))
        .await;
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(error_of(&w), "output exceeds 1000 bytes", "{w}");
    assert_eq!(w["output"], Value::Null, "{w}");
    assert_eq!(vm.app.get_json("/healthz", 200).await["status"], "ok");
    let w = vm.run(&python("print('y' * 900)\n")).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], format!("{}\n", "y".repeat(900)));
    vm.assert_clean_soon().await;
}

#[tokio::test]
async fn an_archive_with_two_modules_ends_with_its_exit_code() {
    let Some(vm) = tcg_app("archive", &[]).await else {
        return;
    };
    let archive = tar_gz(&[
        (
            "main.py",
            b"import sys\nfrom pkg import helper\nprint(helper.greet('vm'))\nsys.exit(3)\n",
        ),
        ("pkg/__init__.py", b""),
        ("pkg/helper.py", b"def greet(n):\n    return 'hello ' + n\n"),
    ]);
    let w = vm
        .run(&json!({"runtime": "python", "isolation": "microvm",
                     "code_archive": base64::engine::general_purpose::STANDARD.encode(archive),
                     "resources": {"timeout_s": 120}}))
        .await;
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(w["exit_code"], 3);
    assert_eq!(error_of(&w), "exited with code 3");
    assert_eq!(w["output"], "hello vm\n");
    vm.assert_clean_soon().await;
}

#[tokio::test]
async fn log_lines_arrive_live_over_sse_before_the_end() {
    let Some(vm) = tcg_app("sse", &[]).await else {
        return;
    };
    let w = vm
        .app
        .submit_async(&python(
            "import sys, time\n\
             print('first')\n\
             time.sleep(3)\n\
             print('on stderr', file=sys.stderr)\n\
             sys.stderr.flush()\n\
             time.sleep(0.3)\n\
             print('second')\n",
        ))
        .await;
    let wid = id(&w);
    let mut sse = SseStream::open(&vm.app, &wid).await;
    let first = sse.next_event(SOON).await.expect("first event");
    assert_eq!(first.data, "first");
    let now = vm.app.get_json(&format!("/v1/workloads/{wid}"), 200).await;
    assert_eq!(now["status"], "running", "the line must arrive live: {now}");
    let (rest, done) = sse.until_done(SOON).await;
    assert_eq!(done, "completed");
    let rest: Vec<String> = rest.into_iter().map(|e| e.data).collect();
    assert_eq!(rest, ["on stderr", "second"]);
    let end = vm.app.get_json(&format!("/v1/workloads/{wid}"), 200).await;
    assert_eq!(end["output"], "first\nsecond\n");
    vm.assert_clean_soon().await;
}

/// The hostile class: a busy loop, an allocation past the limit, a sleeper that is
/// killed. Each fails clearly, the server is fine, and the next workload runs at once.
#[tokio::test]
async fn a_busy_loop_times_out_a_memory_hog_fails_and_a_sleeper_is_killed() {
    let Some(vm) = tcg_app("hostile", &[]).await else {
        return;
    };
    // Timeout: the clock includes the boot, so leave it room.
    let mut body = python("while True:\n    pass\n");
    body["resources"] = json!({"timeout_s": 15});
    let started = Instant::now();
    let w = vm.run(&body).await;
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(error_of(&w), "timed out after 15s");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "{:?}",
        started.elapsed()
    );

    // Memory: 64 MiB allowed, 128 MiB asked for.
    let mut body = python("x = bytearray(128 * 1024 * 1024)\nprint(len(x))\n");
    body["resources"] = json!({"mem_mb": 64, "timeout_s": 120});
    let w = vm.run(&body).await;
    assert_eq!(w["status"], "failed", "{w}");
    // Either the guest kernel refuses the mapping (python's MemoryError) or the
    // workload's cgroup OOM-kills it; both end the workload, not the VM or the host.
    if !error_of(&w).starts_with("out of memory") {
        assert_eq!(error_of(&w), "exited with code 1", "{w}");
        let logs = vm
            .app
            .get_json(&format!("/v1/workloads/{}/logs/history", id(&w)), 200)
            .await;
        assert!(logs.to_string().contains("MemoryError"), "{logs}");
    }
    assert_ne!(
        w["output"], "134217728\n",
        "the allocation must not succeed: {w}"
    );

    // Kill: a sleeper that has visibly started.
    let w = vm
        .app
        .submit_async(&python(
            "import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n",
        ))
        .await;
    let wid = id(&w);
    let mut sse = SseStream::open(&vm.app, &wid).await;
    let first = sse.next_event(SOON).await.expect("first line");
    assert_eq!(first.data, "sleeping");
    let killed_at = Instant::now();
    let res = vm.app.delete(&format!("/v1/workloads/{wid}")).await;
    assert_eq!(res.status().as_u16(), 200);
    let w = vm.app.wait_terminal(&wid, SOON).await;
    assert_eq!(w["status"], "killed", "{w}");
    assert!(
        killed_at.elapsed() < Duration::from_secs(20),
        "{:?}",
        killed_at.elapsed()
    );
    vm.assert_clean_soon().await;

    // The server is fine and the next workload runs at once.
    let w = vm.run(&python("print('next')")).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], "next\n");
    let health = vm.app.get_json("/healthz", 200).await;
    assert_eq!(health["status"], "ok");
}

#[tokio::test]
async fn the_guest_has_only_lo_a_read_only_usr_and_nothing_of_the_host() {
    let Some(vm) = tcg_app("confine", &[]).await else {
        return;
    };
    let code = r#"
import json, os
out = {}
out["ifaces"] = sorted(os.listdir("/sys/class/net"))
try:
    open("/usr/vulcan-probe", "w")
    out["usr"] = "writable"
except OSError as e:
    out["usr"] = e.strerror
with open("/work/scratch", "w") as f:
    f.write("ok")
out["work"] = open("/work/scratch").read()
out["uid"] = os.getuid()
out["env"] = sorted(k for k in os.environ if k not in ("VULCAN_INPUT",))
out["etc"] = sorted(os.listdir("/etc")) if os.path.isdir("/etc") else []
out["routes"] = open("/proc/net/route").read().splitlines()[1:]
print(json.dumps(out))
"#;
    let w = vm.run(&python(code)).await;
    assert_eq!(w["status"], "completed", "{w}");
    let o = &w["output"];
    assert_eq!(o["ifaces"], json!(["lo"]), "{o}");
    assert_eq!(o["usr"], "Read-only file system", "{o}");
    assert_eq!(o["work"], "ok");
    assert_ne!(o["uid"], 0, "the workload is not root in the guest: {o}");
    assert_eq!(o["etc"], json!([]), "no host /etc: {o}");
    assert_eq!(o["routes"], json!([]), "no route anywhere: {o}");
    for key in o["env"].as_array().expect("env") {
        let k = key.as_str().unwrap_or("");
        assert!(
            ["PATH", "HOME", "LANG", "TMPDIR", "LC_CTYPE"].contains(&k),
            "host environment leaked: {k} in {o}"
        );
    }
    vm.assert_clean_soon().await;
}

#[tokio::test]
async fn no_leftovers_after_ten_mixed_runs() {
    let Some(vm) = tcg_app("mixed", &[]).await else {
        return;
    };
    let mut ids = Vec::new();
    for i in 0..10 {
        let body = match i % 5 {
            0 => python("print('ok')"),
            1 => python("import sys\nsys.exit(4)"),
            2 => {
                let mut b = python("import time\ntime.sleep(600)");
                b["resources"] = json!({"timeout_s": 10});
                b
            }
            3 => python("import time\nprint('x', flush=True)\ntime.sleep(600)"),
            _ => python("raise SystemExit('boom')"),
        };
        ids.push((i, id(&vm.app.submit_async(&body).await)));
    }
    // Kill the sleepers as soon as they print (or while still queued).
    for (i, wid) in &ids {
        if i % 5 == 3 {
            let res = vm.app.delete(&format!("/v1/workloads/{wid}")).await;
            assert_eq!(res.status().as_u16(), 200);
        }
    }
    for (i, wid) in &ids {
        let w = vm.app.wait_terminal(wid, Duration::from_secs(600)).await;
        let expected = match i % 5 {
            0 => "completed",
            3 => "killed",
            _ => "failed",
        };
        assert_eq!(w["status"], expected, "run {i}: {w}");
    }
    vm.assert_clean_soon().await;
}
