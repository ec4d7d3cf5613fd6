//! Thin wrappers over the Linux system calls the file backend uses (pread/pwrite loops,
//! fdatasync, fallocate, block-device ioctls, statx).
//!
//! Owns: every `libc` call of the file backend except the io_uring rings.
//! May not touch: device policy (which fd, which engine): that lives in `file.rs`.
//!
//! All functions retry on EINTR and return plain `std::io::Error`s that keep the OS
//! error code, so callers can map errno values.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// Largest single read/write system call we issue (Linux caps them at 0x7ffff000).
pub(crate) const MAX_IO_BYTES: usize = 1 << 30;

fn to_off(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

fn is_retryable(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN))
}

/// Read exactly `buf.len()` bytes at `offset`, looping on short reads and EINTR.
/// Bytes past the end of the file read as zeros.
pub(crate) fn pread_full(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let want = (buf.len() - done).min(MAX_IO_BYTES);
        let off = to_off(offset + done as u64)?;
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, exclusively borrowed buffer of at least `want` bytes
        // for the duration of the call.
        let n = unsafe { libc::pread(fd, rest.as_mut_ptr().cast(), want, off) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if is_retryable(&err) {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            // End of file inside the device (sparse file shorter than the device, or
            // truncated behind our back): the rest reads as zeros.
            rest.fill(0);
            return Ok(());
        }
        done += n as usize;
    }
    Ok(())
}

fn pwrite_once(fd: RawFd, buf: &[u8], off: libc::off_t, dsync: bool) -> io::Result<usize> {
    let n = if dsync {
        let iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `iov` describes `buf`, which stays borrowed (and so valid) for the
        // duration of the call; the kernel only reads through it.
        unsafe { libc::pwritev2(fd, &iov, 1, off, libc::RWF_DSYNC) }
    } else {
        // SAFETY: `buf` is valid for `buf.len()` bytes for the duration of the call.
        unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), off) }
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Write all of `buf` at `offset`, looping on short writes and EINTR. With `fua` the data
/// is durable on return: `pwritev2(RWF_DSYNC)` while `pwritev2_ok` holds, else
/// write + fdatasync (and `pwritev2_ok` is cleared once the kernel refuses the flag).
pub(crate) fn pwrite_full(
    fd: RawFd,
    buf: &[u8],
    offset: u64,
    fua: bool,
    pwritev2_ok: &AtomicBool,
) -> io::Result<()> {
    let mut done = 0usize;
    let mut need_sync = false;
    while done < buf.len() {
        let want = (buf.len() - done).min(MAX_IO_BYTES);
        let off = to_off(offset + done as u64)?;
        let chunk = &buf[done..done + want];
        let use_flag = fua && pwritev2_ok.load(Ordering::Relaxed);
        let n = match pwrite_once(fd, chunk, off, use_flag) {
            Ok(n) => n,
            Err(err) if is_retryable(&err) => continue,
            Err(err)
                if use_flag
                    && matches!(
                        err.raw_os_error(),
                        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
                    ) =>
            {
                // Maybe the flag is the problem: try a plain write. Only if that works
                // do we stop using the flag (EINVAL may also be an O_DIRECT misalignment).
                match pwrite_once(fd, chunk, off, false) {
                    Ok(n) => {
                        pwritev2_ok.store(false, Ordering::Relaxed);
                        tracing::debug!(
                            "pwritev2(RWF_DSYNC) refused ({err}); using write + fdatasync"
                        );
                        need_sync = true;
                        n
                    }
                    Err(err2) if is_retryable(&err2) => continue,
                    Err(err2) => return Err(err2),
                }
            }
            Err(err) => return Err(err),
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwrite wrote no bytes",
            ));
        }
        if fua && !use_flag {
            need_sync = true;
        }
        done += n;
    }
    if need_sync {
        fdatasync(fd)?;
    }
    Ok(())
}

