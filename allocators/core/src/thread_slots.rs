//! Per-thread state kept outside the TLS block.
//!
//! # What it is for
//!
//! A `thread_local!` lives in the static TLS block that glibc gives every
//! thread of the process: at each `pthread_create` the whole TLS image is
//! copied (`.tdata`) or zeroed (`.tbss`) into the new thread's stack
//! mapping, where it stays resident as long as the stack (glibc caches the
//! stacks of exited threads). A thread heap of several KiB there costs
//! every thread its size in copying and in resident memory, whether or not
//! the thread ever allocates, and in `libheapkit.so` every backend's
//! state is in every thread's image, whichever backend runs. sizeclass's
//! two heaps made each thread's stack mapping 16 KiB larger than under
//! mimalloc, whose heaps are allocated and whose TLS holds one pointer.
//!
//! A [`SlotPool`] hands out fixed-size slots for such state instead: the
//! thread pointer ([`thread_pointer!`](crate::thread_pointer)) that the
//! fast paths read already names the state, so they pay nothing more; a
//! thread takes a slot on its first slow path and gives it back when it
//! exits, and the next thread takes the same (resident) memory.
//!
//! # What it costs
//!
//! Slow paths only: a spin lock around a free list; slots are carved from
//! 64 KiB anonymous mappings (more for states larger than that), which are
//! never unmapped (a slot of a thread that never gave it back, one that
//! allocated after its last exit hook, is not reused either: that thread
//! may still be running). Nothing here allocates through the global
//! allocator.
//!
//! # Example
//!
//! ```
//! use heapkit_core::thread_slots::SlotPool;
//!
//! static POOL: SlotPool = SlotPool::new();
//! let a = POOL.take(3000, 8);
//! assert!(!a.is_null() && a as usize % 64 == 0);
//! // SAFETY: `a` came from POOL.take and is given back once.
//! unsafe { POOL.give(a) };
//! assert_eq!(POOL.take(3000, 8), a); // the slot is reused
//! ```

use core::ptr;

use crate::list::{Linked, List};
use crate::lock::SpinLock;
use crate::os;

/// Slots are aligned (and their sizes rounded) to this: a cache line, so
/// two threads' states never share one.
pub const SLOT_ALIGN: usize = 64;

/// Bytes mapped at a time (at least one slot's worth).
const CHUNK_BYTES: usize = 64 << 10;

/// A slot on the free list: its first bytes hold the links.
struct FreeSlot {
    next: *mut FreeSlot,
    prev: *mut FreeSlot,
}

// SAFETY: `next` and `prev` are the free slot's own links, used only by
// the pool's list under its lock.
unsafe impl Linked for FreeSlot {
    unsafe fn next(node: *mut Self) -> *mut *mut Self {
        // SAFETY: node is a free slot of the pool (the trait's contract).
        unsafe { ptr::addr_of_mut!((*node).next) }
    }
    unsafe fn prev(node: *mut Self) -> *mut *mut Self {
        // SAFETY: as above.
        unsafe { ptr::addr_of_mut!((*node).prev) }
    }
}

/// What the lock protects.
struct Slots {
    /// Slots given back, as their threads left them (resident).
    free: List<FreeSlot>,
    /// Slots given back whose whole pages past their links were purged
    /// ([`SlotPool::purge_free`]); taken after `free`'s.
    purged: List<FreeSlot>,
    /// The never-used rest of the last mapping: `next..end`.
    next: *mut u8,
    /// See `next`.
    end: *mut u8,
    /// The slot size this pool serves (0 until the first `take`).
    stride: usize,
    /// Where a mapping's first slot starts (see
    /// [`SlotPool::with_first_slot_offset`]).
    first_offset: usize,
}

// SAFETY: the pointers name memory the pool owns; the lock serialises them.
unsafe impl Send for Slots {}

/// A pool of equal-sized, cache-line-aligned slots for per-thread state
/// (see the [module docs](self)). One pool serves one size: every `take`
/// must ask for the same size.
pub struct SlotPool {
    slots: SpinLock<Slots>,
}

impl SlotPool {
    /// An empty pool (nothing mapped until the first [`SlotPool::take`]).
    pub const fn new() -> Self {
        Self::with_first_slot_offset(0)
    }

    /// An empty pool whose mappings start their first slot `offset` bytes
    /// in (a multiple of [`SLOT_ALIGN`]), which moves every slot's offset
    /// within its page. Where a thread's state sits in its page decides
    /// which of its hot lines share their page offset with other hot data
    /// (a loop's stack frames, page metadata): a load 4 KiB away from a
    /// pending store waits for it (4K aliasing). Measured, not derived:
    /// pool's caches at offset 0 ran larson x4 and prodcons x4 1.06x their
    /// time in the TLS block (21 interleaved runs), and 0.97-1.01x at
    /// 0x100, 0x880 or 0xc00.
    pub const fn with_first_slot_offset(offset: usize) -> Self {
        assert!(offset.is_multiple_of(SLOT_ALIGN) && offset < CHUNK_BYTES / 2);
        Self {
            slots: SpinLock::new(Slots {
                free: List::EMPTY,
                purged: List::EMPTY,
                next: ptr::null_mut(),
                end: ptr::null_mut(),
                stride: 0,
                first_offset: offset,
            }),
        }
    }

