//! What a model server's 404 usually means, said where the gateway sees the failure: the
//! engine's model error keeps only the status and the error code (a body can quote the
//! request), which for a base URL without `/v1` is a bare "HTTP 404".

use std::sync::Arc;

use soul_engine::model::BoxFuture;
use soul_engine::model::{
    AnswerSink, ChatRequest, Completion, LanguageModel, ModelError, complete_with,
};

use crate::config::redacted_url;

/// A model that, when its server answers 404, logs (at warn) where the request went and what
/// the base URL usually looks like.
#[derive(Debug)]
pub(crate) struct HintedModel {
    inner: Arc<dyn LanguageModel>,
    /// `OPENAI_BASE_URL`, its password (if any) hidden.
    base_url: String,
}

impl HintedModel {
    /// Wraps `inner`, whose server is at `base_url`.
    pub(crate) fn new(inner: Arc<dyn LanguageModel>, base_url: &str) -> Self {
        HintedModel {
            inner,
            base_url: redacted_url(base_url.trim_end_matches('/')),
        }
    }
}

/// Whether `error` is, or ended in, the server's 404.
fn not_found(error: &ModelError) -> bool {
    match error {
        ModelError::Http { status, .. } => *status == 404,
        ModelError::RetriesExhausted { last, .. } => not_found(last),
        _ => false,
    }
}

impl LanguageModel for HintedModel {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        self.wrapped(request, None)
    }

    fn complete_streaming<'a>(
        &'a self,
        request: &'a ChatRequest,
        sink: &'a dyn AnswerSink,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        self.wrapped(request, Some(sink))
    }
}

impl HintedModel {
    fn wrapped<'a>(
        &'a self,
        request: &'a ChatRequest,
        sink: Option<&'a dyn AnswerSink>,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        Box::pin(async move {
            let result = complete_with(&self.inner, request, sink).await;
            if let Err(error) = &result
                && not_found(error)
            {
                tracing::warn!(
                    "the model server answered 404 to {}/chat/completions: is OPENAI_BASE_URL \
                     right? OpenAI-compatible servers serve /v1/chat/completions, so the base URL \
                     usually ends in /v1 (http://127.0.0.1:11434/v1, https://api.openai.com/v1); \
                     a model name the server does not know can be answered 404 too (SOUL_MODEL)",
                    self.base_url
                );
            }
            result
        })
    }
}
