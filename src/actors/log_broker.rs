//! The LogBroker: per-workload log topics, sequence numbers, fan-out to live
//! subscribers, and hand-off of every kept line to the store; and [`LogSink`]s, the
//! workloads' end of it, which apply the per-log caps.
//!
//! Bounds: a workload's sink counts the lines and bytes it kept (`logs.max_lines`,
//! `logs.max_bytes`); past either one it queues one marker line and drops everything
//! after it right there, without a message. Lines below the caps wait in the sink's own
//! buffer while one batch of them is on its way to the broker, so each workload has at
//! most one message in the broker's mailbox and its buffer never holds more than the
//! caps allow: a flooding guest grows no mailbox.
//!
//! Fan-out: a line is framed once, as the SSE event its subscribers send
//! ([`line_frame`]), and only when the topic has subscribers; every subscriber gets the
//! same [`Bytes`] through the topic's one broadcast channel (a reference count, no copy
//! and no allocation per subscriber). The channel holds the last
//! `logs.subscriber_buffer` events of the topic, whatever the number of subscribers; a
//! subscriber that falls further behind misses events, ends its stream (counted in
//! `log_lines_dropped_total`) and resumes with Last-Event-ID, losing nothing: it never
//! slows the others nor grows memory.
//!
//! Ordering guarantee used by SSE: before answering [`Subscribe`], the broker hands every
//! line it has numbered to the store, so once a write barrier sent after the answer
//! ([`crate::actors::store::Flush`]) resolves, every line below the subscriber's
//! `live_from` is committed and readable by every reader; the live channel carries
//! every line from `live_from` on. Likewise [`Seal`] hands a workload's lines to the
//! store before its terminal status is written, so a terminal record implies a complete
//! log.
//!
//! Supervision: a panic while handling a message is caught and the broker restarts in
//! place: every subscriber is disconnected (it resumes with Last-Event-ID and loses
//! nothing: the lines are in the store), lines numbered so far still go to the store,
//! and each topic keeps its next seq so no number is given twice. An operator can ask
//! for the same ([`RestartBroker`]).
//!
//! Topics: the supervisor opens a workload's topic when it admits it, the workload
//! actor closes it once the terminal status is stored. A subscriber may come earlier,
//! while the workload is recorded but not admitted yet (start-up re-admits a backlog):
//! its subscription opens a *provisional* topic that admission adopts. A provisional
//! topic is removed when its last subscriber leaves, closed by whoever records a
//! terminal status without admitting the workload, and closed by [`CloseProvisional`]
//! when a subscriber finds the workload terminal right after subscribing, so none is
//! left behind.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use chrono::Utc;
use tokio::sync::broadcast;
use tokio_util::codec::Encoder as _;

use crate::actors::store::{AppendLogs, StoreActor};
use crate::actors::Restarts;
use crate::backends::LogSink;
use crate::config::LogsConfig;
use crate::metrics::Metrics;
use crate::model::{cap_line, LogLine, Status, WorkloadId};

/// A log line as the SSE event that carries it, framed once and shared by every
/// subscriber (cloning it is a reference count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The line's seq (the event's id).
    pub seq: u64,
    /// `id: <seq>`, one `data:` field per line of the text, and the blank line.
    pub bytes: Bytes,
}

/// Append the SSE event of line `seq` to `dst`: `id: <seq>` and the text as `data:`
/// fields (a CR or LF in it starts a new field, so a line cannot forge an event).
pub fn encode_line(dst: &mut BytesMut, seq: u64, text: &str) -> Result<(), russe::Error> {
    russe::Encoder::default().encode(
        russe::Event::Message(russe::Message {
            data: text.into(),
            event: None,
            retry: None,
            id: Some(seq.to_string().into()),
        }),
        dst,
    )
}

