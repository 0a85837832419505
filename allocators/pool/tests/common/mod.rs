//! Shared helpers for the pool's integration tests.
#![allow(dead_code)]

use core::alloc::Layout;

/// A tiny deterministic PRNG (SplitMix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// A size skewed to small blocks, sometimes medium, rarely large.
    pub fn size(&mut self) -> usize {
        match self.next() % 100 {
            0..=79 => self.range(0, 512) as usize,
            80..=97 => self.range(513, 32 << 10) as usize,
            _ => self.range(32 << 10, 600 << 10) as usize,
        }
    }

    /// A layout with a random size and, one time in eight, a large alignment.
    pub fn layout(&mut self) -> Layout {
        let size = self.size();
        let align = if self.next().is_multiple_of(8) {
            1 << self.range(4, 20)
        } else {
            1 << self.range(0, 4)
        };
        Layout::from_size_align(size, align).unwrap()
    }
}

/// Fills `len` bytes at `p` with a pattern derived from `tag`.
///
/// # Safety
/// `p..p+len` must be writable.
pub unsafe fn fill(p: *mut u8, len: usize, tag: u64) {
    for i in 0..len {
        // SAFETY: caller guarantee.
        unsafe { p.add(i).write(pattern(tag, i)) };
    }
}

/// Checks the pattern written by [`fill`].
///
/// # Safety
/// `p..p+len` must be readable.
pub unsafe fn verify(p: *const u8, len: usize, tag: u64) {
    for i in 0..len {
        // SAFETY: caller guarantee.
        let b = unsafe { p.add(i).read() };
        assert_eq!(
            b,
            pattern(tag, i),
            "block {p:p} (tag {tag}) corrupted at byte {i}"
        );
    }
}

fn pattern(tag: u64, i: usize) -> u8 {
    (tag.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 3) as u8 ^ (i as u8)
}
