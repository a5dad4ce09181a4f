import { expect } from 'chai';
import fc from 'fast-check';
import type { Update, WatchResult } from '../lib/protocol/types.js';
import { ERROR_URIS, PROC_REFRESH, PROC_UNWATCH, PROC_WATCH } from '../lib/protocol/uris.js';
import { validatePath } from '../lib/protocol/validation.js';
import { connectWaymark } from '../lib/client/client.js';
import { sleep, testEnv, waitFor } from './helpers/env.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { Upstream } from './helpers/upstream.js';
import { Client, ClientPool } from './helpers/wamp-client.js';

const CONTRACT_ERRORS = new Set(Object.values(ERROR_URIS));

describe('security', function () {
  this.timeout(60_000);
  let api: Upstream;
  let evil: Upstream;
  let wm: Harness | undefined;
  const pool = new ClientPool();
  const client = () => pool.open();

  beforeEach(async function () {
    api = await new Upstream().start();
    // Another host on this machine: any request it sees is a request that escaped the API origin.
    evil = await new Upstream('127.0.0.2').start();
  });

  afterEach(async function () {
    await pool.closeAll();
    await wm?.close();
    wm = undefined;
    await api.close();
    await evil.close();
  });

  describe('the attack corpus', function () {
    function corpus(evilHost: string): Array<[string, unknown[], string]> {
      const P = ERROR_URIS.invalid_path;
      const A = ERROR_URIS.invalid_argument;
      const H = ERROR_URIS.header_not_allowed;
      const paths: Array<[string, string]> = [
        [`http://${evilHost}/x`, P], [`https://${evilHost}/x`, P], [`HTTP://${evilHost}/x`, P], [`ftp://${evilHost}/x`, P],
        ['file:///etc/passwd', P], ['javascript:alert(1)', P], ['data:text/plain,hi', P], [`ws://${evilHost}/`, P],
        [`gopher://${evilHost}/_x`, P], [`//${evilHost}/x`, P], [`///${evilHost}/x`, P], [`/\\${evilHost}/x`, P],
        [`\\\\${evilHost}\\x`, P], [`\\/${evilHost}/x`, P], [`/\t/${evilHost}/x`, P], [`/\n/${evilHost}/x`, P],
        [`/\r/${evilHost}/x`, P], [`\t//${evilHost}/x`, P], [` //${evilHost}/x`, P], [`/%2f${evilHost}/x`, P],
        [`/%2F%2F${evilHost}/x`, P], [`/%5c${evilHost}/x`, P], [`/%5C%5C${evilHost}/x`, P], ['/..', P],
        ['/../x', P], ['/a/../../x', P], ['/./x', P], ['/%2e%2e/x', P], ['/%2E%2E/x', P], ['/%2e./x', P],
        ['/.%2e/x', P], ['/%252e%252e/x', P], ['/%25252e%25252e/x', P], ['/..%2f/x', P], ['/%2e%2e%2f/x', P],
        ['/..%5c/x', P], ['/%c0%ae%c0%ae/x', P], ['/%00', P], ['/a%00.json', P], ['/%0d%0aSet-Cookie:x', P],
        ['/a\u0000', P], ['/a\u007f', P], ['/a\u0085', P], ['/a\u00a0', P], ['/a\u2028', P], ['/a\ufeff', P],
        [`/x#@${evilHost}`, P], ['x', P], ['?x=1', P], ['#frag', P], [`/${'a'.repeat(2048)}`, P], ['/a b', P],
        ['/a%zz', P], ['/%', P], ['/a//b', P], [`/.${evilHost}/%2e%2e`, P], ['/%u002e%u002e/x', P],
        // dot-segments behind path parameters, as Tomcat, Jetty and Spring resolve them (issue 10
        // fault 8), in every encoding, and what IIS or a second decoding layer reads as a dot
        ['/..;/admin/users', P], ['/..;x=1/admin', P], ['/.;/admin', P], ['/..;/', P], ['/%2e%2e;/admin', P],
        ['/%2E%2E;/admin', P], ['/%2e%2e%3b/admin', P], ['/..%3b/admin', P], ['/..%3B/admin', P], ['/.%2e;jsessionid=1/admin', P],
        ['/%2e.;a=b/admin', P], ['/..%00;/admin', P], ['/%252e%252e%253b/admin', P], ['/%252e%252e;/admin', P],
        ['/..%253b/admin', P], ['/%25252e%25252e%25253b/admin', P], ['/%c0%ae%c0%ae;/admin', P], ['/%25c0%25ae%25c0%25ae/admin', P],
        ['/%e0%80%ae%e0%80%ae/admin', P], ['/%c1%9c/admin', P], ['/%25u002e%25u002e/admin', P], ['/..%252f/admin', P],
        ['/%25ff%252f../admin', P], ['/a;/../admin', P], ['/a;x=1/../admin', P], ['/a/..;/..;/admin', P], ['/a/;x/b', P],
        ['/;/admin', P], ['/..%20/admin', P], ['/..%20;/admin', P], ['/%2e%2e%3f/admin', P], ['/..%23/admin', P],
        ['/..%20./admin', P], ['/...%20/admin', P], ['/.../admin', P], ['/%EF%BC%8E%EF%BC%8E/admin', P], ['/%E2%80%A5/admin', P],
        ['/..%EF%BC%8Fadmin', P],
        ['/a/.;x/b', P], [`/..;/..;/${evilHost}`, P],
      ];
      const cases: Array<[string, unknown[], string]> = paths.map(([p, uri]) => [`path ${JSON.stringify(p).slice(0, 60)}`, [p], uri]);
      const headerCases: Array<[string, Record<string, unknown>, string]> = [
        ['CRLF in token', { token: 'abc\r\nX-Evil: 1' }, A],
        ['LF in token', { token: 'abc\nX-Evil: 1' }, A],
        ['NUL in token', { token: 'abc\0' }, A],
        ['CRLF in a header value', { headers: { accept: 'x\r\nHost: evil' } }, A],
        ['LF in a cookie', { headers: { cookie: 'a=b\nX: y' } }, A],
        ['Host header', { headers: { Host: evilHost } }, H],
        ['X-Waymark header', { headers: { 'X-Waymark': 'snapshot' } }, H],
        ['User-Agent header', { headers: { 'User-Agent': 'x' } }, H],
        ['Content-Length header', { headers: { 'content-length': '5' } }, H],
        ['Transfer-Encoding header', { headers: { 'transfer-encoding': 'chunked' } }, H],
        ['Connection header', { headers: { connection: 'close' } }, H],
        ['X-Forwarded-For header', { headers: { 'x-forwarded-for': '127.0.0.2' } }, H],
        ['X-Forwarded-Host header', { headers: { 'x-forwarded-host': evilHost } }, H],
        ['Proxy-Authorization header', { headers: { 'proxy-authorization': 'Basic x' } }, H],
        ['CRLF in a header name', { headers: { 'accept\r\nx-evil': 'y' } }, H],
        ['space in a header name', { headers: { 'cookie ': 'y' } }, H],
        ['token and authorization', { token: 't', headers: { authorization: 'Bearer u' } }, A],
        ['headers over 8 KiB', { headers: { cookie: 'c'.repeat(8200) } }, A],
        ['a numeric token', { token: 42 }, A],
        ['headers as an array', { headers: ['cookie', 'x'] }, A],
        ['a header value as an object', { headers: { accept: { toString: 'x' } } }, A],
        // values no HTTP stack sends as written (issue 16 fault 8): RFC 9110 5.5, RFC 6750 2.1
        ['a token with a check mark', { token: 'tok-\u2713' }, A],
        ['a token with Latin-1', { token: 'caf\u00e9' }, A],
        ['a token with a space', { token: 'a b' }, A],
        ['a token with a tab', { token: 'a\tb' }, A],
        ['a token with DEL', { token: 'a\x7f' }, A],
        ['a token with an emoji', { token: '\ud83d\ude00' }, A],
        ['a cookie with a check mark', { headers: { cookie: 'sid=\u2713' } }, A],
        ['a cookie with Latin-1', { headers: { cookie: 'sid=caf\u00e9' } }, A],
        ['an accept-language with U+0100', { headers: { 'accept-language': 'fr\u0100' } }, A],
        ['an authorization with a C1 control', { headers: { authorization: 'Basic \u0085' } }, A],
        ['a header value with a leading space', { headers: { accept: ' text/plain' } }, A],
        ['a header value with a trailing tab', { headers: { accept: 'text/plain\t' } }, A],
        ['a header value with a control character', { headers: { cookie: 'a\x01b' } }, A],
      ];
      for (const [name, opts, uri] of headerCases) cases.push([name, ['/users/1', opts], uri]);
      return cases;
    }

    it('rejects every attack with its contract error and sends nothing anywhere', async function () {
      wm = await startWaymark(`${api.url}/v1`, { WAYMARK_RATE_LIMIT: '100000', WAYMARK_RATE_BURST: '100000' });
      const c = await client();
      const attacks = corpus(`127.0.0.2:${evil.port}`);
      let rejected = 0;
      const wrong: string[] = [];
      for (const [name, args, uri] of attacks) {
        const err = await c.callError(PROC_WATCH, args);
        if (err.error === uri) rejected += 1;
        else wrong.push(`${name}: got ${err.error}, want ${uri}`);
      }
      // the attack paths as bumps, beside a watched path: nothing may be fetched either
      await c.call(PROC_WATCH, ['/users/1', { token: 't' }]);
      for (const [name, args] of attacks) if (name.startsWith('path ')) await wm.bump(JSON.stringify({ path: args[0] }));
      await sleep(200);
      console.log(`      attack corpus: tried ${attacks.length}, rejected ${rejected}, requests to the API ${api.requests.length}, to another host ${evil.requests.length}`);
      expect(wrong).to.deep.equal([]);
      expect(attacks.length).to.be.at.least(60);
      expect(rejected).to.equal(attacks.length);
      expect(api.requests).to.have.length(0);
      expect(evil.requests).to.have.length(0);
    });

    it('keeps serving after hostile bumps, and fetches only watched, valid paths', async function () {
      wm = await startWaymark(api.url);
      const c = await client();
      await c.call(PROC_WATCH, ['/users/1', { token: 't' }]);
      const hostile = [
        '', ' ', 'null', '42', '[]', '{}', '{"path":null}', '{"paths":[1,2,3]}', '{"path":"/users/1"', 'x'.repeat(70_000),
        `/users/1${'a'.repeat(70_000)}`, JSON.stringify({ paths: Array.from({ length: 20_000 }, (_, i) => `/p${i}`) }),
        '/users/1\0', '{"path":"/users/1\\u0000"}', '{"path":"/users/../users/1"}', '{"path":"//evil/users/1"}',
        '{"path":"/users/1","id":{"x":1}}', '{"path":"/users/1","id":"a\\nb"}', '\u0000\u0001\u0002', '{"__proto__":{"path":"/users/1"}}',
      ];
      for (const m of hostile) await wm.bump(m);
      await sleep(200);
      expect(api.requests).to.have.length(0);
      await wm.bump('/users/1');
      await c.waitForUpdates(1);
      console.log(`      hostile bumps: sent ${hostile.length}, fetched 0; a valid bump afterwards: 1 update`);
      expect(api.requests).to.have.length(1);
      expect(wm.logs.join('')).to.include('dropped a malformed bump');
    });
  });

  it('fuzz (fast-check): a watch is a contract error or exactly one request to the API origin under its base path', async function () {
    wm = await startWaymark(`${api.url}/v1`, { WAYMARK_RATE_LIMIT: '100000', WAYMARK_RATE_BURST: '100000' });
    const c = await client();
    const evilHost = `127.0.0.2:${evil.port}`;
    const piece = fc.oneof(
      fc.constantFrom('/', '//', '\\', '.', '..', '%2e', '%2E', '%2f', '%5c', '%25', '%00', '%0a', '?', '#', '@', ':', evilHost,
        'http:', 'https://', '\t', '\r\n', ' ', 'users', '1', 'a.b', '%c0%ae', '\u2028', '~', ';', '&x=..'),
      fc.string({ maxLength: 6 }),
    );
    const joined = fc.array(piece, { maxLength: 8 }).map((a) => a.join(''));
    const path = fc.oneof(
      { arbitrary: joined.map((p) => `/${p}`), weight: 4 },
      { arbitrary: fc.array(fc.constantFrom('users', '1', 'a.b', '%20', '~', 'x-y', '%41'), { minLength: 1, maxLength: 4 }).map((a) => `/${a.join('/')}`), weight: 2 },
      { arbitrary: joined, weight: 1 },
      { arbitrary: fc.string({ maxLength: 12 }), weight: 1 },
      { arbitrary: fc.constant(undefined), weight: 1 },
    );
    const opts = fc.oneof(
      { arbitrary: fc.record({ token: fc.stringMatching(/^[A-Za-z0-9._-]{1,12}$/) }), weight: 3 },
      { arbitrary: fc.record({
        token: fc.option(fc.oneof(fc.string({ maxLength: 8 }), fc.integer(), fc.constant('a\r\nb')), { nil: undefined }),
        headers: fc.option(fc.dictionary(fc.constantFrom('accept', 'cookie', 'host', 'x-evil', 'Accept-Language', 'authorization'),
          fc.oneof(fc.string({ maxLength: 8 }), fc.constant('x\r\ny'))), { nil: undefined }),
      }, { requiredKeys: [] }), weight: 2 },
    );
    let runs = 0;
    let accepted = 0;
    let rejected = 0;
    await fc.assert(fc.asyncProperty(path, opts, async (p, o) => {
      runs += 1;
      const before = api.requests.length;
      try {
        const r = await c.call<WatchResult>(PROC_WATCH, [p, { ...o, snapshot: true }]);
        accepted += 1;
        expect(api.requests.length).to.equal(before + 1);
        const seen = api.requests[api.requests.length - 1].path;
        // the accepted path (RFC 3986 6.2.2 normal form) under the base path, as WHATWG URL
        // serializes it; the normal form names the same resource as what was asked for
        expect(r.path).to.equal(validatePath(p, 2048));
        const want = new URL(`${api.url}/v1${r.path}`);
        expect(seen).to.equal(want.pathname + want.search);
        await c.call(PROC_UNWATCH, [r.watch]);
      } catch (err) {
        const e = err as { error?: string };
        if (!e.error) throw err;
        rejected += 1;
        expect(CONTRACT_ERRORS.has(e.error as never), `unexpected error ${e.error}`).to.equal(true);
        expect(api.requests.length).to.equal(before);
      }
      expect(evil.requests).to.have.length(0);
    }), { numRuns: 400, seed: 4242 });
    console.log(`      fuzz: ${runs} watch calls, ${accepted} accepted (one API request each), ${rejected} contract errors, requests to another host ${evil.requests.length}`);
    expect(accepted).to.be.above(10);
    expect(rejected).to.be.above(10);
  });

  it('fuzz (fast-check): random bump messages never crash the component or fetch an unwatched path', async function () {
    wm = await startWaymark(api.url);
    const c = await client();
    await c.call(PROC_WATCH, ['/w', { token: 't' }]);
    const message = fc.oneof(
      fc.string({ maxLength: 40 }),
      fc.json({ maxDepth: 2 }),
      fc.record({ path: fc.oneof(fc.string({ maxLength: 10 }), fc.integer()), id: fc.oneof(fc.string(), fc.integer()) }, { requiredKeys: [] }).map((o) => JSON.stringify(o)),
      fc.record({ paths: fc.array(fc.oneof(fc.string({ maxLength: 6 }), fc.constant('/x'), fc.integer()), { maxLength: 5 }) }).map((o) => JSON.stringify(o)),
    );
    const sample = fc.sample(message, { numRuns: 300, seed: 7 });
    for (const m of sample) await wm.bump(m);
    await sleep(300);
    const fetchedOther = api.requests.filter((r) => r.path !== '/w').length;
    await wm.bump('/w');
    await waitFor('the component to still serve', () => c.updates.length >= 1);
    console.log(`      bump fuzz: ${sample.length} random messages, unwatched paths fetched ${fetchedOther}, component still serving`);
    expect(fetchedOther).to.equal(0);
  });

  describe('one watch per URI (RFC 3986 6.2.2)', function () {
    it('forms that are the same URI are one watch path: a bump of either reaches both, fetched in the normal form', async function () {
      wm = await startWaymark(`${api.url}/v1`);
      api.handler = (req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end(`n=${api.requests.length}`);
      const a = await client();
      const b = await client();
      const wa = await a.call<WatchResult>(PROC_WATCH, ['/caf%c3%a9/%7Eme', { token: 'a' }]);
      const wb = await b.call<WatchResult>(PROC_WATCH, ['/caf%C3%A9/~me', { token: 'b' }]);
      expect(wa.path).to.equal('/caf%C3%A9/~me');
      expect(wb.path).to.equal('/caf%C3%A9/~me');
      // the same watch for the same session, whichever form it names
      expect((await a.call<WatchResult>(PROC_WATCH, ['/CAF%c3%a9/~me'.replace('CAF', 'caf'), { token: 'a' }])).watch).to.equal(wa.watch);
      await wm.bump('/caf%c3%a9/%7eme');
      await a.waitForUpdates(1);
      await b.waitForUpdates(1);
      await wm.bump(JSON.stringify({ path: '/caf%C3%A9/%7Eme' }));
      await a.waitForUpdates(2);
      await b.waitForUpdates(2);
      console.log(`      normalisation: 2 forms watched, 2 forms bumped, updates ${a.updates.length}+${b.updates.length}, API paths ${[...new Set(api.requests.map((r) => r.path))].join(' ')}`);
      expect(new Set(api.requests.map((r) => r.path))).to.deep.equal(new Set(['/v1/caf%C3%A9/~me']));
      expect(api.requests).to.have.length(4);
      // unwatch by either form finds it
      expect(await a.call(PROC_UNWATCH, ['/caf%c3%a9/%7eme'])).to.deep.equal({ removed: 1 });
      expect(wm.waymark.registry.size).to.equal(1);
    });

    it('waymark/client hands the Updates of a watch named in a non-normal form to its callback', async function () {
      wm = await startWaymark(api.url);
      api.handler = (req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end(`n=${api.requests.length}`);
      const wc = await connectWaymark({ url: testEnv.routerUrl, realm: testEnv.realm });
      try {
        const got: string[] = [];
        await wc.watch('/caf%c3%a9/%7eme', { token: 't', snapshot: true }, (u) => got.push(`${u.path} ${u.body}`));
        await wm.bump('/caf%C3%A9/~me');
        await waitFor('the snapshot and the bump\'s Update', () => got.length >= 2);
        expect(got).to.deep.equal(['/caf%C3%A9/~me n=1', '/caf%C3%A9/~me n=2']);
      } finally {
        await wc.close();
      }
    });
  });

  describe('credentials that cannot be sent', function () {
    it('are refused at watch and at refresh time; nothing reaches the API or the breaker', async function () {
      wm = await startWaymark(api.url, { WAYMARK_BREAKER_FAILURES: '5' });
      api.handler = (req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end(`n=${api.requests.length}`);
      const c = await client();
      const bad = [{ token: 'tok-\u2713' }, { token: 'caf\u00e9' }, { headers: { cookie: 'sid=\u2713' } }, { headers: { accept: 'x\u0100' } }, { token: 'a b' }];
      const answers: string[] = [];
      for (const o of bad) answers.push((await c.callError(PROC_WATCH, ['/me', { ...o, snapshot: true }])).error);
      const w = await c.call<WatchResult>(PROC_WATCH, ['/me', { token: 'good', snapshot: true }]);
      for (const o of bad) answers.push((await c.callError(PROC_REFRESH, [o])).error);
      await wm.bump('/me');
      await c.waitForUpdates(1);
      console.log(`      unsendable credentials: ${answers.filter((e) => e === ERROR_URIS.invalid_argument).length}/${answers.length} refused as invalid_argument, API requests with them 0`);
      expect(answers).to.deep.equal(Array(bad.length * 2).fill(ERROR_URIS.invalid_argument));
      expect(w.snapshot!.status).to.equal(200);
      // the watch kept its good token through the refused refreshes
      expect(api.requests.map((r) => r.headers.authorization)).to.deep.equal(['Bearer good', 'Bearer good']);
    });
  });

  describe('topic isolation', function () {
    it('a second session can neither subscribe to nor receive the first session\'s updates (exact, prefix, wildcard)', async function () {
      wm = await startWaymark(api.url);
      const alice = await client();
      const eve = await client();
      const tries: Array<[string, Record<string, string>]> = [
        [alice.topic, {}], ['waymark.session.', { match: 'prefix' }], ['waymark', { match: 'prefix' }], ['', { match: 'prefix' }],
        ['waymark.session.', { match: 'wildcard' }], [`waymark..${alice.id}`, { match: 'wildcard' }],
      ];
      let denied = 0;
      for (const [topic, opts] of tries) {
        const r = await eve.session.subscribe(topic, (args) => { eve.updates.push(args?.[0] as Update); }, opts)
          .then(() => 'allowed', (err: { error: string }) => err.error);
        if (r === 'wamp.error.not_authorized') denied += 1;
      }
      const registerDenied = await eve.session.register('waymark.watch', () => 1, { invoke: 'roundrobin' } as never)
        .then(() => 'allowed', (err: { error: string }) => err.error);
      const publishDenied = await eve.session.publish(alice.topic, [{ forged: true }], {}, { acknowledge: true })
        .then(() => 'allowed', (err: { error: string }) => err.error);
      await alice.call(PROC_WATCH, ['/users/1', { token: 'alice' }]);
      await wm.bump('/users/1');
      await alice.waitForUpdates(1);
      await sleep(100);
      console.log(`      isolation: ${denied}/${tries.length} subscribe attempts denied, register ${registerDenied}, publish ${publishDenied}, updates leaked ${eve.updates.length}`);
      expect(denied).to.equal(tries.length);
      expect(registerDenied).to.equal('wamp.error.not_authorized');
      expect(publishDenied).to.equal('wamp.error.not_authorized');
      expect(eve.updates).to.have.length(0);
      expect(alice.updates.every((u) => !('forged' in u))).to.equal(true);
    });

    it('publishes with eligible: a session allowed to subscribe to every topic still receives nobody else\'s update', async function () {
      wm = await startWaymark(api.url);
      const alice = await client();
      // a backend-role session: the router lets it subscribe anywhere, only `eligible` stops it
      const backend = pool.add(await Client.connect({ authid: testEnv.authid, ticket: testEnv.ticket }));
      await backend.listen(alice.topic);
      await alice.call(PROC_WATCH, ['/users/1', { token: 'alice' }]);
      await wm.bump('/users/1');
      await alice.waitForUpdates(1);
      await sleep(150);
      expect(backend.updates).to.have.length(0);
    });
  });

  describe('credential lifecycle', function () {
    it('pushes a 401, then suspends the watch until new credentials arrive by watch or refresh', async function () {
      wm = await startWaymark(api.url);
      const c = await client();
      let valid = new Set(['good']);
      api.handler = (req, res) => {
        const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
        if (!valid.has(token)) res.writeHead(token ? 403 : 401, { 'content-type': 'application/json' }).end('{"error":"denied"}');
        else res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token, n: api.requests.length }));
      };
      const w = await c.call<WatchResult>(PROC_WATCH, ['/me', { token: 'good', snapshot: true }]);
      expect(w.snapshot!.status).to.equal(200);
      await c.call(PROC_WATCH, ['/other', { token: 'good' }]);
      valid = new Set(); // the token expires
      await wm.bump(JSON.stringify({ paths: ['/me', '/other'] }));
      const [u1, u2] = await c.waitForUpdates(2);
      expect([u1.status, u2.status]).to.deep.equal([403, 403]);
      const before = api.requests.length;
      await wm.bump(JSON.stringify({ paths: ['/me', '/other'] }));
      await sleep(150);
      expect(api.requests.length, 'no fetch with a dead token').to.equal(before);

      // re-watching with new credentials resumes that watch (and catches up once)
      valid = new Set(['fresh']);
      const again = await c.call<WatchResult>(PROC_WATCH, ['/me', { token: 'fresh' }]);
      expect(again.watch).to.equal(w.watch);
      const [u3] = (await c.waitForUpdates(3)).slice(2);
      expect(u3).to.include({ path: '/me', status: 200 });
      expect(JSON.parse(u3.body).token).to.equal('fresh');

      // refresh replaces the credentials of all the caller's watches and resumes /other
      valid = new Set(['newest']);
      const r = await c.call<{ updated: number }>(PROC_REFRESH, [{ token: 'newest' }]);
      expect(r).to.deep.equal({ updated: 2 });
      const u4 = (await c.waitForUpdates(4))[3];
      expect(u4).to.include({ path: '/other', status: 200 });
      expect(JSON.parse(u4.body).token).to.equal('newest');
      await wm.bump('/me');
      const u5 = (await c.waitForUpdates(5))[4];
      expect(JSON.parse(u5.body).token).to.equal('newest');
      expect((await c.callError(PROC_REFRESH, [{ token: 'a\nb' }])).error).to.equal(ERROR_URIS.invalid_argument);
    });
  });

  describe('limits at their boundaries', function () {
    it('watches per session: 100 fit, the 101st is too_many_watches', async function () {
      wm = await startWaymark(api.url, { WAYMARK_RATE_BURST: '1000' });
      const c = await client();
      for (let i = 0; i < 100; i++) await c.call(PROC_WATCH, [`/w/${i}`]);
      expect((await c.callError(PROC_WATCH, ['/w/100'])).error).to.equal(ERROR_URIS.too_many_watches);
      expect(wm.waymark.registry.size).to.equal(100);
    });

    it('rate: a burst of 100 calls passes, the 101st is rate_limited, and tokens come back at 20/s', async function () {
      wm = await startWaymark(api.url);
      const c = await client();
      const results = await Promise.all(Array.from({ length: 101 }, (_, i) => c.call(PROC_UNWATCH, [`w${i}`]).then(() => 'ok', (e: { error: string }) => e.error)));
      expect(results.filter((r) => r === 'ok')).to.have.length(100);
      expect(results.filter((r) => r === ERROR_URIS.rate_limited)).to.have.length(1);
      await sleep(120); // 2 tokens at 20/s
      expect(await c.call(PROC_UNWATCH, ['x'])).to.deep.equal({ removed: 0 });
      const other = await client();
      expect(await other.call(PROC_UNWATCH, ['x']), 'another session has its own bucket').to.deep.equal({ removed: 0 });
    });

    it('body: exactly 1 MiB is delivered, one byte more is too_large without a body', async function () {
      wm = await startWaymark(api.url);
      const c = await client();
      api.handler = (req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end('b'.repeat(req.url === '/at' ? 1048576 : 1048577));
      await c.call(PROC_WATCH, ['/at']);
      await c.call(PROC_WATCH, ['/over']);
      await wm.bump(JSON.stringify({ paths: ['/at', '/over'] }));
      const updates = await c.waitForUpdates(2);
      const at = updates.find((u) => u.path === '/at')!;
      const over = updates.find((u) => u.path === '/over')!;
      expect(at.body).to.have.length(1048576);
      expect(at.error).to.equal(undefined);
      expect(over).to.include({ status: 200, body: '' });
      expect(over.error?.code).to.equal('too_large');
    });

    it('timeout: an answer inside the limit is delivered, one after it is a timeout', async function () {
      wm = await startWaymark(api.url, { WAYMARK_FETCH_TIMEOUT_MS: '400' });
      const c = await client();
      api.handler = (req, res) => {
        setTimeout(() => res.writeHead(200, { 'content-type': 'text/plain' }).end('ok'), req.url === '/fast' ? 50 : 900).unref();
      };
      await c.call(PROC_WATCH, ['/fast']);
      await c.call(PROC_WATCH, ['/slow']);
      await wm.bump(JSON.stringify({ paths: ['/fast', '/slow'] }));
      const updates = await c.waitForUpdates(2);
      expect(updates.find((u) => u.path === '/fast')).to.include({ status: 200, body: 'ok' });
      const slow = updates.find((u) => u.path === '/slow')!;
      expect(slow.status).to.equal(0);
      expect(slow.error?.code).to.equal('timeout');
    });

    it('concurrency: 100 watchers of a slow API never see more than 64 requests in flight', async function () {
      wm = await startWaymark(api.url, { WAYMARK_RATE_BURST: '1000' });
      api.handler = (req, res) => { setTimeout(() => res.writeHead(200, { 'content-type': 'text/plain' }).end(String(req.headers.authorization)), 100).unref(); };
      const sessions = await Promise.all(Array.from({ length: 4 }, () => client()));
      for (let i = 0; i < 100; i++) await sessions[i % 4].call(PROC_WATCH, [`/c/${Math.floor(i / 4)}`, { token: `t${i}` }]);
      const paths = Array.from({ length: 25 }, (_, i) => `/c/${i}`);
      await wm.bump(JSON.stringify({ paths }));
      await waitFor('100 updates', () => sessions.reduce((n, s) => n + s.updates.length, 0) === 100, 10_000);
      console.log(`      concurrency: 100 fetches, at most ${api.maxActive} in flight (cap 64)`);
      expect(api.requests).to.have.length(100);
      expect(api.maxActive).to.equal(64);
    });
  });

  it('never logs a token, cookie or authorization value, at debug level, through a full flow', async function () {
    wm = await startWaymark(api.url, { WAYMARK_LOG_LEVEL: 'silly' });
    const c = await client();
    const secrets = ['tok-SECRET-9f8e7d', 'cookie-SECRET-1a2b3c', 'basic-SECRET-4d5e6f', 'refresh-SECRET-7g8h9i'];
    api.handler = (req, res) => res.writeHead(req.headers.authorization?.includes('refresh') ? 401 : 200, { 'content-type': 'text/plain', 'set-cookie': `s=${secrets[1]}` })
      .end(`echo ${req.headers.authorization} ${req.headers.cookie}`);
    await c.call(PROC_WATCH, ['/a', { token: secrets[0], snapshot: true }]);
    await c.call(PROC_WATCH, ['/b', { headers: { cookie: `sid=${secrets[1]}`, authorization: `Basic ${secrets[2]}` }, snapshot: true }]);
    await c.callError(PROC_WATCH, ['/c', { token: `${secrets[0]}\r\n` }]);
    await c.callError(PROC_WATCH, ['/c', { token: secrets[0], headers: { authorization: secrets[2] } }]);
    await c.callError(PROC_WATCH, ['/c', { headers: { 'x-secret': secrets[1] } }]);
    api.handler = (req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end(`changed ${req.headers.authorization}`);
    await wm.bump(JSON.stringify({ paths: ['/a', '/b'] }));
    await c.waitForUpdates(2);
    await c.call(PROC_REFRESH, [{ token: secrets[3] }]);
    await c.call(PROC_UNWATCH, ['/a']);
    await c.close();
    await waitFor('the session to be dropped', () => wm!.waymark.registry.size === 0);
    const logs = wm.logs.join('');
    console.log(`      log redaction: ${wm.logs.length} log lines (${logs.length} bytes) at level silly, secrets found: 0 expected`);
    expect(logs).to.include('watch added').and.include('cred');
    for (const s of secrets) expect(logs, s).not.to.include(s);
  });
});
