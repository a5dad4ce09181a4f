import autobahn from 'autobahn';
import type { Update, WatchResult } from '../protocol/types.js';
import { ANNOUNCE_TOPIC, PROC_REFRESH, PROC_UNWATCH, PROC_WATCH, sessionTopic, WAMP_SUBPROTOCOLS } from '../protocol/uris.js';

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

export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface ConnectOptions {
  url: string;
  /** @default 'realm1' */
  realm?: string;
  /** longest wait between reconnect attempts, in seconds. @default 10 */
  maxRetryDelay?: number;
  /** upper bound of the random delay before re-watching after a Waymark restart, ms. @default 1000 */
  rewatchJitterMs?: number;
}

type Listener<T> = (value: T) => void;

export interface ClientWatch {
  readonly path: string;
  /** the current watch id (it changes when a reconnect gives a new session) */
  readonly id: string | undefined;
  unwatch(): Promise<void>;
}

interface Handle {
  path: string;
  options: WatchOptions;
  callback: (update: ClientUpdate) => void;
  id?: string;
  /** fetchedAt of the newest Update handed to the callback */
  newest: number;
  active: boolean;
}

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

/**
 * Keeps every watch alive across reconnects (a new session id means new watches) and Waymark
 * restarts (announced on `waymark.announce`), hands each callback only its own watch's Updates,
 * and drops Updates older than the newest one it has seen.
 */
export class WaymarkClient {
  private readonly handles = new Set<Handle>();
  private readonly byId = new Map<string, Handle>();
  private readonly listeners = new Map<string, Set<Listener<never>>>();
  private session?: autobahn.Session;
  private opened?: Promise<void>;
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

  /** `state` (ConnectionState), `error` (Error) and `resync` (the watches were re-established). */
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

  /** Resolves on the first join; rejects if the router cannot be reached at all. */
  open(): Promise<void> {
    this.opened ??= new Promise<void>((resolve, reject) => {
      let first = true;
      this.connection.onopen = (session) => {
        this.session = session;
        void this.onJoin(session, first ? null : 'reconnect').then(() => {
          this.setState('open');
          if (first) { first = false; resolve(); }
        }, (err: Error) => {
          this.emit('error', err);
          if (first) { first = false; reject(err); }
        });
      };
      this.connection.onclose = (reason, details) => {
        this.session = undefined;
        this.byId.clear();
        if (this.closing) {
          this.setState('closed');
          return true;
        }
        const willRetry = (details as { will_retry?: boolean } | undefined)?.will_retry !== false;
        if (first && reason === 'unreachable' && !willRetry) {
          first = false;
          reject(new Error(`cannot reach ${this.opts.url}`));
        }
        this.setState(willRetry ? 'reconnecting' : 'closed');
        return false;
      };
      this.connection.open();
    });
    return this.opened;
  }

  private async onJoin(session: autobahn.Session, reason: string | null): Promise<void> {
    await session.subscribe(sessionTopic(session.id), (args) => this.onUpdate(args?.[0] as Update));
    // Any announcement means watches may be gone: `started` (an instance (re)joined) or `resync`
    // (an instance of several left, taking its watches with it).
    await session.subscribe(ANNOUNCE_TOPIC, (args) => this.onRestart((args?.[0] as { event?: unknown } | undefined)?.event));
    if (reason) await this.rewatchAll(reason);
  }

  private onRestart(event: unknown): void {
    // Spread the re-watches of many browsers over a moment instead of one spike.
    const delay = Math.random() * (this.opts.rewatchJitterMs ?? 1000);
    setTimeout(() => { void this.rewatchAll(event === 'resync' ? 'resync' : 'restart'); }, delay);
  }

  private async rewatchAll(reason: string): Promise<void> {
    // Keep the ids while re-watching: on the same session they stay the same, and an Update that
    // arrives before the call returns is the change the re-watch is there to catch. (A new
    // session cleared them on close.)
    // After our own reconnect the Updates published meanwhile went to the old session: a
    // snapshot brings each watch up to date. (After a restart or resync the instance taking the
    // watch refetches it, so no snapshot is needed.)
    const catchUp = reason === 'reconnect';
    await Promise.all([...this.handles].filter((h) => h.active).map((h) => this.establish(h, catchUp).catch((err: Error) => this.emit('error', err))));
    this.emit('resync', { reason });
  }

  private onUpdate(update: Update): void {
    if (!update || typeof update.watch !== 'string') return;
    const h = this.byId.get(update.watch);
    if (!h || !h.active || h.path !== update.path) return;
    if (update.fetchedAt < h.newest) return;
    h.newest = update.fetchedAt;
    // 410 Gone: Waymark removed the watch; it is not re-watched after a reconnect either.
    if (update.ended) this.forget(h);
    h.callback(withJson(update));
  }

  private forget(h: Handle): void {
    h.active = false;
    this.handles.delete(h);
    if (h.id && this.byId.get(h.id) === h) this.byId.delete(h.id);
  }

  /** `catchUp`: ask for a snapshot this once, for what changed while this client could not hear. */
  private async establish(h: Handle, catchUp = false): Promise<void> {
    const session = this.session;
    if (!session) return;
    const options = catchUp ? { ...h.options, snapshot: true } : h.options;
    const result = await session.call<WatchResult>(PROC_WATCH, [h.path, options]);
    if (!h.active) return;
    if (h.id && h.id !== result.watch && this.byId.get(h.id) === h) this.byId.delete(h.id);
    h.id = result.watch;
    this.byId.set(result.watch, h);
    if (result.snapshot) this.onUpdate(result.snapshot);
  }

  /** Watch a path; `callback` receives every Update of this watch (and the snapshot, if asked). */
  async watch(path: string, options: WatchOptions, callback: (update: ClientUpdate) => void): Promise<ClientWatch> {
    await this.open();
    const h: Handle = { path, options: { ...options }, callback, newest: 0, active: true };
    this.handles.add(h);
    try {
      await this.establish(h);
    } catch (err) {
      this.handles.delete(h);
      h.active = false;
      throw err;
    }
    return {
      path,
      get id() { return h.id; },
      unwatch: async () => {
        if (!h.active) return;
        h.active = false;
        this.handles.delete(h);
        if (h.id) this.byId.delete(h.id);
        if (this.session && h.id) await this.session.call(PROC_UNWATCH, [h.id]);
      },
    };
  }

  /** New credentials for all watches (also used for the re-watches after a reconnect). */
  async refresh(options: { token?: string; headers?: Record<string, string> }): Promise<{ updated: number }> {
    await this.open();
    for (const h of this.handles) {
      h.options = { ...h.options, token: options.token, headers: options.headers };
      if (options.token === undefined) delete h.options.token;
      if (options.headers === undefined) delete h.options.headers;
      delete h.options.snapshot;
    }
    return this.session!.call<{ updated: number }>(PROC_REFRESH, [options]);
  }

  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      for (const h of this.handles) h.active = false;
      this.handles.clear();
      if (!this.connection.isOpen) {
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

export async function connectWaymark(opts: ConnectOptions): Promise<WaymarkClient> {
  const client = new WaymarkClient(opts);
  await client.open();
  return client;
}
