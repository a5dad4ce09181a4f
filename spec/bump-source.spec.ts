import { expect } from 'chai';
import { Redis } from 'ioredis';
import { compareStreamIds, MAX_PATHS_PER_BUMP, parseBumpMessage, RedisBumpSource, RedisStreamBumpSource, streamCursorKey } from '../lib/bumps/bump-source.js';
import { createBumper } from '../lib/bumps/bumper.js';
import { silentLogger } from '../lib/support/logger.js';
import type { Bump } from '../lib/protocol/types.js';
import { FaultProxy } from './helpers/fault-proxy.js';
import { randomChannel, testEnv, waitFor } from './helpers/env.js';

describe('bump messages', function () {
  it('parses a bare path', function () {
    expect(parseBumpMessage('/users/1', 2048)).to.deep.equal({ ok: true, id: undefined, paths: ['/users/1'], prefixes: [], tags: [], dropped: 0 });
  });
  it('parses {"path", "id"} and {"paths", "id"}', function () {
    expect(parseBumpMessage('{"path":"/a","id":"b1"}', 2048)).to.deep.include({ ok: true, id: 'b1', paths: ['/a'] });
    expect(parseBumpMessage('{"paths":["/a","/b","/a"]}', 2048)).to.deep.include({ ok: true, paths: ['/a', '/b'] });
  });
  const malformed = ['', 'users/1', '{', '{"path": 1}', '{"paths": "/a"}', '{"path":"/a","paths":["/b"]}', '[1]', '{"path":"/a","id":7}',
    '{"path":"//evil"}', 'null', '{"paths": []}'];
  for (const m of malformed) {
    it(`drops ${JSON.stringify(m)}`, function () {
      expect(parseBumpMessage(m, 2048).ok).to.equal(false);
    });
  }
  it('drops paths that fail the grammar but keeps the good ones', function () {
    expect(parseBumpMessage('{"paths":["/ok","http://x/","/../y"]}', 2048)).to.deep.include({ ok: true, paths: ['/ok'], dropped: 2 });
  });
  it('caps the paths of one message', function () {
    const paths = Array.from({ length: MAX_PATHS_PER_BUMP + 5 }, (_, i) => `/${i}`);
    const r = parseBumpMessage(JSON.stringify({ paths }), 2048);
    expect(r.ok && r.paths.length).to.equal(MAX_PATHS_PER_BUMP);
    expect(r.ok && r.dropped).to.equal(5);
  });
  it('recognises a probe {"probe": "<token>"} as no bump and no malformed message', function () {
    expect(parseBumpMessage('{"probe":"abc:1"}', 2048)).to.deep.equal({ ok: true, probe: 'abc:1', paths: [], prefixes: [], tags: [], dropped: 0 });
    expect(parseBumpMessage('{"probe":7}', 2048).ok).to.equal(false);
    // a probe key beside a path is an ordinary bump
    expect(parseBumpMessage('{"probe":"x","path":"/a"}', 2048)).to.deep.include({ ok: true, paths: ['/a'] });
  });
  it('orders stream ids numerically', function () {
    expect(compareStreamIds('9-0', '10-0')).to.equal(-1);
    expect(compareStreamIds('10-2', '10-10')).to.equal(-1);
    expect(compareStreamIds('10-2', '10-2')).to.equal(0);
    expect(compareStreamIds('1795965913085-0', '0-0')).to.equal(1);
  });
  it('drops a message over 64 KiB', function () {
    expect(parseBumpMessage(`/${'a'.repeat(65536)}`, 1e6).ok).to.equal(false);
  });
});

describe('RedisBumpSource', function () {
  it('delivers bumps from its channel only, with an id and a receive time, and stops twice safely', async function () {
    const channel = randomChannel();
    const source = new RedisBumpSource({ redisUrl: testEnv.redisUrl, channel, maxPathBytes: 2048, logger: silentLogger() });
    const got: Bump[] = [];
    await source.start((b) => got.push(b));
    const pub = new Redis(testEnv.redisUrl);
    try {
      const before = Date.now();
      await pub.publish(`${channel}-other`, '/nope');
      await pub.publish(channel, 'garbage');
      await pub.publish(channel, '/users/1');
      await waitFor('the bump', () => got.length === 1);
      expect(got[0].paths).to.deep.equal(['/users/1']);
      expect(got[0].id).to.be.a('string').with.length.above(8);
      expect(got[0].at).to.be.at.least(before);
    } finally {
      await pub.quit();
      await source.stop();
      await source.stop();
    }
  });
});

