use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};

use super::{Isolation, IsolationRequest, Runtime, Status, WorkloadId};

/// The workload object of the API (docs/api.md), as stored and as answered.
///
/// Invariant: `isolation` is never `auto`; optional numbers are serialised as `null`,
/// never omitted, so clients see a stable shape. `Deserialize` is the client's reading
/// of the same shape (`vulcan::client`); the server never reads it back from JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Workload {
    /// The id.
    pub id: WorkloadId,
    /// Current lifecycle status.
    pub status: Status,
    /// The class that runs (or ran) it.
    pub isolation: Isolation,
    /// What the client asked for.
    pub requested_isolation: IsolationRequest,
    /// The registered backend that runs it.
    pub backend: String,
    /// The runtime.
    pub runtime: Runtime,
    /// The server that accepted it.
    pub node_id: String,
    /// `sha256:` of payload and input.
    pub input_hash: String,
    /// The result (JSON if the backend's bytes parse, else a string); `null` until terminal.
    pub output: Option<serde_json::Value>,
    /// Process exit code where the backend has one.
    pub exit_code: Option<i32>,
    /// Why it failed or was killed.
    pub error: Option<String>,
    /// CPUs granted.
    pub cpu_limit: u32,
    /// Memory limit in MiB.
    pub mem_limit: u32,
    /// Wall-clock limit in seconds.
    pub timeout_s: u32,
    /// Execution time, once terminal after running.
    pub duration_ms: Option<u64>,
    /// When it was accepted.
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    /// When it started running.
    #[serde(serialize_with = "rfc3339_opt")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal status.
    #[serde(serialize_with = "rfc3339_opt")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Where the completion webhook goes (accepted by the callback policy at
    /// submission); `null` when none. Absent from older servers' answers.
    #[serde(default)]
    pub callback_url: Option<String>,
}

/// One recorded log line of a workload (answered by the server, read by the client).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    /// Position in the workload's log, from 0, without gaps.
    pub seq: u64,
    /// The text (no trailing newline).
    pub line: String,
    /// When the line was produced.
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// RFC 3339 UTC with milliseconds: `2026-11-27T09:05:48.123Z` (sorts as text).
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(t))
}

pub(crate) fn rfc3339_opt<S: Serializer>(
    t: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// The output rule of the API: bytes that parse as JSON become that value, anything
/// else a (lossy) UTF-8 string; no bytes at all is `null`.
pub fn output_value(bytes: &[u8]) -> Option<serde_json::Value> {
    if bytes.is_empty() {
        return None;
    }
    match serde_json::from_slice(bytes) {
        Ok(v) => Some(v),
        Err(_) => Some(serde_json::Value::String(
            String::from_utf8_lossy(bytes).into_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_rule() {
        assert_eq!(output_value(b""), None);
        assert_eq!(
            output_value(b"{\"sum\":3}"),
            Some(serde_json::json!({"sum": 3}))
        );
        assert_eq!(output_value(b"  42\n"), Some(serde_json::json!(42)));
        assert_eq!(output_value(b"hello\n"), Some(serde_json::json!("hello\n")));
        assert_eq!(
            output_value(&[0xff, b'a']),
            Some(serde_json::json!("\u{fffd}a"))
        );
    }

    #[test]
    fn times_have_millis_and_z() {
        let t = DateTime::parse_from_rfc3339("2026-11-27T09:05:48.123456Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(format_time(&t), "2026-11-27T09:05:48.123Z");
    }
}
