//! Call stacks inside `malloc`, fast: DWARF unwinding with a cache of
//! per-address unwind rules (x86-64).
//!
//! [`super::backtrace`] asks libgcc's `_Unwind_Backtrace`, which finds and
//! interprets the call-frame information (`.eh_frame`) of every frame on
//! every call: about a microsecond per frame, so a heap profile that records
//! every allocation ran 26x slower. Programs built without frame pointers
//! (most C and Python builds) leave no cheaper correct way: the CFI is the
//! only description of their frames. What is slow is finding and
//! interpreting it, and a program calls `malloc` from a few thousand places,
//! so [`backtrace_cached`] does that once per return address and keeps the
//! result, a [`Rule`] of three numbers (where the caller's stack pointer,
//! return address and frame pointer are), in a per-thread [`UnwindCache`].
//! A walk is then a hash lookup and two or three loads per frame, as in
//! framehop (samply) and bytehound.
//!
//! A cache miss asks libgcc for the frame's FDE (`_Unwind_Find_FDE`, which
//! glibc answers through `_dl_find_object` without a lock) and evaluates it
//! with `gimli` into an [`UnwindContext`] on the stack: nothing allocates.
//! Frames whose CFA is not a register plus an offset (hand-written
//! assembly, signal trampolines) end the walk, as does an address without
//! CFI (JIT code): the stack is then shorter, never wrong.
//!
//! Cost: a hit is a hash probe; a miss about 1-3 us. The cache is 64 KiB per
//! thread (mapped by the caller).

use core::arch::asm;
use core::ffi::c_void;

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameOffset, LittleEndian, Register, RegisterRule,
    UnwindContext, UnwindContextStorage, UnwindSection, UnwindTableRow, X86_64,
};

/// Where a frame's caller state is, relative to the frame's registers.
///
/// `cfa = (rbp if cfa_from_rbp else rsp) + cfa_offset`; the return address
/// is at `cfa + ra_offset`; the caller's `rbp` at `cfa + rbp_offset`, or
/// unchanged when `rbp_offset` is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The CFA is based on `rbp` (else `rsp`).
    pub cfa_from_rbp: bool,
    /// Added to the base register to get the CFA.
    pub cfa_offset: i32,
    /// The return address's offset from the CFA.
    pub ra_offset: i32,
    /// The saved `rbp`'s offset from the CFA; 0: `rbp` is unchanged.
    pub rbp_offset: i32,
}

/// The largest step from one frame's CFA to the next the walk follows: a
/// bigger one is taken for a stale rule (a library unloaded and another
/// loaded at its address keeps its addresses' cached rules) or a corrupt
/// stack, and ends the walk before it reads far from the stack pointer.
const MAX_FRAME: usize = 16 << 20;

/// Entries of an [`UnwindCache`] (a power of two).
const CACHE_ENTRIES: usize = 4096;

/// One cached rule: `ip` is the address looked up (0: empty), `rule` None
/// for an address that ends a walk.
#[derive(Clone, Copy)]
struct Entry {
    ip: usize,
    rule: Option<Rule>,
}

/// A thread's unwind rules by address: a direct-mapped table (a collision
/// replaces the older entry). Zeroed memory is a valid empty cache, so a
/// fresh anonymous mapping can be used as one.
#[repr(C)]
pub struct UnwindCache {
    entries: [Entry; CACHE_ENTRIES],
}

impl UnwindCache {
    /// Bytes to map for one cache.
    pub const BYTES: usize = core::mem::size_of::<UnwindCache>();

