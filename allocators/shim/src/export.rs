//! The exported C malloc API: every function glibc's malloc exports that a
//! program allocates or frees through.
//!
//! Each export is one dispatch ([`with_backend!`]) into the matching
//! [`heapkit_core::capi`] function, which holds glibc's edge-case semantics
//! (`malloc(0)`, `realloc(p, 0)`, overflow, `EINVAL`, `errno`) once for
//! every backend, peers included. Anything unusual (the first call, before
//! the backend is chosen; a recorded process) takes the export's twin in
//! [`cold`], out of line:
//!
//! ```text
//! malloc(n) ─► SELECTED == SIZECLASS ─► capi::malloc(&SIZECLASS_HEAP, n) ─► SizeClass::allocate (inlined)
//!   └─ else ─► any::malloc ─► match SELECTED ─ id ─► capi::malloc(&Backend, n) ─► Backend::allocate
//!                 ├─ id + SAMPLED ─► sampled::malloc::<Backend> ─► the same, then a countdown
//!                 ├─ id + TRACED ─► traced::malloc::<Backend> ─► the same, then the record
//!                 └─ UNRESOLVED (or any other call recorded) ─► cold::malloc ─► resolve, dispatch, record
//! ```
//!
//! The default backend's `malloc`, `calloc`, `realloc` and `free` are
//! inlined behind one byte compare; the others, and every other export, go
//! through the dispatch's jump table (hardened modes, bump and the peers
//! out of line, see [`crate::backend::OutOfLine`]).
//!
//! Per call that is one relaxed byte load and one jump: no thread-local
//! access of the shim's own, no atomic read-modify-write and no `errno`
//! traffic (heapkit's allocators keep `errno` in the system calls of their
//! slow paths, see `heapkit_core::os`).
//!
//! `malloc_trim`, `mallopt`, `mallinfo`/`mallinfo2`, `malloc_stats` and
//! `malloc_info` are in [`crate::introspect`], C++'s `operator new` and
//! `operator delete` in [`crate::cxx`]. glibc's `__libc_malloc` family,
//! which some programs call by name, is exported too (forwarding to the
//! exports above), so that every block of the process is heapkit's; the
//! `system` backend reaches glibc's own through its symbol table instead
//! (`crate::system`).
//!
//! # Safety (for every export)
//!
//! The C contract: pointer arguments are null or blocks returned by this
//! library's allocation functions and not yet freed. Since the backend is
//! fixed before the first block is handed out, every such block belongs to
//! the selected backend, which is what the `capi` functions require.

use core::ffi::{c_int, c_void};

use heapkit_core::capi;

use crate::backend::{with_backend, DEFAULT, SELECTED, SIZECLASS, SIZECLASS_HEAP};

/// True when the default backend (sizeclass, plain) is selected and
/// nothing records: the four hot exports then run its fast path inline,
/// and every other choice takes the full dispatch in [`any`]. One byte
/// compare instead of the dispatch's jump table (bounds check, table load,
/// indirect jump: 9 of the 41 instructions a C `malloc` took in callgrind).
#[inline(always)]
fn default_selected() -> bool {
    SELECTED.load(core::sync::atomic::Ordering::Relaxed) == SIZECLASS
}
const _: () = assert!(DEFAULT == SIZECLASS, "default_selected inlines sizeclass");

/// The four hot exports for every backend but the default one, and for
/// recorded processes: the full dispatch, out of line so that its arms do
/// not widen the exports' own prologues.
mod any {
    use core::ffi::c_void;

    use heapkit_core::capi;

    use super::{cold, sampled, traced};
    use crate::backend::with_backend;

    #[inline(never)]
    pub(super) fn malloc(size: usize) -> *mut c_void {
        with_backend!(
            |a| capi::malloc(a, size),
            sampled |a| sampled::malloc(a, size),
            traced |a| traced::malloc(a, size),
            else cold::malloc(size)
        )
    }

    #[inline(never)]
    pub(super) fn calloc(n: usize, size: usize) -> *mut c_void {
        with_backend!(
            |a| capi::calloc(a, n, size),
            sampled |a| sampled::calloc(a, n, size),
            traced |a| traced::calloc(a, n, size),
            else cold::calloc(n, size)
        )
    }

    /// # Safety
    /// As for `free`.
    #[inline(never)]
    pub(super) unsafe fn free(ptr: *mut c_void) {
        // SAFETY: ptr is null or a live block of the selected backend (C
        // contract).
        unsafe {
            with_backend!(
                |a| capi::free(a, ptr),
                sampled |a| sampled::free(a, ptr),
                traced |a| traced::free(a, ptr),
                else cold::free(ptr)
            )
        }
    }

