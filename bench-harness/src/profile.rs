//! `heapkit-bench profile`: where a program's memory goes.
//!
//! ```sh
//! heapkit-bench profile -- ./app args            # sampled: ~1 allocation per 512 KiB
//! heapkit-bench profile --every -- ./app args    # every allocation: exact leak sizes
//! heapkit-bench profile --read app-1234.hkt      # a profile recorded earlier
//! ```
//!
//! Runs the command under `libheapkit.so` with `HEAPKIT_PROFILE` (one
//! profile per process, `%p`), then reads every profile: the blocks still
//! live at exit grouped by the call stack that allocated them (the leak
//! report, printed first), and every recorded allocation by stack. Stacks
//! are symbolised offline from the memory map the profile holds
//! ([`crate::symbolize`]). Writes `reports/profile-<name>-<date>/`:
//! `REPORT.md`, flame graphs of leaked, allocated and peak bytes per
//! process, the heap over time, a pprof profile (`profile-<pid>.pb.gz`) and
//! the raw profiles under `raw/`. Replaying the events in time order gives
//! the peak (what was live when the heap was largest) and the temporary
//! allocations (freed by their thread before it allocated anything else).
//!
//! Sampling follows jemalloc and tcmalloc: a per-thread countdown of bytes
//! drawn from an exponential distribution with mean `--rate`; a sampled
//! allocation of `size` bytes stands for `size / (1 - exp(-size/rate))`
//! bytes, so totals are unbiased estimates.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use clap::Args;

use crate::error::{Error, Result};
use crate::report::profile::{self as render, total, ProfileSummary, Site};
use crate::report::ReportDir;
use crate::symbolize::Symbolizer;
use heapkit_trace::reader::{Op, NO_STACK};
use heapkit_trace::Trace;

