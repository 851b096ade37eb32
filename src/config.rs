//! Layered configuration: the embedded `config/default.toml` → an optional file named by
//! `VULCAN_CONFIG` → `VULCAN_*` environment variables (`__` separates sections, e.g.
//! `VULCAN_LOGS__MAX_LINES`).
//!
//! The embedded file is the one place defaults are written: it lists every key, and the
//! Rust types below are deserialised from it (no field has a serde default), so a key
//! missing on either side fails every start. Unknown keys in a file are errors. Unknown
//! `VULCAN_*` environment variables are not: orchestrators inject their own (a Kubernetes
//! Service named `vulcan` sets `VULCAN_PORT`, `VULCAN_SERVICE_HOST`, …), so they are
//! only named in one warning. Environment values are read verbatim: a string setting
//! is never parsed as a number (`VULCAN_API_TOKEN=000123` stays `000123`); numbers and
//! booleans are parsed from the text when the key is numeric or boolean.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use crate::backends::gvisor::GvisorConfig;
use crate::backends::isolate::IsolateConfig;
use crate::backends::microvm::MicrovmConfig;
use crate::images::ImagesConfig;
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
    /// SQLite database file (created if missing); unused when `db_url` is set.
    pub db_path: PathBuf,
    /// PostgreSQL connection URL (`postgres://…`); empty = SQLite at `db_path`. May
    /// hold a password, so it never shows in `Debug` output.
    pub db_url: Secret,
    /// This server's name in workload records; empty = the host name.
    pub node_id: String,
    /// Bearer token for `/v1/*`; empty = no auth.
    pub api_token: Secret,
    /// Host names (any port) `/v1/*` answers when `api_token` is empty; `"*"` = any.
    pub allowed_hosts: Vec<String>,
    /// Pending workloads the server holds before answering 429 (all backends together;
    /// each backend also has its own `max_queue`).
    pub max_queue: usize,
    /// Bytes of pending payloads (code, archive, input) the server holds before
    /// answering 429 (all backends together).
    pub max_queue_bytes: usize,
    /// Seconds an `Idempotency-Key` is remembered (replays within it return the same
    /// workload; older keys are swept).
    pub idempotency_ttl_s: u64,
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
    /// Largest result a workload may produce, in bytes (every backend).
    pub max_output_bytes: usize,
    /// Seconds graceful shutdown waits for in-flight work before exiting.
    pub shutdown_timeout_s: u64,
    /// Cross-origin access from browsers.
    pub cors: CorsConfig,
    /// Log streaming limits.
    pub logs: LogsConfig,
    /// Store tuning.
    pub store: StoreConfig,
    /// How long finished work is kept.
    pub retention: RetentionConfig,
    /// Per-backend settings.
    pub backends: BackendsConfig,
    /// The OCI image store.
    pub images: ImagesConfig,
    /// `VULCAN_*` environment variables that name no key and were ignored (names only:
    /// values may be secrets). Not a configuration key.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
    /// Completion webhooks.
    pub webhooks: WebhooksConfig,
    /// Several nodes sharing one PostgreSQL database.
    pub cluster: ClusterConfig,
}

/// `[cluster]`: several nodes sharing one PostgreSQL database and its queue.
///
/// Invariant (checked at load): enabled only with `db_url` set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This server is one node of several sharing `db_url`.
    pub enabled: bool,
    /// Milliseconds between two heartbeats of this node (at least 1).
    pub heartbeat_ms: u64,
    /// Milliseconds between two looks for work recorded by other nodes (at least 1).
    pub poll_ms: u64,
    /// Seconds without a heartbeat after which a node is declared lost; more than one
    /// heartbeat interval (checked at load).
    pub node_timeout_s: u64,
    /// Milliseconds between two polls of the node's LISTEN connection (wake-up latency
    /// across nodes); ten times this between two attempts to reopen it.
    pub listen_poll_ms: u64,
    /// Seconds a cross-node kill waits for the running node to record it (then 504).
    pub kill_timeout_s: u64,
    /// Seconds between two re-reads of the table by a follower of another node's
    /// workload, notification or not.
    pub recheck_s: u64,
    /// Milliseconds for which a node answers `GET /v1/stats` from its last count of the
    /// shared table (0: a count per request); an answer is at most this old.
    pub stats_max_age_ms: u64,
}

