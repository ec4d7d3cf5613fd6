//! [`IoBuf`]: a growable byte buffer whose storage is aligned to [`IoBuf::ALIGN_BYTES`],
//! so that it can be handed to O_DIRECT reads and writes without a bounce copy.
//!
//! Transports keep a few of these per connection and reuse them for every command, so
//! the hot path allocates no data buffers.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// A reusable, 4096-byte-aligned byte buffer.
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    /// Bytes `[0, init)` of the allocation have been written at some point (they hold
    /// zeros or stale data, never uninitialized memory).
    init: usize,
}

// SAFETY: IoBuf owns its allocation exclusively (like Vec<u8>); no interior sharing.
unsafe impl Send for IoBuf {}
// SAFETY: &IoBuf only gives shared read access to the bytes.
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// Alignment of the storage in bytes.
    pub const ALIGN_BYTES: usize = 4096;

    /// An empty buffer; allocates nothing.
    pub const fn new() -> Self {
        Self {
            ptr: NonNull::dangling(),
            len: 0,
            cap: 0,
            init: 0,
        }
    }

    /// An empty buffer with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Self {
        let mut b = Self::new();
        b.reserve_total(cap);
        b
    }

    /// Number of bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no bytes are in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Allocated capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Forget the contents (keeps the allocation).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Set the length to `len`; new bytes are zero. Grows the allocation if needed.
    pub fn resize(&mut self, len: usize) {
        self.reserve_total(len);
        if len > self.len {
            // SAFETY: reserve_total guaranteed cap >= len; the range [self.len, len) is
            // inside the allocation.
            unsafe {
                self.ptr
                    .as_ptr()
                    .add(self.len)
                    .write_bytes(0, len - self.len)
            };
        }
        self.len = len;
        self.init = self.init.max(len);
    }

    /// Set the length to `len` for a caller that overwrites every byte (e.g. a device
    /// read): bytes past the old length hold stale data from earlier use of this buffer
    /// or zeros, and only never-used bytes are zero-filled. Avoids clearing a large read
    /// buffer on every command.
    pub fn resize_for_overwrite(&mut self, len: usize) {
        self.reserve_total(len);
        if len > self.init {
            // SAFETY: capacity >= len; [init, len) lies inside the allocation.
            unsafe {
                self.ptr
                    .as_ptr()
                    .add(self.init)
                    .write_bytes(0, len - self.init)
            };
            self.init = len;
        }
        self.len = len;
    }

    /// Shorten to `len` bytes (no-op if already shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Append bytes.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        let new_len = self
            .len
            .checked_add(data.len())
            .expect("IoBuf length overflow");
        self.reserve_total(new_len);
        // SAFETY: capacity >= new_len; source and destination do not overlap because
        // `data` cannot borrow from `self` while `self` is mutably borrowed.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                data.len(),
            );
        }
        self.len = new_len;
        self.init = self.init.max(new_len);
    }

    /// The bytes in use.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialized bytes (or dangling with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes in use, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    fn reserve_total(&mut self, total: usize) {
        if total <= self.cap {
            return;
        }
        let new_cap = total
            .max(self.cap.saturating_mul(2))
            .next_multiple_of(Self::ALIGN_BYTES);
        let layout = Layout::from_size_align(new_cap, Self::ALIGN_BYTES).expect("IoBuf layout");
        // SAFETY: layout has non-zero size (new_cap >= total > cap >= 0, rounded up to 4096).
        let raw = unsafe { alloc::alloc(layout) };
        let Some(new_ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        if self.cap > 0 {
            // SAFETY: old allocation holds len initialized bytes; the new one is larger.
            unsafe {
                std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), new_ptr.as_ptr(), self.len);
                alloc::dealloc(
                    self.ptr.as_ptr(),
                    Layout::from_size_align_unchecked(self.cap, Self::ALIGN_BYTES),
                );
            }
        }
        self.ptr = new_ptr;
        self.cap = new_cap;
        // Only the first `len` bytes were copied into the new allocation.
        self.init = self.len;
    }
}

impl Default for IoBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        if self.cap > 0 {
            // SAFETY: allocated in reserve_total with exactly this layout.
            unsafe {
                alloc::dealloc(
                    self.ptr.as_ptr(),
                    Layout::from_size_align_unchecked(self.cap, Self::ALIGN_BYTES),
                )
            };
        }
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

impl std::ops::Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_grows_keeping_contents() {
        let mut b = IoBuf::new();
        b.extend_from_slice(b"hello");
        assert_eq!(b.as_ptr() as usize % IoBuf::ALIGN_BYTES, 0);
        b.resize(10_000);
        assert_eq!(&b[..5], b"hello");
        assert!(b[5..].iter().all(|&x| x == 0));
        assert_eq!(b.as_ptr() as usize % IoBuf::ALIGN_BYTES, 0);
        b.clear();
        assert!(b.is_empty());
        assert!(b.capacity() >= 10_000);
    }

    #[test]
    fn resize_for_overwrite_keeps_memory_initialized() {
        let mut b = IoBuf::new();
        b.resize_for_overwrite(8192);
        assert!(b.iter().all(|&x| x == 0), "never-used bytes are zero");
        b.as_mut_slice().fill(7);
        b.clear();
        b.resize_for_overwrite(4096);
        assert_eq!(b.len(), 4096);
        // Stale but initialized bytes; growing past the old capacity re-zeroes the tail.
        b.resize_for_overwrite(1 << 20);
        assert!(b[8192..].iter().all(|&x| x == 0));
        b.resize(10);
        b.resize(20);
        assert!(b[10..20].iter().all(|&x| x == 0), "resize still zero-fills");
    }
}
