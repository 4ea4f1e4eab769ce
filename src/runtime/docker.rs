//! The Docker runtime: `ContainerRuntime` over bollard (DESIGN §7).
//!
//! Every container is hardened by default: a non-root user, `cap_drop ALL`,
//! `no-new-privileges`, a read-only root filesystem with a tmpfs `/tmp`, memory (no swap), CPU
//! and pids limits, an open-file (`nofile`) limit, size-capped logs, no network, an init process,
//! labels `nanoclaw.install` / `nanoclaw.session`, and no Docker socket. Mounts: the session's host folder read-only at `/session`, its workspace
//! read-write at `/workspace`, the agent group's folder read-write at `/workspace/agent`, the
//! skills folder (when there is one) read-only at `/skills`.

use super::image::{self, BuildContext};
use super::packages;
use super::standard::{self, StandardSettings};
use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, ResourcesUlimits,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    InspectContainerOptions, ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use nanoclaw_actors::ports::runtime::{
    BuildFailure, ContainerRuntime, ContainerSpec, ExitStatus, LABEL_GENERATION, LABEL_INSTALL,
    LABEL_SESSION, ManagedContainer, PinnedPackage, RuntimeError,
};
use nanoclaw_protocol::layout;
use nanoclaw_protocol::settings::ImageTier;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info};

/// Settings of the Docker runtime.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// Image repository (tagged with the content hash).
    pub image: String,
    /// The runner binary to put into the image.
    pub agent_binary: PathBuf,
    /// Where the image tag is remembered between starts ([`image::cached_tag`]); `None` learns it
    /// anew at every start (~20 ms).
    pub tag_cache: Option<PathBuf>,
    /// Memory limit in bytes.
    pub memory_bytes: i64,
    /// CPU limit in nano-CPUs (1e9 = one core).
    pub nano_cpus: i64,
    /// Process limit.
    pub pids_limit: i64,
    /// `uid:gid` the container runs as.
    pub user: (u32, u32),
    /// Open-file limit (`nofile` ulimit, soft = hard): a container cannot exhaust the host's file
    /// table.
    pub nofile: u64,
    /// Where the `standard` image comes from (built on its first use, [`DockerRuntime::ensure_standard`]).
    pub standard: StandardSettings,
}

/// Log driver of every container: `json-file`, Docker's default (so `docker logs` and
/// [`ContainerRuntime::logs_tail`] work as before; Podman's compatible API accepts it too), with
/// its rotation options set so a chatty or hostile agent cannot fill the host's disk through its
/// stdout/stderr. An explicit driver overrides a daemon-wide default on purpose.
pub const LOG_DRIVER: &str = "json-file";
/// Size of one log file before rotation (`max-size`).
pub const LOG_MAX_SIZE: &str = "5m";
/// Log files kept per container (`max-file`): at most 2 × 5 MB of logs per container.
pub const LOG_MAX_FILES: &str = "2";

/// The Docker runtime.
pub struct DockerRuntime {
    docker: Docker,
    settings: DockerSettings,
    /// `repository:tag` of the built image, set by `prepare`.
    image_ref: Mutex<Option<String>>,
    /// `repository:tag` of the `standard` image once found or built, by one build shared by
    /// every use (see [`SharedStandard`]).
    standard: SharedStandard,
    /// The step that finds or builds the standard image ([`build_standard`] over this runtime's
    /// client and settings); unit tests put a fake in its place (a real build takes minutes).
    standard_build: StandardBuild,
}

/// See [`DockerRuntime::standard_build`].
type StandardBuild = Arc<dyn Fn() -> BoxFuture<'static, Result<String, RuntimeError>> + Send + Sync>;

/// The outcome of a standard build, sent once to everyone waiting for it.
type Outcome = Option<Result<String, RuntimeError>>;

