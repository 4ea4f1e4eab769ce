//! `nanoclaw chat`: a client of the CLI channel.
//!
//! Connects to `data/cli.sock`; when no service answers there, it starts one in this process for
//! its own duration (and stops it, containers included, on exit). When another service holds the
//! data directory but its socket is not up yet (it is still starting), it waits for the socket
//! up to `--timeout`, then fails with one line naming the holder's PID. Two modes:
//! - one turn (`-m TEXT`, or text piped on stdin): sends the message, prints the replies to it,
//!   exits 0 when the agent is done, 1 on failure or when `--timeout` passes first;
//! - interactive (a terminal on stdin): each line is a message; replies print as they arrive;
//!   Ctrl-D quits.
//!
//! Besides replies, the chat prints files (`[file <name> (<N> bytes)]`, nothing is saved),
//! cards (`[card] <title> / <text> / <label>: <url>`), edits (`[edited <platform message id>]
//! <text>`, the id the CLI channel gave the original reply: `cli-out-<its key>`) and reactions
//! (`[reaction <emoji> on <id>]`), kept and acked like replies; and, on stderr, a typing line
//! `[working…]` once when a turn starts working and `[working: <tool>]` while the agent runs a tool.
//!
//! The service keeps each reply until a client acks it (module doc of
//! [`crate::channels::cli`]): an interactive chat acks every reply it prints, a one-turn chat
//! only the replies to its own message, so replies to other messages wait for the next
//! interactive chat instead of being taken by a one-turn one. A reply is printed once even if
//! the service sends it again (not acked yet, or a send repeated after a restart): replies carry
//! their key (`message_out_id`) and the last [`RECENT_REPLY_IDS`] keys are remembered. On the
//! way out a chat closes its side and waits (at most [`HANG_UP`]) for the service to close
//! its own, so the service has read its last acks.

use crate::channels::cli::{
    ClientFrame, Parsed, RECENT_REPLY_IDS, RecentIds, SERVER_FRAME_TYPES, ServerFrame, parse_frame,
};
use crate::config::Config;
use crate::daemon::DaemonError;
use futures_util::{SinkExt, StreamExt};
use nanoclaw_actors::StartError;
use std::io::IsTerminal;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec};

/// Longest wait, on the way out, for the service to close the connection after the chat closed
/// its side.
pub const HANG_UP: Duration = Duration::from_secs(2);

/// Options of `nanoclaw chat`.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// The message for a one-turn chat.
    pub message: Option<String>,
    /// How long a one-turn chat waits for the agent; also how long any chat waits for the socket
    /// of a service that holds the data directory but is still starting.
    pub timeout: Duration,
    /// Where the messages go and who writes them (the CLI channel simulates a chat platform).
    pub address: Address,
}

/// The chat, thread and sender of the messages a chat sends (`--chat`, `--thread`, `--as`,
/// `--mention`, `--group`). The default is the owner in their own DM with the service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Address {
    /// The chat (`None`: `local`, the owner's DM).
    pub chat: Option<String>,
    /// The thread in the chat.
    pub thread: Option<String>,
    /// The sender's handle (`None`: the owner, `cli:local`).
    pub sender: Option<String>,
    /// The bot is mentioned.
    pub mention: bool,
    /// The chat is a group chat.
    pub is_group: bool,
}

impl Address {
    /// A `message` frame from this address.
    pub fn message(&self, id: String, text: String) -> ClientFrame {
        ClientFrame::Message {
            id,
            text,
            chat: self.chat.clone(),
            thread: self.thread.clone(),
            sender: self.sender.clone(),
            sender_name: self.sender.clone(),
            mention: self.mention.then_some(true),
            is_group: self.is_group.then_some(true),
        }
    }

    /// Whether a kept frame belongs to this chat (replies to other chats wait for their own
    /// clients).
    fn owns(&self, frame: &ServerFrame) -> bool {
        frame.chat() == self.chat.as_deref().unwrap_or(nanoclaw_actors::store::CLI_PLATFORM_ID)
    }

    /// The text a chat prints for a kept frame of its chat: a reply in another thread than the
    /// chat's own is marked `[thread <id>] `.
    fn shown(&self, frame: &ServerFrame) -> Option<String> {
        let text = frame.shown_text()?;
        Some(match frame.thread() {
            Some(t) if Some(t) != self.thread.as_deref() => format!("[thread {t}] {text}"),
            _ => text,
        })
    }
}

