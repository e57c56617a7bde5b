//! The compile-time registry of souls and mental processes.
//!
//! Authors register with [`mental_process!`](crate::mental_process),
//! [`subprocess!`](crate::subprocess) and [`soul!`](crate::soul); the macros submit
//! registrations to `inventory`, so a process exists by being compiled in. Each process macro
//! yields a handle ([`MentalProcess`], [`Subprocess`]) that transitions, scheduled events and the
//! soul's registration name it by, so a misspelt process is a compile error.
//! [`Registry::load`] gathers every registration once at start-up and refuses an inconsistent
//! set with an error naming every problem and where each offending registration was written;
//! [`Registry::load_soul`] checks one soul only, for tests.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::memory::{Memory, Region, Role};
use crate::memory_budget::MemoryBudget;
use crate::model::{BoxFuture, ChatOptions};
use crate::process::context::{ProcessContext, ProcessResult};
use crate::working_memory::WorkingMemory;

/// The signature every registered process has after the macro's shim.
#[doc(hidden)]
pub type ProcessFn = fn(ProcessContext) -> BoxFuture<'static, ProcessResult>;

/// An integrator: builds a turn's working memory from the stored one and the incoming
/// perception (see [`default_integrator`]).
pub type IntegratorFn = fn(&Soul, WorkingMemory, &crate::process::Perception) -> WorkingMemory;

/// A main mental process of a soul: what [`Next::to`](crate::process::Next::to),
/// [`ProcessContext::schedule`] and [`soul!`](crate::soul)'s `initial_process` take.
///
/// Only [`mental_process!`](crate::mental_process) makes one, together with the registration of
/// the process it names, so a handle always names a process that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MentalProcess {
    soul: &'static str,
    name: &'static str,
}

impl MentalProcess {
    /// The process's name, unique within its soul (what the store records).
    pub fn name(self) -> &'static str {
        self.name
    }

    /// The name of the soul it belongs to.
    pub fn soul(self) -> &'static str {
        self.soul
    }
}

impl fmt::Display for MentalProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// A subprocess of a soul: what [`soul!`](crate::soul)'s `subprocesses` lists. Only
/// [`subprocess!`](crate::subprocess) makes one. A transition cannot name a subprocess: the types
/// differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subprocess {
    soul: &'static str,
    name: &'static str,
}

impl Subprocess {
    /// The subprocess's name, unique within its soul.
    pub fn name(self) -> &'static str {
        self.name
    }

    /// The name of the soul it belongs to.
    pub fn soul(self) -> &'static str {
        self.soul
    }
}

impl fmt::Display for Subprocess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// The handle [`mental_process!`](crate::mental_process) yields.
#[doc(hidden)]
pub const fn mental_process_handle(soul: &'static str, name: &'static str) -> MentalProcess {
    MentalProcess { soul, name }
}

/// The handle [`subprocess!`](crate::subprocess) yields.
#[doc(hidden)]
pub const fn subprocess_handle(soul: &'static str, name: &'static str) -> Subprocess {
    Subprocess { soul, name }
}

/// Whether a registered function is a main process or a subprocess.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKind {
    /// Answers perceptions and decides the next process.
    Main,
    /// Runs after the main process, on its resulting memory.
    Subprocess,
}

/// One registered process, made by the macros.
#[doc(hidden)]
#[derive(Debug)]
pub struct ProcessRegistration {
    /// The soul it belongs to.
    pub soul: &'static str,
    /// Its name, unique within the soul.
    pub name: &'static str,
    /// Main process or subprocess.
    pub kind: ProcessKind,
    /// The function.
    pub run: ProcessFn,
    /// `file:line` of the registration, for error messages.
    pub location: &'static str,
}

/// Model settings of a soul, applied to every step unless a step asks otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelSettings {
    /// A model name or alias (`fast`, `quality`); `None` uses the model's default.
    pub model: Option<&'static str>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Upper bound on a step's answer tokens.
    pub max_tokens: Option<u32>,
}

