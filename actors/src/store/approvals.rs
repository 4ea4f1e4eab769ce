//! Central-DB operations of approvals (DESIGN §10): requests of a human decision, their cards,
//! decisions, execution and expiry, and the questions agents ask. Plain functions on a
//! connection, run through [`super::Store::call`]; the approval actors
//! ([`crate::actors::approval`]) drive them.
//!
//! A row goes `pending` → (`approved` → `executed` | `failed`) | `denied` | `expired` |
//! `failed` | `cancelled`. Every step is a compare-and-set on the status it leaves, so a double
//! click, a second approver or a click racing the expiry changes the row once; the others learn
//! what happened ([`DecideOutcome`]).

use super::{SqlContext, StoreError};
use chrono::{DateTime, Utc};
use nanoclaw_protocol::time::{format_ts, now_ts, parse_ts};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use std::time::Duration;

column_enum! {
    /// `pending_approvals.kind`: what the decision is about.
    ApprovalKind {
        /// A system action of an agent (`install_packages`, `add_mcp_server`, …).
        Action = "action",
        /// An unknown sender asks to talk to an agent (the routing's sender request).
        Sender = "sender",
        /// A chat without an agent waits for registration (the routing's channel request).
        Channel = "channel",
        /// An agent's multiple-choice question to its chat.
        Question = "question",
    }
}

column_enum! {
    /// `pending_approvals.status`.
    ApprovalStatus {
        /// Waiting for a decision (its card may not be out yet).
        Pending = "pending",
        /// Approved; the action is being carried out.
        Approved = "approved",
        /// Approved and carried out (a question: answered).
        Executed = "executed",
        /// Could not be asked or carried out; `result` says why.
        Failed = "failed",
        /// Denied by a person.
        Denied = "denied",
        /// Nobody decided in time.
        Expired = "expired",
        /// Withdrawn (its session or request went away).
        Cancelled = "cancelled",
    }
}

impl ApprovalStatus {
    /// No further change: the row only waits for the retention sweep.
    pub fn is_final(self) -> bool {
        !matches!(self, ApprovalStatus::Pending | ApprovalStatus::Approved)
    }
}

column_enum! {
    /// `pending_approvals.decided_via`: how the decision arrived.
    DecidedVia {
        /// A button of the card (a `decision` frame on the CLI channel).
        Button = "button",
        /// A chat reply `approve <id>` / `deny <id>` (or a question's option number or text).
        Reply = "reply",
        /// `ncl approvals approve|deny <id>` on the host.
        Ncl = "ncl",
    }
}

/// Length of an approval id: 6 base32 characters (30 bits).
pub const APPROVAL_ID_LEN: usize = 6;

/// How long a decided row stays for audit before the sweep deletes it (90 days).
pub const APPROVAL_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// RFC 4648 base32, lowercase: what a person types back in `approve <id>`.
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The approval id of counter value `n` (< 2^30): a fixed bijection of the 30-bit counter, so
/// consecutive requests get unrelated-looking ids and no id is ever given twice while the counter
/// only grows.
pub fn approval_id_of(n: u32) -> String {
    const MASK: u32 = (1 << 30) - 1;
    // Multiplications by odd constants and xor-shifts are each bijective on 30-bit words.
    let mut x = n & MASK;
    x = x.wrapping_mul(0x2c1b_3c6d) & MASK;
    x ^= x >> 13;
    x = x.wrapping_mul(0x297a_2d39) & MASK;
    x ^= x >> 11;
    (0..APPROVAL_ID_LEN).rev().map(|i| BASE32[((x >> (i * 5)) & 31) as usize] as char).collect()
}

/// Whether `s` has the shape of an approval id: 6 characters of `a-z`, `2-7` (callers lowercase
/// what a person typed first).
pub fn is_approval_id(s: &str) -> bool {
    s.len() == APPROVAL_ID_LEN && s.bytes().all(|b| BASE32.contains(&b))
}

/// `v` as canonical JSON: object keys sorted at every depth, no whitespace. The hash on the card
/// is taken over exactly these bytes.
pub fn canonical_json(v: &serde_json::Value) -> String {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                serde_json::Value::Object(out)
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // serde_json keeps insertion order only with its `preserve_order` feature; inserting sorted
    // keys gives sorted output either way.
    serde_json::to_string(&sorted(v)).expect("a JSON value serialises")
}

