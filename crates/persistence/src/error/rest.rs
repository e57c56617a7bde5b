//! What a REST API (PostgREST) answers when a request fails, read into typed errors.
//!
//! `postgrest` 1.6 hands back every HTTP answer as `Ok(Response)`, 4xx and 5xx included, and has
//! no error type of its own: the status and PostgREST's `{code, message, details, hint}` body are
//! read here into a [`RestError`], which the store reports as [`StoreError::Rest`]; a request that
//! got no answer is a [`TransportError`], reported as [`StoreError::RestUnavailable`]. Whether the
//! call may be repeated (`idempotent`) is the caller's to say: it depends on the call, not on
//! the answer.

use std::error::Error as StdError;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use crate::StoreError;

/// What a failed PostgREST answer means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestProblem {
    /// 401 or 403: the key is wrong, expired or not the service role's, or row-level security
    /// refused it.
    Unauthorized,
    /// PGRST202 (function) or PGRST205 (table): the migrations have not been applied, or
    /// PostgREST's schema cache predates them (`NOTIFY pgrst, 'reload schema'`).
    SchemaMissing,
    /// A 5xx: the server or the database failed.
    Server,
    /// Any other refusal.
    Other,
}

/// An error PostgREST answered with.
///
/// `details` can quote stored values (a unique violation names the key), so it is kept for a
/// caller who asks but left out of `Display` and `Debug`, which end up in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct RestError {
    /// The HTTP status.
    pub status: u16,
    /// PostgREST's code (`PGRST…`) or the SQLSTATE of the database error it passed on.
    pub code: Option<String>,
    /// The message.
    pub message: String,
    /// Details, when given.
    pub details: Option<String>,
    /// PostgREST's hint, when given.
    pub hint: Option<String>,
}

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    details: Option<Value>,
    #[serde(default)]
    hint: Option<Value>,
}

/// PostgREST sends strings, but a proxy in front of it may not: anything else is kept as JSON.
fn text(value: Option<Value>) -> Option<String> {
    match value? {
        Value::Null => None,
        Value::String(text) => Some(text),
        other => Some(other.to_string()),
    }
}

impl RestError {
    /// Reads a failed answer. A body that is not PostgREST's JSON (a gateway's HTML page, say)
    /// still gives a typed error: its status, and a message saying the body was not understood.
    pub(crate) fn parse(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<Body>(body) {
            Ok(body) => RestError {
                status,
                code: text(body.code),
                message: text(body.message).unwrap_or_default(),
                details: text(body.details),
                hint: text(body.hint),
            },
            Err(_) => RestError {
                status,
                code: None,
                message: format!("HTTP {status} without a PostgREST error body"),
                details: None,
                hint: None,
            },
        }
    }

    /// What the error means.
    pub fn problem(&self) -> RestProblem {
        match (self.status, self.code.as_deref()) {
            (401 | 403, _) => RestProblem::Unauthorized,
            // 42501 is PostgreSQL's insufficient_privilege, which PostgREST answers with 401 or
            // 403 depending on whether a token was sent; a proxy may pass it on differently.
            (_, Some("42501")) => RestProblem::Unauthorized,
            (_, Some("PGRST202" | "PGRST205")) => RestProblem::SchemaMissing,
            (500..=599, _) => RestProblem::Server,
            _ => RestProblem::Other,
        }
    }

    /// Whether the same request may succeed if sent again: the server failed (5xx), or the
    /// database chose it as a serialization failure, deadlock victim or lock timeout, which
    /// PostgREST passes on (as 409 or a 5xx). [`StoreError::is_retryable`] adds that the call
    /// must also be idempotent, since such an answer leaves its outcome unknown.
    pub fn is_transient(&self) -> bool {
        self.problem() == RestProblem::Server
            || matches!(self.code.as_deref(), Some("40001" | "40P01" | "55P03"))
    }

    /// The error as the store reports it, for a call that is `idempotent` or not.
    pub(crate) fn into_store_error(self, idempotent: bool) -> StoreError {
        StoreError::Rest {
            idempotent,
            source: self,
        }
    }
}

