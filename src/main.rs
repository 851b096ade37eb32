use std::process::ExitCode;

use clap::{Parser, Subcommand};

use vulcan::config::Config;
use vulcan::startup::Application;

/// Vulcan: run workloads with pluggable isolation behind an HTTP API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the HTTP server (configuration: config/default.toml, VULCAN_CONFIG, VULCAN_*).
    Serve,
    /// Load and validate the configuration, print it (secrets redacted) and exit.
    CheckConfig,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,actix_server=warn"),
    )
    .init();
    let cli = Cli::parse();
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vulcan: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::CheckConfig => {
            println!("{config:#?}");
            ExitCode::SUCCESS
        }
        Command::Serve => serve(config),
    }
}

fn serve(config: Config) -> ExitCode {
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(config)
            .await
            .map_err(|e| e.to_string())?;
        app.run_until_stopped().await.map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("vulcan: {e}");
            ExitCode::FAILURE
        }
    }
}
