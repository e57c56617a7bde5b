//! A turn with a reply stream: only the speaking step's answer is streamed, unwrapped to the
//! words as they arrive, a failed attempt discarded, the spoken (cut) reply marked; thoughts and
//! structured steps are asked for whole, and without a stream nothing is streamed. Over the real
//! wire to the OpenAI double.
#![cfg(feature = "openai")]
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::sync::{Arc, Mutex};

use soul_engine::SystemClock;
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::process::{
    MentalProcess, Next, Perception, ProcessContext, ProcessResult, Registry, ReplyLimit,
    ReplyStream, Runtime, SoulState,
};
use soul_engine::retry::RetryPolicy;
use soul_engine::step::{decision, external_dialog, internal_monologue};
use soul_testkit::openai::{OpenAiDouble, Reply};

soul_engine::soul! {
    name: "streamer",
    display_name: "Tess",
    persona: &["You are Tess."],
    initial_process: STREAMER_TALK,
}
const STREAMER_TALK: MentalProcess =
    soul_engine::mental_process!(soul = "streamer", name = "talk", talk);

async fn talk(cx: ProcessContext) -> ProcessResult {
    let mind = cx.mind();
    let (memory, _) = mind.run(internal_monologue("Think."), cx.memory()).await?;
    let (memory, _) = mind
        .run(decision("Mood?", ["calm", "busy"]), &memory)
        .await?;
    let (memory, said) = mind.run(external_dialog("Answer."), &memory).await?;
    cx.speak(said);
    Ok(Next::stay(memory))
}

/// Keeps the first sentence of a reply longer than 20 bytes.
#[derive(Debug)]
struct FirstSentence;

impl ReplyLimit for FirstSentence {
    fn limit(&self, body: &str, _ending: &str) -> Option<String> {
        (body.len() > 20).then(|| body.split_inclusive(". ").next().unwrap().trim().to_owned())
    }
}

/// What the stream heard.
#[derive(Debug, Default)]
struct Heard(Mutex<Vec<String>>);

impl ReplyStream for Heard {
    fn writing(&self, text: &str) {
        self.0.lock().unwrap().push(format!("writing {text}"));
    }
    fn discard(&self) {
        self.0.lock().unwrap().push("discard".into());
    }
    fn spoken(&self, text: &str) {
        self.0.lock().unwrap().push(format!("spoken {text}"));
    }
}

fn runtime(double: &OpenAiDouble) -> Runtime {
    let retry = RetryPolicy::default()
        .with_max_attempts(2)
        .with_base_delay(std::time::Duration::from_millis(1))
        .with_max_delay(std::time::Duration::from_millis(1));
    let model = OpenAiModel::new(
        OpenAiConfig::new(double.base_url(), "sk-test", "double-model").with_retry(retry),
    )
    .unwrap();
    Runtime::new(
        Registry::load_soul("streamer").unwrap(),
        Arc::new(model),
        Arc::new(SystemClock),
    )
    .with_reply_limit(Arc::new(FirstSentence))
}

/// The answers, the speaking step's first attempt breaking off when `broken`.
fn script(double: &OpenAiDouble, broken: bool) {
    double
        .push(Reply::pieces(["Tess thought: \"They ", "seem tired.\""]))
        .push(Reply::pieces([r#"{"decision":"#, r#""calm"}"#]));
    if broken {
        double.push(Reply::cut(["Tess said: \"Half"]));
    }
    double.push(Reply::pieces([
        "Tess ",
        "said: \"Rest ",
        "now. ",
        "We go on tomorrow.\"",
    ]));
}

#[tokio::test]
async fn only_the_spoken_answer_is_streamed_and_its_spoken_form_marked() {
    let double = OpenAiDouble::start().await;
    script(&double, true);
    let heard = Arc::new(Heard::default());
    let main = runtime(&double)
        .run_main_streaming(
            "s",
            SoulState::new("Tess"),
            Perception::message("I am tired", chrono::Utc::now()),
            None,
            Some(heard.clone()),
        )
        .await
        .unwrap();

    assert_eq!(main.replies, ["Rest now."]);
    assert_eq!(
        *heard.0.lock().unwrap(),
        [
            "writing Half",
            "discard",
            "writing Rest",
            "writing Rest now.",
            "writing Rest now. We go on tomorrow.",
            "spoken Rest now.",
        ]
    );
    let streamed: Vec<bool> = double
        .requests()
        .await
        .iter()
        .map(|request| request.get("stream").is_some())
        .collect();
    assert_eq!(streamed, [false, false, true, true]);
    // The usage is counted as without streaming: 10 + 5 a request, the broken one none.
    assert_eq!(main.usage.total(), 3 * 15);
}

#[tokio::test]
async fn without_a_stream_no_request_is_streamed() {
    let double = OpenAiDouble::start().await;
    script(&double, false);
    let main = runtime(&double)
        .run_main(
            "s",
            SoulState::new("Tess"),
            Perception::message("I am tired", chrono::Utc::now()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(main.replies, ["Rest now."]);
    assert_eq!(main.usage.total(), 3 * 15);
    for request in double.requests().await {
        assert!(request.get("stream").is_none(), "{request}");
        assert!(request.get("stream_options").is_none(), "{request}");
    }
}
