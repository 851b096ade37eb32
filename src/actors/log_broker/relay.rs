//! The SSE relay: one reader of a topic's live channel per actix worker thread, which
//! hands every event to that thread's subscribers.
//!
//! Why: with one broadcast receiver per subscriber, each line woke every subscriber's
//! task from the broker's thread, i.e. 1,000 cross-thread wake-ups per line at 1,000
//! subscribers (each a lock on the worker's remote queue, often an unpark). Through a
//! relay a line costs one cross-thread wake-up per worker thread; the relay then wakes
//! its subscribers on its own thread (a push on the local run queue) and they take the
//! frame from its ring (a reference count, no copy).
//!
//! The guarantees are the channel's: a [`Follower`] sees, in order and once, every
//! event sent after its subscription (lines below its `live_from` are skipped, the
//! store has them), and a follower more than `logs.subscriber_buffer` events behind
//! gets [`RecvError::Lagged`] instead of slowing the others. The relay keeps at most
//! that many events (shared frames) whatever the number of followers, and ends when
//! the channel does, when it delivered `Done`, or at the next event after its last
//! follower left.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;

use super::{LogEvent, Subscription};
use crate::model::WorkloadId;

/// A relay is shared by the subscriptions of one workload's live channel (a channel
/// is identified by [`Subscription::channel`]; the broker makes a new one after a
/// restart or once every subscriber left).
type Key = (WorkloadId, u64);

thread_local! {
    /// This thread's relays. Weak: a relay lives as long as its followers.
    static RELAYS: RefCell<HashMap<Key, Weak<RefCell<Relay>>>> = RefCell::new(HashMap::new());
}

/// What the relay's ring holds.
enum Slot {
    Event(LogEvent),
    /// The channel ended (closed, or the relay itself fell behind): the last slot.
    End(RecvError),
}

struct Relay {
    /// The events kept, oldest first; `base` is the index of the front one.
    ring: VecDeque<Slot>,
    base: u64,
    capacity: usize,
    /// Lines from this seq on are carried (the `live_from` of the receiver read).
    covers_from: u64,
    /// One past the seq of the newest line dropped from the ring (0: none).
    evicted_to: u64,
    /// Followers waiting for the next event, woken (and emptied) by each batch.
    waiters: Vec<Waker>,
    /// Counts the batches, so a follower registers its waker once per batch.
    epoch: u64,
}

impl Relay {
    fn push(&mut self, slot: Slot) {
        if self.ring.len() >= self.capacity {
            if let Some(Slot::Event(LogEvent::Line(f))) = self.ring.pop_front() {
                self.evicted_to = f.seq + 1;
            }
            self.base += 1;
        }
        self.ring.push_back(slot);
    }
}

/// Follow `sub`'s live events through this thread's relay of its channel (started
/// here if there is none that carries every line from `sub.live_from` on).
///
/// Must run on a thread with a tokio `LocalSet` (an actix worker), where the follower
/// is polled too.
pub fn follow(id: WorkloadId, sub: Subscription) -> Follower {
    let key = (id, sub.channel);
    let from = sub.live_from;
    RELAYS.with(|relays| {
        let mut relays = relays.borrow_mut();
        relays.retain(|_, r| r.strong_count() > 0);
        let existing = relays
            .get(&key)
            .and_then(Weak::upgrade)
            .filter(|r| r.borrow().covers_from <= from);
        let relay = match existing {
            // The relay's receiver was made earlier: it carries everything this one would.
            Some(relay) => relay,
            None => {
                // Another subscriber on this thread may have subscribed later but
                // reached here first: the relay made from the earlier receiver
                // replaces it for those who come next.
                let relay = Rc::new(RefCell::new(Relay {
                    ring: VecDeque::new(),
                    base: 0,
                    capacity: sub.buffer.max(1),
                    covers_from: from,
                    evicted_to: 0,
                    waiters: Vec::new(),
                    epoch: 0,
                }));
                relays.insert(key, Rc::downgrade(&relay));
                tokio::task::spawn_local(pump(key, sub.events, Rc::downgrade(&relay)));
                relay
            }
        };
        let (next, lagged) = {
            let r = relay.borrow();
            // Lines this follower needs that the ring dropped already.
            let lost = r.evicted_to.saturating_sub(from);
            // It starts at its first line: the older ones may be dropped without
            // making it lag.
            let skip = r.ring.partition_point(|s| is_line_below(s, from));
            (r.base + skip as u64, (lost > 0).then_some(lost))
        };
        Follower {
            relay,
            next,
            from,
            epoch: None,
            lagged,
        }
    })
}

/// A line that a follower subscribed from `from` does not need (the store has it).
fn is_line_below(slot: &Slot, from: u64) -> bool {
    matches!(slot, Slot::Event(LogEvent::Line(f)) if f.seq < from)
}