    /// A slot of at least `size` bytes aligned to `align` (at most
    /// [`SLOT_ALIGN`]): one given back before if there is one (its bytes
    /// as they were left, or zero where [`SlotPool::purge_free`] gave its
    /// pages back; a resident one first), else a fresh, zeroed one. Null
    /// when no memory can be mapped.
    pub fn take(&self, size: usize, align: usize) -> *mut u8 {
        debug_assert!(
            align <= SLOT_ALIGN,
            "thread state aligned beyond a cache line"
        );
        let stride = size.max(size_of::<FreeSlot>()).next_multiple_of(SLOT_ALIGN);
        let mut s = self.slots.lock();
        debug_assert!(s.stride == 0 || s.stride == stride, "one size per pool");
        s.stride = stride;
        // SAFETY: the free list holds slots of this pool, given back and
        // no longer used by anyone (`give`'s contract).
        let mut reused = unsafe { s.free.pop_front() };
        if reused.is_null() {
            // SAFETY: as above.
            reused = unsafe { s.purged.pop_front() };
        }
        if !reused.is_null() {
            return reused.cast();
        }
        if (s.end as usize) - (s.next as usize) < stride {
            let Some(bytes) = os::round_to_pages((stride + s.first_offset).max(CHUNK_BYTES)) else {
                return ptr::null_mut();
            };
            let chunk = os::map(bytes);
            if chunk.is_null() {
                return ptr::null_mut();
            }
            // (The old chunk's unused tail, less than a slot, is left.)
            // SAFETY: chunk is a fresh mapping of `bytes` bytes, more than
            // the offset and a slot.
            unsafe {
                s.next = chunk.add(s.first_offset);
                s.end = chunk.add(bytes);
            }
        }
        let slot = s.next;
        // SAFETY: slot + stride <= end, inside the mapping.
        s.next = unsafe { slot.add(stride) };
        slot
    }

    /// Gives a slot back for another thread to take.
    ///
    /// # Safety
    /// `slot` came from this pool's [`SlotPool::take`], is given back once,
    /// and nothing reads or writes it any more (its first 16 bytes become
    /// the pool's links).
    pub unsafe fn give(&self, slot: *mut u8) {
        debug_assert_eq!(slot as usize % SLOT_ALIGN, 0);
        let mut s = self.slots.lock();
        // SAFETY: caller guarantee: the slot is ours again, at least
        // `size_of::<FreeSlot>()` bytes and aligned.
        unsafe { s.free.push_front(slot.cast::<FreeSlot>()) };
    }

    /// Gives back to the OS the whole pages of every free slot, past the
    /// page that holds its links (a background purger's idle round: the
    /// slots of exited threads are otherwise resident for good, 11 KiB a
    /// thread for slab's caches). Each slot is purged once; the next
    /// thread to take it faults its pages in again. Returns the bytes
    /// purged.
    pub fn purge_free(&self) -> usize {
        let mut s = self.slots.lock();
        let stride = s.stride;
        let page = os::page_size();
        let mut bytes = 0;
        loop {
            // SAFETY: the free list holds slots of this pool that nobody
            // uses (`give`'s contract).
            let slot = unsafe { s.free.pop_front() };
            if slot.is_null() {
                break;
            }
            let links_end = slot as usize + size_of::<FreeSlot>();
            let from = links_end.next_multiple_of(page);
            let to = (slot as usize + stride) & !(page - 1);
            if to > from {
                // SAFETY: whole pages inside a free slot of our mapping,
                // past its links: nothing in them is needed (a slot is
                // written in full when it is taken and bound).
                unsafe { os::purge(from as *mut u8, to - from) };
                bytes += to - from;
            }
            // SAFETY: the slot is still free and ours; it moves lists.
            unsafe { s.purged.push_front(slot) };
        }
        bytes
    }

    /// In a forked child: starts the pool afresh, unlocked and empty. The
    /// parent's free slots and the rest of its last mapping are left
    /// unused here (a few KiB; most children `exec` soon), so the lock
    /// need not be held across `fork()` (a thread may have been popping
    /// the free list), and no fork writes the pool's page: holding it
    /// would cost a copy-on-write fault in the parent and the child. Slots
    /// bound by threads are unaffected: the forking thread's stays its
    /// own, the others' belong to threads that do not exist in the child.
    ///
    /// # Safety
    /// Only in a `pthread_atfork` child handler, where the child is
    /// single-threaded.
    pub unsafe fn forget_after_fork(&self) {
        // SAFETY: caller guarantee: no other thread exists to hold the
        // lock or use the lists.
        unsafe {
            self.slots.raw().reset_after_fork();
            let s = self.slots.get_unchecked();
            s.free = List::EMPTY;
            s.purged = List::EMPTY;
            s.next = ptr::null_mut();
            s.end = ptr::null_mut();
        }
    }
}

impl Default for SlotPool {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::vec::Vec;

