//! Author-defined steps with a typed result, without writing a `CognitiveStep` impl by hand.

use std::fmt;
use std::marker::PhantomData;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::memory::Memory;
use crate::model::ResponseSchema;
use crate::step::{AnswerFormat, CognitiveStep, InvalidAnswer, parse_json};
use crate::working_memory::WorkingMemory;

type CommandFn = Box<dyn Fn(&WorkingMemory) -> String + Send + Sync>;
type RememberFn<T> = Box<dyn Fn(&WorkingMemory, &T) -> Option<Memory> + Send + Sync>;

/// A step whose answer is a `T`, asked for through `T`'s JSON Schema. Built with [`typed`].
pub struct TypedStep<T> {
    name: String,
    command: CommandFn,
    remember: RememberFn<T>,
    strict: bool,
    _value: PhantomData<fn() -> T>,
}

/// A step named `name` whose command is built by `command` and whose answer is parsed strictly
/// into `T` (one repair attempt, then a typed error). It appends nothing unless
/// [`remember`](TypedStep::remember) says what.
///
/// ```
/// use schemars::JsonSchema;
/// use serde::Deserialize;
/// use soul_engine::step::typed;
///
/// #[derive(Deserialize, JsonSchema)]
/// struct Mood { mood: String, intensity: u8 }
///
/// let assess = typed::<Mood>("assess_mood", |wm| {
///     format!("How does the person feel in their last message to {}?", wm.soul_name())
/// })
/// .remember(|wm, mood| {
///     Some(soul_engine::Memory::assistant(format!("{} sensed {}", wm.soul_name(), mood.mood)))
/// });
/// # let _ = assess;
/// ```
pub fn typed<T>(
    name: impl Into<String>,
    command: impl Fn(&WorkingMemory) -> String + Send + Sync + 'static,
) -> TypedStep<T>
where
    T: JsonSchema + DeserializeOwned + Send + 'static,
{
    TypedStep {
        name: name.into(),
        command: Box::new(command),
        remember: Box::new(|_, _| None),
        strict: false,
        _value: PhantomData,
    }
}

impl<T> TypedStep<T> {
    /// Appends the memory `remember` makes from the value.
    pub fn remember(
        mut self,
        remember: impl Fn(&WorkingMemory, &T) -> Option<Memory> + Send + Sync + 'static,
    ) -> Self {
        self.remember = Box::new(remember);
        self
    }

    /// Asks the server to enforce the schema strictly (OpenAI's strict mode requires every
    /// property to be required and `additionalProperties: false`).
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }
}

impl<T> fmt::Debug for TypedStep<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedStep")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The JSON Schema of `T`, as a structured-output format named `name`.
pub(crate) fn schema_of<T: JsonSchema>(name: &str, strict: bool) -> ResponseSchema {
    let mut schema = schemars::schema_for!(T).to_value();
    // The meta-schema URI is noise to the model and some compatible servers reject it.
    if let Some(map) = schema.as_object_mut() {
        map.remove("$schema");
    }
    ResponseSchema {
        name: schema_name(name),
        schema,
        strict,
    }
}

/// OpenAI accepts `^[a-zA-Z0-9_-]{1,64}$` as a schema name.
fn schema_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "answer".to_owned()
    } else {
        cleaned
    }
}

impl<T> CognitiveStep for TypedStep<T>
where
    T: JsonSchema + DeserializeOwned + Send + 'static,
{
    type Value = T;

    fn name(&self) -> &str {
        &self.name
    }

    fn command(&self, memory: &WorkingMemory) -> String {
        (self.command)(memory)
    }

    fn format(&self) -> AnswerFormat {
        AnswerFormat::Json(schema_of::<T>(&self.name, self.strict))
    }

    fn interpret(
        &self,
        memory: &WorkingMemory,
        answer: &str,
    ) -> Result<(T, Option<Memory>), InvalidAnswer> {
        let value: T = parse_json(answer)?;
        let remembered = (self.remember)(memory, &value);
        Ok((value, remembered))
    }
}
