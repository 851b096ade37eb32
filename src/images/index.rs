//! The store's index: which images are prepared, which references point at them, and
//! what each image needs to run. Kept in one JSON file replaced atomically (written
//! to a temporary name, synced, renamed), so a crash leaves the old or the new index,
//! never a torn one.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The version written by this code; an index of another version is not trusted.
const INDEX_VERSION: u32 = 1;

/// The whole index.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Index {
    /// Format version ([`INDEX_VERSION`]).
    pub version: u32,
    /// Prepared images by manifest digest.
    pub images: BTreeMap<String, ImageRecord>,
    /// Normalised reference → manifest digest (a key of `images`).
    pub refs: BTreeMap<String, String>,
}

/// One prepared image. Invariant: its root file system and every blob it lists are
/// complete and verified on disk while the record is in the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The manifest digest (the record's key).
    pub digest: String,
    /// Blobs the image is made of (config first, then layers in order).
    pub blobs: Vec<BlobRef>,
    /// What a run of the image starts with.
    pub run: RunConfig,
    /// Bytes of file content in the prepared root file system.
    pub rootfs_bytes: u64,
    /// When it was pulled.
    pub pulled_at: DateTime<Utc>,
    /// When a workload last used it (or when it was pulled).
    pub last_used: DateTime<Utc>,
}

/// A verified blob in the content-addressed blob directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// The parts of the image configuration a run honours.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd` (arguments to the entrypoint, or the command when there is none).
    pub cmd: Vec<String>,
    /// `Env` (`KEY=value`).
    pub env: Vec<String>,
    /// `WorkingDir` (empty: `/`).
    pub working_dir: String,
    /// `User` (`name`, `uid`, `name:group`, `uid:gid`; empty: root of the sandbox).
    pub user: String,
}

impl Index {
    /// An empty index of the current version.
    pub fn empty() -> Self {
        Self {
            version: INDEX_VERSION,
            ..Self::default()
        }
    }

    /// The index at `path`: empty when there is none; an error when it is unreadable
    /// or of another version (the caller starts empty and sweeps what it cannot vouch for).
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::empty()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a valid index: {e}", path.display()))?;
        if index.version != INDEX_VERSION {
            return Err(format!(
                "{} has version {}, expected {INDEX_VERSION}",
                path.display(),
                index.version
            ));
        }
        Ok(index)
    }

    /// Every blob digest some image uses.
    pub fn used_blobs(&self) -> std::collections::BTreeSet<&str> {
        self.images
            .values()
            .flat_map(|i| i.blobs.iter().map(|b| b.digest.as_str()))
            .collect()
    }

    /// Bytes on disk: every prepared root file system plus every distinct blob.
    pub fn total_bytes(&self) -> u64 {
        let mut blobs: BTreeMap<&str, u64> = BTreeMap::new();
        for b in self.images.values().flat_map(|i| i.blobs.iter()) {
            blobs.insert(&b.digest, b.size);
        }
        let rootfs: u64 = self.images.values().map(|i| i.rootfs_bytes).sum();
        rootfs.saturating_add(blobs.values().sum())
    }

    /// References pointing at `digest`, sorted.
    pub fn references_of(&self, digest: &str) -> Vec<String> {
        self.refs
            .iter()
            .filter(|(_, d)| d.as_str() == digest)
            .map(|(r, _)| r.clone())
            .collect()
    }
}

/// Replace the file at `path` with `bytes` atomically (temporary name in the same
/// directory, fsync, rename, fsync of the directory).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("index path has no parent"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("index"),
        ulid::Ulid::new()
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(digest: &str, blobs: &[(&str, u64)], rootfs: u64) -> ImageRecord {
        ImageRecord {
            digest: digest.into(),
            blobs: blobs
                .iter()
                .map(|(d, s)| BlobRef {
                    digest: (*d).into(),
                    size: *s,
                })
                .collect(),
            run: RunConfig::default(),
            rootfs_bytes: rootfs,
            pulled_at: Utc::now(),
            last_used: Utc::now(),
        }
    }

    #[test]
    fn shared_blobs_count_once() {
        let mut index = Index::empty();
        index
            .images
            .insert("m1".into(), record("m1", &[("c1", 1), ("base", 100)], 1000));
        index
            .images
            .insert("m2".into(), record("m2", &[("c2", 2), ("base", 100)], 2000));
        assert_eq!(index.total_bytes(), 3000 + 1 + 2 + 100);
        assert_eq!(index.used_blobs().len(), 3);
    }

    #[test]
    fn round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.json");
        assert_eq!(Index::load(&path).unwrap(), Index::empty());
        let mut index = Index::empty();
        index.images.insert("m".into(), record("m", &[("b", 5)], 7));
        index.refs.insert("r".into(), "m".into());
        write_atomically(&path, &serde_json::to_vec(&index).unwrap()).unwrap();
        assert_eq!(Index::load(&path).unwrap(), index);
        assert_eq!(index.references_of("m"), vec!["r".to_string()]);
        fs::write(&path, b"{ torn").unwrap();
        assert!(Index::load(&path).is_err());
        // Nothing but the index is left in the directory.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
