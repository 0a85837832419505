//! Where the harness finds its parts: cell binaries, `libheapkit.so` and the
//! directory for the standard programs it compiles.
//!
//! The rule, the same in a clone (`target/release/heapkit-bench`) and after
//! `cargo install --path bench-harness` (`~/.cargo/bin/heapkit-bench`):
//!
//! - **cell binaries** (`hk-cell-<allocator>`) are binaries of this package:
//!   cargo builds and `cargo install` installs them beside `heapkit-bench`.
//! - **`libheapkit.so`**, first found of:
//!   1. `--lib PATH`;
//!   2. `$HEAPKIT_LIB`;
//!   3. beside the executable (a clone's `target/release/`);
//!   4. `../lib/libheapkit.so` relative to the executable's directory (a
//!      packaged install);
//!   5. `target/release/libheapkit.so` in the source tree the executable was
//!      built from, built there with `cargo build --release -p heapkit-shim`
//!      on first use when that tree still exists (a `cargo install --path`
//!      of a clone). Otherwise the error says what to do.
//! - **standard programs** are compiled into `heapkit-programs/` beside the
//!   executable when that is a cargo target directory, else into
//!   `$XDG_CACHE_HOME/heapkit/programs` (`~/.cache/heapkit/programs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The directory of the running executable.
pub fn exe_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::new(format!("cannot locate own executable: {e}")))?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::new("own executable has no directory"))
}

/// The workspace this executable was compiled from (it may no longer exist).
pub fn source_tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// True when `dir` is a profile directory of a cargo target directory
/// (`target/release`), which cargo marks with `CACHEDIR.TAG` in `target/`.
fn is_cargo_profile_dir(dir: &Path) -> bool {
    dir.parent()
        .is_some_and(|target| target.join("CACHEDIR.TAG").is_file())
}

/// Where the standard C programs are compiled to.
pub fn programs_dir() -> Result<PathBuf> {
    let dir = exe_dir()?;
    if is_cargo_profile_dir(&dir) {
        return Ok(dir.join("heapkit-programs"));
    }
    Ok(cache_dir()?.join("programs"))
}

/// `$XDG_CACHE_HOME/heapkit` or `~/.cache/heapkit`.
fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("heapkit"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("heapkit")),
        None => Err(Error::new(
            "neither XDG_CACHE_HOME nor HOME is set: nowhere to build the standard programs",
        )),
    }
}

/// Finds `libheapkit.so` by the rule in the module docs, building it in the
/// source tree as a last resort.
pub fn shim_library(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return existing(path, "--lib");
    }
    if let Some(path) = std::env::var_os("HEAPKIT_LIB").filter(|p| !p.is_empty()) {
        return existing(Path::new(&path), "HEAPKIT_LIB");
    }
    let dir = exe_dir()?;
    let candidates = [
        dir.join("libheapkit.so"),
        dir.join("../lib/libheapkit.so"),
        source_tree().join("target/release/libheapkit.so"),
    ];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return canonical(found);
    }
    build_shim_in_source_tree()
}

fn existing(path: &Path, from: &str) -> Result<PathBuf> {
    path.canonicalize()
        .map_err(|e| Error::new(format!("{from}: {}: {e}", path.display())))
}

fn canonical(path: &Path) -> Result<PathBuf> {
    path.canonicalize()
        .map_err(|e| Error::new(format!("{}: {e}", path.display())))
}

/// `cargo build --release -p heapkit-shim` in the source tree, when it is
/// there: what a user who ran `cargo install --path bench-harness` would
/// otherwise have to know to do.
fn build_shim_in_source_tree() -> Result<PathBuf> {
    let tree = source_tree();
    let manifest = tree.join("Cargo.toml");
    let hint = "build it with `cargo build --release -p heapkit-shim` in a heapkit clone, \
                then pass --lib PATH or set HEAPKIT_LIB";
    if !tree.join("allocators/shim/Cargo.toml").is_file() {
        return Err(Error::new(format!(
            "libheapkit.so not found beside {} nor in {}: {hint}",
            exe_dir()?.display(),
            tree.display()
        )));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "heapkit-bench: building libheapkit.so in {} (first use; about 2 minutes)",
        tree.display()
    );
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "heapkit-shim"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(tree.join("target"))
        .status()
        .map_err(|e| {
            Error::new(format!(
                "cannot run cargo to build libheapkit.so: {e}; {hint}"
            ))
        })?;
    let built = tree.join("target/release/libheapkit.so");
    if !status.success() || !built.is_file() {
        return Err(Error::new(format!(
            "building libheapkit.so failed ({status}); {hint}"
        )));
    }
    canonical(&built)
}
