// `npm run bench`: every part real and in its own process (router, upstream API, component,
// watcher sessions over several processes; Redis as it runs), each figure next to a baseline
// measured in the same run, and the CPU each process used for it.
import http from 'node:http';
import { writeFileSync, mkdirSync } from 'node:fs';
import { relative } from 'node:path';
import os from 'node:os';
import autobahn from 'autobahn';
import got from 'got';
import type { Redis } from 'ioredis';
import { createLogger } from '../lib/support/logger.js';
import { here, nowMs, percentile, Worker } from './procs.js';
import { fanOut, latency } from './scenarios.js';
import { ready, sleep, Stack, type StackOptions } from './stack.js';
import { outageRows, requestsRows, throughputRows } from './throughput.js';

// autobahn reports every close on the console.warn it bound when it loaded (so replacing
// console.warn misses it), which lands in the middle of the table: its own hook goes to a quiet
// logger instead (debug level, shown with WAYMARK_LOG_LEVEL=debug).
const quiet = createLogger({ level: process.env.WAYMARK_LOG_LEVEL || 'warn', stream: process.stderr });
(autobahn as unknown as { log: { warn: (...args: unknown[]) => void } }).log.warn = (...args: unknown[]) => {
  quiet.debug('autobahn', { message: args.map((a) => (typeof a === 'string' ? a : JSON.stringify(a))).join(' ') });
};

const quick = process.argv.includes('--quick');
// `--only a,d` runs a subset of the scenarios (for profiling one of them)
const onlyArg = process.argv.find((a) => a.startsWith('--only='))?.slice(7);
const runs = (s: string) => !onlyArg || onlyArg.split(',').includes(s);
const repeatsArg = process.argv.find((a) => a.startsWith('--repeats='))?.slice(10);
const REDIS_URL = process.env.WAYMARK_BENCH_REDIS_URL || 'redis://127.0.0.1:6379';
const P: { fanout: number[]; dedupe: number[]; burst: number; latency: number; memory: number[]; fetch: number; repeats: number; warmups: number; watchers: number } = quick
  ? { fanout: [1000], dedupe: [2000, 100], burst: 500, latency: 300, memory: [20_000, 200], fetch: 4000, repeats: 3, warmups: 2, watchers: 2 }
  : { fanout: [1000, 10_000], dedupe: [10_000, 100], burst: 1000, latency: 1000, memory: [100_000, 1000], fetch: 20_000, repeats: 9, warmups: 2, watchers: 4 };
if (repeatsArg) P.repeats = Number(repeatsArg);
// `--router-cost-us=N`: CPU the bench's router spends per delivered event in the second pass of
// a., d. and i. (default: Crossbar 22.6.1 on CPython, 300-350 us per 1.2 KB event, ROUTERS.md); 0 skips it
const ROUTER_COST_US = Number(process.argv.find((a) => a.startsWith('--router-cost-us='))?.slice(17) ?? 330);
// throughput (i) sizes and probe length, requests-per-Update size (ii), outage (iii)
const T = quick
  ? { sizes: [500], probeMs: 1000, maxRate: 8, requests: 300, outage: { sessions: 100, perSession: 5, ms: 6_000 } }
  : { sizes: [500, 1500, 3000], probeMs: 2000, maxRate: 64, requests: 1000, outage: { sessions: 1000, perSession: 10, ms: 30_000 } };

interface Row { scenario: string; figure: string; value: number | string; baseline?: number | string; ratio?: number | string; target?: string; met?: boolean; cpu?: Record<string, number>; samples?: Record<string, number[]> }
const rows: Row[] = [];

