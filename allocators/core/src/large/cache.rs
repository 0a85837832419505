//! The cache of freed large blocks (see the parent module's docs): at most
//! [`CACHE_SLOTS`] mappings, a byte limit that follows demand, a decay that
//! unmaps old entries, and a lock that large operations only ever *try*.

use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::{unmap_segments, BlockState, LargeHeader};
use crate::lock::SpinLock;
use crate::os;

/// A cached mapping up to this many times the size asked for is reused
/// whole; a larger one is left in the cache for a bigger request.
pub(super) const KEEP_WHOLE_UP_TO: usize = 2;
/// Blocks the cache keeps (64 rather than 32: the `large` workload, whose
/// requests must find a cached block within 2x, ran 65 against 84 ms).
pub const CACHE_SLOTS: usize = 64;
/// Bytes the cache keeps at most by default (`HEAPKIT_LARGE_CACHE_MB`,
/// [`crate::options`]).
pub const CACHE_BYTES: usize = (crate::options::DEFAULT_LARGE_CACHE_MB as usize) << 20;
/// Cached blocks older than this are unmapped, by default
/// (`HEAPKIT_LARGE_DECAY_MS`), in nanoseconds.
pub const CACHE_DELAY_NS: u64 = crate::options::DEFAULT_LARGE_DECAY_MS * 1_000_000;

#[derive(Clone, Copy)]
pub(super) struct CachedBlock {
    base: *mut u8,
    map_size: usize,
    freed_at_ns: u64,
    /// The block's guard page bytes (0: unguarded); a cached block serves
    /// only a request of its kind.
    guard: usize,
}

pub(super) struct BlockCache {
    blocks: [CachedBlock; CACHE_SLOTS],
    len: usize,
    bytes: usize,
}

// SAFETY: the cached pointers are unused mappings owned by the cache.
unsafe impl Send for BlockCache {}

pub(super) static CACHE: SpinLock<BlockCache> = SpinLock::new(BlockCache {
    blocks: [CachedBlock {
        base: ptr::null_mut(),
        map_size: 0,
        freed_at_ns: 0,
        guard: 0,
    }; CACHE_SLOTS],
    len: 0,
    bytes: 0,
});

/// Bytes of large mappings handed out and not freed yet (their `map_size`),
/// the demand the cache's limit follows ([`cache_limit`]).
pub(super) static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes the cache may hold now: `HEAPKIT_LARGE_CACHE_MB`, or half of the
/// live large bytes when that is more (0 when the option is 0: no cache).
///
/// A fixed limit was too small for programs whose working set of large
/// blocks is big: mimalloc-bench's malloc-large (20 live blocks of 2-20 MiB,
/// one replaced per step) found a fitting cached block too rarely with
/// 64 MiB and spent its time faulting in fresh pages (1.3x libmimalloc;
/// 0.3x with 128 MiB). Following demand keeps what such a program will
/// reuse; the decay still gives everything back once it stops.
fn cache_limit() -> usize {
    let floor = crate::options::get().large_cache_bytes;
    if floor == 0 {
        return 0;
    }
    floor.max(LIVE_BYTES.load(Relaxed) / 2)
}

/// Unmaps every cached block (or, with `only_expired`, those older than
/// [`CACHE_DELAY_NS`]). Allocators call this from their purge points.
/// Returns whether any block was unmapped.
pub fn trim(only_expired: bool) -> bool {
    let now = if only_expired {
        os::coarse_monotonic_ns()
    } else {
        u64::MAX
    };
    let mut cache = CACHE.lock();
    let before = cache.len;
    expire(&mut cache, now);
    cache.len != before
}

/// Takes the lock so `fork()` finds it free; see [`after_fork_parent`].
pub fn before_fork() {
    CACHE.raw().lock();
    crate::reservation::before_fork();
}

/// Releases the lock taken by [`before_fork`] in the parent.
pub fn after_fork_parent() {
    crate::reservation::after_fork_parent();
    // SAFETY: before_fork took the lock in this thread.
    unsafe { CACHE.raw().unlock() };
}

/// Re-initialises the lock in the child.
pub fn after_fork_child() {
    // SAFETY: called in the single-threaded child after fork.
    unsafe { CACHE.raw().reset_after_fork() };
    crate::reservation::after_fork_child();
}

