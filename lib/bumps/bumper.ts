import { DEFAULTS, redisTarget, type BumpTarget } from '../protocol/config.js';
import { waitAtMost, withDeadline } from '../support/deadline.js';
import { createRedis, type RedisClient } from '../support/redis.js';
import { parseBumpMessage } from './bump-source.js';

export interface BumperOptions {
  /**
   * Redis; with redisClusterNodes or redisSentinels only its username, password and TLS
   * (`rediss:`) are used. @default 'redis://127.0.0.1:6379' (WAYMARK_REDIS_URL)
   */
  redisUrl?: string;
  /**
   * Redis Cluster: some of its nodes as `host:port` (the rest are discovered), e.g.
   * `['10.0.0.1:7000', '10.0.0.2:7000']` (WAYMARK_REDIS_CLUSTER_NODES). A PUBLISH on any node
   * reaches every subscriber; an XADD goes to the stream's master.
   */
  redisClusterNodes?: string[];
  /** Sentinels as `host:port`, with redisSentinelName (WAYMARK_REDIS_SENTINELS) */
  redisSentinels?: string[];
  /** the master set the sentinels monitor, e.g. `'mymaster'` (WAYMARK_REDIS_SENTINEL_NAME) */
  redisSentinelName?: string;
  /** @default 'waymark:bumps' */
  channel?: string;
  /** an existing ioredis client (Redis or Cluster) to publish on (not closed by close()) */
  redis?: RedisClient;
  /** stream mode (`WAYMARK_BUMP_STREAM`): XADD to this stream instead of PUBLISH on the channel */
  stream?: string;
  /** approximate length the stream is trimmed to on every XADD. @default 100000 */
  streamMaxLen?: number;
  /**
   * Milliseconds bump() waits for Redis before it rejects with a DeadlineError (a cluster or
   * sentinel client would otherwise hold a bump while it keeps looking for a node). @default 10000
   */
  timeoutMs?: number;
}

/** What one bump names (contract 4 and 11): any mix, at least one entry, 1,000 entries at most. */
export interface BumpTargets {
  /** exact paths; one without a query reaches every query of that path */
  paths?: string[];
  /** path prefixes, matched at a segment boundary (`/projects/7` reaches `/projects/7/tasks`) */
  prefixes?: string[];
  /** tags the API declared in its `Waymark-Tags` (or `Surrogate-Key`, `Cache-Tag`) headers */
  tags?: string[];
}

export interface BumpOptions {
  /** the bump id the API sees as `X-Waymark`; Waymark makes one when absent */
  id?: string;
  /** a W3C traceparent sent on the fetches this bump causes */
  traceparent?: string;
}

export interface Bumper {
  /**
   * Publish one bump: a path, several paths, or `{ paths?, prefixes?, tags? }`. Pub/sub: resolves
   * with the number of Waymark subscribers that got it. Stream mode: resolves with 1 once the
   * entry is stored (every reader reads it, now or after an outage). Throws a TypeError for
   * nothing to bump, an entry that is not a string (paths and prefixes must start with `/`), and
   * anything Waymark would drop: a path, prefix or tag its grammar refuses, more than 1,000
   * entries, an id over 200 characters or with control characters, a message over 64 KiB.
   */
  bump(target: string | string[] | BumpTargets, opts?: BumpOptions): Promise<number>;
  close(): Promise<void>;
}

/** createBumper's options for a configuration: its channel or, in stream mode, its stream. */
export function bumperOptions(target: BumpTarget): BumperOptions {
  return {
    ...redisTarget(target),
    channel: target.bumpChannel,
    ...(target.bumpStream ? { stream: target.bumpStream, ...(target.bumpStreamMaxLen !== undefined ? { streamMaxLen: target.bumpStreamMaxLen } : {}) } : {}),
  };
}

