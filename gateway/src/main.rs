//! `switchboard [--config FILE]`: runs one gateway node.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use switchboard_config::Settings;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

// Per-connection state is freed in bursts (a Session actor passivates, a
// room retires); jemalloc, configured in .cargo/config.toml, gives that
// memory back to the OS where glibc's arenas keep it (22.1 -> 9.4 KiB per
// idle connection in the density benchmark when it came in; see
// docs/benchmarks.md, "Where the memory goes").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Switchboard: a WebSocket connection gateway cluster.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file; `SWITCHBOARD__SECTION__KEY` variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match Settings::load(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("switchboard: bad configuration: {e}");
            }
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    switchboard_gateway::run(settings, shutdown).await?;
    Ok(())
}

/// SIGTERM or SIGINT starts the drain.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
    shutdown.cancel();
}
