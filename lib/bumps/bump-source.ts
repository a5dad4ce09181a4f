import { randomUUID } from 'node:crypto';
import { ReplyError, type Redis } from 'ioredis';
import { waitAtMost } from '../support/deadline.js';
import { createNodeRedis, createRedis, redisMode, type RedisClient } from '../support/redis.js';
import type { Logger } from '../support/logger.js';
import { RateLimitedLog } from '../support/rate-limited-log.js';
import type { RedisTarget } from '../protocol/config.js';
import type { Bump } from '../protocol/types.js';
import { isValidTag, MAX_TAG_LENGTH, parseTraceparent, validatePath } from '../protocol/validation.js';

export interface BumpSource {
  /** Resolves once bumps flow; `onBump` is called for every well-formed bump. */
  start(onBump: (bump: Bump) => void): Promise<void>;
  stop(): Promise<void>;
}

export const MAX_BUMP_MESSAGE_BYTES = 64 * 1024;
export const MAX_PATHS_PER_BUMP = 1_000;
const MAX_ID_LENGTH = 200;

/**
 * What one bump names. `invalid`: why the first dropped entry was refused, for callers that
 * answer the sender (POST /bump).
 */
export type ParsedBump =
  | { ok: true; id?: string; paths: string[]; prefixes: string[]; tags: string[]; traceparent?: string; dropped: number; invalid?: string; probe?: undefined }
  /** `{"probe": "<token>"}`: Waymark's own liveness probe, never a bump (it carries no paths) */
  | { ok: true; probe: string; paths: []; prefixes: []; tags: []; dropped: 0; id?: undefined; traceparent?: undefined }
  | { ok: false; reason: string };

const LISTS = ['paths', 'prefixes', 'tags'] as const;

/**
 * The message forms of contract sections 4 and 11: a bare path, `{"path", "id"?}` or
 * `{"paths"?, "prefixes"?, "tags"?, "id"?, "traceparent"?}` (at least one of the three lists).
 * Paths and prefixes that fail the watch grammar, and tags that fail the tag grammar, are
 * dropped (they can match no watch anyway) and counted, so a hostile bump can never make
 * Waymark fetch them; the cap of MAX_PATHS_PER_BUMP entries counts all three lists together.
 * An invalid traceparent is ignored: the bump still counts (contract 11.6).
 */
export function parseBumpMessage(message: unknown, maxPathBytes: number): ParsedBump {
  if (typeof message !== 'string') return { ok: false, reason: 'message is not a string' };
  if (Buffer.byteLength(message) > MAX_BUMP_MESSAGE_BYTES) return { ok: false, reason: `message is over ${MAX_BUMP_MESSAGE_BYTES} bytes` };
  const text = message.trim();
  let id: string | undefined;
  let traceparent: string | undefined;
  const candidates: Record<(typeof LISTS)[number], unknown[]> = { paths: [], prefixes: [], tags: [] };
  if (text.startsWith('{')) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      return { ok: false, reason: 'message is not valid JSON' };
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return { ok: false, reason: 'JSON message is not an object' };
    const obj = parsed as Record<string, unknown>;
    if (obj.probe !== undefined && Object.keys(obj).length === 1) {
      if (typeof obj.probe !== 'string' || obj.probe.length === 0 || obj.probe.length > MAX_ID_LENGTH) {
        return { ok: false, reason: 'probe must be a non-empty string' };
      }
      return { ok: true, probe: obj.probe, paths: [], prefixes: [], tags: [], dropped: 0 };
    }
    if (obj.id !== undefined) {
      if (typeof obj.id !== 'string' || obj.id.length === 0 || obj.id.length > MAX_ID_LENGTH || /[\x00-\x1f\x7f]/.test(obj.id)) {
        return { ok: false, reason: `id must be a non-empty string of at most ${MAX_ID_LENGTH} visible characters` };
      }
      id = obj.id;
    }
    traceparent = parseTraceparent(obj.traceparent);
    const needs = 'JSON message needs a string "path" or an array "paths", "prefixes" or "tags" ("path" and "paths" not both)';
    if (obj.path !== undefined) {
      if (typeof obj.path !== 'string' || obj.paths !== undefined) return { ok: false, reason: needs };
      candidates.paths = [obj.path];
    }
    for (const list of LISTS) {
      const v = obj[list];
      if (v === undefined) continue;
      if (!Array.isArray(v)) return { ok: false, reason: `"${list}" must be an array` };
      candidates[list] = v;
    }
    if (obj.path === undefined && LISTS.every((l) => obj[l] === undefined)) {
      return { ok: false, reason: needs };
    }
  } else if (text.startsWith('/')) {
    candidates.paths = [text];
  } else {
    return { ok: false, reason: 'message is neither a path nor a JSON object' };
  }
  const out = { paths: new Set<string>(), prefixes: new Set<string>(), tags: new Set<string>() };
  let entries = 0;
  let dropped = 0;
  let invalid: string | undefined;
  for (const list of LISTS) {
    for (const c of candidates[list]) {
      if (entries >= MAX_PATHS_PER_BUMP) {
        dropped += 1;
        invalid ??= `more than ${MAX_PATHS_PER_BUMP} paths, prefixes and tags in one bump`;
        continue;
      }
      try {
        if (list === 'tags') {
          if (!isValidTag(c)) throw new Error(`tag ${JSON.stringify(c).slice(0, 80)} is not 1-${MAX_TAG_LENGTH} visible ASCII characters without comma`);
          out.tags.add(c);
        } else {
          out[list].add(validatePath(c, maxPathBytes));
        }
        entries += 1;
      } catch (err) {
        dropped += 1;
        invalid ??= `${list === 'prefixes' ? 'prefix: ' : ''}${(err as Error).message}`;
      }
    }
  }
  if (entries === 0) return { ok: false, reason: `no valid path, prefix or tag in message${invalid ? ` (${invalid})` : ''}` };
  return {
    ok: true, id, paths: [...out.paths], prefixes: [...out.prefixes], tags: [...out.tags], dropped,
    ...(traceparent ? { traceparent } : {}), ...(invalid ? { invalid } : {}),
  };
}

