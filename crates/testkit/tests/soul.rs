//! The soul harness: a soul started in a given process with given memories, messages sent with
//! the model's answers scripted, and what each turn did — in a binary that also holds a broken
//! soul, which the harness does not let get in the way.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use serde_json::json;
use soul_engine::Clock;
use soul_engine::prelude::*;
use soul_engine::process::Registry;
use soul_testkit::soul::TestSoul;

soul! {
    name: "harnessed",
    display_name: "Hal",
    persona: &["You are Hal, a soul under test."],
    initial_process: LISTEN,
    subprocesses: &[NOTE],
}

const LISTEN: MentalProcess = mental_process!(soul = "harnessed", name = "listen", listen);
const FOCUS: MentalProcess = mental_process!(soul = "harnessed", name = "focus", focus);
const NOTE: Subprocess = subprocess!(soul = "harnessed", name = "note", note);

/// Answers through the model and counts what it heard; "let's focus" moves to `focus`.
async fn listen(cx: ProcessContext) -> ProcessResult {
    let (memory, said) = cx
        .mind()
        .run(external_dialog("Answer."), cx.memory())
        .await?;
    cx.speak(said);
    let heard: u32 = cx.soul_memory().get("heard")?.unwrap_or(0);
    cx.soul_memory().set("heard", &(heard + 1))?;
    Ok(if cx.perception().content == "let's focus" {
        Next::to(FOCUS, memory).with_params(json!({"topic": "exams"}))
    } else {
        Next::stay(memory)
    })
}

/// Talks about the topic it was entered with, to the person soul memory names.
async fn focus(cx: ProcessContext) -> ProcessResult {
    let topic = cx.params_json()["topic"]
        .as_str()
        .unwrap_or("nothing")
        .to_owned();
    let name: String = cx.soul_memory().get("name")?.unwrap_or_default();
    let (memory, said) = cx
        .mind()
        .run(
            external_dialog(format!("Talk with {name} about {topic}.")),
            cx.memory(),
        )
        .await?;
    cx.speak(said);
    cx.process_memory()
        .set("runs", &(cx.invocation_count() + 1))?;
    Ok(Next::stay(memory))
}

/// Notes each message in the `notes` region; fails on "break".
async fn note(cx: ProcessContext) -> ProcessResult {
    if cx.perception().content == "break" {
        return Err(ProcessError::failed("broken on purpose"));
    }
    let notes = Region::new("notes").unwrap();
    let note = Memory::system(format!("noted: {}", cx.perception().content));
    Ok(Next::stay(cx.memory().with_region(notes, [note])))
}

// A soul whose initial process is another soul's: `Registry::load` refuses this binary's set.
soul! {
    name: "misconfigured",
    persona: &["You are nobody."],
    initial_process: LISTEN,
}

#[tokio::test]
async fn a_message_shows_the_replies_the_next_process_and_what_was_remembered() {
    assert!(Registry::load().is_err(), "another soul here is broken");
    let mut hal = TestSoul::start("harnessed").await;
    hal.answers(["Hal said: \"Sure, let's.\""]);
    let turn = hal.send("let's focus").await;

    assert_eq!(turn.replies, ["Sure, let's."]);
    assert_eq!(turn.processes_run, ["listen"]);
    assert_eq!(turn.process, "focus");
    assert_eq!(turn.soul_memory.upserts["heard"], json!(1));
    let added: Vec<&str> = turn.memories.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(added, ["Hal said: \"Sure, let's.\"", "noted: let's focus"]);
    assert_eq!(hal.model().remaining(), 0);

    // The next message starts from what the last one left.
    hal.answers(["Hal said: \"Exams, then.\""]);
    let turn = hal.send("ok").await;
    assert_eq!(turn.processes_run, ["focus"]);
    assert_eq!(turn.process_memory["focus"].upserts["runs"], json!(1));
    assert_eq!(hal.state().soul_memory["heard"], json!(1));
}

#[tokio::test]
async fn a_soul_starts_in_the_given_process_with_the_given_memories() {
    let mut hal = TestSoul::start("harnessed")
        .await
        .in_process(FOCUS)
        .with_params(json!({"topic": "chemistry"}))
        .with_soul_memory("name", "Ana")
        .with_memories([Memory::user("I failed the last test.")]);
    hal.answers(["Hal said: \"Let's start with bonds.\""]);
    let turn = hal.send("help").await;

    assert_eq!(turn.replies, ["Let's start with bonds."]);
    assert_eq!(turn.processes_run, ["focus"]);
    let request = hal.model().requests().await[0].to_string();
    assert!(request.contains("I failed the last test."), "{request}");
    assert!(
        request.contains("Talk with Ana about chemistry."),
        "{request}"
    );
}

#[tokio::test]
async fn a_failed_subprocess_is_returned_by_try_perceive() {
    let mut hal = TestSoul::start("harnessed").await;
    hal.answers(["Hal said: \"Hm.\""]);
    let message = Perception::message("break", hal.clock().now());
    let turn = hal.try_perceive(message).await.unwrap();
    assert_eq!(turn.failed_subprocesses, ["note"]);
    assert_eq!(turn.replies, ["Hm."]);
}

#[tokio::test]
#[should_panic(expected = "subprocesses failed")]
async fn a_failed_subprocess_fails_a_send() {
    let mut hal = TestSoul::start("harnessed").await;
    hal.answers(["Hal said: \"Hm.\""]);
    hal.send("break").await;
}

#[tokio::test]
#[should_panic(expected = "no soul named `nobody` is registered")]
async fn an_unknown_soul_is_named() {
    TestSoul::start("nobody").await;
}

#[tokio::test]
#[should_panic(expected = "soul `misconfigured`")]
async fn a_broken_soul_says_what_is_wrong() {
    TestSoul::start("misconfigured").await;
}
