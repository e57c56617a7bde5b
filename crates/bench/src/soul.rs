//! The reference workload's soul and model, both in this process.
//!
//! `bench` has two processes, `ping` and `pong`, that alternate: each turn makes one model call
//! (an external dialog), speaks its answer, updates one soul-memory key and one process-memory
//! key and moves to the other process. The model is [`ConstantModel`]: no I/O, no latency, one
//! fixed short reply. (A benchmark, not a test: the in-process model keeps the model's cost out
//! of the store + engine figures. The gateway figures use a real HTTP model server instead.)

use soul_engine::model::BoxFuture;
use soul_engine::model::{ChatRequest, Completion, LanguageModel, ModelError, Usage};
use soul_engine::process::{MentalProcess, Next, ProcessContext, ProcessResult};
use soul_engine::step::external_dialog;

/// The soul's name in the registry.
pub(crate) const SOUL: &str = "bench";

/// The fixed reply.
pub(crate) const REPLY: &str = "Got it, keep going.";

soul_engine::soul! {
    name: "bench",
    display_name: "Bench",
    persona: &["You are Bench, a soul that exists to be measured."],
    initial_process: PING,
}

const PING: MentalProcess = soul_engine::mental_process!(soul = SOUL, name = "ping", ping);
const PONG: MentalProcess = soul_engine::mental_process!(soul = SOUL, name = "pong", pong);

async fn ping(cx: ProcessContext) -> ProcessResult {
    turn(cx, PONG).await
}

async fn pong(cx: ProcessContext) -> ProcessResult {
    turn(cx, PING).await
}

/// One model call, one soul-memory key, one process-memory key, the other process next.
async fn turn(cx: ProcessContext, next: MentalProcess) -> ProcessResult {
    let (memory, said) = cx
        .mind()
        .run(external_dialog("Acknowledge briefly."), cx.memory())
        .await?;
    cx.speak(said);
    let seen: u64 = cx.soul_memory().get("turns")?.unwrap_or(0);
    cx.soul_memory().set("turns", &(seen + 1))?;
    cx.process_memory().set("last_turn", &seen)?;
    Ok(Next::to(next, memory))
}

/// A model that answers every request at once with [`REPLY`].
#[derive(Debug, Default)]
pub(crate) struct ConstantModel;

impl LanguageModel for ConstantModel {
    fn complete<'a>(
        &'a self,
        _request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        Box::pin(async {
            Ok(Completion {
                content: REPLY.to_owned(),
                usage: Usage {
                    prompt_tokens: 1,
                    completion_tokens: 1,
                },
                model: "constant".to_owned(),
                tool_calls: Vec::new(),
            })
        })
    }
}
