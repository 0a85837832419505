import subprocess, sys, time, os, statistics
# usage: ov.py REPS name=ENV|CMD ...   (each arg: label::envs::cmd)
reps=int(sys.argv[1]); cols=[a.split('::') for a in sys.argv[2:]]
res={c[0]:[] for c in cols}
for r in range(reps):
    for label,envs,cmd in cols:
        env=dict(os.environ)
        for kv in envs.split():
            k,v=kv.split('=',1); env[k]=v
        t=time.perf_counter(); subprocess.run(cmd,shell=True,env=env,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL); res[label].append(time.perf_counter()-t)
        for f in os.listdir('/dev/shm'):
            if f.startswith('ov-'): os.unlink('/dev/shm/'+f)
base=statistics.median(res[cols[0][0]])
for label,_,_ in cols:
    m=statistics.median(res[label]); print(f"{label:30s} {m:.3f}s  {m/base:.3f}x  min {min(res[label]):.3f} max {max(res[label]):.3f}")
