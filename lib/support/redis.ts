import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import { parseNodeAddress, type RedisTarget } from '../protocol/config.js';
import { redactUrl } from './logger.js';

/**
 * The one place Redis clients are built (contract section 13), so no part can stay single-node
 * by accident: the bump source and stream reader, the watch index, probes, the bumper,
 * `POST /bump`, `waymark doctor` and `waymark bump` all come through `createRedis`.
 */

export type RedisMode = 'single' | 'cluster' | 'sentinel';

/** A client for commands: one node (single, Sentinel) or the whole cluster. */
export type RedisClient = Redis | Cluster;

export function redisMode(target: RedisTarget): RedisMode {
  if (target.redisClusterNodes?.length) return 'cluster';
  if (target.redisSentinels?.length) return 'sentinel';
  return 'single';
}

/**
 * Which Redis, in words, never with the password: the URL (single), the seed nodes (cluster) or
 * the master set and its sentinels.
 */
export function describeRedis(target: RedisTarget): string {
  const mode = redisMode(target);
  if (mode === 'cluster') return `cluster via ${target.redisClusterNodes!.join(',')}`;
  if (mode === 'sentinel') return `sentinel master set ${target.redisSentinelName} via ${target.redisSentinels!.join(',')}`;
  return redactUrl(target.redisUrl);
}

/** Who a connection is for; it names the connection in CLIENT LIST (`connectionName`). */
export interface RedisConnectionOptions {
  /** @default true: the caller connects (and sees the first error) */
  lazyConnect?: boolean;
  /** @default true (ioredis) */
  enableOfflineQueue?: boolean;
  /** @default 20 (ioredis) */
  maxRetriesPerRequest?: number | null;
  autoResubscribe?: boolean;
  autoResendUnfulfilledCommands?: boolean;
  enableAutoPipelining?: boolean;
  /** milliseconds to establish a connection. @default 10000 (ioredis) */
  connectTimeout?: number;
  /**
   * Milliseconds before reconnect attempt `times` (1, 2, ...), or null to give up. On a cluster
   * it paces reconnecting to the whole cluster; single nodes that die are replaced by ioredis'
   * slot refresh (MOVED, `retryDelayOnFailover`).
   */
  retryStrategy?: (times: number) => number | null;
  connectionName?: string;
}