/// One registered soul, made by [`soul!`](crate::soul).
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct SoulRegistration {
    /// Its name, unique among souls.
    pub name: &'static str,
    /// The name it goes by in conversation ("Sage").
    pub display_name: &'static str,
    /// The persona, placed in the `core` region as system memories.
    pub persona: &'static [&'static str],
    /// The process a new session starts in.
    pub initial_process: MentalProcess,
    /// Subprocesses, in the order they run.
    pub subprocesses: &'static [Subprocess],
    /// A custom integrator; `None` uses [`default_integrator`].
    pub integrator: Option<IntegratorFn>,
    /// Model settings.
    pub model: ModelSettings,
    /// What its working memory may hold, and so what each model request carries.
    pub memory_budget: MemoryBudget,
    /// `file:line` of the registration.
    pub location: &'static str,
}

inventory::collect!(ProcessRegistration);
inventory::collect!(SoulRegistration);

/// A registered process as the runtime runs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Registered {
    /// Its name.
    pub(crate) name: &'static str,
    /// The function.
    pub(crate) run: ProcessFn,
}

/// A soul with its processes, validated.
#[derive(Debug)]
pub struct Soul {
    registration: &'static SoulRegistration,
    processes: BTreeMap<&'static str, Registered>,
    subprocesses: Vec<Registered>,
}

impl Soul {
    /// The soul's registered name.
    pub fn name(&self) -> &'static str {
        self.registration.name
    }

    /// The name it goes by in conversation (`soul!`'s `display_name`): working memory's soul
    /// name, which steps use to phrase instructions ("How does Sage answer?") and to strip
    /// `Sage said:` from answers.
    pub fn display_name(&self) -> &'static str {
        self.registration.display_name
    }

    /// The state of this soul meeting someone for the first time.
    pub fn new_state(&self) -> crate::process::SoulState {
        crate::process::SoulState::new(self.display_name())
    }

    /// The process a new session starts in.
    pub fn initial_process(&self) -> MentalProcess {
        self.registration.initial_process
    }

    /// The main process called `name` (a name read back from a store).
    pub fn process(&self, name: &str) -> Option<MentalProcess> {
        self.processes
            .get(name)
            .map(|p| mental_process_handle(self.name(), p.name))
    }

    /// Every main process, by name.
    pub fn processes(&self) -> impl Iterator<Item = MentalProcess> + '_ {
        self.processes
            .values()
            .map(|p| mental_process_handle(self.name(), p.name))
    }

    /// The subprocesses, in the order they run.
    pub fn subprocesses(&self) -> &'static [Subprocess] {
        self.registration.subprocesses
    }

    /// The main process `process` names, if it is one of this soul's.
    pub(crate) fn registered(&self, process: MentalProcess) -> Option<Registered> {
        if process.soul != self.name() {
            return None;
        }
        self.processes.get(process.name).copied()
    }

    /// The main process called `name`, to run.
    pub(crate) fn registered_by_name(&self, name: &str) -> Option<Registered> {
        self.processes.get(name).copied()
    }

    /// The subprocesses to run, in order.
    pub(crate) fn registered_subprocesses(&self) -> &[Registered] {
        &self.subprocesses
    }

    /// The process a new session starts in, to run.
    pub(crate) fn registered_initial(&self) -> Registered {
        // `Registry` refuses a soul whose initial process is not one of its main processes.
        self.processes[self.registration.initial_process.name]
    }

    /// The persona as `core` memories.
    pub fn persona(&self) -> Vec<Memory> {
        self.registration
            .persona
            .iter()
            .map(|text| Memory::new(Role::System, *text, chrono::DateTime::UNIX_EPOCH))
            .collect()
    }

    /// Chat options from the soul's model settings.
    pub fn chat_options(&self) -> ChatOptions {
        let settings = self.registration.model;
        ChatOptions {
            model: settings.model.map(str::to_owned),
            temperature: settings.temperature,
            max_tokens: settings.max_tokens,
            ..ChatOptions::default()
        }
    }

    /// What the soul's working memory may hold.
    pub fn memory_budget(&self) -> MemoryBudget {
        self.registration.memory_budget
    }

    /// Builds the turn's working memory with the soul's integrator.
    pub fn integrate(
        &self,
        stored: WorkingMemory,
        perception: &crate::process::Perception,
    ) -> WorkingMemory {
        let integrator = self.registration.integrator.unwrap_or(default_integrator);
        integrator(self, stored, perception)
    }
}

