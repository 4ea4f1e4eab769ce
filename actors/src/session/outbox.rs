//! The outbox of one session: reads what the container wrote, syncs its acks, delivers its
//! messages, and sends the notices of finished turns — in a task of its own, off the session
//! actor's mailbox, so a slow channel or a slow (or hostile) `outbound.db` never delays `Kill`,
//! stuck detection or shutdown.
//!
//! Driven by one coalescing notification ([`Outbox::poke`]: wake bytes from the container, new
//! input, the session's timers) and by timers armed for the next due instant (a delivery retry,
//! a scheduled `deliver_after`), with a slow fallback pass ([`FALLBACK`]). Every pass reads one
//! page of `messages_out` and one of `processing_ack` through [`crate::container_files`] (the one
//! door for container files), starting at cursors persisted in `inbound.db` — so a pass costs the
//! same after 100,000 messages as after 10.
//!
//! Delivery keeps DESIGN §5 invariant 3: a reservation (`sending`) is committed before each send
//! and the platform message id after it. What a pass decides (acks, delivery records, notes to
//! the agent, cursors) is committed in one transaction ([`files::commit_batch`]) right before
//! each send, with that send's reservation, and once at the pass's end. The "processed" notice of a turn goes out only when every
//! reply read so far is final. A row the validator refuses is failed with its reason and the agent
//! told with a note (`trigger = 0`, which never counts as pending work).
//!
//! The outbox reports to the session actor through a callback (one report per pass, so reports
//! are as coalesced as passes): progress, and rule violations that call for quarantine.

use crate::container_files::{self, OutboundRequest, OutboxFileError, ReadError, ReadLimits};
use crate::context::ServiceContext;
use crate::ports::channel::{
    Delivery, EditRequest, LinkButton, Notice, OutboundCard, OutboundFile, OutboundMessage, ReactionRequest,
};
use crate::session_files::{
    self as files, Cursors, FinishedMessage, LedgerBatch, NewInbound, PageView, RecordWrite, SessionPaths,
};
use crate::store::{self, SessionInfo};
use nanoclaw_protocol::content::{OutboundContent, SystemAction, SystemNotice};
use nanoclaw_protocol::rows::{AckStatus, DeliveryStatus};
use nanoclaw_protocol::validate::{OutboundBody, Rejected, ValidOutbound};
use nanoclaw_protocol::wake;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use super::notices;

/// A file name that is one plain path component: not empty, not `.` or `..`, no `/` or NUL, at
/// most 255 bytes (checked again on the host before it writes into another session's inbox).
fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// The key a channel deduplicates a reply by (`OutboundMessage::message_out_id`):
/// `<session id>:<messages_out id>`, unique across sessions and stable across host restarts (a
/// re-send after a crash uses the same key).
pub fn delivery_key(session_id: &str, row_id: &str) -> String {
    format!("{session_id}:{row_id}")
}

/// The slow fallback pass when nothing pokes the outbox (DESIGN §6: wake signals first).
pub const FALLBACK: Duration = Duration::from_secs(30);

/// Consecutive reads past their deadline before the session is quarantined.
pub const DEADLINE_STRIKES: u32 = 3;

/// Most finished turns whose notices wait for their replies.
const MAX_WAITING_NOTICES: usize = 1024;

/// How long a row waits for its channel to be running (a restart) before it is failed; the
/// waiting costs it no delivery attempt.
const CHANNEL_WAIT: Duration = Duration::from_secs(300);

/// Testing knob: with `NANOCLAW_TEST_CRASH_AFTER_RESERVE=1` the process aborts right after the
/// first delivery reservation is committed and before the send — the one instant whose crash
/// rule (DESIGN §5 invariant 3) a test cannot otherwise hit on purpose. Never set it in production.
pub const CRASH_AFTER_RESERVE_ENV: &str = "NANOCLAW_TEST_CRASH_AFTER_RESERVE";

static CRASH_AFTER_RESERVE: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var(CRASH_AFTER_RESERVE_ENV).is_ok_and(|v| v == "1"));

/// Between two looks for a channel that is not running.
const CHANNEL_POLL: Duration = Duration::from_secs(2);

/// How long a `CLAIMED` byte may wait for its pass ([`wake::CLAIM_LOOK_MS`]).
const CLAIM_LOOK: Duration = Duration::from_millis(wake::CLAIM_LOOK_MS);

/// Least time between two "working" notices to one chat (a typing indicator, not a log).
pub const WORKING_EVERY: Duration = Duration::from_secs(1);

/// What a chat row becomes before its send.
enum Prepared {
    /// Send this; the text is what the chat is told if its outcome stays unknown.
    Ready(Delivery, String),
    /// The row fails with this one-line reason (names the row and the rule).
    Failed(String),
    /// Not yet (a transient read error, the target's delivery still in flight): look again.
    Wait,
}

/// What a pass tells the session actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxReport {
    /// A pass completed.
    Progress {
        /// Inbound rows that reached a final status in this pass.
        finished: usize,
        /// Messages delivered in this pass.
        delivered: usize,
        /// When the newest claim of the current container still in flight was first seen by the
        /// host (host clock: the container's timestamps are not trusted); `None`: no claims.
        newest_claim_seen: Option<Instant>,
        /// Declared timeout of the tool in flight (untrusted; the liveness verdict caps it).
        declared_timeout: Option<Duration>,
        /// Rows not yet final remain (retries, scheduled messages, unread pages).
        outstanding: bool,
        /// Notes to the agent written since the last report (answers to its system actions,
        /// refusals): the session sends the runner a wake byte, so a tool waiting for its
        /// answer sees it at once instead of at its fallback read.
        notes: usize,
    },
    /// The container's files break the rules: quarantine the session.
    Violation(String),
}

/// What wakes an outbox, shared with the session's wake link (which pokes it on the runner's
/// bytes) and the session actor.
#[derive(Debug, Default)]
pub struct OutboxPokes {
    /// A pass now (`OUTPUT`: new rows or acks; the session's own requests).
    pub now: Notify,
    /// A pass within [`wake::CLAIM_LOOK_MS`] (`CLAIMED`: a turn started). A pass asked for
    /// meanwhile covers it.
    pub claimed: Notify,
}