/// fdatasync, retrying on EINTR.
pub(crate) fn fdatasync(fd: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: plain system call on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::fdatasync(fd) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// fallocate(PUNCH_HOLE | KEEP_SIZE): deallocate a range; it then reads as zeros.
pub(crate) fn punch_hole(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    let off = to_off(offset)?;
    let len = to_off(len)?;
    loop {
        // SAFETY: plain system call on a file descriptor we own; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// lseek(SEEK_DATA or SEEK_HOLE): the offset of the next data (or hole) at or after
/// `offset`; `Ok(None)` when there is none (ENXIO: no data up to the end of the file).
pub(crate) fn seek_data_or_hole(fd: RawFd, offset: u64, hole: bool) -> io::Result<Option<u64>> {
    let off = to_off(offset)?;
    let whence = if hole {
        libc::SEEK_HOLE
    } else {
        libc::SEEK_DATA
    };
    // SAFETY: plain system call on a file descriptor we own; no memory is passed. The
    // file position it moves is never used (all I/O is positioned).
    let rc = unsafe { libc::lseek(fd, off, whence) };
    if rc >= 0 {
        return Ok(Some(rc as u64));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) {
        return Ok(None);
    }
    Err(err)
}

// Block-device ioctls that libc does not export (linux/fs.h). The encoding of _IO/_IOR
// differs on a few architectures.
#[cfg(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
const IOC_READ: u32 = 2 << 29;
#[cfg(not(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
const IOC_READ: u32 = 2 << 30;

const fn ioc_io(nr: u32) -> u32 {
    (0x12 << 8) | nr
}

const fn ioc_ior(nr: u32, size: u32) -> u32 {
    IOC_READ | (size << 16) | (0x12 << 8) | nr
}

/// BLKGETSIZE64 = _IOR(0x12, 114, size_t)
const BLKGETSIZE64: u32 = ioc_ior(114, size_of::<usize>() as u32);
/// BLKZEROOUT = _IO(0x12, 127)
const BLKZEROOUT: u32 = ioc_io(127);
fn ioctl_ptr<T>(fd: RawFd, req: u32, arg: *mut T) -> io::Result<()> {
    loop {
        // SAFETY: callers pass a request number whose argument type is `T` and a pointer
        // to a live, properly sized `T` (see the wrappers below).
        let rc = unsafe { libc::ioctl(fd, req as libc::Ioctl, arg) };
        if rc >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Size of a block device in bytes.
pub(crate) fn blk_size_bytes(fd: RawFd) -> io::Result<u64> {
    let mut size: u64 = 0;
    ioctl_ptr(fd, BLKGETSIZE64, &mut size)?;
    Ok(size)
}

/// Logical sector size of a block device.
pub(crate) fn blk_logical_block_size(fd: RawFd) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    ioctl_ptr(fd, libc::BLKSSZGET as u32, &mut v)?;
    u32::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Physical sector size of a block device.
pub(crate) fn blk_physical_block_size(fd: RawFd) -> io::Result<u32> {
    let mut v: libc::c_uint = 0;
    ioctl_ptr(fd, libc::BLKPBSZGET as u32, &mut v)?;
    Ok(v)
}

/// Write zeros over a range of a block device (the kernel may unmap it instead).
pub(crate) fn blk_zeroout(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    let mut range = [offset, len];
    ioctl_ptr(fd, BLKZEROOUT, range.as_mut_ptr())
}

/// O_DIRECT alignment requirements of an open file, from statx(STATX_DIOALIGN):
/// `Ok(Some((memory_align, offset_align)))`, `Ok(Some((0, 0)))` if the file does not
/// support direct I/O, `Ok(None)` if the kernel or filesystem does not say.
pub(crate) fn dio_alignment(fd: RawFd) -> io::Result<Option<(u32, u32)>> {
    let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: the empty path with AT_EMPTY_PATH makes statx describe `fd`; `st` points to
    // writable memory large enough for a `struct statx`.
    let rc = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            st.as_mut_ptr(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if matches!(err.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) {
            return Ok(None);
        }
        return Err(err);
    }
    // SAFETY: statx succeeded and filled the structure (it was zero-initialised anyway,
    // and all-zero is a valid `struct statx`).
    let st = unsafe { st.assume_init() };
    if st.stx_mask & libc::STATX_DIOALIGN == 0 {
        return Ok(None);
    }
    Ok(Some((st.stx_dio_mem_align, st.stx_dio_offset_align)))
}
