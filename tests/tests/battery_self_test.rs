//! The battery tested against itself.
//!
//! 1. The whole battery, light volume, in one test with the system allocator
//!    (this binary's default global allocator): a quick end-to-end run.
//! 2. Mutation tests: deliberately broken allocators (each wrapping the
//!    system allocator with one bug an allocator could really have) are
//!    passed to the battery functions, which must fail. A battery test that
//!    passes a broken allocator proves nothing about a working one.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use heapkit_tests::Volume;

#[test]
fn whole_battery_light_on_system() {
    heapkit_tests::run_all(&System, Volume::Light);
}

/// Runs `f` and requires it to panic with a message containing one of the
/// `|`-separated words of `expect`.
fn must_fail(expect: &str, f: impl FnOnce()) {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("the battery passed a broken allocator");
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        expect.split('|').any(|e| msg.contains(e)),
        "failed, but for another reason: {msg}"
    );
}

/// Ignores alignments above 16: returns 16 bytes past an aligned block.
struct Misaligned;

// SAFETY: a deliberately broken allocator, used only in this test, never
// installed globally; its blocks are valid memory, just misaligned.
unsafe impl GlobalAlloc for Misaligned {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.align() <= 16 {
            // SAFETY: forwarded.
            return unsafe { System.alloc(l) };
        }
        let inner = Layout::from_size_align(l.size() + 16, l.align()).expect("valid");
        // SAFETY: non-zero size.
        let p = unsafe { System.alloc(inner) };
        // SAFETY: 16 bytes in bounds of inner.
        unsafe { p.add(16) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if l.align() <= 16 {
            // SAFETY: forwarded.
            return unsafe { System.dealloc(p, l) };
        }
        let inner = Layout::from_size_align(l.size() + 16, l.align()).expect("valid");
        // SAFETY: undoes alloc.
        unsafe { System.dealloc(p.sub(16), inner) }
    }
}

#[test]
fn alignment_test_catches_ignored_alignment() {
    must_fail("not aligned", || {
        heapkit_tests::alignment::every_power_of_two(&Misaligned, Volume::Light)
    });
}

/// `alloc_zeroed` that forgets to zero (as if it assumed reused memory was
/// fresh from the OS).
struct NotZeroing;

// SAFETY: test-only broken allocator; memory is valid, just not zeroed.
unsafe impl GlobalAlloc for NotZeroing {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(p, l) }
    }
}

#[test]
fn zeroed_test_catches_dirty_zeroed_memory() {
    must_fail("non-zero", || {
        heapkit_tests::zeroed::after_dirty_frees(&NotZeroing, Volume::Light)
    });
    must_fail("non-zero", || {
        heapkit_tests::zeroed::across_purges(&NotZeroing, Volume::Light)
    });
}

/// realloc that drops the last byte when it moves a block.
struct ReallocDropsLastByte;

// SAFETY: test-only broken allocator; memory is valid, contents wrong.
unsafe impl GlobalAlloc for ReallocDropsLastByte {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let nl = Layout::from_size_align(new_size, l.align()).expect("valid");
        // SAFETY: non-zero size.
        let q = unsafe { System.alloc(nl) };
        // SAFETY: both live; copies one byte less than it should.
        unsafe {
            std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size).saturating_sub(1));
            System.dealloc(p, l);
        }
        q
    }
}

#[test]
fn realloc_tests_catch_lost_contents() {
    must_fail("lost contents", || {
        heapkit_tests::realloc::grow_and_shrink(&ReallocDropsLastByte, Volume::Light)
    });
    must_fail("lost contents", || {
        heapkit_tests::realloc::jumps_across_boundaries(&ReallocDropsLastByte, Volume::Light)
    });
    must_fail("lost contents", || {
        heapkit_tests::random::single_thread(&ReallocDropsLastByte, Volume::Light)
    });
}

/// Hands out the most recently freed small block again without taking it
/// off its one-slot cache: two live blocks can share an address.
struct DoubleHandout;

