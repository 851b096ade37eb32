//! `vulcan run`: submit, then wait (sync), return at once (`--async`) or stream the logs
//! live and then the result (`--follow`, where Ctrl-C offers to kill the workload).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::output::{self, Spinner};
use super::payload::{self, Source};
use super::{CliError, Connection, Outcome};
use crate::client::{Answer, Client, ClientError, LogEvent};
use crate::model::{
    IsolationRequest, Output, ResourcesDto, Runtime, Status, Workload, WorkloadId,
    WorkloadRequestDto,
};

/// `vulcan run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The code: a file (.js .mjs .py .go .wasm .wat; a .tar.gz with --runtime), a
    /// directory (sent as a tar.gz code archive) or `-` for stdin.
    #[arg(
        value_name = "FILE|-",
        required_unless_present = "image",
        conflicts_with = "image"
    )]
    pub file: Option<PathBuf>,
    /// Run this OCI image (runtime oci) instead of a file; `-- CMD...` replaces its
    /// entrypoint and command.
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// The command for `--image` (after `--`).
    #[arg(last = true, value_name = "CMD", requires = "image")]
    pub command: Vec<String>,
    /// node, wasm, python, go or oci (default: guessed from FILE's extension).
    #[arg(long, short = 'r')]
    pub runtime: Option<Runtime>,
    /// auto, isolate, gvisor or microvm (default: the server's `auto`).
    #[arg(long, short = 'i')]
    pub isolation: Option<IsolationRequest>,
    /// The workload's input: JSON text, `@FILE` or `@-` (stdin).
    #[arg(long, value_name = "JSON|@FILE")]
    pub input: Option<String>,
    /// CPUs (whole cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus: Option<u32>,
    /// Memory limit in MiB.
    #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u32).range(1..))]
    pub mem: Option<u32>,
    /// Wall-clock limit in seconds.
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..))]
    pub timeout: Option<u32>,
    /// Submit and print the id without waiting.
    #[arg(long = "async", conflicts_with = "follow")]
    pub detach: bool,
    /// Stream the logs live while it runs, then print the result.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// With --follow: Ctrl-C kills the workload without asking.
    #[arg(long, requires = "follow")]
    pub kill_on_interrupt: bool,
    #[command(flatten)]
    pub conn: Connection,
}

/// Submit as asked and report.
pub async fn run(args: RunArgs) -> Result<Outcome, CliError> {
    let limit = payload::body_limit()?;
    let source = match (&args.file, &args.image) {
        (_, Some(reference)) => Source::Image {
            reference: reference.clone(),
            command: args.command.clone(),
        },
        (Some(path), None) if path.as_os_str() == "-" => Source::Stdin,
        (Some(path), None) => Source::Path(path.clone()),
        (None, None) => {
            return Err(CliError::Usage(
                "nothing to run: give FILE or --image".into(),
            ))
        }
    };
    if source == Source::Stdin && args.input.as_deref() == Some("@-") {
        return Err(CliError::Usage(
            "stdin cannot carry both the code and the input".into(),
        ));
    }
    let input = args
        .input
        .as_deref()
        .map(|i| payload::parse_input(i, limit))
        .transpose()?;
    let resources =
        (args.cpus.is_some() || args.mem.is_some() || args.timeout.is_some()).then(|| {
            ResourcesDto {
                cpus: args.cpus.map(i64::from),
                mem_mb: args.mem.map(i64::from),
                timeout_s: args.timeout.map(i64::from),
            }
        });
    let body = WorkloadRequestDto {
        isolation: args.isolation.map(|i| i.as_str().to_string()),
        input,
        resources,
        ..Default::default()
    };
    let body = payload::build(&source, args.runtime, body, limit)?;
    let client = args.conn.client()?;
    let json = args.conn.json;

    if args.detach {
        let w = client.submit_async(&body).await?;
        if json {
            output::json(&w.raw);
        } else {
            println!("{}", w.id);
            output::note(&format!(
                "submitted; follow it with `vulcan logs -f {id}`, stop it with `vulcan kill {id}`",
                id = w.id
            ));
        }
        return Ok(Outcome::Ok);
    }
    if args.follow {
        return follow(&client, &body, json, args.kill_on_interrupt).await;
    }
    let spinner = Spinner::start(&format!("running {}", describe(&source)));
    let w = client.submit(&body).await?;
    spinner.stop();
    Ok(report(&w, json))
}

