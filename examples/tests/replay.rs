//! The recorded conversations in `examples/conversations`: each one replays offline exactly as
//! recorded, its shipped files are exactly what recording it against the OpenAI double with its
//! `answers.json` produces, and the `replay` command reports a divergence with a diff and a
//! non-zero exit.
//!
//! After changing the souls, the stack or a conversation, re-record every conversation with
//! `UPDATE_CASSETTES=1 cargo test -p soul-examples --test replay`, then read the diff of the
//! transcripts before committing it.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::json;
use soul_engine::model::cassette::Cassette;
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::retry::RetryPolicy;
use soul_examples::replay::{
    self, ANSWERS_FILE, CASSETTE_FILE, CONVERSATION_FILE, TRANSCRIPT_FILE, conversation_dirs,
    load_answers, name_of, unified_diff,
};
use soul_testkit::openai::OpenAiDouble;

/// The shipped conversations.
const CONVERSATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conversations");

/// The files of a conversation directory.
const FILES: [&str; 4] = [
    CONVERSATION_FILE,
    CASSETTE_FILE,
    ANSWERS_FILE,
    TRANSCRIPT_FILE,
];

fn shipped() -> Vec<PathBuf> {
    conversation_dirs(Path::new(CONVERSATIONS)).unwrap()
}

#[test]
fn every_conversation_directory_is_replayed_and_the_first_six_are_shipped() {
    let dirs: Vec<PathBuf> = fs::read_dir(CONVERSATIONS)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .collect();
    let names: Vec<String> = shipped().iter().map(|dir| name_of(dir)).collect();
    assert_eq!(
        names.len(),
        dirs.len(),
        "a directory without {CONVERSATION_FILE} would never be replayed: {dirs:?}"
    );
    for first in [
        "01-first-contact",
        "02-returning-user",
        "03-crisis",
        "04-goodbye-and-check-in",
        "05-long-conversation",
        "06-opt-out-and-back",
    ] {
        assert!(names.iter().any(|name| name == first), "{first} is missing");
    }
}

#[tokio::test]
async fn every_conversation_replays_as_recorded() {
    let mut divergences = String::new();
    for dir in shipped() {
        let replayed = replay::replay(&dir)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", dir.display()));
        if let Some(divergence) = replayed.divergence {
            divergences.push_str(&divergence.to_string());
        }
    }
    assert!(
        divergences.is_empty(),
        "{divergences}\nIf the change is intended, re-record with \
         `UPDATE_CASSETTES=1 cargo test -p soul-examples --test replay`"
    );
}

/// The model: the double, without retries, so a missing answer fails at once.
fn double_model(double: &OpenAiDouble) -> OpenAiModel {
    let config = OpenAiConfig::new(double.base_url(), "sk-test", "double-model")
        .with_retry(RetryPolicy::no_retries());
    OpenAiModel::new(config).unwrap()
}

/// What of a cassette decides a replay: each request and the answer's text. The token counts
/// and the model name the server reported are left out, so a cassette recorded live is still
/// reproduced by its answers.
fn traffic(path: &Path) -> String {
    let interactions: Vec<_> = Cassette::load(path)
        .map(|cassette| cassette.interactions)
        .unwrap_or_default()
        .into_iter()
        .map(|i| json!({ "request": i.request, "answer": i.response.content }))
        .collect();
    serde_json::to_string_pretty(&interactions).unwrap() + "\n"
}

/// The differences between the files in `shipped` and those recorded in `recorded`.
fn differences(shipped: &Path, recorded: &Path) -> String {
    let mut out = String::new();
    for file in FILES {
        let (old, new) = if file == CASSETTE_FILE {
            (traffic(&shipped.join(file)), traffic(&recorded.join(file)))
        } else {
            (
                fs::read_to_string(shipped.join(file)).unwrap_or_default(),
                fs::read_to_string(recorded.join(file)).unwrap(),
            )
        };
        if old != new {
            let shipped_name = format!("shipped {}/{file}", name_of(shipped));
            out.push_str(&unified_diff(&old, &new, &shipped_name, "recorded"));
        }
    }
    out
}

/// Records the conversation in `dir` against a new double answering from its `answers.json`,
/// into `out`.
async fn record_against_the_double(dir: &Path, out: &Path) {
    let double = OpenAiDouble::start().await;
    let answers = load_answers(dir).unwrap();
    let recorded = replay::record(dir, out, double_model(&double), |step| {
        for answer in answers.iter().filter(|a| a.step == step) {
            for answer in &answer.answers {
                double.push_content(answer.content());
            }
        }
    })
    .await;
    if let Err(error) = recorded {
        panic!("{}: {error:#}", dir.display());
    }
    assert_eq!(
        double.remaining(),
        0,
        "{}: some answers in {ANSWERS_FILE} were never asked for",
        dir.display()
    );
}

#[tokio::test]
async fn the_shipped_files_are_what_recording_against_the_double_produces() {
    let update = std::env::var_os("UPDATE_CASSETTES").is_some();
    let mut stale = String::new();
    for dir in shipped() {
        let out = tempfile::tempdir().unwrap();
        record_against_the_double(&dir, out.path()).await;
        let differences = differences(&dir, out.path());
        if differences.is_empty() {
            continue;
        }
        if update {
            for file in FILES {
                fs::copy(out.path().join(file), dir.join(file)).unwrap();
            }
        } else {
            stale.push_str(&differences);
        }
    }
    assert!(
        stale.is_empty(),
        "{stale}\nThe shipped conversations are out of date; re-record them with \
         `UPDATE_CASSETTES=1 cargo test -p soul-examples --test replay`"
    );
}

