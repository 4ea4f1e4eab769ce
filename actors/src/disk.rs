//! The data directory on disk: its lock (one service per data directory, issue part 7), the
//! free-space floor of its filesystem and a bounded measure of how much a session's workspace
//! takes (issue part 11, "containers cannot fill the host").
//!
//! All are blocking file-system calls: from async code run them in `spawn_blocking` (or use
//! [`disk_ok_async`]). The workspace is written by an untrusted container (DESIGN §5, §6), so
//! [`workspace_usage`] never follows a symlink, never opens a file (a FIFO cannot block it),
//! counts allocated blocks (a sparse file can neither hide nor inflate its size), counts a
//! hard-linked file once, and stops at an entry cap or a deadline — a container can create
//! millions of files.

use crate::context::ServiceConfig;
use nix::fcntl::{Flock, FlockArg};
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "nanoclaw.lock";

/// An exclusive hold on a data directory: a `flock(2)` on `<data_dir>/nanoclaw.lock`, whose
/// content is the holder's PID. Released when dropped — and by the kernel when the process dies,
/// even by SIGKILL, so a crash never leaves a stale lock. The file descriptor is close-on-exec,
/// so container processes never inherit it.
#[derive(Debug)]
pub struct DataDirLock {
    /// The locked directory, as given.
    data_dir: PathBuf,
    /// The open lock file; dropping it unlocks (after `Drop::drop` has cleared the PID).
    file: Flock<File>,
}

/// Why a data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("data directory {} is in use by another nanoclaw service ({})", data_dir.display(), pid_text(*pid))]
    Held {
        /// The data directory.
        data_dir: PathBuf,
        /// The holder's PID from the lock file; `None` when it has not written it (yet).
        pid: Option<u32>,
    },
    /// The directory or the lock file could not be created, opened or locked.
    #[error("data directory {}: {source}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// `pid N`, or `pid unknown`: shared by [`LockError`] and the service's `StartError`.
pub fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}"))
}

impl DataDirLock {
    /// Creates `data_dir` (mode 0700) if needed and takes its lock without waiting, then writes
    /// this process's PID into the lock file. Blocking.
    ///
    /// Errors: [`LockError::Held`] (with the holder's PID) when another process holds it — or this
    /// process, through another `DataDirLock`; [`LockError::Io`] otherwise.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io { path, source }
        };
        std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).map_err(io(data_dir))?;
        let path = data_dir.join(LOCK_FILE);
        // No truncation on open: the file holds the current holder's PID until we own the lock.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io(&path))?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(LockError::Held {
                    data_dir: data_dir.to_path_buf(),
                    pid: read_holder_pid(&file),
                });
            }
            Err((_, errno)) => return Err(io(&path)(errno.into())),
        };
        file.set_len(0).map_err(io(&path))?;
        file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0).map_err(io(&path))?;
        Ok(DataDirLock { data_dir: data_dir.to_path_buf(), file })
    }

    /// The locked data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        // Clear the PID while still holding the lock, so nobody reads a dead holder's PID; the
        // unlock follows when `file` drops.
        let _ = self.file.set_len(0);
    }
}

/// The PID in a lock file someone else holds. The holder writes it right after taking the lock,
/// so an empty file is retried for a moment.
#[allow(clippy::disallowed_methods)] // runs on a blocking thread, never on the executor
fn read_holder_pid(file: &File) -> Option<u32> {
    for _ in 0..20 {
        let mut buf = [0u8; 32];
        let n = file.read_at(&mut buf, 0).ok()?;
        if let Some(pid) = std::str::from_utf8(&buf[..n]).ok().and_then(|s| s.trim().parse().ok()) {
            return Some(pid);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Bytes free to an unprivileged writer on the filesystem holding `path` (`statvfs`:
/// `f_bavail × f_frsize`; the blocks reserved for root are not counted).
///
/// Errors: the `statvfs` error (e.g. `path` does not exist).
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    let (available, fragment) = (u64::from(st.blocks_available()), u64::from(st.fragment_size()));
    Ok(available.saturating_mul(fragment))
}

/// Why new work is refused. Display is the one-line message for the user and the log.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The data directory's filesystem is under the `service.min_free_mb` floor.
    #[error(
        "not accepting new work: the host's disk is nearly full ({free_mib} MiB free under {path}, the floor is {floor_mib} MiB)"
    )]
    Low {
        /// The data directory.
        path: PathBuf,
        /// Free bytes, in MiB (rounded down).
        free_mib: u64,
        /// The floor (`ServiceConfig::min_free_bytes`), in MiB (rounded down).
        floor_mib: u64,
    },
    /// Free space could not be measured (the data directory is gone or unreadable); treat it like
    /// a full disk: the store and the session folders live there too.
    #[error("not accepting new work: cannot measure free disk space under {path}: {source}")]
    Unknown {
        /// The data directory.
        path: PathBuf,
        /// The `statvfs` error.
        source: std::io::Error,
    },
}

