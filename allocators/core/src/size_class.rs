//! Size classes: the `const` table every heapkit allocator rounds requests to.
//!
//! Classes step by 16 bytes up to 256 B (16 classes), then by eight steps
//! per power of two up to [`MAX_SIZE`] (256 KiB), 96 classes in all. Eight
//! steps per doubling bound internal waste: for every request of 128 B or
//! more, the class is less than 12.5% larger than the request. Below 128 B
//! the 16-byte step, which the x86-64 C ABI's 16-byte `malloc` alignment
//! forces anyway, is the limit.
//!
//! Every class size is a multiple of 16, and every power of two from 16 B to
//! 256 KiB is a class, so a request with alignment `a > 16` can be served by
//! the class of `max(size, a).next_power_of_two()` from any page whose base
//! is aligned to that power of two ([`class_for`]).
//!
//! ```
//! use heapkit_core::size_class::{class_of, class_size};
//! assert_eq!(class_size(class_of(1)), 16);
//! assert_eq!(class_size(class_of(257)), 288);
//! ```

use core::alloc::Layout;

/// The largest size served by a class; larger requests go to the large path.
pub const MAX_SIZE: usize = 256 * 1024;
/// Alignment of every class size (and so of every block carved from a
/// 16-aligned base).
pub const MIN_ALIGN: usize = 16;
/// Classes with the 16-byte step (16..=256).
const LINEAR_CLASSES: usize = 16;
const LINEAR_MAX: usize = LINEAR_CLASSES * MIN_ALIGN;
/// Number of classes.
pub const CLASS_COUNT: usize = LINEAR_CLASSES + 8 * (MAX_SIZE.trailing_zeros() as usize - 8);

/// `SIZES[c]` is the block size of class `c`.
pub const SIZES: [u32; CLASS_COUNT] = build_sizes();

const fn build_sizes() -> [u32; CLASS_COUNT] {
    let mut sizes = [0u32; CLASS_COUNT];
    let mut c = 0;
    while c < LINEAR_CLASSES {
        sizes[c] = ((c + 1) * MIN_ALIGN) as u32;
        c += 1;
    }
    let mut k = 8;
    while c < CLASS_COUNT {
        let mut step = 1;
        while step <= 8 {
            sizes[c] = ((1usize << k) + (step << (k - 3))) as u32;
            c += 1;
            step += 1;
        }
        k += 1;
    }
    sizes
}

const _: () = assert!(CLASS_COUNT == 96);
const _: () = assert!(SIZES[CLASS_COUNT - 1] as usize == MAX_SIZE);
const _: () = assert!(SIZES[LINEAR_CLASSES - 1] as usize == LINEAR_MAX);
const _: () = {
    let mut c = 1;
    while c < CLASS_COUNT {
        assert!(SIZES[c] > SIZES[c - 1]);
        assert!((SIZES[c] as usize).is_multiple_of(MIN_ALIGN));
        c += 1;
    }
};

/// Requests up to this size are classed by one load from [`CLASS_BY_16`].
pub const TABLE_MAX: usize = 1024;

/// `CLASS_BY_16[(size + 15) / 16]` is the class of every `size <=`
/// [`TABLE_MAX`] (index 0, `size` 0, is class 0). Requests of random sizes
/// made the arithmetic (`class_of_computed`) branch on whether the size
/// was above 256 B at random (a mispredicted branch on a quarter to a third
/// of the `malloc`s of the standard `larson` program); mimalloc looks its
/// small sizes up the same way.
pub const CLASS_BY_16: [u8; TABLE_MAX / MIN_ALIGN + 1] = {
    let mut table = [0u8; TABLE_MAX / MIN_ALIGN + 1];
    let mut i = 1;
    while i < table.len() {
        table[i] = class_of_computed(i * MIN_ALIGN) as u8;
        i += 1;
    }
    table
};

/// The smallest class whose size is at least `size` (`size` 0 is treated as
/// 1). `size` must be at most [`MAX_SIZE`].
#[inline]
pub const fn class_of(size: usize) -> usize {
    debug_assert!(size <= MAX_SIZE);
    if size <= TABLE_MAX {
        CLASS_BY_16[size.div_ceil(MIN_ALIGN)] as usize
    } else {
        class_of_computed(size)
    }
}

/// [`class_of`] by arithmetic, for every size up to [`MAX_SIZE`].
#[inline]
const fn class_of_computed(size: usize) -> usize {
    if size <= LINEAR_MAX {
        let s = if size == 0 { 1 } else { size };
        s.div_ceil(MIN_ALIGN) - 1
    } else {
        // size in (2^k, 2^(k+1)], k >= 8; eight steps of 2^(k-3).
        let k = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize;
        let step = (size - 1 - (1 << k)) >> (k - 3);
        LINEAR_CLASSES + (k - 8) * 8 + step
    }
}

/// The block size of class `class`.
#[inline]
pub const fn class_size(class: usize) -> usize {
    SIZES[class] as usize
}

