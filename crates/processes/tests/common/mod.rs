//! What every test of the shipped souls needs: a runtime for a soul with the model behind the
//! OpenAI double over real HTTP, and turns applied to a `SoulState` as a store would.

// Each test binary uses only part of this module.
#![allow(dead_code)]

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use soul_engine::SystemClock;
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::process::{
    MainOutcome, Perception, ProcessState, Registry, Runtime, SoulState, SubprocessOutcome,
};
use soul_engine::retry::RetryPolicy;
use soul_testkit::openai::OpenAiDouble;

/// A runtime for `soul` whose model is the double, without retries (a scripted 500 fails the
/// call at once).
pub(crate) async fn runtime(soul: &str) -> (OpenAiDouble, Runtime) {
    let double = OpenAiDouble::start().await;
    let config = OpenAiConfig::new(double.base_url(), "sk-test", "double-model")
        .with_retry(RetryPolicy::no_retries());
    let model = Arc::new(OpenAiModel::new(config).unwrap());
    let soul = Registry::load().unwrap().soul(soul).unwrap();
    (double, Runtime::new(soul, model, Arc::new(SystemClock)))
}

/// The `n`th message's time: noon UTC on 24 November 2026, plus `n` minutes.
pub(crate) fn time(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap() + Duration::minutes(n)
}

/// A state already in `process`, as after some earlier turns.
pub(crate) fn state_in(soul_name: &str, process: &str) -> SoulState {
    let mut state = SoulState::new(soul_name);
    state.process = Some(ProcessState {
        name: process.into(),
        params: json!(null),
        invocation_count: 1,
        previous: None,
    });
    state
}

/// One whole turn for `perception`, applied to `state` as a store would.
pub(crate) async fn perceive(
    runtime: &Runtime,
    state: &mut SoulState,
    perception: Perception,
) -> (MainOutcome, SubprocessOutcome) {
    let main = runtime
        .run_main("session", state.clone(), perception, None)
        .await
        .unwrap();
    state.apply_main(&main);
    let subs = runtime.run_subprocesses(&main).await;
    assert!(
        subs.failed.is_empty(),
        "failed subprocesses: {:?}",
        subs.failed
    );
    state.apply_subprocesses(&subs);
    (main, subs)
}

/// One whole turn for the message `text` sent at `at`.
pub(crate) async fn say(
    runtime: &Runtime,
    state: &mut SoulState,
    text: &str,
    at: DateTime<Utc>,
) -> (MainOutcome, SubprocessOutcome) {
    perceive(runtime, state, Perception::message(text, at)).await
}

/// A mental query's answer, as the model sends it.
pub(crate) fn verdict(is_true: bool) -> String {
    json!({ "is_true": is_true }).to_string()
}
