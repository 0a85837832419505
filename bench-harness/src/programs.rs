//! The standard allocator benchmark programs, for `heapkit-bench preload
//! --standard`.
//!
//! Allocator papers and projects (Hoard, mimalloc-bench, rpmalloc, glibc)
//! compare allocators on a common set of small C programs, each built to
//! stress one thing. heapkit carries its own versions of them, written from
//! what each original exercises, in `bench-harness/programs/`: they are
//! compiled into the binary here (so an installed `heapkit-bench` has them
//! too), built with the system C compiler on first use next to the
//! executable, and run unmodified under every backend of `libheapkit.so`,
//! glibc and the real libjemalloc/libmimalloc.
//!
//! | program | what it stresses |
//! |---|---|
//! | `cfrac` | single-thread churn of small, short-lived bignums |
//! | `larson` | server simulation: random replacement, blocks change threads |
//! | `xmalloc` | producer threads allocate, consumer threads only free |
//! | `glibc_simple` | tight single-thread malloc/free loops, 16 B - 4 KiB |
//! | `glibc_thread` | per-thread random replacement, power-law sizes to 32 KiB |
//! | `cache_scratch` | passive false sharing (a freed neighbour's object reused) |
//! | `cache_thrash` | active false sharing between threads' small objects |
//! | `mstress` | random sizes and lifetimes, transfers between threads, thread churn |
//! | `rptest` | bursts of random sizes, half freed by another thread |
//! | `alloc_test` | a ring of live objects with a skewed size mix |
//! | `malloc_large` | 2-20 MiB blocks |

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The shared header every program includes.
const HEADER: (&str, &str) = ("bench.h", include_str!("../programs/bench.h"));

/// Each program's file stem and source.
const SOURCES: &[(&str, &str)] = &[
    ("cfrac", include_str!("../programs/cfrac.c")),
    ("larson", include_str!("../programs/larson.c")),
    ("xmalloc", include_str!("../programs/xmalloc.c")),
    ("glibc_simple", include_str!("../programs/glibc_simple.c")),
    ("glibc_thread", include_str!("../programs/glibc_thread.c")),
    ("cache_scratch", include_str!("../programs/cache_scratch.c")),
    ("cache_thrash", include_str!("../programs/cache_thrash.c")),
    ("mstress", include_str!("../programs/mstress.c")),
    ("rptest", include_str!("../programs/rptest.c")),
    ("alloc_test", include_str!("../programs/alloc_test.c")),
    ("malloc_large", include_str!("../programs/malloc_large.c")),
];

/// The standard set: (row label, program, arguments). Threads are the
/// first argument of the multi-threaded programs; every other argument
/// keeps the program's default (about half a second under glibc here).
pub const STANDARD: &[(&str, &str, &[&str])] = &[
    ("cfrac", "cfrac", &[]),
    ("larson 2T", "larson", &["2"]),
    ("xmalloc 2T", "xmalloc", &["1"]),
    ("glibc-simple", "glibc_simple", &[]),
    ("glibc-thread 1T", "glibc_thread", &["1"]),
    ("glibc-thread 2T", "glibc_thread", &["2"]),
    ("cache-scratch 1T", "cache_scratch", &["1"]),
    ("cache-scratch 2T", "cache_scratch", &["2"]),
    ("cache-thrash 1T", "cache_thrash", &["1"]),
    ("cache-thrash 2T", "cache_thrash", &["2"]),
    ("mstress 2T", "mstress", &["2"]),
    ("rptest 2T", "rptest", &["2"]),
    ("alloc-test 1T", "alloc_test", &["1"]),
    ("alloc-test 2T", "alloc_test", &["2"]),
    ("malloc-large", "malloc_large", &[]),
];

/// Writes the sources into `dir` and compiles every program there (once:
/// a program whose binary is newer than its source is kept). Returns the
/// path of each program by stem.
pub fn build(dir: &Path) -> Result<Vec<(&'static str, PathBuf)>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
    write_if_changed(&dir.join(HEADER.0), HEADER.1)?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let mut built = Vec::new();
    for (stem, source) in SOURCES {
        let src = dir.join(format!("{stem}.c"));
        let changed = write_if_changed(&src, source)?;
        let exe = dir.join(stem);
        if changed || !exe.exists() {
            let out = Command::new(&cc)
                .args(["-O2", "-g", "-pthread", "-o"])
                .arg(&exe)
                .arg(&src)
                .output()
                .map_err(|e| {
                    Error::new(format!(
                        "cannot run the C compiler {cc:?}: {e} (apt-get install gcc, or set CC)"
                    ))
                })?;
            if !out.status.success() {
                return Err(Error::new(format!(
                    "{cc} failed on {}:\n{}",
                    src.display(),
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        built.push((*stem, exe));
    }
    Ok(built)
}

/// Writes `text` to `path` unless it already holds exactly that; returns
/// whether it wrote.
fn write_if_changed(path: &Path, text: &str) -> Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    std::fs::write(path, text)
        .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))?;
    Ok(true)
}

/// The standard set as (label, argv) rows, building the programs in `dir`.
pub fn standard_rows(dir: &Path) -> Result<Vec<(String, Vec<String>)>> {
    let built = build(dir)?;
    Ok(STANDARD
        .iter()
        .map(|(label, stem, args)| {
            let exe = &built
                .iter()
                .find(|(s, _)| s == stem)
                .expect("every STANDARD program is in SOURCES")
                .1;
            let mut argv = vec![exe.display().to_string()];
            argv.extend(args.iter().map(|a| a.to_string()));
            ((*label).to_string(), argv)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_standard_row_names_a_program() {
        for (_, stem, _) in STANDARD {
            assert!(SOURCES.iter().any(|(s, _)| s == stem), "{stem}");
        }
    }

    /// Every program compiles and runs to a clean exit with its line of
    /// output (under whatever malloc this test process's children get).
    #[test]
    fn every_program_builds_and_runs() {
        if Command::new("cc").arg("--version").output().is_err() {
            println!("SKIP: no C compiler");
            return;
        }
        let dir = std::env::temp_dir().join(format!("heapkit-programs-{}", std::process::id()));
        let rows = standard_rows(&dir).expect("the programs build");
        // Built once: a second call compiles nothing and finds them all.
        assert_eq!(standard_rows(&dir).expect("rebuild").len(), rows.len());
        for (label, argv) in &rows {
            let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let name = Path::new(&argv[0]).file_name().unwrap().to_string_lossy();
            assert!(
                out.status.success() && stdout.starts_with(&format!("{name}:")),
                "{label}: {} {stdout}",
                out.status
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