/// The class serving `layout`, or `None` if it needs the large path (too big,
/// or aligned beyond [`MAX_SIZE`]). For alignments above [`MIN_ALIGN`] the
/// class is a power of two at least as large as the alignment, so blocks
/// carved at multiples of their size from a base aligned to that size are
/// aligned too.
#[inline]
pub const fn class_for(layout: Layout) -> Option<usize> {
    let size = layout.size();
    if layout.align() <= MIN_ALIGN {
        if size <= MAX_SIZE {
            Some(class_of(size))
        } else {
            None
        }
    } else {
        let need = if size > layout.align() {
            size
        } else {
            layout.align()
        };
        if need > MAX_SIZE {
            return None;
        }
        Some(class_of(need.next_power_of_two()))
    }
}

/// An exact test of divisibility by a constant without a division
/// (Granlund & Montgomery 1994; Lemire, Kaser & Kurz 2019): `n` is a
/// multiple of `d = 2^shift * odd` iff its low `shift` bits are zero and
/// `(n >> shift) * odd⁻¹ mod 2^32 <= (2^32 - 1) / odd`. The hardened modes
/// use it on every free to tell a block's start from a pointer into it (a
/// hardware division costs 20 to 90 cycles).
///
/// ```
/// use heapkit_core::size_class::ExactDivisor;
///
/// let d = ExactDivisor::new(48);
/// assert!(d.divides(0) && d.divides(96) && d.divides(48 * 1000));
/// assert!(!d.divides(16) && !d.divides(97));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExactDivisor {
    /// Mask of the low bits that must be zero (`2^shift - 1`).
    mask: u32,
    /// `shift`: the power of two in the divisor.
    shift: u32,
    /// The odd part's inverse modulo 2^32.
    inverse: u32,
    /// `(2^32 - 1) / odd`.
    limit: u32,
}

impl ExactDivisor {
    /// The test for divisor `d` (not 0).
    pub const fn new(d: u32) -> Self {
        assert!(d != 0);
        let shift = d.trailing_zeros();
        let odd = d >> shift;
        // Newton's iteration doubles the correct low bits each step: an
        // odd x is its own inverse modulo 8 (3 bits), so 4 steps give 48.
        let mut x = odd;
        let mut i = 0;
        while i < 4 {
            x = x.wrapping_mul(2u32.wrapping_sub(odd.wrapping_mul(x)));
            i += 1;
        }
        ExactDivisor {
            mask: (1u32 << shift) - 1,
            shift,
            inverse: x,
            limit: u32::MAX / odd,
        }
    }

    /// Whether `n` is a multiple of the divisor.
    #[inline(always)]
    pub const fn divides(self, n: u32) -> bool {
        n & self.mask == 0 && (n >> self.shift).wrapping_mul(self.inverse) <= self.limit
    }
}

/// `DIVISORS[c]` tests divisibility by the size of class `c`.
pub const DIVISORS: [ExactDivisor; CLASS_COUNT] = {
    let mut t = [ExactDivisor {
        mask: 0,
        shift: 0,
        inverse: 1,
        limit: u32::MAX,
    }; CLASS_COUNT];
    let mut c = 0;
    while c < CLASS_COUNT {
        t[c] = ExactDivisor::new(SIZES[c]);
        c += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_maps_to_the_smallest_fitting_class() {
        for size in 0..=MAX_SIZE {
            let c = class_of(size);
            let cs = class_size(c);
            assert!(cs >= size.max(1), "size {size} -> class {c} ({cs})");
            if c > 0 {
                assert!(class_size(c - 1) < size, "size {size} fits a smaller class");
            }
            if size >= 128 {
                // Internal waste under 12.5% of the class.
                assert!((cs - size) * 8 < cs, "size {size} wastes too much in {cs}");
            }
        }
    }

    #[test]
    fn class_size_class_round_trips() {
        for c in 0..CLASS_COUNT {
            assert_eq!(class_of(class_size(c)), c);
        }
    }

    #[test]
    fn aligned_layouts_get_power_of_two_classes() {
        for shift in 4..=18 {
            let align = 1usize << shift;
            for size in [1, align / 2, align, align + 1] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                match class_for(layout) {
                    Some(c) => {
                        let cs = class_size(c);
                        assert!(
                            cs >= size && cs.is_multiple_of(align),
                            "{size}/{align} -> {cs}"
                        );
                    }
                    None => assert!(size.max(align).next_power_of_two() > MAX_SIZE),
                }
            }
        }
        assert!(class_for(Layout::from_size_align(16, 1 << 20).unwrap()).is_none());
        assert!(class_for(Layout::from_size_align(MAX_SIZE + 1, 8).unwrap()).is_none());
    }

    #[test]
    fn exact_divisors_agree_with_the_remainder() {
        for (c, d) in DIVISORS.iter().enumerate() {
            let size = SIZES[c];
            let multiples =
                (0..200).flat_map(|k| [k * size, k * size + 16, (k * size).wrapping_sub(16)]);
            let spread = (0..(4u32 << 20)).step_by(208);
            for n in (0..(4u32 << 20))
                .step_by(16)
                .take(20_000)
                .chain(multiples)
                .chain(spread)
            {
                assert_eq!(d.divides(n), n % size == 0, "class {c} ({size}), n {n}");
            }
        }
    }
}
