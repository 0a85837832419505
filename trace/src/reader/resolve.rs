//! Linking each free and realloc of a decoded trace to the allocation it
//! ends, across threads, and numbering the objects densely (the second
//! half of [`Trace::parse`](super::Trace::parse)).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::{err, Event, Object, Op, RawEvent, Trace, TraceError, NO_STACK};
use crate::format;

/// Links frees and reallocs to the objects they end by taking every
/// thread's records in time order over a map of live addresses, and
/// numbers the objects densely.
///
/// An allocation (or a realloc's new address) at an address that is still
/// live waits until that address is freed: the free is then on another
/// thread with a nearly equal time (the realloc case of the format docs).
/// A free or realloc of an address not live is held back until
/// [`EARLY_FREE_WINDOW_NS`] of trace time after the latest it can have
/// happened: the recorder stamps a free with a clock read that the CPU may
/// run a little early, and a profile's record without a read of its own
/// (dt 0) carries its thread's last read, so it happened by the thread's
/// next read (or the end of the recording); the allocation on another
/// thread that handed it the block can carry a later time. If that
/// allocation comes within the hold the free follows it (and is given its
/// time if it was stamped earlier); otherwise the block is from before the
/// recording.
pub(super) fn resolve(
    trace: &mut Trace,
    raw: Vec<Vec<RawEvent>>,
    to_ns: impl Fn(u64) -> u64,
) -> Result<(), TraceError> {
    let threads = raw.len();
    // Per record: the latest tick it can have happened at (its own, or the
    // next clock read of its thread; none: u64::MAX).
    let latest: Vec<Vec<u64>> = raw
        .iter()
        .map(|list| {
            let mut bound = u64::MAX;
            let mut out = vec![0; list.len()];
            for (i, e) in list.iter().enumerate().rev() {
                if e.fresh {
                    bound = e.ticks;
                }
                out[i] = bound.max(e.ticks);
            }
            out
        })
        .collect();
    // With no clock read after it in its thread, a record happened before
    // the recording ended.
    let end_ns = trace.end_ns;
    let hold_end = |t: usize, i: usize| -> u64 {
        match latest[t][i] {
            u64::MAX => end_ns,
            ticks => to_ns(ticks),
        }
        .saturating_add(EARLY_FREE_WINDOW_NS)
    };
    // Event times: an object's end is not before its start, and a
    // thread's events keep their order (a record without its own clock
    // read may carry an earlier time than the allocation it ends).
    let mut born: Vec<u64> = Vec::new();
    let mut thread_ts = vec![0u64; threads];
    let mut live: HashMap<u64, u32> = HashMap::new();
    let mut next = vec![0usize; threads];
    let mut ready: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::new();
    trace.threads = raw.iter().map(|l| Vec::with_capacity(l.len())).collect();
    for (t, list) in raw.iter().enumerate() {
        if let Some(e) = list.first() {
            ready.push(Reverse((e.ticks, t as u32)));
        }
    }
    let new_object =
        |objects: &mut Vec<Object>, size: u64, align_log2: u8, stack: Option<(u32, u64)>| -> u32 {
            let (stack, weight) = stack.unwrap_or((NO_STACK, 0));
            objects.push(Object {
                size,
                align_log2,
                stack,
                weight,
            });
            (objects.len() - 1) as u32
        };
    // Threads whose next record allocates an address still live.
    let mut blocked: HashMap<u64, Vec<u32>> = HashMap::new();
    // Threads whose next record frees an address not live (yet), by
    // address, and by the time (ns) their wait ends; `released[t]`: thread
    // t's next record waited its window out (a block from before the
    // recording).
    let mut held: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut held_until: BinaryHeap<Reverse<(u64, u32, usize)>> = BinaryHeap::new();
    let mut released = vec![false; threads];
    loop {
        // Release the holds that expire before the next record to resolve
        // (all of the earliest, when nothing else can go on).
        while let Some(&Reverse((until, h, index))) = held_until.peek() {
            let next_ns = ready.peek().map(|&Reverse((ticks, _))| to_ns(ticks));
            if next_ns.is_some_and(|ns| ns <= until) {
                break;
            }
            held_until.pop();
            let hi = h as usize;
            // A hold an allocation ended already (the thread moved on).
            if next[hi] != index {
                continue;
            }
            let e = &raw[hi][index];
            let addr = e.a;
            if let Some(list) = held.get_mut(&addr) {
                if let Some(i) = list.iter().position(|&x| x == h) {
                    list.swap_remove(i);
                    if list.is_empty() {
                        held.remove(&addr);
                    }
                    released[hi] = true;
                    ready.push(Reverse((e.ticks, h)));
                }
            }
        }
        let Some(Reverse((_, t))) = ready.pop() else {
            break;
        };
        let ti = t as usize;
        let e = &raw[ti][next[ti]];
        if trace.objects.len() >= u32::MAX as usize - 1 {
            return err(e.offset, "more than 2^32 objects");
        }
        let op = match e.kind {
            format::KIND_ALLOC => {
                if live.contains_key(&e.a) {
                    blocked.entry(e.a).or_default().push(t);
                    continue;
                }
                let obj = new_object(&mut trace.objects, e.size, e.align_log2, e.stack);
                live.insert(e.a, obj);
                wake(&mut held, e.a, &raw, &next, &mut ready);
                Op::Alloc {
                    obj,
                    size: e.size,
                    align_log2: e.align_log2,
                    zeroed: e.zeroed,
                }
            }
            format::KIND_FREE => match live.remove(&e.a) {
                Some(obj) => {
                    wake(&mut blocked, e.a, &raw, &next, &mut ready);
                    Op::Free { obj }
                }
                None if !released[ti] => {
                    held.entry(e.a).or_default().push(t);
                    held_until.push(Reverse((hold_end(ti, next[ti]), t, next[ti])));
                    continue;
                }
                None => Op::FreeUnknown,
            },
            _ => {
                if e.b != e.a && live.contains_key(&e.b) {
                    blocked.entry(e.b).or_default().push(t);
                    continue;
                }
                if !released[ti] && !live.contains_key(&e.a) {
                    held.entry(e.a).or_default().push(t);
                    held_until.push(Reverse((hold_end(ti, next[ti]), t, next[ti])));
                    continue;
                }
                let old = live.remove(&e.a);
                let new = new_object(&mut trace.objects, e.size, 0, e.stack);
                live.insert(e.b, new);
                wake(&mut held, e.b, &raw, &next, &mut ready);
                if e.b != e.a {
                    wake(&mut blocked, e.a, &raw, &next, &mut ready);
                }
                match old {
                    Some(old) => Op::Realloc {
                        old,
                        new,
                        size: e.size,
                    },
                    None => Op::ReallocUnknown { new, size: e.size },
                }
            }
        };
        let mut ts = to_ns(e.ticks).max(thread_ts[ti]);
        match op {
            Op::Free { obj } | Op::Realloc { old: obj, .. } => {
                ts = ts.max(born[obj as usize]);
            }
            _ => {}
        }
        if let Some(obj) = op.creates() {
            if born.len() <= obj as usize {
                born.resize(obj as usize + 1, 0);
            }
            born[obj as usize] = ts;
        }
        thread_ts[ti] = ts;
        trace.threads[ti].push(Event { ts, op });
        released[ti] = false;
        next[ti] += 1;
        if let Some(n) = raw[ti].get(next[ti]) {
            ready.push(Reverse((n.ticks, t)));
        }
    }
    if let Some((t, _)) = next.iter().enumerate().find(|&(t, &i)| i < raw[t].len()) {
        let e = &raw[t][next[t]];
        return err(
            e.offset,
            format!(
                "thread {t} allocates address {:#x}, which is never freed before (corrupt trace)",
                if e.kind == format::KIND_ALLOC {
                    e.a
                } else {
                    e.b
                }
            ),
        );
    }
    Ok(())
}

/// How long (trace time) a free of an address that is not live waits for
/// the allocation of that address on another thread: far above the few
/// hundred cycles a CPU can run a clock read early, far below anything a
/// program does between handing a block over and freeing it.
const EARLY_FREE_WINDOW_NS: u64 = 50_000;

/// Makes the threads blocked (or held) on `addr` ready again.
fn wake(
    blocked: &mut HashMap<u64, Vec<u32>>,
    addr: u64,
    raw: &[Vec<RawEvent>],
    next: &[usize],
    ready: &mut BinaryHeap<Reverse<(u64, u32)>>,
) {
    if let Some(list) = blocked.remove(&addr) {
        for w in list {
            ready.push(Reverse((raw[w as usize][next[w as usize]].ticks, w)));
        }
    }
}
