//! A test app whose gvisor backend runs python, with its own state dir and cgroup
//! parent (the backend sweeps leftovers of both at start-up, so sharing them with
//! another test app would kill its sandboxes).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::TestApp;

/// The app and what it owns; dropping it removes the (empty) cgroup parent.
pub struct PythonApp {
    /// The running app (built-in backends).
    pub app: TestApp,
    _state: tempfile::TempDir,
    parent: String,
}

impl Drop for PythonApp {
    fn drop(&mut self) {
        for root in cgroup_roots() {
            let _ = std::fs::remove_dir(root.join(&self.parent));
        }
    }
}

/// Boot the built-in backends with a private gvisor state; `None`, after a loud
/// `SKIPPED:` line naming `test`, when gvisor cannot run python on this host.
pub async fn python_app(test: &str) -> Option<PythonApp> {
    let state = tempfile::Builder::new()
        .prefix("vulcan-gvisor-cli-")
        .tempdir()
        .expect("state dir");
    let parent = format!(
        "vulcan-test-cli-{}-{}",
        std::process::id(),
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    );
    let app = super::app()
        .builtin()
        .env(
            "VULCAN_BACKENDS__GVISOR__STATE_DIR",
            &state.path().to_string_lossy(),
        )
        .env("VULCAN_BACKENDS__GVISOR__CGROUP_PARENT", &parent)
        .spawn()
        .await;
    let all = app.get_json("/v1/backends", 200).await;
    let entry = all
        .as_array()
        .and_then(|a| a.iter().find(|b| b["name"] == "gvisor"))
        .cloned()
        .unwrap_or(Value::Null);
    let python = entry["capabilities"]["supported_runtimes"]
        .as_array()
        .is_some_and(|r| r.contains(&json!("python")));
    if entry["status"] != "healthy" || !python {
        eprintln!(
            "SKIPPED: {test}: the gvisor backend cannot run python here: {}",
            entry
        );
        return None;
    }
    Some(PythonApp {
        app,
        _state: state,
        parent,
    })
}

/// Removes an (empty) per-app cgroup parent when dropped.
pub struct CgroupParent(String);

impl Drop for CgroupParent {
    fn drop(&mut self) {
        for root in cgroup_roots() {
            let _ = std::fs::remove_dir(root.join(&self.0));
        }
    }
}

/// An app whose gvisor backend runs go, on a gvisor state dir the caller owns (so a
/// second app can boot on what the first one left).
pub struct GoApp {
    /// The running app (built-in backends).
    pub app: TestApp,
    /// Dropped after the app: its cgroup parent.
    pub parent: CgroupParent,
}

/// Boot the built-in backends with the gvisor state in `state` and `env` on top;
/// `None`, after a loud `SKIPPED:` line naming `test`, when gvisor cannot run go here.
pub async fn go_app(test: &str, state: &Path, env: &[(&str, &str)]) -> Option<GoApp> {
    let parent = format!(
        "vulcan-test-go-{}-{}",
        std::process::id(),
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    );
    let mut builder = super::app()
        .builtin()
        .env(
            "VULCAN_BACKENDS__GVISOR__STATE_DIR",
            &state.to_string_lossy(),
        )
        .env("VULCAN_BACKENDS__GVISOR__CGROUP_PARENT", &parent);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    let app = builder.spawn().await;
    let entry = gvisor_entry(&app).await;
    let go = entry["capabilities"]["supported_runtimes"]
        .as_array()
        .is_some_and(|r| r.contains(&json!("go")));
    if entry["status"] != "healthy" || !go {
        eprintln!("SKIPPED: {test}: the gvisor backend cannot run go here: {entry}");
        return None;
    }
    Some(GoApp {
        app,
        parent: CgroupParent(parent),
    })
}

/// The `gvisor` entry of `GET /v1/backends` (`null` when it is not listed).
pub async fn gvisor_entry(app: &TestApp) -> Value {
    let all = app.get_json("/v1/backends", 200).await;
    all.as_array()
        .and_then(|a| a.iter().find(|b| b["name"] == "gvisor"))
        .cloned()
        .unwrap_or(Value::Null)
}

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
