//! `OpenAiModel` against the OpenAI double over real HTTP: request mapping, answers, retries,
//! time-outs and typed errors.
#![cfg(feature = "openai")]

use std::time::Duration;

use serde_json::json;
use soul_engine::Role;
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::model::{
    ChatMessage, ChatOptions, ChatRequest, LanguageModel, ModelError, ResponseSchema, Usage,
};
use soul_engine::retry::RetryPolicy;
use soul_testkit::openai::{OpenAiDouble, Reply};

const KEY: &str = "sk-test-do-not-leak-0123456789";

/// Retries that wait a millisecond, so retry tests take no time.
fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(max_attempts)
        .with_base_delay(Duration::from_millis(1))
        .with_max_delay(Duration::from_millis(1))
        .with_max_retry_after(Duration::from_millis(1))
}

fn config(double: &OpenAiDouble, max_attempts: u32) -> OpenAiConfig {
    OpenAiConfig::new(double.base_url(), KEY, "default-model")
        .with_alias("fast", "gpt-4o-mini")
        .with_alias("quality", "gpt-4o")
        .with_request_timeout(Duration::from_secs(10))
        .with_retry(quick_retries(max_attempts))
}

fn model(double: &OpenAiDouble, max_attempts: u32) -> OpenAiModel {
    OpenAiModel::new(config(double, max_attempts)).expect("the double's URL is a valid base URL")
}

fn hello() -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::new(Role::User, "hello, I feel low today")],
        options: ChatOptions::default(),
    }
}

/// Asserts that an error's text and debug form carry neither the API key nor what was said.
fn assert_private(error: &ModelError) {
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains(KEY), "the API key leaked: {text}");
        assert!(!text.contains("feel low"), "message content leaked: {text}");
    }
}

