import { randomUUID } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import autobahn from 'autobahn';
import { AdminServer } from '../ops/admin.js';
import { BumpEndpoint } from '../bumps/bump-endpoint.js';
import { bumperOptions } from '../bumps/bumper.js';
import { RedisBumpSource, RedisStreamBumpSource, type BumpSource, type RedisBumpSourceOptions } from '../bumps/bump-source.js';
import { CircuitBreakerFetcher } from '../engine/circuit-breaker.js';
import { redisTarget, type WaymarkConfig } from '../protocol/config.js';
import { redisMode } from '../support/redis.js';
import { waitAtMost, withDeadline } from '../support/deadline.js';
import { Dispatcher } from '../engine/dispatcher.js';
import { Revalidator } from '../engine/revalidator.js';
import { ConfigError, WaymarkError } from '../protocol/errors.js';
import { UndiciFetcher, type Fetcher } from '../engine/fetcher.js';
import { redactUrl, silentLogger, type Logger } from '../support/logger.js';
import { Metrics } from '../support/metrics.js';
import { UpdateJsonSerializer, WampPublisher, type Publisher } from '../engine/publisher.js';
import type { Bump, ForwardHeaders, WatchResult } from '../protocol/types.js';
import type { Watch } from '../engine/watch-registry.js';
import { authorize } from './authorizer.js';
import { SessionRateLimiter } from './rate-limiter.js';
import {
  ANNOUNCE_TOPIC, META_ON_LEAVE, META_SESSION_LIST, PROC_AUTHORIZE, PROC_REFRESH, PROC_UNWATCH, PROC_WATCH, sessionTopic,
  WAMP_SUBPROTOCOLS,
} from '../protocol/uris.js';
import { callerOf, parseCredentials, parseWatchArgs, resolveApiUrl, validatePath } from '../protocol/validation.js';
import { watchId, WatchRegistry } from '../engine/watch-registry.js';
import { Instances } from '../cluster/instances.js';
import { RedisWatchIndex, type WatchIndex } from '../cluster/watch-index.js';

export interface WaymarkOptions {
  logger?: Logger;
  /** seams for tests and embedding; the real implementations are built from the config */
  fetcher?: Fetcher;
  bumpSource?: BumpSource;
  publisher?: Publisher;
  /** what several instances share; the default is Redis at the config's URL */
  watchIndex?: WatchIndex;
}

