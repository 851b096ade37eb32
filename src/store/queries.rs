//! The SQL the store runs, as plain functions over a connection. Writes are only ever
//! called from the StoreActor's writer thread.

use std::collections::BTreeMap;

use super::nodes::Fence;
use super::DbConnection;
use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::dsl::{case_when, count_star};
use diesel::prelude::*;
use serde::Serialize;

use super::counters::Tally;
use super::models::{IdempotencyKeyRow, LogLineRow, NewWorkloadRow, PayloadRow, WorkloadRow};
use super::prepared::Prepared;
use super::schema::{idempotency_keys, log_lines, workloads};
use super::StoreError;
use crate::model::{
    format_time, transition, IdempotencyKey, IdempotencyRecord, Isolation, LogLine, Output,
    Payload, Runtime, Status, Workload, WorkloadId,
};

/// A status change plus the fields that come with it.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    /// The status asked for (validated against the stored one).
    pub to: Status,
    /// When it happened (`started_at` for running, `finished_at` for terminal).
    pub at: DateTime<Utc>,
    /// Terminal only: the result value.
    pub output: Option<Output>,
    /// Terminal only: exit code.
    pub exit_code: Option<i32>,
    /// Terminal only: why it failed or was killed.
    pub error: Option<String>,
    /// Terminal only: execution time.
    pub duration_ms: Option<u64>,
}

impl StatusChange {
    /// A bare change to `to`, now.
    pub fn to(to: Status) -> Self {
        Self {
            to,
            at: Utc::now(),
            output: None,
            exit_code: None,
            error: None,
            duration_ms: None,
        }
    }

    /// With an error message.
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }
}

/// Filters and page of `GET /v1/workloads`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only this status.
    pub status: Option<Status>,
    /// Only this isolation class.
    pub isolation: Option<Isolation>,
    /// Only this runtime.
    pub runtime: Option<Runtime>,
    /// Page size (already validated: 1..=100).
    pub limit: i64,
    /// Rows skipped.
    pub offset: i64,
}

/// Per-backend figures of `GET /v1/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BackendStats {
    /// Workloads routed to the backend.
    pub count: u64,
    /// Mean execution time of those that ran (0 when none).
    pub avg_duration_ms: f64,
    /// Median execution time (nearest rank; 0 when none).
    pub p50_ms: u64,
    /// 95th percentile execution time (nearest rank; 0 when none).
    pub p95_ms: u64,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// Every workload recorded.
    pub total: u64,
    /// Count per status; every status is present.
    pub by_status: BTreeMap<String, u64>,
    /// Count per isolation class; every class is present.
    pub by_isolation: BTreeMap<String, u64>,
    /// Mean execution time over all workloads that ran (0 when none).
    pub avg_duration_ms: f64,
    /// Figures per backend that has had work.
    pub by_backend: BTreeMap<String, BackendStats>,
}

/// Workloads found at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Workloads that were running and are now failed.
    pub interrupted: Vec<Workload>,
    /// Pending workloads, oldest first, to re-admit.
    pub pending: Vec<PendingWork>,
}

/// A pending workload found at start-up. Its code, archive and input stay in the
/// database until it is dispatched ([`load_payload`]); only an OCI workload's payload
/// (its image is pulled while it waits) is read at once.
#[derive(Debug)]
pub struct PendingWork {
    /// The record.
    pub workload: Workload,
    /// Bytes of its payload and input, as stored.
    pub payload_bytes: u64,
    /// Payload and input, for OCI workloads only.
    pub payload: Option<(Payload, Vec<u8>)>,
}

/// The error recorded on workloads a restart interrupted.
pub const INTERRUPTED: &str = "interrupted by server restart";

/// `AVG(duration_ms)` as a double (Diesel types AVG as Numeric; PostgreSQL's AVG of a
/// BIGINT is NUMERIC, SQLite's a REAL already).
#[cfg(test)]
fn avg_duration(
) -> diesel::expression::SqlLiteral<diesel::sql_types::Nullable<diesel::sql_types::Double>> {
    diesel::dsl::sql("CAST(AVG(duration_ms) AS DOUBLE PRECISION)")
}

