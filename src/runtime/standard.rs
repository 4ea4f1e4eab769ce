//! The `standard` agent image: a Debian root filesystem with a shell and the usual tools, built
//! by the service itself (DESIGN §7, issue 6 part 5).
//!
//! `debootstrap --variant=minbase` installs Debian's own packages (no registry, no base image)
//! into a temporary directory; the runner, the mount points and a world-writable `/tmp` are added
//! (the same shape as the `minimal` image, so the same hardening applies), and the tree is
//! streamed as a tar into Docker's import endpoint (`docker import`: `POST /images/create?
//! fromSrc=-`; bollard's `import_image` is `docker load` and wants an image archive, crates.md
//! §2.4). Import, not a `FROM scratch` build: the classic builder would unpack the ~300 MB
//! context and then copy it into a layer again.
//!
//! The tag is a hash of the build's *inputs* (recipe version, package list, suite, mirror, the
//! runner's bytes), so it is known before anything is built: an existing image is found with one
//! `inspect` and reused, and a new runner or another mirror gives a new image. Building takes
//! minutes and needs root (debootstrap creates device nodes, chowns files and chroots), so it
//! happens on first use of the tier, not at service start, with a progress line on stderr every
//! few seconds; builds by several processes on one host are serialised by a lock file.

use super::image::AGENT_PATH;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Packages installed on top of `minbase`: what `run_command` and the agent's tools expect.
pub const PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "findutils",
    "grep",
    "sed",
    "git",
    "ca-certificates",
    "python3",
    "ripgrep",
    "jq",
    "curl",
];

/// Version of this recipe: bump it whenever the steps below change what ends up in the image, so
/// hosts with an image of the old recipe build a new one.
pub const RECIPE_VERSION: &str = "standard-1";

/// Prefix of the standard image's tags (`<image>:std-<12 hex digits>`), so the two tiers' tags of
/// one repository are told apart at a glance.
pub const TAG_PREFIX: &str = "std-";

/// Image label naming the tier (also inherited by containers, which helps `docker ps` readers).
pub const LABEL_TIER: &str = "nanoclaw.tier";

/// Longest `debootstrap` run tolerated: a stalled mirror must not hold the session forever.
const DEBOOTSTRAP_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// How often a progress line is printed while building.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Size of the chunks streamed to Docker, and how many may wait in the channel: a bounded
/// pipeline, so the image is never held in memory (~1 MiB in flight).
const CHUNK_BYTES: usize = 256 * 1024;
const CHUNKS_IN_FLIGHT: usize = 4;

/// Where the standard image comes from. `None` fields are learned from the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StandardSettings {
    /// Debian suite (`bookworm`); default: the host's `VERSION_CODENAME` (`/etc/os-release`), so
    /// the runner, built on the host, finds the glibc it was linked against.
    pub debian_suite: Option<String>,
    /// Debian mirror URL; default: the host's apt sources' first URI serving the suite.
    pub debian_mirror: Option<String>,
    /// Parent of the temporary build directory; default `/var/tmp` (a rootfs is ~300 MB, too big
    /// for a tmpfs `/tmp`).
    pub work_dir: Option<PathBuf>,
}

/// The resolved inputs of one standard image. Their hash is the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// Debian suite.
    pub suite: String,
    /// Debian mirror URL.
    pub mirror: String,
    /// SHA-256 of the runner binary (hex).
    pub runner_sha256: String,
    /// The runner binary on the host.
    pub runner: PathBuf,
}

impl Recipe {
    /// Resolves `settings` against the host (os-release, apt sources) and hashes the runner.
    /// Blocking (reads files).
    pub fn resolve(settings: &StandardSettings, runner: &Path) -> Result<Self, StandardError> {
        let suite = match &settings.debian_suite {
            Some(s) => s.clone(),
            None => host_suite().ok_or(StandardError::NoSuite)?,
        };
        if !valid_suite(&suite) {
            return Err(StandardError::BadSetting {
                key: "debian_suite",
                problem: format!("{suite:?} is not a suite name ([a-z0-9.-], at most 64 bytes)"),
            });
        }
        let mirror = match &settings.debian_mirror {
            Some(m) => m.clone(),
            None => host_mirror(&suite).unwrap_or_else(|| "http://deb.debian.org/debian".into()),
        };
        if !valid_mirror(&mirror) {
            return Err(StandardError::BadSetting {
                key: "debian_mirror",
                problem: format!("{mirror:?} is not an http(s) URL without spaces (at most 512 bytes)"),
            });
        }
        let runner_sha256 = sha256_file(runner).map_err(|e| StandardError::Io {
            what: format!("reading the runner {}", runner.display()),
            message: e.to_string(),
        })?;
        Ok(Self { suite, mirror, runner_sha256, runner: runner.to_path_buf() })
    }

