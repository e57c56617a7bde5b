//! What bounds a turn: the caller's reply limit (a reply over it is cut as it is spoken, and the
//! soul remembers the cut text) and the soul's memory budget (what a model request carries and
//! what a turn hands back to be stored) — with the model behind the OpenAI double.
#![cfg(feature = "openai")]
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::process::{
    MentalProcess, Next, Perception, ProcessContext, ProcessResult, Registry, ReplyLimit, Runtime,
    SoulState,
};
use soul_engine::retry::RetryPolicy;
use soul_engine::step::external_dialog;
use soul_engine::{MemoryBudget, SystemClock, WorkingMemory};
use soul_testkit::openai::OpenAiDouble;

soul_engine::soul! {
    name: "chatty",
    display_name: "Tess",
    persona: &["You are Tess, a test soul."],
    initial_process: CHATTY_TALK,
}
const CHATTY_TALK: MentalProcess =
    soul_engine::mental_process!(soul = "chatty", name = "talk", talk);

soul_engine::soul! {
    name: "thrifty",
    display_name: "Tess",
    persona: &["You are Tess, a test soul."],
    initial_process: THRIFTY_TALK,
    memory_budget: MemoryBudget { max_memories: 6, max_tokens: 10_000 },
}
const THRIFTY_TALK: MentalProcess =
    soul_engine::mental_process!(soul = "thrifty", name = "talk", talk);

/// What a careful reply ends with, whatever the model said before it.
const RESOURCES: &str = "\n\nCall 988.";

/// Answers through the model; "careful" answers end with [`RESOURCES`], remembered as said.
async fn talk(cx: ProcessContext) -> ProcessResult {
    let careful = cx.perception().content == "careful";
    let (memory, said) = cx
        .mind()
        .run(external_dialog("Answer."), cx.memory())
        .await?;
    if !careful {
        cx.speak(said);
        return Ok(Next::stay(memory));
    }
    // As Sage's crisis process does: the model's words are not remembered by the step but
    // together with the resources, as sent.
    let sent = cx.speak_with_ending(said, RESOURCES);
    Ok(Next::stay(cx.memory().with_memory(
        soul_engine::Memory::assistant(format!("Tess said: \"{sent}\"")),
    )))
}

/// Keeps whole sentences up to `0` bytes in all, the ending included when it fits alone.
#[derive(Debug)]
struct Sentences(usize);

impl ReplyLimit for Sentences {
    fn limit(&self, body: &str, ending: &str) -> Option<String> {
        if body.len() + ending.len() <= self.0 {
            return None;
        }
        let room = self.0.saturating_sub(ending.len());
        let mut kept = String::new();
        for sentence in body.split_inclusive(". ") {
            if kept.len() + sentence.trim_end().len() > room {
                break;
            }
            kept.push_str(sentence);
        }
        Some(format!("{}{ending}", kept.trim_end()))
    }
}

async fn runtime(soul: &str, double: &OpenAiDouble) -> Runtime {
    let config = OpenAiConfig::new(double.base_url(), "sk-test", "double-model")
        .with_retry(RetryPolicy::no_retries());
    let model = Arc::new(OpenAiModel::new(config).unwrap());
    let soul = Registry::load().unwrap().soul(soul).unwrap();
    Runtime::new(soul, model, Arc::new(SystemClock))
}

fn message(text: &str) -> Perception {
    Perception::message(text, Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap())
}

fn quotes(memory: &WorkingMemory, text: &str) -> bool {
    memory.iter().any(|m| m.content.contains(text))
}

#[tokio::test]
async fn a_reply_over_the_limit_is_cut_where_it_is_spoken_sent_and_remembered() {
    let double = OpenAiDouble::start().await;
    double.push_content("Tess said: \"One is here. Two is here. Three is too much.\"");
    let runtime = runtime("chatty", &double)
        .await
        .with_reply_limit(Arc::new(Sentences(30)));
    let (sent, mut spoken) = tokio::sync::mpsc::unbounded_channel();

    let main = runtime
        .run_main("s", SoulState::new("Tess"), message("hi"), Some(sent))
        .await
        .unwrap();

    assert_eq!(main.replies, ["One is here. Two is here."]);
    assert_eq!(spoken.recv().await.unwrap(), "One is here. Two is here.");
    let remembered = main.working_memory.last().unwrap();
    assert_eq!(
        remembered.content,
        "Tess said: \"One is here. Two is here.\""
    );
    assert!(!quotes(&main.working_memory, "Three"));
    assert!(main.appended.iter().all(|m| !m.content.contains("Three")));
}

