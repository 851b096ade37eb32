//! LISTEN/NOTIFY between the nodes of a cluster (a shared PostgreSQL database): the
//! wake-up, never the truth. Whoever is woken re-reads the table.
//!
//! Sending: the writer runs [`notify`] inside the batch transaction that commits the
//! change, so a notification is delivered only once what it announces is visible, and
//! PostgreSQL folds identical notifications of one transaction into one (one per
//! workload per batch, whatever the number of lines).
//!
//! Receiving: one [`Listener`] per node owns one dedicated connection on a thread of
//! its own and hands each notification to the in-process subscribers of its channel
//! (all of them, or those that asked for one payload). When the connection is lost it
//! is reopened and every subscriber is told [`Notice::Missed`]: whatever was sent
//! meanwhile is gone, so each re-reads the table.
//!
//! Why a poll loop on Diesel's connection and not `tokio-postgres`: Diesel's
//! `notifications_iter` only drains what already arrived (`PQconsumeInput` +
//! `PQnotifies`, without blocking) and Diesel does not expose the socket, so the thread
//! polls every `cluster.listen_poll_ms` (10 ms: one non-blocking `recv` each, nothing
//! measurable). `tokio-postgres` would wake on the socket instead, but it is a second
//! PostgreSQL client stack in the binary (its own URL parsing and TLS set-up, next to
//! the libpq that every other connection uses, so `sslmode` and friends could behave
//! differently on this one connection) and a dependency tree the shared build machine
//! would compile for one connection. The poll interval bounds the added latency and is
//! configurable; the choice can be revisited behind this module's API.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::{Connection, RunQueryDsl};
use tokio::sync::mpsc;

use super::{Database, DbConnection, StoreError};

/// Log lines of a workload were committed (payload: its id).
pub const LOGS: &str = "vulcan_logs";
/// A workload's terminal record was committed (payload: its id).
pub const TERMINAL: &str = "vulcan_terminal";
/// Somebody asks the node running a workload to kill it (payload: its id).
pub const KILL: &str = "vulcan_kill";

/// The `application_name` of a node's listen connection.
pub const APPLICATION_NAME: &str = "vulcan-listen";

/// Every channel a node listens on. Other consumers add theirs here.
pub const CHANNELS: &[&str] = &[LOGS, TERMINAL, KILL];

/// Queue a notification on each of `payloads` for `channel`, delivered when the
/// surrounding transaction commits (and never if it rolls back). One statement
/// whatever the number of payloads; nothing on SQLite (no other node to tell).
pub fn notify(
    conn: &mut DbConnection,
    channel: &str,
    payloads: &[String],
) -> Result<(), StoreError> {
    let DbConnection::Pg(c) = conn else {
        return Ok(());
    };
    notify_pg(c, channel, payloads)
}

/// [`notify`] on a PostgreSQL connection (inside a transaction of the cluster's own
/// statements).
pub fn notify_pg(
    c: &mut PgConnection,
    channel: &str,
    payloads: &[String],
) -> Result<(), StoreError> {
    if payloads.is_empty() {
        return Ok(());
    }
    diesel::sql_query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind::<diesel::sql_types::Text, _>(channel)
        .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(payloads)
        .execute(c)?;
    Ok(())
}

/// What a subscriber is handed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A notification of the subscribed channel, with its payload.
    Payload(String),
    /// Notifications may have been lost (the listen connection was reopened, or this
    /// subscriber fell behind): re-read the table.
    Missed,
}

/// The node's listener: cheap to clone; the thread stops once the last clone is gone.
#[derive(Clone)]
pub struct Listener {
    inner: Arc<Inner>,
}

struct Inner {
    subs: Mutex<Subs>,
    /// The server process of the current listen connection (0 while there is none).
    backend_pid: AtomicI32,
}

#[derive(Default)]
struct Subs {
    next_key: u64,
    /// channel -> payload filter (`None`: every payload) -> subscribers
    by_channel: HashMap<String, HashMap<Option<String>, Vec<Sub>>>,
}

struct Sub {
    key: u64,
    tx: mpsc::Sender<Notice>,
    /// A notice could not be queued: [`Notice::Missed`] is owed.
    owes_missed: bool,
}

