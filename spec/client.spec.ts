import { expect } from 'chai';
import { connectWaymark, type ClientUpdate, type ConnectionState, type WaymarkClient } from '../lib/client/client.js';
import { testEnv, waitFor } from './helpers/env.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { Upstream, upstreamVersion } from './helpers/upstream.js';

describe('waymark/client', function () {
  let api: Upstream;
  let wm: Harness;
  let client: WaymarkClient | undefined;

  beforeEach(async function () {
    upstreamVersion.value = 1;
    api = await new Upstream().start();
    wm = await startWaymark(api.url);
  });

  afterEach(async function () {
    await client?.close();
    client = undefined;
    await wm.close();
    await api.close();
  });

  it('watches with a snapshot, parses JSON bodies, and hands each callback only its own watch', async function () {
    client = await connectWaymark({ url: testEnv.routerUrl, realm: testEnv.realm });
    expect(client.state).to.equal('open');
    const a: ClientUpdate[] = [];
    const b: ClientUpdate[] = [];
    const wa = await client.watch('/a', { token: 'ta', snapshot: true }, (u) => a.push(u));
    await client.watch('/b', { token: 'tb' }, (u) => b.push(u));
    expect(a).to.have.length(1);
    expect(a[0].json).to.deep.include({ path: '/a', token: 'ta' });
    upstreamVersion.value = 2;
    await wm.bump(JSON.stringify({ paths: ['/a', '/b'] }));
    await waitFor('both updates', () => a.length === 2 && b.length === 1);
    expect(a.every((u) => u.path === '/a')).to.equal(true);
    expect(b[0].json).to.deep.include({ path: '/b', token: 'tb', version: 2 });
    await wa.unwatch();
    upstreamVersion.value = 3;
    await wm.bump(JSON.stringify({ paths: ['/a', '/b'] }));
    await waitFor('b again', () => b.length === 2);
    expect(a).to.have.length(2);
  });

  it('re-watches everything after a reconnect with a new session id, catching up on what changed meanwhile', async function () {
    client = await connectWaymark({ url: testEnv.routerUrl, realm: testEnv.realm, maxRetryDelay: 0.5 });
    const states: ConnectionState[] = [];
    client.on('state', (s) => states.push(s));
    const got: ClientUpdate[] = [];
    const w = await client.watch('/r', { token: 't' }, (u) => got.push(u));
    const oldId = w.id!;
    expect(wm.waymark.registry.get(oldId)).not.to.equal(undefined);
    // drop the WebSocket under the client, as a network blip would, and change the data meanwhile
    (client as unknown as { connection: { _transport: { close(): void } } }).connection._transport.close();
    upstreamVersion.value = 4;
    await wm.bump('/r');
    await waitFor('a new session with the watch again', () => states.includes('open') && w.id !== oldId
      && wm.waymark.registry.size === 1 && wm.waymark.registry.get(oldId) === undefined, 10_000);
    // the change made while away arrives as the re-watch's snapshot
    await waitFor('the catch-up after the reconnect', () => got.some((u) => (u.json as { version?: number })?.version === 4));
    const before = got.length;
    upstreamVersion.value = 5;
    await wm.bump('/r');
    await waitFor('the update after the reconnect', () => got.length === before + 1);
    expect(got.at(-1)!.json).to.deep.include({ version: 5 });
    expect(states).to.include('reconnecting');
  });

  it('re-watches after a Waymark restart, announced on waymark.announce', async function () {
    client = await connectWaymark({ url: testEnv.routerUrl, realm: testEnv.realm, rewatchJitterMs: 10 });
    const got: ClientUpdate[] = [];
    let resyncs = 0;
    client.on('resync', () => { resyncs += 1; });
    await client.watch('/restart', { token: 't' }, (u) => got.push(u));
    await wm.close();
    wm = await startWaymark(api.url);
    await waitFor('the client to re-watch on the new instance', () => wm.waymark.registry.size === 1 && resyncs === 1);
    await wm.bump('/restart');
    await waitFor('the update from the new instance', () => got.length === 1);
  });

  it('drops an Update older than the newest one seen', async function () {
    client = await connectWaymark({ url: testEnv.routerUrl, realm: testEnv.realm });
    const got: ClientUpdate[] = [];
    const w = await client.watch('/o', { token: 't', snapshot: true }, (u) => got.push(u));
    const internal = client as unknown as { onUpdate(u: unknown): void };
    internal.onUpdate({ ...got[0], fetchedAt: got[0].fetchedAt - 1000, body: 'stale' });
    internal.onUpdate({ ...got[0], watch: 'wSomebodyElse', fetchedAt: got[0].fetchedAt + 1000 });
    expect(got).to.have.length(1);
    expect(w.id).to.equal(got[0].watch);
  });

  it('refresh replaces the credentials of every watch', async function () {
    client = await connectWaymark({ url: testEnv.routerUrl, realm: testEnv.realm });
    const got: ClientUpdate[] = [];
    await client.watch('/f', { token: 'old' }, (u) => got.push(u));
    expect(await client.refresh({ token: 'new' })).to.deep.equal({ updated: 1 });
    await wm.bump('/f');
    await waitFor('the update', () => got.length === 1);
    expect(got[0].json).to.deep.include({ token: 'new' });
  });
});
