"""Writes the inputs the more-programs-20261129 rows read, into /tmp/sw:
data.txt (400,000 lines of words and numbers, 18 MB) and big.json (150,000
objects, 13 MB). Run once before the preload command in NOTES.md; copy
churn.js, t.tcl and hello.rs from this directory into /tmp/sw too."""
import json
import os
import random

os.makedirs("/tmp/sw", exist_ok=True)
random.seed(1)
with open("/tmp/sw/data.txt", "w") as f:
    for i in range(400000):
        words = ["alpha", "beta", "gamma", "delta", str(i), str(i * 7 % 1000)]
        f.write(" ".join(random.choice(words) for _ in range(8)) + "\n")
with open("/tmp/sw/big.json", "w") as f:
    json.dump(
        [{"id": i, "name": "n%d" % i, "tags": [str(j) for j in range(i % 13)], "v": i * 0.5}
         for i in range(150000)],
        f,
    )