/** Redis in any mode of contract section 13 (`redisUrl`, or cluster nodes, or sentinels). */
export interface RedisBumpSourceOptions extends RedisTarget {
  channel: string;
  maxPathBytes: number;
  logger: Logger;
  /** longest pause between reconnect attempts. @default 5000 */
  reconnectMaxMs?: number;
  /** how often to check that bumps still arrive (0: never). @default 5000 */
  probeMs?: number;
  /** told when the subscription is up (true) or lost (false) */
  onState?: (subscribed: boolean) => void;
  /**
   * Bumps may have been lost (pub/sub resubscribed after an outage, or the stream was trimmed
   * past the last id read): the owner refetches every watch once. Never called at start-up.
   */
  onResync?: (reason: string) => void;
  /** every reconnect attempt, for metrics */
  onReconnect?: () => void;
  onMalformed?: () => void;
}

/** Stream mode: the key, and the name this instance saves its position under. */
export interface RedisStreamBumpSourceOptions extends Omit<RedisBumpSourceOptions, 'channel'> {
  stream: string;
  /** @default 'default' */
  reader?: string;
}

/** Where a stream reader saves the last id it handled, so a restart resumes there. */
export function streamCursorKey(stream: string, reader = 'default'): string {
  return `${stream}:waymark:last:${reader}`;
}

/** Saved positions of readers that stopped for good expire instead of piling up. */
const CURSOR_TTL_SECONDS = 7 * 24 * 3600;
/** Entries one XREAD returns at most: a backlog after an outage is read in slices. */
const STREAM_BATCH = 1_000;

/** A reply about the command itself (WRONGTYPE, say), not about reaching the node that owns the key. */
function isCommandError(err: unknown): boolean {
  return err instanceof ReplyError && !/^(CLUSTERDOWN|TRYAGAIN|MOVED|ASK|READONLY|MASTERDOWN|LOADING)\b/.test((err as Error).message);
}

/** Compare two stream ids (`<ms>-<seq>`) numerically. */
export function compareStreamIds(a: string, b: string): number {
  const [am, as = '0'] = a.split('-');
  const [bm, bs = '0'] = b.split('-');
  const d = BigInt(am) - BigInt(bm);
  if (d !== 0n) return d < 0n ? -1 : 1;
  const e = BigInt(as) - BigInt(bs);
  return e === 0n ? 0 : e < 0n ? -1 : 1;
}

/**
 * What both modes share: one message path (probes recognised, malformed messages counted and
 * logged at a limited rate), connections with capped backoff, structured state logs, and a
 * watchdog for connections whose TCP is up but whose handshake never completes (a silent peer).
 */
