import autobahn from 'autobahn';
import type { Update } from '../../lib/protocol/types.js';
import { sessionTopic, WAMP_SUBPROTOCOLS } from '../../lib/protocol/uris.js';
import { testEnv, waitFor } from './env.js';

export interface WampErrorShape {
  error: string;
  args: unknown[];
}

/** A browser-like client: anonymous, so the router gives it the `frontend` role. */
export class Client {
  readonly updates: Update[] = [];
  private constructor(private readonly connection: autobahn.Connection, readonly session: autobahn.Session) {}

  static async connect(opts: { authid?: string; ticket?: string } = {}): Promise<Client> {
    return new Promise((resolve, reject) => {
      const connection = new autobahn.Connection({
        url: testEnv.routerUrl,
        realm: testEnv.realm,
        protocols: WAMP_SUBPROTOCOLS,
        max_retries: 0,
        retry_if_unreachable: false,
        ...(opts.authid ? { authmethods: ['ticket'], authid: opts.authid, onchallenge: () => opts.ticket ?? '' } : {}),
      });
      connection.onopen = (session) => resolve(new Client(connection, session));
      connection.onclose = (reason, details) => {
        reject(new Error(`client could not join: ${reason} ${JSON.stringify(details)}`));
        return true;
      };
      connection.open();
    });
  }

  get id(): number {
    return this.session.id;
  }

  get topic(): string {
    return sessionTopic(this.session.id);
  }

  /** Subscribe to the own session topic; every Update lands in `updates`. */
  async listen(topic = this.topic): Promise<void> {
    await this.session.subscribe(topic, (args) => { this.updates.push(args?.[0] as Update); });
  }

  call<T = unknown>(procedure: string, args?: unknown[], kwargs?: Record<string, unknown>): Promise<T> {
    return Promise.resolve(this.session.call<T>(procedure, args, kwargs));
  }

  /** Call and expect a WAMP error; resolves with it (fails the test if the call succeeds). */
  async callError(procedure: string, args?: unknown[], kwargs?: Record<string, unknown>): Promise<WampErrorShape> {
    try {
      const r = await this.call(procedure, args, kwargs);
      throw new Error(`expected ${procedure} to fail, it returned ${JSON.stringify(r)}`);
    } catch (err) {
      const e = err as { error?: string; args?: unknown[] };
      if (!e.error) throw err;
      return { error: e.error, args: e.args ?? [] };
    }
  }

  waitForUpdates(n: number, timeoutMs = 5_000): Promise<Update[]> {
    return waitFor(`${n} update(s) on ${this.topic} (have ${this.updates.length})`, () => (this.updates.length >= n ? this.updates : null), timeoutMs);
  }

  async close(): Promise<void> {
    if (!this.connection.isOpen) return;
    await new Promise<void>((resolve) => {
      this.connection.onclose = () => { resolve(); return true; };
      this.connection.close();
    });
  }
}

/** The browser-like clients one spec opens, each listening on its own topic; `closeAll()` in afterEach. */
export class ClientPool {
  private readonly clients: Client[] = [];

  /** A new client, already subscribed to its own topic. */
  async open(): Promise<Client> {
    const c = await Client.connect();
    this.clients.push(c);
    await c.listen();
    return c;
  }

  /** Track a client opened elsewhere so closeAll() closes it too. */
  add(c: Client): Client {
    this.clients.push(c);
    return c;
  }

  async closeAll(): Promise<void> {
    await Promise.all(this.clients.splice(0).map((c) => c.close()));
  }
}
