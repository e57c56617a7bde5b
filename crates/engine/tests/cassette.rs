//! Cassettes: recording real HTTP traffic, replaying it offline, and the ways a replay diverges.
//!
//! Recording runs the real OpenAI model against the OpenAI double from `soul-testkit`, so the
//! whole file needs the `openai` feature.
#![cfg(feature = "openai")]

use std::fs;
use std::path::Path;
use std::time::Duration;

use soul_engine::Role;
use soul_engine::model::ResponseSchema;
use soul_engine::model::cassette::{
    CASSETTE_VERSION, Cassette, CassetteErrorKind, RecordingModel, ReplayingModel,
};
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::model::{
    ChatMessage, ChatOptions, ChatRequest, Completion, LanguageModel, ModelError, Usage,
};
use soul_engine::retry::RetryPolicy;
use soul_testkit::openai::{OpenAiDouble, Reply};
use tempfile::TempDir;

/// Recognisable, so its absence from a cassette is meaningful.
const FAKE_KEY: &str = "sk-cassette-test-FAKE-KEY-8f3a1c9d";

/// The real OpenAI model talking to `double`. No retries: a scripted error status is the call's
/// outcome.
fn openai(double: &OpenAiDouble) -> OpenAiModel {
    let config = OpenAiConfig::new(double.base_url(), FAKE_KEY, "double-default-model")
        .with_retry(RetryPolicy::no_retries());
    OpenAiModel::new(config).expect("the double's URL is valid")
}

/// A recorder around [`openai`], writing to `path`.
fn recording(double: &OpenAiDouble, path: &Path) -> RecordingModel<OpenAiModel> {
    RecordingModel::new(openai(double), path).expect("the cassette can be created")
}

fn request(messages: &[(Role, &str)]) -> ChatRequest {
    ChatRequest {
        messages: messages
            .iter()
            .map(|(role, text)| ChatMessage::new(*role, *text))
            .collect(),
        options: ChatOptions {
            temperature: Some(0.7),
            max_tokens: Some(200),
            ..ChatOptions::default()
        },
    }
}

/// Three requests of a growing conversation, as a soul would send them.
fn conversation() -> Vec<ChatRequest> {
    let system = (Role::System, "You are Samantha, a kind listener.");
    vec![
        request(&[system, (Role::User, "I had a rough day at work.")]),
        request(&[
            system,
            (Role::User, "I had a rough day at work."),
            (Role::Assistant, "I'm sorry. What happened?"),
            (Role::User, "My manager yelled at me in front of everyone."),
        ]),
        request(&[
            system,
            (Role::User, "I had a rough day at work."),
            (Role::Assistant, "I'm sorry. What happened?"),
            (Role::User, "My manager yelled at me in front of everyone."),
            (Role::Assistant, "That sounds humiliating."),
            (Role::User, "It was. Thanks for listening."),
        ]),
    ]
}

/// Records `requests` over HTTP, the double answering `answers` in order (7 prompt and 3
/// completion tokens each), and returns the cassette path.
async fn record(dir: &TempDir, requests: &[ChatRequest], answers: &[&str]) -> std::path::PathBuf {
    let path = dir.path().join("recorded.json");
    let double = OpenAiDouble::start().await;
    for answer in answers {
        double.push(Reply::ContentWithUsage((*answer).to_owned(), 7, 3));
    }
    let model = recording(&double, &path);
    for request in requests {
        model.complete(request).await.expect("the double answers");
    }
    assert_eq!(double.remaining(), 0, "every scripted answer was asked for");
    path
}

fn not_recorded(result: Result<Completion, ModelError>) -> String {
    match result {
        Err(ModelError::NotRecorded { diff }) => diff,
        other => panic!("expected NotRecorded, got {other:?}"),
    }
}

