//! Address space mapped ahead, carved into segment spans without a syscall.
//!
//! Every segment, chunk and large block starts on a [`SEGMENT_ALIGN`]
//! boundary and owns a whole number of segments of address space (its
//! *span*). Mapping each span on its own cost an `mmap` per fresh large
//! block (and per segment): 5-15 us inside `malloc`, the p99 latency of the
//! harness's `large` workload. Like mimalloc's arenas, heapkit instead maps
//! [`RESERVATION_BYTES`] at a time and hands spans out of it by moving a
//! pointer; the kernel gives the pages only when they are first touched, so
//! the untouched rest of a reservation costs address space, not memory.
//!
//! Spans are never carved twice: a span given back is unmapped (by
//! [`crate::large::unmap_segments`]) and its address space is not reused by
//! the reservation, so a fresh span is always zero. The reservation's
//! untouched remainder is unmapped when a new reservation does not follow it
//! directly, and by [`release`] at exhaustion (under `ulimit -v` the
//! remainder is address space another mapping may need).
//!
//! The lock is only ever tried: a busy lock (or, in a forked child, one
//! held by a thread of the parent) sends the caller to a mapping of its own.
//!
//! Only carved spans count as mapped ([`os::count_reserved_in_use`]): the statistics
//! and `mallinfo2` report what the allocators use, not what is reserved.
//!
//! Cost: a carve is a try-lock and two stores; one `mmap` per
//! [`RESERVATION_BYTES`]. Spans above a quarter of that are mapped on their
//! own.

use crate::lock::SpinLock;
use crate::os;
use crate::segment::SEGMENT_ALIGN;

/// Bytes mapped per reservation (16 segments).
pub const RESERVATION_BYTES: usize = 16 * SEGMENT_ALIGN;

/// The part of the current reservation not handed out yet.
///
/// Invariant: `next <= end`, both multiples of [`SEGMENT_ALIGN`];
/// `next..end` is mapped, untouched and unused (empty when `next == end`).
struct Reservation {
    /// Start of the next span to hand out.
    next: usize,
    /// End of the current reservation.
    end: usize,
}

static RESERVATION: SpinLock<Reservation> = SpinLock::new(Reservation { next: 0, end: 0 });

/// Hands out `span` bytes (a multiple of [`SEGMENT_ALIGN`]) of fresh,
/// zero, segment-aligned address space, or null when the span is too big
/// for a reservation, the lock is busy or the OS refuses (the caller then
/// maps the span itself).
pub fn carve(span: usize) -> *mut u8 {
    debug_assert!(span.is_multiple_of(SEGMENT_ALIGN) && span > 0);
    if span > RESERVATION_BYTES / 4 {
        return core::ptr::null_mut();
    }
    let Some(mut r) = RESERVATION.try_lock() else {
        return core::ptr::null_mut();
    };
    debug_assert!(r.next <= r.end);
    if r.end - r.next < span {
        let fresh = os::reserve_aligned(RESERVATION_BYTES, SEGMENT_ALIGN) as usize;
        if fresh == 0 {
            return core::ptr::null_mut();
        }
        if crate::options::get().huge_pages {
            // SAFETY: fresh..fresh+RESERVATION_BYTES was just mapped here.
            unsafe { os::advise_huge_pages(fresh as *mut u8, RESERVATION_BYTES) };
        }
        if fresh != r.end && r.next != r.end {
            // SAFETY: next..end is the old reservation's untouched, unused
            // remainder (the invariant), a page-aligned range of our mapping.
            unsafe { os::unreserve(r.next as *mut u8, r.end - r.next) };
        }
        if fresh != r.end {
            r.next = fresh;
        }
        // The hint area usually places the new reservation right after the
        // old one: the remainder and the new mapping are then one range.
        r.end = fresh + RESERVATION_BYTES;
    }
    let p = r.next;
    r.next += span;
    os::count_reserved_in_use(span);
    p as *mut u8
}

/// Unmaps the untouched remainder of the current reservation; returns
/// whether there was one. For exhaustion, when address space is short.
pub fn release() -> bool {
    let Some(mut r) = RESERVATION.try_lock() else {
        return false;
    };
    if r.next == r.end {
        return false;
    }
    // SAFETY: next..end is the untouched, unused remainder (the invariant).
    unsafe { os::unreserve(r.next as *mut u8, r.end - r.next) };
    r.next = 0;
    r.end = 0;
    true
}

/// Takes the lock so `fork()` finds it free; see [`after_fork_parent`].
pub fn before_fork() {
    RESERVATION.raw().lock();
}

/// Releases the lock taken by [`before_fork`] in the parent.
pub fn after_fork_parent() {
    // SAFETY: before_fork took the lock in this thread.
    unsafe { RESERVATION.raw().unlock() };
}

/// Re-initialises the lock in the child.
pub fn after_fork_child() {
    // SAFETY: called in the single-threaded child after fork.
    unsafe { RESERVATION.raw().reset_after_fork() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_aligned_zero_and_disjoint() {
        let a = carve(SEGMENT_ALIGN);
        let b = carve(2 * SEGMENT_ALIGN);
        // Another test may hold the lock: then there is nothing to check.
        if a.is_null() || b.is_null() {
            return;
        }
        assert!((a as usize).is_multiple_of(SEGMENT_ALIGN));
        assert!((b as usize).is_multiple_of(SEGMENT_ALIGN));
        let (lo, hi, lo_len) = if a < b {
            (a, b, SEGMENT_ALIGN)
        } else {
            (b, a, 2 * SEGMENT_ALIGN)
        };
        assert!(lo as usize + lo_len <= hi as usize);
        // SAFETY: both spans are ours, fresh and this long.
        unsafe {
            assert!((0..SEGMENT_ALIGN).step_by(4096).all(|i| *a.add(i) == 0));
            a.write_bytes(0xA5, SEGMENT_ALIGN);
            b.write_bytes(0x5A, 2 * SEGMENT_ALIGN);
            assert!((0..SEGMENT_ALIGN).all(|i| *a.add(i) == 0xA5));
            os::unmap(a, SEGMENT_ALIGN);
            os::unmap(b, 2 * SEGMENT_ALIGN);
        }
        assert!(carve(RESERVATION_BYTES).is_null());
    }
}
