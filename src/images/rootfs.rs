//! Preparing an image's root file system from its verified layer blobs (blocking work),
//! and reading what a run needs from it (the user database) without ever following
//! a link on the host.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::backends::archive::{self, ArchiveError, ArchiveLimits, Profile};

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression of a layer media type; `None` for a media type that is not a
    /// file-system layer this store can apply.
    pub fn of_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Self::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Some(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// Why a root file system could not be prepared (the message is the pull's reason).
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A layer broke a rule or a limit.
    #[error("layer {layer}: {source}")]
    Layer {
        /// The layer's digest.
        layer: String,
        /// What was wrong.
        source: ArchiveError,
    },
    /// The pull was abandoned (timeout or shutdown) while unpacking.
    #[error("cancelled")]
    Cancelled,
    /// Host-side file system failure.
    #[error("cannot prepare the root file system: {0}")]
    Io(String),
}

/// Mount points runsc needs in every root file system (the root is never written by
/// a run, so they must exist beforehand).
const MOUNT_POINTS: &[(&str, u32)] = &[("proc", 0o555), ("dev", 0o755), ("tmp", 0o1777)];

/// Unpack `layers` (blob file, compression, digest) in order into the new directory
/// `dest`, within `limits` for all layers together, then add the mount points and the
/// working directory `workdir`. Returns the bytes of file content written. Stops with
/// [`RootfsError::Cancelled`] soon after `cancel` is set. On error `dest` is removed.
pub fn build(
    layers: &[(PathBuf, Compression, String)],
    dest: &Path,
    limits: &ArchiveLimits,
    workdir: &str,
    cancel: &AtomicBool,
) -> Result<u64, RootfsError> {
    let result = build_inner(layers, dest, limits, workdir, cancel);
    if result.is_err() {
        let _ = fs::remove_dir_all(dest);
    }
    result
}

fn build_inner(
    layers: &[(PathBuf, Compression, String)],
    dest: &Path,
    limits: &ArchiveLimits,
    workdir: &str,
    cancel: &AtomicBool,
) -> Result<u64, RootfsError> {
    let io_err = |e: io::Error| RootfsError::Io(e.to_string());
    fs::create_dir(dest).map_err(io_err)?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755)).map_err(io_err)?;
    let mut left = *limits;
    let mut bytes = 0u64;
    for (path, compression, digest) in layers {
        let file = fs::File::open(path).map_err(io_err)?;
        let reader = Cancellable {
            inner: io::BufReader::new(file),
            cancel,
        };
        let unpacked = match compression {
            Compression::None => archive::unpack(reader, dest, &left, Profile::ImageLayer),
            Compression::Gzip => archive::unpack(
                flate2::read::MultiGzDecoder::new(reader),
                dest,
                &left,
                Profile::ImageLayer,
            ),
            Compression::Zstd => {
                let decoder = zstd::stream::read::Decoder::new(reader).map_err(io_err)?;
                archive::unpack(decoder, dest, &left, Profile::ImageLayer)
            }
        };
        if cancel.load(Ordering::Relaxed) {
            return Err(RootfsError::Cancelled);
        }
        let stats = unpacked.map_err(|source| RootfsError::Layer {
            layer: digest.clone(),
            source,
        })?;
        bytes = bytes.saturating_add(stats.bytes);
        left.max_total_bytes = left.max_total_bytes.saturating_sub(stats.bytes);
        left.max_entries = left.max_entries.saturating_sub(stats.entries);
    }
    for (name, mode) in MOUNT_POINTS {
        let path = dest.join(name);
        if fs::symlink_metadata(&path).is_err() {
            fs::create_dir(&path).map_err(io_err)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).map_err(io_err)?;
        }
    }
    make_workdir(dest, workdir).map_err(io_err)?;
    Ok(bytes)
}

