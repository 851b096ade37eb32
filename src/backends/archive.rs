//! Safe unpacking of untrusted tar streams: code archives and OCI image layers.
//!
//! Both a workload archive (`tar.gz` from a client) and an image layer (from any
//! registry a client names) are hostile until proven otherwise. One unpacker serves
//! both, with one set of rules; the [`Profile`] only decides the few points where an
//! image layer must behave like a container image and a code archive must not.
//!
//! Rules for every stream:
//!
//! - entry names must be relative and made of plain components (no `..`, no root, no
//!   drive prefix);
//! - no entry is written, replaced or deleted through a symbolic link: every ancestor
//!   of an entry must be a real directory, and files are opened with `O_NOFOLLOW`;
//! - hard links must name a regular file already unpacked below the unpack directory;
//! - device files, FIFOs, sparse files and unknown entry types are rejected;
//! - the decompressed stream, the bytes written and the number of entries are capped,
//!   so neither a compression bomb nor a huge extension header can exhaust memory or
//!   disk;
//! - no set-uid or set-gid bit survives.
//!
//! [`Profile::CodeArchive`] (a client's work directory) adds: symbolic links must be
//! relative, may only climb (`..`) at their start and never above the unpack
//! directory; an existing path is never replaced by a link or a file by a directory;
//! file modes are normalised (`0644`, or `0755` when any execute bit was set) and
//! ownership is left to the caller.
//!
//! [`Profile::ImageLayer`] (one layer of an image's root file system, applied over the
//! layers below it) follows the OCI layer rules instead: a symbolic link may point
//! anywhere, because it is only ever resolved inside the sandbox, against the image's
//! own root (the host never follows it); a later entry replaces an earlier one of
//! another type; `.wh.<name>` deletes `<name>` from the layers below and
//! `.wh..wh..opq` empties its directory of what the layers below put there; modes
//! (minus set-uid/set-gid) and numeric owners are kept, so the image's users own
//! their files inside the sandbox.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// Caps applied while unpacking one archive (or what is left of an image's budget
/// for one layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Largest total size of the unpacked file contents, in bytes.
    pub max_total_bytes: u64,
    /// Largest number of entries (files, directories and links together).
    pub max_entries: usize,
}

/// Which kind of stream is unpacked: see the module documentation for the rules each
/// adds to the common ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// A client's code archive, unpacked into an empty work directory.
    CodeArchive,
    /// One OCI image layer, applied over the layers already unpacked in the directory.
    ImageLayer,
}

/// What an unpacked archive contained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries written (files, directories, links, whiteouts).
    pub entries: usize,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Why an archive was refused. The message is meant for the client.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The bytes are not a readable (compressed) tar stream.
    #[error("archive is not a valid tar.gz: {0}")]
    Malformed(String),
    /// An entry name or link target would leave the unpack directory.
    #[error("archive entry {entry:?} escapes the work directory")]
    Escapes {
        /// The offending entry name as stored in the archive.
        entry: String,
    },
    /// An entry type that is never accepted (device, FIFO, sparse file...).
    #[error("archive entry {entry:?} has a forbidden type ({kind})")]
    ForbiddenType {
        /// The offending entry name.
        entry: String,
        /// A short name of its type.
        kind: String,
    },
    /// An entry collides with one written earlier in a way that is not allowed.
    #[error("archive entry {entry:?} conflicts with an earlier entry")]
    Conflict {
        /// The offending entry name.
        entry: String,
    },
    /// The archive unpacks to more bytes or entries than allowed.
    #[error("archive exceeds the limit on {0}")]
    TooLarge(String),
    /// Writing to the unpack directory failed.
    #[error("could not unpack archive: {0}")]
    Io(String),
}

/// Unpack the gzip-compressed tar `bytes` (a client's code archive) into `dest`, which
/// must exist and be a directory. On error, `dest` may hold a partial unpacking (never
/// anything outside it); the caller discards it.
pub fn unpack_tar_gz(
    bytes: &[u8],
    dest: &Path,
    limits: &ArchiveLimits,
) -> Result<UnpackStats, ArchiveError> {
    unpack(
        flate2::read::GzDecoder::new(bytes),
        dest,
        limits,
        Profile::CodeArchive,
    )
}

