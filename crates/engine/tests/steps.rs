//! Every built-in cognitive step, and an author's typed step, against the OpenAI-compatible
//! double over real HTTP.
#![cfg(feature = "openai")]
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::model::{ModelError, Usage};
use soul_engine::retry::RetryPolicy;
use soul_engine::step::{
    Mind, StepError, brainstorm, decision, external_dialog, instruction, internal_monologue,
    mental_query, summarize, typed,
};
use soul_engine::{Memory, Role, SystemClock, WorkingMemory};
use soul_testkit::openai::{OpenAiDouble, Reply};

async fn setup() -> (OpenAiDouble, Mind) {
    let double = OpenAiDouble::start().await;
    let config = OpenAiConfig::new(double.base_url(), "sk-test", "double-model")
        .with_retry(RetryPolicy::no_retries());
    let model = OpenAiModel::new(config).unwrap();
    (double, Mind::new(Arc::new(model), Arc::new(SystemClock)))
}

fn memory() -> WorkingMemory {
    WorkingMemory::new("Samantha")
        .with_memory(Memory::system("You are Samantha, a kind companion."))
        .with_memory(Memory::user("I had a rough day."))
}

fn last_message(request: &Value) -> (&str, &str) {
    let last = request["messages"].as_array().unwrap().last().unwrap();
    (
        last["role"].as_str().unwrap(),
        last["content"].as_str().unwrap(),
    )
}

#[tokio::test]
async fn external_dialog_strips_the_speaker_prefix_and_remembers_what_was_said() {
    let (double, mind) = setup().await;
    double.push_content("Samantha said: \"I'm sorry. Want to tell me about it?\"");
    let (after, said) = mind
        .run(external_dialog("Be warm."), &memory())
        .await
        .unwrap();

    assert_eq!(said, "I'm sorry. Want to tell me about it?");
    assert_eq!(after.len(), 3);
    let remembered = after.last().unwrap();
    assert_eq!(remembered.role, Role::Assistant);
    assert_eq!(
        remembered.content,
        "Samantha said: \"I'm sorry. Want to tell me about it?\""
    );
    assert_eq!(remembered.metadata["step"], "external_dialog");

    let requests = double.requests().await;
    assert_eq!(requests.len(), 1);
    let messages = requests[0]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "working memory plus the command");
    assert_eq!(messages[1]["content"], "I had a rough day.");
    let (role, command) = last_message(&requests[0]);
    assert_eq!(role, "system");
    assert!(command.contains("Model the mind of Samantha") && command.contains("Be warm."));
    assert!(requests[0].get("response_format").is_none());
}

#[tokio::test]
async fn internal_monologue_returns_the_thought() {
    let (double, mind) = setup().await;
    double.push_content("Samantha thought: They sound exhausted.");
    let (after, thought) = mind
        .run(internal_monologue("What does Samantha notice?"), &memory())
        .await
        .unwrap();
    assert_eq!(thought, "They sound exhausted.");
    assert_eq!(
        after.last().unwrap().content,
        "Samantha thought: \"They sound exhausted.\""
    );
}

