//! Ports: the only places the supervisor tree touches the outside world (DESIGN §3).
//!
//! - [`runtime::ContainerRuntime`]: starts and stops agent containers (Docker via bollard and an
//!   explicit process runtime live in the `nanoclaw` crate; an in-memory fake in
//!   [`crate::testing`]).
//! - [`channel::ChannelAdapter`]: a chat platform account (the CLI socket in `nanoclaw`; an
//!   in-memory channel in [`crate::testing`]).
//! - [`provider::ProviderGateway`]: model providers and the per-session credential proxy (the
//!   proxy lives in `nanoclaw`; [`provider::EchoOnlyGateway`] is the built-in default).

pub mod channel;
pub mod provider;
pub mod runtime;
