import { randomBytes, randomUUID } from 'node:crypto';
import { request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import autobahn from 'autobahn';
import { Cluster } from 'ioredis';
import { redisTarget, type RedisTarget, type WaymarkConfig } from '../protocol/config.js';
import { ERROR_URIS, PROC_WATCH, WAMP_SUBPROTOCOLS } from '../protocol/uris.js';
import { VERSION } from '../protocol/version.js';
import { redactUrl } from '../support/logger.js';
import { DeadlineError, withDeadline } from '../support/deadline.js';
import { connectedNode, createNodeRedis, createRedis, liveClusterNodes, redisMode } from '../support/redis.js';

/**
 * `waymark doctor`: what an operator runs when "it does not push". Each check answers one
 * question with one line, in the order a deployment depends on them: can we reach the router,
 * join the realm, authenticate as the component does, use Redis, reach the API, and is a Waymark
 * instance attached to the realm. Every check is bounded by its own timeout.
 *
 * The router check is a bare WebSocket handshake (it can report the HTTP status or a missing
 * subprotocol); the realm, authentication and waymark.watch checks use one autobahn session,
 * whose console chatter `waymark doctor` routes to its (quiet) logger.
 */

export type CheckStatus = 'ok' | 'fail' | 'skip';

export interface CheckResult {
  /** short, stable name: router, realm, authentication, redis, api, waymark.watch */
  name: string;
  status: CheckStatus;
  /** what was found and how long it took, or what failed and how to fix it */
  detail: string;
}

export interface DoctorOptions {
  /** upper bound of each check. @default 3000 */
  timeoutMs?: number;
  /**
   * With a value above 0, a last check (`bumps`) watches Redis for this long (MONITOR) and says
   * where the bumps published meanwhile went: bumps sent where Waymark does not listen (a
   * framework's key prefix on the channel, a typo) are otherwise silent. @default 0 (off)
   */
  listenMs?: number;
  /** told about each result as soon as it is known, so a slow check shows what it waits for */
  onResult?: (result: CheckResult) => void;
}

const MARK: Record<CheckStatus, string> = { ok: '✓', fail: '✗', skip: '–' };

/** `✓ redis           PONG in 1 ms; ...` */
export function formatResult(r: CheckResult): string {
  return `${MARK[r.status]} ${r.name.padEnd(15)} ${r.detail}`;
}

/** Every check's bound, worded the same way: `no PONG within 3000 ms`. */
function within<T>(ms: number, what: string, work: Promise<T>, onTimeout?: () => void): Promise<T> {
  return withDeadline(work, ms, `no ${what} within ${ms} ms`, onTimeout);
}

const since = (t0: number) => `${Math.max(0, Math.round(performance.now() - t0))} ms`;

/** The most telling part of a network error: ECONNREFUSED, ENOTFOUND, ... or the message. */
function reasonOf(err: unknown): string {
  const e = err as { code?: string; cause?: { code?: string; message?: string }; message?: string };
  return e.code ?? e.cause?.code ?? e.cause?.message ?? e.message ?? String(err);
}

// ---------------------------------------------------------------------------------------------
// router: a WebSocket handshake offering the WAMP subprotocol
// ---------------------------------------------------------------------------------------------

async function checkRouter(rawUrl: string, timeoutMs: number): Promise<CheckResult> {
  const name = 'router';
  const t0 = performance.now();
  const u = new URL(rawUrl);
  const url = redactUrl(rawUrl);
  const secure = u.protocol === 'wss:';
  let req: ClientRequest | undefined;
  const handshake = new Promise<{ status: number; protocol?: string }>((resolve, reject) => {
    req = (secure ? httpsRequest : httpRequest)({
      host: u.hostname.replace(/^\[|\]$/g, ''),
      port: u.port || (secure ? 443 : 80),
      path: u.pathname + u.search,
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': randomBytes(16).toString('base64'),
        'sec-websocket-protocol': WAMP_SUBPROTOCOLS.join(', '),
        'user-agent': `waymark/${VERSION} (doctor)`,
      },
    });
    req.on('upgrade', (res: IncomingMessage, socket: Socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 101, protocol: res.headers['sec-websocket-protocol'] });
    });
    req.on('response', (res: IncomingMessage) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0 });
    });
    req.on('error', reject);
    req.end();
  });
  try {
    const { status, protocol } = await within(timeoutMs, 'WebSocket handshake', handshake, () => req?.destroy());
    if (status !== 101) {
      return { name, status: 'fail', detail: `${url} answered HTTP ${status} instead of a WebSocket: check the path of WAYMARK_ROUTER_URL (Crossbar serves it at /ws)` };
    }
    if (!protocol || !WAMP_SUBPROTOCOLS.includes(protocol)) {
      return { name, status: 'fail', detail: `${url} opened a WebSocket without the ${WAMP_SUBPROTOCOLS.join(', ')} subprotocol: is it a WAMP router?` };
    }
    return { name, status: 'ok', detail: `${url} accepted a WebSocket (${protocol}) in ${since(t0)}` };
  } catch (err) {
    return { name, status: 'fail', detail: `${url}: ${err instanceof DeadlineError ? err.message : reasonOf(err)}: is the router running? check WAYMARK_ROUTER_URL` };
  }
}

