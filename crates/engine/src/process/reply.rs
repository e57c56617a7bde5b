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

/// Where a reply goes while the model writes it, before it is spoken: given by a caller that
/// shows replies as they arrive (the inspector's browser chat), never needed otherwise. The
/// engine hands it text only; how it reaches anyone is the caller's.
///
/// Only the answer of a step that [speaks](crate::step::CognitiveStep::speaks)
/// (`external_dialog`) is written here, and only where the model streams; structured steps,
/// tool calls and thoughts never are. What is written is provisional: the reply spoken may be
/// cleaned or cut to the [`ReplyLimit`], and a turn that fails sends its fallback instead. The
/// committed reply is the one that counts.
pub trait ReplyStream: Send + Sync + fmt::Debug {
    /// The reply being written, so far: the whole text each time (it grows, but its end may
    /// still change, a closing quote dropped, say).
    fn writing(&self, text: &str);
    /// The reply being written is void: its model call failed (and may be tried again), or its
    /// answer is not spoken as it is (the model called tools, or its answer was unusable and is
    /// asked for again).
    fn discard(&self);
    /// A reply was spoken: `text` as said (cleaned, cut to the limit). What is written next is
    /// another reply.
    fn spoken(&self, text: &str);
}
