//! The global exchange: one [`Depot`] per class, where threads hand batches
//! of free blocks to each other.
//!
//! A thread whose list of a class grows past its high-water mark pushes a
//! *batch* (a null-terminated intrusive list of free blocks) here; a thread
//! whose list is empty pops one. Each depot is a stack of batches plus a
//! list of *regions* (never-used tails of chunks abandoned by exited
//! threads), behind a spin lock.
//!
//! # Why a lock, and why it is not on the fast path
//!
//! A lock-free Treiber stack of batches needs ABA protection (a generation
//! counter beside the pointer) and reads the `next` link of a batch another
//! thread may have popped and already be writing to, a data race that is
//! only benign on real hardware. A spin lock makes the exchange trivially
//! ABA-free and loss-free: a batch is reachable from exactly one place at a
//! time, and every read or write of a link happens under the lock. The cost
//! is one uncontended `compare_exchange` plus one store per *batch* (2..=128
//! blocks, about 64 KiB), never per allocation: the thread-local fast paths
//! in the `thread_cache` module touch no depot. Critical sections are a handful
//! of loads and stores with no call that can block or allocate. The
//! `top`/`regions` heads are also published as atomics so an empty depot is
//! recognised without taking the lock.
//!
//! # Invariants (hold whenever the lock is free)
//!
//! - Every block reachable from `top` is a free block of this depot's class
//!   that no thread and no other list holds.
//! - The first block of each batch carries, in its second word, the next
//!   batch (low 48 bits) and the number of blocks in its list (high 16 bits);
//!   that count is exact. Blocks are at least 16 bytes, so both words exist.
//! - Every region `start..end` on the `regions` list is a never-handed-out
//!   tail of a chunk of this class, a whole number of blocks long; its first
//!   16 bytes hold the list node, the rest is zero.

use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering::Relaxed, Ordering::Release};

use heapkit_core::lock::RawSpinLock;

use crate::class::CLASSES;
use crate::segment::ADDRESS_BITS;

/// The first two words of a free block.
#[repr(C)]
pub struct FreeBlock {
    /// Next block of the same list (thread list or batch); null at the end.
    pub next: *mut FreeBlock,
    /// On the first block of a batch in a depot: next batch | count << 48.
    link: usize,
}

/// The node at the start of an abandoned region.
#[repr(C)]
struct RegionNode {
    next: *mut RegionNode,
    end: *mut u8,
}

const COUNT_SHIFT: u32 = ADDRESS_BITS;
const ADDRESS_MASK: usize = (1 << ADDRESS_BITS) - 1;

/// One class's exchange. Cache-line aligned so classes do not share lines.
#[repr(align(128))]
pub struct Depot {
    lock: RawSpinLock,
    /// Top batch, or null. Written only under `lock`.
    top: AtomicPtr<FreeBlock>,
    /// First abandoned region, or null. Written only under `lock`.
    regions: AtomicPtr<u8>,
    /// Batches on the stack (for tests and trim's accounting).
    batches: UnsafeCell<usize>,
}

// SAFETY: every field is either atomic or accessed only under `lock`.
unsafe impl Sync for Depot {}

/// The depots, one per class index (both modes).
pub static DEPOTS: [Depot; CLASSES] = [const { Depot::new() }; CLASSES];

/// The depot of `class`.
#[inline]
pub fn depot(class: usize) -> &'static Depot {
    debug_assert!(class < CLASSES);
    // SAFETY: class indices are below CLASSES.
    unsafe { DEPOTS.get_unchecked(class) }
}

/// Everything a depot held, taken at once by [`Depot::take_all`].
pub struct Taken {
    /// Top batch of the taken stack.
    pub batches: *mut FreeBlock,
    /// First taken region.
    pub regions: *mut u8,
}

impl Depot {
    /// An empty depot.
    pub const fn new() -> Self {
        Self {
            lock: RawSpinLock::new(),
            top: AtomicPtr::new(ptr::null_mut()),
            regions: AtomicPtr::new(ptr::null_mut()),
            batches: UnsafeCell::new(0),
        }
    }

    /// Pushes a batch: `head` starts a null-terminated list of `count`
    /// (1..=65535) free blocks of this class that the caller owns.
    ///
    /// # Safety
    /// As stated; the blocks must be free and no longer used by the caller.
    pub unsafe fn push_batch(&self, head: *mut FreeBlock, count: u32) {
        debug_assert!(!head.is_null() && count > 0 && count <= u16::MAX as u32);
        self.lock.lock();
        let top = self.top.load(Relaxed);
        // SAFETY: head is a free block the caller hands over; we hold the
        // lock, so nobody else reads its link.
        unsafe {
            ptr::addr_of_mut!((*head).link)
                .write((top as usize) | ((count as usize) << COUNT_SHIFT));
            *self.batches.get() += 1;
        }
        self.top.store(head, Release);
        // SAFETY: locked above.
        unsafe { self.lock.unlock() };
    }

