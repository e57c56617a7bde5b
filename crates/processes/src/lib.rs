//! The souls that ship, written the way an author writes theirs: one module per mental process,
//! registered with the engine's macros, so linking this crate is all it takes for
//! [`Registry::load`](soul_engine::process::Registry::load) to find them.
//!
//! - [`companion`]: **Sage** (`"sage"`), a supportive SMS companion: first contact, ongoing
//!   conversation, deeper listening, a wind-down on goodbye, a crisis-safety mode, and
//!   subprocesses that keep a summary, a user model and a gentle check-in after a silence.
//! - [`pip`]: **Pip** (`"pip"`), a terse study buddy with two processes, so the registry really
//!   holds more than one soul.
//!
//! A program that embeds a soul keeps [`companion::NAME`] (or [`pip::NAME`]) as the working
//! memory's soul name — `SoulState::new(companion::NAME)` — and may configure the crisis
//! resources text once at start-up with [`companion::crisis::configure_crisis_resources`].

pub mod companion;
pub mod pip;