/// The completion webhook of a terminal record, enqueued in the statement that writes
/// the record: due at `at` for a workload with a `callback_url`, NULL (nothing to
/// deliver) otherwise. Every statement that ends a workload sets it.
pub(super) fn webhook_due(
    at: &str,
) -> diesel::dsl::Eq<
    workloads::delivery_due_at,
    diesel::dsl::case_when<
        diesel::dsl::IsNotNull<workloads::callback_url>,
        &str,
        diesel::sql_types::Text,
    >,
> {
    workloads::delivery_due_at.eq(case_when::<_, _, diesel::sql_types::Text>(
        workloads::callback_url.is_not_null(),
        at,
    ))
}

/// Insert a new workload with its payload.
pub fn insert_workload(
    conn: &mut DbConnection,
    w: &Workload,
    payload: &Payload,
    input: &[u8],
) -> Result<(), StoreError> {
    let row = NewWorkloadRow::new(w, payload, input);
    // On the engine's own connection: a hot path, and `MultiConnection` rebuilds the SQL
    // text of every statement it runs.
    per_engine!(conn, |c| diesel::insert_into(workloads::table)
        .values(&row)
        .execute(c)?);
    Ok(())
}

/// What [`insert_keyed_workload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyedInsert {
    /// The workload and its key were recorded.
    Inserted,
    /// The key was already remembered (and not expired): nothing was written.
    Existing(IdempotencyRecord),
}

/// Record a workload together with the `Idempotency-Key` that created it, unless the
/// key is remembered already (then nothing is written and the earlier record is
/// returned). A remembered key older than `not_before` is forgotten first.
///
/// Atomic (one savepoint) and, since only the store's single writer calls it, free of
/// races: of two submissions with one key, exactly one inserts.
pub fn insert_keyed_workload(
    conn: &mut DbConnection,
    w: &Workload,
    payload: &Payload,
    input: &[u8],
    key: &IdempotencyKey,
    record: &IdempotencyRecord,
    not_before: DateTime<Utc>,
) -> Result<KeyedInsert, StoreError> {
    conn.transaction(|c| {
        let mine = idempotency_keys::table
            .filter(idempotency_keys::scope.eq(key.scope()))
            .filter(idempotency_keys::key.eq(key.key()));
        diesel::delete(mine.filter(idempotency_keys::created_at.lt(format_time(&not_before))))
            .execute(c)?;
        if let Some(row) = mine
            .select(IdempotencyKeyRow::as_select())
            .first(c)
            .optional()?
        {
            return Ok(KeyedInsert::Existing(row.try_into()?));
        }
        insert_workload(c, w, payload, input)?;
        diesel::insert_into(idempotency_keys::table)
            .values(IdempotencyKeyRow::new(key, record, &w.created_at))
            .execute(c)?;
        Ok(KeyedInsert::Inserted)
    })
}

/// The remembered record of `key`, unless it is older than `not_before`.
pub fn find_idempotency_key(
    conn: &mut DbConnection,
    key: &IdempotencyKey,
    not_before: DateTime<Utc>,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    idempotency_keys::table
        .filter(idempotency_keys::scope.eq(key.scope()))
        .filter(idempotency_keys::key.eq(key.key()))
        .filter(idempotency_keys::created_at.ge(format_time(&not_before)))
        .select(IdempotencyKeyRow::as_select())
        .first(conn)
        .optional()?
        .map(IdempotencyRecord::try_from)
        .transpose()
}

/// Forget every key older than `before`; returns how many.
pub fn sweep_idempotency_keys(
    conn: &mut DbConnection,
    before: DateTime<Utc>,
) -> Result<usize, StoreError> {
    Ok(diesel::delete(
        idempotency_keys::table.filter(idempotency_keys::created_at.lt(format_time(&before))),
    )
    .execute(conn)?)
}

/// The statuses a workload is live in (not terminal).
fn live_statuses() -> Vec<&'static str> {
    Status::ALL
        .into_iter()
        .filter(|s| !s.is_terminal())
        .map(Status::as_str)
        .collect()
}

