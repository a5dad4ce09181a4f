import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { MAX_BUMP_MESSAGE_BYTES, parseBumpMessage } from './bump-source.js';
import { createBumper, createBumperRedis, type Bumper, type BumperOptions } from './bumper.js';
import { withDeadline } from '../support/deadline.js';
import type { RedisClient } from '../support/redis.js';
import type { Logger } from '../support/logger.js';
import { RateLimitedLog } from '../support/rate-limited-log.js';

export interface BumpEndpointOptions {
  /** the bearer secret callers must present (WAYMARK_BUMP_SECRET) */
  secret: string;
  /**
   * How bumps are published: through createBumper (Redis), so every instance sees the bump, not
   * only this one. Give `redisUrl`/`channel` (and whatever else createBumper takes); a connection
   * of its own is opened on the first POST.
   */
  bumper: Omit<BumperOptions, 'redis'>;
  maxPathBytes: number;
  logger: Logger;
  /** told the status of every answer (for the waymark_bump_requests_total series) */
  onAnswer?: (status: number) => void;
  /** how long publishing may take before the answer is 503. @default 5000 */
  publishTimeoutMs?: number;
}

/** The body of a 202: what was bumped, under which id (the X-Waymark header the API will see). */
export interface BumpAccepted {
  paths: string[];
  /** present when the bump named prefixes (contract 11.2) */
  prefixes?: string[];
  /** present when the bump named tags (contract 11.3) */
  tags?: string[];
  id: string;
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/**
 * `POST /bump` on the admin port, for backends that cannot reach Redis: the same message forms
 * as the bump channel (a bare path, `{"path", "id"?}`, `{"paths"?, "prefixes"?, "tags"?, "id"?,
 * "traceparent"?}`), as JSON
 * or text, behind `Authorization: Bearer <WAYMARK_BUMP_SECRET>`. Accepted bumps are published on
 * the bump channel through the bumper, exactly as a backend's PUBLISH would be.
 *
 * Stricter than the channel, because here someone can be told: a body with any invalid path is
 * refused whole (400) instead of bumping the valid rest.
 */
export class BumpEndpoint {
  private readonly expected: Buffer;
  private readonly warnings: RateLimitedLog;
  private readonly publishTimeoutMs: number;
  private redis?: RedisClient;
  private bumper?: Bumper;
  private closing?: Promise<void>;

  constructor(private readonly opts: BumpEndpointOptions) {
    // Both sides hashed to one length, so the comparison takes the same time whatever the guess.
    this.expected = digest(opts.secret);
    this.warnings = new RateLimitedLog(opts.logger);
    this.publishTimeoutMs = opts.publishTimeoutMs ?? 5_000;
  }

