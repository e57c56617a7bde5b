//! Working memory: region placement, ordering, immutability and the JSON round trip.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use chrono::{TimeZone, Utc};
use serde_json::json;
use soul_engine::model::ChatRole;
use soul_engine::{Memory, Region, Role, WorkingMemory, WorkingMemoryError};

fn region(name: &str) -> Region {
    Region::new(name).unwrap()
}

fn contents(wm: &WorkingMemory) -> Vec<&str> {
    wm.iter().map(|m| m.content.as_str()).collect()
}

fn conversation() -> WorkingMemory {
    WorkingMemory::new("Samantha")
        .with_memory(Memory::user("hi"))
        .with_memory(Memory::assistant("hello"))
}

#[test]
fn operations_leave_the_original_untouched() {
    let original = conversation();
    let snapshot = original.clone();
    let _ = original.with_memory(Memory::user("more"));
    let _ = original.with_region(Region::core(), [Memory::system("persona")]);
    let _ = original.filter(|_| false);
    let _ = original.map(|m| Memory {
        content: "changed".into(),
        ..m.clone()
    });
    let _ = original.with_region_order([Region::core()]).unwrap();
    assert_eq!(original, snapshot);
    assert_eq!(contents(&original), ["hi", "hello"]);
}

#[test]
fn a_new_region_goes_before_the_first_unregioned_memory() {
    let wm = WorkingMemory::new("S")
        .with_memory_in(Region::core(), Memory::system("persona"))
        .with_memory(Memory::user("hi"))
        .with_memory(Memory::assistant("hello"))
        .with_region(Region::summary(), [Memory::system("they said hi")]);
    assert_eq!(contents(&wm), ["persona", "they said hi", "hi", "hello"]);
    assert_eq!(wm.get(1).unwrap().region, Some(Region::summary()));
}

#[test]
fn a_new_region_goes_last_when_every_memory_has_a_region() {
    let wm = WorkingMemory::new("S")
        .with_memory_in(Region::core(), Memory::system("persona"))
        .with_region(Region::summary(), [Memory::system("s")]);
    assert_eq!(contents(&wm), ["persona", "s"]);
}

#[test]
fn replacing_a_region_keeps_its_place_and_drops_all_its_old_memories() {
    let wm = WorkingMemory::new("S")
        .with_memory_in(Region::core(), Memory::system("persona"))
        .with_memory_in(region("notes"), Memory::system("n1"))
        .with_memory(Memory::user("hi"))
        .with_memory_in(region("notes"), Memory::system("n2"))
        .with_region(
            region("notes"),
            [Memory::system("n3"), Memory::system("n4")],
        );
    assert_eq!(contents(&wm), ["persona", "n3", "n4", "hi"]);
}

#[test]
fn replacing_a_region_never_touches_unregioned_memories() {
    let wm = conversation().with_region(region("notes"), Vec::new());
    assert_eq!(contents(&wm), ["hi", "hello"]);
    assert!(
        Region::new("default").is_err(),
        "`default` cannot name a region"
    );
}

#[test]
fn region_order_sorts_now_and_places_later_memories() {
    let wm = conversation()
        .with_memory_in(Region::summary(), Memory::system("summary"))
        .with_memory_in(Region::core(), Memory::system("persona"))
        .with_region_order([Region::core(), Region::summary()])
        .unwrap();
    assert_eq!(contents(&wm), ["persona", "summary", "hi", "hello"]);

    let later = wm
        .with_memory_in(Region::core(), Memory::system("persona 2"))
        .with_memory(Memory::user("again"))
        .with_memory_in(region("unlisted"), Memory::system("u"));
    assert_eq!(
        contents(&later),
        [
            "persona",
            "persona 2",
            "summary",
            "u",
            "hi",
            "hello",
            "again"
        ],
        "an unlisted region goes after the listed ones, before the conversation"
    );
    assert_eq!(later.region_order(), [Region::core(), Region::summary()]);
}

