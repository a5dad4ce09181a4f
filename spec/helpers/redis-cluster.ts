import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { sleep } from './env.js';
import { freePort } from './spawn.js';

/**
 * Real Redis Cluster and Sentinel sets for the specs, from Debian's redis-server (7.0): every
 * process on free ports of 127.0.0.1 in a temp dir, with short failure timeouts so a failover
 * takes about two seconds. `stop()` kills every process and removes the dir; it is also run when
 * the test process exits, so a failed spec leaves nothing behind.
 */

const REDIS_SERVER = process.env.WAYMARK_TEST_REDIS_SERVER || 'redis-server';
const REDIS_CLI = process.env.WAYMARK_TEST_REDIS_CLI || 'redis-cli';

const running = new Set<ChildProcess>();
/** the password of each data node started with one, for onNode */
const passwords = new Map<number, string>();
process.once('exit', () => { for (const p of running) p.kill('SIGKILL'); });

/** Is redis-server (with redis-cli) installed? The cluster specs are skipped, loudly, when not. */
export function redisServerAvailable(): boolean {
  return spawnSync(REDIS_SERVER, ['--version']).status === 0 && spawnSync(REDIS_CLI, ['--version']).status === 0;
}

export interface RedisNode {
  port: number;
  process: ChildProcess;
  /** `127.0.0.1:<port>` */
  address: string;
}

function startServer(dir: string, port: number, args: string[], password?: string): RedisNode {
  if (password) {
    passwords.set(port, password);
    args = ['--requirepass', password, '--masterauth', password, ...args];
  }
  const child = spawn(REDIS_SERVER, [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no',
    '--logfile', join(dir, `${port}.log`), '--loglevel', 'notice',
    // a replica syncs at once instead of after the 5 s wait for other replicas
    '--repl-diskless-sync-delay', '0', ...args,
  ], { stdio: 'ignore' });
  running.add(child);
  child.once('exit', () => running.delete(child));
  return { port, process: child, address: `127.0.0.1:${port}` };
}

/** Wait (bounded) until the node answers PING. */
async function answering(port: number, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = new Redis(port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, password: passwords.get(port) });
    r.on('error', () => undefined);
    try {
      await r.connect();
      await r.ping();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`redis-server on ${port} did not start: ${(err as Error).message}`);
    } finally {
      r.disconnect();
    }
    await sleep(20);
  }
}

/** Run `fn` on a short-lived connection to one node. */
export async function onNode<T>(port: number, fn: (r: Redis) => Promise<T>): Promise<T> {
  const r = new Redis(port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 1_000, password: passwords.get(port) });
  r.on('error', () => undefined);
  try {
    await r.connect();
    return await fn(r);
  } finally {
    r.disconnect();
  }
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

function killAll(nodes: RedisNode[], dir: string): void {
  for (const n of nodes) if (n.process.exitCode === null && n.process.signalCode === null) n.process.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
}

export interface RedisClusterSet {
  nodes: RedisNode[];
  /** `host:port` of every node, for WAYMARK_REDIS_CLUSTER_NODES */
  seeds: string[];
  /** the node currently master of `slot` (asks a live node) */
  masterOf(slot: number): Promise<RedisNode>;
  /** SIGKILL one node; resolves once it is gone */
  kill(node: RedisNode): Promise<void>;
  /** every live node says cluster_state:ok and every slot has a live master */
  healthy(): Promise<boolean>;
  stop(): void;
}

/**
 * A Redis Cluster of `masters` masters with one replica each, every node requiring `password`
 * when given. cluster-node-timeout is 1 s, and replicas may always fail over (validity factor 0),
 * so a killed master's replica takes over in about two seconds.
 */
export async function startRedisCluster(masters = 3, password?: string, nodeTimeoutMs = 1_000): Promise<RedisClusterSet> {
  const dir = mkdtempSync(join(tmpdir(), 'waymark-cluster-'));
  const nodes: RedisNode[] = [];
  try {
    for (let i = 0; i < masters * 2; i += 1) {
      // The bus port is usually port + 10000, which a free port above 55535 cannot have.
      const [port, bus] = [await freePort(), await freePort()];
      nodes.push(startServer(dir, port, [
        '--cluster-enabled', 'yes', '--cluster-port', String(bus), '--cluster-config-file', join(dir, `nodes-${port}.conf`),
        '--cluster-node-timeout', String(nodeTimeoutMs), '--cluster-replica-validity-factor', '0', '--repl-ping-replica-period', '1',
      ], password));
    }
    await Promise.all(nodes.map((n) => answering(n.port)));
    const auth = password ? ['-a', password, '--no-auth-warning'] : [];
    const create = spawnSync(REDIS_CLI, [...auth, '--cluster', 'create', ...nodes.map((n) => n.address), '--cluster-replicas', '1', '--cluster-yes'], { encoding: 'utf8', timeout: 20_000 });
    if (create.status !== 0) throw new Error(`redis-cli --cluster create failed: ${create.stdout}${create.stderr}`);
    const set: RedisClusterSet = {
      nodes,
      seeds: nodes.map((n) => n.address),
      async masterOf(slot) {
        for (const n of nodes) {
          if (n.process.exitCode !== null || n.process.signalCode !== null) continue;
          const slots = await onNode(n.port, (r) => r.cluster('SLOTS')).catch(() => null) as Array<[number, number, [string, number]]> | null;
          const range = slots?.find(([from, to]) => slot >= from && slot <= to);
          if (range) return nodes.find((x) => x.port === range[2][1])!;
        }
        throw new Error(`no node knows the master of slot ${slot}`);
      },
      async kill(node) {
        const gone = new Promise((resolve) => node.process.once('exit', resolve));
        node.process.kill('SIGKILL');
        await gone;
      },
      async healthy() {
        const live = nodes.filter((n) => n.process.exitCode === null && n.process.signalCode === null);
        const states = await Promise.all(live.map((n) => onNode(n.port, async (r) => {
          const info = String(await r.cluster('INFO'));
          const slots = await r.cluster('SLOTS') as unknown as Array<[number, number, [string, number]]>;
          // every slot range's master is a live node
          return /cluster_state:ok/.test(info) && slots.every(([, , [, port]]) => live.some((l) => l.port === port));
        }).catch(() => false)));
        return states.every(Boolean);
      },
      stop: () => killAll(nodes, dir),
    };
    await until('cluster_state ok on every node', () => set.healthy(), 10_000);
    // A replica can take over only once it has synced with its master.
    await until('every replica in sync', async () => {
      const roles = await Promise.all(nodes.map((n) => onNode(n.port, (r) => r.info('replication'))));
      return roles.every((i) => /role:master/.test(i) || /master_link_status:up/.test(i));
    }, 10_000);
    return set;
  } catch (err) {
    killAll(nodes, dir);
    throw err;
  }
}