static LAST_FREED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: test-only broken allocator; every small block is a valid 64-byte
// block from System (cached ones are leaked, never freed twice).
unsafe impl GlobalAlloc for DoubleHandout {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() <= 64 && l.align() <= 16 {
            let last = LAST_FREED.load(Ordering::Relaxed);
            if last != 0 {
                return last as *mut u8;
            }
            // SAFETY: non-zero size.
            return unsafe { System.alloc(Layout::from_size_align(64, 16).expect("valid")) };
        }
        // SAFETY: forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if l.size() <= 64 && l.align() <= 16 {
            LAST_FREED.store(p as usize, Ordering::Relaxed);
            return;
        }
        // SAFETY: forwarded.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let small = |size: usize| size <= 64 && l.align() <= 16;
        if small(l.size()) && small(new_size) {
            return p; // the block is 64 bytes: fits in place
        }
        let nl = Layout::from_size_align(new_size, l.align()).expect("valid");
        // SAFETY: non-zero size.
        let q = unsafe { self.alloc(nl) };
        // SAFETY: q is a different block from p (one of them is not small,
        // and small and large blocks never share memory).
        unsafe {
            std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size));
            self.dealloc(p, l);
        }
        q
    }
}

#[test]
fn random_ops_catch_a_block_handed_out_twice() {
    must_fail("overlaps|corrupted", || {
        heapkit_tests::random::single_thread(&DoubleHandout, Volume::Light)
    });
    must_fail("overlaps|corrupted", || {
        heapkit_tests::random::multi_thread(&DoubleHandout, Volume::Light)
    });
}

/// Serves every block of 1 MiB or more from one shared region, so large
/// blocks alias each other.
struct LargeAliased;

static REGION: AtomicUsize = AtomicUsize::new(0);
const REGION_SIZE: usize = 40 << 20;

// SAFETY: test-only broken allocator; every large block lies inside one
// valid region that is never freed (blocks alias each other).
unsafe impl GlobalAlloc for LargeAliased {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() < 1 << 20 {
            // SAFETY: forwarded.
            return unsafe { System.alloc(l) };
        }
        let mut r = REGION.load(Ordering::Relaxed);
        if r == 0 {
            // SAFETY: non-zero size.
            r = unsafe {
                System.alloc(Layout::from_size_align(REGION_SIZE, 1 << 20).expect("valid"))
            } as usize;
            REGION.store(r, Ordering::Relaxed);
        }
        r as *mut u8
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if l.size() < 1 << 20 {
            // SAFETY: forwarded.
            unsafe { System.dealloc(p, l) }
        }
    }
}

#[test]
fn large_block_test_catches_aliasing() {
    must_fail("overlap", || {
        heapkit_tests::large::blocks(&LargeAliased, Volume::Light)
    });
}

/// Pretends to succeed where it must fail: impossible sizes get a dangling,
/// non-null pointer (never dereferenced: the battery checks for null first).
struct NeverNull;

// SAFETY: test-only broken allocator; the dangling pointers it returns for
// impossible sizes are never used by the test that receives them.
unsafe impl GlobalAlloc for NeverNull {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() > 1 << 40 {
            return l.align() as *mut u8;
        }
        // SAFETY: forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(p, l) }
    }
}

#[test]
fn exhaustion_test_catches_a_non_null_impossible_block() {
    must_fail("not null", || {
        heapkit_tests::exhaustion::impossible_allocation(&NeverNull, Volume::Light)
    });
}

/// Hangs in a forked child (as if it waited on a lock held by a thread that
/// does not exist there).
struct HangsAfterFork;

static PARENT_PID: AtomicI32 = AtomicI32::new(0);

// SAFETY: test-only broken allocator: forwards, but spins forever when
// called in a process other than the first one that used it.
unsafe impl GlobalAlloc for HangsAfterFork {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let parent = match PARENT_PID.compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => me,
            Err(p) => p,
        };
        if me != parent {
            // The deliberate hang: spin until SIGALRM kills this child.
            loop {
                std::hint::spin_loop();
            }
        }
        // SAFETY: forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(p, l) }
    }
}

#[test]
fn fork_test_catches_a_deadlocked_child() {
    must_fail("timed out", || {
        heapkit_tests::fork::with_child_timeout(&HangsAfterFork, Volume::Light, 1)
    });
}