#[test]
fn region_order_survives_filter_slice_concat_prepend_and_map() {
    let order = [Region::core(), Region::summary()];
    let wm = conversation().with_region_order(order.clone()).unwrap();
    let derived = [
        wm.filter(|m| m.role == Role::User),
        wm.slice(0..1),
        wm.concat(conversation()),
        wm.prepend([Memory::user("first")]),
        wm.map(Clone::clone),
        wm.without_regions(&[Region::core()]),
    ];
    for d in derived {
        assert_eq!(d.region_order(), order);
    }
    let moved = wm.prepend([Memory::user("x")]).map(|m| {
        if m.content == "hello" {
            m.clone().in_region(Region::core())
        } else {
            m.clone()
        }
    });
    assert_eq!(
        contents(&moved),
        ["hello", "x", "hi"],
        "map re-sorts moved memories"
    );
}

#[test]
fn region_order_rejects_duplicates() {
    let err = conversation()
        .with_region_order([Region::core(), Region::core()])
        .unwrap_err();
    assert!(matches!(err, WorkingMemoryError::DuplicateRegionInOrder(r) if r == Region::core()));
}

#[test]
fn region_filters_select_and_exclude() {
    let wm = conversation()
        .with_memory_in(Region::core(), Memory::system("persona"))
        .with_memory_in(Region::summary(), Memory::system("summary"));
    assert_eq!(
        contents(&wm.with_only_regions(&[Region::core()])),
        ["persona"]
    );
    assert_eq!(
        contents(&wm.without_regions(&[Region::core(), Region::summary()])),
        ["hi", "hello"]
    );
    assert_eq!(wm.region(&Region::summary()).count(), 1);
    assert_eq!(wm.unregioned().count(), 2);
}

#[test]
fn slice_find_len_and_friends() {
    let wm = conversation().with_memory(Memory::user("third"));
    assert_eq!(wm.len(), 3);
    assert!(!wm.is_empty());
    assert_eq!(contents(&wm.slice(1..)), ["hello", "third"]);
    assert_eq!(contents(&wm.slice(..=0)), ["hi"]);
    assert_eq!(
        contents(&wm.slice(2..99)),
        ["third"],
        "out-of-range ends are clamped"
    );
    assert!(wm.slice(5..).is_empty());
    assert_eq!(
        wm.find(|m| m.role == Role::Assistant).unwrap().content,
        "hello"
    );
    assert_eq!(wm.last().unwrap().content, "third");
    assert_eq!(
        contents(&wm.prepend([Memory::system("p")])),
        ["p", "hi", "hello", "third"]
    );
}

#[test]
fn json_round_trip_is_exact() {
    let at = Utc.with_ymd_and_hms(2026, 11, 24, 9, 30, 0).unwrap()
        + chrono::Duration::nanoseconds(123_456_789);
    let wm = WorkingMemory::new("Samantha")
        .with_memory_in(Region::core(), Memory::new(Role::System, "persona ✨", at))
        .with_memory(
            Memory::new(Role::User, "hi\nthere \"quoted\"", at)
                .with_name("ann")
                .with_metadata("sid", json!("SM123"))
                .with_metadata("nested", json!({"a": [1, 2.5, null]})),
        )
        .with_region_order([Region::core(), Region::summary()])
        .unwrap();

    let text = serde_json::to_string(&wm).unwrap();
    let back: WorkingMemory = serde_json::from_str(&text).unwrap();
    assert_eq!(back, wm);
    assert_eq!(
        serde_json::to_string(&back).unwrap(),
        text,
        "byte-identical re-serialization"
    );
    assert_eq!(WorkingMemory::from_json(wm.to_json()).unwrap(), wm);
    assert_eq!(back.region_order(), [Region::core(), Region::summary()]);
    assert_eq!(back.get(1).unwrap().timestamp, at, "nanoseconds survive");
}

#[test]
fn json_form_is_documented_shape() {
    let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    let memory = Memory::new(Role::User, "hi", at);
    let id = memory.id;
    let wm = WorkingMemory::new("S").with_memory(memory);
    assert_eq!(
        wm.to_json(),
        json!({
            "version": 1,
            "soul_name": "S",
            "region_order": [],
            "memories": [{ "id": id, "role": "user", "content": "hi", "timestamp": "2026-01-02T03:04:05Z" }]
        })
    );
}

