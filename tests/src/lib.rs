//! The heapkit test battery: one set of tests that any allocator is run
//! through *as the global allocator of a test binary*.
//!
//! An allocator that passes unit tests can still break a real program: std's
//! collections ask for every size and alignment, threads free each other's
//! blocks, threads die with memory still out, `fork` copies a heap whose locks
//! other threads were holding. The battery exercises each of these with
//! fill-and-check patterns ([`pattern`]), so a test fails when a block is
//! corrupted, misaligned, overlapping another, not zeroed, not copied by
//! realloc, or when the allocator deadlocks or crashes.
//!
//! Each allocator gets its own integration-test file (a global allocator is
//! per process, so per test binary), holding one [`battery!`] invocation:
//!
//! ```
//! // tests/tests/global_system.rs
//! heapkit_tests::battery! {
//!     static GLOBAL: std::alloc::System = std::alloc::System;
//! }
//! # fn main() {}
//! ```
//!
//! which declares the `#[global_allocator]` and expands into one `#[test]`
//! per battery function. Functions that take an allocator argument drive it
//! directly through `GlobalAlloc` (`GLOBAL.alloc(layout)`); the rest go
//! through std (`std::alloc::alloc`, `Vec`, `HashMap`, threads), which reaches
//! the same allocator by the `#[global_allocator]` route. [`Std`] is a
//! `GlobalAlloc` that forwards to `std::alloc`, so the direct functions also
//! run "through std".
//!
//! The peers (system, jemalloc, mimalloc) run the same battery as controls:
//! a test the peers fail says nothing about ours.
//!
//! Running it:
//!
//! ```text
//! cargo test -p heapkit-tests                       # every allocator, plus the self-test
//! cargo test -p heapkit-tests --test global_slab    # one allocator
//! cargo test -p heapkit-tests --test global_slab fork   # one test kind
//! ```
//!
//! Adding an allocator: a new `tests/tests/global_<name>.rs` with one
//! [`battery!`] and a dev-dependency. `tests/tests/battery_self_test.rs`
//! runs every function against deliberately broken allocators and requires
//! each to fail, so a check that has gone blind shows up there.
//!
//! Reading a failure: messages name the operation, the layout, the block's
//! address and the first wrong byte ("realloc 300 -> 70000 (align 64, ...)
//! lost contents: byte 256 is 0x00, expected 0x3c"); the fork test reports
//! the child's exit code and what it means, or the signal (SIGALRM means the
//! child deadlocked).
//!
//! Cost: the full battery takes 5-20 s per allocator in the `test` profile
//! (opt-level 1) on a 2-core machine; the random walks, short-lived threads
//! and fork test are the longest. [`Volume::Light`] cuts the volume (not the kinds of test) for
//! allocators that never reuse memory, such as `heapkit_bump::Bump`.

use std::alloc::{GlobalAlloc, Layout};

pub mod alignment;
pub mod collections;
pub mod exhaustion;
pub mod fork;
pub mod large;
pub mod pattern;
pub mod random;
pub mod realloc;
pub mod routes;
pub mod threads;
pub mod zeroed;

/// How much work each battery test does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Volume {
    /// The full volume: every test many times over.
    Full,
    /// Every test, with fewer rounds and smaller totals: for allocators that
    /// never reuse memory.
    Light,
}

impl Volume {
    /// `full` under [`Volume::Full`], `light` under [`Volume::Light`].
    pub fn pick(self, full: usize, light: usize) -> usize {
        match self {
            Volume::Full => full,
            Volume::Light => light,
        }
    }
}

/// A `GlobalAlloc` that forwards to `std::alloc::{alloc, dealloc, ...}`, i.e.
/// to whatever the binary's `#[global_allocator]` is. Lets the functions that
/// take an allocator argument run "through std" too.
#[derive(Debug, Clone, Copy, Default)]
pub struct Std;

// SAFETY: forwards every call to std::alloc, whose functions have exactly
// GlobalAlloc's contract.
unsafe impl GlobalAlloc for Std {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: caller guarantees a non-zero-size layout.
        unsafe { std::alloc::alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: caller guarantees a non-zero-size layout.
        unsafe { std::alloc::alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: caller guarantees ptr is live with layout.
        unsafe { std::alloc::dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: caller guarantees ptr/layout/new_size.
        unsafe { std::alloc::realloc(ptr, layout, new_size) }
    }
}

/// A live block the battery allocated: where it is, its layout, and the seed
/// of the pattern it holds. Plain data, so it can cross threads and `fork`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Address of the block.
    pub addr: usize,
    /// Requested size in bytes (non-zero).
    pub size: usize,
    /// Requested alignment (a power of two).
    pub align: usize,
    /// Seed of the pattern in the first `size` bytes.
    pub seed: u64,
}

impl Block {
    /// The layout it was allocated with.
    pub fn layout(&self) -> Layout {
        Layout::from_size_align(self.size, self.align).expect("battery layouts are valid")
    }

