//! `heapkit-bench`: the command line. Each subcommand lives in its own module
//! of the library (`run`, `compare`, `list`); this file only parses and
//! dispatches, and turns an error into one line on stderr and exit status 2.

use clap::{Parser, Subcommand};
use heapkit_bench::{compare, list, preload, profile, replay, run, trace_info};

/// Measure memory allocators on the same work, in one run.
#[derive(Parser)]
#[command(name = "heapkit-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the (allocator x workload x threads) matrix and write a report.
    Run(run::RunArgs),
    /// Show what got faster or slower between two results.json files.
    Compare(compare::CompareArgs),
    /// List the registered allocators and workloads.
    List,
    /// Replay a recorded trace (HEAPKIT_TRACE=out.hkt) under every allocator.
    Replay(replay::ReplayArgs),
    /// Inspect a recorded trace: `trace info out.hkt`.
    Trace(trace_info::TraceArgs),
    /// Run a command under every backend of libheapkit.so: `preload -- CMD ARGS...`.
    Preload(preload::PreloadArgs),
    /// Where a program's memory goes: leaks and allocation sites by call stack.
    Profile(profile::ProfileArgs),
}

fn main() {
    // clap's own usage errors are several lines; keep the first (the cause).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(), // --help, --version
        Err(err) => {
            let text = err.to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            eprintln!("heapkit-bench: {first} (see --help)");
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        Command::Run(args) => run::run(&args),
        Command::Compare(args) => compare::compare(&args),
        Command::List => list::list(),
        Command::Replay(args) => replay::replay(&args),
        Command::Trace(args) => trace_info::trace(&args),
        Command::Preload(args) => preload::preload(&args),
        Command::Profile(args) => profile::profile(&args),
    };
    if let Err(err) = result {
        eprintln!("heapkit-bench: error: {err}");
        std::process::exit(2);
    }
}
