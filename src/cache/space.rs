//! Disk space for a commit, claimed before HDF5 writes any of it.
//!
//! A write that fails half-way (disk full, file size limit) leaves HDF5's metadata pointing at
//! blocks that were never written, and the whole file unreadable. So each commit first checks
//! the file size limit and reserves the blocks it may take past the end of the file
//! (`fallocate` with `FALLOC_FL_KEEP_SIZE`, which leaves the file's size as it is); if either
//! fails, nothing has been written and the file is exactly as its last commit left it.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Room for `bytes` more at the end of the file at `path`, or the error a write would get
/// (`EFBIG` over the size limit, `ENOSPC` on a full disk).
pub fn claim(path: &Path, bytes: u64) -> io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let end = file.metadata()?.len();
    if end.saturating_add(bytes) > file_size_limit() {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    }
    // SAFETY: fallocate on our own open descriptor; KEEP_SIZE only reserves blocks.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, end as libc::off_t, bytes as libc::off_t) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // Filesystems without fallocate (NFS, some FUSE): the free space must do.
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) if free_bytes(&file)? >= bytes => Ok(()),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
        _ => Err(e),
    }
}

/// The soft RLIMIT_FSIZE of this process (`u64::MAX` when unlimited).
fn file_size_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into valid memory.
    if unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) } != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return u64::MAX;
    }
    limit.rlim_cur
}

fn free_bytes(file: &std::fs::File) -> io::Result<u64> {
    // SAFETY: fstatvfs writes one statvfs into valid memory.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}
