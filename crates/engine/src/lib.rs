#![doc = include_str!("../README.md")]

pub mod clock;
pub mod memory;
pub mod memory_budget;
pub mod model;
pub mod retry;
pub mod step;
pub mod text;
pub mod working_memory;

pub use clock::{Clock, SystemClock};
pub use memory::{Memory, MemoryId, Region, RegionError, Role};
pub use memory_budget::MemoryBudget;
pub use model::{
    ChatMessage, ChatOptions, ChatRequest, Completion, LanguageModel, ModelError, Usage,
};
pub use working_memory::{WorkingMemory, WorkingMemoryError};
pub mod process;

#[doc(hidden)]
pub mod __private {
    //! Re-exports the registration macros expand to, so authors need no `inventory` dependency.
    pub use inventory;
}

pub mod guide {
    //! The authoring guide (`docs/authoring.md`): how to write, register and test a soul.
    #![doc = include_str!("../../../docs/authoring.md")]
}
