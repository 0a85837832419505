//! Which allocator serves the process: chosen once, from `HEAPKIT_ALLOC`.
//!
//! The choice is a single byte, [`SELECTED`], that every exported function
//! reads and `match`es through [`with_backend!`]. Each arm names a `static`
//! of a concrete type, so the backend's code is inlined into the export (no
//! indirect call) and every backend pays the same price: one relaxed load
//! and one jump-table branch, peers included. The same byte carries the
//! recorder's on/off bits ([`TRACED`], [`SAMPLED`]), so recording costs
//! an untraced program nothing.
//!
//! The byte starts as [`UNRESOLVED`]. Whoever runs first resolves it: the
//! first `malloc` (which may come from the dynamic loader, before any
//! constructor) or the library's `.init_array` constructor. Resolution only
//! reads the environment with `getenv`, which neither allocates nor locks,
//! so it is safe from inside the loader and re-entrantly. Two threads that
//! race to resolve compute the same answer. An unknown value prints one line
//! listing the accepted names and ends the process with status 2, before it
//! can run.
//!
//! `HEAPKIT_HARDEN=1` selects the hardened twin of the named backend
//! (`sizeclass`, `slab` and `pool` have one; asking it of another backend
//! is refused with one line, like an unknown name).
//!
//! Adding a backend: a constant below with its `_SAMPLED` and `_TRACED`
//! twins, a line in [`BACKENDS`], and its arm in each form of
//! [`dispatch!`] (one in the first, three in the second).

use core::alloc::Layout;
use core::fmt::Write;
use core::sync::atomic::{AtomicU8, Ordering::Relaxed};

use heapkit_core::{HeapAlloc, Stats};

use heapkit_core::os;

use crate::stack_text::StackText;

/// Not chosen yet.
pub const UNRESOLVED: u8 = 0;
/// heapkit's thread-caching size-class allocator (`sizeclass`).
pub const SIZECLASS: u8 = 1;
/// heapkit's slab allocator (`slab`).
pub const SLAB: u8 = 2;
/// heapkit's segregated free-list pools (`pool`).
pub const POOL: u8 = 3;
/// heapkit's bump allocator (`bump`; never reuses memory).
pub const BUMP: u8 = 4;
/// glibc malloc (`system`).
pub const SYSTEM: u8 = 5;
/// jemalloc (`jemalloc`; with the `peers` feature).
#[cfg(feature = "peers")]
pub const JEMALLOC: u8 = 6;
/// mimalloc (`mimalloc`; with the `peers` feature).
#[cfg(feature = "peers")]
pub const MIMALLOC: u8 = 7;
/// `sizeclass` in hardened mode (`HEAPKIT_HARDEN=1`).
pub const SIZECLASS_HARDENED: u8 = 8;
/// `slab` in hardened mode (`HEAPKIT_HARDEN=1`).
pub const SLAB_HARDENED: u8 = 9;
/// `pool` in hardened mode (`HEAPKIT_HARDEN=1`).
pub const POOL_HARDENED: u8 = 10;

/// Each backend's id with [`SAMPLED`] set: the sampled arms of [`dispatch!`].
pub const SIZECLASS_SAMPLED: u8 = SIZECLASS | SAMPLED;
/// See [`SIZECLASS_SAMPLED`].
pub const SLAB_SAMPLED: u8 = SLAB | SAMPLED;
/// See [`SIZECLASS_SAMPLED`].
pub const POOL_SAMPLED: u8 = POOL | SAMPLED;
/// See [`SIZECLASS_SAMPLED`].
pub const BUMP_SAMPLED: u8 = BUMP | SAMPLED;
/// See [`SIZECLASS_SAMPLED`].
pub const SYSTEM_SAMPLED: u8 = SYSTEM | SAMPLED;
/// See [`SIZECLASS_SAMPLED`].
#[cfg(feature = "peers")]
pub const JEMALLOC_SAMPLED: u8 = JEMALLOC | SAMPLED;
/// See [`SIZECLASS_SAMPLED`].
#[cfg(feature = "peers")]
pub const MIMALLOC_SAMPLED: u8 = MIMALLOC | SAMPLED;
/// See [`SIZECLASS_SAMPLED`].
pub const SIZECLASS_HARDENED_SAMPLED: u8 = SIZECLASS_HARDENED | SAMPLED;
/// See [`SIZECLASS_SAMPLED`].
pub const SLAB_HARDENED_SAMPLED: u8 = SLAB_HARDENED | SAMPLED;
/// See [`SIZECLASS_SAMPLED`].
pub const POOL_HARDENED_SAMPLED: u8 = POOL_HARDENED | SAMPLED;