// ---------------------------------------------------------------------------------------------
// a WAMP session, just enough of it
// ---------------------------------------------------------------------------------------------

/** The router ended the join (ABORT's reason URI: wamp.error.no_such_realm, ...) or refused a call. */
class Refused extends Error {
  constructor(readonly reason: string, message: string) {
    super(message ? `${reason} (${message})` : reason);
  }
}

interface Welcome {
  session: number;
  authid?: string;
  authrole?: string;
  authmethod?: string;
}

/** One autobahn session for the realm, authentication and waymark.watch checks. */
class WampProbe {
  private constructor(private readonly connection: autobahn.Connection, private readonly session: autobahn.Session) {}

  /** Joins anonymously, or with a ticket when credentials are given; resolves with WELCOME's details. */
  static join(url: string, realm: string, auth: { authid: string; ticket: string } | undefined, timeoutMs: number): Promise<{ probe: WampProbe; welcome: Welcome }> {
    const connection = new autobahn.Connection({
      url, realm, protocols: WAMP_SUBPROTOCOLS, max_retries: 0, retry_if_unreachable: false,
      ...(auth
        ? {
          authmethods: ['ticket'], authid: auth.authid,
          onchallenge: (_session: autobahn.Session, method: string) => {
            if (method !== 'ticket') throw new Error(`the router asked for ${method} authentication`);
            return auth.ticket;
          },
        }
        : { authmethods: ['anonymous'] }),
      // a refused challenge is reported by the check, not printed by autobahn
      on_user_error: () => undefined,
    });
    const joined = new Promise<{ probe: WampProbe; welcome: Welcome }>((resolve, reject) => {
      connection.onopen = (session, details) => {
        const d = (details ?? {}) as Omit<Welcome, 'session'>;
        resolve({ probe: new WampProbe(connection, session), welcome: { session: session.id, authid: d.authid, authrole: d.authrole, authmethod: d.authmethod } });
      };
      connection.onclose = (reason, details) => {
        const d = (details ?? {}) as { reason?: string | null; message?: string };
        reject(d.reason ? new Refused(d.reason, d.message ?? '') : new Error(`the router closed the connection (${reason})`));
        return true;
      };
    });
    connection.open();
    return within(timeoutMs, 'WELCOME', joined, () => { try { connection.close(); } catch { /* not open */ } });
  }

  /** CALL; resolves with the result, or rejects with the WAMP error URI and message. */
  async call(procedure: string, args: unknown[], timeoutMs: number): Promise<unknown> {
    try {
      return await within(timeoutMs, `answer to ${procedure}`, Promise.resolve(this.session.call(procedure, args, {}, { timeout: timeoutMs })));
    } catch (err) {
      if (err instanceof autobahn.Error) throw new Refused(err.error, typeof err.args?.[0] === 'string' ? err.args[0] : '');
      throw err;
    }
  }

