//! The compile-time registry of souls and mental processes.
//!
//! Authors register with [`mental_process!`](crate::mental_process),
//! [`subprocess!`](crate::subprocess) and [`soul!`](crate::soul); the macros submit
//! registrations to `inventory`, so a process exists by being compiled in. [`Registry::load`]
//! gathers them once at start-up and refuses an inconsistent set with an error naming every
//! problem and where each offending registration was written.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::memory::{Memory, Region, Role};
use crate::memory_budget::MemoryBudget;
use crate::model::{BoxFuture, ChatOptions};
use crate::process::context::{ProcessContext, ProcessResult};
use crate::working_memory::WorkingMemory;

/// The signature every registered process has after the macro's shim.
pub type ProcessFn = fn(ProcessContext) -> BoxFuture<'static, ProcessResult>;

/// Builds a turn's working memory from the stored one and the incoming perception.
pub type IntegratorFn = fn(&Soul, WorkingMemory, &crate::process::Perception) -> WorkingMemory;

/// Whether a registered function is a main process or a subprocess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKind {
    /// Answers perceptions and decides the next process.
    Main,
    /// Runs after the main process, on its resulting memory.
    Subprocess,
}

/// One registered process. Made by the macros; authors do not build these by hand.
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

/// One registered soul. Made by [`soul!`](crate::soul).
#[derive(Debug, Clone)]
pub struct SoulRegistration {
    /// Its name, unique among souls.
    pub name: &'static str,
    /// The name it goes by in conversation ("Sage"): working memory's soul name, which steps use
    /// to phrase instructions and to strip "Sage said:" from answers.
    pub display_name: &'static str,
    /// The persona, placed in the `core` region as system memories.
    pub persona: &'static [&'static str],
    /// The process a new session starts in.
    pub initial_process: &'static str,
    /// Subprocesses, in the order they run.
    pub subprocesses: &'static [&'static str],
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

/// A registered process, looked up by name.
#[derive(Debug, Clone, Copy)]
pub struct Process {
    /// Its name.
    pub name: &'static str,
    /// The function.
    pub run: ProcessFn,
    /// Where it was registered.
    pub location: &'static str,
}

/// A soul with its processes, validated.
#[derive(Debug)]
pub struct Soul {
    registration: &'static SoulRegistration,
    processes: BTreeMap<&'static str, Process>,
    subprocesses: Vec<Process>,
}

impl Soul {
    /// The soul's registered name.
    pub fn name(&self) -> &'static str {
        self.registration.name
    }

    /// The name it goes by in conversation.
    pub fn display_name(&self) -> &'static str {
        self.registration.display_name
    }

    /// The state of this soul meeting someone for the first time.
    pub fn new_state(&self) -> crate::process::SoulState {
        crate::process::SoulState::new(self.display_name())
    }

    /// The process a new session starts in.
    pub fn initial_process(&self) -> Process {
        // `Registry::load` refuses a soul whose initial process is not registered.
        self.processes[self.registration.initial_process]
    }

    /// The main process called `name`.
    pub fn process(&self, name: &str) -> Option<Process> {
        self.processes.get(name).copied()
    }

    /// Every main process, by name.
    pub fn processes(&self) -> impl Iterator<Item = Process> + '_ {
        self.processes.values().copied()
    }

    /// The subprocesses, in the order they run.
    pub fn subprocesses(&self) -> &[Process] {
        &self.subprocesses
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
    let with_persona =
        without_leading_system_prompt(&stored).with_region(Region::core(), soul.persona());
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
#[error("the registered souls and processes are inconsistent:\n{}", .problems.join("\n"))]
pub struct RegistryError {
    /// One line per problem.
    pub problems: Vec<String>,
}

impl Registry {
    /// Gathers every soul and process compiled into this binary.
    pub fn load() -> Result<Self, RegistryError> {
        Self::from_parts(
            inventory::iter::<SoulRegistration>.into_iter().collect(),
            inventory::iter::<ProcessRegistration>.into_iter().collect(),
        )
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
            let main: BTreeMap<_, _> = registered
                .values()
                .filter(|p| p.kind == ProcessKind::Main)
                .map(|p| {
                    (
                        p.name,
                        Process {
                            name: p.name,
                            run: p.run,
                            location: p.location,
                        },
                    )
                })
                .collect();
            if !main.contains_key(s.initial_process) {
                problems.push(format!(
                    "soul `{}` ({}) starts in `{}`, which is not a registered main process",
                    s.name, s.location, s.initial_process
                ));
            }
            if s.memory_budget.max_memories == 0 || s.memory_budget.max_tokens == 0 {
                problems.push(format!(
                    "soul `{}` ({}) has a memory budget of zero: it could not remember the \
                     message it answers",
                    s.name, s.location
                ));
            }
            let mut subprocesses = Vec::new();
            for name in s.subprocesses {
                match registered.get(name) {
                    Some(p) if p.kind == ProcessKind::Subprocess => subprocesses.push(Process {
                        name: p.name,
                        run: p.run,
                        location: p.location,
                    }),
                    _ => problems.push(format!(
                        "soul `{}` ({}) lists subprocess `{name}`, which is not a registered subprocess",
                        s.name, s.location
                    )),
                }
            }
            registry.insert(
                s.name,
                Arc::new(Soul {
                    registration: s,
                    processes: main,
                    subprocesses,
                }),
            );
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

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.location)
    }
}

