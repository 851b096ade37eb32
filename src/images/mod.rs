//! The OCI image store: pulls images from registries, verifies every blob, unpacks
//! layers into one prepared, read-only root file system per manifest digest, and keeps
//! an index that survives restarts.
//!
//! On disk, below `[images] dir` (`0700`, this server's alone):
//!
//! ```text
//! index.json             references → manifest digest, and per image what a run needs
//! blobs/sha256/<hex>     verified blobs (config and layers), shared between images
//! rootfs/<hex>/          one prepared root file system per manifest digest
//! tmp/                   pulls in progress; emptied at start-up
//! ```
//!
//! Crash safety: a blob gets its final name only after its size and digest were
//! verified; a root file system only after every layer was applied; the index (written
//! atomically) names only complete root file systems. Whatever else is found at
//! start-up (a half pull in `tmp/`, a root file system or blob no index entry names)
//! is removed, so nothing half-made is ever used.
//!
//! Runs never write to a prepared root file system: the gvisor backend gives each run
//! its own writable layer above it (see `backends::gvisor`). A run holds an
//! [`ImageLease`] for as long as it may need the image: a held image is neither
//! removed by `DELETE /v1/images/{digest}` (409) nor by the disk budget.
//!
//! Pull semantics (Docker's and Kubernetes' "if not present"): [`ImageStore::ensure`]
//! uses a stored reference without contacting the registry; [`ImageStore::pull`]
//! (`POST /v1/images`) always asks the registry again, refreshing a tag. Concurrent
//! pulls of one reference are done once.

mod config;
mod index;
pub mod policy;
mod registry;
mod rootfs;

pub use config::{ImagesConfig, RegistryCredential};
pub use index::RunConfig;
pub use rootfs::{resolve_user, RunUser};

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use chrono::Utc;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use prometheus::{IntCounter, IntGauge};
use serde::{Deserialize, Serialize};

use self::index::{BlobRef, ImageRecord, Index};
use self::policy::RegistryPolicy;
use self::registry::Registry;
use self::rootfs::Compression;
use crate::backends::archive::ArchiveLimits;
use crate::model::{is_sha256_digest, ImageRef};

/// How stale `last_used` may be in the index on disk (it is exact in memory).
const LAST_USED_PRECISION: Duration = Duration::from_secs(60);

/// Largest image configuration blob accepted (it is read into memory).
const MAX_CONFIG_BYTES: u64 = 8 * 1024 * 1024;

/// Why a pull failed. The text is the reason shown to clients after
/// `image pull failed: `; it never holds a host path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    /// The registry does not have the image (or the repository).
    #[error("{0}")]
    NotFound(String),
    /// The registry refused the credentials (or anonymous access).
    #[error("{0}")]
    AuthRefused(String),
    /// A blob's digest or size is not what the manifest states.
    #[error("digest mismatch: {0}")]
    DigestMismatch(String),
    /// The image is above `max_image_bytes` or `max_image_entries`.
    #[error("{0}")]
    TooLarge(String),
    /// The pull took longer than `pull_timeout_s`.
    #[error("timed out after {0}s")]
    Timeout(u64),
    /// The registry could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The registry answered with an error.
    #[error("{0}")]
    Registry(String),
    /// The registry is not allowed, or resolves to an address it may not have
    /// (`images.allowed_registries`, `images.private_registries`).
    #[error("{0}")]
    NotAllowed(String),
    /// The image is of a kind this store cannot run (platform, media type, layer rules).
    #[error("{0}")]
    Unsupported(String),
    /// A host-side failure (disk); the cause is logged.
    #[error("{0}")]
    Internal(String),
}

/// Why an image could not be removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoveError {
    /// No image with that digest.
    #[error("image {0} is not in the store")]
    NotFound(String),
    /// A workload holds it (running or about to).
    #[error("image {digest} is in use by {runs} workload(s)")]
    InUse {
        /// The image.
        digest: String,
        /// How many holds there are.
        runs: usize,
    },
}

/// One entry of `GET /v1/images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageInfo {
    /// The manifest digest (`sha256:…`), the image's identity.
    pub digest: String,
    /// Normalised references that resolve to it.
    pub references: Vec<String>,
    /// Bytes on disk: its root file system and its blobs.
    pub size_bytes: u64,
    /// When it was pulled (RFC 3339).
    pub pulled_at: String,
    /// When a workload last used it (RFC 3339).
    pub last_used: String,
    /// Workloads holding it now.
    pub in_use: usize,
}

/// `GET /v1/images`: the images, the pulls in progress and the disk use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageList {
    /// Images, most recently used first.
    pub images: Vec<ImageInfo>,
    /// References being pulled now.
    pub pulling: Vec<String>,
    /// Bytes on disk (shared blobs counted once).
    pub total_bytes: u64,
    /// The configured budget.
    pub max_bytes: u64,
}

