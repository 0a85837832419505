//! The remote-free protocol: how a thread frees a block it does not own.
//!
//! A page's owner keeps its free lists in plain memory; any other thread
//! that frees a block of that page pushes it onto the page's [`ThreadFree`]
//! stack with one compare-and-swap, and the owner later takes the whole
//! stack with one swap. So that the owner finds pages with pending remote
//! frees without scanning, a freer that finds the stack empty first sets
//! the page's bit in its segment's [`PendingPages`] mask (one `fetch_or`),
//! *then* pushes.
//!
//! Protocol invariants (checked by the loom model in this file):
//!
//! 1. Every pushed block is taken by exactly one [`ThreadFree::take_all`]
//!    (a Treiber stack with a single consumer that takes everything: no ABA,
//!    because the consumer never pops one element).
//! 2. A freer touches the segment (the mask) only *before* its push: while
//!    its block is not yet on the stack it is live, so the page and segment
//!    cannot be released under it. After the push it touches nothing, so the
//!    owner may recycle the page as soon as it has taken the block.
//! 3. Every transition of a stack from empty to non-empty is preceded by a
//!    notification of that page from the same thread. An owner that takes
//!    the mask and then the stack therefore sees every push whose
//!    notification it consumed, except one still between its notify and its
//!    push; the owner re-queues every notified page (never parks it as
//!    full), and its periodic sweep also looks at full pages, so such a late
//!    push delays reuse of one page by one sweep at most and is never lost.

#[cfg(not(loom))]
use core::sync::atomic::{AtomicU64, AtomicUsize};
#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, AtomicUsize};

use core::ptr;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

/// A free block: its first word links it into a free list.
#[repr(C)]
pub(crate) struct Block {
    #[cfg(not(loom))]
    next: *mut Block,
    #[cfg(loom)]
    next: loom::cell::UnsafeCell<*mut Block>,
}

impl Block {
    /// The next block in the list this block is on.
    ///
    /// # Safety
    /// `this` must be a free block that the caller may read (its list is
    /// owned by the caller or was taken by it).
    #[inline]
    pub(crate) unsafe fn next(this: *mut Block) -> *mut Block {
        #[cfg(not(loom))]
        // SAFETY: caller guarantee: `this` is a readable free block.
        unsafe {
            (*this).next
        }
        #[cfg(loom)]
        // SAFETY: caller guarantee: `this` is a readable free block.
        unsafe {
            (*this).next.with(|p| *p)
        }
    }

    /// Links `this` in front of `next`.
    ///
    /// # Safety
    /// `this` must be a block the caller owns exclusively.
    #[inline]
    pub(crate) unsafe fn set_next(this: *mut Block, next: *mut Block) {
        #[cfg(not(loom))]
        // SAFETY: caller guarantee: `this` is exclusively ours.
        unsafe {
            (*this).next = next
        }
        #[cfg(loom)]
        // SAFETY: caller guarantee: `this` is exclusively ours.
        unsafe {
            (*this).next.with_mut(|p| *p = next)
        }
    }
}

/// A page's stack of blocks freed by threads other than its owner, and
/// how many it holds.
///
/// Many threads push; only the owner (or, for an abandoned segment, the
/// thread that holds it) takes, and it always takes everything.
///
/// The head word packs the top block's address (below 2^48: user space
/// on Linux is 47 bits unless a mapping is asked for above, which heapkit
/// never does) and, in its top 16 bits, the number of blocks on the stack
/// (saturating; a page has at most 4096 blocks). With the count, the owner
/// takes the stack without walking it: each link lies in a line another
/// core just wrote, and the walk read them one dependent miss after
/// another (a third of the harness's prodcons time, one producer and one
/// consumer on two cores).
pub(crate) struct ThreadFree {
    head: AtomicUsize,
}

/// Where the count sits in the head word.
const COUNT_SHIFT: u32 = 48;
/// The address bits of the head word.
const ADDRESS_MASK: usize = (1 << COUNT_SHIFT) - 1;
/// The largest count the head word holds (it saturates there).
const COUNT_MAX: u32 = u16::MAX as u32;

