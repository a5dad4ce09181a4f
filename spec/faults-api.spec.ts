import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { CircuitBreakerFetcher, type BreakerState } from '../lib/engine/circuit-breaker.js';
import { Dispatcher } from '../lib/engine/dispatcher.js';
import type { Fetcher } from '../lib/engine/fetcher.js';
import { silentLogger } from '../lib/support/logger.js';
import { Metrics } from '../lib/support/metrics.js';
import type { FetchRequest, FetchResult } from '../lib/protocol/types.js';
import { WatchRegistry } from '../lib/engine/watch-registry.js';
import { sleep, waitFor } from './helpers/env.js';
import { apiNow, converge, lastUpdate, VersionedApi, watchAll, type Watcher } from './helpers/convergence.js';
import { FaultProxy } from './helpers/fault-proxy.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { Upstream } from './helpers/upstream.js';
import { ClientPool } from './helpers/wamp-client.js';

const PATHS = ['/users/1', '/users/2'];
const SESSIONS = 3;
const GROUPS = PATHS.length * SESSIONS;
const CHILD = fileURLToPath(new URL('./helpers/api-child.js', import.meta.url));
/** Short timeouts and cool-down so each fault converges in about a second. */
const FAST = { WAYMARK_FETCH_TIMEOUT_MS: '300', WAYMARK_BREAKER_FAILURES: '3', WAYMARK_BREAKER_COOLDOWN_MS: '400' };

const sum = async (m: { get(): Promise<{ values: Array<{ value: number }> }> }) => (await m.get()).values.reduce((n, v) => n + v.value, 0);
/** Requests that reached the API: fetches the dispatcher made minus those the breaker failed fast. */
const apiHits = async (h: Harness) => (await sum(h.waymark.metrics.fetches)) - (await sum(h.waymark.metrics.breakerRejected));
const queued = (h: Harness) => (h.waymark as unknown as { dispatcher: Dispatcher }).dispatcher.queued;
const failedNow = (watchers: Watcher[]) => watchers.every((w) => { const u = lastUpdate(w); return !!u && (u.status === 0 || u.status >= 500); });

