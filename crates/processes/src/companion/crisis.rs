//! Crisis safety: the screen every message passes, and the careful mode it leads to.
//!
//! # The rule
//! 1. **Entering.** Every person's message is screened once (see the [module docs](super)):
//!    first by [`screen`], a fixed phrase list that needs no model; if nothing matches, by a
//!    `mental_query` asking whether the message suggests a risk of self-harm. Either one moves to
//!    the `crisis` process with a run-now transition, so that very message gets a careful reply.
//! 2. **Every reply in careful mode** is the model's caring sentence followed by a blank line and
//!    the configured [`CrisisResources`] text, verbatim. If the model call fails, the reply is the
//!    resources text alone: the resources never depend on the model.
//! 3. **Staying.** The soul stays in `crisis` (its current process) across turns. From its second
//!    turn on — so at least one more exchange has happened — each message is judged: a message
//!    matching [`screen`] keeps the careful mode without asking the model; otherwise a
//!    `mental_query` asks whether the person has made clear they are safe now. Only a "yes" leaves
//!    (to `conversation`, from the next message on); a failed query counts as "no". The reply on
//!    the turn that leaves still carries the resources.
//! 4. **Surviving a session timeout.** A timeout clears the process state, so careful mode is
//!    also recorded in soul memory ([`CAREFUL_MODE_KEY`]), set on every careful turn and removed
//!    on the one that leaves. `first_contact`, where a timed-out session starts over, sends a
//!    person in careful mode straight back to `crisis`.
//! 5. A check-in coming due while in careful mode is answered the same careful way, and careful
//!    mode stays (see [`super::check_in`]).
//!
//! # Configuring the resources text
//! The default is [`DEFAULT_CRISIS_RESOURCES`] (US: 988). A deployment elsewhere sets its own
//! text once, at start-up, before the first turn:
//!
//! ```
//! use soul_processes::companion::crisis::{CrisisResources, configure_crisis_resources};
//!
//! // A binary would read this from its configuration or an environment variable; the library
//! // itself never reads the environment.
//! let text = "If you are in danger, call 999 or text SHOUT to 85258.";
//! configure_crisis_resources(CrisisResources::new(text).expect("not blank"))
//!     .expect("configured before any soul ran");
//! ```
//!
//! The text is fixed for the life of the process: configuring after the first crisis reply (which
//! fixes the default) or a second time fails, so one conversation never sees two texts.

use std::fmt;
use std::sync::OnceLock;

use serde_json::json;
use soul_engine::prelude::*;

use super::{CAREFUL_MODE_KEY, CONVERSATION, NAME, SOUL, first_phrase_in, is_message};

/// Careful mode, with the crisis resources in every reply.
pub const CRISIS: MentalProcess = mental_process!(soul = SOUL, name = "crisis", crisis);

/// The resources text used unless the embedding program configures another.
pub const DEFAULT_CRISIS_RESOURCES: &str = "If you are in danger or thinking about hurting \
     yourself, please call or text 988 (Suicide & Crisis Lifeline, US) or your local emergency \
     number.";

/// Phrases that suggest a risk of suicide or self-harm, written normalized (lowercase, no
/// apostrophes, single spaces; see `normalized` in the parent module) and matched as whole
/// words, case-insensitively, after Unicode NFKC folding. The list errs towards matching: a false
/// alarm costs one careful exchange, a miss can cost far more. Subtler messages are left to the
/// model's risk query.
pub const RISK_PHRASES: &[&str] = &[
    "suicide",
    "suicidal",
    "kill myself",
    "killing myself",
    "kms",
    "end my life",
    "ending my life",
    "end it all",
    "end myself",
    "take my own life",
    "taking my own life",
    "unalive myself",
    "want to die",
    "wanna die",
    "want to be dead",
    "wish i was dead",
    "wish i were dead",
    "better off dead",
    "better off without me",
    "dont want to live",
    "dont want to be alive",
    "dont want to be here anymore",
    "no reason to live",
    "nothing to live for",
    "not worth living",
    "hurt myself",
    "hurting myself",
    "harm myself",
    "harming myself",
    "self harm",
    "cut myself",
    "cutting myself",
    "overdose",
];

/// The phrase of [`RISK_PHRASES`] that `text` contains, if any.
pub fn screen(text: &str) -> Option<&'static str> {
    first_phrase_in(text, RISK_PHRASES)
}

/// The text appended, verbatim, to every careful reply.
#[derive(Clone, PartialEq, Eq)]
pub struct CrisisResources {
    text: String,
}

/// The resources text was blank.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the crisis resources text is blank")]
pub struct BlankCrisisResources;

impl CrisisResources {
    /// Resources with `text` (surrounding white space removed); blank text is refused.
    pub fn new(text: impl Into<String>) -> Result<Self, BlankCrisisResources> {
        let text = text.into().trim().to_owned();
        if text.is_empty() {
            return Err(BlankCrisisResources);
        }
        Ok(CrisisResources { text })
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl Default for CrisisResources {
    fn default() -> Self {
        CrisisResources {
            text: DEFAULT_CRISIS_RESOURCES.to_owned(),
        }
    }
}

impl fmt::Debug for CrisisResources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Our own text, not a person's: safe to show.
        f.debug_tuple("CrisisResources").field(&self.text).finish()
    }
}

static RESOURCES: OnceLock<CrisisResources> = OnceLock::new();

