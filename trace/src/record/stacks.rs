//! A profile's stacks, per thread: the memory a walk uses (unwind rules,
//! the previous walk, the frames) and the table of stacks already written,
//! so that a repeated stack costs an id instead of its frames.

use heapkit_core::os::unwind::UnwindCache;

use crate::format;

/// A thread's memory for stacks, one anonymous mapping (zero is empty).
#[repr(C)]
pub(super) struct StackMemory {
    pub(super) unwind: UnwindCache,
    pub(super) recorded: RecordedStacks,
    /// The walk's return addresses: here rather than in an array on the
    /// stack, which was zeroed (a `memset` call) before every walk.
    pub(super) frames: [usize; format::MAX_FRAMES],
}

/// How a profiled allocation's stack was recorded.
#[derive(Clone, Copy)]
pub(super) enum StackRef {
    /// A STACK or SAME_STACK record was written just before the allocation's.
    Written,
    /// The stack is the thread's `id`-th STACK record: the allocation's
    /// record names it (`FLAG_STACK_ID`).
    Id(u32),
}

/// Slots of [`RecordedStacks`] (a power of two).
pub(super) const RECORDED_SLOTS: usize = 4096;

/// The stacks a thread has written as STACK records, by hash, so a repeat
/// is written as a SAME_STACK reference: a direct-mapped table (a
/// collision forgets the older stack, which is then written in full again
/// and gets a new id).
///
/// Invariant: every slot with a non-zero `hash` names, by `id`, a STACK
/// record this thread wrote to the current trace file whose frames hash to
/// `hash`; `next_id` is the number of STACK records the thread wrote to it.
#[repr(C)]
pub(super) struct RecordedStacks {
    slots: [RecordedStack; RECORDED_SLOTS],
    next_id: u32,
}

impl RecordedStacks {
    /// The id of the STACK record this thread wrote earlier for the
    /// stack that hashes to `hash`, or None: the caller writes it in full
    /// now, remembered here under the next id.
    #[inline]
    pub(super) fn earlier_id(&mut self, hash: u64) -> Option<u32> {
        let i = (hash as usize) & (RECORDED_SLOTS - 1);
        let seen = self.slots[i];
        if seen.hash == hash {
            return Some(seen.id);
        }
        self.slots[i] = RecordedStack {
            hash,
            id: self.next_id,
        };
        self.next_id += 1;
        None
    }
}

#[derive(Clone, Copy)]
#[repr(C)]
struct RecordedStack {
    /// The frames' hash (never 0; 0: an empty slot).
    hash: u64,
    /// Its STACK record's index among the thread's.
    id: u32,
}

/// A 64-bit hash of a stack (never 0): a repeat is taken for the same
/// stack, which a 2^-64 collision would misattribute.
///
/// Four lanes of one multiply each per frame, folded at the end by one
/// 64x64->128-bit multiply (whose high half depends on every bit of both
/// factors, so the table index, the low bits, does too): a chain of one
/// full mix per frame cost more than the rest of a repeated stack's record
/// (48 dependent multiplies of 3 cycles each, twice), and a final chain of
/// four mixes (eight dependent multiplies) still took a tenth of a
/// recorded allocation.
pub(super) fn stack_hash(frames: &[usize]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut lanes = [
        0x243f_6a88_85a3_08d3u64 ^ frames.len() as u64,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
        0x082e_fa98_ec4e_6c89,
    ];
    let mut chunks = frames.chunks_exact(4);
    for c in &mut chunks {
        for (lane, &f) in lanes.iter_mut().zip(c) {
            *lane = (*lane ^ f as u64).wrapping_mul(K).rotate_left(29);
        }
    }
    for (lane, &f) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane = (*lane ^ f as u64).wrapping_mul(K).rotate_left(29);
    }
    let a = lanes[0] ^ lanes[2].rotate_left(32);
    let b = lanes[1] ^ lanes[3].rotate_left(32) ^ K;
    let m = u128::from(a) * u128::from(b);
    ((m as u64) ^ ((m >> 64) as u64)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stacks that differ in one frame, by order, or by length hash apart,
    /// and spread evenly over the recorded-stacks table (its index is the
    /// hash's low bits).
    #[test]
    fn stack_hashes_tell_near_stacks_apart_and_spread() {
        let mut rng = 0x1234_5678_9abc_def1u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut seen = std::collections::HashSet::new();
        let mut slots = vec![0u32; RECORDED_SLOTS];
        let mut add = |frames: &[usize]| {
            let h = stack_hash(frames);
            assert_ne!(h, 0);
            assert!(seen.insert(h), "collision at {frames:x?}");
            slots[h as usize & (RECORDED_SLOTS - 1)] += 1;
        };
        let mut hashed = 0;
        for _ in 0..2000 {
            // Return addresses as a program has them: close together.
            let n = 1 + (next() % 48) as usize;
            let base = 0x5555_0000_0000usize + (next() % (1 << 24)) as usize;
            let frames: Vec<usize> = (0..n).map(|_| base + (next() % 4096) as usize).collect();
            add(&frames);
            for i in 0..n {
                let mut one = frames.clone();
                one[i] += 1;
                add(&one);
                hashed += 1;
            }
            if n > 1 {
                add(&frames[..n - 1]);
                let mut swapped = frames.clone();
                swapped.swap(0, n - 1);
                if swapped != frames {
                    add(&swapped);
                }
                hashed += 2;
            }
            hashed += 1;
        }
        let mean = hashed as f64 / RECORDED_SLOTS as f64;
        let max = *slots.iter().max().unwrap() as f64;
        assert!(max < mean * 3.0 + 10.0, "max {max} per slot, mean {mean}");
    }
}
