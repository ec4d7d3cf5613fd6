//! [`FileDevice`]: a regular file or a block device, on the io_uring or the
//! pread/pwrite engine, with O_DIRECT where the file allows it.
//!
//! Owns: opening (creation of sparse files, growing, probing O_DIRECT and io_uring),
//! routing each request to the O_DIRECT or the buffered descriptor, the fallbacks
//! between engines, discard, and the status text.
//! May not touch: anything above the block layer; the ring mechanics live in `uring.rs`,
//! the raw system calls in `sys.rs`.
//!
//! Errors at open time name the path. I/O errors keep the OS error code in
//! [`BlockError::Io`] (upper layers map errno values to SCSI sense) and are logged with
//! the path.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::AtomicBool;

use crate::sys;
use crate::uring::{RingPool, UringReq};
use crate::{check_range, BlockDevice, BlockError, BlockResult, EngineKind, IoBuf, IoOp};

/// Which engine [`FileDevice::open`] should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnginePreference {
    /// io_uring if the kernel allows it, else pread/pwrite.
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// pread/pwrite.
    Sync,
}

impl FromStr for EnginePreference {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(Self::Uring),
            "sync" | "pread" | "pread/pwrite" => Ok(Self::Sync),
            other => Err(format!(
                "unknown I/O engine {other:?} (expected auto, uring or sync)"
            )),
        }
    }
}

impl fmt::Display for EnginePreference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Uring => "uring",
            Self::Sync => "sync",
        })
    }
}

/// Whether [`FileDevice::open`] should use O_DIRECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirectPreference {
    /// O_DIRECT if the file system accepts it, else buffered I/O.
    #[default]
    Auto,
    /// O_DIRECT or fail.
    On,
    /// Buffered I/O through the page cache.
    Off,
}

impl FromStr for DirectPreference {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "on" | "true" | "yes" => Ok(Self::On),
            "off" | "false" | "no" => Ok(Self::Off),
            other => Err(format!(
                "unknown O_DIRECT setting {other:?} (expected auto, on or off)"
            )),
        }
    }
}

impl fmt::Display for DirectPreference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        })
    }
}

/// Options for [`FileDevice::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOptions {
    /// Open read-only; writes and discards fail with [`BlockError::ReadOnly`].
    pub read_only: bool,
    /// Create the file (sparse) if it is missing and grow it to this size if it is
    /// smaller. An existing file larger than this is an error (never shrunk); a block
    /// device with this set is an error.
    pub create_size_bytes: Option<u64>,
    /// Logical block size; default 512 for files, the device's sector size for block
    /// devices.
    pub logical_block_size: Option<u32>,
    /// I/O engine.
    pub engine: EnginePreference,
    /// O_DIRECT.
    pub direct: DirectPreference,
    /// `true` (default): writes may complete from the page cache / device cache and
    /// `flush()` makes them durable. `false`: the file is opened with O_DSYNC and every
    /// completed write is durable.
    pub write_cache: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            create_size_bytes: None,
            logical_block_size: None,
            engine: EnginePreference::Auto,
            direct: DirectPreference::Auto,
            write_cache: true,
        }
    }
}

/// Entries per io_uring submission queue.
const RING_ENTRIES: u32 = 64;
/// Upper bound on rings per device.
const MAX_RINGS: usize = 16;

enum Engine {
    Uring(RingPool),
    Sync,
}

/// A block device backed by a regular file or a block device node.
///
/// A block device node is opened with O_EXCL: one that is mounted, or already open
/// through another `FileDevice`, is refused (EBUSY).
pub struct FileDevice {
    path: PathBuf,
    /// Main descriptor: O_DIRECT when `direct`.
    file: File,
    /// Buffered descriptor for requests O_DIRECT cannot take (only when `direct`).
    buffered: Option<File>,
    is_block_device: bool,
    size_bytes: u64,
    logical_block_size: u32,
    physical_block_size: u32,
    read_only: bool,
    write_cache: bool,
    /// O_DIRECT alignment of buffer addresses.
    dio_mem_align: usize,
    /// O_DIRECT alignment of offsets and lengths.
    dio_offset_align: u64,
    engine: Engine,
    pwritev2_ok: AtomicBool,
}

