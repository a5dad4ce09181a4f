// Summarise a V8 .cpuprofile: self time per function and per package, heaviest first.
import { readFileSync } from 'node:fs';
const prof = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const self = new Map();
const dt = prof.timeDeltas;
for (let i = 0; i < prof.samples.length; i++) {
  const n = byId.get(prof.samples[i]);
  self.set(n, (self.get(n) ?? 0) + (dt[i] ?? 0));
}
const total = [...self.values()].reduce((a, b) => a + b, 0);
const fn = new Map(); const pkg = new Map();
for (const [n, t] of self) {
  const cf = n.callFrame;
  const where = cf.url.replace(/^file:\/\//, '').replace(/.*node_modules\//, 'nm:').replace(/.*\/dist\//, '');
  const k = `${cf.functionName || '(anon)'} ${where}:${cf.lineNumber + 1}`;
  fn.set(k, (fn.get(k) ?? 0) + t);
  const p = cf.url === '' ? `(${cf.functionName || 'native'})` : where.startsWith('nm:') ? where.split('/')[0] : where.startsWith('node:') ? 'node:' + where.split(':')[1].split('/')[0] : where.split('/').slice(0, 2).join('/');
  pkg.set(p, (pkg.get(p) ?? 0) + t);
}
const top = (m, n) => [...m].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, t]) => `${(100 * t / total).toFixed(1).padStart(5)}%  ${k}`).join('\n');
console.log(`total sampled ${(total / 1000).toFixed(0)} ms\n-- by package\n${top(pkg, 15)}\n-- by function\n${top(fn, 45)}`);
