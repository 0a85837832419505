//! glibc's own definitions of functions libheapkit.so exports too.
//!
//! The library defines `malloc`, `__libc_malloc`, `mallinfo2`, ... so every
//! reference to those names in the process, its own included, binds to
//! heapkit. The `system` backend and the introspection calls that report on
//! glibc need glibc's definitions: [`GlibcFn`] reads each address once from
//! libc.so.6's dynamic symbol table
//! ([`heapkit_core::os::symbols::symbol_in`]), which neither allocates (it
//! may run inside the first `malloc`) nor can be interposed, unlike
//! `dlsym(RTLD_NEXT)`.

use core::ffi::{c_void, CStr};
use core::sync::atomic::{AtomicPtr, Ordering::Relaxed};

use heapkit_core::os::{self, symbols};

/// The address of one glibc function, looked up at its first use (racing
/// lookups store the same address).
pub struct GlibcFn {
    addr: AtomicPtr<c_void>,
    name: &'static CStr,
}

impl GlibcFn {
    /// glibc's function `name`, not looked up yet.
    pub const fn new(name: &'static CStr) -> GlibcFn {
        GlibcFn {
            addr: AtomicPtr::new(core::ptr::null_mut()),
            name,
        }
    }

    /// The address, or null when libc.so.6 has no such symbol (looked up
    /// again at the next call).
    #[inline(always)]
    pub fn get(&self) -> *mut c_void {
        let f = self.addr.load(Relaxed);
        if !f.is_null() {
            return f;
        }
        self.find()
    }

    /// The address; stops the process with a message naming the function
    /// when glibc's libc is not there (the `system` backend cannot work).
    #[inline(always)]
    pub fn required(&self) -> *mut c_void {
        let f = self.get();
        if f.is_null() {
            self.missing();
        }
        f
    }

    #[cold]
    #[inline(never)]
    fn find(&self) -> *mut c_void {
        let f = symbols::symbol_in(b"/libc.so.6", self.name);
        self.addr.store(f, Relaxed);
        f
    }

    #[cold]
    #[inline(never)]
    fn missing(&self) -> ! {
        os::write_stderr(b"heapkit: glibc's ");
        os::write_stderr(self.name.to_bytes());
        os::write_stderr(b" was not found in libc.so.6\n");
        os::abort();
    }
}