    /// The block's address as a pointer.
    pub fn ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    /// Allocates `size` bytes aligned to `align` from `a` (zeroed if asked,
    /// and then checked to be zero), checks alignment and fills the pattern
    /// of `seed`. Panics (naming `what`) on null, misalignment or non-zero
    /// memory.
    #[track_caller]
    pub fn new<A: GlobalAlloc + ?Sized>(
        a: &A,
        size: usize,
        align: usize,
        seed: u64,
        zeroed: bool,
        what: &str,
    ) -> Block {
        let layout = Layout::from_size_align(size, align).expect("battery layouts are valid");
        assert!(size > 0, "{what}: the battery never asks for zero bytes");
        // SAFETY: layout has a non-zero size.
        let p = unsafe {
            if zeroed {
                a.alloc_zeroed(layout)
            } else {
                a.alloc(layout)
            }
        };
        assert!(
            !p.is_null(),
            "{what}: allocation of {layout:?} returned null"
        );
        pattern::assert_aligned(p, align, what);
        if zeroed {
            // SAFETY: p is live for size bytes.
            if let Some(at) = unsafe { pattern::first_nonzero(p, size) } {
                panic!("{what}: alloc_zeroed({layout:?}) = {p:p} has a non-zero byte at {at}");
            }
        }
        // SAFETY: p is live for size bytes.
        unsafe { pattern::fill(p, size, seed) };
        Block {
            addr: p as usize,
            size,
            align,
            seed,
        }
    }

    /// Checks the block's pattern, panicking (naming `what`) on a mismatch.
    #[track_caller]
    pub fn verify(&self, what: &str) {
        // SAFETY: a Block is live (the battery frees it only through free).
        unsafe { pattern::verify(self.ptr(), self.size, self.seed, what) }
    }

    /// Checks the pattern, reallocates the block through `a` to `new_size`,
    /// checks the kept prefix and alignment, and fills the grown tail.
    ///
    /// # Safety
    /// The block must be live and allocated by `a` (or by the allocator `a`
    /// forwards to); it is consumed.
    #[track_caller]
    pub unsafe fn realloc<A: GlobalAlloc + ?Sized>(
        self,
        a: &A,
        new_size: usize,
        what: &str,
    ) -> Block {
        self.verify(what);
        // SAFETY: live block of a with this layout (caller); new_size is
        // non-zero and far from isize::MAX in the battery.
        let p = unsafe { a.realloc(self.ptr(), self.layout(), new_size) };
        assert!(
            !p.is_null(),
            "{what}: realloc {} -> {new_size} returned null",
            self.size
        );
        pattern::assert_aligned(p, self.align, what);
        let kept = self.size.min(new_size);
        // SAFETY: p is live for new_size >= kept bytes.
        if let Err(m) = unsafe { pattern::check_range(p, 0, kept, self.seed) } {
            panic!(
                "{what}: realloc {} -> {new_size} ({:p} -> {p:p}) lost contents: {m}",
                self.size,
                self.ptr()
            );
        }
        if new_size > self.size {
            // SAFETY: p is live for new_size bytes.
            unsafe { pattern::fill_range(p, self.size, new_size, self.seed) };
        }
        Block {
            addr: p as usize,
            size: new_size,
            ..self
        }
    }

