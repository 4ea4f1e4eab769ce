//! A hostile container against the real binary on the real Docker daemon: one server per attack.
//!
//! Setup: the CLI chat is wired to two agent groups, `main` (messages starting `A:`) and `other`
//! (messages starting `B:`), so one CLI client drives two sessions, each with its own container.
//! This is SQL into `data/nanoclaw.db` ([`add_cli_agent_group`]): the CLI frames can address only
//! the one chat `cli/local`, and the CLI channel delivers only there, so a second session on the
//! real binary has to share that chat; the engage patterns make each message reach exactly one
//! session. Both sessions reply through the same channel, as two agents of one group chat would.
//!
//! Each attack is planted in the `main` session from the test, as its container could (after a
//! turn completed, so the runner is idle), and is followed by a message to that session. Then:
//! - the host's RSS (`VmRSS`, sampled every 50 ms from the plant to the end of the attack phase)
//!   stays within [`RSS_SLACK_BYTES`] of its baseline, taken after warm-up;
//! - the session is quarantined (or paused) within [`HELD_WITHIN`], the chat is told once (the
//!   note names `nanoclaw sessions release <id>`), `sessions.status` says so with a reason, and
//!   `nanoclaw sessions list` shows it;
//! - the other session answers every message before, during and after, each within
//!   [`ROUND_TRIP_WITHIN`];
//! - a restart with the attack still in place takes under [`RESTART_WITHIN`] from spawn to an
//!   accepting `cli.sock`, keeps the session held, and the other session answers after it;
//! - after the planted files are removed, `nanoclaw sessions release <id>` on the running service
//!   lets the session answer again: its next message, and the message kept while it was held,
//!   within [`ANSWER_AFTER_RELEASE_WITHIN`].
//!
//! Every check of a run is evaluated and the test fails listing all that did not hold. Each run
//! prints one `attack …` line (RSS delta, the other session's round-trip p99 during the attack,
//! time to hold and the reason, restart time, the service log); run with `--nocapture` to see
//! them. The last test releases without a restart, on the service that held the session.
//!
//! Disk: the only real big file is the 64 MiB-per-column row (about 830 MiB, checked against the
//! free space first); the 1 GiB `outbound.db` is sparse. Both live in the test's temp dir and are
//! removed by the attack's undo (also on a failed run) and with the temp dir.

mod common;

use common::*;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The attacked session must be held within this long of the message that follows the plant.
/// The outbox reads the container's files on each wake byte and at least every 30 s (its fallback
/// pass, `outbox::FALLBACK`), and one read gives up after 5 s (`ReadLimits::read_deadline`); 5 s
/// of margin.
const HELD_WITHIN: Duration = Duration::from_secs(40);

/// Longest a round trip of the other session may take while its container runs. An echo turn
/// takes well under a second; one that waits this long was stalled by the attack.
const ROUND_TRIP_WITHIN: Duration = Duration::from_secs(10);

/// Longest a round trip may take when it also starts the session's container.
const FIRST_ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// Most the host's RSS may grow over its baseline during an attack (the figure).
const RSS_SLACK_BYTES: u64 = 50 * 1024 * 1024;

/// Longest a restart with the attack in place may take, from spawn to an accepting `cli.sock`
/// (the one timed check).
const RESTART_WITHIN: Duration = Duration::from_secs(1);

/// After a release on the running service, the session's next message is answered within this
/// long: `nanoclaw sessions release` documents that a running service picks a released session up
/// "at the session's next message" (or its periodic resume, within a minute); this is a container
/// start plus one turn, with margin.
const ANSWER_AFTER_RELEASE_WITHIN: Duration = Duration::from_secs(30);

/// Round trips of the other session while the attack runs, at least.
const MIN_ROUND_TRIPS_DURING: usize = 10;

/// Round trips of the other session once the attacked session is held.
const ROUND_TRIPS_AFTER: usize = 5;

