//! CPython under the library: its own test modules, and an
//! allocation-heavy script whose output must equal a run without it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::harness::*;

/// The real CPython binary (pyenv's `python3` is a bash script; the shell
/// would run under the shim too, harmlessly, but we measure Python).
fn python() -> Option<&'static PathBuf> {
    static PY: OnceLock<Option<PathBuf>> = OnceLock::new();
    PY.get_or_init(|| {
        let py = find("python", "python3")?;
        let out = Command::new(py)
            .args(["-c", "import sys, test.libregrtest; print(sys.executable)"])
            .output()
            .ok()?;
        if !out.status.success() {
            println!("SKIP python: python3 has no `test` package");
            return None;
        }
        Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
    .as_ref()
}

/// Allocation-heavy modules, with threads (test_thread,
/// test_threading_local), fork and subprocess (test_os, test_fork1).
const PY_MODULES: &[&str] = &[
    "test_list",
    "test_dict",
    "test_set",
    "test_unicode",
    "test_json",
    "test_re",
    "test_collections",
    "test_deque",
    "test_thread",
    "test_threading_local",
    "test_os",
    "test_fork1",
];

/// `bump` never reuses memory: a lighter set.
const PY_MODULES_BUMP: &[&str] = &["test_list", "test_dict", "test_json", "test_thread"];

#[test]
fn cpython_test_modules() {
    let Some(py) = python() else {
        return;
    };
    let dir = scratch("cpython");
    each_mode(|b| {
        let modules = if b == "bump" {
            PY_MODULES_BUMP
        } else {
            PY_MODULES
        };
        let cwd = dir.join(b);
        fs::create_dir_all(&cwd).unwrap();
        // Default signal dispositions (a test harness may ignore some) and
        // every Python object through malloc.
        let mut cmd = under(b, Path::new("/usr/bin/env"));
        cmd.args(["--default-signal=INT,QUIT,HUP"])
            .arg(py)
            .args(["-m", "test"])
            .args(modules)
            .env("PYTHONMALLOC", "malloc")
            .current_dir(&cwd);
        let r = run(cmd, &dir, b, 5 * MINUTE);
        if r.ok && r.stdout.contains("Result: SUCCESS") {
            Ok(())
        } else {
            Err(r.describe())
        }
    });
}

#[test]
fn python_alloc_heavy_script_matches_native() {
    let Some(py) = python() else {
        return;
    };
    let dir = scratch("alloc_heavy");
    let script = sources().join("alloc_heavy.py");
    let mut native = Command::new(py);
    native
        .arg(&script)
        .env("PYTHONMALLOC", "malloc")
        .stdin(Stdio::null());
    let want = run(native, &dir, "native", MINUTE);
    assert!(want.ok, "{}", want.describe());
    each_mode(|b| {
        let mut cmd = under(b, py);
        cmd.arg(&script).env("PYTHONMALLOC", "malloc");
        let r = run(cmd, &dir, b, 2 * MINUTE);
        if r.ok && r.stdout == want.stdout {
            Ok(())
        } else {
            Err(format!("want {:?}\n{}", want.stdout, r.describe()))
        }
    });
}
