//! The process runtime: transitions, invocation counts, memories, the run-now bound, subprocess
//! isolation and ordering, scheduled events — with the model behind the OpenAI double.
#![cfg(feature = "openai")]
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{Duration, TimeZone, Utc};
use serde_json::json;
use soul_engine::SystemClock;
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::prelude::*;
use soul_engine::process::{
    EventId, ProcessState, RUN_NOW_LIMIT, Registry, Runtime, SoulState, TurnError,
};
use soul_engine::retry::RetryPolicy;
use soul_testkit::openai::OpenAiDouble;
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

// ---- The souls under test, registered exactly as an author would. ----

soul! {
    name: "tester",
    persona: &["You are Tess, a test soul."],
    initial_process: GREETING,
}
const GREETING: MentalProcess = mental_process!(soul = "tester", name = "greeting", greeting);
const CHAT: MentalProcess = mental_process!(soul = "tester", name = "chat", chat);
const BOUNCE: MentalProcess = mental_process!(soul = "tester", name = "bounce", bounce);
const SCHEDULER: MentalProcess = mental_process!(soul = "tester", name = "scheduler", scheduler);
const CHECKIN: MentalProcess = mental_process!(soul = "tester", name = "checkin", checkin);

/// The process "go X" and "now X" name; `elsewhere` is another soul's.
fn target(name: &str) -> MentalProcess {
    match name {
        "greeting" => GREETING,
        "chat" => CHAT,
        "bounce" => BOUNCE,
        "scheduler" => SCHEDULER,
        "checkin" => CHECKIN,
        "elsewhere" => TALK,
        _ => panic!("no process {name}"),
    }
}

/// Speaks through the model; counts its runs in process memory; obeys "go X" / "now X" / "bounce N".
async fn greeting(cx: ProcessContext) -> ProcessResult {
    let (memory, said) = cx
        .mind()
        .run(external_dialog("Greet them."), cx.memory())
        .await?;
    cx.speak(said);
    let runs: u32 = cx.process_memory().get("runs")?.unwrap_or(0);
    cx.process_memory().set("runs", &(runs + 1))?;
    cx.soul_memory().set("met", &true)?;
    record(&cx, "greeting")?;
    let text = cx.perception().content.clone();
    Ok(match text.split_once(' ') {
        Some(("go", name)) => {
            Next::to(target(name), memory).with_params(json!({"from": "greeting"}))
        }
        Some(("now", name)) => Next::to(target(name), memory).run_now(),
        Some(("bounce", n)) => {
            cx.soul_memory()
                .set("bounces_wanted", &n.parse::<u32>().unwrap())?;
            Next::to(BOUNCE, memory).run_now()
        }
        _ => Next::stay(memory),
    })
}

async fn chat(cx: ProcessContext) -> ProcessResult {
    let (memory, said) = cx.mind().run(external_dialog("Chat."), cx.memory()).await?;
    cx.speak(said);
    cx.soul_memory().set("chat_params", cx.params_json())?;
    let met: Option<bool> = cx.soul_memory().get("met")?;
    cx.soul_memory().set("chat_saw_met", &met)?;
    record(&cx, "chat")?;
    Ok(match cx.perception().content.as_str() {
        "back" => Next::to(GREETING, memory),
        "fail" => return Err(ProcessError::failed("asked to fail")),
        _ => Next::stay(memory),
    })
}

/// Re-enters itself at once until it has run as often as `bounces_wanted` says.
async fn bounce(cx: ProcessContext) -> ProcessResult {
    let done: u32 = cx.soul_memory().get("bounces")?.unwrap_or(0);
    let wanted: u32 = cx.soul_memory().get("bounces_wanted")?.unwrap_or(0);
    cx.soul_memory().set("bounces", &(done + 1))?;
    let memory = cx.memory().clone();
    Ok(if done + 1 < wanted {
        Next::to(BOUNCE, memory).run_now()
    } else {
        Next::stay(memory)
    })
}

async fn scheduler(cx: ProcessContext) -> ProcessResult {
    let at = cx.perception().at + Duration::days(1);
    let kept = cx.schedule(at, Some(CHECKIN), "It has been a day.");
    let dropped = cx.schedule(at, None, "never mind");
    cx.cancel_scheduled(dropped);
    cx.cancel_scheduled(EventId(Uuid::nil()));
    cx.soul_memory().set("scheduled", &kept)?;
    Ok(Next::stay(cx.memory().clone()))
}