impl ClusterConfig {
    /// A node must be able to heartbeat several times before it is declared lost.
    fn validate(&self) -> Result<(), String> {
        if self.heartbeat_ms == 0 || self.poll_ms == 0 {
            return Err("cluster.heartbeat_ms and cluster.poll_ms must be at least 1".into());
        }
        if self.node_timeout_s.saturating_mul(1000) <= self.heartbeat_ms.saturating_mul(2) {
            return Err(format!(
                "cluster.node_timeout_s ({}s) must exceed two heartbeats (cluster.heartbeat_ms = {})",
                self.node_timeout_s, self.heartbeat_ms
            ));
        }
        Ok(())
    }
}

/// `[cors]`: which other origins' pages may call the API.
///
/// Invariant (checked at load): every entry is a bare origin, `scheme://host[:port]`
/// with scheme http or https, exactly as a browser sends it in `Origin`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed; empty = same origin only.
    pub allowed_origins: Vec<String>,
    /// Seconds a browser may cache a preflight answer.
    pub max_age_s: u64,
}

impl CorsConfig {
    /// Every entry must be an origin as browsers serialise it, or the match against
    /// `Origin` would silently never succeed (a trailing slash, a path, upper case).
    fn validate(&self) -> Result<(), String> {
        for origin in &self.allowed_origins {
            let parsed = url::Url::parse(origin)
                .map_err(|e| format!("cors.allowed_origins: {origin:?} is not an origin: {e}"))?;
            let serialised = parsed.origin().ascii_serialization();
            if !matches!(parsed.scheme(), "http" | "https") || serialised != *origin {
                return Err(format!(
                    "cors.allowed_origins: {origin:?} is not an origin; write it as \
                     scheme://host[:port] with no path, e.g. {serialised:?}"
                ));
            }
        }
        Ok(())
    }
}

/// `[logs]`: limits of the log pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsConfig {
    /// Longest line kept, in bytes; longer lines are cut and marked.
    pub max_line_bytes: usize,
    /// Lines kept per workload; past it one marker line says the log was truncated.
    pub max_lines: u64,
    /// Bytes of log text kept per workload; past it one marker line says the log was
    /// truncated. Lines past either cap are dropped at the sink.
    pub max_bytes: u64,
    /// Live events kept per workload for its SSE subscribers (one buffer shared by all
    /// of them); a subscriber that falls further behind is disconnected (it can resume
    /// with `Last-Event-ID`).
    pub subscriber_buffer: usize,
    /// Seconds between keep-alive comments on idle streams.
    pub keepalive_s: u64,
    /// Threads that read and render pages of logs (history, SSE replay), at a lower CPU
    /// priority than the rest of the server; more concurrent reads wait for one.
    pub read_threads: usize,
}

/// `[store]`: the SQLite writer and readers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// Group commit: how long, µs, a batch that found company waits for more writes
    /// (0: never).
    pub group_commit_us: u64,
    /// Read-only connections for queries.
    pub read_pool_size: u32,
    /// SQLite: ms between two background checkpoints of the write-ahead log (0: SQLite
    /// checkpoints inside the writer's commits).
    pub checkpoint_interval_ms: u64,
    /// SQLite: the write-ahead log's bound, MiB, with background checkpoints.
    pub wal_max_mb: u64,
}

/// `[retention]`: deletion of old finished work.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Seconds a finished workload is kept after `finished_at`; 0 keeps everything.
    pub max_age_s: u64,
    /// Seconds between sweeps (at least 1).
    pub sweep_interval_s: u64,
}

/// `[backends.*]`: one section per backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    /// JavaScript and Wasm in confined worker processes.
    pub isolate: IsolateConfig,
    /// gVisor (`runsc`) containers.
    pub gvisor: GvisorConfig,
    /// KVM micro-VMs.
    pub microvm: MicrovmConfig,
}

impl BackendsConfig {
    /// Each built-in backend's queue bound, by registry name.
    pub fn queue_bounds(&self) -> HashMap<String, usize> {
        HashMap::from([
            ("isolate".to_string(), self.isolate.max_queue),
            ("gvisor".to_string(), self.gvisor.max_queue),
            ("microvm".to_string(), self.microvm.max_queue),
        ])
    }
}

/// Configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

/// Environment variables read by Vulcan's clients (not the server): never warned about.
const CLIENT_VARIABLES: &[&str] = &["VULCAN_SERVER"];

