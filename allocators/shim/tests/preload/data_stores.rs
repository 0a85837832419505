//! sqlite3 on a generated database and redis-server with a Lua-built
//! dataset: results equal to runs without the library.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// A generated workload: inserts, two indexes, updates, deletes, VACUUM,
/// aggregates with known values, and the integrity check.
fn sqlite_script(rows: u64) -> String {
    format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, n INTEGER, pad TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<{rows})
INSERT INTO t SELECT x, printf('key%08d', (x*7919)%{rows}), x%97, printf('%.*c', x%300, 'p') FROM c;
CREATE INDEX t_k ON t(k);
CREATE INDEX t_n ON t(n, id);
UPDATE t SET pad = pad || 'q' WHERE n % 3 = 0;
DELETE FROM t WHERE id % 10 = 0;
SELECT 'count', count(*), sum(id) FROM t;
SELECT 'pad', sum(length(pad)) FROM t;
SELECT n, count(*), max(k) FROM t GROUP BY n ORDER BY n LIMIT 5;
SELECT group_concat(k, ',') FROM (SELECT k FROM t ORDER BY k DESC LIMIT 20);
VACUUM;
PRAGMA integrity_check;
SELECT 'like', count(*) FROM t WHERE k LIKE 'key0001%';
"
    )
}

