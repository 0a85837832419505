//! C++'s `operator new` and `operator delete`, every form (plain, array,
//! nothrow, aligned, sized), over the selected backend.
//!
//! Without these, C++ programs reach heapkit through libstdc++'s operators,
//! which call `malloc`/`free`: a second call per allocation, and sized and
//! aligned deletes that throw their size away. Exporting them lets a
//! `new`/`delete` pair cost what `malloc`/`free` cost.
//!
//! `delete` is plain Rust (`free` ignores the size and alignment: every
//! block knows both). `new` must throw `std::bad_alloc` when memory runs
//! out (after calling the program's new-handler), and Rust code may not be
//! unwound through. So each `new` is a small naked trampoline: it calls the
//! Rust allocation and returns its block; on null it *jumps* (its own frame
//! already gone) to the same operator of the next library in the lookup
//! order, libstdc++'s, which retries through `malloc` (this library's),
//! runs the new-handler loop and throws, or returns null for the nothrow
//! forms. That operator is looked up (with `dlsym(RTLD_NEXT)`) only on the
//! first failure.

use core::ffi::{c_void, CStr};
use core::sync::atomic::{AtomicPtr, Ordering::Relaxed};

use heapkit_core::os;

use crate::export::{free, malloc, memalign};

/// Where to jump when `new` fails: the next library's operator, found on
/// the first failure.
#[repr(transparent)]
struct NextOperator(AtomicPtr<c_void>);

impl NextOperator {
    const fn new() -> Self {
        NextOperator(AtomicPtr::new(core::ptr::null_mut()))
    }

    /// Looks the next operator up if nobody has; with none at all (no C++
    /// runtime after this library), says so and aborts, as a C++ program
    /// that cannot throw would.
    #[cold]
    #[inline(never)]
    fn resolve(&self, name: &CStr) {
        if !self.0.load(Relaxed).is_null() {
            return;
        }
        let next = os::next_symbol(name);
        if next.is_null() {
            os::write_stderr(b"heapkit: operator new: out of memory, and no C++ runtime to throw std::bad_alloc\n");
            os::abort();
        }
        self.0.store(next, Relaxed);
    }
}

