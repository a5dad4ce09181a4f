// Watcher sessions for the benchmark: many real WAMP sessions in one process, each subscribed
// to its own topic, counting what arrives and when.
import autobahn from 'autobahn';
import { WAMP_SUBPROTOCOLS } from '../lib/protocol/uris.js';
import { nowMs } from './procs.js';

console.warn = () => undefined; // autobahn reports every close

interface S { connection: autobahn.Connection; session: autobahn.Session; lastBody?: string; count: number; index: number; lastByPath?: Map<string, string> }
const sessions: S[] = [];
// Throughput and convergence rows: what arrived on the paths under `track.prefix`, per session.
const track = { prefix: '', at: [] as number[], session: [] as number[], version: [] as string[], last: false };
const VERSION = /"version":"([^"]*)"/;
let received = 0;
let firstAt = 0;
let lastAt = 0;
let stream = false;

function onUpdate(s: S, update: { path?: string; body?: string; bump?: { id: string } | null }) {
  const at = nowMs();
  if (track.prefix && update?.path?.startsWith(track.prefix)) {
    const version = VERSION.exec(update.body ?? '')?.[1] ?? '';
    if (track.last) (s.lastByPath ??= new Map()).set(update.path, version);
    else { track.at.push(at); track.session.push(s.index); track.version.push(version); }
  }
  received += 1;
  if (!firstAt) firstAt = at;
  lastAt = at;
  s.count += 1;
  s.lastBody = update?.body;
  if (stream) process.send!({ ev: 'update', at, bump: update?.bump?.id ?? null });
}

function open(url: string, realm: string, auth?: { authid: string; ticket: string }): Promise<S> {
  return new Promise((resolve, reject) => {
    const connection = new autobahn.Connection({
      url, realm, protocols: WAMP_SUBPROTOCOLS, max_retries: 0,
      ...(auth ? { authmethods: ['ticket'], authid: auth.authid, onchallenge: () => auth.ticket } : {}),
    });
    connection.onopen = (session) => {
      const s: S = { connection, session, count: 0, index: -1 };
      session.subscribe(`waymark.session.${session.id}`, (args) => onUpdate(s, args?.[0])).then(() => resolve(s), reject);
    };
    connection.onclose = (reason) => { reject(new Error(`join failed: ${reason}`)); return true; };
    connection.open();
  });
}

async function pool<T>(items: T[], limit: number, fn: (t: T) => Promise<void>): Promise<number> {
  let i = 0;
  let errors = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (i < items.length) {
      const item = items[i++];
      try { await fn(item); } catch { errors += 1; }
    }
  }));
  return errors;
}

process.on('message', async (msg: any) => {
  const reply = (body: Record<string, unknown>) => process.send!({ id: msg.id, ...body });
  try {
    switch (msg.cmd) {
      case 'connect': {
        const t0 = nowMs();
        const idx = Array.from({ length: msg.count }, (_, i) => i);
        await pool(idx, 50, async () => { const s = await open(msg.url, msg.realm); s.index = sessions.length; sessions.push(s); });
        reply({ sessions: sessions.length, ids: sessions.map((s) => s.session.id), ms: nowMs() - t0 });
        break;
      }
      case 'watch': {
        const t0 = nowMs();
        const specs = msg.specs as Array<[number, string, string]>;
        const errors = await pool(specs, msg.concurrency ?? 256, async ([i, path, token]) => {
          await sessions[i].session.call('waymark.watch', [path, { token, ...(msg.options ?? {}) }]);
        });
        reply({ ms: nowMs() - t0, calls: specs.length, errors });
        break;
      }
      case 'reset':
        received = 0; firstAt = 0; lastAt = 0;
        for (const s of sessions) { s.count = 0; s.lastBody = undefined; }
        reply({});
        break;
      case 'stats':
        reply({ received, firstAt, lastAt, sessionsWithUpdates: sessions.filter((s) => s.count > 0).length });
        break;
      case 'finalState': {
        let atFinal = 0;
        for (const s of sessions) {
          try { if (s.lastBody && JSON.parse(s.lastBody).version === msg.version) atFinal += 1; } catch { /* not JSON */ }
        }
        reply({ atFinal, sessions: sessions.length });
        break;
      }
      case 'track':
        // {prefix, last}: record arrivals on paths under prefix (last: only each path's last version)
        track.prefix = msg.prefix ?? '';
        track.last = !!msg.last;
        track.at = []; track.session = []; track.version = [];
        for (const s of sessions) s.lastByPath = undefined;
        reply({});
        break;
      case 'probe': {
        // {versions: [v0, v1, ...], times: [t0, ...], sessions: n}: for local sessions 0..n-1 and
        // bump j (API at versions[j] since times[j]): `strict` latencies of the Update carrying
        // exactly versions[j], `state` latencies of the first Update at versions[j] or a later one.
        const versions = msg.versions as string[];
        const times = msg.times as number[];
        const n = msg.sessions as number;
        const index = new Map(versions.map((v, j) => [v, j]));
        const firstOf: Float64Array[] = Array.from({ length: n }, () => new Float64Array(versions.length).fill(Infinity));
        let updates = 0;
        for (let k = 0; k < track.at.length; k++) {
          const j = index.get(track.version[k]);
          const si = track.session[k];
          if (j === undefined || si >= n) continue;
          updates += 1;
          if (track.at[k] < firstOf[si][j]) firstOf[si][j] = track.at[k];
        }
        const strict: number[] = [];
        const state: number[] = [];
        let missing = 0;
        let stale = 0;
        for (let si = 0; si < n; si++) {
          let later = Infinity; // first arrival of version j or any later one
          for (let j = versions.length - 1; j >= 0; j--) {
            later = Math.min(later, firstOf[si][j]);
            if (firstOf[si][j] < Infinity) strict.push(firstOf[si][j] - times[j]); else missing += 1;
            if (later < Infinity) state.push(later - times[j]); else stale += 1;
          }
        }
        reply({ strict, state, missing, stale, updates });
        break;
      }
      case 'converged': {
        // {version, paths}: (session, path) pairs under the tracked prefix whose last Update is at version
        let at = 0;
        for (const s of sessions) for (const v of s.lastByPath?.values() ?? []) if (v === msg.version) at += 1;
        reply({ at });
        break;
      }
      case 'stream':
        stream = !!msg.on;
        reply({});
        break;
      case 'close':
        for (const s of sessions) { try { s.connection.close(); } catch { /* closed */ } }
        sessions.length = 0;
        reply({});
        break;
      default:
        reply({ error: `unknown command ${msg.cmd}` });
    }
  } catch (err) {
    reply({ error: (err as Error).message });
  }
});
process.on('SIGTERM', () => process.exit(0));
process.send!({ ready: true });
