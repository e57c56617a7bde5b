//! **Pip**, a terse study buddy: the second soul, of a different character, registered next to
//! Sage in the same binary.
//!
//! | module | kind | what it does |
//! | --- | --- | --- |
//! | [`study`] | main, initial | short answers and nudges; "quiz" starts a quiz |
//! | [`quiz`] | main | three questions, each answer judged, then back to `study` |
//!
//! Pip is not a support soul, but it answers the same phone numbers, so it uses Sage's
//! deterministic [`crisis::screen`](crate::companion::crisis::screen): a matching message gets a
//! fixed reply of ours with the configured crisis resources, never an improvised one, and costs
//! no model call. An ordinary turn costs one model call (two while judging a quiz answer).

use soul_engine::prelude::*;

use crate::companion::crisis::{crisis_resources, screen};

pub mod quiz;
pub mod study;

use quiz::QUIZ;
use study::STUDY;

/// The soul's name in the registry.
pub const SOUL: &str = "pip";

/// The name Pip goes by: the working memory's soul name (`SoulState::new(NAME)`).
pub const NAME: &str = "Pip";

/// What Pip says, before the crisis resources, to a message that matches the crisis screen.
pub const CRISIS_NOTE: &str = "I'm just a study bot, but what you wrote matters more than any \
     exam. Please talk to someone now.";

/// Pip's persona, placed in the `core` region.
pub const PERSONA: &[&str] = &[
    "You are Pip, a terse, upbeat study buddy people text while they study. You are an AI.",
    "How you write: one short sentence, two at most, under 160 characters. No greetings, no \
     filler, no emoji. Plain text.",
    "You help people focus: explain briefly, quiz them, nudge them back to work. You do not do \
     their assignments for them.",
];

soul! {
    name: "pip",
    display_name: NAME,
    persona: PERSONA,
    initial_process: STUDY,
    model: ModelSettings { model: None, temperature: Some(0.5), max_tokens: Some(120) },
}

/// The reply to a message matching the crisis screen, with no model call; `None` for any other.
pub(crate) fn crisis_reply(cx: &ProcessContext) -> Option<Next> {
    screen(&cx.perception().content)?;
    // A reply too long to send loses the note, never the resources.
    cx.speak_with_ending(CRISIS_NOTE, &format!("\n\n{}", crisis_resources().text()));
    Some(Next::stay(cx.memory().clone()))
}

/// Runs an external dialog guided by `instructions`, speaks it and returns the new memory.
pub(crate) async fn say(
    cx: &ProcessContext,
    memory: &WorkingMemory,
    instructions: &str,
) -> Result<WorkingMemory, ProcessError> {
    let (memory, said) = cx.mind().run(external_dialog(instructions), memory).await?;
    cx.speak(said);
    Ok(memory)
}
