//! Every call heapkit makes into the operating system.
//!
//! Nothing in this module allocates, panics or formats: it is called from
//! inside allocators, before `main`, from the dynamic loader and from fork
//! handlers. Failures are reported as null pointers or `false`, never as
//! `std::io::Error` (which may allocate a message).
//!
//! Mapping calls are counted in process-wide `Relaxed` counters that
//! [`os_counters`] reads; they feed the `os_*` and `mapped_bytes` fields of
//! [`Stats`](crate::Stats).

use core::ffi::{c_int, c_void, CStr};
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

pub mod symbols;
pub mod thread_pointer;
#[cfg(target_arch = "x86_64")]
pub mod unwind;

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
    if size > HINT_MAX_SIZE || align > HINT_MAX_SIZE {
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

/// Ranges of at least this many whole pages are zeroed by [`zero_dead`]
/// with a purge instead of a memset.
const ZERO_BY_PURGE_MIN: usize = 64 << 10;

/// Zeroes `len` bytes at `p`, memory whose contents are dead (a block
/// about to be handed out by `calloc`): the whole pages by purging them
/// (they then read as zero and take no memory until touched; jemalloc
/// zeroes recycled extents the same way), the partial pages at either end,
/// and ranges under [`ZERO_BY_PURGE_MIN`], by memset. A `calloc` of a
/// reused block of which the program writes a few bytes otherwise writes,
/// and faults in, every page of it: most of the C stress program's page
/// faults.
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
    // SAFETY: caller guarantee; `first..last` lies inside `p..p + len`. A
    // failed purge writes the zeros itself.
    unsafe {
        p.write_bytes(0, first - start);
        (last as *mut u8).write_bytes(0, end - last);
        purge(first as *mut u8, last - first);
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

/// 64 random bits from the kernel (`getrandom`, non-blocking), or, where
/// that fails (a very early boot, a seccomp filter), bits mixed from the
/// clock and addresses that differ between runs (ASLR). Never allocates.
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is ours and 8 bytes long.
    let n = keeping_errno(|| unsafe {
        libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), libc::GRND_NONBLOCK)
    });
    if n == 8 {
        return u64::from_ne_bytes(bytes);
    }
    let stack = &bytes as *const _ as u64;
    let code = random_u64 as *const () as usize as u64;
    mix64(monotonic_ns() ^ stack.rotate_left(17) ^ code.rotate_left(41))
}

/// A strong 64-bit mixer (splitmix64's finaliser).
#[inline]
pub const fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Sleeps for `ns` nanoseconds (or until a signal interrupts).
pub fn sleep_ns(ns: u64) {
    let t = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: t is a valid timespec; the remainder is not wanted.
    keeping_errno(|| unsafe { libc::nanosleep(&t, ptr::null_mut()) });
}

/// Starts a detached thread running `body(arg as *mut c_void)` (a word the
/// caller and `body` agree on). Returns whether it started.
/// (`pthread_create` may call `malloc`: call it where re-entering the
/// allocator is safe.)
pub fn spawn_detached(body: extern "C" fn(*mut c_void) -> *mut c_void, arg: usize) -> bool {
    let mut thread: libc::pthread_t = 0;
    // SAFETY: default attributes; `body` is a valid thread entry, and the
    // argument is a plain word it interprets.
    let rc = keeping_errno(|| unsafe {
        libc::pthread_create(&mut thread, ptr::null(), body, arg as *mut c_void)
    });
    if rc != 0 {
        return false;
    }
    // SAFETY: a thread we just created and never join.
    keeping_errno(|| unsafe { libc::pthread_detach(thread) });
    true
}

/// Runs `call` (a system call) and puts `errno` back as it was: heapkit's
/// own operations never change `errno` (C's `free` must not, and a
/// `malloc` that succeeds should not), so the fast paths, which make no
/// system call, need not save it at all.
#[inline]
fn keeping_errno<R>(call: impl FnOnce() -> R) -> R {
    let slot = errno_slot();
    // SAFETY: slot is the calling thread's errno, valid for its life.
    let saved = unsafe { slot.read() };
    let result = call();
    // SAFETY: as above.
    unsafe { slot.write(saved) };
    result
}

