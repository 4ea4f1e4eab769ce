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
//! skills_dir = "…"             # NANOCLAW_SKILLS_DIR (default: skills/ beside this program, else the
//!                              # source tree's container/skills; mounted read-only at /skills)
//! nofile     = 1024            # NANOCLAW_CONTAINER_NOFILE (open-file limit, soft = hard)
//! workspace_max_mb = 1024      # NANOCLAW_CONTAINER_WORKSPACE_MAX_MB (a session's workspace/)
//! outbound_max_mb  = 256       # NANOCLAW_CONTAINER_OUTBOUND_MAX_MB (largest outbound.db read)
//!
//! [service]
//! retry_backoff_ms = 5000      # NANOCLAW_RETRY_BACKOFF_MS: base of the retry backoff after a
//!                              # container died mid-turn (5 s × 2^n, reference §1.10)
//! min_free_mb = 512            # NANOCLAW_MIN_FREE_MB: under this much free space on the data
//!                              # dir's filesystem no new work is accepted (0: no floor)
//!
//! [agent]
//! provider = "echo"            # NANOCLAW_PROVIDER, --provider (serve, chat): the default agent's
//!                              # provider: echo, anthropic, openai or a [providers.<name>] table
//! max_tool_rounds = 32         # model calls per turn
//! timezone = "UTC"             # IANA time zone for the agent's prompt
//!
//! [routing]
//! unknown_sender_policy = "request_approval" # chats created by a mention or DM: strict |
//!                              # request_approval | public
//! dedupe_retention_days = 7    # how long platform message ids are kept to drop repeats
//! max_agent_hops = 8           # agent-to-agent messages in a row before the chain is stopped
//! max_inbound_bytes = 262144   # longer texts are cut; the full text goes to the session inbox
//!
//! [routing.commands]
//! filtered   = ["/login", "/logout", "/config"]            # dropped and recorded
//! admin_only = ["/clear", "/compact", "/cost", "/context"] # owner or admin of the group only
//!
//! [approvals]
//! ttl_seconds = 3600           # how long a request waits for a person's decision
//!
//! [approvals.ttl_seconds_by_action]
//! create_agent = 86400         # per action (`sender` and `channel` for the routing requests)
//!
//! [providers]
//! daily_token_budget = 1000000 # optional: tokens per agent group and day (UTC) through the proxy
//!
//! [providers.local]            # any name; `anthropic` and `openai` exist without a table
//! kind = "openai"              # openai | anthropic | command | echo
//! base_url = "http://127.0.0.1:8080/v1"
//! model = "smollm2"
//! api_key_env = "LOCAL_KEY"    # the NAME of a host variable; its value never enters a container
//! context_tokens = 8192
//! max_output_tokens = 4096
//! temperature = 0.0
//! ```
//!
//! The file is `--config PATH`, else `$NANOCLAW_CONFIG`, else `./nanoclaw.toml` when it exists;
//! with none, built-in defaults apply.

use nanoclaw_actors::approvals::ApprovalsConfig;
use nanoclaw_actors::router::RoutingConfig;
use nanoclaw_actors::store::UnknownSenderPolicy;
use nanoclaw_protocol::settings::{DEFAULT_MAX_TOOL_ROUNDS, MaxTokensField, ProviderKind};
use serde::Deserialize;
use std::collections::BTreeMap;
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
    /// The skills folder (`<name>/SKILL.md` each); `None`: looked for beside the binary, then in
    /// the source tree ([`crate::runtime::locate_skills_dir`]).
    pub skills_dir: Option<PathBuf>,
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

/// One model provider (`[providers.<name>]`, or a built-in one). Holds the NAME of the variable
/// with the key, never the key: the proxy reads the value once at start.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// Its name (the table key; `/<name>/…` on the proxy socket).
    pub name: String,
    /// The protocol it speaks.
    pub kind: ProviderKind,
    /// Base URL of its API as written (checked when a group uses it: a bad one stops only the
    /// groups using this provider). `None` for `echo` and `command`.
    pub base_url: Option<String>,
    /// Default model id (a group's `container_configs.model` overrides it).
    pub model: Option<String>,
    /// Name of the host environment variable holding its API key (`None`: no key is sent).
    pub api_key_env: Option<String>,
    /// Context window in tokens.
    pub context_tokens: u32,
    /// Most tokens per answer.
    pub max_output_tokens: u32,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Program and arguments for `kind = "command"` (run inside the container).
    pub command: Vec<String>,
    /// For `kind = "openai"`: the request field of the answer's token limit
    /// (`max_tokens_field`; default `max_completion_tokens` for `api.openai.com`, `max_tokens`
    /// for every other server; see [`MaxTokensField`]).
    pub max_tokens_field: MaxTokensField,
}

