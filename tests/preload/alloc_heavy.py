"""An allocation-heavy Python workload for `heapkit-bench preload` and the
shim tests: builds and drops dicts, lists, strings, tuples, small objects
and bytes of many sizes, with a working set that grows and shrinks, in two
threads. Run with PYTHONMALLOC=malloc so every object goes through malloc.

Prints one deterministic checksum line, so a run under any allocator can be
checked against a run without one.

    PYTHONMALLOC=malloc python3 alloc_heavy.py [scale]
"""

import sys
import threading


class Node:
    __slots__ = ("key", "children", "payload")

    def __init__(self, key, payload):
        self.key = key
        self.children = []
        self.payload = payload


def churn(seed, rounds):
    x = seed
    total = 0
    keep = []
    for r in range(rounds):
        d = {}
        for i in range(2000):
            x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
            k = "k%x" % (x >> 40)
            d[k] = [i, k * ((x >> 60) + 1), (i, r)]
        nodes = [Node(i, bytes(i % 700)) for i in range(1500)]
        for i in range(1, len(nodes)):
            nodes[(i - 1) // 4].children.append(nodes[i])
        total += sum(len(v[1]) for v in d.values()) + sum(len(n.payload) for n in nodes)
        s = ",".join(sorted(d)[:500])
        total += len(s.upper().split(","))
        if r % 3 == 0:
            keep.append(d)  # a working set that grows...
        if len(keep) > 12:
            keep = keep[6:]  # ...and shrinks
    return total + sum(len(k) for k in keep)


def main():
    scale = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    rounds = 40 * scale
    results = [0, 0]

    def run(slot):
        results[slot] = churn(slot + 1, rounds)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("alloc_heavy checksum", results[0], results[1])


if __name__ == "__main__":
    main()