    #[test]
    fn slots_are_aligned_disjoint_zeroed_and_reused() {
        static POOL: SlotPool = SlotPool::new();
        let size = 7_000;
        let taken: Vec<*mut u8> = (0..40).map(|_| POOL.take(size, 8)).collect();
        let mut seen = HashSet::new();
        for (i, &p) in taken.iter().enumerate() {
            assert!(!p.is_null());
            assert_eq!(p as usize % SLOT_ALIGN, 0);
            // SAFETY: each slot is size bytes of pool memory, ours alone.
            unsafe {
                assert!(core::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                p.write_bytes(i as u8, size);
            }
            assert!(seen.insert(p as usize));
        }
        // No overlap: every slot still holds its own pattern.
        for (i, &p) in taken.iter().enumerate() {
            // SAFETY: as above.
            let bytes = unsafe { core::slice::from_raw_parts(p, size) };
            assert!(bytes.iter().all(|&b| b == i as u8), "slot {i} overwritten");
        }
        for &p in &taken {
            // SAFETY: taken above, given back once, no longer used.
            unsafe { POOL.give(p) };
        }
        // Every slot comes back before anything new is mapped.
        let again: HashSet<usize> = (0..40).map(|_| POOL.take(size, 8) as usize).collect();
        assert_eq!(again, seen);
    }

    /// Whether the page at `p` is resident.
    fn resident(p: usize) -> bool {
        let page = os::page_size();
        let mut v = 0u8;
        // SAFETY: one page of our mapping; mincore writes one byte.
        let rc = unsafe { libc::mincore((p & !(page - 1)) as *mut _, 1, &mut v) };
        assert_eq!(rc, 0);
        v & 1 == 1
    }

    #[test]
    fn purging_gives_back_free_slots_pages_and_nothing_else() {
        static POOL: SlotPool = SlotPool::new();
        let size = 11_000;
        let taken: Vec<*mut u8> = (0..5).map(|_| POOL.take(size, 8)).collect();
        for (i, &p) in taken.iter().enumerate() {
            // SAFETY: each slot is size bytes of pool memory, ours alone.
            unsafe { p.write_bytes(0x10 + i as u8, size) };
        }
        // Slots 1 and 3 are given back; 0, 2 and 4 (their neighbours,
        // sharing pages with them) stay in use.
        for i in [1, 3] {
            // SAFETY: taken above, given back once, no longer used.
            unsafe { POOL.give(taken[i]) };
        }
        let page = os::page_size();
        let purged = POOL.purge_free();
        assert!(
            purged >= 2 * page,
            "purged {purged} bytes of two 11 KB slots"
        );
        assert_eq!(POOL.purge_free(), 0, "a purged slot is purged once");
        for i in [0, 2, 4] {
            // SAFETY: a slot still in use, ours.
            let bytes = unsafe { core::slice::from_raw_parts(taken[i], size) };
            assert!(
                bytes.iter().all(|&b| b == 0x10 + i as u8),
                "slot {i} touched"
            );
        }
        for i in [1, 3] {
            let p = taken[i] as usize;
            let inner = (p + 16).next_multiple_of(page);
            assert!(!resident(inner), "slot {i}: a whole page still resident");
            // SAFETY: the pool's memory, mapped; nothing else uses the
            // given-back slot in this test.
            assert_eq!(unsafe { *(inner as *const u8) }, 0);
        }
        // A resident slot given back later is taken before purged ones.
        // SAFETY: taken above, given back once.
        unsafe { POOL.give(taken[4]) };
        assert_eq!(POOL.take(size, 8), taken[4]);
        let next: HashSet<usize> = (0..2).map(|_| POOL.take(size, 8) as usize).collect();
        assert_eq!(next, HashSet::from([taken[1] as usize, taken[3] as usize]));
    }

    #[test]
    fn a_forked_child_starts_the_pool_afresh() {
        static POOL: SlotPool = SlotPool::new();
        let held = POOL.take(500, 8);
        let given = [POOL.take(500, 8), POOL.take(500, 8)];
        for p in given {
            // SAFETY: taken above, given back once.
            unsafe { POOL.give(p) };
        }
        // SAFETY: no other thread uses this pool (what the child handler
        // guarantees).
        unsafe { POOL.forget_after_fork() };
        let fresh = POOL.take(500, 8);
        assert!(!fresh.is_null());
        assert!(
            !given.contains(&fresh) && fresh != held,
            "a slot reused after the reset"
        );
        // SAFETY: a 500-byte slot of ours: fresh memory, zeroed.
        assert!(unsafe { core::slice::from_raw_parts(fresh, 500) }
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn threads_take_and_give_concurrently() {
        static POOL: SlotPool = SlotPool::new();
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                std::thread::spawn(move || {
                    for round in 0..2_000u32 {
                        let p = POOL.take(200, 16);
                        assert!(!p.is_null());
                        let mark = t.wrapping_mul(31).wrapping_add(round as u8);
                        // SAFETY: the slot is ours until given back.
                        unsafe {
                            p.write_bytes(mark, 200);
                            std::thread::yield_now();
                            assert!(core::slice::from_raw_parts(p, 200)
                                .iter()
                                .all(|&b| b == mark));
                            POOL.give(p);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
