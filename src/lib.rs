//! The nanoclaw host application: configuration, the Docker and process runtimes, the CLI
//! channel, and the `nanoclaw` binary's commands. The supervisor tree itself is the
//! `nanoclaw-actors` crate.

pub mod admin;
pub mod channels;
pub mod chat;
pub mod config;
pub mod daemon;
pub mod proxy;
pub mod runtime;
