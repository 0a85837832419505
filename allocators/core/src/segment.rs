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
    /// A chunk of `heapkit-pool`.
    pub const POOL: SegmentTag = SegmentTag(u64::from_le_bytes(*b"hk:pool_"));
    /// A segment of `heapkit-sizeclass`.
    pub const SIZECLASS: SegmentTag = SegmentTag(u64::from_le_bytes(*b"hk:sizec"));
}

/// The start of the segment holding `ptr`.
#[inline]
pub fn segment_of<T>(ptr: *const T) -> *mut SegmentTag {
    (ptr as usize & !(SEGMENT_ALIGN - 1)) as *mut SegmentTag
}

/// The tag of the segment holding `ptr`.
///
/// # Safety
/// `ptr` must point into memory handed out by a heapkit allocator (so its
/// segment start is mapped and tagged).
#[inline]
pub unsafe fn tag_of<T>(ptr: *const T) -> SegmentTag {
    // SAFETY: the caller guarantees the segment start is mapped and begins
    // with a tag.
    unsafe { segment_of(ptr).read() }
}
