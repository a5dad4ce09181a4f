/**
 * The dev router adapter (dev/router.ts): fox-wamp made to behave like Crossbar 22.6.1 where
 * Waymark relies on it. Real autobahn clients over WebSocket against a router started here.
 * Self-contained: no root hooks, its own router on an ephemeral port.
 */
import { createRequire } from 'node:module';
import { expect } from 'chai';
import autobahn from 'autobahn';
import { startDevRouter, type DevRouter } from '../dev/router.js';
import { ANNOUNCE_TOPIC, PROC_AUTHORIZE, sessionTopic, WAMP_SUBPROTOCOLS } from '../lib/protocol/uris.js';

const TICKETS = { waymark: 'tkt-waymark', other: 'tkt-other' };

/** A WAMP client of the test, closed by afterEach. */
interface Peer {
  conn: autobahn.Connection;
  session: autobahn.Session;
  details: Record<string, any>;
  id: number;
  /** Resolves when the connection is closed (for any reason). */
  closed: Promise<{ reason: string; details: any }>;
  close(): Promise<void>;
}

interface Refused { reason: string; details: any; opened: boolean }

const peers: Peer[] = [];

interface OpenOptions { url?: string; realm?: string; authid?: string; ticket?: string; authmethods?: string[] }

function connect(url: string, o: OpenOptions = {}): Promise<Peer> {
  return new Promise((resolve, reject) => {
    const conn = new autobahn.Connection({
      url: o.url ?? url,
      realm: o.realm ?? 'realm1',
      protocols: WAMP_SUBPROTOCOLS,
      max_retries: 0,
      retry_if_unreachable: false,
      ...(o.authmethods ? { authmethods: o.authmethods } : {}),
      ...(o.authid !== undefined ? { authmethods: o.authmethods ?? ['ticket'], authid: o.authid, onchallenge: () => o.ticket ?? '' } : {}),
    });
    let opened = false;
    let markClosed!: (v: { reason: string; details: any }) => void;
    const closed = new Promise<{ reason: string; details: any }>((r) => { markClosed = r; });
    conn.onopen = (session, details) => {
      opened = true;
      const peer: Peer = {
        conn, session, details, id: session.id, closed,
        async close() {
          if (conn.isOpen) { try { conn.close(); } catch { /* already closing */ } }
          await closed;
        },
      };
      peers.push(peer);
      resolve(peer);
    };
    conn.onclose = (reason, details) => {
      markClosed({ reason, details });
      if (!opened) reject({ reason: details?.reason ?? reason, details, opened } satisfies Refused);
      return true; // never retry
    };
    conn.open();
  });
}

async function refused(p: Promise<Peer>): Promise<Refused> {
  try {
    const peer = await p;
    await peer.close();
  } catch (e) {
    return e as Refused;
  }
  throw new Error('expected the session to be refused, but it opened');
}

/** The WAMP error of a rejected call/subscribe/register/publish. */
async function wampError(p: PromiseLike<unknown>): Promise<{ error: string; args: unknown[]; kwargs: any }> {
  try {
    await p;
  } catch (e) {
    const err = e as { error?: string; args?: unknown[]; kwargs?: unknown };
    if (typeof err?.error !== 'string') throw e;
    return { error: err.error, args: err.args ?? [], kwargs: err.kwargs ?? {} };
  }
  throw new Error('expected a WAMP error, the request succeeded');
}

