//! The isolate backend's worker processes, seen from outside through HTTP and /proc:
//! guest code never runs in the server process; workers are confined children in a
//! memory cgroup of their own; a worker that dies fails only its workload ("worker
//! crashed: …"), is replaced, and the restart shows in /v1/backends, /v1/system/actors
//! and the metrics.

mod common;

use std::time::{Duration, Instant};

use common::TestApp;
use serde_json::{json, Value};

const SOON: Duration = Duration::from_secs(10);

async fn app_with_workers(n: usize) -> TestApp {
    common::app()
        .builtin()
        .env("VULCAN_BACKENDS__ISOLATE__MAX_CONCURRENCY", &n.to_string())
        .env("VULCAN_BACKENDS__GVISOR__ENABLED", "false")
        .env("VULCAN_BACKENDS__MICROVM__ENABLED", "false")
        .spawn()
        .await
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The app's worker processes (from /v1/system/actors), once `n` of them are ready.
async fn wait_for_workers(app: &TestApp, n: usize) -> Vec<u32> {
    let t = Instant::now();
    loop {
        let actors = app.get_json("/v1/system/actors", 200).await;
        let pids: Vec<u32> = actors["actors"]
            .as_array()
            .expect("actors")
            .iter()
            .filter(|a| {
                a["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("worker:isolate/"))
            })
            .filter(|a| a["state"] == "idle" || a["state"] == "busy")
            .filter_map(|a| a["pid"].as_u64().and_then(|p| u32::try_from(p).ok()))
            .collect();
        if pids.len() >= n {
            return pids;
        }
        assert!(t.elapsed() < SOON, "workers: {actors}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run(app: &TestApp, body: &Value) -> Value {
    let res = app.post("/v1/workloads", body).await;
    assert_eq!(res.status(), 200);
    res.json().await.expect("json")
}

fn isolate(backends: &Value) -> Value {
    backends
        .as_array()
        .expect("array")
        .iter()
        .find(|b| b["name"] == "isolate")
        .expect("isolate")
        .clone()
}

fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect()
}

#[tokio::test]
async fn no_guest_code_runs_in_the_server_process() {
    let app = app_with_workers(2).await;
    let js = run(
        &app,
        &json!({"runtime": "node", "code": "export default () => 6 * 7"}),
    )
    .await;
    assert_eq!(js["output"], 42, "{js}");
    let wasm = run(
        &app,
        &json!({"runtime": "wasm", "code": r#"(module (memory (export "memory") 1) (func (export "_start")))"#}),
    )
    .await;
    assert_eq!(wasm["status"], "completed", "{wasm}");
    // The engines' threads (the epoch ticker, the job and socket threads) live in the
    // workers: the server process has none of them.
    let names = thread_names();
    for engine_thread in ["isolate-epoch", "worker-reader", "isolate-worker"] {
        assert!(
            !names.iter().any(|n| n.starts_with(engine_thread)),
            "{engine_thread} in the server: {names:?}"
        );
    }
    // The workers are separate processes, children of the server, one per slot.
    let pids = wait_for_workers(&app, 2).await;
    assert_eq!(pids.len(), 2, "{pids:?}");
    for pid in pids {
        assert_ne!(pid, std::process::id());
        assert_eq!(parent_of(pid), Some(std::process::id()), "worker {pid}");
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
        assert_eq!(exe, std::path::PathBuf::from(common::worker_path()));
    }
}

#[tokio::test]
async fn workers_run_unprivileged_in_a_memory_cgroup_of_their_own() {
    let app = app_with_workers(1).await;
    let w = run(&app, &json!({"runtime": "node", "code": "1 + 1"})).await;
    assert_eq!(w["output"], 2);
    let pid = wait_for_workers(&app, 1).await[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    if !rustix_is_root() {
        println!("SKIPPED: the test process is not root; workers keep its user and no cgroup");
        return;
    }
    assert_eq!(field("Uid:"), "65534 65534 65534 65534", "{status}");
    assert_eq!(field("Gid:"), "65534 65534 65534 65534", "{status}");
    assert_eq!(field("Groups:"), "", "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    assert_eq!(field("CapBnd:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2", "filter mode");
    assert_eq!(field("Threads:"), "2", "job and epoch threads only");
    // Its own memory cgroup, limited to max_mem_mb + the overhead.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let line = cgroups
        .lines()
        .find(|l| l.contains("vulcan-isolate/w"))
        .unwrap_or_else(|| panic!("no worker cgroup: {cgroups}"));
    let path = line.rsplit(':').next().expect("path");
    let controllers = line.split(':').nth(1).expect("controllers");
    let limit_file = if controllers.is_empty() {
        format!("/sys/fs/cgroup{path}/memory.max")
    } else {
        format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
    };
    let limit = std::fs::read_to_string(&limit_file)
        .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/unified{path}/memory.max")))
        .expect("limit file");
    assert_eq!(limit.trim(), ((4096u64 + 256) * 1024 * 1024).to_string());
    // Its root is an empty directory, and it has a network namespace of its own.
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .expect("root")
        .flatten()
        .collect();
    assert!(root.is_empty(), "{root:?}");
    let netns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/net")).expect("netns");
    assert_ne!(netns(&pid.to_string()), netns("self"));
    let mntns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).expect("mntns");
    assert_ne!(mntns(&pid.to_string()), mntns("self"));
}

fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

async fn kill_busy_worker_with(signal: &str) -> (TestApp, Value) {
    let app = app_with_workers(1).await;
    let before = wait_for_workers(&app, 1).await;
    let w = app
        .submit_async(
            &json!({"runtime": "node", "code": "while (true) {}", "resources": {"timeout_s": 60}}),
        )
        .await;
    let id = w["id"].as_str().expect("id").to_string();
    app.wait_status(&id, "running", SOON).await;
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &before[0].to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let done = app.wait_terminal(&id, SOON).await;
    (app, done)
}

#[tokio::test]
async fn a_worker_killed_mid_workload_fails_only_that_workload_and_is_replaced() {
    let (app, done) = kill_busy_worker_with("KILL").await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"], "worker crashed: killed by SIGKILL", "{done}");
    // The server carries on with a fresh worker, and says so.
    let w = run(&app, &json!({"runtime": "node", "code": "'again'"})).await;
    assert_eq!(w["output"], "again", "{w}");
    let backend = isolate(&app.get_json("/v1/backends", 200).await);
    assert_eq!(backend["status"], "healthy", "{backend}");
    assert_eq!(backend["worker_restarts"], 1, "{backend}");
    assert_eq!(
        backend["restarts"], 0,
        "the backend actor itself did not restart"
    );
    let actors = app.get_json("/v1/system/actors", 200).await;
    let worker = actors["actors"]
        .as_array()
        .expect("actors")
        .iter()
        .find(|a| a["name"] == "worker:isolate/0")
        .expect("worker listed")
        .clone();
    assert_eq!(worker["restarts"], 1, "{worker}");
    assert!(
        worker["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("killed by SIGKILL")),
        "{worker}"
    );
    let t = Instant::now();
    loop {
        let metrics = app.get("/metrics").await.text().await.expect("text");
        if metrics.contains("vulcan_worker_restarts_total{backend=\"isolate\"} 1") {
            break;
        }
        assert!(t.elapsed() < SOON, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The crashed workload is not retried: it stays failed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = app
        .get_json(
            &format!("/v1/workloads/{}", done["id"].as_str().expect("id")),
            200,
        )
        .await;
    assert_eq!(again["status"], "failed");
}

#[tokio::test]
async fn a_worker_killed_by_seccomp_is_reported_as_such() {
    let (_app, done) = kill_busy_worker_with("SYS").await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(
        done["error"],
        "worker crashed: killed by SIGSYS: a system call outside the seccomp allowlist",
        "{done}"
    );
}

#[tokio::test]
async fn a_worker_that_died_while_idle_is_replaced_without_failing_anything() {
    let app = app_with_workers(1).await;
    let first = wait_for_workers(&app, 1).await[0];
    let w = run(&app, &json!({"runtime": "node", "code": "1"})).await;
    assert_eq!(w["status"], "completed");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    common::wait_dead(first).await;
    let w = run(&app, &json!({"runtime": "node", "code": "'next'"})).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], "next");
    let backend = isolate(&app.get_json("/v1/backends", 200).await);
    assert_eq!(backend["worker_restarts"], 1, "{backend}");
}

#[tokio::test]
async fn a_missing_worker_binary_makes_the_backend_unavailable_with_the_reason() {
    let app = common::app()
        .builtin()
        .env("VULCAN_BACKENDS__ISOLATE__MAX_CONCURRENCY", "1")
        .env(
            "VULCAN_BACKENDS__ISOLATE__WORKER_PATH",
            "/nonexistent/vulcan",
        )
        .env("VULCAN_BACKENDS__GVISOR__ENABLED", "false")
        .env("VULCAN_BACKENDS__MICROVM__ENABLED", "false")
        .spawn()
        .await;
    let t = Instant::now();
    loop {
        let backend = isolate(&app.get_json("/v1/backends", 200).await);
        if backend["status"] == "unavailable" {
            // The public reason says what is wrong without the host path (that is in
            // the server log).
            let reason = backend["reason"].as_str().expect("reason");
            assert!(
                reason.starts_with("no isolate worker can be started"),
                "{reason}"
            );
            assert!(!reason.contains("/nonexistent"), "{reason}");
            break;
        }
        assert!(t.elapsed() < SOON, "{backend}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let res = app
        .post("/v1/workloads", &json!({"runtime": "node", "code": "1"}))
        .await;
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.expect("json");
    let error = body["error"].as_str().expect("error");
    assert!(
        error.contains("no isolate worker can be started") && !error.contains("/nonexistent"),
        "{error}"
    );
}