fn write(dir: &TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("hand-written.json");
    fs::write(&path, text).expect("the temporary directory is writable");
    path
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("the temporary directory is readable")
        .map(|entry| {
            entry
                .expect("the temporary directory is readable")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_changed_message_is_not_recorded_and_the_diff_names_the_changed_line() {
    let dir = TempDir::new().unwrap();
    let requests = conversation();
    let path = record(&dir, &requests, &["one", "two", "three"]).await;

    let mut changed = requests[2].clone();
    changed.messages[3].content = "My manager praised me in front of everyone.".to_owned();
    let replay = ReplayingModel::open(&path).unwrap();
    let diff = not_recorded(replay.complete(&changed).await);

    assert!(diff.contains("interaction 3 of 3"), "{diff}");
    let removed: Vec<&str> = diff
        .lines()
        .filter(|l| l.starts_with('-') && !l.starts_with("---"))
        .collect();
    let added: Vec<&str> = diff
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .collect();
    assert_eq!(
        removed,
        ["-      \"content\": \"My manager yelled at me in front of everyone.\""],
        "{diff}"
    );
    assert_eq!(
        added,
        ["+      \"content\": \"My manager praised me in front of everyone.\""],
        "{diff}"
    );
    // The error's message carries the diff, so a failing test shows it as is.
    let message = ModelError::NotRecorded { diff: diff.clone() }.to_string();
    assert!(message.contains(&diff));
    assert_eq!(
        replay.unused(),
        3,
        "a request that was not answered consumes nothing"
    );
}

#[tokio::test]
async fn a_changed_option_is_not_recorded_and_shows_in_the_diff() {
    let dir = TempDir::new().unwrap();
    let requests = conversation();
    let path = record(&dir, &requests[..1], &["one"]).await;

    let mut changed = requests[0].clone();
    changed.options.temperature = Some(0.2);
    let diff = not_recorded(
        ReplayingModel::open(&path)
            .unwrap()
            .complete(&changed)
            .await,
    );
    assert!(diff.contains("-  \"temperature\": 0.7,\n"), "{diff}");
    assert!(diff.contains("+  \"temperature\": 0.2,\n"), "{diff}");
}

#[tokio::test]
async fn the_timeout_is_not_part_of_matching() {
    let dir = TempDir::new().unwrap();
    let requests = conversation();
    let path = record(&dir, &requests[..1], &["one"]).await;

    let mut with_timeout = requests[0].clone();
    with_timeout.options.timeout = Some(Duration::from_secs(3));
    let replay = ReplayingModel::open(&path).unwrap();
    assert_eq!(replay.complete(&with_timeout).await.unwrap().content, "one");
}

#[tokio::test]
async fn identical_requests_get_their_answers_in_recorded_order_then_fail() {
    let dir = TempDir::new().unwrap();
    let requests = conversation();
    let same = requests[0].clone();
    let path = record(
        &dir,
        &[same.clone(), requests[1].clone(), same.clone()],
        &["first", "other", "second"],
    )
    .await;

    let replay = ReplayingModel::open(&path).unwrap();
    assert_eq!(replay.complete(&same).await.unwrap().content, "first");
    assert_eq!(replay.complete(&same).await.unwrap().content, "second");
    let explanation = not_recorded(replay.complete(&same).await);
    assert!(explanation.contains("recorded 2 time(s)"), "{explanation}");
    assert!(
        explanation.contains("every recorded answer has been used"),
        "{explanation}"
    );
    assert_eq!(replay.unused(), 1);
}

#[tokio::test]
async fn different_requests_replay_in_any_order() {
    let dir = TempDir::new().unwrap();
    let requests = conversation();
    let path = record(&dir, &requests, &["one", "two", "three"]).await;

    let replay = ReplayingModel::open(&path).unwrap();
    assert_eq!(
        replay.complete(&requests[2]).await.unwrap().content,
        "three"
    );
    assert_eq!(replay.complete(&requests[0]).await.unwrap().content, "one");
    assert_eq!(replay.complete(&requests[1]).await.unwrap().content, "two");
    assert_eq!(replay.unused(), 0);
    replay.finish().unwrap();
}

#[tokio::test]
async fn finish_names_the_interactions_a_replay_never_asked_for() {
    let dir = TempDir::new().unwrap();
    let requests = conversation();
    let path = record(&dir, &requests, &["one", "two", "three"]).await;

    let replay = ReplayingModel::open(&path).unwrap();
    replay.complete(&requests[1]).await.unwrap();
    assert_eq!(replay.unused(), 2);
    let error = replay.finish().unwrap_err();
    assert_eq!(error.path, path);
    assert!(
        matches!(&error.kind, CassetteErrorKind::Unused { unused, total: 3 } if *unused == [0, 2]),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("2 of 3 recorded interactions were never asked for (numbers 1, 3"),
        "{error}"
    );
}

#[tokio::test]
async fn an_empty_cassette_answers_nothing_and_shows_the_request() {
    let dir = TempDir::new().unwrap();
    let path = record(&dir, &[], &[]).await;
    let replay = ReplayingModel::open(&path).unwrap();
    let diff = not_recorded(replay.complete(&conversation()[0]).await);
    assert!(diff.contains("the cassette has no interactions"), "{diff}");
    assert!(
        diff.contains("+      \"content\": \"I had a rough day at work.\""),
        "{diff}"
    );
    replay.finish().unwrap();
}

#[tokio::test]
async fn failed_calls_are_not_recorded() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("failures.json");
    let requests = conversation();
    let double = OpenAiDouble::start().await;
    double
        .push(Reply::status(503))
        .push_content("one")
        .push(Reply::status(400));
    let model = recording(&double, &path);

    let unavailable = model.complete(&requests[0]).await;
    // A retryable status, so the retry policy reports it after its one attempt.
    assert!(
        matches!(
            &unavailable,
            Err(ModelError::RetriesExhausted { attempts: 1, last })
                if matches!(**last, ModelError::Http { status: 503, .. })
        ),
        "{unavailable:?}"
    );
    assert_eq!(model.complete(&requests[0]).await.unwrap().content, "one");
    let refused = model.complete(&requests[1]).await;
    assert!(
        matches!(refused, Err(ModelError::Http { status: 400, .. })),
        "{refused:?}"
    );

    // All three reached the server; only the one that succeeded is kept.
    assert_eq!(double.requests().await.len(), 3);
    assert_eq!(model.recorded(), 1);
    let cassette = Cassette::load(&path).unwrap();
    assert_eq!(cassette.interactions.len(), 1);
    assert_eq!(cassette.interactions[0].request, requests[0]);
}

#[tokio::test]
async fn the_file_is_a_complete_cassette_after_every_interaction() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("growing.json");
    let requests = conversation();
    let double = OpenAiDouble::start().await;
    double
        .push_content("one")
        .push_content("two")
        .push_content("three");
    let model = recording(&double, &path);
    assert_eq!(
        Cassette::load(&path).unwrap().interactions.len(),
        0,
        "written at once, empty"
    );

    for (done, request) in requests.iter().enumerate() {
        let completion = model.complete(request).await.unwrap();
        // What a crash right now would leave behind: every answer so far, nothing partial.
        let on_disk = Cassette::load(&path).unwrap();
        assert_eq!(on_disk.interactions.len(), done + 1);
        assert_eq!(on_disk.interactions[done].request, *request);
        assert_eq!(on_disk.interactions[done].response, completion);
        assert_eq!(
            entries(dir.path()),
            ["growing.json"],
            "no temporary file is left behind"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Cassettes hold conversations: other users of the machine may not read them.
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }
}

#[tokio::test]
async fn the_file_is_pretty_versioned_json_in_the_documented_shape() {
    let dir = TempDir::new().unwrap();
    let mut asked = conversation()[0].clone();
    asked.options.model = Some("fast".to_owned());
    asked.options.response_schema = Some(ResponseSchema {
        name: "mood".to_owned(),
        schema: serde_json::json!({ "type": "object" }),
        strict: true,
    });
    let path = record(&dir, &[asked.clone()], &["{\"mood\":\"low\"}"]).await;

    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("{\n  \"version\": 1,\n  \"interactions\": [\n"),
        "{text}"
    );
    assert!(text.ends_with("}\n"), "{text}");
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["version"], CASSETTE_VERSION);
    let interaction = &value["interactions"][0];
    // Through text, as the file was written: `to_value` would widen the f32 temperature to
    // 0.699999988079071.
    let asked_json: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&asked).unwrap()).unwrap();
    assert_eq!(interaction["request"], asked_json);
    assert!(text.contains("\"temperature\": 0.7,"), "{text}");
    assert_eq!(interaction["request"]["messages"][1]["role"], "user");
    assert_eq!(interaction["request"]["model"], "fast");
    assert_eq!(interaction["request"]["response_schema"]["name"], "mood");
    assert!(interaction["request"].get("timeout").is_none());
    assert_eq!(interaction["response"]["content"], "{\"mood\":\"low\"}");
    assert_eq!(interaction["response"]["usage"]["prompt_tokens"], 7);
    assert_eq!(interaction["response"]["model"], "double-model");

    let replayed = ReplayingModel::open(&path)
        .unwrap()
        .complete(&asked)
        .await
        .unwrap();
    assert_eq!(replayed.content, "{\"mood\":\"low\"}");
}

