//! Command-line programs whose results are checked against runs without
//! the library: git, sort, xz and zstd with two threads, jq and Tcl.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::harness::*;

/// Writes `count` deterministic files in nested directories.
fn write_tree(root: &Path, count: usize, generation: u64) {
    for i in 0..count {
        let sub = root.join(format!("d{:02}/e{}", i % 37, i % 5));
        fs::create_dir_all(&sub).unwrap();
        let mut text = String::new();
        let lines = 5 + (i * 7919) % 200;
        for l in 0..lines {
            let _ = writeln!(
                text,
                "file {i} line {l} generation {} {}",
                generation * (i as u64 % 3),
                "x".repeat((i + l) % 60)
            );
        }
        fs::write(sub.join(format!("f{i}.txt")), text).unwrap();
    }
}

/// init, add, commit, change, commit, gc, fsck; prints the ids to compare.
fn git_session(
    git: &Path,
    repo: &Path,
    shim: Option<&str>,
    dir: &Path,
    files: usize,
) -> Result<String, String> {
    let _ = fs::remove_dir_all(repo);
    fs::create_dir_all(repo).unwrap();
    write_tree(repo, files, 1);
    let step = |args: &[&str]| -> Result<String, String> {
        let mut cmd = match shim {
            Some(b) => under(b, git),
            None => {
                let mut c = Command::new(git);
                c.stdin(Stdio::null());
                c
            }
        };
        cmd.args(args)
            .current_dir(repo)
            .env("HOME", repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "heapkit")
            .env("GIT_AUTHOR_EMAIL", "heapkit@example.invalid")
            .env("GIT_COMMITTER_NAME", "heapkit")
            .env("GIT_COMMITTER_EMAIL", "heapkit@example.invalid")
            .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z");
        let tag = format!("{}-{}", shim.unwrap_or("native"), args[0]);
        let r = run(cmd, dir, &tag, 3 * MINUTE);
        if r.ok {
            Ok(r.stdout)
        } else {
            Err(format!("git {args:?}: {}", r.describe()))
        }
    };
    step(&["init", "-q", "-b", "main"])?;
    step(&["add", "-A"])?;
    step(&["commit", "-q", "-m", "first"])?;
    write_tree(repo, files / 3, 2);
    for i in (0..files).step_by(11) {
        let _ = fs::remove_file(repo.join(format!("d{:02}/e{}/f{i}.txt", i % 37, i % 5)));
    }
    step(&["add", "-A"])?;
    step(&["commit", "-q", "-m", "second"])?;
    step(&["gc", "-q"])?;
    step(&["fsck", "--strict", "--full", "--no-progress"])?;
    let mut ids = step(&["rev-parse", "HEAD", "HEAD^{tree}", "HEAD~1"])?;
    ids += &step(&["diff", "--shortstat", "HEAD~1", "HEAD"])?;
    ids += &step(&["count-objects", "-v"])?
        .lines()
        .filter(|l| l.starts_with("in-pack"))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(ids)
}

#[test]
fn git_init_add_commit_gc_fsck() {
    let Some(git) = find("git", "git") else {
        return;
    };
    let dir = scratch("git");
    let (full, light) = (1500, 300);
    let want_full = git_session(&git, &dir.join("native-full"), None, &dir, full).unwrap();
    let want_light = git_session(&git, &dir.join("native-light"), None, &dir, light).unwrap();
    each_mode(|b| {
        let (files, want) = if b == "bump" {
            (light, &want_light)
        } else {
            (full, &want_full)
        };
        let got = git_session(&git, &dir.join(b), Some(b), &dir, files)?;
        if got == *want {
            Ok(())
        } else {
            Err(format!("want {want:?}\ngot {got:?}"))
        }
    });
}

#[test]
fn sort_large_file_matches_checksum() {
    let Some(sort) = find("sort", "sort") else {
        return;
    };
    let dir = scratch("sort");
    // ~9 MB of lines; the expected output is sorted here.
    let input = pseudo_random_lines(300_000);
    let path = dir.join("input.txt");
    fs::write(&path, &input).unwrap();
    let mut lines: Vec<&str> = input.lines().collect();
    lines.sort_unstable();
    let mut sorted = lines.join("\n");
    sorted.push('\n');
    let want = checksum(sorted.as_bytes());
    drop(lines);
    each_mode(|b| {
        let out = dir.join(format!("{b}.sorted"));
        let mut cmd = under(b, &sort);
        cmd.args(["--parallel=2", "-S", "4M", "-T"])
            .arg(&dir)
            .arg("-o")
            .arg(&out)
            .arg(&path)
            .env("LC_ALL", "C");
        let r = run(cmd, &dir, b, 3 * MINUTE);
        let got = checksum(&fs::read(&out).unwrap_or_default());
        if r.ok && got == want {
            Ok(())
        } else {
            Err(format!("checksum {got:x}, want {want:x}\n{}", r.describe()))
        }
    });
}