/// Record that another node of a cluster asked for `id` to be killed: kept on the row
/// (until it ends) so the running node finds it even when it missed the notification.
/// Answers whether the workload is live (a terminal one is left as it is).
pub fn request_kill(
    conn: &mut DbConnection,
    id: WorkloadId,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let marked = diesel::update(
        workloads::table
            .filter(workloads::id.eq(id.to_string()))
            .filter(workloads::status.eq_any(live_statuses())),
    )
    .set(workloads::kill_requested_at.eq(format_time(&at)))
    .execute(conn)?;
    Ok(marked > 0)
}

/// The live workloads recorded with `node` that another node asked to kill.
pub fn kill_requests(conn: &mut DbConnection, node: &str) -> Result<Vec<WorkloadId>, StoreError> {
    let ids: Vec<String> = workloads::table
        .filter(workloads::node_id.eq(node))
        .filter(workloads::kill_requested_at.is_not_null())
        .filter(workloads::status.eq_any(live_statuses()))
        .select(workloads::id)
        .load(conn)?;
    ids.into_iter()
        .map(|id| {
            id.parse()
                .map_err(|_| StoreError::Corrupt(format!("id {id:?}")))
        })
        .collect()
}

/// A write that touches the database header and nothing else: it commits only when
/// the database can really be written (used to find out that a full disk has room
/// again). On PostgreSQL, a round trip on the (reopened) connection: the server's own
/// disk is its business; what the writer can find out is that it is reachable again.
pub fn probe_write(conn: &mut DbConnection) -> Result<(), StoreError> {
    #[derive(QueryableByName)]
    struct Version {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        user_version: i32,
    }
    let DbConnection::Sqlite(conn) = conn else {
        diesel::sql_query("SELECT 1").execute(conn)?;
        return Ok(());
    };
    let v: Version = diesel::sql_query("PRAGMA user_version").get_result(conn)?;
    diesel::sql_query(format!("PRAGMA user_version = {}", v.user_version)).execute(conn)?;
    Ok(())
}

/// The write-ahead log after a `PRAGMA wal_checkpoint` (SQLite's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct WalState {
    /// 1 when the checkpoint could not run at all (another one held the lock).
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub busy: i32,
    /// Frames in the log (-1: not in WAL mode).
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub log: i32,
    /// Frames of it copied into the database file.
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub checkpointed: i32,
}

/// Copy what it can of the write-ahead log into the database file without waiting for
/// readers or the writer (`PASSIVE`): safe on any connection at any time. `None` on
/// PostgreSQL (no such log to manage).
pub fn wal_checkpoint(conn: &mut DbConnection) -> Result<Option<WalState>, StoreError> {
    let DbConnection::Sqlite(c) = conn else {
        return Ok(None);
    };
    Ok(Some(
        diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)").get_result(c)?,
    ))
}

/// Stop SQLite from checkpointing on this connection's commits (another thread does,
/// [`wal_checkpoint`]), and truncate the log file back to `wal_max_bytes` whenever it
/// starts over. A no-op on PostgreSQL.
pub fn checkpoint_elsewhere(conn: &mut DbConnection, wal_max_bytes: u64) -> Result<(), StoreError> {
    if let DbConnection::Sqlite(c) = conn {
        c.batch_execute(&format!(
            "PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {wal_max_bytes};"
        ))?;
    }
    Ok(())
}

/// What one [`sweep_step`] deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Workloads deleted (their Idempotency-Keys and webhook attempts cascade).
    pub workloads: usize,
    /// What the statistics knew of each deleted workload.
    pub deleted: Vec<Tally>,
    /// Log lines deleted.
    pub log_lines: usize,
    /// Expired work may remain: run another step.
    pub more: bool,
}

/// Bounds of one [`sweep_step`], so one write never holds the writer long.
#[derive(Debug, Clone, Copy)]
pub struct SweepBatch {
    /// Most workloads considered per step.
    pub workloads: i64,
    /// Most log lines deleted per step.
    pub log_lines: i64,
}

