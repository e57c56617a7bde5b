//! What the fuzz targets in `fuzz_targets/` run (`docs/fuzzing.md`). Each property is written
//! once, beside the code it checks, and included here by path, so the workspace's tests replay
//! the kept corpus in `corpus/` through the very same checks.
//!
//! The gateway is a binary, not a library: its configuration, SMS segment and Twilio webhook
//! modules, which need only std and crates.io crates, are compiled into this crate from their
//! source files.

use std::path::PathBuf;
use std::sync::OnceLock;

// Only the fuzz checks of these modules are called here, not the rest of the gateway's API
// (nor the types the configuration re-exports for it).
#[allow(dead_code, unused_imports)]
#[path = "../../crates/sms-gateway/src/config/mod.rs"]
mod config;
// The configuration counts SMS segments (the crisis resources against MAX_REPLY_SEGMENTS).
#[allow(dead_code)]
#[path = "../../crates/sms-gateway/src/segments.rs"]
mod segments;

// Declared at the top so that their paths resolve from `src/`, and gathered under `twilio` as
// in the gateway, whose paths (`crate::twilio::signature`) they use.
#[allow(dead_code)]
#[path = "../../crates/sms-gateway/src/twilio/signature.rs"]
mod signature;
#[allow(dead_code)]
#[path = "../../crates/sms-gateway/src/twilio/webhook.rs"]
mod webhook;
mod twilio {
    pub(crate) use super::{signature, webhook};
}

#[path = "../../crates/engine/tests/fuzz_checks/mod.rs"]
mod engine_checks;

/// A Twilio webhook: form parsing, the typed views and signature checking.
pub fn webhook(data: &[u8]) {
    twilio::webhook::fuzz_check(data);
}

/// The gateway's configuration, as an environment and as a TOML file.
pub fn config(data: &[u8]) {
    config::fuzz_check(data);
}

/// Working memory's JSON form.
pub fn working_memory(data: &[u8]) {
    engine_checks::working_memory(data);
}

/// A cassette file, loaded, saved and replayed.
pub fn cassette(data: &[u8]) {
    // Cassettes are files: each input is written to this process's own scratch directory (one
    // per process, so parallel fuzzing jobs do not share it).
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    let scratch = SCRATCH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("soul-fuzz-cassette-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the scratch directory can be created");
        dir
    });
    let input = scratch.join("input.json");
    std::fs::write(&input, data).expect("the scratch directory is writable");
    engine_checks::cassette(&input, scratch);
}
