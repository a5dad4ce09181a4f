// The bench scenarios that run once per router cost: a. fan-out and d. latency.
import { Redis } from 'ioredis';
import { percentile } from './procs.js';
import { Stack, type Cpu } from './stack.js';

export interface Row { scenario: string; figure: string; value: number | string; baseline?: number | string; ratio?: number | string; target?: string; met?: boolean; cpu?: Cpu; samples?: Record<string, number[]> }

/** `(router 330 us/event)`: which router cost a row was measured with. */
export const costLabel = (stack: Stack): string => `router ${stack.opts.routerCostUs} us/event`;

/**
 * a. One bump to n watches with distinct tokens, PUBLISH to the last Update received, against
 * the bare GETs + publishes on the same router. Target: the 1.1 with the router cost on,
 * 1.3 without.
 */
export async function fanOut(stack: Stack, n: number, repeats: number, warmups: number): Promise<Row[]> {
  const path = `/fan/${n}`;
  const label = costLabel(stack);
  const target = stack.opts.routerCostUs > 0 ? 1.1 : 1.3;
  stack.opts.log(`a. fan-out to ${n} (${label}): watching`);
  await stack.watchAll(n, () => path, (i) => `fan-${n}-${i}`);
  const wm: number[] = [];
  const base: number[] = [];
  let cpuW: Cpu = {};
  let cpuB: Cpu = {};
  // Untimed warm-up rounds of both paths first: the JIT and the connection pools settle, so the
  // ratio compares steady states rather than whichever code V8 optimised first.
  for (let r = -warmups; r < repeats; r++) {
    await stack.control(`version?v=fan-${r}`);
    await stack.reset();
    let c = stack.cpuNow();
    let start = stack.now();
    await stack.redis.publish(stack.channel, path);
    let s = await stack.waitReceived(n);
    if (r >= 0) wm.push(s.lastAt - start);
    cpuW = stack.cpuDelta(c);
    await stack.reset();
    c = stack.cpuNow();
    start = stack.now();
    await stack.bareFetchPublish(n, path, (i) => `fan-${n}-${i}`);
    s = await stack.waitReceived(n);
    if (r >= 0) base.push(s.lastAt - start);
    cpuB = stack.cpuDelta(c);
  }
  const w = percentile([...wm].sort((x, y) => x - y), 50);
  const b = percentile([...base].sort((x, y) => x - y), 50);
  stack.opts.log(`a. fan-out N=${n} (${label}): waymark ${Math.round(w)} ms, baseline ${Math.round(b)} ms`);
  return [
    { scenario: `a. fan-out N=${n} (${label})`, figure: 'PUBLISH -> last Update (ms, median)', value: Math.round(w), baseline: Math.round(b), ratio: +(w / b).toFixed(2), target: `<= ${target}`, met: w / b <= target, cpu: cpuW, samples: { waymark: wm.map(Math.round), baseline: base.map(Math.round) } },
    { scenario: `a. fan-out N=${n} baseline (${label})`, figure: 'bare GETs + publishes (ms)', value: Math.round(b), cpu: cpuB },
  ];
}

/** d. One watch, n sequential bumps; baseline: the bare hops chained the same way (Redis pub/sub, one GET, one WAMP publish). */
export async function latency(stack: Stack, n: number, redisUrl: string): Promise<Row[]> {
  const label = costLabel(stack);
  stack.opts.log(`d. latency (${label}): ${n} sequential bumps to one watch`);
  const sub = new Redis(redisUrl);
  const probe = `${stack.channel}-probe`;
  await sub.subscribe(probe);
  await stack.watchAll(1, () => '/latency', () => 'lat');
  const w0 = stack.watchers[0];
  await w0.request({ cmd: 'stream', on: true });
  const arrivals: number[] = [];
  let waiter: (() => void) | undefined;
  const onEvent = (m: any) => { if (m?.ev === 'update') { arrivals.push(m.at); waiter?.(); } };
  w0.events.push(onEvent);
  const next = () => new Promise<number>((resolve) => {
    const have = arrivals.length;
    waiter = () => { if (arrivals.length > have) { waiter = undefined; resolve(arrivals[arrivals.length - 1]); } };
  });
  const wm: number[] = [];
  let c = stack.cpuNow();
  for (let i = 0; i < n; i++) {
    await stack.control(`version?v=lat-${i}`);
    const arrived = next();
    const start = stack.now();
    await stack.redis.publish(stack.channel, '/latency');
    wm.push((await arrived) - start);
  }
  const cpuW = stack.cpuDelta(c);
  const base: number[] = [];
  c = stack.cpuNow();
  for (let i = 0; i < n; i++) {
    const arrived = next();
    const start = stack.now();
    const got1 = new Promise<void>((resolve) => sub.once('message', () => resolve()));
    await stack.redis.publish(probe, '/latency');
    await got1;
    const res = await stack.pool.request({ method: 'GET', path: '/latency', headers: { authorization: 'Bearer lat' } });
    const body = await res.body.text();
    await stack.backend.publish(`waymark.session.${stack.ids[0]}`, [{ watch: 'baseline', path: '/latency', status: 200, headers: {}, body, encoding: 'utf8', bump: null, fetchedAt: Date.now() }], {}, { acknowledge: true, eligible: [stack.ids[0]] });
    base.push((await arrived) - start);
  }
  const cpuB = stack.cpuDelta(c);
  await w0.request({ cmd: 'stream', on: false });
  w0.events.splice(w0.events.indexOf(onEvent), 1);
  await sub.quit();
  wm.sort((x, y) => x - y);
  base.sort((x, y) => x - y);
  const over = percentile(wm, 50) - percentile(base, 50);
  return [
    { scenario: `d. latency, ${n} sequential bumps (${label})`, figure: 'p50 / p99 PUBLISH -> Update (ms)', value: `${percentile(wm, 50).toFixed(2)} / ${percentile(wm, 99).toFixed(2)}`, baseline: `${percentile(base, 50).toFixed(2)} / ${percentile(base, 99).toFixed(2)}`, cpu: cpuW },
    { scenario: `d. latency (${label})`, figure: 'p50 overhead over the bare hops (ms)', value: +over.toFixed(2), target: '<= 1', met: over <= 1, cpu: cpuB },
  ];
}
