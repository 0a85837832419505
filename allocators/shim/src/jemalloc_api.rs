//! jemalloc's non-standard API over the selected backend, for programs
//! linked against `libjemalloc.so` and run under `LD_PRELOAD`.
//!
//! Debian's `redis-server` is one: it calls `malloc` and `free` (which
//! this library interposes) but also `mallctl`, `nallocx` and
//! `malloc_stats_print`, which without these exports resolved to the real
//! jemalloc, loaded but serving nothing: `INFO memory` read
//! `allocator_allocated:28672` for a 60 MB dataset, `MEMORY PURGE` purged
//! an empty arena, and a block from jemalloc's `mallocx` handed to our
//! `free` would be reported as a foreign pointer. Every function of the
//! API is exported, each built on the C exports (so tracing, profiling and
//! the first-call path behave as for `malloc`):
//!
//! | export | here |
//! |---|---|
//! | `mallocx`, `rallocx` | `malloc`/`calloc`/`realloc`, or `memalign` plus a copy for `MALLOCX_ALIGN` beyond 16; `MALLOCX_ZERO` zeroes what is new; `MALLOCX_TCACHE`/`MALLOCX_ARENA` ignored |
//! | `xallocx` | never resizes: returns the usable size (callers test `>= size`) |
//! | `sallocx`, `dallocx`, `sdallocx` | `malloc_usable_size`, `free` |
//! | `nallocx` | the usable size of a block allocated and freed at once by the backend itself (not through the exports: nothing is recorded); 0 if it cannot be served |
//! | `mallctl`, `mallctlnametomib`, `mallctlbymib` | the names below; any other is `ENOENT`, as jemalloc answers for a name it does not know |
//! | `malloc_stats_print` | heapkit's figures, as text or (option `J`) JSON |
//!
//! `mallctl` names, from the backend's [`Stats`]:
//!
//! | name | type | value |
//! |---|---|---|
//! | `epoch` | `uint64_t` rw | a counter, bumped by a write (heapkit's figures are always current) |
//! | `config.stats` | `bool` r | true |
//! | `stats.allocated` | `size_t` r | bytes in live blocks (`live_bytes`) |
//! | `stats.active` | `size_t` r | the memory holding blocks, live or free (sizeclass: the blocks carved on its pages in use and the mappings of live large blocks); the others: live bytes rounded up to whole pages |
//! | `stats.resident` | `size_t` r | the process's resident anonymous bytes (not its code and libraries), at most `stats.mapped` |
//! | `stats.mapped` | `size_t` r | bytes heapkit has mapped (`mapped_bytes`) |
//! | `stats.retained` | `size_t` r | 0 (heapkit keeps no unmapped-but-reserved address space) |
//! | `arenas.narenas` | `unsigned` r | 1 |
//! | `arena.<i>.purge`, `arena.<i>.decay` | void | `malloc_trim(0)`; `<i>` is 0, 4096 (`MALLCTL_ARENAS_ALL`) or 1 (`arenas.narenas`, an older name for every arena) |
//! | `thread.tcache.flush` | void | nothing to do (accepted) |
//!
//! Errors follow jemalloc's manual: `EINVAL` for a value of the wrong size
//! (as much as fits is still read), `EPERM` for a write to a read-only
//! name or any value passed to a void one, `ENOENT` for an unknown name.
//! Nothing here allocates: names are parsed in place and text is built on
//! the stack.

use core::ffi::{c_char, c_int, c_uint, c_void, CStr};
use core::fmt::Write;
use core::mem::size_of;
use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use heapkit_core::{os, HeapAlloc, Stats};

use crate::backend::{self, with_backend};
use crate::export;
use crate::stack_text::StackText;

/// The low six bits of `flags`: log2 of the alignment (`MALLOCX_LG_ALIGN`).
const LG_ALIGN_MASK: c_int = 0x3f;
/// `MALLOCX_ZERO`.
const MALLOCX_ZERO: c_int = 0x40;
/// The alignment every block has anyway (the x86-64 ABI's, which every
/// backend honours).
const MIN_ALIGN: usize = 16;
/// `MALLCTL_ARENAS_ALL`: the arena index that means every arena.
const ARENAS_ALL: u64 = 4096;

/// The alignment `flags` ask for (1 when none).
#[inline]
fn align_of(flags: c_int) -> usize {
    let lg = (flags & LG_ALIGN_MASK) as u32;
    // Beyond 2^62 no block can be aligned: 0 makes every caller fail.
    1usize
        .checked_shl(lg)
        .filter(|a| *a <= 1 << 62)
        .unwrap_or(0)
}