  close(): void {
    try {
      this.connection.close();
    } catch {
      // already closed
    }
  }
}

const AUTH_REASONS = /not_authorized|authentication_failed|authorization_failed|no_such_principal|no_auth_method|no_such_role|no_matching_auth_method/;

/** realm and authentication from one join; resolves with the open session, or why there is none. */
async function checkSession(config: WaymarkConfig, timeoutMs: number, report: (r: CheckResult) => void): Promise<WampProbe | string> {
  const { routerUrl, realm, routerAuthid, routerTicket } = config;
  const auth = routerAuthid ? { authid: routerAuthid, ticket: routerTicket ?? '' } : undefined;
  const who = auth ? `authid ${auth.authid} (WAMP-ticket)` : 'anonymous (WAYMARK_ROUTER_AUTHID is not set)';
  const t0 = performance.now();
  let probe: WampProbe;
  let welcome: Welcome;
  try {
    ({ probe, welcome } = await WampProbe.join(routerUrl, realm, auth, timeoutMs));
  } catch (err) {
    if (err instanceof Refused && /no_such_realm/.test(err.reason)) {
      report({ name: 'realm', status: 'fail', detail: `the router has no realm ${JSON.stringify(realm)}: ${err.message}; fix WAYMARK_REALM` });
      report({ name: 'authentication', status: 'skip', detail: 'not checked: the realm does not exist' });
      return 'the realm does not exist';
    }
    if (err instanceof Refused && AUTH_REASONS.test(err.reason)) {
      report(await probeRealm(routerUrl, realm, timeoutMs, !!auth));
      report({
        name: 'authentication', status: 'fail',
        detail: auth
          ? `the router refused ${who}: ${err.message}; WAYMARK_ROUTER_AUTHID and WAYMARK_ROUTER_TICKET must match the router's backend principal`
          : `the router refused an anonymous session: ${err.message}; set WAYMARK_ROUTER_AUTHID and WAYMARK_ROUTER_TICKET`,
      });
      return 'authentication failed';
    }
    report({ name: 'realm', status: 'fail', detail: `could not join ${JSON.stringify(realm)}: ${err instanceof Refused ? err.message : (err as Error).message}` });
    report({ name: 'authentication', status: 'skip', detail: 'not checked: no answer to the join' });
    return 'the realm could not be joined';
  }
  report({ name: 'realm', status: 'ok', detail: `joined ${JSON.stringify(realm)} as session ${welcome.session} in ${since(t0)}` });
  report({
    name: 'authentication', status: 'ok',
    detail: `${auth ? `ticket accepted for authid ${welcome.authid ?? auth.authid}` : who}, role ${welcome.authrole ?? '(not told)'}`,
  });
  return probe;
}

/** After the credentials were refused: does the realm exist at all? An anonymous join tells. */
async function probeRealm(url: string, realm: string, timeoutMs: number, triedTicket: boolean): Promise<CheckResult> {
  const name = 'realm';
  let probe: WampProbe | undefined;
  try {
    ({ probe } = await WampProbe.join(url, realm, undefined, timeoutMs));
    return { name, status: 'ok', detail: `${JSON.stringify(realm)} exists (an anonymous session joined it)` };
  } catch (err) {
    if (err instanceof Refused && /no_such_realm/.test(err.reason)) {
      return { name, status: 'fail', detail: `the router has no realm ${JSON.stringify(realm)}; fix WAYMARK_REALM` };
    }
    return { name, status: 'skip', detail: `not verified: ${triedTicket ? 'the ticket was refused and ' : ''}an anonymous session may not join either` };
  } finally {
    probe?.close();
  }
}

