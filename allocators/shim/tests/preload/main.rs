//! Real programs under `libheapkit.so`, on every backend the library
//! accepts (discovered from its own error message, so a new backend is
//! tested without touching this file).
//!
//! Each test runs one program under all backends at once (one child process
//! per backend) and checks its *result*, not just its exit status: CPython's
//! own test modules, sqlite3 on a generated database (integrity check and
//! query results equal to a run without the shim), git (tree and commit ids
//! equal to a run without the shim, `fsck --strict`), sort of a generated
//! file (checksum computed here in Rust), redis-server (dataset digests
//! equal to a run without the shim across a forked save, a reload and a
//! flush on its lazy-free thread), xz and zstd with two threads (round
//! trips), jq and Tcl (output equal to a run without the shim), the C
//! stress program
//! (`tests/preload/stress.c`, every entry point and edge case, threads,
//! fork, dlopen of a TLS library) and a C++ new/delete check.
//!
//! The library must be built first (the tests never run cargo themselves):
//!
//! ```sh
//! cargo build --release -p heapkit-shim && cargo test --release -p heapkit-shim --test preload
//! ```
//!
//! A program that is not installed prints a `SKIP` line and the test passes;
//! the Debian packages are `python3` (any CPython with its `test` package;
//! here pyenv's), `sqlite3`, `git`, `coreutils`, `redis-server` and
//! `redis-tools`, `xz-utils`, `zstd`, `jq`, `tcl`, `gcc`, `g++`.
//!
//! `bump` never reuses memory, so it gets lighter workloads.
//!
//! One module per family of programs; [`harness`] is what they share.

mod c_api;
mod command_line;
mod data_stores;
mod harness;
mod library;
mod misuse;
mod python;
