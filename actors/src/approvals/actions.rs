//! The agent actions behind an approval: their checks on the host (every field again — the
//! container is untrusted — before any card), their payloads, and what an approval carries out.
//!
//! | action | payload `args` | on approval |
//! |---|---|---|
//! | `add_mcp_server` | `name`, `command`, every `args` and `env` entry | the server is added to `container_configs.mcp_servers`; the agent's container restarts with it |
//! | `create_agent` | `name`, `instructions` | a child agent group with destinations both ways |
//! | `install_packages` | `apt` names, `reason`; `pinned`: the exact versions, resolved before the card | the group's image is built with exactly those versions; then `packages_apt` and `image_tag` change and the container restarts on it |
//! | `request_rebuild` | `reason` | the group's image is built again from its approved packages; the container restarts |
//! | `ask_user_question` | `title`, `question`, `options`, `timeout_s` | (a question: the answer is the tool's result) |
//!
//! npm packages are refused up front: the images have no npm, and their builds reach only
//! Debian's mirror.

use super::actor::ApprovalDeps;
use crate::ports::runtime::{PinnedPackage, debian_name_ok};
use crate::store::{self, Approval, ApprovalKind, CardAddress, NewApproval, Origin, Question, SessionInfo};
use nanoclaw_protocol::content::SystemAction;
use nanoclaw_protocol::validate::MAX_PACKAGES;
use std::time::Duration;

/// Largest canonical payload of a request, bytes (64 KiB).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Most arguments of an MCP server.
pub const MAX_MCP_ARGS: usize = 64;
/// Most environment entries of an MCP server.
pub const MAX_MCP_ENV: usize = 64;
/// Longest argument, environment value or command, bytes.
pub const MAX_MCP_VALUE_BYTES: usize = 4096;
/// Longest instructions of a new agent, bytes.
pub const MAX_INSTRUCTIONS_BYTES: usize = 64 * 1024;
/// Longest `reason` of a request, bytes.
pub const MAX_REASON_BYTES: usize = 1000;

/// The actions that go through an approval (or, for a question, a card to the chat).
pub fn needs_approval(action: &SystemAction) -> bool {
    matches!(
        action,
        SystemAction::AddMcpServer { .. }
            | SystemAction::CreateAgent { .. }
            | SystemAction::AskUserQuestion { .. }
            | SystemAction::InstallPackages { .. }
            | SystemAction::RequestRebuild { .. }
    )
}

/// An agent's system action, as the session outbox hands it over.
#[derive(Debug, Clone)]
pub struct ActionRequest {
    /// The requesting session.
    pub session: SessionInfo,
    /// The `messages_out` id of the action row.
    pub row_id: String,
    /// The action (validated by the protocol's row checks; checked again here).
    pub action: SystemAction,
    /// The chat and sender whose turn caused it.
    pub origin: Origin,
    /// Its lifetime ([`super::ApprovalsConfig::ttl_of`]); a question's own `timeout_s` wins.
    pub ttl: Duration,
    /// The generation of the container that wrote the row (a question's answer goes to its
    /// waiting tool only while that container lives).
    pub generation: i64,
}

/// What [`prepare`] makes of a request: the row to store and, for a question, its text.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The approval row.
    pub approval: NewApproval,
    /// The question's part (its id is filled in once the row has one).
    pub question: Option<Question>,
}

fn no_control(field: &str, v: &str, max: usize) -> Result<(), String> {
    if v.is_empty() || v.len() > max || v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(format!("{field}: 1-{max} bytes without control characters"));
    }
    Ok(())
}