/// The head word for `top` with `count` blocks.
#[inline]
fn pack(top: *mut Block, count: u32) -> usize {
    debug_assert_eq!(top as usize & !ADDRESS_MASK, 0, "a block above 2^48");
    top as usize | ((count.min(COUNT_MAX) as usize) << COUNT_SHIFT)
}

/// The top block and the count of a head word.
#[inline]
fn unpack(word: usize) -> (*mut Block, u32) {
    (
        (word & ADDRESS_MASK) as *mut Block,
        (word >> COUNT_SHIFT) as u32,
    )
}

impl ThreadFree {
    /// An empty stack.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Self {
            head: AtomicUsize::new(0),
        }
    }

    /// An empty stack.
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicUsize::new(0),
        }
    }

    /// Pushes `block`, first calling `notify` if the stack looks empty
    /// (invariant 3). `notify` runs at most once. The link stored in the
    /// block is `encode(head)` (the page's link encoding, see `mode.rs`).
    /// Returns false, pushing nothing, if `block` is already the top of
    /// the stack: it was just freed (a double free).
    ///
    /// # Safety
    /// `block` must be a live block of this stack's page that the caller
    /// gives up (nobody else frees it).
    #[inline]
    #[must_use]
    pub(crate) unsafe fn push(
        &self,
        block: *mut Block,
        encode: impl Fn(*mut Block) -> *mut Block,
        notify: impl FnOnce(),
    ) -> bool {
        let mut notify = Some(notify);
        let mut word = self.head.load(Relaxed);
        loop {
            let (top, count) = unpack(word);
            if top == block {
                return false;
            }
            if top.is_null() {
                if let Some(f) = notify.take() {
                    f();
                }
            }
            // SAFETY: the block is ours until the CAS publishes it.
            unsafe { Block::set_next(block, encode(top)) };
            // Release: the link written above is visible to the owner's
            // Acquire swap in take_all.
            match self
                .head
                .compare_exchange_weak(word, pack(block, count + 1), Release, Relaxed)
            {
                Ok(_) => return true,
                Err(now) => word = now,
            }
        }
    }

    /// Pushes back a chain `first..=last` of `n` blocks that
    /// [`ThreadFree::take_all`] took (its links already encoded, `last`'s
    /// rewritten here). The page is still notified from the first push of
    /// those blocks.
    ///
    /// # Safety
    /// `first..=last` must be a chain of `n` of this stack's page's blocks,
    /// taken by the caller and used by nobody else.
    #[cfg(not(loom))]
    pub(crate) unsafe fn push_chain(
        &self,
        first: *mut Block,
        last: *mut Block,
        n: u32,
        encode: impl Fn(*mut Block) -> *mut Block,
    ) {
        let mut word = self.head.load(Relaxed);
        loop {
            let (top, count) = unpack(word);
            // SAFETY: caller guarantee: `last` is ours until published.
            unsafe { Block::set_next(last, encode(top)) };
            match self.head.compare_exchange_weak(
                word,
                pack(first, count.saturating_add(n)),
                Release,
                Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => word = now,
            }
        }
    }

    /// Whether the stack looks non-empty (a hint).
    #[inline]
    pub(crate) fn is_pending(&self) -> bool {
        self.head.load(Relaxed) != 0
    }

    /// How many blocks the stack holds now (a hint: others may push
    /// meanwhile).
    #[inline]
    pub(crate) fn count(&self) -> u32 {
        unpack(self.head.load(Relaxed)).1
    }

    /// Takes every pushed block: the list (null if none) and how many it
    /// holds (saturated at 65535; exact for any list a page can have, so a
    /// caller that walks the list may check it).
    #[inline]
    pub(crate) fn take_all(&self) -> (*mut Block, u32) {
        if self.head.load(Relaxed) == 0 {
            return (ptr::null_mut(), 0);
        }
        unpack(self.head.swap(0, Acquire))
    }
}