/// The SSE events of stored `lines`, in order, in one buffer (a replay or follow page).
pub fn encode_lines(lines: &[LogLine]) -> Result<Bytes, russe::Error> {
    let size: usize = lines.iter().map(|l| l.line.len() + 32).sum();
    let mut frames = BytesMut::with_capacity(size);
    for l in lines {
        encode_line(&mut frames, l.seq, &l.line)?;
    }
    Ok(frames.freeze())
}

/// The SSE event of line `seq`, on its own.
pub fn line_frame(seq: u64, text: &str) -> Result<Bytes, russe::Error> {
    let mut dst = BytesMut::with_capacity(text.len() + 32);
    encode_line(&mut dst, seq, text)?;
    Ok(dst.freeze())
}

/// The `done` event: the terminal status as data, the seq after the last line as id (a
/// client resuming from it gets 204).
pub fn done_frame(status: Status, next_seq: u64) -> Result<Bytes, russe::Error> {
    let mut dst = BytesMut::with_capacity(48);
    russe::Encoder::default().encode(
        russe::Event::Message(russe::Message {
            data: status.as_str().into(),
            event: Some("done".into()),
            retry: None,
            id: Some(next_seq.to_string().into()),
        }),
        &mut dst,
    )?;
    Ok(dst.freeze())
}

/// What a live subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// A log line, framed.
    Line(Frame),
    /// The workload reached this terminal status; nothing follows.
    Done {
        /// The final status.
        status: Status,
        /// The seq after the workload's last line (the number of lines kept).
        next_seq: u64,
    },
}

struct Topic {
    next_seq: u64,
    /// Opened by admission (false: opened by an early subscriber, see the module docs).
    admitted: bool,
    /// The live events, while the topic has subscribers (their receivers).
    live: Option<broadcast::Sender<LogEvent>>,
    /// The keys of its subscribers (for the gauge and provisional topics).
    subscribers: HashSet<u64>,
}

impl Topic {
    fn new(admitted: bool) -> Self {
        Self {
            next_seq: 0,
            admitted,
            live: None,
            subscribers: HashSet::new(),
        }
    }

    /// Disconnect every subscriber: each stream ends after the events it has not read
    /// yet; the clients resume with Last-Event-ID. Answers how many there were.
    fn disconnect(&mut self) -> usize {
        self.live = None;
        std::mem::take(&mut self.subscribers).len()
    }
}

