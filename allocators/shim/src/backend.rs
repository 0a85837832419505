//! Which allocator serves the process: chosen once, from `HEAPKIT_ALLOC`.
//!
//! The choice is a single byte, [`SELECTED`], that every exported function
//! reads and `match`es through [`with_backend!`]. Each arm names a `static`
//! of a concrete type, so the backend's code is inlined into the export (no
//! indirect call) and every backend pays the same price: one relaxed load
//! and one jump-table branch, peers included.
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
//! Adding a backend: a constant below, a line in [`BACKENDS`] and an arm in
//! [`with_backend!`].

use core::fmt::Write;
use core::sync::atomic::{AtomicU8, Ordering::Relaxed};

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
/// jemalloc (`jemalloc`).
pub const JEMALLOC: u8 = 6;
/// mimalloc (`mimalloc`).
pub const MIMALLOC: u8 = 7;

/// Every accepted `HEAPKIT_ALLOC` value and its id, heapkit's own first.
pub const BACKENDS: &[(&str, u8)] = &[
    ("sizeclass", SIZECLASS),
    ("slab", SLAB),
    ("pool", POOL),
    ("bump", BUMP),
    ("system", SYSTEM),
    ("jemalloc", JEMALLOC),
    ("mimalloc", MIMALLOC),
];

/// The backend used when `HEAPKIT_ALLOC` is unset or empty.
pub const DEFAULT: u8 = SIZECLASS;

/// The heapkit allocators, as `const`-initialised statics (peers are unit
/// structs and need none).
pub static SIZECLASS_HEAP: heapkit_sizeclass::SizeClass = heapkit_sizeclass::SizeClass::new();
/// See [`SIZECLASS_HEAP`].
pub static SLAB_HEAP: heapkit_slab::Slab = heapkit_slab::Slab::new();
/// See [`SIZECLASS_HEAP`].
pub static POOL_HEAP: heapkit_pool::Pool = heapkit_pool::Pool::new();
/// See [`SIZECLASS_HEAP`].
pub static BUMP_HEAP: heapkit_bump::Bump = heapkit_bump::Bump::new();

/// The selected backend's id. Relaxed is enough: the id publishes no data
/// (every backend is a `const`-initialised static).
pub static SELECTED: AtomicU8 = AtomicU8::new(UNRESOLVED);

/// The name of backend `id` (`"?"` for an unknown id).
pub fn name(id: u8) -> &'static str {
    BACKENDS
        .iter()
        .find(|(_, b)| *b == id)
        .map_or("?", |(n, _)| n)
}

/// Runs `$body` with `$a` bound to the selected backend (a `&'static` of
/// its concrete type), resolving the choice first if nobody has yet.
macro_rules! with_backend {
    (|$a:ident| $body:expr) => {{
        let mut id = $crate::backend::SELECTED.load(::core::sync::atomic::Ordering::Relaxed);
        loop {
            match id {
                $crate::backend::SIZECLASS => {
                    let $a = &$crate::backend::SIZECLASS_HEAP;
                    break $body;
                }
                $crate::backend::SLAB => {
                    let $a = &$crate::backend::SLAB_HEAP;
                    break $body;
                }
                $crate::backend::POOL => {
                    let $a = &$crate::backend::POOL_HEAP;
                    break $body;
                }
                $crate::backend::BUMP => {
                    let $a = &$crate::backend::BUMP_HEAP;
                    break $body;
                }
                $crate::backend::SYSTEM => {
                    let $a = &$crate::system::System;
                    break $body;
                }
                $crate::backend::JEMALLOC => {
                    let $a = &$crate::jemalloc::Jemalloc;
                    break $body;
                }
                $crate::backend::MIMALLOC => {
                    let $a = &$crate::mimalloc::Mimalloc;
                    break $body;
                }
                _ => id = $crate::backend::resolve(),
            }
        }
    }};
}
pub(crate) use with_backend;

/// Chooses the backend from `HEAPKIT_ALLOC` (if no call has yet) and
/// returns its id. Never allocates; exits the process on an unknown name.
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
    SELECTED.store(id, Relaxed);
    id
}

/// Prints the one-line error for an unknown `HEAPKIT_ALLOC` and exits with
/// status 2, without allocating or running `atexit` handlers.
fn reject(value: &[u8]) -> ! {
    let mut line = StackText::<512>::new();
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
