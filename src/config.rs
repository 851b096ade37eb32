//! Layered configuration: the embedded `config/default.toml` → an optional file named by
//! `VULCAN_CONFIG` → `VULCAN_*` environment variables (`__` separates sections, e.g.
//! `VULCAN_LOGS__MAX_LINES`). Unknown keys anywhere are an error at start-up.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use crate::backends::gvisor::GvisorConfig;
use crate::backends::isolate::IsolateConfig;
use crate::backends::microvm::MicrovmConfig;
use crate::model::Limits;
use crate::webhooks::WebhooksConfig;

/// The defaults, embedded so `vulcan serve` works with no file on disk.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for comparison only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The whole server configuration. See `config/default.toml` for every key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to bind, `host:port` (port 0 picks a free one).
    pub listen_addr: String,
    /// SQLite database file (created if missing).
    pub db_path: PathBuf,
    /// This server's name in workload records; empty = the host name.
    pub node_id: String,
    /// Bearer token for `/v1/*`; empty = no auth.
    pub api_token: Secret,
    /// Pending workloads the server holds before answering 429.
    pub max_queue: usize,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// CPUs when a request names none.
    pub default_cpus: u32,
    /// Largest accepted `resources.cpus`.
    pub max_cpus: u32,
    /// Memory (MiB) when a request names none.
    pub default_mem_mb: u32,
    /// Largest accepted `resources.mem_mb`.
    pub max_mem_mb: u32,
    /// Timeout (s) when a request names none.
    pub default_timeout_s: u32,
    /// Largest accepted `resources.timeout_s`.
    pub max_timeout_s: u32,
    /// Seconds graceful shutdown waits for in-flight work before exiting.
    pub shutdown_timeout_s: u64,
    /// Log streaming limits.
    pub logs: LogsConfig,
    /// Store tuning.
    pub store: StoreConfig,
    /// Per-backend settings.
    pub backends: BackendsConfig,
    /// Completion webhooks.
    pub webhooks: WebhooksConfig,
}

/// `[logs]`: limits of the log pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsConfig {
    /// Longest line kept, in bytes; longer lines are cut and marked.
    pub max_line_bytes: usize,
    /// Lines kept per workload; past it one marker line says the log was truncated.
    pub max_lines: u64,
    /// Events buffered per SSE subscriber; a subscriber that falls further behind is
    /// disconnected (it can resume with `Last-Event-ID`).
    pub subscriber_buffer: usize,
    /// Seconds between keep-alive comments on idle streams.
    pub keepalive_s: u64,
}

/// `[store]`: the SQLite writer and readers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// Read-only connections for queries.
    pub read_pool_size: u32,
}

/// `[backends.*]`: one section per backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    /// In-process JavaScript and Wasm.
    pub isolate: IsolateConfig,
    /// gVisor (`runsc`) containers.
    pub gvisor: GvisorConfig,
    /// KVM micro-VMs.
    pub microvm: MicrovmConfig,
}

/// Configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Load the layers from the real environment.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(std::env::vars().collect())
    }

    /// Load the layers with `env` standing in for the process environment.
    pub fn load_from(env: HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = env.get("VULCAN_CONFIG").filter(|p| !p.is_empty()) {
            builder = builder.add_source(config::File::with_name(path).required(true));
        }
        let vars: HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("VULCAN_") && k != "VULCAN_CONFIG")
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("VULCAN")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("webhooks.allowed_hosts")
                .with_list_parse_key("webhooks.private_hosts")
                .source(Some(vars)),
        );
        let cfg: Config = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let l = self.limits();
        let pairs = [
            ("cpus", l.default_cpus, l.max_cpus),
            ("mem_mb", l.default_mem_mb, l.max_mem_mb),
            ("timeout_s", l.default_timeout_s, l.max_timeout_s),
        ];
        for (name, default, max) in pairs {
            if default == 0 || default > max {
                return Err(ConfigError(format!(
                    "default_{name} ({default}) must be between 1 and max_{name} ({max})"
                )));
            }
        }
        if self.max_body_bytes == 0 || self.store.max_batch == 0 || self.logs.subscriber_buffer == 0
        {
            return Err(ConfigError(
                "max_body_bytes, store.max_batch and logs.subscriber_buffer must be positive"
                    .into(),
            ));
        }
        self.webhooks.validate().map_err(ConfigError)?;
        Ok(())
    }

    /// The request limits derived from this configuration.
    pub fn limits(&self) -> Limits {
        Limits {
            default_cpus: self.default_cpus,
            max_cpus: self.max_cpus,
            default_mem_mb: self.default_mem_mb,
            max_mem_mb: self.max_mem_mb,
            default_timeout_s: self.default_timeout_s,
            max_timeout_s: self.max_timeout_s,
        }
    }

    /// The node id, falling back to the host name.
    pub fn node_id(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "vulcan".to_string())
    }

    /// The API token, when auth is on.
    pub fn api_token(&self) -> Option<&Secret> {
        (!self.api_token.expose().is_empty()).then_some(&self.api_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn embedded_defaults_load() {
        let c = Config::load_from(HashMap::new()).expect("defaults");
        assert_eq!(c.listen_addr, "127.0.0.1:8080");
        assert_eq!(c.db_path, PathBuf::from("vulcan.db"));
        assert_eq!(c.max_queue, 10_000);
        assert_eq!(c.default_timeout_s, 30);
        assert!(c.api_token().is_none());
        assert!(!c.node_id().is_empty());
    }

    #[test]
    fn environment_overrides_defaults() {
        let c = Config::load_from(env(&[
            ("VULCAN_LISTEN_ADDR", "0.0.0.0:9000"),
            ("VULCAN_MAX_QUEUE", "5"),
            ("VULCAN_API_TOKEN", "12345"),
            ("VULCAN_LOGS__MAX_LINES", "7"),
            ("PATH", "/usr/bin"),
        ]))
        .expect("env");
        assert_eq!(c.listen_addr, "0.0.0.0:9000");
        assert_eq!(c.max_queue, 5);
        assert_eq!(c.logs.max_lines, 7);
        assert_eq!(c.api_token().map(Secret::expose), Some("12345"));
        assert!(!format!("{c:?}").contains("12345"), "token leaked in Debug");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::load_from(env(&[("VULCAN_LISTEN_ADRR", "x")])).expect_err("typo");
        assert!(err.to_string().contains("listen_adrr"), "{err}");
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("v.toml");
        std::fs::write(&path, "[logs]\nmax_linez = 3\n").expect("write");
        let err = Config::load_from(env(&[("VULCAN_CONFIG", path.to_str().expect("utf8"))]))
            .expect_err("typo in file");
        assert!(err.to_string().contains("max_linez"), "{err}");
    }

    #[test]
    fn file_layer_sits_between_defaults_and_env() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("v.toml");
        std::fs::write(&path, "max_queue = 3\nnode_id = \"file\"\n").expect("write");
        let c = Config::load_from(env(&[
            ("VULCAN_CONFIG", path.to_str().expect("utf8")),
            ("VULCAN_NODE_ID", "env"),
        ]))
        .expect("layers");
        assert_eq!(c.max_queue, 3);
        assert_eq!(c.node_id(), "env");
    }

    #[test]
    fn webhook_host_lists_come_from_the_environment_comma_separated() {
        let c = Config::load_from(env(&[
            (
                "VULCAN_WEBHOOKS__ALLOWED_HOSTS",
                "hooks.example.com,*.corp.example",
            ),
            ("VULCAN_WEBHOOKS__PRIVATE_HOSTS", "hooks.example.com"),
            ("VULCAN_WEBHOOKS__SECRET", "s3cret"),
        ]))
        .expect("lists");
        assert_eq!(
            c.webhooks.allowed_hosts,
            vec!["hooks.example.com", "*.corp.example"]
        );
        assert_eq!(c.webhooks.private_hosts, vec!["hooks.example.com"]);
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "secret leaked in Debug"
        );
        let defaults = Config::load_from(HashMap::new()).expect("defaults");
        assert!(
            defaults.webhooks.allowed_hosts.is_empty(),
            "webhooks off by default"
        );
    }

    #[test]
    fn enabled_webhooks_need_a_secret_and_valid_patterns() {
        let err = Config::load_from(env(&[("VULCAN_WEBHOOKS__ALLOWED_HOSTS", "*")]))
            .expect_err("no secret");
        assert!(err.to_string().contains("webhooks.secret"), "{err}");
        let err = Config::load_from(env(&[
            ("VULCAN_WEBHOOKS__ALLOWED_HOSTS", "http://x"),
            ("VULCAN_WEBHOOKS__SECRET", "s"),
        ]))
        .expect_err("bad pattern");
        assert!(err.to_string().contains("webhooks.allowed_hosts"), "{err}");
        let err = Config::load_from(env(&[("VULCAN_WEBHOOKS__MAX_ATTEMPTS", "0")]))
            .expect_err("zero attempts");
        assert!(err.to_string().contains("max_attempts"), "{err}");
    }

    #[test]
    fn inconsistent_limits_are_rejected() {
        let err = Config::load_from(env(&[
            ("VULCAN_DEFAULT_TIMEOUT_S", "100"),
            ("VULCAN_MAX_TIMEOUT_S", "10"),
        ]))
        .expect_err("bad limits");
        assert!(err.to_string().contains("default_timeout_s"), "{err}");
    }
}
