//! Soul memory and process memory: typed key-value memories that record changes instead of
//! writing anywhere. The runtime hands the change sets to whoever persists them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Keys are 1 to 128 bytes; longer ones are almost certainly values used as keys by mistake.
const MAX_KEY_LEN: usize = 128;

/// Why a memory value could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// The key is empty or longer than 128 bytes.
    #[error("invalid memory key (length {len}): keys are 1 to {MAX_KEY_LEN} bytes")]
    InvalidKey {
        /// The key's length in bytes.
        len: usize,
    },
    /// The stored value does not have the requested type. The message leaves serde's reason
    /// out (it quotes the stored value, which may be something a person said); it is the
    /// `source`.
    #[error("memory `{key}` does not hold the requested type")]
    WrongType {
        /// The key.
        key: String,
        /// serde's reason.
        #[source]
        source: serde_json::Error,
    },
    /// The value cannot be represented as JSON.
    #[error("memory `{key}` cannot be stored as JSON")]
    NotSerializable {
        /// The key.
        key: String,
        /// serde's reason.
        #[source]
        source: serde_json::Error,
    },
}

/// What changed in one key-value memory during a turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryChanges {
    /// Every stored value was dropped before `upserts` apply (a process change for process memory).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cleared: bool,
    /// Keys set, with their new values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upserts: BTreeMap<String, Value>,
    /// Keys removed.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub removals: BTreeSet<String>,
}

impl MemoryChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.cleared && self.upserts.is_empty() && self.removals.is_empty()
    }

    /// Applies these changes to stored `values`, as a store would.
    pub fn apply_to(&self, values: &mut BTreeMap<String, Value>) {
        if self.cleared {
            values.clear();
        }
        for key in &self.removals {
            values.remove(key);
        }
        for (key, value) in &self.upserts {
            values.insert(key.clone(), value.clone());
        }
    }

    /// Applies `later` on top of these changes.
    pub fn merge(&mut self, later: MemoryChanges) {
        if later.cleared {
            *self = MemoryChanges {
                cleared: true,
                ..MemoryChanges::default()
            };
        }
        for key in later.removals {
            self.upserts.remove(&key);
            self.removals.insert(key);
        }
        for (key, value) in later.upserts {
            self.removals.remove(&key);
            self.upserts.insert(key, value);
        }
    }
}

#[derive(Default)]
struct State {
    base: BTreeMap<String, Value>,
    changes: MemoryChanges,
}

/// A key-value memory: the values loaded at the start of the turn plus this turn's changes.
/// Clones share one state.
#[derive(Clone, Default)]
pub struct KeyValueMemory {
    state: Arc<Mutex<State>>,
}