/// Options of `profile`.
#[derive(Args, Debug, Clone)]
pub struct ProfileArgs {
    /// Record every allocation and free (exact leak sizes; slower).
    #[arg(long)]
    pub every: bool,
    /// Mean bytes between sampled allocations.
    #[arg(long, default_value_t = 512 * 1024)]
    pub rate: u64,
    /// Read profiles recorded earlier (HEAPKIT_PROFILE=path) instead of
    /// running a command.
    #[arg(long, num_args = 1.., conflicts_with = "command")]
    pub read: Vec<PathBuf>,
    /// Stacks shown per table.
    #[arg(long, default_value_t = 15)]
    pub top: usize,
    /// Path of libheapkit.so [default: as `preload`].
    #[arg(long)]
    pub lib: Option<PathBuf>,
    /// Report directory name under --out (default: `profile-<program>-<date>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Parent directory of report directories.
    #[arg(long, default_value = "reports")]
    pub out: PathBuf,
    /// The command to profile, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Runs (or reads) and reports.
pub fn profile(args: &ProfileArgs) -> Result<()> {
    if args.command.is_empty() && args.read.is_empty() {
        return Err(Error::new("give `-- CMD ARGS...` or --read FILE"));
    }
    let program = args.command.first().map_or_else(
        || "read".to_string(),
        |p| {
            std::path::Path::new(p)
                .file_name()
                .map_or(p.clone(), |n| n.to_string_lossy().into_owned())
        },
    );
    let ReportDir { dir, .. } = ReportDir::create(
        &args.out,
        args.name.as_deref(),
        &format!("profile-{program}"),
    )?;
    let files: Vec<PathBuf> = if args.read.is_empty() {
        run(args, &dir)?
    } else {
        args.read.clone()
    };
    if files.is_empty() {
        return Err(Error::new(
            "the command left no profile (did it run under the shim? a static binary ignores LD_PRELOAD)",
        ));
    }
    let mut summaries = Vec::new();
    for file in &files {
        let (trace, warning) = Trace::open_salvaging(file)
            .map_err(|e| Error::new(format!("{}: {e}", file.display())))?;
        if let Some(w) = &warning {
            eprintln!("heapkit-bench: warning: {}: {w}", file.display());
        }
        let mut s = summarize(&trace);
        s.file = file.display().to_string();
        s.warning = warning;
        summaries.push(s);
    }
    // The largest heap first; a command that runs other programs (a shell
    // script, a build) leaves a profile per process, most of them of
    // processes that recorded nothing: those get one line, no section.
    summaries.sort_by(|a, b| {
        b.peak_bytes
            .total_cmp(&a.peak_bytes)
            .then(b.allocated_blocks.total_cmp(&a.allocated_blocks))
            .then(a.pid.cmp(&b.pid))
    });
    let (shown, silent): (Vec<ProfileSummary>, Vec<ProfileSummary>) = summaries
        .into_iter()
        .partition(|s| s.allocated_blocks > 0.0 || s.warning.is_some());
    // The leak summary first, on stdout.
    for s in &shown {
        print!("{}", render::leak_summary(s, args.top));
    }
    if let Some(line) = render::silent_line(&silent, false) {
        println!("{line}");
    }
    let command = if args.command.is_empty() {
        format!(
            "--read {}",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        )
    } else {
        shlex::try_join(args.command.iter().map(String::as_str))
            .unwrap_or_else(|_| args.command.join(" "))
    };
    for s in &shown {
        render::flame_graph(
            &dir.join(format!("leaks-{}.svg", s.pid)),
            &format!("Live at exit (leaks), process {}", s.pid),
            &s.leaks,
        )?;
        render::flame_graph(
            &dir.join(format!("allocations-{}.svg", s.pid)),
            &format!("Allocated bytes, process {}", s.pid),
            &s.sites,
        )?;
        render::flame_graph(
            &dir.join(format!("peak-{}.svg", s.pid)),
            &format!("Live at the peak, process {}", s.pid),
            &s.peak,
        )?;
        render::timeline_chart(&dir.join(format!("timeline-{}.svg", s.pid)), s)?;
        crate::report::pprof::write(&dir.join(format!("profile-{}.pb.gz", s.pid)), s)?;
    }
    std::fs::write(
        dir.join("REPORT.md"),
        render::render(&command, &shown, &silent, args.top),
    )
    .map_err(|e| Error::new(format!("cannot write REPORT.md: {e}")))?;
    println!("{}", dir.join("REPORT.md").display());
    Ok(())
}

/// Runs the command with profiling on; returns the profiles it left.
fn run(args: &ProfileArgs, dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    let lib = crate::locate::shim_library(args.lib.as_deref())?;
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw)
        .map_err(|e| Error::new(format!("cannot create {}: {e}", raw.display())))?;
    // Absolute: the command (a script, a build) may change directory before
    // it, or a program it runs, allocates.
    let raw = std::path::absolute(&raw)
        .map_err(|e| Error::new(format!("cannot resolve {}: {e}", raw.display())))?;
    let rate = if args.every { 0 } else { args.rate.max(1) };
    let (program, rest) = args.command.split_first().expect("checked non-empty");
    let status = Command::new(program)
        .args(rest)
        .env("LD_PRELOAD", &lib)
        .env("HEAPKIT_PROFILE", raw.join("profile-%p.hkt"))
        .env("HEAPKIT_PROFILE_RATE", rate.to_string())
        .env_remove("HEAPKIT_TRACE")
        .status()
        .map_err(|e| Error::new(format!("cannot run {program}: {e}")))?;
    if !status.success() {
        eprintln!("heapkit-bench: warning: {program} ended with {status}");
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&raw)
        .map_err(|e| Error::new(format!("cannot read {}: {e}", raw.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "hkt"))
        .collect();
    files.sort();
    Ok(files)
}

/// Leaks and allocation sites of one profile, symbolised.
pub fn summarize(trace: &Trace) -> ProfileSummary {
    let mode = trace
        .meta
        .lines()
        .find_map(|l| l.strip_prefix("mode "))
        .unwrap_or("every")
        .to_string();
    let mut ended = vec![false; trace.objects.len()];
    for thread in &trace.threads {
        for e in thread {
            // A free or a realloc ends its (old) object.
            if let Some(obj) = e.op.ends() {
                ended[obj as usize] = true;
            }
        }
    }
    // Per stack: (bytes, blocks) live at exit and allocated.
    let mut live: HashMap<u32, (f64, f64)> = HashMap::new();
    let mut all: HashMap<u32, (f64, f64)> = HashMap::new();
    for (i, o) in trace.objects.iter().enumerate() {
        if o.stack == NO_STACK {
            continue;
        }
        let weight = o.weight as f64;
        let blocks = if o.size > 0 {
            weight / o.size as f64
        } else {
            1.0
        };
        let a = all.entry(o.stack).or_default();
        a.0 += weight;
        a.1 += blocks;
        if !ended[i] {
            let l = live.entry(o.stack).or_default();
            l.0 += weight;
            l.1 += blocks;
        }
    }
    let history = replay(trace);
    let mut symbolizer = Symbolizer::new(&trace.meta);
    let mut names: HashMap<u32, Vec<String>> = HashMap::new();
    let mut sites_of = |map: &HashMap<u32, (f64, f64)>| -> Vec<Site> {
        // Stacks that symbolise alike (the same call sites) merge.
        let mut merged: HashMap<Vec<String>, (f64, f64)> = HashMap::new();
        for (&stack, &(bytes, blocks)) in map {
            let frames = names
                .entry(stack)
                .or_insert_with(|| frames_of(&mut symbolizer, &trace.stacks[stack as usize]))
                .clone();
            let m = merged.entry(frames).or_default();
            m.0 += bytes;
            m.1 += blocks;
        }
        let mut sites: Vec<Site> = merged
            .into_iter()
            .map(|(frames, (bytes, blocks))| Site {
                frames,
                bytes,
                blocks,
            })
            .collect();
        sites.sort_by(|a, b| b.bytes.total_cmp(&a.bytes).then(a.frames.cmp(&b.frames)));
        sites
    };
    let leaks = sites_of(&live);
    let sites = sites_of(&all);
    let peak = sites_of(&history.peak);
    let temporary = sites_of(&history.temporary);
    ProfileSummary {
        file: String::new(),
        pid: trace.pid,
        program: program_of(&trace.meta),
        mode,
        leaks,
        sites,
        peak,
        peak_bytes: history.peak_bytes,
        peak_at_ns: history.peak_at_ns,
        temporary,
        allocated_blocks: total(all.values().map(|v| v.1)),
        timeline: history.timeline,
        warning: None,
    }
}

/// The program a profile's process ran: the first file in its memory map
/// (the executable, which the loader maps first), by file name; empty
/// without a map.
fn program_of(meta: &str) -> String {
    meta.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|path| path.starts_with('/'))
        .and_then(|path| std::path::Path::new(path).file_name())
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// What replaying a profile's events in time order shows.
struct History {
    /// Most bytes live at once (weights: estimated when sampled).
    peak_bytes: f64,
    /// When, from the first event (ns).
    peak_at_ns: u64,
    /// Per stack: (bytes, blocks) live at that moment.
    peak: HashMap<u32, (f64, f64)>,
    /// Per stack: (bytes, blocks) of temporary allocations: freed by their
    /// thread with no other allocation in between.
    temporary: HashMap<u32, (f64, f64)>,
    /// (ns from the first event, bytes live), at most [`TIMELINE_POINTS`]
    /// points (each the largest value of its slice of time).
    timeline: Vec<(u64, f64)>,
}

/// Points kept in a timeline.
const TIMELINE_POINTS: usize = 400;

/// Replays every thread's events in time order: the heap size over time,
/// its peak and what was live then, and the temporary allocations.
fn replay(trace: &Trace) -> History {
    let weight = |obj: u32| -> (f64, f64) {
        let o = &trace.objects[obj as usize];
        if o.stack == NO_STACK {
            return (0.0, 0.0);
        }
        let w = o.weight as f64;
        (w, if o.size > 0 { w / o.size as f64 } else { 1.0 })
    };
    let mut temporary: HashMap<u32, (f64, f64)> = HashMap::new();
    let mut events = Vec::new();
    for thread in &trace.threads {
        let mut last_alloc = None;
        for e in thread {
            events.push((e.ts, e.op));
            match e.op {
                Op::Free { obj } if last_alloc == Some(obj) => {
                    let (bytes, blocks) = weight(obj);
                    let stack = trace.objects[obj as usize].stack;
                    if stack != NO_STACK {
                        let t = temporary.entry(stack).or_default();
                        t.0 += bytes;
                        t.1 += blocks;
                    }
                }
                _ => {}
            }
            last_alloc = e.op.creates();
        }
    }
    events.sort_by_key(|&(ts, _)| ts);
    let t0 = events.first().map_or(0, |e| e.0);
    let span = events.last().map_or(0, |e| e.0) - t0;
    let slice = (span / TIMELINE_POINTS as u64).max(1);
    let mut timeline: Vec<(u64, f64)> = Vec::new();
    let (mut live, mut peak_bytes, mut peak_index, mut peak_at_ns) = (0.0f64, 0.0f64, 0, 0);
    for (i, &(ts, op)) in events.iter().enumerate() {
        if let Some(obj) = op.ends() {
            live -= weight(obj).0;
        }
        if let Some(obj) = op.creates() {
            live += weight(obj).0;
        }
        if live > peak_bytes {
            (peak_bytes, peak_index, peak_at_ns) = (live, i + 1, ts - t0);
        }
        let at = (ts - t0) / slice * slice;
        match timeline.last_mut() {
            Some(last) if last.0 == at => last.1 = last.1.max(live),
            _ => timeline.push((at, live)),
        }
    }
    let mut alive = vec![false; trace.objects.len()];
    for &(_, op) in &events[..peak_index] {
        if let Some(obj) = op.ends() {
            alive[obj as usize] = false;
        }
        if let Some(obj) = op.creates() {
            alive[obj as usize] = true;
        }
    }
    let mut peak: HashMap<u32, (f64, f64)> = HashMap::new();
    for (obj, _) in alive.iter().enumerate().filter(|(_, &a)| a) {
        let stack = trace.objects[obj].stack;
        if stack != NO_STACK {
            let (bytes, blocks) = weight(obj as u32);
            let p = peak.entry(stack).or_default();
            p.0 += bytes;
            p.1 += blocks;
        }
    }
    History {
        peak_bytes,
        peak_at_ns,
        peak,
        temporary,
        timeline,
    }
}

/// The symbolised frames of a recorded stack, without the frames of the
/// recorder and the allocator entry that called it: everything in
/// libheapkit.so, and for a Rust program's `Profiled` wrapper the frames up
/// to the last of the recorder's own functions.
fn frames_of(symbolizer: &mut Symbolizer, stack: &[u64]) -> Vec<String> {
    let own = |s: &Symbolizer, a: u64| s.object_of(a).is_some_and(|o| o.contains("libheapkit"));
    let start = stack
        .iter()
        .position(|&a| !own(symbolizer, a))
        .unwrap_or(stack.len());
    let mut out = Vec::new();
    for &ret in &stack[start..] {
        for f in symbolizer.frames(ret) {
            out.push(match f.location {
                Some(loc) => format!("{} ({loc})", f.function),
                None => f.function,
            });
        }
    }
    const RECORDER: [&str; 5] = [
        "heapkit_core::os::",
        "heapkit_trace::",
        "<heapkit_trace::",
        "__rustc::__rust_alloc",
        "__rust_alloc",
    ];
    let recorder_frames = out
        .iter()
        .take(16)
        .rposition(|f| RECORDER.iter().any(|r| f.starts_with(r)))
        .map_or(0, |i| i + 1);
    out.drain(..recorder_frames);
    // Rust's allocation plumbing (Vec, RawVec, Box, alloc::alloc) above the
    // first frame of the program itself says nothing about who allocated.
    let plumbing = |f: &String| {
        let g = f.trim_start_matches('<');
        ["alloc::", "core::", "std::"]
            .iter()
            .any(|c| g.starts_with(c))
            || f.contains(" as alloc::")
            || f.contains(" as core::")
    };
    let first_own = out.iter().position(|f| !plumbing(f)).unwrap_or(0);
    out.drain(..first_own);
    out
}
