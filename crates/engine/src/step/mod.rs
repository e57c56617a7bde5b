//! Cognitive steps.