#[tokio::test]
async fn a_reply_within_the_limit_is_left_alone() {
    let double = OpenAiDouble::start().await;
    double.push_content("Tess said: \"Short.\"");
    let runtime = runtime("chatty", &double)
        .await
        .with_reply_limit(Arc::new(Sentences(30)));

    let main = runtime
        .run_main("s", SoulState::new("Tess"), message("hi"), None)
        .await
        .unwrap();

    assert_eq!(main.replies, ["Short."]);
}

#[tokio::test]
async fn a_cut_keeps_the_ending() {
    let double = OpenAiDouble::start().await;
    double.push_content("Tess said: \"You matter. I am here. Please stay safe tonight.\"");
    let runtime = runtime("chatty", &double)
        .await
        .with_reply_limit(Arc::new(Sentences(40)));

    let main = runtime
        .run_main("s", SoulState::new("Tess"), message("careful"), None)
        .await
        .unwrap();

    let expected = format!("You matter. I am here.{RESOURCES}");
    assert_eq!(main.replies, [expected.as_str()]);
    assert_eq!(
        main.working_memory.last().unwrap().content,
        format!("Tess said: \"{expected}\"")
    );
    assert!(!quotes(&main.working_memory, "safe tonight"));
}

/// Runs `turns` turns, carrying the state as a store would; returns the state after each turn.
async fn converse(runtime: &Runtime, double: &OpenAiDouble, turns: usize) -> Vec<SoulState> {
    let mut state = SoulState::new("Tess");
    let mut states = Vec::new();
    for turn in 0..turns {
        double.push_content(format!(
            "Tess said: \"Reply number {turn}, as long as most.\""
        ));
        let main = runtime
            .run_main(
                "s",
                state.clone(),
                message(&format!("message {turn}")),
                None,
            )
            .await
            .unwrap();
        state.apply_main(&main);
        states.push(state.clone());
    }
    states
}

#[tokio::test]
async fn a_long_conversation_costs_what_a_short_one_does() {
    let double = OpenAiDouble::start().await;
    let runtime = runtime("chatty", &double).await;

    let states = converse(&runtime, &double, 200).await;

    // Each request carries the persona, the budget's 24 memories and the step's command.
    let sizes: Vec<usize> = double
        .requests()
        .await
        .iter()
        .map(|body| body["messages"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes.len(), 200);
    assert_eq!(sizes.iter().max(), Some(&26), "{sizes:?}");
    assert!(sizes[30..].iter().all(|&size| size == 26), "{sizes:?}");
    // The working memory handed back to be stored stays within the budget, and the latest
    // exchange is in it.
    let snapshot = |turn: usize| states[turn].working_memory.to_json().to_string().len();
    for state in &states {
        assert!(MemoryBudget::DEFAULT.holds(&state.working_memory));
    }
    let (at_50, at_200) = (snapshot(49), snapshot(199));
    assert!(
        at_200 <= at_50 + at_50 / 20,
        "the snapshot grew from {at_50} to {at_200} bytes"
    );
    let last = &states[199].working_memory;
    assert_eq!(last.unregioned().count(), 24);
    assert!(quotes(last, "message 199"));
    assert!(quotes(last, "Reply number 199"));
    assert!(!last.iter().any(|m| m.content == "message 100"));
    assert_eq!(
        last.iter().next().unwrap().content,
        "You are Tess, a test soul."
    );
}

#[tokio::test]
async fn a_soul_sets_its_own_budget() {
    let double = OpenAiDouble::start().await;
    let runtime = runtime("thrifty", &double).await;

    let states = converse(&runtime, &double, 20).await;

    let largest = double
        .requests()
        .await
        .iter()
        .map(|body| body["messages"].as_array().unwrap().len())
        .max();
    // The persona, six memories, the command.
    assert_eq!(largest, Some(8));
    assert_eq!(states[19].working_memory.unregioned().count(), 6);
}
