const m = new Map();
let s = 0;
for (let r = 0; r < 20; r++) {
  for (let i = 0; i < 50000; i++) m.set('k' + ((i * 7919 + r) % 60000), Buffer.alloc((i % 50) * 40 + 1, r));
  for (const [k, v] of m) { s += v.length; if (v.length % 3 == 0) m.delete(k); }
}
const j = JSON.parse(require('fs').readFileSync('/tmp/sw/big.json', 'utf8'));
console.log(s, m.size, j.length, JSON.stringify(j).length);
