//! The embeddable service: start the supervisor tree, submit messages, stop it in order.
//!
//! ```no_run
//! # async fn demo(runtime: std::sync::Arc<dyn nanoclaw_actors::ports::runtime::ContainerRuntime>,
//! #               adapter: std::sync::Arc<dyn nanoclaw_actors::ports::channel::ChannelAdapter>) {
//! use nanoclaw_actors::{Service, ServiceConfig};
//! let config = ServiceConfig::new("/tmp/nanoclaw-data", "demo");
//! let service = Service::start(config, runtime, vec![adapter]).await.unwrap();
//! // … adapters submit messages; replies come back through them …
//! service.shutdown(std::time::Duration::from_secs(30)).await;
//! # }
//! ```

use crate::actors::session::SessionStatus;
use crate::actors::supervisor::{Supervisor, SupervisorMessage};
use crate::context::{ServiceConfig, ServiceContext};
use crate::disk::{self, DataDirLock, LockError};
use crate::ports::channel::ChannelAdapter;
use crate::ports::runtime::{ContainerRuntime, RuntimeError};
use crate::router::Router;
use crate::store::{self, Store, StoreError};
use ractor::{Actor, ActorRef, ActorStatus};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Why the service did not start. Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created or secured.
    #[error("data directory {path}: {message}")]
    DataDir {
        /// The directory.
        path: String,
        /// What failed.
        message: String,
    },
    /// The central store could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The container runtime is not usable.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The supervisor tree did not start.
    #[error("supervisor: {0}")]
    Spawn(String),
    /// Another process (another `nanoclaw serve`, or an embedder) runs a service on this data
    /// directory: it holds `data/nanoclaw.lock` (issue part 7: one service per data directory).
    #[error("data directory {} is in use by another nanoclaw service ({})", data_dir.display(), disk::pid_text(*pid))]
    Locked {
        /// The data directory.
        data_dir: std::path::PathBuf,
        /// The holder's PID, read from the lock file (`None` if it has not written it yet).
        pid: Option<u32>,
    },
}

impl From<LockError> for StartError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Held { data_dir, pid } => StartError::Locked { data_dir, pid },
            LockError::Io { path, source } => {
                StartError::DataDir { path: path.display().to_string(), message: source.to_string() }
            }
        }
    }
}

/// Why [`Service::kill_container`] did nothing. Display is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KillError {
    /// The session has no live actor (so no container either).
    #[error("session {0} has no live actor")]
    NoActor(String),
    /// The supervisor tree did not answer.
    #[error("supervisor: {0}")]
    Unavailable(String),
}

/// A running service. It holds its data directory's lock until [`Service::shutdown`] completes;
/// dropping it without a shutdown releases the lock while the tree may still be stopping.
pub struct Service {
    root: ActorRef<SupervisorMessage>,
    join: tokio::task::JoinHandle<()>,
    ctx: Arc<ServiceContext>,
    router: Router,
    /// Held for the life of the service and released only after [`Service::shutdown`] completes,
    /// so a second service can never overlap with this one's stop.
    lock: DataDirLock,
}

impl Service {
    /// Starts the service: first takes the data directory's lock (creating the directory, mode
    /// 0700) — one service per data directory — then opens and migrates the central store,
    /// bootstraps the first-run rows, prepares the runtime (the Docker runtime builds its image
    /// here), then spawns the supervisor tree. A data directory under the free-space floor
    /// ([`ServiceConfig::min_free_bytes`]) still starts, with a warning: new work is refused
    /// until space is freed.
    ///
    /// Errors: [`StartError::Locked`] when another process holds the data directory; see
    /// [`StartError`] for the rest. Nothing keeps running (and the lock is released) after an
    /// error.
    pub async fn start(
        config: ServiceConfig,
        runtime: Arc<dyn ContainerRuntime>,
        adapters: Vec<Arc<dyn ChannelAdapter>>,
    ) -> Result<Service, StartError> {
        let lock = Self::lock_data_dir(&config.data_dir).await?;
        Self::start_with_lock(lock, config, runtime, adapters).await
    }

    /// Takes the data directory's lock off the executor (see [`DataDirLock::acquire`]). For a
    /// caller that must know the directory is free before building the runtime; it then calls
    /// [`Service::start_with_lock`].
    pub async fn lock_data_dir(data_dir: &std::path::Path) -> Result<DataDirLock, StartError> {
        let dir = data_dir.to_path_buf();
        tokio::task::spawn_blocking(move || DataDirLock::acquire(&dir))
            .await
            .map_err(|e| StartError::DataDir {
                path: data_dir.display().to_string(),
                message: e.to_string(),
            })?
            .map_err(StartError::from)
    }

