import type { SessionId } from '../protocol/types.js';

/**
 * A token bucket per session: `burst` calls at once, refilled at `perSecond`. Idle buckets are
 * forgotten once full again, so the map holds only sessions that called recently.
 *
 * Time is monotonic (`performance.now()`, milliseconds), never the wall clock: after a clock step
 * back (NTP, a resumed VM) a wall-clock bucket would add a negative elapsed time and refuse
 * every call for as long as the step, and a step forward would refill it. An elapsed time below
 * zero (an injected clock) counts as zero.
 */
export class SessionRateLimiter {
  private readonly buckets = new Map<SessionId, { tokens: number; at: number }>();

  constructor(private readonly perSecond: number, private readonly burst: number, private readonly now = () => performance.now()) {}

  /** Take one token; false when the session is over its rate. */
  take(session: SessionId): boolean {
    const t = this.now();
    const b = this.buckets.get(session) ?? { tokens: this.burst, at: t };
    b.tokens = Math.min(this.burst, b.tokens + (Math.max(0, t - b.at) / 1000) * this.perSecond);
    b.at = t;
    if (b.tokens < 1) {
      this.buckets.set(session, b);
      return false;
    }
    b.tokens -= 1;
    this.buckets.set(session, b);
    if (this.buckets.size > 10_000) this.sweep(t);
    return true;
  }

  forget(session: SessionId): void {
    this.buckets.delete(session);
  }

  private sweep(t: number): void {
    for (const [s, b] of this.buckets) {
      if (b.tokens + (Math.max(0, t - b.at) / 1000) * this.perSecond >= this.burst) this.buckets.delete(s);
    }
  }
}
