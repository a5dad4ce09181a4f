import { expect } from 'chai';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import { BumpEndpoint } from '../lib/bumps/bump-endpoint.js';
import { MAX_BUMP_MESSAGE_BYTES } from '../lib/bumps/bump-source.js';
import { silentLogger } from '../lib/support/logger.js';
import type { WatchResult } from '../lib/protocol/types.js';
import { PROC_WATCH } from '../lib/protocol/uris.js';
import { randomChannel, sleep, testEnv, waitFor } from './helpers/env.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { freePort } from './helpers/spawn.js';
import { Upstream } from './helpers/upstream.js';
import { ClientPool } from './helpers/wamp-client.js';

const SECRET = 'test-bump-secret-0123456789abcdef';

/** One series' value from Prometheus text (the first sample whose name and labels start so). */
function sample(text: string, prefix: string): number {
  const line = text.split('\n').find((l) => l.startsWith(prefix));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

describe('POST /bump on the admin port', function () {
  this.timeout(20_000);
  let api: Upstream;
  let wm: Harness;
  let admin: string;
  const pool = new ClientPool();
  const extra: Harness[] = [];

  const post = (body: string, headers: Record<string, string> = { authorization: `Bearer ${SECRET}` }) =>
    fetch(`${admin}/bump`, { method: 'POST', headers: { 'content-type': 'text/plain', ...headers }, body });

  beforeEach(async function () {
    api = await new Upstream().start();
    const port = await freePort();
    wm = await startWaymark(api.url, { WAYMARK_ADMIN_PORT: String(port), WAYMARK_BUMP_SECRET: SECRET });
    admin = `http://127.0.0.1:${port}`;
  });
  afterEach(async function () {
    await pool.closeAll();
    for (const h of extra.splice(0)) await h.close();
    await wm.close();
    await api.close();
  });

  it('a bump by POST reaches a watcher, in each of the three message forms', async function () {
    const c = await pool.open();
    const w = await c.call<WatchResult>(PROC_WATCH, ['/users/1', { token: 'alice' }]);
    await c.call(PROC_WATCH, ['/teams/4', { token: 'alice' }]);

    const text = await post('/users/1\n');
    expect(text.status).to.equal(202);
    const first = await text.json() as { paths: string[]; id: string };
    expect(first.paths).to.deep.equal(['/users/1']);
    expect(first.id).to.be.a('string').and.not.be.empty;
    const [u] = await c.waitForUpdates(1);
    expect(u).to.include({ watch: w.watch, path: '/users/1', status: 200 });
    expect(u.bump!.id).to.equal(first.id);
    expect(api.requestsFor('/users/1').at(-1)!.headers['x-waymark']).to.equal(first.id);

    const one = await post(JSON.stringify({ path: '/users/1', id: 'order-1' }), { authorization: `Bearer ${SECRET}`, 'content-type': 'application/json' });
    expect(one.status).to.equal(202);
    expect(await one.json()).to.deep.equal({ paths: ['/users/1'], id: 'order-1' });
    await waitFor('the JSON bump to arrive', () => api.requestsFor('/users/1').some((r) => r.headers['x-waymark'] === 'order-1'));

    const many = await post(JSON.stringify({ paths: ['/users/1', '/teams/4'], id: 'order-2' }), { authorization: `Bearer ${SECRET}`, 'content-type': 'application/json' });
    expect(many.status).to.equal(202);
    expect(await many.json()).to.deep.equal({ paths: ['/users/1', '/teams/4'], id: 'order-2' });
    await waitFor('both paths refetched for order-2', () =>
      api.requestsFor('/users/1').some((r) => r.headers['x-waymark'] === 'order-2') && api.requestsFor('/teams/4').some((r) => r.headers['x-waymark'] === 'order-2'));
    expect(wm.logs.join('')).to.include('bump accepted over HTTP').and.not.include(SECRET);
  });

  it('publishes through Redis, so another instance on the channel (without a secret) receives it too', async function () {
    const otherPort = await freePort();
    const other = await startWaymark(api.url, { WAYMARK_BUMP_CHANNEL: wm.channel, WAYMARK_ADMIN_PORT: String(otherPort) });
    extra.push(other);
    const metrics = () => fetch(`http://127.0.0.1:${otherPort}/metrics`).then((r) => r.text());
    const before = sample(await metrics(), 'waymark_bumps_received_total');
    expect((await post('/anything/at/all')).status).to.equal(202);
    await waitFor('the other instance to count the bump', async () => sample(await metrics(), 'waymark_bumps_received_total') === before + 1);
    // that instance has no secret: its /bump does not exist
    expect((await fetch(`http://127.0.0.1:${otherPort}/bump`, { method: 'POST', body: '/x', headers: { authorization: `Bearer ${SECRET}` } })).status).to.equal(404);
  });

  it('refuses a missing or wrong secret with 401 and publishes nothing', async function () {
    const sub = new Redis(testEnv.redisUrl);
    const heard: string[] = [];
    try {
      await sub.subscribe(wm.channel);
      sub.on('message', (_ch: string, m: string) => heard.push(m));
      const cases: Array<Record<string, string>> = [
        {},
        { authorization: 'Bearer wrong-secret-0123456789abcdef' },
        { authorization: `Bearer ${SECRET}x` },
        { authorization: `Bearer ${SECRET.slice(0, -1)}` },
        { authorization: `Basic ${Buffer.from(`x:${SECRET}`).toString('base64')}` },
        { authorization: SECRET },
      ];
      for (const headers of cases) {
        const res = await post('/users/1', headers);
        expect(res.status, JSON.stringify(headers)).to.equal(401);
        expect(res.headers.get('www-authenticate')).to.match(/^Bearer/);
      }
      // a request that is published, as a marker: nothing before it was
      expect((await post('/marker')).status).to.equal(202);
      await waitFor('the marker bump', () => heard.length > 0);
      expect(heard).to.have.length(1);
      expect(JSON.parse(heard[0]).path).to.equal('/marker');
      const text = await (await fetch(`${admin}/metrics`)).text();
      expect(sample(text, 'waymark_bump_requests_total{status="401"}')).to.equal(cases.length);
      expect(sample(text, 'waymark_bump_requests_total{status="202"}')).to.equal(1);
      const logs = wm.logs.join('');
      expect(logs).to.include('missing or wrong WAYMARK_BUMP_SECRET');
      expect(logs).not.to.include(SECRET.slice(0, 20));
      expect(logs).not.to.include('wrong-secret');
    } finally {
      sub.disconnect();
    }
  });

  it('answers 400 with a specific message for each kind of bad body', async function () {
    const cases: Array<[string, RegExp]> = [
      ['', /neither a path nor a JSON object/],
      ['users/1', /neither a path nor a JSON object/],
      ['{"path": ', /not valid JSON/],
      ['[1, 2]', /neither a path nor a JSON object/],
      ['{"path": 5}', /needs a string "path" or an array "paths"/],
      ['{"path": "/a", "paths": ["/b"]}', /needs a string "path" or an array "paths"/],
      ['{"path": "/a", "id": ""}', /id must be a non-empty string/],
      ['{"path": "//evil.test/x"}', /no valid path.*must not contain "\/\/"/],
      ['{"paths": ["/ok", "/a/../b"]}', /1 path\(s\) refused, nothing was bumped: .*"\.\." segments/],
    ];
    for (const [body, message] of cases) {
      const res = await post(body);
      expect(res.status, body).to.equal(400);
      const answer = await res.json() as { error: string; expected: string };
      expect(answer.error, body).to.match(message);
      expect(answer.expected).to.include('/users/1');
    }
    expect(api.requests).to.have.length(0);
  });

  it('caps the body size (413) and takes only POST (405)', async function () {
    const big = await post(`/${'a'.repeat(MAX_BUMP_MESSAGE_BYTES)}`);
    expect(big.status).to.equal(413);
    // chunked, no Content-Length: cut while streaming
    const streamed = await new Promise<number>((resolve, reject) => {
      const req = request(`${admin}/bump`, { method: 'POST', headers: { authorization: `Bearer ${SECRET}` } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      for (let i = 0; i < 20; i++) req.write('/'.padEnd(8 * 1024, 'a'));
      req.end();
    });
    expect(streamed).to.equal(413);
    const get = await fetch(`${admin}/bump`, { headers: { authorization: `Bearer ${SECRET}` } });
    expect(get.status).to.equal(405);
    expect(get.headers.get('allow')).to.equal('POST');
    // the admin port still serves the rest
    expect((await fetch(`${admin}/healthz`)).status).to.equal(200);
  });

  it('is off (404) when WAYMARK_BUMP_SECRET is unset', async function () {
    const port = await freePort();
    const off = await startWaymark(api.url, { WAYMARK_ADMIN_PORT: String(port) });
    extra.push(off);
    for (const method of ['POST', 'GET']) {
      const res = await fetch(`http://127.0.0.1:${port}/bump`, { method, ...(method === 'POST' ? { body: '/users/1' } : {}), headers: { authorization: `Bearer ${SECRET}` } });
      expect(res.status, method).to.equal(404);
    }
    expect((await fetch(`http://127.0.0.1:${port}/readyz`)).status).to.equal(200);
  });
});

describe('BumpEndpoint without Redis', function () {
  let server: Server;
  let endpoint: BumpEndpoint;
  let url: string;

  before(async function () {
    const redisPort = await freePort();
    endpoint = new BumpEndpoint({
      secret: SECRET,
      bumper: { redisUrl: `redis://127.0.0.1:${redisPort}`, channel: randomChannel() },
      maxPathBytes: 2048,
      logger: silentLogger(),
      publishTimeoutMs: 1_000,
    });
    server = createServer(endpoint.handle);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/bump`;
  });
  after(async function () {
    await new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections(); });
    await endpoint.close();
    await endpoint.close();
  });

  it('answers 503 with Retry-After when the bump cannot be published', async function () {
    const started = Date.now();
    const res = await fetch(url, { method: 'POST', body: '/users/1', headers: { authorization: `Bearer ${SECRET}` } });
    expect(res.status).to.equal(503);
    expect(res.headers.get('retry-after')).to.equal('1');
    expect(Date.now() - started).to.be.below(5_000);
    await sleep(10);
  });
});