export interface SentinelSet {
  master: RedisNode;
  replica: RedisNode;
  sentinels: RedisNode[];
  /** `host:port` of each sentinel, for WAYMARK_REDIS_SENTINELS */
  addresses: string[];
  name: string;
  /** the master's port as the sentinels report it now */
  currentMasterPort(): Promise<number>;
  stop(): void;
}

/**
 * One master, one replica and three sentinels (quorum 2) watching them as `name`: a master that
 * stops answering for 500 ms is failed over. Master and replica require `password` when given.
 */
export async function startSentinelSet(name = 'waymark', password?: string): Promise<SentinelSet> {
  const dir = mkdtempSync(join(tmpdir(), 'waymark-sentinel-'));
  const all: RedisNode[] = [];
  try {
    const master = startServer(dir, await freePort(), [], password);
    all.push(master);
    await answering(master.port);
    const replica = startServer(dir, await freePort(), ['--replicaof', '127.0.0.1', String(master.port), '--repl-ping-replica-period', '1'], password);
    all.push(replica);
    await answering(replica.port);
    await until('the replica in sync', () => onNode(replica.port, async (r) => /master_link_status:up/.test(await r.info('replication'))), 10_000);
    const sentinels: RedisNode[] = [];
    const ids = [0, 1, 2].map(() => randomBytes(20).toString('hex'));
    const ports = [await freePort(), await freePort(), await freePort()];
    for (let i = 0; i < 3; i += 1) {
      const port = ports[i];
      // A sentinel rewrites its configuration file, so each has its own. It is told its peers and
      // the replica, which it would otherwise learn over several seconds of hello messages.
      const conf = join(dir, `sentinel-${port}.conf`);
      writeFileSync(conf, [
        `sentinel myid ${ids[i]}`,
        `sentinel monitor ${name} 127.0.0.1 ${master.port} 2`,
        `sentinel down-after-milliseconds ${name} 500`,
        `sentinel failover-timeout ${name} 3000`,
        `sentinel parallel-syncs ${name} 1`,
        ...(password ? [`sentinel auth-pass ${name} ${password}`] : []),
        `sentinel known-replica ${name} 127.0.0.1 ${replica.port}`,
        ...[0, 1, 2].filter((j) => j !== i).map((j) => `sentinel known-sentinel ${name} 127.0.0.1 ${ports[j]} ${ids[j]}`),
        '',
      ].join('\n'));
      const child = spawn(REDIS_SERVER, [conf, '--sentinel', '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--logfile', join(dir, `sentinel-${port}.log`)], { stdio: 'ignore' });
      running.add(child);
      child.once('exit', () => running.delete(child));
      const node = { port, process: child, address: `127.0.0.1:${port}` };
      sentinels.push(node);
      all.push(node);
    }
    await Promise.all(sentinels.map((s) => answering(s.port)));
    // A failover needs the sentinels to know each other (hello messages, every 2 s) and the replica.
    await until('sentinels know each other and the replica', async () => {
      const views = await Promise.all(sentinels.map((s) => onNode(s.port, async (r) => {
        const others = await r.call('SENTINEL', 'SENTINELS', name) as unknown[];
        const replicas = await r.call('SENTINEL', 'REPLICAS', name) as unknown[];
        return others.length === 2 && replicas.length === 1;
      })));
      return views.every(Boolean);
    }, 15_000);
    return {
      master, replica, sentinels, name,
      addresses: sentinels.map((s) => s.address),
      async currentMasterPort() {
        for (const s of sentinels) {
          if (s.process.exitCode !== null) continue;
          const addr = await onNode(s.port, (r) => r.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', name)).catch(() => null) as [string, string] | null;
          if (addr) return Number(addr[1]);
        }
        throw new Error('no sentinel answered');
      },
      stop: () => killAll(all, dir),
    };
  } catch (err) {
    killAll(all, dir);
    throw err;
  }
}
