//! `deep_listening`: reflective listening while the person opens up about something personal.
//!
//! Entered from `conversation` by a run-now transition — always, so its first run (invocation
//! count 0) answers a message `conversation` has already screened, and skips the screen. Later
//! messages are screened as usual; a goodbye goes to `wind_down`. When a message no longer looks
//! personal and the model agrees the person has moved on, Sage answers in its everyday voice and
//! goes back to `conversation`.

use soul_engine::prelude::*;

use super::{CONVERSATION, SOUL, WIND_DOWN, crisis, first_phrase_in, say, wind_down, word_count};

/// Reflective listening while the person opens up.
pub const DEEP_LISTENING: MentalProcess =
    mental_process!(soul = SOUL, name = "deep_listening", deep_listening);

/// Messages at least this long are worth asking about.
const LONG_MESSAGE_WORDS: usize = 15;

/// Words of feeling and hardship (written normalized) that make a short message worth asking
/// about. Only a hint: the model decides.
const PERSONAL_WORDS: &[&str] = &[
    "feel",
    "feeling",
    "felt",
    "sad",
    "lonely",
    "alone",
    "anxious",
    "anxiety",
    "scared",
    "afraid",
    "worried",
    "stress",
    "stressed",
    "overwhelmed",
    "depressed",
    "hurt",
    "cry",
    "crying",
    "grief",
    "miss",
    "struggling",
    "hard time",
    "tired of",
    "ashamed",
    "angry",
    "upset",
    "panic",
    "broke up",
    "breakup",
    "divorce",
    "died",
    "passed away",
];

/// Whether `text` looks like the person may be sharing something personal: long, or with a word
/// of feeling or hardship. Free; decides whether the model is asked at all.
pub(crate) fn looks_personal(text: &str) -> bool {
    word_count(text) >= LONG_MESSAGE_WORDS || first_phrase_in(text, PERSONAL_WORDS).is_some()
}

/// Whether the person is opening up: asked of the model only when the message looks personal.
pub(crate) async fn opens_up(cx: &ProcessContext) -> Result<bool, ProcessError> {
    if !looks_personal(&cx.perception().content) {
        return Ok(false);
    }
    let query = mental_query(
        "In their last message the person is opening up about something personal or painful, \
         and would be helped most by being listened to closely.",
    );
    let (_, opening_up) = cx.mind().run(query, cx.memory()).await?;
    Ok(opening_up)
}

async fn deep_listening(cx: ProcessContext) -> ProcessResult {
    let text = &cx.perception().content;
    if cx.invocation_count() > 0 {
        if let Some(next) = crisis::screen_message(&cx).await? {
            return Ok(next);
        }
        if wind_down::is_goodbye(text) {
            return Ok(Next::to(WIND_DOWN, cx.memory().clone()).run_now());
        }
        if !looks_personal(text) && moved_on(&cx).await? {
            let memory = say(
                &cx,
                cx.memory(),
                "They have moved on to something lighter. Follow their lead, warmly.",
            )
            .await?;
            return Ok(Next::to(CONVERSATION, memory));
        }
    }
    let memory = say(
        &cx,
        cx.memory(),
        "Listen closely. Reflect back, in your own words, what they seem to feel, and ask at most \
         one gentle, open question. No advice unless they ask for it, no platitudes, no fixing.",
    )
    .await?;
    Ok(Next::stay(memory))
}

async fn moved_on(cx: &ProcessContext) -> Result<bool, ProcessError> {
    let query = mental_query(
        "In their last message the person has moved on from the personal topic they were sharing \
         and is now talking about something lighter or everyday.",
    );
    let (_, moved_on) = cx.mind().run(query, cx.memory()).await?;
    Ok(moved_on)
}
