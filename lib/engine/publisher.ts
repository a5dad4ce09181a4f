import type autobahn from 'autobahn';
import type { SessionId, Update } from '../protocol/types.js';
import { sessionTopic } from '../protocol/uris.js';

/** The seam between dispatching and WAMP: deliver one Update to one session only. */
export interface Publisher {
  publish(session: SessionId, update: Update): Promise<void>;
  /**
   * Resolves when the publishes held back (not yet handed to the router's socket) are at most
   * `limits.publishes` and their bodies at most `limits.bytes` (UTF-16 code units; a body shared
   * by consecutive publishes, one group's fan-out, counts once). A dispatcher frees a fetch slot
   * only then, so results waiting for the router are bounded in memory. Absent: never any backlog.
   */
  room?(limits: HeldLimits): Promise<void>;
}

/**
 * Bytes queued to the router's socket above which publishes wait (2 MiB): about a second of
 * writes on a slow link, far more than one round of a large fan-out of small bodies. Below it
 * every publish goes out at once; above it they wait in order until the socket drains.
 */
export const PUBLISH_HIGH_WATER_BYTES = 2 * 1024 * 1024;

export interface HeldLimits {
  publishes: number;
  bytes: number;
}

/** What the publisher reads of the router connection's socket (a net.Socket / tls.TLSSocket). */
export interface OutgoingSocket {
  readonly writableLength: number;
  readonly destroyed: boolean;
  cork(): void;
  uncork(): void;
  once(event: 'drain' | 'close', listener: () => void): unknown;
  off(event: 'drain' | 'close', listener: () => void): unknown;
}

interface Held {
  wamp: autobahn.Session;
  session: SessionId;
  update: Update;
  /** what it adds to heldBytes */
  bytes: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * Publishes on the session's own topic with `eligible: [session]`. Crossbar treats an empty
 * `eligible` list as "everyone", so the list always holds exactly the owner.
 *
 * Backpressure: while more than PUBLISH_HIGH_WATER_BYTES wait in the router socket's write
 * buffer, publishes are held here (in order) and go out as it drains, so a slow router costs
 * memory in one bounded place (see `room`) rather than in the socket, and never holds a fetch.
 *
 * autobahn-js 22 never settles the requests of a session whose transport closed: an
 * acknowledged publish in flight when the router connection drops would hang for good, and
 * with it the dispatcher's group (never fetched again) and any drain. `connectionLost()` fails
 * them, and the held ones, instead, so the dispatcher keeps the watch's last delivered state and
 * the refetch after the rejoin sends the result again.
 */
export class WampPublisher implements Publisher {
  /** publishes waiting for their acknowledgement, with the session they were sent on */
  private readonly pending = new Map<(err: Error) => void, autobahn.Session>();
  /** publishes held back by backpressure, oldest first */
  private held: Held[] = [];
  private heldAt = 0;
  /** bytes handed to autobahn this turn, not yet in the socket's count (autobahn serialises after a microtask) */
  private unsettled = 0;
  private settleScheduled = false;
  private draining = false;
  /** bodies of the held publishes, each run of one shared body counted once */
  private heldBytes = 0;
  private readonly roomWaiters: Array<{ limits: HeldLimits; resolve: () => void }> = [];

  /**
   * @param current the joined session, if any
   * @param socket the router connection's socket, if known (no backpressure without it)
   * @param highWaterBytes see PUBLISH_HIGH_WATER_BYTES
   */
  constructor(
    private readonly current: () => autobahn.Session | undefined,
    private readonly socket: () => OutgoingSocket | undefined = () => undefined,
    private readonly highWaterBytes = PUBLISH_HIGH_WATER_BYTES,
  ) {}

  /** Publishes sent and not yet acknowledged. */
  get inFlight(): number {
    return this.pending.size;
  }

  /** Publishes held back by backpressure. */
  get waiting(): number {
    return this.held.length - this.heldAt;
  }

  publish(session: SessionId, update: Update): Promise<void> {
    const wamp = this.current();
    if (!wamp || !wamp.isOpen) return Promise.reject(new Error('not joined to the router'));
    if (this.waiting === 0 && !this.full()) return this.send(wamp, session, update);
    const before = this.waiting > 0 ? this.held[this.held.length - 1].update.body : undefined;
    const bytes = (before === update.body ? 0 : update.body.length) + 256;
    this.heldBytes += bytes;
    return new Promise<void>((resolve, reject) => {
      this.held.push({ wamp, session, update, bytes, resolve, reject });
      this.drainLater();
    });
  }

  room(limits: HeldLimits): Promise<void> {
    if (this.fits(limits)) return Promise.resolve();
    return new Promise((resolve) => this.roomWaiters.push({ limits, resolve }));
  }

  private fits(limits: HeldLimits): boolean {
    return this.waiting <= limits.publishes && this.heldBytes <= limits.bytes;
  }