impl ProviderConfig {
    /// The built-in provider of `name` (`anthropic`, `openai`, `echo`), if it is one.
    pub fn builtin(name: &str) -> Option<ProviderConfig> {
        let (kind, base_url, env, context_tokens) = match name {
            "anthropic" => (
                ProviderKind::Anthropic,
                Some("https://api.anthropic.com"),
                Some("ANTHROPIC_API_KEY"),
                200_000,
            ),
            "openai" => {
                (ProviderKind::Openai, Some("https://api.openai.com/v1"), Some("OPENAI_API_KEY"), 128_000)
            }
            "echo" => (ProviderKind::Echo, None, None, 100_000),
            _ => return None,
        };
        let model = match name {
            "anthropic" => Some("claude-sonnet-4-5".to_string()),
            "openai" => Some("gpt-4o".to_string()),
            _ => None,
        };
        Some(ProviderConfig {
            name: name.into(),
            kind,
            base_url: base_url.map(Into::into),
            model,
            api_key_env: env.map(Into::into),
            context_tokens,
            max_output_tokens: 4096,
            temperature: None,
            command: vec![],
            max_tokens_field: default_max_tokens_field(base_url),
        })
    }
}

/// The token-limit field an `openai` provider at `base_url` reads by default: OpenAI's own API
/// wants `max_completion_tokens` (its reasoning models refuse `max_tokens`); compatible servers
/// read only `max_tokens`.
pub fn default_max_tokens_field(base_url: Option<&str>) -> MaxTokensField {
    let host =
        base_url.and_then(|u| reqwest::Url::parse(u).ok()).and_then(|u| u.host_str().map(str::to_owned));
    if host.as_deref() == Some("api.openai.com") {
        MaxTokensField::MaxCompletionTokens
    } else {
        MaxTokensField::MaxTokens
    }
}

/// `[providers]`: the configured providers (built-ins included) and the token budget.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvidersConfig {
    /// Every provider by name: `echo`, `anthropic`, `openai` and each `[providers.<name>]` table
    /// (a table named like a built-in overrides its fields).
    pub by_name: BTreeMap<String, ProviderConfig>,
    /// Tokens (input + output) one agent group may use per UTC day; `None`: no budget.
    pub daily_token_budget: Option<u64>,
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        let by_name = ["anthropic", "echo", "openai"]
            .into_iter()
            .filter_map(ProviderConfig::builtin)
            .map(|p| (p.name.clone(), p))
            .collect();
        ProvidersConfig { by_name, daily_token_budget: None }
    }
}