impl fmt::Debug for FileDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileDevice")
            .field("path", &self.path)
            .field("size_bytes", &self.size_bytes)
            .field("logical_block_size", &self.logical_block_size)
            .field("engine", &self.engine())
            .field("direct", &self.direct_io())
            .field("write_cache", &self.write_cache)
            .field("read_only", &self.read_only)
            .finish()
    }
}

fn path_err(path: &Path, what: &str, err: io::Error) -> BlockError {
    BlockError::Open {
        path: path.to_owned(),
        reason: format!("{what}: {err}"),
    }
}

fn invalid(path: &Path, msg: String) -> BlockError {
    BlockError::Open {
        path: path.to_owned(),
        reason: msg,
    }
}

fn valid_block_size(bs: u32) -> bool {
    bs.is_power_of_two() && (512..=65536).contains(&bs)
}

/// Open a descriptor. `exclusive` (block devices only) claims the device with O_EXCL,
/// so a device that is mounted or claimed by another exclusive user is refused.
fn open_fd(
    path: &Path,
    read_only: bool,
    dsync: bool,
    direct: bool,
    exclusive: bool,
) -> io::Result<File> {
    let mut flags = 0;
    if exclusive {
        flags |= libc::O_EXCL;
    }
    if dsync {
        flags |= libc::O_DSYNC;
    }
    if direct {
        flags |= libc::O_DIRECT;
    }
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(flags)
        .open(path)
}

/// Outcome of a probe read through O_DIRECT or io_uring.
fn probe_read_direct(fd: RawFd, len: usize) -> io::Result<()> {
    let mut buf = IoBuf::with_capacity(len);
    buf.resize(len);
    sys::pread_full(fd, &mut buf, 0)
}

