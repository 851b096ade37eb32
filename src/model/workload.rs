use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

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
    // Any JSON value or null (a `oneOf` of null and "any" would match null twice).
    #[schema(value_type = Option<serde_json::Value>)]
    pub output: Option<Output>,
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

/// The per-line cap of the log pipeline (`logs.max_line_bytes`): a line longer than
/// `max` bytes keeps its first `max` bytes (cut on a character boundary) followed by
/// ` [vulcan: line truncated, K of N bytes kept]`. Returns the line and whether it was
/// cut.
///
/// Idempotent: a line this function produced passes through it again unchanged, so a
/// worker process can cut at the source (bounding what it sends) and the log broker
/// apply the same rule again without a second marker.
pub fn cap_line(mut line: String, max: usize) -> (String, bool) {
    if line.len() <= max || is_capped(&line, max) {
        return (line, false);
    }
    let total = line.len();
    let mut cut = max;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    line.truncate(cut);
    line.push_str(&format!("{TRUNCATED_PREFIX}{cut} of {total} bytes kept]"));
    (line, true)
}

const TRUNCATED_PREFIX: &str = " [vulcan: line truncated, ";

/// Whether `line` is exactly what [`cap_line`] makes of a longer line for this `max`.
fn is_capped(line: &str, max: usize) -> bool {
    let Some(body) = line.strip_suffix(" bytes kept]") else {
        return false;
    };
    let Some(at) = body.rfind(TRUNCATED_PREFIX) else {
        return false;
    };
    let Some((kept, total)) = body[at + TRUNCATED_PREFIX.len()..].split_once(" of ") else {
        return false;
    };
    match (kept.parse::<usize>(), total.parse::<usize>()) {
        (Ok(kept), Ok(total)) => kept == at && kept <= max && total > max,
        _ => false,
    }
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

/// A workload's result as JSON text: validated once when it is made, then stored and
/// served verbatim (a read never rebuilds it as a tree).
///
/// Invariant: the text is one valid JSON value.
#[derive(Debug, Clone)]
pub struct Output(Box<RawValue>);

impl Output {
    /// Text read back from the store (validated, not rebuilt).
    pub fn from_stored(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(Self)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.as_str().len()
    }

    /// The value as a tree, for code that inspects it (the CLI); the server never needs it.
    pub fn to_value(&self) -> serde_json::Value {
        // The text is valid JSON by the invariant; a value too deep for serde_json's
        // recursion limit is shown as its text instead.
        serde_json::from_str(self.as_str())
            .unwrap_or_else(|_| serde_json::Value::String(self.as_str().to_string()))
    }

    /// Never true (a JSON value has at least one character); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.as_str().is_empty()
    }
}

impl PartialEq for Output {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Serialize for Output {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// The client's reading (`vulcan::client`): the text as the server sent it. Works with
/// serde_json's text deserializers, which is how every answer is read.
impl<'de> Deserialize<'de> for Output {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(Self)
    }
}

/// The output rule of the API: bytes that parse as JSON become that value (kept as
/// its text), anything else a (lossy) UTF-8 string; no bytes at all is `null`.
pub fn output_value(bytes: &[u8]) -> Option<Output> {
    if bytes.is_empty() {
        return None;
    }
    if let Ok(raw) = serde_json::from_slice::<Box<RawValue>>(bytes) {
        return Some(Output(raw));
    }
    let text = String::from_utf8_lossy(bytes);
    serde_json::value::to_raw_value(&text).ok().map(Output)
}

/// A pending node workload on `isolate` with the default limits: the one record the
/// crate's unit tests start from.
#[cfg(test)]
pub(crate) fn pending_fixture() -> Workload {
    let id = WorkloadId::new();
    Workload {
        id,
        status: Status::Pending,
        isolation: Isolation::Isolate,
        requested_isolation: IsolationRequest::Auto,
        backend: "isolate".into(),
        runtime: Runtime::Node,
        node_id: "n".into(),
        input_hash: "sha256:00".into(),
        output: None,
        exit_code: None,
        error: None,
        cpu_limit: 1,
        mem_limit: 128,
        timeout_s: 30,
        duration_ms: None,
        created_at: id.created_at(),
        started_at: None,
        finished_at: None,
        callback_url: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(bytes: &[u8]) -> Option<serde_json::Value> {
        output_value(bytes).map(|o| serde_json::from_str(o.as_str()).expect("valid JSON"))
    }

    #[test]
    fn output_rule() {
        assert_eq!(parsed(b""), None);
        assert_eq!(parsed(b"{\"sum\":3}"), Some(serde_json::json!({"sum": 3})));
        assert_eq!(parsed(b"  42\n"), Some(serde_json::json!(42)));
        assert_eq!(parsed(b"hello\n"), Some(serde_json::json!("hello\n")));
        assert_eq!(parsed(&[0xff, b'a']), Some(serde_json::json!("\u{fffd}a")));
        assert_eq!(
            parsed(b"{\"a\": 1} trailing"),
            Some(serde_json::json!("{\"a\": 1} trailing"))
        );
    }

    #[test]
    fn output_is_kept_and_served_as_its_text() {
        let out = output_value(b"{\"b\": 2, \"a\": [1, 2]}").expect("output");
        assert_eq!(out.as_str(), "{\"b\": 2, \"a\": [1, 2]}");
        assert_eq!(
            serde_json::to_string(&out).expect("serialise"),
            "{\"b\": 2, \"a\": [1, 2]}"
        );
        let stored = Output::from_stored(out.as_str().to_owned()).expect("valid");
        assert_eq!(stored, out);
        assert!(Output::from_stored("{not json".into()).is_err());
    }

    #[test]
    fn long_lines_are_cut_once_with_a_marker() {
        let (short, cut) = cap_line("abc".into(), 3);
        assert_eq!((short.as_str(), cut), ("abc", false));
        let (line, cut) = cap_line("é".repeat(20), 16);
        assert!(cut);
        assert_eq!(
            line,
            format!(
                "{} [vulcan: line truncated, 16 of 40 bytes kept]",
                "é".repeat(8)
            )
        );
        let (again, cut) = cap_line(line.clone(), 16);
        assert_eq!((again, cut), (line, false), "a second pass changes nothing");
        // A line that merely looks like a marker is still cut.
        let fake = format!(
            "{} [vulcan: line truncated, 1 of 99 bytes kept]",
            "x".repeat(40)
        );
        assert!(cap_line(fake, 16).1);
    }

    proptest::proptest! {
        #[test]
        fn capping_is_bounded_and_idempotent(line in ".{0,200}", max in 1usize..64) {
            let (once, _) = cap_line(line.clone(), max);
            let (twice, cut_again) = cap_line(once.clone(), max);
            proptest::prop_assert!(!cut_again);
            proptest::prop_assert_eq!(&once, &twice);
            if line.len() <= max {
                proptest::prop_assert_eq!(once, line);
            } else {
                proptest::prop_assert!(once.len() <= max + 64);
                proptest::prop_assert!(line.starts_with(once.split(TRUNCATED_PREFIX).next().unwrap_or("")));
            }
        }
    }

    #[test]
    fn times_have_millis_and_z() {
        let t = DateTime::parse_from_rfc3339("2026-11-27T09:05:48.123456Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(format_time(&t), "2026-11-27T09:05:48.123Z");
    }
}
