//! Workspace tools: `read_file`, `write_file`, `edit_file`, `list_files`, `search_files`.
//!
//! Paths are relative to the session workspace (an absolute path must lie under it). They never
//! leave it: `..` is refused outright, every existing component is checked with
//! `symlink_metadata` and a symlink anywhere on the way is refused, and the final open uses
//! `O_NOFOLLOW`, so a link planted at the last moment fails instead of being followed. The
//! container is the real boundary; this keeps a model from wandering into (or writing through a
//! link onto) files outside its workspace, e.g. the read-only session folder.

use super::{Tool, ToolContext, ToolError, ToolResult, cap_text, parse_args, schema_of};
use crate::model::ToolSpec;
use async_trait::async_trait;
use serde::Deserialize;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// Most bytes `read_file` returns.
pub const MAX_READ_BYTES: usize = 256 * 1024;
/// Largest file `edit_file` and `search_files` look into.
pub const MAX_EDIT_BYTES: u64 = 4 * 1024 * 1024;
/// Most entries `list_files` shows.
pub const MAX_LIST_ENTRIES: usize = 500;
/// Most hits `search_files` returns.
pub const MAX_SEARCH_HITS: usize = 200;
/// Most files `search_files` opens.
const MAX_SEARCH_FILES: usize = 20_000;

/// Files of the runner itself in the workspace root: the model may not overwrite them (its own
/// output DB, heartbeat, memory and outbox would be corrupted).
const RESERVED: &[&str] = &[
    "outbound.db",
    "outbound.db-wal",
    "outbound.db-shm",
    "outbound.db-journal",
    ".heartbeat",
    "transcripts",
    "outbox",
];

/// A path resolved inside the workspace.
#[derive(Debug, Clone)]
pub struct Confined {
    /// The full path.
    pub path: PathBuf,
    /// The path relative to the workspace (`.` for the root), for messages.
    pub rel: PathBuf,
}

/// Resolves `raw` (argument `field`) inside `workspace`, refusing `..`, absolute paths outside
/// it and any symlink on the way (see the module docs).
pub fn confine(workspace: &Path, field: &str, raw: &str) -> Result<Confined, ToolError> {
    let raw_path = Path::new(raw);
    let relative = if raw_path.is_absolute() {
        raw_path.strip_prefix(workspace).map_err(|_| {
            ToolError(format!(
                "{field}: {raw} is outside the workspace ({}); use a relative path",
                workspace.display()
            ))
        })?
    } else {
        raw_path
    };
    let mut rel = PathBuf::new();
    for c in relative.components() {
        match c {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ToolError(format!(
                    "{field}: \"..\" is not allowed; paths stay inside the workspace"
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ToolError(format!("{field}: {raw} is outside the workspace")));
            }
        }
    }
    let mut walk = workspace.to_path_buf();
    for c in rel.components() {
        walk.push(c);
        match std::fs::symlink_metadata(&walk) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ToolError(format!(
                    "{field}: {} is a symlink; symlinks are not followed",
                    walk.strip_prefix(workspace).unwrap_or(&walk).display()
                )));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let rel = if rel.as_os_str().is_empty() { PathBuf::from(".") } else { rel };
    Ok(Confined { path: workspace.join(&rel), rel })
}

fn refuse_reserved(field: &str, c: &Confined) -> Result<(), ToolError> {
    if let Some(Component::Normal(first)) = c.rel.components().next()
        && RESERVED.iter().any(|r| first == *r)
    {
        return Err(ToolError(format!(
            "{field}: {} belongs to the runner and cannot be changed",
            c.rel.display()
        )));
    }
    Ok(())
}

fn open_read(field: &str, c: &Confined) -> Result<File, ToolError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&c.path)
        .map_err(|e| ToolError(format!("{field}: {}: {e}", c.rel.display())))?;
    let meta = file.metadata().map_err(|e| ToolError(format!("{field}: {}: {e}", c.rel.display())))?;
    if !meta.is_file() {
        return Err(ToolError(format!("{field}: {} is not a regular file", c.rel.display())));
    }
    Ok(file)
}

fn write_confined(field: &str, c: &Confined, workspace: &Path, bytes: &[u8]) -> Result<(), ToolError> {
    refuse_reserved(field, c)?;
    if let Some(parent) = c.path.parent()
        && parent != workspace
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| ToolError(format!("{field}: {}: {e}", c.rel.display())))?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&c.path)
        .map_err(|e| ToolError(format!("{field}: {}: {e}", c.rel.display())))?;
    file.write_all(bytes).map_err(|e| ToolError(format!("{field}: {}: {e}", c.rel.display())))
}