/// The store's metrics (registered with the server's registry at start-up).
#[derive(Clone)]
pub struct ImageMetrics {
    /// Pulls started (cache misses and refreshes).
    pub pulls: IntCounter,
    /// Pulls that failed.
    pub pull_failures: IntCounter,
    /// Blob bytes downloaded.
    pub bytes_pulled: IntCounter,
    /// References served from the store without contacting a registry.
    pub cache_hits: IntCounter,
    /// Bytes the store holds on disk.
    pub store_bytes: IntGauge,
}

impl ImageMetrics {
    fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            pulls: IntCounter::new("image_pulls_total", "Image pulls started")?,
            pull_failures: IntCounter::new("image_pull_failures_total", "Image pulls that failed")?,
            bytes_pulled: IntCounter::new(
                "image_bytes_pulled_total",
                "Image blob bytes downloaded",
            )?,
            cache_hits: IntCounter::new(
                "image_cache_hits_total",
                "Image references served from the store without a registry request",
            )?,
            store_bytes: IntGauge::new("image_store_bytes", "Bytes held by the image store")?,
        })
    }

    /// Every collector, for registration.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.pulls.clone()),
            Box::new(self.pull_failures.clone()),
            Box::new(self.bytes_pulled.clone()),
            Box::new(self.cache_hits.clone()),
            Box::new(self.store_bytes.clone()),
        ]
    }
}

type SharedPull = Shared<BoxFuture<'static, Result<ImageLease, PullError>>>;

struct State {
    index: Index,
    /// Bumped on every index change; the file is only replaced by newer snapshots.
    version: u64,
    in_use: HashMap<String, usize>,
    pulls: HashMap<String, SharedPull>,
}

struct Inner {
    cfg: ImagesConfig,
    policy: RegistryPolicy,
    registry: Registry,
    metrics: ImageMetrics,
    state: Mutex<State>,
    /// The index version last written to disk (serialises writers).
    saved: Mutex<u64>,
}

/// The image store. Cheap to clone; one instance per directory per process (see
/// [`ImageStore::open`]).
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

