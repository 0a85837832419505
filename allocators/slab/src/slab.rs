//! One slab: a run of chunks holding objects of one size, and the layout
//! table that says how big each cache's slabs are.
//!
//! A slab hands out objects two ways: first from its free list (objects
//! given back, linked through their first word, LIFO so the hottest object
//! is reused first), then by *carving*: object `carved` is the next one never
//! handed out since the slab was created from clean chunks, so it still
//! reads as zero. That is what lets zeroed allocations skip the memset.
//!
//! All fields are guarded by the owning cache's slab lock (see
//! [`crate::cache`]); the metadata lives in the segment header
//! ([`crate::segment`]), never in the slab's own memory.

use core::ptr;

use heapkit_core::harden::{Hardened, Policy};
use heapkit_core::size_class::{CLASS_COUNT, SIZES};

use crate::magazine::Magazine;
use crate::segment::{CHUNK, CHUNKS, HEADER_CHUNKS};

/// Caches of objects: one per size class in each mode, the default mode's
/// first (cache `c` serves class `c`), then the hardened mode's (cache
/// [`HARDENED_BASE`]` + c`). The two modes never share a cache, a slab or
/// a segment (`crate::segment` keeps a list per mode), and a cache's mode
/// follows from its index: the slab layer needs no type parameter.
pub const OBJECT_CACHES: usize = 2 * CLASS_COUNT;
/// The hardened mode's first cache (see [`OBJECT_CACHES`]).
pub const HARDENED_BASE: usize = CLASS_COUNT;
/// Index of the internal cache that holds magazines (after the object
/// caches; default mode's segments hold it).
pub const MAGAZINE_CACHE: usize = OBJECT_CACHES;
/// Number of caches: the object caches plus the magazine cache.
pub const CACHE_COUNT: usize = OBJECT_CACHES + 1;

/// Whether cache `c` belongs to the hardened mode.
#[inline]
pub const fn is_hardened(c: usize) -> bool {
    c >= HARDENED_BASE && c < MAGAZINE_CACHE
}

/// Which list of its cache a slab is on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum SlabList {
    /// On no list (being created or released).
    None,
    /// Some objects free, more than a quarter in use.
    Partial,
    /// At most a quarter of the objects in use (allocation avoids these so
    /// they can drain and be released).
    Sparse,
    /// Every object in use.
    Full,
    /// No object in use.
    Empty,
}

impl SlabList {
    /// The list a slab with `in_use` of `capacity` objects belongs on.
    #[inline]
    pub fn for_count(in_use: u32, capacity: u32) -> SlabList {
        if in_use == capacity {
            SlabList::Full
        } else if in_use == 0 {
            SlabList::Empty
        } else if in_use * 4 <= capacity {
            SlabList::Sparse
        } else {
            SlabList::Partial
        }
    }
}

/// A free object's link.
#[repr(C)]
pub struct FreeObject {
    pub next: *mut FreeObject,
}

/// Per-slab bookkeeping.
///
/// Invariants (checked by `Slab::check_invariants`):
/// - `in_use + free_list_len + (capacity - carved) == capacity`;
/// - objects with index `>= carved` read as zero;
/// - for a slab on a list, `list` is [`SlabList::for_count`] of `in_use`;
/// - hardened (`key != 0`): every object on the free list bears its
///   free mark (`heapkit_core::harden::FreeMark`, in its second word), and
///   every link decodes to null or to a carved object of the slab; an
///   object taken from the list gets the first word of its seal back
///   (`crate::mode::seal`).
#[repr(C)]
pub struct SlabMeta {
    /// Free objects given back, linked through their first word (the link
    /// [`Hardened::encode`]d with `key` in hardened mode).
    pub free: *mut FreeObject,
    /// First byte of the slab (a chunk boundary).
    pub start: *mut u8,
    /// Neighbours on the cache list named by `list`.
    pub prev: *mut SlabMeta,
    pub next: *mut SlabMeta,
    /// Objects handed out and not given back (including those sitting in
    /// magazines: the slab layer cannot tell them apart).
    pub in_use: u32,
    /// Objects ever carved (the rest are untouched and zero).
    pub carved: u32,
    /// Cache index owning this slab.
    pub cache: u8,
    /// Chunks in this slab.
    pub chunks: u8,
    /// Which cache list the slab is on.
    pub list: SlabList,
    /// The hardened mode's key (its segment's, copied at creation so the
    /// slab's methods read no header), or 0 in the default mode: links are
    /// stored plain and carved objects are not marked.
    pub key: usize,
}