/// Bytes the wake-socket flood writes in all. It leaves no file behind, so the restart "with the
/// attack in place" finds it over.
const FLOOD_BYTES: u64 = 1 << 30;

/// Longest the attack phase may last: the attack must be done (the flood's gigabyte written) and
/// the session held by then.
const ATTACK_PHASE_CAP: Duration = Duration::from_secs(120);

/// Size of every column value of the oversize row.
const HUGE_VALUE_BYTES: u64 = 64 * 1024 * 1024;

/// Free space the oversize row needs before it is written: 11 columns and 2 unique indexes of
/// 64 MiB each (832 MiB), doubled for safety.
const HUGE_ROW_FREE_BYTES: u64 = 2 * 13 * HUGE_VALUE_BYTES;

/// One way a container attacks the host through its files or its wake socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attack {
    /// A FIFO named `outbound.db-journal` (SQLite's hot-journal check would block on it forever).
    FifoJournal,
    /// `messages_out` replaced by a view over a never-ending recursive CTE.
    RecursiveView,
    /// A trigger in `outbound.db`.
    Trigger,
    /// One `messages_out` row with a 64 MiB value in every column (real disk, via `zeroblob`).
    HugeValues,
    /// `outbound.db` grown to 1 GiB, sparse (its header still valid).
    SparseGigabyte,
    /// `outbound.db-journal` a symlink to the host's central DB.
    SymlinkJournal,
    /// 1 GiB written to `host/wake.sock` after the runner connected, connecting again each time
    /// the host closes (the runner's own connection cannot be taken over from outside).
    WakeFlood,
    /// A read transaction held open on `inbound.db` (a shared lock the host's commits wait for).
    /// Held from the test: the same kernel lock on the same file as a process in the container
    /// takes through its read-only mount.
    InboundReadLock,
}

/// The attacked session's paths.
#[derive(Clone)]
struct Target {
    /// A scratch folder outside the data dir (backups), inside the test's temp dir.
    scratch: PathBuf,
    /// `…/workspace`, written by the container.
    workspace: PathBuf,
    /// `…/host`, written by the host.
    host: PathBuf,
}

impl Target {
    fn outbound(&self) -> PathBuf {
        self.workspace.join("outbound.db")
    }

    fn journal(&self) -> PathBuf {
        self.workspace.join("outbound.db-journal")
    }

    /// Copies the honest `outbound.db` aside; [`Target::restore_outbound`] puts it back.
    fn backup_outbound(&self) {
        std::fs::copy(self.outbound(), self.scratch.join("outbound.db.honest")).unwrap();
    }

    /// The operator's repair: the honest `outbound.db` back in place (written into the same file,
    /// so it keeps the container user as its owner; a big file shrinks at once) and no journal.
    fn restore_outbound(&self) {
        let _ = std::fs::remove_file(self.journal());
        std::fs::copy(self.scratch.join("outbound.db.honest"), self.outbound()).unwrap();
    }

    /// `outbound.db` opened read-write, as the container's runner does.
    fn open_outbound(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(self.outbound()).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c
    }
}

/// An attack in place. `undo` ends what keeps running (a flooding thread, a held transaction) and
/// removes the planted files; it runs on drop too, so a failed run leaves no thread, lock or big
/// file behind.
struct Planted {
    undo: Option<Box<dyn FnOnce()>>,
    /// What the attack did, for the printed line (e.g. bytes the flood got written).
    detail: Arc<dyn Fn() -> String>,
    /// The attack has done all it does at least once (planted files: at once; the flood: its
    /// gigabyte written).
    done: Arc<dyn Fn() -> bool>,
}

impl Planted {
    fn files(undo: impl FnOnce() + 'static) -> Self {
        Planted { undo: Some(Box::new(undo)), detail: Arc::new(String::new), done: Arc::new(|| true) }
    }

