//! Fill patterns, zero checks, overlap checks and a seeded random generator.
//!
//! Every block the battery allocates is filled with a pattern derived from a
//! per-block seed and the byte's offset, and checked before it is freed or
//! resized. A block that another allocation overwrote, that realloc failed to
//! copy, or that two callers were handed at once shows up as a mismatch at a
//! known offset.

use std::fmt;

const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// The pattern word covering bytes `8 * k .. 8 * k + 8` of a block with
/// `seed`. Distinct seeds give distinct streams; within one stream every word
/// differs, so a block copied to the wrong offset does not match.
#[inline]
fn word(seed: u64, k: usize) -> u64 {
    let x = seed.wrapping_add(k as u64).wrapping_mul(MIX);
    x ^ (x >> 29)
}

/// The pattern byte at `offset` of a block with `seed`.
#[inline]
pub fn byte_at(seed: u64, offset: usize) -> u8 {
    (word(seed, offset / 8) >> ((offset % 8) * 8)) as u8
}

/// Where a block stopped matching what was written into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Offset of the first wrong byte.
    pub offset: usize,
    /// The byte that should be there.
    pub expected: u8,
    /// The byte that is there.
    pub found: u8,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "byte {} is {:#04x}, expected {:#04x}",
            self.offset, self.found, self.expected
        )
    }
}

/// Writes the pattern of `seed` into bytes `start..end` of the block at `ptr`.
///
/// # Safety
/// `ptr..ptr + end` must be writable.
pub unsafe fn fill_range(ptr: *mut u8, start: usize, end: usize, seed: u64) {
    let mut i = start;
    while i < end && !i.is_multiple_of(8) {
        // SAFETY: i < end, in bounds (caller).
        unsafe { ptr.add(i).write(byte_at(seed, i)) };
        i += 1;
    }
    while i + 8 <= end {
        // SAFETY: i + 8 <= end, in bounds (caller); unaligned write.
        unsafe {
            ptr.add(i)
                .cast::<u64>()
                .write_unaligned(word(seed, i / 8).to_le())
        };
        i += 8;
    }
    while i < end {
        // SAFETY: i < end, in bounds (caller).
        unsafe { ptr.add(i).write(byte_at(seed, i)) };
        i += 1;
    }
}

/// Writes the pattern of `seed` into the first `len` bytes at `ptr`.
///
/// # Safety
/// `ptr..ptr + len` must be writable.
pub unsafe fn fill(ptr: *mut u8, len: usize, seed: u64) {
    // SAFETY: forwarded.
    unsafe { fill_range(ptr, 0, len, seed) }
}

fn first_wrong_byte(found: u64, seed: u64, base: usize) -> Mismatch {
    let bytes = found.to_le_bytes();
    for (j, &b) in bytes.iter().enumerate() {
        let expected = byte_at(seed, base + j);
        if b != expected {
            return Mismatch {
                offset: base + j,
                expected,
                found: b,
            };
        }
    }
    unreachable!("words differ but no byte does")
}

/// Checks bytes `start..end` of the block at `ptr` against the pattern of
/// `seed`. Never panics (the fork child uses it).
///
/// # Safety
/// `ptr..ptr + end` must be readable.
pub unsafe fn check_range(
    ptr: *const u8,
    start: usize,
    end: usize,
    seed: u64,
) -> Result<(), Mismatch> {
    let mut i = start;
    while i < end {
        if i.is_multiple_of(8) && i + 8 <= end {
            // SAFETY: i + 8 <= end, in bounds (caller); unaligned read.
            let found = unsafe { ptr.add(i).cast::<u64>().read_unaligned() };
            let expected = word(seed, i / 8).to_le();
            if found != expected {
                // Only reached on failure; the fork child never gets here
                // without a mismatch, and the loop inside always returns.
                return Err(first_wrong_byte(found, seed, i));
            }
            i += 8;
        } else {
            // SAFETY: i < end, in bounds (caller).
            let found = unsafe { ptr.add(i).read() };
            let expected = byte_at(seed, i);
            if found != expected {
                return Err(Mismatch {
                    offset: i,
                    expected,
                    found,
                });
            }
            i += 1;
        }
    }
    Ok(())
}

/// Checks the first `len` bytes at `ptr` against the pattern of `seed`.
///
/// # Safety
/// `ptr..ptr + len` must be readable.
pub unsafe fn check(ptr: *const u8, len: usize, seed: u64) -> Result<(), Mismatch> {
    // SAFETY: forwarded.
    unsafe { check_range(ptr, 0, len, seed) }
}