impl KeyValueMemory {
    /// A memory holding `values`, with no changes yet.
    pub fn new(values: BTreeMap<String, Value>) -> Self {
        KeyValueMemory {
            state: Arc::new(Mutex::new(State {
                base: values,
                changes: MemoryChanges::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave this map half-updated: every update is one insert/remove.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value at `key`, if any, as a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, MemoryError> {
        check_key(key)?;
        let Some(value) = self.get_json(key) else {
            return Ok(None);
        };
        serde_json::from_value(value)
            .map(Some)
            .map_err(|source| MemoryError::WrongType {
                key: key.to_owned(),
                source,
            })
    }

    /// The raw JSON value at `key`, if any.
    pub fn get_json(&self, key: &str) -> Option<Value> {
        let state = self.lock();
        if let Some(value) = state.changes.upserts.get(key) {
            return Some(value.clone());
        }
        if state.changes.cleared || state.changes.removals.contains(key) {
            return None;
        }
        state.base.get(key).cloned()
    }

    /// Sets `key` to `value`.
    pub fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), MemoryError> {
        check_key(key)?;
        let value = serde_json::to_value(value).map_err(|source| MemoryError::NotSerializable {
            key: key.to_owned(),
            source,
        })?;
        let mut state = self.lock();
        state.changes.removals.remove(key);
        state.changes.upserts.insert(key.to_owned(), value);
        Ok(())
    }

    /// Removes `key` (removing a missing key is not an error).
    pub fn remove(&self, key: &str) -> Result<(), MemoryError> {
        check_key(key)?;
        let mut state = self.lock();
        state.changes.upserts.remove(key);
        state.changes.removals.insert(key.to_owned());
        Ok(())
    }

    /// Every key currently holding a value.
    pub fn keys(&self) -> Vec<String> {
        let state = self.lock();
        let base = state
            .base
            .keys()
            .filter(|k| !state.changes.cleared && !state.changes.removals.contains(*k));
        let keys: BTreeSet<&String> = base.chain(state.changes.upserts.keys()).collect();
        keys.into_iter().cloned().collect()
    }

    /// The changes made so far.
    pub fn changes(&self) -> MemoryChanges {
        self.lock().changes.clone()
    }

    /// The current values, as a fresh memory with no changes (what a later stage starts from).
    pub fn snapshot(&self) -> KeyValueMemory {
        let values = self
            .keys()
            .into_iter()
            .filter_map(|k| self.get_json(&k).map(|v| (k, v)))
            .collect();
        KeyValueMemory::new(values)
    }

    /// A memory starting empty whose changes record that everything before was dropped.
    pub fn cleared() -> KeyValueMemory {
        let memory = KeyValueMemory::default();
        memory.lock().changes.cleared = true;
        memory
    }
}

fn check_key(key: &str) -> Result<(), MemoryError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(MemoryError::InvalidKey { len: key.len() });
    }
    Ok(())
}

impl fmt::Debug for KeyValueMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys are the author's; values may be what a person told the soul.
        f.debug_struct("KeyValueMemory")
            .field("keys", &self.keys())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_see_changes_over_the_loaded_values() {
        let memory = KeyValueMemory::new(BTreeMap::from([
            ("name".into(), json!("Ann")),
            ("age".into(), json!(30)),
        ]));
        assert_eq!(
            memory.get::<String>("name").unwrap().as_deref(),
            Some("Ann")
        );
        memory.set("name", "Annie").unwrap();
        memory.remove("age").unwrap();
        memory.remove("never-there").unwrap();
        assert_eq!(
            memory.get::<String>("name").unwrap().as_deref(),
            Some("Annie")
        );
        assert_eq!(memory.get::<u32>("age").unwrap(), None);
        assert_eq!(memory.keys(), ["name"]);
        let changes = memory.changes();
        assert_eq!(
            changes.upserts,
            BTreeMap::from([("name".into(), json!("Annie"))])
        );
        assert_eq!(
            changes.removals,
            BTreeSet::from(["age".into(), "never-there".into()])
        );
    }

    #[test]
    fn a_missing_key_is_none_and_a_wrong_type_is_an_error() {
        let memory = KeyValueMemory::new(BTreeMap::from([("n".into(), json!("x"))]));
        assert_eq!(memory.get::<u32>("missing").unwrap(), None);
        assert!(matches!(
            memory.get::<u32>("n"),
            Err(MemoryError::WrongType { .. })
        ));
        assert!(matches!(
            memory.set("", &1),
            Err(MemoryError::InvalidKey { len: 0 })
        ));
        assert!(matches!(
            memory.get::<u32>(&"k".repeat(129)),
            Err(MemoryError::InvalidKey { len: 129 })
        ));
    }

    #[test]
    fn a_wrong_type_error_does_not_quote_the_value() {
        let memory = KeyValueMemory::new(BTreeMap::from([("name".into(), json!("Cam Smith"))]));
        let error = memory.get::<bool>("name").unwrap_err();
        assert_eq!(
            error.to_string(),
            "memory `name` does not hold the requested type"
        );
        // The reason is still there for whoever walks the source.
        let source = std::error::Error::source(&error).unwrap().to_string();
        assert!(source.contains("Cam Smith"), "{source}");
    }

    #[test]
    fn merge_applies_later_changes_last() {
        let mut first = MemoryChanges::default();
        first.upserts.insert("a".into(), json!(1));
        first.removals.insert("b".into());
        let mut later = MemoryChanges::default();
        later.removals.insert("a".into());
        later.upserts.insert("b".into(), json!(2));
        first.merge(later);
        assert_eq!(first.upserts, BTreeMap::from([("b".into(), json!(2))]));
        assert_eq!(first.removals, BTreeSet::from(["a".into()]));
        first.merge(MemoryChanges {
            cleared: true,
            ..MemoryChanges::default()
        });
        assert!(first.cleared && first.upserts.is_empty() && first.removals.is_empty());
    }

    #[test]
    fn a_cleared_memory_hides_loaded_values() {
        let memory = KeyValueMemory::cleared();
        memory.set("k", &1).unwrap();
        assert!(memory.changes().cleared);
        assert_eq!(memory.keys(), ["k"]);
    }
}