/// Checks the data directory's filesystem against the free-space floor
/// ([`ServiceConfig::min_free_bytes`]; 0 disables the check). One `statvfs`, cheap, but blocking:
/// async callers use [`disk_ok_async`] or `spawn_blocking`.
///
/// Errors: [`DiskError::Low`] under the floor, [`DiskError::Unknown`] when `statvfs` fails.
pub fn disk_ok(config: &ServiceConfig) -> Result<(), DiskError> {
    check_floor(&config.data_dir, config.min_free_bytes)
}

/// [`disk_ok`] on the blocking pool, for actors and the router.
pub async fn disk_ok_async(config: &ServiceConfig) -> Result<(), DiskError> {
    let (data_dir, floor) = (config.data_dir.clone(), config.min_free_bytes);
    tokio::task::spawn_blocking(move || check_floor(&data_dir, floor))
        .await
        .unwrap_or_else(|e| Err(DiskError::Unknown { path: config.data_dir.clone(), source: e.into() }))
}

/// [`disk_ok`] for a path and floor (bytes), blocking.
pub fn check_floor(path: &Path, floor: u64) -> Result<(), DiskError> {
    if floor == 0 {
        return Ok(());
    }
    let free = free_space(path).map_err(|source| DiskError::Unknown { path: path.to_path_buf(), source })?;
    if free < floor {
        return Err(DiskError::Low {
            path: path.to_path_buf(),
            free_mib: free / MIB,
            floor_mib: floor / MIB,
        });
    }
    Ok(())
}

const MIB: u64 = 1024 * 1024;

/// What [`workspace_usage`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Allocated bytes (`st_blocks × 512`) of every entry seen, directories included, each
    /// hard-linked file once. A lower bound when `stopped` is set.
    pub bytes: u64,
    /// Entries seen (the root excluded).
    pub entries: u64,
    /// Why the walk stopped early, if it did; then the workspace takes *at least* `bytes`.
    pub stopped: Option<Stopped>,
}

impl Usage {
    /// True when every entry was seen, so `bytes` is exact (as of the walk).
    pub fn is_complete(&self) -> bool {
        self.stopped.is_none()
    }
}

impl std::fmt::Display for Usage {
    /// `N bytes in M entries`, or `at least N bytes (…)` for a walk that stopped early.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.stopped {
            None => write!(f, "{} bytes in {} entries", self.bytes, self.entries),
            Some(why) => write!(f, "at least {} bytes ({why} after {} entries)", self.bytes, self.entries),
        }
    }
}

/// Why a workspace walk stopped before seeing every entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// `max_entries` entries were seen.
    EntryCap,
    /// The deadline passed.
    Deadline,
    /// A directory inside could not be listed (e.g. the container made it mode 000), so what is
    /// under it is not counted. A caller enforcing a quota should not read an incomplete walk as
    /// "under the quota"; the free-space floor ([`disk_ok`]) is the backstop either way.
    Unreadable,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stopped::EntryCap => "entry cap reached",
            Stopped::Deadline => "deadline passed",
            Stopped::Unreadable => "unreadable directory",
        })
    }
}

