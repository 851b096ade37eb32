//! `vulcan bench --only stores --db-url postgres://…`: the same figures on each store
//! topology, one after the other in one run, so they compare as ratios against the
//! first (SQLite, the embedded default): one node on SQLite, one node on PostgreSQL,
//! one cluster node on PostgreSQL, and `--nodes` cluster nodes sharing one PostgreSQL
//! database with the clients spread over them.
//!
//! Figures per topology: sync trivial JS latency (on the first node), async trivial JS
//! end to end, and accepted submissions/s (202, durably recorded) behind a backend that
//! holds its slot. Every topology boots fresh servers on a fresh database
//! ([`FreshDatabase`]), dropped afterwards. The servers share the machine with the
//! bench's clients and with the PostgreSQL server itself.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};

use vulcan::backends::{Backend, BackendFactory};

use super::{
    async_env, block_on, check_trivial, count_with, drain, one_connection, submit_async,
    sync_latency, BenchError, BenchOptions, BenchServer, BenchStore, HoldBackend, Percentiles,
    Throughput, TRIVIAL_BODY,
};

static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);

/// A new, empty database on a PostgreSQL server, dropped (with `FORCE`: the servers
/// that used it are stopped by then) when this is dropped.
pub struct FreshDatabase {
    server_url: String,
    name: String,
    url: String,
}

impl FreshDatabase {
    /// Create `vulcan_bench_<pid>_<n>` on the server at `server_url` (whose role must be
    /// allowed to create databases).
    pub fn create(server_url: &str) -> Result<Self, BenchError> {
        let mut url = url::Url::parse(server_url)
            .map_err(|e| BenchError::Setup(format!("--db-url {server_url:?}: {e}")))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(BenchError::Setup(format!(
                "--db-url {server_url:?}: not a postgres:// URL"
            )));
        }
        let name = format!(
            "vulcan_bench_{}_{}",
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = PgConnection::establish(server_url)
            .map_err(|e| BenchError::Setup(format!("connect to {server_url}: {e}")))?;
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .map_err(|e| BenchError::Setup(format!("create database {name}: {e}")))?;
        url.set_path(&name);
        Ok(Self {
            server_url: server_url.to_string(),
            name,
            url: url.into(),
        })
    }

    /// The new database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let dropped = PgConnection::establish(&self.server_url)
            .map_err(|e| e.to_string())
            .and_then(|mut admin| {
                diesel::sql_query(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .execute(&mut admin)
                .map_err(|e| e.to_string())
            });
        if let Err(e) = dropped {
            log::warn!("bench database {} left behind: {e}", self.name);
        }
    }
}

/// The PostgreSQL server's version and durability settings, which decide what a
/// commit costs (`synchronous_commit = on` waits for the WAL flush: one `fsync`).
pub fn server_settings(server_url: &str) -> Result<String, BenchError> {
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
    }
    let mut conn = PgConnection::establish(server_url)
        .map_err(|e| BenchError::Setup(format!("connect to {server_url}: {e}")))?;
    let mut show = |what: &str| {
        diesel::sql_query(format!("SELECT current_setting('{what}') AS value"))
            .get_result::<Setting>(&mut conn)
            .map(|s| s.value)
            .map_err(|e| BenchError::Setup(format!("{what}: {e}")))
    };
    Ok(format!(
        "PostgreSQL {}, fsync = {}, synchronous_commit = {}",
        show("server_version")?,
        show("fsync")?,
        show("synchronous_commit")?
    ))
}

/// One topology's figures.
#[derive(Debug, Clone)]
pub struct StoreFigures {
    /// What ran, e.g. "PostgreSQL, 2 cluster nodes".
    pub label: String,
    /// Sync trivial JS round trips on the first node.
    pub sync: Percentiles,
    /// Async trivial JS end to end, clients spread over the nodes.
    pub throughput: Throughput,
    /// Accepted submissions (202, recorded), clients spread over the nodes.
    pub accepted: Throughput,
}