/// `[agent]`: defaults of every agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Provider of groups whose container config names none (the default agent's provider).
    pub provider: String,
    /// Model calls per turn at most.
    pub max_tool_rounds: u32,
    /// IANA time zone for the prompt's local time.
    pub timezone: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            provider: "echo".into(),
            max_tool_rounds: DEFAULT_MAX_TOOL_ROUNDS,
            timezone: "UTC".into(),
        }
    }
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
    /// Agent defaults.
    pub agent: AgentConfig,
    /// Routing and permissions (`[routing]`).
    pub routing: RoutingConfig,
    /// Approvals (`[approvals]`).
    pub approvals: ApprovalsConfig,
    /// Model providers.
    pub providers: ProvidersConfig,
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
    #[serde(default)]
    agent: FileAgent,
    #[serde(default)]
    routing: FileRouting,
    #[serde(default)]
    approvals: FileApprovals,
    /// Checked by hand: `daily_token_budget` beside the `<name>` tables.
    #[serde(default)]
    providers: toml::Table,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRouting {
    unknown_sender_policy: Option<String>,
    dedupe_retention_days: Option<u64>,
    max_agent_hops: Option<u32>,
    max_inbound_bytes: Option<usize>,
    #[serde(default)]
    commands: FileCommands,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApprovals {
    ttl_seconds: Option<u64>,
    #[serde(default)]
    ttl_seconds_by_action: std::collections::BTreeMap<String, u64>,
}

/// Longest lifetime of a request: 30 days.
const MAX_APPROVAL_TTL_S: u64 = 30 * 24 * 3600;

/// `[approvals]` of the file over the defaults of [`ApprovalsConfig`]; errors name the key.
fn parse_approvals(src: &str, file: FileApprovals) -> Result<ApprovalsConfig, ConfigError> {
    let bad = |key: String, problem: String| ConfigError { source_name: src.into(), key, problem };
    let seconds = |key: String, s: u64| {
        if (1..=MAX_APPROVAL_TTL_S).contains(&s) {
            Ok(std::time::Duration::from_secs(s))
        } else {
            Err(bad(key, format!("{s} not in 1..={MAX_APPROVAL_TTL_S} seconds")))
        }
    };
    let mut out = ApprovalsConfig::default();
    if let Some(s) = file.ttl_seconds {
        out.ttl = seconds("approvals.ttl_seconds".into(), s)?;
    }
    for (action, s) in file.ttl_seconds_by_action {
        let key = format!("approvals.ttl_seconds_by_action.{action}");
        if action.is_empty() || !action.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(bad(key, "not an action name (a-z and _)".into()));
        }
        let ttl = seconds(key, s)?;
        out.ttl_by_action.insert(action, ttl);
    }
    Ok(out)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCommands {
    filtered: Option<Vec<String>>,
    admin_only: Option<Vec<String>>,
}

/// `[routing]` of the file over the defaults of [`RoutingConfig`]; errors name the key.
fn parse_routing(src: &str, file: FileRouting) -> Result<RoutingConfig, ConfigError> {
    let bad = |key: &str, problem: String| ConfigError { source_name: src.into(), key: key.into(), problem };
    let mut out = RoutingConfig::default();
    if let Some(p) = file.unknown_sender_policy {
        out.default_unknown_sender_policy =
            UnknownSenderPolicy::parse(&p).map_err(|e| bad("routing.unknown_sender_policy", e))?;
    }
    if let Some(days) = file.dedupe_retention_days {
        if !(1..=3650).contains(&days) {
            return Err(bad("routing.dedupe_retention_days", format!("{days} not in 1..=3650")));
        }
        out.dedupe_retention = std::time::Duration::from_secs(days * 24 * 3600);
    }
    if let Some(hops) = file.max_agent_hops {
        if !(1..=100).contains(&hops) {
            return Err(bad("routing.max_agent_hops", format!("{hops} not in 1..=100")));
        }
        out.max_agent_hops = hops;
    }
    if let Some(bytes) = file.max_inbound_bytes {
        if !(1024..=16 * 1024 * 1024).contains(&bytes) {
            return Err(bad("routing.max_inbound_bytes", format!("{bytes} not in 1024..=16777216")));
        }
        out.max_inbound_bytes = bytes;
    }
    for (key, list, target) in [
        ("routing.commands.filtered", file.commands.filtered, &mut out.filtered_commands),
        ("routing.commands.admin_only", file.commands.admin_only, &mut out.admin_only_commands),
    ] {
        if let Some(list) = list {
            for c in &list {
                let ok = c.len() >= 2
                    && c.len() <= 64
                    && c.starts_with('/')
                    && c[1..]
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
                if !ok {
                    return Err(bad(
                        key,
                        format!("{c:?} is not a command like \"/clear\" (lowercase, one word)"),
                    ));
                }
            }
            *target = list;
        }
    }
    Ok(out)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAgent {
    provider: Option<String>,
    max_tool_rounds: Option<u32>,
    timezone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvider {
    kind: Option<String>,
    base_url: Option<String>,
    model: Option<String>,
    api_key_env: Option<String>,
    context_tokens: Option<u32>,
    max_output_tokens: Option<u32>,
    temperature: Option<f32>,
    command: Option<Vec<String>>,
    max_tokens_field: Option<String>,
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
    skills_dir: Option<PathBuf>,
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
    /// `--provider` (of `serve` and `chat`).
    pub provider: Option<String>,
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

/// A valid provider name: `[a-z0-9_-]`, 1..=32 bytes, starting with a letter or digit (it is a
/// path segment on the proxy socket, where `_egress` is taken).
fn provider_name_ok(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A valid environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, ≤ 128 bytes.
fn env_name_ok(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `[providers]` of the file: the budget and each table over its built-in (if any).
fn parse_providers(src: &str, table: toml::Table) -> Result<ProvidersConfig, ConfigError> {
    let bad = |key: String, problem: String| ConfigError { source_name: src.into(), key, problem };
    let mut out = ProvidersConfig::default();
    for (name, value) in table {
        if name == "daily_token_budget" {
            let budget = value.as_integer().filter(|n| *n > 0).ok_or_else(|| {
                bad("providers.daily_token_budget".into(), format!("{value} is not a whole number > 0"))
            })?;
            out.daily_token_budget = Some(budget as u64);
            continue;
        }
        let key = format!("providers.{name}");
        if !provider_name_ok(&name) {
            return Err(bad(
                key,
                "a provider name is 1-32 of a-z 0-9 _ - (starting with a letter or digit)".into(),
            ));
        }
        let toml::Value::Table(t) = value else {
            return Err(bad(key, "must be a table".into()));
        };
        let file: FileProvider = serde_path_to_error::deserialize(toml::Value::Table(t)).map_err(|e| {
            let path = e.path().to_string();
            let key = if path == "." { key.clone() } else { format!("{key}.{path}") };
            bad(key, first_line(&e.inner().to_string()))
        })?;
        let kind = match file.kind.as_deref() {
            Some(k) => ProviderKind::parse(k).ok_or_else(|| {
                bad(format!("{key}.kind"), format!("{k:?} is not one of openai, anthropic, command, echo"))
            })?,
            None => match ProviderConfig::builtin(&name) {
                Some(b) => b.kind,
                None => {
                    return Err(bad(
                        format!("{key}.kind"),
                        "missing (openai, anthropic, command or echo)".into(),
                    ));
                }
            },
        };
        let base = ProviderConfig::builtin(&name).filter(|b| b.kind == kind);
        let http = matches!(kind, ProviderKind::Openai | ProviderKind::Anthropic);
        let base_url = file.base_url.or_else(|| base.as_ref().and_then(|b| b.base_url.clone()));
        if http && base_url.is_none() {
            return Err(bad(
                format!("{key}.base_url"),
                format!("missing (the {} API's base URL)", kind.as_str()),
            ));
        }
        if let Some(env) = &file.api_key_env
            && !env_name_ok(env)
        {
            return Err(bad(
                format!("{key}.api_key_env"),
                format!("{env:?} is not a variable name (give the NAME of the variable, not the key)"),
            ));
        }
        // A local server defaults to a small context; hosted ones to theirs.
        let context_tokens =
            file.context_tokens.or(base.as_ref().map(|b| b.context_tokens)).unwrap_or(match kind {
                ProviderKind::Anthropic => 200_000,
                ProviderKind::Openai => 8192,
                _ => 100_000,
            });
        if !(1024..=10_000_000).contains(&context_tokens) {
            return Err(bad(
                format!("{key}.context_tokens"),
                format!("{context_tokens} not in 1024..=10000000"),
            ));
        }
        let max_output_tokens = file.max_output_tokens.unwrap_or(4096);
        if !(1..=context_tokens).contains(&max_output_tokens) {
            return Err(bad(
                format!("{key}.max_output_tokens"),
                format!("{max_output_tokens} not in 1..={context_tokens} (context_tokens)"),
            ));
        }
        if let Some(t) = file.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(bad(format!("{key}.temperature"), format!("{t} not in 0..=2")));
        }
        let command = file.command.unwrap_or_default();
        if kind == ProviderKind::Command && command.is_empty() {
            return Err(bad(format!("{key}.command"), "missing (the program and its arguments)".into()));
        }
        let max_tokens_field = match file.max_tokens_field.as_deref() {
            None => default_max_tokens_field(base_url.as_deref()),
            Some(f) => MaxTokensField::parse(f).ok_or_else(|| {
                bad(
                    format!("{key}.max_tokens_field"),
                    format!("{f:?} is not max_tokens or max_completion_tokens"),
                )
            })?,
        };
        let provider = ProviderConfig {
            name: name.clone(),
            kind,
            base_url: if http { base_url } else { None },
            model: file.model.or_else(|| base.as_ref().and_then(|b| b.model.clone())),
            api_key_env: file.api_key_env.or_else(|| base.as_ref().and_then(|b| b.api_key_env.clone())),
            context_tokens,
            max_output_tokens,
            temperature: file.temperature,
            command,
            max_tokens_field,
        };
        out.by_name.insert(name, provider);
    }
    Ok(out)
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
        let src = path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "defaults".into());
        let providers = parse_providers(&src, file.providers)?;
        let routing = parse_routing(&src, file.routing)?;
        let approvals = parse_approvals(&src, file.approvals)?;
        let (provider, provider_from) = if let Some(p) = flags.provider.clone() {
            (p, ("flag".to_string(), "--provider".to_string()))
        } else if let Some(p) = get("NANOCLAW_PROVIDER").filter(|v| !v.is_empty()) {
            (p, ("environment".to_string(), "NANOCLAW_PROVIDER".to_string()))
        } else {
            (
                file.agent.provider.unwrap_or_else(|| "echo".into()),
                (src.clone(), "agent.provider".to_string()),
            )
        };
        if !providers.by_name.contains_key(&provider) {
            let known: Vec<&str> = providers.by_name.keys().map(String::as_str).collect();
            return Err(ConfigError {
                source_name: provider_from.0,
                key: provider_from.1,
                problem: format!(
                    "no provider {provider:?} (known: {}; add a [providers.{provider}] table)",
                    known.join(", ")
                ),
            });
        }
        let agent = AgentConfig {
            provider,
            max_tool_rounds: file.agent.max_tool_rounds.unwrap_or(DEFAULT_MAX_TOOL_ROUNDS),
            timezone: file.agent.timezone.unwrap_or_else(|| "UTC".into()),
        };
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
                skills_dir: get("NANOCLAW_SKILLS_DIR").map(PathBuf::from).or(file.container.skills_dir),
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
            agent,
            routing,
            approvals,
            providers,
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
        if let Some(dir) = self.container.skills_dir.as_deref().filter(|d| !d.is_dir()) {
            return Err(bad("container.skills_dir", format!("{} is not a directory", dir.display())));
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
        if !(1..=1000).contains(&self.agent.max_tool_rounds) {
            return Err(bad(
                "agent.max_tool_rounds",
                format!("{} not in 1..=1000", self.agent.max_tool_rounds),
            ));
        }
        let tz = &self.agent.timezone;
        let tz_ok = (1..=64).contains(&tz.len())
            && tz.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+'));
        if !tz_ok {
            return Err(bad("agent.timezone", format!("{tz:?} is not an IANA time zone name")));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return Err(bad("log.level", format!("{:?} is not a log filter", self.log_level)));
        }
        // Sockets live in the data dir; Unix socket paths are limited to 107 bytes.
        let longest = self.data_dir.join("sessions/x/sess-0000000000-000000/host/proxy.sock");
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
    fn routing_and_approval_keys_have_defaults_and_bad_values_name_the_key() {
        let c = load(None, &[], FlagOverrides::default()).unwrap();
        assert_eq!(c.routing, RoutingConfig::default());
        assert_eq!(c.routing.default_unknown_sender_policy, UnknownSenderPolicy::RequestApproval);
        let file = "[routing]\nunknown_sender_policy = \"strict\"\nmax_agent_hops = 3\nmax_inbound_bytes = 4096\n\
                    [routing.commands]\nfiltered = [\"/secret\"]\n";
        let c = load(Some(file), &[], FlagOverrides::default()).unwrap();
        assert_eq!(c.routing.default_unknown_sender_policy, UnknownSenderPolicy::Strict);
        assert_eq!((c.routing.max_agent_hops, c.routing.max_inbound_bytes), (3, 4096));
        assert_eq!(c.routing.filtered_commands, vec!["/secret".to_string()]);
        assert_eq!(c.routing.admin_only_commands, RoutingConfig::default().admin_only_commands);
        let c = load(
            Some("[approvals]\nttl_seconds = 5\n[approvals.ttl_seconds_by_action]\ncreate_agent = 9\n"),
            &[],
            FlagOverrides::default(),
        )
        .unwrap();
        assert_eq!(c.approvals.ttl_of("add_mcp_server"), std::time::Duration::from_secs(5));
        assert_eq!(c.approvals.ttl_of("create_agent"), std::time::Duration::from_secs(9));
        for (file, key) in [
            ("[routing]\nunknown_sender_policy = \"open\"\n", "routing.unknown_sender_policy"),
            ("[routing]\nmax_agent_hops = 0\n", "routing.max_agent_hops"),
            ("[routing]\ndedupe_retention_days = 0\n", "routing.dedupe_retention_days"),
            ("[routing.commands]\nadmin_only = [\"clear\"]\n", "routing.commands.admin_only"),
            ("[routing]\nmax_inbound_bytes = 10\n", "routing.max_inbound_bytes"),
            ("[routing]\nengage = 1\n", "routing"),
            ("[approvals]\nttl_seconds = 0\n", "approvals.ttl_seconds"),
            (
                "[approvals.ttl_seconds_by_action]\ncreate_agent = 9999999999\n",
                "approvals.ttl_seconds_by_action.create_agent",
            ),
            (
                "[approvals.ttl_seconds_by_action]\n\"Bad-Name\" = 5\n",
                "approvals.ttl_seconds_by_action.Bad-Name",
            ),
        ] {
            let e = load(Some(file), &[], FlagOverrides::default()).unwrap_err();
            assert!(e.key.starts_with(key), "{file:?}: {e}");
        }
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
    fn skills_dir_must_be_a_directory_and_is_found_in_the_source_tree() {
        let c = load(Some("[container]\nskills_dir = \"/\"\n"), &[], FlagOverrides::default()).unwrap();
        assert_eq!(c.container.skills_dir.as_deref(), Some(Path::new("/")));
        let e = load(None, &[("NANOCLAW_SKILLS_DIR", "/nonexistent/skills")], FlagOverrides::default())
            .unwrap_err();
        assert_eq!(e.key, "container.skills_dir", "{e}");
        // Unset: a build from source finds container/skills.
        let found = crate::runtime::locate_skills_dir(None).unwrap();
        assert!(found.ends_with("container/skills") && found.join("memory/SKILL.md").is_file(), "{found:?}");
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

    #[test]
    fn providers_have_builtins_tables_and_a_default() {
        let c = load(None, &[], FlagOverrides::default()).unwrap();
        assert_eq!(c.agent.provider, "echo");
        assert_eq!(c.agent.max_tool_rounds, 32);
        let a = &c.providers.by_name["anthropic"];
        assert_eq!(
            (a.kind, a.base_url.as_deref(), a.api_key_env.as_deref()),
            (ProviderKind::Anthropic, Some("https://api.anthropic.com"), Some("ANTHROPIC_API_KEY"))
        );
        let o = &c.providers.by_name["openai"];
        assert_eq!(o.base_url.as_deref(), Some("https://api.openai.com/v1"));
        assert_eq!(o.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
        let file = "[agent]\nprovider = \"local\"\nmax_tool_rounds = 5\n[providers]\ndaily_token_budget = 1000\n\
                    [providers.local]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:8080/v1\"\nmodel = \"smollm2\"\n\
                    temperature = 0.0\n[providers.anthropic]\nmodel = \"claude-x\"\n";
        let c = load(Some(file), &[], FlagOverrides::default()).unwrap();
        assert_eq!((c.agent.provider.as_str(), c.agent.max_tool_rounds), ("local", 5));
        assert_eq!(c.providers.daily_token_budget, Some(1000));
        let l = &c.providers.by_name["local"];
        assert_eq!(
            (l.kind, l.model.as_deref(), l.context_tokens, l.api_key_env.as_deref()),
            (ProviderKind::Openai, Some("smollm2"), 8192, None)
        );
        let a = &c.providers.by_name["anthropic"];
        assert_eq!(
            (a.model.as_deref(), a.api_key_env.as_deref()),
            (Some("claude-x"), Some("ANTHROPIC_API_KEY"))
        );
        // Environment over file, flag over environment.
        let c = load(Some(file), &[("NANOCLAW_PROVIDER", "openai")], FlagOverrides::default()).unwrap();
        assert_eq!(c.agent.provider, "openai");
        let flags = FlagOverrides { provider: Some("anthropic".into()), ..Default::default() };
        let c = load(Some(file), &[("NANOCLAW_PROVIDER", "openai")], flags).unwrap();
        assert_eq!(c.agent.provider, "anthropic");
    }

    #[test]
    fn the_token_limit_field_follows_the_server_unless_set() {
        let file = "[providers.local]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:8080/v1\"\n\
                    [providers.proxied]\nkind = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\n\
                    [providers.vllm]\nkind = \"openai\"\nbase_url = \"http://gpu:8000/v1\"\n\
                    max_tokens_field = \"max_completion_tokens\"\n";
        let c = load(Some(file), &[], FlagOverrides::default()).unwrap();
        let field = |n: &str| c.providers.by_name[n].max_tokens_field;
        // OpenAI's own API (built in, or a table at its URL): the current field.
        assert_eq!(field("openai"), MaxTokensField::MaxCompletionTokens);
        assert_eq!(field("proxied"), MaxTokensField::MaxCompletionTokens);
        // Any other server: the field compatible servers read; or what the table says.
        assert_eq!(field("local"), MaxTokensField::MaxTokens);
        assert_eq!(field("vllm"), MaxTokensField::MaxCompletionTokens);
        let e = load(
            Some("[providers.local]\nkind = \"openai\"\nbase_url = \"http://x/v1\"\nmax_tokens_field = \"limit\"\n"),
            &[],
            FlagOverrides::default(),
        )
        .unwrap_err();
        assert_eq!(e.key, "providers.local.max_tokens_field");
    }

    #[test]
    fn provider_errors_name_the_key() {
        for (text, key) in [
            ("[providers.local]\nbase_url = \"http://x/v1\"\n", "providers.local.kind"),
            ("[providers.local]\nkind = \"gpt\"\nbase_url = \"http://x\"\n", "providers.local.kind"),
            ("[providers.local]\nkind = \"openai\"\n", "providers.local.base_url"),
            (
                "[providers.local]\nkind = \"openai\"\nbase_url = \"http://x\"\nmodle = \"m\"\n",
                "providers.local",
            ),
            ("[providers.local]\nkind = \"openai\"\nbase_url = 5\n", "providers.local.base_url"),
            (
                "[providers.local]\nkind = \"openai\"\nbase_url = \"http://x\"\napi_key_env = \"sk-123 abc\"\n",
                "providers.local.api_key_env",
            ),
            (
                "[providers.local]\nkind = \"openai\"\nbase_url = \"http://x\"\ntemperature = 7.0\n",
                "providers.local.temperature",
            ),
            ("[providers.local]\nkind = \"command\"\n", "providers.local.command"),
            ("[providers.Bad]\nkind = \"echo\"\n", "providers.Bad"),
            ("[providers]\ndaily_token_budget = -3\n", "providers.daily_token_budget"),
            ("[agent]\nprovider = \"nope\"\n", "agent.provider"),
            ("[agent]\nmax_tool_rounds = 0\n", "agent.max_tool_rounds"),
        ] {
            let e = load(Some(text), &[], FlagOverrides::default()).unwrap_err();
            assert!(e.key.starts_with(key), "{text}: {e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        let e = load(None, &[("NANOCLAW_PROVIDER", "nope")], FlagOverrides::default()).unwrap_err();
        assert_eq!(e.key, "NANOCLAW_PROVIDER");
        let flags = FlagOverrides { provider: Some("local".into()), ..Default::default() };
        let e = load(None, &[], flags).unwrap_err();
        assert_eq!(e.key, "--provider");
        assert!(e.problem.contains("[providers.local]"), "{e}");
    }
}
