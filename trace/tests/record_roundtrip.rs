//! The recorder driven directly (no shim): several threads record
//! allocations, cross-thread frees, reallocs and unknown frees; the file it
//! writes must parse back to exactly those operations. Then the same file,
//! truncated at every offset and with bytes flipped, must be rejected with
//! an offset and never panic the reader.
//!
//! One test function: the recorder is process-wide and finishes once.

use std::sync::mpsc;

use heapkit_trace::{record, schedule, Op, Trace};

const THREADS: usize = 4;
const PER_THREAD: usize = 3000;

fn fake_ptr(thread: usize, i: usize) -> *mut u8 {
    (0x1000_0000_0000usize + (thread << 32) + i * 64) as *mut u8
}

#[test]
fn recorder_round_trip_and_corrupt_traces() {
    let dir = std::env::temp_dir().join(format!("hkt-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rt.hkt");
    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert!(record::start(&cpath));
    assert!(record::enabled());
    assert!(!record::start(&cpath), "second start must refuse");

    // Thread t allocates PER_THREAD blocks of size t*100+i%50+1; it frees
    // the even ones itself and hands the odd ones to thread (t+1) % THREADS,
    // which frees them. Every 10th block is reallocated first.
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..THREADS).map(|_| mpsc::channel::<usize>()).unzip();
    let mut expected_ops = 0usize;
    let handles: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(t, rx)| {
            let tx = senders[(t + 1) % THREADS].clone();
            std::thread::spawn(move || {
                let mut moved = Vec::new();
                for i in 0..PER_THREAD {
                    let p = fake_ptr(t, i);
                    let align = if i % 7 == 0 { 64 } else { 16 };
                    record::on_alloc(p, t * 100 + i % 50 + 1, align, i % 5 == 0);
                    let mut cur = p;
                    if i % 10 == 0 {
                        let q = fake_ptr(t + 8, i);
                        record::on_realloc(cur, q, 4000 + i);
                        cur = q;
                    }
                    if i % 2 == 0 {
                        record::on_free(cur);
                    } else {
                        moved.push(cur as usize);
                    }
                }
                for p in moved {
                    tx.send(p).unwrap();
                }
                drop(tx);
                let mut freed = 0;
                while let Ok(p) = rx.recv() {
                    record::on_free(p as *mut u8);
                    // The address is handed out again, on this thread: a
                    // new object the reader must tell from the old one.
                    record::on_alloc(p as *mut u8, 777_777, 16, false);
                    record::on_free(p as *mut u8);
                    freed += 1;
                }
                freed
            })
        })
        .collect();
    drop(senders);
    // Main thread: an unknown free and a failed realloc (records nothing).
    record::on_free(0xdead_0000 as *mut u8);
    record::on_alloc(0xbeef_0000 as *mut u8, 10, 0, false);
    record::on_realloc(0xbeef_0000 as *mut u8, std::ptr::null_mut(), 1 << 40); // failed
    record::on_free(0xbeef_0000 as *mut u8); // still live: the failed realloc kept it
    expected_ops += 3;
    for h in handles {
        assert_eq!(h.join().unwrap(), PER_THREAD / 2);
    }
    // Per thread: allocs, reallocs, frees, and 2 ops per re-used address.
    expected_ops += THREADS * (PER_THREAD + PER_THREAD / 10 + PER_THREAD + PER_THREAD);
    record::finish();
    assert!(!record::enabled());
    assert_eq!(record::dropped(), 0);

    let bytes = std::fs::read(&path).unwrap();
    let trace = Trace::open(&path).unwrap();
    assert_eq!(trace.op_count(), expected_ops);
    assert_eq!(trace.threads.len(), THREADS + 1);
    let count = |f: fn(&Op) -> bool| trace.threads.iter().flatten().filter(|e| f(&e.op)).count();
    assert_eq!(count(|op| matches!(op, Op::FreeUnknown)), 1);
    assert_eq!(
        count(|op| matches!(op, Op::Realloc { .. })),
        THREADS * PER_THREAD / 10
    );
    assert_eq!(
        count(|op| matches!(op, Op::Alloc { zeroed: true, .. })),
        THREADS * PER_THREAD / 5
    );
    assert_eq!(
        count(|op| matches!(op, Op::Alloc { align_log2: 6, .. })),
        THREADS * PER_THREAD.div_ceil(7)
    );
    // Every object created is ended exactly once.
    let creates = trace
        .threads
        .iter()
        .flatten()
        .filter(|e| e.op.creates().is_some())
        .count();
    let ends = trace
        .threads
        .iter()
        .flatten()
        .filter(|e| e.op.ends().is_some())
        .count();
    assert_eq!(creates, trace.objects.len());
    assert_eq!(ends, trace.objects.len());
    // Sizes survive: some thread-2 block of 2*100+49+1 bytes.
    assert!(trace.objects.iter().any(|o| o.size == 250));
    // Re-used addresses became objects of their own.
    assert_eq!(
        trace.objects.iter().filter(|o| o.size == 777_777).count(),
        THREADS * PER_THREAD / 2
    );
    let cross = heapkit_trace::summary::Summary::of(&trace)
        .unwrap()
        .cross_thread_frees;
    assert_eq!(cross, THREADS * PER_THREAD / 2);
    let order = schedule::schedule(&trace).unwrap();
    assert_eq!(order.len(), expected_ops);
    assert!(schedule::peak_live_bytes(&trace, &order) > 0);
    // ~4-7 bytes per record.
    assert!(bytes.len() < expected_ops * 10, "{} bytes", bytes.len());

    corrupt_traces_are_rejected(&bytes);
    std::fs::remove_dir_all(&dir).ok();
}

