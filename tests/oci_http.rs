//! `runtime: oci` end to end through HTTP: a real registry (Debian's `docker-registry`
//! on loopback), images built by the tests from `busybox-static` with `umoci` and pushed
//! with `skopeo`, the real image store and the real gvisor backend (runsc).
//!
//! Each test gets its own registry, image store, gvisor state dir and cgroup parent.
//! Where a tool is missing or the tests do not run as root, each test prints
//! `SKIPPED: <reason>` (CI installs everything: .ci/install-oci.sh).

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::oci::{self, ImageSpec, Registry};
use common::TestApp;
use serde_json::{json, Value};

/// Generous: runsc on the ptrace platform is slow on a loaded two-core machine.
const SOON: Duration = Duration::from_secs(90);

/// An app with the gvisor backend and a private image store, plus its registry.
struct OciApp {
    app: TestApp,
    registry: Registry,
    images: tempfile::TempDir,
    state: tempfile::TempDir,
    parent: String,
    config: tempfile::NamedTempFile,
}

impl Drop for OciApp {
    fn drop(&mut self) {
        for root in ["/sys/fs/cgroup"] {
            let base = Path::new(root);
            let _ = std::fs::remove_dir(base.join(&self.parent));
            if let Ok(entries) = std::fs::read_dir(base) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_dir(e.path().join(&self.parent));
                }
            }
        }
    }
}

/// The test registries' policy: they all listen on 127.0.0.1.
const TRUST_LOOPBACK: &str =
    "allowed_registries = [\"127.0.0.1\"]\nprivate_registries = [\"127.0.0.1\"]\n";

/// The `[images]` section for a test store (plus `extra` lines), trusting the loopback
/// registries unless `extra` sets its own registry policy.
fn images_config(dir: &Path, insecure: &[&str], extra: &str) -> String {
    let list: Vec<String> = insecure.iter().map(|h| format!("{h:?}")).collect();
    let policy = if extra.contains("_registries =") {
        ""
    } else {
        TRUST_LOOPBACK
    };
    format!(
        "[images]\ndir = {:?}\ninsecure_registries = [{}]\n{policy}{extra}\n",
        dir.to_string_lossy(),
        list.join(", ")
    )
}

/// Boot an app (built-in backends) whose image store trusts `registry` over HTTP.
/// `None` after a loud `SKIPPED:` when the tools or the gvisor backend are missing.
async fn oci_app(name: &str, extra_config: &str) -> Option<OciApp> {
    oci_app_with(name, extra_config, &[]).await
}