fn message_id() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("cli-{}-{n:016x}", chrono::Utc::now().timestamp_millis())
}

/// Runs the chat until it ends or `shutdown` resolves (a signal, in `main`); returns the exit code
/// (130 when interrupted). An in-process service is stopped in order either way.
pub async fn run(
    config: &Config,
    options: ChatOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> i32 {
    let socket = crate::daemon::cli_socket(config);
    let (stream, service) = match UnixStream::connect(&socket).await {
        Ok(s) => (s, None),
        Err(_) => {
            let service = match crate::daemon::start(config).await {
                Ok(s) => s,
                // Another service holds the data directory but its socket is not up yet (it is
                // starting, e.g. building the image): wait for it, boundedly.
                Err(DaemonError::Start(StartError::Locked { data_dir, pid })) => {
                    let holder = nanoclaw_actors::disk::pid_text(pid);
                    eprintln!(
                        "nanoclaw: waiting for the service starting on {} ({holder})",
                        data_dir.display()
                    );
                    match wait_for_socket(&socket, options.timeout).await {
                        Some(s) => return talk(s, None, options, shutdown).await,
                        None => {
                            eprintln!(
                                "nanoclaw: data directory {} is in use by another nanoclaw service ({holder}), but {} did not answer within {}s (--timeout)",
                                data_dir.display(),
                                socket.display(),
                                options.timeout.as_secs()
                            );
                            return 1;
                        }
                    }
                }
                Err(e) => {
                    eprintln!("nanoclaw: {e}");
                    return 1;
                }
            };
            let mut stream = None;
            for _ in 0..100 {
                if let Ok(s) = UnixStream::connect(&socket).await {
                    stream = Some(s);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            match stream {
                Some(s) => (s, Some(service)),
                None => {
                    eprintln!("nanoclaw: the service started but {} does not answer", socket.display());
                    service.shutdown(Duration::from_secs(30)).await;
                    return 1;
                }
            }
        }
    };
    talk(stream, service, options, shutdown).await
}

/// Polls `socket` until it answers or `wait` passes.
async fn wait_for_socket(socket: &std::path::Path, wait: Duration) -> Option<UnixStream> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Ok(s) = UnixStream::connect(socket).await {
            return Some(s);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The chat itself over a connected socket; `service` is the in-process one, if this chat started
/// it, stopped in order at the end.
async fn talk(
    stream: UnixStream,
    service: Option<nanoclaw_actors::Service>,
    options: ChatOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> i32 {
    let text = match options.message {
        Some(m) => Some(m),
        None if !std::io::stdin().is_terminal() => {
            let mut buf = String::new();
            let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
            let mut line = String::new();
            while stdin.read_line(&mut line).await.unwrap_or(0) > 0 {
                buf.push_str(&line);
                line.clear();
            }
            Some(buf.trim_end_matches(['\n', '\r']).to_string())
        }
        None => None,
    };
    let chat = async {
        match text {
            Some(t) if t.trim().is_empty() => {
                eprintln!("nanoclaw: nothing to send (empty message)");
                1
            }
            Some(t) => one_turn(stream, t, options.timeout, &options.address).await,
            None => interactive(stream, &options.address).await,
        }
    };
    let code = tokio::select! {
        code = chat => code,
        _ = shutdown => 130,
    };
    if let Some(service) = service {
        service.shutdown(Duration::from_secs(30)).await;
    }
    code
}

/// True when a reply frame should be shown: it has no key, or its key is new.
fn first_showing(seen: &mut RecentIds, message_out_id: Option<&str>) -> bool {
    message_out_id.is_none_or(|id| seen.insert(id))
}

/// The typing line of a turn that works without a tool (yet).
pub const WORKING_LINE: &str = "[working…]";

/// The typing lines of `working` frames: [`WORKING_LINE`] once per turn when the agent works
/// without a tool (the service sends a tool-less frame when a turn starts and again between
/// tools: repeating it would be noise), and `[working: <tool>]` each time a tool runs.
#[derive(Debug, Default)]
struct Typing {
    /// [`WORKING_LINE`] was printed for the current turn.
    said_working: bool,
}

impl Typing {
    /// The line to print for a `working` frame, if any.
    fn line(&mut self, tool: Option<&str>) -> Option<String> {
        match tool {
            Some(t) => {
                // Between tools the agent still works on the turn it announced.
                self.said_working = true;
                Some(format!("[working: {t}]"))
            }
            None if self.said_working => None,
            None => {
                self.said_working = true;
                Some(WORKING_LINE.to_string())
            }
        }
    }

    /// A turn ended (`done` or `failed`): the next one is announced again.
    fn turn_ended(&mut self) {
        self.said_working = false;
    }
}

/// Prints a kept frame (a reply, file, card, edit or reaction) unless its key was seen, and
/// acks it (a repeat too: its first ack may not have arrived). False when the service closed
/// the connection.
async fn show(out: &mut Out, seen: &mut RecentIds, address: &Address, frame: &ServerFrame) -> bool {
    let key = frame.message_out_id();
    if first_showing(seen, key)
        && let Some(text) = address.shown(frame)
    {
        println!("{text}");
    }
    match key {
        Some(key) => send(out, &ClientFrame::Ack { message_out_id: key.to_string() }).await,
        None => true,
    }
}

type Frames = FramedRead<OwnedReadHalf, LinesCodec>;
type Out = FramedWrite<OwnedWriteHalf, LinesCodec>;

/// Sends one frame; false when the service closed the connection.
async fn send(out: &mut Out, frame: &ClientFrame) -> bool {
    out.send(serde_json::to_string(frame).expect("frame serialises")).await.is_ok()
}

/// Reads a line from the service: `None` for a frame type this build does not know (from a
/// newer service: ignored). Errors with a one-line description of an unreadable frame.
fn read_frame(line: &str) -> Result<Option<ServerFrame>, String> {
    match parse_frame::<ServerFrame>(line, SERVER_FRAME_TYPES) {
        Ok(Parsed::Frame(frame)) => Ok(Some(frame)),
        Ok(Parsed::UnknownType(_)) => Ok(None),
        Err(e) => Err(format!("unreadable frame from the service: {e}")),
    }
}

/// Closes the chat's side and waits (at most [`HANG_UP`]) for the service to close its own:
/// the service reads everything the chat sent (its acks) before it closes.
async fn hang_up(out: Out, mut frames: Frames) {
    use tokio::io::AsyncWriteExt;
    // Every frame was flushed by its `send`; what is left is the half-close.
    let _ = out.into_inner().shutdown().await;
    let _ = tokio::time::timeout(HANG_UP, async { while frames.next().await.is_some() {} }).await;
}

async fn one_turn(stream: UnixStream, text: String, timeout: Duration, address: &Address) -> i32 {
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, LinesCodec::new());
    let mut out = FramedWrite::new(write, LinesCodec::new());
    let id = message_id();
    if !send(&mut out, &address.message(id.clone(), text)).await {
        eprintln!("nanoclaw: sending failed: the service closed the connection");
        return 1;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = RecentIds::new(RECENT_REPLY_IDS);
    let mut typing = Typing::default();
    let code = loop {
        let next = match tokio::time::timeout_at(deadline, frames.next()).await {
            Err(_) => {
                eprintln!("nanoclaw: no answer within {}s (--timeout)", timeout.as_secs());
                break 1;
            }
            Ok(None) => {
                eprintln!("nanoclaw: the service closed the connection");
                return 1;
            }
            Ok(Some(Err(e))) => {
                eprintln!("nanoclaw: {e}");
                return 1;
            }
            Ok(Some(Ok(line))) => line,
        };
        match read_frame(&next) {
            // Only replies (and files, cards, edits, reactions) to this chat's message are its
            // own to show and ack, and the approval cards of this chat (an agent's request often
            // comes with a turn); the others wait in the service for an interactive chat.
            Ok(Some(frame))
                if frame.shown_text().is_some()
                    && (frame.in_reply_to() == Some(id.as_str())
                        || (matches!(frame, ServerFrame::Choice { .. }) && address.owns(&frame))) =>
            {
                if !show(&mut out, &mut seen, address, &frame).await {
                    eprintln!("nanoclaw: the service closed the connection");
                    return 1;
                }
            }
            Ok(Some(ServerFrame::Working { tool })) => {
                if let Some(line) = typing.line(tool.as_deref()) {
                    eprintln!("{line}");
                }
            }
            Ok(Some(ServerFrame::Done { id: done })) if done == id => break 0,
            Ok(Some(ServerFrame::Failed { id: failed, reason })) if failed == id => {
                eprintln!("nanoclaw: {reason}");
                break 1;
            }
            Ok(Some(ServerFrame::Error { message, fatal })) => {
                eprintln!("nanoclaw: {message}");
                if fatal {
                    return 1;
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("nanoclaw: {e}");
                break 1;
            }
        }
    };
    hang_up(out, frames).await;
    code
}

async fn interactive(stream: UnixStream, address: &Address) -> i32 {
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, LinesCodec::new());
    let mut out = FramedWrite::new(write, LinesCodec::new());
    eprintln!("nanoclaw chat — type a message and press Enter; Ctrl-D quits.");
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut seen = RecentIds::new(RECENT_REPLY_IDS);
    let mut typing = Typing::default();
    let closed = || {
        eprintln!("nanoclaw: the service closed the connection");
        1
    };
    loop {
        tokio::select! {
            line = stdin.next_line() => match line {
                Ok(Some(l)) if l.trim().is_empty() => {}
                Ok(Some(l)) => {
                    if !send(&mut out, &address.message(message_id(), l)).await {
                        return closed();
                    }
                }
                Ok(None) | Err(_) => break,
            },
            frame = frames.next() => match frame {
                Some(Ok(l)) => match read_frame(&l) {
                    // Every reply to this chat is its to show, and to ack (a repeat too: its
                    // first ack may not have arrived); other chats' wait for their clients.
                    Ok(Some(frame)) if frame.shown_text().is_some() && address.owns(&frame) => {
                        if !show(&mut out, &mut seen, address, &frame).await {
                            return closed();
                        }
                    }
                    Ok(Some(ServerFrame::Working { tool })) => {
                        if let Some(line) = typing.line(tool.as_deref()) {
                            eprintln!("{line}");
                        }
                    }
                    Ok(Some(ServerFrame::Done { .. })) => typing.turn_ended(),
                    Ok(Some(ServerFrame::Failed { reason, .. })) => {
                        typing.turn_ended();
                        eprintln!("! {reason}");
                    }
                    Ok(Some(ServerFrame::Error { message, fatal })) => {
                        eprintln!("nanoclaw: {message}");
                        if fatal {
                            return 1;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("nanoclaw: {e}");
                        return 1;
                    }
                },
                _ => return closed(),
            },
        }
    }
    hang_up(out, frames).await;
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_key_seen_before_is_not_shown_again_and_keyless_replies_always_are() {
        let mut seen = RecentIds::new(RECENT_REPLY_IDS);
        assert!(first_showing(&mut seen, Some("out-1")));
        assert!(!first_showing(&mut seen, Some("out-1")), "a repeat after a restart is dropped");
        assert!(first_showing(&mut seen, Some("out-2")));
        assert!(
            first_showing(&mut seen, None) && first_showing(&mut seen, None),
            "older services send no key"
        );
    }

    #[test]
    fn a_turn_without_a_tool_says_working_once_and_tools_are_named() {
        let mut typing = Typing::default();
        // A turn starts, runs two tools (a tool-less frame between them), and ends.
        let lines: Vec<Option<String>> = [None, Some("run_command"), None, Some("write_file"), None]
            .iter()
            .map(|t| typing.line(*t))
            .collect();
        assert_eq!(
            lines,
            vec![
                Some("[working…]".to_string()),
                Some("[working: run_command]".to_string()),
                None,
                Some("[working: write_file]".to_string()),
                None,
            ]
        );
        // A tool-less turn repeats its frame (the service sends one per change): said once.
        typing.turn_ended();
        assert_eq!(typing.line(None).as_deref(), Some(WORKING_LINE));
        assert_eq!(typing.line(None), None);
        typing.turn_ended();
        // A turn whose first frame names a tool needs no bare line afterwards either.
        assert_eq!(typing.line(Some("run_command")).as_deref(), Some("[working: run_command]"));
        assert_eq!(typing.line(None), None);
    }

    #[test]
    fn frames_of_a_newer_service_are_read_or_ignored_and_garbage_is_an_error() {
        assert_eq!(
            read_frame(r#"{"type":"done","id":"m1","extra":1}"#),
            Ok(Some(ServerFrame::Done { id: "m1".into() }))
        );
        assert_eq!(read_frame(r#"{"type":"typing"}"#), Ok(None), "an unknown type is ignored");
        assert!(read_frame(r#"{"type":"done"}"#).is_err());
        assert!(read_frame("not json").is_err());
    }
}