/// The log broker actor.
pub struct LogBroker {
    store: Addr<StoreActor>,
    cfg: LogsConfig,
    metrics: Arc<Metrics>,
    topics: HashMap<WorkloadId, Topic>,
    unflushed: Vec<(WorkloadId, LogLine)>,
    flush_scheduled: bool,
    next_key: u64,
    restarts: Arc<Restarts>,
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
            restarts: Arc::default(),
        }
    }

    /// Its restarts and last failure.
    pub fn restarts(&self) -> Arc<Restarts> {
        self.restarts.clone()
    }

    /// Restart in place (see the module docs).
    fn restart(&mut self, why: String) {
        self.restarts.record(why);
        let mut disconnected = 0;
        for topic in self.topics.values_mut() {
            disconnected += topic.disconnect();
        }
        self.metrics.sse_subscribers.sub(disconnected as i64);
        self.topics.retain(|_, t| t.admitted);
        self.flush();
        self.update_gauge();
    }

    /// Run `f`; a panic in it restarts the broker and gives `None`.
    fn guarded<R>(&mut self, what: &str, f: impl FnOnce(&mut Self) -> R) -> Option<R> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(r) => Some(r),
            Err(panic) => {
                let why = format!(
                    "log broker panicked handling {what}: {}",
                    crate::actors::backend::panic_message(panic.as_ref())
                );
                self.restart(why);
                None
            }
        }
    }

    fn update_gauge(&self) {
        self.metrics.log_topics.set(self.topics.len() as i64);
    }

    /// End `id`'s topic: subscribers get `Done` after every line, then their stream ends.
    fn close(&mut self, id: WorkloadId, status: Status) {
        if let Some(mut topic) = self.topics.remove(&id) {
            if let Some(live) = &topic.live {
                // Fails only without receivers left (nobody to tell).
                let _ = live.send(LogEvent::Done {
                    status,
                    next_seq: topic.next_seq,
                });
            }
            let gone = topic.disconnect();
            self.metrics.sse_subscribers.sub(gone as i64);
        }
        self.update_gauge();
    }

    fn flush(&mut self) {
        if !self.unflushed.is_empty() {
            let lines = std::mem::take(&mut self.unflushed);
            self.metrics.log_lines_persisted.inc_by(lines.len() as u64);
            self.store.do_send(AppendLogs(lines));
        }
    }

    /// Number `lines` of `id`, fan them out to live subscribers and queue them for the
    /// store. Lines of a closed (or never opened) topic are dropped.
    fn publish(&mut self, id: WorkloadId, lines: Vec<String>, ctx: &mut Context<Self>) {
        let Some(topic) = self.topics.get_mut(&id) else {
            return;
        };
        for text in lines {
            let seq = topic.next_seq;
            topic.next_seq += 1;
            if let Some(live) = &topic.live {
                // Framed once for every subscriber (see the module docs).
                match line_frame(seq, &text) {
                    Ok(bytes) => {
                        // Fails only without receivers left: their Unsubscribe is coming.
                        let _ = live.send(LogEvent::Line(Frame { seq, bytes }));
                    }
                    Err(e) => {
                        // Not for a u64 id; were it to happen, the subscribers resume
                        // from the store rather than miss the line.
                        log::error!("workload {id}: cannot frame log line {seq}: {e}");
                        let gone = topic.disconnect();
                        self.metrics.sse_subscribers.sub(gone as i64);
                    }
                }
            }
            self.unflushed.push((
                id,
                LogLine {
                    seq,
                    line: text,
                    created_at: Utc::now(),
                },
            ));
        }
        if !self.flush_scheduled && !self.unflushed.is_empty() {
            self.flush_scheduled = true;
            ctx.run_later(FLUSH_EVERY, |act, _| {
                act.flush_scheduled = false;
                act.flush();
            });
        }
    }
}

/// Makes each workload's [`LogSink`] (one per execution) and reaches the broker.
/// Cheap to clone.
#[derive(Clone)]
pub struct LogSinks {
    broker: Addr<LogBroker>,
    cfg: LogsConfig,
    metrics: Arc<Metrics>,
}

impl LogSinks {
    /// Sinks publishing to `broker`, held to the caps of `cfg`.
    pub fn new(broker: Addr<LogBroker>, cfg: LogsConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            broker,
            cfg,
            metrics,
        }
    }

    /// The broker itself.
    pub fn broker(&self) -> &Addr<LogBroker> {
        &self.broker
    }

    /// A sink for workload `id`'s lines, holding them to the caps (see the module docs).
    pub fn sink(&self, id: WorkloadId) -> LogSink {
        let shared = Arc::new(SinkShared {
            id,
            broker: self.broker.clone(),
            metrics: self.metrics.clone(),
            max_line_bytes: self.cfg.max_line_bytes,
            max_lines: self.cfg.max_lines,
            max_bytes: self.cfg.max_bytes,
            capped: AtomicBool::new(false),
            queue: Mutex::new(SinkQueue::default()),
        });
        LogSink::new(move |line| shared.push(line))
    }
}

/// What a workload's sink and the broker share.
struct SinkShared {
    id: WorkloadId,
    broker: Addr<LogBroker>,
    metrics: Arc<Metrics>,
    max_line_bytes: usize,
    max_lines: u64,
    max_bytes: u64,
    /// Set once the marker is queued: every later line is dropped without a lock.
    capped: AtomicBool,
    queue: Mutex<SinkQueue>,
}