/// Each backend's id with [`TRACED`] set: the traced arms of [`dispatch!`].
pub const SIZECLASS_TRACED: u8 = SIZECLASS | TRACED;
/// See [`SIZECLASS_TRACED`].
pub const SLAB_TRACED: u8 = SLAB | TRACED;
/// See [`SIZECLASS_TRACED`].
pub const POOL_TRACED: u8 = POOL | TRACED;
/// See [`SIZECLASS_TRACED`].
pub const BUMP_TRACED: u8 = BUMP | TRACED;
/// See [`SIZECLASS_TRACED`].
pub const SYSTEM_TRACED: u8 = SYSTEM | TRACED;
/// See [`SIZECLASS_TRACED`].
#[cfg(feature = "peers")]
pub const JEMALLOC_TRACED: u8 = JEMALLOC | TRACED;
/// See [`SIZECLASS_TRACED`].
#[cfg(feature = "peers")]
pub const MIMALLOC_TRACED: u8 = MIMALLOC | TRACED;
/// See [`SIZECLASS_TRACED`].
pub const SIZECLASS_HARDENED_TRACED: u8 = SIZECLASS_HARDENED | TRACED;
/// See [`SIZECLASS_TRACED`].
pub const SLAB_HARDENED_TRACED: u8 = SLAB_HARDENED | TRACED;
/// See [`SIZECLASS_TRACED`].
pub const POOL_HARDENED_TRACED: u8 = POOL_HARDENED | TRACED;

/// Every accepted `HEAPKIT_ALLOC` value and its id, heapkit's own first.
pub const BACKENDS: &[(&str, u8)] = &[
    ("sizeclass", SIZECLASS),
    ("slab", SLAB),
    ("pool", POOL),
    ("bump", BUMP),
    ("system", SYSTEM),
    #[cfg(feature = "peers")]
    ("jemalloc", JEMALLOC),
    #[cfg(feature = "peers")]
    ("mimalloc", MIMALLOC),
];

/// The backend used when `HEAPKIT_ALLOC` is unset or empty.
pub const DEFAULT: u8 = SIZECLASS;

/// Each backend with a hardened mode, and that mode's id
/// (`HEAPKIT_HARDEN=1` selects it).
const HARDENED: &[(u8, u8, &str)] = &[
    (SIZECLASS, SIZECLASS_HARDENED, "sizeclass (hardened)"),
    (SLAB, SLAB_HARDENED, "slab (hardened)"),
    (POOL, POOL_HARDENED, "pool (hardened)"),
];

/// The backends, as `const`-initialised statics. The hardened modes,
/// bump and the peers are reached through [`OutOfLine`] (see there).
pub static SIZECLASS_HEAP: heapkit_sizeclass::SizeClass<heapkit_sizeclass::Fast> =
    heapkit_sizeclass::SizeClass::fast();
/// See [`SIZECLASS_HEAP`].
pub static SIZECLASS_HARDENED_HEAP: OutOfLine<
    heapkit_sizeclass::SizeClass<heapkit_sizeclass::Hardened>,
> = OutOfLine(heapkit_sizeclass::SizeClass::hardened());
/// See [`SIZECLASS_HEAP`].
pub static SLAB_HEAP: heapkit_slab::Slab<heapkit_slab::Fast> = heapkit_slab::Slab::fast();
/// See [`SIZECLASS_HEAP`].
pub static SLAB_HARDENED_HEAP: OutOfLine<heapkit_slab::Slab<heapkit_slab::Hardened>> =
    OutOfLine(heapkit_slab::Slab::hardened());
