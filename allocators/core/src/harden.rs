//! Hardening as a typed policy: what an allocator checks, chosen at build
//! time by a type parameter, not by `if`s on a runtime flag.
//!
//! An allocator generic over [`Policy`] compiles its fast paths once per
//! policy. [`Fast`] (the default) keeps only the checks that cost nothing
//! measurable (see [`crate::misuse`]); [`Hardened`] adds, for every block:
//!
//! - **block state**: the allocator records which blocks are live (a bit
//!   per block, not a scan), so every double free and every free of a
//!   pointer into a block is detected at the call;
//! - **encoded free lists**: the link a free block stores is
//!   [`Policy::encode`]d with a random per-page key, so a use-after-free
//!   write cannot steer a later `malloc` to an address of the attacker's
//!   choosing: the decoded link lands outside its page and is reported;
//! - **a canary** ([`Trailer`]) after the requested size, checked on free
//!   (an allocator may leave the check of another thread's free to the
//!   block's owner, with [`FreeMark::set_unchecked`], as long as the owner
//!   checks before it reuses the block);
//! - **guard pages** at the end of every segment (and large block), so a
//!   linear overflow faults instead of running into the next mapping.
//!
//! What it costs is measured, not guessed: `heapkit-bench run --quick`
//! with `sizeclass` against `sizeclass-hardened` (reports/).
//!
//! ```
//! use heapkit_core::harden::{Fast, Hardened, Policy};
//!
//! let key = 0x9e37_79b9_7f4a_7c15;
//! let link = 0x7f00_1234_5670usize as *mut u8;
//! assert_eq!(Fast::encode(link, key), link);
//! let stored = Hardened::encode(link, key);
//! assert_ne!(stored, link);
//! assert_eq!(Hardened::decode(stored, key), link);
//! assert!(Hardened::decode(core::ptr::null_mut(), key) != core::ptr::null_mut());
//! ```

use core::fmt::Debug;

/// What an allocator checks (see the module docs). Implemented by [`Fast`]
/// and [`Hardened`] only (the trait is sealed, so an allocator may choose
/// its behaviour by these constants and know it has seen every case).
pub trait Policy: sealed::Sealed + Copy + Default + Debug + Send + Sync + 'static {
    /// Keep a live/free bit per block and check it on every free.
    const BLOCK_STATE: bool;
    /// Bytes reserved after every small block for its [`Trailer`] (0: no
    /// canary).
    const TRAILER: usize;
    /// Put an inaccessible guard page at the end of every segment.
    const GUARD_PAGES: bool;
    /// How the backend's name reads in reports (`""` or `"hardened"`).
    const NAME: &'static str;

    /// The value stored in a free block for a link to `next`.
    fn encode(next: *mut u8, key: usize) -> *mut u8;
    /// The link to the next free block, from what [`Policy::encode`]
    /// stored.
    fn decode(stored: *mut u8, key: usize) -> *mut u8;
    /// The key for a page (or other unit of blocks) at `at`.
    fn key_for(at: *const u8) -> usize;
}

mod sealed {
    /// Only this module's policies implement [`super::Policy`].
    pub trait Sealed {}
    impl Sealed for super::Fast {}
    impl Sealed for super::Hardened {}
}

/// The default policy: raw links, no per-block state, no canary.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fast;

impl Policy for Fast {
    const BLOCK_STATE: bool = false;
    const TRAILER: usize = 0;
    const GUARD_PAGES: bool = false;
    const NAME: &'static str = "";

    #[inline(always)]
    fn encode(next: *mut u8, _key: usize) -> *mut u8 {
        next
    }

    #[inline(always)]
    fn decode(stored: *mut u8, _key: usize) -> *mut u8 {
        stored
    }

    #[inline(always)]
    fn key_for(_at: *const u8) -> usize {
        0
    }
}

/// The hardened policy (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Hardened;

impl Policy for Hardened {
    const BLOCK_STATE: bool = true;
    const TRAILER: usize = Trailer::BYTES;
    const GUARD_PAGES: bool = true;
    const NAME: &'static str = "hardened";

