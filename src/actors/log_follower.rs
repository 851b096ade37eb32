//! Following a workload that runs on another node of the cluster, from the shared
//! table: its log lines (SSE streams on this node) and its terminal record (a kill's
//! or a sync submission's wait).
//!
//! One follower per followed workload per node, however many streams and waiters:
//! they attach to it, and it ends once the workload is terminal or the last of them
//! left. The follower is one task that reads the table and broadcasts what it read;
//! the attached only read the table themselves to catch up.
//!
//! The table is the truth, a notification only the wake-up: the follower subscribes to
//! the workload's notifications ([`crate::store::notify`]) *before* it reads, then
//! reads what is new (lines with a larger seq than the last it sent, the row's status)
//! at each wake-up: a notification, a [`crate::store::notify::Notice::Missed`] after
//! the listen connection was reopened, or `cluster.recheck_s` without either. None is
//! skipped: the node running it commits lines in seq order and its terminal record
//! only after every line (the broker seals the log first), so once the status read is
//! terminal a last read of lines completes the log.
//!
//! Each broadcast page of lines names the position it continues from (the seq of the
//! last line before it), and an attached stream sends a page only when it continues
//! exactly from the stream's own last line: a stream that attached late (the follower
//! is further on than its `Last-Event-ID`), fell behind (the broadcast dropped pages
//! for it) or asked to resume past the page's start reads the missing lines from the
//! table instead, so each line is sent once, in order, whatever the timing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use bytes::Bytes;
use futures_util::stream::{self, Stream};
use tokio::sync::{broadcast, oneshot, Notify};

use crate::actors::log_broker::{done_frame, encode_lines};
use crate::actors::store::{GetLogs, GetWorkload, StoreActor};
use crate::metrics::Metrics;
use crate::model::{LogLine, Workload, WorkloadId};
use crate::store::notify::{self, Listener, Subscription};
use crate::store::StoreError;

/// What a node needs to follow other nodes' workloads. Cheap to clone; clones share
/// the followers.
#[derive(Clone)]
pub struct Follower {
    listener: Listener,
    store: Addr<StoreActor>,
    node_id: String,
    recheck: Duration,
    metrics: Arc<Metrics>,
    followed: Arc<Mutex<Followed>>,
}

/// The followers of this node, by workload.
#[derive(Default)]
struct Followed {
    /// Tells apart two followers of one workload in turn (an attachment of an ended
    /// follower must not count against its successor).
    next_serial: u64,
    by_id: HashMap<WorkloadId, Entry>,
}

/// One running follower, as the attached see it.
struct Entry {
    serial: u64,
    /// What the follower read, to every attached receiver.
    tx: broadcast::Sender<Event>,
    /// Streams and waiters attached.
    attached: usize,
    /// `None` while only waiters are attached (no line is read); else the seq of the
    /// last line broadcast (`Some(None)`: none yet, from the start).
    position: Option<Option<u64>>,
    /// Wakes the follower: a stream attached to a waiters-only follower, or the last
    /// one left.
    poke: Arc<Notify>,
}

/// What a follower broadcasts.
#[derive(Clone)]
enum Event {
    /// The lines after `after` up to `last`, framed as SSE events.
    Lines {
        after: Option<u64>,
        last: u64,
        frames: Bytes,
    },
    /// The terminal record; `position` is the follower's last line then.
    Done {
        record: Arc<Workload>,
        position: Option<u64>,
    },
    /// The row is gone (retention deleted it).
    Gone,
}

/// Lines per read of a follower (as a local replay page).
const PAGE_LINES: i64 = 256;
/// Most bytes of line text per read.
const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Pages a follower keeps for an attached stream that has not taken them yet; one
/// further behind skips them and reads the table instead (bounded memory).
const BROADCAST_PAGES: usize = 16;

/// One read of lines, framed as SSE events.
struct Page {
    frames: Bytes,
    last: Option<u64>,
    full: bool,
}

