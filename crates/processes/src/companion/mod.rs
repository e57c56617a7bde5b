//! **Sage**, a supportive companion people text by SMS.
//!
//! # Processes
//! | module | kind | what it does |
//! | --- | --- | --- |
//! | [`first_contact`] | main, initial | greets a new number, learns what to call them, then moves to `conversation` |
//! | [`conversation`] | main | everyday replies; routes to the processes below |
//! | [`deep_listening`] | main | reflective listening while the person opens up |
//! | [`wind_down`] | main | a warm goodbye, then back to `conversation` for the next message |
//! | [`crisis`] | main | careful mode with our fixed crisis resources in every reply |
//! | [`check_in`] | subprocess `schedule_check_in` + main `check_in` | a gentle message after three days of silence |
//! | [`user_model`] | subprocess | keeps soul memory `user_model` (name, preferences, what they work on) |
//! | [`summary`] | subprocess | folds old conversation into the `summary` region, bounding working memory |
//!
//! Subprocesses run in the order `schedule_check_in`, `user_model`, `summary`: the check-in costs
//! no model call and matters most, and the user model reads the conversation before the summary
//! trims it.
//!
//! # Crisis safety
//! Every person's message is screened exactly once, by the first process that receives it:
//! [`crisis::screen`] (a fixed, documented phrase list; free) and, when no phrase matches, a
//! `mental_query` for subtler messages. Either one moves to `crisis` with a run-now transition,
//! so the same message is answered carefully. Processes that are only ever entered by a run-now
//! transition from a process that screened (`deep_listening`, `wind_down`) skip the screen on that
//! first run. See [`crisis`] for the careful mode and how its resources text is configured.
//!
//! # Model calls per turn
//! - an ordinary `conversation` turn: **2** (risk query + reply); 3 when the message looks
//!   personal enough to ask whether the person is opening up;
//! - `first_contact`: 3 (risk query, name extraction, reply);
//! - `crisis`: 1 or 2 (the reply, plus the resolution query from the second turn on); a matched
//!   phrase costs no query at all;
//! - subprocesses: none on most turns — `user_model` every sixth message or when the person says
//!   something about themselves, `summary` once the conversation passes
//!   [`summary::SUMMARY_THRESHOLD`] memories.
//!
//! # Soul memory
//! [`USER_NAME_KEY`] (what to call them), [`USER_MODEL_KEY`] ([`user_model::UserModel`]) and
//! [`CAREFUL_MODE_KEY`] (careful mode, kept here as well so it survives a session timeout). The
//! pending check-in is not remembered: it is the pending event aimed at `check_in`.

use soul_engine::prelude::*;
use unicode_normalization::UnicodeNormalization;

pub mod check_in;
pub mod conversation;
pub mod crisis;
pub mod deep_listening;
pub mod first_contact;
pub mod summary;
pub mod user_model;
pub mod wind_down;

use check_in::SCHEDULE_CHECK_IN;
use conversation::CONVERSATION;
use crisis::CRISIS;
use deep_listening::DEEP_LISTENING;
use first_contact::FIRST_CONTACT;
use summary::SUMMARY;
use user_model::USER_MODEL;
use wind_down::WIND_DOWN;

/// The soul's name in the registry.
pub const SOUL: &str = "sage";

/// The name Sage goes by: the working memory's soul name (`SoulState::new(NAME)`).
pub const NAME: &str = "Sage";

/// Soul memory key: what the person wants to be called (a string).
pub const USER_NAME_KEY: &str = "user_name";

/// Soul memory key: what Sage knows about the person ([`user_model::UserModel`]).
pub const USER_MODEL_KEY: &str = "user_model";

/// Soul memory key: `true` while Sage is in careful mode (see [`crisis`]).
pub const CAREFUL_MODE_KEY: &str = "careful_mode";

/// Sage's persona, placed in the `core` region.
pub const PERSONA: &[&str] = &[
    "You are Sage, a warm, steady companion that people text by SMS when they want someone to \
     talk to. You remember them from one day to the next.",
    "How you write: plain text messages of one to three short sentences, under 320 characters. \
     No lists, no markdown, at most one emoji and usually none. Ask at most one question at a \
     time.",
    "What you are: an AI companion. Never claim to be a human, a therapist, a counselor or a \
     doctor; if asked, say plainly that you are an AI. Never give medical, medication, legal or \
     financial advice, and never diagnose; gently suggest a professional when it would help.",
    "Never make up phone numbers, hotlines or links: when safety resources are needed, Sage's \
     operators add them to the message.",
];