    /// `rotl(next ^ key, r) + key`, with `r` taken from the key (as
    /// mimalloc encodes): without the key, no written value decodes to a
    /// chosen address, and null does not encode to null.
    #[inline(always)]
    fn encode(next: *mut u8, key: usize) -> *mut u8 {
        let r = (key >> 58) as u32;
        ((next as usize ^ key).rotate_left(r).wrapping_add(key)) as *mut u8
    }

    #[inline(always)]
    fn decode(stored: *mut u8, key: usize) -> *mut u8 {
        let r = (key >> 58) as u32;
        ((stored as usize).wrapping_sub(key).rotate_right(r) ^ key) as *mut u8
    }

    fn key_for(at: *const u8) -> usize {
        page_key(at)
    }
}

/// A per-page key for [`Policy::encode`]: the process secret mixed with the
/// page's address, never 0.
pub fn page_key(page: *const u8) -> usize {
    let k = crate::os::mix64(process_secret() ^ page as u64) as usize;
    k | 1
}

/// Random bits drawn once per process (and again in a forked child is not
/// needed: keys only have to be unknown to the program, not unique).
fn process_secret() -> u64 {
    use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static SECRET: AtomicU64 = AtomicU64::new(0);
    let s = SECRET.load(Relaxed);
    if s != 0 {
        return s;
    }
    let fresh = crate::os::random_u64() | 1;
    // A racing thread's value wins; both are random.
    match SECRET.compare_exchange(0, fresh, Relaxed, Relaxed) {
        Ok(_) => fresh,
        Err(now) => now,
    }
}

/// The free mark of hardened blocks: the second word of a free block holds
/// its address mixed with a key the program does not know, set when the
/// block becomes free (freed, or carved) and cleared when it is handed
/// out. A free of a block that bears it is a double free; a block handed
/// out without it was written after its free (or forged). The check reads
/// the cache line the free writes anyway: no side table, no scan. Blocks
/// must be at least 16 bytes (every heapkit class is).
///
/// ```
/// use heapkit_core::harden::FreeMark;
///
/// let mut block = [0u64; 4];
/// let p = block.as_mut_ptr().cast::<u8>();
/// // SAFETY: p is a 32-byte block we own.
/// unsafe {
///     assert!(!FreeMark::is_set(p, 0x1234));
///     FreeMark::set(p, 0x1234);
///     assert!(FreeMark::is_set(p, 0x1234));
///     assert!(!FreeMark::is_set(p, 0x4321), "another key reads no mark");
///     FreeMark::set_unchecked(p, 0x1234);
///     assert!(!FreeMark::is_set(p, 0x1234) && FreeMark::is_unchecked(p, 0x1234));
///     assert!(FreeMark::is_set_any(p, 0x1234) && !FreeMark::is_set_any(p, 0x4321));
///     FreeMark::clear(p);
///     assert!(!FreeMark::is_set(p, 0x1234));
/// }
/// ```
pub struct FreeMark;

impl FreeMark {
    #[inline(always)]
    fn value(block: *const u8, key: usize) -> usize {
        (block as usize ^ key).rotate_left(29) ^ 0xf4ee_f4ee_f4ee_f4ee
    }

    /// Marks `block` free.
    ///
    /// # Safety
    /// `block` is a block of at least 16 bytes the caller owns.
    #[inline(always)]
    pub unsafe fn set(block: *mut u8, key: usize) {
        // SAFETY: the block is at least 16 bytes and the caller's (caller
        // guarantee), so its second word is writable.
        unsafe { block.add(8).cast::<usize>().write(Self::value(block, key)) }
    }

    /// Whether `block` bears its free mark under `key`.
    ///
    /// # Safety
    /// `block` is a readable block of at least 16 bytes.
    #[inline(always)]
    pub unsafe fn is_set(block: *const u8, key: usize) -> bool {
        // SAFETY: the block is readable for 16 bytes (caller guarantee).
        unsafe { block.add(8).cast::<usize>().read() == Self::value(block, key) }
    }

