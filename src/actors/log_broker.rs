//! The LogBroker: per-workload log topics, sequence numbers, limits, fan-out to live
//! subscribers, and hand-off of every kept line to the store.
//!
//! Ordering guarantee used by SSE: before answering [`Subscribe`], the broker hands every
//! line it has numbered to the store, so a replay read queued behind the answer (see
//! [`crate::actors::store::GetLogs::consistent`]) sees every line below the subscriber's
//! `live_from`, and the live channel carries every line from `live_from` on.
//!
//! Topics: the supervisor opens a workload's topic when it admits it, the workload
//! actor closes it once the terminal status is stored. A subscriber may come earlier,
//! while the workload is recorded but not admitted yet (start-up re-admits a backlog):
//! its subscription opens a *provisional* topic that admission adopts. A provisional
//! topic is removed when its last subscriber leaves, closed by whoever records a
//! terminal status without admitting the workload, and closed by [`CloseProvisional`]
//! when a subscriber finds the workload terminal right after subscribing, so none is
//! left behind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use tokio::sync::mpsc;

use crate::actors::store::{AppendLogs, StoreActor};
use crate::config::LogsConfig;
use crate::metrics::Metrics;
use crate::model::{cap_line, format_time, LogLine, Status, WorkloadId};
use crate::store::models::LogLineRow;

/// What a live subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// A log line.
    Line(LogLine),
    /// The workload reached this terminal status; nothing follows.
    Done {
        /// The final status.
        status: Status,
        /// The seq after the workload's last line (the number of lines kept).
        next_seq: u64,
    },
}

struct Subscriber {
    key: u64,
    tx: mpsc::Sender<LogEvent>,
}

struct Topic {
    next_seq: u64,
    capped: bool,
    /// Opened by admission (false: opened by an early subscriber, see the module docs).
    admitted: bool,
    subscribers: Vec<Subscriber>,
}

impl Topic {
    fn new(admitted: bool) -> Self {
        Self {
            next_seq: 0,
            capped: false,
            admitted,
            subscribers: Vec::new(),
        }
    }
}

/// The log broker actor.
pub struct LogBroker {
    store: Addr<StoreActor>,
    cfg: LogsConfig,
    metrics: Arc<Metrics>,
    topics: HashMap<WorkloadId, Topic>,
    unflushed: Vec<LogLineRow>,
    flush_scheduled: bool,
    next_key: u64,
}

/// Lines are handed to the store at most this long after they were published.
const FLUSH_EVERY: Duration = Duration::from_millis(2);

impl LogBroker {
    /// A broker persisting through `store`.
    pub fn new(store: Addr<StoreActor>, cfg: LogsConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            cfg,
            metrics,
            topics: HashMap::new(),
            unflushed: Vec::new(),
            flush_scheduled: false,
            next_key: 0,
        }
    }

    fn update_gauge(&self) {
        self.metrics.log_topics.set(self.topics.len() as i64);
    }

    /// End `id`'s topic: subscribers get `Done` after every line, then their stream ends.
    fn close(&mut self, id: WorkloadId, status: Status) {
        if let Some(topic) = self.topics.remove(&id) {
            for s in topic.subscribers {
                let _ = s.tx.try_send(LogEvent::Done {
                    status,
                    next_seq: topic.next_seq,
                });
                self.metrics.sse_subscribers.dec();
            }
        }
        self.update_gauge();
    }

    fn flush(&mut self) {
        if !self.unflushed.is_empty() {
            let rows = std::mem::take(&mut self.unflushed);
            self.metrics.log_lines_persisted.inc_by(rows.len() as u64);
            self.store.do_send(AppendLogs(rows));
        }
    }

    /// Apply the per-line cap (the one rule: [`cap_line`]).
    fn cap_line(&self, line: String) -> String {
        let (line, cut) = cap_line(line, self.cfg.max_line_bytes);
        if cut {
            self.metrics.log_lines_truncated.inc();
        }
        line
    }
}

impl Actor for LogBroker {
    type Context = Context<Self>;
}

/// Open a workload's topic (at admission, before anything can print); adopts a
/// provisional topic an early subscriber opened.
#[derive(Message)]
#[rtype(result = "()")]
pub struct OpenTopic(pub WorkloadId);

/// One line printed by a workload. Lines after the topic closed are dropped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    /// Whose line.
    pub id: WorkloadId,
    /// The text.
    pub line: String,
}

/// Close a topic: subscribers get `Done(status)` after every line, then their stream ends.
/// Sent after the terminal status is in the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseTopic {
    /// Which workload.
    pub id: WorkloadId,
    /// Its terminal status.
    pub status: Status,
}