abstract class RedisSource implements BumpSource {
  protected readonly warnings: RateLimitedLog;
  protected readonly logger: Logger;
  protected readonly probeMs: number;
  protected stopped = false;
  protected up = false;
  protected everUp = false;
  private watchdog?: NodeJS.Timeout;
  /** the primary connection (subscriber, stream reader) is the one whose state is `up` */
  private readonly connections: Array<{ redis: RedisClient; role: string; since: number; primary: boolean }> = [];
  private stopping?: Promise<void>;
  /** names this source's connections in CLIENT LIST: `waymark-<role>-<uid>` */
  protected readonly uid = randomUUID().slice(0, 8);

  constructor(private readonly base: RedisBumpSourceOptions | RedisStreamBumpSourceOptions) {
    this.logger = base.logger;
    this.warnings = new RateLimitedLog(base.logger);
    this.probeMs = base.probeMs ?? 5_000;
  }

  abstract start(onBump: (bump: Bump) => void): Promise<void>;
  protected abstract tick(now: number): void;
  protected abstract close(): Promise<void>;

  /**
   * A connection that reconnects forever with capped backoff and never queues commands offline.
   * `oneNode`: a single connection even on a cluster (a subscriber), else a cluster client there.
   */
  protected connection(role: string, primary: boolean, oneNode: true): Redis;
  protected connection(role: string, primary: boolean, oneNode?: false): RedisClient;
  protected connection(role: string, primary: boolean, oneNode = false): RedisClient {
    const cap = this.base.reconnectMaxMs ?? 5_000;
    const redis = (oneNode ? createNodeRedis : createRedis)(this.base, role, {
      connectionName: `waymark-${role.replace(/ /g, '-')}-${this.uid}`,
      // Commands fail at once while disconnected, and in-flight ones fail on close instead of
      // being resent: the owner decides what to do again after a reconnect.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResubscribe: false,
      autoResendUnfulfilledCommands: false,
      retryStrategy: (times) => Math.min(100 * 2 ** Math.min(times - 1, 16), cap),
    });
    // monotonic: a wall-clock step must not look like (or hide) a stalled handshake
    const entry = { redis, role, since: performance.now(), primary };
    this.connections.push(entry);
    redis.on('error', (err: Error) => this.warnings.warn(`redis-error-${role}`, 'redis connection error', { role, error: err.message }));
    redis.on('connect', () => { entry.since = performance.now(); });
    redis.on('ready', () => { entry.since = performance.now(); });
    redis.on('reconnecting', (delayMs: number) => {
      this.base.onReconnect?.();
      this.logger.info('redis reconnecting', { role, inMs: delayMs });
    });
    return redis;
  }

  /** Probes and the handshake watchdog run every probeMs (when probing is on). */
  protected startWatchdog(): void {
    if (this.probeMs <= 0 || this.watchdog) return;
    this.watchdog = setInterval(() => {
      const now = performance.now();
      for (const { redis, role, since, primary } of this.connections) {
        // TCP up but no answer to the handshake (or to the subscribe / catch-up that follows):
        // nothing else would ever notice.
        if ((redis.status === 'connect' || (primary && redis.status === 'ready' && !this.up)) && now - since > 2 * this.probeMs) {
          this.logger.warn('redis handshake not answered; reconnecting', { role, waitedMs: now - since });
          redis.disconnect(true);
        }
      }
      this.tick(now);
    }, this.probeMs);
    this.watchdog.unref();
  }

  protected setUp(up: boolean, meta: Record<string, unknown>): void {
    if (up === this.up) return;
    this.up = up;
    if (up) {
      const again = this.everUp;
      this.everUp = true;
      this.logger.info(again ? 'redis bumps flowing again' : 'redis bumps flowing', meta);
    } else if (!this.stopped) {
      this.logger.warn('redis bumps interrupted', meta);
    }
    if (!this.stopped) this.base.onState?.(up);
  }

  protected resync(reason: string): void {
    if (this.stopped) return;
    this.logger.warn('bumps may have been lost; refetching every watch', { reason });
    this.base.onResync?.(reason);
  }

  /** Parse one message; probes go to `onProbe`, bumps to `onBump`. */
  protected handle(message: string, onBump: (bump: Bump) => void, onProbe: (token: string) => void): void {
    const at = Date.now();
    const parsed = parseBumpMessage(message, this.base.maxPathBytes);
    if (!parsed.ok) {
      this.base.onMalformed?.();
      this.warnings.warn('malformed-bump', 'dropped a malformed bump', { reason: parsed.reason, bytes: message.length });
      return;
    }
    if (parsed.probe !== undefined) {
      onProbe(parsed.probe);
      return;
    }
    if (parsed.dropped > 0) {
      this.warnings.warn('bump-paths-dropped', 'dropped invalid or excess paths, prefixes or tags from a bump', { dropped: parsed.dropped });
    }
    onBump({
      id: parsed.id ?? randomUUID(), paths: parsed.paths, at,
      ...(parsed.prefixes.length ? { prefixes: parsed.prefixes } : {}),
      ...(parsed.tags.length ? { tags: parsed.tags } : {}),
      ...(parsed.traceparent ? { traceparent: parsed.traceparent } : {}),
    });
  }

