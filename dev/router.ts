/**
 * Waymark's development router: fox-wamp@0.7.28 run in-process, adjusted to behave like
 * Crossbar.io 22.6.1 (the production router) wherever Waymark relies on it.
 *
 * Crossbar cannot be installed on our machines (see /work/shared/ROUTERS.md), so tests and
 * `waymark dev` use fox-wamp. Its measured gaps against Crossbar are numbered in ROUTERS.md;
 * every adjustment below names the gap it closes ("gap N") and the Crossbar behaviour it copies.
 *
 * How: we do not use fox-wamp's `FoxRouter` (it creates realms on demand, answers the session
 * meta API through an internal session with fox's own shapes and hard-wires auth per listener).
 * We assemble its parts ourselves and subclass four of them:
 *   - DevEngine  (BaseEngine): shared registrations, eligible/exclude, publication ids;
 *   - DevRealm   (BaseRealm):  in-flight calls of a leaving session, meta events;
 *   - DevContext (WampSocketWriterContext): the WAMP messages a client receives;
 *   - DevGate    (WampGate):   the WAMP messages a client sends (auth, authorization, ...).
 * Only the in-memory BaseEngine is used, so sqlite3 is never loaded. node_modules is not modified.
 *
 * Only the JSON serializer is offered (gap 1: fox-wamp has no msgpack/cbor; Waymark needs none).
 *
 * Known remaining differences from Crossbar (none of them used by Waymark):
 *   - CANCEL from a caller is still ignored (fox-wamp's empty handler). autobahn-js rejects the
 *     call locally and would take any later answer for it as a protocol violation anyway.
 *   - A prefix subscription matches whole URI components (`a.b` gets `a.b.x`, not `a.bc`);
 *     an exact subscription to a URI with a `*` component is refused (fox-wamp would read it
 *     as a wildcard); pattern-based registrations are refused.
 *   - No WebSocket auto-ping: a peer that goes silent without closing is never noticed.
 *   - Registrations with `concurrency` queue calls when busy (fox-wamp), and all callees of a
 *     shared registration get distinct registration ids.
 *   - Only the `wamp.session.count/list/get` meta procedures exist.
 */
import { createRequire } from 'node:module';
import { randomBytes, randomInt, timingSafeEqual } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { authorize } from '../lib/wamp/authorizer.js';
import { PROC_AUTHORIZE } from '../lib/protocol/uris.js';

// fox-wamp is CommonJS without types: everything taken from it is `any` (so the subclasses
// below cannot use `override`), kept to the few members used here. Deep requires, because
// its index also loads the MQTT and hyper gates and registers fox's own meta API.
const require = createRequire(import.meta.url);
/* eslint-disable @typescript-eslint/no-explicit-any */
const FoxCoreRouter: any = require('fox-wamp/lib/router.js');
const { BaseRealm, BaseEngine }: any = require('fox-wamp/lib/realm.js');
const { WampGate, WampSocketWriterContext, toWampArgs }: any = require('fox-wamp/lib/wamp/gate.js');
const WampServer: any = require('fox-wamp/lib/wamp/transport.js');
const { RealmError, errorCodes }: any = require('fox-wamp/lib/realm_error.js');
const { wampErrorCode }: any = require('fox-wamp/lib/wamp/msg.js');
const { RESULT_EMIT, RESULT_OK }: any = require('fox-wamp/lib/messages.js');

export interface DevRouterOptions {
  host?: string;            // default '127.0.0.1'
  port?: number;            // default 0 = ephemeral
  path?: string;            // WebSocket path, default '/ws' (like Crossbar's web transport path)
  realm?: string;           // default 'realm1'
  backendTickets?: Record<string, string>; // authid -> ticket secret; such sessions get authrole 'backend'
  logger?: { info(msg: string, meta?: object): void; warn(msg: string, meta?: object): void; debug?(msg: string, meta?: object): void };
  /**
   * CPU time, in microseconds, the router burns (busy loop) for every EVENT it delivers, to model
   * a router that costs what Crossbar does: Crossbar 22.6.1 on CPython spends 300-350 us of CPU
   * per delivered 1.2 KB event (/work/shared/ROUTERS.md), fox-wamp a small fraction of that.
   * Used by the bench (`--router-cost-us`); default 0.
   */
  routeCostUs?: number;
}

export interface DevRouter {
  readonly url: string;     // e.g. 'ws://127.0.0.1:41234/ws'
  readonly realm: string;
  readonly port: number;
  close(): Promise<void>;   // idempotent; closes all client connections and the listener
}

type Logger = Required<DevRouterOptions>['logger'];

/** WAMP message codes (fox-wamp's lib/wamp/protocol.js holds the same numbers). */
const WAMP = {
  HELLO: 1, WELCOME: 2, ABORT: 3, CHALLENGE: 4, AUTHENTICATE: 5, GOODBYE: 6, ERROR: 8,
  PUBLISH: 16, SUBSCRIBE: 32, EVENT: 36, CALL: 48, RESULT: 50, REGISTER: 64, INVOCATION: 68,
  INTERRUPT: 69, YIELD: 70,
} as const;

