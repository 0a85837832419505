//! Slow paths: everything the thread-cache fast paths hand off.
//!
//! All functions here are `#[cold] #[inline(never)]`. Those that stand in
//! for a fast path end by calling it again, so the block is always taken or
//! returned by the one piece of code that keeps the list invariants.
//!
//! - `alloc`: the list of the class is empty. Set the thread up if needed,
//!   then refill: the thread's spare batch, else a batch from the depot,
//!   else blocks carved from this thread's fresh region, else an abandoned
//!   region, else a new chunk.
//! - `alloc_zeroed`: as `alloc`, but a block straight from a fresh region
//!   is returned without a memset (it was never used, so it is zero).
//! - `free`: the list is at its limit. A class the thread has not
//!   allocated (limit 0): into its outbox, a full one to the depot.
//!   Otherwise make the list the spare batch (handing an older spare to
//!   the depot), then push.
//! - exited threads (after their exit hook ran) go through the depots
//!   directly, one block at a time.
//! - `alloc_large` / `free_large`: sizes above the classes, through
//!   `heapkit_core::large`.

use core::alloc::Layout;
use core::ffi::c_void;
use core::ptr;

use heapkit_core::{large, os};

use crate::class::{batch, block_size, CHUNK_BLOCKS, CLASSES};
use crate::depot::{depot, FreeBlock};
use crate::mode;
use crate::segment::chunks_of;
use crate::thread_cache::{self, ThreadCache, ThreadState};
use crate::{fork, STATS};

/// Runs [`on_thread_exit`] in every thread that allocated or freed.
static EXIT_KEY: os::ThreadExitKey = os::ThreadExitKey::new();

/// Sets the thread up on its first slow path: registers the exit hook (and
/// the process's fork handlers). A re-entrant call during registration sees
/// [`ThreadState::Initializing`] and proceeds without registering again; the cache is
/// usable in every state.
#[inline]
fn ensure_init(t: &ThreadCache) {
    if t.state.get() == ThreadState::Uninit {
        init_thread(t);
    }
}

#[cold]
#[inline(never)]
fn init_thread(t: &ThreadCache) {
    t.state.set(ThreadState::Initializing);
    fork::register_handlers();
    t.state.set(ThreadState::Active);
}

/// Called when a thread binds a cache (a slot of the pool): registers the
/// exit hook, which gives the slot back, and the fork handlers, which hold
/// the pool's lock across `fork()`. If the key cannot be created, the
/// thread's cache is lost when it exits (a leak, not an error): nothing
/// better can be done here.
pub fn on_bind(_t: *mut ThreadCache) {
    fork::register_handlers();
    let _ = EXIT_KEY.register(on_thread_exit, ptr::NonNull::<c_void>::dangling().as_ptr());
}

/// The exit hook: returns the dying thread's lists and regions to the
/// depots and gives its cache back; later calls from this thread use the
/// exited paths.
unsafe extern "C" fn on_thread_exit(_: *mut c_void) {
    if let Some(t) = thread_cache::own() {
        flush_all(t);
        // SAFETY: flushed; nothing refers to the cache any more.
        unsafe { thread_cache::release() };
    }
}

/// Hands every cached block and fresh region of `t` to the depots and flushes
/// its counters. Leaves every `limit` at 0 (the next free re-arms it).
pub fn flush_all(t: &ThreadCache) {
    for class in 0..CLASSES {
        let d = depot(class);
        let cc = t.class(class);
        let head = cc.head.replace(ptr::null_mut());
        let len = cc.len.replace(0);
        cc.limit.set(0);
        if !head.is_null() {
            // SAFETY: our list (len <= batch blocks, null-terminated) is
            // given up as one batch.
            unsafe { d.push_batch(head, len) };
        }
        let spare = t.spare(class);
        let head = spare.head.replace(ptr::null_mut());
        let len = spare.len.replace(0);
        if !head.is_null() {
            // SAFETY: as above, for the spare batch.
            unsafe { d.push_batch(head, len) };
        }
        let outbox = t.outbox(class);
        let head = outbox.head.replace(ptr::null_mut());
        let len = outbox.len.replace(0);
        if !head.is_null() {
            // SAFETY: as above, for the outbox.
            unsafe { d.push_batch(head, len) };
        }
        let fresh = t.fresh(class);
        let cur = fresh.cur.replace(ptr::null_mut());
        let end = fresh.end.replace(ptr::null_mut());
        // SAFETY: cur..end is this thread's untouched region, given up.
        unsafe { d.push_region(cur, end) };
    }
    t.stats.flush(&STATS);
}

