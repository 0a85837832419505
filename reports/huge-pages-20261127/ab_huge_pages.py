import subprocess, json, statistics as st, os, sys
cell = '/work/main/target/release/hk-cell-sizeclass'
work = [('larson',1),('realloc',1),('fragmentation',1),('larson',4),('churn',1),('large',1)]
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
res = {}
for r in range(reps):
    for w,t in work:
        for hp in ('0','1'):
            env = dict(os.environ, HEAPKIT_HUGE_PAGES=hp)
            out = subprocess.run([cell, 'workload', f'name={w}', f'threads={t}', 'scale=1', 'seed=42'], env=env, capture_output=True, text=True)
            try:
                j = json.loads(out.stdout.strip().splitlines()[-1])
            except Exception:
                print('fail', w, t, hp, out.stdout[-300:], out.stderr[-300:]); continue
            res.setdefault((w,t,hp), []).append((j['wall_ns'], j.get('peak_rss',0), j.get('minor_faults',0)))
for w,t in work:
    a = res.get((w,t,'0')); b = res.get((w,t,'1'))
    if not a or not b: continue
    ta = st.median(x[0] for x in a); tb = st.median(x[0] for x in b)
    ra = st.median(x[1] for x in a); rb = st.median(x[1] for x in b)
    fa = st.median(x[2] for x in a); fb = st.median(x[2] for x in b)
    print(f'{w} x{t}: time {tb/ta:.3f}x ({ta/1e6:.1f} -> {tb/1e6:.1f} ms), peak RSS {rb/max(ra,1):.2f}x ({ra>>20} -> {rb>>20} MiB), faults {fa} -> {fb}')
