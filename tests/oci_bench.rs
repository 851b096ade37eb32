//! Figures for docs/benchmarks.md ("OCI images"): cold (pull + run) and warm p50 of a
//! busybox image through HTTP, against a bare `runsc run` of the same prepared root
//! file system with the same root overlay. Ignored by default; run it on a release
//! build:
//!
//! ```sh
//! cargo test --release --test oci_bench -- --ignored --nocapture
//! ```

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::oci::{self, ImageSpec, Registry};
use serde_json::{json, Value};

const COLD_RUNS: usize = 5;
const WARM_RUNS: usize = 30;

fn p50(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[(samples.len() - 1) / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --release --test oci_bench -- --ignored --nocapture"]
async fn oci_busybox_cold_warm_and_bare_runsc() {
    if let Some(why) = oci::missing_tools() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let registry = Registry::start().await;
    let images = tempfile::tempdir().expect("dir");
    let state = tempfile::tempdir().expect("dir");
    let config = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("config");
    std::fs::write(
        config.path(),
        format!(
            "[images]\ndir = {:?}\ninsecure_registries = [{:?}]\nallowed_registries = [\"127.0.0.1\"]\nprivate_registries = [\"127.0.0.1\"]\n",
            images.path().to_string_lossy(),
            registry.host
        ),
    )
    .expect("config");
    let parent = format!("vulcan-bench-oci-{}", std::process::id());
    let app = common::app()
        .builtin()
        .env("VULCAN_CONFIG", &config.path().to_string_lossy())
        .env(
            "VULCAN_BACKENDS__GVISOR__STATE_DIR",
            &state.path().to_string_lossy(),
        )
        .env("VULCAN_BACKENDS__GVISOR__CGROUP_PARENT", &parent)
        .spawn()
        .await;
    let host = registry.host.clone();
    let image = tokio::task::spawn_blocking(move || {
        oci::build_and_push(&host, "bench", &ImageSpec::default())
    })
    .await
    .expect("image");
    let body = json!({"runtime": "oci", "image": image, "command": ["/bin/true"]});
    let run = || async {
        let started = Instant::now();
        let res = app.post("/v1/workloads", &body).await;
        let w: Value = res.json().await.expect("json");
        assert_eq!(w["status"], "completed", "{w}");
        started.elapsed()
    };

    let mut cold = Vec::new();
    for _ in 0..COLD_RUNS {
        cold.push(run().await);
        let list = app.get_json("/v1/images", 200).await;
        let digest = list["images"][0]["digest"]
            .as_str()
            .expect("digest")
            .to_string();
        // The run's hold ends just after its answer: retry until the image is free.
        let start = Instant::now();
        while app.delete(&format!("/v1/images/{digest}")).await.status() != 200 {
            assert!(start.elapsed() < Duration::from_secs(30));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    run().await;
    let mut warm = Vec::new();
    for _ in 0..WARM_RUNS {
        warm.push(run().await);
    }

    // Bare runsc: the same prepared root, the same overlay, a minimal spec.
    let rootfs = std::fs::read_dir(images.path().join("rootfs"))
        .expect("rootfs dir")
        .flatten()
        .next()
        .expect("a prepared rootfs")
        .path();
    let bundle = tempfile::tempdir().expect("bundle");
    let root = tempfile::tempdir().expect("runsc root");
    let spec = Command::new("runsc")
        .args(["spec", "--bundle"])
        .arg(bundle.path())
        .args(["--", "/bin/true"])
        .status()
        .expect("runsc spec");
    assert!(spec.success());
    let path = bundle.path().join("config.json");
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("spec")).expect("json");
    cfg["root"] = json!({"path": rootfs, "readonly": false});
    cfg["process"]["terminal"] = json!(false);
    std::fs::write(&path, serde_json::to_vec(&cfg).expect("json")).expect("write spec");
    let mut bare = Vec::new();
    for i in 0..WARM_RUNS {
        let started = Instant::now();
        let status = Command::new("runsc")
            .arg("--root")
            .arg(root.path())
            .args([
                "--platform=ptrace",
                "--network=none",
                "--overlay2=root:memory",
                "run",
                "--bundle",
            ])
            .arg(bundle.path())
            .arg(format!("bench-{i}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("runsc run");
        bare.push(started.elapsed());
        assert!(status.success());
    }

    let (cold, warm, bare) = (p50(&mut cold), p50(&mut warm), p50(&mut bare));
    println!("| what | runs | p50 ms |");
    println!("|---|---|---|");
    println!(
        "| cold: `POST /v1/workloads` (pull + unpack + run) | {COLD_RUNS} | {:.1} |",
        ms(cold)
    );
    println!(
        "| warm: `POST /v1/workloads` (cached image) | {WARM_RUNS} | {:.1} |",
        ms(warm)
    );
    println!(
        "| bare `runsc --overlay2=root:memory run`, same rootfs | {WARM_RUNS} | {:.1} |",
        ms(bare)
    );
    println!();
    println!(
        "warm p50 / bare p50 = **{:.2}×** (goal ≤ 1.2×)",
        ms(warm) / ms(bare)
    );
    app.stop().await;
}
