//! Completion webhooks (docs/api.md, "Webhooks"): a workload submitted with a
//! `callback_url` is POSTed there, signed, when it reaches a terminal status.
//!
//! This module holds the rules; the moving parts live where the architecture puts them:
//! [`policy`] decides which URLs and addresses are acceptable (at submission and again
//! at every attempt), [`signature`] signs a body, [`backoff`] spaces the retries and
//! [`sender`] is the HTTP client that makes one attempt. The queue and the attempt rows
//! belong to the store ([`crate::store::deliveries`]: the statement that records a
//! terminal status also enqueues the delivery); the
//! [`crate::actors::webhooks::Deliverer`] actor picks due deliveries, makes attempts and
//! records every one.

pub mod backoff;
pub mod policy;
pub mod sender;
pub mod signature;

use serde::Deserialize;

use crate::config::Secret;

/// `[webhooks]` (see `config/default.toml` for the meaning and default of each key).
///
/// Invariant once loaded through [`crate::config::Config`]: the patterns parse (see
/// [`policy::CallbackPolicy::new`]), a secret is set when webhooks are enabled, and
/// every number is at least 1.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Host patterns a `callback_url` may name; empty turns webhooks off.
    pub allowed_hosts: Vec<String>,
    /// Exact hosts whose addresses may be loopback, private, link-local, … .
    pub private_hosts: Vec<String>,
    /// Whether plain `http://` callback URLs are accepted.
    pub allow_http: bool,
    /// The HMAC-SHA256 key of `Vulcan-Signature` (never logged).
    pub secret: Secret,
    /// Seconds one attempt may take, from name resolution to the response headers.
    pub timeout_s: u64,
    /// Base of the exponential backoff, in milliseconds.
    pub retry_base_ms: u64,
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// Attempts in flight at once.
    pub max_concurrency: usize,
}

impl WebhooksConfig {
    /// Check what serde cannot: the numbers, the secret and the host patterns.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout_s == 0
            || self.retry_base_ms == 0
            || self.max_attempts == 0
            || self.max_concurrency == 0
        {
            return Err(
                "webhooks.timeout_s, retry_base_ms, max_attempts and max_concurrency must be positive"
                    .into(),
            );
        }
        let policy = policy::CallbackPolicy::new(self)?;
        if policy.enabled() && self.secret.expose().is_empty() {
            return Err(
                "webhooks.secret must be set when webhooks.allowed_hosts is not empty".into(),
            );
        }
        Ok(())
    }
}