/// Unpack the (already decompressed) tar stream `reader` into `dest` under `profile`'s
/// rules. `dest` must exist and be a directory; on error it may hold a partial
/// unpacking (never anything outside it), which the caller discards.
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    limits: &ArchiveLimits,
    profile: Profile,
) -> Result<UnpackStats, ArchiveError> {
    let meta = fs::symlink_metadata(dest).map_err(|e| ArchiveError::Io(e.to_string()))?;
    if !meta.is_dir() {
        return Err(ArchiveError::Io(format!(
            "{} is not a directory",
            dest.display()
        )));
    }
    // Headers (including PAX and GNU long-name records) are read into memory by the tar
    // reader, so the decompressed stream as a whole is capped, not only file contents.
    let stream_cap = limits
        .max_total_bytes
        .saturating_add((limits.max_entries as u64).saturating_mul(3 * 512))
        .saturating_add(1024 * 1024);
    let decoder = CappedReader {
        inner: reader,
        remaining: stream_cap,
    };
    let mut archive = tar::Archive::new(decoder);
    let entries = archive.entries().map_err(malformed)?;
    let mut stats = UnpackStats::default();
    // Image layers: what this layer wrote, so its own whiteouts spare it.
    let mut written: HashSet<PathBuf> = HashSet::new();
    for entry in entries {
        let mut entry = entry.map_err(malformed)?;
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            continue;
        }
        stats.entries += 1;
        if stats.entries > limits.max_entries {
            return Err(ArchiveError::TooLarge(format!(
                "entries ({})",
                limits.max_entries
            )));
        }
        let raw_name = entry.path().map_err(malformed)?.into_owned();
        let display = raw_name.to_string_lossy().into_owned();
        let Some(rel) = clean_relative(&raw_name) else {
            return Err(ArchiveError::Escapes { entry: display });
        };
        if rel.as_os_str().is_empty() {
            // "./" or "." — the unpack directory itself.
            if kind.is_dir() {
                continue;
            }
            return Err(ArchiveError::Conflict { entry: display });
        }
        if profile == Profile::ImageLayer && whiteout(dest, &rel, &written, &display)? {
            continue;
        }
        let target = dest.join(&rel);
        ensure_parent_dirs(dest, &rel, &display)?;
        match kind {
            EntryType::Directory => {
                if profile == Profile::ImageLayer {
                    match fs::symlink_metadata(&target) {
                        Ok(m) if !m.file_type().is_dir() => clear(&target)?,
                        _ => {}
                    }
                }
                make_dir(&target, &display)?;
            }
            EntryType::Regular | EntryType::Continuous => {
                let budget = limits.max_total_bytes - stats.bytes;
                let written = write_file(&mut entry, &target, budget, &display, profile)?;
                stats.bytes += written;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(malformed)?
                    .ok_or_else(|| ArchiveError::Malformed(format!("{display:?}: no link target")))?
                    .into_owned();
                let allowed = match profile {
                    Profile::CodeArchive => symlink_stays_inside(&rel, &link),
                    // Resolved only inside the sandbox, against the image's own root.
                    Profile::ImageLayer => !link.as_os_str().is_empty(),
                };
                if !allowed {
                    return Err(ArchiveError::Escapes { entry: display });
                }
                make_room(&target, &display, profile)?;
                std::os::unix::fs::symlink(&link, &target).map_err(io_err)?;
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(malformed)?
                    .ok_or_else(|| ArchiveError::Malformed(format!("{display:?}: no link target")))?
                    .into_owned();
                let Some(link_rel) = clean_relative(&link) else {
                    return Err(ArchiveError::Escapes { entry: display });
                };
                if link_rel.as_os_str().is_empty() || link_rel == rel {
                    return Err(ArchiveError::Escapes { entry: display });
                }
                ensure_parent_dirs(dest, &link_rel, &display)?;
                let source = dest.join(&link_rel);
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.file_type().is_file() => {}
                    // A hard link to a link, a directory or something not unpacked (yet)
                    // could reach a host file: refuse it.
                    _ => return Err(ArchiveError::Escapes { entry: display }),
                }
                make_room(&target, &display, profile)?;
                fs::hard_link(&source, &target).map_err(io_err)?;
            }
            other => {
                return Err(ArchiveError::ForbiddenType {
                    entry: display,
                    kind: type_name(other).to_string(),
                })
            }
        }
        if profile == Profile::ImageLayer {
            keep_owner_and_mode(&entry, &target, kind)?;
            for ancestor in rel.ancestors().filter(|a| !a.as_os_str().is_empty()) {
                if !written.insert(ancestor.to_path_buf()) {
                    break;
                }
            }
        }
    }
    Ok(stats)
}

