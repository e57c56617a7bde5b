//! `conversation`: everyday replies, and the hub the other processes return to.
//!
//! Each message: screened for risk (→ `crisis`); a goodbye (→ `wind_down`); a message that looks
//! like the person is opening up, confirmed by the model (→ `deep_listening`); otherwise a short,
//! warm reply. The goodbye and "looks personal" checks are word lists, so an ordinary turn costs
//! two model calls: the risk query and the reply.

use soul_engine::prelude::*;

use super::{DEEP_LISTENING, SOUL, WIND_DOWN, crisis, deep_listening, say, wind_down};

/// Everyday replies, and the hub the other processes return to.
pub const CONVERSATION: MentalProcess =
    mental_process!(soul = SOUL, name = "conversation", conversation);

async fn conversation(cx: ProcessContext) -> ProcessResult {
    if let Some(next) = crisis::screen_message(&cx).await? {
        return Ok(next);
    }
    let text = &cx.perception().content;
    if wind_down::is_goodbye(text) {
        return Ok(Next::to(WIND_DOWN, cx.memory().clone()).run_now());
    }
    if deep_listening::opens_up(&cx).await? {
        return Ok(Next::to(DEEP_LISTENING, cx.memory().clone()).run_now());
    }
    let memory = say(
        &cx,
        cx.memory(),
        "Reply to what they said, warmly and naturally, like a friend who listens.",
    )
    .await?;
    Ok(Next::stay(memory))
}