/// Where a refill found blocks.
enum Refill {
    /// A batch is on the thread's list now.
    List,
    /// The thread's fresh region has blocks.
    Fresh,
    /// Out of memory.
    Failed,
}

/// Refills class `class` of `t`, whose list is empty.
fn refill(t: &ThreadCache, class: usize) -> Refill {
    let cc = t.class(class);
    if cc.limit.get() == 0 {
        // The thread allocates the class: its frees of it now go to its
        // list (see `free`).
        cc.limit.set(batch(class));
    }
    let spare = t.spare(class);
    if !spare.head.get().is_null() {
        cc.head.set(spare.head.replace(ptr::null_mut()));
        cc.len.set(spare.len.replace(0));
        return Refill::List;
    }
    let d = depot(class);
    let (head, n) = d.pop_batch();
    if !head.is_null() {
        cc.head.set(head);
        cc.len.set(n);
        return Refill::List;
    }
    let fresh = t.fresh(class);
    if fresh.cur.get() < fresh.end.get() {
        return Refill::Fresh;
    }
    let (mut start, mut end) = d.pop_region();
    if start.is_null() {
        start = chunks_of(class).lock().carve(class);
        if start.is_null() {
            return Refill::Failed;
        }
        // SAFETY: the chunk holds CHUNK_BLOCKS[class] blocks.
        end = unsafe { start.add(CHUNK_BLOCKS[class % CLASSES] as usize * block_size(class)) };
    }
    fresh.cur.set(start);
    fresh.end.set(end);
    Refill::Fresh
}

/// Takes up to a batch of blocks from the fresh region onto the list.
fn carve_fresh(t: &ThreadCache, class: usize) {
    let fresh = t.fresh(class);
    let size = block_size(class);
    let cur = fresh.cur.get();
    let avail = (fresh.end.get() as usize - cur as usize) / size;
    let n = avail.min(batch(class) as usize);
    debug_assert!(n > 0);
    let cc = t.class(class);
    // SAFETY: cur..cur + n * size lies in our fresh region; each block gets
    // its link to the next, the last one the current (empty) list head,
    // and (hardened) the free mark every listed block bears.
    unsafe {
        for i in 0..n {
            let block = cur.add(i * size).cast::<FreeBlock>();
            let next = if i + 1 < n {
                cur.add((i + 1) * size).cast()
            } else {
                cc.head.get()
            };
            mode::set_next(block, next, class);
            mode::mark_carved(block.cast(), class);
        }
        cc.head.set(cur.cast());
        fresh.cur.set(cur.add(n * size));
    }
    cc.len.set(cc.len.get() + n as u32);
}

/// Slow path of `alloc`: the list of `class` is empty.
#[cold]
#[inline(never)]
pub fn alloc(class: usize) -> *mut u8 {
    let Some(t) = thread_cache::bound() else {
        return alloc_exited(class, false);
    };
    ensure_init(t);
    if !t.class(class).head.get().is_null() {
        // A re-entrant call during set-up refilled the list.
        return t.alloc_any(class);
    }
    match refill(t, class) {
        Refill::List => {}
        Refill::Fresh if block_size(class) >= SINGLE_FRESH_MIN => return take_fresh(t, class),
        Refill::Fresh => carve_fresh(t, class),
        Refill::Failed => return ptr::null_mut(),
    }
    t.stats.maybe_flush(&STATS);
    t.alloc_any(class)
}

