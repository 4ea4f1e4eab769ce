//! TEMPORARY STUB of the container-file reader (replaced by the `door` branch): same API, naive
//! implementation over the old session_files reads.
#![allow(missing_docs)]

use crate::session_files::{self as files, SessionPaths};
use nanoclaw_protocol::rows::AckStatus;
use nanoclaw_protocol::validate::RawOutboundRow;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ReadLimits {
    pub max_file_bytes: u64,
    pub statement_deadline: Duration,
    pub read_deadline: Duration,
    pub max_rows: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 256 << 20,
            statement_deadline: Duration::from_secs(2),
            read_deadline: Duration::from_secs(5),
            max_rows: 500,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct OutboundRequest {
    pub messages_from_rowid: Option<i64>,
    pub acks_from_rowid: Option<i64>,
    pub max_rows: usize,
    pub claims_of_generation: Option<i64>,
    pub container_state: bool,
}

#[derive(Debug, Clone, Default)]
pub struct OutboundSnapshot {
    pub present: bool,
    pub messages: Vec<RawOutboundRow>,
    pub acks: Vec<AckRow>,
    pub claims: Vec<Claim>,
    pub container_state: Option<ContainerStateRow>,
}

#[derive(Debug, Clone)]
pub struct AckRow {
    pub rowid: i64,
    pub message_id: String,
    pub status: AckStatus,
    pub generation: i64,
}

#[derive(Debug, Clone)]
pub struct Claim {
    pub message_id: String,
    pub claimed_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone)]
pub struct ContainerStateRow {
    pub generation: i64,
    pub current_tool: Option<String>,
    pub declared_timeout: Option<Duration>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Violation {
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Violation(Violation),
    #[error("{what}: deadline passed")]
    Deadline { what: String },
    #[error("{0}")]
    Unavailable(String),
}

pub fn read_blocking(
    paths: &SessionPaths,
    _limits: &ReadLimits,
    req: &OutboundRequest,
) -> Result<OutboundSnapshot, ReadError> {
    let db = paths.outbound_db();
    if std::fs::symlink_metadata(&db).is_err() {
        return Ok(OutboundSnapshot::default());
    }
    let un = |e: files::SessionFileError| ReadError::Unavailable(e.to_string());
    let mut snap = OutboundSnapshot { present: true, ..Default::default() };
    if let Some(from) = req.messages_from_rowid {
        snap.messages = files::read_outbound(paths, from).map_err(un)?;
    }
    if let Some(from) = req.acks_from_rowid {
        let conn = nanoclaw_protocol::schema::open_outbound_reader(&db)
            .map_err(|e| ReadError::Unavailable(e.to_string()))?;
        let mut st = conn
            .prepare("SELECT rowid, message_id, status, generation FROM processing_ack WHERE rowid >= ?1 ORDER BY rowid LIMIT ?2")
            .map_err(|e| ReadError::Unavailable(e.to_string()))?;
        snap.acks = st
            .query_map(rusqlite::params![from, req.max_rows as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?))
            })
            .map_err(|e| ReadError::Unavailable(e.to_string()))?
            .filter_map(Result::ok)
            .filter_map(|(rowid, message_id, status, generation)| {
                Some(AckRow { rowid, message_id, status: AckStatus::parse(&status).ok()?, generation })
            })
            .collect();
    }
    if let Some(g) = req.claims_of_generation {
        snap.claims = files::claims_of(paths, g)
            .map_err(un)?
            .into_iter()
            .map(|(message_id, t)| Claim {
                message_id,
                claimed_at: nanoclaw_protocol::time::parse_ts(&t).ok(),
            })
            .collect();
    }
    if req.container_state {
        snap.container_state = Some(ContainerStateRow {
            generation: 0,
            current_tool: None,
            declared_timeout: files::declared_tool_timeout(paths),
        });
    }
    Ok(snap)
}

pub async fn read(
    paths: SessionPaths,
    limits: ReadLimits,
    req: OutboundRequest,
) -> Result<OutboundSnapshot, ReadError> {
    let deadline = limits.read_deadline;
    match tokio::time::timeout(
        deadline,
        tokio::task::spawn_blocking(move || read_blocking(&paths, &limits, &req)),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(ReadError::Unavailable(e.to_string())),
        Err(_) => Err(ReadError::Deadline { what: "outbound.db read".into() }),
    }
}

pub fn heartbeat_age(paths: &SessionPaths) -> Option<Duration> {
    files::heartbeat_age(paths)
}
