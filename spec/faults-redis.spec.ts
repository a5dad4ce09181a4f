import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { Redis } from 'ioredis';
import { randomChannel, sleep, testEnv, waitFor } from './helpers/env.js';
import { apiNow, converge, VersionedApi, watchAll, type Watcher } from './helpers/convergence.js';
import { FaultProxy } from './helpers/fault-proxy.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { freePort } from './helpers/spawn.js';
import { Upstream } from './helpers/upstream.js';
import { ClientPool } from './helpers/wamp-client.js';

/** Short probe and backoff so each fault converges in about a second. */
const FAST = { WAYMARK_REDIS_PROBE_MS: '200', WAYMARK_REDIS_RECONNECT_MAX_MS: '200' };
const PATHS = ['/users/1', '/users/2'];
const SESSIONS = 3;

async function startRedis(port: number): Promise<ChildProcess> {
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const probe = new Redis(port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  probe.on('error', () => undefined);
  await waitFor(`redis-server on ${port}`, async () => {
    try {
      if (probe.status !== 'ready') await probe.connect();
      return (await probe.ping()) === 'PONG';
    } catch {
      probe.disconnect();
      return false;
    }
  }, 5_000);
  probe.disconnect();
  return child;
}

function killed(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((resolve) => child.once('exit', () => resolve()));
}

describe('faults: Redis', function () {
  this.timeout(30_000);
  const redisTarget = new URL(testEnv.redisUrl);
  let api: Upstream;
  let state: VersionedApi;
  let wm: Harness | undefined;
  let proxy: FaultProxy | undefined;
  let direct: Redis;
  const pool = new ClientPool();

  beforeEach(async function () {
    state = new VersionedApi();
    api = await new Upstream().start();
    api.handler = state.handler;
    direct = new Redis(testEnv.redisUrl);
  });
  afterEach(async function () {
    await pool.closeAll();
    await wm?.close();
    wm = undefined;
    await proxy?.stop();
    proxy = undefined;
    await api.close();
    await direct.quit();
  });

  /** Set every path's next version, as the backend would before bumping. */
  const change = (version: number, paths = PATHS) => { for (const p of paths) state.set(p, version); };
  const finalState = async (watchers: Watcher[]) => {
    const want = new Map<Watcher, { status: number; body: string }>();
    for (const w of watchers) want.set(w, await apiNow(api.url, w));
    return (w: Watcher) => want.get(w)!;
  };
  const waymarkRequests = () => api.requests.filter((r) => r.headers['x-waymark'] !== undefined);
  const resyncs = async (h: Harness) => (await h.waymark.metrics.resyncs.get()).values.reduce((n, v) => n + v.value, 0);

  async function withProxy(env: Record<string, string> = {}): Promise<Harness> {
    proxy = await new FaultProxy({ host: redisTarget.hostname, port: Number(redisTarget.port || 6379) }).start();
    wm = await startWaymark(api.url, { ...FAST, WAYMARK_REDIS_URL: proxy.url(testEnv.redisUrl), ...env });
    return wm;
  }

  it('(a) blackhole: the probe notices the silent subscription, reconnects, and the refetch brings lost bumps back', async function () {
    const h = await withProxy();
    const watchers = await watchAll(pool, SESSIONS, PATHS);
    await proxy!.set('blackhole');
    change(2);
    // Published on the real Redis: it reaches Redis (and the proxy), never Waymark.
    for (const p of PATHS) await h.bump(p);
    await waitFor('the probe to notice the silence', () => !h.waymark.ready, 3_000);
    expect(await h.waymark.metrics.redisConnected.get()).to.have.nested.property('values[0].value', 0);
    await sleep(300);
    expect(watchers.every((w) => w.client.updates.length === 0), 'a bump got through the blackhole').to.equal(true);
    const want = await finalState(watchers);
    const since = Date.now();
    await proxy!.set('pass');
    const r = await converge('redis-blackhole', watchers, want, since);
    expect(r.lost).to.equal(0);
    expect(h.waymark.ready).to.equal(true);
    expect(await resyncs(h)).to.be.at.least(1);
    expect(h.logs.join('')).to.match(/redis probe not answered; reconnecting/);
  });

  it('(b) refuse + cut: reconnects with backoff, resubscribes, and the refetch converges', async function () {
    const h = await withProxy({ WAYMARK_ADMIN_PORT: String(await freePort()) });
    const admin = (path: string) => fetch(`http://127.0.0.1:${h.waymark.adminAddress!.port}${path}`);
    const watchers = await watchAll(pool, SESSIONS, PATHS);
    expect((await admin('/readyz')).status).to.equal(200);
    await proxy!.set('refuse');
    await waitFor('the subscription to drop', () => !h.waymark.ready, 3_000);
    expect((await admin('/readyz')).status).to.equal(503);
    expect(await (await admin('/metrics')).text()).to.match(/^waymark_redis_subscribed 0$/m);
    change(2);
    for (const p of PATHS) expect(await h.bump(p)).to.equal(0); // nobody subscribed: lost
    await sleep(500); // a few refused reconnect attempts
    const want = await finalState(watchers);
    const since = Date.now();
    await proxy!.set('pass');
    const r = await converge('redis-refuse', watchers, want, since);
    expect(r.lost).to.equal(0);
    expect((await admin('/readyz')).status).to.equal(200);
    expect(await (await admin('/metrics')).text()).to.match(/^waymark_redis_subscribed 1$/m).and.match(/^waymark_resyncs_total\{reason="resubscribed"\} [12]$/m);
    expect(await h.waymark.metrics.redisReconnects.get()).to.have.nested.property('values[0].value').above(1);
    // one refetch per group (2 paths x 3 tokens) through the engine; a second resync only if a
    // probe on this shared machine came back late
    const refetched = waymarkRequests().filter((r2) => r2.headers['x-waymark'] === 'resync');
    expect(refetched.length).to.be.within(PATHS.length * SESSIONS, 2 * PATHS.length * SESSIONS);
    expect(new Set(refetched.map((r2) => `${r2.path} ${r2.headers.authorization}`)).size).to.equal(PATHS.length * SESSIONS);
  });

  it('(b2) a cut alone: reconnects at once and converges', async function () {
    const h = await withProxy();
    const watchers = await watchAll(pool, SESSIONS, PATHS);
    change(2);
    proxy!.cut();
    for (const p of PATHS) await h.bump(p);
    const want = await finalState(watchers);
    const r = await converge('redis-cut', watchers, want, Date.now());
    expect(r.lost).to.equal(0);
  });

  it('(c) kill -9 of Redis and a restart on the same port: converges', async function () {
    const port = await freePort();
    let server = await startRedis(port);
    const url = `redis://127.0.0.1:${port}`;
    const own = new Redis(url, { maxRetriesPerRequest: 0, retryStrategy: () => 100, enableOfflineQueue: false });
    own.on('error', () => undefined);
    try {
      wm = await startWaymark(api.url, { ...FAST, WAYMARK_REDIS_URL: url });
      const h = wm;
      const watchers = await watchAll(pool, SESSIONS, PATHS);
      server.kill('SIGKILL');
      await killed(server);
      await waitFor('the subscription to drop', () => !h.waymark.ready, 3_000);
      change(2);
      // The backend's bump fails: Redis is gone. Lost for good, unless Waymark refetches.
      const published = await own.publish(h.channel, PATHS[0]).then(() => true, () => false);
      expect(published).to.equal(false);
      const want = await finalState(watchers);
      const since = Date.now();
      server = await startRedis(port);
      const r = await converge('redis-kill9-restart', watchers, want, since);
      expect(r.lost).to.equal(0);
      expect(h.waymark.ready).to.equal(true);
    } finally {
      own.disconnect();
      server.kill('SIGKILL');
      await killed(server);
    }
  });

  describe('stream mode', function () {
    let stream: string;
    beforeEach(() => { stream = randomChannel(); });
    afterEach(async () => { await direct.del(stream, `${stream}:waymark:last:default`); });

    const xadd = (path: string) => direct.xadd(stream, '*', 'bump', path);

    it('(d) reads bumps written during an outage from the last id, with no full refetch', async function () {
      const h = await withProxy({ WAYMARK_BUMP_STREAM: stream });
      const watchers = await watchAll(pool, SESSIONS, PATHS);
      // A bump before the outage moves the last id.
      change(2, [PATHS[0]]);
      await xadd(PATHS[0]);
      await waitFor('the first bump', () => watchers.filter((w) => w.path === PATHS[0]).every((w) => w.client.updates.some((u) => u.watch === w.watch)), 3_000);
      await proxy!.set('refuse');
      await waitFor('the reader to drop', () => !h.waymark.ready, 3_000);
      change(3, [PATHS[0]]);
      await xadd(PATHS[0]);
      await sleep(300);
      const before = waymarkRequests().length;
      const want = await finalState(watchers);
      const since = Date.now();
      await proxy!.set('pass');
      const r = await converge('stream-outage', watchers, want, since);
      expect(r.lost).to.equal(0);
      await sleep(100);
      const after = waymarkRequests().slice(before);
      // Only the bumped path was fetched (once per token): read from the last id, not refetched.
      expect(after.map((x) => x.path)).to.deep.equal(Array(SESSIONS).fill(PATHS[0]));
      expect(await resyncs(h)).to.equal(0);
      expect(await direct.get(`${stream}:waymark:last:default`)).to.match(/^\d+-\d+$/);
    });

    it('(d) a blackholed reader is noticed by the XREAD deadline, and reads what it missed', async function () {
      const h = await withProxy({ WAYMARK_BUMP_STREAM: stream });
      const watchers = await watchAll(pool, SESSIONS, PATHS);
      await proxy!.set('blackhole');
      change(2);
      for (const p of PATHS) await xadd(p);
      await waitFor('the read deadline to notice the silence', () => !h.waymark.ready, 3_000);
      const want = await finalState(watchers);
      const since = Date.now();
      await proxy!.set('pass');
      const r = await converge('stream-blackhole', watchers, want, since);
      expect(r.lost).to.equal(0);
      expect(await resyncs(h)).to.equal(0);
    });

    it('(d) falls back to a full refetch when the entries after the last id were trimmed', async function () {
      const h = await withProxy({ WAYMARK_BUMP_STREAM: stream });
      const watchers = await watchAll(pool, SESSIONS, PATHS);
      await xadd('/unwatched');
      await sleep(300);
      await proxy!.set('refuse');
      await waitFor('the reader to drop', () => !h.waymark.ready, 3_000);
      change(2);
      for (const p of PATHS) await xadd(p);
      await direct.xtrim(stream, 'MAXLEN', 0); // a backlog trimmed away before Waymark read it
      const want = await finalState(watchers);
      const since = Date.now();
      await proxy!.set('pass');
      const r = await converge('stream-trimmed', watchers, want, since);
      expect(r.lost).to.equal(0);
      expect(await resyncs(h)).to.equal(1);
      expect(h.logs.join('')).to.match(/"reason":"trimmed"/);
    });
  });
});