/// The workspace root itself is unusable (missing, a symlink, not a directory, unreadable).
#[derive(Debug, thiserror::Error)]
#[error("workspace {path}: {problem}")]
pub struct UsageError {
    /// The root given to [`workspace_usage`].
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

/// Measures the allocated size of the tree under `dir`, stopping after `max_entries` entries or
/// at `deadline`, whichever comes first (then [`Usage::stopped`] says why and `bytes` is a lower
/// bound).
///
/// Never follows symlinks (nor a symlink given as `dir`), never opens a file, stays on `dir`'s
/// filesystem, counts a file with several hard links once. Entries that vanish during the walk
/// are skipped. Blocking: run it in `spawn_blocking`.
///
/// Errors: [`UsageError`] when `dir` is not a readable directory.
pub fn workspace_usage(dir: &Path, max_entries: u64, deadline: Instant) -> Result<Usage, UsageError> {
    let root_err = |problem: String| UsageError { path: dir.to_path_buf(), problem };
    let root = std::fs::symlink_metadata(dir).map_err(|e| root_err(e.to_string()))?;
    if !root.file_type().is_dir() {
        return Err(root_err("not a directory (symlinks are not followed)".into()));
    }
    let first = std::fs::read_dir(dir).map_err(|e| root_err(e.to_string()))?;
    let device = root.dev();
    let mut usage = Usage { bytes: allocated(&root), entries: 0, stopped: None };
    // Hard-linked files seen, by (device, inode); bounded by max_entries like the walk itself.
    let mut linked: HashSet<(u64, u64)> = HashSet::new();
    // Depth-first with an explicit stack of open directories: no recursion, so a deep tree cannot
    // overflow the stack; at most one handle per level is open.
    let mut stack = vec![first];
    while let Some(current) = stack.last_mut() {
        let Some(entry) = current.next() else {
            stack.pop();
            continue;
        };
        if usage.entries >= max_entries {
            usage.stopped = Some(Stopped::EntryCap);
            break;
        }
        if Instant::now() >= deadline {
            usage.stopped = Some(Stopped::Deadline);
            break;
        }
        let Ok(entry) = entry else {
            usage.stopped = Some(Stopped::Unreadable);
            continue;
        };
        // lstat: the entry itself, never what a symlink points to.
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue; // removed while we walk
        };
        usage.entries += 1;
        if meta.nlink() > 1 && !meta.is_dir() && !linked.insert((meta.dev(), meta.ino())) {
            continue;
        }
        usage.bytes = usage.bytes.saturating_add(allocated(&meta));
        if meta.file_type().is_dir() && meta.dev() == device {
            match std::fs::read_dir(entry.path()) {
                Ok(children) => stack.push(children),
                Err(_) => usage.stopped = Some(Stopped::Unreadable),
            }
        }
    }
    Ok(usage)
}

