//! How long a reply may be: a limit set by whoever carries replies to the person.
//!
//! The engine knows no channel. The SMS gateway counts segments, a chat window might count
//! nothing at all; so the limit is a [`ReplyLimit`] the caller gives the
//! [`Runtime`](crate::process::Runtime). It is applied to each reply as a process speaks it,
//! before the turn is committed, so that what is stored, what is sent and what the soul
//! remembers saying are the same text.

use std::fmt;

/// Shortens replies that are too long to send.
///
/// A reply is a `body` followed by an `ending` (empty for [`speak`]; for
/// [`speak_with_ending`], text that must reach the person whole, such as crisis resources).
///
/// [`speak`]: crate::process::ProcessContext::speak
/// [`speak_with_ending`]: crate::process::ProcessContext::speak_with_ending
pub trait ReplyLimit: Send + Sync + fmt::Debug {
    /// `None` when `body` + `ending` may be sent as it is; otherwise the reply to send instead.
    /// A limit should cut the body where a sentence ends, and keep `ending` whole unless it is
    /// too long on its own.
    fn limit(&self, body: &str, ending: &str) -> Option<String>;
}
