//! A loaded object's own constructors: skipping the ones that follow a
//! given constructor in its `.init_array`.
//!
//! `libheapkit.so` links the peers it can forward to (jemalloc through
//! `tikv-jemalloc-sys`, mimalloc through `libmimalloc-sys`) as static C
//! libraries, and each brings an `__attribute__((constructor))` that
//! initialises its allocator when the library is loaded: jemalloc maps its
//! base chunk, creates arena 0 and registers `pthread_atfork` handlers (run
//! on every `fork` after that), mimalloc reads its options and sets up its
//! main heap. Measured, that is 57 of the 161 page faults and 0.23 ms of the
//! 1.22 ms a preloaded `/bin/true` takes (libmimalloc: 66 faults, 0.87 ms),
//! paid by every process a preloaded shell or compiler driver starts,
//! whichever backend runs. Neither peer needs its constructor to work:
//! both initialise on their first call.
//!
//! The dynamic loader calls an object's `.init_array` entries in order and
//! reads each entry just before calling it, so a constructor may replace the
//! entries after its own. [`skip_after`] finds the loaded object holding a
//! given constructor (`dl_iterate_phdr`, which never allocates), reads its
//! `DT_INIT_ARRAY`, and replaces the entries after that constructor with a
//! no-op, lifting the `RELRO` protection around the write. It changes
//! nothing unless exactly the expected number of entries follow, so a link
//! that orders them differently runs every constructor as before (the
//! shim's test sees that and fails).

use core::ffi::{c_int, c_void};

use super::symbols::{absolute, dynamic_values, program_headers};
use super::{keeping_errno, page_size};

const DT_INIT_ARRAY: i64 = 25;
const DT_INIT_ARRAYSZ: i64 = 27;
const PT_LOAD: u32 = 1;
const PT_GNU_RELRO: u32 = 0x6474_e552;
const PF_W: u32 = 2;

/// A constructor as `.init_array` holds it (the loader passes `argc`,
/// `argv` and `envp`, which a function taking none ignores under the C
/// calling convention).
pub type Constructor = extern "C" fn();

/// What replaces a skipped constructor.
extern "C" fn skipped() {}

/// What the `dl_iterate_phdr` callback looks for and what it did.
struct Request {
    /// The caller's own constructor, an entry of the array.
    own: usize,
    /// How many entries must follow it.
    expected: usize,
    /// True once they were replaced.
    replaced: bool,
}

/// Replaces, in the `.init_array` of the loaded object that holds `own`,
/// the entries after `own` with a no-op, if there are exactly `expected`
/// of them (and at least one); returns whether they were replaced (false:
/// the object, its array or `own` in it was not found, another number of
/// entries follows, or their page could not be made writable).
///
/// Call it from `own` itself while the loader runs the object's
/// constructors: the entries replaced have not run yet, and the loader
/// calls the no-op in their place.
///
/// # Safety
/// `own` must be a constructor in its object's `.init_array`, running now;
/// the caller must know that skipping every constructor after it is sound
/// (each initialises something that also initialises itself on first use,
/// or is never used).
pub unsafe fn skip_after(own: Constructor, expected: usize) -> bool {
    let mut r = Request {
        own: own as usize,
        expected,
        replaced: false,
    };
    // SAFETY: the callback reads the loader's description of each object
    // during the call and writes `r`, which outlives it.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&raw mut r).cast()) };
    r.replaced
}

/// `dl_iterate_phdr` callback: 1 (stop) once the object holding the
/// constructor was seen.
unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: data is the Request passed by skip_after; info is the
    // loader's description of one loaded object, valid during the call.
    let (r, info) = unsafe { (&mut *data.cast::<Request>(), &*info) };
    // SAFETY: info describes a loaded object, mapped during the call.
    let phdrs = unsafe { program_headers(info) };
    let base = info.dlpi_addr as usize;
    // Whether a loadable segment (writable if `write`) holds `from..to`.
    let loaded = |from: usize, to: usize, write: bool| {
        phdrs.iter().any(|p| {
            p.p_type == PT_LOAD
                && (!write || p.p_flags & PF_W != 0)
                && from >= base + p.p_vaddr as usize
                && to <= base + (p.p_vaddr + p.p_memsz) as usize
        })
    };
    if !loaded(r.own, r.own + 1, false) {
        return 0;
    }
    // SAFETY: as above.
    let Some([array, bytes]) = (unsafe { dynamic_values(info, [DT_INIT_ARRAY, DT_INIT_ARRAYSZ]) })
    else {
        return 1;
    };
    if array == 0 {
        return 1;
    }
    let entries = absolute(base, array) as *mut usize;
    let len = bytes as usize / size_of::<usize>();
    // SAFETY: DT_INIT_ARRAY/SZ describe `len` relocated function pointers
    // in the object's data, mapped while it is loaded.
    let Some(at) = (0..len).find(|&i| unsafe { entries.add(i).read() } == r.own) else {
        return 1;
    };
    if len - at - 1 != r.expected || r.expected == 0 {
        return 1;
    }
    let first = entries.wrapping_add(at + 1) as usize;
    let last = entries.wrapping_add(len) as usize;
    let page = page_size();
    let start = first & !(page - 1);
    let end = (last + page - 1) & !(page - 1);
    // The pages the loader made read-only after relocation: PT_GNU_RELRO
    // rounded down at both ends, as glibc's `_dl_protect_relro` does.
    let relro = phdrs.iter().find(|p| p.p_type == PT_GNU_RELRO).map(|p| {
        let from = base + p.p_vaddr as usize;
        (
            from & !(page - 1),
            (from + p.p_memsz as usize) & !(page - 1),
        )
    });
    let protected = match relro {
        Some((lo, hi)) if start >= lo && end <= hi => true,
        Some((lo, hi)) if start < hi && end > lo => return 1, // straddles: leave it
        // Outside RELRO: writable only in a writable segment.
        _ if loaded(first, last, true) => false,
        _ => return 1,
    };
    if protected {
        // SAFETY: whole pages of the object's own relocated data, made
        // writable for the moment of the write; nothing that runs meanwhile
        // relies on their protection.
        let ok = keeping_errno(|| unsafe {
            libc::mprotect(
                start as *mut c_void,
                end - start,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        }) == 0;
        if !ok {
            return 1;
        }
    }
    for i in at + 1..len {
        // SAFETY: an entry of the array, writable now (see above); the
        // loader has not read it yet (it reads each entry just before
        // calling it, and the constructor running is `own`, before it).
        unsafe {
            entries
                .add(i)
                .write_volatile(skipped as Constructor as usize)
        };
    }
    if protected {
        // SAFETY: the same pages, back to the loader's protection.
        keeping_errno(|| unsafe {
            libc::mprotect(start as *mut c_void, end - start, libc::PROT_READ)
        });
    }
    r.replaced = true;
    1
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_function_that_is_no_constructor_changes_nothing() {
        extern "C" fn not_a_constructor() {}
        // SAFETY: not_a_constructor is in no `.init_array`: skip_after finds
        // its object but not the entry, and writes nothing.
        assert!(!unsafe { super::skip_after(not_a_constructor, 1) });
    }
}
