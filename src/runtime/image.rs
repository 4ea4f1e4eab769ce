//! The `minimal` agent image, built offline from the project's own build output (DESIGN §7).
//!
//! `FROM scratch` plus the agent runner binary and the shared libraries it links (found with
//! `ldd`), a `/tmp` with mode 1777 (Docker's tmpfs copies the image's mode, crates.md §2.3), the
//! mount points, and an `/etc/passwd` naming the unprivileged user. No registry, no base image.
//! The tag is a hash of the build context, so an unchanged runner is never rebuilt and a changed
//! one always is.
//!
//! Learning the tag means running `ldd` and reading ~8 MB into a tar: ~20 ms and a 12 MB memory
//! peak at every start. So the tag is remembered in a small file in the user's cache directory
//! (see `runtime::from_config`), keyed by the kernel's identity of every input file (device, inode, size,
//! modification and change times) and a digest of the fixed parts of the recipe; the context is
//! built only when a key differs or the image is missing.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where the runner lives in the image.
pub const AGENT_PATH: &str = "/usr/local/bin/nanoclaw-agent";

/// The build context of one image: a tar with a Dockerfile, and its content tag.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The tar archive (Dockerfile + `rootfs/`).
    pub tar: Vec<u8>,
    /// First 12 hex digits of the SHA-256 of `tar`.
    pub tag: String,
    /// The host files copied in: the agent binary first, then its libraries.
    pub inputs: Vec<PathBuf>,
}

/// Largest tag cache read; a bigger file is ignored (it is the host's own file, but a cap costs
/// nothing).
const TAG_CACHE_MAX_BYTES: u64 = 64 * 1024;

/// The Dockerfile of the `minimal` image.
fn dockerfile() -> String {
    format!(
        "FROM scratch\nCOPY rootfs/ /\nUSER 65534:65534\nWORKDIR /workspace\nENTRYPOINT [\"{AGENT_PATH}\"]\n"
    )
}

const PASSWD: &[u8] =
    b"root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n";
const GROUP: &[u8] = b"root:x:0:\nnogroup:x:65534:\n";
const EMPTY_DIRS: [&str; 6] = [
    "rootfs/workspace",
    "rootfs/session",
    "rootfs/etc",
    "rootfs/usr",
    "rootfs/usr/local",
    "rootfs/usr/local/bin",
];

/// Digest of everything in the context that is not an input file, so a change of the recipe in
/// a new host version invalidates the cache even when the agent binary is unchanged. The format
/// version counts changes of how files are archived (`add_file`'s header fields).
fn recipe_digest() -> String {
    const FORMAT: &str = "minimal-1";
    let mut h = Sha256::new();
    for part in [FORMAT.as_bytes(), dockerfile().as_bytes(), PASSWD, GROUP, EMPTY_DIRS.join(",").as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

/// What the kernel says identifies a file's content: any write changes `ctime`, a replaced file
/// has a new inode. Symbolic links are followed (`ldd` names links; the target is what is copied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// The path as named.
    pub path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    /// Stamps `path`. Errors when it cannot be stat'ed.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

/// The tag cache file's content.
#[derive(Debug, Serialize, Deserialize)]
struct TagCache {
    recipe: String,
    /// The agent binary first, then its libraries.
    inputs: Vec<FileStamp>,
    tag: String,
}

/// The tag remembered in `cache` for `binary`, when the recipe and every input file are as they
/// were when it was stored. `None` (never an error) when the file is missing, too big, corrupt or
/// stale: the caller then builds the context, which is always correct.
pub fn cached_tag(cache: &Path, binary: &Path) -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open(cache).ok()?;
    let mut text = String::new();
    file.take(TAG_CACHE_MAX_BYTES + 1).read_to_string(&mut text).ok()?;
    if text.len() as u64 > TAG_CACHE_MAX_BYTES {
        return None;
    }
    let stored: TagCache = serde_json::from_str(&text).ok()?;
    let valid_tag = stored.tag.len() == 12 && stored.tag.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid_tag
        || stored.recipe != recipe_digest()
        || stored.inputs.first().map(|s| s.path.as_path()) != Some(binary)
    {
        return None;
    }
    stored.inputs.iter().all(|s| FileStamp::of(&s.path).is_ok_and(|now| now == *s)).then_some(stored.tag)
}

/// Remembers `context`'s tag in `cache` (written to a temporary file, then renamed, so a reader
/// never sees half a file). Errors only on I/O; the caller logs them, a cache is never required.
pub fn store_tag(cache: &Path, context: &BuildContext) -> std::io::Result<()> {
    let inputs = context.inputs.iter().map(|p| FileStamp::of(p)).collect::<std::io::Result<Vec<_>>>()?;
    let body = serde_json::to_vec(&TagCache { recipe: recipe_digest(), inputs, tag: context.tag.clone() })?;
    let tmp = cache.with_extension("json.tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, cache)
}

/// Errors assembling the context. Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The runner binary is missing or unreadable.
    #[error(
        "agent binary {path}: {message} (build it with `cargo build --release --workspace`, or set NANOCLAW_AGENT_BINARY)"
    )]
    Binary {
        /// The path tried.
        path: String,
        /// What failed.
        message: String,
    },
    /// `ldd` failed or printed something unexpected.
    #[error("resolving the libraries of {path} with ldd: {message}")]
    Ldd {
        /// The binary.
        path: String,
        /// What failed.
        message: String,
    },
    /// Writing the archive failed.
    #[error("building the image archive: {0}")]
    Tar(#[from] std::io::Error),
}

