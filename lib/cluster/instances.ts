import type autobahn from 'autobahn';
import { WaymarkError } from '../protocol/errors.js';
import { DeadlineError } from '../support/deadline.js';
import type { Logger } from '../support/logger.js';
import type { Metrics } from '../support/metrics.js';
import { RateLimitedLog } from '../support/rate-limited-log.js';
import type { ForwardHeaders, SessionId } from '../protocol/types.js';
import {
  ANNOUNCE_TOPIC, INTERNAL_CLAIM, INTERNAL_JOINED, INTERNAL_REFRESH, INTERNAL_UNWATCH,
} from '../protocol/uris.js';
import type { WatchIndex } from './watch-index.js';
import type { WatchRegistry } from '../engine/watch-registry.js';

/**
 * How long (ms) any call to the shared watch index may take before Instances goes on without it,
 * exactly as when Redis is down (limits and rates count on this instance). Redis answers in well
 * under a millisecond on a healthy network; the margin is for a busy host, whose event loop can
 * stall for hundreds of milliseconds. A Redis that stopped answering without closing
 * (SIGSTOP, a blackholed network, a long Lua script) would otherwise hold `waymark.watch`,
 * `unwatch` and `refresh` for as long as it lasts. On expiry the index's connection is also
 * dropped and reopened (`WatchIndex.interrupt`), so later calls fail at once instead of each
 * waiting out the deadline until Redis answers again.
 */
export const INDEX_DEADLINE_MS = 1_000;

export interface InstancesOptions {
  /** this process's instance id */
  instance: string;
  /** instances with the same service name are one service (the bump channel) */
  service: string;
  index: WatchIndex;
  registry: WatchRegistry;
  maxPerSession: number;
  /** the per-session call rate: calls per second and burst */
  rate: { perSecond: number; burst: number };
  logger: Logger;
  /** the component's WAMP session while joined */
  session: () => autobahn.Session | undefined;
  metrics?: Pick<Metrics, 'watchesMoved' | 'peersLeft' | 'peers'>;
  /** apply new credentials to this instance's watches of a session; returns how many it holds */
  applyRefresh: (session: SessionId, headers: ForwardHeaders) => number;
  /** @default INDEX_DEADLINE_MS */
  indexDeadlineMs?: number;
}

interface Envelope {
  service?: unknown;
  instance?: unknown;
  session?: unknown;
  watch?: unknown;
  headers?: unknown;
}

/**
 * Makes several instances on one router and one Redis behave as one service (contract
 * section 7). Rules:
 * - the instance that served the latest `waymark.watch` of a (session, path) owns that watch;
 *   it records itself as owner in the shared index (atomically with the per-session limit) and
 *   publishes a claim, and every other instance drops its copy: one owner, one Update per bump;
 * - `unwatch` removes the id from the index (that answers `removed`) and tells the owner;
 *   `refresh` sends the credentials to every instance over the router, never through Redis;
 * - when an instance's WAMP session leaves, a survivor announces `{event: 'resync'}` on
 *   `waymark.announce`, clients re-watch, and whoever serves a watch that was owned elsewhere
 *   adopts it and refetches it once, so nothing that changed meanwhile stays stale.
 * While Redis is unreachable, or slower than INDEX_DEADLINE_MS, the index is skipped (limits
 * count per instance) rather than refusing watches; the WAMP side keeps working.
 */
export class Instances {
  /** instance -> its WAMP session id, for telling an instance's leave from a browser's */
  private readonly peers = new Map<string, number>();
  private readonly warn: RateLimitedLog;
  private joins = 0;
  /** watch ids between admit and settle here, and whether another instance claimed one meanwhile */
  private readonly admitting = new Map<string, { n: number; contested: boolean; claim: boolean }>();
  private touchTimer?: NodeJS.Timeout;

  constructor(private readonly opts: InstancesOptions) {
    this.warn = new RateLimitedLog(opts.logger);
  }