/** The connection createBumper opens when given none. */
export function createBumperRedis(opts: Omit<BumperOptions, 'redis'>): RedisClient {
  const { redisClusterNodes, redisSentinels, redisSentinelName } = opts;
  if (redisClusterNodes && redisSentinels) throw new TypeError('createBumper: redisClusterNodes and redisSentinels exclude each other');
  if (redisSentinels && !redisSentinelName) throw new TypeError('createBumper: redisSentinels needs redisSentinelName');
  const redis = createRedis(redisTarget({ redisUrl: opts.redisUrl ?? DEFAULTS.redisUrl, redisClusterNodes, redisSentinels, redisSentinelName }), 'bumper', { maxRetriesPerRequest: 1 });
  // Each failed bump() rejects with its error; without a listener ioredis would also print every
  // reconnect attempt ("Unhandled error event") into the backend's output, a failover's worth.
  redis.on('error', () => undefined);
  return redis;
}

/** The Node helper for backends: `await createBumper().bump('/users/1')`. */
export function createBumper(opts: BumperOptions = {}): Bumper {
  const own = !opts.redis;
  const redis = opts.redis ?? createBumperRedis(opts);
  const channel = opts.channel ?? DEFAULTS.bumpChannel;
  let closing: Promise<void> | undefined;
  return {
    async bump(target, { id, traceparent } = {}) {
      const t: BumpTargets = typeof target === 'string' ? { paths: [target] } : Array.isArray(target) ? { paths: target } : target ?? {};
      const paths = t.paths ?? [];
      const prefixes = t.prefixes ?? [];
      const tags = t.tags ?? [];
      if (paths.length + prefixes.length + tags.length === 0
        || [...paths, ...prefixes].some((p) => typeof p !== 'string' || !p.startsWith('/'))
        || tags.some((tag) => typeof tag !== 'string' || tag.length === 0)) {
        throw new TypeError('bump needs origin-relative paths or prefixes such as "/users/1", or non-empty tags');
      }
      const extra = { ...(id ? { id } : {}), ...(traceparent ? { traceparent } : {}) };
      // The bare-path form is the cheapest for Waymark to parse; JSON only when it carries more.
      const message = paths.length === 1 && prefixes.length + tags.length === 0 && id === undefined && !traceparent && !/\s/.test(paths[0])
        ? paths[0]
        : JSON.stringify(paths.length === 1 && prefixes.length + tags.length === 0
          ? { path: paths[0], ...extra }
          : { ...(paths.length ? { paths } : {}), ...(prefixes.length ? { prefixes } : {}), ...(tags.length ? { tags } : {}), ...extra });
      // What Waymark would drop (over 64 KiB, over 1,000 entries, a bad id, path or tag) is
      // refused here, so a backend never believes in a bump that goes nowhere.
      const check = parseBumpMessage(message, Number.MAX_SAFE_INTEGER);
      if (!check.ok) throw new TypeError(`bump refused: ${check.reason}`);
      if (check.dropped > 0) throw new TypeError(`bump refused: ${("invalid" in check && check.invalid) || `${check.dropped} entries Waymark would drop`}`);
      const timeoutMs = opts.timeoutMs ?? 10_000;
      const within = <T>(work: Promise<T>) => withDeadline(work, timeoutMs, `no answer from Redis within ${timeoutMs} ms`);
      if (opts.stream) {
        // The same three message forms, in the `bump` field of one entry; MAXLEN ~ keeps it bounded.
        await within(redis.xadd(opts.stream, 'MAXLEN', '~', opts.streamMaxLen ?? DEFAULTS.bumpStreamMaxLen, '*', 'bump', message));
        return 1;
      }
      return within(redis.publish(channel, message));
    },
    close() {
      // QUIT is not answered by a Redis never reached: a bounded wait, then the socket is closed.
      closing ??= own ? waitAtMost(redis.quit().catch(() => undefined), 1_000).finally(() => redis.disconnect()) : Promise.resolve();
      return closing;
    },
  };
}