    /// Checks the pattern and frees the block through `a`.
    ///
    /// # Safety
    /// The block must be live and allocated by `a` (or by the allocator `a`
    /// forwards to).
    #[track_caller]
    pub unsafe fn free<A: GlobalAlloc + ?Sized>(self, a: &A, what: &str) {
        self.verify(what);
        // SAFETY: live block of a with this layout (caller).
        unsafe { a.dealloc(self.ptr(), self.layout()) }
    }
}

/// Runs every battery function once, in the order [`battery!`] lists them,
/// with `a` for the functions that drive an allocator directly. Meant for a
/// quick end-to-end run; the per-allocator binaries use [`battery!`], which
/// reports each test separately.
pub fn run_all<A: GlobalAlloc + Sync>(a: &A, v: Volume) {
    routes::std_and_global_alloc_agree(a, v);
    collections::vec_and_string(v);
    collections::maps(v);
    collections::deque_and_boxed_slices(v);
    alignment::every_power_of_two(a, v);
    alignment::every_power_of_two(&Std, v);
    zeroed::after_dirty_frees(a, v);
    zeroed::after_dirty_frees(&Std, v);
    zeroed::vec_macro(v);
    zeroed::across_purges(a, v);
    realloc::grow_and_shrink(a, v);
    realloc::grow_and_shrink(&Std, v);
    realloc::jumps_across_boundaries(a, v);
    threads::cross_thread_frees(a, v);
    threads::many_short_lived(a, v);
    large::blocks(a, v);
    exhaustion::impossible_allocation(a, v);
    fork::from_multithreaded_parent(a, v);
    random::single_thread(a, v);
    random::multi_thread(a, v);
}

/// Expands into a test binary's `#[global_allocator]` and one `#[test]` per
/// battery function.
///
/// ```
/// heapkit_tests::battery! {
///     static GLOBAL: heapkit_slab::Slab = heapkit_slab::Slab::new();
/// }
/// # fn main() {}
/// ```
///
/// or, for an allocator that never reuses memory:
///
/// ```
/// heapkit_tests::battery! {
///     static GLOBAL: heapkit_bump::Bump = heapkit_bump::Bump::new();
///     volume = heapkit_tests::Volume::Light;
/// }
/// # fn main() {}
/// ```
///
/// A function of the battery can also be called on its own, with any
/// `GlobalAlloc` (here the system allocator, not installed globally):
///
/// ```
/// heapkit_tests::alignment::every_power_of_two(&std::alloc::System, heapkit_tests::Volume::Light);
/// ```
#[macro_export]
macro_rules! battery {
    (static $name:ident : $ty:ty = $init:expr ;) => {
        $crate::battery! {
            static $name: $ty = $init;
            volume = $crate::Volume::Full;
        }
    };
    (static $name:ident : $ty:ty = $init:expr ; volume = $volume:expr ;) => {
        #[global_allocator]
        static $name: $ty = $init;

        const VOLUME: $crate::Volume = $volume;

        #[test]
        fn std_and_global_alloc_are_one_allocator() {
            $crate::routes::std_and_global_alloc_agree(&$name, VOLUME)
        }
        #[test]
        fn collections_vec_and_string() {
            $crate::collections::vec_and_string(VOLUME)
        }
        #[test]
        fn collections_maps() {
            $crate::collections::maps(VOLUME)
        }
        #[test]
        fn collections_deque_and_boxed_slices() {
            $crate::collections::deque_and_boxed_slices(VOLUME)
        }
        #[test]
        fn alignment_every_power_of_two_global_alloc() {
            $crate::alignment::every_power_of_two(&$name, VOLUME)
        }
        #[test]
        fn alignment_every_power_of_two_std() {
            $crate::alignment::every_power_of_two(&$crate::Std, VOLUME)
        }
        #[test]
        fn zeroed_after_dirty_frees_global_alloc() {
            $crate::zeroed::after_dirty_frees(&$name, VOLUME)
        }
        #[test]
        fn zeroed_after_dirty_frees_std() {
            $crate::zeroed::after_dirty_frees(&$crate::Std, VOLUME)
        }
        #[test]
        fn zeroed_vec_macro() {
            $crate::zeroed::vec_macro(VOLUME)
        }
        #[test]
        fn zeroed_across_decay_purges() {
            $crate::zeroed::across_purges(&$name, VOLUME)
        }
        #[test]
        fn realloc_grow_and_shrink_global_alloc() {
            $crate::realloc::grow_and_shrink(&$name, VOLUME)
        }
        #[test]
        fn realloc_grow_and_shrink_std() {
            $crate::realloc::grow_and_shrink(&$crate::Std, VOLUME)
        }
        #[test]
        fn realloc_jumps_across_boundaries() {
            $crate::realloc::jumps_across_boundaries(&$name, VOLUME)
        }
        #[test]
        fn threads_cross_thread_frees_over_channels() {
            $crate::threads::cross_thread_frees(&$name, VOLUME)
        }
        #[test]
        fn threads_many_short_lived() {
            $crate::threads::many_short_lived(&$name, VOLUME)
        }
        #[test]
        fn large_blocks() {
            $crate::large::blocks(&$name, VOLUME)
        }
        #[test]
        fn impossible_allocation_returns_null() {
            $crate::exhaustion::impossible_allocation(&$name, VOLUME)
        }
        #[test]
        fn exhaustion_fill_free_refill() {
            $crate::exhaustion::fill_free_refill(&$name)
        }
        #[test]
        fn fork_from_multithreaded_parent() {
            $crate::fork::from_multithreaded_parent(&$name, VOLUME)
        }
        #[test]
        fn random_ops_single_thread() {
            $crate::random::single_thread(&$name, VOLUME)
        }
        #[test]
        fn random_ops_multi_thread() {
            $crate::random::multi_thread(&$name, VOLUME)
        }
    };
}
