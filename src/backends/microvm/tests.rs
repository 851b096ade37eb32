//! Unit tests of the host side that need no VM: configuration checks, the run request
//! built from code and archives, and readiness without a guest.

use std::collections::HashMap;
use std::io::Write as _;

use super::*;
use crate::config::Config;

fn defaults() -> MicrovmConfig {
    Config::load_from(HashMap::new()).unwrap().backends.microvm
}

fn spec(payload: Payload) -> WorkloadSpec {
    WorkloadSpec {
        id: WorkloadId::new(),
        runtime: Runtime::Python,
        isolation: Isolation::Microvm,
        payload,
        input: br#"{"a":1}"#.to_vec(),
        cpus: 1,
        mem_mb: 128,
        timeout: Duration::from_secs(30),
        max_output_bytes: Config::defaults().unwrap().max_output_bytes,
    }
}

fn inner_for_tests(cfg: MicrovmConfig, state: &Path) -> Inner {
    Inner {
        cfg,
        qemu: "/usr/bin/qemu-system-x86_64".into(),
        runs_dir: state.join("runs"),
        image: GuestImage {
            kernel: state.join("vmlinux"),
            initramfs: state.join("initramfs.cpio"),
        },
        toolchains: Toolchains::detect(),
        run_as: None,
        tsc_khz: None,
    }
}

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        builder.append_data(&mut h, name, *data).unwrap();
    }
    let mut gz = builder.into_inner().unwrap();
    gz.flush().unwrap();
    gz.finish().unwrap()
}

#[test]
fn invalid_configurations_are_refused() {
    let mut cfg = defaults();
    cfg.cgroup_parent = "../escape".into();
    assert!(MicrovmBackend::new(&cfg).is_err());
    let mut cfg = defaults();
    cfg.state_dir = "relative".into();
    assert!(MicrovmBackend::new(&cfg).is_err());
    let mut cfg = defaults();
    cfg.state_dir = PathBuf::from(format!("/{}", "d".repeat(90)));
    assert!(MicrovmBackend::new(&cfg).is_err(), "socket path too long");
}

#[test]
fn without_a_guest_image_the_backend_is_unavailable_and_says_how_to_install_it() {
    let state = tempfile::tempdir().unwrap();
    let guest = tempfile::tempdir().unwrap();
    let mut cfg = defaults();
    cfg.state_dir = state.path().to_path_buf();
    cfg.guest_dir = guest.path().to_path_buf();
    cfg.accel = AccelMode::Tcg;
    let b = MicrovmBackend::new(&cfg).unwrap();
    match b.health() {
        BackendHealth::Unavailable { reason, .. } => assert!(
            reason.contains("install-microvm.sh")
                || reason.contains("not root")
                || reason.contains("qemu")
                || reason.contains("python3"),
            "{reason}"
        ),
        BackendHealth::Healthy => panic!("healthy without a guest"),
    }
    assert_eq!(b.details()["accel"], "tcg");
    assert!(b.details()["boot_ms"].is_null());
}

#[test]
fn code_becomes_the_entry_file_and_memory_is_sized_from_the_limit() {
    let state = tempfile::tempdir().unwrap();
    let inner = inner_for_tests(defaults(), state.path());
    if inner.toolchains.get(Runtime::Python).is_none() {
        eprintln!("SKIPPED: no python3 under /usr");
        return;
    }
    let dir = state.path().join("run");
    fs::create_dir_all(&dir).unwrap();
    let p = inner
        .prepare_run(&spec(Payload::Code("print(1)".into())), &dir)
        .unwrap();
    assert_eq!(
        p.request.entries,
        vec![Entry::File {
            path: "main.py".into(),
            mode: 0o644,
            data: b"print(1)".to_vec()
        }]
    );
    assert_eq!(&p.request.argv[1..], ["-u", "main.py"]);
    assert_eq!(p.request.stdin, br#"{"a":1}"#);
    assert!(p
        .request
        .env
        .contains(&r#"VULCAN_INPUT={"a":1}"#.to_string()));
    assert_eq!(p.request.mem_limit_bytes, 128 << 20);
    assert_eq!(p.guest_mem_mb, 128 + defaults().guest_overhead_mb + 1);
    assert!(
        !dir.join("code").exists(),
        "the host copy of the code is removed"
    );
}

#[test]
fn archives_are_checked_on_the_host_and_sent_as_entries() {
    let state = tempfile::tempdir().unwrap();
    let inner = inner_for_tests(defaults(), state.path());
    if inner.toolchains.get(Runtime::Python).is_none() {
        eprintln!("SKIPPED: no python3 under /usr");
        return;
    }
    let dir = state.path().join("run");
    fs::create_dir_all(&dir).unwrap();
    let ok = tar_gz(&[("main.py", b"import lib"), ("pkg/lib.py", b"X = 1")]);
    let p = inner
        .prepare_run(&spec(Payload::Archive(ok)), &dir)
        .unwrap();
    let paths: Vec<String> = p
        .request
        .entries
        .iter()
        .map(|e| match e {
            Entry::Dir { path } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path.clone()
            }
        })
        .collect();
    assert_eq!(paths, ["main.py", "pkg", "pkg/lib.py"]);

    let no_main = tar_gz(&[("other.py", b"")]);
    let err = inner
        .prepare_run(&spec(Payload::Archive(no_main)), &dir)
        .unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidPayload(ref m) if m.contains("main.py")),
        "{err}"
    );
    let garbage = inner
        .prepare_run(&spec(Payload::Archive(b"not a tarball".to_vec())), &dir)
        .unwrap_err();
    assert!(
        matches!(garbage, BackendError::InvalidPayload(_)),
        "{garbage}"
    );
}
