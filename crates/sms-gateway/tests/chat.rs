//! `sms-gateway chat` over a pipe, as a script or an editor's terminal pane runs it: plain text
//! with no colour codes, its commands answered, and the log kept out of the conversation — with
//! the model behind the OpenAI double and a real SQLite store.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Output, Stdio};

use soul_testkit::openai::OpenAiDouble;

use crate::common::command;

/// The environment of a chat with Pip on a SQLite file in `dir`, its model the double.
fn env(dir: &Path, model: &OpenAiDouble) -> BTreeMap<String, String> {
    [
        (
            "DATABASE_URL",
            format!("sqlite://{}/soul.db", dir.display()),
        ),
        ("OPENAI_BASE_URL", model.base_url()),
        ("OPENAI_API_KEY", "test-key".to_owned()),
        ("SOUL", "pip".to_owned()),
        // A model that keeps failing gives up at once.
        ("MODEL_TIMEOUT", "1s".to_owned()),
        ("MODEL_RETRY_BUDGET", "1s".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

/// Runs `chat` with `input` on its standard input, to the end.
async fn chat(env: &BTreeMap<String, String>, input: &str) -> Output {
    let mut child = command(env)
        .args(["chat", "--from", "tester"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    // Waiting blocks: off the runtime, which serves the model.
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    output
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_pipe_chat_writes_plain_text_and_answers_its_commands() {
    let dir = tempfile::tempdir().unwrap();
    let model = OpenAiDouble::start().await;
    model.push_content("Pip said: \"Cells, then. Go.\"");
    let output = chat(
        &env(dir.path(), &model),
        "/help\nhello\n/state\n/nonsense\n/quit\nnever sent\n",
    )
    .await;
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert!(
        !stdout.contains('\x1b') && !stderr.contains('\x1b'),
        "{stdout}{stderr}"
    );

    let (help, rest) = stdout.split_once("pip> Cells, then. Go.\n").unwrap();
    assert!(help.contains("/state") && help.contains("/quit"), "{help}");
    // `/state` reads what the turn stored.
    assert!(rest.starts_with("process: study (run 1 times)\n"), "{rest}");
    assert!(rest.contains("[conversation] user: hello\n"), "{rest}");
    assert!(rest.contains("[core] system: You are Pip"), "{rest}");
    assert!(
        stderr.contains("(no command /nonsense: /help lists them)"),
        "{stderr}"
    );
    assert_eq!(model.requests().await.len(), 1, "/quit ends the chat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_go_to_the_log_file_not_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing scripted: every model request fails, and the turn falls back.
    let model = OpenAiDouble::start().await;
    let output = chat(&env(dir.path(), &model), "hello\n").await;
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert_eq!(
        stdout.lines().count(),
        1,
        "the fallback reply alone: {stdout}"
    );
    assert!(stdout.starts_with("pip> "), "{stdout}");
    assert!(stderr.contains("(the soul could not answer"), "{stderr}");
    assert!(
        !stderr.contains("WARN") && !stderr.contains("sending the fallback reply"),
        "no log line in the conversation: {stderr}"
    );
    let log = std::fs::read_to_string(dir.path().join("chat.log")).unwrap();
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("sending the fallback reply"), "{log}");
    assert!(!log.contains('\x1b'), "{log}");
}