fn corrupt_traces_are_rejected(good: &[u8]) {
    let whole = Trace::parse(good).unwrap();
    // Keep the quadratic loops quick: a prefix ending at a block boundary is
    // as good as the whole file for truncation, but check the whole file
    // at a stride and the header exhaustively.
    for len in 0..good.len() {
        if len > 4096 && len % (good.len() / 300 + 1) != 0 && len + 64 < good.len() {
            continue;
        }
        let e = Trace::parse(&good[..len]).expect_err("a truncated trace must be rejected");
        assert!(
            e.offset as usize <= len,
            "offset {} beyond length {len}",
            e.offset
        );
        // Salvage: any cut after the header reads the complete blocks
        // before it, with a warning; a cut header is still an error.
        match Trace::parse_salvaging(&good[..len]) {
            Ok((t, warning)) => {
                assert!(len >= 32, "salvaged a cut header at {len}");
                assert!(warning.is_some(), "no warning at {len}");
                assert!(t.op_count() <= whole.op_count());
            }
            Err(_) => assert!(len < 32, "not salvaged at {len}"),
        }
    }
    let (t, warning) = Trace::parse_salvaging(good).unwrap();
    assert!(warning.is_none());
    assert_eq!(t.op_count(), whole.op_count());
    // Wrong version.
    let mut v = good.to_vec();
    let next = heapkit_trace::format::VERSION + 1;
    v[8] = next as u8;
    let e = Trace::parse(&v).unwrap_err();
    assert_eq!(e.offset, 8);
    assert!(e.to_string().contains(&format!("version {next}")), "{e}");
    // Flipped bytes: never a panic; inside a block payload always an error
    // (checksum), and the error names an offset inside the file.
    let mut rejected = 0;
    let mut tried = 0;
    for at in (0..good.len()).step_by(good.len() / 1000 + 1) {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut v = good.to_vec();
            v[at] ^= mask;
            tried += 1;
            if let Err(e) = Trace::parse(&v) {
                assert!(e.offset as usize <= v.len());
                rejected += 1;
            }
        }
    }
    // Only timestamps, pid and reserved words are unprotected.
    assert!(
        rejected * 10 >= tried * 8,
        "{rejected} of {tried} flips rejected"
    );
}
