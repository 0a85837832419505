//! std collections churned through the global allocator, with their contents
//! checked after every phase: what a real program asks of an allocator.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::pattern::{fill_slice, verify_slice, XorShift};
use crate::Volume;

fn value_of(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 3)
}

/// `Vec` growth (one push at a time, so through every capacity), truncation,
/// `shrink_to_fit`, clones, and `String` built from formatted numbers and
/// parsed back.
pub fn vec_and_string(v: Volume) {
    let rounds = v.pick(12, 3);
    let n = v.pick(60_000, 15_000);
    for round in 0..rounds as u64 {
        let mut a: Vec<u64> = Vec::new();
        for i in 0..n as u64 {
            a.push(value_of(i + round));
        }
        let b = a.clone();
        a.truncate(n / 3);
        a.shrink_to_fit();
        for (i, x) in a.iter().enumerate() {
            assert_eq!(
                *x,
                value_of(i as u64 + round),
                "Vec<u64> after shrink_to_fit, index {i}"
            );
        }
        for (i, x) in b.iter().enumerate() {
            assert_eq!(*x, value_of(i as u64 + round), "cloned Vec<u64>, index {i}");
        }
        // Many small vectors alive at once, of every small length.
        let smalls: Vec<Vec<u8>> = (0..2_000usize)
            .map(|i| {
                let mut s = vec![0u8; i % 97 + 1];
                fill_slice(&mut s, i as u64 + round);
                s
            })
            .collect();
        for (i, s) in smalls.iter().enumerate() {
            verify_slice(s, i as u64 + round, "small Vec<u8>");
        }
        drop(b);

        let mut s = String::new();
        let words = n / 10;
        for i in 0..words {
            s.push_str(&format!("{} ", value_of(i as u64 + round)));
        }
        let parsed: Vec<u64> = s
            .split_whitespace()
            .map(|w| w.parse().expect("number"))
            .collect();
        assert_eq!(parsed.len(), words, "String word count");
        for (i, x) in parsed.iter().enumerate() {
            assert_eq!(
                *x,
                value_of(i as u64 + round),
                "String round trip, word {i}"
            );
        }
        let strings: Vec<String> = (0..3_000).map(|i| "x".repeat(i % 300)).collect();
        for (i, st) in strings.iter().enumerate() {
            assert!(
                st.len() == i % 300 && st.bytes().all(|c| c == b'x'),
                "String {i}"
            );
        }
    }
}

/// `HashMap<u64, Vec<u8>>` and `BTreeMap<u32, String>`: insert, remove half,
/// insert again, and check every value against what was stored.
pub fn maps(v: Volume) {
    let rounds = v.pick(8, 2);
    let n = v.pick(20_000, 5_000) as u64;
    for round in 0..rounds as u64 {
        let mut h: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut t: BTreeMap<u32, String> = BTreeMap::new();
        let make = |k: u64| {
            let mut val = vec![0u8; (k % 300 + 1) as usize];
            fill_slice(&mut val, k ^ round);
            val
        };
        for k in 0..n {
            h.insert(k, make(k));
            t.insert(k as u32, format!("v{}", value_of(k)));
        }
        for k in (0..n).step_by(2) {
            let val = h.remove(&k).expect("key present");
            verify_slice(&val, k ^ round, "HashMap value removed");
            assert!(t.remove(&(k as u32)).is_some(), "BTreeMap key {k}");
        }
        for k in n..n + n / 2 {
            h.insert(k, make(k));
            t.insert(k as u32, format!("v{}", value_of(k)));
        }
        assert_eq!(h.len() as u64, n / 2 + n / 2, "HashMap size");
        for (k, val) in &h {
            assert!(k % 2 == 1 || *k >= n, "HashMap holds a removed key {k}");
            verify_slice(val, k ^ round, "HashMap value");
        }
        for (k, val) in &t {
            assert_eq!(
                *val,
                format!("v{}", value_of(*k as u64)),
                "BTreeMap value of {k}"
            );
        }
    }
}

/// A `VecDeque<Box<[u8]>>` used as a ring (push back, pop front, check), and
/// boxed slices of many sizes (every size to 1 KiB, then each power of two
/// +-1 up to 1 MiB) kept alive together and freed in interleaved order.
pub fn deque_and_boxed_slices(v: Volume) {
    let mut rng = XorShift::new(0xDE9E);
    let ops = v.pick(100_000, 20_000);
    let mut q: VecDeque<(Box<[u8]>, u64)> = VecDeque::new();
    for i in 0..ops as u64 {
        let max = if rng.chance(2) { 20_000 } else { 200 };
        let size = rng.range(1, max);
        let mut b = vec![0u8; size].into_boxed_slice();
        fill_slice(&mut b, i);
        q.push_back((b, i));
        if q.len() > 500 || rng.chance(45) {
            let (b, seed) = q.pop_front().expect("non-empty");
            verify_slice(&b, seed, "VecDeque element");
        }
    }
    for (b, seed) in q.drain(..) {
        verify_slice(&b, seed, "VecDeque element at drain");
    }

    let mut sizes: Vec<usize> = (1..=1024).collect();
    for shift in 10..=20 {
        let p = 1usize << shift;
        sizes.extend([p - 1, p, p + 1]);
    }
    for round in 0..v.pick(4, 1) as u64 {
        let boxes: Vec<(Box<[u8]>, u64)> = sizes
            .iter()
            .map(|&s| {
                let mut b = vec![0u8; s].into_boxed_slice();
                let seed = s as u64 * 31 + round;
                fill_slice(&mut b, seed);
                (b, seed)
            })
            .collect();
        let mut ranges: Vec<(usize, usize)> = boxes
            .iter()
            .map(|(b, _)| (b.as_ptr() as usize, b.len()))
            .collect();
        crate::pattern::assert_disjoint(&mut ranges, "boxed slices");
        let (even, odd): (Vec<_>, Vec<_>) =
            boxes.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
        for (_, (b, seed)) in even {
            verify_slice(&b, seed, "boxed slice");
        }
        for (_, (b, seed)) in odd.into_iter().rev() {
            verify_slice(&b, seed, "boxed slice");
        }
    }
}
