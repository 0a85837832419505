//! Mapping, purging and protecting memory, and the process-wide counters
//! of those calls ([`os_counters`]). How a recycled block is zeroed for
//! `calloc` (a memset or a purge) is `zeroing`'s.

use core::ffi::{c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::{keeping_errno, random_u64};

static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

static MAPS: AtomicUsize = AtomicUsize::new(0);
static UNMAPS: AtomicUsize = AtomicUsize::new(0);
static REMAPS: AtomicUsize = AtomicUsize::new(0);
static PURGES: AtomicUsize = AtomicUsize::new(0);
static MAPPED: AtomicUsize = AtomicUsize::new(0);
static PEAK_MAPPED: AtomicUsize = AtomicUsize::new(0);

/// A snapshot of the process-wide OS counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OsCounters {
    /// Successful `mmap` calls.
    pub maps: usize,
    /// `munmap` calls.
    pub unmaps: usize,
    /// Successful `mremap` calls.
    pub remaps: usize,
    /// `madvise(MADV_DONTNEED)` calls.
    pub purges: usize,
    /// Bytes currently mapped through this module.
    pub mapped_bytes: usize,
    /// The most bytes ever mapped at once.
    pub peak_mapped_bytes: usize,
}

impl OsCounters {
    /// Whether memory went back to the OS (a purge or an unmap) between
    /// `before` and this snapshot (anywhere in the process).
    pub fn released_since(&self, before: &OsCounters) -> bool {
        self.purges != before.purges || self.unmaps != before.unmaps
    }
}

/// Reads the process-wide OS counters.
pub fn os_counters() -> OsCounters {
    OsCounters {
        maps: MAPS.load(Relaxed),
        unmaps: UNMAPS.load(Relaxed),
        remaps: REMAPS.load(Relaxed),
        purges: PURGES.load(Relaxed),
        mapped_bytes: MAPPED.load(Relaxed),
        peak_mapped_bytes: PEAK_MAPPED.load(Relaxed),
    }
}

fn add_mapped(bytes: usize) {
    let now = MAPPED.fetch_add(bytes, Relaxed) + bytes;
    PEAK_MAPPED.fetch_max(now, Relaxed);
}

fn sub_mapped(bytes: usize) {
    MAPPED.fetch_sub(bytes, Relaxed);
}

/// Counts `bytes` of a range reserved by [`reserve_aligned`] as mapped,
/// now that an allocator uses them ([`crate::reservation`]): the mapped
/// bytes (and `mallinfo2`'s `arena`) are what the allocators use, not what
/// is reserved ahead.
pub fn count_reserved_in_use(bytes: usize) {
    add_mapped(bytes);
}

/// The size of a virtual-memory page (4096 on x86-64 Linux).
#[inline]
pub fn page_size() -> usize {
    let cached = PAGE_SIZE.load(Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: sysconf has no preconditions.
    let queried = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let size = if queried > 0 { queried as usize } else { 4096 };
    PAGE_SIZE.store(size, Relaxed);
    size
}

/// Rounds `size` up to a multiple of the page size; `None` on overflow.
#[inline]
pub fn round_to_pages(size: usize) -> Option<usize> {
    let page = page_size();
    Some(size.checked_add(page - 1)? & !(page - 1))
}

/// Maps `size` bytes (a multiple of the page size) of fresh, zeroed,
/// read-write anonymous memory. Returns null on failure.
pub fn map(size: usize) -> *mut u8 {
    let p = map_uncounted(size);
    if !p.is_null() {
        add_mapped(size);
    }
    p
}

/// [`map`] with every page faulted in by the `mmap` itself
/// (`MAP_POPULATE`), for tables that are read before they are written. A
/// fresh page that is read first maps the shared zero page, and the first
/// write to it then replaces that mapping: a copy-on-write fault whose TLB
/// flush interrupts every other CPU running the process. Costs the whole
/// size in resident memory at once.
pub fn map_populated(size: usize) -> *mut u8 {
    let p = map_with(size, libc::MAP_POPULATE);
    if !p.is_null() {
        add_mapped(size);
    }
    p
}

/// [`map`] without counting the bytes as mapped.
fn map_uncounted(size: usize) -> *mut u8 {
    map_with(size, 0)
}

/// An anonymous private read-write mapping with `extra` `mmap` flags.
fn map_with(size: usize, extra: c_int) -> *mut u8 {
    if size == 0 || size > isize::MAX as usize {
        return ptr::null_mut();
    }
    // SAFETY: an anonymous private mapping at an address the kernel chooses
    // touches no existing memory.
    let p = keeping_errno(|| unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
            -1,
            0,
        )
    });
    if p == libc::MAP_FAILED {
        return ptr::null_mut();
    }
    MAPS.fetch_add(1, Relaxed);
    p.cast()
}