/** Call waymark.watch with a path every instance must refuse: the refusal proves one is attached. */
async function checkWatch(probe: WampProbe, timeoutMs: number): Promise<CheckResult> {
  const name = 'waymark.watch';
  const t0 = performance.now();
  try {
    const result = await probe.call(PROC_WATCH, ['//waymark-doctor.invalid/'], timeoutMs);
    return { name, status: 'fail', detail: `accepted an invalid path (${JSON.stringify(result).slice(0, 80)}): is this a Waymark instance?` };
  } catch (err) {
    if (!(err instanceof Refused)) {
      return { name, status: 'fail', detail: `${(err as Error).message}: is a Waymark instance joined to this realm and healthy?` };
    }
    if (err.reason === ERROR_URIS.invalid_path) {
      return { name, status: 'ok', detail: `a Waymark instance answered (${err.reason}, as expected) in ${since(t0)}` };
    }
    if (err.reason === 'wamp.error.no_such_procedure') {
      return { name, status: 'fail', detail: `nobody has registered ${PROC_WATCH} on this realm: start 'waymark serve' (check its logs for the join)` };
    }
    if (err.reason === ERROR_URIS.no_caller) {
      return { name, status: 'fail', detail: `Waymark answered ${err.reason}: the router does not disclose callers; turn on disclose for ${PROC_WATCH} (crossbar/config.json)` };
    }
    if (/not_authorized|authorization_failed/.test(err.reason)) {
      return { name, status: 'fail', detail: `the router refused the call (${err.message}): this role may not call ${PROC_WATCH}, or waymark.authorize is not registered` };
    }
    return { name, status: 'fail', detail: `unexpected answer ${err.message}` };
  }
}

// ---------------------------------------------------------------------------------------------
// redis: PING and a round trip on the bump channel
// ---------------------------------------------------------------------------------------------

/**
 * Which Redis, in words: the URL (single), the seed nodes (cluster) or the master set and its
 * sentinels. Never the password.
 */
function describeTarget(target: RedisTarget): string {
  const mode = redisMode(target);
  if (mode === 'cluster') return `cluster via ${target.redisClusterNodes!.join(',')}`;
  if (mode === 'sentinel') return `sentinel master set ${target.redisSentinelName} via ${target.redisSentinels!.join(',')}`;
  return redactUrl(target.redisUrl);
}

async function checkRedis(target: RedisTarget, channel: string, timeoutMs: number): Promise<CheckResult> {
  const name = 'redis';
  const mode = redisMode(target);
  let shown = describeTarget(target);
  const options = { maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: timeoutMs, enableOfflineQueue: false };
  const pub = createRedis(target, 'doctor', options);
  const sub = createNodeRedis(target, 'doctor subscriber', options);
  // connect() only says "Connection is closed."; the cause (ECONNREFUSED, NOAUTH) comes as an event.
  let cause: unknown;
  pub.on('error', (err: unknown) => { cause ??= err; });
  sub.on('error', (err: unknown) => { cause ??= err; });
  try {
    const t0 = performance.now();
    await within(timeoutMs, 'connection', pub.connect());
    const pong = await within(timeoutMs, 'PONG', pub.ping());
    const pingTook = since(t0);
    if (pub instanceof Cluster) {
      const info = String(await within(timeoutMs, 'CLUSTER INFO', pub.cluster('INFO')));
      const state = /cluster_state:(\w+)/.exec(info)?.[1] ?? 'unknown';
      // CLUSTER NODES, not the client's pool, which learns of replicas lazily
      const lines = String(await within(timeoutMs, 'CLUSTER NODES', pub.cluster('NODES'))).split('\n').filter((l) => l.trim() && !/fail|handshake|noaddr/.test(l.split(' ')[2] ?? ''));
      shown += ` (${lines.filter((l) => /master/.test(l.split(' ')[2])).length} masters, ${lines.length} nodes, cluster_state ${state})`;
      if (state !== 'ok') throw new Error(`cluster_state is ${state}: some slots have no reachable master`);
    } else if (mode === 'sentinel') {
      shown += ` (master at ${connectedNode(pub) ?? 'unknown'})`;
    }
    await within(timeoutMs, 'connection', sub.connect());
    await within(timeoutMs, 'SUBSCRIBE', sub.subscribe(channel));
    // A bump of a path no browser can watch (it is its own id): every instance receives it and
    // finds nothing to fetch, so the probe costs them one lookup.
    const id = `doctor-${randomUUID()}`;
    const message = JSON.stringify({ path: `/waymark-doctor/${id}`, id });
    const back = new Promise<void>((resolve) => {
      sub.on('message', (ch: string, m: string) => { if (ch === channel && m === message) resolve(); });
    });
    const t1 = performance.now();
    const receivers = await within(timeoutMs, 'PUBLISH reply', pub.publish(channel, message));
    await within(timeoutMs, 'probe bump back on the channel', back);
    const others = Math.max(0, receivers - 1);
    // On a cluster PUBLISH counts only the subscribers of the node it ran on; the others hear
    // it over the cluster bus.
    const count = mode === 'cluster' ? `subscribed on ${connectedNode(sub) ?? 'a node'}` : `${others} other subscriber${others === 1 ? '' : 's'}, normally Waymark instances`;
    return {
      name, status: 'ok',
      detail: `${shown}: ${pong} in ${pingTook}; a probe bump on ${channel} came back in ${since(t1)} (${count})`,
    };
  } catch (err) {
    const reason = err instanceof DeadlineError ? err.message : reasonOf(cause ?? err);
    const fix = /NOAUTH|WRONGPASS/.test(reason)
      ? 'put the password in WAYMARK_REDIS_URL (redis://:password@host:6379)'
      : 'is Redis running? check WAYMARK_REDIS_URL';
    return { name, status: 'fail', detail: `${shown}: ${reason}: ${fix}` };
  } finally {
    pub.disconnect();
    sub.disconnect();
  }
}