/// The sink's counters and the lines not yet handed to the broker.
#[derive(Default)]
struct SinkQueue {
    /// Lines kept so far (the marker not counted).
    lines: u64,
    /// Bytes of the lines kept so far.
    bytes: u64,
    /// Kept, waiting for the batch on its way to be handled.
    buffer: Vec<String>,
    /// A [`Publish`] of this sink is in the broker's mailbox (or being handled).
    in_flight: bool,
}

impl SinkShared {
    fn drop_line(&self) {
        self.metrics.log_lines_truncated.inc();
    }

    fn push(self: &Arc<Self>, line: String) {
        if self.capped.load(Ordering::Relaxed) {
            return self.drop_line();
        }
        let (line, cut) = cap_line(line, self.max_line_bytes);
        if cut {
            self.metrics.log_lines_truncated.inc();
        }
        let Ok(mut q) = self.queue.lock() else {
            return self.drop_line();
        };
        if self.capped.load(Ordering::Relaxed) {
            drop(q);
            return self.drop_line();
        }
        let len = line.len() as u64;
        let marker = if q.lines >= self.max_lines {
            Some(format!(
                "[vulcan: log truncated: only the first {} lines were kept]",
                self.max_lines
            ))
        } else if q.bytes.saturating_add(len) > self.max_bytes {
            Some(format!(
                "[vulcan: log truncated: only the first {} bytes were kept]",
                q.bytes
            ))
        } else {
            None
        };
        match marker {
            Some(m) => {
                self.capped.store(true, Ordering::Relaxed);
                self.drop_line();
                q.buffer.push(m);
            }
            None => {
                q.lines += 1;
                q.bytes += len;
                q.buffer.push(line);
            }
        }
        if !q.in_flight {
            q.in_flight = true;
            let lines = std::mem::take(&mut q.buffer);
            drop(q);
            self.broker.do_send(Publish {
                sink: self.clone(),
                lines,
            });
        }
    }

    /// The batch in flight will not be handled (the broker restarted): the next line
    /// is sent with whatever is buffered.
    fn release(&self) {
        if let Ok(mut q) = self.queue.lock() {
            q.in_flight = false;
        }
    }

    /// The lines queued since the last batch was taken; when there are none, the sink
    /// sends the next line itself.
    fn next_batch(&self) -> Option<Vec<String>> {
        let mut q = self.queue.lock().ok()?;
        if q.buffer.is_empty() {
            q.in_flight = false;
            None
        } else {
            Some(std::mem::take(&mut q.buffer))
        }
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

/// Lines printed by a workload, sent by its [`LogSink`] (at most one such message per
/// sink is in the mailbox). Lines after the topic closed are dropped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    /// The sink they come from (whose buffer holds the lines printed meanwhile).
    sink: Arc<SinkShared>,
    /// The text of each line, in order.
    lines: Vec<String>,
}

/// Hand every line of the workload numbered so far to the store; answered once they
/// are queued there. Sent by the workload actor before it writes the terminal status
/// (the store applies writes in the order they arrive), so a terminal record implies
/// its log is committed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Seal(pub WorkloadId);

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

/// This node no longer holds these workloads (a node declared lost dropped its queued
/// work; a survivor put it back in the shared queue): their topics go without a
/// `done`, their subscribers are disconnected and resume with Last-Event-ID (then
/// follow the work from the table, wherever it runs). Keeps the topics bounded by
/// what the node holds.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DropTopics(pub Vec<WorkloadId>);

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
    /// The live events. A receiver more than `logs.subscriber_buffer` events behind
    /// gets `Lagged` (it ends its stream); `Closed` after the last event once the
    /// broker disconnects it.
    pub events: broadcast::Receiver<LogEvent>,
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
    /// Events it missed by falling behind (then it ended; 0 otherwise).
    pub missed: u64,
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
        let Publish { sink, lines } = msg;
        let id = sink.id;
        let done = self.guarded("published lines", |me| {
            me.publish(id, lines, ctx);
            // Everything the sink buffered meanwhile, in order, before any other
            // message: the sink sends nothing while this batch is in flight. Bounded by
            // the caps.
            while let Some(lines) = sink.next_batch() {
                me.publish(id, lines, ctx);
            }
        });
        if done.is_none() {
            // The sink must not wait forever for this batch to be handled.
            sink.release();
        }
    }
}

