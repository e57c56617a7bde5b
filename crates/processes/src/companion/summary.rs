//! The `summary` subprocess: keeps working memory bounded as the conversation grows.
//!
//! When the conversation (the memories without a region) exceeds [`SUMMARY_THRESHOLD`], the
//! model summarizes everything it sees — the earlier summary included — into the `summary`
//! region, and all but the last [`SUMMARY_KEEP`] conversation memories are dropped from working
//! memory. The stored history keeps every message; only the snapshot the soul thinks with
//! shrinks. One model call, every `SUMMARY_THRESHOLD - SUMMARY_KEEP` memories or so. Sage's
//! memory budget (see `soul_engine::MemoryBudget`) sits above the threshold, so it never drops
//! what the summary has yet to fold in; it bounds only a session whose summaries keep failing.

use std::collections::HashSet;

use soul_engine::MemoryId;
use soul_engine::prelude::*;

use super::{NAME, SOUL};

/// Folds old conversation into the `summary` region.
pub const SUMMARY: Subprocess = subprocess!(soul = SOUL, name = "summary", summary);

/// More conversation memories than this in working memory start a summary.
pub const SUMMARY_THRESHOLD: usize = 24;

/// How many of the most recent conversation memories a summary leaves in place.
pub const SUMMARY_KEEP: usize = 8;

/// How the summary memory begins (the rest is the model's summary).
pub const SUMMARY_PREFIX: &str = "Summary of the conversation so far: ";

async fn summary(cx: ProcessContext) -> ProcessResult {
    let conversation: Vec<MemoryId> = cx.memory().unregioned().map(|m| m.id).collect();
    if conversation.len() <= SUMMARY_THRESHOLD {
        return Ok(Next::stay(cx.memory().clone()));
    }
    let step = summarize(format!(
        "fold in {NAME}'s earlier summary if there is one; what the person is going through, \
         what matters to them, anything about their safety, and what {NAME} said it would do"
    ));
    let (_, text) = cx.mind().run(step, cx.memory()).await?;
    let dropped: HashSet<MemoryId> = conversation[..conversation.len() - SUMMARY_KEEP]
        .iter()
        .copied()
        .collect();
    let memory = cx
        .memory()
        .filter(|m| !dropped.contains(&m.id))
        .with_region(
            Region::summary(),
            [Memory::new(
                Role::System,
                format!("{SUMMARY_PREFIX}{text}"),
                cx.now(),
            )],
        );
    Ok(Next::stay(memory))
}

#[cfg(test)]
mod tests {
    use soul_engine::process::Registry;

    use super::*;

    /// Sage's memory budget must not drop conversation the summary has yet to fold in: it sits
    /// above the threshold by more than a turn adds (a message, a reply and a thought or two).
    #[test]
    fn the_memory_budget_leaves_room_for_the_summary() {
        let sage = Registry::load().unwrap().soul(super::super::SOUL).unwrap();
        assert!(sage.memory_budget().max_memories > SUMMARY_THRESHOLD + SUMMARY_KEEP);
    }
}
