"""The standard allocator benchmark programs under LD_PRELOAD, interleaved:
libheapkit.so (default sizeclass, and HEAPKIT_HARDEN=1) and mimalloc v2's
own sources built plain and with MI_SECURE=4 (build.sh). Run from the
repository root; argument: repetitions (default 7). Prints medians' ratios
of wall time."""
import os,subprocess,statistics,sys,math,time,resource
N=int(sys.argv[1]) if len(sys.argv)>1 else 7
P='target/release/heapkit-programs/'
LIB=os.path.abspath('target/release/libheapkit.so')
cfgs={'sizeclass':{'LD_PRELOAD':LIB,'HEAPKIT_ALLOC':'sizeclass'},
 'sizeclass_hardened':{'LD_PRELOAD':LIB,'HEAPKIT_ALLOC':'sizeclass','HEAPKIT_HARDEN':'1'},
 'mimalloc':{'LD_PRELOAD':os.path.abspath('target/libmimalloc-plain.so')},
 'mimalloc_secure':{'LD_PRELOAD':os.path.abspath('target/libmimalloc-secure.so')}}
rows=[("cfrac","cfrac",[]),("larson 2T","larson",["2"]),("xmalloc 2T","xmalloc",["1"]),("glibc-simple","glibc_simple",[]),("glibc-thread 1T","glibc_thread",["1"]),("glibc-thread 2T","glibc_thread",["2"]),("cache-scratch 1T","cache_scratch",["1"]),("cache-scratch 2T","cache_scratch",["2"]),("cache-thrash 1T","cache_thrash",["1"]),("cache-thrash 2T","cache_thrash",["2"]),("mstress 2T","mstress",["2"]),("rptest 2T","rptest",["2"]),("alloc-test 1T","alloc_test",["1"]),("alloc-test 2T","alloc_test",["2"]),("malloc-large","malloc_large",[])]
names=list(cfgs); res={}
for label,prog,args in rows:
    d={n:[] for n in names}
    for i in range(N+1):
        for n in (names if i%2==0 else names[::-1]):
            e=dict(os.environ); e.update(cfgs[n])
            s=time.perf_counter(); r=subprocess.run([P+prog]+args,env=e,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL); t=time.perf_counter()-s
            if r.returncode!=0: print("FAIL",label,n,r.returncode)
            if i: d[n].append(t)
    m={n:statistics.median(d[n]) for n in names}; res[label]=m
    print(f"{label:18s} sizeclass {m['sizeclass']*1e3:7.1f} ms  hardened/sizeclass {m['sizeclass_hardened']/m['sizeclass']:.3f}  mimalloc {m['mimalloc']*1e3:7.1f} ms  secure/mimalloc {m['mimalloc_secure']/m['mimalloc']:.3f}  hardened/secure {m['sizeclass_hardened']/m['mimalloc_secure']:.3f}",flush=True)
gm=lambda xs: math.exp(sum(map(math.log,xs))/len(xs))
print("geomean hardened/sizeclass %.3f  secure/mimalloc %.3f  hardened/secure %.3f  sizeclass/mimalloc %.3f"%(gm([m['sizeclass_hardened']/m['sizeclass'] for m in res.values()]),gm([m['mimalloc_secure']/m['mimalloc'] for m in res.values()]),gm([m['sizeclass_hardened']/m['mimalloc_secure'] for m in res.values()]),gm([m['sizeclass']/m['mimalloc'] for m in res.values()])))
