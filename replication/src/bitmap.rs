//! The dirty bitmap: one bit per [`BYTES_PER_BIT`] (4 KiB) block of replicated data; a
//! set bit means the block may differ from the peer's copy and must be resynchronized.
//!
//! Owns: the bit array, its cached weight (number of set bits, kept exact on every
//! change) and the per-page dirty marks that let [`crate::meta`] persist only the 4 KiB
//! pages that changed.
//!
//! May not touch: any I/O (persisting pages is [`crate::meta::MetaStore`]'s job), the
//! activity log, the peer.
//!
//! Invariant: bits at or past [`Bitmap::len_bits`] in the last word are always zero,
//! so [`Bitmap::words`] can be sent or written as they are and the weight is exact.

#![warn(missing_docs)]

use std::fmt;
use std::ops::Range;

use crate::types::BYTES_PER_BIT;

const WORD_BITS: u64 = 64;

/// The dirty bitmap of one replicated volume (see the module documentation).
#[derive(Clone, PartialEq, Eq)]
pub struct Bitmap {
    /// Number of valid bits.
    bits: u64,
    /// Bytes of data the bitmap covers; the last bit may cover a partial block.
    covered_bytes: u64,
    /// The bits, least-significant bit of word 0 first.
    words: Vec<u64>,
    /// Cached number of set bits.
    weight: u64,
    /// One flag per page of [`Bitmap::WORDS_PER_PAGE`] words: changed since last clean.
    dirty: Vec<bool>,
}

impl fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bitmap")
            .field("len_bits", &self.bits)
            .field("covered_bytes", &self.covered_bytes)
            .field("weight", &self.weight)
            .field("pages", &self.dirty.len())
            .field("dirty_pages", &self.dirty.iter().filter(|d| **d).count())
            .finish()
    }
}

/// Mask of bits `lo..hi` of one word (`lo < hi <= 64`).
fn span_mask(lo: u64, hi: u64) -> u64 {
    let upper = if hi >= WORD_BITS {
        u64::MAX
    } else {
        (1u64 << hi) - 1
    };
    upper & !((1u64 << lo) - 1)
}