/// Create the image's working directory if the layers did not (Docker does the same).
/// A component that exists as anything but a directory is left alone: it is resolved
/// inside the sandbox, never here.
fn make_workdir(dest: &Path, workdir: &str) -> io::Result<()> {
    let mut current = dest.to_path_buf();
    for component in Path::new(workdir).components() {
        let Component::Normal(part) = component else {
            continue;
        };
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current)?;
                fs::set_permissions(&current, fs::Permissions::from_mode(0o755))?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A reader that fails once `cancel` is set, so a pull abandoned by its timeout stops
/// unpacking within one buffer.
struct Cancellable<'a, R> {
    inner: R,
    cancel: &'a AtomicBool,
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("pull cancelled"));
        }
        self.inner.read(buf)
    }
}

/// The numeric identity a run starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunUser {
    /// User id inside the sandbox.
    pub uid: u32,
    /// Group id inside the sandbox.
    pub gid: u32,
    /// The user's home directory from the image's `/etc/passwd` (`/` when unknown).
    pub home: String,
}

/// Most bytes of `/etc/passwd` or `/etc/group` read from an image.
const MAX_USER_DB: u64 = 4 * 1024 * 1024;

/// Resolve the image's `User` (`""`, `name`, `uid`, `name:group`, `uid:gid`) against
/// the image's own `/etc/passwd` and `/etc/group`, as Docker does: an empty user is
/// uid 0 of the sandbox; a numeric uid needs no entry; a name must have one.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<RunUser, String> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_image_file(rootfs, "etc/passwd").unwrap_or_default();
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let by_id = user_part.parse::<u32>().ok();
    let entry = entries.iter().find(|f| match by_id {
        Some(id) => f[2].parse::<u32>().ok() == Some(id),
        None => f[0] == user_part,
    });
    let (uid, mut gid, home) = match (entry, by_id) {
        (Some(f), _) => (
            f[2].parse::<u32>()
                .map_err(|_| format!("image user {user_part:?} has an invalid uid"))?,
            f[3].parse::<u32>().unwrap_or(0),
            f[5].to_string(),
        ),
        (None, Some(id)) => (id, 0, "/".to_string()),
        (None, None) => {
            return Err(format!(
                "image user {user_part:?} is not in the image's /etc/passwd"
            ))
        }
    };
    if let Some(group) = group_part.filter(|g| !g.is_empty()) {
        gid = match group.parse::<u32>() {
            Ok(id) => id,
            Err(_) => {
                let groups = read_image_file(rootfs, "etc/group").unwrap_or_default();
                groups
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() >= 3 && f[0] == group)
                    .and_then(|f| f[2].parse::<u32>().ok())
                    .ok_or_else(|| {
                        format!("image group {group:?} is not in the image's /etc/group")
                    })?
            }
        };
    }
    let home = if home.is_empty() {
        "/".to_string()
    } else {
        home
    };
    Ok(RunUser { uid, gid, home })
}

