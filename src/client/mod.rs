//! A typed HTTP client for a Vulcan server (the contract in docs/api.md), built on
//! `reqwest` (rustls, no OpenSSL) and `eventsource-stream`. The `vulcan` CLI uses it;
//! it is meant to be reused by anything else that drives a server over HTTP (benchmarks,
//! tests), so it knows nothing about terminals or exit codes.
//!
//! Every call answers an [`Answer`]: the typed reading of the body plus the server's JSON
//! exactly as received, so a caller that prints `--json` output never loses a field this
//! client does not model.

mod logs;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use logs::{LogEvent, LogStream};

use crate::model::{LogLine, Runtime, Workload, WorkloadId, WorkloadRequestDto};

/// How long a connection attempt may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on a plain request/answer exchange. Not applied to the synchronous submission
/// (it lasts as long as the workload) nor to log streams (they last as long as it runs).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Most bytes of an error answer read to find its `{"error"}` message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Why a call did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address is not an `http://` or `https://` URL.
    #[error("invalid server address {0:?}: expected http://host:port or https://host:port")]
    InvalidServer(String),
    /// The token cannot be sent in a header (control characters).
    #[error("invalid token: it must be printable ASCII")]
    InvalidToken,
    /// No connection could be made (refused, unresolvable, timed out while connecting).
    #[error("cannot connect to {server}: {cause}")]
    Connect {
        /// The server base URL.
        server: String,
        /// What the transport said, with its causes.
        cause: String,
    },
    /// The exchange broke after connecting (reset, timeout, unreadable body).
    #[error("request to {server} failed: {cause}")]
    Transport {
        /// The server base URL.
        server: String,
        /// What the transport said, with its causes.
        cause: String,
    },
    /// The server answered with an error status; `message` is its `{"error"}` text.
    #[error("server answered {status}: {message}")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The server's message (or the status text when the body had none).
        message: String,
    },
    /// The server answered 2xx with a body this client cannot read.
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
    /// A log stream kept failing and the client gave up resuming it.
    #[error("log stream of {id} lost: {cause}")]
    StreamLost {
        /// The workload.
        id: WorkloadId,
        /// The last failure.
        cause: String,
    },
}

impl ClientError {
    /// The HTTP status when the server answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A typed answer and the JSON it was read from.
///
/// Invariant: `body` is the deserialisation of `raw`.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    /// The typed reading.
    pub body: T,
    /// The server's JSON, as received.
    pub raw: Value,
}

impl<T> Deref for Answer<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.body
    }
}

/// `GET /v1/workloads`: one page, newest first.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkloadPage {
    /// The workloads of this page.
    pub workloads: Vec<Workload>,
    /// How many match the filters in all.
    pub total: u64,
    /// Page size used.
    pub limit: u64,
    /// Offset used.
    pub offset: u64,
}

/// Filters and paging of [`Client::list`]; `None` leaves a parameter out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListFilter {
    /// Only this status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Only this runtime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Only this isolation class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// Page size (1..=100 on the server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Rows skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// One page of `GET /v1/workloads/{id}/logs/history`.
///
/// A server without paging answers every line and no `next_after`: that reads as the
/// last page.
#[derive(Debug, Clone, Deserialize)]
pub struct LogPage {
    /// The workload.
    pub workload_id: WorkloadId,
    /// Lines in `seq` order.
    pub lines: Vec<LogLine>,
    /// Ask again with `after` = this for the next page; `None` on the last page.
    #[serde(default)]
    pub next_after: Option<u64>,
}

/// What a backend offers (`capabilities` of a [`BackendEntry`]).
#[derive(Debug, Clone, Deserialize)]
pub struct BackendCapabilities {
    /// Runtimes it runs.
    pub supported_runtimes: Vec<Runtime>,
    /// Isolation classes it provides.
    pub supported_isolations: Vec<String>,
    /// Workloads it runs at once.
    pub max_concurrency: u64,
}

/// One entry of `GET /v1/backends`.
#[derive(Debug, Clone, Deserialize)]
pub struct BackendEntry {
    /// Registry name.
    pub name: String,
    /// What it offers.
    pub capabilities: BackendCapabilities,
    /// `healthy`, `failed` or `unavailable`.
    pub status: String,
    /// Why it is not healthy (null when healthy).
    #[serde(default)]
    pub reason: Option<String>,
    /// Executions running now.
    pub running: u64,
    /// Workloads waiting for a slot.
    pub queued: u64,
    /// Actor restarts so far.
    pub restarts: u64,
    /// Worker processes replaced so far (crashed, or killed after a missed cancel); 0
    /// for backends without workers and from servers that do not report it.
    #[serde(default)]
    pub worker_restarts: u64,
    /// Protections that could not be applied on the server's host (empty when all hold).
    #[serde(default)]
    pub limitations: Vec<String>,
}

