//! Runs a conversation's steps through the real stack: a fresh SQLite store, the turn driver, the
//! soul's runtime, and whatever model the caller gives (a cassette, or a live endpoint being
//! recorded), with every clock reading the current step's time.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde_json::Value;
use soul_engine::Clock;
use soul_engine::model::{BoxFuture, ChatRequest, Completion, LanguageModel, ModelError};
use soul_engine::process::{Registry, Runtime};
use soul_persistence::{Address, Inbound, SqliteStore};
use soul_turns::{Handled, NoDelivery, TurnDriver, TurnReport};
// Linking the shipped souls registers them: a conversation names its soul from the registry.
use soul_processes as _;

use super::format::{Action, Outcome, Step};

/// The clock of a replay: it reads the current step's time, so every timestamp the store and the
/// engine write (and every session timeout they decide) is the same on every run.
#[derive(Debug, Default)]
pub struct StepClock(Mutex<DateTime<Utc>>);

impl StepClock {
    /// Moves the clock to `at`.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }
}

impl Clock for StepClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the model did during one step.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModelLog {
    /// The answers' texts, in the order they arrived.
    pub answers: Vec<String>,
    /// The errors, as their messages. A cassette's "not recorded" error carries the diff from
    /// the closest recorded request; these are printed, never logged.
    pub errors: Vec<String>,
}

/// Wraps the model to see, step by step, what it answered and how it failed: the turn driver
/// turns a model failure into the fallback reply, and a crisis reply goes out without the
/// model's words, so neither error would otherwise reach the replay.
struct Observed {
    inner: Arc<dyn LanguageModel>,
    log: Mutex<ModelLog>,
}

impl Observed {
    fn take(&self) -> ModelLog {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl fmt::Debug for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observed")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl LanguageModel for Observed {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        Box::pin(async move {
            let result = self.inner.complete(request).await;
            let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            match &result {
                Ok(completion) => log.answers.push(completion.content.clone()),
                Err(error) => log.errors.push(error.to_string()),
            }
            result
        })
    }
}

/// What one step led to, and what the model did meanwhile.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The outcome, comparable with the step's expectation.
    pub outcome: Outcome,
    /// The model's answers and errors during the step.
    pub model: ModelLog,
}

/// A conversation in progress on a fresh store.
pub struct Runner {
    driver: TurnDriver,
    clock: Arc<StepClock>,
    model: Arc<Observed>,
    /// Everyone who has written so far, whose stored state each step compares.
    people: BTreeSet<String>,
    /// Keeps the store's directory until the runner is dropped.
    _dir: tempfile::TempDir,
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("driver", &self.driver)
            .field("people", &self.people.len())
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// A runner for the soul registered as `soul`, thinking with `model`, on a new SQLite store in
    /// a temporary directory.
    pub async fn start(soul: &str, model: Arc<dyn LanguageModel>) -> anyhow::Result<Runner> {
        let registry = Registry::load().context("loading the registered souls")?;
        let soul = registry
            .soul(soul)
            .with_context(|| format!("no soul named {soul:?} is registered"))?;
        let dir = tempfile::tempdir().context("creating the store's temporary directory")?;
        let store = SqliteStore::open(dir.path().join("soul.db"))
            .await
            .context("opening the store")?;
        let clock = Arc::new(StepClock::default());
        let model = Arc::new(Observed {
            inner: model,
            log: Mutex::default(),
        });
        let runtime = Arc::new(Runtime::new(soul, model.clone(), clock.clone()));
        let driver = TurnDriver::new(Arc::new(store), runtime, clock.clone());
        Ok(Runner {
            driver,
            clock,
            model,
            people: BTreeSet::new(),
            _dir: dir,
        })
    }