impl SweepBatch {
    /// The bounds the store uses.
    pub const STORE: SweepBatch = SweepBatch {
        workloads: 64,
        log_lines: 5000,
    };
}

/// One small step of retention: of the terminal workloads that finished before
/// `before` (oldest first, at most `batch.workloads`), delete up to `batch.log_lines`
/// log lines, then the workloads whose lines are all gone. Pending and running work
/// has no `finished_at` and is never touched.
pub fn sweep_step(
    conn: &mut DbConnection,
    before: DateTime<Utc>,
    batch: SweepBatch,
) -> Result<Swept, StoreError> {
    let terminal: Vec<&str> = Status::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(Status::as_str)
        .collect();
    let ids: Vec<String> = workloads::table
        .filter(workloads::finished_at.is_not_null())
        .filter(workloads::finished_at.lt(format_time(&before)))
        .filter(workloads::status.eq_any(terminal))
        .order(workloads::finished_at.asc())
        .limit(batch.workloads)
        .select(workloads::id)
        .load(conn)?;
    let mut out = Swept {
        more: ids.len() as i64 == batch.workloads,
        ..Swept::default()
    };
    let mut budget = batch.log_lines;
    let mut done: Vec<&str> = Vec::with_capacity(ids.len());
    for id in &ids {
        if budget <= 0 {
            out.more = true;
            break;
        }
        let mine = log_lines::table.filter(log_lines::workload_id.eq(id));
        // The `budget`-th line from the start, if the log is longer than the budget.
        let cutoff: Option<i64> = mine
            .order(log_lines::seq.asc())
            .offset(budget)
            .select(log_lines::seq)
            .first(conn)
            .optional()?;
        let n = match cutoff {
            Some(c) => diesel::delete(mine.filter(log_lines::seq.lt(c))).execute(conn)?,
            None => diesel::delete(mine).execute(conn)?,
        };
        out.log_lines += n;
        budget -= n as i64;
        if cutoff.is_some() {
            out.more = true;
            break;
        }
        done.push(id);
    }
    let deleted: Vec<(String, String, String, Option<i64>)> =
        diesel::delete(workloads::table.filter(workloads::id.eq_any(&done)))
            .returning((
                workloads::status,
                workloads::isolation,
                workloads::backend,
                workloads::duration_ms,
            ))
            .get_results(conn)?;
    out.workloads = deleted.len();
    out.deleted = deleted.into_iter().map(tally).collect();
    Ok(out)
}

/// Return up to `pages` free pages to the file system (a no-op on a database
/// without incremental auto-vacuum). A no-op on PostgreSQL: its autovacuum marks the
/// deleted rows' space free for reuse, and a VACUUM cannot run inside the writer's
/// transaction.
pub fn incremental_vacuum(conn: &mut DbConnection, pages: u32) -> Result<(), StoreError> {
    if let DbConnection::Sqlite(c) = conn {
        c.batch_execute(&format!("PRAGMA incremental_vacuum({pages});"))?;
    }
    Ok(())
}

/// One workload.
pub fn get_workload(conn: &mut DbConnection, id: WorkloadId) -> Result<Workload, StoreError> {
    let key = id.to_string();
    // On the engine's own connection: the most frequent read (clients poll it).
    per_engine!(conn, |c| workloads::table
        .find(&key)
        .select(WorkloadRow::as_select())
        .first(c)
        .optional()?)
    .ok_or(StoreError::NotFound)?
    .try_into()
}

/// Validate `change` against the stored status with the state machine and apply it.
/// An invalid transition writes nothing. A terminal status of a workload with a
/// `callback_url` enqueues its webhook delivery (`delivery_due_at`) in the same
/// statement.
///
/// One statement in the common case: the update only matches rows whose status the
/// transition function allows `change.to` from, and returns the new row. When nothing
/// matched, a read tells "unknown id" from "invalid transition".
pub fn apply_change(
    conn: &mut DbConnection,
    id: WorkloadId,
    change: &StatusChange,
) -> Result<Workload, StoreError> {
    apply_fenced_change(conn, id, change, None)
}

