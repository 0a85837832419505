//! A page: blocks of one size class carved from one span of a segment.
//!
//! Each page keeps three free lists (free-list sharding, after mimalloc):
//!
//! - `free`: what the allocation fast path pops and the owner's frees push
//!   (LIFO: the block freed last is reused first, while in cache); owner
//!   only.
//! - `local_free`: where the owner collects its remote frees; owner only;
//!   moved to `free` when that runs dry.
//! - `thread_free`: an atomic stack other threads push to ([`crate::remote`]).
//!
//! Blocks are carved lazily: `capacity` blocks exist (are on a list or
//! handed out) out of `reserved`, and [`Page::extend`] carves one OS page
//! worth more when the lists run dry, so a fresh page costs no memory it
//! does not use. An emptied page that stays its class's page gives its
//! carved blocks but the first few back to the uncarved part as a *dirty
//! tail* ([`Page::reset_carve`]), which a purger may purge under the heap's
//! lock even while the owner allocates from the page.
//!
//! Invariant (checked by `check_invariants`): `|free| + |local_free| +
//! |thread_free| + (blocks live in the program) == capacity`, `used` counts
//! blocks not on `free`/`local_free` (live or on `thread_free`), and every
//! listed block lies in `start..start + reserved * stride` at a block
//! boundary (`stride` is `block_size`, plus one cache line for coloured
//! classes).

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering::Acquire, Ordering::Relaxed};

use heapkit_core::list::{Linked, List};
use heapkit_core::misuse::{self, Misuse};

use crate::mode::Mode;
use crate::remote::{Block, ThreadFree};

/// Where a page is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum PageState {
    /// Not in use (its span belongs to the segment's free pool).
    Free,
    /// In its heap's queue for its class.
    Queued,
    /// Had no free block when last looked at; on the heap's full list until
    /// a free returns a block. `used` carries [`FULL_FLAG`] meanwhile.
    Full,
}

/// Set in `Page::used` while the page is [`PageState::Full`], so the owner's
/// free tests "the page is now empty, or was full" with one compare of the
/// count it just decremented (mimalloc folds its page flags the same way).
pub(crate) const FULL_FLAG: u32 = 1 << 31;

