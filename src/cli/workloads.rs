//! `vulcan status`, `logs`, `ls` and `kill`.

use std::io::IsTerminal;

use clap::Args;
use serde_json::{json, Value};

use super::output::{self, Table};
use super::{parse_id, CliError, Connection, Outcome};
use crate::client::{ListFilter, LogEvent};
use crate::model::{format_time, Isolation, Output, Runtime, Status, Workload, WorkloadId};

/// `vulcan status ID`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The workload id.
    #[arg(value_parser = parse_id)]
    pub id: WorkloadId,
    #[command(flatten)]
    pub conn: Connection,
}

/// `vulcan logs ID`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The workload id.
    #[arg(value_parser = parse_id)]
    pub id: WorkloadId,
    /// Follow: print lines live until the workload ends (resumes after a dropped
    /// connection); the exit status is then the workload's.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only lines after this sequence number.
    #[arg(long, value_name = "SEQ")]
    pub after: Option<u64>,
    #[command(flatten)]
    pub conn: Connection,
}

/// `vulcan ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only workloads with this status.
    #[arg(long, short = 's')]
    pub status: Option<Status>,
    /// Only workloads of this runtime.
    #[arg(long, short = 'r')]
    pub runtime: Option<Runtime>,
    /// Only workloads of this isolation class.
    #[arg(long, short = 'i')]
    pub isolation: Option<Isolation>,
    /// At most this many (the server allows 1 to 100; its default is 20).
    #[arg(long, short = 'n', value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub limit: Option<u32>,
    /// Skip this many (paging).
    #[arg(long, value_name = "N")]
    pub offset: Option<u64>,
    #[command(flatten)]
    pub conn: Connection,
}

/// `vulcan kill ID`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// The workload id.
    #[arg(value_parser = parse_id)]
    pub id: WorkloadId,
    #[command(flatten)]
    pub conn: Connection,
}

/// Show one workload; the exit status follows its status (0 while not failed/killed).
pub async fn status(args: StatusArgs) -> Result<Outcome, CliError> {
    let w = args.conn.client()?.get(args.id).await?;
    if args.conn.json {
        output::json(&w.raw);
    } else {
        print!("{}", describe(&w));
    }
    Ok(Outcome::Workload(w.status))
}

/// A workload as aligned `label  value` lines.
fn describe(w: &Workload) -> String {
    let time = |t: Option<&chrono::DateTime<chrono::Utc>>| t.map_or("-".to_string(), format_time);
    let output = match w.output.as_ref().map(Output::to_value) {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.trim_end().to_string(),
        Some(v) => v.to_string(),
    };
    let rows = [
        ("id", w.id.to_string()),
        ("status", output::status(w.status)),
        ("runtime", w.runtime.to_string()),
        (
            "isolation",
            format!("{} (requested {})", w.isolation, w.requested_isolation),
        ),
        ("backend", w.backend.clone()),
        ("node", w.node_id.clone()),
        (
            "limits",
            format!(
                "{} cpu, {} MiB, {} s",
                w.cpu_limit, w.mem_limit, w.timeout_s
            ),
        ),
        ("created", time(Some(&w.created_at))),
        ("started", time(w.started_at.as_ref())),
        ("finished", time(w.finished_at.as_ref())),
        ("duration", output::millis(w.duration_ms.map(|d| d as f64))),
        (
            "exit code",
            w.exit_code.map_or("-".to_string(), |c| c.to_string()),
        ),
        ("error", w.error.clone().unwrap_or_else(|| "-".into())),
        ("output", output),
    ];
    let mut table = Table::new(&["", ""], &[]);
    for (label, value) in rows {
        table.row(vec![output::bold(label), value]);
    }
    // No header line: the first rendered line is the blank header.
    table
        .render()
        .lines()
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect()
}

/// List workloads as a table (or the server's page with `--json`).
pub async fn ls(args: LsArgs) -> Result<Outcome, CliError> {
    let filter = ListFilter {
        status: args.status.map(|s| s.to_string()),
        runtime: args.runtime.map(|r| r.to_string()),
        isolation: args.isolation.map(|i| i.to_string()),
        limit: args.limit,
        offset: args.offset,
    };
    let page = args.conn.client()?.list(&filter).await?;
    if args.conn.json {
        output::json(&page.raw);
        return Ok(Outcome::Ok);
    }
    let mut table = Table::new(
        &[
            "ID",
            "STATUS",
            "RUNTIME",
            "ISOLATION",
            "BACKEND",
            "DURATION",
            "CREATED",
        ],
        &["DURATION"],
    );
    for w in &page.workloads {
        table.row(vec![
            w.id.to_string(),
            output::status(w.status),
            w.runtime.to_string(),
            w.isolation.to_string(),
            w.backend.clone(),
            output::millis(w.duration_ms.map(|d| d as f64)),
            format_time(&w.created_at),
        ]);
    }
    table.print();
    let shown = page.workloads.len() as u64;
    if shown < page.total {
        output::note(&format!(
            "{shown} of {} shown (from offset {}); --limit and --offset page through the rest",
            page.total, page.offset
        ));
    }
    Ok(Outcome::Ok)
}

/// Kill a workload; exit 0 when the kill was done (the server refuses a terminal one:
/// 409, exit 2).
pub async fn kill(args: KillArgs) -> Result<Outcome, CliError> {
    let w = args.conn.client()?.kill(args.id).await?;
    if args.conn.json {
        output::json(&w.raw);
    } else {
        println!("{} {}", w.id, output::status(w.status));
    }
    Ok(Outcome::Ok)
}

/// Print recorded lines (every page), or follow them live with `-f`. With `--json`,
/// one JSON object per line: `{"seq","line","created_at"}` from the history, `{"seq",
/// "line"}` from the live stream, and `{"done": status}` at its end.
pub async fn logs(args: LogsArgs) -> Result<Outcome, CliError> {
    let client = args.conn.client()?;
    let json = args.conn.json;
    if !args.follow {
        let mut after = args.after;
        loop {
            let page = client.log_history(args.id, after).await?;
            if json {
                // The server's objects, as sent (older servers ignore `after`).
                let raw_lines = page.raw.get("lines").and_then(Value::as_array);
                let newer =
                    |r: &&Value| after.is_none_or(|a| r["seq"].as_u64().is_some_and(|seq| seq > a));
                for raw in raw_lines.into_iter().flatten().filter(newer) {
                    println!("{raw}");
                }
            } else {
                for line in &page.lines {
                    println!("{}", line.line);
                }
            }
            match page.next_after {
                // Only forward: a server that repeats a cursor cannot loop us.
                Some(next) if after.is_none_or(|a| next > a) => after = Some(next),
                _ => return Ok(Outcome::Ok),
            }
        }
    }
    let mut stream = client.logs_stream(args.id, args.after);
    while let Some(event) = stream.next().await? {
        match event {
            LogEvent::Line { seq, line } => {
                if json {
                    println!("{}", json!({"seq": seq, "line": line}));
                } else {
                    println!("{line}");
                }
            }
            LogEvent::Resumed { .. } => output::note("log stream dropped; resumed without loss"),
            LogEvent::Done(status) => {
                if json {
                    println!("{}", json!({ "done": status }));
                } else if std::io::stderr().is_terminal() {
                    output::note(&format!("workload {}: {}", args.id, output::status(status)));
                }
                return Ok(Outcome::Workload(status));
            }
        }
    }
    Ok(Outcome::Ok)
}
