//! Links the unwinder statically into libheapkit.so.
//!
//! Rust's standard library needs the `_Unwind_*` functions (backtraces, and
//! landing pads in the prebuilt `std` even under `panic = "abort"`), and
//! the `unwind` crate asks for them with `-lgcc_s`: every process started
//! under `LD_PRELOAD=libheapkit.so` then loads, relocates and initialises
//! `libgcc_s.so.1` as well, about 0.1 ms of a `/bin/true`'s 1 ms. A linker
//! script named `libgcc_s.so` in a directory searched first turns that
//! request into gcc's static copy of the same code (`libgcc_eh.a`, built
//! position-independent for `gcc -shared -static-libgcc`); the library's
//! version script keeps those symbols local, so the program's own
//! `libgcc_s.so.1` (C++ exceptions) is neither shadowed nor replaced.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let script = out.join("unwind-static").join("libgcc_s.so");
    std::fs::create_dir_all(script.parent().expect("has a parent"))
        .expect("create the linker-script directory");
    std::fs::write(&script, "INPUT(-lgcc_eh)\n").expect("write the linker script");
    println!(
        "cargo:rustc-link-search=native={}",
        script.parent().expect("has a parent").display()
    );
}
