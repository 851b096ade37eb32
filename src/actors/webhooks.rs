//! The Deliverer: sends completion webhooks.
//!
//! The store enqueues a delivery in the same statement that records a terminal status
//! (see [`crate::store::deliveries`]) and tells this actor ([`DeliveriesEnqueued`]). The deliverer looks at the queue (a
//! read), starts an attempt for each due delivery while fewer than
//! `webhooks.max_concurrency` are in flight, and records every attempt before the
//! delivery may be picked again. Attempts run as futures of this actor, so a slow
//! receiver occupies one slot for at most `webhooks.timeout_s` and never the engine or
//! the store writer. Durable and at-least-once: what is due is whatever the database
//! says, so after a restart pending deliveries simply become due again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;

use crate::actors::store::{DueDeliveries, GetWorkload, RecordAttempt, StoreActor};
use crate::metrics::Metrics;
use crate::model::{DeliveryAttempt, DeliveryState, WorkloadId};
use crate::store::deliveries::{AttemptRecord, DeliveryQueue, DueDelivery};
use crate::store::StoreError;
use crate::webhooks::backoff::retry_delay;
use crate::webhooks::sender::{AttemptKind, AttemptOutcome, Sender};
use crate::webhooks::WebhooksConfig;

/// Longest sleep between looks at the queue while deliveries are pending (a safety net:
/// wake-ups are normally computed from the next due time or caused by the store).
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Wait before looking again after the queue could not be read.
const RETRY_READ: Duration = Duration::from_secs(1);

/// How an attempt future ended.
enum Ended {
    /// The workload is gone (deleted with its delivery).
    Gone,
    /// The store could not be read; no attempt was made.
    StoreTrouble,
    /// An attempt was made; `recorded` is the store's answer to recording it.
    Attempted {
        record: AttemptRecord,
        state: DeliveryState,
        kind: AttemptKind,
        recorded: Result<Result<bool, StoreError>, MailboxError>,
    },
}

/// New deliveries may be due: look at the queue.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliveriesEnqueued;

/// Where the look at the queue stands. Only one look runs at a time, so a delivery is
/// never started twice from two stale reads.
enum Look {
    /// No read in progress.
    Idle,
    /// A read is in progress; `again`: something changed meanwhile, look once more.
    Reading { again: bool },
}

/// The deliverer actor.
pub struct Deliverer {
    store: Addr<StoreActor>,
    sender: Arc<Sender>,
    metrics: Arc<Metrics>,
    retry_base_ms: u64,
    max_attempts: u32,
    max_concurrency: usize,
    /// Deliveries with an attempt in progress (never more than `max_concurrency`).
    in_flight: HashSet<WorkloadId>,
    look: Look,
    /// The scheduled next look, replaced whenever a new one is scheduled.
    wake: Option<SpawnHandle>,
}

impl Deliverer {
    /// A deliverer for `cfg` (fails if the HTTP client cannot be built).
    pub fn new(
        store: Addr<StoreActor>,
        metrics: Arc<Metrics>,
        cfg: &WebhooksConfig,
    ) -> Result<Self, String> {
        Ok(Self {
            store,
            sender: Arc::new(Sender::new(cfg)?),
            metrics,
            retry_base_ms: cfg.retry_base_ms,
            max_attempts: cfg.max_attempts,
            max_concurrency: cfg.max_concurrency,
            in_flight: HashSet::new(),
            look: Look::Idle,
            wake: None,
        })
    }

    /// Read the queue and start what is due (or note that a look is wanted again).
    fn look(&mut self, ctx: &mut Context<Self>) {
        match &mut self.look {
            Look::Reading { again } => {
                *again = true;
                return;
            }
            Look::Idle => self.look = Look::Reading { again: false },
        }
        let free = self.max_concurrency.saturating_sub(self.in_flight.len());
        let query = DueDeliveries {
            now: Utc::now(),
            limit: free,
            exclude: self.in_flight.iter().copied().collect(),
        };
        self.store
            .send(query)
            .into_actor(self)
            .map(|res, act, ctx| {
                match res.map_err(|_| StoreError::Unavailable).and_then(|r| r) {
                    Ok(queue) => act.start_due(queue, ctx),
                    Err(e) => {
                        log::error!("webhooks: cannot read the delivery queue: {e}");
                        act.sleep(RETRY_READ, ctx);
                    }
                }
                let again = matches!(act.look, Look::Reading { again: true });
                act.look = Look::Idle;
                if again {
                    act.look(ctx);
                }
            })
            .spawn(ctx);
    }

    fn start_due(&mut self, queue: DeliveryQueue, ctx: &mut Context<Self>) {
        self.metrics.webhook_queue_depth.set(queue.pending as i64);
        let full = queue.due.len() >= self.max_concurrency.saturating_sub(self.in_flight.len());
        for due in queue.due {
            self.start_attempt(due, ctx);
        }
        if full {
            // More may be due: the next attempt to end looks again.
            return;
        }
        if let Some(next) = queue.next_due {
            let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            self.sleep(wait.min(MAX_SLEEP), ctx);
        }
    }

    fn sleep(&mut self, wait: Duration, ctx: &mut Context<Self>) {
        if let Some(old) = self.wake.take() {
            ctx.cancel_future(old);
        }
        self.wake = Some(ctx.run_later(wait, |act, ctx| {
            act.wake = None;
            act.look(ctx);
        }));
    }

