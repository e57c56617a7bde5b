#![doc = include_str!("../README.md")]

mod clock;
mod memory;
mod memory_budget;
pub mod model;
pub mod process;
pub mod retry;
pub mod step;
pub mod text;
mod working_memory;

// Working memory's vocabulary lives at the crate's root, one path each; the modules with more in
// them (`model`, `process`, `step`, `retry`, `text`) are reached through their names.
pub use clock::{Clock, SystemClock};
pub use memory::{Memory, MemoryId, Region, RegionError, Role, UNREGIONED};
pub use memory_budget::{MemoryBudget, estimated_tokens};
pub use working_memory::{
    IntoMemories, JSON_VERSION, MemoryIndex, WorkingMemory, WorkingMemoryError,
};

pub mod prelude {
    //! What a process module needs, in one `use`:
    //!
    //! ```
    //! use soul_engine::prelude::*;
    //! ```
    //!
    //! The registration macros and the handles they yield, what a process receives and returns,
    //! the built-in cognitive steps, and working memory's vocabulary.

    pub use crate::process::{
        MentalProcess, ModelSettings, Next, Perception, PerceptionKind, ProcessContext,
        ProcessError, ProcessResult, ScheduledEvent, Subprocess,
    };
    pub use crate::step::{
        brainstorm, decision, external_dialog, instruction, internal_monologue, mental_query,
        summarize, typed,
    };
    pub use crate::{Memory, MemoryBudget, Region, Role, WorkingMemory};
    pub use crate::{mental_process, soul, subprocess};
}

#[doc(hidden)]
pub mod __private {
    //! What the registration macros expand to (so authors need no `inventory` dependency); not
    //! part of the API.
    pub use inventory;

    pub use crate::process::registry::{
        ProcessFn, ProcessKind, ProcessRegistration, SoulRegistration, mental_process_handle,
        subprocess_handle,
    };
}

pub mod guide {
    //! The authoring guide (`docs/authoring.md`): how to write, register and test a soul.
    #![doc = include_str!("../../../docs/authoring.md")]
}
