import { expect } from 'chai';
import autobahn from 'autobahn';
import { Redis } from 'ioredis';
import { startDevRouter, type DevRouter } from '../dev/router.js';
import { connectWaymark, type ConnectionState, type WaymarkClient } from '../lib/client/client.js';
import type { Update } from '../lib/protocol/types.js';
import { PROC_AUTHORIZE, WAMP_SUBPROTOCOLS } from '../lib/protocol/uris.js';
import { convergeBy, VersionedApi } from './helpers/convergence.js';
import { componentEnv, randomChannel, testEnv, waitFor } from './helpers/env.js';
import { FaultProxy } from './helpers/fault-proxy.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { cleanEnv, CliRunner } from './helpers/spawn.js';
import { Upstream } from './helpers/upstream.js';

/**
 * Whatever order the router, Waymark and the browsers come back in, every watch ends on the
 * API's current state (issue 15). waymark/client sessions against a dev router of this spec's
 * own, restarted on the same port; Waymark and the browsers each reach it through a fault proxy,
 * so a spec decides who is back first. The dev router refuses the browser role everything while
 * no session has registered `waymark.authorize` (as Crossbar does), so browsers back before
 * Waymark are refused until it has registered. In every case the API changes while the fault
 * lasts (its bump cannot be delivered) and nothing is bumped afterwards. Each case prints
 * `fault: <name> lost=<watches not converged> converge_ms=<from the fault's end>`.
 */
