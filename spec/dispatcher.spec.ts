import { expect } from 'chai';
import { Dispatcher } from '../lib/dispatcher.js';
import type { Fetcher } from '../lib/fetcher.js';
import { silentLogger } from '../lib/logger.js';
import { Metrics } from '../lib/metrics.js';
import type { Publisher } from '../lib/publisher.js';
import type { Bump, FetchRequest, FetchResult, SessionId, Update } from '../lib/types.js';
import { WatchRegistry } from '../lib/watch-registry.js';

/** Recording fakes at our own seams (the only fakes in the suite). */
class RecordingFetcher implements Fetcher {
  readonly requests: FetchRequest[] = [];
  active = 0;
  maxActive = 0;
  body = 'v1';
  delayMs = 0;
  async fetch(req: FetchRequest): Promise<FetchResult> {
    this.requests.push(req);
    this.active += 1;
    this.maxActive = Math.max(this.maxActive, this.active);
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
    this.active -= 1;
    return { status: 200, headers: {}, body: `${this.body}:${req.headers.authorization ?? ''}`, encoding: 'utf8', fetchedAt: Date.now() };
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

  it('fetches every watch on exactly the bumped path with its own credentials and publishes to its owner', async function () {
    registry.upsert(1, '/a', { authorization: 'Bearer one' });
    registry.upsert(2, '/a', { authorization: 'Bearer two' });
    registry.upsert(3, '/a?x=1', { authorization: 'Bearer three' });
    const b = bump('/a');
    await dispatcher.dispatch(b);
    expect(fetcher.requests.map((r) => [r.path, r.headers.authorization, r.reason])).to.have.deep.members([
      ['/a', 'Bearer one', b.id], ['/a', 'Bearer two', b.id],
    ]);
    expect(publisher.published.map((p) => [p.session, p.update.body])).to.have.deep.members([[1, 'v1:Bearer one'], [2, 'v1:Bearer two']]);
    expect(publisher.published[0].update.bump).to.deep.equal({ id: b.id, at: b.at });
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

describe('watch registry', function () {
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
