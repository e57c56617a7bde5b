//! Cassettes: model traffic recorded once and replayed offline.
//!
//! [`RecordingModel`] wraps any [`LanguageModel`], forwards each request and writes every
//! successful interaction to a cassette file. [`ReplayingModel`] serves a cassette without any
//! network: tests and replays of conversations run deterministically and for free.
//!
//! # File format (version 1)
//!
//! One JSON document, pretty-printed with two-space indentation and a final newline, so a
//! re-recorded cassette reads well in a review diff:
//!
//! ```json
//! {
//!   "version": 1,
//!   "interactions": [
//!     {
//!       "request": {
//!         "messages": [
//!           { "role": "system", "content": "You are Samantha." },
//!           { "role": "user", "content": "hi", "name": "ann" }
//!         ],
//!         "model": "fast",
//!         "temperature": 0.7,
//!         "max_tokens": 200,
//!         "response_schema": { "name": "mood", "schema": { "type": "object" }, "strict": true }
//!       },
//!       "response": {
//!         "content": "Hello!",
//!         "usage": { "prompt_tokens": 12, "completion_tokens": 3 },
//!         "model": "gpt-4o-mini-2024-07-18"
//!       }
//!     }
//!   ]
//! }
//! ```
//!
//! - `version` is [`CASSETTE_VERSION`]; any other value is refused with
//!   [`CassetteErrorKind::UnsupportedVersion`] rather than guessed at.
//! - `interactions` are in the order the answers arrived.
//! - `request` is a [`ChatRequest`] exactly as it serializes: the messages plus the options that
//!   were set (`model`, `temperature`, `max_tokens`, `response_schema`, `tools`; unset ones are
//!   omitted). In a step with tools, a message may carry the model's `tool_calls` (`id`, `name`,
//!   `arguments`) or, with the role `tool`, the `tool_call_id` its result answers.
//!   The per-attempt `timeout` is not part of it. Nothing else is: no URL, no header, no key. A
//!   cassette cannot hold a secret because a request has nowhere to put one.
//! - `response` is the [`Completion`] the caller received: `content`, `usage`, the `model`
//!   name the server reported and, when the model called tools, its `tool_calls`.
//!
//! # Matching
//!
//! A request matches a recorded one when their `request` JSON above is identical: same messages
//! in the same order, same options; the timeout is ignored. The order of *different* requests is
//! not enforced, so steps that run concurrently replay fine.
//!
//! Identical requests are answered in recorded order: the first time a request is asked it gets
//! the first answer recorded for it, the second time the second answer, and so on. When its
//! answers are used up, asking again fails with [`ModelError::NotRecorded`] rather than repeating
//! an answer, so a replay that calls the model more often than the recording did is caught.
//!
//! A request with no answer fails with [`ModelError::NotRecorded`], whose `diff` is a unified diff
//! from the closest recorded request to the actual one, both as the pretty-printed JSON above:
//! the changed message shows as a `-`/`+` pair of lines. [`ReplayingModel::finish`] reports
//! recorded interactions the replay never asked for.
//!
//! # Writing
//!
//! A [`RecordingModel`] rewrites the whole cassette after every successful interaction: to a
//! temporary file in the same directory, flushed to disk, then renamed over the cassette. A crash
//! at any moment leaves either the previous complete cassette or the new complete one, never half
//! a file. Failed calls are not recorded. The file is created readable by its owner only.
//!
//! # Privacy
//!
//! Cassettes, and the diff in [`ModelError::NotRecorded`], contain whole conversations. Record
//! only synthetic or consented conversations, and do not log those diffs at info or above. The
//! `Debug` output of every type here shows paths and counts, never contents.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use similar::TextDiff;

use super::{
    AnswerSink, BoxFuture, ChatRequest, Completion, LanguageModel, ModelError, complete_with,
};

/// The cassette format version this engine reads and writes.
pub const CASSETTE_VERSION: u64 = 1;