#[tokio::test]
async fn a_hand_written_cassette_in_the_documented_format_replays() {
    let dir = TempDir::new().unwrap();
    let path = write(
        &dir,
        r#"{
  "version": 1,
  "interactions": [
    {
      "request": {
        "messages": [
          { "role": "system", "content": "You are Samantha." },
          { "role": "user", "content": "hi", "name": "ann" }
        ],
        "model": "fast",
        "temperature": 0.7,
        "max_tokens": 200
      },
      "response": {
        "content": "Hello!",
        "usage": { "prompt_tokens": 12, "completion_tokens": 3 },
        "model": "gpt-4o-mini-2024-07-18"
      }
    }
  ]
}"#,
    );
    let mut asked = request(&[(Role::System, "You are Samantha."), (Role::User, "hi")]);
    asked.messages[1].name = Some("ann".to_owned());
    asked.options.model = Some("fast".to_owned());
    let answer = ReplayingModel::open(&path)
        .unwrap()
        .complete(&asked)
        .await
        .unwrap();
    assert_eq!(
        answer,
        Completion {
            content: "Hello!".to_owned(),
            usage: Usage {
                prompt_tokens: 12,
                completion_tokens: 3
            },
            model: "gpt-4o-mini-2024-07-18".to_owned(),
            tool_calls: Vec::new(),
        }
    );
}

