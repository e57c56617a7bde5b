//! Tools: functions a soul offers the model during a step. The model may call them instead of
//! answering; the step runs each call, shows the model the results, and asks again, for at most
//! [`Tools::max_rounds`] rounds, before the answer is read as the step's own.
//!
//! A tool's failure (an error it returns, arguments that do not fit, a name nobody registered) is
//! a result the model reads (`error: ...`), never a failed step or a panic. Each call and its
//! result are remembered in working memory, in the order they happened, before the step's own
//! memory: the call as `Sage called get_weather({"city":"Paris"})`, the result as
//! `get_weather returned: ...` (both assistant memories without a region, with the call's
//! details in their metadata under `tool_call` and `tool_result`).

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::memory::Memory;
use crate::model::{BoxFuture, ToolCall, ToolSpec};
use crate::text;

/// How many rounds of tool calls a step allows unless told otherwise.
pub const DEFAULT_MAX_TOOL_ROUNDS: u32 = 4;

type ToolFn = Arc<dyn Fn(Value) -> BoxFuture<'static, Result<String, ToolError>> + Send + Sync>;

/// Why a tool could not give a result; the model reads the message as the call's result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(pub String);

impl ToolError {
    /// A failure with this message (which the model reads: say what went wrong, not a secret).
    pub fn new(message: impl Into<String>) -> Self {
        ToolError(message.into())
    }
}

/// The tools a step may call, and how many rounds of calls it allows. Cheap to clone.
#[derive(Clone)]
pub struct Tools {
    tools: Vec<Tool>,
    max_rounds: u32,
}

#[derive(Clone)]
struct Tool {
    spec: ToolSpec,
    run: ToolFn,
}

impl Default for Tools {
    fn default() -> Self {
        Tools::new()
    }
}

impl Tools {
    /// No tools, [`DEFAULT_MAX_TOOL_ROUNDS`] rounds.
    pub fn new() -> Self {
        Tools {
            tools: Vec::new(),
            max_rounds: DEFAULT_MAX_TOOL_ROUNDS,
        }
    }

    /// The same tools with at most `rounds` rounds of calls per step; a model that asks for
    /// more fails the step with [`StepError::ToolRounds`](crate::step::StepError::ToolRounds).
    pub fn with_max_rounds(mut self, rounds: u32) -> Self {
        self.max_rounds = rounds;
        self
    }

    /// The most rounds of calls a step allows.
    pub fn max_rounds(&self) -> u32 {
        self.max_rounds
    }

    /// Adds the tool `name` (`^[a-zA-Z0-9_-]{1,64}$`), described to the model by `description`,
    /// whose arguments are an `A` (their JSON Schema is what the model is shown) and which `run`
    /// answers.
    pub fn tool<A, F, Fut>(mut self, name: &str, description: &str, run: F) -> Self
    where
        A: JsonSchema + DeserializeOwned + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, ToolError>> + Send + 'static,
    {
        let run: ToolFn =
            Arc::new(
                move |arguments: Value| match serde_json::from_value::<A>(arguments) {
                    Ok(arguments) => Box::pin(run(arguments)),
                    Err(error) => {
                        let error =
                            ToolError(format!("the arguments do not fit the tool: {error}"));
                        Box::pin(std::future::ready(Err(error)))
                    }
                },
            );
        self.tools.push(Tool {
            spec: ToolSpec {
                name: name.to_owned(),
                description: description.to_owned(),
                parameters: parameters_schema::<A>(),
            },
            run,
        });
        self
    }

    /// Whether there are no tools.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// The tools as a request describes them.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.iter().map(|tool| tool.spec.clone()).collect()
    }

    /// Names the API would refuse, a name used twice, or no rounds at all.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !self.tools.is_empty() && self.max_rounds == 0 {
            return Err("tools are offered but no round of calls is allowed".to_owned());
        }
        for (i, tool) in self.tools.iter().enumerate() {
            let name = &tool.spec.name;
            let valid = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
            if !valid {
                return Err(format!(
                    "tool name {name:?} is not 1 to 64 characters of a-z, A-Z, 0-9, `_` and `-`"
                ));
            }
            if self.tools[..i].iter().any(|t| t.spec.name == *name) {
                return Err(format!("two tools are named {name:?}"));
            }
        }
        Ok(())
    }

    /// Runs `call`: its result, or the error the model is shown instead.
    pub(crate) async fn call(&self, call: &ToolCall) -> Result<String, ToolError> {
        let Some(tool) = self.tools.iter().find(|t| t.spec.name == call.name) else {
            return Err(ToolError(format!("there is no tool named {:?}", call.name)));
        };
        // Some models send nothing at all for a tool without arguments.
        let arguments = if call.arguments.trim().is_empty() {
            Ok(json!({}))
        } else {
            serde_json::from_str(&call.arguments)
        };
        match arguments {
            Ok(arguments) => (tool.run)(arguments).await,
            Err(error) => Err(ToolError(format!(
                "the arguments are not valid JSON (line {}, column {})",
                error.line(),
                error.column()
            ))),
        }
    }
}

impl fmt::Debug for Tools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tools")
            .field(
                "tools",
                &self.tools.iter().map(|t| &t.spec.name).collect::<Vec<_>>(),
            )
            .field("max_rounds", &self.max_rounds)
            .finish()
    }
}

/// `A`'s JSON Schema, as a function's `parameters`.
fn parameters_schema<A: JsonSchema>() -> Value {
    let mut schema = schemars::schema_for!(A).to_value();
    // The meta-schema URI is noise to the model and some compatible servers reject it.
    if let Some(map) = schema.as_object_mut() {
        map.remove("$schema");
    }
    schema
}

/// The memory of `call`, as `soul` made it during `step`.
pub(crate) fn call_memory(soul: &str, step: &str, call: &ToolCall) -> Memory {
    let content = format!("{soul} called {}({})", call.name, call.arguments);
    Memory::assistant(text::storable(&content))
        .with_metadata("step", json!(step))
        .with_metadata(
            "tool_call",
            json!({ "id": call.id, "name": call.name, "arguments": text::storable(&call.arguments) }),
        )
}

/// The memory of `call`'s result, and the text the model is sent for it.
pub(crate) fn result_memory(
    step: &str,
    call: &ToolCall,
    result: &Result<String, ToolError>,
) -> (Memory, String) {
    let (content, sent) = match result {
        Ok(output) => (format!("{} returned: {output}", call.name), output.clone()),
        Err(error) => (
            format!("{} failed: {error}", call.name),
            format!("error: {error}"),
        ),
    };
    let memory = Memory::assistant(text::storable(&content))
        .with_metadata("step", json!(step))
        .with_metadata(
            "tool_result",
            json!({ "id": call.id, "name": call.name, "failed": result.is_err() }),
        );
    (memory, sent)
}
