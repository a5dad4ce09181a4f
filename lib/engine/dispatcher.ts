import { createHash } from 'node:crypto';
import { noResponse } from './circuit-breaker.js';
import { waitAtMost } from '../support/deadline.js';
import type { Fetcher } from './fetcher.js';
import type { Logger } from '../support/logger.js';
import { Metrics } from '../support/metrics.js';
import type { HeldLimits, Publisher } from './publisher.js';
import { RateLimitedLog } from '../support/rate-limited-log.js';
import type { Bump, FetchResult, ForwardHeaders, Update, Validators } from '../protocol/types.js';
import type { Watch, WatchRegistry } from './watch-registry.js';
import { SHARE_CRED_PREFIX, ShareTable, shareableVary } from './shared-fetch.js';

export interface DispatcherOptions {
  registry: WatchRegistry;
  fetcher: Fetcher;
  publisher: Publisher;
  logger: Logger;
  /** upstream requests in flight, snapshots included */
  concurrency: number;
  pushUnchanged: boolean;
  metrics: Metrics;
  /** held-back publishes above which finished fetches keep their slots. @default MAX_HELD */
  maxHeld?: HeldLimits;
  /** the longest pause a Retry-After may impose. @default 60000 */
  maxRetryAfterMs?: number;
  /** delay before the first retry of a failed fetch; doubles per failure in a row, jittered. @default 500 */
  retryBaseMs?: number;
  /** the longest delay between two retries of one group. @default 30000 */
  retryMaxMs?: number;
  /** a 410 ended these watches (contract 11.5): their Update was published, remove them */
  onEnded?: (watches: Watch[]) => void;
  /** one fetch for the watches whose own answer was public (contract 12, shared-fetch.ts). @default false */
  sharePublic?: boolean;
}

/** X-Waymark of a revalidation (contract 11.4). */
export const REVALIDATE = 'revalidate';
/** 410 Gone ends a watch (contract 11.5); 404 does not: the resource may come to exist. */
const GONE = 410;

/** What made a group fetch: a bump, or a catch-up after new credentials (`bump: null`). */
interface Trigger {
  reason: string;
  bump: Bump | null;
}

/**
 * One (path, credentials) pair: every watch in it would make the byte-identical request, so
 * one fetch serves them all (dedupe). A group is queued at most once; bumps that arrive while
 * it is queued or running only replace its next trigger (coalesce), so a burst of bumps costs
 * at most the fetch in flight plus one more.
 */
interface Group {
  key: string;
  path: string;
  credKey: string;
  /** `waiting`: a retry (or a Retry-After pause) is due; `next` holds what it will fetch for */
  state: 'idle' | 'queued' | 'running' | 'waiting';
  next: Trigger | null;
  /** failed fetches in a row: the retry delay grows with them */
  failures: number;
  /** the one pending retry of this group, while `waiting` */
  retryTimer?: NodeJS.Timeout;
  /** validators of the last 200 this group delivered, and what it delivered */
  validators?: Validators & { status: number; bodyHash: string };
  /** with pushUnchanged: that 200 itself, published again (freshened) on a 304 */
  held?: { headers: Record<string, string>; body: string; encoding: 'utf8' | 'base64' };
}

/**
 * Publishes held back by the router's backpressure (see WampPublisher), and the size of their
 * bodies, above which finished fetches keep their slots, so no new fetch starts until the router
 * catches up: results waiting for the router stay bounded to about this much plus one fan-out
 * per slot.
 */
export const MAX_HELD = { publishes: 10_000, bytes: 64 * 1024 * 1024 };

/** Statuses that mean the credentials are dead: the watch is suspended after pushing them. */
const CREDENTIALS_REJECTED = new Set([401, 403]);
/**
 * Response header fields a 304 does not replace in the held 200 (RFC 9111 3.2): Content-Length,
 * and the fields the held body was decoded by.
 */
const KEEP_ON_304 = new Set(['content-length', 'content-encoding', 'content-type', 'transfer-encoding']);

/**
 * Results worth fetching again without a bump: no response (timeout, refused, reset), an
 * unparsable answer, 408 and 429 (RFC 9110 15.5.9, RFC 6585 4), and any 5xx but 501 (Not
 * Implemented is a property of the resource, RFC 9110 15.6.2). A request that could not be sent,
 * a body over the limit and every other status are final.
 */
export function shouldRetry(r: FetchResult): boolean {
  if (r.status === 0) return r.notSent !== true && r.error?.code !== 'too_large';
  return r.status >= 500 ? r.status !== 501 : r.status === 429 || r.status === 408;
}