fn read_text(field: &str, c: &Confined, max: u64) -> Result<String, ToolError> {
    let file = open_read(field, c)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(|e| ToolError(format!("{field}: {e}")))?;
    if bytes.len() as u64 > max {
        return Err(ToolError(format!("{field}: {} is larger than {max} bytes", c.rel.display())));
    }
    String::from_utf8(bytes).map_err(|_| ToolError(format!("{field}: {} is not UTF-8 text", c.rel.display())))
}

/// `read_file {path}`.
#[derive(Debug)]
pub struct ReadFile;

/// Arguments of `read_file`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFileArgs {
    /// File path, relative to the workspace.
    pub path: String,
}

#[async_trait]
impl Tool for ReadFile {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "read_file".into(),
            description: format!(
                "Read a text file of your workspace (at most {MAX_READ_BYTES} bytes are shown)."
            ),
            input_schema: schema_of::<ReadFileArgs>(),
        }
    }

    async fn call(&self, args: serde_json::Value, cx: &mut ToolContext<'_>) -> ToolResult {
        let a: ReadFileArgs = parse_args(args)?;
        let c = confine(cx.workspace, "path", &a.path)?;
        let file = open_read("path", &c)?;
        let mut bytes = Vec::new();
        file.take(MAX_READ_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ToolError(format!("path: {e}")))?;
        let total = std::fs::metadata(&c.path).map(|m| m.len()).unwrap_or(bytes.len() as u64);
        if bytes.len() > MAX_READ_BYTES {
            bytes.truncate(MAX_READ_BYTES);
            let mut text = String::from_utf8_lossy(&bytes).into_owned();
            text.push_str(&format!("\n[… {} bytes cut …]", total.saturating_sub(MAX_READ_BYTES as u64)));
            return Ok(text);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// `write_file {path, content}`: creates or replaces a file (and its folders).
#[derive(Debug)]
pub struct WriteFile;

/// Arguments of `write_file`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileArgs {
    /// File path, relative to the workspace.
    pub path: String,
    /// The whole new content.
    pub content: String,
}

#[async_trait]
impl Tool for WriteFile {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "write_file".into(),
            description: "Create or replace a file in your workspace (folders are created).".into(),
            input_schema: schema_of::<WriteFileArgs>(),
        }
    }

    async fn call(&self, args: serde_json::Value, cx: &mut ToolContext<'_>) -> ToolResult {
        let a: WriteFileArgs = parse_args(args)?;
        let c = confine(cx.workspace, "path", &a.path)?;
        write_confined("path", &c, cx.workspace, a.content.as_bytes())?;
        Ok(format!("wrote {} ({} bytes)", c.rel.display(), a.content.len()))
    }
}

/// `edit_file {path, old_text, new_text}`: replaces the one occurrence of `old_text`.
#[derive(Debug)]
pub struct EditFile;

/// Arguments of `edit_file`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EditFileArgs {
    /// File path, relative to the workspace.
    pub path: String,
    /// The exact text to replace; it must occur exactly once in the file.
    pub old_text: String,
    /// The replacement.
    pub new_text: String,
}

#[async_trait]
impl Tool for EditFile {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "edit_file".into(),
            description: "Replace an exact piece of text in a workspace file. `old_text` must occur exactly \
                          once; include surrounding lines to make it unique."
                .into(),
            input_schema: schema_of::<EditFileArgs>(),
        }
    }

    async fn call(&self, args: serde_json::Value, cx: &mut ToolContext<'_>) -> ToolResult {
        let a: EditFileArgs = parse_args(args)?;
        if a.old_text.is_empty() {
            return Err(ToolError("old_text: must not be empty".into()));
        }
        let c = confine(cx.workspace, "path", &a.path)?;
        refuse_reserved("path", &c)?;
        let text = read_text("path", &c, MAX_EDIT_BYTES)?;
        match text.matches(&a.old_text).count() {
            0 => Err(ToolError(format!("old_text: not found in {}", c.rel.display()))),
            1 => {
                let new = text.replacen(&a.old_text, &a.new_text, 1);
                write_confined("path", &c, cx.workspace, new.as_bytes())?;
                Ok(format!("edited {}", c.rel.display()))
            }
            n => Err(ToolError(format!(
                "old_text: found {n} times in {}; include more context so it matches once",
                c.rel.display()
            ))),
        }
    }
}