/// The default integrator: the persona replaces the `core` region and any system prompt a process
/// left at the head of the conversation (see [`without_leading_system_prompt`]), regions are
/// ordered `core` then `summary` then the conversation, and the perception is appended as
/// [`Perception::to_memory`](crate::process::Perception::to_memory) renders it.
pub fn default_integrator(
    soul: &Soul,
    stored: WorkingMemory,
    perception: &crate::process::Perception,
) -> WorkingMemory {
    let persona = soul.persona();
    let conversation = without_leading_system_prompt(&stored);
    // Unchanged, the persona keeps the memories (and ids) it had: a snapshot then differs from
    // the one before only where the conversation does, which is what the turn log keeps.
    let unchanged = stored.region(&Region::core()).count() == persona.len()
        && stored
            .region(&Region::core())
            .zip(&persona)
            .all(|(kept, line)| {
                Memory {
                    id: kept.id,
                    ..line.clone().in_region(Region::core())
                } == *kept
            });
    let with_persona = if unchanged {
        conversation
    } else {
        conversation.with_region(Region::core(), persona)
    };
    // The order holds no duplicates, so this cannot fail; fall back to the unordered memory anyway.
    let ordered = with_persona
        .with_region_order([Region::core(), Region::summary()])
        .unwrap_or(with_persona);
    ordered.with_memory(perception.to_memory())
}

/// `memory` without the system memories that have no region and come before the rest of the
/// conversation: a system prompt a process put there (OpenSouls' integrator drops such a leading
/// system memory too). The persona is the system prompt of every turn, so an earlier prompt is
/// stale and would otherwise be carried forward next to it.
pub fn without_leading_system_prompt(memory: &WorkingMemory) -> WorkingMemory {
    let mut conversation_started = false;
    memory.filter(|m| {
        if m.region.is_some() || conversation_started {
            return true;
        }
        conversation_started = m.role != Role::System;
        conversation_started
    })
}

/// Every registered soul, validated.
#[derive(Debug)]
pub struct Registry {
    souls: BTreeMap<&'static str, Arc<Soul>>,
}

/// What is wrong with the registered set; lists every problem, not just the first.
#[derive(Debug, thiserror::Error)]
#[error("the souls cannot be loaded:\n{}", .problems.join("\n"))]
pub struct RegistryError {
    /// One line per problem.
    pub problems: Vec<String>,
}

impl Registry {
    /// Gathers every soul and process compiled into this binary. A program that runs souls
    /// calls it once at start-up, so that any inconsistency stops it there.
    pub fn load() -> Result<Self, RegistryError> {
        Self::from_parts(
            inventory::iter::<SoulRegistration>.into_iter().collect(),
            inventory::iter::<ProcessRegistration>.into_iter().collect(),
        )
    }

    /// The soul called `name`, checked with its own processes only: another soul's mistakes,
    /// compiled into the same binary, do not stop it (a test of one soul is not broken by a
    /// registration elsewhere).
    pub fn load_soul(name: &str) -> Result<Arc<Soul>, RegistryError> {
        let registry = Self::from_parts(
            inventory::iter::<SoulRegistration>
                .into_iter()
                .filter(|s| s.name == name)
                .collect(),
            inventory::iter::<ProcessRegistration>
                .into_iter()
                .filter(|p| p.soul == name)
                .collect(),
        )?;
        registry.soul(name).ok_or_else(|| RegistryError {
            problems: vec![format!(
                "no soul named `{name}` is registered in this binary (a soul is registered by \
                 linking the crate that defines it, and a binary links a crate only if it names \
                 something of it)"
            )],
        })
    }