/// The SHA-256 of a canonical payload, lowercase hex (64 characters).
pub fn payload_hash(canonical: &str) -> String {
    Sha256::digest(canonical.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The chat and sender whose turn caused a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// Channel type of the chat.
    pub channel_type: Option<String>,
    /// The chat.
    pub platform_id: Option<String>,
    /// The thread.
    pub thread_id: Option<String>,
    /// The namespaced sender (`<channel_type>:<handle>`).
    pub sender_id: Option<String>,
}

/// Where a card was (or is to be) delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardAddress {
    /// Channel type.
    pub channel_type: String,
    /// The chat.
    pub platform_id: String,
    /// The thread.
    pub thread_id: Option<String>,
}

/// A request to store.
#[derive(Debug, Clone)]
pub struct NewApproval {
    /// What it is about.
    pub kind: ApprovalKind,
    /// The action name (`install_packages`, `sender`, `channel`, `ask_user_question`, …).
    pub action: String,
    /// What asked (see the migration's comment); with `kind`, a repeat finds the same row.
    pub request_id: String,
    /// The payload; stored canonical, with its hash.
    pub payload: serde_json::Value,
    /// The agent group it concerns (none for a chat waiting for registration).
    pub agent_group_id: Option<String>,
    /// The requesting session.
    pub session_id: Option<String>,
    /// The chat and sender whose turn caused it.
    pub origin: Origin,
    /// How long it waits for a decision.
    pub ttl: Duration,
}

/// A stored approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The 6-character id.
    pub id: String,
    /// What it is about.
    pub kind: ApprovalKind,
    /// The action name.
    pub action: String,
    /// What asked.
    pub request_id: String,
    /// The canonical payload as stored.
    pub payload: String,
    /// The SHA-256 of the payload shown on the card.
    pub payload_hash: String,
    /// The agent group it concerns.
    pub agent_group_id: Option<String>,
    /// The requesting session.
    pub session_id: Option<String>,
    /// The chat and sender whose turn caused it.
    pub origin: Origin,
    /// The approver the card went to.
    pub approver_user_id: Option<String>,
    /// Where the card is.
    pub card: Option<CardAddress>,
    /// The platform's id of the card message (for edits).
    pub card_message_id: Option<String>,
    /// Failed attempts to deliver the card.
    pub card_attempts: i64,
    /// The status.
    pub status: ApprovalStatus,
    /// Who decided.
    pub decided_by: Option<String>,
    /// How.
    pub decided_via: Option<DecidedVia>,
    /// When it was decided (or expired).
    pub decided_at: Option<DateTime<Utc>>,
    /// Times its execution was begun.
    pub exec_attempts: i64,
    /// The outcome for people: an action's result, a failure's reason, a question's answer.
    pub result: Option<String>,
    /// The option the decider picked on a card with more than approve / deny (a chat's
    /// registration: `connect:<agent group id>` or `new:<agent name>`).
    pub choice: Option<String>,
    /// When it was asked.
    pub created_at: DateTime<Utc>,
    /// Until when it waits.
    pub expires_at: DateTime<Utc>,
}

impl Approval {
    /// The first 12 hex digits of the payload hash, as printed on the card.
    pub fn hash_prefix(&self) -> &str {
        &self.payload_hash[..self.payload_hash.len().min(12)]
    }

    /// The payload parsed. Errors when the stored text is not JSON (someone edited the row).
    pub fn payload_value(&self) -> Result<serde_json::Value, StoreError> {
        serde_json::from_str(&self.payload)
            .map_err(|e| StoreError::Invalid(format!("pending_approvals.payload of {}: {e}", self.id)))
    }

    /// Whether the stored payload still hashes to the hash the card showed.
    pub fn payload_intact(&self) -> bool {
        payload_hash(&self.payload) == self.payload_hash
    }
}

const APPROVAL_SELECT: &str = "SELECT approval_id, kind, action, request_id, payload, payload_hash, agent_group_id,
        session_id, origin_channel_type, origin_platform_id, origin_thread_id, origin_sender_id, approver_user_id,
        card_channel_type, card_platform_id, card_thread_id, card_message_id, card_attempts, status, decided_by,
        decided_via, decided_at, exec_attempts, result, created_at, expires_at, choice
   FROM pending_approvals";

