//! The bottom layer of the actor crate: handles and messages of actors that peers use, so an
//! actor depends on the handles of its peers, never on their implementation files (no two
//! modules import each other).

pub mod channel;
