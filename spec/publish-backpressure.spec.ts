import { expect } from 'chai';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { fork, type ChildProcess } from 'node:child_process';
import type { Update, WatchResult } from '../lib/protocol/types.js';
import { PROC_WATCH } from '../lib/protocol/uris.js';
import { UpdateJsonSerializer, type Publisher } from '../lib/engine/publisher.js';
import { Dispatcher } from '../lib/engine/dispatcher.js';
import type { Fetcher } from '../lib/engine/fetcher.js';
import { WatchRegistry } from '../lib/engine/watch-registry.js';
import { silentLogger } from '../lib/support/logger.js';
import { Metrics } from '../lib/support/metrics.js';
import type { FetchRequest, FetchResult } from '../lib/protocol/types.js';
import { sleep, testEnv, waitFor } from './helpers/env.js';
import { FaultProxy } from './helpers/fault-proxy.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { Upstream } from './helpers/upstream.js';
import { ClientPool, type Client } from './helpers/wamp-client.js';

/**
 * Fetches never wait for the router: a fetch slot is freed when the response is read, and the
 * publishes of that result wait in the publisher (backpressure on the router socket's send
 * buffer) and for their acknowledgements without holding it. A slow router (the dev router
 * burning CPU per delivered event, as Crossbar does) therefore no longer paces the upstream
 * fetches; and a publish lost with the connection, even one still held back, is resent after
 * the rejoin.
 */
