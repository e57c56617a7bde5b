//! Runs turns end to end: the store's `begin`, the engine, the store's `commit`, delivery of the
//! replies, then the subprocesses and their own commit.
//!
//! This is the one place that knows both the engine's outcome and the store's change set; the
//! gateway, the `chat` command and the replay tool all run turns through it, so they cannot
//! disagree about what a turn stores. It knows nothing of Twilio: replies leave through the
//! [`Delivery`] the caller passes in.
//!
//! Every commit carries the turn's record for the turn log (`soul_persistence::turn_log`), at the
//! driver's [`TurnLogLevel`](soul_persistence::turn_log::TurnLogLevel); [`TurnDriver::rerun`]
//! runs a logged turn again with the current build and compares.

mod driver;
mod mapping;
mod record;
mod rerun;

pub use driver::{
    DEFAULT_FALLBACK_REPLY, DEFAULT_MAX_TURN_ATTEMPTS, Delivery, DriverError, Handled, NoDelivery,
    OutboundBatch, TurnDriver, TurnReport,
};
pub use mapping::turn_settings;
pub use rerun::{Rerun, TurnOutcome};
