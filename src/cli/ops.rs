//! `vulcan backends`, `restart` and `stats`: the operator's view.

use std::collections::BTreeMap;

use clap::Args;

use super::output::{self, Table};
use super::{CliError, Connection, Outcome};
use crate::client::BackendEntry;
use crate::model::{Isolation, Status};

/// `vulcan restart BACKEND`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// The backend's registry name (see `vulcan backends`).
    pub backend: String,
    #[command(flatten)]
    pub conn: Connection,
}

/// The registry as a table; why a backend is not healthy below it.
pub async fn backends(conn: Connection) -> Result<Outcome, CliError> {
    let list = conn.client()?.backends().await?;
    if conn.json {
        output::json(&list.raw);
        return Ok(Outcome::Ok);
    }
    let mut table = Table::new(
        &[
            "NAME",
            "STATUS",
            "RUNTIMES",
            "RUNNING",
            "QUEUED",
            "MAX",
            "RESTARTS",
            "WORKER_RESTARTS",
        ],
        &["RUNNING", "QUEUED", "MAX", "RESTARTS", "WORKER_RESTARTS"],
    );
    for b in list.iter() {
        table.row(row(b));
    }
    table.print();
    for b in list.iter() {
        if let Some(reason) = &b.reason {
            output::note(&format!("{}: {} ({reason})", b.name, b.status));
        }
        for limitation in &b.limitations {
            output::note(&format!("{}: limitation: {limitation}", b.name));
        }
    }
    Ok(Outcome::Ok)
}

fn row(b: &BackendEntry) -> Vec<String> {
    let runtimes: Vec<&str> = b
        .capabilities
        .supported_runtimes
        .iter()
        .map(|r| r.as_str())
        .collect();
    vec![
        b.name.clone(),
        output::health(&b.status),
        if runtimes.is_empty() {
            "-".into()
        } else {
            runtimes.join(",")
        },
        b.running.to_string(),
        b.queued.to_string(),
        b.capabilities.max_concurrency.to_string(),
        b.restarts.to_string(),
        b.worker_restarts.to_string(),
    ]
}

/// Restart one backend's actor and show its entry afterwards.
pub async fn restart(args: RestartArgs) -> Result<Outcome, CliError> {
    let b = args.conn.client()?.restart_backend(&args.backend).await?;
    if args.conn.json {
        output::json(&b.raw);
    } else {
        println!(
            "restarted {}: {} (restarts: {})",
            b.name,
            output::health(&b.status),
            b.restarts
        );
    }
    Ok(Outcome::Ok)
}

/// Counts by status and isolation, then durations per backend.
pub async fn stats(conn: Connection) -> Result<Outcome, CliError> {
    let stats = conn.client()?.stats().await?;
    if conn.json {
        output::json(&stats.raw);
        return Ok(Outcome::Ok);
    }
    // In lifecycle / declaration order, then any key this client does not know.
    let counts = |m: &BTreeMap<String, u64>, known: &[&str]| {
        known
            .iter()
            .copied()
            .chain(m.keys().map(String::as_str).filter(|k| !known.contains(k)))
            .map(|k| format!("{k} {}", m.get(k).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let statuses: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
    let isolations: Vec<&str> = Isolation::ALL.iter().map(|i| i.as_str()).collect();
    println!(
        "{} {}  {} {}",
        output::bold("total"),
        stats.total,
        output::bold("avg"),
        output::millis(Some(stats.avg_duration_ms))
    );
    println!(
        "{}  {}",
        output::bold("status   "),
        counts(&stats.by_status, &statuses)
    );
    println!(
        "{}  {}",
        output::bold("isolation"),
        counts(&stats.by_isolation, &isolations)
    );
    if !stats.by_backend.is_empty() {
        println!();
        let mut table = Table::new(
            &["BACKEND", "COUNT", "AVG", "P50", "P95"],
            &["COUNT", "AVG", "P50", "P95"],
        );
        for (name, b) in &stats.by_backend {
            table.row(vec![
                name.clone(),
                b.count.to_string(),
                output::millis(Some(b.avg_duration_ms)),
                output::millis(Some(b.p50_ms)),
                output::millis(Some(b.p95_ms)),
            ]);
        }
        table.print();
    }
    Ok(Outcome::Ok)
}
