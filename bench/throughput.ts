// Throughput rows the way other real-time systems publish theirs (issue 13, item 4):
//   i.   the highest bump rate at which N watchers of one path (distinct tokens) still get every
//        change, each as its own Update, with p95 under 1 s (Supabase publishes 3,000-4,000
//        authorised deliveries/s as the ceiling of Postgres Changes with row-level security);
//   ii.  upstream requests per delivered Update, for distinct, shared (10 tokens) and public watches;
//   iii. time for every watch to converge after a Redis outage (a blackholing TCP proxy between
//        the component and Redis; the bench's own Redis client goes direct, so bumps made during
//        the outage are lost to the component, as they would be in production).
import { FaultProxy } from '../spec/helpers/fault-proxy.js';
import { percentile } from './procs.js';
import { costLabel, type Row } from './scenarios.js';
import { sleep, Stack, type Cpu, type StackOptions } from './stack.js';

interface Probe { rate: number; bumps: number; pass: boolean; statePass: boolean; p95: number; stateP95: number; missing: number; updates: number; seconds: number; cpu: Cpu }

let probeSeq = 0;

/**
 * One probe: `rate` bumps per second of `/tp/<n>` for `durationMs`, the API at a new version
 * before each bump. A change counts as delivered to a watcher when an Update carrying exactly
 * that version reaches it (no coalescing allowed); p95 over every (change, watcher) pair.
 */
async function probe(stack: Stack, n: number, rate: number, durationMs: number): Promise<Probe> {
  const path = `/tp/${n}`;
  const seq = ++probeSeq;
  const bumps = Math.max(2, Math.round((rate * durationMs) / 1000));
  const W = stack.watchers.length;
  await Promise.all(stack.watchers.map((w) => w.request({ cmd: 'track', prefix: path })));
  await stack.reset();
  const versions: string[] = [];
  const times: number[] = [];
  const c = stack.cpuNow();
  const start = stack.now();
  for (let j = 0; j < bumps; j++) {
    const due = start + (j * 1000) / rate;
    const wait = due - stack.now();
    if (wait > 0) await sleep(wait);
    const v = `tp${seq}-${j}`;
    await stack.control(`version?v=${v}`);
    times.push(stack.now());
    versions.push(v);
    await stack.redis.publish(stack.channel, path);
  }
  // every change, or give up when nothing arrived for 500 ms (merged changes never come) or
  // 3 s after the last bump (p95 under 1 s is out of reach by then)
  const expected = bumps * n;
  const deadline = Date.now() + 3_000;
  let s = await stack.stats();
  for (let last = s.received, quietSince = Date.now(); s.received < expected && Date.now() < deadline;) {
    await sleep(20);
    s = await stack.stats();
    if (s.received !== last) { last = s.received; quietSince = Date.now(); } else if (Date.now() - quietSince > 500) break;
  }
  const seconds = (Math.max(s.lastAt, times[times.length - 1]) - start) / 1000;
  const cpu = stack.cpuDelta(c);
  // let what is still queued drain before the next probe (bounded)
  for (let quiet = 0, last = s.received, until = Date.now() + 30_000; quiet < 2 && Date.now() < until;) {
    await sleep(200);
    const now = (await stack.stats()).received;
    quiet = now === last ? quiet + 1 : 0;
    last = now;
  }
  const r = await Promise.all(stack.watchers.map((w, k) => w.request({ cmd: 'probe', versions, times, sessions: Math.ceil((n - k) / W) })));
  await Promise.all(stack.watchers.map((w) => w.request({ cmd: 'track', prefix: '' })));
  const strict = r.flatMap((x) => x.strict as number[]).sort((a, b) => a - b);
  const state = r.flatMap((x) => x.state as number[]).sort((a, b) => a - b);
  const missing = r.reduce((a, x) => a + x.missing, 0);
  const updates = r.reduce((a, x) => a + x.updates, 0);
  const p95 = percentile(strict, 95);
  const stale = r.reduce((a, x) => a + x.stale, 0);
  const stateP95 = percentile(state, 95);
  return { rate, bumps, pass: missing === 0 && p95 < 1000, statePass: stale === 0 && stateP95 < 1000, p95, stateP95, missing, updates, seconds, cpu };
}