async fn checkin(cx: ProcessContext) -> ProcessResult {
    cx.speak("Just checking in.");
    record(&cx, "checkin")?;
    Ok(Next::stay(cx.memory().clone()))
}

/// Appends "<process>#<invocation count>" to the soul memory `runs`.
fn record(cx: &ProcessContext, name: &str) -> Result<(), ProcessError> {
    let mut runs: Vec<String> = cx.soul_memory().get("runs")?.unwrap_or_default();
    runs.push(format!("{name}#{}", cx.invocation_count()));
    cx.soul_memory().set("runs", &runs)?;
    Ok(())
}

soul! {
    name: "layered",
    persona: &["You are Lee."],
    initial_process: TALK,
    subprocesses: &[LEARN, BROKEN, SUMMARY],
}
const TALK: MentalProcess = mental_process!(soul = "layered", name = "talk", talk);
const LEARN: Subprocess = subprocess!(soul = "layered", name = "learn", learn);
const BROKEN: Subprocess = subprocess!(soul = "layered", name = "broken", broken);
const SUMMARY: Subprocess = subprocess!(soul = "layered", name = "summary", summary);

async fn talk(cx: ProcessContext) -> ProcessResult {
    let (memory, said) = cx.mind().run(external_dialog("Talk."), cx.memory()).await?;
    cx.speak(said);
    Ok(Next::stay(memory))
}

async fn learn(cx: ProcessContext) -> ProcessResult {
    cx.soul_memory().set("learned", "yes")?;
    let seen: u32 = cx.process_memory().get("seen")?.unwrap_or(0);
    cx.process_memory().set("seen", &(seen + 1))?;
    let notes = Region::new("notes").unwrap();
    Ok(Next::stay(
        cx.memory()
            .with_region(notes, [Memory::system("they like tea")]),
    ))
}

async fn broken(cx: ProcessContext) -> ProcessResult {
    cx.soul_memory().set("broken_was_here", &true)?;
    cx.speak("this must never be sent");
    Err(ProcessError::failed("broken on purpose"))
}

async fn summary(cx: ProcessContext) -> ProcessResult {
    let learned: Option<String> = cx.soul_memory().get("learned")?;
    let (_, text) = cx.mind().run(summarize(""), cx.memory()).await?;
    cx.soul_memory().set("summary_saw_learned", &learned)?;
    Ok(Next::stay(
        cx.memory()
            .with_region(Region::summary(), [Memory::system(text)]),
    ))
}

soul! {
    name: "gated",
    persona: &["You are Gus."],
    initial_process: ANSWER,
    subprocesses: &[WAIT_FOR_SIGNAL],
}
const ANSWER: MentalProcess = mental_process!(soul = "gated", name = "answer", answer);
const WAIT_FOR_SIGNAL: Subprocess =
    subprocess!(soul = "gated", name = "wait_for_signal", wait_for_signal);

async fn answer(cx: ProcessContext) -> ProcessResult {
    cx.speak(format!("answer to {}", cx.perception().content));
    Ok(Next::stay(cx.memory().clone()))
}

/// Waits until the test signals the gate named by the perception.
async fn wait_for_signal(cx: ProcessContext) -> ProcessResult {
    gate(&cx.perception().content).notified().await;
    cx.soul_memory().set("signalled", &true)?;
    Ok(Next::stay(cx.memory().clone()))
}

fn gate(name: &str) -> Arc<Notify> {
    static GATES: OnceLock<Mutex<HashMap<String, Arc<Notify>>>> = OnceLock::new();
    let mut gates = GATES.get_or_init(Mutex::default).lock().unwrap();
    gates.entry(name.to_owned()).or_default().clone()
}

soul! {
    name: "mover",
    persona: &["You are Mo."],
    initial_process: STEADY,
    subprocesses: &[REDIRECT, NOTE],
}
const STEADY: MentalProcess = mental_process!(soul = "mover", name = "steady", steady);
const MOVED: MentalProcess = mental_process!(soul = "mover", name = "moved", moved);
const REDIRECT: Subprocess = subprocess!(soul = "mover", name = "redirect", redirect);
const NOTE: Subprocess = subprocess!(soul = "mover", name = "note", note);

