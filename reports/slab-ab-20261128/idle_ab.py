import json, subprocess, statistics, os, sys
bins={"old":"/tmp/wt-old-target/release/hk-cell-slab","new":"/work/main/target/release/hk-cell-slab"}
if len(sys.argv)>2: bins[sys.argv[2]]=sys.argv[3]
env=dict(os.environ, HEAPKIT_BACKGROUND_PURGE_MS="100")
reps=int(sys.argv[1])
for w,t in [("larson",1),("larson",4),("prodcons",1),("prodcons",4)]:
    r={k:[] for k in bins}
    for i in range(reps):
        for k,b in bins.items():
            d=json.loads(subprocess.run([b,"workload",f"name={w}",f"threads={t}","idle_ms=1000"],capture_output=True,text=True,env=env).stdout)
            r[k].append(d["rss_idle"]/d["rss_start"])
    print(f"{w} x{t}: "+" | ".join(f"{k}: idle median {statistics.median(v):.2f} [{' '.join(f'{x:.2f}' for x in sorted(v))}]" for k,v in r.items()), flush=True)