impl Handler<Seal> for LogBroker {
    type Result = ();

    fn handle(&mut self, _: Seal, _: &mut Self::Context) {
        self.flush();
    }
}

impl Handler<CloseTopic> for LogBroker {
    type Result = ();

    fn handle(&mut self, msg: CloseTopic, _: &mut Self::Context) {
        self.flush();
        if self
            .guarded("a closing topic", |me| me.close(msg.id, msg.status))
            .is_none()
        {
            self.topics.remove(&msg.id);
            self.update_gauge();
        }
    }
}

impl Handler<DropTopics> for LogBroker {
    type Result = ();

    fn handle(&mut self, msg: DropTopics, _: &mut Self::Context) {
        // Never started here, so nothing printed: no line to hand to the store.
        for id in msg.0 {
            if let Some(mut topic) = self.topics.remove(&id) {
                let gone = topic.disconnect();
                self.metrics.sse_subscribers.sub(gone as i64);
            }
        }
        self.update_gauge();
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
        let sub = self.guarded("a subscription", |me| {
            let buffer = me.cfg.subscriber_buffer;
            let key = me.next_key;
            me.next_key += 1;
            let topic = me.topics.entry(msg.0).or_insert_with(|| Topic::new(false));
            let rx = match &topic.live {
                Some(live) => live.subscribe(),
                None => {
                    let (live, rx) = broadcast::channel(buffer.max(1));
                    topic.live = Some(live);
                    rx
                }
            };
            topic.subscribers.insert(key);
            let live_from = topic.next_seq;
            me.metrics.sse_subscribers.inc();
            me.update_gauge();
            Subscription {
                live_from,
                events: rx,
                key,
            }
        });
        // After a restart: a stream that ends at once; the client resumes.
        MessageResult(sub.unwrap_or_else(|| Subscription {
            live_from: 0,
            events: broadcast::channel(1).1,
            key: u64::MAX,
        }))
    }
}

impl Handler<Unsubscribe> for LogBroker {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Self::Context) {
        self.metrics.log_lines_dropped.inc_by(msg.missed);
        if let Some(topic) = self.topics.get_mut(&msg.id) {
            if topic.subscribers.remove(&msg.key) {
                self.metrics.sse_subscribers.dec();
            }
            if topic.subscribers.is_empty() {
                // Nobody to frame lines for.
                topic.live = None;
            }
            // A provisional topic exists only for its subscribers.
            if !topic.admitted && topic.subscribers.is_empty() {
                self.topics.remove(&msg.id);
                self.update_gauge();
            }
        }
    }
}

/// Restart the broker in place (an operator's request): subscribers are disconnected
/// and resume with Last-Event-ID.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RestartBroker(pub String);

impl Handler<RestartBroker> for LogBroker {
    type Result = ();

    fn handle(&mut self, msg: RestartBroker, _: &mut Self::Context) {
        self.restart(msg.0);
    }
}

/// Test only: a message whose handling panics, as a bug in the broker would.
#[cfg(test)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct PanicInBroker;

#[cfg(test)]
impl Handler<PanicInBroker> for LogBroker {
    type Result = ();