async fn steady(cx: ProcessContext) -> ProcessResult {
    cx.speak("steady");
    cx.process_memory().set("seen", &true)?;
    Ok(Next::stay(cx.memory().clone()))
}

async fn moved(cx: ProcessContext) -> ProcessResult {
    cx.speak(format!("moved with {}", cx.params_json()));
    Ok(Next::stay(cx.memory().clone()))
}

/// Moves the main process when the message says so: "move" (from the next message on),
/// "move now" (at once, which a subprocess cannot do), "move away" (to another soul's process).
async fn redirect(cx: ProcessContext) -> ProcessResult {
    cx.soul_memory().set("redirect_ran", &true)?;
    let memory = cx.memory().clone();
    Ok(match cx.perception().content.as_str() {
        "move" => Next::to(MOVED, memory).with_params(json!({"why": "redirected"})),
        "move now" => Next::to(MOVED, memory).run_now(),
        "move away" => Next::to(TALK, memory),
        _ => Next::stay(memory),
    })
}

/// Runs after `redirect`, whatever became of it.
async fn note(cx: ProcessContext) -> ProcessResult {
    cx.soul_memory().set("noted", &true)?;
    Ok(Next::stay(cx.memory().clone()))
}

// ---- Helpers ----

async fn runtime(soul: &str) -> (OpenAiDouble, Runtime) {
    let double = OpenAiDouble::start().await;
    let config = OpenAiConfig::new(double.base_url(), "sk-test", "double-model")
        .with_retry(RetryPolicy::no_retries());
    let model = Arc::new(OpenAiModel::new(config).unwrap());
    let soul = Registry::load().unwrap().soul(soul).unwrap();
    (double, Runtime::new(soul, model, Arc::new(SystemClock)))
}

fn message(text: &str) -> Perception {
    Perception::message(text, Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap())
}

fn runs(state: &SoulState) -> Vec<String> {
    serde_json::from_value(state.soul_memory["runs"].clone()).unwrap()
}

/// One full turn, applied to `state` as a store would.
async fn turn(runtime: &Runtime, state: &mut SoulState, text: &str) -> Vec<String> {
    let main = runtime
        .run_main("session", state.clone(), message(text), None)
        .await
        .unwrap();
    state.apply_main(&main);
    let subs = runtime.run_subprocesses(&main).await;
    state.apply_subprocesses(&subs);
    main.replies
}

// ---- Tests ----

#[tokio::test]
async fn a_new_session_starts_in_the_initial_process_and_stays() {
    let (double, runtime) = runtime("tester").await;
    double.push_content("Tess said: \"Hi!\"");
    let main = runtime
        .run_main("s", SoulState::new("Tess"), message("hello"), None)
        .await
        .unwrap();
    assert_eq!(main.replies, ["Hi!"]);
    assert_eq!(main.processes_run, ["greeting"]);
    assert_eq!(
        main.process,
        ProcessState {
            name: "greeting".into(),
            params: json!(null),
            invocation_count: 1,
            previous: None
        }
    );
    assert_eq!(main.corrected_from, None);
    assert_eq!(main.soul_memory.upserts["met"], json!(true));
    // The persona went to `core`, the message and the reply were appended.
    let memory = &main.working_memory;
    assert_eq!(memory.get(0).unwrap().region, Some(Region::core()));
    assert_eq!(memory.get(1).unwrap().content, "hello");
    assert_eq!(main.perception_memory, Some(memory.get(1).unwrap().id));
    assert_eq!(
        main.appended.len(),
        1,
        "only the reply is new besides the perception"
    );
    assert_eq!(main.appended[0].content, "Tess said: \"Hi!\"");
    assert_eq!(main.usage.total(), 15);
}

#[tokio::test]
async fn transitions_carry_params_and_counts_restart() {
    let (double, runtime) = runtime("tester").await;
    let mut state = SoulState::new("Tess");
    for _ in 0..5 {
        double.push_content("ok");
    }
    turn(&runtime, &mut state, "hello").await;
    turn(&runtime, &mut state, "go chat").await;
    let after_go = state.process.clone().unwrap();
    assert_eq!(after_go.name, "chat");
    assert_eq!(after_go.params, json!({"from": "greeting"}));
    assert_eq!(after_go.invocation_count, 0);
    assert_eq!(after_go.previous.as_deref(), Some("greeting"));

    turn(&runtime, &mut state, "anything").await;
    turn(&runtime, &mut state, "anything").await;
    assert_eq!(
        state.soul_memory["chat_params"],
        json!({"from": "greeting"})
    );
    assert_eq!(
        runs(&state),
        ["greeting#0", "greeting#1", "chat#0", "chat#1"]
    );
    assert_eq!(state.process.as_ref().unwrap().invocation_count, 2);
}