impl FileDevice {
    /// Open (and with `create_size_bytes`, create or grow) a file or block device.
    pub fn open(path: impl AsRef<Path>, opts: &FileOptions) -> BlockResult<FileDevice> {
        let path = path.as_ref();
        if let Some(bs) = opts.logical_block_size {
            if !valid_block_size(bs) {
                return Err(invalid(
                    path,
                    format!("logical block size {bs} is not a power of two in 512..=65536"),
                ));
            }
        }

        // Create or grow a regular file first, through a plain descriptor.
        let meta = match std::fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(path_err(path, "stat", e)),
        };
        match (&meta, opts.create_size_bytes) {
            (None, None) => {
                return Err(path_err(
                    path,
                    "opening",
                    io::Error::from(io::ErrorKind::NotFound),
                ))
            }
            (None, Some(want)) => {
                if opts.read_only {
                    return Err(invalid(
                        path,
                        "does not exist and a read-only device cannot create it".into(),
                    ));
                }
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|e| path_err(path, "creating", e))?;
                f.set_len(want)
                    .map_err(|e| path_err(path, "setting the size of the new file", e))?;
                tracing::info!(path = %path.display(), size_bytes = want, "created sparse backing file");
            }
            (Some(m), Some(want)) => {
                if m.file_type().is_block_device() {
                    return Err(invalid(
                        path,
                        "is a block device: refusing to create or resize it (do not set a create size)".into(),
                    ));
                }
                if !m.is_file() {
                    return Err(invalid(
                        path,
                        "is neither a regular file nor a block device".into(),
                    ));
                }
                if m.len() > want {
                    return Err(invalid(
                        path,
                        format!(
                            "existing file is {} bytes, larger than the requested {want}: refusing to shrink it",
                            m.len()
                        ),
                    ));
                }
                if m.len() < want {
                    if opts.read_only {
                        return Err(invalid(
                            path,
                            format!(
                                "existing file is {} bytes, smaller than the requested {want}, and a read-only device cannot grow it",
                                m.len()
                            ),
                        ));
                    }
                    let f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(|e| path_err(path, "opening to grow", e))?;
                    f.set_len(want)
                        .map_err(|e| path_err(path, "growing the file", e))?;
                    tracing::info!(path = %path.display(), from = m.len(), to = want, "grew backing file");
                }
            }
            (Some(m), None) => {
                if !m.is_file() && !m.file_type().is_block_device() {
                    return Err(invalid(
                        path,
                        "is neither a regular file nor a block device".into(),
                    ));
                }
            }
        }

        let dsync = !opts.write_cache;
        let excl = meta
            .as_ref()
            .is_some_and(|m| m.file_type().is_block_device());
        // Main descriptor, with O_DIRECT if wanted and accepted.
        let mut direct_note = String::new();
        let (file, opened_direct) = match opts.direct {
            DirectPreference::Off => (
                open_fd(path, opts.read_only, dsync, false, excl)
                    .map_err(|e| path_err(path, "opening", e))?,
                false,
            ),
            DirectPreference::On => (
                open_fd(path, opts.read_only, dsync, true, excl)
                    .map_err(|e| path_err(path, "opening with O_DIRECT", e))?,
                true,
            ),
            DirectPreference::Auto => match open_fd(path, opts.read_only, dsync, true, excl) {
                Ok(f) => (f, true),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    direct_note = format!("O_DIRECT refused at open ({e})");
                    (
                        open_fd(path, opts.read_only, dsync, false, excl)
                            .map_err(|e| path_err(path, "opening", e))?,
                        false,
                    )
                }
                Err(e) => return Err(path_err(path, "opening", e)),
            },
        };
        let mut direct = opened_direct;
        let fd = file.as_raw_fd();
        let meta = file.metadata().map_err(|e| path_err(path, "stat", e))?;
        let is_block_device = meta.file_type().is_block_device();

        // Geometry.
        let (raw_size, logical_block_size, physical_block_size) = if is_block_device {
            let size = sys::blk_size_bytes(fd).map_err(|e| path_err(path, "BLKGETSIZE64", e))?;
            let dev_lbs =
                sys::blk_logical_block_size(fd).map_err(|e| path_err(path, "BLKSSZGET", e))?;
            let dev_pbs = sys::blk_physical_block_size(fd).unwrap_or(dev_lbs);
            let lbs = match opts.logical_block_size {
                None => dev_lbs,
                Some(bs) if dev_lbs != 0 && bs >= dev_lbs && bs % dev_lbs == 0 => bs,
                Some(bs) => {
                    return Err(invalid(
                        path,
                        format!("logical block size {bs} is not a multiple of the device's sector size {dev_lbs}"),
                    ))
                }
            };
            if !valid_block_size(lbs) {
                return Err(invalid(
                    path,
                    format!("unsupported device sector size {lbs}"),
                ));
            }
            let pbs = if valid_block_size(dev_pbs) {
                dev_pbs.max(lbs)
            } else {
                lbs
            };
            (size, lbs, pbs)
        } else {
            let lbs = opts.logical_block_size.unwrap_or(512);
            let blksize = u32::try_from(meta.blksize()).unwrap_or(0);
            let pbs = if valid_block_size(blksize) {
                blksize.max(lbs)
            } else {
                lbs
            };
            (meta.len(), lbs, pbs)
        };
        let size_bytes = raw_size - raw_size % u64::from(logical_block_size);
        if size_bytes == 0 {
            return Err(invalid(
                path,
                format!(
                    "size {raw_size} bytes is smaller than one {logical_block_size}-byte block"
                ),
            ));
        }

        // O_DIRECT alignment, then a probe read of the first block(s).
        let mut dio_mem_align = logical_block_size as usize;
        let mut dio_offset_align = u64::from(logical_block_size);
        if direct {
            match sys::dio_alignment(fd) {
                Ok(Some((0, _))) | Ok(Some((_, 0))) => {
                    if opts.direct == DirectPreference::On {
                        return Err(invalid(
                            path,
                            "the file system does not support O_DIRECT for this file".into(),
                        ));
                    }
                    direct = false;
                    direct_note = "file system reports no O_DIRECT support".into();
                }
                Ok(Some((mem, off))) => {
                    dio_mem_align = mem as usize;
                    dio_offset_align = u64::from(off.max(logical_block_size));
                }
                Ok(None) | Err(_) => {}
            }
        }
        if direct {
            let probe_len = usize::try_from(dio_offset_align.min(size_bytes)).unwrap_or(4096);
            if let Err(e) = probe_read_direct(fd, probe_len) {
                if opts.direct == DirectPreference::On {
                    return Err(path_err(path, "O_DIRECT probe read", e));
                }
                direct = false;
                direct_note = format!("O_DIRECT probe read failed ({e})");
            }
        }
        let (file, buffered) = if direct {
            // Not exclusive: the main descriptor holds the claim.
            let buffered = open_fd(path, opts.read_only, dsync, false, false)
                .map_err(|e| path_err(path, "opening a buffered descriptor", e))?;
            (file, Some(buffered))
        } else if !opened_direct {
            (file, None)
        } else {
            // The main descriptor carries O_DIRECT, which we decided not to use. Close it
            // first so that the exclusive claim of a block device can be taken again.
            drop(file);
            let f = open_fd(path, opts.read_only, dsync, false, excl)
                .map_err(|e| path_err(path, "opening", e))?;
            (f, None)
        };

        // Engine.
        let mut engine_note = String::new();
        let engine = match opts.engine {
            EnginePreference::Sync => Engine::Sync,
            EnginePreference::Uring | EnginePreference::Auto => {
                match probe_uring(file.as_raw_fd(), logical_block_size) {
                    Ok(pool) => Engine::Uring(pool),
                    Err(e) if opts.engine == EnginePreference::Uring => {
                        return Err(path_err(path, "io_uring", e))
                    }
                    Err(e) => {
                        engine_note = format!("io_uring unavailable ({e})");
                        Engine::Sync
                    }
                }
            }
        };

        let dev = FileDevice {
            path: path.to_path_buf(),
            file,
            buffered,
            is_block_device,
            size_bytes,
            logical_block_size,
            physical_block_size,
            read_only: opts.read_only,
            write_cache: opts.write_cache,
            dio_mem_align: dio_mem_align.max(1),
            dio_offset_align: dio_offset_align.max(1),
            engine,
            pwritev2_ok: AtomicBool::new(true),
        };
        tracing::info!(
            path = %dev.path.display(),
            size_bytes = dev.size_bytes,
            logical_block_size = dev.logical_block_size,
            engine = %dev.engine(),
            direct = dev.direct_io(),
            direct_align = dev.dio_offset_align,
            write_cache = dev.write_cache,
            read_only = dev.read_only,
            direct_fallback = %direct_note,
            engine_fallback = %engine_note,
            "opened backing device"
        );
        Ok(dev)
    }

    /// Whether O_DIRECT is in use (for requests whose buffer, offset and length are
    /// aligned; others go through a buffered descriptor).
    pub fn direct_io(&self) -> bool {
        self.buffered.is_some()
    }

    /// The path this device was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the backing is a block device (rather than a regular file).
    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }

    /// One line for status output: path, size, engine, O_DIRECT, write cache.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}): {} bytes = {} x {} B blocks (physical {} B), engine {}, O_DIRECT {}, write cache {}{}",
            self.path.display(),
            if self.is_block_device { "block device" } else { "file" },
            self.size_bytes,
            self.size_bytes / u64::from(self.logical_block_size),
            self.logical_block_size,
            self.physical_block_size,
            self.engine(),
            if self.direct_io() { "on" } else { "off" },
            if self.write_cache { "on" } else { "off (O_DSYNC)" },
            if self.read_only { ", read-only" } else { "" },
        )
    }

    fn buffered_fd(&self) -> RawFd {
        self.buffered
            .as_ref()
            .map_or_else(|| self.file.as_raw_fd(), |f| f.as_raw_fd())
    }

    /// The descriptor for a request: O_DIRECT if everything is aligned for it.
    fn route(&self, ptr: *const u8, len: usize, offset: u64) -> RawFd {
        if self.buffered.is_some()
            && (ptr as usize).is_multiple_of(self.dio_mem_align)
            && (len as u64).is_multiple_of(self.dio_offset_align)
            && offset.is_multiple_of(self.dio_offset_align)
        {
            self.file.as_raw_fd()
        } else {
            self.buffered_fd()
        }
    }

    fn is_direct_fd(&self, fd: RawFd) -> bool {
        self.buffered.is_some() && fd == self.file.as_raw_fd()
    }

    fn io_error(&self, offset_bytes: u64, what: &str, source: io::Error) -> BlockError {
        tracing::warn!(path = %self.path.display(), offset_bytes, "{what} failed: {source}");
        BlockError::Io {
            offset_bytes,
            source,
        }
    }

    /// Read on the calling thread (pread), falling back from O_DIRECT to buffered.
    fn sync_read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let fd = self.route(buf.as_ptr(), buf.len(), offset);
        match sys::pread_full(fd, buf, offset) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.is_direct_fd(fd) => {
                sys::pread_full(self.buffered_fd(), buf, offset)
            }
            r => r,
        }
    }

    /// Write on the calling thread (pwrite), falling back from O_DIRECT to buffered.
    fn sync_write(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        // With O_DSYNC every write is already durable.
        let fua = fua && self.write_cache;
        let fd = self.route(buf.as_ptr(), buf.len(), offset);
        match sys::pwrite_full(fd, buf, offset, fua, &self.pwritev2_ok) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.is_direct_fd(fd) => {
                sys::pwrite_full(self.buffered_fd(), buf, offset, fua, &self.pwritev2_ok)
            }
            r => r,
        }
    }

    fn check_write(&self, offset: u64, len: u64) -> BlockResult<()> {
        check_range(self, offset, len)?;
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        Ok(())
    }

    /// Run one segment of reads/writes (already validated, no conflicting overlaps)
    /// through the ring pool. `idx[k]` is the op index of `reqs[k]`.
    fn run_uring_segment(
        &self,
        pool: &RingPool,
        ops: &mut [IoOp<'_>],
        idx: &[usize],
        reqs: &mut [UringReq],
        results: &mut [BlockResult<()>],
    ) {
        // SAFETY: every request points into a buffer of `ops`, which we borrow mutably
        // for the whole call; nothing else touches them until `run` returns, and `run`
        // does not return before the kernel is done with them.
        let ran = unsafe { pool.run(reqs) };
        if let Err(e) = ran {
            tracing::debug!(path = %self.path.display(), "no io_uring available ({e}); using pread/pwrite");
        }
        for (k, &i) in idx.iter().enumerate() {
            let outcome = reqs[k].result.take();
            let retry_sync = match &outcome {
                None => true, // never started (no ring)
                Some(Err(e)) => matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                ),
                Some(Ok(())) => false,
            };
            let outcome = if retry_sync {
                // Misaligned O_DIRECT or an unsupported flag: redo on the calling thread,
                // which knows the fallbacks. Reads and writes are idempotent.
                match &mut ops[i] {
                    IoOp::Read { offset_bytes, buf } => self.sync_read(buf, *offset_bytes),
                    IoOp::Write {
                        offset_bytes,
                        buf,
                        fua,
                    } => self.sync_write(buf, *offset_bytes, *fua),
                    IoOp::Flush => sys::fdatasync(self.file.as_raw_fd()),
                }
            } else {
                outcome.unwrap_or(Ok(()))
            };
            results[i] = outcome.map_err(|e| {
                let (off, what) = match &ops[i] {
                    IoOp::Read { offset_bytes, .. } => (*offset_bytes, "read"),
                    IoOp::Write { offset_bytes, .. } => (*offset_bytes, "write"),
                    IoOp::Flush => (0, "flush"),
                };
                self.io_error(off, what, e)
            });
        }
    }

    fn uring_batch(&self, pool: &RingPool, ops: &mut [IoOp<'_>], results: &mut [BlockResult<()>]) {
        let n = ops.len().min(results.len());
        let mut i = 0;
        while i < n {
            if matches!(ops[i], IoOp::Flush) {
                results[i] = self.flush();
                i += 1;
                continue;
            }
            // Gather a segment of reads/writes that may run concurrently: stop at a
            // flush or at an op overlapping an earlier one of the segment when either
            // writes, so the batch behaves as if run in order.
            let mut reqs: Vec<UringReq> = Vec::new();
            let mut idx: Vec<usize> = Vec::new();
            let mut ranges: Vec<(u64, u64, bool)> = Vec::new();
            let mut j = i;
            while j < n {
                let (offset, len, write) = match &ops[j] {
                    IoOp::Flush => break,
                    IoOp::Read { offset_bytes, buf } => (*offset_bytes, buf.len() as u64, false),
                    IoOp::Write {
                        offset_bytes, buf, ..
                    } => (*offset_bytes, buf.len() as u64, true),
                };
                let valid = if write {
                    self.check_write(offset, len)
                } else {
                    check_range(self, offset, len)
                };
                if let Err(e) = valid {
                    results[j] = Err(e);
                    j += 1;
                    continue;
                }
                if len == 0 {
                    results[j] = Ok(());
                    j += 1;
                    continue;
                }
                let conflict = ranges
                    .iter()
                    .any(|&(o, l, w)| (w || write) && offset < o + l && o < offset + len);
                if conflict {
                    break;
                }
                ranges.push((offset, len, write));
                let req = match &mut ops[j] {
                    IoOp::Read { offset_bytes, buf } => UringReq {
                        fd: self.route(buf.as_ptr(), buf.len(), *offset_bytes),
                        write: false,
                        ptr: buf.as_mut_ptr(),
                        len: buf.len(),
                        offset: *offset_bytes,
                        rw_flags: 0,
                        done: 0,
                        result: None,
                    },
                    IoOp::Write {
                        offset_bytes,
                        buf,
                        fua,
                    } => UringReq {
                        fd: self.route(buf.as_ptr(), buf.len(), *offset_bytes),
                        write: true,
                        ptr: buf.as_ptr().cast_mut(),
                        len: buf.len(),
                        offset: *offset_bytes,
                        rw_flags: if *fua && self.write_cache {
                            libc::RWF_DSYNC
                        } else {
                            0
                        },
                        done: 0,
                        result: None,
                    },
                    IoOp::Flush => break,
                };
                reqs.push(req);
                idx.push(j);
                j += 1;
            }
            if !reqs.is_empty() {
                self.run_uring_segment(pool, ops, &idx, &mut reqs, results);
            }
            i = j;
        }
    }

    /// Overwrite a range with zeros through the normal write path.
    fn write_zeros(&self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let mut zeros = IoBuf::with_capacity(CHUNK as usize);
        zeros.resize(CHUNK.min(len) as usize);
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            self.sync_write(&zeros[..n as usize], offset + done, false)?;
            done += n;
        }
        Ok(())
    }
}

