//! Configuration and shared context of a running service.

use crate::handles::channel::ChannelHandle;
use crate::ports::channel::ChannelAdapter;
use crate::ports::provider::{EchoOnlyGateway, ProviderGateway};
use crate::ports::runtime::ContainerRuntime;
use crate::store::Store;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Tunables of the supervisor tree. [`ServiceConfig::new`] gives the defaults; each field says
/// where its default comes from.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Data directory (`nanoclaw.db`, `sessions/`, `groups/`, sockets). Created 0700.
    pub data_dir: PathBuf,
    /// Install id: label value that tells this install's containers from others' on one daemon.
    pub install_id: String,
    /// Owner (uid, gid) given to the folders a container writes, i.e. the container's user; `None`
    /// leaves them to the host user.
    pub container_owner: Option<(u32, u32)>,
    /// Tries before an inbound message is failed (reference §1.10: 5).
    pub max_tries: i64,
    /// Base of the retry backoff `base × 2^(tries-1)` (reference §1.10: 5 s).
    pub retry_backoff: Duration,
    /// Delivery attempts of one outbound row before it is failed (reference §1.10: 3).
    pub delivery_attempts: i64,
    /// Base of the delivery retry backoff `base × 2^(attempt-1)`.
    pub delivery_backoff: Duration,
    /// An idle container gives its slot up after this long when other sessions wait for one.
    pub yield_slot_after: Duration,
    /// Grace between SIGTERM and SIGKILL when a container is stopped.
    pub container_stop_grace: Duration,
    /// A container that has not said hello by then is killed.
    pub container_start_timeout: Duration,
    /// A container with no work for this long is stopped.
    pub container_idle_timeout: Duration,
    /// A session actor with no container and no work stops after this long.
    pub session_linger: Duration,
    /// A claim older than this with no heartbeat since is stuck (reference §1.10: 60 s).
    pub claim_stuck_after: Duration,
    /// A heartbeat older than this with work in flight is stuck (reference §1.10: 30 min; 65 min
    /// here, above `run_command`'s longest declared timeout of 60 min).
    pub heartbeat_ceiling: Duration,
    /// Timeout of one channel delivery.
    pub delivery_timeout: Duration,
    /// Most containers running at once, over all sessions (DESIGN §7); more wait in a fair queue.
    pub max_containers: usize,
    /// Slow fallback check of a live session when no event or timer is due (DESIGN §6: wake
    /// signals and timers first; at least 30 s).
    pub fallback_check: Duration,
    // --- Disk limits (issue part 11: containers cannot fill the host). ---
    /// Most bytes a session's `workspace/` may take (allocated blocks, see
    /// [`crate::disk::workspace_usage`]); config `container.workspace_max_mb`, default 1 GiB.
    pub workspace_max_bytes: u64,
    /// How often a session's workspace is measured against `workspace_max_bytes` (before a spawn
    /// and while its container runs); 5 min.
    pub workspace_check_every: Duration,
    /// Largest `outbound.db` the host reads; config `container.outbound_max_mb`, default 256 MiB.
    /// A bigger one quarantines its session.
    pub outbound_max_bytes: u64,
    /// Free-space floor of the data directory's filesystem: under it the host accepts no new work
    /// ([`crate::disk::disk_ok`]); 0 disables the check. Config `service.min_free_mb`, default
    /// 512 MiB. A data dir under the floor at start still starts, with a warning.
    pub min_free_bytes: u64,
    // --- Providers (issue 6). ---
    /// Model providers and the per-session credential proxy; [`EchoOnlyGateway`] by default.
    pub gateway: Arc<dyn ProviderGateway>,
    /// Model calls per turn at most (`agent.max_tool_rounds`, 32), written to `runner.json`.
    pub max_tool_rounds: u32,
    /// IANA time zone of the agents' prompts (`agent.timezone`, UTC), written to `runner.json`.
    pub timezone: String,
    /// The skills folder shipped with nanoclaw (`container.skills_dir`, else found beside the
    /// binary or in the source tree), absolute; `None`: no skills. Mounted read-only into every
    /// container; `container_configs.skills = "all"` selects every skill in it.
    pub skills_dir: Option<PathBuf>,
    /// Routing and permissions (config `[routing]`, issue 7).
    pub routing: crate::router::RoutingConfig,
    /// Approvals (config `[approvals]`, issue 8).
    pub approvals: crate::approvals::ApprovalsConfig,
}

