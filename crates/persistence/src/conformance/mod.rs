//! The conformance suite: every behaviour of the turn contract, written once and run against
//! every backend.
//!
//! A backend's test file implements [`Harness`] (how to open another store on the test's
//! database) and invokes [`conformance_suite!`](crate::conformance_suite), which makes one
//! `#[tokio::test]` per function of this module. The functions panic on a failed expectation.
//!
//! The cases live in a file per topic and are re-exported here, so that the macro names them all
//! by one path; its list is kept by hand, and the `coverage` tests fail when a case is missing
//! from it or a backend's test file does not run it.

use std::sync::Arc;

use crate::{Address, Inspect, Store, StoreFuture};

mod concurrency;
#[cfg(test)]
mod coverage;
mod data_requests;
mod events;
mod fixtures;
mod inspect;
mod lines;
mod opt_out;
mod outbox;
mod pending;
mod retention;
mod sessions;
mod turn_log;
mod turns;

pub use concurrency::*;
pub use data_requests::*;
pub use events::*;
pub use inspect::*;
pub use lines::*;
pub use opt_out::*;
pub use outbox::*;
pub use pending::*;
pub use retention::*;
pub use sessions::*;
pub use turn_log::*;
pub use turns::*;

/// One test's database, fresh and empty.
pub trait Harness: Send + Sync {
    /// Opens a store on the test's database. Every call opens a new one (its own connections),
    /// as another gateway process would.
    fn open(&self) -> StoreFuture<'_, Arc<dyn Store>>;

    /// Opens a store on the test's database as an inspector sees it.
    fn open_inspect(&self) -> StoreFuture<'_, Arc<dyn Inspect>>;

    /// Overwrites the stored working-memory snapshot of `address`'s session with `json`, as a
    /// release with another snapshot format would have left it (through a store only readable
    /// snapshots are stored).
    fn overwrite_snapshot<'a>(&'a self, address: &'a Address, json: &'a str)
    -> StoreFuture<'a, ()>;
}

/// Instantiates every conformance test for a backend: `conformance_suite!(harness_expr)`, where
/// the expression evaluates (awaited) to a [`Harness`].
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::conformance_suite!(@tests $harness;
            first_message_creates_session_with_seed_defaults,
            no_row_is_not_an_error,
            invalid_settings_change_nothing,
            soul_memory_upserts_on_session_and_key,
            process_memory_upserts_on_session_process_and_key,
            subprocess_memories_are_loaded_by_every_begin,
            history_is_latest_first_limited_and_regioned,
            history_comes_only_without_a_readable_snapshot,
            timeout_starts_new_session_and_clears_ephemeral_state,
            repeated_external_id_is_a_duplicate,
            busy_session_queues_and_commit_hands_over_next,
            enqueued_message_waits_for_a_resume,
            enqueued_message_keeps_its_place_before_a_later_begin,
            unregistered_process_state_is_corrected,
            expired_lease_is_taken_over,
            turn_attempts_count_the_starts_of_each_message,
            renewed_lease_is_not_taken_over,
            subprocess_commit_is_refused_after_newer_turn,
            delivery_status_only_moves_forward,
            delivery_updates_together_apply_in_order_each_as_alone,
            session_outbox_holds_its_own_pending_replies_and_the_opt_out,
            commit_tells_the_sender_of_earlier_pending_replies_and_the_opt_out,
            a_commit_claims_its_replies_for_their_sender,
            a_claimed_reply_is_not_handed_out_again_until_its_claim_expires,
            concurrent_claims_of_stale_replies_are_disjoint,
            the_session_outbox_claims_earlier_replies_whose_claim_expired,
            opt_out_is_recorded,
            a_keyword_changes_the_opt_out_with_its_message_and_a_replay_changes_nothing,
            due_events_are_claimed_and_completed,
            event_turn_leaves_conversation_count_and_timeout_alone,
            event_waits_its_turn_in_session_order,
            event_fired_twice_runs_one_turn,
            event_for_opted_out_person_runs_no_turn,
            a_started_turn_lists_pending_events_and_the_messages_behind_it,
            an_event_turn_lists_the_other_events_and_an_event_waits_with_the_messages,
            a_turn_lists_at_most_pending_limit_of_each,
            old_messages_are_deleted,
            retention_deletes_every_copy_of_an_old_message,
            export_and_erase_one_user,
            export_holds_every_column_of_the_schema,
            erasing_someone_who_opted_out_keeps_only_their_opt_out,
            erasure_waits_for_a_running_turn,
            a_number_has_one_conversation_per_line,
            a_conversation_runs_its_own_souls_processes,
            conversations_are_listed_latest_first_with_what_needs_attention,
            each_conversation_filter_selects_its_conversations,
            audit_entries_are_kept_newest_first_and_outlive_an_erasure,
            the_session_state_names_the_conversations_soul,
            the_commit_writes_the_turn_record,
            a_spoken_answer_is_stored_once_with_its_reply,
            a_fallback_turn_records_how_it_ended,
            a_subprocess_commit_adds_its_part_to_the_record,
            rewind_restores_the_state_after_a_turn,
            rewind_is_refused_while_a_turn_runs,
            retention_deletes_old_turn_records,
            concurrent_first_messages_make_one_session,
            many_senders_many_workers_exactly_once_in_order,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $harness.await;
                $crate::conformance::$name(&harness).await;
            }
        )*
    };
}
