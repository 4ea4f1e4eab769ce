//! Building the service from a [`Config`]: data-directory lock, runtime, CLI channel, install id.

use crate::channels::cli::CliChannel;
use crate::config::{Config, MIB};
use nanoclaw_actors::{Service, ServiceConfig, StartError};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The install id of a data directory: 8 hex digits of the SHA-256 of its canonical path, so two
/// installs on one Docker daemon never reap each other's containers.
pub fn install_id(data_dir: &Path) -> String {
    let canonical = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
    hex::encode(Sha256::digest(canonical.as_os_str().as_encoded_bytes()))[..8].to_string()
}

/// The CLI socket of a data directory.
pub fn cli_socket(config: &Config) -> PathBuf {
    config.data_dir.join("cli.sock")
}

/// Why [`start`] failed. Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The service did not start; [`StartError::Locked`] when another service holds the data
    /// directory.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The configured container runtime is not usable.
    #[error("{0}")]
    Runtime(String),
}

/// The service settings a [`Config`] gives for a data directory.
pub fn service_config(config: &Config, container_owner: Option<(u32, u32)>) -> ServiceConfig {
    let mut service_config = ServiceConfig::new(&config.data_dir, install_id(&config.data_dir));
    service_config.container_owner = container_owner;
    service_config.retry_backoff = std::time::Duration::from_millis(config.retry_backoff_ms);
    service_config.max_containers = config.container.max_concurrent;
    service_config.workspace_max_bytes = config.container.workspace_max_mb * MIB;
    service_config.outbound_max_bytes = config.container.outbound_max_mb * MIB;
    service_config.min_free_bytes = config.min_free_mb * MIB;
    service_config.max_tool_rounds = config.agent.max_tool_rounds;
    service_config.timezone = config.agent.timezone.clone();
    service_config.routing = config.routing.clone();
    service_config.approvals = config.approvals.clone();
    service_config.skills_dir = crate::runtime::locate_skills_dir(config.container.skills_dir.as_deref());
    service_config
}

/// The credential proxy for a [`Config`]: its providers, with each key read from the process
/// environment now, once.
pub fn gateway(config: &Config) -> Result<Arc<crate::proxy::ProxyGateway>, DaemonError> {
    let gateway =
        crate::proxy::ProxyGateway::new(&config.providers, &config.agent.provider, |k| std::env::var(k).ok())
            .map_err(DaemonError::Runtime)?;
    Ok(Arc::new(gateway))
}

/// Starts the service with the configured runtime and the CLI channel. The data directory's lock
/// is taken first, before the runtime is built, so a second service on the same directory fails
/// at once with [`StartError::Locked`] whatever the state of Docker.
pub async fn start(config: &Config) -> Result<Service, DaemonError> {
    let lock = Service::lock_data_dir(&config.data_dir).await?;
    let (runtime, owner) = crate::runtime::from_config(config).await.map_err(DaemonError::Runtime)?;
    let cli = CliChannel::new(cli_socket(config));
    let mut service_config = service_config(config, owner);
    service_config.gateway = gateway(config)?;
    Ok(Service::start_with_lock(lock, service_config, runtime, vec![Arc::new(cli)]).await?)
}