    #[inline]
    fn slot(ip: usize) -> usize {
        ((ip as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as usize & (CACHE_ENTRIES - 1)
    }

    #[inline]
    fn rule_for(&mut self, ip: usize) -> Option<Rule> {
        let e = &mut self.entries[Self::slot(ip)];
        if e.ip == ip {
            return e.rule;
        }
        let rule = find_rule(ip);
        *e = Entry { ip, rule };
        rule
    }
}

/// gimli's rule storage, in line (no allocation): x86-64 frames describe at
/// most the 17 general registers and the return address.
struct InlineStorage;

impl UnwindContextStorage<usize> for InlineStorage {
    type Rules = [(Register, RegisterRule<usize>); 24];
    type Stack = [UnwindTableRow<usize, Self>; 2];
}

/// `struct dwarf_eh_bases` of libgcc's `unwind-dw2-fde.h`.
#[repr(C)]
struct EhBases {
    tbase: *mut c_void,
    dbase: *mut c_void,
    func: *mut c_void,
}

extern "C" {
    fn _Unwind_Find_FDE(pc: *mut c_void, bases: *mut EhBases) -> *const u8;
}

/// The rule of the frame executing at `ip`, from its CFI; None if it has
/// none or one this unwinder does not follow.
#[cold]
#[inline(never)]
fn find_rule(ip: usize) -> Option<Rule> {
    let mut bases = EhBases {
        tbase: core::ptr::null_mut(),
        dbase: core::ptr::null_mut(),
        func: core::ptr::null_mut(),
    };
    // SAFETY: a lookup by address; libgcc only reads its registered tables
    // and the loader's.
    let fde = unsafe { _Unwind_Find_FDE(ip as *mut c_void, &mut bases) };
    if fde.is_null() {
        return None;
    }
    // SAFETY: an FDE starts with its 32-bit length and 32-bit CIE pointer
    // (the distance from that field back to its CIE), both in the mapped
    // .eh_frame section.
    let (length, cie_pointer) = unsafe {
        (
            fde.cast::<u32>().read_unaligned(),
            fde.add(4).cast::<u32>().read_unaligned(),
        )
    };
    if length == 0 || length == u32::MAX || cie_pointer == 0 {
        return None; // a terminator, a 64-bit FDE (never emitted on x86-64), or a CIE
    }
    let cie = (fde as usize + 4).checked_sub(cie_pointer as usize)?;
    let end = fde as usize + 4 + length as usize;
    // SAFETY: the CIE and the FDE lie in one mapped .eh_frame section, and
    // the CIE comes first: cie..end is readable for the life of the object.
    let section = unsafe { core::slice::from_raw_parts(cie as *const u8, end - cie) };
    let eh_frame = EhFrame::new(section, LittleEndian);
    let bases = BaseAddresses::default()
        .set_eh_frame(cie as u64)
        .set_text(bases.tbase as u64)
        .set_got(bases.dbase as u64);
    let fde = eh_frame
        .fde_from_offset(
            &bases,
            EhFrameOffset(fde as usize - cie),
            EhFrame::cie_from_offset,
        )
        .ok()?;
    let mut ctx = UnwindContext::<usize, InlineStorage>::new_in();
    let row = fde
        .unwind_info_for_address(&eh_frame, &bases, &mut ctx, ip as u64)
        .ok()?;
    let (cfa_from_rbp, cfa_offset) = match *row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RSP => {
            (false, offset)
        }
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RBP => {
            (true, offset)
        }
        _ => return None,
    };
    let ra_offset = match row.register(X86_64::RA) {
        Some(RegisterRule::Offset(o)) => o,
        // The x86-64 default: the return address just below the CFA.
        None => -8,
        _ => return None,
    };
    let rbp_offset = match row.register(X86_64::RBP) {
        Some(RegisterRule::Offset(o)) if o != 0 => o,
        None | Some(RegisterRule::SameValue) => 0,
        _ => return None,
    };
    Some(Rule {
        cfa_from_rbp,
        cfa_offset: i32::try_from(cfa_offset).ok()?,
        ra_offset: i32::try_from(ra_offset).ok()?,
        rbp_offset: i32::try_from(rbp_offset).ok()?,
    })
}

/// Fills `frames` with the return addresses of the calling thread's stack,
/// innermost first (the first is inside this function's caller... as with
/// [`super::backtrace`], the reader drops heapkit's own frames), using and
/// filling `cache`. Returns how many were written.
///
/// The walk stops at a frame it cannot follow, at a null return address,
/// or when a computed stack address is not above the previous one (a
/// corrupt or unusual stack is cut short, never followed into memory that
/// is not the stack).
#[inline(never)]
pub fn backtrace_cached(frames: &mut [usize], cache: &mut UnwindCache) -> usize {
    let (mut ip, mut sp, mut bp): (usize, usize, usize);
    // SAFETY: reads three registers; no memory is touched. The rip read is
    // the address of the next instruction, inside this function, and rsp
    // is this function's stack pointer at that instruction (the body's
    // stack frame is fixed once the prologue has run).
    unsafe {
        asm!(
            "lea {ip}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            ip = out(reg) ip,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags),
        );
    }
    let mut n = 0;
    let mut first = true;
    while n < frames.len() {
        // A return address points after its call: look up the call itself
        // (it may be a function's last instruction).
        let lookup = if first { ip } else { ip - 1 };
        first = false;
        let Some(rule) = cache.rule_for(lookup) else {
            break;
        };
        let base = if rule.cfa_from_rbp { bp } else { sp };
        let cfa = base.wrapping_add_signed(rule.cfa_offset as isize);
        // The caller's frame is above this one, and not absurdly far.
        if cfa <= sp || cfa - sp > MAX_FRAME || !cfa.is_multiple_of(8) {
            break;
        }
        // SAFETY: the CFI of the code at `lookup` says the return address
        // (and the saved rbp) are stored at these offsets from the CFA, which
        // lies in this thread's stack above the current frame (checked).
        let (ra, saved_bp) = unsafe {
            let ra = (cfa.wrapping_add_signed(rule.ra_offset as isize) as *const usize).read();
            let saved_bp = if rule.rbp_offset != 0 {
                (cfa.wrapping_add_signed(rule.rbp_offset as isize) as *const usize).read()
            } else {
                bp
            };
            (ra, saved_bp)
        };
        if ra == 0 {
            break;
        }
        frames[n] = ra;
        n += 1;
        ip = ra;
        sp = cfa;
        bp = saved_bp;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn deep(levels: usize, frames: &mut [usize], cache: &mut UnwindCache) -> usize {
        if levels == 0 {
            return backtrace_cached(frames, cache);
        }
        let n = deep(levels - 1, frames, cache);
        core::hint::black_box(n)
    }

    #[test]
    fn agrees_with_libgcc() {
        let cache = super::super::map(UnwindCache::BYTES).cast::<UnwindCache>();
        assert!(!cache.is_null());
        // SAFETY: a fresh zeroed mapping is an empty cache.
        let cache = unsafe { &mut *cache };
        for round in 0..2 {
            let mut fast = [0usize; 64];
            let mut slow = [0usize; 64];
            let n = deep(5, &mut fast, cache);
            let m = {
                #[inline(never)]
                fn reference(levels: usize, frames: &mut [usize]) -> usize {
                    if levels == 0 {
                        return super::super::backtrace(frames);
                    }
                    let n = reference(levels - 1, frames);
                    core::hint::black_box(n)
                }
                reference(5, &mut slow)
            };
            assert!(n >= 7, "round {round}: only {n} frames");
            // The innermost frames differ (different functions); from the
            // test function's caller outwards both walks see the same
            // return addresses.
            let tail = 3;
            assert_eq!(
                fast[n - tail..n],
                slow[m - tail..m],
                "round {round}: {:x?} vs {:x?}",
                &fast[..n],
                &slow[..m]
            );
        }
    }
}