/** username, password, TLS and database of WAYMARK_REDIS_URL, for the modes that use no host from it */
function credentials(url: string): Pick<RedisOptions, 'username' | 'password' | 'tls' | 'db'> {
  const u = new URL(url);
  const db = Number(u.pathname.replace(/^\//, '') || 0);
  return {
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(u.protocol === 'rediss:' ? { tls: {} } : {}),
    ...(Number.isInteger(db) && db > 0 ? { db } : {}),
  };
}

// A replica answers writes with READONLY: on Sentinel that means the master we hold was demoted.
const readonlyReconnect = (err: Error) => /^READONLY/.test(err.message);

/**
 * A client for commands: `new Redis(url)` on one node, `new Cluster(nodes)` on Redis Cluster
 * (slots followed through MOVED and failovers), or a Redis whose every (re)connect asks the
 * sentinels for the current master. `role` names the connection (`waymark-<role>`) unless
 * `opts.connectionName` does. Nothing connects before `connect()` or a first command.
 */
export function createRedis(target: RedisTarget, role: string, opts: RedisConnectionOptions = {}): RedisClient {
  const mode = redisMode(target);
  const { retryStrategy, enableOfflineQueue, enableAutoPipelining, lazyConnect = true, ...node } = opts;
  const connectionName = opts.connectionName ?? `waymark-${role.replace(/ /g, '-')}`;
  if (mode === 'cluster') {
    const options: ClusterOptions = {
      lazyConnect,
      ...(enableOfflineQueue !== undefined ? { enableOfflineQueue } : {}),
      ...(enableAutoPipelining !== undefined ? { enableAutoPipelining } : {}),
      ...(retryStrategy ? { clusterRetryStrategy: retryStrategy } : {}),
      redisOptions: { ...node, connectionName, ...credentials(target.redisUrl), db: 0 },
    };
    return new Cluster(target.redisClusterNodes!.map(parseNodeAddress), options);
  }
  return createNode(target, { ...opts, connectionName, lazyConnect });
}

/**
 * A client on ONE node, for what must stay on one connection (a subscriber). Single and
 * Sentinel: as createRedis. Cluster: a plain connection to one node, which moves to the next
 * known node on every reconnect: classic pub/sub is broadcast over the cluster bus, so a
 * subscriber on any node gets every PUBLISH, and unlike ioredis' cluster subscriber (which
 * silently resubscribes elsewhere) the owner sees the close and resubscribes itself.
 */
export function createNodeRedis(target: RedisTarget, role: string, opts: RedisConnectionOptions = {}): Redis {
  const connectionName = opts.connectionName ?? `waymark-${role.replace(/ /g, '-')}`;
  if (redisMode(target) !== 'cluster') return createNode(target, { lazyConnect: true, ...opts, connectionName });
  const known = target.redisClusterNodes!.map(parseNodeAddress);
  let next = 0;
  const { retryStrategy, ...rest } = opts;
  const redis = new Redis({
    lazyConnect: true,
    ...rest,
    connectionName,
    ...credentials(target.redisUrl),
    db: 0,
    ...known[0],
    retryStrategy: (times) => {
      const delay = retryStrategy ? retryStrategy(times) : Math.min(times * 50, 2_000);
      if (delay === null) return null;
      // ioredis' connector reads host and port from these options on every connect.
      next = (next + 1) % known.length;
      Object.assign(redis.options, known[next]);
      return delay;
    },
  });
  redis.on('ready', () => {
    // Learn the cluster's live nodes, so the next reconnect can go to any of them. Sent before
    // the owner's SUBSCRIBE ('ready' listeners run in order, and this one is first).
    redis.call('CLUSTER', 'NODES').then((text) => {
      const live = liveClusterNodes(String(text));
      if (live.length === 0) return;
      const here = `${redis.options.host}:${redis.options.port}`;
      known.splice(0, known.length, ...live);
      next = Math.max(0, live.findIndex((n) => `${n.host}:${n.port}` === here));
    }, () => undefined);
  });
  return redis;
}

/** host and port of each node (or master) of `CLUSTER NODES` that is neither failed nor without an address */
export function liveClusterNodes(text: string, mastersOnly = false): Array<{ host: string; port: number }> {
  const out: Array<{ host: string; port: number }> = [];
  for (const line of text.split('\n')) {
    const [, address, flags] = line.trim().split(' ');
    if (!address || !flags || /fail|handshake|noaddr/.test(flags) || (mastersOnly && !/master/.test(flags))) continue;
    const hostPort = address.split('@')[0].split(',')[0];
    const i = hostPort.lastIndexOf(':');
    const host = hostPort.slice(0, i);
    if (!host) continue;
    out.push({ host, port: Number(hostPort.slice(i + 1)) });
  }
  return out;
}

function createNode(target: RedisTarget, opts: RedisConnectionOptions & { connectionName: string }): Redis {
  if (redisMode(target) === 'sentinel') {
    const auth = credentials(target.redisUrl);
    const redis = new Redis({
      ...opts,
      ...auth,
      sentinels: target.redisSentinels!.map(parseNodeAddress),
      name: target.redisSentinelName!,
      role: 'master',
      // No failover detector: its disconnect, landing while a reconnect asks the sentinels, ends
      // the client for good (ioredis 6). A killed master is noticed by its closed connection, a
      // demoted one by READONLY (below); either way the reconnect asks the sentinels again.
      ...(auth.tls ? { enableTLSForSentinelMode: true, sentinelTLS: {} } : {}),
      // A sentinel that does not answer must not hold up trying the next one.
      sentinelCommandTimeout: 1_000,
      // Asking the sentinels again follows the same backoff, and gives up when it does.
      ...(opts.retryStrategy ? { sentinelRetryStrategy: opts.retryStrategy } : {}),
      reconnectOnError: readonlyReconnect,
    });
    keepConnecting(redis, opts.retryStrategy);
    return redis;
  }
  return new Redis(target.redisUrl, opts);
}

/**
 * ioredis ends a client for good when its connector fails rather than its socket (a sentinel
 * connector whose connect is cut short). A client meant to reconnect forever is started again;
 * one closed by its owner (quit, disconnect) or whose retryStrategy gives up stays ended.
 */
function keepConnecting(redis: Redis, retryStrategy?: (times: number) => number | null): void {
  const delay = retryStrategy ? retryStrategy(1) : 100;
  if (delay === null) return;
  let closedByOwner = false;
  const quit = redis.quit.bind(redis);
  const disconnect = redis.disconnect.bind(redis);
  redis.quit = ((...args: Parameters<Redis['quit']>) => { closedByOwner = true; return quit(...args); }) as Redis['quit'];
  redis.disconnect = (reconnect = false) => { if (!reconnect) closedByOwner = true; disconnect(reconnect); };
  redis.on('end', () => {
    if (!closedByOwner) setTimeout(() => { if (!closedByOwner && redis.status === 'end') redis.connect().catch(() => undefined); }, delay).unref();
  });
}

/** `host:port` of the node a one-node client is connected to, for logs and `waymark doctor`. */
export function connectedNode(redis: Redis): string | undefined {
  const s = redis.stream as { remoteAddress?: string; remotePort?: number } | undefined;
  return s?.remoteAddress ? `${s.remoteAddress.includes(':') ? `[${s.remoteAddress}]` : s.remoteAddress}:${s.remotePort}` : undefined;
}
