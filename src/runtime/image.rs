//! The `minimal` agent image, built offline from the project's own build output (DESIGN §7).
//!
//! `FROM scratch` plus the agent runner binary and the shared libraries it links (found with
//! `ldd`), a `/tmp` with mode 1777 (Docker's tmpfs copies the image's mode, crates.md §2.3), the
//! mount points, and an `/etc/passwd` naming the unprivileged user. No registry, no base image.
//! The tag is a hash of the build context, so an unchanged runner is never rebuilt and a changed
//! one always is.

use sha2::{Digest, Sha256};
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
    let dockerfile = format!(
        "FROM scratch\nCOPY rootfs/ /\nUSER 65534:65534\nWORKDIR /workspace\nENTRYPOINT [\"{AGENT_PATH}\"]\n"
    );
    add_file(&mut b, "Dockerfile", dockerfile.as_bytes(), 0o644)?;
    add_dir(&mut b, "rootfs/tmp", 0o1777)?;
    for dir in [
        "rootfs/workspace",
        "rootfs/session",
        "rootfs/etc",
        "rootfs/usr",
        "rootfs/usr/local",
        "rootfs/usr/local/bin",
    ] {
        add_dir(&mut b, dir, 0o755)?;
    }
    add_file(
        &mut b,
        "rootfs/etc/passwd",
        b"root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
        0o644,
    )?;
    add_file(&mut b, "rootfs/etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;
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
    Ok(BuildContext { tar, tag })
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
    fn a_missing_binary_names_the_path_and_the_fix() {
        let e = locate_agent_binary(Some(Path::new("/nope/agent"))).unwrap_err();
        assert!(e.to_string().contains("/nope/agent") && e.to_string().contains("cargo build"));
    }
}