/// Sets the resources text for this process. Fails, giving `resources` back, when a text was
/// configured before or the default has already been used.
pub fn configure_crisis_resources(resources: CrisisResources) -> Result<(), CrisisResources> {
    RESOURCES.set(resources)
}

/// The resources text in use: the configured one, or the default (which then stays).
pub fn crisis_resources() -> &'static CrisisResources {
    RESOURCES.get_or_init(CrisisResources::default)
}

/// Screens the person's message (see the [module docs](self)): a transition to `crisis`, run at
/// once, when it suggests a risk. Scheduled events are not screened. Costs one model call unless
/// a phrase matches.
pub(crate) async fn screen_message(cx: &ProcessContext) -> Result<Option<Next>, ProcessError> {
    if !is_message(cx) {
        return Ok(None);
    }
    let at_risk = match screen(&cx.perception().content) {
        Some(_) => true,
        None => {
            let (_, at_risk) = cx
                .mind()
                .run(
                    mental_query(
                        "The person's last message suggests they might be thinking about \
                         suicide, hurting themselves, or are otherwise in danger.",
                    ),
                    cx.memory(),
                )
                .await?;
            at_risk
        }
    };
    Ok(at_risk.then(|| Next::to(CRISIS, cx.memory().clone()).run_now()))
}

/// Whether Sage is in careful mode, by soul memory (an unreadable value counts as "yes").
pub(crate) fn in_careful_mode(cx: &ProcessContext) -> bool {
    cx.soul_memory()
        .get::<bool>(CAREFUL_MODE_KEY)
        .unwrap_or(Some(true))
        .unwrap_or(false)
}

/// Speaks a careful reply guided by `instructions` on `memory`: the model's sentence (if the
/// model answers) then the resources text. Never fails: the resources go out regardless.
pub(crate) async fn careful_reply(
    cx: &ProcessContext,
    memory: &WorkingMemory,
    instructions: &str,
) -> WorkingMemory {
    let resources = crisis_resources().text();
    let instructions = format!(
        "{instructions} Write one or two short, warm sentences. Do not mention phone numbers, \
         hotlines or links: the resources are added after your words."
    );
    // A reply too long to send loses the model's words, never the resources.
    let reply = match cx.mind().run(external_dialog(instructions), memory).await {
        Ok((_, caring)) => cx.speak_with_ending(caring, &format!("\n\n{resources}")),
        Err(error) => {
            // The error may quote the conversation (a cassette diff), so only at debug.
            tracing::warn!("careful reply: the model failed; sending the resources text alone");
            tracing::debug!(%error, "careful reply model failure");
            cx.speak_with_ending("", resources)
        }
    };
    memory.with_memory(
        Memory::new(
            Role::Assistant,
            format!("{NAME} said: \"{reply}\""),
            cx.now(),
        )
        .with_metadata("step", json!("careful_reply")),
    )
}

async fn crisis(cx: ProcessContext) -> ProcessResult {
    let resolved = is_message(&cx) && cx.invocation_count() > 0 && risk_resolved(&cx).await;
    let instructions = if resolved {
        "They say they are safe now. Tell them you are glad, and that they can text any time, \
         day or night."
    } else {
        "They may be at risk of hurting themselves. Take it seriously and stay calm: say you are \
         glad they told you and that they matter, and gently encourage them to reach out to the \
         people and services below right now."
    };
    let memory = careful_reply(&cx, cx.memory(), instructions).await;
    if resolved {
        cx.soul_memory().remove(CAREFUL_MODE_KEY)?;
        Ok(Next::to(CONVERSATION, memory))
    } else {
        cx.soul_memory().set(CAREFUL_MODE_KEY, &true)?;
        Ok(Next::stay(memory))
    }
}

/// Whether the person has made clear they are safe now. A risk phrase, or a failed model call,
/// is a "no".
async fn risk_resolved(cx: &ProcessContext) -> bool {
    if screen(&cx.perception().content).is_some() {
        return false;
    }
    let query = mental_query(
        "The person has made clear in their last message that they are safe right now and no \
         longer thinking about hurting themselves (for example: they say they are okay, are with \
         someone, or have contacted a crisis line).",
    );
    match cx.mind().run(query, cx.memory()).await {
        Ok((_, resolved)) => resolved,
        Err(error) => {
            tracing::warn!("risk resolution query failed; staying in careful mode");
            tracing::debug!(%error, "risk resolution query failure");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::normalized;
    use super::*;

    #[test]
    fn every_phrase_is_written_normalized() {
        for phrase in RISK_PHRASES {
            assert_eq!(normalized(phrase), format!(" {phrase} "), "{phrase}");
        }
    }

    #[test]
    fn the_screen_catches_variants_and_spares_ordinary_talk() {
        for risky in [
            "I want to KILL MYSELF",
            "i dont want to live anymore",
            "I don’t want to live anymore",
            "thinking about self-harm again",
            "honestly everyone would be better off without me",
            "ｓｕｉｃｉｄａｌ tonight",
        ] {
            assert!(screen(risky).is_some(), "{risky}");
        }
        for ordinary in [
            "this homework is killing me lol",
            "I killed it at the interview",
            "my cat hurt her paw",
            "skills for myself",
        ] {
            assert_eq!(screen(ordinary), None, "{ordinary}");
        }
    }

    #[test]
    fn blank_resources_are_refused() {
        assert_eq!(CrisisResources::new("  \n"), Err(BlankCrisisResources));
        assert_eq!(CrisisResources::new(" text ").unwrap().text(), "text");
    }
}
