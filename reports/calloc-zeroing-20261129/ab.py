"""Interleaved A/B of one command under several LD_PRELOAD libraries:
median wall time and median peak RSS (the child's ru_maxrss) per column.
usage: ab2.py REPS 'cmd' name=LIB[,ENV=V...] ...   (name= with no LIB: no preload)"""
import sys, subprocess, time, os, statistics
reps = int(sys.argv[1]); cmd = sys.argv[2]; confs = []
for a in sys.argv[3:]:
    name, _, spec = a.partition('=')
    env = dict(os.environ); env.pop('LD_PRELOAD', None)
    parts = spec.split(',') if spec else []
    if parts and '=' not in parts[0]:
        env['LD_PRELOAD'] = parts[0]; parts = parts[1:]
    for p in parts:
        k, _, v = p.partition('='); env[k] = v
    confs.append((name, env))
t = {n: [] for n, _ in confs}; r = {n: [] for n, _ in confs}
for _ in range(reps):
    for n, env in confs:
        # /usr/bin/time -f %M: the peak RSS of the program after its exec
        # (the rusage of a child forked from python counts python's pages).
        start = time.perf_counter()
        p = subprocess.run(['/usr/bin/time', '-f', '%M', '-o', '/tmp/ab2.rss', '/bin/sh', '-c', cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t[n].append(time.perf_counter() - start)
        assert p.returncode == 0, (n, p.returncode)
        r[n].append(int(open('/tmp/ab2.rss').read().split()[-1]))
b = confs[0][0]; bt = statistics.median(t[b]); br = statistics.median(r[b])
print(f"# {cmd}  ({reps} interleaved repetitions)")
for n, _ in confs:
    mt = statistics.median(t[n]); mr = statistics.median(r[n])
    print(f"{n:10s} time {mt*1000:9.1f} ms ({mt/bt:5.2f})   peak RSS {mr/1024:7.1f} MiB ({mr/br:5.2f})")