#[test]
fn a_missing_file_is_not_found() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("never-recorded.json");
    let error = ReplayingModel::open(&path).unwrap_err();
    assert!(
        matches!(error.kind, CassetteErrorKind::NotFound),
        "{error:?}"
    );
    assert_eq!(error.path, path);
    let as_model_error = ModelError::from(error);
    assert!(
        matches!(&as_model_error, ModelError::Cassette { path: p, reason } if p.ends_with("never-recorded.json") && reason.contains("no such file")),
        "{as_model_error:?}"
    );
}

#[test]
fn another_version_is_refused_with_the_version_found() {
    let dir = TempDir::new().unwrap();
    // A future format may change anything else, so the version is checked before the shape.
    let path = write(&dir, r#"{ "version": 2, "tapes": [] }"#);
    let error = ReplayingModel::open(&path).unwrap_err();
    assert!(
        matches!(
            error.kind,
            CassetteErrorKind::UnsupportedVersion { found: 2 }
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("version 2 is not supported"),
        "{error}"
    );
}

#[test]
fn malformed_files_are_refused_with_a_position_and_no_contents() {
    let dir = TempDir::new().unwrap();
    let cases = [
        (r#"{ "version": 1, "interactions": [ "#, "ends too early"),
        ("not json at all", "not valid JSON"),
        (r#"{ "interactions": [] }"#, "no `version` field"),
        (
            r#"{ "version": "one", "interactions": [] }"#,
            "not a non-negative integer",
        ),
        (
            r#"{ "version": 1, "interactions": [ { "request": { "messages": [ { "role": "user", "content": 42 } ] }, "response": { "content": "my secret diagnosis", "usage": { "prompt_tokens": 1, "completion_tokens": 1 }, "model": "m" } } ] }"#,
            "missing or has the wrong type",
        ),
        (
            r#"{ "version": 1, "interactions": [ { "request": { "messages": [] }, "response": { "content": 17, "model": "my secret diagnosis" } } ] }"#,
            "missing or has the wrong type",
        ),
    ];
    for (text, problem) in cases {
        let path = write(&dir, text);
        let error = ReplayingModel::open(&path).unwrap_err();
        assert!(
            matches!(error.kind, CassetteErrorKind::Malformed { .. }),
            "{text}: {error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(problem), "{text}: {message}");
        assert!(message.contains("line 1, column"), "{text}: {message}");
        assert!(!message.contains("secret"), "{text}: {message}");
    }
}

#[tokio::test]
async fn recording_to_an_unwritable_path_fails_before_any_model_call() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("no-such-directory").join("cassette.json");
    let double = OpenAiDouble::start().await;
    let error = RecordingModel::new(openai(&double), &path).unwrap_err();
    assert!(matches!(error.kind, CassetteErrorKind::Io(_)), "{error:?}");
    assert_eq!(error.path, path);
    assert!(
        double.requests().await.is_empty(),
        "the server was never asked"
    );
}

#[tokio::test]
async fn a_failed_write_is_an_error_and_the_interaction_is_not_kept() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("blocked.json");
    let requests = conversation();
    let double = OpenAiDouble::start().await;
    double.push_content("lost").push_content("kept");
    let model = recording(&double, &path);

    // A directory where the cassette should go: the rename over it fails.
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    let error = model.complete(&requests[0]).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::Cassette { path: p, .. } if p.ends_with("blocked.json")),
        "{error:?}"
    );
    assert_eq!(
        double.requests().await.len(),
        1,
        "the server did answer; only the write failed"
    );
    assert_eq!(model.recorded(), 0);
    assert_eq!(
        entries(dir.path()),
        ["blocked.json"],
        "no temporary file is left behind"
    );

    fs::remove_dir(&path).unwrap();
    assert_eq!(model.complete(&requests[1]).await.unwrap().content, "kept");
    let cassette = Cassette::load(&path).unwrap();
    assert_eq!(cassette.interactions.len(), 1);
    assert_eq!(cassette.interactions[0].request, requests[1]);
}

#[tokio::test]
async fn debug_output_shows_counts_and_paths_but_no_contents() {
    let dir = TempDir::new().unwrap();
    let requests = conversation();
    let path = dir.path().join("debug.json");
    let double = OpenAiDouble::start().await;
    double.push_content("you are not alone");
    let recording = recording(&double, &path);
    recording.complete(&requests[0]).await.unwrap();
    let replay = ReplayingModel::open(&path).unwrap();
    let cassette = Cassette::load(&path).unwrap();

    for printed in [
        format!("{recording:?}"),
        format!("{replay:?}"),
        format!("{cassette:?}"),
        format!("{:?}", cassette.interactions[0]),
        format!("{:#?}", cassette.interactions),
    ] {
        assert!(!printed.contains("rough day"), "{printed}");
        assert!(!printed.contains("Samantha"), "{printed}");
        assert!(!printed.contains("not alone"), "{printed}");
    }
    assert!(format!("{replay:?}").contains("debug.json"));
    assert!(format!("{replay:?}").contains("interactions: 1"));
}

// Recording real HTTP traffic end to end, and what of it reaches the file.

#[tokio::test]
async fn a_conversation_recorded_over_http_replays_identically_with_no_server() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("conversation.json");
    let requests = conversation();

    let double = OpenAiDouble::start().await;
    double
        .push(Reply::ContentWithUsage(
            "I'm sorry. What happened?".into(),
            31,
            7,
        ))
        .push(Reply::ContentWithUsage(
            "That sounds humiliating.".into(),
            52,
            5,
        ))
        .push(Reply::ContentWithUsage("Any time. I'm here.".into(), 70, 6));
    let model = recording(&double, &path);
    let mut recorded = Vec::new();
    for request in &requests {
        recorded.push(model.complete(request).await.unwrap());
    }
    assert_eq!(double.requests().await.len(), 3);
    assert_eq!(double.remaining(), 0);
    assert_eq!(model.recorded(), 3);
    drop(model);
    // No server from here on: a replay that touched the network would fail.
    drop(double);

    let replay = ReplayingModel::open(&path).unwrap();
    for (request, expected) in requests.iter().zip(&recorded) {
        assert_eq!(replay.complete(request).await.unwrap(), *expected);
    }
    assert_eq!(recorded[1].content, "That sounds humiliating.");
    assert_eq!(
        recorded[1].usage,
        Usage {
            prompt_tokens: 52,
            completion_tokens: 5
        }
    );
    assert_eq!(recorded[1].model, "double-model");
    replay.finish().unwrap();
    assert!(matches!(
        replay.complete(&requests[0]).await,
        Err(ModelError::NotRecorded { .. })
    ));
}

