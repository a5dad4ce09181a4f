// Summarise a V8 .cpuprofile: self time per function and per package, heaviest first, as shares
// of the busy time (idle samples left out), and the share of Waymark's own modules (dist/lib).
// `node bench/profile-summary.mjs <file.cpuprofile> [functions=45]`
import { readFileSync } from 'node:fs';
const prof = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const nFn = Number(process.argv[3] ?? 45);
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const self = new Map();
const dt = prof.timeDeltas;
for (let i = 0; i < prof.samples.length; i++) {
  const n = byId.get(prof.samples[i]);
  self.set(n, (self.get(n) ?? 0) + (dt[i] ?? 0));
}
let idle = 0;
for (const [n, t] of self) if (n.callFrame.functionName === '(idle)') { idle += t; self.delete(n); }
const total = [...self.values()].reduce((a, b) => a + b, 0);
const fn = new Map(); const pkg = new Map(); const own = new Map();
for (const [n, t] of self) {
  const cf = n.callFrame;
  const where = cf.url.replace(/^file:\/\//, '').replace(/.*node_modules\//, 'nm:').replace(/.*\/dist\//, '');
  const k = `${cf.functionName || '(anon)'} ${where}:${cf.lineNumber + 1}`;
  fn.set(k, (fn.get(k) ?? 0) + t);
  const p = cf.url === '' ? `(${cf.functionName || 'native'})` : where.startsWith('nm:') ? where.split('/')[0] : where.startsWith('node:') ? 'node:' + where.split(':')[1].split('/')[0] : where.split('/').slice(0, 2).join('/');
  pkg.set(p, (pkg.get(p) ?? 0) + t);
  if (where.startsWith('lib/')) own.set(where, (own.get(where) ?? 0) + t);
}
const pct = (t) => `${(100 * t / total).toFixed(1).padStart(5)}%`;
const top = (m, n) => [...m].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, t]) => `${pct(t)}  ${k}`).join('\n');
const ownTotal = [...own.values()].reduce((a, b) => a + b, 0);
console.log(`busy ${(total / 1000).toFixed(0)} ms sampled (idle ${(idle / 1000).toFixed(0)} ms left out)
-- Waymark's own modules (dist/lib): ${pct(ownTotal).trim()} of busy time
${top(own, 20)}
-- by package
${top(pkg, 15)}
-- by function
${top(fn, nFn)}`);