    fn from_parts(
        souls: Vec<&'static SoulRegistration>,
        processes: Vec<&'static ProcessRegistration>,
    ) -> Result<Self, RegistryError> {
        let mut problems = Vec::new();
        let mut by_soul: BTreeMap<&str, BTreeMap<&str, &ProcessRegistration>> = BTreeMap::new();
        for p in processes {
            let names = by_soul.entry(p.soul).or_default();
            if let Some(first) = names.get(p.name) {
                problems.push(format!(
                    "soul `{}` has two processes named `{}`: {} and {}",
                    p.soul, p.name, first.location, p.location
                ));
            } else {
                names.insert(p.name, p);
            }
        }

        let mut registry = BTreeMap::new();
        for s in souls {
            if let Some(first) = registry
                .get(s.name)
                .map(|soul: &Arc<Soul>| soul.registration)
            {
                problems.push(format!(
                    "two souls are named `{}`: {} and {}",
                    s.name, first.location, s.location
                ));
                continue;
            }
            let registered = by_soul.remove(s.name).unwrap_or_default();
            let soul = Soul {
                registration: s,
                processes: registered
                    .values()
                    .filter(|p| p.kind == ProcessKind::Main)
                    .map(|p| {
                        (
                            p.name,
                            Registered {
                                name: p.name,
                                run: p.run,
                            },
                        )
                    })
                    .collect(),
                subprocesses: checked_subprocesses(s, &registered, &mut problems),
            };
            let initial = s.initial_process;
            if initial.soul != s.name {
                problems.push(format!(
                    "soul `{}` ({}) starts in `{}`, a process of soul `{}`",
                    s.name, s.location, initial.name, initial.soul
                ));
            } else if !soul.processes.contains_key(initial.name) {
                problems.push(format!(
                    "soul `{}` ({}) starts in `{}`, which is not a registered main process",
                    s.name, s.location, initial.name
                ));
            }
            if s.memory_budget.max_memories == 0 || s.memory_budget.max_tokens == 0 {
                problems.push(format!(
                    "soul `{}` ({}) has a memory budget of zero: it could not remember the \
                     message it answers",
                    s.name, s.location
                ));
            }
            registry.insert(s.name, Arc::new(soul));
        }
        for (soul, processes) in by_soul {
            for p in processes.values() {
                problems.push(format!(
                    "process `{}` ({}) belongs to soul `{soul}`, which is not registered",
                    p.name, p.location
                ));
            }
        }
        if problems.is_empty() {
            Ok(Registry { souls: registry })
        } else {
            Err(RegistryError { problems })
        }
    }

    /// The soul called `name`.
    pub fn soul(&self, name: &str) -> Option<Arc<Soul>> {
        self.souls.get(name).cloned()
    }

    /// The names of every soul.
    pub fn soul_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.souls.keys().copied()
    }
}

