//! Turning `vulcan run`'s arguments into a submission body: reading FILE, `-` or a
//! directory (packed as a tar.gz `code_archive`), guessing the runtime, reading
//! `--input`, all bounded by the server's request body limit.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::CliError;
use crate::config::Config;
use crate::model::{Runtime, WorkloadRequestDto};

/// Where the code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file or a directory.
    Path(PathBuf),
    /// Standard input (`-`).
    Stdin,
    /// An OCI image and an optional replacement command.
    Image {
        /// The image reference.
        reference: String,
        /// Replaces the image's entrypoint + cmd when non-empty.
        command: Vec<String>,
    },
}

/// The largest request body the server accepts by default (`max_body_bytes` of the
/// embedded configuration): bodies above it are refused here, before anything is sent.
pub fn body_limit() -> Result<usize, CliError> {
    Config::load_from(HashMap::new())
        .map(|c| c.max_body_bytes)
        .map_err(|e| CliError::Usage(e.to_string()))
}

/// The runtime a file name implies: `.js`/`.mjs` node, `.py` python, `.go` go,
/// `.wasm`/`.wat` wasm.
pub fn runtime_for_extension(path: &Path) -> Option<Runtime> {
    match path.extension()?.to_str()? {
        "js" | "mjs" => Some(Runtime::Node),
        "py" => Some(Runtime::Python),
        "go" => Some(Runtime::Go),
        "wasm" | "wat" => Some(Runtime::Wasm),
        _ => None,
    }
}

/// The runtime a directory implies: the one whose entry file (`main.py`, `main.go`)
/// is at its root.
fn runtime_for_directory(dir: &Path) -> Option<Runtime> {
    [("main.py", Runtime::Python), ("main.go", Runtime::Go)]
        .into_iter()
        .find(|(file, _)| dir.join(file).is_file())
        .map(|(_, r)| r)
}

/// Complete `body` (input, isolation and resources already set) with `runtime` (given
/// or guessed) and the code from `source`. Fails with a usage error when the runtime
/// cannot be guessed, the code cannot be read, or the body would exceed `limit` bytes.
pub fn build(
    source: &Source,
    runtime: Option<Runtime>,
    mut body: WorkloadRequestDto,
    limit: usize,
) -> Result<WorkloadRequestDto, CliError> {
    let runtime = match source {
        Source::Image { reference, command } => {
            if runtime.is_some_and(|r| r != Runtime::Oci) {
                return Err(CliError::Usage(
                    "--image runs an OCI image: its runtime is oci".into(),
                ));
            }
            body.image = Some(reference.clone());
            body.command = (!command.is_empty()).then(|| command.clone());
            Runtime::Oci
        }
        Source::Stdin => {
            let runtime = runtime.ok_or_else(|| {
                CliError::Usage("code from stdin needs --runtime (node, wasm, python, go)".into())
            })?;
            let bytes = read_bounded(io::stdin().lock(), limit, "stdin")?;
            set_code(&mut body, runtime, bytes, "stdin", false)?;
            runtime
        }
        Source::Path(path) => {
            let meta = fs::metadata(path)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
            if meta.is_dir() {
                let runtime = runtime.or_else(|| runtime_for_directory(path)).ok_or_else(|| {
                    CliError::Usage(format!(
                        "cannot tell the runtime of directory {} (no main.py or main.go at its root): pass --runtime",
                        path.display()
                    ))
                })?;
                body.code_archive = Some(encode(&pack_directory(path, archive_limit(limit))?));
                runtime
            } else {
                let runtime = runtime.or_else(|| runtime_for_extension(path)).ok_or_else(|| {
                    CliError::Usage(format!(
                        "cannot tell the runtime of {} from its extension (.js .mjs .py .go .wasm .wat): pass --runtime",
                        path.display()
                    ))
                })?;
                let file = fs::File::open(path)
                    .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
                let name = path.display().to_string();
                let bytes = read_bounded(file, limit, &name)?;
                let archive = name.ends_with(".tar.gz") || name.ends_with(".tgz");
                set_code(&mut body, runtime, bytes, &name, archive)?;
                runtime
            }
        }
    };
    body.runtime = Some(runtime.as_str().to_string());
    let size = serde_json::to_vec(&body)
        .map_err(|e| CliError::Usage(format!("cannot encode the request: {e}")))?
        .len();
    if size > limit {
        return Err(too_large("the request", limit));
    }
    Ok(body)
}

/// Put `bytes` into `code` (text) or `code_archive` (a `.wasm` binary, a tar.gz).
fn set_code(
    body: &mut WorkloadRequestDto,
    runtime: Runtime,
    bytes: Vec<u8>,
    name: &str,
    archive: bool,
) -> Result<(), CliError> {
    let wasm_binary = runtime == Runtime::Wasm && bytes.starts_with(b"\0asm");
    if archive || wasm_binary {
        body.code_archive = Some(encode(&bytes));
        return Ok(());
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        CliError::Usage(format!(
            "{name} is not UTF-8 text (binary code must be a .wasm module or a .tar.gz archive)"
        ))
    })?;
    body.code = Some(text);
    Ok(())
}

fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Raw bytes whose base64 form fits in `limit`.
fn archive_limit(limit: usize) -> usize {
    limit / 4 * 3
}

fn too_large(what: &str, limit: usize) -> CliError {
    CliError::Usage(format!(
        "{what} is larger than the server's request body limit ({} bytes = {:.1} MiB)",
        limit,
        limit as f64 / (1024.0 * 1024.0)
    ))
}

/// Read at most `limit` bytes; more is an error (never reads past `limit + 1`).
fn read_bounded(reader: impl Read, limit: usize, what: &str) -> Result<Vec<u8>, CliError> {
    let mut bytes = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::Usage(format!("cannot read {what}: {e}")))?;
    if bytes.len() > limit {
        return Err(too_large(what, limit));
    }
    Ok(bytes)
}

/// `--input`: JSON text, `@FILE` (its JSON contents) or `@-` (JSON on stdin).
pub fn parse_input(arg: &str, limit: usize) -> Result<serde_json::Value, CliError> {
    let (text, what) = match arg.strip_prefix('@') {
        Some("-") => (
            read_bounded(io::stdin().lock(), limit, "stdin")?,
            "stdin".to_string(),
        ),
        Some(path) => {
            let file = fs::File::open(path)
                .map_err(|e| CliError::Usage(format!("cannot read input file {path}: {e}")))?;
            (read_bounded(file, limit, path)?, path.to_string())
        }
        None => (arg.as_bytes().to_vec(), "--input".to_string()),
    };
    serde_json::from_slice(&text)
        .map_err(|e| CliError::Usage(format!("{what} is not valid JSON: {e}")))
}

/// A writer into memory that refuses to grow past `cap` bytes.
struct CappedBuffer {
    bytes: Vec<u8>,
    cap: usize,
}

impl Write for CappedBuffer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + data.len() > self.cap {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "archive too large",
            ));
        }
        self.bytes.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Pack `dir` as a tar.gz of at most `cap` bytes, entries relative to it, in name
/// order. Symbolic links are kept as links when they resolve inside `dir` and refused
/// otherwise (the server would refuse them too); devices, FIFOs and sockets are refused.
pub fn pack_directory(dir: &Path, cap: usize) -> Result<Vec<u8>, CliError> {
    let out = CappedBuffer {
        bytes: Vec::new(),
        cap,
    };
    let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::default()));
    tar.follow_symlinks(false);
    let fail = |e: io::Error| {
        if e.kind() == io::ErrorKind::FileTooLarge {
            too_large(&format!("the archive of {}", dir.display()), cap / 3 * 4)
        } else {
            CliError::Usage(format!("cannot pack {}: {e}", dir.display()))
        }
    };
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let mut names: Vec<_> = fs::read_dir(dir.join(&rel))
            .map_err(fail)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        names.sort();
        // Reversed onto the stack so subdirectories are visited in name order.
        let mut subdirs = Vec::new();
        for name in names {
            let rel_path = rel.join(&name);
            let full = dir.join(&rel_path);
            let kind = fs::symlink_metadata(&full).map_err(fail)?.file_type();
            if kind.is_symlink() {
                let target = fs::read_link(&full).map_err(fail)?;
                if !link_stays_inside(&rel_path, &target) {
                    return Err(CliError::Usage(format!(
                        "{} is a symbolic link to {}, outside {}: refusing to send it",
                        full.display(),
                        target.display(),
                        dir.display()
                    )));
                }
            } else if !kind.is_file() && !kind.is_dir() {
                return Err(CliError::Usage(format!(
                    "{} is not a regular file, directory or link: refusing to send it",
                    full.display()
                )));
            }
            tar.append_path_with_name(&full, &rel_path).map_err(fail)?;
            if kind.is_dir() {
                subdirs.push(rel_path);
            }
        }
        pending.extend(subdirs.into_iter().rev());
    }
    let gz = tar.into_inner().map_err(fail)?;
    Ok(gz.finish().map_err(fail)?.bytes)
}