/// Per-backend figures of [`Stats`].
#[derive(Debug, Clone, Deserialize)]
pub struct BackendStats {
    /// Workloads recorded for it.
    pub count: u64,
    /// Mean execution time.
    pub avg_duration_ms: f64,
    /// Median execution time.
    pub p50_ms: f64,
    /// 95th percentile execution time.
    pub p95_ms: f64,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, Deserialize)]
pub struct Stats {
    /// Workloads recorded.
    pub total: u64,
    /// Count per status (every status present).
    pub by_status: BTreeMap<String, u64>,
    /// Count per isolation class (every class present).
    pub by_isolation: BTreeMap<String, u64>,
    /// Mean execution time over all.
    pub avg_duration_ms: f64,
    /// Figures per backend.
    pub by_backend: BTreeMap<String, BackendStats>,
}

/// A connection to one server. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token.
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

impl Client {
    /// A client for the server at `server` (`http://host:port`, a trailing `/` is
    /// ignored), sending `Authorization: Bearer <token>` on every request when a
    /// non-empty token is given.
    pub fn new(server: &str, token: Option<&str>) -> Result<Self, ClientError> {
        let base = server.trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base)
            .map_err(|_| ClientError::InvalidServer(server.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ClientError::InvalidServer(server.to_string()));
        }
        let mut headers = HeaderMap::new();
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::InvalidToken)?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("vulcan-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Transport {
                server: base.clone(),
                cause: causes(&e),
            })?;
        Ok(Self { http, base })
    }

    /// The server base URL (no trailing slash).
    pub fn server(&self) -> &str {
        &self.base
    }

    /// `POST /v1/workloads`: runs the workload and answers once it is terminal.
    pub async fn submit(
        &self,
        request: &WorkloadRequestDto,
    ) -> Result<Answer<Workload>, ClientError> {
        self.call(self.request(Method::POST, "/v1/workloads").json(request))
            .await
    }

    /// `POST /v1/workloads/async`: answers at once with the pending workload.
    pub async fn submit_async(
        &self,
        request: &WorkloadRequestDto,
    ) -> Result<Answer<Workload>, ClientError> {
        self.call(
            self.request(Method::POST, "/v1/workloads/async")
                .json(request)
                .timeout(REQUEST_TIMEOUT),
        )
        .await
    }

    /// `GET /v1/workloads/{id}`.
    pub async fn get(&self, id: WorkloadId) -> Result<Answer<Workload>, ClientError> {
        self.simple(Method::GET, &format!("/v1/workloads/{id}"))
            .await
    }

    /// `GET /v1/workloads` with `filter`.
    pub async fn list(&self, filter: &ListFilter) -> Result<Answer<WorkloadPage>, ClientError> {
        self.call(
            self.request(Method::GET, "/v1/workloads")
                .query(filter)
                .timeout(REQUEST_TIMEOUT),
        )
        .await
    }

    /// `DELETE /v1/workloads/{id}`: kill; the answer is the killed workload. A terminal
    /// workload is a [`ClientError::Api`] with status 409.
    pub async fn kill(&self, id: WorkloadId) -> Result<Answer<Workload>, ClientError> {
        self.simple(Method::DELETE, &format!("/v1/workloads/{id}"))
            .await
    }

    /// One page of `GET /v1/workloads/{id}/logs/history`: lines after `after`
    /// (exclusive; `None` = from the first). Lines at or before `after` are dropped here
    /// too, for servers that answer every line.
    pub async fn log_history(
        &self,
        id: WorkloadId,
        after: Option<u64>,
    ) -> Result<Answer<LogPage>, ClientError> {
        let mut req = self
            .request(Method::GET, &format!("/v1/workloads/{id}/logs/history"))
            .timeout(REQUEST_TIMEOUT);
        if let Some(after) = after {
            req = req.query(&[("after", after)]);
        }
        let mut answer: Answer<LogPage> = self.call(req).await?;
        if let Some(after) = after {
            answer.body.lines.retain(|l| l.seq > after);
        }
        Ok(answer)
    }

    /// Follow `GET /v1/workloads/{id}/logs` (SSE) from after `after` until `done`,
    /// resuming with `Last-Event-ID` when the connection drops (see [`LogStream`]).
    pub fn logs_stream(&self, id: WorkloadId, after: Option<u64>) -> LogStream {
        LogStream::new(self.clone(), id, after)
    }

    /// `GET /v1/backends`.
    pub async fn backends(&self) -> Result<Answer<Vec<BackendEntry>>, ClientError> {
        self.simple(Method::GET, "/v1/backends").await
    }

    /// `POST /v1/backends/{name}/restart`: the entry after the restart.
    pub async fn restart_backend(&self, name: &str) -> Result<Answer<BackendEntry>, ClientError> {
        self.simple(
            Method::POST,
            &format!("/v1/backends/{}/restart", segment(name)),
        )
        .await
    }

    /// `GET /v1/stats`.
    pub async fn stats(&self) -> Result<Answer<Stats>, ClientError> {
        self.simple(Method::GET, "/v1/stats").await
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{}", self.base, path))
    }

    async fn simple<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<Answer<T>, ClientError> {
        self.call(self.request(method, path).timeout(REQUEST_TIMEOUT))
            .await
    }

    /// Send, map an error status to [`ClientError::Api`], read the JSON body.
    async fn call<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
    ) -> Result<Answer<T>, ClientError> {
        let res = self.send(req).await?;
        let bytes = res.bytes().await.map_err(|e| self.transport(&e))?;
        let raw: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode(format!("not JSON: {e}")))?;
        let body = T::deserialize(&raw).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(Answer { body, raw })
    }

    /// Send and return a 2xx response; any other status becomes [`ClientError::Api`].
    async fn send(&self, req: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let res = req.send().await.map_err(|e| self.transport(&e))?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status();
        // An error answer is a short JSON object; never hold more than a little of one.
        let mut res = res;
        let mut text = Vec::new();
        while let Ok(Some(chunk)) = res.chunk().await {
            text.extend_from_slice(&chunk);
            if text.len() > MAX_ERROR_BODY {
                break;
            }
        }
        let message = serde_json::from_slice::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| {
                status
                    .canonical_reason()
                    .unwrap_or("unknown status")
                    .to_string()
            });
        Err(ClientError::Api { status, message })
    }

    fn transport(&self, e: &reqwest::Error) -> ClientError {
        let server = self.base.clone();
        if e.is_connect() {
            // The root cause says it all ("Connection refused"); the layers above it
            // only repeat the URL.
            let mut root: &dyn std::error::Error = e;
            while let Some(next) = root.source() {
                root = next;
            }
            ClientError::Connect {
                server,
                cause: root.to_string(),
            }
        } else {
            ClientError::Transport {
                server,
                cause: causes(e),
            }
        }
    }
}

