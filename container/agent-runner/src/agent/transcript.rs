//! A provider's conversation on disk: JSONL of [`ChatMessage`] in
//! `<workspace>/transcripts/<provider>/<id>.jsonl`, pointed to by `session_state`
//! `continuation:<provider>` (the value is the path relative to the workspace).
//!
//! Both HTTP APIs are stateless, so the transcript is the conversation: it survives container and
//! host restarts, and each provider keeps its own, so switching provider and back resumes the
//! first thread. A file that cannot be read or parsed is replaced by a fresh one (the caller
//! tells the user once); the new path is stored at once, so it is never retried in a loop.
//!
//! Compaction ([`super::compact`]) rewrites the file in place: the older turns become a summary
//! pair (a user message starting with [`super::compact::SUMMARY_MARKER`] and an assistant
//! acknowledgement), plain messages of the same format, so files written before compaction
//! existed and files written after read the same way.

use crate::model::ChatMessage;
use nanoclaw_protocol::layout::TRANSCRIPTS_DIR;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest transcript read back, in bytes (compaction keeps real ones far below).
pub const MAX_TRANSCRIPT_BYTES: u64 = 64 * 1024 * 1024;

/// A loaded conversation.
#[derive(Debug)]
pub struct Transcript {
    /// The path relative to the workspace (the continuation value).
    pub rel: String,
    path: PathBuf,
    /// The messages, oldest first.
    pub messages: Vec<ChatMessage>,
}

/// How [`Transcript::open`] found the stored conversation.
#[derive(Debug)]
pub enum Opened {
    /// It was read back.
    Resumed(Transcript),
    /// There was none (or an old-style continuation): a new, empty one.
    Fresh(Transcript),
    /// It was unreadable: a new, empty one, and why.
    Reset(Transcript, String),
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn safe_name(provider: &str) -> String {
    provider
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect()
}

impl Transcript {
    /// A new, empty transcript file for `provider`.
    pub fn create(workspace: &Path, provider: &str) -> std::io::Result<Self> {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let rel = format!(
            "{TRANSCRIPTS_DIR}/{}/{ms}-{}.jsonl",
            safe_name(provider),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = workspace.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::OpenOptions::new().create_new(true).write(true).open(&path)?;
        Ok(Self { rel, path, messages: vec![] })
    }

    /// Opens the conversation named by `continuation` (or a fresh one).
    pub fn open(workspace: &Path, provider: &str, continuation: Option<&str>) -> std::io::Result<Opened> {
        let Some(rel) = continuation.filter(|c| c.starts_with(&format!("{TRANSCRIPTS_DIR}/"))) else {
            return Ok(Opened::Fresh(Self::create(workspace, provider)?));
        };
        match Self::read(workspace, rel) {
            Ok(messages) => {
                Ok(Opened::Resumed(Self { rel: rel.to_string(), path: workspace.join(rel), messages }))
            }
            Err(why) => Ok(Opened::Reset(Self::create(workspace, provider)?, why)),
        }
    }

    fn read(workspace: &Path, rel: &str) -> Result<Vec<ChatMessage>, String> {
        if Path::new(rel).components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(format!("{rel}: not a plain relative path"));
        }
        let path = workspace.join(rel);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{rel}: {e}"))?;
        if !meta.is_file() || meta.len() > MAX_TRANSCRIPT_BYTES {
            return Err(format!("{rel}: not a regular file under {MAX_TRANSCRIPT_BYTES} bytes"));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{rel}: {e}"))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| serde_json::from_str(l).map_err(|e| format!("{rel} line {}: {e}", n + 1)))
            .collect()
    }

    /// Replaces the file's content by `self.messages[..upto]` (after a compaction; the rest is
    /// the running turn, written when it succeeds). The new content goes to a temporary file
    /// beside it, renamed over it: a crash leaves the old conversation or the new one, never a
    /// mix, and the continuation (the path) stays the same.
    pub fn rewrite(&self, upto: usize) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for m in self.messages.get(..upto).unwrap_or_default() {
            serde_json::to_writer(&mut buf, m).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let tmp = self.path.with_extension("jsonl.tmp");
        // A leftover (or anything planted there) goes first: `create_new` follows no link.
        let _ = std::fs::remove_file(&tmp);
        let written = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&buf).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Writes `messages[from..]` to the end of the file (one JSON line each): the turn's new
    /// messages, once the turn succeeded.
    pub fn persist(&self, from: usize) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for m in self.messages.get(from..).unwrap_or_default() {
            serde_json::to_writer(&mut buf, m).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        f.write_all(&buf)
    }
}