/**
 * The validators worth revalidating with: the ETag, and a Last-Modified only when it is strong,
 * i.e. the response's Date is at least one second after it (RFC 9110 8.8.2.2). A Last-Modified
 * within the second of its Date (or without a Date) cannot tell two versions of that second apart:
 * an If-Modified-Since with it would get a 304 for a second change and leave the watcher stale.
 */
export function usableValidators(v: Validators | undefined): Validators | undefined {
  if (!v) return undefined;
  const out: Validators = {};
  if (v.etag) out.etag = v.etag;
  if (v.lastModified && v.date && Date.parse(v.date) - Date.parse(v.lastModified) >= 1000) out.lastModified = v.lastModified;
  return out.etag || out.lastModified ? out : undefined;
}

function toUpdate(watch: Watch, r: FetchResult, bump: Bump | null): Update {
  const u: Update = {
    watch: watch.id, path: watch.path, status: r.status, headers: r.headers, body: r.body, encoding: r.encoding,
    bump: bump ? { id: bump.id, at: bump.at } : null, fetchedAt: r.fetchedAt,
  };
  if (r.error) u.error = r.error;
  if (r.status === GONE) u.ended = true;
  return u;
}

/** Not a field-value character (RFC 9110 5.5; obs-text as Latin-1), as undici checks it. */
const NOT_FIELD_VALUE = /[^\t\x20-\x7e\x80-\xff]/;
/** A field name is a token (RFC 9110 5.1, 5.6.2). */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function sendable(headers: ForwardHeaders): boolean {
  for (const name in headers) if (!TOKEN.test(name) || NOT_FIELD_VALUE.test(headers[name])) return false;
  return true;
}

function groupKey(path: string, credKey: string): string {
  return `${credKey}\0${path}`;
}

function bodyHash(result: FetchResult): string {
  // The error code counts: a timeout after a refusal is news even though both have no body.
  return createHash('sha256').update(result.error?.code ?? '').update('\n').update(result.body).digest('base64url');
}

/**
 * The engine of the one-way flow bump -> registry -> fetcher -> publisher: dedupe, coalescing,
 * one global concurrency cap with a queue that is fair across paths (round robin) and bounded
 * (one entry per group), Retry-After back-off, revalidation with validators, unchanged-skipping.
 */
export class Dispatcher {
  private readonly groups = new Map<string, Group>();
  /** groups whose last fetch failed (no response or 5xx): refetched when the API is back */
  private readonly failed = new Set<string>();
  /** queued groups per path, and the round-robin ring of paths that have some */
  private readonly queues = new Map<string, Group[]>();
  private ring: string[] = [];
  private ringAt = 0;
  private queuedCount = 0;
  private readonly snapshotWaiters: Array<() => void> = [];
  /** per interned credentials object: whether HTTP can carry them at all */
  private readonly sendable = new WeakMap<ForwardHeaders, boolean>();
  private active = 0;
  /**
   * Retry-After pauses (performance.now() deadlines), keyed to what the API asked to slow down:
   * a 429 pauses that credential's fetches, a 503 that path's; never every fetch.
   */
  private readonly pausedCred = new Map<string, number>();
  private readonly pausedPath = new Map<string, number>();
  /** set by stopStarting() at shutdown: no fetch starts any more */
  private closed = false;
  private readonly work = new Set<Promise<void>>();
  /** a router outage fails every publish: a few lines, not one per watch */
  private readonly publishWarnings: RateLimitedLog;
  /**
   * One promise shared by every caller waiting for idle: a bump per call under a hung API must
   * not pile up one waiter each (the component calls dispatch() for every bump).
   */
  private idle?: { promise: Promise<void>; resolve: () => void };
  /** contract 12: groups whose own answer was public, by path and Vary; undefined when sharing is off */
  private readonly shares?: ShareTable;

  constructor(private readonly opts: DispatcherOptions) {
    this.publishWarnings = new RateLimitedLog(opts.logger);
    if (opts.sharePublic) this.shares = new ShareTable();
    // Memory follows live watches: a group, its validators and its pending retry go with its last watch.
    opts.registry.onGroupGone((path, credKey) => {
      this.forget(groupKey(path, credKey));
      this.leaveShare(path, credKey);
    });
  }

  /** Groups waiting for a fetch slot. */
  get queued(): number {
    return this.queuedCount;
  }

  /**
   * Whether the last Update this watch got was a failure a retry would repeat (see shouldRetry;
   * `status: 0` includes a request that could not be sent): new credentials must then refetch,
   * since the old group's pending retry goes with it.
   */
  lastFailed(watch: Watch): boolean {
    const s = watch.lastSent?.status;
    return s !== undefined && (s === 0 || s === 408 || s === 429 || (s >= 500 && s !== 501));
  }

  /** (path, credentials) groups held in memory: at most one per live group plus those fetching. */
  get groupCount(): number {
    return this.groups.size;
  }

