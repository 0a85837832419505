//! A loaded library's own definition of a symbol, read from its dynamic
//! symbol table: no `dlsym`, so no allocation and no interposition.
//!
//! `libheapkit.so` exports glibc's `__libc_malloc` family so that programs
//! calling them reach heapkit, which means its own `system` backend can no
//! longer reach glibc's by name: every reference, ours included, binds to
//! the first definition in the search order (an unversioned definition
//! satisfies glibc's versioned references too). `dlsym(RTLD_NEXT)` would
//! find glibc's but may call `malloc`, and the backend is chosen inside the
//! first `malloc`. [`symbol_in`] instead walks the loaded objects with
//! `dl_iterate_phdr` (which takes the loader's lock and never allocates),
//! picks the one whose file name ends with the given name, and looks the
//! symbol up in its `DT_GNU_HASH` table, as the dynamic linker does.

use core::ffi::{c_char, c_int, c_void, CStr};

/// What the `dl_iterate_phdr` callback looks for and finds.
struct Query<'a> {
    object: &'a [u8],
    name: &'a [u8],
    found: usize,
}

/// The address of `name` as defined by the loaded object whose path ends
/// with `object` (e.g. `b"/libc.so.6"`), or null. Never allocates.
pub fn symbol_in(object: &[u8], name: &CStr) -> *mut c_void {
    let mut q = Query {
        object,
        name: name.to_bytes(),
        found: 0,
    };
    // SAFETY: the callback only reads the loader's structures for the
    // duration of the call and writes `q`, which outlives it.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&raw mut q).cast()) };
    q.found as *mut c_void
}

/// `dl_iterate_phdr` callback: 1 (stop) once the object was seen.
unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: data is the Query passed by symbol_in; info is the loader's
    // description of one loaded object, valid during the call.
    let (q, info) = unsafe { (&mut *data.cast::<Query<'_>>(), &*info) };
    if info.dlpi_name.is_null() {
        return 0;
    }
    // SAFETY: dlpi_name is a NUL-terminated path owned by the loader.
    let path = unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes();
    if !path.ends_with(q.object) {
        return 0;
    }
    // SAFETY: the object is loaded: its program headers, dynamic section
    // and the tables it points to are mapped and read-only to us.
    q.found = unsafe { lookup(info, q.name) }.unwrap_or(0);
    1
}

/// `Elf64_Dyn` (not in the libc crate): a tag and a value or address.
#[repr(C)]
struct Elf64Dyn {
    d_tag: i64,
    d_un: u64,
}

const DT_NULL: i64 = 0;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_GNU_HASH: i64 = 0x6fff_fef5;
const PT_DYNAMIC: u32 = 2;

/// The program headers of the loaded object `info` describes.
///
/// # Safety
/// `info` must describe a loaded object (mapped for as long as the slice
/// is used).
pub(super) unsafe fn program_headers(info: &libc::dl_phdr_info) -> &[libc::Elf64_Phdr] {
    // SAFETY: caller guarantee: dlpi_phdr points to dlpi_phnum headers.
    unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
}

/// The values of `tags` in the dynamic section of the loaded object
/// `info` describes (0 for a tag it lacks; the last entry wins), or `None`
/// without a dynamic section. Addresses come as stored: see [`absolute`].
///
/// # Safety
/// `info` must describe a loaded object (mapped for the whole call).
pub(super) unsafe fn dynamic_values<const N: usize>(
    info: &libc::dl_phdr_info,
    tags: [i64; N],
) -> Option<[u64; N]> {
    let mut values = [0u64; N];
    // SAFETY: caller guarantee; the dynamic section is mapped and ends
    // with DT_NULL.
    unsafe {
        let dynamic = program_headers(info)
            .iter()
            .find(|p| p.p_type == PT_DYNAMIC)?;
        let mut d = (info.dlpi_addr as usize + dynamic.p_vaddr as usize) as *const Elf64Dyn;
        while (*d).d_tag != DT_NULL {
            if let Some(i) = tags.iter().position(|&t| t == (*d).d_tag) {
                values[i] = (*d).d_un;
            }
            d = d.add(1);
        }
    }
    Some(values)
}

/// An address read from the dynamic section of the object loaded at
/// `base`, made absolute: glibc relocates some of them in place on x86-64
/// (`DT_STRTAB`, `DT_SYMTAB`, `DT_GNU_HASH`) and not others
/// (`DT_INIT_ARRAY`); one below the load base is still relative.
pub(super) fn absolute(base: usize, address: u64) -> usize {
    let p = address as usize;
    if p < base {
        p + base
    } else {
        p
    }
}

/// The GNU hash of a symbol name (the dynamic linker's `dl_new_hash`).
fn gnu_hash(name: &[u8]) -> u32 {
    name.iter()
        .fold(5381u32, |h, &c| h.wrapping_mul(33).wrapping_add(c as u32))
}

/// Looks `name` up in the object's `DT_GNU_HASH` table.
///
/// # Safety
/// `info` must describe a loaded object (mapped for the whole call).
unsafe fn lookup(info: &libc::dl_phdr_info, name: &[u8]) -> Option<usize> {
    let base = info.dlpi_addr as usize;
    // SAFETY: every table read below is part of the loaded object (the
    // caller's guarantee), located through its own dynamic section; the
    // chain walk stops at the entry with the end bit, as the format says.
    unsafe {
        let [strtab, symtab, hash] = dynamic_values(info, [DT_STRTAB, DT_SYMTAB, DT_GNU_HASH])?;
        if strtab == 0 || symtab == 0 || hash == 0 {
            return None;
        }
        let (strtab, symtab, hash) = (
            absolute(base, strtab),
            absolute(base, symtab),
            absolute(base, hash),
        );
        let header = hash as *const u32;
        let (nbuckets, symoffset, bloom_words) = (*header, *header.add(1), *header.add(2));
        if nbuckets == 0 {
            return None;
        }
        let buckets = (hash + 16 + bloom_words as usize * 8) as *const u32;
        let chains = buckets.add(nbuckets as usize);
        let h = gnu_hash(name);
        let mut i = *buckets.add((h % nbuckets) as usize);
        if i < symoffset {
            return None;
        }
        loop {
            let chain = *chains.add((i - symoffset) as usize);
            if chain | 1 == h | 1 {
                let sym = &*(symtab as *const libc::Elf64_Sym).add(i as usize);
                let sym_name = CStr::from_ptr((strtab + sym.st_name as usize) as *const c_char);
                if sym_name.to_bytes() == name && sym.st_shndx != 0 && sym.st_value != 0 {
                    return Some(base + sym.st_value as usize);
                }
            }
            if chain & 1 != 0 {
                return None;
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_glibcs_own_functions() {
        extern "C" {
            fn __libc_malloc(size: usize) -> *mut c_void;
        }
        let found = symbol_in(b"/libc.so.6", c"__libc_malloc");
        // In this test binary nothing interposes __libc_malloc, so the
        // linked reference and the table's definition are the same.
        assert_eq!(found, __libc_malloc as *mut c_void);
        assert!(symbol_in(b"/libc.so.6", c"no_such_symbol_here").is_null());
        assert!(symbol_in(b"/no-such-object.so", c"malloc").is_null());
    }
}
