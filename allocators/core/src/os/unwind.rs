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
//! result, a `Rule` of three numbers (where the caller's stack pointer,
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
//! Consecutive walks of one thread share most of their frames (the outer
//! ones: `main`, the interpreter loop, the request handler), so the cache
//! also keeps the thread's previous walk, step by step: where each return
//! address and saved `rbp` was read, and what was read there. When a walk
//! reaches a state (instruction, stack and frame pointer) the previous walk
//! also passed through, the steps above it are checked, not redone: a step
//! whose stack slots still hold the values read last time leads, by the
//! same rule, to the same next state, so only two loads and compares per
//! frame remain, with no rule lookup. The first slot that changed ends the
//! reuse and the walk goes on as usual from there.
//!
//! Cost: a hit is a hash probe; a miss about 1-3 us; a reused frame two
//! loads. The cache is about 70 KiB per thread (mapped by the caller).

use core::arch::asm;
use core::ffi::c_void;
use core::mem::MaybeUninit;

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameOffset, LittleEndian, Register, RegisterRule,
    UnwindContext, UnwindContextStorage, UnwindSection, UnwindTableRow, X86_64,
};

/// Where a frame's caller state is, relative to the frame's registers,
/// packed into one word (a cache entry is two words and moves in
/// registers, not through the stack):
///
/// `cfa = (rbp if cfa_from_rbp else rsp) + cfa_offset`; the return address
/// is at `cfa + ra_offset`; the caller's `rbp` at `cfa + rbp_offset`, or
/// unchanged when `rbp_offset` is 0.
///
/// Bits: 0-31 `cfa_offset` (i32), 32-47 `ra_offset` (i16), 48-62
/// `rbp_offset` (15-bit signed), 63 `cfa_from_rbp`. Zero is no rule (a
/// real CFA is never the base register itself: it lies above the return
/// address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rule(u64);

impl Rule {
    const NONE: Rule = Rule(0);

    /// The packed rule; None when an offset does not fit (no compiler
    /// emits such frames) or the CFA would be the base register.
    fn new(cfa_from_rbp: bool, cfa_offset: i64, ra_offset: i64, rbp_offset: i64) -> Option<Rule> {
        let cfa_offset = i32::try_from(cfa_offset).ok().filter(|&o| o != 0)?;
        let ra_offset = i16::try_from(ra_offset).ok()?;
        if !(-(1 << 14)..(1 << 14)).contains(&rbp_offset) {
            return None;
        }
        Some(Rule(
            cfa_offset as u32 as u64
                | (ra_offset as u16 as u64) << 32
                | (rbp_offset as u64 & 0x7fff) << 48
                | (cfa_from_rbp as u64) << 63,
        ))
    }

    #[inline]
    fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The CFA is based on `rbp` (else `rsp`).
    #[inline]
    fn cfa_from_rbp(self) -> bool {
        self.0 >> 63 != 0
    }

    /// Added to the base register to get the CFA.
    #[inline]
    fn cfa_offset(self) -> isize {
        self.0 as u32 as i32 as isize
    }

    /// The return address's offset from the CFA.
    #[inline]
    fn ra_offset(self) -> isize {
        (self.0 >> 32) as u16 as i16 as isize
    }

    /// The saved `rbp`'s offset from the CFA; 0: `rbp` is unchanged.
    #[inline]
    fn rbp_offset(self) -> isize {
        ((self.0 << 1) as i64 >> 49) as isize
    }
}

/// The largest step from one frame's CFA to the next the walk follows: a
/// bigger one is taken for a stale rule (a library unloaded and another
/// loaded at its address keeps its addresses' cached rules) or a corrupt
/// stack, and ends the walk before it reads far from the stack pointer.
const MAX_FRAME: usize = 16 << 20;

/// Entries of an [`UnwindCache`] (a power of two).
const CACHE_ENTRIES: usize = 4096;

/// One cached rule: `ip` is the address looked up (0: empty), `rule`
/// [`Rule::NONE`] for an address that ends a walk.
#[derive(Clone, Copy)]
struct Entry {
    ip: usize,
    rule: Rule,
}

/// Steps of a walk kept for the next one: a walk of more frames is not
/// kept (the recorder asks for 48).
const LAST_STEPS: usize = 64;

/// One step of a walk, from a frame to its caller: the rule it followed
/// and where it went (the state `(ra, cfa, bp)`).
#[derive(Clone, Copy)]
#[repr(C)]
struct Step {
    /// The return address read: the caller's instruction pointer.
    ra: usize,
    /// The CFA: the caller's stack pointer.
    cfa: usize,
    /// The caller's `rbp` (read from the stack, or the frame's own if the
    /// rule leaves it unchanged).
    bp: usize,
    /// The frame's rule: the return address was read at `cfa +
    /// rule.ra_offset`, the caller's `rbp` at `cfa + rule.rbp_offset`.
    rule: Rule,
}