    /// The tag: `std-` and 12 hex digits of a hash over every input, each length-prefixed so no
    /// two different recipes hash alike.
    pub fn tag(&self) -> String {
        let mut h = Sha256::new();
        let packages = PACKAGES.join(",");
        for part in [RECIPE_VERSION, &packages, &self.suite, &self.mirror, &self.runner_sha256] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        format!("{TAG_PREFIX}{}", &hex::encode(h.finalize())[..12])
    }

    /// The `docker import` changes: the same user, working directory and entry point as the
    /// `minimal` image, a `PATH` (an imported image has no environment at all), and the tier label.
    pub fn import_changes(&self) -> Vec<String> {
        vec![
            "USER 65534:65534".into(),
            "WORKDIR /workspace".into(),
            format!("ENTRYPOINT [\"{AGENT_PATH}\"]"),
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "ENV LANG=C.UTF-8".into(),
            format!("LABEL {LABEL_TIER}=standard"),
        ]
    }
}

/// Errors building the standard image. Display is one line that names the fix where there is one.
#[derive(Debug, thiserror::Error)]
pub enum StandardError {
    /// `debootstrap` is not installed.
    #[error("the standard image needs debootstrap: apt-get install debootstrap")]
    NoDebootstrap,
    /// The service does not run as root.
    #[error(
        "the standard image is built with debootstrap, which needs root (uid 0): start nanoclaw as root once to build it (it is then reused), or set the group's container_configs.image_tier to 'minimal'"
    )]
    NotRoot,
    /// The host's suite is unknown and none is configured.
    #[error(
        "cannot tell the host's Debian suite (no VERSION_CODENAME in /etc/os-release): set [container] debian_suite"
    )]
    NoSuite,
    /// A configured value is malformed.
    #[error("[container] {key}: {problem}")]
    BadSetting {
        /// The key.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// `debootstrap` failed.
    #[error("debootstrap failed ({status}): {tail}")]
    Debootstrap {
        /// Exit status or timeout.
        status: String,
        /// Its last output lines.
        tail: String,
    },
    /// The runner does not start in the new root filesystem (a suite older than the host's glibc).
    #[error(
        "the runner does not start on Debian {suite} ({message}); use the host's suite (unset [container] debian_suite)"
    )]
    RunnerIncompatible {
        /// The suite.
        suite: String,
        /// What happened.
        message: String,
    },
    /// A file operation failed.
    #[error("{what}: {message}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        message: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StandardError {
    let what = what.into();
    move |e| StandardError::Io { what, message: e.to_string() }
}

/// A Debian suite name: `[a-z0-9.-]`, at most 64 bytes, starting alphanumeric (it is an
/// argument of debootstrap, a shell script).
pub fn valid_suite(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// A mirror URL: `http(s)://`, no whitespace or control bytes, at most 512 bytes.
pub fn valid_mirror(m: &str) -> bool {
    (m.starts_with("http://") || m.starts_with("https://"))
        && m.len() <= 512
        && m.len() > "https://".len()
        && !m.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
}

/// `VERSION_CODENAME` of `/etc/os-release` (else `/usr/lib/os-release`).
pub fn host_suite() -> Option<String> {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| os_release_codename(&text))
}

