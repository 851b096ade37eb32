use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::Secret;

/// `[images]`: the OCI image store. See `config/default.toml` for each key's meaning.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Where blobs, prepared root file systems and the index live (created `0700` at
    /// the first pull). Owned by this server alone.
    pub dir: PathBuf,
    /// Disk budget in bytes; past it, least recently used images no run holds are
    /// removed after each pull.
    pub max_bytes: u64,
    /// Seconds one pull (manifests, blobs and unpacking) may take.
    pub pull_timeout_s: u64,
    /// Largest image: its compressed blobs together, and its unpacked root file system.
    pub max_image_bytes: u64,
    /// Most entries (files, directories, links) in one image's layers together.
    pub max_image_entries: usize,
    /// Registries (`host:port`) reached over plain HTTP instead of HTTPS.
    pub insecure_registries: Vec<String>,
    /// Registry hosts (`*`, `*.example.com` or a host; any port) images may be pulled
    /// from; others are refused at submission.
    pub allowed_registries: Vec<String>,
    /// Registry hosts (exact, each allowed above) that may resolve to loopback,
    /// private, link-local or metadata addresses; no other registry may.
    pub private_registries: Vec<String>,
    /// Credentials per registry host (`host[:port]`), for registries that refuse
    /// anonymous pulls.
    pub credentials: BTreeMap<String, RegistryCredential>,
}

/// A user name and password for one registry (HTTP basic, or exchanged for a token).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredential {
    /// The user name.
    pub username: String,
    /// The password or access token; never logged.
    pub password: Secret,
}