/// Blocks this large and up are taken from the fresh region one at a time
/// and handed out unwritten ([`take_fresh`]) rather than listed a batch at
/// a time: listing writes each block's link, a page fault inside `malloc`
/// per block (two per refill of a 64 KiB class, 1-3 us each on this VM),
/// for memory the program may not touch yet. The slow path per block costs
/// far less than the pages of such a block do.
const SINGLE_FRESH_MIN: usize = 32 * 1024;

/// Hands out the next block of the fresh region of `class` as it is:
/// never used, so zero, and nothing written into it.
fn take_fresh(t: &ThreadCache, class: usize) -> *mut u8 {
    let fresh = t.fresh(class);
    let block = fresh.cur.get();
    // SAFETY: `refill` returned `Fresh`: the region holds at least one
    // block.
    fresh.cur.set(unsafe { block.add(block_size(class)) });
    t.stats.on_alloc(&STATS, block_size(class));
    t.stats.maybe_flush(&STATS);
    block
}

/// Slow path of `alloc_zeroed`: the list of `class` is empty.
#[cold]
#[inline(never)]
pub fn alloc_zeroed(class: usize, size: usize) -> *mut u8 {
    let Some(t) = thread_cache::bound() else {
        return alloc_exited(class, true);
    };
    ensure_init(t);
    if !t.class(class).head.get().is_null() {
        return t.alloc_zeroed_any(class, size);
    }
    match refill(t, class) {
        Refill::List => t.alloc_zeroed_any(class, size),
        // Never used, so already zero: no memset.
        Refill::Fresh => take_fresh(t, class),
        Refill::Failed => ptr::null_mut(),
    }
}

/// Slow path of `free`: the list of `class` is at its limit.
///
/// # Safety
/// `block` must be a live pool block of `class`, not used afterwards.
#[cold]
#[inline(never)]
pub unsafe fn free(block: *mut u8, class: usize) {
    let Some(t) = thread_cache::bound() else {
        // SAFETY: forwarded caller guarantee.
        return unsafe { free_exited(block, class) };
    };
    ensure_init(t);
    let cc = t.class(class);
    if cc.limit.get() == 0 {
        // A class this thread has not allocated: the block was handed over
        // by another thread (a consumer's, a worker's). Reused here, it
        // would put this thread's next object on a cache line the other
        // thread's objects share (cache-scratch 2T ran 3.9x libmimalloc).
        // It waits in the outbox, which no allocation pops, and goes on to
        // the depot with a batch.
        let outbox = t.outbox(class);
        // SAFETY: forwarded caller guarantee: the block is dead, ours now,
        // and at least a link's size.
        unsafe { mode::set_next(block.cast(), outbox.head.get(), class) };
        outbox.head.set(block.cast());
        let len = outbox.len.get() + 1;
        outbox.len.set(len);
        t.stats.on_free(block_size(class));
        if len >= batch(class) {
            let head = outbox.head.replace(ptr::null_mut());
            outbox.len.set(0);
            // SAFETY: the outbox is a null-terminated batch of ours.
            unsafe { depot(class).push_batch(head, len) };
            t.stats.maybe_flush(&STATS);
        }
        return;
    }
    if cc.len.get() >= cc.limit.get() {
        // The full list becomes the spare; a spare already there goes to
        // the depot. No list is walked.
        let spare = t.spare(class);
        let old = spare.head.replace(cc.head.replace(ptr::null_mut()));
        let old_len = spare.len.replace(cc.len.replace(0));
        if !old.is_null() {
            // SAFETY: the old spare is a null-terminated batch of ours.
            unsafe { depot(class).push_batch(old, old_len) };
        }
        t.stats.maybe_flush(&STATS);
    }
    // SAFETY: forwarded caller guarantee; len < limit now.
    unsafe { t.free_any(block, class) }
}

