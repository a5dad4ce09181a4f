import { ConfigError } from './errors.js';

/** The longest revalidation period (one day): Node timers overflow past 2^31-1 ms. */
export const MAX_REVALIDATE_MS = 86_400_000;

/** Request headers Waymark sets itself: a client can never supply them (contract section 2). */
export const RESERVED_REQUEST_HEADERS: readonly string[] = [
  'host', 'x-waymark', 'user-agent', 'content-length', 'transfer-encoding', 'connection', 'accept-encoding',
];

/** Hop-by-hop headers (RFC 9110 7.6.1) and set-cookie never reach a browser. */
export const NEVER_FORWARDED_RESPONSE_HEADERS: readonly string[] = [
  'set-cookie', 'set-cookie2', 'connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization',
  'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade',
];

export type LogFormat = 'json' | 'pretty';

/** Everything Waymark can be told, read from the environment in exactly one place. */
export interface WaymarkConfig {
  /** @default 'ws://127.0.0.1:8080/ws' (WAYMARK_ROUTER_URL) */
  routerUrl: string;
  /** @default 'realm1' (WAYMARK_REALM) */
  realm: string;
  /** WAMP-ticket authid; anonymous when unset (WAYMARK_ROUTER_AUTHID) */
  routerAuthid?: string;
  /** required with routerAuthid (WAYMARK_ROUTER_TICKET) */
  routerTicket?: string;
  /**
   * Redis, or in cluster and sentinel mode only its username, password and TLS (`rediss:`).
   * @default 'redis://127.0.0.1:6379' (WAYMARK_REDIS_URL)
   */
  redisUrl: string;
  /** Redis Cluster seed nodes as `host:port`; the rest are discovered (WAYMARK_REDIS_CLUSTER_NODES) */
  redisClusterNodes?: string[];
  /** Sentinels as `host:port`, with redisSentinelName (WAYMARK_REDIS_SENTINELS) */
  redisSentinels?: string[];
  /** the master set's name the sentinels monitor (WAYMARK_REDIS_SENTINEL_NAME) */
  redisSentinelName?: string;
  /** @default 'waymark:bumps' (WAYMARK_BUMP_CHANNEL) */
  bumpChannel: string;
  /** origin plus optional base path, without a trailing slash; required (WAYMARK_API_URL) */
  apiUrl: string;
  /** @default 'info' (WAYMARK_LOG_LEVEL) */
  logLevel: string;
  /** @default 'json' (WAYMARK_LOG_FORMAT) */
  logFormat: LogFormat;
  /** @default '127.0.0.1' (WAYMARK_ADMIN_HOST) */
  adminHost: string;
  /** 0 turns the admin server off. @default 8081 (WAYMARK_ADMIN_PORT) */
  adminPort: number;
  /** bearer secret of `POST /bump` on the admin port; the endpoint is off when unset (WAYMARK_BUMP_SECRET) */
  bumpSecret?: string;
  /** lower-case request header names a client may forward (WAYMARK_FORWARD_HEADERS) */
  forwardHeaders: readonly string[];
  /** lower-case response header names pushed to the client (WAYMARK_RESPONSE_HEADERS) */
  responseHeaders: readonly string[];
  /** @default false (WAYMARK_PUSH_UNCHANGED) */
  pushUnchanged: boolean;
  /**
   * one fetch per bump or revalidation for the watches of a path whose own latest answer was a
   * 200 with `Cache-Control: public` (contract 12, RFC 9111 3.5). @default true (WAYMARK_SHARE_PUBLIC)
   */
  sharePublic: boolean;
  /** @default 100 (WAYMARK_MAX_WATCHES_PER_SESSION) */
  maxWatchesPerSession: number;
  /** @default 2048 (WAYMARK_MAX_PATH_BYTES) */
  maxPathBytes: number;
  /** @default 8192 (WAYMARK_MAX_HEADER_BYTES) */
  maxHeaderBytes: number;
  /** @default 1048576 (WAYMARK_MAX_BODY_BYTES) */
  maxBodyBytes: number;
  /** @default 5000 (WAYMARK_FETCH_TIMEOUT_MS) */
  fetchTimeoutMs: number;
  /** @default 64 (WAYMARK_FETCH_CONCURRENCY) */
  fetchConcurrency: number;
  /** watch/unwatch/refresh calls per second per session (token bucket refill). @default 20 (WAYMARK_RATE_LIMIT) */
  rateLimit: number;
  /** calls a session may make at once before the rate applies. @default 100 (WAYMARK_RATE_BURST) */
  rateBurst: number;
  /** how long stop() waits for in-flight fetches and publishes. @default 10000 (WAYMARK_SHUTDOWN_TIMEOUT_MS) */
  shutdownTimeoutMs: number;
  /**
   * WebSocket ping interval on the router connection: a connection silent for two to three
   * intervals is dropped and rejoined, and an opening handshake gets two intervals.
   * @default 5000 (WAYMARK_ROUTER_PING_MS)
   */
  routerPingMs: number;
  /** longest pause between Redis reconnect attempts. @default 5000 (WAYMARK_REDIS_RECONNECT_MAX_MS) */
  redisReconnectMaxMs: number;
  /** how often a probe checks that bumps still arrive; 0 turns it off. @default 5000 (WAYMARK_REDIS_PROBE_MS) */
  redisProbeMs: number;
  /** read bumps from this Redis Stream instead of the channel; unset: pub/sub (WAYMARK_BUMP_STREAM) */
  bumpStream?: string;
  /** approximate length `waymark bump` and createBumper trim the stream to. @default 100000 (WAYMARK_BUMP_STREAM_MAXLEN) */
  bumpStreamMaxLen: number;
  /** name under which this instance saves its stream position. @default 'default' (WAYMARK_BUMP_STREAM_READER) */
  bumpStreamReader: string;
  /** consecutive API failures that open the circuit breaker; 0 turns it off. @default 5 (WAYMARK_BREAKER_FAILURES) */
  breakerFailures: number;
  /** how long an open breaker fails fast before one probe request. @default 5000 (WAYMARK_BREAKER_COOLDOWN_MS) */
  breakerCooldownMs: number;
  /** lower-case response header names whose values are the response's tags; [] turns tags off (WAYMARK_TAG_HEADERS) */
  tagHeaders: readonly string[];
  /** tags kept per response, in header order; the rest are dropped and counted. @default 64 (WAYMARK_MAX_TAGS_PER_RESPONSE) */
  maxTagsPerResponse: number;
  /** revalidation period of watches that give no `revalidateMs`; 0 is off. @default 0 (WAYMARK_REVALIDATE_MS) */
  revalidateMs: number;
  /** the shortest `revalidateMs` a watch may ask for. @default 5000 (WAYMARK_MIN_REVALIDATE_MS) */
  minRevalidateMs: number;
}

