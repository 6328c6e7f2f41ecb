//! Files that hold secrets (the agent's state, `data/cluster.env`, `data/operator.key`, keys,
//! tokens, backups): written readable only by their owner (mode 0600), created with
//! `O_EXCL|O_NOFOLLOW` (never through a symbolic link someone planted, never over a file that
//! appeared meanwhile), through a temporary file, fsync, rename (or link, for a file that must
//! not exist yet) and a directory fsync, so a crash or power cut never leaves half a file. The
//! certificates `ztna cluster certs` writes go the same way, readable by all.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` with mode 0600, atomically.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // A temporary file left by a crash is ours to replace; anything else at that name is not
    // followed (O_NOFOLLOW) and not reused (O_EXCL).
    let tmp = temporary(path)?;
    let mut file = open_new(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// Writes `bytes` to `path`, which must not exist yet, with mode 0600 (a key or token made once).
pub fn create_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    create_new_mode(path, bytes, 0o600)
}

/// [`create_new`] for a file anyone may read (a certificate).
pub fn create_new_readable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    create_new_mode(path, bytes, 0o644)
}

/// Writes `bytes` to `path`, which must not exist yet, whole or not at all: into a temporary
/// file of this call's own (fsynced), then linked to `path` (which fails if `path` appeared
/// meanwhile), the directory fsynced and the temporary name removed. A crash at any point
/// leaves either no `path` or the whole file, never an empty or partial one; two processes
/// making the same file at once each write their own temporary file, and one of them wins.
/// A crash may leave a temporary file behind (`.<name>.<pid>.<random>.tmp`): never read.
fn create_new_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(format!(".{}.{}.tmp", std::process::id(), crate::secret::random_base62(8)));
    let tmp = path.with_file_name(tmp_name);
    let mut file = open_new_mode(&tmp, mode)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    crate::faults::crash_point("create-new:written");
    let linked = std::fs::hard_link(&tmp, path).and_then(|()| sync_parent(path));
    // The file is whole at `path` (or was not linked): the temporary name goes either way, and
    // failing to remove it costs a stray file, not the result.
    if let Err(e) = std::fs::remove_file(&tmp) {
        tracing::warn!("could not remove the temporary file {}: {e}", tmp.display());
    }
    linked
}

/// The temporary name `path` is written under; one a crash left behind is removed (a regular
/// file only: anything else there is not ours and is refused).
fn temporary(path: &Path) -> std::io::Result<std::path::PathBuf> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    match std::fs::symlink_metadata(&tmp) {
        Ok(meta) if meta.file_type().is_file() => std::fs::remove_file(&tmp)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a regular file", tmp.display()),
            ))
        }
        Err(_) => {}
    }
    Ok(tmp)
}

/// Creates directory `path` and any missing parents, each made durable (its parent fsynced),
/// so that what is later written and synced inside it is not lost with its name at a power cut.
pub fn create_dir_all_synced(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all_synced(parent)?;
    }
    match std::fs::create_dir(path) {
        Ok(()) => sync_parent(path),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Fsyncs the directory holding `path`, so its new name survives a power cut.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => std::fs::File::open(".")?.sync_all(),
    }
}

/// Creates `path` for writing: mode 0600, `O_EXCL`, `O_NOFOLLOW`.
pub fn open_new(path: &Path) -> std::io::Result<std::fs::File> {
    open_new_mode(path, 0o600)
}

fn open_new_mode(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode).custom_flags(libc::O_NOFOLLOW);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)
}
