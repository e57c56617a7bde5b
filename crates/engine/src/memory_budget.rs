//! `MemoryBudget`: how much working memory a soul keeps, so that a long conversation costs what
//! a short one does.
//!
//! Working memory is what every model request carries, and what each commit stores as the
//! session's snapshot. Without a bound it grows with every message for as long as a session
//! lasts. The runtime trims it to the soul's budget when a turn starts, before every model
//! request, and before each snapshot is handed back; a soul that summarizes its own past (as
//! Sage does) sets a budget above what its summary leaves, so the budget is only the backstop.
//!
//! What is dropped: the oldest conversation first (the memories without a region), then the
//! oldest memories of the author's own regions. Never the `core` region (the persona), never the
//! `summary` region, and never the newest memory (what the turn answers, or just said).

use std::collections::HashSet;

use crate::memory::{Memory, MemoryId, Region};
use crate::working_memory::WorkingMemory;

/// What a soul's working memory may hold. Set per soul with `memory_budget:` in
/// [`soul!`](crate::soul); [`MemoryBudget::DEFAULT`] otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The most memories outside the `core` and `summary` regions: the conversation (each
    /// message, each reply and each of the soul's thoughts is one) and the author's regions.
    pub max_memories: usize,
    /// The most tokens the whole working memory may come to, by [`estimated_tokens`].
    pub max_tokens: usize,
}

impl MemoryBudget {
    /// 24 memories besides the persona and the summary (a dozen exchanges of a soul that thinks
    /// once per reply), and about 6,000 tokens in all: a few cents of prompt per request at the
    /// models souls use, however long the conversation.
    pub const DEFAULT: MemoryBudget = MemoryBudget {
        max_memories: 24,
        max_tokens: 6_000,
    };

    /// Whether `memory` is within the budget.
    pub fn holds(&self, memory: &WorkingMemory) -> bool {
        let (memories, tokens) = measure(memory);
        memories <= self.max_memories && tokens <= self.max_tokens
    }

    /// `memory` within the budget: the oldest droppable memories removed until it fits (see
    /// the module documentation for which). Returns `memory` itself, unchanged, when it fits
    /// already; when what may not be dropped exceeds the budget alone, that much is kept.
    pub fn trim(&self, memory: &WorkingMemory) -> WorkingMemory {
        let (mut memories, mut tokens) = measure(memory);
        if memories <= self.max_memories && tokens <= self.max_tokens {
            return memory.clone();
        }
        let newest = memory.last().map(|m| m.id);
        let droppable = |m: &&Memory| Some(m.id) != newest && !is_kept(m);
        let conversation = memory
            .iter()
            .filter(droppable)
            .filter(|m| m.region.is_none());
        let own_regions = memory
            .iter()
            .filter(droppable)
            .filter(|m| m.region.is_some());
        let mut dropped = HashSet::<MemoryId>::new();
        for candidate in conversation.chain(own_regions) {
            if memories <= self.max_memories && tokens <= self.max_tokens {
                break;
            }
            dropped.insert(candidate.id);
            memories -= 1;
            tokens -= estimated_tokens(candidate);
        }
        tracing::debug!(
            dropped = dropped.len(),
            kept = memory.len() - dropped.len(),
            "working memory trimmed to its budget"
        );
        memory.filter(|m| !dropped.contains(&m.id))
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget::DEFAULT
    }
}

/// A memory's cost in tokens, estimated without a tokenizer: a token per four bytes of text
/// (English averages about four characters a token; other scripts take more bytes per character,
/// so they are over- rather than under-counted), plus four for the message around it.
pub fn estimated_tokens(memory: &Memory) -> usize {
    let name = memory.name.as_ref().map_or(0, String::len);
    (memory.content.len() + name).div_ceil(4) + 4
}

/// Whether `memory` is in a region the budget never drops.
fn is_kept(memory: &Memory) -> bool {
    memory
        .region
        .as_ref()
        .is_some_and(|region| *region == Region::core() || *region == Region::summary())
}

