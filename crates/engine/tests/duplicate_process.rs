//! Two processes with one name in one soul are refused at start-up, naming both places.
//!
//! A test binary of its own: registrations are per binary, and this one is broken on purpose.

use soul_engine::process::{Next, ProcessContext, ProcessResult, Registry};

soul_engine::soul! {
    name: "twins",
    persona: &["You are a soul with a naming problem."],
    initial_process: "hello",
}

soul_engine::mental_process!(soul = "twins", name = "hello", hello);
soul_engine::mental_process!(soul = "twins", name = "hello", hello_again);

async fn hello(cx: ProcessContext) -> ProcessResult {
    Ok(Next::stay(cx.memory().clone()))
}

async fn hello_again(cx: ProcessContext) -> ProcessResult {
    Ok(Next::stay(cx.memory().clone()))
}

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
    assert!(message.contains(&format!("{here}:13")), "{message}");
    assert!(message.contains(&format!("{here}:14")), "{message}");
    assert_eq!(error.problems.len(), 1, "{message}");
}
