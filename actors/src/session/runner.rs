//! `runner.json`: the runner's settings for one container, built by the host before each start.
//!
//! The provider cascades session → group config → `agent.provider` (the gateway's default) →
//! `echo`; the gateway resolves it into the runner's view (no key ever). The JSON columns of the
//! container config are parsed here; one that does not parse stops the session's turns with a
//! line naming the column, like an unusable provider.

use crate::context::ServiceContext;
use crate::store::{RunnerConfigRow, SessionInfo};
use nanoclaw_protocol::settings::{ImageTier, McpServerSpec, ProviderKind, RunnerSettings, ToolSelection};
use std::collections::BTreeMap;
use std::path::Path;

/// The tier a session runs: the one its container config names, else `standard` for a provider
/// other than `echo` (a model needs its tools), else `minimal`.
pub fn effective_tier(explicit: Option<ImageTier>, provider: ProviderKind) -> ImageTier {
    explicit.unwrap_or(if provider == ProviderKind::Echo { ImageTier::Minimal } else { ImageTier::Standard })
}

/// Builds the settings of `session` from its config `row`. Errors are one line naming the key
/// or column to fix.
pub fn settings(
    ctx: &ServiceContext,
    session: &SessionInfo,
    row: &RunnerConfigRow,
) -> Result<RunnerSettings, String> {
    let gateway = &ctx.config.gateway;
    let name = row.provider.clone().unwrap_or_else(|| gateway.default_provider().to_string());
    let mut provider = gateway.resolve(&name).map_err(|e| e.to_string())?;
    if let Some(model) = row.model.as_ref().filter(|m| !m.is_empty()) {
        provider.model = Some(model.clone());
    }
    let explicit =
        match row.image_tier.as_deref() {
            None => None,
            Some(t) => Some(ImageTier::parse(t).ok_or_else(|| {
                format!("container_configs.image_tier: {t:?} is not one of minimal, standard")
            })?),
        };
    // The group's own image is the `standard` image plus its packages.
    let image_tier =
        if row.image_tag.is_some() { ImageTier::Standard } else { effective_tier(explicit, provider.kind) };
    let egress_allow: Vec<String> = serde_json::from_str(&row.egress_allow)
        .map_err(|e| format!("container_configs.egress_allow: not a JSON list of host names: {e}"))?;
    if let Some(bad) = egress_allow.iter().find(|h| !egress_pattern_ok(h)) {
        return Err(format!(
            "container_configs.egress_allow: {bad:?} is not a host name or *.suffix (optionally with :port)"
        ));
    }
    let tools: ToolSelection = serde_json::from_str(&row.tools)
        .map_err(|e| format!("container_configs.tools: not \"all\" or {{\"only\": [names]}}: {e}"))?;
    let mcp_servers: BTreeMap<String, McpServerSpec> =
        serde_json::from_str(&row.mcp_servers).map_err(|e| format!("container_configs.mcp_servers: {e}"))?;
    let skills = match serde_json::from_str::<serde_json::Value>(&row.skills) {
        Ok(serde_json::Value::String(s)) if s == "all" => {
            ctx.config.skills_dir.as_deref().map(shipped_skills).unwrap_or_default()
        }
        Ok(v) => serde_json::from_value::<Vec<String>>(v)
            .map_err(|e| format!("container_configs.skills: not \"all\" or a list of names: {e}"))?,
        Err(e) => return Err(format!("container_configs.skills: {e}")),
    };
    if skills.len() > MAX_SKILLS {
        return Err(format!("container_configs.skills: {} skills; at most {MAX_SKILLS}", skills.len()));
    }
    if let Some(bad) = skills.iter().find(|s| !skill_name_ok(s)) {
        return Err(format!(
            "container_configs.skills: {bad:?} is not a skill folder name (ASCII letters, digits, . _ -; not . or ..)"
        ));
    }
    Ok(RunnerSettings {
        provider,
        image_tier,
        max_tool_rounds: ctx.config.max_tool_rounds,
        tools,
        mcp_servers,
        skills,
        timezone: ctx.config.timezone.clone(),
        assistant_name: session.assistant_name.clone(),
        egress_allow,
    })
}

/// Most skills one agent may select: each puts up to 32 KiB into every prompt.
pub const MAX_SKILLS: usize = 32;

/// A skill name is one folder name inside the skills folder: 1 to 64 bytes of ASCII letters,
/// digits, `.`, `_`, `-`, and not `.` or `..` — never a path (no `/`) that leaves the folder.
pub fn skill_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The skills in `dir` (`container_configs.skills = "all"`): its sub-folders with a valid name
/// and a `SKILL.md`, sorted, at most [`MAX_SKILLS`]. An unreadable folder has none.
pub fn shipped_skills(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| skill_name_ok(n) && dir.join(n).join(nanoclaw_protocol::layout::SKILL_FILE).is_file())
        .collect();
    names.sort();
    names.truncate(MAX_SKILLS);
    names
}

/// An `egress_allow` entry: a host name (`example.org`), `*.suffix`, or an IP literal, each
/// optionally with `:port`; lowercase, ≤ 253 bytes.
pub fn egress_pattern_ok(p: &str) -> bool {
    let host = p.strip_prefix("*.").unwrap_or(p);
    !host.is_empty()
        && p.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b':'))
}

/// The settings as JSON (pretty, for people reading the host folder).
pub fn to_json(settings: &RunnerSettings) -> String {
    serde_json::to_string_pretty(settings).unwrap_or_else(|_| "{}".into())
}

/// Writes `bytes` to `path` through a temporary file and a rename (mode 0644), so a container
/// never reads half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_defaults_by_provider() {
        assert_eq!(effective_tier(None, ProviderKind::Echo), ImageTier::Minimal);
        assert_eq!(effective_tier(None, ProviderKind::Openai), ImageTier::Standard);
        assert_eq!(effective_tier(Some(ImageTier::Minimal), ProviderKind::Anthropic), ImageTier::Minimal);
    }

    #[test]
    fn skill_names_and_the_shipped_skills() {
        for ok in ["memory", "run-command", "a.b_c"] {
            assert!(skill_name_ok(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "../etc", "x y", &"x".repeat(65)] {
            assert!(!skill_name_ok(bad), "{bad}");
        }
        // The skills shipped in this repository: "all" selects each of them.
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../container/skills");
        assert_eq!(shipped_skills(&shipped), vec!["memory", "run-command", "scheduling"]);
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("no-file")).unwrap();
        std::fs::create_dir_all(tmp.path().join("bad name")).unwrap();
        std::fs::write(tmp.path().join("bad name/SKILL.md"), "x").unwrap();
        assert!(shipped_skills(tmp.path()).is_empty());
    }

    #[test]
    fn egress_patterns() {
        for ok in ["example.org", "*.example.org", "127.0.0.1:8080", "api.example.org:443"] {
            assert!(egress_pattern_ok(ok), "{ok}");
        }
        for bad in ["", "*.", "Example.org", "http://x", "a/b", "*"] {
            assert!(!egress_pattern_ok(bad), "{bad}");
        }
    }
}
