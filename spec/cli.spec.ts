import { expect } from 'chai';
import { createServer, type Server } from 'node:http';
import { componentEnv, randomChannel, testEnv } from './helpers/env.js';
import { cleanEnv, CliRunner, freePort } from './helpers/spawn.js';
import { startWaymark } from './helpers/harness.js';
import { Upstream } from './helpers/upstream.js';

describe('command line', function () {
  this.timeout(30_000);
  const cli = new CliRunner();
  const run = (args: string[], env: NodeJS.ProcessEnv) => cli.run(args, env);
  afterEach(async function () {
    await cli.killAll();
  });

  for (const cmd of ['serve', 'dev', 'watch', 'bump', 'demo-api']) {
    it(`waymark ${cmd} --help prints its usage and exits 0`, async function () {
      const p = run([cmd, '--help'], cleanEnv());
      expect(await p.exited).to.equal(0);
      expect(p.stdout).to.match(new RegExp(`^Usage: waymark ${cmd}`));
    });
  }

  it('waymark with an unknown command exits 2 with the command list', async function () {
    const p = run(['frobnicate'], cleanEnv());
    expect(await p.exited).to.equal(2);
    expect(p.stderr).to.include('unknown command').and.include('serve');
  });

  it('serve without WAYMARK_API_URL exits 2 with one line naming it', async function () {
    const p = run(['serve'], cleanEnv());
    expect(await p.exited).to.equal(2);
    expect(p.stderr.trim().split('\n')).to.have.length(1);
    expect(p.stderr).to.match(/^waymark serve: WAYMARK_API_URL: is required/);
  });

  it('serve with a bad number exits 2 naming the setting', async function () {
    const p = run(['serve'], cleanEnv({ WAYMARK_API_URL: 'http://127.0.0.1:1', WAYMARK_FETCH_TIMEOUT_MS: 'soon' }));
    expect(await p.exited).to.equal(2);
    expect(p.stderr).to.match(/^waymark serve: WAYMARK_FETCH_TIMEOUT_MS: must be a whole number/);
  });

  it('serve, bump and doctor exit 2 with one line naming the setting when cluster and sentinel are both set', async function () {
    const env = cleanEnv({ WAYMARK_API_URL: 'http://127.0.0.1:1', WAYMARK_REDIS_CLUSTER_NODES: '127.0.0.1:7000', WAYMARK_REDIS_SENTINELS: '127.0.0.1:26379', WAYMARK_REDIS_SENTINEL_NAME: 'm' });
    for (const args of [['serve'], ['bump', '/users/1'], ['doctor']]) {
      const p = run(args, env);
      expect(await p.exited, args[0]).to.equal(2);
      expect(p.stderr.trim().split('\n')).to.have.length(1);
      expect(p.stderr).to.match(new RegExp(`^waymark ${args[0]}: WAYMARK_REDIS_SENTINELS: cannot be used together with WAYMARK_REDIS_CLUSTER_NODES`));
    }
  });

  it('serve exits 2 naming WAYMARK_ADMIN_PORT when that port is taken', async function () {
    const blocker: Server = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as { port: number }).port;
    try {
      const p = run(['serve'], cleanEnv({ WAYMARK_API_URL: 'http://127.0.0.1:1', WAYMARK_ADMIN_PORT: String(port), WAYMARK_REDIS_URL: testEnv.redisUrl }));
      expect(await p.exited).to.equal(2);
      expect(p.stderr).to.match(/waymark serve: WAYMARK_ADMIN_PORT: cannot listen on 127\.0\.0\.1:\d+ \(EADDRINUSE\)/);
    } finally {
      blocker.close();
    }
  });

  it('demo-api --router-url serves the browser demo page pointing at that router (as docker compose runs it)', async function () {
    const p = run(['demo-api', '--port', '0', '--router-url', 'ws://localhost:8080/ws'], cleanEnv({ WAYMARK_REDIS_URL: testEnv.redisUrl, WAYMARK_BUMP_CHANNEL: randomChannel() }));
    const [, url] = await p.waitForOutput(/"url":"(http:\/\/127\.0\.0\.1:\d+)"/, 'stderr');
    const config = await (await fetch(`${url}/config.json`)).json();
    expect(config).to.deep.equal({ routerUrl: 'ws://localhost:8080/ws', realm: 'realm1' });
    const page = await fetch(`${url}/`);
    expect(page.status).to.equal(200);
    expect(await page.text()).to.include('waymark-client.js');
    expect((await fetch(`${url}/waymark-client.js`)).status).to.equal(200);
    const bad = await run(['demo-api', '--router-url', 'http://x'], cleanEnv({})).exited;
    expect(bad).to.equal(2);
  });

  it('serve joins the router, answers /readyz, and exits 0 on SIGTERM', async function () {
    const api = await new Upstream().start();
    const adminPort = await freePort();
    try {
      const p = run(['serve'], cleanEnv({
        ...componentEnv(randomChannel(), api.url),
        WAYMARK_ADMIN_PORT: String(adminPort),
      }));
      await p.waitForOutput(/waymark running/, 'stderr');
      const ready = await fetch(`http://127.0.0.1:${adminPort}/readyz`);
      expect(ready.status).to.equal(200);
      expect((await fetch(`http://127.0.0.1:${adminPort}/healthz`)).status).to.equal(200);
      const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
      expect(metrics).to.include('waymark_bumps_received_total').and.include('waymark_fetches_total');
      expect(p.stderr).not.to.include(testEnv.ticket);
      p.kill('SIGTERM');
      expect(await p.exited).to.equal(0);
      expect(p.stderr).to.include('waymark stopped');
    } finally {
      await api.close();
    }
  });

  it('dev says in one line how to fix an unreachable Redis', async function () {
    const p = run(['dev'], cleanEnv({ WAYMARK_REDIS_URL: 'redis://127.0.0.1:1', WAYMARK_ADMIN_PORT: '0' }));
    expect(await p.exited).to.equal(1);
    expect(p.stderr.trim().split('\n')).to.have.length(1);
    expect(p.stderr).to.include('Redis is not reachable at redis://127.0.0.1:1').and.include('redis-server');
  });

  it('bump writes to the stream in stream mode (XADD with MAXLEN ~), and names a bad WAYMARK_BUMP_STREAM_MAXLEN', async function () {
    const stream = randomChannel();
    const { Redis } = await import('ioredis');
    const redis = new Redis(testEnv.redisUrl);
    try {
      const env = cleanEnv({ WAYMARK_REDIS_URL: testEnv.redisUrl, WAYMARK_BUMP_STREAM: stream, WAYMARK_BUMP_STREAM_MAXLEN: '50' });
      const p = run(['bump', '/users/1', '--id', 'b7'], env);
      expect(await p.exited).to.equal(0);
      expect(p.stderr).to.include(`added 1 path(s) to stream ${stream}`);
      const entries = await redis.xrange(stream, '-', '+');
      expect(entries).to.have.length(1);
      expect(entries[0][1]).to.deep.equal(['bump', '{"path":"/users/1","id":"b7"}']);
      const bad = run(['bump', '/users/1'], cleanEnv({ ...env, WAYMARK_BUMP_STREAM_MAXLEN: 'lots' }));
      expect(await bad.exited).to.equal(2);
      expect(bad.stderr).to.include('WAYMARK_BUMP_STREAM_MAXLEN');
    } finally {
      await redis.del(stream);
      await redis.quit();
    }
  });

  it('dev + watch + bump: a round trip as a newcomer runs it', async function () {
    this.timeout(40_000);
    const port = await freePort();
    const routerUrl = `ws://127.0.0.1:${port}/ws`;
    const channel = randomChannel();
    const env = cleanEnv({ WAYMARK_ROUTER_URL: routerUrl, WAYMARK_BUMP_CHANNEL: channel, WAYMARK_ADMIN_PORT: '0', WAYMARK_REDIS_URL: testEnv.redisUrl });
    const dev = run(['dev', '--api-port', '0'], env);
    const [, apiUrl] = await dev.waitForOutput(/API\s+(http:\/\/127\.0\.0\.1:\d+)/, 'stdout', 20_000);
    expect(dev.stdout).to.include('waymark watch /users/1 --token alice').and.include('waymark bump /users/1');

    const watch = run(['watch', '/users/1', '--token', 'alice', '--snapshot', '--count', '3'], env);
    await watch.waitForOutput(/\n/);
    const snapshot = JSON.parse(watch.stdout.split('\n')[0]);
    expect(snapshot).to.include({ path: '/users/1', status: 200, bump: null });
    expect(JSON.parse(snapshot.body)).to.include({ viewer: 'alice', name: 'Alice', views: 0 });

    // A person looks at the profile (a side effect Waymark's own fetches skip), then the backend bumps.
    const viewed = await fetch(`${apiUrl}/users/1`, { headers: { authorization: 'Bearer alice' } });
    expect(viewed.status).to.equal(200);
    const bump = run(['bump', '/users/1'], env);
    expect(await bump.exited).to.equal(0);
    expect(bump.stderr).to.include('1 Waymark subscriber');
    await watch.waitForOutput(/^.*\n.*\n/);
    const second = JSON.parse(watch.stdout.split('\n')[1]);
    expect(JSON.parse(second.body)).to.include({ views: 1 });
    expect(second.bump.id).to.be.a('string');

    // Editing through the demo API bumps by itself.
    const edit = await fetch(`${apiUrl}/users/1`, { method: 'PUT', headers: { authorization: 'Bearer alice' }, body: '{"bio":"live!"}' });
    expect(edit.status).to.equal(200);
    expect(await watch.exited).to.equal(0);
    const third = JSON.parse(watch.stdout.split('\n')[2]);
    expect(JSON.parse(third.body)).to.include({ bio: 'live!' });

    dev.kill('SIGTERM');
    expect(await dev.exited).to.equal(0);
  });

  it('watch reports a contract error and exits 1', async function () {
    const api = await new Upstream().start();
    const wm = await startWaymark(api.url);
    try {
      const p = run(['watch', '//evil.test/x'], cleanEnv({ WAYMARK_ROUTER_URL: testEnv.routerUrl, WAYMARK_REALM: testEnv.realm }));
      expect(await p.exited).to.equal(1);
      expect(p.stderr).to.match(/^waymark watch: waymark\.error\.invalid_path: /);
      expect(api.requests).to.have.length(0);
    } finally {
      await wm.close();
      await api.close();
    }
  });

  it('watch says in one line that the router cannot be reached, and exits 1', async function () {
    const port = await freePort();
    const p = run(['watch', '/users/1'], cleanEnv({ WAYMARK_ROUTER_URL: `ws://127.0.0.1:${port}/ws` }));
    expect(await p.exited).to.equal(1);
    expect(p.stderr.trim()).to.match(/^waymark watch: cannot reach the router at ws:\/\/127\.0\.0\.1:\d+\/ws \([^)]*\)$/);
    expect(p.stdout).to.equal('');
  });
});