/// The whiteout prefix of the OCI layer format.
const WHITEOUT: &str = ".wh.";
/// The opaque-directory marker of the OCI layer format.
const OPAQUE: &str = ".wh..wh..opq";

/// Apply `rel` if it is a whiteout (true), leaving entries this layer wrote alone.
fn whiteout(
    dest: &Path,
    rel: &Path,
    written: &HashSet<PathBuf>,
    display: &str,
) -> Result<bool, ArchiveError> {
    let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
        return Ok(false);
    };
    let Some(hidden) = name.strip_prefix(WHITEOUT) else {
        return Ok(false);
    };
    if name != OPAQUE && (hidden.is_empty() || hidden == "." || hidden == "..") {
        return Err(ArchiveError::Escapes {
            entry: display.to_string(),
        });
    }
    let parent = rel.parent().unwrap_or(Path::new(""));
    if !real_dir_path(dest, parent, display)? {
        // Nothing below to hide.
        return Ok(true);
    }
    let dir = dest.join(parent);
    if name == OPAQUE {
        for child in fs::read_dir(&dir).map_err(io_err)? {
            let child = child.map_err(io_err)?;
            if !written.contains(&parent.join(child.file_name())) {
                clear(&child.path())?;
            }
        }
    } else if !written.contains(&parent.join(hidden)) {
        clear(&dir.join(hidden))?;
    }
    Ok(true)
}

/// Whether `rel` below `dest` exists as a chain of real directories. A missing
/// component is `false`; a component that is anything else (a link above all) is
/// refused, so nothing is ever deleted through a link.
fn real_dir_path(dest: &Path, rel: &Path, display: &str) -> Result<bool, ArchiveError> {
    let mut current = dest.to_path_buf();
    for component in rel.components() {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(ArchiveError::Conflict {
                    entry: display.to_string(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(e)),
        }
    }
    Ok(true)
}

/// Remove whatever is at `path` (a link itself, never what it points to).
fn clear(path: &Path) -> Result<(), ArchiveError> {
    match fs::symlink_metadata(path) {
        // `remove_dir_all` does not follow links inside the tree.
        Ok(m) if m.file_type().is_dir() => fs::remove_dir_all(path).map_err(io_err),
        Ok(_) => fs::remove_file(path).map_err(io_err),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(e)),
    }
}

/// Free `target` for a new link: a code archive never replaces anything with a link;
/// an image layer replaces whatever a lower layer put there.
fn make_room(target: &Path, display: &str, profile: Profile) -> Result<(), ArchiveError> {
    match profile {
        Profile::CodeArchive if fs::symlink_metadata(target).is_ok() => {
            Err(ArchiveError::Conflict {
                entry: display.to_string(),
            })
        }
        Profile::CodeArchive => Ok(()),
        Profile::ImageLayer => clear(target),
    }
}

/// Image layers: the entry's numeric owner and its mode without set-uid/set-gid.
fn keep_owner_and_mode(
    entry: &tar::Entry<'_, impl Read>,
    target: &Path,
    kind: EntryType,
) -> Result<(), ArchiveError> {
    let header = entry.header();
    let uid = header.uid().ok().and_then(|u| u32::try_from(u).ok());
    let gid = header.gid().ok().and_then(|g| u32::try_from(g).ok());
    match std::os::unix::fs::lchown(target, uid, gid) {
        Ok(()) => {}
        // Not root: ownership cannot be kept (the gvisor backend needs root anyway).
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
        Err(e) => return Err(io_err(e)),
    }
    if kind == EntryType::Symlink {
        return Ok(());
    }
    let mode = header.mode().unwrap_or(0o755) & 0o1777;
    fs::set_permissions(target, fs::Permissions::from_mode(mode)).map_err(io_err)
}

/// `path` as plain components, dropping `.`; `None` when it is absolute or climbs.
fn clean_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether a symlink at `link_rel` (relative to the unpack dir) with target `target`
/// resolves inside the unpack dir, assuming every other link there does too.
///
/// The rule is deliberately stricter than lexical normalisation: `..` is only allowed as
/// a prefix, because `a/..` is not the same place as `.` when `a` is itself a link.
fn symlink_stays_inside(link_rel: &Path, target: &Path) -> bool {
    // Directories above the link, inside the unpack dir.
    let depth = link_rel.components().count().saturating_sub(1);
    let mut climbs = 0usize;
    let mut seen_normal = false;
    for component in target.components() {
        match component {
            Component::ParentDir if !seen_normal => climbs += 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
            Component::CurDir => {}
            Component::Normal(_) => seen_normal = true,
        }
    }
    climbs <= depth && !target.as_os_str().is_empty()
}

