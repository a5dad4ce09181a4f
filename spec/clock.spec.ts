import { expect } from 'chai';
import { Redis } from 'ioredis';
import { RedisWatchIndex } from '../lib/cluster/watch-index.js';
import { ERROR_URIS, PROC_UNWATCH } from '../lib/protocol/uris.js';
import { SessionRateLimiter } from '../lib/wamp/rate-limiter.js';
import { randomChannel, testEnv } from './helpers/env.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { Upstream } from './helpers/upstream.js';
import { ClientPool } from './helpers/wamp-client.js';

const HOUR = 3_600_000;

/**
 * Step this process's wall clock (`Date.now`, what NTP or a resumed VM moves) by `ms`, as the
 * fault does; the monotonic clock (`performance.now`) and timers are untouched, as on a real host.
 * Returns the undo.
 */
function stepWallClock(ms: number): () => void {
  const real = Date.now;
  Date.now = () => real() + ms;
  return () => { Date.now = real; };
}

describe('clock steps (issue 16 fault 1: rates)', function () {
  let undo: (() => void) | undefined;
  afterEach(() => { undo?.(); undo = undefined; });

  describe('the per-session token bucket', function () {
    it('a one-hour step back does not refuse the next call', function () {
      const limiter = new SessionRateLimiter(20, 5);
      for (let i = 0; i < 3; i++) expect(limiter.take(1)).to.equal(true);
      undo = stepWallClock(-HOUR);
      // on the wall clock, this adds -72,000 tokens and refuses every call for an hour
      expect(limiter.take(1)).to.equal(true);
      expect(limiter.take(1)).to.equal(true);
    });

    it('a one-hour step forward refills nothing: an empty bucket stays empty', function () {
      const limiter = new SessionRateLimiter(1, 5);
      let taken = 0;
      for (let i = 0; i < 10; i++) if (limiter.take(1)) taken += 1;
      expect(taken).to.equal(5);
      undo = stepWallClock(HOUR);
      expect(limiter.take(1)).to.equal(false);
    });

    it('an injected clock that goes back counts as no time passed', function () {
      let t = 10_000;
      const limiter = new SessionRateLimiter(1, 2, () => t);
      expect([limiter.take(1), limiter.take(1), limiter.take(1)]).to.deep.equal([true, true, false]);
      t -= HOUR;
      expect(limiter.take(1)).to.equal(false);
      t += 1_000;
      expect(limiter.take(1), 'one second after the step: one token').to.equal(true);
    });
  });

  describe('a running component', function () {
    let api: Upstream;
    let wm: Harness | undefined;
    const pool = new ClientPool();
    beforeEach(async () => { api = await new Upstream().start(); });
    afterEach(async () => {
      undo?.();
      undo = undefined;
      await pool.closeAll();
      await wm?.close();
      wm = undefined;
      await api.close();
    });

    it('existing sessions are not rate_limited after a one-hour step back, nor refilled by a step forward', async function () {
      wm = await startWaymark(api.url, { WAYMARK_RATE_LIMIT: '1', WAYMARK_RATE_BURST: '5' });
      const c = await pool.open();
      for (let i = 0; i < 2; i++) expect(await c.call(PROC_UNWATCH, ['w'])).to.deep.equal({ removed: 0 });
      undo = stepWallClock(-HOUR);
      const back: string[] = [];
      for (let i = 0; i < 3; i++) back.push(await c.call(PROC_UNWATCH, ['w']).then(() => 'ok', (e: { error: string }) => e.error));
      undo();
      // the bucket is empty now; a step forward must not refill it
      undo = stepWallClock(HOUR);
      const forward = await c.call(PROC_UNWATCH, ['w']).then(() => 'ok', (e: { error: string }) => e.error);
      console.log(`      clock step: after -1 h, 3 calls: ${back.join(' ')}; after +1 h on an empty bucket: ${forward}`);
      expect(back).to.deep.equal(['ok', 'ok', 'ok']);
      expect(forward).to.equal(ERROR_URIS.rate_limited);
    });
  });

  describe('the shared bucket on Redis time', function () {
    let index: RedisWatchIndex;
    let direct: Redis;
    let prefix: string;
    beforeEach(async () => {
      prefix = randomChannel();
      index = new RedisWatchIndex({ redisUrl: testEnv.redisUrl, prefix });
      await index.start();
      direct = new Redis(testEnv.redisUrl);
    });
    afterEach(async () => {
      await direct.del(`${prefix}:rate:1`);
      await index.close();
      await direct.quit();
    });
    const redisNow = async () => { const [s, us] = await direct.time(); return Number(s) * 1000 + Math.floor(Number(us) / 1000); };

    it('a bucket last touched one hour in Redis\'s future (its clock stepped back) still gives its tokens', async function () {
      await direct.hset(`${prefix}:rate:1`, 'tokens', '3', 'at', String(await redisNow() + HOUR));
      const got = [await index.take(1, 20, 5), await index.take(1, 20, 5), await index.take(1, 20, 5)];
      expect(got).to.deep.equal([true, true, true]);
    });

    it('a bucket last touched one hour in Redis\'s past refills to the burst, not beyond', async function () {
      await direct.hset(`${prefix}:rate:1`, 'tokens', '0', 'at', String(await redisNow() - HOUR));
      let taken = 0;
      for (let i = 0; i < 10; i++) if (await index.take(1, 1, 5)) taken += 1;
      expect(taken).to.equal(5);
    });
  });
});