  /** Every index call, bounded: a silent Redis fails like an unreachable one (INDEX_DEADLINE_MS). */
  private index<T>(what: string, call: (index: WatchIndex) => Promise<T>): Promise<T> {
    const ms = this.opts.indexDeadlineMs ?? INDEX_DEADLINE_MS;
    const work = call(this.opts.index);
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      // After an event-loop stall the timer runs before the socket is read (libuv: timers, then
      // poll): give a reply that already arrived that one turn (setImmediate runs after poll)
      // before calling Redis silent and dropping its connection.
      const timer = setTimeout(() => setImmediate(() => {
        if (settled) return;
        settled = true;
        this.opts.index.interrupt?.();
        reject(new DeadlineError(`no answer to ${what} within ${ms} ms`));
      }), ms);
      work.then((v) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(v);
      }, (err: unknown) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  async start(touchEveryMs: number): Promise<void> {
    try {
      await this.opts.index.start();
    } catch (err) {
      // it keeps reconnecting; until then watches fall back to per-instance limits
      this.indexUnavailable(err);
    }
    this.touchTimer = setInterval(() => { void this.touch(); }, touchEveryMs);
    this.touchTimer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.touchTimer);
    await this.opts.index.close();
  }

  /** Runs on every join to the router, before the `started` announcement. */
  async join(session: autobahn.Session): Promise<void> {
    const handle = (fn: (e: Envelope) => unknown) => (args?: unknown[]) => {
      const e = args?.[0] as Envelope | undefined;
      if (!e || e.service !== this.opts.service || e.instance === this.opts.instance) return;
      Promise.resolve(fn(e)).catch((err: unknown) => this.warn.warn('internal', 'internal event failed', { error: String(err) }));
    };
    await Promise.all([
      session.subscribe(INTERNAL_JOINED, handle((e) => this.onJoined(e))),
      session.subscribe(INTERNAL_CLAIM, handle((e) => this.onClaim(e))),
      session.subscribe(INTERNAL_UNWATCH, handle((e) => this.onUnwatch(e))),
      session.subscribe(INTERNAL_REFRESH, handle((e) => this.onRefresh(e))),
    ]);
    try {
      await this.index('setInstance', (i) => i.setInstance(this.opts.instance, session.id));
      this.peers.clear();
      for (const [instance, wampSession] of await this.index('instances', (i) => i.instances())) {
        if (instance !== this.opts.instance) this.peers.set(instance, wampSession);
      }
      await this.pruneGone(session);
      this.opts.metrics?.peers.set(this.peers.size);
      // Back after a lost router connection: survivors may have adopted some of our watches.
      if (this.joins > 0) await this.dropDisowned();
    } catch (err) {
      this.indexUnavailable(err);
    }
    this.joins += 1;
    this.publish(INTERNAL_JOINED, { session: session.id });
  }

  /**
   * Before `waymark.watch` accepts (session, id): take ownership in the index, enforcing the
   * per-session limit across instances. `adopted` means the watch moved here from another
   * instance (dead, or alive and about to drop it), so it may have missed a bump: refetch it.
   */
  async admit(session: SessionId, id: string): Promise<{ adopted: boolean }> {
    let previous: string | null;
    this.mark(id).n += 1;
    try {
      const r = await this.index('claim', (i) => i.claim(session, id, this.opts.instance, this.opts.maxPerSession));
      if (r.over) {
        throw new WaymarkError('too_many_watches', `this session already has ${this.opts.maxPerSession} watches (counted across instances), the limit`);
      }
      previous = r.previous;
    } catch (err) {
      if (err instanceof WaymarkError) throw err;
      this.indexUnavailable(err, '; limits count on this instance only');
      this.mark(id).claim = true; // unknown former owner: claim to be safe
      return { adopted: false };
    }
    // Refetch even when the former owner lives: it drops the watch on our claim, possibly with
    // a bump's fetch still in flight whose Update it then no longer delivers.
    const adopted = previous !== null && previous !== this.opts.instance;
    if (adopted) this.opts.metrics?.watchesMoved.inc();
    // Only a watch another instance owned can have a copy elsewhere: no claim needed otherwise.
    if (adopted) this.mark(id).claim = true;
    return { adopted };
  }