/// [`apply_change`], and with a `fence` (a cluster node's writes) only to a workload
/// that node claimed under its current generation, or, for a kill, to pending work no
/// node claimed yet; otherwise nothing is written and the answer is
/// [`StoreError::Fenced`].
pub fn apply_fenced_change(
    conn: &mut DbConnection,
    id: WorkloadId,
    change: &StatusChange,
    fence: Option<&Fence>,
) -> Result<Workload, StoreError> {
    let key = id.to_string();
    let to = change.to;
    let allowed_from: Vec<&str> = Status::ALL
        .into_iter()
        .filter(|from| transition(*from, to).is_ok())
        .map(Status::as_str)
        .collect();
    let at = format_time(&change.at);
    let target = workloads::table
        .find(&key)
        .filter(workloads::status.eq_any(allowed_from));
    // Written once for both targets (with and without the fence's guard). Kept
    // prepared: one SQL shape per target status and fence (see `Prepared`).
    macro_rules! update {
        ($target:expr) => {
            if to == Status::Running {
                per_engine!(&mut *conn, |c| Prepared(
                    diesel::update($target)
                        .set((
                            workloads::status.eq(to.as_str()),
                            workloads::started_at.eq(&at),
                        ))
                        .returning(WorkloadRow::as_returning())
                )
                .get_result(c)
                .optional()?)
            } else {
                let output = change.output.as_ref().map(Output::as_str);
                per_engine!(&mut *conn, |c| Prepared(
                    diesel::update($target)
                        .set((
                            workloads::status.eq(to.as_str()),
                            workloads::finished_at.eq(&at),
                            workloads::output.eq(output),
                            workloads::exit_code.eq(change.exit_code),
                            workloads::error.eq(&change.error),
                            workloads::duration_ms.eq(change.duration_ms.map(|d| d as i64)),
                            webhook_due(&at),
                        ))
                        .returning(WorkloadRow::as_returning())
                )
                .get_result(c)
                .optional()?)
            }
        };
    }
    let updated = match fence {
        None => update!(target),
        Some(f) => update!(target.filter(f.guard(to))),
    };
    if let Some(row) = updated {
        return row.try_into();
    }
    refused(conn, &key, to, fence)
}

/// Why a guarded update matched nothing: an unknown id, a transition the state machine
/// refuses, or (the only one left) the fence.
fn refused(
    conn: &mut DbConnection,
    key: &str,
    to: Status,
    fence: Option<&Fence>,
) -> Result<Workload, StoreError> {
    let current: String = workloads::table
        .find(key)
        .select(workloads::status)
        .first(conn)
        .optional()?
        .ok_or(StoreError::NotFound)?;
    let from: Status = current
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("status {current:?}")))?;
    transition(from, to)?;
    if fence.is_some() {
        return Err(StoreError::Fenced);
    }
    Err(StoreError::Corrupt(format!(
        "{from} -> {to} is allowed but the update matched nothing"
    )))
}

/// The running and the terminal change of one workload in one statement, for a run
/// that ended before its running write was committed: `started_at` from `running`, the
/// rest as [`apply_change`] writes it for `end`. Matches only rows from which the state
/// machine allows both moves in turn (the same guard as two updates); `None` when none
/// matched (the caller then applies the two changes one by one, for their exact
/// errors).
pub fn apply_start_and_end(
    conn: &mut DbConnection,
    id: WorkloadId,
    running: &StatusChange,
    end: &StatusChange,
) -> Result<Option<Workload>, StoreError> {
    let allowed_from: Vec<&str> = Status::ALL
        .into_iter()
        .filter(|from| {
            transition(*from, Status::Running)
                .and_then(|r| transition(r, end.to))
                .is_ok()
        })
        .map(Status::as_str)
        .collect();
    if running.to != Status::Running || allowed_from.is_empty() {
        return Ok(None);
    }
    let at = format_time(&end.at);
    let output = end.output.as_ref().map(Output::as_str);
    let key = id.to_string();
    let target = workloads::table
        .find(&key)
        .filter(workloads::status.eq_any(allowed_from));
    let row = per_engine!(&mut *conn, |c| Prepared(
        diesel::update(target)
            .set((
                workloads::status.eq(end.to.as_str()),
                workloads::started_at.eq(format_time(&running.at)),
                workloads::finished_at.eq(&at),
                workloads::output.eq(output),
                workloads::exit_code.eq(end.exit_code),
                workloads::error.eq(&end.error),
                workloads::duration_ms.eq(end.duration_ms.map(|d| d as i64)),
                webhook_due(&at),
            ))
            .returning(WorkloadRow::as_returning())
    )
    .get_result(c)
    .optional()?);
    row.map(Workload::try_from).transpose()
}