/// Allocated bytes of one entry: `st_blocks` is in 512-byte units whatever the filesystem's block
/// size (stat(2)).
fn allocated(meta: &std::fs::Metadata) -> u64 {
    meta.blocks().saturating_mul(512)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_is_locked_once_and_the_error_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let lock = DataDirLock::acquire(&data).unwrap();
        assert_eq!(lock.data_dir(), data);
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let pid = std::fs::read_to_string(data.join(LOCK_FILE)).unwrap();
        assert_eq!(pid, format!("{}\n", std::process::id()));
        // A second open file description conflicts, even within one process.
        let e = DataDirLock::acquire(&data).unwrap_err();
        assert!(matches!(e, LockError::Held { pid: Some(p), .. } if p == std::process::id()), "{e:?}");
        let line = e.to_string();
        assert!(
            line.contains(&data.display().to_string())
                && line.contains(&format!("pid {}", std::process::id()))
        );
        // Dropping releases it and clears the PID.
        drop(lock);
        assert_eq!(std::fs::read_to_string(data.join(LOCK_FILE)).unwrap(), "");
        let again = DataDirLock::acquire(&data).unwrap();
        drop(again);
    }

    #[test]
    fn a_symlinked_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), data.join(LOCK_FILE)).unwrap();
        assert!(matches!(DataDirLock::acquire(&data), Err(LockError::Io { .. })));
        assert!(!dir.path().join("elsewhere").exists());
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn free_space_of_a_temp_dir_is_positive_and_of_a_missing_path_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_space(dir.path()).unwrap() > 0);
        assert!(free_space(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn disk_ok_refuses_under_the_floor_with_one_line_naming_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServiceConfig::new(dir.path(), "t");
        config.min_free_bytes = 1;
        disk_ok(&config).unwrap();
        config.min_free_bytes = u64::MAX;
        let e = disk_ok(&config).unwrap_err();
        assert!(matches!(e, DiskError::Low { .. }), "{e:?}");
        let line = e.to_string();
        assert!(!line.contains('\n') && line.contains(&dir.path().display().to_string()), "{line}");
        assert!(line.starts_with("not accepting new work"), "{line}");
        // 0 disables the check, even on a missing directory.
        config.min_free_bytes = 0;
        config.data_dir = dir.path().join("missing");
        disk_ok(&config).unwrap();
        config.min_free_bytes = 1;
        assert!(matches!(disk_ok(&config), Err(DiskError::Unknown { .. })));
    }

    #[tokio::test]
    async fn disk_ok_async_agrees_with_disk_ok() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServiceConfig::new(dir.path(), "t");
        config.min_free_bytes = u64::MAX;
        assert!(matches!(disk_ok_async(&config).await, Err(DiskError::Low { .. })));
        config.min_free_bytes = 1;
        disk_ok_async(&config).await.unwrap();
    }

    #[test]
    fn counts_written_bytes_and_nested_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
        std::fs::write(dir.path().join("a/b/c/data"), vec![7u8; 1024 * 1024]).unwrap();
        std::fs::write(dir.path().join("top"), b"x").unwrap();
        let u = workspace_usage(dir.path(), 1000, later()).unwrap();
        assert!(u.is_complete(), "{u}");
        assert_eq!(u.entries, 5, "a, b, c, data, top");
        assert!(u.bytes >= 1024 * 1024, "{u}");
        assert!(u.to_string().ends_with("entries"), "{u}");
    }

    #[test]
    fn a_sparse_file_counts_its_allocated_blocks_not_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("sparse")).unwrap();
        f.set_len(64 * 1024 * 1024 * 1024).unwrap(); // 64 GiB of holes
        drop(f);
        let u = workspace_usage(dir.path(), 1000, later()).unwrap();
        assert!(u.is_complete());
        assert_eq!(u.entries, 1);
        assert!(u.bytes < 1024 * 1024, "a hole takes no space: {u}");
    }

    #[test]
    fn a_hard_linked_file_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![1u8; 512 * 1024]).unwrap();
        for i in 0..20 {
            std::fs::hard_link(dir.path().join("big"), dir.path().join(format!("link{i}"))).unwrap();
        }
        let u = workspace_usage(dir.path(), 1000, later()).unwrap();
        assert_eq!(u.entries, 21);
        assert!(u.bytes >= 512 * 1024 && u.bytes < 2 * 512 * 1024, "{u}");
    }

    #[test]
    fn symlinks_are_never_followed_not_even_a_loop_or_one_to_outside() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("big"), vec![1u8; 2 * 1024 * 1024]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("d/loop")).unwrap();
        std::os::unix::fs::symlink("self", dir.path().join("self")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("big"), dir.path().join("bigfile")).unwrap();
        let u = workspace_usage(dir.path(), 1000, later()).unwrap();
        assert!(u.is_complete(), "{u}");
        assert_eq!(u.entries, 5, "d, loop, self, out, bigfile");
        assert!(u.bytes < 1024 * 1024, "nothing outside was counted: {u}");
        // A symlink as the root is refused, not followed.
        let e = workspace_usage(&dir.path().join("out"), 1000, later()).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn a_fifo_is_counted_without_being_opened() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o600))
            .unwrap();
        // Opening the FIFO for reading would block this test forever; the walk must not.
        let u = workspace_usage(dir.path(), 1000, later()).unwrap();
        assert!(u.is_complete());
        assert_eq!(u.entries, 1);
    }

    #[test]
    fn many_files_stop_at_the_entry_cap_with_a_lower_bound() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3000 {
            std::fs::write(dir.path().join(format!("f{i}")), b"1").unwrap();
        }
        let all = workspace_usage(dir.path(), 10_000, later()).unwrap();
        assert!(all.is_complete());
        assert_eq!(all.entries, 3000);
        let capped = workspace_usage(dir.path(), 500, later()).unwrap();
        assert_eq!(capped.stopped, Some(Stopped::EntryCap));
        assert_eq!(capped.entries, 500);
        assert!(capped.bytes > 0 && capped.bytes < all.bytes, "{capped} vs {all}");
        assert!(capped.to_string().starts_with("at least "), "{capped}");
    }

    #[test]
    fn a_passed_deadline_stops_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..10 {
            std::fs::write(dir.path().join(format!("f{i}")), b"1").unwrap();
        }
        let u = workspace_usage(dir.path(), 1000, Instant::now()).unwrap();
        assert_eq!(u.stopped, Some(Stopped::Deadline));
        assert_eq!(u.entries, 0);
    }

    #[test]
    fn a_missing_or_non_directory_root_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(workspace_usage(&dir.path().join("missing"), 10, later()).is_err());
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        assert!(workspace_usage(&dir.path().join("file"), 10, later()).is_err());
    }
}