    fn handle(&mut self, _: PanicInBroker, _: &mut Self::Context) {
        self.guarded("an injected fault", |_| panic!("injected fault"));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::actors::store::Flush;
    use crate::config::Config;

    fn logs_config(max_lines: u64, max_bytes: u64) -> LogsConfig {
        let mut cfg = Config::load_from(HashMap::new()).expect("defaults").logs;
        cfg.max_lines = max_lines;
        cfg.max_bytes = max_bytes;
        cfg
    }

    /// A flood printed without the broker getting a turn (this test holds the only
    /// thread): everything past the cap is dropped at the sink, before any message is
    /// handled, and the broker then gets exactly the cap and the marker, in order.
    #[actix_web::test]
    async fn a_flooding_sink_drops_past_the_cap_before_the_broker_runs() {
        let dir = tempfile::tempdir().expect("dir");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let store = StoreActor::open(
            &crate::store::Database::Sqlite(dir.path().join("t.db")),
            1,
            64,
            metrics.clone(),
        )
        .expect("store")
        .start();
        let cfg = logs_config(1000, u64::MAX);
        let broker = LogBroker::new(store.clone(), cfg.clone(), metrics.clone()).start();
        let id = WorkloadId::new();
        broker.send(OpenTopic(id)).await.expect("open");
        let sinks = LogSinks::new(broker.clone(), cfg, metrics.clone());
        let sink = sinks.sink(id);
        let sub = broker.send(Subscribe(id)).await.expect("subscribe");
        for i in 0..200_000 {
            sink.line(format!("line {i}"));
        }
        // The broker has not run: the kept lines wait in the sink (and its one batch).
        assert_eq!(metrics.log_lines_truncated.get(), 200_000 - 1000);
        broker.send(Seal(id)).await.expect("seal");
        store.send(Flush).await.expect("flush").expect("flushed");
        let mut events = sub.events;
        let mut got = Vec::new();
        while let Ok(LogEvent::Line(l)) = events.try_recv() {
            got.push(l);
        }
        assert_eq!(got.len(), 1001, "the cap, then the marker");
        assert!(got.iter().enumerate().all(|(i, l)| l.seq == i as u64));
        assert_eq!(got[999].bytes, "id: 999\ndata: line 999\n\n");
        assert!(String::from_utf8_lossy(&got[1000].bytes).contains("only the first 1000 lines"));
        // Later lines are dropped at the sink without a message.
        sink.line("late".to_string());
        assert_eq!(metrics.log_lines_truncated.get(), 200_000 - 1000 + 1);
    }

    #[actix_web::test]
    async fn a_panic_restarts_the_broker_disconnecting_subscribers_and_keeping_seqs() {
        let dir = tempfile::tempdir().expect("dir");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let store = StoreActor::open(
            &crate::store::Database::Sqlite(dir.path().join("t.db")),
            1,
            64,
            metrics.clone(),
        )
        .expect("store")
        .start();
        let cfg = logs_config(1000, u64::MAX);
        let broker = LogBroker::new(store.clone(), cfg.clone(), metrics.clone());
        let restarts = broker.restarts();
        let broker = broker.start();
        let id = WorkloadId::new();
        broker.send(OpenTopic(id)).await.expect("open");
        let sink = LogSinks::new(broker.clone(), cfg, metrics.clone()).sink(id);
        let mut before = broker.send(Subscribe(id)).await.expect("subscribe");
        for i in 0..3 {
            sink.line(format!("line {i}"));
        }
        broker.send(PanicInBroker).await.expect("handled");
        assert_eq!(restarts.count(), 1);
        assert!(restarts
            .last_error()
            .is_some_and(|e| e.contains("injected fault")));
        // The subscriber got what came before, then its stream ended.
        let mut got = Vec::new();
        while let Ok(LogEvent::Line(l)) = before.events.recv().await {
            got.push(l.seq);
        }
        assert_eq!(got, vec![0, 1, 2]);
        // A new subscriber continues after them: no seq is given twice.
        let after = broker.send(Subscribe(id)).await.expect("subscribe");
        assert_eq!(after.live_from, 3);
        sink.line("line 3".to_string());
        let mut events = after.events;
        match events.recv().await {
            Ok(LogEvent::Line(l)) => {
                assert_eq!((l.seq, &l.bytes[..]), (3, &b"id: 3\ndata: line 3\n\n"[..]))
            }
            other => panic!("{other:?}"),
        }
    }
}
