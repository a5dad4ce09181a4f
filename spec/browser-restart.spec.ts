import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import autobahn from 'autobahn';
import { Redis } from 'ioredis';
import { CHROMIUM_ARGS, chromiumOrSkip } from './helpers/chromium.js';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { startDevRouter, type DevRouter } from '../dev/router.js';
import { PROC_AUTHORIZE, WAMP_SUBPROTOCOLS } from '../lib/protocol/uris.js';
import { convergeBy, VersionedApi } from './helpers/convergence.js';
import { componentEnv, randomChannel, testEnv, waitFor } from './helpers/env.js';
import { FaultProxy } from './helpers/fault-proxy.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { cleanEnv, CliRunner } from './helpers/spawn.js';
import { Upstream } from './helpers/upstream.js';

/**
 * Issue 15 in the real browser: tabs of Debian's headless Chromium load the client bundle
 * (dist/browser/waymark-client.js) the way the README shows it and watch with a snapshot; then
 * the router restarts in every order (tabs back first, Waymark back first, both on their own
 * schedule) or Waymark is killed, each time with a change of the API while the fault lasts and
 * no bump after it. Every watch must end on the API's current state. Same staging as
 * faults-restart.spec.ts: this spec's own dev router (refusing the browser role everything while
 * no session has registered `waymark.authorize`, as Crossbar does), restarted on the same port,
 * reached by Waymark and by the tabs through one fault proxy each.
 */

const BUNDLE = join(fileURLToPath(new URL('../../', import.meta.url)), 'dist/browser/waymark-client.js');

/** The page: connect, watch every path of the query with its token, and record what happens. */
const PAGE = `<!doctype html><meta charset="utf-8"><title>restart</title>
<script type="module">
import { connectWaymark } from '/waymark-client.js';
const q = new URLSearchParams(location.search);
const s = window.__wm = { last: {}, errors: [], states: [], ready: false };
const wm = await connectWaymark({ url: q.get('router'), realm: q.get('realm'), maxRetryDelay: 0.5, rewatchJitterMs: 50 });
wm.on('error', (e) => s.errors.push({ at: Date.now(), uri: e.uri ?? e.error }));
wm.on('state', (st) => s.states.push(st));
window.__client = wm;
for (const path of q.get('paths').split(',')) {
  await wm.watch(path, { token: q.get('token'), snapshot: true }, (u) => { s.last[path] = { status: u.status, body: u.body }; });
}
s.ready = true;
</script>`;

interface PageState {
  last: Record<string, { status: number; body: string } | undefined>;
  errors: Array<{ at: number; uri?: string }>;
  states: string[];
  ready: boolean;
}