/// See [`SIZECLASS_HEAP`].
pub static POOL_HEAP: heapkit_pool::Pool<heapkit_pool::Fast> = heapkit_pool::Pool::fast();
/// See [`SIZECLASS_HEAP`].
pub static POOL_HARDENED_HEAP: OutOfLine<heapkit_pool::Pool<heapkit_pool::Hardened>> =
    OutOfLine(heapkit_pool::Pool::hardened());
/// See [`SIZECLASS_HEAP`].
pub static BUMP_HEAP: OutOfLine<heapkit_bump::Bump> = OutOfLine(heapkit_bump::Bump::new());
/// See [`SIZECLASS_HEAP`].
pub static SYSTEM_HEAP: OutOfLine<crate::system::System> = OutOfLine(crate::system::System);
/// See [`SIZECLASS_HEAP`].
#[cfg(feature = "peers")]
pub static JEMALLOC_HEAP: OutOfLine<crate::jemalloc::Jemalloc> =
    OutOfLine(crate::jemalloc::Jemalloc);
/// See [`SIZECLASS_HEAP`].
#[cfg(feature = "peers")]
pub static MIMALLOC_HEAP: OutOfLine<crate::mimalloc::Mimalloc> =
    OutOfLine(crate::mimalloc::Mimalloc);

/// A backend whose operations the exports call instead of inlining.
///
/// Every export's dispatch is one function holding every backend's arm,
/// so it saves the registers that its most demanding arm needs: the
/// hardened modes' checks, bump's thread set-up and the peers' calls into
/// their libraries kept values across calls, and made every `free` push
/// and pop five registers. Behind this wrapper those arms are one call
/// each, and the default modes of slab and pool stay inlined with the
/// prologue of one register (checked with `objdump -d`).
pub struct OutOfLine<A>(pub A);

// SAFETY: every operation forwards to `A`, which keeps the contract.
unsafe impl<A: HeapAlloc> HeapAlloc for OutOfLine<A> {
    const SEGMENTED: bool = A::SEGMENTED;

    #[inline(never)]
    fn allocate(&self, layout: Layout) -> *mut u8 {
        self.0.allocate(layout)
    }

    #[inline(never)]
    fn allocate_zeroed(&self, layout: Layout) -> *mut u8 {
        self.0.allocate_zeroed(layout)
    }

    #[inline(never)]
    unsafe fn deallocate(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's guarantee (a live block of this allocator,
        // of `layout`) is `A`'s.
        unsafe { self.0.deallocate(ptr, layout) }
    }

    #[inline(never)]
    unsafe fn free(&self, ptr: *mut u8) {
        // SAFETY: the caller's guarantee (a live block of this allocator)
        // is `A`'s.
        unsafe { self.0.free(ptr) }
    }

    #[inline(never)]
    unsafe fn usable_size(&self, ptr: *mut u8) -> usize {
        // SAFETY: the caller's guarantee (a live block of this allocator)
        // is `A`'s.
        unsafe { self.0.usable_size(ptr) }
    }

    #[inline(never)]
    unsafe fn reallocate(&self, ptr: *mut u8, old_layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's guarantee (a live block of `old_layout`,
        // a size that does not overflow) is `A`'s.
        unsafe { self.0.reallocate(ptr, old_layout, new_size) }
    }

    fn trim(&self) -> bool {
        self.0.trim()
    }

    fn stats(&self) -> Stats {
        self.0.stats()
    }
}