/// Sets the calling thread's `errno`.
#[inline]
pub fn set_errno(value: c_int) {
    // SAFETY: __errno_location always returns the calling thread's errno.
    unsafe { *libc::__errno_location() = value };
}

/// The address of the calling thread's `errno` (valid for the thread's
/// life). Lets a caller save and restore `errno` around a call with one
/// `__errno_location` call instead of two.
#[inline]
pub fn errno_slot() -> *mut c_int {
    // SAFETY: __errno_location has no preconditions.
    unsafe { libc::__errno_location() }
}

/// Reads the calling thread's `errno`.
#[inline]
pub fn errno() -> c_int {
    // SAFETY: __errno_location always returns the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Monotonic time in nanoseconds (vDSO `clock_gettime`, no syscall).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Looks up an environment variable without allocating.
pub fn env_var(name: &CStr) -> Option<&'static CStr> {
    // SAFETY: name is NUL-terminated; getenv returns null or a pointer into
    // the environment, which lives as long as nobody calls setenv on it.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        None
    } else {
        // SAFETY: getenv returned a NUL-terminated string.
        Some(unsafe { CStr::from_ptr(p) })
    }
}

/// The next definition of `name` after the calling library in the dynamic
/// linker's search order (`dlsym(RTLD_NEXT)`), or null. For a library that
/// interposes a libc function and must still reach libc's own. May
/// allocate (through `malloc`) on failure: call it from outside the
/// allocator.
pub fn next_symbol(name: &CStr) -> *mut c_void {
    // SAFETY: name is NUL-terminated; RTLD_NEXT is a valid handle.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) }
}

/// Fills `frames` with the return addresses of the calling thread's stack,
/// innermost first, by DWARF unwinding (libgcc's `_Unwind_Backtrace`, which
/// reads `.eh_frame`: it works whether or not the code keeps frame
/// pointers). Returns how many were written. Does not allocate once warmed
/// up: call it once outside any allocator first (libgcc registers its
/// frame tables on the first call).
pub fn backtrace(frames: &mut [usize]) -> usize {
    struct State<'a> {
        frames: &'a mut [usize],
        len: usize,
    }
    extern "C" fn step(ctx: *mut c_void, arg: *mut c_void) -> c_int {
        // SAFETY: arg is the State passed below, alive for the whole walk.
        let state = unsafe { &mut *arg.cast::<State<'_>>() };
        // SAFETY: ctx is the unwinder's context for this frame.
        let ip = unsafe { _Unwind_GetIP(ctx) };
        if ip == 0 || state.len == state.frames.len() {
            return END_OF_STACK;
        }
        state.frames[state.len] = ip;
        state.len += 1;
        NO_REASON
    }
    const NO_REASON: c_int = 0;
    const END_OF_STACK: c_int = 5;
    extern "C" {
        fn _Unwind_Backtrace(
            trace: extern "C" fn(*mut c_void, *mut c_void) -> c_int,
            arg: *mut c_void,
        ) -> c_int;
        fn _Unwind_GetIP(ctx: *mut c_void) -> usize;
    }
    let mut state = State { frames, len: 0 };
    // SAFETY: step only writes within state.frames; the unwinder calls it
    // synchronously on this thread.
    unsafe { _Unwind_Backtrace(step, (&raw mut state).cast()) };
    state.len
}

/// Reads the file at `path` into `buf` (as much as fits); returns the
/// bytes read, 0 on failure. No allocation: for `/proc` files read from
/// inside an allocator.
pub fn read_file(path: &CStr, buf: &mut [u8]) -> usize {
    // SAFETY: path is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return 0;
    }
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: the range len.. of buf is writable; fd is open.
        let got = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if got <= 0 {
            break;
        }
        len += got as usize;
    }
    close_fd(fd);
    len
}