/// Create the directories above `rel`, refusing to pass through anything but real
/// directories (a link planted by an earlier entry must not redirect later writes).
fn ensure_parent_dirs(dest: &Path, rel: &Path, display: &str) -> Result<(), ArchiveError> {
    let mut current = dest.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for component in parent.components() {
        current.push(component);
        make_dir(&current, display)?;
    }
    Ok(())
}

/// Create `path` as a directory unless it already is one (a link is never accepted).
fn make_dir(path: &Path, display: &str) -> Result<(), ArchiveError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(_) => Err(ArchiveError::Conflict {
            entry: display.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(path).map_err(io_err)?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(io_err)
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Write one regular file, at most `budget` bytes, without following links.
fn write_file(
    entry: &mut tar::Entry<'_, impl Read>,
    target: &Path,
    budget: u64,
    display: &str,
    profile: Profile,
) -> Result<u64, ArchiveError> {
    match (fs::symlink_metadata(target), profile) {
        // A later entry may replace an earlier regular file (tar semantics).
        (Ok(m), Profile::CodeArchive) if m.file_type().is_file() => {
            fs::remove_file(target).map_err(io_err)?
        }
        (Ok(_), Profile::CodeArchive) => {
            return Err(ArchiveError::Conflict {
                entry: display.to_string(),
            })
        }
        // A layer replaces whatever the layers below put there.
        (Ok(_), Profile::ImageLayer) => clear(target)?,
        (Err(e), _) if e.kind() == io::ErrorKind::NotFound => {}
        (Err(e), _) => return Err(io_err(e)),
    }
    let mode = match entry.header().mode() {
        Ok(m) if m & 0o111 != 0 => 0o755,
        _ => 0o644,
    };
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)
        .map_err(io_err)?;
    // The header's size is not trusted: what is copied is counted.
    let written =
        io::copy(&mut entry.take(budget.saturating_add(1)), &mut file).map_err(malformed)?;
    if written > budget {
        return Err(ArchiveError::TooLarge("its unpacked size".into()));
    }
    fs::set_permissions(target, fs::Permissions::from_mode(mode)).map_err(io_err)?;
    Ok(written)
}

fn type_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "fifo",
        EntryType::GNUSparse => "sparse file",
        _ => "unsupported entry type",
    }
}

fn malformed(e: io::Error) -> ArchiveError {
    if e.to_string().contains(CAP_MESSAGE) {
        ArchiveError::TooLarge("its decompressed size".into())
    } else {
        ArchiveError::Malformed(e.to_string())
    }
}

fn io_err(e: io::Error) -> ArchiveError {
    ArchiveError::Io(e.to_string())
}

const CAP_MESSAGE: &str = "decompressed stream exceeds its cap";

