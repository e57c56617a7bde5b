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
//! - [`WorkingMemory::with_memory`] of a memory with a region puts it at the end of that region:
//!   the region is replaced by its memories followed by the new one (so a region whose memories
//!   were scattered comes together where its first memory was, and a new one is placed as
//!   `with_region` places it). A memory without a region goes at the very end.
//!
//! # Indices
//! Where an operation takes an index ([`get`](WorkingMemory::get), [`slice`](WorkingMemory::slice),
//! [`splice`](WorkingMemory::splice)), a negative one counts from the end, as in JavaScript: `-1`
//! is the last memory.
//!
//! # Ids
//! A memory keeps its id through every operation, so one memory can appear twice (`wm.concat(&wm)`,
//! as in OpenSouls). The JSON form keeps both and reads back as written.

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

    /// The memory at `index` (negative: from the end, `-1` is the last).
    pub fn get(&self, index: impl MemoryIndex) -> Option<&Memory> {
        let index = index.position(self.memories.len())?;
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

    /// Appends `memory`: a memory with a region at the end of that region (see the module docs),
    /// one without at the end of the whole memory.
    pub fn with_memory(&self, memory: Memory) -> Self {
        match memory.region.clone() {
            Some(region) => {
                let members: Vec<Arc<Memory>> = self
                    .memories
                    .iter()
                    .filter(|m| m.region.as_ref() == Some(&region))
                    .cloned()
                    .chain([Arc::new(memory)])
                    .collect();
                self.placed_region(&region, members)
            }
            None => {
                // Unregioned memories rank last in any region order, so the end is their place.
                let mut next = self.clone();
                next.memories.push_back(Arc::new(memory));
                next
            }
        }
    }

    /// Appends `memory` into `region`, whatever region it had.
    pub fn with_memory_in(&self, region: Region, memory: Memory) -> Self {
        self.with_memory(memory.in_region(region))
    }

    /// Replaces every memory of `region` with `memories` (whose own regions are overwritten), at
    /// the place the region had; a new region goes before the first unregioned memory.
    pub fn with_region(&self, region: Region, memories: impl IntoIterator<Item = Memory>) -> Self {
        let members = memories
            .into_iter()
            .map(|m| Arc::new(m.in_region(region.clone())))
            .collect();
        self.placed_region(&region, members)
    }

    /// `members` (already in `region`) in place of the region's memories, where the region's
    /// first memory was, or before the first unregioned memory, or at the end.
    fn placed_region(&self, region: &Region, members: Vec<Arc<Memory>>) -> Self {
        let at = self
            .iter()
            .position(|m| m.region.as_ref() == Some(region))
            .or_else(|| self.iter().position(|m| m.region.is_none()))
            .unwrap_or(self.memories.len());
        let outside = |m: &&Arc<Memory>| m.region.as_ref() != Some(region);
        let kept_before = self.memories.iter().take(at).filter(outside);
        let kept_after = self.memories.iter().skip(at).filter(outside);
        let memories = kept_before
            .cloned()
            .chain(members)
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

    /// The memories in `range` (indices as in [`iter`](Self::iter); negative ones count from the
    /// end, so `slice(-2..)` is the last two). Ends out of range are clamped.
    pub fn slice<I: MemoryIndex>(&self, range: impl RangeBounds<I>) -> Self {
        use std::ops::Bound;
        let len = self.memories.len();
        let start = match range.start_bound() {
            Bound::Included(&s) => s.clamped(len),
            Bound::Excluded(&s) => s.clamped(len).saturating_add(1).min(len),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.clamped(len).saturating_add(1).min(len),
            Bound::Excluded(&e) => e.clamped(len),
            Bound::Unbounded => len,
        }
        .max(start);
        let mut next = self.clone();
        next.memories = self.memories.clone().slice(start..end);
        next
    }

    /// Removes `delete` memories from `start` (negative: from the end) and puts `memories` in
    /// their place, as JavaScript's `splice`; the result is sorted into the region order, if one
    /// is set. A start past the end appends; a count past the end removes what there is.
    pub fn splice(
        &self,
        start: impl MemoryIndex,
        delete: usize,
        memories: impl IntoMemories,
    ) -> Self {
        let len = self.memories.len();
        let start = start.clamped(len);
        let end = start.saturating_add(delete).min(len);
        let mut all = self.memories.clone().slice(..start);
        all.append(memories.into_memories());
        all.append(self.memories.clone().slice(end..));
        self.rebuilt(all)
    }

    /// `memories` in place of every memory, under this value's name and region order.
    pub fn replace(&self, memories: impl IntoMemories) -> Self {
        self.rebuilt(memories.into_memories())
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

    /// `self` followed by `other`: another working memory, or memories (a `Vec`, an array, an
    /// iterator). `self`'s name and region order win. Memories keep their ids, so concatenating
    /// a memory with itself holds each memory twice.
    pub fn concat(&self, other: impl IntoMemories) -> Self {
        let mut memories = self.memories.clone();
        memories.append(other.into_memories());
        self.rebuilt(memories)
    }

    /// `other` (as for [`concat`](Self::concat)) followed by `self`'s memories.
    pub fn prepend(&self, other: impl IntoMemories) -> Self {
        let mut all = other.into_memories();
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

/// Memories to add to a working memory: another [`WorkingMemory`] (shared, not copied), or any
/// collection or iterator of [`Memory`] values.
pub trait IntoMemories {
    /// The memories, in order.
    fn into_memories(self) -> Vector<Arc<Memory>>;
}

impl IntoMemories for &WorkingMemory {
    fn into_memories(self) -> Vector<Arc<Memory>> {
        self.memories.clone()
    }
}

impl IntoMemories for WorkingMemory {
    fn into_memories(self) -> Vector<Arc<Memory>> {
        self.memories
    }
}

impl<I: IntoIterator<Item = Memory>> IntoMemories for I {
    fn into_memories(self) -> Vector<Arc<Memory>> {
        self.into_iter().map(Arc::new).collect()
    }
}

/// An index into working memory: from the start when non-negative, from the end when negative
/// (`-1` is the last memory), as JavaScript's `at` and `slice` take them.
pub trait MemoryIndex: Copy {
    /// The position in a memory of `len` memories, if it is one.
    fn position(self, len: usize) -> Option<usize>;
    /// The position clamped to `0..=len`, as a bound of a range.
    fn clamped(self, len: usize) -> usize;
}

impl MemoryIndex for usize {
    fn position(self, len: usize) -> Option<usize> {
        (self < len).then_some(self)
    }
    fn clamped(self, len: usize) -> usize {
        self.min(len)
    }
}

macro_rules! signed_memory_index {
    ($($t:ty),*) => {$(
        impl MemoryIndex for $t {
            fn position(self, len: usize) -> Option<usize> {
                let from_start = if self < 0 {
                    len.checked_sub(usize::try_from(self.unsigned_abs()).ok()?)?
                } else {
                    usize::try_from(self).ok()?
                };
                from_start.position(len)
            }
            fn clamped(self, len: usize) -> usize {
                if self < 0 {
                    usize::try_from(self.unsigned_abs()).map_or(0, |back| len.saturating_sub(back))
                } else {
                    usize::try_from(self).map_or(len, |at| at.min(len))
                }
            }
        }
    )*};
}

signed_memory_index!(i32, i64, isize);