/// `mallocx(size, flags)`: a block of at least `size` bytes aligned as
/// `flags` say, zeroed with `MALLOCX_ZERO`; null when out of memory.
///
/// # Safety
/// None beyond the C contract (jemalloc leaves `size == 0` undefined; here
/// it is served as 1 byte).
#[no_mangle]
pub unsafe extern "C" fn mallocx(size: usize, flags: c_int) -> *mut c_void {
    let size = size.max(1);
    let zero = flags & MALLOCX_ZERO != 0;
    let align = align_of(flags);
    // SAFETY: the exports' C contract holds (no pointer arguments).
    unsafe {
        if align == 0 {
            return ptr::null_mut();
        }
        if align <= MIN_ALIGN {
            return if zero {
                export::calloc(1, size)
            } else {
                export::malloc(size)
            };
        }
        let p = export::memalign(align, size);
        if zero && !p.is_null() {
            // SAFETY: p is a fresh block of at least `size` bytes.
            p.cast::<u8>().write_bytes(0, size);
        }
        p
    }
}

/// `rallocx(ptr, size, flags)`: `ptr` resized to `size` bytes, its
/// contents kept, aligned as `flags` say; with `MALLOCX_ZERO` the bytes
/// past the old usable size read as zero. Null (and `ptr` intact) when out
/// of memory.
///
/// # Safety
/// `ptr` is a live block of this library.
#[no_mangle]
pub unsafe extern "C" fn rallocx(ptr: *mut c_void, size: usize, flags: c_int) -> *mut c_void {
    let size = size.max(1);
    let align = align_of(flags);
    if align == 0 {
        return ptr::null_mut();
    }
    // SAFETY: ptr is a live block of ours (caller), so every export below
    // may be given it; `q` is the live block that replaces it.
    unsafe {
        let old_usable = export::malloc_usable_size(ptr);
        let q = if align <= MIN_ALIGN {
            export::realloc(ptr, size)
        } else if ptr as usize & (align - 1) == 0 && old_usable >= size && size >= old_usable / 2 {
            // Already aligned, big enough and at least half used: stays, as
            // `realloc` keeps such a block (`heapkit_core::realloc_by_copy`).
            ptr
        } else {
            let q = export::memalign(align, size);
            if !q.is_null() {
                ptr.cast::<u8>()
                    .copy_to_nonoverlapping(q.cast::<u8>(), old_usable.min(size));
                export::free(ptr);
            }
            q
        };
        if !q.is_null() && flags & MALLOCX_ZERO != 0 {
            let new_usable = export::malloc_usable_size(q);
            if new_usable > old_usable {
                // SAFETY: `old_usable..new_usable` lies inside `q`.
                q.cast::<u8>()
                    .add(old_usable)
                    .write_bytes(0, new_usable - old_usable);
            }
        }
        q
    }
}

/// `xallocx(ptr, size, extra, flags)`: resizes in place if it can and
/// returns the usable size. heapkit never resizes here (a `realloc` that
/// fits stays in place anyway), so this is the usable size, which callers
/// compare with `size` to learn whether the block is big enough.
///
/// # Safety
/// `ptr` is a live block of this library.
#[no_mangle]
pub unsafe extern "C" fn xallocx(
    ptr: *mut c_void,
    size: usize,
    extra: usize,
    flags: c_int,
) -> usize {
    let _ = (size, extra, flags);
    // SAFETY: caller guarantee.
    unsafe { export::malloc_usable_size(ptr) }
}

/// `sallocx(ptr, flags)`: the usable size of `ptr`.
///
/// # Safety
/// `ptr` is a live block of this library.
#[no_mangle]
pub unsafe extern "C" fn sallocx(ptr: *const c_void, flags: c_int) -> usize {
    let _ = flags;
    // SAFETY: caller guarantee.
    unsafe { export::malloc_usable_size(ptr.cast_mut()) }
}

/// `dallocx(ptr, flags)`: frees `ptr`.
///
/// # Safety
/// `ptr` is a live block of this library.
#[no_mangle]
pub unsafe extern "C" fn dallocx(ptr: *mut c_void, flags: c_int) {
    let _ = flags;
    // SAFETY: caller guarantee.
    unsafe { export::free(ptr) }
}

/// `sdallocx(ptr, size, flags)`: frees `ptr` (its size is not needed).
///
/// # Safety
/// `ptr` is a live block of this library.
#[no_mangle]
pub unsafe extern "C" fn sdallocx(ptr: *mut c_void, size: usize, flags: c_int) {
    let _ = (size, flags);
    // SAFETY: caller guarantee.
    unsafe { export::free(ptr) }
}