fn describe(source: &Source) -> String {
    match source {
        Source::Path(p) => p.display().to_string(),
        Source::Stdin => "code from stdin".into(),
        Source::Image { reference, .. } => reference.clone(),
    }
}

/// Print a terminal (or, after a failed kill, current) workload and map it to an
/// outcome: the output on stdout, the error on stderr.
fn report(w: &Answer<Workload>, json: bool) -> Outcome {
    if json {
        output::json(&w.raw);
        return Outcome::Workload(w.status);
    }
    output::workload_output(w.output.as_ref().map(Output::to_value).as_ref());
    let why = w.error.as_deref().unwrap_or("no reason given");
    match w.status {
        Status::Failed => output::error(&format!("workload {} failed: {why}", w.id)),
        Status::Killed => output::error(&format!("workload {} was killed: {why}", w.id)),
        Status::Completed if std::io::stderr().is_terminal() => output::note(&format!(
            "{} in {} on {} ({})",
            output::status(w.status),
            output::millis(w.duration_ms.map(|d| d as f64)),
            w.backend,
            w.id
        )),
        _ => {}
    }
    Outcome::Workload(w.status)
}

/// `--follow`: submit asynchronously, print the log lines as they arrive (to stderr
/// with `--json`, so stdout holds only the final JSON), then the result.
async fn follow(
    client: &Client,
    body: &WorkloadRequestDto,
    json: bool,
    kill_on_interrupt: bool,
) -> Result<Outcome, CliError> {
    // Installed before submitting: from here on Ctrl-C is ours to handle.
    let mut interrupts = signal(SignalKind::interrupt())
        .map_err(|e| CliError::Usage(format!("cannot handle Ctrl-C: {e}")))?;
    let submitted = client.submit_async(body).await?;
    let id = submitted.id;
    output::note(&format!("submitted {id}"));
    let spinner = Spinner::start(&format!("{id} running"));
    let mut stream = client.logs_stream(id, None);
    loop {
        tokio::select! {
            event = stream.next() => match event? {
                Some(LogEvent::Line { line, .. }) => spinner.suspend(|| {
                    if json {
                        eprintln!("{line}");
                    } else {
                        println!("{line}");
                    }
                }),
                Some(LogEvent::Resumed { .. }) => {
                    spinner.suspend(|| output::note("log stream dropped; resumed without loss"));
                }
                Some(LogEvent::Done(_)) | None => break,
            },
            _ = interrupts.recv() => {
                spinner.stop();
                return match interrupted(client, id, kill_on_interrupt, &mut interrupts).await? {
                    Some(w) => Ok(report(&w, json)),
                    None => {
                        output::note(&format!(
                            "workload {id} keeps running: stop it with `vulcan kill {id}`, \
                             follow it with `vulcan logs -f {id}`"
                        ));
                        Ok(Outcome::Interrupted)
                    }
                };
            }
        }
    }
    spinner.stop();
    let w = client.get(id).await?;
    Ok(report(&w, json))
}

/// Ctrl-C while following: kill (asked for, or confirmed at the prompt when stdin is a
/// terminal) and answer the workload as it ended; `None` leaves it running. Without a
/// terminal nobody can answer, so nothing is killed.
async fn interrupted(
    client: &Client,
    id: WorkloadId,
    kill_on_interrupt: bool,
    interrupts: &mut Signal,
) -> Result<Option<Answer<Workload>>, CliError> {
    let kill =
        kill_on_interrupt || (std::io::stdin().is_terminal() && confirm(id, interrupts).await);
    if !kill {
        return Ok(None);
    }
    match client.kill(id).await {
        Ok(w) => Ok(Some(w)),
        // It ended while we asked: report how.
        Err(ClientError::Api { status, .. }) if status.as_u16() == 409 => {
            Ok(Some(client.get(id).await?))
        }
        Err(e) => Err(e.into()),
    }
}

/// Ask on the terminal; a second Ctrl-C or anything but yes means no.
async fn confirm(id: WorkloadId, interrupts: &mut Signal) -> bool {
    eprint!("\nkill workload {id}? [y/N] ");
    let _ = std::io::stderr().flush();
    let read = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    });
    tokio::select! {
        answer = read => {
            let answer = answer.ok().and_then(Result::ok).unwrap_or_default();
            matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
        }
        _ = interrupts.recv() => {
            eprintln!();
            false
        }
    }
}