    /// # Safety
    /// As for `realloc`.
    #[inline(never)]
    pub(super) unsafe fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
        // SAFETY: ptr is null or a live block of the selected backend (C
        // contract).
        unsafe {
            with_backend!(
                |a| capi::realloc(a, ptr, size),
                sampled |a| sampled::realloc(a, ptr, size),
                traced |a| traced::realloc(a, ptr, size),
                else cold::realloc(ptr, size)
            )
        }
    }
}

/// `malloc(size)`.
///
/// # Safety
/// See the module docs.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    if default_selected() {
        return capi::malloc(&SIZECLASS_HEAP, size);
    }
    any::malloc(size)
}

/// `calloc(n, size)`.
///
/// # Safety
/// See the module docs.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    if default_selected() {
        return capi::calloc(&SIZECLASS_HEAP, n, size);
    }
    any::calloc(n, size)
}

/// `free(ptr)`.
///
/// # Safety
/// See the module docs.
#[no_mangle]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    // SAFETY: ptr is null or a live block of the selected backend (C contract).
    unsafe {
        if default_selected() {
            return capi::free(&SIZECLASS_HEAP, ptr);
        }
        any::free(ptr)
    }
}

/// `cfree(ptr)`: the obsolete alias of `free`.
///
/// # Safety
/// See the module docs.
#[no_mangle]
pub unsafe extern "C" fn cfree(ptr: *mut c_void) {
    // SAFETY: forwarded C contract.
    unsafe { free(ptr) }
}

/// `realloc(ptr, size)`.
///
/// # Safety
/// See the module docs.
#[no_mangle]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: ptr is null or a live block of the selected backend (C contract).
    unsafe {
        if default_selected() {
            return capi::realloc(&SIZECLASS_HEAP, ptr, size);
        }
        any::realloc(ptr, size)
    }
}

/// `reallocarray(ptr, n, size)`.
///
/// # Safety
/// See the module docs.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, n: usize, size: usize) -> *mut c_void {
    // SAFETY: ptr is null or a live block of the selected backend (C contract).
    unsafe {
        with_backend!(|a| capi::reallocarray(a, ptr, n, size), else cold::reallocarray(ptr, n, size))
    }
}

/// `posix_memalign(out, align, size)`.
///
/// # Safety
/// See the module docs; `out` must be valid for a pointer write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    // SAFETY: out is writable (C contract).
    unsafe {
        with_backend!(|a| capi::posix_memalign(a, out, align, size), else cold::posix_memalign(out, align, size))
    }
}

/// `aligned_alloc(align, size)`.
///
/// # Safety
/// See the module docs.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    with_backend!(|a| capi::aligned_alloc(a, align, size), else cold::aligned_alloc(align, size))
}

/// `memalign(align, size)`.
///
/// # Safety
/// See the module docs.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    with_backend!(|a| capi::memalign(a, align, size), else cold::memalign(align, size))
}

/// `valloc(size)`.
///
/// # Safety
/// See the module docs.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    with_backend!(|a| capi::valloc(a, size), else cold::valloc(size))
}

/// `pvalloc(size)`.
///
/// # Safety
/// See the module docs.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    with_backend!(|a| capi::pvalloc(a, size), else cold::pvalloc(size))
}

/// glibc's internal names of the allocation functions (`__libc_malloc`,
/// ...), which glibc exports and some programs call directly: each is the
/// export of the same C name without the prefix.
macro_rules! libc_aliases {
    ($($alias:ident => $target:ident ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)*) => {$(
        #[doc = concat!("`", stringify!($alias), "`: [`", stringify!($target), "`] under glibc's internal name.")]
        ///
        /// # Safety
        /// See the module docs.
        #[no_mangle]
        pub unsafe extern "C" fn $alias($($arg: $ty),*) $(-> $ret)? {
            // SAFETY: forwarded C contract.
            unsafe { $target($($arg),*) }
        }
    )*};
}

libc_aliases! {
    __libc_malloc => malloc(size: usize) -> *mut c_void;
    __libc_calloc => calloc(n: usize, size: usize) -> *mut c_void;
    __libc_realloc => realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
    __libc_free => free(ptr: *mut c_void);
    __libc_memalign => memalign(align: usize, size: usize) -> *mut c_void;
    __libc_valloc => valloc(size: usize) -> *mut c_void;
    __libc_pvalloc => pvalloc(size: usize) -> *mut c_void;
}

