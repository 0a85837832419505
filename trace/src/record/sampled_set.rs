//! The live sampled blocks of a sampled heap profile: which addresses a
//! free must record. An open-addressing set of addresses in its own
//! mapping, with a counting filter in front that answers most frees (those
//! of blocks never sampled) with one load.
//!
//! Every thread inserts its samples and removes them at their free, with
//! one compare-and-swap on a slot and one atomic add on a filter byte; no
//! line is written by every sample (a shared count of live entries was).

use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, Ordering};

use heapkit_core::os;

/// The live sampled blocks (sampled profiles): an open-addressing set of
/// addresses in its own mapping, so that a free records only what was
/// sampled. Slots hold an address, 0 (never used) or [`TOMBSTONE`].
///
/// Invariant: an address in the set lies within [`MAX_PROBE`] slots of its
/// home slot. Probes are bounded by that instead of a count of live
/// entries: such a count was one cache line written by every thread's
/// samples and sampled frees.
pub(super) struct SampledSet {
    slots: AtomicPtr<AtomicU64>,
    /// How many live sampled addresses fall in each of these buckets: a
    /// free whose bucket is 0 was not sampled, found in one load from a
    /// line of the table that the program's other frees in the same
    /// 256 KiB keep in cache (most frees end here).
    filter: [AtomicU8; FILTER_BUCKETS],
}

/// Filter buckets: one per 4 KiB page of 1 GiB of addresses, which wrap.
/// A 4 KiB table (16 MiB) made the same offsets of every 4 MiB-aligned
/// segment share buckets: a third of a multi-threaded C program's
/// profiling cost went to frees that a sampled block elsewhere sent to
/// the set. In the library's zero-initialised data: no page of it is
/// resident unless a profile runs.
const FILTER_BUCKETS: usize = 1 << 18;

/// Slots of the set (2 MiB of addresses; a power of two).
const SAMPLED_SLOTS: usize = 1 << 18;
/// A slot whose address was removed: probes go on past it, inserts reuse it.
const TOMBSTONE: u64 = 1;
/// The farthest from its home slot an address is placed: at the set's
/// usual load (a live heap of G GiB holds about 2048 G samples of 512 KiB,
/// a few percent of the slots) a probe ends after one or two slots; an
/// insert that finds no free slot this near drops the sample.
const MAX_PROBE: usize = 64;

/// The process's set (sampled profiles only; its slots are mapped by
/// [`SampledSet::start`]).
pub(super) static SAMPLED: SampledSet = SampledSet {
    slots: AtomicPtr::new(core::ptr::null_mut()),
    filter: [const { AtomicU8::new(0) }; FILTER_BUCKETS],
};

impl SampledSet {
    fn slot(&self, i: usize) -> Option<&AtomicU64> {
        let base = self.slots.load(Ordering::Acquire);
        // SAFETY: a non-null base is a mapping of SAMPLED_SLOTS atomics,
        // never unmapped; i is masked below SAMPLED_SLOTS.
        (!base.is_null()).then(|| unsafe { &*base.add(i & (SAMPLED_SLOTS - 1)) })
    }

    fn home(addr: u64) -> usize {
        ((addr >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize
    }

    /// The filter bucket of `addr`: its 4 KiB page, modulo the table. Not
    /// hashed, on purpose: the frees of a program that works in one region
    /// read a few of the filter's cache lines (one line covers 256 KiB of
    /// addresses), which stay in cache; a hashed index read a random line
    /// per free and missed whenever the program's own data had evicted it
    /// (a memset-heavy C program: a quarter of its free path). A sampled
    /// block makes the other frees of its page take the set's slower
    /// check; one sample per 512 KiB allocated keeps that rare.
    #[inline]
    fn bucket(addr: u64) -> &'static AtomicU8 {
        &SAMPLED.filter[(addr >> 12) as usize % FILTER_BUCKETS]
    }

    /// Maps the slots and makes the filter's pages resident; false if the
    /// mapping failed. Call once, before sampling starts. Populated, and
    /// the filter's pages written, here: both are read on every free before
    /// anything is written to them, and a page first read maps the zero
    /// page, whose replacement at the first write flushes the TLB of every
    /// CPU running the process (about a tenth of a multi-threaded C
    /// program's profiling cost).
    pub(super) fn start(&self) -> bool {
        let table = os::map_populated(SAMPLED_SLOTS * core::mem::size_of::<AtomicU64>());
        if table.is_null() {
            return false;
        }
        self.touch_filter();
        self.slots.store(table.cast(), Ordering::Release);
        true
    }

    /// Writes one byte of each page of the filter (a zero over a zero), so
    /// that its pages are the process's own before frees read them.
    fn touch_filter(&self) {
        let page = os::page_size();
        for i in (0..FILTER_BUCKETS).step_by(page) {
            self.filter[i].fetch_add(0, Ordering::Relaxed);
        }
    }

    /// Adds `addr`; false (nothing added) when no slot within
    /// [`MAX_PROBE`] of its home is free, or its filter bucket is full.
    pub(super) fn insert(&self, addr: u64) -> bool {
        let bucket = Self::bucket(addr);
        if bucket.load(Ordering::Relaxed) == u8::MAX {
            return false;
        }
        // Counted before the address is findable, so a racing free of it
        // never skips the table.
        bucket.fetch_add(1, Ordering::AcqRel);
        let home = Self::home(addr);
        for i in 0..MAX_PROBE {
            let Some(slot) = self.slot(home + i) else {
                break;
            };
            let cur = slot.load(Ordering::Relaxed);
            if (cur == 0 || cur == TOMBSTONE)
                && slot
                    .compare_exchange(cur, addr, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                return true;
            }
        }
        bucket.fetch_sub(1, Ordering::AcqRel);
        false
    }

    /// False when `addr` is certainly not in the set: no live sampled
    /// address shares its filter bucket.
    #[inline]
    pub(super) fn may_hold(&self, addr: u64) -> bool {
        Self::bucket(addr).load(Ordering::Acquire) != 0
    }

    /// Removes `addr` if present; whether it was.
    pub(super) fn remove(&self, addr: u64) -> bool {
        let bucket = Self::bucket(addr);
        if bucket.load(Ordering::Acquire) == 0 {
            return false;
        }
        let home = Self::home(addr);
        for i in 0..MAX_PROBE {
            let Some(slot) = self.slot(home + i) else {
                return false;
            };
            let cur = slot.load(Ordering::Acquire);
            if cur == 0 {
                return false;
            }
            if cur == addr
                && slot
                    .compare_exchange(cur, TOMBSTONE, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                bucket.fetch_sub(1, Ordering::AcqRel);
                return true;
            }
        }
        false
    }
}