impl Step {
    /// Where the step read the return address.
    #[inline]
    fn ra_at(&self) -> usize {
        self.cfa.wrapping_add_signed(self.rule.ra_offset())
    }

    /// Where the step read the caller's `rbp`; None: it did not.
    #[inline]
    fn bp_at(&self) -> Option<usize> {
        let offset = self.rule.rbp_offset();
        (offset != 0).then(|| self.cfa.wrapping_add_signed(offset))
    }
}

/// The thread's previous walk.
///
/// Its steps sit at `slots[base..base + len]`, wherever the walk before
/// left the steps this one reused: a walk that joins the previous one at
/// another depth (most do: consecutive allocations come from different
/// call sites, at different depths, under the same outer frames) moves
/// `base` instead of the reused steps, whose `memmove` took a point of all
/// samples in a CPython profile of every allocation (2.9% -> 1.8%, the
/// rest CPython's own).
///
/// Invariant: `slots[base..base + len]` are the steps of the last
/// completed walk, in order (`cfa` strictly increasing), the first taken
/// from instruction `first_ip`, each other from the state the one before
/// it leads to; `len <= LAST_STEPS` and `base <= LAST_STEPS` (so the next
/// walk's steps fit above any `base`). Zero is no walk.
#[repr(C)]
struct LastWalk {
    slots: [Step; 2 * LAST_STEPS],
    base: usize,
    len: usize,
    /// The instruction the walk started from (inside `backtrace_cached`).
    first_ip: usize,
    /// The walk stopped at its last state because no step leads on from
    /// it (no rule for its instruction, or one whose CFA is not above its
    /// stack pointer: both decided by the state alone), not at its
    /// caller's capacity: a walk that reuses its steps to the end stops
    /// there too, without looking up the outermost frame's rule again (a
    /// probe that missed the cache on every walk).
    ended: bool,
}

impl LastWalk {
    /// The walk's steps.
    #[inline]
    fn steps(&self) -> &[Step] {
        debug_assert!(self.base <= LAST_STEPS && self.len <= LAST_STEPS);
        &self.slots[self.base..self.base + self.len]
    }
}

/// The rule the previous walk (`steps`, started at `first_ip`) followed at
/// step `n`, if it started that step from instruction `ip` too: the
/// innermost frames (heapkit's own, the program's allocation wrappers) are
/// mostly the same functions at other depths, and this saves their table
/// lookups.
#[inline]
fn rule_at(steps: &[Step], first_ip: usize, n: usize, ip: usize) -> Rule {
    if n >= steps.len() {
        return Rule::NONE;
    }
    let prev_ip = if n == 0 { first_ip } else { steps[n - 1].ra };
    if prev_ip == ip {
        steps[n].rule
    } else {
        Rule::NONE
    }
}

/// A thread's unwind rules by address (a direct-mapped table: a collision
/// replaces the older entry) and its previous walk. Zeroed memory is a
/// valid empty cache, so a fresh anonymous mapping can be used as one.
#[repr(C)]
pub struct UnwindCache {
    rules: RuleTable,
    last: LastWalk,
}

impl UnwindCache {
    /// Bytes to map for one cache.
    pub const BYTES: usize = core::mem::size_of::<UnwindCache>();
}

/// Rules by instruction address, direct-mapped. All zero is empty.
#[repr(C)]
struct RuleTable {
    entries: [Entry; CACHE_ENTRIES],
}

