//! The parts of a session that are not the actor itself, one job each (the actor in
//! [`crate::actors::session`] wires them together):
//!
//! - [`lifecycle`]: the container slot as a pure state machine, and the typed container exit;
//! - [`liveness`]: the stuck / idle verdict, a pure function that also says when to look again;
//! - [`wake`]: the host end of the wake socket, bounded against a hostile peer;
//! - [`outbox`]: reading the container's output through the one door, delivery, acks, cursors;
//! - [`notices`]: what the session tells its chat and the owner.
//!
//! None of them imports the actor: they report through callbacks, so no two modules import
//! each other.

pub mod lifecycle;
pub mod liveness;
pub mod notices;
pub mod outbox;
pub mod runner;
pub mod wake;