/// A path segment as given (a backend name from the command line), with the characters
/// that would end the segment or the path escaped.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error and its causes, `: `-joined (reqwest's own message names no cause).
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_must_be_http_urls() {
        assert!(Client::new("http://127.0.0.1:8080", None).is_ok());
        assert_eq!(
            Client::new("https://vulcan.example/", None)
                .expect("https")
                .server(),
            "https://vulcan.example"
        );
        for bad in ["127.0.0.1:8080", "ftp://host", "http://", "not a url"] {
            assert!(
                matches!(Client::new(bad, None), Err(ClientError::InvalidServer(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn tokens_with_control_characters_are_refused() {
        assert!(matches!(
            Client::new("http://h", Some("a\nb")),
            Err(ClientError::InvalidToken)
        ));
        assert!(Client::new("http://h", Some("")).is_ok());
    }

    #[test]
    fn path_segments_cannot_change_the_path() {
        assert_eq!(segment("isolate"), "isolate");
        assert_eq!(segment("../stats?x=1"), "..%2Fstats%3Fx%3D1");
        assert_eq!(segment("a b#"), "a%20b%23");
    }

    #[test]
    fn a_log_page_without_next_after_is_the_last_page() {
        let page: LogPage = serde_json::from_value(serde_json::json!({
            "workload_id": "01JKQX7V8MZRN3B4HTGFWDCS9E",
            "lines": [{"seq": 0, "line": "a", "created_at": "2026-11-27T09:05:48.123Z"}]
        }))
        .expect("unpaged answer");
        assert_eq!(page.next_after, None);
        assert_eq!(page.lines.len(), 1);
    }
}
