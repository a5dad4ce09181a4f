import type { Logger } from './logger.js';

/**
 * Logs a warning at most once per interval per kind, then reports how many were suppressed, so
 * a flood of bad input costs a few log lines, not one per message.
 */
export class RateLimitedLog {
  private readonly last = new Map<string, { at: number; suppressed: number }>();

  constructor(private readonly logger: Logger, private readonly intervalMs = 10_000) {}

  warn(kind: string, message: string, meta: Record<string, unknown> = {}): void {
    const now = performance.now(); // monotonic: a clock step must not mute or unmute a kind
    const entry = this.last.get(kind);
    if (entry && now - entry.at < this.intervalMs) {
      entry.suppressed += 1;
      return;
    }
    const suppressed = entry?.suppressed ?? 0;
    this.last.set(kind, { at: now, suppressed: 0 });
    this.logger.warn(message, { kind, ...meta, ...(suppressed ? { suppressed } : {}) });
  }
}
