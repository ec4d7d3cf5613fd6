//! The io_uring engine: a bounded pool of rings shared by all threads of one device.
//!
//! Owns: ring creation, submission, completion reaping, resubmission of short or
//! interrupted reads/writes, and the guarantee that no request is still in flight in the
//! kernel when a call returns (or unwinds).
//! May not touch: device policy (range checks, fd choice, fallbacks): that is `file.rs`.
//!
//! A caller leases a ring, pushes all its requests (in chunks when the submission queue
//! is full), waits for all of them with one `submit_and_wait`, and gives the ring back.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use io_uring::{opcode, types, IoUring};

use crate::sys::MAX_IO_BYTES;

/// Longest single wait for completions before the submission queue is looked at again.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// One read or write for [`RingPool::run`].
pub(crate) struct UringReq {
    /// File descriptor to operate on.
    pub fd: RawFd,
    /// Write (true) or read (false).
    pub write: bool,
    /// Start of the buffer (only read from for writes).
    pub ptr: *mut u8,
    /// Total length of the request in bytes.
    pub len: usize,
    /// Byte offset in the file.
    pub offset: u64,
    /// `rw_flags` for the SQE (e.g. `RWF_DSYNC`).
    pub rw_flags: i32,
    /// Bytes completed so far.
    pub done: usize,
    /// `None` while pending, then the outcome.
    pub result: Option<io::Result<()>>,
}

impl UringReq {
    fn entry(&self, user_data: u64) -> io_uring::squeue::Entry {
        let want = (self.len - self.done).min(MAX_IO_BYTES) as u32;
        let off = self.offset + self.done as u64;
        // The pointer arithmetic stays inside the caller's buffer (done < len).
        let ptr = self.ptr.wrapping_add(self.done);
        let fd = types::Fd(self.fd);
        if self.write {
            opcode::Write::new(fd, ptr.cast_const(), want)
                .offset(off)
                .rw_flags(self.rw_flags)
                .build()
                .user_data(user_data)
        } else {
            opcode::Read::new(fd, ptr, want)
                .offset(off)
                .rw_flags(self.rw_flags)
                .build()
                .user_data(user_data)
        }
    }

    /// Account for one completion; returns true if the request must be resubmitted.
    fn complete(&mut self, res: i32) -> bool {
        if res < 0 {
            let errno = -res;
            if errno == libc::EINTR || errno == libc::EAGAIN {
                return true;
            }
            self.result = Some(Err(io::Error::from_raw_os_error(errno)));
            return false;
        }
        if res == 0 {
            if self.write {
                self.result = Some(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "io_uring write completed with no bytes",
                )));
            } else {
                // End of file inside the device: the rest reads as zeros.
                let rest = self.len - self.done;
                // SAFETY: the caller of `RingPool::run` guarantees `ptr` is valid for
                // `len` writable bytes for reads; [done, len) is inside it, and the
                // kernel no longer touches it (this request has completed).
                unsafe { self.ptr.add(self.done).write_bytes(0, rest) };
                self.done = self.len;
                self.result = Some(Ok(()));
            }
            return false;
        }
        self.done += res as usize;
        if self.done >= self.len {
            self.result = Some(Ok(()));
            false
        } else {
            true
        }
    }
}

struct PoolState {
    idle: Vec<IoUring>,
    created: usize,
}

/// A bounded pool of io_uring instances.
pub(crate) struct RingPool {
    state: Mutex<PoolState>,
    available: Condvar,
    entries: u32,
    max_rings: usize,
}

impl std::fmt::Debug for RingPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingPool")
            .field("entries", &self.entries)
            .field("max_rings", &self.max_rings)
            .finish()
    }
}

impl RingPool {
    /// Create a pool and its first ring (so that a kernel without io_uring is detected
    /// here, not on the first I/O).
    pub(crate) fn new(entries: u32, max_rings: usize) -> io::Result<Self> {
        let first = IoUring::new(entries)?;
        Ok(Self {
            state: Mutex::new(PoolState {
                idle: vec![first],
                created: 1,
            }),
            available: Condvar::new(),
            entries,
            max_rings: max_rings.max(1),
        })
    }