  /** Fetches and publishes in flight plus queued groups. */
  get busy(): number {
    return this.work.size + this.queuedCount + this.snapshotWaiters.length;
  }

  /** Fan a bump out to every group on its paths. Resolves when the dispatcher is idle again. */
  dispatch(bump: Bump): Promise<void> {
    const trigger = { reason: bump.id, bump };
    let groups = 0;
    const shared = this.shares ? new Set<string>() : undefined;
    for (const [path, credKey, watches] of this.opts.registry.match(bump)) {
      if (![...watches].some((w) => !w.suspended)) continue;
      const share = this.shares?.shareOf(path, credKey);
      if (share) {
        // one fetch for every member of the share (contract 12), scheduled once per bump
        const key = groupKey(path, share.credKey);
        if (!shared!.has(key)) {
          shared!.add(key);
          this.schedule(path, share.credKey, trigger);
          groups += 1;
        }
        continue;
      }
      this.schedule(path, credKey, trigger);
      groups += 1;
    }
    if (groups === 0) this.opts.logger.debug('bump matched no watch', { bump: bump.id, paths: bump.paths.length });
    return this.settled();
  }

  /** Refetch one watch's group outside a bump (after new credentials); publishes only what changed. */
  refetch(watch: Watch, reason: string): Promise<void> {
    this.schedule(watch.path, watch.credKey, { reason, bump: null });
    return this.settled();
  }

  /**
   * A revalidation turn of one group (contract 11.4): a conditional refetch with
   * `X-Waymark: revalidate` that publishes only what changed. Skipped while the group is
   * already queued, fetching or waiting for a retry: that fetch answers the same question.
   * A group in a public share (contract 12) revalidates the share, skipped too when the share
   * fetched less than half of `periodMs` ago (every member's timer would otherwise refetch it).
   */
  revalidate(path: string, credKey: string, periodMs = 0): void {
    const share = this.shares?.shareOf(path, credKey);
    if (share) {
      const st = this.groups.get(groupKey(path, share.credKey))?.state;
      if (this.closed || (st !== undefined && st !== 'idle') || performance.now() - share.fetchedAt < periodMs / 2) return;
      this.schedule(path, share.credKey, { reason: REVALIDATE, bump: null });
      return;
    }
    const state = this.groups.get(groupKey(path, credKey))?.state;
    if (this.closed || (state !== undefined && state !== 'idle')) return;
    const watches = this.opts.registry.group(path, credKey);
    if (!watches || ![...watches].some((w) => !w.suspended)) return;
    this.schedule(path, credKey, { reason: REVALIDATE, bump: null });
  }

  /** Refetch every group once (after an outage); publishes only what changed. */
  refetchAll(reason: string): Promise<void> {
    for (const [path, credKey, watches] of this.opts.registry.allGroups()) {
      if ([...watches].some((w) => !w.suspended)) this.schedule(path, credKey, { reason, bump: null });
    }
    return this.settled();
  }

  /**
   * Refetch every group whose last fetch failed (after the API's circuit closed), so no watch
   * is left showing an error the API no longer gives. Publishes only what changed.
   */
  refetchFailed(reason: string): Promise<void> {
    for (const key of [...this.failed]) {
      const g = this.groups.get(key);
      if (g && this.liveWatches(g).length > 0) this.schedule(g.path, g.credKey, { reason, bump: null });
      else this.forgetFailed(key);
    }
    return this.settled();
  }

  /** Refetch one failed group (a half-open circuit's probe); false when there is none. */
  probeFailed(reason: string): boolean {
    for (const key of [...this.failed]) {
      const g = this.groups.get(key);
      if (g && this.liveWatches(g).length > 0) {
        // to the back: the next probe tries another group, so one broken path cannot be the only probe
        this.failed.delete(key);
        this.failed.add(key);
        this.schedule(g.path, g.credKey, { reason, bump: null });
        return true;
      }
      this.forgetFailed(key);
    }
    return false;
  }

  /** A failed group whose watches are gone: forget it (unless it is queued or running). */
  private forgetFailed(key: string): void {
    this.failed.delete(key);
    const g = this.groups.get(key);
    if (g && !this.opts.registry.group(g.path, g.credKey)) this.forget(key);
  }

  /** The group's last watch went: drop it and its pending retry (a queued or running one drops itself when it runs). */
  private forget(key: string): void {
    this.failed.delete(key);
    const g = this.groups.get(key);
    if (!g || g.state === 'queued' || g.state === 'running') return;
    clearTimeout(g.retryTimer);
    this.groups.delete(key);
  }