// SAFETY: `next` and `prev` are the slab's own cache-list links; only the
// cache list named by `list` (one at a time, under the cache lock) uses them.
unsafe impl heapkit_core::list::Linked for SlabMeta {
    unsafe fn next(node: *mut Self) -> *mut *mut Self {
        // SAFETY: node is a live slab (the trait's contract).
        unsafe { core::ptr::addr_of_mut!((*node).next) }
    }
    unsafe fn prev(node: *mut Self) -> *mut *mut Self {
        // SAFETY: as above.
        unsafe { core::ptr::addr_of_mut!((*node).prev) }
    }
}

impl SlabMeta {
    /// A slab with nothing set.
    pub const EMPTY: SlabMeta = SlabMeta {
        free: ptr::null_mut(),
        start: ptr::null_mut(),
        prev: ptr::null_mut(),
        next: ptr::null_mut(),
        in_use: 0,
        carved: 0,
        cache: 0,
        chunks: 0,
        list: SlabList::None,
        key: 0,
    };

    /// Takes one object; returns it and whether it is known to be zero, or
    /// null if the slab is full.
    #[inline]
    pub fn take(&mut self, layout: &CacheLayout) -> (*mut u8, bool) {
        let head = self.free;
        if !head.is_null() {
            // SAFETY: free-list entries are free objects of this slab, whose
            // first word is the link.
            let stored = unsafe { (*head).next };
            self.free = if self.key == 0 {
                stored
            } else {
                let next = self.checked_link(head, stored, layout);
                // SAFETY: head is a free object (of at least 16 bytes) the
                // caller now owns.
                unsafe { crate::mode::reseal_first_word(head.cast(), self.key) };
                next
            };
            self.in_use += 1;
            return (head.cast(), false);
        }
        if self.carved < layout.capacity {
            // SAFETY: carved < capacity, so the object lies inside the slab.
            let p = unsafe { self.start.add(self.carved as usize * layout.size) };
            self.carved += 1;
            self.in_use += 1;
            if self.key != 0 {
                // SAFETY: p is a fresh object of at least 16 bytes that
                // the caller now owns; the seal is what a free leaves (the
                // handout clears it, so a carved object reads as zero
                // again).
                unsafe { crate::mode::seal(p, self.key) };
            }
            return (p, true);
        }
        (ptr::null_mut(), false)
    }

    /// The next free object after `head`, decoded from `stored` (hardened):
    /// null or a carved object of this slab, else the list was written
    /// after a free and the program stops.
    #[inline]
    fn checked_link(
        &self,
        head: *mut FreeObject,
        stored: *mut FreeObject,
        layout: &CacheLayout,
    ) -> *mut FreeObject {
        let next = Hardened::decode(stored.cast(), self.key);
        let off = (next as usize).wrapping_sub(self.start as usize);
        if !next.is_null()
            && (off >= self.carved as usize * layout.size || !off.is_multiple_of(layout.size))
        {
            crate::mode::corrupted(head.cast(), layout.size);
        }
        next.cast()
    }

    /// Gives object `p` back.
    ///
    /// # Safety
    /// `p` must be an object of this slab that is in use.
    #[inline]
    pub unsafe fn give(&mut self, p: *mut u8) {
        let obj = p.cast::<FreeObject>();
        let next = if self.key == 0 {
            self.free
        } else {
            Hardened::encode(self.free.cast(), self.key).cast()
        };
        // SAFETY: p is an object of at least 16 bytes nobody uses (caller);
        // only its first word is written (a hardened object's free mark,
        // in the second, stays).
        unsafe { obj.write(FreeObject { next }) };
        self.free = obj;
        self.in_use -= 1;
    }
}

/// The shape of one cache's slabs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLayout {
    /// Object size.
    pub size: usize,
    /// Chunks per slab.
    pub chunks: usize,
    /// Slabs start at a chunk index that is a multiple of this (so
    /// power-of-two objects larger than a chunk are aligned to their size).
    pub align_chunks: usize,
    /// Objects per slab.
    pub capacity: u32,
}

