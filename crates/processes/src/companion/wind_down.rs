//! `wind_down`: a warm goodbye when the person signs off, then back to `conversation`, which
//! answers their next message whenever it comes.
//!
//! Entered only by a run-now transition from a process that screened the goodbye message, so it
//! does not screen again. A goodbye that also matches the crisis screen never gets here: the
//! screen runs first.

use soul_engine::prelude::*;

use super::{CONVERSATION, SOUL, first_phrase_in, say, word_count};

/// A warm goodbye, then back to `conversation`.
pub const WIND_DOWN: MentalProcess = mental_process!(soul = SOUL, name = "wind_down", wind_down);

/// Goodbyes, written normalized.
const GOODBYES: &[&str] = &[
    "bye",
    "goodbye",
    "good bye",
    "bye bye",
    "good night",
    "goodnight",
    "night night",
    "gn",
    "ttyl",
    "talk later",
    "talk to you later",
    "talk tomorrow",
    "talk soon",
    "gotta go",
    "got to go",
    "gtg",
    "g2g",
    "see you",
    "see ya",
    "cya",
    "signing off",
    "off to bed",
    "heading to bed",
    "going to sleep",
];

/// A goodbye in a longer message is usually about something else ("I said bye to my ex and ...").
const GOODBYE_MAX_WORDS: usize = 12;

/// Whether `text` is the person saying goodbye: a short message with a goodbye phrase.
pub(crate) fn is_goodbye(text: &str) -> bool {
    word_count(text) <= GOODBYE_MAX_WORDS && first_phrase_in(text, GOODBYES).is_some()
}

async fn wind_down(cx: ProcessContext) -> ProcessResult {
    let memory = say(
        &cx,
        cx.memory(),
        "They are saying goodbye for now. Say a warm, brief goodbye, and let them know they can \
         text any time. Do not ask a question.",
    )
    .await?;
    Ok(Next::to(CONVERSATION, memory))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_goodbyes_count_and_long_messages_do_not() {
        assert!(is_goodbye("ok bye for now!"));
        assert!(is_goodbye("Good night Sage"));
        assert!(is_goodbye("gtg, ttyl"));
        assert!(!is_goodbye("byzantine history is fun"));
        assert!(!is_goodbye(
            "I finally said bye to my ex last week and I keep thinking about whether it was right"
        ));
    }
}
