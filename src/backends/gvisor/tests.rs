//! End-to-end tests of the gvisor backend through the [`Backend`] trait, on the real
//! `runsc`. Where runsc is missing or the tests do not run as root, each test prints a
//! `SKIPPED:` line and returns.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use flate2::Compression;

use super::*;
use crate::backends::LogSink;

/// A backend with its own state dir and cgroup parent, so tests can run in parallel.
struct Harness {
    backend: GvisorBackend,
    state: tempfile::TempDir,
    cfg: GvisorConfig,
}

impl Drop for Harness {
    fn drop(&mut self) {
        cgroup::remove_parent_if_empty(&self.cfg.cgroup_parent);
    }
}

impl Harness {
    fn start(name: &str) -> Option<Self> {
        let state = tempfile::Builder::new()
            .prefix("vulcan-gvisor-test-")
            .tempdir()
            .unwrap();
        let cfg = GvisorConfig {
            state_dir: state.path().to_path_buf(),
            cgroup_parent: format!("vulcan-test-{name}-{}", std::process::id()),
            ..default_config()
        };
        Self::with_config(cfg, state)
    }

    fn with_config(cfg: GvisorConfig, state: tempfile::TempDir) -> Option<Self> {
        let backend = GvisorBackend::new(&cfg).unwrap();
        if let BackendHealth::Unavailable { detail: reason, .. } = backend.health() {
            eprintln!("SKIPPED: gvisor backend unavailable: {reason}");
            return None;
        }
        Some(Self {
            backend,
            state,
            cfg,
        })
    }

    fn has(&self, runtime: Runtime) -> bool {
        let ok = self
            .backend
            .capabilities()
            .supported_runtimes
            .contains(&runtime);
        if !ok {
            eprintln!("SKIPPED: runtime {runtime} not installed under /usr");
        }
        ok
    }

    fn bundles(&self) -> Vec<String> {
        fs::read_dir(self.state.path().join("bundles"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Bundles, cgroup dirs and runsc containers still present.
    fn leftovers(&self) -> (Vec<String>, Vec<PathBuf>, Vec<String>) {
        (
            self.bundles(),
            cgroup::leaves(&self.cfg.cgroup_parent),
            self.backend.inner.runsc.list_blocking(),
        )
    }

    fn assert_clean(&self) {
        let (bundles, cgroups, containers) = self.leftovers();
        assert!(bundles.is_empty(), "bundles left: {bundles:?}");
        assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
        assert!(containers.is_empty(), "containers left: {containers:?}");
    }
}

/// Log lines with their arrival times.
type Recorded = Arc<Mutex<Vec<(Instant, String)>>>;

/// A sink recording each line with its arrival time.
fn recording_sink() -> (LogSink, Recorded) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    let sink = LogSink::new(move |s| l.lock().unwrap().push((Instant::now(), s)));
    (sink, lines)
}

fn spec(runtime: Runtime, payload: Payload, input: &str) -> WorkloadSpec {
    WorkloadSpec {
        id: WorkloadId::new(),
        runtime,
        isolation: Isolation::Gvisor,
        payload,
        input: input.as_bytes().to_vec(),
        cpus: 1,
        mem_mb: 128,
        timeout: Duration::from_secs(60),
        max_output_bytes: crate::config::Config::load_from(std::collections::HashMap::new())
            .expect("embedded defaults")
            .max_output_bytes,
    }
}

fn python(code: &str) -> WorkloadSpec {
    spec(Runtime::Python, Payload::Code(code.into()), "null")
}

async fn run(h: &Harness, spec: WorkloadSpec) -> Result<WorkloadResult, BackendError> {
    let ctx = ExecContext::new(LogSink::discard(), spec.timeout);
    let id = spec.id;
    let result = h.backend.execute(spec, ctx).await;
    h.backend.cleanup(id).await;
    result
}

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, *data).unwrap();
    }
    let mut gz = builder.into_inner().unwrap();
    gz.flush().unwrap();
    gz.finish().unwrap()
}