#[tokio::test]
async fn a_completion_maps_request_and_answer() {
    let double = OpenAiDouble::start().await;
    double.push(Reply::ContentWithUsage(r#"{"mood":"calm"}"#.into(), 12, 3));
    let schema = json!({
        "type": "object",
        "properties": { "mood": { "type": "string" } },
        "required": ["mood"],
        "additionalProperties": false
    });
    let request = ChatRequest {
        messages: vec![
            ChatMessage::new(Role::System, "You are kind."),
            ChatMessage {
                name: Some("ana".into()),
                ..ChatMessage::new(Role::User, "hi")
            },
            ChatMessage::new(Role::Assistant, "hello"),
        ],
        options: ChatOptions {
            model: Some("fast".into()),
            temperature: Some(0.5),
            max_tokens: Some(64),
            response_schema: Some(ResponseSchema {
                name: "mood".into(),
                schema: schema.clone(),
                strict: true,
            }),
            ..ChatOptions::default()
        },
    };

    let completion = model(&double, 4).complete(&request).await.unwrap();

    assert_eq!(completion.content, r#"{"mood":"calm"}"#);
    assert_eq!(
        completion.usage,
        Usage {
            prompt_tokens: 12,
            completion_tokens: 3
        }
    );
    assert_eq!(completion.model, "double-model");

    let bodies = double.requests().await;
    assert_eq!(bodies.len(), 1);
    let body = &bodies[0];
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(
        body["messages"],
        json!([
            { "role": "system", "content": "You are kind." },
            { "role": "user", "content": "hi", "name": "ana" },
            { "role": "assistant", "content": "hello" }
        ])
    );
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["max_completion_tokens"], 64);
    assert!(body.get("max_tokens").is_none(), "{body}");
    assert_eq!(
        body["response_format"],
        json!({
            "type": "json_schema",
            "json_schema": { "name": "mood", "schema": schema, "strict": true }
        })
    );

    let headers = double.request_headers().await;
    let authorization = headers[0]
        .iter()
        .find(|(name, _)| name == "authorization")
        .map(|(_, value)| value.as_str());
    assert_eq!(authorization, Some(format!("Bearer {KEY}").as_str()));
}

#[tokio::test]
async fn without_options_the_default_model_is_asked_and_nothing_else_is_sent() {
    let double = OpenAiDouble::start().await;
    double.push_content("hi");

    model(&double, 4).complete(&hello()).await.unwrap();

    let body = &double.requests().await[0];
    assert_eq!(body["model"], "default-model");
    for field in [
        "temperature",
        "max_completion_tokens",
        "max_tokens",
        "response_format",
    ] {
        assert!(body.get(field).is_none(), "{field} was sent: {body}");
    }
}

#[tokio::test]
async fn a_name_that_is_no_alias_is_sent_as_the_model() {
    let double = OpenAiDouble::start().await;
    double.push_content("hi");
    let mut request = hello();
    request.options.model = Some("gpt-4.1-nano".into());

    model(&double, 4).complete(&request).await.unwrap();

    assert_eq!(double.requests().await[0]["model"], "gpt-4.1-nano");
}

#[tokio::test]
async fn a_rate_limit_then_success_takes_two_requests() {
    let double = OpenAiDouble::start().await;
    double.push(Reply::status(429)).push_content("better now");

    let completion = model(&double, 4).complete(&hello()).await.unwrap();

    assert_eq!(completion.content, "better now");
    assert_eq!(double.requests().await.len(), 2);
    assert_eq!(double.remaining(), 0);
}

#[tokio::test]
async fn retry_after_zero_is_honoured() {
    let double = OpenAiDouble::start().await;
    double
        .push(Reply::Status {
            status: 429,
            retry_after: Some(0),
        })
        .push_content("ok");

    let completion = model(&double, 4).complete(&hello()).await.unwrap();

    assert_eq!(completion.content, "ok");
    assert_eq!(double.requests().await.len(), 2);
}

#[tokio::test]
async fn retry_after_reaches_the_error() {
    let double = OpenAiDouble::start().await;
    double.push(Reply::Status {
        status: 429,
        retry_after: Some(7),
    });

    let error = model(&double, 1).complete(&hello()).await.unwrap_err();

    match error {
        ModelError::RetriesExhausted { attempts: 1, last } => match *last {
            ModelError::Http {
                status: 429,
                retry_after,
                ref code,
            } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)));
                assert_eq!(code.as_deref(), Some("rate_limit_error"));
            }
            other => panic!("expected HTTP 429, got {other:?}"),
        },
        other => panic!("expected RetriesExhausted after 1 attempt, got {other:?}"),
    }
    assert_eq!(double.requests().await.len(), 1);
}