/// An MCP server name: 1-64 of `[a-z0-9_-]`, starting with a letter or digit (never a path: no
/// `/`, no `.`).
pub fn mcp_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes.
fn env_name_ok(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks every field of `action` again on the host. Errors name the field (`content.<field>`).
pub fn check(action: &SystemAction) -> Result<(), String> {
    match action {
        SystemAction::AddMcpServer { name, command, args, env } => {
            if !mcp_name_ok(name) {
                return Err(format!(
                    "content.name: {:?} is not a server name (1-64 of a-z 0-9 _ -, no / or .)",
                    name.chars().take(80).collect::<String>()
                ));
            }
            no_control("content.command", command, MAX_MCP_VALUE_BYTES)?;
            if args.len() > MAX_MCP_ARGS {
                return Err(format!("content.args: {} arguments; at most {MAX_MCP_ARGS}", args.len()));
            }
            for a in args {
                if a.len() > MAX_MCP_VALUE_BYTES || a.contains('\0') {
                    return Err(format!("content.args: at most {MAX_MCP_VALUE_BYTES} bytes each, no NUL"));
                }
            }
            if env.len() > MAX_MCP_ENV {
                return Err(format!("content.env: {} entries; at most {MAX_MCP_ENV}", env.len()));
            }
            for (k, v) in env {
                if !env_name_ok(k) {
                    return Err(format!("content.env: {k:?} is not a variable name"));
                }
                if v.len() > MAX_MCP_VALUE_BYTES || v.contains('\0') {
                    return Err(format!("content.env.{k}: at most {MAX_MCP_VALUE_BYTES} bytes, no NUL"));
                }
            }
            Ok(())
        }
        SystemAction::CreateAgent { name, instructions } => {
            store::check_agent_name(name).map_err(|e| format!("content.{e}"))?;
            if let Some(i) = instructions
                && (i.len() > MAX_INSTRUCTIONS_BYTES || i.contains('\0'))
            {
                return Err(format!("content.instructions: at most {MAX_INSTRUCTIONS_BYTES} bytes, no NUL"));
            }
            Ok(())
        }
        SystemAction::InstallPackages { apt, npm, reason } => {
            if !npm.is_empty() {
                return Err(
                    "content.npm: this host cannot install npm packages: its images have no npm and their \
                            builds reach only Debian's mirror; ask for Debian packages (apt) instead"
                        .into(),
                );
            }
            if apt.is_empty() || apt.len() > MAX_PACKAGES {
                return Err(format!("content.apt: {} packages; 1 to {MAX_PACKAGES} allowed", apt.len()));
            }
            for (i, name) in apt.iter().enumerate() {
                if !debian_name_ok(name) {
                    return Err(format!(
                        "content.apt[{i}]: {:?} is not a Debian package name (lowercase letters, digits, + - .; \
                         no version, no spaces)",
                        name.chars().take(80).collect::<String>()
                    ));
                }
                if apt[..i].contains(name) {
                    return Err(format!("content.apt[{i}]: {name:?} is given twice"));
                }
            }
            check_reason(reason.as_deref())
        }
        SystemAction::RequestRebuild { reason } => check_reason(reason.as_deref()),
        SystemAction::AskUserQuestion { .. } => Ok(()),
        other => Err(format!("content.action: {} does not go through an approval", other.name())),
    }
}

fn check_reason(reason: Option<&str>) -> Result<(), String> {
    match reason {
        Some(r) if r.len() > MAX_REASON_BYTES || r.contains('\0') => {
            Err(format!("content.reason: at most {MAX_REASON_BYTES} bytes, no NUL"))
        }
        _ => Ok(()),
    }
}

/// Checks the request and builds its row (see the module docs for the payloads).
///
/// Errors: one line naming the field, for the agent.
pub fn prepare(request: &ActionRequest) -> Result<Prepared, String> {
    let action = &request.action;
    check(action)?;
    let session = &request.session;
    let chat = session.platform_id.clone();
    let mut payload = serde_json::json!({
        "action": action.name(),
        "agent": session.agent_group_name,
        "agent_group_id": session.agent_group_id,
        "args": serde_json::to_value(action).map_err(|e| format!("content: {e}"))?,
    });
    if let Some(chat) = &chat {
        payload["chat"] = chat.clone().into();
    }
    if let Some(sender) = &request.origin.sender_id {
        payload["sender"] = sender.clone().into();
    }
    if matches!(action, SystemAction::InstallPackages { .. }) {
        // The exact versions, resolved by the approval's actor before the card goes out.
        payload["pinned"] = serde_json::Value::Null;
    }
    let (kind, ttl, question) = match action {
        SystemAction::AskUserQuestion { title, question, options, timeout_s } => {
            let (Some(channel_type), Some(platform_id)) = (session.channel_type.clone(), chat) else {
                return Err("ask_user_question: this session has no chat to ask in".into());
            };
            payload = serde_json::json!({
                "title": title, "question": question, "options": options, "timeout_s": timeout_s,
                "agent": session.agent_group_name,
            });
            let q = Question {
                id: String::new(),
                session_id: session.id.clone(),
                message_out_id: request.row_id.clone(),
                generation: request.generation,
                card: CardAddress {
                    channel_type,
                    platform_id,
                    thread_id: request.origin.thread_id.clone().or_else(|| session.thread_id.clone()),
                },
                title: title.clone(),
                question: question.clone(),
                options: options.clone(),
            };
            (ApprovalKind::Question, Duration::from_secs((*timeout_s).into()), Some(q))
        }
        _ => (ApprovalKind::Action, request.ttl, None),
    };
    let size = store::canonical_json(&payload).len();
    if size > MAX_PAYLOAD_BYTES {
        return Err(format!("content: the request is {size} bytes; at most {MAX_PAYLOAD_BYTES}"));
    }
    Ok(Prepared {
        approval: NewApproval {
            kind,
            action: action.name().to_string(),
            request_id: format!("{}:{}", session.id, request.row_id),
            payload,
            agent_group_id: Some(session.agent_group_id.clone()),
            session_id: Some(session.id.clone()),
            origin: request.origin.clone(),
            ttl,
        },
        question,
    })
}

/// What carrying an approval out gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// The result for people.
    pub message: String,
    /// The agent's container restarts with the note (its configuration changed).
    pub restart: bool,
}