describe('publishing: fetches never wait for the router', function () {
  this.timeout(40_000);

  let router: { url: string; port: number; child: ChildProcess };
  let sharedRouterUrl: string;
  let api: Upstream;
  let wm: Harness | undefined;
  let version = 1;
  let padding = '';
  /** performance.now() of every upstream response sent */
  let answered: number[] = [];
  const pool = new ClientPool();

  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ path: req.url, token, version, padding }));
    answered.push(performance.now());
  };

  before(async function () {
    // Its own router, slow per delivered event, in a process of its own (in this one, its CPU
    // would stall the component and the API too); the clients (ClientPool) follow testEnv.routerUrl.
    const child = fork(new URL('../bench/router-proc.js', import.meta.url), [testEnv.authid, testEnv.ticket, '4000'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const url = await new Promise<string>((resolve, reject) => {
      child.once('message', (m: { url: string }) => resolve(m.url));
      child.once('exit', (code) => reject(new Error(`router process exited with ${code}`)));
    });
    router = { url, port: Number(new URL(url).port), child };
    sharedRouterUrl = testEnv.routerUrl;
    testEnv.routerUrl = router.url;
  });

  after(async function () {
    testEnv.routerUrl = sharedRouterUrl;
    const exited = new Promise((resolve) => router.child.once('exit', resolve));
    router.child.kill('SIGTERM');
    await exited;
  });

  beforeEach(async function () {
    version = 1;
    padding = '';
    answered = [];
    api = await new Upstream().start();
    api.handler = handler;
  });

  afterEach(async function () {
    await pool.closeAll();
    await wm?.close();
    wm = undefined;
    await api.close();
  });

  /** `n` browsers on one path, each with its own token (so `n` groups, one fetch each), with arrival times. */
  async function watchers(n: number, path: string): Promise<Array<{ client: Client; token: string; watch: string; arrivals: number[] }>> {
    return Promise.all(Array.from({ length: n }, async (_, i) => {
      const client = await pool.open();
      const arrivals: number[] = [];
      await client.session.subscribe(client.topic, () => { arrivals.push(performance.now()); });
      const token = `pub-${i}-${client.id}`;
      const { watch } = await client.call<WatchResult>(PROC_WATCH, [path, { token }]);
      return { client, token, watch, arrivals };
    }));
  }

  function notConverged(ws: Awaited<ReturnType<typeof watchers>>): number {
    let n = 0;
    for (const w of ws) {
      let last: Update | undefined;
      for (const u of w.client.updates) if (u.watch === w.watch) last = u;
      const body = last ? JSON.parse(last.body) as { version: number; token: string } : undefined;
      if (!body || body.version !== version || body.token !== w.token) n += 1;
    }
    return n;
  }

  it('a slow router does not pace the upstream fetches: they finish long before the last Update arrives', async function () {
    wm = await startWaymark(api.url, { WAYMARK_ROUTER_URL: router.url, WAYMARK_FETCH_CONCURRENCY: '4' });
    const n = 120;
    const ws = await watchers(n, '/slow/router');
    answered = [];
    const t0 = performance.now();
    await wm.bump('/slow/router');
    await waitFor('every Update', () => ws.every((w) => w.arrivals.length >= 1), 20_000);
    const lastFetch = Math.max(...answered) - t0;
    const arrivals = ws.map((w) => w.arrivals[0] - t0).sort((a, b) => a - b);
    const lastUpdate = arrivals[arrivals.length - 1];
    const arrivedByLastFetch = arrivals.filter((t) => t <= lastFetch).length;
    console.log(`      slow router (4000 us/event), ${n} groups, 4 fetch slots: last fetch answered at ${lastFetch.toFixed(0)} ms, last Update at ${lastUpdate.toFixed(0)} ms, ${arrivedByLastFetch}/${n} Updates arrived by the last fetch`);
    expect(answered).to.have.length(n);
    // Holding the slots until the acknowledgements, the fetches follow the router: the last one
    // is answered when nearly every Update is through (measured: 116 of 120, 594 of 610 ms).
    expect(arrivedByLastFetch).to.be.below(n / 2);
    expect(lastFetch).to.be.below(lastUpdate * 0.75);
    expect(notConverged(ws)).to.equal(0);
  });

  it('a link drop with publishes held back by backpressure loses none: they are resent after the rejoin', async function () {
    const proxy = await new FaultProxy({ host: '127.0.0.1', port: router.port }).start();
    try {
      wm = await startWaymark(api.url, { WAYMARK_ROUTER_URL: proxy.url(router.url) });
      // 60 bodies of 256 KiB: 15 MiB for a router link slowed to ~2.5 MiB/s, well over the 2 MiB
      // high-water mark and what the kernel's socket buffers absorb
      padding = 'x'.repeat(256 * 1024);
      const ws = await watchers(60, '/big/body');
      await proxy.set('delay', 25);
      version = 2;
      await wm.bump('/big/body');
      const backlog = wm.waymark.metrics.publishBacklog;
      await waitFor('publishes held back', () => backlog().waiting > 0, 10_000);
      const held = backlog().waiting;
      await proxy.set('refuse');
      await waitFor('Waymark to notice the cut', () => wm!.waymark.sessionId === undefined);
      expect(backlog()).to.deep.equal({ inFlight: 0, waiting: 0 });
      expect((await wm.waymark.metrics.publishesFailed.get()).values[0]?.value ?? 0).to.be.at.least(held);
      version = 3;
      await sleep(200);
      const t0 = Date.now();
      await proxy.set('pass');
      await waitFor('the rejoin', () => wm!.waymark.ready, 15_000);
      const until = Date.now() + 20_000;
      while (notConverged(ws) > 0 && Date.now() < until) await sleep(20);
      const lost = notConverged(ws);
      console.log(`      fault: publish-backlog-link-drop lost=${lost} converge_ms=${Date.now() - t0} (60 watches, ${held} publishes held at the cut)`);
      expect(lost).to.equal(0);
    } finally {
      await pool.closeAll();
      await wm?.close();
      wm = undefined;
      await proxy.stop();
    }
  });

  it('a graceful stop waits for the publishes held back by backpressure: every one is delivered', async function () {
    const proxy = await new FaultProxy({ host: '127.0.0.1', port: router.port }).start();
    try {
      wm = await startWaymark(api.url, { WAYMARK_ROUTER_URL: proxy.url(router.url) });
      padding = 'x'.repeat(256 * 1024);
      // 10 MiB through a link slowed to ~6 MiB/s: more than the kernel's buffers and the 2 MiB mark
      const ws = await watchers(40, '/big/stop');
      await proxy.set('delay', 10);
      version = 2;
      await wm.bump('/big/stop');
      const backlog = wm.waymark.metrics.publishBacklog;
      await waitFor('publishes held back', () => backlog().waiting > 0, 10_000);
      const held = backlog().waiting;
      const t0 = Date.now();
      await wm.close();
      const stopMs = Date.now() - t0;
      const failed = (await wm.waymark.metrics.publishesFailed.get()).values[0]?.value ?? 0;
      wm = undefined;
      // delivered to the router before the stop returned; the router forwards them right after
      await waitFor('every Update', () => notConverged(ws) === 0, 5_000).catch(() => undefined);
      console.log(`      graceful stop with ${held} publishes held: ${stopMs} ms, ${notConverged(ws)} of 40 watches without their Update, ${failed} publishes failed`);
      expect(failed).to.equal(0);
      expect(notConverged(ws)).to.equal(0);
    } finally {
      await pool.closeAll();
      await wm?.close();
      wm = undefined;
      await proxy.stop();
    }
  });
});

