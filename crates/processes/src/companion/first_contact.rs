//! `first_contact`, the initial process: greets a new number and learns what to call them.
//!
//! Each message: screened for risk; then a typed step asks whether the person said what they
//! want to be called. A name goes to soul memory [`USER_NAME_KEY`] and
//! Sage moves to `conversation`. Without one, Sage introduces itself and asks; after three
//! messages without a name it stops asking and moves on. A person Sage already knows by name
//! (their session timed out and started over here) goes straight to `conversation`, or to
//! `crisis` if they were in careful mode.

use schemars::JsonSchema;
use serde::Deserialize;
use soul_engine::prelude::*;

use super::{CONVERSATION, CRISIS, NAME, SOUL, USER_NAME_KEY, crisis, say};

/// The initial process: greets a new number and learns what to call them.
pub const FIRST_CONTACT: MentalProcess =
    mental_process!(soul = SOUL, name = "first_contact", first_contact);

/// How many messages Sage asks for a name before it lets the question go.
const ASK_FOR_NAME_AT_MOST: u32 = 3;

/// Names longer than this are almost certainly not names.
const MAX_NAME_CHARS: usize = 40;

/// The answer of the name step.
#[derive(Deserialize, JsonSchema)]
struct GivenName {
    /// The name or nickname the person asked to be called in their messages, exactly as they
    /// wrote it; null if they have not said.
    name: Option<String>,
}

async fn first_contact(cx: ProcessContext) -> ProcessResult {
    if crisis::in_careful_mode(&cx) {
        // A session that timed out in careful mode starts over here; careful mode goes on.
        return Ok(Next::to(CRISIS, cx.memory().clone()).run_now());
    }
    let known: Option<String> = cx.soul_memory().get(USER_NAME_KEY).unwrap_or(None);
    if known.is_some() {
        // `conversation` screens this message; screening here too would ask the model twice.
        return Ok(Next::to(CONVERSATION, cx.memory().clone()).run_now());
    }
    if let Some(next) = crisis::screen_message(&cx).await? {
        return Ok(next);
    }
    let step = typed::<GivenName>("learn_name", |_| {
        format!(
            "Model the mind of {NAME}.\n\n{NAME} wants to know what the person would like to be \
             called. Did they say their name or a nickname in their messages? Answer with JSON: \
             {{\"name\": \"...\"}}, or {{\"name\": null}} if they have not said."
        )
    });
    let (_, given) = cx.mind().run(step, cx.memory()).await?;
    let name = given
        .name
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty() && name.chars().count() <= MAX_NAME_CHARS);

    if let Some(name) = name {
        cx.soul_memory().set(USER_NAME_KEY, &name)?;
        let memory = say(
            &cx,
            cx.memory(),
            &format!(
                "Greet {name} by name, say you are glad to meet them, and invite them to share \
                 what is on their mind."
            ),
        )
        .await?;
        return Ok(Next::to(CONVERSATION, memory));
    }
    if cx.invocation_count() + 1 >= ASK_FOR_NAME_AT_MOST {
        let memory = say(
            &cx,
            cx.memory(),
            "Answer what they said, warmly. Do not ask for their name again.",
        )
        .await?;
        return Ok(Next::to(CONVERSATION, memory));
    }
    let instructions = if cx.invocation_count() == 0 {
        "This is the first message from a new person. Say hi, introduce yourself as Sage, an AI \
         companion they can text any time, and ask what they would like to be called."
    } else {
        "Answer what they said, then gently ask again what they would like to be called."
    };
    let memory = say(&cx, cx.memory(), instructions).await?;
    Ok(Next::stay(memory))
}
