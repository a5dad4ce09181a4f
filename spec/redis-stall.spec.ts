import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { Redis } from 'ioredis';
import { INDEX_DEADLINE_MS } from '../lib/cluster/instances.js';
import { PROC_REFRESH, PROC_UNWATCH, PROC_WATCH } from '../lib/protocol/uris.js';
import { sleep, testEnv, waitFor } from './helpers/env.js';
import { FaultProxy, type FaultMode } from './helpers/fault-proxy.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { freePort } from './helpers/spawn.js';
import { Upstream } from './helpers/upstream.js';
import { ClientPool, type Client } from './helpers/wamp-client.js';

/** Answer time of one call in ms, and what it answered (the error URI if it failed). */
async function timed(c: Client, proc: string, args: unknown[]): Promise<{ ms: number; answer: string }> {
  const t = performance.now();
  const answer = await c.call(proc, args).then((r) => JSON.stringify(r), (e: { error?: string }) => e.error ?? String(e));
  return { ms: Math.round(performance.now() - t), answer };
}

describe('a silent or slow Redis (issue 16 faults 2 and 4)', function () {
  this.timeout(30_000);
  const redisTarget = new URL(testEnv.redisUrl);
  let api: Upstream;
  let proxy: FaultProxy;
  const harnesses: Harness[] = [];
  const pool = new ClientPool();

  beforeEach(async () => {
    api = await new Upstream().start();
    api.handler = (req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end(`${req.url} n=${api.requests.length}`);
    proxy = await new FaultProxy({ host: redisTarget.hostname, port: Number(redisTarget.port || 6379) }).start();
  });
  afterEach(async () => {
    await pool.closeAll();
    await proxy.set('pass');
    await Promise.all(harnesses.splice(0).map((h) => h.close()));
    await proxy.stop();
    await api.close();
  });

  const start = async (env: Record<string, string> = {}) => {
    const h = await startWaymark(api.url, { WAYMARK_REDIS_URL: proxy.url(testEnv.redisUrl), ...env });
    harnesses.push(h);
    return h;
  };

  for (const [mode, delayMs, label] of [['blackhole', 0, 'silent (blackhole)'], ['delay', 5_000, 'slow (5 s per reply)']] as Array<[FaultMode, number, string]>) {
    it(`watch, refresh and unwatch answer in bounded time while Redis is ${label}, on two instances`, async function () {
      const a = await start();
      // a second instance of the same service: calls now also take the shared rate bucket
      const b = await start({ WAYMARK_BUMP_CHANNEL: a.channel });
      await waitFor('the instances to see each other', async () =>
        (await a.waymark.metrics.peers.get()).values[0]?.value === 1 && (await b.waymark.metrics.peers.get()).values[0]?.value === 1);
      const c = await pool.open();
      const before = await timed(c, PROC_WATCH, ['/before', { token: 't' }]);
      await proxy.set(mode, delayMs);
      const calls: Array<[string, string, unknown[]]> = [
        ['watch', PROC_WATCH, ['/a', { token: 't' }]],
        ['watch', PROC_WATCH, ['/b', { token: 't' }]],
        ['refresh', PROC_REFRESH, [{ token: 'u' }]],
        ['unwatch', PROC_UNWATCH, ['/a']],
        ['watch', PROC_WATCH, ['/c', { token: 'u', snapshot: true }]],
        ['unwatch', PROC_UNWATCH, ['/before']],
      ];
      const results: Array<{ name: string; ms: number; answer: string }> = [];
      for (const [name, proc, args] of calls) results.push({ name, ...(await timed(c, proc, args)) });
      console.log(`      redis ${label}: deadline ${INDEX_DEADLINE_MS} ms; healthy watch ${before.ms} ms; stalled: ${results.map((r) => `${r.name} ${r.ms} ms`).join(', ')}`);
      for (const r of results) {
        expect(r.answer, `${r.name} answered an error`).not.to.match(/^waymark\.error|^wamp\.error/);
        expect(r.ms, `${r.name} took ${r.ms} ms`).to.be.below(2_000);
      }
      // the index was skipped, the watches were kept: /b and /c live (on whichever instance served them)
      await waitFor('the watches to settle', () => a.waymark.registry.size + b.waymark.registry.size === 2);
      expect(results.find((r) => r.name === 'watch' && r.answer.includes('"/c"'))?.answer).to.include('"status":200');
    });
  }

  it('watch, refresh and unwatch answer in bounded time while redis-server is SIGSTOPped', async function () {
    const port = await freePort();
    const server: ChildProcess = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    const exited = new Promise((resolve) => server.once('exit', resolve));
    try {
      const probe = new Redis(port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      probe.on('error', () => undefined);
      await waitFor('redis-server to answer', async () => {
        try {
          if (probe.status !== 'ready') await probe.connect();
          return (await probe.ping()) === 'PONG';
        } catch {
          probe.disconnect();
          return false;
        }
      });
      probe.disconnect();
      const url = `redis://127.0.0.1:${port}`;
      const a = await start({ WAYMARK_REDIS_URL: url });
      const b = await start({ WAYMARK_REDIS_URL: url, WAYMARK_BUMP_CHANNEL: a.channel });
      await waitFor('the instances to see each other', async () => (await b.waymark.metrics.peers.get()).values[0]?.value === 1);
      const c = await pool.open();
      server.kill('SIGSTOP');
      const results: Array<{ name: string; ms: number; answer: string }> = [];
      for (const [name, proc, args] of [
        ['watch', PROC_WATCH, ['/a', { token: 't' }]], ['watch', PROC_WATCH, ['/b', { token: 't' }]], ['refresh', PROC_REFRESH, [{ token: 'u' }]],
        ['unwatch', PROC_UNWATCH, ['/a']],
      ] as Array<[string, string, unknown[]]>) results.push({ name, ...(await timed(c, proc, args)) });
      console.log(`      redis-server SIGSTOPped: ${results.map((r) => `${r.name} ${r.ms} ms`).join(', ')}`);
      for (const r of results) {
        expect(r.answer, `${r.name} answered an error`).not.to.match(/^waymark\.error|^wamp\.error/);
        expect(r.ms, `${r.name} took ${r.ms} ms`).to.be.below(2_000);
      }
    } finally {
      server.kill('SIGCONT');
      await Promise.all(harnesses.splice(0).map((h) => h.close()));
      server.kill('SIGKILL');
      await exited;
    }
  });

  it('a session that leaves while its watch waits for a slow Redis leaves no watch behind', async function () {
    const adminPort = await freePort();
    const h = await start({ WAYMARK_ADMIN_PORT: String(adminPort) });
    const metric = async (name: string) => {
      const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
      return Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(text)?.[1]);
    };
    const live = await pool.open();
    await live.call(PROC_WATCH, ['/live', { token: 'alive' }]);
    await proxy.set('delay', 1_000); // each Redis reply about 2 s late
    const tab = await pool.open();
    const tabId = tab.id;
    // autobahn never settles a call of a closed session: note the outcome, do not await it
    let outcome = 'never answered (the session is gone)';
    void tab.call(PROC_WATCH, ['/orphan', { token: 'dead' }]).then(() => { outcome = 'answered'; }, (e: { error?: string }) => { outcome = `failed ${e.error}`; });
    await sleep(300);
    await tab.close();
    // every await of that call has settled by now (the claim's reply comes after about 2 s)
    await sleep(2_500);
    await proxy.set('pass');
    const tabWatches = h.waymark.registry.forSession(tabId).length;
    const watches = await metric('waymark_watches');
    const sessions = await metric('waymark_sessions');
    await h.bump(JSON.stringify({ paths: ['/orphan', '/live'] }));
    await live.waitForUpdates(1, 5_000);
    await sleep(100);
    const orphanFetches = api.requests.filter((r) => r.path === '/orphan').length;
    console.log(`      leave during a watch call (Redis 1 s each way, leave after 300 ms): the call ${outcome}; watches of the gone session ${tabWatches}; waymark_watches ${watches}, waymark_sessions ${sessions} (the other session's 1); API requests for its path after a bump ${orphanFetches}`);
    expect(tabWatches).to.equal(0);
    expect(watches).to.equal(1);
    expect(sessions).to.equal(1);
    expect(orphanFetches).to.equal(0);
  });
});
