//! Configuration: a TOML file, overridden by `NANOCLAW_*` environment variables, overridden by
//! flags (DESIGN §13). Parsed once at the edge into [`Config`]; every error is one line that names
//! the key (or variable, or flag) and the problem.
//!
//! ```toml
//! data_dir = "data"            # NANOCLAW_DATA_DIR, --data-dir
//! runtime  = "docker"          # NANOCLAW_RUNTIME, --runtime   (docker | process)
//!
//! [log]
//! format = "text"              # NANOCLAW_LOG_FORMAT, --log-format (text | json)
//! level  = "info"              # NANOCLAW_LOG_LEVEL  (a tracing filter)
//!
//! [container]
//! image      = "nanoclaw-agent" # NANOCLAW_IMAGE, --image (repository; the tag is a content hash)
//! memory_mb  = 512             # NANOCLAW_CONTAINER_MEMORY_MB
//! cpus       = 1.0             # NANOCLAW_CONTAINER_CPUS
//! pids_limit = 256             # NANOCLAW_CONTAINER_PIDS_LIMIT
//! max_concurrent = 10          # NANOCLAW_CONTAINER_MAX_CONCURRENT (over all sessions; more queue)
//! agent_binary = "…"           # NANOCLAW_AGENT_BINARY (default: nanoclaw-agent beside this program)
//! nofile     = 1024            # NANOCLAW_CONTAINER_NOFILE (open-file limit, soft = hard)
//! workspace_max_mb = 1024      # NANOCLAW_CONTAINER_WORKSPACE_MAX_MB (a session's workspace/)
//! outbound_max_mb  = 256       # NANOCLAW_CONTAINER_OUTBOUND_MAX_MB (largest outbound.db read)
//!
//! [service]
//! retry_backoff_ms = 5000      # NANOCLAW_RETRY_BACKOFF_MS: base of the retry backoff after a
//!                              # container died mid-turn (5 s × 2^n, reference §1.10)
//! min_free_mb = 512            # NANOCLAW_MIN_FREE_MB: under this much free space on the data
//!                              # dir's filesystem no new work is accepted (0: no floor)
//! ```
//!
//! The file is `--config PATH`, else `$NANOCLAW_CONFIG`, else `./nanoclaw.toml` when it exists;
//! with none, built-in defaults apply.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Largest size setting in MiB (1 TiB): keeps every `× 1024 × 1024` far from overflow.
const MAX_MIB: u64 = 1024 * 1024;

/// Bytes in one MiB, the unit of every `*_mb` key.
pub const MIB: u64 = 1024 * 1024;

/// Which container runtime runs agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Docker (or Podman's Docker-compatible socket) through bollard. The default.
    Docker,
    /// Plain child processes, no isolation: development and tests only, never a fallback.
    Process,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Container limits and image settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerConfig {
    /// Image repository; the service tags it with a content hash.
    pub image: String,
    /// Memory limit in MiB (swap disabled).
    pub memory_mb: u64,
    /// CPU limit in cores.
    pub cpus: f64,
    /// Process limit.
    pub pids_limit: i64,
    /// Most containers at once over all sessions; more sessions wait in a fair queue.
    pub max_concurrent: usize,
    /// The agent runner binary put into the image (and run by the process runtime).
    pub agent_binary: Option<PathBuf>,
    /// Open-file limit (`nofile`, soft and hard) of every container.
    pub nofile: u64,
    /// Most MiB a session's `workspace/` may take.
    pub workspace_max_mb: u64,
    /// Largest `outbound.db` the host reads, in MiB.
    pub outbound_max_mb: u64,
    /// Debian suite of the `standard` image; `None`: the host's `VERSION_CODENAME`.
    pub debian_suite: Option<String>,
    /// Debian mirror of the `standard` image; `None`: the host's apt sources' first URI.
    pub debian_mirror: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Runtime, and whether it was named explicitly (file, env or flag) rather than defaulted.
    pub runtime: RuntimeKind,
    /// True when `runtime` was set by the user.
    pub runtime_named: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax).
    pub log_level: String,
    /// Container settings.
    pub container: ContainerConfig,
    /// Base of the retry backoff in ms.
    pub retry_backoff_ms: u64,
    /// Free-space floor of the data directory's filesystem in MiB; 0 disables it.
    pub min_free_mb: u64,
}

