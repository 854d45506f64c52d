//! `customer-service`: parses the command line and hands over to the library.

use clap::Parser;
use customers::config::{Cli, Command};
use customers::startup::{self, Application};
use customers::telemetry;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.config.log_format);
    runtime(cli.config.worker_threads)?.block_on(run(cli))
}

/// One thread: a current-thread runtime. More: tokio's multi-thread one.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().build()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
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
