//! The recorder's map from live block addresses to object ids.
//!
//! When the traced program frees `p`, the recorder must name the object that
//! `p` was: the id it handed out when `malloc` returned `p`, maybe on another
//! thread. This table remembers `address -> id` for every live block. It
//! lives entirely in memory from [`os::map`] (the recorder runs inside
//! `malloc` and must never call it), and is split into [`SHARDS`] shards,
//! each an open-addressing, linear-probing hash table behind its own spin
//! lock, so threads working on different blocks rarely meet.
//!
//! Cost: one uncontended lock, a hash and usually one probe per insert or
//! removal. Memory: 16 bytes per slot, at most 75 % full (live + tombstone
//! slots), so about 21-43 bytes per live block.
//!
//! ```
//! use heapkit_trace::object_table::{insert, remove};
//! assert!(insert(0x7f00_0000_1000, 42));
//! assert_eq!(remove(0x7f00_0000_1000), 42);
//! assert_eq!(remove(0x7f00_0000_1000), 0); // unknown now
//! ```

use core::ptr;

use heapkit_core::lock::SpinLock;
use heapkit_core::os;

/// Number of independently locked shards (a power of two).
pub const SHARDS: usize = 64;
const INITIAL_SLOTS: usize = 1024;
/// Key of a slot never used.
const EMPTY: usize = 0;
/// Key of a slot whose entry was removed (keeps probe chains intact).
const TOMBSTONE: usize = 1;

#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    key: usize,
    id: u64,
}

/// One shard.
///
/// Invariants: `slots` is null with `cap == 0`, or maps `cap` slots (`cap` a
/// power of two); `used` counts non-EMPTY slots, `live` counts slots holding
/// a real key; `used <= cap * 3 / 4` after every insert; no key appears
/// twice; every live key is reachable from its home slot without crossing an
/// EMPTY slot.
struct Shard {
    slots: *mut Slot,
    cap: usize,
    used: usize,
    live: usize,
}

// SAFETY: the slot memory is owned by the shard and only touched under the
// shard's lock.
unsafe impl Send for Shard {}

#[allow(clippy::declare_interior_mutable_const)]
const NEW_SHARD: SpinLock<Shard> = SpinLock::new(Shard {
    slots: ptr::null_mut(),
    cap: 0,
    used: 0,
    live: 0,
});
static TABLE: [SpinLock<Shard>; SHARDS] = [NEW_SHARD; SHARDS];

/// murmur3's 64-bit finaliser: every input bit reaches every output bit, so
/// strided addresses (4 MiB-aligned large blocks) spread over the slots.
#[inline]
fn hash(addr: usize) -> u64 {
    let mut h = addr as u64;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[inline]
fn shard_of(h: u64) -> &'static SpinLock<Shard> {
    // The top bits pick the shard, the low bits the slot inside it.
    &TABLE[(h >> 58) as usize & (SHARDS - 1)]
}

impl Shard {
    /// Makes room for one more entry; `false` if memory ran out.
    #[cold]
    #[inline(never)]
    fn grow(&mut self) -> bool {
        // Rehash at the same size when tombstones are most of the load.
        let new_cap = if self.cap == 0 {
            INITIAL_SLOTS
        } else if self.live * 2 >= self.cap {
            self.cap * 2
        } else {
            self.cap
        };
        let bytes = new_cap * core::mem::size_of::<Slot>();
        let fresh = os::map(bytes).cast::<Slot>();
        if fresh.is_null() {
            return false;
        }
        let old = (self.slots, self.cap);
        self.slots = fresh;
        self.cap = new_cap;
        self.used = 0;
        self.live = 0;
        for i in 0..old.1 {
            // SAFETY: i < old capacity, within the old mapping.
            let slot = unsafe { *old.0.add(i) };
            if slot.key > TOMBSTONE {
                self.place(slot.key, slot.id);
            }
        }
        if !old.0.is_null() {
            // SAFETY: the old mapping was made by os::map with this size and
            // nothing refers to it any more.
            unsafe { os::unmap(old.0.cast(), old.1 * core::mem::size_of::<Slot>()) };
        }
        true
    }

    /// Stores `key -> id`, overwriting a stale entry for the same key.
    /// Requires a free slot (guaranteed by the load-factor invariant).
    fn place(&mut self, key: usize, id: u64) {
        let mask = self.cap - 1;
        let mut i = hash(key) as usize & mask;
        let mut reuse = usize::MAX;
        loop {
            // SAFETY: i <= mask < cap, within the mapping.
            let slot = unsafe { &mut *self.slots.add(i) };
            if slot.key == key {
                slot.id = id;
                return;
            }
            if slot.key == TOMBSTONE && reuse == usize::MAX {
                reuse = i;
            }
            if slot.key == EMPTY {
                let target = if reuse != usize::MAX { reuse } else { i };
                if target == i {
                    self.used += 1;
                }
                self.live += 1;
                // SAFETY: target <= mask < cap.
                unsafe { *self.slots.add(target) = Slot { key, id } };
                return;
            }
            i = (i + 1) & mask;
        }
    }
}

/// Remembers that the block at `addr` is object `id` (replacing whatever
/// the table held for `addr`). Returns `false` if the table could not grow.
pub fn insert(addr: usize, id: u64) -> bool {
    if addr <= TOMBSTONE {
        return false;
    }
    let mut shard = shard_of(hash(addr)).lock();
    if (shard.used + 1) * 4 > shard.cap * 3 && !shard.grow() {
        return false;
    }
    shard.place(addr, id);
    true
}

/// Forgets the block at `addr` and returns its object id, or 0 if the table
/// does not know it.
pub fn remove(addr: usize) -> u64 {
    if addr <= TOMBSTONE {
        return 0;
    }
    let h = hash(addr);
    let mut shard = shard_of(h).lock();
    if shard.cap == 0 {
        return 0;
    }
    let mask = shard.cap - 1;
    let mut i = h as usize & mask;
    loop {
        // SAFETY: i <= mask < cap, within the mapping.
        let slot = unsafe { &mut *shard.slots.add(i) };
        if slot.key == addr {
            let id = slot.id;
            slot.key = TOMBSTONE;
            shard.live -= 1;
            return id;
        }
        if slot.key == EMPTY {
            return 0;
        }
        i = (i + 1) & mask;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_keys_survive_growth_and_tombstones() {
        // Addresses no other test uses (tests share the table).
        let base = 0x5a5a_0000_0000usize;
        for round in 0..3u64 {
            for i in 0..20_000usize {
                assert!(insert(base + i * 16, (round << 32) | (i as u64 + 1)));
            }
            for i in (0..20_000usize).step_by(2) {
                assert_eq!(remove(base + i * 16), (round << 32) | (i as u64 + 1));
            }
            for i in (1..20_000usize).step_by(2) {
                assert_eq!(remove(base + i * 16), (round << 32) | (i as u64 + 1));
            }
            assert_eq!(remove(base), 0);
        }
        // Strided keys (4 MiB apart) still spread.
        for i in 1..5000usize {
            assert!(insert(i << 22, i as u64));
        }
        for i in 1..5000usize {
            assert_eq!(remove(i << 22), i as u64);
        }
    }
}