/// One recorded model call: what was asked and what was answered.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    /// The request as the model received it.
    pub request: ChatRequest,
    /// The answer the caller received.
    pub response: Completion,
}

impl fmt::Debug for Interaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interaction")
            .field("messages", &self.request.messages.len())
            .field("response_chars", &self.response.content.chars().count())
            .finish_non_exhaustive()
    }
}

/// The contents of a cassette file: its interactions, in the order they were recorded.
#[derive(Clone, Default, PartialEq)]
pub struct Cassette {
    /// The recorded interactions, oldest first.
    pub interactions: Vec<Interaction>,
}

impl fmt::Debug for Cassette {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cassette")
            .field("interactions", &self.interactions.len())
            .finish()
    }
}

/// The file as read, once [`VersionProbe`] has checked its version.
#[derive(Deserialize)]
struct CassetteFile {
    interactions: Vec<Interaction>,
}

/// Just enough of a file to read its version before trusting the rest of its shape.
#[derive(Deserialize)]
struct VersionProbe {
    version: Option<serde_json::Value>,
}

impl Cassette {
    /// Reads the cassette at `path`.
    pub fn load(path: &Path) -> Result<Cassette, CassetteError> {
        let error = |kind| CassetteError {
            path: path.to_owned(),
            kind,
        };
        let text = fs::read_to_string(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => error(CassetteErrorKind::NotFound),
            _ => error(CassetteErrorKind::Io(e)),
        })?;
        // The version first: a future format may differ in any other field, and "unsupported
        // version" says more than a complaint about its shape.
        let probe: VersionProbe = serde_json::from_str(&text).map_err(|e| error(malformed(&e)))?;
        let version = probe.version.ok_or_else(|| {
            error(CassetteErrorKind::Malformed {
                line: 1,
                column: 1,
                problem: "no `version` field",
            })
        })?;
        match version.as_u64() {
            Some(CASSETTE_VERSION) => {}
            Some(found) => return Err(error(CassetteErrorKind::UnsupportedVersion { found })),
            None => {
                return Err(error(CassetteErrorKind::Malformed {
                    line: 1,
                    column: 1,
                    problem: "`version` is not a non-negative integer",
                }));
            }
        }
        let file: CassetteFile = serde_json::from_str(&text).map_err(|e| error(malformed(&e)))?;
        Ok(Cassette {
            interactions: file.interactions,
        })
    }

    /// Writes the cassette to `path` atomically: a temporary file in the same directory, flushed
    /// to disk, renamed over `path`. Readers see the old file or the new one, never a mix.
    pub fn save(&self, path: &Path) -> Result<(), CassetteError> {
        let error = |e| CassetteError {
            path: path.to_owned(),
            kind: CassetteErrorKind::Io(e),
        };
        let file = CassetteFileRef {
            version: CASSETTE_VERSION,
            interactions: &self.interactions,
        };
        let mut text =
            serde_json::to_string_pretty(&file).map_err(|e| error(io::Error::other(e)))?;
        text.push('\n');
        // `Path::parent` of a bare file name is `Some("")`, which means the current directory.
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        // `tempfile` creates the file with owner-only permissions and removes it if anything
        // below fails, so no stray temporary file is left behind either.
        let mut temp = tempfile::Builder::new()
            .prefix(".cassette-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(error)?;
        temp.write_all(text.as_bytes()).map_err(error)?;
        temp.as_file().sync_all().map_err(error)?;
        temp.persist(path).map_err(|e| error(e.error))?;
        Ok(())
    }
}

/// The file as written: the version and the interactions, borrowed rather than cloned.
#[derive(Serialize)]
struct CassetteFileRef<'a> {
    version: u64,
    interactions: &'a [Interaction],
}

/// Describes a JSON error by position and category only: serde's own message can quote the
/// offending value, which may be something a person confided.
fn malformed(e: &serde_json::Error) -> CassetteErrorKind {
    let problem = match e.classify() {
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Eof => "the file ends too early",
        serde_json::error::Category::Data => "a field is missing or has the wrong type",
        serde_json::error::Category::Io => "the file could not be read",
    };
    CassetteErrorKind::Malformed {
        line: e.line(),
        column: e.column(),
        problem,
    }
}

