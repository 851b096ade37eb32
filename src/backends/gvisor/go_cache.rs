//! Built `go` binaries kept across runs, so a repeated submission only runs its program.
//!
//! An entry is keyed by the sha256 of (the build recipe, the toolchain key, the payload):
//! the toolchain key is the hash of the host's `go` binary, so a toolchain upgrade
//! changes every key and nothing built by another toolchain is ever used.
//!
//! Trust: the build happens inside the sandbox, but an entry is only ever written by the
//! host, after the building sandbox is gone, from the single regular file the build left
//! in its scratch output directory (opened without following links, size-capped). The
//! host records the entry's size and sha256 at insert (in memory and in a `<key>.meta`
//! side file), guests see an entry only through a read-only bind mount, and every use
//! re-checks size and hash first: an entry that does not match is removed and rebuilt.
//!
//! Layout (`0700`, root only): `<dir>/<key>.bin` (mode `0555`), `<dir>/<key>.meta`
//! (`{"size":…,"sha256":"…"}`), and `.tmp-*` files that only exist while one is written
//! (written, then renamed into place: concurrent cold runs never expose a half file).
//! The total size of the `.bin` files stays within the configured cap; the least
//! recently used entries that no run holds are evicted first.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::Payload;

/// Part of every key: a change of how binaries are built (flags, environment) must not
/// reuse binaries built the old way.
const RECIPE: &str = "vulcan-go-build-v1: go build -buildvcs=false, CGO_ENABLED=0, GOPROXY=off";

/// Counters of one cache, for operators (`GET /v1/backends` details).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GoCacheStats {
    /// Runs served by a verified entry (no build).
    pub hits: u64,
    /// Runs that found no usable entry and built.
    pub misses: u64,
    /// Entries found not to match their recorded size or hash (removed; counted as misses too).
    pub rejected: u64,
    /// Entries removed to stay within the size cap.
    pub evictions: u64,
    /// Entries stored now.
    pub entries: u64,
    /// Total size of the stored binaries, in bytes (never above the cap).
    pub bytes: u64,
}

/// What is recorded about an entry when the host inserts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    size: u64,
    sha256: String,
}

#[derive(Debug)]
struct Entry {
    meta: Meta,
    /// Logical clock of the last use (higher = more recent).
    last_used: u64,
    /// Runs holding the entry mounted: it is not evicted while this is above zero.
    leases: usize,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Entry>,
    clock: u64,
    stats: GoCacheStats,
}

impl Index {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn total(&self) -> u64 {
        self.entries.values().map(|e| e.meta.size).sum()
    }
}

/// A bounded, per-backend cache of built go binaries. Cheap to share through `Arc`.
#[derive(Debug)]
pub struct GoCache {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
}

/// A verified entry held for one run: not evicted until dropped.
#[derive(Debug)]
pub struct GoLease {
    cache: Arc<GoCache>,
    key: String,
}

impl GoLease {
    /// The entry's binary on the host (bind it read-only into the sandbox).
    pub fn path(&self) -> PathBuf {
        self.cache.bin_path(&self.key)
    }
}

impl Drop for GoLease {
    fn drop(&mut self) {
        let mut index = self.cache.lock();
        if let Some(entry) = index.entries.get_mut(&self.key) {
            entry.leases = entry.leases.saturating_sub(1);
        }
    }
}