fn approval_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Approval> {
    // An enum or time the schema should have refused: the row is reported, not guessed at.
    fn bad(col: usize, e: String) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, e.into())
    }
    let time = |col: usize| -> rusqlite::Result<DateTime<Utc>> {
        let s: String = r.get(col)?;
        parse_ts(&s).map_err(|e| bad(col, e.to_string()))
    };
    let card_channel: Option<String> = r.get(13)?;
    let card_platform: Option<String> = r.get(14)?;
    let decided_at: Option<String> = r.get(21)?;
    Ok(Approval {
        id: r.get(0)?,
        kind: ApprovalKind::parse(&r.get::<_, String>(1)?).map_err(|e| bad(1, e))?,
        action: r.get(2)?,
        request_id: r.get(3)?,
        payload: r.get(4)?,
        payload_hash: r.get(5)?,
        agent_group_id: r.get(6)?,
        session_id: r.get(7)?,
        origin: Origin {
            channel_type: r.get(8)?,
            platform_id: r.get(9)?,
            thread_id: r.get(10)?,
            sender_id: r.get(11)?,
        },
        approver_user_id: r.get(12)?,
        card: match (card_channel, card_platform) {
            (Some(channel_type), Some(platform_id)) => {
                Some(CardAddress { channel_type, platform_id, thread_id: r.get(15)? })
            }
            _ => None,
        },
        card_message_id: r.get(16)?,
        card_attempts: r.get(17)?,
        status: ApprovalStatus::parse(&r.get::<_, String>(18)?).map_err(|e| bad(18, e))?,
        decided_by: r.get(19)?,
        decided_via: match r.get::<_, Option<String>>(20)? {
            Some(v) => Some(DecidedVia::parse(&v).map_err(|e| bad(20, e))?),
            None => None,
        },
        decided_at: match decided_at {
            Some(s) => Some(parse_ts(&s).map_err(|e| bad(21, e.to_string()))?),
            None => None,
        },
        exec_attempts: r.get(22)?,
        result: r.get(23)?,
        created_at: time(24)?,
        expires_at: time(25)?,
        choice: r.get(26)?,
    })
}

/// Takes the next approval id from the counter. Errors after 2^30 ids (a billion requests).
fn next_approval_id(conn: &Connection) -> Result<String, StoreError> {
    let n: i64 = conn
        .query_row("UPDATE approval_ids SET next = next + 1 WHERE id = 1 RETURNING next - 1", [], |r| {
            r.get(0)
        })
        .sql("take an approval id")?;
    let n = u32::try_from(n)
        .ok()
        .filter(|n| *n < (1 << 30))
        .ok_or_else(|| StoreError::Invalid("approval_ids.next: every approval id is used".into()))?;
    Ok(approval_id_of(n))
}

/// Stores a request, or finds the one stored for the same (`kind`, `request_id`): an open one,
/// or for an agent's action or question (whose request ids are unique row ids) one in any
/// status. Returns the id and whether this call created it. Run it inside the caller's
/// transaction when the request comes with other rows.
pub fn create_approval(conn: &Connection, new: &NewApproval) -> Result<(String, bool), StoreError> {
    let found: Option<String> = conn
        .query_row(
            "SELECT approval_id FROM pending_approvals
              WHERE kind = ?1 AND request_id = ?2 AND (status IN ('pending','approved') OR kind IN ('action','question'))
              ORDER BY created_at DESC LIMIT 1",
            params![new.kind.as_str(), new.request_id],
            |r| r.get(0),
        )
        .optional()
        .sql("find approval")?;
    if let Some(id) = found {
        return Ok((id, false));
    }
    let id = next_approval_id(conn)?;
    let payload = canonical_json(&new.payload);
    let hash = payload_hash(&payload);
    let now = Utc::now();
    let expires = now + chrono::Duration::from_std(new.ttl).unwrap_or(chrono::Duration::days(3650));
    conn.execute(
        "INSERT INTO pending_approvals (approval_id, kind, action, request_id, payload, payload_hash, agent_group_id,
           session_id, origin_channel_type, origin_platform_id, origin_thread_id, origin_sender_id, status,
           created_at, expires_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'pending', ?13, ?14, ?13)",
        params![
            id,
            new.kind.as_str(),
            new.action,
            new.request_id,
            payload,
            hash,
            new.agent_group_id,
            new.session_id,
            new.origin.channel_type,
            new.origin.platform_id,
            new.origin.thread_id,
            new.origin.sender_id,
            format_ts(now),
            format_ts(expires),
        ],
    )
    .sql("store approval")?;
    Ok((id, true))
}

/// Loads an approval by id.
pub fn approval(conn: &Connection, id: &str) -> Result<Option<Approval>, StoreError> {
    conn.prepare_cached(&format!("{APPROVAL_SELECT} WHERE approval_id = ?1"))
        .sql("load approval")?
        .query_row([id], approval_from_row)
        .optional()
        .sql(format!("load approval {id}"))
}

