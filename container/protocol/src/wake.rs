//! The wake socket: how host and container tell each other that a session DB changed.
//!
//! The host listens on `host/wake.sock` (mounted at `/session/wake.sock`); the runner connects once
//! at start and keeps the stream open. Each side writes single bytes:
//!
//! | byte | direction | meaning |
//! |---|---|---|
//! | [`INPUT`] | host → container | `inbound.db` has new or changed rows: read now |
//! | [`OUTPUT`] | container → host | `outbound.db` has new committed rows or acks: deliver now |
//! | [`CLAIMED`] | container → host | a turn started (its rows are claimed in `outbound.db`): look within [`CLAIM_LOOK_MS`] |
//! | [`HELLO`] | container → host | first frame after connect: `h<generation>\n` (see [`hello_frame`]): the runner of that container generation is up and has cleared stale claims |
//!
//! Bytes coalesce: several `INPUT`s before a read mean one read. Unknown bytes are ignored by
//! both sides (the container is untrusted; the host never does more than re-read its DBs).
//! The host writes one `INPUT` when it accepts a hello (input may have landed between the
//! runner's first read and the hello) and one per write the runner must see. While the link is
//! up the runner reads again at the earliest `process_after` of a pending row and otherwise
//! only on a byte (with a 30 s safety net); while it is down it polls at most every
//! [`MAX_POLL_MS`]. So a lost byte or a missing socket costs latency, never a message, and an
//! idle container does not read its DB every second. The socket replaces NanoClaw's 1 s polling
//! on both sides; see BENCHMARKS.md for the round trip it buys.

/// Host → container: new input in `inbound.db`.
pub const INPUT: u8 = b'i';
/// Container → host: new output in `outbound.db`.
pub const OUTPUT: u8 = b'o';
/// Container → host: rows were claimed, a turn runs. Unlike [`OUTPUT`] it asks for no pass at
/// once: the host looks within [`CLAIM_LOOK_MS`] (to show that the agent is working and start
/// timing the claim), and a turn that ends sooner is seen whole by the pass its `OUTPUT` asks
/// for. So a short turn's claim costs the host no read of `outbound.db` while the turn runs.
pub const CLAIMED: u8 = b'c';
/// How long the host may wait after a [`CLAIMED`] byte before it reads the claim, in
/// milliseconds.
pub const CLAIM_LOOK_MS: u64 = 100;
/// Container → host: the runner is ready (stale claims cleared, generation recorded).
pub const HELLO: u8 = b'h';

/// Longest hello frame the host reads (`h`, up to 20 digits, `\n`), in bytes. A connection that
/// sends more, or nothing within the host's hello deadline, is closed.
pub const MAX_HELLO_BYTES: usize = 22;

/// The hello frame of the runner of container `generation`: `h<generation>\n`. The host accepts
/// a connection only when the generation is that of the container it is waiting for, so a
/// connection left by an older container (or opened by anything else) is ignored.
pub fn hello_frame(generation: i64) -> Vec<u8> {
    format!("h{generation}\n").into_bytes()
}

/// Parses a complete hello frame (including the `\n`); `None` for anything else.
pub fn parse_hello(frame: &[u8]) -> Option<i64> {
    let body = frame.strip_prefix(&[HELLO])?.strip_suffix(b"\n")?;
    if body.is_empty() || body.len() > 19 || !body.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(body).ok()?.parse().ok()
}

/// The longest poll interval the runner may use while its wake link is down, in milliseconds.
pub const MAX_POLL_MS: u64 = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_frames_round_trip_and_junk_is_refused() {
        assert_eq!(parse_hello(&hello_frame(42)), Some(42));
        assert!(hello_frame(i64::MAX).len() <= MAX_HELLO_BYTES);
        for junk in [&b"h\n"[..], b"h12", b"x12\n", b"h-1\n", b"h1a\n", b"h99999999999999999999\n", b""] {
            assert_eq!(parse_hello(junk), None, "{junk:?}");
        }
    }
}
