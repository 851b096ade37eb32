//! The Supervisor on a cluster node (issue 17): submissions are recorded unclaimed in
//! the shared queue, and the node claims what its free slots can run, FIFO per backend
//! ([`crate::store::nodes::claim`]). Claimed work is admitted like work re-admitted at
//! start-up (its payload read from the table when it starts), unless this node
//! accepted it and still holds its payload.
//!
//! Wake-ups: right after a local submission, whenever a slot frees here, every
//! `cluster.poll_ms`, and on [`ClaimNow`] — the seam for a LISTEN/NOTIFY listener
//! (src/store/notify.rs) to wake this node when another records work. A synchronous
//! submission held here is answered on its terminal notification, whichever node runs
//! it ([`Supervisor::follow_elsewhere`]).

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{SharedQueue, Supervisor, Unclaimed};
use crate::actors::log_broker::DropTopics;
use crate::actors::store::{ClaimWork, GetWorkload, RequeueOrphans, StillUnclaimed};

/// Polls between two looks for orphaned claims (about 5 s at the default `poll_ms`).
const ORPHAN_CHECK_POLLS: u32 = 25;
use crate::actors::workload::{Interrupt, Kill};
use crate::model::{Payload, Workload, WorkloadId};
use crate::store::notify::{self, Subscription};
use crate::store::{PendingWork, StoreError};

/// Look for claimable work now (a listener heard that work was recorded, or a node
/// was declared lost). A no-op on a single node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClaimNow;

/// This node was declared lost by a survivor (its heartbeat found it fenced): the
/// survivor ended its running work (failed "node lost", or killed where a kill had
/// been asked for) and put its unstarted work back in the queue (or killed it, ditto).
/// Running executions are stopped (their status writes are refused by the fence),
/// queued and preparing work is dropped without writing, and nothing is claimed until
/// the node has registered again. Answers how many running workloads were stopped.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Fenced;

impl SharedQueue {
    /// Keep `u` until a node claims `id`.
    fn hold(&mut self, id: WorkloadId, u: Unclaimed) {
        *self
            .unclaimed_per_backend
            .entry(u.backend.clone())
            .or_default() += 1;
        self.unclaimed.insert(id, u);
    }

    /// `id` was claimed (or ended): no longer held.
    fn take(&mut self, id: WorkloadId) -> Option<Unclaimed> {
        let u = self.unclaimed.remove(&id)?;
        if let Some(n) = self.unclaimed_per_backend.get_mut(&u.backend) {
            *n = n.saturating_sub(1);
        }
        Some(u)
    }
}

impl Supervisor {
    /// Hold an accepted submission until a node claims it: its reservation (made by
    /// `reserve`) stays counted, its payload is kept for when this node claims it.
    /// Answers a receiver of the terminal record for a synchronous submission.
    pub(super) fn hold_unclaimed(
        &mut self,
        record: &Workload,
        payload: (Payload, Vec<u8>),
        bytes: usize,
        wait: bool,
        ctx: &mut Context<Self>,
    ) -> Option<oneshot::Receiver<Workload>> {
        let q = self.shared.as_mut()?;
        q.hold(
            record.id,
            Unclaimed {
                backend: record.backend.clone(),
                bytes,
                payload,
            },
        );
        let done = wait.then(|| {
            let (tx, rx) = oneshot::channel();
            self.awaiting.entry(record.id).or_default().push(tx);
            rx
        });
        if done.is_some() {
            // Subscribed now, before any node can claim it: whichever node runs it,
            // its terminal notification wakes this wait.
            let sub = self.cluster.as_ref().map(|(f, _)| {
                f.listener()
                    .subscribe(notify::TERMINAL, Some(&record.id.to_string()))
            });
            self.follow_elsewhere(record.id, sub, ctx);
        }
        self.claim(ctx);
        done
    }

    /// Free slots per healthy backend: its concurrency less what runs and what this
    /// node claimed and has not started (its own unclaimed submissions are counted in
    /// `pending` too, but wait in the shared queue, not here).
    fn free_slots(&self) -> Vec<(String, usize)> {
        let Some(q) = &self.shared else {
            return Vec::new();
        };
        self.backends
            .iter()
            .filter(|(_, e)| e.status().0 == "healthy")
            .map(|(name, e)| {
                let unclaimed = q.unclaimed_per_backend.get(name).copied().unwrap_or(0);
                let waiting_here = e.pending.saturating_sub(unclaimed);
                let free = e
                    .caps
                    .max_concurrency
                    .max(1)
                    .saturating_sub(e.running + waiting_here);
                (name.clone(), free)
            })
            .filter(|(_, free)| *free > 0)
            .collect()
    }

