//! Building the service from a [`Config`]: runtime, CLI channel, install id.

use crate::channels::cli::CliChannel;
use crate::config::Config;
use nanoclaw_actors::{Service, ServiceConfig};
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

/// Starts the service with the configured runtime and the CLI channel. One-line errors.
pub async fn start(config: &Config) -> Result<Service, String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("data directory {}: {e}", config.data_dir.display()))?;
    let socket = cli_socket(config);
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(format!("a nanoclaw service is already running on {}", socket.display()));
    }
    let (runtime, owner) = crate::runtime::from_config(config).await?;
    let mut service_config = ServiceConfig::new(&config.data_dir, install_id(&config.data_dir));
    service_config.container_owner = owner;
    service_config.retry_backoff = std::time::Duration::from_millis(config.retry_backoff_ms);
    service_config.max_containers = config.container.max_concurrent;
    let cli = CliChannel::new(cli_socket(config));
    Service::start(service_config, runtime, vec![Arc::new(cli)]).await.map_err(|e| e.to_string())
}
