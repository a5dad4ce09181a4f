import { createHash } from 'node:crypto';
import type { Fetcher } from './fetcher.js';
import { Limiter } from './limiter.js';
import type { Logger } from './logger.js';
import { Metrics } from './metrics.js';
import type { Publisher } from './publisher.js';
import type { Bump, FetchResult, Update } from './types.js';
import type { Watch, WatchRegistry } from './watch-registry.js';

export interface DispatcherOptions {
  registry: WatchRegistry;
  fetcher: Fetcher;
  publisher: Publisher;
  logger: Logger;
  concurrency: number;
  pushUnchanged: boolean;
  metrics: Metrics;
}

/** Statuses that mean the credentials are dead: the watch is suspended after pushing them. */
const CREDENTIALS_REJECTED = new Set([401, 403]);

function toUpdate(watch: Watch, result: FetchResult, bump: Bump | null): Update {
  return { watch: watch.id, path: watch.path, ...result, bump: bump ? { id: bump.id, at: bump.at } : null };
}

function bodyHash(result: FetchResult): string {
  // The error code counts: a timeout after a refusal is news even though both have no body.
  return createHash('sha256').update(result.error?.code ?? '').update("\n").update(result.body).digest('base64url');
}

/**
 * The one-way flow: bump -> registry -> fetcher -> publisher. Every fetch goes through one
 * limiter (the upstream concurrency cap); every task is tracked so stop() can drain them.
 */
export class Dispatcher {
  private readonly limiter: Limiter;
  private readonly inFlight = new Set<Promise<void>>();

  constructor(private readonly opts: DispatcherOptions) {
    this.limiter = new Limiter(opts.concurrency);
  }

  get busy(): number {
    return this.inFlight.size;
  }

  /** Fan a bump out to every watch on its paths. Returns when all of them are published. */
  dispatch(bump: Bump): Promise<void> {
    const tasks: Promise<void>[] = [];
    for (const path of bump.paths) {
      for (const watch of this.opts.registry.byPath(path)) {
        if (!watch.suspended) tasks.push(this.track(this.refresh(watch, bump, bump.id)));
      }
    }
    if (tasks.length === 0) this.opts.logger.debug('bump matched no watch', { bump: bump.id, paths: bump.paths.length });
    return Promise.all(tasks).then(() => undefined);
  }

  /** A first fetch for `waymark.watch` with `snapshot: true`; it counts as sent. */
  async snapshot(watch: Watch): Promise<Update> {
    const result = await this.limiter.run(() => this.opts.fetcher.fetch({ path: watch.path, headers: watch.headers, reason: 'snapshot' }));
    this.opts.metrics.fetches.inc({ class: Metrics.statusClass(result.status) });
    watch.lastSent = { status: result.status, bodyHash: bodyHash(result) };
    if (CREDENTIALS_REJECTED.has(result.status)) watch.suspended = true;
    return toUpdate(watch, result, null);
  }

  /** Refetch one watch outside a bump (after new credentials); publishes only what changed. */
  refetch(watch: Watch, reason: string): Promise<void> {
    return this.track(this.refresh(watch, null, reason));
  }

  /** Wait for in-flight work, up to a deadline. Returns how many tasks were still running. */
  async drain(deadlineMs: number): Promise<number> {
    if (this.inFlight.size === 0) return 0;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => { timer = setTimeout(resolve, deadlineMs); });
    await Promise.race([Promise.allSettled([...this.inFlight]), timeout]);
    clearTimeout(timer);
    return this.inFlight.size;
  }

  private track(p: Promise<void>): Promise<void> {
    this.inFlight.add(p);
    return p.finally(() => this.inFlight.delete(p));
  }

  private async refresh(watch: Watch, bump: Bump | null, reason: string): Promise<void> {
    const { registry, fetcher, publisher, logger } = this.opts;
    const headers = watch.headers;
    const result = await this.limiter.run(() => {
      // The session may have left while this waited for a slot: that costs no request.
      if (!registry.isLive(watch) || watch.suspended) return Promise.resolve(null);
      return fetcher.fetch({ path: watch.path, headers, reason });
    });
    if (!result) return;
    this.opts.metrics.fetches.inc({ class: Metrics.statusClass(result.status) });
    // Unwatched, departed or re-credentialed meanwhile: this result is nobody's any more.
    if (!registry.isLive(watch) || watch.headers !== headers) return;
    if (result.error) {
      logger.warn('fetch failed', { watch: watch.id, session: watch.session, cred: watch.credKey, code: result.error.code, status: result.status });
    }
    const hash = bodyHash(result);
    if (CREDENTIALS_REJECTED.has(result.status)) {
      // Push the 401/403 (below), then stop fetching with credentials the API refused.
      watch.suspended = true;
      logger.info('watch suspended: credentials rejected', { watch: watch.id, session: watch.session, status: result.status });
    }
    if (!this.opts.pushUnchanged && watch.lastSent && watch.lastSent.status === result.status && watch.lastSent.bodyHash === hash) {
      this.opts.metrics.unchangedSkipped.inc();
      logger.debug('unchanged, not published', { watch: watch.id, session: watch.session });
      return;
    }
    try {
      await publisher.publish(watch.session, toUpdate(watch, result, bump));
      watch.lastSent = { status: result.status, bodyHash: hash };
      this.opts.metrics.publishes.inc();
    } catch (err) {
      logger.warn('publish failed', { watch: watch.id, session: watch.session, error: (err as Error).message });
    }
  }
}
