//! `WorkingMemory`: the immutable, region-ordered list of memories a soul thinks with.
//!
//! Every operation returns a new value. Clones share structure (a persistent vector of `Arc`ed
//! memories), so keeping the memory of every stage of a turn costs pointers, not copies.
//!
//! # Region rules
//! - A memory has a region or none; the conversation itself has none (see [`Region`] for why
//!   `default` is not a region name).
//! - With a region order set, memories are always kept in that order: the listed regions first, in
//!   the listed order, then everything else (unlisted regions and unregioned memories) in the order
//!   it was added. The order is part of the value: later operations and the JSON form keep it.
//! - [`WorkingMemory::with_region`] replaces a region in place. A region that does not exist yet is
//!   inserted before the first memory without a region (after the persona, before the conversation),
//!   or at the end when every memory has a region.

use std::fmt;
use std::ops::RangeBounds;
use std::sync::Arc;

use imbl::Vector;
use serde::{Deserialize, Serialize};

use crate::memory::{Memory, Region};
use crate::model::ChatMessage;

/// The version written into, and required of, the JSON form.
pub const JSON_VERSION: u32 = 1;

/// An immutable, cheaply cloned list of memories with named regions.
#[derive(Clone)]
pub struct WorkingMemory {
    soul_name: Arc<str>,
    memories: Vector<Arc<Memory>>,
    region_order: Arc<[Region]>,
}

/// Why a working memory could not be built or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkingMemoryError {
    /// The JSON form has a version this build does not read.
    #[error(
        "working memory JSON version {found} is not supported (this build reads version {JSON_VERSION})"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u32,
    },
    /// The JSON is not a working memory.
    #[error("working memory JSON is malformed: {0}")]
    Json(#[from] serde_json::Error),
    /// A region order names the same region twice.
    #[error("region order names `{0}` twice")]
    DuplicateRegionInOrder(Region),
    /// Two memories share one id.
    #[error("two memories share the id {0}")]
    DuplicateMemoryId(crate::memory::MemoryId),
}

impl WorkingMemory {
    /// An empty working memory for the soul called `soul_name`.
    pub fn new(soul_name: impl Into<Arc<str>>) -> Self {
        WorkingMemory {
            soul_name: soul_name.into(),
            memories: Vector::new(),
            region_order: Arc::from(Vec::new()),
        }
    }

    /// The soul's name, used by steps to phrase instructions ("Samantha said: ...").
    pub fn soul_name(&self) -> &str {
        &self.soul_name
    }

    /// The region order, empty when none is set.
    pub fn region_order(&self) -> &[Region] {
        &self.region_order
    }

    /// Number of memories.
    pub fn len(&self) -> usize {
        self.memories.len()
    }

    /// Whether there are no memories.
    pub fn is_empty(&self) -> bool {
        self.memories.is_empty()
    }

    /// The memory at `index`.
    pub fn get(&self, index: usize) -> Option<&Memory> {
        self.memories.get(index).map(|m| &**m)
    }

    /// The last memory.
    pub fn last(&self) -> Option<&Memory> {
        self.memories.last().map(|m| &**m)
    }