  /** Force a reconnect of every connection (the owner's state follows from their events). */
  protected reconnectAll(): void {
    for (const { redis } of this.connections) {
      // one already waiting to reconnect keeps its backoff
      if (['connecting', 'connect', 'ready'].includes(redis.status)) redis.disconnect(true);
    }
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.stopped = true;
      clearInterval(this.watchdog);
      await this.close().catch(() => undefined);
      await Promise.all(this.connections.map(async ({ redis }) => {
        if (redis.status === 'end') return;
        try {
          if (redis.status !== 'ready') throw new Error('not connected');
          // A silent connection would never answer QUIT.
          await waitAtMost(redis.quit(), 1_000);
        } catch {
          // closed below
        }
        if ((redis.status as string) !== 'end') redis.disconnect();
      }));
      this.up = false;
    })();
    return this.stopping;
  }
}

/**
 * Bumps from Redis pub/sub, on a connection of its own (a subscriber connection can do nothing
 * else). Pub/sub is at-most-once: whatever is published while the subscription is down is gone,
 * so after every resubscribe the owner is told to refetch everything (`onResync`). A probe
 * published on the bump channel from a second connection must come back before the next one is
 * due, or both connections are forced to reconnect: that catches a connection that is up but
 * silent, which TCP alone may not notice for many minutes.
 */
export class RedisBumpSource extends RedisSource {
  private sub?: Redis;
  private pub?: RedisClient;
  /** bumped on every close, so a subscribe answered for an old connection is ignored */
  private generation = 0;
  private probe?: { token: string; sentAt: number };
  private probeSeq = 0;

  constructor(private readonly opts: RedisBumpSourceOptions) {
    super(opts);
  }

  async start(onBump: (bump: Bump) => void): Promise<void> {
    if (this.sub) return;
    const { channel } = this.opts;
    const sub = this.connection('subscriber', true, true);
    this.sub = sub;
    let first: Promise<boolean> | undefined;
    sub.on('ready', () => { first ??= this.subscribe(sub); if (this.everUp) void this.subscribe(sub); });
    sub.on('close', () => {
      this.generation += 1;
      this.probe = undefined;
      this.setUp(false, { channel });
    });
    sub.on('message', (ch: string, message: string) => {
      if (ch !== channel) return;
      this.handle(message, onBump, (token) => {
        if (this.probe?.token === token) this.probe = undefined;
      });
    });
    this.startWatchdog();
    try {
      await sub.connect();
      if (!(await first)) throw new Error(`could not subscribe to ${channel}`);
    } catch (err) {
      await this.stop();
      throw err;
    }
    if (this.probeMs > 0) {
      this.pub = this.connection('probe publisher', false);
      this.pub.connect().catch(() => undefined);
    }
  }

  private async subscribe(sub: Redis): Promise<boolean> {
    const generation = this.generation;
    try {
      await sub.subscribe(this.opts.channel);
    } catch (err) {
      if (generation === this.generation && !this.stopped) {
        this.logger.warn('redis subscribe failed; reconnecting', { error: (err as Error).message });
        sub.disconnect(true);
      }
      return false;
    }
    if (generation !== this.generation || this.stopped) return false;
    const again = this.everUp;
    this.setUp(true, { channel: this.opts.channel });
    if (again) this.resync('resubscribed');
    return true;
  }

  protected tick(now: number): void {
    if (!this.up || this.stopped || !this.pub) return;
    if (this.probe) {
      // The last probe did not come back within one interval: the subscription is deaf.
      this.logger.warn('redis probe not answered; reconnecting', { channel: this.opts.channel, waitedMs: now - this.probe.sentAt });
      this.probe = undefined;
      this.reconnectAll();
      return;
    }
    const token = `${this.uid}:${++this.probeSeq}`;
    this.probe = { token, sentAt: now };
    // A publisher that cannot publish leaves the probe unanswered, which counts as a failure.
    if (this.pub?.status === 'ready') {
      this.pub.publish(this.opts.channel, JSON.stringify({ probe: token })).catch(() => undefined);
    }
  }

