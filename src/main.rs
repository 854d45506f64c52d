//! `customer-service`: parses the command line and hands over to the library.

use clap::Parser;
use customers::config::{Cli, Command};
use customers::startup::{self, Application};
use customers::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.config.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(&cli.config).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Migrate => startup::migrate(&cli.config).await,
        Command::Keys(command) => startup::manage_keys(&cli.config, &command).await,
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