  /**
   * The per-session rate limit. Alone, the instance's own bucket is exact and costs nothing; with
   * peers, round robin spreads a session's calls over them, so the bucket is shared in Redis
   * (falling back to the local one while Redis is unreachable).
   */
  async allowCall(session: SessionId, local: () => boolean): Promise<boolean> {
    if (this.peers.size === 0) return local();
    try {
      return await this.index('take', (i) => i.take(session, this.opts.rate.perSecond, this.opts.rate.burst));
    } catch (err) {
      this.indexUnavailable(err, '; rate limits count on this instance only');
      return local();
    }
  }

  /**
   * After `waymark.watch` accepted (`ok`) or failed: if the watch was another instance's, every
   * other instance drops its copy. A claim
   * from another instance that arrived between our admit and now found nothing here to drop; if
   * one did, the index decides who keeps the watch.
   */
  settle(session: SessionId, id: string, ok: boolean): void {
    const a = this.admitting.get(id);
    if (a && --a.n === 0) this.admitting.delete(id);
    if (!ok) return;
    if (a?.claim) this.publish(INTERNAL_CLAIM, { session, watch: id });
    if (a?.contested) void this.dropUnlessOwner(session, id, false);
  }

  /** One rate-limited warning for every call the index could not answer; `consequence` says what falls back. */
  private indexUnavailable(err: unknown, consequence = ''): void {
    this.warn.warn('index', `shared watch index unavailable${consequence}`, { error: String(err) });
  }

  private mark(id: string): { n: number; contested: boolean; claim: boolean } {
    let a = this.admitting.get(id);
    if (!a) this.admitting.set(id, (a = { n: 0, contested: false, claim: false }));
    return a;
  }

  /** `waymark.unwatch` of one id; `local` is what this instance removed itself. */
  async unwatch(session: SessionId, id: string, local: number): Promise<number> {
    let shared: number | undefined;
    try {
      shared = await this.index('remove', (i) => i.remove(session, id));
    } catch (err) {
      this.indexUnavailable(err);
    }
    if (local === 0) this.publish(INTERNAL_UNWATCH, { session, watch: id });
    return Math.max(local, shared ?? 0);
  }

  /**
   * `waymark.refresh`: every instance applies the credentials to its watches of the session.
   * The answer counts the session's watches across instances (the index), or this instance's.
   */
  async refresh(session: SessionId, headers: ForwardHeaders, local: number): Promise<number> {
    this.publish(INTERNAL_REFRESH, { session, headers });
    try {
      return Math.max(local, await this.index('count', (i) => i.count(session)));
    } catch (err) {
      this.indexUnavailable(err);
      return local;
    }
  }

  /** `wamp.session.on_leave`: a browser's entries go; an instance's leave makes clients re-watch. */
  async sessionLeft(id: SessionId): Promise<void> {
    for (const [instance, wampSession] of this.peers) {
      if (wampSession !== id) continue;
      this.peers.delete(instance);
      this.opts.metrics?.peersLeft.inc();
      this.opts.metrics?.peers.set(this.peers.size);
      let first = true;
      try {
        first = await this.index('forgetInstance', (i) => i.forgetInstance(instance, wampSession));
      } catch {
        // without the index every survivor announces; clients re-watch a few times, none lost
      }
      if (first) {
        this.opts.logger.warn('instance left; clients told to re-watch', { instance });
        this.announce({ event: 'resync', instance });
      }
      return;
    }
    try {
      await this.index('dropSession', (i) => i.dropSession(id));
    } catch (err) {
      this.indexUnavailable(err);
    }
  }

