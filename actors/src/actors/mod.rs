//! The actors of the supervisor tree, one file each (STYLE rule 1).

pub mod approval_supervisor;
pub mod channel;
pub mod channel_supervisor;
pub mod container;
pub mod session;
pub mod session_supervisor;
pub mod supervisor;
pub mod sweeper;
