//! Lines: a person has one conversation per line they texted, each with its own soul, memories,
//! opt-out and replies; export and erasure cover them all.

use serde_json::json;

use super::Harness;
use super::fixtures::{address, inbound, minutes, open, reply, settings, t0, unclaimed};
use crate::{
    BeginOutcome, Erasure, Inbound, Line, ProcessState, Processes, SoulProcesses, Store,
    TurnCommit, TurnContext, TurnSettings,
};

const LINE_A: &str = "+15550000111";
const LINE_B: &str = "+15550000222";

/// The fixtures' settings with a second soul, `bard`, deployed beside the default `aria`.
fn two_souls() -> TurnSettings {
    let mut settings = settings();
    settings.souls.insert(
        "bard".to_owned(),
        SoulProcesses {
            processes: Processes::new("verse", ["verse", "coda"]),
            subprocesses: vec!["muse".to_owned()],
        },
    );
    settings
}

fn on_line(message: Inbound, line: &str, persona: &str) -> Inbound {
    Inbound {
        line: Line::new(line),
        persona: Some(persona.to_owned()),
        ..message
    }
}

async fn started(
    store: &dyn Store,
    message: &Inbound,
    settings: &TurnSettings,
    at: chrono::DateTime<chrono::Utc>,
) -> Box<TurnContext> {
    match store
        .begin_turn(message, settings, at)
        .await
        .expect("begin")
    {
        BeginOutcome::Started(turn) => turn,
        other => panic!("expected a started turn, got {other:?}"),
    }
}

/// One number texting two lines has two conversations: each is assigned the persona its first
/// message names and keeps it, each has its own memories and opt-out, and each reply carries the
/// line it goes out from. Export lists both conversations by line; erasure deletes both and
/// keeps the opt-out of the one the person stopped, on its line.
pub async fn a_number_has_one_conversation_per_line(harness: &dyn Harness) {
    let store = open(harness).await;
    let settings = two_souls();
    let alice = address(1);
    let a = started(
        &*store,
        &on_line(inbound(&alice, "hi A", Some("SMa1"), t0()), LINE_A, "aria"),
        &settings,
        t0(),
    )
    .await;
    // The same MessageSid on another line is another conversation's message, not a duplicate.
    let b = started(
        &*store,
        &on_line(inbound(&alice, "hi B", Some("SMa1"), t0()), LINE_B, "bard"),
        &settings,
        t0(),
    )
    .await;
    assert_ne!(a.session.id, b.session.id, "two conversations");
    assert!(a.new_session && b.new_session);
    assert_eq!(
        (a.session.line.as_str(), a.session.persona.as_str()),
        (LINE_A, "aria")
    );
    assert_eq!(
        (b.session.line.as_str(), b.session.persona.as_str()),
        (LINE_B, "bard")
    );
    for (context, text) in [(&a, "re A"), (&b, "re B")] {
        let mut commit = TurnCommit::new(context);
        commit.replies.push(reply(text, t0()));
        commit.changes.soul_memory.push(crate::MemoryChange::Set {
            key: "line".to_owned(),
            value: json!(context.session.line.as_str()),
        });
        store
            .commit_turn(
                &commit,
                &settings.for_persona(&context.session.persona),
                t0(),
            )
            .await
            .expect("commit");
    }
    let pending = unclaimed(&*store, t0() + minutes(5)).await;
    let lines: Vec<(&str, &str)> = pending
        .iter()
        .map(|reply| (reply.body.as_str(), reply.line.as_str()))
        .collect();
    assert_eq!(lines, [("re A", LINE_A), ("re B", LINE_B)]);

    // The persona stays what the first contact was assigned, whatever a later message names;
    // each conversation sees only its own memories.
    let at = t0() + minutes(1);
    let b_again = started(
        &*store,
        &on_line(inbound(&alice, "again", Some("SMb2"), at), LINE_B, "aria"),
        &settings,
        at,
    )
    .await;
    assert_eq!(b_again.session.id, b.session.id);
    assert_eq!(b_again.session.persona, "bard");
    assert_eq!(b_again.soul_memories.get("line"), Some(&json!(LINE_B)));
    store
        .commit_turn(
            &TurnCommit::new(&b_again),
            &settings.for_persona("bard"),
            at,
        )
        .await
        .expect("commit");

    // A STOP on line B opts the person out of B only.
    let at = t0() + minutes(2);
    let stop = Inbound {
        opt_out: Some(true),
        ..on_line(inbound(&alice, "STOP", Some("SMb3"), at), LINE_B, "bard")
    };
    let stopped = started(&*store, &stop, &settings, at).await;
    assert!(stopped.session.opted_out);
    store
        .commit_turn(&TurnCommit::new(&stopped), &settings, at)
        .await
        .expect("commit");
    let on = |line: &'static str| {
        let store = store.clone();
        let alice = alice.clone();
        async move {
            store
                .session_on_line(&alice, &Line::new(line))
                .await
                .expect("session")
        }
    };
    assert!(!on(LINE_A).await.expect("A").opted_out);
    assert!(on(LINE_B).await.expect("B").opted_out);
    assert!(
        store.session(&alice).await.expect("session").is_none(),
        "nothing on the default line"
    );

    let export = store
        .export_user(&alice)
        .await
        .expect("export")
        .expect("known");
    let conversations = export.as_array().expect("one entry per conversation");
    let exported: Vec<(&str, &str, usize)> = conversations
        .iter()
        .map(|conversation| {
            (
                conversation["session"]["line"].as_str().unwrap_or_default(),
                conversation["session"]["persona"]
                    .as_str()
                    .unwrap_or_default(),
                conversation["messages"].as_array().map_or(0, Vec::len),
            )
        })
        .collect();
    assert_eq!(exported, [(LINE_A, "aria", 2), (LINE_B, "bard", 4)]);

    let at = t0() + minutes(3);
    assert_eq!(
        store.erase_user(&alice, at).await.expect("erase"),
        Erasure::Erased { opt_out_kept: true }
    );
    assert!(on(LINE_A).await.is_none(), "erased");
    let kept = on(LINE_B).await.expect("the opt-out on line B is kept");
    assert!(kept.opted_out && kept.total_messages == 0);
    let export = store.export_user(&alice).await.expect("export");
    assert_eq!(
        export.as_ref().and_then(|e| e.as_array()).map(Vec::len),
        Some(1),
        "{export:?}"
    );
}

