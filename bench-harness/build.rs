//! Records the rustc version the harness (and so every cell binary) was
//! built with, and the commit of the heapkit tree it was built from.
fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=HEAPKIT_BENCH_RUSTC={version}");
    // The workspace root (this crate's parent directory).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let commit = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=HEAPKIT_BENCH_COMMIT={commit}");
    // Built again when HEAD moves (a commit, a checkout); only named when
    // it exists (a missing path would rerun this script every build).
    for moved in [".git/HEAD", ".git/logs/HEAD"] {
        let path = root.join(moved);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
