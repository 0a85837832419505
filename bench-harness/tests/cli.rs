//! End-to-end: the real binary on a tiny matrix, `compare`, `list`, and the
//! one-line errors.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bench() -> Command {
    // Without CARGO in the environment the binary does not call cargo itself
    // (see `cell::build_cell_binaries_if_under_cargo`); the test build has
    // already built every bin.
    let mut command = Command::new(env!("CARGO_BIN_EXE_heapkit-bench"));
    command.env_remove("CARGO");
    command
}

fn tmp(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("heapkit-bench-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn stderr_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

fn assert_one_line_error(out: &Output, contains: &str) {
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr_line(out));
    let err = stderr_line(out);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.contains(contains), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn tiny_run_writes_report_and_compare_works() {
    let out_dir = tmp("run");
    let run = |name: &str| {
        bench()
            .args([
                "run",
                "--allocators",
                "system,jemalloc",
                "--workloads",
                "churn,larson",
            ])
            .args([
                "--threads",
                "2",
                "--repetitions",
                "2",
                "--scale",
                "0.01",
                "--name",
                name,
            ])
            .arg("--out")
            .arg(&out_dir)
            .output()
            .expect("run heapkit-bench")
    };
    for name in ["a", "b"] {
        let out = run(name);
        assert!(out.status.success(), "stderr: {}", stderr_line(&out));
        let dir = out_dir.join(name);
        for file in [
            "results.json",
            "REPORT.md",
            "time.svg",
            "peak-rss.svg",
            "latency.svg",
        ] {
            assert!(dir.join(file).is_file(), "{file} missing");
        }
        let report = heapkit_bench::report::json::read(&dir.join("results.json")).expect("parses");
        assert_eq!(report.cells.len(), 4);
        assert!(report
            .cells
            .iter()
            .all(|c| c.samples.len() == 2 && c.errors.is_empty()));
        let md = std::fs::read_to_string(dir.join("REPORT.md")).unwrap();
        assert!(md.contains("geometric mean of ratios") && md.contains("larson ×2"));
    }
    let out = bench()
        .arg("compare")
        .arg(out_dir.join("a/results.json"))
        .arg(out_dir.join("b"))
        .arg("--all")
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", stderr_line(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("4 cells compared"), "{table}");

    // bad and mismatched JSON
    let bad = out_dir.join("bad.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let out = bench()
        .arg("compare")
        .arg(&bad)
        .arg(out_dir.join("a"))
        .output()
        .unwrap();
    assert_one_line_error(&out, "not valid JSON");
    std::fs::write(&bad, r#"{"schema": 1, "cells": 3}"#).unwrap();
    let out = bench()
        .arg("compare")
        .arg(out_dir.join("a"))
        .arg(&bad)
        .output()
        .unwrap();
    assert_one_line_error(&out, "not a heapkit-bench results.json");
    let out = bench()
        .arg("compare")
        .arg(out_dir.join("missing.json"))
        .arg(&bad)
        .output()
        .unwrap();
    assert_one_line_error(&out, "cannot read");
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn unknown_names_are_one_line_errors() {
    let out = bench()
        .args(["run", "--allocators", "nosuch"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "unknown allocator 'nosuch'");
    let out = bench()
        .args(["run", "--workloads", "nosuch"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "unknown workload 'nosuch'");
    let out = bench().args(["run", "--threads", "abc"]).output().unwrap();
    assert_one_line_error(&out, "invalid value 'abc'");
}

#[test]
fn list_shows_allocators_and_workloads() {
    let out = bench().arg("list").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "system",
        "jemalloc",
        "mimalloc",
        "churn",
        "larson",
        "fragmentation",
    ] {
        assert!(text.contains(name), "{name} missing from list");
    }
    assert!(!text.contains("not built"), "{text}");
}

#[test]
fn cell_binary_rejects_bad_jobs() {
    let cell = PathBuf::from(env!("CARGO_BIN_EXE_hk-cell-system"));
    let out = Command::new(&cell)
        .args(["workload", "name=nosuch"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "unknown workload");
}
