//! The properties the engine's fuzz targets check (`docs/fuzzing.md`), written once: the fuzz
//! crate includes this file by path, and `tests/fuzz_corpus.rs` replays the corpus through it.

use std::fs;
use std::path::Path;

use soul_engine::model::cassette::{Cassette, ReplayingModel};
use soul_engine::model::{ChatMessage, ChatOptions, ChatRequest, LanguageModel, ModelError};
use soul_engine::{Role, WorkingMemory};

/// `data` as working memory JSON. Reading never panics, and on text both ways of reading agree;
/// what reads is a valid value (memories in region order; one memory may appear twice, as
/// `concat` makes it), and written out and read back it is equal, and written again byte for
/// byte the same.
pub(crate) fn working_memory(data: &[u8]) {
    let parsed = serde_json::from_slice::<WorkingMemory>(data);
    // Only on text: bytes read skip the values of unknown fields unchecked, so they accept
    // invalid UTF-8 there, which never reaches the value (corpus: invalid-utf8-unknown-field).
    if let Ok(text) = std::str::from_utf8(data) {
        let from_text = WorkingMemory::from_json_str(text);
        assert_eq!(parsed.as_ref().ok(), from_text.as_ref().ok());
    }
    let Ok(wm) = parsed else {
        return;
    };

    let order = wm.region_order();
    let rank = |region: Option<&soul_engine::Region>| {
        region
            .and_then(|region| order.iter().position(|listed| listed == region))
            .unwrap_or(order.len())
    };
    let ranks: Vec<usize> = wm
        .iter()
        .map(|memory| rank(memory.region.as_ref()))
        .collect();
    assert!(ranks.is_sorted(), "memories are in region order: {ranks:?}");

    let written = serde_json::to_string(&wm).expect("working memory serializes");
    let again = WorkingMemory::from_json_str(&written).expect("written working memory reads back");
    assert_eq!(again, wm);
    assert_eq!(
        serde_json::to_string(&again).expect("working memory serializes"),
        written,
        "the JSON form round-trips byte for byte"
    );
    assert_eq!(
        WorkingMemory::from_json(wm.to_json()).expect("the JSON value reads back"),
        wm
    );
}

/// The cassette file at `path`, with `scratch` a directory for files it writes. Loading never
/// panics; a cassette that loads saves, loads back equal and saves again byte for byte the same;
/// replayed, each recorded request in recorded order gets its recorded answer and then the
/// replay is finished; a request asked once more than recorded, or never recorded, is refused.
pub(crate) fn cassette(path: &Path, scratch: &Path) {
    let Ok(cassette) = Cassette::load(path) else {
        return;
    };
    let saved = scratch.join("saved.json");
    cassette.save(&saved).expect("a loaded cassette saves");
    let reloaded = Cassette::load(&saved).expect("a saved cassette loads");
    assert_eq!(reloaded, cassette, "a cassette survives saving");
    let text = fs::read(&saved).expect("the saved cassette reads");
    reloaded.save(&saved).expect("a loaded cassette saves");
    assert_eq!(
        fs::read(&saved).expect("the saved cassette reads"),
        text,
        "saving is deterministic"
    );

    let model = ReplayingModel::open(path).expect("a cassette that loads opens for replay");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime starts");
    runtime.block_on(async {
        for interaction in &cassette.interactions {
            let answer = model
                .complete(&interaction.request)
                .await
                .expect("a recorded request is answered");
            assert!(
                answer == interaction.response,
                "answers come in recorded order"
            );
        }
        model.finish().expect("every interaction was served");
        if let Some(first) = cassette.interactions.first() {
            let again = model.complete(&first.request).await;
            assert!(matches!(again, Err(ModelError::NotRecorded { .. })));
        }
        // Longer than any recorded text, so no recorded request can equal it.
        let longest = cassette
            .interactions
            .iter()
            .flat_map(|interaction| &interaction.request.messages)
            .map(|message| message.content.len())
            .max()
            .unwrap_or(0);
        let unrecorded = ChatRequest {
            messages: vec![ChatMessage::new(Role::User, "x".repeat(longest + 1))],
            options: ChatOptions::default(),
        };
        let refused = model.complete(&unrecorded).await;
        assert!(matches!(refused, Err(ModelError::NotRecorded { .. })));
    });
}