  protected async close(): Promise<void> {
    // nothing beyond closing the connections
  }
}

/**
 * Bumps from a Redis Stream (`WAYMARK_BUMP_STREAM`): blocking XREAD from the last id handled,
 * so bumps written during an outage are read after it (at-least-once). The last id is kept in
 * memory across reconnects and saved in Redis (`<stream>:waymark:last:<reader>`) so a restart
 * resumes there; a first start begins at the stream's end. When entries after that id were
 * trimmed away, the owner is told to refetch everything. A blocked XREAD that neither returns
 * nor fails within block + probeMs means a silent connection: it is forced to reconnect.
 */
export class RedisStreamBumpSource extends RedisSource {
  private reader?: RedisClient;
  private cursor = '0-0';
  private loop?: Promise<void>;
  private wake?: () => void;
  private readonly key: string;
  /** cluster or sentinel: a reconnect may follow a failover */
  private readonly highlyAvailable: boolean;

  constructor(private readonly opts: RedisStreamBumpSourceOptions) {
    super(opts);
    this.key = streamCursorKey(opts.stream, opts.reader);
    this.highlyAvailable = redisMode(opts) !== 'single';
  }

  /** The last stream id handled. */
  get lastId(): string {
    return this.cursor;
  }

  private get blockMs(): number {
    return this.probeMs > 0 ? this.probeMs : 5_000;
  }

  async start(onBump: (bump: Bump) => void): Promise<void> {
    if (this.reader) return;
    const { stream } = this.opts;
    const reader = this.connection('stream reader', true);
    this.reader = reader;
    reader.on('ready', () => this.wake?.());
    reader.on('close', () => this.setUp(false, { stream }));
    let trimmed = false;
    let resumed = false;
    try {
      await reader.connect();
      const saved = await this.deadline(reader, 'GET', reader.get(this.key));
      if (saved && /^\d+-\d+$/.test(saved)) {
        resumed = true;
        this.cursor = saved;
        trimmed = await this.catchUp(reader);
      } else {
        this.cursor = (await this.streamInfo(reader))?.lastGenerated ?? '0-0';
      }
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.setUp(true, { stream, from: this.cursor, position: resumed ? (trimmed ? 'saved, trimmed past' : 'saved') : 'end of stream' });
    if (trimmed) this.resync('trimmed');
    this.startWatchdog();
    this.loop = this.read(reader, onBump);
  }

  private async read(reader: RedisClient, onBump: (bump: Bump) => void): Promise<void> {
    const { stream } = this.opts;
    while (!this.stopped) {
      if (reader.status !== 'ready') {
        await new Promise<void>((resolve) => { this.wake = resolve; });
        this.wake = undefined;
        continue;
      }
      try {
        if (!this.up) {
          // Back after an outage: the in-memory id covers it unless the stream was trimmed past it.
          const trimmed = await this.catchUp(reader);
          this.setUp(true, { stream, from: this.cursor });
          if (trimmed) this.resync('trimmed');
          // Replication is asynchronous: entries the old master acknowledged but never passed on
          // are gone after a failover, and nothing in the stream says so.
          else if (this.highlyAvailable) this.resync('reconnected; a failover may have lost unreplicated entries');
        }
        const reply = await this.xread(reader);
        if (!reply) continue;
        for (const [, entries] of reply) {
          for (const [id, fields] of entries) {
            let message: string | undefined;
            for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === 'bump') message = fields[i + 1];
            if (message === undefined) {
              this.opts.onMalformed?.();
              this.warnings.warn('malformed-bump', 'dropped a stream entry without a "bump" field', { id });
            } else {
              this.handle(message, onBump, () => undefined);
            }
            this.cursor = id;
          }
        }
        await this.deadline(reader, 'SET', reader.set(this.key, this.cursor, 'EX', CURSOR_TTL_SECONDS));
      } catch (err) {
        if (this.stopped) break;
        if (this.highlyAvailable && reader.status === 'ready' && !isCommandError(err)) {
          // A cluster client stays 'ready' while one of its nodes fails over: its failed reads
          // are the outage.
          this.setUp(false, { stream, error: (err as Error).message });
          await new Promise((r) => setTimeout(r, 100));
        } else if (reader.status === 'ready') {
          // Not a connection problem (a wrong key type, say): do not spin on it.
          this.warnings.warn('stream-read', 'reading the bump stream failed', { error: (err as Error).message });
          await new Promise((r) => setTimeout(r, 1_000));
        }
      }
    }
  }

