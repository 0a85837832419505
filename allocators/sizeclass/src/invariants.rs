//! `check_invariants`: an expensive walk of the calling thread's heap
//! (tests and the `debug-invariants` feature).

use core::sync::atomic::Ordering::Relaxed;

use crate::classes::{heap_class_size, HEAP_CLASSES};

use heapkit_core::harden::Policy;

use crate::heap::{Heap, EMPTY};
use crate::mode::Mode;
use crate::page::{Page, PageState};
use crate::remote::Block;
use crate::segment::{Segment, SegmentKind};
use heapkit_core::harden::FreeMark;

/// Walks every page of the calling thread's heap and checks:
///
/// - every block on `free` / `local_free` / `thread_free` lies inside its
///   page at a block boundary below `capacity`, and none is listed twice;
/// - `|free| + |local_free| + used == capacity` once remote frees are
///   collected (collecting them is what the owner does anyway);
/// - every queued page is on its class's queue and every full page on its
///   full list, `current[class]` is the queue's first page or the sentinel,
///   and each segment's `used_pages` and the heap's dirty-page count match
///   the page states.
///
/// In hardened mode also: every listed block bears its free mark.
///
/// Returns the first violation found. Checks the default mode's heap; see
/// [`check_invariants_of`] for the other.
pub fn check_invariants() -> Result<(), &'static str> {
    check_invariants_of::<crate::DefaultPolicy>()
}

/// [`check_invariants`] of the calling thread's heap of mode `P`.
pub fn check_invariants_of<P: Policy>() -> Result<(), &'static str> {
    let h = P::heap();
    if P::heap_is_idle(h) {
        return Ok(()); // no heap bound: nothing to check
    }
    // Under the heap's lock: a reclaimer or the background purger may be
    // retiring or resetting its pages meanwhile (they take it too).
    // SAFETY: the calling thread's own heap.
    unsafe { (*h).lock.lock() };
    // SAFETY: as above, with its lock held.
    let result = unsafe { check_heap::<P>(&mut *h) };
    // SAFETY: taken above.
    unsafe { (*h).lock.unlock() };
    result
}

/// [`check_invariants_of`] with the heap's lock held.
///
/// # Safety
/// `h` is the calling thread's heap of mode `P`, its lock held.
unsafe fn check_heap<P: Mode>(h: &mut Heap) -> Result<(), &'static str> {
    // SAFETY: the calling thread's heap and its own segments/pages: others
    // push onto thread_free only (taken with the owner's swap), or hold
    // the lock we hold.
    unsafe {
        let mut listed = 0usize;
        for class in 0..HEAP_CLASSES {
            let cur = h.current[class];
            if cur != EMPTY && cur != h.queues[class].first {
                return Err("current page is not the queue's first");
            }
            for (list, state) in [
                (h.queues[class], PageState::Queued),
                (h.full[class], PageState::Full),
            ] {
                let mut p = list.first;
                let mut last = core::ptr::null_mut();
                while !p.is_null() {
                    if (*p).state != state || (*p).class as usize != class {
                        return Err("page on the wrong list");
                    }
                    if (*p).block_size as usize != heap_class_size(class) {
                        return Err("block size does not match class");
                    }
                    check_page::<P>(p)?;
                    listed += 1;
                    last = p;
                    p = (*p).next;
                }
                if last != list.last {
                    return Err("list tail mismatch");
                }
            }
        }
        let mut in_use = 0usize;
        let mut dirty = 0usize;
        for kind in SegmentKind::ALL {
            let mut seg = h.segments[kind.index()].first;
            while !seg.is_null() {
                if (*seg).owner.load(Relaxed) != h.id {
                    return Err("owned segment names another owner");
                }
                let mut used = 0;
                for i in 0..(*seg).page_count as usize {
                    let p = Segment::page(seg, i);
                    if (*p).state == PageState::Free {
                        dirty += usize::from((*p).dirty);
                    } else {
                        used += 1;
                    }
                }
                if used != (*seg).used_pages {
                    return Err("segment used_pages mismatch");
                }
                in_use += used as usize;
                seg = (*seg).next;
            }
        }
        if in_use != listed {
            return Err("pages in use are not all on a list");
        }
        if dirty != h.dirty_free {
            return Err("dirty free page count mismatch");
        }
    }
    Ok(())
}

/// Checks one in-use page.
///
/// # Safety
/// `p` must be a page of the calling thread's heap.
unsafe fn check_page<P: Mode>(p: *mut Page) -> Result<(), &'static str> {
    // SAFETY: caller guarantee.
    unsafe {
        Page::collect_remote::<P>(p);
        let mut seen = [0u64; 64];
        let size = (*p).stride as usize;
        let start = (*p).start as usize;
        let cap = (*p).capacity as usize;
        if cap > (*p).reserved as usize || (*p).reserved as usize > 64 * 64 {
            return Err("capacity out of range");
        }
        if (*p).dirty_end > (*p).reserved {
            return Err("dirty tail past the page's blocks");
        }
        let mut count = 0usize;
        for head in [(*p).free.load(Relaxed), (*p).local_free] {
            let mut b: *mut Block = head;
            while !b.is_null() {
                let a = b as usize;
                if a < start || !(a - start).is_multiple_of(size) || (a - start) / size >= cap {
                    return Err("listed block outside the page");
                }
                let i = (a - start) / size;
                if seen[i / 64] & (1 << (i % 64)) != 0 {
                    return Err("block listed twice");
                }
                seen[i / 64] |= 1 << (i % 64);
                count += 1;
                if P::BLOCK_STATE && !FreeMark::is_set_any(b.cast::<u8>(), (*p).key) {
                    return Err("a listed block lacks its free mark");
                }
                b = Page::next_free::<P>(p, b);
            }
        }
        let dropped = (*p).dropped.load(core::sync::atomic::Ordering::Relaxed) as usize;
        if count + Page::in_use(p) as usize + dropped != cap {
            return Err("free + local_free + used != capacity");
        }
        if ((*p).holes == 0) != (dropped == 0) {
            return Err("blocks dropped without holes, or holes without dropped blocks");
        }
        if ((*p).state == PageState::Full)
            != ((*p).used.load(core::sync::atomic::Ordering::Relaxed) & crate::page::FULL_FLAG != 0)
        {
            return Err("FULL_FLAG out of step with the page state");
        }
    }
    Ok(())
}