/// Maps `size` bytes aligned to `align` (a power of two, at least the page
/// size; `size` a multiple of the page size). The mapping is fresh and
/// zeroed. Returns null on failure.
///
/// Usually one `mmap`: the request names an aligned address just past the
/// previous aligned mapping in heapkit's hint area (`ALIGNED_HINT`), with
/// `MAP_FIXED_NOREPLACE`, so the kernel either grants exactly that address
/// or refuses without mapping anything. Otherwise (the area is used up or
/// taken, or a kernel before 4.17 placed the mapping elsewhere) it
/// over-maps by `align` and trims both ends (one `mmap`, up to two
/// `munmap`: about 4x the time, the large path's p99 latency).
pub fn map_aligned(size: usize, align: usize) -> *mut u8 {
    let p = reserve_aligned(size, align);
    if !p.is_null() {
        add_mapped(size);
    }
    p
}

/// [`map_aligned`] for address space reserved ahead: the bytes are not
/// counted as mapped until [`count_reserved_in_use`] says they are used;
/// give back a range never counted with [`unreserve`].
pub fn reserve_aligned(size: usize, align: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two() && align >= page_size());
    if align <= page_size() {
        return map_uncounted(size);
    }
    if let Some(p) = map_at_hint(size, align) {
        return p;
    }
    let Some(total) = size.checked_add(align) else {
        return ptr::null_mut();
    };
    let raw = map_uncounted(total);
    if raw.is_null() {
        return raw;
    }
    let start = raw as usize;
    let aligned = (start + align - 1) & !(align - 1);
    let front = aligned - start;
    let back = total - front - size;
    // SAFETY: both ranges lie inside the mapping just created and are
    // page-aligned (start, aligned and size are page multiples).
    unsafe {
        if front != 0 {
            unreserve(raw, front);
        }
        if back != 0 {
            unreserve((aligned + size) as *mut u8, back);
        }
    }
    aligned as *mut u8
}

/// Where the next aligned mapping is asked for (0: not chosen yet).
///
/// The hints walk upwards through an area of their own, 2 TiB plus a random
/// multiple of 4 MiB (up to 16 GiB, so addresses still differ from run to
/// run), as mimalloc does: the kernel places other mappings top-down from
/// just below the stack (around 128 TiB), far from it, so the hinted
/// addresses are almost always free. Hinting just past the previous
/// fallback mapping instead collided with the kernel's next top-down
/// placement, and each collision cost an `mmap` and an `munmap` before the
/// fallback's three calls (the `large` workload's malloc p99 was 90 us).
static ALIGNED_HINT: AtomicUsize = AtomicUsize::new(0);
/// Start of the hint area.
const HINT_AREA_START: usize = 2 << 40;
/// The hints stop here (a later mapping falls back to the kernel's choice).
const HINT_AREA_END: usize = 64 << 40;
/// Mappings past this size are never hinted (they would use up the area).
const HINT_MAX_SIZE: usize = 1 << 40;