/// `malloc_usable_size(ptr)`.
///
/// # Safety
/// See the module docs.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> usize {
    // SAFETY: ptr is null or a live block of the selected backend (C contract).
    unsafe {
        with_backend!(|a| capi::malloc_usable_size(a, ptr), else cold::malloc_usable_size(ptr))
    }
}

/// The exports' twins for a sampled heap profile (`SAMPLED` in the
/// selected byte): one per backend (generic), each the backend's fast path
/// inlined as in the export, plus the recorder's inline part, which calls
/// the recorder only for a sample. Out of line (the export jumps here) so
/// that the exports' own fast paths keep their registers and code.
mod sampled {
    use core::ffi::c_void;

    use heapkit_core::capi;
    use heapkit_core::HeapAlloc;
    use heapkit_trace::record;

    #[inline(never)]
    pub(super) fn malloc<A: HeapAlloc>(a: &A, size: usize) -> *mut c_void {
        let p = capi::malloc(a, size);
        record::sampled_alloc(p.cast(), size, 0, false);
        p
    }

    #[inline(never)]
    pub(super) fn calloc<A: HeapAlloc>(a: &A, n: usize, size: usize) -> *mut c_void {
        let p = capi::calloc(a, n, size);
        // An overflowing n * size fails (null result), which records nothing.
        record::sampled_alloc(p.cast(), n.wrapping_mul(size), 0, true);
        p
    }

    /// # Safety
    /// As for `free`, with `a` the selected backend.
    #[inline(never)]
    pub(super) unsafe fn free<A: HeapAlloc>(a: &A, ptr: *mut c_void) {
        // Before the backend frees it (another thread may get it).
        record::sampled_free(ptr.cast());
        // SAFETY: ptr is null or a live block of `a`, the selected backend.
        unsafe { capi::free(a, ptr) }
    }

    /// # Safety
    /// As for `realloc`, with `a` the selected backend.
    #[inline(never)]
    pub(super) unsafe fn realloc<A: HeapAlloc>(
        a: &A,
        ptr: *mut c_void,
        size: usize,
    ) -> *mut c_void {
        if record::sampled_may_hold(ptr.cast()) {
            // Perhaps a sampled block: the recording path ends it.
            // SAFETY: as for this function.
            return unsafe { super::cold::realloc(ptr, size) };
        }
        // A sampled profile sees a realloc as a new allocation.
        // SAFETY: ptr is null or a live block of `a`, the selected backend.
        let p = unsafe { capi::realloc(a, ptr, size) };
        record::sampled_alloc(p.cast(), size, 0, false);
        p
    }
}

/// The exports' twins for a recording process (`TRACED`: `HEAPKIT_TRACE`,
/// or a heap profile of every allocation), one per backend (generic): the
/// backend's fast path inlined as in the export, then the record. The
/// generic twins in [`cold`] pay a second dispatch and a call on each
/// call: a fifth of CPython's time with the recorder doing nothing.
mod traced {
    use core::ffi::c_void;

    use heapkit_core::capi;
    use heapkit_core::HeapAlloc;
    use heapkit_trace::record;

    #[inline(never)]
    pub(super) fn malloc<A: HeapAlloc>(a: &A, size: usize) -> *mut c_void {
        let p = capi::malloc(a, size);
        if record::enabled() {
            record::on_alloc(p.cast(), size, 0, false);
        }
        p
    }

    #[inline(never)]
    pub(super) fn calloc<A: HeapAlloc>(a: &A, n: usize, size: usize) -> *mut c_void {
        let p = capi::calloc(a, n, size);
        if record::enabled() {
            // An overflowing n * size fails (null result), which records nothing.
            record::on_alloc(p.cast(), n.wrapping_mul(size), 0, true);
        }
        p
    }

    /// # Safety
    /// As for `free`, with `a` the selected backend.
    #[inline(never)]
    pub(super) unsafe fn free<A: HeapAlloc>(a: &A, ptr: *mut c_void) {
        // Recorded before the block is released (another thread may get it).
        if record::enabled() {
            record::on_free(ptr.cast());
        }
        // SAFETY: ptr is null or a live block of `a`, the selected backend.
        unsafe { capi::free(a, ptr) }
    }

    /// # Safety
    /// As for `realloc`, with `a` the selected backend.
    #[inline(never)]
    pub(super) unsafe fn realloc<A: HeapAlloc>(
        a: &A,
        ptr: *mut c_void,
        size: usize,
    ) -> *mut c_void {
        // SAFETY: ptr is null or a live block of `a`, the selected backend.
        let p = unsafe { capi::realloc(a, ptr, size) };
        if record::enabled() {
            record::on_realloc(ptr.cast(), p.cast(), size);
        }
        p
    }
}

