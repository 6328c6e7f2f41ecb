//! Files that hold secrets (the agent's state, `data/cluster.env`, `data/operator.key`): written
//! readable only by their owner (mode 0600), through a temporary file, fsync and rename, so a
//! crash never leaves half a file.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` with mode 0600, atomically.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    // An existing temporary file keeps its old mode: set it explicitly.
    #[cfg(unix)]
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