/// The agent binary to use: `configured`, else `nanoclaw-agent` beside the current executable
/// (also one directory up, for test binaries in `target/<profile>/deps`).
pub fn locate_agent_binary(configured: Option<&Path>) -> Result<PathBuf, ImageError> {
    if let Some(p) = configured {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(ImageError::Binary { path: p.display().to_string(), message: "not a file".into() })
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| ImageError::Binary { path: "(current executable)".into(), message: e.to_string() })?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    for candidate in [dir.join("nanoclaw-agent"), dir.join("..").join("nanoclaw-agent")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(ImageError::Binary {
        path: dir.join("nanoclaw-agent").display().to_string(),
        message: "not found".into(),
    })
}

/// The shared libraries `binary` needs (absolute paths, the loader included), per `ldd`.
pub fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let err = |message: String| ImageError::Ldd { path: binary.display().to_string(), message };
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| err(format!("cannot run ldd: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary: ldd says so and exits 1; it needs no libraries.
        let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        if all.contains("not a dynamic executable") || all.contains("statically linked") {
            return Ok(vec![]);
        }
        return Err(err(all.trim().to_string()));
    }
    let mut libs = Vec::new();
    for line in stdout.lines() {
        let line = line.trim();
        if line.contains("not found") {
            return Err(err(format!("missing library: {line}")));
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`.
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn add_file(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut h, path, data)
}

fn add_dir(builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Directory);
    builder.append_data(&mut h, path, std::io::empty())
}

/// Assembles the build context for `binary`. Deterministic: the same inputs give the same tag.
pub fn minimal_context(binary: &Path) -> Result<BuildContext, ImageError> {
    let bin = std::fs::read(binary)
        .map_err(|e| ImageError::Binary { path: binary.display().to_string(), message: e.to_string() })?;
    let libs = linked_libraries(binary)?;
    let mut b = tar::Builder::new(Vec::new());
    add_file(&mut b, "Dockerfile", dockerfile().as_bytes(), 0o644)?;
    add_dir(&mut b, "rootfs/tmp", 0o1777)?;
    for dir in EMPTY_DIRS {
        add_dir(&mut b, dir, 0o755)?;
    }
    add_file(&mut b, "rootfs/etc/passwd", PASSWD, 0o644)?;
    add_file(&mut b, "rootfs/etc/group", GROUP, 0o644)?;
    add_file(&mut b, &format!("rootfs{AGENT_PATH}"), &bin, 0o755)?;
    let mut seen_dirs = std::collections::BTreeSet::new();
    for lib in &libs {
        // Copy the file behind any symlink to the path the loader asks for.
        let data = std::fs::read(lib)
            .map_err(|e| ImageError::Ldd { path: lib.display().to_string(), message: e.to_string() })?;
        let rel = lib.strip_prefix("/").unwrap_or(lib);
        let mut acc = PathBuf::from("rootfs");
        for comp in rel.parent().into_iter().flat_map(|p| p.components()) {
            acc.push(comp);
            if seen_dirs.insert(acc.clone()) {
                add_dir(&mut b, &acc.to_string_lossy(), 0o755)?;
            }
        }
        add_file(&mut b, &format!("rootfs/{}", rel.display()), &data, 0o755)?;
    }
    let tar = b.into_inner()?;
    let tag = hex::encode(Sha256::digest(&tar))[..12].to_string();
    let inputs = std::iter::once(binary.to_path_buf()).chain(libs).collect();
    Ok(BuildContext { tar, tag, inputs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_holds_binary_libraries_and_a_world_writable_tmp() {
        // Any dynamic binary of the machine does: the runner itself may not be built yet.
        let bin = Path::new("/bin/true");
        let ctx = minimal_context(bin).unwrap();
        let again = minimal_context(bin).unwrap();
        assert_eq!(ctx.tag, again.tag, "deterministic");
        let mut archive = tar::Archive::new(ctx.tar.as_slice());
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.header().mode().unwrap())
            })
            .collect();
        assert!(entries.iter().any(|(p, _)| p == "Dockerfile"));
        assert!(entries.iter().any(|(p, _)| p == "rootfs/usr/local/bin/nanoclaw-agent"));
        assert!(entries.iter().any(|(p, m)| p == "rootfs/tmp" && *m == 0o1777));
        assert!(entries.iter().any(|(p, _)| p.contains("libc.so")), "{entries:?}");
    }

    #[test]
    fn the_tag_cache_holds_until_an_input_or_the_recipe_changes() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("agent");
        std::fs::copy("/bin/true", &bin).unwrap();
        let cache = dir.path().join("image-tag.json");
        assert_eq!(cached_tag(&cache, &bin), None, "no cache yet");

        let ctx = minimal_context(&bin).unwrap();
        store_tag(&cache, &ctx).unwrap();
        assert_eq!(cached_tag(&cache, &bin), Some(ctx.tag.clone()), "unchanged inputs: the stored tag");
        assert_eq!(cached_tag(&cache, Path::new("/bin/false")), None, "another binary");

        // A rebuilt binary (same path, new content) must not reuse the old tag.
        let mut bytes = std::fs::read(&bin).unwrap();
        bytes.extend_from_slice(b"rebuilt");
        std::fs::write(&bin, &bytes).unwrap();
        assert_eq!(cached_tag(&cache, &bin), None, "a changed binary");
        let rebuilt = minimal_context(&bin).unwrap();
        assert_ne!(rebuilt.tag, ctx.tag);
        store_tag(&cache, &rebuilt).unwrap();
        assert_eq!(cached_tag(&cache, &bin), Some(rebuilt.tag.clone()));

        // Another recipe (an older host's cache) or a stored tag of the wrong shape is stale.
        let text = std::fs::read_to_string(&cache).unwrap();
        std::fs::write(&cache, text.replace(&recipe_digest(), "0000")).unwrap();
        assert_eq!(cached_tag(&cache, &bin), None, "another recipe");
        std::fs::write(&cache, text.replace(&rebuilt.tag, "../../etc")).unwrap();
        assert_eq!(cached_tag(&cache, &bin), None, "a tag that is not 12 hex digits");
        for junk in [&b"{not json"[..], &vec![b' '; 70 * 1024]] {
            std::fs::write(&cache, junk).unwrap();
            assert_eq!(cached_tag(&cache, &bin), None, "corrupt or oversize cache");
        }
    }

    #[test]
    fn a_missing_binary_names_the_path_and_the_fix() {
        let e = locate_agent_binary(Some(Path::new("/nope/agent"))).unwrap_err();
        assert!(e.to_string().contains("/nope/agent") && e.to_string().contains("cargo build"));
    }
}
