import { expect } from 'chai';
import { Redis } from 'ioredis';
import { createWaymark, type Waymark } from '../lib/wamp/component.js';
import { loadConfig } from '../lib/protocol/config.js';
import { RedisWatchIndex, sessionKeys } from '../lib/cluster/watch-index.js';
import { connectWaymark, type ClientUpdate, type WaymarkClient } from '../lib/client/client.js';
import { authorize } from '../lib/wamp/authorizer.js';
import {
  ERROR_URIS, INTERNAL_CLAIM, INTERNAL_JOINED, INTERNAL_REFRESH, INTERNAL_UNWATCH, PROC_UNWATCH, PROC_WATCH, PROC_REFRESH,
} from '../lib/protocol/uris.js';
import { watchId } from '../lib/engine/watch-registry.js';
import { componentEnv, randomChannel, sleep, testEnv, waitFor } from './helpers/env.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { cleanEnv, freePort, runCli, type Proc } from './helpers/spawn.js';
import { Upstream, upstreamVersion } from './helpers/upstream.js';
import { Client, ClientPool } from './helpers/wamp-client.js';

function peersOf(w: Waymark): number {
  return (w as unknown as { instances: { peers: Map<string, number> } }).instances.peers.size;
}

/** Wait until `count` stops changing for 400 ms (at most 10 s). */
async function quiet(count: () => number): Promise<void> {
  let last = -1;
  for (let i = 0; i < 25; i += 1) {
    const now = count();
    if (now === last) return;
    last = now;
    await sleep(400);
  }
}

