import { expect } from 'chai';
import type { Update, WatchResult } from '../lib/protocol/types.js';
import { ERROR_URIS, PROC_UNWATCH, PROC_WATCH } from '../lib/protocol/uris.js';
import { sleep, waitFor } from './helpers/env.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { Upstream, upstreamVersion } from './helpers/upstream.js';
import { Client, ClientPool } from './helpers/wamp-client.js';
import { VERSION } from '../lib/protocol/version.js';

describe('end to end: watch -> bump -> refetch as the client -> private push', function () {
  let api: Upstream;
  let wm: Harness;
  const pool = new ClientPool();
  const client = () => pool.open();

  beforeEach(async function () {
    upstreamVersion.value = 1;
    api = await new Upstream().start();
    wm = await startWaymark(api.url);
  });

  afterEach(async function () {
    await pool.closeAll();
    await wm.close();
    await api.close();
  });

  it('gives two sessions with different tokens on one path each their own body, fetched as them', async function () {
    const alice = await client();
    const bob = await client();
    const a = await alice.call<WatchResult>(PROC_WATCH, ['/users/1', { token: 'alice-token' }]);
    const b = await bob.call<WatchResult>(PROC_WATCH, ['/users/1'], { token: 'bob-token' });
    expect(a.path).to.equal('/users/1');
    expect(a.topic).to.equal(`waymark.session.${alice.id}`);
    expect(b.topic).to.equal(`waymark.session.${bob.id}`);
    expect(a.watch).to.be.a('string').and.not.match(/^\//);
    expect(a.snapshot).to.equal(undefined);

    expect(await wm.bump(JSON.stringify({ path: '/users/1', id: 'bump-42' }))).to.equal(1);
    const [ua] = await alice.waitForUpdates(1);
    const [ub] = await bob.waitForUpdates(1);
    expect(JSON.parse(ua.body).token).to.equal('alice-token');
    expect(JSON.parse(ub.body).token).to.equal('bob-token');
    expect(ua).to.include({ watch: a.watch, path: '/users/1', status: 200, encoding: 'utf8' });
    expect(ua.bump).to.include({ id: 'bump-42' });
    expect(ua.bump!.at).to.be.a('number');
    expect(ua.fetchedAt).to.be.at.least(ua.bump!.at);
    // response allowlist: content-type and etag pass, set-cookie and unknown headers never
    expect(ua.headers).to.deep.equal({ 'content-type': 'application/json', etag: '"v1"' });

    const seen = api.requestsFor('/users/1');
    expect(seen).to.have.length(2);
    expect(seen.map((r) => r.headers.authorization).sort()).to.deep.equal(['Bearer alice-token', 'Bearer bob-token']);
    for (const r of seen) {
      expect(r.method).to.equal('GET');
      expect(r.headers['x-waymark']).to.equal('bump-42');
      expect(r.headers['user-agent']).to.equal(`waymark/${VERSION}`);
    }
  });

  it('never delivers one session\'s updates to another, even one that tries to subscribe', async function () {
    const alice = await client();
    const eve = await client();
    const denied = await eve.session.subscribe(alice.topic, (args) => { eve.updates.push(args?.[0] as Update); })
      .then(() => null, (err: { error: string }) => err.error);
    expect(denied).to.equal('wamp.error.not_authorized');
    const prefix = await eve.session.subscribe('waymark.session.', (args) => { eve.updates.push(args?.[0] as Update); }, { match: 'prefix' })
      .then(() => null, (err: { error: string }) => err.error);
    expect(prefix).to.equal('wamp.error.not_authorized');
    await alice.call(PROC_WATCH, ['/users/1', { token: 'alice-token' }]);
    await wm.bump('/users/1');
    await alice.waitForUpdates(1);
    await sleep(100);
    expect(eve.updates).to.have.length(0);
  });

  it('returns a first fetch with snapshot: true, fetched with X-Waymark: snapshot', async function () {
    const c = await client();
    const r = await c.call<WatchResult>(PROC_WATCH, ['/users/7', { token: 't', snapshot: true }]);
    expect(r.snapshot).to.include({ watch: r.watch, path: '/users/7', status: 200, bump: null });
    expect(JSON.parse(r.snapshot!.body)).to.include({ token: 't', path: '/users/7' });
    expect(api.requests[0].headers['x-waymark']).to.equal('snapshot');
    // unchanged since the snapshot: the next bump publishes nothing; a change is published
    await wm.bump('/users/7');
    await waitFor('the refetch', () => api.requests.length === 2);
    await sleep(100);
    expect(c.updates).to.have.length(0);
    upstreamVersion.value = 2;
    await wm.bump('/users/7');
    const [u] = await c.waitForUpdates(1);
    expect(JSON.parse(u.body).version).to.equal(2);
  });

  it('returns the same watch id for the same path, and other credentials replace the old ones', async function () {
    const c = await client();
    const first = await c.call<WatchResult>(PROC_WATCH, ['/posts?page=2', { token: 'one' }]);
    const again = await c.call<WatchResult>(PROC_WATCH, ['/posts?page=2', { token: 'one' }]);
    const other = await c.call<WatchResult>(PROC_WATCH, ['/posts?page=2', { token: 'two' }]);
    expect(again.watch).to.equal(first.watch);
    expect(other.watch).to.equal(first.watch);
    expect(wm.waymark.registry.size).to.equal(1);
    await wm.bump('/posts?page=2');
    const [u] = await c.waitForUpdates(1);
    expect(JSON.parse(u.body).token).to.equal('two');
    expect(api.requests.map((r) => r.headers.authorization)).to.deep.equal(['Bearer two']);
    // the query string is part of the path: another page is another watch
    await wm.bump('/posts?page=3');
    await sleep(100);
    expect(api.requests).to.have.length(1);
  });

  it('unwatches by id, by path, and answers removed: 0 for an unknown id', async function () {
    const c = await client();
    const w1 = await c.call<WatchResult>(PROC_WATCH, ['/a', { token: 't' }]);
    await c.call(PROC_WATCH, ['/b', { token: 't' }]);
    expect(await c.call(PROC_UNWATCH, [w1.watch])).to.deep.equal({ removed: 1 });
    expect(await c.call(PROC_UNWATCH, ['/b'])).to.deep.equal({ removed: 1 });
    expect(await c.call(PROC_UNWATCH, ['wNoSuchWatch'])).to.deep.equal({ removed: 0 });
    expect(await c.call(PROC_UNWATCH, [w1.watch])).to.deep.equal({ removed: 0 });
    await wm.bump(JSON.stringify({ paths: ['/a', '/b'] }));
    await sleep(150);
    expect(api.requests).to.have.length(0);
    expect(c.updates).to.have.length(0);
  });

  it('lets no session unwatch another session\'s watch', async function () {
    const alice = await client();
    const eve = await client();
    const w = await alice.call<WatchResult>(PROC_WATCH, ['/a', { token: 't' }]);
    expect(await eve.call(PROC_UNWATCH, [w.watch])).to.deep.equal({ removed: 0 });
    expect(await eve.call(PROC_UNWATCH, ['/a'])).to.deep.equal({ removed: 0 });
    expect(wm.waymark.registry.size).to.equal(1);
  });

  it('drops the watches of a session that leaves: no further request', async function () {
    const c = await client();
    const stays = await client();
    await c.call(PROC_WATCH, ['/users/1', { token: 'gone' }]);
    await stays.call(PROC_WATCH, ['/users/1', { token: 'stays' }]);
    await c.close();
    await waitFor('the leave to drop the watch', () => wm.waymark.registry.size === 1);
    await wm.bump('/users/1');
    await stays.waitForUpdates(1);
    expect(api.requests.map((r) => r.headers.authorization)).to.deep.equal(['Bearer stays']);
  });

  it('accepts all three bump forms and survives a malformed one', async function () {
    const c = await client();
    await c.call(PROC_WATCH, ['/x', { token: 't' }]);
    await c.call(PROC_WATCH, ['/y', { token: 't' }]);
    await wm.bump('{"path": "/x", "id": "not closed"');
    await wm.bump('definitely not a bump');
    await wm.bump('/x');
    await waitFor('bare path', () => api.requests.length === 1);
    upstreamVersion.value = 2;
    await wm.bump(JSON.stringify({ path: '/x', id: 'single' }));
    await waitFor('json path', () => api.requests.length === 2);
    upstreamVersion.value = 3;
    await wm.bump(JSON.stringify({ paths: ['/x', '/y'], id: 'many' }));
    await waitFor('json paths', () => api.requests.length === 4);
    const updates = await c.waitForUpdates(4);
    expect(updates.map((u) => u.bump?.id).slice(1)).to.deep.equal(['single', 'many', 'many']);
    expect(updates[0].bump?.id).to.be.a('string').with.length.above(8);
    expect(api.requests.slice(2).map((r) => r.headers['x-waymark'])).to.deep.equal(['many', 'many']);
    expect(wm.logs.join('')).to.include('dropped a malformed bump');
  });

  it('pushes the upstream status as it is (500, 3xx without following the redirect)', async function () {
    const c = await client();
    api.handler = (req, res) => {
      if (req.url === '/moved') res.writeHead(302, { location: 'http://127.0.0.2:1/elsewhere' }).end();
      else res.writeHead(500, { 'content-type': 'text/plain' }).end('boom');
    };
    await c.call(PROC_WATCH, ['/broken', { token: 't' }]);
    await c.call(PROC_WATCH, ['/moved', { token: 't' }]);
    await wm.bump(JSON.stringify({ paths: ['/broken', '/moved'] }));
    const updates = await c.waitForUpdates(2);
    const broken = updates.find((u) => u.path === '/broken')!;
    const moved = updates.find((u) => u.path === '/moved')!;
    expect(broken).to.include({ status: 500, body: 'boom', encoding: 'utf8' });
    expect(broken.error).to.equal(undefined);
    expect(moved.status).to.equal(302);
    expect(moved.headers.location).to.equal('http://127.0.0.2:1/elsewhere');
    expect(api.requests).to.have.length(2);
  });

  it('publishes status 0 with error "timeout" when the API is too slow', async function () {
    await wm.close();
    wm = await startWaymark(api.url, { WAYMARK_FETCH_TIMEOUT_MS: '200' });
    const c = await client();
    api.handler = (_req, res) => { setTimeout(() => res.writeHead(200).end('late'), 1_000).unref(); };
    await c.call(PROC_WATCH, ['/slow', { token: 't' }]);
    await wm.bump('/slow');
    const [u] = await c.waitForUpdates(1);
    expect(u.status).to.equal(0);
    expect(u.error?.code).to.equal('timeout');
    expect(u.body).to.equal('');
  });

  it('publishes status 0 with error "unreachable" when the API refuses connections', async function () {
    const deadUrl = api.url;
    await api.close();
    await wm.close();
    wm = await startWaymark(deadUrl);
    const c = await client();
    await c.call(PROC_WATCH, ['/users/1', { token: 't' }]);
    await wm.bump('/users/1');
    const [u] = await c.waitForUpdates(1);
    expect(u).to.include({ status: 0, body: '' });
    expect(u.error?.code).to.equal('unreachable');
    api = await new Upstream().start(); // afterEach closes it
  });

  it('publishes the status and headers with error "too_large" and no body over the body limit', async function () {
    await wm.close();
    wm = await startWaymark(api.url, { WAYMARK_MAX_BODY_BYTES: '1000' });
    const c = await client();
    api.handler = (req, res) => {
      if (req.url === '/declared') res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '1001' }).end('x'.repeat(1001));
      else if (req.url === '/streamed') { res.writeHead(200, { 'content-type': 'text/plain' }); res.write('y'.repeat(600)); res.end('y'.repeat(600)); }
      else res.writeHead(200, { 'content-type': 'text/plain' }).end('z'.repeat(1000));
    };
    for (const p of ['/declared', '/streamed', '/exact']) await c.call(PROC_WATCH, [p, { token: 't' }]);
    await wm.bump(JSON.stringify({ paths: ['/declared', '/streamed', '/exact'] }));
    const updates = await c.waitForUpdates(3);
    const by = (p: string) => updates.find((u) => u.path === p)!;
    for (const p of ['/declared', '/streamed']) {
      expect(by(p)).to.include({ status: 200, body: '' });
      expect(by(p).error?.code).to.equal('too_large');
      expect(by(p).headers['content-type']).to.equal('text/plain');
    }
    expect(by('/exact').body).to.have.length(1000);
    expect(by('/exact').error).to.equal(undefined);
  });

  it('sends a binary body as base64', async function () {
    const c = await client();
    const bytes = Buffer.from([0, 1, 2, 250, 251, 252, 253, 254, 255]);
    api.handler = (_req, res) => res.writeHead(200, { 'content-type': 'image/png' }).end(bytes);
    await c.call(PROC_WATCH, ['/avatar.png', { token: 't' }]);
    await wm.bump('/avatar.png');
    const [u] = await c.waitForUpdates(1);
    expect(u.encoding).to.equal('base64');
    expect(Buffer.from(u.body, 'base64').equals(bytes)).to.equal(true);
    expect(u.headers['content-type']).to.equal('image/png');
  });

  it('forwards allowlisted headers only, and never logs the token or cookie', async function () {
    const c = await client();
    await c.call(PROC_WATCH, ['/me', { headers: { Cookie: 'session=SECRET-COOKIE-123', 'Accept-Language': 'fr' } }]);
    await c.call(PROC_WATCH, ['/you', { token: 'SECRET-TOKEN-456' }]);
    await wm.bump(JSON.stringify({ paths: ['/me', '/you'] }));
    await waitFor('both fetches', () => api.requests.length === 2);
    const me = api.requestsFor('/me')[0];
    expect(me.headers.cookie).to.equal('session=SECRET-COOKIE-123');
    expect(me.headers['accept-language']).to.equal('fr');
    expect(me.headers.authorization).to.equal(undefined);
    await c.waitForUpdates(1); // /me answers 401 in this API, /you 200
    const logs = wm.logs.join('');
    expect(logs).to.include('watch added');
    expect(logs).not.to.include('SECRET-TOKEN-456');
    expect(logs).not.to.include('SECRET-COOKIE-123');
  });

  describe('errors carry the contract URI', function () {
    const cases: Array<[string, unknown[], Record<string, unknown> | undefined, string]> = [
      ['no path', [], undefined, ERROR_URIS.invalid_argument],
      ['a number as path', [42], undefined, ERROR_URIS.invalid_argument],
      ['options not an object', ['/a', 'token'], undefined, ERROR_URIS.invalid_argument],
      ['a non-string token', ['/a', { token: 5 }], undefined, ERROR_URIS.invalid_argument],
      ['CR/LF in a token', ['/a', { token: 'x\r\nX-Evil: 1' }], undefined, ERROR_URIS.invalid_argument],
      ['CR/LF in a header value', ['/a', { headers: { accept: 'a\nb' } }], undefined, ERROR_URIS.invalid_argument],
      ['token and authorization', ['/a', { token: 't', headers: { Authorization: 'Bearer u' } }], undefined, ERROR_URIS.invalid_argument],
      ['headers over the byte limit', ['/a', { headers: { cookie: 'c'.repeat(9000) } }], undefined, ERROR_URIS.invalid_argument],
      ['a non-boolean snapshot', ['/a', { snapshot: 'yes' }], undefined, ERROR_URIS.invalid_argument],
      ['an absolute URL', ['http://evil.test/a'], undefined, ERROR_URIS.invalid_path],
      ['a scheme-relative URL', ['//evil.test/a'], undefined, ERROR_URIS.invalid_path],
      ['a backslash', ['/\\evil.test'], undefined, ERROR_URIS.invalid_path],
      ['a tab', ['/\t/evil.test'], undefined, ERROR_URIS.invalid_path],
      ['whitespace', ['/a b'], undefined, ERROR_URIS.invalid_path],
      ['a dot-dot segment', ['/a/../admin'], undefined, ERROR_URIS.invalid_path],
      ['an encoded dot-dot', ['/a/%2e%2E/admin'], undefined, ERROR_URIS.invalid_path],
      ['an encoded slash', ['/a%2Fb'], undefined, ERROR_URIS.invalid_path],
      ['an over-long path', [`/${'a'.repeat(2048)}`], undefined, ERROR_URIS.invalid_path],
      ['a header off the allowlist', ['/a', { headers: { 'x-forwarded-for': '1.2.3.4' } }], undefined, ERROR_URIS.header_not_allowed],
      ['a header Waymark sets itself', ['/a', { headers: { Host: 'evil.test' } }], undefined, ERROR_URIS.header_not_allowed],
    ];
    for (const [name, args, kwargs, uri] of cases) {
      it(`waymark.watch with ${name} -> ${uri}`, async function () {
        const c = await client();
        const err = await c.callError(PROC_WATCH, args, kwargs);
        expect(err.error).to.equal(uri);
        expect(err.args[0]).to.be.a('string').with.length.above(5);
        expect(api.requests).to.have.length(0);
      });
    }

    it('waymark.unwatch without an id -> invalid_argument', async function () {
      const c = await client();
      expect((await c.callError(PROC_UNWATCH, [])).error).to.equal(ERROR_URIS.invalid_argument);
      expect((await c.callError(PROC_UNWATCH, [{ watch: 1 }])).error).to.equal(ERROR_URIS.invalid_argument);
    });

    it('the watch limit -> too_many_watches, counted per session', async function () {
      await wm.close();
      wm = await startWaymark(api.url, { WAYMARK_MAX_WATCHES_PER_SESSION: '2' });
      const c = await client();
      const other = await client();
      await c.call(PROC_WATCH, ['/1']);
      await c.call(PROC_WATCH, ['/2']);
      await c.call(PROC_WATCH, ['/2', { token: 'renewing-does-not-count' }]);
      const err = await c.callError(PROC_WATCH, ['/3']);
      expect(err.error).to.equal(ERROR_URIS.too_many_watches);
      await other.call(PROC_WATCH, ['/3']);
      await c.call(PROC_UNWATCH, ['/1']);
      await c.call(PROC_WATCH, ['/3']);
    });
  });
});