impl fmt::Display for RestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgREST answered {}", self.status)?;
        if let Some(code) = &self.code {
            write!(f, " ({code})")?;
        }
        write!(f, ": {}", self.message)?;
        match self.problem() {
            RestProblem::Unauthorized => f.write_str(
                "; the key is not accepted: check SUPABASE_SERVICE_KEY (the service role's key, \
                 not the anon key) and row-level security",
            )?,
            RestProblem::SchemaMissing => f.write_str(
                "; the database lacks the migrations, or PostgREST's schema cache predates them \
                 (apply migrations/, then NOTIFY pgrst, 'reload schema')",
            )?,
            _ => {}
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestError")
            .field("status", &self.status)
            .field("code", &self.code)
            .field("message", &self.message)
            .field("details", &self.details.as_ref().map(|_| "<redacted>"))
            .field("hint", &self.hint)
            .finish()
    }
}

impl StdError for RestError {}

/// A request that got no usable answer: no connection, a timeout, or a body cut short. Its
/// outcome is unknown: the request may have been applied.
#[derive(Debug)]
pub struct TransportError {
    timed_out: bool,
    source: Box<dyn StdError + Send + Sync>,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.timed_out {
            "timed out"
        } else {
            "transport"
        };
        write!(
            f,
            "the request to PostgREST did not complete ({kind}): {}",
            self.source
        )
    }
}

impl StdError for TransportError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

impl TransportError {
    /// Whether the request timed out (as opposed to failing to connect or to read).
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// Reports a failed send or read of a call that is `idempotent` or not; it is retryable only
    /// then.
    pub(crate) fn into_store_error(
        error: impl StdError + Send + Sync + 'static,
        timed_out: bool,
        idempotent: bool,
    ) -> StoreError {
        StoreError::RestUnavailable {
            idempotent,
            source: TransportError {
                timed_out,
                source: Box::new(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_postgrest_errors() {
        let missing = RestError::parse(
            404,
            br#"{"code":"PGRST202","message":"Could not find the function public.soul_begin_turn(request)","details":null,"hint":null}"#,
        );
        assert_eq!(missing.problem(), RestProblem::SchemaMissing);
        assert!(missing.to_string().contains("reload schema"));

        let refused = RestError::parse(401, br#"{"code":"PGRST301","message":"JWT invalid"}"#);
        assert_eq!(refused.problem(), RestProblem::Unauthorized);
        let gateway = RestError::parse(502, b"<html>bad gateway</html>");
        assert_eq!(gateway.problem(), RestProblem::Server);
    }

    #[test]
    fn server_errors_are_retryable_only_when_idempotent() {
        let failed = || RestError::parse(503, br#"{"message":"unavailable"}"#);
        let read = failed().into_store_error(true);
        assert!(matches!(
            read,
            StoreError::Rest {
                idempotent: true,
                ..
            }
        ));
        assert!(read.is_retryable());
        let begin = failed().into_store_error(false);
        assert!(
            matches!(begin, StoreError::Rest { idempotent: false, ref source }
            if source.problem() == RestProblem::Server)
        );
        assert!(!begin.is_retryable());

        let deadlock = || RestError::parse(409, br#"{"code":"40P01","message":"deadlock"}"#);
        assert!(deadlock().into_store_error(true).is_retryable());
        assert!(!deadlock().into_store_error(false).is_retryable());

        let refused = RestError::parse(403, br#"{"code":"42501","message":"permission denied"}"#);
        assert!(!refused.into_store_error(true).is_retryable());
    }

    #[test]
    fn transport_failures_are_retryable_only_when_idempotent() {
        let cut = || std::io::Error::other("connection reset");
        let read = TransportError::into_store_error(cut(), true, true);
        assert!(read.is_retryable());
        let StoreError::RestUnavailable { source, .. } = &read else {
            panic!("expected a transport failure: {read:?}")
        };
        assert!(source.timed_out());
        assert!(read.to_string().contains("timed out"), "{read}");
        assert!(StdError::source(source).is_some());
        let begin = TransportError::into_store_error(cut(), false, false);
        assert!(matches!(
            begin,
            StoreError::RestUnavailable {
                idempotent: false,
                ..
            }
        ));
        assert!(!begin.is_retryable());
    }

    #[test]
    fn details_stay_out_of_debug_and_display() {
        let error = RestError::parse(
            409,
            br#"{"code":"23505","message":"duplicate key","details":"Key (phone_number)=(+15550001) already exists."}"#,
        );
        assert!(!format!("{error:?}").contains("+1555"));
        assert!(!error.to_string().contains("+1555"));
        let error = error.into_store_error(true);
        assert!(!format!("{error:?}").contains("+1555"));
        assert!(!error.to_string().contains("+1555"));
    }
}