#[test]
fn bad_json_is_a_typed_error() {
    let future_version = json!({"version": 2, "soul_name": "S", "memories": []});
    assert!(matches!(
        WorkingMemory::from_json(future_version),
        Err(WorkingMemoryError::UnsupportedVersion { found: 2 })
    ));
    let reserved_region = json!({"version": 1, "soul_name": "S", "memories": [
        {"id": "018f0000-0000-7000-8000-000000000000", "role": "user", "content": "x",
         "region": "default", "timestamp": "2026-01-02T03:04:05Z"}]});
    assert!(matches!(
        WorkingMemory::from_json(reserved_region),
        Err(WorkingMemoryError::Json(_))
    ));
    assert!(WorkingMemory::from_json_str("{not json").is_err());
    assert!(
        WorkingMemory::from_json(
            json!({"version": 1, "soul_name": "S", "memories": [], "extra": 1})
        )
        .is_err()
    );
}

#[test]
fn renders_chat_messages_in_region_order() {
    let wm = conversation()
        .with_memory_in(Region::core(), Memory::system("persona"))
        .with_region_order([Region::core()])
        .unwrap();
    let messages = wm.to_messages();
    let rendered: Vec<(ChatRole, &str)> = messages
        .iter()
        .map(|m| (m.role, m.content.as_str()))
        .collect();
    assert_eq!(
        rendered,
        [
            (ChatRole::System, "persona"),
            (ChatRole::User, "hi"),
            (ChatRole::Assistant, "hello")
        ]
    );
}

#[test]
fn clones_share_memories_instead_of_copying_them() {
    let big = (0..1000).fold(WorkingMemory::new("S"), |wm, i| {
        wm.with_memory(Memory::user(i.to_string()))
    });
    let appended = big.with_memory(Memory::user("one more"));
    // Same allocation behind the first memory: structure is shared, not deep-copied.
    assert!(std::ptr::eq(big.get(0).unwrap(), appended.get(0).unwrap()));
    assert_eq!(appended.len(), 1001);
    assert_eq!(big.len(), 1000);
}

#[test]
fn a_memory_with_a_region_goes_to_the_end_of_its_region() {
    let notes = region("notes");
    let wm = WorkingMemory::new("S")
        .with_memory_in(Region::core(), Memory::system("persona"))
        .with_memory(Memory::user("hi"))
        // A region that does not exist yet goes where `with_region` puts a new one.
        .with_memory_in(notes.clone(), Memory::system("n1"))
        .with_memory(Memory::assistant("hello"))
        .with_memory_in(notes.clone(), Memory::system("n2"))
        .with_memory_in(Region::core(), Memory::system("persona 2"));
    assert_eq!(
        contents(&wm),
        ["persona", "persona 2", "n1", "n2", "hi", "hello"]
    );
}

#[test]
fn with_a_region_order_an_unlisted_region_sits_between_the_listed_ones_and_the_conversation() {
    let notes = region("notes");
    let wm = WorkingMemory::new("S")
        .with_region_order([Region::core(), Region::summary()])
        .unwrap()
        .with_memory_in(Region::core(), Memory::system("persona"))
        .with_memory(Memory::user("hi"))
        .with_memory_in(notes.clone(), Memory::system("n1"))
        .with_memory(Memory::assistant("hello"))
        .with_memory_in(notes.clone(), Memory::system("n2"))
        .with_memory_in(Region::summary(), Memory::system("summary"));
    assert_eq!(
        contents(&wm),
        ["persona", "summary", "n1", "n2", "hi", "hello"]
    );
}

