//! One memory: a single message in a soul's working memory.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who a memory speaks for, in the chat-completion sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions and persona.
    System,
    /// What the person said (or any perception from outside the soul).
    User,
    /// What the soul said or thought.
    Assistant,
}

impl Role {
    /// The lowercase wire name (`system`, `user`, `assistant`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = RegionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            other => Err(RegionError::UnknownRole(other.to_owned())),
        }
    }
}

/// A memory's identity; stable across serialization and persistence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemoryId(pub Uuid);

impl MemoryId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        MemoryId(Uuid::now_v7())
    }
}

impl Default for MemoryId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MemoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The name of a region of working memory, such as `core` or `summary`.
///
/// The rule that replaces OpenSouls' ambiguity: a memory either has a region or it has none, and the
/// name `default` is **reserved** for "no region" (it is what stores write for unregioned memories).
/// So `Region::new("default")` is an error, and replacing a region can never touch the conversation.
/// Names are 1 to 64 characters of `a-z`, `0-9`, `_` and `-`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Region(Arc<str>);

/// The stored name of the memories that have no region.
pub const UNREGIONED: &str = "default";

impl Region {
    /// Validates a region name.
    pub fn new(name: &str) -> Result<Self, RegionError> {
        if name == UNREGIONED {
            return Err(RegionError::Reserved);
        }
        let valid_len = (1..=64).contains(&name.len());
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid_len && valid_chars {
            Ok(Region(Arc::from(name)))
        } else {
            Err(RegionError::Invalid(name.chars().take(80).collect()))
        }
    }

    /// The region holding the soul's persona.
    pub fn core() -> Self {
        Region(Arc::from("core"))
    }

    /// The region holding a running summary of the conversation.
    pub fn summary() -> Self {
        Region(Arc::from("summary"))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Region({})", self.0)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Region {
    type Error = RegionError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Region::new(&value)
    }
}

impl TryFrom<&str> for Region {
    type Error = RegionError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Region::new(value)
    }
}

impl From<Region> for String {
    fn from(value: Region) -> Self {
        value.0.to_string()
    }
}

/// A region name or role that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// `default` means "no region" and cannot be used as a region's name.
    #[error("`default` is reserved for memories without a region; leave the region unset instead")]
    Reserved,
    /// The name is empty, too long, or has characters outside `a-z0-9_-`.
    #[error("invalid region name {0:?}: use 1 to 64 characters of a-z, 0-9, `_` and `-`")]
    Invalid(String),
    /// A role other than system, user or assistant.
    #[error("unknown role {0:?}: expected system, user or assistant")]
    UnknownRole(String),
}

/// A single message in working memory.
///
/// `Debug` never prints `content`, `name` or `metadata`: they may hold what a person confided.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Identity, kept across serialization.
    pub id: MemoryId,
    /// Who speaks.
    pub role: Role,
    /// The text.
    pub content: String,
    /// An optional speaker name (the chat API's `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The region, or `None` for the conversation itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<Region>,
    /// Free-form data that travels with the memory (an SMS's sid, which step wrote it, ...).
    #[serde(default = "empty_object", skip_serializing_if = "is_empty_object")]
    pub metadata: serde_json::Value,
    /// When the memory was made.
    pub timestamp: DateTime<Utc>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn is_empty_object(value: &serde_json::Value) -> bool {
    value.as_object().is_some_and(serde_json::Map::is_empty)
}

impl Memory {
    /// A memory with a fresh id, no region, no metadata, stamped `timestamp`.
    pub fn new(role: Role, content: impl Into<String>, timestamp: DateTime<Utc>) -> Self {
        Memory {
            id: MemoryId::new(),
            role,
            content: content.into(),
            name: None,
            region: None,
            metadata: empty_object(),
            timestamp,
        }
    }

    /// A system memory stamped now.
    pub fn system(content: impl Into<String>) -> Self {
        Memory::new(Role::System, content, Utc::now())
    }

    /// A user memory stamped now.
    pub fn user(content: impl Into<String>) -> Self {
        Memory::new(Role::User, content, Utc::now())
    }

    /// An assistant memory stamped now.
    pub fn assistant(content: impl Into<String>) -> Self {
        Memory::new(Role::Assistant, content, Utc::now())
    }

    /// The same memory with a speaker name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The same memory in `region`.
    pub fn in_region(mut self, region: Region) -> Self {
        self.region = Some(region);
        self
    }

    /// The same memory with `key` set in its metadata (metadata that is not an object is replaced).
    pub fn with_metadata(mut self, key: &str, value: serde_json::Value) -> Self {
        if !self.metadata.is_object() {
            self.metadata = empty_object();
        }
        if let Some(map) = self.metadata.as_object_mut() {
            map.insert(key.to_owned(), value);
        }
        self
    }
}

impl fmt::Debug for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memory")
            .field("id", &self.id)
            .field("role", &self.role)
            .field(
                "content",
                &format_args!("<{} chars redacted>", self.content.chars().count()),
            )
            .field("name", &self.name.as_ref().map(|_| "<redacted>"))
            .field("region", &self.region)
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_reserved_and_names_are_validated() {
        assert_eq!(Region::new("default"), Err(RegionError::Reserved));
        assert!(matches!(Region::new(""), Err(RegionError::Invalid(_))));
        assert!(matches!(Region::new("Core"), Err(RegionError::Invalid(_))));
        assert!(matches!(
            Region::new(&"a".repeat(65)),
            Err(RegionError::Invalid(_))
        ));
        assert_eq!(
            Region::new("user_model-2").map(|r| r.to_string()),
            Ok("user_model-2".into())
        );
    }

    #[test]
    fn debug_output_redacts_content_and_name() {
        let memory = Memory::user("my phone is +14155550100").with_name("Ann");
        let printed = format!("{memory:?}");
        assert!(!printed.contains("+1415"), "{printed}");
        assert!(!printed.contains("Ann"), "{printed}");
        assert!(printed.contains("24 chars redacted"), "{printed}");
    }
}