/// Append log lines, each with its workload (their `seq` is assigned by the log
/// broker); a line whose `(workload, seq)` is stored already is kept as it is.
pub fn append_logs(
    conn: &mut DbConnection,
    lines: &[(WorkloadId, LogLine)],
) -> Result<(), StoreError> {
    let rows: Vec<LogLineRow> = lines
        .iter()
        .map(|(id, l)| LogLineRow::new(*id, l))
        .collect();
    // SQLite limits bound parameters per statement (PostgreSQL to 65535); 4 per row.
    for chunk in rows.chunks(4000) {
        match conn {
            DbConnection::Sqlite(c) => diesel::insert_or_ignore_into(log_lines::table)
                .values(chunk)
                .execute(c)?,
            DbConnection::Pg(c) => diesel::insert_into(log_lines::table)
                .values(chunk)
                .on_conflict_do_nothing()
                .execute(c)?,
        };
    }
    Ok(())
}

/// Lines of a workload in `seq` order: all, or those after `after` and below
/// `before`, at most `limit`.
pub fn log_lines(
    conn: &mut DbConnection,
    id: WorkloadId,
    after: Option<i64>,
    before: Option<i64>,
    limit: Option<i64>,
) -> Result<Vec<LogLine>, StoreError> {
    let mut q = log_lines::table
        .filter(log_lines::workload_id.eq(id.to_string()))
        .order(log_lines::seq.asc())
        .select(LogLineRow::as_select())
        .into_boxed();
    if let Some(after) = after {
        q = q.filter(log_lines::seq.gt(after));
    }
    if let Some(before) = before {
        q = q.filter(log_lines::seq.lt(before));
    }
    if let Some(limit) = limit {
        q = q.limit(limit);
    }
    q.load(conn)?.into_iter().map(LogLine::try_from).collect()
}

/// One page of a workload's lines in `seq` order, after `after` and below `before`:
/// at most `limit` lines, and no more lines once their text reaches `max_bytes` (the
/// page holds at least one line). Answers the lines and whether the page is full
/// (more may follow).
pub fn log_page(
    conn: &mut DbConnection,
    id: WorkloadId,
    mut after: Option<i64>,
    before: Option<i64>,
    limit: i64,
    max_bytes: usize,
) -> Result<(Vec<LogLine>, bool), StoreError> {
    // Read in chunks, so a page of long lines stops early instead of loading `limit`.
    const CHUNK: i64 = 256;
    let mut out: Vec<LogLine> = Vec::new();
    let mut bytes = 0usize;
    loop {
        let want = (limit - out.len() as i64).min(CHUNK);
        if want <= 0 {
            return Ok((out, true));
        }
        let chunk = log_lines(conn, id, after, before, Some(want))?;
        let short = (chunk.len() as i64) < want;
        for line in chunk {
            bytes += line.line.len();
            after = Some(line.seq as i64);
            out.push(line);
            if bytes >= max_bytes {
                return Ok((out, true));
            }
        }
        if short {
            return Ok((out, false));
        }
    }
}