    /// [`Service::start`] with the data directory's lock already taken.
    ///
    /// Errors: [`StartError::DataDir`] when `lock` is not for `config.data_dir`; otherwise as
    /// [`Service::start`].
    pub async fn start_with_lock(
        lock: DataDirLock,
        config: ServiceConfig,
        runtime: Arc<dyn ContainerRuntime>,
        adapters: Vec<Arc<dyn ChannelAdapter>>,
    ) -> Result<Service, StartError> {
        let dir = config.data_dir.clone();
        if lock.data_dir() != dir {
            return Err(StartError::DataDir {
                path: dir.display().to_string(),
                message: format!("the lock given is for {}", lock.data_dir().display()),
            });
        }
        if let Err(e) = disk::disk_ok_async(&config).await {
            warn!(error = %e, "starting anyway; new work is refused until disk space is freed");
        }
        let store = Store::open(&dir.join("nanoclaw.db")).await?;
        if store.call(store::bootstrap).await?.created {
            info!("first run: created agent group main, owner cli:local and the CLI wiring");
        }
        runtime.prepare().await?;
        let slots = crate::slots::ContainerSlots::new(config.max_containers);
        let ctx = Arc::new(ServiceContext {
            slots,
            config,
            store,
            runtime,
            adapters,
            channels: Default::default(),
            channel_health: Default::default(),
            live_containers: Default::default(),
            sessions: Default::default(),
            approvals: Default::default(),
        });
        let (root, join) = Actor::spawn(None, Supervisor, ctx.clone())
            .await
            .map_err(|e| StartError::Spawn(e.to_string()))?;
        let router = ractor::call_t!(root, SupervisorMessage::Router, 10_000)
            .map_err(|e| StartError::Spawn(e.to_string()))?;
        Ok(Service { root, join, ctx, router, lock })
    }

    /// The router, to submit events without a channel adapter.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The shared context (store, runtime, configuration).
    pub fn context(&self) -> &Arc<ServiceContext> {
        &self.ctx
    }

    /// The central store.
    pub fn store(&self) -> &Store {
        &self.ctx.store
    }

    /// The approvals: [`crate::approvals::ApprovalsHandle::decide`] with
    /// [`crate::approvals::Decider::Host`] is what `ncl approvals approve|deny <id>` calls.
    pub fn approvals(&self) -> &crate::approvals::ApprovalsHandle {
        self.ctx.approvals.get().expect("the root supervisor sets the approvals at start")
    }

    /// Status of every live session actor.
    pub async fn session_statuses(&self) -> Vec<SessionStatus> {
        let Ok(sessions) = ractor::call_t!(self.root, SupervisorMessage::Sessions, 5_000) else {
            return vec![];
        };
        let mut out = vec![];
        for s in sessions.list().await.unwrap_or_default() {
            if let Ok(st) = s.status().await {
                out.push(st);
            }
        }
        out
    }

    /// Kill-then-respawn (or stay) for a session's container (DESIGN §4); the replacement starts
    /// only after the old container is gone. Errors when the session has no live actor.
    pub async fn kill_container(
        &self,
        session_id: &str,
        reason: &str,
        then: crate::actors::session::Then,
    ) -> Result<(), KillError> {
        let sessions = ractor::call_t!(self.root, SupervisorMessage::Sessions, 5_000)
            .map_err(|e| KillError::Unavailable(e.to_string()))?;
        for s in sessions.list().await.map_err(|e| KillError::Unavailable(e.to_string()))? {
            if s.status().await.is_ok_and(|st| st.session_id == session_id) {
                return s.kill(reason, then).map_err(|e| KillError::Unavailable(e.to_string()));
            }
        }
        Err(KillError::NoActor(session_id.to_string()))
    }

    /// Live health of every channel (connected / reconnecting / failed, last event, restarts).
    pub fn channel_health(&self) -> Vec<crate::ports::channel::ChannelHealth> {
        let mut all: Vec<_> = self.ctx.channel_health.read().values().cloned().collect();
        all.sort_by(|a, b| a.channel_type.cmp(&b.channel_type));
        all
    }

    /// True while the supervisor tree runs.
    pub fn is_running(&self) -> bool {
        matches!(
            self.root.get_status(),
            ActorStatus::Running | ActorStatus::Starting | ActorStatus::Upgrading
        )
    }

    /// Resolves when the root supervisor stops on its own (restart budget exhausted).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.join).await;
    }

    /// Stops everything in order — channels, sessions (each stopping its container), approvals,
    /// sweeper, store — within `deadline`. Past the deadline the tree is killed and every
    /// container of this install is removed by label.
    pub async fn shutdown(self, deadline: Duration) {
        let Service { root, join, ctx, router, lock } = self;
        drop(router);
        match root.stop_and_wait(Some("shutdown".into()), Some(deadline)).await {
            Ok(()) => info!("service stopped"),
            Err(e) => {
                warn!(error = %e, "graceful stop exceeded its deadline; forcing");
                root.kill();
                let _ = tokio::time::timeout(Duration::from_secs(2), join).await;
                ctx.live_containers.lock().clear();
                if let Err(e) =
                    tokio::time::timeout(Duration::from_secs(10), crate::actors::sweeper::sweep(&ctx)).await
                {
                    warn!(error = %e, "forced container cleanup timed out");
                }
            }
        }
        // Only now may another service take the data directory.
        drop(lock);
    }
}
