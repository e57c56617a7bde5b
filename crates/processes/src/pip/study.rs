//! `study`, Pip's initial process: short answers and nudges; a message asking for a quiz starts
//! one at once.

use soul_engine::prelude::*;

use super::{QUIZ, SOUL, crisis_reply, say};
use crate::companion::first_phrase_in;

/// Pip's initial process: short answers and nudges.
pub const STUDY: MentalProcess = mental_process!(soul = SOUL, name = "study", study);

/// Phrases (written normalized) that start a quiz.
const QUIZ_REQUESTS: &[&str] = &["quiz", "quiz me", "test me"];

async fn study(cx: ProcessContext) -> ProcessResult {
    if let Some(next) = crisis_reply(&cx) {
        return Ok(next);
    }
    if first_phrase_in(&cx.perception().content, QUIZ_REQUESTS).is_some() {
        return Ok(Next::to(QUIZ, cx.memory().clone()).run_now());
    }
    let memory = say(
        &cx,
        cx.memory(),
        "Answer briefly, or nudge them back to studying.",
    )
    .await?;
    Ok(Next::stay(memory))
}