    fn undo(mut self) {
        if let Some(u) = self.undo.take() {
            u();
        }
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        if let Some(u) = self.undo.take() {
            u();
        }
    }
}

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::FifoJournal => "fifo outbound.db-journal",
            Attack::RecursiveView => "messages_out view over a recursive cte",
            Attack::Trigger => "trigger in outbound.db",
            Attack::HugeValues => "64 MiB value in every column",
            Attack::SparseGigabyte => "1 GiB sparse outbound.db",
            Attack::SymlinkJournal => "symlinked outbound.db-journal",
            Attack::WakeFlood => "1 GiB to wake.sock",
            Attack::InboundReadLock => "read transaction held on inbound.db",
        }
    }

    /// Plants the attack in the idle session `t`.
    fn plant(self, t: &Target) -> Planted {
        match self {
            Attack::FifoJournal => {
                let journal = t.journal();
                // The runner's journal stays as an empty file between commits: replaced.
                let _ = std::fs::remove_file(&journal);
                let ok = std::process::Command::new("mkfifo").arg(&journal).status().unwrap();
                assert!(ok.success(), "mkfifo {}", journal.display());
                Planted::files(move || {
                    let _ = std::fs::remove_file(journal);
                })
            }
            Attack::RecursiveView => {
                t.backup_outbound();
                t.open_outbound()
                    .execute_batch(
                        "DROP TABLE messages_out;
                         CREATE VIEW messages_out AS
                           WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r)
                           SELECT 'x' || n AS id, 2 * n + 1 AS seq, NULL AS in_reply_to, n AS timestamp,
                                  NULL AS deliver_after, NULL AS recurrence, 'chat' AS kind, 'local' AS platform_id,
                                  'cli' AS channel_type, NULL AS thread_id, n AS content FROM r;",
                    )
                    .unwrap();
                let t = t.clone();
                Planted::files(move || t.restore_outbound())
            }
            Attack::Trigger => {
                t.backup_outbound();
                t.open_outbound()
                    .execute_batch(
                        "CREATE TRIGGER evil AFTER INSERT ON processing_ack BEGIN DELETE FROM messages_out; END",
                    )
                    .unwrap();
                let t = t.clone();
                Planted::files(move || t.restore_outbound())
            }
            Attack::HugeValues => {
                let free = free_bytes(&t.workspace);
                assert!(
                    free > HUGE_ROW_FREE_BYTES,
                    "only {free} bytes free on the data dir's filesystem; the oversize row needs {HUGE_ROW_FREE_BYTES}"
                );
                t.backup_outbound();
                let undo_paths = t.clone();
                // Armed before the write: a failed write still shrinks the file again.
                let planted = Planted::files(move || undo_paths.restore_outbound());
                let c = t.open_outbound();
                // Only this connection's settings: the file keeps its rollback-journal header.
                c.execute_batch("PRAGMA ignore_check_constraints = ON; PRAGMA synchronous = OFF; PRAGMA journal_mode = MEMORY;")
                    .unwrap();
                let n = HUGE_VALUE_BYTES;
                c.execute(
                    &format!(
                        "INSERT INTO messages_out (id, seq, in_reply_to, timestamp, deliver_after, recurrence, kind,
                           platform_id, channel_type, thread_id, content)
                         VALUES (CAST(zeroblob({n}) AS TEXT), zeroblob({n}), CAST(zeroblob({n}) AS TEXT),
                           CAST(zeroblob({n}) AS TEXT), CAST(zeroblob({n}) AS TEXT), CAST(zeroblob({n}) AS TEXT),
                           CAST(zeroblob({n}) AS TEXT), CAST(zeroblob({n}) AS TEXT), CAST(zeroblob({n}) AS TEXT),
                           CAST(zeroblob({n}) AS TEXT), CAST(zeroblob({n}) AS TEXT))"
                    ),
                    [],
                )
                .unwrap();
                planted
            }
            Attack::SparseGigabyte => {
                t.backup_outbound();
                let f = std::fs::OpenOptions::new().write(true).open(t.outbound()).unwrap();
                f.set_len(1 << 30).unwrap();
                let t = t.clone();
                Planted::files(move || t.restore_outbound())
            }
            Attack::SymlinkJournal => {
                // From `…/sessions/main/<id>/workspace`, four levels up is the data dir.
                let journal = t.journal();
                let _ = std::fs::remove_file(&journal);
                std::os::unix::fs::symlink("../../../../nanoclaw.db", &journal).unwrap();
                Planted::files(move || {
                    let _ = std::fs::remove_file(journal);
                })
            }
            Attack::WakeFlood => {
                let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
                let connections = Arc::new(AtomicU64::new(0));
                let closed = Arc::new(AtomicBool::new(false));
                let sock = t.host.join("wake.sock");
                let flooder = {
                    let (stop, written, connections, closed) =
                        (stop.clone(), written.clone(), connections.clone(), closed.clone());
                    std::thread::spawn(move || flood(&sock, &stop, &written, &connections, &closed))
                };
                let (w, c) = (written.clone(), connections.clone());
                Planted {
                    undo: Some(Box::new(move || {
                        stop.store(true, Ordering::SeqCst);
                        let _ = flooder.join();
                    })),
                    detail: {
                        let closed = closed.clone();
                        Arc::new(move || {
                            format!(
                                "flood: {} MiB written over {} connections{}",
                                w.load(Ordering::SeqCst) >> 20,
                                c.load(Ordering::SeqCst),
                                if closed.load(Ordering::SeqCst) {
                                    ", then the host closed the socket"
                                } else {
                                    ""
                                }
                            )
                        })
                    },
                    // Done when the gigabyte went in, or the host shut the door for good (the held
                    // session's socket is gone): either way the flood is over.
                    done: Arc::new(move || {
                        written.load(Ordering::SeqCst) >= FLOOD_BYTES || closed.load(Ordering::SeqCst)
                    }),
                }
            }
            Attack::InboundReadLock => {
                let c = rusqlite::Connection::open_with_flags(
                    t.host.join("inbound.db"),
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .unwrap();
                c.execute_batch("BEGIN").unwrap();
                let rows: i64 = c.query_row("SELECT count(*) FROM messages_in", [], |r| r.get(0)).unwrap();
                assert!(rows > 0, "the read transaction sees the warm-up messages");
                Planted::files(move || {
                    let _ = c.execute_batch("ROLLBACK");
                    drop(c);
                })
            }
        }
    }
}