/// One bit per page of a segment: "this page may have remote frees".
/// On its own cache line: remote freers write it, every free reads the
/// segment's owner next to which it would otherwise sit.
#[repr(align(64))]
pub(crate) struct PendingPages {
    bits: AtomicU64,
}

impl PendingPages {
    /// No page pending.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Self {
            bits: AtomicU64::new(0),
        }
    }

    /// No page pending.
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Self {
            bits: AtomicU64::new(0),
        }
    }

    /// Marks page `index` (< 64) pending.
    #[inline]
    pub(crate) fn notify(&self, index: usize) {
        let bit = 1u64 << (index & 63);
        if self.bits.load(Relaxed) & bit == 0 {
            self.bits.fetch_or(bit, Release);
        }
    }

    /// Takes the set of pending pages (the owner, before taking stacks).
    #[inline]
    pub(crate) fn take(&self) -> u64 {
        if self.bits.load(Relaxed) == 0 {
            return 0;
        }
        self.bits.swap(0, AcqRel)
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;
    use std::boxed::Box;
    use std::vec::Vec;

    struct Shared {
        stack: ThreadFree,
        pending: PendingPages,
    }

    fn block() -> usize {
        Box::into_raw(Box::new(Block {
            next: loom::cell::UnsafeCell::new(ptr::null_mut()),
        })) as usize
    }

    fn drain(list: *mut Block, out: &mut Vec<usize>) {
        let mut b = list;
        while !b.is_null() {
            out.push(b as usize);
            // SAFETY: the list was taken by this thread.
            b = unsafe { Block::next(b) };
        }
    }

    /// Two remote freers push while the owner takes the mask then the
    /// stack: every block is taken exactly once, and a non-empty stack at
    /// the end always has its pending bit set unless the owner consumed it
    /// after the push began (invariant 3, checked as "no block left with
    /// neither a bit nor a pending owner pass").
    #[test]
    fn loom_remote_free_push_and_collect() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let shared = Arc::new(Shared {
                stack: ThreadFree::new(),
                pending: PendingPages::new(),
            });
            let blocks: Vec<usize> = (0..3).map(|_| block()).collect();
            // Freer 0 pushes two blocks (the second onto a non-empty or a
            // just-taken stack), freer 1 one.
            let mut handles = Vec::new();
            for chunk in [&blocks[0..2], &blocks[2..3]] {
                let s = shared.clone();
                let mine: Vec<usize> = chunk.to_vec();
                handles.push(thread::spawn(move || {
                    for b in mine {
                        // SAFETY: each block is pushed once, by one thread.
                        assert!(unsafe {
                            s.stack.push(b as *mut Block, |h| h, || s.pending.notify(5))
                        });
                    }
                }));
            }
            // The owner, on its own thread: one pass of "take the mask, then
            // the stack".
            let s = shared.clone();
            let owner = thread::spawn(move || {
                let mut seen = Vec::new();
                let bits = s.pending.take();
                let (list, n) = s.stack.take_all();
                drain(list, &mut seen);
                assert_eq!(seen.len(), n as usize, "the count is the list's length");
                (seen, bits != 0)
            });
            for h in handles {
                h.join().unwrap();
            }
            let (mut seen, owner_pass_saw_bit) = owner.join().unwrap();
            // After every freer finished: whatever is left is announced.
            let left = shared.stack.is_pending();
            let bits_after = shared.pending.take();
            if left {
                assert!(
                    bits_after & (1 << 5) != 0 || owner_pass_saw_bit,
                    "pending blocks with no notification"
                );
            }
            let before = seen.len();
            let (list, n) = shared.stack.take_all();
            drain(list, &mut seen);
            assert_eq!(
                seen.len() - before,
                n as usize,
                "the count is the list's length"
            );
            seen.sort_unstable();
            let mut expect = blocks.clone();
            expect.sort_unstable();
            assert_eq!(seen, expect, "every block taken exactly once");
            for b in blocks {
                // SAFETY: allocated by block() above, freed once.
                drop(unsafe { Box::from_raw(b as *mut Block) });
            }
        });
    }
}