    /// Pops a batch: its head and block count, or `(null, 0)`.
    pub fn pop_batch(&self) -> (*mut FreeBlock, u32) {
        if self.top.load(Relaxed).is_null() {
            return (ptr::null_mut(), 0);
        }
        self.lock.lock();
        let top = self.top.load(Relaxed);
        let mut count = 0;
        if !top.is_null() {
            // SAFETY: top is the first block of a batch on our stack; the
            // lock gives us its link.
            unsafe {
                let link = ptr::addr_of!((*top).link).read();
                count = (link >> COUNT_SHIFT) as u32;
                self.top
                    .store((link & ADDRESS_MASK) as *mut FreeBlock, Relaxed);
                *self.batches.get() -= 1;
            }
        }
        // SAFETY: locked above.
        unsafe { self.lock.unlock() };
        (top, count)
    }

    /// Adds the never-used region `start..end` (whole blocks of this class,
    /// zero apart from nothing) to the abandoned list; no-op if empty.
    ///
    /// # Safety
    /// The region must be an untouched (zero) tail of a chunk of this class
    /// that the caller owns and gives up.
    pub unsafe fn push_region(&self, start: *mut u8, end: *mut u8) {
        if start >= end {
            return;
        }
        self.lock.lock();
        // SAFETY: the region is ours and at least one block (>= 16 bytes).
        unsafe {
            start.cast::<RegionNode>().write(RegionNode {
                next: self.regions.load(Relaxed).cast(),
                end,
            })
        };
        self.regions.store(start, Release);
        // SAFETY: locked above.
        unsafe { self.lock.unlock() };
    }

    /// Takes an abandoned region (all zero again): `(start, end)`, or nulls.
    pub fn pop_region(&self) -> (*mut u8, *mut u8) {
        if self.regions.load(Relaxed).is_null() {
            return (ptr::null_mut(), ptr::null_mut());
        }
        self.lock.lock();
        let start = self.regions.load(Relaxed);
        let mut end = ptr::null_mut();
        if !start.is_null() {
            // SAFETY: start heads our region list; the lock gives us its node.
            unsafe {
                let node = start.cast::<RegionNode>().read();
                self.regions.store(node.next.cast(), Relaxed);
                end = node.end;
            }
        }
        // SAFETY: locked above.
        unsafe { self.lock.unlock() };
        if !start.is_null() {
            // SAFETY: the region is now ours; restore its zero contents.
            unsafe { start.write_bytes(0, core::mem::size_of::<RegionNode>()) };
        }
        (start, end)
    }

    /// Empties the depot, returning its batches and regions (for trim).
    /// An empty depot is recognised without its lock (trim visits every
    /// class of both modes; most were never used, and taking their locks
    /// would make their pages resident).
    pub fn take_all(&self) -> Taken {
        if self.top.load(Relaxed).is_null() && self.regions.load(Relaxed).is_null() {
            return Taken {
                batches: ptr::null_mut(),
                regions: ptr::null_mut(),
            };
        }
        self.lock.lock();
        let taken = Taken {
            batches: self.top.swap(ptr::null_mut(), Relaxed),
            regions: self.regions.swap(ptr::null_mut(), Relaxed),
        };
        // SAFETY: under the lock.
        unsafe {
            *self.batches.get() = 0;
            self.lock.unlock();
        }
        taken
    }

    /// Batches currently on the stack.
    pub fn batch_count(&self) -> usize {
        self.lock.lock();
        // SAFETY: under the lock.
        let n = unsafe { *self.batches.get() };
        // SAFETY: locked above.
        unsafe { self.lock.unlock() };
        n
    }

    /// The lock, for fork handlers.
    pub fn raw_lock(&self) -> &RawSpinLock {
        &self.lock
    }
}

impl Default for Depot {
    fn default() -> Self {
        Self::new()
    }
}

/// Walks a taken batch stack of class index `class`: calls `f` on every
/// block (after reading its links, so `f` may overwrite the block).
///
/// # Safety
/// `top` must be a stack returned by [`Depot::take_all`] of `class`'s
/// depot that the caller owns.
pub unsafe fn for_each_taken_block(
    top: *mut FreeBlock,
    class: usize,
    mut f: impl FnMut(*mut FreeBlock),
) {
    let mut batch = top;
    while !batch.is_null() {
        // SAFETY: batch is the first block of an owned batch.
        let link = unsafe { ptr::addr_of!((*batch).link).read() };
        let mut block = batch;
        while !block.is_null() {
            // SAFETY: block is an owned free block of the batch.
            let next = unsafe { crate::mode::next_of(block, class) };
            f(block);
            block = next;
        }
        batch = (link & ADDRESS_MASK) as *mut FreeBlock;
    }
}

/// Walks a taken region list: calls `f(start, end)` on each region (after
/// reading its node, so `f` may overwrite it).
///
/// # Safety
/// `first` must be a region list returned by [`Depot::take_all`] that the
/// caller owns.
pub unsafe fn for_each_taken_region(first: *mut u8, mut f: impl FnMut(*mut u8, *mut u8)) {
    let mut region = first;
    while !region.is_null() {
        // SAFETY: region heads an owned region.
        let node = unsafe { region.cast::<RegionNode>().read() };
        f(region, node.end);
        region = node.next.cast();
    }
}
