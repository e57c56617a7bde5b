//! The SMS gateway. Filled by the gateway work.

fn main() {}