export const DEFAULTS = {
  routerUrl: 'ws://127.0.0.1:8080/ws',
  realm: 'realm1',
  redisUrl: 'redis://127.0.0.1:6379',
  bumpChannel: 'waymark:bumps',
  logLevel: 'info',
  logFormat: 'json' as LogFormat,
  adminHost: '127.0.0.1',
  adminPort: 8081,
  forwardHeaders: ['authorization', 'cookie', 'accept', 'accept-language'],
  responseHeaders: [
    'content-type', 'etag', 'last-modified', 'cache-control', 'content-language', 'link', 'vary', 'location',
  ],
  pushUnchanged: false,
  sharePublic: true,
  maxWatchesPerSession: 100,
  maxPathBytes: 2048,
  maxHeaderBytes: 8192,
  maxBodyBytes: 1048576,
  fetchTimeoutMs: 5000,
  fetchConcurrency: 64,
  rateLimit: 20,
  rateBurst: 100,
  shutdownTimeoutMs: 10000,
  routerPingMs: 5000,
  redisReconnectMaxMs: 5000,
  redisProbeMs: 5000,
  bumpStreamMaxLen: 100000,
  bumpStreamReader: 'default',
  breakerFailures: 5,
  breakerCooldownMs: 5000,
  tagHeaders: ['waymark-tags', 'surrogate-key', 'cache-tag'],
  maxTagsPerResponse: 64,
  revalidateMs: 0,
  minRevalidateMs: 5000,
} satisfies Omit<WaymarkConfig, 'apiUrl'>;

const LOG_LEVELS = ['error', 'warn', 'info', 'http', 'verbose', 'debug', 'silly'];
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9a-z-]+$/;

type Env = Record<string, string | undefined>;