describe('RedisBumpSource probes and resubscribes', function () {
  it('sends probes that come back and are neither bumps nor malformed; a killed connection resubscribes and asks for a resync', async function () {
    const channel = randomChannel();
    const got: Bump[] = [];
    const resyncs: string[] = [];
    const states: boolean[] = [];
    let malformed = 0;
    const source = new RedisBumpSource({
      redisUrl: testEnv.redisUrl, channel, maxPathBytes: 2048, logger: silentLogger(), probeMs: 50, reconnectMaxMs: 50,
      onResync: (r) => resyncs.push(r), onState: (s) => states.push(s), onMalformed: () => { malformed += 1; },
    });
    const admin = new Redis(testEnv.redisUrl);
    const watcher = new Redis(testEnv.redisUrl);
    try {
      await source.start((b) => got.push(b));
      let probes = 0;
      await watcher.subscribe(channel);
      watcher.on('message', (_c, m) => { if (m.startsWith('{"probe"')) probes += 1; });
      await waitFor('three probes', () => probes >= 3, 3_000);
      expect(got).to.have.length(0);
      expect(malformed).to.equal(0);
      expect(resyncs).to.deep.equal([]); // never at start-up
      // Kill the subscriber connection from the server side: it reconnects and resubscribes.
      const name = `waymark-subscriber-${(source as unknown as { uid: string }).uid}`;
      const line = String(await admin.client('LIST')).split('\n').find((l) => l.includes(` name=${name} `));
      const subId = line && /^id=(\d+)/.exec(line)?.[1];
      expect(subId).to.be.a('string');
      await admin.client('KILL', 'ID', subId!);
      await waitFor('a resync after the resubscribe', () => resyncs.length === 1, 3_000);
      expect(resyncs).to.deep.equal(['resubscribed']);
      expect(states.slice(-2)).to.deep.equal([false, true]);
      await admin.publish(channel, '/after');
      await waitFor('a bump after the resubscribe', () => got.length === 1, 3_000);
    } finally {
      await source.stop();
      await admin.quit();
      await watcher.quit();
    }
  });
});

describe('RedisStreamBumpSource', function () {
  let stream: string;
  let redis: Redis;
  beforeEach(() => { stream = randomChannel(); redis = new Redis(testEnv.redisUrl); });
  afterEach(async () => { await redis.del(stream, streamCursorKey(stream)); await redis.quit(); });
  const make = (got: Bump[], extra: Partial<ConstructorParameters<typeof RedisStreamBumpSource>[0]> = {}) => {
    const s = new RedisStreamBumpSource({ redisUrl: testEnv.redisUrl, stream, maxPathBytes: 2048, logger: silentLogger(), probeMs: 100, ...extra });
    return s.start((b) => got.push(b)).then(() => s);
  };

  it('starts at the end, reads every later entry, and resumes after a restart from the saved id', async function () {
    await redis.xadd(stream, '*', 'bump', '/before');
    const got: Bump[] = [];
    let malformed = 0;
    const first = await make(got, { onMalformed: () => { malformed += 1; } });
    const bumper = createBumper({ redisUrl: testEnv.redisUrl, stream, streamMaxLen: 1000 });
    try {
      expect(await bumper.bump('/one')).to.equal(1);
      await bumper.bump(['/two', '/three'], { id: 'b2' });
      await redis.xadd(stream, '*', 'other', '/x');
      await waitFor('two bumps', () => got.length === 2 && malformed === 1, 3_000);
      expect(got.map((b) => b.paths)).to.deep.equal([['/one'], ['/two', '/three']]);
      expect(got[1].id).to.equal('b2');
      await first.stop();
      // Written while no Waymark runs: read by the next one with the same reader name.
      await bumper.bump('/while-down');
      const second = await make(got);
      try {
        await waitFor('the bump written while down', () => got.length === 3, 3_000);
        expect(got[2].paths).to.deep.equal(['/while-down']);
        expect(await redis.get(streamCursorKey(stream))).to.equal(second.lastId);
      } finally {
        await second.stop();
      }
    } finally {
      await first.stop();
      await bumper.close();
    }
  });

  it('asks for a resync at start when the saved id was trimmed away, not otherwise', async function () {
    const got: Bump[] = [];
    const resyncs: string[] = [];
    const first = await make(got);
    await redis.xadd(stream, '*', 'bump', '/a');
    await waitFor('the bump', () => got.length === 1, 3_000);
    await first.stop();
    await redis.xadd(stream, '*', 'bump', '/b');
    await redis.xtrim(stream, 'MAXLEN', 0);
    const second = await make(got, { onResync: (r) => resyncs.push(r) });
    await second.stop();
    expect(resyncs).to.deep.equal(['trimmed']);
    const third = await make(got, { onResync: (r) => resyncs.push(r) });
    await third.stop();
    expect(resyncs).to.have.length(1);
  });
});

describe('bump sources on a silent connection', function () {
  it('stop() does not wait for a QUIT that never comes back', async function () {
    const target = new URL(testEnv.redisUrl);
    const proxy = await new FaultProxy({ host: target.hostname, port: Number(target.port || 6379) }).start();
    const url = proxy.url(testEnv.redisUrl);
    const sources = [
      new RedisBumpSource({ redisUrl: url, channel: randomChannel(), maxPathBytes: 2048, logger: silentLogger(), probeMs: 60_000 }),
      new RedisStreamBumpSource({ redisUrl: url, stream: randomChannel(), maxPathBytes: 2048, logger: silentLogger(), probeMs: 60_000 }),
    ];
    try {
      for (const s of sources) await s.start(() => undefined);
      await proxy.set('blackhole');
      const t0 = Date.now();
      await Promise.all(sources.map((s) => s.stop()));
      expect(Date.now() - t0).to.be.below(3_000);
    } finally {
      await proxy.stop();
    }
  });
});
