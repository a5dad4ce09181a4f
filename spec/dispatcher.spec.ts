import { expect } from 'chai';
import { Dispatcher, usableValidators } from '../lib/engine/dispatcher.js';
import type { Fetcher } from '../lib/engine/fetcher.js';
import { silentLogger } from '../lib/support/logger.js';
import { Metrics } from '../lib/support/metrics.js';
import type { Publisher } from '../lib/engine/publisher.js';
import type { Bump, FetchRequest, FetchResult, SessionId, Update } from '../lib/protocol/types.js';
import { WatchRegistry } from '../lib/engine/watch-registry.js';
import { sleep, waitFor } from './helpers/env.js';

/** Recording fakes at our own seams (the only fakes in the suite). */
class RecordingFetcher implements Fetcher {
  readonly requests: FetchRequest[] = [];
  active = 0;
  maxActive = 0;
  body = 'v1';
  delayMs = 0;
  /** when set, answers with ETag "<body>" and 304 to a matching If-None-Match */
  etags = false;
  /** answers to come before the normal ones (e.g. a 503 with Retry-After) */
  scripted: Array<Partial<FetchResult>> = [];
  async fetch(req: FetchRequest): Promise<FetchResult> {
    this.requests.push(req);
    const body = this.body; // the API's state when the request arrives
    this.active += 1;
    this.maxActive = Math.max(this.maxActive, this.active);
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
    this.active -= 1;
    const base: FetchResult = { status: 200, headers: {}, body: `${body}:${req.headers.authorization ?? ''}`, encoding: 'utf8', fetchedAt: Date.now() };
    const scripted = this.scripted.shift();
    if (scripted) return { ...base, ...scripted };
    if (this.etags) {
      const etag = `"${body}"`;
      if (req.validators?.etag === etag) return { ...base, status: 304, body: '', validators: { etag } };
      return { ...base, validators: { etag } };
    }
    return base;
  }
  async close() {}
}

class RecordingPublisher implements Publisher {
  readonly published: Array<{ session: SessionId; update: Update }> = [];
  async publish(session: SessionId, update: Update) {
    this.published.push({ session, update });
  }
}

function bump(...paths: string[]): Bump {
  return { id: `b${Math.random()}`, paths, at: Date.now() };
}