/// The `standard` image of one runtime, found or built at most once at a time. The build runs
/// on a task of its own and its waiters only watch for its outcome: one that goes away (its
/// session actor stopped, its ensure task aborted) never cancels the build the others wait for
/// — a cancelled build would start again from scratch, minutes each time. A failed build leaves
/// it empty, so the next use tries again. Dropping the runtime aborts a build in progress.
#[derive(Default)]
struct SharedStandard {
    state: Arc<Mutex<StandardState>>,
    /// The task of the latest build.
    task: Mutex<Option<tokio_util::task::AbortOnDropHandle<()>>>,
}

/// Where the standard image stands.
#[derive(Default)]
enum StandardState {
    /// Not found or built yet, or the last build failed.
    #[default]
    Idle,
    /// A build runs; its outcome comes on this channel.
    Building(tokio::sync::watch::Receiver<Outcome>),
    /// Found or built: its ref.
    Ready(String),
}

/// Puts the state back to `Idle` when a build task ends without an outcome (it panicked, or it
/// was aborted with its runtime), so the next use builds again instead of waiting forever.
struct IdleUnlessFinished {
    state: Arc<Mutex<StandardState>>,
    finished: bool,
}

impl Drop for IdleUnlessFinished {
    fn drop(&mut self) {
        if !self.finished {
            *self.state.lock() = StandardState::Idle;
        }
    }
}

impl SharedStandard {
    /// The ref once found or built.
    fn get(&self) -> Option<String> {
        match &*self.state.lock() {
            StandardState::Ready(image_ref) => Some(image_ref.clone()),
            _ => None,
        }
    }

    /// The ref: at once when known, else the outcome of the build in progress, else of a new
    /// build (`build` started on a task of its own). Dropping this future only stops waiting.
    async fn get_or_build(&self, build: &StandardBuild) -> Result<String, RuntimeError> {
        let mut outcome = {
            let mut state = self.state.lock();
            match &*state {
                StandardState::Ready(image_ref) => return Ok(image_ref.clone()),
                StandardState::Building(rx) => rx.clone(),
                StandardState::Idle => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    let future = build();
                    let shared = self.state.clone();
                    let task = tokio::spawn(async move {
                        let mut guard = IdleUnlessFinished { state: shared, finished: false };
                        let result = future.await;
                        // State and outcome change together, under the lock: a use that finds
                        // `Idle` after a failure (and replaces this task's handle, aborting it)
                        // comes only after the outcome was sent.
                        let mut state = guard.state.lock();
                        *state = match &result {
                            Ok(image_ref) => StandardState::Ready(image_ref.clone()),
                            Err(_) => StandardState::Idle,
                        };
                        let _ = tx.send(Some(result));
                        drop(state);
                        guard.finished = true;
                    });
                    *state = StandardState::Building(rx.clone());
                    *self.task.lock() = Some(tokio_util::task::AbortOnDropHandle::new(task));
                    rx
                }
            }
        };
        match outcome.wait_for(Option::is_some).await {
            Ok(result) => result.clone().unwrap_or_else(|| unreachable!("waited for an outcome")),
            Err(_) => Err(RuntimeError::Image(
                "the standard image build ended without an outcome (see the log); the next use builds again"
                    .into(),
            )),
        }
    }
}

fn op_err<'a>(
    op: &'static str,
    container: &'a str,
) -> impl FnOnce(bollard::errors::Error) -> RuntimeError + 'a {
    move |e| RuntimeError::Operation {
        op,
        container: container.to_string(),
        message: one_line(&e.to_string()),
    }
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

