//! The built-in cognitive steps, after OpenSouls' set: external dialog, internal monologue,
//! decision, brainstorm, mental query, instruction and summarize.
//!
//! Each appends one assistant memory phrased in the third person ("Samantha said: ..."), so the
//! model later reads its own past as a story about the soul, and returns a typed value.

use serde::Deserialize;
use serde_json::json;

use crate::memory::Memory;
use crate::model::{ChatOptions, ResponseSchema};
use crate::step::{AnswerFormat, CognitiveStep, InvalidAnswer, parse_json};
use crate::working_memory::WorkingMemory;

fn remembered(step: &str, content: String) -> Memory {
    Memory::assistant(content).with_metadata("step", json!(step))
}

/// Removes a leading `Name verb:` (or `Name:`) and the quotes around what follows; models often
/// echo the format they were shown.
pub fn strip_speaker_prefix(answer: &str, name: &str, verb: &str) -> String {
    let mut text = answer.trim();
    if let Some(rest) = strip_prefix_ignore_case(text, name) {
        let rest = rest.trim_start();
        let rest = strip_prefix_ignore_case(rest, verb).map_or(rest, str::trim_start);
        if let Some(rest) = rest.strip_prefix(':') {
            text = rest.trim();
        }
    }
    for (open, close) in [('"', '"'), ('“', '”'), ('\'', '\'')] {
        if let Some(inner) = text.strip_prefix(open).and_then(|t| t.strip_suffix(close)) {
            // Only a pair that encloses the whole answer is removed ("Hi" -> Hi, not "A" and "B").
            if !inner.contains(close) {
                return inner.trim().to_owned();
            }
        }
    }
    text.to_owned()
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn non_empty(text: String) -> Result<String, InvalidAnswer> {
    if text.trim().is_empty() {
        Err(InvalidAnswer("the answer was empty".to_owned()))
    } else {
        Ok(text)
    }
}

/// Something the soul says or thinks: [`external_dialog`] and [`internal_monologue`] differ only
/// in the verb ("said" / "thought") and in what they ask for.
#[derive(Debug, Clone)]
pub struct Utterance {
    step: &'static str,
    verb: &'static str,
    asked_for: &'static str,
    rules: &'static str,
    instructions: String,
}

/// The soul's next utterance to the person, guided by `instructions`. Value: the utterance,
/// without any `Name said:` prefix or quotes.
pub fn external_dialog(instructions: impl Into<String>) -> Utterance {
    Utterance {
        step: "external_dialog",
        verb: "said",
        asked_for: "the next utterance from",
        rules: "* Do not include actions or stage directions.\n* Do not include internal thoughts.\n",
        instructions: instructions.into(),
    }
}

/// A thought the soul has, guided by `instructions`. Value: the thought.
pub fn internal_monologue(instructions: impl Into<String>) -> Utterance {
    Utterance {
        step: "internal_monologue",
        verb: "thought",
        asked_for: "the next thought of",
        rules: "",
        instructions: instructions.into(),
    }
}

impl CognitiveStep for Utterance {
    type Value = String;

    fn name(&self) -> &str {
        self.step
    }

    fn command(&self, memory: &WorkingMemory) -> String {
        let name = memory.soul_name();
        format!(
            "Model the mind of {name}.\n\n## Instructions\n{rules}* {instructions}\n\n\
             Reply with {asked_for} {name}, in the format: {name} {verb}: \"...\"",
            rules = self.rules,
            instructions = self.instructions,
            asked_for = self.asked_for,
            verb = self.verb,
        )
    }

    fn speaks(&self) -> bool {
        self.verb == "said"
    }

    /// The words so far, as [`interpret`](Self::interpret) will take them: nothing while the
    /// answer may still be the `Name said:` prefix, and no opening quote.
    fn said_so_far(&self, memory: &WorkingMemory, partial: &str) -> String {
        let name = memory.soul_name();
        let text = partial.trim_start();
        let prefix = format!("{name} {verb}:", verb = self.verb);
        if text.len() < prefix.len()
            && prefix
                .get(..text.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(text))
        {
            return String::new();
        }
        let said = strip_speaker_prefix(text, name, self.verb);
        // The closing quote has not come yet.
        match said.strip_prefix('"').or_else(|| said.strip_prefix('“')) {
            Some(rest) => rest.trim_start().to_owned(),
            None => said,
        }
    }

    fn interpret(
        &self,
        memory: &WorkingMemory,
        answer: &str,
    ) -> Result<(String, Option<Memory>), InvalidAnswer> {
        let name = memory.soul_name();
        let text = non_empty(strip_speaker_prefix(answer, name, self.verb))?;
        let memory = remembered(
            self.step,
            format!("{name} {verb}: \"{text}\"", verb = self.verb),
        );
        Ok((text, Some(memory)))
    }
}

/// Chooses among fixed choices. See [`decision`].
#[derive(Debug, Clone)]
pub struct Decision {
    description: String,
    choices: Vec<String>,
}

/// The soul decides `description` by picking one of `choices`. Value: the choice, exactly as
/// given here (an answer differing only in case or surrounding space is accepted as it).
pub fn decision<C: Into<String>>(
    description: impl Into<String>,
    choices: impl IntoIterator<Item = C>,
) -> Decision {
    Decision {
        description: description.into(),
        choices: choices.into_iter().map(Into::into).collect(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionAnswer {
    decision: String,
}

impl CognitiveStep for Decision {
    type Value = String;

    fn name(&self) -> &str {
        "decision"
    }

    fn validate(&self) -> Result<(), String> {
        if self.choices.is_empty() {
            return Err("a decision needs at least one choice".to_owned());
        }
        Ok(())
    }

    fn command(&self, memory: &WorkingMemory) -> String {
        let name = memory.soul_name();
        let choices = self
            .choices
            .iter()
            .map(|c| format!("* {c}"))
            .collect::<Vec<_>>()
            .join("\n");
        format!(
            "Model the mind of {name}.\n\n## Decision\n{name} decides: {description}\n\n\
             ## Choices\n{choices}\n\n\
             Answer with JSON: {{\"decision\": \"<one of the choices, exactly>\"}}",
            description = self.description
        )
    }

    fn format(&self) -> AnswerFormat {
        AnswerFormat::Json(ResponseSchema {
            name: "decision".to_owned(),
            schema: json!({
                "type": "object",
                "properties": { "decision": { "type": "string", "enum": self.choices } },
                "required": ["decision"],
                "additionalProperties": false
            }),
            strict: true,
        })
    }

    fn interpret(
        &self,
        memory: &WorkingMemory,
        answer: &str,
    ) -> Result<(String, Option<Memory>), InvalidAnswer> {
        let DecisionAnswer { decision } = parse_json(answer)?;
        let wanted = decision.trim();
        let choice = self
            .choices
            .iter()
            .find(|c| c.trim().eq_ignore_ascii_case(wanted))
            .cloned()
            .ok_or_else(|| InvalidAnswer("the decision is not one of the choices".to_owned()))?;
        let memory = remembered(
            self.name(),
            format!(
                "{} decided ({}): {choice}",
                memory.soul_name(),
                self.description
            ),
        );
        Ok((choice, Some(memory)))
    }
}

/// Comes up with ideas. See [`brainstorm`].
#[derive(Debug, Clone)]
pub struct Brainstorm {
    description: String,
}

/// The soul brainstorms about `description`. Value: the ideas, in the model's order.
pub fn brainstorm(description: impl Into<String>) -> Brainstorm {
    Brainstorm {
        description: description.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BrainstormAnswer {
    ideas: Vec<String>,
}

impl CognitiveStep for Brainstorm {
    type Value = Vec<String>;

    fn name(&self) -> &str {
        "brainstorm"
    }

    fn command(&self, memory: &WorkingMemory) -> String {
        let name = memory.soul_name();
        format!(
            "Model the mind of {name}.\n\n## Brainstorm\n{name} brainstorms: {description}\n\n\
             Answer with JSON: {{\"ideas\": [\"...\", \"...\"]}}",
            description = self.description
        )
    }

    fn format(&self) -> AnswerFormat {
        AnswerFormat::Json(ResponseSchema {
            name: "brainstorm".to_owned(),
            schema: json!({
                "type": "object",
                "properties": { "ideas": { "type": "array", "items": { "type": "string" } } },
                "required": ["ideas"],
                "additionalProperties": false
            }),
            strict: true,
        })
    }

    fn interpret(
        &self,
        memory: &WorkingMemory,
        answer: &str,
    ) -> Result<(Vec<String>, Option<Memory>), InvalidAnswer> {
        let BrainstormAnswer { ideas } = parse_json(answer)?;
        let ideas: Vec<String> = ideas
            .into_iter()
            .map(|idea| idea.trim().to_owned())
            .filter(|idea| !idea.is_empty())
            .collect();
        if ideas.is_empty() {
            return Err(InvalidAnswer("the list of ideas was empty".to_owned()));
        }
        let memory = remembered(
            self.name(),
            format!("{} brainstormed: {}", memory.soul_name(), ideas.join("; ")),
        );
        Ok((ideas, Some(memory)))
    }
}

/// Asks itself a yes / no question. See [`mental_query`].
#[derive(Debug, Clone)]
pub struct MentalQuery {
    statement: String,
}

/// The soul judges whether `statement` is true. Value: the verdict.
pub fn mental_query(statement: impl Into<String>) -> MentalQuery {
    MentalQuery {
        statement: statement.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MentalQueryAnswer {
    is_true: bool,
}

impl CognitiveStep for MentalQuery {
    type Value = bool;

    fn name(&self) -> &str {
        "mental_query"
    }

    fn command(&self, memory: &WorkingMemory) -> String {
        let name = memory.soul_name();
        format!(
            "Model the mind of {name}.\n\n## Question\n{name} considers whether this statement \
             is true: {statement}\n\nAnswer with JSON: {{\"is_true\": true}} or {{\"is_true\": false}}",
            statement = self.statement
        )
    }

    fn options(&self) -> ChatOptions {
        // A verdict should not depend on sampling luck.
        ChatOptions {
            temperature: Some(0.0),
            ..ChatOptions::default()
        }
    }

    fn format(&self) -> AnswerFormat {
        AnswerFormat::Json(ResponseSchema {
            name: "mental_query".to_owned(),
            schema: json!({
                "type": "object",
                "properties": { "is_true": { "type": "boolean" } },
                "required": ["is_true"],
                "additionalProperties": false
            }),
            strict: true,
        })
    }

    fn interpret(
        &self,
        memory: &WorkingMemory,
        answer: &str,
    ) -> Result<(bool, Option<Memory>), InvalidAnswer> {
        let MentalQueryAnswer { is_true } = parse_json(answer)?;
        let memory = remembered(
            self.name(),
            format!(
                "{} evaluated \"{}\" and concluded it is {}",
                memory.soul_name(),
                self.statement,
                if is_true { "true" } else { "false" }
            ),
        );
        Ok((is_true, Some(memory)))
    }
}

/// Follows a free-form instruction. See [`instruction`].
#[derive(Debug, Clone)]
pub struct Instruction {
    text: String,
}

/// Asks the model to do `text`; the answer is appended as the soul's and returned as is.
pub fn instruction(text: impl Into<String>) -> Instruction {
    Instruction { text: text.into() }
}

impl CognitiveStep for Instruction {
    type Value = String;

    fn name(&self) -> &str {
        "instruction"
    }

    fn command(&self, _memory: &WorkingMemory) -> String {
        self.text.clone()
    }

    fn interpret(
        &self,
        _memory: &WorkingMemory,
        answer: &str,
    ) -> Result<(String, Option<Memory>), InvalidAnswer> {
        let answer = non_empty(answer.trim().to_owned())?;
        Ok((answer.clone(), Some(remembered(self.name(), answer))))
    }
}

/// Summarizes the conversation. See [`summarize`].
#[derive(Debug, Clone)]
pub struct Summarize {
    focus: String,
}

/// A summary of the conversation so far; `focus` says what to keep (may be empty). Value: the
/// summary text.
pub fn summarize(focus: impl Into<String>) -> Summarize {
    Summarize {
        focus: focus.into(),
    }
}

impl CognitiveStep for Summarize {
    type Value = String;

    fn name(&self) -> &str {
        "summarize"
    }

    fn command(&self, memory: &WorkingMemory) -> String {
        let name = memory.soul_name();
        let focus = if self.focus.trim().is_empty() {
            String::new()
        } else {
            format!("\n* Keep in particular: {}", self.focus)
        };
        format!(
            "Model the mind of {name}.\n\n## Instructions\n\
             * Summarize the conversation so far, in a few sentences, from {name}'s point of view.\n\
             * Keep names, feelings, plans and anything {name} promised.{focus}\n\n\
             Reply with the summary only."
        )
    }

    fn interpret(
        &self,
        memory: &WorkingMemory,
        answer: &str,
    ) -> Result<(String, Option<Memory>), InvalidAnswer> {
        let summary = non_empty(answer.trim().to_owned())?;
        let memory = remembered(
            self.name(),
            format!(
                "{} summarized the conversation: {summary}",
                memory.soul_name()
            ),
        );
        Ok((summary, Some(memory)))
    }
}

#[cfg(test)]
mod tests {
    use super::{external_dialog, internal_monologue, strip_speaker_prefix};
    use crate::WorkingMemory;
    use crate::step::CognitiveStep;

    #[test]
    fn a_partial_utterance_shows_only_its_words() {
        let memory = WorkingMemory::new("Samantha");
        let step = external_dialog("Answer.");
        let so_far = |partial: &str| step.said_so_far(&memory, partial);
        // Nothing while the answer may still be the speaker prefix.
        for partial in [
            "",
            "Sam",
            "Samantha sa",
            "Samantha said:",
            "Samantha said: \"",
        ] {
            assert_eq!(so_far(partial), "", "{partial:?}");
        }
        assert_eq!(so_far("Samantha said: \"Hi th"), "Hi th");
        assert_eq!(so_far("Samantha said: \"Hi there.\""), "Hi there.");
        assert_eq!(so_far("Sure thing"), "Sure thing");
        // What is shown at the end is what is said.
        let (said, _) = step
            .interpret(&memory, "Samantha said: \"Hi there.\"")
            .unwrap_or_default();
        assert_eq!(said, "Hi there.");
        assert!(step.speaks());
        assert!(!internal_monologue("Think.").speaks());
    }

    #[test]
    fn speaker_prefix_and_quotes_are_stripped() {
        assert_eq!(
            strip_speaker_prefix("Samantha said: \"Hi there\"", "Samantha", "said"),
            "Hi there"
        );
        assert_eq!(
            strip_speaker_prefix("samantha SAID:Hi", "Samantha", "said"),
            "Hi"
        );
        assert_eq!(
            strip_speaker_prefix("Samantha: “Hello”", "Samantha", "said"),
            "Hello"
        );
        assert_eq!(
            strip_speaker_prefix("  Just text  ", "Samantha", "said"),
            "Just text"
        );
        assert_eq!(
            strip_speaker_prefix("\"A\" and \"B\"", "Samantha", "said"),
            "\"A\" and \"B\"",
            "quotes inside the answer are kept"
        );
        assert_eq!(
            strip_speaker_prefix("Samantha said nothing", "Samantha", "said"),
            "Samantha said nothing",
            "no colon, no prefix"
        );
    }
}
