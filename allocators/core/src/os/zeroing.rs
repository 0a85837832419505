//! Zeroing a recycled block for `calloc`: a memset or a purge, whichever
//! costs less for the block's next user, judged by how much of it its last
//! user touched ([`zero_dead`]).
//!
//! A `calloc` that reuses a freed block must hand it out zeroed. Under
//! 64 KiB a memset is always the cheaper; above, a block its last user
//! filled is still resident (a memset touches nothing new), and one it
//! barely wrote is mostly zero or not resident (a purge gives back what it
//! did write, and the next user faults in only what it touches). One
//! `mincore` and a read of the resident pages tell them apart; a small
//! table of recent verdicts by block address spares most calls that work.

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::memory::{residency, shared_pages, RESIDENCY_CHUNK};
use super::{page_size, purge};

/// Ranges of fewer whole pages than this are zeroed by [`zero_dead`] with a
/// memset, whatever their residency.
pub const ZERO_BY_PURGE_MIN: usize = 64 << 10;
/// [`zero_dead`] samples the residency of at most this many pages (one
/// `mincore` call into a buffer on the stack: 1 MiB of 4 KiB pages).
const ZERO_SAMPLE_PAGES: usize = RESIDENCY_CHUNK;
/// [`zero_dead`] zeroes with a memset when at least 1 in this many of the
/// sampled pages was written by the block's last user (resident and not
/// all zeros), and by purging them otherwise.
const ZERO_DENSE_ONE_IN: usize = 2;
/// A block found dense is memset this many more times without a sample
/// (a `mincore` costs 2.2 us on this KVM host, about the memset of a
/// 100 KiB block: sampling every time made a loop that `calloc`s and fills
/// 64-256 KiB blocks 1.5x slower).
const DENSE_REUSES: usize = 31;
/// A block found sparse is purged this many more times without a sample
/// (fewer than [`DENSE_REUSES`]: a block wrongly purged costs its next
/// user a fault a page; sampling every time made a loop that `calloc`s
/// 300 KiB-1 MiB blocks and writes three bytes of each 1.46x slower, one
/// `mincore` per `madvise`).
const SPARSE_REUSES: usize = 7;
/// Entries in [`ZERO_VERDICTS`] (32 KiB, untouched until used: a loop
/// keeping 16 blocks of 64-256 KiB live spread over ~200 addresses, and
/// 512 entries, colliding, sampled twice as often).
const VERDICT_SLOTS: usize = 4096;
/// An entry's bits below the block address: its flags and its count.
const VERDICT_BITS: usize = 255;
/// The verdict bit of an entry: dense (memset) when set.
const VERDICT_DENSE: usize = 32;
/// An entry's flag for a block found touched but not written after a
/// purge of ours once, where `/proc/self/pagemap` cannot tell a read from
/// a copy: resident and mostly zero, as pages are that a program read
/// (the zero page mapped) or that a `realloc` copied zeros into. A second
/// time in a row makes it [`VERDICT_READ`]; a purge that was kept (the
/// block found sparse after it) clears it.
const VERDICT_READ_ONCE: usize = 64;
/// An entry's flag for a block its users *read* whole: found touched but
/// not written after a purge of ours, its pages the shared zero page
/// (`/proc/self/pagemap`; without it, after two such purges in a row).
/// Such a block is judged by residency alone from then on: by its
/// contents it would read sparse after each memset and be purged, and its
/// next user would fault every page in again (a loop that `calloc`s
/// 64-256 KiB counter tables, reads them whole and writes three bytes:
/// 6-9x the time, `reports/calloc-written-20261130`). Set without telling
/// reads from copies, after one purge, the C stress program's `realloc`
/// copies of zeros set it on blocks its users write three bytes of, and
/// kept them resident.
const VERDICT_READ: usize = 128;
/// Recent verdicts, direct-mapped by block address: an entry is the
/// block's address (its low 8 bits cleared: big and large blocks are
/// 64-byte aligned and at least 64 KiB apart, so no two share a key), then
/// [`VERDICT_READ`], [`VERDICT_READ_ONCE`], [`VERDICT_DENSE`] and how many
/// more calls may reuse the verdict (up to 31) in the low bits; 0 is no
/// entry, and an address with neither verdict nor count a block sampled
/// sparse once (a second sparse sample in a row is reused
/// [`SPARSE_REUSES`] times: reusing the first made a loop that
/// fills 64-256 KiB blocks 1.25x slower, its fresh blocks, never written,
/// purged again and again while filled). Shared by every thread, updated
/// without a lock: a lost update costs a sample or a reuse, and either
/// method zeroes, so no race makes a block read anything but zero.
static ZERO_VERDICTS: [AtomicUsize; VERDICT_SLOTS] = [const { AtomicUsize::new(0) }; VERDICT_SLOTS];