/// One-line configuration error naming where the bad value came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config error: {source_name}: {key}: {problem}")]
pub struct ConfigError {
    /// The file path, `environment` or `flag`.
    pub source_name: String,
    /// The key, variable or flag.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    runtime: Option<RuntimeKind>,
    #[serde(default)]
    log: FileLog,
    #[serde(default)]
    container: FileContainer,
    #[serde(default)]
    service: FileService,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileService {
    retry_backoff_ms: Option<u64>,
    min_free_mb: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileContainer {
    image: Option<String>,
    memory_mb: Option<u64>,
    cpus: Option<f64>,
    pids_limit: Option<i64>,
    max_concurrent: Option<usize>,
    agent_binary: Option<PathBuf>,
    nofile: Option<u64>,
    workspace_max_mb: Option<u64>,
    outbound_max_mb: Option<u64>,
    debian_suite: Option<String>,
    debian_mirror: Option<String>,
}

/// Values given as flags (each `None` when absent).
#[derive(Debug, Clone, Default)]
pub struct FlagOverrides {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--runtime`.
    pub runtime: Option<RuntimeKind>,
    /// `--image`.
    pub image: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

fn parse_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        source_name: name.clone(),
        key: "(file)".into(),
        problem: e.to_string(),
    })?;
    let de = toml::Deserializer::parse(&text).map_err(|e| ConfigError {
        source_name: name.clone(),
        key: "(syntax)".into(),
        problem: first_line(e.message()),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        ConfigError {
            source_name: name,
            key: if key == "." { "(root)".into() } else { key },
            problem: first_line(e.inner().message()),
        }
    })
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_string()
}

fn env_parse<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &str,
    what: &str,
) -> Result<Option<T>, ConfigError> {
    match get(var) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| ConfigError {
            source_name: "environment".into(),
            key: var.into(),
            problem: format!("{v:?} is not {what}"),
        }),
    }
}

impl Config {
    /// Loads the configuration from the file (if any), the environment (`get`) and the flags.
    ///
    /// Errors: an unreadable or invalid file, an unknown key, a value of the wrong type or out of
    /// range — each as one [`ConfigError`] line.
    pub fn load(flags: &FlagOverrides, get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let path = flags.config.clone().or_else(|| get("NANOCLAW_CONFIG").map(PathBuf::from)).or_else(|| {
            let p = PathBuf::from("nanoclaw.toml");
            p.exists().then_some(p)
        });
        let file = match &path {
            Some(p) => parse_file(p)?,
            None => FileConfig::default(),
        };
        let runtime_env = match get("NANOCLAW_RUNTIME") {
            None => None,
            Some(v) => Some(match v.trim() {
                "docker" => RuntimeKind::Docker,
                "process" => RuntimeKind::Process,
                other => {
                    return Err(ConfigError {
                        source_name: "environment".into(),
                        key: "NANOCLAW_RUNTIME".into(),
                        problem: format!("{other:?} is not one of docker, process"),
                    });
                }
            }),
        };
        let log_format_env = match get("NANOCLAW_LOG_FORMAT") {
            None => None,
            Some(v) => Some(match v.trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError {
                        source_name: "environment".into(),
                        key: "NANOCLAW_LOG_FORMAT".into(),
                        problem: format!("{other:?} is not one of text, json"),
                    });
                }
            }),
        };
        let runtime_choice = flags.runtime.or(runtime_env).or(file.runtime);
        let config = Config {
            data_dir: flags
                .data_dir
                .clone()
                .or_else(|| get("NANOCLAW_DATA_DIR").map(PathBuf::from))
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("data")),
            runtime: runtime_choice.unwrap_or(RuntimeKind::Docker),
            runtime_named: runtime_choice.is_some(),
            log_format: flags.log_format.or(log_format_env).or(file.log.format).unwrap_or(LogFormat::Text),
            log_level: get("NANOCLAW_LOG_LEVEL").or(file.log.level).unwrap_or_else(|| "info".into()),
            container: ContainerConfig {
                image: flags
                    .image
                    .clone()
                    .or_else(|| get("NANOCLAW_IMAGE"))
                    .or(file.container.image)
                    .unwrap_or_else(|| "nanoclaw-agent".into()),
                memory_mb: env_parse(&get, "NANOCLAW_CONTAINER_MEMORY_MB", "a whole number of MiB")?
                    .or(file.container.memory_mb)
                    .unwrap_or(512),
                cpus: env_parse(&get, "NANOCLAW_CONTAINER_CPUS", "a number of cores")?
                    .or(file.container.cpus)
                    .unwrap_or(1.0),
                pids_limit: env_parse(&get, "NANOCLAW_CONTAINER_PIDS_LIMIT", "a whole number")?
                    .or(file.container.pids_limit)
                    .unwrap_or(256),
                max_concurrent: env_parse(&get, "NANOCLAW_CONTAINER_MAX_CONCURRENT", "a whole number")?
                    .or(file.container.max_concurrent)
                    .unwrap_or(10),
                agent_binary: get("NANOCLAW_AGENT_BINARY").map(PathBuf::from).or(file.container.agent_binary),
                nofile: env_parse(&get, "NANOCLAW_CONTAINER_NOFILE", "a whole number")?
                    .or(file.container.nofile)
                    .unwrap_or(1024),
                workspace_max_mb: env_parse(
                    &get,
                    "NANOCLAW_CONTAINER_WORKSPACE_MAX_MB",
                    "a whole number of MiB",
                )?
                .or(file.container.workspace_max_mb)
                .unwrap_or(1024),
                outbound_max_mb: env_parse(
                    &get,
                    "NANOCLAW_CONTAINER_OUTBOUND_MAX_MB",
                    "a whole number of MiB",
                )?
                .or(file.container.outbound_max_mb)
                .unwrap_or(256),
                debian_suite: file.container.debian_suite,
                debian_mirror: file.container.debian_mirror,
            },
            retry_backoff_ms: env_parse(&get, "NANOCLAW_RETRY_BACKOFF_MS", "a whole number of ms")?
                .or(file.service.retry_backoff_ms)
                .unwrap_or(5000),
            min_free_mb: env_parse(&get, "NANOCLAW_MIN_FREE_MB", "a whole number of MiB")?
                .or(file.service.min_free_mb)
                .unwrap_or(512),
        };
        config.validate(path.as_deref())?;
        let mut config = config;
        // Bind mounts and sockets need absolute paths; resolve once, here at the edge.
        config.data_dir = std::path::absolute(&config.data_dir).map_err(|e| ConfigError {
            source_name: "defaults".into(),
            key: "data_dir".into(),
            problem: format!("cannot resolve {}: {e}", config.data_dir.display()),
        })?;
        Ok(config)
    }

    fn validate(&self, path: Option<&Path>) -> Result<(), ConfigError> {
        let src = path.map(|p| p.display().to_string()).unwrap_or_else(|| "defaults".into());
        let bad =
            |key: &str, problem: String| ConfigError { source_name: src.clone(), key: key.into(), problem };
        if !(6..=1_048_576).contains(&self.container.memory_mb) {
            return Err(bad(
                "container.memory_mb",
                format!("{} not in 6..=1048576 MiB", self.container.memory_mb),
            ));
        }
        if !(self.container.cpus > 0.0 && self.container.cpus <= 1024.0) {
            return Err(bad("container.cpus", format!("{} not in (0, 1024] cores", self.container.cpus)));
        }
        if !(1..=1_000_000).contains(&self.container.pids_limit) {
            return Err(bad(
                "container.pids_limit",
                format!("{} not in 1..=1000000", self.container.pids_limit),
            ));
        }
        let image_ok = !self.container.image.is_empty()
            && self.container.image.len() <= 128
            && self.container.image.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-' | b'/')
            });
        if !image_ok {
            return Err(bad(
                "container.image",
                format!("{:?} is not a lowercase image repository name (no tag)", self.container.image),
            ));
        }
        if !(1..=10_000).contains(&self.container.max_concurrent) {
            return Err(bad(
                "container.max_concurrent",
                format!("{} not in 1..=10000", self.container.max_concurrent),
            ));
        }
        // The runner needs a few dozen descriptors (SQLite files and journals, sockets, stdio).
        if !(64..=1_048_576).contains(&self.container.nofile) {
            return Err(bad("container.nofile", format!("{} not in 64..=1048576", self.container.nofile)));
        }
        if !(1..=MAX_MIB).contains(&self.container.workspace_max_mb) {
            return Err(bad(
                "container.workspace_max_mb",
                format!("{} not in 1..={MAX_MIB} MiB", self.container.workspace_max_mb),
            ));
        }
        if !(1..=MAX_MIB).contains(&self.container.outbound_max_mb) {
            return Err(bad(
                "container.outbound_max_mb",
                format!("{} not in 1..={MAX_MIB} MiB", self.container.outbound_max_mb),
            ));
        }
        if let Some(suite) =
            self.container.debian_suite.as_deref().filter(|s| !crate::runtime::standard::valid_suite(s))
        {
            return Err(bad(
                "container.debian_suite",
                format!("{suite:?} is not a Debian suite name ([a-z0-9.-])"),
            ));
        }
        if let Some(m) =
            self.container.debian_mirror.as_deref().filter(|m| !crate::runtime::standard::valid_mirror(m))
        {
            return Err(bad("container.debian_mirror", format!("{m:?} is not an http(s) URL")));
        }
        if self.min_free_mb > MAX_MIB {
            return Err(bad("service.min_free_mb", format!("{} not in 0..={MAX_MIB} MiB", self.min_free_mb)));
        }
        if !(1..=3_600_000).contains(&self.retry_backoff_ms) {
            return Err(bad(
                "service.retry_backoff_ms",
                format!("{} not in 1..=3600000 ms", self.retry_backoff_ms),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return Err(bad("log.level", format!("{:?} is not a log filter", self.log_level)));
        }
        // Sockets live in the data dir; Unix socket paths are limited to 107 bytes.
        let longest = self.data_dir.join("sessions/x/sess-0000000000-000000/host/wake.sock");
        if longest.as_os_str().len() > 107 {
            return Err(bad(
                "data_dir",
                format!(
                    "{} is too long for Unix socket paths (keep it under ~60 bytes)",
                    self.data_dir.display()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(file: Option<&str>, env: &[(&str, &str)], flags: FlagOverrides) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let mut flags = flags;
        if let Some(text) = file {
            let p = dir.path().join("nanoclaw.toml");
            std::fs::write(&p, text).unwrap();
            flags.config = Some(p);
        }
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::load(&flags, |k| env.get(k).cloned())
    }

    #[test]
    fn defaults_without_any_source() {
        let c = load(None, &[], FlagOverrides::default()).unwrap();
        assert_eq!(c.runtime, RuntimeKind::Docker);
        assert!(!c.runtime_named);
        assert_eq!(c.container.memory_mb, 512);
        assert_eq!(c.data_dir, std::env::current_dir().unwrap().join("data"));
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let file = "data_dir = \"from-file\"\nruntime = \"process\"\n[container]\nmemory_mb = 100\n";
        let c = load(
            Some(file),
            &[("NANOCLAW_DATA_DIR", "from-env"), ("NANOCLAW_CONTAINER_MEMORY_MB", "200")],
            FlagOverrides::default(),
        )
        .unwrap();
        assert!(c.data_dir.ends_with("from-env") && c.data_dir.is_absolute());
        assert_eq!(c.container.memory_mb, 200);
        assert_eq!(c.runtime, RuntimeKind::Process);
        assert!(c.runtime_named);
        let flags = FlagOverrides {
            data_dir: Some("from-flag".into()),
            runtime: Some(RuntimeKind::Docker),
            ..Default::default()
        };
        let c = load(Some(file), &[("NANOCLAW_DATA_DIR", "from-env")], flags).unwrap();
        assert!(c.data_dir.ends_with("from-flag"));
        assert_eq!(c.runtime, RuntimeKind::Docker);
    }

    #[test]
    fn disk_and_descriptor_limits_have_defaults_and_follow_file_then_env() {
        let c = load(None, &[], FlagOverrides::default()).unwrap();
        assert_eq!(
            (c.container.workspace_max_mb, c.container.outbound_max_mb, c.min_free_mb, c.container.nofile),
            (1024, 256, 512, 1024)
        );
        let file = "[container]\nworkspace_max_mb = 10\noutbound_max_mb = 20\nnofile = 4096\n[service]\nmin_free_mb = 0\n";
        let c = load(Some(file), &[], FlagOverrides::default()).unwrap();
        assert_eq!(
            (c.container.workspace_max_mb, c.container.outbound_max_mb, c.min_free_mb, c.container.nofile),
            (10, 20, 0, 4096)
        );
        let env = [
            ("NANOCLAW_CONTAINER_WORKSPACE_MAX_MB", "11"),
            ("NANOCLAW_CONTAINER_OUTBOUND_MAX_MB", "21"),
            ("NANOCLAW_MIN_FREE_MB", "1"),
            ("NANOCLAW_CONTAINER_NOFILE", "2048"),
        ];
        let c = load(Some(file), &env, FlagOverrides::default()).unwrap();
        assert_eq!(
            (c.container.workspace_max_mb, c.container.outbound_max_mb, c.min_free_mb, c.container.nofile),
            (11, 21, 1, 2048)
        );
        for (text, key) in [
            ("[container]\nworkspace_max_mb = 0\n", "container.workspace_max_mb"),
            ("[container]\noutbound_max_mb = 0\n", "container.outbound_max_mb"),
            ("[container]\nnofile = 8\n", "container.nofile"),
            ("[service]\nmin_free_mb = 99999999\n", "service.min_free_mb"),
            ("[service]\nmin_free_mb = -1\n", "service.min_free_mb"),
        ] {
            let e = load(Some(text), &[], FlagOverrides::default()).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(!e.to_string().contains('\n'));
        }
        let e = load(None, &[("NANOCLAW_MIN_FREE_MB", "lots")], FlagOverrides::default()).unwrap_err();
        assert_eq!(e.key, "NANOCLAW_MIN_FREE_MB");
    }

    #[test]
    fn errors_name_the_key() {
        let e = load(Some("[container]\nmemory_mb = \"lots\"\n"), &[], FlagOverrides::default()).unwrap_err();
        assert_eq!(e.key, "container.memory_mb");
        assert!(!e.to_string().contains('\n'));
        let e = load(Some("[container]\nmemroy_mb = 5\n"), &[], FlagOverrides::default()).unwrap_err();
        assert!(e.problem.contains("memroy_mb"), "{e}");
        let e = load(Some("runtime = \"vm\"\n"), &[], FlagOverrides::default()).unwrap_err();
        assert_eq!(e.key, "runtime");
        let e = load(Some("[container]\npids_limit = 0\n"), &[], FlagOverrides::default()).unwrap_err();
        assert_eq!(e.key, "container.pids_limit");
        let e = load(None, &[("NANOCLAW_CONTAINER_CPUS", "many")], FlagOverrides::default()).unwrap_err();
        assert_eq!(e.key, "NANOCLAW_CONTAINER_CPUS");
        let e = load(None, &[("NANOCLAW_RUNTIME", "podman")], FlagOverrides::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config error: environment: NANOCLAW_RUNTIME: \"podman\" is not one of docker, process"
        );
        let e = load(Some("this is not toml"), &[], FlagOverrides::default()).unwrap_err();
        assert_eq!(e.key, "(syntax)");
    }
    #[test]
    fn the_standard_image_source_is_configurable_and_checked() {
        let c = load(
            Some("[container]\ndebian_suite = \"trixie\"\ndebian_mirror = \"http://ftp.de.debian.org/debian\"\n"),
            &[],
            FlagOverrides::default(),
        )
        .unwrap();
        assert_eq!(c.container.debian_suite.as_deref(), Some("trixie"));
        assert_eq!(c.container.debian_mirror.as_deref(), Some("http://ftp.de.debian.org/debian"));
        assert_eq!(load(None, &[], FlagOverrides::default()).unwrap().container.debian_suite, None, "host's");
        let e =
            load(Some("[container]\ndebian_suite = \"a b\"\n"), &[], FlagOverrides::default()).unwrap_err();
        assert_eq!(e.key, "container.debian_suite");
        let e = load(Some("[container]\ndebian_mirror = \"--foreign\"\n"), &[], FlagOverrides::default())
            .unwrap_err();
        assert_eq!(e.key, "container.debian_mirror");
    }
}