describe('dispatcher', function () {
  let registry: WatchRegistry;
  let fetcher: RecordingFetcher;
  let publisher: RecordingPublisher;
  let dispatcher: Dispatcher;
  const make = (opts: { concurrency?: number; pushUnchanged?: boolean } = {}) => {
    registry = new WatchRegistry(100);
    fetcher = new RecordingFetcher();
    publisher = new RecordingPublisher();
    dispatcher = new Dispatcher({
      registry, fetcher, publisher, logger: silentLogger(), metrics: new Metrics(),
      concurrency: opts.concurrency ?? 64, pushUnchanged: opts.pushUnchanged ?? false,
    });
  };
  beforeEach(() => make());

  it('fetches every watch on exactly the bumped path and query with its own credentials and publishes to its owner', async function () {
    registry.upsert(1, '/a', { authorization: 'Bearer one' });
    registry.upsert(2, '/a', { authorization: 'Bearer two' });
    // A bump with a query reaches that query only (contract 11.1); /a/b is another path.
    registry.upsert(3, '/a?x=1', { authorization: 'Bearer three' });
    registry.upsert(4, '/a/b', { authorization: 'Bearer four' });
    registry.upsert(5, '/a?y=1', { authorization: 'Bearer one' });
    registry.upsert(1, '/a?y=1', { authorization: 'Bearer one' });
    const b = bump('/a?y=1');
    await dispatcher.dispatch(b);
    expect(fetcher.requests.map((r) => [r.path, r.headers.authorization, r.reason])).to.deep.equal([['/a?y=1', 'Bearer one', b.id]]);
    expect(publisher.published.map((p) => [p.session, p.update.body])).to.have.deep.members([[5, 'v1:Bearer one'], [1, 'v1:Bearer one']]);
    expect(publisher.published[0].update.bump).to.deep.equal({ id: b.id, at: b.at });
    // Without a query: every query of the path, each group with its own credentials, not /a/b.
    fetcher.requests.length = 0;
    const all = bump('/a');
    await dispatcher.dispatch(all);
    expect(fetcher.requests.map((r) => [r.path, r.headers.authorization, r.reason])).to.have.deep.members([
      ['/a', 'Bearer one', all.id], ['/a', 'Bearer two', all.id], ['/a?x=1', 'Bearer three', all.id], ['/a?y=1', 'Bearer one', all.id],
    ]);
  });

  it('publishes nothing when status and body equal what the session last received', async function () {
    registry.upsert(1, '/a', {});
    await dispatcher.dispatch(bump('/a'));
    await dispatcher.dispatch(bump('/a'));
    expect(fetcher.requests).to.have.length(2);
    expect(publisher.published).to.have.length(1);
    fetcher.body = 'v2';
    await dispatcher.dispatch(bump('/a'));
    expect(publisher.published).to.have.length(2);
  });

  it('publishes every result with pushUnchanged', async function () {
    make({ pushUnchanged: true });
    registry.upsert(1, '/a', {});
    await dispatcher.dispatch(bump('/a'));
    await dispatcher.dispatch(bump('/a'));
    expect(publisher.published).to.have.length(2);
  });

  it('publishes what new credentials see', async function () {
    registry.upsert(1, '/a', { authorization: 'Bearer same' });
    await dispatcher.dispatch(bump('/a'));
    registry.upsert(1, '/a', { cookie: 'x' });
    fetcher.body = 'v1';
    await dispatcher.dispatch(bump('/a'));
    expect(publisher.published).to.have.length(2);
  });

  it('never has more fetches in flight than the concurrency cap', async function () {
    make({ concurrency: 3 });
    fetcher.delayMs = 5;
    for (let s = 0; s < 20; s++) registry.upsert(s, '/a', { authorization: `Bearer ${s}` });
    await dispatcher.dispatch(bump('/a'));
    expect(fetcher.requests).to.have.length(20);
    expect(fetcher.maxActive).to.equal(3);
  });

  it('refetchAll (after an outage) refetches every group once under the cap and publishes only what changed', async function () {
    make({ concurrency: 2 });
    fetcher.delayMs = 2;
    for (let s = 0; s < 6; s++) for (const p of ['/a', '/b']) registry.upsert(s, p, { authorization: `Bearer ${s % 3}` });
    await dispatcher.dispatch(bump('/a', '/b'));
    expect(fetcher.requests).to.have.length(6); // 2 paths x 3 credentials
    expect(publisher.published).to.have.length(12);
    await dispatcher.refetchAll('resync');
    expect(fetcher.requests).to.have.length(12);
    expect(fetcher.requests.slice(6).every((r) => r.reason === 'resync')).to.equal(true);
    expect(publisher.published).to.have.length(12); // nothing changed: nothing pushed
    fetcher.body = 'v2';
    await dispatcher.refetchAll('resync');
    expect(publisher.published).to.have.length(24);
    expect(publisher.published.slice(12).every((p) => p.update.bump === null)).to.equal(true);
    expect(fetcher.maxActive).to.equal(2);
  });

  it('skips watches removed while they waited for a slot, and drops results of removed watches', async function () {
    make({ concurrency: 1 });
    fetcher.delayMs = 20;
    registry.upsert(1, '/a', {});
    registry.upsert(2, '/a', {});
    const done = dispatcher.dispatch(bump('/a'));
    registry.dropSession(1);
    registry.dropSession(2);
    await done;
    expect(fetcher.requests.length).to.be.at.most(1);
    expect(publisher.published).to.have.length(0);
  });

  it('drains in-flight work before a deadline', async function () {
    fetcher.delayMs = 50;
    registry.upsert(1, '/a', {});
    void dispatcher.dispatch(bump('/a'));
    expect(dispatcher.busy).to.equal(1);
    expect(await dispatcher.drain(1_000)).to.equal(0);
    expect(publisher.published).to.have.length(1);
  });
});