/// `nallocx(size, flags)`: the usable size `mallocx(size, flags)` would
/// return, or 0 if it would fail. Measured on a block the backend
/// allocates and frees at once (its fast paths: a pop and a push for the
/// size-class allocators; bump takes back its last block), outside the
/// exports, so a trace or profile does not see it.
#[no_mangle]
pub extern "C" fn nallocx(size: usize, flags: c_int) -> usize {
    let align = match align_of(flags) {
        0 => return 0,
        a => a.max(MIN_ALIGN),
    };
    let Ok(layout) = core::alloc::Layout::from_size_align(size.max(1), align) else {
        return 0;
    };
    with_backend!(|a| {
        let p = a.allocate(layout);
        if p.is_null() {
            0
        } else {
            // SAFETY: p is a live block of this backend, freed once.
            unsafe {
                let usable = a.usable_size(p);
                a.free(p);
                usable
            }
        }
    })
}

/// A `mallctl` name this library answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ctl {
    /// `epoch`.
    Epoch,
    /// `config.stats`.
    ConfigStats,
    /// `stats.<figure>`.
    Stat(Figure),
    /// `arenas.narenas`.
    NArenas,
    /// `arena.<i>.purge` and `arena.<i>.decay`.
    ArenaPurge,
    /// `thread.tcache.flush`.
    TcacheFlush,
}

/// The figures under `stats.`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Figure {
    Allocated,
    Active,
    Resident,
    Mapped,
    Retained,
}

impl Figure {
    /// Every figure, by its name under `stats.`.
    const ALL: [(&'static str, Figure); 5] = [
        ("allocated", Figure::Allocated),
        ("active", Figure::Active),
        ("resident", Figure::Resident),
        ("mapped", Figure::Mapped),
        ("retained", Figure::Retained),
    ];

    /// The figure `stats.<name>` names.
    fn named(name: &str) -> Option<Figure> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
    }

    /// This figure from a snapshot of the backend's counters.
    fn of(self, s: &Stats) -> usize {
        let page = os::page_size() as u64;
        let v = match self {
            Figure::Allocated => s.live_bytes,
            // The backend's count of the memory holding blocks where it
            // keeps one (sizeclass), else the live bytes in whole pages.
            Figure::Active if s.active_bytes > 0 => s.active_bytes.max(s.live_bytes),
            Figure::Active => s.live_bytes.div_ceil(page).saturating_mul(page),
            // Not `s.resident_bytes`, the whole RSS: the program's code and
            // libraries are no allocator's, and counting them made redis's
            // MEMORY DOCTOR warn of allocator RSS overhead (1.19 for a
            // 109 MB dataset).
            Figure::Resident => (os::anonymous_resident_bytes() as u64).min(s.mapped_bytes),
            Figure::Mapped => s.mapped_bytes,
            Figure::Retained => 0,
        };
        usize::try_from(v).unwrap_or(usize::MAX)
    }
}

/// The words of the names in [`Ctl`]: a MIB component is a word's index
/// here, or the arena number after `arena`.
const WORDS: [&str; 16] = [
    "epoch",
    "config",
    "stats",
    "allocated",
    "active",
    "resident",
    "mapped",
    "retained",
    "arenas",
    "narenas",
    "arena",
    "purge",
    "decay",
    "thread",
    "tcache",
    "flush",
];

/// One component of a name: a word, or a number (an arena index).
#[derive(Clone, Copy)]
enum Part<'a> {
    Word(&'a str),
    Number(u64),
}

/// Most components a name here has.
const MAX_PARTS: usize = 3;