#[tokio::test]
async fn decision_asks_for_one_of_the_choices_through_a_strict_schema() {
    let (double, mind) = setup().await;
    double.push_content(r#"{"decision": "LISTEN"}"#);
    let (after, choice) = mind
        .run(decision("how to respond", ["listen", "advise"]), &memory())
        .await
        .unwrap();
    assert_eq!(
        choice, "listen",
        "case-insensitive match, canonical spelling"
    );
    assert!(after.last().unwrap().content.contains("listen"));

    let request = &double.requests().await[0];
    let format = &request["response_format"];
    assert_eq!(format["type"], "json_schema");
    assert_eq!(format["json_schema"]["strict"], true);
    assert_eq!(
        format["json_schema"]["schema"]["properties"]["decision"]["enum"],
        json!(["listen", "advise"])
    );
}

#[tokio::test]
async fn an_answer_outside_the_choices_gets_one_repair_attempt() {
    let (double, mind) = setup().await;
    double.push_content(r#"{"decision": "dance"}"#);
    double.push_content(r#"{"decision": "advise"}"#);
    let (_, choice) = mind
        .run(decision("how to respond", ["listen", "advise"]), &memory())
        .await
        .unwrap();
    assert_eq!(choice, "advise");

    let requests = double.requests().await;
    assert_eq!(requests.len(), 2);
    let repair = requests[1]["messages"].as_array().unwrap();
    assert_eq!(repair[repair.len() - 2]["role"], "assistant");
    assert_eq!(
        repair[repair.len() - 2]["content"],
        r#"{"decision": "dance"}"#
    );
    let (role, text) = last_message(&requests[1]);
    assert_eq!(role, "system");
    assert!(text.contains("not one of the choices"), "{text}");
}

#[tokio::test]
async fn malformed_json_is_repaired() {
    let (double, mind) = setup().await;
    double.push_content("Sure! Here you go: {is_true: yes}");
    double.push_content("```json\n{\"is_true\": false}\n```");
    let (after, verdict) = mind
        .run(mental_query("The person is in danger."), &memory())
        .await
        .unwrap();
    assert!(!verdict);
    assert!(
        after
            .last()
            .unwrap()
            .content
            .contains("concluded it is false")
    );
    let requests = double.requests().await;
    assert_eq!(requests.len(), 2);
    assert!(last_message(&requests[1]).1.contains("not valid JSON"));
}

#[tokio::test]
async fn malformed_json_twice_is_a_typed_error() {
    let (double, mind) = setup().await;
    double.push_content("not json");
    double.push_content(r#"{"is_true": "maybe"}"#);
    let err = mind
        .run(mental_query("The person is in danger."), &memory())
        .await
        .unwrap_err();
    match err {
        StepError::InvalidAnswer { step, reason } => {
            assert_eq!(step, "mental_query");
            assert!(reason.contains("not of the expected shape"), "{reason}");
            assert!(
                !reason.contains("maybe"),
                "the reason never quotes the answer: {reason}"
            );
        }
        other => panic!("expected InvalidAnswer, got {other:?}"),
    }
    assert_eq!(
        double.requests().await.len(),
        2,
        "exactly one repair attempt"
    );
}

#[tokio::test]
async fn mental_query_is_asked_at_temperature_zero() {
    let (double, mind) = setup().await;
    double.push_content(r#"{"is_true": true}"#);
    let (_, verdict) = mind
        .run(mental_query("They are tired."), &memory())
        .await
        .unwrap();
    assert!(verdict);
    let request = &double.requests().await[0];
    assert_eq!(request["temperature"], 0.0);
    assert_eq!(
        request["response_format"]["json_schema"]["schema"]["properties"]["is_true"]["type"],
        "boolean"
    );
}

#[tokio::test]
async fn brainstorm_returns_trimmed_non_empty_ideas() {
    let (double, mind) = setup().await;
    double.push_content(r#"{"ideas": ["a walk", "  tea ", ""]}"#);
    let (after, ideas) = mind
        .run(brainstorm("small comforts for tonight"), &memory())
        .await
        .unwrap();
    assert_eq!(ideas, ["a walk", "tea"]);
    assert_eq!(
        after.last().unwrap().content,
        "Samantha brainstormed: a walk; tea"
    );
}

#[tokio::test]
async fn instruction_returns_the_answer_as_is() {
    let (double, mind) = setup().await;
    double.push_content("  Three gentle questions.  ");
    let (after, answer) = mind
        .run(instruction("Write three gentle questions."), &memory())
        .await
        .unwrap();
    assert_eq!(answer, "Three gentle questions.");
    assert_eq!(after.last().unwrap().content, "Three gentle questions.");
    assert_eq!(
        last_message(&double.requests().await[0]),
        ("system", "Write three gentle questions.")
    );
}

#[tokio::test]
async fn summarize_returns_the_summary() {
    let (double, mind) = setup().await;
    double.push_content("They had a rough day at work.");
    let (after, summary) = mind.run(summarize("their job"), &memory()).await.unwrap();
    assert_eq!(summary, "They had a rough day at work.");
    assert_eq!(
        after.last().unwrap().content,
        "Samantha summarized the conversation: They had a rough day at work."
    );
    assert!(
        last_message(&double.requests().await[0])
            .1
            .contains("their job")
    );
}

#[tokio::test]
async fn an_empty_answer_is_repaired_then_rejected() {
    let (double, mind) = setup().await;
    double.push_content("Samantha said: \"\"");
    // A blank completion is the model client's fault to report; a blank utterance is the step's.
    double.push_content("Samantha said: \"   \"");
    let err = mind
        .run(external_dialog("Reply."), &memory())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StepError::InvalidAnswer { ref reason, .. } if reason.contains("empty")),
        "{err}"
    );
}

#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
struct Mood {
    mood: String,
    intensity: u8,
}

#[tokio::test]
async fn an_authors_typed_step_gets_its_schema_and_its_value() {
    let (double, mind) = setup().await;
    double.push_content(r#"{"mood": "weary", "intensity": 7}"#);
    let assess = typed::<Mood>("assess mood", |wm| {
        format!("How does {}'s friend feel?", wm.soul_name())
    })
    .remember(|wm, mood| {
        Some(Memory::assistant(format!(
            "{} sensed {}",
            wm.soul_name(),
            mood.mood
        )))
    });
    let (after, mood) = mind.run(assess, &memory()).await.unwrap();
    assert_eq!(
        mood,
        Mood {
            mood: "weary".into(),
            intensity: 7
        }
    );
    assert_eq!(after.last().unwrap().content, "Samantha sensed weary");

    let format = &double.requests().await[0]["response_format"]["json_schema"];
    assert_eq!(format["name"], "assess_mood");
    assert_eq!(
        format["schema"]["properties"]["intensity"]["type"],
        "integer"
    );
    assert!(format["schema"].get("$schema").is_none());
}

#[tokio::test]
async fn a_typed_step_rejects_an_answer_of_the_wrong_type_after_one_repair() {
    let (double, mind) = setup().await;
    double.push_content(r#"{"mood": "weary", "intensity": 700}"#);
    double.push_content(r#"{"mood": "weary"}"#);
    let err = mind
        .run(
            typed::<Mood>("assess_mood", |_| "How do they feel?".into()),
            &memory(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StepError::InvalidAnswer { .. }), "{err}");
}

/// What a turn stores of an answer has no control characters (PostgreSQL refuses U+0000): in
/// free text, and in JSON, where `\u0000` is an escape until decoded.
#[tokio::test]
async fn control_characters_in_answers_are_dropped_before_a_step_reads_them() {
    let (double, mind) = setup().await;
    double.push_content("Samantha said: \"I'm\u{0} here\u{7}.\r\nTake your time.\"");
    let (after, said) = mind
        .run(external_dialog("Be warm."), &memory())
        .await
        .unwrap();
    assert_eq!(said, "I'm here.\nTake your time.");
    assert_eq!(
        after.last().unwrap().content,
        "Samantha said: \"I'm here.\nTake your time.\""
    );

    double.push_content(r#"{"mood": "we\u0000ary\u001b", "intensity": 7}"#);
    let assess = typed::<Mood>("assess mood", |_| "How do they feel?".into())
        .remember(|_, mood| Some(Memory::assistant(format!("sensed {}", mood.mood))));
    let (after, mood) = mind.run(assess, &memory()).await.unwrap();
    assert_eq!(mood.mood, "weary");
    assert_eq!(after.last().unwrap().content, "sensed weary");
}

#[tokio::test]
async fn a_decision_without_choices_fails_before_calling_the_model() {
    let (double, mind) = setup().await;
    let err = mind
        .run(decision("anything", Vec::<String>::new()), &memory())
        .await
        .unwrap_err();
    assert!(matches!(err, StepError::Misconfigured { .. }), "{err}");
    assert!(double.requests().await.is_empty());
}

#[tokio::test]
async fn model_errors_come_through_typed() {
    let (double, mind) = setup().await;
    double.push(Reply::status(400));
    let err = mind
        .run(external_dialog("Reply."), &memory())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StepError::Model {
                source: ModelError::Http { status: 400, .. },
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn the_mind_counts_tokens_across_steps_and_repairs() {
    let (double, mind) = setup().await;
    double.push(Reply::ContentWithUsage("Samantha said: hi".into(), 100, 7));
    double.push(Reply::ContentWithUsage("oops".into(), 50, 3));
    double.push(Reply::ContentWithUsage(
        r#"{"is_true": true}"#.into(),
        60,
        4,
    ));
    let (wm, _) = mind
        .run(external_dialog("Greet."), &memory())
        .await
        .unwrap();
    mind.run(mental_query("They said hi."), &wm).await.unwrap();
    assert_eq!(
        mind.usage(),
        Usage {
            prompt_tokens: 210,
            completion_tokens: 14
        }
    );
}

#[tokio::test]
async fn the_step_leaves_the_input_memory_untouched() {
    let (double, mind) = setup().await;
    double.push_content("Samantha said: hi");
    let before = memory();
    let copy = before.clone();
    let (after, _) = mind.run(external_dialog("Greet."), &before).await.unwrap();
    assert_eq!(before, copy);
    assert_eq!(after.len(), before.len() + 1);
}
