import { expect } from 'chai';
import { Redis } from 'ioredis';
import { PROC_WATCH } from '../lib/protocol/uris.js';
import { componentEnv, randomChannel, sleep, testEnv, waitFor } from './helpers/env.js';
import { cleanEnv, freePort, runCli, type Proc } from './helpers/spawn.js';
import { Upstream } from './helpers/upstream.js';
import { ClientPool, type Client } from './helpers/wamp-client.js';

/**
 * The reliability issue's must-show: SIGTERM in the middle of a 10,000-watch fan-out. A real
 * `waymark serve` holds 100 sessions x 100 watches, each with its own token (so 10,000
 * distinct fetches); one bump of the 100 paths starts the fan-out against an API answering
 * with some latency; SIGTERM follows shortly after. The process must exit 0 within
 * WAYMARK_SHUTDOWN_TIMEOUT_MS (default 10 s), and every fetch the API answered must have
 * reached its session as an Update. On a busy machine the whole fan-out may not fit: queued
 * fetches that could not finish before the deadline are dropped unstarted, and counted.
 */
describe('graceful shutdown during a 10,000-watch fan-out', function () {
  this.timeout(60_000);
  const SESSIONS = 100;
  const PATHS = 100;
  const LATENCY_MS = 10;
  const DEADLINE_MS = 10_000;

  let api: Upstream;
  let proc: Proc | undefined;
  let redis: Redis;
  const pool = new ClientPool();
  /** `${token} ${path}` of every request the API answered */
  const answered: string[] = [];

  before(async function () {
    api = await new Upstream().start();
    api.handler = (req, res) => {
      const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
      setTimeout(() => {
        res.on('finish', () => answered.push(`${token} ${req.url}`));
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token, path: req.url }));
      }, LATENCY_MS);
    };
    redis = new Redis(testEnv.redisUrl);
  });

  after(async function () {
    if (proc) {
      proc.kill('SIGKILL');
      await proc.exited;
    }
    await pool.closeAll();
    await api.close();
    await redis.quit();
  });

  it('exits 0 within the deadline with every Update whose fetch started delivered', async function () {
    const channel = randomChannel();
    const adminPort = await freePort();
    proc = runCli(['serve'], cleanEnv({
      ...componentEnv(channel, api.url),
      WAYMARK_ADMIN_PORT: String(adminPort),
      WAYMARK_LOG_LEVEL: 'warn', // 10,000 'watch added' lines would cost more than the fan-out
      WAYMARK_RATE_BURST: String(PATHS),
      WAYMARK_SHUTDOWN_TIMEOUT_MS: String(DEADLINE_MS),
    }));
    const p = proc;
    await waitFor('waymark serve to be ready', async () => (await fetch(`http://127.0.0.1:${adminPort}/readyz`).catch(() => null))?.status === 200, 15_000);

    const paths = Array.from({ length: PATHS }, (_, i) => `/fan/${i}`);
    const clients: Client[] = [];
    for (let s = 0; s < SESSIONS; s++) clients.push(await pool.open());
    await Promise.all(clients.map((c, s) => Promise.all(paths.map((path) => c.call(PROC_WATCH, [path, { token: `t${s}` }])))));
    const tokenOf = new Map(clients.map((c, s) => [c, `t${s}`]));

    await redis.publish(channel, JSON.stringify({ paths, id: 'fan-out' }));
    await waitFor('the fan-out to be under way', () => answered.length >= 300, 15_000);
    const t0 = Date.now();
    const atSigterm = answered.length;
    p.kill('SIGTERM');
    const code = await p.exited;
    const exitMs = Date.now() - t0;
    const atExit = answered.length;

    // Events the router accepted before the exit may still be on their way to the browsers.
    const updates = () => clients.reduce((n, c) => n + c.updates.length, 0);
    const settleUntil = Date.now() + 5_000;
    while (updates() < atExit && Date.now() < settleUntil) await sleep(20);
    await sleep(200);
    const delivered = new Set<string>();
    for (const c of clients) for (const u of c.updates) delivered.add(`${tokenOf.get(c)} ${u.path}`);

    // Queued fetches that could no longer finish before the deadline were dropped, not started.
    const dropped = Number(/"dropped":(\d+)/.exec(p.stderr)?.[1] ?? 0);
    console.log(`      shutdown under fan-out: ${SESSIONS * PATHS} watches, SIGTERM after ${atSigterm} answered fetches; ` +
      `exit=${code} in ${exitMs} ms (deadline ${DEADLINE_MS} ms); fetches started=${api.requests.length} ` +
      `answered=${answered.length} updates=${updates()} (distinct ${delivered.size}) dropped unstarted=${dropped}`);
    expect(code).to.equal(0);
    expect(exitMs).to.be.below(DEADLINE_MS);
    expect(api.requests.length).to.equal(answered.length); // no fetch was cut off mid-way
    expect(updates()).to.equal(answered.length);
    expect([...delivered].sort()).to.deep.equal([...answered].sort());
    expect(answered.length + dropped).to.equal(SESSIONS * PATHS);
  });
});
