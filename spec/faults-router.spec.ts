import { expect } from 'chai';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Update, WatchResult } from '../lib/protocol/types.js';
import { PROC_WATCH } from '../lib/protocol/uris.js';
import { sleep, testEnv, waitFor } from './helpers/env.js';
import { FaultProxy } from './helpers/fault-proxy.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { Upstream } from './helpers/upstream.js';
import { ClientPool, type Client } from './helpers/wamp-client.js';

/**
 * Faults between Waymark and the router, staged with the TCP fault proxy on that link only
 * (browsers reach the router directly, as they would while Waymark's own link fails). Each
 * spec changes the API's state while Waymark cannot publish, then asserts convergence: every
 * session's last Update equals the API's final state. It prints
 * `fault: <name> lost=<watches not converged> converge_ms=<from the link's return>`.
 */
describe('faults: the router link', function () {
  this.timeout(30_000);

  /** The API's state: one version for everything; bodies name the token so each session's is its own. */
  let version = 1;
  let api: Upstream;
  let proxy: FaultProxy;
  let wm: Harness | undefined;
  const pool = new ClientPool();

  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ path: req.url, token, version }));
  };
  const hitsFor = (token: string) => api.requests.filter((r) => r.headers.authorization === `Bearer ${token}`).length;

  beforeEach(async function () {
    version = 1;
    api = await new Upstream().start();
    api.handler = handler;
    const router = new URL(testEnv.routerUrl);
    proxy = await new FaultProxy({ host: router.hostname, port: Number(router.port) }).start();
  });

  afterEach(async function () {
    await pool.closeAll();
    await wm?.close();
    wm = undefined;
    await proxy.stop();
    await api.close();
  });

  /** `sessions` browsers, each watching `paths` with its own token. */
  async function watchers(sessions: number, paths: string[]): Promise<Array<{ client: Client; token: string; watches: Map<string, string> }>> {
    const out = [];
    for (let i = 0; i < sessions; i++) {
      const client = await pool.open();
      const token = `tok-${i}-${client.id}`;
      const watches = new Map<string, string>();
      for (const p of paths) watches.set((await client.call<WatchResult>(PROC_WATCH, [p, { token }])).watch, p);
      out.push({ client, token, watches });
    }
    return out;
  }

  /** Watches whose session's last Update for them is not the API's current state. */
  function notConverged(ws: Awaited<ReturnType<typeof watchers>>): number {
    let n = 0;
    for (const { client, token, watches } of ws) {
      const last = new Map<string, Update>();
      for (const u of client.updates) last.set(u.watch, u);
      for (const [id, path] of watches) {
        const u = last.get(id);
        const body = u ? JSON.parse(u.body) as { version: number; token: string; path: string } : undefined;
        if (!body || body.version !== version || body.token !== token || body.path !== path) n += 1;
      }
    }
    return n;
  }

  /** Wait until every watch converged (or the deadline); returns [lost, ms since `from`]. */
  async function converge(ws: Awaited<ReturnType<typeof watchers>>, from: number, deadlineMs = 15_000): Promise<[number, number]> {
    const until = Date.now() + deadlineMs;
    while (notConverged(ws) > 0 && Date.now() < until) await sleep(20);
    return [notConverged(ws), Date.now() - from];
  }

  const paths = ['/r/1', '/r/2', '/r/3', '/r/4', '/r/5'];
  const bumpAll = () => wm!.bump(JSON.stringify({ paths }));
  const counter = async (name: 'publishesFailed' | 'sessionsReconciled' | 'routerJoins') =>
    (await wm!.waymark.metrics[name].get()).values[0]?.value ?? 0;

  async function startBehindProxy(env: Record<string, string> = {}) {
    wm = await startWaymark(api.url, { WAYMARK_ROUTER_URL: proxy.url(testEnv.routerUrl), ...env });
    return wm;
  }

  it('cut: reconnects, registers again, refetches, and every watch converges', async function () {
    await startBehindProxy();
    const ws = await watchers(20, paths); // 100 watches
    await bumpAll();
    expect((await converge(ws, Date.now(), 5_000))[0]).to.equal(0);
    const firstSession = wm!.waymark.sessionId;

    // The link resets, and stays refused for a while: autobahn retries with its back-off.
    const tCut = Date.now();
    await proxy.set('refuse');
    await waitFor('Waymark to notice the cut', () => wm!.waymark.sessionId === undefined);
    version = 2;
    const before = api.requests.length;
    await bumpAll();
    // The bumps still arrive over Redis and are fetched, but nothing can be published.
    await waitFor('the fetches made while disconnected', () => api.requests.length - before >= 100);
    await sleep(300);
    expect(await counter('publishesFailed')).to.be.at.least(100);
    expect(notConverged(ws)).to.equal(100);

    const t0 = Date.now();
    await proxy.set('pass');
    await waitFor('the rejoin', () => wm!.waymark.ready, 15_000);
    expect(wm!.waymark.sessionId).to.not.equal(firstSession);
    const [lost, ms] = await converge(ws, t0);
    console.log(`      fault: router-cut lost=${lost} converge_ms=${ms} (100 watches, 20 sessions, link down ${t0 - tCut} ms)`);
    expect(lost).to.equal(0);
    // Converged through one refetch of every watch after the rejoin (X-Waymark: resync).
    expect(api.requests.filter((r) => r.headers['x-waymark'] === 'resync')).to.have.length(100);
    expect(await counter('routerJoins')).to.equal(2);

    // Registered again: a new browser can watch, and its Updates flow.
    const [late] = await watchers(1, ['/r/new']);
    const watchesBefore = wm!.waymark.registry.size;
    expect(watchesBefore).to.equal(101);
    await wm!.bump('/r/new');
    await late.client.waitForUpdates(1);
    expect(JSON.parse(late.client.updates[0].body)).to.include({ version: 2, path: '/r/new' });
  });

  it('a snapshot whose answer is lost with the link counts as not delivered: the refetch after the rejoin pushes it', async function () {
    // a slow snapshot, so the link can drop while it is fetched
    api.handler = (req, res) => setTimeout(() => handler(req, res), req.headers['x-waymark'] === 'snapshot' ? 400 : 0);
    await startBehindProxy();
    const [c] = [await pool.open()];
    const token = `tok-snap-${c.id}`;
    const call = c.call<WatchResult>(PROC_WATCH, ['/snap', { token, snapshot: true }]).then(() => 'answered', (err: { error?: string }) => err.error ?? 'failed');
    await sleep(150);
    const t0 = Date.now();
    proxy.cut(); // the call is in flight; the caller never gets its snapshot
    expect(await Promise.race([call, sleep(10_000).then(() => 'no answer')])).not.to.equal('answered');
    await waitFor('the rejoin', () => wm!.waymark.ready, 15_000);
    // nothing changed in the API: only the lost snapshot makes the refetch worth pushing
    await waitFor('the refetch after the rejoin pushes the watch its state', () => c.updates.some((u) => u.path === '/snap'), 5_000);
    const u = c.updates.find((x) => x.path === '/snap')!;
    expect(JSON.parse(u.body)).to.include({ version: 1, token });
    console.log(`      fault: router-cut-during-snapshot lost=0 converge_ms=${Date.now() - t0}`);
  });

  it('blackhole: the ping notices a silent router, reconnects through a stuck handshake, and converges', async function () {
    await startBehindProxy({ WAYMARK_ROUTER_PING_MS: '500' });
    const ws = await watchers(10, paths); // 50 watches
    await bumpAll();
    expect((await converge(ws, Date.now(), 5_000))[0]).to.equal(0);

    const tHole = Date.now();
    await proxy.set('blackhole');
    version = 2;
    await bumpAll();
    // Publishes go into the hole; their acknowledgements never come.
    await waitFor('the ping to drop the silent connection', () => wm!.waymark.sessionId === undefined, 10_000);
    const detectMs = Date.now() - tHole;
    // Stay silent long enough for a reconnect's handshake to hang and be given up.
    const connections = proxy.connections;
    // (each attempt is accepted by the proxy and hangs; a second one means the first gave up)
    await waitFor('a reconnect attempt to give up its handshake', () => proxy.connections >= connections + 2, 10_000);
    expect(await counter('publishesFailed')).to.be.at.least(50);
    expect(notConverged(ws)).to.equal(50);

    const t0 = Date.now();
    await proxy.set('pass');
    const [lost, ms] = await converge(ws, t0, 20_000);
    console.log(`      fault: router-blackhole lost=${lost} converge_ms=${ms} detect_ms=${detectMs} (50 watches, ping 500 ms)`);
    expect(lost).to.equal(0);
    expect(wm!.waymark.ready).to.equal(true);
  });

  it('stop() while the link is down returns at once and cancels the next reconnect', async function () {
    await startBehindProxy();
    await proxy.set('refuse');
    // Refused attempts until the back-off leaves a retry well over a second away.
    const delay = await waitFor('a retry over a second away', () => {
      const d = wm!.logs.map((l) => Number(/"retryInSeconds":([\d.]+)/.exec(l)?.[1] ?? 0)).pop() ?? 0;
      return d >= 1.2 ? d : 0;
    }, 10_000);
    await proxy.set('pass'); // the pending retry would now succeed
    const connections = proxy.connections;
    const t0 = Date.now();
    await wm!.close();
    wm = undefined;
    expect(Date.now() - t0).to.be.below(3_000);
    await sleep(delay * 1000 + 500);
    expect(proxy.connections).to.equal(connections);
  });

  it('a session that leaves while Waymark is away is dropped by reconciliation; on_leave is heard again', async function () {
    await startBehindProxy();
    const [stays, leaves, leavesLater] = await watchers(3, ['/r/1']);
    await wm!.bump('/r/1');
    for (const w of [stays, leaves, leavesLater]) await w.client.waitForUpdates(1);

    await proxy.set('refuse');
    await waitFor('Waymark to notice the cut', () => wm!.waymark.sessionId === undefined);
    const leftId = leaves.client.id;
    const laterId = leavesLater.client.id;
    await leaves.client.close(); // its on_leave goes to nobody
    await sleep(100);
    expect(wm!.waymark.registry.forSession(leftId)).to.have.length(1);
    const leftHits = hitsFor(leaves.token);
    version = 2;

    const t0 = Date.now();
    await proxy.set('pass');
    await waitFor('the reconciliation', () => wm!.logs.some((l) => l.includes('resync after rejoin')), 15_000);
    expect(wm!.waymark.registry.forSession(leftId)).to.have.length(0);
    expect(await counter('sessionsReconciled')).to.equal(1);
    const [lost, ms] = await converge([stays, leavesLater], t0);
    console.log(`      fault: router-session-left-while-away lost=${lost} converge_ms=${ms} dropped_sessions=1`);
    expect(lost).to.equal(0);

    // Meta events are subscribed again: a session leaving now is dropped at once.
    await leavesLater.client.close();
    await waitFor('on_leave after the rejoin', () => wm!.waymark.registry.forSession(laterId).length === 0);
    version = 3;
    await wm!.bump('/r/1');
    await waitFor('the bump', () => JSON.parse(stays.client.updates.at(-1)!.body).version === 3);
    await sleep(200);
    // No request was made with the departed session's token after it left.
    expect(hitsFor(leaves.token)).to.equal(leftHits);
    expect(wm!.waymark.registry.size).to.equal(1);
  });
});