function log(line: string) {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${line}\n`);
}

async function main() {
  const t0 = Date.now();
  log(`mode ${quick ? 'quick' : 'full'}; router cost of the second pass ${ROUTER_COST_US} us per delivered event; machine: ${os.cpus().length} x ${os.cpus()[0]?.model}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}`);

  const upstream = Worker.start('./upstream-proc.js');
  const { url: apiUrl } = await ready(upstream);
  log(`API ${apiUrl}`);
  const startStack = (o: Partial<StackOptions>) => Stack.start({ routerCostUs: 0, apiUrl, upstreamPid: upstream.pid, redisUrl: REDIS_URL, sessions: 1, watcherProcs: P.watchers, log, ...o });

  // First pass: the router as cheap as fox-wamp is; every scenario.
  const maxSessions = Math.max(runs('a') ? Math.max(...P.fanout) : 1, runs('b') ? P.dedupe[0] : 1, runs('c') ? P.burst : 1, runs('e') ? P.memory[1] : 1, runs('i') ? Math.max(...T.sizes) : 1, runs('ii') ? T.requests : 1, runs('g') || runs('h') ? (quick ? 2000 : 10_000) : 1);
  const stack = await startStack({ sessions: maxSessions });
  const { watchers, channel, redis, adminPort, pool } = stack;
  const control = (q: string) => stack.control(q);
  const cpuNow = () => stack.cpuNow();
  const cpuDelta = (a: Record<string, number>) => stack.cpuDelta(a);
  const watchAll = (n: number, path: (i: number) => string, token: (i: number) => string) => stack.watchAll(n, path, token);
  const reset = () => stack.reset();
  const waitReceived = (n: number, timeoutMs?: number) => stack.waitReceived(n, timeoutMs);

  // a. fan-out
  for (const n of runs('a') ? P.fanout : []) rows.push(...await fanOut(stack, n, P.repeats, P.warmups));

  // b. dedupe
  if (runs('b')) {
    const [n, tokens] = P.dedupe;
    const path = '/dedupe';
    log(`b. dedupe: ${n} watches over ${tokens} tokens`);
    await watchAll(n, () => path, (i) => `dd-${i % tokens}`);
    await control('version?v=dd-1');
    await control('reset');
    await reset();
    const c = cpuNow();
    const start = nowMs();
    await redis.publish(channel, path);
    const s = await waitReceived(n);
    await sleep(200); // count any late request too
    const st = await control('stats');
    rows.push({ scenario: `b. dedupe ${n} watches / ${tokens} tokens`, figure: 'upstream requests per bump', value: st.total, baseline: tokens, target: `= ${tokens}`, met: st.total === tokens, cpu: cpuDelta(c) });
    rows.push({ scenario: 'b. dedupe', figure: 'PUBLISH -> last Update (ms)', value: Math.round(s.lastAt - start) });
  }

  // c. burst
  if (runs('c')) {
    const n = P.burst;
    const path = '/burst';
    log(`c. burst: 100 bumps to ${n} watchers`);
    await watchAll(n, () => path, (i) => `burst-${i}`);
    await control('version?v=burst-start');
    await control('reset');
    await reset();
    const c = cpuNow();
    const start = nowMs();
    const p1 = redis.pipeline();
    for (let i = 0; i < 50; i++) p1.publish(channel, JSON.stringify({ path, id: `burst-${i}` }));
    await p1.exec();
    await control('version?v=burst-final');
    const p2 = redis.pipeline();
    for (let i = 50; i < 100; i++) p2.publish(channel, JSON.stringify({ path, id: `burst-${i}` }));
    await p2.exec();
    const burstMs = nowMs() - start;
    let atFinal = 0;
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      const r = await Promise.all(watchers.map((w) => w.request({ cmd: 'finalState', version: 'burst-final' })));
      atFinal = r.reduce((s, x) => s + x.atFinal, 0);
      if (atFinal >= n) break;
      await sleep(50);
    }
    await sleep(300); // let any straggling fetch land before counting
    const st = await control('stats');
    rows.push({ scenario: `c. burst 100 bumps in ${burstMs.toFixed(1)} ms, ${n} watchers`, figure: 'requests per credential (max)', value: st.maxPerToken, target: '<= 2', met: st.maxPerToken <= 2, cpu: cpuDelta(c) });
    rows.push({ scenario: 'c. burst', figure: 'sessions whose last Update is the final state', value: `${atFinal}/${n}`, target: 'all', met: atFinal === n });
  }

  // d. latency
  if (runs('d')) rows.push(...await latency(stack, P.latency, REDIS_URL));

  // e. memory and RPC rate
  if (runs('e')) {
    const [n, sessions] = P.memory;
    const perSession = n / sessions;
    log(`e. memory: ${n} watches over ${sessions} sessions`);
    const heap = async () => {
      const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics?gc=1`)).text();
      return Number(/^waymark_nodejs_heap_size_used_bytes (\S+)/m.exec(text)?.[1]);
    };
    await heap();
    const before = await heap();
    const c = cpuNow();
    const specs: Array<Array<[number, string, string]>> = watchers.map(() => []);
    for (let i = 0; i < sessions; i++) {
      for (let j = 0; j < perSession; j++) specs[i % P.watchers].push([Math.floor(i / P.watchers), `/mem/${i}/${j}?q=${j}`, `mem-${i}`]);
    }
    const r = await Promise.all(watchers.map((w, k) => w.request({ cmd: 'watch', specs: specs[k], concurrency: 512 })));
    const ms = Math.max(...r.map((x) => x.ms));
    const cpu = cpuDelta(c);
    const after = await heap();
    const perWatch = (after - before) / n;
    rows.push({ scenario: `e. ${n} watches / ${sessions} sessions`, figure: 'heap per watch (bytes)', value: Math.round(perWatch), target: '<= 1024', met: perWatch <= 1024 });
    rows.push({ scenario: 'e. watch RPC rate', figure: 'waymark.watch calls per second', value: Math.round(n / (ms / 1000)), cpu });
  }

  // f. fetch layer
  if (runs('f')) {
    const n = P.fetch;
    log(`f. fetch layer: ${n} requests per client, 64 in flight`);
    const u = new URL(apiUrl);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
    const clients: Array<[string, (i: number) => Promise<unknown>]> = [
      ['undici Pool.request', async (i) => (await pool.request({ method: 'GET', path: '/f', headers: { authorization: `Bearer f${i}` } })).body.text()],
      ['node:http keep-alive', (i) => new Promise((resolve, reject) => {
        http.get({ host: u.hostname, port: u.port, path: '/f', agent, headers: { authorization: `Bearer f${i}` } }, (res) => {
          let d = '';
          res.on('data', (c) => { d += c; });
          res.on('end', () => resolve(d));
        }).on('error', reject);
      })],
      ['got 14', (i) => got(`${apiUrl}/f`, { headers: { authorization: `Bearer f${i}` }, agent: { http: agent }, retry: { limit: 0 } }).text()],
      ['fetch (built-in)', async (i) => (await fetch(`${apiUrl}/f`, { headers: { authorization: `Bearer f${i}` } })).text()],
    ];
    let undiciUs = 0;
    for (const [name, one] of clients) {
      for (let i = 0; i < 200; i++) await one(i); // warm up
      const cpu0 = process.cpuUsage();
      const start = nowMs();
      let next = 0;
      await Promise.all(Array.from({ length: 64 }, async () => { while (next < n) await one(next++); }));
      const wall = nowMs() - start;
      const cpu = process.cpuUsage(cpu0);
      const us = (cpu.user + cpu.system) / n;
      if (!undiciUs) undiciUs = us;
      rows.push({ scenario: `f. fetch layer: ${name}`, figure: 'client CPU per request (us) / req/s', value: `${us.toFixed(1)} / ${Math.round(n / (wall / 1000))}`, ratio: +(us / undiciUs).toFixed(2) });
    }
    agent.destroy();
  }

  // i. and ii. before h.: h's watches revalidate all along, and would answer 200s to the API
  // versions i. and ii. set
  if (runs('i')) rows.push(...await throughputRows(stack, T.sizes, T.probeMs, T.maxRate));
  if (runs('ii')) rows.push(...await requestsRows(stack, T.requests));

  const ctx: Ctx = { watchers, control, reset, waitReceived, watchAll, cpuNow, cpuDelta, channel, redis, sessions: stack.ids.length, component: stack.component.pid! };
  if (runs('g')) await tagBumpScenario(ctx);
  if (runs('h')) await revalidationScenario(ctx);
  await stack.stop();

  // Second pass: the router spends what Crossbar spends per delivered event.
  if (ROUTER_COST_US > 0 && (runs('a') || runs('d') || runs('i'))) {
    const costly = await startStack({ routerCostUs: ROUTER_COST_US, sessions: Math.max(runs('a') ? Math.max(...P.fanout) : 1, runs('i') ? Math.max(...T.sizes) : 1) });
    for (const n of runs('a') ? P.fanout : []) rows.push(...await fanOut(costly, n, P.repeats, P.warmups));
    if (runs('d')) rows.push(...await latency(costly, P.latency, REDIS_URL));
    if (runs('i')) rows.push(...await throughputRows(costly, T.sizes, T.probeMs, T.maxRate));
    await costly.stop();
  }

  // Redis outage: a stack of its own, its component reaching Redis through a fault proxy.
  if (runs('iii')) rows.push(...await outageRows(startStack, REDIS_URL, T.outage.sessions, T.outage.perSession, T.outage.ms));
  await upstream.stop();

  const machine = `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}, ${os.platform()} ${os.release()}`;
  const table = [
    '| scenario | figure | Waymark | baseline | ratio | target | met | CPU s (component / router / upstream / watchers / bench) |',
    '|---|---|---|---|---|---|---|---|',
    ...rows.map((r) => `| ${r.scenario} | ${r.figure} | ${r.value} | ${r.baseline ?? ''} | ${r.ratio ?? ''} | ${r.target ?? ''} | ${r.met === undefined ? '' : r.met ? 'yes' : 'NO'} | ${r.cpu ? [r.cpu.component, r.cpu.router, r.cpu.upstream, r.cpu.watchers, r.cpu.bench].join(' / ') : ''} |`),
  ].join('\n');
  process.stdout.write(`\nWaymark bench (${quick ? 'quick' : 'full'}) on ${machine}, ${Math.round((Date.now() - t0) / 1000)} s\n\n${table}\n`);
  if (!onlyArg) {
    // The full run's results are the tracked record (bench/results.json); a quick run is a check
    // on this machine and goes to the untracked bench/out/, so it never dirties the tree.
    const file = here(quick ? '../../bench/out/results-quick.json' : '../../bench/results.json');
    mkdirSync(here(quick ? '../../bench/out' : '../../bench'), { recursive: true });
    writeFileSync(file, JSON.stringify({ mode: quick ? 'quick' : 'full', machine, at: new Date().toISOString(), rows }, null, 2) + '\n');
    process.stdout.write(`\nresults written to ${relative(process.cwd(), file) || file}\n`);
  }
  process.exit(0);
}

