import { expect } from 'chai';
import { Redis } from 'ioredis';
import { MAX_PATHS_PER_BUMP, parseBumpMessage, RedisBumpSource } from '../lib/bump-source.js';
import { silentLogger } from '../lib/logger.js';
import type { Bump } from '../lib/types.js';
import { randomChannel, testEnv, waitFor } from './helpers/env.js';

describe('bump messages', function () {
  it('parses a bare path', function () {
    expect(parseBumpMessage('/users/1', 2048)).to.deep.equal({ ok: true, id: undefined, paths: ['/users/1'], dropped: 0 });
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