/// Writes 1 MiB chunks of wake `OUTPUT` bytes to `sock` until [`FLOOD_BYTES`] were accepted or
/// `stop` is set, connecting again whenever the host closes the connection. Sets `closed` and
/// stops when, after a first connection, the socket refuses connections for 2 s (the host removed
/// it: the session is held).
#[expect(clippy::disallowed_methods, reason = "a plain thread backing off while the socket is not bound")]
fn flood(sock: &Path, stop: &AtomicBool, written: &AtomicU64, connections: &AtomicU64, closed: &AtomicBool) {
    let chunk = vec![b'o'; 1 << 20];
    let more = || !stop.load(Ordering::SeqCst) && written.load(Ordering::SeqCst) < FLOOD_BYTES;
    let mut refused_since: Option<std::time::Instant> = None;
    while more() {
        let Ok(mut s) = UnixStream::connect(sock) else {
            let since = *refused_since.get_or_insert_with(std::time::Instant::now);
            if connections.load(Ordering::SeqCst) > 0 && since.elapsed() > Duration::from_secs(2) {
                closed.store(true, Ordering::SeqCst);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        refused_since = None;
        connections.fetch_add(1, Ordering::SeqCst);
        s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        while more() {
            match s.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    written.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        }
    }
}

/// Free bytes on the filesystem of `path` (`df`).
fn free_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("df").args(["--output=avail", "-B1"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0)
}

/// Samples the RSS of a process every 50 ms on a thread; [`RssSampler::stop`] returns the largest.
struct RssSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    #[expect(clippy::disallowed_methods, reason = "a plain thread sampling at a fixed interval")]
    fn start(pid: u32) -> Self {
        let (stop, max) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let thread = {
            let (stop, max) = (stop.clone(), max.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(rss) = rss_bytes(pid) {
                        max.fetch_max(rss, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        RssSampler { stop, max, thread: Some(thread) }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.max.load(Ordering::SeqCst)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The host's note that session `sid` is held, if it reached the chat.
fn held_note(chat: &ChatLog, sid: &str) -> Option<String> {
    let release = format!("nanoclaw sessions release {sid}");
    chat.find(|f| {
        f["type"] == "reply"
            && f["in_reply_to"].is_null()
            && f["text"].as_str().is_some_and(|t| {
                t.contains(&release) && (t.contains("is quarantined") || t.contains("is paused"))
            })
    })
    .and_then(|f| f["text"].as_str().map(str::to_string))
}

/// Whether the central DB shows session `sid` held, with a reason.
fn held_in_store(data: &Path, sid: &str) -> bool {
    let (status, reason) = session_status(data, sid);
    matches!(status.as_str(), "quarantined" | "paused") && reason.is_some_and(|r| !r.is_empty())
}

/// The line of `nanoclaw sessions list` about `sid`, if it shows it held.
fn listed_held(data: &Path, sid: &str) -> Result<String, String> {
    let out = sessions_cmd(data, &["list"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let line = stdout.lines().find(|l| l.starts_with(sid)).map(str::to_string);
    match line {
        Some(l) if out.status.success() && (l.contains("quarantined") || l.contains("paused")) => Ok(l),
        _ => Err(format!(
            "`nanoclaw sessions list` does not show {sid} held (exit {:?}): {stdout}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// Round trips of the other session (`B:` messages), numbered from `from`; the durations of
/// those answered, and an error for each that was not.
fn round_trips(
    chat: &ChatLog,
    tag: &str,
    range: std::ops::Range<usize>,
    within: Duration,
) -> Vec<Result<Duration, String>> {
    range.map(|i| chat.round_trip(&format!("b-{tag}-{i}"), &format!("B: {tag} {i}"), within)).collect()
}

/// When the operator releases the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// After a restart of the service with the attack in place (the sequence).
    AfterRestart,
    /// On the service that held the session, without a restart.
    Running,
}

/// Frames of `chat` about client message `id`, for failure messages.
fn frames_about(chat: &ChatLog, id: &str) -> Vec<serde_json::Value> {
    chat.frames().into_iter().filter(|f| f["id"] == id || f["in_reply_to"] == id).collect()
}

/// Runs one attack end to end (see the module doc). Fails listing every check that did not hold.
fn run(attack: Attack, release: Release) {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let server = Server::start(&data, &[], &[]);
    add_cli_agent_group(&data, "other", "^B:", "^A:");
    let chat = ChatLog::connect(&data.join("cli.sock"));
    let mut failures: Vec<String> = Vec::new();

    // Warm-up: both sessions and their containers exist and answer.
    for i in 0..3 {
        let within = if i == 0 { FIRST_ANSWER_WITHIN } else { ROUND_TRIP_WITHIN };
        chat.round_trip(&format!("a-warm-{i}"), &format!("A: warm {i}"), within).unwrap();
        chat.round_trip(&format!("b-warm-{i}"), &format!("B: warm {i}"), within).unwrap();
    }
    // The runner of `main` is idle once its last turn is done: nothing races the plant.
    chat.wait(ROUND_TRIP_WITHIN, |f| f["type"] == "done" && f["id"] == "a-warm-2").expect("a-warm-2 done");
    let (sid, root) = session_of(&data, "main");
    let target = Target { scratch, workspace: root.join("workspace"), host: root.join("host") };
    let pid = server.pid();
    let baseline = rss_bytes(pid).unwrap();

    // The attack, and a message to the attacked session after it; the other session's round
    // trips run until the session is held and the attack is done (or the bounds pass).
    let sampler = RssSampler::start(pid);
    let planted = attack.plant(&target);
    let attacked = Instant::now();
    chat.send("a-trigger", "A: are you there?");
    let mut during = Vec::new();
    let mut held_after = None;
    for i in 0.. {
        during.extend(round_trips(&chat, "during", i..i + 1, ROUND_TRIP_WITHIN));
        if held_after.is_none() && held_note(&chat, &sid).is_some() && held_in_store(&data, &sid) {
            held_after = Some(attacked.elapsed());
        }
        let done = (planted.done)();
        let elapsed = attacked.elapsed();
        if held_after.is_some() && done && during.len() >= MIN_ROUND_TRIPS_DURING {
            break;
        }
        if held_after.is_none() && done && elapsed > HELD_WITHIN {
            break;
        }
        if elapsed > ATTACK_PHASE_CAP {
            failures
                .push(format!("the attack was not done after {ATTACK_PHASE_CAP:?}: {}", (planted.detail)()));
            break;
        }
    }
    let after = round_trips(&chat, "after", 0..ROUND_TRIPS_AFTER, ROUND_TRIP_WITHIN);
    let max_rss = sampler.stop();
    // A round trip that got no answer in time counts as its bound: the p99 is then a lower bound.
    let durations: Vec<Duration> =
        during.iter().map(|r| r.as_ref().copied().unwrap_or(ROUND_TRIP_WITHIN)).collect();
    let stalled = during.iter().any(Result::is_err);
    let delta = max_rss as i64 - baseline as i64;
    let mib = |b: i64| b as f64 / (1024.0 * 1024.0);

    let held_reason = session_status(&data, &sid).1;
    let trigger_accepted = chat.find(|f| f["type"] == "accepted" && f["id"] == "a-trigger").is_some();
    let mut trigger_frames = frames_about(&chat, "a-trigger");
    for e in during.iter().chain(after.iter()).filter_map(|r| r.as_ref().err()) {
        failures.push(format!("the other session stalled: {e}"));
    }
    match held_after {
        Some(_) => {
            if let Err(e) = listed_held(&data, &sid) {
                failures.push(e);
            }
        }
        None => failures.push(format!(
            "session {sid} not held within {HELD_WITHIN:?}: note to the chat {:?}, store status {:?}, frames about a-trigger {trigger_frames:?}",
            held_note(&chat, &sid),
            session_status(&data, &sid)
        )),
    }
    if delta > RSS_SLACK_BYTES as i64 {
        failures.push(format!(
            "host RSS grew {:.1} MiB (baseline {:.1} MiB, max {:.1} MiB), more than {} MiB",
            mib(delta),
            mib(baseline as i64),
            mib(max_rss as i64),
            RSS_SLACK_BYTES >> 20
        ));
    }

    // A restart with the attack in place.
    let (server, chat, restart) = match release {
        Release::Running => (server, chat, None),
        Release::AfterRestart => {
            drop(chat);
            let stopped = server.stop();
            if !stopped.success() {
                failures
                    .push(format!("the service did not stop cleanly with the attack in place: {stopped}"));
            }
            let (server, restart) = Server::start_timed(&data, &[], &[]);
            if restart >= RESTART_WITHIN {
                failures.push(format!(
                    "restart with the attack in place took {restart:?}, not under {RESTART_WITHIN:?}"
                ));
            }
            let chat = ChatLog::connect(&data.join("cli.sock"));
            let first = round_trips(&chat, "restarted", 0..1, FIRST_ANSWER_WITHIN);
            for r in first.into_iter().chain(round_trips(&chat, "restarted", 1..3, ROUND_TRIP_WITHIN)) {
                if let Err(e) = r {
                    failures.push(format!("after the restart, the other session: {e}"));
                }
            }
            if held_after.is_some()
                && let Err(e) = listed_held(&data, &sid)
            {
                failures.push(format!("after the restart: {e}"));
            }
            (server, chat, Some(restart))
        }
    };
    println!(
        "attack {}: rss baseline {:.1} MiB, max {:.1} MiB, delta {:+.1} MiB; other session round trips during the attack: n={}, p99 {}{} ms; held after {} ({}); restart {}{}; log {}",
        attack.name(),
        mib(baseline as i64),
        mib(max_rss as i64),
        mib(delta),
        durations.len(),
        if stalled { ">= " } else { "" },
        p99(&durations).as_millis(),
        held_after.map_or("never".to_string(), |d| format!("{} ms", d.as_millis())),
        held_reason.unwrap_or_else(|| "no reason recorded".into()),
        restart.map_or("-".to_string(), |d| format!("{} ms", d.as_millis())),
        match (planted.detail)() {
            d if d.is_empty() => String::new(),
            d => format!("; {d}"),
        },
        log_path(&data).display()
    );

    // Repair, and release on the running service; the session answers again.
    planted.undo();
    let out = sessions_cmd(&data, &["release", &sid]);
    if held_after.is_some() && !out.status.success() {
        failures.push(format!(
            "`nanoclaw sessions release {sid}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if let Err(e) = chat.round_trip("a-released", "A: back?", ANSWER_AFTER_RELEASE_WITHIN) {
        failures.push(format!("after the release ({release:?}), the attacked session: {e}"));
    }
    let answered = |f: &serde_json::Value| f["type"] == "reply" && f["in_reply_to"] == "a-trigger";
    if trigger_accepted
        && trigger_frames.iter().all(|f| !answered(f))
        && chat.wait(ROUND_TRIP_WITHIN, answered).is_none()
    {
        if release == Release::AfterRestart {
            trigger_frames.extend(frames_about(&chat, "a-trigger"));
        }
        failures.push(format!(
            "after the release ({release:?}), the message kept while the session was held was not answered: {trigger_frames:?}"
        ));
    }
    for r in round_trips(&chat, "released", 0..2, ROUND_TRIP_WITHIN) {
        if let Err(e) = r {
            failures.push(format!("after the release, the other session: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "attack {}: {} check(s) failed:\n- {}\n(service log: {})",
        attack.name(),
        failures.len(),
        failures.join("\n- "),
        log_path(&data).display()
    );
    drop(server);
}

#[test]
fn a_fifo_journal() {
    run(Attack::FifoJournal, Release::AfterRestart);
}

#[test]
fn a_view_over_a_recursive_cte() {
    run(Attack::RecursiveView, Release::AfterRestart);
}

#[test]
fn a_trigger() {
    run(Attack::Trigger, Release::AfterRestart);
}

#[test]
fn a_64_mib_value_in_every_column() {
    run(Attack::HugeValues, Release::AfterRestart);
}

#[test]
fn a_sparse_gigabyte_outbound_db() {
    run(Attack::SparseGigabyte, Release::AfterRestart);
}

#[test]
fn a_symlinked_journal() {
    run(Attack::SymlinkJournal, Release::AfterRestart);
}

#[test]
fn a_gigabyte_to_the_wake_socket() {
    run(Attack::WakeFlood, Release::AfterRestart);
}

#[test]
fn a_read_transaction_held_on_inbound_db() {
    run(Attack::InboundReadLock, Release::AfterRestart);
}

/// The operator's release on the service that held the session (no restart in between): the
/// session's next message is answered, as `nanoclaw sessions release` documents.
#[test]
fn a_release_on_the_running_service_takes_effect_at_the_next_message() {
    run(Attack::SymlinkJournal, Release::Running);
}