/// Names the configuration file; not a key itself.
const CONFIG_FILE_VARIABLE: &str = "VULCAN_CONFIG";

/// Every key of the embedded defaults (dotted paths), and whether its value is a list.
///
/// The embedded file lists every key, so this is the set of keys that exist.
fn known_keys() -> Result<BTreeMap<String, bool>, ConfigError> {
    fn walk(
        prefix: &str,
        table: config::Map<String, config::Value>,
        out: &mut BTreeMap<String, bool>,
    ) {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k
            } else {
                format!("{prefix}.{k}")
            };
            match v.kind {
                config::ValueKind::Table(t) => walk(&path, t, out),
                config::ValueKind::Array(_) => {
                    out.insert(path, true);
                }
                _ => {
                    out.insert(path, false);
                }
            }
        }
    }
    use config::Source as _;
    let defaults = config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml)
        .collect()
        .map_err(|e| ConfigError(format!("embedded defaults: {e}")))?;
    let mut out = BTreeMap::new();
    walk("", defaults, &mut out);
    Ok(out)
}

/// The environment variable that sets `key` (`logs.max_lines` → `VULCAN_LOGS__MAX_LINES`).
fn env_name(key: &str) -> String {
    format!("VULCAN_{}", key.replace('.', "__").to_ascii_uppercase())
}

impl Config {
    /// Load the layers from the real environment, and warn once (names only) about
    /// `VULCAN_*` variables that are not configuration keys.
    pub fn load() -> Result<Self, ConfigError> {
        let cfg = Self::load_from(std::env::vars().collect())?;
        if !cfg.ignored_env.is_empty() {
            log::warn!(
                "ignoring environment variables that are not Vulcan settings: {}",
                cfg.ignored_env.join(", ")
            );
        }
        Ok(cfg)
    }