/// The subprocesses `soul` lists, in its order; a listed one that is not a registered
/// subprocess of the soul, one listed twice, and a registered one left out (it would never run)
/// are problems.
fn checked_subprocesses(
    soul: &SoulRegistration,
    registered: &BTreeMap<&str, &ProcessRegistration>,
    problems: &mut Vec<String>,
) -> Vec<Registered> {
    let mut listed = Vec::new();
    for (i, handle) in soul.subprocesses.iter().enumerate() {
        if handle.soul != soul.name {
            problems.push(format!(
                "soul `{}` ({}) lists subprocess `{}` of soul `{}`",
                soul.name, soul.location, handle.name, handle.soul
            ));
            continue;
        }
        if soul.subprocesses[..i].contains(handle) {
            problems.push(format!(
                "soul `{}` ({}) lists subprocess `{}` twice",
                soul.name, soul.location, handle.name
            ));
            continue;
        }
        match registered.get(handle.name) {
            Some(p) if p.kind == ProcessKind::Subprocess => listed.push(Registered {
                name: p.name,
                run: p.run,
            }),
            _ => problems.push(format!(
                "soul `{}` ({}) lists subprocess `{}`, which is not a registered subprocess",
                soul.name, soul.location, handle.name
            )),
        }
    }
    for p in registered.values() {
        if p.kind == ProcessKind::Subprocess && !listed.iter().any(|l| l.name == p.name) {
            problems.push(format!(
                "subprocess `{}` ({}) is not in the `subprocesses` of soul `{}` ({}), so it \
                 would never run",
                p.name, p.location, soul.name, soul.location
            ));
        }
    }
    listed
}

/// Registers an async fn as a main mental process of a soul and yields its [`MentalProcess`]
/// handle: keep it in a `const`, and name the process by it.
///
/// ```
/// use soul_engine::prelude::*;
///
/// pub const SMALL_TALK: MentalProcess =
///     mental_process!(soul = "sam", name = "small_talk", small_talk);
///
/// async fn small_talk(cx: ProcessContext) -> ProcessResult {
///     cx.speak("Hello!");
///     Ok(Next::stay(cx.memory().clone()))
/// }
/// # soul! { name: "sam", persona: &[], initial_process: SMALL_TALK }
/// # fn main() { soul_engine::process::Registry::load().unwrap(); }
/// ```
///
/// `soul` is the soul's name (a literal or a `&str` constant); `name` is unique within the
/// soul and is what the store records, so renaming a process moves the people in it to the
/// initial process. See the [authoring guide](crate::guide).
#[macro_export]
macro_rules! mental_process {
    (soul = $soul:expr, name = $name:literal, $function:path $(,)?) => {{
        $crate::__register_process!(
            $soul,
            $name,
            $function,
            $crate::__private::ProcessKind::Main
        );
        $crate::__private::mental_process_handle($soul, $name)
    }};
}

/// Registers an async fn as a subprocess of a soul and yields its [`Subprocess`] handle, which
/// the soul's `subprocesses` lists (that list fixes the order they run in).
///
/// ```
/// use soul_engine::prelude::*;
///
/// pub const COUNT: Subprocess = subprocess!(soul = "sid", name = "count", count);
///
/// async fn count(cx: ProcessContext) -> ProcessResult {
///     let seen: u32 = cx.soul_memory().get("seen")?.unwrap_or(0);
///     cx.soul_memory().set("seen", &(seen + 1))?;
///     Ok(Next::stay(cx.memory().clone()))
/// }
/// # const TALK: MentalProcess = mental_process!(soul = "sid", name = "talk", count);
/// # soul! { name: "sid", persona: &[], initial_process: TALK, subprocesses: &[COUNT] }
/// # fn main() { soul_engine::process::Registry::load().unwrap(); }
/// ```
#[macro_export]
macro_rules! subprocess {
    (soul = $soul:expr, name = $name:literal, $function:path $(,)?) => {{
        $crate::__register_process!(
            $soul,
            $name,
            $function,
            $crate::__private::ProcessKind::Subprocess
        );
        $crate::__private::subprocess_handle($soul, $name)
    }};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __register_process {
    ($soul:expr, $name:literal, $function:path, $kind:expr) => {
        const _: () = {
            fn shim(
                context: $crate::process::ProcessContext,
            ) -> $crate::model::BoxFuture<'static, $crate::process::ProcessResult> {
                ::std::boxed::Box::pin($function(context))
            }
            $crate::__private::inventory::submit! {
                $crate::__private::ProcessRegistration {
                    soul: $soul,
                    name: $name,
                    kind: $kind,
                    run: shim,
                    location: concat!(file!(), ":", line!()),
                }
            }
        };
    };
}

