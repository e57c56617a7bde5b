//! `OpenAiModel::complete_streaming` against the OpenAI double over a real socket: the answer's
//! pieces handed on as they arrive and assembled, the usage read from the last chunk, the size
//! and time limits held on a stream, and a stream that breaks off retried after a reset.
#![cfg(feature = "openai")]
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::sync::Mutex;
use std::time::Duration;

use soul_engine::Role;
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::model::{
    AnswerSink, ChatMessage, ChatOptions, ChatRequest, LanguageModel, ModelError, Usage,
};
use soul_engine::retry::RetryPolicy;
use soul_testkit::openai::{OpenAiDouble, Reply, ScriptedToolCall};

fn model(double: &OpenAiDouble, max_attempts: u32) -> OpenAiModel {
    let retry = RetryPolicy::default()
        .with_max_attempts(max_attempts)
        .with_base_delay(Duration::from_millis(1))
        .with_max_delay(Duration::from_millis(1));
    OpenAiModel::new(
        OpenAiConfig::new(double.base_url(), "sk-test", "default-model")
            .with_request_timeout(Duration::from_secs(10))
            .with_retry(retry),
    )
    .unwrap()
}

fn hello() -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::new(Role::User, "hello")],
        options: ChatOptions::default(),
    }
}

/// What a sink heard: each piece, and `<reset>` for a reset.
#[derive(Default)]
struct Heard(Mutex<Vec<String>>);

impl Heard {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl AnswerSink for Heard {
    fn text(&self, delta: &str) {
        self.0.lock().unwrap().push(delta.to_owned());
    }

