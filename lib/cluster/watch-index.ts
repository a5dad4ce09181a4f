import { Cluster } from 'ioredis';
import type { RedisTarget } from '../protocol/config.js';
import type { SessionId } from '../protocol/types.js';
import { createRedis, type RedisClient } from '../support/redis.js';

/**
 * What several instances share about watches: for each session, which watch ids exist and which
 * instance owns each; and which instances are alive with which WAMP session. No credentials:
 * tokens and headers never leave the owning process except over the router.
 */
export interface WatchIndex {
  start(): Promise<void>;
  /**
   * Record that `instance` now owns watch `id` of `session`, unless that would put the session
   * over `max` watches. `previous` is the former owner (null for a new watch).
   */
  claim(session: SessionId, id: string, instance: string, max: number): Promise<{ over: true } | { over: false; previous: string | null }>;
  /** The owner of one watch, or null. */
  owner(session: SessionId, id: string): Promise<string | null>;
  /** Owners of all watches of these sessions (one round trip). */
  owners(sessions: SessionId[]): Promise<Map<SessionId, Record<string, string>>>;
  /** Remove one watch; returns 1 if it existed. */
  remove(session: SessionId, id: string): Promise<number>;
  /** How many watches the session has across all instances. */
  count(session: SessionId): Promise<number>;
  dropSession(session: SessionId): Promise<void>;
  /** Take one call from the session's shared token bucket; false when it is over its rate. */
  take(session: SessionId, perSecond: number, burst: number): Promise<boolean>;
  /** Keep these sessions' entries from expiring (the owner calls this periodically). */
  touch(sessions: SessionId[]): Promise<void>;
  /** Announce an instance and its current WAMP session id. */
  setInstance(instance: string, wampSession: number): Promise<void>;
  instances(): Promise<Map<string, number>>;
  /**
   * Forget an instance if it is still recorded with this WAMP session (a newer session means it
   * came back); true for exactly one caller when several race, so one of them reacts.
   */
  forgetInstance(instance: string, wampSession: number): Promise<boolean>;
  /**
   * A call got no answer in time (the connection looks silent): drop the connection and open a
   * new one, so calls fail at once until the index answers again instead of queueing behind it.
   */
  interrupt?(): void;
  close(): Promise<void>;
}

/**
 * Atomic claim: a new id is admitted only while the session has fewer than ARGV[3] watches, so
 * concurrent watches on different instances cannot overshoot the limit. Returns -1 when over it,
 * else the previous owner ('' when new).
 */
const CLAIM = `
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if not prev then
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
  prev = ''
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return prev
`;

const FORGET = `
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
`;

/**
 * A token bucket per session shared by all instances (the same rule as SessionRateLimiter),
 * on Redis's clock so instances with skewed clocks agree. The key expires once it would be full.
 * Redis's clock is a wall clock: a step back gives a negative elapsed time, counted as 0 (the
 * bucket keeps its tokens instead of going negative and refusing calls for the step's length); a
 * step forward refills at most to `burst`.
 */
const TAKE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) / 1000 * rate)
local ok = 0
if tokens >= 1 then
  tokens = tokens - 1
  ok = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return ok
