import { expect } from 'chai';
import { createBumper } from '../lib/bumps/bumper.js';
import { loadConfig } from '../lib/protocol/config.js';
import { runDoctor } from '../lib/ops/doctor.js';
import { converge, keepBumping, VersionedApi, watchAll } from './helpers/convergence.js';
import { componentEnv, randomChannel, sleep, waitFor } from './helpers/env.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { onNode, redisServerAvailable, startSentinelSet, type SentinelSet } from './helpers/redis-cluster.js';
import { CliRunner, cleanEnv } from './helpers/spawn.js';
import { Upstream } from './helpers/upstream.js';
import { ClientPool } from './helpers/wamp-client.js';

/** Contract section 13 through Redis Sentinel: 1 master, 1 replica, 3 sentinels, started for this file. */
describe('Redis Sentinel', function () {
  this.timeout(30_000);
  let set: SentinelSet;
  let api: Upstream;
  let versions: VersionedApi;
  let channel: string;
  let instances: Harness[] = [];
  const pool = new ClientPool();
  const cli = new CliRunner();
  // Master and replica require a password, which Waymark takes from WAYMARK_REDIS_URL (its host unused).
  const password = 'sentinel-set-secret';
  const redisUrl = `redis://:${password}@unused.invalid:1`;
  const sentinelEnv = () => ({ WAYMARK_REDIS_URL: redisUrl, WAYMARK_REDIS_SENTINELS: set.addresses.join(','), WAYMARK_REDIS_SENTINEL_NAME: set.name });

  const start = async (n: number, env: Record<string, string> = {}) => {
    for (let i = 0; i < n; i += 1) {
      instances.push(await startWaymark(api.url, { WAYMARK_BUMP_CHANNEL: channel, ...sentinelEnv(), WAYMARK_REDIS_PROBE_MS: '1000', WAYMARK_REDIS_RECONNECT_MAX_MS: '500', ...env }));
    }
  };

  before(async function () {
    if (!redisServerAvailable()) {
      throw new Error('these specs start their own Redis from redis-server and redis-cli: run \'apt-get install -y redis-server\' (.ci/run installs it)');
    }
    const t0 = Date.now();
    set = await startSentinelSet('waymark', password);
    console.log(`      master + replica + 3 sentinels up in ${Date.now() - t0} ms`);
  });
  after(function () {
    set?.stop();
  });
  beforeEach(async function () {
    versions = new VersionedApi();
    api = await new Upstream().start();
    api.handler = versions.handler;
    channel = randomChannel();
  });
  afterEach(async function () {
    await cli.killAll();
    await pool.closeAll();
    await Promise.all(instances.splice(0).map((h) => h.close()));
    await api.close();
  });

  it('bumps over pub/sub and over a stream reach Waymark through the sentinels\' master; so do waymark bump and createBumper', async function () {
    const stream = `${channel}:stream`;
    await start(1);
    await start(1, { WAYMARK_BUMP_STREAM: stream });
    const [pubsub] = await watchAll(pool, 1, ['/p/1']);
    // the second watch lands on the other instance (round robin)
    const [streamed] = await watchAll(pool, 1, ['/p/1']);
    versions.set('/p/1', 2);
    const bump = cli.run(['bump', '/p/1'], cleanEnv({ ...sentinelEnv(), WAYMARK_BUMP_CHANNEL: channel }));
    expect(await bump.exited, bump.stderr).to.equal(0);
    const bumper = createBumper({ redisUrl, redisSentinels: set.addresses, redisSentinelName: set.name, stream });
    try {
      await bumper.bump('/p/1');
    } finally {
      await bumper.close();
    }
    await waitFor('both watchers on version 2', () => [pubsub, streamed].every((w) => w.client.updates.some((u) => u.body.includes('"version":2'))));
  });

  it('waymark doctor names the mode and the master it reached', async function () {
    await start(1);
    const config = loadConfig({ ...componentEnv(channel, api.url), ...sentinelEnv() });
    const redis = (await runDoctor(config, { timeoutMs: 3_000 })).find((r) => r.name === 'redis')!;
    console.log(`      doctor: ${redis.detail}`);
    expect(redis.status).to.equal('ok');
    expect(redis.detail).to.include(`sentinel master set ${set.name} via ${set.addresses.join(',')} (master at 127.0.0.1:${await set.currentMasterPort()})`);
  });

  it('the master killed while bumps are published: Sentinel promotes the replica, every watcher converges, 0 lost', async function () {
    await start(2);
    const paths = ['/f/1', '/f/2'];
    const watchers = await watchAll(pool, 6, paths);
    const old = set.master;
    expect(await set.currentMasterPort()).to.equal(old.port);
    const bumper = createBumper({ redisUrl, redisSentinels: set.addresses, redisSentinelName: set.name, channel });
    const backend = keepBumping(bumper, versions, paths);
    try {
      await sleep(300);
      const killedAt = Date.now();
      const gone = new Promise((resolve) => old.process.once('exit', resolve));
      old.process.kill('SIGKILL');
      await gone;
      await waitFor('the sentinels name the replica master', async () => (await set.currentMasterPort().catch(() => old.port)) === set.replica.port, 15_000);
      await waitFor('the replica answers as master', () => onNode(set.replica.port, async (r) => /role:master/.test(await r.info('replication'))).catch(() => false), 5_000);
      const recovered = Date.now();
      const { published, failedPublishes } = await backend.stop();
      console.log(`      failover took ${recovered - killedAt} ms; bumps published ${published}, publish attempts that failed and were retried ${failedPublishes}`);
      const r = await converge('sentinel-failover', watchers, (w) => ({ status: 200, body: versions.body(w.path, w.token) }), recovered);
      expect(r.lost).to.equal(0);
      for (const h of instances) expect(h.logs.join(''), 'resubscribed and refetched').to.include('redis bumps flowing again').and.include('bumps may have been lost');
    } finally {
      await backend.stop();
      await bumper.close();
    }
  });
});
