//! `Pool::trim`: give entirely free chunks back to the OS.
//!
//! The pool retains memory: a freed block stays on a free list for reuse,
//! so a program that peaks at 1 GiB of small blocks keeps that memory
//! resident after freeing them. That is the price of frees that are two
//! stores. `trim` is the explicit way back:
//!
//! 1. the calling thread flushes its own cache to the depots;
//! 2. under each mode's chunk lock in turn, every depot of the mode is emptied at once;
//! 3. every block taken is walked to count the free blocks of its chunk
//!    (in the segment header's scratch counters), plus the blocks of the
//!    abandoned regions;
//! 4. a second walk keeps the blocks of chunks that are not entirely free
//!    (rebatched onto the depots) and marks the others;
//! 5. marked chunks are purged (`MADV_DONTNEED`), their pages returned to
//!    their segment, and segments left with no chunk are unmapped;
//! 6. the large path's cache is emptied.
//!
//! Cost: two passes over every free block in the depots (a cache miss per
//! block, more if the free blocks have been swapped out), one `madvise` per
//! released chunk and one `munmap` per empty segment. While it runs, threads
//! that find their depot empty wait for the chunk lock to carve a new chunk;
//! threads with cached blocks are not disturbed. Blocks cached by *other*
//! live threads keep their chunks, which is why a trim after all workers
//! have exited (their caches are flushed at exit) releases everything.
//!
//! No chunk is released while any of its blocks is live or cached: a chunk
//! is released only when every one of its blocks was counted among the
//! blocks trim itself took out of the depots.

use core::ptr;

use heapkit_core::large;
use heapkit_core::size_class::CLASS_COUNT;

use crate::class::{batch, block_size, CHUNK_BLOCKS, HARDENED_BASE};
use crate::depot::{depot, for_each_taken_block, for_each_taken_region, FreeBlock};
use crate::mode;
use crate::segment::{chunk_of, chunks_of};
use crate::slow::flush_all;
use crate::thread_cache;

/// Releases every entirely free chunk of both modes; returns the bytes
/// released.
pub fn trim() -> usize {
    if let Some(t) = thread_cache::own() {
        flush_all(t);
    }
    let released = trim_mode(0) + trim_mode(HARDENED_BASE);
    let _ = large::trim(false);
    released
}

/// Steps 2 to 5 for the classes `base..base + CLASS_COUNT` (one mode),
/// under that mode's chunk lock.
fn trim_mode(base: usize) -> usize {
    let mut chunks = chunks_of(base).lock();
    let mut batches = [ptr::null_mut::<FreeBlock>(); CLASS_COUNT];
    let mut regions = [ptr::null_mut::<u8>(); CLASS_COUNT];
    for c in 0..CLASS_COUNT {
        let taken = depot(base + c).take_all();
        batches[c] = taken.batches;
        regions[c] = taken.regions;
    }
    // Pass 1: count the free blocks of every chunk.
    for (c, (&b, &r)) in batches.iter().zip(regions.iter()).enumerate() {
        let class = base + c;
        let size = block_size(class);
        // SAFETY: we own what take_all returned, and hold the mode's chunk lock, which
        // guards the trim counters of every segment.
        unsafe {
            for_each_taken_block(b, class, |block| {
                let (seg, first) = chunk_of(block.cast(), class);
                (*seg).trim_count[first] += 1;
            });
            for_each_taken_region(r, |start, end| {
                let (seg, first) = chunk_of(start, class);
                (*seg).trim_count[first] += ((end as usize - start as usize) / size) as u32;
            });
        }
    }
    // Pass 2: keep the blocks of partly used chunks, mark the others.
    for (c, (&b, &r)) in batches.iter().zip(regions.iter()).enumerate() {
        let class = base + c;
        let full = CHUNK_BLOCKS[class];
        let per_batch = batch(class);
        let d = depot(class);
        let mut head = ptr::null_mut::<FreeBlock>();
        let mut len = 0;
        // SAFETY: as in pass 1. The walk reads a block's links before the
        // closure relinks it, and a kept batch is pushed only once all of
        // its blocks have been visited.
        unsafe {
            for_each_taken_block(b, class, |block| {
                let (seg, first) = chunk_of(block.cast(), class);
                if (*seg).trim_count[first] == full {
                    (*seg).release |= 1 << first;
                    return;
                }
                mode::set_next(block, head, class);
                head = block;
                len += 1;
                if len == per_batch {
                    d.push_batch(head, len);
                    head = ptr::null_mut();
                    len = 0;
                }
            });
            if len > 0 {
                d.push_batch(head, len);
            }
            for_each_taken_region(r, |start, end| {
                let (seg, first) = chunk_of(start, class);
                if (*seg).trim_count[first] == full {
                    (*seg).release |= 1 << first;
                } else {
                    // Restore the zero contents the depot promises, then
                    // hand the region back (push_region rewrites its node).
                    start.write_bytes(0, 16);
                    d.push_region(start, end);
                }
            });
        }
    }
    chunks.release_marked()
}
