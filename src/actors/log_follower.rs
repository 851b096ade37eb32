//! Following a workload that runs on another node of the cluster, from the shared
//! table: its log lines (an SSE stream on this node) and its terminal record (a kill's
//! or a sync submission's wait).
//!
//! The table is the truth, a notification only the wake-up: a follower subscribes to
//! the workload's notifications ([`crate::store::notify`]) *before* it reads, then
//! reads what is new (lines with a larger seq than the last it sent, the row's status)
//! at each wake-up: a notification, a [`Notice::Missed`] after the listen connection
//! was reopened, or `cluster.recheck_s` without either. A line is sent once (seq above
//! the last sent), and none is skipped: the node running it commits lines in seq order
//! and its terminal record only after every line (the broker seals the log first), so
//! once the status read is terminal a last read of lines completes the log.

use std::time::Duration;

use actix::Addr;
use bytes::Bytes;
use futures_util::stream::{self, Stream};
use tokio::sync::oneshot;

use crate::actors::log_broker::{done_frame, encode_lines};
use crate::actors::store::{GetLogs, GetWorkload, StoreActor};
use crate::model::{LogLine, Status, Workload, WorkloadId};
use crate::store::notify::{self, Listener, Subscription};
use crate::store::StoreError;

/// What a node needs to follow other nodes' workloads. Cheap to clone.
#[derive(Clone)]
pub struct Follower {
    listener: Listener,
    store: Addr<StoreActor>,
    node_id: String,
    recheck: Duration,
}

/// Lines per read of a follower (as a local replay page).
const PAGE_LINES: i64 = 256;
/// Most bytes of line text per read.
const PAGE_BYTES: usize = 4 * 1024 * 1024;

/// One read of lines, framed as SSE events.
struct Page {
    frames: Bytes,
    last: Option<u64>,
    full: bool,
}

impl Follower {
    /// A follower on this node (`node_id`), woken by `listener`, reading from `store`
    /// at least every `recheck`.
    pub fn new(
        listener: Listener,
        store: Addr<StoreActor>,
        node_id: String,
        recheck: Duration,
    ) -> Self {
        Self {
            listener,
            store,
            node_id,
            recheck: recheck.max(Duration::from_millis(100)),
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

    /// Wait for a notice of `sub` or the recheck period, whichever comes first.
    async fn wake(&self, subs: &mut [&mut Subscription]) {
        let any = futures_util::future::select_all(subs.iter_mut().map(|s| Box::pin(s.recv())));
        let _ = tokio::time::timeout(self.recheck, any).await;
    }

    /// The terminal record of `id`, however long it takes; `Err(NotFound)` when the row
    /// is gone (deleted by retention meanwhile).
    pub async fn terminal(&self, id: WorkloadId) -> Result<Workload, StoreError> {
        let key = id.to_string();
        let mut sub = self.listener.subscribe(notify::TERMINAL, Some(&key));
        loop {
            let w = self
                .store
                .send(GetWorkload(id))
                .await
                .map_err(|_| StoreError::Unavailable)??;
            if w.status.is_terminal() {
                return Ok(w);
            }
            self.wake(&mut [&mut sub]).await;
        }
    }

    /// A receiver of `id`'s terminal record, answered by a task that follows it until
    /// it ends or the receiver is dropped (dropped unanswered when the row is gone).
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

    /// Lines after `after`, read from the table.
    async fn page(&self, id: WorkloadId, after: Option<u64>) -> Result<Page, StoreError> {
        let render = Box::new(|lines: Vec<LogLine>, full: bool| {
            Ok::<_, russe::Error>(Page {
                frames: encode_lines(&lines)?,
                last: lines.last().map(|l| l.seq),
                full,
            })
        });
        self.store
            .send(GetLogs {
                id,
                after: after.map(|a| i64::try_from(a).unwrap_or(i64::MAX)),
                before: None,
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
        let key = id.to_string();
        // Subscribed before the first read: nothing committed after it goes unseen.
        let subs = (
            self.listener.subscribe(notify::LOGS, Some(&key)),
            self.listener.subscribe(notify::TERMINAL, Some(&key)),
        );
        let state = Following {
            me: self.clone(),
            id,
            last: after,
            subs,
            step: Step::Drain,
        };
        stream::unfold(Some(state), |state| async move {
            let mut s = state?;
            loop {
                match s.step {
                    Step::Wait => {
                        let (logs, terminal) = &mut s.subs;
                        s.me.wake(&mut [logs, terminal]).await;
                        s.step = Step::Drain;
                    }
                    Step::Drain | Step::Last(_) => {
                        let page = match s.me.page(s.id, s.last).await {
                            Ok(p) => p,
                            Err(e) => {
                                log::warn!("workload {}: following its log failed: {e}", s.id);
                                return None;
                            }
                        };
                        if let Some(last) = page.last {
                            s.last = Some(last);
                            if !page.full && s.step == Step::Drain {
                                s.step = Step::Status;
                            }
                            return Some((page.frames, Some(s)));
                        }
                        if let Step::Last(status) = s.step {
                            let next = s.last.map_or(0, |l| l + 1);
                            return match done_frame(status, next) {
                                Ok(done) => Some((done, None)),
                                Err(e) => {
                                    log::error!("cannot frame the done event: {e}");
                                    None
                                }
                            };
                        }
                        s.step = Step::Status;
                    }
                    Step::Status => match s.me.store.send(GetWorkload(s.id)).await {
                        // Every line was committed before this record: a last read.
                        Ok(Ok(w)) if w.status.is_terminal() => s.step = Step::Last(w.status),
                        Ok(Ok(_)) => s.step = Step::Wait,
                        Ok(Err(e)) => {
                            log::warn!("workload {}: following it failed: {e}", s.id);
                            return None;
                        }
                        Err(_) => return None,
                    },
                }
            }
        })
    }
}

/// The state of one followed log stream.
struct Following {
    me: Follower,
    id: WorkloadId,
    /// The seq of the last line sent.
    last: Option<u64>,
    subs: (Subscription, Subscription),
    step: Step,
}

/// What a followed log stream does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Wait for a wake-up (or the recheck period).
    Wait,
    /// Send the lines after the last sent, then read the status.
    Drain,
    /// Read the row: terminal means one last read of lines, else wait.
    Status,
    /// The row is terminal: send the remaining lines, then `done`.
    Last(Status),
}
