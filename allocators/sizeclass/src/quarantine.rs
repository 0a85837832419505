//! The hardened mode's optional quarantine (`HEAPKIT_QUARANTINE_KB`, off by
//! default): each thread holds back the small blocks it frees, up to that
//! many bytes (and [`SLOTS`] blocks), before they are really freed and can
//! be handed out again.
//!
//! What it buys: a block written after its free is not reused at once, so
//! the stale pointer cannot alias a new object yet; and the held block is
//! filled with [`JUNK`] when it enters, checked when it leaves: a write
//! after free in that window is reported (`heapkit: free(): write after
//! free to the block at 0x...`). A held block bears the free mark (its
//! second word, saved in the ring and put back when it leaves), so a second
//! `free` or a `realloc` of it is reported as a double free, as for any
//! free block. The checks a free makes (double free, canary) run when the
//! block enters; the real free when it leaves runs them again.
//!
//! What it costs: a fill and a check of the requested bytes per free, and
//! the memory held back. FIFO order, per thread; a thread's held blocks
//! are freed at its exit and by `collect` (`malloc_trim`).

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use heapkit_core::harden::Trailer;
use heapkit_core::misuse::Misuse;
use heapkit_core::segment::segment_of;

use crate::checks::{check_trailer_of, report_block};
use crate::heap::{self, Heap, HeapState};
use crate::mode::Mode;
use crate::segment::Segment;
use heapkit_core::harden::FreeMark;

/// Blocks a thread holds back at most, whatever their bytes.
pub(crate) const SLOTS: usize = 64;
/// The byte every held block is filled with.
pub(crate) const JUNK: u8 = 0xdf;

/// The bytes of the quarantine; `usize::MAX` until the option is read.
static BUDGET: AtomicUsize = AtomicUsize::new(usize::MAX);

/// A thread's held blocks: a FIFO ring.
///
/// Invariants: `len <= SLOTS`; the held blocks are `blocks[(head + i) %
/// SLOTS]` for `i < len`, each a live small block of this heap's mode whose
/// first `requested[..]` bytes are [`JUNK`] unless written after its free;
/// `bytes` is the sum of their block sizes.
pub(crate) struct Quarantine {
    /// The held blocks.
    blocks: [*mut u8; SLOTS],
    /// Each held block's requested size (the bytes filled with junk).
    requested: [u32; SLOTS],
    /// Each held block's second word before the free mark replaced it.
    saved: [usize; SLOTS],
    /// Index of the oldest held block.
    head: usize,
    /// Blocks held.
    len: usize,
    /// Block bytes held.
    bytes: usize,
}

impl Quarantine {
    /// Holds nothing.
    pub(crate) const fn new() -> Self {
        Quarantine {
            blocks: [core::ptr::null_mut(); SLOTS],
            requested: [0; SLOTS],
            saved: [0; SLOTS],
            head: 0,
            len: 0,
            bytes: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn holds(&self, ptr: *mut u8) -> bool {
        (0..self.len).any(|i| self.blocks[(self.head + i) % SLOTS] == ptr)
    }

    fn push(&mut self, ptr: *mut u8, requested: usize, saved: usize, size: usize) {
        debug_assert!(self.len < SLOTS);
        let at = (self.head + self.len) % SLOTS;
        self.blocks[at] = ptr;
        self.requested[at] = requested as u32;
        self.saved[at] = saved;
        self.len += 1;
        self.bytes += size;
    }

    fn pop(&mut self) -> Option<(*mut u8, usize, usize)> {
        if self.len == 0 {
            return None;
        }
        let at = self.head;
        self.head = (self.head + 1) % SLOTS;
        self.len -= 1;
        Some((self.blocks[at], self.requested[at] as usize, self.saved[at]))
    }
}

/// Whether a hardened free must look at the quarantine (one relaxed load:
/// true until the option is read, then only when it is set).
#[inline(always)]
pub(crate) fn wanted() -> bool {
    BUDGET.load(Relaxed) != 0
}

fn budget() -> usize {
    let b = BUDGET.load(Relaxed);
    if b != usize::MAX {
        return b;
    }
    let b = heapkit_core::options::get().quarantine_bytes;
    BUDGET.store(b, Relaxed);
    b
}

/// A hardened free with the quarantine on: checks `ptr` as a free would,
/// fills it with junk and holds it; frees (after checking their junk) the
/// oldest blocks beyond the budget.
///
/// # Safety
/// `ptr` is a small block of mode `P` (its segment's tag says so), passed
/// to `free` by the program.
#[cold]
#[inline(never)]
pub(crate) unsafe fn hold<P: Mode>(ptr: *mut u8) {
    let budget = budget();
    // (Not bound here: the never-written sentinel is not active either.)
    let h = P::heap();
    // SAFETY: h is the calling thread's heap or the sentinel, only read
    // unless active; the block's segment and page are mapped (a small
    // block of ours); only the page's shared fields (fixed while it is in
    // use) are read.
    unsafe {
        if budget == 0 || (*h).state != HeapState::Active {
            return heap::free_small::<P>(ptr);
        }
        let page = Segment::page_of(segment_of(ptr).cast(), ptr);
        let (size, key) = ((*page).shared_size as usize, (*page).shared_key);
        if (*h).quarantine.holds(ptr) || FreeMark::is_set_any(ptr, key) {
            report_block("free", Misuse::DoubleFree, page, ptr);
        }
        check_trailer_of("free", page, ptr, size, key);
        let requested = Trailer::requested(ptr, size);
        ptr.write_bytes(JUNK, requested);
        let saved = ptr.add(8).cast::<usize>().read();
        FreeMark::set(ptr, key);
        // (No borrow of the ring is held across a release, which frees
        // through the heap.)
        loop {
            let (len, bytes) = ((*h).quarantine.len, (*h).quarantine.bytes);
            if len < SLOTS && (len == 0 || bytes + size <= budget) {
                break;
            }
            release_oldest::<P>(h);
        }
        (*h).quarantine.push(ptr, requested, saved, size);
    }
}

/// Frees every block `h` holds (thread exit, `collect`).
///
/// # Safety
/// `h` is the calling thread's heap of mode `P`.
pub(crate) unsafe fn flush<P: Mode>(h: *mut Heap) {
    // SAFETY: caller guarantee.
    unsafe {
        while !(*h).quarantine.is_empty() {
            release_oldest::<P>(h);
        }
    }
}

/// Checks the oldest held block's junk and frees it.
///
/// # Safety
/// `h` is the calling thread's heap of mode `P`, holding a block.
unsafe fn release_oldest<P: Mode>(h: *mut Heap) {
    // SAFETY: caller guarantee; a held block is a live small block of ours
    // of at least `requested` bytes.
    unsafe {
        let Some((ptr, requested, saved)) = (*h).quarantine.pop() else {
            return;
        };
        let page = Segment::page_of(segment_of(ptr).cast(), ptr);
        (*h).quarantine.bytes -= (*page).shared_size as usize;
        // Bytes 8..16 hold the free mark, the rest of the requested ones
        // the junk.
        let junk_intact = (0..requested).all(|i| (8..16).contains(&i) || *ptr.add(i) == JUNK);
        if !junk_intact || !FreeMark::is_set(ptr, (*page).shared_key) {
            report_block("free", Misuse::WriteAfterFree, page, ptr);
        }
        ptr.add(8).cast::<usize>().write(saved);
        heap::free_small::<P>(ptr);
    }
}