    /// Runs step number `number` (counting from 1) at its time.
    pub async fn run(&mut self, number: usize, step: &Step) -> anyhow::Result<Observation> {
        self.clock.set(step.at);
        let action = step.action()?;
        if let Action::Say { from, .. } | Action::OptOut { from, .. } = action {
            self.people.insert(from.to_owned());
        }
        let before = self.stored_states().await?;
        let mut outcome = Outcome::default();
        match action {
            Action::Say { from, text } => {
                let inbound = Inbound {
                    from: Address::new(from),
                    line: Default::default(),
                    persona: None,
                    body: text.to_owned(),
                    // Unique per step, as the channel's message ids are.
                    external_id: Some(format!("SMreplay{number:04}")),
                    received_at: step.at,
                    opt_out: None,
                };
                match self.driver.handle(&inbound, &NoDelivery).await? {
                    Handled::Answered(reports) => absorb(&mut outcome, &reports),
                    Handled::Duplicate => bail!("the store took the message for a duplicate"),
                    _ => bail!("the store queued the message behind a turn still running"),
                }
            }
            Action::OptOut { from, opted_out } => {
                let known = self
                    .driver
                    .store()
                    .set_opt_out(&Address::new(from), opted_out, step.at)
                    .await?;
                if !known {
                    bail!("the store does not know {from}: a person must write before opting out");
                }
            }
            Action::FireDueEvents => {
                let reports = self
                    .driver
                    .fire_due_events(FIRE_AT_MOST, &NoDelivery)
                    .await?;
                outcome.fired = reports.len();
                absorb(&mut outcome, &reports);
            }
        }
        let after = self.stored_states().await?;
        let several = self.people.len() > 1;
        for (address, after) in &after {
            let before = before.get(address).cloned().unwrap_or_default();
            let prefix = if several {
                format!("{address}: ")
            } else {
                String::new()
            };
            compare(&before, after, &prefix, &mut outcome);
        }
        Ok(Observation {
            outcome,
            model: self.model.take(),
        })
    }

    async fn stored_states(&self) -> anyhow::Result<BTreeMap<String, Stored>> {
        let mut states = BTreeMap::new();
        for address in &self.people {
            states.insert(address.clone(), self.stored(&Address::new(address)).await?);
        }
        Ok(states)
    }

    /// What the store holds about `address` that a step's outcome reports.
    async fn stored(&self, address: &Address) -> anyhow::Result<Stored> {
        let store = self.driver.store();
        let Some(session) = store.session(address).await? else {
            return Ok(Stored::default());
        };
        // The replays talk on the default line: one conversation.
        let export = store.export_user(address).await?.unwrap_or_default()[0].clone();
        let soul_memory = rows(&export, "soul_memories")
            .filter_map(|row| Some((row.get("key")?.as_str()?.to_owned(), row.get("value")?)))
            .map(|(key, value)| (key, value.clone()))
            .collect();
        let events = rows(&export, "scheduled_events")
            .filter_map(|row| {
                let key = row.get("key")?.as_str()?.to_owned();
                let process = row
                    .pointer("/payload/process")
                    .and_then(Value::as_str)
                    .or_else(|| row.get("kind")?.as_str())?;
                let due = row.get("due_at")?.as_str()?;
                Some((key, format!("{process} due {}", readable_time(due))))
            })
            .collect();
        let summary = store
            .history(address, Some("summary"), 1)
            .await?
            .pop()
            .map(|memory| memory.content);
        Ok(Stored {
            session: Some(session.session_number()),
            soul_memory,
            events,
            summary,
        })
    }
}

/// How many due events one step fires at most: more than any conversation schedules.
const FIRE_AT_MOST: u32 = 100;

/// What a step's outcome reports of one person's stored state.
#[derive(Debug, Default, Clone)]
struct Stored {
    session: Option<i64>,
    soul_memory: BTreeMap<String, Value>,
    /// Scheduled events by key, described.
    events: BTreeMap<String, String>,
    /// The latest summary.
    summary: Option<String>,
}

/// The rows of one table of an export.
fn rows<'a>(export: &'a Value, table: &str) -> impl Iterator<Item = &'a Value> {
    export
        .get(table)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// The turns' reports, folded into one outcome (a step may answer more than one turn).
fn absorb(outcome: &mut Outcome, reports: &[TurnReport]) {
    for report in reports {
        outcome.replies.extend(report.replies.iter().cloned());
        outcome
            .processes_run
            .extend(report.processes_run.iter().cloned());
        // An opted-out person's message is stored but runs no process: no turn to report.
        if !report.processes_run.is_empty() || report.fell_back {
            outcome.process = Some(report.process.clone());
        }
        outcome.fell_back |= report.fell_back;
    }
}