`;

/**
 * The keys of one session. The session in braces is their hash tag: on Redis Cluster both live
 * in one slot (a command or script that touches them together must not span slots, CROSSSLOT),
 * and sessions spread over the cluster. Whatever braces the prefix holds, the two keys agree up
 * to the session, so they share the tag either way.
 */
export function sessionKeys(prefix: string, session: SessionId): { watches: string; rate: string } {
  return { watches: `${prefix}:{${session}}:watches`, rate: `${prefix}:{${session}}:rate` };
}

/** Instance -> WAMP session id of every instance of the service. */
export function instancesKey(prefix: string): string {
  return `${prefix}:instances`;
}

/** The keys each script (and the one multi-key DEL) touches, for the spec that checks they share a slot. */
export const KEYS_TOUCHED_TOGETHER = {
  claim: (prefix: string, session: SessionId) => [sessionKeys(prefix, session).watches],
  forget: (prefix: string) => [instancesKey(prefix)],
  take: (prefix: string, session: SessionId) => [sessionKeys(prefix, session).rate],
  /** dropSession: one DEL of both */
  drop: (prefix: string, session: SessionId) => [sessionKeys(prefix, session).watches, sessionKeys(prefix, session).rate],
} as const;

export interface RedisWatchIndexOptions extends RedisTarget {
  /** key prefix: instances sharing it are one service */
  prefix: string;
  /** seconds a session's entries live without a touch (owners touch them every third of it) */
  ttlSeconds?: number;
  onError?: (err: Error) => void;
}

type ClaimingRedis = RedisClient & {
  waymarkClaim(key: string, id: string, owner: string, max: number, ttl: number): Promise<string | number>;
  waymarkForget(key: string, instance: string, wampSession: string): Promise<number>;
  waymarkTake(key: string, perSecond: number, burst: number): Promise<number>;
};

/**
 * The index in Redis: hash `<prefix>:{<session>}:watches` (watch id -> owner instance) with a TTL,
 * hash `<prefix>:{<session>}:rate` (the shared token bucket) and hash `<prefix>:instances`
 * (instance -> WAMP session id). Its own connection, without an
 * offline queue: while Redis is away every call fails at once and the caller falls back to what
 * it knows locally, instead of hanging a `waymark.watch`.
 */
export class RedisWatchIndex implements WatchIndex {
  readonly ttlSeconds: number;
  private readonly redis: ClaimingRedis;
  private closing?: Promise<void>;

  constructor(private readonly opts: RedisWatchIndexOptions) {
    this.ttlSeconds = opts.ttlSeconds ?? 86_400;
    this.redis = createRedis(opts, 'index', {
      enableOfflineQueue: false,
      // many watch calls arrive together: one write per event-loop tick for all their scripts
      enableAutoPipelining: true,
      // In-flight calls fail when the connection drops instead of being queued for a resend:
      // a queued resend would make every later call wait behind it (ioredis keeps order), so a
      // silent connection that interrupt() dropped would still hold calls.
      maxRetriesPerRequest: 0,
      retryStrategy: (n) => Math.min(200 * n, 2_000),
    }) as ClaimingRedis;
    this.redis.defineCommand('waymarkClaim', { numberOfKeys: 1, lua: CLAIM });
    this.redis.defineCommand('waymarkForget', { numberOfKeys: 1, lua: FORGET });
    this.redis.defineCommand('waymarkTake', { numberOfKeys: 1, lua: TAKE });
    this.redis.on('error', (err: Error) => opts.onError?.(err));
  }

  private key(session: SessionId): string {
    return sessionKeys(this.opts.prefix, session).watches;
  }

  private rateKey(session: SessionId): string {
    return sessionKeys(this.opts.prefix, session).rate;
  }

  private get instancesKey(): string {
    return instancesKey(this.opts.prefix);
  }

  async start(): Promise<void> {
    if (this.redis.status === 'wait') await this.redis.connect();
  }

  async claim(session: SessionId, id: string, instance: string, max: number) {
    const r = await this.redis.waymarkClaim(this.key(session), id, instance, max, this.ttlSeconds);
    if (r === -1) return { over: true as const };
    return { over: false as const, previous: r === '' ? null : String(r) };
  }

  owner(session: SessionId, id: string): Promise<string | null> {
    return this.redis.hget(this.key(session), id);
  }

  async owners(sessions: SessionId[]): Promise<Map<SessionId, Record<string, string>>> {
    const out = new Map<SessionId, Record<string, string>>();
    if (sessions.length === 0) return out;
    // Separate commands, which auto-pipelining sends in one write per node: an explicit pipeline
    // must stay on one node of a cluster, and these sessions' keys are spread over all of them.
    const all = await Promise.all(sessions.map((s) => this.redis.hgetall(this.key(s))));
    sessions.forEach((s, i) => out.set(s, all[i]));
    return out;
  }

  remove(session: SessionId, id: string): Promise<number> {
    return this.redis.hdel(this.key(session), id);
  }

  count(session: SessionId): Promise<number> {
    return this.redis.hlen(this.key(session));
  }

  async dropSession(session: SessionId): Promise<void> {
    await this.redis.del(this.key(session), this.rateKey(session));
  }

  async take(session: SessionId, perSecond: number, burst: number): Promise<boolean> {
    return (await this.redis.waymarkTake(this.rateKey(session), perSecond, burst)) === 1;
  }

  async touch(sessions: SessionId[]): Promise<void> {
    if (sessions.length === 0) return;
    await Promise.all(sessions.map((s) => this.redis.expire(this.key(s), this.ttlSeconds)));
  }

  async setInstance(instance: string, wampSession: number): Promise<void> {
    await this.redis.hset(this.instancesKey, instance, String(wampSession));
  }

  async instances(): Promise<Map<string, number>> {
    const all = await this.redis.hgetall(this.instancesKey);
    return new Map(Object.entries(all).map(([k, v]) => [k, Number(v)]));
  }

  async forgetInstance(instance: string, wampSession: number): Promise<boolean> {
    return (await this.redis.waymarkForget(this.instancesKey, instance, String(wampSession))) === 1;
  }

  interrupt(): void {
    // Only a connection that claims to be up: one already reconnecting fails calls at once.
    if (this.closing || this.redis.status !== 'ready') return;
    // disconnect() only half-closes the socket; a stopped peer never finishes the close, so
    // ioredis would stay "ready" on it. Destroying the socket makes it reconnect now.
    const sockets = this.redis instanceof Cluster ? this.redis.nodes().map((n) => n.stream) : [this.redis.stream];
    this.redis.disconnect(true);
    for (const socket of sockets) socket?.destroy();
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.redis.status === 'ready') {
        try {
          await this.redis.quit();
          return;
        } catch {
          // fall through to a hard disconnect
        }
      }
      this.redis.disconnect();
    })();
    return this.closing;
  }
}
