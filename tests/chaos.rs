//! Chaos against the real binary (`--runtime process`, CI-sized): 200 messages on the CLI
//! channel while the host is killed with SIGKILL at 5 random points. Every message must be
//! answered exactly once — 0 lost, 0 duplicated — as a client sees it that reconnects after each
//! crash, re-sends every message it has not seen answered (the ledger dedupes by id) and drops
//! repeats of a `message_out_id` the way `nanoclaw chat` does.
//!
//! The run is seeded: the seed is printed first, and `NANOCLAW_CHAOS_SEED=<seed>` replays the
//! same plan (message texts, bursts, kill points and kinds; the timing of the service is not
//! replayed). Every run has kills of both kinds:
//! - *hot*: the client stays connected; the host is killed a random 0–300 ms after a burst,
//!   somewhere in routing, a turn or a delivery;
//! - *away*: the client goes away right after its burst was accepted (a user closing the chat
//!   while the agent answers; the burst ends with a slow message); the host is killed once it
//!   has recorded a reply as delivered that the client has not seen (or after 3 s). The CLI
//!   channel keeps replies for absent clients for the next one (module doc of
//!   `src/channels/cli.rs`), so these must reach the client after the restart too.
//!
//! Focused tests beside it pin the two halves of the "away" case: a reply kept for an absent
//! client reaches the next client, and still does when the host crashed in between.

// A plain test driving separate processes: blocking reads, threads and sleeps are intended.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use nanoclaw::channels::cli::{RECENT_REPLY_IDS, RecentIds};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PROCESS: &[&str] = &["--runtime", "process"];
/// Messages of the run.
const MESSAGES: usize = 200;
/// SIGKILLs of the host.
const KILLS: usize = 5;
/// Most fresh messages in flight (sent, not answered) before the driver waits for replies.
const WINDOW: usize = 20;
/// No frame for this long while something is awaited ends the wait (pacing) or the run.
const STALL: Duration = Duration::from_secs(20);

/// Longest wait for the service to settle after the last message (retry backoffs included).
const QUIESCENCE: Duration = Duration::from_secs(90);

/// How a kill point finds the client (see the module doc).
#[derive(Debug, Clone, Copy)]
enum KillKind {
    Hot { delay: Duration },
    Away,
}

/// The seeded plan of a run.
#[derive(Debug)]
struct Plan {
    ids: Vec<String>,
    texts: Vec<String>,
    /// Kill points: after sending the message of this index (exclusive end of the burst).
    kills: BTreeMap<usize, KillKind>,
    /// Burst sizes, drawn as the run goes.
    rng: StdRng,
}

impl Plan {
    fn new(seed: u64) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let ids = (0..MESSAGES).map(|i| format!("chaos-{seed:016x}-{i:03}")).collect();
        let mut texts: Vec<String> = (0..MESSAGES)
            .map(|i| {
                let word: u32 = rng.random();
                // Some turns are slow, so kills land inside turns too.
                if rng.random_bool(0.15) {
                    format!("!sleep {} message {i} {word:08x}", rng.random_range(50..400))
                } else {
                    format!("message {i} {word:08x}")
                }
            })
            .collect();
        let mut points = BTreeSet::new();
        while points.len() < KILLS {
            points.insert(rng.random_range(10..MESSAGES - 10));
        }
        // Both kinds occur in every run: one kill of each, the others either.
        let mut away: Vec<bool> =
            (0..KILLS).map(|k| if k < 2 { k == 0 } else { rng.random_bool(0.5) }).collect();
        away.shuffle(&mut rng);
        let mut kills = BTreeMap::new();
        for (at, away) in points.into_iter().zip(away) {
            let kind = if away {
                // The last message before an away kill takes the agent a while, so its reply is
                // delivered while the client is away.
                texts[at - 1] = format!(
                    "!sleep {} message {} before the client goes away",
                    rng.random_range(150..400),
                    at - 1
                );
                KillKind::Away
            } else {
                KillKind::Hot { delay: Duration::from_millis(rng.random_range(0..300)) }
            };
            kills.insert(at, kind);
        }
        Plan { ids, texts, kills, rng }
    }
}