/// Bytes of object a slab is sized to hold at least this many of.
const MIN_OBJECTS_SMALL: usize = 8;
const MIN_OBJECTS_LARGE: usize = 4;
const LARGE_OBJECT: usize = 32 << 10;

const fn layout_for(size: usize) -> CacheLayout {
    let min_objects = if size <= LARGE_OBJECT {
        MIN_OBJECTS_SMALL
    } else {
        MIN_OBJECTS_LARGE
    };
    let mut chunks = (size * min_objects).div_ceil(CHUNK);
    if chunks == 0 {
        chunks = 1;
    }
    // Grow until the tail waste is under 1/8 of the slab.
    while (chunks * CHUNK) % size * 8 > chunks * CHUNK {
        chunks += 1;
    }
    let align_chunks = if size.is_power_of_two() && size > CHUNK {
        size / CHUNK
    } else {
        1
    };
    CacheLayout {
        size,
        chunks,
        align_chunks,
        capacity: ((chunks * CHUNK) / size) as u32,
    }
}

const fn build_layouts() -> [CacheLayout; CACHE_COUNT] {
    let mut out = [layout_for(16); CACHE_COUNT];
    let mut c = 0;
    while c < OBJECT_CACHES {
        out[c] = layout_for(SIZES[c % CLASS_COUNT] as usize);
        c += 1;
    }
    out[MAGAZINE_CACHE] = layout_for(core::mem::size_of::<Magazine>().next_multiple_of(16));
    out
}

/// `LAYOUTS[c]` is the slab shape of cache `c`.
pub const LAYOUTS: [CacheLayout; CACHE_COUNT] = build_layouts();

const _: () = {
    let mut c = 0;
    while c < CACHE_COUNT {
        let l = LAYOUTS[c];
        // A slab fits a segment after the header, aligned as required.
        // (Hardened segments end with a guard of up to 4 chunks: 64 KiB
        // pages.)
        assert!(l.chunks + HEADER_CHUNKS.next_multiple_of(l.align_chunks) + 4 <= CHUNKS);
        assert!(l.capacity >= 4);
        assert!(l.chunks < 256);
        // Power-of-two objects are aligned to their size.
        if l.size.is_power_of_two() && l.size > CHUNK {
            assert!(l.chunks.is_multiple_of(l.align_chunks));
        }
        c += 1;
    }
};

/// The layout of cache `c`.
#[inline]
pub fn layout(c: usize) -> &'static CacheLayout {
    debug_assert!(c < CACHE_COUNT);
    // SAFETY: every cache index in this crate is < CACHE_COUNT (class_for
    // returns < CLASS_COUNT; MAGAZINE_CACHE is the last).
    unsafe { LAYOUTS.get_unchecked(c) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_bound_waste_and_align() {
        for (c, l) in LAYOUTS.iter().enumerate() {
            let bytes = l.chunks * CHUNK;
            assert!(
                bytes - l.capacity as usize * l.size <= bytes / 8,
                "cache {c}: {l:?}"
            );
            if l.size.is_power_of_two() {
                // Slab starts are CHUNK * align_chunks aligned.
                assert_eq!(
                    (CHUNK * l.align_chunks) % l.size.min(CHUNK * l.align_chunks),
                    0
                );
                assert!(CHUNK * l.align_chunks >= l.size.min(1 << 20));
            }
        }
        assert_eq!(layout(0).capacity as usize, CHUNK / 16);
    }

    #[test]
    fn take_carves_then_reuses() {
        let mut buf = [0u128; 64];
        let l = CacheLayout {
            size: 32,
            chunks: 1,
            align_chunks: 1,
            capacity: 4,
        };
        let mut s = SlabMeta::EMPTY;
        s.start = buf.as_mut_ptr().cast();
        let (a, za) = s.take(&l);
        let (b, _) = s.take(&l);
        assert!(za && b as usize - a as usize == 32);
        // SAFETY: b is an in-use object of s.
        unsafe { s.give(b) };
        assert_eq!(s.take(&l), (b, false));
        let _ = s.take(&l);
        let _ = s.take(&l);
        assert!(s.take(&l).0.is_null());
        assert_eq!(s.in_use, 4);
    }
}