/// A tar.gz with one raw (unchecked) entry, for hostile names.
fn hostile_tar_gz(name: &str, kind: tar::EntryType, link: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let mut main = tar::Header::new_gnu();
    main.set_size(2);
    main.set_mode(0o644);
    main.set_cksum();
    builder
        .append_data(&mut main, "main.py", &b"1\n"[..])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    let data: &[u8] = if kind == tar::EntryType::Regular {
        b"owned"
    } else {
        b""
    };
    h.set_size(data.len() as u64);
    let old = h.as_old_mut();
    old.name = [0; 100];
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname = [0; 100];
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    builder.append(&h, data).unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

#[tokio::test]
async fn python_sums_stdin_into_json_output() {
    let Some(h) = Harness::start("sum") else {
        return;
    };
    let code = "import json, os, sys\n\
                data = json.load(sys.stdin)\n\
                assert json.loads(os.environ['VULCAN_INPUT']) == data\n\
                print(json.dumps({'sum': sum(data)}))\n";
    let s = spec(Runtime::Python, Payload::Code(code.into()), "[1, 2, 39]");
    let result = run(&h, s).await.unwrap();
    assert_eq!(result.error, None, "{result:?}");
    assert_eq!(result.exit_code, Some(0));
    let value: serde_json::Value = serde_json::from_slice(&result.output).unwrap();
    assert_eq!(value, serde_json::json!({"sum": 42}));
    h.assert_clean();
}

#[tokio::test]
async fn archive_with_two_modules_reports_exit_code_3() {
    let Some(h) = Harness::start("archive") else {
        return;
    };
    let archive = tar_gz(&[
        (
            "main.py",
            b"import sys\nimport helper\nprint(helper.double(21))\nsys.exit(3)\n",
        ),
        ("helper.py", b"def double(x):\n    return 2 * x\n"),
    ]);
    let s = spec(Runtime::Python, Payload::Archive(archive), "null");
    let result = run(&h, s).await.unwrap();
    assert_eq!(result.exit_code, Some(3));
    assert_eq!(result.output, b"42\n");
    assert!(
        result
            .error
            .as_deref()
            .is_some_and(|e| e.contains("exited with code 3")),
        "{result:?}"
    );
    h.assert_clean();
}

#[tokio::test]
async fn archive_traversal_is_rejected_and_nothing_is_written_outside() {
    let Some(h) = Harness::start("traversal") else {
        return;
    };
    let outside = h.state.path().join("escaped");
    let outside_abs = outside.to_string_lossy().into_owned();
    let cases = [
        (
            "parent dir",
            hostile_tar_gz("../../escaped", tar::EntryType::Regular, ""),
        ),
        (
            "absolute path",
            hostile_tar_gz(&outside_abs, tar::EntryType::Regular, ""),
        ),
        (
            "symlink out",
            hostile_tar_gz("l", tar::EntryType::Symlink, "/etc"),
        ),
        (
            "relative symlink out",
            hostile_tar_gz("l", tar::EntryType::Symlink, "../../.."),
        ),
        (
            "hard link out",
            hostile_tar_gz("l", tar::EntryType::Link, "/etc/passwd"),
        ),
        ("device", hostile_tar_gz("d", tar::EntryType::Char, "")),
    ];
    for (what, archive) in cases {
        let s = spec(Runtime::Python, Payload::Archive(archive), "null");
        let err = run(&h, s).await.unwrap_err();
        assert!(
            matches!(err, BackendError::InvalidPayload(_)),
            "{what}: {err:?}"
        );
        assert!(!outside.exists(), "{what}: wrote outside the work dir");
    }
    let missing_entry = tar_gz(&[("other.py", b"print(1)\n")]);
    let err = run(
        &h,
        spec(Runtime::Python, Payload::Archive(missing_entry), "null"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidPayload(ref m) if m.contains("main.py")),
        "{err:?}"
    );
    h.assert_clean();
}

#[tokio::test]
async fn log_lines_reach_the_sink_live_and_in_order() {
    let Some(h) = Harness::start("logs") else {
        return;
    };
    let code = "import sys, time\n\
                print('out 1')\n\
                time.sleep(0.2)\n\
                print('err 1', file=sys.stderr)\n\
                time.sleep(0.2)\n\
                print('out 2')\n\
                time.sleep(1.5)\n\
                print('out 3')\n";
    let (sink, lines) = recording_sink();
    let s = python(code);
    let id = s.id;
    let ctx = ExecContext::new(sink, s.timeout);
    let result = h.backend.execute(s, ctx).await.unwrap();
    let finished = Instant::now();
    h.backend.cleanup(id).await;
    assert_eq!(result.exit_code, Some(0), "{result:?}");
    assert_eq!(result.output, b"out 1\nout 2\nout 3\n");
    let lines = lines.lock().unwrap();
    let texts: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(texts, ["out 1", "err 1", "out 2", "out 3"]);
    // "out 2" was printed 1.5 s before the end: it must have arrived well before.
    let early = finished.duration_since(lines[2].0);
    assert!(
        early >= Duration::from_millis(1000),
        "line 2 arrived late ({early:?} before the end)"
    );
    h.assert_clean();
}

#[tokio::test]
async fn cancelling_a_busy_loop_returns_promptly_and_leaves_nothing() {
    let Some(h) = Harness::start("cancel") else {
        return;
    };
    let s = python("while True:\n    pass\n");
    let ctx = ExecContext::new(LogSink::discard(), s.timeout);
    let cancel = ctx.cancel.clone();
    let fired = Arc::new(Mutex::new(None::<Instant>));
    let fired2 = fired.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        *fired2.lock().unwrap() = Some(Instant::now());
        cancel.cancel();
    });
    let result = h.backend.execute(s, ctx).await;
    let took = fired.lock().unwrap().unwrap().elapsed();
    assert_eq!(result, Err(BackendError::Cancelled));
    // A liveness bound (the loop never ends and the deadline is 60 s away), generous
    // enough for a loaded CI machine: the figure itself is in the benchmark, not here.
    assert!(took < Duration::from_secs(15), "cancel took {took:?}");
    // execute itself already removed everything, before cleanup is called.
    h.assert_clean();
}

