// One bench stack: a router process (with a set CPU cost per delivered event, or none), a
// component (`waymark serve`) on it, watcher sessions over several processes and a backend
// session for the baselines. The bench starts one stack per router cost (and one with Redis
// behind a fault proxy for the outage row), one after the other, so the processes of one never
// compete for the two cores with those of another.
import { randomBytes } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import autobahn from 'autobahn';
import { Redis } from 'ioredis';
import { Pool } from 'undici';
import { WAMP_SUBPROTOCOLS } from '../lib/protocol/uris.js';
import { cpuSeconds, nowMs, startComponent, stopProcess, Worker } from './procs.js';

export interface StackOptions {
  /** CPU microseconds the router burns per delivered EVENT (DevRouterOptions.routeCostUs). */
  routerCostUs: number;
  apiUrl: string;
  upstreamPid: number | undefined;
  /** Redis for the bench's own bumps. */
  redisUrl: string;
  /** Redis as the component sees it (a fault proxy in front of redisUrl for the outage row). */
  componentRedisUrl?: string;
  sessions: number;
  watcherProcs: number;
  log: (line: string) => void;
}

export type Cpu = Record<string, number>;

export function ready(w: Worker): Promise<any> {
  return new Promise((resolve) => { w.events.push((m) => { if (m?.ready) resolve(m); }); });
}