/// How many notices a subscriber may have queued. One suffices for a subscriber of one
/// payload (a queued notice already means "re-read"); one to every payload gets more,
/// and [`Notice::Missed`] once it falls behind.
const ONE_PAYLOAD_DEPTH: usize = 1;
const ALL_PAYLOADS_DEPTH: usize = 1024;

/// A subscription; unsubscribes when dropped.
pub struct Subscription {
    rx: mpsc::Receiver<Notice>,
    key: u64,
    channel: String,
    payload: Option<String>,
    listener: Weak<Inner>,
}

impl Subscription {
    /// The next notice; `None` once the listener is gone.
    pub async fn recv(&mut self) -> Option<Notice> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(inner) = self.listener.upgrade() else {
            return;
        };
        let mut subs = inner.subs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(by_payload) = subs.by_channel.get_mut(&self.channel) {
            if let Some(list) = by_payload.get_mut(&self.payload) {
                list.retain(|s| s.key != self.key);
                if list.is_empty() {
                    by_payload.remove(&self.payload);
                }
            }
        }
    }
}

impl Listener {
    /// Open the listen connection on `db` (PostgreSQL only), LISTEN on [`CHANNELS`]
    /// and start the polling thread. Fails when the first connection cannot be opened,
    /// so a node does not start deaf.
    pub fn start(db: &Database, poll: Duration) -> Result<Listener, StoreError> {
        let url = db
            .postgres_url()
            .ok_or_else(|| StoreError::Connection("LISTEN needs PostgreSQL".into()))?
            .to_string();
        let conn = listen(&url)?;
        let inner = Arc::new(Inner {
            subs: Mutex::new(Subs::default()),
            backend_pid: AtomicI32::new(conn.1),
        });
        let weak = Arc::downgrade(&inner);
        let poll = poll.max(Duration::from_millis(1));
        std::thread::Builder::new()
            .name("vulcan-listen".into())
            .spawn(move || run(url, conn, weak, poll))
            .map_err(|e| StoreError::Connection(format!("cannot start listener thread: {e}")))?;
        Ok(Listener { inner })
    }

    /// Subscribe to `channel`: every notification of it, or only those whose payload is
    /// `payload`. Subscribe before reading the table, so nothing committed after the
    /// read goes unnoticed.
    pub fn subscribe(&self, channel: &str, payload: Option<&str>) -> Subscription {
        let depth = if payload.is_some() {
            ONE_PAYLOAD_DEPTH
        } else {
            ALL_PAYLOADS_DEPTH
        };
        let (tx, rx) = mpsc::channel(depth);
        let mut subs = self.inner.subs.lock().unwrap_or_else(|p| p.into_inner());
        let key = subs.next_key;
        subs.next_key += 1;
        let payload = payload.map(str::to_string);
        subs.by_channel
            .entry(channel.to_string())
            .or_default()
            .entry(payload.clone())
            .or_default()
            .push(Sub {
                key,
                tx,
                owes_missed: false,
            });
        Subscription {
            rx,
            key,
            channel: channel.to_string(),
            payload,
            listener: Arc::downgrade(&self.inner),
        }
    }

    /// The PostgreSQL server process of the listen connection, `None` while it is
    /// being reopened (tests terminate it to prove the reconnect).
    pub fn backend_pid(&self) -> Option<i32> {
        match self.inner.backend_pid.load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid),
        }
    }
}

/// Open a connection and LISTEN on every channel.
fn listen(url: &str) -> Result<(PgConnection, i32), StoreError> {
    let mut conn =
        PgConnection::establish(url).map_err(|e| StoreError::Connection(e.to_string()))?;
    // Named, so an operator (or a test) finds it in pg_stat_activity.
    let statements: String =
        std::iter::once(format!("SET application_name = '{APPLICATION_NAME}';"))
            .chain(CHANNELS.iter().map(|c| format!("LISTEN {c};")))
            .collect();
    conn.batch_execute(&statements)?;
    #[derive(diesel::QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    let pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Pid>(&mut conn)?
        .pid;
    Ok((conn, pid))
}