/// Set in [`SELECTED`] beside the backend id while `HEAPKIT_TRACE` records
/// (or a heap profile records every allocation): every export then takes
/// its cold path, which records. Folding the recorder's on/off flag into
/// the byte the dispatch reads anyway costs the untraced fast path nothing:
/// no second load, no second cache line.
pub const TRACED: u8 = 0x80;
/// Set in [`SELECTED`] beside the backend id while a sampled heap profile
/// records (`HEAPKIT_PROFILE` with a sampling rate): `malloc`, `calloc`,
/// `realloc` and `free` then take their sampled arm of [`dispatch!`], the
/// backend's fast path inlined as usual plus the recorder's inline part (a
/// byte countdown after an allocation, one filter load before a free), and
/// call the recorder only for a sample. Through the cold path, as
/// [`TRACED`] does, the shim's call, second dispatch and the recorder's
/// checks cost a program that allocates at CPython's rate 5-7% of its time
/// with no sample taken at all.
pub const SAMPLED: u8 = 0x40;
/// The backend id part of [`SELECTED`].
pub const ID_MASK: u8 = !(TRACED | SAMPLED);

/// The selected backend's id, plus [`TRACED`] while recording. Relaxed is
/// enough: the id publishes no data (every backend is a `const`-initialised
/// static), and the recorder publishes its own state before the bit is set.
pub static SELECTED: AtomicU8 = AtomicU8::new(UNRESOLVED);

/// The name of backend `id` (`"?"` for an unknown id).
pub fn name(id: u8) -> &'static str {
    if let Some(&(_, _, name)) = HARDENED.iter().find(|(_, h, _)| *h == id & ID_MASK) {
        return name;
    }
    BACKENDS
        .iter()
        .find(|(_, b)| *b == id & ID_MASK)
        .map_or("?", |(n, _)| n)
}

/// Runs `$body` with `$a` bound to the backend whose id is `$id` (a
/// `&'static` of its concrete type), or evaluates `$other` for any other
/// value. Each arm names a static of a concrete type, so the backend's
/// code is inlined into the caller. The second form adds an arm per
/// backend for its id with [`SAMPLED`] set, running `$sampled` with `$s`
/// bound to the same backend, and one for its id with [`TRACED`] set,
/// running `$traced`; in the first form those ids are `$other`.
macro_rules! dispatch {
    ($id:expr, |$a:ident| $body:expr, $other:expr) => {
        $crate::backend::dispatch!(
            $id,
            |$a| $body,
            sampled | $a | $other,
            traced | $a | $other,
            $other
        )
    };
    ($id:expr, |$a:ident| $body:expr, sampled |$s:ident| $sampled:expr, traced |$t:ident| $traced:expr, $other:expr) => {
        // The one list of backends: each one's ids (plain, sampled,
        // traced) and its static.
        $crate::backend::dispatch_match!(
            $id, |$a| $body, |$s| $sampled, |$t| $traced, $other;
            SIZECLASS, SIZECLASS_SAMPLED, SIZECLASS_TRACED => $crate::backend::SIZECLASS_HEAP;
            SIZECLASS_HARDENED, SIZECLASS_HARDENED_SAMPLED, SIZECLASS_HARDENED_TRACED =>
                $crate::backend::SIZECLASS_HARDENED_HEAP;
            SLAB, SLAB_SAMPLED, SLAB_TRACED => $crate::backend::SLAB_HEAP;
            SLAB_HARDENED, SLAB_HARDENED_SAMPLED, SLAB_HARDENED_TRACED =>
                $crate::backend::SLAB_HARDENED_HEAP;
            POOL, POOL_SAMPLED, POOL_TRACED => $crate::backend::POOL_HEAP;
            POOL_HARDENED, POOL_HARDENED_SAMPLED, POOL_HARDENED_TRACED =>
                $crate::backend::POOL_HARDENED_HEAP;
            BUMP, BUMP_SAMPLED, BUMP_TRACED => $crate::backend::BUMP_HEAP;
            SYSTEM, SYSTEM_SAMPLED, SYSTEM_TRACED => $crate::backend::SYSTEM_HEAP;
            #[cfg(feature = "peers")]
            JEMALLOC, JEMALLOC_SAMPLED, JEMALLOC_TRACED => $crate::backend::JEMALLOC_HEAP;
            #[cfg(feature = "peers")]
            MIMALLOC, MIMALLOC_SAMPLED, MIMALLOC_TRACED => $crate::backend::MIMALLOC_HEAP
        )
    };
}
pub(crate) use dispatch;

