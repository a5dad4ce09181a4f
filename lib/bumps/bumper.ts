import { Redis } from 'ioredis';
import { DEFAULTS, type BumpTarget } from '../protocol/config.js';

export interface BumperOptions {
  /** @default 'redis://127.0.0.1:6379' */
  redisUrl?: string;
  /** @default 'waymark:bumps' */
  channel?: string;
  /** an existing ioredis client to publish on (not closed by close()) */
  redis?: Redis;
  /** stream mode (`WAYMARK_BUMP_STREAM`): XADD to this stream instead of PUBLISH on the channel */
  stream?: string;
  /** approximate length the stream is trimmed to on every XADD. @default 100000 */
  streamMaxLen?: number;
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
   * nothing to bump or an entry that is not a string (paths and prefixes must start with `/`).
   */
  bump(target: string | string[] | BumpTargets, opts?: BumpOptions): Promise<number>;
  close(): Promise<void>;
}

/** createBumper's options for a configuration: its channel or, in stream mode, its stream. */
export function bumperOptions(target: BumpTarget): BumperOptions {
  return {
    redisUrl: target.redisUrl,
    channel: target.bumpChannel,
    ...(target.bumpStream ? { stream: target.bumpStream, ...(target.bumpStreamMaxLen !== undefined ? { streamMaxLen: target.bumpStreamMaxLen } : {}) } : {}),
  };
}

/** The Node helper for backends: `await createBumper().bump('/users/1')`. */
export function createBumper(opts: BumperOptions = {}): Bumper {
  const own = !opts.redis;
  const redis = opts.redis ?? new Redis(opts.redisUrl ?? DEFAULTS.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
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
      if (opts.stream) {
        // The same three message forms, in the `bump` field of one entry; MAXLEN ~ keeps it bounded.
        await redis.xadd(opts.stream, 'MAXLEN', '~', opts.streamMaxLen ?? DEFAULTS.bumpStreamMaxLen, '*', 'bump', message);
        return 1;
      }
      return redis.publish(channel, message);
    },
    close() {
      closing ??= own ? redis.quit().then(() => undefined, () => redis.disconnect()) : Promise.resolve();
      return closing;
    },
  };
}
