//! The files of a recorded conversation: `conversation.json` (the steps and what each must do)
//! and `answers.json` (the model's answers, step by step, for re-recording offline).
//!
//! See `docs/replay.md` for the whole layout of a conversation directory.

use std::fs;
use std::path::Path;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The script of a conversation, `conversation.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conversation {
    /// What the conversation shows, in one line.
    pub title: String,
    /// The soul that answers, by registry name (`sage`, `pip`).
    pub soul: String,
    /// The steps, in time order.
    pub steps: Vec<Step>,
}

/// One step: a message, an opt-out change or the firing of due events, at a time, with what it
/// must lead to.
///
/// Exactly one of `say`, `opt_out` and `fire_due_events` is given; `from` goes with the first two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// When it happens: the clock of the whole stack reads this during the step.
    pub at: DateTime<Utc>,
    /// The person's address (a synthetic phone number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A message from the person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub say: Option<String>,
    /// The channel recorded STOP (`true`) or START (`false`) from the person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_out: Option<bool>,
    /// Scheduled events due by `at` fire.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fire_due_events: bool,
    /// What the step must lead to.
    #[serde(default)]
    pub expect: Outcome,
}

/// What a step does, once [`Step::action`] has checked its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// `from` sends `text`.
    Say {
        /// The sender.
        from: &'a str,
        /// The message.
        text: &'a str,
    },
    /// The channel recorded that `from` opted out (or back in).
    OptOut {
        /// The person.
        from: &'a str,
        /// `true` for STOP, `false` for START.
        opted_out: bool,
    },
    /// Due scheduled events fire.
    FireDueEvents,
}

impl Step {
    /// What the step does; an error names the problem when the fields do not make one action.
    pub fn action(&self) -> anyhow::Result<Action<'_>> {
        match (
            self.from.as_deref(),
            self.say.as_deref(),
            self.opt_out,
            self.fire_due_events,
        ) {
            (Some(from), Some(text), None, false) => Ok(Action::Say { from, text }),
            (Some(from), None, Some(opted_out), false) => Ok(Action::OptOut { from, opted_out }),
            (None, None, None, true) => Ok(Action::FireDueEvents),
            _ => bail!(
                "a step is one of {{at, from, say}}, {{at, from, opt_out}} or \
                 {{at, fire_due_events: true}}"
            ),
        }
    }
}

/// What a step led to: expected in `conversation.json`, observed by a replay. Empty fields are
/// left out of the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    /// The replies sent, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replies: Vec<String>,
    /// The processes that ran, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes_run: Vec<String>,
    /// The process the session is in afterwards; absent when no turn ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// The number of the session that began with this step (first contact: 1; after the
    /// session timeout: the next number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_session: Option<i64>,
    /// Soul memory changes, by key: `+ key = value` (set) or `- key` (removed). Ids generated at
    /// run time are shown as `<id>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory: Vec<String>,
    /// Scheduled events added (`+`) or gone (`-`: fired or cancelled), with their process and
    /// due time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// How many turns the due events ran (each started event's turn, and any message its
    /// commit handed over).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fired: usize,
    /// The summary the soul wrote of the conversation so far, when it wrote one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The engine failed and the fallback reply was sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fell_back: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One model answer in `answers.json`: the text the model sends, or, for readability, a JSON
/// object standing for its compact text (`{"is_true": false}` sends `{"is_true":false}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Answer {
    /// A JSON answer (to a typed step or a query).
    Json(serde_json::Map<String, serde_json::Value>),
    /// Any other answer, verbatim.
    Text(String),
}

impl Answer {
    /// The answer as the model sends it.
    pub fn content(&self) -> String {
        match self {
            Answer::Json(object) => serde_json::Value::Object(object.clone()).to_string(),
            Answer::Text(text) => text.clone(),
        }
    }

    /// The answer for `content`: a JSON object when that is exactly its compact form, so that
    /// writing and reading back gives the same content.
    pub fn from_content(content: &str) -> Answer {
        match serde_json::from_str::<serde_json::Value>(content) {
            Ok(serde_json::Value::Object(object))
                if serde_json::to_string(&object).is_ok_and(|compact| compact == content) =>
            {
                Answer::Json(object)
            }
            _ => Answer::Text(content.to_owned()),
        }
    }
}

