//! The rest of glibc's malloc API, over the selected backend: what a
//! program calls to look at or tune its heap.
//!
//! | export | heapkit backends | `system` | `jemalloc`, `mimalloc` |
//! |---|---|---|---|
//! | `mallinfo2`, `mallinfo` | from [`Stats`]: `arena` = bytes mapped, `uordblks` = live bytes, `fordblks` = the difference | glibc's own | from their statistics (live bytes where they count them) |
//! | `malloc_trim` | [`HeapAlloc::trim`]: 1 if memory went back | glibc's own | purge now (1) |
//! | `mallopt` | accepted and ignored (1), as jemalloc does | glibc's own | accepted and ignored |
//! | `malloc_stats` | glibc's layout on stderr, plus heapkit's counters | glibc's own | the same as heapkit's |
//! | `malloc_info` | glibc's XML layout (totals only) | glibc's own | the same as heapkit's |
//!
//! Without these exports a program that called `mallinfo2()` under
//! `LD_PRELOAD` read glibc's idle arena (zeros), and `malloc_trim(0)`
//! trimmed an arena holding nothing. glibc's own versions, for `system`,
//! are found in libc.so.6's symbol table when first called
//! ([`crate::glibc::GlibcFn`], shared with the `system` backend).

use core::ffi::c_int;
use core::fmt::Write;

use heapkit_core::{os, HeapAlloc, Stats};

use crate::backend::{self, with_backend};
use crate::glibc::GlibcFn;
use crate::stack_text::StackText;

/// glibc's `mallinfo2` layout (all `size_t`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Mallinfo2 {
    /// Bytes the allocator holds from the OS (non-mmapped, in glibc).
    pub arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    /// Bytes in mmapped chunks (glibc).
    pub hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    /// Bytes in use.
    pub uordblks: usize,
    /// Bytes free.
    pub fordblks: usize,
    keepcost: usize,
}

/// glibc's old `mallinfo` layout (all `int`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Mallinfo {
    arena: c_int,
    ordblks: c_int,
    smblks: c_int,
    hblks: c_int,
    hblkhd: c_int,
    usmblks: c_int,
    fsmblks: c_int,
    uordblks: c_int,
    fordblks: c_int,
    keepcost: c_int,
}

static GLIBC_MALLINFO2: GlibcFn = GlibcFn::new(c"mallinfo2");
static GLIBC_MALLOC_TRIM: GlibcFn = GlibcFn::new(c"malloc_trim");
static GLIBC_MALLOPT: GlibcFn = GlibcFn::new(c"mallopt");
static GLIBC_MALLOC_STATS: GlibcFn = GlibcFn::new(c"malloc_stats");
static GLIBC_MALLOC_INFO: GlibcFn = GlibcFn::new(c"malloc_info");

fn is_system() -> bool {
    backend::resolve() & backend::ID_MASK == backend::SYSTEM
}

/// glibc's own `mallinfo2` (the `system` backend's statistics too).
pub fn glibc_mallinfo2() -> Option<Mallinfo2> {
    let f = GLIBC_MALLINFO2.get();
    if f.is_null() {
        return None;
    }
    // SAFETY: the symbol is glibc's `struct mallinfo2 mallinfo2(void)`.
    let f: extern "C" fn() -> Mallinfo2 = unsafe { core::mem::transmute(f) };
    Some(f())
}

/// `mallinfo2` from heapkit's counters.
fn from_stats(s: &Stats) -> Mallinfo2 {
    let mapped = s.mapped_bytes as usize;
    let live = s.live_bytes as usize;
    Mallinfo2 {
        arena: mapped,
        uordblks: live,
        fordblks: mapped.saturating_sub(live),
        ..Mallinfo2::default()
    }
}

/// `mallinfo2()`.
#[no_mangle]
pub extern "C" fn mallinfo2() -> Mallinfo2 {
    if is_system() {
        return glibc_mallinfo2().unwrap_or_default();
    }
    from_stats(&with_backend!(|a| a.stats()))
}

/// `mallinfo()`: `mallinfo2` in `int`s (saturated, where glibc wraps).
#[no_mangle]
pub extern "C" fn mallinfo() -> Mallinfo {
    let m = mallinfo2();
    let int = |v: usize| c_int::try_from(v).unwrap_or(c_int::MAX);
    Mallinfo {
        arena: int(m.arena),
        ordblks: int(m.ordblks),
        smblks: int(m.smblks),
        hblks: int(m.hblks),
        hblkhd: int(m.hblkhd),
        usmblks: int(m.usmblks),
        fsmblks: int(m.fsmblks),
        uordblks: int(m.uordblks),
        fordblks: int(m.fordblks),
        keepcost: int(m.keepcost),
    }
}