/// Page metadata; lives in its segment's header.
///
/// Two cache lines: the first is the owner's (written on every allocation
/// and local free), the second holds what other threads touch on a remote
/// free (`thread_free`, and copies of what they read: block size, key),
/// so remote frees do not pull the owner's line
/// away from it.
#[repr(C, align(64))]
pub(crate) struct Page {
    /// Blocks the fast path pops. Owner only, but atomic (relaxed loads and
    /// stores: the same moves as a plain pointer) because a reclaimer or the
    /// purger holding the heap's lock writes it while the owner's fast
    /// paths may read it: on a retired page, and, reading it null, on a
    /// parked one ([`Page::parked`]), which the owner's fast path then
    /// leaves for the slow path.
    pub free: AtomicPtr<Block>,
    /// Blocks not on `free` or `local_free` (live, or on `thread_free`),
    /// plus [`FULL_FLAG`] while the page is [`PageState::Full`]; read the
    /// count with [`Page::in_use`]. Written by the owner only (relaxed
    /// loads and stores: plain moves, no read-modify-write); atomic so that
    /// a reclaimer may read it (`reclaim.rs`).
    pub used: AtomicU32,
    /// The class's block size (also the usable size of every block).
    pub block_size: u32,
    /// Blocks the owner freed since the last collection.
    pub local_free: *mut Block,
    /// Where the page is; change it with [`Page::set_state`] (which keeps
    /// [`FULL_FLAG`] in step).
    pub state: PageState,
    /// The size class.
    pub class: u8,
    /// Every block on `free` is zero except its first word (it came from
    /// never-written or purged memory).
    pub is_zero: bool,
    /// The page's span holds written memory that was not purged.
    pub dirty: bool,
    /// Blocks carved so far.
    pub capacity: u32,
    /// Blocks that fit in the span.
    pub reserved: u32,
    /// Distance between blocks (`block_size`, or more for colouring).
    pub stride: u32,
    /// Address of block 0.
    pub start: *mut u8,
    /// The key free-list links (and hardened free marks) are encoded with
    /// (`Policy::encode`; 0 in the default mode). Written when the page
    /// starts.
    pub key: usize,
    /// Links in the heap's queue or full list for the class (owner only).
    pub next: *mut Page,
    /// Blocks freed by other threads (second cache line).
    pub thread_free: ThreadFree,
    /// `block_size`, for remote freers (written only when the page starts).
    pub shared_size: u32,
    /// Index of this page in its segment.
    pub index: u32,
    /// When the page became free, or (a queued page) when
    /// [`Page::reset_carve`] last left it a dirty tail (monotonic ns), for
    /// decay.
    pub freed_at_ns: u64,
    /// The page was kept empty as its class's only page and its bytes are
    /// counted in the heap's `idle_bytes` (owner only; cleared when the
    /// page is freed or the heap purges).
    pub retained: bool,
    /// Hardened mode: blocks other threads freed without checking their
    /// canary (`Mode::on_remote_free`) may be on `free` or `local_free`;
    /// they are checked when the page is retired (`Mode::on_empty`, from
    /// `Segment::free_page`, or before a reclaimer purges it); an emptied
    /// page kept queued keeps them for its next allocations, which check
    /// each as they pop it. Set by the owner when it collects such frees;
    /// cleared by that check (the owner's, or a reclaimer's holding the
    /// heap's lock).
    pub unchecked_frees: bool,
    /// The number of remote frees [`Page::purge_holes`] last left on
    /// `thread_free` (with the heap's lock held only): while the stack
    /// still holds exactly that many, another look finds nothing new to
    /// purge, and is skipped (it costs a walk of the page's blocks).
    pub holes_tried: u16,
    /// Blocks `capacity..dirty_end` are the page's *dirty tail*: carved
    /// once, given back to the uncarved part by [`Page::reset_carve`], on
    /// no list and still resident until [`Page::purge_tail`]. No tail when
    /// `dirty_end <= capacity`. Written with the heap's lock held (the
    /// owner's slow paths or a purger), never by a fast path, so a purger
    /// may purge the tail of a page its owner keeps allocating from.
    pub dirty_end: u32,
    /// The owner's count of allocations (`ThreadStats::pending_allocs`)
    /// when it last took this page's blocks back after a park: how its
    /// slow path tells a loop that empties the page every few allocations
    /// (reset it) from rounds that use it whole (park it again).
    pub unparked_allocs: u32,
    /// No more blocks are carved than [`Page::reset_carve`] keeps, as
    /// `slow::page_freed` last found it (owner only): cleared when the
    /// page starts and whenever [`Page::extend`] carves more, so that an
    /// allocate/free loop emptying the page at every free tests a flag,
    /// not the counts.
    pub carve_kept: bool,
    /// The page is parked ([`Page::park`], [`Page::reset_carve`]): nothing
    /// in use, `free` empty, its carved blocks on `local_free` or in its
    /// dirty tail, so no fast path touches it until its owner's slow path
    /// takes the blocks back ([`Page::collect`]). Written only with the
    /// heap's lock held, so a reclaimer holding the lock may trust it
    /// while the owner runs its fast paths; the state it names could not
    /// be read from `free` and `used` there, which the owner's fast paths
    /// write without the lock.
    pub parked: bool,
    /// See `next` (slow paths only, so out of the owner's line).
    pub prev: *mut Page,
    /// `key`, for remote freers.
    pub shared_key: usize,
    /// OS pages of the span purged while every block over them was free
    /// and off the owner's lists (bit `u`: the span's OS page `u`; see
    /// `holes.rs`). Written with the heap's lock held only.
    pub holes: u32,
    /// Blocks over `holes`: on no list, still counted in `used` (see
    /// `holes.rs`). Written with the heap's lock held only; atomic so that
    /// [`Page::in_use`] may read it anywhere.
    pub dropped: AtomicU32,
}