const ERR = {
  not_authorized: 'wamp.error.not_authorized',
  authorization_failed: 'wamp.error.authorization_failed',
  no_such_realm: 'wamp.error.no_such_realm',
  no_auth_method: 'wamp.error.no_auth_method',
  invalid_uri: 'wamp.error.invalid_uri',
  invalid_argument: 'wamp.error.invalid_argument',
  canceled: 'wamp.error.canceled',
  no_such_session: 'wamp.error.no_such_session',
  procedure_already_exists: 'wamp.error.procedure_already_exists',
  different_policy: 'wamp.error.procedure_exists_with_different_invocation_policy',
} as const;

// Crossbar's default ("loose") URI checks: components without whitespace, '.' or '#'; a prefix
// pattern may end with an empty component, a wildcard pattern may have empty ones.
const URI_EXACT = /^([^\s.#]+\.)*([^\s.#]+)$/;
const URI_PREFIX = /^([^\s.#]+\.)*([^\s.#]*)$/;
const URI_WILDCARD = /^(([^\s.#]+\.)|\.)*([^\s.#]+)?$/;

const INVOKE_POLICIES = ['single', 'roundrobin', 'random', 'first', 'last'];

/** Roles our Crossbar config knows; ours are assigned by the authentication method. */
const ROLE_BACKEND = 'backend';
const ROLE_FRONTEND = 'frontend';

/** What we keep per WAMP session, next to fox-wamp's Session object (as `session.waymark`). */
interface SessionAuth {
  phase: 'challenged' | 'joined';
  authid: string;
  authrole: string;
  authmethod: string;
  authprovider: string;
  /** HELLO roles: used to know whether a callee understands INTERRUPT. */
  roles: Record<string, any>;
}

type Decision = { ok: true; disclose: boolean } | { ok: false; error: string; message: string };

const isObject = (v: unknown): v is Record<string, any> => typeof v === 'object' && v !== null && !Array.isArray(v);
const nonEmpty = (v: unknown): v is unknown[] => Array.isArray(v) && v.length > 0;
/** Publication ids like Crossbar's: random, below 2^53. */
const randomId = (): number => randomInt(1, 2 ** 48);

/** Crossbar's anonymous authids look like `4W3F-HSRV-HRGA-U936-RAK9-CGU9` (util.generate_serial_number). */
function serialNumber(): string {
  const chars = '345679ACEFGHJKLMNPQRSTUVWXY';
  const bytes = randomBytes(24);
  const groups: string[] = [];
  for (let g = 0; g < 6; g++) {
    let s = '';
    for (let i = 0; i < 4; i++) s += chars[bytes[g * 4 + i]! % chars.length];
    groups.push(s);
  }
  return groups.join('-');
}

function auth(session: any): SessionAuth | undefined {
  return session.waymark as SessionAuth | undefined;
}

/** Crossbar's session details (authorizer argument, `wamp.session.on_join`, `wamp.session.get`). */
function sessionDetails(session: any): Record<string, unknown> {
  const a = auth(session);
  return {
    session: session.sessionId,
    authid: a?.authid,
    authrole: a?.authrole,
    authmethod: a?.authmethod,
    authprovider: a?.authprovider,
    authextra: null,
    transport: { type: 'websocket', protocol: 'wamp.2.json' },
  };
}

/**
 * Gap 2: fox-wamp stores WAMP args as `{args}` and unwraps a lone element when it sends them on,
 * so `[[1,2]]` arrived as `[1,2]` and `[null]` as `[]`. Crossbar forwards the list untouched.
 */
function wampArgs(body: any): unknown[] {
  if (isObject(body) && Array.isArray(body.args)) return body.args;
  const v = toWampArgs(body);
  return Array.isArray(v) ? v : [];
}

/** Append args/kwargs the way Crossbar does: omitted when empty. */
function withPayload(msg: unknown[], args: unknown[], kwargs: unknown): unknown[] {
  const kw = isObject(kwargs) && Object.keys(kwargs).length > 0 ? kwargs : undefined;
  if (args.length > 0 || kw) msg.push(args);
  if (kw) msg.push(kw);
  return msg;
}

// ---------------------------------------------------------------------------------------------
// Engine: routing of calls and events

class DevEngine extends BaseEngine {
  private regSeq = 0;
  /** Per procedure URI: Crossbar's `roundrobin_current`, dropped when the last callee goes. */
  private readonly rrNext = new Map<string, number>();

  createActorReg(ctx: any, cmd: any): any {
    const actor = super.createActorReg(ctx, cmd);
    actor.regSeq = ++this.regSeq; // registration order, for 'first' / 'last' / 'roundrobin'
    return actor;
  }

  /** Registrations of an exact procedure URI, oldest first. */
  registrations(uri: string): any[] {
    return Object.values(this.getSubStack(uri) as Record<string, any>).sort((a, b) => a.regSeq - b.regSeq);
  }

  removeSub(uri: any, id: any): void {
    super.removeSub(uri, id);
    const strUri = uri.join('.');
    if (!this.wSub[strUri]) this.rrNext.delete(strUri);
  }

  /**
   * Gap 6: fox-wamp takes the first idle registration. Crossbar honours the invoke policy of a
   * shared registration: 'roundrobin' cycles through the callees (a callee that left is gone
   * from the list, so it is skipped), 'random', 'first', 'last'; 'single' has only one callee.
   */
  doCall(taskD: any): void {
    const uri = taskD.getUri().join('.');
    const regs = this.registrations(uri).filter((r) => r.isActive());
    if (regs.length === 0) {
      throw new RealmError(taskD.msg.id, errorCodes.ERROR_NO_SUCH_PROCEDURE, `no callee registered for procedure <${uri}>`);
    }
    const policy: string = regs[0].msg.opt.invoke ?? 'single';
    let order: any[];
    if (policy === 'roundrobin') {
      const start = (this.rrNext.get(uri) ?? 0) % regs.length;
      this.rrNext.set(uri, start + 1);
      order = [...regs.slice(start), ...regs.slice(0, start)];
    } else if (policy === 'random') {
      const start = randomInt(regs.length);
      order = [...regs.slice(start), ...regs.slice(0, start)];
    } else if (policy === 'last') {
      order = [...regs].reverse();
    } else {
      order = regs;
    }
    // A registration made with `concurrency` may be busy: take the next able one, else queue
    // the call the way fox-wamp does (it is handed over when a callee yields).
    const able = order.find((r) => r.isAble());
    if (able) able.callWorker(taskD);
    else this.waitForResolver(uri, taskD);
  }

  /** Publication ids for PUBLISHED and EVENT (BaseEngine leaves them null). */
  saveInboundHistory(actor: any): void {
    actor.setEventId(randomId());
  }

  /**
   * Gap 5: fox-wamp ignores `eligible` / `exclude` (and the authid/authrole variants).
   * Crossbar: a non-empty `eligible` list restricts the receivers (an empty list is "no
   * restriction": it tests the list for truth), `exclude` removes sessions, and the publisher
   * is left out unless `exclude_me: false` (fox-wamp already defaults exclude_me like that).
   */
  disperseToSubs(event: any): void {
    const o = event.opt ?? {};
    for (const subD of this.matchTrace(event.uri)) {
      const sid = subD.getSid();
      const a = auth(subD.ctx.session);
      if (o.exclude_me && event.sid === sid) continue;
      if (nonEmpty(o.eligible) && !o.eligible.includes(sid)) continue;
      if (Array.isArray(o.exclude) && o.exclude.includes(sid)) continue;
      if (nonEmpty(o.eligible_authid) && !o.eligible_authid.includes(a?.authid)) continue;
      if (nonEmpty(o.eligible_authrole) && !o.eligible_authrole.includes(a?.authrole)) continue;
      if (Array.isArray(o.exclude_authid) && o.exclude_authid.includes(a?.authid)) continue;
      if (Array.isArray(o.exclude_authrole) && o.exclude_authrole.includes(a?.authrole)) continue;
      if (!subD.filter(event)) continue;
      if (subD.traceStarted) subD.sendEvent(event);
      else subD.delayEvent(event);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Realm: session join/leave

class DevRealm extends BaseRealm {
  constructor(router: any, engine: DevEngine, private readonly log: Logger) {
    super(router, engine);
  }

  /** Publish a router meta event (sent by the router itself: no publisher session). */
  publishMeta(topic: string, args: unknown[]): void {
    this.engine.disperseToSubs({ qid: randomId(), uri: topic.split('.'), hdr: null, data: { args }, opt: {}, sid: 0 });
  }

  leaveSession(session: any): Promise<unknown> {
    const done = super.leaveSession(session); // drops its subscriptions and registrations
    this.settleCallsOf(session);
    // Gap 7: Crossbar 22.6.1 publishes `wamp.session.on_leave` with args `[session_id]` after
    // the session is detached (so the leaving session does not receive it).
    this.publishMeta('wamp.session.on_leave', [session.sessionId]);
    return done;
  }

  /**
   * Gap 9: fox-wamp forgets nothing when a session leaves, so a call whose callee left hung
   * forever. Crossbar answers the caller with `wamp.error.canceled` ("callee disconnected from
   * in-flight request"). When the caller leaves instead, Crossbar drops the invocation and
   * INTERRUPTs the callee only if the callee announced `call_canceling` (autobahn-js does not,
   * and treats an INTERRUPT as a protocol violation); the callee's late answer is discarded.
   */
  private settleCallsOf(session: any): void {
    const sid = session.sessionId;
    const defers: Map<unknown, any> = this.engine.qYield.defers;
    for (const [taskId, call] of [...defers]) {
      if (Object.prototype.hasOwnProperty.call(call.destSID ?? {}, sid)) {
        defers.delete(taskId);
        try {
          call.ctx.sendResult({ id: call.msg.id, err: ERR.canceled, data: { args: ['callee disconnected from in-flight request'] } });
        } catch (err) {
          this.log.warn('dev router: could not tell a caller its call was canceled', { error: String(err) });
        }
      } else if (call.ctx.session === session) {
        defers.delete(taskId);
        const reg = call.getRegistration();
        if (!reg) continue;
        reg.taskResolved();
        if (auth(reg.ctx.session)?.roles?.callee?.features?.call_canceling === true) {
          reg.ctx.wampSend([WAMP.INTERRUPT, taskId, { mode: 'killnowait' }]);
        }
        if (reg.isAble()) this.engine.checkTasks(reg);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Context: what a client receives

class DevContext extends WampSocketWriterContext {
  constructor(router: any, session: any, socketWriter: any) {
    super(router, session, socketWriter);
  }

  /** Gap 3: caller disclosure travels in the call's `opt` (set by DevGate) to the INVOCATION. */
  sendInvoke(cmd: any): void {
    const o = cmd.opt ?? {};
    const details: Record<string, unknown> = {};
    if (o.receive_progress) details.receive_progress = true;
    if (o.caller !== undefined) {
      details.caller = o.caller;
      details.caller_authid = o.caller_authid;
      details.caller_authrole = o.caller_authrole;
    }
    this.wampSend(withPayload([WAMP.INVOCATION, cmd.qid, cmd.subId, details], wampArgs(cmd.data), cmd.hdr));
  }

  /**
   * Gap 4: an application error from the callee keeps its URI, args and kwargs (Crossbar),
   * instead of fox-wamp's `wamp.error.callee_failure`; gap 2 for results.
   */
  sendResult(cmd: any): void {
    if (cmd.err) {
      const args = isObject(cmd.data) && Array.isArray(cmd.data.args) ? cmd.data.args
        : cmd.data === undefined || cmd.data === null ? [] : [cmd.data];
      this.wampSend(withPayload([WAMP.ERROR, WAMP.CALL, cmd.id, {}, wampErrorCode(cmd.err)], args, cmd.hdr));
      return;
    }
    const details: Record<string, unknown> = cmd.rsp === RESULT_EMIT ? { progress: true } : {};
    this.wampSend(withPayload([WAMP.RESULT, cmd.id, details], wampArgs(cmd.data), cmd.hdr));
  }

  /**
   * Gap 2 for events. Crossbar discloses the publisher only when the role allows it (ours do
   * not), so `publisher` is not sent; `topic` is (Crossbar sends it for pattern subscriptions,
   * autobahn falls back to the subscribed topic anyway).
   */
  sendEvent(cmd: any): void {
    const cost: number = this.router.routeCostUs ?? 0;
    if (cost > 0) {
      const until = performance.now() + cost / 1000;
      while (performance.now() < until) { /* spend the router's CPU per delivery */ }
    }
    const details: Record<string, unknown> = { topic: cmd.uri.join('.') };
    this.wampSend(withPayload([WAMP.EVENT, cmd.traceId, cmd.qid, details], wampArgs(cmd.data), cmd.hdr));
  }
}

// ---------------------------------------------------------------------------------------------
// Gate: what a client sends

interface GateOptions {
  realmName: string;
  tickets: Map<string, string>;
  log: Logger;
}

type Handler = (ctx: any, session: any, msg: any[]) => void;

class DevGate extends WampGate {
  private readonly realmName: string;
  private readonly tickets: Map<string, string>;
  private readonly log: Logger;
  /** Crossbar caches an authorizer answer with `cache: true` per (authrole, uri, action). */
  private readonly authzCache = new Map<string, Decision>();
  private readonly ours: Record<number, Handler>;

  constructor(router: any, opts: GateOptions) {
    super(router);
    this.realmName = opts.realmName;
    this.tickets = opts.tickets;
    this.log = opts.log;
    // Message types we handle ourselves; UNREGISTER, UNSUBSCRIBE and CANCEL stay fox-wamp's.
    this.ours = {
      [WAMP.HELLO]: this.onHello,
      [WAMP.AUTHENTICATE]: this.onAuthenticate,
      [WAMP.GOODBYE]: this.onGoodbye,
      [WAMP.REGISTER]: this.onRegister,
      [WAMP.CALL]: this.onCall,
      [WAMP.YIELD]: this.onYield,
      [WAMP.ERROR]: this.onError,
      [WAMP.SUBSCRIBE]: this.onSubscribe,
      [WAMP.PUBLISH]: this.onPublish,
    };
  }

  createContext(session: any, socketWriter: any): any {
    // fox-wamp's writer answers a failed send (a peer reset mid-write, e.g. a killed process)
    // with `this.close(1011)`, which it lacks: the TypeError escaped as an uncaught exception
    // from the socket's callback. Crossbar drops such a connection; so does this.
    socketWriter.close ??= (code: number, reason: string) => {
      try {
        socketWriter.wampPkgClose(code, reason);
      } catch (err) {
        this.log.debug?.('dev router: closing a failed connection', { error: String(err) });
      }
    };
    return new DevContext(this._router, session, socketWriter);
  }

  handle(ctx: any, session: any, msg: any): void {
    const handler = Array.isArray(msg) && typeof msg[0] === 'number' ? this.ours[msg[0]] : undefined;
    if (typeof handler !== 'function') {
      super.handle(ctx, session, msg);
      return;
    }
    const mtype = msg.shift();
    ctx.setWampType(mtype);
    try {
      handler.call(this, ctx, session, msg);
    } catch (err) {
      // Same as fox-wamp's handle(): a RealmError becomes a WAMP ERROR for the request.
      if (err instanceof RealmError) {
        const e = err as any;
        if (mtype !== WAMP.PUBLISH) ctx.wampSendError(mtype, e.requestId, wampErrorCode(e.code), [e.message]);
      } else {
        throw err;
      }
    }
  }

  // --- session opening --------------------------------------------------------------------

  /**
   * Gap 10: fox-wamp configures authentication per listener. Crossbar (and our config.json)
   * offers both on one transport: WAMP-ticket for principals of role `backend`, anonymous for
   * role `frontend`. Like Crossbar, the client's authmethods are tried in its order; none given
   * means anonymous; a ticket HELLO with an unknown authid is refused, not downgraded.
   */
  private onHello(ctx: any, session: any, msg: any[]): void {
    const [realmName, rawDetails] = msg;
    if (session.realm !== null || auth(session)) {
      ctx.wampClose(1002, 'protocol violation');
      return;
    }
    const details = isObject(rawDetails) ? rawDetails : {};
    session.realmName = realmName;
    session.secureDetails = details;
    const realm = realmName === this.realmName ? this.getRouter().findRealm(realmName) : undefined;
    if (!realm) {
      this.abort(ctx, ERR.no_such_realm, `no realm "${String(realmName)}" exists on this router`);
      return;
    }
    const roles = isObject(details.roles) ? details.roles : {};
    const methods: unknown[] = nonEmpty(details.authmethods) ? details.authmethods : ['anonymous'];
    for (const method of methods) {
      if (method === 'ticket') {
        const authid = details.authid;
        if (typeof authid !== 'string' || !this.tickets.has(authid)) {
          this.log.warn('dev router: ticket authentication refused', { authid, reason: 'unknown principal' });
          this.abort(ctx, ERR.not_authorized, `no principal with authid "${String(authid)}" exists`);
          return;
        }
        session.waymark = { phase: 'challenged', authid, authrole: ROLE_BACKEND, authmethod: 'ticket', authprovider: 'static', roles } satisfies SessionAuth;
        session.setAuthMethod('ticket');
        ctx.wampSend([WAMP.CHALLENGE, 'ticket', {}]);
        return;
      }
      if (method === 'anonymous') {
        this.welcome(ctx, session, realm, { phase: 'joined', authid: serialNumber(), authrole: ROLE_FRONTEND, authmethod: 'anonymous', authprovider: 'static', roles });
        return;
      }
    }
    this.abort(ctx, ERR.no_auth_method, 'cannot authenticate using any of the offered authmethods');
  }

  private onAuthenticate(ctx: any, session: any, msg: any[]): void {
    const a = auth(session);
    if (session.realm !== null || !a || a.phase !== 'challenged') {
      ctx.wampClose(1002, 'protocol violation');
      return;
    }
    const expected = Buffer.from(this.tickets.get(a.authid) ?? '', 'utf8');
    const given = Buffer.from(typeof msg[0] === 'string' ? msg[0] : '', 'utf8');
    if (expected.length === 0 || given.length !== expected.length || !timingSafeEqual(given, expected)) {
      this.log.warn('dev router: ticket authentication refused', { authid: a.authid, reason: 'invalid ticket' });
      this.abort(ctx, ERR.not_authorized, 'invalid ticket presented');
      return;
    }
    this.welcome(ctx, session, this.getRouter().findRealm(session.realmName), { ...a, phase: 'joined' });
  }

  private welcome(ctx: any, session: any, realm: DevRealm, a: SessionAuth): void {
    session.waymark = a;
    session.setAuthMethod(a.authmethod);
    session.setUserDetails({ authid: a.authid, authrole: a.authrole });
    realm.joinSession(session);
    // Gap 10: Crossbar's WELCOME carries authid, authrole, authmethod and authprovider.
    ctx.wampSend([WAMP.WELCOME, session.sessionId, {
      realm: session.realmName,
      authid: a.authid,
      authrole: a.authrole,
      authmethod: a.authmethod,
      authprovider: a.authprovider,
      roles: {
        broker: { features: { publisher_exclusion: true, subscriber_blackwhite_listing: true, pattern_based_subscription: true, session_meta_api: true } },
        dealer: { features: { caller_identification: true, progressive_call_results: true, shared_registration: true, session_meta_api: true } },
      },
    }]);
    this.log.debug?.('dev router: session joined', { session: session.sessionId, authid: a.authid, authrole: a.authrole });
    // Gap 7: Crossbar's `wamp.session.on_join` carries the session details in args[0]
    // (fox-wamp put them in kwargs).
    realm.publishMeta('wamp.session.on_join', [sessionDetails(session)]);
  }

  private abort(ctx: any, reason: string, message: string): void {
    ctx.wampSend([WAMP.ABORT, { message }, reason], () => ctx.wampClose(1000, 'Server closed WAMP session'));
  }

  private onGoodbye(ctx: any): void {
    ctx.wampSend([WAMP.GOODBYE, {}, 'wamp.close.goodbye_and_out'], () => ctx.wampClose(1000, 'Server closed WAMP session'));
  }

  // --- authorization ----------------------------------------------------------------------

  /**
   * Gap 8: fox-wamp only has a synchronous hook for subscribe and publish. Crossbar asks the
   * role's permissions for every call, register, subscribe and publish:
   *   - `backend` has static permissions allowing everything, with the caller disclosed
   *     (crossbar/config.json: `disclose: {caller: true}`);
   *   - `frontend` is decided by the dynamic authorizer `waymark.authorize`, i.e. the very
   *     function of lib/authorizer.ts, with Crossbar's reading of its answer: true/{allow:true}
   *     allow without disclosure, {allow:true, disclose:true} discloses, false/{allow:false} is
   *     `not_authorized`, anything else or a throw is `authorization_failed`. While no session
   *     has registered `waymark.authorize` (Waymark not joined yet, e.g. right after a router
   *     restart), Crossbar cannot ask it and fails every action of the role with
   *     `authorization_failed`; so does this adapter, although the rule it applies is the
   *     in-process one, not the registered procedure.
   */
  private decide(session: any, uri: string, action: string, options: Record<string, string>): Decision {
    const a = auth(session);
    if (!a || a.phase !== 'joined') return { ok: false, error: ERR.not_authorized, message: 'session not joined' };
    if (a.authrole === ROLE_BACKEND) return { ok: true, disclose: action === 'call' };
    const engine = session.realm?.engine as DevEngine | undefined;
    if (!engine?.registrations(PROC_AUTHORIZE).some((r) => r.isActive())) {
      return { ok: false, error: ERR.authorization_failed, message: `authorizer '${PROC_AUTHORIZE}' of role '${a.authrole}' is not registered` };
    }
    const key = `${a.authrole}\u0000${uri}\u0000${action}`;
    const cached = this.authzCache.get(key);
    if (cached) return cached;
    const denied: Decision = {
      ok: false,
      error: ERR.not_authorized,
      message: `session is not authorized to ${action} '${uri}' (authrole '${a.authrole}')`,
    };
    const failed = (why: string): Decision => ({ ok: false, error: ERR.authorization_failed, message: `authorizer failed: ${why}` });
    let answer: unknown;
    try {
      const details = sessionDetails(session) as unknown as Parameters<typeof authorize>[0];
      answer = authorize(details, uri, action, options);
    } catch (err) {
      this.log.warn('dev router: authorizer threw', { uri, action, error: String(err) });
      return failed(String(err));
    }
    if (answer === true) return { ok: true, disclose: false };
    if (answer === false) return denied;
    if (!isObject(answer)) return failed('invalid answer');
    const known = ['allow', 'disclose', 'cache'];
    if (Object.keys(answer).some((k) => !known.includes(k)) || typeof answer.allow !== 'boolean'
      || !['boolean', 'undefined'].includes(typeof answer.disclose) || !['boolean', 'undefined'].includes(typeof answer.cache)) {
      return failed('invalid answer');
    }
    const decision: Decision = answer.allow ? { ok: true, disclose: answer.disclose === true } : denied;
    if (answer.cache === true) this.authzCache.set(key, decision);
    return decision;
  }

  // --- dealer -----------------------------------------------------------------------------

  private onRegister(ctx: any, session: any, msg: any[]): void {
    const [id, rawOpt, uri] = msg;
    this.checkRealm(session, id);
    const opt = isObject(rawOpt) ? rawOpt : {};
    const fail = (error: string, message: string) => ctx.wampSendError(WAMP.REGISTER, id, error, [message]);
    if (typeof uri !== 'string' || !URI_EXACT.test(uri)) return fail(ERR.invalid_uri, `invalid procedure URI '${String(uri)}'`);
    // Crossbar reserves `wamp.*` and `crossbar.*` for the router's own procedures.
    if (uri.startsWith('wamp.') || uri.startsWith('crossbar.')) return fail(ERR.invalid_uri, `register for restricted procedure URI '${uri}'`);
    const d = this.decide(session, uri, 'register', {});
    if (!d.ok) return fail(d.error, d.message);
    if (opt.match !== undefined && opt.match !== 'exact') {
      return fail(ERR.invalid_argument, 'this dev router (fox-wamp) does not support pattern-based registrations');
    }
    const invoke = opt.invoke ?? 'single';
    if (!INVOKE_POLICIES.includes(invoke)) return fail(ERR.invalid_argument, `invalid invoke policy '${String(invoke)}'`);
    // Gap 6: Crossbar refuses a second registration of a 'single' procedure, and a shared one
    // with another invoke policy than the existing registrations.
    const existing = (session.realm.engine as DevEngine).registrations(uri);
    if (existing.length > 0) {
      const policy = existing[0].msg.opt.invoke ?? 'single';
      if (policy === 'single') return fail(ERR.procedure_already_exists, `register for already registered procedure '${uri}'`);
      if (policy !== invoke) {
        return fail(ERR.different_policy, `register for already registered procedure '${uri}' with conflicting invocation policy (has ${policy} and ${String(invoke)} was requested)`);
      }
    }
    const cmdOpt = { simultaneousTaskLimit: Number.isInteger(opt.concurrency) ? opt.concurrency : -1, invoke };
    session.realm.cmdRegRpc(ctx, { id, uri: uri.split('.'), opt: cmdOpt });
  }

  private onCall(ctx: any, session: any, msg: any[]): void {
    const [id, rawOpt, uri, args, kwargs] = msg;
    this.checkRealm(session, id);
    const opt = isObject(rawOpt) ? rawOpt : {};
    const fail = (error: string, message: string) => ctx.wampSendError(WAMP.CALL, id, error, [message]);
    if (typeof uri !== 'string' || !URI_EXACT.test(uri)) return fail(ERR.invalid_uri, `invalid procedure URI '${String(uri)}'`);
    const d = this.decide(session, uri, 'call', {});
    if (!d.ok) return fail(d.error, d.message);
    const callArgs = Array.isArray(args) ? args : [];
    if (this.metaCall(ctx, session, id, uri, callArgs)) return;
    const cmd: any = { id, uri: uri.split('.'), opt: {}, hdr: isObject(kwargs) ? kwargs : {}, data: { args: callArgs } };
    if (opt.receive_progress) cmd.opt.receive_progress = true;
    if (d.disclose) {
      // Gap 3: Crossbar's caller disclosure (role permission or authorizer `disclose: true`).
      const a = auth(session)!;
      cmd.opt.caller = session.sessionId;
      cmd.opt.caller_authid = a.authid;
      cmd.opt.caller_authrole = a.authrole;
    }
    session.realm.cmdCallRpc(ctx, cmd);
  }

  /**
   * Gap 7: the session meta procedures with Crossbar's shapes, answered by the router itself
   * (fox-wamp's come from an internal session that counts itself and whose `get` returns only
   * `{session}`). Crossbar: `count(filter_authroles?)` -> n, `list(filter_authroles?)` ->
   * `[id, ...]`, `get(id)` -> session details or `wamp.error.no_such_session`.
   */
  private metaCall(ctx: any, session: any, id: unknown, uri: string, args: unknown[]): boolean {
    if (uri !== 'wamp.session.count' && uri !== 'wamp.session.list' && uri !== 'wamp.session.get') return false;
    const realm = session.realm as DevRealm & { _sessions: Map<number, any> };
    const sessions = [...realm._sessions.values()];
    let result: unknown;
    if (uri === 'wamp.session.get') {
      const target = sessions.find((s) => s.sessionId === args[0]);
      if (!target) {
        ctx.wampSendError(WAMP.CALL, id, ERR.no_such_session, [`no session with ID ${String(args[0])} exists on this router`]);
        return true;
      }
      result = sessionDetails(target);
    } else {
      const roles = args[0];
      const ids = sessions
        .filter((s) => !Array.isArray(roles) || roles.includes(auth(s)?.authrole))
        .map((s) => s.sessionId as number);
      result = uri === 'wamp.session.list' ? ids : ids.length;
    }
    ctx.wampSend([WAMP.RESULT, id, {}, [result]]);
    return true;
  }

  /**
   * fox-wamp answers a YIELD for an unknown invocation with an ERROR the callee does not
   * expect (autobahn-js then drops the connection). Crossbar ignores it: it happens when the
   * caller left (gap 9) before the callee answered.
   */
  private onYield(ctx: any, session: any, msg: any[]): void {
    const [qid, rawOpt, args, kwargs] = msg;
    this.checkRealm(session, qid);
    if (!session.realm.engine.qYield.getDefer(session.sessionId, qid)) {
      this.log.debug?.('dev router: YIELD for an invocation that is gone', { session: session.sessionId, qid });
      return;
    }
    const progress = isObject(rawOpt) && rawOpt.progress === true;
    session.realm.cmdYield(ctx, {
      qid,
      hdr: isObject(kwargs) ? kwargs : undefined,
      data: { args: Array.isArray(args) ? args : [] },
      opt: {},
      rqt: progress ? RESULT_EMIT : RESULT_OK,
    });
  }

  /** Gap 4: the callee's ERROR keeps its URI, args and kwargs on its way to the caller. */
  private onError(ctx: any, session: any, msg: any[]): void {
    const [requestType, qid, , error, args, kwargs] = msg;
    if (requestType !== WAMP.INVOCATION) return;
    this.checkRealm(session, qid);
    if (!session.realm.engine.qYield.getDefer(session.sessionId, qid)) return; // see onYield
    session.realm.cmdYield(ctx, {
      qid,
      err: typeof error === 'string' && error ? error : 'wamp.error.runtime_error',
      hdr: isObject(kwargs) ? kwargs : undefined,
      data: { args: Array.isArray(args) ? args : [] },
      opt: {},
      rqt: RESULT_OK,
    });
  }

  // --- broker -----------------------------------------------------------------------------

  private onSubscribe(ctx: any, session: any, msg: any[]): void {
    const [id, rawOpt, uri] = msg;
    this.checkRealm(session, id);
    const opt = isObject(rawOpt) ? rawOpt : {};
    const fail = (error: string, message: string) => ctx.wampSendError(WAMP.SUBSCRIBE, id, error, [message]);
    const match = opt.match ?? 'exact';
    const pattern = match === 'prefix' ? URI_PREFIX : match === 'wildcard' ? URI_WILDCARD : match === 'exact' ? URI_EXACT : undefined;
    if (!pattern) return fail(ERR.invalid_argument, `invalid match type '${String(match)}'`);
    if (typeof uri !== 'string' || !pattern.test(uri)) return fail(ERR.invalid_uri, `invalid topic URI '${String(uri)}' for match '${match}'`);
    // fox-wamp's topic trie reads '*' as a wildcard even in an exact subscription.
    if (match === 'exact' && uri.split('.').includes('*')) return fail(ERR.invalid_uri, `topic URI component '*' is not supported by this dev router: '${uri}'`);
    // Crossbar passes the authorizer `{}` for an exact subscribe and `{match}` for patterns.
    const d = this.decide(session, uri, 'subscribe', match === 'exact' ? {} : { match });
    if (!d.ok) return fail(d.error, d.message);
    // WAMP patterns to fox-wamp's (qlobber) ones: a prefix `a.b` becomes `a.b.#` (so it matches
    // whole components only, where Crossbar also matches `a.bc`), an empty wildcard part `*`.
    let parts: string[];
    if (match === 'prefix') {
      const base = uri.endsWith('.') ? uri.slice(0, -1) : uri;
      parts = base ? [...base.split('.'), '#'] : ['#'];
    } else if (match === 'wildcard') {
      parts = uri.split('.').map((p) => (p === '' ? '*' : p));
    } else {
      parts = uri.split('.');
    }
    session.realm.cmdTrace(ctx, { id, uri: parts, opt: {} });
  }

  private onPublish(ctx: any, session: any, msg: any[]): void {
    const [id, rawOpt, uri, args, kwargs] = msg;
    const opt = isObject(rawOpt) ? rawOpt : {};
    const ack = opt.acknowledge === true;
    // Crossbar answers a failed publish only when it was to be acknowledged (autobahn-js even
    // treats an unexpected PUBLISH ERROR as a protocol violation).
    const fail = (error: string, message: string) => {
      if (ack) ctx.wampSendError(WAMP.PUBLISH, id, error, [message]);
      else this.log.debug?.('dev router: publish refused', { session: session.sessionId, uri, error });
    };
    if (session.realm === null) return fail(ERR.not_authorized, 'session not joined');
    if (typeof uri !== 'string' || !URI_EXACT.test(uri)) return fail(ERR.invalid_uri, `invalid topic URI '${String(uri)}'`);
    if (uri.startsWith('wamp.') || uri.startsWith('crossbar.')) return fail(ERR.invalid_uri, `publish to restricted topic '${uri}'`);
    const d = this.decide(session, uri, 'publish', {});
    if (!d.ok) return fail(d.error, d.message);
    const cmdOpt: Record<string, unknown> = { exclude_me: opt.exclude_me !== false };
    for (const k of ['eligible', 'exclude', 'eligible_authid', 'exclude_authid', 'eligible_authrole', 'exclude_authrole']) {
      if (Array.isArray(opt[k])) cmdOpt[k] = opt[k];
    }
    session.realm.cmdPush(ctx, {
      id,
      uri: uri.split('.'),
      hdr: isObject(kwargs) ? kwargs : null,
      data: { args: Array.isArray(args) ? args : [] },
      ack,
      opt: cmdOpt,
    });
  }
}

// ---------------------------------------------------------------------------------------------

const silentLogger: Logger = { info() {}, warn() {}, debug() {} };

/** The fox-wamp router core, with our realm class (fox's base class would use its BaseEngine). */
class DevFoxRouter extends FoxCoreRouter {
  constructor(private readonly log: Logger, readonly routeCostUs = 0) {
    super();
  }

  createRealm(): DevRealm {
    return new DevRealm(this, new DevEngine(), this.log);
  }
}

export async function startDevRouter(opts: DevRouterOptions = {}): Promise<DevRouter> {
  const host = (opts.host ?? '127.0.0.1').replace(/^\[(.*)\]$/, '$1');
  const path = opts.path ?? '/ws';
  const realmName = opts.realm ?? 'realm1';
  const log: Logger = opts.logger ?? silentLogger;

  const router = new DevFoxRouter(log, Math.max(0, opts.routeCostUs ?? 0));
  // initRealm, not getRealm: fox-wamp's realm-name check (/^[a-z0-9_]+$/) is stricter than
  // Crossbar's. Unknown realms are refused at HELLO (Crossbar: wamp.error.no_such_realm).
  await router.initRealm(realmName, router.createRealm());
  const gate = new DevGate(router, { realmName, tickets: new Map(Object.entries(opts.backendTickets ?? {})), log });

  // ws serves only `path` and refuses other paths with HTTP 400; the WAMP subprotocol check
  // (wamp.2.json only) is fox-wamp's.
  const wss = new WampServer(gate, { host, port: opts.port ?? 0, path: path || undefined });
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => { wss.off('listening', onListening); reject(err); };
    const onListening = () => { wss.off('error', onError); resolve(); };
    wss.once('error', onError);
    wss.once('listening', onListening);
  });
  wss.on('error', (err: Error) => log.warn('dev router: listener error', { error: err.message }));
  // A socket error (bad frame, reset) must not become an unhandled 'error' event.
  wss.on('connection', (ws: any) => ws.on('error', (err: Error) => log.debug?.('dev router: socket error', { error: err.message })));

  const port = (wss.address() as AddressInfo).port;
  const urlHost = host.includes(':') ? `[${host}]` : host;
  const url = `ws://${urlHost}:${port}${path}`;
  log.info('dev router listening', { url, realm: realmName });

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      // Close every client with 1001 (going away), not GOODBYE: autobahn stops reconnecting
      // after a GOODBYE, while a dropped router (restart) is something clients must survive.
      const clients = [...wss.clients] as any[];
      await Promise.all(clients.map((ws) => new Promise<void>((resolve) => {
        if (ws.readyState === 3 /* CLOSED */) { resolve(); return; }
        const timer = setTimeout(() => { ws.terminate(); resolve(); }, 1000);
        ws.once('close', () => { clearTimeout(timer); resolve(); });
        ws.close(1001, 'router shutting down');
      })));
      await new Promise<void>((resolve) => wss.close(() => resolve()));
      log.info('dev router closed', { url });
    })();
    return closing;
  };

  return { url, realm: realmName, port, close };
}
