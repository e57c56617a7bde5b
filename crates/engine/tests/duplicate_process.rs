//! Two processes with one name in one soul are refused at start-up, naming both places.
//!
//! A test binary of its own: registrations are per binary, and this one is broken on purpose.
//! A soul of it that is sound still loads alone, as a test of that soul does.

#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use soul_engine::process::{MentalProcess, Next, ProcessContext, ProcessResult, Registry};

soul_engine::soul! {
    name: "twins",
    persona: &["You are a soul with a naming problem."],
    initial_process: HELLO,
}

const HELLO: MentalProcess = soul_engine::mental_process!(soul = "twins", name = "hello", hello);
// Its handle would name the same process as `HELLO`.
const _: MentalProcess = soul_engine::mental_process!(soul = "twins", name = "hello", hello_again);

async fn hello(cx: ProcessContext) -> ProcessResult {
    Ok(Next::stay(cx.memory().clone()))
}

async fn hello_again(cx: ProcessContext) -> ProcessResult {
    Ok(Next::stay(cx.memory().clone()))
}

// A sound soul in the same binary.
soul_engine::soul! {
    name: "sound",
    persona: &["You are a soul without problems."],
    initial_process: FINE,
}

const FINE: MentalProcess = soul_engine::mental_process!(soul = "sound", name = "fine", hello);

#[test]
fn a_duplicate_process_name_is_an_error_naming_both_registrations() {
    let error = Registry::load().expect_err("two processes share the name `hello`");
    let message = error.to_string();
    assert!(
        message.contains("soul `twins` has two processes named `hello`"),
        "{message}"
    );
    // Both registrations, by file and line (inventory does not promise an order).
    let here = "tests/duplicate_process.rs";
    assert!(message.contains(&format!("{here}:16")), "{message}");
    assert!(message.contains(&format!("{here}:18")), "{message}");
    assert_eq!(error.problems.len(), 1, "{message}");
}

#[test]
fn a_sound_soul_loads_alone_beside_a_broken_one() {
    assert!(
        Registry::load().is_err(),
        "the binary's set is inconsistent"
    );
    let sound = Registry::load_soul("sound").unwrap();
    assert_eq!(sound.initial_process(), FINE);

    let twins = Registry::load_soul("twins").unwrap_err();
    assert_eq!(twins.problems.len(), 1, "{twins}");
    assert!(twins.problems[0].contains("two processes named `hello`"));
    let nobody = Registry::load_soul("nobody").unwrap_err();
    assert!(
        nobody.problems[0].starts_with("no soul named `nobody` is registered"),
        "{nobody}"
    );
}
