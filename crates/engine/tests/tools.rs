//! A step with tools: the model calls functions the soul registered, the step runs them and asks
//! again, within a bound; over the real wire to the OpenAI double, and recorded to and replayed
//! from a cassette.
#![cfg(feature = "openai")]
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use soul_engine::model::LanguageModel;
use soul_engine::model::cassette::{RecordingModel, ReplayingModel};
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::process::{
    MentalProcess, Next, Perception, ProcessContext, ProcessError, ProcessResult, Registry,
    Runtime, SoulState, TurnError,
};
use soul_engine::retry::RetryPolicy;
use soul_engine::step::{Mind, StepError, ToolError, Tools, external_dialog};
use soul_engine::{Memory, SystemClock, WorkingMemory};
use soul_testkit::openai::{OpenAiDouble, Reply, ScriptedToolCall};

#[derive(Deserialize, JsonSchema)]
struct City {
    /// The city's name.
    city: String,
}

fn tools() -> Tools {
    Tools::new()
        .tool(
            "get_weather",
            "The weather in a city now.",
            |args: City| async move { Ok(format!("18°C and sunny in {}", args.city)) },
        )
        .tool(
            "book_table",
            "Books a table in a city.",
            |_: City| async move { Err(ToolError::new("the booking service is closed")) },
        )
}

soul_engine::soul! {
    name: "forecaster",
    display_name: "Tess",
    persona: &["You are Tess."],
    initial_process: FORECAST,
}
const FORECAST: MentalProcess =
    soul_engine::mental_process!(soul = "forecaster", name = "forecast", forecast);

async fn forecast(cx: ProcessContext) -> ProcessResult {
    let (memory, said) = cx
        .mind()
        .run_with_tools(external_dialog("Answer."), &tools(), cx.memory())
        .await?;
    cx.speak(said);
    Ok(Next::stay(memory))
}

fn model(double: &OpenAiDouble) -> Arc<OpenAiModel> {
    let config = OpenAiConfig::new(double.base_url(), "sk-test", "double-model")
        .with_retry(RetryPolicy::no_retries());
    Arc::new(OpenAiModel::new(config).unwrap())
}

fn conversation() -> WorkingMemory {
    WorkingMemory::new("Tess")
        .with_memory(Memory::system("You are Tess."))
        .with_memory(Memory::user("Weather in Paris? And book us a table."))
}