/// [`oci_app`], also trusting `insecure` registries over HTTP.
async fn oci_app_with(name: &str, extra_config: &str, insecure: &[&str]) -> Option<OciApp> {
    if let Some(why) = oci::missing_tools() {
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let registry = Registry::start().await;
    oci_app_on(name, registry, extra_config, insecure).await
}

/// [`oci_app_with`] on a registry the caller started.
async fn oci_app_on(
    name: &str,
    registry: Registry,
    extra_config: &str,
    insecure: &[&str],
) -> Option<OciApp> {
    let images = tempfile::Builder::new()
        .prefix("vulcan-images-")
        .tempdir()
        .expect("dir");
    let state = tempfile::Builder::new()
        .prefix("vulcan-oci-gv-")
        .tempdir()
        .expect("dir");
    let parent = format!(
        "vulcan-test-oci-{name}-{}-{}",
        std::process::id(),
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    );
    let config = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("config");
    std::fs::write(
        config.path(),
        images_config(
            images.path(),
            &[&[registry.host.as_str(), "127.0.0.1:1"], insecure].concat(),
            extra_config,
        ),
    )
    .expect("write config");
    let app = boot(&config, &state, &parent, None).await;
    let gv = OciApp {
        app,
        registry,
        images,
        state,
        parent,
        config,
    };
    let entry = gv.backend("gvisor").await;
    if entry["status"] != "healthy" {
        eprintln!(
            "SKIPPED: gvisor backend is {}: {}",
            entry["status"], entry["reason"]
        );
        return None;
    }
    Some(gv)
}

async fn boot(
    config: &tempfile::NamedTempFile,
    state: &tempfile::TempDir,
    parent: &str,
    db: Option<PathBuf>,
) -> TestApp {
    let mut builder = common::app()
        .builtin()
        .env("VULCAN_CONFIG", &config.path().to_string_lossy())
        .env(
            "VULCAN_BACKENDS__GVISOR__STATE_DIR",
            &state.path().to_string_lossy(),
        )
        .env("VULCAN_BACKENDS__GVISOR__CGROUP_PARENT", parent);
    if let Some(db) = db {
        builder = builder.db(db);
    }
    builder.spawn().await
}

impl OciApp {
    async fn backend(&self, name: &str) -> Value {
        let all = self.app.get_json("/v1/backends", 200).await;
        all.as_array()
            .expect("array")
            .iter()
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("backend {name} listed: {all}"))
            .clone()
    }

    /// Build and push a test image; returns its reference.
    async fn image(&self, name: &str, spec: ImageSpec) -> String {
        let host = self.registry.host.clone();
        let creds = self.registry.creds.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            oci::build_and_push_as(&host, creds.as_deref(), &name, &spec)
        })
        .await
        .expect("build image")
    }

    /// Synchronous submit; asserts 200 and returns the terminal workload.
    async fn run(&self, body: &Value) -> Value {
        let res = self.app.post("/v1/workloads", body).await;
        let status = res.status().as_u16();
        let w: Value = res.json().await.expect("json");
        assert_eq!(status, 200, "{w}");
        w
    }

    async fn images(&self) -> Value {
        self.app.get_json("/v1/images", 200).await
    }

    /// The prepared root file systems on disk.
    fn rootfs_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.images.path().join("rootfs"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    fn blob_files(&self) -> usize {
        std::fs::read_dir(self.images.path().join("blobs/sha256"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// A metric's value from `/metrics` (0 when absent).
    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .app
            .get("/metrics")
            .await
            .text()
            .await
            .expect("metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The hostile-input rule: after a failure the server is fine and the next
    /// workload runs at once.
    /// A workload and a pre-pull of `image` are both refused with 400, the error
    /// naming `why`.
    async fn assert_refused(&self, image: &str, why: &str) {
        let res = self
            .app
            .post("/v1/workloads/async", &oci_job(image, None))
            .await;
        assert_eq!(res.status(), 400, "{image}");
        let body: Value = res.json().await.expect("json");
        let error = body["error"].as_str().expect("error");
        assert!(error.contains(why), "{image}: {error}");
        let res = self.app.post("/v1/images", &json!({"image": image})).await;
        assert_eq!(res.status(), 400, "pre-pull of {image}");
    }

    async fn assert_next_runs(&self, image: &str) {
        let w = self
            .run(&oci_job(image, Some(&["/bin/echo", "next"])))
            .await;
        assert_eq!(w["status"], "completed", "{w}");
        assert_eq!(w["output"], "next\n");
        assert_eq!(self.app.get_json("/healthz", 200).await["status"], "ok");
    }
}

fn oci_job(image: &str, command: Option<&[&str]>) -> Value {
    let mut body = json!({"runtime": "oci", "image": image, "resources": {"timeout_s": 60}});
    if let Some(cmd) = command {
        body["command"] = json!(cmd);
    }
    body
}

fn error_of(w: &Value) -> &str {
    w["error"]
        .as_str()
        .unwrap_or_else(|| panic!("an error: {w}"))
}

/// A plain busybox image whose default command echoes stdin.
fn cat_image() -> ImageSpec {
    ImageSpec {
        config: vec!["--config.cmd=/bin/cat".into()],
        ..ImageSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_json_becomes_the_output_and_auto_routes_to_gvisor() {
    let Some(t) = oci_app("echo", "").await else {
        return;
    };
    let image = t.image("echo", cat_image()).await;
    let mut body = oci_job(&image, None);
    body["input"] = json!({"a": 1, "b": [2, 3]});
    let w = t.run(&body).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], json!({"a": 1, "b": [2, 3]}));
    assert_eq!(w["exit_code"], 0);
    assert_eq!(w["isolation"], "gvisor");
    assert_eq!(w["requested_isolation"], "auto");
    assert_eq!(w["backend"], "gvisor");
    let caps = t.backend("gvisor").await;
    assert!(caps["capabilities"]["supported_runtimes"]
        .as_array()
        .expect("runtimes")
        .contains(&json!("oci")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_config_env_workdir_user_and_entrypoint_are_honoured() {
    let Some(t) = oci_app("config", "").await else {
        return;
    };
    let spec = ImageSpec {
        config: vec![
            "--config.env=GREETING=hello from the image".into(),
            "--config.workingdir=/srv/app".into(),
            "--config.user=app".into(),
            "--config.entrypoint=/bin/sh".into(),
            "--config.entrypoint=-c".into(),
            "--config.cmd=echo \"$GREETING|$(pwd)|$(id -u):$(id -g)|$HOME|$VULCAN_INPUT\"".into(),
        ],
        ..ImageSpec::default()
    };
    let image = t.image("config", spec).await;
    let mut body = oci_job(&image, None);
    body["input"] = json!({"n": 7});
    let w = t.run(&body).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(
        w["output"],
        "hello from the image|/srv/app|1000:1000|/home/app|{\"n\":7}\n"
    );
    // `command` replaces entrypoint + cmd; env and user stay.
    let w = t
        .run(&oci_job(
            &image,
            Some(&["/bin/sh", "-c", "echo override $GREETING; id -u"]),
        ))
        .await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], "override hello from the image\n1000\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_logs_timeout_and_kill() {
    let Some(t) = oci_app("lifecycle", "").await else {
        return;
    };
    let image = t.image("life", cat_image()).await;
    let w = t
        .run(&oci_job(
            &image,
            Some(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]),
        ))
        .await;
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(w["exit_code"], 3);
    assert_eq!(error_of(&w), "exited with code 3");
    let id = w["id"].as_str().expect("id");
    let history = t
        .app
        .get_json(&format!("/v1/workloads/{id}/logs/history"), 200)
        .await;
    let lines: Vec<&str> = history["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|l| l["line"].as_str())
        .collect();
    assert!(
        lines.contains(&"out") && lines.contains(&"err"),
        "{lines:?}"
    );

    let mut body = oci_job(&image, Some(&["/bin/sleep", "60"]));
    body["resources"]["timeout_s"] = json!(2);
    let started = Instant::now();
    let w = t.run(&body).await;
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(error_of(&w), "timed out after 2s");
    assert!(started.elapsed() < SOON);
    t.assert_next_runs(&image).await;

    let w = t
        .app
        .submit_async(&oci_job(&image, Some(&["/bin/sleep", "60"])))
        .await;
    let id = w["id"].as_str().expect("id").to_string();
    t.app.wait_status(&id, "running", SOON).await;
    let res = t.app.delete(&format!("/v1/workloads/{id}")).await;
    assert_eq!(res.status(), 200);
    let w = t.app.wait_terminal(&id, SOON).await;
    assert_eq!(w["status"], "killed", "{w}");
    t.assert_next_runs(&image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_and_no_network() {
    let Some(t) = oci_app("limits", "").await else {
        return;
    };
    let image = t.image("limits", cat_image()).await;
    // Writes to the root land in sandbox memory: 256 MiB cannot fit in 64.
    let mut body = oci_job(
        &image,
        Some(&[
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/big bs=1M count=256 && echo wrote-it-all",
        ]),
    );
    body["resources"]["mem_mb"] = json!(64);
    let w = t.run(&body).await;
    assert_eq!(w["status"], "failed", "{w}");
    assert_ne!(w["output"], "wrote-it-all\n");
    assert_eq!(w["exit_code"], 137, "{w}");
    assert!(error_of(&w).contains("out of memory"), "{w}");
    t.assert_next_runs(&image).await;

    let registry = format!("http://{}/v2/", t.registry.host);
    let script = format!(
        "wget -q -T 3 -O- {registry} >/dev/null 2>&1 && echo reachable || echo unreachable; \
         ls /sys/class/net 2>/dev/null | tr '\\n' ' '"
    );
    let w = t
        .run(&oci_job(&image, Some(&["/bin/sh", "-c", &script])))
        .await;
    assert_eq!(w["status"], "completed", "{w}");
    let out = w["output"].as_str().expect("text");
    assert!(out.starts_with("unreachable"), "{out}");
}

/// An image run holds the global `max_output_bytes` (the default, 4 MiB) like every
/// gvisor run: above it the workload fails clearly and keeps no output, and the next
/// run is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_above_the_global_cap_fails_and_keeps_nothing() {
    let Some(t) = oci_app("output-cap", "").await else {
        return;
    };
    let cap = vulcan::config::Config::defaults()
        .expect("defaults")
        .max_output_bytes;
    let image = t.image("output-cap", cat_image()).await;
    let script = format!("head -c {} /dev/zero | tr '\\000' x", cap + 1);
    let w = t
        .run(&oci_job(&image, Some(&["/bin/sh", "-c", &script])))
        .await;
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(error_of(&w), format!("output exceeds {cap} bytes"), "{w}");
    assert_eq!(w["output"], Value::Null, "{w}");
    assert_eq!(w["exit_code"], 0, "{w}");
    // Exactly at the cap is allowed, whole.
    let script = format!("head -c {cap} /dev/zero | tr '\\000' x");
    let w = t
        .run(&oci_job(&image, Some(&["/bin/sh", "-c", &script])))
        .await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(
        w["output"].as_str().map(str::len),
        Some(cap),
        "whole output"
    );
    t.assert_next_runs(&image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_writing_everywhere_leaves_the_cached_rootfs_unchanged() {
    let Some(t) = oci_app("scratch", "").await else {
        return;
    };
    let image = t.image("scratch", cat_image()).await;
    let w = t.run(&oci_job(&image, Some(&["/bin/true"]))).await;
    assert_eq!(w["status"], "completed", "{w}");
    let roots = t.rootfs_dirs();
    assert_eq!(roots.len(), 1, "{roots:?}");
    let before = oci::tree_digest(&roots[0]);
    let script = "for d in / /bin /etc /root /tmp /home/app /usr /var; do \
                    mkdir -p $d && echo scribble > $d/vulcan-was-here; done; \
                  echo hacked > /etc/passwd; rm -f /bin/ls /bin/busybox.bak; \
                  chmod 777 /etc; ln -sf /proc/self/root /escape; \
                  cat /vulcan-was-here /etc/passwd";
    let w = t
        .run(&oci_job(&image, Some(&["/bin/sh", "-c", script])))
        .await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(
        w["output"], "scribble\nhacked\n",
        "the run sees its own writes"
    );
    assert_eq!(
        oci::tree_digest(&roots[0]),
        before,
        "the cached rootfs changed"
    );
    // The next run starts from the image again, not from the previous run's layer.
    let w = t
        .run(&oci_job(
            &image,
            Some(&[
                "/bin/sh",
                "-c",
                "ls /vulcan-was-here 2>&1; head -1 /etc/passwd",
            ]),
        ))
        .await;
    assert_eq!(w["status"], "completed", "{w}");
    let out = w["output"].as_str().expect("text");
    assert!(out.contains("No such file"), "{out}");
    assert!(out.ends_with("root:x:0:0:root:/root:/bin/sh\n"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_apply_whiteouts_and_opaque_dirs() {
    let Some(t) = oci_app("layers", "").await else {
        return;
    };
    use tar::EntryType::{Directory, Regular};
    let upper = oci::raw_tar(&[
        ("etc/.wh.motd", Regular, b""),
        ("data/", Directory, b""),
        ("data/.wh..wh..opq", Regular, b""),
        ("data/new", Regular, b"from the upper layer"),
    ]);
    let spec = ImageSpec {
        files: vec![
            ("etc/motd".into(), b"deleted by the upper layer".to_vec()),
            ("data/old-1".into(), b"hidden".to_vec()),
            ("data/old-2".into(), b"hidden".to_vec()),
            ("etc/kept".into(), b"kept".to_vec()),
        ],
        extra_layers: vec![upper],
        ..ImageSpec::default()
    };
    let image = t.image("layers", spec).await;
    let (manifest, _) = t.registry.manifest("test/layers", "latest").await;
    assert_eq!(manifest["layers"].as_array().expect("layers").len(), 2);
    let w = t
        .run(&oci_job(
            &image,
            Some(&[
                "/bin/sh",
                "-c",
                "ls /etc/motd 2>&1; ls /data; cat /etc/kept",
            ]),
        ))
        .await;
    assert_eq!(w["status"], "completed", "{w}");
    let out = w["output"].as_str().expect("text");
    assert!(out.contains("No such file"), "{out}");
    assert!(out.ends_with("new\nkept"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_platform_index_resolves_to_this_platform() {
    let Some(t) = oci_app("index", "").await else {
        return;
    };
    let amd = ImageSpec {
        files: vec![("platform".into(), b"amd64".to_vec())],
        config: vec![
            "--config.cmd=/bin/cat".into(),
            "--config.cmd=/platform".into(),
        ],
        ..ImageSpec::default()
    };
    let mut arm = amd.clone();
    arm.files = vec![("platform".into(), b"arm64".to_vec())];
    arm.config.push("--architecture=arm64".into());
    t.image("multi-amd64", amd).await;
    t.image("multi-arm64", arm).await;
    let mut entries = Vec::new();
    for (repo, arch) in [("test/multi-arm64", "arm64"), ("test/multi-amd64", "amd64")] {
        let (body, digest) = t.registry.manifest_bytes(repo, "latest").await;
        let manifest: Value = serde_json::from_slice(&body).expect("json");
        for blob in std::iter::once(&manifest["config"])
            .chain(manifest["layers"].as_array().expect("layers"))
        {
            let d = blob["digest"].as_str().expect("digest");
            let res = reqwest::Client::new()
                .post(format!(
                    "http://{}/v2/test/multi/blobs/uploads/?mount={d}&from={repo}",
                    t.registry.host
                ))
                .send()
                .await
                .expect("mount");
            assert!(res.status().is_success(), "mount {d}: {}", res.status());
        }
        // Every manifest the index names must be in the index's repository.
        t.registry
            .put_manifest(
                "test/multi",
                &digest,
                "application/vnd.oci.image.manifest.v1+json",
                body.clone(),
            )
            .await;
        entries.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": body.len(),
            "platform": {"architecture": arch, "os": "linux"}
        }));
    }
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
    t.registry
        .put_manifest(
            "test/multi",
            "latest",
            "application/vnd.oci.image.index.v1+json",
            serde_json::to_vec(&index).expect("json"),
        )
        .await;
    let image = format!("{}/test/multi", t.registry.host);
    let w = t.run(&oci_job(&image, None)).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], "amd64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_image_runs_without_contacting_the_registry() {
    let Some(t) = oci_app("cache", "").await else {
        return;
    };
    let image = t.image("cached", cat_image()).await;
    let manifests = "/v2/test/cached/manifests/";
    let w = t.run(&oci_job(&image, Some(&["/bin/true"]))).await;
    assert_eq!(w["status"], "completed", "{w}");
    let first = t.registry.vulcan_requests(manifests);
    assert!(first >= 1, "the first run pulls");
    let hits = t.metric("vulcan_image_cache_hits_total").await;
    for _ in 0..2 {
        let w = t.run(&oci_job(&image, Some(&["/bin/true"]))).await;
        assert_eq!(w["status"], "completed", "{w}");
    }
    assert_eq!(
        t.registry.vulcan_requests(manifests),
        first,
        "no new manifest request"
    );
    assert_eq!(t.metric("vulcan_image_cache_hits_total").await, hits + 2.0);
    assert_eq!(t.metric("vulcan_image_pulls_total").await, 1.0);
    assert!(t.metric("vulcan_image_bytes_pulled_total").await > 0.0);
    assert!(t.metric("vulcan_image_store_bytes").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_submissions_of_an_uncached_image_pull_once() {
    let Some(t) = oci_app("herd", "").await else {
        return;
    };
    let image = t.image("herd", cat_image()).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let mut body = oci_job(&image, None);
        body["input"] = json!(i);
        ids.push(
            t.app.submit_async(&body).await["id"]
                .as_str()
                .expect("id")
                .to_string(),
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let w = t.app.wait_terminal(id, Duration::from_secs(300)).await;
        assert_eq!(w["status"], "completed", "{w}");
        assert_eq!(w["output"], json!(i));
    }
    assert_eq!(
        t.registry.vulcan_requests("/v2/test/herd/manifests/"),
        1,
        "one manifest request"
    );
    let (manifest, _) = t.registry.manifest("test/herd", "latest").await;
    let blobs = 1 + manifest["layers"].as_array().expect("layers").len();
    assert_eq!(
        t.registry.vulcan_requests("/v2/test/herd/blobs/"),
        blobs,
        "each blob once"
    );
    assert_eq!(t.metric("vulcan_image_pulls_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_blob_fails_with_digest_mismatch_and_nothing_is_cached() {
    let Some(t) = oci_app("tamper", "").await else {
        return;
    };
    let good = t.image("good", cat_image()).await;
    let image = t.image("tampered", cat_image()).await;
    let (manifest, _) = t.registry.manifest("test/tampered", "latest").await;
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let file = t.registry.blob_file(&layer);
    let mut bytes = std::fs::read(&file).expect("blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    bytes[last / 2] ^= 0x55;
    std::fs::write(&file, &bytes).expect("tamper");
    // The good image shares the busybox layer; keep it out of this store first.
    let _ = good;
    let w = t.run(&oci_job(&image, None)).await;
    assert_eq!(w["status"], "failed", "{w}");
    let error = error_of(&w);
    assert!(
        error.starts_with("image pull failed: digest mismatch"),
        "{error}"
    );
    assert!(w["started_at"].is_null(), "it never ran: {w}");
    assert_eq!(t.images().await["images"], json!([]));
    assert!(t.rootfs_dirs().is_empty());
    assert_eq!(t.blob_files(), 0, "no blob was kept");
    assert_eq!(t.metric("vulcan_image_pull_failures_total").await, 1.0);
    // Server fine, next workload runs (a clean image with a different layer).
    let clean = t
        .image(
            "clean",
            ImageSpec {
                files: vec![("marker".into(), b"clean".to_vec())],
                ..cat_image()
            },
        )
        .await;
    t.assert_next_runs(&clean).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_failures_fail_the_workload_with_the_reason() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_host = format!("127.0.0.1:{}", silent.local_addr().expect("addr").port());
    let extra = "pull_timeout_s = 3\nmax_image_bytes = 4000000\n";
    let Some(t) = oci_app_with("failures", extra, &[&silent_host]).await else {
        return;
    };
    let image = t.image("fine", cat_image()).await;
    let big = t
        .image(
            "big",
            ImageSpec {
                filler_bytes: 6_000_000,
                ..cat_image()
            },
        )
        .await;
    let cases = [
        (
            format!("{}/test/no-such-image", t.registry.host),
            "was not found",
        ),
        (
            format!("{}/test/fine:no-such-tag", t.registry.host),
            "was not found",
        ),
        ("127.0.0.1:1/test/anything".to_string(), "unreachable"),
        (format!("{silent_host}/test/slow"), "timed out after 3s"),
        (big, "above the limit"),
    ];
    for (reference, want) in cases {
        let w = t.run(&oci_job(&reference, None)).await;
        assert_eq!(w["status"], "failed", "{reference}: {w}");
        let error = error_of(&w);
        assert!(
            error.starts_with("image pull failed: ") && error.contains(want),
            "{reference}: {error} (wanted {want:?})"
        );
        t.assert_next_runs(&image).await;
    }
    assert!(t.images().await["images"].as_array().expect("images").len() == 1);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_pull_list_and_delete() {
    let Some(t) = oci_app("api", "").await else {
        return;
    };
    let image = t.image("api", cat_image()).await;
    let res = t.app.post("/v1/images", &json!({"image": image})).await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["reference"], image);
    let start = Instant::now();
    let listed = loop {
        let list = t.images().await;
        if list["images"].as_array().is_some_and(|i| !i.is_empty()) {
            break list;
        }
        assert!(start.elapsed() < SOON, "{list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let entry = &listed["images"][0];
    let digest = entry["digest"].as_str().expect("digest").to_string();
    let (_, served) = t.registry.manifest("test/api", "latest").await;
    assert_eq!(digest, served);
    assert_eq!(entry["references"], json!([image]));
    assert!(entry["size_bytes"].as_u64().expect("size") > 1_000_000);
    assert!(entry["last_used"].is_string() && entry["pulled_at"].is_string());
    // The run after a pre-pull is a cache hit.
    let before = t.registry.vulcan_requests("/v2/test/api/manifests/");
    let w = t.run(&oci_job(&image, Some(&["/bin/true"]))).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(
        t.registry.vulcan_requests("/v2/test/api/manifests/"),
        before
    );

    // In use: 409 while a workload runs it.
    let w = t
        .app
        .submit_async(&oci_job(&image, Some(&["/bin/sleep", "60"])))
        .await;
    let id = w["id"].as_str().expect("id").to_string();
    t.app.wait_status(&id, "running", SOON).await;
    let res = t.app.delete(&format!("/v1/images/{digest}")).await;
    assert_eq!(res.status(), 409);
    assert!(res.json::<Value>().await.expect("json")["error"]
        .as_str()
        .expect("msg")
        .contains("in use"));
    t.app.delete(&format!("/v1/workloads/{id}")).await;
    t.app.wait_terminal(&id, SOON).await;
    let start = Instant::now();
    loop {
        let res = t.app.delete(&format!("/v1/images/{digest}")).await;
        if res.status() == 200 {
            break;
        }
        assert_eq!(res.status(), 409);
        assert!(start.elapsed() < SOON);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(t.images().await["images"], json!([]));
    assert!(t.rootfs_dirs().is_empty());
    assert_eq!(t.blob_files(), 0);
    let res = t.app.delete(&format!("/v1/images/{digest}")).await;
    assert_eq!(res.status(), 404);
    let res = t.app.delete("/v1/images/not-a-digest").await;
    assert_eq!(res.status(), 404);
    for bad in [
        json!({}),
        json!({"image": "Not A Reference"}),
        json!({"image": "x", "extra": 1}),
    ] {
        let res = t.app.post("/v1/images", &bad).await;
        assert_eq!(res.status(), 400, "{bad}");
        assert!(res.json::<Value>().await.expect("json")["error"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_recently_used_images_go_past_max_bytes() {
    // One busybox image is ~2-3 MB on disk (blobs + rootfs); 5 MB fits one, not two.
    let Some(t) = oci_app("gc", "max_bytes = 5000000\n").await else {
        return;
    };
    let first = t
        .image(
            "gc-first",
            ImageSpec {
                files: vec![("id".into(), b"1".to_vec())],
                ..cat_image()
            },
        )
        .await;
    let second = t
        .image(
            "gc-second",
            ImageSpec {
                files: vec![("id".into(), b"2".to_vec())],
                ..cat_image()
            },
        )
        .await;
    let w = t.run(&oci_job(&first, Some(&["/bin/cat", "/id"]))).await;
    assert_eq!(w["output"], 1);
    let w = t.run(&oci_job(&second, Some(&["/bin/cat", "/id"]))).await;
    assert_eq!(w["output"], 2);
    let list = t.images().await;
    let refs: Vec<&Value> = list["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| &i["references"][0])
        .collect();
    assert_eq!(refs, vec![&json!(second)], "{list}");
    assert!(list["total_bytes"].as_u64().expect("total") <= 5_000_000);
    assert_eq!(t.rootfs_dirs().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_survives_a_restart_without_the_registry() {
    let Some(mut t) = oci_app("restart", "").await else {
        return;
    };
    let image = t.image("restart", cat_image()).await;
    let w = t
        .run(&oci_job(&image, Some(&["/bin/echo", "before"])))
        .await;
    assert_eq!(w["status"], "completed", "{w}");
    let listed = t.images().await;
    let db = t.app.db_path.clone();
    // Stop the registry, crash the server, start a new one on the same files: only
    // what the store kept on disk can serve the image now.
    drop(std::mem::replace(&mut t.registry, Registry::start().await));
    let crashed = std::mem::replace(&mut t.app, common::app().spawn().await);
    let _keep_db = crashed.crash().await;
    let _placeholder = std::mem::replace(
        &mut t.app,
        boot(&t.config, &t.state, &t.parent, Some(db)).await,
    );
    assert_eq!(t.images().await["images"], listed["images"]);
    let w = t.run(&oci_job(&image, Some(&["/bin/echo", "after"]))).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], "after\n");
}

/// A TCP proxy to the address in `target` (read at each connection) that holds every
/// new connection for `delay` first: a slow registry.
async fn slow_proxy(target: Arc<Mutex<String>>, delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let host = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.lock().expect("target").clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_keeps_the_workload_pending_outside_its_timeout() {
    let target = Arc::new(Mutex::new(String::new()));
    let proxy = slow_proxy(target.clone(), Duration::from_millis(4000)).await;
    let Some(t) = oci_app_with("slowpull", "", &[&proxy]).await else {
        return;
    };
    *target.lock().expect("target") = t.registry.host.clone();
    let image = t.image("slow", cat_image()).await;
    let through_proxy = image.replace(&t.registry.host, &proxy);
    // Every registry connection waits 4 s: the pull takes longer than the workload's
    // 3 s timeout, which does not run yet (3 s, not less: the run itself must fit in
    // it on a loaded machine).
    let mut body = oci_job(&through_proxy, Some(&["/bin/echo", "ran"]));
    body["resources"]["timeout_s"] = json!(3);
    let w = t.app.submit_async(&body).await;
    let id = w["id"].as_str().expect("id").to_string();
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let now = t.app.get_json(&format!("/v1/workloads/{id}"), 200).await;
    assert_eq!(now["status"], "pending", "{now}");
    let list = t.images().await;
    assert_eq!(list["pulling"], json!([through_proxy]), "{list}");
    assert_eq!(
        t.backend("gvisor").await["running"],
        0,
        "a pull holds no run slot"
    );
    let w = t.app.wait_terminal(&id, SOON).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], "ran\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_the_pull_ends_the_workload_killed() {
    // A registry that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_host = format!("127.0.0.1:{}", silent.local_addr().expect("addr").port());
    let Some(t) = oci_app_with("killpull", "pull_timeout_s = 120\n", &[&silent_host]).await else {
        return;
    };
    let image = t.image("fine", cat_image()).await;
    let w = t
        .app
        .submit_async(&oci_job(&format!("{silent_host}/test/never"), None))
        .await;
    let id = w["id"].as_str().expect("id").to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        t.app.get_json(&format!("/v1/workloads/{id}"), 200).await["status"],
        "pending"
    );
    let started = Instant::now();
    let res = t.app.delete(&format!("/v1/workloads/{id}")).await;
    assert_eq!(res.status(), 200);
    let w: Value = res.json().await.expect("json");
    assert_eq!(w["status"], "killed", "{w}");
    assert!(w["started_at"].is_null(), "{w}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the kill waited for the pull"
    );
    t.assert_next_runs(&image).await;
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_oci_workload_survives_a_backend_restart() {
    let Some(t) = oci_app("restartq", "[backends.gvisor]\nmax_concurrency = 1\n").await else {
        return;
    };
    let image = t.image("queued", cat_image()).await;
    let busy = t
        .app
        .submit_async(&oci_job(&image, Some(&["/bin/sleep", "60"])))
        .await;
    let busy = busy["id"].as_str().expect("id").to_string();
    t.app.wait_status(&busy, "running", SOON).await;
    // Prepared (the image is stored) and queued behind the only slot.
    let queued = t
        .app
        .submit_async(&oci_job(&image, Some(&["/bin/echo", "queued"])))
        .await;
    let queued = queued["id"].as_str().expect("id").to_string();
    let start = Instant::now();
    while t.backend("gvisor").await["queued"] != 1 {
        assert!(start.elapsed() < SOON);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let res = t.app.post("/v1/backends/gvisor/restart", &json!({})).await;
    assert_eq!(res.status(), 200);
    t.app.delete(&format!("/v1/workloads/{busy}")).await;
    let w = t.app.wait_terminal(&queued, SOON).await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], "queued\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_fail_the_pull_and_touch_nothing_outside() {
    use tar::EntryType::{Block, Char, Fifo, Link, Regular, Symlink};
    let Some(t) = oci_app("hostile", "").await else {
        return;
    };
    let image = t.image("fine", cat_image()).await;
    let outside = tempfile::tempdir().expect("outside");
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"host data").expect("victim");
    let host_dir = outside.path().to_string_lossy().into_owned();
    let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
        (
            "traversal",
            vec![oci::hostile_tar(&[("../../escape", Regular, "", b"x")])],
            "escapes",
        ),
        (
            "absolute",
            vec![oci::hostile_tar(&[(
                &format!("{host_dir}/abs"),
                Regular,
                "",
                b"x",
            )])],
            "escapes",
        ),
        (
            "char-device",
            vec![oci::hostile_tar(&[("dev/mem", Char, "", b"")])],
            "forbidden type",
        ),
        (
            "block-device",
            vec![oci::hostile_tar(&[("dev/sda", Block, "", b"")])],
            "forbidden type",
        ),
        (
            "fifo",
            vec![oci::hostile_tar(&[("pipe", Fifo, "", b"")])],
            "forbidden type",
        ),
        (
            "write-through-link",
            vec![
                oci::hostile_tar(&[("evil", Symlink, &host_dir, b"")]),
                oci::hostile_tar(&[("evil/victim", Regular, "", b"owned")]),
            ],
            "conflicts",
        ),
        (
            "whiteout-through-link",
            vec![
                oci::hostile_tar(&[("evil", Symlink, &host_dir, b"")]),
                oci::hostile_tar(&[("evil/.wh.victim", Regular, "", b"")]),
            ],
            "conflicts",
        ),
        (
            "hardlink-to-host",
            vec![oci::hostile_tar(&[(
                "h",
                Link,
                &victim.to_string_lossy(),
                b"",
            )])],
            "escapes",
        ),
    ];
    for (name, layers, want) in cases {
        let spec = ImageSpec {
            extra_layers: layers,
            ..cat_image()
        };
        let reference = t.image(&format!("hostile-{name}"), spec).await;
        let w = t.run(&oci_job(&reference, None)).await;
        assert_eq!(w["status"], "failed", "{name}: {w}");
        let error = error_of(&w);
        assert!(
            error.starts_with("image pull failed: ") && error.contains(want),
            "{name}: {error} (wanted {want:?})"
        );
        assert!(
            !error.contains(&*t.images.path().to_string_lossy()),
            "{name}: leaks a host path"
        );
        assert_eq!(
            std::fs::read(&victim).expect("victim"),
            b"host data",
            "{name}"
        );
        let mut left: Vec<String> = std::fs::read_dir(outside.path())
            .expect("outside")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["victim".to_string()], "{name}: wrote outside");
        t.assert_next_runs(&image).await;
    }
    assert_eq!(
        t.images().await["images"].as_array().expect("images").len(),
        1
    );
    assert_eq!(t.rootfs_dirs().len(), 1, "no half-prepared rootfs kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_are_used_and_a_refusal_is_the_reason() {
    if let Some(why) = oci::missing_tools() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let registry = Registry::start_with_auth("ci", "s3cret").await;
    let host = registry.host.clone();
    let creds = |password: &str| {
        format!("\n[images.credentials.\"{host}\"]\nusername = \"ci\"\npassword = \"{password}\"\n")
    };
    let Some(t) = oci_app_on("auth", registry, &creds("s3cret"), &[]).await else {
        return;
    };
    let image = t.image("private", cat_image()).await;
    let w = t
        .run(&oci_job(&image, Some(&["/bin/echo", "authorised"])))
        .await;
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(w["output"], "authorised\n");
    let check = t
        .app
        .get("/v1/system/actors")
        .await
        .text()
        .await
        .expect("text");
    assert!(!check.contains("s3cret"));

    // Another server with a wrong password, and one with none: refused, with the reason.
    for (name, extra) in [("authwrong", creds("wrong")), ("authnone", String::new())] {
        let images = tempfile::tempdir().expect("dir");
        let config = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("config");
        std::fs::write(
            config.path(),
            images_config(images.path(), &[&t.registry.host], &extra),
        )
        .expect("config");
        let state = tempfile::tempdir().expect("state");
        let other = boot(&config, &state, &format!("{}-{name}", t.parent), None).await;
        let res = other.post("/v1/workloads", &oci_job(&image, None)).await;
        let w: Value = res.json().await.expect("json");
        assert_eq!(w["status"], "failed", "{name}: {w}");
        let error = error_of(&w);
        assert!(
            error.starts_with("image pull failed: ") && error.contains("refused access"),
            "{name}: {error}"
        );
        assert!(
            !error.contains("s3cret") && !error.contains("wrong"),
            "{name}: {error}"
        );
        other.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registries_not_allowed_or_on_internal_addresses_are_refused_before_any_connection() {
    // Any registry by name, none on a non-public address: the test registry (on
    // 127.0.0.1) is what an internal service looks like to this server.
    let policy = "allowed_registries = [\"*\"]\nprivate_registries = []\n";
    let Some(t) = oci_app("ssrf", policy).await else {
        return;
    };
    let port = t
        .registry
        .host
        .rsplit_once(':')
        .expect("port")
        .1
        .to_string();
    // An IP literal on a non-public address: 400 at submission and at pre-pull.
    for image in [
        format!("127.0.0.1:{port}/test/cat"),
        "169.254.169.254/latest/meta-data".to_string(),
        "10.0.0.1:5000/app".to_string(),
        "0.0.0.0:5000/app".to_string(),
    ] {
        t.assert_refused(&image, "images.private_registries").await;
    }
    // A name that resolves to one: the workload fails before the registry is contacted.
    let requests_before = t.registry.vulcan_requests("/v2/");
    let w = t
        .app
        .submit_async(&oci_job(&format!("localhost:{port}/test/cat"), None))
        .await;
    let id = w["id"].as_str().expect("id").to_string();
    let w = t.app.wait_terminal(&id, SOON).await;
    assert_eq!(w["status"], "failed", "{w}");
    let error = w["error"].as_str().expect("error");
    assert!(
        error.starts_with("image pull failed: registry localhost:") && error.contains("loopback"),
        "{error}"
    );
    assert_eq!(
        t.registry.vulcan_requests("/v2/"),
        requests_before,
        "no request reached it"
    );
    t.app.get_json("/healthz", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_allowed_registries_are_accepted() {
    let policy = "allowed_registries = [\"ghcr.io\", \"*.corp.example\"]\n";
    let Some(t) = oci_app("allowlist", policy).await else {
        return;
    };
    for image in [
        format!("{}/test/cat", t.registry.host),
        "busybox".to_string(),
        "corp.example/app".to_string(),
        "evil.example/corp.example/app".to_string(),
    ] {
        t.assert_refused(&image, "is not allowed (images.allowed_registries)")
            .await;
    }
    assert_eq!(t.app.count_rows("workloads"), 0, "nothing recorded");
}