    /// The memories, in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Memory> + ExactSizeIterator {
        self.memories.iter().map(|m| &**m)
    }

    /// The memories of `region`, in order.
    pub fn region(&self, region: &Region) -> impl Iterator<Item = &Memory> {
        self.iter()
            .filter(move |m| m.region.as_ref() == Some(region))
    }

    /// The memories without a region (the conversation), in order.
    pub fn unregioned(&self) -> impl Iterator<Item = &Memory> {
        self.iter().filter(|m| m.region.is_none())
    }

    /// The first memory matching `predicate`.
    pub fn find(&self, mut predicate: impl FnMut(&Memory) -> bool) -> Option<&Memory> {
        self.iter().find(|m| predicate(m))
    }

    /// Appends `memory` (in its own region, if it has one). With a region order set, a memory of a
    /// listed region goes at the end of that region's block.
    pub fn with_memory(&self, memory: Memory) -> Self {
        let mut next = self.clone();
        let rank = self.rank(memory.region.as_ref());
        let memory = Arc::new(memory);
        if self.region_order.is_empty() {
            next.memories.push_back(memory);
        } else {
            // Memories are sorted by rank, so the block ends where a higher rank starts.
            let at = self
                .memories
                .iter()
                .position(|m| self.rank(m.region.as_ref()) > rank)
                .unwrap_or(self.memories.len());
            next.memories.insert(at, memory);
        }
        next
    }

    /// Appends `memory` into `region`, whatever region it had.
    pub fn with_memory_in(&self, region: Region, memory: Memory) -> Self {
        self.with_memory(memory.in_region(region))
    }

    /// Replaces every memory of `region` with `memories` (whose own regions are overwritten), at
    /// the place the region had; a new region goes before the first unregioned memory.
    pub fn with_region(&self, region: Region, memories: impl IntoIterator<Item = Memory>) -> Self {
        let at = self
            .iter()
            .position(|m| m.region.as_ref() == Some(&region))
            .or_else(|| self.iter().position(|m| m.region.is_none()))
            .unwrap_or(self.memories.len());
        let kept_before = self
            .memories
            .iter()
            .take(at)
            .filter(|m| m.region.as_ref() != Some(&region));
        let kept_after = self
            .memories
            .iter()
            .skip(at)
            .filter(|m| m.region.as_ref() != Some(&region));
        let inserted = memories
            .into_iter()
            .map(|m| Arc::new(m.in_region(region.clone())));
        let memories = kept_before
            .cloned()
            .chain(inserted)
            .chain(kept_after.cloned())
            .collect();
        self.rebuilt(memories)
    }

    /// Sets the region order (see the module docs). Unlisted regions keep their relative place
    /// after the listed ones.
    pub fn with_region_order(
        &self,
        order: impl IntoIterator<Item = Region>,
    ) -> Result<Self, WorkingMemoryError> {
        let order: Vec<Region> = order.into_iter().collect();
        for (i, region) in order.iter().enumerate() {
            if order[..i].contains(region) {
                return Err(WorkingMemoryError::DuplicateRegionInOrder(region.clone()));
            }
        }
        let mut next = self.clone();
        next.region_order = Arc::from(order);
        Ok(next.rebuilt(self.memories.clone()))
    }

    /// Without the memories of the given regions.
    pub fn without_regions(&self, regions: &[Region]) -> Self {
        self.filter(|m| m.region.as_ref().is_none_or(|r| !regions.contains(r)))
    }

    /// Only the memories of the given regions.
    pub fn with_only_regions(&self, regions: &[Region]) -> Self {
        self.filter(|m| m.region.as_ref().is_some_and(|r| regions.contains(r)))
    }

    /// The memories in `range` (indices as in [`iter`](Self::iter)).
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Self {
        use std::ops::Bound;
        let len = self.memories.len();
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .min(len);
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => len,
        }
        .clamp(start, len);
        let mut next = self.clone();
        next.memories = self.memories.clone().slice(start..end);
        next
    }

    /// The memories for which `predicate` holds.
    pub fn filter(&self, mut predicate: impl FnMut(&Memory) -> bool) -> Self {
        let mut next = self.clone();
        next.memories = self
            .memories
            .iter()
            .filter(|m| predicate(m))
            .cloned()
            .collect();
        next
    }

    /// Every memory transformed by `f` (re-ordered if `f` moves memories between regions).
    pub fn map(&self, mut f: impl FnMut(&Memory) -> Memory) -> Self {
        self.rebuilt(self.memories.iter().map(|m| Arc::new(f(m))).collect())
    }

    /// `self` followed by `other`'s memories; `self`'s name and region order win.
    pub fn concat(&self, other: &WorkingMemory) -> Self {
        let mut memories = self.memories.clone();
        memories.append(other.memories.clone());
        self.rebuilt(memories)
    }

    /// `memories` followed by `self`'s.
    pub fn prepend(&self, memories: impl IntoIterator<Item = Memory>) -> Self {
        let mut all: Vector<Arc<Memory>> = memories.into_iter().map(Arc::new).collect();
        all.append(self.memories.clone());
        self.rebuilt(all)
    }

    /// The chat messages a model sees, in region order.
    pub fn to_messages(&self) -> Vec<ChatMessage> {
        self.iter().map(ChatMessage::from).collect()
    }

    /// The versioned JSON form (see `docs/working-memory-json.md`).
    pub fn to_json(&self) -> serde_json::Value {
        // Serializing plain data into a `Value` cannot fail: every key is a string.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Reads the versioned JSON form.
    pub fn from_json(value: serde_json::Value) -> Result<Self, WorkingMemoryError> {
        let form: JsonForm = serde_json::from_value(value)?;
        Self::from_form(form)
    }

    /// Reads the versioned JSON form from text.
    pub fn from_json_str(text: &str) -> Result<Self, WorkingMemoryError> {
        let form: JsonForm = serde_json::from_str(text)?;
        Self::from_form(form)
    }

    fn from_form(form: JsonForm) -> Result<Self, WorkingMemoryError> {
        if form.version != JSON_VERSION {
            return Err(WorkingMemoryError::UnsupportedVersion {
                found: form.version,
            });
        }
        let mut seen = std::collections::HashSet::with_capacity(form.memories.len());
        for memory in &form.memories {
            if !seen.insert(memory.id) {
                return Err(WorkingMemoryError::DuplicateMemoryId(memory.id));
            }
        }
        WorkingMemory::new(form.soul_name)
            .with_region_order(form.region_order)
            .map(|wm| wm.rebuilt(form.memories.into_iter().map(Arc::new).collect()))
    }

    fn rank(&self, region: Option<&Region>) -> usize {
        region
            .and_then(|r| self.region_order.iter().position(|o| o == r))
            .unwrap_or(self.region_order.len())
    }

    /// `memories` under this value's name and order, sorted into region order (stably).
    fn rebuilt(&self, memories: Vector<Arc<Memory>>) -> Self {
        let memories = if self.region_order.is_empty() {
            memories
        } else {
            let mut ranked: Vec<Arc<Memory>> = memories.into_iter().collect();
            ranked.sort_by_key(|m| self.rank(m.region.as_ref()));
            ranked.into_iter().collect()
        };
        WorkingMemory {
            soul_name: self.soul_name.clone(),
            memories,
            region_order: self.region_order.clone(),
        }
    }
}

