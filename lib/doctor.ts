import { randomBytes, randomUUID } from 'node:crypto';
import { request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Socket } from 'node:net';
import { Redis } from 'ioredis';
import { WebSocket } from 'undici';
import type { WaymarkConfig } from './config.js';
import { ERROR_URIS, PROC_WATCH, WAMP_SUBPROTOCOLS } from './uris.js';
import { VERSION } from './version.js';
import { redactUrl } from './logger.js';

/**
 * `waymark doctor`: what an operator runs when "it does not push". Each check answers one
 * question with one line, in the order a deployment depends on them: can we reach the router,
 * join the realm, authenticate as the component does, use Redis, reach the API, and is a Waymark
 * instance attached to the realm. Every check is bounded by its own timeout.
 *
 * The WAMP side speaks the few messages it needs (HELLO, CHALLENGE/AUTHENTICATE, WELCOME/ABORT,
 * CALL, RESULT/ERROR, GOODBYE) itself over undici's WebSocket instead of going through autobahn:
 * autobahn prints every closed or refused connection on the console, and the doctor's whole
 * output is meant to be its check lines.
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
  /** told about each result as soon as it is known, so a slow check shows what it waits for */
  onResult?: (result: CheckResult) => void;
}

const MARK: Record<CheckStatus, string> = { ok: '✓', fail: '✗', skip: '–' };

/** `✓ redis           PONG in 1 ms; ...` */
export function formatResult(r: CheckResult): string {
  return `${MARK[r.status]} ${r.name.padEnd(15)} ${r.detail}`;
}

class TimeoutError extends Error {}

function within<T>(ms: number, what: string, work: Promise<T>, onTimeout?: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout?.();
      reject(new TimeoutError(`no ${what} within ${ms} ms`));
    }, ms);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
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
    return { name, status: 'fail', detail: `${url}: ${err instanceof TimeoutError ? err.message : reasonOf(err)}: is the router running? check WAYMARK_ROUTER_URL` };
  }
}

// ---------------------------------------------------------------------------------------------
// a WAMP session, just enough of it
// ---------------------------------------------------------------------------------------------

const HELLO = 1, WELCOME = 2, ABORT = 3, CHALLENGE = 4, AUTHENTICATE = 5, GOODBYE = 6, ERROR = 8, CALL = 48, RESULT = 50;

/** The router ended the join: ABORT's reason URI (wamp.error.no_such_realm, ...) and message. */
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

class WampProbe {
  private waiter?: { resolve: (msg: unknown[]) => void; reject: (err: Error) => void };
  private closed = false;
  private nextRequest = 1;

  private constructor(private readonly ws: WebSocket) {
    ws.addEventListener('message', (ev) => {
      let msg: unknown;
      try {
        msg = JSON.parse(String(ev.data));
      } catch {
        return;
      }
      if (Array.isArray(msg) && this.waiter) {
        const w = this.waiter;
        this.waiter = undefined;
        w.resolve(msg);
      }
    });
    ws.addEventListener('close', (ev) => {
      this.closed = true;
      const w = this.waiter;
      this.waiter = undefined;
      w?.reject(new Error(`the router closed the connection (${ev.code}${ev.reason ? ` ${ev.reason}` : ''})`));
    });
  }

  static open(url: string, timeoutMs: number): Promise<WampProbe> {
    const ws = new WebSocket(url, WAMP_SUBPROTOCOLS);
    const opened = new Promise<WampProbe>((resolve, reject) => {
      ws.addEventListener('open', () => resolve(new WampProbe(ws)), { once: true });
      ws.addEventListener('error', (ev) => reject(new Error(reasonOf((ev as unknown as { error?: unknown }).error ?? 'WebSocket error'))), { once: true });
    });
    return within(timeoutMs, 'WebSocket', opened, () => ws.close());
  }

  private send(msg: unknown[]): void {
    this.ws.send(JSON.stringify(msg));
  }

  private receive(timeoutMs: number, what: string): Promise<unknown[]> {
    if (this.closed) return Promise.reject(new Error('the router closed the connection'));
    return within(timeoutMs, what, new Promise<unknown[]>((resolve, reject) => { this.waiter = { resolve, reject }; }), () => { this.waiter = undefined; });
  }

