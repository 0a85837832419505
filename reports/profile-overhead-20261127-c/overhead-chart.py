# Bar chart of the profiler's overhead: per program, sampled and every,
# before (07b56e3) and after (9d8d9dd) the walk's rework, from
# ab-before-after.txt (9 interleaved reps), with the targets as lines.
data = [  # program, sampled before, after, every before, after
    ("python3 alloc_heavy", 1.045, 1.038, 2.028, 1.919),
    ("sqlite3 workload", 1.021, 1.011, 1.184, 1.154),
    ("hk-stress bench 3", 1.037, 0.998, 1.403, 1.382),
]
W, H = 900, 420
left, right, top, bottom = 170, 30, 62, 70
x0, x1 = 0.9, 2.2
def X(v): return left + (v - x0) / (x1 - x0) * (W - left - right)
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="24" text-anchor="middle" font-size="15">Heap profiler cost: time over the unprofiled run (lower is better)</text>']
for v in [1.0, 1.25, 1.5, 1.75, 2.0]:
    out.append(f'<line x1="{X(v):.1f}" y1="{top}" x2="{X(v):.1f}" y2="{H-bottom}" stroke="#ddd"/>')
    out.append(f'<text x="{X(v):.1f}" y="{H-bottom+16}" text-anchor="middle">{v:.2f}x</text>')
out.append(f'<line x1="{X(1.0):.1f}" y1="{top}" x2="{X(1.0):.1f}" y2="{H-bottom}" stroke="#333"/>')
for v, label in [(1.05, "sampled target 1.05x"), (2.0, "--every target 2x")]:
    out.append(f'<line x1="{X(v):.1f}" y1="{top}" x2="{X(v):.1f}" y2="{H-bottom}" stroke="#c00" stroke-dasharray="4,3"/>')
    out.append(f'<text x="{X(v)+4:.1f}" y="{top-6}" fill="#c00" font-size="11">{label}</text>')
colors = {"before": "#9bb7e0", "after": "#1f5fbf"}
group_h = (H - top - bottom) / len(data)
bar = group_h / 6
for i, (name, sb, sa, eb, ea) in enumerate(data):
    gy = top + i * group_h + bar * 0.5
    out.append(f'<text x="{left-8}" y="{gy + 2.5*bar:.1f}" text-anchor="end">{name}</text>')
    rows = [("sampled, before", sb, "before"), ("sampled, after", sa, "after"),
            ("every, before", eb, "before"), ("every, after", ea, "after")]
    for j, (lab, v, kind) in enumerate(rows):
        y = gy + j * bar * 1.15 + (0.3 * bar if j >= 2 else 0)
        out.append(f'<rect x="{X(x0):.1f}" y="{y:.1f}" width="{X(v)-X(x0):.1f}" height="{bar*0.95:.1f}" fill="{colors[kind]}"/>')
        out.append(f'<text x="{X(v)+4:.1f}" y="{y+bar*0.75:.1f}" font-size="10">{lab.split(",")[0]} {v:.2f}x</text>')
ly = H - 30
for k, (lab, c) in enumerate([("before (07b56e3)", colors["before"]), ("after (9d8d9dd)", colors["after"])]):
    out.append(f'<rect x="{left + k*200}" y="{ly}" width="14" height="12" fill="{c}"/>')
    out.append(f'<text x="{left + k*200 + 20}" y="{ly+10}">{lab}</text>')
out.append('</svg>')
open('/work/main/reports/profile-overhead-20261127-c/overhead.svg', 'w').write('\n'.join(out))
