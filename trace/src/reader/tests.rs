use super::*;
use crate::format::{put_varint, zigzag};

/// (kind, ticks, addr, new addr, size) records of one thread.
type Rec = (u8, u64, u64, u64, u64);

/// Encodes a trace by hand: one block per thread.
fn encode(threads: &[&[Rec]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&format::MAGIC);
    out.extend_from_slice(&format::VERSION.to_le_bytes());
    out.extend_from_slice(&(format::HEADER_LEN as u16).to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // pid
    out.extend_from_slice(&0u64.to_le_bytes()); // start_ns
    out.extend_from_slice(&0u64.to_le_bytes()); // start_ticks
    let mut total = 0u64;
    for (t, recs) in threads.iter().enumerate() {
        let mut payload = Vec::new();
        let (mut prev_ticks, mut prev) = (0u64, 0u64);
        let put = |payload: &mut Vec<u8>, v: u64| {
            let mut b = [0u8; 10];
            // SAFETY: b has 10 bytes.
            let n = unsafe { put_varint(b.as_mut_ptr(), v) };
            payload.extend_from_slice(&b[..n]);
        };
        for &(kind, ticks, a, b, size) in recs.iter() {
            payload.push(kind);
            put(&mut payload, ticks - prev_ticks);
            prev_ticks = ticks;
            // Stacks: `a` is the weight; STACK has `size` frames
            // b, b + 1, ...; SAME_STACK names stack id `size`.
            if kind == format::KIND_STACK || kind == format::KIND_SAME_STACK {
                put(&mut payload, a);
                put(&mut payload, size);
                if kind == format::KIND_STACK {
                    for i in 0..size {
                        put(&mut payload, zigzag(if i == 0 { b } else { 1 } as i64));
                    }
                }
                continue;
            }
            put(&mut payload, zigzag(a.wrapping_sub(prev) as i64));
            prev = a;
            if kind == format::KIND_REALLOC {
                put(&mut payload, zigzag(b.wrapping_sub(a) as i64));
                prev = b;
            }
            if kind & format::KIND_MASK != format::KIND_FREE {
                put(&mut payload, size);
            }
            // An ALLOC with STACK_ID: `b` is the stack id.
            if kind & format::FLAG_STACK_ID != 0 {
                put(&mut payload, b);
            }
        }
        out.extend_from_slice(&format::BLOCK_TAG.to_le_bytes());
        out.extend_from_slice(&(t as u32).to_le_bytes());
        out.extend_from_slice(&(recs.len() as u32).to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&format::checksum(&payload).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&payload);
        total += recs.len() as u64;
    }
    out.extend_from_slice(&format::END_TAG.to_le_bytes());
    out.extend_from_slice(&(threads.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&1000u64.to_le_bytes()); // end ticks
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&1000u64.to_le_bytes()); // end ns
    out
}

const A: u8 = format::KIND_ALLOC;
const F: u8 = format::KIND_FREE;
const R: u8 = format::KIND_REALLOC;

#[test]
fn a_free_stamped_just_before_its_allocation_follows_it() {
    // Thread 1 frees (and reallocates from) blocks thread 0 allocated,
    // stamped a few ticks before those allocations (an early clock
    // read); 0x7000 was never allocated in the trace.
    let t0: &[Rec] = &[(A, 20, 0x5000, 0, 8), (A, 30, 0x6000, 0, 16)];
    let t1: &[Rec] = &[
        (F, 18, 0x5000, 0, 0),
        (R, 29, 0x6000, 0x8000, 32),
        (F, 40, 0x7000, 0, 0),
        (A, 50, 0x7000, 0, 4),
    ];
    let t = Trace::parse(&encode(&[t0, t1])).unwrap();
    assert_eq!(t.threads[1][0].op, Op::Free { obj: 0 });
    assert_eq!(
        t.threads[1][1].op,
        Op::Realloc {
            old: 1,
            new: 2,
            size: 32
        }
    );
    assert_eq!(t.threads[1][2].op, Op::FreeUnknown);
    assert!(matches!(t.threads[1][3].op, Op::Alloc { size: 4, .. }));
    let s = crate::summary::Summary::of(&t).unwrap();
    assert_eq!((s.frees, s.unknown_frees), (1, 1));
}

/// A profile's record without its own clock read (dt 0) carries its
/// thread's last read: a free stamped that way may come long before
/// the allocation it ends on another thread, and is held until its
/// thread's next read, not only 50 us.
#[test]
fn a_free_without_its_own_clock_read_waits_for_its_threads_next() {
    let t0: &[Rec] = &[(A, 200_000, 0x5000, 0, 8)];
    let t1: &[Rec] = &[
        (A, 100, 0x9000, 0, 8),
        // Stamped with the read before (dt 0); happened after t0's
        // allocation, before this thread's next read.
        (F, 100, 0x5000, 0, 0),
        (A, 300_000, 0xa000, 0, 8),
    ];
    let t = Trace::parse(&encode(&[t0, t1])).unwrap();
    let Op::Alloc { obj, .. } = t.threads[0][0].op else {
        panic!("{:?}", t.threads[0][0]);
    };
    assert_eq!(t.threads[1][1].op, Op::Free { obj });
    // Its time is not before the allocation's.
    assert!(t.threads[1][1].ts >= t.threads[0][0].ts);
    let s = crate::summary::Summary::of(&t).unwrap();
    assert_eq!(s.unknown_frees, 0);
}

#[test]
fn reused_address_waits_for_the_realloc_that_released_it() {
    // Thread 0 reallocates 0x1000 away to 0x2000 (stamped after the
    // call, t=30); inside that call the allocator handed 0x1000 to
    // thread 1 (stamped t=20, earlier). The reader must not treat the
    // realloc as ending thread 1's block.
    let t0: &[Rec] = &[
        (A, 10, 0x1000, 0, 8),
        (R, 30, 0x1000, 0x2000, 64),
        (F, 50, 0x2000, 0, 0),
    ];
    let t1: &[Rec] = &[
        (A, 20, 0x1000, 0, 24),
        (F, 40, 0x1000, 0, 0),
        (F, 45, 0x9000, 0, 0),
    ];
    let t = Trace::parse(&encode(&[t0, t1])).unwrap();
    assert_eq!(t.objects.len(), 3);
    assert_eq!(
        t.threads[0][1].op,
        Op::Realloc {
            old: 0,
            new: 1,
            size: 64
        }
    );
    assert_eq!(t.threads[0][2].op, Op::Free { obj: 1 });
    let Op::Alloc { obj, size: 24, .. } = t.threads[1][0].op else {
        panic!("{:?}", t.threads[1][0]);
    };
    assert_eq!(t.threads[1][1].op, Op::Free { obj });
    assert_eq!(t.threads[1][2].op, Op::FreeUnknown);
    let s = crate::summary::Summary::of(&t).unwrap();
    assert_eq!(
        (s.allocs, s.reallocs, s.frees, s.unknown_frees),
        (2, 1, 2, 1)
    );
    assert_eq!(s.peak_live_bytes, 64 + 24);
}

#[test]
fn repeated_stacks_are_named_by_the_threads_stack_ids() {
    const S: u8 = format::KIND_STACK;
    const SAME: u8 = format::KIND_SAME_STACK;
    let t0: &[Rec] = &[
        (S, 1, 8, 0x400000, 3),
        (A, 2, 0x1000, 0, 8),
        (S, 3, 16, 0x500000, 2),
        (A, 4, 0x2000, 0, 16),
        (SAME, 5, 32, 0, 0),
        (A, 6, 0x3000, 0, 32),
    ];
    // Thread 1's ids are its own: its stack 0 is not thread 0's. (Its
    // records come later, so objects 0-2 are thread 0's.)
    let t1: &[Rec] = &[
        (S, 101, 8, 0x600000, 1),
        (A, 102, 0x4000, 0, 8),
        (SAME, 103, 8, 0, 0),
        (A, 104, 0x5000, 0, 8),
    ];
    let t = Trace::parse(&encode(&[t0, t1])).unwrap();
    let stack_of = |obj: usize| &t.stacks[t.objects[obj].stack as usize];
    assert_eq!(stack_of(0), &[0x400000, 0x400001, 0x400002]);
    assert_eq!(stack_of(1), &[0x500000, 0x500001]);
    assert_eq!(stack_of(2), stack_of(0));
    assert_eq!(t.objects[2].weight, 32);
    let thread1: Vec<_> = (0..t.objects.len())
        .filter(|&o| stack_of(o)[..] == [0x600000])
        .collect();
    assert_eq!(thread1.len(), 2);
    // A reference to a stack the thread has not recorded is corrupt.
    let bad: &[Rec] = &[
        (S, 1, 8, 0x400000, 1),
        (SAME, 2, 8, 0, 1),
        (A, 3, 0x1000, 0, 8),
    ];
    let e = Trace::parse(&encode(&[bad])).unwrap_err();
    assert!(e.message.contains("reference to stack 1"), "{e}");
}

/// Version 3: an allocation names its thread's earlier stack itself,
/// and weighs its own size.
#[test]
fn an_allocation_names_its_stack_by_id() {
    const S: u8 = format::KIND_STACK;
    const A_ID: u8 = format::KIND_ALLOC | format::FLAG_STACK_ID;
    let t0: &[Rec] = &[
        (S, 1, 8, 0x400000, 2),
        (A, 2, 0x1000, 0, 8),
        (S, 3, 16, 0x500000, 1),
        (A, 4, 0x2000, 0, 16),
        (A_ID, 5, 0x3000, 0, 40),
        (A_ID, 6, 0x4000, 1, 24),
    ];
    let t = Trace::parse(&encode(&[t0])).unwrap();
    let stack_of = |obj: usize| &t.stacks[t.objects[obj].stack as usize];
    assert_eq!(stack_of(2), &[0x400000, 0x400001]);
    assert_eq!(t.objects[2].weight, 40);
    assert_eq!(stack_of(3), &[0x500000]);
    assert_eq!(t.objects[3].weight, 24);
    let bad: &[Rec] = &[
        (S, 1, 8, 0x400000, 1),
        (A, 2, 0x1000, 0, 8),
        (A_ID, 3, 0x2000, 1, 8),
    ];
    let e = Trace::parse(&encode(&[bad])).unwrap_err();
    assert!(e.message.contains("reference to stack 1"), "{e}");
    // A STACK record and a STACK_ID for one allocation: corrupt.
    let twice: &[Rec] = &[
        (S, 1, 8, 0x400000, 1),
        (A, 2, 0x1000, 0, 8),
        (S, 3, 8, 0x500000, 1),
        (A_ID, 4, 0x2000, 0, 8),
    ];
    let e = Trace::parse(&encode(&[twice])).unwrap_err();
    assert!(e.message.contains("two stacks"), "{e}");
}

#[test]
fn an_address_allocated_twice_without_a_free_is_corrupt() {
    let t0: &[Rec] = &[(A, 10, 0x1000, 0, 8), (A, 20, 0x1000, 0, 8)];
    let bytes = encode(&[t0]);
    let e = Trace::parse(&bytes).unwrap_err();
    assert!(e.message.contains("never freed"), "{e}");
    // The offset is that of the second record, inside the block.
    assert!(e.offset as usize > format::HEADER_LEN + format::BLOCK_HEADER_LEN);
    assert!((e.offset as usize) < bytes.len() - format::BLOCK_HEADER_LEN);
}
