//! Cells: one measured process per (allocator, job).
//!
//! **Parent side** ([`spawn_cell`]): `heapkit-bench` finds the cell binary of an
//! allocator next to its own executable, runs it with a *job* on the command
//! line, and parses the single JSON line the child prints on stdout.
//!
//! **Child side** ([`cell_entry`], called by [`crate::cell_main!`]): parses the
//! job, runs it under the allocator installed in that binary, prints the result
//! as one JSON line, exits 0; on bad arguments prints one line on stderr and
//! exits 2.
//!
//! Jobs: `workload name=<w> threads=<n> scale=<f> seed=<u64>` prints a
//! [`Sample`]. Other jobs (e.g. trace replay) can be added to
//! [`run_job`] and spawned through the same [`spawn_cell`].

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::measure::{minor_faults, peak_rss_bytes, reset_peak_rss, rss_bytes, TickClock};
use crate::registry::AllocatorEntry;
use crate::sample::Sample;
use crate::session::{self, Supervised};
use crate::workloads::{self, Context, Params, Workload};

/// Entry point of every cell binary; returns the exit status.
pub fn cell_entry() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run_job(&args) {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(err) => {
            eprintln!("hk-cell: error: {err}");
            2
        }
    }
}

/// Value of `key=value` among `args`.
fn arg<'a>(args: &'a [String], key: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(key)?.strip_prefix('='))
}

fn parse_arg<T: std::str::FromStr>(args: &[String], key: &str, default: T) -> Result<T> {
    match arg(args, key) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| Error::new(format!("bad value for {key}: '{text}'"))),
    }
}

/// Runs the job described by `args` and returns its JSON line.
pub fn run_job(args: &[String]) -> Result<String> {
    match args.first().map(String::as_str) {
        Some("workload") => {
            let name = arg(args, "name").ok_or_else(|| Error::new("missing name=<workload>"))?;
            let workload = workloads::find(name)
                .ok_or_else(|| Error::new(format!("unknown workload '{name}'")))?;
            let params = Params {
                threads: parse_arg(args, "threads", 1usize)?.max(1),
                scale: parse_arg(args, "scale", 1.0f64)?,
                seed: parse_arg(args, "seed", 1u64)?,
            };
            if !(params.scale > 0.0 && params.scale.is_finite()) {
                return Err(Error::new("scale must be a positive number"));
            }
            let idle_ms = parse_arg(args, "idle_ms", 0u64)?;
            let sample = run_workload(workload, &params, idle_ms);
            serde_json::to_string(&sample).map_err(|e| Error::new(e.to_string()))
        }
        Some("replay") => {
            let path = arg(args, "plan").ok_or_else(|| Error::new("missing plan=<file>"))?;
            let ordered = parse_arg(args, "ordered", 0u8)? != 0;
            let sample =
                crate::replay_cell::run_job(path, ordered, parse_arg(args, "seed", 1u64)?)?;
            serde_json::to_string(&sample).map_err(|e| Error::new(e.to_string()))
        }
        Some(other) => Err(Error::new(format!("unknown job '{other}'"))),
        None => Err(Error::new(
            "usage: hk-cell-<allocator> workload name=<w> [threads=N] [scale=F] [seed=S]",
        )),
    }
}

/// Runs one workload in this process and measures it.
///
/// Everything that allocates for the harness (clock calibration, recorders and
/// their histograms) happens before the timed region; the JSON conversion after.
///
/// With `idle_ms` > 0 the process then sleeps that long, calling nothing,
/// and reads RSS again (`rss_idle`): what the allocator gave back on its
/// own (a background purger, a decay driven by a timer).
pub fn run_workload(workload: &Workload, params: &Params, idle_ms: u64) -> Sample {
    let clock = TickClock::calibrate();
    let mut ctx = Context::new(clock, (workload.recorders)(params.threads), params.seed);
    reset_peak_rss();
    let rss_start = rss_bytes();
    let faults_start = minor_faults();
    let start = Instant::now();
    (workload.run)(params, &mut ctx);
    let wall_ns = start.elapsed().as_nanos() as u64;
    let rss_end = rss_bytes();
    let peak_rss = peak_rss_bytes();
    let rss_idle = (idle_ms > 0).then(|| {
        std::thread::sleep(std::time::Duration::from_millis(idle_ms));
        rss_bytes()
    });
    let minor_faults = minor_faults().saturating_sub(faults_start);
    let checkpoints = ctx.checkpoints();
    let recorder = ctx.merged();
    Sample {
        wall_ns,
        ops: recorder.ops,
        latency: recorder.latencies(),
        rss_start,
        rss_end,
        rss_idle,
        peak_rss,
        minor_faults,
        checkpoints,
        clock: clock.info(),
    }
}