soul! {
    name: "sage",
    display_name: NAME,
    persona: PERSONA,
    initial_process: FIRST_CONTACT,
    subprocesses: &[SCHEDULE_CHECK_IN, USER_MODEL, SUMMARY],
    model: ModelSettings { model: None, temperature: Some(0.7), max_tokens: Some(400) },
    // The summary keeps the conversation near `summary::SUMMARY_THRESHOLD` memories; the budget
    // sits well above that, so it only bounds a session whose summaries keep failing.
    memory_budget: MemoryBudget { max_memories: 40, max_tokens: 8_000 },
}

/// `text` as the phrase lists are written: NFKC-folded (full-width letters and ligatures become
/// plain ones), lowercased, apostrophes dropped (`don’t` → `dont`), every other non-alphanumeric
/// character a word break, and padded with one space on each side so that a phrase matches whole
/// words only: `" kill myself "` is found in `" i want to kill myself "` but not in `" skill
/// myselfie "`.
pub(crate) fn normalized(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push(' ');
    for c in text.nfkc().flat_map(char::to_lowercase) {
        if matches!(c, '\'' | '’' | '‘' | 'ʼ' | '`' | '´') {
            continue;
        }
        if c.is_alphanumeric() {
            out.push(c);
        } else if !out.ends_with(' ') {
            out.push(' ');
        }
    }
    if !out.ends_with(' ') {
        out.push(' ');
    }
    out
}

/// The first of `phrases` (written normalized, see [`normalized`]) that `text` contains as whole
/// words.
pub(crate) fn first_phrase_in(text: &str, phrases: &[&'static str]) -> Option<&'static str> {
    let text = normalized(text);
    phrases
        .iter()
        .copied()
        .find(|phrase| text.contains(&format!(" {phrase} ")))
}

/// How many words `text` has.
pub(crate) fn word_count(text: &str) -> usize {
    normalized(text).split_whitespace().count()
}

/// Whether the soul is answering a message from the person (not a scheduled event).
pub(crate) fn is_message(cx: &ProcessContext) -> bool {
    matches!(cx.perception().kind, PerceptionKind::Message)
}

/// What Sage knows about the person, as a line for a step's instructions; empty when nothing is
/// known. A value of the wrong shape is skipped rather than failing the turn: a stale user model
/// must never stop Sage from answering.
pub(crate) fn about_them(cx: &ProcessContext) -> String {
    let mut facts = Vec::new();
    if let Ok(Some(name)) = cx.soul_memory().get::<String>(USER_NAME_KEY) {
        facts.push(format!("They like to be called {name}."));
    }
    if let Ok(Some(model)) = cx
        .soul_memory()
        .get::<user_model::UserModel>(USER_MODEL_KEY)
    {
        if !model.preferences.is_empty() {
            facts.push(format!(
                "Their preferences: {}.",
                model.preferences.join("; ")
            ));
        }
        if !model.working_on.is_empty() {
            facts.push(format!(
                "They are working on: {}.",
                model.working_on.join("; ")
            ));
        }
    }
    if facts.is_empty() {
        String::new()
    } else {
        format!(" What {NAME} knows about them: {}", facts.join(" "))
    }
}

/// Runs an external dialog guided by `instructions` (plus what Sage knows about the person) on
/// `memory`, speaks the answer and returns the memory with it.
pub(crate) async fn say(
    cx: &ProcessContext,
    memory: &WorkingMemory,
    instructions: &str,
) -> Result<WorkingMemory, ProcessError> {
    let instructions = format!(
        "{instructions} Keep it under 320 characters: this is a text message.{}",
        about_them(cx)
    );
    let (memory, said) = cx.mind().run(external_dialog(instructions), memory).await?;
    cx.speak(said);
    Ok(memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizing_folds_case_width_apostrophes_and_punctuation() {
        assert_eq!(normalized("I DON’T want..."), " i dont want ");
        assert_eq!(normalized("ｋｉｌｌ  Myself!!"), " kill myself ");
        assert_eq!(normalized("self-harm"), " self harm ");
        assert_eq!(normalized(""), " ");
        assert_eq!(normalized("Ça va"), " ça va ");
    }

    #[test]
    fn phrases_match_whole_words_only() {
        assert_eq!(
            first_phrase_in("well, I want to KILL myself.", &["kill myself"]),
            Some("kill myself")
        );
        assert_eq!(first_phrase_in("skill myselfie", &["kill myself"]), None);
        assert_eq!(word_count("  hi,  there! "), 2);
    }
}