#[tokio::test]
async fn process_memory_is_reset_by_a_process_change_and_soul_memory_survives() {
    let (double, runtime) = runtime("tester").await;
    let mut state = SoulState::new("Tess");
    for _ in 0..5 {
        double.push_content("ok");
    }
    turn(&runtime, &mut state, "hello").await;
    turn(&runtime, &mut state, "go chat").await;
    assert_eq!(
        state.process_memories.get("greeting"),
        None,
        "leaving greeting dropped its memory"
    );

    let main = runtime
        .run_main("session", state.clone(), message("back"), None)
        .await
        .unwrap();
    assert_eq!(
        main.soul_memory.upserts["chat_saw_met"],
        json!(true),
        "soul memory crossed the transition"
    );
    assert!(main.process_memory["chat"].cleared);
    assert!(
        main.process_memory["greeting"].cleared,
        "the entered process starts empty"
    );
    state.apply_main(&main);

    turn(&runtime, &mut state, "hello again").await;
    assert_eq!(
        state.process_memories["greeting"]["runs"],
        json!(1),
        "counting restarted"
    );
}

#[tokio::test]
async fn run_now_runs_the_next_process_on_the_same_perception() {
    let (double, runtime) = runtime("tester").await;
    double.push_content("first");
    double.push_content("second");
    let main = runtime
        .run_main("s", SoulState::new("Tess"), message("now chat"), None)
        .await
        .unwrap();
    assert_eq!(main.processes_run, ["greeting", "chat"]);
    assert_eq!(main.replies, ["first", "second"]);
    assert_eq!(main.process.name, "chat");
    assert_eq!(main.process.invocation_count, 1);
    assert_eq!(main.process.previous.as_deref(), Some("greeting"));
}

#[tokio::test]
async fn ten_run_now_transitions_in_a_row_are_allowed() {
    let (double, runtime) = runtime("tester").await;
    double.push_content("hi");
    // greeting → bounce is the first run-now; bounce re-enters itself 9 more times.
    let main = runtime
        .run_main(
            "s",
            SoulState::new("Tess"),
            message(&format!("bounce {RUN_NOW_LIMIT}")),
            None,
        )
        .await
        .unwrap();
    assert_eq!(main.processes_run.len(), RUN_NOW_LIMIT + 1);
    assert_eq!(main.soul_memory.upserts["bounces"], json!(RUN_NOW_LIMIT));
}

#[tokio::test]
async fn the_eleventh_run_now_transition_is_a_typed_error() {
    let (double, runtime) = runtime("tester").await;
    double.push_content("hi");
    let err = runtime
        .run_main(
            "s",
            SoulState::new("Tess"),
            message(&format!("bounce {}", RUN_NOW_LIMIT + 1)),
            None,
        )
        .await
        .unwrap_err();
    match err {
        TurnError::RunNowLimit { chain } => {
            assert_eq!(chain.len(), RUN_NOW_LIMIT + 2, "{chain:?}");
            assert_eq!(chain[0], "greeting");
        }
        other => panic!("expected RunNowLimit, got {other}"),
    }
}

#[tokio::test]
async fn an_unregistered_stored_process_is_corrected_to_the_initial_one() {
    let (double, runtime) = runtime("tester").await;
    double.push_content("hi");
    let mut state = SoulState::new("Tess");
    state.process = Some(ProcessState {
        name: "renamed_long_ago".into(),
        params: json!({"stale": true}),
        invocation_count: 7,
        previous: None,
    });
    let main = runtime
        .run_main("s", state, message("hello"), None)
        .await
        .unwrap();
    assert_eq!(main.corrected_from.as_deref(), Some("renamed_long_ago"));
    assert_eq!(main.processes_run, ["greeting"]);
    assert_eq!(main.process.params, json!(null));
    assert_eq!(main.process.invocation_count, 1);
}

