//! Ports: the only places the supervisor tree touches the outside world (DESIGN §3).
//!
//! - [`runtime::ContainerRuntime`]: starts and stops agent containers (Docker via bollard and an
//!   explicit process runtime live in the `nanoclaw` crate; an in-memory fake in
//!   [`crate::testing`]).
//! - [`channel::ChannelAdapter`]: a chat platform account (the CLI socket in `nanoclaw`; an
//!   in-memory channel in [`crate::testing`]).

pub mod channel;
pub mod runtime;