/// The replay binary with none of the environment it reads.
fn replay_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_replay"));
    command.env_remove("OPENAI_API_KEY").stdin(Stdio::null());
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A copy of the shipped conversation `name` in a new temporary directory, under the same name.
fn copy_of(name: &str) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(name);
    fs::create_dir(&dir).unwrap();
    for file in FILES {
        fs::copy(
            Path::new(CONVERSATIONS).join(name).join(file),
            dir.join(file),
        )
        .unwrap();
    }
    (root, dir)
}

/// Replaces `old` (which must be there) by `new` in `dir`'s conversation file.
fn edit_conversation(dir: &Path, old: &str, new: &str) {
    let path = dir.join(CONVERSATION_FILE);
    let script = fs::read_to_string(&path).unwrap();
    assert!(script.contains(old), "{old:?} is not in the conversation");
    fs::write(&path, script.replacen(old, new, 1)).unwrap();
}

#[test]
fn the_command_replays_every_conversation_and_prints_their_transcripts() {
    let output = replay_command().arg(CONVERSATIONS).output().unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    for dir in shipped() {
        let transcript = fs::read_to_string(dir.join(TRANSCRIPT_FILE)).unwrap();
        assert!(stdout.contains(&transcript), "{} is printed", name_of(&dir));
    }
    let names: Vec<String> = shipped().iter().map(|dir| name_of(dir)).collect();
    let n = names.len();
    assert!(stdout.ends_with(&format!("{n} conversation(s) replayed: all as recorded\n")));
    // Not a terminal: plain progress lines instead of a bar.
    let stderr = text(&output.stderr);
    for (i, name) in names.iter().enumerate() {
        let line = format!("[{}/{n}] {name}: ok\n", i + 1);
        assert!(stderr.contains(&line), "{line:?} in {stderr}");
    }
}

fn failed(output: &Output) -> String {
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    stdout
}

#[test]
fn a_different_reply_exits_non_zero_with_a_diff() {
    let (_root, dir) = copy_of("01-first-contact");
    // The recording says Sage answered with the cassette's words; expect others.
    edit_conversation(
        &dir,
        "\"Lovely to meet you, Ana. What's on your mind today?\"",
        "\"Nice to meet you, Ana. What's on your mind today?\"",
    );
    let stdout = failed(&replay_command().arg("--quiet").arg(&dir).output().unwrap());
    assert!(
        stdout.contains(
            "DIVERGED: 01-first-contact: step 2 did not do what was recorded\n\
             --- expected (conversation.json, step 2)\n\
             +++ actual\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "-    reply: Nice to meet you, Ana. What's on your mind today?\n\
             +    reply: Lovely to meet you, Ana. What's on your mind today?\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout
            .ends_with("1 of 1 conversation(s) departed from their recording: 01-first-contact\n")
    );
}

#[test]
fn a_changed_message_exits_non_zero_with_the_model_requests_diff() {
    let (_root, dir) = copy_of("01-first-contact");
    edit_conversation(
        &dir,
        "\"say\": \"I'm a bit stressed about my exams next week\"",
        "\"say\": \"I'm a bit stressed about my exam next week\"",
    );
    let stdout = failed(&replay_command().arg("--quiet").arg(&dir).output().unwrap());
    assert!(
        stdout.contains("DIVERGED: 01-first-contact: step 3 did not do what was recorded"),
        "{stdout}"
    );
    // The turn failed, so the person got the fallback reply.
    assert!(
        stdout.contains("+    (the engine failed: the fallback reply was sent)\n"),
        "{stdout}"
    );
    // And the cassette says which request changed, and how.
    assert!(
        stdout.contains("the model failed: no recorded answer for this request\n--- recorded"),
        "{stdout}"
    );
    assert!(
        stdout.contains("my exams next week") && stdout.contains("my exam next week"),
        "{stdout}"
    );
}

#[test]
fn a_cassette_with_unused_answers_exits_non_zero() {
    let (_root, dir) = copy_of("01-first-contact");
    // Drop the last step: its interactions are then never asked for.
    let path = dir.join(CONVERSATION_FILE);
    let mut script: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    script["steps"].as_array_mut().unwrap().pop();
    fs::write(&path, serde_json::to_string_pretty(&script).unwrap()).unwrap();
    let stdout = failed(&replay_command().arg("--quiet").arg(&dir).output().unwrap());
    assert!(
        stdout.contains("the replay asked the model less than the recording did"),
        "{stdout}"
    );
    assert!(stdout.contains("were never asked for"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn record_mode_writes_a_cassette_the_replay_then_matches() {
    let (_root, dir) = copy_of("01-first-contact");
    fs::remove_file(dir.join(CASSETTE_FILE)).unwrap();
    let double = OpenAiDouble::start().await;
    for step in load_answers(&dir).unwrap() {
        for answer in &step.answers {
            double.push_content(answer.content());
        }
    }
    let mut command = replay_command();
    command
        .args([
            "--record",
            "--quiet",
            "--model",
            "double-model",
            "--base-url",
        ])
        .arg(double.base_url())
        .arg(&dir)
        .env("OPENAI_API_KEY", "sk-test");
    // The double answers on this runtime while the blocking call waits for the program.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(double.remaining(), 0);

    let shipped = Path::new(CONVERSATIONS).join("01-first-contact");
    assert_eq!(differences(&shipped, &dir), "");
    let replayed = replay_command().arg(&dir).output().unwrap();
    assert!(replayed.status.success(), "{}", text(&replayed.stdout));
}