/// Stores open in this process, by directory: the index and the in-use counts must be
/// one per directory, and both the gvisor backend and the API open the store.
static OPEN_STORES: Mutex<Vec<(PathBuf, Weak<Inner>)>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ImageStore {
    /// The store for `cfg.dir`: the one already open in this process (whose
    /// configuration, the first opener's, stays in force), or a new one whose index is
    /// loaded from disk. Leftovers of an interrupted pull, and root file
    /// systems and blobs the index does not name, are removed. Creates nothing when the
    /// directory does not exist yet (it is made at the first pull).
    pub fn open(cfg: &ImagesConfig) -> Result<Self, String> {
        if !cfg.dir.is_absolute() {
            return Err(format!(
                "[images] dir {:?} must be an absolute path",
                cfg.dir
            ));
        }
        let mut open = lock(&OPEN_STORES);
        open.retain(|(_, w)| w.strong_count() > 0);
        if let Some(inner) = open
            .iter()
            .find(|(d, _)| *d == cfg.dir)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(Self { inner });
        }
        let policy = RegistryPolicy::new(cfg)?;
        let index = load_and_sweep(&cfg.dir);
        let metrics = ImageMetrics::new().map_err(|e| format!("image metrics: {e}"))?;
        metrics.store_bytes.set(gauge(index.total_bytes()));
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            policy,
            registry: Registry::new(cfg),
            metrics,
            state: Mutex::new(State {
                index,
                version: 0,
                in_use: HashMap::new(),
                pulls: HashMap::new(),
            }),
            saved: Mutex::new(0),
        });
        open.push((cfg.dir.clone(), Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// The store's metrics.
    pub fn metrics(&self) -> &ImageMetrics {
        &self.inner.metrics
    }

    /// The image `reference` names, ready to run: from the store when it is there (no
    /// registry request), otherwise pulled (one pull for all concurrent callers).
    pub async fn ensure(&self, reference: &ImageRef) -> Result<ImageLease, PullError> {
        if let Some((lease, stale)) = self.lookup(reference) {
            self.inner.metrics.cache_hits.inc();
            if stale {
                self.persist_in_background();
            }
            return Ok(lease);
        }
        self.pull(reference).await
    }

    /// Pull `reference` from its registry even when it is stored (a tag may have moved).
    /// Joins a pull of the same reference already in progress.
    pub async fn pull(&self, reference: &ImageRef) -> Result<ImageLease, PullError> {
        self.start_pull(reference).await
    }

    /// Start (or join) the pull of `reference` without waiting for it.
    pub fn pull_in_background(&self, reference: &ImageRef) {
        let pull = self.start_pull(reference);
        let key = reference.key();
        tokio::spawn(async move {
            if let Err(e) = pull.await {
                log::warn!("image {key}: pre-pull failed: {e}");
            }
        });
    }

    fn start_pull(&self, reference: &ImageRef) -> SharedPull {
        let key = reference.key();
        let mut st = lock(&self.inner.state);
        if let Some(pull) = st.pulls.get(&key) {
            return pull.clone();
        }
        let store = self.clone();
        let reference = reference.clone();
        let task_key = key.clone();
        let task = tokio::spawn(async move {
            let result = store.pull_now(&reference).await;
            // Dropped after the lock is released (the lease's own drop takes it).
            let finished = lock(&store.inner.state).pulls.remove(&task_key);
            drop(finished);
            result
        });
        let shared = async move {
            task.await
                .unwrap_or_else(|e| Err(PullError::Internal(format!("pull task ended: {e}"))))
        }
        .boxed()
        .shared();
        st.pulls.insert(key, shared.clone());
        shared
    }

    /// A lease on the stored image `reference` names, if stored; marks it used. Also
    /// says whether the index on disk should be rewritten (a new reference, or a
    /// `last_used` older on disk than [`LAST_USED_PRECISION`]: warm runs do not each
    /// rewrite the index).
    fn lookup(&self, reference: &ImageRef) -> Option<(ImageLease, bool)> {
        let mut st = lock(&self.inner.state);
        let key = reference.key();
        let (digest, new_ref) = match st.index.refs.get(&key) {
            Some(d) => (d.clone(), false),
            // A digest reference to an image stored under another name.
            None => {
                let d = reference.digest()?.to_string();
                if !st.index.images.contains_key(&d) {
                    return None;
                }
                st.index.refs.insert(key, d.clone());
                (d, true)
            }
        };
        let lease = self.lease_locked(&mut st, &digest)?;
        let now = Utc::now();
        let mut stale = new_ref;
        if let Some(record) = st.index.images.get_mut(&digest) {
            stale |= (now - record.last_used).to_std().unwrap_or_default() > LAST_USED_PRECISION;
            record.last_used = now;
        }
        st.version += 1;
        Some((lease, stale))
    }

    fn lease_locked(&self, st: &mut State, digest: &str) -> Option<ImageLease> {
        let record = st.index.images.get(digest)?;
        let lease = ImageLease {
            store: self.inner.clone(),
            digest: digest.to_string(),
            rootfs: rootfs_dir(&self.inner.cfg.dir, digest),
            run: Arc::new(record.run.clone()),
        };
        *st.in_use.entry(digest.to_string()).or_insert(0) += 1;
        Some(lease)
    }

    async fn pull_now(&self, reference: &ImageRef) -> Result<ImageLease, PullError> {
        let metrics = &self.inner.metrics;
        metrics.pulls.inc();
        let timeout = Duration::from_secs(self.inner.cfg.pull_timeout_s.max(1));
        let cancel = Arc::new(AtomicBool::new(false));
        let work = PullDir::new(&self.inner.cfg.dir, cancel.clone());
        let published = Arc::new(Mutex::new(Vec::new()));
        let result = match work {
            Ok(work) => {
                let fetch = self.fetch(reference, &work, &cancel, &published);
                let outcome = tokio::time::timeout(timeout, fetch).await;
                cancel.store(true, Ordering::Relaxed);
                outcome.unwrap_or(Err(PullError::Timeout(timeout.as_secs())))
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(lease) => log::info!("image {reference}: pulled ({})", lease.digest),
            Err(e) => {
                metrics.pull_failures.inc();
                log::warn!("image {reference}: pull failed: {e}");
                self.forget_unused_blobs(&published);
            }
        }
        result
    }

    /// Manifest, blobs, root file system, index: the pull itself.
    async fn fetch(
        &self,
        reference: &ImageRef,
        work: &PullDir,
        cancel: &Arc<AtomicBool>,
        published: &Mutex<Vec<String>>,
    ) -> Result<ImageLease, PullError> {
        let cfg = &self.inner.cfg;
        self.inner
            .policy
            .check_resolved(reference)
            .await
            .map_err(PullError::NotAllowed)?;
        let (manifest, digest) = self.inner.registry.manifest(reference).await?;
        if let Some(lease) = self.adopt(reference, &digest) {
            return Ok(lease);
        }
        let mut layers = Vec::with_capacity(manifest.layers.len());
        let mut total = 0u64;
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if !is_sha256_digest(&desc.digest) {
                return Err(PullError::Unsupported(format!(
                    "blob digest {:?} is not a sha256 digest",
                    desc.digest
                )));
            }
            let size = u64::try_from(desc.size).map_err(|_| {
                PullError::Unsupported(format!("blob {} has a negative size", desc.digest))
            })?;
            total = total.saturating_add(size);
        }
        if total > cfg.max_image_bytes {
            return Err(PullError::TooLarge(format!(
                "image is {total} bytes compressed, above the limit of {} bytes",
                cfg.max_image_bytes
            )));
        }
        if manifest.config.size as u64 > MAX_CONFIG_BYTES {
            return Err(PullError::TooLarge(format!(
                "image configuration is above {MAX_CONFIG_BYTES} bytes"
            )));
        }
        for desc in &manifest.layers {
            let compression = Compression::of_media_type(&desc.media_type).ok_or_else(|| {
                PullError::Unsupported(format!("unsupported layer media type {}", desc.media_type))
            })?;
            layers.push((desc, compression));
        }
        if layers.is_empty() {
            return Err(PullError::Unsupported("the image has no layers".into()));
        }

        let config_path = self
            .blob(reference, &manifest.config, work, published)
            .await?;
        let config_bytes = tokio::fs::read(&config_path)
            .await
            .map_err(|e| internal("cannot read the image configuration", e))?;
        let run = parse_config(&config_bytes)?;
        let mut unpack = Vec::with_capacity(layers.len());
        for (desc, compression) in &layers {
            let path = self.blob(reference, desc, work, published).await?;
            unpack.push((path, *compression, desc.digest.clone()));
        }

        let dest = work.path.join("rootfs");
        let limits = ArchiveLimits {
            max_total_bytes: cfg.max_image_bytes,
            max_entries: cfg.max_image_entries,
        };
        let workdir = run.working_dir.clone();
        let flag = cancel.clone();
        let built = tokio::task::spawn_blocking(move || {
            rootfs::build(&unpack, &dest, &limits, &workdir, &flag)
        })
        .await
        .map_err(|e| PullError::Internal(format!("unpacking panicked: {e}")))?;
        let rootfs_bytes = built.map_err(|e| match e {
            rootfs::RootfsError::Layer {
                source: crate::backends::archive::ArchiveError::TooLarge(what),
                ..
            } => PullError::TooLarge(format!("image exceeds the limit on {what}")),
            rootfs::RootfsError::Layer { layer, source } => {
                PullError::Unsupported(format!("layer {layer} refused: {}", layer_reason(&source)))
            }
            rootfs::RootfsError::Cancelled => PullError::Timeout(cfg.pull_timeout_s),
            rootfs::RootfsError::Io(e) => {
                log::error!("image {reference}: {e}");
                PullError::Internal("cannot prepare the root file system".into())
            }
        })?;

        let blobs = std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .map(|d| BlobRef {
                digest: d.digest.clone(),
                size: d.size.max(0) as u64,
            })
            .collect();
        let now = Utc::now();
        let record = ImageRecord {
            digest: digest.clone(),
            blobs,
            run,
            rootfs_bytes,
            pulled_at: now,
            last_used: now,
        };
        self.commit(reference, record, &work.path.join("rootfs"))
            .await
    }

    /// The manifest `digest` is stored already (under another reference, or the tag
    /// did not move): point `reference` at it and hand out a lease.
    fn adopt(&self, reference: &ImageRef, digest: &str) -> Option<ImageLease> {
        let mut st = lock(&self.inner.state);
        if !st.index.images.contains_key(digest) {
            return None;
        }
        st.index.refs.insert(reference.key(), digest.to_string());
        if let Some(r) = st.index.images.get_mut(digest) {
            r.last_used = Utc::now();
        }
        st.version += 1;
        let lease = self.lease_locked(&mut st, digest);
        drop(st);
        self.persist_in_background();
        lease
    }

    /// The verified blob `desc`, linked into the pull's own directory (so a concurrent
    /// removal of the shared blob cannot pull it from under this pull). Downloads it
    /// unless the store has it.
    async fn blob(
        &self,
        reference: &ImageRef,
        desc: &oci_client::manifest::OciDescriptor,
        work: &PullDir,
        published: &Mutex<Vec<String>>,
    ) -> Result<PathBuf, PullError> {
        let shared = blob_path(&self.inner.cfg.dir, &desc.digest);
        let mine = work.path.join(desc.digest.replace(':', "-"));
        let size = desc.size.max(0) as u64;
        if fs::metadata(&shared).is_ok_and(|m| m.len() == size)
            && fs::hard_link(&shared, &mine).is_ok()
        {
            return Ok(mine);
        }
        let bytes = self
            .inner
            .registry
            .fetch_blob(reference, desc, &mine)
            .await?;
        self.inner.metrics.bytes_pulled.inc_by(bytes);
        // Publish the verified blob under its content address for later pulls.
        let tmp = work
            .path
            .join(format!("{}.publish", desc.digest.replace(':', "-")));
        if fs::hard_link(&mine, &tmp).is_ok() {
            if fs::rename(&tmp, &shared).is_ok() {
                lock(published).push(desc.digest.clone());
            } else {
                let _ = fs::remove_file(&tmp);
            }
        }
        Ok(mine)
    }

    /// A failed pull keeps nothing: the blobs it published that no image uses go.
    fn forget_unused_blobs(&self, published: &Mutex<Vec<String>>) {
        let st = lock(&self.inner.state);
        let used = st.index.used_blobs();
        for digest in lock(published).iter() {
            if !used.contains(digest.as_str()) {
                let _ = fs::remove_file(blob_path(&self.inner.cfg.dir, digest));
            }
        }
    }

    /// Move the prepared root file system into place and record the image.
    async fn commit(
        &self,
        reference: &ImageRef,
        record: ImageRecord,
        prepared: &Path,
    ) -> Result<ImageLease, PullError> {
        let digest = record.digest.clone();
        let final_dir = rootfs_dir(&self.inner.cfg.dir, &digest);
        let lease = {
            let mut st = lock(&self.inner.state);
            if !st.index.images.contains_key(&digest) {
                // A leftover no index entry names (a crash between rename and index
                // write) is replaced, never trusted.
                if fs::symlink_metadata(&final_dir).is_ok() {
                    let trash = self
                        .inner
                        .cfg
                        .dir
                        .join("tmp")
                        .join(format!("trash-{}", ulid::Ulid::new()));
                    fs::rename(&final_dir, &trash)
                        .map_err(|e| internal("cannot replace a stale root file system", e))?;
                    let _ = fs::remove_dir_all(&trash);
                }
                fs::rename(prepared, &final_dir)
                    .map_err(|e| internal("cannot move the root file system into place", e))?;
                st.index.images.insert(digest.clone(), record);
            }
            st.index.refs.insert(reference.key(), digest.clone());
            st.version += 1;
            self.lease_locked(&mut st, &digest).ok_or_else(|| {
                PullError::Internal("the image vanished while it was recorded".into())
            })?
        };
        let store = self.clone();
        let protect = digest.clone();
        tokio::task::spawn_blocking(move || {
            store.persist();
            store.collect_garbage(Some(&protect));
        })
        .await
        .map_err(|e| PullError::Internal(format!("index write panicked: {e}")))?;
        Ok(lease)
    }

    /// Write the index if this snapshot is newer than the one on disk (blocking).
    fn persist(&self) {
        let (version, bytes, total) = {
            let st = lock(&self.inner.state);
            (
                st.version,
                serde_json::to_vec_pretty(&st.index),
                st.index.total_bytes(),
            )
        };
        self.inner.metrics.store_bytes.set(gauge(total));
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                log::error!("images: cannot serialise the index: {e}");
                return;
            }
        };
        let mut saved = lock(&self.inner.saved);
        if version <= *saved && version != 0 {
            return;
        }
        if let Err(e) = self.ensure_dirs().and_then(|()| {
            index::write_atomically(&self.inner.cfg.dir.join("index.json"), &bytes)
                .map_err(|e| PullError::Internal(e.to_string()))
        }) {
            log::error!("images: cannot write the index: {e}");
            return;
        }
        *saved = version;
    }

    fn persist_in_background(&self) {
        let store = self.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn_blocking(move || store.persist());
        } else {
            store.persist();
        }
    }

    /// Remove least recently used images nobody holds until the store fits its budget
    /// (blocking). `protect` is never removed (the image a pull just prepared).
    pub fn collect_garbage(&self, protect: Option<&str>) {
        loop {
            let victim = {
                let st = lock(&self.inner.state);
                if st.index.total_bytes() <= self.inner.cfg.max_bytes {
                    break;
                }
                st.index
                    .images
                    .values()
                    .filter(|r| Some(r.digest.as_str()) != protect)
                    .filter(|r| st.in_use.get(&r.digest).copied().unwrap_or(0) == 0)
                    .min_by_key(|r| r.last_used)
                    .map(|r| r.digest.clone())
            };
            let Some(digest) = victim else {
                break;
            };
            log::info!("images: removing {digest} (least recently used; store above max_bytes)");
            if self.remove_now(&digest).is_err() {
                break;
            }
        }
    }

    /// `DELETE /v1/images/{digest}`: remove an image no workload holds.
    pub async fn remove(&self, digest: &str) -> Result<ImageInfo, RemoveError> {
        let store = self.clone();
        let digest = digest.to_string();
        tokio::task::spawn_blocking(move || store.remove_now(&digest))
            .await
            .unwrap_or_else(|e| Err(RemoveError::NotFound(format!("(removal panicked: {e})"))))
    }

    fn remove_now(&self, digest: &str) -> Result<ImageInfo, RemoveError> {
        let cfg = &self.inner.cfg;
        let (info, trash, blobs) = {
            let mut st = lock(&self.inner.state);
            let Some(record) = st.index.images.get(digest) else {
                return Err(RemoveError::NotFound(digest.to_string()));
            };
            let runs = st.in_use.get(digest).copied().unwrap_or(0);
            if runs > 0 {
                return Err(RemoveError::InUse {
                    digest: digest.to_string(),
                    runs,
                });
            }
            let info = info_of(&st, record);
            let record = st.index.images.remove(digest);
            st.index.refs.retain(|_, d| d != digest);
            st.version += 1;
            let used = st.index.used_blobs();
            let blobs: Vec<PathBuf> = record
                .iter()
                .flat_map(|r| r.blobs.iter())
                .filter(|b| !used.contains(b.digest.as_str()))
                .map(|b| blob_path(&cfg.dir, &b.digest))
                .collect();
            // Out of sight at once (under the lock); deleted at leisure.
            let trash = cfg
                .dir
                .join("tmp")
                .join(format!("trash-{}", ulid::Ulid::new()));
            let moved = fs::rename(rootfs_dir(&cfg.dir, digest), &trash).is_ok();
            (info, moved.then_some(trash), blobs)
        };
        self.persist();
        if let Some(trash) = trash {
            if let Err(e) = fs::remove_dir_all(&trash) {
                log::warn!("images: cannot remove {}: {e}", trash.display());
            }
        }
        for blob in blobs {
            let _ = fs::remove_file(blob);
        }
        self.persist();
        Ok(info)
    }

    /// `GET /v1/images`.
    pub fn list(&self) -> ImageList {
        let st = lock(&self.inner.state);
        let mut images: Vec<ImageInfo> =
            st.index.images.values().map(|r| info_of(&st, r)).collect();
        images.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.digest.cmp(&b.digest)));
        let mut pulling: Vec<String> = st.pulls.keys().cloned().collect();
        pulling.sort();
        ImageList {
            images,
            pulling,
            total_bytes: st.index.total_bytes(),
            max_bytes: self.inner.cfg.max_bytes,
        }
    }

    fn ensure_dirs(&self) -> Result<(), PullError> {
        let dir = &self.inner.cfg.dir;
        for d in [
            dir.clone(),
            dir.join("blobs"),
            dir.join("blobs/sha256"),
            dir.join("rootfs"),
            dir.join("tmp"),
        ] {
            if !d.is_dir() {
                fs::create_dir_all(&d).map_err(|e| internal("cannot create the image store", e))?;
            }
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| internal("cannot restrict the image store", e))
    }
}

