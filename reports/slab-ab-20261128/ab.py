import json, subprocess, statistics, sys
old="/tmp/wt-old-target/release/hk-cell-slab"; new="/work/main/target/release/hk-cell-slab"
cells=[("churn",1),("trees",1),("realloc",1),("large",1),("fragmentation",1)]
for w in ("larson","prodcons","false-sharing"):
    for t in (1,2,4): cells.append((w,t))
reps=int(sys.argv[1]) if len(sys.argv)>1 else 5
print(f"{'cell':22} {'time new/old':>12} {'peak new/old':>12} {'end new/old':>12}")
for w,t in cells:
    r={"old":[], "new":[]}
    for i in range(reps):
        for k,b in (("old",old),("new",new)) if i%2==0 else (("new",new),("old",old)):
            out=subprocess.run([b,"workload",f"name={w}",f"threads={t}","scale=2"],capture_output=True,text=True).stdout
            d=json.loads(out); r[k].append((d["wall_ns"],d["peak_rss"],d["rss_end"]))
    med=lambda k,i: statistics.median(x[i] for x in r[k])
    print(f"{w+' x'+str(t):22} {med('new',0)/med('old',0):12.3f} {med('new',1)/med('old',1):12.3f} {med('new',2)/med('old',2):12.3f}   ({med('old',0)/1e6:.0f} -> {med('new',0)/1e6:.0f} ms)", flush=True)