  /** A first fetch for `waymark.watch` with `snapshot: true`; it jumps the queue and counts as sent. */
  async snapshot(watch: Watch): Promise<Update> {
    await this.acquireForSnapshot();
    let result: FetchResult;
    try {
      result = await this.fetch(watch.path, watch.headers, 'snapshot');
    } finally {
      this.release();
    }
    watch.lastSent = { status: result.status, bodyHash: bodyHash(result) };
    if (CREDENTIALS_REJECTED.has(result.status)) watch.suspended = true;
    this.noteTags(watch.path, watch.credKey, result);
    this.recordShare(watch.path, watch.credKey, watch.headers, result);
    // Only for a watch still there: the session may have left while the snapshot was fetched.
    if (result.status !== GONE && this.opts.registry.group(watch.path, watch.credKey)?.has(watch)) {
      const g = this.groupOf(watch.path, watch.credKey);
      // The group's next refetch (bump or revalidation) can be conditional on what the snapshot got
      // (not with pushUnchanged: a 304 is published as the held 200, which only a fetch holds).
      const usable = result.status === 200 && !this.opts.pushUnchanged ? usableValidators(result.validators) : undefined;
      if (usable) g.validators = { ...usable, status: 200, bodyHash: watch.lastSent.bodyHash };
      // A failed snapshot is retried like a failed bump, and refetched with the failed groups once the API answers again.
      if (noResponse(result)) this.failed.add(g.key);
      else this.failed.delete(g.key);
      const retryIn = this.afterResult(g, result);
      if (retryIn > 0 && g.state === 'idle' && !this.closed) {
        g.next = { reason: 'snapshot', bump: null };
        this.wait(g, retryIn);
      } else if (g.state === 'idle' && g.failures === 0 && !g.validators) {
        this.groups.delete(g.key);
      }
    }
    if (result.status === GONE) this.opts.onEnded?.([watch]);
    return toUpdate(watch, result, null);
  }

  /** Wait for queued and in-flight work, up to a deadline. Returns how much was left. */
  async drain(deadlineMs: number): Promise<number> {
    await waitAtMost(this.settled(), deadlineMs);
    return this.busy;
  }

  /**
   * Shutdown: start no more fetches. Queued refetches are dropped (their watches keep the last
   * Update they received); fetches in flight finish and publish. Returns the groups dropped.
   */
  stopStarting(): number {
    this.closed = true;
    let dropped = 0;
    for (const g of this.groups.values()) {
      if (g.state !== 'waiting') continue;
      clearTimeout(g.retryTimer);
      g.retryTimer = undefined;
      g.state = 'idle';
      g.next = null;
      dropped += 1;
    }
    for (const q of this.queues.values()) {
      for (const g of q) {
        g.state = 'idle';
        g.next = null;
        dropped += 1;
      }
    }
    this.queues.clear();
    this.ring = [];
    this.ringAt = 0;
    this.queuedCount = 0;
    this.checkIdle();
    return dropped;
  }

