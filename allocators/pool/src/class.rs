//! Per-class tuning: how big a chunk is, how many blocks move per batch, and
//! how many a thread keeps.
//!
//! Every number here is a `const` table indexed by the class of
//! [`heapkit_core::size_class`], computed at compile time, so the fast paths
//! read one entry and never divide.
//!
//! - A *chunk* is a power-of-two run of [`PAGE`]-sized pages of a segment,
//!   aligned to its own size, holding blocks of one class at
//!   `chunk + i * size`. It is sized for about 16 blocks (one page at
//!   least, 1 MiB at most), so every power-of-two class, which serves
//!   alignments above 16, is aligned by construction.
//! - A *batch* is what moves between a thread and the global depot in one
//!   locked operation: about 64 KiB worth of blocks, between 2 and 128.
//! - A thread keeps at most `2 * batch` free blocks per class: its list of
//!   up to `batch` blocks and one full spare batch.
//!
//! The pool's *class index* covers both modes: `0..CLASS_COUNT` are the
//! default mode's classes, `HARDENED_BASE + c` the hardened mode's twin of
//! class `c` ([`CLASSES`] in all). The two never share a list, a depot, a
//! chunk or a segment, and every table here is indexed by the pool's
//! class index.

use heapkit_core::size_class::{CLASS_COUNT, SIZES};

/// Class indices of both modes (see the module docs).
pub const CLASSES: usize = 2 * CLASS_COUNT;
/// The hardened mode's first class index.
pub const HARDENED_BASE: usize = CLASS_COUNT;

/// Whether class index `class` belongs to the hardened mode.
#[inline(always)]
pub const fn is_hardened(class: usize) -> bool {
    class >= HARDENED_BASE
}

/// Block size of every class index.
const BLOCK_SIZES: [u32; CLASSES] = {
    let mut t = [0u32; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        t[c] = SIZES[c % CLASS_COUNT];
        c += 1;
    }
    t
};

/// log2 of the page: the unit in which segments are cut into chunks.
pub const PAGE_SHIFT: usize = 16;
/// The page: 64 KiB.
pub const PAGE: usize = 1 << PAGE_SHIFT;
/// Largest chunk, in pages (1 MiB).
pub const MAX_CHUNK_PAGES: usize = 16;
/// Blocks a chunk is sized for.
const BLOCKS_PER_CHUNK_TARGET: usize = 16;
/// Bytes a batch is sized for.
const BATCH_BYTES: usize = 64 << 10;
/// Bounds of a batch, in blocks.
const MIN_BATCH: usize = 2;
const MAX_BATCH: usize = 128;

/// Pages of a chunk of each class (a power of two, 1..=16).
pub const CHUNK_PAGES: [u8; CLASSES] = {
    let mut t = [0u8; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        let want = (BLOCK_SIZES[c] as usize * BLOCKS_PER_CHUNK_TARGET).div_ceil(PAGE);
        let pages = want.next_power_of_two();
        t[c] = if pages > MAX_CHUNK_PAGES {
            MAX_CHUNK_PAGES as u8
        } else {
            pages as u8
        };
        c += 1;
    }
    t
};

/// Blocks in a chunk of each class.
pub const CHUNK_BLOCKS: [u32; CLASSES] = {
    let mut t = [0u32; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        t[c] = ((CHUNK_PAGES[c] as usize * PAGE) / BLOCK_SIZES[c] as usize) as u32;
        c += 1;
    }
    t
};

/// Blocks per batch of each class.
pub const BATCH: [u32; CLASSES] = {
    let mut t = [0u32; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        let mut b = BATCH_BYTES / BLOCK_SIZES[c] as usize;
        if b < MIN_BATCH {
            b = MIN_BATCH;
        }
        if b > MAX_BATCH {
            b = MAX_BATCH;
        }
        t[c] = b as u32;
        c += 1;
    }
    t
};

// Layout facts the allocator relies on.
const _: () = {
    let mut c = 0;
    while c < CLASSES {
        let size = BLOCK_SIZES[c] as usize;
        let chunk = CHUNK_PAGES[c] as usize * PAGE;
        // Every chunk holds at least two blocks, so a batch never spans
        // more than the blocks a chunk can give.
        assert!(CHUNK_BLOCKS[c] >= 2);
        // Power-of-two classes (the ones serving alignments above 16) are
        // aligned because the chunk is aligned to its size, which they divide.
        if size.is_power_of_two() {
            assert!(chunk.is_multiple_of(size));
        }
        // The trim counters and the batch count field are wide enough.
        assert!(CHUNK_BLOCKS[c] <= u16::MAX as u32 + 1);
        c += 1;
    }
};

/// Bytes of a chunk of class `class`.
#[inline]
pub fn chunk_bytes(class: usize) -> usize {
    debug_assert!(class < CLASSES);
    // SAFETY: class indices are below CLASSES (a size_class class, plus
    // HARDENED_BASE in hardened mode, or a page_class byte written from
    // one).
    (unsafe { *CHUNK_PAGES.get_unchecked(class) }) as usize * PAGE
}

/// Block size of class `class` (no bounds check on the hot path).
#[inline]
pub fn block_size(class: usize) -> usize {
    debug_assert!(class < CLASSES);
    // SAFETY: as for `chunk_bytes`.
    (unsafe { *BLOCK_SIZES.get_unchecked(class) }) as usize
}

/// Blocks per batch of class `class`.
#[inline]
pub fn batch(class: usize) -> u32 {
    debug_assert!(class < CLASSES);
    // SAFETY: as for `chunk_bytes`.
    unsafe { *BATCH.get_unchecked(class) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sane() {
        for c in 0..CLASSES {
            assert!(CHUNK_PAGES[c].is_power_of_two());
            assert!(CHUNK_BLOCKS[c] as usize * block_size(c) <= chunk_bytes(c));
            assert!(batch(c) >= 2 && batch(c) <= 128);
        }
        assert_eq!(chunk_bytes(0), PAGE);
        assert_eq!(chunk_bytes(CLASS_COUNT - 1), 1 << 20);
        assert_eq!(block_size(HARDENED_BASE + 3), block_size(3));
    }
}