const _: () = assert!(core::mem::offset_of!(Page, thread_free) == 64);
const _: () = assert!(core::mem::size_of::<Page>() == 128);

impl Page {
    /// A free page with no span yet (segments fill in `index`).
    pub(crate) const fn new() -> Page {
        Page {
            free: AtomicPtr::new(ptr::null_mut()),
            used: AtomicU32::new(0),
            block_size: 0,
            local_free: ptr::null_mut(),
            state: PageState::Free,
            class: 0,
            is_zero: true,
            dirty: false,
            capacity: 0,
            reserved: 0,
            index: 0,
            stride: 0,
            start: ptr::null_mut(),
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
            freed_at_ns: 0,
            retained: false,
            unchecked_frees: false,
            dirty_end: 0,
            unparked_allocs: 0,
            carve_kept: false,
            parked: false,
            key: 0,
            thread_free: ThreadFree::new(),
            shared_size: 0,
            shared_key: 0,
            holes: 0,
            dropped: AtomicU32::new(0),
            holes_tried: 0,
        }
    }

    /// Takes over a free page for `class` with blocks of `block_size` bytes
    /// in `start..start + span`.
    ///
    /// # Safety
    /// `page` must be a free page of a segment the caller owns, and the span
    /// must be unused memory of that page.
    pub(crate) unsafe fn init<P: Mode>(
        page: *mut Page,
        class: usize,
        block_size: usize,
        stride: usize,
        start: *mut u8,
        span: usize,
    ) {
        // SAFETY: the caller owns the page's metadata.
        unsafe {
            (*page).free.store(ptr::null_mut(), Relaxed);
            (*page).local_free = ptr::null_mut();
            (*page).used.store(0, Relaxed);
            (*page).block_size = block_size as u32;
            (*page).shared_size = block_size as u32;
            (*page).class = class as u8;
            (*page).state = PageState::Queued;
            (*page).is_zero = !(*page).dirty;
            (*page).dirty = true;
            (*page).capacity = 0;
            (*page).reserved = (span / stride) as u32;
            (*page).dirty_end = 0;
            (*page).unparked_allocs = 0;
            (*page).carve_kept = false;
            (*page).parked = false;
            Page::forget_holes(page);
            // A page freed outside its heap (thread exit, an abandoned
            // segment tidied) may keep a stale flag: its segment can come
            // back as another kind, where it means nothing.
            (*page).retained = false;
            (*page).unchecked_frees = false;
            (*page).stride = stride as u32;
            (*page).start = start;
            (*page).next = ptr::null_mut();
            (*page).prev = ptr::null_mut();
            (*page).key = P::key_for(start);
            (*page).shared_key = (*page).key;
        }
    }

    /// The free block after `block` on one of this page's lists.
    ///
    /// # Safety
    /// `block` must be on one of `page`'s lists, readable by the caller.
    #[inline(always)]
    pub(crate) unsafe fn next_free<P: Mode>(page: *const Page, block: *mut Block) -> *mut Block {
        // SAFETY: caller guarantee.
        unsafe { P::decode(Block::next(block).cast(), (*page).key).cast() }
    }

    /// Links `block` in front of `next` on one of this page's lists.
    ///
    /// # Safety
    /// The caller must own `block` exclusively.
    #[inline(always)]
    pub(crate) unsafe fn link<P: Mode>(page: *const Page, block: *mut Block, next: *mut Block) {
        // SAFETY: caller guarantee.
        unsafe { Block::set_next(block, P::encode(next.cast(), (*page).key).cast()) }
    }

    /// Blocks of the page that are live or on `thread_free`: `used`
    /// without [`FULL_FLAG`] and without the blocks dropped over holes
    /// (`holes.rs`).
    ///
    /// # Safety
    /// `page` must be metadata of a mapped segment.
    #[inline]
    pub(crate) unsafe fn in_use(page: *const Page) -> u32 {
        // SAFETY: caller guarantee.
        unsafe {
            // (Saturating: only a double free of a dropped block could
            // make it fall below.)
            // Acquire: pairs with the owner free's Release store, so a
            // reclaimer that finds the page empty sees the blocks the owner
            // pushed before it emptied it.
            ((*page).used.load(Acquire) & !FULL_FLAG).saturating_sub((*page).dropped.load(Relaxed))
        }
    }

