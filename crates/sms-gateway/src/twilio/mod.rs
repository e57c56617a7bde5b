//! Twilio: validating and parsing its webhooks, and sending messages through its REST API.

pub(crate) mod client;
pub(crate) mod signature;
pub(crate) mod webhook;