#[tokio::test]
async fn the_api_key_never_reaches_the_cassette() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("secret.json");
    let double = OpenAiDouble::start().await;
    double.push_content("one").push_content("two");
    let model = recording(&double, &path);
    for request in &conversation()[..2] {
        model.complete(request).await.unwrap();
    }

    // The key did travel, so its absence from the file below means something.
    let headers = double.request_headers().await;
    let authorization = headers[0]
        .iter()
        .find(|(name, _)| name == "authorization")
        .unwrap();
    assert_eq!(authorization.1, format!("Bearer {FAKE_KEY}"));

    let bytes = fs::read(&path).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.contains("\"content\": \"two\""),
        "the file holds the recording: {text}"
    );
    assert!(!text.contains(FAKE_KEY), "{text}");
    assert!(!text.contains("8f3a1c9d"), "{text}");
    assert!(!text.to_lowercase().contains("bearer"), "{text}");
    assert!(!text.to_lowercase().contains("authorization"), "{text}");
    assert!(!format!("{model:?}").contains("8f3a1c9d"), "{model:?}");
}

/// Pieces a sink heard.
#[derive(Default)]
struct Heard(std::sync::Mutex<Vec<String>>);

impl soul_engine::model::AnswerSink for Heard {
    fn text(&self, delta: &str) {
        self.0.lock().expect("not poisoned").push(delta.to_owned());
    }

    fn reset(&self) {
        self.0.lock().expect("not poisoned").clear();
    }
}

#[tokio::test]
async fn a_streamed_answer_is_recorded_whole_and_replayed_whole() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("streamed.json");
    let double = OpenAiDouble::start().await;
    double.push(Reply::pieces(["It sounds ", "exhausting."]));
    let asked = request(&[(Role::User, "I had a rough day at work.")]);

    let heard = Heard::default();
    let recorder = recording(&double, &path);
    let recorded = recorder.complete_streaming(&asked, &heard).await.unwrap();
    assert_eq!(*heard.0.lock().unwrap(), ["It sounds ", "exhausting."]);
    assert_eq!(recorded.content, "It sounds exhausting.");

    // The replay answers whole: a sink hears nothing, the answer is the one recorded.
    let replay = ReplayingModel::open(&path).unwrap();
    let silent = Heard::default();
    let replayed = replay.complete_streaming(&asked, &silent).await.unwrap();
    assert_eq!(replayed, recorded);
    assert!(silent.0.lock().unwrap().is_empty());
}