// ---------------------------------------------------------------------------------------------
// api: does WAYMARK_API_URL answer HTTP at all?
// ---------------------------------------------------------------------------------------------

async function checkApi(url: string, timeoutMs: number): Promise<CheckResult> {
  const name = 'api';
  const t0 = performance.now();
  const controller = new AbortController();
  try {
    // Any status proves the API is reachable: Waymark fetches the paths below this URL, never
    // the URL itself. X-Waymark tells the API, as it does for Waymark's own fetches, that it may
    // skip side effects.
    const res = await within(timeoutMs, 'HTTP answer', fetch(url, {
      redirect: 'manual',
      signal: controller.signal,
      headers: { 'user-agent': `waymark/${VERSION} (doctor)`, 'x-waymark': 'doctor' },
    }), () => controller.abort());
    await res.body?.cancel().catch(() => undefined);
    return { name, status: 'ok', detail: `${url} answered HTTP ${res.status} in ${since(t0)} (any status means reachable)` };
  } catch (err) {
    const reason = err instanceof DeadlineError ? err.message : reasonOf(err);
    return { name, status: 'fail', detail: `${url}: ${reason}: is the API running? check WAYMARK_API_URL` };
  }
}

/**
 * Redis MONITOR on a connection of its own for `ms`, handing each command's arguments to
 * `onCommand`. Spoken directly (RESP: one `+<time> [<db> <client>] "arg" ...` line per command):
 * ioredis' monitor() mistakes a busy server's first lines for replies ("Command queue state error").
 */