/** A port nothing listens on right now (the component's admin port must be known before it starts). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Stack {
  /** the session id of watcher session i (i lives in watchers[i % W] at local index i / W) */
  readonly ids: number[] = [];
  private constructor(
    readonly opts: StackOptions,
    readonly router: Worker,
    readonly routerUrl: string,
    readonly component: ChildProcess,
    readonly adminPort: number,
    readonly channel: string,
    readonly watchers: Worker[],
    readonly redis: Redis,
    readonly backend: autobahn.Session,
    private readonly backendConnection: autobahn.Connection,
    readonly pool: Pool,
  ) {}

  static async start(opts: StackOptions): Promise<Stack> {
    const ticket = randomBytes(16).toString('hex');
    const channel = `bench-${randomBytes(4).toString('hex')}`;
    const router = Worker.start('./router-proc.js', ['waymark', ticket, String(opts.routerCostUs)]);
    const { url: routerUrl } = await ready(router);
    const adminPort = await freePort();
    const component = await startComponent({
      ...process.env,
      WAYMARK_ROUTER_URL: routerUrl, WAYMARK_ROUTER_AUTHID: 'waymark', WAYMARK_ROUTER_TICKET: ticket,
      WAYMARK_REDIS_URL: opts.componentRedisUrl ?? opts.redisUrl, WAYMARK_BUMP_CHANNEL: channel, WAYMARK_API_URL: opts.apiUrl,
      WAYMARK_ADMIN_PORT: String(adminPort), WAYMARK_LOG_LEVEL: 'warn', WAYMARK_FETCH_TIMEOUT_MS: '60000',
      WAYMARK_RATE_LIMIT: '1000000', WAYMARK_RATE_BURST: '1000000',
      // e. fills its sessions to the default limit; g, h and the throughput rows watch more paths from them
      WAYMARK_MAX_WATCHES_PER_SESSION: '100000',
    }, adminPort);
    opts.log(`router ${routerUrl} (cost ${opts.routerCostUs} us per delivered event), component pid ${component.pid}`);
    const watchers = Array.from({ length: opts.watcherProcs }, () => Worker.start('./watchers-proc.js'));
    await Promise.all(watchers.map(ready));
    const backendConnection = new autobahn.Connection({ url: routerUrl, realm: 'realm1', protocols: WAMP_SUBPROTOCOLS, authmethods: ['ticket'], authid: 'waymark', onchallenge: () => ticket, max_retries: 0 });
    const backend = await new Promise<autobahn.Session>((resolve, reject) => {
      backendConnection.onopen = resolve;
      backendConnection.onclose = (r) => { reject(new Error(r)); return true; };
      backendConnection.open();
    });
    const stack = new Stack(opts, router, routerUrl, component, adminPort, channel, watchers, new Redis(opts.redisUrl), backend, backendConnection, new Pool(opts.apiUrl, { connections: 64 }));
    const W = opts.watcherProcs;
    opts.log(`connecting ${opts.sessions} watcher sessions over ${W} processes`);
    const perWorker = Array.from({ length: W }, (_, w) => Math.ceil((opts.sessions - w) / W));
    const conn = await Promise.all(watchers.map((w, i) => w.request({ cmd: 'connect', url: routerUrl, realm: 'realm1', count: perWorker[i] })));
    for (let i = 0; i < opts.sessions; i++) stack.ids.push(conn[i % W].ids[Math.floor(i / W)]);
    opts.log(`connected in ${Math.round(Math.max(...conn.map((c) => c.ms)))} ms`);
    return stack;
  }

  async stop(): Promise<void> {
    await this.pool.close();
    await Promise.all(this.watchers.map((w) => w.request({ cmd: 'close' }).catch(() => undefined)));
    await Promise.all(this.watchers.map((w) => w.stop()));
    await stopProcess(this.component);
    await this.router.stop();
    await this.redis.quit();
  }

  async control(q: string): Promise<{ total: number; tokens: number; maxPerToken: number; notModified?: number }> {
    return (await fetch(`${this.opts.apiUrl}/__control/${q}`)).json() as Promise<{ total: number; tokens: number; maxPerToken: number; notModified?: number }>;
  }

  cpuNow(): Cpu {
    const c: Cpu = {
      router: cpuSeconds(this.router.pid), upstream: cpuSeconds(this.opts.upstreamPid), component: cpuSeconds(this.component.pid),
    };
    c.watchers = this.watchers.reduce((n, w) => n + cpuSeconds(w.pid), 0);
    c.bench = process.cpuUsage().user / 1e6 + process.cpuUsage().system / 1e6;
    return c;
  }

  cpuDelta(a: Cpu): Cpu {
    const b = this.cpuNow();
    const d: Cpu = {};
    for (const k of Object.keys(b)) d[k] = Math.round((b[k] - a[k]) * 100) / 100;
    return d;
  }

  /** n watches: watch i from session i (of this stack) on path(i) with token(i). */
  async watchAll(n: number, path: (i: number) => string, token: (i: number) => string, session: (i: number) => number = (i) => i): Promise<number> {
    const W = this.watchers.length;
    const specs: Array<Array<[number, string, string]>> = this.watchers.map(() => []);
    for (let i = 0; i < n; i++) {
      const s = session(i);
      specs[s % W].push([Math.floor(s / W), path(i), token(i)]);
    }
    const r = await Promise.all(this.watchers.map((w, k) => w.request({ cmd: 'watch', specs: specs[k] })));
    const errors = r.reduce((s, x) => s + x.errors, 0);
    if (errors) throw new Error(`${errors} watch calls failed`);
    return Math.max(...r.map((x) => x.ms));
  }

  reset(): Promise<unknown> {
    return Promise.all(this.watchers.map((w) => w.request({ cmd: 'reset' })));
  }

  async stats(): Promise<{ received: number; lastAt: number }> {
    const r = await Promise.all(this.watchers.map((w) => w.request({ cmd: 'stats' })));
    return { received: r.reduce((s, x) => s + x.received, 0), lastAt: Math.max(...r.map((x) => x.lastAt)) };
  }

  async waitReceived(n: number, timeoutMs = 120_000): Promise<{ received: number; lastAt: number }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.stats();
      if (s.received >= n) return s;
      if (Date.now() > deadline) throw new Error(`only ${s.received} of ${n} updates arrived`);
      await sleep(s.received > n * 0.9 ? 5 : 25);
    }
  }

  /** The baseline: the same GETs with an undici Pool (64 in flight) and the same acknowledged publishes with `eligible`. */
  async bareFetchPublish(n: number, path: string, token: (i: number) => string): Promise<void> {
    let next = 0;
    await Promise.all(Array.from({ length: 64 }, async () => {
      while (next < n) {
        const i = next++;
        const res = await this.pool.request({ method: 'GET', path, headers: { authorization: `Bearer ${token(i)}`, 'x-waymark': 'baseline' } });
        const body = await res.body.text();
        await this.backend.publish(`waymark.session.${this.ids[i]}`, [{ watch: 'baseline', path, status: res.statusCode, headers: { 'content-type': 'application/json' }, body, encoding: 'utf8', bump: null, fetchedAt: Date.now() }], {}, { acknowledge: true, eligible: [this.ids[i]] });
      }
    }));
  }

  now(): number {
    return nowMs();
  }
}