#[tokio::test]
async fn a_persistent_server_error_exhausts_the_budget() {
    let double = OpenAiDouble::start().await;
    for _ in 0..3 {
        double.push(Reply::status(500));
    }

    let error = model(&double, 3).complete(&hello()).await.unwrap_err();

    assert_private(&error);
    match error {
        ModelError::RetriesExhausted { attempts, last } => {
            assert_eq!(attempts, 3);
            assert!(
                matches!(*last, ModelError::Http { status: 500, .. }),
                "{last:?}"
            );
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    assert_eq!(double.requests().await.len(), 3);
    assert_eq!(double.remaining(), 0);
}

#[tokio::test]
async fn a_timed_out_attempt_is_retried() {
    let double = OpenAiDouble::start().await;
    double
        .push(Reply::Delayed(
            Duration::from_secs(2),
            Box::new(Reply::content("too late")),
        ))
        .push_content("in time");
    let mut request = hello();
    request.options.timeout = Some(Duration::from_millis(200));

    let completion = model(&double, 4).complete(&request).await.unwrap();

    assert_eq!(completion.content, "in time");
    assert_eq!(double.requests().await.len(), 2);
}

#[tokio::test]
async fn time_outs_to_the_end_report_the_timeout() {
    let double = OpenAiDouble::start().await;
    for _ in 0..2 {
        double.push(Reply::Delayed(
            Duration::from_secs(2),
            Box::new(Reply::content("too late")),
        ));
    }
    let model =
        OpenAiModel::new(config(&double, 2).with_request_timeout(Duration::from_millis(200)))
            .unwrap();

    let error = model.complete(&hello()).await.unwrap_err();

    match error {
        ModelError::RetriesExhausted { attempts: 2, last } => {
            assert!(
                matches!(*last, ModelError::Timeout(t) if t == Duration::from_millis(200)),
                "{last:?}"
            );
        }
        other => panic!("expected RetriesExhausted after 2 attempts, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_request_is_not_retried() {
    let double = OpenAiDouble::start().await;
    double
        .push(Reply::status(400))
        .push_content("never asked for");

    let error = model(&double, 4).complete(&hello()).await.unwrap_err();

    assert_private(&error);
    assert!(
        matches!(
            error,
            ModelError::Http {
                status: 400,
                retry_after: None,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(double.requests().await.len(), 1);
    assert_eq!(double.remaining(), 1);
}

#[tokio::test]
async fn an_unreachable_server_is_a_transport_error() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = OpenAiConfig::new(format!("http://127.0.0.1:{port}/v1"), KEY, "m")
        .with_retry(quick_retries(2));
    let model = OpenAiModel::new(config).unwrap();

    let error = model.complete(&hello()).await.unwrap_err();

    assert_private(&error);
    match error {
        ModelError::RetriesExhausted { attempts: 2, last } => {
            assert!(matches!(*last, ModelError::Transport(_)), "{last:?}");
        }
        other => panic!("expected RetriesExhausted after 2 attempts, got {other:?}"),
    }
}

/// The 200 answers no step can use, each with what it is.
fn unusable_answers() -> Vec<(&'static str, Reply)> {
    vec![
        (
            // Cut off mid-answer, quoting what was said.
            "a body cut short",
            Reply::RawBody(
                r#"{"id":"x","choices":[{"message":{"content":"you feel low tod"#.into(),
            ),
        ),
        (
            "JSON that is no chat completion",
            Reply::RawBody(r#"{"choices":"you feel low today"}"#.into()),
        ),
        ("no choices", Reply::NoChoices),
        ("null content", Reply::NullContent),
        ("empty content", Reply::content("")),
        ("blank content", Reply::content(" \n\t ")),
    ]
}

#[tokio::test]
async fn an_unusable_answer_is_retried() {
    for (what, unusable) in unusable_answers() {
        let double = OpenAiDouble::start().await;
        double.push(unusable).push_content("better now");

        let completion = model(&double, 4).complete(&hello()).await;

        assert_eq!(completion.unwrap().content, "better now", "{what}");
        assert_eq!(double.requests().await.len(), 2, "{what}");
    }
}

#[tokio::test]
async fn unusable_answers_to_the_end_are_an_invalid_response() {
    for (what, unusable) in unusable_answers() {
        let double = OpenAiDouble::start().await;
        double.push(unusable.clone()).push(unusable);

        let error = model(&double, 2).complete(&hello()).await.unwrap_err();

        assert_private(&error);
        match error {
            ModelError::RetriesExhausted { attempts: 2, last } => {
                assert!(
                    matches!(*last, ModelError::InvalidResponse(_)),
                    "{what}: {last:?}"
                );
            }
            other => panic!("{what}: expected RetriesExhausted after 2 attempts, got {other:?}"),
        }
        assert_eq!(double.requests().await.len(), 2, "{what}");
    }
}

#[tokio::test]
async fn a_refusal_is_not_retried_and_not_quoted() {
    let double = OpenAiDouble::start().await;
    double
        .push(Reply::Refusal("I won't discuss feeling low".into()))
        .push_content("never asked for");

    let error = model(&double, 4).complete(&hello()).await.unwrap_err();

    assert_private(&error);
    assert!(matches!(error, ModelError::Refused), "{error:?}");
    assert_eq!(double.requests().await.len(), 1);
}

#[tokio::test]
async fn a_retry_after_past_the_budget_gives_up_at_once() {
    let double = OpenAiDouble::start().await;
    double
        .push(Reply::Status {
            status: 429,
            retry_after: Some(3600),
        })
        .push_content("never asked for");
    // Retry-After is honoured up to 30 s by default; 5 s of budget cannot hold that wait.
    let config = OpenAiConfig::new(double.base_url(), KEY, "m")
        .with_retry(RetryPolicy::default().with_budget(Duration::from_secs(5)));

    let error = OpenAiModel::new(config)
        .unwrap()
        .complete(&hello())
        .await
        .unwrap_err();

    match error {
        ModelError::RetriesExhausted { attempts: 1, last } => {
            assert!(
                matches!(*last, ModelError::Http { status: 429, .. }),
                "{last:?}"
            );
        }
        other => panic!("expected RetriesExhausted after 1 attempt, got {other:?}"),
    }
    assert_eq!(double.requests().await.len(), 1);
    assert_eq!(double.remaining(), 1);
}

#[tokio::test]
async fn no_attempt_outlasts_the_budget() {
    let double = OpenAiDouble::start().await;
    double.push(Reply::Delayed(
        Duration::from_secs(30),
        Box::new(Reply::content("too late")),
    ));
    // The request timeout alone would wait 10 s; the budget allows 300 ms in all.
    let config =
        config(&double, 4).with_retry(quick_retries(4).with_budget(Duration::from_millis(300)));

    let error = OpenAiModel::new(config)
        .unwrap()
        .complete(&hello())
        .await
        .unwrap_err();

    match error {
        ModelError::RetriesExhausted { last, .. } => {
            assert!(
                matches!(*last, ModelError::Timeout(t) if t <= Duration::from_millis(300)),
                "{last:?}"
            );
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
}

#[tokio::test]
async fn debug_output_hides_the_api_key() {
    let double = OpenAiDouble::start().await;
    let config = config(&double, 4);
    let model = model(&double, 4);

    for text in [format!("{config:?}"), format!("{model:?}")] {
        assert!(!text.contains(KEY), "the API key leaked: {text}");
        assert!(text.contains("redacted"), "{text}");
    }
}

#[test]
fn unusable_configurations_are_config_errors() {
    let bad = [
        OpenAiConfig::new("not a url", KEY, "m"),
        OpenAiConfig::new("ftp://example.com/v1", KEY, "m"),
        OpenAiConfig::new("http://127.0.0.1/v1", KEY, " "),
        OpenAiConfig::new("http://127.0.0.1/v1", format!("{KEY}\n"), "m"),
        OpenAiConfig::new("http://127.0.0.1/v1", KEY, "m").with_request_timeout(Duration::ZERO),
        OpenAiConfig::new("http://127.0.0.1/v1", KEY, "m")
            .with_retry(RetryPolicy::default().with_budget(Duration::ZERO)),
        OpenAiConfig::new("http://127.0.0.1/v1", KEY, "m").with_max_response_bytes(0),
    ];
    for config in bad {
        let error = OpenAiModel::new(config).unwrap_err();
        assert!(matches!(error, ModelError::Config(_)), "{error:?}");
        assert!(
            !error.to_string().contains(KEY),
            "the API key leaked: {error}"
        );
    }
}

/// A server's error body that repeats the request, as some do for a 400.
fn error_quoting_the_request(status: u16) -> Reply {
    Reply::Raw {
        status,
        headers: Vec::new(),
        body: json!({
            "error": {
                "message": "Invalid 'messages[0].content': 'hello, I feel low today' is not allowed",
                "type": "invalid_request_error",
                "param": "messages",
                "code": null
            }
        })
        .to_string(),
    }
}

#[tokio::test]
async fn an_error_body_that_quotes_the_request_is_not_kept() {
    let double = OpenAiDouble::start().await;
    double.push(error_quoting_the_request(400));

    let error = model(&double, 4).complete(&hello()).await.unwrap_err();

    assert_private(&error);
    assert_eq!(
        error.to_string(),
        "model server answered HTTP 400 (invalid_request_error)"
    );
    assert_eq!(double.requests().await.len(), 1);
}

#[tokio::test]
async fn an_answer_over_the_size_limit_is_refused_unread_and_not_retried() {
    let double = OpenAiDouble::start().await;
    double
        .push_content("x".repeat(10_000))
        .push_content("never asked for");
    let limited = config(&double, 4).with_max_response_bytes(4096);

    let error = OpenAiModel::new(limited)
        .unwrap()
        .complete(&hello())
        .await
        .unwrap_err();

    assert!(
        matches!(error, ModelError::TooLarge { limit: 4096 }),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert_eq!(double.requests().await.len(), 1);

    // An answer within the limit is read as usual.
    double.clear();
    double.push_content("x".repeat(3000));
    let limited = config(&double, 4).with_max_response_bytes(4096);
    let completion = OpenAiModel::new(limited)
        .unwrap()
        .complete(&hello())
        .await
        .unwrap();
    assert_eq!(completion.content.len(), 3000);
}

/// A `Retry-After` header of `value` on a 429.
fn rate_limited_with(value: &str) -> Reply {
    Reply::Raw {
        status: 429,
        headers: vec![("retry-after".to_owned(), value.to_owned())],
        body: json!({ "error": { "message": "slow down", "type": "rate_limit_error" } })
            .to_string(),
    }
}

/// An HTTP date `seconds` from now (negative: in the past).
fn http_date_in(seconds: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(seconds))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

#[tokio::test]
async fn a_retry_after_over_the_cap_ends_the_call_at_once() {
    // 40 s of budget would hold the 30 s a cut-down wait would take, but the server said
    // 120 s (and, as a date, an hour): no shorter wait is taken in its place.
    for asked in ["120".to_owned(), http_date_in(3600)] {
        let double = OpenAiDouble::start().await;
        double
            .push(rate_limited_with(&asked))
            .push_content("never asked for");
        let config = OpenAiConfig::new(double.base_url(), KEY, "m").with_retry(
            RetryPolicy::default()
                .with_budget(Duration::from_secs(40))
                .with_max_retry_after(Duration::from_millis(50)),
        );

        let error = OpenAiModel::new(config)
            .unwrap()
            .complete(&hello())
            .await
            .unwrap_err();

        match error {
            ModelError::RetriesExhausted { attempts: 1, last } => assert!(
                matches!(*last, ModelError::Http { status: 429, .. }),
                "{asked}: {last:?}"
            ),
            other => panic!("{asked}: expected RetriesExhausted after 1 attempt, got {other:?}"),
        }
        assert_eq!(double.requests().await.len(), 1, "{asked}");
    }
}

#[tokio::test]
async fn a_retry_after_date_in_the_past_is_retried_at_once() {
    let double = OpenAiDouble::start().await;
    double
        .push(rate_limited_with(&http_date_in(-60)))
        .push_content("ok");
    let config = OpenAiConfig::new(double.base_url(), KEY, "m")
        .with_retry(RetryPolicy::default().with_budget(Duration::from_secs(40)));

    let completion = OpenAiModel::new(config)
        .unwrap()
        .complete(&hello())
        .await
        .unwrap();

    assert_eq!(completion.content, "ok");
    assert_eq!(double.requests().await.len(), 2);
}

#[tokio::test]
async fn server_errors_are_retried_across_the_budget() {
    // A short outage: eight 5xx answers in a row, then the server is back. The retries are
    // spread over the budget (short backoffs here, so the test is quick) rather than given up
    // after a fixed few.
    let double = OpenAiDouble::start().await;
    for status in [500, 502, 503, 500, 502, 503, 500, 502] {
        double.push(Reply::status(status));
    }
    double.push_content("back");
    let config = OpenAiConfig::new(double.base_url(), KEY, "m").with_retry(
        RetryPolicy::default()
            .with_budget(Duration::from_secs(30))
            .with_base_delay(Duration::from_millis(5))
            .with_max_delay(Duration::from_millis(40)),
    );

    let completion = OpenAiModel::new(config)
        .unwrap()
        .complete(&hello())
        .await
        .unwrap();

    assert_eq!(completion.content, "back");
    assert_eq!(double.requests().await.len(), 9);
}