  /** The request listener for the admin server. */
  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {

    if (req.method !== 'POST') {
      this.answer(res, 405, { error: 'use POST' }, { allow: 'POST' });
      req.resume();
      return;
    }
    if (!this.authorized(req)) {
      this.warnings.warn('bump-unauthorized', 'POST /bump refused: missing or wrong WAYMARK_BUMP_SECRET', { remote: req.socket.remoteAddress });
      // Nothing of the body is read for a caller without the secret.
      this.answer(res, 401, { error: 'Authorization: Bearer <WAYMARK_BUMP_SECRET> required' }, { 'www-authenticate': 'Bearer realm="waymark"', connection: 'close' });
      req.resume();
      return;
    }
    const tooLarge = () => {
      this.answer(res, 413, { error: `body over ${MAX_BUMP_MESSAGE_BYTES} bytes` }, { connection: 'close' });
      // Read on and drop a little, so the client sees the answer rather than a reset; then cut.
      let dropped = 0;
      req.removeAllListeners('data');
      req.on('data', (chunk: Buffer) => {
        dropped += chunk.length;
        if (dropped > 4 * MAX_BUMP_MESSAGE_BYTES) req.destroy();
      });
      req.resume();
    };
    if (Number(req.headers['content-length'] ?? 0) > MAX_BUMP_MESSAGE_BYTES) {
      tooLarge();
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    req.on('data', (chunk: Buffer) => {
      if (done) return;
      size += chunk.length;
      if (size > MAX_BUMP_MESSAGE_BYTES) {
        done = true;
        tooLarge();
        return;
      }
      chunks.push(chunk);
    });
    req.on('error', () => { done = true; });
    req.on('end', () => {
      if (done) return;
      done = true;
      void this.accept(Buffer.concat(chunks).toString('utf8'), res);
    });
  };

  /** Close the publishing connection, if one was opened. Safe to call again. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.bumper?.close();
      await this.redis?.quit().catch(() => this.redis?.disconnect());
    })();
    return this.closing;
  }

  private answer(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
    this.opts.onAnswer?.(status);
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers }).end(`${JSON.stringify(body)}\n`);
  }

  private authorized(req: IncomingMessage): boolean {
    const m = /^Bearer +(\S+) *$/i.exec(req.headers.authorization ?? '');
    return !!m && timingSafeEqual(digest(m[1]), this.expected);
  }

  private publisher(): Bumper {
    if (!this.bumper) {
      // Our own connection, so its errors are logged (rate-limited) instead of printed by ioredis.
      this.redis = createBumperRedis(this.opts.bumper);
      this.redis.on('error', (err: Error) => this.warnings.warn('bump-redis-error', 'POST /bump: redis connection error', { error: err.message }));
      this.bumper = createBumper({ ...this.opts.bumper, redis: this.redis });
    }
    return this.bumper;
  }

  private async accept(body: string, res: ServerResponse): Promise<void> {
    const parsed = parseBumpMessage(body, this.opts.maxPathBytes);
    if (parsed.ok && parsed.probe !== undefined) {
      this.answer(res, 400, { error: 'a probe is Waymark\'s own liveness message, not a bump' });
      return;
    }
    if (!parsed.ok || parsed.dropped > 0) {
      const reason = parsed.ok ? `${parsed.dropped} path(s) refused, nothing was bumped: ${'invalid' in parsed ? parsed.invalid : ''}` : parsed.reason;
      this.warnings.warn('bump-bad-request', 'POST /bump refused: bad body', { reason, bytes: Buffer.byteLength(body) });
      this.answer(res, 400, {
        error: reason,
        expected: 'a path such as /users/1, {"path": "/users/1", "id"?: "..."} or {"paths"?: ["/users/1"], "prefixes"?: ["/projects/7"], "tags"?: ["user:1"], "id"?: "...", "traceparent"?: "00-..."}',
      });
      return;
    }
    const accepted: BumpAccepted = {
      paths: parsed.paths,
      ...(parsed.prefixes.length ? { prefixes: parsed.prefixes } : {}),
      ...(parsed.tags.length ? { tags: parsed.tags } : {}),
      id: parsed.id ?? randomUUID(),
    };
    const targets = { paths: accepted.paths, prefixes: parsed.prefixes, tags: parsed.tags };
    const options = { id: accepted.id, ...(parsed.traceparent ? { traceparent: parsed.traceparent } : {}) };
    try {
      await withDeadline(this.publisher().bump(targets, options), this.publishTimeoutMs, `no answer from Redis within ${this.publishTimeoutMs} ms`);
    } catch (err) {
      this.warnings.warn('bump-publish-failed', 'POST /bump could not publish', { error: (err as Error).message });
      this.answer(res, 503, { error: 'could not publish the bump to Redis; try again' }, { 'retry-after': '1' });
      return;
    }
    this.opts.logger.info('bump accepted over HTTP', { bump: accepted.id, paths: accepted.paths.length, prefixes: parsed.prefixes.length, tags: parsed.tags.length });
    this.answer(res, 202, accepted);
  }
}