/// One connection of the driver: messages are written from the test thread; a reader thread
/// forwards every frame until the end of the stream (no read timeouts, so no frame is cut) and,
/// like `nanoclaw chat`, acks each reply it forwarded (the tally takes every forwarded frame).
/// One lock orders the two writers' lines.
struct Conn {
    stream: Arc<Mutex<UnixStream>>,
    frames: mpsc::Receiver<Value>,
    reader: JoinHandle<()>,
}

impl Conn {
    fn open(server: &Server) -> Conn {
        let stream = server.stream_when_up();
        let read = stream.try_clone().unwrap();
        let stream = Arc::new(Mutex::new(stream));
        let acks = stream.clone();
        let (tx, frames) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(read).lines() {
                let Ok(line) = line else { return };
                let frame = serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad frame {line:?}: {e}"));
                let ack = ack_line(&frame);
                if tx.send(frame).is_err() {
                    return;
                }
                // A lost ack (the service died, the client went away) only means the reply is
                // sent again to the next connection, where the tally drops it as a repeat.
                if let Some(ack) = ack {
                    let _ = acks.lock().unwrap().write_all(ack.as_bytes());
                }
            }
        });
        Conn { stream, frames, reader }
    }

    /// Sends a message; false when the service is gone.
    fn send(&mut self, id: &str, text: &str) -> bool {
        let frame = serde_json::json!({"type": "message", "id": id, "text": text});
        self.stream.lock().unwrap().write_all(format!("{frame}\n").as_bytes()).is_ok()
    }

    /// Every frame the reader forwarded, once it has ended.
    fn rest(self) -> Vec<Value> {
        self.reader.join().expect("the reader thread panicked");
        self.frames.try_iter().collect()
    }

    /// The client goes away: whatever it had not read yet is gone with it.
    fn close(self) -> Vec<Value> {
        let _ = self.stream.lock().unwrap().shutdown(std::net::Shutdown::Both);
        self.rest()
    }

    /// The service died: frames it wrote before dying are still read, up to the end of stream.
    fn finish(self) -> Vec<Value> {
        self.rest()
    }
}

/// What the client saw.
struct Tally {
    index: HashMap<String, usize>,
    /// Reply keys shown, exactly as `nanoclaw chat` remembers them.
    recent: RecentIds,
    /// Every key shown (for the delivery-ledger check).
    shown_keys: HashSet<String>,
    /// Replies shown, per message index: (key, text).
    shown: Vec<Vec<(Option<String>, String)>>,
    accepted: Vec<bool>,
    /// `done` seen for a message with no reply shown yet.
    done_before_reply: Vec<usize>,
    /// Replies to no message of the run, or without a key.
    strays: Vec<Value>,
    /// `failed` or `error` frames.
    failures: Vec<Value>,
    /// Reply frames dropped as repeats of a key shown before.
    repeats: usize,
}

impl Tally {
    fn new(plan: &Plan) -> Tally {
        Tally {
            index: plan.ids.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect(),
            recent: RecentIds::new(RECENT_REPLY_IDS),
            shown_keys: HashSet::new(),
            shown: vec![vec![]; plan.ids.len()],
            accepted: vec![false; plan.ids.len()],
            done_before_reply: vec![],
            strays: vec![],
            failures: vec![],
            repeats: 0,
        }
    }

    fn answered(&self, i: usize) -> bool {
        !self.shown[i].is_empty()
    }

    fn take(&mut self, frame: Value) {
        let id = |f: &Value, field: &str| f[field].as_str().and_then(|s| self.index.get(s).copied());
        match frame["type"].as_str() {
            Some("reply") => {
                let key = frame["message_out_id"].as_str().map(str::to_string);
                // `nanoclaw chat`: a key seen before is a repeat, not shown again.
                if key.as_deref().is_some_and(|k| !self.recent.insert(k)) {
                    self.repeats += 1;
                    return;
                }
                match (id(&frame, "in_reply_to"), &key) {
                    (Some(i), Some(k)) => {
                        // The `messages_out` row id: the channel key is `<session>:<row id>`.
                        self.shown_keys
                            .insert(k.rsplit_once(':').map_or(k.clone(), |(_, row)| row.to_string()));
                        self.shown[i].push((key, frame["text"].as_str().unwrap_or_default().to_string()));
                    }
                    _ => self.strays.push(frame),
                }
            }
            Some("accepted") => {
                if let Some(i) = id(&frame, "id") {
                    self.accepted[i] = true;
                }
            }
            Some("done") => {
                if let Some(i) = id(&frame, "id").filter(|i| !self.answered(*i)) {
                    self.done_before_reply.push(i);
                }
            }
            // The typing line while a turn runs: live only, never an answer or a failure.
            Some("working") => {}
            _ => self.failures.push(frame),
        }
    }