  /** HELLO, answering a ticket CHALLENGE when credentials are given; resolves with WELCOME's details. */
  async join(realm: string, auth: { authid: string; ticket: string } | undefined, timeoutMs: number): Promise<Welcome> {
    const deadline = performance.now() + timeoutMs;
    const left = () => Math.max(1, Math.round(deadline - performance.now()));
    this.send([HELLO, realm, {
      roles: { caller: { features: { caller_identification: true } } },
      ...(auth ? { authmethods: ['ticket'], authid: auth.authid } : { authmethods: ['anonymous'] }),
      agent: `waymark/${VERSION} (doctor)`,
    }]);
    let msg = await this.receive(left(), 'WELCOME');
    if (msg[0] === CHALLENGE) {
      if (!auth || msg[1] !== 'ticket') throw new Refused('wamp.error.authentication_failed', `the router asked for ${String(msg[1])} authentication`);
      this.send([AUTHENTICATE, auth.ticket, {}]);
      msg = await this.receive(left(), 'WELCOME');
    }
    if (msg[0] === ABORT) {
      const details = (msg[1] ?? {}) as { message?: string };
      throw new Refused(String(msg[2]), details.message ?? '');
    }
    if (msg[0] !== WELCOME || typeof msg[1] !== 'number') throw new Error(`unexpected WAMP message ${JSON.stringify(msg).slice(0, 80)}`);
    const d = (msg[2] ?? {}) as Omit<Welcome, 'session'>;
    return { session: msg[1], authid: d.authid, authrole: d.authrole, authmethod: d.authmethod };
  }

  /** CALL; resolves with the result's args, or rejects with the WAMP error URI and message. */
  async call(procedure: string, args: unknown[], timeoutMs: number): Promise<unknown[]> {
    const id = this.nextRequest++;
    this.send([CALL, id, { timeout: timeoutMs }, procedure, args]);
    const msg = await this.receive(timeoutMs, `answer to ${procedure}`);
    if (msg[0] === RESULT && msg[1] === id) return (msg[3] as unknown[] | undefined) ?? [];
    if (msg[0] === ERROR && msg[2] === id) {
      const errArgs = (msg[5] as unknown[] | undefined) ?? [];
      throw new Refused(String(msg[4]), typeof errArgs[0] === 'string' ? errArgs[0] : '');
    }
    throw new Error(`unexpected WAMP message ${JSON.stringify(msg).slice(0, 80)}`);
  }

  close(): void {
    if (this.closed) return;
    try {
      this.send([GOODBYE, {}, 'wamp.close.normal']);
    } catch {
      // already closing
    }
    this.ws.close();
  }
}

const AUTH_REASONS = /not_authorized|authentication_failed|authorization_failed|no_such_principal|no_auth_method|no_such_role|no_matching_auth_method/;

/** realm and authentication from one join; resolves with the open session, or why there is none. */
async function checkSession(config: WaymarkConfig, timeoutMs: number, report: (r: CheckResult) => void): Promise<WampProbe | string> {
  const { routerUrl, realm, routerAuthid, routerTicket } = config;
  const auth = routerAuthid ? { authid: routerAuthid, ticket: routerTicket ?? '' } : undefined;
  const who = auth ? `authid ${auth.authid} (WAMP-ticket)` : 'anonymous (WAYMARK_ROUTER_AUTHID is not set)';
  const t0 = performance.now();
  let probe: WampProbe | undefined;
  let welcome: Welcome;
  try {
    probe = await WampProbe.open(routerUrl, timeoutMs);
    welcome = await probe.join(realm, auth, timeoutMs);
  } catch (err) {
    probe?.close();
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
    probe = await WampProbe.open(url, timeoutMs);
    await probe.join(realm, undefined, timeoutMs);
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

async function checkRedis(url: string, channel: string, timeoutMs: number): Promise<CheckResult> {
  const name = 'redis';
  const shown = redactUrl(url);
  const options = { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: timeoutMs, enableOfflineQueue: false };
  const pub = new Redis(url, options);
  const sub = new Redis(url, options);
  // connect() only says "Connection is closed."; the cause (ECONNREFUSED, NOAUTH) comes as an event.
  let cause: unknown;
  pub.on('error', (err: unknown) => { cause ??= err; });
  sub.on('error', (err: unknown) => { cause ??= err; });
  try {
    const t0 = performance.now();
    await within(timeoutMs, 'connection', pub.connect());
    const pong = await within(timeoutMs, 'PONG', pub.ping());
    const pingTook = since(t0);
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
    return {
      name, status: 'ok',
      detail: `${shown}: ${pong} in ${pingTook}; a probe bump on ${channel} came back in ${since(t1)} (${others} other subscriber${others === 1 ? "" : "s"}, normally Waymark instances)`,
    };
  } catch (err) {
    const reason = err instanceof TimeoutError ? err.message : reasonOf(cause ?? err);
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
    const reason = err instanceof TimeoutError ? err.message : reasonOf(err);
    return { name, status: 'fail', detail: `${url}: ${reason}: is the API running? check WAYMARK_API_URL` };
  }
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
    report(await checkRedis(config.redisUrl, config.bumpChannel, timeoutMs));
    report(await checkApi(config.apiUrl, timeoutMs));
    if (typeof session === 'string') report({ name: 'waymark.watch', status: 'skip', detail: `not checked: ${session}` });
    else report(await checkWatch(session, timeoutMs));
  } finally {
    if (typeof session !== 'string') session.close();
  }
  return results;
}
