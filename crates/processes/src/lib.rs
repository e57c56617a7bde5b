//! The souls that ship. Filled by the souls work.