#[tokio::test]
async fn the_model_calls_tools_and_the_step_answers_with_their_results() {
    let double = OpenAiDouble::start().await;
    double.push(Reply::ToolCalls(vec![
        ScriptedToolCall::new("call_1", "get_weather", r#"{"city":"Paris"}"#),
        ScriptedToolCall::new("call_2", "book_table", r#"{"city":"Paris"}"#),
    ]));
    double.push_content("Tess said: \"Sunny in Paris; I could not book.\"");
    let soul = Registry::load_soul("forecaster").unwrap();
    let runtime = Runtime::new(soul, model(&double), Arc::new(SystemClock));
    let main = runtime
        .run_main(
            "s",
            SoulState::new("Tess"),
            Perception::message("Weather in Paris?", chrono::Utc::now()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(main.replies, ["Sunny in Paris; I could not book."]);

    let requests = double.requests().await;
    assert_eq!(requests.len(), 2);
    let offered: Vec<&str> = requests[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(offered, ["get_weather", "book_table"]);
    assert_eq!(
        requests[0]["tools"][0]["function"]["parameters"]["required"],
        json!(["city"])
    );
    let messages = requests[1]["messages"].as_array().unwrap();
    let tail = &messages[messages.len() - 3..];
    assert_eq!(tail[0]["role"], "assistant");
    assert_eq!(tail[0]["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(tail[0]["tool_calls"][1]["id"], "call_2");
    assert_eq!(
        tail[1],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "18°C and sunny in Paris"})
    );
    assert_eq!(tail[2]["tool_call_id"], "call_2");
    assert_eq!(tail[2]["content"], "error: the booking service is closed");

    // The calls and their results, then what the step remembered, at the end of the memory.
    let remembered: Vec<&str> = main
        .working_memory
        .iter()
        .rev()
        .take(5)
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert_eq!(
        remembered,
        [
            "Tess called get_weather({\"city\":\"Paris\"})",
            "get_weather returned: 18°C and sunny in Paris",
            "Tess called book_table({\"city\":\"Paris\"})",
            "book_table failed: the booking service is closed",
            "Tess said: \"Sunny in Paris; I could not book.\"",
        ]
    );
    let call = main.working_memory.get(-5).unwrap();
    assert_eq!(call.metadata["tool_call"]["id"], "call_1");
    let failed = main.working_memory.get(-2).unwrap();
    assert_eq!(failed.metadata["tool_result"]["failed"], json!(true));
    assert_eq!(main.appended.len(), 5);
}

#[tokio::test]
async fn unknown_tools_and_arguments_that_do_not_fit_are_results_the_model_reads() {
    let double = OpenAiDouble::start().await;
    double.push(Reply::ToolCalls(vec![
        ScriptedToolCall::new("a", "launch_rocket", "{}"),
        ScriptedToolCall::new("b", "get_weather", r#"{"town":"Paris"}"#),
        ScriptedToolCall::new("c", "get_weather", "{not json"),
    ]));
    double.push_content("Tess said: \"I cannot tell.\"");
    let mind = Mind::new(model(&double), Arc::new(SystemClock));
    let (_, said) = mind
        .run_with_tools(external_dialog("Answer."), &tools(), &conversation())
        .await
        .unwrap();
    assert_eq!(said, "I cannot tell.");
    let requests = double.requests().await;
    let results: Vec<String> = requests[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        results[0],
        "error: there is no tool named \"launch_rocket\""
    );
    assert!(
        results[1].starts_with("error: the arguments do not fit the tool: missing field `city`"),
        "{}",
        results[1]
    );
    assert_eq!(
        results[2],
        "error: the arguments are not valid JSON (line 1, column 2)"
    );
}

#[tokio::test]
async fn a_model_that_keeps_calling_tools_is_stopped_after_the_most_rounds() {
    let double = OpenAiDouble::start().await;
    for round in 0..3 {
        double.push(Reply::tool_call(
            &format!("call_{round}"),
            "get_weather",
            r#"{"city":"Oslo"}"#,
        ));
    }
    let mind = Mind::new(model(&double), Arc::new(SystemClock));
    let err = mind
        .run_with_tools(
            external_dialog("Answer."),
            &tools().with_max_rounds(2),
            &conversation(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StepError::ToolRounds { rounds: 2, .. }),
        "{err}"
    );
    assert_eq!(double.requests().await.len(), 3, "two rounds, then no more");
}

#[tokio::test]
async fn a_failing_step_fails_the_turn_with_a_typed_error() {
    let double = OpenAiDouble::start().await;
    for round in 0..5 {
        double.push(Reply::tool_call(
            &format!("c{round}"),
            "get_weather",
            r#"{"city":"Rome"}"#,
        ));
    }
    let soul = Registry::load_soul("forecaster").unwrap();
    let runtime = Runtime::new(soul, model(&double), Arc::new(SystemClock));
    let err = runtime
        .run_main(
            "s",
            SoulState::new("Tess"),
            Perception::message("Rome?", chrono::Utc::now()),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TurnError::Process {
                source: ProcessError::Step(StepError::ToolRounds { .. }),
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn misnamed_tools_are_refused_before_any_model_call() {
    let double = OpenAiDouble::start().await;
    let mind = Mind::new(model(&double), Arc::new(SystemClock));
    let misnamed = Tools::new().tool("get weather", "Spaces are refused.", |_: City| async {
        Ok(String::new())
    });
    let twice = tools().tool("get_weather", "Again.", |_: City| async {
        Ok(String::new())
    });
    for tools in [misnamed, twice] {
        let err = mind
            .run_with_tools(external_dialog("Answer."), &tools, &conversation())
            .await
            .unwrap_err();
        assert!(matches!(err, StepError::Misconfigured { .. }), "{err}");
    }
    assert!(double.requests().await.is_empty());
}

#[tokio::test]
async fn a_tool_exchange_is_recorded_to_a_cassette_and_replays() {
    let double = OpenAiDouble::start().await;
    double.push(Reply::tool_call(
        "call_1",
        "get_weather",
        r#"{"city":"Lima"}"#,
    ));
    double.push_content("Tess said: \"Sunny in Lima.\"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tools.json");

    let recording: Arc<dyn LanguageModel> =
        Arc::new(RecordingModel::new(model(&double), &path).unwrap());
    let recorded = Mind::new(recording, Arc::new(SystemClock))
        .run_with_tools(external_dialog("Answer."), &tools(), &conversation())
        .await
        .unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    let cassette: Value = serde_json::from_str(&text).unwrap();
    let interactions = cassette["interactions"].as_array().unwrap();
    assert_eq!(interactions.len(), 2);
    assert_eq!(
        interactions[0]["request"]["tools"][0]["name"],
        "get_weather"
    );
    assert_eq!(
        interactions[0]["response"]["tool_calls"],
        json!([{"id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Lima\"}"}])
    );
    let messages = interactions[1]["request"]["messages"].as_array().unwrap();
    assert_eq!(messages[messages.len() - 1]["tool_call_id"], "call_1");
    assert_eq!(
        messages[messages.len() - 2]["tool_calls"][0]["id"],
        "call_1"
    );

    let replaying = Arc::new(ReplayingModel::open(&path).unwrap());
    let replayed = Mind::new(replaying.clone(), Arc::new(SystemClock))
        .run_with_tools(external_dialog("Answer."), &tools(), &conversation())
        .await
        .unwrap();
    assert_eq!(replayed.1, recorded.1);
    let contents = |wm: &WorkingMemory| wm.iter().map(|m| m.content.clone()).collect::<Vec<_>>();
    assert_eq!(contents(&replayed.0), contents(&recorded.0));
    replaying.finish().unwrap();
}
