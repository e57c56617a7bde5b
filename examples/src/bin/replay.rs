//! Run with
//!
//! ```not_rust
//! cargo run -p soul-examples --bin replay -- examples/conversations
//! ```
//!
//! Replays recorded conversations offline and deterministically through the real stack (a fresh
//! SQLite store, the turn driver, the soul, the model answered from each conversation's
//! cassette), prints each one's transcript, and exits non-zero with a diff when one departs from
//! its recording. A path is a conversation directory or a directory of them; none given means
//! the shipped `examples/conversations`. `docs/replay.md` describes the files.
//!
//! `--record --base-url URL [--model M]` instead runs each conversation against the
//! OpenAI-compatible endpoint at `URL` (key in `OPENAI_API_KEY`, if it needs one) and rewrites
//! its cassette, answers, expectations and transcript from what happened.

// A command-line program talks to its user on stdout.
#![allow(clippy::print_stdout)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_examples::replay::{self, conversation_dirs, name_of};

/// The shipped conversations.
const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conversations");

/// Replays recorded conversations offline, or records them against a live model.
#[derive(Debug, Parser)]
#[command(name = "replay")]
struct Args {
    /// Conversation directories, or directories holding them [default: the shipped ones].
    paths: Vec<PathBuf>,
    /// Print only each conversation's result, not its transcript.
    #[arg(long, short)]
    quiet: bool,
    /// Record the conversations against a live model instead, rewriting their files.
    #[arg(long, requires = "base_url")]
    record: bool,
    /// The OpenAI-compatible endpoint to record against, up to and including the version
    /// (`https://api.openai.com/v1`).
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
    /// The model to record with.
    #[arg(long, value_name = "M", default_value = "gpt-4o-mini")]
    model: String,
}

/// Where the per-conversation progress goes: a bar when a person watches stderr, plain lines
/// when it is a log.
enum Progress {
    Bar(ProgressBar),
    Lines { done: usize, total: usize },
}

impl Progress {
    fn new(total: usize) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total as u64);
            if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}") {
                bar.set_style(style);
            }
            Progress::Bar(bar)
        } else {
            Progress::Lines { done: 0, total }
        }
    }

    fn start(&self, name: &str) {
        if let Progress::Bar(bar) = self {
            bar.set_message(name.to_owned());
        }
    }

    /// Prints `text` to stdout without tearing the bar.
    fn print(&self, text: &str) {
        match self {
            Progress::Bar(bar) => bar.suspend(|| print!("{text}")),
            Progress::Lines { .. } => print!("{text}"),
        }
    }

    fn finish_one(&mut self, name: &str, result: &str) {
        match self {
            Progress::Bar(bar) => bar.inc(1),
            Progress::Lines { done, total } => {
                *done += 1;
                eprintln!("[{done}/{total}] {name}: {result}");
            }
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("replay: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Replays or records everything asked for; `Ok(false)` when something diverged or failed.
async fn run(args: Args) -> anyhow::Result<bool> {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(SHIPPED)]
    } else {
        args.paths.clone()
    };
    let mut dirs = Vec::new();
    for path in &paths {
        dirs.extend(conversation_dirs(path)?);
    }
    if args.record {
        record_all(&args, &dirs).await.map(|()| true)
    } else {
        Ok(replay_all(&dirs, args.quiet).await)
    }
}

async fn replay_all(dirs: &[PathBuf], quiet: bool) -> bool {
    let mut progress = Progress::new(dirs.len());
    let mut failed = Vec::new();
    for dir in dirs {
        let name = name_of(dir);
        progress.start(&name);
        match replay::replay(dir).await {
            Ok(replayed) => {
                if !quiet {
                    progress.print(&format!("{}\n", replayed.transcript));
                }
                match &replayed.divergence {
                    None => progress.finish_one(&name, "ok"),
                    Some(divergence) => {
                        progress.print(&format!("DIVERGED: {divergence}\n"));
                        progress.finish_one(&name, "DIVERGED");
                        failed.push(name);
                    }
                }
            }
            Err(error) => {
                progress.print(&format!("FAILED: {name}: {error:#}\n\n"));
                progress.finish_one(&name, "FAILED");
                failed.push(name);
            }
        }
    }
    progress.finish();
    if failed.is_empty() {
        println!("{} conversation(s) replayed: all as recorded", dirs.len());
        true
    } else {
        println!(
            "{} of {} conversation(s) departed from their recording: {}",
            failed.len(),
            dirs.len(),
            failed.join(", ")
        );
        false
    }
}

async fn record_all(args: &Args, dirs: &[PathBuf]) -> anyhow::Result<()> {
    let base_url = args.base_url.clone().context("--record needs --base-url")?;
    // Servers of the OpenAI kind without authentication (a local one) take an empty key.
    let key = std::env::var("OPENAI_API_KEY").unwrap_or_default();
    let mut progress = Progress::new(dirs.len());
    for dir in dirs {
        let name = name_of(dir);
        progress.start(&name);
        let model = OpenAiModel::new(OpenAiConfig::new(&base_url, &key, &args.model))?;
        let recorded = replay::record(dir, dir, model, |_| {})
            .await
            .with_context(|| format!("recording {}", dir.display()))?;
        if !args.quiet {
            progress.print(&format!("{}\n", recorded.transcript));
        }
        progress.finish_one(&name, "recorded");
    }
    progress.finish();
    println!("{} conversation(s) recorded", dirs.len());
    Ok(())
}