/// One `mmap` at the aligned hint address; `None` (nothing left mapped) if
/// the hint area is used up or the address is taken.
fn map_at_hint(size: usize, align: usize) -> Option<*mut u8> {
    // ThreadSanitizer keeps its shadow memory where the hint area lies and
    // stops a program that maps there (`RUSTFLAGS="--cfg heapkit_tsan"`
    // builds for it take the kernel's placement: see docs/DESIGN.md).
    if cfg!(heapkit_tsan) || size > HINT_MAX_SIZE || align > HINT_MAX_SIZE {
        return None;
    }
    let mut current = ALIGNED_HINT.load(Relaxed);
    let want = loop {
        let hint = if current == 0 {
            HINT_AREA_START + ((random_u64() as usize % 4096) << 22)
        } else {
            current
        };
        let want = (hint + align - 1) & !(align - 1);
        let end = want + size;
        if end > HINT_AREA_END {
            return None;
        }
        // Claim the range first, so two threads never ask for the same one.
        match ALIGNED_HINT.compare_exchange_weak(current, end, Relaxed, Relaxed) {
            Ok(_) => break want,
            Err(now) => current = now,
        }
    };
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping: the
    // kernel fails with EEXIST when any of the range is taken (a kernel
    // before 4.17 treats the address as a hint and may place it elsewhere,
    // checked below).
    let p = keeping_errno(|| unsafe {
        libc::mmap(
            want as *mut c_void,
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    });
    if p == libc::MAP_FAILED {
        return None;
    }
    if p as usize != want {
        // SAFETY: the mapping was just made, exactly this size, and unused.
        keeping_errno(|| unsafe { libc::munmap(p, size) });
        return None;
    }
    MAPS.fetch_add(1, Relaxed);
    Some(p.cast())
}

/// Unmaps `size` bytes at `ptr`.
///
/// # Safety
/// `ptr..ptr+size` must be a page-aligned range mapped by this module that
/// nothing will touch again.
pub unsafe fn unmap(ptr: *mut u8, size: usize) {
    // SAFETY: forwarded caller guarantee.
    if unsafe { unreserve(ptr, size) } {
        sub_mapped(size);
    }
}

/// [`unmap`] for bytes never counted as mapped (reserved by
/// [`reserve_aligned`] and not handed out); returns whether it worked.
///
/// # Safety
/// As [`unmap`].
pub unsafe fn unreserve(ptr: *mut u8, size: usize) -> bool {
    // SAFETY: the caller guarantees the range is ours and dead.
    let rc = keeping_errno(|| unsafe { libc::munmap(ptr.cast(), size) });
    if rc == 0 {
        UNMAPS.fetch_add(1, Relaxed);
    }
    rc == 0
}

/// Grows or shrinks the mapping at `ptr` from `old_size` to `new_size`
/// bytes without moving it. Returns `false` if the kernel cannot do it in
/// place (the mapping is then unchanged).
///
/// # Safety
/// `ptr..ptr+old_size` must be a whole mapping made by this module.
pub unsafe fn remap_in_place(ptr: *mut u8, old_size: usize, new_size: usize) -> bool {
    // SAFETY: the caller guarantees the mapping; without MREMAP_MAYMOVE the
    // kernel either resizes in place or fails.
    let p = keeping_errno(|| unsafe { libc::mremap(ptr.cast(), old_size, new_size, 0) });
    if p == libc::MAP_FAILED {
        return false;
    }
    REMAPS.fetch_add(1, Relaxed);
    if new_size > old_size {
        add_mapped(new_size - old_size);
    } else {
        sub_mapped(old_size - new_size);
    }
    true
}

/// Moves the mapping at `ptr` (of `old_size` bytes) to `dest`, resized to
/// `new_size`, replacing whatever was mapped at `dest..dest+new_size`.
/// Returns `false` on failure (nothing changed).
///
/// # Safety
/// `ptr..ptr+old_size` must be a whole mapping made by this module and
/// `dest..dest+new_size` a range of this module's mappings that nothing else
/// uses (typically a fresh reservation from [`map_aligned`]).
pub unsafe fn remap_to(ptr: *mut u8, old_size: usize, new_size: usize, dest: *mut u8) -> bool {
    // SAFETY: the caller guarantees both ranges; MREMAP_FIXED atomically
    // replaces the destination mapping.
    let p = keeping_errno(|| unsafe {
        libc::mremap(
            ptr.cast(),
            old_size,
            new_size,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            dest.cast::<c_void>(),
        )
    });
    if p == libc::MAP_FAILED {
        return false;
    }
    REMAPS.fetch_add(1, Relaxed);
    // The destination reservation (new_size bytes) was replaced and the old
    // range (old_size bytes) is gone.
    sub_mapped(old_size);
    true
}

/// Adjacent ranges to purge, given back with one `madvise` each run
/// instead of one per range: a decay sweep that purges 20 neighbouring
/// free pages of a segment makes one system call (and one TLB shootdown
/// in a threaded program), not 20.
///
/// Push ranges in address order, then call [`PurgeRun::finish`] for what
/// is left (a run dropped unfinished purges nothing more).
#[derive(Debug, Default)]
pub struct PurgeRun {
    start: usize,
    end: usize,
}

impl PurgeRun {
    /// An empty run.
    pub const fn new() -> Self {
        PurgeRun { start: 0, end: 0 }
    }

    /// Adds `ptr..ptr + len` to the run, purging the run so far first if
    /// the range does not continue it.
    ///
    /// # Safety
    /// As for [`purge`]: the range is ours, mapped, and its contents dead
    /// (from now on: the purge may happen later, at the next
    /// non-adjacent push or at [`PurgeRun::finish`]).
    pub unsafe fn push(&mut self, ptr: *mut u8, len: usize) {
        if len == 0 {
            return;
        }
        if ptr as usize != self.end {
            // SAFETY: the ranges pushed so far met this contract.
            unsafe { self.finish() };
            self.start = ptr as usize;
        }
        self.end = ptr as usize + len;
    }

    /// Purges the run and empties it.
    ///
    /// # Safety
    /// The ranges pushed met [`PurgeRun::push`]'s contract and are still
    /// dead.
    pub unsafe fn finish(&mut self) {
        if self.end > self.start {
            // SAFETY: caller guarantee.
            unsafe { purge(self.start as *mut u8, self.end - self.start) };
        }
        self.start = 0;
        self.end = 0;
    }
}

/// Returns the physical pages behind `ptr..ptr+size` to the OS. The range
/// stays mapped and reads as zero afterwards (private anonymous memory).
///
/// If the kernel refuses (`madvise` fails: a seccomp filter, a page size
/// other than the one assumed, a hugetlb mapping), the range is zeroed by
/// hand instead, so "reads as zero" holds either way and callers may keep
/// marking purged memory as known-zero. Returns whether the memory really
/// went back to the OS.
///
/// # Safety
/// The range must be page-aligned, mapped by this module, and hold nothing
/// that anyone still needs.
pub unsafe fn purge(ptr: *mut u8, size: usize) -> bool {
    if size == 0 {
        return true;
    }
    // SAFETY: the caller guarantees the range is ours and its contents dead.
    let rc = keeping_errno(|| unsafe { libc::madvise(ptr.cast(), size, libc::MADV_DONTNEED) });
    if rc != 0 {
        // SAFETY: as above: the range is ours, mapped and writable.
        unsafe { ptr.write_bytes(0, size) };
        return false;
    }
    PURGES.fetch_add(1, Relaxed);
    true
}

/// Asks the kernel to back `ptr..ptr+size` with transparent huge pages
/// where it can (`MADV_HUGEPAGE`: 2 MiB pages at first touch of an aligned
/// 2 MiB range, or later by `khugepaged`). Advice only: whether the kernel
/// agreed (a kernel without THP, or with it set to `never`, refuses or
/// ignores it, and nothing changes).
///
/// # Safety
/// The range must be page-aligned and mapped by this module.
pub unsafe fn advise_huge_pages(ptr: *mut u8, size: usize) -> bool {
    // SAFETY: advice on our own mapping; it never changes its contents.
    keeping_errno(|| unsafe { libc::madvise(ptr.cast(), size, libc::MADV_HUGEPAGE) }) == 0
}

/// Which OS pages from `ptr` on are resident (`mincore`): `resident[i]`
/// for page `i`, as many pages as `resident` holds. False if the kernel
/// refuses (a range not mapped). For tests and diagnostics that check
/// what a path touched. Never allocates.
///
/// # Safety
/// `ptr` must be page-aligned.
pub unsafe fn resident_pages(ptr: *const u8, resident: &mut [bool]) -> bool {
    let page = page_size();
    let mut chunk = [0u8; RESIDENCY_CHUNK];
    for (n, out) in resident.chunks_mut(chunk.len()).enumerate() {
        let at = ptr.wrapping_add(n * chunk.len() * page);
        // SAFETY: caller guarantee: `at` is page-aligned (a whole number
        // of pages past `ptr`).
        if !unsafe { residency(at, &mut chunk[..out.len()]) } {
            return false;
        }
        for (o, b) in out.iter_mut().zip(chunk) {
            *o = b & 1 != 0;
        }
    }
    true
}

/// Pages whose residency one [`residency`] call of [`resident_pages`]
/// reads (a buffer on the stack; 1 MiB of 4 KiB pages).
pub(super) const RESIDENCY_CHUNK: usize = 256;

/// One `mincore` over `out.len()` pages from `ptr`: bit 0 of `out[i]` is
/// set when page `i` is resident. False (and `out` unspecified) when the
/// kernel refuses: a range not mapped.
///
/// # Safety
/// `ptr` must be page-aligned.
pub(super) unsafe fn residency(ptr: *const u8, out: &mut [u8]) -> bool {
    let len = out.len() * page_size();
    // SAFETY: mincore only reads the page tables of the range (failing
    // with ENOMEM where it is not mapped) and writes one byte per page
    // into `out`, which holds exactly that many; `ptr` is page-aligned by
    // the caller's contract, as mincore requires.
    keeping_errno(|| unsafe { libc::mincore(ptr.cast_mut().cast(), len, out.as_mut_ptr()) }) == 0
}

/// Makes `ptr..ptr+size` inaccessible (`accessible == false`: any touch
/// faults, a guard page) or readable and writable again. Returns whether
/// the kernel agreed.
///
/// # Safety
/// The range must be page-aligned and mapped by this module, and nothing
/// may live in it while it is inaccessible.
pub unsafe fn protect(ptr: *mut u8, size: usize, accessible: bool) -> bool {
    let prot = if accessible {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_NONE
    };
    // SAFETY: the caller guarantees the range is ours and holds nothing
    // live while inaccessible.
    keeping_errno(|| unsafe { libc::mprotect(ptr.cast(), size, prot) }) == 0
}

/// `/proc/self/pagemap`'s bit for a page that is present.
const PAGEMAP_PRESENT: u64 = 1 << 63;
/// `/proc/self/pagemap`'s bit for a page mapped by this process alone: a
/// private page it wrote (zeros included). The shared zero page, which a
/// read of a page never written maps, is present but not exclusive.
const PAGEMAP_EXCLUSIVE: u64 = 1 << 56;

/// How many of the `pages` pages from `ptr` (at most [`RESIDENCY_CHUNK`])
/// are present but not mapped by this process alone
/// (`/proc/self/pagemap`): pages only read since they were purged (the
/// zero page), or, after a `fork`, pages shared with the child. `None`
/// when the file cannot be read (no `/proc`, no descriptor to spare, a
/// sandbox): callers then judge without it. An `open`, a `pread` and a
/// `close` ([`read_file_at`](super::read_file_at)), errno kept; never
/// allocates. `ptr` is rounded down to its page.
pub(super) fn shared_pages(ptr: *const u8, pages: usize) -> Option<usize> {
    const ENTRY: usize = size_of::<u64>();
    let pages = pages.min(RESIDENCY_CHUNK);
    let mut entries = [0u8; RESIDENCY_CHUNK * ENTRY];
    let entries = &mut entries[..pages * ENTRY];
    let offset = (ptr as usize / page_size() * ENTRY) as u64;
    if keeping_errno(|| super::read_file_at(c"/proc/self/pagemap", offset, entries))
        != entries.len()
    {
        return None;
    }
    Some(
        entries
            .chunks_exact(ENTRY)
            .map(|e| u64::from_ne_bytes(e.try_into().unwrap_or_default()))
            .filter(|&e| e & PAGEMAP_PRESENT != 0 && e & PAGEMAP_EXCLUSIVE == 0)
            .count(),
    )
}