/// The process's resident memory in bytes (the second field of
/// `/proc/self/statm`, in pages), or 0 if it cannot be read. Never
/// allocates.
pub fn resident_bytes() -> usize {
    let mut buf = [0u8; 128];
    let len = read_file(c"/proc/self/statm", &mut buf);
    let mut fields = buf[..len].split(|&b| b == b' ');
    let pages = fields
        .nth(1)
        .and_then(crate::options::parse_number)
        .unwrap_or(0);
    pages as usize * page_size()
}

/// Writes all of `bytes` to standard error, ignoring failures.
pub fn write_stderr(bytes: &[u8]) {
    write_fd(2, bytes);
}

/// Writes all of `bytes` to file descriptor `fd`; returns `false` if the
/// write failed.
pub fn write_fd(fd: c_int, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: bytes is a valid readable buffer of its length.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

/// Creates (or truncates) the file at `path` for writing, opened with
/// `O_APPEND | O_CLOEXEC` so that each `write` lands whole at the end and
/// the descriptor does not leak into exec'd programs. Returns the file
/// descriptor, or -1 on failure.
pub fn create_append(path: &CStr) -> c_int {
    // SAFETY: path is NUL-terminated; open has no other preconditions.
    unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        )
    }
}

/// What [`create_append_locked`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockedFile {
    /// Created (or truncated) and locked: the descriptor.
    Created(c_int),
    /// Another process holds the lock: left alone.
    HeldElsewhere,
    /// The OS refused: the `errno` value.
    Failed(c_int),
}

/// Like [`create_append`], but first takes an exclusive `flock` on the
/// file, held until the process ends (forked children share it), and only
/// then truncates it. A program exec'd by a process that is writing the
/// file must not truncate it under its parent: that is
/// [`LockedFile::HeldElsewhere`].
pub fn create_append_locked(path: &CStr) -> LockedFile {
    // SAFETY: path is NUL-terminated; open has no other preconditions.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        )
    };
    if fd < 0 {
        return LockedFile::Failed(errno());
    }
    // SAFETY: fd is a descriptor opened just above.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        close_fd(fd);
        return LockedFile::HeldElsewhere;
    }
    // SAFETY: as above; truncating a file we hold open for writing.
    if unsafe { libc::ftruncate(fd, 0) } != 0 {
        let err = errno();
        close_fd(fd);
        return LockedFile::Failed(err);
    }
    LockedFile::Created(fd)
}

/// The text of error number `err` (`strerror_r`), written into `buf`; never
/// allocates.
pub fn error_text(err: c_int, buf: &mut [u8; 128]) -> &[u8] {
    buf.fill(0);
    // SAFETY: buf is writable for its length; the XSI strerror_r writes a
    // NUL-terminated message of at most that length (or fails, leaving the
    // zeroed buffer).
    let rc = unsafe { libc::strerror_r(err, buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if rc != 0 || len == 0 {
        return b"unknown error";
    }
    &buf[..len]
}

/// True when the parent process's environment holds exactly the entry
/// `entry` (`NAME=value`), read from `/proc/<ppid>/environ` in chunks on the
/// stack. For messages that a whole tree of processes would otherwise
/// repeat: only the first process of the tree says it. False when the
/// parent's environment cannot be read.
pub fn parent_environment_has(entry: &[u8]) -> bool {
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    let mut path = [0u8; 32];
    path[..6].copy_from_slice(b"/proc/");
    let mut digits = [0u8; 20];
    let pid = crate::options::format_number(ppid.max(0) as u64, &mut digits);
    path[6..6 + pid.len()].copy_from_slice(pid);
    let len = 6 + pid.len();
    path[len..len + 9].copy_from_slice(b"/environ\0");
    // SAFETY: path is NUL-terminated (written just above).
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    // Streaming match: `matched` bytes of `entry` match the current entry's
    // start; usize::MAX once the current entry cannot match.
    let mut matched = 0usize;
    let mut chunk = [0u8; 512];
    let mut found = false;
    'read: loop {
        // SAFETY: chunk is writable for its length; fd is open.
        let got = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
        if got <= 0 {
            break;
        }
        for &b in &chunk[..got as usize] {
            if b == 0 {
                if matched == entry.len() {
                    found = true;
                    break 'read;
                }
                matched = 0;
            } else if matched != usize::MAX {
                matched = if matched < entry.len() && entry[matched] == b {
                    matched + 1
                } else {
                    usize::MAX
                };
            }
        }
    }
    close_fd(fd);
    found
}

/// Closes file descriptor `fd`, ignoring failures.
pub fn close_fd(fd: c_int) {
    // SAFETY: closing a descriptor has no memory-safety preconditions.
    unsafe { libc::close(fd) };
}

/// The id of the calling process (a system call; not cached).
pub fn process_id() -> u32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as u32 }
}