#[tokio::test]
async fn the_deadline_stops_a_busy_loop() {
    let Some(h) = Harness::start("deadline") else {
        return;
    };
    let mut s = python("while True:\n    pass\n");
    s.timeout = Duration::from_secs(2);
    let started = Instant::now();
    let result = run(&h, s).await;
    assert_eq!(result, Err(BackendError::Cancelled));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    h.assert_clean();
}

#[tokio::test]
async fn killing_a_sleeping_workload_stops_it() {
    let Some(h) = Harness::start("kill") else {
        return;
    };
    let s = python("import time\nprint('sleeping')\ntime.sleep(60)\n");
    let (sink, lines) = recording_sink();
    let ctx = ExecContext::new(sink, s.timeout);
    let cancel = ctx.cancel.clone();
    let watched = lines.clone();
    tokio::spawn(async move {
        // Kill once the workload is really running.
        while watched.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
    });
    let started = Instant::now();
    let id = s.id;
    let result = h.backend.execute(s, ctx).await;
    h.backend.cleanup(id).await;
    assert_eq!(result, Err(BackendError::Cancelled));
    assert!(started.elapsed() < Duration::from_secs(10));
    h.assert_clean();
}

#[tokio::test]
async fn a_64_mib_limit_stops_a_400_mb_allocation() {
    let Some(h) = Harness::start("oom") else {
        return;
    };
    let mut s = python("x = b'x' * (400 * 1024 * 1024)\nprint(len(x))\n");
    s.mem_mb = 64;
    let result = run(&h, s).await.unwrap();
    eprintln!("400 MB under 64 MiB: {result:?}");
    assert_ne!(result.exit_code, Some(0), "{result:?}");
    assert!(result.error.is_some(), "{result:?}");
    assert!(result.output.is_empty(), "{result:?}");
    // The backend is still fine afterwards.
    let after = run(&h, python("print('still here')\n")).await.unwrap();
    assert_eq!(after.output, b"still here\n");
    h.assert_clean();
}

