//! Doctor's checks of the data dir: that it exists and is writable by this user, the free disk
//! space under it, the modes of the secret files in it, and of the directory and database.

use std::path::Path;

use super::{Check, DISK_FAIL_BYTES, DISK_WARN_BYTES, Status};
use crate::audit::SIGNING_KEY_FILE;
use crate::auth::{INITIAL_ADMIN_KEY_FILE, KEY_HASH_SECRET_FILE};
use crate::exec::seal::SNAPSHOT_KEY_FILE;

pub(super) fn uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub(super) fn check_data_dir(dir: &Path) -> (Check, bool) {
    const NAME: &str = "data_dir";
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
            Check::new(NAME, Status::Warn, format!("{shown} does not exist yet")).hint(format!(
                "`keel serve` creates it on first start; or create it now: install -d -m 0700 {shown}"
            )),
            false,
        ),
        Err(e) => (
            Check::new(NAME, Status::Fail, format!("cannot look at {shown}: {e}")).hint(
                "run doctor as the user keel runs as (packaged: sudo -u keel, or root)",
            ),
            false,
        ),
        Ok(meta) if !meta.is_dir() => (
            Check::new(NAME, Status::Fail, format!("{shown} is not a directory")).hint(format!(
                "point data_dir (KEEL_DATA_DIR, --data-dir) at a directory, or move {shown} away"
            )),
            false,
        ),
        Ok(_) => {
            let probe = tempfile::Builder::new()
                .prefix(".keel-doctor-")
                .tempfile_in(dir);
            match probe {
                Ok(_) => (
                    Check::new(
                        NAME,
                        Status::Ok,
                        format!("{shown} exists and is writable by uid {}", uid()),
                    ),
                    true,
                ),
                Err(e) => (
                    Check::new(
                        NAME,
                        Status::Fail,
                        format!("{shown} is not writable by uid {}: {e}", uid()),
                    )
                    .hint(format!(
                        "give keel's user the directory (chown -R keel:keel {shown} && chmod 0700 {shown}), or run doctor as that user"
                    )),
                    true,
                ),
            }
        }
    }
}

/// Free bytes for unprivileged users on the file system holding `path`.
pub(super) fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is a valid NUL-terminated string and stat points to writable memory of
    // the right type; statvfs fills it completely when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so the struct is initialised.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (u32 on some, u64 on others).
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    let (blocks, size) = (stat.f_bavail as u64, stat.f_frsize as u64);
    Ok(blocks.saturating_mul(size))
}

/// The status for `free` bytes of free space.
pub fn disk_status(free: u64) -> Status {
    if free < DISK_FAIL_BYTES {
        Status::Fail
    } else if free < DISK_WARN_BYTES {
        Status::Warn
    } else {
        Status::Ok
    }
}

pub(super) fn human_bytes(n: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    if n as f64 >= GIB {
        format!("{:.1} GiB", n as f64 / GIB)
    } else {
        format!("{:.1} MiB", n as f64 / MIB)
    }
}

pub(super) fn check_disk(dir: &Path) -> Check {
    const NAME: &str = "disk_space";
    // The data dir itself, or the nearest parent that exists (before the first start).
    let Some(existing) = dir.ancestors().find(|p| p.is_dir()) else {
        return Check::new(NAME, Status::Skip, "no existing directory to measure");
    };
    match free_bytes(existing) {
        Ok(free) => {
            let status = disk_status(free);
            let message = format!(
                "{} free on the file system holding {}",
                human_bytes(free),
                existing.display()
            );
            let check = Check::new(NAME, status, message);
            match status {
                Status::Ok | Status::Skip => check,
                Status::Warn | Status::Fail => check.hint(format!(
                    "keel stops writing when the disk is full: free space there (warn below {}, fail below {})",
                    human_bytes(DISK_WARN_BYTES),
                    human_bytes(DISK_FAIL_BYTES)
                )),
            }
        }
        Err(e) => Check::new(
            NAME,
            Status::Warn,
            format!("cannot measure free space at {}: {e}", existing.display()),
        ),
    }
}

pub(super) fn check_secret_files(dir: &Path, dir_exists: bool) -> Check {
    const NAME: &str = "secret_files";
    if !dir_exists {
        return Check::new(NAME, Status::Skip, "no data dir");
    }
    let mut fine = Vec::new();
    let mut wrong = Vec::new();
    let mut unreadable = Vec::new();
    for file in [
        SIGNING_KEY_FILE,
        KEY_HASH_SECRET_FILE,
        SNAPSHOT_KEY_FILE,
        INITIAL_ADMIN_KEY_FILE,
    ] {
        let path = dir.join(file);
        match crate::fsutil::mode_of(&path) {
            Ok(mode) if mode & 0o077 == 0 => fine.push(file),
            Ok(mode) => wrong.push((path, mode)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => unreadable.push(format!("{}: {e}", path.display())),
        }
    }
    if !wrong.is_empty() {
        let message = wrong
            .iter()
            .map(|(path, mode)| {
                format!(
                    "{} has mode {mode:04o} (must be 0600: readable by keel's user alone)",
                    path.display()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let paths = wrong
            .iter()
            .map(|(path, _)| path.display().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        return Check::new(NAME, Status::Fail, message).hint(format!("chmod 600 {paths}"));
    }
    if !unreadable.is_empty() {
        return Check::new(
            NAME,
            Status::Fail,
            format!("cannot inspect {}", unreadable.join("; ")),
        )
        .hint("run doctor as root or as keel's user");
    }
    if fine.is_empty() {
        return Check::new(
            NAME,
            Status::Ok,
            "no secret files yet (keel creates them on first start)",
        );
    }
    let mut message = format!("{}: mode 0600", fine.join(", "));
    if fine.contains(&INITIAL_ADMIN_KEY_FILE) {
        message.push_str(&format!(
            " ({INITIAL_ADMIN_KEY_FILE} is still there: store the key safely, then delete the file)"
        ));
    }
    Check::new(NAME, Status::Ok, message)
}

/// Warns when the data dir or the database can be read by other users: keel creates them 0700
/// and 0600, so a looser mode was set by hand or by an older keel.
pub(super) fn check_file_modes(dir: &Path, database: &Path, dir_exists: bool) -> Check {
    const NAME: &str = "file_modes";
    if !dir_exists {
        return Check::new(NAME, Status::Skip, "no data dir");
    }
    let mut loose = Vec::new();
    let mut fine = Vec::new();
    for (path, wanted) in [
        (dir, crate::fsutil::PRIVATE_DIR_MODE),
        (database, crate::fsutil::PRIVATE_FILE_MODE),
    ] {
        match crate::fsutil::mode_of(path) {
            Ok(mode) if mode & 0o077 == 0 => fine.push(format!("{} {mode:04o}", path.display())),
            Ok(mode) => loose.push((path, mode, wanted)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Check::new(
                    NAME,
                    Status::Warn,
                    format!("cannot inspect {}: {e}", path.display()),
                )
                .hint("run doctor as root or as keel's user");
            }
        }
    }
    if loose.is_empty() {
        return Check::new(NAME, Status::Ok, fine.join(", "));
    }
    let message = loose
        .iter()
        .map(|(path, mode, wanted)| {
            format!(
                "{} has mode {mode:04o}: other users may read it (keel creates it {wanted:04o})",
                path.display()
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let hint = loose
        .iter()
        .map(|(path, _, wanted)| format!("chmod {wanted:o} {}", path.display()))
        .collect::<Vec<_>>()
        .join(" && ");
    Check::new(NAME, Status::Warn, message).hint(hint)
}
