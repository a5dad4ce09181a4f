import { createHash } from 'node:crypto';
import { isFailure } from './circuit-breaker.js';
import { waitAtMost } from '../support/deadline.js';
import type { Fetcher } from './fetcher.js';
import type { Logger } from '../support/logger.js';
import { Metrics } from '../support/metrics.js';
import type { Publisher } from './publisher.js';
import { RateLimitedLog } from '../support/rate-limited-log.js';
import type { Bump, FetchResult, Update, Validators } from '../protocol/types.js';
import type { Watch, WatchRegistry } from './watch-registry.js';

export interface DispatcherOptions {
  registry: WatchRegistry;
  fetcher: Fetcher;
  publisher: Publisher;
  logger: Logger;
  /** upstream requests in flight, snapshots included */
  concurrency: number;
  pushUnchanged: boolean;
  metrics: Metrics;
  /** the longest pause a Retry-After may impose. @default 60000 */
  maxRetryAfterMs?: number;
}

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
  state: 'idle' | 'queued' | 'running';
  next: Trigger | null;
  /** one retry per trigger after a 429/503 with Retry-After */
  retried: boolean;
  /** validators of the last 200 this group delivered, and what it delivered */
  validators?: Validators & { status: number; bodyHash: string };
}

/** Statuses that mean the credentials are dead: the watch is suspended after pushing them. */
const CREDENTIALS_REJECTED = new Set([401, 403]);
const BACK_OFF = new Set([429, 503]);

