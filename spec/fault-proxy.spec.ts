import { expect } from 'chai';
import net from 'node:net';
import { Redis } from 'ioredis';
import { FaultProxy } from './helpers/fault-proxy.js';
import { testEnv } from './helpers/env.js';

/** The fault specs trust this proxy to fake network faults; it gets its own checks, against real Redis. */
describe('fault proxy (test helper)', function () {
  let proxy: FaultProxy;
  let redis: Redis | undefined;
  const target = new URL(testEnv.redisUrl);

  beforeEach(async function () {
    proxy = await new FaultProxy({ host: target.hostname, port: Number(target.port || 6379) }).start();
  });
  afterEach(async function () {
    redis?.disconnect();
    redis = undefined;
    await proxy.stop();
  });

  const client = () => new Redis(proxy.url(testEnv.redisUrl), { maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false, lazyConnect: true });

  it('passes and delays traffic', async function () {
    redis = client();
    await redis.connect();
    expect(await redis.ping()).to.equal('PONG');
    await proxy.set('delay', 150);
    const t0 = Date.now();
    expect(await redis.ping()).to.equal('PONG');
    expect(Date.now() - t0).to.be.at.least(290); // two chunks, each 150 ms late
  });

  it('blackholes: the connection stays up but nothing comes back', async function () {
    redis = client();
    await redis.connect();
    await proxy.set('blackhole');
    const answer = await Promise.race([redis.ping(), new Promise((r) => setTimeout(() => r('silence'), 300))]);
    expect(answer).to.equal('silence');
    expect(redis.status).to.equal('ready');
  });

  it('cuts open connections and refuses new ones, then serves again', async function () {
    redis = client();
    await redis.connect();
    const closed = new Promise((r) => redis!.once('close', r));
    await proxy.set('refuse');
    await closed;
    const err = await new Promise<NodeJS.ErrnoException>((resolve) => {
      net.connect(proxy.port, '127.0.0.1').on('error', resolve).on('connect', () => resolve(new Error('connected')));
    });
    expect(err.code).to.equal('ECONNREFUSED');
    await proxy.set('pass');
    const third = client();
    await third.connect();
    expect(await third.ping()).to.equal('PONG');
    third.disconnect();
    expect(proxy.connections).to.equal(2);
  });
});