/// Ids of the approvals that need their actor, after `after` in id order, at most `limit`: the
/// open ones (`pending`, `approved`) and the denials and expiries whose effects were not applied
/// yet (`result` still empty). The host's start restores them page by page.
pub fn approvals_to_restore(conn: &Connection, after: &str, limit: usize) -> Result<Vec<String>, StoreError> {
    conn.prepare_cached(
        "SELECT approval_id FROM pending_approvals
          WHERE (status IN ('pending','approved') OR (status IN ('denied','expired') AND result IS NULL))
            AND approval_id > ?1
          ORDER BY approval_id LIMIT ?2",
    )
    .sql("list approvals to restore")?
    .query_map(params![after, limit as i64], |r| r.get(0))
    .sql("list approvals to restore")?
    .collect::<Result<_, _>>()
    .sql("list approvals to restore")
}

/// The newest approvals (any status), at most `limit`, for listings.
pub fn recent_approvals(conn: &Connection, limit: usize) -> Result<Vec<Approval>, StoreError> {
    conn.prepare(&format!("{APPROVAL_SELECT} ORDER BY created_at DESC, approval_id LIMIT ?1"))
        .sql("list approvals")?
        .query_map([limit as i64], approval_from_row)
        .sql("list approvals")?
        .collect::<Result<_, _>>()
        .sql("list approvals")
}

/// Replaces the payload of a request whose card is not out yet (the host resolved what the agent
/// asked for, e.g. exact package versions), with its new hash. Returns false when the card went
/// out or the row is no longer pending: what a card showed never changes.
pub fn set_approval_payload(
    conn: &Connection,
    id: &str,
    payload: &serde_json::Value,
) -> Result<bool, StoreError> {
    let payload = canonical_json(payload);
    let hash = payload_hash(&payload);
    Ok(conn
        .execute(
            "UPDATE pending_approvals SET payload = ?2, payload_hash = ?3, updated_at = ?4
              WHERE approval_id = ?1 AND status = 'pending' AND card_message_id IS NULL AND card_platform_id IS NULL",
            params![id, payload, hash, now_ts()],
        )
        .sql("set approval payload")?
        == 1)
}

/// Records where the card went and its platform message id (when the platform gave one).
pub fn record_card(
    conn: &Connection,
    id: &str,
    approver: Option<&str>,
    card: &CardAddress,
    message_id: Option<&str>,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE pending_approvals SET approver_user_id = ?2, card_channel_type = ?3, card_platform_id = ?4,
           card_thread_id = ?5, card_message_id = ?6, updated_at = ?7
          WHERE approval_id = ?1",
        params![id, approver, card.channel_type, card.platform_id, card.thread_id, message_id, now_ts()],
    )
    .sql("record card")?;
    Ok(())
}

/// Counts one failed attempt to deliver the card; returns the new count.
pub fn count_card_attempt(conn: &Connection, id: &str) -> Result<i64, StoreError> {
    conn.query_row(
        "UPDATE pending_approvals SET card_attempts = card_attempts + 1, updated_at = ?2 WHERE approval_id = ?1
         RETURNING card_attempts",
        params![id, now_ts()],
        |r| r.get(0),
    )
    .sql("count card attempt")
}

/// What a decision found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecideOutcome {
    /// This decision took the row (now `approved`, `denied`, or for a question `executed`).
    Decided(Box<Approval>),
    /// No approval has this id.
    NotFound,
    /// Its time ran out (the expiry may not have been recorded yet).
    Expired,
    /// Someone decided first (or it failed, or was cancelled).
    AlreadyDecided {
        /// Its status now.
        status: ApprovalStatus,
        /// Who decided, when a person did.
        by: Option<String>,
    },
}

/// A decision to record with [`decide_approval`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    /// `approved`, `denied`, or `executed` (a question's answer).
    pub to: ApprovalStatus,
    /// The deciding user.
    pub by: &'a str,
    /// How the decision arrived.
    pub via: DecidedVia,
    /// The option picked, on cards with more than approve / deny.
    pub choice: Option<&'a str>,
    /// The outcome, when the decision is the whole of it (a question's answer).
    pub result: Option<&'a str>,
}

