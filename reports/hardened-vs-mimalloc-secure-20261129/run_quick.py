"""run --quick's rows, as interleaved runs of the cell binaries: default and
hardened sizeclass, the mimalloc crate and the same crate built with its
`secure` feature (MI_SECURE=4). Run from the repository root after
build.sh; argument: repetitions (default 7). Prints medians' ratios."""
import json,subprocess,statistics,sys,math
N=int(sys.argv[1]) if len(sys.argv)>1 else 7
bins={'sizeclass':'target/release/hk-cell-sizeclass',
 'sizeclass_hardened':'target/release/hk-cell-sizeclass_hardened',
 'mimalloc':'target/release/hk-cell-mimalloc',
 'mimalloc_secure':'target/mimalloc-secure/release/hk-cell-mimalloc'}
rows=[('churn',1),('larson',1),('larson',4),('prodcons',1),('prodcons',4),('false-sharing',1),('false-sharing',4),('trees',1),('realloc',1),('large',1),('fragmentation',1)]
names=list(bins)
res={}
for w,t in rows:
    d={n:[] for n in names}; rss={n:[] for n in names}
    for i in range(N):
        order=names if i%2==0 else names[::-1]
        for n in order:
            o=subprocess.run([bins[n],'workload',f'name={w}',f'threads={t}','scale=1','seed=0'],capture_output=True,text=True)
            j=json.loads(o.stdout)
            d[n].append(j['wall_ns']); rss[n].append(j['peak_rss'])
    m={n:statistics.median(d[n]) for n in names}
    r={n:statistics.median(rss[n]) for n in names}
    res[(w,t)]=(m,r)
    print(f"{w} x{t}: sizeclass {m['sizeclass']/1e6:.1f} ms, hardened/sizeclass {m['sizeclass_hardened']/m['sizeclass']:.3f}, mimalloc {m['mimalloc']/1e6:.1f} ms, secure/mimalloc {m['mimalloc_secure']/m['mimalloc']:.3f}, hardened/mimalloc_secure {m['sizeclass_hardened']/m['mimalloc_secure']:.3f} | rss hard/sc {r['sizeclass_hardened']/r['sizeclass']:.2f} sec/mi {r['mimalloc_secure']/r['mimalloc']:.2f}",flush=True)
def gm(xs): return math.exp(sum(math.log(x) for x in xs)/len(xs))
print("geomean hardened/sizeclass %.3f  secure/mimalloc %.3f  hardened/secure %.3f  sizeclass/mimalloc %.3f"%(
 gm([m['sizeclass_hardened']/m['sizeclass'] for m,_ in res.values()]),
 gm([m['mimalloc_secure']/m['mimalloc'] for m,_ in res.values()]),
 gm([m['sizeclass_hardened']/m['mimalloc_secure'] for m,_ in res.values()]),
 gm([m['sizeclass']/m['mimalloc'] for m,_ in res.values()])))