    /// Moves the page to `state`, setting or clearing [`FULL_FLAG`].
    ///
    /// # Safety
    /// The caller must own `page`.
    #[inline]
    pub(crate) unsafe fn set_state(page: *mut Page, state: PageState) {
        // SAFETY: caller guarantee.
        unsafe {
            (*page).state = state;
            let used = (*page).used.load(Relaxed);
            if state == PageState::Full {
                (*page).used.store(used | FULL_FLAG, Relaxed);
            } else {
                (*page).used.store(used & !FULL_FLAG, Relaxed);
            }
            debug_assert!(Self::in_use(page) <= (*page).capacity);
        }
    }

    /// Moves remote frees to `local_free`, and `local_free` to `free` when
    /// `free` is empty; carves more blocks if both are empty. Afterwards
    /// the page has a block to hand out ([`Page::has_block`]) unless every
    /// block of the page is in use: on `free`, or, where the page carves
    /// blocks singly ([`Page::carves_singly`]), the next one to carve.
    ///
    /// # Safety
    /// The caller must own `page` (it is in use by the caller's heap).
    pub(crate) unsafe fn collect<P: Mode>(page: *mut Page) {
        // SAFETY: the caller owns the page; blocks taken from thread_free
        // are ours after the swap.
        unsafe {
            Self::collect_remote::<P>(page);
            Self::fill_holes::<P>(page);
            if (*page).free.load(Relaxed).is_null() {
                if !(*page).local_free.is_null() {
                    (*page).free.store((*page).local_free, Relaxed);
                    (*page).local_free = ptr::null_mut();
                    (*page).is_zero = false;
                    (*page).parked = false;
                } else if (*page).capacity < (*page).reserved && !Self::carves_singly::<P>(page) {
                    Self::extend::<P>(page);
                }
            }
        }
    }

    /// Whether the allocation slow path can hand out a block of the page:
    /// one on `free`, or one to carve singly ([`Page::carve_one`]).
    ///
    /// # Safety
    /// The caller must own `page`, in use.
    #[inline]
    pub(crate) unsafe fn has_block<P: Mode>(page: *const Page) -> bool {
        // SAFETY: caller guarantee.
        unsafe { !(*page).free.load(Relaxed).is_null() || Self::carves_singly::<P>(page) }
    }

    /// Moves remote frees onto `local_free` and un-counts them.
    ///
    /// # Safety
    /// As for [`Page::collect`].
    pub(crate) unsafe fn collect_remote<P: Mode>(page: *mut Page) {
        // SAFETY: as for collect.
        unsafe {
            let (list, count) = (*page).thread_free.take_all();
            if list.is_null() {
                return;
            }
            let n = if (*page).local_free.is_null() {
                // The freers' count: no walk over links other cores just
                // wrote (see `ThreadFree`). A count beyond the blocks in
                // use means a block was freed twice. (Hardened, each block
                // is still checked when it is handed out, `Mode::on_pop`:
                // a block listed twice lacks its free mark the second
                // time, and a block whose freer left its canary to the
                // owner is checked there.)
                if count > Self::in_use(page) {
                    corrupted_remote_list(list);
                }
                count
            } else {
                // Appended to `local_free`: its tail is needed.
                let (tail, n) = Self::walk_remote::<P>(page, list);
                if n != count {
                    corrupted_remote_list(list);
                }
                Self::link::<P>(page, tail, (*page).local_free);
                n
            };
            (*page).local_free = list;
            let used = (*page).used.load(Relaxed);
            (*page).used.store(used - n, Relaxed);
            if P::BLOCK_STATE {
                // (Not checked here when this empties the page: a walk of
                // every block collected, the cost `Mode::on_pop` avoids;
                // the page's retirement checks what was not handed out.)
                (*page).unchecked_frees |= P::remote_frees_unchecked((*page).block_size as usize);
            }
        }
    }