fn os_release_codename(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix("VERSION_CODENAME=")?;
        let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// The first URI of the host's apt sources that serves `suite` (else the first `deb` URI), in
/// the order apt reads them: `sources.list`, then `sources.list.d/*.list` and `*.sources` by name.
pub fn host_mirror(suite: &str) -> Option<String> {
    let mut texts: Vec<(bool, String)> = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push((false, t));
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut names: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names {
            let deb822 = match p.extension().and_then(|e| e.to_str()) {
                Some("sources") => true,
                Some("list") => false,
                _ => continue, // apt ignores other names (e.g. `.disabled`)
            };
            if let Ok(t) = std::fs::read_to_string(&p) {
                texts.push((deb822, t));
            }
        }
    }
    let entries: Vec<(String, Vec<String>)> = texts
        .iter()
        .flat_map(|(deb822, t)| if *deb822 { parse_deb822(t) } else { parse_one_line(t) })
        .collect();
    entries
        .iter()
        .find(|(_, suites)| suites.iter().any(|s| s == suite))
        .or_else(|| entries.first())
        .map(|(uri, _)| uri.trim_end_matches('/').to_string())
}

/// `(uri, suites)` of each `deb` line of a one-line-style sources file.
fn parse_one_line(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ").or_else(|| line.strip_prefix("deb\t")) else { continue };
        let mut rest = rest.trim_start();
        // Options may hold spaces: `[arch=amd64 signed-by=…]`.
        if rest.starts_with('[') {
            let Some(end) = rest.find(']') else { continue };
            rest = rest[end + 1..].trim_start();
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push((uri.to_string(), vec![suite.to_string()]));
        }
    }
    out
}

/// `(uri, suites)` of each enabled `deb` stanza of a deb822 sources file (one per URI).
fn parse_deb822(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut types = Vec::new();
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut enabled = true;
        for line in stanza.lines() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else { continue };
            let words = || value.split_whitespace().map(str::to_string).collect::<Vec<_>>();
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types = words(),
                "uris" => uris = words(),
                "suites" => suites = words(),
                "enabled" => enabled = !value.trim().eq_ignore_ascii_case("no"),
                _ => {}
            }
        }
        if enabled && types.iter().any(|t| t == "deb") {
            out.extend(uris.into_iter().map(|u| (u, suites.clone())));
        }
    }
    out
}

/// Where `debootstrap` is: `$PATH`, then the `sbin` directories a non-login root shell may lack.
pub fn find_debootstrap(path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = path_var.map(|p| std::env::split_paths(p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("debootstrap"))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Mount points at or under `dir`, deepest first, from `/proc/self/mountinfo`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else { return vec![] };
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Bytes, not a `str` slice: a path may hold multi-byte characters.
        let octal =
            b.get(i + 1..i + 4).filter(|d| d[0] <= b'3' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], octal) {
            out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The temporary build directory, removed on drop — also when the build fails or its future is
/// dropped. An interrupted debootstrap can leave `/proc` (and more) mounted inside the tree, and
/// removing files through such a mount would reach the host's own files: everything mounted
/// under the directory is detached first, and if anything stays mounted the tree is left alone
/// (and logged) rather than removed.
#[derive(Debug)]
pub struct BuildDir {
    path: PathBuf,
}

impl BuildDir {
    /// Creates `<parent>/nanoclaw-standard-<pid>-<nanos>` (mode 0700; `create_dir` fails
    /// rather than reuse an existing directory).
    pub fn create(parent: &Path) -> Result<Self, StandardError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = parent.join(format!("nanoclaw-standard-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io_err(format!("creating a build directory in {}", parent.display())))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        for m in mounts_under(&self.path) {
            // umount(8) rather than umount2(2): the crate forbids `unsafe`. `-l` detaches even a
            // busy mount.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&m)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        let left = mounts_under(&self.path);
        if !left.is_empty() {
            tracing::error!(dir = %self.path.display(), mounts = ?left, "build directory still has mounts; not removing it");
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove the build directory");
        }
    }
}

/// What the progress printer shows: the current step, updated by the build.
#[derive(Debug, Clone)]
pub struct Progress {
    step: Arc<parking_lot::Mutex<String>>,
    started: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// A reporter whose clock starts now.
    pub fn new() -> Self {
        Self { step: Arc::new(parking_lot::Mutex::new("starting".into())), started: Instant::now() }
    }

    /// Sets the step the next line shows.
    pub fn set(&self, step: impl Into<String>) {
        *self.step.lock() = step.into();
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs();
        format!("building the standard image: {} … {}m{:02}s", self.step.lock(), secs / 60, secs % 60)
    }

    /// Prints a line every [`PROGRESS_EVERY`] until the returned guard is dropped.
    pub fn print_every(&self) -> tokio_util::task::AbortOnDropHandle<()> {
        let me = self.clone();
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{}", me.line());
            }
        }))
    }
}

