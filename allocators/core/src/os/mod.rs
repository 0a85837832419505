//! Every call heapkit makes into the operating system.
//!
//! Nothing in this module allocates, panics or formats: it is called from
//! inside allocators, before `main`, from the dynamic loader and from fork
//! handlers. Failures are reported as null pointers or `false`, never as
//! `std::io::Error` (which may allocate a message).
//!
//! One file per kind of call: `memory` (mapping, purging, protecting),
//! `threads` (threads, fork and exit handlers, barriers), `process` (the
//! environment, files, stderr, ending the process), `symbols` (a loaded
//! library's own symbols), `constructors` (skipping a library's later
//! constructors); random bits, `errno` and the clock here.
//!
//! Mapping calls are counted in process-wide `Relaxed` counters that
//! [`os_counters`] reads; they feed the `os_*` and `mapped_bytes` fields of
//! [`Stats`](crate::Stats).

use core::ffi::c_int;

pub mod constructors;
mod memory;
mod process;
pub mod symbols;
pub mod thread_pointer;
mod threads;
#[cfg(target_arch = "x86_64")]
pub mod unwind;
mod zeroing;

pub use memory::*;
pub use process::*;
pub use threads::*;
pub use zeroing::*;

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
    let now = clock_ns(libc::CLOCK_MONOTONIC);
    mix64(now ^ stack.rotate_left(17) ^ code.rotate_left(41))
}

/// A strong 64-bit mixer (splitmix64's finaliser).
#[inline]
pub const fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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

/// Monotonic time in nanoseconds (`CLOCK_MONOTONIC`, read in the vDSO).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Monotonic time in nanoseconds, to the kernel's tick
/// (`CLOCK_MONOTONIC_COARSE`: 1-10 ms, 4 ms on a common `HZ=250` kernel),
/// for the time stamps the allocation slow paths take often: when a page
/// emptied, a large block was cached, a decay sweep is due. What they
/// time is a purge delay or a decay of a millisecond or more, so the tick
/// is precision enough, and it costs a quarter of [`monotonic_ns`] (8 ns
/// against 31 ns a call on a KVM guest's TSC clock: the stamp of an emptied
/// page was 30% of a loop that frees and allocates two 64-256 KiB blocks).
/// It lags [`monotonic_ns`] by less than a tick, so a stamp taken here and
/// compared with a precise reading looks at most a tick older. Idle
/// detection, which compares readings a millisecond apart, keeps the
/// precise clock.
pub fn coarse_monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// The coarsest tick [`coarse_monotonic_ns`] may have (a `HZ=100`
/// kernel): a span it measures may read up to this much short. Tests that
/// wait for a delay to pass wait this much longer.
pub const CLOCK_TICK_MAX_NS: u64 = 10_000_000;