/// The exports' out-of-line twins, for every call that finds [`SELECTED`]
/// not a plain backend id and has no twin in [`sampled`] or [`traced`]: the
/// first calls (from the dynamic loader, before the constructor chose a
/// backend) and, in a recording process, the rarer entries (`memalign`,
/// `posix_memalign`, ...), which they record around the dispatch. Not
/// `#[cold]`: for a recording process some are on its hot path (cold code
/// is optimised for size, which cost a sampled profile about 5% more);
/// `#[inline(never)]` keeps them out of the exports.
///
/// [`SELECTED`]: crate::backend::SELECTED
mod cold {
    use core::ffi::{c_int, c_void};

    use heapkit_core::capi;
    use heapkit_trace::record;

    use crate::backend::with_backend;

    // The four with a traced twin: resolve, then that twin (which records
    // only when the recorder runs).

    #[inline(never)]
    pub(super) fn malloc(size: usize) -> *mut c_void {
        with_backend!(|a| super::traced::malloc(a, size))
    }

    #[inline(never)]
    pub(super) fn calloc(n: usize, size: usize) -> *mut c_void {
        with_backend!(|a| super::traced::calloc(a, n, size))
    }

    /// # Safety
    /// As for `free`.
    #[inline(never)]
    pub(super) unsafe fn free(ptr: *mut c_void) {
        // SAFETY: ptr is null or a live block of the selected backend.
        with_backend!(|a| unsafe { super::traced::free(a, ptr) })
    }

    /// # Safety
    /// As for `realloc`.
    #[inline(never)]
    pub(super) unsafe fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
        // SAFETY: ptr is null or a live block of the selected backend.
        with_backend!(|a| unsafe { super::traced::realloc(a, ptr, size) })
    }

    /// # Safety
    /// As for `reallocarray`.
    #[inline(never)]
    pub(super) unsafe fn reallocarray(ptr: *mut c_void, n: usize, size: usize) -> *mut c_void {
        // SAFETY: ptr is null or a live block of the selected backend.
        let p = with_backend!(|a| unsafe { capi::reallocarray(a, ptr, n, size) });
        if record::enabled() {
            // An overflowing n * size fails (null result), which records nothing.
            record::on_realloc(ptr.cast(), p.cast(), n.saturating_mul(size));
        }
        p
    }

    /// # Safety
    /// As for `posix_memalign`.
    #[inline(never)]
    pub(super) unsafe fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
        // SAFETY: out is writable (C contract).
        let rc = with_backend!(|a| unsafe { capi::posix_memalign(a, out, align, size) });
        if rc == 0 && record::enabled() {
            // SAFETY: on success the backend wrote a pointer to *out.
            record::on_alloc(unsafe { *out }.cast(), size, align, false);
        }
        rc
    }

    #[inline(never)]
    pub(super) fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
        let p = with_backend!(|a| capi::aligned_alloc(a, align, size));
        if record::enabled() {
            record::on_alloc(p.cast(), size, align, false);
        }
        p
    }

    #[inline(never)]
    pub(super) fn memalign(align: usize, size: usize) -> *mut c_void {
        let p = with_backend!(|a| capi::memalign(a, align, size));
        if record::enabled() {
            record::on_alloc(p.cast(), size, align, false);
        }
        p
    }

    #[inline(never)]
    pub(super) fn valloc(size: usize) -> *mut c_void {
        let p = with_backend!(|a| capi::valloc(a, size));
        if record::enabled() {
            record::on_alloc(p.cast(), size, heapkit_core::os::page_size(), false);
        }
        p
    }

    /// # Safety
    /// As for `malloc_usable_size`.
    #[inline(never)]
    pub(super) unsafe fn malloc_usable_size(ptr: *mut c_void) -> usize {
        // SAFETY: ptr is null or a live block of the selected backend.
        with_backend!(|a| unsafe { capi::malloc_usable_size(a, ptr) })
    }

    #[inline(never)]
    pub(super) fn pvalloc(size: usize) -> *mut c_void {
        let p = with_backend!(|a| capi::pvalloc(a, size));
        if record::enabled() {
            let page = heapkit_core::os::page_size();
            record::on_alloc(p.cast(), size.div_ceil(page).max(1) * page, page, false);
        }
        p
    }
}
