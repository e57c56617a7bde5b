//! The inspector in a real headless Chromium, over a real SQLite store and a real listener:
//! logging in, the conversations and their filters, one conversation's turns unfolded to their
//! steps, its working memory by region, a rewind to an earlier turn, reveal, export and erasure
//! with their audit, and every way in that must be refused. Its clock is the test's, so that a login can expire without waiting.
//!
//! With `INSPECTOR_SCREENSHOTS=<dir>` the tests also write the screenshots `docs/inspector.md`
//! shows (`INSPECTOR_SCREENSHOTS=docs/img`, run from the workspace root).
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use soul_engine::{Clock, Memory, Region, Role, WorkingMemory};
use soul_inspector::{Access, Inspector};
use soul_persistence::turn_log::{SessionState, StepLog};
use soul_persistence::{
    Address, AuditAction, BeginOutcome, Changes, DeliveryStatus, DeliveryUpdate, Inbound, Inspect,
    NewEvent, OutboundRef, ProcessState, Processes, SessionId, SqliteStore, Store, TurnCommit,
    TurnSettings,
};
use soul_testkit::browser::Browser;
use soul_testkit::soul::TestClock;

const TOKEN: &str = "correct horse battery staple";
const ALICE: &str = "+15550001234";
const BOB: &str = "+15550009876";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap()
}

/// An inspector on a store in a temporary directory, serving on a loopback port.
struct Served {
    url: String,
    store: Arc<dyn Inspect>,
    clock: Arc<TestClock>,
    sessions: Vec<SessionId>,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Inspect> =
            Arc::new(SqliteStore::open(dir.path().join("soul.db")).await.unwrap());
        let sessions = seed(&*store).await;
        let clock = Arc::new(TestClock::at(t0() + Duration::hours(1)));
        let inspector = Inspector::new(
            store.clone(),
            Access::Token(TOKEN.to_owned()),
            clock.clone(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, soul_inspector::router(inspector))
                .await
                .unwrap();
        });
        Served {
            url,
            store,
            clock,
            sessions,
            _dir: dir,
        }
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

fn settings() -> TurnSettings {
    TurnSettings::new(
        "Sage",
        Processes::new("conversation", ["conversation", "crisis"]),
    )
}

/// One turn of `from` saying `body`, answered with `reply`, committing `changes`, with its
/// record as a turn driver writes it: one step whose answer is `Answer: <reply>`, and the
/// change log (what a rewind undoes).
async fn turn(
    store: &dyn Store,
    from: &str,
    body: &str,
    reply: &str,
    at: DateTime<Utc>,
    changes: Changes,
) -> (SessionId, uuid::Uuid) {
    let inbound = Inbound {
        from: Address::new(from),
        line: Default::default(),
        persona: None,
        body: body.to_owned(),
        external_id: None,
        received_at: at,
        opt_out: None,
    };
    let BeginOutcome::Started(context) = store.begin_turn(&inbound, &settings(), at).await.unwrap()
    else {
        panic!("the turn did not start");
    };
    let mut commit = TurnCommit::new(&context);
    commit.replies.push(Memory::new(Role::Assistant, reply, at));
    commit.record.changes = SessionState::of_turn(&context).apply(&changes, &settings().processes);
    commit.record.steps.push(StepLog {
        name: "externalDialog".to_owned(),
        structured: false,
        duration_ms: 420,
        tokens: [120, 14],
        answer: format!("Answer: {reply}"),
        full: None,
    });
    commit.changes = changes;
    let outcome = store.commit_turn(&commit, &settings(), at).await.unwrap();
    (context.session.id, outcome.outbound[0])
}

