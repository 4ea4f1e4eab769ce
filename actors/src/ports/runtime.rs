//! The `ContainerRuntime` port.
//!
//! The container actor drives one container through create → start → wait → remove. A runtime
//! must make `wait` resolve exactly when the container's process has exited (whatever the reason),
//! `stop` deliver SIGTERM and SIGKILL after the grace, and `remove` succeed for an already removed
//! container. Containers carry the install id and the session id as labels so that a sweep can
//! find ones no actor owns ([`ContainerRuntime::list_managed`]).

use async_trait::async_trait;
use nanoclaw_protocol::settings::ImageTier;
use std::path::PathBuf;
use std::time::Duration;

/// Label with the install id on every container.
pub const LABEL_INSTALL: &str = "nanoclaw.install";
/// Label with the session id on every container.
pub const LABEL_SESSION: &str = "nanoclaw.session";
/// Label with the container generation on every container.
pub const LABEL_GENERATION: &str = "nanoclaw.generation";

/// Everything a runtime needs to start one session's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Container name (`nanoclaw-<install>-<session>-<generation>`), unique per install.
    pub name: String,
    /// Install id (label [`LABEL_INSTALL`]).
    pub install_id: String,
    /// Session id (label [`LABEL_SESSION`]).
    pub session_id: String,
    /// Generation of this container (label [`LABEL_GENERATION`], env `NANOCLAW_GENERATION`).
    pub generation: i64,
    /// Host folder with `inbound.db` and `wake.sock`; mounted read-only.
    pub session_host_dir: PathBuf,
    /// Host folder with `outbound.db`; mounted read-write.
    pub session_workspace_dir: PathBuf,
    /// The agent group's folder; mounted read-write.
    pub agent_group_dir: PathBuf,
    /// The host's skills folder (`<name>/SKILL.md` each), absolute; mounted read-only at
    /// [`nanoclaw_protocol::layout::CONTAINER_SKILLS_DIR`] (the process runtime passes its path
    /// in [`nanoclaw_protocol::layout::ENV_SKILLS_DIR`]). `None`: no skills are shipped.
    pub skills_dir: Option<PathBuf>,
    /// Environment for the runner, besides the path variables the runtime sets itself.
    pub env: Vec<(String, String)>,
    /// Which image the container runs (DESIGN §7); runtimes without images ignore it.
    pub image_tier: ImageTier,
    /// The agent group's own image (`container_configs.image_tag`: the `standard` image plus its
    /// approved packages), which replaces the tier's image; runtimes without images ignore it.
    pub image: Option<String>,
}

/// A Debian package pinned to one version (`name=version` for apt).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinnedPackage {
    /// The package name.
    pub name: String,
    /// The exact version.
    pub version: String,
}

impl PinnedPackage {
    /// `name=version`, as apt takes it and as `container_configs.packages_apt` stores it.
    pub fn pin(&self) -> String {
        format!("{}={}", self.name, self.version)
    }

    /// Parses `name=version`; `None` when either part breaks [`debian_name_ok`] /
    /// [`debian_version_ok`].
    pub fn parse(pin: &str) -> Option<Self> {
        let (name, version) = pin.split_once('=')?;
        (debian_name_ok(name) && debian_version_ok(version))
            .then(|| Self { name: name.to_string(), version: version.to_string() })
    }
}

pub use nanoclaw_protocol::validate::{debian_name_ok, debian_version_ok};

/// Why a per-group image was not built. Display is one line; the log tail is for the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BuildFailure {
    /// What failed.
    pub message: String,
    /// The last lines of the build's output.
    pub log_tail: String,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code; `None` when the runtime could not tell (e.g. killed by a signal).
    pub code: Option<i64>,
    /// The kernel's OOM killer ended it.
    pub oom_killed: bool,
}

/// A container found by [`ContainerRuntime::list_managed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedContainer {
    /// Runtime id.
    pub id: String,
    /// Container name (as in [`ContainerSpec::name`]).
    pub name: String,
    /// Session label value.
    pub session_id: Option<String>,
    /// Whether it is running.
    pub running: bool,
}

/// Runtime errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime (daemon) cannot be reached.
    #[error("container runtime unavailable: {0}")]
    Unavailable(String),
    /// The agent image could not be built or found.
    #[error("agent image: {0}")]
    Image(String),
    /// An operation on a container failed.
    #[error("{op} {container}: {message}")]
    Operation {
        /// `create`, `start`, `stop`, `remove`, `wait`, `list`.
        op: &'static str,
        /// Container name or id.
        container: String,
        /// The runtime's message.
        message: String,
    },
}

/// A way to run agent containers.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Short name for logs and `--runtime` (`docker`, `process`, `fake`).
    fn name(&self) -> &'static str;

    /// Checks the runtime is reachable and prepares what containers need (the Docker runtime
    /// builds the agent image here). Called once at service start; errors stop the start.
    async fn prepare(&self) -> Result<(), RuntimeError>;

    /// Makes the image of `tier` available, building it if needed (the Docker runtime builds the
    /// `standard` image on its first use, which takes minutes). Callers run it before
    /// [`ContainerRuntime::create`] so a long build does not count against the container's start
    /// deadline; `create` of a tier not ensured yet ensures it itself. Runtimes without images
    /// have nothing to do.
    async fn ensure_tier(&self, _tier: ImageTier) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Creates (does not start) a container; returns its runtime id.
    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;

    /// Starts a created container.
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;

    /// Resolves when the container has exited.
    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError>;

    /// Sends SIGTERM, then SIGKILL after `grace`. Returns once the signal(s) were sent; `wait`
    /// reports the exit. Stopping a container that is not running is not an error.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// Removes a container (force). Removing one that does not exist is not an error.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;

    /// Lists containers labelled with this install id, running or not.
    async fn list_managed(&self, install_id: &str) -> Result<Vec<ManagedContainer>, RuntimeError>;

    /// Resolves Debian package names to the exact versions an image would install, in a
    /// throwaway container of `base` (the agent group's current image; `None`: the `standard`
    /// image) that alone gets a network, to reach the Debian mirror. Returns one pin per name,
    /// in order.
    ///
    /// Errors: [`RuntimeError::Image`] naming the unknown packages, or why the lookup failed.
    /// The default: this runtime has no images.
    async fn resolve_packages(
        &self,
        _base: Option<&str>,
        _names: &[String],
    ) -> Result<Vec<PinnedPackage>, RuntimeError> {
        Err(RuntimeError::Image(format!(
            "the {} runtime has no images to install packages into",
            self.name()
        )))
    }

    /// Builds the image of agent group `agent_group_id`: the `standard` image plus exactly
    /// `packages`, with a network only while it builds. Returns the image's ref (the same inputs
    /// give the same ref, and an image already there is reused).
    ///
    /// Errors: why, with the tail of the build's log. The default: this runtime has no images.
    async fn build_group_image(
        &self,
        _agent_group_id: &str,
        _packages: &[PinnedPackage],
    ) -> Result<String, BuildFailure> {
        Err(BuildFailure {
            message: format!("the {} runtime has no images to build", self.name()),
            log_tail: String::new(),
        })
    }

    /// The last `lines` lines of the container's output (the runner logs to stderr), for the
    /// warning about an unexpected exit; read before the container is removed. Runtimes that keep
    /// no output return an empty string.
    async fn logs_tail(&self, _id: &str, _lines: usize) -> Result<String, RuntimeError> {
        Ok(String::new())
    }
}
