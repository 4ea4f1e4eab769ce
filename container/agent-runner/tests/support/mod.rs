//! A session in a temp dir with the runner running in-process over real SQLite files; the test
//! plays the host by writing `inbound.db` and reading `outbound.db` (no wake socket: the runner
//! polls every 50 ms).

#![allow(dead_code)]

use nanoclaw_agent::config::RunnerConfig;
use nanoclaw_protocol::schema::{open_inbound_writer, open_outbound_reader};
use rusqlite::params;
use std::path::PathBuf;
use std::time::Duration;

/// One reply row: id, in_reply_to, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub id: String,
    pub in_reply_to: Option<String>,
    pub text: String,
}

pub struct Session {
    pub tmp: tempfile::TempDir,
    pub session: PathBuf,
    pub workspace: PathBuf,
    runner: Option<tokio::task::JoinHandle<Result<i32, nanoclaw_agent::runner::RunnerError>>>,
    generation: i64,
    next_seq: i64,
}

impl Session {
    /// A session whose `runner.json` is `settings` (echo default when `None`).
    pub fn new(settings: Option<serde_json::Value>) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (session, workspace) = (tmp.path().join("host"), tmp.path().join("workspace"));
        std::fs::create_dir_all(&session).unwrap();
        std::fs::create_dir_all(&workspace).unwrap();
        if let Some(s) = settings {
            std::fs::write(session.join("runner.json"), s.to_string()).unwrap();
        }
        let c = open_inbound_writer(&session.join("inbound.db")).unwrap();
        c.execute(
            "INSERT INTO destinations (name, display_name, type, channel_type, platform_id) VALUES ('cli','Terminal','channel','cli','local')",
            [],
        )
        .unwrap();
        c.execute("INSERT INTO session_routing (id, channel_type, platform_id) VALUES (1,'cli','local')", [])
            .unwrap();
        Self { tmp, session, workspace, runner: None, generation: 0, next_seq: 2 }
    }

    /// Settings for echo with overrides merged in.
    pub fn settings(overrides: serde_json::Value) -> serde_json::Value {
        let mut v =
            serde_json::to_value(nanoclaw_protocol::settings::RunnerSettings::echo_default("Andy")).unwrap();
        for (k, val) in overrides.as_object().unwrap() {
            v[k] = val.clone();
        }
        v
    }

    /// Starts a runner (a new generation; the previous one is stopped first).
    pub fn start(&mut self) {
        self.start_with(None);
    }

    /// Starts a runner with a given provider (`None`: the one `runner.json` names).
    pub fn start_with(&mut self, provider: Option<Box<dyn nanoclaw_agent::provider::Provider>>) {
        self.stop();
        self.generation += 1;
        let config = RunnerConfig {
            session_dir: self.session.clone(),
            workspace_dir: self.workspace.clone(),
            skills_dir: self.tmp.path().join("skills"),
            generation: self.generation,
            provider: "echo".into(),
            assistant_name: "Andy".into(),
            poll_ms: 50,
            max_messages_per_prompt: 10,
            answer_fallback: nanoclaw_agent::tools::system::ANSWER_FALLBACK,
            host_lost_exit: None,
        };
        self.runner = Some(match provider {
            None => tokio::spawn(nanoclaw_agent::runner::run(config)),
            Some(p) => tokio::spawn(nanoclaw_agent::runner::run_with(config, p)),
        });
    }

    pub fn stop(&mut self) {
        if let Some(r) = self.runner.take() {
            r.abort();
        }
    }

    /// Writes a triggering chat message from `cli`; returns its id.
    pub fn send(&mut self, text: &str) -> String {
        let seq = self.next_seq;
        self.next_seq += 2;
        let id = format!("m{seq}:main");
        open_inbound_writer(&self.session.join("inbound.db"))
            .unwrap()
            .execute(
                "INSERT INTO messages_in (id, seq, kind, timestamp, trigger, platform_id, channel_type, content)
                 VALUES (?1, ?2, 'chat', ?3, 1, 'local', 'cli', ?4)",
                params![id, seq, nanoclaw_protocol::time::now_ts(), serde_json::json!({"text": text}).to_string()],
            )
            .unwrap();
        id
    }

    /// The ack status of a message.
    pub fn ack(&self, id: &str) -> Option<String> {
        let c = open_outbound_reader(&self.workspace.join("outbound.db")).ok()?;
        c.query_row("SELECT status FROM processing_ack WHERE message_id = ?1", [id], |r| r.get(0)).ok()
    }

    /// Every reply so far, in seq order.
    pub fn replies(&self) -> Vec<Reply> {
        let Ok(c) = open_outbound_reader(&self.workspace.join("outbound.db")) else { return vec![] };
        let mut st = c
            .prepare("SELECT id, in_reply_to, content FROM messages_out WHERE kind = 'chat' ORDER BY seq")
            .unwrap();
        st.query_map([], |r| {
            let content: String = r.get(2)?;
            let v: serde_json::Value = serde_json::from_str(&content).unwrap();
            Ok(Reply {
                id: r.get(0)?,
                in_reply_to: r.get(1)?,
                text: v["text"].as_str().unwrap_or("").to_string(),
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    /// Sends `text`, waits (up to `secs`) until its turn is acked, returns the replies it caused.
    pub async fn turn(&mut self, text: &str, secs: u64) -> Vec<Reply> {
        let before = self.replies().len();
        let id = self.send(text);
        tokio::time::timeout(Duration::from_secs(secs), async {
            while self.ack(&id).is_none_or(|s| s == "processing") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("turn {text:?} not finished in {secs} s"));
        self.replies().split_off(before)
    }

    /// `session_state` value.
    pub fn state(&self, key: &str) -> Option<String> {
        let c = open_outbound_reader(&self.workspace.join("outbound.db")).ok()?;
        c.query_row("SELECT value FROM session_state WHERE key = ?1", [key], |r| r.get(0)).ok()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The texts of replies.
pub fn texts(replies: &[Reply]) -> Vec<String> {
    replies.iter().map(|r| r.text.clone()).collect()
}