function monitorRedis(rawUrl: string, ms: number, timeoutMs: number, onCommand: (args: string[]) => void): Promise<void> {
  const u = new URL(rawUrl);
  const port = Number(u.port || 6379);
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const socket = u.protocol === 'rediss:' ? tlsConnect({ host, port, servername: host }) : netConnect({ host, port });
  const resp = (...args: string[]) => `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;
  const password = decodeURIComponent(u.password);
  const user = decodeURIComponent(u.username);
  const db = u.pathname.slice(1);
  return new Promise<void>((resolve, reject) => {
    let buffered = '';
    let monitoring = false;
    let oks = 0;
    const expected = (password ? 1 : 0) + (db ? 1 : 0) + 1;
    let timer: NodeJS.Timeout | undefined = setTimeout(() => finish(new DeadlineError(`no answer to MONITOR within ${timeoutMs} ms`)), timeoutMs);
    const finish = (err?: Error) => {
      clearTimeout(timer);
      timer = undefined;
      socket.destroy();
      if (err) reject(err); else resolve();
    };
    socket.on('error', (err) => finish(err));
    socket.on('connect', () => {
      socket.write((password ? resp('AUTH', ...(user ? [user, password] : [password])) : '') + (db ? resp('SELECT', db) : '') + resp('MONITOR'));
    });
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf('\r\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 2);
        if (line.startsWith('-')) return finish(new Error(line.slice(1)));
        if (!line.startsWith('+')) continue;
        if (!monitoring) {
          // AUTH and SELECT answer +OK, and so does MONITOR: every later line is a command it saw
          if (line !== '+OK') return finish(new Error(`unexpected answer ${line}`));
          if (++oks === expected) {
            monitoring = true;
            clearTimeout(timer);
            timer = setTimeout(() => finish(), ms);
          }
          continue;
        }
        const args = [...line.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1].replace(/\\(x[0-9a-f]{2}|.)/gi, (_, e: string) => (
          e.length === 3 ? String.fromCharCode(parseInt(e.slice(1), 16)) : ({ n: '\n', r: '\r', t: '\t', a: '\x07', b: '\b' } as Record<string, string>)[e] ?? e)));
        onCommand(args);
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// bumps: where do the bumps published meanwhile go? (MONITOR for a while)
// ---------------------------------------------------------------------------------------------

/** A Redis command that delivers a bump, and the argument naming where it goes. */
const DELIVERY: Record<string, 'channel' | 'stream'> = { publish: 'channel', spublish: 'channel', xadd: 'stream' };

/**
 * Watches every command Redis runs for `listenMs` (MONITOR: it costs Redis some throughput while
 * it runs, so it is only done when asked) and counts PUBLISH/XADD by destination. Waymark hears
 * only its own channel (or stream): one that ends with it under a prefix is the trap of clients
 * that prefix every key and channel (Laravel's `laravel_database_`, a Rails/Django cache prefix).
 */
/**
 * The URLs MONITOR must watch to see every bump: the one node; the master the sentinels name; or
 * every node of a cluster (a PUBLISH shows only on the node a client sent it to; an XADD on its
 * master, and again on the replicas, so those are left out for a stream). Each keeps the
 * credentials and TLS of WAYMARK_REDIS_URL.
 */
async function monitorUrls(target: RedisTarget, mastersOnly: boolean, timeoutMs: number): Promise<string[]> {
  const mode = redisMode(target);
  if (mode === 'single') return [target.redisUrl];
  const redis = createRedis(target, 'doctor monitor', { maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: timeoutMs, enableOfflineQueue: false });
  redis.on('error', () => undefined);
  try {
    await within(timeoutMs, 'connection', redis.connect());
    const nodes = redis instanceof Cluster
      ? liveClusterNodes(String(await within(timeoutMs, 'CLUSTER NODES', redis.cluster('NODES'))), mastersOnly).map((n) => `${n.host}:${n.port}`)
      : [connectedNode(redis)].filter((n): n is string => !!n);
    return nodes.map((node) => {
      const u = new URL(target.redisUrl);
      u.host = node;
      u.pathname = mode === 'cluster' ? '' : u.pathname;
      return u.toString();
    });
  } finally {
    redis.disconnect();
  }
}

async function checkBumps(redis: RedisTarget, target: { channel: string; stream?: string }, listenMs: number, timeoutMs: number): Promise<CheckResult> {
  const name = 'bumps';
  const kind = target.stream ? 'stream' : 'channel';
  const where = target.stream ?? target.channel;
  const command = target.stream ? 'XADD' : 'PUBLISH';
  const seen = new Map<string, number>();
  try {
    const urls = await monitorUrls(redis, !!target.stream, timeoutMs);
    await Promise.all(urls.map((url) => monitorRedis(url, listenMs, timeoutMs, (args) => {
      const op = String(args[0] ?? '').toLowerCase();
      if (DELIVERY[op] !== kind || args[1] === undefined) return;
      // Waymark's own liveness probes ({"probe": ...}) and other doctors' probe bumps are no backend's bumps
      if (args.some((a, i) => i >= 2 && /^\{"probe":|"id":"doctor-/.test(a))) return;
      seen.set(args[1], (seen.get(args[1]) ?? 0) + 1);
    })));
  } catch (err) {
    const reason = err instanceof DeadlineError ? err.message : reasonOf(err);
    return { name, status: 'fail', detail: `cannot watch Redis (${reason})${/NOPERM|unknown command/i.test(reason) ? ': MONITOR is not allowed for this user; try redis-cli MONITOR as an admin' : ''}` };
  }
  const hits = seen.get(where) ?? 0;
  seen.delete(where);
  const elsewhere = [...seen.entries()].sort((a, b) => b[1] - a[1]);
  const near = elsewhere.filter(([dest]) => dest.includes(where) || /waymark/i.test(dest));
  const list = (entries: Array<[string, number]>) => (entries.length
    ? `; ${command} elsewhere: ${entries.slice(0, 5).map(([d, n]) => `${d} (${n})`).join(', ')}${entries.length > 5 ? ', ...' : ''}`
    : '');
  const others = list(elsewhere);
  if (near.length > 0) {
    const [dest, count] = near[0];
    const at = dest.indexOf(where);
    const prefix = at > 0 ? dest.slice(0, at) : '';
    const setting = `WAYMARK_BUMP_${target.stream ? 'STREAM' : 'CHANNEL'}`;
    const hint = prefix
      ? `a client prefixes the ${kind} name with ${JSON.stringify(prefix)}${/laravel/i.test(prefix) ? " (Laravel's Redis prefix)" : ''}: publish on a connection without the prefix, or set ${setting}=${dest}`
      : `Waymark listens on ${where}: publish there, or set ${setting}`;
    return { name, status: 'fail', detail: `in ${listenMs} ms: ${hits} bump(s) on ${where}, but ${count} ${command} on ${dest}, which no Waymark hears; ${hint}${list(elsewhere.filter(([d]) => d !== dest))}` };
  }
  if (hits > 0) return { name, status: 'ok', detail: `in ${listenMs} ms: ${hits} bump(s) ${target.stream ? 'added to stream' : 'published on'} ${where}${others}` };
  // Not proven wrong (the app may simply not have changed anything), so not a failure.
  return {
    name, status: 'skip',
    detail: `in ${listenMs} ms: no bump on ${where}${others || ` (no ${command} at all)`}: change something in your app while this runs; its backend should ${command} on ${where}`,
  };
}

/** Run every check, reporting each as it completes. Resolves with all results in order. */
export async function runDoctor(config: WaymarkConfig, opts: DoctorOptions = {}): Promise<CheckResult[]> {
  const timeoutMs = opts.timeoutMs ?? 3_000;
  const results: CheckResult[] = [];
  const report = (r: CheckResult) => {
    results.push(r);
    opts.onResult?.(r);
  };
  const router = await checkRouter(config.routerUrl, timeoutMs);
  report(router);
  let session: WampProbe | string = 'the router check failed';
  if (router.status === 'ok') session = await checkSession(config, timeoutMs, report);
  else for (const n of ['realm', 'authentication']) report({ name: n, status: 'skip', detail: `not checked: ${session}` });
  try {
    report(await checkRedis(redisTarget(config), config.bumpChannel, timeoutMs));
    report(await checkApi(config.apiUrl, timeoutMs));
    if (typeof session === 'string') report({ name: 'waymark.watch', status: 'skip', detail: `not checked: ${session}` });
    else report(await checkWatch(session, timeoutMs));
    if ((opts.listenMs ?? 0) > 0) report(await checkBumps(redisTarget(config), { channel: config.bumpChannel, stream: config.bumpStream }, opts.listenMs!, timeoutMs));
  } finally {
    if (typeof session !== 'string') session.close();
  }
  return results;
}
