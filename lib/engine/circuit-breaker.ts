import { isApiDownError, type Fetcher } from './fetcher.js';
import type { Logger } from '../support/logger.js';
import type { FetchRequest, FetchResult } from '../protocol/types.js';

export type BreakerState = 'closed' | 'open' | 'half-open';

export interface CircuitBreakerOptions {
  /** consecutive failures that open the circuit */
  failures: number;
  /**
   * how many different credentials those failures must come from (one tenant's broken paths
   * are not an outage of the API). @default 1
   */
  minCredentials?: number;
  /**
   * count a no-response failure only on a path that has answered before (any status): paths a
   * session picks that never answer (they reset, or hang on an expensive query) say nothing
   * about the API, whatever tokens it sends them with; anonymous sessions and tokens are free
   * to make. Up to `maxAnsweredPaths` paths are remembered per origin, the oldest forgotten
   * first. @default false
   */
  answeredPathsOnly?: boolean;
  /** @default 10000 */
  maxAnsweredPaths?: number;
  /** how long an open circuit fails fast before letting one probe request through */
  cooldownMs: number;
  /** the circuit a request belongs to */
  origin: (req: FetchRequest) => string;
  /** who a request is sent as. @default the request's headers object (interned per credentials by the registry) */
  credentials?: (req: FetchRequest) => unknown;
  logger: Logger;
  onState?: (origin: string, state: BreakerState) => void;
  /** the circuit half-opened: the owner may send a probe request (a fetch that failed before) */
  onHalfOpen?: (origin: string) => void;
  onRejected?: () => void;
}

/**
 * A result that may mean the API is down: no response at all (refused, reset, timeout), for a
 * request that was sent. Any answer, even a 5xx or an unparsable one, shows the API is up; a
 * body over the limit (`too_large`) is an answer too.
 */
export function noResponse(r: FetchResult): boolean {
  return r.status === 0 && r.notSent !== true && isApiDownError(r.error?.code);
}

const defaultCredentials = (req: FetchRequest): unknown => req.headers;

interface Circuit {
  state: BreakerState;
  failures: number;
  /** the credentials of the failures counted since the last answer */
  credentials: Set<unknown>;
  /** answers received so far: a failure during which another request got one is not counted */
  answers: number;
  /** a half-open circuit lets exactly one request through */
  probing: boolean;
  /** paths that got an answer (answeredPathsOnly), oldest first */
  answered: Set<string>;
  timer?: NodeJS.Timeout;
}

/**
 * A per-origin circuit breaker on the Fetcher seam. It counts only what shows the API itself is
 * down: a request that got no response while no other request got an answer during its lifetime
 * (the API was silent for everyone), from at least `minCredentials` different credentials, and
 * (with `answeredPathsOnly`) on a path that answered before. A
 * deterministic 5xx, an unparsable answer or one tenant's hanging paths never open it, so one
 * tenant's failures cannot make everyone's fetches fail fast; the Dispatcher retries those per
 * group instead. A request that failed before it was sent (`notSent`) counts for nothing.
 * After `failures` such failures it opens: fetches fail fast with `status: 0, error.code:
 * "unreachable"` (the contract's code for "no response") without touching the API, so a dead or
 * hung API is not hammered and fetch slots are not held for a timeout each. After `cooldownMs`
 * it half-opens: one request goes through (the owner sends one via `onHalfOpen`); an answer
 * closes it (the owner then refetches what failed), no response opens it for another cool-down.
 */
export class CircuitBreakerFetcher implements Fetcher {
  private readonly circuits = new Map<string, Circuit>();
  private closed = false;

  constructor(private readonly inner: Fetcher, private readonly opts: CircuitBreakerOptions) {}

  /** The state of an origin's circuit (closed when never seen). */
  state(origin: string): BreakerState {
    return this.circuits.get(origin)?.state ?? 'closed';
  }

