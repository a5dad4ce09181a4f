import { expect } from 'chai';
import autobahn from 'autobahn';
import { connectWaymark, WaymarkClient, WaymarkClientError, type ClientUpdate, type ConnectionState } from '../lib/client/client.js';
import { PROC_AUTHORIZE } from '../lib/protocol/uris.js';
import { sleep, testEnv, waitFor } from './helpers/env.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { Upstream, upstreamVersion } from './helpers/upstream.js';
import { Client } from './helpers/wamp-client.js';

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

  it('two watches of one path on one connection share the server watch: both get its Updates, it ends with the last unwatch', async function () {
    client = await connectWaymark({ url: testEnv.routerUrl, realm: testEnv.realm });
    const a: ClientUpdate[] = [];
    const b: ClientUpdate[] = [];
    const wa = await client.watch('/same', { token: 't' }, (u) => a.push(u));
    const wb = await client.watch('/same', { token: 't' }, (u) => b.push(u));
    expect(wa.id).to.equal(wb.id);
    upstreamVersion.value = 2;
    await wm.bump('/same');
    await waitFor('both handles', () => a.length === 1 && b.length === 1);
    await wa.unwatch();
    expect(wm.waymark.registry.get(wb.id!), 'the server watch stays for the other handle').not.to.equal(undefined);
    upstreamVersion.value = 3;
    await wm.bump('/same');
    await waitFor('the remaining handle', () => b.length === 2);
    expect(a).to.have.length(1);
    await wb.unwatch();
    await waitFor('the server watch gone', () => wm.waymark.registry.size === 0);
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

  it('hands over Updates in the order received, whatever their fetchedAt, and only its own watch\'s', async function () {
    client = await connectWaymark({ url: testEnv.routerUrl, realm: testEnv.realm });
    const got: ClientUpdate[] = [];
    const w = await client.watch('/o', { token: 't', snapshot: true }, (u) => got.push(u));
    const internal = client as unknown as { onUpdate(u: unknown): void };
    internal.onUpdate({ ...got[0], fetchedAt: got[0].fetchedAt - 1000, body: 'stamped earlier' });
    internal.onUpdate({ ...got[0], watch: 'wSomebodyElse', fetchedAt: got[0].fetchedAt + 1000 });
    internal.onUpdate({ ...got[0], path: '/not-o', fetchedAt: got[0].fetchedAt + 1000 });
    expect(got.map((u) => u.body).slice(1)).to.deep.equal(['stamped earlier']);
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

describe('waymark/client while Waymark is away', function () {
  this.timeout(20_000);
  let api: Upstream;
  let wm: Harness | undefined;
  let client: WaymarkClient | undefined;
  let standIn: Client | undefined;

  beforeEach(async function () {
    upstreamVersion.value = 1;
    api = await new Upstream().start();
  });

  afterEach(async function () {
    await client?.close();
    client = undefined;
    await wm?.close();
    wm = undefined;
    await standIn?.close();
    standIn = undefined;
    await api.close();
  });

  /** The client's errors, as reported. */
  const errorsOf = (c: WaymarkClient) => {
    const out: WaymarkClientError[] = [];
    c.on('error', (e) => out.push(e as WaymarkClientError));
    return out;
  };

  it('a first connect before Waymark has registered retries, and resolves once it is open', async function () {
    const c = new WaymarkClient({ url: testEnv.routerUrl, realm: testEnv.realm, maxRetryDelay: 0.3 });
    client = c;
    const errors = errorsOf(c);
    const states: ConnectionState[] = [];
    c.on('state', (st) => states.push(st));
    let opened = false;
    const open = c.open().then(() => { opened = true; });
    open.catch(() => undefined); // close() in afterEach rejects it when an assertion failed first
    await waitFor('two refused attempts', () => errors.length >= 2);
    expect(opened).to.equal(false);
    expect(c.state).to.equal('connecting');
    expect(errors[0]).to.be.instanceOf(WaymarkClientError);
    expect(errors[0]).to.include({ uri: 'wamp.error.authorization_failed', step: 'subscribe' });
    expect(errors[0].retryInMs).to.be.a('number').and.at.most(300);
    wm = await startWaymark(api.url);
    await open;
    expect(c.state).to.equal('open');
    const got: ClientUpdate[] = [];
    await c.watch('/first', { token: 't', snapshot: true }, (u) => got.push(u));
    expect(got).to.have.length(1);
    expect(states).to.deep.equal(['open']);
  });

  it('a session lost mid-retry stops retrying; the new session retries on its own', async function () {
    const c = new WaymarkClient({ url: testEnv.routerUrl, realm: testEnv.realm, maxRetryDelay: 0.3 });
    client = c;
    const errors = errorsOf(c);
    const open = c.open();
    open.catch(() => undefined); // close() in afterEach rejects it when an assertion failed first
    await waitFor('a refused attempt', () => errors.length >= 1);
    type JoinView = { session: { id: number }; failures: number; timer?: unknown };
    const internals = c as unknown as { join?: JoinView; connection: { _transport: { close(): void } } };
    const old = internals.join!;
    const before = errors.length;
    internals.connection._transport.close();
    await waitFor('a new session', () => internals.join !== undefined && internals.join !== old);
    const failures = old.failures;
    expect(old.timer).to.equal(undefined);
    await waitFor('refused attempts on the new session', () => internals.join!.failures >= 2);
    expect(old.failures).to.equal(failures);
    // every error since the drop is one of the new session's attempts
    expect(errors.length - before).to.equal(internals.join!.failures);
    wm = await startWaymark(api.url);
    await open;
    expect(c.state).to.equal('open');
  });

  it('close() before the first join completes rejects open() and stops retrying', async function () {
    const c = new WaymarkClient({ url: testEnv.routerUrl, realm: testEnv.realm, maxRetryDelay: 0.3 });
    const errors = errorsOf(c);
    const open = c.open().then(() => 'opened', (e: Error) => e.message);
    await waitFor('a refused attempt', () => errors.length >= 1);
    await c.close();
    expect(await open).to.equal('closed before it opened');
    const n = errors.length;
    await sleep(700);
    expect(errors.length).to.equal(n);
    expect(c.state).to.equal('closed');
  });

  it('a re-watch refused after a lost session catches up (snapshot) when Waymark announces itself, before the next back-off step', async function () {
    wm = await startWaymark(api.url);
    client = await connectWaymark({ url: testEnv.routerUrl, realm: testEnv.realm, maxRetryDelay: 10, rewatchJitterMs: 20 });
    const errors = errorsOf(client);
    const got: ClientUpdate[] = [];
    await client.watch('/late', { token: 't' }, (u) => got.push(u));
    // A stand-in keeps the authorizer registered (as when Waymark has registered it but not yet
    // its procedures): browsers may subscribe, and a watch finds no callee.
    standIn = await Client.connect({ authid: testEnv.authid, ticket: testEnv.ticket });
    await standIn.session.register(PROC_AUTHORIZE, () => false, { invoke: 'roundrobin' } as autobahn.IRegisterOptions);
    await wm.close();
    wm = undefined;
    // the client's own connection drops too: its watch must be made again on a new session
    (client as unknown as { connection: { _transport: { close(): void } } }).connection._transport.close();
    await waitFor('four refused re-watches', () => errors.filter((e) => e.step === 'watch').length >= 4, 10_000);
    expect(errors.at(-1)).to.include({ uri: 'wamp.error.no_such_procedure', path: '/late' });
    expect(client.state).to.equal('reconnecting');
    upstreamVersion.value = 7; // changed while nobody could tell the client; no bump follows
    const last = errors.at(-1)!;
    const nextRetry = last.retryInMs! + Date.now();
    wm = await startWaymark(api.url);
    await waitFor('the catch-up', () => (got.at(-1)?.json as { version?: number } | undefined)?.version === 7, 10_000);
    expect(Date.now(), 'caught up before the back-off step was due').to.be.below(nextRetry);
    expect(errors.at(-1)).to.equal(last);
    await waitFor('open again', () => client!.state === 'open');
  });
});