/** Contract section 7: several instances on one router and one Redis behave as one service. */
describe('several instances', function () {
  this.timeout(60_000);
  let api: Upstream;
  let channel: string;
  let redis: Redis;
  let instances: Harness[] = [];
  const pool = new ClientPool();

  const start = async (n: number, env: Record<string, string> = {}) => {
    for (let i = 0; i < n; i += 1) instances.push(await startWaymark(api.url, { WAYMARK_BUMP_CHANNEL: channel, ...env }));
  };
  const bump = (paths: string[]) => redis.publish(channel, JSON.stringify({ paths }));
  const totalWatches = () => instances.reduce((n, h) => n + h.waymark.registry.size, 0);
  const ownerOf = (id: string): Waymark | undefined => instances.find((h) => h.waymark.registry.get(id))?.waymark;

  beforeEach(async function () {
    upstreamVersion.value = 1;
    api = await new Upstream().start();
    channel = randomChannel();
    redis = new Redis(testEnv.redisUrl);
  });

  afterEach(async function () {
    await pool.closeAll();
    await Promise.all(instances.splice(0).map((h) => h.close()));
    await api.close();
    const keys = await redis.keys(`${channel}:*`);
    if (keys.length) await redis.del(...keys);
    await redis.quit();
  });

  it('round-robin watches have exactly one owner, and one bump gives each watch exactly one Update', async function () {
    await start(3);
    const sessions = 12;
    const clients: Client[] = [];
    for (let i = 0; i < sessions; i += 1) clients.push(await pool.open());
    // each session watches two paths, and watches the first again: that call lands on another
    // instance, which takes the watch over; the first owner must drop its copy
    for (const [i, c] of clients.entries()) {
      await c.call(PROC_WATCH, [`/items/${i % 4}`, { token: `t${i}` }]);
      await c.call(PROC_WATCH, [`/other/${i % 3}`, { token: `t${i}` }]);
    }
    for (const [i, c] of clients.entries()) await c.call(PROC_WATCH, [`/items/${i % 4}`, { token: `t${i}` }]);
    await waitFor('every watch on exactly one instance', () => totalWatches() === sessions * 2);
    const perInstance = instances.map((h) => h.waymark.registry.size);
    expect(perInstance.every((n) => n > 0), `owners spread over instances: ${perInstance.join('/')}`).to.equal(true);
    for (const [i, c] of clients.entries()) {
      expect(await redis.hlen(sessionKeys(channel, c.id).watches), 'shared index entries').to.equal(2);
      expect(ownerOf(watchId(c.id, `/items/${i % 4}`))).not.to.equal(undefined);
    }
    // let the refetches of moved watches land before counting bump Updates
    await quiet(() => clients.reduce((n, c) => n + c.updates.length, 0));
    const moved = clients.reduce((n, c) => n + c.updates.length, 0);
    const before = clients.map((c) => c.updates.length);
    upstreamVersion.value = 2;
    await bump(['/items/0', '/items/1', '/items/2', '/items/3', '/other/0', '/other/1', '/other/2']);
    await waitFor('two Updates per session', () => clients.every((c, i) => c.updates.length - before[i] >= 2), 10_000);
    await sleep(500); // a duplicate would arrive by now
    const got = clients.map((c, i) => c.updates.length - before[i]);
    console.log(`      instances: 3 (owners ${perInstance.join('/')}), sessions: ${sessions}, watches: ${sessions * 2}, moved by a re-watch (one refetch each): ${moved}, Updates for one bump: ${got.reduce((a, b) => a + b, 0)}`);
    expect(got.every((n) => n === 2), `Updates per session: ${got.join(',')}`).to.equal(true);
    for (const c of clients) {
      for (const u of c.updates.slice(-2)) expect(JSON.parse(u.body)).to.include({ version: 2 });
    }
  });

  it('unwatch and refresh work from an instance that does not own the watch', async function () {
    await start(3);
    const c = await pool.open();
    const paths = ['/u/0', '/u/1', '/u/2', '/u/3', '/u/4', '/u/5'];
    for (const p of paths) await c.call(PROC_WATCH, [p, { token: 'old' }]);
    await waitFor('six watches', () => totalWatches() === 6);
    expect(await c.call(PROC_REFRESH, [{ token: 'new' }]), 'counted across instances').to.deep.equal({ updated: 6 });
    await sleep(100); // the other owners apply it from the internal event
    upstreamVersion.value = 2;
    await bump(paths);
    await waitFor('six Updates', () => c.updates.length >= 6);
    for (const u of c.updates) expect(JSON.parse(u.body), 'every owner uses the new token').to.include({ token: 'new', version: 2 });

    // unwatch in the reverse order of the watches: round robin then serves most of them on an
    // instance that does not own the watch
    const owners = new Map(paths.map((p) => [p, ownerOf(watchId(c.id, p))!]));
    let onOthers = 0;
    for (const p of [...paths].reverse()) {
      const id = watchId(c.id, p);
      const marks = instances.map((h) => h.logs.length);
      expect(await c.call(PROC_UNWATCH, [id]), p).to.deep.equal({ removed: 1 });
      const servedBy = instances.find((h, i) => h.logs.slice(marks[i]).some((l) => l.includes('"unwatch"') && l.includes(id)));
      if (servedBy && servedBy.waymark !== owners.get(p)) onOthers += 1;
    }
    console.log(`      unwatches served by a non-owner: ${onOthers} of ${paths.length}`);
    expect(onOthers).to.be.greaterThan(0);
    await waitFor('every owner dropped its watch', () => totalWatches() === 0);
    expect(await redis.exists(sessionKeys(channel, c.id).watches)).to.equal(0);
    for (const p of paths) expect(await c.call(PROC_UNWATCH, [watchId(c.id, p)]), 'unknown ids').to.deep.equal({ removed: 0 });
    expect(await c.call(PROC_UNWATCH, ['/u/0']), 'unknown path').to.deep.equal({ removed: 0 });
    const n = c.updates.length;
    await bump(paths);
    await sleep(300);
    expect(c.updates.length, 'no Update after unwatch').to.equal(n);
  });

  it('crossed claims (two instances accept the same watch at once) leave exactly one owner', async function () {
    await start(2);
    const [a, b] = instances.map((h) => h.waymark);
    type Internals = { admit(s: number, id: string): Promise<unknown>; settle(s: number, id: string, ok: boolean): void; admitting: Map<string, { contested: boolean }> };
    const [ia, ib] = [a, b].map((w) => (w as unknown as { instances: Internals }).instances);
    const c = await pool.open();
    const id = watchId(c.id, '/race');
    // A admits, then B admits (B served the latest call) and claims before A has accepted:
    // A had nothing to drop when B's claim came
    await ia.admit(c.id, id);
    await ib.admit(c.id, id);
    b.registry.upsert(c.id, '/race', {});
    ib.settle(c.id, id, true);
    await waitFor('A to see the crossing claim', () => ia.admitting.get(id)?.contested === true);
    a.registry.upsert(c.id, '/race', {});
    ia.settle(c.id, id, true);
    await waitFor('A to give the watch up', () => a.registry.get(id) === undefined);
    await sleep(100);
    expect(b.registry.get(id), 'B, the latest, keeps it').not.to.equal(undefined);
    expect(await redis.hget(sessionKeys(channel, c.id).watches, id)).to.equal(b.instance);
  });

  it('refresh on any instance resumes watches a 401 suspended on every owner', async function () {
    await start(2);
    api.handler = (req, res) => {
      const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
      if (token !== 'good') { res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"expired"}'); return; }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ path: req.url, token, version: upstreamVersion.value }));
    };
    const c = await pool.open();
    // two watches: round robin puts them on the two instances, so one owner is not the one
    // that serves the refresh
    await c.call(PROC_WATCH, ['/s/1', { token: 'expired' }]);
    await c.call(PROC_WATCH, ['/s/2', { token: 'expired' }]);
    expect(instances.map((h) => h.waymark.registry.size)).to.deep.equal([1, 1]);
    await bump(['/s/1', '/s/2']);
    await c.waitForUpdates(2);
    expect(c.updates.map((u) => u.status)).to.deep.equal([401, 401]);
    await bump(['/s/1', '/s/2']);
    await sleep(200);
    expect(c.updates, 'suspended: no fetch, no Update').to.have.length(2);
    expect(await c.call(PROC_REFRESH, [{ token: 'good' }])).to.deep.equal({ updated: 2 });
    const got = await c.waitForUpdates(4);
    expect(got.slice(2).map((u) => u.status)).to.deep.equal([200, 200]);
    expect(got.slice(2).map((u) => u.path).sort()).to.deep.equal(['/s/1', '/s/2']);
  });

  it('counts the per-session watch limit across instances, also for concurrent calls', async function () {
    await start(3, { WAYMARK_MAX_WATCHES_PER_SESSION: '4' });
    const c = await pool.open();
    for (let i = 0; i < 4; i += 1) await c.call(PROC_WATCH, [`/l/${i}`, { token: 't' }]);
    expect(Math.max(...instances.map((h) => h.waymark.registry.size)), 'no instance holds 4 itself').to.be.lessThan(4);
    expect((await c.callError(PROC_WATCH, ['/l/4', { token: 't' }])).error).to.equal(ERROR_URIS.too_many_watches);
    // a watch the session already has is not a new one
    await c.call(PROC_WATCH, ['/l/0', { token: 't2' }]);
    expect(await c.call(PROC_UNWATCH, ['/l/1'])).to.deep.equal({ removed: 1 });
    await c.call(PROC_WATCH, ['/l/4', { token: 't' }]);

    const d = await pool.open();
    const results = await Promise.allSettled(Array.from({ length: 12 }, (_, i) => d.call(PROC_WATCH, [`/c/${i}`, { token: 't' }])));
    const accepted = results.filter((r) => r.status === 'fulfilled').length;
    console.log(`      limit 4, 12 concurrent watches over 3 instances: accepted ${accepted}`);
    expect(accepted).to.equal(4);
    await waitFor('four watches of d in all', () => instances.reduce((n, h) => n + h.waymark.registry.forSession(d.id).length, 0) === 4);
  });

  it('counts the per-session rate limit across instances', async function () {
    await start(3, { WAYMARK_RATE_LIMIT: '1', WAYMARK_RATE_BURST: '10' });
    await waitFor('every instance knows the two others', () => instances.every((h) => peersOf(h.waymark) === 2));
    const c = await pool.open();
    const results = await Promise.all(Array.from({ length: 24 }, () => c.call(PROC_UNWATCH, ['/nothing']).then(() => 'ok', (e: { error?: string }) => e.error)));
    const passed = results.filter((r) => r === 'ok').length;
    console.log(`      rate limit 1/s burst 10 over 3 instances: 24 calls, passed ${passed}, rate_limited ${results.filter((r) => r === ERROR_URIS.rate_limited).length}`);
    // per instance buckets would let 3 x 10 through; one shared bucket lets 10 (+1 if a second passes)
    expect(passed).to.be.within(10, 11);
    expect(passed + results.filter((r) => r === ERROR_URIS.rate_limited).length).to.equal(24);
  });

  it('a session that leaves loses its watches on every instance and its shared entries', async function () {
    await start(2, { WAYMARK_RATE_LIMIT: '5' });
    await waitFor('the instances know each other', () => instances.every((h) => peersOf(h.waymark) === 1));
    const c = await pool.open();
    await c.call(PROC_WATCH, ['/leave/1', { token: 't' }]);
    await c.call(PROC_WATCH, ['/leave/2', { token: 't' }]);
    const id = c.id;
    expect(instances.map((h) => h.waymark.registry.forSession(id).length)).to.deep.equal([1, 1]);
    expect(await redis.exists(sessionKeys(channel, id).watches, sessionKeys(channel, id).rate)).to.equal(2);
    await c.close();
    await waitFor('watches gone everywhere', () => totalWatches() === 0);
    await waitFor('shared entries gone', async () => (await redis.exists(sessionKeys(channel, id).watches, sessionKeys(channel, id).rate)) === 0);
  });

  it('forgets a recorded instance whose WAMP session is gone', async function () {
    await redis.hset(`${channel}:instances`, 'gone-instance', '4242424242');
    await start(1);
    expect(await redis.hexists(`${channel}:instances`, 'gone-instance')).to.equal(0);
    expect(await redis.hget(`${channel}:instances`, instances[0].waymark.instance)).to.equal(String(instances[0].waymark.sessionId));
  });

  it('keeps serving when the shared index is unreachable (limits then count per instance)', async function () {
    const config = loadConfig({
      ...componentEnv(channel, api.url),
      WAYMARK_ADMIN_PORT: '0',
      WAYMARK_MAX_WATCHES_PER_SESSION: '2',
    });
    const port = await freePort(); // nothing listens there
    const wm = createWaymark(config, { watchIndex: new RedisWatchIndex({ redisUrl: `redis://127.0.0.1:${port}`, prefix: channel }) });
    try {
      await wm.start();
      const c = await pool.open();
      await c.call(PROC_WATCH, ['/x/1', { token: 't' }]);
      await c.call(PROC_WATCH, ['/x/2', { token: 't' }]);
      expect((await c.callError(PROC_WATCH, ['/x/3', { token: 't' }])).error).to.equal(ERROR_URIS.too_many_watches);
      expect(await c.call(PROC_REFRESH, [{ token: 'u' }])).to.deep.equal({ updated: 2 });
      expect(await c.call(PROC_UNWATCH, ['/x/2'])).to.deep.equal({ removed: 1 });
      upstreamVersion.value = 2;
      await bump(['/x/1']);
      const [u] = await c.waitForUpdates(1);
      expect(JSON.parse(u.body)).to.include({ token: 'u', version: 2 });
    } finally {
      await wm.stop();
    }
  });

  it('keeps the internal topics away from browsers', async function () {
    await start(1);
    const details = { session: 7, authid: 'x', authrole: 'frontend' };
    for (const uri of [INTERNAL_CLAIM, INTERNAL_JOINED, INTERNAL_REFRESH, INTERNAL_UNWATCH]) {
      for (const action of ['subscribe', 'publish', 'call', 'register']) {
        expect(authorize(details, uri, action, {}), `${action} ${uri}`).to.equal(false);
      }
      expect(authorize(details, uri, 'subscribe', { match: 'prefix' })).to.equal(false);
    }
    expect(authorize(details, 'waymark.internal.', 'subscribe', { match: 'prefix' })).to.equal(false);
    expect(authorize(details, 'waymark.', 'subscribe', { match: 'prefix' })).to.equal(false);
    // and on the router: a browser cannot hear a refresh's credentials nor forge a claim
    const b = await pool.open();
    for (const [uri, opts] of [[INTERNAL_REFRESH, {}], ['waymark.internal', { match: 'prefix' }], ['waymark.internal.', { match: 'prefix' }]] as const) {
      let err: unknown;
      try { await b.session.subscribe(uri, () => undefined, opts); } catch (e) { err = e; }
      expect((err as { error?: string } | undefined)?.error, `subscribe ${uri}`).to.equal('wamp.error.not_authorized');
    }
    let err: unknown;
    try {
      await b.session.publish(INTERNAL_CLAIM, [{ service: channel, instance: 'x', session: 1, watch: 'w' }], {}, { acknowledge: true });
    } catch (e) { err = e; }
    expect((err as { error?: string } | undefined)?.error, 'publish a claim').to.equal('wamp.error.not_authorized');
    expect((await b.callError(INTERNAL_REFRESH, [])).error).to.be.oneOf(['wamp.error.not_authorized', 'wamp.error.no_such_procedure']);
    err = undefined;
    try { await b.session.register(INTERNAL_CLAIM, () => undefined); } catch (e) { err = e; }
    expect((err as { error?: string } | undefined)?.error, 'register').to.equal('wamp.error.not_authorized');
  });

  describe('when an instance dies', function () {
    let children: Proc[] = [];
    let wmClients: WaymarkClient[] = [];

    afterEach(async function () {
      await Promise.all(wmClients.splice(0).map((c) => c.close()));
      for (const p of children.splice(0)) {
        p.kill('SIGKILL');
        await p.exited;
      }
    });

    /** Sessions that each watch one path through waymark/client; `last` is the newest version seen. */
    const watchers = async (n: number) => {
      const out: Array<{ client: WaymarkClient; path: string; updates: ClientUpdate[]; resyncs: string[] }> = [];
      for (let i = 0; i < n; i += 1) {
        const client = await connectWaymark({ url: testEnv.routerUrl, realm: testEnv.realm, rewatchJitterMs: 200 });
        wmClients.push(client);
        const w = { client, path: `/k/${i}`, updates: [] as ClientUpdate[], resyncs: [] as string[] };
        client.on('resync', ({ reason }) => w.resyncs.push(reason));
        await client.watch(w.path, { token: `t${i}` }, (u) => w.updates.push(u));
        out.push(w);
      }
      return out;
    };
    const version = (u: ClientUpdate | undefined) => (u?.json as { version?: number } | undefined)?.version;

    it('kill -9 of one `waymark serve` process: clients re-watch and converge, nothing lost', async function () {
      // one instance in-process, two as real processes on the same router, Redis and channel
      await start(1);
      const env = cleanEnv({
        ...componentEnv(channel, api.url),
        WAYMARK_ADMIN_PORT: '0',
        WAYMARK_LOG_LEVEL: 'info',
      });
      for (let i = 0; i < 2; i += 1) {
        const p = runCli(['serve'], env);
        children.push(p);
        await p.waitForOutput(/waymark running/, 'stderr', 20_000);
      }
      await waitFor('three instances in the index', async () => (await redis.hlen(`${channel}:instances`)) === 3);
      const ws = await watchers(12);
      const ownersOf = async () => {
        const owners: string[] = [];
        for (const w of ws) {
          const all = await redis.hgetall(sessionKeys(channel, (w.client as unknown as { session: { id: number } }).session.id).watches);
          owners.push(...Object.values(all));
        }
        return owners;
      };
      const owners = await ownersOf();
      const byOwner = new Map<string, number>();
      for (const o of owners) byOwner.set(o, (byOwner.get(o) ?? 0) + 1);
      expect(byOwner.size, 'watches spread over the three instances').to.equal(3);
      const local = instances[0].waymark.instance;

      upstreamVersion.value = 2;
      await bump(ws.map((w) => w.path));
      await waitFor('everyone at version 2', () => ws.every((w) => version(w.updates.at(-1)) === 2), 10_000);

      // the victim: the child owning the most watches
      const childOwners = [...byOwner].filter(([o]) => o !== local).sort((a, b) => b[1] - a[1]);
      const victimId = childOwners[0][0];
      const onVictim = childOwners[0][1];
      // each process logs its instance id when it joins
      const victim = children.find((p) => p.stderr.includes(victimId));
      expect(victim, 'the process of the busiest child instance').not.to.equal(undefined);
      const t0 = Date.now();
      victim!.kill('SIGKILL');
      await victim!.exited;
      // a change while the victim's watches are nowhere: its bump reaches only the survivors
      upstreamVersion.value = 3;
      await bump(ws.map((w) => w.path));
      const deadline = Date.now() + 20_000;
      while (Date.now() < deadline && !ws.every((w) => version(w.updates.at(-1)) === 3)) await sleep(20);
      const converge = Date.now() - t0;
      const lost = ws.filter((w) => version(w.updates.at(-1)) !== 3).length;
      if (lost) { // diagnostics: what each instance logged, and each session's versions
        console.log(instances[0].logs.filter((l) => !l.includes('"debug"')).join(''));
        for (const p of children) console.log(p === victim ? 'VICTIM' : 'CHILD', p.stderr);
        console.log(ws.map((w) => w.updates.map((u) => version(u)).join(',')).join(' | '));
      }
      // and a later bump: exactly one Update per watch, from the survivors
      await waitFor('watches re-established on the survivors', async () => (await ownersOf()).every((o) => o !== victimId) && (await ownersOf()).length === ws.length, 10_000);
      await sleep(300);
      const before = ws.map((w) => w.updates.length);
      upstreamVersion.value = 4;
      await bump(ws.map((w) => w.path));
      await waitFor('everyone at version 4', () => ws.every((w) => version(w.updates.at(-1)) === 4), 10_000);
      await sleep(500);
      const after = ws.map((w, i) => w.updates.length - before[i]);
      console.log(`      fault: instance-kill lost=${lost} converge_ms=${converge} (killed instance owned ${onVictim} of ${ws.length} watches; Updates for the next bump: ${after.reduce((a, b) => a + b, 0)})`);
      expect(lost).to.equal(0);
      expect(after.every((n) => n === 1), `one Update each: ${after.join(',')}`).to.equal(true);
      const m = instances[0].waymark.metrics;
      expect((await m.peersLeft.get()).values[0].value, 'peer instances seen leaving').to.equal(1);
      expect((await m.peers.get()).values[0].value, 'peers left').to.equal(1);
    });

    it('a graceful stop of one of three instances hands its watches to the others', async function () {
      await start(3);
      const ws = await watchers(6);
      const leaving = instances.find((h) => h.waymark.registry.size > 0)!;
      instances.splice(instances.indexOf(leaving), 1);
      const t0 = Date.now();
      await leaving.close();
      upstreamVersion.value = 2;
      await bump(ws.map((w) => w.path));
      await waitFor('every session at version 2', () => ws.every((w) => version(w.updates.at(-1)) === 2), 15_000);
      await waitFor('all watches on the survivors', () => totalWatches() === ws.length, 10_000);
      console.log(`      fault: instance-stop lost=0 converge_ms=${Date.now() - t0} (graceful stop of one of 3 instances, ${ws.length} sessions converged)`);
    });

    it('an instance back from a lost router connection drops the watches others took meanwhile', async function () {
      await start(3);
      const ws = await watchers(9);
      const blip = instances.find((h) => h.waymark.registry.size > 0)!;
      const firstSession = blip.waymark.sessionId;
      // the transport drops; autobahn reconnects it with a new session
      (blip.waymark as unknown as { connection: { _transport: { close(): void } } }).connection._transport.close();
      await waitFor('the instance back with a new session', () => blip.waymark.sessionId !== undefined && blip.waymark.sessionId !== firstSession, 15_000);
      await waitFor('one copy of each watch', () => totalWatches() === ws.length, 10_000);
      // clients re-watch once, for the survivors' resync; a rejoin is not a restart, so the
      // instance itself announces only `rejoined`, on which clients re-watch nothing
      await waitFor('the re-watch done', () => ws.every((w) => w.resyncs.includes('resync')), 10_000);
      await quiet(() => ws.reduce((n, w) => n + w.updates.length, 0));
      const before = ws.map((w) => w.updates.length);
      upstreamVersion.value = 2;
      await bump(ws.map((w) => w.path));
      await waitFor('every session at version 2', () => ws.every((w) => version(w.updates.at(-1)) === 2), 10_000);
      await sleep(500);
      const got = ws.map((w, i) => w.updates.length - before[i]);
      console.log(`      router blip of one of 3 instances: watches ${totalWatches()} for ${ws.length} sessions, Updates for the next bump: ${got.reduce((a, b) => a + b, 0)}`);
      expect(got.every((n) => n === 1), `one Update each: ${got.join(',')}`).to.equal(true);
    });

    it('an in-process instance whose connection drops without a goodbye: its watches move to the others', async function () {
      await start(3);
      const ws = await watchers(9);
      const victim = instances.find((h) => h.waymark.registry.size > 0)!;
      const held = victim.waymark.registry.size;
      // simulate death: no reconnect, no more bumps, transport closed under the session
      const internals = victim.waymark as unknown as { status: string; connection: { _transport: { close(): void } } };
      const t0 = Date.now();
      internals.status = 'stopped';
      internals.connection._transport.close();
      upstreamVersion.value = 2;
      await bump(ws.map((w) => w.path));
      try {
        await waitFor('every session at version 2', () => ws.every((w) => version(w.updates.at(-1)) === 2), 15_000);
      } catch (e) { // diagnostics: what each instance logged, and each session's versions
        for (const h of instances) console.log(h === victim ? 'VICTIM' : 'SURVIVOR', h.logs.filter((l) => !l.includes('"debug"')).join(''));
        console.log(ws.map((w) => w.updates.map((u) => version(u)).join(',')).join(' | '));
        throw e;
      }
      const survivors = instances.filter((h) => h !== victim);
      await waitFor('all watches on the survivors', () => survivors.reduce((n, h) => n + h.waymark.registry.size, 0) === ws.length, 10_000);
      console.log(`      fault: instance-drop lost=0 converge_ms=${Date.now() - t0} (${held} watches moved, all ${ws.length} sessions converged)`);
    });
  });
});