/// Ends the process at once with `status`, as libc's `_exit` does (the
/// `exit_group` system call, made directly so that a library exporting its
/// own `_exit` can call this from it): no `atexit` handlers, no stdio flush,
/// no allocation. For errors found before a program may run.
pub fn exit_immediately(status: c_int) -> ! {
    loop {
        // SAFETY: exit_group takes an int and does not return.
        unsafe { libc::syscall(libc::SYS_exit_group, status) };
    }
}

/// Duplicates `fd` onto a new close-on-exec descriptor numbered `min` or
/// above (`fcntl(F_DUPFD_CLOEXEC)`); `None` on failure. Lets a report
/// written at exit survive a program that closes its own stderr first.
pub fn dup_cloexec(fd: c_int, min: c_int) -> Option<c_int> {
    // SAFETY: F_DUPFD_CLOEXEC only creates a descriptor; no memory involved.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    (new >= 0).then_some(new)
}

/// Ends the process with `SIGABRT` (`abort`), for detected heap misuse.
pub fn abort() -> ! {
    // SAFETY: abort has no preconditions and does not return.
    unsafe { libc::abort() }
}

/// Gives up the rest of this thread's time slice.
pub fn yield_now() {
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
}

/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED` and its registration command, from
/// the kernel's `uapi/linux/membarrier.h`.
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: c_int = 1 << 4;

/// Registers this process for [`barrier_all_threads`]; whether the kernel
/// agreed (Linux 4.14 and later, unless a seccomp filter refuses). A
/// forked child must register again.
pub fn register_barrier_all_threads() -> bool {
    // SAFETY: membarrier takes two integers and touches no user memory.
    let rc = keeping_errno(|| unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
            0,
        )
    });
    rc == 0
}

/// Makes every other running thread of this process execute a full memory
/// barrier before this returns (`membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`):
/// the slow side of an asymmetric fence, whose fast side is a compiler
/// fence only. Needs [`register_barrier_all_threads`] first; whether it
/// worked.
pub fn barrier_all_threads() -> bool {
    // SAFETY: as in register_barrier_all_threads.
    let rc = keeping_errno(|| unsafe {
        libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0)
    });
    rc == 0
}

/// A POSIX thread-specific-data key whose destructor runs when a thread that
/// set a non-null value exits. heapkit uses it to hand a dying thread's
/// caches back: native `thread_local!` statics with `const` initialisers have
/// no destructors of their own.
pub struct ThreadExitKey {
    // 0 = not created yet; otherwise key + 1.
    key: AtomicUsize,
}

impl ThreadExitKey {
    /// A key not yet created.
    pub const fn new() -> Self {
        Self {
            key: AtomicUsize::new(0),
        }
    }

    /// Registers the calling thread: `dtor(value)` runs when it exits.
    /// Creates the key on first use; returns `false` if it cannot be created.
    ///
    /// `pthread_key_create` and `pthread_setspecific` for the first keys of a
    /// process do not allocate in glibc. `value` is only stored, never
    /// dereferenced here.
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn register(&self, dtor: unsafe extern "C" fn(*mut c_void), value: *mut c_void) -> bool {
        let mut k = self.key.load(Relaxed);
        if k == 0 {
            let mut key: libc::pthread_key_t = 0;
            // SAFETY: key is a valid out-pointer; dtor is a valid function.
            if unsafe { libc::pthread_key_create(&mut key, Some(dtor)) } != 0 {
                return false;
            }
            match self
                .key
                .compare_exchange(0, key as usize + 1, Relaxed, Relaxed)
            {
                Ok(_) => k = key as usize + 1,
                Err(existing) => {
                    // SAFETY: key was created just above and never shared.
                    unsafe { libc::pthread_key_delete(key) };
                    k = existing;
                }
            }
        }
        // SAFETY: k - 1 is a key created by pthread_key_create.
        unsafe { libc::pthread_setspecific((k - 1) as libc::pthread_key_t, value) == 0 }
    }
}

impl Default for ThreadExitKey {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers fork handlers (`pthread_atfork`): `prepare` runs in the parent
/// before `fork`, `parent` and `child` after it in each process. Returns
/// `false` on failure.
pub fn register_atfork(
    prepare: unsafe extern "C" fn(),
    parent: unsafe extern "C" fn(),
    child: unsafe extern "C" fn(),
) -> bool {
    // SAFETY: the handlers are valid functions for the life of the process.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) == 0 }
}

/// Registers `f` to run at normal process exit (`atexit`).
pub fn register_at_exit(f: extern "C" fn()) -> bool {
    // SAFETY: f is a valid function for the life of the process.
    unsafe { libc::atexit(f) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranges pushed in order are purged (read zero again), each run of
    /// adjacent ones in one call; what was not pushed keeps its bytes.
    #[test]
    fn a_purge_run_purges_exactly_what_was_pushed() {
        let page = page_size();
        let p = map(8 * page);
        assert!(!p.is_null());
        // SAFETY: p is a fresh mapping of 8 pages, ours alone.
        unsafe {
            p.write_bytes(0x5A, 8 * page);
            let mut run = PurgeRun::new();
            run.push(p, page);
            run.push(p.add(page), 2 * page); // continues the run
            run.push(p.add(4 * page), page); // purges pages 0-2 first
            run.push(p.add(5 * page), 0); // nothing
            run.finish();
            run.finish(); // empty: nothing more
            for i in 0..8 {
                let want = if matches!(i, 0 | 1 | 2 | 4) { 0 } else { 0x5A };
                assert_eq!(*p.add(i * page), want, "page {i}");
                assert_eq!(*p.add(i * page + page - 1), want, "end of page {i}");
            }
            unmap(p, 8 * page);
        }
    }

    /// Where the kernel registers the process, the barrier works (and
    /// keeps working after another registration, as after a fork).
    #[test]
    fn barrier_all_threads_works_once_registered() {
        if !register_barrier_all_threads() {
            std::eprintln!("SKIP: membarrier refused here");
            return;
        }
        let other = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(50)));
        assert!(barrier_all_threads());
        assert!(register_barrier_all_threads());
        assert!(barrier_all_threads());
        other.join().unwrap();
    }

    #[test]
    fn aligned_mapping_is_aligned_zeroed_and_counted() {
        let before = os_counters();
        let size = 3 * page_size();
        let align = 4 << 20;
        let p = map_aligned(size, align);
        assert!(!p.is_null());
        assert_eq!(p as usize % align, 0);
        // SAFETY: p maps `size` fresh bytes.
        let bytes = unsafe { core::slice::from_raw_parts_mut(p, size) };
        assert!(bytes.iter().all(|&b| b == 0));
        bytes.fill(0xAB);
        let mid = os_counters();
        assert!(mid.maps > before.maps);
        // SAFETY: p..p+size is ours and dead after this.
        unsafe { unmap(p, size) };
        assert!(os_counters().unmaps > mid.unmaps);
    }

    #[test]
    fn aligned_mappings_usually_take_one_mmap() {
        let align = 4 << 20;
        let first = map_aligned(align, align);
        assert!(!first.is_null() && (first as usize).is_multiple_of(align));
        let mut got = [ptr::null_mut(); 8];
        for g in got.iter_mut() {
            *g = map_aligned(align, align);
            assert!(!g.is_null() && (*g as usize).is_multiple_of(align));
        }
        // Hinted mappings follow each other (other tests may take a hint
        // in between, so look for one adjacent pair, not all).
        assert!(
            got.windows(2)
                .any(|w| w[1] as usize == w[0] as usize + align),
            "no two aligned mappings were adjacent: {got:?}"
        );
        // SAFETY: every mapping is ours, unused, exactly `align` bytes.
        unsafe {
            for g in got {
                unmap(g, align);
            }
            unmap(first, align);
        }
    }

    #[test]
    fn purge_zeroes_and_remap_grows() {
        let page = page_size();
        let p = map(2 * page);
        assert!(!p.is_null());
        // SAFETY: p maps two pages.
        unsafe {
            p.write_bytes(7, 2 * page);
            purge(p, page);
            assert_eq!(*p, 0);
            assert_eq!(*p.add(page), 7);
            if remap_in_place(p, 2 * page, 4 * page) {
                *p.add(3 * page) = 1;
                unmap(p, 4 * page);
            } else {
                unmap(p, 2 * page);
            }
        }
    }

    #[test]
    fn a_refused_purge_still_reads_as_zero() {
        let page = page_size();
        let p = map(page);
        assert!(!p.is_null());
        // SAFETY: p maps one page; mlock'ed pages make MADV_DONTNEED fail
        // with EINVAL, which is the refusal being tested.
        unsafe {
            p.write_bytes(7, page);
            if libc::mlock(p.cast(), page) != 0 {
                std::println!("SKIP: mlock refused");
                unmap(p, page);
                return;
            }
            set_errno(1234);
            assert!(!purge(p, page), "madvise on a locked page succeeded");
            assert_eq!(errno(), 1234, "purge changed errno");
            assert!(core::slice::from_raw_parts(p, page).iter().all(|&b| b == 0));
            libc::munlock(p.cast(), page);
            unmap(p, page);
        }
    }

    #[test]
    fn map_rejects_impossible_sizes() {
        assert!(map(0).is_null());
        assert!(map(usize::MAX & !4095).is_null());
    }

    #[test]
    fn create_append_writes_and_closes() {
        let path = c"/tmp/heapkit-core-os-create-append-test";
        let fd = create_append(path);
        assert!(fd >= 0);
        assert!(write_fd(fd, b"abc"));
        assert!(write_fd(fd, b"def"));
        close_fd(fd);
        let text = std::fs::read("/tmp/heapkit-core-os-create-append-test").unwrap();
        assert_eq!(text, b"abcdef");
        assert!(process_id() > 0);
        assert!(create_append(c"/nonexistent-dir/x") < 0);
        // The lock keeps a second opener (another process, or here another
        // open file description) from truncating the file.
        let LockedFile::Created(locked) = create_append_locked(path) else {
            panic!("cannot create the test file");
        };
        assert!(write_fd(locked, b"xy"));
        assert_eq!(create_append_locked(path), LockedFile::HeldElsewhere);
        close_fd(locked);
        let text = std::fs::read("/tmp/heapkit-core-os-create-append-test").unwrap();
        assert_eq!(text, b"xy");
        assert!(matches!(
            create_append_locked(c"/nonexistent-dir/x"),
            LockedFile::Failed(libc::ENOENT)
        ));
        let mut buf = [0u8; 128];
        assert_eq!(
            error_text(libc::ENOENT, &mut buf),
            b"No such file or directory"
        );
    }

    #[test]
    fn parent_environment() {
        // The positive case is tested end to end (a traced shell's children
        // stay quiet: the shim's trace_errors_once test).
        assert!(!parent_environment_has(b"HEAPKIT_NO_SUCH_VARIABLE=1"));
    }

    #[test]
    fn env_and_errno() {
        assert!(env_var(c"HEAPKIT_SURELY_UNSET_VARIABLE").is_none());
        set_errno(libc::ENOMEM);
        assert_eq!(errno(), libc::ENOMEM);
    }
}