describe('dispatcher engine', function () {
  let registry: WatchRegistry;
  let fetcher: RecordingFetcher;
  let publisher: RecordingPublisher;
  let metrics: Metrics;
  let dispatcher: Dispatcher;
  beforeEach(() => {
    registry = new WatchRegistry(1000);
    fetcher = new RecordingFetcher();
    publisher = new RecordingPublisher();
    metrics = new Metrics();
    dispatcher = new Dispatcher({ registry, fetcher, publisher, logger: silentLogger(), metrics, concurrency: 4, pushUnchanged: false });
  });

  it('dedupes: watches with the same path and credentials share one fetch, each session gets its own Update', async function () {
    for (let s = 0; s < 30; s++) registry.upsert(s, '/a', { authorization: `Bearer t${s % 3}` });
    await dispatcher.dispatch(bump('/a'));
    expect(fetcher.requests).to.have.length(3);
    expect(publisher.published).to.have.length(30);
    expect(new Set(publisher.published.map((p) => p.update.watch)).size).to.equal(30);
    for (const p of publisher.published) expect(p.update.body).to.equal(`v1:Bearer t${p.session % 3}`);
  });

  it('coalesces: a burst of 100 bumps costs at most 2 fetches per credential, and the latest state wins', async function () {
    fetcher.delayMs = 20;
    for (let s = 0; s < 10; s++) registry.upsert(s, '/a', { authorization: `Bearer t${s % 2}` });
    const bumps = Array.from({ length: 100 }, () => bump('/a'));
    const done = bumps.map((b, i) => {
      if (i === 99) fetcher.body = 'final';
      return dispatcher.dispatch(b);
    });
    await Promise.all(done);
    const perCred = new Map<string, number>();
    for (const r of fetcher.requests) perCred.set(r.headers.authorization!, (perCred.get(r.headers.authorization!) ?? 0) + 1);
    expect([...perCred.values()].every((n) => n <= 2)).to.equal(true);
    for (let s = 0; s < 10; s++) {
      const last = publisher.published.filter((p) => p.session === s).pop()!;
      expect(last.update.body).to.equal(`final:Bearer t${s % 2}`);
      expect(last.update.bump!.id).to.equal(bumps[99].id);
    }
  });

  it('shutdown: stopStarting() lets fetches in flight publish and drops the queued ones', async function () {
    dispatcher = new Dispatcher({ registry, fetcher, publisher, logger: silentLogger(), metrics, concurrency: 2, pushUnchanged: false });
    fetcher.delayMs = 30;
    for (let s = 0; s < 10; s++) registry.upsert(s, '/a', { authorization: `Bearer ${s}` });
    void dispatcher.dispatch(bump('/a'));
    expect(fetcher.requests).to.have.length(2);
    expect(dispatcher.stopStarting()).to.equal(8);
    void dispatcher.dispatch(bump('/a')); // ignored: nothing starts any more
    expect(await dispatcher.drain(1_000)).to.equal(0);
    expect(fetcher.requests).to.have.length(2);
    expect(publisher.published.map((p) => p.session).sort()).to.deep.equal([0, 1]);
  });

  it('a publish that failed is sent again by the next refetch, even unchanged', async function () {
    let down = true;
    const flaky: Publisher = {
      publish: async (session, update) => {
        if (down) throw new Error('not joined to the router');
        publisher.published.push({ session, update });
      },
    };
    dispatcher = new Dispatcher({ registry, fetcher, publisher: flaky, logger: silentLogger(), metrics, concurrency: 4, pushUnchanged: false });
    registry.upsert(1, '/a', {});
    await dispatcher.dispatch(bump('/a'));
    expect(publisher.published).to.have.length(0);
    expect((await metrics.publishesFailed.get()).values[0].value).to.equal(1);
    down = false;
    await dispatcher.refetchAll('resync');
    expect(publisher.published.map((p) => p.update.body)).to.deep.equal(['v1:']);
    await dispatcher.refetchAll('resync'); // delivered now: unchanged is skipped again
    expect(publisher.published).to.have.length(1);
  });

  it('is fair across paths: a path with many groups does not starve another', async function () {
    dispatcher = new Dispatcher({ registry, fetcher, publisher, logger: silentLogger(), metrics, concurrency: 1, pushUnchanged: false });
    for (let s = 0; s < 50; s++) registry.upsert(s, '/big', { authorization: `Bearer ${s}` });
    registry.upsert(999, '/small', {});
    void dispatcher.dispatch(bump('/big'));
    await dispatcher.dispatch(bump('/small'));
    const order = fetcher.requests.map((r) => r.path);
    expect(order.indexOf('/small')).to.be.below(3);
  });

  it('revalidates with If-None-Match and publishes nothing on 304', async function () {
    fetcher.etags = true;
    registry.upsert(1, '/a', {});
    registry.upsert(2, '/a', {});
    await dispatcher.dispatch(bump('/a'));
    expect(fetcher.requests[0].validators).to.equal(undefined);
    await dispatcher.dispatch(bump('/a'));
    expect(fetcher.requests[1].validators).to.deep.equal({ etag: '"v1"', status: 200, bodyHash: fetcher.requests[1].validators && (fetcher.requests[1].validators as { bodyHash: string }).bodyHash });
    expect(publisher.published).to.have.length(2);
    // a watcher that joined since has nothing yet: no validators, a full body for it
    registry.upsert(3, '/a', {});
    await dispatcher.dispatch(bump('/a'));
    expect(fetcher.requests[2].validators).to.equal(undefined);
    expect(publisher.published.map((p) => p.session)).to.deep.equal([1, 2, 3]);
    fetcher.body = 'v2';
    await dispatcher.dispatch(bump('/a'));
    expect(publisher.published).to.have.length(6);
  });

  it('honours 503 with Retry-After: pushes the 503, pauses that path only, then refetches it without a bump', async function () {
    dispatcher = new Dispatcher({ registry, fetcher, publisher, logger: silentLogger(), metrics, concurrency: 4, pushUnchanged: false, retryBaseMs: 10 });
    registry.upsert(1, '/a', {});
    registry.upsert(2, '/b', { cookie: 'x' });
    fetcher.scripted.push({ status: 503, retryAfterMs: 150 });
    const started = Date.now();
    await dispatcher.dispatch(bump('/a'));
    expect(publisher.published.map((p) => p.update.status)).to.deep.equal([503]);
    await dispatcher.dispatch(bump('/b')); // another path: not paused
    expect(Date.now() - started).to.be.below(100);
    await dispatcher.dispatch(bump('/a')); // a bump during the pause waits for it
    expect(fetcher.requests.map((r) => r.path)).to.deep.equal(['/a', '/b']);
    await waitFor('the retry after the pause', () => publisher.published.length === 3, 2_000);
    expect(Date.now() - started).to.be.at.least(140);
    expect(fetcher.requests.map((r) => r.path)).to.deep.equal(['/a', '/b', '/a']);
    expect(publisher.published.map((p) => p.update.status)).to.deep.equal([503, 200, 200]);
  });

  it('suspends every watch of a group on 401, and a bump then costs nothing', async function () {
    registry.upsert(1, '/a', { authorization: 'Bearer dead' });
    registry.upsert(2, '/a', { authorization: 'Bearer dead' });
    fetcher.scripted.push({ status: 401 });
    await dispatcher.dispatch(bump('/a'));
    expect(publisher.published.map((p) => p.update.status)).to.deep.equal([401, 401]);
    await dispatcher.dispatch(bump('/a'));
    expect(fetcher.requests).to.have.length(1);
  });
});

