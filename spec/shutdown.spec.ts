import { expect } from 'chai';
import type { ServerResponse } from 'node:http';
import { Redis } from 'ioredis';
import type { WatchResult } from '../lib/protocol/types.js';
import { PROC_WATCH } from '../lib/protocol/uris.js';
import { componentEnv, randomChannel, sleep, testEnv, waitFor } from './helpers/env.js';
import { cleanEnv, CliRunner, freePort, type Proc } from './helpers/spawn.js';
import { Upstream } from './helpers/upstream.js';
import { Client, ClientPool } from './helpers/wamp-client.js';

/**
 * Graceful shutdown of a real `waymark serve` process: SIGTERM/SIGINT unregister, stop
 * consuming bumps, drain what is in flight up to WAYMARK_SHUTDOWN_TIMEOUT_MS, leave, quit
 * Redis and exit 0; a second signal exits at once with 1.
 */
describe('graceful shutdown (waymark serve)', function () {
  this.timeout(30_000);
  const cli = new CliRunner();
  const pool = new ClientPool();
  let api: Upstream;
  let redis: Redis;
  /** responses the API holds until a spec releases them */
  let held: ServerResponse[];
  let channel: string;

  beforeEach(async function () {
    held = [];
    channel = randomChannel();
    api = await new Upstream().start();
    api.handler = (req, res) => { held.push(res); };
    redis = new Redis(testEnv.redisUrl);
  });

  afterEach(async function () {
    await cli.killAll();
    await pool.closeAll();
    await api.close();
    await redis.quit();
  });

  function serve(env: Record<string, string> = {}): Proc {
    return cli.run(['serve'], cleanEnv({
      ...componentEnv(channel, api.url),
      WAYMARK_ADMIN_PORT: '0',
      ...env,
    }));
  }

  const subscribers = async () => ((await redis.pubsub('NUMSUB', channel)) as [string, number])[1];
  const release = (body: string) => { for (const res of held.splice(0)) res.writeHead(200, { 'content-type': 'application/json' }).end(body); };

  /** A running serve with one watch whose fetch the API is holding. */
  async function holdingAFetch(env: Record<string, string> = {}) {
    const p = serve(env);
    await p.waitForOutput(/waymark running/, 'stderr');
    const c = await pool.open();
    await c.call<WatchResult>(PROC_WATCH, ['/s/1', { token: 'tok' }]);
    await redis.publish(channel, '/s/1');
    await waitFor('the fetch to reach the API', () => held.length === 1);
    return { p, c };
  }

  it('SIGTERM: unregisters, stops consuming bumps, finishes the fetch in flight and its publish, exits 0', async function () {
    const { p, c } = await holdingAFetch();
    p.kill('SIGTERM');
    await p.waitForOutput(/unregistered: new calls go to other instances/, 'stderr');

    // New watches go to other instances; with none left, the router has no callee, and (the
    // authorizer being unregistered too) refuses the browser role everything, as Crossbar does.
    const backend = pool.add(await Client.connect({ authid: testEnv.authid, ticket: testEnv.ticket }));
    expect((await backend.callError(PROC_WATCH, ['/s/2', { token: 'tok' }])).error).to.equal('wamp.error.no_such_procedure');
    const other = pool.add(await Client.connect());
    expect((await other.callError(PROC_WATCH, ['/s/2', { token: 'tok' }])).error).to.equal('wamp.error.authorization_failed');
    // Bumps are no longer consumed: the subscriber is gone while the process still drains.
    await waitFor('the bump subscriber to go', async () => (await subscribers()) === 0);
    expect(p.child.exitCode).to.equal(null);
    await redis.publish(channel, '/s/1');

    await sleep(200);
    release('{"v":1}');
    expect(await p.exited).to.equal(0);
    const [u] = await c.waitForUpdates(1);
    expect(u).to.include({ path: '/s/1', status: 200, body: '{"v":1}' });
    expect(api.requests).to.have.length(1); // the bump sent while draining was not consumed
    expect(p.stderr).to.include('drained: every fetch and publish finished').and.include('waymark stopped');
  });

  it('a second signal exits at once (exit code 1) while a hung API holds a fetch', async function () {
    const { p } = await holdingAFetch({ WAYMARK_FETCH_TIMEOUT_MS: '60000', WAYMARK_SHUTDOWN_TIMEOUT_MS: '30000' });
    p.kill('SIGINT');
    await p.waitForOutput(/signal received, draining/, 'stderr');
    await sleep(200);
    expect(p.child.exitCode).to.equal(null); // still draining the held fetch
    const t0 = Date.now();
    p.kill('SIGTERM');
    expect(await p.exited).to.equal(1);
    const ms = Date.now() - t0;
    console.log(`      second signal: exit 1 after ${ms} ms`);
    expect(ms).to.be.below(3_000);
    expect(p.stderr).to.include('second signal, exiting now');
  });

  it('gives up on a hung fetch at WAYMARK_SHUTDOWN_TIMEOUT_MS and still exits 0', async function () {
    const { p } = await holdingAFetch({ WAYMARK_FETCH_TIMEOUT_MS: '60000', WAYMARK_SHUTDOWN_TIMEOUT_MS: '1000' });
    const t0 = Date.now();
    p.kill('SIGTERM');
    expect(await p.exited).to.equal(0);
    const ms = Date.now() - t0;
    console.log(`      shutdown deadline 1000 ms: exit 0 after ${ms} ms`);
    expect(ms).to.be.at.least(1_000).and.below(6_000);
    expect(p.stderr).to.include('shutdown deadline passed with work in flight');
  });

  it('SIGTERM while the router is unreachable at start exits 0 without waiting for it', async function () {
    const port = await freePort();
    const p = serve({ WAYMARK_ROUTER_URL: `ws://127.0.0.1:${port}/ws` });
    await p.waitForOutput(/joining router/, 'stderr');
    await sleep(700); // at least one refused attempt, a retry pending
    const t0 = Date.now();
    p.kill('SIGTERM');
    expect(await p.exited).to.equal(0);
    expect(Date.now() - t0).to.be.below(3_000);
    expect(p.stderr).to.include('waymark stopped');
  });
});