/// Multi-threaded compressors (xz and zstd with two worker threads: blocks
/// allocated on one thread and freed on another) round-trip a file, and
/// two interpreters with their own allocation patterns (jq over a 6 MB
/// JSON array, Tcl building and walking a dictionary of lists) print what
/// they print without the library, under every backend and mode. Each
/// program that is missing is skipped alone.
#[test]
fn compressors_and_interpreters_match_native() {
    let dir = scratch("more-programs");
    let text = dir.join("text.txt");
    fs::write(&text, pseudo_random_lines(200_000)).unwrap();
    let want = checksum(&fs::read(&text).unwrap());
    let mut json = String::from("[");
    for i in 0..60_000u32 {
        let sep = if i == 0 { "" } else { "," };
        let tags: Vec<String> = (0..i % 13).map(|t| format!("\"t{t}\"")).collect();
        let _ = write!(
            json,
            "{sep}{{\"id\":{i},\"name\":\"n{i}\",\"tags\":[{}],\"v\":{}.5}}",
            tags.join(","),
            i / 2
        );
    }
    json.push(']');
    let json_path = dir.join("data.json");
    fs::write(&json_path, json).unwrap();
    let tcl_path = dir.join("dict.tcl");
    fs::write(
        &tcl_path,
        "set d [dict create]\n\
         for {set i 0} {$i < 200000} {incr i} { dict lappend d [expr {$i % 3000}] \"v$i\" }\n\
         set n 0\n\
         dict for {k v} $d { incr n [llength $v] }\n\
         puts \"[dict size $d] $n [string length [join [lsort [dict keys $d]] ,]]\"\n",
    )
    .unwrap();
    // (program, arguments): a round trip through a pipe (compared with the
    // input's checksum) or a command whose output must equal its output
    // without the library.
    // xz at -1 cuts 6 MB into two blocks, zstd's -B1MiB into six jobs: both
    // compress (and xz decompresses) on two threads.
    let round_trips = [
        ("xz", "xz -T2 -1 -c | xz -d -T2 -c"),
        ("zstd", "zstd -T2 -B1MiB -6 -q -c | zstd -d -q -c"),
    ];
    let filter =
        "[.[] | select(.id % 7 == 0) | {id, n: (.tags | length)}] | length, (map(.n) | add)";
    let json_arg = json_path.to_str().unwrap();
    let tcl_arg = tcl_path.to_str().unwrap();
    let commands: [(&str, Vec<&str>); 2] = [
        ("jq", vec!["-c", filter, json_arg]),
        ("tclsh", vec![tcl_arg]),
    ];
    for (prog, pipeline) in round_trips {
        if find("compressors_and_interpreters_match_native", prog).is_none() {
            continue;
        }
        each_mode(|b| {
            let out = dir.join(format!("{prog}-{b}.out"));
            let mut cmd = under(b, Path::new("/bin/sh"));
            cmd.arg("-c").arg(format!(
                "({pipeline}) < '{}' > '{}'",
                text.display(),
                out.display()
            ));
            let r = run(cmd, &dir, &format!("{prog}-{b}"), 3 * MINUTE);
            let got = checksum(&fs::read(&out).unwrap_or_default());
            if r.ok && got == want {
                Ok(())
            } else {
                Err(format!(
                    "{prog}: checksum {got:x}, want {want:x}\n{}",
                    r.describe()
                ))
            }
        });
    }
    for (prog, args) in &commands {
        let Some(path) = find("compressors_and_interpreters_match_native", prog) else {
            continue;
        };
        let native = Command::new(&path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            native.status.success(),
            "{prog} without the library: {native:?}"
        );
        let expected = String::from_utf8_lossy(&native.stdout).into_owned();
        assert!(!expected.trim().is_empty(), "{prog} printed nothing");
        each_mode(|b| {
            let mut cmd = under(b, &path);
            cmd.args(args);
            let r = run(cmd, &dir, &format!("{prog}-{b}"), 3 * MINUTE);
            if r.ok && r.stdout == expected {
                Ok(())
            } else {
                Err(format!(
                    "{prog}: {}",
                    first_difference(&expected, &r.stdout)
                ))
            }
        });
    }
}