/// A conversation's turns start in its own soul's processes: its initial process at first, a
/// stored process of its soul kept (though the default soul has no such process), and its
/// subprocesses' memories loaded. Once its soul is no longer deployed, the stored process is
/// corrected to the default soul's initial one, as an unknown stored process is.
pub async fn a_conversation_runs_its_own_souls_processes(harness: &dyn Harness) {
    let store = open(harness).await;
    let settings = two_souls();
    let bob = address(2);
    let first = started(
        &*store,
        &on_line(inbound(&bob, "hello", None, t0()), LINE_B, "bard"),
        &settings,
        t0(),
    )
    .await;
    assert_eq!(first.process.name, "verse");
    let mut commit = TurnCommit::new(&first);
    commit.changes.process_state = Some(ProcessState::new("coda", json!({"bars": 8})));
    commit
        .changes
        .process_memory
        .push(crate::ProcessMemoryChange {
            process: "muse".to_owned(),
            change: crate::MemoryChange::Set {
                key: "mood".to_owned(),
                value: json!("calm"),
            },
        });
    store
        .commit_turn(&commit, &settings.for_persona("bard"), t0())
        .await
        .expect("commit");

    let at = t0() + minutes(1);
    let second = started(
        &*store,
        &on_line(inbound(&bob, "more", None, at), LINE_B, "bard"),
        &settings,
        at,
    )
    .await;
    assert_eq!(second.process.name, "coda");
    assert_eq!(second.corrected_from, None);
    assert_eq!(
        second
            .subprocess_memories
            .get("muse")
            .and_then(|memories| memories.get("mood")),
        Some(&json!("calm"))
    );
    store
        .commit_turn(&TurnCommit::new(&second), &settings.for_persona("bard"), at)
        .await
        .expect("commit");

    // `bard` is no longer deployed: the default soul's settings alone.
    let at = t0() + minutes(2);
    let undeployed = started(
        &*store,
        &on_line(inbound(&bob, "still there?", None, at), LINE_B, "bard"),
        &super::fixtures::settings(),
        at,
    )
    .await;
    assert_eq!(undeployed.session.persona, "bard", "the assignment is kept");
    assert_eq!(undeployed.corrected_from.as_deref(), Some("coda"));
    assert_eq!(undeployed.process.name, "initial");
}
