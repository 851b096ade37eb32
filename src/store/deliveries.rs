//! Webhook deliveries: rows and queries.
//!
//! A delivery row is never inserted from Rust: the `workloads_enqueue_webhook` trigger
//! (migration `2026-11-30-000016_webhooks`) creates it inside the statement that records
//! a terminal status of a workload with a `callback_url`, so the two commit (or fail)
//! together. These functions read the queue, record attempts and list them.

use chrono::{DateTime, Utc};
use diesel::dsl::min;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;

use super::models::{parse, parse_time};
use super::schema::{webhook_attempts, webhook_deliveries, workloads};
use super::StoreError;
use crate::model::{format_time, Deliveries, DeliveryAttempt, DeliveryState, WorkloadId};

/// A delivery as stored.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = webhook_deliveries)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub struct DeliveryRow {
    pub workload_id: String,
    pub delivery_id: String,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
}

/// One attempt as stored.
#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = webhook_attempts)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub struct AttemptRow {
    pub workload_id: String,
    pub attempt: i32,
    pub started_at: String,
    pub finished_at: String,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub next_attempt_at: Option<String>,
}

/// A pending delivery whose next attempt is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    /// The workload (and delivery key).
    pub workload_id: WorkloadId,
    /// The `Vulcan-Delivery` id.
    pub delivery_id: String,
    /// Attempts recorded so far (the next one is `attempts + 1`).
    pub attempts: u32,
}

/// What the deliverer needs from one look at the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryQueue {
    /// Due deliveries, longest-due first, at most the limit asked for.
    pub due: Vec<DueDelivery>,
    /// The earliest due time of the pending deliveries not yet due.
    pub next_due: Option<DateTime<Utc>>,
    /// Every pending delivery (due, waiting for a retry, or in flight).
    pub pending: u64,
}

/// An attempt that ended, and the state it leaves the delivery in.
///
/// Invariant (the caller's): `state` is `Pending` exactly when
/// `attempt.next_attempt_at` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// Which delivery.
    pub workload_id: WorkloadId,
    /// The attempt as it ended.
    pub attempt: DeliveryAttempt,
    /// The delivery's state after it.
    pub state: DeliveryState,
}

impl TryFrom<AttemptRow> for DeliveryAttempt {
    type Error = StoreError;

    fn try_from(r: AttemptRow) -> Result<Self, Self::Error> {
        let corrupt = |what: &str, v: i32| StoreError::Corrupt(format!("{what} {v}"));
        Ok(DeliveryAttempt {
            attempt: u32::try_from(r.attempt).map_err(|_| corrupt("attempt", r.attempt))?,
            started_at: parse_time(&r.started_at)?,
            finished_at: parse_time(&r.finished_at)?,
            status_code: r
                .status_code
                .map(|c| u16::try_from(c).map_err(|_| corrupt("status_code", c)))
                .transpose()?,
            error: r.error,
            next_attempt_at: r.next_attempt_at.as_deref().map(parse_time).transpose()?,
        })
    }
}

