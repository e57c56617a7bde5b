//! `soul-bench`: the performance figures of `docs/performance.md`.
//!
//! ```text
//! soul-bench store --backend postgres --database-url postgres://…   # store + engine, PostgreSQL
//! soul-bench store --backend sqlite                                  # store + engine, SQLite
//! soul-bench gateway --gateway-bin target/release/sms-gateway …      # through the gateway
//! soul-bench snapshot                                                # sage's snapshot size
//! ```
//!
//! `crates/bench/bench.sh` starts a throwaway PostgreSQL cluster (stock settings, fsync on) and
//! runs them all. A benchmark, not a test: nothing here asserts a timing.

mod counting;
mod gateway;
mod latency;
mod snapshot;
mod soul;
mod stats;
mod store;

use clap::{Parser, Subcommand};

/// Benchmarks of the soul engine.
#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The reference workload at the store + engine level (no HTTP).
    Store(store::StoreArgs),
    /// The reference workload through the `sms-gateway` binary (signed webhooks in, replies
    /// out to a Twilio-compatible sink), and webhook acknowledgement latency at a fixed rate.
    Gateway(gateway::GatewayArgs),
    /// The working-memory snapshot's size over one long conversation with `sage`.
    Snapshot(snapshot::SnapshotArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Store(args) => store::run(args).await,
        Command::Gateway(args) => gateway::run(args).await,
        Command::Snapshot(args) => snapshot::run(args).await,
    }
}