async function waitFor(cond: () => boolean | Promise<boolean>, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Fails after `ms` instead of letting a hanging request run into mocha's timeout. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms); });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** `ws`, the WebSocket library autobahn itself uses: for a client whose socket just drops. */
const WebSocketClient: any = createRequire(createRequire(import.meta.url).resolve('autobahn'))('ws');

/**
 * A raw WAMP client (JSON over `ws`): joins anonymously, or with a ticket, and hands back its
 * session id and the socket, so a test can drop the socket without any closing handshake.
 */
function rawJoin(url: string, ticket?: { authid: string; ticket: string }): Promise<{ id: number; ws: any }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocketClient(url, ['wamp.2.json']);
    ws.on('error', reject);
    const hello = { roles: { caller: {} }, ...(ticket ? { authmethods: ['ticket'], authid: ticket.authid } : {}) };
    ws.on('open', () => ws.send(JSON.stringify([1, 'realm1', hello])));
    ws.on('message', (data: Buffer) => {
      const msg = JSON.parse(data.toString());
      if (msg[0] === 4 && ticket) ws.send(JSON.stringify([5, ticket.ticket, {}]));
      else if (msg[0] === 2) resolve({ id: msg[1], ws });
      else reject(new Error(`unexpected ${data.toString()}`));
    });
  });
}

