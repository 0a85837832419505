"""An allocation-heavy Python program for recording (run with PYTHONMALLOC=malloc
so every object goes through malloc): a word-frequency index over generated
text, JSON round trips, a growing/shrinking dict of lists, and string building.
Deterministic. Optional argument: work multiplier (default 1)."""
import json
import random
import sys

scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
rng = random.Random(42)
words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 12))) for _ in range(2000)]

index = {}
for doc in range(int(3000 * scale)):
    text = " ".join(rng.choice(words) for _ in range(rng.randint(5, 60)))
    for w in text.split():
        index.setdefault(w, []).append(doc)
    if doc % 7 == 0:
        # drop some postings: frees in the middle of the heap
        for w in rng.sample(words, 20):
            if w in index and len(index[w]) > 8:
                index[w] = index[w][-4:]

records = [{"id": i, "name": rng.choice(words) * rng.randint(1, 20), "tags": rng.sample(words, 5)}
           for i in range(int(20000 * scale))]
for _ in range(3):
    blob = json.dumps(records)
    records = json.loads(blob)
    del blob

parts = []
for i in range(int(50000 * scale)):
    parts.append(str(i) * (i % 17))
    if len(parts) > 1000:
        s = "".join(parts)
        parts = [s[: len(s) // 3]]
total = sum(len(v) for v in index.values()) + len(records) + len(parts)
print(total)