/// Alice (two turns, now in crisis mode, a working memory with a summary region) and Bob
/// (one turn whose reply failed, a check-in due).
async fn seed(store: &dyn Store) -> Vec<SessionId> {
    let summary = Region::new("summary").unwrap();
    let memory = WorkingMemory::new("Sage")
        .with_memory(Memory::new(Role::System, "You are Sage.", t0()))
        .with_region(
            summary,
            [Memory::new(Role::System, "Alice is moving house.", t0())],
        )
        .with_memory(Memory::new(Role::User, "I am moving house", t0()));
    let (alice, _) = turn(
        store,
        ALICE,
        "I am moving house",
        "That is a lot. How are you holding up?",
        t0(),
        Changes::default(),
    )
    .await;
    turn(
        store,
        ALICE,
        "honestly not well",
        "I am here with you. Are you safe right now?",
        t0() + Duration::minutes(2),
        Changes {
            process_state: Some(ProcessState::new("crisis", json!({"level": 2}))),
            snapshot: Some(memory),
            ..Changes::default()
        },
    )
    .await;
    let (bob, reply) = turn(
        store,
        BOB,
        "hey",
        "Hello Bob!",
        t0() - Duration::days(1),
        Changes {
            schedule: vec![NewEvent {
                key: "check-in".into(),
                kind: "perception".into(),
                payload: json!({"content": "check in"}),
                due_at: t0(),
            }],
            ..Changes::default()
        },
    )
    .await;
    let failed = DeliveryUpdate {
        target: OutboundRef::Id(reply),
        status: DeliveryStatus::Failed,
        provider_id: None,
        error: Some("30006".into()),
        at: t0(),
    };
    assert!(store.update_delivery(&failed).await.unwrap());
    vec![alice, bob]
}