/**
 * Which Redis, in which mode (contract section 13): one node (`redisUrl`), Redis Cluster
 * (`redisClusterNodes`) or Sentinel (`redisSentinels` + `redisSentinelName`). In the last two,
 * `redisUrl` gives only the username, password and TLS. `createRedis` (lib/support/redis.ts)
 * builds every client from it.
 */
export type RedisTarget = Pick<WaymarkConfig, 'redisUrl' | 'redisClusterNodes' | 'redisSentinels' | 'redisSentinelName'>;

/** Only the Redis settings of a configuration (or of anything that carries them). */
export function redisTarget(c: RedisTarget): RedisTarget {
  return {
    redisUrl: c.redisUrl,
    ...(c.redisClusterNodes ? { redisClusterNodes: c.redisClusterNodes } : {}),
    ...(c.redisSentinels ? { redisSentinels: c.redisSentinels, redisSentinelName: c.redisSentinelName } : {}),
  };
}

/** Where bumps go: the settings `createBumper` needs (see `bumperOptions` in bumper.ts). */
export type BumpTarget = RedisTarget & Pick<WaymarkConfig, 'bumpChannel' | 'bumpStream'> & { bumpStreamMaxLen?: number };

/** `host:port`, `[v6]:port`; the port 1-65535. */
const NODE_ADDRESS = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$/;

/** Parse `host:port` as validated by readRedisTarget (IPv6 hosts lose their brackets). */
export function parseNodeAddress(node: string): { host: string; port: number } {
  const i = node.lastIndexOf(':');
  return { host: node.slice(0, i).replace(/^\[(.*)\]$/, '$1'), port: Number(node.slice(i + 1)) };
}