    fn reset(&self) {
        self.0.lock().unwrap().push("<reset>".to_owned());
    }
}

#[tokio::test]
async fn a_streamed_answer_arrives_in_pieces_and_is_assembled_with_its_usage() {
    let double = OpenAiDouble::start().await;
    double.push(Reply::pieces(["Cells, ", "then. ", "Go."]));
    let heard = Heard::default();

    let completion = model(&double, 1)
        .complete_streaming(&hello(), &heard)
        .await
        .unwrap();

    assert_eq!(heard.all(), ["Cells, ", "then. ", "Go."]);
    assert_eq!(completion.content, "Cells, then. Go.");
    assert_eq!(completion.model, "double-model");
    assert_eq!(
        completion.usage,
        Usage {
            prompt_tokens: 10,
            completion_tokens: 5
        }
    );
    let request = &double.requests().await[0];
    assert_eq!(request["stream"], true);
    assert_eq!(request["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn without_a_sink_the_request_is_not_streamed() {
    let double = OpenAiDouble::start().await;
    double.push_content("whole");
    let completion = model(&double, 1).complete(&hello()).await.unwrap();
    assert_eq!(completion.content, "whole");
    let request = &double.requests().await[0];
    assert!(request.get("stream").is_none(), "{request}");
    assert!(request.get("stream_options").is_none(), "{request}");
}

#[tokio::test]
async fn streamed_tool_calls_are_assembled_and_not_handed_on() {
    let double = OpenAiDouble::start().await;
    double.push(Reply::ToolCalls(vec![
        ScriptedToolCall::new("call_1", "look_up", r#"{"word":"cell"}"#),
        ScriptedToolCall::new("call_2", "note", r#"{"text":"later"}"#),
    ]));
    let heard = Heard::default();
    let completion = model(&double, 1)
        .complete_streaming(&hello(), &heard)
        .await
        .unwrap();
    assert!(heard.all().is_empty(), "{:?}", heard.all());
    let calls: Vec<(&str, &str, &str)> = completion
        .tool_calls
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("call_1", "look_up", r#"{"word":"cell"}"#),
            ("call_2", "note", r#"{"text":"later"}"#)
        ]
    );
}

#[tokio::test]
async fn a_stream_that_breaks_off_is_reset_and_retried() {
    let double = OpenAiDouble::start().await;
    double
        .push(Reply::cut(["Half an ", "answer"]))
        .push(Reply::pieces(["A whole ", "answer."]));
    let heard = Heard::default();

    let completion = model(&double, 2)
        .complete_streaming(&hello(), &heard)
        .await
        .unwrap();

    assert_eq!(completion.content, "A whole answer.");
    assert_eq!(
        heard.all(),
        ["Half an ", "answer", "<reset>", "A whole ", "answer."]
    );
    assert_eq!(double.requests().await.len(), 2);
}

#[tokio::test]
async fn a_stream_broken_off_to_the_end_is_a_retryable_failure() {
    let double = OpenAiDouble::start().await;
    double
        .push(Reply::cut(["Half"]))
        .push(Reply::cut(["Half again"]));
    let heard = Heard::default();
    let error = model(&double, 2)
        .complete_streaming(&hello(), &heard)
        .await
        .unwrap_err();
    let ModelError::RetriesExhausted { attempts: 2, last } = &error else {
        panic!("{error:?}");
    };
    assert!(last.is_retryable(), "{last:?}");
    assert!(!error.to_string().contains("Half"), "{error}");
    assert_eq!(heard.all(), ["Half", "<reset>", "Half again", "<reset>"]);
}

#[tokio::test]
async fn a_stream_over_the_size_limit_is_cut_off_and_not_retried() {
    let double = OpenAiDouble::start().await;
    let piece = "x".repeat(1000);
    double
        .push(Reply::pieces(vec![piece.clone(); 10]))
        .push_content("never asked for");
    let limited = OpenAiModel::new(
        OpenAiConfig::new(double.base_url(), "sk-test", "m")
            .with_retry(RetryPolicy::default().with_max_attempts(4))
            .with_max_response_bytes(4096),
    )
    .unwrap();
    let heard = Heard::default();

    let error = limited
        .complete_streaming(&hello(), &heard)
        .await
        .unwrap_err();

    assert!(
        matches!(error, ModelError::TooLarge { limit: 4096 }),
        "{error:?}"
    );
    assert_eq!(double.requests().await.len(), 1);
    // What arrived within the limit was handed on, then voided.
    let heard = heard.all();
    assert_eq!(
        heard.last().map(String::as_str),
        Some("<reset>"),
        "{heard:?}"
    );
    assert!(heard.len() <= 5, "{heard:?}");
}

#[tokio::test]
async fn a_stream_that_stalls_times_out_and_is_retried() {
    let double = OpenAiDouble::start().await;
    let gate = soul_testkit::openai::Gate::new();
    double
        .push(Reply::held(["Wait ", "forever"], &gate))
        .push(Reply::pieces(["Here."]));
    let slow = OpenAiModel::new(
        OpenAiConfig::new(double.base_url(), "sk-test", "m")
            .with_request_timeout(Duration::from_millis(300))
            .with_retry(
                RetryPolicy::default()
                    .with_max_attempts(2)
                    .with_base_delay(Duration::from_millis(1))
                    .with_max_delay(Duration::from_millis(1)),
            ),
    )
    .unwrap();
    let heard = Heard::default();
    let completion = slow.complete_streaming(&hello(), &heard).await.unwrap();
    assert_eq!(completion.content, "Here.");
    assert_eq!(heard.all(), ["Wait ", "<reset>", "Here."]);
}

#[tokio::test]
async fn a_chunk_that_is_not_a_chunk_is_an_invalid_response_that_does_not_quote_it() {
    let double = OpenAiDouble::start().await;
    let broken = "data: {\"secret words\": true}\n\n".to_owned();
    for _ in 0..2 {
        double.push(Reply::Raw {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: broken.clone(),
        });
    }
    let heard = Heard::default();
    let error = model(&double, 2)
        .complete_streaming(&hello(), &heard)
        .await
        .unwrap_err();
    let ModelError::RetriesExhausted { last, .. } = &error else {
        panic!("{error:?}");
    };
    assert!(matches!(**last, ModelError::InvalidResponse(_)), "{last:?}");
    assert!(!error.to_string().contains("secret"), "{error}");
}

#[tokio::test]
async fn a_server_error_before_the_stream_is_retried_as_without_streaming() {
    let double = OpenAiDouble::start().await;
    double
        .push(Reply::status(503))
        .push(Reply::content("Fine now."));
    let heard = Heard::default();
    let completion = model(&double, 2)
        .complete_streaming(&hello(), &heard)
        .await
        .unwrap();
    assert_eq!(completion.content, "Fine now.");
    assert_eq!(heard.all(), ["Fine ", "now."]);
}