/// Writes `name`.png to `INSPECTOR_SCREENSHOTS` when it is set; checks it is a PNG either way.
async fn screenshot(browser: &Browser, name: &str) {
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    if let Some(dir) = std::env::var_os("INSPECTOR_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

async fn log_in(browser: &Browser, served: &Served) {
    browser.goto(&served.at("/")).await;
    assert!(
        browser.url().await.ends_with("/login"),
        "{}",
        browser.url().await
    );
    let token = browser.find("#token").await;
    browser.type_into(&token, TOKEN).await;
    browser
        .click_to_load(&browser.find("#login button").await)
        .await;
    browser.find("#conversations").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_filters_and_unfolds_a_turn_of_a_conversation() {
    let served = Served::start().await;
    let browser = Browser::start().await;
    browser.goto(&served.at("/login")).await;
    screenshot(&browser, "login").await;
    log_in(&browser, &served).await;

    let cookie = browser.cookie("inspector_session").await.unwrap();
    assert!(cookie.http_only);
    assert_eq!(cookie.same_site.as_deref(), Some("Strict"));

    // Both conversations, latest first, numbers masked.
    let rows = browser.find_all("#conversations tbody tr").await;
    assert_eq!(rows.len(), 2);
    let first = browser.text(&rows[0]).await;
    assert!(first.contains("+•••••••1234"), "{first}");
    assert!(first.contains("crisis"), "{first}");
    let second = browser.text(&rows[1]).await;
    assert!(
        second.contains("1 failed") && second.contains("1 check-in due"),
        "{second}"
    );
    let page = browser.source().await;
    assert!(!page.contains(ALICE) && !page.contains(BOB));
    assert!(page.contains(r#"id="logout""#));
    screenshot(&browser, "conversations").await;

    // The filters, from the form.
    browser.click(&browser.find("input[name=due]").await).await;
    browser
        .click_to_load(&browser.find("#filters button").await)
        .await;
    let rows = browser.find_all("#conversations tbody tr").await;
    assert_eq!(rows.len(), 1);
    assert!(browser.text(&rows[0]).await.contains("9876"));
    // Alice's replies are pending, Bob's failed.
    browser.goto(&served.at("/?undelivered=on")).await;
    assert_eq!(browser.find_all("#conversations tbody tr").await.len(), 2);
    browser.goto(&served.at("/?crisis=on")).await;
    let rows = browser.find_all("#conversations tbody tr").await;
    assert_eq!(rows.len(), 1);
    assert!(browser.text(&rows[0]).await.contains("1234"));
    browser.goto(&served.at("/?q=moving")).await;
    let rows = browser.find_all("#conversations tbody tr").await;
    assert!(browser.text(&rows[0]).await.contains("1234"));

    // Alice's conversation: two turns, folded; the second unfolds to its step, its changes
    // and its reply.
    browser
        .click_to_load(&browser.find("a.conversation").await)
        .await;
    let turns = browser.find_all("details.turn").await;
    assert_eq!(turns.len(), 2);
    let meta = browser.text(&browser.find(".meta").await).await;
    assert!(
        meta.contains("the default line") && meta.contains("soul Sage"),
        "{meta}"
    );
    let reply = browser.find("#turn-2 li.reply").await;
    assert_eq!(browser.text(&reply).await, "", "folded: not visible");
    browser.click(&browser.find("#turn-2 summary").await).await;
    let reply = browser.text(&browser.find("#turn-2 li.reply").await).await;
    assert!(
        reply.contains("Are you safe right now?") && reply.contains("pending"),
        "{reply}"
    );
    let step = browser.text(&browser.find("#turn-2-steps-1").await).await;
    assert!(
        step.contains("externalDialog")
            && step.contains("text")
            && step.contains("420 ms")
            && step.contains("120 + 14 tokens"),
        "{step}"
    );
    let answer = browser
        .text(&browser.find("#turn-2-steps-1 pre.answer").await)
        .await;
    assert_eq!(
        answer,
        "Answer: I am here with you. Are you safe right now?"
    );
    let changes = browser
        .text(&browser.find("#turn-2 ul.changes").await)
        .await;
    assert!(
        changes.contains("crisis {\"level\":2}") && changes.contains("a new snapshot"),
        "{changes}"
    );

    // Working memory by region, the process and the replies.
    browser
        .click(&browser.find("#region-summary summary").await)
        .await;
    let regions = browser.text(&browser.find("#working-memory").await).await;
    assert!(regions.contains("summary (1)"), "{regions}");
    assert!(regions.contains("Alice is moving house."), "{regions}");
    let process = browser.text(&browser.find("#process").await).await;
    assert!(
        process.contains("crisis") && process.contains(r#"{"level":2}"#),
        "{process}"
    );
    let replies = browser.text(&browser.find("#replies").await).await;
    assert!(replies.contains("pending"), "{replies}");
    assert_eq!(
        browser.text(&browser.find("#number").await).await,
        "+•••••••1234"
    );
    screenshot(&browser, "conversation").await;
}

/// The CSRF token of the conversation page's rewind form of `turn`, as a browser has it.
async fn rewind_csrf(browser: &Browser, served: &Served, session: SessionId, turn: u32) -> String {
    browser
        .goto(&served.at(&format!("/conversations/{session}")))
        .await;
    let field = browser
        .find(&format!(
            "form.rewind:has(input[name=turn][value='{turn}']) input[name=csrf]"
        ))
        .await;
    browser.attribute(&field, "value").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewinding_to_an_earlier_turn_marks_later_turns_rewound_and_restores_the_state() {
    let served = Served::start().await;
    let alice = served.sessions[0];
    let browser = Browser::start().await;
    log_in(&browser, &served).await;
    let cookie = browser.cookie("inspector_session").await.unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |body: String| {
        http.post(served.at(&format!("/conversations/{alice}/rewind")))
            .header("cookie", format!("inspector_session={}", cookie.value))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let csrf = rewind_csrf(&browser, &served, alice, 1).await;
    // The latest turn offers no rewind: there is nothing after it to undo.
    let page = browser.source().await;
    assert!(page.contains(r#"id="rewind-1""#) && !page.contains(r#"id="rewind-2""#));

    // Without the CSRF token, or without the confirmation, nothing is rewound or audited.
    let refused = post("turn=1&confirm=yes".to_owned()).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let refused = post(format!("turn=1&csrf={csrf}")).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("nothing was rewound")
    );
    // While a turn of Alice's runs, it is refused with a clear message.
    let running = Inbound {
        from: Address::new(ALICE),
        line: Default::default(),
        persona: None,
        body: "are you there?".to_owned(),
        external_id: None,
        received_at: served.clock.now(),
        opt_out: None,
    };
    let BeginOutcome::Started(context) = served
        .store
        .begin_turn(&running, &settings(), served.clock.now())
        .await
        .unwrap()
    else {
        panic!("the turn did not start");
    };
    let refused = post(format!("turn=1&confirm=yes&csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("a turn of this person is running")
    );
    assert!(served.store.audit_log(10).await.unwrap().is_empty());
    let turns = served.store.turn_log(alice, 1, None).await.unwrap();
    assert!(turns.iter().all(|turn| !turn.rewound));
    // That turn ends; its commit makes turn 3.
    let mut commit = TurnCommit::new(&context);
    commit
        .replies
        .push(Memory::new(Role::Assistant, "I am.", served.clock.now()));
    served
        .store
        .commit_turn(&commit, &settings(), served.clock.now())
        .await
        .unwrap();

    // From the page: tick the confirmation of turn 1 and rewind.
    browser
        .goto(&served.at(&format!("/conversations/{alice}")))
        .await;
    assert_eq!(browser.find_all("details.turn").await.len(), 3);
    browser.click(&browser.find("#turn-1 summary").await).await;
    browser
        .click(&browser.find("#confirm-rewind-1").await)
        .await;
    browser
        .click_to_load(&browser.find("#rewind-1").await)
        .await;
    let notice = browser.text(&browser.find("#notice").await).await;
    assert!(
        notice.contains("Rewound to after turn 1: 2 later turns"),
        "{notice}"
    );
    let rewound = browser.find_all("details.turn.rewound").await;
    assert_eq!(rewound.len(), 2);
    assert_eq!(
        browser.attribute(&rewound[0], "id").await.as_deref(),
        Some("turn-2")
    );
    let summary = browser.text(&browser.find("#turn-3 summary").await).await;
    assert!(summary.contains("rewound"), "{summary}");
    // The state is what it was after turn 1: not in crisis mode, no snapshot.
    let process = browser.text(&browser.find("#process").await).await;
    assert!(
        !process.contains("crisis") && process.contains("conversation"),
        "{process}"
    );
    let memory = browser.text(&browser.find("#working-memory").await).await;
    assert!(memory.contains("No snapshot stored."), "{memory}");
    screenshot(&browser, "timeline").await;

    let log = served.store.audit_log(10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].action, AuditAction::Rewind);
    assert_eq!(log[0].session, alice);
    // The JSON API says the same.
    let api: serde_json::Value = http
        .get(served.at(&format!("/api/conversations/{alice}/turns")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api["latest_turn"], json!(1));
    assert_eq!(api["turn_running"], json!(false));
    assert_eq!(api["conversation"]["address"], json!("+•••••••1234"));
    let rewound: Vec<bool> = api["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|turn| turn["rewound"].as_bool().unwrap())
        .collect();
    assert_eq!(rewound, vec![false, true, true]);
    assert_eq!(
        api["turns"][1]["steps"][0]["answer"],
        json!("Answer: I am here with you. Are you safe right now?")
    );
    assert_eq!(
        api["turns"][1]["changes"]["process"]["after"]["name"],
        json!("crisis")
    );
    assert_eq!(api["turns"][0]["replies"][0]["status"], json!("pending"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reveal_export_and_erase_are_audited_and_erasure_needs_its_confirmation() {
    let served = Served::start().await;
    let browser = Browser::start().await;
    log_in(&browser, &served).await;
    let bob = served.sessions[1];
    browser
        .goto(&served.at(&format!("/conversations/{bob}")))
        .await;

    browser.click_to_load(&browser.find("#reveal").await).await;
    assert_eq!(browser.text(&browser.find("#number").await).await, BOB);

    // The export, fetched as the form would post it (a download leaves no page to read).
    let export = browser
        .execute(
            "const form = document.querySelector('form[action$=\"/export\"]');
             return fetch(form.action, {method: 'POST', body: new URLSearchParams(new FormData(form))})
               .then(r => r.text());",
            vec![],
        )
        .await;
    let export: serde_json::Value = serde_json::from_str(export.as_str().unwrap()).unwrap();
    // One entry per conversation of the person's (per line): Bob has one.
    assert_eq!(export.as_array().unwrap().len(), 1);
    assert_eq!(export[0]["session"]["address"], json!(BOB));
    assert_eq!(export[0]["outbound_messages"][0]["error"], json!("30006"));

    // A wrong confirmation erases nothing.
    browser
        .type_into(&browser.find("#confirm").await, "0000")
        .await;
    browser.click_to_load(&browser.find("#erase").await).await;
    let error = browser.text(&browser.find("#error").await).await;
    assert!(error.contains("nothing was erased"), "{error}");
    assert!(
        served
            .store
            .session(&Address::new(BOB))
            .await
            .unwrap()
            .is_some()
    );

    browser
        .goto(&served.at(&format!("/conversations/{bob}")))
        .await;
    browser
        .type_into(&browser.find("#confirm").await, "9876")
        .await;
    browser.click_to_load(&browser.find("#erase").await).await;
    browser.find("#erased").await;
    assert!(
        served
            .store
            .session(&Address::new(BOB))
            .await
            .unwrap()
            .is_none()
    );
    browser
        .goto(&served.at(&format!("/conversations/{bob}")))
        .await;
    browser.find("#error").await;

    let log = served.store.audit_log(10).await.unwrap();
    let actions: Vec<AuditAction> = log.iter().map(|entry| entry.action).collect();
    assert_eq!(
        actions,
        vec![AuditAction::Erase, AuditAction::Export, AuditAction::Reveal]
    );
    assert!(
        log.iter()
            .all(|entry| entry.session == bob && entry.actor.starts_with("login "))
    );
    browser.goto(&served.at("/audit")).await;
    let audit = browser.text(&browser.find("#audit").await).await;
    assert!(audit.contains("erase") && audit.contains("export") && audit.contains("reveal"));
    assert!(!audit.contains(BOB));
    screenshot(&browser, "audit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_refuses_without_login_forged_or_expired_cookies_and_csrf() {
    let served = Served::start().await;
    let alice = served.sessions[0];
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // No login: pages redirect to it, the API answers 401, actions are refused.
    let page = http.get(served.at("/")).send().await.unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/login");
    let api = http
        .get(served.at("/api/conversations"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    let reveal = http
        .post(served.at(&format!("/conversations/{alice}/reveal")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=x")
        .send()
        .await
        .unwrap();
    assert_eq!(reveal.status(), 303);
    let wrong = http
        .post(served.at("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());

    // The API takes the token as a bearer, and masks numbers.
    let listed: serde_json::Value = http
        .get(served.at("/api/conversations?crisis=on"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["address"], json!("+•••••••1234"));
    let wrong_bearer = http
        .get(served.at("/api/conversations"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_bearer.status(), 401);

    let browser = Browser::start().await;
    // A forged cookie is no login.
    browser.goto(&served.at("/login")).await;
    browser
        .set_cookie("inspector_session", "0123456789abcdef.9999999999.AAAA")
        .await;
    browser.goto(&served.at("/")).await;
    assert!(browser.url().await.ends_with("/login"));

    // A real login, whose cookie works from another client too, until it expires.
    log_in(&browser, &served).await;
    let cookie = browser.cookie("inspector_session").await.unwrap();
    let with_cookie = |path: &str| {
        http.post(served.at(path))
            .header("cookie", format!("inspector_session={}", cookie.value))
            .header("content-type", "application/x-www-form-urlencoded")
    };
    // Actions without the session's CSRF token are refused, and nothing is audited.
    let reveal = format!("/conversations/{alice}/reveal");
    for body in [
        "",
        "csrf=",
        "csrf=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let refused = with_cookie(&reveal).body(body).send().await.unwrap();
        assert_eq!(refused.status(), 403, "{body:?}");
    }
    let erase = with_cookie(&format!("/conversations/{alice}/erase"))
        .body("confirm=1234")
        .send()
        .await
        .unwrap();
    assert_eq!(erase.status(), 403);
    assert!(
        served
            .store
            .session(&Address::new(ALICE))
            .await
            .unwrap()
            .is_some()
    );
    assert!(served.store.audit_log(10).await.unwrap().is_empty());
    // With it (as the page's form has it), the action is done.
    browser
        .goto(&served.at(&format!("/conversations/{alice}")))
        .await;
    let csrf = browser
        .attribute(
            &browser
                .find("form[action$='/reveal'] input[name=csrf]")
                .await,
            "value",
        )
        .await
        .unwrap();
    let revealed = with_cookie(&reveal)
        .body(format!("csrf={}", csrf))
        .send()
        .await
        .unwrap();
    assert_eq!(revealed.status(), 200);
    assert!(revealed.text().await.unwrap().contains(ALICE));
    // Another session's token is not this one's.
    let other = Browser::start().await;
    log_in(&other, &served).await;
    let other_cookie = other.cookie("inspector_session").await.unwrap();
    let crossed = http
        .post(served.at(&reveal))
        .header(
            "cookie",
            format!("inspector_session={}", other_cookie.value),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(crossed.status(), 403);

    // Past its lifetime the same cookie is no login.
    served
        .clock
        .advance(soul_inspector::DEFAULT_SESSION_LIFETIME + Duration::minutes(1));
    browser.goto(&served.at("/")).await;
    assert!(browser.url().await.ends_with("/login"));
    let expired = with_cookie(&reveal)
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 303);
    assert_eq!(served.store.audit_log(10).await.unwrap().len(), 1);
}