/// `malloc_trim(pad)`: gives free memory back now; 1 if any went back.
#[no_mangle]
pub extern "C" fn malloc_trim(pad: usize) -> c_int {
    if is_system() {
        let f = GLIBC_MALLOC_TRIM.get();
        if f.is_null() {
            return 0;
        }
        // SAFETY: glibc's `int malloc_trim(size_t)`.
        let f: extern "C" fn(usize) -> c_int = unsafe { core::mem::transmute(f) };
        return f(pad);
    }
    c_int::from(with_backend!(|a| HeapAlloc::trim(a)))
}

/// `mallopt(param, value)`: glibc's for `system`; accepted and ignored (1)
/// otherwise, as jemalloc does: heapkit's knobs are its environment
/// variables.
#[no_mangle]
pub extern "C" fn mallopt(param: c_int, value: c_int) -> c_int {
    if is_system() {
        let f = GLIBC_MALLOPT.get();
        if f.is_null() {
            return 0;
        }
        // SAFETY: glibc's `int mallopt(int, int)`.
        let f: extern "C" fn(c_int, c_int) -> c_int = unsafe { core::mem::transmute(f) };
        return f(param, value);
    }
    1
}

/// `malloc_stats()`: glibc's layout on stderr, then heapkit's counters.
#[no_mangle]
pub extern "C" fn malloc_stats() {
    if is_system() {
        let f = GLIBC_MALLOC_STATS.get();
        if !f.is_null() {
            // SAFETY: glibc's `void malloc_stats(void)`.
            let f: extern "C" fn() = unsafe { core::mem::transmute(f) };
            f();
        }
        return;
    }
    let s = with_backend!(|a| a.stats());
    let mut text = StackText::<2048>::new();
    for title in ["Arena 0:", "Total (incl. mmap):"] {
        let _ = writeln!(text, "{title}");
        let _ = writeln!(text, "system bytes     = {:10}", s.mapped_bytes);
        let _ = writeln!(text, "in use bytes     = {:10}", s.live_bytes);
    }
    let _ = writeln!(text, "max mmap regions = {:10}", 0);
    let _ = writeln!(text, "max mmap bytes   = {:10}", s.peak_mapped_bytes);
    let _ = writeln!(
        text,
        "heapkit: backend={} {s}",
        backend::name(backend::resolve())
    );
    os::write_stderr(text.as_bytes());
}

/// `malloc_info(options, stream)`: glibc's XML layout, with totals only
/// (heapkit has no arenas or bins to list). `options` must be 0.
///
/// # Safety
/// `stream` must be a valid, open `FILE *`.
#[no_mangle]
pub unsafe extern "C" fn malloc_info(options: c_int, stream: *mut libc::FILE) -> c_int {
    if is_system() {
        let f = GLIBC_MALLOC_INFO.get();
        if f.is_null() {
            return -1;
        }
        // SAFETY: glibc's `int malloc_info(int, FILE *)`.
        let f: unsafe extern "C" fn(c_int, *mut libc::FILE) -> c_int =
            unsafe { core::mem::transmute(f) };
        // SAFETY: forwarded caller guarantee.
        return unsafe { f(options, stream) };
    }
    if options != 0 {
        os::set_errno(libc::EINVAL);
        return -1;
    }
    let s = with_backend!(|a| a.stats());
    let free = s.mapped_bytes.saturating_sub(s.live_bytes);
    let mut xml = StackText::<1536>::new();
    let _ = write!(
        xml,
        "<malloc version=\"1\">\n\
         <heap nr=\"0\">\n<sizes>\n</sizes>\n\
         <total type=\"fast\" count=\"0\" size=\"0\"/>\n\
         <total type=\"rest\" count=\"0\" size=\"{free}\"/>\n\
         <system type=\"current\" size=\"{mapped}\"/>\n\
         <system type=\"max\" size=\"{peak}\"/>\n\
         <aspace type=\"total\" size=\"{mapped}\"/>\n\
         <aspace type=\"mprotect\" size=\"{mapped}\"/>\n\
         </heap>\n\
         <total type=\"fast\" count=\"0\" size=\"0\"/>\n\
         <total type=\"rest\" count=\"0\" size=\"{free}\"/>\n\
         <total type=\"mmap\" count=\"0\" size=\"0\"/>\n\
         <system type=\"current\" size=\"{mapped}\"/>\n\
         <system type=\"max\" size=\"{peak}\"/>\n\
         <aspace type=\"total\" size=\"{mapped}\"/>\n\
         <aspace type=\"mprotect\" size=\"{mapped}\"/>\n\
         </malloc>\n",
        mapped = s.mapped_bytes,
        peak = s.peak_mapped_bytes,
    );
    // SAFETY: a NUL-terminated string (under 1 KiB of XML: nothing is cut);
    // stream is valid (caller).
    let rc = unsafe { libc::fputs(xml.nul_terminated(), stream) };
    if rc < 0 {
        -1
    } else {
        0
    }
}