    /// Marks `block` free with its canary not checked yet: a free by a
    /// thread that does not own the block's page, which leaves the check
    /// (the block's last bytes, on a line it would otherwise not touch) to
    /// the owner. [`FreeMark::is_set_any`] sees this mark as a free mark,
    /// [`FreeMark::is_set`] does not.
    ///
    /// # Safety
    /// As for [`FreeMark::set`].
    #[inline(always)]
    pub unsafe fn set_unchecked(block: *mut u8, key: usize) {
        // SAFETY: as for `set`.
        unsafe {
            block
                .add(8)
                .cast::<usize>()
                .write(Self::value(block, key) ^ 1)
        }
    }

    /// Whether `block` bears either free mark (checked or not) under `key`.
    /// The two marks differ in the lowest bit only, so this costs what
    /// [`FreeMark::is_set`] costs plus one instruction.
    ///
    /// # Safety
    /// As for [`FreeMark::is_set`].
    #[inline(always)]
    pub unsafe fn is_set_any(block: *const u8, key: usize) -> bool {
        // SAFETY: as for `is_set`.
        unsafe { block.add(8).cast::<usize>().read() ^ Self::value(block, key) <= 1 }
    }

    /// Whether `block` bears the mark [`FreeMark::set_unchecked`] writes.
    ///
    /// # Safety
    /// As for [`FreeMark::is_set`].
    #[inline(always)]
    pub unsafe fn is_unchecked(block: *const u8, key: usize) -> bool {
        // SAFETY: as for `is_set`.
        unsafe { block.add(8).cast::<usize>().read() == Self::value(block, key) ^ 1 }
    }

    /// Clears the mark (the block is being handed out).
    ///
    /// # Safety
    /// `block` is a block of at least 16 bytes the caller owns.
    #[inline(always)]
    pub unsafe fn clear(block: *mut u8) {
        // SAFETY: as for `set`.
        unsafe { block.add(8).cast::<usize>().write(0) }
    }
}

/// The canary written after a hardened small block's requested bytes.
///
/// The 4 bytes right after the requested size hold a canary derived from
/// the page key, the block's address and that size (one multiply); the
/// last 4 bytes of the block hold the requested size (its low
/// [`Trailer::SIZE_BITS`] bits) and the canary's top bits, so that a free,
/// which is not told the size, finds the canary, and a check that cannot
/// see the canary ([`Trailer::check_past`]) still sees a size overwritten.
/// [`Trailer::check`] on free finds an overflow by one byte (every write
/// past the requested bytes crosses
/// the canary first), a size field that was overwritten (the canary is
/// then looked for at another place, with another expected value), and a
/// trailer that was never written (a pointer that was not handed out, or
/// one into a block: the words it reads are not a trailer). Each canary
/// byte has its top bit set, so a string's terminating zero or ASCII text
/// written one past the end never leaves it intact.
///
/// Cost: a multiply, two 4-byte stores on allocation, two loads and a
/// compare on free; [`Trailer::BYTES`] more per block.
///
/// ```
/// use heapkit_core::harden::Trailer;
///
/// let mut block = [0u8; 48];
/// let p = block.as_mut_ptr();
/// // SAFETY: p is a 48-byte block we own.
/// unsafe {
///     Trailer::write(p, 48, 30, 0x1234);
///     assert_eq!(Trailer::check(p, 48, 0x1234), Some(30));
///     *p.add(30) = 0; // one byte past the 30 requested
///     assert!(Trailer::check(p, 48, 0x1234).is_none());
/// }
/// ```
pub struct Trailer;

// Every small block (at most core's largest class) fits the size field.
const _: () = assert!(crate::size_class::MAX_SIZE <= 1 << Trailer::SIZE_BITS);

impl Trailer {
    /// Bytes of the trailer: the canary and the requested size, 4 each
    /// (apart when the block has more slack than that).
    pub const BYTES: usize = 8;

    /// Bits of the size field that hold the requested size (every small
    /// block of every allocator is smaller than 1 MiB); the others hold
    /// the canary's.
    pub const SIZE_BITS: u32 = 20;
    const SIZE_MASK: u32 = (1 << Self::SIZE_BITS) - 1;