/// `alloc` for a thread whose exit hook ran: one block from the depot.
#[cold]
#[inline(never)]
fn alloc_exited(class: usize, zeroed: bool) -> *mut u8 {
    let d = depot(class);
    let size = block_size(class);
    let (head, n) = d.pop_batch();
    let block: *mut u8 = if !head.is_null() {
        // SAFETY: we own the popped batch; its rest goes back, its head
        // leaves the list.
        unsafe {
            let rest = mode::next_of(head, class);
            mode::take(head.cast(), class);
            if n > 1 {
                d.push_batch(rest, n - 1);
            }
            if zeroed {
                head.cast::<u8>().write_bytes(0, size);
            }
        }
        head.cast()
    } else {
        let (mut start, mut end) = d.pop_region();
        if start.is_null() {
            start = chunks_of(class).lock().carve(class);
            if start.is_null() {
                return ptr::null_mut();
            }
            // SAFETY: the chunk holds CHUNK_BLOCKS[class] blocks.
            end = unsafe { start.add(CHUNK_BLOCKS[class % CLASSES] as usize * size) };
        }
        // SAFETY: start..end is an owned zero region of whole blocks; its
        // first block is ours, the rest goes back.
        unsafe { d.push_region(start.add(size), end) };
        start
    };
    STATS.add(1, 0, 0, size as i64);
    block
}

/// `free` for a thread whose exit hook ran: a batch of one to the depot.
///
/// # Safety
/// `block` must be a live pool block of `class`, not used afterwards.
#[cold]
#[inline(never)]
unsafe fn free_exited(block: *mut u8, class: usize) {
    let block = block.cast::<FreeBlock>();
    // SAFETY: the dead block becomes a one-block batch we hand over.
    unsafe {
        mode::set_next(block, ptr::null_mut(), class);
        depot(class).push_batch(block, 1);
    }
    STATS.add(0, 1, 0, -(block_size(class) as i64));
}

/// Counts an allocation (`freed = false`) or free of `bytes` outside the
/// thread-cache fast paths.
fn count(bytes: usize, freed: bool) {
    let Some(t) = thread_cache::bound() else {
        let delta = bytes as i64;
        if freed {
            STATS.add(0, 1, 0, -delta);
        } else {
            STATS.add(1, 0, 0, delta);
        }
        return;
    };
    if freed {
        t.stats.on_free(bytes);
    } else {
        t.stats.on_alloc(&STATS, bytes);
    }
    t.stats.maybe_flush(&STATS);
}

/// Counts a reallocation from `old` to `new` usable bytes.
pub fn count_realloc(old: usize, new: usize) {
    match thread_cache::bound() {
        None => STATS.add(0, 0, 1, new as i64 - old as i64),
        Some(t) => t.stats.on_realloc(&STATS, old, new),
    }
}

/// Allocates above the classes (or beyond their alignment); `guarded`
/// (hardened): the block ends right before an inaccessible page.
#[cold]
#[inline(never)]
pub fn alloc_large(layout: Layout, zeroed: bool, guarded: bool) -> *mut u8 {
    let p = if guarded {
        large::allocate_guarded(layout, zeroed)
    } else {
        large::allocate(layout, zeroed)
    };
    if !p.is_null() {
        // SAFETY: p is a live large block.
        count(unsafe { large::usable_size(p) }, false);
    }
    p
}

/// Frees a large block.
///
/// # Safety
/// `ptr` must be a live large block.
#[cold]
#[inline(never)]
pub unsafe fn free_large(ptr: *mut u8) {
    // SAFETY: caller guarantee.
    unsafe {
        count(large::size_to_free(ptr), true);
        large::free(ptr);
    }
}

/// Resizes a large block in place or by `mremap`.
///
/// # Safety
/// `ptr` must be a live large block.
#[cold]
#[inline(never)]
pub unsafe fn realloc_large(ptr: *mut u8, new_size: usize) -> *mut u8 {
    // SAFETY: caller guarantee.
    unsafe {
        let old = large::usable_size(ptr);
        let p = large::reallocate(ptr, new_size);
        if !p.is_null() {
            count_realloc(old, large::usable_size(p));
        }
        p
    }
}