/// A hold on a prepared image: while any clone lives, the image is neither removed nor
/// collected. Carries what a run needs.
pub struct ImageLease {
    store: Arc<Inner>,
    digest: String,
    rootfs: PathBuf,
    run: Arc<RunConfig>,
}

impl ImageLease {
    /// The manifest digest.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The prepared root file system (read-only for runs).
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// Entrypoint, command, environment, working directory and user of the image.
    pub fn run_config(&self) -> &RunConfig {
        &self.run
    }
}

impl Clone for ImageLease {
    fn clone(&self) -> Self {
        *lock(&self.store.state)
            .in_use
            .entry(self.digest.clone())
            .or_insert(0) += 1;
        Self {
            store: self.store.clone(),
            digest: self.digest.clone(),
            rootfs: self.rootfs.clone(),
            run: self.run.clone(),
        }
    }
}

impl Drop for ImageLease {
    fn drop(&mut self) {
        let mut st = lock(&self.store.state);
        if let Some(n) = st.in_use.get_mut(&self.digest) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.in_use.remove(&self.digest);
            }
        }
    }
}

impl std::fmt::Debug for ImageLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageLease")
            .field("digest", &self.digest)
            .finish()
    }
}

/// A pull's private working directory below `tmp/`; removed when dropped (also when
/// the pull is abandoned at its timeout, after telling the unpacker to stop).
struct PullDir {
    path: PathBuf,
    cancel: Arc<AtomicBool>,
}