/// Decides a pending approval: a compare-and-set from `pending` to `decision.to`, only before
/// `expires_at`. Exactly one caller gets [`DecideOutcome::Decided`]; the others learn the state.
pub fn decide_approval(
    conn: &Connection,
    id: &str,
    decision: &Decision<'_>,
) -> Result<DecideOutcome, StoreError> {
    let now = now_ts();
    let d = decision;
    let n = conn
        .execute(
            "UPDATE pending_approvals SET status = ?2, decided_by = ?3, decided_via = ?4, decided_at = ?5,
               choice = ?6, result = coalesce(?7, result), updated_at = ?5
              WHERE approval_id = ?1 AND status = 'pending' AND expires_at > ?5",
            params![id, d.to.as_str(), d.by, d.via.as_str(), now, d.choice, d.result],
        )
        .sql("decide approval")?;
    let Some(row) = approval(conn, id)? else { return Ok(DecideOutcome::NotFound) };
    Ok(match (n, row.status) {
        (1, _) => DecideOutcome::Decided(Box::new(row)),
        (_, ApprovalStatus::Pending | ApprovalStatus::Expired) => DecideOutcome::Expired,
        (_, status) => DecideOutcome::AlreadyDecided { status, by: row.decided_by },
    })
}

/// Begins (again) the execution of an approved row; returns how many times it was begun, or
/// `None` when it is not `approved`. A row found `approved` at start is executed once more; a
/// third begin means two runs died mid-way, and the caller fails it.
pub fn begin_execution(conn: &Connection, id: &str) -> Result<Option<i64>, StoreError> {
    conn.query_row(
        "UPDATE pending_approvals SET exec_attempts = exec_attempts + 1, updated_at = ?2
          WHERE approval_id = ?1 AND status = 'approved' RETURNING exec_attempts",
        params![id, now_ts()],
        |r| r.get(0),
    )
    .optional()
    .sql("begin execution")
}

/// Ends an open approval in `to` (`executed`, `failed`, `expired`, `cancelled`) with `result`.
/// `expired` only leaves `pending`; the others leave `pending` or `approved`. Returns false when
/// the row had already ended (someone else finished it).
pub fn finish_approval(
    conn: &Connection,
    id: &str,
    to: ApprovalStatus,
    result: Option<&str>,
) -> Result<bool, StoreError> {
    let from = if to == ApprovalStatus::Expired { "('pending')" } else { "('pending','approved')" };
    let now = now_ts();
    Ok(conn
        .execute(
            &format!(
                "UPDATE pending_approvals SET status = ?2, result = coalesce(?3, result), updated_at = ?4,
                   decided_at = CASE WHEN ?2 = 'expired' THEN ?4 ELSE decided_at END
                  WHERE approval_id = ?1 AND status IN {from}"
            ),
            params![id, to.as_str(), result, now],
        )
        .sql("finish approval")?
        == 1)
}

/// Records that the effects of a denial or expiry were applied: `result` (empty until then, which
/// is what brings the row's actor back at start) gets the outcome line.
pub fn note_refusal_applied(conn: &Connection, id: &str, result: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE pending_approvals SET result = ?2 WHERE approval_id = ?1 AND result IS NULL",
        params![id, result],
    )
    .sql("record refusal")?;
    Ok(())
}

/// Deletes decided approvals last changed before `before` (audit retention,
/// [`APPROVAL_RETENTION`]), at most `batch`; returns how many.
pub fn sweep_approvals(conn: &Connection, before: DateTime<Utc>, batch: usize) -> Result<usize, StoreError> {
    conn.execute(
        "DELETE FROM pending_approvals WHERE rowid IN (
           SELECT rowid FROM pending_approvals
            WHERE updated_at < ?1 AND status NOT IN ('pending','approved') ORDER BY updated_at LIMIT ?2)",
        params![format_ts(before), batch as i64],
    )
    .sql("sweep approvals")
}

/// Who may approve for `agent_group_id`, in the order they are asked (DESIGN §10): admins of the
/// group, then global admins, then owners, each by grant time, each once. `None` (a chat not
/// wired to any group yet): global admins, then owners.
pub fn approvers_of(conn: &Connection, agent_group_id: Option<&str>) -> Result<Vec<String>, StoreError> {
    let mut st = conn
        .prepare_cached(
            "SELECT user_id FROM user_roles
              WHERE (role = 'admin' AND agent_group_id = ?1)
                 OR (role = 'admin' AND agent_group_id IS NULL)
                 OR role = 'owner'
              ORDER BY CASE WHEN role = 'admin' AND agent_group_id IS NOT NULL THEN 0
                            WHEN role = 'admin' THEN 1 ELSE 2 END, granted_at, user_id",
        )
        .sql("list approvers")?;
    let rows: Vec<String> = st
        .query_map([agent_group_id], |r| r.get(0))
        .sql("list approvers")?
        .collect::<Result<_, _>>()
        .sql("list approvers")?;
    let mut seen = std::collections::HashSet::new();
    Ok(rows.into_iter().filter(|u| seen.insert(u.clone())).collect())
}

