import { randomUUID } from 'node:crypto';
import autobahn from 'autobahn';
import { AdminServer } from './admin.js';
import { RedisBumpSource, type BumpSource } from './bump-source.js';
import type { WaymarkConfig } from './config.js';
import { Dispatcher } from './dispatcher.js';
import { ConfigError, WaymarkError } from './errors.js';
import { UndiciFetcher, type Fetcher } from './fetcher.js';
import { silentLogger, type Logger } from './logger.js';
import { Metrics } from './metrics.js';
import { WampPublisher, type Publisher } from './publisher.js';
import type { Bump, ForwardHeaders, WatchResult } from './types.js';
import { authorize } from './authorizer.js';
import { SessionRateLimiter } from './rate-limiter.js';
import {
  ANNOUNCE_TOPIC, META_ON_LEAVE, PROC_AUTHORIZE, PROC_REFRESH, PROC_UNWATCH, PROC_WATCH, sessionTopic,
  WAMP_SUBPROTOCOLS,
} from './uris.js';
import { callerOf, parseCredentials, parseWatchArgs, resolveApiUrl } from './validation.js';
import { watchId, WatchRegistry } from './watch-registry.js';
import { Instances } from './instances.js';
import { RedisWatchIndex, type WatchIndex } from './watch-index.js';

export interface WaymarkOptions {
  logger?: Logger;
  /** seams for tests and embedding; the real implementations are built from the config */
  fetcher?: Fetcher;
  bumpSource?: BumpSource;
  publisher?: Publisher;
  /** what several instances share; the default is Redis at the config's URL */
  watchIndex?: WatchIndex;
}

type Status = 'idle' | 'starting' | 'running' | 'stopping' | 'stopped';

/**
 * The composition root: a WAMP component on the router that owns watches, consumes bumps and
 * pushes Updates. `start()` resolves once joined, registered and subscribed to Redis.
 */
export class Waymark {
  /** this process's instance id, as announced on `waymark.announce` */
  readonly instance = randomUUID();
  readonly registry: WatchRegistry;
  readonly metrics = new Metrics();
  private readonly logger: Logger;
  private readonly fetcher: Fetcher;
  private readonly bumpSource: BumpSource;
  private readonly dispatcher: Dispatcher;
  private readonly admin?: AdminServer;
  private readonly rateLimiter: SessionRateLimiter;
  private readonly instances: Instances;
  private connection?: autobahn.Connection;
  private session?: autobahn.Session;
  private registrations: autobahn.IRegistration[] = [];
  private redisSubscribed = false;
  private status: Status = 'idle';
  private starting?: Promise<void>;
  private stopping?: Promise<void>;

  constructor(readonly config: WaymarkConfig, opts: WaymarkOptions = {}) {
    this.logger = opts.logger ?? silentLogger();
    this.registry = new WatchRegistry(config.maxWatchesPerSession);
    this.rateLimiter = new SessionRateLimiter(config.rateLimit, config.rateBurst);
    this.fetcher = opts.fetcher ?? new UndiciFetcher({
      apiUrl: config.apiUrl,
      responseHeaders: config.responseHeaders,
      maxBodyBytes: config.maxBodyBytes,
      timeoutMs: config.fetchTimeoutMs,
      connections: config.fetchConcurrency,
    });
    this.bumpSource = opts.bumpSource ?? new RedisBumpSource({
      redisUrl: config.redisUrl,
      channel: config.bumpChannel,
      maxPathBytes: config.maxPathBytes,
      logger: this.logger.child({ module: 'bump-source' }),
      onState: (up) => this.setRedisState(up),
      onMalformed: () => this.metrics.bumpsMalformed.inc(),
    });
    this.dispatcher = new Dispatcher({
      registry: this.registry,
      fetcher: this.fetcher,
      publisher: opts.publisher ?? new WampPublisher(() => this.session),
      logger: this.logger.child({ module: 'dispatcher' }),
      concurrency: config.fetchConcurrency,
      pushUnchanged: config.pushUnchanged,
      metrics: this.metrics,
    });
    const index = opts.watchIndex ?? new RedisWatchIndex({
      redisUrl: config.redisUrl,
      // instances that share a bump channel are one service; their keys live under its name
      prefix: config.bumpChannel,
      ttlSeconds: INDEX_TTL_SECONDS,
    });
    this.instances = new Instances({
      instance: this.instance,
      service: config.bumpChannel,
      index,
      registry: this.registry,
      maxPerSession: config.maxWatchesPerSession,
      rate: { perSecond: config.rateLimit, burst: config.rateBurst },
      metrics: this.metrics,
      logger: this.logger.child({ module: 'instances' }),
      session: () => this.session,
      applyRefresh: (session, headers) => this.applyRefresh(session, headers),
    });
    if (config.adminPort !== 0) {
      this.admin = new AdminServer(config.adminHost, config.adminPort, {
        ready: () => this.ready,
        metrics: () => {
          this.metrics.watches.set(this.registry.size);
          this.metrics.sessions.set(this.registry.sessionCount);
          this.metrics.queueDepth.set(this.dispatcher.queued);
          return this.metrics.registry.metrics();
        },
      });
    }
  }

