//! Mental processes: how an author's Rust modules become a soul.
//!
//! - [`registry`]: compile-time registration ([`mental_process!`](crate::mental_process),
//!   [`subprocess!`](crate::subprocess), [`soul!`](crate::soul)) and the validated [`Registry`].
//! - [`context`]: what a process sees and does ([`ProcessContext`]) and returns ([`Next`]).
//! - [`kv`]: soul memory and process memory, recorded as change sets.
//! - [`reply`]: the limit a caller puts on replies ([`ReplyLimit`]).
//! - [`runtime`]: one turn, `state + perception → outcome`, main part then subprocesses.

pub mod context;
pub mod kv;
pub mod registry;
pub mod reply;
pub mod runtime;

pub use context::{
    EventId, Next, Perception, PerceptionKind, ProcessContext, ProcessError, ProcessResult,
    ScheduledEvent, Transition,
};
pub use kv::{KeyValueMemory, MemoryChanges, MemoryError};
pub use registry::{
    ModelSettings, Process, ProcessKind, ProcessRegistration, Registry, RegistryError, Soul,
    SoulRegistration, default_integrator, without_leading_system_prompt,
};
pub use reply::ReplyLimit;
pub use runtime::{
    MainOutcome, ProcessState, RUN_NOW_LIMIT, Runtime, SoulState, SubprocessOutcome, TurnError,
};