    /// Claim work for this node's free slots (one claim at a time; asked again while
    /// one is on its way, it runs once more after it). A no-op on a single node.
    pub(super) fn claim(&mut self, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        let wants = self.free_slots();
        let Some(q) = self.shared.as_mut() else {
            return;
        };
        if q.claiming || q.adopting {
            q.again = true;
            return;
        }
        if wants.is_empty() {
            return;
        }
        q.claiming = true;
        self.store
            .send(ClaimWork(wants.clone()))
            .into_actor(self)
            .map(move |res, act, ctx| {
                let mut again = false;
                match res.map_err(|_| StoreError::Unavailable).and_then(|r| r) {
                    Ok(work) => {
                        // A backend that got all it asked for may have more waiting.
                        again = wants.iter().any(|(b, n)| {
                            work.iter().filter(|w| &w.workload.backend == b).count() >= *n
                        });
                        let ended = act
                            .shared
                            .as_mut()
                            .map(|q| std::mem::take(&mut q.ended_during_claim))
                            .unwrap_or_default();
                        for w in work {
                            if ended.contains(&w.workload.id) {
                                // Claimed, then killed before this answer: nothing to run
                                // (a held submission's reservation goes at the next
                                // refresh, which finds it no longer waiting).
                                continue;
                            }
                            act.take_claimed(w, ctx);
                        }
                    }
                    // Fenced: the heartbeat finds out too and re-registers the node.
                    Err(e) => log::warn!("cluster: claiming work failed: {e}"),
                }
                if let Some(q) = act.shared.as_mut() {
                    q.claiming = false;
                    again |= std::mem::take(&mut q.again);
                }
                if again {
                    act.claim(ctx);
                }
            })
            .spawn(ctx);
    }

    /// Admit work this node claimed: its own submission with the payload it kept and
    /// the reservation it holds, or another node's, counted like re-admitted work.
    fn take_claimed(&mut self, work: PendingWork, ctx: &mut Context<Self>) {
        let PendingWork {
            workload,
            payload_bytes,
            payload,
        } = work;
        log::debug!(
            "workload {}: claimed (backend {})",
            workload.id,
            workload.backend
        );
        let mine = self.shared.as_mut().and_then(|q| q.take(workload.id));
        match mine {
            Some(u) => {
                self.admit(workload, Some(u.payload), u.bytes, false, ctx);
            }
            None => {
                let bytes = usize::try_from(payload_bytes).unwrap_or(usize::MAX);
                if let Some(e) = self.backends.get_mut(&workload.backend) {
                    e.pending += 1;
                }
                self.pending_bytes = self.pending_bytes.saturating_add(bytes);
                self.admit(workload, payload, bytes, false, ctx);
            }
        }
    }

    /// Forget this node's submissions that another node claimed (or that ended
    /// unclaimed, killed): their reservations go, and a synchronous submitter waits
    /// for the record from the table.
    pub(super) fn refresh_unclaimed(&mut self, ctx: &mut Context<Self>) {
        let Some(q) = self.shared.as_mut() else {
            return;
        };
        if q.refreshing || q.unclaimed.is_empty() {
            return;
        }
        q.refreshing = true;
        let ids: Vec<WorkloadId> = q.unclaimed.keys().copied().collect();
        self.store
            .send(StillUnclaimed(ids.clone()))
            .into_actor(self)
            .map(move |res, act, _| {
                if let Some(q) = act.shared.as_mut() {
                    q.refreshing = false;
                }
                let still: std::collections::HashSet<WorkloadId> =
                    match res.map_err(|_| StoreError::Unavailable).and_then(|r| r) {
                        Ok(still) => still.into_iter().collect(),
                        Err(e) => {
                            log::warn!("cluster: reading the shared queue failed: {e}");
                            return;
                        }
                    };
                for id in ids.into_iter().filter(|id| !still.contains(id)) {
                    let gone = act.shared.as_mut().and_then(|q| q.take(id));
                    // A synchronous submitter is answered by its `follow_elsewhere`.
                    if let Some(u) = gone {
                        act.release(&u.backend, u.bytes);
                    }
                }
            })
            .spawn(ctx);
    }

    /// `id` was recorded terminal without an actor here (killed where it waited). A
    /// claim of this node may have taken it just before: if that claim is on its way,
    /// its answer must not admit it; if it was admitted already, the actor is killed
    /// (its execution is cancelled; its writes are refused, the record is terminal).
    pub(super) fn ended_while_claimed(&mut self, id: WorkloadId) {
        if self.shared.is_none() {
            return;
        }
        if let Some(addr) = self.workloads.get(&id) {
            addr.do_send(Kill);
            return;
        }
        if let Some(q) = self.shared.as_mut() {
            if q.claiming {
                q.ended_during_claim.insert(id);
            }
        }
    }

    /// Every [`ORPHAN_CHECK_POLLS`] polls, with no claim on its way: put back in the
    /// queue what the table says this node claimed and has not started but the node
    /// does not hold (a claim whose commit succeeded but whose answer was lost).
    pub(super) fn requeue_orphans(&mut self, ctx: &mut Context<Self>) {
        let Some(q) = self.shared.as_mut() else {
            return;
        };
        q.polls = q.polls.saturating_add(1);
        if q.polls < ORPHAN_CHECK_POLLS || q.claiming || q.adopting || self.draining {
            return;
        }
        q.polls = 0;
        q.adopting = true;
        let held: Vec<WorkloadId> = self.workloads.keys().copied().collect();
        self.store
            .send(RequeueOrphans(held))
            .into_actor(self)
            .map(|res, act, ctx| {
                let again = match act.shared.as_mut() {
                    Some(q) => {
                        q.adopting = false;
                        std::mem::take(&mut q.again)
                    }
                    None => false,
                };
                match res.map_err(|_| StoreError::Unavailable).and_then(|r| r) {
                    Ok(ids) if !ids.is_empty() => log::warn!(
                        "cluster: {} claimed workload(s) this node never received went back                          to the queue",
                        ids.len()
                    ),
                    Ok(_) => {}
                    Err(e) => log::debug!("cluster: looking for orphaned claims failed: {e}"),
                }
                if again {
                    act.claim(ctx);
                }
            })
            .spawn(ctx);
    }

