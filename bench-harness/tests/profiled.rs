//! A Rust program profiled with `heapkit_profile::Profiled<System>`:
//! this test binary is its own subject. The parent test re-runs the binary
//! with `HEAPKIT_PROFILE` set and only the leaking test selected, then reads
//! the profile the child wrote at exit.

use std::alloc::System;
use std::process::Command;

use heapkit_profile::Profiled;

#[global_allocator]
static GLOBAL: Profiled<System> = Profiled::new(System);

const CHILD: &str = "HEAPKIT_PROFILED_TEST_CHILD";

#[inline(never)]
fn leak_from_a_named_rust_function(blocks: usize) {
    for _ in 0..blocks {
        let b: Vec<u8> = vec![7; 4096];
        std::mem::forget(std::hint::black_box(b));
    }
}

/// The subject: runs only in the child.
#[test]
fn child_leaks() {
    if std::env::var_os(CHILD).is_some() {
        leak_from_a_named_rust_function(2048);
    }
}

#[test]
fn a_profiled_rust_program_names_its_leak() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hk-profiled-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_leaks", "--test-threads", "1"])
        .env(CHILD, "1")
        .env("HEAPKIT_PROFILE", dir.join("rust-%p.hkt"))
        .env("HEAPKIT_PROFILE_RATE", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "hkt"))
        .expect("the child wrote a profile");
    let out = Command::new(env!("CARGO_BIN_EXE_heapkit-bench"))
        .args(["profile", "--every"])
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--read")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("leak_from_a_named_rust_function"))
        .unwrap_or_else(|| panic!("the leak is not named: {stdout}"));
    assert!(
        line.contains(&format!("{} bytes", 2048 * 4096)) && line.contains("2048 blocks"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