impl PartialEq for WorkingMemory {
    fn eq(&self, other: &Self) -> bool {
        self.soul_name == other.soul_name
            && self.region_order == other.region_order
            && self.memories.len() == other.memories.len()
            && self.iter().eq(other.iter())
    }
}

impl fmt::Debug for WorkingMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkingMemory")
            .field("soul_name", &self.soul_name)
            .field("len", &self.memories.len())
            .field("region_order", &self.region_order)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonForm {
    version: u32,
    soul_name: String,
    #[serde(default)]
    region_order: Vec<Region>,
    memories: Vec<Memory>,
}

impl Serialize for WorkingMemory {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("WorkingMemory", 4)?;
        s.serialize_field("version", &JSON_VERSION)?;
        s.serialize_field("soul_name", &*self.soul_name)?;
        s.serialize_field("region_order", &*self.region_order)?;
        s.serialize_field("memories", &SerializeMemories(&self.memories))?;
        s.end()
    }
}

struct SerializeMemories<'a>(&'a Vector<Arc<Memory>>);

impl Serialize for SerializeMemories<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|m| &**m))
    }
}

impl<'de> Deserialize<'de> for WorkingMemory {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let form = JsonForm::deserialize(deserializer)?;
        WorkingMemory::from_form(form).map_err(serde::de::Error::custom)
    }
}
