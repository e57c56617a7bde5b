//! The inspector's JSON API for steering a conversation, over a real listener and a real SQLite
//! store with a turn driver whose soul answers without the model: a rewind and a re-run by
//! script (the bearer token) or by a browser session (its CSRF token), each audited before it
//! runs, refused while a turn of the person runs, and their errors as JSON.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::sync::Arc;

use chrono::{Duration, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use soul_engine::Clock;
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::process::{MentalProcess, Next, ProcessContext, ProcessResult, Registry, Runtime};
use soul_inspector::{Access, Inspector};
use soul_persistence::{Address, BeginOutcome, Inbound, Inspect, SessionId, SqliteStore, Store};
use soul_testkit::soul::TestClock;
use soul_turns::{Handled, NoDelivery, TurnDriver};

soul_engine::soul! {
    name: "echo",
    display_name: "Echo",
    persona: &["You are Echo."],
    initial_process: ECHO,
}
const ECHO: MentalProcess = soul_engine::mental_process!(soul = "echo", name = "echo", echo);

/// Answers without the model and counts the turns in soul memory.
async fn echo(cx: ProcessContext) -> ProcessResult {
    cx.speak(format!("echo: {}", cx.perception().content));
    let heard: u32 = cx.soul_memory().get("heard")?.unwrap_or(0);
    cx.soul_memory().set("heard", &(heard + 1))?;
    Ok(Next::stay(cx.memory().clone()))
}

const TOKEN: &str = "correct horse battery staple";

struct Served {
    url: String,
    store: Arc<SqliteStore>,
    driver: Arc<TurnDriver>,
    clock: Arc<TestClock>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Served {
    /// An inspector with a turn driver (`rerun`) or without, on a loopback port.
    async fn start(rerun: bool) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path().join("soul.db")).await.unwrap());
        let clock = Arc::new(TestClock::at(Utc::now()));
        // The soul never calls its model.
        let model = OpenAiModel::new(OpenAiConfig::new("http://127.0.0.1:9", "sk", "unused"));
        let runtime = Runtime::new(
            Registry::load().unwrap().soul("echo").unwrap(),
            Arc::new(model.unwrap()),
            clock.clone(),
        );
        let driver = Arc::new(TurnDriver::new(
            store.clone(),
            Arc::new(runtime),
            clock.clone(),
        ));
        let inspector = Inspector::new(
            store.clone() as Arc<dyn Inspect>,
            Access::Token(TOKEN.to_owned()),
            clock.clone(),
        );
        let inspector = if rerun {
            inspector.with_driver(driver.clone())
        } else {
            inspector
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, soul_inspector::router(inspector))
                .await
                .unwrap();
        });
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Served {
            url,
            store,
            driver,
            clock,
            http,
            _dir: dir,
        }
    }

    fn inbound(&self, from: &str, body: &str) -> Inbound {
        Inbound {
            from: Address::new(from),
            line: Default::default(),
            persona: None,
            body: body.to_owned(),
            external_id: None,
            received_at: self.clock.now(),
            opt_out: None,
        }
    }

    /// The turns of `from` saying each of `bodies`, answered.
    async fn conversation(&self, from: &str, bodies: &[&str]) -> SessionId {
        let mut session = None;
        for body in bodies {
            let handled = self
                .driver
                .handle(&self.inbound(from, body), &NoDelivery)
                .await
                .unwrap();
            let Handled::Answered(reports) = handled else {
                panic!("not answered: {handled:?}");
            };
            session = Some(reports[0].session);
        }
        session.unwrap()
    }

    /// `POST`s `body` to `path` with the bearer token: the status and the JSON answer.
    async fn post(&self, path: &str, body: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn audit(&self) -> Vec<(String, String)> {
        let audit: Value = self
            .http
            .get(format!("{}/api/audit", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        audit
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| {
                (
                    entry["action"].as_str().unwrap().to_owned(),
                    entry["session"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

#[tokio::test]
async fn a_script_reruns_and_rewinds_a_turn_through_the_api_each_audited_first() {
    let served = Served::start(true).await;
    let session = served
        .conversation("+15550001111", &["one", "two", "three"])
        .await;
    let id = session.to_string();

    let (status, rerun) = served
        .post(&format!("/api/conversations/{id}/rerun"), r#"{"turn": 2}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{rerun}");
    assert_eq!(rerun["turn"], 2);
    assert_eq!(rerun["differs"], false, "{rerun}");
    assert_eq!(rerun["recorded"]["replies"], json!(["echo: two"]));
    assert_eq!(rerun["rerun"]["replies"], json!(["echo: two"]));
    assert_eq!(rerun["rerun"]["end"]["kind"], "ok");
    assert_eq!(
        rerun["rerun"]["soul_memory"],
        json!([{"key": "heard", "before": 1, "after": 2}])
    );
    assert_eq!(served.audit().await, [("rerun".to_owned(), id.clone())]);

    let (status, rewound) = served
        .post(&format!("/api/conversations/{id}/rewind"), r#"{"turn": 1}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{rewound}");
    assert_eq!(
        rewound,
        json!({"conversation": id, "rewound_to": 1, "rewound_turns": 2})
    );
    let state = served.store.session_state(session).await.unwrap().unwrap();
    assert_eq!(state.turn, 1);
    assert_eq!(state.soul_memories["heard"], 1);
    assert_eq!(
        served.audit().await,
        [
            ("rewind".to_owned(), id.clone()),
            ("rerun".to_owned(), id.clone())
        ]
    );

    // The audit page says so too.
    let page = served
        .http
        .get(format!("{}/audit", served.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<td>rerun</td>"), "{page}");
}

#[tokio::test]
async fn the_api_answers_a_bad_request_an_unknown_turn_or_conversation_as_json() {
    let served = Served::start(true).await;
    let session = served.conversation("+15550002222", &["one"]).await;
    let id = session.to_string();
    for action in ["rewind", "rerun"] {
        let path = format!("/api/conversations/{id}/{action}");
        for body in ["", "{}", r#"{"turn": "two"}"#, r#"{"turn": -1}"#, "turn=1"] {
            let (status, error) = served.post(&path, body).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{action} {body:?}: {error}"
            );
            assert_eq!(error["error"], "bad_request");
            assert!(
                error["message"]
                    .as_str()
                    .unwrap()
                    .contains(r#"{"turn": 3}"#),
                "{error}"
            );
        }
        let (status, error) = served.post(&path, r#"{"turn": 7}"#).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{action}: {error}");
        assert_eq!(error["error"], "not_found");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("turn 7"),
            "{error}"
        );
        let nobody = uuid::Uuid::new_v4();
        let (status, error) = served
            .post(
                &format!("/api/conversations/{nobody}/{action}"),
                r#"{"turn": 1}"#,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{action}: {error}");
        assert_eq!(error["error"], "not_found");
    }
    // Nothing was done to the conversation; the unknown turns were audited as tried.
    let state = served.store.session_state(session).await.unwrap().unwrap();
    assert_eq!(state.turn, 1);
    let audit = served.audit().await;
    assert_eq!(audit.len(), 2, "{audit:?}");

    // Without a turn driver there is no re-run, said as JSON.
    let served = Served::start(false).await;
    let session = served.conversation("+15550003333", &["one"]).await;
    let (status, error) = served
        .post(
            &format!("/api/conversations/{session}/rerun"),
            r#"{"turn": 1}"#,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("turn driver"),
        "{error}"
    );
    assert!(served.audit().await.is_empty());
}

#[tokio::test]
async fn the_api_refuses_to_steer_while_a_turn_of_the_person_runs() {
    let served = Served::start(true).await;
    let from = "+15550004444";
    let session = served.conversation(from, &["one", "two"]).await;
    // A second message's turn starts and holds the session.
    let begun = served.driver.begin(&served.inbound(from, "three")).await;
    assert!(matches!(begun, Ok(BeginOutcome::Started(_))), "{begun:?}");
    for action in ["rewind", "rerun"] {
        let (status, error) = served
            .post(
                &format!("/api/conversations/{session}/{action}"),
                r#"{"turn": 1}"#,
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{action}: {error}");
        assert_eq!(error["error"], "turn_running");
    }
    // Refused before anything was audited.
    assert!(served.audit().await.is_empty());

    // Once the lease has expired (its worker is gone), the rewind goes ahead.
    served.clock.advance(Duration::hours(1));
    let (status, rewound) = served
        .post(
            &format!("/api/conversations/{session}/rewind"),
            r#"{"turn": 1}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rewound}");
}

#[tokio::test]
async fn a_browser_session_steers_through_the_api_only_with_its_csrf_token() {
    let served = Served::start(true).await;
    let session = served.conversation("+15550005555", &["one", "two"]).await;
    let login = served
        .http
        .post(format!("{}/login", served.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", TOKEN.replace(' ', "+")))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let page = served
        .http
        .get(format!("{}/conversations/{session}", served.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let rewind = |csrf: Option<String>| {
        let mut request = served
            .http
            .post(format!("{}/api/conversations/{session}/rewind", served.url))
            .header("cookie", &cookie)
            .header("content-type", "application/json")
            .body(r#"{"turn": 1}"#);
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        request.send()
    };
    let refused = rewind(None).await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"], "csrf");
    let done = rewind(Some(csrf)).await.unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    let audit = served.audit().await;
    assert_eq!(audit, [("rewind".to_owned(), session.to_string())]);
}
