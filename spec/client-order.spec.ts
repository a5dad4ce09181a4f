import { expect } from 'chai';
import type autobahn from 'autobahn';
import { connectWaymark, type ClientUpdate, type WaymarkClient } from '../lib/client/client.js';
import type { Update } from '../lib/protocol/types.js';
import { sessionTopic } from '../lib/protocol/uris.js';
import { watchId } from '../lib/engine/watch-registry.js';
import { sleep, testEnv, waitFor } from './helpers/env.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { echoToken, Upstream, upstreamVersion } from './helpers/upstream.js';
import { Client } from './helpers/wamp-client.js';

/**
 * Issue 16, fault 1 (ordering): the client orders a watch's Updates by receipt, never by the
 * `fetchedAt` wall clock of whichever instance fetched them.
 */
describe('waymark/client ordering without wall clocks', function () {
  this.timeout(20_000);
  let api: Upstream;
  let wm: Harness;
  let client: WaymarkClient | undefined;
  const publishers: Client[] = [];

  beforeEach(async function () {
    upstreamVersion.value = 1;
    api = await new Upstream().start();
    wm = await startWaymark(api.url);
  });

  afterEach(async function () {
    await client?.close();
    client = undefined;
    for (const p of publishers.splice(0)) await p.close();
    await wm.close();
    await api.close();
  });

  const versionOf = (u: ClientUpdate): unknown => (u.json as { version?: unknown } | undefined)?.version;
  const sessionOf = (c: WaymarkClient): autobahn.Session => (c as unknown as { session: autobahn.Session }).session;

  /** A second publisher on the client's topic, as another Waymark instance is (backend role). */
  async function instance(): Promise<Client> {
    const p = await Client.connect({ authid: testEnv.authid, ticket: testEnv.ticket });
    publishers.push(p);
    return p;
  }

  async function publish(from: Client, to: number, update: Update): Promise<void> {
    await from.session.publish(sessionTopic(to), [update], {}, { acknowledge: true, eligible: [to] } as autobahn.IPublishOptions);
  }

  function updateFor(watch: string, path: string, version: string, fetchedAt: number): Update {
    return {
      watch, path, status: 200, headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ path, version }), encoding: 'utf8', bump: { id: `b-${version}`, at: fetchedAt }, fetchedAt,
    };
  }

  it('steps of Waymark\'s wall clock (1 h ahead, then set right; 5 s, 1 min, 1 h back) do not silence a watch', async function () {
    client = await connectWaymark({ url: testEnv.routerUrl, realm: testEnv.realm });
    const got: ClientUpdate[] = [];
    await client.watch('/clock', { token: 't', snapshot: true }, (u) => got.push(u));
    expect(got).to.have.length(1);
    const realNow = Date.now;
    for (const stepMs of [-3_600_000, 0, 5_000, 60_000, 3_600_000]) {
      upstreamVersion.value += 1;
      const n = got.length;
      // The in-process component's clock steps back (NTP, a resumed VM): its fetcher stamps
      // fetchedAt with Date.now(). Waited for on the monotonic clock, then set right again.
      Date.now = () => realNow() - stepMs;
      try {
        await wm.bump('/clock');
        const until = performance.now() + 5_000;
        while (got.length === n && performance.now() < until) await sleep(10);
      } finally {
        Date.now = realNow;
      }
      expect(got, `the Update after a ${stepMs} ms step`).to.have.length(n + 1);
      expect(versionOf(got[n])).to.equal(upstreamVersion.value);
    }
    // the steps were in effect: an hour ahead, then each stamped before the one received before it
    expect(got[1].fetchedAt - got[0].fetchedAt).to.be.above(3_500_000);
    for (let i = 2; i < got.length; i += 1) expect(got[i].fetchedAt).to.be.below(got[i - 1].fetchedAt);
    upstreamVersion.value += 1;
    await wm.bump('/clock');
    await waitFor('the Update once the clock is right again', () => versionOf(got.at(-1)!) === upstreamVersion.value);
  });

  it('a watch moved to an instance whose clock is behind gets that instance\'s Updates, in the order received', async function () {
    client = await connectWaymark({ url: testEnv.routerUrl, realm: testEnv.realm });
    const got: ClientUpdate[] = [];
    const w = await client.watch('/moved', { token: 't', snapshot: true }, (u) => got.push(u));
    const sid = sessionOf(client).id;
    const [a, b] = [await instance(), await instance()];
    const now = Date.now();
    await publish(a, sid, updateFor(w.id!, '/moved', 'A', now + 2_000)); // the old owner's clock is ahead
    await publish(b, sid, updateFor(w.id!, '/moved', 'B1', now - 30_000)); // the new owner's is behind
    await publish(b, sid, updateFor(w.id!, '/moved', 'B2', now - 29_000));
    // not this watch's: another id, or this id with another path
    await publish(b, sid, updateFor(watchId(sid, '/other'), '/other', 'X', now + 60_000));
    await publish(b, sid, updateFor(w.id!, '/elsewhere', 'Y', now + 60_000));
    await waitFor('four Updates', () => got.length >= 4);
    await sleep(100);
    expect(got.map(versionOf)).to.deep.equal([1, 'A', 'B1', 'B2']);
  });

  /** Holds the API's answers for `path` until released: the snapshot fetch stays in flight. */
  function holdAnswers(path: string): () => void {
    const held: Array<() => void> = [];
    let holding = true;
    api.handler = (req, res) => {
      if (holding && req.url === path) held.push(() => echoToken(req, res));
      else echoToken(req, res);
    };
    return () => {
      holding = false;
      for (const answer of held.splice(0)) answer();
    };
  }

  it('a snapshot racing an Update of the same watch never overrides it, whatever the stamps (first watch)', async function () {
    client = await connectWaymark({ url: testEnv.routerUrl, realm: testEnv.realm });
    const sid = sessionOf(client).id;
    const release = holdAnswers('/race');
    const got: ClientUpdate[] = [];
    const watching = client.watch('/race', { token: 't', snapshot: true }, (u) => got.push(u));
    // Waymark has registered the watch and is fetching the snapshot: a bump's Update comes first
    const id = watchId(sid, '/race');
    await waitFor('the snapshot fetch in flight', () => wm.waymark.registry.get(id) && api.requestsFor('/race').length === 1);
    // 20 bumps meanwhile: the latest 16 are kept for the watch, the last one always
    const pub = await instance();
    for (let i = 1; i <= 20; i += 1) await publish(pub, sid, updateFor(id, '/race', `pushed-${i}`, Date.now() - 5_000));
    await sleep(50);
    release();
    const w = await watching;
    expect(w.id).to.equal(id);
    expect(got.map(versionOf)).to.deep.equal(Array.from({ length: 16 }, (_, i) => `pushed-${i + 5}`));
    // later Updates follow as usual
    upstreamVersion.value = 2;
    await wm.bump('/race');
    await waitFor('the next Update', () => got.length === 17);
    expect(versionOf(got[16])).to.equal(2);
  });

  it('a catch-up snapshot after a reconnect never overrides an Update received while it was fetched', async function () {
    client = await connectWaymark({ url: testEnv.routerUrl, realm: testEnv.realm, maxRetryDelay: 0.5 });
    const got: ClientUpdate[] = [];
    const w = await client.watch('/race2', { token: 't' }, (u) => got.push(u));
    const oldId = w.id!;
    const release = holdAnswers('/race2');
    (client as unknown as { connection: { _transport: { close(): void } } }).connection._transport.close();
    await waitFor('the catch-up snapshot in flight on a new session', () => {
      const s = sessionOf(client!);
      return s && s.id !== undefined && w.id === oldId && wm.waymark.registry.get(watchId(s.id, '/race2')) && api.requestsFor('/race2').length === 1;
    }, 10_000);
    const sid = sessionOf(client).id;
    await publish(await instance(), sid, updateFor(watchId(sid, '/race2'), '/race2', 'pushed', Date.now() - 5_000));
    await sleep(50);
    release();
    await waitFor('the re-watch', () => w.id === watchId(sid, '/race2') && client!.state === 'open');
    await sleep(100);
    expect(got.map(versionOf)).to.deep.equal(['pushed']);
  });
});
