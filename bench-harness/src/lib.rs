//! heapkit-bench: measure allocators on the same work, in one run.
//!
//! # Commands
//!
//! ```sh
//! cargo run --release -p heapkit-bench -- run --quick   # whole matrix, < 5 min on 2 cores
//! cargo run --release -p heapkit-bench -- run --full    # threads 1,2,4,8, 2x work, 5 repetitions
//! heapkit-bench run --allocators system,sizeclass --workloads larson,churn --threads 1,8
//! heapkit-bench compare reports/A/results.json reports/B   # what moved beyond the noise
//! heapkit-bench list                                       # allocators and workloads
//! heapkit-bench profile -- ./app args                      # leaks and allocation sites by stack
//! cargo bench -p heapkit-bench                             # criterion micro-benchmarks
//! ```
//!
//! `run` writes `reports/<name>/` (default name `<preset>-<UTC date-time>`, or
//! `--name`, under `--out`): `results.json` (every raw sample, the machine, the
//! configuration), `REPORT.md` (tables with ratios to `--baseline`, default
//! `system`) and SVG charts. Presets:
//!
//! | preset | threads (multi-threaded workloads) | work scale | repetitions |
//! |---|---|---|---|
//! | `--quick` (default) | 1, 4 | 1.0 (each cell about 0.1–0.3 s) | 3 |
//! | `--full` | 1, 2, 4, 8 | 2.0 | 5 |
//!
//! `--threads`, `--scale`, `--repetitions` override a preset (the report then
//! says `custom`). Workloads: [`workloads`]; latency and memory measurement:
//! [`measure`]; derived numbers: [`report::summary`]; noise rule of `compare`:
//! [`stats::classify_change`].
//!
//! # How the pieces fit
//!
//! ```text
//! heapkit-bench run ──► run.rs ──► for each (allocator, workload, threads, repetition)
//!        │                              spawn  hk-cell-<allocator> workload ...   (cell::spawn_cell)
//!        │                              read one JSON line = report::Sample
//!        ▼
//!   report::Report ──► report::json (results.json, the source of truth)
//!                  ├─► report::markdown (REPORT.md)
//!                  └─► report::svg (charts)
//! heapkit-bench compare OLD NEW ──► compare.rs (reads two results.json)
//! heapkit-bench list            ──► list.rs
//! ```
//!
//! # Why one process per sample, one binary per allocator
//!
//! A Rust global allocator is process-wide and fixed at link time, so each
//! allocator gets its own tiny *cell binary* (`src/bin/hk-cell-<name>.rs`), whose
//! whole body is one [`cell_main!`] line. The macro installs the allocator as a
//! plain static `#[global_allocator]` and calls the shared [`cell::cell_entry`].
//! Every allocation the workloads make therefore reaches the allocator through the
//! same direct, statically dispatched `__rust_alloc` call, with no dynamic
//! dispatch, no `LD_PRELOAD` interposition and no extra branch: the way a cell gets
//! its allocator costs the same for every allocator. All cell binaries are
//! compiled from the same library code with the same profile; they differ only in
//! the one static.
//!
//! Every repetition of every cell runs in a fresh process, so the peak RSS, the
//! RSS at the end and the page faults of one sample are not polluted by another.
//!
//! # Adding an allocator
//!
//! 1. add a line to [`with_allocators!`] (name, type, constructor, description);
//! 2. add `src/bin/hk-cell-<name>.rs` with one line, e.g.
//!    `heapkit_bench::cell_main!(heapkit_slab::Slab = heapkit_slab::Slab::new());`
//! 3. add the crate to `[dependencies]` in `bench-harness/Cargo.toml`.
//!
//! The criterion benches in `benches/alloc.rs` pick the new line up by themselves.

pub mod args;
pub mod cell;
pub mod compare;
pub mod error;
pub mod list;
pub mod locate;
pub mod measure;
pub mod preload;
pub mod profile;
pub mod programs;
pub mod registry;
pub mod replay;
pub mod replay_cell;
pub mod replay_plan;
pub mod report;
pub mod rng;
pub mod run;
pub mod sample;
pub mod session;
pub mod stats;
pub mod symbolize;
pub mod trace_info;
pub mod workloads;

/// The allocator registry: one line per allocator.
///
/// Each line is `name: Type = constant-expression, "description";`. The macro hands
/// the whole list to `$callback!`, so the registry table ([`registry::ALLOCATORS`])
/// and the criterion benches are generated from this single list. The cell
/// binary of `name` is `hk-cell-<name>`.
#[macro_export]
macro_rules! with_allocators {
    ($callback:ident) => {
        $callback! {
            system: ::std::alloc::System = ::std::alloc::System,
                "glibc malloc (Rust's std::alloc::System)";
            jemalloc: ::tikv_jemallocator::Jemalloc = ::tikv_jemallocator::Jemalloc,
                "jemalloc 5 (tikv-jemallocator)";
            mimalloc: ::mimalloc::MiMalloc = ::mimalloc::MiMalloc,
                "mimalloc 2 (mimalloc crate)";
            bump: ::heapkit_bump::Bump = ::heapkit_bump::Bump::new(),
                "heapkit bump allocator (per-thread chunks, frees only the last block)";
            slab: ::heapkit_slab::Slab<::heapkit_slab::Fast> = ::heapkit_slab::Slab::fast(),
                "heapkit slab allocator (per-thread magazines, depot)";
            pool: ::heapkit_pool::Pool<::heapkit_pool::Fast> = ::heapkit_pool::Pool::fast(),
                "heapkit pool allocator (segregated free lists, thread caches)";
            sizeclass: ::heapkit_sizeclass::SizeClass<::heapkit_sizeclass::Fast> =
                ::heapkit_sizeclass::SizeClass::fast(),
                "heapkit size-class allocator (mimalloc-style free-list sharding, the flagship)";
            sizeclass_hardened: ::heapkit_sizeclass::SizeClass<::heapkit_sizeclass::Hardened> =
                ::heapkit_sizeclass::SizeClass::hardened(),
                "sizeclass in hardened mode (every double/interior free detected, encoded lists, canaries, guard pages)";
            slab_hardened: ::heapkit_slab::Slab<::heapkit_slab::Hardened> =
                ::heapkit_slab::Slab::hardened(),
                "slab in hardened mode (every double/interior free detected, encoded lists, canaries, guard pages)";
            pool_hardened: ::heapkit_pool::Pool<::heapkit_pool::Hardened> =
                ::heapkit_pool::Pool::hardened(),
                "pool in hardened mode (every double/interior free detected, encoded lists, canaries, guard pages)";
        }
    };
}

/// The whole body of a cell binary: installs `$ty` as the global allocator and
/// runs the cell job named on the command line (see [`cell::cell_entry`]).
///
/// `cell_main!(path::Type)` works for unit structs; `cell_main!(Type = expr)`
/// takes a constant constructor such as `Type::new()`.
#[macro_export]
macro_rules! cell_main {
    ($ty:ty = $init:expr) => {
        #[global_allocator]
        static GLOBAL: $ty = $init;

        fn main() {
            ::std::process::exit($crate::cell::cell_entry());
        }
    };
    ($ty:path) => {
        $crate::cell_main!($ty = $ty);
    };
}
