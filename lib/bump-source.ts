import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import type { Logger } from './logger.js';
import { RateLimitedLog } from './rate-limited-log.js';
import type { Bump } from './types.js';
import { validatePath } from './validation.js';

export interface BumpSource {
  /** Resolves once bumps flow; `onBump` is called for every well-formed bump. */
  start(onBump: (bump: Bump) => void): Promise<void>;
  stop(): Promise<void>;
}

export const MAX_BUMP_MESSAGE_BYTES = 64 * 1024;
export const MAX_PATHS_PER_BUMP = 1_000;
const MAX_ID_LENGTH = 200;

/** `invalid`: why the first dropped path was refused, for callers that answer the sender (POST /bump). */
export type ParsedBump = { ok: true; id?: string; paths: string[]; dropped: number; invalid?: string } | { ok: false; reason: string };

/**
 * The three message forms of contract section 4: a bare path, `{"path", "id"?}` or
 * `{"paths": [...], "id"?}`. Paths that fail the watch grammar are dropped (they can match no
 * watch anyway) and counted, so a hostile bump can never make Waymark fetch them.
 */
export function parseBumpMessage(message: unknown, maxPathBytes: number): ParsedBump {
  if (typeof message !== 'string') return { ok: false, reason: 'message is not a string' };
  if (Buffer.byteLength(message) > MAX_BUMP_MESSAGE_BYTES) return { ok: false, reason: `message is over ${MAX_BUMP_MESSAGE_BYTES} bytes` };
  const text = message.trim();
  let id: string | undefined;
  let candidates: unknown[];
  if (text.startsWith('{')) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      return { ok: false, reason: 'message is not valid JSON' };
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return { ok: false, reason: 'JSON message is not an object' };
    const obj = parsed as Record<string, unknown>;
    if (obj.id !== undefined) {
      if (typeof obj.id !== 'string' || obj.id.length === 0 || obj.id.length > MAX_ID_LENGTH || /[\x00-\x1f\x7f]/.test(obj.id)) {
        return { ok: false, reason: `id must be a non-empty string of at most ${MAX_ID_LENGTH} visible characters` };
      }
      id = obj.id;
    }
    if (typeof obj.path === 'string' && obj.paths === undefined) candidates = [obj.path];
    else if (Array.isArray(obj.paths) && obj.path === undefined) candidates = obj.paths;
    else return { ok: false, reason: 'JSON message needs a string "path" or an array "paths"' };
  } else if (text.startsWith('/')) {
    candidates = [text];
  } else {
    return { ok: false, reason: 'message is neither a path nor a JSON object' };
  }
  const paths = new Set<string>();
  let dropped = 0;
  let invalid: string | undefined;
  for (const c of candidates) {
    if (paths.size >= MAX_PATHS_PER_BUMP) {
      dropped += 1;
      invalid ??= `more than ${MAX_PATHS_PER_BUMP} paths in one bump`;
      continue;
    }
    try {
      paths.add(validatePath(c, maxPathBytes));
    } catch (err) {
      dropped += 1;
      invalid ??= (err as Error).message;
    }
  }
  if (paths.size === 0) return { ok: false, reason: `no valid path in message${invalid ? ` (${invalid})` : ''}` };
  return { ok: true, id, paths: [...paths], dropped, ...(invalid ? { invalid } : {}) };
}

export interface RedisBumpSourceOptions {
  redisUrl: string;
  channel: string;
  maxPathBytes: number;
  logger: Logger;
  /** told when the subscription is up (true) or lost (false) */
  onState?: (subscribed: boolean) => void;
  onMalformed?: () => void;
}

/** Bumps from Redis pub/sub, on a connection of its own (a subscriber connection can do nothing else). */
export class RedisBumpSource implements BumpSource {
  private redis?: Redis;
  private stopping?: Promise<void>;
  private readonly warnings: RateLimitedLog;

  constructor(private readonly opts: RedisBumpSourceOptions) {
    this.warnings = new RateLimitedLog(opts.logger);
  }

  async start(onBump: (bump: Bump) => void): Promise<void> {
    if (this.redis) return;
    const { redisUrl, channel, logger, maxPathBytes } = this.opts;
    const redis = new Redis(redisUrl, {
      lazyConnect: true,
      maxRetriesPerRequest: null,
      // Capped backoff: an outage never turns into a tight reconnect loop.
      retryStrategy: (times) => Math.min(times * 200, 5_000),
    });
    this.redis = redis;
    redis.on('error', (err: Error) => this.warnings.warn('redis-error', 'redis connection error', { error: err.message }));
    redis.on('ready', () => {
      logger.info('redis subscribed', { channel });
      this.opts.onState?.(true);
    });
    redis.on('close', () => this.opts.onState?.(false));
    redis.on('message', (ch: string, message: string) => {
      if (ch !== channel) return;
      const at = Date.now();
      const parsed = parseBumpMessage(message, maxPathBytes);
      if (!parsed.ok) {
        this.opts.onMalformed?.();
        this.warnings.warn('malformed-bump', 'dropped a malformed bump', { reason: parsed.reason, bytes: message.length });
        return;
      }
      if (parsed.dropped > 0) {
        this.warnings.warn('bump-paths-dropped', 'dropped invalid or excess paths from a bump', { dropped: parsed.dropped });
      }
      onBump({ id: parsed.id ?? randomUUID(), paths: parsed.paths, at });
    });
    await redis.connect();
    await redis.subscribe(channel);
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const redis = this.redis;
      if (!redis) return;
      try {
        await redis.quit();
      } catch {
        redis.disconnect();
      }
    })();
    return this.stopping;
  }
}