    fn start_attempt(&mut self, due: DueDelivery, ctx: &mut Context<Self>) {
        if !self.in_flight.insert(due.workload_id) {
            return;
        }
        self.metrics
            .webhook_in_flight
            .set(self.in_flight.len() as i64);
        let id = due.workload_id;
        let number = due.attempts + 1;
        let store = self.store.clone();
        let sender = self.sender.clone();
        let (base, max_attempts) = (self.retry_base_ms, self.max_attempts);
        async move {
            let started_at = Utc::now();
            let workload = match store.send(GetWorkload(id)).await {
                Ok(Ok(w)) => w,
                // Deleted, and its delivery with it (retention): nothing left to send.
                Ok(Err(StoreError::NotFound)) => return Ended::Gone,
                // The store is in trouble: no attempt made, none counted.
                Ok(Err(e)) => {
                    log::error!("webhooks: workload {id}: cannot read it: {e}");
                    return Ended::StoreTrouble;
                }
                Err(e) => {
                    log::error!("webhooks: workload {id}: store unreachable: {e}");
                    return Ended::StoreTrouble;
                }
            };
            let outcome = match (&workload.callback_url, serde_json::to_vec(&workload)) {
                (Some(url), Ok(body)) => sender.attempt(url, &due.delivery_id, body).await,
                (None, _) => AttemptOutcome::refused("the workload has no callback_url"),
                (_, Err(e)) => AttemptOutcome::refused(format!("cannot serialise it: {e}")),
            };
            let finished_at = Utc::now();
            let (state, next_attempt_at) = if outcome.kind == AttemptKind::Success {
                (DeliveryState::Delivered, None)
            } else if number >= max_attempts {
                (DeliveryState::Failed, None)
            } else {
                let wait = retry_delay(base, number, &mut rand::rng());
                match chrono::Duration::from_std(wait)
                    .ok()
                    .and_then(|w| finished_at.checked_add_signed(w))
                {
                    Some(at) => (DeliveryState::Pending, Some(at)),
                    // Unreachable (waits are capped at a day), but never pending forever.
                    None => (DeliveryState::Failed, None),
                }
            };
            let record = AttemptRecord {
                workload_id: id,
                attempt: DeliveryAttempt {
                    attempt: number,
                    started_at,
                    finished_at,
                    status_code: outcome.status_code,
                    error: outcome.error.clone(),
                    next_attempt_at,
                },
            };
            let recorded = store.send(RecordAttempt(record.clone())).await;
            Ended::Attempted {
                record,
                state,
                kind: outcome.kind,
                recorded,
            }
        }
        .into_actor(self)
        .map(move |ended, act, ctx| {
            let hold = match ended {
                Ended::Gone => Duration::ZERO,
                Ended::StoreTrouble => RETRY_READ,
                Ended::Attempted {
                    record,
                    state,
                    kind,
                    recorded,
                } => {
                    if act.attempt_ended(&record, state, kind, recorded) {
                        Duration::ZERO
                    } else {
                        // Not recorded: the delivery is still due and would be sent again
                        // at once; keep its slot a while so a failing store never turns
                        // into a flood of requests to the receiver.
                        Duration::from_millis(act.retry_base_ms).max(RETRY_READ)
                    }
                }
            };
            ctx.run_later(hold, move |act, ctx| {
                act.in_flight.remove(&id);
                act.metrics
                    .webhook_in_flight
                    .set(act.in_flight.len() as i64);
                act.look(ctx);
            });
        })
        .spawn(ctx);
    }

    /// Count and log an attempt that ended; `false` when the store could not record it.
    fn attempt_ended(
        &self,
        record: &AttemptRecord,
        state: DeliveryState,
        kind: AttemptKind,
        recorded: Result<Result<bool, StoreError>, MailboxError>,
    ) -> bool {
        let id = record.workload_id;
        let n = record.attempt.attempt;
        match recorded {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                log::warn!("webhooks: workload {id}: attempt {n} was not recorded (delivery gone or already moved on)");
                return true;
            }
            Ok(Err(e)) => {
                log::error!("webhooks: workload {id}: attempt {n} could not be recorded (it will be repeated): {e}");
                return false;
            }
            Err(e) => {
                log::error!(
                    "webhooks: workload {id}: store unreachable recording attempt {n}: {e}"
                );
                return false;
            }
        }
        self.metrics
            .webhook_attempts
            .with_label_values(&[kind.as_str()])
            .inc();
        let error = record.attempt.error.as_deref().unwrap_or("");
        match state {
            DeliveryState::Delivered => {
                log::info!("webhooks: workload {id}: delivered on attempt {n}");
                self.metrics
                    .webhook_deliveries
                    .with_label_values(&["delivered"])
                    .inc();
            }
            DeliveryState::Failed => {
                log::warn!("webhooks: workload {id}: attempt {n} failed ({error}); no attempts left, delivery failed");
                self.metrics
                    .webhook_deliveries
                    .with_label_values(&["failed"])
                    .inc();
            }
            DeliveryState::Pending => log::info!(
                "webhooks: workload {id}: attempt {n} failed ({error}); next attempt at {}",
                record
                    .attempt
                    .next_attempt_at
                    .as_ref()
                    .map(crate::model::format_time)
                    .unwrap_or_default()
            ),
        }
        true
    }
}

impl Actor for Deliverer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.look(ctx);
    }
}

impl Handler<DeliveriesEnqueued> for Deliverer {
    type Result = ();

    fn handle(&mut self, _: DeliveriesEnqueued, ctx: &mut Self::Context) {
        self.look(ctx);
    }
}