function toUpdate(watch: Watch, r: FetchResult, bump: Bump | null): Update {
  const u: Update = {
    watch: watch.id, path: watch.path, status: r.status, headers: r.headers, body: r.body, encoding: r.encoding,
    bump: bump ? { id: bump.id, at: bump.at } : null, fetchedAt: r.fetchedAt,
  };
  if (r.error) u.error = r.error;
  return u;
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
  private active = 0;
  private pausedUntil = 0;
  /** set by stopStarting() at shutdown: no fetch starts any more */
  private closed = false;
  private pauseTimer?: NodeJS.Timeout;
  private readonly work = new Set<Promise<void>>();
  /** a router outage fails every publish: a few lines, not one per watch */
  private readonly publishWarnings: RateLimitedLog;
  /**
   * One promise shared by every caller waiting for idle: a bump per call under a hung API must
   * not pile up one waiter each (the component calls dispatch() for every bump).
   */
  private idle?: { promise: Promise<void>; resolve: () => void };

  constructor(private readonly opts: DispatcherOptions) {
    this.publishWarnings = new RateLimitedLog(opts.logger);
  }

  /** Groups waiting for a fetch slot. */
  get queued(): number {
    return this.queuedCount;
  }

  /** Fetches and publishes in flight plus queued groups. */
  get busy(): number {
    return this.work.size + this.queuedCount + this.snapshotWaiters.length;
  }

  /** Fan a bump out to every group on its paths. Resolves when the dispatcher is idle again. */
  dispatch(bump: Bump): Promise<void> {
    const trigger = { reason: bump.id, bump };
    let groups = 0;
    for (const path of bump.paths) {
      for (const [credKey, watches] of this.opts.registry.groupsOn(path)) {
        if (![...watches].some((w) => !w.suspended)) continue;
        this.schedule(path, credKey, trigger);
        groups += 1;
      }
    }
    if (groups === 0) this.opts.logger.debug('bump matched no watch', { bump: bump.id, paths: bump.paths.length });
    return this.settled();
  }

  /** Refetch one watch's group outside a bump (after new credentials); publishes only what changed. */
  refetch(watch: Watch, reason: string): Promise<void> {
    this.schedule(watch.path, watch.credKey, { reason, bump: null });
    return this.settled();
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
    if (g?.state === 'idle' && !this.opts.registry.group(g.path, g.credKey)) this.groups.delete(key);
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
    // A failed snapshot is refetched with the failed groups once the API answers again.
    if (isFailure(result)) this.failed.add(this.groupOf(watch.path, watch.credKey).key);
    else this.failed.delete(groupKey(watch.path, watch.credKey));
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
    if (!g) this.groups.set(key, (g = { key, path, credKey, state: 'idle', next: null, retried: false }));
    return g;
  }

  private schedule(path: string, credKey: string, trigger: Trigger): void {
    if (this.closed) return;
    const g = this.groupOf(path, credKey);
    if (g.state === 'idle') {
      g.next = trigger;
      g.retried = false;
      this.enqueue(g);
    } else {
      // Latest state wins: the queued or follow-up fetch carries the newest bump id.
      g.next = trigger;
      g.retried = false;
      this.opts.metrics.coalesced.inc();
    }
    this.pump();
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
      const wait = this.pausedUntil - performance.now();
      if (wait > 0) {
        this.pauseTimer ??= setTimeout(() => { this.pauseTimer = undefined; this.pump(); }, wait);
        break;
      }
      const g = this.closed ? undefined : this.dequeue();
      if (!g) break;
      this.active += 1;
      this.track(this.run(g).finally(() => this.release()));
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

  private async fetch(path: string, headers: Watch['headers'], reason: string, validators?: Validators): Promise<FetchResult> {
    const started = process.hrtime.bigint();
    const result = await this.opts.fetcher.fetch({ path, headers, reason, ...(validators ? { validators } : {}) });
    this.opts.metrics.fetchSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9);
    this.opts.metrics.fetches.inc({ class: Metrics.statusClass(result.status) });
    return result;
  }

  private liveWatches(g: Group): Watch[] {
    const set = this.opts.registry.group(g.path, g.credKey);
    return set ? [...set].filter((w) => !w.suspended) : [];
  }

  private async run(g: Group): Promise<void> {
    g.state = 'running';
    const trigger = g.next!;
    g.next = null;
    const watches = this.liveWatches(g);
    if (watches.length > 0) {
      // Revalidate only when every watcher already holds what the validators stand for; a
      // watcher that joined since needs the body, and a 304 would not carry it.
      const v = g.validators;
      const revalidate = v && watches.every((w) => w.lastSent?.bodyHash === v.bodyHash && w.lastSent.status === v.status);
      const result = await this.fetch(g.path, watches[0].headers, trigger.reason, revalidate ? v : undefined);
      if (isFailure(result)) this.failed.add(g.key);
      else this.failed.delete(g.key);
      if (BACK_OFF.has(result.status) && result.retryAfterMs !== undefined && !g.retried) {
        const ms = Math.min(result.retryAfterMs, this.opts.maxRetryAfterMs ?? 60_000);
        this.pausedUntil = Math.max(this.pausedUntil, performance.now() + ms); // monotonic: a clock step neither lengthens nor ends it
        this.opts.logger.warn('API asked to back off', { status: result.status, retryAfterMs: ms });
        g.next ??= trigger;
        g.retried = true;
      } else if (result.status === 304 && v) {
        this.opts.metrics.unchangedSkipped.inc(watches.length);
      } else {
        const hash = bodyHash(result);
        g.validators = result.status === 200 && result.validators
          ? { ...result.validators, status: 200, bodyHash: hash }
          : undefined;
        await this.deliver(g, result, trigger, hash);
      }
    }
    if (g.next && this.closed) g.next = null; // a bump that came while fetching: too late now
    if (g.next) {
      this.enqueue(g);
      this.pump();
    } else {
      g.state = 'idle';
      if (!this.opts.registry.group(g.path, g.credKey)) {
        this.groups.delete(g.key);
        this.failed.delete(g.key);
      }
    }
  }

  /** Publish one result to every watch of the group, as it is now (not when the fetch began). */
  private async deliver(g: Group, result: FetchResult, trigger: Trigger, hash: string): Promise<void> {
    const { metrics, logger, publisher, pushUnchanged } = this.opts;
    const watches = this.liveWatches(g);
    if (watches.length > 1) metrics.deduplicated.inc(watches.length - 1);
    const rejected = CREDENTIALS_REJECTED.has(result.status);
    if (result.error) logger.warn('fetch failed', { path: g.path, cred: g.credKey, code: result.error.code, watches: watches.length });
    const publishes: Promise<void>[] = [];
    for (const watch of watches) {
      if (rejected) {
        // Push the 401/403 (below), then stop fetching with credentials the API refused.
        watch.suspended = true;
        logger.info('watch suspended: credentials rejected', { watch: watch.id, session: watch.session, status: result.status });
      }
      if (!pushUnchanged && watch.lastSent && watch.lastSent.status === result.status && watch.lastSent.bodyHash === hash) {
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
  }
}
