//! Sage, the companion soul, turn by turn with the model behind the OpenAI double.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

mod common;

use chrono::{Duration, TimeZone, Utc};
use common::{perceive, runtime, say, state_in, time, verdict};
use serde_json::json;
use soul_engine::process::{
    EventId, Perception, PerceptionKind, Registry, ScheduledEvent, SoulState,
};
use soul_engine::{Memory, Region, Role, WorkingMemory};
use soul_processes::companion::check_in::{CHECK_IN, CHECK_IN_AFTER, CHECK_IN_PERCEPTION};
use soul_processes::companion::crisis::DEFAULT_CRISIS_RESOURCES;
use soul_processes::companion::summary::{SUMMARY_KEEP, SUMMARY_PREFIX, SUMMARY_THRESHOLD};
use soul_processes::companion::user_model::UserModel;
use soul_processes::companion::{CAREFUL_MODE_KEY, NAME, USER_MODEL_KEY, USER_NAME_KEY};
use soul_testkit::openai::Reply;

fn process(state: &SoulState) -> &str {
    &state.process.as_ref().unwrap().name
}

#[test]
fn the_registry_loads_both_souls() {
    let registry = Registry::load().unwrap();
    let names: Vec<_> = registry.soul_names().collect();
    assert!(
        names.contains(&"sage") && names.contains(&"pip"),
        "{names:?}"
    );

    let sage = registry.soul("sage").unwrap();
    assert_eq!(sage.initial_process().name(), "first_contact");
    let mut processes: Vec<_> = sage.processes().map(|p| p.name()).collect();
    processes.sort_unstable();
    assert_eq!(
        processes,
        [
            "check_in",
            "conversation",
            "crisis",
            "deep_listening",
            "first_contact",
            "wind_down"
        ]
    );
    let subprocesses: Vec<_> = sage.subprocesses().iter().map(|p| p.name()).collect();
    assert_eq!(subprocesses, ["schedule_check_in", "user_model", "summary"]);

    let pip = registry.soul("pip").unwrap();
    assert_eq!(pip.initial_process().name(), "study");
    assert!(pip.process("quiz").is_some());
}

