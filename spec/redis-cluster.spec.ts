import { expect } from 'chai';
import { Cluster } from 'ioredis';
import { createBumper } from '../lib/bumps/bumper.js';
import { KEYS_TOUCHED_TOGETHER, RedisWatchIndex } from '../lib/cluster/watch-index.js';
import { loadConfig } from '../lib/protocol/config.js';
import { ERROR_URIS, PROC_WATCH } from '../lib/protocol/uris.js';
import { runDoctor } from '../lib/ops/doctor.js';
import { converge, keepBumping, VersionedApi, watchAll } from './helpers/convergence.js';
import { componentEnv, randomChannel, sleep, waitFor } from './helpers/env.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { onNode, redisServerAvailable, startRedisCluster, type RedisClusterSet, type RedisNode } from './helpers/redis-cluster.js';
import { CliRunner, cleanEnv } from './helpers/spawn.js';
import { Upstream } from './helpers/upstream.js';
import { ClientPool } from './helpers/wamp-client.js';

/** Contract section 13 on a real Redis Cluster: 3 masters, 3 replicas, started for this file. */
describe('Redis Cluster', function () {
  this.timeout(30_000);
  let cluster: RedisClusterSet;
  let api: Upstream;
  let versions: VersionedApi;
  let channel: string;
  let instances: Harness[] = [];
  const pool = new ClientPool();
  const cli = new CliRunner();

  // Every node requires a password, which Waymark takes from WAYMARK_REDIS_URL (its host unused).
  const password = 'cluster-secret';
  const redisUrl = `redis://:${password}@unused.invalid:1`;
  const clusterEnv = () => ({ WAYMARK_REDIS_URL: redisUrl, WAYMARK_REDIS_CLUSTER_NODES: cluster.seeds.join(',') });
  const start = async (n: number, env: Record<string, string> = {}) => {
    for (let i = 0; i < n; i += 1) {
      instances.push(await startWaymark(api.url, { WAYMARK_BUMP_CHANNEL: channel, ...clusterEnv(), WAYMARK_REDIS_PROBE_MS: '1000', WAYMARK_REDIS_RECONNECT_MAX_MS: '500', ...env }));
    }
  };

  before(async function () {
    if (!redisServerAvailable()) {
      throw new Error('these specs start their own Redis from redis-server and redis-cli: run \'apt-get install -y redis-server\' (.ci/run installs it)');
    }
    const t0 = Date.now();
    cluster = await startRedisCluster(3, password);
    console.log(`      cluster of 3 masters + 3 replicas up in ${Date.now() - t0} ms`);
  });
  after(function () {
    cluster?.stop();
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

  it('keys a script or multi-key command touches share a slot; sessions spread over the masters', async function () {
    const slot = (key: string) => onNode(cluster.nodes[0].port, (r) => r.cluster('KEYSLOT', key)) as Promise<number>;
    const slots = new Set<number>();
    for (const prefix of ['waymark:bumps', 'a{b', 'x{y}z', '{', '}{']) {
      for (const session of [1, 77, 4242424242, Number.MAX_SAFE_INTEGER]) {
        for (const [what, keys] of Object.entries(KEYS_TOUCHED_TOGETHER)) {
          const touched = (keys as (p: string, s: number) => string[])(prefix, session);
          const each = await Promise.all(touched.map(slot));
          expect(new Set(each).size, `${what} ${JSON.stringify(touched)}`).to.equal(1);
          if (prefix === 'waymark:bumps' && what === 'claim') slots.add(each[0]);
        }
      }
    }
    expect(slots.size, 'sessions are spread over slots').to.be.greaterThan(1);

    // Every index operation on the cluster itself: CROSSSLOT or a cross-node pipeline would throw.
    const index = new RedisWatchIndex({ redisUrl, redisClusterNodes: cluster.seeds, prefix: channel });
    try {
      await index.start();
      const sessions = Array.from({ length: 20 }, (_, i) => 1000 + i);
      for (const s of sessions) expect(await index.claim(s, `w${s}`, 'inst-a', 3)).to.deep.equal({ over: false, previous: null });
      const masters = new Set(await Promise.all(sessions.map(async (s) => (await cluster.masterOf(await slot(KEYS_TOUCHED_TOGETHER.claim(channel, s)[0]))).port)));
      expect(masters.size, 'the sessions\' keys live on every master').to.equal(3);
      const owners = await index.owners(sessions);
      expect([...owners.values()].every((o, i) => o[`w${sessions[i]}`] === 'inst-a')).to.equal(true);
      await index.touch(sessions);
      expect(await index.take(sessions[0], 10, 2)).to.equal(true);
      await index.setInstance('inst-a', 42);
      expect(await index.forgetInstance('inst-a', 42)).to.equal(true);
      for (const s of sessions) await index.dropSession(s);
      expect(await index.count(sessions[0])).to.equal(0);
    } finally {
      await index.close();
    }
  });

  it('a PUBLISH on any node, master or replica, reaches Waymark; so do waymark bump and createBumper', async function () {
    await start(1);
    const [w] = await watchAll(pool, 1, ['/c/1']);
    let version = 1;
    for (const node of cluster.nodes) {
      versions.set('/c/1', (version += 1));
      await onNode(node.port, (r) => r.publish(channel, '/c/1'));
      await waitFor(`the bump published on ${node.address}`, () => w.client.updates.some((u) => u.body.includes(`"version":${version}`)));
    }
    versions.set('/c/1', (version += 1));
    const bump = cli.run(['bump', '/c/1'], cleanEnv({ ...clusterEnv(), WAYMARK_BUMP_CHANNEL: channel }));
    expect(await bump.exited, bump.stderr).to.equal(0);
    expect(bump.stderr).to.include('Redis Cluster: every node relays it');
    await waitFor('the bump of waymark bump', () => w.client.updates.some((u) => u.body.includes(`"version":${version}`)));
    versions.set('/c/1', (version += 1));
    const bumper = createBumper({ redisUrl, redisClusterNodes: [cluster.seeds[4]], channel });
    await bumper.bump('/c/1');
    await bumper.close();
    await waitFor('the bump of createBumper', () => w.client.updates.some((u) => u.body.includes(`"version":${version}`)));
  });

  it('stream mode: bumps added on the stream\'s master are read, and the position is saved', async function () {
    const stream = `${channel}:stream`;
    await start(1, { WAYMARK_BUMP_STREAM: stream });
    const [w] = await watchAll(pool, 1, ['/s/1']);
    const bumper = createBumper({ redisUrl, redisClusterNodes: cluster.seeds, stream });
    try {
      versions.set('/s/1', 2);
      await bumper.bump('/s/1');
      await waitFor('the stream bump', () => w.client.updates.some((u) => u.body.includes('"version":2')));
      const c = new Cluster(cluster.seeds.map((a) => ({ host: '127.0.0.1', port: Number(a.split(':')[1]) })), { redisOptions: { password } });
      try {
        await waitFor('the saved position', async () => (await c.get(`${stream}:waymark:last:default`)) !== null);
      } finally {
        c.disconnect();
      }
    } finally {
      await bumper.close();
    }
  });

  it('counts the watch limit across two instances: exactly the limit per session', async function () {
    await start(2, { WAYMARK_MAX_WATCHES_PER_SESSION: '3' });
    const sessions = 8;
    const perSession = 5;
    let accepted = 0;
    let refused = 0;
    await Promise.all(Array.from({ length: sessions }, async () => {
      const c = await pool.open();
      const results = await Promise.allSettled(Array.from({ length: perSession }, (_, i) => c.call(PROC_WATCH, [`/l/${i}`, { token: 't' }])));
      accepted += results.filter((r) => r.status === 'fulfilled').length;
      refused += results.filter((r) => r.status === 'rejected' && (r.reason as { error?: string }).error === ERROR_URIS.too_many_watches).length;
    }));
    const held = instances.map((h) => h.waymark.registry.size);
    console.log(`      limit 3 on a cluster, 2 instances, ${sessions} sessions x ${perSession} concurrent watches: accepted ${accepted} of ${sessions * perSession} (instances hold ${held.join('+')}), too_many_watches ${refused}`);
    expect(accepted).to.equal(sessions * 3);
    expect(refused).to.equal(sessions * (perSession - 3));
    expect(held.every((n) => n > 0), 'both instances served watches').to.equal(true);
  });

  it('waymark doctor names the mode and the node its probe subscriber reached', async function () {
    await start(1);
    const config = loadConfig({ ...componentEnv(channel, api.url), ...clusterEnv() });
    // a backend publishing on one node meanwhile: --listen-ms watches every node
    let publishing = true;
    const backend = (async () => {
      while (publishing) {
        await onNode(cluster.nodes[5].port, (r) => r.publish(channel, '/d/1'));
        await sleep(100);
      }
    })();
    const results = await runDoctor(config, { timeoutMs: 3_000, listenMs: 800 }).finally(() => { publishing = false; });
    await backend;
    const redis = results.find((r) => r.name === 'redis')!;
    console.log(`      doctor: ${redis.detail}`);
    expect(redis.status).to.equal('ok');
    expect(redis.detail).to.match(/^cluster via 127\.0\.0\.1:\d+.*\(3 masters, 6 nodes, cluster_state ok\).*subscribed on 127\.0\.0\.1:\d+/);
    const bumps = results.find((r) => r.name === 'bumps')!;
    expect(bumps.status, bumps.detail).to.equal('ok');
    expect(bumps.detail).to.match(new RegExp(`bump\\(s\\) published on ${channel}`));
  });

  it('what a bump costs each node: a PUBLISH reaches every node over the cluster bus, an SPUBLISH only its shard', async function () {
    const n = 2_000;
    type Snapshot = { role: string; publishIn: number; publishOut: number; shardIn: number; shardOut: number; cpuMs: number };
    const snapshot = () => Promise.all(cluster.nodes.map((node) => onNode(node.port, async (r): Promise<Snapshot> => {
      const info = String(await r.cluster('INFO'));
      const stats = await r.info();
      const field = (text: string, key: string) => Number(new RegExp(`^${key}:([\\d.]+)`, 'm').exec(text)?.[1] ?? 0);
      return {
        role: /role:master/.test(stats) ? 'master' : 'replica',
        publishIn: field(info, 'cluster_stats_messages_publish_received'),
        publishOut: field(info, 'cluster_stats_messages_publish_sent'),
        shardIn: field(info, 'cluster_stats_messages_publishshard_received'),
        shardOut: field(info, 'cluster_stats_messages_publishshard_sent'),
        cpuMs: (field(stats, 'used_cpu_sys') + field(stats, 'used_cpu_user')) * 1000,
      };
    })));
    const plain = await (async () => {
      const before = await snapshot();
      // from one node, pipelined, as a busy backend would
      await onNode(cluster.nodes[1].port, async (r) => {
        const p = r.pipeline();
        for (let i = 0; i < n; i += 1) p.publish(channel, `/users/${i}`);
        await p.exec();
      });
      // the bus delivers to the other nodes after the publisher has answered: wait (bounded) until it has
      let after = await snapshot();
      for (let t = 0; t < 40 && after.some((a, i) => i !== 1 && a.publishIn - before[i].publishIn < n); t += 1) {
        await new Promise((r) => setTimeout(r, 50));
        after = await snapshot();
      }
      return after.map((a, i) => ({
        node: i === 1 ? `${a.role} (publisher's)` : a.role,
        busIn: a.publishIn - before[i].publishIn,
        busOut: a.publishOut - before[i].publishOut,
        cpuMs: Math.round(a.cpuMs - before[i].cpuMs),
      }));
    })();
    console.log(`      ${n} PUBLISH on one node, per node: ${plain.map((x) => `${x.node} in ${x.busIn}/out ${x.busOut} bus msgs, ${x.cpuMs} ms CPU`).join('; ')}`);
    // every other node, replicas included, receives each PUBLISH once over the bus
    for (const [i, x] of plain.entries()) if (i !== 1) expect(x.busIn, `node ${i}`).to.equal(n);
    expect(plain[1].busOut).to.equal(n * (cluster.nodes.length - 1));
    // SPUBLISH on the shard's master: its replica gets it, no other node does
    const shardMaster = await cluster.masterOf(await onNode(cluster.nodes[1].port, (r) => r.cluster('KEYSLOT', `{${channel}}`)) as number);
    const sharded = await (async () => {
      const before = await snapshot();
      await onNode(shardMaster.port, async (r) => {
        const p = r.pipeline();
        for (let i = 0; i < n; i += 1) p.call('SPUBLISH', `{${channel}}`, `/users/${i}`);
        await p.exec();
      });
      let after = await snapshot();
      for (let t = 0; t < 40 && !after.some((a, i) => a.shardIn - before[i].shardIn >= n); t += 1) {
        await new Promise((r) => setTimeout(r, 50));
        after = await snapshot();
      }
      return after.map((a, i) => ({ port: cluster.nodes[i].port, role: a.role, busIn: a.shardIn - before[i].shardIn, cpuMs: Math.round(a.cpuMs - before[i].cpuMs) }));
    })();
    console.log(`      ${n} SPUBLISH on the shard's master, per node: ${sharded.map((x) => `${x.port === shardMaster.port ? 'master (publisher\'s)' : x.role} in ${x.busIn} bus msgs, ${x.cpuMs} ms CPU`).join('; ')}`);
    expect(sharded.filter((x) => x.busIn === n)).to.have.length(1);
    expect(sharded.filter((x) => x.busIn === 0)).to.have.length(cluster.nodes.length - 1);
  });

  /**
   * Kill `victim` (a master) while bumps of every path are published (a backend retries a bump
   * that failed, bounded), then wait for the replica's promotion: every watcher must end on the
   * API's state. Prints `fault: <name> ...`.
   */
  async function masterKill(
    name: string, env: Record<string, string>, victim: RedisNode, bump: { channel?: string; stream?: string }, check?: () => Promise<void>,
  ): Promise<void> {
    await start(2, env);
    const paths = ['/f/1', '/f/2', '/f/3'];
    const watchers = await watchAll(pool, 6, paths);
    await check?.();
    expect(await onNode(victim.port, (r) => r.info('replication'))).to.match(/role:master[\s\S]*connected_slaves:1/);
    const bumper = createBumper({ redisUrl, redisClusterNodes: cluster.seeds, ...bump });
    const backend = keepBumping(bumper, versions, paths);
    try {
      await sleep(300);
      const killedAt = Date.now();
      await cluster.kill(victim);
      await waitFor('a replica promoted and the cluster ok again', () => cluster.healthy(), 15_000);
      const recovered = Date.now();
      const { published, failedPublishes } = await backend.stop();
      console.log(`      failover took ${recovered - killedAt} ms; bumps published ${published}, publish attempts that failed and were retried ${failedPublishes}`);
      const r = await converge(name, watchers, (w) => ({ status: 200, body: versions.body(w.path, w.token) }), recovered);
      expect(r.lost).to.equal(0);
      // both lost their connection with the node, came back and refetched
      for (const h of instances) expect(h.logs.join(''), 'refetched after the failover').to.include('redis bumps flowing again').and.include('bumps may have been lost');
    } finally {
      await backend.stop();
      await bumper.close();
    }
  }

  it('pub/sub: the master under the subscribers killed while bumps are published: a replica takes over, every watcher converges, 0 lost', async function () {
    // Subscribers start on the first seed, a master: killing it takes their subscriptions too.
    const victim = cluster.nodes[0];
    await masterKill('cluster-master-kill', {}, victim, { channel }, async () => {
      expect(await onNode(victim.port, (r) => r.client('LIST')), 'the subscribers are on the node killed').to.match(/name=waymark-subscriber-/);
    });
  });

  it('stream mode: the stream\'s master killed while bumps are added: a replica takes over, every watcher converges, 0 lost', async function () {
    // a stream key whose master still has a replica (the test before took one away)
    let stream = '';
    let victim: RedisNode | undefined;
    for (let i = 0; i < 50 && !victim; i += 1) {
      const key = `${channel}:stream:${i}`;
      const master = await cluster.masterOf(await onNode(cluster.nodes[1].port, (r) => r.cluster('KEYSLOT', key)) as number);
      if (/connected_slaves:1/.test(await onNode(master.port, (r) => r.info('replication')))) [stream, victim] = [key, master];
    }
    expect(victim, 'a master with a replica').not.to.equal(undefined);
    await masterKill('cluster-master-kill-stream', { WAYMARK_BUMP_STREAM: stream }, victim!, { stream });
  });
});