/// Create a ring pool and read the first block through it, to be sure io_uring works.
fn probe_uring(fd: RawFd, block: u32) -> io::Result<RingPool> {
    let pool = RingPool::new(RING_ENTRIES, MAX_RINGS)?;
    let mut buf = IoBuf::with_capacity(block as usize);
    buf.resize(block as usize);
    let mut reqs = [UringReq {
        fd,
        write: false,
        ptr: buf.as_mut_ptr(),
        len: buf.len(),
        offset: 0,
        rw_flags: 0,
        done: 0,
        result: None,
    }];
    // SAFETY: `buf` lives until the end of this function and is not touched meanwhile.
    unsafe { pool.run(&mut reqs) }?;
    match reqs[0].result.take() {
        Some(Ok(())) => Ok(pool),
        Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
            // A misaligned O_DIRECT probe is not io_uring's fault; the request router
            // handles that case.
            Ok(pool)
        }
        Some(Err(e)) => Err(e),
        None => Err(io::Error::other("io_uring probe did not complete")),
    }
}

impl BlockDevice for FileDevice {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn logical_block_size(&self) -> u32 {
        self.logical_block_size
    }

    fn physical_block_size(&self) -> u32 {
        self.physical_block_size
    }

    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> BlockResult<()> {
        check_range(self, offset_bytes, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        // A single operation is one pread on either engine: a ring round trip
        // (submit + wait, and on some file systems a punt to an io-wq worker) costs more
        // than the system call it replaces. The ring earns its keep on batches
        // (`submit_batch`), where one submission carries many operations.
        self.sync_read(buf, offset_bytes)
            .map_err(|e| self.io_error(offset_bytes, "read", e))
    }

    fn write_at(&self, buf: &[u8], offset_bytes: u64, fua: bool) -> BlockResult<()> {
        self.check_write(offset_bytes, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        // One operation: one pwrite on either engine (see `read_at`).
        self.sync_write(buf, offset_bytes, fua)
            .map_err(|e| self.io_error(offset_bytes, "write", e))
    }

    fn flush(&self) -> BlockResult<()> {
        // fdatasync works on the inode: it covers writes through both descriptors.
        sys::fdatasync(self.file.as_raw_fd()).map_err(|e| self.io_error(0, "flush", e))
    }

    fn discard(&self, offset_bytes: u64, len_bytes: u64) -> BlockResult<()> {
        self.check_write(offset_bytes, len_bytes)?;
        if len_bytes == 0 {
            return Ok(());
        }
        let fd = self.buffered_fd();
        // On a block device, fallocate(PUNCH_HOLE) is a discard that guarantees zeros
        // (the kernel refuses it where the device cannot); BLKDISCARD alone would not
        // guarantee that later reads return zeros.
        let res = match sys::punch_hole(fd, offset_bytes, len_bytes) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
                ) =>
            {
                tracing::debug!(path = %self.path.display(), "hole punching unsupported ({e}); writing zeros");
                if self.is_block_device {
                    sys::blk_zeroout(fd, offset_bytes, len_bytes)
                        .or_else(|_| self.write_zeros(offset_bytes, len_bytes))
                } else {
                    self.write_zeros(offset_bytes, len_bytes)
                }
            }
            Err(e) => Err(e),
        };
        res.map_err(|e| self.io_error(offset_bytes, "discard", e))
    }