/// A cassette that could not be read, written or fully used.
#[derive(Debug, thiserror::Error)]
#[error("cassette {}: {kind}", path.display())]
pub struct CassetteError {
    /// The cassette's path.
    pub path: PathBuf,
    /// What went wrong.
    pub kind: CassetteErrorKind,
}

/// What went wrong with a cassette.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CassetteErrorKind {
    /// There is no file at the path: record the cassette first.
    #[error("no such file; record it first with a RecordingModel")]
    NotFound,
    /// Reading or writing the file failed. Shown in the message rather than as a `source`, so
    /// the reason survives conversion into [`ModelError::Cassette`].
    #[error("{0}")]
    Io(io::Error),
    /// The file is not a cassette. Only the position is given, never the offending text.
    #[error("not a valid cassette at line {line}, column {column}: {problem}")]
    Malformed {
        /// The 1-based line of the problem.
        line: usize,
        /// The 1-based column of the problem.
        column: usize,
        /// What kind of problem it is.
        problem: &'static str,
    },
    /// The file is a cassette of another format version.
    #[error(
        "format version {found} is not supported (this engine reads version {CASSETTE_VERSION}); re-record it"
    )]
    UnsupportedVersion {
        /// The version the file declares.
        found: u64,
    },
    /// A replay finished without asking for some recorded interactions.
    #[error("{} of {total} recorded interactions were never asked for (numbers {}, counting from 1)", unused.len(), numbered(unused))]
    Unused {
        /// The 0-based positions of the interactions never served.
        unused: Vec<usize>,
        /// How many interactions the cassette holds.
        total: usize,
    },
}

fn numbered(positions: &[usize]) -> String {
    positions
        .iter()
        .map(|i| (i + 1).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<CassetteError> for ModelError {
    fn from(e: CassetteError) -> Self {
        ModelError::Cassette {
            path: e.path.display().to_string(),
            reason: e.kind.to_string(),
        }
    }
}

/// The text a request is matched and diffed by: its pretty-printed cassette JSON.
fn canonical(request: &ChatRequest) -> Result<String, ModelError> {
    let mut text = serde_json::to_string_pretty(request)
        .map_err(|_| ModelError::Config("the request cannot be written as JSON".to_owned()))?;
    // Diffs of texts that end in a newline carry no "no newline at end of file" noise.
    text.push('\n');
    Ok(text)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something ever did, the data is still a
    // consistent list, so carrying on is safe.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wraps a model and records every successful interaction to a cassette file.
///
/// The cassette is rewritten atomically after each interaction (see the [module docs](self)), so
/// there is nothing to save at the end and a crash loses at most the call in flight. File I/O is
/// done synchronously inside [`complete`](LanguageModel::complete): cassettes are a development
/// tool, and a small write per model call is negligible next to the call.
pub struct RecordingModel<M: LanguageModel> {
    inner: M,
    path: PathBuf,
    cassette: Mutex<Cassette>,
}

impl<M: LanguageModel> RecordingModel<M> {
    /// Starts recording `inner`'s traffic to `path`, replacing any cassette there.
    ///
    /// An empty cassette is written at once, so an unwritable path fails here rather than after
    /// the first (paid) model call.
    pub fn new(inner: M, path: impl Into<PathBuf>) -> Result<Self, CassetteError> {
        let path = path.into();
        let cassette = Cassette::default();
        cassette.save(&path)?;
        Ok(RecordingModel {
            inner,
            path,
            cassette: Mutex::new(cassette),
        })
    }

    /// Where the cassette is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many interactions are recorded so far.
    pub fn recorded(&self) -> usize {
        lock(&self.cassette).interactions.len()
    }
}

impl<M: LanguageModel> fmt::Debug for RecordingModel<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingModel")
            .field("inner", &self.inner)
            .field("path", &self.path)
            .field("recorded", &self.recorded())
            .finish()
    }
}

impl<M: LanguageModel> LanguageModel for RecordingModel<M> {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        self.record(request, None)
    }

    /// Streams from the model recorded; the cassette keeps the whole answer, which replaying
    /// gives whole.
    fn complete_streaming<'a>(
        &'a self,
        request: &'a ChatRequest,
        sink: &'a dyn AnswerSink,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        self.record(request, Some(sink))
    }
}

