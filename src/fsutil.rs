//! Small file-system helpers: the data dir created 0700, keel's files created 0600 (set
//! explicitly, whatever the umask), secret files written durably, and random bytes.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of every file keel creates: read and write for keel's user alone.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// The mode of a data dir keel creates: keel's user alone may list or enter it.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents) when it does not exist, the directory itself with mode
/// 0700 whatever the umask. An existing directory is left as it is (`keel doctor` reports a
/// looser mode).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
}

/// Creates `path` empty with mode 0600 whatever the umask; fails if it already exists.
pub fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))?;
    Ok(file)
}

/// Creates `path` with mode 0600 holding `contents`, synced to disk together with its directory.
/// Fails if the file already exists, so a secret is never silently replaced.
pub fn create_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = create_private_file(path)?;
    file.write_all(contents)?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The permission bits of `path` (e.g. `0o600`).
pub fn mode_of(path: &Path) -> std::io::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

/// Fills a buffer of `N` bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the operating system's random source is unavailable");
    buf
}