  async fetch(req: FetchRequest, signal?: AbortSignal): Promise<FetchResult> {
    const origin = this.opts.origin(req);
    let c = this.circuits.get(origin);
    if (!c) this.circuits.set(origin, (c = { state: 'closed', failures: 0, credentials: new Set(), answers: 0, probing: false, answered: new Set() }));
    if (c.state === 'open' || (c.state === 'half-open' && c.probing)) {
      this.opts.onRejected?.();
      return {
        status: 0, headers: {}, body: '', encoding: 'utf8', fetchedAt: Date.now(),
        error: { code: 'unreachable', message: `the API is unavailable (${c.failures} consecutive failures); retrying shortly` },
      };
    }
    const probe = c.state === 'half-open';
    if (probe) c.probing = true;
    const answersBefore = c.answers;
    let result: FetchResult;
    try {
      result = await this.inner.fetch(req, signal);
    } finally {
      if (probe) c.probing = false;
    }
    if (result.notSent) return result;
    if (noResponse(result)) {
      if (this.opts.answeredPathsOnly && !c.answered.has(req.path)) {
        // A path that never answered: its own failure. A probe spent on it proves nothing
        // either, so the owner is asked for another one (a little later: no tight loop).
        if (probe) this.reprobe(origin, c);
      } else if (c.answers === answersBefore) {
        // (Another request was answered meanwhile: the API is up, this failure is its path's own.)
        this.failure(origin, c, result, (this.opts.credentials ?? defaultCredentials)(req));
      }
    } else {
      c.answers += 1;
      if (this.opts.answeredPathsOnly) this.remember(c, req.path);
      this.success(origin, c);
    }
    return result;
  }

  private remember(c: Circuit, path: string): void {
    if (c.answered.has(path)) c.answered.delete(path); // to the back: the newest answer
    else if (c.answered.size >= (this.opts.maxAnsweredPaths ?? 10_000)) c.answered.delete(c.answered.values().next().value as string);
    c.answered.add(path);
  }

  private reprobe(origin: string, c: Circuit): void {
    clearTimeout(c.timer);
    c.timer = setTimeout(() => {
      c.timer = undefined;
      if (!this.closed && c.state === 'half-open') this.opts.onHalfOpen?.(origin);
    }, Math.min(1000, this.opts.cooldownMs));
    c.timer.unref();
  }

  private failure(origin: string, c: Circuit, r: FetchResult, credentials: unknown): void {
    c.failures += 1;
    c.credentials.add(credentials);
    if (c.state === 'half-open'
      || (c.state === 'closed' && c.failures >= this.opts.failures && c.credentials.size >= (this.opts.minCredentials ?? 1))) {
      c.credentials.clear();
      this.set(origin, c, 'open', { failures: c.failures, status: r.status, code: r.error?.code, cooldownMs: this.opts.cooldownMs });
      clearTimeout(c.timer);
      c.timer = setTimeout(() => {
        c.timer = undefined;
        if (this.closed || c.state !== 'open') return;
        this.set(origin, c, 'half-open', {});
        this.opts.onHalfOpen?.(origin);
      }, this.opts.cooldownMs);
      c.timer.unref();
    }
  }

  private success(origin: string, c: Circuit): void {
    c.failures = 0;
    if (c.credentials.size > 0) c.credentials.clear();
    if (c.state === 'closed') return;
    clearTimeout(c.timer);
    c.timer = undefined;
    this.set(origin, c, 'closed', {});
  }

  private set(origin: string, c: Circuit, state: BreakerState, meta: Record<string, unknown>): void {
    c.state = state;
    const message = state === 'open' ? 'API circuit open: failing fast' : state === 'half-open' ? 'API circuit half-open: probing' : 'API circuit closed: the API answers again';
    if (state === 'open') this.opts.logger.warn(message, { origin, ...meta });
    else this.opts.logger.info(message, { origin, ...meta });
    this.opts.onState?.(origin, state);
  }

  close(): Promise<void> {
    this.closed = true;
    for (const c of this.circuits.values()) clearTimeout(c.timer);
    return this.inner.close();
  }
}
