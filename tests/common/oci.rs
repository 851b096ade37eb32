//! Real OCI infrastructure for tests: Debian's `docker-registry` (the CNCF distribution
//! registry) on a free loopback port with its own storage, and test images built from
//! Debian's `busybox-static` with `umoci` and pushed with `skopeo`. Every tool is the
//! real one; where one is missing (or the tests do not run as root) the helpers say why
//! so the test can print `SKIPPED:`.
#![allow(dead_code)]

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry, stopped (and its storage removed) on drop.
pub struct Registry {
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// `user:password` when the registry requires basic auth.
    pub creds: Option<String>,
    dir: tempfile::TempDir,
    child: Child,
}

/// Why OCI tests cannot run here, if they cannot.
pub fn missing_tools() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some("OCI tests need root (umoci unpack, runsc limits)".into());
    }
    for tool in ["docker-registry", "umoci", "skopeo", "runsc"] {
        if which(tool).is_none() {
            return Some(format!(
                "{tool} is not installed (sudo .ci/install-oci.sh installs the OCI test tools)"
            ));
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some("busybox-static is not installed (/bin/busybox)".into());
    }
    None
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Registry {
    /// Start a registry on a free loopback port with filesystem storage in a temp dir
    /// and an access log, and wait until it answers.
    pub async fn start() -> Registry {
        Self::start_with(None).await
    }

    /// [`Registry::start`], refusing anyone but `user` with `password` (htpasswd with a
    /// bcrypt hash made by python3's `crypt`).
    pub async fn start_with_auth(user: &str, password: &str) -> Registry {
        Self::start_with(Some((user, password))).await
    }

    async fn start_with(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("vulcan-registry-")
            .tempdir()
            .expect("registry dir");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {host}\n",
            dir.path().join("storage").display()
        );
        if let Some((user, password)) = auth {
            let hash = Command::new("python3")
                .args(["-W", "ignore", "-c", "import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))", password])
                .output()
                .expect("python3 for a bcrypt hash");
            let hash = String::from_utf8_lossy(&hash.stdout).trim().to_string();
            assert!(hash.starts_with("$2"), "bcrypt hash: {hash:?}");
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, format!("{user}:{hash}\n")).expect("htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: vulcan-test\n    path: {}\n",
                path.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("registry config");
        let log = std::fs::File::create(dir.path().join("access.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let creds = auth.map(|(u, p)| format!("{u}:{p}"));
        let reg = Registry {
            host,
            creds,
            dir,
            child,
        };
        let client = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(res) = client.get(format!("http://{}/v2/", reg.host)).send().await {
                if res.status().is_success() || res.status() == 401 {
                    return reg;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "registry did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Access-log lines of requests made by Vulcan (its user agent) whose request line
    /// contains `needle` (e.g. `/v2/test/echo/manifests/`).
    pub fn vulcan_requests(&self, needle: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("oci-client") && l.contains(needle))
            .count()
    }

    /// The stored file of blob `digest` (`sha256:…`), to tamper with.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The manifest of `repo:tag` as the registry serves it, and its digest.
    pub async fn manifest(&self, repo: &str, tag: &str) -> (serde_json::Value, String) {
        let (bytes, digest) = self.manifest_bytes(repo, tag).await;
        (
            serde_json::from_slice(&bytes).expect("manifest json"),
            digest,
        )
    }

    /// The manifest of `repo:tag` byte for byte, and its digest.
    pub async fn manifest_bytes(&self, repo: &str, tag: &str) -> (Vec<u8>, String) {
        let res = reqwest::Client::new()
            .get(format!("http://{}/v2/{repo}/manifests/{tag}", self.host))
            .header(
                "Accept",
                "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
            )
            .send()
            .await
            .expect("manifest");
        assert!(
            res.status().is_success(),
            "manifest of {repo}:{tag}: {}",
            res.status()
        );
        let digest = res
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .expect("digest header")
            .to_string();
        (res.bytes().await.expect("manifest body").to_vec(), digest)
    }

    /// Upload `body` as the manifest (or index) `repo:tag` with `media_type`.
    pub async fn put_manifest(&self, repo: &str, tag: &str, media_type: &str, body: Vec<u8>) {
        let res = reqwest::Client::new()
            .put(format!("http://{}/v2/{repo}/manifests/{tag}", self.host))
            .header("Content-Type", media_type)
            .body(body)
            .send()
            .await
            .expect("put manifest");
        assert!(res.status().is_success(), "put manifest: {}", res.status());
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to build one test image.
#[derive(Default, Clone)]
pub struct ImageSpec {
    /// Extra files in the busybox layer: (path below the root, content).
    pub files: Vec<(String, Vec<u8>)>,
    /// Flags for `umoci config` (e.g. `--config.entrypoint=/bin/sh`).
    pub config: Vec<String>,
    /// Uncompressed tar layers appended verbatim on top (whiteouts and the like).
    pub extra_layers: Vec<Vec<u8>>,
    /// Bytes of incompressible filler in the base layer (to make an image large).
    pub filler_bytes: usize,
}

/// Build a busybox image (every applet linked in `/bin`, an `/etc/passwd` with `root`
/// and `app` (1000:1000)) plus `spec`, and push it as `<registry>/test/<name>:latest`.
/// Runs blocking tools: call from `spawn_blocking`.
pub fn build_and_push(registry_host: &str, name: &str, spec: &ImageSpec) -> String {
    build_and_push_as(registry_host, None, name, spec)
}

/// [`build_and_push`] to a registry that wants `creds` (`user:password`).
pub fn build_and_push_as(
    registry_host: &str,
    creds: Option<&str>,
    name: &str,
    spec: &ImageSpec,
) -> String {
    let work = tempfile::Builder::new()
        .prefix("vulcan-image-")
        .tempdir()
        .expect("image dir");
    let layout = work.path().join("layout");
    let image = format!("{}:{name}", layout.display());
    run("umoci", &["init", "--layout", &layout.to_string_lossy()]);
    run("umoci", &["new", "--image", &image]);
    let bundle = work.path().join("bundle");
    run(
        "umoci",
        &["unpack", "--image", &image, &bundle.to_string_lossy()],
    );
    let rootfs = bundle.join("rootfs");
    populate_busybox(&rootfs);
    for (path, content) in &spec.files {
        let p = rootfs.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, content).expect("write file");
    }
    if spec.filler_bytes > 0 {
        let mut f = std::fs::File::create(rootfs.join("filler")).expect("filler");
        let mut state = 0x1234_5678u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = spec.filler_bytes;
        while left > 0 {
            for b in buf.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            let n = left.min(buf.len());
            f.write_all(&buf[..n]).expect("filler write");
            left -= n;
        }
    }
    run(
        "umoci",
        &["repack", "--image", &image, &bundle.to_string_lossy()],
    );
    for (i, layer) in spec.extra_layers.iter().enumerate() {
        let path = work.path().join(format!("layer-{i}.tar"));
        std::fs::write(&path, layer).expect("layer");
        run(
            "umoci",
            &[
                "raw",
                "add-layer",
                "--image",
                &image,
                &path.to_string_lossy(),
            ],
        );
    }
    if !spec.config.is_empty() {
        let mut args = vec!["config".to_string(), "--image".into(), image.clone()];
        args.extend(spec.config.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("umoci", &args);
    }
    let reference = format!("{registry_host}/test/{name}:latest");
    let mut args = vec![
        "copy".to_string(),
        "--quiet".into(),
        "--dest-tls-verify=false".into(),
    ];
    if let Some(creds) = creds {
        args.push(format!("--dest-creds={creds}"));
    }
    args.push(format!("oci:{image}"));
    args.push(format!("docker://{reference}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("skopeo", &args);
    reference
}

fn populate_busybox(rootfs: &Path) {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("copy busybox");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    let etc = rootfs.join("etc");
    std::fs::create_dir_all(&etc).expect("etc");
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(etc.join("group"), "root:x:0:\napp:x:1000:\n").expect("group");
    for dir in ["root", "home/app", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir)).expect("dir");
    }
    std::os::unix::fs::chown(rootfs.join("home/app"), Some(1000), Some(1000)).expect("chown");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("tmp mode");
}

fn run(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An uncompressed tar of raw entries (name, type, content): whiteouts included.
pub fn raw_tar(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_path(name).expect("path");
        h.set_cksum();
        builder.append(&h, *data).expect("append");
    }
    builder.into_inner().expect("tar")
}

/// A digest of everything below `dir` (names, types, modes, owners, contents, link
/// targets), to prove a tree unchanged.
pub fn tree_digest(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;
    let mut entries = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let meta = std::fs::symlink_metadata(e.path()).expect("meta");
            let rel = e
                .path()
                .strip_prefix(dir)
                .expect("rel")
                .to_string_lossy()
                .into_owned();
            let mut line = format!("{rel} {:o} {} {} ", meta.mode(), meta.uid(), meta.gid());
            if meta.file_type().is_symlink() {
                line.push_str(
                    &std::fs::read_link(e.path())
                        .expect("link")
                        .to_string_lossy(),
                );
            } else if meta.is_file() {
                let bytes = std::fs::read(e.path()).expect("file");
                line.push_str(&hex::encode(Sha256::digest(&bytes)));
            } else if meta.is_dir() {
                stack.push(e.path());
            }
            entries.push(line);
        }
    }
    entries.sort();
    hex::encode(Sha256::digest(entries.join("\n").as_bytes()))
}

/// An uncompressed tar whose entry names and link targets are written raw (the tar
/// crate's own builder refuses `..`): (name, type, link target, content).
pub fn hostile_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        builder.append(&h, *data).expect("append");
    }
    builder.into_inner().expect("tar")
}
