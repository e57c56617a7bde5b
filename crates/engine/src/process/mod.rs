//! Mental processes: how an author's Rust modules become a soul.
//!
//! - Registration: [`mental_process!`](crate::mental_process),
//!   [`subprocess!`](crate::subprocess) and [`soul!`](crate::soul), validated by [`Registry`];
//!   the process macros yield the handles ([`MentalProcess`], [`Subprocess`]) code names
//!   processes by.
//! - What a process sees and does ([`ProcessContext`]) and returns ([`Next`]).
//! - Soul memory and process memory, recorded as change sets ([`KeyValueMemory`]).
//! - The limit a caller puts on replies ([`ReplyLimit`]), and where a reply goes while it is
//!   written ([`ReplyStream`]).
//! - One turn, `state + perception → outcome`, main part then subprocesses ([`Runtime`]).

mod context;
mod kv;
pub(crate) mod registry;
mod reply;
mod runtime;

pub use context::{
    EventId, Next, Perception, PerceptionKind, ProcessContext, ProcessError, ProcessResult,
    ScheduledEvent, Transition,
};
pub use kv::{KeyValueMemory, MemoryChanges, MemoryError};
pub use registry::{
    IntegratorFn, MentalProcess, ModelSettings, Registry, RegistryError, Soul, Subprocess,
    default_integrator, without_leading_system_prompt,
};
pub use reply::{ReplyLimit, ReplyStream};
pub use runtime::{
    MainOutcome, ProcessState, RUN_NOW_LIMIT, Runtime, SoulState, SubprocessOutcome, TurnError,
};
