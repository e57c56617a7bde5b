//! Behaviour authors coming from OpenSouls expect, in real turns: regions, the persona as the one
//! system prompt, perceptions as the model reads them — with the model behind the OpenAI double,
//! which refuses what OpenAI refuses.
#![cfg(feature = "openai")]
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use serde_json::Value;
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::process::{
    EventId, MentalProcess, Next, Perception, PerceptionKind, ProcessContext, ProcessResult,
    Registry, Runtime, SoulState,
};
use soul_engine::retry::RetryPolicy;
use soul_engine::step::external_dialog;
use soul_engine::{Memory, Region, Role, SystemClock};
use soul_testkit::openai::OpenAiDouble;
use uuid::Uuid;

soul_engine::soul! {
    name: "noter",
    display_name: "Nora",
    persona: &["You are Nora."],
    initial_process: NOTE,
}
const NOTE: MentalProcess = soul_engine::mental_process!(soul = "noter", name = "note", note);

/// Notes every message in the `notes` region, then answers.
async fn note(cx: ProcessContext) -> ProcessResult {
    let noted = cx.memory().with_memory_in(
        Region::new("notes").unwrap(),
        Memory::system(format!("noted: {}", cx.perception().content)),
    );
    let (memory, said) = cx.mind().run(external_dialog("Answer."), &noted).await?;
    cx.speak(said);
    Ok(Next::stay(memory))
}

soul_engine::soul! {
    name: "prompter",
    display_name: "Nora",
    persona: &["You are Nora."],
    initial_process: PROMPT,
}
const PROMPT: MentalProcess =
    soul_engine::mental_process!(soul = "prompter", name = "prompt", prompt);

const FRESH_PROMPT: &str = "You are Nora, just back from a walk.";

/// Answers, and on its first run leaves a system prompt of its own at the head of the
/// conversation, as an OpenSouls process sets one.
async fn prompt(cx: ProcessContext) -> ProcessResult {
    let (memory, said) = cx
        .mind()
        .run(external_dialog("Answer."), cx.memory())
        .await?;
    cx.speak(said);
    Ok(Next::stay(if cx.invocation_count() == 0 {
        memory.prepend([Memory::system(FRESH_PROMPT)])
    } else {
        memory
    }))
}

async fn runtime(soul: &str) -> (OpenAiDouble, Runtime) {
    let double = OpenAiDouble::start().await;
    let config = OpenAiConfig::new(double.base_url(), "sk-test", "double-model")
        .with_retry(RetryPolicy::no_retries());
    let model = Arc::new(OpenAiModel::new(config).unwrap());
    let soul = Registry::load_soul(soul).unwrap();
    (double, Runtime::new(soul, model, Arc::new(SystemClock)))
}

fn at() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
}

/// Runs the main part of a turn on `state` and applies it, as a store would.
async fn turn(runtime: &Runtime, state: &mut SoulState, perception: Perception) {
    let main = runtime
        .run_main("session", state.clone(), perception, None)
        .await
        .unwrap();
    state.apply_main(&main);
}

/// `(role, content)` of each message of a request the double received.
fn sent(request: &Value) -> Vec<(String, String)> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(role, content)| ((*role).to_owned(), (*content).to_owned()))
        .collect()
}

#[tokio::test]
async fn notes_added_in_a_region_stay_together_before_the_conversation() {
    let (double, runtime) = runtime("noter").await;
    double.push_content("Nora said: \"Hi.\"");
    double.push_content("Nora said: \"Again, hi.\"");
    let mut state = SoulState::new("Nora");
    turn(&runtime, &mut state, Perception::message("hello", at())).await;
    turn(&runtime, &mut state, Perception::message("again", at())).await;

    let regions: Vec<Option<&str>> = state
        .working_memory
        .iter()
        .map(|m| m.region.as_ref().map(Region::as_str))
        .collect();
    assert_eq!(
        regions,
        [
            Some("core"),
            Some("notes"),
            Some("notes"),
            None,
            None,
            None,
            None
        ]
    );
    let requests = double.requests().await;
    assert_eq!(
        sent(&requests[1])[..6],
        pairs(&[
            ("system", "You are Nora."),
            ("system", "noted: hello"),
            ("system", "noted: again"),
            ("user", "hello"),
            ("assistant", "Nora said: \"Hi.\""),
            ("user", "again"),
        ])
    );
}