/// [`dispatch!`]'s `match`, one arm per id of the list it is given.
macro_rules! dispatch_match {
    (
        $id:expr, |$a:ident| $body:expr, |$s:ident| $sampled:expr, |$t:ident| $traced:expr,
        $other:expr; $($(#[$cfg:meta])* $plain:ident, $samp:ident, $trac:ident => $heap:path);* $(;)?
    ) => {
        match $id {
            $(
                $(#[$cfg])*
                $crate::backend::$plain => {
                    let $a = &$heap;
                    $body
                }
            )*
            $(
                $(#[$cfg])*
                $crate::backend::$samp => {
                    #[allow(unused_variables)]
                    let $s = &$heap;
                    $sampled
                }
            )*
            $(
                $(#[$cfg])*
                $crate::backend::$trac => {
                    #[allow(unused_variables)]
                    let $t = &$heap;
                    $traced
                }
            )*
            _ => $other,
        }
    };
}
pub(crate) use dispatch_match;

/// Runs `$body` with `$a` bound to the selected backend.
///
/// - `with_backend!(|a| body, else cold)`: the exports' fast path. One
///   relaxed load of [`SELECTED`] and one jump; any value that is not a
///   plain backend id (not resolved yet, [`TRACED`] or [`SAMPLED`])
///   evaluates `cold` instead, an out-of-line function that resolves,
///   dispatches with the last form and records.
/// - `with_backend!(|a| body, sampled |s| sampled_body, traced |t|
///   traced_body, else cold)`: the same, but an id with [`SAMPLED`] runs
///   `sampled_body`, one with [`TRACED`] `traced_body`, with the backend
///   bound as for `body`.
/// - `with_backend!(|a| body)`: resolves the choice first if nobody has,
///   and ignores [`TRACED`] and [`SAMPLED`].
macro_rules! with_backend {
    (|$a:ident| $body:expr, else $cold:expr) => {
        $crate::backend::dispatch!(
            $crate::backend::SELECTED.load(::core::sync::atomic::Ordering::Relaxed),
            |$a| $body,
            $cold
        )
    };
    (|$a:ident| $body:expr, sampled |$s:ident| $sampled:expr, traced |$t:ident| $traced:expr, else $cold:expr) => {
        $crate::backend::dispatch!(
            $crate::backend::SELECTED.load(::core::sync::atomic::Ordering::Relaxed),
            |$a| $body,
            sampled | $s | $sampled,
            traced | $t | $traced,
            $cold
        )
    };
    (|$a:ident| $body:expr) => {
        $crate::backend::dispatch!(
            $crate::backend::resolved() & $crate::backend::ID_MASK,
            |$a| $body,
            $crate::backend::unknown_id()
        )
    };
}
pub(crate) use with_backend;

/// Unreachable: [`resolve`] returns only ids of [`BACKENDS`]. Says so and
/// aborts rather than panic inside `malloc`.
#[cold]
#[inline(never)]
pub fn unknown_id() -> ! {
    os::write_stderr(b"heapkit: internal error: no backend selected\n");
    os::exit_immediately(127)
}

/// Marks the process as recording: [`SAMPLED`] for a sampled heap
/// profile, else [`TRACED`]; or, with `on` false, as not recording. Call
/// after [`resolve`] and after the recorder started.
pub fn set_traced(on: bool) {
    if !on {
        SELECTED.fetch_and(ID_MASK, Relaxed);
    } else if heapkit_trace::record::sampled_profile() {
        SELECTED.fetch_or(SAMPLED, Relaxed);
    } else {
        SELECTED.fetch_or(TRACED, Relaxed);
    }
}

/// [`SELECTED`], resolved first if no call has (the recording path's
/// dispatch: one load, no call, once resolved).
#[inline(always)]
pub fn resolved() -> u8 {
    match SELECTED.load(Relaxed) {
        UNRESOLVED => resolve(),
        current => current,
    }
}

/// Chooses the backend from `HEAPKIT_ALLOC` (if no call has yet) and
/// returns [`SELECTED`] (the id, with [`TRACED`] while recording). Never
/// allocates; exits the process on an unknown name.
#[cold]
#[inline(never)]
pub fn resolve() -> u8 {
    let current = SELECTED.load(Relaxed);
    if current != UNRESOLVED {
        return current;
    }
    let id = match os::env_var(c"HEAPKIT_ALLOC") {
        None => DEFAULT,
        Some(value) if value.to_bytes().is_empty() => DEFAULT,
        Some(value) => match BACKENDS
            .iter()
            .find(|(n, _)| n.as_bytes() == value.to_bytes())
        {
            Some(&(_, id)) => id,
            None => reject(value.to_bytes()),
        },
    };
    let id = if hardening_asked() {
        match HARDENED.iter().find(|(plain, _, _)| *plain == id) {
            Some(&(_, hardened, _)) => hardened,
            None => no_hardened_mode(id),
        }
    } else {
        id
    };
    // A racing resolver computed the same id; keep whatever bits it set.
    match SELECTED.compare_exchange(UNRESOLVED, id, Relaxed, Relaxed) {
        Ok(_) => id,
        Err(current) => current,
    }
}

/// `HEAPKIT_HARDEN` is on (`1`, `true`, `yes`, `on`); any other value than
/// those and the off words is refused like an unknown `HEAPKIT_ALLOC`.
fn hardening_asked() -> bool {
    let Some(value) = os::env_var(c"HEAPKIT_HARDEN") else {
        return false;
    };
    if value.to_bytes().is_empty() {
        return false;
    }
    match heapkit_core::options::parse_flag(value.to_bytes()) {
        Some(on) => on,
        None => {
            let mut line = StackText::<256>::new();
            let _ = line.write_str("heapkit: HEAPKIT_HARDEN=\"");
            line.push_bytes(value.to_bytes());
            let _ = line.write_str("\" is not a flag; use 1 or 0\n");
            os::write_stderr(line.as_bytes());
            os::exit_immediately(2)
        }
    }
}

/// `HEAPKIT_HARDEN=1` with a backend that has no hardened mode: says so and
/// exits with status 2 rather than run unhardened when hardening was asked.
fn no_hardened_mode(id: u8) -> ! {
    let mut line = StackText::<256>::new();
    let _ = writeln!(
        line,
        "heapkit: HEAPKIT_HARDEN=1: the {} backend has no hardened mode (sizeclass, slab and pool have)",
        name(id)
    );
    os::write_stderr(line.as_bytes());
    os::exit_immediately(2)
}

/// The peers a library built without the `peers` feature lacks.
#[cfg(not(feature = "peers"))]
const PEERS_LEFT_OUT: &[(&str, &str)] = &[
    ("jemalloc", "libjemalloc.so.2"),
    ("mimalloc", "libmimalloc.so.2"),
];

/// Prints the one-line error for an unknown `HEAPKIT_ALLOC` and exits with
/// status 2, without allocating or running `atexit` handlers. A peer left
/// out of this build is named as such, with the two ways to run it.
fn reject(value: &[u8]) -> ! {
    let mut line = StackText::<512>::new();
    #[cfg(not(feature = "peers"))]
    if let Some((name, library)) = PEERS_LEFT_OUT.iter().find(|(n, _)| n.as_bytes() == value) {
        let _ = writeln!(
            line,
            "heapkit: HEAPKIT_ALLOC={name}: this libheapkit.so was built without the peers \
             (cargo build --release -p heapkit-shim --features peers), or preload {library} itself"
        );
        os::write_stderr(line.as_bytes());
        os::exit_immediately(2)
    }
    let _ = line.write_str("heapkit: unknown HEAPKIT_ALLOC=\"");
    line.push_bytes(value);
    let _ = line.write_str("\"; accepted: ");
    for (i, (n, _)) in BACKENDS.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(line, "{sep}{n}");
    }
    let _ = writeln!(line, " (default: {})", name(DEFAULT));
    os::write_stderr(line.as_bytes());
    os::exit_immediately(2)
}
