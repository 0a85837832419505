//! One global order of a trace's operations, and what it implies.
//!
//! A trace records each thread's operations in order, but threads only
//! meet through the objects they share: a free on thread B of a block that
//! thread A allocated must come after that allocation. [`schedule`] merges
//! the threads into one total order that respects both (each thread's own
//! order, and "created before ended"), taking the earliest timestamp among
//! the threads that may proceed. That order defines the trace's **peak live
//! bytes** (the most bytes the program held at once, counted in requested
//! sizes) and the lifetimes, and an ordered replay executes exactly it.
//!
//! Cost: O(n log t) for n operations over t threads, plus one `u32` per
//! object.
//!
//! ```
//! use heapkit_trace::{schedule, Event, Op, Trace, Object};
//! let t = Trace {
//!     threads: vec![
//!         vec![Event { ts: 5, op: Op::Alloc { obj: 0, size: 100, align_log2: 0, zeroed: false } }],
//!         // Thread 1's free has an earlier timestamp, but must wait.
//!         vec![Event { ts: 1, op: Op::Free { obj: 0 } }],
//!     ],
//!     objects: vec![Object::new(100, 0)],
//!     ..Trace::default()
//! };
//! let order = schedule::schedule(&t).unwrap();
//! assert_eq!(order, vec![(0, 0), (1, 0)]);
//! assert_eq!(schedule::peak_live_bytes(&t, &order), 100);
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::reader::{Op, Trace};

/// A position in a trace: (thread, index of the event in that thread).
pub type Step = (u32, u32);

/// The operations of `trace` in one order that respects every thread's own
/// order and every object's creation-before-end; among the threads that may
/// proceed, the earliest timestamp goes first (ties: lower thread).
///
/// Fails (naming the stuck thread) if no such order exists, which a
/// validated trace from the recorder never does.
pub fn schedule(trace: &Trace) -> Result<Vec<Step>, String> {
    const NONE: u32 = u32::MAX;
    let objects = trace.objects.len();
    let mut created = vec![false; objects];
    // waiting[obj] = the thread blocked on obj (at most one: each object is
    // ended once).
    let mut waiting = vec![NONE; objects];
    let mut next = vec![0usize; trace.threads.len()];
    let mut ready: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::new();
    let total: usize = trace.threads.iter().map(Vec::len).sum();
    let mut order = Vec::with_capacity(total);
    for (t, events) in trace.threads.iter().enumerate() {
        if let Some(e) = events.first() {
            ready.push(Reverse((e.ts, t as u32)));
        }
    }
    while let Some(Reverse((_, t))) = ready.pop() {
        let events = &trace.threads[t as usize];
        let i = next[t as usize];
        let op = events[i].op;
        if let Some(obj) = op.ends() {
            if !created[obj as usize] {
                waiting[obj as usize] = t;
                continue;
            }
        }
        order.push((t, i as u32));
        if let Some(obj) = op.creates() {
            created[obj as usize] = true;
            let w = std::mem::replace(&mut waiting[obj as usize], NONE);
            if w != NONE {
                let e = &trace.threads[w as usize][next[w as usize]];
                ready.push(Reverse((e.ts, w)));
            }
        }
        next[t as usize] = i + 1;
        if let Some(e) = events.get(i + 1) {
            ready.push(Reverse((e.ts, t)));
        }
    }
    if order.len() != total {
        let stuck = next
            .iter()
            .enumerate()
            .find(|(t, &i)| i < trace.threads[*t].len())
            .map_or(0, |(t, _)| t);
        return Err(format!(
            "the trace's threads wait on each other (thread {stuck} never proceeds)"
        ));
    }
    Ok(order)
}

/// Bytes an operation adds to the live total (negative: releases).
#[inline]
pub fn live_delta(trace: &Trace, op: &Op) -> i64 {
    let size = |obj: u32| trace.objects[obj as usize].size as i64;
    match *op {
        Op::Alloc { size, .. } | Op::ReallocUnknown { size, .. } => size as i64,
        Op::Free { obj } => -size(obj),
        Op::Realloc { old, size: new, .. } => new as i64 - size(old),
        Op::FreeUnknown => 0,
    }
}

/// The most requested bytes live at once along `order`.
pub fn peak_live_bytes(trace: &Trace, order: &[Step]) -> u64 {
    let mut live: i64 = 0;
    let mut peak: i64 = 0;
    for &(t, i) in order {
        live += live_delta(trace, &trace.threads[t as usize][i as usize].op);
        peak = peak.max(live);
    }
    peak as u64
}
