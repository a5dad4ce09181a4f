import autobahn from 'autobahn';
import type { Update, WatchResult } from '../protocol/types.js';
import { ANNOUNCE_TOPIC, ERROR_URIS, PROC_REFRESH, PROC_UNWATCH, PROC_WATCH, sessionTopic, WAMP_SUBPROTOCOLS } from '../protocol/uris.js';

/** The browser and Node client of Waymark (`waymark/client`), on autobahn-js. */

export type { Update } from '../protocol/types.js';

export interface ClientUpdate extends Update {
  /** the parsed body when the content type is JSON and it parses */
  json?: unknown;
}

export interface WatchOptions {
  token?: string;
  headers?: Record<string, string>;
  snapshot?: boolean;
  /** re-ask the API every this many ms even without a bump (0: off; at least the server's minimum, 5000 by default) */
  revalidateMs?: number;
}

/**
 * `connecting` until the first join is complete; `open` while joined, listening and every watch
 * was accepted; `reconnecting` while the connection or any step of joining (own topic,
 * announcements, a re-watch) is being retried; `closed` after close() or when autobahn gives up.
 */
export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface ConnectOptions {
  url: string;
  /** @default 'realm1' */
  realm?: string;
  /**
   * longest wait between reconnect attempts, and between two attempts of a step of joining
   * (subscribe, re-watch) that the router or Waymark refused, in seconds. @default 10
   */
  maxRetryDelay?: number;
  /** upper bound of the random delay before re-watching after an announcement, ms. @default 1000 */
  rewatchJitterMs?: number;
}

/**
 * What the `error` event carries: one failed attempt of a step, which the client retries on its
 * own (`retryInMs`) unless the error is the request's own (`retryInMs` undefined: a watch
 * refused with `invalid_argument`, `invalid_path`, `header_not_allowed` or `too_many_watches`,
 * which is dropped).
 */
export class WaymarkClientError extends Error {
  constructor(
    message: string,
    /** the WAMP error URI, e.g. `wamp.error.authorization_failed` (undefined for a local error) */
    readonly uri: string | undefined,
    /** which step failed */
    readonly step: 'subscribe' | 'watch',
    /** the watch's path, for step `watch` */
    readonly path?: string,
    /** when the next attempt is due, ms from now; undefined when none follows */
    readonly retryInMs?: number,
  ) {
    super(message);
    this.name = 'WaymarkClientError';
  }
}

type Listener<T> = (value: T) => void;

export interface ClientWatch {
  readonly path: string;
  /** the current watch id (it changes when a reconnect gives a new session; undefined until accepted) */
  readonly id: string | undefined;
  unwatch(): Promise<void>;
}

interface Handle {
  path: string;
  options: WatchOptions;
  callback: (update: ClientUpdate) => void;
  id?: string;
  /** Updates of this watch handed to the callback so far: a call result's snapshot checks it */
  received: number;
  active: boolean;
  /** the session on which Waymark accepted this watch; another one (or none) means: watch again */
  on?: autobahn.Session;
  /** watch again even on the same session (an instance restarted or left and took the watch along) */
  stale: boolean;
  /**
   * Updates were published while this client could not hear them (a lost session): the next
   * re-watch asks for a snapshot, and this stays set until one succeeded.
   */
  catchUp: boolean;
}

/** Joining one WAMP session: which steps are done, and the retry timer. */
interface Join {
  session: autobahn.Session;
  ownTopic: boolean;
  announce: boolean;
  /** failed attempts in a row, for the back-off */
  failures: number;
  timer?: ReturnType<typeof setTimeout>;
  /** when the timer fires, on the monotonic clock (performance.now(), ms): a wall-clock step must not reorder attempts */
  due: number;
  running: boolean;
  /** the earliest moment (performance.now(), ms) an attempt was asked for while one was running */
  asked?: number;
  /** why the watches are being established again, for the `resync` event */
  reasons: Set<string>;
  /** resolves when this session is lost, so nothing waits for a request autobahn never settles */
  lost: Promise<typeof LOST>;
  markLost: () => void;
}

const LOST = Symbol('session lost');