/// The toolchain part of a key: the sha256 of the `go` binary's content (blocking).
pub fn toolchain_key(go: &Path) -> io::Result<String> {
    let mut file = File::open(go)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// The cache key of `payload` built by the toolchain `toolchain` (see [`toolchain_key`]).
pub fn key(toolchain: &str, payload: &Payload) -> String {
    let mut hasher = Sha256::new();
    hasher.update(RECIPE.as_bytes());
    hasher.update([0]);
    hasher.update(toolchain.as_bytes());
    hasher.update([0]);
    match payload {
        Payload::Code(text) => {
            hasher.update(b"code\0");
            hasher.update(text.as_bytes());
        }
        Payload::Archive(bytes) => {
            hasher.update(b"archive\0");
            hasher.update(bytes);
        }
        Payload::Image { reference, .. } => {
            hasher.update(b"image\0");
            hasher.update(reference.as_bytes());
        }
    }
    hex::encode(hasher.finalize())
}

/// Copy the regular file at `src` (never following a link, never blocking on a FIFO)
/// into a new file `dst` (mode `0555`), at most `cap` bytes; returns its size and sha256.
/// Fails if `src` is not a regular file or is larger than `cap`.
pub fn adopt(src: &Path, dst: &Path, cap: u64) -> io::Result<(u64, String)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(src)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("the build output is not a regular file"));
    }
    if meta.len() > cap {
        return Err(io::Error::other(format!(
            "the built binary is larger than {cap} bytes"
        )));
    }
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut reader = file.take(cap.saturating_add(1));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > cap {
            drop(out);
            let _ = fs::remove_file(dst);
            return Err(io::Error::other(format!(
                "the built binary is larger than {cap} bytes"
            )));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    out.sync_all()?;
    drop(out);
    fs::set_permissions(dst, fs::Permissions::from_mode(0o555))?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// Size and sha256 of the file at `path`, not following a link (blocking).
fn measure(path: &Path) -> io::Result<Meta> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut hasher = Sha256::new();
    let size = io::copy(&mut file, &mut hasher)?;
    Ok(Meta {
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

fn is_key(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Caches open in this process, by directory: a backend rebuilt by its supervisor
/// (while runs of the previous instance may still hold entries) shares the cache, its
/// leases and its counters instead of opening a second index on the same files.
static OPEN: Mutex<Vec<(PathBuf, std::sync::Weak<GoCache>)>> = Mutex::new(Vec::new());

impl GoCache {
    /// The cache in `dir` already open in this process with the same cap, or
    /// [`GoCache::open`] of it. Blocking.
    pub fn shared(dir: &Path, max_bytes: u64) -> io::Result<Arc<Self>> {
        let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|(_, weak)| weak.strong_count() > 0);
        let found = open
            .iter()
            .filter(|(d, _)| d == dir)
            .filter_map(|(_, weak)| weak.upgrade())
            .find(|cache| cache.max_bytes == max_bytes);
        if let Some(cache) = found {
            return Ok(cache);
        }
        let cache = Self::open(dir, max_bytes)?;
        open.push((dir.to_path_buf(), Arc::downgrade(&cache)));
        Ok(cache)
    }

    /// Open (creating it `0700` if needed) the cache in `dir`, holding at most
    /// `max_bytes` of binaries. Entries recorded by an earlier run of the server are
    /// kept (and verified at use); half-written files and entries without a valid
    /// record are removed. Blocking.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Arc<Self>> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let mut found: Vec<(std::time::SystemTime, String, Meta)> = Vec::new();
        let mut bins: Vec<String> = Vec::new();
        for entry in fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(key) = name.strip_suffix(".meta").filter(|k| is_key(k)) {
                let meta = fs::read(entry.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Meta>(&b).ok());
                let mtime = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                match meta {
                    Some(meta) => found.push((mtime, key.to_string(), meta)),
                    None => remove_quietly(&entry.path()),
                }
            } else if let Some(key) = name.strip_suffix(".bin").filter(|k| is_key(k)) {
                bins.push(key.to_string());
            } else {
                // `.tmp-*` leftovers of a crashed insert, or anything else.
                remove_quietly(&entry.path());
            }
        }
        found.sort_by_key(|f| f.0);
        let cache = Arc::new(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            index: Mutex::new(Index::default()),
        });
        {
            let mut index = cache.lock();
            for (_, key, meta) in found {
                if bins.contains(&key) {
                    let last_used = index.tick();
                    index.entries.insert(
                        key,
                        Entry {
                            meta,
                            last_used,
                            leases: 0,
                        },
                    );
                } else {
                    remove_quietly(&cache.meta_path(&key));
                }
            }
            for key in bins {
                if !index.entries.contains_key(&key) {
                    remove_quietly(&cache.bin_path(&key));
                }
            }
            // The cap may have been lowered since the entries were written.
            cache.evict_to_fit(&mut index, 0);
        }
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bin_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.bin"))
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.meta"))
    }

    /// The counters and current size.
    pub fn stats(&self) -> GoCacheStats {
        let index = self.lock();
        GoCacheStats {
            entries: index.entries.len() as u64,
            bytes: index.total(),
            ..index.stats
        }
    }

    /// The verified entry of `key`, held until the lease is dropped; `None` (a miss)
    /// when there is none or it no longer matches what was recorded at insert (it is
    /// then removed). Blocking: reads the whole binary to check its hash.
    pub fn lookup(self: &Arc<Self>, key: &str) -> Option<GoLease> {
        let recorded = {
            let mut index = self.lock();
            match index.entries.get_mut(key) {
                Some(entry) => {
                    // Held while verifying, so eviction cannot race the check.
                    entry.leases += 1;
                    Some(entry.meta.clone())
                }
                None => {
                    index.stats.misses += 1;
                    None
                }
            }
        }?;
        let lease = GoLease {
            cache: self.clone(),
            key: key.to_string(),
        };
        let actual = measure(&self.bin_path(key));
        let mut index = self.lock();
        if actual.as_ref().is_ok_and(|m| *m == recorded) {
            let now = index.tick();
            if let Some(entry) = index.entries.get_mut(key) {
                entry.last_used = now;
            }
            index.stats.hits += 1;
            return Some(lease);
        }
        log::warn!(
            "gvisor: go cache entry {key} does not match its record ({}); rebuilding",
            match &actual {
                Ok(m) => format!("size {} sha256 {}", m.size, m.sha256),
                Err(e) => e.to_string(),
            }
        );
        index.stats.rejected += 1;
        index.stats.misses += 1;
        if index.entries.remove(key).is_some() {
            remove_quietly(&self.bin_path(key));
            remove_quietly(&self.meta_path(key));
        }
        drop(index);
        // The entry is gone: the lease's drop finds nothing to release.
        drop(lease);
        None
    }

    /// Store a copy of the host-owned binary `src` (size and sha256 as [`adopt`]
    /// measured them) under `key`, evicting least recently used entries no run holds.
    /// Does nothing when the binary is larger than the cap, when the room cannot be
    /// made, or when `key` is already stored (a concurrent cold run of the same code).
    /// Blocking.
    pub fn insert(&self, key: &str, src: &Path, size: u64, sha256: &str) -> io::Result<()> {
        if size > self.max_bytes || !is_key(key) || self.lock().entries.contains_key(key) {
            return Ok(());
        }
        let meta = Meta {
            size,
            sha256: sha256.to_string(),
        };
        let suffix = ulid::Ulid::new().to_string();
        let tmp_bin = self.dir.join(format!(".tmp-{suffix}.bin"));
        let tmp_meta = self.dir.join(format!(".tmp-{suffix}.meta"));
        let written = (|| {
            fs::copy(src, &tmp_bin)?;
            fs::set_permissions(&tmp_bin, fs::Permissions::from_mode(0o555))?;
            if measure(&tmp_bin)? != meta {
                return Err(io::Error::other("the copy does not match its source"));
            }
            fs::write(
                &tmp_meta,
                serde_json::to_vec(&meta).map_err(io::Error::other)?,
            )
        })();
        if let Err(e) = written {
            remove_quietly(&tmp_bin);
            remove_quietly(&tmp_meta);
            return Err(e);
        }
        let mut index = self.lock();
        if index.entries.contains_key(key) || !self.evict_to_fit(&mut index, size) {
            drop(index);
            remove_quietly(&tmp_bin);
            remove_quietly(&tmp_meta);
            return Ok(());
        }
        // Binary first: a record never names a binary that is not in place.
        let renamed = fs::rename(&tmp_bin, self.bin_path(key))
            .and_then(|()| fs::rename(&tmp_meta, self.meta_path(key)));
        if let Err(e) = renamed {
            remove_quietly(&tmp_bin);
            remove_quietly(&tmp_meta);
            remove_quietly(&self.bin_path(key));
            return Err(e);
        }
        let last_used = index.tick();
        index.entries.insert(
            key.to_string(),
            Entry {
                meta,
                last_used,
                leases: 0,
            },
        );
        Ok(())
    }

    /// Evict unheld entries, least recently used first, until `extra` more bytes fit
    /// under the cap; `false` when they cannot.
    fn evict_to_fit(&self, index: &mut Index, extra: u64) -> bool {
        while index.total().saturating_add(extra) > self.max_bytes {
            let victim = index
                .entries
                .iter()
                .filter(|(_, e)| e.leases == 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else {
                return false;
            };
            index.entries.remove(&victim);
            remove_quietly(&self.bin_path(&victim));
            remove_quietly(&self.meta_path(&victim));
            index.stats.evictions += 1;
        }
        true
    }
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!("gvisor: cannot remove {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn binary(dir: &Path, name: &str, len: usize, fill: u8) -> (PathBuf, u64, String) {
        let src = dir.join(format!("{name}.src"));
        fs::write(&src, vec![fill; len]).unwrap();
        let dst = dir.join(format!("{name}.adopted"));
        let (size, sha) = adopt(&src, &dst, 1 << 20).unwrap();
        (dst, size, sha)
    }

    fn code(text: &str) -> Payload {
        Payload::Code(text.into())
    }

    #[test]
    fn a_stored_entry_is_a_hit_and_another_toolchain_misses() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = GoCache::open(&tmp.path().join("c"), 1 << 20).unwrap();
        let k = key("toolchain-a", &code("package main"));
        assert!(cache.lookup(&k).is_none());
        let (bin, size, sha) = binary(tmp.path(), "a", 1000, 7);
        cache.insert(&k, &bin, size, &sha).unwrap();
        let lease = cache.lookup(&k).unwrap();
        assert_eq!(fs::read(lease.path()).unwrap(), vec![7; 1000]);
        let other = key("toolchain-b", &code("package main"));
        assert_ne!(other, k);
        assert!(cache.lookup(&other).is_none());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 2, 1));
        assert_eq!(stats.bytes, 1000);
    }

    #[test]
    fn code_and_archive_of_the_same_bytes_have_different_keys() {
        let text = "package main";
        assert_ne!(
            key("t", &code(text)),
            key("t", &Payload::Archive(text.as_bytes().to_vec()))
        );
        assert_eq!(key("t", &code(text)), key("t", &code(text)));
    }

    #[test]
    fn a_tampered_entry_is_rejected_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = GoCache::open(&tmp.path().join("c"), 1 << 20).unwrap();
        let k = key("t", &code("x"));
        let (bin, size, sha) = binary(tmp.path(), "a", 100, 1);
        cache.insert(&k, &bin, size, &sha).unwrap();
        let path = cache.bin_path(&k);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        // Same size, other content: only the hash can tell.
        fs::write(&path, vec![2u8; 100]).unwrap();
        assert!(cache.lookup(&k).is_none());
        assert!(!path.exists());
        let stats = cache.stats();
        assert_eq!((stats.rejected, stats.entries, stats.hits), (1, 0, 0));
    }

    #[test]
    fn eviction_keeps_the_total_under_the_cap_and_spares_held_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = GoCache::open(&tmp.path().join("c"), 2500).unwrap();
        let keys: Vec<String> = (0..3).map(|i| key("t", &code(&i.to_string()))).collect();
        let (b0, s0, h0) = binary(tmp.path(), "0", 1000, 0);
        cache.insert(&keys[0], &b0, s0, &h0).unwrap();
        let held = cache.lookup(&keys[0]).unwrap();
        let (b1, s1, h1) = binary(tmp.path(), "1", 1000, 1);
        cache.insert(&keys[1], &b1, s1, &h1).unwrap();
        let (b2, s2, h2) = binary(tmp.path(), "2", 1000, 2);
        cache.insert(&keys[2], &b2, s2, &h2).unwrap();
        let stats = cache.stats();
        assert!(stats.bytes <= 2500, "{stats:?}");
        assert_eq!(stats.evictions, 1);
        // Entry 0 is older than 1 but held: 1 went.
        assert!(cache.lookup(&keys[1]).is_none());
        drop(held);
        assert!(cache.lookup(&keys[0]).is_some());
        // Larger than the whole cap: not stored.
        let (big, sb, hb) = binary(tmp.path(), "big", 3000, 3);
        let kb = key("t", &code("big"));
        cache.insert(&kb, &big, sb, &hb).unwrap();
        assert!(cache.lookup(&kb).is_none());
        assert!(cache.stats().bytes <= 2500);
    }

    #[test]
    fn entries_survive_a_reopen_and_leftovers_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        let k = key("t", &code("keep"));
        {
            let cache = GoCache::open(&dir, 1 << 20).unwrap();
            let (bin, size, sha) = binary(tmp.path(), "a", 10, 4);
            cache.insert(&k, &bin, size, &sha).unwrap();
        }
        fs::write(dir.join(".tmp-01ABC.bin"), b"half").unwrap();
        let orphan = "f".repeat(64);
        fs::write(dir.join(format!("{orphan}.bin")), b"no record").unwrap();
        let cache = GoCache::open(&dir, 1 << 20).unwrap();
        assert!(!dir.join(".tmp-01ABC.bin").exists());
        assert!(!dir.join(format!("{orphan}.bin")).exists());
        assert!(cache.lookup(&k).is_some());
        assert_eq!(cache.stats().hits, 1);
    }

    #[test]
    fn adopt_refuses_links_fifos_and_oversized_files() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("secret");
        fs::write(&target, b"host secret").unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(adopt(&link, &tmp.path().join("out1"), 1 << 20).is_err());
        assert!(adopt(tmp.path(), &tmp.path().join("out2"), 1 << 20).is_err());
        let fifo = tmp.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        assert!(adopt(&fifo, &tmp.path().join("out3"), 1 << 20).is_err());
        assert!(adopt(&target, &tmp.path().join("out4"), 5).is_err());
        let (size, _) = adopt(&target, &tmp.path().join("out5"), 1 << 20).unwrap();
        assert_eq!(size, 11);
    }
}