describe('dev router adapter (fox-wamp behaving like Crossbar 22.6.1)', function () {
  let router: DevRouter | undefined;
  let url = '';
  const backend = (authid: keyof typeof TICKETS = 'waymark') => connect(url, { authid, ticket: TICKETS[authid] });
  const frontend = () => connect(url);
  /**
   * A backend holding the `waymark.authorize` registration, as Waymark does: without one the
   * router refuses every frontend action (the adapter applies the in-process rule, so the
   * procedure itself is never called).
   */
  const authorizer = async (authid: keyof typeof TICKETS = 'waymark') => {
    const b = await backend(authid);
    await b.session.register(PROC_AUTHORIZE, () => { throw new Error('the adapter does not call the registered authorizer'); }, { invoke: 'roundrobin' } as autobahn.IRegisterOptions);
    return b;
  };

  before(async function () {
    // This spec tests the adapter itself, not an external router: when the suite runs against
    // another router (WAYMARK_TEST_ROUTER_URL, e.g. a real Crossbar), there is nothing to test.
    if (process.env.WAYMARK_TEST_ROUTER_URL) this.skip(); // skipped on purpose: against an external router there is no adapter to test
    router = await startDevRouter({ port: 0, backendTickets: TICKETS });
    url = router.url;
  });

  afterEach(async function () {
    await Promise.all(peers.splice(0).map((p) => p.close()));
  });

  after(async function () {
    await router?.close();
  });

  /** Session ids the router currently knows, as a backend sees them. */
  async function liveSessions(asker: Peer): Promise<number[]> {
    return (await asker.session.call<number[]>('wamp.session.list')) as number[];
  }

  describe('listener', function () {
    it('serves the WebSocket at /ws on an ephemeral port of 127.0.0.1', function () {
      expect(router!.url).to.match(/^ws:\/\/127\.0\.0\.1:\d+\/ws$/);
      expect(router!.port).to.be.above(0);
      expect(router!.url).to.equal(`ws://127.0.0.1:${router!.port}/ws`);
      expect(router!.realm).to.equal('realm1');
    });

    it('serves no other path', async function () {
      const r = await refused(connect(url, { url: url.replace(/\/ws$/, '/other') }));
      expect(r.opened).to.equal(false);
      expect(r.reason).to.equal('unreachable'); // the WebSocket upgrade itself is refused
    });

    it('refuses an unknown realm with wamp.error.no_such_realm', async function () {
      const r = await refused(connect(url, { realm: 'nope' }));
      expect(r.reason).to.equal('wamp.error.no_such_realm');
    });
  });

  describe('authentication (one listener, two roles)', function () {
    it('welcomes a right ticket as authrole backend', async function () {
      const p = await backend();
      expect(p.details.authrole).to.equal('backend');
      expect(p.details.authid).to.equal('waymark');
      expect(p.details.authmethod).to.equal('ticket');
    });

    it('refuses a wrong ticket with wamp.error.not_authorized, the session never opens', async function () {
      const r = await refused(connect(url, { authid: 'waymark', ticket: 'wrong' }));
      expect(r.opened).to.equal(false);
      expect(r.reason).to.equal('wamp.error.not_authorized');
    });

    it('refuses a ticket for an unknown authid', async function () {
      const r = await refused(connect(url, { authid: 'mallory', ticket: TICKETS.waymark }));
      expect(r.reason).to.equal('wamp.error.not_authorized');
    });

    it('welcomes a client offering no authmethods as anonymous authrole frontend', async function () {
      const p = await frontend();
      expect(p.details.authrole).to.equal('frontend');
      expect(p.details.authmethod).to.equal('anonymous');
      expect(p.details.authid).to.match(/^[0-9A-Z]{4}(-[0-9A-Z]{4}){5}$/);
    });

    it('welcomes authmethods ["anonymous"] as frontend too', async function () {
      const p = await connect(url, { authmethods: ['anonymous'] });
      expect(p.details.authrole).to.equal('frontend');
    });

    it('refuses only unsupported authmethods with wamp.error.no_auth_method', async function () {
      const r = await refused(connect(url, { authmethods: ['wampcra'] }));
      expect(r.reason).to.equal('wamp.error.no_auth_method');
    });
  });

  describe('authorization', function () {
    it('lets backend register, call, subscribe by prefix and publish', async function () {
      const b = await backend();
      const events: unknown[] = [];
      await b.session.register('test.backend.echo', (args) => args![0]);
      await b.session.subscribe('test.backend.', (args) => { events.push(args![0]); }, { match: 'prefix' });
      expect(await b.session.call('test.backend.echo', ['hi'])).to.equal('hi');
      await b.session.publish('test.backend.x', ['ev'], {}, { acknowledge: true, exclude_me: false });
      await waitFor(() => events.length === 1, 'the prefix event');
      expect(events).to.deep.equal(['ev']);
      const wild: unknown[] = [];
      await b.session.subscribe('test..w', (_a, _k, d) => { wild.push(d!.topic); }, { match: 'wildcard' });
      await b.session.publish('test.x.w', [], {}, { acknowledge: true, exclude_me: false });
      await b.session.publish('test.x.y.w', [], {}, { acknowledge: true, exclude_me: false });
      await b.session.publish('test.y.w', [], {}, { acknowledge: true, exclude_me: false });
      await waitFor(() => wild.length === 2, 'the wildcard events');
      expect(wild).to.deep.equal(['test.x.w', 'test.y.w']);
    });

    it('keeps unregister and unsubscribe working', async function () {
      const b = await backend();
      const got: unknown[] = [];
      const sub = await b.session.subscribe('test.unsub', (args) => { got.push(args![0]); });
      await b.session.publish('test.unsub', [1], {}, { acknowledge: true, exclude_me: false });
      await waitFor(() => got.length === 1, 'the first event');
      await b.session.unsubscribe(sub);
      await b.session.publish('test.unsub', [2], {}, { acknowledge: true, exclude_me: false });
      const reg = await b.session.register('test.unreg', () => 'x');
      expect(await b.session.call('test.unreg')).to.equal('x');
      await b.session.unregister(reg);
      expect((await wampError(b.session.call('test.unreg'))).error).to.equal('wamp.error.no_such_procedure');
      expect(got).to.deep.equal([1]);
    });

    it('lets frontend call the client procedures and subscribe to its own session topic', async function () {
      const b = await authorizer();
      for (const proc of ['waymark.watch', 'waymark.unwatch', 'waymark.refresh']) {
        await b.session.register(proc, () => proc);
      }
      const f = await frontend();
      expect(await f.session.call('waymark.watch', ['/x'])).to.equal('waymark.watch');
      expect(await f.session.call('waymark.unwatch', ['/x'])).to.equal('waymark.unwatch');
      expect(await f.session.call('waymark.refresh', [{}])).to.equal('waymark.refresh');
      const got: unknown[] = [];
      await f.session.subscribe(sessionTopic(f.id), (args) => { got.push(args![0]); });
      await b.session.publish(sessionTopic(f.id), ['u1'], {}, { acknowledge: true, eligible: [f.id] });
      await waitFor(() => got.length === 1, 'the update');
      expect(got).to.deep.equal(['u1']);
    });

    it('denies frontend everything else with wamp.error.not_authorized', async function () {
      const b = await authorizer();
      await b.session.register('test.secret', () => 'secret');
      const f = await frontend();
      const other = await frontend();
      const denied = [
        await wampError(f.session.subscribe(sessionTopic(other.id), () => undefined)),
        await wampError(f.session.subscribe('waymark.session.', () => undefined, { match: 'prefix' })),
        await wampError(f.session.subscribe('waymark.session', () => undefined, { match: 'prefix' })),
        await wampError(f.session.subscribe('waymark..' + String(f.id), () => undefined, { match: 'wildcard' })),
        await wampError(f.session.register('waymark.watch.evil', () => undefined)),
        await wampError(f.session.publish(sessionTopic(other.id), ['x'], {}, { acknowledge: true })),
        await wampError(f.session.call('test.secret')),
        await wampError(f.session.call('wamp.session.list')),
        await wampError(f.session.subscribe('wamp.session.on_leave', () => undefined)),
      ];
      expect(denied.map((d) => d.error)).to.deep.equal(Array(denied.length).fill('wamp.error.not_authorized'));
      // the frontend session survived all of it
      expect(f.conn.isOpen).to.equal(true);
    });

    it('fails every frontend action with wamp.error.authorization_failed while no session has registered waymark.authorize (gap 8)', async function () {
      const b = await backend();
      await b.session.register('waymark.watch', () => 'ok');
      const f = await frontend();
      const failed = async () => [
        await wampError(f.session.subscribe(sessionTopic(f.id), () => undefined)),
        await wampError(f.session.subscribe(ANNOUNCE_TOPIC, () => undefined)),
        await wampError(f.session.call('waymark.watch', ['/x'])),
        await wampError(f.session.publish(ANNOUNCE_TOPIC, ['x'], {}, { acknowledge: true })),
      ].map((e) => e.error);
      expect(await failed()).to.deep.equal(Array(4).fill('wamp.error.authorization_failed'));
      // the backend role has static permissions: no authorizer involved
      const got: unknown[] = [];
      await b.session.subscribe(ANNOUNCE_TOPIC, (args) => { got.push(args![0]); });
      expect(await b.session.call('waymark.watch', ['/x'])).to.equal('ok');

      // Two instances share the registration: one leaving keeps the role served.
      const a1 = await authorizer();
      const a2 = await authorizer('other');
      await f.session.subscribe(sessionTopic(f.id), () => undefined);
      await f.session.subscribe(ANNOUNCE_TOPIC, () => undefined);
      expect(await f.session.call('waymark.watch', ['/x'])).to.equal('ok');
      await a1.close();
      expect(await f.session.call('waymark.watch', ['/y'])).to.equal('ok');
      // The last one leaving (a kill: the socket just drops) leaves the role unserved again.
      (a2.conn as unknown as { _transport: { close(): void } })._transport.close();
      await a2.closed;
      await waitFor(async () => (await liveSessions(b)).includes(a2.id) === false, 'the authorizer session gone');
      expect(await failed()).to.deep.equal(Array(4).fill('wamp.error.authorization_failed'));
      // the refusals cost the frontend session nothing
      expect(f.conn.isOpen).to.equal(true);
    });

    it('does not deliver a denied frontend publish (without acknowledge) and keeps the session', async function () {
      const b = await backend();
      const f = await frontend();
      const got: unknown[] = [];
      await b.session.subscribe('test.frontend.pub', (args) => { got.push(args![0]); });
      await f.session.publish('test.frontend.pub', ['sneaky']);
      await b.session.publish('test.frontend.pub', ['marker'], {}, { acknowledge: true, exclude_me: false });
      await waitFor(() => got.includes('marker'), 'the marker');
      expect(got).to.deep.equal(['marker']);
      expect(f.conn.isOpen).to.equal(true);
    });
  });

  describe('caller disclosure', function () {
    it('discloses a frontend caller of an authorizer-allowed procedure', async function () {
      const b = await authorizer();
      let seen: any;
      await b.session.register('waymark.watch', (_a, _k, details) => { seen = details; return 'ok'; });
      const f = await frontend();
      await f.session.call('waymark.watch', ['/a']);
      expect(seen.caller).to.equal(f.id);
      expect(seen.caller_authid).to.equal(f.details.authid);
      expect(seen.caller_authrole).to.equal('frontend');
    });

    it('discloses a backend caller', async function () {
      const callee = await backend();
      const caller = await backend('other');
      let seen: any;
      await callee.session.register('test.disclose', (_a, _k, details) => { seen = details; return 1; });
      await caller.session.call('test.disclose');
      expect(seen.caller).to.equal(caller.id);
      expect(seen.caller_authid).to.equal('other');
      expect(seen.caller_authrole).to.equal('backend');
    });
  });

  describe('errors', function () {
    it('passes an application error through with its URI, args and kwargs', async function () {
      const b = await backend();
      await b.session.register('test.fails', () => {
        throw new autobahn.Error('waymark.error.invalid_path', ['not an origin-relative path'], { field: 'path' });
      });
      const f = await backend('other');
      const e = await wampError(f.session.call('test.fails', ['//evil']));
      expect(e.error).to.equal('waymark.error.invalid_path');
      expect(e.args).to.deep.equal(['not an origin-relative path']);
      expect(e.kwargs).to.deep.equal({ field: 'path' });
    });

    it('answers a call without callee with wamp.error.no_such_procedure', async function () {
      const b = await backend();
      const e = await wampError(b.session.call('test.nobody.home'));
      expect(e.error).to.equal('wamp.error.no_such_procedure');
    });
  });

  describe('publish options', function () {
    /**
     * A publisher and three subscribers (backend sessions); publishes one event with the options
     * made by `options(subs)`, then a marker to everyone, and tells who received the event.
     * Events on one connection keep their order: once the marker is there, the event would have
     * been there too, so "not received" means never.
     */
    async function deliver(options: (subs: Peer[]) => autobahn.IPublishOptions, { publisherSubscribes = false } = {}) {
      const topic = `test.opts.${Math.random().toString(36).slice(2)}`;
      const pub = await backend();
      const subs = [await backend(), await backend(), await backend()];
      const listeners = publisherSubscribes ? [...subs, pub] : subs;
      const got = new Map<number, unknown[]>();
      for (const s of listeners) {
        got.set(s.id, []);
        await s.session.subscribe(topic, (args) => { got.get(s.id)!.push(args![0]); });
      }
      await pub.session.publish(topic, ['event'], {}, { acknowledge: true, ...options(subs) });
      await pub.session.publish(topic, ['marker'], {}, { acknowledge: true, exclude_me: false });
      await waitFor(() => listeners.every((s) => got.get(s.id)!.includes('marker')), 'the markers');
      const received = (p: Peer) => got.get(p.id)!.includes('event');
      return { pub, subs, received };
    }

    it('delivers to everyone without eligible, and with an empty eligible list (as Crossbar)', async function () {
      const none = await deliver(() => ({}));
      expect(none.subs.map(none.received)).to.deep.equal([true, true, true]);
      const empty = await deliver(() => ({ eligible: [] }));
      expect(empty.subs.map(empty.received)).to.deep.equal([true, true, true]);
    });

    it('delivers to the eligible sessions only', async function () {
      const d = await deliver((subs) => ({ eligible: [subs[1]!.id] }));
      expect(d.subs.map(d.received)).to.deep.equal([false, true, false]);
    });

    it('never delivers to excluded sessions', async function () {
      const d = await deliver((subs) => ({ exclude: [subs[0]!.id, subs[2]!.id] }));
      expect(d.subs.map(d.received)).to.deep.equal([false, true, false]);
      const both = await deliver((subs) => ({ eligible: [subs[0]!.id, subs[1]!.id], exclude: [subs[0]!.id] }));
      expect(both.subs.map(both.received)).to.deep.equal([false, true, false]);
    });

    it('leaves the publisher out unless exclude_me is false', async function () {
      const byDefault = await deliver(() => ({}), { publisherSubscribes: true });
      expect(byDefault.received(byDefault.pub)).to.equal(false);
      expect(byDefault.subs.map(byDefault.received)).to.deep.equal([true, true, true]);
      const withMe = await deliver(() => ({ exclude_me: false }), { publisherSubscribes: true });
      expect(withMe.received(withMe.pub)).to.equal(true);
    });

    it('sends no publisher identity in EVENT details', async function () {
      const pub = await backend();
      const sub = await backend();
      let details: any;
      await sub.session.subscribe('test.opts.details', (_a, _k, d) => { details = d; });
      await pub.session.publish('test.opts.details', ['x'], {}, { acknowledge: true });
      await waitFor(() => details !== undefined, 'the event');
      expect(details.publisher).to.equal(undefined);
      expect(details.publication).to.be.a('number');
    });
  });

  describe('shared registrations', function () {
    const whoAnswers = async (caller: Peer, proc: string, n: number) => {
      const out: string[] = [];
      for (let i = 0; i < n; i++) out.push(await caller.session.call<string>(proc) as string);
      return out;
    };

    it('balances roundrobin registrations and skips a callee that left', async function () {
      const a = await backend();
      const b = await backend();
      const c = await backend();
      await a.session.register('test.rr', () => 'a', { invoke: 'roundrobin' });
      await b.session.register('test.rr', () => 'b', { invoke: 'roundrobin' });
      await c.session.register('test.rr', () => 'c', { invoke: 'roundrobin' });
      const caller = await backend('other');
      expect(await whoAnswers(caller, 'test.rr', 6)).to.deep.equal(['a', 'b', 'c', 'a', 'b', 'c']);
      await b.close();
      await waitFor(async () => !(await liveSessions(caller)).includes(b.id), 'b to leave');
      const after = await whoAnswers(caller, 'test.rr', 4);
      expect(after).to.not.include('b');
      expect(new Set(after)).to.deep.equal(new Set(['a', 'c']));
      expect(after[0]).to.not.equal(after[1]);
    });

    it('honours first and last', async function () {
      const a = await backend();
      const b = await backend();
      await a.session.register('test.first', () => 'a', { invoke: 'first' });
      await b.session.register('test.first', () => 'b', { invoke: 'first' });
      await a.session.register('test.last', () => 'a', { invoke: 'last' });
      await b.session.register('test.last', () => 'b', { invoke: 'last' });
      expect(await whoAnswers(a, 'test.first', 3)).to.deep.equal(['a', 'a', 'a']);
      expect(await whoAnswers(a, 'test.last', 3)).to.deep.equal(['b', 'b', 'b']);
    });

    it('refuses another invoke policy and a second single registration', async function () {
      const a = await backend();
      const b = await backend();
      await a.session.register('test.shared', () => 'a', { invoke: 'roundrobin' });
      const conflict = await wampError(b.session.register('test.shared', () => 'b', { invoke: 'random' }));
      expect(conflict.error).to.equal('wamp.error.procedure_exists_with_different_invocation_policy');
      await a.session.register('test.single', () => 'a');
      const dup = await wampError(b.session.register('test.single', () => 'b'));
      expect(dup.error).to.equal('wamp.error.procedure_already_exists');
      const dupShared = await wampError(b.session.register('test.single', () => 'b', { invoke: 'roundrobin' }));
      expect(dupShared.error).to.equal('wamp.error.procedure_already_exists');
      // the single registration still answers, and once its callee is gone the URI is free
      expect(await b.session.call('test.single')).to.equal('a');
      await a.close();
      await waitFor(async () => !(await liveSessions(b)).includes(a.id), 'a to leave');
      await b.session.register('test.single', () => 'b');
      expect(await b.session.call('test.single')).to.equal('b');
    });
  });

  describe('session meta API', function () {
    it('publishes wamp.session.on_join with the session details in args[0]', async function () {
      const b = await backend();
      const joins: any[] = [];
      await b.session.subscribe('wamp.session.on_join', (args) => { joins.push(args![0]); });
      const f = await frontend();
      await waitFor(() => joins.some((j) => j?.session === f.id), 'on_join');
      const j = joins.find((x) => x.session === f.id);
      expect(j).to.include({ session: f.id, authid: f.details.authid, authrole: 'frontend', authmethod: 'anonymous' });
    });

    it('publishes wamp.session.on_leave [session_id] on close and on a dropped socket', async function () {
      const b = await backend();
      const leaves: unknown[][] = [];
      await b.session.subscribe('wamp.session.on_leave', (args) => { leaves.push(args!); });
      const f = await frontend();
      await f.close();
      await waitFor(() => leaves.some((l) => l[0] === f.id), 'on_leave after close');
      expect(leaves.find((l) => l[0] === f.id)).to.deep.equal([f.id]);
      const raw = await rawJoin(url);
      raw.ws.terminate(); // no WAMP GOODBYE, no WebSocket close frame
      await waitFor(() => leaves.some((l) => l[0] === raw.id), 'on_leave after a socket drop');
      expect(leaves.find((l) => l[0] === raw.id)).to.deep.equal([raw.id]);
    });

    it('answers wamp.session.list, count and get like Crossbar', async function () {
      const b = await backend();
      const f = await frontend();
      const list = await liveSessions(b);
      expect(list).to.be.an('array').that.includes(b.id).and.includes(f.id);
      expect(list.every((x) => typeof x === 'number')).to.equal(true);
      expect(await b.session.call('wamp.session.count')).to.equal(list.length);
      expect(await b.session.call('wamp.session.list', [['frontend']])).to.include(f.id).and.not.include(b.id);
      expect(await b.session.call('wamp.session.count', [['backend']])).to.be.at.least(1);
      const got: any = await b.session.call('wamp.session.get', [f.id]);
      expect(got).to.include({ session: f.id, authid: f.details.authid, authrole: 'frontend' });
      const missing = await wampError(b.session.call('wamp.session.get', [12345]));
      expect(missing.error).to.equal('wamp.error.no_such_session');
    });
  });

  describe('a peer gone mid-write', function () {
    it('drops the connection whose send failed and keeps routing (no uncaught error)', async function () {
      const b = await backend();
      const victim = await rawJoin(url, { authid: 'other', ticket: TICKETS.other });
      victim.ws.send(JSON.stringify([32, 1, {}, 'test.flood']));
      await new Promise<void>((resolve) => victim.ws.on('message', (d: Buffer) => { if (JSON.parse(d.toString())[0] === 33) resolve(); }));
      const big = 'x'.repeat(64 * 1024);
      // events queue up on the router's side of the socket; the peer resets it meanwhile
      for (let i = 0; i < 200; i++) b.session.publish('test.flood', [big]);
      await sleep(5);
      victim.ws._socket.resetAndDestroy();
      for (let i = 0; i < 200; i++) b.session.publish('test.flood', [big]);
      await waitFor(async () => !(await liveSessions(b)).includes(victim.id), 'the victim dropped');
      // still routing: a fresh subscriber gets an event
      const other = await backend('other');
      const got: unknown[] = [];
      await other.session.subscribe('test.after', (args) => { got.push(args![0]); });
      await b.session.publish('test.after', ['ok'], {}, { acknowledge: true });
      await waitFor(() => got.length === 1, 'the event after');
    });
  });

  describe('calls in flight', function () {
    it('answers wamp.error.canceled when the callee disconnects', async function () {
      const callee = await backend();
      let invoked!: () => void;
      const arrived = new Promise<void>((r) => { invoked = r; });
      await callee.session.register('test.hang', () => { invoked(); return new Promise(() => undefined); });
      const caller = await backend('other');
      const call = wampError(caller.session.call('test.hang'));
      await arrived;
      await callee.close();
      const e = await within(call, 3000, 'the caller to hear of it');
      expect(e.error).to.equal('wamp.error.canceled');
      expect(caller.conn.isOpen).to.equal(true);
    });

    it('drops the invocation when the caller leaves; the late answer does not hurt the callee', async function () {
      const callee = await backend();
      let invoked!: () => void;
      let answer!: (v: string) => void;
      const arrived = new Promise<void>((r) => { invoked = r; });
      await callee.session.register('test.slow', () => { invoked(); return new Promise<string>((r) => { answer = r; }); });
      await callee.session.register('test.fast', () => 'fast');
      // a raw backend caller, so that leaving is a plain socket drop while the call is in flight
      const raw = await rawJoin(url, { authid: 'other', ticket: TICKETS.other });
      raw.ws.send(JSON.stringify([48, 1, {}, 'test.slow', []]));
      await arrived;
      raw.ws.terminate();
      await waitFor(async () => !(await liveSessions(callee)).includes(raw.id), 'the caller to leave');
      answer('late'); // fox-wamp answered this YIELD with an ERROR autobahn takes as a protocol violation
      await sleep(50);
      expect(callee.conn.isOpen).to.equal(true);
      const caller = await backend('other');
      expect(await caller.session.call('test.fast')).to.equal('fast');
    });
  });

  describe('payloads', function () {
    it('keeps a lone array argument and [null] unchanged, both ways and in events', async function () {
      const callee = await backend();
      const caller = await backend('other');
      const seen: unknown[][] = [];
      await callee.session.register('test.args', (args) => { seen.push(args!); return new autobahn.Result(args); });
      const r1 = await caller.session.call('test.args', [[1, 2]]);
      const r2 = await caller.session.call('test.args', [null]);
      expect(seen).to.deep.equal([[[1, 2]], [null]]);
      // autobahn hands a single positional result over as args[0]
      expect(r1).to.deep.equal([1, 2]);
      expect(r2).to.equal(null);
      const events: unknown[][] = [];
      await callee.session.subscribe('test.args.event', (args) => { events.push(args!); });
      await caller.session.publish('test.args.event', [[1, 2]], {}, { acknowledge: true });
      await caller.session.publish('test.args.event', [null], {}, { acknowledge: true });
      await waitFor(() => events.length === 2, 'the events');
      expect(events).to.deep.equal([[[1, 2]], [null]]);
    });

    it('passes kwargs and progressive results', async function () {
      const callee = await backend();
      const caller = await backend('other');
      await callee.session.register('test.kw', (_args, kwargs, details: any) => {
        details.progress?.([1]);
        return new autobahn.Result([kwargs.a], { b: 2 });
      });
      const progress: unknown[] = [];
      const res: any = await caller.session.call('test.kw', [], { a: 'x' }, { receive_progress: true } as autobahn.ICallOptions)
        .then((v) => v, undefined, (p: unknown) => { progress.push(p); });
      expect(res).to.be.instanceOf(autobahn.Result);
      expect(res.args).to.deep.equal(['x']);
      expect(res.kwargs).to.deep.equal({ b: 2 });
      expect(progress).to.deep.equal([1]);
    });
  });

  describe('close()', function () {
    it('closes client connections and the listener, and is idempotent', async function () {
      const r = await startDevRouter({ port: 0, path: '/ws', realm: 'realm1', backendTickets: TICKETS });
      expect(r.port).to.not.equal(router!.port);
      const f = await connect(r.url);
      const b = await connect(r.url, { authid: 'waymark', ticket: TICKETS.waymark });
      const first = r.close();
      expect(r.close()).to.equal(first);
      await first;
      const [fc, bc] = await Promise.all([f.closed, b.closed]);
      expect(fc.reason).to.be.oneOf(['closed', 'lost']);
      expect(bc.reason).to.be.oneOf(['closed', 'lost']);
      const after = await refused(connect(r.url));
      expect(after.reason).to.equal('unreachable');
      await r.close();
    });

    it('rejects with the listen error when the port is taken', async function () {
      try {
        const r = await startDevRouter({ port: router!.port });
        await r.close();
      } catch (err) {
        expect((err as NodeJS.ErrnoException).code).to.equal('EADDRINUSE');
        return;
      }
      throw new Error('expected EADDRINUSE');
    });
  });
});