/// Keeps a line of debootstrap's output for the progress line: printable ASCII, at most 100 bytes.
fn clean_line(l: &str) -> String {
    let s: String = l.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(100).collect();
    s.trim().to_string()
}

/// Runs debootstrap into `root` (which must not exist yet), reporting its `I:` lines as progress.
async fn debootstrap(
    debootstrap: &Path,
    recipe: &Recipe,
    root: &Path,
    progress: &Progress,
) -> Result<(), StandardError> {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(debootstrap);
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(&recipe.suite)
        .arg(root)
        .arg(&recipe.mirror)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(io_err(format!("starting {}", debootstrap.display())))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    // Both streams feed one bounded tail (for the error) and the progress step.
    let tail = Arc::new(parking_lot::Mutex::new(std::collections::VecDeque::<String>::new()));
    let pump = |r: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
        let tail = tail.clone();
        let progress = progress.clone();
        async move {
            let mut lines = tokio::io::BufReader::new(r).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let l = clean_line(&l);
                if let Some(step) = l.strip_prefix("I: ") {
                    progress.set(format!("debootstrap: {step}"));
                }
                let mut t = tail.lock();
                t.push_back(l);
                if t.len() > 5 {
                    t.pop_front();
                }
            }
        }
    };
    let work = async {
        let ((), (), status) = tokio::join!(pump(Box::new(stdout)), pump(Box::new(stderr)), child.wait());
        status
    };
    let status = match tokio::time::timeout(DEBOOTSTRAP_DEADLINE, work).await {
        Ok(Ok(s)) if s.success() => return Ok(()),
        Ok(Ok(s)) => s.to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no end within {} min", DEBOOTSTRAP_DEADLINE.as_secs() / 60),
    };
    let tail = tail.lock().iter().cloned().collect::<Vec<_>>().join(" | ");
    Err(StandardError::Debootstrap { status, tail })
}

/// What is done to the tree debootstrap made: apt's caches go (they are most of the size and
/// useless without network), the runner and the mount points come in, `/tmp` is 1777 (Docker's
/// tmpfs copies the image's mode, crates.md §2.3), and the user the containers run as exists.
/// Blocking.
pub fn finish_rootfs(root: &Path, runner: &Path) -> Result<(), StandardError> {
    for dir in ["var/cache/apt", "var/lib/apt/lists", "var/cache/debconf"] {
        let p = root.join(dir);
        if p.is_dir() {
            for entry in std::fs::read_dir(&p).map_err(io_err(format!("reading {dir}")))?.flatten() {
                let path = entry.path();
                let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(io_err(format!("cleaning {}", path.display())))?;
            }
        }
    }
    // apt expects these to exist.
    for dir in ["var/cache/apt/archives/partial", "var/lib/apt/lists/partial"] {
        std::fs::create_dir_all(root.join(dir)).map_err(io_err(format!("creating {dir}")))?;
    }
    for dir in ["workspace", "session", "skills"] {
        let p = root.join(dir);
        std::fs::create_dir_all(&p).map_err(io_err(format!("creating /{dir}")))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("chmod /{dir}")))?;
    }
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(io_err("creating /tmp"))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).map_err(io_err("chmod /tmp"))?;
    let agent = root.join(AGENT_PATH.trim_start_matches('/'));
    if let Some(parent) = agent.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("creating the runner's directory"))?;
    }
    std::fs::copy(runner, &agent).map_err(io_err(format!("copying the runner {}", runner.display())))?;
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("chmod the runner"))?;
    // Debian's base-passwd already names root and nobody (65534); make sure, as `minimal` does.
    ensure_line(
        &root.join("etc/passwd"),
        "nobody:",
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
    )?;
    ensure_line(&root.join("etc/group"), "nogroup:", "nogroup:x:65534:")?;
    Ok(())
}