/// `usize` index of a word or page number that is known to fit (it indexes an existing
/// vector, so it is at most `usize::MAX`).
fn idx(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Bitmap {
    /// Words per persisted page: one page is 4096 bytes on disk.
    pub const WORDS_PER_PAGE: usize = 512;
    /// Bits per persisted page (32768: one page covers 128 MiB of data).
    pub const BITS_PER_PAGE: u64 = Self::WORDS_PER_PAGE as u64 * WORD_BITS;

    /// An all-clear bitmap of `len_bits` bits (covering `len_bits` whole blocks).
    pub fn new(len_bits: u64) -> Self {
        Self::with_coverage(len_bits, len_bits.saturating_mul(BYTES_PER_BIT))
    }

    /// An all-clear bitmap covering `size_bytes` of data: `ceil(size_bytes / 4096)` bits.
    /// A partial last block is tracked by the last bit; [`Bitmap::clear_range_bytes`]
    /// treats it as fully covered by a range that reaches `size_bytes`.
    pub fn for_size_bytes(size_bytes: u64) -> Self {
        Self::with_coverage(size_bytes.div_ceil(BYTES_PER_BIT), size_bytes)
    }

    fn with_coverage(bits: u64, covered_bytes: u64) -> Self {
        let words = idx(bits.div_ceil(WORD_BITS));
        Bitmap {
            bits,
            covered_bytes,
            words: vec![0; words],
            weight: 0,
            dirty: vec![false; words.div_ceil(Self::WORDS_PER_PAGE)],
        }
    }

    /// Number of bits.
    pub fn len_bits(&self) -> u64 {
        self.bits
    }

    /// Bytes of data covered (`len_bits * 4096` unless built by [`Bitmap::for_size_bytes`]
    /// with a size that is not a multiple of 4096).
    pub fn covered_bytes(&self) -> u64 {
        self.covered_bytes
    }

    /// Number of set bits (O(1), cached).
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// Whether `bit` is set; `false` past the end.
    pub fn test(&self, bit: u64) -> bool {
        bit < self.bits && self.words[idx(bit / WORD_BITS)] & (1u64 << (bit % WORD_BITS)) != 0
    }

    /// Mask of valid bits in word `w`.
    fn valid_mask(&self, w: usize) -> u64 {
        let last = self.words.len().saturating_sub(1);
        let rem = self.bits % WORD_BITS;
        if w == last && rem != 0 {
            (1u64 << rem) - 1
        } else {
            u64::MAX
        }
    }

    /// Store `new` in word `w`, keeping weight and dirty marks; returns bits changed.
    fn store(&mut self, w: usize, new: u64) -> u64 {
        let old = self.words[w];
        if old == new {
            return 0;
        }
        self.words[w] = new;
        self.dirty[w / Self::WORDS_PER_PAGE] = true;
        let set_now = u64::from(new.count_ones());
        let set_before = u64::from(old.count_ones());
        self.weight = self.weight + set_now - set_before;
        u64::from((old ^ new).count_ones())
    }

    /// Apply `f(word, mask)` to every word overlapping bits `first..first+count`
    /// (clamped to the length); returns the number of bits changed.
    fn apply(&mut self, first: u64, count: u64, f: impl Fn(u64, u64) -> u64) -> u64 {
        let end = first.saturating_add(count).min(self.bits);
        let mut changed = 0;
        let mut bit = first;
        while bit < end {
            let base = bit - bit % WORD_BITS;
            let hi = (end - base).min(WORD_BITS);
            let mask = span_mask(bit - base, hi);
            let w = idx(base / WORD_BITS);
            changed += self.store(w, f(self.words[w], mask));
            bit = base + WORD_BITS;
        }
        changed
    }

    /// Set bits `first..first+count` (clamped to the length); returns how many were
    /// clear before.
    pub fn set_bits(&mut self, first: u64, count: u64) -> u64 {
        self.apply(first, count, |w, m| w | m)
    }

    /// Clear bits `first..first+count` (clamped to the length); returns how many were
    /// set before.
    pub fn clear_bits(&mut self, first: u64, count: u64) -> u64 {
        self.apply(first, count, |w, m| w & !m)
    }

    /// Mark every block touched by `[offset_bytes, offset_bytes + len_bytes)` (partial
    /// blocks included); returns the number of bits newly set. An empty range marks
    /// nothing.
    pub fn set_range_bytes(&mut self, offset_bytes: u64, len_bytes: u64) -> u64 {
        match Self::touched_bits(offset_bytes, len_bytes) {
            Some(r) => self.set_bits(r.start, r.end - r.start),
            None => 0,
        }
    }

    /// Clear only blocks fully covered by `[offset_bytes, offset_bytes + len_bytes)`;
    /// returns the number of bits newly cleared. A range reaching the end of the covered
    /// data also clears a partial last block.
    pub fn clear_range_bytes(&mut self, offset_bytes: u64, len_bytes: u64) -> u64 {
        let end_bytes = offset_bytes.saturating_add(len_bytes);
        let first = offset_bytes.div_ceil(BYTES_PER_BIT);
        let end = if end_bytes >= self.covered_bytes {
            self.bits
        } else {
            end_bytes / BYTES_PER_BIT
        };
        if len_bytes == 0 || first >= end {
            return 0;
        }
        self.clear_bits(first, end - first)
    }

    /// Bits touched by a byte range, or `None` for an empty range.
    fn touched_bits(offset_bytes: u64, len_bytes: u64) -> Option<Range<u64>> {
        if len_bytes == 0 {
            return None;
        }
        let last_byte = offset_bytes.saturating_add(len_bytes - 1);
        Some(offset_bytes / BYTES_PER_BIT..last_byte / BYTES_PER_BIT + 1)
    }

    /// Set every bit.
    pub fn set_all(&mut self) {
        for w in 0..self.words.len() {
            let m = self.valid_mask(w);
            self.store(w, m);
        }
    }

    /// Clear every bit.
    pub fn clear_all(&mut self) {
        for w in 0..self.words.len() {
            self.store(w, 0);
        }
    }

    /// First set bit at or after `from`, or `None`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        if from >= self.bits {
            return None;
        }
        let mut w = idx(from / WORD_BITS);
        let mut word = self.words[w] & !((1u64 << (from % WORD_BITS)) - 1);
        loop {
            if word != 0 {
                return Some(w as u64 * WORD_BITS + u64::from(word.trailing_zeros()));
            }
            w += 1;
            word = *self.words.get(w)?;
        }
    }

    /// Length of the run of set bits starting at `bit`, at most `max` (0 if `bit` is
    /// clear or past the end).
    pub fn run_len(&self, bit: u64, max: u64) -> u64 {
        if bit >= self.bits {
            return 0;
        }
        let limit = max.min(self.bits - bit);
        let mut n = 0;
        let mut pos = bit;
        while n < limit {
            let lo = pos % WORD_BITS;
            // The shift brings in zeros at the top, so the ones never pass the word.
            let ones = u64::from((self.words[idx(pos / WORD_BITS)] >> lo).trailing_ones());
            n += ones;
            if ones < WORD_BITS - lo {
                break;
            }
            pos += ones;
        }
        n.min(limit)
    }

    /// Number of set bits in `first..first+count` (clamped to the length).
    pub fn count_range(&self, first: u64, count: u64) -> u64 {
        let end = first.saturating_add(count).min(self.bits);
        let mut n = 0;
        let mut bit = first;
        while bit < end {
            let base = bit - bit % WORD_BITS;
            let mask = span_mask(bit - base, (end - base).min(WORD_BITS));
            n += u64::from((self.words[idx(base / WORD_BITS)] & mask).count_ones());
            bit = base + WORD_BITS;
        }
        n
    }

    /// The bits as 64-bit words, bit `i` at `words[i / 64] & (1 << (i % 64))`.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// OR `words` into the bitmap starting at word index `first_word` (used to merge the
    /// peer's bitmap). Words past the end and bits past [`Bitmap::len_bits`] are
    /// ignored. Returns the number of bits newly set.
    pub fn merge_words(&mut self, first_word: u64, words: &[u64]) -> u64 {
        let Ok(first) = usize::try_from(first_word) else {
            return 0;
        };
        let mut newly = 0;
        for (i, &add) in words.iter().enumerate() {
            let Some(w) = first.checked_add(i).filter(|w| *w < self.words.len()) else {
                break;
            };
            let new = (self.words[w] | add) & self.valid_mask(w);
            newly += self.store(w, new);
        }
        newly
    }

    /// Number of persisted pages ([`Bitmap::WORDS_PER_PAGE`] words each; the last one may
    /// be short).
    pub fn page_count(&self) -> usize {
        self.dirty.len()
    }

    /// Pages changed since they were last marked clean, in ascending order.
    pub fn dirty_pages(&self) -> Vec<usize> {
        self.dirty
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.then_some(i))
            .collect()
    }

    /// Mark `page` as persisted. Pages past the end are ignored.
    pub fn mark_page_clean(&mut self, page: usize) {
        if let Some(d) = self.dirty.get_mut(page) {
            *d = false;
        }
    }

    /// Mark every page as persisted (after the whole bitmap was written or read).
    pub fn mark_all_clean(&mut self) {
        self.dirty.fill(false);
    }

    /// Mark every page as changed (e.g. after attaching to a new metadata area).
    pub fn mark_all_dirty(&mut self) {
        self.dirty.fill(true);
    }

    /// Pages holding the bits of every block touched by the byte range (for persisting
    /// one activity-log extent's bits). Empty for an empty range or one past the end.
    pub fn pages_for_range_bytes(&self, offset_bytes: u64, len_bytes: u64) -> Range<usize> {
        let Some(bits) = Self::touched_bits(offset_bytes, len_bytes) else {
            return 0..0;
        };
        if bits.start >= self.bits {
            return 0..0;
        }
        let last = bits.end.min(self.bits) - 1;
        idx(bits.start / Self::BITS_PER_PAGE)..idx(last / Self::BITS_PER_PAGE) + 1
    }

    /// The words of `page` (at most [`Bitmap::WORDS_PER_PAGE`]; the last page may be
    /// short; empty past the end).
    pub fn page_words(&self, page: usize) -> &[u64] {
        let start = page
            .saturating_mul(Self::WORDS_PER_PAGE)
            .min(self.words.len());
        let end = start
            .saturating_add(Self::WORDS_PER_PAGE)
            .min(self.words.len());
        &self.words[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_and_tail_bits() {
        let b = Bitmap::for_size_bytes(10_000);
        assert_eq!(b.len_bits(), 3);
        assert_eq!(b.words().len(), 1);
        assert_eq!(b.page_count(), 1);
        let mut b = Bitmap::new(65);
        b.set_all();
        assert_eq!(b.weight(), 65);
        assert_eq!(b.words(), &[u64::MAX, 1]);
        b.merge_words(0, &[0, u64::MAX, u64::MAX]);
        assert_eq!(b.words(), &[u64::MAX, 1]);
        assert_eq!(Bitmap::new(0).page_count(), 0);
        assert_eq!(Bitmap::new(0).next_set(0), None);
    }

    #[test]
    fn byte_ranges() {
        let mut b = Bitmap::new(16);
        assert_eq!(b.set_range_bytes(4095, 2), 2);
        assert_eq!(b.set_range_bytes(0, 0), 0);
        assert!(b.test(0) && b.test(1) && !b.test(2));
        // 4095..8191 fully covers no block.
        assert_eq!(b.clear_range_bytes(4095, 4096), 0);
        assert_eq!(b.clear_range_bytes(4096, 4096), 1);
        assert_eq!(b.clear_range_bytes(0, 4096), 1);
        assert_eq!(b.weight(), 0);
        // Clamped at the end.
        assert_eq!(b.set_range_bytes(15 * 4096, u64::MAX), 1);
        assert_eq!(b.set_bits(u64::MAX, u64::MAX), 0);
    }

    #[test]
    fn partial_last_block_clears_with_a_range_to_the_end() {
        let mut b = Bitmap::for_size_bytes(10_000);
        b.set_all();
        assert_eq!(b.clear_range_bytes(8192, 1808), 1);
        assert_eq!(b.clear_range_bytes(4096, 4000), 0);
        assert_eq!(b.weight(), 2);
    }

    #[test]
    fn pages() {
        let bits = Bitmap::BITS_PER_PAGE * 2 + 100;
        let mut b = Bitmap::new(bits);
        assert_eq!(b.page_count(), 3);
        assert_eq!(b.page_words(2).len(), 2);
        assert!(b.page_words(3).is_empty());
        assert!(b.dirty_pages().is_empty());
        b.set_bits(Bitmap::BITS_PER_PAGE, 1);
        b.set_bits(Bitmap::BITS_PER_PAGE, 1); // no change
        assert_eq!(b.dirty_pages(), vec![1]);
        b.mark_page_clean(1);
        b.clear_bits(0, 10); // no change: stays clean
        assert!(b.dirty_pages().is_empty());
        b.mark_all_dirty();
        assert_eq!(b.dirty_pages(), vec![0, 1, 2]);
        let page_bytes = Bitmap::BITS_PER_PAGE * BYTES_PER_BIT;
        assert_eq!(b.pages_for_range_bytes(page_bytes - 1, 2), 0..2);
        assert_eq!(b.pages_for_range_bytes(0, 4 << 20), 0..1);
        assert_eq!(b.pages_for_range_bytes(0, 0), 0..0);
        assert_eq!(b.pages_for_range_bytes(bits * BYTES_PER_BIT, 1), 0..0);
        assert_eq!(b.pages_for_range_bytes(0, u64::MAX), 0..3);
    }

    #[test]
    fn next_set_and_runs_cross_words() {
        let mut b = Bitmap::new(300);
        b.set_bits(60, 140);
        assert_eq!(b.next_set(0), Some(60));
        assert_eq!(b.next_set(199), Some(199));
        assert_eq!(b.next_set(200), None);
        assert_eq!(b.run_len(60, u64::MAX), 140);
        assert_eq!(b.run_len(61, 10), 10);
        assert_eq!(b.run_len(59, 10), 0);
        assert_eq!(b.count_range(0, 300), 140);
        assert_eq!(b.count_range(100, 64), 64);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u64, u64),
        Clear(u64, u64),
        SetBytes(u64, u64),
        ClearBytes(u64, u64),
        Merge(u64, Vec<u64>),
        SetAll,
        ClearAll,
        Clean(usize),
    }

    fn op(len: u64) -> impl Strategy<Value = Op> {
        let pos = 0..len + 70;
        let bytes = 0..(len + 3) * BYTES_PER_BIT;
        let words = len.div_ceil(64) + 2;
        prop_oneof![
            4 => (pos.clone(), 0..200u64).prop_map(|(a, b)| Op::Set(a, b)),
            4 => (pos, 0..200u64).prop_map(|(a, b)| Op::Clear(a, b)),
            2 => (bytes.clone(), 0..300_000u64).prop_map(|(a, b)| Op::SetBytes(a, b)),
            2 => (bytes, 0..300_000u64).prop_map(|(a, b)| Op::ClearBytes(a, b)),
            2 => (0..words, proptest::collection::vec(any::<u64>(), 0..4))
                .prop_map(|(a, w)| Op::Merge(a, w)),
            1 => Just(Op::SetAll),
            1 => Just(Op::ClearAll),
            1 => (0..4usize).prop_map(Op::Clean),
        ]
    }

    /// Naive model: one bool per bit; returns the number of bits changed.
    fn model_apply(m: &mut [bool], size_bytes: u64, op: &Op) -> u64 {
        let len = m.len() as u64;
        let mut changed = 0;
        let mut put = |m: &mut [bool], i: u64, v: bool| {
            if i < len && m[i as usize] != v {
                m[i as usize] = v;
                changed += 1;
            }
        };
        match op {
            Op::Set(f, c) | Op::Clear(f, c) => {
                for i in *f..f.saturating_add(*c).min(len) {
                    put(m, i, matches!(op, Op::Set(..)));
                }
            }
            Op::SetBytes(o, l) => {
                for i in 0..len {
                    let (s, e) = (i * BYTES_PER_BIT, (i + 1) * BYTES_PER_BIT);
                    if *l > 0 && s < o + l && *o < e {
                        put(m, i, true);
                    }
                }
            }
            Op::ClearBytes(o, l) => {
                for i in 0..len {
                    let s = i * BYTES_PER_BIT;
                    let e = ((i + 1) * BYTES_PER_BIT).min(size_bytes);
                    if *l > 0 && *o <= s && e <= o + l {
                        put(m, i, false);
                    }
                }
            }
            Op::Merge(fw, ws) => {
                for (k, w) in ws.iter().enumerate() {
                    for b in 0..64 {
                        if w & (1 << b) != 0 {
                            put(m, (fw + k as u64) * 64 + b, true);
                        }
                    }
                }
            }
            Op::SetAll | Op::ClearAll => {
                for i in 0..len {
                    put(m, i, matches!(op, Op::SetAll));
                }
            }
            Op::Clean(_) => {}
        }
        changed
    }

    fn real_apply(b: &mut Bitmap, op: &Op) -> u64 {
        let before = b.weight();
        match op {
            Op::Set(f, c) => b.set_bits(*f, *c),
            Op::Clear(f, c) => b.clear_bits(*f, *c),
            Op::SetBytes(o, l) => b.set_range_bytes(*o, *l),
            Op::ClearBytes(o, l) => b.clear_range_bytes(*o, *l),
            Op::Merge(f, w) => b.merge_words(*f, w),
            Op::SetAll => {
                b.set_all();
                b.weight() - before
            }
            Op::ClearAll => {
                b.clear_all();
                before - b.weight()
            }
            Op::Clean(p) => {
                b.mark_page_clean(*p);
                0
            }
        }
    }

    fn check_against(b: &Bitmap, m: &[bool], probes: &[u64]) -> Result<(), TestCaseError> {
        let len = m.len() as u64;
        prop_assert_eq!(b.len_bits(), len);
        prop_assert_eq!(b.weight(), m.iter().filter(|x| **x).count() as u64);
        let rem = len % 64;
        if rem != 0 {
            prop_assert_eq!(b.words().last().copied().unwrap_or(0) >> rem, 0);
        }
        for i in 0..len + 2 {
            prop_assert_eq!(b.test(i), i < len && m[i as usize]);
        }
        for &p in probes {
            let next = (p..len).find(|&i| m[i as usize]);
            prop_assert_eq!(b.next_set(p), next, "next_set({})", p);
            for max in [0u64, 1, 63, 64, 65, 1000] {
                let run = (p..len).take_while(|&i| m[i as usize]).count() as u64;
                prop_assert_eq!(b.run_len(p, max), run.min(max), "run_len({}, {})", p, max);
            }
            for count in [0u64, 1, 5, 64, 130, u64::MAX] {
                let n = (p..p.saturating_add(count).min(len))
                    .filter(|&i| m[i as usize])
                    .count() as u64;
                prop_assert_eq!(b.count_range(p, count), n);
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn matches_naive_model(
            (len, size_slack, ops, probes) in (0u64..300).prop_flat_map(|len| (
                Just(len),
                0..BYTES_PER_BIT,
                proptest::collection::vec(op(len), 0..40),
                proptest::collection::vec(0..len + 3, 1..6),
            ))
        ) {
            // Covered size: a partial last block unless slack is 0.
            let size = if len == 0 { 0 } else { (len - 1) * BYTES_PER_BIT + size_slack.max(1) };
            let mut b = Bitmap::for_size_bytes(size);
            prop_assert_eq!(b.len_bits(), len);
            let mut m = vec![false; len as usize];
            for op in &ops {
                let want = model_apply(&mut m, size, op);
                let got = real_apply(&mut b, op);
                prop_assert_eq!(got, want, "{:?}", op);
                check_against(&b, &m, &probes)?;
            }
        }

        #[test]
        fn dirty_pages_cover_every_change(
            ops in proptest::collection::vec(
                (0u64..100_000, 0u64..40_000, any::<bool>(), 0usize..5), 0..20)
        ) {
            let mut b = Bitmap::new(100_000);
            let mut clean = b.words().to_vec();
            for (first, count, set, clean_page) in ops {
                if set { b.set_bits(first, count); } else { b.clear_bits(first, count); }
                // Persist one page, as the metadata writer would.
                if b.dirty_pages().contains(&clean_page) {
                    let r = clean_page * Bitmap::WORDS_PER_PAGE;
                    let n = b.page_words(clean_page).len();
                    clean[r..r + n].copy_from_slice(b.page_words(clean_page));
                    b.mark_page_clean(clean_page);
                }
                let dirty = b.dirty_pages();
                for p in 0..b.page_count() {
                    let r = p * Bitmap::WORDS_PER_PAGE;
                    let n = b.page_words(p).len();
                    if clean[r..r + n] != *b.page_words(p) {
                        prop_assert!(dirty.contains(&p), "page {} changed but is clean", p);
                    }
                }
            }
        }
    }
}