    /// Answer the waiters of `id` (a synchronous submission this node accepted into the
    /// shared queue) once the table shows it terminal, whichever node runs it. The
    /// table is read only at a wake-up: `sub`'s terminal notification (sent in the
    /// transaction that commits the record, by the running node or a survivor that
    /// reaps it), a `Missed` after the listen connection was reopened, or
    /// `cluster.recheck_s` without either: the slow safety re-read for a lost
    /// notification. Ends once the waiters are answered or handed to an actor here
    /// (this node claimed it), or gone.
    fn follow_elsewhere(
        &mut self,
        id: WorkloadId,
        sub: Option<Subscription>,
        ctx: &mut Context<Self>,
    ) {
        let every = match (&self.cluster, &self.shared) {
            (Some((f, _)), _) => f.recheck(),
            // No listener: the poll interval is the only wake-up.
            (None, Some(q)) => q.poll,
            (None, None) => return,
        };
        let wake = async move {
            let mut sub = sub;
            match &mut sub {
                Some(s) => {
                    if let Ok(None) = tokio::time::timeout(every, s.recv()).await {
                        // The listener is gone (shutting down): the safety pace only.
                        tokio::time::sleep(every).await;
                    }
                }
                None => tokio::time::sleep(every).await,
            }
            sub
        };
        wake.into_actor(self)
            .then(move |sub, act, _| {
                // A submitter that went away is not waited for.
                if let Some(waiting) = act.awaiting.get_mut(&id) {
                    waiting.retain(|tx| !tx.is_closed());
                    if waiting.is_empty() {
                        act.awaiting.remove(&id);
                    }
                }
                let follow = act.awaiting.contains_key(&id) && !act.workloads.contains_key(&id);
                let read = follow.then(|| act.store.send(GetWorkload(id)));
                async move {
                    match read {
                        Some(r) => Some((r.await, sub)),
                        None => None,
                    }
                }
                .into_actor(act)
            })
            .map(move |res, act, ctx| {
                let Some((res, sub)) = res else {
                    return;
                };
                match res {
                    Ok(Ok(w)) if w.status.is_terminal() => {
                        // Ended without this node claiming it: its reservation goes now,
                        // not at the next look at the shared queue.
                        if let Some(u) = act.shared.as_mut().and_then(|q| q.take(id)) {
                            act.release(&u.backend, u.bytes);
                        }
                        act.resolve_awaiting(&w);
                    }
                    Ok(Err(StoreError::NotFound)) => {
                        act.awaiting.remove(&id);
                    }
                    _ => act.follow_elsewhere(id, sub, ctx),
                }
            })
            .spawn(ctx);
    }
}

impl Handler<ClaimNow> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: ClaimNow, ctx: &mut Self::Context) {
        self.claim(ctx);
    }
}

impl Handler<Fenced> for Supervisor {
    type Result = usize;

    fn handle(&mut self, _: Fenced, _: &mut Self::Context) -> usize {
        let mut dropped = Vec::new();
        // Not started here: the survivor put it back in the queue. Dropping the actor's
        // address ends it without a write.
        for entry in self.backends.values_mut() {
            for id in entry.queue.drain(..) {
                dropped.push(id);
                self.workloads.remove(&id);
                entry.pending = entry.pending.saturating_sub(1);
                if let Some(bytes) = self.payload_bytes.remove(&id) {
                    self.pending_bytes = self.pending_bytes.saturating_sub(bytes);
                }
            }
        }
        // Preparing: forgotten here; when its preparation ends, `WorkloadReady` finds
        // it gone and uncounts it.
        for id in &self.preparing {
            dropped.push(*id);
            self.workloads.remove(id);
            if let Some(bytes) = self.payload_bytes.remove(id) {
                self.pending_bytes = self.pending_bytes.saturating_sub(bytes);
            }
        }
        // Their log topics, opened at admission, would otherwise stay open for good
        // (each actor closes its own only once it records an end).
        self.logs.broker().do_send(DropTopics(dropped));
        // Running: the survivor recorded them ended (failed "node lost", or killed by
        // request); stop the executions.
        for addr in self.workloads.values() {
            addr.do_send(Interrupt("node lost (fenced)".into()));
        }
        self.update_gauges();
        log::warn!(
            "cluster: this node was declared lost; {} running workload(s) stopped, queued \
             work dropped (a survivor re-queued it)",
            self.workloads.len()
        );
        self.workloads.len()
    }
}