/// A page of workloads, newest first, and the total matching the filters.
pub fn list_workloads(
    conn: &mut DbConnection,
    q: &ListQuery,
) -> Result<(Vec<Workload>, u64), StoreError> {
    let filtered = || {
        let mut b = workloads::table.into_boxed();
        if let Some(s) = q.status {
            b = b.filter(workloads::status.eq(s.as_str()));
        }
        if let Some(i) = q.isolation {
            b = b.filter(workloads::isolation.eq(i.as_str()));
        }
        if let Some(r) = q.runtime {
            b = b.filter(workloads::runtime.eq(r.as_str()));
        }
        b
    };
    let total: i64 = filtered().count().get_result(conn)?;
    let rows = filtered()
        .order((workloads::created_at.desc(), workloads::id.desc()))
        .limit(q.limit)
        .offset(q.offset)
        .select(WorkloadRow::as_select())
        .load(conn)?;
    let list = rows
        .into_iter()
        .map(Workload::try_from)
        .collect::<Result<_, _>>()?;
    Ok((list, total.max(0) as u64))
}

fn tally(
    (status, isolation, backend, duration_ms): (String, String, String, Option<i64>),
) -> Tally {
    Tally {
        status,
        isolation,
        backend,
        duration_ms: duration_ms.map(|d| d.max(0) as u64),
    }
}

/// The rows of the table grouped by everything the statistics count, with their
/// number: one scan, run once when the store opens to seed its counters.
pub fn stat_groups(conn: &mut DbConnection) -> Result<Vec<(Tally, u64)>, StoreError> {
    let groups: Vec<(String, String, String, Option<i64>, i64)> = workloads::table
        .group_by((
            workloads::status,
            workloads::isolation,
            workloads::backend,
            workloads::duration_ms,
        ))
        .select((
            workloads::status,
            workloads::isolation,
            workloads::backend,
            workloads::duration_ms,
            count_star(),
        ))
        .load(conn)?;
    Ok(groups
        .into_iter()
        .map(|(s, i, b, d, n)| (tally((s, i, b, d)), n.max(0) as u64))
        .collect())
}

/// The status a workload left by its latest change to `w.status`, read off the row
/// (the state machine's edges): a terminal workload that has a `started_at` was
/// running, one without was still pending.
pub fn moved_from(w: &Workload) -> Status {
    match w.status {
        Status::Pending | Status::Running => Status::Pending,
        Status::Completed => Status::Running,
        Status::Failed | Status::Killed if w.started_at.is_some() => Status::Running,
        Status::Failed | Status::Killed => Status::Pending,
    }
}

/// Aggregate statistics by scanning the table (the server answers from counters
/// seeded by [`stat_groups`]; this is the reference they are tested against).
#[cfg(test)]
pub fn stats(conn: &mut DbConnection) -> Result<Stats, StoreError> {
    let mut s = Stats::default();
    for st in Status::ALL {
        s.by_status.insert(st.as_str().into(), 0);
    }
    for i in Isolation::ALL {
        s.by_isolation.insert(i.as_str().into(), 0);
    }
    let by_status: Vec<(String, i64)> = workloads::table
        .group_by(workloads::status)
        .select((workloads::status, count_star()))
        .load(conn)?;
    for (k, n) in by_status {
        s.total += n as u64;
        s.by_status.insert(k, n as u64);
    }
    let by_isolation: Vec<(String, i64)> = workloads::table
        .group_by(workloads::isolation)
        .select((workloads::isolation, count_star()))
        .load(conn)?;
    for (k, n) in by_isolation {
        s.by_isolation.insert(k, n as u64);
    }
    let avg: Option<f64> = workloads::table.select(avg_duration()).first(conn)?;
    s.avg_duration_ms = avg.unwrap_or(0.0);

    let per_backend: Vec<(String, i64)> = workloads::table
        .group_by(workloads::backend)
        .select((workloads::backend, count_star()))
        .load(conn)?;
    for (backend, count) in per_backend {
        let timed = workloads::table
            .filter(workloads::backend.eq(&backend))
            .filter(workloads::duration_ms.is_not_null());
        let n: i64 = timed.count().get_result(conn)?;
        let avg: Option<f64> = timed.select(avg_duration()).first(conn)?;
        let mut rank = |p: f64| -> Result<u64, StoreError> {
            if n == 0 {
                return Ok(0);
            }
            let idx = ((p * n as f64).ceil() as i64 - 1).clamp(0, n - 1);
            let v: Option<i64> = timed
                .order(workloads::duration_ms.asc())
                .select(workloads::duration_ms)
                .offset(idx)
                .first(conn)?;
            Ok(v.unwrap_or(0).max(0) as u64)
        };
        let entry = BackendStats {
            count: count as u64,
            avg_duration_ms: avg.unwrap_or(0.0),
            p50_ms: rank(0.50)?,
            p95_ms: rank(0.95)?,
        };
        s.by_backend.insert(backend, entry);
    }
    Ok(s)
}