    /// Walks a list taken from `thread_free` (checking each block as the
    /// mode collects it) and returns its last block and its length. A list
    /// longer than the page's blocks in use loops (a block freed twice by
    /// other threads): reported rather than walked for ever.
    ///
    /// # Safety
    /// `list` was taken from `page`'s `thread_free` by the caller, who owns
    /// the page (or holds its heap's lock).
    pub(crate) unsafe fn walk_remote<P: Mode>(
        page: *mut Page,
        list: *mut Block,
    ) -> (*mut Block, u32) {
        // SAFETY: caller guarantee: the taken blocks are the caller's.
        unsafe {
            let in_use = Self::in_use(page);
            let mut tail = list;
            let mut n = 1u32;
            P::on_collect(page, tail);
            loop {
                let next = Self::next_free::<P>(page, tail);
                if next.is_null() {
                    return (tail, n);
                }
                tail = next;
                n += 1;
                if n > in_use {
                    corrupted_remote_list(list);
                }
                P::on_collect(page, tail);
            }
        }
    }

    /// For a reclaimer holding the owner's lock (`reclaim.rs`): takes the
    /// page's remote frees and, if they are every block in use (no block of
    /// the page is live), un-counts them and returns true: the page may be
    /// retired. Otherwise pushes them back and returns false.
    ///
    /// # Safety
    /// The caller holds the owning heap's lock and the page is not its
    /// class's current page.
    pub(crate) unsafe fn take_if_all_remote<P: Mode>(page: *mut Page) -> bool {
        // SAFETY: the lock keeps the owner's slow paths out; the owner's fast
        // paths touch a non-current page only to free a live block of it,
        // and `used` only falls while the page is not current.
        unsafe {
            let (list, count) = (*page).thread_free.take_all();
            if list.is_null() {
                return false;
            }
            let in_use = Self::in_use(page);
            // Walked, not counted: this retires the page, and a count a
            // double free inflated would retire it under a live block.
            let (tail, n) = Self::walk_remote::<P>(page, list);
            if n != count {
                corrupted_remote_list(list);
            }
            if n != in_use {
                // Live blocks remain: the owner collects these later.
                let key = (*page).shared_key;
                (*page)
                    .thread_free
                    .push_chain(list, tail, n, |head| P::encode(head.cast(), key).cast());
                return false;
            }
            let used = (*page).used.load(Relaxed);
            (*page).used.store(used - n, Relaxed);
            true
        }
    }

    /// The page has pending remote frees (a hint).
    ///
    /// # Safety
    /// `page` must be metadata of a mapped segment.
    #[inline]
    pub(crate) unsafe fn has_remote(page: *mut Page) -> bool {
        // SAFETY: caller guarantee.
        unsafe { (*page).thread_free.is_pending() }
    }
}

/// A page's remote stack that loops, or holds more blocks than its count
/// or its blocks in use: a block freed twice by other threads.
#[cold]
#[inline(never)]
pub(crate) fn corrupted_remote_list(list: *mut Block) -> ! {
    misuse::report(
        "free",
        Misuse::CorruptedFreeList,
        list.cast(),
        "sizeclass: remote frees of one page",
    )
}

// SAFETY: `next` and `prev` are the page's own queue links; only the heap
// list that holds the page (one at a time) uses them.
unsafe impl Linked for Page {
    unsafe fn next(node: *mut Self) -> *mut *mut Self {
        // SAFETY: node is a live page (the trait's contract).
        unsafe { ptr::addr_of_mut!((*node).next) }
    }
    unsafe fn prev(node: *mut Self) -> *mut *mut Self {
        // SAFETY: as above.
        unsafe { ptr::addr_of_mut!((*node).prev) }
    }
}

/// A class queue or full list of pages (core's one intrusive list).
pub(crate) type PageList = List<Page>;