/// An agent's question, with the approval row that carries its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The approval id (also the question's id).
    pub id: String,
    /// The asking session.
    pub session_id: String,
    /// The `messages_out` id of the `ask_user_question` row (its answer is `note-<this>`).
    pub message_out_id: String,
    /// The container generation that asked (the one whose tool waits for the answer).
    pub generation: i64,
    /// The chat asked.
    pub card: CardAddress,
    /// Title.
    pub title: String,
    /// The question.
    pub question: String,
    /// The options, 2 to 10.
    pub options: Vec<String>,
}

/// Stores the question part of a `question` approval (created first with
/// [`create_approval`]); a repeat does nothing.
pub fn create_question(conn: &Connection, q: &Question) -> Result<(), StoreError> {
    let options = serde_json::to_string(&q.options).expect("strings serialise");
    conn.execute(
        "INSERT INTO pending_questions (question_id, session_id, message_out_id, channel_type, platform_id, thread_id,
           title, question, options_json, created_at, generation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT (question_id) DO NOTHING",
        params![
            q.id,
            q.session_id,
            q.message_out_id,
            q.card.channel_type,
            q.card.platform_id,
            q.card.thread_id,
            q.title,
            q.question,
            options,
            now_ts(),
            q.generation
        ],
    )
    .sql("store question")?;
    Ok(())
}

const QUESTION_SELECT: &str =
    "SELECT q.question_id, q.session_id, q.message_out_id, q.channel_type, q.platform_id,
        q.thread_id, q.title, q.question, q.options_json, q.generation FROM pending_questions q";

fn question_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Question> {
    let options: String = r.get(8)?;
    Ok(Question {
        id: r.get(0)?,
        session_id: r.get(1)?,
        message_out_id: r.get(2)?,
        generation: r.get(9)?,
        card: CardAddress { channel_type: r.get(3)?, platform_id: r.get(4)?, thread_id: r.get(5)? },
        title: r.get(6)?,
        question: r.get(7)?,
        options: serde_json::from_str(&options).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, Box::new(e))
        })?,
    })
}

/// Loads a question by id.
pub fn question(conn: &Connection, id: &str) -> Result<Option<Question>, StoreError> {
    conn.query_row(&format!("{QUESTION_SELECT} WHERE q.question_id = ?1"), [id], question_from_row)
        .optional()
        .sql(format!("load question {id}"))
}

/// The questions still waiting for an answer in a chat, oldest first (at most 16): a reply there
/// that is an option's number or text answers the newest one it fits.
pub fn open_questions_in(
    conn: &Connection,
    channel_type: &str,
    platform_id: &str,
) -> Result<Vec<Question>, StoreError> {
    conn.prepare_cached(&format!(
        "{QUESTION_SELECT} JOIN pending_approvals a ON a.approval_id = q.question_id
          WHERE q.channel_type = ?1 AND q.platform_id = ?2 AND a.status = 'pending' AND a.expires_at > ?3
          ORDER BY q.created_at, q.question_id LIMIT 16"
    ))
    .sql("list open questions")?
    .query_map(params![channel_type, platform_id, now_ts()], question_from_row)
    .sql("list open questions")?
    .collect::<Result<_, _>>()
    .sql("list open questions")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_six_base32_characters_and_distinct_over_a_long_run() {
        let mut seen = std::collections::HashSet::new();
        for n in (0..200_000u32).chain([(1 << 30) - 1]) {
            let id = approval_id_of(n);
            assert!(is_approval_id(&id), "{id}");
            assert!(seen.insert(id), "id of {n} repeats");
        }
        assert_ne!(approval_id_of(1)[..4], approval_id_of(2)[..4], "consecutive ids look unrelated");
        assert!(!is_approval_id("abc12z") && !is_approval_id("ABCDEF") && !is_approval_id("abcde"));
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[{"d":1,"c":2}],"x":null}}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":{"x":null,"y":[{"c":2,"d":1}]},"b":1}"#);
        assert_eq!(payload_hash("").len(), 64);
    }
}