#[test]
fn adding_to_a_scattered_region_brings_it_together_where_it_began() {
    let notes = region("notes");
    // `map` can move memories into a region wherever they are; the region is then scattered.
    let scattered = WorkingMemory::new("S")
        .with_memory(Memory::user("a"))
        .with_memory(Memory::system("n1"))
        .with_memory(Memory::user("b"))
        .with_memory(Memory::system("n2"))
        .map(|m| {
            if m.content.starts_with('n') {
                m.clone().in_region(notes.clone())
            } else {
                m.clone()
            }
        });
    assert_eq!(contents(&scattered), ["a", "n1", "b", "n2"]);
    let together = scattered.with_memory_in(notes, Memory::system("n3"));
    assert_eq!(contents(&together), ["a", "n1", "n2", "n3", "b"]);
}

#[test]
fn replace_swaps_every_memory_and_keeps_the_name_and_order() {
    let wm = conversation().with_region_order([Region::core()]).unwrap();
    let replaced = wm.replace(vec![
        Memory::user("new"),
        Memory::system("persona").in_region(Region::core()),
    ]);
    assert_eq!(
        contents(&replaced),
        ["persona", "new"],
        "sorted into the order"
    );
    assert_eq!(replaced.soul_name(), "Samantha");
    assert_eq!(replaced.region_order(), [Region::core()]);
    assert_eq!(contents(&wm), ["hi", "hello"]);
}

#[test]
fn splice_removes_and_inserts_as_javascript_does() {
    let wm = conversation().with_memory(Memory::user("third"));
    let spliced = wm.splice(1, 1, [Memory::assistant("spliced")]);
    assert_eq!(contents(&spliced), ["hi", "spliced", "third"]);
    assert_eq!(
        contents(&wm.splice(-1, 1, [Memory::user("last")])),
        ["hi", "hello", "last"],
        "a negative start counts from the end"
    );
    assert_eq!(
        contents(&wm.splice(1, 99, Vec::new())),
        ["hi"],
        "a count past the end removes the rest"
    );
    assert_eq!(
        contents(&wm.splice(10, 0, [Memory::user("end")])),
        ["hi", "hello", "third", "end"],
        "a start past the end appends"
    );
    assert_eq!(
        contents(&wm.splice(-10, 1, Vec::new())),
        ["hello", "third"],
        "a start before the beginning is the beginning"
    );
}

#[test]
fn negative_indices_count_from_the_end() {
    let wm = conversation().with_memory(Memory::user("third"));
    assert_eq!(wm.get(-1).unwrap().content, "third");
    assert_eq!(wm.get(-3).unwrap().content, "hi");
    assert!(wm.get(-4).is_none());
    assert!(wm.get(3).is_none());
    assert_eq!(contents(&wm.slice(-2..)), ["hello", "third"]);
    assert_eq!(contents(&wm.slice(..-1)), ["hi", "hello"]);
    assert_eq!(contents(&wm.slice(-99..1)), ["hi"], "clamped at the start");
    let (last, before_last) = (-1, -2);
    assert!(
        wm.slice(last..before_last).is_empty(),
        "an end before the start"
    );
    let index: usize = 1;
    assert_eq!(wm.get(index).unwrap().content, "hello");
}

#[test]
fn concat_and_prepend_take_a_plain_list_of_memories() {
    let wm = conversation();
    assert_eq!(
        contents(&wm.concat(vec![Memory::user("more")])),
        ["hi", "hello", "more"]
    );
    assert_eq!(
        contents(&wm.concat([Memory::user("a"), Memory::user("b")])),
        ["hi", "hello", "a", "b"]
    );
    assert_eq!(
        contents(&wm.prepend(conversation())),
        ["hi", "hello", "hi", "hello"]
    );
}

#[test]
fn a_memory_concat_duplicated_reads_back_from_json() {
    let wm = conversation();
    let doubled = wm.concat(&wm);
    assert_eq!(doubled.get(0).unwrap().id, doubled.get(2).unwrap().id);
    let back = WorkingMemory::from_json(doubled.to_json()).unwrap();
    assert_eq!(back, doubled);
    assert_eq!(back.len(), 4);
    let text = serde_json::to_string(&doubled).unwrap();
    assert_eq!(WorkingMemory::from_json_str(&text).unwrap(), doubled);
}