#[tokio::test]
async fn a_system_prompt_a_process_left_is_not_carried_into_the_next_turn() {
    let (double, runtime) = runtime("prompter").await;
    double.push_content("Nora said: \"Hi.\"");
    double.push_content("Nora said: \"Still here.\"");
    let mut state = SoulState::new("Nora");
    turn(&runtime, &mut state, Perception::message("hello", at())).await;
    assert!(
        state
            .working_memory
            .iter()
            .any(|m| m.content == FRESH_PROMPT),
        "the process did leave its prompt"
    );
    turn(&runtime, &mut state, Perception::message("again", at())).await;

    let requests = double.requests().await;
    let second = sent(&requests[1]);
    assert_eq!(
        second[..4],
        pairs(&[
            ("system", "You are Nora."),
            ("user", "hello"),
            ("assistant", "Nora said: \"Hi.\""),
            ("user", "again"),
        ]),
        "the persona alone is the system prompt: {second:?}"
    );
}

#[tokio::test]
async fn a_named_perception_reaches_the_model_as_opensouls_renders_it() {
    let (double, runtime) = runtime("noter").await;
    double.push_content("Nora said: \"Hi Bob.\"");
    let perception = Perception::message("hi there", at()).with_name("Bob Smith");
    let main = runtime
        .run_main("s", SoulState::new("Nora"), perception, None)
        .await
        .unwrap();
    assert_eq!(main.replies, ["Hi Bob."]);

    let requests = double.requests().await;
    let user = requests[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "user")
        .unwrap();
    assert_eq!(user["content"], "Bob Smith said: \"hi there\"");
    assert_eq!(user["name"], "Bob_Smith", "what OpenAI's `name` accepts");
    let memory = main.working_memory.find(|m| m.role == Role::User).unwrap();
    assert_eq!(
        memory.name.as_deref(),
        Some("Bob Smith"),
        "memory keeps the name as people read it"
    );
}

#[tokio::test]
async fn an_action_other_than_said_is_rendered_and_an_unnamed_message_is_its_text() {
    let (double, runtime) = runtime("noter").await;
    double.push_content("Nora said: \"Hello.\"");
    double.push_content("Nora said: \"Ouch.\"");
    let mut state = SoulState::new("Nora");
    turn(&runtime, &mut state, Perception::message("plain", at())).await;
    let poke = Perception::message("softly", at())
        .with_name("Ann")
        .with_action("poked");
    turn(&runtime, &mut state, poke).await;
    let users: Vec<&str> = state
        .working_memory
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(users, ["plain", "Ann poked: \"softly\""]);
}

#[tokio::test]
async fn a_scheduled_event_reaches_the_model_as_the_souls_own_perception() {
    let (double, runtime) = runtime("noter").await;
    double.push_content("Nora said: \"Checking in.\"");
    let due = Perception {
        kind: PerceptionKind::Event {
            id: EventId(Uuid::now_v7()),
            process: None,
            params: Value::Null,
        },
        ..Perception::message("[A day has passed. Nora checks in.]", at())
    };
    let main = runtime
        .run_main("s", SoulState::new("Nora"), due, None)
        .await
        .unwrap();
    assert_eq!(main.replies, ["Checking in."]);
    let requests = double.requests().await;
    let messages = sent(&requests[0]);
    assert!(
        messages.contains(&(
            "assistant".to_owned(),
            "[A day has passed. Nora checks in.]".to_owned()
        )),
        "{messages:?}"
    );
    assert!(
        !messages.iter().any(|(role, _)| role == "user"),
        "the person said nothing: {messages:?}"
    );
    let event_memory = main
        .working_memory
        .find(|m| m.metadata.get("event_id").is_some())
        .unwrap();
    assert_eq!(event_memory.role, Role::Assistant);
}