impl PullDir {
    fn new(dir: &Path, cancel: Arc<AtomicBool>) -> Result<Self, PullError> {
        for d in [
            dir.to_path_buf(),
            dir.join("blobs/sha256"),
            dir.join("rootfs"),
            dir.join("tmp"),
        ] {
            fs::create_dir_all(&d).map_err(|e| internal("cannot create the image store", e))?;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| internal("cannot restrict the image store", e))?;
        let path = dir.join("tmp").join(format!("pull-{}", ulid::Ulid::new()));
        fs::create_dir(&path).map_err(|e| internal("cannot create a pull directory", e))?;
        Ok(Self { path, cancel })
    }
}

impl Drop for PullDir {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        let path = self.path.clone();
        let remove = move || {
            if let Err(e) = fs::remove_dir_all(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("images: cannot remove {}: {e}", path.display());
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(remove);
            }
            Err(_) => remove(),
        }
    }
}

fn internal(what: &str, e: std::io::Error) -> PullError {
    log::error!("images: {what}: {e}");
    PullError::Internal(what.to_string())
}

fn gauge(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn rootfs_dir(dir: &Path, digest: &str) -> PathBuf {
    dir.join("rootfs").join(hex_of(digest))
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256").join(hex_of(digest))
}

fn info_of(st: &State, r: &ImageRecord) -> ImageInfo {
    ImageInfo {
        digest: r.digest.clone(),
        references: st.index.references_of(&r.digest),
        size_bytes: r
            .rootfs_bytes
            .saturating_add(r.blobs.iter().map(|b| b.size).sum()),
        pulled_at: crate::model::format_time(&r.pulled_at),
        last_used: crate::model::format_time(&r.last_used),
        in_use: st.in_use.get(&r.digest).copied().unwrap_or(0),
    }
}

/// A layer refusal without the tar wording meant for code archives.
fn layer_reason(e: &crate::backends::archive::ArchiveError) -> String {
    e.to_string()
        .replace("the work directory", "the root file system")
}

/// Load the index and remove what it does not vouch for (start-up; blocking).
fn load_and_sweep(dir: &Path) -> Index {
    if !dir.is_dir() {
        return Index::empty();
    }
    let index = match Index::load(&dir.join("index.json")) {
        Ok(i) => i,
        Err(e) => {
            log::error!("images: {e}; starting with an empty store");
            Index::empty()
        }
    };
    let _ = fs::remove_dir_all(dir.join("tmp"));
    let _ = fs::create_dir_all(dir.join("tmp"));
    if let Ok(entries) = fs::read_dir(dir.join("rootfs")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !index.images.contains_key(&format!("sha256:{name}")) {
                log::info!("images: removing root file system {name} no index entry names");
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let used = index.used_blobs();
    if let Ok(entries) = fs::read_dir(dir.join("blobs/sha256")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !used.contains(format!("sha256:{name}").as_str()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    // An index entry whose root file system is gone (edited by hand) cannot run.
    let mut index = index;
    let missing: Vec<String> = index
        .images
        .keys()
        .filter(|d| !rootfs_dir(dir, d).is_dir())
        .cloned()
        .collect();
    for d in missing {
        log::warn!("images: {d} has no root file system on disk; dropped from the index");
        index.images.remove(&d);
        index.refs.retain(|_, v| *v != d);
    }
    index
}

/// The run configuration from an image configuration blob; refuses other platforms.
fn parse_config(bytes: &[u8]) -> Result<RunConfig, PullError> {
    #[derive(Deserialize)]
    struct File {
        architecture: Option<String>,
        os: Option<String>,
        config: Option<Container>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Container {
        env: Option<Vec<String>>,
        entrypoint: Option<Vec<String>>,
        cmd: Option<Vec<String>>,
        working_dir: Option<String>,
        user: Option<String>,
    }
    let file: File = serde_json::from_slice(bytes)
        .map_err(|e| PullError::Unsupported(format!("invalid image configuration: {e}")))?;
    let os = file.os.as_deref().unwrap_or("linux");
    let arch = file
        .architecture
        .as_deref()
        .unwrap_or(registry::host_arch());
    if os != "linux" || arch != registry::host_arch() {
        return Err(PullError::Unsupported(format!(
            "the image is for {os}/{arch}; this host runs linux/{}",
            registry::host_arch()
        )));
    }
    let c = file.config.unwrap_or(Container {
        env: None,
        entrypoint: None,
        cmd: None,
        working_dir: None,
        user: None,
    });
    let working_dir = c.working_dir.unwrap_or_default();
    if !working_dir.is_empty() && !working_dir.starts_with('/') {
        return Err(PullError::Unsupported(format!(
            "the image's WorkingDir {working_dir:?} is not absolute"
        )));
    }
    Ok(RunConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir,
        user: c.user.unwrap_or_default(),
    })
}

/// The store's reason as the workload error (`image pull failed: <reason>`).
pub fn pull_failed(e: &PullError) -> String {
    format!("image pull failed: {e}")
}

/// Parse a digest path segment (`sha256:<hex>`).
pub fn parse_digest(s: &str) -> Option<&str> {
    is_sha256_digest(s).then_some(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> ImagesConfig {
        let mut cfg = crate::config::Config::load_from(std::collections::HashMap::new())
            .unwrap()
            .images;
        cfg.dir = dir.to_path_buf();
        cfg
    }

    /// A store directory as a crash could leave it: one complete image in the index,
    /// a half pull in tmp/, a root file system and a blob nobody names.
    fn crashed_store(dir: &Path) -> String {
        let digest = format!("sha256:{}", "a".repeat(64));
        let blob = format!("sha256:{}", "b".repeat(64));
        for d in ["rootfs", "blobs/sha256", "tmp/pull-x/rootfs"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::create_dir_all(rootfs_dir(dir, &digest).join("bin")).unwrap();
        fs::write(blob_path(dir, &blob), b"layer").unwrap();
        fs::create_dir_all(dir.join("rootfs").join("c".repeat(64))).unwrap();
        fs::write(dir.join("blobs/sha256").join("d".repeat(64)), b"orphan").unwrap();
        let mut index = Index::empty();
        index.images.insert(
            digest.clone(),
            ImageRecord {
                digest: digest.clone(),
                blobs: vec![BlobRef {
                    digest: blob,
                    size: 5,
                }],
                run: RunConfig::default(),
                rootfs_bytes: 100,
                pulled_at: Utc::now(),
                last_used: Utc::now(),
            },
        );
        index
            .refs
            .insert("reg.example/app:1".into(), digest.clone());
        index::write_atomically(
            &dir.join("index.json"),
            &serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        digest
    }

    #[test]
    fn reopening_keeps_the_index_and_sweeps_what_it_does_not_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        fs::create_dir(&root).unwrap();
        let digest = crashed_store(&root);
        let store = ImageStore::open(&config(&root)).unwrap();
        let list = store.list();
        assert_eq!(list.images.len(), 1);
        assert_eq!(list.images[0].digest, digest);
        assert_eq!(
            list.images[0].references,
            vec!["reg.example/app:1".to_string()]
        );
        assert_eq!(list.total_bytes, 105);
        assert_eq!(
            fs::read_dir(root.join("tmp")).unwrap().count(),
            0,
            "half pull removed"
        );
        assert_eq!(
            fs::read_dir(root.join("rootfs")).unwrap().count(),
            1,
            "orphan rootfs removed"
        );
        assert_eq!(
            fs::read_dir(root.join("blobs/sha256")).unwrap().count(),
            1,
            "orphan blob removed"
        );
        // A reference in the index is served without a registry (none is configured).
        let (lease, _) = store
            .lookup(&ImageRef::parse("reg.example/app:1").unwrap())
            .unwrap();
        assert_eq!(lease.digest(), digest);
        assert_eq!(store.list().images[0].in_use, 1);
        // Held: neither removed nor collected.
        let err = store.remove_now(&digest).unwrap_err();
        assert!(matches!(err, RemoveError::InUse { runs: 1, .. }), "{err}");
        drop(lease);
        assert_eq!(store.list().images[0].in_use, 0);
        store.remove_now(&digest).unwrap();
        assert!(store.list().images.is_empty());
        assert_eq!(fs::read_dir(root.join("rootfs")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(root.join("blobs/sha256")).unwrap().count(), 0);
        // The removal is on disk: a fresh store (another directory key) sees it.
        drop(store);
        let again = ImageStore::open(&config(&root)).unwrap();
        assert!(again.list().images.is_empty());
    }

    #[test]
    fn opening_creates_nothing_until_the_first_pull() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("not-yet");
        let store = ImageStore::open(&config(&root)).unwrap();
        assert!(store.list().images.is_empty());
        assert!(!root.exists());
        assert!(ImageStore::open(&ImagesConfig {
            dir: PathBuf::from("relative"),
            ..config(&root)
        })
        .is_err());
    }

    #[test]
    fn config_is_parsed_and_other_platforms_refused() {
        let ok = format!(
            r#"{{"architecture":"{}","os":"linux","config":{{"Env":["A=1"],"Entrypoint":["/bin/sh"],"Cmd":["-c","x"],"WorkingDir":"/srv","User":"1000"}}}}"#,
            registry::host_arch()
        );
        let run = parse_config(ok.as_bytes()).unwrap();
        assert_eq!(run.entrypoint, vec!["/bin/sh"]);
        assert_eq!(run.cmd, vec!["-c", "x"]);
        assert_eq!(run.working_dir, "/srv");
        assert_eq!(run.user, "1000");
        let other = r#"{"architecture":"s390x","os":"linux"}"#;
        assert!(parse_config(other.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("s390x"));
        assert!(parse_config(b"not json").is_err());
    }
}