/// Registers a soul.
///
/// ```
/// use soul_engine::prelude::*;
///
/// soul! {
///     name: "samantha",
///     display_name: "Samantha",
///     persona: &["You are Samantha, a warm companion."],
///     initial_process: INTRODUCTION,
///     subprocesses: &[SUMMARIZE],
///     model: ModelSettings { model: Some("quality"), temperature: Some(0.7), max_tokens: None },
///     memory_budget: MemoryBudget { max_memories: 40, max_tokens: 8_000 },
/// }
/// # const INTRODUCTION: MentalProcess = mental_process!(soul = "samantha", name = "introduction", keep);
/// # const SUMMARIZE: Subprocess = subprocess!(soul = "samantha", name = "summarize", keep);
/// # async fn keep(cx: ProcessContext) -> ProcessResult { Ok(Next::stay(cx.memory().clone())) }
/// # fn main() { soul_engine::process::Registry::load().unwrap(); }
/// ```
///
/// `display_name` (default: `name`), `subprocesses`, `integrator`, `model` and `memory_budget`
/// (default: [`MemoryBudget::DEFAULT`](crate::MemoryBudget::DEFAULT)) are optional.
/// `display_name` is what the soul is called in conversation: working memory's soul name, which
/// the built-in steps put in their instructions and strip from answers (`Samantha said: "..."`).
#[macro_export]
macro_rules! soul {
    (
        name: $name:literal,
        $(display_name: $display_name:expr,)?
        persona: $persona:expr,
        initial_process: $initial:expr
        $(, subprocesses: $subprocesses:expr)?
        $(, integrator: $integrator:expr)?
        $(, model: $model:expr)?
        $(, memory_budget: $memory_budget:expr)?
        $(,)?
    ) => {
        $crate::__private::inventory::submit! {
            $crate::__private::SoulRegistration {
                name: $name,
                display_name: $crate::__first!($($display_name,)? $name),
                persona: $persona,
                initial_process: $initial,
                subprocesses: $crate::__first!($($subprocesses,)? &[]),
                integrator: $crate::__first!($(Some($integrator),)? None),
                model: $crate::__first!($($model,)? $crate::process::ModelSettings {
                    model: None,
                    temperature: None,
                    max_tokens: None,
                }),
                memory_budget: $crate::__first!(
                    $($memory_budget,)? $crate::MemoryBudget::DEFAULT
                ),
                location: concat!(file!(), ":", line!()),
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __first {
    ($first:expr $(, $rest:expr)* $(,)?) => {
        $first
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop(_: ProcessContext) -> BoxFuture<'static, ProcessResult> {
        unreachable!("never run by these tests")
    }

    fn registration(
        soul: &'static str,
        name: &'static str,
        kind: ProcessKind,
        location: &'static str,
    ) -> &'static ProcessRegistration {
        Box::leak(Box::new(ProcessRegistration {
            soul,
            name,
            kind,
            run: noop,
            location,
        }))
    }

    fn process(
        soul: &'static str,
        name: &'static str,
        location: &'static str,
    ) -> &'static ProcessRegistration {
        registration(soul, name, ProcessKind::Main, location)
    }

    fn sub(soul: &'static str, name: &'static str) -> &'static ProcessRegistration {
        registration(soul, name, ProcessKind::Subprocess, "sub.rs:1")
    }

    fn soul(
        name: &'static str,
        initial: MentalProcess,
        subprocesses: &'static [Subprocess],
    ) -> &'static SoulRegistration {
        Box::leak(Box::new(SoulRegistration {
            name,
            display_name: name,
            persona: &[],
            initial_process: initial,
            subprocesses,
            integrator: None,
            model: ModelSettings::default(),
            memory_budget: MemoryBudget::DEFAULT,
            location: "souls.rs:1",
        }))
    }

    const A_X: MentalProcess = mental_process_handle("a", "x");

    #[test]
    fn every_problem_is_reported_with_its_locations() {
        const NOPE: Subprocess = subprocess_handle("a", "nope");
        let err = Registry::from_parts(
            vec![
                soul("a", mental_process_handle("a", "missing"), &[NOPE]),
                soul("a", A_X, &[]),
            ],
            vec![
                process("a", "x", "one.rs:3"),
                process("a", "x", "two.rs:9"),
                process("ghost", "y", "g.rs:1"),
            ],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("two processes named `x`: one.rs:3 and two.rs:9"),
            "{text}"
        );
        assert!(text.contains("starts in `missing`"), "{text}");
        assert!(text.contains("lists subprocess `nope`"), "{text}");
        assert!(text.contains("two souls are named `a`"), "{text}");
        assert!(text.contains("belongs to soul `ghost`"), "{text}");
        assert_eq!(err.problems.len(), 5);
    }

    #[test]
    fn a_soul_naming_another_souls_processes_is_refused() {
        const B_SUB: Subprocess = subprocess_handle("b", "s");
        let err = Registry::from_parts(
            vec![
                soul("a", mental_process_handle("b", "y"), &[B_SUB]),
                soul("b", mental_process_handle("b", "y"), &[B_SUB]),
            ],
            vec![
                process("a", "x", "x.rs:1"),
                process("b", "y", "y.rs:1"),
                sub("b", "s"),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err.problems,
            [
                "soul `a` (souls.rs:1) lists subprocess `s` of soul `b`",
                "soul `a` (souls.rs:1) starts in `y`, a process of soul `b`",
            ]
        );
    }

    #[test]
    fn a_subprocess_listed_twice_or_not_at_all_is_refused() {
        const S: Subprocess = subprocess_handle("a", "s");
        let err = Registry::from_parts(
            vec![soul("a", A_X, &[S, S])],
            vec![
                process("a", "x", "x.rs:1"),
                sub("a", "s"),
                sub("a", "forgotten"),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err.problems,
            [
                "soul `a` (souls.rs:1) lists subprocess `s` twice",
                "subprocess `forgotten` (sub.rs:1) is not in the `subprocesses` of soul `a` \
                 (souls.rs:1), so it would never run",
            ]
        );
    }

    #[test]
    fn a_memory_budget_of_zero_is_refused() {
        for budget in [
            MemoryBudget {
                max_memories: 0,
                max_tokens: 100,
            },
            MemoryBudget {
                max_memories: 10,
                max_tokens: 0,
            },
        ] {
            let registration = Box::leak(Box::new(SoulRegistration {
                memory_budget: budget,
                ..SoulRegistration::clone(soul("a", A_X, &[]))
            }));
            let err = Registry::from_parts(vec![registration], vec![process("a", "x", "x.rs:1")])
                .unwrap_err();
            assert_eq!(err.problems.len(), 1, "{err}");
            assert!(err.problems[0].contains("memory budget of zero"), "{err}");
        }
    }

    #[test]
    fn a_consistent_set_loads_and_looks_up_by_name() {
        const S: Subprocess = subprocess_handle("a", "s");
        let registry = Registry::from_parts(
            vec![soul("a", A_X, &[S])],
            vec![
                process("a", "x", "x.rs:1"),
                process("a", "y", "y.rs:1"),
                sub("a", "s"),
            ],
        )
        .unwrap();
        let soul = registry.soul("a").unwrap();
        assert_eq!(soul.initial_process(), A_X);
        assert_eq!(
            soul.processes()
                .map(MentalProcess::name)
                .collect::<Vec<_>>(),
            ["x", "y"]
        );
        assert_eq!(soul.subprocesses(), [S]);
        assert_eq!(soul.process("y"), Some(mental_process_handle("a", "y")));
        assert!(
            soul.process("s").is_none(),
            "a subprocess is not a main process"
        );
        assert!(soul.process("z").is_none());
        assert!(registry.soul("b").is_none());
    }
}
