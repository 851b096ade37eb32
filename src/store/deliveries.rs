//! Webhook deliveries: the queue and the attempts.
//!
//! The queue is the `workloads.delivery_due_at` column and its partial index (migration
//! `2026-11-30-000016_webhooks`): [`super::queries::apply_change`] sets it in the very
//! statement that records a terminal status of a workload with a `callback_url`, so the
//! status and its delivery commit (or fail) together, and workloads without one pay
//! nothing. These functions read the due deliveries, record attempts (moving the due
//! time, or clearing it once the delivery is settled) and list them.

use std::collections::HashMap;

use super::DbConnection;
use chrono::{DateTime, Utc};
use diesel::dsl::{count_star, min};
use diesel::prelude::*;

use super::models::{parse, parse_time};
use super::schema::{webhook_attempts, workloads};
use super::StoreError;
use crate::model::{format_time, Deliveries, DeliveryAttempt, DeliveryState, WorkloadId};

/// One attempt as stored.
#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = webhook_attempts)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
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
    /// The workload.
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

/// An attempt that ended. Invariant (the caller's): `next_attempt_at` is set exactly
/// when another attempt is to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// Which workload's delivery.
    pub workload_id: WorkloadId,
    /// The attempt as it ended.
    pub attempt: DeliveryAttempt,
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

/// Up to `limit` due deliveries (not in `exclude`: those in flight), the next due time
/// after `now`, and the number pending.
pub fn due_deliveries(
    conn: &mut DbConnection,
    now: DateTime<Utc>,
    limit: usize,
    exclude: &[WorkloadId],
) -> Result<DeliveryQueue, StoreError> {
    let now = format_time(&now);
    let pending = || workloads::table.filter(workloads::delivery_due_at.is_not_null());
    let exclude: Vec<String> = exclude.iter().map(WorkloadId::to_string).collect();
    let rows: Vec<(String, Option<String>)> = if limit == 0 {
        Vec::new()
    } else {
        pending()
            .filter(workloads::delivery_due_at.le(&now))
            .filter(workloads::id.ne_all(&exclude))
            .order(workloads::delivery_due_at.asc())
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .select((workloads::id, workloads::delivery_id))
            .load(conn)?
    };
    let ids: Vec<&String> = rows.iter().map(|(id, _)| id).collect();
    let counts: HashMap<String, i64> = webhook_attempts::table
        .filter(webhook_attempts::workload_id.eq_any(&ids))
        .group_by(webhook_attempts::workload_id)
        .select((webhook_attempts::workload_id, count_star()))
        .load::<(String, i64)>(conn)?
        .into_iter()
        .collect();
    let due = rows
        .iter()
        .map(|(id, delivery_id)| {
            let attempts = counts.get(id).copied().unwrap_or(0);
            Ok(DueDelivery {
                workload_id: parse("id", id)?,
                // Always set with a callback_url; the workload id is unique too, should
                // an edited database lack it.
                delivery_id: delivery_id.clone().unwrap_or_else(|| id.clone()),
                attempts: u32::try_from(attempts)
                    .map_err(|_| StoreError::Corrupt(format!("attempts {attempts}")))?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let next_due: Option<String> = pending()
        .filter(workloads::delivery_due_at.gt(&now))
        .select(min(workloads::delivery_due_at))
        .first(conn)?;
    let count: i64 = pending().count().get_result(conn)?;
    Ok(DeliveryQueue {
        due,
        next_due: next_due.as_deref().map(parse_time).transpose()?,
        pending: count.max(0) as u64,
    })
}

/// Record an attempt and move the delivery on (the next due time, or none once it is
/// settled), in one savepoint. Only the attempt the delivery is waiting for is recorded
/// (number `recorded + 1` of a pending delivery); anything else (already recorded,
/// settled, or the workload deleted) writes nothing and answers `false`.
pub fn record_attempt(conn: &mut DbConnection, rec: &AttemptRecord) -> Result<bool, StoreError> {
    let id = rec.workload_id.to_string();
    let a = &rec.attempt;
    let number = i32::try_from(a.attempt)
        .map_err(|_| StoreError::Corrupt(format!("attempt {}", a.attempt)))?;
    let next = a.next_attempt_at.as_ref().map(format_time);
    conn.transaction(|c| {
        let recorded: i64 = webhook_attempts::table
            .filter(webhook_attempts::workload_id.eq(&id))
            .count()
            .get_result(c)?;
        if recorded != i64::from(number) - 1 {
            return Ok(false);
        }
        let moved = diesel::update(
            workloads::table
                .find(&id)
                .filter(workloads::delivery_due_at.is_not_null()),
        )
        .set(workloads::delivery_due_at.eq(&next))
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

/// Where a delivery stands: pending while an attempt is due; otherwise the last attempt
/// says (no error: delivered; an error and nothing after it: failed); `None` before the
/// workload is terminal or without a `callback_url`.
fn state(due: bool, last: Option<&DeliveryAttempt>) -> Option<DeliveryState> {
    match (due, last) {
        (true, _) => Some(DeliveryState::Pending),
        (false, Some(a)) if a.error.is_none() => Some(DeliveryState::Delivered),
        (false, Some(_)) => Some(DeliveryState::Failed),
        (false, None) => None,
    }
}

/// The webhook picture of a workload (one read snapshot).
pub fn deliveries(conn: &mut DbConnection, id: WorkloadId) -> Result<Deliveries, StoreError> {
    let key = id.to_string();
    conn.transaction(|c| {
        let (callback_url, delivery_id, due): (Option<String>, Option<String>, Option<String>) =
            workloads::table
                .find(&key)
                .select((
                    workloads::callback_url,
                    workloads::delivery_id,
                    workloads::delivery_due_at,
                ))
                .first(c)
                .optional()?
                .ok_or(StoreError::NotFound)?;
        let attempts = webhook_attempts::table
            .filter(webhook_attempts::workload_id.eq(&key))
            .order(webhook_attempts::attempt.asc())
            .select(AttemptRow::as_select())
            .load(c)?
            .into_iter()
            .map(DeliveryAttempt::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Deliveries {
            workload_id: id,
            state: state(due.is_some(), attempts.last()),
            next_attempt_at: due.as_deref().map(parse_time).transpose()?,
            delivery_id: callback_url.as_ref().and(delivery_id),
            callback_url,
            attempts,
        })
    })
}
