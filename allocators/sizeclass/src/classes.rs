//! Heap classes: core's size classes and their aligned twins, the
//! distance between their blocks (cache colouring), and the segment kind
//! that serves each.

use heapkit_core::size_class::{class_size, CLASS_COUNT};

use crate::segment::SegmentKind;

/// Heap class ids: core's classes `0..CLASS_COUNT`, then one "aligned"
/// twin of each power-of-two class (16 B ..= 256 KiB, 15 of them). Pages of
/// a core class of 4 KiB or more space their blocks `block_size + 64` apart
/// (cache colouring: equal offsets in neighbouring blocks do not all fall in
/// one cache set); requests with alignment above 16 use the twins, whose
/// blocks sit exactly at multiples of their power-of-two size.
pub(crate) const HEAP_CLASSES: usize = CLASS_COUNT + 15;
/// Blocks of at least this size are coloured (core classes only).
pub(crate) const COLOUR_MIN: usize = 4096;
/// Extra bytes between coloured blocks (one cache line).
pub(crate) const COLOUR: usize = 64;

/// The heap class serving a request that core's `class_for` put in the
/// power-of-two class `class` with alignment above 16.
#[inline]
pub(crate) const fn aligned_twin(class: usize) -> usize {
    CLASS_COUNT + (class_size(class).trailing_zeros() as usize - 4)
}

/// Block size of heap class `c`.
#[inline]
pub(crate) const fn heap_class_size(c: usize) -> usize {
    if c < CLASS_COUNT {
        class_size(c)
    } else {
        16 << (c - CLASS_COUNT)
    }
}

/// Distance between blocks of heap class `c`.
#[inline]
pub(crate) const fn heap_class_stride(c: usize) -> usize {
    let s = heap_class_size(c);
    if c < CLASS_COUNT && s >= COLOUR_MIN {
        s + COLOUR
    } else {
        s
    }
}

/// For each heap class, `ceil(2^64 / stride)`: an offset `n < 2^32` is a
/// multiple of the class's stride exactly when `n * d mod 2^64 < d`
/// (Lemire, Kaser and Kurz, "Faster remainder by direct computation"),
/// one multiply where `%` is a division (hardened mode's block-boundary
/// check on the allocation path).
pub(crate) const STRIDE_DIVISOR: [u64; HEAP_CLASSES] = {
    let mut d = [0u64; HEAP_CLASSES];
    let mut c = 0;
    while c < HEAP_CLASSES {
        d[c] = u64::MAX / heap_class_stride(c) as u64 + 1;
        c += 1;
    }
    d
};

/// The kind serving heap class `c`.
pub(crate) const KIND_OF: [SegmentKind; HEAP_CLASSES] = {
    let mut k = [SegmentKind::Small; HEAP_CLASSES];
    let mut c = 0;
    while c < HEAP_CLASSES {
        let s = heap_class_size(c);
        k[c] = if s <= 8 << 10 {
            SegmentKind::Small
        } else if s <= 64 << 10 {
            SegmentKind::Medium
        } else {
            SegmentKind::Big
        };
        c += 1;
    }
    k
};

#[cfg(test)]
mod tests {
    use super::*;
    use heapkit_core::segment::SEGMENT_ALIGN;
    use heapkit_core::size_class::class_of;

    #[test]
    fn aligned_twins_are_uncoloured_powers_of_two_and_core_classes_colour_big_blocks() {
        use core::alloc::Layout;
        use heapkit_core::size_class::class_for;
        for shift in 5..=18 {
            let align = 1usize << shift;
            let layout = Layout::from_size_align(align / 2 + 1, align).unwrap();
            let twin = aligned_twin(class_for(layout).unwrap());
            assert!((CLASS_COUNT..HEAP_CLASSES).contains(&twin));
            assert_eq!(heap_class_size(twin), align);
            assert_eq!(heap_class_stride(twin), align, "twins are never coloured");
            assert_eq!(KIND_OF[twin], KIND_OF[class_of(align)]);
        }
        for c in 0..CLASS_COUNT {
            let size = class_size(c);
            let stride = heap_class_stride(c);
            assert_eq!(stride % 16, 0);
            assert_eq!(stride == size, size < COLOUR_MIN, "class {c}");
            // Colouring wastes at most 1/64 of a block.
            assert!((stride - size) * 64 <= size);
        }
    }

    #[test]
    fn stride_divisors_tell_block_starts_from_other_offsets() {
        for (c, &d) in STRIDE_DIVISOR.iter().enumerate() {
            let stride = heap_class_stride(c) as u64;
            // Every granule of the first blocks, and offsets up to a
            // segment's end.
            let last = (SEGMENT_ALIGN as u64 / stride) * stride;
            let near_end = [last - 16, last, last + 16, SEGMENT_ALIGN as u64 - 16];
            for n in (0..4 * stride).step_by(16).chain(near_end) {
                assert_eq!(
                    n.wrapping_mul(d) < d,
                    n.is_multiple_of(stride),
                    "class {c}, offset {n}"
                );
            }
        }
    }
}
