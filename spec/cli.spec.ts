import { expect } from 'chai';
import { createServer, type Server } from 'node:http';
import { componentEnv, randomChannel, sleep, testEnv } from './helpers/env.js';
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
    expect(p.stderr.trim().split('\n')).to.have.length(1);
  });

  // Each mistake: one line on stderr naming what to fix, nothing on stdout, exit 2.
  const usageErrors: Array<[string, string[], Record<string, string>, RegExp]> = [
    ['an unknown option, with the closest one', ['watch', '/users/1', '--tokn', 'alice'], {}, /^waymark watch: unknown option --tokn \(did you mean --token\?\); run 'waymark watch --help' for its options$/],
    ['an unknown short option', ['bump', '/users/1', '-x'], {}, /^waymark bump: unknown option -x; /],
    ['a missing value at the end', ['watch', '/users/1', '--token'], {}, /^waymark watch: --token needs a value; /],
    ['an option where a value belongs', ['watch', '/users/1', '--token', '--snapshot'], {}, /^waymark watch: --token needs a value \(got the option --snapshot\); /],
    ['a negative number', ['doctor', '--timeout-ms', '-5'], {}, /^waymark doctor: --timeout-ms must be a whole number from 1 to 600000, got "-5"$/],
    ['a fraction', ['watch', '/users/1', '--count', '1.5'], {}, /^waymark watch: --count must be a whole number from 1 to \d+, got "1\.5"$/],
    ['a port out of range', ['dev', '--api-port', '70000'], {}, /^waymark dev: --api-port must be a whole number from 0 to 65535, got "70000"$/],
    ['a port that is not a number', ['demo-api', '--port', 'x'], {}, /^waymark demo-api: --port must be a whole number from 0 to 65535, got "x"$/],
    ['a value given to a flag', ['watch', '/users/1', '--snapshot=yes'], {}, /^waymark watch: --snapshot takes no value; /],
    ['an argument a command does not take', ['doctor', 'now'], {}, /^waymark doctor: takes no arguments, got "now"; /],
    ['a bump path without its slash', ['bump', 'users/1'], {}, /^waymark bump: a path starts with \/, got "users\/1"$/],
    ['a bump path Waymark would drop', ['bump', '/users/1', '/users/%2e%2e'], {}, /^waymark bump: not a valid path: "\/users\/%2e%2e"$/],
    ['more bump paths than one bump carries', ['bump', ...Array.from({ length: 1000 }, (_, i) => `/u/${i}`), '--tag', 't'], {}, /^waymark bump: at most 1000 paths, prefixes and tags in one bump \(Waymark drops the rest\), got 1001; /],
    ['a mistyped command', ['wtach', '/users/1'], {}, /^waymark: unknown command "wtach" \(did you mean watch\?\); the commands are serve, dev, watch, bump, doctor, demo-api/],
    ['watch with a router URL that is no URL', ['watch', '/users/1'], { WAYMARK_ROUTER_URL: 'notaurl' }, /^waymark watch: WAYMARK_ROUTER_URL: must be a ws:\/\/ or wss:\/\/ URL, got "notaurl"$/],
    ['watch with an http router URL', ['watch', '/users/1'], { WAYMARK_ROUTER_URL: 'http://127.0.0.1:8080/ws' }, /^waymark watch: WAYMARK_ROUTER_URL: must be a ws:\/\/ or wss:\/\/ URL/],
    ['bump with a Redis URL that is no URL', ['bump', '/users/1'], { WAYMARK_REDIS_URL: 'nope' }, /^waymark bump: WAYMARK_REDIS_URL: must be a redis:\/\/ or rediss:\/\/ URL/],
    ['bump with an http Redis URL', ['bump', '/users/1'], { WAYMARK_REDIS_URL: 'http://127.0.0.1:6379' }, /^waymark bump: WAYMARK_REDIS_URL: must be a redis:\/\/ or rediss:\/\/ URL, got http:$/],
    ['demo-api with a Redis URL that is no URL', ['demo-api'], { WAYMARK_REDIS_URL: 'nope' }, /^waymark demo-api: WAYMARK_REDIS_URL: /],
    ['doctor with a bad number setting', ['doctor'], { WAYMARK_FETCH_TIMEOUT_MS: '-1' }, /^waymark doctor: WAYMARK_FETCH_TIMEOUT_MS: must be a whole number/],
  ];
  for (const [what, args, env, expected] of usageErrors) {
    it(`${what}: one line, exit 2 (waymark ${args.length > 8 ? `${args.slice(0, 3).join(' ')} ... (${args.length} arguments)` : args.join(' ')})`, async function () {
      const p = run(args, cleanEnv(env));
      expect(await p.exited, p.stderr).to.equal(2);
      expect(p.stderr.trim().split('\n'), p.stderr).to.have.length(1);
      expect(p.stderr.trim()).to.match(expected);
      expect(p.stdout).to.equal('');
    });
  }

  it('bump with Redis down says so in one line and exits 1 (an outage, not a usage error)', async function () {
    const port = await freePort();
    const started = Date.now();
    const p = run(['bump', '/users/1'], cleanEnv({ WAYMARK_REDIS_URL: `redis://:s3cret@127.0.0.1:${port}` }));
    expect(await p.exited).to.equal(1);
    expect(Date.now() - started).to.be.below(5_000);
    expect(p.stderr.trim().split('\n'), p.stderr).to.have.length(1);
    expect(p.stderr.trim()).to.match(new RegExp(`^waymark bump: Redis is unreachable at redis://:\\*+@127\\.0\\.0\\.1:${port}: ECONNREFUSED \\(check WAYMARK_REDIS_URL\\)$`));
    expect(p.stderr).not.to.include('s3cret');
  });

  it('serve with Redis down ends with one line naming Redis and why, exit 1', async function () {
    const port = await freePort();
    const p = run(['serve'], cleanEnv({ WAYMARK_API_URL: 'http://127.0.0.1:1', WAYMARK_REDIS_URL: `redis://127.0.0.1:${port}`, WAYMARK_ADMIN_PORT: '0', WAYMARK_LOG_LEVEL: 'error' }));
    expect(await p.exited).to.equal(1);
    expect(p.stderr.trim().split('\n').at(-1)).to.equal(`waymark serve: Redis is unreachable at redis://127.0.0.1:${port}: ECONNREFUSED (check WAYMARK_REDIS_URL)`);
    expect(p.stderr).not.to.include('Unhandled error event').and.not.include('    at ');
  });

  it('bump says when no Waymark instance listens on its channel', async function () {
    const channel = randomChannel();
    const p = run(['bump', '/users/1'], cleanEnv({ WAYMARK_REDIS_URL: testEnv.redisUrl, WAYMARK_BUMP_CHANNEL: channel }));
    expect(await p.exited).to.equal(0);
    expect(p.stderr.trim()).to.equal(`waymark bump: published 1 path on ${channel}, but no Waymark instance is subscribed to it: is 'waymark serve' running with this WAYMARK_REDIS_URL and WAYMARK_BUMP_CHANNEL?`);
  });

  it('watch with a realm the router does not have says the router refused it, in one line, exit 1', async function () {
    const p = run(['watch', '/users/1'], cleanEnv({ WAYMARK_ROUTER_URL: testEnv.routerUrl, WAYMARK_REALM: 'no-such-realm' }));
    expect(await p.exited).to.equal(1);
    expect(p.stderr.trim().split('\n'), p.stderr).to.have.length(1);
    expect(p.stderr.trim()).to.match(/^waymark watch: the router at ws:\/\/\S+ refused the session: wamp\.error\.no_such_realm.*; check WAYMARK_REALM \(no-such-realm\)$/);
  });

  it('demo-api with Redis down: an edit is saved and says its bump failed; one warning, no ioredis traces', async function () {
    const redisPort = await freePort();
    const p = run(['demo-api', '--port', '0'], cleanEnv({ WAYMARK_REDIS_URL: `redis://127.0.0.1:${redisPort}` }));
    const [, url] = await p.waitForOutput(/"url":"(http:\/\/127\.0\.0\.1:\d+)"/, 'stderr');
    const res = await fetch(`${url}/users/1`, { method: 'PUT', headers: { authorization: 'Bearer alice' }, body: '{"bio":"offline"}' });
    expect(res.status).to.equal(200);
    expect(await res.json()).to.deep.equal({ ok: true, version: 2, bumped: false, bumpError: `saved, but the bump failed (Redis is unreachable at redis://127.0.0.1:${redisPort}): watchers were not told` });
    await sleep(1_000); // several reconnect attempts
    expect(p.stderr).not.to.include('Unhandled error event');
    expect(p.stderr.split('\n').filter((l) => l.includes('Redis is unreachable'))).to.have.length(1);
  });

  it('serve with an unreachable router logs one line per attempt, the back-off growing 1.5 times per attempt', async function () {
    this.timeout(15_000);
    const port = await freePort();
    const p = run(['serve'], cleanEnv({
      WAYMARK_API_URL: 'http://127.0.0.1:1', WAYMARK_ROUTER_URL: `ws://127.0.0.1:${port}/ws`, WAYMARK_ADMIN_PORT: '0',
      WAYMARK_REDIS_URL: testEnv.redisUrl, WAYMARK_BUMP_CHANNEL: randomChannel(),
    }));
    // attempts at 0, ~0.5, ~1.25 and ~2.4 s
    await p.waitForOutput(/(?:router not reachable[^\n]*\n[^]*?){4}/, 'stderr', 8_000);
    const attempts = p.stderr.split('\n').filter((l) => l.includes('router not reachable')).map((l) => JSON.parse(l) as { timestamp: string; attempt: number; retryInSeconds: number });
    const shown = attempts.map((a) => `#${a.attempt} at ${a.timestamp.slice(11, 23)} retry in ${a.retryInSeconds} s`);
    console.log(`      ${shown.join('\n      ')}`);
    expect(attempts.map((a) => a.attempt)).to.deep.equal([1, 2, 3, 4].slice(0, attempts.length));
    for (let i = 1; i < attempts.length; i++) {
      // one line per attempt: the next comes after the delay the previous line announced
      const gap = Date.parse(attempts[i].timestamp) - Date.parse(attempts[i - 1].timestamp);
      expect(gap, shown.join('; ')).to.be.at.least(attempts[i - 1].retryInSeconds * 1000 - 50);
    }
    // 0.5 s, then x1.5 per attempt, as the docs state. autobahn jitters each step by a Gaussian
    // of 10 % SD applied to the delay so far, so the jitter compounds: check the first delay and
    // each step's ratio (two steps per attempt, the old bug, would be x2.25).
    expect(attempts[0].retryInSeconds, shown.join('; ')).to.be.within(0.5 * 0.6, 0.5 * 1.4);
    for (let i = 1; i < attempts.length; i++) {
      expect(attempts[i].retryInSeconds / attempts[i - 1].retryInSeconds, shown.join('; ')).to.be.within(1.5 * 0.6, 1.5 * 1.4);
    }
    p.kill('SIGTERM');
    expect(await p.exited).to.equal(0);
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

  it('bump exits 1 at once naming the cluster or the sentinels when none answers', async function () {
    const port = await freePort();
    for (const [env, message] of [
      [{ WAYMARK_REDIS_CLUSTER_NODES: `127.0.0.1:${port}` }, `Redis is unreachable at cluster via 127.0.0.1:${port}: .* \\(check WAYMARK_REDIS_CLUSTER_NODES\\)`],
      [{ WAYMARK_REDIS_SENTINELS: `127.0.0.1:${port}`, WAYMARK_REDIS_SENTINEL_NAME: 'm' }, `Redis is unreachable at sentinel master set m via 127.0.0.1:${port}: .* \\(check WAYMARK_REDIS_SENTINELS\\)`],
    ] as Array<[Record<string, string>, string]>) {
      const t0 = Date.now();
      const p = run(['bump', '/users/1'], cleanEnv(env));
      expect(await p.exited, p.stderr).to.equal(1);
      expect(p.stderr.trim().split('\n')).to.have.length(1);
      expect(p.stderr).to.match(new RegExp(`^waymark bump: ${message}`));
      expect(Date.now() - t0).to.be.below(5_000);
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
      expect(p.stderr).to.include(`added 1 path to stream ${stream}`);
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
    // the first steps show a change: the edit comes before the bump, which says why it may push nothing
    expect(dev.stdout.indexOf('curl -X PUT')).to.be.below(dev.stdout.indexOf('waymark bump'));
    expect(dev.stdout).to.include("A bump with nothing changed pushes nothing");

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
    expect(bump.stderr).to.include('1 Waymark subscriber received it').and.include("watchers get an Update only if the API's answer changed");
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

  it("docs/protocol.md's plain-autobahn snippet connects as written inside this package (and says why it needs `protocols`)", async function () {
    const { readFile, writeFile, mkdir } = await import('node:fs/promises');
    const { fileURLToPath } = await import('node:url');
    const root = fileURLToPath(new URL('../../', import.meta.url));
    const doc = await readFile(`${root}docs/protocol.md`, 'utf8');
    const snippet = /```js\n(import autobahn from 'autobahn';[^]*?)```/.exec(doc)?.[1];
    expect(snippet, 'the snippet in docs/protocol.md').to.be.a('string');
    const api = await new Upstream().start();
    const wm = await startWaymark(api.url);
    // Inside the package, so `autobahn` resolves to this checkout's (on ws 8, as the override says).
    const dir = `${root}spec-output`;
    await mkdir(dir, { recursive: true });
    const runSnippet = async (code: string) => {
      const file = `${dir}/protocol-snippet-${randomChannel()}.mjs`;
      const program = code.replace('ws://127.0.0.1:8080/ws', testEnv.routerUrl).replace("realm: 'realm1'", `realm: ${JSON.stringify(testEnv.realm)}`)
        .replace("import autobahn from 'autobahn';", "import autobahn from 'autobahn';\nconst token = 'alice';\nconst render = (u) => { console.log(JSON.stringify(u)); process.exit(0); };\nsetTimeout(() => process.exit(3), 3000);");
      await writeFile(file, program);
      const { spawn } = await import('node:child_process');
      const child = spawn(process.execPath, [file], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d) => { out += String(d); });
      child.stderr.on('data', (d) => { out += String(d); });
      const code_ = await new Promise<number | null>((resolve) => child.on('exit', resolve));
      return { code: code_, out };
    };
    try {
      const asWritten = await runSnippet(snippet!);
      expect(asWritten.code, asWritten.out).to.equal(0);
      expect(JSON.parse(asWritten.out.trim().split('\n')[0])).to.include({ path: '/users/1', status: 200 });
      // the reason the docs give: without the option, ws 8 refuses autobahn's default offer
      const without = await runSnippet(snippet!.replace(/^\s*protocols: .*\n/m, ''));
      expect(without.code).to.equal(3);
      expect(without.out).to.include('An invalid or duplicated subprotocol was specified');
    } finally {
      await wm.close();
      await api.close();
    }
  });

  it('watch reports a refused path as a usage error: one line, exit 2 (as bump does)', async function () {
    const api = await new Upstream().start();
    const wm = await startWaymark(api.url);
    try {
      const p = run(['watch', '//evil.test/x'], cleanEnv({ WAYMARK_ROUTER_URL: testEnv.routerUrl, WAYMARK_REALM: testEnv.realm }));
      expect(await p.exited).to.equal(2);
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