/// Close `id`'s topic only if it is provisional (no admission adopted it): sent by a
/// subscriber that found the workload terminal right after subscribing.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseProvisional {
    /// Which workload.
    pub id: WorkloadId,
    /// Its terminal status.
    pub status: Status,
}

/// Subscribe to a workload's live lines. Send only for a workload found not terminal:
/// without an open topic, a provisional one is opened (see the module docs).
#[derive(Message)]
#[rtype(result = "Subscription")]
pub struct Subscribe(pub WorkloadId);

/// The answer to [`Subscribe`]: lines with `seq >= live_from` arrive on `events`.
pub struct Subscription {
    /// First seq delivered live; everything below is in the store already.
    pub live_from: u64,
    /// The live events (bounded; the broker drops this subscriber if it is full).
    pub events: mpsc::Receiver<LogEvent>,
    /// Identifies the subscription for [`Unsubscribe`].
    pub key: u64,
}

/// A subscriber went away.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    /// Which workload.
    pub id: WorkloadId,
    /// Which subscription.
    pub key: u64,
}

impl Handler<OpenTopic> for LogBroker {
    type Result = ();

    fn handle(&mut self, msg: OpenTopic, _: &mut Self::Context) {
        self.topics
            .entry(msg.0)
            .or_insert_with(|| Topic::new(true))
            .admitted = true;
        self.update_gauge();
    }
}

impl Handler<Publish> for LogBroker {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) {
        let max_lines = self.cfg.max_lines;
        let line = self.cap_line(msg.line);
        let Some(topic) = self.topics.get_mut(&msg.id) else {
            return;
        };
        if topic.capped {
            self.metrics.log_lines_truncated.inc();
            return;
        }
        let text = if topic.next_seq >= max_lines {
            topic.capped = true;
            self.metrics.log_lines_truncated.inc();
            format!("[vulcan: log truncated: only the first {max_lines} lines were kept]")
        } else {
            line
        };
        let entry = LogLine {
            seq: topic.next_seq,
            line: text,
            created_at: Utc::now(),
        };
        topic.next_seq += 1;
        let metrics = &self.metrics;
        topic
            .subscribers
            .retain(|s| match s.tx.try_send(LogEvent::Line(entry.clone())) {
                Ok(()) => true,
                Err(_) => {
                    // Full or gone: disconnect; the client resumes with Last-Event-ID.
                    metrics.log_lines_dropped.inc();
                    metrics.sse_subscribers.dec();
                    false
                }
            });
        self.unflushed.push(LogLineRow {
            workload_id: msg.id.to_string(),
            seq: entry.seq as i64,
            line: entry.line,
            created_at: format_time(&entry.created_at),
        });
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.run_later(FLUSH_EVERY, |act, _| {
                act.flush_scheduled = false;
                act.flush();
            });
        }
    }
}

impl Handler<CloseTopic> for LogBroker {
    type Result = ();

    fn handle(&mut self, msg: CloseTopic, _: &mut Self::Context) {
        self.flush();
        self.close(msg.id, msg.status);
    }
}

impl Handler<CloseProvisional> for LogBroker {
    type Result = ();

    fn handle(&mut self, msg: CloseProvisional, _: &mut Self::Context) {
        if self.topics.get(&msg.id).is_some_and(|t| !t.admitted) {
            self.close(msg.id, msg.status);
        }
    }
}

impl Handler<Subscribe> for LogBroker {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        self.flush();
        let buffer = self.cfg.subscriber_buffer;
        let key = self.next_key;
        self.next_key += 1;
        let topic = self
            .topics
            .entry(msg.0)
            .or_insert_with(|| Topic::new(false));
        let (tx, rx) = mpsc::channel(buffer);
        topic.subscribers.push(Subscriber { key, tx });
        let live_from = topic.next_seq;
        self.metrics.sse_subscribers.inc();
        self.update_gauge();
        MessageResult(Subscription {
            live_from,
            events: rx,
            key,
        })
    }
}

impl Handler<Unsubscribe> for LogBroker {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Self::Context) {
        if let Some(topic) = self.topics.get_mut(&msg.id) {
            let before = topic.subscribers.len();
            topic.subscribers.retain(|s| s.key != msg.key);
            if topic.subscribers.len() < before {
                self.metrics.sse_subscribers.dec();
            }
            // A provisional topic exists only for its subscribers.
            if !topic.admitted && topic.subscribers.is_empty() {
                self.topics.remove(&msg.id);
                self.update_gauge();
            }
        }
    }
}