    fn take_all(&mut self, frames: Vec<Value>) {
        frames.into_iter().for_each(|f| self.take(f));
    }
}

/// Feeds frames into the tally until `done(tally)` holds; false when no frame came for `stall`.
/// Panics when the service closes the connection (it was not killed by the driver).
fn pump(
    conn: &Conn,
    tally: &mut Tally,
    server: &Server,
    stall: Duration,
    done: impl Fn(&Tally) -> bool,
) -> bool {
    let mut last = Instant::now();
    while !done(tally) {
        match conn.frames.recv_timeout(Duration::from_millis(50)) {
            Ok(frame) => {
                tally.take(frame);
                last = Instant::now();
            }
            Err(mpsc::RecvTimeoutError::Timeout) if last.elapsed() < stall => {}
            Err(mpsc::RecvTimeoutError::Timeout) => return false,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the service closed the connection; log: {}", server.log())
            }
        }
    }
    true
}

/// Feeds frames into the tally for `window`.
fn pump_for(conn: &Conn, tally: &mut Tally, server: &Server, window: Duration) {
    let until = Instant::now() + window;
    pump(conn, tally, server, window, |_| Instant::now() >= until);
}

/// True when the service has nothing left to do or send: no triggering inbound row is pending
/// and every outbound row has a final delivery record.
fn quiescent(data: &std::path::Path) -> bool {
    let session = session_dir(data);
    let open = |path: std::path::PathBuf| {
        let db =
            rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        db
    };
    let inbound = open(session.join("host/inbound.db"));
    let pending: i64 = inbound
        .query_row("SELECT count(*) FROM messages_in WHERE trigger = 1 AND status = 'pending'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let outbound_path = session.join("workspace/outbound.db");
    if pending > 0 || !outbound_path.exists() {
        return false;
    }
    let ids: Vec<String> = open(outbound_path)
        .prepare("SELECT id FROM messages_out")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let settled: HashSet<String> = delivery_rows(data)
        .into_iter()
        .filter(|r| r.status == "delivered" || r.status == "failed")
        .map(|r| r.key)
        .collect();
    ids.iter().all(|id| settled.contains(id))
}

fn chaos_seed() -> u64 {
    match std::env::var("NANOCLAW_CHAOS_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|e| panic!("NANOCLAW_CHAOS_SEED={s:?}: {e}")),
        Err(_) => rand::random(),
    }
}

#[test]
fn every_message_is_answered_exactly_once_across_host_sigkills() {
    run_chaos(PROCESS);
}

#[test]
fn every_message_is_answered_exactly_once_across_host_sigkills_with_docker() {
    if docker_available() {
        run_chaos(&[]);
    }
}

/// The chaos run of the module doc, with the service's runtime arguments `runtime`.
fn run_chaos(runtime: &[&str]) {
    let seed = chaos_seed();
    eprintln!(
        "chaos seed {seed} (replay: NANOCLAW_CHAOS_SEED={seed} cargo nextest run -p nanoclaw --test chaos)"
    );
    let mut plan = Plan::new(seed);
    eprintln!("kill points (after message index): {:?}", plan.kills);
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let mut tally = Tally::new(&plan);
    let mut server = Server::spawn(&data, runtime, &[]);
    let mut conn = Conn::open(&server);
    let (mut next, mut fresh_from, mut kills_done) = (0, 0, 0);
    while next < MESSAGES {
        let kill = plan.kills.range(next + 1..).next().map(|(at, kind)| (*at, *kind));
        let limit = kill.map_or(MESSAGES, |(at, _)| at);
        let end = (next + plan.rng.random_range(1..=8)).min(limit);
        let burst = next..end;
        for i in burst.clone() {
            assert!(
                conn.send(&plan.ids[i], &plan.texts[i]),
                "the service closed the connection; log: {}",
                server.log()
            );
        }
        next = end;
        // Pacing only: a stall here is judged by the final checks.
        pump(&conn, &mut tally, &server, STALL, |t| {
            (fresh_from..next).filter(|i| !t.answered(*i)).count() <= WINDOW
        });
        let Some((at, kind)) = kill.filter(|(at, _)| *at == next) else { continue };
        match kind {
            KillKind::Hot { delay } => {
                pump_for(&conn, &mut tally, &server, delay);
                server.crash();
                tally.take_all(conn.finish());
            }
            KillKind::Away => {
                pump(&conn, &mut tally, &server, STALL, |t| burst.clone().all(|i| t.accepted[i]));
                tally.take_all(conn.close());
                // Replies recorded delivered while the client was away (earlier losses excluded).
                let unseen = |tally: &Tally| -> HashSet<String> {
                    delivery_rows(&data)
                        .into_iter()
                        .filter(|r| r.status == "delivered" && !tally.shown_keys.contains(&r.key))
                        .map(|r| r.key)
                        .collect()
                };
                let before = unseen(&tally);
                let deadline = Instant::now() + Duration::from_secs(3);
                let mut away = 0;
                while Instant::now() < deadline && away == 0 {
                    std::thread::sleep(Duration::from_millis(10));
                    away = unseen(&tally).difference(&before).count();
                }
                eprintln!("{away} reply(ies) recorded delivered while the client was away");
                server.crash();
            }
        }
        kills_done += 1;
        eprintln!("kill {kills_done} ({kind:?}) after message {at}");
        server = Server::spawn(&data, runtime, &[]);
        conn = Conn::open(&server);
        fresh_from = next;
        // Everything not seen answered is sent again; the ledger dedupes what it committed.
        for i in (0..next).filter(|i| !tally.answered(*i)) {
            assert!(
                conn.send(&plan.ids[i], &plan.texts[i]),
                "the service closed the connection; log: {}",
                server.log()
            );
        }
    }
    assert_eq!(kills_done, KILLS);
    // The end. Messages whose turn a kill interrupted wait out a retry backoff (5 s, doubling),
    // so order proves nothing: wait until the service is quiescent — every triggering inbound
    // row final, every outbound row finally delivered or failed — then nothing more will be sent.
    let deadline = Instant::now() + QUIESCENCE;
    let mut last_check = Instant::now();
    let quiet = loop {
        if let Ok(frame) = conn.frames.recv_timeout(Duration::from_millis(50)) {
            tally.take(frame);
        }
        if last_check.elapsed() >= Duration::from_millis(200) {
            last_check = Instant::now();
            if quiescent(&data) {
                break true;
            }
        }
        if Instant::now() >= deadline {
            break false;
        }
    };
    // One more turn: the channel writes a client's frames in order, so once its `done` is in,
    // every frame sent before it has been read.
    let end = format!("chaos-{seed:016x}-end");
    assert!(conn.send(&end, "the end"));
    let mut end_frames = vec![];
    let ended = {
        let mut last = Instant::now();
        loop {
            match conn.frames.recv_timeout(Duration::from_millis(50)) {
                Ok(f) if f["type"] == "done" && f["id"] == end.as_str() => break true,
                Ok(f) if f["in_reply_to"] == end.as_str() || f["id"] == end.as_str() => end_frames.push(f),
                Ok(f) => {
                    tally.take(f);
                    last = Instant::now();
                }
                Err(_) if last.elapsed() < STALL => {}
                Err(_) => break false,
            }
        }
    };
    let rows = delivery_rows(&data);
    drop(conn);
    assert!(server.stop().success());

    let mut problems = vec![];
    if !quiet {
        problems.push(format!("the service was not quiescent {QUIESCENCE:?} after the last message"));
    }
    if !ended {
        problems.push(format!("the last turn did not end within {STALL:?} of the last frame"));
    }
    if !end_frames.iter().any(|f| f["type"] == "reply" && f["text"] == "echo: the end") {
        problems.push(format!("the last turn was not answered: {end_frames:?}"));
    }
    let lost: Vec<usize> = (0..MESSAGES).filter(|i| tally.shown[*i].is_empty()).collect();
    if !lost.is_empty() {
        problems.push(format!("{} message(s) never answered: {lost:?}", lost.len()));
    }
    for i in 0..MESSAGES {
        let shown = &tally.shown[i];
        if shown.len() > 1 {
            problems.push(format!("message {i} answered {} times (distinct keys): {shown:?}", shown.len()));
        }
        let want = format!("echo: {}", plan.texts[i]);
        if let Some((key, text)) = shown.iter().find(|(_, t)| *t != want) {
            problems.push(format!("message {i}: reply {key:?} is {text:?}, not {want:?}"));
        }
    }
    if !tally.strays.is_empty() {
        problems.push(format!("replies to no message of the run, or without a key: {:?}", tally.strays));
    }
    if !tally.failures.is_empty() {
        problems.push(format!("failed/error frames: {:?}", tally.failures));
    }
    if !tally.done_before_reply.is_empty() {
        problems.push(format!("`done` before any reply for messages {:?}", tally.done_before_reply));
    }
    let unsettled: Vec<_> = rows.iter().filter(|r| r.status != "delivered").collect();
    if !unsettled.is_empty() {
        problems.push(format!("delivery rows not delivered: {unsettled:?}"));
    }
    // The end turn's reply was read into `end_frames`, not the tally.
    let unseen: Vec<_> = rows
        .iter()
        .filter(|r| r.status == "delivered" && !tally.shown_keys.contains(&r.key))
        .filter(|r| !end_frames.iter().any(|f| is_key_of(f, &r.key)))
        .map(|r| r.key.as_str())
        .collect();
    if !unseen.is_empty() {
        problems.push(format!(
            "{} reply row(s) recorded `delivered` that no client ever received (the CLI channel accepted them, then lost them): {unseen:?}",
            unseen.len()
        ));
    }
    eprintln!(
        "chaos seed {seed}: {} reply frames dropped as repeats of a shown key; {} delivery rows",
        tally.repeats,
        rows.len()
    );
    assert!(
        problems.is_empty(),
        "chaos seed {seed} (replay with NANOCLAW_CHAOS_SEED={seed}):\n- {}\nlog: {}",
        problems.join("\n- "),
        log_path(&data).display()
    );
}

/// The frame that ends the turn of `id`.
fn ends(id: &str) -> impl Fn(&Value) -> bool + '_ {
    move |f| (f["type"] == "done" || f["type"] == "failed") && f["id"] == id
}