/// Zeroes `len` bytes at `p`, memory whose contents are dead (a recycled
/// block about to be handed out by `calloc`), the cheaper of two ways,
/// judged by how much of it its last user touched:
///
/// - **memset** when the range is under [`ZERO_BY_PURGE_MIN`] of whole
///   pages, or when its last user used at least half of its pages
///   (sampled over its first 256 pages, by what its pages hold and whether
///   they are resident, as below; or remembered from a recent sample of
///   the same block): a program that uses the
///   blocks it `calloc`s uses their pages again, and a memset of
///   resident pages costs a fraction of faulting each in anew (a loop that
///   `calloc`s 300 KiB-1 MiB blocks and touches every page took 31-36x
///   libmimalloc's time when every such block was purged: two faults a
///   page on this host, a read of the zero page and the write after it);
/// - **purge** of the whole pages (memset of the partial pages at either
///   end) otherwise: they then read as zero and take no memory until
///   touched, so a program that writes a few bytes of each block it
///   `calloc`s does not fault in, and keep, every page of it (jemalloc
///   zeroes recycled extents this way; the C stress program, whose
///   64-256 KiB blocks were always memset before, peak RSS 62 -> 38 MiB,
///   and 0.80x that once pages were judged by their contents, not only
///   their residency: `reports/calloc-written-20261130`).
///
/// Half is where the two cost the same if the next user touches what the
/// last one did: a memset faults in the pages not resident, a purge the
/// used ones the next user touches again. A page counts as used when it
/// is resident and holds a byte that is not zero (a page an earlier
/// memset of ours left resident is not used); right after a purge of
/// ours, when it is resident at all (its user touched it since), unless
/// `/proc/self/pagemap` shows the touch wrote zeros (a `realloc` copy);
/// and by residency alone for good once a block's users are seen to read
/// it whole after a purge (the zero page mapped: a program that reads its
/// `calloc`ed tables whole).
///
/// Both are correct for any page: a page not resident may be swapped out
/// (`mincore` says only whether a page is in memory), so residency and
/// contents only choose the method and never skip a page.
///
/// # Safety
/// `p..p + len` is writable memory of one block whose contents are dead,
/// in a private anonymous mapping.
pub unsafe fn zero_dead(p: *mut u8, len: usize) {
    let page = page_size();
    let start = p as usize;
    let end = start + len;
    let first = (start + page - 1) & !(page - 1);
    let last = end & !(page - 1);
    if last <= first || last - first < ZERO_BY_PURGE_MIN {
        // SAFETY: caller guarantee.
        unsafe { p.write_bytes(0, len) };
        return;
    }
    // SAFETY: caller guarantee; `first..last` lies inside `p..p + len`.
    unsafe { zero_whole_pages(p, len, first as *mut u8, last - first) }
}

/// [`zero_dead`]'s choice between a memset and a purge, out of line: it
/// costs a `mincore` and is taken only for blocks of 64 KiB and more.
///
/// # Safety
/// As for [`zero_dead`]; `first..first + whole` is the page-aligned part
/// of `p..p + len`, at least [`ZERO_BY_PURGE_MIN`] long.
#[cold]
#[inline(never)]
unsafe fn zero_whole_pages(p: *mut u8, len: usize, first: *mut u8, whole: usize) {
    // SAFETY: caller guarantee: `first..first + whole` is mapped.
    let dense = unsafe { dense_block(p, first, whole) };
    if dense {
        // SAFETY: caller guarantee: the block is writable and dead.
        unsafe { p.write_bytes(0, len) };
        return;
    }
    let end = p as usize + len;
    let last = first as usize + whole;
    // SAFETY: caller guarantee; the partial pages lie inside the block. A
    // failed purge writes the zeros itself.
    unsafe {
        p.write_bytes(0, first as usize - p as usize);
        (last as *mut u8).write_bytes(0, end - last);
        purge(first, whole);
    }
}

