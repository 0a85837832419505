//! The recorder's clock.

/// The recorder's clock: the time-stamp counter on x86-64 (constant rate and
/// synchronised across cores on every x86-64 CPU of the last decade). The
/// reader converts ticks to nanoseconds with the start and end times of the
/// trace. This one, read with `rdtscp` (which waits for earlier
/// instructions), stamps blocks, the start and the end.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn now_ticks() -> u64 {
    let mut aux = 0u32;
    // SAFETY: rdtscp has no memory-safety preconditions; aux is a valid
    // out-pointer. (Every x86-64 CPU since 2006 has it.)
    unsafe { core::arch::x86_64::__rdtscp(&mut aux) }
}

/// [`now_ticks`] for a record: a plain `rdtsc`, which the CPU may run a
/// few hundred cycles early or late. `rdtscp` waits for every earlier
/// instruction (the program's memset of the block it frees, say) and took
/// half of a free's record. Records of different threads are merged by
/// time, and the one order that matters, a block's free after its
/// allocation on another thread, is restored by the reader: an allocation
/// at an address still live waits for its free, and a free of an address
/// not live waits 50 us of trace time for its allocation.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn now_ticks_for_record() -> u64 {
    // SAFETY: rdtsc has no memory-safety preconditions.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The recorder's clock elsewhere: CLOCK_MONOTONIC nanoseconds (a system
/// call orders itself).
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(super) fn now_ticks() -> u64 {
    os::monotonic_ns()
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(super) fn now_ticks_for_record() -> u64 {
    os::monotonic_ns()
}
