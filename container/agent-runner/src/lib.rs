//! The nanoclaw agent runner: the program inside every agent container.
//!
//! It reads `inbound.db` (fresh read-only connection per read), claims rows in
//! `processing_ack`, builds the prompt, runs the turn through the [`provider::Provider`] — the
//! [`agent::Agent`], a tool loop over a [`model::Model`] with the [`tools`] — writes
//! `messages_out`, keeps the heartbeat, and keeps each provider's conversation in a transcript
//! named by its continuation (DESIGN §8). Settings come from `runner.json` in the session folder
//! ([`runner::load_settings`]), or the offline `echo` default. It links neither
//! ractor nor bollard nor channel code: its only contract with the host is
//! [`nanoclaw_protocol`].
//!
//! Flow of one container's life ([`runner::run`]):
//! 1. open `outbound.db`, record the generation, drop stale `processing` claims of older ones;
//! 2. connect the wake socket and say hello;
//! 3. loop: read a due batch → if it holds a `trigger=1` row, claim it, run a turn, commit replies
//!    and acks in one transaction, tell the host; else wait for a wake byte or the poll fallback;
//! 4. on SIGTERM: release claims of an unfinished turn (so the host does not count a try) and exit 0.

pub mod agent;
pub mod config;
pub mod db;
pub mod model;
pub mod prompt;
pub mod provider;
pub mod runner;
pub mod tools;
