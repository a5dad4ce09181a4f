import { expect } from 'chai';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Counter } from 'prom-client';
import { parseCacheControl, parseVary } from '../lib/engine/shared-fetch.js';
import { loadConfig } from '../lib/protocol/config.js';
import { ConfigError } from '../lib/protocol/errors.js';
import type { Update, WatchResult } from '../lib/protocol/types.js';
import { PROC_WATCH } from '../lib/protocol/uris.js';
import { sleep, waitFor } from './helpers/env.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { Upstream } from './helpers/upstream.js';
import { ClientPool, type Client } from './helpers/wamp-client.js';

/** What the API answers one request: status, headers, and whether the body is public (no token in it) or the caller's own. */
interface Answer {
  status?: number;
  headers?: Record<string, string>;
  scope: 'public' | 'private';
}

const PUBLIC: Answer = { headers: { 'cache-control': 'public, max-age=60' }, scope: 'public' };

/**
 * An API whose answer the spec decides per token. A public body names no token (and echoes the
 * Accept it was asked with, so a Vary split shows); a private body names the token it was asked
 * with, so any Update carrying another watcher's token is a leak.
 */
class ShareApi {
  version = 1;
  answer: (token: string) => Answer = () => PUBLIC;
  /** ms to hold the answer to a request with this X-Waymark */
  delay: (reason: string) => number = () => 0;
  handler = (req: IncomingMessage, res: ServerResponse): void => {
    const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
    // decided when the request arrives, sent after the delay
    const a = this.answer(token);
    const body = a.scope === 'public'
      ? { scope: 'public', version: this.version, accept: req.headers.accept }
      : { scope: 'private', version: this.version, token };
    const send = () => res.writeHead(a.status ?? 200, { 'content-type': 'application/json', ...a.headers }).end(JSON.stringify(body));
    const ms = this.delay(String(req.headers['x-waymark'] ?? ''));
    if (ms > 0) setTimeout(send, ms);
    else send();
  };
}

/** The value of a counter (with these labels), as /metrics reports it. */
async function valueOf(counter: Counter, labels: Record<string, string> = {}): Promise<number> {
  const { values } = await counter.get();
  return values.find((x) => Object.entries(labels).every(([k, l]) => x.labels[k] === l))?.value ?? 0;
}

interface Watcher {
  client: Client;
  token: string;
  accept?: string;
}

