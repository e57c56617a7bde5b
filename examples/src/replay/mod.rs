//! Recorded conversations, replayed offline through the real stack, or recorded anew.
//!
//! A conversation directory (see `docs/replay.md`) holds `conversation.json` (the steps, each
//! with what it must lead to), `cassette.json` (the model traffic), `answers.json` (the model's
//! answers step by step, for re-recording without a live model) and `transcript.txt` (the
//! readable golden transcript).
//!
//! - [`replay`] runs the steps on a fresh SQLite store through the turn driver, the soul's
//!   runtime and a [`ReplayingModel`] on the cassette, with every clock at the step's time, and
//!   reports the first [`Divergence`]: a step whose outcome differs from its expectation, a model
//!   request the cassette does not hold, recorded interactions never asked for, or a transcript
//!   that differs from `transcript.txt`.
//! - [`record`] runs the same steps against any model through a [`RecordingModel`] and writes
//!   all four files from what happened.

mod format;
mod runner;
mod transcript;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use similar::TextDiff;
use soul_engine::model::LanguageModel;
use soul_engine::model::cassette::{RecordingModel, ReplayingModel};

pub use format::{
    ANSWERS_FILE, Action, Answer, Answers, CASSETTE_FILE, CONVERSATION_FILE, Conversation, Outcome,
    Step, StepAnswers, TRANSCRIPT_FILE, load_answers,
};
pub use runner::{ModelLog, Observation, Runner, StepClock};
pub use transcript::{render, render_step};

/// A conversation replayed.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// The conversation's name (its directory's).
    pub name: String,
    /// The transcript of what happened, up to the divergence if there was one.
    pub transcript: String,
    /// How the replay departed from the recording; `None` when it did not.
    pub divergence: Option<Divergence>,
}

/// How a replay departed from its recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// What diverged, in one line.
    pub headline: String,
    /// A unified diff from what was recorded to what happened.
    pub diff: String,
    /// The model's errors during the diverging step: for a request the cassette does not hold,
    /// the diff from the closest recorded request.
    pub model_errors: Vec<String>,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.headline)?;
        f.write_str(&self.diff)?;
        if !self.diff.is_empty() && !self.diff.ends_with('\n') {
            writeln!(f)?;
        }
        for error in &self.model_errors {
            writeln!(f, "the model failed: {}", error.trim_end())?;
        }
        Ok(())
    }
}

/// A conversation recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The conversation's name (its directory's).
    pub name: String,
    /// The transcript of what happened.
    pub transcript: String,
}

/// The conversation directories under `path`: `path` itself if it holds a `conversation.json`,
/// else its subdirectories that do, by name.
pub fn conversation_dirs(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.join(CONVERSATION_FILE).is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let entries = fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?;
    let mut dirs = Vec::new();
    for entry in entries {
        let dir = entry
            .with_context(|| format!("reading {}", path.display()))?
            .path();
        if dir.join(CONVERSATION_FILE).is_file() {
            dirs.push(dir);
        }
    }
    if dirs.is_empty() {
        bail!(
            "{} is not a conversation directory and holds none",
            path.display()
        );
    }
    dirs.sort();
    Ok(dirs)
}

