//! Run with
//!
//! ```not_rust
//! cargo run -p soul-examples --bin embed                 # offline, always
//! cargo run -p soul-examples --bin embed -- --live       # a live model: costs tokens
//! ```
//!
//! Embeds the soul engine in a plain Rust program — no gateway, no store: Sage, the companion
//! soul, answers lines typed on stdin, its state kept in a `SoulState` in memory, its
//! subprocesses run after every reply.
//!
//! - By default it plays a scripted demo offline, answered from the shipped cassette
//!   `examples/cassettes/embed-demo.json`: the same output every time, no network, whatever the
//!   environment holds (an `OPENAI_API_KEY` in the shell is not used).
//! - With `--live` (and only then) it talks to the model at `OPENAI_BASE_URL` (default
//!   `https://api.openai.com/v1`) named by `SOUL_MODEL` (default `gpt-4o-mini`), with the key in
//!   `OPENAI_API_KEY`. Type one message per line; `/later` jumps ahead to the next scheduled
//!   check-in; Ctrl-D ends. `--live --demo` plays the demo script instead of reading stdin.
//! - `SOUL_RECORD_CASSETTE=<path>` records the live model's traffic to a cassette (the shipped
//!   one was recorded against the OpenAI double: see `examples/tests/embed_demo.rs`).
//! - `SOUL_CRISIS_RESOURCES` replaces the crisis resources text Sage appends in careful mode.

// A command-line program talks to its user on stdout.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use chrono::{DateTime, Duration, Utc};
use soul_engine::SystemClock;
use soul_engine::model::LanguageModel;
use soul_engine::model::cassette::{RecordingModel, ReplayingModel};
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::process::{Perception, PerceptionKind, Registry, Runtime, SoulState};
use soul_processes::companion::{
    self,
    crisis::{CrisisResources, configure_crisis_resources},
};
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};

/// The demo conversation: three messages, then a jump ahead to the check-in.
const DEMO: &[&str] = &[
    "hi! I'm Ana, I work nights at a bakery",
    "work has been a lot lately, I feel stretched really thin",
    "thanks, that helps. ok bye for now",
    LATER,
];

/// The command that jumps ahead to the next scheduled check-in.
const LATER: &str = "/later";

/// When the demo conversation takes place: 2026-11-24 18:00 UTC.
const DEMO_START: DateTime<Utc> = match DateTime::from_timestamp(1_795_543_200, 0) {
    Some(start) => start,
    None => panic!("the demo start is a valid time"),
};

/// The shipped cassette the offline demo is answered from.
const DEMO_CASSETTE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/cassettes/embed-demo.json");

/// Where the lines come from.
enum Input {
    /// The demo script, with made-up times two minutes apart from a fixed start, so the output
    /// (check-in times included) is the same on every run.
    Demo { next: usize },
    /// Lines typed on stdin, at the wall clock's time.
    Stdin(Lines<BufReader<Stdin>>),
}

impl Input {
    async fn next_line(&mut self) -> anyhow::Result<Option<String>> {
        match self {
            Input::Demo { next } => {
                let line = DEMO.get(*next).map(|line| (*line).to_owned());
                *next += 1;
                if let Some(line) = &line {
                    println!("you> {line}");
                }
                Ok(line)
            }
            Input::Stdin(lines) => lines.next_line().await.context("reading stdin"),
        }
    }

    /// The time a line read now is sent at, before any jump ahead.
    fn now(&self) -> DateTime<Utc> {
        match self {
            Input::Demo { next } => DEMO_START + Duration::minutes(2 * *next as i64),
            Input::Stdin(_) => Utc::now(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (mut demo, mut live) = (false, false);
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--demo" => demo = true,
            "--live" => live = true,
            other => bail!("unknown argument {other:?}; the arguments are --live and --demo"),
        }
    }
    // The library never reads the environment; the program that embeds it does.
    if let Ok(text) = std::env::var("SOUL_CRISIS_RESOURCES") {
        let resources = CrisisResources::new(text).context("SOUL_CRISIS_RESOURCES")?;
        if configure_crisis_resources(resources).is_err() {
            bail!("the crisis resources were configured twice");
        }
    }

    // Going live costs money and sends what is typed to a server: only when asked for.
    let (model, replay): (Arc<dyn LanguageModel>, Option<Arc<ReplayingModel>>) = if live {
        let key = std::env::var("OPENAI_API_KEY").context(
            "--live needs OPENAI_API_KEY (and OPENAI_BASE_URL for a server other than OpenAI)",
        )?;
        (live_model(key)?, None)
    } else {
        demo = true;
        let replay = Arc::new(
            ReplayingModel::open(DEMO_CASSETTE)
                .context("opening the demo cassette (pass --live to talk to a model instead)")?,
        );
        (replay.clone(), Some(replay))
    };
    let mut input = if demo {
        Input::Demo { next: 0 }
    } else {
        println!("Text Sage: one message per line, {LATER} to jump ahead, Ctrl-D to end.");
        Input::Stdin(BufReader::new(tokio::io::stdin()).lines())
    };

    // Linking `soul_processes` registers its souls; the registry finds them.
    let registry = Registry::load()?;
    let soul = registry
        .soul(companion::SOUL)
        .context("the companion soul is not registered")?;
    let runtime = Runtime::new(soul, model, Arc::new(SystemClock));
    // What a store would keep between messages, the scheduled events included: the turns keep
    // `state.pending_events` as a store keeps its table, soonest first.
    let mut state = SoulState::new(companion::NAME);
    let mut skipped = Duration::zero();

    while let Some(line) = input.next_line().await? {
        let line = line.trim();
        let perception = if line == LATER {
            // The earliest pending event comes due: time jumps to it. Its turn drops it.
            let Some(event) = state.pending_events.first().cloned() else {
                println!("(nothing is scheduled)");
                continue;
            };
            skipped = event.at - input.now();
            println!(
                "(time passes: it is now {})",
                event.at.format("%Y-%m-%d %H:%M UTC")
            );
            Perception {
                kind: PerceptionKind::Event {
                    id: event.id,
                    process: event.process,
                    params: event.params,
                },
                metadata: event.metadata,
                ..Perception::message(event.content, event.at)
            }
        } else if line.is_empty() {
            continue;
        } else {
            Perception::message(line, input.now() + skipped)
        };

        let main = runtime
            .run_main("embed", state.clone(), perception, None)
            .await?;
        state.apply_main(&main);
        for reply in &main.replies {
            println!("{}> {reply}", companion::NAME);
        }
        let subs = runtime.run_subprocesses(&main).await;
        state.apply_subprocesses(&subs);
        for reply in &subs.replies {
            println!("{}> {reply}", companion::NAME);
        }

        for event in main.scheduled.iter().chain(&subs.scheduled) {
            println!(
                "({} will check in at {} if you go quiet)",
                companion::NAME,
                event.at.format("%Y-%m-%d %H:%M UTC")
            );
        }
    }

    if let Some(replay) = replay {
        // A replay that asked for less than was recorded has diverged too.
        replay.finish()?;
    }
    Ok(())
}

/// The OpenAI-compatible model the environment points at, recording to a cassette if asked.
fn live_model(key: String) -> anyhow::Result<Arc<dyn LanguageModel>> {
    let base_url =
        std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com/v1".into());
    let name = std::env::var("SOUL_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
    let model = OpenAiModel::new(OpenAiConfig::new(base_url, key, name))?;
    Ok(match std::env::var("SOUL_RECORD_CASSETTE") {
        Ok(path) => Arc::new(RecordingModel::new(model, Path::new(&path))?),
        Err(_) => Arc::new(model),
    })
}
