//! The inspector as the binary runs it: `dev`, the author's loop, with a browser chat in a real
//! headless Chromium whose messages run turns (the model behind the OpenAI double, a real
//! SQLite store) and whose replies show, the turns then inspected step by step, re-run and
//! rewound; and `serve`, where the inspector is off unless `INSPECTOR_TOKEN` is set.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Instant;

use soul_testkit::browser::Browser;
use soul_testkit::openai::{Gate, OpenAiDouble, Reply};

use crate::common::{Gateway, PATIENCE, Settings, command, free_port, twilio};

/// A `dev` process, killed on drop.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something answers HTTP at `url`.
async fn answering(url: &str) {
    let deadline = Instant::now() + PATIENCE;
    while reqwest::get(url).await.is_err() {
        assert!(Instant::now() < deadline, "nothing answers at {url}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn dev_env(dir: &Path, model: &OpenAiDouble, port: u16) -> BTreeMap<String, String> {
    [
        (
            "DATABASE_URL",
            format!("sqlite://{}/soul.db", dir.display()),
        ),
        ("OPENAI_BASE_URL", model.base_url()),
        ("OPENAI_API_KEY", "test-key".to_owned()),
        ("SOUL", "pip".to_owned()),
        ("INSPECTOR_BIND", format!("127.0.0.1:{port}")),
        ("RUST_LOG", "info".to_owned()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dev_a_message_typed_in_the_browser_is_answered_and_its_turn_inspected() {
    let dir = tempfile::tempdir().unwrap();
    let model = OpenAiDouble::start().await;
    model.push_content("Pip said: \"Cells, then. Go.\"");
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
    let _dev = Dev(command(&dev_env(dir.path(), &model, port))
        .arg("dev")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap());
    let url = format!("http://127.0.0.1:{port}");
    answering(&format!("{url}/login")).await;

    // No login in dev: the chat opens at once, and there is no login to end.
    let browser = Browser::start().await;
    browser.goto(&format!("{url}/chat")).await;
    assert!(!browser.source().await.contains(r#"id="logout""#));
    let input = browser.find("#text").await;
    browser.type_into(&input, "hello").await;
    browser.click(&browser.find("#chat button").await).await;
    let reply = browser.find("#messages li.assistant").await;
    assert_eq!(browser.text(&reply).await, "Cells, then. Go.");
    let said = browser.text(&browser.find("#messages li.user").await).await;
    assert_eq!(said, "hello");
    let screenshots = std::env::var_os("INSPECTOR_SCREENSHOTS");
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"));
    if let Some(dir) = &screenshots {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(Path::new(dir).join("chat.png"), &png).unwrap();
    }

    // A second message and its turn.
    model.push_content("Pip said: \"Now the mitochondria.\"");
    browser
        .type_into(&browser.find("#text").await, "what next")
        .await;
    browser.click(&browser.find("#chat button").await).await;
    let second = browser.find("#messages li.assistant:nth-child(4)").await;
    assert_eq!(browser.text(&second).await, "Now the mitochondria.");

    // The turns, beside the chat in the inspector: the first unfolds to its step, whose
    // answer is the model's.
    browser.click_to_load(&browser.find("#inspect").await).await;
    assert_eq!(browser.find_all("details.turn").await.len(), 2);
    let meta = browser.text(&browser.find(".meta").await).await;
    assert!(meta.contains("soul pip"), "{meta}");
    browser.click(&browser.find("#turn-1 summary").await).await;
    let turn = browser.text(&browser.find("#turn-1").await).await;
    assert!(
        turn.contains("hello") && turn.contains("Cells, then. Go.") && turn.contains("delivered"),
        "{turn}"
    );
    let answer = browser
        .text(&browser.find("#turn-1-steps-1 pre.answer").await)
        .await;
    assert!(answer.contains("Cells, then. Go."), "{answer}");
    let process = browser.text(&browser.find("#process").await).await;
    assert!(process.contains("study"), "{process}");
    // Its reply was shown, so it is marked delivered: no `serve` sends it again.
    let replies = browser.text(&browser.find("#replies").await).await;
    assert!(replies.contains("delivered"), "{replies}");

    // Re-run with the model answering otherwise: the difference shows, nothing is stored.
    model.push_content("Pip said: \"Ribosomes first.\"");
    browser.click_to_load(&browser.find("#rerun-1").await).await;
    let verdict = browser.text(&browser.find("#rerun-verdict").await).await;
    assert!(verdict.contains("differs"), "{verdict}");
    let rerun = browser.text(&browser.find("#rerun").await).await;
    assert!(
        rerun.contains("Cells, then. Go.") && rerun.contains("Ribosomes first."),
        "{rerun}"
    );
    if let Some(dir) = &screenshots {
        std::fs::write(Path::new(dir).join("rerun.png"), browser.screenshot().await).unwrap();
    }
    assert_eq!(browser.find_all("details.turn").await.len(), 2);
    assert!(!browser.source().await.contains("Ribosomes first.</li>"));

    // Rewind to after turn 1: turn 2 is marked rewound, and the working memory forgets it.
    let memory = "return document.querySelector('#working-memory').textContent";
    let before = browser.execute(memory, vec![]).await;
    assert!(before.as_str().unwrap().contains("what next"), "{before}");
    browser.click(&browser.find("#turn-1 summary").await).await;
    browser
        .click(&browser.find("#confirm-rewind-1").await)
        .await;
    browser
        .click_to_load(&browser.find("#rewind-1").await)
        .await;
    browser.find("#notice").await;
    assert_eq!(browser.find_all("details.turn.rewound").await.len(), 1);
    browser.find("#turn-2.rewound").await;
    let after = browser.execute(memory, vec![]).await;
    let after = after.as_str().unwrap();
    assert!(
        after.contains("hello") && !after.contains("what next"),
        "{after}"
    );
    // Two turns and the re-run asked the model.
    assert_eq!(model.requests().await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dev_the_reply_shows_as_the_model_streams_it_and_then_as_committed() {
    let dir = tempfile::tempdir().unwrap();
    let model = OpenAiDouble::start().await;
    // The reply in two pieces, the second held until the test opens the gate.
    let gate = Gate::new();
    model.push(Reply::held(["Pip said: \"Cells, then. ", "Go.\""], &gate));
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
    let _dev = Dev(command(&dev_env(dir.path(), &model, port))
        .arg("dev")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap());
    let url = format!("http://127.0.0.1:{port}");
    answering(&format!("{url}/login")).await;
    let browser = Browser::start().await;
    browser.goto(&format!("{url}/chat")).await;
    browser
        .type_into(&browser.find("#text").await, "hello")
        .await;
    browser.click(&browser.find("#chat button").await).await;

    // The first piece shows while the model holds the second: the words, without the speaker
    // and the opening quote, and nothing committed yet.
    let writing = browser.find("#messages li.writing").await;
    assert_eq!(browser.text(&writing).await, "Cells, then.");
    let count = |css: &str| format!("return document.querySelectorAll('{css}').length");
    assert_eq!(
        browser
            .execute(&count("#messages li.assistant"), vec![])
            .await,
        0
    );

    // Released: the committed reply replaces the provisional text.
    gate.open();
    let reply = browser.find("#messages li.assistant").await;
    assert_eq!(browser.text(&reply).await, "Cells, then. Go.");
    assert_eq!(
        browser
            .execute(&count("#messages li.writing"), vec![])
            .await,
        0
    );
    let requests = model.requests().await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["stream"], true);
    assert_eq!(requests[0]["stream_options"]["include_usage"], true);

    // The turn, in the inspector: the step's answer is the whole streamed answer.
    browser.click_to_load(&browser.find("#inspect").await).await;
    browser.click(&browser.find("#turn-1 summary").await).await;
    let turn = browser.text(&browser.find("#turn-1").await).await;
    assert!(
        turn.contains("hello") && turn.contains("Cells, then. Go.") && turn.contains("delivered"),
        "{turn}"
    );
    let answer = browser
        .text(&browser.find("#turn-1-steps-1 pre.answer").await)
        .await;
    assert!(
        answer.contains("Pip said: \"Cells, then. Go.\""),
        "{answer}"
    );
    // No message text in the log at info.
    let logged = std::fs::read_to_string(dir.path().join("dev.log")).unwrap();
    assert!(!logged.contains("Cells"), "{logged}");
}

/// Waits (in the page, as the DOM changes: no polling) until the replies being written are
/// exactly `texts`, and returns them.
async fn until_writing(browser: &Browser, texts: &[&str]) -> Vec<String> {
    let script = r#"
        const want = JSON.stringify(arguments[0]);
        const list = document.getElementById("messages");
        const now = () => [...list.querySelectorAll("li.writing")].map((li) => li.textContent);
        return new Promise((resolve) => {
          if (JSON.stringify(now()) === want) return resolve(now());
          new MutationObserver((_, observer) => {
            if (JSON.stringify(now()) === want) {
              observer.disconnect();
              resolve(now());
            }
          }).observe(list, { childList: true, subtree: true, characterData: true });
        });
    "#;
    let seen = browser
        .execute(script, vec![serde_json::json!(texts)])
        .await;
    serde_json::from_value(seen).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dev_a_streamed_attempt_that_breaks_off_leaves_the_page_before_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let model = OpenAiDouble::start().await;
    // The first attempt breaks off mid-way when the test says; the second is held before its
    // only piece.
    let (cut, gate) = (Gate::new(), Gate::new());
    model
        .push(Reply::cut_when_opened(["Pip said: \"Half a tho"], &cut))
        .push(Reply::held(["Pip said: \"Cells, then. Go.\""], &gate));
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
    let _dev = Dev(command(&dev_env(dir.path(), &model, port))
        .arg("dev")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap());
    let url = format!("http://127.0.0.1:{port}");
    answering(&format!("{url}/login")).await;
    let browser = Browser::start().await;
    browser.goto(&format!("{url}/chat")).await;
    browser
        .type_into(&browser.find("#text").await, "hello")
        .await;
    browser.click(&browser.find("#chat button").await).await;

    // The broken attempt's words show, then go: the page never holds two half answers.
    assert_eq!(
        until_writing(&browser, &["Half a tho"]).await,
        ["Half a tho"]
    );
    cut.open();
    assert!(until_writing(&browser, &[]).await.is_empty());
    gate.open();
    let reply = browser.find("#messages li.assistant").await;
    assert_eq!(browser.text(&reply).await, "Cells, then. Go.");
    assert!(!browser.source().await.contains("Half a tho"));
    assert_eq!(model.requests().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_refuses_to_serve_without_login_beyond_the_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let model = OpenAiDouble::start().await;
    let mut env = dev_env(dir.path(), &model, free_port());
    env.insert("INSPECTOR_BIND".into(), "0.0.0.0:0".into());
    let output = command(&env).arg("dev").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_the_inspector_only_when_its_token_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let twilio = twilio().await;
    let model = OpenAiDouble::start().await;
    let database = format!("sqlite://{}/soul.db", dir.path().display());
    let port = free_port();
    let settings = Settings::new(dir.path(), &database, &twilio, &model.base_url())
        .set("INSPECTOR_BIND", &format!("127.0.0.1:{port}"));
    let inspector = format!("http://127.0.0.1:{port}/login");

    // Not configured: nothing listens there, and the gateway's own port has no inspector.
    let gateway = Gateway::start(&settings).await;
    assert!(reqwest::get(&inspector).await.is_err());
    let (status, _) = gateway.get("/login").await;
    assert_eq!(status, 404);
    drop(gateway);

    let _gateway = Gateway::start(&settings.set("INSPECTOR_TOKEN", "operator-secret")).await;
    answering(&inspector).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = http
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 303);
    let login = http
        .post(&inspector)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=operator-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    // On the loopback the cookie is not `Secure` (INSPECTOR_SECURE_COOKIE unset).
    assert!(!cookie.contains("Secure"), "{cookie}");
    let api = http
        .get(format!("http://127.0.0.1:{port}/api/conversations"))
        .bearer_auth("operator-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 200);
}

/// The inspector's listener is bounded as the gateway's is: a client whose request headers never
/// end is cut once `HEADER_READ_TIMEOUT` has passed (`axum::serve`, which served it before, has
/// no header timeout: such clients could hold it for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_cuts_a_client_whose_headers_never_end() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let twilio = twilio().await;
    let model = OpenAiDouble::start().await;
    let database = format!("sqlite://{}/soul.db", dir.path().display());
    let port = free_port();
    let settings = Settings::new(dir.path(), &database, &twilio, &model.base_url())
        .set("INSPECTOR_BIND", &format!("127.0.0.1:{port}"))
        .set("INSPECTOR_TOKEN", "operator-secret")
        .set("HEADER_READ_TIMEOUT", "1s");
    let _gateway = Gateway::start(&settings).await;
    answering(&format!("http://127.0.0.1:{port}/login")).await;

    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    slow.write_all(b"GET /login HTTP/1.1\r\nHost: inspector\r\n")
        .await
        .unwrap();
    let mut buffer = [0; 256];
    let read = tokio::time::timeout(PATIENCE, slow.read(&mut buffer))
        .await
        .expect("the inspector kept a client without headers");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}