fn ensure_line(file: &Path, prefix: &str, line: &str) -> Result<(), StandardError> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    if text.lines().any(|l| l.starts_with(prefix)) {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(io_err(format!("opening {}", file.display())))?;
    let sep = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
    writeln!(f, "{sep}{line}").map_err(io_err(format!("writing {}", file.display())))
}

/// Starts the runner in the new tree with `chroot` and a configuration it refuses: it must reach
/// its own config check (exit 2, "config error"), which proves the loader found every library and glibc
/// is new enough. A suite older than the host would fail here, with the loader's message, rather
/// than in every container later. Blocking.
pub fn check_runner_starts(root: &Path, suite: &str) -> Result<(), StandardError> {
    // By absolute path: the service's PATH may lack the sbin directories (a non-login shell).
    let chroot = ["/usr/sbin/chroot", "/sbin/chroot", "/usr/bin/chroot"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or_else(|| StandardError::Io {
            what: "checking the runner".into(),
            message: "chroot not found".into(),
        })?;
    let out = std::process::Command::new(chroot)
        .arg(root)
        .arg(AGENT_PATH)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        // A value the runner refuses before touching any file: it exits 2 with "config error".
        .env("NANOCLAW_POLL_MS", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(io_err("running the runner under chroot"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(2) && stderr.contains("config error") {
        return Ok(());
    }
    Err(StandardError::RunnerIncompatible {
        suite: suite.into(),
        message: format!("{}: {}", out.status, clean_line(stderr.lines().next().unwrap_or(""))),
    })
}

/// A `Write` that hands the bytes to an async receiver in [`CHUNK_BYTES`] pieces; blocks while
/// [`CHUNKS_IN_FLIGHT`] are waiting, so tar never runs ahead of the upload.
struct ChannelWriter {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    sent: Arc<std::sync::atomic::AtomicU64>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES)));
        let n = chunk.len() as u64;
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "Docker stopped reading"))?;
        self.sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK_BYTES - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Streams `root` as a tar: a channel of chunks to give to Docker, the count of bytes sent, and
/// the writing thread. A write error ends the stream with that error, so the import fails (and
/// no half image is ever tagged).
pub fn tar_stream(
    root: PathBuf,
) -> (tokio_stream_shim::ReceiverStream, Arc<std::sync::atomic::AtomicU64>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = ChannelWriter { buf: Vec::with_capacity(CHUNK_BYTES), tx: tx.clone(), sent: sent.clone() };
    let handle = tokio::task::spawn_blocking(move || {
        let mut b = tar::Builder::new(writer);
        let result =
            append_tree(&mut b, &root, Path::new("")).and_then(|()| b.into_inner()).and_then(|mut w| {
                w.flush()?;
                Ok(())
            });
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    });
    (tokio_stream_shim::ReceiverStream(rx), sent, handle)
}

/// A `Stream` over an mpsc receiver (tokio-stream's wrapper, without the extra crate).
pub mod tokio_stream_shim {
    use bytes::Bytes;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Yields what the tar writer sends.
    pub struct ReceiverStream(pub tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

    impl futures_util::Stream for ReceiverStream {
        type Item = Result<Bytes, std::io::Error>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
}

/// Top-level directories whose contents are the kernel's or Docker's, never the image's.
const EMPTY_IN_IMAGE: [&str; 3] = ["proc", "sys", "dev"];

/// Appends `root/rel` recursively: directories, regular files and symlinks with their owner,
/// mode and time; device nodes, sockets and fifos are skipped (Docker provides `/dev`). Hard
/// links become copies (a few small files). Entries are sorted, so the archive is stable.
fn append_tree<W: Write>(b: &mut tar::Builder<W>, root: &Path, rel: &Path) -> std::io::Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = rel.join(entry.file_name());
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        let ft = meta.file_type();
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, &name, std::io::empty())?;
            let top_level_special =
                rel.as_os_str().is_empty() && EMPTY_IN_IMAGE.iter().any(|s| entry.file_name() == *s);
            if !top_level_special {
                append_tree(b, root, &name)?;
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path)?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, &name, &target)?;
        } else if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(meta.size());
            let f = std::fs::File::open(&path)?;
            // A file that changed size mid-read would corrupt the archive: read exactly `size`.
            b.append_data(&mut h, &name, f.take(meta.size()))?;
        }
    }
    Ok(())
}