describe('faults: router restart and Waymark kill (waymark/client)', function () {
  this.timeout(40_000);
  const SESSIONS = 4;
  const PATHS = ['/rs/1', '/rs/2', '/rs/3'];
  const tickets = { [testEnv.authid]: testEnv.ticket };
  const cli = new CliRunner();
  let api: VersionedApi;
  let upstream: Upstream;
  let router: DevRouter;
  let port: number;
  /** Waymark's link to the router, and the browsers' */
  let wProxy: FaultProxy;
  let bProxy: FaultProxy;
  let wm: Harness | undefined;
  let tabs: Tab[] = [];
  const spies: autobahn.Connection[] = [];
  let redis: Redis | undefined;

  interface Tab {
    client: WaymarkClient;
    /** when each error was reported, and its WAMP URI (the old client emitted autobahn's error objects) */
    errors: Array<{ at: number; uri?: string }>;
    states: ConnectionState[];
    watches: Array<{ path: string; token: string; last?: Update }>;
  }

  const uriOf = (e: unknown) => (e as { uri?: string }).uri ?? (e as { error?: string }).error;

  beforeEach(async function () {
    api = new VersionedApi();
    upstream = await new Upstream().start();
    upstream.handler = api.handler;
    router = await startDevRouter({ realm: testEnv.realm, backendTickets: tickets });
    port = router.port;
    wProxy = await new FaultProxy({ host: '127.0.0.1', port }).start();
    bProxy = await new FaultProxy({ host: '127.0.0.1', port }).start();
  });

  afterEach(async function () {
    await Promise.all(tabs.splice(0).map((t) => t.client.close()));
    for (const s of spies.splice(0)) { try { s.close(); } catch { /* closed */ } }
    await wm?.close();
    wm = undefined;
    await cli.killAll();
    await redis?.quit();
    redis = undefined;
    await wProxy.stop();
    await bProxy.stop();
    await router.close();
    await upstream.close();
  });

  /** `SESSIONS` browsers through the browsers' proxy, each watching every path with a snapshot. */
  async function openTabs(): Promise<Tab[]> {
    for (let i = 0; i < SESSIONS; i++) {
      const client = await connectWaymark({ url: bProxy.url(router.url), realm: testEnv.realm, maxRetryDelay: 0.5, rewatchJitterMs: 50 });
      const tab: Tab = { client, errors: [], states: [], watches: [] };
      client.on('error', (e) => tab.errors.push({ at: Date.now(), uri: uriOf(e) }));
      client.on('state', (s) => tab.states.push(s));
      for (const path of PATHS) {
        const w: Tab['watches'][number] = { path, token: `tok-${i}` };
        await client.watch(path, { token: w.token, snapshot: true }, (u) => { w.last = u; });
        tab.watches.push(w);
      }
      tabs.push(tab);
    }
    expect(stale()).to.equal(0);
    return tabs;
  }

  /** Watches whose last Update is not what the API answers their token now. */
  const stale = () => tabs.reduce((n, t) => n + t.watches.filter((w) => w.last?.status !== 200 || w.last.body !== api.body(w.path, w.token)).length, 0);

  /** The API changes while the fault lasts; its bump goes out but cannot reach a browser. */
  async function changeMeanwhile(bump: (msg: string) => Promise<number>): Promise<void> {
    for (const p of PATHS) api.set(p, 2);
    await bump(JSON.stringify({ paths: PATHS }));
  }

  /** Browsers refused (authorization_failed) since `t`. */
  const refusedSince = (t: number) => tabs.filter((tab) => tab.errors.some((e) => e.at >= t && e.uri === 'wamp.error.authorization_failed')).length;

  async function ends(name: string, since: number): Promise<void> {
    const r = await convergeBy(name, stale, since, 15_000);
    expect(r.lost, 'watches not on the API\'s current state').to.equal(0);
    await waitFor('every client open', () => tabs.every((t) => t.client.state === 'open'));
  }

  it('router restart, browsers back first: refused until Waymark registers, then every watch catches up', async function () {
    wm = await startWaymark(upstream.url, { WAYMARK_ROUTER_URL: wProxy.url(router.url) });
    await openTabs();
    await router.close();
    await wProxy.set('refuse'); // Waymark stays away until every browser is back and refused
    await changeMeanwhile(wm.bump);
    router = await startDevRouter({ realm: testEnv.realm, backendTickets: tickets, port });
    const back = Date.now();
    await waitFor('every browser back and refused', () => refusedSince(back) === SESSIONS, 10_000);
    const t0 = Date.now();
    await wProxy.set('pass');
    await ends('router-restart-browsers-first', t0);
    expect(tabs.every((t) => t.states.includes('reconnecting'))).to.equal(true);
  });

  it('router restart, Waymark back first: browsers arriving while it registers are refused, retry and catch up', async function () {
    wm = await startWaymark(upstream.url, { WAYMARK_ROUTER_URL: wProxy.url(router.url) });
    await openTabs();
    await router.close();
    await bProxy.set('refuse');
    // Waymark's link slowed down: from the router's view its session exists well before its
    // registrations arrive, the window in which browsers are refused.
    await wProxy.set('delay', 300);
    await changeMeanwhile(wm.bump);
    router = await startDevRouter({ realm: testEnv.realm, backendTickets: tickets, port });
    let waymarkJoined = false;
    const asker = await spy((details) => { if (details?.authid === testEnv.authid) waymarkJoined = true; });
    await waitFor('Waymark\'s session back first', () => waymarkJoined, 15_000);
    const released = Date.now();
    await bProxy.set('pass');
    // The fault ends when the authorizer is registered again (the link is fast again from then).
    await waitFor('Waymark\'s authorizer registered again', () => asker.call(PROC_AUTHORIZE, [{ session: 1 }, 'x', 'call', {}]).then(() => true, () => false), 15_000);
    const t0 = Date.now();
    await wProxy.set('pass');
    await ends('router-restart-waymark-first', t0);
    console.log(`      (${refusedSince(released)} of ${SESSIONS} browsers refused while Waymark registered)`);
    expect(refusedSince(released), 'browsers that arrived before the registrations').to.be.at.least(1);
  });

  it('router restart, both back on their own schedule: every watch catches up', async function () {
    wm = await startWaymark(upstream.url, { WAYMARK_ROUTER_URL: wProxy.url(router.url) });
    await openTabs();
    await router.close();
    await changeMeanwhile(wm.bump);
    await new Promise((r) => setTimeout(r, 500));
    router = await startDevRouter({ realm: testEnv.realm, backendTickets: tickets, port });
    const t0 = Date.now();
    await ends('router-restart-both', t0);
    console.log(`      (${refusedSince(t0)} of ${SESSIONS} browsers came back before Waymark had registered)`);
  });

  /** `waymark serve` as a real process on this spec's router (directly, not through a proxy). */
  function serve(channel: string) {
    const p = cli.run(['serve'], cleanEnv({
      ...componentEnv(channel, upstream.url),
      WAYMARK_ROUTER_URL: router.url,
      WAYMARK_ADMIN_PORT: '0',
    }));
    return p;
  }

  /** A `waymark serve` on a new channel with the watches open, then killed (-9); its channel. */
  async function servedThenKilled(): Promise<string> {
    const channel = randomChannel();
    redis = new Redis(testEnv.redisUrl);
    const first = serve(channel);
    await first.waitForOutput(/waymark running/, 'stderr', 20_000);
    await openTabs();
    first.kill('SIGKILL');
    await first.exited;
    return channel;
  }

  it('kill -9 of Waymark: the router and browsers stay; the new process makes every watch catch up', async function () {
    const channel = await servedThenKilled();
    await changeMeanwhile((m) => redis!.publish(channel, m));
    const t0 = Date.now();
    const second = serve(channel);
    await second.waitForOutput(/waymark running/, 'stderr', 20_000);
    await ends('waymark-kill', t0);
  });

  it('kill -9 of Waymark while the browsers\' connections drop: refused until it is back, then every watch catches up', async function () {
    const channel = await servedThenKilled();
    const cut = Date.now();
    bProxy.cut(); // a network blip of the browsers: new sessions, while no authorizer is registered
    await waitFor('every browser back and refused', () => refusedSince(cut) === SESSIONS, 10_000);
    await changeMeanwhile((m) => redis!.publish(channel, m));
    const t0 = Date.now();
    const second = serve(channel);
    await second.waitForOutput(/waymark running/, 'stderr', 20_000);
    await ends('waymark-kill-browsers-reconnect', t0);
  });

  /** A backend session on the router that reports every session joining (and can call what Waymark registers). */
  function spy(onJoin: (details: { authid?: string } | undefined) => void): Promise<autobahn.Session> {
    return new Promise((resolve, reject) => {
      const c = new autobahn.Connection({
        url: router.url, realm: testEnv.realm, protocols: WAMP_SUBPROTOCOLS, max_retries: 0, retry_if_unreachable: false,
        authmethods: ['ticket'], authid: testEnv.authid, onchallenge: () => testEnv.ticket,
      });
      spies.push(c);
      c.onopen = (session) => {
        session.subscribe('wamp.session.on_join', (args) => onJoin(args?.[0] as { authid?: string } | undefined)).then(() => resolve(session), reject);
      };
      c.onclose = (reason) => { reject(new Error(`spy could not join: ${reason}`)); return true; };
      c.open();
    });
  }
});