#[tokio::test]
async fn the_sandbox_has_no_network_secrets_host_env_or_writable_runtime() {
    let Some(h) = Harness::start("confine") else {
        return;
    };
    let code = r#"
import json, os, socket
r = {}
def attempt(name, f):
    try:
        f()
        r[name] = "allowed"
    except Exception as e:
        r[name] = "denied: " + type(e).__name__
def connect():
    s = socket.create_connection(("1.1.1.1", 53), timeout=2)
    s.close()
attempt("network", connect)
attempt("dns", lambda: socket.getaddrinfo("example.com", 80))
attempt("shadow", lambda: open("/etc/shadow").read())
attempt("write_usr", lambda: open("/usr/vulcan-probe", "w").write("x"))
attempt("write_bin", lambda: open("/usr/bin/vulcan-probe", "w").write("x"))
attempt("write_work", lambda: open("/work/probe", "w").write("x"))
attempt("write_tmp", lambda: open("/tmp/probe", "w").write("x"))
r["env"] = sorted(os.environ)
r["uid"] = os.getuid()
r["root_home"] = os.path.exists("/root")
r["etc"] = sorted(os.listdir("/etc"))
print(json.dumps(r))
"#;
    let result = run(&h, python(code)).await.unwrap();
    assert_eq!(result.exit_code, Some(0), "{result:?}");
    let r: serde_json::Value = serde_json::from_slice(&result.output).unwrap();
    for denied in ["network", "dns", "shadow", "write_usr", "write_bin"] {
        assert!(
            r[denied].as_str().unwrap().starts_with("denied"),
            "{denied}: {r}"
        );
    }
    assert_eq!(r["write_work"], "allowed", "{r}");
    assert_eq!(r["write_tmp"], "allowed", "{r}");
    assert_eq!(r["uid"], 65534);
    assert_eq!(r["root_home"], false);
    assert!(
        !r["etc"].as_array().unwrap().contains(&"shadow".into()),
        "{r}"
    );
    let allowed = ["HOME", "LANG", "LC_CTYPE", "PATH", "TMPDIR", "VULCAN_INPUT"];
    for key in r["env"].as_array().unwrap() {
        assert!(
            allowed.contains(&key.as_str().unwrap()),
            "host env leaked: {key}"
        );
    }
    h.assert_clean();
}

#[tokio::test]
async fn many_threads_hit_the_process_limit() {
    let state = tempfile::tempdir().unwrap();
    let cfg = GvisorConfig {
        state_dir: state.path().to_path_buf(),
        cgroup_parent: format!("vulcan-test-nproc-{}", std::process::id()),
        max_processes: 32,
        ..default_config()
    };
    let Some(h) = Harness::with_config(cfg, state) else {
        return;
    };
    let code = "import threading, time\n\
                n = 0\n\
                try:\n\
                \x20   for _ in range(200):\n\
                \x20       threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n\
                \x20       n += 1\n\
                except RuntimeError:\n\
                \x20   pass\n\
                print(n)\n";
    let result = run(&h, python(code)).await.unwrap();
    let started: u32 = String::from_utf8_lossy(&result.output)
        .trim()
        .parse()
        .unwrap();
    eprintln!("threads started under RLIMIT_NPROC=32: {started}");
    assert!(
        started < 32,
        "started {started} threads with RLIMIT_NPROC=32"
    );
    h.assert_clean();
}

#[tokio::test]
async fn memory_and_cpu_limits_sit_in_a_cgroup_unique_to_the_run() {
    let Some(h) = Harness::start("cgroup") else {
        return;
    };
    let mut s = python("import time\nprint('up')\ntime.sleep(3)\n");
    s.mem_mb = 96;
    s.cpus = 2;
    let leaf = Inner::container_id(s.id);
    let (sink, lines) = recording_sink();
    let ctx = ExecContext::new(sink, s.timeout);
    let id = s.id;
    let task = tokio::spawn(h.backend.execute(s, ctx));
    let waited = Instant::now();
    while lines.lock().unwrap().is_empty() && waited.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read = |file: &str| {
        cgroup::hierarchy_roots().into_iter().find_map(|root| {
            fs::read_to_string(root.join(&h.cfg.cgroup_parent).join(&leaf).join(file)).ok()
        })
    };
    let memory = read("memory.limit_in_bytes").or_else(|| read("memory.max"));
    let cpu = read("cpu.cfs_quota_us").or_else(|| read("cpu.max"));
    assert_eq!(
        memory.as_deref().map(str::trim),
        Some("100663296"),
        "memory limit"
    );
    let cpu = cpu.unwrap_or_default();
    assert!(
        cpu.trim() == "200000" || cpu.starts_with("200000 "),
        "cpu quota {cpu:?}"
    );
    task.await.unwrap().unwrap();
    h.backend.cleanup(id).await;
    h.assert_clean();
}