    /// Load the layers with `env` standing in for the process environment.
    ///
    /// Only variables naming a key of the embedded defaults reach the configuration;
    /// other `VULCAN_*` names are collected in [`Config::ignored_env`].
    pub fn load_from(env: HashMap<String, String>) -> Result<Self, ConfigError> {
        let known = known_keys()?;
        let by_env: HashMap<String, (&String, bool)> = known
            .iter()
            .map(|(key, list)| (env_name(key), (key, *list)))
            .collect();
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = env.get(CONFIG_FILE_VARIABLE).filter(|p| !p.is_empty()) {
            builder = builder.add_source(config::File::with_name(path).required(true));
        }
        let mut scalars: HashMap<String, String> = HashMap::new();
        let mut ignored = Vec::new();
        for (name, value) in env {
            if !name.starts_with("VULCAN_")
                || name == CONFIG_FILE_VARIABLE
                || CLIENT_VARIABLES.contains(&name.as_str())
            {
                continue;
            }
            match by_env.get(&name) {
                // Lists come as comma-separated text (`VULCAN_ALLOWED_HOSTS=a,b`).
                Some((key, true)) => {
                    let items: Vec<String> = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect();
                    builder = builder
                        .set_override(key.as_str(), items)
                        .map_err(|e| ConfigError(format!("{name}: {e}")))?;
                }
                Some((_, false)) => {
                    scalars.insert(name, value);
                }
                None => ignored.push(name),
            }
        }
        ignored.sort();
        builder = builder.add_source(
            config::Environment::with_prefix("VULCAN")
                .prefix_separator("_")
                .separator("__")
                // Verbatim: numeric and boolean keys parse their text when deserialised.
                .try_parsing(false)
                .source(Some(scalars)),
        );
        let mut cfg: Config = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(e.to_string()))?;
        cfg.ignored_env = ignored;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The embedded defaults alone (no file, no environment).
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::load_from(HashMap::new())
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
        if self.max_body_bytes == 0
            || self.max_output_bytes == 0
            || self.store.max_batch == 0
            || self.logs.subscriber_buffer == 0
            || self.logs.read_threads == 0
            || self.idempotency_ttl_s == 0
        {
            return Err(ConfigError(
                "max_body_bytes, max_output_bytes, store.max_batch, logs.subscriber_buffer, \
                 logs.read_threads and idempotency_ttl_s must be positive"
                    .into(),
            ));
        }
        if let Some(bad) = self.allowed_hosts.iter().find(|h| h.trim().is_empty()) {
            return Err(ConfigError(format!(
                "allowed_hosts entries must be host names, got {bad:?}"
            )));
        }
        self.webhooks.validate().map_err(ConfigError)?;
        crate::images::policy::RegistryPolicy::new(&self.images).map_err(ConfigError)?;
        self.cors.validate().map_err(ConfigError)?;
        self.cluster.validate().map_err(ConfigError)?;
        self.database().map_err(|e| {
            ConfigError(match e {
                crate::store::StoreError::Connection(why) => why,
                other => other.to_string(),
            })
        })?;
        Ok(())
    }

    /// The database the store opens: PostgreSQL at `db_url` when it is set, the SQLite
    /// file `db_path` otherwise.
    pub fn database(&self) -> Result<crate::store::Database, crate::store::StoreError> {
        crate::store::Database::from_config(
            &self.db_path,
            self.db_url.expose(),
            self.cluster.enabled,
        )
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
        assert_eq!(c.max_output_bytes, 4 * 1024 * 1024);
        assert_eq!(c.backends.isolate.worker_uid, 65534);
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
    fn the_store_is_sqlite_at_db_path_unless_db_url_names_postgres() {
        use crate::store::Database;
        let c = Config::load_from(HashMap::new()).expect("defaults");
        assert_eq!(
            c.database().expect("db"),
            Database::Sqlite(PathBuf::from("vulcan.db"))
        );
        let url = "postgres://vulcan:s3cret@db.example:5432/vulcan";
        let c = Config::load_from(env(&[("VULCAN_DB_URL", url)])).expect("pg");
        assert_eq!(c.database().expect("db"), Database::Postgres(url.into()));
        let c = Config::load_from(env(&[
            ("VULCAN_DB_URL", url),
            ("VULCAN_CLUSTER__ENABLED", "true"),
        ]))
        .expect("a cluster node");
        assert_eq!(
            c.database().expect("db"),
            Database::SharedPostgres(url.into())
        );
        let err = Config::load_from(env(&[("VULCAN_CLUSTER__ENABLED", "true")]))
            .expect_err("a cluster without a shared database");
        assert!(
            err.to_string().contains("cluster.enabled needs db_url"),
            "{err}"
        );
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "password leaked in Debug"
        );
        let shown = c.database().expect("db").to_string();
        assert!(
            !shown.contains("s3cret") && shown.contains("db.example"),
            "{shown}"
        );
        let err =
            Config::load_from(env(&[("VULCAN_DB_URL", "mysql://x/y")])).expect_err("not postgres");
        assert!(err.to_string().contains("db_url"), "{err}");
    }

    #[test]
    fn unknown_keys_in_a_file_are_errors_and_unknown_variables_are_named() {
        let c = Config::load_from(env(&[
            ("VULCAN_LISTEN_ADRR", "x"),
            ("VULCAN_PORT", "tcp://10.0.0.1:8080"),
            ("VULCAN_SERVICE_HOST", "10.0.0.1"),
            ("VULCAN_SERVER", "http://127.0.0.1:8080"),
            ("VULCAN_LOGS", "x"),
        ]))
        .expect("unknown variables are not errors");
        assert_eq!(
            c.ignored_env,
            [
                "VULCAN_LISTEN_ADRR",
                "VULCAN_LOGS",
                "VULCAN_PORT",
                "VULCAN_SERVICE_HOST"
            ],
            "client variables are known, every other unknown one is named"
        );
        assert_eq!(c.listen_addr, "127.0.0.1:8080");
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("v.toml");
        std::fs::write(&path, "[logs]\nmax_linez = 3\n").expect("write");
        let err = Config::load_from(env(&[("VULCAN_CONFIG", path.to_str().expect("utf8"))]))
            .expect_err("typo in file");
        assert!(err.to_string().contains("max_linez"), "{err}");
    }

    #[test]
    fn strings_are_verbatim_and_numbers_booleans_and_lists_parse() {
        let c = Config::load_from(env(&[
            ("VULCAN_API_TOKEN", "000123"),
            ("VULCAN_NODE_ID", "1e5"),
            ("VULCAN_MAX_QUEUE", "0042"),
            ("VULCAN_BACKENDS__GVISOR__ENABLED", "false"),
            ("VULCAN_BACKENDS__GVISOR__RUNSC_PATH", "123"),
            ("VULCAN_BACKENDS__ISOLATE__MAX_QUEUE", "7"),
            ("VULCAN_ALLOWED_HOSTS", "api.example, 10.0.0.5:8080"),
        ]))
        .expect("env");
        assert_eq!(c.api_token().map(Secret::expose), Some("000123"));
        assert_eq!(c.node_id(), "1e5");
        assert_eq!(c.max_queue, 42);
        assert!(!c.backends.gvisor.enabled);
        assert_eq!(c.backends.gvisor.runsc_path, "123");
        assert_eq!(c.backends.queue_bounds()["isolate"], 7);
        assert_eq!(c.allowed_hosts, ["api.example", "10.0.0.5:8080"]);
        let long = "9".repeat(40);
        let c = Config::load_from(env(&[("VULCAN_API_TOKEN", long.as_str())])).expect("env");
        assert_eq!(c.api_token().map(Secret::expose), Some(long.as_str()));
    }

    #[test]
    fn bad_values_for_known_keys_are_errors() {
        for (var, key) in [
            ("VULCAN_MAX_QUEUE", "max_queue"),
            ("VULCAN_BACKENDS__GVISOR__ENABLED", "enabled"),
            ("VULCAN_LOGS__MAX_LINES", "max_lines"),
        ] {
            let err = Config::load_from(env(&[(var, "lots")])).expect_err(var);
            assert!(err.to_string().contains(key), "{var}: {err}");
        }
    }

    /// The embedded file is the one place defaults live: every key carries a comment,
    /// and the README's table of variables states the same defaults.
    #[test]
    fn defaults_are_documented_once_and_the_readme_agrees() {
        // A key is documented by the comment above it, or above the run of keys it
        // belongs to (a blank line or a section header ends the run).
        let mut documented = false;
        for line in DEFAULT_TOML.lines().map(str::trim) {
            if line.starts_with('#') {
                documented = true;
            } else if line.is_empty() || line.starts_with('[') {
                documented = false;
            } else {
                assert!(
                    documented,
                    "config/default.toml: key without a comment: {line}"
                );
            }
        }
        let defaults = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
            .build()
            .expect("defaults");
        let readme = include_str!("../README.md");
        let mut checked = 0;
        for row in readme.lines().filter(|l| l.starts_with("| `VULCAN_")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (vars, values) = (cells[1], cells[2]);
            let vars: Vec<&str> = vars
                .split(" / ")
                .map(|v| v.trim().trim_matches('`'))
                .collect();
            let values: Vec<&str> = values.split(" / ").map(|v| v.trim()).collect();
            for (var, value) in vars.iter().zip(values) {
                let key = var
                    .strip_prefix("VULCAN_")
                    .expect("prefix")
                    .to_ascii_lowercase()
                    .replace("__", ".");
                let stated = value.split('`').nth(1).unwrap_or("");
                let actual = defaults
                    .get::<config::Value>(&key)
                    .unwrap_or_else(|e| panic!("README names {var}, not a key: {e}"));
                let actual = match actual.kind {
                    config::ValueKind::Array(items) => items
                        .into_iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                };
                if stated != "unset" {
                    assert_eq!(stated, actual, "README default of {var}");
                }
                checked += 1;
            }
        }
        assert!(checked >= 8, "README table not found ({checked} rows)");
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
    fn cors_origins_must_be_bare_origins() {
        let defaults = Config::load_from(HashMap::new()).expect("defaults");
        assert!(defaults.cors.allowed_origins.is_empty(), "same origin only");
        let c = Config::load_from(env(&[(
            "VULCAN_CORS__ALLOWED_ORIGINS",
            "https://ops.example.com,http://127.0.0.1:3000",
        )]))
        .expect("origins");
        assert_eq!(
            c.cors.allowed_origins,
            vec!["https://ops.example.com", "http://127.0.0.1:3000"]
        );
        for bad in [
            "https://ops.example.com/",
            "https://ops.example.com/dash",
            "HTTPS://Ops.example.com",
            "https://ops.example.com:443",
            "ops.example.com",
            "*",
            "null",
            "file:///tmp/x",
        ] {
            let err =
                Config::load_from(env(&[("VULCAN_CORS__ALLOWED_ORIGINS", bad)])).expect_err(bad);
            assert!(
                err.to_string().contains("cors.allowed_origins"),
                "{bad}: {err}"
            );
        }
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