/// Defines one throwing or nothrow `operator new` form: `$symbol` (the
/// mangled name) calls `$alloc(rdi, rsi)` and, on null, jumps to the next
/// library's `$symbol` with the arguments it was given.
macro_rules! operator_new {
    ($(#[$doc:meta])* $symbol:ident, $next:ident, $helper:ident, |$a0:ident, $a1:ident| $alloc:expr) => {
        static $next: NextOperator = NextOperator::new();

        /// The allocation behind the trampoline; on null, resolves where the
        /// trampoline jumps.
        extern "C" fn $helper($a0: usize, $a1: usize) -> *mut c_void {
            let p: *mut c_void = $alloc;
            if p.is_null() {
                $next.resolve(
                    // SAFETY: the literal is NUL-terminated with no NUL inside.
                    unsafe {
                        CStr::from_bytes_with_nul_unchecked(
                            concat!(stringify!($symbol), "\0").as_bytes(),
                        )
                    },
                );
            }
            p
        }

        $(#[$doc])*
        ///
        /// # Safety
        /// The C++ contract for this operator.
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $symbol() {
            // rdi, rsi and rdx carry the operator's arguments (size, then
            // alignment or nothrow tag, then nothrow tag): kept across the
            // call (three pushes also realign the stack to 16 bytes) and
            // handed on unchanged to the next operator on failure.
            core::arch::naked_asm!(
                ".cfi_startproc",
                "push rdi",
                ".cfi_adjust_cfa_offset 8",
                "push rsi",
                ".cfi_adjust_cfa_offset 8",
                "push rdx",
                ".cfi_adjust_cfa_offset 8",
                "call {helper}",
                "pop rdx",
                ".cfi_adjust_cfa_offset -8",
                "pop rsi",
                ".cfi_adjust_cfa_offset -8",
                "pop rdi",
                ".cfi_adjust_cfa_offset -8",
                "test rax, rax",
                "jz 2f",
                "ret",
                "2:",
                "jmp qword ptr [rip + {next}]",
                ".cfi_endproc",
                helper = sym $helper,
                next = sym $next,
            )
        }
    };
}

/// `malloc` for `new`: `operator new(0)` must return a unique block too,
/// which heapkit's `malloc(0)` does.
fn plain(size: usize) -> *mut c_void {
    // SAFETY: malloc has no precondition.
    unsafe { malloc(size) }
}

/// `memalign` for aligned `new` (the alignment is a power of two, as
/// `std::align_val_t` must be).
fn aligned(size: usize, align: usize) -> *mut c_void {
    // SAFETY: memalign has no precondition (a bad alignment fails).
    unsafe { memalign(align, size) }
}

operator_new!(
    /// `operator new(std::size_t)`.
    _Znwm, NEXT_ZNWM, new_znwm, |size, _unused| plain(size)
);
operator_new!(
    /// `operator new[](std::size_t)`.
    _Znam, NEXT_ZNAM, new_znam, |size, _unused| plain(size)
);
operator_new!(
    /// `operator new(std::size_t, const std::nothrow_t&)`.
    _ZnwmRKSt9nothrow_t, NEXT_ZNWM_NOTHROW, new_znwm_nothrow, |size, _tag| plain(size)
);
operator_new!(
    /// `operator new[](std::size_t, const std::nothrow_t&)`.
    _ZnamRKSt9nothrow_t, NEXT_ZNAM_NOTHROW, new_znam_nothrow, |size, _tag| plain(size)
);
operator_new!(
    /// `operator new(std::size_t, std::align_val_t)`.
    _ZnwmSt11align_val_t, NEXT_ZNWM_ALIGN, new_znwm_align, |size, align| aligned(size, align)
);
operator_new!(
    /// `operator new[](std::size_t, std::align_val_t)`.
    _ZnamSt11align_val_t, NEXT_ZNAM_ALIGN, new_znam_align, |size, align| aligned(size, align)
);
operator_new!(
    /// `operator new(std::size_t, std::align_val_t, const std::nothrow_t&)`.
    _ZnwmSt11align_val_tRKSt9nothrow_t, NEXT_ZNWM_ALIGN_NOTHROW, new_znwm_align_nothrow,
    |size, align| aligned(size, align)
);
operator_new!(
    /// `operator new[](std::size_t, std::align_val_t, const std::nothrow_t&)`.
    _ZnamSt11align_val_tRKSt9nothrow_t, NEXT_ZNAM_ALIGN_NOTHROW, new_znam_align_nothrow,
    |size, align| aligned(size, align)
);

/// Defines `operator delete` forms: each frees its first argument (size,
/// alignment and nothrow tag are not needed).
macro_rules! operator_delete {
    ($($(#[$doc:meta])* $symbol:ident($($arg:ident: $ty:ty),*);)*) => {$(
        $(#[$doc])*
        ///
        /// # Safety
        /// `ptr` is null or a live block from `operator new`.
        #[no_mangle]
        pub unsafe extern "C" fn $symbol(ptr: *mut c_void $(, $arg: $ty)*) {
            $(let _ = $arg;)*
            // SAFETY: forwarded caller guarantee.
            unsafe { free(ptr) }
        }
    )*};
}

operator_delete! {
    /// `operator delete(void*)`.
    _ZdlPv();
    /// `operator delete[](void*)`.
    _ZdaPv();
    /// `operator delete(void*, std::size_t)`.
    _ZdlPvm(size: usize);
    /// `operator delete[](void*, std::size_t)`.
    _ZdaPvm(size: usize);
    /// `operator delete(void*, const std::nothrow_t&)`.
    _ZdlPvRKSt9nothrow_t(tag: *const c_void);
    /// `operator delete[](void*, const std::nothrow_t&)`.
    _ZdaPvRKSt9nothrow_t(tag: *const c_void);
    /// `operator delete(void*, std::align_val_t)`.
    _ZdlPvSt11align_val_t(align: usize);
    /// `operator delete[](void*, std::align_val_t)`.
    _ZdaPvSt11align_val_t(align: usize);
    /// `operator delete(void*, std::size_t, std::align_val_t)`.
    _ZdlPvmSt11align_val_t(size: usize, align: usize);
    /// `operator delete[](void*, std::size_t, std::align_val_t)`.
    _ZdaPvmSt11align_val_t(size: usize, align: usize);
    /// `operator delete(void*, std::align_val_t, const std::nothrow_t&)`.
    _ZdlPvSt11align_val_tRKSt9nothrow_t(align: usize, tag: *const c_void);
    /// `operator delete[](void*, std::align_val_t, const std::nothrow_t&)`.
    _ZdaPvSt11align_val_tRKSt9nothrow_t(align: usize, tag: *const c_void);
}
