//! One service per data directory (issue part 7), through the real binary: a second `serve` is
//! refused with one line naming the holder's PID, `chat` talks to the running service (waiting
//! for one that holds the lock but is still starting), and the lock goes with its holder — on a
//! clean stop and on SIGKILL.

mod common;

use common::*;
use std::io::BufRead;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` to completion, killing it (and failing) if it is still running after `limit`.
#[allow(clippy::disallowed_methods)] // a plain test thread polling a child process
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("still running after {limit:?}; stderr: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn lock_file_pid(data: &std::path::Path) -> String {
    std::fs::read_to_string(data.join(nanoclaw_actors::disk::LOCK_FILE)).unwrap().trim().to_string()
}

#[test]
fn a_second_serve_is_refused_naming_the_holder_while_chat_reaches_the_first() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    let holder = server.child.id();
    assert_eq!(lock_file_pid(&data), holder.to_string());

    let mut second = nanoclaw(&data);
    second.args(["--runtime", "process", "serve"]);
    let out = output_within(second, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr,
        format!(
            "nanoclaw: data directory {} is in use by another nanoclaw service (pid {holder})\n",
            data.display()
        ),
        "exactly one line naming the data dir and the holder's PID"
    );

    // Chat goes to the running service; a second serve at the same moment is still refused.
    let mut chat = nanoclaw(&data);
    chat.args(["--runtime", "process", "chat", "-m", "hello"]);
    let mut again = nanoclaw(&data);
    again.args(["--runtime", "process", "serve"]);
    let chat = std::thread::spawn(move || output_within(chat, Duration::from_secs(60)));
    let refused = output_within(again, Duration::from_secs(30));
    let chat = chat.join().unwrap();
    assert!(chat.status.success(), "stderr: {}", String::from_utf8_lossy(&chat.stderr));
    assert_eq!(String::from_utf8_lossy(&chat.stdout), "echo: hello\n");
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains(&format!("(pid {holder})")));
    // The refused starts left the first service untouched: its socket still answers.
    let mut c = server.client();
    c.send("m-after", "still here");
    let frames = c.until(Duration::from_secs(30), |f| f["type"] == "done" && f["id"] == "m-after");
    assert_eq!(replies_to(&frames, "m-after"), vec!["echo: still here"]);
}

#[test]
fn the_lock_is_released_when_the_holder_stops_and_when_it_is_killed() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let first = Server::start(&data, &["--runtime", "process"], &[]);
    assert!(first.stop().success());
    assert_eq!(lock_file_pid(&data), "", "a clean stop clears the PID");

    let second = Server::start(&data, &["--runtime", "process"], &[]);
    assert_eq!(lock_file_pid(&data), second.child.id().to_string());
    let killed = second.child.id();
    second.kill(); // SIGKILL: the kernel drops the flock with the process
    assert_eq!(lock_file_pid(&data), killed.to_string(), "a killed holder leaves its PID behind");

    let third = Server::start(&data, &["--runtime", "process"], &[]);
    assert_eq!(lock_file_pid(&data), third.child.id().to_string());
    let out = nanoclaw(&data).args(["--runtime", "process", "chat", "-m", "after a crash"]).output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echo: after a crash\n");
}

#[test]
fn chat_waits_for_a_service_that_holds_the_lock_before_its_socket_is_up() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    // This test process plays a service that has taken the lock but not yet opened its socket.
    let lock = nanoclaw_actors::disk::DataDirLock::acquire(&data).unwrap();
    let mut chat = nanoclaw(&data)
        .args(["--runtime", "process", "chat", "--timeout", "60", "-m", "patience"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = chat.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let waiting = rx.recv_timeout(Duration::from_secs(30)).expect("chat says it waits");
    assert!(
        waiting.contains("waiting for the service")
            && waiting.contains(&format!("pid {}", std::process::id()))
            && waiting.contains(&data.display().to_string()),
        "{waiting}"
    );
    // The "service" comes up: the real one, once the lock is free.
    drop(lock);
    let _server = Server::start(&data, &["--runtime", "process"], &[]);
    let out = chat.wait_with_output().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(out.status.success(), "stderr: {rest:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echo: patience\n");
}

#[test]
fn chat_fails_with_one_clear_line_when_the_holder_never_opens_its_socket() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let _lock = nanoclaw_actors::disk::DataDirLock::acquire(&data).unwrap();
    let mut chat = nanoclaw(&data);
    chat.args(["--runtime", "process", "chat", "--timeout", "1", "-m", "anyone?"]);
    let out = output_within(chat, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!(
            "nanoclaw: data directory {} is in use by another nanoclaw service (pid {}), but {} did not answer within 1s (--timeout)",
            data.display(),
            std::process::id(),
            data.join("cli.sock").display()
        )
    );
}