  /** Joined to the router and subscribed to the bump channel. */
  get ready(): boolean {
    return this.status === 'running' && !!this.session?.isOpen && this.redisSubscribed;
  }

  /** The WAMP session id of this component while joined. */
  get sessionId(): number | undefined {
    return this.session?.id;
  }

  get adminAddress() {
    return this.admin?.address;
  }

  start(): Promise<void> {
    this.starting ??= this.doStart();
    return this.starting;
  }

  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStart(): Promise<void> {
    this.status = 'starting';
    try {
      await this.admin?.start();
    } catch (err) {
      throw new ConfigError('WAYMARK_ADMIN_PORT', `cannot listen on ${this.config.adminHost}:${this.config.adminPort} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    this.logger.info('connecting to redis', { url: redactUrl(this.config.redisUrl), channel: this.config.bumpChannel });
    await this.bumpSource.start((bump) => this.onBump(bump));
    this.setRedisState(true);
    await this.instances.start((INDEX_TTL_SECONDS * 1000) / 3);
    this.logger.info('joining router', { url: this.config.routerUrl, realm: this.config.realm, authid: this.config.routerAuthid ?? '(anonymous)' });
    await this.connect();
    this.status = 'running';
    this.logger.info('waymark running', { api: this.config.apiUrl });
  }

  private connect(): Promise<void> {
    const { routerUrl, realm, routerAuthid, routerTicket } = this.config;
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const connection = new autobahn.Connection({
        url: routerUrl,
        realm,
        protocols: WAMP_SUBPROTOCOLS,
        ...(routerAuthid
          ? { authmethods: ['ticket'], authid: routerAuthid, onchallenge: () => routerTicket ?? '' }
          : { authmethods: ['anonymous'] }),
        // autobahn prints every error a procedure throws; contract errors are the client's, not ours.
        on_user_error: (err: unknown, context?: string) => {
          if (err instanceof autobahn.Error && err.error.startsWith('waymark.error.')) return;
          this.logger.error('unexpected error in a WAMP handler', { context, error: errorText(err) });
        },
        max_retries: -1,
        initial_retry_delay: 0.5,
        max_retry_delay: 10,
        retry_delay_growth: 1.5,
      });
      this.connection = connection;
      connection.onopen = (session) => {
        this.session = session;
        this.metrics.routerConnected.set(1);
        this.setup(session).then(() => {
          this.logger.info('joined router', { session: session.id, instance: this.instance });
          if (!settled) { settled = true; resolve(); }
        }, (err: unknown) => {
          const message = errorText(err);
          this.logger.error('router setup failed', { error: message });
          if (!settled) { settled = true; reject(new Error(`router setup failed: ${message}`)); }
        });
      };
      connection.onclose = (reason, details) => {
        this.session = undefined;
        this.registrations = [];
        this.metrics.routerConnected.set(0);
        const d = details as { reason?: string; message?: string; will_retry?: boolean } | undefined;
        if (this.status === 'stopping' || this.status === 'stopped') return true;
        if (!settled && d?.reason && /not_authorized|authentication_failed|no_such_realm|no_such_role/.test(d.reason)) {
          settled = true;
          reject(new Error(`router refused the session: ${d.reason}${d.message ? ` (${d.message})` : ''}`));
          return true;
        }
        this.logger.warn('router connection lost', { reason, detail: d?.reason, willRetry: d?.will_retry });
        return false;
      };
      connection.open();
    });
  }

  /** Register the procedures and subscribe to meta events; runs again after every reconnect. */
  private async setup(session: autobahn.Session): Promise<void> {
    const shared = { invoke: 'roundrobin' } as autobahn.IRegisterOptions;
    this.registrations = await Promise.all([
      session.register(PROC_WATCH, (args, kwargs, details) => this.rpc(details, (caller) => this.watch(caller, args, kwargs)), shared),
      session.register(PROC_UNWATCH, (args, kwargs, details) => this.rpc(details, (caller) => this.unwatch(caller, args, kwargs)), shared),
      session.register(PROC_REFRESH, (args, kwargs, details) => this.rpc(details, (caller) => this.refresh(caller, args, kwargs)), shared),
      session.register(PROC_AUTHORIZE, (args) => {
        const [details, uri, action, options] = (args ?? []) as Parameters<typeof authorize>;
        return authorize(details, uri, action, options);
      }, shared),
    ]);
    await session.subscribe(META_ON_LEAVE, (args) => this.onSessionLeft(args?.[0]));
    await this.instances.join(session);
    // Tell browsers an instance (re)joined: clients re-watch, so nothing a restart lost stays lost.
    await session.publish(ANNOUNCE_TOPIC, [{ event: 'started', instance: this.instance }], {}, { acknowledge: true });
  }

  /** Every client procedure: identify the caller, apply its rate limit, map errors to their URI. */
  private async rpc<T>(details: unknown, fn: (caller: number) => Promise<T> | T): Promise<T> {
    try {
      const caller = callerOf(details);
      if (!(await this.instances.allowCall(caller, () => this.rateLimiter.take(caller)))) {
        throw new WaymarkError('rate_limited', `more than ${this.config.rateLimit} calls per second (burst ${this.config.rateBurst}); slow down`);
      }
      return await fn(caller);
    } catch (err) {
      if (err instanceof WaymarkError) throw new autobahn.Error(err.uri, [err.message]);
      this.logger.error('procedure failed', { error: errorText(err) });
      throw err;
    }
  }

  private async watch(session: number, args: unknown[] | undefined, kwargs: unknown): Promise<WatchResult> {
    const { path, headers, snapshot } = parseWatchArgs(args, kwargs as Record<string, unknown>, this.config);
    resolveApiUrl(this.config.apiUrl, path);
    // Ownership and the limit are shared by all instances (contract section 7).
    const id = watchId(session, path);
    const { adopted } = await this.instances.admit(session, id);
    let accepted = false;
    let upserted: ReturnType<WatchRegistry['upsert']>;
    try {
      upserted = this.registry.upsert(session, path, headers);
      accepted = true;
    } finally {
      // publishes the claim (or, on a throw, only forgets the admit)
      this.instances.settle(session, id, accepted);
    }
    const { watch, created, credentialsChanged, resumed } = upserted;
    this.logger.info(created ? 'watch added' : 'watch renewed', {
      session, watch: watch.id, path, cred: watch.credKey, ...(credentialsChanged ? { credentialsChanged, resumed } : {}),
      ...(adopted ? { adopted } : {}),
    });
    const result: WatchResult = { watch: watch.id, path, topic: sessionTopic(session) };
    if (snapshot) result.snapshot = await this.dispatcher.snapshot(watch);
    // A resumed watch, or one adopted from another instance, may have missed changes: catch up once.
    else if (resumed || adopted) void this.dispatcher.refetch(watch, 'refresh');
    return result;
  }

  /** `waymark.refresh({token?, headers?})`: new credentials for all the caller's watches. */
  private async refresh(session: number, args: unknown[] | undefined, kwargs: unknown): Promise<{ updated: number }> {
    const positional = args?.[0];
    if (positional !== undefined && positional !== null && (typeof positional !== 'object' || Array.isArray(positional))) {
      throw new WaymarkError('invalid_argument', 'refresh takes an object: { token?, headers? }');
    }
    const options = { ...(positional as Record<string, unknown> | undefined), ...(kwargs as Record<string, unknown> | undefined) };
    const headers = parseCredentials(options, this.config);
    const local = this.applyRefresh(session, headers);
    // The other instances apply the same credentials to the watches they own.
    return { updated: await this.instances.refresh(session, headers, local) };
  }

  /** New credentials for this instance's watches of a session; returns how many it holds. */
  private applyRefresh(session: number, headers: ForwardHeaders): number {
    const watches = this.registry.forSession(session);
    let resumed = 0;
    for (const watch of watches) {
      if (this.registry.replaceCredentials(watch, headers)) {
        resumed += 1;
        void this.dispatcher.refetch(watch, 'refresh');
      }
    }
    if (watches.length > 0) this.logger.info('credentials refreshed', { session, updated: watches.length, resumed });
    return watches.length;
  }

  private async unwatch(session: number, args: unknown[] | undefined, kwargs: unknown): Promise<{ removed: number }> {
    const target = args?.[0] ?? (kwargs as { watch?: unknown } | undefined)?.watch;
    if (typeof target !== 'string' || target.length === 0) {
      throw new WaymarkError('invalid_argument', 'unwatch needs a watch id or a path');
    }
    const local = this.registry.remove(session, target);
    const id = target.startsWith('/') ? watchId(session, target) : target;
    // The watch may live on another instance: the shared index knows whether it existed.
    const removed = await this.instances.unwatch(session, id, local);
    this.logger.info('unwatch', { session, watch: id, removed });
    return { removed };
  }

  private onSessionLeft(id: unknown): void {
    if (typeof id !== 'number') return;
    const dropped = this.registry.dropSession(id);
    this.rateLimiter.forget(id);
    void this.instances.sessionLeft(id);
    if (dropped > 0) this.logger.info('session left, watches dropped', { session: id, dropped });
  }

  private onBump(bump: Bump): void {
    this.metrics.bumpsReceived.inc();
    if (this.status === 'stopping' || this.status === 'stopped') return;
    this.logger.debug('bump', { bump: bump.id, paths: bump.paths.length });
    void this.dispatcher.dispatch(bump);
  }

  private setRedisState(up: boolean): void {
    this.redisSubscribed = up;
    this.metrics.redisConnected.set(up ? 1 : 0);
  }

  /**
   * Reverse order of start, every step attempted even if one fails: unregister (new watches go
   * elsewhere), stop bumps, drain in-flight fetches and publishes up to the deadline, leave the
   * realm, close the HTTP pool and the admin port.
   */
  private async doStop(): Promise<void> {
    await this.starting?.catch(() => undefined);
    this.status = 'stopping';
    const steps: Array<[string, () => Promise<unknown>]> = [
      ['unregister', async () => {
        const s = this.session;
        if (s?.isOpen) await Promise.allSettled(this.registrations.map((r) => s.unregister(r)));
      }],
      ['bump source', () => this.bumpSource.stop()],
      ['drain', async () => {
        const left = await this.dispatcher.drain(this.config.shutdownTimeoutMs);
        if (left > 0) this.logger.warn('shutdown deadline passed with work in flight', { left });
      }],
      ['leave router', async () => {
        const c = this.connection;
        if (c?.isOpen) c.close('wamp.close.normal', 'waymark stopping');
        else if (c) c.close();
      }],
      ['fetcher', () => this.fetcher.close()],
      ['watch index', () => this.instances.stop()],
      ['admin', async () => this.admin?.stop()],
    ];
    for (const [name, step] of steps) {
      try {
        await step();
      } catch (err) {
        this.logger.warn('stop step failed', { step: name, error: errorText(err) });
      }
    }
    this.status = 'stopped';
    this.logger.info('waymark stopped');
  }
}

/** Seconds a session's entries stay in the shared index without a touch from their owner. */
const INDEX_TTL_SECONDS = 86_400;

function errorText(err: unknown): string {
  if (err instanceof autobahn.Error) return `${err.error}${err.args?.[0] ? `: ${String(err.args[0])}` : ''}`;
  return err instanceof Error ? err.message : String(err);
}

function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(invalid url)';
  }
}

export function createWaymark(config: WaymarkConfig, opts: WaymarkOptions = {}): Waymark {
  return new Waymark(config, opts);
}