impl RuleTable {
    #[inline]
    fn slot(ip: usize) -> usize {
        ((ip as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as usize & (CACHE_ENTRIES - 1)
    }

    /// The rule of the code at `ip` (looked up in the CFI on a miss).
    #[inline]
    fn rule_for(&mut self, ip: usize) -> Rule {
        let e = &mut self.entries[Self::slot(ip)];
        if e.ip == ip {
            return e.rule;
        }
        let rule = find_rule(ip).unwrap_or(Rule::NONE);
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
    Rule::new(cfa_from_rbp, cfa_offset, ra_offset, rbp_offset)
}

/// A frame's registers at one instruction: where a walk can start.
///
/// Taken with [`FrameState::here`] in a function that then calls, directly
/// or not, [`backtrace_from`]: the walk starts at that function's frame,
/// and the frames between (the recorder's own) are neither walked nor
/// written. A recorded allocation walked four such frames (a quarter of
/// CPython's walk) before this.
#[derive(Clone, Copy, Debug)]
pub struct FrameState {
    ip: usize,
    sp: usize,
    bp: usize,
}

impl FrameState {
    /// The registers of the frame this is inlined into, at this point.
    #[inline(always)]
    pub fn here() -> FrameState {
        let (ip, sp, bp): (usize, usize, usize);
        // SAFETY: reads three registers; no memory is touched. The rip
        // read is the address of the next instruction, in the function this
        // is inlined into, and rsp its stack pointer at that instruction:
        // the CFI for that address describes exactly this state.
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
        FrameState { ip, sp, bp }
    }

    /// The instruction the state was taken at (inside the function that
    /// took it; a walk from it starts with that function's caller).
    #[inline]
    pub fn ip(&self) -> usize {
        self.ip
    }
}

/// Fills `frames` with the return addresses of the calling thread's stack,
/// innermost first (the first is inside this function's caller... as with
/// [`super::backtrace`], the reader drops heapkit's own frames), using and
/// filling `cache`. Returns how many were written: at most `frames.len()`
/// and at most 64.
///
/// The walk stops at a frame it cannot follow, at a null return address,
/// or when a computed stack address is not above the previous one (a
/// corrupt or unusual stack is cut short, never followed into memory that
/// is not the stack).
#[inline(never)]
pub fn backtrace_cached(frames: &mut [usize], cache: &mut UnwindCache) -> usize {
    let start = FrameState::here();
    // SAFETY: taken in this very frame, live during the walk.
    unsafe { backtrace_from(start, frames, cache) }
}

/// [`backtrace_cached`] from the frame `start` was taken in: the first
/// return address is that frame's.
///
/// # Safety
/// `start` was taken by [`FrameState::here`] on this thread, in a function
/// that has not returned since (this call is made from it, directly or
/// through others): the walk reads the stack slots its frame's CFI names,
/// which are this thread's live stack only while that frame is.
#[inline(never)]
pub unsafe fn backtrace_from(
    start: FrameState,
    frames: &mut [usize],
    cache: &mut UnwindCache,
) -> usize {
    let cap = frames.len().min(LAST_STEPS);
    let frames = &mut frames[..cap];
    let UnwindCache { rules, last } = cache;
    let prev_len = last.len;
    // Three phases, each its own loop (one loop with a `joined` flag kept
    // six induction variables, half of them on the stack): fresh steps
    // until the walk reaches a state the previous walk passed through;
    // that walk's steps from there, checked against the stack; fresh steps
    // again after the first slot that changed.
    //
    // Phase 1: this walk's steps go to `fresh` (`last` holds the previous
    // walk until the join).
    let mut fresh = [const { MaybeUninit::<Step>::uninit() }; LAST_STEPS];
    let mut state = (start.ip, start.sp, start.bp);
    // The previous walk's first step whose CFA is not below the state's
    // stack pointer.
    let mut cursor = 0;
    let mut n = 0;
    let prev = last.steps();
    let phase1 = loop {
        if n == cap {
            break Next::Cut;
        }
        let (ip, sp, bp) = state;
        if n > 0 {
            while cursor < prev.len() && prev[cursor].cfa < sp {
                cursor += 1;
            }
            if let Some(at) = prev.get(cursor) {
                if at.cfa == sp && at.ra == ip && at.bp == bp {
                    // Step `cursor` led the previous walk to this very
                    // state.
                    break Next::Joined;
                }
            }
        }
        let mut rule = rule_at(prev, last.first_ip, n, ip);
        if rule.is_none() {
            // A return address points after its call: look up the call
            // itself (it may be a function's last instruction).
            rule = rules.rule_for(if n == 0 { ip } else { ip - 1 });
        }
        // SAFETY: `state` is the walk's state: the start frame (live, by
        // this function's contract) or one a checked step led to.
        match unsafe { take_step(rule, state) } {
            Next::Step(step) => {
                fresh[n].write(step);
                frames[n] = step.ra;
                n += 1;
                state = (step.ra, step.cfa, step.bp);
            }
            other => break other,
        }
    };
    let ended = match phase1 {
        Next::Joined => {
            // Phase 2.
            let from = cursor + 1;
            let reused = rejoin(last, from, &fresh[..n], &mut frames[n..], &mut state);
            n += reused;
            if last.ended && from + reused == prev_len {
                // The previous walk stopped in this very state.
                true
            } else {
                // Phase 3: the previous walk is consumed; record straight
                // into it.
                loop {
                    if n == cap {
                        break false;
                    }
                    // n > 0: a join follows a step.
                    let rule = rules.rule_for(state.0 - 1);
                    // SAFETY: as in phase 1.
                    match unsafe { take_step(rule, state) } {
                        Next::Step(step) => {
                            last.slots[last.base + n] = step;
                            frames[n] = step.ra;
                            n += 1;
                            state = (step.ra, step.cfa, step.bp);
                        }
                        other => break matches!(other, Next::Ended),
                    }
                }
            }
        }
        other => {
            let base = last.base;
            for (slot, s) in last.slots[base..base + n].iter_mut().zip(&fresh[..n]) {
                // SAFETY: fresh[..n] were written by phase 1.
                *slot = unsafe { s.assume_init() };
            }
            matches!(other, Next::Ended)
        }
    };
    last.len = n;
    last.first_ip = start.ip;
    last.ended = ended;
    debug_assert!(last.steps().windows(2).all(|w| w[0].cfa < w[1].cfa));
    n
}

/// What a walk does next.
enum Next {
    /// Takes this step.
    Step(Step),
    /// Stops: no step leads on from the state (no rule for its
    /// instruction, or a CFA not above its stack pointer; see
    /// [`LastWalk::ended`]).
    Ended,
    /// Stops for another reason: a null return address (a slot the next
    /// walk would read again), or no room for more frames.
    Cut,
    /// Reached a state of the previous walk (phase 1 only).
    Joined,
}

/// The step by `rule` from the state `(ip, sp, bp)`.
///
/// # Safety
/// The state is a live frame of this thread's stack whose code `rule`
/// describes (the walk's start, or a state a checked step led to): the
/// slots it names lie in this thread's stack above `sp`.
#[inline(always)]
unsafe fn take_step(rule: Rule, (_, sp, bp): (usize, usize, usize)) -> Next {
    if rule.is_none() {
        return Next::Ended;
    }
    let base = if rule.cfa_from_rbp() { bp } else { sp };
    let cfa = base.wrapping_add_signed(rule.cfa_offset());
    // The caller's frame is above this one, and not absurdly far.
    if cfa <= sp || cfa - sp > MAX_FRAME || !cfa.is_multiple_of(8) {
        return Next::Ended;
    }
    let mut step = Step {
        ra: 0,
        cfa,
        bp,
        rule,
    };
    // SAFETY: the CFI of the frame's code says the return address (and
    // the saved rbp) are stored at these offsets from the CFA, which lies
    // in this thread's stack above the current frame (checked).
    unsafe {
        step.ra = (step.ra_at() as *const usize).read();
        if let Some(bp_at) = step.bp_at() {
            step.bp = (bp_at as *const usize).read();
        }
    }
    if step.ra == 0 {
        return Next::Cut;
    }
    Next::Step(step)
}

/// Continues a walk through the previous one: the current walk, `fresh`
/// so far, is in the state the previous walk's step `from - 1` led to.
/// Checks the previous walk's steps from `from` (at most `frames.len()`)
/// against the stack as it is now, stopping at the first whose slots
/// changed, writes the return addresses of those that held to `frames`,
/// and makes `last` this walk so far: `fresh`, then the steps that held
/// (left where they are: `base` moves). Returns how many held; `state`
/// becomes the state the last of them led to.
#[inline]
fn rejoin(
    last: &mut LastWalk,
    from: usize,
    fresh: &[MaybeUninit<Step>],
    frames: &mut [usize],
    state: &mut (usize, usize, usize),
) -> usize {
    let at = fresh.len();
    let held = &last.steps()[from..];
    let mut reused = 0;
    for (s, frame) in held.iter().zip(frames.iter_mut()) {
        // This walk is in the state from which the previous walk took this
        // step (induction: the state matched at `from`, and each step that
        // held leads to the same next state), so a fresh step would read
        // the same addresses with the same rule.
        // SAFETY: those addresses are slots of this thread's stack above
        // the current frame, whose CFA passed the walk's bounds check.
        let same = unsafe {
            (s.ra_at() as *const usize).read() == s.ra
                && s.bp_at()
                    .is_none_or(|at| (at as *const usize).read() == s.bp)
        };
        if !same {
            break;
        }
        *frame = s.ra;
        *state = (s.ra, s.cfa, s.bp);
        reused += 1;
    }
    #[cfg(test)]
    tests::note_rejoin(reused, reused < held.len().min(frames.len()));
    // Step `from` of the previous walk is step `at` of this one.
    let held_at = last.base + from;
    let base = match held_at.checked_sub(at) {
        Some(base) if base <= LAST_STEPS => base,
        _ => {
            // Out of room (a long drift one way): move the held steps to
            // the middle.
            let base = LAST_STEPS / 2;
            #[cfg(test)]
            tests::note_recentre();
            last.slots.copy_within(held_at..held_at + reused, base + at);
            base
        }
    };
    for (slot, s) in last.slots[base..base + at].iter_mut().zip(fresh) {
        // SAFETY: the caller's fresh[..at] were written by its walk.
        *slot = unsafe { s.assume_init() };
    }
    last.base = base;
    reused
}

#[cfg(test)]
mod tests;
