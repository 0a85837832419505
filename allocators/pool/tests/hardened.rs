//! The hardened mode's bookkeeping on correct programs: blocks travel
//! through thread lists, spare batches, the depots and other threads with
//! encoded links and their free marks, the canary follows the request,
//! trim still releases whole chunks, and the two modes never share a
//! segment. (What it detects is tested under the shim: `misuse.c`.)

use core::alloc::Layout;
use std::sync::mpsc;

use heapkit_core::segment::{segment_of, SegmentTag, SEGMENT_ALIGN};
use heapkit_pool::{Fast, Hardened, HeapAlloc, Pool};

static HARD: Pool<Hardened> = Pool::hardened();
static FAST: Pool<Fast> = Pool::fast();

fn tag(p: *mut u8) -> SegmentTag {
    // SAFETY: p is a live block, so its segment's first word is mapped.
    unsafe { segment_of(p).cast::<SegmentTag>().read() }
}

#[test]
fn hardened_blocks_cross_threads_with_encoded_links() {
    let layout = Layout::from_size_align(100, 8).unwrap();
    let (tx, rx) = mpsc::channel::<Vec<usize>>();
    let producer = std::thread::spawn(move || {
        for round in 0..20u8 {
            let mut v = Vec::new();
            for _ in 0..2000 {
                let p = HARD.allocate(layout);
                assert!(!p.is_null());
                // SAFETY: p is live with 100 bytes.
                unsafe { p.write_bytes(round, 100) };
                v.push(p as usize);
            }
            tx.send(v).unwrap();
        }
    });
    let mut freed = Vec::new();
    for round in 0..20u8 {
        let v = rx.recv().unwrap();
        for &p in &v {
            let p = p as *mut u8;
            // SAFETY: p is live with 100 bytes; the canary follows.
            unsafe {
                assert!(core::slice::from_raw_parts(p, 100)
                    .iter()
                    .all(|&b| b == round));
                assert_eq!(HARD.usable_size(p), 100);
                assert_ne!(*p.add(100), round, "the canary follows the request");
                HARD.free(p);
            }
        }
        freed.extend(v);
    }
    producer.join().unwrap();
    // Freed blocks sit on lists: their first word is an encoded link, not
    // a plain address near the block (nor null, except list ends).
    let plain = freed
        .iter()
        .filter(|&&p| {
            // SAFETY: the chunks of freed blocks stay mapped until a trim.
            let word = unsafe { (p as *const usize).read() };
            word == 0 || (word ^ p) < SEGMENT_ALIGN
        })
        .count();
    assert!(
        plain < freed.len() / 8,
        "{plain} of {} links plain",
        freed.len()
    );
    // Reused blocks come back checked (marks and links), with no overlap.
    let mut again: Vec<usize> = (0..4000).map(|_| HARD.allocate(layout) as usize).collect();
    again.sort_unstable();
    again
        .windows(2)
        .for_each(|w| assert!(w[1] - w[0] >= 112, "overlap"));
    for &p in &again {
        assert_eq!(tag(p as *mut u8), SegmentTag::POOL_HARDENED);
        // SAFETY: live blocks, freed once.
        unsafe { HARD.free(p as *mut u8) };
    }
    let plain = FAST.allocate(layout);
    assert_eq!(tag(plain), SegmentTag::POOL);
    // SAFETY: a live block of FAST.
    unsafe { FAST.free(plain) };
    // Everything is free (the producer exited, its cache flushed): trim
    // walks the hardened lists (decoding every link) and releases chunks.
    assert!(HARD.trim() > 0);
}

#[test]
fn hardened_segments_end_with_a_guard_page() {
    let p = HARD.allocate(Layout::from_size_align(64, 8).unwrap());
    let end = segment_of(p) as usize + SEGMENT_ALIGN - 1;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let prot = maps
        .lines()
        .find_map(|l| {
            let (range, rest) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            let a = usize::from_str_radix(a, 16).ok()?;
            let b = usize::from_str_radix(b, 16).ok()?;
            (a <= end && end < b).then(|| rest[..4].to_string())
        })
        .unwrap_or_default();
    assert_eq!(prot, "---p");
    // SAFETY: a live block of HARD.
    unsafe { HARD.free(p) };
}