describe('router restart and Waymark kill in the browser (headless Chromium)', function () {
  this.timeout(60_000);
  const TABS = 2;
  const PATHS = ['/br/1', '/br/2'];
  const tickets = { [testEnv.authid]: testEnv.ticket };
  const cli = new CliRunner();
  let browser: Browser | undefined;
  let context: BrowserContext | undefined;
  let site: Server | undefined;
  let siteUrl = '';
  let api: VersionedApi;
  let upstream: Upstream;
  let router: DevRouter;
  let port: number;
  let wProxy: FaultProxy;
  let bProxy: FaultProxy;
  let wm: Harness | undefined;
  let redis: Redis | undefined;
  const spies: autobahn.Connection[] = [];
  const pages: Array<{ page: Page; token: string }> = [];
  const problems: string[] = [];

  before(async function () {
    const executablePath = chromiumOrSkip(this, 'spec/browser-restart.spec.ts');
    if (!existsSync(BUNDLE)) throw new Error(`${BUNDLE} is missing: run 'npm run build' (npm test builds it)`);
    const bundle = await readFile(BUNDLE);
    site = createServer((req, res) => {
      if (req.url?.startsWith('/waymark-client.js')) res.writeHead(200, { 'content-type': 'text/javascript' }).end(bundle);
      else if (req.url?.startsWith('/?')) res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
      else res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => site!.listen(0, '127.0.0.1', resolve));
    siteUrl = `http://127.0.0.1:${(site.address() as AddressInfo).port}`;
    browser = await chromium.launch({ executablePath, headless: true, args: [...CHROMIUM_ARGS] });
  });

  after(async function () {
    await browser?.close();
    if (site) await new Promise<void>((resolve) => site!.close(() => resolve()));
  });

  beforeEach(async function () {
    problems.length = 0;
    api = new VersionedApi();
    upstream = await new Upstream().start();
    upstream.handler = api.handler;
    router = await startDevRouter({ realm: testEnv.realm, backendTickets: tickets });
    port = router.port;
    wProxy = await new FaultProxy({ host: '127.0.0.1', port }).start();
    bProxy = await new FaultProxy({ host: '127.0.0.1', port }).start();
    context = await browser!.newContext();
  });

  afterEach(async function () {
    pages.length = 0;
    await context?.close();
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

  async function openTabs(): Promise<void> {
    for (let i = 0; i < TABS; i++) {
      const token = `tab-${i}`;
      const page = await context!.newPage();
      page.on('pageerror', (err) => problems.push(`tab ${i}: ${err.message}`));
      const q = new URLSearchParams({ router: bProxy.url(router.url), realm: testEnv.realm, token, paths: PATHS.join(',') });
      await page.goto(`${siteUrl}/?${q.toString()}`);
      await page.waitForFunction(() => (window as unknown as { __wm?: PageState }).__wm?.ready === true, undefined, { timeout: 10_000 });
      pages.push({ page, token });
    }
    expect(await stale()).to.equal(0);
  }

  const stateOf = (page: Page): Promise<PageState> => page.evaluate(() => (window as unknown as { __wm: PageState }).__wm);

  /** Watches (over all tabs) whose last Update is not what the API answers their token now. */
  async function stale(): Promise<number> {
    let n = 0;
    for (const { page, token } of pages) {
      const s = await stateOf(page);
      for (const p of PATHS) if (s.last[p]?.status !== 200 || s.last[p]?.body !== api.body(p, token)) n += 1;
    }
    return n;
  }

  /** Tabs refused (authorization_failed) since `t`. */
  async function refusedSince(t: number): Promise<number> {
    let n = 0;
    for (const { page } of pages) if ((await stateOf(page)).errors.some((e) => e.at >= t && e.uri === 'wamp.error.authorization_failed')) n += 1;
    return n;
  }

  async function changeMeanwhile(bump: (msg: string) => Promise<number>): Promise<void> {
    for (const p of PATHS) api.set(p, 2);
    await bump(JSON.stringify({ paths: PATHS }));
  }

  async function ends(name: string, since: number): Promise<void> {
    const r = await convergeBy(name, stale, since, 15_000);
    expect(r.lost, 'watches not on the API\'s current state').to.equal(0);
    for (const { page } of pages) {
      await page.waitForFunction(() => (window as unknown as { __client: { state: string } }).__client.state === 'open', undefined, { timeout: 5_000 });
    }
    expect(problems, 'page errors').to.deep.equal([]);
  }

  const restartRouter = async () => { router = await startDevRouter({ realm: testEnv.realm, backendTickets: tickets, port }); };

  it('router restart, tabs back first: refused until Waymark registers, then every watch catches up', async function () {
    wm = await startWaymark(upstream.url, { WAYMARK_ROUTER_URL: wProxy.url(router.url) });
    await openTabs();
    await router.close();
    await wProxy.set('refuse');
    await changeMeanwhile(wm.bump);
    await restartRouter();
    const back = Date.now();
    await waitFor('every tab back and refused', async () => (await refusedSince(back)) === TABS, 10_000);
    const t0 = Date.now();
    await wProxy.set('pass');
    await ends('browser-router-restart-browsers-first', t0);
  });

  it('router restart, Waymark back first: tabs arriving while it registers are refused, retry and catch up', async function () {
    wm = await startWaymark(upstream.url, { WAYMARK_ROUTER_URL: wProxy.url(router.url) });
    await openTabs();
    await router.close();
    await bProxy.set('refuse');
    await wProxy.set('delay', 300); // Waymark's session is there well before its registrations
    await changeMeanwhile(wm.bump);
    await restartRouter();
    let waymarkJoined = false;
    const asker = await spy((details) => { if (details?.authid === testEnv.authid) waymarkJoined = true; });
    await waitFor('Waymark\'s session back first', () => waymarkJoined, 15_000);
    const released = Date.now();
    await bProxy.set('pass');
    await waitFor('Waymark\'s authorizer registered again', () => asker.call(PROC_AUTHORIZE, [{ session: 1 }, 'x', 'call', {}]).then(() => true, () => false), 15_000);
    const t0 = Date.now();
    await wProxy.set('pass');
    await ends('browser-router-restart-waymark-first', t0);
    const refused = await refusedSince(released);
    console.log(`      (${refused} of ${TABS} tabs refused while Waymark registered)`);
    expect(refused).to.be.at.least(1);
  });

  it('router restart, both back on their own schedule: every watch catches up', async function () {
    wm = await startWaymark(upstream.url, { WAYMARK_ROUTER_URL: wProxy.url(router.url) });
    await openTabs();
    await router.close();
    await changeMeanwhile(wm.bump);
    await new Promise((r) => setTimeout(r, 500));
    await restartRouter();
    const t0 = Date.now();
    await ends('browser-router-restart-both', t0);
    console.log(`      (${await refusedSince(t0)} of ${TABS} tabs came back before Waymark had registered)`);
  });

  function serve(channel: string) {
    return cli.run(['serve'], cleanEnv({ ...componentEnv(channel, upstream.url), WAYMARK_ROUTER_URL: router.url, WAYMARK_ADMIN_PORT: '0' }));
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

  it('kill -9 of Waymark: the router and tabs stay; the new process makes every watch catch up', async function () {
    const channel = await servedThenKilled();
    await changeMeanwhile((m) => redis!.publish(channel, m));
    const t0 = Date.now();
    const second = serve(channel);
    await second.waitForOutput(/waymark running/, 'stderr', 20_000);
    await ends('browser-waymark-kill', t0);
  });

  it('kill -9 of Waymark while the tabs\' connections drop: refused until it is back, then every watch catches up', async function () {
    const channel = await servedThenKilled();
    const cut = Date.now();
    bProxy.cut();
    await waitFor('every tab back and refused', async () => (await refusedSince(cut)) === TABS, 10_000);
    await changeMeanwhile((m) => redis!.publish(channel, m));
    const t0 = Date.now();
    const second = serve(channel);
    await second.waitForOutput(/waymark running/, 'stderr', 20_000);
    await ends('browser-waymark-kill-browsers-reconnect', t0);
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