/// Builds the standard root filesystem for `recipe` under a fresh directory in `work_dir`.
/// The caller streams it to Docker while the returned [`BuildDir`] lives; dropping it removes
/// the tree. Checks root and debootstrap first, so those errors come at once.
pub async fn build_rootfs(
    recipe: &Recipe,
    work_dir: &Path,
    progress: &Progress,
) -> Result<(BuildDir, PathBuf), StandardError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(StandardError::NotRoot);
    }
    let tool = find_debootstrap(std::env::var_os("PATH").as_deref()).ok_or(StandardError::NoDebootstrap)?;
    std::fs::create_dir_all(work_dir).map_err(io_err(format!("creating {}", work_dir.display())))?;
    let dir = BuildDir::create(work_dir)?;
    let root = dir.path().join("rootfs");
    progress.set("debootstrap: starting");
    debootstrap(&tool, recipe, &root, progress).await?;
    tracing::info!(seconds = progress.started.elapsed().as_secs(), "debootstrap finished");
    progress.set("adding the runner");
    let (r, runner, suite) = (root.clone(), recipe.runner.clone(), recipe.suite.clone());
    tokio::task::spawn_blocking(move || {
        finish_rootfs(&r, &runner)?;
        check_runner_starts(&r, &suite)
    })
    .await
    .map_err(|e| StandardError::Io {
        what: "finishing the root filesystem".into(),
        message: e.to_string(),
    })??;
    if !mounts_under(&root).is_empty() {
        return Err(StandardError::Io {
            what: "after debootstrap".into(),
            message: format!("something is still mounted under {}", root.display()),
        });
    }
    Ok((dir, root))
}