/// Start-up recovery: running workloads become failed ("interrupted by server
/// restart"), through the state machine; pending ones are returned oldest first.
/// `only_node`: on a database shared by the nodes of a cluster, only the workloads
/// recorded with that `node_id` (the others are their own nodes' business).
pub fn recover(conn: &mut DbConnection, only_node: Option<&str>) -> Result<Recovered, StoreError> {
    conn.transaction(|conn| recover_inner(conn, only_node))
}

fn recover_inner(
    conn: &mut DbConnection,
    only_node: Option<&str>,
) -> Result<Recovered, StoreError> {
    let mut out = Recovered::default();
    let mut running = workloads::table
        .filter(workloads::status.eq(Status::Running.as_str()))
        .select(workloads::id)
        .into_boxed();
    if let Some(node) = only_node {
        running = running.filter(workloads::node_id.eq(node));
    }
    let running: Vec<String> = running.load(conn)?;
    for id in running {
        let id: WorkloadId = id
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("id {id:?}")))?;
        let change = StatusChange::to(Status::Failed).with_error(INTERRUPTED);
        out.interrupted.push(apply_change(conn, id, &change)?);
    }
    let mut pending = workloads::table
        .filter(workloads::status.eq(Status::Pending.as_str()))
        .order((workloads::created_at.asc(), workloads::id.asc()))
        .select((WorkloadRow::as_select(), payload_bytes(conn.is_pg())))
        .into_boxed();
    if let Some(node) = only_node {
        pending = pending.filter(workloads::node_id.eq(node));
    }
    let pending: Vec<(WorkloadRow, i64)> = pending.load(conn)?;
    for (row, bytes) in pending {
        let workload = Workload::try_from(row)?;
        let payload = if workload.runtime == Runtime::Oci {
            Some(load_payload(conn, workload.id)?)
        } else {
            None
        };
        out.pending.push(PendingWork {
            workload,
            payload_bytes: bytes.max(0) as u64,
            payload,
        });
    }
    Ok(out)
}

/// The stored size of a workload's payload and input, in bytes (SQLite: `length` of
/// text counts characters, of a blob bytes; PostgreSQL: `octet_length`, an INTEGER).
pub(super) fn payload_bytes(pg: bool) -> diesel::expression::SqlLiteral<diesel::sql_types::BigInt> {
    diesel::dsl::sql(if pg {
        "CAST(COALESCE(octet_length(code), 0) + COALESCE(octet_length(code_archive), 0) \
         + octet_length(input) + COALESCE(octet_length(image), 0) \
         + COALESCE(octet_length(command), 0) AS BIGINT)"
    } else {
        "COALESCE(length(CAST(code AS BLOB)), 0) + COALESCE(length(code_archive), 0) \
         + length(input) + COALESCE(length(CAST(image AS BLOB)), 0) \
         + COALESCE(length(CAST(command AS BLOB)), 0)"
    })
}

/// The payload and input of a workload (read when a recovered workload is dispatched).
pub fn load_payload(
    conn: &mut DbConnection,
    id: WorkloadId,
) -> Result<(Payload, Vec<u8>), StoreError> {
    workloads::table
        .find(id.to_string())
        .select(PayloadRow::as_select())
        .first(conn)
        .optional()?
        .ok_or(StoreError::NotFound)?
        .into_payload()
}