/// A reader that fails once more than `remaining` bytes were read through it.
struct CappedReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            // Distinguish "exactly at the cap, stream ended" from "more data follows".
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(CAP_MESSAGE)),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use tar::Header;

    /// The gvisor backend's configured archive limits (the embedded defaults).
    fn default_limits() -> ArchiveLimits {
        let g = crate::config::Config::defaults()
            .expect("defaults")
            .backends
            .gvisor;
        ArchiveLimits {
            max_total_bytes: g.max_archive_bytes,
            max_entries: g.max_archive_entries,
        }
    }

    /// One entry of a test archive; names are written raw so hostile ones are possible.
    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Special(&'a str, EntryType),
    }

    fn raw_header(name: &str, kind: EntryType, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        let bytes = name.as_bytes();
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..bytes.len()].copy_from_slice(bytes);
        h
    }

    fn build(entries: &[E<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for entry in entries {
            let (mut h, data): (Header, &[u8]) = match entry {
                E::File(name, data) => (
                    raw_header(name, EntryType::Regular, data.len() as u64),
                    data,
                ),
                E::Dir(name) => (raw_header(name, EntryType::Directory, 0), b""),
                E::Symlink(name, to) | E::Hardlink(name, to) => {
                    let kind = if matches!(entry, E::Symlink(..)) {
                        EntryType::Symlink
                    } else {
                        EntryType::Link
                    };
                    let mut h = raw_header(name, kind, 0);
                    let old = h.as_old_mut();
                    old.linkname = [0; 100];
                    old.linkname[..to.len()].copy_from_slice(to.as_bytes());
                    (h, b"")
                }
                E::Special(name, kind) => (raw_header(name, *kind, 0), b""),
            };
            h.set_cksum();
            builder.append(&h, data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    /// An unpack dir inside a sandbox dir, so "outside" writes can be detected.
    fn dirs() -> (tempfile::TempDir, PathBuf) {
        let outer = tempfile::tempdir().unwrap();
        let inner = outer.path().join("work");
        fs::create_dir(&inner).unwrap();
        (outer, inner)
    }

    fn outside_entries(outer: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(outer)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn unpacks_files_dirs_and_inside_links() {
        let (_outer, work) = dirs();
        let bytes = build(&[
            E::File("main.py", b"import helper\n"),
            E::Dir("pkg/"),
            E::File("pkg/helper.py", b"X = 1\n"),
            E::File("./deep/er/file.txt", b"hello"),
            E::Symlink("pkg/alias.py", "helper.py"),
            E::Symlink("pkg/up.py", "../main.py"),
            E::Hardlink("copy.py", "main.py"),
        ]);
        let stats = unpack_tar_gz(&bytes, &work, &default_limits()).unwrap();
        assert_eq!(stats.entries, 7);
        assert_eq!(fs::read(work.join("main.py")).unwrap(), b"import helper\n");
        assert_eq!(fs::read(work.join("deep/er/file.txt")).unwrap(), b"hello");
        assert_eq!(fs::read(work.join("pkg/alias.py")).unwrap(), b"X = 1\n");
        assert_eq!(
            fs::read(work.join("pkg/up.py")).unwrap(),
            b"import helper\n"
        );
        assert_eq!(fs::read(work.join("copy.py")).unwrap(), b"import helper\n");
    }

    fn assert_rejected(entries: &[E<'_>], what: &str) {
        let (outer, work) = dirs();
        let bytes = build(entries);
        let result = unpack_tar_gz(&bytes, &work, &default_limits());
        assert!(result.is_err(), "{what}: accepted");
        assert_eq!(
            outside_entries(outer.path()),
            vec!["work".to_string()],
            "{what}: wrote outside"
        );
    }

    #[test]
    fn rejects_parent_dir_entries() {
        assert_rejected(&[E::File("../x", b"owned")], "../x");
        assert_rejected(&[E::File("a/../../x", b"owned")], "a/../../x");
        assert_rejected(&[E::File("a/../x", b"x")], "a/../x (any .. is refused)");
    }

    #[test]
    fn rejects_absolute_entries() {
        let target = tempfile::tempdir().unwrap();
        let abs = target.path().join("abs.txt");
        assert_rejected(&[E::File(abs.to_str().unwrap(), b"owned")], "absolute path");
        assert!(!abs.exists());
    }

    #[test]
    fn rejects_symlinks_out_and_writes_through_links() {
        let (outer, work) = dirs();
        let escape = outer.path().to_str().unwrap().to_string();
        assert_rejected(&[E::Symlink("l", "..")], "symlink to ..");
        assert_rejected(
            &[E::Symlink("l", "../work/../x")],
            "symlink climbing through",
        );
        assert_rejected(&[E::Symlink("l", &escape)], "absolute symlink");
        assert_rejected(
            &[E::Symlink("a/l", "../../x")],
            "nested symlink climbing too far",
        );
        // `dot -> .` is inside, but `dot/..` would be outside: `..` after a name is refused.
        assert_rejected(
            &[E::Symlink("dot", "."), E::Symlink("l", "dot/../x")],
            "link through a link",
        );
        // A link to a directory inside may exist, but entries are never written through it.
        assert_rejected(
            &[E::Dir("d/"), E::Symlink("l", "d"), E::File("l/x", b"x")],
            "write through a link",
        );
        // Replacing an existing entry with a link is refused.
        assert_rejected(
            &[E::File("main.py", b"x"), E::Symlink("main.py", "other")],
            "link over a file",
        );
        drop(work);
    }

    #[test]
    fn rejects_hardlinks_out() {
        let host = tempfile::NamedTempFile::new().unwrap();
        let host_path = host.path().to_str().unwrap().to_string();
        assert_rejected(&[E::Hardlink("l", &host_path)], "absolute hard link");
        assert_rejected(&[E::Hardlink("l", "../x")], "climbing hard link");
        assert_rejected(&[E::Hardlink("l", "missing")], "hard link to nothing");
        assert_rejected(
            &[
                E::Symlink("s", "main.py"),
                E::File("main.py", b"x"),
                E::Hardlink("l", "s"),
            ],
            "hard link to a symlink",
        );
    }

    #[test]
    fn rejects_device_files_and_fifos() {
        for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
            assert_rejected(&[E::Special("dev", kind)], "special file");
        }
    }

    #[test]
    fn caps_total_size_and_entry_count() {
        let (_outer, work) = dirs();
        let big = vec![b'a'; 10_000];
        let bytes = build(&[E::File("a", &big), E::File("b", &big)]);
        let limits = ArchiveLimits {
            max_total_bytes: 15_000,
            max_entries: 100,
        };
        let err = unpack_tar_gz(&bytes, &work, &limits).unwrap_err();
        assert!(matches!(err, ArchiveError::TooLarge(_)), "{err}");

        let (_outer, work) = dirs();
        let files: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        let entries: Vec<E<'_>> = files.iter().map(|f| E::File(f, b"x")).collect();
        let limits = ArchiveLimits {
            max_total_bytes: 1 << 20,
            max_entries: 10,
        };
        let err = unpack_tar_gz(&build(&entries), &work, &limits).unwrap_err();
        assert!(matches!(err, ArchiveError::TooLarge(_)), "{err}");
    }

    #[test]
    fn caps_a_gzip_bomb() {
        let (_outer, work) = dirs();
        // 64 MiB of zeros in one file compresses to a few dozen KiB.
        let zeros = vec![0u8; 64 << 20];
        let bytes = build(&[E::File("bomb", &zeros)]);
        assert!(bytes.len() < 1 << 20);
        let limits = ArchiveLimits {
            max_total_bytes: 1 << 20,
            max_entries: 10,
        };
        let err = unpack_tar_gz(&bytes, &work, &limits).unwrap_err();
        assert!(matches!(err, ArchiveError::TooLarge(_)), "{err}");
    }

    #[test]
    fn rejects_garbage() {
        let (_outer, work) = dirs();
        let err = unpack_tar_gz(b"definitely not gzip", &work, &default_limits());
        assert!(matches!(err, Err(ArchiveError::Malformed(_))), "{err:?}");
    }

    /// Apply each layer (built like a code archive, then decompressed) in order.
    fn apply_layers(layers: &[Vec<u8>], dest: &Path) -> Result<(), ArchiveError> {
        for layer in layers {
            let limits = ArchiveLimits {
                max_total_bytes: 256 * 1024 * 1024,
                max_entries: 10_000,
            };
            unpack(
                flate2::read::GzDecoder::new(&layer[..]),
                dest,
                &limits,
                Profile::ImageLayer,
            )?;
        }
        Ok(())
    }

    #[test]
    fn image_layers_apply_whiteouts_and_opaque_dirs() {
        let (_outer, root) = dirs();
        let lower = build(&[
            E::File("etc/keep", b"k"),
            E::File("etc/gone", b"g"),
            E::Dir("var/"),
            E::File("var/old/a", b"a"),
            E::File("var/b", b"b"),
            E::Dir("opt/tree/"),
            E::File("opt/tree/deep", b"d"),
        ]);
        let upper = build(&[
            E::File("etc/.wh.gone", b""),
            E::File("var/new", b"n"),
            E::File("var/.wh..wh..opq", b""),
            E::File("opt/.wh.tree", b""),
            E::File(".wh.never-existed", b""),
        ]);
        apply_layers(&[lower, upper], &root).unwrap();
        assert!(root.join("etc/keep").is_file());
        assert!(!root.join("etc/gone").exists());
        assert!(!root.join("etc/.wh.gone").exists());
        // Opaque: the lower layer's entries are gone, this layer's own entry stays.
        let mut var: Vec<String> = fs::read_dir(root.join("var"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        var.sort();
        assert_eq!(var, vec!["new".to_string()]);
        assert!(!root.join("opt/tree").exists());
        assert!(root.join("opt").is_dir());
    }

    #[test]
    fn image_layers_replace_entries_of_another_type() {
        let (_outer, root) = dirs();
        let lower = build(&[
            E::File("a", b"file"),
            E::Dir("d/"),
            E::File("d/x", b"x"),
            E::Symlink("l", "/etc/passwd"),
        ]);
        let upper = build(&[
            E::Symlink("a", "/bin/busybox"),
            E::File("d", b"now a file"),
            E::Dir("l/"),
        ]);
        apply_layers(&[lower, upper], &root).unwrap();
        assert_eq!(
            fs::read_link(root.join("a")).unwrap(),
            PathBuf::from("/bin/busybox")
        );
        assert_eq!(fs::read(root.join("d")).unwrap(), b"now a file");
        assert!(fs::symlink_metadata(root.join("l")).unwrap().is_dir());
    }

    #[test]
    fn image_layers_never_write_or_delete_through_links() {
        let (outer, root) = dirs();
        let host = outer.path().join("host");
        fs::create_dir(&host).unwrap();
        fs::write(host.join("victim"), b"host data").unwrap();
        let host_str = host.to_str().unwrap();
        // An absolute link is fine in an image (resolved inside the sandbox)...
        let lower = build(&[E::Symlink("lib", host_str)]);
        apply_layers(std::slice::from_ref(&lower), &root).unwrap();
        // ...but nothing is ever written, linked or deleted through it.
        for (upper, what) in [
            (build(&[E::File("lib/victim", b"owned")]), "write through"),
            (build(&[E::File("lib/.wh.victim", b"")]), "whiteout through"),
            (build(&[E::File("lib/.wh..wh..opq", b"")]), "opaque through"),
            (
                build(&[E::Hardlink("h", "lib/victim")]),
                "hard link through",
            ),
        ] {
            let (_o, root) = dirs();
            let result = apply_layers(&[lower.clone(), upper], &root);
            assert!(result.is_err(), "{what}: accepted");
            assert_eq!(
                fs::read(host.join("victim")).unwrap(),
                b"host data",
                "{what}"
            );
        }
        assert_rejected_layer(&[E::File("../x", b"x")], "traversal");
        assert_rejected_layer(&[E::Special("dev/null", EntryType::Char)], "device");
        assert_rejected_layer(&[E::Special("fifo", EntryType::Fifo)], "fifo");
        assert_rejected_layer(&[E::File("d/.wh...", b"")], "whiteout of ..");
    }

    fn assert_rejected_layer(entries: &[E<'_>], what: &str) {
        let (outer, root) = dirs();
        assert!(
            apply_layers(&[build(entries)], &root).is_err(),
            "{what}: accepted"
        );
        assert_eq!(
            outside_entries(outer.path()),
            vec!["work".to_string()],
            "{what}: wrote outside"
        );
    }

    #[test]
    fn image_layers_keep_modes_but_not_setuid() {
        let (_outer, root) = dirs();
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for (name, kind, mode) in [
            ("tmp/", EntryType::Directory, 0o1777),
            ("private/", EntryType::Directory, 0o700),
            ("bin/su", EntryType::Regular, 0o4755),
            ("etc/shadow", EntryType::Regular, 0o640),
        ] {
            let mut h = raw_header(name, kind, 0);
            h.set_mode(mode);
            h.set_uid(1000);
            h.set_gid(42);
            h.set_cksum();
            builder.append(&h, &b""[..]).unwrap();
        }
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        apply_layers(&[bytes], &root).unwrap();
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("private"), 0o700);
        assert_eq!(mode("bin/su"), 0o755);
        assert_eq!(mode("etc/shadow"), 0o640);
        // SAFETY: geteuid has no preconditions.
        #[allow(unsafe_code)]
        let root_user = unsafe { libc::geteuid() } == 0;
        if root_user {
            use std::os::unix::fs::MetadataExt;
            let meta = fs::metadata(root.join("etc/shadow")).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (1000, 42));
        }
    }

    #[test]
    fn strips_special_mode_bits() {
        let (_outer, work) = dirs();
        let mut h = raw_header("run.sh", EntryType::Regular, 2);
        h.set_mode(0o6777);
        h.set_cksum();
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        builder.append(&h, &b"hi"[..]).unwrap();
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        unpack_tar_gz(&bytes, &work, &default_limits()).unwrap();
        let mode = fs::metadata(work.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
    }
}