/// The name `parts` spell, if this library answers it.
fn lookup(parts: &[Part<'_>]) -> Option<Ctl> {
    use Part::{Number, Word};
    Some(match *parts {
        [Word("epoch")] => Ctl::Epoch,
        [Word("config"), Word("stats")] => Ctl::ConfigStats,
        [Word("stats"), Word(figure)] => Ctl::Stat(Figure::named(figure)?),
        [Word("arenas"), Word("narenas")] => Ctl::NArenas,
        // Arena 1 (= `arenas.narenas`) is jemalloc's older name for every
        // arena, which redis's `MEMORY PURGE` still uses.
        [Word("arena"), Number(0 | 1 | ARENAS_ALL), Word("purge" | "decay")] => Ctl::ArenaPurge,
        [Word("thread"), Word("tcache"), Word("flush")] => Ctl::TcacheFlush,
        _ => return None,
    })
}

/// Splits a NUL-terminated name at its dots into `out`; the number of
/// components, or `None` for more than [`MAX_PARTS`] or a name that is not
/// UTF-8.
fn split<'a>(name: &'a CStr, out: &mut [Part<'a>; MAX_PARTS]) -> Option<usize> {
    let text = name.to_str().ok()?;
    let mut n = 0;
    for piece in text.split('.') {
        let slot = out.get_mut(n)?;
        *slot = match piece.parse::<u64>() {
            Ok(v) if !piece.is_empty() => Part::Number(v),
            _ => Part::Word(piece),
        };
        n += 1;
    }
    Some(n)
}

/// The number of the epoch (see `epoch`).
static EPOCH: AtomicU64 = AtomicU64::new(1);

/// jemalloc's `READ`: copies `value` to `oldp` if asked. A length other
/// than the value's copies what fits and fails with `EINVAL`.
///
/// # Safety
/// `oldp` and `oldlenp` are null or valid as `mallctl` requires.
unsafe fn read<T: Copy>(value: T, oldp: *mut c_void, oldlenp: *mut usize) -> c_int {
    if oldp.is_null() || oldlenp.is_null() {
        return 0;
    }
    // SAFETY: caller guarantee: oldlenp is readable and writable, oldp
    // writable for *oldlenp bytes.
    unsafe {
        let want = *oldlenp;
        let len = want.min(size_of::<T>());
        ptr::from_ref(&value)
            .cast::<u8>()
            .copy_to_nonoverlapping(oldp.cast::<u8>(), len);
        if want != size_of::<T>() {
            *oldlenp = len;
            return libc::EINVAL;
        }
    }
    0
}

/// Answers `ctl` as `mallctl` would.
///
/// # Safety
/// The pointers are null or valid as `mallctl` requires.
unsafe fn answer(
    ctl: Ctl,
    oldp: *mut c_void,
    oldlenp: *mut usize,
    newp: *mut c_void,
    newlen: usize,
) -> c_int {
    // SAFETY: forwarded caller guarantee (read and the newp read below).
    unsafe {
        match ctl {
            Ctl::Epoch => {
                if !newp.is_null() {
                    if newlen != size_of::<u64>() {
                        return libc::EINVAL;
                    }
                    EPOCH.fetch_add(1, Relaxed);
                }
                read(EPOCH.load(Relaxed), oldp, oldlenp)
            }
            Ctl::ArenaPurge | Ctl::TcacheFlush => {
                if !oldp.is_null() || !newp.is_null() {
                    return libc::EPERM;
                }
                if ctl == Ctl::ArenaPurge {
                    crate::introspect::malloc_trim(0);
                }
                0
            }
            _ if !newp.is_null() => libc::EPERM,
            Ctl::ConfigStats => read(true, oldp, oldlenp),
            Ctl::NArenas => read::<c_uint>(1, oldp, oldlenp),
            Ctl::Stat(figure) => {
                let stats = with_backend!(|a| a.stats());
                read::<usize>(figure.of(&stats), oldp, oldlenp)
            }
        }
    }
}

/// `mallctl(name, oldp, oldlenp, newp, newlen)`: reads or writes the value
/// `name` names (see the module docs for the names); 0 or an `errno` value.
///
/// # Safety
/// `name` is a NUL-terminated string; `oldp`/`oldlenp` null or valid for
/// `*oldlenp` bytes; `newp` null or valid for `newlen` bytes.
#[no_mangle]
pub unsafe extern "C" fn mallctl(
    name: *const c_char,
    oldp: *mut c_void,
    oldlenp: *mut usize,
    newp: *mut c_void,
    newlen: usize,
) -> c_int {
    if name.is_null() {
        return libc::ENOENT;
    }
    let mut parts = [Part::Word(""); MAX_PARTS];
    // SAFETY: caller guarantee: a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(name) };
    let Some(ctl) = split(name, &mut parts).and_then(|n| lookup(parts.get(..n)?)) else {
        return libc::ENOENT;
    };
    // SAFETY: forwarded caller guarantee.
    unsafe { answer(ctl, oldp, oldlenp, newp, newlen) }
}

/// `mallctlnametomib(name, mibp, miblenp)`: translates `name` into at
/// most `*miblenp` components (a word's index in `WORDS`, or the arena
/// number), and sets `*miblenp` to how many were written.
///
/// # Safety
/// `name` is a NUL-terminated string; `mibp` is valid for `*miblenp`
/// writes; `miblenp` valid.
#[no_mangle]
pub unsafe extern "C" fn mallctlnametomib(
    name: *const c_char,
    mibp: *mut usize,
    miblenp: *mut usize,
) -> c_int {
    if name.is_null() || mibp.is_null() || miblenp.is_null() {
        return libc::EINVAL;
    }
    let mut parts = [Part::Word(""); MAX_PARTS];
    // SAFETY: caller guarantee.
    let name = unsafe { CStr::from_ptr(name) };
    let Some(n) = split(name, &mut parts) else {
        return libc::ENOENT;
    };
    let Some(parts) = parts.get(..n) else {
        return libc::ENOENT;
    };
    if lookup(parts).is_none() {
        return libc::ENOENT;
    }
    // SAFETY: caller guarantee: *miblenp slots at mibp.
    unsafe {
        let room = *miblenp;
        let mut written = 0;
        for part in parts.iter().take(room) {
            let code = match *part {
                Part::Number(v) => v as usize,
                Part::Word(w) => WORDS.iter().position(|x| *x == w).unwrap_or(WORDS.len()),
            };
            *mibp.add(written) = code;
            written += 1;
        }
        *miblenp = written;
    }
    0
}

/// `mallctlbymib(mib, miblen, ...)`: `mallctl` for a name translated by
/// `mallctlnametomib` (its arena number may have been changed).
///
/// # Safety
/// `mib` valid for `miblen` reads; the rest as for `mallctl`.
#[no_mangle]
pub unsafe extern "C" fn mallctlbymib(
    mib: *const usize,
    miblen: usize,
    oldp: *mut c_void,
    oldlenp: *mut usize,
    newp: *mut c_void,
    newlen: usize,
) -> c_int {
    if mib.is_null() || miblen == 0 || miblen > MAX_PARTS {
        return libc::ENOENT;
    }
    let mut parts = [Part::Word(""); MAX_PARTS];
    for i in 0..miblen {
        // SAFETY: caller guarantee: miblen readable components.
        let code = unsafe { *mib.add(i) };
        let after_arena = i > 0 && matches!(parts.get(i - 1), Some(Part::Word("arena")));
        let part = if after_arena {
            Part::Number(code as u64)
        } else {
            match WORDS.get(code) {
                Some(w) => Part::Word(w),
                None => return libc::ENOENT,
            }
        };
        if let Some(slot) = parts.get_mut(i) {
            *slot = part;
        }
    }
    let Some(ctl) = parts.get(..miblen).and_then(lookup) else {
        return libc::ENOENT;
    };
    // SAFETY: forwarded caller guarantee.
    unsafe { answer(ctl, oldp, oldlenp, newp, newlen) }
}

/// jemalloc's `malloc_stats_print` callback type.
type WriteCb = Option<unsafe extern "C" fn(*mut c_void, *const c_char)>;

/// `malloc_stats_print(write_cb, cbopaque, opts)`: heapkit's figures, as
/// text or, with `J` in `opts`, as one JSON object, passed to `write_cb`
/// (or written to stderr without one).
///
/// # Safety
/// `write_cb` is null or callable with `cbopaque` and a NUL-terminated
/// string; `opts` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn malloc_stats_print(
    write_cb: WriteCb,
    cbopaque: *mut c_void,
    opts: *const c_char,
) {
    // SAFETY: caller guarantee.
    let json = !opts.is_null() && unsafe { CStr::from_ptr(opts) }.to_bytes().contains(&b'J');
    let stats = with_backend!(|a| a.stats());
    let backend = backend::name(backend::resolve());
    let version = env!("CARGO_PKG_VERSION");
    let mut text = StackText::<2048>::new();
    if json {
        let _ = write!(
            text,
            "{{\"heapkit\": {{\"version\": \"{version}\", \"backend\": \"{backend}\", \"stats\": {{"
        );
        for (i, (name, f)) in Figure::ALL.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(text, "{sep}\"{name}\": {}", f.of(&stats));
        }
        let _ = write!(text, "}}, \"counters\": {{");
        for (i, (name, v)) in Stats::FIELDS.iter().zip(stats.values()).enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(text, "{sep}\"{name}\": {v}");
        }
        let _ = writeln!(text, "}}}}}}");
    } else {
        let _ = writeln!(text, "___ Begin heapkit statistics ___");
        let _ = writeln!(text, "Version: \"{version}\"\nBackend: {backend}");
        let _ = write!(text, "Allocated:");
        for (i, (name, f)) in Figure::ALL.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            let _ = write!(text, "{sep}{name}: {}", f.of(&stats));
        }
        let _ = writeln!(text, "\nCounters: {stats}");
        let _ = writeln!(text, "___ End heapkit statistics ___");
    }
    match write_cb {
        // SAFETY: caller guarantee; the text is NUL-terminated.
        Some(cb) => unsafe { cb(cbopaque, text.nul_terminated()) },
        None => os::write_stderr(text.as_bytes()),
    }
}