describe('one fetch for what the API says is shareable (contract 12)', function () {
  this.timeout(30_000);
  let api: Upstream;
  let model: ShareApi;
  let wm: Harness | undefined;
  const pool = new ClientPool();
  let bumps = 0;

  const start = async (env: Record<string, string> = {}) => {
    wm = await startWaymark(api.url, env);
    return wm;
  };

  /** Watchers with these tokens (and Accepts) on `path`, each with its snapshot. */
  const watchers = async (path: string, specs: Array<{ token: string; accept?: string }>, snapshot = true): Promise<Watcher[]> => {
    const out: Watcher[] = [];
    for (const s of specs) {
      const client = await pool.open();
      await client.call<WatchResult>(PROC_WATCH, [path, { token: s.token, snapshot, ...(s.accept ? { headers: { accept: s.accept } } : {}) }]);
      out.push({ client, ...s });
    }
    return out;
  };

  /** Requests the API saw for one X-Waymark value, as their bearer tokens, sorted. */
  const tokensFor = (reason: string) => api.requests.filter((r) => r.headers['x-waymark'] === reason)
    .map((r) => (r.headers.authorization ?? '').replace('Bearer ', '')).sort();

  /** Change the API's data, bump `path`, and wait until every watcher in `expectUpdate` got an Update of that bump. */
  const bump = async (path: string, expectUpdate: Watcher[]): Promise<string> => {
    model.version += 1;
    const id = `share-${++bumps}`;
    await wm!.bump(JSON.stringify({ path, id }));
    await waitFor(`every watcher's Update of ${id}`, () => expectUpdate.every((w) => w.client.updates.some((u) => u.bump?.id === id)));
    // what a slower second fetch (an own refetch after a shared answer) would still send
    await sleep(150);
    return id;
  };

  /** No watcher ever received a body made with another watcher's credentials, or for another Accept. */
  const expectNoLeak = (ws: Watcher[]) => {
    for (const w of ws) {
      for (const u of w.client.updates) {
        if (!u.body) continue;
        const b = JSON.parse(u.body) as { scope: string; token?: string; accept?: string };
        if (b.scope === 'private') expect(b.token, `${w.token} received ${u.body}`).to.equal(w.token);
        else expect(b.accept, `${w.token} (accept ${w.accept}) received ${u.body}`).to.equal(w.accept ?? 'application/json');
      }
    }
  };

  const last = (w: Watcher): Update => w.client.updates[w.client.updates.length - 1];

  beforeEach(async function () {
    model = new ShareApi();
    api = await new Upstream().start();
    api.handler = model.handler;
  });

  afterEach(async function () {
    await pool.closeAll();
    await wm?.close();
    wm = undefined;
    await api.close();
  });

  describe('parsing (RFC 9111 5.2, RFC 9110 12.5.5)', function () {
    it('reads public, private and no-store by name, in any case, not inside a quoted argument', function () {
      expect(parseCacheControl('Public, max-age=60')).to.deep.equal({ public: true, private: false, noStore: false });
      expect(parseCacheControl('public, private="set-cookie, x-user"')).to.deep.include({ public: true, private: true });
      expect(parseCacheControl('no-cache="public, x", max-age=0')).to.deep.equal({ public: false, private: false, noStore: false });
      expect(parseCacheControl('public,NO-STORE')).to.deep.include({ noStore: true });
      expect(parseCacheControl('publicity')).to.deep.include({ public: false });
      expect(parseCacheControl(undefined)).to.deep.include({ public: false });
    });

    it('WAYMARK_SHARE_PUBLIC: on by default, false turns it off, anything else names the setting', function () {
      const api = { WAYMARK_API_URL: 'http://127.0.0.1:8000' };
      expect(loadConfig(api).sharePublic).to.equal(true);
      expect(loadConfig({ ...api, WAYMARK_SHARE_PUBLIC: 'false' }).sharePublic).to.equal(false);
      let err: unknown;
      try {
        loadConfig({ ...api, WAYMARK_SHARE_PUBLIC: 'sometimes' });
      } catch (e) {
        err = e;
      }
      expect(err).to.be.instanceOf(ConfigError);
      expect((err as ConfigError).setting).to.equal('WAYMARK_SHARE_PUBLIC');
    });

    it('Vary: names sorted, *, Authorization and Cookie turn sharing off', function () {
      expect(parseVary('Accept-Language, accept ,accept')).to.deep.equal(['accept', 'accept-language']);
      expect(parseVary(undefined)).to.deep.equal([]);
      for (const v of ['*', 'accept, *', 'Authorization', 'accept, cookie', 'COOKIE']) expect(parseVary(v), v).to.equal(null);
    });
  });

  it('N distinct tokens on a public path: one request per bump per Vary value; every watcher gets every change', async function () {
    await start();
    const n = 8;
    const rows: string[] = [];
    // no Vary: one value
    const plain = await watchers('/feed', Array.from({ length: n }, (_, i) => ({ token: `plain${i}` })));
    expect(tokensFor('snapshot')).to.have.length(n); // snapshots use each watcher's own credentials
    const perBump: number[] = [];
    for (let k = 0; k < 3; k++) perBump.push(tokensFor(await bump('/feed', plain)).length);
    expect(perBump).to.deep.equal([1, 1, 1]);
    expect(await valueOf(wm!.waymark.metrics.sharedFetches, { result: 'shared' })).to.equal(3);
    // round robin: three bumps asked with three different members' credentials
    expect(new Set(api.requests.filter((r) => /^share-/.test(String(r.headers['x-waymark']))).map((r) => r.headers.authorization)).size).to.equal(3);
    for (const w of plain) expect(JSON.parse(last(w).body)).to.deep.include({ scope: 'public', version: model.version });
    expectNoLeak(plain);
    rows.push(`shared fetch: ${n} tokens, 1 vary values -> requests per bump ${perBump[2]}`);

    // Vary: accept, two values among the watchers of another path
    model.answer = () => ({ headers: { 'cache-control': 'public', vary: 'Accept' }, scope: 'public' });
    const split = await watchers('/split', Array.from({ length: n }, (_, i) => ({ token: `split${i}`, accept: i % 2 === 0 ? 'application/json' : 'application/vnd.api+json' })));
    const splitCounts: number[] = [];
    for (let k = 0; k < 2; k++) splitCounts.push(tokensFor(await bump('/split', split)).length);
    expect(splitCounts).to.deep.equal([2, 2]);
    expectNoLeak(split);
    rows.push(`shared fetch: ${n} tokens, 2 vary values -> requests per bump ${splitCounts[1]}`);
    for (const r of rows) console.log(`      ${r}`);
  });

  it('WAYMARK_SHARE_PUBLIC=false: one request per credential', async function () {
    await start({ WAYMARK_SHARE_PUBLIC: 'false' });
    const ws = await watchers('/feed', Array.from({ length: 5 }, (_, i) => ({ token: `off${i}` })));
    const id = await bump('/feed', ws);
    expect(tokensFor(id)).to.deep.equal(ws.map((w) => w.token).sort());
    console.log(`      shared fetch off: 5 tokens, 1 vary values -> requests per bump ${tokensFor(id).length}`);
  });

  for (const [name, vary] of [['Vary: Authorization', 'Authorization'], ['Vary: Cookie', 'accept, Cookie'], ['Vary: *', '*']]) {
    it(`${name} turns sharing off for the path`, async function () {
      await start();
      model.answer = (token) => ({ headers: { 'cache-control': 'public', vary }, scope: token === 'v0' ? 'public' : 'private' });
      const ws = await watchers('/feed', [{ token: 'v0' }, { token: 'v1' }, { token: 'v2' }]);
      const id = await bump('/feed', ws);
      expect(tokensFor(id)).to.deep.equal(['v0', 'v1', 'v2']);
      expectNoLeak(ws);
    });
  }

  it('public for A, private (another body) for B on one path: B is never on the share and never sees A\'s body, nor A B\'s', async function () {
    await start();
    model.answer = (token) => (token.startsWith('a') ? PUBLIC : { headers: { 'cache-control': 'private' }, scope: 'private' });
    const ws = await watchers('/me', [{ token: 'a1' }, { token: 'b1' }, { token: 'a2' }, { token: 'b2' }, { token: 'a3' }]);
    for (let k = 0; k < 3; k++) {
      const id = await bump('/me', ws);
      // one shared request (one of the a's) and each b's own
      const t = tokensFor(id);
      expect(t.filter((x) => x.startsWith('b'))).to.deep.equal(['b1', 'b2']);
      expect(t.filter((x) => x.startsWith('a'))).to.have.length(1);
    }
    expectNoLeak(ws);
    for (const w of ws) expect(JSON.parse(last(w).body).scope).to.equal(w.token.startsWith('a') ? 'public' : 'private');
  });

  // Every kind of answer that must not be shared, given to the shared fetch after the path was public for all.
  const notShareable: Array<[string, Answer]> = [
    ['Cache-Control: private', { headers: { 'cache-control': 'private' }, scope: 'private' }],
    ['public, private', { headers: { 'cache-control': 'public, private' }, scope: 'private' }],
    ['public, private="x-user"', { headers: { 'cache-control': 'public, private="x-user"' }, scope: 'private' }],
    ['public, no-store', { headers: { 'cache-control': 'public, no-store' }, scope: 'private' }],
    ['no Cache-Control', { scope: 'private' }],
    ['no-cache without public', { headers: { 'cache-control': 'no-cache' }, scope: 'private' }],
    ['public with Vary: Authorization', { headers: { 'cache-control': 'public', vary: 'Authorization' }, scope: 'private' }],
    ['public with Vary: *', { headers: { 'cache-control': 'public', vary: '*' }, scope: 'private' }],
    ['public with another Vary', { headers: { 'cache-control': 'public', vary: 'Accept-Language' }, scope: 'private' }],
    ['public 404', { status: 404, headers: { 'cache-control': 'public' }, scope: 'private' }],
    ['public 403', { status: 403, headers: { 'cache-control': 'public' }, scope: 'private' }],
    ['public 500', { status: 500, headers: { 'cache-control': 'public' }, scope: 'private' }],
  ];
  it('a path that turns from public to private between bumps: no watcher gets another\'s private body (each kind of answer that must not be shared)', async function () {
    await start({ WAYMARK_LOG_LEVEL: 'info' });
    const n = 3;
    for (const [i, [name, flipped]] of notShareable.entries()) {
      model.answer = () => PUBLIC;
      const path = `/flip/${i}`;
      const ws = await watchers(path, Array.from({ length: n }, (_, k) => ({ token: `f${i}-${k}` })));
      expect(tokensFor(await bump(path, ws)), name).to.have.length(1);
      model.answer = () => flipped;
      const ended = await valueOf(wm!.waymark.metrics.sharedFetches, { result: 'ended' });
      const id = await bump(path, ws);
      // the shared request (its answer is the asking member's own), then each other member's own at once (a 500 is retried besides)
      if (flipped.status === 500) expect(tokensFor(id).length, name).to.be.at.least(n);
      else expect(tokensFor(id), name).to.have.length(n);
      expect(await valueOf(wm!.waymark.metrics.sharedFetches, { result: 'ended' }), name).to.equal(ended + 1);
      expect(new Set(tokensFor(id)).size, name).to.equal(n);
      expectNoLeak(ws);
      for (const w of ws) {
        const u = last(w);
        expect(u.bump?.id, name).to.equal(id);
        expect(u.status, name).to.equal(flipped.status ?? 200);
        expect(JSON.parse(u.body), name).to.deep.include({ scope: 'private', token: w.token });
      }
      // a 403 suspended them all (as without sharing)
      if (flipped.status === 403) continue;
      // back to public: each own answer rejoins (a share of another Vary asks once, and on that
      // answer's other Vary each other member asks on its own), and the next bump is shared again
      model.answer = () => PUBLIC;
      expect(tokensFor(await bump(path, ws)), name).to.have.length(n);
      expect(tokensFor(await bump(path, ws)), name).to.have.length(1);
      expectNoLeak(ws);
    }
  });

  it('a member whose own answer turns private while a shared fetch is in flight gets its own fetch for that bump, not the shared answer', async function () {
    await start();
    const ws = await watchers('/feed', [{ token: 'm0' }, { token: 'm1' }, { token: 'm2' }]);
    // two shared bumps: the third is asked with m2's credentials (round robin)
    await bump('/feed', ws);
    await bump('/feed', ws);
    model.answer = (token) => (token === 'm1' ? { headers: { 'cache-control': 'private' }, scope: 'private' } : PUBLIC);
    model.delay = (reason) => (reason.startsWith('share-') ? 400 : 0);
    model.version += 1;
    const id = `share-${++bumps}`;
    await wm!.bump(JSON.stringify({ path: '/feed', id }));
    await waitFor('the shared request', () => tokensFor(id).length === 1);
    // m1's credentials now get a private answer, by a snapshot of another watch of m1
    const [late] = await watchers('/feed', [{ token: 'm1' }]);
    await waitFor(`every watcher's Update of ${id}`, () => ws.every((w) => w.client.updates.some((u) => u.bump?.id === id)));
    expect(tokensFor(id)).to.deep.equal(['m1', 'm2']);
    expect(JSON.parse(last(ws[1]).body)).to.deep.equal({ scope: 'private', version: model.version, token: 'm1' });
    for (const w of [ws[0], ws[2]]) expect(JSON.parse(last(w).body)).to.deep.include({ scope: 'public', version: model.version });
    expectNoLeak([...ws, late]);
  });

  it('a revoked member gets its own 401 (on its turn), is suspended, and the others never see it', async function () {
    await start();
    const ws = await watchers('/feed', [{ token: 'r0' }, { token: 'r1' }, { token: 'r2' }]);
    model.answer = (token) => (token === 'r1' ? { status: 401, scope: 'private' } : PUBLIC);
    const [r0, r1, r2] = ws;
    // the share asks each member in turn: within three bumps r1's credentials are asked
    for (let k = 0; k < 3 && !r1.client.updates.some((u) => u.status === 401); k++) await bump('/feed', [r0, r2]);
    expect(r1.client.updates.filter((u) => u.status === 401)).to.have.length(1);
    expect(JSON.parse(last(r1).body)).to.deep.equal({ scope: 'private', version: model.version, token: 'r1' });
    for (const w of [r0, r2]) expect(w.client.updates.map((u) => u.status)).to.not.include(401);
    // suspended: later bumps ask without r1, still shared between r0 and r2
    const before = r1.client.updates.length;
    const id = await bump('/feed', [r0, r2]);
    expect(tokensFor(id)).to.have.length(1);
    expect(tokensFor(id)).to.not.include('r1');
    expect(r1.client.updates).to.have.length(before);
    expectNoLeak(ws);
  });

  it('snapshots and first fetches use the watcher\'s own credentials, also on a shared path', async function () {
    await start();
    const ws = await watchers('/feed', [{ token: 's0' }, { token: 's1' }]);
    await bump('/feed', ws);
    api.requests.length = 0;
    // a snapshot of a new watcher: its own credentials
    const [late] = await watchers('/feed', [{ token: 's2' }]);
    expect(tokensFor('snapshot')).to.deep.equal(['s2']);
    // a watcher without a snapshot: its first fetch is its own, beside the share's one request
    const [cold] = await watchers('/feed', [{ token: 's3' }], false);
    const id = await bump('/feed', [...ws, late, cold]);
    const t = tokensFor(id);
    expect(t).to.include('s3');
    expect(t).to.have.length(2);
    // and from then on it shares
    expect(tokensFor(await bump('/feed', [...ws, late, cold]))).to.have.length(1);
    expectNoLeak([...ws, late, cold]);
  });

  it('revalidation is shared too: one request per turn for all members', async function () {
    await start({ WAYMARK_MIN_REVALIDATE_MS: '300' });
    const ws: Watcher[] = [];
    for (let i = 0; i < 4; i++) {
      const client = await pool.open();
      await client.call(PROC_WATCH, ['/feed', { token: `rv${i}`, snapshot: true, revalidateMs: 600 }]);
      ws.push({ client, token: `rv${i}` });
    }
    const since = api.requests.length;
    await sleep(2_000);
    const turns = api.requests.slice(since).filter((r) => r.headers['x-waymark'] === 'revalidate');
    // unshared this is about 4 x 2000/600 = 13; shared, at most about two per period
    expect(turns.length).to.be.within(1, 8);
    console.log(`      shared revalidation: 4 tokens, period 600 ms, 2 s -> ${turns.length} requests (unshared about 13)`);
    model.version += 1;
    await waitFor('every watcher revalidated to the new version', () => ws.every((w) => w.client.updates.length > 0 && JSON.parse(last(w).body).version === model.version), 3_000);
    expectNoLeak(ws);
  });
});