/// How often an idle listen connection is checked with a round trip: a connection
/// whose server vanished without a word (a network cut) shows no error to a poll.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The longest pause between two attempts to reopen the listen connection.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// The polling thread: deliver, and reopen the connection whenever it fails.
fn run(url: String, first: (PgConnection, i32), inner: Weak<Inner>, poll: Duration) {
    let mut current = Some(first);
    // Between two attempts to reopen: ten polls, doubled after each failure up to
    // MAX_PAUSE, so a database that is down is neither hammered nor logged about in a
    // flood.
    let mut pause = poll * 10;
    loop {
        let Some(alive) = inner.upgrade() else {
            break;
        };
        let Some((mut conn, pid)) = current.take() else {
            match listen(&url) {
                Ok(fresh) => {
                    log::info!("listen: connection reopened; followers re-read the table");
                    pause = poll * 10;
                    alive.backend_pid.store(fresh.1, Ordering::SeqCst);
                    current = Some(fresh);
                    // After LISTEN: what anyone reads from now on misses nothing.
                    broadcast_missed(&alive);
                }
                Err(e) => {
                    log::warn!("listen: cannot reopen the connection (next try in {pause:?}): {e}");
                    drop(alive);
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(MAX_PAUSE.max(poll * 10));
                }
            }
            continue;
        };
        alive.backend_pid.store(pid, Ordering::SeqCst);
        drop(alive);
        let lost = poll_until_lost(&mut conn, &inner, poll);
        if let Some(alive) = inner.upgrade() {
            alive.backend_pid.store(0, Ordering::SeqCst);
        }
        match lost {
            // A pause first: a restarting server is not hammered with connections.
            Some(why) => {
                log::warn!("listen: connection lost ({why}); reopening");
                std::thread::sleep(pause);
            }
            None => break,
        }
    }
    log::debug!("listen: thread stopped");
}

/// Poll `conn` until it fails (`Some(why)`) or the listener is dropped (`None`).
fn poll_until_lost(conn: &mut PgConnection, inner: &Weak<Inner>, poll: Duration) -> Option<String> {
    let mut checked = Instant::now();
    loop {
        let alive = inner.upgrade()?;
        for n in conn.notifications_iter() {
            match n {
                Ok(n) => deliver(&alive, &n.channel, n.payload),
                Err(e) => return Some(e.to_string()),
            }
        }
        settle_missed(&alive);
        drop(alive);
        if checked.elapsed() >= CHECK_EVERY {
            if let Err(e) = conn.batch_execute("SELECT 1") {
                return Some(e.to_string());
            }
            checked = Instant::now();
        }
        std::thread::sleep(poll);
    }
}

