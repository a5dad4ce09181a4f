import { expect } from 'chai';
import { componentEnv, randomChannel, sleep, testEnv } from './helpers/env.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { cleanEnv, CliRunner, freePort } from './helpers/spawn.js';
import { Upstream } from './helpers/upstream.js';

const CHECKS = ['router', 'realm', 'authentication', 'redis', 'api', 'waymark.watch'];

/** The check lines of doctor's stdout, by name: { router: '✓ router ...' }. */
function lines(stdout: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of stdout.split('\n')) {
    const m = /^([✓✗–]) (\S+)\s/.exec(line);
    if (m) out[m[2]] = line;
  }
  return out;
}

describe('waymark doctor', function () {
  this.timeout(30_000);
  const cli = new CliRunner();
  const run = (args: string[], env: NodeJS.ProcessEnv) => cli.run(args, env);
  let api: Upstream;
  let harness: Harness | undefined;

  before(async function () {
    api = await new Upstream().start();
  });
  afterEach(async function () {
    await cli.killAll();
    await harness?.close();
    harness = undefined;
  });
  after(async function () {
    await api.close();
  });

  /** The environment `waymark serve` would run with against the test router, Redis and upstream. */
  const envFor = (channel: string, extra: Record<string, string> = {}) => cleanEnv({
    ...componentEnv(channel, api.url),
    ...extra,
  });

  it('--help prints its usage and exits 0', async function () {
    const p = run(['doctor', '--help'], cleanEnv());
    expect(await p.exited).to.equal(0);
    expect(p.stdout).to.match(/^Usage: waymark doctor/);
    for (const c of CHECKS) expect(p.stdout).to.include(c);
  });

  it('a bad setting exits 2 with one line naming it', async function () {
    const p = run(['doctor'], cleanEnv({ WAYMARK_API_URL: 'http://127.0.0.1:1', WAYMARK_REDIS_URL: 'http://x' }));
    expect(await p.exited).to.equal(2);
    expect(p.stderr.trim().split('\n')).to.have.length(1);
    expect(p.stderr).to.match(/^waymark doctor: WAYMARK_REDIS_URL: /);
  });

  it('without WAYMARK_API_URL it checks the dev setup `waymark dev` prints, and says so first', async function () {
    harness = await startWaymark(api.url);
    // only what a newcomer beside `waymark dev` would have: no API URL, no credentials
    const p = run(['doctor', '--timeout-ms', '1000'], cleanEnv({ WAYMARK_ROUTER_URL: testEnv.routerUrl, WAYMARK_REDIS_URL: testEnv.redisUrl, WAYMARK_BUMP_CHANNEL: harness.channel }));
    const code = await p.exited;
    expect(code, p.stderr).to.be.oneOf([0, 1]);
    expect(p.stderr).to.equal('');
    const first = p.stdout.split('\n')[0];
    expect(first).to.match(/^waymark doctor \S+: WAYMARK_API_URL is not set, so checking the dev setup 'waymark dev' prints: router ws:\/\/127\.0\.0\.1:\d+\/ws realm \S+, redis \S+, API http:\/\/127\.0\.0\.1:8000$/);
    const found = lines(p.stdout);
    expect(Object.keys(found)).to.deep.equal(CHECKS);
    expect(found.api).to.include('http://127.0.0.1:8000');
    for (const c of ['router', 'realm', 'authentication', 'redis', 'waymark.watch']) expect(found[c], c).to.match(/^✓ /);
  });

  it('a healthy setup: every check passes and it exits 0', async function () {
    harness = await startWaymark(api.url);
    const before = api.requests.length;
    const p = run(['doctor'], envFor(harness.channel));
    expect(await p.exited, p.stdout + p.stderr).to.equal(0);
    console.log(`      healthy setup:\n${p.stdout.replace(/^/gm, '        ')}`);
    const found = lines(p.stdout);
    expect(Object.keys(found)).to.deep.equal(CHECKS);
    for (const c of CHECKS) expect(found[c], c).to.match(/^✓ /);
    expect(found.authentication).to.include(`authid ${testEnv.authid}`).and.include('role backend');
    // the harness's instance is subscribed to the channel and saw the probe bump (matching no watch)
    expect(found.redis).to.include('1 other subscriber');
    expect(found['waymark.watch']).to.include('waymark.error.invalid_path');
    expect(p.stdout).to.match(/all 6 checks passed\n$/);
    // the API was asked once, as the doctor; the invalid watch never reached it
    const seen = api.requests.slice(before);
    expect(seen).to.have.length(1);
    expect(seen[0].headers['x-waymark']).to.equal('doctor');
    // the ticket is never printed
    expect(p.stdout + p.stderr).not.to.include(testEnv.ticket);
  });

  it('a broken setup (router, Redis and API on closed ports) names each failing check and exits 1', async function () {
    const [routerPort, redisPort, apiPort] = await Promise.all([freePort(), freePort(), freePort()]);
    const started = Date.now();
    const p = run(['doctor'], cleanEnv({
      WAYMARK_ROUTER_URL: `ws://127.0.0.1:${routerPort}/ws`,
      WAYMARK_REDIS_URL: `redis://127.0.0.1:${redisPort}`,
      WAYMARK_API_URL: `http://127.0.0.1:${apiPort}`,
    }));
    expect(await p.exited).to.equal(1);
    console.log(`      broken setup (${Date.now() - started} ms):\n${p.stdout.replace(/^/gm, '        ')}`);
    const found = lines(p.stdout);
    expect(Object.keys(found)).to.deep.equal(CHECKS);
    expect(found.router).to.match(/^✗ router .*ECONNREFUSED.*WAYMARK_ROUTER_URL/);
    expect(found.redis).to.match(/^✗ redis .*ECONNREFUSED.*WAYMARK_REDIS_URL/);
    expect(found.api).to.match(/^✗ api .*ECONNREFUSED.*WAYMARK_API_URL/);
    for (const c of ['realm', 'authentication', 'waymark.watch']) expect(found[c], c).to.match(/^– .*not checked/);
    expect(p.stdout).to.include('3 of 6 checks failed (router, redis, api)');
  });

  it('a wrong ticket fails authentication; the realm is still shown to exist', async function () {
    const p = run(['doctor'], envFor(randomChannel(), { WAYMARK_ROUTER_TICKET: 'not-the-ticket' }));
    expect(await p.exited).to.equal(1);
    const found = lines(p.stdout);
    expect(found.realm).to.match(/^✓ realm /);
    expect(found.authentication).to.match(/^✗ authentication .*refused authid waymark.*WAYMARK_ROUTER_TICKET/);
    expect(found['waymark.watch']).to.match(/^– /);
    expect(p.stdout).not.to.include('not-the-ticket');
  });

  it('an unknown realm fails the realm check', async function () {
    const p = run(['doctor'], envFor(randomChannel(), { WAYMARK_REALM: 'no-such-realm' }));
    expect(await p.exited).to.equal(1);
    expect(lines(p.stdout).realm).to.match(/^✗ realm .*no realm "no-such-realm".*WAYMARK_REALM/);
  });

  it('a router without a Waymark instance fails the waymark.watch check', async function () {
    const p = run(['doctor'], envFor(randomChannel()));
    expect(await p.exited).to.equal(1);
    const found = lines(p.stdout);
    for (const c of ['router', 'realm', 'authentication', 'redis', 'api']) expect(found[c], c).to.match(/^✓ /);
    expect(found.redis).to.include('0 other subscribers');
    expect(found['waymark.watch']).to.match(/^✗ waymark\.watch .*nobody has registered waymark\.watch.*waymark serve/);
  });

  describe('--listen-ms: where bumps go', function () {
    /** Doctor with --listen-ms; `publish` runs once the bumps check is watching Redis. */
    async function listen(publish: (redis: import('ioredis').Redis, channel: string) => Promise<unknown>) {
      harness = await startWaymark(api.url);
      const { Redis } = await import('ioredis');
      const redis = new Redis(testEnv.redisUrl);
      try {
        const p = run(['doctor', '--listen-ms', '1500'], envFor(harness.channel));
        await p.waitForOutput(/waymark\.watch .*\n/);
        await sleep(300); // MONITOR is on by now
        await publish(redis, harness.channel);
        const code = await p.exited;
        return { code, p, line: lines(p.stdout).bumps, channel: harness.channel };
      } finally {
        await redis.quit();
      }
    }

    it("a default Laravel app's bumps (Redis facade: laravel_database_ prefix) are found and named", async function () {
      const { code, p, line, channel } = await listen((redis, ch) => Promise.all([redis.publish(`laravel_database_${ch}`, '/users/1'), redis.publish(`laravel_database_${ch}`, '/users/2')]));
      console.log(`        ${line}`);
      expect(code, p.stdout).to.equal(1);
      expect(line).to.match(/^✗ bumps /);
      expect(line).to.include(`0 bump(s) on ${channel}, but 2 PUBLISH on laravel_database_${channel}, which no Waymark hears`)
        .and.include('"laravel_database_" (Laravel\'s Redis prefix)')
        .and.include(`set WAYMARK_BUMP_CHANNEL=laravel_database_${channel}`);
      expect(p.stdout).to.include('1 of 7 checks failed (bumps)');
    });

    it('bumps on the right channel pass; silence is "not checked", never a pass', async function () {
      const ok = await listen((redis, ch) => redis.publish(ch, '/users/1'));
      expect(ok.code, ok.p.stdout).to.equal(0);
      expect(ok.line).to.match(new RegExp(`^✓ bumps +in 1500 ms: 1 bump\\(s\\) published on ${ok.channel}`));
      await harness!.close();
      harness = undefined;
      const quiet = await listen(async () => undefined);
      expect(quiet.code, quiet.p.stdout).to.equal(0);
      expect(quiet.line).to.match(new RegExp(`^– bumps +in 1500 ms: no bump on ${quiet.channel}.*change something in your app while this runs`));
      expect(quiet.p.stdout).to.include('6 of 7 checks passed, bumps not checked');
    });
  });

  it('a check that hangs is cut off at --timeout-ms', async function () {
    // an API that accepts the connection and never answers
    const slow = await new Upstream().start();
    slow.handler = () => undefined;
    harness = await startWaymark(api.url);
    try {
      const started = Date.now();
      const p = run(['doctor', '--timeout-ms', '500'], envFor(harness.channel, { WAYMARK_API_URL: slow.url }));
      expect(await p.exited).to.equal(1);
      expect(Date.now() - started).to.be.below(15_000);
      expect(lines(p.stdout).api).to.match(/^✗ api .*no HTTP answer within 500 ms/);
    } finally {
      await slow.close();
    }
  });
});