/// Whether a link at `link` (relative to the packed directory) pointing to `target`
/// resolves inside that directory, judged on the names alone.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    let mut depth = link.components().count().saturating_sub(1) as i64;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_follow_the_extension() {
        for (name, runtime) in [
            ("a.js", Some(Runtime::Node)),
            ("a.mjs", Some(Runtime::Node)),
            ("a.py", Some(Runtime::Python)),
            ("a.go", Some(Runtime::Go)),
            ("a.wasm", Some(Runtime::Wasm)),
            ("a.wat", Some(Runtime::Wasm)),
            ("a.txt", None),
            ("Makefile", None),
        ] {
            assert_eq!(runtime_for_extension(Path::new(name)), runtime, "{name}");
        }
    }

    #[test]
    fn links_are_judged_from_where_they_sit() {
        assert!(link_stays_inside(Path::new("a"), Path::new("b")));
        assert!(link_stays_inside(Path::new("d/a"), Path::new("../b")));
        assert!(link_stays_inside(
            Path::new("d/a"),
            Path::new("./x/../../b")
        ));
        assert!(!link_stays_inside(Path::new("a"), Path::new("../b")));
        assert!(!link_stays_inside(Path::new("d/a"), Path::new("../../b")));
        assert!(!link_stays_inside(Path::new("a"), Path::new("/etc/passwd")));
    }

    #[test]
    fn directories_are_packed_with_their_inside_links_and_nothing_else() {
        let dir = tempfile::tempdir().expect("dir");
        fs::write(dir.path().join("main.py"), "print(1)").expect("write");
        fs::create_dir(dir.path().join("lib")).expect("mkdir");
        fs::write(dir.path().join("lib/util.py"), "X = 1").expect("write");
        std::os::unix::fs::symlink("../main.py", dir.path().join("lib/alias.py")).expect("link");
        let gz = pack_directory(dir.path(), 1 << 20).expect("pack");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        let mut names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        names.sort();
        assert_eq!(names, ["lib", "lib/alias.py", "lib/util.py", "main.py"]);
        assert_eq!(runtime_for_directory(dir.path()), Some(Runtime::Python));
    }

    #[test]
    fn links_out_of_the_directory_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        fs::write(dir.path().join("main.py"), "print(1)").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("secret")).expect("link");
        let err = pack_directory(dir.path(), 1 << 20).expect_err("must refuse");
        assert!(err.to_string().contains("outside"), "{err}");
    }

    #[test]
    fn archives_stop_at_the_cap() {
        let dir = tempfile::tempdir().expect("dir");
        // Incompressible content, so the gzip stream really grows.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        fs::write(dir.path().join("main.py"), noise).expect("write");
        match pack_directory(dir.path(), 50_000) {
            Ok(gz) => panic!("a {}-byte archive passed a 50000-byte cap", gz.len()),
            Err(err) => assert!(err.to_string().contains("request body limit"), "{err}"),
        }
    }

    #[test]
    fn bodies_above_the_limit_are_refused_before_sending() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("big.js");
        fs::write(&file, "x".repeat(2_000)).expect("write");
        let source = Source::Path(file);
        let err = build(&source, None, Default::default(), 1_000).expect_err("too large");
        assert!(err.to_string().contains("request body limit"), "{err}");
        let ok = build(&source, None, Default::default(), 10_000).expect("fits");
        assert_eq!(ok.runtime.as_deref(), Some("node"));
        assert_eq!(ok.code.as_deref().map(str::len), Some(2_000));
    }

    #[test]
    fn binary_wasm_goes_in_the_archive_field_and_wat_in_code() {
        let dir = tempfile::tempdir().expect("dir");
        let bin = dir.path().join("m.wasm");
        fs::write(&bin, b"\0asm\x01\0\0\0").expect("write");
        let body = build(&Source::Path(bin), None, Default::default(), 1 << 20).expect("wasm");
        assert_eq!(body.code_archive.as_deref(), Some("AGFzbQEAAAA="));
        assert_eq!(body.code, None);
        let wat = dir.path().join("m.wat");
        fs::write(&wat, "(module)").expect("write");
        let body = build(&Source::Path(wat), None, Default::default(), 1 << 20).expect("wat");
        assert_eq!(body.code.as_deref(), Some("(module)"));
    }

    #[test]
    fn images_make_an_oci_body_with_their_command() {
        let source = Source::Image {
            reference: "busybox:1.36".into(),
            command: vec!["echo".into(), "hi".into()],
        };
        let body = build(&source, None, Default::default(), 1 << 20).expect("image");
        assert_eq!(body.runtime.as_deref(), Some("oci"));
        assert_eq!(body.image.as_deref(), Some("busybox:1.36"));
        assert_eq!(
            body.command,
            Some(vec!["echo".to_string(), "hi".to_string()])
        );
        assert_eq!((body.code, body.code_archive), (None, None));
        assert!(build(&source, Some(Runtime::Node), Default::default(), 1 << 20).is_err());
        let bare = Source::Image {
            reference: "busybox:1.36".into(),
            command: Vec::new(),
        };
        let body = build(&bare, None, Default::default(), 1 << 20).expect("image");
        assert_eq!(body.command, None, "no command: the image's own");
    }

    #[test]
    fn input_is_json_text_or_a_file() {
        assert_eq!(
            parse_input(r#"{"a":1}"#, 100).expect("json"),
            serde_json::json!({"a": 1})
        );
        assert!(parse_input("{nope", 100).is_err());
        let dir = tempfile::tempdir().expect("dir");
        let f = dir.path().join("in.json");
        fs::write(&f, "[1,2]").expect("write");
        assert_eq!(
            parse_input(&format!("@{}", f.display()), 100).expect("file"),
            serde_json::json!([1, 2])
        );
    }
}