fn deliver(inner: &Inner, channel: &str, payload: String) {
    let mut subs = inner.subs.lock().unwrap_or_else(|p| p.into_inner());
    let Some(by_payload) = subs.by_channel.get_mut(channel) else {
        return;
    };
    if let Some(list) = by_payload.get_mut(&Some(payload.clone())) {
        // Full: a notice is queued already, which says the same ("re-read").
        list.retain(|s| {
            !matches!(
                s.tx.try_send(Notice::Payload(payload.clone())),
                Err(mpsc::error::TrySendError::Closed(_))
            )
        });
    }
    if let Some(list) = by_payload.get_mut(&None) {
        list.retain_mut(|s| match s.tx.try_send(Notice::Payload(payload.clone())) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.owes_missed = true;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }
}

/// Tell every subscriber it may have missed notifications.
fn broadcast_missed(inner: &Inner) {
    let mut subs = inner.subs.lock().unwrap_or_else(|p| p.into_inner());
    for list in subs.by_channel.values_mut().flat_map(|m| m.values_mut()) {
        for s in list.iter_mut() {
            if s.tx.try_send(Notice::Missed).is_err() {
                s.owes_missed = true;
            }
        }
    }
    drop(subs);
    settle_missed(inner);
}

/// Hand [`Notice::Missed`] to those owed it, as soon as they have room.
fn settle_missed(inner: &Inner) {
    let mut subs = inner.subs.lock().unwrap_or_else(|p| p.into_inner());
    for list in subs.by_channel.values_mut().flat_map(|m| m.values_mut()) {
        for s in list.iter_mut().filter(|s| s.owes_missed) {
            // A full queue of one payload already says "re-read".
            match s.tx.try_send(Notice::Missed) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => s.owes_missed = false,
                Err(mpsc::error::TrySendError::Full(_)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_pg::fresh_database;

    const SOON: Duration = Duration::from_secs(10);

    fn node(url: &str) -> (Database, Listener) {
        let db = Database::SharedPostgres(url.to_string());
        let listener = Listener::start(&db, Duration::from_millis(5)).expect("listener");
        (db, listener)
    }

    async fn next(sub: &mut Subscription) -> Notice {
        tokio::time::timeout(SOON, sub.recv())
            .await
            .expect("a notice in time")
            .expect("listener alive")
    }

    /// Nothing arrives within a short while (the poll runs every 5 ms).
    async fn quiet(sub: &mut Subscription) {
        let got = tokio::time::timeout(Duration::from_millis(300), sub.recv()).await;
        assert!(got.is_err(), "unexpected notice: {got:?}");
    }

    #[tokio::test]
    async fn notifications_reach_subscribers_by_channel_and_payload_only_on_commit() {
        let Some(url) = fresh_database("notify_by_payload") else {
            return;
        };
        let (db, listener) = node(&url);
        let mut all = listener.subscribe(LOGS, None);
        let mut one = listener.subscribe(LOGS, Some("w1"));
        let mut other = listener.subscribe(TERMINAL, Some("w1"));
        let mut conn = db.connect().expect("connect");

        // Rolled back: never delivered.
        let _ = crate::store::write_transaction(&mut conn, |c| {
            notify(c, LOGS, &["w1".into()])?;
            Err::<(), _>(StoreError::Unavailable)
        });
        quiet(&mut all).await;

        // Committed: each payload once, identical ones folded by the server.
        crate::store::write_transaction(&mut conn, |c| {
            notify(c, LOGS, &["w1".into(), "w2".into()])?;
            notify(c, LOGS, &["w1".into()])
        })
        .expect("commit");
        let mut got = vec![next(&mut all).await, next(&mut all).await];
        got.sort_by_key(|n| format!("{n:?}"));
        assert_eq!(
            got,
            vec![Notice::Payload("w1".into()), Notice::Payload("w2".into())]
        );
        quiet(&mut all).await;
        assert_eq!(next(&mut one).await, Notice::Payload("w1".into()));
        quiet(&mut one).await;
        quiet(&mut other).await;

        // A dropped subscription is forgotten; the others go on.
        drop(one);
        crate::store::write_transaction(&mut conn, |c| notify(c, LOGS, &["w1".into()]))
            .expect("commit");
        assert_eq!(next(&mut all).await, Notice::Payload("w1".into()));
    }

    #[tokio::test]
    async fn a_terminated_listen_connection_is_reopened_and_subscribers_are_told_they_missed() {
        let Some(url) = fresh_database("notify_reconnect") else {
            return;
        };
        let (db, listener) = node(&url);
        let mut sub = listener.subscribe(KILL, Some("w1"));
        let first = listener.backend_pid().expect("connected");
        let mut conn = db.connect().expect("connect");
        let DbConnection::Pg(pg) = &mut conn else {
            unreachable!("a PostgreSQL database")
        };
        diesel::sql_query(format!("SELECT pg_terminate_backend({first})"))
            .execute(pg)
            .expect("terminate");
        assert_eq!(next(&mut sub).await, Notice::Missed);
        let second = listener.backend_pid().expect("reconnected");
        assert_ne!(first, second, "a new connection");
        crate::store::write_transaction(&mut conn, |c| notify(c, KILL, &["w1".into()]))
            .expect("commit");
        assert_eq!(next(&mut sub).await, Notice::Payload("w1".into()));
    }

    #[tokio::test]
    async fn the_thread_stops_and_its_connection_closes_when_the_listener_is_dropped() {
        let Some(url) = fresh_database("notify_stop") else {
            return;
        };
        let (db, listener) = node(&url);
        let pid = listener.backend_pid().expect("connected");
        drop(listener);
        let mut conn = db.connect().expect("connect");
        let DbConnection::Pg(pg) = &mut conn else {
            unreachable!("a PostgreSQL database")
        };
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let start = Instant::now();
        loop {
            let n = diesel::sql_query(format!(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = {pid}"
            ))
            .get_result::<N>(pg)
            .expect("count")
            .n;
            if n == 0 {
                break;
            }
            assert!(start.elapsed() < SOON, "listen connection still open");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
