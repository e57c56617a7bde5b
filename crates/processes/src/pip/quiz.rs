//! `quiz`: [`QUESTIONS`] questions on what the person studies, each answer judged by the model,
//! then the score and back to `study`. "stop" (or "done", "quit") ends it early.
//!
//! Entered by a run-now transition from `study`: its first run (invocation count 0) asks the
//! first question; run *n* judges answer *n* and asks the next question, or ends the quiz.

use soul_engine::prelude::*;

use super::{SOUL, STUDY, crisis_reply, say};
use crate::companion::first_phrase_in;

/// A three-question quiz, then back to `study`.
pub const QUIZ: MentalProcess = mental_process!(soul = SOUL, name = "quiz", quiz);

/// Questions per quiz.
pub const QUESTIONS: u32 = 3;

/// Process memory key: answers judged correct so far.
const CORRECT: &str = "correct";

/// Phrases (written normalized) that end a quiz early.
const STOP: &[&str] = &["stop", "done", "quit", "enough"];

async fn quiz(cx: ProcessContext) -> ProcessResult {
    if let Some(next) = crisis_reply(&cx) {
        return Ok(next);
    }
    let asked = cx.invocation_count();
    if asked == 0 {
        let memory = say(
            &cx,
            cx.memory(),
            "Ask one short quiz question on what they are studying. Only the question.",
        )
        .await?;
        return Ok(Next::stay(memory));
    }
    if first_phrase_in(&cx.perception().content, STOP).is_some() {
        cx.speak("Quiz over. Back to it.");
        return Ok(Next::to(STUDY, cx.memory().clone()));
    }

    let judge = mental_query("The person's last message correctly answers Pip's last question.");
    let (_, right) = cx.mind().run(judge, cx.memory()).await?;
    let correct = cx.process_memory().get::<u32>(CORRECT)?.unwrap_or(0) + u32::from(right);
    cx.process_memory().set(CORRECT, &correct)?;
    let verdict = if right { "right" } else { "wrong" };
    if asked < QUESTIONS {
        let memory = say(
            &cx,
            cx.memory(),
            &format!(
                "Their answer is {verdict}: say so in a few words (give the right answer if it was \
                 wrong), then ask the next short question."
            ),
        )
        .await?;
        return Ok(Next::stay(memory));
    }
    let memory = say(
        &cx,
        cx.memory(),
        &format!(
            "Their answer is {verdict}: say so in a few words, then give the score, \
             {correct}/{QUESTIONS}, and send them back to studying."
        ),
    )
    .await?;
    Ok(Next::to(STUDY, memory))
}
