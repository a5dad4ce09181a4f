import type { IncomingMessage, ServerResponse } from 'node:http';
import { request } from 'undici';
import type { Update, WatchResult } from '../../lib/protocol/types.js';
import { PROC_WATCH } from '../../lib/protocol/uris.js';
import { sleep } from './env.js';
import type { Client, ClientPool } from './wamp-client.js';

/**
 * What the fault specs measure: after a fault ends, how long until every session's last Update
 * for every watch equals what the API answers now, and how many never got there (lost).
 */

/** An API whose state is a version per path; each body names the path, the token and the version. */
export class VersionedApi {
  readonly versions = new Map<string, number>();
  /** when set, every answer is this status (a failing API) */
  failWith?: number;
  /** when set, answers wait this long (a slow API) */
  delayMs = 0;

  set(path: string, version: number): void {
    this.versions.set(path, version);
  }

  body(path: string, token: string): string {
    return JSON.stringify({ path, token, version: this.versions.get(path) ?? 1 });
  }

  readonly handler = (req: IncomingMessage, res: ServerResponse): void => {
    const answer = () => {
      if (this.failWith) {
        res.writeHead(this.failWith, { 'content-type': 'application/json' }).end('{"error":"down"}');
        return;
      }
      const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
      res.writeHead(200, { 'content-type': 'application/json' }).end(this.body(req.url ?? '/', token));
    };
    if (this.delayMs > 0) setTimeout(answer, this.delayMs);
    else answer();
  };
}

export interface Watcher {
  client: Client;
  path: string;
  token: string;
  watch: string;
  snapshot?: Update;
}

/** `sessions` clients, each watching every path with a token of its own, with a snapshot. */
export async function watchAll(pool: ClientPool, sessions: number, paths: string[], tokenPrefix = 'token'): Promise<Watcher[]> {
  const out: Watcher[] = [];
  for (let s = 0; s < sessions; s++) {
    const client = await pool.open();
    for (const path of paths) {
      const token = `${tokenPrefix}-${s}`;
      const r = await client.call<WatchResult>(PROC_WATCH, [path, { token, snapshot: true }]);
      out.push({ client, path, token, watch: r.watch, snapshot: r.snapshot });
    }
  }
  return out;
}

/** The last Update a watcher's session received for its watch (its snapshot before any). */
export function lastUpdate(w: Watcher): Update | undefined {
  for (let i = w.client.updates.length - 1; i >= 0; i--) if (w.client.updates[i].watch === w.watch) return w.client.updates[i];
  return w.snapshot;
}

/** What the API answers this watcher right now (a plain GET, no X-Waymark: not counted as Waymark's). */
export async function apiNow(apiUrl: string, w: Watcher): Promise<{ status: number; body: string }> {
  const res = await request(`${apiUrl}${w.path}`, { headers: { authorization: `Bearer ${w.token}` } });
  return { status: res.statusCode, body: await res.body.text() };
}

export interface Convergence {
  lost: number;
  convergeMs: number;
}

/**
 * Wait (bounded) until every watcher's last Update equals `expected(w)`; then print the spec's
 * one figures line. `since` is when the fault ended.
 */
export async function converge(
  name: string, watchers: Watcher[], expected: (w: Watcher) => { status: number; body: string }, since: number, timeoutMs = 10_000,
): Promise<Convergence> {
  const stale = () => watchers.filter((w) => {
    const u = lastUpdate(w);
    const e = expected(w);
    return !u || u.status !== e.status || u.body !== e.body;
  });
  const deadline = since + timeoutMs;
  let left = stale();
  while (left.length > 0 && Date.now() < deadline) {
    await sleep(10);
    left = stale();
  }
  const result = { lost: left.length, convergeMs: left.length === 0 ? Date.now() - since : -1 };
  console.log(`      fault: ${name} lost=${result.lost} converge_ms=${result.convergeMs}`);
  return result;
}

/**
 * The same measure and line as converge(), for watches read through something else than a
 * helper Client (e.g. waymark/client callbacks, a browser page): `stale` names the watches whose
 * last Update is not the API's current state yet; it is polled every 20 ms until none or the
 * deadline.
 */
export async function convergeBy(
  name: string, stale: () => number | Promise<number>, since: number, timeoutMs = 10_000,
): Promise<Convergence> {
  const deadline = since + timeoutMs;
  let left = await stale();
  while (left > 0 && Date.now() < deadline) {
    await sleep(20);
    left = await stale();
  }
  const result = { lost: left, convergeMs: left === 0 ? Date.now() - since : -1 };
  console.log(`      fault: ${name} lost=${result.lost} converge_ms=${result.convergeMs}`);
  return result;
}

/**
 * A backend bumping `paths` every 100 ms, each bump a new version of every path in `api`, retrying
 * a failed publish (bounded: 100 tries, 50 ms apart) as a backend would during a failover.
 * `stop()` resolves once the loop has ended, with what it did.
 */
export function keepBumping(bumper: { bump(paths: string[]): Promise<unknown> }, api: VersionedApi, paths: string[]): {
  stop(): Promise<{ published: number; failedPublishes: number }>;
} {
  let version = 1;
  let failedPublishes = 0;
  let bumping = true;
  const loop = (async () => {
    while (bumping) {
      version += 1;
      for (const p of paths) api.set(p, version);
      for (let attempt = 0; attempt < 100; attempt += 1) {
        try {
          await bumper.bump(paths);
          break;
        } catch {
          failedPublishes += 1;
          await sleep(50);
        }
      }
      await sleep(100);
    }
  })();
  return {
    async stop() {
      bumping = false;
      await loop;
      return { published: version - 1, failedPublishes };
    },
  };
}
