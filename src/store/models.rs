//! Row types and their conversion to and from the domain model.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::schema::{idempotency_keys, log_lines, workloads};
use super::StoreError;
use crate::model::{
    format_time, IdempotencyKey, IdempotencyRecord, LogLine, Output, Payload, SubmitKind, Workload,
    WorkloadId,
};

/// A workload as stored, without its payload.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = workloads)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct WorkloadRow {
    pub id: String,
    pub status: String,
    pub isolation: String,
    pub requested_isolation: String,
    pub backend: String,
    pub runtime: String,
    pub node_id: String,
    pub input_hash: String,
    pub output: Option<String>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub cpu_limit: i32,
    pub mem_limit: i32,
    pub timeout_s: i32,
    pub duration_ms: Option<i64>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub callback_url: Option<String>,
}

/// A new workload with its payload.
#[derive(Debug, Insertable)]
#[diesel(table_name = workloads)]
pub struct NewWorkloadRow {
    pub id: String,
    pub status: String,
    pub isolation: String,
    pub requested_isolation: String,
    pub backend: String,
    pub runtime: String,
    pub node_id: String,
    pub input_hash: String,
    pub cpu_limit: i32,
    pub mem_limit: i32,
    pub timeout_s: i32,
    pub created_at: String,
    pub code: Option<String>,
    pub code_archive: Option<Vec<u8>>,
    pub input: Vec<u8>,
    pub image: Option<String>,
    pub command: Option<String>,
    pub callback_url: Option<String>,
    pub delivery_id: Option<String>,
}

/// The stored payload of a workload (for re-admission after a restart).
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = workloads)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct PayloadRow {
    pub code: Option<String>,
    pub code_archive: Option<Vec<u8>>,
    pub input: Vec<u8>,
    pub image: Option<String>,
    pub command: Option<String>,
}

/// One log line row.
#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = log_lines)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct LogLineRow {
    pub workload_id: String,
    pub seq: i64,
    pub line: String,
    pub created_at: String,
}

/// One remembered `Idempotency-Key`.
#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = idempotency_keys)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct IdempotencyKeyRow {
    pub scope: String,
    pub key: String,
    pub fingerprint: String,
    pub workload_id: String,
    pub kind: String,
    pub created_at: String,
}

impl IdempotencyKeyRow {
    /// The row remembering that `key` created `workload` (now).
    pub fn new(key: &IdempotencyKey, record: &IdempotencyRecord, at: &DateTime<Utc>) -> Self {
        Self {
            scope: key.scope().to_string(),
            key: key.key().to_string(),
            fingerprint: record.fingerprint.clone(),
            workload_id: record.workload_id.to_string(),
            kind: record.kind.as_str().to_string(),
            created_at: format_time(at),
        }
    }
}

impl TryFrom<IdempotencyKeyRow> for IdempotencyRecord {
    type Error = StoreError;

    fn try_from(r: IdempotencyKeyRow) -> Result<Self, Self::Error> {
        Ok(IdempotencyRecord {
            fingerprint: r.fingerprint,
            workload_id: parse("workload_id", &r.workload_id)?,
            kind: parse::<SubmitKind>("kind", &r.kind)?,
        })
    }
}

pub(super) fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("{what} {s:?}")))
}

/// Parse a stored time.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| StoreError::Corrupt(format!("time {s:?}")))
}

fn count(what: &str, v: i32) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v}")))
}

impl TryFrom<WorkloadRow> for Workload {
    type Error = StoreError;

    fn try_from(r: WorkloadRow) -> Result<Self, Self::Error> {
        Ok(Workload {
            id: parse("id", &r.id)?,
            status: parse("status", &r.status)?,
            isolation: parse("isolation", &r.isolation)?,
            requested_isolation: parse("requested_isolation", &r.requested_isolation)?,
            backend: r.backend,
            runtime: parse("runtime", &r.runtime)?,
            node_id: r.node_id,
            input_hash: r.input_hash,
            output: r
                .output
                .map(Output::from_stored)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("output: {e}")))?,
            exit_code: r.exit_code,
            error: r.error,
            cpu_limit: count("cpu_limit", r.cpu_limit)?,
            mem_limit: count("mem_limit", r.mem_limit)?,
            timeout_s: count("timeout_s", r.timeout_s)?,
            duration_ms: r.duration_ms.map(|d| d.max(0) as u64),
            created_at: parse_time(&r.created_at)?,
            started_at: r.started_at.as_deref().map(parse_time).transpose()?,
            finished_at: r.finished_at.as_deref().map(parse_time).transpose()?,
            callback_url: r.callback_url,
        })
    }
}

impl NewWorkloadRow {
    /// The row for a freshly accepted workload (with a fresh webhook delivery id when it
    /// has a `callback_url`).
    pub fn new(w: &Workload, payload: &Payload, input: &[u8]) -> Self {
        let (code, code_archive, image, command) = match payload {
            Payload::Code(c) => (Some(c.clone()), None, None, None),
            Payload::Archive(a) => (None, Some(a.clone()), None, None),
            Payload::Image { reference, command } => (
                None,
                None,
                Some(reference.clone()),
                command.as_ref().and_then(|c| serde_json::to_string(c).ok()),
            ),
        };
        Self {
            id: w.id.to_string(),
            status: w.status.as_str().into(),
            isolation: w.isolation.as_str().into(),
            requested_isolation: w.requested_isolation.as_str().into(),
            backend: w.backend.clone(),
            runtime: w.runtime.as_str().into(),
            node_id: w.node_id.clone(),
            input_hash: w.input_hash.clone(),
            cpu_limit: w.cpu_limit as i32,
            mem_limit: w.mem_limit as i32,
            timeout_s: w.timeout_s as i32,
            created_at: format_time(&w.created_at),
            code,
            code_archive,
            input: input.to_vec(),
            image,
            command,
            callback_url: w.callback_url.clone(),
            // Chosen now, so every attempt of the delivery carries the same id.
            delivery_id: w
                .callback_url
                .as_ref()
                .map(|_| ulid::Ulid::new().to_string()),
        }
    }
}

impl PayloadRow {
    /// Back to the domain payload and input bytes.
    pub fn into_payload(self) -> Result<(Payload, Vec<u8>), StoreError> {
        let payload = match (self.code, self.code_archive, self.image) {
            (Some(code), None, None) => Payload::Code(code),
            (None, Some(bytes), None) => Payload::Archive(bytes),
            (None, None, Some(reference)) => Payload::Image {
                reference,
                command: self
                    .command
                    .map(|c| serde_json::from_str(&c))
                    .transpose()
                    .map_err(|e| StoreError::Corrupt(format!("command: {e}")))?,
            },
            _ => return Err(StoreError::Corrupt("payload columns".into())),
        };
        Ok((payload, self.input))
    }
}

impl LogLineRow {
    /// The row of `line` of workload `id`.
    pub fn new(id: WorkloadId, line: &LogLine) -> Self {
        Self {
            workload_id: id.to_string(),
            seq: i64::try_from(line.seq).unwrap_or(i64::MAX),
            line: line.line.clone(),
            created_at: format_time(&line.created_at),
        }
    }
}

impl TryFrom<LogLineRow> for LogLine {
    type Error = StoreError;

    fn try_from(r: LogLineRow) -> Result<Self, Self::Error> {
        Ok(LogLine {
            seq: r.seq.max(0) as u64,
            line: r.line,
            created_at: parse_time(&r.created_at)?,
        })
    }
}