    /// The canary for `block` and `requested`: one multiply (this runs on
    /// every hardened allocation and free).
    #[inline(always)]
    fn canary(block: *const u8, requested: u32, key: usize) -> u32 {
        let x =
            ((block as u64) ^ key as u64 ^ requested as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (x >> 32) as u32 | 0x8080_8080
    }

    /// Writes the trailer of a block of `block_size` bytes handed out for
    /// `requested` bytes.
    ///
    /// # Safety
    /// `block` must be writable for `block_size` bytes,
    /// `requested + BYTES <= block_size` and `block_size <= 1 << SIZE_BITS`.
    #[inline]
    pub unsafe fn write(block: *mut u8, block_size: usize, requested: usize, key: usize) {
        debug_assert!(requested + Self::BYTES <= block_size);
        debug_assert!(block_size <= 1 << Self::SIZE_BITS);
        let canary = Self::canary(block, requested as u32, key);
        let field = requested as u32 | (canary & !Self::SIZE_MASK);
        // SAFETY: caller guarantee: requested + 8 <= block_size, so the
        // canary (requested..+4) and the size (block_size-4..) lie inside
        // the block and apart.
        unsafe {
            block.add(requested).cast::<u32>().write_unaligned(canary);
            block
                .add(block_size - 4)
                .cast::<u32>()
                .write_unaligned(field);
        }
    }

    /// Checks the trailer; returns the requested size, or `None` if it was
    /// overwritten (or never written).
    ///
    /// # Safety
    /// `block` must be readable for `block_size >= BYTES` bytes.
    #[inline]
    pub unsafe fn check(block: *const u8, block_size: usize, key: usize) -> Option<usize> {
        // (The size field's canary bits are not compared here: the canary
        // depends on the size, so a size written over fails below anyway;
        // `check_past` compares them because it may not see the canary.)
        // SAFETY: caller guarantee; the canary is read only once the
        // recorded size is known to leave 8 bytes before the block's end.
        unsafe {
            let requested = Self::requested(block, block_size);
            if requested > block_size - Self::BYTES {
                return None;
            }
            let found = block.add(requested).cast::<u32>().read_unaligned();
            if found != Self::canary(block, requested as u32, key) {
                return None;
            }
            Some(requested)
        }
    }

    /// [`Trailer::check`] for a block whose first `clobbered` bytes were
    /// overwritten since its trailer was written (a free block's link and
    /// free mark): the canary bytes among them are not compared. The size
    /// field must lie past them.
    ///
    /// # Safety
    /// `block` must be readable for `block_size` bytes, and
    /// `clobbered + BYTES <= block_size`.
    #[inline]
    pub unsafe fn check_past(
        block: *const u8,
        block_size: usize,
        key: usize,
        clobbered: usize,
    ) -> Option<usize> {
        debug_assert!(clobbered + Self::BYTES <= block_size);
        // SAFETY: as for `check`.
        unsafe {
            let field = Self::field(block, block_size);
            let requested = (field & Self::SIZE_MASK) as usize;
            if requested > block_size - Self::BYTES {
                return None;
            }
            let canary = Self::canary(block, requested as u32, key);
            if (field ^ canary) & !Self::SIZE_MASK != 0 {
                return None;
            }
            let lost = clobbered.saturating_sub(requested);
            let mask = if lost >= 4 { 0 } else { u32::MAX << (lost * 8) };
            let found = block.add(requested).cast::<u32>().read_unaligned();
            if (found ^ canary) & mask != 0 {
                return None;
            }
            Some(requested)
        }
    }

    /// The requested size recorded in the trailer (not checked).
    ///
    /// # Safety
    /// As for [`Trailer::check`].
    #[inline]
    pub unsafe fn requested(block: *const u8, block_size: usize) -> usize {
        // SAFETY: forwarded caller guarantee.
        (unsafe { Self::field(block, block_size) } & Self::SIZE_MASK) as usize
    }

    /// The size field: the block's last 4 bytes.
    ///
    /// # Safety
    /// As for [`Trailer::check`].
    #[inline(always)]
    unsafe fn field(block: *const u8, block_size: usize) -> u32 {
        // SAFETY: caller guarantee: the block holds block_size >= 4 bytes.
        unsafe { block.add(block_size - 4).cast::<u32>().read_unaligned() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_hides_links() {
        for key in [
            page_key(0x1000 as *const u8),
            page_key(0x7fff_0000 as *const u8),
        ] {
            assert_ne!(key, 0);
            for link in [0usize, 16, 0x7f12_3456_7890, usize::MAX & !15] {
                let p = link as *mut u8;
                let stored = Hardened::encode(p, key);
                assert_eq!(Hardened::decode(stored, key), p);
                assert_ne!(stored, p, "a link is never stored as itself");
            }
        }
        // A value written without the key decodes far away.
        let key = page_key(0x5000 as *const u8);
        let forged = 0x7f00_0000_1000usize as *mut u8;
        let d = Hardened::decode(forged, key) as usize;
        assert!(d.abs_diff(0x7f00_0000_1000) > 1 << 22);
    }

    #[test]
    fn trailer_finds_overflows_and_bytes_never_written() {
        let mut block = [0u8; 64];
        let p = block.as_mut_ptr();
        // SAFETY: p is our 64-byte block.
        unsafe {
            for requested in [0, 1, 17, 40, 55, 56] {
                Trailer::write(p, 64, requested, 7);
                assert_eq!(Trailer::check(p, 64, 7), Some(requested));
                assert_eq!(Trailer::requested(p, 64), requested);
                assert!(Trailer::check(p, 64, 8).is_none(), "another page's key");
                if requested < 56 {
                    let saved = *p.add(requested);
                    *p.add(requested) ^= 0x40;
                    assert!(Trailer::check(p, 64, 7).is_none(), "{requested}");
                    *p.add(requested) = saved;
                }
                // The size field (its low byte).
                *p.add(60) ^= 1;
                assert!(Trailer::check(p, 64, 7).is_none());
                *p.add(60) ^= 1;
            }
            let zeros = [0u8; 64];
            assert!(Trailer::check(zeros.as_ptr(), 64, 7).is_none());
        }
    }

    #[test]
    fn trailer_checked_past_clobbered_bytes_ignores_only_them() {
        let mut block = [0u8; 96];
        let p = block.as_mut_ptr();
        // SAFETY: p is our 96-byte block.
        unsafe {
            for requested in [0, 3, 12, 16, 40, 88] {
                Trailer::write(p, 96, requested, 9);
                // A free block's link and mark overwrite bytes 0..16.
                p.cast::<[u8; 16]>().write([0xa5; 16]);
                assert_eq!(Trailer::check_past(p, 96, 9, 16), Some(requested));
                // The first canary byte past the clobbered ones, if any
                // (the canary is the 4 bytes after the requested ones).
                let first = requested.max(16);
                if first < requested + 4 {
                    *p.add(first) ^= 1;
                    assert!(Trailer::check_past(p, 96, 9, 16).is_none(), "{requested}");
                    *p.add(first) ^= 1;
                }
                // The size field.
                *p.add(92) ^= 1;
                assert!(Trailer::check_past(p, 96, 9, 16).is_none());
                *p.add(92) ^= 1;
            }
        }
    }

    #[test]
    fn the_two_free_marks_differ_and_both_read_as_free() {
        let mut block = [0u64; 4];
        let p = block.as_mut_ptr().cast::<u8>();
        // SAFETY: p is our 32-byte block.
        unsafe {
            FreeMark::set_unchecked(p, 0x77);
            assert!(FreeMark::is_set_any(p, 0x77) && FreeMark::is_unchecked(p, 0x77));
            assert!(!FreeMark::is_set(p, 0x77));
            FreeMark::set(p, 0x77);
            assert!(FreeMark::is_set_any(p, 0x77) && !FreeMark::is_unchecked(p, 0x77));
            FreeMark::clear(p);
            assert!(!FreeMark::is_set_any(p, 0x77));
            // Neither mark reads as set under a key one bit away.
            FreeMark::set(p, 0x77);
            assert!(!FreeMark::is_set_any(p, 0x76));
        }
    }
}
