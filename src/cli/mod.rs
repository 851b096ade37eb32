//! The `vulcan` client subcommands (`run`, `status`, `logs`, `ls`, `kill`, `backends`,
//! `restart`, `stats`): command-line parsing, human and `--json` output, exit statuses.
//! They talk to a server only through [`crate::client`]; nothing here touches the
//! server's layers.
//!
//! Exit statuses: 0 the workload completed (or the command succeeded), 1 it failed,
//! 2 usage or connection error (also any error answer from the server), 3 it was killed,
//! 130 interrupted with Ctrl-C while the workload keeps running.

mod ops;
mod output;
mod payload;
mod run;
mod workloads;

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::client::{Client, ClientError};
use crate::config::Config;
use crate::model::{Status, WorkloadId};

pub use ops::RestartArgs;
pub use run::RunArgs;
pub use workloads::{KillArgs, LogsArgs, LsArgs, StatusArgs};

/// Where the server is and how to authenticate; accepted by every client subcommand.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Server base URL [default: http:// + the server's default `listen_addr`, i.e.
    /// http://127.0.0.1:8080].
    #[arg(long, env = "VULCAN_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token for servers with auth on.
    #[arg(
        long,
        env = "VULCAN_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Print the server's JSON instead of human output (for scripts).
    #[arg(long)]
    pub json: bool,
}

impl Connection {
    fn client(&self) -> Result<Client, CliError> {
        let server = match &self.server {
            Some(s) => s.clone(),
            // Where a server started with the embedded defaults listens.
            None => Config::load_from(HashMap::new())
                .map(|c| format!("http://{}", c.listen_addr))
                .map_err(|e| CliError::Usage(e.to_string()))?,
        };
        Ok(Client::new(&server, self.token.as_deref())?)
    }
}

/// The client subcommands, flattened into the binary's command list.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Run a workload from FILE, a directory (sent as a code archive), `-` (stdin) or
    /// an OCI image (`--image REF [-- CMD...]`) and print its output.
    Run(RunArgs),
    /// Show one workload.
    Status(StatusArgs),
    /// Print a workload's log lines; `-f` follows them live until it ends.
    Logs(LogsArgs),
    /// List workloads, newest first.
    Ls(LsArgs),
    /// Kill a pending or running workload.
    Kill(KillArgs),
    /// List the registered backends with their health and load.
    Backends(ConnectionOnly),
    /// Restart a backend's actor (operators).
    Restart(RestartArgs),
    /// Counts and durations per status, isolation and backend.
    Stats(ConnectionOnly),
}

/// Arguments of subcommands that take nothing but the connection.
#[derive(Debug, Args)]
pub struct ConnectionOnly {
    #[command(flatten)]
    conn: Connection,
}

/// How a client command ended, before it becomes an exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done, nothing to report (exit 0).
    Ok,
    /// The workload the command waited for or reported on has this status.
    Workload(Status),
    /// Ctrl-C: the command stopped waiting; the workload keeps running.
    Interrupted,
}

impl Outcome {
    /// The exit status: 0 completed (or nothing to report, or still pending/running),
    /// 1 failed, 3 killed, 130 interrupted.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::Workload(Status::Failed) => 1,
            Outcome::Workload(Status::Killed) => 3,
            Outcome::Workload(_) => 0,
            Outcome::Interrupted => 130,
        }
    }
}

/// Why a client command could not do its job (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Arguments that parse but make no sense together, or unreadable local input.
    #[error("{0}")]
    Usage(String),
    /// The server could not be reached or answered an error.
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl CliError {
    /// The exit status for this error.
    pub const EXIT_CODE: u8 = 2;
}

/// Run one client subcommand to its end and return the process exit status. Errors go
/// to stderr.
pub fn main(command: ClientCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(CliError::EXIT_CODE);
        }
    };
    let result = runtime.block_on(dispatch(command));
    // A prompt abandoned by a second Ctrl-C leaves a blocking stdin read behind: do not
    // wait for it.
    runtime.shutdown_background();
    match result {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            output::error(&explain(&e));
            ExitCode::from(CliError::EXIT_CODE)
        }
    }
}

async fn dispatch(command: ClientCommand) -> Result<Outcome, CliError> {
    match command {
        ClientCommand::Run(args) => run::run(args).await,
        ClientCommand::Status(args) => workloads::status(args).await,
        ClientCommand::Logs(args) => workloads::logs(args).await,
        ClientCommand::Ls(args) => workloads::ls(args).await,
        ClientCommand::Kill(args) => workloads::kill(args).await,
        ClientCommand::Backends(args) => ops::backends(args.conn).await,
        ClientCommand::Restart(args) => ops::restart(args).await,
        ClientCommand::Stats(args) => ops::stats(args.conn).await,
    }
}

/// The error message, with a hint where one helps.
fn explain(e: &CliError) -> String {
    match e {
        CliError::Client(ClientError::Api { status, message }) if status.as_u16() == 401 => {
            format!("{message} (server answered 401: pass --token or set VULCAN_API_TOKEN)")
        }
        CliError::Client(ClientError::Connect { .. }) => {
            format!("{e} (is the server running? --server or VULCAN_SERVER names it)")
        }
        _ => e.to_string(),
    }
}

/// Parse a workload id argument (clap value parser).
fn parse_id(s: &str) -> Result<WorkloadId, String> {
    s.parse::<WorkloadId>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_server_is_where_a_default_server_listens() {
        let conn = Connection {
            server: None,
            token: None,
            json: false,
        };
        let client = conn.client().expect("client");
        assert_eq!(client.server(), "http://127.0.0.1:8080");
    }

    #[test]
    fn exit_statuses_follow_the_outcome() {
        assert_eq!(Outcome::Workload(Status::Completed).exit_code(), 0);
        assert_eq!(Outcome::Workload(Status::Running).exit_code(), 0);
        assert_eq!(Outcome::Workload(Status::Failed).exit_code(), 1);
        assert_eq!(Outcome::Workload(Status::Killed).exit_code(), 3);
        assert_eq!(Outcome::Interrupted.exit_code(), 130);
        assert_eq!(CliError::EXIT_CODE, 2);
    }
}