/// `list_files {path?}`: one folder's entries.
#[derive(Debug)]
pub struct ListFiles;

/// Arguments of `list_files`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFilesArgs {
    /// Folder, relative to the workspace; default: the workspace itself.
    #[serde(default)]
    pub path: Option<String>,
}

#[async_trait]
impl Tool for ListFiles {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "list_files".into(),
            description: "List a folder of your workspace: folders end in `/`, symlinks in `@`.".into(),
            input_schema: schema_of::<ListFilesArgs>(),
        }
    }

    async fn call(&self, args: serde_json::Value, cx: &mut ToolContext<'_>) -> ToolResult {
        let a: ListFilesArgs = parse_args(args)?;
        let c = confine(cx.workspace, "path", a.path.as_deref().unwrap_or("."))?;
        let entries =
            std::fs::read_dir(&c.path).map_err(|e| ToolError(format!("path: {}: {e}", c.rel.display())))?;
        let mut lines: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                match e.file_type() {
                    Ok(t) if t.is_symlink() => format!("{name}@"),
                    Ok(t) if t.is_dir() => format!("{name}/"),
                    _ => {
                        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                        format!("{name} ({len} bytes)")
                    }
                }
            })
            .collect();
        lines.sort();
        let total = lines.len();
        lines.truncate(MAX_LIST_ENTRIES);
        let mut out = lines.join("\n");
        if total > MAX_LIST_ENTRIES {
            out.push_str(&format!("\n[… {} more entries …]", total - MAX_LIST_ENTRIES));
        }
        if out.is_empty() {
            out = format!("{} is empty", c.rel.display());
        }
        Ok(out)
    }
}

/// `search_files {pattern, path?}`: a regular expression over the workspace's text files.
#[derive(Debug)]
pub struct SearchFiles;

/// Arguments of `search_files`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchFilesArgs {
    /// A regular expression (Rust `regex` syntax), matched per line.
    pub pattern: String,
    /// Folder or file to search, relative to the workspace; default: the whole workspace.
    #[serde(default)]
    pub path: Option<String>,
}

#[async_trait]
impl Tool for SearchFiles {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "search_files".into(),
            description: format!(
                "Search the workspace's text files for a regular expression; answers `path:line: text`, at \
                 most {MAX_SEARCH_HITS} hits. Symlinks are not followed."
            ),
            input_schema: schema_of::<SearchFilesArgs>(),
        }
    }

    async fn call(&self, args: serde_json::Value, cx: &mut ToolContext<'_>) -> ToolResult {
        let a: SearchFilesArgs = parse_args(args)?;
        let re = regex::RegexBuilder::new(&a.pattern)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| ToolError(format!("pattern: {e}")))?;
        let root = confine(cx.workspace, "path", a.path.as_deref().unwrap_or("."))?;
        let mut hits = Vec::new();
        let mut more = false;
        let mut files = 0usize;
        let mut stack = vec![root.path.clone()];
        while let Some(p) = stack.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
            if meta.is_dir() {
                if let Ok(entries) = std::fs::read_dir(&p) {
                    let mut children: Vec<PathBuf> =
                        entries.filter_map(Result::ok).map(|e| e.path()).collect();
                    children.sort();
                    stack.extend(children.into_iter().rev());
                }
                continue;
            }
            if !meta.is_file() || meta.len() > MAX_EDIT_BYTES {
                continue;
            }
            let rel = p.strip_prefix(cx.workspace).unwrap_or(&p).to_path_buf();
            if rel.components().next().is_some_and(|c| RESERVED.iter().any(|r| c.as_os_str() == *r)) {
                continue;
            }
            files += 1;
            if files > MAX_SEARCH_FILES {
                more = true;
                break;
            }
            let Ok(text) = std::fs::read(&p).map(String::from_utf8) else { continue };
            let Ok(text) = text else { continue };
            for (n, line) in text.lines().enumerate() {
                if re.is_match(line) {
                    if hits.len() == MAX_SEARCH_HITS {
                        more = true;
                        break;
                    }
                    hits.push(format!("{}:{}: {}", rel.display(), n + 1, cap_text(line, 300)));
                }
            }
            if more {
                break;
            }
        }
        let mut out = hits.join("\n");
        if more {
            out.push_str("\n[… more hits not shown; narrow the pattern or the path …]");
        }
        if hits.is_empty() {
            out = format!("no match for {:?}", a.pattern);
        }
        Ok(out)
    }
}
