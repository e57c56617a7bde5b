//! What an operator's inspector reads beyond the turn contract: the conversations, listed and
//! filtered, and the audit of what operators did with a person's data.
//!
//! A trait of its own over [`Store`], so that the turn contract stays what a gateway needs; every
//! store implements both, and the conformance suite holds them to the same answers.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::types::{Address, Line, SessionId};
use crate::{Store, StoreFuture};

/// A store an inspector can browse.
pub trait Inspect: Store {
    /// The conversations `query` selects, the most recently active first, at most
    /// `query.limit` of them. `now` decides which scheduled events are due.
    fn conversations<'a>(
        &'a self,
        query: &'a ConversationQuery,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, Vec<Conversation>>;

    /// Records one operator action in the audit table.
    fn record_audit<'a>(&'a self, entry: &'a AuditEntry) -> StoreFuture<'a, ()>;

    /// The latest `limit` audit entries, newest first.
    fn audit_log(&self, limit: u32) -> StoreFuture<'_, Vec<AuditEntry>>;
}

/// Which conversations to list. Every filter that is set must hold.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationQuery {
    /// Only this session.
    pub session: Option<SessionId>,
    /// Text the address, or one of the conversation's messages, contains (case-insensitive for
    /// ASCII letters).
    pub search: Option<String>,
    /// Only sessions whose current mental process has this name (`crisis`: in crisis mode).
    pub process: Option<String>,
    /// Only people who opted out.
    pub opted_out: bool,
    /// Only conversations with a reply that failed or is still pending.
    pub undelivered: bool,
    /// Only conversations with a scheduled event (a check-in) due by `now`.
    pub due_events: bool,
    /// At most this many (0: the default of 100).
    pub limit: u32,
}

impl fmt::Debug for ConversationQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The search may be a number or words of a message.
        f.debug_struct("ConversationQuery")
            .field("session", &self.session)
            .field("search", &self.search.as_ref().map(|_| "<redacted>"))
            .field("process", &self.process)
            .field("opted_out", &self.opted_out)
            .field("undelivered", &self.undelivered)
            .field("due_events", &self.due_events)
            .field("limit", &self.limit)
            .finish()
    }
}

impl ConversationQuery {
    /// The limit a query asks for, 0 read as 100.
    pub fn effective_limit(&self) -> u32 {
        if self.limit == 0 { 100 } else { self.limit }
    }
}

/// One conversation as a list shows it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// The session.
    pub id: SessionId,
    /// The person's address.
    pub address: Address,
    /// The line the person texted (the default line: empty).
    #[serde(default)]
    pub line: Line,
    /// The persona (the soul) assigned at first contact.
    pub persona: String,
    /// First message ever.
    pub first_contact_at: DateTime<Utc>,
    /// Last turn started.
    pub last_active_at: DateTime<Utc>,
    /// Messages in the conversation.
    pub total_messages: i64,
    /// Whether the person opted out.
    pub opted_out: bool,
    /// The current mental process, when one was stored.
    pub process: Option<String>,
    /// Replies not yet accepted by the provider.
    pub pending_replies: i64,
    /// Replies whose sending failed.
    pub failed_replies: i64,
    /// Scheduled events due by `now`.
    pub due_events: i64,
    /// The earliest scheduled event, due or not.
    pub next_event_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conversation")
            .field("id", &self.id)
            .field("address", &self.address)
            .field("process", &self.process)
            .field("opted_out", &self.opted_out)
            .finish_non_exhaustive()
    }
}

/// What an operator did that the audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// Showed a masked phone number.
    Reveal,
    /// Downloaded a person's data.
    Export,
    /// Erased a person's data.
    Erase,
    /// Rewound a conversation to after one of its turns.
    Rewind,
    /// Re-ran one of a conversation's turns with the current build (nothing stored but this).
    Rerun,
}

impl AuditAction {
    /// Its name in the audit table.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Reveal => "reveal",
            AuditAction::Export => "export",
            AuditAction::Erase => "erase",
            AuditAction::Rewind => "rewind",
            AuditAction::Rerun => "rerun",
        }
    }
}

/// One row of the audit table: who did what to which conversation, and when. It holds no
/// number and no text of the person's, and outlives their erasure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When.
    pub at: DateTime<Utc>,
    /// Who: the inspector's name for the login session that acted.
    pub actor: String,
    /// What.
    pub action: AuditAction,
    /// Which conversation.
    pub session: SessionId,
}
