//! The working-memory snapshot's size over one long conversation with the shipped `sage` soul
//! (all its processes and subprocesses: summary, user model, check-in scheduling), through
//! `TurnDriver` on a SQLite store.
//!
//! The model is [`SageModel`], in this process: it answers each structured step with a valid
//! fixed value (`mental_query`: false, `learn_name`: a name, `update_user_model`: a small model)
//! and everything else (dialog, summaries) with a fixed ~200-character text. The figure is the
//! snapshot's stored JSON, read back from the store after each turn.

use std::sync::Arc;

use anyhow::{Context, bail};
use chrono::Utc;
use soul_engine::SystemClock;
use soul_engine::model::BoxFuture;
use soul_engine::model::{ChatRequest, Completion, LanguageModel, ModelError, Usage};
use soul_engine::process::{Registry, Runtime};
use soul_persistence::{Address, Inbound, SqliteStore, Store};
use soul_turns::{Handled, NoDelivery, TurnDriver};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

/// The `snapshot` command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SnapshotArgs {
    /// Turns of the one conversation.
    #[arg(long, default_value_t = 200)]
    turns: usize,
    /// Report every this many turns.
    #[arg(long, default_value_t = 20)]
    every: usize,
}

const TEXT: &str = "That sounds like a lot to carry this week. It makes sense you feel \
     stretched thin with nights at the bakery and everything else. What would make tomorrow \
     a little easier for you?";

/// Answers Sage's steps with fixed, valid answers.
#[derive(Debug, Default)]
struct SageModel;

impl LanguageModel for SageModel {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        let content = match request.options.response_schema.as_ref().map(|s| s.name.as_str()) {
            Some("mental_query") => r#"{"is_true": false}"#.to_owned(),
            Some("learn_name") => r#"{"name": "Ana"}"#.to_owned(),
            Some("update_user_model") => r#"{"name": "Ana", "preferences": ["short replies"], "working_on": ["night shifts at a bakery"]}"#.to_owned(),
            Some(other) => format!("{{\"unexpected\": \"{other}\"}}"),
            None => TEXT.to_owned(),
        };
        Box::pin(async move {
            Ok(Completion {
                content,
                usage: Usage {
                    prompt_tokens: 1,
                    completion_tokens: 1,
                },
                model: "scripted".to_owned(),
                tool_calls: Vec::new(),
            })
        })
    }
}

const MESSAGES: &[&str] = &[
    "work has been a lot lately, I feel stretched really thin",
    "the night shifts at the bakery are long and my back hurts",
    "my sister visited today and we cooked together, it was nice",
    "I keep thinking about changing jobs but I am not sure",
    "slept badly again, the neighbours were loud until three",
    "I finally finished the book you asked me about",
];

pub(crate) async fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    let soul = Registry::load()?
        .soul(soul_processes::companion::SOUL)
        .context("sage is not registered")?;
    let runtime = Arc::new(Runtime::new(
        soul,
        Arc::new(SageModel),
        Arc::new(SystemClock),
    ));
    let temp = tempfile::tempdir()?;
    let path = temp.path().join("snapshot.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await?);
    let driver = TurnDriver::new(store, runtime, Arc::new(SystemClock));
    let mut conn =
        SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&path)).await?;
    let mut out = String::from(
        "\n## working-memory snapshot, one sage conversation\n\n| after turn | snapshot bytes (JSON) | memories | summary memories |\n| --- | --- | --- | --- |\n",
    );
    let mut largest = (0_usize, 0_usize);
    for turn in 1..=args.turns {
        let body = if turn == 1 {
            "hi! I'm Ana, I work nights at a bakery"
        } else {
            MESSAGES.get(turn % MESSAGES.len()).copied().unwrap_or("ok")
        };
        let inbound = Inbound {
            from: Address::new("+15550000001"),
            line: Default::default(),
            persona: None,
            body: body.to_owned(),
            external_id: Some(format!("SMsnapshot{turn:05}")),
            received_at: Utc::now(),
            opt_out: None,
        };
        match driver.handle(&inbound, &NoDelivery).await? {
            Handled::Answered(reports) if reports.iter().all(|r| !r.fell_back) => {}
            other => bail!("turn {turn} was not answered normally: {other:?}"),
        }
        let snapshot: String = sqlx::query_scalar(
            "select snapshot from working_memory_snapshots order by seq desc limit 1",
        )
        .fetch_one(&mut conn)
        .await?;
        if snapshot.len() > largest.1 {
            largest = (turn, snapshot.len());
        }
        if turn % args.every.max(1) == 0 || turn == 1 {
            let (memories, summaries) = count(&snapshot);
            out.push_str(&format!(
                "| {turn} | {} | {memories} | {summaries} |\n",
                snapshot.len()
            ));
        }
    }
    out.push_str(&format!(
        "\nlargest snapshot: {} bytes, after turn {}\n",
        largest.1, largest.0
    ));
    drop(conn.close().await);
    #[allow(clippy::print_stdout)]
    {
        print!("{out}");
    }
    Ok(())
}

/// Memories in the snapshot, and how many of them are in the `summary` region.
fn count(snapshot: &str) -> (usize, usize) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(snapshot) else {
        return (0, 0);
    };
    let memories = value
        .get("memories")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    let summaries = memories
        .iter()
        .filter(|m| m.get("region").and_then(serde_json::Value::as_str) == Some("summary"))
        .count();
    (memories.len(), summaries)
}
