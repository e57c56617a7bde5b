//! Test support shared by every crate's tests.
//!
//! Only services that cannot run on a test machine get doubles here, and each double speaks the
//! real wire protocol over a real socket: the code under test cannot tell it from the service.
//! [`browser`] drives a real headless Chromium. [`soul`] is the harness for testing a soul's processes on top of the OpenAI double.

pub mod browser;
pub mod cluster;
pub mod openai;
pub mod postgres;
pub mod postrest;
pub mod soul;
pub mod twilio;