    fn lease(&self) -> io::Result<Lease<'_>> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(ring) = st.idle.pop() {
                return Ok(Lease {
                    pool: self,
                    ring: Some(ring),
                    inflight: 0,
                    broken: false,
                });
            }
            if st.created < self.max_rings {
                st.created += 1;
                drop(st);
                match IoUring::new(self.entries) {
                    Ok(ring) => {
                        return Ok(Lease {
                            pool: self,
                            ring: Some(ring),
                            inflight: 0,
                            broken: false,
                        })
                    }
                    Err(err) => {
                        st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                        st.created -= 1;
                        if st.created == 0 {
                            return Err(err);
                        }
                        tracing::debug!("cannot create another io_uring ({err}); waiting for one");
                        // Fall through to wait for a ring that exists.
                    }
                }
            }
            st = self
                .available
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Run all pending requests (those with `result == None`) to completion and fill in
    /// their results. Returns `Err` only if no ring could be had at all (then no request
    /// was started and all results are still `None`).
    ///
    /// # Safety
    ///
    /// Every `reqs[i].ptr` must be valid for `reqs[i].len` bytes (writable for reads) and
    /// not accessed by anyone else until this function returns.
    pub(crate) unsafe fn run(&self, reqs: &mut [UringReq]) -> io::Result<()> {
        let mut lease = self.lease()?;
        let mut queue: VecDeque<usize> = (0..reqs.len())
            .filter(|&i| reqs[i].result.is_none())
            .collect();
        let mut fatal: Option<io::Error> = None;
        loop {
            if fatal.is_none() {
                let mut pushed = 0usize;
                let ring = lease.ring_mut();
                let mut sq = ring.submission();
                while let Some(&i) = queue.front() {
                    let entry = reqs[i].entry(i as u64);
                    // SAFETY: the buffer behind the entry is valid until its completion
                    // is reaped (caller contract), and we never return or unwind before
                    // every pushed entry has completed (see `Lease::drop`).
                    if unsafe { sq.push(&entry) }.is_err() {
                        break; // submission queue full: submit this chunk first
                    }
                    queue.pop_front();
                    pushed += 1;
                }
                drop(sq);
                lease.inflight += pushed;
            } else {
                while let Some(i) = queue.pop_front() {
                    reqs[i].result = Some(Err(clone_err(fatal.as_ref())));
                }
            }
            if lease.inflight == 0 {
                break;
            }
            let want = lease.inflight;
            match lease.submit_and_wait_bounded(want) {
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::EINTR)
                            | Some(libc::EAGAIN)
                            | Some(libc::EBUSY)
                            | Some(libc::ETIME)
                    ) =>
                {
                    if err.raw_os_error() != Some(libc::EINTR) {
                        std::thread::yield_now();
                    }
                }
                Err(err) => {
                    // The ring is unusable; requests already in flight still complete
                    // (we keep waiting for them), the rest fail with this error.
                    tracing::warn!("io_uring submit failed: {err}");
                    lease.broken = true;
                    if fatal.is_none() {
                        fatal = Some(err);
                    } else {
                        // Waiting itself fails: let `Lease::drop` drain with back-off.
                        lease.mark_fail_remaining(reqs, fatal.as_ref());
                        break;
                    }
                }
            }
            for (user_data, res) in lease.reap() {
                let i = user_data as usize;
                if let Some(req) = reqs.get_mut(i) {
                    if req.complete(res) {
                        queue.push_back(i);
                    }
                }
            }
        }
        drop(lease);
        Ok(())
    }
}

fn clone_err(err: Option<&io::Error>) -> io::Error {
    match err {
        Some(e) => match e.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(e.kind(), e.to_string()),
        },
        None => io::Error::other("io_uring failure"),
    }
}

/// A ring taken from the pool; goes back (or is dropped if broken) on drop, after
/// every request pushed on it has completed.
struct Lease<'a> {
    pool: &'a RingPool,
    ring: Option<IoUring>,
    inflight: usize,
    broken: bool,
}

impl Lease<'_> {
    fn ring_mut(&mut self) -> &mut IoUring {
        self.ring
            .as_mut()
            .expect("a lease holds its ring until dropped")
    }

    /// Submit what is queued and wait for `want` completions, but at most
    /// [`WAIT_SLICE`]: `Err(ETIME)` then, and the caller reaps what completed and calls
    /// again (which also hands the kernel any entry it did not take the first time —
    /// an unbounded wait for entries still sitting in the submission queue never ends).
    fn submit_and_wait_bounded(&mut self, want: usize) -> io::Result<usize> {
        let ts = types::Timespec::from(WAIT_SLICE);
        let args = types::SubmitArgs::new().timespec(&ts);
        self.ring_mut().submitter().submit_with_args(want, &args)
    }

    /// Collect completions as (user_data, result) and account for them.
    fn reap(&mut self) -> Vec<(u64, i32)> {
        let ring = self.ring_mut();
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        self.inflight = self.inflight.saturating_sub(done.len());
        done
    }

    fn mark_fail_remaining(&self, reqs: &mut [UringReq], err: Option<&io::Error>) {
        for req in reqs.iter_mut().filter(|r| r.result.is_none()) {
            req.result = Some(Err(clone_err(err)));
        }
    }

    /// Wait until nothing pushed on this ring is still in flight. Memory safety depends
    /// on it: in-flight requests point into buffers the caller is about to release.
    fn drain(&mut self) {
        let mut failures = 0u32;
        while self.inflight > 0 {
            let want = self.inflight;
            if let Err(err) = self.submit_and_wait_bounded(want) {
                if !matches!(err.raw_os_error(), Some(libc::EINTR) | Some(libc::ETIME)) {
                    failures += 1;
                    if failures > 10_000 {
                        // We cannot give the buffers back while the kernel may still
                        // write into them, and we cannot wait: the only safe way out.
                        eprintln!("twinsan-blockdev: io_uring cannot be drained ({err}); aborting");
                        std::process::abort();
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let _ = self.reap();
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.drain();
        let Some(ring) = self.ring.take() else {
            return;
        };
        let mut st = self
            .pool
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.broken {
            st.created = st.created.saturating_sub(1);
            drop(ring);
        } else {
            st.idle.push(ring);
        }
        drop(st);
        self.pool.available.notify_one();
    }
}