/// Takes the host-wide build lock (`<work_dir>/nanoclaw-standard.lock`): two services (or two
/// test processes) asking for the same image at once build it once — the second finds it after
/// the lock. Blocking; released when the file is dropped.
pub fn lock_builds(work_dir: &Path) -> Result<std::fs::File, StandardError> {
    std::fs::create_dir_all(work_dir).map_err(io_err(format!("creating {}", work_dir.display())))?;
    let path = work_dir.join("nanoclaw-standard.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    f.lock().map_err(io_err(format!("locking {}", path.display())))?;
    Ok(f)
}

/// Reads debootstrap-style progress from a reader (kept for tests of [`clean_line`]).
#[cfg(test)]
fn steps(r: impl std::io::BufRead) -> Vec<String> {
    std::io::BufRead::lines(r)
        .map_while(Result::ok)
        .map(|l| clean_line(&l))
        .filter_map(|l| l.strip_prefix("I: ").map(String::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_changes_with_every_input() {
        let base = Recipe {
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            runner_sha256: "aa".into(),
            runner: PathBuf::from("/x"),
        };
        let tag = base.tag();
        assert!(tag.starts_with(TAG_PREFIX) && tag.len() == TAG_PREFIX.len() + 12, "{tag}");
        assert_eq!(tag, base.clone().tag(), "deterministic");
        let others = [
            Recipe { suite: "trixie".into(), ..base.clone() },
            Recipe { mirror: "http://ftp.de.debian.org/debian".into(), ..base.clone() },
            Recipe { runner_sha256: "ab".into(), ..base.clone() },
        ];
        for o in others {
            assert_ne!(o.tag(), tag, "{o:?}");
        }
        // The runner's path is not content: moving it keeps the image.
        assert_eq!(Recipe { runner: PathBuf::from("/y"), ..base.clone() }.tag(), tag);
    }

    #[test]
    fn host_sources_are_read_in_both_formats() {
        let deb822 = "Types: deb\n# http://snapshot.debian.org/archive/debian/2025\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\nTypes: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\nEnabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\n";
        assert_eq!(
            parse_deb822(deb822),
            vec![
                (
                    "http://deb.debian.org/debian".to_string(),
                    vec!["bookworm".to_string(), "bookworm-updates".to_string()]
                ),
                ("http://deb.debian.org/debian-security".to_string(), vec!["bookworm-security".to_string()]),
            ]
        );
        let one = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] https://packages.example/apt stable main\ndeb-src http://x/debian bookworm main\ndeb http://ftp.de.debian.org/debian bookworm main # eu\n";
        assert_eq!(
            parse_one_line(one),
            vec![
                ("https://packages.example/apt".to_string(), vec!["stable".to_string()]),
                ("http://ftp.de.debian.org/debian".to_string(), vec!["bookworm".to_string()]),
            ]
        );
    }

    #[test]
    fn os_release_codename_is_read_with_or_without_quotes() {
        assert_eq!(os_release_codename("NAME=x\nVERSION_CODENAME=bookworm\n").as_deref(), Some("bookworm"));
        assert_eq!(os_release_codename("VERSION_CODENAME=\"trixie\"").as_deref(), Some("trixie"));
        assert_eq!(os_release_codename("VERSION_CODENAME=\nID=arch"), None);
    }

    #[test]
    fn settings_are_validated_before_they_reach_debootstrap() {
        assert!(valid_suite("bookworm") && valid_suite("noble") && valid_suite("stable-updates"));
        for bad in ["", "-x", "Bookworm", "a b", "../x", &"a".repeat(65)] {
            assert!(!valid_suite(bad), "{bad:?}");
        }
        assert!(valid_mirror("http://deb.debian.org/debian") && valid_mirror("https://m.example/debian/"));
        for bad in ["ftp://x/debian", "http://", "http://x/a b", "--foreign", "http://x/\n"] {
            assert!(!valid_mirror(bad), "{bad:?}");
        }
        let e = Recipe::resolve(
            &StandardSettings { debian_suite: Some("x y".into()), ..Default::default() },
            Path::new("/bin/true"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("debian_suite"), "{e}");
    }

    #[test]
    fn a_missing_debootstrap_names_the_install_command() {
        let empty = tempfile::tempdir().unwrap();
        let found = find_debootstrap(Some(empty.path().as_os_str()));
        // This machine may have it in /usr/sbin; the error text is what a user without it sees.
        if found.is_none() {
            assert!(!Path::new("/usr/sbin/debootstrap").exists());
        }
        assert_eq!(
            StandardError::NoDebootstrap.to_string(),
            "the standard image needs debootstrap: apt-get install debootstrap"
        );
        assert!(StandardError::NotRoot.to_string().contains("root"));
        assert!(StandardError::NotRoot.to_string().contains("image_tier"));
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/var/tmp/a\\040b"), "/var/tmp/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
        assert_eq!(unescape_mountinfo("/big\\777/é\\134"), "/big\\777/é\\");
    }

    #[test]
    fn progress_steps_come_from_info_lines() {
        let out = "I: Retrieving InRelease \nW: warn\nI: Extracting bash...\x1b[0m\n";
        assert_eq!(steps(out.as_bytes()), vec!["Retrieving InRelease", "Extracting bash...[0m"]);
    }

    #[test]
    fn the_tree_is_streamed_as_a_tar_without_device_contents() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("dev/pts")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/tool"), vec![7u8; 600_000]).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        std::fs::write(root.join("dev/pts/junk"), b"x").unwrap();
        let bytes = rt.block_on(async {
            use futures_util::StreamExt;
            let (mut stream, sent, handle) = tar_stream(root.clone());
            let mut all = Vec::new();
            while let Some(chunk) = stream.next().await {
                all.extend_from_slice(&chunk.unwrap());
            }
            handle.await.unwrap();
            assert_eq!(sent.load(std::sync::atomic::Ordering::Relaxed), all.len() as u64);
            all
        });
        let mut archive = tar::Archive::new(bytes.as_slice());
        let names: Vec<String> =
            archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert!(names.contains(&"usr/bin/tool".to_string()), "{names:?}");
        assert!(names.contains(&"bin".to_string()));
        assert!(names.contains(&"dev".to_string()));
        assert!(!names.iter().any(|n| n.starts_with("dev/")), "{names:?}");
    }
}