impl ServiceConfig {
    /// Defaults for a data directory and install id.
    pub fn new(data_dir: impl Into<PathBuf>, install_id: impl Into<String>) -> Self {
        Self {
            data_dir: data_dir.into(),
            install_id: install_id.into(),
            container_owner: None,
            max_tries: 5,
            retry_backoff: Duration::from_secs(5),
            delivery_attempts: 3,
            delivery_backoff: Duration::from_secs(1),
            yield_slot_after: Duration::from_secs(2),
            container_stop_grace: Duration::from_secs(5),
            container_start_timeout: Duration::from_secs(60),
            container_idle_timeout: Duration::from_secs(30 * 60),
            session_linger: Duration::from_secs(60),
            claim_stuck_after: Duration::from_secs(60),
            heartbeat_ceiling: Duration::from_secs(65 * 60),
            delivery_timeout: Duration::from_secs(30),
            max_containers: 10,
            fallback_check: Duration::from_secs(30),
            workspace_max_bytes: 1024 * 1024 * 1024,
            workspace_check_every: Duration::from_secs(300),
            outbound_max_bytes: 256 * 1024 * 1024,
            min_free_bytes: 512 * 1024 * 1024,
            gateway: Arc::new(EchoOnlyGateway),
            max_tool_rounds: nanoclaw_protocol::settings::DEFAULT_MAX_TOOL_ROUNDS,
            timezone: "UTC".into(),
            skills_dir: None,
            routing: Default::default(),
            approvals: Default::default(),
        }
    }
}

/// The live channel actors by channel account ([`ChannelAdapter::account`]), kept by the channel
/// supervisor; sessions look their channel up here to deliver. Cheap to clone (one shared map).
#[derive(Debug, Clone, Default)]
pub struct Channels {
    /// By account; a `BTreeMap` so lookups by channel type pick deterministically.
    by_account: Arc<RwLock<BTreeMap<String, ChannelHandle>>>,
}

impl Channels {
    /// Registers a live channel under its account, replacing an earlier one of that account.
    pub fn insert(&self, channel: ChannelHandle) {
        self.by_account.write().insert(channel.account().to_string(), channel);
    }

    /// Unregisters the channel of `account`, if it is still the actor `actor` (a late event about
    /// an old actor must not unregister its replacement).
    pub fn remove(&self, account: &str, actor: ractor::ActorId) -> Option<ChannelHandle> {
        let mut map = self.by_account.write();
        if map.get(account).is_some_and(|c| c.actor().get_id() == actor) { map.remove(account) } else { None }
    }

    /// Unregisters every channel and returns them (shutdown).
    pub fn drain(&self) -> Vec<ChannelHandle> {
        std::mem::take(&mut *self.by_account.write()).into_values().collect()
    }

    /// The live channel of `account`.
    pub fn get(&self, account: &str) -> Option<ChannelHandle> {
        self.by_account.read().get(account).cloned()
    }

    /// The live channel to deliver to a chat of `channel_type` (a session knows its chat's
    /// channel type and platform id, not the account). With one account per channel type — all
    /// adapters today — that is the account. With several, this picks the first live account in
    /// sorted order; once messaging groups record the account they were seen on, deliveries
    /// should use [`Channels::get`] with that account instead.
    pub fn for_channel_type(&self, channel_type: &str) -> Option<ChannelHandle> {
        self.by_account.read().values().find(|c| c.channel_type() == channel_type).cloned()
    }

    /// Whether a channel of `account` is live.
    pub fn contains(&self, account: &str) -> bool {
        self.by_account.read().contains_key(account)
    }
}

/// Live health of every channel, by channel account (sorted), kept by the channel supervisor and
/// actors.
pub type ChannelHealthMap = Arc<RwLock<BTreeMap<String, crate::ports::channel::ChannelHealth>>>;

/// Names of containers some container actor owns; the periodic sweep spares them.
pub type LiveContainers = Arc<Mutex<HashSet<String>>>;

/// What every actor of one service shares.
pub struct ServiceContext {
    /// Configuration.
    pub config: ServiceConfig,
    /// The central store.
    pub store: Store,
    /// The container runtime.
    pub runtime: Arc<dyn ContainerRuntime>,
    /// Channel adapters given at start.
    pub adapters: Vec<Arc<dyn ChannelAdapter>>,
    /// Live channel actors.
    pub channels: Channels,
    /// Health of every channel.
    pub channel_health: ChannelHealthMap,
    /// Containers owned by live container actors.
    pub live_containers: LiveContainers,
    /// The global container cap and its queue.
    pub slots: crate::slots::ContainerSlots,
    /// The session supervisor, set by the root supervisor when it starts (it follows restarts of
    /// the session supervisor): how one session's outbox reaches another session (agent-to-agent
    /// messages).
    pub sessions: std::sync::OnceLock<crate::actors::session_supervisor::SessionsHandle>,
    /// The approvals, set by the root supervisor when it starts: where a session's outbox files
    /// the actions that need a person's yes.
    pub approvals: std::sync::OnceLock<crate::approvals::ApprovalsHandle>,
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext")
            .field("config", &self.config)
            .field("runtime", &self.runtime.name())
            .finish()
    }
}