#[tokio::test]
async fn a_transition_to_another_souls_process_fails_the_turn() {
    let (double, runtime) = runtime("tester").await;
    double.push_content("hi");
    let err = runtime
        .run_main("s", SoulState::new("Tess"), message("go elsewhere"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TurnError::UnknownProcess { ref to, ref soul, .. } if to == "talk" && soul == "tester"),
        "{err}"
    );
}

#[tokio::test]
async fn a_failing_main_process_fails_the_turn_with_its_name() {
    let (double, runtime) = runtime("tester").await;
    let mut state = SoulState::new("Tess");
    double.push_content("hi");
    double.push_content("ok");
    turn(&runtime, &mut state, "go chat").await;
    let err = runtime
        .run_main("s", state, message("fail"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TurnError::Process { ref process, .. } if process == "chat"),
        "{err}"
    );
}

#[tokio::test]
async fn scheduled_and_cancelled_events_are_in_the_outcome() {
    let (_double, runtime) = runtime("tester").await;
    let mut state = SoulState::new("Tess");
    state.process = Some(ProcessState {
        name: "scheduler".into(),
        params: json!(null),
        invocation_count: 3,
        previous: None,
    });
    let main = runtime
        .run_main("s", state.clone(), message("remind me"), None)
        .await
        .unwrap();
    assert_eq!(
        main.scheduled.len(),
        1,
        "the event cancelled in the same turn is gone"
    );
    let event = &main.scheduled[0];
    assert_eq!(event.process.as_deref(), Some("checkin"));
    assert_eq!(
        event.at,
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
    );
    assert_eq!(main.cancelled_events, [EventId(Uuid::nil())]);
    state.apply_main(&main);

    // When it comes due, the aimed process answers once and the current process stays.
    let due = Perception {
        kind: PerceptionKind::Event {
            id: event.id,
            process: event.process.clone(),
            params: event.params.clone(),
        },
        ..Perception::message(event.content.clone(), event.at)
    };
    let fired = runtime
        .run_main("s", state.clone(), due, None)
        .await
        .unwrap();
    assert_eq!(fired.processes_run, ["checkin"]);
    assert_eq!(fired.replies, ["Just checking in."]);
    assert_eq!(fired.process.name, "scheduler");
    assert_eq!(
        fired.process.invocation_count, 4,
        "the aimed run does not count for the current process"
    );
    let event_memory = fired
        .working_memory
        .find(|m| m.metadata.get("event_id").is_some())
        .unwrap();
    assert_eq!(event_memory.content, "It has been a day.");
}

#[tokio::test]
async fn subprocesses_run_in_order_and_a_failing_one_changes_nothing() {
    let (double, runtime) = runtime("layered").await;
    double.push_content("Lee said: hello");
    double.push_content("They said hello; they like tea.");
    let mut state = SoulState::new("Lee");
    let main = runtime
        .run_main("s", state.clone(), message("hi"), None)
        .await
        .unwrap();
    assert_eq!(main.replies, ["hello"]);
    state.apply_main(&main);
    let subs = runtime.run_subprocesses(&main).await;

    assert!(!subs.cancelled);
    assert_eq!(subs.failed, ["broken"]);
    assert_eq!(
        subs.replies,
        Vec::<String>::new(),
        "the failed subprocess's reply is dropped"
    );
    assert_eq!(subs.soul_memory.upserts.get("broken_was_here"), None);
    assert_eq!(subs.soul_memory.upserts["learned"], json!("yes"));
    assert_eq!(
        subs.soul_memory.upserts["summary_saw_learned"],
        json!("yes"),
        "later subprocesses see earlier ones' changes"
    );
    assert_eq!(subs.process_memory["learn"].upserts["seen"], json!(1));

    let memory = subs.working_memory.clone().unwrap();
    let regions: Vec<Option<&str>> = memory
        .iter()
        .map(|m| m.region.as_ref().map(Region::as_str))
        .collect();
    assert_eq!(
        regions,
        [Some("core"), Some("summary"), Some("notes"), None, None]
    );
    assert_eq!(subs.appended.len(), 2, "the notes and the summary");
    state.apply_subprocesses(&subs);
    assert_eq!(state.process_memories["learn"]["seen"], json!(1));
}