/** Errors of the watch request itself: asking again cannot help (contract section 3). */
const REQUEST_ERRORS: readonly string[] = [
  ERROR_URIS.invalid_argument, ERROR_URIS.invalid_path, ERROR_URIS.header_not_allowed, ERROR_URIS.too_many_watches,
];

/**
 * Updates kept for watch ids not known yet (a `waymark.watch` call in flight: a watch's Updates
 * can come before the call's result that tells its id): at most this many ids (above Waymark's
 * default of 100 watches per session; the oldest id goes first) and, per id, the latest this
 * many Updates. The latest is always kept, so a snapshot never overrides a newer Update.
 */
const MAX_UNCLAIMED_WATCHES = 256;
const MAX_UNCLAIMED_PER_WATCH = 16;

/** Back-off of a refused step: 0.3 s growing by 1.5 per failure up to maxRetryDelay, then 50-100% of it at random. */
const RETRY_INITIAL_MS = 300;
const RETRY_GROWTH = 1.5;

function withJson(update: Update): ClientUpdate {
  const type = update.headers?.['content-type'] ?? '';
  if (update.encoding === 'utf8' && /(^application\/json|\+json)\b/i.test(type)) {
    try {
      return { ...update, json: JSON.parse(update.body) };
    } catch {
      // not JSON after all: leave json undefined
    }
  }
  return update;
}

function uriOf(err: unknown): string | undefined {
  const uri = (err as { error?: unknown } | undefined)?.error;
  return typeof uri === 'string' ? uri : undefined;
}

function errorText(err: unknown): string {
  if (err instanceof Error) return err.message;
  const e = err as { error?: unknown; args?: unknown[] } | undefined;
  if (typeof e?.error === 'string') return `${e.error}${e.args?.[0] !== undefined ? `: ${String(e.args[0])}` : ''}`;
  return String(err);
}

/**
 * Keeps every watch alive across reconnects (a new session id means new watches), router
 * restarts and Waymark restarts (announced on `waymark.announce`), and hands each callback only its
 * own watch's Updates, in the order received; a call result's snapshot never overrides an Update
 * received after the call was made (see onUpdate and establish).
 *
 * Joining a session takes three steps: subscribe to the own topic, subscribe to the
 * announcements, (re-)watch. Each may be refused for a while: on Crossbar every action of the
 * browser role goes through Waymark's dynamic authorizer, and until Waymark has registered it
 * (after a router restart browsers are often back first) the router answers
 * `wamp.error.authorization_failed`; until Waymark has registered its procedures a watch gets
 * `wamp.error.no_such_procedure`. So every step is retried on the same session with a bounded,
 * jittered back-off, each failed attempt reported as an `error` event, until all succeed; only
 * then is the state `open`. An announcement from Waymark (it publishes one right after
 * registering) cuts the wait short.
 */
export class WaymarkClient {
  private readonly handles = new Set<Handle>();
  /**
   * Handles by watch id. Watching one path twice on one connection gives one watch on the
   * server (the id depends on session and path, contract section 2), so an id may serve several.
   */
  private readonly byId = new Map<string, Set<Handle>>();
  private readonly listeners = new Map<string, Set<Listener<never>>>();
  /** `waymark.watch` calls in flight on the current session */
  private calling = 0;
  /** Updates received for watch ids no handle knows yet, while a call is in flight; by id, oldest first */
  private unclaimed = new Map<string, Update[]>();
  private session?: autobahn.Session;
  private join?: Join;
  private opened?: Promise<void>;
  private settleOpen?: { resolve: () => void; reject: (err: Error) => void };
  /** a join has completed once: every later session is a reconnect */
  private everOpen = false;
  private closing?: Promise<void>;
  private _state: ConnectionState = 'connecting';
  private readonly connection: autobahn.Connection;

  constructor(private readonly opts: ConnectOptions) {
    this.connection = new autobahn.Connection({
      url: opts.url,
      realm: opts.realm ?? 'realm1',
      protocols: WAMP_SUBPROTOCOLS,
      max_retries: -1,
      initial_retry_delay: 0.3,
      max_retry_delay: opts.maxRetryDelay ?? 10,
      retry_delay_growth: 1.5,
    });
  }

  get state(): ConnectionState {
    return this._state;
  }