impl<M: LanguageModel> RecordingModel<M> {
    fn record<'a>(
        &'a self,
        request: &'a ChatRequest,
        sink: Option<&'a dyn AnswerSink>,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        Box::pin(async move {
            let completion = complete_with(&self.inner, request, sink).await?;
            let mut cassette = lock(&self.cassette);
            cassette.interactions.push(Interaction {
                request: request.clone(),
                response: completion.clone(),
            });
            if let Err(e) = cassette.save(&self.path) {
                // The caller gets an error, so the cassette must not claim it got this answer.
                cassette.interactions.pop();
                return Err(e.into());
            }
            tracing::debug!(
                path = %self.path.display(),
                interactions = cassette.interactions.len(),
                "recorded a model interaction"
            );
            Ok(completion)
        })
    }
}

/// Serves a cassette's answers without any network; see the [module docs](self) for the
/// matching rule.
pub struct ReplayingModel {
    path: PathBuf,
    interactions: Vec<Interaction>,
    /// Each interaction's request as [`canonical`] text, computed once.
    keys: Vec<String>,
    /// Which interactions have been served.
    used: Mutex<Vec<bool>>,
}

impl ReplayingModel {
    /// Loads the cassette at `path`.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, CassetteError> {
        let path = path.into();
        let cassette = Cassette::load(&path)?;
        let keys = cassette
            .interactions
            .iter()
            .map(|interaction| canonical(&interaction.request))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CassetteError {
                path: path.clone(),
                kind: CassetteErrorKind::Malformed {
                    line: 1,
                    column: 1,
                    problem: "a recorded request cannot be written back as JSON",
                },
            })?;
        let used = Mutex::new(vec![false; keys.len()]);
        Ok(ReplayingModel {
            path,
            interactions: cassette.interactions,
            keys,
            used,
        })
    }

    /// Where the cassette was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many recorded interactions have not been served yet.
    pub fn unused(&self) -> usize {
        lock(&self.used).iter().filter(|used| !**used).count()
    }

    /// Checks that every recorded interaction was served: a replay that asks the model less than
    /// the recording did has diverged too.
    pub fn finish(&self) -> Result<(), CassetteError> {
        let unused: Vec<usize> = lock(&self.used)
            .iter()
            .enumerate()
            .filter(|(_, used)| !**used)
            .map(|(i, _)| i)
            .collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(CassetteError {
                path: self.path.clone(),
                kind: CassetteErrorKind::Unused {
                    unused,
                    total: self.interactions.len(),
                },
            })
        }
    }

    fn answer(&self, request: &ChatRequest) -> Result<Completion, ModelError> {
        let key = canonical(request)?;
        let mut used = lock(&self.used);
        let mut recorded = 0;
        let candidates = self
            .keys
            .iter()
            .zip(&self.interactions)
            .zip(used.iter_mut());
        for (i, ((candidate, interaction), served)) in candidates.enumerate() {
            if *candidate != key {
                continue;
            }
            recorded += 1;
            if !*served {
                *served = true;
                tracing::debug!(
                    path = %self.path.display(),
                    interaction = i + 1,
                    "replayed a model interaction"
                );
                return Ok(interaction.response.clone());
            }
        }
        drop(used);
        let diff = if recorded > 0 {
            format!(
                "this exact request was recorded {recorded} time(s) and every recorded answer has \
                 been used; the replay asks the model more often than the recording did"
            )
        } else {
            self.closest_diff(&key)
        };
        Err(ModelError::NotRecorded { diff })
    }

    /// A unified diff from the recorded request most similar to `actual` to `actual`.
    fn closest_diff(&self, actual: &str) -> String {
        let mut seen = HashSet::new();
        let closest = self
            .keys
            .iter()
            .enumerate()
            .filter(|(_, key)| seen.insert(key.as_str()))
            .map(|(i, key)| (i, key, TextDiff::from_lines(key.as_str(), actual).ratio()))
            // `max_by` keeps the last of equals; comparing reversed positions keeps the first.
            .max_by(|a, b| a.2.total_cmp(&b.2).then(b.0.cmp(&a.0)));
        match closest {
            Some((i, key, _)) => {
                let recorded = format!(
                    "recorded request (interaction {} of {})",
                    i + 1,
                    self.keys.len()
                );
                TextDiff::from_lines(key.as_str(), actual)
                    .unified_diff()
                    .context_radius(3)
                    .header(&recorded, "actual request")
                    .to_string()
            }
            None => format!(
                "the cassette has no interactions; the actual request:\n{}",
                TextDiff::from_lines("", actual)
                    .unified_diff()
                    .header("recorded (nothing)", "actual request")
            ),
        }
    }
}