/** Time kept for publishing a result after its fetch, when planning a drain's deadline. */
const PUBLISH_ALLOWANCE_MS = 500;

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
  private readonly revalidator: Revalidator;
  private readonly admin?: AdminServer;
  private readonly bumpEndpoint?: BumpEndpoint;
  private readonly rateLimiter: SessionRateLimiter;
  private readonly wampPublisher?: WampPublisher;
  /** the router connection's socket, read for backpressure on publishes */
  private routerSocket?: Socket;
  private readonly instances: Instances;
  private connection?: autobahn.Connection;
  private session?: autobahn.Session;
  private registrations: autobahn.IRegistration[] = [];
  private redisSubscribed = false;
  private status: Status = 'idle';
  private starting?: Promise<void>;
  private stopping?: Promise<void>;
  /** set by stop(): a start still waiting for Redis or the router gives up */
  private stopRequested = false;
  /** WAMP sessions joined so far; every one after the first is a rejoin */
  private joins = 0;
  /** settles a start() that stop() gave up on */
  private cancelJoin?: () => void;
  /** called when the router connection closes, for stop() to wait for its GOODBYE */
  private whenClosed?: () => void;
  /**
   * Sessions with a client call in flight, and whether they left meanwhile: a call's effect that
   * lands after an await (the shared index, Redis) must not outlive a leave handled during it.
   */
  private readonly inFlight = new Map<number, { calls: number; left: boolean }>();

  constructor(readonly config: WaymarkConfig, opts: WaymarkOptions = {}) {
    this.logger = opts.logger ?? silentLogger();
    this.registry = new WatchRegistry(config.maxWatchesPerSession);
    this.rateLimiter = new SessionRateLimiter(config.rateLimit, config.rateBurst);
    const http = opts.fetcher ?? new UndiciFetcher({
      apiUrl: config.apiUrl,
      responseHeaders: config.responseHeaders,
      maxBodyBytes: config.maxBodyBytes,
      timeoutMs: config.fetchTimeoutMs,
      connections: config.fetchConcurrency,
      tagHeaders: config.tagHeaders,
      maxTags: config.maxTagsPerResponse,
    });
    // The breaker sits on the Fetcher seam, so injected fetchers get it too. Every path is
    // fetched from the one API origin, so there is one circuit.
    const apiOrigin = new URL(config.apiUrl).origin;
    this.fetcher = config.breakerFailures > 0
      ? new CircuitBreakerFetcher(http, {
        failures: config.breakerFailures,
        // one tenant's failing paths are not an outage: it takes two credentials' failures
        minCredentials: 2,
        // and only on paths that answered before: a session's own paths that never answer,
        // with as many tokens as it likes, cannot open it for everyone
        answeredPathsOnly: true,
        cooldownMs: config.breakerCooldownMs,
        origin: () => apiOrigin,
        logger: this.logger.child({ module: 'breaker' }),
        onState: (origin, state) => {
          this.metrics.breakerState.set({ origin }, state === 'closed' ? 0 : state === 'open' ? 1 : 2);
          if (state === 'closed') void this.dispatcher.refetchFailed('recovered');
        },
        onHalfOpen: () => this.dispatcher.probeFailed('recovered'),
        onRejected: () => this.metrics.breakerRejected.inc(),
      })
      : http;
    const source: RedisBumpSourceOptions = {
      ...redisTarget(config),
      channel: config.bumpChannel,
      maxPathBytes: config.maxPathBytes,
      logger: this.logger.child({ module: 'bump-source' }),
      reconnectMaxMs: config.redisReconnectMaxMs,
      probeMs: config.redisProbeMs,
      onState: (up) => this.setRedisState(up),
      onResync: (reason) => this.resync(reason),
      onReconnect: () => this.metrics.redisReconnects.inc(),
      onMalformed: () => this.metrics.bumpsMalformed.inc(),
    };
    this.bumpSource = opts.bumpSource ?? (config.bumpStream
      ? new RedisStreamBumpSource({ ...source, stream: config.bumpStream, reader: config.bumpStreamReader })
      : new RedisBumpSource(source));
    if (!opts.publisher) this.wampPublisher = new WampPublisher(() => this.session, () => this.routerSocket);
    const publisher = this.wampPublisher;
    if (publisher) this.metrics.publishBacklog = () => ({ inFlight: publisher.inFlight, waiting: publisher.waiting });
    this.dispatcher = new Dispatcher({
      registry: this.registry,
      fetcher: this.fetcher,
      publisher: opts.publisher ?? this.wampPublisher!,
      logger: this.logger.child({ module: 'dispatcher' }),
      concurrency: config.fetchConcurrency,
      pushUnchanged: config.pushUnchanged,
      sharePublic: config.sharePublic,
      metrics: this.metrics,
      onEnded: (watches) => this.ended(watches),
    });
    this.revalidator = new Revalidator({ onDue: (path, credKey, periodMs) => this.dispatcher.revalidate(path, credKey, periodMs) });
    this.registry.observe(this.revalidator);
    if (config.bumpSecret) {
      this.bumpEndpoint = new BumpEndpoint({
        secret: config.bumpSecret,
        bumper: bumperOptions(config),
        maxPathBytes: config.maxPathBytes,
        logger: this.logger.child({ module: 'bump-endpoint' }),
        onAnswer: (status) => this.metrics.bumpRequests.inc({ status: String(status) }),
      });
    }
    const index = opts.watchIndex ?? new RedisWatchIndex({
      ...redisTarget(config),
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
        bump: this.bumpEndpoint?.handle,
        ready: () => this.ready,
        metrics: () => {
          this.metrics.watches.set(this.registry.size);
          this.metrics.sessions.set(this.registry.sessionCount);
          this.metrics.queueDepth.set(this.dispatcher.queued);
          this.metrics.revalidatingGroups.set(this.revalidator.size);
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
      throw new ConfigError('WAYMARK_ADMIN_PORT', `cannot listen on ${this.config.adminHost}:${this.config.adminPort} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); set WAYMARK_ADMIN_PORT to a free port, or 0 to turn the admin port off`);
    }
    this.logger.info('connecting to redis', {
      mode: redisMode(this.config),
      ...(this.config.redisClusterNodes ? { nodes: this.config.redisClusterNodes.join(',') } : {}),
      ...(this.config.redisSentinels ? { sentinels: this.config.redisSentinels.join(','), name: this.config.redisSentinelName } : {}),
      url: redactUrl(this.config.redisUrl), ...(this.config.bumpStream ? { stream: this.config.bumpStream } : { channel: this.config.bumpChannel }),
    });
    await this.bumpSource.start((bump) => this.onBump(bump));
    this.setRedisState(true);
    await this.instances.start((INDEX_TTL_SECONDS * 1000) / 3);
    if (this.stopRequested) return;
    this.logger.info('joining router', { url: this.config.routerUrl, realm: this.config.realm, authid: this.config.routerAuthid ?? '(anonymous)' });
    await this.connect();
    if (this.stopRequested) return;
    this.status = 'running';
    this.logger.info('waymark running', { api: this.config.apiUrl });
  }

  private connect(): Promise<void> {
    const { routerUrl, realm, routerAuthid, routerTicket, routerPingMs } = this.config;
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      this.cancelJoin = () => { if (!settled) { settled = true; resolve(); } };
      const connection = new autobahn.Connection({
        url: routerUrl,
        realm,
        protocols: WAMP_SUBPROTOCOLS,
        // autobahn pings a connection that has been quiet for an interval and drops it when the
        // pong has not come by the next tick, so a router that went silent without closing
        // (half-open TCP, a blackholed network) is left after two to three intervals and
        // rejoined. (autobahn 22.11.1 reads `autoping_timeout` but, in Node, never uses it: the
        // next interval tick is the timeout.) The agent bounds the opening handshake, which
        // autobahn leaves unbounded: a reconnect into such a network would otherwise wait forever.
        transports: [{
          type: 'websocket',
          url: routerUrl,
          autoping_interval: routerPingMs / 1000,
          // autobahn creates one transport at a time: the newest socket is the joined session's
          agent: handshakeAgent(routerUrl, 2 * routerPingMs, (socket) => { this.routerSocket = socket; }),
          serializers: [new UpdateJsonSerializer()],
        } as autobahn.ITransportDefinition],
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
      closeEachTransportOnce(connection);
      this.connection = connection;
      let attempt = 0;
      connection.onopen = (session) => {
        attempt = 0;
        if (this.stopRequested) {
          // a reconnect timer autobahn kept after close(): this session must not serve
          connection.close('wamp.close.normal', 'waymark stopping');
          return;
        }
        this.session = session;
        this.metrics.routerConnected.set(1);
        this.metrics.routerJoins.inc();
        const rejoin = this.joins++ > 0;
        this.setup(session, rejoin).then(() => {
          if (this.session !== session) return; // lost again meanwhile: the next join sets up
          this.logger.info(rejoin ? 'rejoined router' : 'joined router', { session: session.id, instance: this.instance });
          if (!settled) { settled = true; resolve(); }
          if (rejoin) void this.reconcile(session);
        }, (err: unknown) => {
          const message = errorText(err);
          this.logger.error('router setup failed', { error: message });
          if (!settled) { settled = true; reject(new Error(`router setup failed: ${message}`)); return; }
          // Joined but not serving: drop the transport (not the connection, which would stop
          // retrying) so autobahn tries a fresh session.
          if (this.session === session) (connection as unknown as { _transport?: { close(): void } })._transport?.close();
        });
      };
      connection.onclose = (reason, details) => {
        const lost = this.session;
        this.session = undefined;
        this.registrations = [];
        this.metrics.routerConnected.set(0);
        // autobahn never settles what the closed session still awaits: fail its publishes now.
        if (lost) this.wampPublisher?.connectionLost(lost);
        this.whenClosed?.();
        const d = details as { reason?: string; message?: string; will_retry?: boolean; retry_delay?: number } | undefined;
        if (this.stopRequested) {
          this.cancelJoin?.();
          return true;
        }
        if (!settled && d?.reason && /not_authorized|authentication_failed|no_such_realm|no_such_role/.test(d.reason)) {
          settled = true;
          reject(new Error(`router refused the session: ${d.reason}${d.message ? ` (${d.message})` : ''}`));
          return true;
        }
        attempt += 1;
        const retryInSeconds = d?.retry_delay == null ? undefined : Math.round(d.retry_delay * 1000) / 1000;
        if (lost) this.logger.warn('router connection lost', { reason, detail: d?.reason, willRetry: d?.will_retry, retryInSeconds });
        else this.logger.warn('router not reachable', { reason, detail: d?.reason, attempt, retryInSeconds });
        return false;
      };
      connection.open();
    });
  }

  /**
   * Register the procedures and subscribe to meta events; runs again on every rejoin, since the
   * router forgot both with the old session. Every join is announced as soon as the
   * registrations are in place: `started` (a new process: browsers re-watch) or `rejoined` (this
   * instance still holds every watch; only browsers still waiting to join retry now).
   */
  private async setup(session: autobahn.Session, rejoin: boolean): Promise<void> {
    const shared = { invoke: 'roundrobin' } as autobahn.IRegisterOptions;
    const registrations = await Promise.all([
      session.register(PROC_WATCH, (args, kwargs, details) => this.rpc(details, (caller) => this.watch(caller, args, kwargs)), shared),
      session.register(PROC_UNWATCH, (args, kwargs, details) => this.rpc(details, (caller) => this.unwatch(caller, args, kwargs)), shared),
      session.register(PROC_REFRESH, (args, kwargs, details) => this.rpc(details, (caller) => this.refresh(caller, args, kwargs)), shared),
      session.register(PROC_AUTHORIZE, (args) => {
        const [details, uri, action, options] = (args ?? []) as Parameters<typeof authorize>;
        return authorize(details, uri, action, options);
      }, shared),
    ]);
    if (this.session === session) this.registrations = registrations;
    // Until now Crossbar refused the browser role everything (no authorizer), and browsers
    // back before us keep retrying with a back-off: those already listening retry at once.
    await session.publish(ANNOUNCE_TOPIC, [{ event: rejoin ? 'rejoined' : 'started', instance: this.instance }], {}, { acknowledge: true });
    await session.subscribe(META_ON_LEAVE, (args) => this.onSessionLeft(args?.[0]));
    // Every join: peers learn this instance's session, and it drops watches others took meanwhile.
    await this.instances.join(session);
  }

  /**
   * After a rejoin. The router kept the browsers' sessions, so their watches stay valid, except
   * those of sessions that left while this instance was away: nobody heard their on_leave. Ask
   * the router which sessions exist, drop the watches of the others, then refetch every watch
   * once, so a change bumped while Updates could not be published still arrives (only what
   * differs from the last Update a session received is pushed).
   */
  private async reconcile(session: autobahn.Session): Promise<void> {
    // Taken before asking: a session that watched after the answer was made is alive anyway.
    const known = this.registry.sessions();
    let droppedSessions = 0;
    let dropped = 0;
    try {
      // bounded: a call in flight when the link drops again is never answered by autobahn
      const ids: unknown = await withDeadline(Promise.resolve(session.call(META_SESSION_LIST)), 10_000, 'no answer within 10 s');
      if (!Array.isArray(ids)) throw new Error(`unexpected answer from ${META_SESSION_LIST}`);
      const alive = new Set(ids);
      for (const id of known) {
        if (alive.has(id)) continue;
        droppedSessions += 1;
        dropped += this.forgetSession(id);
      }
      this.metrics.sessionsReconciled.inc(droppedSessions);
    } catch (err) {
      this.logger.warn('cannot list the router\'s sessions after the rejoin; keeping every watch', { error: errorText(err) });
    }
    if (this.session !== session || this.stopRequested) return;
    this.logger.info('resync after rejoin', { droppedSessions, dropped, watches: this.registry.size });
    void this.dispatcher.refetchAll('resync');
  }

  /** Every client procedure: identify the caller, apply its rate limit, map errors to their URI. */
  private async rpc<T>(details: unknown, fn: (caller: number) => Promise<T> | T): Promise<T> {
    let caller: number | undefined;
    try {
      caller = callerOf(details);
      // counted before the first await: the router sends a session's calls before its leave
      const call = this.inFlight.get(caller) ?? { calls: 0, left: false };
      call.calls += 1;
      this.inFlight.set(caller, call);
      if (!(await this.instances.allowCall(caller, () => this.rateLimiter.take(caller!)))) {
        throw new WaymarkError('rate_limited', `more than ${this.config.rateLimit} calls per second (burst ${this.config.rateBurst}); slow down`);
      }
      this.stillThere(caller); // the shared rate bucket is an await too
      return await fn(caller);
    } catch (err) {
      if (err instanceof WaymarkError) throw new autobahn.Error(err.uri, [err.message]);
      this.logger.error('procedure failed', { error: errorText(err) });
      throw err;
    } finally {
      const call = caller === undefined ? undefined : this.inFlight.get(caller);
      if (call && --call.calls === 0) this.inFlight.delete(caller!);
    }
  }

  /** After an await in a call: throws when the caller left meanwhile (its leave was handled). */
  private stillThere(session: number): void {
    if (this.inFlight.get(session)?.left) throw new WaymarkError('no_caller', 'the caller left while the call was in flight');
  }

  private async watch(session: number, args: unknown[] | undefined, kwargs: unknown): Promise<WatchResult> {
    const { path, headers, snapshot, revalidateMs } = parseWatchArgs(args, kwargs as Record<string, unknown>, this.config);
    resolveApiUrl(this.config.apiUrl, path);
    // Ownership and the limit are shared by all instances (contract section 7).
    const id = watchId(session, path);
    const { adopted } = await this.instances.admit(session, id);
    let accepted = false;
    let upserted: ReturnType<WatchRegistry['upsert']>;
    try {
      this.stillThere(session);
      upserted = this.registry.upsert(session, path, headers, revalidateMs);
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
    const answering = this.session;
    if (snapshot) {
      result.snapshot = await this.dispatcher.snapshot(watch);
      // The link this call came on is gone: the answer, snapshot included, never reaches the
      // caller. Not counted as delivered, so the refetch after the rejoin pushes it.
      if (this.session !== answering || !answering?.isOpen) watch.lastSent = undefined;
    }
    // A resumed watch, or one adopted from another instance, may have missed changes: catch up once.
    // So does one on an error whose retry went with its old credentials.
    if (!snapshot && (resumed || adopted || (credentialsChanged && this.dispatcher.lastFailed(watch)))) void this.dispatcher.refetch(watch, 'refresh');
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
      const wasSuspended = this.registry.replaceCredentials(watch, headers);
      if (wasSuspended) resumed += 1;
      // a watch on an error: its retry went with the old credentials
      if (wasSuspended || this.dispatcher.lastFailed(watch)) void this.dispatcher.refetch(watch, 'refresh');
    }
    if (watches.length > 0) this.logger.info('credentials refreshed', { session, updated: watches.length, resumed });
    return watches.length;
  }

  private async unwatch(session: number, args: unknown[] | undefined, kwargs: unknown): Promise<{ removed: number }> {
    const target = args?.[0] ?? (kwargs as { watch?: unknown } | undefined)?.watch;
    if (typeof target !== 'string' || target.length === 0) {
      throw new WaymarkError('invalid_argument', 'unwatch needs a watch id or a path');
    }
    let key = target;
    if (target.startsWith('/')) {
      // the watch key of that path (RFC 3986 6.2.2 normal form); no watch has an invalid path
      try { key = validatePath(target, this.config.maxPathBytes); } catch { /* removes nothing */ }
    }
    const local = this.registry.remove(session, key);
    const id = key.startsWith('/') ? watchId(session, key) : key;
    // The watch may live on another instance: the shared index knows whether it existed.
    const removed = await this.instances.unwatch(session, id, local);
    this.logger.info('unwatch', { session, watch: id, removed });
    return { removed };
  }

  private onSessionLeft(id: unknown): void {
    if (typeof id !== 'number') return;
    const dropped = this.forgetSession(id);
    if (dropped > 0) this.logger.info('session left, watches dropped', { session: id, dropped });
  }

  /** Everything held for a session that is gone; returns how many of its watches were dropped. */
  private forgetSession(id: number): number {
    const call = this.inFlight.get(id);
    if (call) call.left = true;
    const dropped = this.registry.dropSession(id);
    this.rateLimiter.forget(id);
    void this.instances.sessionLeft(id);
    return dropped;
  }

  /** A 410 ended these watches (contract 11.5): gone here and from the shared index. */
  private ended(watches: Watch[]): void {
    for (const w of watches) {
      if (!this.registry.isLive(w)) continue;
      this.registry.remove(w.session, w.id);
      void this.instances.unwatch(w.session, w.id, 1);
      this.logger.info('watch ended: the API answered 410 Gone', { session: w.session, watch: w.id, path: w.path });
    }
  }

  private onBump(bump: Bump): void {
    this.metrics.bumpsReceived.inc();
    if (bump.paths.length) this.metrics.bumpForms.inc({ form: 'path' });
    if (bump.prefixes?.length) this.metrics.bumpForms.inc({ form: 'prefix' });
    if (bump.tags?.length) this.metrics.bumpForms.inc({ form: 'tag' });
    if (bump.prefixes?.includes('/')) this.metrics.bumpRootPrefix.inc();
    if (this.status === 'stopping' || this.status === 'stopped') return;
    this.logger.debug('bump', { bump: bump.id, paths: bump.paths.length });
    void this.dispatcher.dispatch(bump);
  }

  /** Bumps may have been lost while Redis was away: refetch every watch once, through the cap. */
  private resync(reason: string): void {
    if (this.status === 'stopping' || this.status === 'stopped') return;
    this.metrics.resyncs.inc({ reason });
    this.logger.info('refetching every watch', { reason, watches: this.registry.size });
    void this.dispatcher.refetchAll('resync');
  }

  private setRedisState(up: boolean): void {
    this.redisSubscribed = up;
    this.metrics.redisConnected.set(up ? 1 : 0);
  }

  /** stop() while not joined: cancel autobahn's pending retry and settle a waiting connect(). */
  private abandonJoin(): void {
    const c = this.connection as (autobahn.Connection & { _autoreconnect_reset_timer?: () => void }) | undefined;
    if (c && !c.isOpen) {
      // close() alone leaves a pending retry timer, which would open a session later.
      c._autoreconnect_reset_timer?.();
      try { c.close(); } catch { /* nothing to close */ }
    }
    this.cancelJoin?.();
  }

  /**
   * Reverse order of start, every step attempted even if one fails: unregister (new watches go
   * elsewhere), stop bumps, drain in-flight fetches and publishes up to the deadline, leave the
   * realm, close the HTTP pool and the admin port.
   */
  private async doStop(): Promise<void> {
    this.stopRequested = true;
    // A start still waiting for the router (which may be down for good) gives up now.
    if (this.status === 'starting') this.abandonJoin();
    await this.starting?.catch(() => undefined);
    this.status = 'stopping';
    const steps: Array<[string, () => Promise<unknown>]> = [
      ['unregister', async () => {
        const s = this.session;
        // bounded: autobahn never answers requests of a connection that drops meanwhile
        if (s?.isOpen) await waitAtMost(Promise.allSettled(this.registrations.map((r) => s.unregister(r))), 2_000);
        this.logger.info('unregistered: new calls go to other instances', { inFlight: this.dispatcher.busy });
      }],
      ['bump source', async () => {
        this.revalidator.stop();
        await this.bumpSource.stop();
        this.setRedisState(false); // the source reports no state changes once stopped
      }],
      ['drain', async () => {
        // Queued fetches start only while they can still finish (fetch timeout plus a moment
        // for the publish) before the deadline, so every fetch started is also delivered.
        const { shutdownTimeoutMs, fetchTimeoutMs } = this.config;
        const started = performance.now();
        let left = await this.dispatcher.drain(Math.max(0, shutdownTimeoutMs - fetchTimeoutMs - PUBLISH_ALLOWANCE_MS));
        if (left > 0) {
          const dropped = this.dispatcher.stopStarting();
          if (dropped > 0) this.logger.warn('shutdown: queued refetches dropped, too late to finish before the deadline', { dropped });
          left = await this.dispatcher.drain(Math.max(0, shutdownTimeoutMs - (performance.now() - started)));
        }
        // Retries waiting for their back-off are not waited for: the watch keeps its last Update.
        const retries = this.dispatcher.stopStarting();
        if (retries > 0) this.logger.info('shutdown: pending retries dropped', { dropped: retries });
        if (left > 0) this.logger.warn('shutdown deadline passed with work in flight', { left });
        else this.logger.info('drained: every fetch and publish finished');
      }],
      ['leave router', async () => {
        const c = this.connection;
        if (!c) return;
        // Between two reconnect attempts: cancel the next one.
        if (!c.isOpen) { this.abandonJoin(); return; }
        const closed = new Promise<void>((resolve) => { this.whenClosed = resolve; });
        try {
          c.close('wamp.close.normal', 'waymark stopping');
        } catch {
          return; // autobahn throws when there is nothing left to close
        }
        // The router's GOODBYE, so the process does not exit before ours was sent.
        await waitAtMost(closed, 2_000);
      }],
      // After the deadline, requests may still be running: do not wait for their timeouts.
      ['fetcher', () => waitAtMost(this.fetcher.close(), 1_000)],
      ['watch index', () => waitAtMost(this.instances.stop(), 2_000)],
      ['admin', async () => this.admin?.stop()],
      ['bump endpoint', async () => this.bumpEndpoint?.close()],
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

/**
 * An HTTP agent whose sockets give up when the WebSocket opening handshake has not completed
 * within `ms` (ws clears the socket timeout once the connection is upgraded).
 */
function handshakeAgent(url: string, ms: number, onSocket: (socket: Socket) => void): http.Agent {
  const Base = url.startsWith('wss:') ? https.Agent : http.Agent;
  const agent = new Base();
  const create = (agent as unknown as { createConnection: (...a: unknown[]) => Socket }).createConnection.bind(agent);
  (agent as unknown as { createConnection: (...a: unknown[]) => Socket }).createConnection = (...args: unknown[]) => {
    const socket = create(...args);
    socket.setTimeout(ms, () => socket.destroy(new Error(`no WebSocket handshake with the router within ${ms} ms`)));
    onSocket(socket);
    return socket;
  };
  return agent;
}

/**
 * In Node, autobahn 22.11.1's WebSocket transport reports one failed connection twice (ws emits
 * `error`, then `close`, and both call `transport.onclose`), so the connection would run its
 * close handler twice: two log lines within a millisecond and two steps of back-off per attempt
 * (its browser branch avoids exactly this). Each transport's first close is the one that counts.
 */
function closeEachTransportOnce(connection: autobahn.Connection): void {
  type Transport = { onclose: (evt: unknown) => void };
  const c = connection as unknown as { _create_transport: () => Transport | null };
  const create = c._create_transport.bind(connection);
  c._create_transport = () => {
    const transport = create();
    if (!transport) return transport;
    let handler: (evt: unknown) => void = () => undefined;
    let closed = false;
    Object.defineProperty(transport, 'onclose', {
      configurable: true,
      get: () => (evt: unknown) => { if (!closed) { closed = true; handler(evt); } },
      set: (h: (evt: unknown) => void) => { handler = h; },
    });
    return transport;
  };
}

/** Seconds a session's entries stay in the shared index without a touch from their owner. */
const INDEX_TTL_SECONDS = 86_400;

function errorText(err: unknown): string {
  if (err instanceof autobahn.Error) return `${err.error}${err.args?.[0] ? `: ${String(err.args[0])}` : ''}`;
  return err instanceof Error ? err.message : String(err);
}

export function createWaymark(config: WaymarkConfig, opts: WaymarkOptions = {}): Waymark {
  return new Waymark(config, opts);
}