/// Up to `limit` due pending deliveries (not in `exclude`: those in flight), the next
/// due time after `now`, and the number pending.
pub fn due_deliveries(
    conn: &mut SqliteConnection,
    now: DateTime<Utc>,
    limit: usize,
    exclude: &[WorkloadId],
) -> Result<DeliveryQueue, StoreError> {
    let now = format_time(&now);
    let pending = || webhook_deliveries::table.filter(webhook_deliveries::state.eq("pending"));
    let exclude: Vec<String> = exclude.iter().map(WorkloadId::to_string).collect();
    let rows: Vec<(String, String, i32)> = if limit == 0 {
        Vec::new()
    } else {
        pending()
            .filter(webhook_deliveries::next_attempt_at.le(&now))
            .filter(webhook_deliveries::workload_id.ne_all(&exclude))
            .order(webhook_deliveries::next_attempt_at.asc())
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .select((
                webhook_deliveries::workload_id,
                webhook_deliveries::delivery_id,
                webhook_deliveries::attempts,
            ))
            .load(conn)?
    };
    let due = rows
        .into_iter()
        .map(|(id, delivery_id, attempts)| {
            Ok(DueDelivery {
                workload_id: parse("id", &id)?,
                delivery_id,
                attempts: u32::try_from(attempts)
                    .map_err(|_| StoreError::Corrupt(format!("attempts {attempts}")))?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let next_due: Option<String> = pending()
        .filter(webhook_deliveries::next_attempt_at.gt(&now))
        .select(min(webhook_deliveries::next_attempt_at))
        .first(conn)?;
    let count: i64 = pending().count().get_result(conn)?;
    Ok(DeliveryQueue {
        due,
        next_due: next_due.as_deref().map(parse_time).transpose()?,
        pending: count.max(0) as u64,
    })
}

/// Record an attempt and move the delivery on, in one savepoint. Only the attempt the
/// delivery is waiting for is recorded (`attempts + 1` of a pending delivery); anything
/// else (already recorded, settled, or the workload deleted) writes nothing and answers
/// `false`.
pub fn record_attempt(
    conn: &mut SqliteConnection,
    rec: &AttemptRecord,
) -> Result<bool, StoreError> {
    let id = rec.workload_id.to_string();
    let a = &rec.attempt;
    let number = i32::try_from(a.attempt)
        .map_err(|_| StoreError::Corrupt(format!("attempt {}", a.attempt)))?;
    let next = a.next_attempt_at.as_ref().map(format_time);
    conn.transaction(|c| {
        let moved = diesel::update(
            webhook_deliveries::table
                .find(&id)
                .filter(webhook_deliveries::state.eq("pending"))
                .filter(webhook_deliveries::attempts.eq(number - 1)),
        )
        .set((
            webhook_deliveries::state.eq(rec.state.as_str()),
            webhook_deliveries::attempts.eq(number),
            webhook_deliveries::next_attempt_at.eq(&next),
        ))
        .execute(c)?;
        if moved == 0 {
            return Ok(false);
        }
        diesel::insert_into(webhook_attempts::table)
            .values(AttemptRow {
                workload_id: id.clone(),
                attempt: number,
                started_at: format_time(&a.started_at),
                finished_at: format_time(&a.finished_at),
                status_code: a.status_code.map(i32::from),
                error: a.error.clone(),
                next_attempt_at: next.clone(),
            })
            .execute(c)?;
        Ok(true)
    })
}

/// The webhook picture of a workload (one read snapshot).
pub fn deliveries(conn: &mut SqliteConnection, id: WorkloadId) -> Result<Deliveries, StoreError> {
    let key = id.to_string();
    conn.transaction(|c| {
        let callback_url: Option<String> = workloads::table
            .find(&key)
            .select(workloads::callback_url)
            .first(c)
            .optional()?
            .ok_or(StoreError::NotFound)?;
        let delivery: Option<DeliveryRow> = webhook_deliveries::table
            .find(&key)
            .select(DeliveryRow::as_select())
            .first(c)
            .optional()?;
        let attempts = webhook_attempts::table
            .filter(webhook_attempts::workload_id.eq(&key))
            .order(webhook_attempts::attempt.asc())
            .select(AttemptRow::as_select())
            .load(c)?
            .into_iter()
            .map(DeliveryAttempt::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let (delivery_id, state, next_attempt_at) = match delivery {
            Some(d) => (
                Some(d.delivery_id),
                Some(parse::<DeliveryState>("delivery state", &d.state)?),
                d.next_attempt_at.as_deref().map(parse_time).transpose()?,
            ),
            None => (None, None, None),
        };
        Ok(Deliveries {
            workload_id: id,
            callback_url,
            delivery_id,
            state,
            next_attempt_at,
            attempts,
        })
    })
}
