//! Per-thread pointers reached without a function call.
//!
//! Every heapkit allocator finds its thread's state through one pointer.
//! With Rust's `thread_local!` that pointer costs nothing in an executable
//! (the local-exec TLS model: one `%fs`-relative load), but in a shared
//! library such as `libheapkit.so` rustc uses the general-dynamic model: a
//! call to `__tls_get_addr` on every `malloc` and `free`, which measured
//! about 6% of a tight multi-threaded malloc loop. Stable Rust cannot choose
//! the TLS model, so [`thread_pointer!`](crate::thread_pointer) defines the
//! slot itself, in assembly, in the `.tdata` section, and reads it with the
//! **initial-exec** sequence that libmimalloc and libjemalloc use:
//!
//! ```text
//! mov  slot@GOTTPOFF(%rip), %rax   ; the slot's offset from the thread pointer
//! mov  %fs:(%rax), %rax            ; this thread's value
//! ```
//!
//! (In an executable the linker relaxes the first load to a constant.)
//!
//! # The cost of initial-exec
//!
//! An initial-exec slot lives in the static TLS block that glibc sets up
//! for every thread. A library loaded at start-up (`LD_PRELOAD`, or linked)
//! is always served. A library loaded later with `dlopen` is served from a
//! small surplus glibc keeps for this purpose (about 1.6 KiB, shared by
//! every such library); heapkit uses one 8-byte slot per allocator. Where
//! even that is unavailable, build with the `dlopen-tls` feature of
//! `heapkit-core` (the shim forwards it): every slot is then an ordinary
//! `thread_local!`, at the cost of the `__tls_get_addr` call in a shared
//! library. Targets other than x86-64 Linux always use that variant. This
//! is the same trade as the `mimalloc` crate's `local_dynamic_tls` feature.
//!
//! # Example
//!
//! ```
//! struct State { hits: core::cell::Cell<u64> }
//! // SAFETY: the sentinel is never written (the example only reads it).
//! unsafe impl Sync for State {}
//! static IDLE: State = State { hits: core::cell::Cell::new(0) };
//!
//! heapkit_core::thread_pointer! {
//!     /// This thread's state (or `IDLE` until it has one).
//!     static CURRENT: *mut State = &IDLE, symbol = "heapkit_doc_example_current";
//! }
//!
//! # fn main() {
//! assert_eq!(CURRENT::get(), core::ptr::addr_of!(IDLE).cast_mut());
//! let mine = Box::leak(Box::new(State { hits: core::cell::Cell::new(1) }));
//! CURRENT::set(mine);
//! // SAFETY: the slot holds `mine`, leaked and so alive for ever.
//! assert_eq!(unsafe { (*CURRENT::get()).hits.get() }, 1);
//! // Another thread starts at the sentinel again.
//! let idle = core::ptr::addr_of!(IDLE) as usize;
//! std::thread::spawn(move || assert_eq!(CURRENT::get() as usize, idle))
//!     .join()
//!     .unwrap();
//! # }
//! ```