describe('faults: API', function () {
  this.timeout(30_000);
  let wm: Harness | undefined;
  const pool = new ClientPool();
  afterEach(async function () {
    await pool.closeAll();
    await wm?.close();
    wm = undefined;
  });

  describe('a hung API (SIGSTOP of its process)', function () {
    let child: ChildProcess;
    let apiUrl: string;
    beforeEach(async function () {
      child = spawn(process.execPath, [CHILD], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      child.stdout!.on('data', (d) => { out += String(d); });
      const port = await waitFor('the API child to listen', () => /PORT (\d+)/.exec(out)?.[1], 5_000);
      apiUrl = `http://127.0.0.1:${port}`;
    });
    afterEach(async function () {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
    });

    it('(e) gives timeout error Updates, opens the breaker (API hits stay bounded), bounds the queue, and converges after SIGCONT', async function () {
      const h = wm = await startWaymark(apiUrl, FAST);
      const watchers = await watchAll(pool, SESSIONS, PATHS);
      for (const p of PATHS) await request(`${apiUrl}/__set?path=${encodeURIComponent(p)}&version=2`, { method: 'POST' }).then((r) => r.body.dump());
      const hitsBefore = await apiHits(h);
      child.kill('SIGSTOP');
      const stoppedAt = Date.now();
      for (const p of PATHS) await h.bump(p);
      await waitFor('an error Update on every watch', () => failedNow(watchers), 5_000);
      const codes = new Set(watchers.flatMap((w) => w.client.updates.filter((u) => u.watch === w.watch).map((u) => u.error?.code)));
      expect(codes.has('timeout'), `codes ${[...codes].join(',')}`).to.equal(true);
      // 1000 bumps against the hung API: the queue holds at most one entry per group.
      let maxQueued = 0;
      const sampler = setInterval(() => { maxQueued = Math.max(maxQueued, queued(h)); }, 1);
      await Promise.all(Array.from({ length: 1000 }, (_, i) => h.bump(PATHS[i % PATHS.length])));
      await sleep(100);
      clearInterval(sampler);
      await sleep(600);
      const outageMs = Date.now() - stoppedAt;
      const hits = (await apiHits(h)) - hitsBefore;
      const rejected = await sum(h.waymark.metrics.breakerRejected);
      console.log(`      api-sigstop: bumps=${1000 + PATHS.length} groups=${GROUPS} api_hits=${hits} failed_fast=${rejected} max_queue=${maxQueued} outage_ms=${outageMs}`);
      expect(maxQueued).to.be.at.most(GROUPS);
      expect(rejected).to.be.above(0);
      // the first wave (one fetch per group) plus about one probe per cool-down + timeout
      expect(hits).to.be.at.most(GROUPS + Math.ceil(outageMs / 400) + 1);
      const since = Date.now();
      child.kill('SIGCONT');
      const want = new Map<Watcher, { status: number; body: string }>();
      for (const w of watchers) want.set(w, await apiNow(apiUrl, w));
      const r = await converge('api-sigstop', watchers, (w) => want.get(w)!, since);
      expect(r.lost).to.equal(0);
    });
  });

  describe('a failing API (in-process)', function () {
    let api: Upstream;
    let state: VersionedApi;
    let proxy: FaultProxy | undefined;
    beforeEach(async function () {
      state = new VersionedApi();
      api = await new Upstream().start();
      api.handler = state.handler;
    });
    afterEach(async function () {
      await proxy?.stop();
      proxy = undefined;
      await api.close();
    });
    const finalState = async (url: string, watchers: Watcher[]) => {
      const want = new Map<Watcher, { status: number; body: string }>();
      for (const w of watchers) want.set(w, await apiNow(url, w));
      return (w: Watcher) => want.get(w)!;
    };

    it('(f) 500s then recovery: the 500s are pushed, the breaker stays closed (an answer is no outage), each group retries with back-off, and every watch converges without a bump', async function () {
      const h = wm = await startWaymark(api.url, FAST);
      const watchers = await watchAll(pool, SESSIONS, PATHS);
      state.failWith = 500;
      for (const p of PATHS) state.set(p, 2);
      for (const p of PATHS) await h.bump(p);
      await waitFor('a 500 on every watch', () => failedNow(watchers), 5_000);
      expect(watchers.every((w) => lastUpdate(w)!.status === 500)).to.equal(true);
      // No bumps for 1.5 s: only the retries reach the API, a few per group, spaced by back-off.
      const hitsBefore = api.requests.length;
      await sleep(1_500);
      const retries = api.requests.length - hitsBefore;
      expect(retries, 'retries in 1.5 s').to.be.within(GROUPS, 3 * GROUPS);
      expect(await sum(h.waymark.metrics.breakerRejected)).to.equal(0);
      // A watch taken meanwhile gets the API's answer, not a failed-fast one.
      const late = await watchAll(pool, 1, [PATHS[0]], 'late');
      expect(late[0].snapshot).to.include({ status: 500 });
      watchers.push(...late);
      const since = Date.now();
      state.failWith = undefined;
      const r = await converge('api-500-recover', watchers, await finalState(api.url, watchers), since);
      expect(r.lost).to.equal(0);
      expect(h.logs.join('')).not.to.match(/API circuit open/);
    });

    it('(f) connection reset mid-request: an unreachable error Update, then convergence', async function () {
      const target = new URL(api.url);
      proxy = await new FaultProxy({ host: target.hostname, port: Number(target.port) }).start();
      const viaProxy = `http://127.0.0.1:${proxy.port}`;
      const h = wm = await startWaymark(viaProxy, FAST);
      const watchers = await watchAll(pool, SESSIONS, PATHS);
      state.delayMs = 2_000;
      for (const p of PATHS) state.set(p, 2);
      for (const p of PATHS) await h.bump(p);
      await waitFor('every group in flight', () => api.active >= GROUPS, 3_000);
      // Cut every connection and refuse new ones: the fetcher resends a request whose kept-alive
      // connection was reset at once on a new connection, and that must fail too.
      await proxy.set('refuse');
      await waitFor('an error Update on every watch', () => failedNow(watchers), 3_000);
      for (const w of watchers) expect(lastUpdate(w)!.error?.code).to.equal('unreachable');
      state.delayMs = 0;
      await proxy.set('pass');
      const since = Date.now();
      const r = await converge('api-reset', watchers, await finalState(api.url, watchers), since);
      expect(r.lost).to.equal(0);
    });
  });

  describe('circuit breaker', function () {
    class Scripted implements Fetcher {
      calls = 0;
      fail = true;
      delayMs = 0;
      async fetch(): Promise<FetchResult> {
        this.calls += 1;
        if (this.delayMs) await sleep(this.delayMs);
        return this.fail
          ? { status: 0, headers: {}, body: '', encoding: 'utf8', fetchedAt: Date.now(), error: { code: 'timeout', message: 'slow' } }
          : { status: 200, headers: {}, body: 'ok', encoding: 'utf8', fetchedAt: Date.now() };
      }
      async close() {}
    }
    const req: FetchRequest = { path: '/a', headers: {}, reason: 'b1' };

    it('opens after N failures, fails fast, half-opens after the cool-down for one probe, and closes on success', async function () {
      const inner = new Scripted();
      const states: BreakerState[] = [];
      let halfOpened = 0;
      const b = new CircuitBreakerFetcher(inner, {
        failures: 3, cooldownMs: 100, origin: () => 'o', logger: silentLogger(),
        onState: (_o, s) => states.push(s), onHalfOpen: () => { halfOpened += 1; },
      });
      for (let i = 0; i < 3; i++) expect((await b.fetch(req)).error?.code).to.equal('timeout');
      expect(b.state('o')).to.equal('open');
      const fast = await b.fetch(req);
      expect(fast).to.include({ status: 0 });
      expect(fast.error?.code).to.equal('unreachable');
      expect(inner.calls).to.equal(3);
      await waitFor('half-open', () => b.state('o') === 'half-open', 2_000);
      expect(halfOpened).to.equal(1);
      // one probe at a time: a second request while it runs fails fast
      inner.fail = true;
      inner.delayMs = 50;
      const [probe, second] = await Promise.all([b.fetch(req), b.fetch(req)]);
      expect(probe.error?.code).to.equal('timeout');
      expect(second.error?.code).to.equal('unreachable');
      expect(inner.calls).to.equal(4);
      inner.delayMs = 0;
      expect(b.state('o')).to.equal('open');
      await waitFor('half-open again', () => b.state('o') === 'half-open', 2_000);
      inner.fail = false;
      expect((await b.fetch(req)).status).to.equal(200);
      expect(b.state('o')).to.equal('closed');
      expect(states).to.deep.equal(['open', 'half-open', 'open', 'half-open', 'closed']);
      await b.close();
    });

    it('counts only what shows the API is down: never a 5xx, never one credential alone, never a failure while another request got an answer', async function () {
      let answer: (r: FetchResult) => void = () => undefined;
      const results: FetchResult[] = [];
      const inner: Fetcher = {
        fetch: (r) => r.path === '/slow'
          ? new Promise<FetchResult>((resolve) => { answer = resolve; })
          : Promise.resolve(results.shift()!),
        close: async () => undefined,
      };
      const b = new CircuitBreakerFetcher(inner, { failures: 2, minCredentials: 2, cooldownMs: 10_000, origin: () => 'o', logger: silentLogger() });
      const down: FetchResult = { status: 0, headers: {}, body: '', encoding: 'utf8', fetchedAt: 0, error: { code: 'timeout', message: 'slow' } };
      const ok: FetchResult = { status: 200, headers: {}, body: '', encoding: 'utf8', fetchedAt: 0 };
      const one = { path: '/a', headers: { authorization: 'Bearer one' }, reason: 'b' };
      const two = { path: '/a', headers: { authorization: 'Bearer two' }, reason: 'b' };
      // 5xx: an answer
      for (let i = 0; i < 5; i++) { results.push({ ...ok, status: 500 }); await b.fetch(one); }
      expect(b.state('o')).to.equal('closed');
      // one credential's paths that never answer: its own failures
      for (let i = 0; i < 5; i++) { results.push(down); await b.fetch(one); }
      expect(b.state('o')).to.equal('closed');
      // a failure while another request got an answer: the API is up
      const slow = b.fetch({ ...two, path: '/slow' });
      results.push(ok);
      await b.fetch(one);
      answer(down);
      await slow;
      results.push(down);
      await b.fetch(one);
      expect(b.state('o')).to.equal('closed');
      // two credentials, nobody answered: down
      results.push(down);
      await b.fetch(two);
      expect(b.state('o')).to.equal('open');
      await b.close();
    });

    it('answeredPathsOnly: no-response on paths that never answered counts for nothing; on a path that answered, it does', async function () {
      const results: FetchResult[] = [];
      const inner: Fetcher = { fetch: () => Promise.resolve(results.shift()!), close: async () => undefined };
      const b = new CircuitBreakerFetcher(inner, { failures: 2, minCredentials: 2, answeredPathsOnly: true, cooldownMs: 10_000, origin: () => 'o', logger: silentLogger() });
      const down: FetchResult = { status: 0, headers: {}, body: '', encoding: 'utf8', fetchedAt: 0, error: { code: 'unreachable', message: 'reset' } };
      const ok: FetchResult = { status: 200, headers: {}, body: '', encoding: 'utf8', fetchedAt: 0 };
      const as = (path: string, token: string) => ({ path, headers: { authorization: `Bearer ${token}` }, reason: 'b' });
      for (let i = 0; i < 6; i++) { results.push(down); await b.fetch(as(`/never/${i}`, i % 2 ? 'a' : 'b')); }
      expect(b.state('o')).to.equal('closed');
      results.push(ok);
      await b.fetch(as('/known', 'a'));
      results.push(down, down);
      await b.fetch(as('/known', 'a'));
      await b.fetch(as('/known', 'b'));
      expect(b.state('o')).to.equal('open');
      await b.close();
    });

    it('half-open probes take the failed groups in turn: one broken path is not the only probe', async function () {
      const registry = new WatchRegistry(100);
      registry.upsert(1, '/broken', { authorization: 'Bearer a' });
      registry.upsert(2, '/fine', { authorization: 'Bearer b' });
      const seen: string[] = [];
      const fetcher: Fetcher = {
        fetch: async (r) => {
          seen.push(r.path);
          return { status: 0, headers: {}, body: '', encoding: 'utf8', fetchedAt: Date.now(), error: { code: 'unreachable', message: 'down' } };
        },
        close: async () => undefined,
      };
      const d = new Dispatcher({
        registry, fetcher, publisher: { publish: async () => undefined }, logger: silentLogger(), metrics: new Metrics(),
        concurrency: 4, pushUnchanged: false, retryBaseMs: 60_000,
      });
      await d.dispatch({ id: 'b1', paths: ['/broken', '/fine'], at: Date.now() });
      seen.length = 0;
      for (let i = 0; i < 4; i++) {
        expect(d.probeFailed('recovered')).to.equal(true);
        await d.settled();
      }
      expect(seen).to.deep.equal(['/broken', '/fine', '/broken', '/fine']);
      d.stopStarting();
    });

    it('a hung API and 1000 bumps keep the queue within the number of groups', async function () {
      const pending: Array<() => void> = [];
      let calls = 0;
      const hung: Fetcher = {
        fetch: () => { calls += 1; return new Promise<FetchResult>((resolve) => pending.push(() => resolve({ status: 200, headers: {}, body: 'x', encoding: 'utf8', fetchedAt: Date.now() }))); },
        close: async () => undefined,
      };
      const registry = new WatchRegistry(100);
      const paths = Array.from({ length: 10 }, (_, i) => `/p/${i}`);
      for (let s = 1; s <= 2; s++) for (const p of paths) registry.upsert(s, p, { authorization: `Bearer ${s}` });
      const groups = 20;
      const d = new Dispatcher({
        registry, fetcher: hung, publisher: { publish: async () => undefined }, logger: silentLogger(), metrics: new Metrics(),
        concurrency: 4, pushUnchanged: false,
      });
      let maxQueued = 0;
      const waits = new Set<Promise<void>>();
      for (let i = 0; i < 1000; i++) {
        waits.add(d.dispatch({ id: `b${i}`, paths: [paths[i % paths.length]], at: Date.now() }));
        maxQueued = Math.max(maxQueued, d.queued);
      }
      expect(maxQueued).to.be.at.most(groups);
      // nor do the callers waiting for idle: one shared promise, not one waiter per bump
      expect(waits.size).to.equal(1);
      expect(calls).to.equal(4);
      while (pending.length > 0 || d.busy > 0) {
        pending.splice(0).forEach((release) => release());
        await sleep(1);
      }
      // each group: at most the fetch in flight plus one coalesced follow-up
      expect(calls).to.be.at.most(2 * groups);
    });
  });
});