/// Whether the block at `p` (whole pages `first..first + len`) is dense:
/// a verdict remembered in [`ZERO_VERDICTS`], or sampled and remembered.
///
/// A sample counts the pages the block's last user **wrote** (resident
/// and not all zeros, [`sample`]), unless the block was purged by the last
/// sample's verdict or its users are known to read it whole
/// ([`VERDICT_READ`]): then every resident page counts, since a page
/// resident after our purge is one its user touched, read or written. A
/// block touched after our purge but holding only zeros asks
/// `/proc/self/pagemap` which: pages read (the zero page) make it
/// [`VERDICT_READ`] and memset; pages written with zeros are purged again.
///
/// # Safety
/// As for [`sample`].
unsafe fn dense_block(p: *mut u8, first: *mut u8, len: usize) -> bool {
    let key = p as usize & !VERDICT_BITS;
    // Fibonacci hashing: blocks at the same offset of different segments
    // (the first block of each big page) differ only in high bits.
    let hash =
        (key as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - VERDICT_SLOTS.trailing_zeros());
    let slot = &ZERO_VERDICTS[hash as usize];
    let entry = slot.load(Relaxed);
    let known = entry & !VERDICT_BITS == key;
    let reuses = entry & (VERDICT_DENSE - 1);
    if known && reuses != 0 {
        slot.store(entry - 1, Relaxed);
        return entry & VERDICT_DENSE != 0;
    }
    let sparse_before = known && entry & VERDICT_DENSE == 0;
    let mut read = if known {
        entry & (VERDICT_READ | VERDICT_READ_ONCE)
    } else {
        0
    };
    // SAFETY: caller guarantee.
    let usage = unsafe { sample(first, len, read & VERDICT_READ == 0) };
    let dense = if read & VERDICT_READ != 0 {
        usage.resident
    } else if sparse_before {
        if usage.resident && !usage.written {
            // Touched since our purge but not written: read whole (the
            // zero page mapped) or zeros copied in (a `realloc`, a memset
            // of the program's own). `/proc/self/pagemap` tells which;
            // without it, a second time in a row decides.
            let sampled = (len / page_size()).min(ZERO_SAMPLE_PAGES);
            match shared_pages(first, sampled) {
                Some(shared) if shared >= sampled.div_ceil(ZERO_DENSE_ONE_IN) => {
                    read = VERDICT_READ;
                    true
                }
                // Zeros written: the pages were used for nothing that
                // lasts, and go back.
                Some(_) => {
                    read = 0;
                    false
                }
                None => {
                    read = if read != 0 {
                        VERDICT_READ
                    } else {
                        VERDICT_READ_ONCE
                    };
                    true
                }
            }
        } else {
            if !usage.resident {
                read = 0;
            }
            usage.resident
        }
    } else {
        usage.written
    };
    slot.store(
        read | if dense {
            key | VERDICT_DENSE | DENSE_REUSES
        } else if sparse_before {
            key | SPARSE_REUSES
        } else {
            // Sparse once: perhaps a block never written yet (carved
            // unwritten, or purged by the decay) whose user fills it, so
            // the verdict is kept only when the next sample agrees.
            key
        },
        Relaxed,
    );
    dense
}

/// What [`sample`] found of a block's first pages: whether at least one
/// in [`ZERO_DENSE_ONE_IN`] of them is resident, and whether as many hold
/// a byte that is not zero.
struct Usage {
    /// At least half the sampled pages are resident (`mincore`).
    resident: bool,
    /// At least half are resident and hold a byte that is not zero
    /// ([`page_written`]); false when the contents were not read.
    written: bool,
}

/// Samples the first [`ZERO_SAMPLE_PAGES`] pages of `first..first + len`:
/// which are resident (one `mincore`) and, when `contents`, which of those
/// hold a byte that is not zero ([`page_written`]). Both true when the
/// kernel refuses (it cannot on our mappings): a memset is right whatever
/// the pages hold.
///
/// Residency alone cannot tell a page the last user wrote from one an
/// earlier memset of ours (or a `realloc` copy of zeros) made resident: a
/// block once memset would read dense for ever, and a program that
/// `calloc`s such blocks and writes a few bytes of each would keep every
/// page of them resident. The pages' contents can: a page written is
/// almost never all zeros. Reading costs at most the memset it may
/// replace (the pages read are resident; a written page stops the scan
/// at its first line that is not zero, and the count at half the pages),
/// and the verdict is remembered.
///
/// # Safety
/// `first` is page-aligned and `first..first + len` mapped, readable,
/// and dead (nothing writes it meanwhile).
unsafe fn sample(first: *mut u8, len: usize, contents: bool) -> Usage {
    let page = page_size();
    let sampled = (len / page).min(ZERO_SAMPLE_PAGES);
    let mut pages = [0u8; ZERO_SAMPLE_PAGES];
    // SAFETY: caller guarantee: `first` is page-aligned.
    if !unsafe { residency(first, &mut pages[..sampled]) } {
        return Usage {
            resident: true,
            written: true,
        };
    }
    let needed = sampled.div_ceil(ZERO_DENSE_ONE_IN);
    let resident = pages[..sampled].iter().filter(|&&b| b & 1 != 0).count() >= needed;
    let mut written = 0;
    if contents && resident {
        for (i, _) in pages[..sampled]
            .iter()
            .enumerate()
            .filter(|(_, &b)| b & 1 != 0)
        {
            // SAFETY: page `i` lies inside the range (i < sampled <= len /
            // page), is resident (read without a fault), and is dead.
            if unsafe { page_written(first.add(i * page), page) } {
                written += 1;
                if written >= needed {
                    break;
                }
            }
        }
    }
    Usage {
        resident,
        written: written >= needed,
    }
}

/// Whether the `len` bytes at `p` (a page: 8-aligned, a multiple of 64
/// bytes) hold a byte that is not zero; reads up to the first such byte's
/// 64-byte line.
///
/// # Safety
/// `p..p + len` is readable, 8-aligned, and nothing writes it meanwhile.
unsafe fn page_written(p: *const u8, len: usize) -> bool {
    let words = p.cast::<u64>();
    (0..len / 64).any(|line| {
        // SAFETY: caller guarantee: the line's 8 words lie inside the
        // range, which is 8-aligned and readable.
        let acc = (0..8).fold(0u64, |acc, w| acc | unsafe { *words.add(line * 8 + w) });
        acc != 0
    })
}