/** i. For each n, the highest passing bump rate: doubling from 2/s up to maxRate, then two bisection steps. */
export async function throughputRows(stack: Stack, sizes: number[], durationMs: number, maxRate: number): Promise<Row[]> {
  const rows: Row[] = [];
  const label = costLabel(stack);
  for (const n of sizes) {
    stack.opts.log(`i. throughput, ${n} watchers of one path (${label}): watching`);
    await stack.watchAll(n, () => `/tp/${n}`, (i) => `tp-${n}-${i}`);
    await sleep(500);
    const tried: Probe[] = [];
    const run = async (rate: number) => {
      const p = await probe(stack, n, rate, durationMs);
      tried.push(p);
      stack.opts.log(`i. N=${n} ${rate.toFixed(2)} bumps/s: ${p.pass ? 'pass' : 'FAIL'}, p95 ${Math.round(p.p95)} ms, ${p.missing} changes merged into a later Update, state p95 ${Math.round(p.stateP95)} ms, ${p.updates} Updates in ${p.seconds.toFixed(1)} s`);
      return p;
    };
    // Doubling from 2/s while the state stays current (up to maxRate), then two bisection steps
    // for the strict criterion between its last pass and first failure.
    let lo: Probe | undefined;
    let hi: Probe | undefined;
    for (let rate = 2; rate <= maxRate; rate *= 2) {
      const p = await run(rate);
      // the strict figure is the last pass below the first failure (a later pass is luck)
      if (p.pass && !hi) lo = p; else hi ??= p;
      if (!p.statePass) break;
    }
    if (!lo) {
      for (const rate of [1, 0.5]) {
        const p = await run(rate);
        if (p.pass) { lo = p; break; }
        hi = p;
      }
    } else if (hi) {
      for (let step = 0; step < 2; step++) {
        const rate = Math.sqrt(lo.rate * hi.rate);
        const p = await run(rate);
        if (p.pass) lo = p; else hi = p;
      }
    }
    const probes = tried.map((p) => `${+p.rate.toFixed(2)}/s ${p.pass ? 'ok' : 'no'}`).join(', ');
    const scenario = `i. throughput, ${n} watchers of one path (${label})`;
    const figure = 'highest bump rate with every change delivered as its own Update, p95 < 1 s: bumps/s = deliveries/s (p95 ms)';
    if (lo) {
      rows.push({ scenario, figure, value: `${+lo.rate.toFixed(2)}/s = ${Math.round(lo.rate * n)}/s (p95 ${Math.round(lo.p95)})`, baseline: probes, cpu: lo.cpu });
    } else {
      const p = tried[tried.length - 1];
      rows.push({ scenario, figure, value: `none >= 0.5/s (at 0.5/s: p95 ${Math.round(p.p95)}, ${p.missing} merged)`, baseline: probes, cpu: p.cpu });
    }
    const current = tried.filter((p) => p.statePass).sort((a, b) => b.rate - a.rate)[0];
    if (current) {
      rows.push({ scenario: `${scenario}, coalescing allowed`, figure: `highest bump rate tried (<= ${maxRate}/s) with every watcher at each new state, p95 < 1 s: bumps/s; Updates delivered/s (state p95 ms)`, value: `${+current.rate.toFixed(2)}/s; ${Math.round(current.updates / current.seconds)}/s (p95 ${Math.round(current.stateP95)})`, cpu: current.cpu });
    }
  }
  return rows;
}

