//! Segments: how any heapkit pointer finds its metadata by masking.
//!
//! Every mapping a heapkit allocator makes for objects, and every large
//! block, starts at an address aligned to [`SEGMENT_ALIGN`] (4 MiB) with a
//! [`SegmentTag`] as its first word. Objects live within the first
//! `SEGMENT_ALIGN` bytes of their mapping, so for any pointer `p` an
//! allocator handed out, `segment_of(p)` is the start of that mapping, and
//! its tag says who owns it. `free(p)` without a layout (C's `free`) is
//! therefore one mask and one load: no per-object header, no lookup table.
//!
//! Allocators define their own tag values; [`SegmentTag::LARGE`] marks
//! blocks of [`crate::large`].
//!
//! Before the C API reads a tag it asks [`REGIONS`], one bit per 4 MiB
//! region of the address space that says whether a heapkit mapping starts
//! there: a pointer heapkit never handed out, even into unmapped memory, is
//! then reported as misuse instead of crashing the tag read. It costs the
//! C `free` one load from a 4 MiB `.bss` bitmap (only touched pages become
//! resident); Rust's `GlobalAlloc`, which only sees its own pointers, does
//! not ask.

/// Alignment (and maximum object span) of every segment.
pub const SEGMENT_ALIGN: usize = 4 << 20;

/// The first word of every segment: who owns it.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentTag(pub u64);

impl SegmentTag {
    /// A block of the shared large path ([`crate::large`]).
    pub const LARGE: SegmentTag = SegmentTag(u64::from_le_bytes(*b"hk:large"));
    /// A chunk of `heapkit-bump`.
    pub const BUMP: SegmentTag = SegmentTag(u64::from_le_bytes(*b"hk:bump_"));
    /// A segment of `heapkit-slab`.
    pub const SLAB: SegmentTag = SegmentTag(u64::from_le_bytes(*b"hk:slab_"));
    /// A segment of `heapkit-slab` in hardened mode (keyed, guarded; its
    /// objects carry canaries and free marks, so the modes never mix).
    pub const SLAB_HARDENED: SegmentTag = SegmentTag(u64::from_le_bytes(*b"hk:slabH"));
    /// A chunk of `heapkit-pool`.
    pub const POOL: SegmentTag = SegmentTag(u64::from_le_bytes(*b"hk:pool_"));
    /// A segment of `heapkit-pool` in hardened mode (guarded; its blocks
    /// carry canaries, free marks and encoded links).
    pub const POOL_HARDENED: SegmentTag = SegmentTag(u64::from_le_bytes(*b"hk:poolH"));
    /// A segment of `heapkit-sizeclass`.
    pub const SIZECLASS: SegmentTag = SegmentTag(u64::from_le_bytes(*b"hk:sizec"));
    /// A segment of `heapkit-sizeclass` in hardened mode (its blocks are
    /// laid out and linked differently, so the two never mix).
    pub const SIZECLASS_HARDENED: SegmentTag = SegmentTag(u64::from_le_bytes(*b"hk:sizeH"));
}

/// Bits of address space the region map covers (x86-64 user space).
const ADDRESS_BITS: u32 = 47;
/// Words of the region map: one bit per `SEGMENT_ALIGN` region.
const REGION_WORDS: usize = 1 << (ADDRESS_BITS - SEGMENT_ALIGN.trailing_zeros() - 6);

/// Which 4 MiB regions start a live heapkit mapping (see the module docs).
///
/// Invariant: bit `r` is set exactly while a mapping made by
/// [`crate::large::map_segments`] starts at `r * SEGMENT_ALIGN` (set before
/// the mapping is handed out, cleared before it is unmapped).
pub struct RegionMap {
    words: [core::sync::atomic::AtomicU64; REGION_WORDS],
}

/// The process's region map.
pub static REGIONS: RegionMap = RegionMap {
    words: [const { core::sync::atomic::AtomicU64::new(0) }; REGION_WORDS],
};

