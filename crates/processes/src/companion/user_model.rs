//! The `user_model` subprocess: what Sage knows about the person, in soul memory
//! [`USER_MODEL_KEY`], so it survives sessions and summaries.
//!
//! To keep model calls low it runs its one typed step only when the person seems to say
//! something about themselves (a word list) or every [`UPDATE_EVERY`]th message otherwise. The
//! step sees the current model and the conversation, and returns the whole updated model. A name
//! it learns also fills soul memory [`USER_NAME_KEY`] when that is empty.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use soul_engine::prelude::*;

use super::{NAME, SOUL, USER_MODEL_KEY, USER_NAME_KEY, first_phrase_in, is_message};

/// Keeps soul memory `user_model` up to date.
pub const USER_MODEL: Subprocess = subprocess!(soul = SOUL, name = "user_model", user_model);

/// Messages between updates when the person says nothing about themselves.
pub const UPDATE_EVERY: u32 = 6;

/// Process memory key: messages since the last update.
const SINCE_UPDATE: &str = "messages_since_update";

/// At most this many entries per list, so the model stays a short note.
const MAX_ENTRIES: usize = 8;

/// Phrases (written normalized) with which people tend to say something about themselves.
const ABOUT_THEMSELVES: &[&str] = &[
    "my name",
    "call me",
    "i like",
    "i love",
    "i hate",
    "i prefer",
    "i enjoy",
    "i work",
    "working on",
    "my job",
    "i study",
    "im studying",
    "i am studying",
    "my project",
    "im a",
    "im an",
    "i am a",
    "i am an",
];

/// What Sage knows about the person. `Debug` shows sizes only: this is what they confided.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserModel {
    /// What they want to be called, if they said.
    pub name: Option<String>,
    /// Their likes, dislikes and how they like to be talked to, each a short phrase.
    #[serde(default)]
    pub preferences: Vec<String>,
    /// What they are working on or dealing with, each a short phrase.
    #[serde(default)]
    pub working_on: Vec<String>,
}

impl UserModel {
    /// Blank entries dropped, white space trimmed, duplicates removed, lists capped.
    fn tidied(self) -> UserModel {
        fn tidy(entries: Vec<String>) -> Vec<String> {
            let mut kept: Vec<String> = Vec::new();
            for entry in entries {
                let entry = entry.trim().to_owned();
                if !entry.is_empty() && !kept.contains(&entry) && kept.len() < MAX_ENTRIES {
                    kept.push(entry);
                }
            }
            kept
        }
        UserModel {
            name: self
                .name
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty()),
            preferences: tidy(self.preferences),
            working_on: tidy(self.working_on),
        }
    }
}

impl fmt::Debug for UserModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserModel")
            .field("name", &self.name.as_ref().map(|_| "<redacted>"))
            .field("preferences", &self.preferences.len())
            .field("working_on", &self.working_on.len())
            .finish()
    }
}

async fn user_model(cx: ProcessContext) -> ProcessResult {
    let memory = cx.memory().clone();
    if !is_message(&cx) {
        return Ok(Next::stay(memory));
    }
    let since: u32 = cx.process_memory().get(SINCE_UPDATE)?.unwrap_or(0) + 1;
    let about_themselves = first_phrase_in(&cx.perception().content, ABOUT_THEMSELVES).is_some();
    if since < UPDATE_EVERY && !about_themselves {
        cx.process_memory().set(SINCE_UPDATE, &since)?;
        return Ok(Next::stay(memory));
    }

    let current: UserModel = cx
        .soul_memory()
        .get(USER_MODEL_KEY)
        .unwrap_or(None)
        .unwrap_or_default();
    let current = serde_json::to_string(&current)
        .map_err(|e| ProcessError::failed(format!("the user model is not JSON: {e}")))?;
    let step = typed::<UserModel>("update_user_model", move |_| {
        format!(
            "Model the mind of {NAME}.\n\n{NAME} keeps short notes about the person. The notes so \
             far: {current}\n\nUpdate them with anything new the person said about themselves in \
             the conversation: what they want to be called, their preferences, and what they are \
             working on or dealing with. Keep what is still true, drop what they corrected, and \
             keep each entry to a few words. Answer with the complete notes as JSON: \
             {{\"name\": ... or null, \"preferences\": [...], \"working_on\": [...]}}"
        )
    });
    let (_, updated) = cx.mind().run(step, &memory).await?;
    let updated = updated.tidied();
    if let Some(name) = &updated.name {
        let known: Option<String> = cx.soul_memory().get(USER_NAME_KEY).unwrap_or(None);
        if known.is_none() {
            cx.soul_memory().set(USER_NAME_KEY, name)?;
        }
    }
    cx.soul_memory().set(USER_MODEL_KEY, &updated)?;
    cx.process_memory().set(SINCE_UPDATE, &0)?;
    Ok(Next::stay(memory))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tidying_trims_dedupes_and_caps() {
        let model = UserModel {
            name: Some("  ".into()),
            preferences: vec![" tea ".into(), "tea".into(), String::new()],
            working_on: (0..20).map(|i| format!("thing {i}")).collect(),
        }
        .tidied();
        assert_eq!(model.name, None);
        assert_eq!(model.preferences, ["tea"]);
        assert_eq!(model.working_on.len(), MAX_ENTRIES);
    }

    #[test]
    fn debug_shows_no_contents() {
        let model = UserModel {
            name: Some("Ana".into()),
            preferences: vec!["tea".into()],
            working_on: vec![],
        };
        let printed = format!("{model:?}");
        assert!(
            !printed.contains("Ana") && !printed.contains("tea"),
            "{printed}"
        );
    }
}