/// Carries out an approved agent action from its payload (whose hash the caller checked).
/// Errors: the reason, for people.
pub async fn carry_out(
    deps: &ApprovalDeps,
    a: &Approval,
    payload: &serde_json::Value,
) -> Result<Done, String> {
    let action: SystemAction = serde_json::from_value(payload["args"].clone())
        .map_err(|e| format!("payload.args: not the action it names: {e}"))?;
    check(&action)?;
    let ag = a.agent_group_id.clone().ok_or("payload: no agent group")?;
    let store = &deps.ctx.store;
    match action {
        SystemAction::AddMcpServer { name, command, args, env } => {
            let spec = nanoclaw_protocol::settings::McpServerSpec { command, args, env, timeout_s: None };
            let n = name.clone();
            store.call(move |c| store::set_mcp_server(c, &ag, &n, &spec)).await.map_err(|e| e.to_string())?;
            Ok(Done {
                message: format!("MCP server {name:?} added; your container restarts with it"),
                restart: true,
            })
        }
        SystemAction::CreateAgent { name, instructions } => {
            let (parent, n) = (ag.clone(), name.clone());
            let created = store
                .call(move |c| store::create_child_agent(c, &parent, &n))
                .await
                .map_err(|e| e.to_string())?;
            if let Some(text) = instructions {
                let dir = deps.ctx.config.data_dir.join("groups").join(&created.folder);
                let file = dir.join(nanoclaw_protocol::layout::MEMORY_FILE);
                let written = tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dir)?;
                    std::fs::write(&file, text)
                })
                .await;
                if !matches!(written, Ok(Ok(()))) {
                    tracing::warn!(agent_group = %created.agent_group_id, "the new agent's instructions were not written");
                }
            }
            deps.router.refresh_destinations(&ag).await;
            Ok(Done {
                message: format!(
                    "agent {name:?} created; write to it with <message to=\"{}\">…</message>",
                    created.name_for_parent
                ),
                restart: false,
            })
        }
        SystemAction::InstallPackages { .. } => {
            let pins: Vec<PinnedPackage> = payload["pinned"]
                .as_array()
                .ok_or("payload.pinned: the versions were never resolved")?
                .iter()
                .map(|p| {
                    p.as_str()
                        .and_then(PinnedPackage::parse)
                        .ok_or(format!("payload.pinned: {p} is not a pin"))
                })
                .collect::<Result<_, _>>()?;
            let a = ag.clone();
            let (approved, _) =
                store.call(move |c| store::group_packages(c, &a)).await.map_err(|e| e.to_string())?;
            let mut all: Vec<PinnedPackage> = approved
                .iter()
                .filter_map(|p| PinnedPackage::parse(p))
                .filter(|old| !pins.iter().any(|new| new.name == old.name))
                .chain(pins.iter().cloned())
                .collect();
            all.sort_by(|a, b| a.name.cmp(&b.name));
            let image = build(deps, &ag, &all).await?;
            let new = pins.iter().map(PinnedPackage::pin).collect::<Vec<_>>().join(", ");
            Ok(Done {
                message: format!(
                    "installed {new} (image {image}); your container restarts on it. Check that they work and tell \
                     the user."
                ),
                restart: true,
            })
        }
        SystemAction::RequestRebuild { .. } => {
            let a = ag.clone();
            let (approved, _) =
                store.call(move |c| store::group_packages(c, &a)).await.map_err(|e| e.to_string())?;
            let all: Vec<PinnedPackage> = approved.iter().filter_map(|p| PinnedPackage::parse(p)).collect();
            if all.is_empty() {
                let a = ag.clone();
                store
                    .call(move |c| store::set_group_image(c, &a, &[], None))
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(Done {
                    message: "no packages were approved for your group: it runs the standard image; your container \
                              restarts"
                        .into(),
                    restart: true,
                });
            }
            let image = build(deps, &ag, &all).await?;
            Ok(Done {
                message: format!("image {image} rebuilt; your container restarts on it"),
                restart: true,
            })
        }
        other => Err(format!("{} is not carried out by an approval", other.name())),
    }
}