/// The model's answers for one step, in the order the soul asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepAnswers {
    /// The step, counting from 1.
    pub step: usize,
    /// The answers.
    pub answers: Vec<Answer>,
}

/// `answers.json`: per step that asks the model, its answers.
pub type Answers = Vec<StepAnswers>;

/// The script's file name.
pub const CONVERSATION_FILE: &str = "conversation.json";
/// The model traffic's file name.
pub const CASSETTE_FILE: &str = "cassette.json";
/// The model answers' file name.
pub const ANSWERS_FILE: &str = "answers.json";
/// The golden transcript's file name.
pub const TRANSCRIPT_FILE: &str = "transcript.txt";

impl Conversation {
    /// Reads and checks `dir/conversation.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Conversation> {
        let path = dir.join(CONVERSATION_FILE);
        let conversation: Conversation = read_json(&path)?;
        let mut previous: Option<DateTime<Utc>> = None;
        for (i, step) in conversation.steps.iter().enumerate() {
            step.action()
                .with_context(|| format!("{}: step {}", path.display(), i + 1))?;
            if previous.is_some_and(|previous| step.at < previous) {
                bail!(
                    "{}: step {} is earlier than the step before it",
                    path.display(),
                    i + 1
                );
            }
            previous = Some(step.at);
        }
        Ok(conversation)
    }
}

/// Reads `dir/answers.json`.
pub fn load_answers(dir: &Path) -> anyhow::Result<Answers> {
    read_json(&dir.join(ANSWERS_FILE))
}

/// Reads a JSON file. The files are synthetic conversations written by authors, so serde's
/// message (which may quote the offending text) is the most helpful report.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

/// `value` as the files are written: pretty JSON with a final newline, so diffs read well.
pub(super) fn to_file_text<T: Serialize>(value: &T) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(json: &str) -> Step {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_step_is_exactly_one_action() {
        let at = r#""at": "2026-11-24T18:00:00Z""#;
        assert_eq!(
            step(&format!(r#"{{{at}, "from": "+1", "say": "hi"}}"#))
                .action()
                .ok(),
            Some(Action::Say {
                from: "+1",
                text: "hi"
            })
        );
        assert_eq!(
            step(&format!(r#"{{{at}, "from": "+1", "opt_out": true}}"#))
                .action()
                .ok(),
            Some(Action::OptOut {
                from: "+1",
                opted_out: true
            })
        );
        assert_eq!(
            step(&format!(r#"{{{at}, "fire_due_events": true}}"#))
                .action()
                .ok(),
            Some(Action::FireDueEvents)
        );
        for muddled in [
            format!(r#"{{{at}, "from": "+1", "say": "hi", "opt_out": true}}"#),
            format!(r#"{{{at}, "from": "+1", "fire_due_events": true}}"#),
            format!(r#"{{{at}, "say": "hi"}}"#),
            format!("{{{at}}}"),
        ] {
            assert!(step(&muddled).action().is_err(), "{muddled}");
        }
    }

    #[test]
    fn an_answer_reads_back_as_the_same_content() {
        let compact = r#"{"is_true":false}"#;
        assert!(matches!(Answer::from_content(compact), Answer::Json(_)));
        assert_eq!(Answer::from_content(compact).content(), compact);
        // Not the compact form: kept as text, so the content stays byte for byte.
        let spaced = r#"{"is_true": false}"#;
        assert_eq!(
            Answer::from_content(spaced),
            Answer::Text(spaced.to_owned())
        );
        let said = "Sage said: \"Hi.\"";
        assert_eq!(Answer::from_content(said).content(), said);
        let written: Answer = serde_json::from_str(r#"{"name": null}"#).unwrap();
        assert_eq!(written.content(), r#"{"name":null}"#);
    }

    #[test]
    fn loading_refuses_steps_out_of_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let script = r#"{"title": "t", "soul": "sage", "steps": [
            {"at": "2026-11-24T18:05:00Z", "from": "+1", "say": "later"},
            {"at": "2026-11-24T18:00:00Z", "from": "+1", "say": "earlier"}]}"#;
        fs::write(dir.path().join(CONVERSATION_FILE), script).unwrap();
        let error = Conversation::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("step 2 is earlier"), "{error}");
    }
}