/** What the scenarios below use of main()'s setup. */
interface Ctx {
  watchers: Worker[];
  control: (q: string) => Promise<{ total: number; tokens: number; maxPerToken: number; notModified?: number }>;
  reset: () => Promise<unknown>;
  waitReceived: (n: number, timeoutMs?: number) => Promise<{ received: number; lastAt: number }>;
  watchAll: (n: number, path: (i: number) => string, token: (i: number) => string) => Promise<number>;
  cpuNow: () => Record<string, number>;
  cpuDelta: (a: Record<string, number>) => Record<string, number>;
  channel: string;
  redis: Redis;
  sessions: number;
  component: number;
}

/**
 * g. A tag bump (contract 11.3) that reaches N watches over N/10 paths, each watch with its own
 * token (N fetches), against the same fetches bumped by naming every path: the cost of finding
 * the groups through the tag index instead of the path index. Rounds alternate the two bumps.
 */
async function tagBumpScenario(ctx: Ctx): Promise<void> {
  const n = Math.min(quick ? 2000 : 10_000, ctx.sessions);
  const paths = n / 10;
  log(`g. tag bump: ${n} watches over ${paths} paths`);
  await ctx.watchAll(n, (i) => `/tg/${i % paths}`, (i) => `tg-${i}`);
  const byPath = JSON.stringify({ paths: Array.from({ length: paths }, (_, p) => `/tg/${p}`) });
  const byTag = JSON.stringify({ tags: ['tg-all'] });
  const tag: number[] = [];
  const path: number[] = [];
  let cpuT: Record<string, number> = {};
  let cpuP: Record<string, number> = {};
  const round = async (message: string, r: number) => {
    await ctx.control(`version?v=tg-${r}-${message.length}`);
    await ctx.reset();
    const c = ctx.cpuNow();
    const start = nowMs();
    await ctx.redis.publish(ctx.channel, message);
    const s = await ctx.waitReceived(n);
    return { ms: s.lastAt - start, cpu: ctx.cpuDelta(c) };
  };
  // The warm-up rounds also give every group its tags (from its first response).
  const repeats = quick ? 3 : 5;
  for (let r = -2; r < repeats; r++) {
    // Alternate which goes first, so neither always runs right after the other's garbage.
    // (The first round is by path: until a group's first response, it has no tags.)
    const first = r > -2 && r % 2 === 0;
    const t = first ? await round(byTag, r) : undefined;
    const p = await round(byPath, r);
    const t2 = t ?? await round(byTag, r);
    if (r >= 0) { path.push(p.ms); tag.push(t2.ms); cpuP = p.cpu; cpuT = t2.cpu; }
  }
  const t = percentile([...tag].sort((x, y) => x - y), 50);
  const b = percentile([...path].sort((x, y) => x - y), 50);
  rows.push({ scenario: `g. tag bump to ${n} watches / ${paths} paths`, figure: 'PUBLISH -> last Update (ms, median)', value: Math.round(t), baseline: Math.round(b), ratio: +(t / b).toFixed(2), target: '<= 1.2', met: t / b <= 1.2, cpu: cpuT, samples: { tag: tag.map(Math.round), path: path.map(Math.round) } });
  rows.push({ scenario: 'g. same fetches bumped by path (baseline)', figure: `one bump naming all ${paths} paths (ms)`, value: Math.round(b), cpu: cpuP });
  log(`g. tag bump: ${Math.round(t)} ms (${tag.map(Math.round).join(' ')}), by path ${Math.round(b)} ms (${path.map(Math.round).join(' ')})`);
}

