import { expect } from 'chai';
import type { IncomingMessage, ServerResponse } from 'node:http';
import v8 from 'node:v8';
import vm from 'node:vm';
import { CircuitBreakerFetcher } from '../lib/engine/circuit-breaker.js';
import { Dispatcher } from '../lib/engine/dispatcher.js';
import { UndiciFetcher } from '../lib/engine/fetcher.js';
import { WatchRegistry } from '../lib/engine/watch-registry.js';
import { silentLogger } from '../lib/support/logger.js';
import { Metrics } from '../lib/support/metrics.js';
import type { Update, WatchResult } from '../lib/protocol/types.js';
import { PROC_REFRESH, PROC_WATCH } from '../lib/protocol/uris.js';
import { sleep, waitFor } from './helpers/env.js';
import { converge, lastUpdate, VersionedApi, watchAll, type Watcher } from './helpers/convergence.js';
import { FaultProxy } from './helpers/fault-proxy.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { Upstream } from './helpers/upstream.js';
import { ClientPool, type Client } from './helpers/wamp-client.js';

/** Short timeouts and cool-down so each fault converges in about a second. */
const FAST = { WAYMARK_FETCH_TIMEOUT_MS: '300', WAYMARK_BREAKER_FAILURES: '3', WAYMARK_BREAKER_COOLDOWN_MS: '400' };

const engine = (h: Harness) => h.waymark as unknown as { dispatcher: Dispatcher; registry: WatchRegistry };
const sum = async (m: { get(): Promise<{ values: Array<{ value: number }> }> }) => (await m.get()).values.reduce((n, v) => n + v.value, 0);
const tokenOf = (req: IncomingMessage) => /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
const bumpWithId = (h: Harness, path: string, id: string) => h.bump(JSON.stringify({ path, id }));

