//! The cluster's statements (issue 17): the nodes table (registration, heartbeat,
//! declaring a node lost) and the shared queue (claiming pending work with
//! `FOR UPDATE SKIP LOCKED`). PostgreSQL only: a cluster shares one PostgreSQL
//! database ([`super::Database::SharedPostgres`]); a single node never runs them.
//!
//! Fencing: a node claims work under its current `generation` and records it on the
//! workload (`node_generation`); every status write of claimed work matches that pair
//! in its WHERE ([`Fence::filter`]), so a node declared lost (its generation bumped by
//! the survivor) cannot overwrite what the survivor decided.

use chrono::{DateTime, Utc};
use diesel::dsl::{exists, not};
use diesel::pg::PgConnection;
use diesel::prelude::*;

use super::models::{parse, parse_time, WorkloadRow};
use super::queries::{load_payload, payload_bytes, webhook_due, PendingWork};
use super::schema::{nodes, workloads};
use super::{notify, DbConnection, StoreError};
use crate::model::{
    format_time, BackendCapacity, NodeInfo, NodeState, Runtime, Status, Workload, WorkloadId,
};

/// The error recorded on the running workloads of a node declared lost.
pub const NODE_LOST: &str = "node lost";

/// The transaction-level advisory lock a node holds while it declares nodes lost, so
/// exactly one survivor does it at a time ("vulcanr" in ASCII).
pub const REAPER_LOCK: i64 = 0x76_75_6c_63_61_6e_72;

/// The error recorded on work killed by request (as a kill on its own node records it).
pub const KILLED_BY_REQUEST: &str = "killed by request";

/// The `node_id` of pending work recorded by a cluster node and claimed by none yet.
pub const UNCLAIMED: &str = "";

/// Whose writes these are: a node and the generation it registered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The node.
    pub node_id: String,
    /// Its current generation.
    pub generation: i64,
}

/// The WHERE of a fenced status write (see [`Fence::guard`]).
pub type Guard<'a> = diesel::dsl::Or<
    diesel::dsl::And<
        diesel::dsl::Eq<workloads::node_id, &'a str>,
        diesel::dsl::Eq<workloads::node_generation, i64>,
    >,
    diesel::dsl::EqAny<workloads::node_id, Vec<&'static str>>,
>;

impl Fence {
    /// What a status write to `to` by this node may touch: work it claimed under this
    /// generation; for a kill also pending work no node has claimed (killed where it
    /// waits in the shared queue). Never a row a survivor put back in the queue or
    /// another node claimed.
    pub fn guard(&self, to: Status) -> Guard<'_> {
        let unclaimed: Vec<&'static str> = if to == Status::Killed {
            vec![UNCLAIMED]
        } else {
            Vec::new()
        };
        workloads::node_id
            .eq(self.node_id.as_str())
            .and(workloads::node_generation.eq(self.generation))
            .or(workloads::node_id.eq_any(unclaimed))
    }
}

/// A row of the nodes table.
#[derive(Debug, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = nodes)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct NodeRow {
    node_id: String,
    generation: i64,
    backends: String,
    started_at: String,
    heartbeat_at: String,
    state: String,
}

impl TryFrom<NodeRow> for NodeInfo {
    type Error = StoreError;

    fn try_from(r: NodeRow) -> Result<Self, StoreError> {
        Ok(NodeInfo {
            backends: serde_json::from_str(&r.backends)
                .map_err(|e| StoreError::Corrupt(format!("node backends: {e}")))?,
            state: parse("node state", &r.state)?,
            started_at: parse_time(&r.started_at)?,
            last_heartbeat: parse_time(&r.heartbeat_at)?,
            node_id: r.node_id,
            generation: r.generation,
        })
    }
}

fn pg(conn: &mut DbConnection) -> Result<&mut PgConnection, StoreError> {
    match conn {
        DbConnection::Pg(c) => Ok(c),
        DbConnection::Sqlite(_) => Err(StoreError::Connection(
            "a cluster shares a PostgreSQL database; this one is SQLite".into(),
        )),
    }
}