describe('watch registry', function () {
  it('interns paths and credentials and regroups a watch whose credentials change', function () {
    const r = new WatchRegistry(10);
    const a = r.upsert(1, `/p${'ath'}`, { authorization: 'Bearer x' }).watch;
    const b = r.upsert(2, '/path', { authorization: 'Bearer x' }).watch;
    expect(a.headers).to.equal(b.headers);
    expect(r.groupsOn('/path')).to.have.length(1);
    r.upsert(2, '/path', { authorization: 'Bearer y' });
    expect(r.groupsOn('/path').map(([, s]) => s.size).sort()).to.deep.equal([1, 1]);
    r.remove(1, '/path');
    r.upsert(2, '/path', { authorization: 'Bearer z' });
    expect(r.groupsOn('/path')).to.have.length(1);
    expect(r.byPath('/path')).to.deep.equal([b]);
  });

  it('keys watches by (session, path): same id for the same path, ids never start with "/"', function () {
    const r = new WatchRegistry(10);
    const a = r.upsert(1, '/a', {});
    const again = r.upsert(1, '/a', { authorization: 'Bearer x' });
    const other = r.upsert(2, '/a', {});
    expect(again.watch.id).to.equal(a.watch.id);
    expect(again).to.include({ created: false, credentialsChanged: true });
    expect(other.watch.id).not.to.equal(a.watch.id);
    expect(a.watch.id[0]).not.to.equal('/');
    expect(r.byPath('/a')).to.have.length(2);
    expect(r.dropSession(1)).to.equal(1);
    expect(r.byPath('/a')).to.have.length(1);
    expect(r.size).to.equal(1);
  });
  it('enforces the per-session limit on new watches only', function () {
    const r = new WatchRegistry(1);
    r.upsert(1, '/a', {});
    r.upsert(1, '/a', { cookie: 'c' });
    expect(() => r.upsert(1, '/b', {})).to.throw(/limit/);
    r.upsert(2, '/b', {});
  });
});