/// Declares a per-thread pointer slot, read and written without a function
/// call (see the [module docs](crate::os::thread_pointer)).
///
/// ```text
/// thread_pointer! {
///     /// docs
///     pub(crate) static NAME: *mut Type = &SENTINEL, symbol = "unique_symbol_name";
/// }
/// ```
///
/// `NAME` becomes a unit type with `NAME::get() -> *mut Type` and
/// `NAME::set(*mut Type)`. Every thread's slot starts as the address of
/// `SENTINEL`, a `static` of type `Type` or of a `#[repr(transparent)]`
/// wrapper of it (or null, with `= null`), so a fast path can
/// treat "no state yet" like any other state that sends it to a slow path,
/// without a test of its own. `symbol` names the slot in the object file: it
/// must be unique in the program (a crate name in it is enough).
#[macro_export]
macro_rules! thread_pointer {
    ($(#[$attr:meta])* $vis:vis static $name:ident: *mut $ty:ty = null, symbol = $sym:literal;) => {
        $(#[$attr])*
        #[allow(non_camel_case_types)]
        $vis struct $name;
        $crate::__thread_pointer_slot!($vis $name, $ty, $sym, [".quad 0"], []);
    };
    ($(#[$attr:meta])* $vis:vis static $name:ident: *mut $ty:ty = &$init:path, symbol = $sym:literal;) => {
        $(#[$attr])*
        #[allow(non_camel_case_types)]
        $vis struct $name;
        $crate::__thread_pointer_slot!($vis $name, $ty, $sym, [".quad {init}"], [init = sym $init]);
    };
}

/// The initial-exec slot (x86-64 Linux without `dlopen-tls`).
#[cfg(all(
    target_arch = "x86_64",
    target_os = "linux",
    not(feature = "dlopen-tls")
))]
#[doc(hidden)]
#[macro_export]
macro_rules! __thread_pointer_slot {
    ($vis:vis $name:ident, $ty:ty, $sym:literal, [$init_line:literal], [$($operand:tt)*]) => {
        // One 8-byte slot in .tdata: glibc copies the initial value (a
        // relocated address) into every thread's static TLS block.
        ::core::arch::global_asm!(
            concat!(".pushsection .tdata.", $sym, ",\"awT\",@progbits"),
            ".p2align 3",
            concat!(".globl ", $sym),
            concat!(".hidden ", $sym),
            concat!(".type ", $sym, ",@object"),
            concat!(".size ", $sym, ", 8"),
            concat!($sym, ":"),
            $init_line,
            ".popsection",
            $($operand)*
        );

        impl $name {
            /// This thread's value.
            #[inline(always)]
            $vis fn get() -> *mut $ty {
                let value: *mut $ty;
                // SAFETY: the slot is an 8-byte, 8-aligned .tdata object
                // defined just above; GOTTPOFF gives its offset from this
                // thread's thread pointer (%fs), where glibc placed this
                // thread's copy. Reading it has no other effect.
                unsafe {
                    ::core::arch::asm!(
                        concat!("mov {offset}, qword ptr [rip + ", $sym, "@GOTTPOFF]"),
                        "mov {value}, qword ptr fs:[{offset}]",
                        offset = out(reg) _,
                        value = lateout(reg) value,
                        options(nostack, preserves_flags, readonly, pure),
                    );
                }
                value
            }

            /// Sets this thread's value.
            #[inline(always)]
            #[allow(dead_code)]
            $vis fn set(value: *mut $ty) {
                // SAFETY: as for `get`; the slot is this thread's alone.
                unsafe {
                    ::core::arch::asm!(
                        concat!("mov {offset}, qword ptr [rip + ", $sym, "@GOTTPOFF]"),
                        "mov qword ptr fs:[{offset}], {value}",
                        offset = out(reg) _,
                        value = in(reg) value,
                        options(nostack, preserves_flags),
                    );
                }
            }
        }
    };
}

/// The portable slot: an ordinary `thread_local!` (`dlopen-tls`, or a
/// target other than x86-64 Linux). The caller's crate must link `std`.
#[cfg(not(all(
    target_arch = "x86_64",
    target_os = "linux",
    not(feature = "dlopen-tls")
)))]
#[doc(hidden)]
#[macro_export]
macro_rules! __thread_pointer_slot {
    ($vis:vis $name:ident, $ty:ty, $sym:literal, [$init_line:literal], []) => {
        $crate::__thread_pointer_slot!(@key $vis $name, $ty, ::core::ptr::null_mut());
    };
    ($vis:vis $name:ident, $ty:ty, $sym:literal, [$init_line:literal], [init = sym $init:path]) => {
        $crate::__thread_pointer_slot!(@key $vis $name, $ty, ::core::ptr::addr_of!($init).cast_mut().cast::<$ty>());
    };
    (@key $vis:vis $name:ident, $ty:ty, $init:expr) => {
        impl $name {
            #[inline(always)]
            fn key() -> &'static ::std::thread::LocalKey<::core::cell::Cell<*mut $ty>> {
                ::std::thread_local! {
                    static SLOT: ::core::cell::Cell<*mut $ty> = const { ::core::cell::Cell::new($init) };
                }
                &SLOT
            }

            /// This thread's value.
            #[inline(always)]
            $vis fn get() -> *mut $ty {
                Self::key().with(|slot| slot.get())
            }

            /// Sets this thread's value.
            #[inline(always)]
            #[allow(dead_code)]
            $vis fn set(value: *mut $ty) {
                Self::key().with(|slot| slot.set(value))
            }
        }
    };
}

