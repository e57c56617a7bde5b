//! Pip, the second soul, with the model behind the OpenAI double.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

mod common;

use common::{runtime, say, time, verdict};
use soul_engine::process::SoulState;
use soul_processes::companion::crisis::DEFAULT_CRISIS_RESOURCES;
use soul_processes::pip::{CRISIS_NOTE, NAME};

#[tokio::test]
async fn pip_answers_tersely_and_runs_a_quiz() {
    let (double, runtime) = runtime("pip").await;
    let mut state = SoulState::new(NAME);

    double.push_content("Pip said: \"The cell's power plant. Back to it.\"");
    let (main, _) = say(&runtime, &mut state, "what's a mitochondrion?", time(0)).await;
    assert_eq!(main.replies, ["The cell's power plant. Back to it."]);
    assert_eq!(main.processes_run, ["study"]);

    double.push_content("Pip said: \"What makes ATP?\"");
    let (main, _) = say(&runtime, &mut state, "quiz me", time(1)).await;
    assert_eq!(main.processes_run, ["study", "quiz"]);
    assert_eq!(main.replies, ["What makes ATP?"]);

    // Three answers, each judged, then the score and back to study.
    for (i, (right, reply)) in [
        (
            true,
            "Right. Next: what's the powerhouse's membrane called?",
        ),
        (
            false,
            "No: the inner membrane. Last: what's glycolysis' product?",
        ),
        (true, "Right. 2/3. Back to studying."),
    ]
    .into_iter()
    .enumerate()
    {
        double
            .push_content(verdict(right))
            .push_content(format!("Pip said: \"{reply}\""));
        let (main, _) = say(&runtime, &mut state, "an answer", time(2 + i as i64)).await;
        assert_eq!(main.replies, [reply]);
    }
    assert_eq!(state.process.as_ref().unwrap().name, "study");
    let requests = double.requests().await;
    assert!(
        requests.last().unwrap().to_string().contains("2/3"),
        "the score is counted by the process, not guessed by the model"
    );
    assert_eq!(double.remaining(), 0);
}

#[tokio::test]
async fn pip_answers_a_crisis_phrase_with_our_text_and_no_model_call() {
    let (double, runtime) = runtime("pip").await;
    let mut state = SoulState::new(NAME);
    let (main, _) = say(&runtime, &mut state, "i want to end it all", time(0)).await;
    assert_eq!(
        main.replies,
        [format!("{CRISIS_NOTE}\n\n{DEFAULT_CRISIS_RESOURCES}")]
    );
    assert!(double.requests().await.is_empty());
}