/// A small text file of the image, read only if every component is real (no link is
/// followed on the host); `None` when it is missing, a link, or too large.
fn read_image_file(rootfs: &Path, rel: &str) -> Option<String> {
    let mut path = rootfs.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let meta = fs::symlink_metadata(&path).ok()?;
        let last = i + 1 == parts.len();
        if (last && !meta.file_type().is_file()) || (!last && !meta.file_type().is_dir()) {
            return None;
        }
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .ok()?;
    let mut text = String::new();
    file.take(MAX_USER_DB).read_to_string(&mut text).ok()?;
    Some(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rootfs_with(passwd: &str, group: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        fs::write(dir.path().join("etc/group"), group).unwrap();
        dir
    }

    #[test]
    fn users_resolve_like_docker() {
        let root = rootfs_with(
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n",
            "root:x:0:\nstaff:x:50:\n",
        );
        let r = |u: &str| resolve_user(root.path(), u);
        assert_eq!(
            r("").unwrap(),
            RunUser {
                uid: 0,
                gid: 0,
                home: "/root".into()
            }
        );
        assert_eq!(
            r("app").unwrap(),
            RunUser {
                uid: 1000,
                gid: 1001,
                home: "/home/app".into()
            }
        );
        assert_eq!(r("1000").unwrap().gid, 1001);
        assert_eq!(
            r("4242").unwrap(),
            RunUser {
                uid: 4242,
                gid: 0,
                home: "/".into()
            }
        );
        assert_eq!(r("app:staff").unwrap().gid, 50);
        assert_eq!(
            r("4242:7").unwrap(),
            RunUser {
                uid: 4242,
                gid: 7,
                home: "/".into()
            }
        );
        assert!(r("ghost")
            .unwrap_err()
            .contains("not in the image's /etc/passwd"));
        assert!(r("app:ghosts").unwrap_err().contains("/etc/group"));
    }

    #[test]
    fn user_database_is_never_read_through_a_link() {
        let host = rootfs_with("evil:x:0:0::/:/bin/sh\n", "");
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(host.path().join("etc"), root.path().join("etc")).unwrap();
        assert!(resolve_user(root.path(), "evil").is_err());
    }

    fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_path(name).unwrap();
            h.set_cksum();
            builder.append(&h, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn layers_of_every_compression_apply_in_order() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let base = layer(&[("etc/os", b"base"), ("bin/tool", b"v1")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&layer(&[("bin/tool", b"v2")])).unwrap();
        let zst =
            zstd::stream::encode_all(&layer(&[("bin/.wh.tool", b""), ("srv/x", b"z")])[..], 3)
                .unwrap();
        let files = [
            ("plain", base, Compression::None),
            ("gz", gz.finish().unwrap(), Compression::Gzip),
            ("zst", zst, Compression::Zstd),
        ];
        let mut layers = Vec::new();
        for (name, bytes, c) in files {
            let p = dir.path().join(name);
            fs::write(&p, bytes).unwrap();
            layers.push((p, c, format!("sha256:{name}")));
        }
        let dest = dir.path().join("rootfs");
        let limits = ArchiveLimits {
            max_total_bytes: 1 << 20,
            max_entries: 100,
        };
        let bytes = build(&layers, &dest, &limits, "/srv/app", &AtomicBool::new(false)).unwrap();
        assert_eq!(bytes, 4 + 2 + 2 + 1);
        assert_eq!(fs::read(dest.join("etc/os")).unwrap(), b"base");
        assert!(
            !dest.join("bin/tool").exists(),
            "the zstd layer's whiteout applied last"
        );
        assert!(
            dest.join("srv/app").is_dir(),
            "the working directory is made"
        );
        for (name, _) in MOUNT_POINTS {
            assert!(dest.join(name).is_dir(), "{name}");
        }
    }

    #[test]
    fn limits_span_all_layers_and_cancel_stops_unpacking() {
        let dir = tempfile::tempdir().unwrap();
        let mut layers = Vec::new();
        for i in 0..2 {
            let p = dir.path().join(format!("l{i}"));
            fs::write(&p, layer(&[(&format!("f{i}"), &[7u8; 600][..])])).unwrap();
            layers.push((p, Compression::None, format!("sha256:{i}")));
        }
        let limits = ArchiveLimits {
            max_total_bytes: 1000,
            max_entries: 100,
        };
        let dest = dir.path().join("rootfs");
        let err = build(&layers, &dest, &limits, "", &AtomicBool::new(false)).unwrap_err();
        assert!(
            matches!(
                err,
                RootfsError::Layer {
                    source: ArchiveError::TooLarge(_),
                    ..
                }
            ),
            "{err}"
        );
        assert!(!dest.exists(), "a failed build leaves nothing");
        let err = build(
            &layers,
            &dest,
            &ArchiveLimits {
                max_total_bytes: 1 << 20,
                max_entries: 100,
            },
            "",
            &AtomicBool::new(true),
        )
        .unwrap_err();
        assert!(matches!(err, RootfsError::Cancelled), "{err}");
        assert!(!dest.exists());
    }

    #[test]
    fn compression_follows_the_media_type() {
        assert_eq!(
            Compression::of_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::of_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::of_media_type("application/vnd.wasm.content.layer.v1+wasm"),
            None
        );
    }
}