  /** Resolves when nothing is queued, fetching or publishing. */
  settled(): Promise<void> {
    if (this.busy === 0) return Promise.resolve();
    if (!this.idle) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => { resolve = r; });
      this.idle = { promise, resolve };
    }
    return this.idle.promise;
  }

  /** The group of (path, credentials), created idle on first use. */
  private groupOf(path: string, credKey: string): Group {
    const key = groupKey(path, credKey);
    let g = this.groups.get(key);
    if (!g) this.groups.set(key, (g = { key, path, credKey, state: 'idle', next: null, failures: 0 }));
    return g;
  }

  private schedule(path: string, credKey: string, trigger: Trigger): void {
    if (this.closed) return;
    const g = this.groupOf(path, credKey);
    if (g.state === 'idle' || g.state === 'waiting') {
      // A newer trigger supersedes a pending retry (a Retry-After pause still holds: see pump).
      if (g.retryTimer) clearTimeout(g.retryTimer);
      g.retryTimer = undefined;
      g.next = trigger;
      this.enqueue(g);
    } else {
      // Latest state wins: the queued or follow-up fetch carries the newest bump id.
      g.next = trigger;
      this.opts.metrics.coalesced.inc();
    }
    this.pump();
  }

  /**
   * Park a group until its retry (or the end of a Retry-After pause) is due, then queue it again
   * under the concurrency cap. One timer per group at most; it does not keep the process alive.
   */
  private wait(g: Group, ms: number): void {
    g.state = 'waiting';
    clearTimeout(g.retryTimer);
    g.retryTimer = setTimeout(() => {
      g.retryTimer = undefined;
      if (g.state !== 'waiting') return;
      if (this.closed || !g.next) {
        g.state = 'idle';
        g.next = null;
        return;
      }
      this.enqueue(g);
      this.pump();
    }, ms);
    g.retryTimer.unref();
  }

  /** ms left of a Retry-After pause on this group's credentials or path (<= 0: none). */
  private pauseLeft(g: Group, now: number): number {
    let until = 0;
    if (this.pausedCred.size > 0) until = this.pausedCred.get(g.credKey) ?? 0;
    if (this.pausedPath.size > 0) until = Math.max(until, this.pausedPath.get(g.path) ?? 0);
    return until - now;
  }

  private pause(map: Map<string, number>, scope: string, until: number, now: number): void {
    // Expired pauses go here, not on a timer each: the maps stay as small as the live pauses.
    if (map.size >= 64) for (const [k, t] of map) if (t <= now) map.delete(k);
    map.set(scope, Math.max(map.get(scope) ?? 0, until));
  }

  /**
   * Bookkeeping after a result: the group's failure count, and a Retry-After pause for the
   * credential (429) or path (503) the API asked to slow down. Returns the delay before the
   * group's next fetch, or 0 when the result is final. The delay is exponential in the failures
   * in a row (retryBaseMs x 2^n up to retryMaxMs), jittered to 50-100 % so groups that failed
   * together do not retry together, and never shorter than the Retry-After (RFC 9110 10.2.3).
   */
  private afterResult(g: Group, result: FetchResult): number {
    if (!shouldRetry(result)) {
      g.failures = 0;
      return 0;
    }
    g.failures += 1;
    const cap = this.opts.retryMaxMs ?? 30_000;
    const exp = Math.min(cap, (this.opts.retryBaseMs ?? 500) * 2 ** Math.min(g.failures - 1, 30));
    let delay = exp / 2 + Math.random() * (exp / 2);
    if (result.retryAfterMs !== undefined && (result.status === 429 || result.status === 503)) {
      const ms = Math.min(result.retryAfterMs, this.opts.maxRetryAfterMs ?? 60_000);
      const now = performance.now();
      if (result.status === 429) this.pause(this.pausedCred, g.credKey, now + ms, now);
      else this.pause(this.pausedPath, g.path, now + ms, now);
      this.opts.logger.warn('API asked to back off', { status: result.status, retryAfterMs: ms, ...(result.status === 429 ? { cred: g.credKey } : { path: g.path }) });
      delay = Math.max(delay, ms);
    }
    return delay;
  }

  private enqueue(g: Group): void {
    g.state = 'queued';
    let q = this.queues.get(g.path);
    if (!q) {
      this.queues.set(g.path, (q = []));
      this.ring.push(g.path);
    }
    q.push(g);
    this.queuedCount += 1;
  }

  private dequeue(): Group | undefined {
    if (this.ring.length === 0) return undefined;
    if (this.ringAt >= this.ring.length) this.ringAt = 0;
    const path = this.ring[this.ringAt];
    const q = this.queues.get(path)!;
    const g = q.shift()!;
    this.queuedCount -= 1;
    if (q.length === 0) {
      this.queues.delete(path);
      this.ring.splice(this.ringAt, 1);
    } else {
      this.ringAt += 1;
    }
    return g;
  }

  private pump(): void {
    while (this.active < this.opts.concurrency) {
      const snapshot = this.snapshotWaiters.shift();
      if (snapshot) {
        this.active += 1;
        snapshot();
        continue;
      }
      const g = this.closed ? undefined : this.dequeue();
      if (!g) break;
      if (this.pausedCred.size + this.pausedPath.size > 0) {
        const left = this.pauseLeft(g, performance.now());
        if (left > 0) {
          this.wait(g, left);
          continue;
        }
      }
      this.active += 1;
      // run() frees the slot once the response is read; this covers a throw before that
      let held = true;
      const release = () => { if (held) { held = false; this.release(); } };
      this.track(this.run(g, release).finally(release));
    }
    this.checkIdle();
  }

  private acquireForSnapshot(): Promise<void> {
    if (this.active < this.opts.concurrency) {
      this.active += 1;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.snapshotWaiters.push(resolve));
  }

  private release(): void {
    this.active -= 1;
    this.pump();
  }

  private track(p: Promise<void>): void {
    this.work.add(p);
    p.catch((err: unknown) => this.opts.logger.error('dispatch failed', { error: (err as Error).message }))
      .finally(() => {
        this.work.delete(p);
        this.checkIdle();
      });
  }

  private checkIdle(): void {
    if (this.busy > 0 || !this.idle) return;
    const idle = this.idle;
    this.idle = undefined;
    idle.resolve();
  }

  private async fetch(path: string, headers: Watch['headers'], reason: string, validators?: Validators, traceparent?: string): Promise<FetchResult> {
    let ok = this.sendable.get(headers);
    if (ok === undefined) this.sendable.set(headers, (ok = sendable(headers)));
    if (!ok) {
      // Never handed to undici: a Pool request refused for an invalid header value keeps its
      // connection slot (undici 7.30), and `connections` of them stall every later fetch.
      return {
        status: 0, headers: {}, body: '', encoding: 'utf8', fetchedAt: Date.now(), notSent: true,
        error: { code: 'unreachable', message: 'the credentials or forwarded headers are not valid HTTP field values; nothing was sent' },
      };
    }
    const started = process.hrtime.bigint();
    const result = await this.opts.fetcher.fetch({ path, headers, reason, ...(validators ? { validators } : {}), ...(traceparent ? { traceparent } : {}) });
    this.opts.metrics.fetchSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9);
    this.opts.metrics.fetches.inc({ class: Metrics.statusClass(result.status) });
    return result;
  }

  private liveWatches(g: Group): Watch[] {
    const set = this.opts.registry.group(g.path, g.credKey);
    return set ? [...set].filter((w) => !w.suspended) : [];
  }

  /**
   * Fetch for one group and publish the result. The fetch slot is freed (`release`) as soon as
   * the response is read and its publishes are handed to the publisher, so a slow router never
   * throttles the fetches of other groups; the group itself stays running until its publishes
   * are acknowledged (its next fetch coalesces meanwhile), so each watch's last delivered state
   * is settled before it is compared again. Only while more than MAX_HELD publishes (or bytes of
   * bodies) are held back by the router's backpressure does the slot stay taken, bounding their memory.
   */
  private async run(g: Group, release: () => void): Promise<void> {
    // a shared fetch keeps its slot until its publishes settle (its own path, below)
    if (this.shares && g.credKey.startsWith(SHARE_CRED_PREFIX)) return this.runShared(g);
    g.state = 'running';
    const trigger = g.next!;
    g.next = null;
    const watches = this.liveWatches(g);
    let retryIn = 0;
    if (watches.length > 0) {
      // Revalidate only when every watcher already holds what the validators stand for; a
      // watcher that joined since needs the body, and a 304 would not carry it.
      const v = g.validators;
      const revalidate = v && watches.every((w) => w.lastSent?.bodyHash === v.bodyHash && w.lastSent.status === v.status);
      const result = await this.fetch(g.path, watches[0].headers, trigger.reason, revalidate ? v : undefined, trigger.bump?.traceparent);
      this.noteTags(g.path, g.credKey, result);
      this.recordShare(g.path, g.credKey, watches[0].headers, result);
      const revalidation = trigger.reason === REVALIDATE;
      if (noResponse(result)) this.failed.add(g.key);
      else this.failed.delete(g.key);
      retryIn = this.afterResult(g, result);
      let delivered: Promise<unknown> | undefined;
      if (result.status === 304 && revalidate) {
        const fresh = usableValidators(result.validators);
        if (fresh) g.validators = { ...fresh, status: 200, bodyHash: v.bodyHash };
        // A revalidation publishes only news, whatever WAYMARK_PUSH_UNCHANGED says (contract 11.4).
        if (this.opts.pushUnchanged && g.held && !revalidation) delivered = this.deliver(g, this.freshen(g.held, result), trigger, v.bodyHash, g.failures > 1);
        else this.opts.metrics.unchangedSkipped.inc(watches.length);
        if (revalidation) this.opts.metrics.revalidations.inc({ result: 'not_modified' });
      } else {
        const hash = bodyHash(result);
        const usable = result.status === 200 ? usableValidators(result.validators) : undefined;
        g.validators = usable ? { ...usable, status: 200, bodyHash: hash } : undefined;
        g.held = usable && this.opts.pushUnchanged ? { headers: result.headers, body: result.body, encoding: result.encoding } : undefined;
        delivered = this.deliver(g, result, trigger, hash, g.failures > 1).then((published) => {
          if (revalidation) this.opts.metrics.revalidations.inc({ result: shouldRetry(result) ? 'failed' : published > 0 ? 'changed' : 'unchanged' });
        });
      }
      // deliver() has handed every publish over synchronously; only a backlog holds the slot now
      if (this.opts.publisher.room) await this.opts.publisher.room(this.opts.maxHeld ?? MAX_HELD);
      release();
      await delivered;
    }
    // (gone: its last watch went while it fetched)
    this.afterRun(g, !this.opts.registry.group(g.path, g.credKey), retryIn, trigger);
  }

  /** A group's fetch is done: forget it when gone, else run the bump that came meanwhile, wait to retry, or idle. */
  private afterRun(g: Group, gone: boolean, retryIn: number, trigger: Trigger): void {
    if (this.closed) g.next = null; // a bump that came while fetching: too late now
    if (gone) {
      g.state = 'idle';
      g.next = null;
      this.forget(g.key);
    } else if (g.next) {
      this.enqueue(g);
      this.pump();
    } else if (retryIn > 0 && !this.closed) {
      g.next = trigger;
      this.wait(g, retryIn);
    } else {
      g.state = 'idle';
    }
  }

  /**
   * One fetch for a public share (contract 12, RFC 9111 3.5): with the credentials of one live
   * member, chosen round robin per fetch so every member's credentials are asked in turn.
   * - A shareable answer (a 200 with `public`, neither `private` nor `no-store`, the share's
   *   Vary) goes to every member still in the share; each watch skips what it already holds.
   * - A 304 to the share's conditional request: nothing is new for anyone.
   * - Any other answer (401, 403, 404, no `public`, `private`, another Vary, no response) is the
   *   chosen member's own answer and goes to it alone (suspending it on 401/403 as always); the
   *   share dissolves and every other member is refetched with its own credentials at once, so
   *   no watch ever receives a non-public answer made with someone else's credentials.
   */
  private async runShared(g: Group): Promise<void> {
    const shares = this.shares!;
    g.state = 'running';
    const trigger = g.next!;
    g.next = null;
    const share = shares.get(g.path, g.credKey);
    const live: Array<{ credKey: string; watches: Watch[] }> = [];
    if (share) {
      for (const m of [...share.members]) {
        const set = this.opts.registry.group(g.path, m);
        if (!set) {
          shares.leave(g.path, m);
          continue;
        }
        const watches = [...set].filter((w) => !w.suspended);
        if (watches.length > 0) live.push({ credKey: m, watches });
      }
    }
    if (share && live.length > 0) {
      share.fetchedAt = performance.now();
      const chosen = shares.pick(share, live.map((m) => m.credKey));
      const headers = live.find((m) => m.credKey === chosen)!.watches[0].headers;
      const v = g.validators;
      const revalidate = v && live.every((m) => m.watches.every((w) => w.lastSent?.bodyHash === v.bodyHash && w.lastSent.status === v.status));
      const result = await this.fetch(g.path, headers, trigger.reason, revalidate ? v : undefined, trigger.bump?.traceparent);
      const revalidation = trigger.reason === REVALIDATE;
      const vary = shareableVary(result);
      // A member whose own answer meanwhile was not public (a snapshot of a new watch with its
      // credentials) left the share: it gets its own fetch for this trigger, not this answer
      // (unless it asked it: the chosen member of a dissolving share gets its own answer below).
      const stayed = (m: { credKey: string }) => shares.shareOf(g.path, m.credKey) === share;
      const leftMeanwhile = live.filter((m) => !stayed(m)).map((m) => m.credKey);
      if (result.status === 304 && revalidate) {
        for (const m of leftMeanwhile) this.schedule(g.path, m, trigger);
        const fresh = usableValidators(result.validators);
        if (fresh) g.validators = { ...fresh, status: 200, bodyHash: v.bodyHash };
        this.opts.metrics.unchangedSkipped.inc(live.reduce((n, m) => n + m.watches.length, 0));
        this.opts.metrics.sharedFetches.inc({ result: 'not_modified' });
        if (revalidation) this.opts.metrics.revalidations.inc({ result: 'not_modified' });
      } else if (vary !== null && vary.join(',') === share.vary.join(',')) {
        const hash = bodyHash(result);
        const usable = this.opts.pushUnchanged ? undefined : usableValidators(result.validators);
        g.validators = usable ? { ...usable, status: 200, bodyHash: hash } : undefined;
        for (const m of leftMeanwhile) this.schedule(g.path, m, trigger);
        const members = live.filter(stayed);
        if (members.length > 1) this.opts.metrics.deduplicated.inc(members.length - 1);
        this.opts.metrics.sharedFetches.inc({ result: 'shared' });
        const published = await Promise.all(members.map((m) => {
          this.noteTags(g.path, m.credKey, result);
          return this.deliver(this.groupOf(g.path, m.credKey), result, trigger, hash);
        }));
        if (revalidation) this.opts.metrics.revalidations.inc({ result: published.some((n) => n > 0) ? 'changed' : 'unchanged' });
      } else {
        const others = [...shares.dissolve(share), ...leftMeanwhile].filter((m) => m !== chosen);
        this.opts.metrics.sharedFetches.inc({ result: 'ended' });
        g.validators = undefined;
        const own = this.groupOf(g.path, chosen);
        this.noteTags(g.path, chosen, result);
        // a public answer with another Vary joins the chosen member to that share
        this.recordShare(g.path, chosen, headers, result);
        if (noResponse(result)) this.failed.add(own.key);
        else this.failed.delete(own.key);
        const retryIn = this.afterResult(own, result);
        // its own validators predate the share: a later own fetch must not revalidate with them
        own.validators = undefined;
        own.held = undefined;
        for (const m of others) this.schedule(g.path, m, trigger);
        this.opts.logger.debug('public share ended: each member fetches with its own credentials', { path: g.path, status: result.status, members: others.length + 1 });
        const published = await this.deliver(own, result, trigger, bodyHash(result), own.failures > 1);
        if (revalidation) this.opts.metrics.revalidations.inc({ result: shouldRetry(result) ? 'failed' : published > 0 ? 'changed' : 'unchanged' });
        if (retryIn > 0 && own.state === 'idle' && !this.closed) {
          own.next = trigger;
          this.wait(own, retryIn);
        }
      }
    }
    // (gone: dissolved, or its last member went; a share's own retries are its members')
    this.afterRun(g, !shares.get(g.path, g.credKey), 0, trigger);
  }

  /** A group's own answer joins it to a public share or takes it out (contract 12); only for a group still there. */
  private recordShare(path: string, credKey: string, headers: Watch['headers'], result: FetchResult): void {
    if (!this.shares || !this.opts.registry.group(path, credKey)) return;
    const before = this.shares.shareOf(path, credKey);
    this.shares.record(path, credKey, headers, result);
    if (before && before.members.size === 0) this.forget(groupKey(path, before.credKey));
  }

  /** The group leaves its share; an emptied share's group goes too (unless it is fetching). */
  private leaveShare(path: string, credKey: string): void {
    const s = this.shares?.leave(path, credKey);
    if (s && s.members.size === 0) this.forget(groupKey(path, s.credKey));
  }

  /**
   * A 304 with pushUnchanged: the held 200, its header fields updated from the 304's (RFC 9111
   * 4.3.4 "freshening", 3.2), as the Update.
   */
  private freshen(held: NonNullable<Group['held']>, r: FetchResult): FetchResult {
    const headers = { ...held.headers };
    for (const [name, value] of Object.entries(r.headers)) if (!KEEP_ON_304.has(name)) headers[name] = value;
    held.headers = headers;
    return { status: 200, headers, body: held.body, encoding: held.encoding, fetchedAt: r.fetchedAt };
  }

  /**
   * The group's tags follow its latest response (contract 11.3): any status sets them, a 304
   * keeps them, no response (status 0) keeps them. Only for a group that still has watches.
   */
  private noteTags(path: string, credKey: string, result: FetchResult): void {
    if (result.tagsDropped) this.opts.metrics.tagsDropped.inc(result.tagsDropped);
    if (result.tags === undefined || result.status === 0 || result.status === 304) return;
    if (this.opts.registry.group(path, credKey)) this.opts.registry.tags.set(path, credKey, result.tags);
  }

  /**
   * Publish one result to every watch of the group, as it is now (not when the fetch began).
   * Returns how many Updates it sent.
   */
  private async deliver(g: Group, result: FetchResult, trigger: Trigger, hash: string, retrying = false): Promise<number> {
    const { metrics, logger, publisher, pushUnchanged } = this.opts;
    const watches = this.liveWatches(g);
    if (watches.length > 1) metrics.deduplicated.inc(watches.length - 1);
    const rejected = CREDENTIALS_REJECTED.has(result.status);
    // one warning per failure; the retries of it that fail again are debug lines
    if (result.error) logger[retrying ? 'debug' : 'warn']('fetch failed', { path: g.path, cred: g.credKey, code: result.error.code, watches: watches.length, failures: g.failures });
    const publishes: Promise<void>[] = [];
    for (const watch of watches) {
      if (rejected) {
        // Push the 401/403 (below), then stop fetching with credentials the API refused.
        watch.suspended = true;
        logger.info('watch suspended: credentials rejected', { watch: watch.id, session: watch.session, status: result.status });
      }
      // A revalidation publishes only news, whatever WAYMARK_PUSH_UNCHANGED says (contract 11.4);
      // a 410 is the watch's last word and always goes out.
      if ((!pushUnchanged || trigger.reason === REVALIDATE) && result.status !== GONE
        && watch.lastSent && watch.lastSent.status === result.status && watch.lastSent.bodyHash === hash) {
        metrics.unchangedSkipped.inc();
        continue;
      }
      publishes.push(publisher.publish(watch.session, toUpdate(watch, result, trigger.bump)).then(() => {
        watch.lastSent = { status: result.status, bodyHash: hash };
        metrics.publishes.inc();
      }, (err: unknown) => {
        // lastSent stays as it was, so the next fetch of this watch (the refetch after a rejoin)
        // sends the result again even if it is unchanged.
        metrics.publishesFailed.inc();
        this.publishWarnings.warn('publish', 'publish failed', { watch: watch.id, session: watch.session, error: (err as Error).message });
      }));
    }
    await Promise.all(publishes);
    if (result.status === GONE && watches.length > 0) this.opts.onEnded?.(watches);
    return publishes.length;
  }
}