impl DockerRuntime {
    /// Connects to the local daemon (`DOCKER_HOST` or `/var/run/docker.sock`) and pings it.
    ///
    /// Errors with [`RuntimeError::Unavailable`] when the daemon does not answer within 5 s.
    pub async fn connect(settings: DockerSettings) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| RuntimeError::Unavailable(one_line(&e.to_string())))?;
        match tokio::time::timeout(Duration::from_secs(5), docker.ping()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(RuntimeError::Unavailable(one_line(&e.to_string()))),
            Err(_) => return Err(RuntimeError::Unavailable("no answer within 5 s".into())),
        }
        let standard_build: StandardBuild = {
            let (docker, settings) = (docker.clone(), settings.clone());
            Arc::new(move || Box::pin(build_standard(docker.clone(), settings.clone())))
        };
        Ok(Self {
            docker,
            settings,
            image_ref: Mutex::new(None),
            standard: SharedStandard::default(),
            standard_build,
        })
    }

    /// The bollard client (tests use it to inspect containers).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// `repository:tag` of the agent image once prepared.
    pub fn image_ref(&self) -> Option<String> {
        self.image_ref.lock().clone()
    }

    /// Builds the minimal image unless an image with its content tag exists. Returns its ref.
    ///
    /// With a tag cache whose inputs are unchanged this costs a few `stat`s and one Docker round
    /// trip; otherwise the context is built to learn the tag (and sent only when the image is
    /// missing), and the tag is remembered once the image exists.
    pub async fn ensure_image(&self) -> Result<String, RuntimeError> {
        let binary = self.settings.agent_binary.clone();
        if let Some(cache) = self.settings.tag_cache.clone() {
            let bin = binary.clone();
            if let Ok(Some(tag)) = tokio::task::spawn_blocking(move || image::cached_tag(&cache, &bin)).await
            {
                let image_ref = format!("{}:{tag}", self.settings.image);
                if self.docker.inspect_image(&image_ref).await.is_ok() {
                    debug!(image = %image_ref, "agent image present (remembered tag)");
                    return Ok(image_ref);
                }
            }
        }
        let context = tokio::task::spawn_blocking(move || image::minimal_context(&binary))
            .await
            .map_err(|e| RuntimeError::Image(e.to_string()))?
            .map_err(|e| RuntimeError::Image(e.to_string()))?;
        let image_ref = self.build_if_missing(&context).await?;
        if let Some(cache) = self.settings.tag_cache.clone() {
            let stored = tokio::task::spawn_blocking(move || image::store_tag(&cache, &context)).await;
            if let Ok(Err(e)) = stored {
                tracing::warn!(error = %e, "could not remember the image tag; the next start learns it again");
            }
        }
        Ok(image_ref)
    }

    /// `repository:tag` of the `standard` image once ensured.
    pub fn standard_image_ref(&self) -> Option<String> {
        self.standard.get()
    }

    /// The `standard` image (module [`standard`]): found by its input tag with one `inspect`, else
    /// built — debootstrap, then a streamed `docker import` — under a host-wide lock, printing
    /// progress on stderr. Returns its ref. Takes minutes when it builds; errors are one line
    /// naming the fix (no debootstrap, not root, bad `[container] debian_*`). Dropping the future
    /// abandons the build; [`ContainerRuntime::ensure_tier`] runs it on a task of its own instead.
    pub async fn ensure_standard(&self) -> Result<String, RuntimeError> {
        build_standard(self.docker.clone(), self.settings.clone()).await
    }

    /// The standard image's ref, found or built once per runtime (on a task of its own: see
    /// [`SharedStandard`]).
    async fn standard_ref(&self) -> Result<String, RuntimeError> {
        self.standard.get_or_build(&self.standard_build).await
    }

    /// Builds the image of `context` unless it exists. Returns its ref.
    async fn build_if_missing(&self, context: &BuildContext) -> Result<String, RuntimeError> {
        let BuildContext { tar, tag, .. } = context;
        let image_ref = format!("{}:{tag}", self.settings.image);
        if self.docker.inspect_image(&image_ref).await.is_ok() {
            debug!(image = %image_ref, "agent image present");
            return Ok(image_ref);
        }
        info!(image = %image_ref, bytes = tar.len(), "building the agent image (offline, FROM scratch)");
        let options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(&image_ref)
            .rm(true)
            .forcerm(true)
            .build();
        let mut stream = self.docker.build_image(options, None, Some(bollard::body_full(tar.clone().into())));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(err) = info.error_detail.and_then(|d| d.message) {
                        return Err(RuntimeError::Image(one_line(&err)));
                    }
                }
                Err(e) => return Err(RuntimeError::Image(one_line(&e.to_string()))),
            }
        }
        self.docker
            .inspect_image(&image_ref)
            .await
            .map_err(|e| RuntimeError::Image(format!("built but not found: {}", one_line(&e.to_string()))))?;
        Ok(image_ref)
    }

    fn create_body(&self, spec: &ContainerSpec, image_ref: &str) -> ContainerCreateBody {
        let mut env: Vec<String> = vec![
            format!("{}={}", layout::ENV_SESSION_DIR, layout::CONTAINER_SESSION_DIR),
            format!("{}={}", layout::ENV_WORKSPACE_DIR, layout::CONTAINER_WORKSPACE_DIR),
        ];
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        // The runner's log filter, when the operator set one for the host (`debug` to see its
        // turns): a level, never a secret, so it crosses like the process runtime lets it.
        if let Ok(filter) = std::env::var("NANOCLAW_AGENT_LOG")
            && filter.len() <= 200
            && filter.chars().all(|c| c.is_ascii_alphanumeric() || "_-=,:".contains(c))
        {
            env.push(format!("NANOCLAW_AGENT_LOG={filter}"));
        }
        let bind = |source: &PathBuf, target: &str, read_only: bool| Mount {
            target: Some(target.to_string()),
            source: Some(source.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(read_only),
            ..Default::default()
        };
        let mut mounts = vec![
            bind(&spec.session_host_dir, layout::CONTAINER_SESSION_DIR, true),
            bind(&spec.session_workspace_dir, layout::CONTAINER_WORKSPACE_DIR, false),
            bind(&spec.agent_group_dir, layout::CONTAINER_AGENT_DIR, false),
        ];
        if let Some(skills) = &spec.skills_dir {
            // The whole folder, read-only: skills are public text shipped with nanoclaw; the
            // runner reads only the ones runner.json selects.
            mounts.push(bind(skills, layout::CONTAINER_SKILLS_DIR, true));
        }
        let labels = HashMap::from([
            (LABEL_INSTALL.to_string(), spec.install_id.clone()),
            (LABEL_SESSION.to_string(), spec.session_id.clone()),
            (LABEL_GENERATION.to_string(), spec.generation.to_string()),
        ]);
        let nofile = i64::try_from(self.settings.nofile).unwrap_or(i64::MAX);
        ContainerCreateBody {
            image: Some(image_ref.to_string()),
            env: Some(env),
            user: Some(format!("{}:{}", self.settings.user.0, self.settings.user.1)),
            labels: Some(labels),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                mounts: Some(mounts),
                network_mode: Some("none".into()),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                readonly_rootfs: Some(true),
                tmpfs: Some(HashMap::from([(
                    "/tmp".to_string(),
                    "rw,noexec,nosuid,size=64m,mode=1777".to_string(),
                )])),
                memory: Some(self.settings.memory_bytes),
                memory_swap: Some(self.settings.memory_bytes),
                nano_cpus: Some(self.settings.nano_cpus),
                pids_limit: Some(self.settings.pids_limit),
                ulimits: Some(vec![ResourcesUlimits {
                    name: Some("nofile".into()),
                    soft: Some(nofile),
                    hard: Some(nofile),
                }]),
                log_config: Some(HostConfigLogConfig {
                    typ: Some(LOG_DRIVER.into()),
                    config: Some(HashMap::from([
                        ("max-size".to_string(), LOG_MAX_SIZE.to_string()),
                        ("max-file".to_string(), LOG_MAX_FILES.to_string()),
                    ])),
                }),
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// [`DockerRuntime::ensure_standard`] over owned parts, so it can run on a task of its own.
async fn build_standard(docker: Docker, settings: DockerSettings) -> Result<String, RuntimeError> {
    let image_err = |e: standard::StandardError| RuntimeError::Image(e.to_string());
    let join_err = |e: tokio::task::JoinError| RuntimeError::Image(e.to_string());
    let standard_settings = settings.standard.clone();
    let runner = settings.agent_binary.clone();
    let recipe = tokio::task::spawn_blocking(move || standard::Recipe::resolve(&standard_settings, &runner))
        .await
        .map_err(join_err)?
        .map_err(image_err)?;
    let tag = recipe.tag();
    let image_ref = format!("{}:{tag}", settings.image);
    if docker.inspect_image(&image_ref).await.is_ok() {
        debug!(image = %image_ref, "standard image present");
        return Ok(image_ref);
    }
    let work_dir = settings.standard.work_dir.clone().unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let lock_dir = work_dir.clone();
    let _lock = tokio::task::spawn_blocking(move || standard::lock_builds(&lock_dir))
        .await
        .map_err(join_err)?
        .map_err(image_err)?;
    // Another process may have built it while this one waited for the lock.
    if docker.inspect_image(&image_ref).await.is_ok() {
        return Ok(image_ref);
    }
    let started = std::time::Instant::now();
    eprintln!(
        "building the standard image {image_ref} (Debian {} from {}); this takes a few minutes, once",
        recipe.suite, recipe.mirror
    );
    info!(image = %image_ref, suite = %recipe.suite, mirror = %recipe.mirror, "building the standard image");
    let progress = standard::Progress::new();
    let _printer = progress.print_every();
    let (build_dir, root) = standard::build_rootfs(&recipe, &work_dir, &progress).await.map_err(image_err)?;
    let (body, sent, writer) = standard::tar_stream(root);
    let counter = {
        let (progress, sent) = (progress.clone(), sent.clone());
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                let mb = sent.load(std::sync::atomic::Ordering::Relaxed) >> 20;
                progress.set(format!("importing into Docker, {mb} MB sent"));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    };
    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(&settings.image)
        .tag(&tag)
        .changes(recipe.import_changes())
        .build();
    // The default 120 s request timeout covers the wait for the response headers, which the
    // daemon may only send once it has read the whole upload.
    let docker = docker.clone().with_timeout(Duration::from_secs(3600));
    let mut stream = docker.create_image(Some(options), Some(bollard::body_try_stream(body)), None);
    let mut failure = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(err) = info.error_detail.and_then(|d| d.message) {
                    failure = Some(one_line(&err));
                }
            }
            Err(e) => failure = Some(one_line(&e.to_string())),
        }
    }
    drop(stream);
    drop(counter);
    // The writer ends once its receiver is gone; its own errors reached the upload already.
    let _ = writer.await;
    drop(build_dir);
    if let Some(message) = failure {
        return Err(RuntimeError::Image(format!("importing the standard image: {message}")));
    }
    let info = docker.inspect_image(&image_ref).await.map_err(|e| {
        RuntimeError::Image(format!("standard image imported but not found: {}", one_line(&e.to_string())))
    })?;
    let secs = started.elapsed().as_secs();
    let mb = info.size.unwrap_or(0) >> 20;
    eprintln!("built the standard image {image_ref} in {}m{:02}s ({mb} MB)", secs / 60, secs % 60);
    info!(image = %image_ref, seconds = secs, size_mb = mb, "standard image built");
    Ok(image_ref)
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn prepare(&self) -> Result<(), RuntimeError> {
        let image_ref = self.ensure_image().await?;
        *self.image_ref.lock() = Some(image_ref);
        Ok(())
    }

    async fn ensure_tier(&self, tier: ImageTier) -> Result<(), RuntimeError> {
        match tier {
            ImageTier::Minimal => Ok(()),
            ImageTier::Standard => self.standard_ref().await.map(drop),
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let image_ref = match (&spec.image, spec.image_tier) {
            // The group's own image (approved packages on `standard`).
            (Some(image), _) => image.clone(),
            (None, ImageTier::Minimal) => {
                self.image_ref().ok_or_else(|| RuntimeError::Image("not prepared".into()))?
            }
            // Lazily: a caller that did not `ensure_tier` first still gets the right image.
            (None, ImageTier::Standard) => self.standard_ref().await?,
        };
        let options = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        let created = self
            .docker
            .create_container(Some(options), self.create_body(spec, &image_ref))
            .await
            .map_err(op_err("create", &spec.name))?;
        Ok(created.id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.docker.start_container(id, None).await.map_err(op_err("start", id))
    }

    async fn resolve_packages(
        &self,
        base: Option<&str>,
        names: &[String],
    ) -> Result<Vec<PinnedPackage>, RuntimeError> {
        let image = match base {
            Some(b) => b.to_string(),
            None => self.standard_ref().await?,
        };
        packages::resolve(&self.docker, &image, names).await
    }

    async fn build_group_image(
        &self,
        agent_group_id: &str,
        packages: &[PinnedPackage],
    ) -> Result<String, BuildFailure> {
        let base = self.standard_ref().await.map_err(|e| BuildFailure {
            message: format!("the standard image: {e}"),
            log_tail: String::new(),
        })?;
        packages::build(&self.docker, &self.settings.image, &base, agent_group_id, packages).await
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        // Condition not-running after start: next-exit can miss a fast exit (crates.md §2.2).
        let options = WaitContainerOptionsBuilder::default().condition("not-running").build();
        let mut stream = self.docker.wait_container(id, Some(options));
        let code = match stream.next().await {
            Some(Ok(r)) => Some(r.status_code),
            // A non-zero exit arrives as an error (crates.md §2.2).
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Some(code),
            Some(Err(e)) if is_not_found(&e) => None,
            Some(Err(e)) => return Err(op_err("wait", id)(e)),
            None => None,
        };
        let oom_killed = match self.docker.inspect_container(id, None::<InspectContainerOptions>).await {
            Ok(info) => info.state.and_then(|s| s.oom_killed).unwrap_or(false),
            Err(_) => false,
        };
        Ok(ExitStatus { code, oom_killed })
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let options = StopContainerOptionsBuilder::default().t(grace.as_secs().clamp(1, 3600) as i32).build();
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304 | 404, .. }) => Ok(()),
            Err(e) => Err(op_err("stop", id)(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // "removal already in progress"
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
            Err(e) => Err(op_err("remove", id)(e)),
        }
    }

    async fn logs_tail(&self, id: &str, lines: usize) -> Result<String, RuntimeError> {
        let options =
            LogsOptionsBuilder::default().stdout(true).stderr(true).tail(&lines.to_string()).build();
        let mut stream = self.docker.logs(id, Some(options));
        let mut out = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => out.push_str(&String::from_utf8_lossy(&chunk.into_bytes())),
                Err(e) if is_not_found(&e) => break,
                Err(e) => return Err(op_err("logs", id)(e)),
            }
        }
        Ok(out)
    }

    async fn list_managed(&self, install_id: &str) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_INSTALL}={install_id}")])]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = self.docker.list_containers(Some(options)).await.map_err(op_err("list", install_id))?;
        Ok(list
            .into_iter()
            .map(|c| ManagedContainer {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                session_id: c.labels.and_then(|l| l.get(LABEL_SESSION).cloned()),
                running: c
                    .state
                    .map(|s| format!("{s:?}").to_lowercase().contains("running"))
                    .unwrap_or(false),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn settings() -> DockerSettings {
        DockerSettings {
            image: "nanoclaw-agent".into(),
            agent_binary: PathBuf::from("/nonexistent/nanoclaw-agent"),
            tag_cache: None,
            memory_bytes: 1 << 29,
            nano_cpus: 1_000_000_000,
            pids_limit: 128,
            user: (65534, 65534),
            nofile: 1024,
            standard: Default::default(),
        }
    }

    /// A runtime whose standard build is `build` (the client is never used: no daemon needed).
    fn with_build(build: StandardBuild) -> DockerRuntime {
        let docker = Docker::connect_with_local_defaults().expect("a client (it does not connect)");
        DockerRuntime {
            docker,
            settings: settings(),
            image_ref: Mutex::new(None),
            standard: SharedStandard::default(),
            standard_build: build,
        }
    }

    /// A fake build counting its starts and ends, each waiting for a permit of `gate`, then
    /// answering with `answers` in turn (the last one repeats).
    fn gated_build(
        gate: Arc<tokio::sync::Semaphore>,
        started: Arc<AtomicUsize>,
        finished: Arc<AtomicUsize>,
        answers: Vec<Result<String, RuntimeError>>,
    ) -> StandardBuild {
        Arc::new(move || {
            let n = started.fetch_add(1, Ordering::SeqCst);
            let answer = answers[n.min(answers.len() - 1)].clone();
            let (gate, finished) = (gate.clone(), finished.clone());
            Box::pin(async move {
                gate.acquire().await.expect("gate open").forget();
                finished.fetch_add(1, Ordering::SeqCst);
                answer
            })
        })
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..500 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// The session that started the shared build is cancelled (its ensure task aborted): the
    /// build goes on, a later waiter gets its result, and the image was built once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_ensure_does_not_cancel_the_shared_standard_build() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (started, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let image = "nanoclaw-agent:std-000000000000".to_string();
        let rt = Arc::new(with_build(gated_build(
            gate.clone(),
            started.clone(),
            finished.clone(),
            vec![Ok(image.clone())],
        )));
        let first = tokio::spawn({
            let rt = rt.clone();
            async move { rt.ensure_tier(ImageTier::Standard).await }
        });
        until("the build to start", || started.load(Ordering::SeqCst) == 1).await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());

        let second = tokio::spawn({
            let rt = rt.clone();
            async move { rt.ensure_tier(ImageTier::Standard).await }
        });
        gate.add_permits(1);
        second.await.unwrap().unwrap();
        assert_eq!(started.load(Ordering::SeqCst), 1, "one build for both sessions");
        assert_eq!(finished.load(Ordering::SeqCst), 1, "the build ran to its end");
        assert_eq!(rt.standard_image_ref(), Some(image.clone()));
        // Found: no further build.
        rt.ensure_tier(ImageTier::Standard).await.unwrap();
        assert_eq!(started.load(Ordering::SeqCst), 1);
    }

    /// Every waiter of a failed build gets its error, and the next use builds again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_standard_build_reaches_every_waiter_and_the_next_use_tries_again() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (started, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let failure = RuntimeError::Image("the standard image needs debootstrap".into());
        let image = "nanoclaw-agent:std-000000000001".to_string();
        let rt = Arc::new(with_build(gated_build(
            gate.clone(),
            started.clone(),
            finished.clone(),
            vec![Err(failure.clone()), Ok(image.clone())],
        )));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let rt = rt.clone();
                tokio::spawn(async move { rt.ensure_tier(ImageTier::Standard).await })
            })
            .collect();
        until("the build to start", || started.load(Ordering::SeqCst) == 1).await;
        gate.add_permits(1);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Err(failure.clone()));
        }
        assert_eq!(started.load(Ordering::SeqCst), 1, "the waiters shared one build");
        assert_eq!(rt.standard_image_ref(), None);
        gate.add_permits(1);
        rt.ensure_tier(ImageTier::Standard).await.unwrap();
        assert_eq!(started.load(Ordering::SeqCst), 2, "retried after the failure");
        assert_eq!(rt.standard_image_ref(), Some(image));
    }
}
