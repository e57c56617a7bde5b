//! Pip, the second soul, with the model behind the OpenAI double (through the soul harness).
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use soul_processes::companion::crisis::DEFAULT_CRISIS_RESOURCES;
use soul_processes::pip::quiz::QUIZ;
use soul_processes::pip::{CRISIS_NOTE, SOUL};
use soul_testkit::soul::TestSoul;

/// A mental query's answer, as the model sends it.
fn verdict(is_true: bool) -> String {
    serde_json::json!({ "is_true": is_true }).to_string()
}

#[tokio::test]
async fn pip_answers_tersely_and_runs_a_quiz() {
    let mut pip = TestSoul::start(SOUL).await;

    pip.answers(["Pip said: \"The cell's power plant. Back to it.\""]);
    let turn = pip.send("what's a mitochondrion?").await;
    assert_eq!(turn.replies, ["The cell's power plant. Back to it."]);
    assert_eq!(turn.processes_run, ["study"]);

    pip.answers(["Pip said: \"What makes ATP?\""]);
    let turn = pip.send("quiz me").await;
    assert_eq!(turn.processes_run, ["study", "quiz"]);
    assert_eq!(turn.replies, ["What makes ATP?"]);

    // Three answers, each judged, then the score and back to study.
    for (right, reply) in [
        (
            true,
            "Right. Next: what's the powerhouse's membrane called?",
        ),
        (
            false,
            "No: the inner membrane. Last: what's glycolysis' product?",
        ),
        (true, "Right. 2/3. Back to studying."),
    ] {
        pip.answers([verdict(right), format!("Pip said: \"{reply}\"")]);
        let turn = pip.send("an answer").await;
        assert_eq!(turn.replies, [reply]);
    }
    assert_eq!(pip.state().process.as_ref().unwrap().name, "study");
    let requests = pip.model().requests().await;
    assert!(
        requests.last().unwrap().to_string().contains("2/3"),
        "the score is counted by the process, not guessed by the model"
    );
    assert_eq!(pip.model().remaining(), 0);
}

#[tokio::test]
async fn stop_ends_a_quiz_early_without_the_model() {
    let mut pip = TestSoul::start(SOUL).await.in_process(QUIZ);
    pip.answers(["Pip said: \"What makes ATP?\""]);
    pip.send("go").await;
    let turn = pip.send("stop").await;
    assert_eq!(turn.replies, ["Quiz over. Back to it."]);
    assert_eq!(turn.process, "study");
    assert_eq!(pip.model().requests().await.len(), 1);
}

#[tokio::test]
async fn pip_answers_a_crisis_phrase_with_our_text_and_no_model_call() {
    let mut pip = TestSoul::start(SOUL).await;
    let turn = pip.send("i want to end it all").await;
    assert_eq!(
        turn.replies,
        [format!("{CRISIS_NOTE}\n\n{DEFAULT_CRISIS_RESOURCES}")]
    );
    assert!(pip.model().requests().await.is_empty());
}
