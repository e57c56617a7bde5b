//! Example programs, and the replay of recorded conversations ([`replay`]) that the `replay`
//! binary and the tests share.

pub mod replay;
