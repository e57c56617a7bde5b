//! The `embed` example: its offline demo runs out of the box, and the shipped cassette it replays
//! is exactly what the demo records against the OpenAI double with the answers below.
//!
//! After changing the souls or the demo, re-record the cassette with
//! `UPDATE_CASSETTES=1 cargo test -p soul-examples --test embed_demo`.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use soul_testkit::openai::OpenAiDouble;

/// The shipped cassette.
const CASSETTE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/cassettes/embed-demo.json");

/// The model's answers in the demo, in the order the soul asks: per message, the risk query and
/// the steps of the process answering it, then the subprocesses' steps.
const ANSWERS: &[&str] = &[
    // "hi! I'm Ana, I work nights at a bakery": first contact, then the user model ("i work").
    r#"{"is_true": false}"#,
    r#"{"name": "Ana"}"#,
    "Sage said: \"Hi Ana, I'm Sage, an AI companion you can text any time. Lovely to meet you. \
     What's on your mind tonight?\"",
    r#"{"name": "Ana", "preferences": [], "working_on": ["night shifts at a bakery"]}"#,
    // "work has been a lot lately, ...": the risk query, "is she opening up?", deep listening.
    r#"{"is_true": false}"#,
    r#"{"is_true": true}"#,
    "Sage said: \"That sounds exhausting, like there's not much of you left at the end of a \
     shift. What's been weighing on you most?\"",
    // "thanks, that helps. ok bye for now": the risk query, then the wind-down.
    r#"{"is_true": false}"#,
    "Sage said: \"I'm glad it helped, Ana. Rest well, and text me any time.\"",
    // "/later": the check-in comes due.
    "Sage said: \"Hi Ana, just thinking of you and wondering how your week has been. No need \
     to reply.\"",
];

/// What the demo prints.
const TRANSCRIPT: &str = "\
you> hi! I'm Ana, I work nights at a bakery
Sage> Hi Ana, I'm Sage, an AI companion you can text any time. Lovely to meet you. What's on your mind tonight?
(Sage will check in at 2026-11-27 18:02 UTC if you go quiet)
you> work has been a lot lately, I feel stretched really thin
Sage> That sounds exhausting, like there's not much of you left at the end of a shift. What's been weighing on you most?
(Sage will check in at 2026-11-27 18:04 UTC if you go quiet)
you> thanks, that helps. ok bye for now
Sage> I'm glad it helped, Ana. Rest well, and text me any time.
(Sage will check in at 2026-11-27 18:06 UTC if you go quiet)
you> /later
(time passes: it is now 2026-11-27 18:06 UTC)
Sage> Hi Ana, just thinking of you and wondering how your week has been. No need to reply.
";

/// The example binary with none of the environment it reads, whatever the test's own is.
fn embed() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_embed"));
    for variable in [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "SOUL_MODEL",
        "SOUL_RECORD_CASSETTE",
        "SOUL_CRISIS_RESOURCES",
    ] {
        command.env_remove(variable);
    }
    command.stdin(Stdio::null());
    command
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "embed failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn the_offline_demo_replays_the_shipped_cassette() {
    let output = embed().output().unwrap();
    assert_eq!(stdout_of(&output), TRANSCRIPT);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_in_the_environment_does_not_take_the_demo_live() {
    let double = OpenAiDouble::start().await;
    double.push_content("Sage said: \"Live!\"");
    let mut command = embed();
    command
        .env("OPENAI_API_KEY", "sk-test")
        .env("OPENAI_BASE_URL", double.base_url());

    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();

    assert_eq!(stdout_of(&output), TRANSCRIPT);
    assert!(double.requests().await.is_empty(), "the model was called");
}

#[test]
fn going_live_without_a_key_says_what_is_missing() {
    let output = embed().arg("--live").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--live needs OPENAI_API_KEY"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_cassette_is_what_the_demo_records() {
    let double = OpenAiDouble::start().await;
    for answer in ANSWERS {
        double.push_content(*answer);
    }
    let dir = tempfile::tempdir().unwrap();
    let recorded = dir.path().join("embed-demo.json");

    let mut command = embed();
    command
        .args(["--live", "--demo"])
        .env("OPENAI_API_KEY", "sk-test")
        .env("OPENAI_BASE_URL", double.base_url())
        .env("SOUL_MODEL", "double-model")
        .env("SOUL_RECORD_CASSETTE", &recorded);
    // The double answers on this runtime while the blocking call waits for the program.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stdout_of(&output),
        TRANSCRIPT,
        "the live demo prints the same"
    );
    assert_eq!(double.remaining(), 0, "every answer was asked for");

    let recorded = std::fs::read_to_string(&recorded).unwrap();
    if std::env::var_os("UPDATE_CASSETTES").is_some() {
        std::fs::write(Path::new(CASSETTE), &recorded).unwrap();
    }
    let shipped = std::fs::read_to_string(CASSETTE).unwrap_or_default();
    assert!(
        recorded == shipped,
        "the shipped cassette is out of date; re-record it with \
         `UPDATE_CASSETTES=1 cargo test -p soul-examples --test embed_demo`"
    );
}
