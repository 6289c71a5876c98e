//! `switchboard-bench`: the load generator behind `benches/run.sh`.
//!
//! `run` measures every scenario against every system it is given and
//! writes one JSON file; `report` turns that file into
//! `docs/benchmarks.md`. Connections are spread over `worker` processes
//! (this machine allows 20,000 open files per process).

mod child;
mod plots;
mod procstat;
mod report;
mod scenarios;
mod sse;
mod storm;
mod worker;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Switchboard load generator and benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the scenarios and writes the results as JSON.
    Run(scenarios::RunArgs),
    /// Writes the Markdown report (with SVG plots) from a results file.
    Report {
        #[arg(long, default_value = "benches/results/latest.json")]
        input: PathBuf,
        #[arg(long, default_value = "docs/benchmarks.md")]
        out: PathBuf,
    },
    /// (internal) Holds a share of the connections; driven by `run`.
    Worker(worker::WorkerArgs),
    /// The reconnect storm against a 2-node cluster (`benches/storm.sh`).
    Storm(storm::StormArgs),
    /// (internal) Storm or staying clients; driven by `storm`.
    StormWorker(storm::StormWorkerArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.cmd {
        Cmd::Run(args) => rt.block_on(scenarios::run(args)),
        Cmd::Report { input, out } => report::write(&input, &out),
        Cmd::Worker(args) => rt.block_on(worker::run(args)),
        Cmd::Storm(args) => rt.block_on(storm::run(args)),
        Cmd::StormWorker(args) => rt.block_on(storm::worker(args)),
    }
}