/// The memories the budget counts, and the estimated tokens of the whole working memory.
fn measure(memory: &WorkingMemory) -> (usize, usize) {
    memory.iter().fold((0, 0), |(memories, tokens), m| {
        (
            memories + usize::from(!is_kept(m)),
            tokens + estimated_tokens(m),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Role;

    fn conversation(turns: usize) -> WorkingMemory {
        let persona = [Memory::system("You are Tess.")];
        let summary = [Memory::system("Summary: they study.")];
        (0..turns)
            .flat_map(|turn| {
                [
                    Memory::user(format!("message {turn}")),
                    Memory::assistant(format!("Tess said: \"reply {turn}\"")),
                ]
            })
            .fold(
                WorkingMemory::new("Tess")
                    .with_region(Region::core(), persona)
                    .with_region(Region::summary(), summary),
                |memory, m| memory.with_memory(m),
            )
    }

    fn contents(memory: &WorkingMemory) -> Vec<&str> {
        memory.iter().map(|m| m.content.as_str()).collect()
    }

    #[test]
    fn within_the_budget_nothing_changes() {
        let memory = conversation(3);
        let budget = MemoryBudget {
            max_memories: 6,
            max_tokens: 1000,
        };
        assert!(budget.holds(&memory));
        assert_eq!(budget.trim(&memory), memory);
    }

    #[test]
    fn the_oldest_conversation_goes_first_and_the_regions_stay() {
        let memory = conversation(5);
        let budget = MemoryBudget {
            max_memories: 3,
            max_tokens: 1000,
        };
        let trimmed = budget.trim(&memory);
        assert_eq!(
            contents(&trimmed),
            [
                "You are Tess.",
                "Summary: they study.",
                "Tess said: \"reply 3\"",
                "message 4",
                "Tess said: \"reply 4\"",
            ]
        );
        assert!(budget.holds(&trimmed));
    }

    #[test]
    fn tokens_bound_what_a_few_long_memories_carry() {
        let long = "word ".repeat(400); // 2,000 bytes: 504 tokens.
        let memory = conversation(1)
            .with_memory(Memory::user(long.clone()))
            .with_memory(Memory::user(long.clone()))
            .with_memory(Memory::assistant("Tess said: \"ok\""));
        let budget = MemoryBudget {
            max_memories: 100,
            max_tokens: 700,
        };
        let trimmed = budget.trim(&memory);
        assert!(budget.holds(&trimmed), "{trimmed:?}");
        assert_eq!(trimmed.iter().filter(|m| m.content == long).count(), 1);
        assert_eq!(trimmed.last().unwrap().content, "Tess said: \"ok\"");
    }

    #[test]
    fn the_persona_the_summary_and_the_newest_memory_are_never_dropped() {
        let huge = Memory::new(Role::User, "x".repeat(10_000), chrono::Utc::now());
        let memory = conversation(2).with_memory(huge.clone());
        let budget = MemoryBudget {
            max_memories: 1,
            max_tokens: 10,
        };
        let trimmed = budget.trim(&memory);
        assert_eq!(
            contents(&trimmed),
            [
                "You are Tess.",
                "Summary: they study.",
                huge.content.as_str()
            ]
        );
    }

    #[test]
    fn the_authors_regions_go_after_the_conversation() {
        let notes = Region::new("notes").unwrap();
        let memory = conversation(2).with_region(notes.clone(), [Memory::system("likes tea")]);
        let budget = MemoryBudget {
            max_memories: 2,
            max_tokens: 1000,
        };
        let trimmed = budget.trim(&memory);
        assert_eq!(trimmed.region(&notes).count(), 1);
        assert_eq!(trimmed.unregioned().count(), 1);

        let budget = MemoryBudget {
            max_memories: 1,
            max_tokens: 1000,
        };
        assert_eq!(budget.trim(&memory).region(&notes).count(), 0);
    }
}