describe('publishing: one body escaped once per fan-out', function () {
  const update = (body: string, headers: Record<string, string> = { 'content-type': 'application/json' }): Update => ({
    watch: 'w1', path: '/p', status: 200, headers, body, encoding: 'utf8', bump: { id: 'b1', at: 1 }, fetchedAt: 2,
  });
  const publish = (id: number, u: Update, kwargs?: object) =>
    [16, id, { acknowledge: true, eligible: [id] }, `waymark.session.${id}`, [u], ...(kwargs ? [kwargs] : [])];
  const big = (s: string) => s.repeat(Math.ceil(2048 / s.length));

  it('writes exactly what JSON.stringify writes, for every kind of body and message', function () {
    const ser = new UpdateJsonSerializer();
    const bodies = [
      big('{"a":"caf\u00e9","b":"\\ \"q\" \n"}'), big('\u2028\u2029 \u0000 \u001f'), big('x\ud800y'), big('\udc00'),
      big('\u0000waymark.body\u0000'), 'short', '', big('QUJD'),
    ];
    const messages: unknown[][] = [];
    for (const [i, body] of bodies.entries()) {
      messages.push(publish(i, update(body)), publish(i + 100, update(body)), publish(i, update(body), { k: 1 }));
      // a header holding the mark's text: cannot splice, serialised whole
      messages.push(publish(i, update(body, { 'x-mark': '\u0000waymark.body\u0000' })));
    }
    messages.push([48, 7, {}, 'waymark.watch', ['/p', { token: 't' }]], [16, 8, {}, 'waymark.session.1', []], [16, 9, {}, 't', ['a', 'b']]);
    for (const m of messages) expect(ser.serialize(m)).to.equal(JSON.stringify(m));
  });
});

describe('publishing: the fetch slot and the held-back bound (dispatcher, at its own seams)', function () {
  /** Publishes settle only when the spec says; `room` resolves only when `full` is false. */
  class GatedPublisher implements Publisher {
    readonly acks: Array<() => void> = [];
    full = false;
    private readonly roomWaiters: Array<() => void> = [];
    publish(): Promise<void> {
      return new Promise((resolve) => this.acks.push(resolve));
    }
    room(): Promise<void> {
      return this.full ? new Promise((resolve) => this.roomWaiters.push(resolve)) : Promise.resolve();
    }
    makeRoom(): void {
      this.full = false;
      for (const r of this.roomWaiters.splice(0)) r();
    }
  }
  class CountingFetcher implements Fetcher {
    readonly requests: FetchRequest[] = [];
    async fetch(req: FetchRequest): Promise<FetchResult> {
      this.requests.push(req);
      await sleep(1);
      return { status: 200, headers: {}, body: `${req.path}:${req.headers.authorization ?? ''}`, encoding: 'utf8', fetchedAt: Date.now() };
    }
    async close() {}
  }
  const setup = () => {
    const registry = new WatchRegistry(100);
    const fetcher = new CountingFetcher();
    const publisher = new GatedPublisher();
    const dispatcher = new Dispatcher({ registry, fetcher, publisher, logger: silentLogger(), metrics: new Metrics(), concurrency: 1, pushUnchanged: false });
    for (let i = 0; i < 5; i++) registry.upsert(i + 1, '/slot', { authorization: `Bearer t${i}` });
    return { registry, fetcher, publisher, dispatcher };
  };

  it('frees the slot when the response is read: with 1 slot and no acknowledgement yet, every group is fetched', async function () {
    const { fetcher, publisher, dispatcher } = setup();
    const done = dispatcher.dispatch({ id: 'b1', paths: ['/slot'], at: Date.now() });
    await waitFor('all 5 fetches', () => fetcher.requests.length === 5 && publisher.acks.length === 5);
    expect(dispatcher.busy).to.equal(5); // the groups are still publishing: a drain waits for them
    for (const ack of publisher.acks) ack();
    await done;
    expect(dispatcher.busy).to.equal(0);
  });

  it('keeps the slot while the publisher has no room: no new fetch starts until it has', async function () {
    const { fetcher, publisher, dispatcher } = setup();
    publisher.full = true;
    const done = dispatcher.dispatch({ id: 'b1', paths: ['/slot'], at: Date.now() });
    await waitFor('the first fetch', () => publisher.acks.length === 1);
    await sleep(50);
    expect(fetcher.requests).to.have.length(1);
    publisher.makeRoom();
    await waitFor('the other fetches', () => fetcher.requests.length === 5 && publisher.acks.length === 5);
    for (const ack of publisher.acks) ack();
    await done;
  });
});