/** ii. Upstream requests per delivered Update, one bump to n watches of each kind. */
export async function requestsRows(stack: Stack, n: number): Promise<Row[]> {
  const kinds: Array<[string, string, (i: number) => string, string, string]> = [
    ['distinct tokens', '/rq/distinct', (i) => `rq-d-${i}`, '1', ''],
    ['shared: 10 tokens', '/rq/shared', (i) => `rq-s-${i % 10}`, `${(10 / n).toFixed(3)}`, ''],
    // answered with Cache-Control: public (bench/upstream-proc.ts), no Vary: one request per bump
    // (contract 12, public sharing)
    ['public path, distinct tokens', '/pub/rq', (i) => `rq-p-${i}`, `${(1 / n).toFixed(3)}`, ''],
  ];
  const rows: Row[] = [];
  for (const [kind, path, token, target, note] of kinds) {
    stack.opts.log(`ii. requests per Update: ${n} watches, ${kind}`);
    await stack.watchAll(n, () => path, token);
    // The watches here have no snapshot, so none has an answer of its own yet, and only a watch
    // whose own last answer was public joins a share (contract 12): a first bump gives each one,
    // the counted bump is the next (the steady state).
    await stack.reset();
    await stack.redis.publish(stack.channel, path);
    await stack.waitReceived(n, 60_000);
    await stack.control(`version?v=rq-${path}`);
    await sleep(300); // first fetches of the watches land before counting
    await stack.control('reset');
    await stack.reset();
    const c = stack.cpuNow();
    await stack.redis.publish(stack.channel, path);
    await stack.waitReceived(n, 60_000);
    await sleep(300);
    const st = await stack.control('stats');
    const { received } = await stack.stats();
    const per = st.total / received;
    rows.push({ scenario: `ii. requests per Update, ${n} watches, ${kind}${note}`, figure: 'upstream requests / Updates delivered', value: `${st.total} / ${received} = ${per.toFixed(3)}`, target: `= ${target}`, met: Math.abs(per - Number(target)) < 0.0005 + 1e-9, cpu: stack.cpuDelta(c) });
  }
  return rows;
}

/**
 * iii. `sessions` x `perSession` watches (distinct tokens, `perSession` paths), Redis blackholed
 * for `outageMs` while the API changes and the bump for it is lost; the time from the end of the
 * outage until every watch's last Update is the new state.
 */
export async function outageRows(start: (o: Partial<StackOptions>) => Promise<Stack>, redisUrl: string, sessions: number, perSession: number, outageMs: number): Promise<Row[]> {
  const u = new URL(redisUrl);
  const proxy = await new FaultProxy({ host: u.hostname, port: Number(u.port || 6379) }).start();
  const stack = await start({ routerCostUs: 0, componentRedisUrl: proxy.url(redisUrl), sessions });
  try {
    const total = sessions * perSession;
    const log = stack.opts.log;
    log(`iii. Redis outage: ${total} watches over ${sessions} sessions, outage ${outageMs / 1000} s`);
    await stack.watchAll(total, (i) => `/out/${i % perSession}`, (i) => `out-${i}`, (i) => Math.floor(i / perSession));
    await Promise.all(stack.watchers.map((w) => w.request({ cmd: 'track', prefix: '/out/', last: true })));
    const converged = async (v: string) => (await Promise.all(stack.watchers.map((w) => w.request({ cmd: 'converged', version: v })))).reduce((a, x) => a + x.at, 0);
    const bumpAll = async () => { for (let p = 0; p < perSession; p++) await stack.redis.publish(stack.channel, `/out/${p}`); };
    const until = async (v: string, ms: number) => {
      const deadline = Date.now() + ms;
      let at = await converged(v);
      while (at < total && Date.now() < deadline) { await sleep(50); at = await converged(v); }
      return at;
    };
    await stack.control('version?v=out-before');
    await bumpAll();
    const before = await until('out-before', 120_000);
    if (before < total) throw new Error(`only ${before} of ${total} watches got the state before the outage`);
    await proxy.set('blackhole');
    const cut = stack.now();
    await sleep(Math.min(1000, outageMs / 2));
    await stack.control('version?v=out-after');
    await bumpAll(); // lost: the component's Redis connection forwards nothing now
    await sleep(Math.max(0, cut + outageMs - stack.now()));
    const c = stack.cpuNow();
    await proxy.set('pass');
    const restored = stack.now();
    const at = await until('out-after', 120_000);
    const ms = stack.now() - restored;
    log(`fault: redis-outage-${outageMs / 1000}s lost=${total - at} converge_ms=${Math.round(ms)}`);
    return [{ scenario: `iii. Redis outage ${outageMs / 1000} s, ${total} watches (${sessions} sessions x ${perSession} paths)`, figure: 'end of outage -> every watch at the new state (ms); watches not converged', value: `${Math.round(ms)}; ${total - at}`, target: 'all converge', met: at === total, cpu: stack.cpuDelta(c) }];
  } finally {
    await stack.stop();
    await proxy.stop();
  }
}