/// Every topology's figures and the PostgreSQL server they ran on.
#[derive(Debug, Clone)]
pub struct StoresReport {
    /// [`server_settings`] of the PostgreSQL server.
    pub server: String,
    /// One entry per topology, SQLite first.
    pub figures: Vec<StoreFigures>,
}

/// Measure every topology (see the module documentation). Needs `opts.db_url`.
pub fn run(opts: &BenchOptions) -> Result<StoresReport, BenchError> {
    let Some(server_url) = opts.db_url.clone() else {
        return Err(BenchError::Setup(
            "the stores section needs --db-url postgres://… (a server where the bench may \
             create databases)"
                .into(),
        ));
    };
    let server = server_settings(&server_url)?;
    let pg = |nodes: usize, cluster: bool| BenchStore::Postgres {
        server_url: server_url.clone(),
        nodes,
        cluster,
    };
    let mut topologies = vec![
        ("SQLite, 1 node".to_string(), BenchStore::Sqlite),
        ("PostgreSQL, 1 node".to_string(), pg(1, false)),
        ("PostgreSQL, 1 cluster node".to_string(), pg(1, true)),
    ];
    if opts.nodes > 1 {
        topologies.push((
            format!("PostgreSQL, {} cluster nodes", opts.nodes),
            pg(opts.nodes, true),
        ));
    }
    let mut figures = Vec::with_capacity(topologies.len());
    for (label, store) in topologies {
        log::info!("stores: {label}");
        figures.push(measure(opts, label, &store)?);
    }
    Ok(StoresReport { server, figures })
}

fn measure(
    opts: &BenchOptions,
    label: String,
    store: &BenchStore,
) -> Result<StoreFigures, BenchError> {
    let server = BenchServer::start_on(opts, store, &async_env(opts), Vec::new())?;
    let run = (|| {
        let sync = sync_latency(
            server.addr,
            TRIVIAL_BODY,
            check_trivial,
            opts.sync_warmup,
            opts.sync_samples,
        )?;
        let throughput = throughput(&server, opts.async_workloads, opts.async_clients)?;
        Ok::<_, BenchError>((sync, throughput))
    })();
    server.stop();
    let (sync, throughput) = run?;
    let accepted = accepted(opts, store)?;
    Ok(StoreFigures {
        label,
        sync,
        throughput,
        accepted,
    })
}

/// Submit `workloads` async over `clients` connections dealt round-robin to the nodes,
/// all at once; the time until every answer (each must be 202).
fn submit_spread(
    server: &BenchServer,
    workloads: usize,
    clients: usize,
) -> Result<Duration, BenchError> {
    let nodes = server.addrs.len();
    let clients = clients.clamp(nodes, workloads.max(nodes));
    // Node i gets clients i, i + nodes, ... and their share of the workloads.
    let node_clients = |i: usize| clients / nodes + usize::from(i < clients % nodes);
    let node_workloads = |i: usize| {
        (0..clients)
            .filter(|c| c % nodes == i)
            .map(|c| workloads / clients + usize::from(c < workloads % clients))
            .sum::<usize>()
    };
    let start = Instant::now();
    let results: Vec<Result<Duration, BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = server
            .addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                s.spawn(move || {
                    submit_async(addr, TRIVIAL_BODY, node_workloads(i), node_clients(i))
                        .map(|submitted| submitted.elapsed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BenchError::Setup("a submitting thread panicked".into()))
                })
            })
            .collect()
    });
    let elapsed = start.elapsed();
    for r in results {
        r?;
    }
    Ok(elapsed)
}