fn backends_json(backends: &[BackendCapacity]) -> Result<String, StoreError> {
    serde_json::to_string(backends).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Register `node_id` (starting at `now`) and answer its new generation: one more than
/// the row's, or 1 for a new node. Refused ([`StoreError::NodeLive`]) while a node
/// with that id is alive and heartbeated after `live_after`: two processes must not
/// act as one node.
pub fn register(
    conn: &mut DbConnection,
    node_id: &str,
    backends: &[BackendCapacity],
    now: DateTime<Utc>,
    live_after: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let c = pg(conn)?;
    let json = backends_json(backends)?;
    c.transaction(|c| {
        let row: Option<NodeRow> = nodes::table
            .find(node_id)
            .select(NodeRow::as_select())
            .for_update()
            .first(c)
            .optional()?;
        let generation = match &row {
            Some(r)
                if r.state == NodeState::Alive.as_str()
                    && parse_time(&r.heartbeat_at)? > live_after =>
            {
                return Err(StoreError::NodeLive(format!(
                    "node_id {node_id:?} belongs to a live node (last heartbeat {}): \
                     give this server its own node_id, or wait until the other one has \
                     been gone for cluster.node_timeout_s",
                    r.heartbeat_at
                )));
            }
            Some(r) => r.generation + 1,
            None => 1,
        };
        let row = NodeRow {
            node_id: node_id.to_string(),
            generation,
            backends: json,
            started_at: format_time(&now),
            heartbeat_at: format_time(&now),
            state: NodeState::Alive.as_str().into(),
        };
        diesel::insert_into(nodes::table)
            .values(&row)
            .on_conflict(nodes::node_id)
            .do_update()
            .set(&row)
            .execute(c)?;
        // Work this node had claimed under an earlier generation and not started goes
        // back to the queue (its status writes would be fenced now), unless somebody
        // asked to kill it meanwhile.
        kill_requested(
            c,
            &[node_id.to_string()],
            &[Status::Pending],
            None,
            &[],
            now,
        )?;
        diesel::update(
            workloads::table
                .filter(workloads::node_id.eq(node_id))
                .filter(workloads::status.eq(Status::Pending.as_str())),
        )
        .set((
            workloads::node_id.eq(UNCLAIMED),
            workloads::node_generation.eq(0i64),
        ))
        .execute(c)?;
        Ok(generation)
    })
}

/// Record a heartbeat of `fence`'s node with its backends' figures. Answers
/// [`StoreError::Fenced`] when the node is no longer alive under that generation (a
/// survivor declared it lost): it must stop its work and register again.
pub fn heartbeat(
    conn: &mut DbConnection,
    fence: &Fence,
    backends: &[BackendCapacity],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let json = backends_json(backends)?;
    let n = diesel::update(
        nodes::table
            .filter(nodes::node_id.eq(&fence.node_id))
            .filter(nodes::generation.eq(fence.generation))
            .filter(nodes::state.eq(NodeState::Alive.as_str())),
    )
    .set((
        nodes::heartbeat_at.eq(format_time(&now)),
        nodes::backends.eq(json),
    ))
    .execute(pg(conn)?)?;
    if n == 0 {
        return Err(StoreError::Fenced);
    }
    Ok(())
}

/// `fence`'s node leaves the cluster (graceful shutdown, after its running work was
/// recorded): marked lost with its generation bumped, so its id can register again at
/// once, and the work it claimed and did not start goes back to the queue. Answers
/// how many workloads were re-queued; nothing happens for a node fenced already.
pub fn leave(conn: &mut DbConnection, fence: &Fence) -> Result<usize, StoreError> {
    let left = diesel::update(
        nodes::table
            .filter(nodes::node_id.eq(&fence.node_id))
            .filter(nodes::generation.eq(fence.generation))
            .filter(nodes::state.eq(NodeState::Alive.as_str())),
    )
    .set((
        nodes::state.eq(NodeState::Lost.as_str()),
        nodes::generation.eq(nodes::generation + 1),
    ))
    .execute(pg(conn)?)?;
    if left == 0 {
        return Ok(0);
    }
    kill_requested(
        pg(conn)?,
        std::slice::from_ref(&fence.node_id),
        &[Status::Pending],
        None,
        &[],
        Utc::now(),
    )?;
    Ok(diesel::update(
        workloads::table
            .filter(workloads::node_id.eq(&fence.node_id))
            .filter(workloads::status.eq(Status::Pending.as_str())),
    )
    .set((
        workloads::node_id.eq(UNCLAIMED),
        workloads::node_generation.eq(0i64),
    ))
    .execute(pg(conn)?)?)
}

/// Every node, by id.
pub fn list(conn: &mut DbConnection) -> Result<Vec<NodeInfo>, StoreError> {
    nodes::table
        .order(nodes::node_id.asc())
        .select(NodeRow::as_select())
        .load(pg(conn)?)?
        .into_iter()
        .map(NodeInfo::try_from)
        .collect()
}

/// Claim for `fence`'s node, per backend, up to the number of free slots it names of
/// the oldest pending unclaimed work (FIFO per backend: `created_at`, then `id`), rows
/// other nodes are claiming meanwhile skipped (`FOR UPDATE SKIP LOCKED`). Each claim is
/// one UPDATE recording the node and its generation, and only while the node is alive
/// under that generation (a fenced node claims nothing). Answers the claimed work like
/// recovery does (payload left in the table, except for OCI workloads).
pub fn claim(
    conn: &mut DbConnection,
    fence: &Fence,
    wants: &[(String, usize)],
) -> Result<Vec<PendingWork>, StoreError> {
    let mut out = Vec::new();
    for (backend, free) in wants {
        if *free == 0 {
            continue;
        }
        // One statement: the claim and the node's fence check together. Diesel's
        // DSL cannot put a locking subselect in an UPDATE's WHERE, hence the text.
        #[derive(QueryableByName)]
        struct Claimed {
            #[diesel(sql_type = diesel::sql_types::Text)]
            id: String,
        }
        let ids: Vec<Claimed> = diesel::sql_query(
            "UPDATE workloads SET node_id = $1, node_generation = $2 \
             WHERE id IN (SELECT id FROM workloads \
                 WHERE status = 'pending' AND node_id = '' AND backend = $3 \
                 ORDER BY created_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) \
             AND EXISTS (SELECT 1 FROM nodes \
                 WHERE node_id = $1 AND generation = $2 AND state = 'alive') \
             RETURNING id",
        )
        .bind::<diesel::sql_types::Text, _>(&fence.node_id)
        .bind::<diesel::sql_types::BigInt, _>(fence.generation)
        .bind::<diesel::sql_types::Text, _>(backend)
        .bind::<diesel::sql_types::BigInt, _>(i64::try_from(*free).unwrap_or(i64::MAX))
        .load(pg(conn)?)?;
        if ids.is_empty() {
            continue;
        }
        let ids: Vec<String> = ids.into_iter().map(|c| c.id).collect();
        let claimed: Vec<(WorkloadRow, i64)> = workloads::table
            .filter(workloads::id.eq_any(&ids))
            .order((workloads::created_at.asc(), workloads::id.asc()))
            .select((WorkloadRow::as_select(), payload_bytes(true)))
            .load(pg(conn)?)?;
        for (row, bytes) in claimed {
            let workload = Workload::try_from(row)?;
            let payload = if workload.runtime == Runtime::Oci {
                Some(load_payload(conn, workload.id)?)
            } else {
                None
            };
            out.push(PendingWork {
                workload,
                payload_bytes: bytes.max(0) as u64,
                payload,
            });
        }
    }
    Ok(out)
}

/// Put back in the queue the work `fence`'s node has claimed (under its generation)
/// and not started, except `held` (what the node holds locally). Such an orphan exists
/// when a claim committed but its answer never reached the node (the connection broke
/// at the commit). Answers the ids re-queued.
pub fn requeue_orphans(
    conn: &mut DbConnection,
    fence: &Fence,
    held: &[WorkloadId],
) -> Result<Vec<WorkloadId>, StoreError> {
    let held: Vec<String> = held.iter().map(ToString::to_string).collect();
    kill_requested(
        pg(conn)?,
        std::slice::from_ref(&fence.node_id),
        &[Status::Pending],
        Some(fence.generation),
        &held,
        Utc::now(),
    )?;
    let ids: Vec<String> = diesel::update(
        workloads::table
            .filter(workloads::node_id.eq(&fence.node_id))
            .filter(workloads::node_generation.eq(fence.generation))
            .filter(workloads::status.eq(Status::Pending.as_str()))
            .filter(not(workloads::id.eq_any(held))),
    )
    .set((
        workloads::node_id.eq(UNCLAIMED),
        workloads::node_generation.eq(0i64),
    ))
    .returning(workloads::id)
    .get_results(pg(conn)?)?;
    ids.iter().map(|id| parse("id", id)).collect()
}

/// Of `ids`, those still pending and claimed by no node.
pub fn still_unclaimed(
    conn: &mut DbConnection,
    ids: &[WorkloadId],
) -> Result<Vec<WorkloadId>, StoreError> {
    let keys: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let mut out = Vec::with_capacity(keys.len());
    // PostgreSQL binds at most 65535 parameters per statement.
    for chunk in keys.chunks(10_000) {
        let found: Vec<String> = workloads::table
            .filter(workloads::id.eq_any(chunk))
            .filter(workloads::status.eq(Status::Pending.as_str()))
            .filter(workloads::node_id.eq(UNCLAIMED))
            .select(workloads::id)
            .load(pg(conn)?)?;
        for id in found {
            out.push(parse("id", &id)?);
        }
    }
    Ok(out)
}

/// Kill the work of `nodes` in one of the statuses `from` (claimed under `generation`
/// when given, except `held`) that somebody asked to kill (`kill_requested_at`): its
/// node will not run it or see it to its end (lost, restarting, leaving, or it lost
/// track of it). Pending work put back in the queue would let another node run it;
/// running work of a lost node has stopped with it, and the user asked for that. Every
/// place that re-queues claimed work calls this first for its pending rows, and the
/// reaper for the running ones too, in the same transaction. The records are written
/// as a kill on the work's own node writes them ([`KILLED_BY_REQUEST`], the webhook
/// enqueued in the same statement) and announced ([`notify::TERMINAL`]: the asking
/// node, waiters and log streams on every node wait for it). Answers the killed records.
fn kill_requested(
    c: &mut PgConnection,
    nodes: &[String],
    from: &[Status],
    generation: Option<i64>,
    held: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<Workload>, StoreError> {
    let at = format_time(&now);
    let from: Vec<&'static str> = from.iter().map(|s| s.as_str()).collect();
    let mut target = workloads::table
        .filter(workloads::node_id.eq_any(nodes))
        .filter(workloads::status.eq_any(&from))
        .filter(workloads::kill_requested_at.is_not_null())
        .filter(not(workloads::id.eq_any(held)))
        .into_boxed();
    if let Some(g) = generation {
        target = target.filter(workloads::node_generation.eq(g));
    }
    let ids: Vec<String> = target.select(workloads::id).load(c)?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let killed: Vec<WorkloadRow> = diesel::update(
        workloads::table
            .filter(workloads::id.eq_any(&ids))
            .filter(workloads::status.eq_any(&from)),
    )
    .set((
        workloads::status.eq(Status::Killed.as_str()),
        workloads::finished_at.eq(&at),
        workloads::error.eq(KILLED_BY_REQUEST),
        webhook_due(&at),
    ))
    .returning(WorkloadRow::as_returning())
    .get_results(c)?;
    let killed: Vec<Workload> = killed
        .into_iter()
        .map(Workload::try_from)
        .collect::<Result<_, _>>()?;
    let ids: Vec<String> = killed.iter().map(|w| w.id.to_string()).collect();
    notify::notify_pg(c, notify::TERMINAL, &ids)?;
    Ok(killed)
}

/// What [`reap`] did.
#[derive(Debug, Default)]
pub struct Reaped {
    /// Nodes declared lost.
    pub nodes: Vec<String>,
    /// Their running workloads nobody asked to kill, now failed ([`NODE_LOST`]).
    pub failed: Vec<Workload>,
    /// Their claimed-but-unstarted workloads nobody asked to kill, back in the queue.
    pub requeued: Vec<WorkloadId>,
    /// Their running or claimed-but-unstarted workloads somebody asked to kill: killed
    /// ([`KILLED_BY_REQUEST`]), neither failed nor re-queued.
    pub killed: Vec<Workload>,
}

/// Declare lost every alive node other than `fence`'s whose last heartbeat is older
/// than `stale_before`, if this node is alive under its generation and wins
/// [`REAPER_LOCK`] (held to the end of the writer's transaction: one survivor at a
/// time). A lost node's generation is bumped (fenced). Its live work that somebody
/// asked to kill (`kill_requested_at`, running or not started) is killed; its other
/// running workloads fail with [`NODE_LOST`]; its other pending ones go back to the
/// queue. Every terminal record has its webhook enqueued in the statement that writes
/// it and is announced on [`notify::TERMINAL`] in this transaction, as every terminal
/// write is.
pub fn reap(
    conn: &mut DbConnection,
    fence: &Fence,
    stale_before: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Reaped, StoreError> {
    let c = pg(conn)?;
    let mut out = Reaped::default();
    let won: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "pg_try_advisory_xact_lock({REAPER_LOCK})"
    )))
    .get_result(c)?;
    if !won {
        return Ok(out);
    }
    let me_alive: bool = diesel::select(exists(
        nodes::table
            .filter(nodes::node_id.eq(&fence.node_id))
            .filter(nodes::generation.eq(fence.generation))
            .filter(nodes::state.eq(NodeState::Alive.as_str())),
    ))
    .get_result(c)?;
    if !me_alive {
        return Ok(out);
    }
    out.nodes = diesel::update(
        nodes::table
            .filter(nodes::state.eq(NodeState::Alive.as_str()))
            .filter(nodes::heartbeat_at.lt(format_time(&stale_before)))
            .filter(not(nodes::node_id.eq(&fence.node_id))),
    )
    .set((
        nodes::state.eq(NodeState::Lost.as_str()),
        nodes::generation.eq(nodes::generation + 1),
    ))
    .returning(nodes::node_id)
    .get_results(c)?;
    if out.nodes.is_empty() {
        return Ok(out);
    }
    // First: work the user asked to stop has stopped with its node; recording it
    // "node lost" would answer the kill with a failure (and the asking node with 409).
    out.killed = kill_requested(
        c,
        &out.nodes,
        &[Status::Running, Status::Pending],
        None,
        &[],
        now,
    )?;
    let at = format_time(&now);
    let failed: Vec<WorkloadRow> = diesel::update(
        workloads::table
            .filter(workloads::node_id.eq_any(&out.nodes))
            .filter(workloads::status.eq(Status::Running.as_str())),
    )
    .set((
        workloads::status.eq(Status::Failed.as_str()),
        workloads::finished_at.eq(&at),
        workloads::error.eq(NODE_LOST),
        webhook_due(&at),
    ))
    .returning(WorkloadRow::as_returning())
    .get_results(c)?;
    out.failed = failed
        .into_iter()
        .map(Workload::try_from)
        .collect::<Result<_, _>>()?;
    // Followers on other nodes (kills, waits, log streams) wake on it.
    let ids: Vec<String> = out.failed.iter().map(|w| w.id.to_string()).collect();
    notify::notify_pg(c, notify::TERMINAL, &ids)?;
    let requeued: Vec<String> = diesel::update(
        workloads::table
            .filter(workloads::node_id.eq_any(&out.nodes))
            .filter(workloads::status.eq(Status::Pending.as_str())),
    )
    .set((
        workloads::node_id.eq(UNCLAIMED),
        workloads::node_generation.eq(0i64),
    ))
    .returning(workloads::id)
    .get_results(c)?;
    out.requeued = requeued
        .iter()
        .map(|id| parse("id", id))
        .collect::<Result<_, _>>()?;
    Ok(out)
}