/// Handle to the outbox task; dropping it stops the task.
pub struct Outbox {
    notify: Arc<OutboxPokes>,
    generation: Arc<AtomicI64>,
    _task: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("generation", &self.generation.load(Ordering::Relaxed)).finish()
    }
}

impl Outbox {
    /// Starts the outbox of `session`. `notify` is shared with the wake link (the runner's
    /// bytes poke the outbox directly); `report` receives one report per pass and returns false
    /// when the session is gone.
    pub fn spawn(
        ctx: Arc<ServiceContext>,
        session: SessionInfo,
        paths: SessionPaths,
        notify: Arc<OutboxPokes>,
        report: impl Fn(OutboxReport) -> bool + Send + Sync + 'static,
    ) -> Outbox {
        let generation = Arc::new(AtomicI64::new(0));
        let limits = ReadLimits { max_file_bytes: ctx.config.outbound_max_bytes, ..ReadLimits::default() };
        let worker = Worker {
            ctx,
            session,
            paths,
            limits,
            notify: notify.clone(),
            generation: generation.clone(),
            report: Box::new(report),
            cursors: None,
            retry_at: HashMap::new(),
            channel_wait: HashMap::new(),
            scheduled: None,
            claims_seen: HashMap::new(),
            waiting_notices: VecDeque::new(),
            working_shown: None,
            working_sent: None,
            working_due: None,
            claim_look: None,
            strikes: 0,
            unavailable: None,
            last_warning: None,
            notes_written: AtomicUsize::new(0),
            batch: LedgerBatch::default(),
            view: PageView::default(),
            finished_in_pass: 0,
        };
        Outbox { notify, generation, _task: AbortOnDropHandle::new(tokio::spawn(worker.run())) }
    }

    /// Asks for a pass soon (coalesces with any pending request).
    pub fn poke(&self) {
        self.notify.now.notify_one();
    }

    /// Sets the generation of the current container (its claims are the ones that count).
    pub fn set_generation(&self, generation: i64) {
        self.generation.store(generation, Ordering::SeqCst);
    }
}

struct Worker {
    ctx: Arc<ServiceContext>,
    session: SessionInfo,
    paths: SessionPaths,
    limits: ReadLimits,
    notify: Arc<OutboxPokes>,
    generation: Arc<AtomicI64>,
    report: Box<dyn Fn(OutboxReport) -> bool + Send + Sync>,
    /// Persisted cursors, loaded at the first pass.
    cursors: Option<Cursors>,
    /// Rows waiting for a delivery retry, and when.
    retry_at: HashMap<String, Instant>,
    /// Rows waiting for their channel to run again, since when.
    channel_wait: HashMap<String, Instant>,
    /// The earliest `deliver_after` of a scheduled row.
    scheduled: Option<Instant>,
    /// Claims of the current container, with when the host first saw each.
    claims_seen: HashMap<String, (i64, Instant)>,
    /// Finished turns whose notices wait until every reply read so far is final.
    waiting_notices: VecDeque<FinishedMessage>,
    /// The "working" state the chat was last told (`Some(tool)`); `None`: not working.
    working_shown: Option<Option<String>>,
    /// When the last "working" notice went out.
    working_sent: Option<Instant>,
    /// A changed "working" state waits for [`WORKING_EVERY`] to pass since the last notice.
    working_due: Option<Instant>,
    /// A `CLAIMED` byte came: the pass due by then.
    claim_look: Option<Instant>,
    /// Consecutive reads past their deadline.
    strikes: u32,
    /// Retry after a transient read error, with its backoff.
    unavailable: Option<(Instant, Duration)>,
    /// The last warning logged, so a broken state is logged once, not every pass.
    last_warning: Option<String>,
    /// Notes to the agent written since the last report (`notes` of [`OutboxReport::Progress`]).
    notes_written: AtomicUsize,
    /// What the pass decided and has not committed yet: committed in one transaction before the
    /// next send (with its reservation) and at the pass's end ([`files::commit_batch`]). Kept
    /// when a commit fails, and committed first by the next pass.
    batch: LedgerBatch,
    /// The page's delivery records and answered messages, read once per pass and kept up to
    /// date with the batch.
    view: PageView,
    /// Inbound rows made final by this pass's commits.
    finished_in_pass: usize,
}

/// Why a pass stopped early.
enum PassError {
    /// The session is to be quarantined; the worker waits to be dropped.
    Violation(String),
    /// A transient problem; retry later.
    Retry(String),
}

impl Worker {
    async fn run(mut self) {
        loop {
            let next = self.next_due();
            tokio::select! {
                _ = self.notify.now.notified() => {}
                _ = self.notify.claimed.notified() => {
                    // A turn started: a pass soon shows it (a shorter turn's reply asks sooner).
                    self.claim_look.get_or_insert(Instant::now() + CLAIM_LOOK);
                    continue;
                }
                _ = tokio::time::sleep_until(next) => {}
            }
            self.claim_look = None;
            debug!(session = %self.session.id, "hop: outbox pass");
            match self.pass().await {
                Ok(report) => {
                    self.unavailable = None;
                    self.last_warning = None;
                    if !(self.report)(report) {
                        return;
                    }
                }
                Err(PassError::Violation(reason)) => {
                    let _ = (self.report)(OutboxReport::Violation(reason));
                    // The session kills its container and drops this task.
                    std::future::pending::<()>().await;
                }
                Err(PassError::Retry(why)) => {
                    let backoff =
                        self.unavailable.map_or(Duration::from_secs(1), |(_, d)| (d * 2).min(FALLBACK));
                    self.unavailable = Some((Instant::now() + backoff, backoff));
                    if self.last_warning.as_deref() != Some(why.as_str()) {
                        warn!(session = %self.session.id, error = %why, ?backoff, "outbox pass failed; will retry");
                        self.last_warning = Some(why);
                    }
                }
            }
        }
    }

