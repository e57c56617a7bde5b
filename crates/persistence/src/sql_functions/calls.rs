//! Every call of a `soul_*` SQL function the store makes, in one table: which function, whether
//! repeating it after an unknown outcome is harmless, and whether it takes the intake path.

/// Declares [`Call`] and its properties from one row per call.
macro_rules! calls {
    ($(
        $(#[$doc:meta])*
        $call:ident => $function:literal, idempotent: $idempotent:literal, intake: $intake:literal;
    )*) => {
        /// A call of one SQL function, with its one `jsonb` argument (`wire.rs` builds it).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Call {
            $($(#[$doc])* $call,)*
        }

        impl Call {
            /// The function's name in the `public` schema (PostgREST's `/rpc/<name>`).
            pub(crate) const fn function(self) -> &'static str {
                match self {
                    $(Call::$call => $function,)*
                }
            }

            /// The statement that calls it over a SQL connection: one per function, so that a
            /// connection prepares it once.
            pub(crate) const fn statement(self) -> &'static str {
                match self {
                    $(Call::$call => concat!("select public.", $function, "($1)"),)*
                }
            }

            /// Whether repeating the call is harmless when its outcome is unknown (no answer, a
            /// 5xx): a read, or a write whose repetition leaves the same state. Only then is
            /// such a failure retryable over REST.
            pub(crate) const fn idempotent(self) -> bool {
                match self {
                    $(Call::$call => $idempotent,)*
                }
            }

            /// Whether the call is a webhook's acknowledgement, which PostgreSQL serves from
            /// connections of its own ([`crate::INTAKE_CONNECTIONS`]) as well as shared ones.
            pub(crate) const fn intake(self) -> bool {
                match self {
                    $(Call::$call => $intake,)*
                }
            }
        }
    };
}

calls! {
    /// `begin_turn`. Not idempotent: a message without an external id would be stored twice.
    BeginTurn => "soul_begin_turn", idempotent: false, intake: false;
    /// `enqueue_turn`: the same function, told to start nothing; not idempotent, as a begin.
    EnqueueTurn => "soul_begin_turn", idempotent: false, intake: true;
    /// `begin_event_turn`: starts a turn, as a begin.
    BeginEventTurn => "soul_begin_event_turn", idempotent: false, intake: false;
    /// `commit_turn`. A repeat of a commit that did apply finds its lease gone and changes
    /// nothing (`lease_lost`).
    CommitTurn => "soul_commit_turn", idempotent: true, intake: false;
    /// `commit_subprocess`: a repeat would apply the changes again.
    CommitSubprocess => "soul_commit_subprocess", idempotent: false, intake: false;
    /// `renew_lease`: setting the same expiry twice is the same as once.
    RenewLease => "soul_renew_lease", idempotent: true, intake: false;
    /// `resume_turn`: starts a turn.
    ResumeTurn => "soul_resume_turn", idempotent: false, intake: false;
    /// `stalled_sessions`: a read (a correlated `exists` on the queue).
    StalledSessions => "soul_stalled_sessions", idempotent: true, intake: false;
    /// `session`: a read.
    Session => "soul_session", idempotent: true, intake: false;
    /// `history`: a read.
    History => "soul_history", idempotent: true, intake: false;
    /// `update_deliveries`: a repeat finds the statuses already moved.
    UpdateDeliveries => "soul_update_deliveries", idempotent: true, intake: false;
    /// `claim_pending_deliveries` (`skip locked`). A claim whose answer was lost holds its
    /// replies until it expires: not repeated.
    ClaimPendingDeliveries => "soul_claim_pending_deliveries", idempotent: false, intake: false;
    /// `claim_session_outbox`: a claim, as above.
    ClaimSessionOutbox => "soul_claim_session_outbox", idempotent: false, intake: false;
    /// `set_opt_out`: keeps the first opt-out time, so a repeat changes nothing.
    SetOptOut => "soul_set_opt_out", idempotent: true, intake: false;
    /// `claim_due_events` (`skip locked`): a claim.
    ClaimDueEvents => "soul_claim_due_events", idempotent: false, intake: false;
    /// `complete_event`: a delete.
    CompleteEvent => "soul_complete_event", idempotent: true, intake: false;
    /// `delete_messages_older_than`: a delete.
    DeleteOldMessages => "soul_delete_old_messages", idempotent: true, intake: false;
    /// `export_user`: a read of nine tables in one snapshot.
    ExportUser => "soul_export_user", idempotent: true, intake: false;
    /// `erase_user`: a delete (every other table cascades from the session); a repeat finds
    /// nothing, or the opt-out record it left and leaves the same again.
    EraseUser => "soul_erase_user", idempotent: true, intake: false;
    /// `Inspect::conversations`: a read.
    InspectConversations => "soul_inspect_conversations", idempotent: true, intake: false;
    /// `Inspect::record_audit`: an insert; a repeat would record the action twice.
    RecordAudit => "soul_inspect_record_audit", idempotent: false, intake: false;
    /// `Inspect::audit_log`: a read.
    AuditLog => "soul_inspect_audit_log", idempotent: true, intake: false;
    /// `turn_log`: a read.
    TurnLog => "soul_turn_log", idempotent: true, intake: false;
    /// `session_state`: a read of six tables in one snapshot.
    SessionState => "soul_session_state", idempotent: true, intake: false;
    /// `restore_session`: a repeat finds the version it bumped and changes nothing (`changed`).
    RestoreSession => "soul_restore_session", idempotent: true, intake: false;
}