/** Read and check the Redis settings; each problem goes to `bad` (setting, message). */
function readRedisTarget(env: Env, bad: (name: string, msg: string) => void): RedisTarget {
  const redisUrl = env.WAYMARK_REDIS_URL?.trim() || DEFAULTS.redisUrl;
  const redisProblem = redisUrlProblem(redisUrl);
  if (redisProblem) bad('WAYMARK_REDIS_URL', redisProblem);
  const db = redisProblem ? '' : new URL(redisUrl).pathname.replace(/^\//, '');
  const nodes = (name: string): string[] | undefined => {
    const raw = env[name]?.trim();
    if (!raw) return undefined;
    const list = raw.split(',').map((s) => s.trim());
    for (const n of list) {
      const m = NODE_ADDRESS.exec(n);
      if (!m || Number(m[1]) < 1 || Number(m[1]) > 65535) {
        bad(name, `must be host:port[,host:port...], got ${JSON.stringify(n)}`);
        return undefined;
      }
    }
    return [...new Set(list)];
  };
  const redisClusterNodes = nodes('WAYMARK_REDIS_CLUSTER_NODES');
  const redisSentinels = nodes('WAYMARK_REDIS_SENTINELS');
  const redisSentinelName = env.WAYMARK_REDIS_SENTINEL_NAME?.trim() || undefined;
  if (env.WAYMARK_REDIS_CLUSTER_NODES?.trim() && env.WAYMARK_REDIS_SENTINELS?.trim()) {
    bad('WAYMARK_REDIS_SENTINELS', 'cannot be used together with WAYMARK_REDIS_CLUSTER_NODES: Redis Cluster or Sentinel, not both');
  } else if (env.WAYMARK_REDIS_SENTINELS?.trim() && !redisSentinelName) {
    bad('WAYMARK_REDIS_SENTINEL_NAME', 'is required with WAYMARK_REDIS_SENTINELS: the name of the master set the sentinels monitor');
  } else if (redisSentinelName && !env.WAYMARK_REDIS_SENTINELS?.trim()) {
    bad('WAYMARK_REDIS_SENTINEL_NAME', 'is only used with WAYMARK_REDIS_SENTINELS (host:port of each sentinel)');
  } else if (redisSentinelName && !/^[A-Za-z0-9._-]{1,100}$/.test(redisSentinelName)) {
    bad('WAYMARK_REDIS_SENTINEL_NAME', `must be 1-100 letters, digits or . _ -, got ${JSON.stringify(redisSentinelName)}`);
  }
  if (redisClusterNodes && db && db !== '0') {
    bad('WAYMARK_REDIS_URL', `selects database ${db}, but Redis Cluster has only database 0`);
  }
  return {
    redisUrl,
    ...(redisClusterNodes ? { redisClusterNodes } : {}),
    ...(redisSentinels ? { redisSentinels } : {}),
    ...(redisSentinels && redisSentinelName ? { redisSentinelName } : {}),
  };
}

/**
 * Only where bumps go, for `waymark bump` and `demo-api`: they need no WAYMARK_API_URL, so they
 * do not take the component's whole configuration.
 */
export function loadBumpTarget(env: Env): BumpTarget {
  const rawMax = env.WAYMARK_BUMP_STREAM_MAXLEN?.trim();
  if (rawMax && !/^[1-9]\d*$/.test(rawMax)) throw new ConfigError('WAYMARK_BUMP_STREAM_MAXLEN', `must be a whole number above 0, got ${JSON.stringify(rawMax)}`);
  const redis = readRedisTarget(env, (name, msg) => { throw new ConfigError(name, msg); });
  return {
    ...redis,
    bumpChannel: env.WAYMARK_BUMP_CHANNEL || DEFAULTS.bumpChannel,
    bumpStream: env.WAYMARK_BUMP_STREAM?.trim() || undefined,
    ...(rawMax ? { bumpStreamMaxLen: Number(rawMax) } : {}),
  };
}

/**
 * Only where a browser joins, for `waymark watch`: WAYMARK_ROUTER_URL and WAYMARK_REALM, checked
 * as `loadConfig` checks them.
 */
export function loadRouterTarget(env: Env): Pick<WaymarkConfig, 'routerUrl' | 'realm'> {
  const routerUrl = env.WAYMARK_ROUTER_URL?.trim() || DEFAULTS.routerUrl;
  const problem = wsUrlProblem(routerUrl);
  if (problem) throw new ConfigError('WAYMARK_ROUTER_URL', problem);
  return { routerUrl, realm: env.WAYMARK_REALM?.trim() || DEFAULTS.realm };
}

function wsUrlProblem(v: string): string | undefined {
  try {
    const u = new URL(v);
    if (u.protocol !== 'ws:' && u.protocol !== 'wss:') return `must be a ws:// or wss:// URL, got ${v}`;
  } catch {
    return `must be a ws:// or wss:// URL, got ${JSON.stringify(v)}`;
  }
  return undefined;
}

function redisUrlProblem(v: string): string | undefined {
  try {
    const u = new URL(v);
    if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') return `must be a redis:// or rediss:// URL, got ${u.protocol}`;
  } catch {
    // not quoted: a mistyped URL may still carry the password
    return 'must be a redis:// or rediss:// URL, e.g. redis://127.0.0.1:6379';
  }
  return undefined;
}

/**
 * Parse the WAYMARK_* environment. Every problem is collected, then reported together in one
 * ConfigError naming the first bad setting, so an operator fixes them in one round.
 */
export function loadConfig(env: Env): WaymarkConfig {
  const problems: Array<[string, string]> = [];
  const bad = (name: string, msg: string) => problems.push([name, msg]);
  const str = (name: string, def: string): string => {
    const v = env[name];
    if (v === undefined || v === '') return def;
    return v.trim();
  };
  const int = (name: string, def: number, min: number, max = Number.MAX_SAFE_INTEGER): number => {
    const raw = env[name];
    if (raw === undefined || raw.trim() === '') return def;
    if (!/^\d+$/.test(raw.trim())) {
      bad(name, `must be a whole number, got ${JSON.stringify(raw)}`);
      return def;
    }
    const n = Number(raw.trim());
    if (n < min || n > max) bad(name, `must be between ${min} and ${max}, got ${n}`);
    return n;
  };
  const bool = (name: string, def: boolean): boolean => {
    const raw = env[name];
    if (raw === undefined || raw.trim() === '') return def;
    const v = raw.trim().toLowerCase();
    if (['1', 'true', 'yes', 'on'].includes(v)) return true;
    if (['0', 'false', 'no', 'off'].includes(v)) return false;
    bad(name, `must be true or false, got ${JSON.stringify(raw)}`);
    return def;
  };
  const list = (name: string, def: readonly string[]): string[] => {
    const raw = env[name];
    if (raw === undefined) return [...def];
    const names = raw.split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
    for (const n of names) if (!HEADER_NAME.test(n)) bad(name, `${JSON.stringify(n)} is not a header name`);
    return [...new Set(names)];
  };
  const wsUrl = (name: string, def: string): string => {
    const v = str(name, def);
    const problem = wsUrlProblem(v);
    if (problem) bad(name, problem);
    return v;
  };

  const routerUrl = wsUrl('WAYMARK_ROUTER_URL', DEFAULTS.routerUrl);
  const realm = str('WAYMARK_REALM', DEFAULTS.realm);
  const routerAuthid = env.WAYMARK_ROUTER_AUTHID?.trim() || undefined;
  const routerTicket = env.WAYMARK_ROUTER_TICKET || undefined;
  if (routerAuthid && !routerTicket) bad('WAYMARK_ROUTER_TICKET', 'is required when WAYMARK_ROUTER_AUTHID is set');

  const redis = readRedisTarget(env, bad);
  const bumpChannel = str('WAYMARK_BUMP_CHANNEL', DEFAULTS.bumpChannel);
  const bumpStream = env.WAYMARK_BUMP_STREAM?.trim() || undefined;
  const bumpStreamReader = str('WAYMARK_BUMP_STREAM_READER', DEFAULTS.bumpStreamReader);
  if (!/^[A-Za-z0-9._:-]{1,100}$/.test(bumpStreamReader)) {
    bad('WAYMARK_BUMP_STREAM_READER', `must be 1-100 letters, digits or . _ : -, got ${JSON.stringify(bumpStreamReader)}`);
  }

  let apiUrl = '';
  const rawApi = env.WAYMARK_API_URL?.trim();
  if (!rawApi) {
    bad('WAYMARK_API_URL', 'is required: the origin (and optional base path) paths are fetched from, e.g. http://127.0.0.1:8000');
  } else {
    try {
      const u = new URL(rawApi);
      if (u.protocol !== 'http:' && u.protocol !== 'https:') bad('WAYMARK_API_URL', `must be an http:// or https:// URL, got ${u.protocol}`);
      else if (u.username || u.password) bad('WAYMARK_API_URL', 'must not carry credentials');
      else if (u.search || u.hash) bad('WAYMARK_API_URL', 'must not carry a query or fragment');
      else apiUrl = u.origin + u.pathname.replace(/\/+$/, '');
    } catch {
      bad('WAYMARK_API_URL', `is not a URL: ${JSON.stringify(rawApi)}`);
    }
  }

  const logLevel = str('WAYMARK_LOG_LEVEL', DEFAULTS.logLevel).toLowerCase();
  if (!LOG_LEVELS.includes(logLevel)) bad('WAYMARK_LOG_LEVEL', `must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(logLevel)}`);
  const logFormat = str('WAYMARK_LOG_FORMAT', DEFAULTS.logFormat) as LogFormat;
  if (logFormat !== 'json' && logFormat !== 'pretty') bad('WAYMARK_LOG_FORMAT', `must be json or pretty, got ${JSON.stringify(logFormat)}`);

  const adminHost = str('WAYMARK_ADMIN_HOST', DEFAULTS.adminHost);
  const adminPort = int('WAYMARK_ADMIN_PORT', DEFAULTS.adminPort, 0, 65535);
  // A bearer secret: long enough not to be guessed, visible ASCII so it fits an Authorization
  // header as it is. The messages never quote it.
  const bumpSecret = env.WAYMARK_BUMP_SECRET || undefined;
  if (bumpSecret !== undefined) {
    if (!/^[\x21-\x7e]{16,}$/.test(bumpSecret)) bad('WAYMARK_BUMP_SECRET', 'must be at least 16 visible ASCII characters without spaces (e.g. openssl rand -hex 32)');
    else if (adminPort === 0) bad('WAYMARK_BUMP_SECRET', 'POST /bump is served on the admin port, but WAYMARK_ADMIN_PORT is 0');
  }

  const forwardHeaders = list('WAYMARK_FORWARD_HEADERS', DEFAULTS.forwardHeaders);
  for (const h of forwardHeaders) {
    if (RESERVED_REQUEST_HEADERS.includes(h)) bad('WAYMARK_FORWARD_HEADERS', `${h} is set by Waymark itself and cannot be forwarded`);
  }
  const responseHeaders = list('WAYMARK_RESPONSE_HEADERS', DEFAULTS.responseHeaders);
  for (const h of responseHeaders) {
    if (NEVER_FORWARDED_RESPONSE_HEADERS.includes(h)) bad('WAYMARK_RESPONSE_HEADERS', `${h} is never pushed to browsers`);
  }

  const minRevalidateMs = int('WAYMARK_MIN_REVALIDATE_MS', DEFAULTS.minRevalidateMs, 100, MAX_REVALIDATE_MS);
  const revalidateMs = int('WAYMARK_REVALIDATE_MS', DEFAULTS.revalidateMs, 0, MAX_REVALIDATE_MS);
  if (revalidateMs !== 0 && revalidateMs < minRevalidateMs) {
    bad('WAYMARK_REVALIDATE_MS', `must be 0 (off) or at least WAYMARK_MIN_REVALIDATE_MS (${minRevalidateMs}), got ${revalidateMs}`);
  }

  const config: WaymarkConfig = {
    routerUrl,
    realm,
    routerAuthid,
    routerTicket,
    ...redis,
    bumpChannel,
    apiUrl,
    logLevel,
    logFormat,
    adminHost,
    adminPort,
    ...(bumpSecret ? { bumpSecret } : {}),
    forwardHeaders,
    responseHeaders,
    pushUnchanged: bool('WAYMARK_PUSH_UNCHANGED', DEFAULTS.pushUnchanged),
    sharePublic: bool('WAYMARK_SHARE_PUBLIC', DEFAULTS.sharePublic),
    maxWatchesPerSession: int('WAYMARK_MAX_WATCHES_PER_SESSION', DEFAULTS.maxWatchesPerSession, 1),
    maxPathBytes: int('WAYMARK_MAX_PATH_BYTES', DEFAULTS.maxPathBytes, 16, 65536),
    maxHeaderBytes: int('WAYMARK_MAX_HEADER_BYTES', DEFAULTS.maxHeaderBytes, 64, 1048576),
    maxBodyBytes: int('WAYMARK_MAX_BODY_BYTES', DEFAULTS.maxBodyBytes, 0, 1024 * 1024 * 1024),
    fetchTimeoutMs: int('WAYMARK_FETCH_TIMEOUT_MS', DEFAULTS.fetchTimeoutMs, 1, 600000),
    fetchConcurrency: int('WAYMARK_FETCH_CONCURRENCY', DEFAULTS.fetchConcurrency, 1, 10000),
    rateLimit: int('WAYMARK_RATE_LIMIT', DEFAULTS.rateLimit, 1, 1_000_000),
    rateBurst: int('WAYMARK_RATE_BURST', DEFAULTS.rateBurst, 1, 1_000_000),
    shutdownTimeoutMs: int('WAYMARK_SHUTDOWN_TIMEOUT_MS', DEFAULTS.shutdownTimeoutMs, 0, 600000),
    routerPingMs: int('WAYMARK_ROUTER_PING_MS', DEFAULTS.routerPingMs, 100, 600000),
    redisReconnectMaxMs: int('WAYMARK_REDIS_RECONNECT_MAX_MS', DEFAULTS.redisReconnectMaxMs, 10, 600000),
    redisProbeMs: int('WAYMARK_REDIS_PROBE_MS', DEFAULTS.redisProbeMs, 0, 600000),
    bumpStream,
    bumpStreamMaxLen: int('WAYMARK_BUMP_STREAM_MAXLEN', DEFAULTS.bumpStreamMaxLen, 1, 1_000_000_000),
    bumpStreamReader,
    breakerFailures: int('WAYMARK_BREAKER_FAILURES', DEFAULTS.breakerFailures, 0, 1_000_000),
    breakerCooldownMs: int('WAYMARK_BREAKER_COOLDOWN_MS', DEFAULTS.breakerCooldownMs, 1, 600000),
    tagHeaders: list('WAYMARK_TAG_HEADERS', DEFAULTS.tagHeaders),
    maxTagsPerResponse: int('WAYMARK_MAX_TAGS_PER_RESPONSE', DEFAULTS.maxTagsPerResponse, 1, 10_000),
    revalidateMs,
    minRevalidateMs,
  };
  if (problems.length > 0) {
    throw new ConfigError(problems[0][0], problems.map(([n, m], i) => (i === 0 ? m : `${n}: ${m}`)).join('; '));
  }
  return config;
}