#[tokio::test]
async fn replies_reach_the_caller_before_subprocesses_complete() {
    let (_double, runtime) = runtime("gated").await;
    let runtime = Arc::new(runtime);
    let (replies, mut received) = mpsc::unbounded_channel();
    let turn = tokio::spawn({
        let runtime = runtime.clone();
        async move {
            let main = runtime
                .run_main(
                    "s",
                    SoulState::new("Gus"),
                    message("ordering"),
                    Some(replies),
                )
                .await
                .unwrap();
            runtime.run_subprocesses(&main).await
        }
    });
    // The subprocess cannot finish before the gate opens, and the gate opens only once the reply
    // has arrived: receiving it proves it came first.
    assert_eq!(received.recv().await.as_deref(), Some("answer to ordering"));
    assert!(!turn.is_finished());
    gate("ordering").notify_one();
    let subs = turn.await.unwrap();
    assert!(!subs.cancelled);
    assert_eq!(subs.soul_memory.upserts["signalled"], json!(true));
}

#[tokio::test]
async fn a_newer_turn_cancels_the_older_turns_subprocesses() {
    let (_double, runtime) = runtime("gated").await;
    let runtime = Arc::new(runtime);
    let older = runtime
        .run_main("same", SoulState::new("Gus"), message("never-opened"), None)
        .await
        .unwrap();
    let older_subs = tokio::spawn({
        let runtime = runtime.clone();
        async move { runtime.run_subprocesses(&older).await }
    });
    tokio::task::yield_now().await;
    let newer = runtime
        .run_main("same", SoulState::new("Gus"), message("newer"), None)
        .await
        .unwrap();
    let cancelled = older_subs.await.unwrap();
    assert!(cancelled.cancelled);
    assert!(cancelled.soul_memory.is_empty() && cancelled.working_memory.is_none());

    // Another session is not affected.
    let other = runtime
        .run_main("other", SoulState::new("Gus"), message("other-gate"), None)
        .await
        .unwrap();
    let other_subs = tokio::spawn({
        let runtime = runtime.clone();
        async move { runtime.run_subprocesses(&other).await }
    });
    gate("other-gate").notify_one();
    assert!(!other_subs.await.unwrap().cancelled);
    drop(newer);
}

#[tokio::test]
async fn a_subprocess_transition_moves_the_main_process_from_the_next_message() {
    let (_double, runtime) = runtime("mover").await;
    let mut state = SoulState::new("Mo");
    let main = runtime
        .run_main("s", state.clone(), message("move"), None)
        .await
        .unwrap();
    assert_eq!(main.process.name, "steady");
    state.apply_main(&main);
    assert_eq!(state.process_memories["steady"]["seen"], json!(true));
    let subs = runtime.run_subprocesses(&main).await;
    assert!(subs.failed.is_empty(), "{:?}", subs.failed);
    assert_eq!(
        subs.process,
        Some(ProcessState {
            name: "moved".into(),
            params: json!({"why": "redirected"}),
            invocation_count: 0,
            previous: Some("steady".into()),
        })
    );
    assert!(subs.process_memory["steady"].cleared, "the process left");
    assert!(subs.process_memory["moved"].cleared, "the process entered");
    assert_eq!(subs.soul_memory.upserts["noted"], json!(true));
    state.apply_subprocesses(&subs);
    assert_eq!(state.process.as_ref().unwrap().name, "moved");
    assert!(!state.process_memories.contains_key("steady"));

    let replies = turn(&runtime, &mut state, "hello").await;
    assert_eq!(replies, [r#"moved with {"why":"redirected"}"#]);
    assert_eq!(state.process.as_ref().unwrap().invocation_count, 1);
}

#[tokio::test]
async fn a_subprocess_asking_to_run_a_process_now_or_another_souls_fails_alone() {
    let (_double, runtime) = runtime("mover").await;
    for text in ["move now", "move away"] {
        let main = runtime
            .run_main("s", SoulState::new("Mo"), message(text), None)
            .await
            .unwrap();
        let subs = runtime.run_subprocesses(&main).await;
        assert_eq!(subs.failed, ["redirect"], "{text}");
        assert_eq!(subs.process, None, "{text}: the main process stays");
        assert!(!subs.process_memory.contains_key("steady"), "{text}");
        assert_eq!(subs.soul_memory.upserts.get("redirect_ran"), None, "{text}");
        assert_eq!(subs.soul_memory.upserts["noted"], json!(true), "{text}");
    }
}
