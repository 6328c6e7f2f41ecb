//! Files that hold secrets (the agent's state, `data/cluster.env`, `data/operator.key`, keys,
//! tokens, backups): written readable only by their owner (mode 0600), created with
//! `O_EXCL|O_NOFOLLOW` (never through a symbolic link someone planted, never over a file that
//! appeared meanwhile), through a temporary file, fsync and rename, so a crash never leaves half
//! a file.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` with mode 0600, atomically.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A temporary file left by a crash is ours to replace; anything else at that name is not
    // followed (O_NOFOLLOW) and not reused (O_EXCL).
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
    let mut file = open_new(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes `bytes` to `path`, which must not exist yet, with mode 0600 (a key or token made once).
pub fn create_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = open_new(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Creates `path` for writing: mode 0600, `O_EXCL`, `O_NOFOLLOW`.
pub fn open_new(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}
