//! The wake socket: how host and container tell each other that a session DB changed.
//!
//! The host listens on `host/wake.sock` (mounted at `/session/wake.sock`); the runner connects once
//! at start and keeps the stream open. Each side writes single bytes:
//!
//! | byte | direction | meaning |
//! |---|---|---|
//! | [`INPUT`] | host → container | `inbound.db` has new or changed rows: read now |
//! | [`OUTPUT`] | container → host | `outbound.db` has new committed rows or acks: deliver now |
//! | [`HELLO`] | container → host | first byte after connect: the runner is up and has cleared stale claims |
//!
//! Bytes coalesce: several `INPUT`s before a read mean one read. Unknown bytes are ignored by
//! both sides (the container is untrusted; the host never does more than re-read its DBs).
//! Both sides keep a poll fallback of at most one second (DESIGN §6), so a lost byte or a missing
//! socket costs latency, never a message. The socket replaces NanoClaw's 1 s polling on both
//! sides; see BENCHMARKS.md for the round trip it buys.

/// Host → container: new input in `inbound.db`.
pub const INPUT: u8 = b'i';
/// Container → host: new output in `outbound.db`.
pub const OUTPUT: u8 = b'o';
/// Container → host: the runner is ready (stale claims cleared, generation recorded).
pub const HELLO: u8 = b'h';

/// The longest poll interval either side may use as a fallback, in milliseconds.
pub const MAX_POLL_MS: u64 = 1000;