/// Declares an allocator's per-thread state, reached through a
/// [`thread_pointer!`](crate::thread_pointer) that starts at a never-written
/// idle sentinel: the pattern every heapkit allocator uses.
///
/// ```text
/// thread_state! {
///     /// docs
///     pub(crate) mod thread_heap: ThreadHeap = ThreadHeap::new(),
///         symbol = "unique_symbol_name", on_bind = register_exit_hook;
/// }
/// ```
///
/// expands to a module `thread_heap` holding the state's storage (a
/// `const`-initialised `thread_local!` without destructor, in an
/// `UnsafeCell`), the idle sentinel (a `static` initialised the same way)
/// and three functions:
///
/// - `current() -> *mut T`: this thread's state, or the sentinel while the
///   thread has not been bound: two instructions, for the fast paths;
/// - `bound() -> *mut T`: this thread's own state, binding it on first use
///   (one `__tls_get_addr` call per thread in a shared library, then
///   `on_bind(state)` if given): for every path that writes;
/// - `is_idle(p) -> bool`: whether `p` is the sentinel.
///
/// The caller's obligation: **never write through what `current()` returns
/// before checking it is not the sentinel** (or use `bound()`). The
/// allocators get that for free by giving the sentinel empty free lists,
/// so their fast paths find nothing to pop or push and go slow, where they
/// call `bound()`. The crate invoking it must link `std`.
///
/// # Pooled storage
///
/// ```text
/// thread_state! {
///     pub(crate) mod thread_heap: ThreadHeap = ThreadHeap::new(),
///         symbol = "unique_symbol_name", pooled, on_bind = register_exit_hook;
/// }
/// ```
///
/// (optionally with `, first_slot_offset = N`: see
/// [`SlotPool::with_first_slot_offset`](crate::thread_slots::SlotPool::with_first_slot_offset))
///
/// keeps the states in a [`SlotPool`](crate::thread_slots::SlotPool)
/// instead of the TLS block (see [`thread_slots`](crate::thread_slots) for
/// why): only the thread pointer and a one-byte flag are thread-local.
/// `bound()` then takes a slot, copies the sentinel's bytes into it (the
/// initial value must own nothing: a bitwise copy is a valid state) and
/// calls `on_bind`, which must arrange for `release()` to run when the
/// thread exits; `bound()` returns **null** when no slot can be mapped.
/// More functions:
///
/// - `release()` (unsafe): the thread gives its state back and points at
///   the sentinel again; a later `bound()` takes a fresh slot;
/// - `released() -> bool`: whether this thread has released a state (so
///   that state bound after it, by a late thread-exit destructor, can be
///   told apart);
/// - `own()`: the thread's state if bound, else null;
/// - `bound_unless_released()`: `bound()`, but null for a thread that
///   released its state (for paths that run after the exit hook);
/// - `pool()`: the pool, for fork handlers.
#[macro_export]
macro_rules! thread_state {
    ($(#[$attr:meta])* $vis:vis mod $module:ident: $ty:ty = $init:expr,
        symbol = $sym:literal, pooled, on_bind = $on_bind:path
        $(, first_slot_offset = $offset:expr)?;) => {
        $(#[$attr])*
        $vis mod $module {
            #[allow(unused_imports)]
            use super::*;

            /// Where bound states live.
            static POOL: $crate::thread_slots::SlotPool =
                $crate::thread_slots::SlotPool::with_first_slot_offset(0 $(+ $offset)?);
            const _: () = assert!(
                ::core::mem::align_of::<$ty>() <= $crate::thread_slots::SLOT_ALIGN
            );

            ::std::thread_local! {
                /// This thread has released a state (see `release`).
                static RELEASED: ::core::cell::Cell<bool> =
                    const { ::core::cell::Cell::new(false) };
            }

            $crate::__thread_state_sentinel!($ty, $init, $sym,
                "This thread's own state, bound on first use; null when no slot could be mapped.");

            #[cold]
            #[inline(never)]
            fn bind() -> *mut $ty {
                let p = POOL
                    .take(::core::mem::size_of::<$ty>(), ::core::mem::align_of::<$ty>())
                    .cast::<$ty>();
                if p.is_null() {
                    return p;
                }
                // SAFETY: p is a slot of at least size_of::<$ty>() bytes,
                // suitably aligned and ours alone; IDLE is never written, so
                // its bytes are the initial value, which owns nothing (the
                // macro's contract): a bitwise copy is a valid state.
                unsafe { ::core::ptr::copy_nonoverlapping(::core::ptr::addr_of!(IDLE.0), p, 1) };
                SLOT::set(p);
                $on_bind(p);
                p
            }

            /// Gives the calling thread's state back to the pool and points
            /// the thread at the sentinel again (no-op if unbound).
            ///
            /// # Safety
            /// Nothing uses the state any more: no reference or pointer to
            /// it is kept (by this thread or a registry that others walk).
            #[allow(dead_code)]
            pub unsafe fn release() {
                let p = current();
                if is_idle(p) {
                    return;
                }
                SLOT::set(::core::ptr::addr_of!(IDLE.0).cast_mut());
                RELEASED.with(|r| r.set(true));
                // SAFETY: p came from POOL.take (bound above), is given back
                // once (the slot now names the sentinel), and the caller
                // guarantees nothing uses it.
                unsafe { POOL.give(p.cast()) };
            }

            /// Whether this thread has released a state before.
            #[allow(dead_code)]
            pub fn released() -> bool {
                RELEASED.with(|r| r.get())
            }

            /// This thread's state if it has bound one, else null (never
            /// binds).
            #[inline]
            #[allow(dead_code)]
            pub fn own() -> *mut $ty {
                let p = current();
                if is_idle(p) {
                    ::core::ptr::null_mut()
                } else {
                    p
                }
            }

            /// `bound()` for a path that may run after the thread's exit
            /// hook: null, not a new slot, for a thread that released its
            /// state (no hook might give that slot back), or when no slot
            /// can be mapped.
            #[inline]
            #[allow(dead_code)]
            pub fn bound_unless_released() -> *mut $ty {
                let p = current();
                if !is_idle(p) {
                    return p;
                }
                if released() {
                    return ::core::ptr::null_mut();
                }
                bind()
            }

            /// The slot pool, for fork handlers and background purgers.
            #[allow(dead_code)]
            pub fn pool() -> &'static $crate::thread_slots::SlotPool {
                &POOL
            }
        }
    };
    ($(#[$attr:meta])* $vis:vis mod $module:ident: $ty:ty = $init:expr,
        symbol = $sym:literal $(, on_bind = $on_bind:path)? ;) => {
        $(#[$attr])*
        $vis mod $module {
            #[allow(unused_imports)]
            use super::*;

            ::std::thread_local! {
                static STORAGE: ::core::cell::UnsafeCell<$ty> =
                    const { ::core::cell::UnsafeCell::new($init) };
            }

            $crate::__thread_state_sentinel!($ty, $init, $sym,
                "This thread's own state, bound on first use.");

            #[cold]
            #[inline(never)]
            fn bind() -> *mut $ty {
                let p = STORAGE.with(|cell| cell.get());
                SLOT::set(p);
                $( $on_bind(p); )?
                p
            }
        }
    };
}

/// What both forms of [`thread_state!`](crate::thread_state) define: the
/// idle sentinel, the thread pointer and `current`, `is_idle` and `bound`
/// (which calls the form's own `bind`).
#[doc(hidden)]
#[macro_export]
macro_rules! __thread_state_sentinel {
    ($ty:ty, $init:expr, $sym:literal, $bound_doc:literal) => {
        /// The state every thread starts with: never written.
        #[repr(transparent)]
        struct Idle($ty);
        // SAFETY: nothing writes the sentinel (the macro's contract:
        // writers use `bound()`); any thread may read it.
        unsafe impl Sync for Idle {}
        static IDLE: Idle = Idle($init);

        $crate::thread_pointer! {
            static SLOT: *mut $ty = &IDLE, symbol = $sym;
        }

        /// This thread's state, or the never-written sentinel until the
        /// thread is bound (see [`bound`]).
        #[inline(always)]
        #[allow(dead_code)]
        pub fn current() -> *mut $ty {
            SLOT::get()
        }

        /// Whether `p` is the idle sentinel.
        #[inline(always)]
        #[allow(dead_code)]
        pub fn is_idle(p: *const $ty) -> bool {
            ::core::ptr::eq(p, ::core::ptr::addr_of!(IDLE.0))
        }

        #[doc = $bound_doc]
        #[inline(always)]
        #[allow(dead_code)]
        pub fn bound() -> *mut $ty {
            let p = current();
            if is_idle(p) {
                return bind();
            }
            p
        }
    };
}

#[cfg(test)]
mod tests {
    use core::cell::Cell;
    use core::ptr;

    struct Counter(Cell<u64>);
    // SAFETY: the sentinel is only read by these tests.
    unsafe impl Sync for Counter {}
    static SENTINEL: Counter = Counter(Cell::new(7));

    crate::thread_pointer! {
        static WITH_SENTINEL: *mut Counter = &SENTINEL, symbol = "heapkit_core_test_with_sentinel";
    }
    crate::thread_pointer! {
        static WITH_NULL: *mut u64 = null, symbol = "heapkit_core_test_with_null";
    }

    #[test]
    fn starts_at_the_sentinel_in_every_thread_and_is_per_thread() {
        let sentinel = ptr::addr_of!(SENTINEL).cast_mut();
        let sentinel_addr = sentinel as usize;
        assert_eq!(WITH_SENTINEL::get(), sentinel);
        assert!(WITH_NULL::get().is_null());
        let mut mine = Counter(Cell::new(1));
        let mut value = 5u64;
        WITH_SENTINEL::set(&mut mine);
        WITH_NULL::set(&mut value);
        // SAFETY: the slot holds the address of `mine`, alive here.
        assert_eq!(unsafe { (*WITH_SENTINEL::get()).0.get() }, 1);
        std::thread::spawn(move || {
            assert_eq!(WITH_SENTINEL::get() as usize, sentinel_addr);
            assert!(WITH_NULL::get().is_null());
            let mut other = 9u64;
            WITH_NULL::set(&mut other);
            // SAFETY: `other` is alive.
            assert_eq!(unsafe { *WITH_NULL::get() }, 9);
        })
        .join()
        .unwrap();
        // SAFETY: `value` is alive.
        assert_eq!(unsafe { *WITH_NULL::get() }, 5);
        WITH_SENTINEL::set(sentinel);
        WITH_NULL::set(ptr::null_mut());
    }
}