/// When `heapkit-bench` was started by `cargo run`, builds the cell binaries
/// of the same profile first.
///
/// `cargo run` builds only the binary it runs, so without this the cell
/// binaries would be missing on a fresh clone, or stale after an edit. Cargo
/// sets `CARGO` and `CARGO_MANIFEST_DIR` for the program it runs; we call
/// `$CARGO build --bins -p heapkit-bench` with the profile and target
/// directory of our own executable (a no-op when up to date). Without those
/// variables (binary started directly) nothing happens.
pub fn build_cell_binaries_if_under_cargo() -> Result<()> {
    let (Some(cargo), Some(manifest_dir)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) else {
        return Ok(());
    };
    let exe = std::env::current_exe()
        .map_err(|e| Error::new(format!("cannot locate own executable: {e}")))?;
    let (Some(profile_dir), Some(target_dir)) =
        (exe.parent(), exe.parent().and_then(|p| p.parent()))
    else {
        return Ok(());
    };
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(name) => name.to_string(),
        None => return Ok(()),
    };
    let manifest = PathBuf::from(manifest_dir).join("Cargo.toml");
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--bins",
            "-p",
            "heapkit-bench",
            "--profile",
            &profile,
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .map_err(|e| Error::new(format!("cannot run cargo to build the cell binaries: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "building the cell binaries failed ({status})"
        )))
    }
}

/// Path of an allocator's cell binary: next to the running executable
/// (where cargo builds and `cargo install` installs them; [`crate::locate`]).
pub fn cell_binary(allocator: &AllocatorEntry) -> Result<PathBuf> {
    let dir = crate::locate::exe_dir()?;
    let path = dir.join(allocator.cell_binary);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::new(format!(
            "cell binary {} not found in {} (build with: cargo build --release -p heapkit-bench)",
            allocator.cell_binary,
            dir.display()
        )))
    }
}

/// Runs `job` in a fresh, supervised process of `allocator`'s cell binary
/// ([`crate::session::supervise`]: killed after `timeout` or on interrupt)
/// and parses its JSON line. Errors carry the last line the child wrote on
/// stderr.
pub fn spawn_cell<T: DeserializeOwned>(
    allocator: &AllocatorEntry,
    job: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<T> {
    let binary = cell_binary(allocator)?;
    let what = format!("{} {}", allocator.cell_binary, job.join(" "));
    let mut command = Command::new(&binary);
    command
        .args(job)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = session::supervise(&mut command)
        .spawn()
        .map_err(|e| Error::new(format!("cannot run {}: {e}", binary.display())))?;
    let watch = Supervised::watch(&child, timeout);
    let output = child.wait_with_output();
    if let Some(err) = session::ending_error(watch.finish(), &what, timeout) {
        return Err(err);
    }
    let output = output.map_err(|e| Error::new(format!("cannot wait for `{what}`: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(Error::new(format!(
            "`{what}` failed ({}): {last}",
            output.status
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| Error::new(format!("`{what}` printed nothing")))?;
    serde_json::from_str(line).map_err(|e| Error::new(format!("`{what}` printed bad JSON: {e}")))
}

/// The command line of the `workload` job.
pub fn workload_job(
    workload: &str,
    threads: usize,
    scale: f64,
    seed: u64,
    idle_ms: u64,
) -> Vec<String> {
    let mut job = vec![
        "workload".to_string(),
        format!("name={workload}"),
        format!("threads={threads}"),
        format!("scale={scale}"),
        format!("seed={seed}"),
    ];
    if idle_ms > 0 {
        job.push(format!("idle_ms={idle_ms}"));
    }
    job
}