/**
 * h. Revalidation (contract 11.4) with nothing changing: N watches at revalidateMs 5000 over 100
 * (path, token) groups should cost groups / period = 20 conditional requests per second, all
 * answered 304, and little component CPU. Baseline: the same component idle for as long, before.
 */
async function revalidationScenario(ctx: Ctx): Promise<void> {
  const groups = 100;
  const perGroup = Math.min(quick ? 20 : 100, ctx.sessions);
  const periodMs = 5000;
  const windowMs = quick ? 10_000 : 20_000;
  const clk = (cpu: Record<string, number>) => cpu.component / (windowMs / 1000);
  log(`h. revalidation: ${groups * perGroup} watches over ${groups} groups at ${periodMs} ms; idle baseline for ${windowMs} ms`);
  let c = ctx.cpuNow();
  await sleep(windowMs);
  const idle = ctx.cpuDelta(c);
  const specs: Array<Array<[number, string, string]>> = ctx.watchers.map(() => []);
  // Global session s lives in worker s % W at local index s / W; each watches every group's path once.
  for (let s = 0; s < perGroup; s++) {
    const w = s % ctx.watchers.length;
    for (let g = 0; g < groups; g++) specs[w].push([Math.floor(s / ctx.watchers.length), `/rv/${g}`, 'rv']);
  }
  const r = await Promise.all(ctx.watchers.map((w, i) => w.request({ cmd: 'watch', specs: specs[i], options: { revalidateMs: periodMs } })));
  const errors = r.reduce((s, x) => s + x.errors, 0);
  if (errors) throw new Error(`${errors} watch calls failed`);
  // The first turn of each group (jittered within ±10 %) fetches in full: the watches have no
  // snapshot, so nothing to be conditional on yet. Measure from the second turn on.
  await sleep(periodMs * 1.2);
  await ctx.control('reset');
  c = ctx.cpuNow();
  const start = nowMs();
  await sleep(windowMs);
  const st = await ctx.control('stats');
  const busy = ctx.cpuDelta(c);
  const seconds = (nowMs() - start) / 1000;
  const perSecond = st.total / seconds;
  rows.push({ scenario: `h. ${groups * perGroup} revalidating watches / ${groups} groups @ ${periodMs} ms, nothing changes`, figure: 'conditional requests per second (304s)', value: `${perSecond.toFixed(1)} (${st.notModified} of ${st.total} were 304)`, baseline: groups / (periodMs / 1000), target: '~20', met: Math.abs(perSecond - 20) <= 3 && st.notModified === st.total, cpu: busy });
  rows.push({ scenario: 'h. revalidation CPU', figure: 'component CPU, % of one core', value: +(clk(busy) * 100).toFixed(2), baseline: +(clk(idle) * 100).toFixed(2), target: '< 5', met: clk(busy) < 0.05, cpu: busy });
  log(`h. revalidation: ${perSecond.toFixed(1)} requests/s, ${st.notModified} of ${st.total} were 304, component ${(clk(busy) * 100).toFixed(2)} % of a core (idle ${(clk(idle) * 100).toFixed(2)} %)`);
}

main().catch((err) => {
  process.stderr.write(`bench failed: ${(err as Error).stack}\n`);
  process.exit(1);
});
