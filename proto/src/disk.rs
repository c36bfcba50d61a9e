//! Free space on a disk: the coordinator's spool and a worker's scratch both stop
//! taking work before theirs runs out.

/// Whether a write failed because its disk is full or over quota: a condition of
/// the machine that passes, not of the work.
pub fn is_out_of_space(e: &std::io::Error) -> bool {
    is_out_of_space_errno(e.raw_os_error()) || matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

/// The same for an OS error number (libav reports them as `AVERROR(errno)`).
pub fn is_out_of_space_errno(errno: Option<i32>) -> bool {
    errno.is_some_and(|n| n == libc::ENOSPC || n == libc::EDQUOT)
}

/// The free bytes on the file system holding `path`, when they are fewer than
/// `more` and `reserve` together (`None`: there is room).
pub fn short_of(path: &std::path::Path, more: u64, reserve: u64) -> std::io::Result<Option<u64>> {
    let free = free_bytes(path)?;
    Ok((free < more.saturating_add(reserve)).then_some(free))
}

/// Free bytes on the file system holding `path` (what an unprivileged writer may use).
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}