/// Sends a slow message, lets it be accepted and goes away; returns once the service recorded
/// the reply as delivered (to nobody: the CLI channel keeps it for the next client). Returns its
/// key.
fn reply_while_away(server: &Server, id: &str, text: &str) -> String {
    let mut client = server.client_when_up();
    client.send(id, text);
    client.until(Duration::from_secs(30), |f| f["type"] == "accepted" && f["id"] == id);
    drop(client);
    let mut key = None;
    eventually(Duration::from_secs(30), "the reply recorded delivered", || {
        key = delivery_rows(&server.data_dir).into_iter().find(|r| r.status == "delivered").map(|r| r.key);
        key.is_some()
    });
    key.unwrap()
}

#[test]
fn a_reply_for_an_absent_client_is_kept_for_the_next_one() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::spawn(&data, PROCESS, &[]);
    let key = reply_while_away(&server, "away-1", "!sleep 500 answered while you were away");
    let mut client = server.client();
    client.send("back-1", "back again");
    let frames = client.until(Duration::from_secs(30), ends("back-1"));
    assert_eq!(
        replies_to(&frames, "away-1"),
        vec!["echo: !sleep 500 answered while you were away"],
        "{frames:?}"
    );
    assert!(frames.iter().any(|f| is_key_of(f, &key)), "{frames:?}");
}

#[test]
fn a_reply_kept_for_an_absent_client_survives_a_host_crash() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::spawn(&data, PROCESS, &[]);
    let key = reply_while_away(&server, "away-1", "!sleep 500 answered while you were away");
    server.crash();
    let server = Server::spawn(&data, PROCESS, &[]);
    let mut client = server.client_when_up();
    client.send("back-1", "back again");
    // The outbox delivers in order: anything it would still send for `away-1` comes first.
    let frames = client.until(Duration::from_secs(30), ends("back-1"));
    assert_eq!(
        replies_to(&frames, "away-1"),
        vec!["echo: !sleep 500 answered while you were away"],
        "the reply {key}, recorded delivered while no client was connected, never reached one after the crash: {frames:?}"
    );
}