/// Checks the pattern and panics with `what` and the block's address on a
/// mismatch.
///
/// # Safety
/// `ptr..ptr + len` must be readable.
#[track_caller]
pub unsafe fn verify(ptr: *const u8, len: usize, seed: u64, what: &str) {
    // SAFETY: forwarded.
    if let Err(m) = unsafe { check(ptr, len, seed) } {
        panic!("{what}: block {ptr:p} of {len} bytes (seed {seed:#x}) corrupted: {m}");
    }
}

/// Fills a slice with the pattern of `seed`.
pub fn fill_slice(s: &mut [u8], seed: u64) {
    // SAFETY: the slice is writable for its length.
    unsafe { fill(s.as_mut_ptr(), s.len(), seed) }
}

/// Checks a slice against the pattern of `seed`, panicking on a mismatch.
#[track_caller]
pub fn verify_slice(s: &[u8], seed: u64, what: &str) {
    // SAFETY: the slice is readable for its length.
    unsafe { verify(s.as_ptr(), s.len(), seed, what) }
}

/// The offset of the first non-zero byte among the first `len` at `ptr`.
///
/// # Safety
/// `ptr..ptr + len` must be readable.
pub unsafe fn first_nonzero(ptr: *const u8, len: usize) -> Option<usize> {
    let mut i = 0;
    while i + 8 <= len {
        // SAFETY: in bounds (caller); unaligned read.
        if unsafe { ptr.add(i).cast::<u64>().read_unaligned() } != 0 {
            break;
        }
        i += 8;
    }
    while i < len {
        // SAFETY: in bounds (caller).
        if unsafe { ptr.add(i).read() } != 0 {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Panics unless the block's address is a multiple of `align`.
#[track_caller]
pub fn assert_aligned(ptr: *const u8, align: usize, what: &str) {
    assert!(
        (ptr as usize).is_multiple_of(align),
        "{what}: block {ptr:p} is not aligned to {align}"
    );
}

/// Panics if any two of the `(address, size)` ranges overlap. Sorts `ranges`.
#[track_caller]
pub fn assert_disjoint(ranges: &mut [(usize, usize)], what: &str) {
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        let (a, a_len) = w[0];
        let (b, b_len) = w[1];
        assert!(
            a + a_len.max(1) <= b,
            "{what}: live blocks overlap: [{a:#x}, +{a_len}) and [{b:#x}, +{b_len})"
        );
    }
}

/// A xorshift64* generator: deterministic, seedable, no dependencies.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator for `seed` (any value, zero included).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(MIX) | 1)
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent / 100`.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_round_trips_and_detects_corruption() {
        for len in [0, 1, 7, 8, 9, 63, 64, 65, 1000] {
            let mut v = vec![0u8; len];
            fill_slice(&mut v, 42);
            verify_slice(&v, 42, "round trip");
            if len > 0 {
                let at = len / 2;
                v[at] ^= 0x10;
                // SAFETY: v is readable for len bytes.
                let m = unsafe { check(v.as_ptr(), len, 42) }.unwrap_err();
                assert_eq!(m.offset, at);
                // SAFETY: as above.
                assert!(unsafe { check(v.as_ptr(), len, 43) }.is_err());
            }
        }
    }

    #[test]
    fn fill_range_composes() {
        let mut v = vec![0u8; 300];
        // SAFETY: v is writable for 300 bytes.
        unsafe {
            fill_range(v.as_mut_ptr(), 0, 13, 7);
            fill_range(v.as_mut_ptr(), 13, 300, 7);
        }
        verify_slice(&v, 7, "pieces");
    }

    #[test]
    fn shifted_copy_does_not_match() {
        let mut a = vec![0u8; 256];
        fill_slice(&mut a, 9);
        // SAFETY: a is readable for 248 bytes past offset 8.
        assert!(unsafe { check(a.as_ptr().add(8), 248, 9) }.is_err());
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn overlap_is_caught() {
        assert_disjoint(&mut [(100, 10), (0, 50), (105, 1)], "t");
    }

    #[test]
    fn zero_scan() {
        let mut v = [0u8; 77];
        // SAFETY: readable.
        assert_eq!(unsafe { first_nonzero(v.as_ptr(), 77) }, None);
        v[70] = 1;
        // SAFETY: readable.
        assert_eq!(unsafe { first_nonzero(v.as_ptr(), 77) }, Some(70));
    }
}