/// The relay's reader: moves the channel's events into the ring, a batch per wake-up,
/// and wakes the followers waiting.
async fn pump(key: Key, mut events: Receiver<LogEvent>, relay: Weak<RefCell<Relay>>) {
    loop {
        let mut next = Some(events.recv().await);
        let Some(relay) = relay.upgrade() else {
            break;
        };
        let mut ended = false;
        let waiters = {
            let mut r = relay.borrow_mut();
            while let Some(got) = next.take() {
                match got {
                    Ok(event) => {
                        ended = matches!(event, LogEvent::Done { .. });
                        r.push(Slot::Event(event));
                        if !ended {
                            next = match events.try_recv() {
                                Ok(e) => Some(Ok(e)),
                                Err(TryRecvError::Empty) => None,
                                Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                                Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                            };
                        }
                    }
                    Err(e) => {
                        ended = true;
                        r.push(Slot::End(e));
                    }
                }
            }
            r.epoch += 1;
            std::mem::take(&mut r.waiters)
        };
        for w in waiters {
            w.wake();
        }
        if ended {
            break;
        }
    }
    // Those who come next start another relay (on a new channel, or after `Done` a
    // closed topic they will not find).
    let _ = RELAYS.try_with(|relays| {
        let mut relays = relays.borrow_mut();
        if relays.get(&key).is_some_and(|r| r.ptr_eq(&relay)) {
            relays.remove(&key);
        }
    });
}

/// One subscriber's place in its thread's relay.
pub struct Follower {
    relay: Rc<RefCell<Relay>>,
    /// Index of the next event to read.
    next: u64,
    /// Lines below this seq are skipped (they were in the store when it subscribed).
    from: u64,
    /// The batch in which its waker was registered.
    epoch: Option<u64>,
    /// It subscribed after the ring dropped lines it needs: that many.
    lagged: Option<u64>,
}