  /**
   * `state` (ConnectionState), `error` (WaymarkClientError: one failed attempt, retried unless
   * its `retryInMs` is undefined) and `resync` (the watches were re-established; `reason` is
   * `reconnect`, `restart` or `resync`).
   */
  on(event: 'state', fn: Listener<ConnectionState>): this;
  on(event: 'error', fn: Listener<Error>): this;
  on(event: 'resync', fn: Listener<{ reason: string }>): this;
  on(event: string, fn: Listener<never>): this {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn);
    return this;
  }

  off(event: string, fn: Listener<never>): this {
    this.listeners.get(event)?.delete(fn);
    return this;
  }

  private emit(event: string, value: unknown): void {
    for (const fn of this.listeners.get(event) ?? []) (fn as Listener<unknown>)(value);
  }

  private setState(state: ConnectionState): void {
    if (this._state === state) return;
    this._state = state;
    this.emit('state', state);
  }

  /**
   * Resolves once the first join is complete (state `open`), however long that takes: refused
   * steps are retried (each failure an `error` event) and an unreachable router is retried by
   * autobahn. Rejects only when the client can never open: the router ended the session for
   * good before that (e.g. `wamp.error.no_such_realm`), or close() was called first.
   */
  open(): Promise<void> {
    this.opened ??= new Promise<void>((resolve, reject) => {
      this.settleOpen = { resolve, reject };
      this.connection.onopen = (session) => this.onSessionOpen(session);
      this.connection.onclose = (reason, details) => this.onSessionClose(reason, details);
      this.connection.open();
    });
    return this.opened;
  }

  private onSessionOpen(session: autobahn.Session): void {
    this.session = session;
    let markLost!: () => void;
    const lost = new Promise<typeof LOST>((resolve) => { markLost = () => resolve(LOST); });
    const join: Join = {
      session, ownTopic: false, announce: false, failures: 0, due: 0, running: false,
      reasons: new Set(this.everOpen ? ['reconnect'] : []), lost, markLost,
    };
    this.join = join;
    void this.run(join);
  }

  private onSessionClose(reason: string, details: unknown): boolean {
    this.endJoin();
    this.session = undefined;
    this.byId.clear();
    this.calling = 0;
    this.unclaimed.clear();
    for (const h of this.handles) {
      h.on = undefined;
      // Updates published from now on go to a topic nobody hears: catch up on the next session.
      if (h.id !== undefined) h.catchUp = true;
    }
    if (this.closing) {
      this.setState('closed');
      return true;
    }
    const d = details as { will_retry?: boolean; reason?: string | null; message?: string } | undefined;
    const willRetry = d?.will_retry !== false;
    if (!willRetry && !this.everOpen) {
      this.settleOpen?.reject(new Error(reason === 'unreachable'
        ? `cannot reach ${this.opts.url}`
        : `the router ended the session${d?.reason ? `: ${d.reason}` : ''}${d?.message ? ` (${d.message})` : ''}`));
    }
    this.setState(willRetry ? 'reconnecting' : 'closed');
    return false;
  }

  /** Stop working on the current session (lost, or closing): its retries end here. */
  private endJoin(): void {
    const j = this.join;
    if (!j) return;
    this.join = undefined;
    clearTimeout(j.timer);
    j.timer = undefined;
    j.markLost();
  }

  /** Watches that Waymark must accept (again) on this session. */
  private pending(s: autobahn.Session): Handle[] {
    return [...this.handles].filter((h) => h.active && (h.on !== s || h.stale));
  }

  /** Run the join's next attempt in `delayMs`, unless one is running or due sooner. */
  private schedule(j: Join, delayMs: number): void {
    if (this.join !== j) return;
    const due = performance.now() + delayMs;
    if (j.running) {
      j.asked = Math.min(j.asked ?? Infinity, due);
      return;
    }
    if (j.timer !== undefined && j.due <= due) return;
    clearTimeout(j.timer);
    j.due = due;
    j.timer = setTimeout(() => { j.timer = undefined; void this.run(j); }, delayMs);
  }

  private backoffMs(failures: number): number {
    const cap = (this.opts.maxRetryDelay ?? 10) * 1000;
    const base = Math.min(cap, RETRY_INITIAL_MS * RETRY_GROWTH ** failures);
    return Math.round(base * (0.5 + Math.random() / 2));
  }

  /** One attempt of every step not done yet on this session; on failure, the next one is scheduled. */
  private async run(j: Join): Promise<void> {
    if (this.join !== j || j.running) return;
    j.running = true;
    let failure: { err: unknown; step: 'subscribe' | 'watch'; path?: string } | undefined;
    try {
      const s = j.session;
      if (!j.ownTopic) {
        try {
          await s.subscribe(sessionTopic(s.id), (args) => this.onUpdate(args?.[0] as Update));
          j.ownTopic = true;
        } catch (err) {
          failure = { err, step: 'subscribe' };
        }
      }
      if (!failure && !j.announce) {
        // Any announcement means watches may be gone (`started`: an instance restarted;
        // `resync`: an instance of several left, taking its watches with it) or that Waymark is
        // registered again (`rejoined`), so a waiting step can be tried now.
        try {
          await s.subscribe(ANNOUNCE_TOPIC, (args) => this.onAnnounce(j, (args?.[0] as { event?: unknown } | undefined)?.event));
          j.announce = true;
        } catch (err) {
          failure = { err, step: 'subscribe' };
        }
      }
      if (!failure) {
        const todo = this.pending(s);
        const results = await Promise.all(todo.map((h) => this.establish(h, s).then(() => undefined, (err: unknown) => ({ h, err }))));
        for (const r of results) {
          if (!r) continue;
          if (this.join !== j) break;
          if (this.dropIfRefused(r.h, r.err)) continue;
          failure ??= { err: r.err, step: 'watch', path: r.h.path };
        }
      }
    } finally {
      j.running = false;
    }
    const asked = j.asked;
    j.asked = undefined;
    if (this.join !== j) return; // the session was lost meanwhile: the next session's join takes over
    if (failure) {
      // an announcement during the attempt (Waymark registered meanwhile) shortens the wait
      const retryInMs = Math.min(this.backoffMs(j.failures), asked === undefined ? Infinity : Math.max(0, Math.round(asked - performance.now())));
      j.failures += 1;
      if (this._state === 'open') this.setState('reconnecting');
      this.emit('error', new WaymarkClientError(
        `${failure.step === 'subscribe' ? 'subscribe' : `watch ${failure.path ?? ''}`} failed (attempt ${j.failures}), retrying in ${retryInMs} ms: ${errorText(failure.err)}`,
        uriOf(failure.err), failure.step, failure.path, retryInMs,
      ));
      this.schedule(j, retryInMs);
      return;
    }
    // watch() calls or announcements that came during this attempt
    if (this.pending(j.session).length > 0) {
      this.schedule(j, 0);
      return;
    }
    j.failures = 0;
    this.everOpen = true;
    this.setState('open');
    this.settleOpen?.resolve();
    const reasons = [...j.reasons];
    j.reasons.clear();
    for (const reason of reasons) this.emit('resync', { reason });
  }

  /** A watch refused for its own arguments is given up (retrying cannot help): true if so. */
  private dropIfRefused(h: Handle, err: unknown): boolean {
    const uri = uriOf(err);
    if (!uri || !REQUEST_ERRORS.includes(uri)) return false;
    this.forget(h);
    this.emit('error', new WaymarkClientError(`watch ${h.path} refused, not retried: ${errorText(err)}`, uri, 'watch', h.path));
    return true;
  }

  private forget(h: Handle): void {
    h.active = false;
    this.handles.delete(h);
    if (h.id) this.unbind(h, h.id);
  }

  private unbind(h: Handle, id: string): void {
    const set = this.byId.get(id);
    if (!set) return;
    set.delete(h);
    if (set.size === 0) this.byId.delete(id);
  }

  private onAnnounce(j: Join, event: unknown): void {
    if (this.join !== j) return;
    if (event !== 'rejoined') {
      // An instance restarted or left: whoever serves the watch now must hear of it. (It
      // refetches a watch it adopts, so no snapshot is needed unless this client lost a session.)
      j.reasons.add(event === 'resync' ? 'resync' : 'restart');
      for (const h of this.handles) if (h.active) h.stale = true;
    }
    if (!j.ownTopic || !j.announce || this.pending(j.session).length > 0) {
      // Spread the attempts of many browsers over a moment instead of one spike; this replaces a
      // longer back-off wait.
      this.schedule(j, Math.random() * (this.opts.rewatchJitterMs ?? 1000));
    }
  }

  /**
   * One Update from the own session topic. Pushed Updates are handed over in the order received,
   * never compared by `fetchedAt`: that is the wall clock of whichever instance fetched, which
   * steps (NTP, a resumed VM) and differs between instances, so comparing it dropped good
   * Updates for as long as a step or a skew lasted. The order of receipt is sound because:
   * - WAMP delivers the events of one publisher on one topic in the order published (WAMP spec,
   *   "Ordering Guarantees"), and a watch has one owner instance at a time (contract section 7);
   *   each bump's refetch starts after the bump, so the last Update received follows the last
   *   change bumped;
   * - a watch moves when its old owner left (a `resync` is announced only after the router saw it
   *   leave, so nothing it published can come after the new owner's Updates) or when a re-watch
   *   reached another instance: the new owner publishes its claim before its first Update (its
   *   catch-up refetch), and the old owner drops the watch when the claim reaches it. An old
   *   owner's Update could come after the new owner's only if it was published before the claim
   *   reached the old owner yet after the new owner's whole refetch, i.e. a fetch faster than one
   *   router hop. (`fetchedAt` never guarded that case either: it is taken when a fetch ends,
   *   not when it starts, and on another clock.)
   * The one race left is a call result's snapshot against the Updates received while the call
   * was in flight: see establish.
   */
  private onUpdate(update: Update): void {
    if (!update || typeof update.watch !== 'string') return;
    const handles = this.byId.get(update.watch);
    if (!handles) {
      // The result telling this id may still be on its way (Waymark registers a watch before it
      // fetches the snapshot, and a bump meanwhile publishes to it): kept until that result.
      if (this.calling > 0) {
        let kept = this.unclaimed.get(update.watch);
        if (!kept) {
          if (this.unclaimed.size >= MAX_UNCLAIMED_WATCHES) this.unclaimed.delete(this.unclaimed.keys().next().value as string);
          this.unclaimed.set(update.watch, (kept = []));
        }
        kept.push(update);
        if (kept.length > MAX_UNCLAIMED_PER_WATCH) kept.shift();
      }
      return;
    }
    for (const h of [...handles]) this.deliver(h, update);
  }

  private deliver(h: Handle, update: Update): void {
    if (!h.active || h.path !== update.path) return;
    h.received += 1;
    // 410 Gone: Waymark removed the watch; it is not re-watched after a reconnect either.
    if (update.ended) this.forget(h);
    h.callback(withJson(update));
  }

  /** Ask Waymark to watch `h` on `s`, with a snapshot when the watch has to catch up. */
  private async establish(h: Handle, s: autobahn.Session): Promise<void> {
    const catchUp = h.catchUp;
    const options = catchUp ? { ...h.options, snapshot: true } : h.options;
    // Taken now: an announcement during the call makes it stale again.
    h.stale = false;
    const receivedBefore = h.received;
    let result: WatchResult;
    this.calling += 1;
    try {
      result = await s.call<WatchResult>(PROC_WATCH, [h.path, options]);
    } catch (err) {
      h.stale = true;
      if (this.session === s) this.calling -= 1;
      if (this.calling === 0) this.unclaimed.clear();
      throw err;
    }
    if (this.session !== s) return;
    this.calling -= 1;
    const early = this.claim(result.watch);
    if (!h.active) return;
    if (h.id && h.id !== result.watch) this.unbind(h, h.id);
    h.id = result.watch;
    h.on = s;
    // Updates carry the path in Waymark's RFC 3986 normal form (`%c3%a9` -> `%C3%A9`, `%7E` -> `~`)
    if (typeof result.path === 'string') h.path = result.path;
    let bound = this.byId.get(result.watch);
    if (!bound) this.byId.set(result.watch, (bound = new Set()));
    bound.add(h);
    if (catchUp) h.catchUp = false;
    for (const u of early) this.deliver(h, u);
    // A snapshot is fetched while the call runs, so an Update received since the call was made
    // may be newer than it (its bump came after the snapshot's fetch began) and never older than
    // the last change bumped before: the Update wins, and the snapshot, which nothing would
    // correct, is not handed over. No clock is compared.
    if (result.snapshot && h.received === receivedBefore) this.deliver(h, result.snapshot);
  }

  /** Take the Updates kept for `id` (received before the result naming it), in the order received. */
  private claim(id: string): Update[] {
    const mine = this.unclaimed.get(id) ?? [];
    this.unclaimed.delete(id);
    if (this.calling === 0) this.unclaimed.clear();
    return mine;
  }

  /**
   * Watch a path; `callback` receives every Update of this watch (and the snapshot, if asked).
   * Rejects when Waymark refuses the request itself (`waymark.error.invalid_argument`,
   * `invalid_path`, `header_not_allowed`, `too_many_watches`). Any other failure (Waymark or
   * the router not ready, the connection lost) is retried like a re-watch: the watch is
   * returned, with `id` undefined until Waymark has accepted it.
   */
  async watch(path: string, options: WatchOptions, callback: (update: ClientUpdate) => void): Promise<ClientWatch> {
    await this.open();
    const h: Handle = { path, options: { ...options }, callback, received: 0, active: true, stale: false, catchUp: false };
    this.handles.add(h);
    const j = this.join;
    if (j && this._state === 'open' && !j.running) {
      const outcome = await Promise.race([this.establish(h, j.session).then(() => undefined, (err: unknown) => ({ err })), j.lost]);
      if (outcome !== undefined && outcome !== LOST) {
        const uri = uriOf(outcome.err);
        if (uri && REQUEST_ERRORS.includes(uri)) {
          this.forget(h);
          throw outcome.err;
        }
        // Waymark is not there right now: retried with the back-off like any re-watch.
        const retryInMs = this.backoffMs(j.failures);
        j.failures += 1;
        if (this.join === j) {
          this.setState('reconnecting');
          this.emit('error', new WaymarkClientError(`watch ${path} failed, retrying in ${retryInMs} ms: ${errorText(outcome.err)}`, uri, 'watch', path, retryInMs));
          this.schedule(j, retryInMs);
        }
      }
    } else if (j) {
      // joining: the attempt running now or the next one takes it along
      this.schedule(j, 0);
    }
    return {
      path,
      get id() { return h.id; },
      unwatch: async () => {
        if (!h.active) return;
        this.forget(h);
        const j = this.join;
        // another handle on the same path shares the server's watch: it ends with the last one
        if (j && h.id && !this.byId.has(h.id)) await Promise.race([j.session.call(PROC_UNWATCH, [h.id]), j.lost]);
      },
    };
  }

  /**
   * New credentials for all watches (also used for the re-watches after a reconnect). Without
   * a session, `{ updated: 0 }`: the re-watches of the next session carry them.
   */
  async refresh(options: { token?: string; headers?: Record<string, string> }): Promise<{ updated: number }> {
    await this.open();
    for (const h of this.handles) {
      h.options = { ...h.options, token: options.token, headers: options.headers };
      if (options.token === undefined) delete h.options.token;
      if (options.headers === undefined) delete h.options.headers;
      delete h.options.snapshot;
    }
    const j = this.join;
    if (!j) return { updated: 0 };
    const result = await Promise.race([j.session.call<{ updated: number }>(PROC_REFRESH, [options]), j.lost]);
    return result === LOST ? { updated: 0 } : result;
  }

  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      for (const h of this.handles) h.active = false;
      this.handles.clear();
      this.endJoin();
      if (!this.everOpen) this.settleOpen?.reject(new Error('closed before it opened'));
      if (!this.connection.isOpen) {
        // between two reconnect attempts: close() alone would leave autobahn's retry timer running
        (this.connection as unknown as { _autoreconnect_reset_timer?: () => void })._autoreconnect_reset_timer?.();
        try { this.connection.close(); } catch { /* already closed */ }
        this.setState('closed');
        resolve();
        return;
      }
      const prev = this.connection.onclose;
      this.connection.onclose = (reason, details) => {
        prev?.call(this.connection, reason, details);
        resolve();
        return true;
      };
      this.connection.close();
    });
    return this.closing;
  }
}

/** Connects and resolves once joined and listening; see WaymarkClient.open() for when it rejects. */
export async function connectWaymark(opts: ConnectOptions): Promise<WaymarkClient> {
  const client = new WaymarkClient(opts);
  await client.open();
  return client;
}