/// Builds the group's image with exactly `packages`; the configuration changes only after a good
/// build. Errors: the build's failure with its log tail (nothing changed).
async fn build(deps: &ApprovalDeps, ag: &str, packages: &[PinnedPackage]) -> Result<String, String> {
    let image = deps.ctx.runtime.build_group_image(ag, packages).await.map_err(|f| {
        if f.log_tail.is_empty() {
            format!("{}; nothing changed", f.message)
        } else {
            format!("{}; nothing changed. The build's last lines:\n{}", f.message, f.log_tail)
        }
    })?;
    let (a, pins, i) =
        (ag.to_string(), packages.iter().map(PinnedPackage::pin).collect::<Vec<_>>(), image.clone());
    deps.ctx
        .store
        .call(move |c| store::set_group_image(c, &a, &pins, Some(&i)))
        .await
        .map_err(|e| e.to_string())?;
    Ok(image)
}

/// Resolves an `install_packages` request's names to exact versions before its card, in the
/// group's current image; returns the payload with `pinned`. Errors: unknown names, or why the
/// lookup failed (the request fails with it, before any card).
pub async fn resolve(deps: &ApprovalDeps, a: &Approval) -> Result<serde_json::Value, String> {
    let mut payload = a.payload_value().map_err(|e| e.to_string())?;
    let names: Vec<String> = payload["args"]["apt"]
        .as_array()
        .map(|v| v.iter().filter_map(|n| n.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let ag = a.agent_group_id.clone().ok_or("payload: no agent group")?;
    let (_, image) =
        deps.ctx.store.call(move |c| store::group_packages(c, &ag)).await.map_err(|e| e.to_string())?;
    let pins =
        deps.ctx.runtime.resolve_packages(image.as_deref(), &names).await.map_err(|e| e.to_string())?;
    payload["pinned"] = pins.iter().map(PinnedPackage::pin).collect::<Vec<_>>().into();
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn mcp(name: &str, env: &[(&str, &str)]) -> SystemAction {
        SystemAction::AddMcpServer {
            name: name.into(),
            command: "srv".into(),
            args: vec!["--x".into()],
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn bad_fields_are_refused_naming_the_field() {
        assert!(check(&mcp("github", &[("TOKEN", "x")])).is_ok());
        assert!(check(&mcp("a/b", &[])).unwrap_err().starts_with("content.name:"));
        assert!(check(&mcp("../x", &[])).unwrap_err().starts_with("content.name:"));
        assert!(check(&mcp("ok", &[("1BAD", "x")])).unwrap_err().starts_with("content.env:"));
        let big = "v".repeat(MAX_MCP_VALUE_BYTES + 1);
        assert!(check(&mcp("ok", &[("K", &big)])).unwrap_err().starts_with("content.env.K:"));
        let agent = SystemAction::CreateAgent { name: "x\u{7}".into(), instructions: None };
        assert!(check(&agent).unwrap_err().starts_with("content.name"), "{:?}", check(&agent));
        assert!(check(&SystemAction::ListTasks {}).unwrap_err().starts_with("content.action:"));
    }

    #[test]
    fn install_packages_takes_1_to_20_bare_debian_names_and_no_npm() {
        let install = |apt: Vec<&str>, npm: Vec<&str>| SystemAction::InstallPackages {
            apt: apt.into_iter().map(String::from).collect(),
            npm: npm.into_iter().map(String::from).collect(),
            reason: None,
        };
        assert!(check(&install(vec!["jq", "libc6-dev", "g++"], vec![])).is_ok());
        assert!(check(&install(vec!["vim; curl evil"], vec![])).unwrap_err().starts_with("content.apt[0]:"));
        assert!(check(&install(vec!["jq=1.6"], vec![])).unwrap_err().starts_with("content.apt[0]:"));
        assert!(check(&install(vec!["jq", "jq"], vec![])).unwrap_err().starts_with("content.apt[1]:"));
        let many: Vec<String> = (0..21).map(|i| format!("pkg{i}")).collect();
        let many = SystemAction::InstallPackages { apt: many, npm: vec![], reason: None };
        assert!(check(&many).unwrap_err().starts_with("content.apt: 21 packages"));
        assert!(check(&install(vec![], vec![])).unwrap_err().starts_with("content.apt: 0 packages"));
        assert!(check(&install(vec!["jq"], vec!["left-pad"])).unwrap_err().starts_with("content.npm:"));
    }
}
