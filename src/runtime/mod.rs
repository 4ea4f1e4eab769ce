//! Container runtimes: Docker (the default) and the explicit process runtime.

pub mod docker;
pub mod image;
pub mod packages;
pub mod process;
pub mod standard;

use crate::config::{Config, RuntimeKind};
use nanoclaw_actors::ports::runtime::ContainerRuntime;
use std::sync::Arc;

/// The runtime the configuration asks for, and the (uid, gid) that must own the folders its
/// containers write (`None`: the host user's own).
///
/// Errors are one line. When Docker was not named explicitly and is unreachable, the error says
/// so and names `--runtime process` — there is never a silent fallback to running on the host.
pub async fn from_config(config: &Config) -> Result<(Arc<dyn ContainerRuntime>, Option<(u32, u32)>), String> {
    let binary =
        image::locate_agent_binary(config.container.agent_binary.as_deref()).map_err(|e| e.to_string())?;
    match config.runtime {
        RuntimeKind::Process => Ok((Arc::new(process::ProcessRuntime::new(binary)), None)),
        RuntimeKind::Docker => {
            let uid = nix::unistd::getuid().as_raw();
            let gid = nix::unistd::getgid().as_raw();
            // A non-root host runs containers as itself (it then owns what they write); a root host
            // runs them as nobody and hands the writable folders to nobody.
            let (user, owner) =
                if uid == 0 { ((65534, 65534), Some((65534, 65534))) } else { ((uid, gid), None) };
            let binary_for_cache = binary.clone();
            let settings = docker::DockerSettings {
                image: config.container.image.clone(),
                agent_binary: binary,
                tag_cache: Some(tag_cache_path(&binary_for_cache, &config.data_dir)),
                memory_bytes: (config.container.memory_mb * 1024 * 1024) as i64,
                nano_cpus: (config.container.cpus * 1e9) as i64,
                pids_limit: config.container.pids_limit,
                user,
                nofile: config.container.nofile,
                standard: standard::StandardSettings {
                    debian_suite: config.container.debian_suite.clone(),
                    debian_mirror: config.container.debian_mirror.clone(),
                    work_dir: None,
                },
            };
            match docker::DockerRuntime::connect(settings).await {
                Ok(rt) => Ok((Arc::new(rt), owner)),
                Err(e) if !config.runtime_named => Err(format!(
                    "{e}; agents run in Docker containers and Docker is not reachable (start dockerd, or set DOCKER_HOST) — to run agents as plain host processes without isolation, pass --runtime process"
                )),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

/// The skills folder: `configured` when given (the config checked that it is a directory), else
/// `skills/` beside this program (an installed layout), else the source tree's
/// `container/skills` (a build from source: `cargo run`, the tests). Absolute, since it is bind
/// mounted. `None` (with a warning) when there is none: agents then run without skills.
pub fn locate_skills_dir(configured: Option<&std::path::Path>) -> Option<std::path::PathBuf> {
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("skills")));
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("container").join("skills");
    let found = match configured {
        Some(dir) => Some(dir.to_path_buf()),
        None => beside.into_iter().chain([source]).find(|d| d.is_dir()),
    };
    match found.map(|d| std::fs::canonicalize(&d).map_err(|e| (d, e))) {
        Some(Ok(dir)) => Some(dir),
        Some(Err((dir, e))) => {
            tracing::warn!(dir = %dir.display(), error = %e, "skills folder unusable; agents run without skills");
            None
        }
        None => {
            tracing::warn!("no skills folder found (set container.skills_dir); agents run without skills");
            None
        }
    }
}

/// Where the Docker runtime remembers the agent image's tag ([`image::cached_tag`]): the user's
/// cache directory (`$XDG_CACHE_HOME/nanoclaw`, else `~/.cache/nanoclaw`), one file per agent
/// binary path — the image lives in the Docker daemon, not in a data directory, so a new data
/// directory starts as fast as an old one. Without a home directory, the data directory.
fn tag_cache_path(agent_binary: &std::path::Path, data_dir: &std::path::Path) -> std::path::PathBuf {
    use sha2::{Digest, Sha256};
    let cache_home = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| std::path::Path::new(&h).join(".cache"))
        });
    let key = hex::encode(Sha256::digest(agent_binary.as_os_str().as_encoded_bytes()));
    let dir = cache_home
        .map(|c| c.join("nanoclaw"))
        .filter(|d| std::fs::create_dir_all(d).is_ok())
        .unwrap_or_else(|| data_dir.to_path_buf());
    dir.join(format!("image-tag-{}.json", &key[..16]))
}