impl fmt::Debug for ReplayingModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayingModel")
            .field("path", &self.path)
            .field("interactions", &self.interactions.len())
            .field("unused", &self.unused())
            .finish()
    }
}

impl LanguageModel for ReplayingModel {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        let answer = self.answer(request);
        Box::pin(async move { answer })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::memory::Role;
    use crate::model::{ChatMessage, ChatOptions, Usage};

    fn request(texts: &[&str]) -> ChatRequest {
        ChatRequest {
            messages: texts
                .iter()
                .map(|t| ChatMessage::new(Role::User, *t))
                .collect(),
            options: ChatOptions::default(),
        }
    }

    fn replaying(requests: Vec<ChatRequest>) -> ReplayingModel {
        let keys: Vec<String> = requests.iter().map(|r| canonical(r).unwrap()).collect();
        let interactions = requests
            .into_iter()
            .map(|request| Interaction {
                request,
                response: Completion {
                    content: "answer".to_owned(),
                    usage: Usage::default(),
                    model: "m".to_owned(),
                    tool_calls: Vec::new(),
                },
            })
            .collect::<Vec<_>>();
        ReplayingModel {
            path: PathBuf::from("in-memory.json"),
            used: Mutex::new(vec![false; keys.len()]),
            keys,
            interactions,
        }
    }

    #[test]
    fn the_diff_is_against_the_most_similar_recorded_request() {
        let replay = replaying(vec![
            request(&["hello"]),
            request(&["hello", "how are you", "fine"]),
            request(&["bye"]),
        ]);
        let diff =
            replay.closest_diff(&canonical(&request(&["hello", "how are you", "great"])).unwrap());
        assert!(
            diff.starts_with("--- recorded request (interaction 2 of 3)\n+++ actual request\n"),
            "{diff}"
        );
        assert!(
            diff.contains("-      \"content\": \"fine\"\n+      \"content\": \"great\"\n"),
            "{diff}"
        );
    }

    #[test]
    fn among_equally_close_requests_the_diff_is_against_the_first() {
        let replay = replaying(vec![request(&["one"]), request(&["two"])]);
        let diff = replay.closest_diff(&canonical(&request(&["three"])).unwrap());
        assert!(diff.contains("interaction 1 of 2"), "{diff}");
    }

    #[test]
    fn the_matching_text_leaves_out_the_timeout() {
        let plain = request(&["hi"]);
        let mut timed = plain.clone();
        timed.options.timeout = Some(Duration::from_secs(1));
        assert_eq!(canonical(&plain).unwrap(), canonical(&timed).unwrap());
        assert!(canonical(&plain).unwrap().ends_with("}\n"));
    }
}