describe('dispatcher retries (a watch converges after any single failed fetch)', function () {
  let registry: WatchRegistry;
  let fetcher: RecordingFetcher;
  let publisher: RecordingPublisher;
  let dispatcher: Dispatcher;
  const timeout: Partial<FetchResult> = { status: 0, body: '', error: { code: 'timeout', message: 'slow' } };
  const make = (opts: { concurrency?: number; retryBaseMs?: number; maxRetryAfterMs?: number; pushUnchanged?: boolean } = {}) => {
    registry = new WatchRegistry(1000);
    fetcher = new RecordingFetcher();
    publisher = new RecordingPublisher();
    dispatcher = new Dispatcher({
      registry, fetcher, publisher, logger: silentLogger(), metrics: new Metrics(),
      concurrency: opts.concurrency ?? 8, pushUnchanged: opts.pushUnchanged ?? false, retryBaseMs: opts.retryBaseMs ?? 10,
      ...(opts.maxRetryAfterMs ? { maxRetryAfterMs: opts.maxRetryAfterMs } : {}),
    });
  };
  const times: number[] = [];
  beforeEach(() => {
    make();
    times.length = 0;
  });
  const stamp = () => {
    const inner = fetcher.fetch.bind(fetcher);
    fetcher.fetch = (req) => { times.push(performance.now()); return inner(req); };
  };

  it('retries with growing, jittered delays until an answer; the error is published once, then the answer', async function () {
    stamp();
    registry.upsert(1, '/a', {});
    fetcher.scripted.push(timeout, timeout, timeout, timeout);
    const b = bump('/a');
    await dispatcher.dispatch(b);
    await waitFor('the answer', () => publisher.published.length === 2, 2_000);
    expect(publisher.published.map((p) => p.update.status)).to.deep.equal([0, 200]);
    expect(fetcher.requests.map((r) => r.reason)).to.deep.equal(Array(5).fill(b.id));
    const gaps = times.slice(1).map((t, i) => t - times[i]);
    // retryBaseMs x 2^n, jittered to 50-100 %
    gaps.forEach((g, i) => expect(g, `gap ${i}`).to.be.at.least(10 * 2 ** i * 0.5 - 2));
    expect(dispatcher.groupCount).to.equal(1);
  });

  it('a newer bump supersedes the pending retry: one fetch at once, none later from the old timer', async function () {
    make({ retryBaseMs: 300 });
    registry.upsert(1, '/a', {});
    fetcher.scripted.push(timeout);
    await dispatcher.dispatch(bump('/a'));
    await dispatcher.dispatch(bump('/a'));
    expect(fetcher.requests).to.have.length(2);
    await sleep(400);
    expect(fetcher.requests).to.have.length(2);
    expect(publisher.published.map((p) => p.update.status)).to.deep.equal([0, 200]);
  });

  it('retries stop when the watch goes, and the group goes with it', async function () {
    make({ retryBaseMs: 50 });
    registry.upsert(1, '/a', {});
    fetcher.scripted.push(timeout, timeout, timeout);
    await dispatcher.dispatch(bump('/a'));
    registry.dropSession(1);
    expect(dispatcher.groupCount).to.equal(0);
    await sleep(200);
    expect(fetcher.requests).to.have.length(1);
  });

  it('retries go through the concurrency cap, at most one pending per group', async function () {
    make({ concurrency: 2, retryBaseMs: 5 });
    fetcher.delayMs = 5;
    for (let s = 0; s < 10; s++) registry.upsert(s, '/a', { authorization: `Bearer ${s}` });
    fetcher.scripted.push(...Array(10).fill(timeout));
    await dispatcher.dispatch(bump('/a'));
    // a burst of bumps while retries are pending does not add any
    for (let i = 0; i < 20; i++) void dispatcher.dispatch(bump('/a'));
    await waitFor('every group answered', () => publisher.published.filter((p) => p.update.status === 200).length === 10, 3_000);
    expect(fetcher.maxActive).to.equal(2);
    expect(dispatcher.queued).to.be.at.most(10);
  });

  it('shutdown drops pending retries: counted by stopStarting, never fetched', async function () {
    make({ retryBaseMs: 100 });
    registry.upsert(1, '/a', {});
    registry.upsert(2, '/b', {});
    fetcher.scripted.push(timeout, timeout);
    await dispatcher.dispatch(bump('/a', '/b'));
    expect(dispatcher.stopStarting()).to.equal(2);
    await sleep(250);
    expect(fetcher.requests).to.have.length(2);
    expect(await dispatcher.drain(100)).to.equal(0);
  });

  it('final results are not retried: 404, 501, too_large, a request that could not be sent', async function () {
    make({ retryBaseMs: 5 });
    for (const [i, r] of ([
      { status: 404 }, { status: 501 }, { status: 200, error: { code: 'too_large', message: 'big' } },
      { status: 0, notSent: true, error: { code: 'unreachable', message: 'invalid header' } },
    ] as Array<Partial<FetchResult>>).entries()) {
      registry.upsert(i, `/p${i}`, {});
      fetcher.scripted.push(r);
      await dispatcher.dispatch(bump(`/p${i}`));
    }
    await sleep(100);
    expect(fetcher.requests).to.have.length(4);
  });

  it('transient answers are retried: 408, 429, 500, 502, 503, 504 and an unparsable answer', async function () {
    make({ retryBaseMs: 5 });
    const transient: Array<Partial<FetchResult>> = [{ status: 408 }, { status: 429 }, { status: 500 }, { status: 502 }, { status: 503 }, { status: 504 },
      { status: 0, error: { code: 'invalid_response' as 'unreachable', message: 'unparsable' } }];
    for (const [i, r] of transient.entries()) {
      registry.upsert(i, `/p${i}`, {});
      fetcher.scripted.push(r);
      await dispatcher.dispatch(bump(`/p${i}`));
    }
    await waitFor('every retry answered', () => publisher.published.filter((p) => p.update.status === 200).length === transient.length, 2_000);
  });

  it('a Retry-After beyond the maximum is clamped', async function () {
    make({ maxRetryAfterMs: 100 });
    registry.upsert(1, '/a', {});
    fetcher.scripted.push({ status: 429, retryAfterMs: 3_600_000 });
    await dispatcher.dispatch(bump('/a'));
    await waitFor('the retry', () => fetcher.requests.length === 2, 1_000);
  });

  it('a 429 pauses that credential on every path; other credentials fetch at once', async function () {
    registry.upsert(1, '/a', { authorization: 'Bearer limited' });
    registry.upsert(1, '/b', { authorization: 'Bearer limited' });
    registry.upsert(2, '/b', { authorization: 'Bearer other' });
    fetcher.scripted.push({ status: 429, retryAfterMs: 10_000 });
    await dispatcher.dispatch(bump('/a'));
    await dispatcher.dispatch(bump('/b'));
    expect(fetcher.requests.map((r) => [r.path, r.headers.authorization])).to.deep.equal([['/a', 'Bearer limited'], ['/b', 'Bearer other']]);
    registry.dropSession(1);
    expect(dispatcher.groupCount).to.equal(1);
  });

  it('memory follows live watches: 5 sessions x 100 paths bumped, then gone or rotated, leave no group', async function () {
    const paths = Array.from({ length: 100 }, (_, i) => `/p/${i}`);
    for (let s = 0; s < 5; s++) for (const p of paths) registry.upsert(s, p, { authorization: `Bearer ${s}` });
    await dispatcher.dispatch(bump(...paths));
    expect(dispatcher.groupCount).to.equal(500);
    for (let s = 0; s < 5; s++) for (const w of registry.forSession(s)) registry.replaceCredentials(w, { authorization: `Bearer ${s}-new` });
    expect(dispatcher.groupCount).to.equal(0);
    await dispatcher.dispatch(bump(...paths));
    expect(dispatcher.groupCount).to.equal(500);
    for (let s = 0; s < 5; s++) registry.dropSession(s);
    expect(dispatcher.groupCount).to.equal(0);
  });
});

describe('usable validators (RFC 9110 8.8.2.2)', function () {
  it('keeps an ETag, and a Last-Modified only when the Date is at least 1 s after it', function () {
    const lm = 'Mon, 30 Nov 2026 10:00:00 GMT';
    expect(usableValidators({ etag: '"x"', lastModified: lm, date: lm })).to.deep.equal({ etag: '"x"' });
    expect(usableValidators({ lastModified: lm, date: lm })).to.equal(undefined);
    expect(usableValidators({ lastModified: lm })).to.equal(undefined);
    expect(usableValidators({ lastModified: lm, date: 'garbage' })).to.equal(undefined);
    expect(usableValidators({ lastModified: lm, date: 'Mon, 30 Nov 2026 10:00:01 GMT' })).to.deep.equal({ lastModified: lm });
  });
});