/// Held by whatever is attached to a follower; leaving is dropping it.
struct Attachment {
    followed: Arc<Mutex<Followed>>,
    id: WorkloadId,
    serial: u64,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut f = self.followed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = f
            .by_id
            .get_mut(&self.id)
            .filter(|e| e.serial == self.serial)
        {
            e.attached = e.attached.saturating_sub(1);
            if e.attached == 0 {
                e.poke.notify_one();
            }
        }
    }
}

impl Follower {
    /// A follower on this node (`node_id`), woken by `listener`, reading from `store`
    /// at least every `recheck`, counting its followers in `metrics`.
    pub fn new(
        listener: Listener,
        store: Addr<StoreActor>,
        node_id: String,
        recheck: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            listener,
            store,
            node_id,
            recheck: recheck.max(Duration::from_millis(100)),
            metrics,
            followed: Arc::default(),
        }
    }

    /// How often a follower re-reads the table without a notification.
    pub fn recheck(&self) -> Duration {
        self.recheck
    }

    /// The node's listener (for other consumers of its channels).
    pub fn listener(&self) -> &Listener {
        &self.listener
    }

    /// Whether `w` is another node's live work: not terminal, recorded by another node.
    pub fn is_remote(&self, w: &Workload) -> bool {
        !w.status.is_terminal() && w.node_id != self.node_id
    }

    /// How many workloads this node follows now (one follower each).
    pub fn following(&self) -> usize {
        self.lock().by_id.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Followed> {
        self.followed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attach to the follower of `id`, started if there is none. A stream passes
    /// `Some(after)` (its `Last-Event-ID`), a waiter `None`. Answers the receiver of
    /// what the follower reads from now on and, for a stream, the follower's position
    /// (the seq of the last line it broadcast): what lies between the stream's
    /// `after` and it is for the stream to read from the table.
    fn attach(
        &self,
        id: WorkloadId,
        stream_after: Option<Option<u64>>,
    ) -> (broadcast::Receiver<Event>, Option<u64>, Attachment) {
        let mut f = self.lock();
        let (rx, position, serial) = match f.by_id.get_mut(&id) {
            Some(e) => {
                e.attached += 1;
                if let (Some(after), None) = (stream_after, e.position) {
                    // The first stream of a waiters-only follower: lines from its start.
                    e.position = Some(after);
                    e.poke.notify_one();
                }
                (e.tx.subscribe(), e.position.flatten(), e.serial)
            }
            None => {
                let serial = f.next_serial;
                f.next_serial += 1;
                let (tx, rx) = broadcast::channel(BROADCAST_PAGES);
                let poke = Arc::new(Notify::new());
                f.by_id.insert(
                    id,
                    Entry {
                        serial,
                        tx,
                        attached: 1,
                        position: stream_after,
                        poke: poke.clone(),
                    },
                );
                self.metrics.log_followers.set(f.by_id.len() as i64);
                self.metrics.log_followers_started.inc();
                let me = self.clone();
                actix::spawn(async move { me.follow(id, serial, poke).await });
                (rx, stream_after.flatten(), serial)
            }
        };
        drop(f);
        let guard = Attachment {
            followed: self.followed.clone(),
            id,
            serial,
        };
        (rx, position, guard)
    }

    /// End the follower `serial` of `id` (its entry removed; the attached see the
    /// channel close after `last`, if any).
    fn end(&self, id: WorkloadId, serial: u64, last: Option<Event>) {
        let mut f = self.lock();
        if let Some(e) = f.by_id.get(&id).filter(|e| e.serial == serial) {
            if let Some(ev) = last {
                let _ = e.tx.send(ev);
            }
            f.by_id.remove(&id);
        }
        self.metrics.log_followers.set(f.by_id.len() as i64);
    }

    /// The follower's task: read and broadcast until the workload is terminal, its row
    /// is gone, a read fails, or nobody is attached any more.
    async fn follow(self, id: WorkloadId, serial: u64, poke: Arc<Notify>) {
        let key = id.to_string();
        // Subscribed before the first read: nothing committed after it goes unseen.
        let mut logs = self.listener.subscribe(notify::LOGS, Some(&key));
        let mut terminal = self.listener.subscribe(notify::TERMINAL, Some(&key));
        let ended = loop {
            let position = {
                let f = self.lock();
                match f.by_id.get(&id).filter(|e| e.serial == serial) {
                    Some(e) if e.attached > 0 => e.position,
                    _ => break None,
                }
            };
            if let Some(after) = position {
                if let Err(e) = self.drain(id, serial, after).await {
                    log::warn!("workload {id}: following its log failed: {e}");
                    break None;
                }
            }
            match self.store.send(GetWorkload(id)).await {
                Ok(Ok(w)) if w.status.is_terminal() => {
                    // Every line was committed before this record: a last read.
                    let position = self.lock().by_id.get(&id).and_then(|e| e.position);
                    if let Some(after) = position {
                        if let Err(e) = self.drain(id, serial, after).await {
                            log::warn!("workload {id}: following its log failed: {e}");
                            break None;
                        }
                    }
                    let position = self.lock().by_id.get(&id).and_then(|e| e.position);
                    break Some(Event::Done {
                        record: Arc::new(w),
                        position: position.flatten(),
                    });
                }
                Ok(Ok(_)) => {}
                Ok(Err(StoreError::NotFound)) => break Some(Event::Gone),
                Ok(Err(e)) => {
                    log::warn!("workload {id}: following it failed: {e}");
                    break None;
                }
                Err(_) => break None,
            }
            let streams = position.is_some();
            self.wake(streams.then_some(&mut logs), &mut terminal, &poke)
                .await;
        };
        self.end(id, serial, ended);
    }

    /// Read and broadcast every line after `after` the table holds now.
    async fn drain(
        &self,
        id: WorkloadId,
        serial: u64,
        after: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut after = after;
        loop {
            let page = self.page(id, after, None).await?;
            let Some(last) = page.last else {
                return Ok(());
            };
            {
                let mut f = self.lock();
                let Some(e) = f.by_id.get_mut(&id).filter(|e| e.serial == serial) else {
                    return Ok(());
                };
                // Under the lock with the position: a stream attaching now gets either
                // this page or a position that includes it.
                e.position = Some(Some(last));
                let _ = e.tx.send(Event::Lines {
                    after,
                    last,
                    frames: page.frames,
                });
            }
            after = Some(last);
            if !page.full {
                return Ok(());
            }
        }
    }

    /// Wait for a notice (of lines only while streams are attached), a poke, or the
    /// recheck period, whichever comes first.
    async fn wake(
        &self,
        logs: Option<&mut Subscription>,
        terminal: &mut Subscription,
        poke: &Notify,
    ) {
        let notice = async {
            match logs {
                Some(l) => tokio::select! {
                    n = l.recv() => n,
                    n = terminal.recv() => n,
                },
                None => terminal.recv().await,
            }
        };
        tokio::select! {
            n = notice => {
                if n.is_none() {
                    // The listener is gone (shutting down): the recheck pace only.
                    tokio::time::sleep(self.recheck).await;
                }
            }
            _ = poke.notified() => {}
            _ = tokio::time::sleep(self.recheck) => {}
        }
    }

    /// The terminal record of `id`, however long it takes; `Err(NotFound)` when the row
    /// is gone (deleted by retention meanwhile).
    pub async fn terminal(&self, id: WorkloadId) -> Result<Workload, StoreError> {
        let (mut rx, _, _guard) = self.attach(id, None);
        loop {
            match rx.recv().await {
                Ok(Event::Done { record, .. }) => return Ok((*record).clone()),
                Ok(Event::Gone) => return Err(StoreError::NotFound),
                Ok(Event::Lines { .. }) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                // The follower failed a read (logged there).
                Err(broadcast::error::RecvError::Closed) => return Err(StoreError::Unavailable),
            }
        }
    }

    /// A receiver of `id`'s terminal record, answered by a task attached to its
    /// follower until it ends or the receiver is dropped (dropped unanswered when the
    /// row is gone).
    pub fn await_terminal(&self, id: WorkloadId) -> oneshot::Receiver<Workload> {
        let (mut tx, rx) = oneshot::channel();
        let me = self.clone();
        actix::spawn(async move {
            tokio::select! {
                res = me.terminal(id) => match res {
                    Ok(w) => { let _ = tx.send(w); }
                    Err(e) => log::debug!("workload {id}: stopped following it: {e}"),
                },
                _ = tx.closed() => {}
            }
        });
        rx
    }

    /// Lines after `after` (and up to `until`), read from the table.
    async fn page(
        &self,
        id: WorkloadId,
        after: Option<u64>,
        until: Option<u64>,
    ) -> Result<Page, StoreError> {
        let render = Box::new(|lines: Vec<LogLine>, full: bool| {
            Ok::<_, russe::Error>(Page {
                frames: encode_lines(&lines)?,
                last: lines.last().map(|l| l.seq),
                full,
            })
        });
        let seq = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
        self.store
            .send(GetLogs {
                id,
                after: after.map(seq),
                before: until.map(|u| seq(u).saturating_add(1)),
                limit: PAGE_LINES,
                max_bytes: PAGE_BYTES,
                render,
            })
            .await
            .map_err(|_| StoreError::Unavailable)??
            .map_err(|e| StoreError::Corrupt(format!("log line does not frame: {e}")))
    }

    /// The SSE events of `id` (running on another node) after `after`: every line in
    /// seq order, once, then the `done` event. A failed read ends the stream (the
    /// client resumes with Last-Event-ID, as on a local stream).
    pub fn logs(&self, id: WorkloadId, after: Option<u64>) -> impl Stream<Item = Bytes> {
        let (rx, position, guard) = self.attach(id, Some(after));
        let state = Attached {
            me: self.clone(),
            id,
            last: after,
            // Attached late: the lines the follower broadcast before come from the table.
            catch_up: position.filter(|p| Some(*p) > after),
            held: None,
            rx,
            _guard: guard,
        };
        stream::unfold(Some(state), |state| async move {
            let mut s = state?;
            loop {
                if let Some(until) = s.catch_up {
                    if s.last >= Some(until) {
                        s.catch_up = None;
                        continue;
                    }
                    let page = match s.me.page(s.id, s.last, Some(until)).await {
                        Ok(p) => p,
                        Err(e) => {
                            log::warn!("workload {}: following its log failed: {e}", s.id);
                            return None;
                        }
                    };
                    match page.last {
                        Some(last) => {
                            s.last = Some(last);
                            return Some((page.frames, Some(s)));
                        }
                        // Nothing stored up to there: nothing to send either.
                        None => {
                            s.last = Some(until);
                            s.catch_up = None;
                        }
                    }
                    continue;
                }
                if let Some(ev) = s.held.take() {
                    match ev {
                        Event::Lines {
                            after,
                            last,
                            frames,
                        } => {
                            if s.last >= Some(last) {
                                continue;
                            }
                            if after == s.last {
                                s.last = Some(last);
                                return Some((frames, Some(s)));
                            }
                            // Behind the page's start, or past it: from the table.
                            s.catch_up = Some(last);
                        }
                        Event::Done { record, position } => {
                            if position > s.last {
                                s.catch_up = position;
                                s.held = Some(Event::Done { record, position });
                                continue;
                            }
                            let next = s.last.map_or(0, |l| l + 1);
                            return match done_frame(record.status, next) {
                                Ok(done) => Some((done, None)),
                                Err(e) => {
                                    log::error!("cannot frame the done event: {e}");
                                    None
                                }
                            };
                        }
                        Event::Gone => return None,
                    }
                    continue;
                }
                match s.rx.recv().await {
                    Ok(ev) => s.held = Some(ev),
                    // Pages dropped for this stream: the next one shows the gap.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

/// One SSE stream attached to a follower.
struct Attached {
    me: Follower,
    id: WorkloadId,
    /// The seq of the last line sent.
    last: Option<u64>,
    /// Lines up to this seq are read from the table first.
    catch_up: Option<u64>,
    /// A received event not handled yet (waiting for a catch-up).
    held: Option<Event>,
    rx: broadcast::Receiver<Event>,
    _guard: Attachment,
}