/// Adds what changed from `before` to `after` to `outcome`, each line after `prefix`.
fn compare(before: &Stored, after: &Stored, prefix: &str, outcome: &mut Outcome) {
    if after.session.is_some() && after.session != before.session {
        outcome.new_session = after.session;
    }
    for (key, value) in &after.soul_memory {
        if before.soul_memory.get(key) != Some(value) {
            outcome
                .memory
                .push(format!("{prefix}+ {key} = {}", masked(value)));
        }
    }
    for key in before.soul_memory.keys() {
        if !after.soul_memory.contains_key(key) {
            outcome.memory.push(format!("{prefix}- {key}"));
        }
    }
    // Gone first, then added: a check-in moved (the same key, another time) or replaced by a
    // new one reads "- old, + new". Sorted by what they say, because their keys are ids
    // generated at run time.
    let mut gone: Vec<&String> = before
        .events
        .iter()
        .filter(|(key, event)| after.events.get(*key) != Some(event))
        .map(|(_, event)| event)
        .collect();
    let mut added: Vec<&String> = after
        .events
        .iter()
        .filter(|(key, event)| before.events.get(*key) != Some(event))
        .map(|(_, event)| event)
        .collect();
    gone.sort();
    added.sort();
    outcome
        .events
        .extend(gone.into_iter().map(|event| format!("{prefix}- {event}")));
    outcome
        .events
        .extend(added.into_iter().map(|event| format!("{prefix}+ {event}")));
    if after.summary.is_some() && after.summary != before.summary {
        outcome.summary = after.summary.clone();
    }
}

/// `value` as compact JSON, with every id generated at run time shown as `<id>`: they differ
/// between runs, and what matters is that one is there.
fn masked(value: &Value) -> String {
    fn mask(value: &Value) -> Value {
        match value {
            Value::String(text) if uuid::Uuid::try_parse(text).is_ok() => {
                Value::String("<id>".to_owned())
            }
            Value::Array(items) => Value::Array(items.iter().map(mask).collect()),
            Value::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(key, value)| (key.clone(), mask(value)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    mask(value).to_string()
}

/// A stored time as `2026-11-27 18:00 UTC`; left as it is when it is not RFC 3339.
fn readable_time(text: &str) -> String {
    DateTime::parse_from_rfc3339(text).map_or_else(
        |_| text.to_owned(),
        |time| {
            time.with_timezone(&Utc)
                .format("%Y-%m-%d %H:%M UTC")
                .to_string()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn generated_ids_are_masked_wherever_they_are() {
        let id = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(masked(&json!(id)), r#""<id>""#);
        assert_eq!(
            masked(&json!({"event": id, "name": "Ana", "ids": [id]})),
            r#"{"event":"<id>","ids":["<id>"],"name":"Ana"}"#
        );
    }

    #[test]
    fn changes_list_sets_removals_and_events() {
        let before = Stored {
            session: Some(1),
            soul_memory: BTreeMap::from([
                ("careful_mode".to_owned(), json!(true)),
                ("user_name".to_owned(), json!("Ana")),
            ]),
            events: BTreeMap::from([
                ("a".to_owned(), "check_in due X".to_owned()),
                ("m".to_owned(), "check_in due V".to_owned()),
                ("s".to_owned(), "reminder due S".to_owned()),
            ]),
            summary: None,
        };
        let after = Stored {
            session: Some(2),
            soul_memory: BTreeMap::from([("user_name".to_owned(), json!("Ana"))]),
            events: BTreeMap::from([
                ("b".to_owned(), "check_in due Y".to_owned()),
                ("m".to_owned(), "check_in due W".to_owned()),
                ("s".to_owned(), "reminder due S".to_owned()),
            ]),
            summary: Some("s".to_owned()),
        };
        let mut outcome = Outcome::default();
        compare(&before, &after, "", &mut outcome);
        assert_eq!(outcome.new_session, Some(2));
        assert_eq!(outcome.memory, ["- careful_mode"]);
        // `m` moved: shown as gone and added, like the replaced `a`; `s` did not change.
        assert_eq!(
            outcome.events,
            [
                "- check_in due V",
                "- check_in due X",
                "+ check_in due W",
                "+ check_in due Y"
            ]
        );
        assert_eq!(outcome.summary.as_deref(), Some("s"));
    }

    #[test]
    fn stored_times_read_as_minutes_in_utc() {
        assert_eq!(
            readable_time("2026-11-27T18:02:00.000Z"),
            "2026-11-27 18:02 UTC"
        );
        assert_eq!(readable_time("tomorrow"), "tomorrow");
    }
}