#[cfg(test)]
mod tests {
    use super::*;
    use heapkit_core::harden::Fast;
    use std::vec;
    use std::vec::Vec;

    /// Hands out every block on `p`'s `free` list, as the fast path would.
    ///
    /// # Safety
    /// `p` is a page the caller owns.
    unsafe fn pop_all(p: *mut Page) -> Vec<*mut Block> {
        let mut got = Vec::new();
        // SAFETY: caller guarantee.
        unsafe {
            while !(*p).free.load(Relaxed).is_null() {
                let b = (*p).free.load(Relaxed);
                (*p).free.store(Block::next(b), Relaxed);
                (*p).used.fetch_add(1, Relaxed);
                got.push(b);
            }
        }
        got
    }

    #[test]
    fn lazy_extension_local_and_remote_lists_account_every_block() {
        let mut span = vec![0u128; 4096]; // 64 KiB, 16-aligned
        let mut page = Page::new();
        let p: *mut Page = &mut page;
        // SAFETY: p is a page we own over `span`.
        unsafe {
            Page::init::<Fast>(p, 3, 64, 64, span.as_mut_ptr().cast(), 65536);
            assert_eq!((*p).reserved, 1024);
            Page::collect::<Fast>(p);
            assert_eq!((*p).capacity, 64, "one OS page carved");
            let got = pop_all(p);
            assert_eq!(got.len(), 64);
            // Half freed locally, half remotely.
            for (i, &b) in got.iter().enumerate() {
                if i % 2 == 0 {
                    Block::set_next(b, (*p).local_free);
                    (*p).local_free = b;
                    (*p).used.fetch_sub(1, Relaxed);
                } else {
                    assert!((*p).thread_free.push(b, |h| h, || {}));
                }
            }
            assert_eq!((*p).used.load(Relaxed), 32);
            assert!(Page::has_remote(p));
            Page::collect::<Fast>(p);
            assert_eq!((*p).used.load(Relaxed), 0);
            let mut n = 0;
            let mut b = (*p).free.load(Relaxed);
            while !b.is_null() {
                n += 1;
                b = Block::next(b);
            }
            assert_eq!(n, 64);
            assert!(!(*p).is_zero);
        }
    }

    /// `parked` names the state a reclaimer may act on: set where the page
    /// is parked or reset, cleared where its owner's slow path takes the
    /// blocks back, and never inferred from the lists (the owner's fast
    /// paths change those without the lock).
    #[test]
    fn parked_is_set_by_park_and_reset_and_cleared_by_collect() {
        let mut span = vec![0u128; 4096]; // 64 KiB, 16-aligned
        let mut page = Page::new();
        let p: *mut Page = &mut page;
        // SAFETY: p is a page we own over `span`.
        unsafe {
            Page::init::<Fast>(p, 3, 64, 64, span.as_mut_ptr().cast(), 65536);
            Page::collect::<Fast>(p);
            assert!(!Page::is_parked(p), "a fresh page");
            // Every block taken and given back by other threads: the lists
            // look parked once collected, but nobody parked the page.
            for b in pop_all(p) {
                assert!((*p).thread_free.push(b, |h| h, || {}));
            }
            Page::collect_remote::<Fast>(p);
            assert!((*p).free.load(Relaxed).is_null() && !(*p).local_free.is_null());
            assert_eq!(Page::in_use(p), 0);
            assert!(!Page::is_parked(p), "only park and reset park a page");
            Page::park::<Fast>(p);
            assert!(Page::is_parked(p), "parked with its blocks on local_free");
            Page::collect::<Fast>(p);
            assert!(!Page::is_parked(p) && !(*p).free.load(Relaxed).is_null());
            Page::park::<Fast>(p);
            assert!(Page::is_parked(p));
            Page::reset_carve::<Fast>(p, 8, 1);
            assert!(Page::is_parked(p), "a reset page stays parked");
            assert_eq!((*p).capacity, 8);
            Page::collect::<Fast>(p);
            assert!(!Page::is_parked(p), "taken back by the owner's slow path");
        }
    }
}