  /**
   * Fail every publish still waiting for an acknowledgement, or held back, on this session,
   * whose connection closed (autobahn still reports it open while its onclose handlers run).
   */
  connectionLost(closed: autobahn.Session): void {
    for (const [reject, wamp] of this.pending) {
      if (wamp !== closed) continue;
      this.pending.delete(reject);
      reject(new Error('router connection lost before the publish was acknowledged'));
    }
    const keep: Held[] = [];
    for (let i = this.heldAt; i < this.held.length; i++) {
      const h = this.held[i];
      if (h.wamp === closed) h.reject(new Error('router connection lost before the publish was sent'));
      else keep.push(h);
    }
    this.held = keep;
    this.heldAt = 0;
    this.heldBytes = keep.reduce((n, h) => n + h.bytes, 0);
    this.wakeRoom();
  }

  private send(wamp: autobahn.Session, session: SessionId, update: Update): Promise<void> {
    // about what autobahn will write: the body dominates; headers and envelope are small
    this.unsettled += update.body.length + 256;
    if (!this.settleScheduled) {
      this.settleScheduled = true;
      // Every frame of this turn (a fan-out) leaves in one writev instead of a write system call
      // per frame, the largest part of a delivery's CPU; ws corks per frame too, and corks nest.
      const corked = this.socket();
      if (corked && !corked.destroyed) corked.cork();
      // by then autobahn has serialised and ws has written: the socket's own count takes over
      setImmediate(() => {
        this.settleScheduled = false;
        this.unsettled = 0;
        if (corked && !corked.destroyed) corked.uncork();
      });
    }
    const ack = wamp.publish(sessionTopic(session), [update], {}, { acknowledge: true, eligible: [session] });
    return new Promise<void>((resolve, reject) => {
      this.pending.set(reject, wamp);
      ack.then(() => { this.pending.delete(reject); resolve(); }, (err: unknown) => { this.pending.delete(reject); reject(err as Error); });
    });
  }

  private full(): boolean {
    const s = this.socket();
    return (s && !s.destroyed ? s.writableLength : 0) + this.unsettled > this.highWaterBytes;
  }

  /** Send held publishes while there is room; otherwise wait for the socket to drain (or a short tick). */
  private drainLater(): void {
    if (this.draining) return;
    this.draining = true;
    const s = this.socket();
    let timer: NodeJS.Timeout | undefined;
    const go = () => {
      clearTimeout(timer);
      s?.off('drain', go);
      this.draining = false;
      this.flush();
    };
    // 'drain' when the socket empties its buffer; the tick covers bytes counted in `unsettled`
    // (they settle within a turn) and a socket replaced by a reconnect.
    if (s && !s.destroyed && s.writableLength > 0) s.once('drain', go);
    timer = setTimeout(go, 5);
  }

  private flush(): void {
    while (this.waiting > 0 && !this.full()) {
      const h = this.held[this.heldAt++];
      this.heldBytes -= h.bytes;
      if (h.wamp !== this.current() || !h.wamp.isOpen) h.reject(new Error('router connection lost before the publish was sent'));
      else this.send(h.wamp, h.session, h.update).then(h.resolve, h.reject);
    }
    if (this.heldAt > 1024 && this.heldAt * 2 > this.held.length) {
      this.held = this.held.slice(this.heldAt);
      this.heldAt = 0;
    }
    this.wakeRoom();
    if (this.waiting > 0) this.drainLater();
  }

  private wakeRoom(): void {
    for (let i = this.roomWaiters.length - 1; i >= 0; i--) {
      const w = this.roomWaiters[i];
      if (!this.fits(w.limits)) continue;
      this.roomWaiters.splice(i, 1);
      w.resolve();
    }
  }
}

/** WAMP PUBLISH message code (WAMP basic profile, "Message Codes and Direction"). */
const PUBLISH = 16;
/** Stands for the body while the rest of a PUBLISH is serialised; no header, path or id can hold a NUL. */
const BODY_MARK = '\u0000waymark.body\u0000';
const BODY_MARK_JSON = JSON.stringify(BODY_MARK);

/**
 * autobahn's JSON serializer (`wamp.2.json`, autobahn 22.11.1 lib/serializer.js) with one saving:
 * a result published to many watches (one group's fan-out) has its body escaped once, not once
 * per watch. Its output is exactly JSON.stringify of the message; a message it cannot splice
 * (the mark's text found twice) is serialised whole.
 */
export class UpdateJsonSerializer {
  readonly SERIALIZER_ID = 'json';
  readonly BINARY = false;
  /** bodies shorter than this are cheaper to escape again than to splice */
  static readonly MIN_BODY = 1024;
  private last?: { body: string; json: string };

  serialize(msg: unknown[]): string {
    const args = msg[0] === PUBLISH ? msg[4] : undefined;
    const u = Array.isArray(args) && args.length === 1 ? args[0] as Update | undefined : undefined;
    if (!u || typeof u.body !== 'string' || u.body.length < UpdateJsonSerializer.MIN_BODY) return JSON.stringify(msg);
    let c = this.last;
    if (!c || c.body !== u.body) c = this.last = { body: u.body, json: JSON.stringify(u.body) };
    const copy = msg.slice();
    copy[4] = [{ ...u, body: BODY_MARK }];
    const s = JSON.stringify(copy);
    const at = s.indexOf(BODY_MARK_JSON);
    if (at < 0 || s.indexOf(BODY_MARK_JSON, at + 1) >= 0) return JSON.stringify(msg);
    return s.slice(0, at) + c.json + s.slice(at + BODY_MARK_JSON.length);
  }

  unserialize(payload: string): unknown {
    return JSON.parse(payload);
  }
}