describe('faults: engine', function () {
  this.timeout(30_000);
  let wm: Harness | undefined;
  let api: Upstream;
  let state: VersionedApi;
  const pool = new ClientPool();
  beforeEach(async function () {
    state = new VersionedApi();
    api = await new Upstream().start();
    api.handler = state.handler;
  });
  afterEach(async function () {
    await pool.closeAll();
    await wm?.close();
    wm = undefined;
    await api.close();
  });
  /** Every watcher's last Update is the API's 200 for its token at `version`. */
  const at = (version: number) => (w: Watcher) => ({ status: 200, body: JSON.stringify({ path: w.path, token: w.token, version }) });

  describe('a watch converges to the API state after any single failed fetch (issue 10 fault 1)', function () {
    it('a socket reset on the requests of one bump, the API healthy otherwise: retried without a further bump', async function () {
      const h = wm = await startWaymark(api.url, FAST);
      const watchers = await watchAll(pool, 2, ['/users/1']);
      let resets = 0;
      api.handler = (req, res) => {
        // the first two requests of this bump: past a fresh-connection retry of a reset, if any
        if (req.headers['x-waymark'] === 'b-reset' && resets < 2) {
          resets += 1;
          req.socket.destroy();
          return;
        }
        state.handler(req, res);
      };
      state.set('/users/1', 2);
      const since = Date.now();
      await bumpWithId(h, '/users/1', 'b-reset');
      const r = await converge('api-reset-one-request', watchers, at(2), since, 5_000);
      expect(resets).to.equal(2);
      expect(r.lost).to.equal(0);
      // the retry carries the bump id again (the API may skip side effects), and no bump followed
      expect(api.requests.filter((q) => q.headers['x-waymark'] === 'b-reset').length).to.be.at.least(3);
      expect(await sum(h.waymark.metrics.breakerRejected)).to.equal(0);
    });

    it('a body cut mid-way (headers sent, then the socket reset): retried, never the partial body', async function () {
      const h = wm = await startWaymark(api.url, FAST);
      const watchers = await watchAll(pool, 1, ['/users/1']);
      let cut = 0;
      api.handler = (req, res) => {
        if (req.headers['x-waymark'] === 'b-cut' && cut++ === 0) {
          res.writeHead(200, { 'content-type': 'application/json', 'content-length': '200' });
          res.write('{"partial":');
          setTimeout(() => req.socket.destroy(), 20);
          return;
        }
        state.handler(req, res);
      };
      state.set('/users/1', 2);
      const since = Date.now();
      await bumpWithId(h, '/users/1', 'b-cut');
      const r = await converge('api-body-cut', watchers, at(2), since, 5_000);
      expect(r.lost).to.equal(0);
      expect(watchers[0].client.updates.some((u) => u.body.includes('partial'))).to.equal(false);
    });

    it('one request hanging past WAYMARK_FETCH_TIMEOUT_MS: the watcher sees `timeout`, then the API state', async function () {
      const h = wm = await startWaymark(api.url, FAST);
      const watchers = await watchAll(pool, 1, ['/users/1']);
      let hung = 0;
      const held: ServerResponse[] = [];
      api.handler = (req, res) => {
        if (req.headers['x-waymark'] === 'b-hang' && hung++ === 0) {
          held.push(res); // never answered
          return;
        }
        state.handler(req, res);
      };
      state.set('/users/1', 2);
      const since = Date.now();
      await bumpWithId(h, '/users/1', 'b-hang');
      await waitFor('the timeout Update', () => lastUpdate(watchers[0])?.error?.code === 'timeout', 3_000);
      const r = await converge('api-hang-one-request', watchers, at(2), since, 5_000);
      expect(r.lost).to.equal(0);
      const seen = watchers[0].client.updates.map((u) => u.status);
      expect(seen).to.deep.equal([0, 200]);
      for (const res of held) res.destroy();
    });

    it('new credentials through waymark.refresh while a watch is on an error: refetched with them, no bump', async function () {
      const h = wm = await startWaymark(api.url, FAST);
      api.handler = (req, res) => {
        if (tokenOf(req) === 'token-0') res.writeHead(503, { 'content-type': 'application/json' }).end('{"error":"try later"}');
        else state.handler(req, res);
      };
      const [w] = await watchAll(pool, 1, ['/users/1']);
      expect(w.snapshot!.status).to.equal(503);
      await w.client.call(PROC_REFRESH, [{ token: 'token-new' }]);
      w.token = 'token-new';
      const r = await converge('refresh-while-failing', [w], at(1), Date.now(), 3_000);
      expect(r.lost).to.equal(0);
    });

    it('connections refused for a while, then accepted again: every watch converges with no further bump', async function () {
      const target = new URL(api.url);
      const proxy = await new FaultProxy({ host: target.hostname, port: Number(target.port) }).start();
      try {
        const h = wm = await startWaymark(`http://127.0.0.1:${proxy.port}`, FAST);
        // two groups: fewer failures than open the breaker, whose probe used to be the only way back
        const watchers = await watchAll(pool, 2, ['/users/1']);
        await proxy.set('refuse');
        state.set('/users/1', 2);
        await h.bump('/users/1');
        await waitFor('an unreachable Update on every watch', () => watchers.every((w) => lastUpdate(w)?.error?.code === 'unreachable'), 3_000);
        await sleep(1_000);
        const since = Date.now();
        await proxy.set('pass');
        const r = await converge('api-refused-then-back', watchers, at(2), since, 10_000);
        expect(r.lost).to.equal(0);
      } finally {
        await proxy.stop();
      }
    });
  });

  describe("one tenant's failures are not everyone's outage (issue 10 fault 4, issue 16 faults 3 and 8)", function () {
    const BAD = Array.from({ length: 5 }, (_, i) => `/bad/${i}`);
    const anonymousWatch = async (client: Client, paths: string[], snapshot: boolean) => {
      for (const p of paths) await client.call<WatchResult>(PROC_WATCH, [p, { snapshot }]);
    };

    it('5 paths answering 500 to one anonymous session: another session still gets its Updates after bumps', async function () {
      const h = wm = await startWaymark(api.url, FAST);
      api.handler = (req, res) => {
        if (req.url?.startsWith('/bad/')) res.writeHead(500, { 'content-type': 'application/json' }).end('{"error":"boom"}');
        else state.handler(req, res);
      };
      const [other] = await watchAll(pool, 1, ['/feed']);
      const tenant = await pool.open();
      await anonymousWatch(tenant, BAD, true);
      for (let round = 2; round <= 4; round++) {
        for (const p of BAD) await h.bump(p);
        await waitFor('the 500s fetched again', () => api.requests.filter((q) => q.path.startsWith('/bad/')).length >= 5 * round, 3_000);
        state.set('/feed', round);
        await h.bump('/feed');
        await waitFor(`version ${round} on the other session`, () => JSON.parse(lastUpdate(other)?.body || '{}').version === round, 3_000);
        expect(lastUpdate(other)!.status).to.equal(200);
      }
      expect(await sum(h.waymark.metrics.breakerRejected)).to.equal(0);
      expect(tenant.updates.every((u) => u.status === 500)).to.equal(true);
    });

    it('5 paths that never answer (timeouts) to one session: another session still gets its Updates at once', async function () {
      const h = wm = await startWaymark(api.url, FAST);
      const held: ServerResponse[] = [];
      api.handler = (req, res) => {
        if (req.url?.startsWith('/bad/')) held.push(res);
        else state.handler(req, res);
      };
      const [other] = await watchAll(pool, 1, ['/feed']);
      const tenant = await pool.open();
      await anonymousWatch(tenant, BAD, false);
      for (const p of BAD) await h.bump(p);
      await waitFor('a timeout on each bad path', () => tenant.updates.filter((u) => u.error?.code === 'timeout').length >= 5, 3_000);
      await sleep(400); // their retries time out too
      state.set('/feed', 2);
      const since = Date.now();
      await h.bump('/feed');
      await waitFor('version 2 on the other session', () => JSON.parse(lastUpdate(other)?.body || '{}').version === 2, 3_000);
      console.log(`      tenant-timeouts: other session's Update after ${Date.now() - since} ms`);
      expect(await sum(h.waymark.metrics.breakerRejected)).to.equal(0);
      for (const res of held) res.destroy();
    });

    it('one session with several tokens on paths that reset the connection cannot open the breaker for everyone', async function () {
      const h = wm = await startWaymark(api.url, { ...FAST, WAYMARK_BREAKER_COOLDOWN_MS: '500' });
      api.handler = (req, res) => {
        if (req.url?.startsWith('/bad/')) req.socket.destroy();
        else state.handler(req, res);
      };
      const [other] = await watchAll(pool, 1, ['/feed']);
      const tenant = await pool.open();
      // alternating tokens: "failures from two credentials" alone would count these
      for (const [i, p] of [...BAD, '/bad/5'].entries()) await tenant.call<WatchResult>(PROC_WATCH, [p, { token: i % 2 ? 'a' : 'b', snapshot: true }]);
      const hits: number[] = [];
      for (let round = 2; round <= 5; round++) {
        for (const p of BAD) await h.bump(p);
        await sleep(100);
        const before = api.requests.filter((q) => q.path === '/feed').length;
        state.set('/feed', round);
        await h.bump('/feed');
        await waitFor(`version ${round} on the other session`, () => JSON.parse(lastUpdate(other)?.body || '{}').version === round, 3_000);
        hits.push(api.requests.filter((q) => q.path === '/feed').length - before);
      }
      console.log(`      tenant-resets, 2 tokens: /feed requests reaching the API per bump ${hits.join(' ')}, failed fast ${await sum(h.waymark.metrics.breakerRejected)}`);
      expect(hits.every((n) => n >= 1)).to.equal(true);
      expect(lastUpdate(other)!.status).to.equal(200);
    });

    it('credentials that are not valid field values (tok-\u2713) never reach undici nor the breaker: a valid watch still gets its answer', async function () {
      // The dispatcher with the component's fetch stack, fed by the registry directly: watch-time
      // validation (issue 16 fault 8) would refuse these tokens before they got here.
      const registry = new WatchRegistry(1000);
      const http = new UndiciFetcher({ apiUrl: api.url, responseHeaders: [], maxBodyBytes: 10_000, timeoutMs: 300, connections: 4 });
      const breaker = new CircuitBreakerFetcher(http, { failures: 3, minCredentials: 2, cooldownMs: 10_000, origin: () => 'o', logger: silentLogger() });
      const published: Update[] = [];
      const dispatcher = new Dispatcher({
        registry, fetcher: breaker, publisher: { publish: async (_s, u) => { published.push(u); } }, logger: silentLogger(), metrics: new Metrics(),
        concurrency: 4, pushUnchanged: false,
      });
      try {
        for (let s = 0; s < 20; s++) registry.upsert(s, '/feed', { authorization: `Bearer tok-\u2713${s}` });
        registry.upsert(99, '/feed', { authorization: 'Bearer fine' });
        state.set('/feed', 2);
        await dispatcher.dispatch({ id: 'b1', paths: ['/feed'], at: Date.now() });
        await dispatcher.dispatch({ id: 'b2', paths: ['/feed'], at: Date.now() });
        expect(breaker.state('o')).to.equal('closed');
        expect(api.requests.map((q) => q.headers.authorization)).to.deep.equal(['Bearer fine', 'Bearer fine']);
        const fine = published.filter((u) => u.status === 200);
        expect(fine.map((u) => JSON.parse(u.body).token)).to.deep.equal(['fine']);
        expect(published.filter((u) => u.status === 0 && /not valid HTTP field values/.test(u.error!.message))).to.have.length(20);
      } finally {
        await breaker.close();
      }
    });

    it('a 429 with Retry-After: 30 for one token: another user on the same path gets the change at once, the paused token costs no request', async function () {
      const h = wm = await startWaymark(api.url, FAST);
      api.handler = (req, res) => {
        if (tokenOf(req) === 'token-0') res.writeHead(429, { 'retry-after': '30', 'content-type': 'application/json' }).end('{"error":"slow down"}');
        else state.handler(req, res);
      };
      const watchers = await watchAll(pool, 2, ['/feed']);
      const [limited, other] = watchers;
      state.set('/feed', 2);
      await h.bump('/feed');
      await waitFor('the 429 Update', () => lastUpdate(limited)?.status === 429, 3_000);
      await waitFor('version 2', () => JSON.parse(lastUpdate(other)?.body || '{}').version === 2, 3_000);
      const limitedRequests = () => api.requests.filter((q) => q.headers.authorization === 'Bearer token-0').length;
      const before = limitedRequests();
      state.set('/feed', 3);
      const since = Date.now();
      await h.bump('/feed');
      await waitFor('version 3', () => JSON.parse(lastUpdate(other)?.body || '{}').version === 3, 3_000);
      const ms = Date.now() - since;
      console.log(`      429-one-token: other user's change after ${ms} ms`);
      expect(ms).to.be.below(1_000);
      await sleep(200);
      expect(limitedRequests(), 'requests with the paused token').to.equal(before);
      expect(h.logs.join('')).to.match(/API asked to back off.*"retryAfterMs":30000/);
    });

    it('a 429 with an HTTP-date Retry-After pauses that token until the date (read against the API Date), then it converges with no bump', async function () {
      const h = wm = await startWaymark(api.url, FAST);
      let limitedUntil = 0;
      api.handler = (req, res) => {
        if (tokenOf(req) === 'token-0' && Date.now() < limitedUntil) {
          const now = new Date();
          // 2 s ahead in whole seconds, as an IMF-fixdate (RFC 9110 5.6.7); Date goes with it
          res.writeHead(429, { date: now.toUTCString(), 'retry-after': new Date(now.getTime() + 2_000).toUTCString() }).end();
          return;
        }
        state.handler(req, res);
      };
      const watchers = await watchAll(pool, 2, ['/feed']);
      const [limited, other] = watchers;
      limitedUntil = Date.now() + 1_000;
      state.set('/feed', 2);
      const since = Date.now();
      await h.bump('/feed');
      await waitFor('the 429 Update', () => lastUpdate(limited)?.status === 429, 3_000);
      await waitFor('version 2 for the other user', () => JSON.parse(lastUpdate(other)?.body || '{}').version === 2, 1_000);
      const r = await converge('api-429-http-date', watchers, at(2), since, 6_000);
      expect(r.lost).to.equal(0);
      // the retry waited for the date: 2 s in whole seconds, never the 30 s clamp nor at once
      expect(r.convergeMs).to.be.within(1_000, 4_000);
    });
  });

  describe('revalidation never leaves a watcher staler than the API (issue 10 fault 5)', function () {
    /** An API whose only validator is Last-Modified (1 s resolution) and that honours If-Modified-Since. */
    const lastModifiedApi = (changedAt: Map<string, number>) => (req: IncomingMessage, res: ServerResponse) => {
      const path = req.url ?? '/';
      const lm = Math.floor((changedAt.get(path) ?? 0) / 1000) * 1000;
      const ims = Date.parse(String(req.headers['if-modified-since'] ?? ''));
      if (!Number.isNaN(ims) && lm <= ims) {
        res.writeHead(304, { 'last-modified': new Date(lm).toUTCString() }).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json', 'last-modified': new Date(lm).toUTCString() }).end(state.body(path, tokenOf(req)));
    };

    it('change, bump, change again in the same second, bump: the watcher ends on the second change', async function () {
      const h = wm = await startWaymark(api.url, FAST);
      const changedAt = new Map<string, number>();
      api.handler = lastModifiedApi(changedAt);
      const watchers = await watchAll(pool, 1, ['/doc']);
      await waitFor('the start of a second', () => Date.now() % 1000 < 200, 2_000);
      state.set('/doc', 2);
      changedAt.set('/doc', Date.now());
      await h.bump('/doc');
      await waitFor('version 2', () => JSON.parse(lastUpdate(watchers[0])?.body || '{}').version === 2, 2_000);
      state.set('/doc', 3);
      changedAt.set('/doc', Date.now());
      const since = Date.now();
      await h.bump('/doc');
      const r = await converge('last-modified-same-second', watchers, at(3), since, 3_000);
      expect(r.lost).to.equal(0);
      expect(Math.floor(since / 1000)).to.equal(Math.floor(changedAt.get('/doc')! / 1000));
    });

    it('still revalidates with a Last-Modified the response Date shows is strong (>= 1 s older)', async function () {
      const h = wm = await startWaymark(api.url, FAST);
      const changedAt = new Map([['/doc', Date.now() - 5_000]]);
      api.handler = lastModifiedApi(changedAt);
      await watchAll(pool, 1, ['/doc']);
      await h.bump('/doc');
      await waitFor('the bump fetch', () => api.requestsFor('/doc').length >= 2, 2_000);
      await sleep(50);
      await h.bump('/doc');
      await waitFor('the second bump fetch', () => api.requestsFor('/doc').length >= 3, 2_000);
      expect(api.requestsFor('/doc')[2].headers['if-modified-since']).to.equal(new Date(Math.floor(changedAt.get('/doc')! / 1000) * 1000).toUTCString());
    });
  });

  describe('WAYMARK_PUSH_UNCHANGED=true with an ETag API (issue 10 fault 6)', function () {
    it('three bumps give three Updates: each 304 as the held 200, its headers freshened (RFC 9111 4.3.4)', async function () {
      const h = wm = await startWaymark(api.url, { ...FAST, WAYMARK_PUSH_UNCHANGED: 'true' });
      let served = 0;
      api.handler = (req, res) => {
        served += 1;
        const headers = { etag: '"v1"', 'cache-control': `max-age=${served}` };
        if (req.headers['if-none-match'] === '"v1"') res.writeHead(304, headers).end();
        else res.writeHead(200, { ...headers, 'content-type': 'application/json' }).end('{"v":1}');
      };
      const [w] = await watchAll(pool, 1, ['/items']);
      // one at a time: bumps that arrive while a fetch runs coalesce into one follow-up (by design)
      for (let i = 1; i <= 3; i++) {
        await h.bump('/items');
        await w.client.waitForUpdates(i, 3_000);
      }
      const updates = w.client.updates;
      await sleep(100);
      expect(w.client.updates).to.have.length(3);
      expect(api.requestsFor('/items').slice(2).map((q) => q.headers['if-none-match'])).to.deep.equal(['"v1"', '"v1"']);
      expect(updates.map((u: Update) => [u.status, u.body, u.headers['content-type'], u.headers['cache-control']])).to.deep.equal([
        [200, '{"v":1}', 'application/json', 'max-age=2'],
        [200, '{"v":1}', 'application/json', 'max-age=3'],
        [200, '{"v":1}', 'application/json', 'max-age=4'],
      ]);
    });
  });

  describe('memory follows live watches (issue 16 fault 5)', function () {
    it('soak: sessions churn and rotate tokens through waymark.refresh; groups return to 0 and the heap levels off', async function () {
      const SESSIONS = 5;
      const PATHS = Array.from({ length: 100 }, (_, i) => `/soak/${i}`);
      this.timeout(60_000); // 3-20 s, with the machine's load
      const ROUNDS = 4;
      const h = wm = await startWaymark(api.url, { WAYMARK_RATE_BURST: '1000', WAYMARK_LOG_LEVEL: 'info' });
      const { dispatcher, registry } = engine(h);
      v8.setFlagsFromString('--expose-gc');
      const gc = vm.runInNewContext('gc') as () => void;
      const heap = () => {
        gc();
        gc();
        return process.memoryUsage().heapUsed;
      };
      const heaps: number[] = [];
      let maxGroups = 0;
      for (let round = 0; round < ROUNDS; round++) {
        // the recorders' memory is not Waymark's
        api.requests.length = 0;
        h.logs.length = 0;
        const clients = await Promise.all(Array.from({ length: SESSIONS }, () => pool.open()));
        await Promise.all(clients.map((c, s) => Promise.all(PATHS.map((p) => c.call(PROC_WATCH, [p, { token: `r${round}-s${s}-a` }])))));
        await h.bump(JSON.stringify({ paths: PATHS }));
        await waitFor('the first fetch of every group', () => dispatcher.busy === 0 && api.requests.length >= SESSIONS * PATHS.length, 10_000);
        maxGroups = Math.max(maxGroups, dispatcher.groupCount);
        // token rotation: every watch moves to a new (path, credentials) group
        await Promise.all(clients.map((c, s) => c.call(PROC_REFRESH, [{ token: `r${round}-s${s}-b` }])));
        await h.bump(JSON.stringify({ paths: PATHS }));
        await waitFor('the fetch with the new tokens', () => dispatcher.busy === 0 && api.requests.length >= 2 * SESSIONS * PATHS.length, 10_000);
        maxGroups = Math.max(maxGroups, dispatcher.groupCount);
        await pool.closeAll();
        await waitFor('every session gone', () => registry.size === 0, 5_000);
        await waitFor('every group dropped', () => dispatcher.groupCount === 0 && dispatcher.busy === 0, 2_000);
        heaps.push(heap());
      }
      const mb = (n: number) => (n / 1048576).toFixed(2);
      console.log(`      soak: rounds=${ROUNDS} watches_per_round=${SESSIONS * PATHS.length} max_groups=${maxGroups} groups_after=${dispatcher.groupCount} heap_mb=${heaps.map(mb).join(',')}`);
      expect(maxGroups).to.be.at.most(SESSIONS * PATHS.length);
      expect(dispatcher.groupCount).to.equal(0);
      // levels off: the last rounds hold no more than the second did, give or take GC noise
      expect(heaps[ROUNDS - 1] - heaps[1], 'heap growth from round 2 to the last').to.be.below(1.5 * 1048576);
    });
  });
});