impl Follower {
    /// The next event, as [`Receiver::recv`] would give it: `Lagged(missed)` once the
    /// follower is more than the buffer behind, `Closed` after the channel ended.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<LogEvent, RecvError>> {
        if let Some(n) = self.lagged {
            return Poll::Ready(Err(RecvError::Lagged(n)));
        }
        let mut r = self.relay.borrow_mut();
        loop {
            if self.next < r.base {
                if r.evicted_to > self.from {
                    return Poll::Ready(Err(RecvError::Lagged(r.base - self.next)));
                }
                // Only lines it would have skipped were dropped (the relay was still
                // taking in lines from before its subscription).
                self.next = r.base;
            }
            // Within the ring (at most its capacity past `base`).
            let at = (self.next - r.base) as usize;
            match r.ring.get(at) {
                Some(s) if is_line_below(s, self.from) => self.next += 1,
                Some(Slot::Event(e)) => {
                    self.next += 1;
                    return Poll::Ready(Ok(e.clone()));
                }
                Some(Slot::End(e)) => return Poll::Ready(Err(e.clone())),
                None => {
                    if self.epoch != Some(r.epoch) {
                        self.epoch = Some(r.epoch);
                        r.waiters.push(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// [`Self::poll_recv`] as a future.
    pub async fn recv(&mut self) -> Result<LogEvent, RecvError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use actix::prelude::*;

    use super::*;
    use crate::actors::log_broker::{
        CloseTopic, LogBroker, LogSinks, OpenTopic, RestartBroker, Subscribe,
    };
    use crate::actors::store::StoreActor;
    use crate::backends::LogSink;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::model::Status;

    struct Fixture {
        broker: Addr<LogBroker>,
        sink: LogSink,
        id: WorkloadId,
        _dir: tempfile::TempDir,
    }

    async fn fixture(buffer: usize) -> Fixture {
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
        let mut cfg = Config::load_from(HashMap::new()).expect("defaults").logs;
        cfg.subscriber_buffer = buffer;
        let broker = LogBroker::new(store, cfg.clone(), metrics.clone()).start();
        let id = WorkloadId::new();
        broker.send(OpenTopic(id)).await.expect("open");
        let sink = LogSinks::new(broker.clone(), cfg, metrics).sink(id);
        Fixture {
            broker,
            sink,
            id,
            _dir: dir,
        }
    }

    /// Lines until `Done` (or the end), as seqs; `Done` as `u64::MAX`.
    async fn drain(f: &mut Follower) -> Vec<u64> {
        let mut seqs = Vec::new();
        loop {
            match f.recv().await {
                Ok(LogEvent::Line(l)) => seqs.push(l.seq),
                Ok(LogEvent::Done { .. }) => {
                    seqs.push(u64::MAX);
                    return seqs;
                }
                Err(_) => return seqs,
            }
        }
    }

    fn done_after(seqs: std::ops::Range<u64>) -> Vec<u64> {
        seqs.chain([u64::MAX]).collect()
    }

    #[actix_web::test]
    async fn followers_of_one_channel_share_one_relay_and_each_gets_its_lines_once_in_order() {
        let fx = fixture(64).await;
        let early = fx.broker.send(Subscribe(fx.id)).await.expect("subscribe");
        for i in 0..3 {
            fx.sink.line(format!("line {i}"));
        }
        let late = fx.broker.send(Subscribe(fx.id)).await.expect("subscribe");
        let also_late = fx.broker.send(Subscribe(fx.id)).await.expect("subscribe");
        assert_eq!((early.live_from, late.live_from), (0, 3));
        // The later subscriptions reach the relay first (as a request that skips the
        // replay would): the early one still gets lines 0..3, from a relay of its own.
        let mut late = follow(fx.id, late);
        let mut also_late = follow(fx.id, also_late);
        let mut early = follow(fx.id, early);
        assert!(Rc::ptr_eq(&late.relay, &also_late.relay));
        assert!(!Rc::ptr_eq(&late.relay, &early.relay));
        for i in 3..6 {
            fx.sink.line(format!("line {i}"));
        }
        fx.broker
            .send(CloseTopic {
                id: fx.id,
                status: Status::Completed,
            })
            .await
            .expect("close");
        assert_eq!(drain(&mut early).await, done_after(0..6));
        assert_eq!(drain(&mut late).await, done_after(3..6));
        assert_eq!(drain(&mut also_late).await, done_after(3..6));
    }

    #[actix_web::test]
    async fn a_follower_that_falls_behind_the_buffer_lags_while_the_others_get_everything() {
        let fx = fixture(4).await;
        let mut reader = follow(
            fx.id,
            fx.broker.send(Subscribe(fx.id)).await.expect("subscribe"),
        );
        let mut stalled = follow(
            fx.id,
            fx.broker.send(Subscribe(fx.id)).await.expect("subscribe"),
        );
        assert!(Rc::ptr_eq(&reader.relay, &stalled.relay));
        for i in 0..10u64 {
            fx.sink.line(format!("line {i}"));
            match reader.recv().await {
                Ok(LogEvent::Line(l)) => assert_eq!(l.seq, i),
                other => panic!("{other:?}"),
            }
        }
        // Ten lines through a ring of four: the six oldest are gone.
        assert_eq!(stalled.recv().await, Err(RecvError::Lagged(6)));
        // The ring held no more than its capacity meanwhile.
        assert_eq!(reader.relay.borrow().ring.len(), 4);
        // A subscriber joining now needs none of the dropped lines: no lag.
        let mut next = follow(
            fx.id,
            fx.broker.send(Subscribe(fx.id)).await.expect("subscribe"),
        );
        fx.sink.line("line 10".to_string());
        match next.recv().await {
            Ok(LogEvent::Line(l)) => assert_eq!(l.seq, 10),
            other => panic!("{other:?}"),
        }
    }

    #[actix_web::test]
    async fn a_follower_joining_a_full_ring_does_not_lag_for_lines_older_than_its_subscription() {
        let fx = fixture(4).await;
        let mut first = follow(
            fx.id,
            fx.broker.send(Subscribe(fx.id)).await.expect("subscribe"),
        );
        for i in 0..4u64 {
            fx.sink.line(format!("line {i}"));
            assert!(matches!(first.recv().await, Ok(LogEvent::Line(l)) if l.seq == i));
        }
        // The ring is full of lines the next subscriber does not need.
        let sub = fx.broker.send(Subscribe(fx.id)).await.expect("subscribe");
        assert_eq!(sub.live_from, 4);
        let mut next = follow(fx.id, sub);
        assert!(Rc::ptr_eq(&first.relay, &next.relay));
        for i in 4..12u64 {
            fx.sink.line(format!("line {i}"));
            for f in [&mut first, &mut next] {
                match f.recv().await {
                    Ok(LogEvent::Line(l)) => assert_eq!(l.seq, i),
                    other => panic!("line {i}: {other:?}"),
                }
            }
        }
    }

    #[actix_web::test]
    async fn a_broker_restart_ends_the_followers_and_later_ones_get_a_new_relay() {
        let fx = fixture(64).await;
        let sub = fx.broker.send(Subscribe(fx.id)).await.expect("subscribe");
        let first_channel = sub.channel;
        let mut before = follow(fx.id, sub);
        fx.sink.line("line 0".to_string());
        fx.broker
            .send(RestartBroker("test".into()))
            .await
            .expect("restart");
        assert_eq!(drain(&mut before).await, vec![0]);
        assert_eq!(before.recv().await, Err(RecvError::Closed));
        let sub = fx.broker.send(Subscribe(fx.id)).await.expect("subscribe");
        assert_ne!(sub.channel, first_channel);
        let mut after = follow(fx.id, sub);
        assert!(!Rc::ptr_eq(&before.relay, &after.relay));
        fx.sink.line("line 1".to_string());
        match after.recv().await {
            Ok(LogEvent::Line(l)) => assert_eq!(l.seq, 1),
            other => panic!("{other:?}"),
        }
    }
}