/// Registers an async fn as a main mental process of a soul.
///
/// ```
/// use soul_engine::process::{Next, ProcessContext, ProcessResult};
///
/// soul_engine::mental_process!(soul = "sam", name = "small_talk", small_talk);
///
/// async fn small_talk(cx: ProcessContext) -> ProcessResult {
///     cx.speak("Hello!");
///     Ok(Next::stay(cx.memory().clone()))
/// }
/// # soul_engine::soul! { name: "sam", persona: &[], initial_process: "small_talk" }
/// # fn main() { soul_engine::process::Registry::load().unwrap(); }
/// ```
///
/// See the [authoring guide](crate::guide).
#[macro_export]
macro_rules! mental_process {
    (soul = $soul:literal, name = $name:literal, $function:path $(,)?) => {
        $crate::__register_process!($soul, $name, $function, $crate::process::ProcessKind::Main);
    };
}

/// Registers an async fn as a subprocess of a soul (it also has to be listed in the soul's
/// `subprocesses`, which fixes the order they run in).
#[macro_export]
macro_rules! subprocess {
    (soul = $soul:literal, name = $name:literal, $function:path $(,)?) => {
        $crate::__register_process!(
            $soul,
            $name,
            $function,
            $crate::process::ProcessKind::Subprocess
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __register_process {
    ($soul:literal, $name:literal, $function:path, $kind:expr) => {
        const _: () = {
            fn shim(
                context: $crate::process::ProcessContext,
            ) -> $crate::model::BoxFuture<'static, $crate::process::ProcessResult> {
                ::std::boxed::Box::pin($function(context))
            }
            $crate::__private::inventory::submit! {
                $crate::process::ProcessRegistration {
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
/// soul_engine::soul! {
///     name: "samantha",
///     display_name: "Samantha",
///     persona: &["You are Samantha, a warm companion."],
///     initial_process: "introduction",
///     subprocesses: &["summarize"],
///     model: soul_engine::process::ModelSettings {
///         model: Some("quality"),
///         temperature: Some(0.7),
///         max_tokens: None,
///     },
///     memory_budget: soul_engine::MemoryBudget { max_memories: 40, max_tokens: 8_000 },
/// }
/// # use soul_engine::process::{Next, ProcessContext, ProcessResult};
/// # soul_engine::mental_process!(soul = "samantha", name = "introduction", keep);
/// # soul_engine::subprocess!(soul = "samantha", name = "summarize", keep);
/// # async fn keep(cx: ProcessContext) -> ProcessResult { Ok(Next::stay(cx.memory().clone())) }
/// # fn main() { soul_engine::process::Registry::load().unwrap(); }
/// ```
///
/// `display_name` (default: `name`), `subprocesses`, `integrator`, `model` and `memory_budget`
/// (default: [`MemoryBudget::DEFAULT`]) are optional.
#[macro_export]
macro_rules! soul {
    (
        name: $name:literal,
        $(display_name: $display_name:expr,)?
        persona: $persona:expr,
        initial_process: $initial:literal
        $(, subprocesses: $subprocesses:expr)?
        $(, integrator: $integrator:expr)?
        $(, model: $model:expr)?
        $(, memory_budget: $memory_budget:expr)?
        $(,)?
    ) => {
        $crate::__private::inventory::submit! {
            $crate::process::SoulRegistration {
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

    fn process(
        soul: &'static str,
        name: &'static str,
        location: &'static str,
    ) -> &'static ProcessRegistration {
        Box::leak(Box::new(ProcessRegistration {
            soul,
            name,
            kind: ProcessKind::Main,
            run: noop,
            location,
        }))
    }

    fn soul(
        name: &'static str,
        initial: &'static str,
        subprocesses: &'static [&'static str],
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

    #[test]
    fn every_problem_is_reported_with_its_locations() {
        let err = Registry::from_parts(
            vec![soul("a", "missing", &["nope"]), soul("a", "x", &[])],
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
                ..SoulRegistration::clone(soul("a", "x", &[]))
            }));
            let err = Registry::from_parts(vec![registration], vec![process("a", "x", "x.rs:1")])
                .unwrap_err();
            assert_eq!(err.problems.len(), 1, "{err}");
            assert!(err.problems[0].contains("memory budget of zero"), "{err}");
        }
    }

    #[test]
    fn a_consistent_set_loads_and_looks_up_by_name() {
        let registry = Registry::from_parts(
            vec![soul("a", "x", &[])],
            vec![process("a", "x", "x.rs:1"), process("a", "y", "y.rs:1")],
        )
        .unwrap();
        let soul = registry.soul("a").unwrap();
        assert_eq!(soul.initial_process().name, "x");
        assert_eq!(
            soul.processes().map(|p| p.name).collect::<Vec<_>>(),
            ["x", "y"]
        );
        assert!(soul.process("z").is_none());
        assert!(registry.soul("b").is_none());
    }
}