  private onJoined(e: Envelope): void {
    if (typeof e.instance === 'string' && typeof e.session === 'number') this.peers.set(e.instance, e.session);
    this.opts.metrics?.peers.set(this.peers.size);
  }

  private async onClaim(e: Envelope): Promise<void> {
    if (typeof e.session !== 'number' || typeof e.watch !== 'string') return;
    if (!this.opts.registry.get(e.watch)) {
      const a = this.admitting.get(e.watch);
      if (a) a.contested = true;
      return;
    }
    await this.dropUnlessOwner(e.session, e.watch, true);
  }

  /** Claims from two instances can cross; the index says who served the latest call. */
  private async dropUnlessOwner(session: SessionId, id: string, dropIfUnknown: boolean): Promise<void> {
    let owner: string | null = null;
    try {
      owner = await this.index('owner', (i) => i.owner(session, id));
    } catch {
      // index unreachable: a claim we received wins; our own fresh admit stays
      if (!dropIfUnknown) return;
    }
    if (owner === this.opts.instance) return;
    const removed = this.opts.registry.remove(session, id);
    if (removed) this.opts.logger.debug('watch moved to another instance', { session, watch: id });
  }

  private onUnwatch(e: Envelope): void {
    if (typeof e.session !== 'number' || typeof e.watch !== 'string') return;
    this.opts.registry.remove(e.session, e.watch);
  }

  private onRefresh(e: Envelope): void {
    if (typeof e.session !== 'number' || !e.headers || typeof e.headers !== 'object') return;
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(e.headers as Record<string, unknown>)) if (typeof v === 'string') headers[k] = v;
    this.opts.applyRefresh(e.session, headers);
  }

  /**
   * Forget recorded instances whose WAMP session no longer exists (they left while nobody was
   * there to see it). No resync is needed: our own `started` announcement makes clients re-watch.
   */
  private async pruneGone(session: autobahn.Session): Promise<void> {
    for (const [instance, wampSession] of [...this.peers]) {
      try {
        await session.call('wamp.session.get', [wampSession]);
      } catch (err) {
        if ((err as { error?: string }).error !== 'wamp.error.no_such_session') continue;
        this.peers.delete(instance);
        await this.index('forgetInstance', (i) => i.forgetInstance(instance, wampSession));
      }
    }
  }

  /** Drop local watches whose owner in the index is another instance. */
  private async dropDisowned(): Promise<void> {
    const { registry } = this.opts;
    let dropped = 0;
    for (const [session, owners] of await this.index('owners', (i) => i.owners(registry.sessionIds()))) {
      for (const w of registry.forSession(session)) {
        const owner = owners[w.id];
        if (owner !== undefined && owner !== this.opts.instance) dropped += registry.remove(session, w.id);
      }
    }
    if (dropped > 0) this.opts.logger.info('dropped watches adopted by other instances', { dropped });
  }

  private async touch(): Promise<void> {
    const sessions = this.opts.registry.sessionIds();
    try {
      for (let n = 0; n < sessions.length; n += 1_000) await this.index('touch', (i) => i.touch(sessions.slice(n, n + 1_000)));
    } catch (err) {
      this.indexUnavailable(err);
    }
  }

  private publish(topic: string, payload: Record<string, unknown>): void {
    const s = this.opts.session();
    if (!s?.isOpen) return;
    try {
      s.publish(topic, [{ service: this.opts.service, instance: this.opts.instance, ...payload }]);
    } catch (err) {
      this.warn.warn('publish', 'internal publish failed', { topic, error: String(err) });
    }
  }

  private announce(payload: Record<string, unknown>): void {
    const s = this.opts.session();
    if (!s?.isOpen) return;
    try {
      s.publish(ANNOUNCE_TOPIC, [payload]);
    } catch (err) {
      this.warn.warn('publish', 'announce failed', { error: String(err) });
    }
  }
}