/// The name of the conversation in `dir`.
pub fn name_of(dir: &Path) -> String {
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// Replays the conversation in `dir` offline from its cassette. An `Err` is a conversation that
/// cannot be replayed at all (a missing or malformed file, a store that fails); a replay that
/// runs but departs from the recording is reported in [`Replayed::divergence`].
pub async fn replay(dir: &Path) -> anyhow::Result<Replayed> {
    let name = name_of(dir);
    let conversation = Conversation::load(dir)?;
    let cassette = Arc::new(ReplayingModel::open(dir.join(CASSETTE_FILE))?);
    let mut runner = Runner::start(&conversation.soul, cassette.clone()).await?;

    let mut outcomes = Vec::new();
    let mut divergence = None;
    let mut process: Option<String> = None;
    for (i, step) in conversation.steps.iter().enumerate() {
        let number = i + 1;
        let observed = runner
            .run(number, step)
            .await
            .with_context(|| format!("{name}: step {number}"))?;
        if observed.outcome != step.expect || !observed.model.errors.is_empty() {
            let expected = render_step(step, &step.expect, process.as_deref());
            let actual = render_step(step, &observed.outcome, process.as_deref());
            let headline = if observed.outcome == step.expect {
                format!(
                    "{name}: step {number} asked the model something the cassette does not hold"
                )
            } else {
                format!("{name}: step {number} did not do what was recorded")
            };
            divergence = Some(Divergence {
                headline,
                diff: unified_diff(
                    &expected,
                    &actual,
                    &format!("expected ({CONVERSATION_FILE}, step {number})"),
                    "actual",
                ),
                model_errors: observed.model.errors,
            });
            outcomes.push(observed.outcome);
            break;
        }
        if let Some(now) = &observed.outcome.process {
            process = Some(now.clone());
        }
        outcomes.push(observed.outcome);
    }
    if divergence.is_none()
        && let Err(unused) = cassette.finish()
    {
        divergence = Some(Divergence {
            headline: format!("{name}: the replay asked the model less than the recording did"),
            diff: format!("{unused}\n"),
            model_errors: Vec::new(),
        });
    }

    let transcript = render(&name, &conversation, &outcomes.iter().collect::<Vec<_>>());
    if divergence.is_none() {
        let path = dir.join(TRANSCRIPT_FILE);
        let golden =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        if golden != transcript {
            divergence = Some(Divergence {
                headline: format!("{name}: the transcript differs from {TRANSCRIPT_FILE}"),
                diff: unified_diff(&golden, &transcript, TRANSCRIPT_FILE, "actual"),
                model_errors: Vec::new(),
            });
        }
    }
    Ok(Replayed {
        name,
        transcript,
        divergence,
    })
}

/// Records the conversation in `dir` against `model`, writing its four files to `out` (which may
/// be `dir`): the cassette of the traffic, the answers, the script with the expectations set to
/// what happened, and the transcript. `before_step` is called with each step's number (from 1)
/// before it runs, so a scripted model can be given that step's answers.
///
/// A model failure stops the recording: failed calls are not recorded, so a cassette with one
/// would not replay.
pub async fn record<M: LanguageModel + 'static>(
    dir: &Path,
    out: &Path,
    model: M,
    mut before_step: impl FnMut(usize),
) -> anyhow::Result<Recorded> {
    let name = name_of(dir);
    let mut conversation = Conversation::load(dir)?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let recording = RecordingModel::new(model, out.join(CASSETTE_FILE))?;
    let mut runner = Runner::start(&conversation.soul, Arc::new(recording)).await?;

    let mut answers = Answers::new();
    for (i, step) in conversation.steps.iter_mut().enumerate() {
        let number = i + 1;
        before_step(number);
        let observed = runner
            .run(number, step)
            .await
            .with_context(|| format!("{name}: step {number}"))?;
        if !observed.model.errors.is_empty() {
            bail!(
                "{name}: step {number}: the model failed, so the recording stops:\n{}",
                observed.model.errors.join("\n")
            );
        }
        if !observed.model.answers.is_empty() {
            answers.push(StepAnswers {
                step: number,
                answers: observed
                    .model
                    .answers
                    .iter()
                    .map(|content| Answer::from_content(content))
                    .collect(),
            });
        }
        step.expect = observed.outcome;
    }

    let outcomes: Vec<&Outcome> = conversation.steps.iter().map(|step| &step.expect).collect();
    let transcript = render(&name, &conversation, &outcomes);
    write(
        &out.join(CONVERSATION_FILE),
        &format::to_file_text(&conversation)?,
    )?;
    write(&out.join(ANSWERS_FILE), &format::to_file_text(&answers)?)?;
    write(&out.join(TRANSCRIPT_FILE), &transcript)?;
    Ok(Recorded { name, transcript })
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A unified diff from `old` to `new`, empty when they are equal.
pub fn unified_diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
}