#[tokio::test]
async fn files_beyond_the_size_limit_cannot_be_written() {
    let state = tempfile::tempdir().unwrap();
    let cfg = GvisorConfig {
        state_dir: state.path().to_path_buf(),
        cgroup_parent: format!("vulcan-test-fsize-{}", std::process::id()),
        max_file_mb: 1,
        ..default_config()
    };
    let Some(h) = Harness::with_config(cfg, state) else {
        return;
    };
    let code = "try:\n\
                \x20   open('/work/big', 'wb').write(b'x' * (2 * 1024 * 1024))\n\
                \x20   print('written')\n\
                except OSError as e:\n\
                \x20   print('refused', e.errno)\n";
    let result = run(&h, python(code)).await.unwrap();
    let text = String::from_utf8_lossy(&result.output).into_owned();
    assert!(text.starts_with("refused"), "{result:?}");
    h.assert_clean();
}

#[tokio::test]
async fn go_and_node_run_when_installed() {
    let Some(h) = Harness::start("langs") else {
        return;
    };
    if h.has(Runtime::Node) {
        let code = "let s = '';\n\
                    process.stdin.on('data', d => s += d);\n\
                    process.stdin.on('end', () => console.log(JSON.stringify(JSON.parse(s).a * 2)));\n";
        let mut s = spec(Runtime::Node, Payload::Code(code.into()), r#"{"a": 21}"#);
        s.mem_mb = 128;
        let result = run(&h, s).await.unwrap();
        eprintln!("node: {} ms", result.duration_ms);
        assert_eq!(result.error, None, "node: {result:?}");
        assert_eq!(result.output, b"42\n");
    }
    if h.has(Runtime::Go) {
        let code = "package main\n\
                    import (\"encoding/json\"; \"fmt\"; \"os\")\n\
                    func main() {\n\
                    \tvar xs []int\n\
                    \tjson.NewDecoder(os.Stdin).Decode(&xs)\n\
                    \tt := 0\n\
                    \tfor _, x := range xs { t += x }\n\
                    \tfmt.Println(t)\n\
                    }\n";
        let mut s = spec(Runtime::Go, Payload::Code(code.into()), "[40, 2]");
        // The compiler and linker need more than the 128 MiB default.
        s.mem_mb = 512;
        let result = run(&h, s).await.unwrap();
        eprintln!("go run: {} ms", result.duration_ms);
        assert_eq!(result.error, None, "go: {result:?}");
        assert_eq!(result.output, b"42\n");
    }
    h.assert_clean();
}

#[tokio::test]
async fn oci_needs_an_image_store() {
    let state = tempfile::tempdir().unwrap();
    let cfg = GvisorConfig {
        state_dir: state.path().to_path_buf(),
        cgroup_parent: format!("vulcan-test-oci-{}", std::process::id()),
        ..default_config()
    };
    let backend = GvisorBackend::new(&cfg).unwrap();
    assert!(!backend
        .capabilities()
        .supported_runtimes
        .contains(&Runtime::Oci));
    let s = spec(
        Runtime::Oci,
        Payload::Image {
            reference: "busybox".into(),
            command: None,
        },
        "null",
    );
    let err = backend
        .execute(
            s,
            ExecContext::new(LogSink::discard(), Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, BackendError::Unsupported(ref m) if m.contains("needs an image store")),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_runsc_makes_the_backend_unavailable() {
    let state = tempfile::tempdir().unwrap();
    let cfg = GvisorConfig {
        state_dir: state.path().to_path_buf(),
        runsc_path: "/nonexistent/runsc".into(),
        ..default_config()
    };
    let backend = GvisorBackend::new(&cfg).unwrap();
    // The public reason names what is missing, never the host path; the detail has it.
    assert!(
        matches!(backend.health(), BackendHealth::Unavailable { ref reason, ref detail }
            if reason.contains("runsc") && !reason.contains("/nonexistent")
                && detail.contains("/nonexistent/runsc")),
        "{:?}",
        backend.health()
    );
    assert_eq!(backend.capabilities().name, "gvisor");
    let err = backend
        .execute(
            python("print(1)"),
            ExecContext::new(LogSink::discard(), Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
    // cleanup of an unknown id is a no-op.
    backend.cleanup(WorkloadId::new()).await;
}

/// The embedded defaults of `[backends.gvisor]`.
fn default_config() -> GvisorConfig {
    crate::config::Config::defaults().unwrap().backends.gvisor
}

#[tokio::test]
async fn no_leftovers_after_a_batch_of_mixed_runs() {
    let Some(h) = Harness::start("batch") else {
        return;
    };
    let mut ids = Vec::new();
    let mut specs = vec![
        python("print('ok')\n"),
        python("import sys\nsys.exit(5)\n"),
        python("raise ValueError('boom')\n"),
        spec(
            Runtime::Python,
            Payload::Archive(hostile_tar_gz("../x", tar::EntryType::Regular, "")),
            "null",
        ),
        spec(
            Runtime::Python,
            Payload::Archive(b"not an archive".to_vec()),
            "null",
        ),
    ];
    let mut oom = python("x = b'x' * (400 * 1024 * 1024)\n");
    oom.mem_mb = 64;
    specs.push(oom);
    let mut slow = python("import time\ntime.sleep(30)\n");
    slow.timeout = Duration::from_secs(1);
    specs.push(slow);
    // Two at a time, like a busy server.
    for pair in specs.chunks(2) {
        let mut futures = Vec::new();
        for s in pair {
            ids.push(s.id);
            let ctx = ExecContext::new(LogSink::discard(), s.timeout);
            futures.push(h.backend.execute(s.clone(), ctx));
        }
        for f in futures {
            let _ = f.await;
        }
    }
    h.assert_clean();
    for id in ids {
        h.backend.cleanup(id).await;
        h.backend.cleanup(id).await;
    }
    h.assert_clean();
}

#[tokio::test]
async fn start_up_removes_what_a_crashed_server_left() {
    let Some(h) = Harness::start("crash") else {
        return;
    };
    let s = python("import time\nprint('up')\ntime.sleep(60)\n");
    let (sink, lines) = recording_sink();
    let ctx = ExecContext::new(sink, s.timeout);
    let task = tokio::spawn(h.backend.execute(s, ctx));
    let waited = Instant::now();
    while lines.lock().unwrap().is_empty() && waited.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A "crash": the execution is dropped without its cleanup.
    task.abort();
    let _ = task.await;
    let stale_cgroup = cgroup::hierarchy_roots()
        .into_iter()
        .next()
        .map(|root| root.join(&h.cfg.cgroup_parent).join("vulcan-stale"));
    if let Some(dir) = &stale_cgroup {
        fs::create_dir_all(dir).unwrap();
    }
    fs::create_dir_all(h.state.path().join("bundles/vulcan-stale/rootfs")).unwrap();
    let (bundles, _, containers) = h.leftovers();
    assert!(!bundles.is_empty() && !containers.is_empty());

    // An actor restart within the same process leaves running work alone...
    let rebuilt = GvisorBackend::new(&h.cfg).unwrap();
    assert_eq!(rebuilt.health(), BackendHealth::Healthy);
    assert!(
        !h.leftovers().2.is_empty(),
        "a rebuild in-process must not sweep"
    );
    // ...a new server process sweeps everything.
    forget_sweep(&h.cfg.state_dir);
    let restarted = GvisorBackend::new(&h.cfg).unwrap();
    assert_eq!(restarted.health(), BackendHealth::Healthy);
    h.assert_clean();
}

/// Not a test of behaviour: prints p50 of a python hello through the backend and of a
/// bare `runsc run` of the same kind of bundle. Run with `--ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn bench_python_hello() {
    let Some(h) = Harness::start("bench") else {
        return;
    };
    let runs = 10;
    let mut backend_ms = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let r = run(&h, python("print('hello')\n")).await.unwrap();
        assert_eq!(r.output, b"hello\n");
        backend_ms.push(t.elapsed().as_millis());
    }
    // The same bundle, prepared once, run bare.
    let s = python("print('hello')\n");
    let id = Inner::container_id(s.id);
    let inner = h.backend.inner.clone();
    let layout = inner.prepare(&s, &id).unwrap();
    let mut bare_ms = Vec::new();
    for i in 0..runs {
        let name = format!("{id}-{i}");
        let t = Instant::now();
        let out = std::process::Command::new(&inner.runsc.bin)
            .args([
                "--root",
                &inner.runsc.root.to_string_lossy(),
                "--network=none",
                "run",
                "--bundle",
            ])
            .arg(&layout.dir)
            .arg(&name)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        bare_ms.push(t.elapsed().as_millis());
        assert_eq!(out.stdout, b"hello\n");
    }
    inner.clone().teardown(id).await;
    backend_ms.sort();
    bare_ms.sort();
    eprintln!(
        "python hello p50: backend {} ms, bare runsc run {} ms (runs: backend {backend_ms:?}, bare {bare_ms:?})",
        backend_ms[runs / 2],
        bare_ms[runs / 2]
    );
}