impl RegionMap {
    /// (word, bit) of the region holding `addr`, if in range.
    #[inline]
    fn slot(addr: usize) -> Option<(usize, u64)> {
        let region = addr >> SEGMENT_ALIGN.trailing_zeros();
        let word = region >> 6;
        (word < REGION_WORDS).then(|| (word, 1u64 << (region & 63)))
    }

    /// Records that a heapkit mapping starts at `base` (segment-aligned).
    pub fn mark(&self, base: *const u8) {
        debug_assert_eq!(base as usize % SEGMENT_ALIGN, 0);
        if let Some((w, bit)) = Self::slot(base as usize) {
            self.words[w].fetch_or(bit, core::sync::atomic::Ordering::Release);
        }
    }

    /// Records that the mapping at `base` is going away.
    pub fn unmark(&self, base: *const u8) {
        if let Some((w, bit)) = Self::slot(base as usize) {
            self.words[w].fetch_and(!bit, core::sync::atomic::Ordering::Release);
        }
    }

    /// Whether the block at `ptr` lies in a live heapkit mapping, so that
    /// the tag at [`segment_of`]`(ptr)` may be read (the same rule for a
    /// pointer at a segment boundary).
    #[inline]
    pub fn holds_block<T>(&self, ptr: *const T) -> bool {
        self.contains((ptr as usize).wrapping_sub(1) as *const u8)
    }

    /// Whether `ptr`'s segment start is a live heapkit mapping, so that its
    /// tag may be read. One relaxed load: the pointer reached the caller
    /// through whatever synchronised its allocation, which the mark precedes.
    #[inline]
    pub fn contains<T>(&self, ptr: *const T) -> bool {
        match Self::slot(ptr as usize) {
            Some((w, bit)) => self.words[w].load(core::sync::atomic::Ordering::Relaxed) & bit != 0,
            None => false,
        }
    }
}

/// The start of the segment holding the block at `ptr`.
///
/// A pointer exactly at a segment boundary belongs to the segment *before*
/// it: that is where a large block aligned to `SEGMENT_ALIGN` or more keeps
/// its header (`large`), and no other block starts at a boundary (every
/// segment, chunk and large mapping begins with its header). So the mask is
/// applied to `ptr - 1`, which costs nothing more than masking `ptr`.
#[inline]
pub fn segment_of<T>(ptr: *const T) -> *mut SegmentTag {
    ((ptr as usize).wrapping_sub(1) & !(SEGMENT_ALIGN - 1)) as *mut SegmentTag
}

/// The tag of the segment holding `ptr`.
///
/// # Safety
/// `ptr` must point into memory handed out by a heapkit allocator (so its
/// segment start is mapped and tagged); [`REGIONS`] tells.
#[inline]
pub unsafe fn tag_of<T>(ptr: *const T) -> SegmentTag {
    // SAFETY: the caller guarantees the segment start is mapped and begins
    // with a tag.
    unsafe { segment_of(ptr).read() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::large::{map_segments, unmap_segments};

    #[test]
    fn region_map_follows_mappings() {
        let size = 2 * SEGMENT_ALIGN;
        let base = map_segments(size);
        assert!(!base.is_null());
        // Any pointer whose segment start is the mapping's start.
        assert!(REGIONS.contains(base));
        assert!(REGIONS.contains(base.wrapping_add(SEGMENT_ALIGN - 1)));
        // The second region of a long mapping is not a mapping start.
        assert!(!REGIONS.contains(base.wrapping_add(SEGMENT_ALIGN)));
        // SAFETY: the mapping was made above and is unused.
        unsafe { unmap_segments(base, size) };
        // (Not asserted clear here: a test running in parallel may map a
        // segment at the same address at once.) Mark and unmark a region
        // no mapping uses (mmap hands out addresses from the top down).
        let far = (1usize << 46) as *const u8;
        assert!(!REGIONS.contains(far));
        REGIONS.mark(far);
        assert!(REGIONS.contains(far.wrapping_add(100)));
        REGIONS.unmark(far);
        assert!(!REGIONS.contains(far));
        // Out of the covered address space, and null.
        assert!(!REGIONS.contains(usize::MAX as *const u8));
        assert!(!REGIONS.contains(core::ptr::null::<u8>()));
    }
}