    fn supports_discard(&self) -> bool {
        // Regular files: holes are punched (or zeros written where the file system
        // cannot), and read back as zeros. Block devices stay fully provisioned.
        !self.is_block_device
    }

    fn provisioning_status(&self, offset_bytes: u64, len_bytes: u64) -> BlockResult<(bool, u64)> {
        check_range(self, offset_bytes, len_bytes)?;
        if self.is_block_device || len_bytes == 0 {
            return Ok((true, len_bytes));
        }
        let bs = u64::from(self.logical_block_size);
        let end = offset_bytes + len_bytes;
        let fd = self.buffered_fd();
        let seek = |off: u64, hole: bool| sys::seek_data_or_hole(fd, off, hole);
        // The end of the data extent starting at `from`, rounded up to a whole block.
        let data_end = |from: u64| -> io::Result<u64> {
            let hole = seek(from, true)?.unwrap_or(end).min(end);
            Ok(hole.div_ceil(bs).saturating_mul(bs).min(end))
        };
        let status = match seek(offset_bytes, false) {
            // SEEK_DATA/SEEK_HOLE unsupported here: everything counts as mapped.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                Ok((true, len_bytes))
            }
            Err(e) => Err(e),
            Ok(None) => Ok((false, len_bytes)),
            Ok(Some(data)) if data <= offset_bytes => {
                data_end(offset_bytes).map(|e| (true, e - offset_bytes))
            }
            Ok(Some(data)) => {
                // A hole up to `data`; whole blocks of it are deallocated, a block
                // where data starts counts as mapped.
                let hole_blocks = (data.min(end) - offset_bytes) / bs;
                if hole_blocks > 0 {
                    Ok((false, hole_blocks * bs))
                } else {
                    data_end(data).map(|e| (true, e - offset_bytes))
                }
            }
        };
        status.map_err(|e| self.io_error(offset_bytes, "seek data/hole", e))
    }

    fn write_cache_enabled(&self) -> bool {
        self.write_cache
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn engine(&self) -> EngineKind {
        match self.engine {
            Engine::Uring(_) => EngineKind::Uring,
            Engine::Sync => EngineKind::Sync,
        }
    }

    fn submit_batch(&self, ops: &mut [IoOp<'_>], results: &mut [BlockResult<()>]) {
        match &self.engine {
            Engine::Uring(pool) if ops.len() > 1 => self.uring_batch(pool, ops, results),
            _ => {
                let n = ops.len().min(results.len());
                for (op, res) in ops[..n].iter_mut().zip(results[..n].iter_mut()) {
                    *res = match op {
                        IoOp::Read { offset_bytes, buf } => self.read_at(buf, *offset_bytes),
                        IoOp::Write {
                            offset_bytes,
                            buf,
                            fua,
                        } => self.write_at(buf, *offset_bytes, *fua),
                        IoOp::Flush => self.flush(),
                    };
                }
            }
        }
    }
}