  /** A command that must not hang on a silent connection: past the deadline, reconnect. */
  private deadline<T>(reader: RedisClient, what: string, p: Promise<T>): Promise<T> {
    if (this.probeMs <= 0) return p;
    return this.guard(reader, 2 * this.probeMs, 'redis command not answered; reconnecting', { command: what }, p);
  }

  private xread(reader: RedisClient): Promise<Array<[string, Array<[string, string[]]>]> | null> {
    const block = this.blockMs;
    const read = reader.xread('COUNT', STREAM_BATCH, 'BLOCK', block, 'STREAMS', this.opts.stream, this.cursor) as
      Promise<Array<[string, Array<[string, string[]]>]> | null>;
    if (this.probeMs <= 0) return read;
    return this.guard(reader, block + this.probeMs, 'redis stream read not answered; reconnecting', { stream: this.opts.stream }, read);
  }

  /** `p`, but past `ms` the connection is taken for silent: warn and reconnect, which fails `p`. */
  private async guard<T>(reader: RedisClient, ms: number, message: string, meta: Record<string, unknown>, p: Promise<T>): Promise<T> {
    const timer = setTimeout(() => {
      this.logger.warn(message, { ...meta, waitedMs: ms });
      reader.disconnect(true);
    }, ms);
    try {
      return await p;
    } finally {
      clearTimeout(timer);
    }
  }

  /** `XINFO STREAM`, or undefined when the stream does not exist (yet). */
  private async streamInfo(reader: RedisClient): Promise<{ lastGenerated: string; maxDeleted?: string; first?: string; deleted?: number } | undefined> {
    let raw: unknown[];
    try {
      raw = await this.deadline(reader, 'XINFO', reader.call('XINFO', 'STREAM', this.opts.stream)) as unknown[];
    } catch (err) {
      if (/no such key/i.test((err as Error).message)) return undefined;
      throw err;
    }
    const info = new Map<string, unknown>();
    for (let i = 0; i + 1 < raw.length; i += 2) info.set(String(raw[i]), raw[i + 1]);
    const first = info.get('first-entry') as [string, unknown] | null | undefined;
    const maxDeleted = info.get('max-deleted-entry-id');
    const added = info.get('entries-added');
    return {
      ...(typeof added === 'number' ? { deleted: added - Number(info.get('length')) } : {}),
      lastGenerated: String(info.get('last-generated-id') ?? '0-0'),
      ...(typeof maxDeleted === 'string' ? { maxDeleted } : {}),
      ...(first ? { first: first[0] } : {}),
    };
  }

  /**
   * Check the cursor after an outage or restart. When entries after it were trimmed, the full
   * refetch that follows covers everything up to now, so the cursor moves to the stream's end
   * (and is saved): a later restart does not refetch again for the same gap.
   */
  private async catchUp(reader: RedisClient): Promise<boolean> {
    const info = await this.streamInfo(reader);
    if (!this.trimmedPastCursor(info)) return false;
    if (info && compareStreamIds(info.lastGenerated, this.cursor) > 0) {
      this.cursor = info.lastGenerated;
      await this.deadline(reader, 'SET', reader.set(this.key, this.cursor, 'EX', CURSOR_TTL_SECONDS));
    }
    return true;
  }

  /** Were entries after the cursor deleted (trimmed) before we read them? */
  private trimmedPastCursor(info: Awaited<ReturnType<RedisStreamBumpSource['streamInfo']>>): boolean {
    // The stream is gone: whatever it held after our cursor may be lost with it.
    if (!info) return this.cursor !== '0-0';
    // Redis 7 counts every entry ever added: none deleted, none lost.
    if (info.deleted === 0) return false;
    // XDEL past the cursor (Redis 7 records the highest deleted id; XTRIM does not update it).
    if (info.maxDeleted !== undefined && compareStreamIds(info.maxDeleted, this.cursor) > 0) return true;
    // Trimmed: the oldest entry left is past the cursor, or entries came after it and none is
    // left. Conservative: when the entry right after the cursor is the oldest left, it refetches
    // although nothing was lost.
    return info.first !== undefined
      ? compareStreamIds(info.first, this.cursor) > 0
      : compareStreamIds(info.lastGenerated, this.cursor) > 0;
  }

  protected tick(): void {
    // The XREAD watchdog is the probe in stream mode.
  }

  protected async close(): Promise<void> {
    this.wake?.();
    this.reader?.disconnect();
    await this.loop;
  }
}