    /// The next instant a pass is due without a poke.
    fn next_due(&self) -> Instant {
        let mut next = Instant::now() + FALLBACK;
        let timers = self.scheduled.iter().chain(self.working_due.iter()).chain(self.claim_look.iter());
        for t in self.retry_at.values().chain(timers) {
            next = next.min(*t);
        }
        if let Some((t, _)) = self.unavailable {
            next = next.min(t);
        }
        next
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SessionPaths) -> Result<T, files::SessionFileError> + Send + 'static,
    ) -> Result<T, PassError> {
        let paths = self.paths.clone();
        match tokio::task::spawn_blocking(move || f(&paths)).await {
            Ok(r) => r.map_err(|e| PassError::Retry(e.to_string())),
            Err(e) => Err(PassError::Retry(format!("blocking task failed: {e}"))),
        }
    }

    /// Commits the batch (see [`Worker::batch`]); returns the attempts of its last record.
    async fn commit(&mut self) -> Result<Option<i64>, PassError> {
        if self.batch.is_empty() {
            return Ok(None);
        }
        let batch = self.batch.clone();
        let done = self.blocking(move |p| files::commit_batch(p, &batch)).await?;
        debug!(session = %self.session.id, "hop: ledger batch committed");
        self.batch = LedgerBatch::default();
        self.finished_in_pass += done.finished.len();
        for f in done.finished {
            if f.kind == "chat" && self.waiting_notices.len() < MAX_WAITING_NOTICES {
                self.waiting_notices.push_back(f);
            }
        }
        if done.notes_added > 0 {
            self.notes_written.fetch_add(done.notes_added, Ordering::Relaxed);
            debug!(session = %self.session.id, notes = done.notes_added, "notes to agent written");
        }
        Ok(done.last_attempts)
    }

    async fn pass(&mut self) -> Result<OutboxReport, PassError> {
        // What an earlier pass could not commit goes first: the records on disk must be current
        // before any row is looked at again.
        self.finished_in_pass = 0;
        self.commit().await?;
        let cursors = match self.cursors {
            Some(c) => c,
            None => {
                let c = self.blocking(files::read_cursors).await?;
                self.cursors = Some(c);
                c
            }
        };
        let req = OutboundRequest {
            messages_from_rowid: Some(cursors.messages_out),
            acks_from_rowid: Some(cursors.processing_ack),
            claims_of_generation: None,
            claims_from_rowid: 0,
            container_state: true,
        };
        let snapshot = match container_files::read(self.paths.clone(), self.limits.clone(), req).await {
            Ok(s) => {
                self.strikes = 0;
                s
            }
            Err(ReadError::Violation(v)) => return Err(PassError::Violation(v.to_string())),
            Err(e @ ReadError::Deadline { .. }) => {
                self.strikes += 1;
                warn!(session = %self.session.id, error = %e, strikes = self.strikes, "reading the container's files passed its deadline");
                if self.strikes >= DEADLINE_STRIKES {
                    return Err(PassError::Violation(format!("{e} ({} reads in a row)", self.strikes)));
                }
                return Err(PassError::Retry(e.to_string()));
            }
            Err(e @ ReadError::Unavailable { .. }) => return Err(PassError::Retry(e.to_string())),
        };
        debug!(session = %self.session.id, "hop: outbound read");
        let mut next = cursors;

        // Acks: sync the final ones, note the current container's claims, advance the low water
        // over the contiguous final prefix.
        let generation = self.generation.load(Ordering::SeqCst);
        let now = Instant::now();
        let mut final_acks = Vec::new();
        let mut blocked = false;
        let mut current_claims = HashMap::new();
        for ack in &snapshot.acks {
            let ack = match ack {
                Ok(a) => a,
                Err(rejected) => {
                    // A malformed ack row is the container's problem: it never blocks the cursor.
                    debug!(session = %self.session.id, rowid = rejected.rowid, error = %rejected.error, "ack row rejected");
                    if !blocked {
                        next.processing_ack = rejected.rowid + 1;
                    }
                    continue;
                }
            };
            match ack.status {
                AckStatus::Completed | AckStatus::Failed => {
                    final_acks.push(ack.clone());
                    if !blocked {
                        next.processing_ack = ack.rowid + 1;
                    }
                }
                AckStatus::Processing => {
                    blocked = true;
                    if ack.generation == generation {
                        let seen = self.claims_seen.get(&ack.message_id).filter(|(r, _)| *r == ack.rowid);
                        current_claims
                            .insert(ack.message_id.clone(), (ack.rowid, seen.map_or(now, |(_, t)| *t)));
                    }
                }
            }
        }
        self.claims_seen = current_claims;
        let tool = snapshot
            .container_state
            .as_ref()
            .and_then(|s| s.as_ref().ok())
            .filter(|s| s.generation == generation)
            .and_then(|s| s.current_tool.clone());
        self.working(!self.claims_seen.is_empty() || tool.is_some(), tool);
        // Committed with the first send's reservation or at the end of the pass.
        self.batch.acks = final_acks;

        // One read of what the page needs from `inbound.db`.
        let keys: Vec<String> = snapshot
            .messages
            .iter()
            .map(|row| match row {
                Ok(v) => v.id.clone(),
                Err(r) => r.key.clone(),
            })
            .collect();
        let answered: Vec<String> =
            snapshot.messages.iter().filter_map(|row| row.as_ref().ok()?.in_reply_to.clone()).collect();
        self.view = self.blocking(move |p| files::page_view(p, &keys, &answered)).await?;
        debug!(session = %self.session.id, "hop: page view read");

        // Messages: deliver in order; advance the low water over the contiguous final prefix.
        let mut delivered = 0;
        let mut all_final = true;
        self.scheduled = None;
        let page_full = snapshot.messages.len() >= self.limits.max_rows;
        for row in &snapshot.messages {
            let rowid = match row {
                Ok(v) => v.rowid,
                Err(r) => r.rowid,
            };
            let (is_final, sent) = self.handle_row(row).await?;
            delivered += usize::from(sent);
            if is_final && all_final {
                next.messages_out = rowid + 1;
            } else if !is_final {
                all_final = false;
            }
        }
        if next != cursors {
            self.batch.cursors = Some(next);
        }
        self.commit().await?;
        self.cursors = Some(next);
        let more_pages =
            (page_full && all_final) || (snapshot.acks.len() >= self.limits.max_rows && !blocked);
        if more_pages {
            // Read on at once: the page was full.
            self.notify.now.notify_one();
        }
        let outstanding = !all_final || more_pages;
        if !outstanding {
            self.send_notices();
        }
        let declared_timeout =
            snapshot.container_state.as_ref().and_then(|s| s.as_ref().ok()).and_then(|s| s.declared_timeout);
        Ok(OutboxReport::Progress {
            finished: self.finished_in_pass,
            delivered,
            newest_claim_seen: self.claims_seen.values().map(|(_, t)| *t).max(),
            declared_timeout,
            outstanding,
            notes: self.notes_written.swap(0, Ordering::Relaxed),
        })
    }

    /// Tells the session's chat that the agent is working (and with which tool) when that
    /// changed: at most one notice per [`WORKING_EVERY`]; a change within it waits for a timer
    /// (its pass reads the state again, so changes in between coalesce into the latest).
    fn working(&mut self, busy: bool, tool: Option<String>) {
        if !busy {
            // The turn's end is told by its "processed" notice.
            self.working_shown = None;
            self.working_due = None;
            return;
        }
        if self.working_shown.as_ref() == Some(&tool) {
            self.working_due = None;
            return;
        }
        let (Some(ct), Some(pid)) = (self.session.channel_type.clone(), self.session.platform_id.clone())
        else {
            return;
        };
        let now = Instant::now();
        if let Some(last) = self.working_sent
            && now < last + WORKING_EVERY
        {
            self.working_due = Some(last + WORKING_EVERY);
            return;
        }
        debug!(session = %self.session.id, ?tool, "working notice");
        notices::notice(&self.ctx, &ct, Notice::Working { platform_id: pid, tool: tool.clone() });
        self.working_shown = Some(tool);
        self.working_sent = Some(now);
        self.working_due = None;
    }

    /// Notices of finished turns: every reply read so far is final.
    fn send_notices(&mut self) {
        while let Some(f) = self.waiting_notices.pop_front() {
            let (Some(ct), Some(pid), Some(pmid)) = (f.channel_type, f.platform_id, f.platform_message_id)
            else {
                continue;
            };
            let notice = if f.failed {
                Notice::Failed {
                    platform_id: pid,
                    platform_message_id: pmid,
                    reason: "the agent failed to answer".into(),
                }
            } else {
                Notice::Processed { platform_id: pid, platform_message_id: pmid }
            };
            notices::notice(&self.ctx, &ct, notice);
        }
    }

    /// Handles one row; returns (final now, delivered now).
    async fn handle_row(&mut self, row: &Result<ValidOutbound, Rejected>) -> Result<(bool, bool), PassError> {
        let key = match row {
            Ok(v) => v.id.as_str(),
            Err(r) => r.key.as_str(),
        };
        // Every reservation this task makes is settled before its pass ends, so a row found
        // `sending` was reserved by an earlier run that stopped mid-send (DESIGN §5 invariant 3).
        let interrupted = match self.view.records.get(key).map(|r| r.status) {
            Some(DeliveryStatus::Delivered | DeliveryStatus::Failed) => return Ok((true, false)),
            Some(DeliveryStatus::Retrying) if self.retry_at.get(key).is_some_and(|t| Instant::now() < *t) => {
                return Ok((false, false));
            }
            Some(DeliveryStatus::Sending) => true,
            _ => false,
        };
        let valid = match row {
            Ok(v) => v,
            Err(rejected) => {
                warn!(session = %self.session.id, row = %key, reason = %rejected.error, "outbound row rejected");
                self.reject(key, &rejected.error.to_string());
                return Ok((true, false));
            }
        };
        if let Some(after) = valid.deliver_after {
            let wait = (after - chrono::Utc::now()).to_std().unwrap_or_default();
            if !wait.is_zero() {
                let at = Instant::now() + wait;
                self.scheduled = Some(self.scheduled.map_or(at, |s| s.min(at)));
                return Ok((false, false));
            }
        }
        match &valid.body {
            OutboundBody::System(action) if crate::approvals::actions::needs_approval(action) => {
                self.request_approval(key, valid, action).await
            }
            OutboundBody::System(action) => {
                let reason = format!("system action {} is not supported by this host yet", action.name());
                warn!(session = %self.session.id, row = %key, %reason, "system action refused");
                self.record(key, DeliveryStatus::Failed, None, Some(&reason));
                self.note_to_agent(
                    key,
                    SystemNotice::ActionResult {
                        message_out_id: valid.id.clone(),
                        action: action.name().into(),
                        ok: false,
                        message: reason,
                    },
                );
                Ok((true, false))
            }
            OutboundBody::Chat(content) => self.deliver_chat(key, valid, content, interrupted).await,
        }
    }

    /// Files an action that needs a person's yes (or a question) with the approvals, which check
    /// it again and ask. The agent hears at once that a person was asked (a question's tool
    /// waits for the answer instead), or why it was refused; the outcome follows as a note.
    /// Returns (final now, delivered now).
    async fn request_approval(
        &mut self,
        key: &str,
        valid: &ValidOutbound,
        action: &SystemAction,
    ) -> Result<(bool, bool), PassError> {
        let Some(approvals) = self.ctx.approvals.get().cloned() else {
            return Err(PassError::Retry("the approvals are not running yet".into()));
        };
        let answered = valid.in_reply_to.as_ref().and_then(|id| self.view.answered.get(id)).cloned();
        let request = crate::approvals::actions::ActionRequest {
            session: self.session.clone(),
            row_id: valid.id.clone(),
            action: action.clone(),
            origin: store::Origin {
                channel_type: self.session.channel_type.clone(),
                platform_id: self.session.platform_id.clone(),
                thread_id: self.session.thread_id.clone(),
                sender_id: answered.and_then(|c| c.sender_id),
            },
            ttl: self.ctx.config.approvals.ttl_of(action.name()),
            generation: self.generation.load(Ordering::SeqCst),
        };
        let question = matches!(action, SystemAction::AskUserQuestion { .. });
        let (ok, message) = match approvals.request(request).await {
            Ok(id) if question => {
                debug!(session = %self.session.id, row = %key, approval = %id, "question asked");
                self.record(key, DeliveryStatus::Delivered, None, None);
                return Ok((true, false));
            }
            Ok(id) => (
                true,
                format!(
                    "approval requested (id {id}): a person decides; you get the outcome as a note. Do not ask again \
                     meanwhile."
                ),
            ),
            Err(why) => (false, why),
        };
        if ok {
            self.record(key, DeliveryStatus::Delivered, None, None);
        } else {
            warn!(session = %self.session.id, row = %key, reason = %message, "system action refused");
            self.record(key, DeliveryStatus::Failed, None, Some(&message));
        }
        self.note_to_agent(
            key,
            SystemNotice::ActionResult {
                message_out_id: valid.id.clone(),
                action: action.name().into(),
                ok,
                message,
            },
        );
        Ok((true, false))
    }

    /// The names of this agent's destinations, for a refusal that tells it what it may use.
    async fn destination_names(&self) -> Result<String, PassError> {
        let ag = self.session.agent_group_id.clone();
        let dests = self
            .ctx
            .store
            .call(move |c| store::destinations_of(c, &ag))
            .await
            .map_err(|e| PassError::Retry(e.to_string()))?;
        Ok(if dests.is_empty() {
            "none".into()
        } else {
            dests.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
        })
    }

    /// An agent-to-agent row (reference §5.5): allowed to itself or through an `agent`
    /// destination, stopped at `routing.max_agent_hops`, and written as a `chat` row into the
    /// target's session — the one the answered row came from, else the one the peer last wrote
    /// from, else the target's newest, else a new one — which wakes it. The row id
    /// (`a2a-<session>-<row>`) makes a repeat after a crash write nothing, so the send needs no
    /// reservation. Returns (final now, delivered now).
    async fn deliver_to_agent(
        &mut self,
        key: &str,
        valid: &ValidOutbound,
        content: &OutboundContent,
        target_ag: String,
    ) -> Result<(bool, bool), PassError> {
        let from = self.session.agent_group_id.clone();
        let (text, file_refs) = match content {
            OutboundContent::Text { text } => (text.clone(), vec![]),
            OutboundContent::File { text, files } => (text.clone().unwrap_or_default(), files.clone()),
            _ => {
                self.reject(key, "messages_out.content: another agent takes text and files only");
                return Ok((true, false));
            }
        };
        let (f, t) = (from.clone(), target_ag.clone());
        let allowed = self
            .ctx
            .store
            .call(move |c| store::may_send_to_agent(c, &f, &t))
            .await
            .map_err(|e| PassError::Retry(e.to_string()))?;
        if !allowed {
            let reason = format!(
                "destination_not_allowed: agent {target_ag} is not a destination of this agent (its destinations: {})",
                self.destination_names().await?
            );
            self.reject(key, &reason);
            return Ok((true, false));
        }
        let answered = valid.in_reply_to.as_ref().and_then(|id| self.view.answered.get(id)).cloned();
        let hops = answered.as_ref().and_then(|c| c.hops).unwrap_or(0).saturating_add(1);
        let (irt, peer) = (valid.in_reply_to.clone(), target_ag.clone());
        let preferred = self.blocking(move |p| files::peer_session(p, irt.as_deref(), &peer)).await?;
        let t = target_ag.clone();
        let target = match self
            .ctx
            .store
            .call(move |c| store::agent_target_session(c, &t, preferred.as_deref()))
            .await
        {
            Ok(s) => s,
            Err(store::StoreError::Invalid(reason)) => {
                self.reject(key, &format!("messages_out.{reason}"));
                return Ok((true, false));
            }
            Err(e) => return Err(PassError::Retry(e.to_string())),
        };
        let max = self.ctx.config.routing.max_agent_hops;
        let stopped = hops > max;
        // Files go from this session's outbox (read through the one door for container files:
        // no symlinks, no special files, bounded) into the target's inbox, host-written and
        // read-only in its container.
        let mut copies = Vec::with_capacity(file_refs.len());
        let mut budget = container_files::MAX_OUTBOX_FILE_BYTES;
        for f in file_refs.iter().filter(|_| !stopped) {
            if !plain_file_name(&f.name) {
                self.reject(
                    key,
                    &format!("messages_out.content.files.name: {:?} is not a plain file name", f.name),
                );
                return Ok((true, false));
            }
            match container_files::read_outbox_file(
                self.paths.clone(),
                &valid.id,
                &f.path,
                budget,
                self.limits.read_deadline,
            )
            .await
            {
                Ok(bytes) => {
                    budget = budget.saturating_sub(bytes.len() as u64);
                    copies.push((f.name.clone(), bytes));
                }
                Err(e @ (OutboxFileError::Refused { .. } | OutboxFileError::Deadline { .. })) => {
                    self.reject(key, &format!("row {}: content.files.path: {e}", valid.id));
                    return Ok((true, false));
                }
                Err(e @ OutboxFileError::Unavailable { .. }) => return Err(PassError::Retry(e.to_string())),
            }
        }
        let row = if stopped {
            // The other agent hears why the chain ended (a note, not a turn).
            let note = SystemNotice::Note {
                text: format!(
                    "{} tried to send you another message, but {max} agent-to-agent messages in a row is the limit; the exchange was stopped.",
                    self.session.agent_group_name
                ),
            };
            NewInbound::system_note(format!("a2a-stop-{}-{}", self.session.id, valid.id), &note)
        } else {
            let id = format!("a2a-{}-{}", self.session.id, valid.id);
            let mut text = text.clone();
            if !copies.is_empty() {
                let target_paths =
                    SessionPaths::new(&self.ctx.config.data_dir, &target.agent_group_folder, &target.id);
                let dir = target_paths.host_dir.join(files::INBOX_DIR).join(&id);
                let written =
                    copies.iter().map(|(name, bytes)| (name.clone(), bytes.len())).collect::<Vec<_>>();
                let d = dir.clone();
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&d)?;
                    for (name, bytes) in &copies {
                        std::fs::write(d.join(name), bytes)?;
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await
                .map_err(|e| PassError::Retry(format!("copying files: {e}")))?
                .map_err(|e| PassError::Retry(format!("copying files to {}: {e}", dir.display())))?;
                for (name, size) in written {
                    text.push_str(&format!(
                        "\n[file {}/{}/{id}/{name} ({size} bytes)]",
                        nanoclaw_protocol::layout::CONTAINER_SESSION_DIR,
                        files::INBOX_DIR
                    ));
                }
            }
            let content = nanoclaw_protocol::content::ChatContent {
                text,
                sender: Some(self.session.agent_group_name.clone()),
                sender_id: Some(format!("agent:{from}")),
                platform_message_id: None,
                trace_id: answered.and_then(|c| c.trace_id),
                hops: Some(hops),
            };
            NewInbound {
                id,
                kind: "chat",
                trigger: true,
                on_wake: false,
                channel_type: Some("agent".into()),
                platform_id: Some(from.clone()),
                thread_id: None,
                content: serde_json::to_string(&content).expect("content serialises"),
                source_session_id: Some(self.session.id.clone()),
            }
        };
        let row_id = row.id.clone();
        let Some(sessions) = self.ctx.sessions.get() else {
            return Err(PassError::Retry("the session supervisor is not up".into()));
        };
        let handle = sessions.get(target).await.map_err(|e| PassError::Retry(e.to_string()))?;
        handle.enqueue(vec![row]).await.map_err(|e| PassError::Retry(e.to_string()))?;
        if stopped {
            warn!(session = %self.session.id, row = %key, hops, max, "agent-to-agent chain stopped at the hop limit");
            self.reject(
                key,
                &format!(
                    "agent_hop_limit: {max} agent-to-agent messages in a row; the exchange was stopped. Do not message that agent again until a person writes."
                ),
            );
            return Ok((true, false));
        }
        debug!(session = %self.session.id, row = %key, to = %row_id, "agent-to-agent message delivered");
        self.record(key, DeliveryStatus::Delivered, Some(&row_id), None);
        self.forget(key);
        Ok((true, true))
    }

    async fn deliver_chat(
        &mut self,
        key: &str,
        valid: &ValidOutbound,
        content: &OutboundContent,
        interrupted: bool,
    ) -> Result<(bool, bool), PassError> {
        let Some(target) = valid.target.clone() else {
            self.reject(key, "messages_out.platform_id: a chat row needs a target");
            return Ok((true, false));
        };
        if target.channel_type == "agent" {
            return self.deliver_to_agent(key, valid, content, target.platform_id).await;
        }
        let own_chat = Some(&target.channel_type) == self.session.channel_type.as_ref()
            && Some(&target.platform_id) == self.session.platform_id.as_ref();
        if !own_chat {
            let (ag, ct, pid) = (
                self.session.agent_group_id.clone(),
                target.channel_type.clone(),
                target.platform_id.clone(),
            );
            let allowed = self
                .ctx
                .store
                .call(move |c| store::may_send_to_chat(c, &ag, &ct, &pid))
                .await
                .map_err(|e| PassError::Retry(e.to_string()))?;
            if !allowed {
                let reason = format!(
                    "destination_not_allowed: {}:{} is not a destination of this agent (its destinations: {})",
                    target.channel_type,
                    target.platform_id,
                    self.destination_names().await?
                );
                self.reject(key, &reason);
                return Ok((true, false));
            }
        }
        let answered = valid.in_reply_to.as_ref().and_then(|id| self.view.answered.get(id).cloned());
        let trace = answered.as_ref().and_then(|c| c.trace_id.clone()).unwrap_or_default();
        let message = OutboundMessage {
            platform_id: target.platform_id.clone(),
            thread_id: target.thread_id.clone(),
            text: String::new(),
            in_reply_to: answered.and_then(|c| c.platform_message_id),
            // The channel's idempotency key: row ids are unique per container only (and a
            // container can pick another session's on purpose), so the key is scoped by session.
            message_out_id: delivery_key(&self.session.id, &valid.id),
        };
        let (delivery, text) = match self.prepare(valid, content, &target, message).await? {
            Prepared::Ready(d, text) => (d, text),
            Prepared::Failed(reason) => {
                warn!(session = %self.session.id, row = %key, %trace, %reason, "outbound row refused");
                self.reject(key, &reason);
                self.forget(key);
                return Ok((true, false));
            }
            Prepared::Wait => {
                let since = *self.channel_wait.entry(key.to_string()).or_insert_with(Instant::now);
                if since.elapsed() < CHANNEL_WAIT {
                    self.retry_at.insert(key.to_string(), Instant::now() + CHANNEL_POLL);
                    return Ok((false, false));
                }
                let reason = format!("row {}: not ready to send for {CHANNEL_WAIT:?}", valid.id);
                self.reject(key, &reason);
                self.forget(key);
                return Ok((true, false));
            }
        };
        let text = &text;
        // A channel that is not running (restarting) is waited for without spending attempts.
        let Some(idempotent) = notices::channel_state(&self.ctx, &target.channel_type) else {
            let since = *self.channel_wait.entry(key.to_string()).or_insert_with(Instant::now);
            if since.elapsed() < CHANNEL_WAIT {
                self.retry_at.insert(key.to_string(), Instant::now() + CHANNEL_POLL);
                return Ok((false, false));
            }
            let reason = format!("channel {} was not running for {CHANNEL_WAIT:?}", target.channel_type);
            warn!(session = %self.session.id, row = %key, %trace, %reason, "delivery failed for good");
            self.record(key, DeliveryStatus::Failed, None, Some(&reason));
            self.forget(key);
            return Ok((true, false));
        };
        self.channel_wait.remove(key);
        // Setting the same text or the same reaction twice shows once on every platform: edits
        // and reactions may be repeated whatever the channel promises for new messages.
        let idempotent = idempotent || matches!(delivery, Delivery::Edit(_) | Delivery::Reaction(_));
        if interrupted && !idempotent {
            // The platform may have shown it: never a second send. Fail it, and say so.
            let reason = "delivery outcome unknown: the host stopped during the send; not re-sent to avoid a duplicate";
            warn!(session = %self.session.id, row = %key, %trace, "{reason}");
            self.record(key, DeliveryStatus::Failed, None, Some(reason));
            self.may_not_have_arrived(key, &target, text).await?;
            return Ok((true, false));
        }
        if interrupted {
            info!(session = %self.session.id, row = %key, %trace, "re-sending a reply interrupted by a host stop, with the same key");
        }
        // The reservation is committed before the send (invariant 3), in one transaction with
        // what the pass decided so far (the outcome of the send before this one among it).
        let attempts = self.reserve(key).await?;
        if *CRASH_AFTER_RESERVE {
            // Testing knob: die exactly between the reservation and the send, like a SIGKILL.
            warn!(session = %self.session.id, row = %key, "{CRASH_AFTER_RESERVE_ENV} is set: aborting after the reservation");
            std::process::abort();
        }
        let sent = match self.ctx.channels.for_channel_type(&target.channel_type) {
            Some(ch) => ch.perform(delivery, self.ctx.config.delivery_timeout).await,
            None => Err(crate::ports::channel::DeliveryError::transient(format!(
                "channel {} is not running",
                target.channel_type
            ))),
        };
        match sent {
            Ok(platform_message_id) => {
                self.record(key, DeliveryStatus::Delivered, platform_message_id.as_deref(), None);
                self.forget(key);
                info!(session = %self.session.id, row = %key, %trace, channel = %target.channel_type, "delivered");
                Ok((true, true))
            }
            Err(e) if e.may_retry(idempotent) && attempts < self.ctx.config.delivery_attempts => {
                let delay = self.ctx.config.delivery_backoff.saturating_mul(1 << (attempts - 1).clamp(0, 10));
                warn!(session = %self.session.id, row = %key, %trace, attempts, error = %e, ?delay, "delivery failed; will retry");
                self.record(key, DeliveryStatus::Retrying, None, Some(&e.to_string()));
                self.retry_at.insert(key.to_string(), Instant::now() + delay);
                Ok((false, false))
            }
            Err(e) => {
                warn!(session = %self.session.id, row = %key, %trace, attempts, error = %e, "delivery failed for good");
                self.record(key, DeliveryStatus::Failed, None, Some(&e.to_string()));
                self.forget(key);
                if !e.certainly_not_sent() && !idempotent {
                    self.may_not_have_arrived(key, &target, text).await?;
                }
                Ok((true, false))
            }
        }
    }

    /// Turns a chat row into what the channel gets: files read from the outbox through the one
    /// door for container files, edit and reaction targets resolved to platform message ids.
    async fn prepare(
        &mut self,
        valid: &ValidOutbound,
        content: &OutboundContent,
        target: &nanoclaw_protocol::validate::Target,
        message: OutboundMessage,
    ) -> Result<Prepared, PassError> {
        let row = &valid.id;
        Ok(match content {
            OutboundContent::Text { text } => Prepared::Ready(
                Delivery::Message(OutboundMessage { text: text.clone(), ..message }),
                text.clone(),
            ),
            OutboundContent::File { text, files } => {
                let mut out = Vec::with_capacity(files.len());
                // One row holds at most this much in memory, whatever its number of files.
                let mut budget = container_files::MAX_OUTBOX_FILE_BYTES;
                for f in files {
                    let read = container_files::read_outbox_file(
                        self.paths.clone(),
                        row,
                        &f.path,
                        budget,
                        self.limits.read_deadline,
                    )
                    .await;
                    match read {
                        Ok(bytes) => {
                            budget = budget.saturating_sub(bytes.len() as u64);
                            out.push(OutboundFile { name: f.name.clone(), bytes });
                        }
                        Err(e @ (OutboxFileError::Refused { .. } | OutboxFileError::Deadline { .. })) => {
                            return Ok(Prepared::Failed(format!("row {row}: content.files.path: {e}")));
                        }
                        Err(e @ OutboxFileError::Unavailable { .. }) => {
                            debug!(session = %self.session.id, row = %row, error = %e, "outbox file not readable now");
                            return Ok(Prepared::Wait);
                        }
                    }
                }
                let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
                let summary = match text {
                    Some(t) => t.clone(),
                    None => format!("file {}", names.join(", ")),
                };
                let caption = text.clone().unwrap_or_default();
                Prepared::Ready(
                    Delivery::Files { message: OutboundMessage { text: caption, ..message }, files: out },
                    summary,
                )
            }
            OutboundContent::Card { title, text, buttons } => {
                let card = OutboundCard {
                    title: title.clone(),
                    text: text.clone(),
                    buttons: buttons
                        .iter()
                        .map(|b| LinkButton { label: b.label.clone(), url: b.url.clone() })
                        .collect(),
                };
                Prepared::Ready(Delivery::Card { message, card }, title.clone())
            }
            OutboundContent::Edit { target: original, text } => {
                // Only the agent's own messages can be edited: a `messages_out` row of this session.
                match self.sent_platform_id(row, original).await? {
                    Some(Ok(pmid)) => Prepared::Ready(
                        Delivery::Edit(EditRequest {
                            platform_id: target.platform_id.clone(),
                            platform_message_id: pmid,
                            text: text.clone(),
                            message_out_id: message.message_out_id,
                            in_reply_to: message.in_reply_to,
                        }),
                        text.clone(),
                    ),
                    Some(Err(p)) => *p,
                    None => Prepared::Failed(format!(
                        "row {row}: content.target: {original:?} is not a message this agent sent"
                    )),
                }
            }
            OutboundContent::Reaction { target: original, emoji } => {
                let pmid = match self.sent_platform_id(row, original).await? {
                    Some(Ok(pmid)) => pmid,
                    Some(Err(p)) => return Ok(*p),
                    None => {
                        let (p, id) = (self.paths.clone(), original.clone());
                        match self.blocking(move |_| files::inbound_origin(&p, &id)).await? {
                            Some(o)
                                if o.channel_type == target.channel_type
                                    && o.platform_id == target.platform_id =>
                            {
                                o.platform_message_id
                            }
                            Some(_) => {
                                return Ok(Prepared::Failed(format!(
                                    "row {row}: content.target: {original:?} is a message of another chat"
                                )));
                            }
                            None => {
                                return Ok(Prepared::Failed(format!(
                                    "row {row}: content.target: no message {original:?} in this session"
                                )));
                            }
                        }
                    }
                };
                Prepared::Ready(
                    Delivery::Reaction(ReactionRequest {
                        platform_id: target.platform_id.clone(),
                        platform_message_id: pmid,
                        emoji: emoji.clone(),
                        message_out_id: message.message_out_id,
                        in_reply_to: message.in_reply_to,
                    }),
                    emoji.clone(),
                )
            }
        })
    }

    /// The platform message id the host recorded when it delivered row `original` of this
    /// session: `None` when no such row was handled, `Some(Err(_))` when it cannot be used (yet).
    async fn sent_platform_id(
        &self,
        row: &str,
        original: &str,
    ) -> Result<Option<Result<String, Box<Prepared>>>, PassError> {
        let record = match self.view.records.get(original) {
            Some(r) => Some(r.clone()),
            None => {
                let id = original.to_string();
                self.blocking(move |p| files::delivery_record(p, &id)).await?
            }
        };
        Ok(record.map(|r| match (r.status, r.platform_message_id) {
            (DeliveryStatus::Delivered, Some(pmid)) => Ok(pmid),
            (DeliveryStatus::Delivered, None) => Err(Box::new(Prepared::Failed(format!(
                "row {row}: content.target: the channel gave no platform message id for {original:?}"
            )))),
            (DeliveryStatus::Failed, _) => Err(Box::new(Prepared::Failed(format!(
                "row {row}: content.target: {original:?} was never delivered"
            )))),
            // `sending` / `retrying`: its outcome comes first.
            _ => Err(Box::new(Prepared::Wait)),
        }))
    }

    fn forget(&mut self, key: &str) {
        self.retry_at.remove(key);
        self.channel_wait.remove(key);
    }

    /// A reply whose send outcome is unknown on a channel that cannot deduplicate: the chat is
    /// told once (with the reply's first line) and the agent gets a note.
    async fn may_not_have_arrived(
        &mut self,
        key: &str,
        target: &nanoclaw_protocol::validate::Target,
        text: &str,
    ) -> Result<(), PassError> {
        // The row's `failed` is committed before the chat hears of it: a crash in between must
        // not tell the chat twice.
        self.commit().await?;
        let first_line: String = text.lines().next().unwrap_or_default().chars().take(200).collect();
        let note = OutboundMessage {
            platform_id: target.platform_id.clone(),
            thread_id: target.thread_id.clone(),
            text: format!(
                "A reply may not have arrived (the service stopped while sending it): “{first_line}”"
            ),
            in_reply_to: None,
            message_out_id: format!("host-unknown-{key}"),
        };
        if let Err(e) = notices::send(&self.ctx, &target.channel_type, note).await {
            warn!(session = %self.session.id, row = %key, error = %e, "may-not-have-arrived note not delivered");
        }
        self.note_to_agent(
            key,
            SystemNotice::Rejected {
                message_out_id: key.to_string(),
                reason: "delivery outcome unknown: the user was told this reply may not have arrived".into(),
            },
        );
        Ok(())
    }

    /// Queues a delivery-ledger write for the next commit, and keeps the page view current (an
    /// edit later in the page may target this row).
    fn record(&mut self, key: &str, status: DeliveryStatus, pmid: Option<&str>, error: Option<&str>) {
        let entry = self.view.records.entry(key.to_string()).or_insert(files::DeliveryRecord {
            status,
            attempts: 0,
            platform_message_id: None,
        });
        entry.status = status;
        if let Some(p) = pmid {
            entry.platform_message_id = Some(p.to_string());
        }
        self.batch.records.push(RecordWrite {
            key: key.to_string(),
            status,
            platform_message_id: pmid.map(str::to_string),
            error: error.map(str::to_string),
            bump_attempt: false,
        });
    }

    /// Commits the reservation of row `key` (with everything queued before it) and returns its
    /// attempts, this one included.
    async fn reserve(&mut self, key: &str) -> Result<i64, PassError> {
        self.record(key, DeliveryStatus::Sending, None, None);
        if let Some(last) = self.batch.records.last_mut() {
            last.bump_attempt = true;
        }
        let attempts = self.commit().await?.unwrap_or(1);
        if let Some(r) = self.view.records.get_mut(key) {
            r.attempts = attempts;
        }
        Ok(attempts)
    }

    /// Marks a row failed with a reason and tells the agent why.
    fn reject(&mut self, key: &str, reason: &str) {
        self.record(key, DeliveryStatus::Failed, None, Some(reason));
        self.note_to_agent(
            key,
            SystemNotice::Rejected { message_out_id: key.to_string(), reason: reason.to_string() },
        );
    }

    /// A note to the agent (`trigger = 0`: it rides along with the next turn and never counts as
    /// pending work), written with the pass's next commit.
    fn note_to_agent(&mut self, key: &str, notice: SystemNotice) {
        self.batch.notes.push(NewInbound::system_note(format!("note-{key}"), &notice));
    }
}