/// Async trivial JS end to end over every node: submitted, then polled on the first
/// node (the table is shared) until nothing is pending or running; all must complete.
fn throughput(
    server: &BenchServer,
    workloads: usize,
    clients: usize,
) -> Result<Throughput, BenchError> {
    let workloads = workloads.max(1);
    let base = server.base();
    let stats = one_connection()?;
    let before = block_on(count_with(&stats, &base, "completed"))??;
    let start = Instant::now();
    submit_spread(server, workloads, clients)?;
    drain(&stats, &base, start)?;
    let elapsed = start.elapsed();
    let done = block_on(count_with(&stats, &base, "completed"))?? - before;
    if done != workloads as u64 {
        return Err(BenchError::Http(format!(
            "of {workloads} trivial workloads {done} completed"
        )));
    }
    Ok(Throughput {
        workloads,
        clients: clients.max(server.addrs.len()),
        elapsed,
    })
}

/// Accepted submissions/s on `store`: every node's only backend holds its one slot, so
/// every submission after the first per node queues; all must be recorded.
fn accepted(opts: &BenchOptions, store: &BenchStore) -> Result<Throughput, BenchError> {
    let queued = opts.queued.max(1);
    let hold: BackendFactory = Arc::new(|| Arc::new(HoldBackend) as Arc<dyn Backend>);
    let server = BenchServer::start_on(
        opts,
        store,
        &[("VULCAN_MAX_QUEUE", (queued + 1_000).to_string())],
        vec![hold],
    )?;
    let run = (|| {
        let elapsed = submit_spread(&server, queued, opts.async_clients)?;
        let base = server.base();
        let client = one_connection()?;
        // A cluster node claims and starts its held workload after the 202s, so the
        // counts settle once every node holds one (or the work ran out).
        let nodes = server.addrs.len() as u64;
        let holding = nodes.min(queued as u64);
        let deadline = Instant::now() + Duration::from_secs(30);
        let (pending, running) = loop {
            let counts = block_on(async {
                let running = count_with(&client, &base, "running").await?;
                Ok::<_, BenchError>((count_with(&client, &base, "pending").await?, running))
            })??;
            if counts.1 == holding || Instant::now() > deadline {
                break counts;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if running != holding || pending + running != queued as u64 {
            return Err(BenchError::Http(format!(
                "{queued} accepted but {pending} pending and {running} running recorded \
                 ({holding} should hold a slot)"
            )));
        }
        Ok(Throughput {
            workloads: queued,
            clients: opts.async_clients.max(server.addrs.len()),
            elapsed,
        })
    })();
    server.stop();
    run
}

/// The section as Markdown: one row per topology, ratios against the first.
pub fn markdown(report: &StoresReport, opts: &BenchOptions, s: &mut String) {
    let figures = &report.figures;
    let _ = writeln!(s, "## Stores and nodes\n");
    let _ = writeln!(
        s,
        "Each row boots fresh in-process servers on a fresh database (the PostgreSQL \
         server given by `--db-url`, on this machine too) and measures: sync trivial JS \
         round trips on the first node ({} measured after {} warm-up), {} async trivial \
         JS workloads end to end and {} accepted submissions (202, each a committed row, \
         behind a backend that holds its one slot on every node) over {} connections \
         dealt round-robin to the nodes. Ratios are against the first row, measured in \
         the same run. Server: {}.\n",
        opts.sync_samples,
        opts.sync_warmup,
        opts.async_workloads,
        opts.queued,
        opts.async_clients,
        report.server
    );
    let _ = writeln!(
        s,
        "| store | sync p50 / p99 (ms) | async end to end /s | × | accepted /s | × |\n\
         |---|---|---|---|---|---|"
    );
    let base = figures.first();
    for f in figures {
        let ratio = |v: f64, b: Option<f64>| b.map_or("".into(), |b| format!("{:.2}", v / b));
        let tput = f.throughput.per_second();
        let acc = f.accepted.per_second();
        let _ = writeln!(
            s,
            "| {} | {:.2} / {:.2} | {:.0} | {} | {:.0} | {} |",
            f.label,
            f.sync.p50.as_secs_f64() * 1e3,
            f.sync.p99.as_secs_f64() * 1e3,
            tput,
            ratio(tput, base.map(|b| b.throughput.per_second())),
            acc,
            ratio(acc, base.map(|b| b.accepted.per_second())),
        );
    }
}