/// `clock_gettime(clock)` in nanoseconds. Both clocks used here exist on
/// every kernel glibc supports (2.6.32 and up) and are normally read in
/// the vDSO, without a system call. Where the call fails anyway (no vDSO
/// and a seccomp filter refusing the call), the time reads as 0: decay
/// then never sees a delay pass, and memory goes back through the eager
/// purge, thread exit and `malloc_trim` only.
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; on failure it stays zero.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::ptr;

    /// The coarse clock never runs backwards, trails the precise one by
    /// less than a tick, and moves within a few ticks of real time.
    #[test]
    fn the_coarse_clock_trails_the_precise_one_by_under_a_tick() {
        let mut last = coarse_monotonic_ns();
        for _ in 0..1000 {
            // (A preemption between two readings only widens the window
            // each check allows.)
            let before = monotonic_ns();
            let coarse = coarse_monotonic_ns();
            let after = monotonic_ns();
            assert!(coarse >= last, "the coarse clock ran backwards");
            assert!(coarse <= after, "the coarse clock ran ahead");
            assert!(
                coarse + CLOCK_TICK_MAX_NS > before,
                "the coarse clock trails by a tick or more: {before} - {coarse}"
            );
            last = coarse;
        }
        let start = coarse_monotonic_ns();
        std::thread::sleep(std::time::Duration::from_nanos(3 * CLOCK_TICK_MAX_NS));
        assert!(coarse_monotonic_ns() - start >= 2 * CLOCK_TICK_MAX_NS);
    }

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

    /// `/proc/self/pagemap` tells a page only read (the shared zero page)
    /// from one written, zeros included; a page never touched is not
    /// present.
    #[test]
    fn shared_pages_counts_pages_only_read() {
        let page = page_size();
        let p = map(4 * page);
        assert!(!p.is_null());
        // SAFETY: p maps 4 fresh pages, ours alone.
        unsafe {
            let _ = p.read_volatile();
            p.add(page).write_bytes(0, page);
            p.add(2 * page).write(7);
        }
        match memory::shared_pages(p, 4) {
            Some(shared) => assert_eq!(shared, 1, "only page 0 was only read"),
            None => std::eprintln!("SKIP: /proc/self/pagemap unreadable here"),
        }
        // SAFETY: p maps 4 pages, unused from here.
        unsafe { unmap(p, 4 * page) };
    }

    /// `zero_dead` zeroes every byte either way; a block its last user
    /// filled is memset (it stays resident: no purge, no fault to come), one
    /// its last user touched a page of is purged (it no longer takes
    /// memory), so is one resident from an earlier memset whose last user
    /// wrote a few bytes, but not one its users read whole after a purge
    /// (the purge was wasted: its pages came back); a dense block
    /// remembered as dense but purged since is still zeroed (the verdict
    /// only picks the method).
    #[test]
    fn zero_dead_memsets_dense_blocks_and_purges_sparse_ones() {
        let page = page_size();
        let pages = 64;
        let len = pages * page;
        let p = map(len + page);
        assert!(!p.is_null());
        // The block starts 64 bytes into the mapping, like a large block
        // after its header: its first and last pages are partial.
        // SAFETY: p maps len + page bytes, ours alone; every range below
        // lies inside it.
        unsafe {
            let block = p.add(64);
            let all_zero = |b: *mut u8| (0..len).all(|i| *b.add(i) == 0);
            let resident = |want: bool| {
                let mut r = [false; 64];
                assert!(resident_pages(p.add(page), &mut r[..pages - 1]));
                r[..pages - 1].iter().filter(|&&x| x == want).count()
            };

            // Dense: filled by its last user.
            // (Residency tells the method: a purge leaves no page resident,
            // a memset every page. The process-wide purge counter would
            // not: other tests purge at the same time.)
            block.write_bytes(0xC3, len);
            zero_dead(block, len);
            assert_eq!(resident(true), pages - 1, "a dense block was purged");
            assert!(all_zero(block), "a dense block was not zeroed");

            // Remembered as dense, then purged behind the verdict's back
            // and written sparsely: still zeroed.
            purge(p.add(page), (pages - 1) * page);
            block.add(len / 2).write(0x77);
            block.add(len - 1).write(0x77);
            zero_dead(block, len);
            assert!(all_zero(block), "a remembered block was not zeroed");

            // Sparse: the dense memory is dropped (another block's verdict
            // cannot hold it: sample a fresh address), then a few bytes
            // written.
            let sparse = p.add(256 + 128);
            purge(p.add(page), (pages - 1) * page);
            let sparse_len = len - 256 - 128;
            for at in [0, sparse_len / 3, sparse_len / 2, sparse_len - 1] {
                sparse.add(at).write(0x99);
            }
            zero_dead(sparse, sparse_len);
            // (Before reading it: a read maps the zero page, which mincore
            // counts as resident.)
            assert_eq!(resident(true), 0, "a sparse block was memset");
            assert!(
                (0..sparse_len).all(|i| *sparse.add(i) == 0),
                "a sparse block was not zeroed"
            );

            // Resident but zero (an earlier memset of ours made it so),
            // then a few bytes written: sparse by its contents, purged.
            // (Each block below starts in its own 256 bytes: a verdict's
            // key is the address's bits above 255.)
            let zeroed = p.add(512 + 64);
            let zeroed_len = len - 512 - 64;
            zeroed.write_bytes(0, zeroed_len);
            for at in [0, zeroed_len / 2, zeroed_len - 1] {
                zeroed.add(at).write(0x5E);
            }
            zero_dead(zeroed, zeroed_len);
            assert_eq!(
                resident(true),
                0,
                "a block memset before and written sparsely was memset"
            );
            assert!(
                (0..zeroed_len).all(|i| *zeroed.add(i) == 0),
                "a block memset before was not zeroed"
            );

            // Read whole after our purge, a few bytes written: the purge
            // was wasted (its pages came back). Seen once (pagemap shows
            // the zero page; where it cannot be read, twice in a row), the
            // block is memset from then on, also once its memset pages
            // read as zeros (80 rounds: the verdict is sampled again after
            // every 31 reuses).
            let read = p.add(768 + 64);
            let read_len = len - 768 - 64;
            purge(p.add(page), (pages - 1) * page);
            let mut purged = [false; 80];
            for (round, purged) in purged.iter_mut().enumerate() {
                let mut sum = 0u32;
                for i in (0..read_len).step_by(64) {
                    sum += u32::from(read.add(i).read_volatile());
                }
                assert_eq!(sum, 0, "round {round}: a zeroed block read other than zero");
                for at in [0, read_len / 2, read_len - 1] {
                    read.add(at).write(0x3C);
                }
                zero_dead(read, read_len);
                *purged = resident(false) != 0;
            }
            let purges: std::vec::Vec<usize> = (0..80).filter(|&r| purged[r]).collect();
            assert!(
                purges.len() <= 2 && purges.iter().all(|&r| r < 40),
                "a block read whole was purged in rounds {purges:?}"
            );
            assert!((0..read_len).all(|i| *read.add(i) == 0));

            // Zeros written whole after our purge (a `realloc` copy of a
            // sparse block), a few bytes besides: not read, so purged
            // again where pagemap can tell.
            let copied = p.add(1024 + 64);
            let copied_len = len - 1024 - 64;
            purge(p.add(page), (pages - 1) * page);
            for round in 0..3 {
                copied.write_bytes(0, copied_len);
                for at in [0, copied_len / 2, copied_len - 1] {
                    copied.add(at).write(0x4B);
                }
                zero_dead(copied, copied_len);
                assert!((0..copied_len).all(|i| *copied.add(i) == 0));
                if memory::shared_pages(p.add(page), 1).is_some() {
                    // (Read above: the pages are resident again, each
                    // mapping the zero page.)
                    assert_eq!(
                        memory::shared_pages(p.add(page), pages - 1),
                        Some(pages - 1),
                        "round {round}: a block written with zeros was memset"
                    );
                }
                purge(p.add(page), (pages - 1) * page);
            }

            // Under 64 KiB of whole pages: always a memset.
            let small = p.add(64);
            purge(p.add(page), (pages - 1) * page);
            small.add(8 * page - 1).write(0x11);
            zero_dead(small, 8 * page);
            let mut r = [false; 8];
            assert!(resident_pages(p.add(page), &mut r));
            assert!(r.iter().all(|&x| x), "a range under 64 KiB was purged");
            assert!((0..8 * page).all(|i| *small.add(i) == 0));
            unmap(p, len + page);
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