#[tokio::test]
async fn first_contact_learns_the_name_and_moves_to_conversation() {
    let (double, runtime) = runtime("sage").await;
    let mut state = SoulState::new(NAME);

    // Risk query, name step, reply.
    double
        .push_content(verdict(false))
        .push_content(r#"{"name": null}"#)
        .push_content("Sage said: \"Hi, I'm Sage, an AI companion. What should I call you?\"");
    let (main, _) = say(&runtime, &mut state, "hey", time(0)).await;
    assert_eq!(
        main.replies,
        ["Hi, I'm Sage, an AI companion. What should I call you?"]
    );
    assert_eq!(process(&state), "first_contact");
    assert!(!state.soul_memory.contains_key(USER_NAME_KEY));

    double
        .push_content(verdict(false))
        .push_content(r#"{"name": " Ana "}"#)
        .push_content("Sage said: \"Lovely to meet you, Ana. What's on your mind?\"");
    let (main, _) = say(&runtime, &mut state, "Ana is fine", time(1)).await;
    assert_eq!(
        main.replies,
        ["Lovely to meet you, Ana. What's on your mind?"]
    );
    assert_eq!(state.soul_memory[USER_NAME_KEY], json!("Ana"));
    assert_eq!(process(&state), "conversation");

    // An ordinary turn: two model calls, and the reply step knows the name.
    double
        .push_content(verdict(false))
        .push_content("Sage said: \"Not bad! How was yours?\"");
    let (main, _) = say(&runtime, &mut state, "how's your day", time(2)).await;
    assert_eq!(main.replies, ["Not bad! How was yours?"]);
    assert_eq!(main.processes_run, ["conversation"]);
    assert_eq!(double.remaining(), 0);
    let requests = double.requests().await;
    assert_eq!(requests.len(), 8);
    assert!(
        requests[7]
            .to_string()
            .contains("They like to be called Ana."),
        "the reply step is told the name"
    );
}

#[tokio::test]
async fn a_crisis_phrase_gets_the_resources_verbatim_even_when_the_model_fails() {
    let (double, runtime) = runtime("sage").await;
    let mut state = state_in(NAME, "conversation");
    // The phrase matches, so no risk query: the only model call is the careful reply, and it
    // fails.
    double.push(Reply::status(500));
    let (main, _) = say(&runtime, &mut state, "I want to kill myself", time(0)).await;
    assert_eq!(main.replies, [DEFAULT_CRISIS_RESOURCES]);
    assert_eq!(main.processes_run, ["conversation", "crisis"]);
    assert_eq!(process(&state), "crisis");
    assert_eq!(double.requests().await.len(), 1);
    let last = state.working_memory.unregioned().last().unwrap();
    assert_eq!(last.role, Role::Assistant);
    assert!(
        last.content.contains(DEFAULT_CRISIS_RESOURCES),
        "what was sent is remembered"
    );
}

#[tokio::test]
async fn careful_mode_persists_until_the_risk_is_resolved() {
    let (double, runtime) = runtime("sage").await;
    let mut state = state_in(NAME, "conversation");

    // A subtle message: no phrase, the risk query says yes.
    double
        .push_content(verdict(true))
        .push_content("Sage said: \"I'm really glad you told me. You matter.\"");
    let (main, _) = say(
        &runtime,
        &mut state,
        "honestly I don't see the point of anything anymore",
        time(0),
    )
    .await;
    assert_eq!(
        main.replies,
        [format!(
            "I'm really glad you told me. You matter.\n\n{DEFAULT_CRISIS_RESOURCES}"
        )]
    );
    assert_eq!(process(&state), "crisis");

    // Not resolved: the resolution query says no; careful mode and resources stay.
    double
        .push_content(verdict(false))
        .push_content("Sage said: \"I'm here with you.\"");
    let (main, _) = say(&runtime, &mut state, "idk", time(1)).await;
    assert!(main.replies[0].ends_with(DEFAULT_CRISIS_RESOURCES));
    assert_eq!(process(&state), "crisis");

    // A risk phrase keeps careful mode without asking the model.
    double.push_content("Sage said: \"Thank you for telling me.\"");
    let (main, _) = say(&runtime, &mut state, "i still want to die", time(2)).await;
    assert!(main.replies[0].ends_with(DEFAULT_CRISIS_RESOURCES));
    assert_eq!(process(&state), "crisis");

    // Resolved: the reply still carries the resources, then careful mode ends.
    double
        .push_content(verdict(true))
        .push_content("Sage said: \"I'm so glad. Text me any time.\"");
    let (main, _) = say(
        &runtime,
        &mut state,
        "I'm ok now, my sister is here with me",
        time(3),
    )
    .await;
    assert!(main.replies[0].ends_with(DEFAULT_CRISIS_RESOURCES));
    assert_eq!(process(&state), "conversation");
    assert!(!state.soul_memory.contains_key(CAREFUL_MODE_KEY));

    double
        .push_content(verdict(false))
        .push_content("Sage said: \"Of course.\"");
    let (main, _) = say(&runtime, &mut state, "thanks", time(4)).await;
    assert_eq!(main.replies, ["Of course."]);
    assert_eq!(double.remaining(), 0);
}

#[tokio::test]
async fn careful_mode_holds_when_the_resolution_query_fails() {
    let (double, runtime) = runtime("sage").await;
    let mut state = state_in(NAME, "crisis");
    double
        .push(Reply::status(500))
        .push_content("Sage said: \"I'm still here.\"");
    let (main, _) = say(&runtime, &mut state, "whatever", time(0)).await;
    assert_eq!(
        main.replies,
        [format!("I'm still here.\n\n{DEFAULT_CRISIS_RESOURCES}")]
    );
    assert_eq!(process(&state), "crisis");
}

#[tokio::test]
async fn goodbye_winds_down_and_the_next_message_is_conversation() {
    let (double, runtime) = runtime("sage").await;
    let mut state = state_in(NAME, "conversation");
    double
        .push_content(verdict(false))
        .push_content("Sage said: \"Sleep well. Text me any time.\"");
    let (main, _) = say(&runtime, &mut state, "ok bye for now!", time(0)).await;
    assert_eq!(main.processes_run, ["conversation", "wind_down"]);
    assert_eq!(main.replies, ["Sleep well. Text me any time."]);
    let current = state.process.clone().unwrap();
    assert_eq!(current.name, "conversation");
    assert_eq!(current.previous.as_deref(), Some("wind_down"));

    double
        .push_content(verdict(false))
        .push_content("Sage said: \"Welcome back!\"");
    let (main, _) = say(&runtime, &mut state, "morning!", time(600)).await;
    assert_eq!(main.processes_run, ["conversation"]);
    assert_eq!(main.replies, ["Welcome back!"]);
}

#[tokio::test]
async fn opening_up_leads_to_deep_listening_and_back() {
    let (double, runtime) = runtime("sage").await;
    let mut state = state_in(NAME, "conversation");
    // Risk query, opening-up query, reply (deep listening does not screen the same message again).
    double
        .push_content(verdict(false))
        .push_content(verdict(true))
        .push_content("Sage said: \"That sounds really isolating. What do you miss most?\"");
    let (main, _) = say(
        &runtime,
        &mut state,
        "I've been feeling so lonely since I moved here",
        time(0),
    )
    .await;
    assert_eq!(main.processes_run, ["conversation", "deep_listening"]);
    assert_eq!(process(&state), "deep_listening");

    // Still sharing: risk query and reply.
    double
        .push_content(verdict(false))
        .push_content("Sage said: \"Of course you miss them.\"");
    let (main, _) = say(
        &runtime,
        &mut state,
        "my friends, mostly. I miss them",
        time(1),
    )
    .await;
    assert_eq!(main.processes_run, ["deep_listening"]);
    assert_eq!(process(&state), "deep_listening");

    // Moved on: risk query, moved-on query, everyday reply, back to conversation.
    double
        .push_content(verdict(false))
        .push_content(verdict(true))
        .push_content("Sage said: \"Ooh, what are you making?\"");
    let (main, _) = say(&runtime, &mut state, "anyway, cooking dinner now", time(2)).await;
    assert_eq!(main.replies, ["Ooh, what are you making?"]);
    assert_eq!(process(&state), "conversation");
    assert_eq!(double.remaining(), 0);
}

#[tokio::test]
async fn the_summary_fills_its_region_and_bounds_working_memory() {
    let (double, runtime) = runtime("sage").await;
    let mut state = state_in(NAME, "conversation");
    let mut memory = WorkingMemory::new(NAME);
    for i in 0..SUMMARY_THRESHOLD {
        memory = memory.with_memory(if i % 2 == 0 {
            Memory::new(Role::User, format!("message {i}"), time(0))
        } else {
            Memory::new(
                Role::Assistant,
                format!("Sage said: \"reply {i}\""),
                time(0),
            )
        });
    }
    state.working_memory = memory;

    // Risk query, reply, then the summary subprocess's one call.
    double
        .push_content(verdict(false))
        .push_content("Sage said: \"Good, thanks!\"")
        .push_content("They have been chatting about their week.");
    let (_, subs) = say(&runtime, &mut state, "how are you?", time(1)).await;
    assert_eq!(double.remaining(), 0);

    let memory = &state.working_memory;
    assert_eq!(memory.unregioned().count(), SUMMARY_KEEP);
    assert_eq!(
        memory.unregioned().last().unwrap().content,
        "Sage said: \"Good, thanks!\""
    );
    let summary: Vec<&Memory> = memory.region(&Region::summary()).collect();
    assert_eq!(summary.len(), 1);
    assert_eq!(
        summary[0].content,
        format!("{SUMMARY_PREFIX}They have been chatting about their week.")
    );
    let regions: Vec<Option<&str>> = memory
        .iter()
        .map(|m| m.region.as_ref().map(Region::as_str))
        .collect();
    assert_eq!(regions[..PERSONA_LEN], [Some("core"); PERSONA_LEN]);
    assert_eq!(regions[PERSONA_LEN], Some("summary"));
    assert!(regions[PERSONA_LEN + 1..].iter().all(Option::is_none));
    assert_eq!(subs.appended.len(), 1, "only the summary is new");

    // The next turn is well under the threshold: no summary call, the region stays.
    double
        .push_content(verdict(false))
        .push_content("Sage said: \"Nice.\"");
    say(&runtime, &mut state, "cool", time(2)).await;
    assert_eq!(state.working_memory.region(&Region::summary()).count(), 1);
    assert_eq!(state.working_memory.unregioned().count(), SUMMARY_KEEP + 2);
}

const PERSONA_LEN: usize = soul_processes::companion::PERSONA.len();

#[tokio::test]
async fn the_user_model_updates_when_they_talk_about_themselves() {
    let (double, runtime) = runtime("sage").await;
    let mut state = state_in(NAME, "conversation");
    // Nothing about themselves: no update call.
    double
        .push_content(verdict(false))
        .push_content("Sage said: \"Hi!\"");
    say(&runtime, &mut state, "hi", time(0)).await;
    assert!(!state.soul_memory.contains_key(USER_MODEL_KEY));

    double
        .push_content(verdict(false))
        .push_content("Sage said: \"A thesis! What's it about?\"")
        .push_content(r#"{"name": "Ana", "preferences": ["tea"], "working_on": ["her thesis"]}"#);
    say(
        &runtime,
        &mut state,
        "I'm working on my thesis, fueled by tea",
        time(1),
    )
    .await;
    let model: UserModel =
        serde_json::from_value(state.soul_memory[USER_MODEL_KEY].clone()).unwrap();
    assert_eq!(model.working_on, ["her thesis"]);
    assert_eq!(model.preferences, ["tea"]);
    assert_eq!(
        state.soul_memory[USER_NAME_KEY],
        json!("Ana"),
        "a name learned here fills an empty user_name"
    );

    // The next reply is told what Sage knows.
    double
        .push_content(verdict(false))
        .push_content("Sage said: \"How's the thesis?\"");
    say(&runtime, &mut state, "hello again", time(2)).await;
    let requests = double.requests().await;
    assert!(
        requests
            .last()
            .unwrap()
            .to_string()
            .contains("They are working on: her thesis."),
    );
}

#[tokio::test]
async fn each_message_reschedules_the_check_in_and_the_due_event_speaks() {
    let (double, runtime) = runtime("sage").await;
    let mut state = state_in(NAME, "conversation");

    double
        .push_content(verdict(false))
        .push_content("Sage said: \"Hi!\"");
    let (_, subs) = say(&runtime, &mut state, "hi", time(0)).await;
    assert_eq!(subs.scheduled.len(), 1);
    let first = subs.scheduled[0].clone();
    assert_eq!(first.process.as_deref(), Some("check_in"));
    assert_eq!(first.at, time(0) + CHECK_IN_AFTER);
    assert_eq!(first.content, CHECK_IN_PERCEPTION);
    assert!(subs.cancelled_events.is_empty());
    assert_eq!(state.pending_events, std::slice::from_ref(&first));

    // The next message moves the pending check-in: the same event, three days from now.
    double
        .push_content(verdict(false))
        .push_content("Sage said: \"Hello again!\"");
    let (_, subs) = say(&runtime, &mut state, "me again", time(30)).await;
    let second = first.clone().rescheduled(time(30) + CHECK_IN_AFTER);
    assert_eq!(subs.scheduled, std::slice::from_ref(&second));
    assert!(subs.cancelled_events.is_empty());
    assert_eq!(state.pending_events, std::slice::from_ref(&second));

    // The event comes due: one gentle message, no new check-in, back to conversation.
    double.push_content("Sage said: \"Thinking of you. No need to reply.\"");
    let (main, subs) = perceive(&runtime, &mut state, due(&second.id, second.at)).await;
    assert_eq!(main.processes_run, ["check_in"]);
    assert_eq!(main.replies, ["Thinking of you. No need to reply."]);
    assert_eq!(process(&state), "conversation");
    assert!(subs.scheduled.is_empty() && subs.cancelled_events.is_empty());
    assert!(state.pending_events.is_empty());
    assert_eq!(double.remaining(), 0);
}

#[tokio::test]
async fn a_message_leaves_one_check_in_pending_however_many_there_were() {
    let (double, runtime) = runtime("sage").await;
    let mut state = state_in(NAME, "conversation");
    let check_in = |hours| {
        ScheduledEvent::new(time(0) + Duration::hours(hours), CHECK_IN_PERCEPTION)
            .for_process(CHECK_IN)
    };
    let (soonest, other, later) = (
        check_in(1),
        ScheduledEvent::new(time(0) + Duration::hours(2), "[a reminder]"),
        check_in(5),
    );
    state.pending_events = vec![later.clone(), other.clone(), soonest.clone()];

    double
        .push_content(verdict(false))
        .push_content("Sage said: \"Hi!\"");
    let (_, subs) = say(&runtime, &mut state, "hi", time(10)).await;
    let moved = soonest.rescheduled(time(10) + CHECK_IN_AFTER);
    assert_eq!(
        subs.scheduled,
        std::slice::from_ref(&moved),
        "the soonest is moved"
    );
    assert_eq!(subs.cancelled_events, [later.id]);
    assert_eq!(state.pending_events, [other, moved], "another event stays");
}

#[tokio::test]
async fn careful_mode_survives_a_session_timeout_and_colours_the_check_in() {
    let (double, runtime) = runtime("sage").await;
    let mut state = state_in(NAME, "conversation");
    double.push_content("Sage said: \"I'm glad you told me.\"");
    let (_, subs) = say(&runtime, &mut state, "I want to hurt myself", time(0)).await;
    assert_eq!(state.soul_memory[CAREFUL_MODE_KEY], json!(true));
    let check_in = subs.scheduled[0].clone();

    // The session times out: the store clears the process state and process memories.
    state.process = None;
    state.process_memories.clear();

    // The check-in comes due, and the model fails: the resources go out alone.
    double.push(Reply::status(500));
    let (main, _) = perceive(&runtime, &mut state, due(&check_in.id, check_in.at)).await;
    assert_eq!(main.replies, [DEFAULT_CRISIS_RESOURCES]);

    // The person writes again: first contact sends them straight back to careful mode.
    double.push_content("Sage said: \"I'm here.\"");
    let (main, _) = say(
        &runtime,
        &mut state,
        "hey",
        check_in.at + Duration::hours(1),
    )
    .await;
    assert_eq!(main.processes_run, ["first_contact", "crisis"]);
    assert_eq!(
        main.replies,
        [format!("I'm here.\n\n{DEFAULT_CRISIS_RESOURCES}")]
    );
    assert_eq!(process(&state), "crisis");
    assert_eq!(double.remaining(), 0);
}

fn due(id: &EventId, at: chrono::DateTime<Utc>) -> Perception {
    Perception {
        kind: PerceptionKind::Event {
            id: *id,
            process: Some("check_in".into()),
            params: serde_json::Value::Null,
        },
        ..Perception::message(CHECK_IN_PERCEPTION, at)
    }
}

#[tokio::test]
async fn a_known_person_whose_session_started_over_goes_straight_to_conversation() {
    let (double, runtime) = runtime("sage").await;
    let mut state = SoulState::new(NAME);
    state.soul_memory.insert(USER_NAME_KEY.into(), json!("Ana"));
    // No name step: the risk query (asked once, by conversation) and the reply.
    double
        .push_content(verdict(false))
        .push_content("Sage said: \"Ana! Good to hear from you.\"");
    let (main, _) = say(&runtime, &mut state, "hi it's me again", time(0)).await;
    assert_eq!(main.processes_run, ["first_contact", "conversation"]);
    assert_eq!(main.replies, ["Ana! Good to hear from you."]);
    assert_eq!(double.requests().await.len(), 2);
}

#[tokio::test]
async fn with_a_known_utc_offset_the_check_in_lands_in_local_daytime() {
    let (double, runtime) = runtime("sage").await;
    let mut state = state_in(NAME, "conversation");
    double
        .push_content(verdict(false))
        .push_content("Sage said: \"Late night?\"");
    // 03:00 UTC is 22:00 at UTC-5: the check-in moves to 19:00 local, three days on.
    let sent = Utc.with_ymd_and_hms(2026, 11, 24, 3, 0, 0).unwrap();
    let mut message = Perception::message("still up", sent);
    message.metadata = json!({ "utc_offset_minutes": -300 });
    let (_, subs) = perceive(&runtime, &mut state, message).await;
    assert_eq!(
        subs.scheduled[0].at,
        Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap()
    );
}
