import { tagGroupKey } from './tag-index.js';

/** What the revalidator needs of a watch: its group and its period (0: off). */
export interface RevalidatingWatch {
  readonly path: string;
  readonly credKey: string;
  readonly revalidateMs?: number;
}

export interface RevalidatorOptions {
  /** a group is due: refetch it conditionally (the dispatcher's `revalidate`); `periodMs` is its current period */
  onDue(path: string, credKey: string, periodMs: number): void;
  /** [0, 1); for specs. @default Math.random */
  random?: () => number;
}

interface Entry {
  readonly key: string;
  readonly path: string;
  readonly credKey: string;
  /** period -> how many of the group's watches ask for it */
  readonly periods: Map<number, number>;
  /** the shortest of `periods` */
  period: number;
  /** ms since epoch of the next revalidation */
  due: number;
  /** position in the heap */
  at: number;
}

/** setTimeout takes at most 2^31-1 ms; a longer wait is taken in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Revalidation timing for contract 11.4: one entry per (path, credentials) group with at least
 * one revalidating watch, due every `period` (the shortest period of its watches, so watches
 * that share a request share its timer), each time jittered by ±10 % so groups do not fire
 * together. All entries sit in one binary min-heap under one Node timer armed for the
 * earliest: adding, changing and removing cost O(log groups), firing O(log groups) per group
 * due, and idle groups cost nothing between their turns. Fed by the registry's group events
 * (`joined`/`left`), so it stops for a watch at unwatch, at session leave and when a 410
 * removes it.
 */
export class Revalidator {
  private readonly entries = new Map<string, Entry>();
  private readonly heap: Entry[] = [];
  private timer?: NodeJS.Timeout;
  private timerAt = Infinity;
  private stopped = false;
  private readonly random: () => number;

  constructor(private readonly opts: RevalidatorOptions) {
    this.random = opts.random ?? Math.random;
  }

  /** groups with a revalidation timer */
  get size(): number {
    return this.entries.size;
  }

  /** The period a group revalidates at, or 0. */
  periodOf(path: string, credKey: string): number {
    return this.entries.get(tagGroupKey(path, credKey))?.period ?? 0;
  }

  joined(w: RevalidatingWatch): void {
    const ms = w.revalidateMs ?? 0;
    if (!(ms > 0) || this.stopped) return;
    const key = tagGroupKey(w.path, w.credKey);
    let e = this.entries.get(key);
    if (!e) {
      e = { key, path: w.path, credKey: w.credKey, periods: new Map(), period: Infinity, due: Infinity, at: -1 };
      this.entries.set(key, e);
    }
    e.periods.set(ms, (e.periods.get(ms) ?? 0) + 1);
    if (ms < e.period) {
      e.period = ms;
      // A shorter period takes effect now; the first turn of a new group is jittered too.
      const due = Date.now() + this.jittered(e.period);
      if (e.at === -1) this.push(e, due);
      else if (due < e.due) this.move(e, due);
      this.arm();
    }
  }

  left(w: RevalidatingWatch): void {
    const ms = w.revalidateMs ?? 0;
    if (!(ms > 0)) return;
    const key = tagGroupKey(w.path, w.credKey);
    const e = this.entries.get(key);
    const n = e?.periods.get(ms);
    if (!e || n === undefined) return;
    if (n > 1) {
      e.periods.set(ms, n - 1);
      return;
    }
    e.periods.delete(ms);
    if (e.periods.size === 0) {
      this.entries.delete(key);
      this.removeAt(e.at);
      return;
    }
    // The shortest period left; the turn already planned stands (it is at most one old period away).
    let min = Infinity;
    for (const p of e.periods.keys()) if (p < min) min = p;
    e.period = min;
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.entries.clear();
    this.heap.length = 0;
  }

  private jittered(period: number): number {
    return Math.round(period * (0.9 + 0.2 * this.random()));
  }

  private arm(): void {
    if (this.stopped) return;
    const first = this.heap[0];
    if (!first) {
      clearTimeout(this.timer);
      this.timer = undefined;
      this.timerAt = Infinity;
      return;
    }
    if (this.timer && this.timerAt <= first.due) return;
    clearTimeout(this.timer);
    this.timerAt = first.due;
    this.timer = setTimeout(() => this.fire(), Math.min(MAX_TIMER_MS, Math.max(0, first.due - Date.now())));
    this.timer.unref();
  }

  private fire(): void {
    this.timer = undefined;
    this.timerAt = Infinity;
    const now = Date.now();
    // Bounded: each entry due now is moved past now before the next is looked at.
    let turns = this.heap.length;
    while (turns-- > 0 && this.heap.length > 0 && this.heap[0].due <= now) {
      const e = this.heap[0];
      this.move(e, now + this.jittered(e.period));
      this.opts.onDue(e.path, e.credKey, e.period);
    }
    this.arm();
  }

  private push(e: Entry, due: number): void {
    e.due = due;
    e.at = this.heap.length;
    this.heap.push(e);
    this.up(e.at);
  }

  private move(e: Entry, due: number): void {
    const earlier = due < e.due;
    e.due = due;
    if (earlier) this.up(e.at);
    else this.down(e.at);
  }

  private removeAt(i: number): void {
    if (i < 0 || i >= this.heap.length) return;
    const removed = this.heap[i];
    removed.at = -1;
    const last = this.heap.pop()!;
    if (i < this.heap.length) {
      this.heap[i] = last;
      last.at = i;
      this.up(i);
      this.down(last.at);
    }
    if (i === 0) this.arm();
  }

  private up(i: number): void {
    const h = this.heap;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (h[parent].due <= h[i].due) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  private down(i: number): void {
    const h = this.heap;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let min = i;
      if (l < h.length && h[l].due < h[min].due) min = l;
      if (r < h.length && h[r].due < h[min].due) min = r;
      if (min === i) return;
      this.swap(i, min);
      i = min;
    }
  }

  private swap(a: number, b: number): void {
    const h = this.heap;
    [h[a], h[b]] = [h[b], h[a]];
    h[a].at = a;
    h[b].at = b;
  }
}
