//! Persistence for souls: the turn contract and its stores. Filled by the persistence work.