fn expire(cache: &mut BlockCache, now: u64) {
    let delay = crate::options::get().large_decay_ns;
    let mut i = 0;
    while i < cache.len {
        let b = cache.blocks[i];
        if now.saturating_sub(b.freed_at_ns) >= delay || now == u64::MAX {
            cache.len -= 1;
            cache.blocks[i] = cache.blocks[cache.len];
            cache.bytes -= b.map_size;
            // SAFETY: the cached mapping is unused and exactly base..+map_size.
            unsafe { unmap_segments(b.base, b.map_size + b.guard) };
        } else {
            i += 1;
        }
    }
}

/// Takes the smallest cached mapping of at least `map_size` bytes and at
/// most [`KEEP_WHOLE_UP_TO`] times that; returns its base and its size, or
/// null if none fits. The mapping is reused whole: its resident pages need
/// no fault again and the block can later grow in place up to its mapping.
///
/// A bigger mapping is left for a bigger request (or the decay) rather than
/// trimmed: unmapping the resident tail of a cached block took 0.2-0.6 ms
/// (the kernel frees its pages), inside `malloc` (the `large` workload's
/// malloc p99 was 90 us with trimming).
pub(super) fn take_cached(map_size: usize, guard: usize) -> (*mut u8, usize) {
    let Some(mut cache) = CACHE.try_lock() else {
        return (ptr::null_mut(), 0);
    };
    let most = map_size.saturating_mul(KEEP_WHOLE_UP_TO);
    let mut best = usize::MAX;
    for i in 0..cache.len {
        let b = cache.blocks[i];
        if b.map_size >= map_size
            && b.map_size <= most
            && b.guard == guard
            && (best == usize::MAX || b.map_size < cache.blocks[best].map_size)
        {
            best = i;
        }
    }
    if best == usize::MAX {
        // Growing a smaller cached block instead (mremap, resident pages
        // kept) was measured slower on the harness's `large` workload
        // (1.30x glibc's time against 1.08x without it).
        return (ptr::null_mut(), 0);
    }
    let b = cache.blocks[best];
    cache.len -= 1;
    cache.blocks[best] = cache.blocks[cache.len];
    cache.bytes -= b.map_size;
    (b.base, b.map_size)
}

/// At exhaustion: unmaps every cached block and the reservation's
/// remainder, so the retry finds the address space. Both locks are only
/// *tried*: this runs inside any allocator's malloc, and in the child of a
/// `fork` by an allocator without fork handlers (Bump) a lock held by a
/// thread of the parent is never released; waiting for it would hang the
/// child (the cache is then simply not emptied).
#[cold]
#[inline(never)]
pub(super) fn reclaim_cache() {
    if let Some(mut cache) = CACHE.try_lock() {
        expire(&mut cache, u64::MAX);
    }
    let _ = crate::reservation::release();
}

/// Keeps the freed block `base` (of `map_size` bytes plus `guard`) in the
/// cache if it fits the limits, else unmaps it.
///
/// # Safety
/// `base` is a dead large block's mapping, exactly `map_size` bytes plus
/// its guard, whose header says it is live.
pub(super) unsafe fn keep_or_unmap(base: *mut u8, map_size: usize, guard: usize) {
    let now = os::coarse_monotonic_ns();
    // Never wait for the cache: a busy (or, in a forked child, orphaned)
    // lock just means this block is unmapped instead of cached.
    let Some(mut cache) = CACHE.try_lock() else {
        // SAFETY: the block is dead and its mapping is exactly base..+map_size
        // and its guard.
        unsafe { unmap_segments(base, map_size + guard) };
        return;
    };
    expire(&mut cache, now);
    let limit = cache_limit();
    if map_size <= limit / 4 && cache.len < CACHE_SLOTS && cache.bytes + map_size <= limit {
        // SAFETY: the block's header (caller guarantee), unused by anyone.
        unsafe { (*base.cast::<LargeHeader>()).state = BlockState::Cached as u64 };
        let i = cache.len;
        cache.blocks[i] = CachedBlock {
            base,
            map_size,
            freed_at_ns: now,
            guard,
        };
        cache.len += 1;
        cache.bytes += map_size;
        return;
    }
    drop(cache);
    // SAFETY: the block is dead and its mapping is exactly base..+map_size
    // and its guard.
    unsafe { unmap_segments(base, map_size + guard) };
}