#[test]
fn sqlite3_generated_database() {
    let Some(sqlite) = find("sqlite3", "sqlite3") else {
        return;
    };
    let dir = scratch("sqlite");
    let (full, light) = (100_000u64, 20_000u64);
    // Written once, before any backend reads them.
    let script = |rows: u64| dir.join(format!("workload-{rows}.sql"));
    for rows in [full, light] {
        fs::write(script(rows), sqlite_script(rows)).unwrap();
    }
    // Expected output: the same script without the shim.
    let native = |rows: u64| {
        let db = dir.join(format!("native-{rows}.db"));
        let mut cmd = Command::new(&sqlite);
        cmd.arg(&db).stdin(fs::File::open(script(rows)).unwrap());
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let want_full = native(full);
    let want_light = native(light);
    // Values known without running anything: ids 1..=rows minus multiples of 10.
    let sum = full * (full + 1) / 2 - 10 * (full / 10) * (full / 10 + 1) / 2;
    assert!(want_full.contains(&format!("count|{}|{sum}\n", full - full / 10)));
    assert!(want_full.contains("\nok\n"));
    each_mode(|b| {
        let (rows, want) = if b == "bump" {
            (light, &want_light)
        } else {
            (full, &want_full)
        };
        let db = dir.join(format!("{b}.db"));
        let mut cmd = under(b, &sqlite);
        cmd.arg(&db);
        let mut c = run_with_stdin(cmd, &script(rows), &dir, b);
        if c.ok && c.stdout == *want {
            Ok(())
        } else {
            c.stdout = first_difference(want, &c.stdout);
            Err(c.describe())
        }
    });
}

/// What the redis test needs: the server, its client, and (optional) its
/// benchmark.
struct Redis {
    server: PathBuf,
    cli: PathBuf,
    bench: Option<PathBuf>,
}

impl Redis {
    /// `redis-cli -s socket args...`: its output, or why it failed.
    fn cli(&self, socket: &Path, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.cli)
            .arg("-s")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("redis-cli {args:?}: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || text.starts_with("ERR") || text.contains("Could not connect") {
            return Err(format!("redis-cli {args:?}: {} {text}", out.status));
        }
        Ok(text)
    }

    /// One server (under `backend`, or without the library for `None`) and
    /// the session the test drives against it; the transcript of its
    /// deterministic replies.
    fn session(&self, dir: &Path, tag: &str, backend: Option<&str>) -> Result<String, String> {
        let work = dir.join(tag);
        fs::create_dir_all(&work).unwrap();
        let socket = work.join("redis.sock");
        let log = work.join("redis.log");
        let mut cmd = match backend {
            Some(b) => under(b, &self.server),
            None => {
                let mut c = Command::new(&self.server);
                c.stdin(Stdio::null());
                c
            }
        };
        cmd.args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&work)
            .args(["--daemonize", "no", "--enable-debug-command", "yes"])
            // Big values freed by the lazy-free thread (UNLINK, FLUSHALL
            // ASYNC). Not `--io-threads`: its threads spin while they wait,
            // and ten servers of them on two cores took 100 s instead of 21.
            .args(["--lazyfree-lazy-user-del", "yes"])
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(fs::File::create(work.join("stderr")).unwrap());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        let result = self.drive(&socket, backend.is_some());
        // Stop it whatever happened; a crash shows in its status and log.
        let _ = self.cli(&socket, &["SHUTDOWN", "NOSAVE"]);
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let tail = |p: &Path| {
            let text = fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(12)..].join("\n")
        };
        let why = |what: String| {
            format!(
                "{what}\n--- exit: {status:?}\n--- log (tail)\n{}\n--- stderr (tail)\n{}",
                tail(&log),
                tail(&work.join("stderr"))
            )
        };
        let transcript = result.map_err(why)?;
        if !status.is_some_and(|s| s.success()) {
            return Err(why("redis-server did not exit cleanly".into()));
        }
        Ok(transcript)
    }

    /// The session: a dataset built by a Lua script, churned, digested;
    /// a forked background save; a reload from it; an asynchronous flush
    /// and the same dataset again; the benchmark over 20 clients; then, under
    /// heapkit, the allocator figures redis reads through `mallctl`.
    fn drive(&self, socket: &Path, heapkit: bool) -> Result<String, String> {
        let up = Instant::now();
        while self.cli(socket, &["PING"]).is_err() {
            if up.elapsed() > Duration::from_secs(20) {
                return Err("redis-server did not come up".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let script = fs::read_to_string(sources().join("redis_workload.lua")).unwrap();
        let (keys, steps) = ("3000", "20000");
        let mut transcript = String::new();
        let mut say = |args: &[&str]| -> Result<String, String> {
            let out = self.cli(socket, args)?;
            // The command (a script by its first argument only), its reply.
            let command = if args[0] == "EVAL" {
                "EVAL"
            } else {
                &args.join(" ")
            };
            let _ = writeln!(transcript, "{command} -> {}", out.trim());
            Ok(out)
        };
        let build = |say: &mut dyn FnMut(&[&str]) -> Result<String, String>| {
            say(&["EVAL", &script, "0", "build", "42", keys])?;
            say(&["EVAL", &script, "0", "churn", "7", steps, keys])?;
            say(&["DEBUG", "DIGEST"])
        };
        let digest = build(&mut say)?;
        say(&["BGSAVE"])?;
        let saved = Instant::now();
        loop {
            let info = self.cli(socket, &["INFO", "persistence"])?;
            if info.contains("rdb_bgsave_in_progress:0") {
                if !info.contains("rdb_last_bgsave_status:ok") {
                    return Err(format!("background save failed: {info}"));
                }
                break;
            }
            if saved.elapsed() > 2 * MINUTE {
                return Err("background save did not end".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        say(&["DEBUG", "RELOAD"])?;
        if say(&["DEBUG", "DIGEST"])? != digest {
            return Err("the dataset changed across a save and reload".into());
        }
        say(&["FLUSHALL", "ASYNC"])?;
        say(&["DBSIZE"])?;
        if build(&mut say)? != digest {
            return Err("the same script built a different dataset".into());
        }
        if let Some(bench) = &self.bench {
            let out = Command::new(bench)
                .arg("-s")
                .arg(socket)
                .args(["-q", "-n", "20000", "-r", "20000", "-c", "20", "-P", "4"])
                .args([
                    "-d",
                    "200",
                    "-t",
                    "set,get,lpush,lpop,sadd,hset,zadd,lrange_100,mset",
                ])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("redis-benchmark: {e}"))?;
            if !out.status.success() {
                return Err(format!("redis-benchmark: {}", out.status));
            }
        }
        if heapkit {
            // redis reads its allocator's figures with mallctl: heapkit's,
            // not those of a jemalloc that serves nothing.
            let info = self.cli(socket, &["INFO", "memory"])?;
            let field = |name: &str| -> u64 {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
                    .unwrap_or(0)
            };
            let (used, allocated) = (field("used_memory"), field("allocator_allocated"));
            if allocated < used / 2 {
                return Err(format!(
                    "allocator_allocated {allocated} for used_memory {used}: \
                     not heapkit's figure"
                ));
            }
            let stats = self.cli(socket, &["MEMORY", "MALLOC-STATS"])?;
            if !stats.contains("heapkit statistics") {
                return Err(format!("MEMORY MALLOC-STATS: {stats}"));
            }
            self.cli(socket, &["MEMORY", "PURGE"])?;
        }
        Ok(transcript)
    }
}

/// Debian's redis-server under every backend and mode: the same dataset
/// digest as without the library (a Lua-built dataset of every type, churned
/// with appends, trims and deletes), across a forked background save, a
/// reload and an asynchronous flush (frees on redis's lazy-free thread),
/// with threaded replies and the benchmark's 20 clients; a clean shutdown.
/// redis-server is linked against libjemalloc.so: its `mallctl` and
/// `malloc_stats_print` must reach heapkit (`INFO memory`,
/// `MEMORY MALLOC-STATS`).
#[test]
fn redis_server() {
    let (Some(server), Some(cli)) = (
        find("redis_server", "redis-server"),
        find("redis_server", "redis-cli"),
    ) else {
        return;
    };
    let redis = Redis {
        server,
        cli,
        bench: find("redis_server", "redis-benchmark"),
    };
    let dir = scratch("redis");
    let want = redis
        .session(&dir, "native", None)
        .unwrap_or_else(|e| panic!("redis-server without the library: {e}"));
    assert!(
        want.contains("DIGEST -> ") && want.contains("DBSIZE -> 0"),
        "{want}"
    );
    each_mode(|b| {
        let got = redis.session(&dir, b, Some(b))?;
        if got == want {
            Ok(())
        } else {
            Err(first_difference(&want, &got))
        }
    });
}
