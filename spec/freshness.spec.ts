import { expect } from 'chai';
import { createServer as createNetServer, type Server as NetServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Redis } from 'ioredis';
import type { Counter } from 'prom-client';
import { parseBumpMessage, MAX_PATHS_PER_BUMP } from '../lib/bumps/bump-source.js';
import { createBumper } from '../lib/bumps/bumper.js';
import { connectWaymark } from '../lib/client/client.js';
import { PathIndex } from '../lib/engine/match-index.js';
import { Revalidator } from '../lib/engine/revalidator.js';
import { TagIndex } from '../lib/engine/tag-index.js';
import { WatchRegistry } from '../lib/engine/watch-registry.js';
import { loadConfig } from '../lib/protocol/config.js';
import type { Update, WatchResult } from '../lib/protocol/types.js';
import { ERROR_URIS, PROC_UNWATCH, PROC_WATCH } from '../lib/protocol/uris.js';
import { parseTags, parseTraceparent } from '../lib/protocol/validation.js';
import { startDemoApi } from '../dev/demo-api.js';
import { componentEnv, randomChannel, sleep, testEnv, waitFor } from './helpers/env.js';
import { startWaymark, type Harness } from './helpers/harness.js';
import { cleanEnv, CliRunner } from './helpers/spawn.js';
import { Upstream } from './helpers/upstream.js';
import { ClientPool, type Client } from './helpers/wamp-client.js';

/** The value of a counter (with these labels), as /metrics reports it. */
async function valueOf(counter: Counter, labels: Record<string, string> = {}): Promise<number> {
  const { values } = await counter.get();
  const v = values.find((x) => Object.entries(labels).every(([k, l]) => x.labels[k] === l));
  return v?.value ?? 0;
}

/**
 * An API whose answers the spec sets per path: a body version, tag headers and a status; ETag
 * and 304 for If-None-Match. Answers JSON naming the path and the bearer token.
 */
class TaggingApi {
  readonly tags = new Map<string, Record<string, string>>();
  readonly status = new Map<string, number>();
  version = 1;
  handler = (req: IncomingMessage, res: ServerResponse): void => {
    const path = req.url ?? '/';
    const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
    const etag = `"v${this.version}"`;
    const headers: Record<string, string> = { 'content-type': 'application/json', etag, ...(this.tags.get(path) ?? {}) };
    const status = this.status.get(path) ?? 200;
    if (status === 200 && req.headers['if-none-match'] === etag) {
      res.writeHead(304, headers).end();
      return;
    }
    res.writeHead(status, headers).end(JSON.stringify({ path, token, version: this.version }));
  };
}

describe('freshness without listing every URL (contract 11)', function () {
  this.timeout(20_000);
  let api: Upstream;
  let model: TaggingApi;
  let wm: Harness;
  const pool = new ClientPool();
  const started: Harness[] = [];
  const start = async (env: Record<string, string> = {}) => {
    const h = await startWaymark(api.url, env);
    started.push(h);
    return h;
  };
  /**
   * The component of this test, with these settings: the one started before it stops first,
   * since every component on the router serves waymark.watch (round robin).
   */
  const use = async (env: Record<string, string> = {}) => {
    await Promise.all(started.splice(0).map((h) => h.close()));
    wm = await start(env);
    return wm;
  };
  const watch = (c: Client, path: string, options: Record<string, unknown> = {}) =>
    c.call<WatchResult>(PROC_WATCH, [path, { token: `t${c.id}`, ...options }]);
  /** Requests seen for a bump id (the X-Waymark header), as "path token". */
  const fetchedFor = (id: string) => api.requests.filter((r) => r.headers['x-waymark'] === id)
    .map((r) => `${r.path} ${(r.headers.authorization ?? '').replace('Bearer ', '')}`).sort();

  beforeEach(async function () {
    model = new TaggingApi();
    api = await new Upstream().start();
    api.handler = model.handler;
    wm = await start();
  });

  afterEach(async function () {
    await pool.closeAll();
    await Promise.all(started.splice(0).map((h) => h.close()));
    await api.close();
  });

  describe('11.1 a path bump without a query reaches every query of that path', function () {
    it('refetches /posts, /posts?page=2 and /posts?tag=x for /posts; only /posts?page=2 for that query; never /posts/1 or /postsx', async function () {
      const c = await pool.open();
      for (const p of ['/posts', '/posts?page=2', '/posts?tag=x', '/posts/1', '/postsx']) await watch(c, p);
      const t = `t${c.id}`;
      await wm.bump(JSON.stringify({ path: '/posts', id: 'all-queries' }));
      await c.waitForUpdates(3);
      await sleep(100);
      expect(fetchedFor('all-queries')).to.deep.equal([`/posts ${t}`, `/posts?page=2 ${t}`, `/posts?tag=x ${t}`]);
      expect(c.updates.map((u) => u.path).sort()).to.deep.equal(['/posts', '/posts?page=2', '/posts?tag=x']);
      await wm.bump(JSON.stringify({ path: '/posts?page=2', id: 'one-query' }));
      await waitFor('the exact query', () => fetchedFor('one-query').length === 1);
      await sleep(100);
      expect(fetchedFor('one-query')).to.deep.equal([`/posts?page=2 ${t}`]);
      // a bare message without a query is the same form
      await wm.bump('/posts/1');
      await c.waitForUpdates(4);
    });
  });

  describe('11.2 prefix bumps', function () {
    it('reaches the prefix and what continues it at a segment boundary, not /projects/70; a trailing / and a bad prefix', async function () {
      const c = await pool.open();
      const inside = ['/projects/7', '/projects/7?x=1', '/projects/7/tasks', '/projects/7/tasks/3?y=2'];
      for (const p of [...inside, '/projects/70', '/projects/70/tasks', '/projects', '/other']) await watch(c, p);
      const t = `t${c.id}`;
      await wm.bump(JSON.stringify({ prefixes: ['/projects/7', '//evil.test/x', 'projects'], id: 'p7' }));
      await c.waitForUpdates(4);
      await sleep(100);
      expect(fetchedFor('p7')).to.deep.equal(inside.map((p) => `${p} ${t}`).sort());
      // ending in "/": the paths that start with it (not /projects itself)
      await wm.bump(JSON.stringify({ prefixes: ['/projects/'], id: 'under' }));
      await waitFor('the subtree', () => fetchedFor('under').length === 6);
      await sleep(100);
      expect(fetchedFor('under')).to.not.include(`/projects ${t}`).and.not.include(`/other ${t}`);
      expect(await valueOf(wm.waymark.metrics.bumpForms, { form: 'prefix' })).to.equal(2);
    });

    it('allows the prefix "/" (every watch) and counts it', async function () {
      const a = await pool.open();
      const b = await pool.open();
      await watch(a, '/x');
      await watch(b, '/y/z?q=1');
      await watch(b, '/');
      await wm.bump(JSON.stringify({ prefixes: ['/'], id: 'root' }));
      await a.waitForUpdates(1);
      await b.waitForUpdates(2);
      expect(fetchedFor('root')).to.have.length(3);
      expect(await valueOf(wm.waymark.metrics.bumpRootPrefix)).to.equal(1);
    });
  });

  describe('11.3 tag bumps', function () {
    it('reads Waymark-Tags, Surrogate-Key and Cache-Tag; a tag reaches every session and credential, case-sensitively', async function () {
      model.tags.set('/users/1', { 'waymark-tags': 'user:1, org:7' });
      model.tags.set('/users?org=7', { 'surrogate-key': 'org:7 user:1 user:2' });
      model.tags.set('/cdn', { 'cache-tag': 'user:1,cdn' });
      model.tags.set('/users/2', { 'waymark-tags': 'user:2' });
      const alice = await pool.open();
      const bob = await pool.open();
      for (const c of [alice, bob]) for (const p of ['/users/1', '/users?org=7', '/cdn', '/users/2']) await watch(c, p, { snapshot: true });
      await wm.bump(JSON.stringify({ tags: ['user:1'], id: 'tag-user-1' }));
      await waitFor('six refetches', () => fetchedFor('tag-user-1').length === 6);
      await sleep(100);
      expect(fetchedFor('tag-user-1')).to.deep.equal(['/cdn', '/users/1', '/users?org=7'].flatMap((p) => [`${p} t${alice.id}`, `${p} t${bob.id}`]).sort());
      // case matters
      await wm.bump(JSON.stringify({ tags: ['User:1', 'ORG:7'], id: 'wrong-case' }));
      await sleep(200);
      expect(fetchedFor('wrong-case')).to.deep.equal([]);
      // the tag headers are not on the response allowlist: clients never see them
      model.version = 2;
      await wm.bump(JSON.stringify({ tags: ['org:7'], id: 'org' }));
      const updates = await alice.waitForUpdates(2);
      for (const u of updates) expect(Object.keys(u.headers)).to.deep.equal(['content-type', 'etag']);
      expect(await valueOf(wm.waymark.metrics.bumpForms, { form: 'tag' })).to.equal(3);
    });

    it('follows the latest response: a 304 keeps the tags, an answer without a tag header clears them; combined forms', async function () {
      model.tags.set('/t', { 'waymark-tags': 'a' });
      const c = await pool.open();
      await watch(c, '/t', { snapshot: true });
      // unchanged: the second refetch is conditional and answered 304, which keeps "a"
      await wm.bump('/t');
      await waitFor('the first refetch', () => api.requests.length === 2);
      await wm.bump('/t');
      await waitFor('the 304', () => api.requests.filter((r) => r.headers['if-none-match']).length === 1);
      await wm.bump(JSON.stringify({ tags: ['a'], id: 'after-304' }));
      await waitFor('tag a after the 304', () => fetchedFor('after-304').length === 1);
      // a changed answer without tags clears them
      model.tags.delete('/t');
      model.version = 2;
      await wm.bump('/t');
      await c.waitForUpdates(1);
      await wm.bump(JSON.stringify({ tags: ['a'], id: 'cleared' }));
      await sleep(200);
      expect(fetchedFor('cleared')).to.deep.equal([]);
      // any status counts: a 404 with tags sets them
      model.status.set('/t', 404);
      model.tags.set('/t', { 'waymark-tags': 'b' });
      await wm.bump('/t');
      await c.waitForUpdates(2);
      await watch(c, '/p/1');
      await watch(c, '/q?x=1');
      await wm.bump(JSON.stringify({ paths: ['/q'], prefixes: ['/p'], tags: ['b'], id: 'combined' }));
      await waitFor('all three forms', () => fetchedFor('combined').length === 3);
      expect(fetchedFor('combined')).to.deep.equal([`/p/1 t${c.id}`, `/q?x=1 t${c.id}`, `/t t${c.id}`]);
    });

    it('keeps the first WAYMARK_MAX_TAGS_PER_RESPONSE tags of thousands, drops malformed ones, and counts both', async function () {
      const many = Array.from({ length: 2000 }, (_, i) => `t${i}`);
      model.tags.set('/many', { 'waymark-tags': many.join(' ') });
      // obs-text (non-ASCII) and over-long tags are not tags
      model.tags.set('/odd', { 'waymark-tags': `ok ${'x'.repeat(257)}` });
      const c = await pool.open();
      const before = process.memoryUsage().heapUsed;
      await watch(c, '/many', { snapshot: true });
      await watch(c, '/odd', { snapshot: true });
      const kept = wm.waymark.registry.tags.tagsOf('/many', wm.waymark.registry.byPath('/many')[0].credKey);
      expect(kept).to.deep.equal(many.slice(0, 64));
      expect(await valueOf(wm.waymark.metrics.tagsDropped)).to.equal(2000 - 64 + 1);
      await wm.bump(JSON.stringify({ tags: ['t63', 'ok'], id: 'kept' }));
      await wm.bump(JSON.stringify({ tags: ['t64', 't1999'], id: 'dropped' }));
      await waitFor('kept tags', () => fetchedFor('kept').length === 2);
      await sleep(100);
      expect(fetchedFor('dropped')).to.deep.equal([]);
      expect(process.memoryUsage().heapUsed - before).to.be.below(50 * 1024 * 1024);
    });

    it('drops tags with control or non-ASCII bytes from raw HTTP answers without stopping anything', async function () {
      // Node's own server refuses to send such bytes, so a raw socket does.
      const raw: NetServer = createNetServer((s) => {
        s.once('data', (req: Buffer) => {
          const ctl = req.toString('latin1').startsWith('GET /ctl');
          const body = '{"raw":true}';
          const tags = ctl ? 'good bad\x01tag' : 'good caf\xe9 x\x7ey';
          s.end(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nwaymark-tags: ${tags}\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`, 'latin1');
        });
      });
      await new Promise<void>((r) => raw.listen(0, '127.0.0.1', r));
      const h = await use({ WAYMARK_API_URL: `http://127.0.0.1:${(raw.address() as AddressInfo).port}` });
      try {
        const c = await pool.open();
        const tagsOf = (r: WatchResult) => h.waymark.registry.tags.tagsOf(r.watch && h.waymark.registry.get(r.watch)!.path, h.waymark.registry.get(r.watch)!.credKey);
        // undici refuses a header line with a control byte: no response, no tags, nothing stops
        const ctl = await watch(c, '/ctl', { snapshot: true });
        expect(ctl.snapshot).to.include({ status: 0 });
        expect(tagsOf(ctl)).to.deep.equal([]);
        // obs-text reaches Waymark, which keeps only visible ASCII tags
        const obs = await watch(c, '/obs', { snapshot: true });
        expect(obs.snapshot).to.include({ status: 200 });
        expect(tagsOf(obs)).to.deep.equal(['good', 'x~y']);
        expect(await valueOf(h.waymark.metrics.tagsDropped)).to.equal(1);
        await h.bump(JSON.stringify({ tags: ['good', 'bad\u0001tag'], id: 'raw' }));
        await waitFor('the tagged refetch', async () => (await valueOf(h.waymark.metrics.fetches, { class: '2xx' })) === 2);
        expect(h.waymark.registry.size).to.equal(2);
      } finally {
        raw.close();
      }
    });

    it('takes a bump naming 1,000 tags (and drops the excess) with bounded work', async function () {
      const c = await pool.open();
      model.tags.set('/hot', { 'waymark-tags': 'tag-999' });
      await watch(c, '/hot', { snapshot: true });
      const tags = Array.from({ length: 1200 }, (_, i) => `tag-${i}`);
      const parsed = parseBumpMessage(JSON.stringify({ tags }), 2048);
      expect(parsed.ok && parsed.tags.length).to.equal(MAX_PATHS_PER_BUMP);
      expect(parsed.ok && parsed.dropped).to.equal(200);
      const t0 = Date.now();
      await wm.bump(JSON.stringify({ tags, id: 'thousand' }));
      await waitFor('the one tagged group', () => fetchedFor('thousand').length === 1);
      expect(Date.now() - t0).to.be.below(2000);
      await sleep(100);
      expect(fetchedFor('thousand')).to.have.length(1);
    });
  });

  describe('11.4 revalidation', function () {
    const FAST = { WAYMARK_MIN_REVALIDATE_MS: '100' };
    const revalidations = () => api.requests.filter((r) => r.headers['x-waymark'] === 'revalidate');

    it('re-asks conditionally every revalidateMs with X-Waymark: revalidate, publishes nothing unchanged and a change with bump: null; stops at unwatch', async function () {
      const h = await use(FAST);
      const c = await pool.open();
      const r = await c.call<WatchResult>(PROC_WATCH, ['/live', { token: 'a', snapshot: true, revalidateMs: 200 }]);
      await waitFor('three revalidations', () => revalidations().length >= 3, 3_000);
      for (const req of revalidations()) expect(req.headers['if-none-match']).to.equal('"v1"');
      expect(c.updates).to.have.length(0);
      model.version = 2;
      const [u] = await c.waitForUpdates(1, 3_000);
      expect(u).to.include({ watch: r.watch, status: 200, bump: null });
      expect(JSON.parse(u.body).version).to.equal(2);
      expect(await valueOf(h.waymark.metrics.revalidations, { result: 'not_modified' })).to.be.at.least(2);
      expect(await valueOf(h.waymark.metrics.revalidations, { result: 'changed' })).to.equal(1);
      await c.call(PROC_UNWATCH, [r.watch]);
      const n = revalidations().length;
      await sleep(600);
      expect(revalidations().length).to.be.at.most(n + 1); // one may have been in flight
    });

    it('shares one request among watches that would send the same one, at the shortest period; stops at session leave', async function () {
      const h = await use(FAST);
      const a = await pool.open();
      const b = await pool.open();
      await a.call(PROC_WATCH, ['/shared', { token: 'same', revalidateMs: 400 }]);
      await b.call(PROC_WATCH, ['/shared', { token: 'same', revalidateMs: 150 }]);
      await b.call(PROC_WATCH, ['/other', { token: 'same' }]);
      const t0 = Date.now();
      await sleep(1_050);
      const n = revalidations().length;
      const elapsed = Date.now() - t0;
      // one group at 150 ms (±10 %): about 7 in 1.05 s; two timers would make about 9, one per watch more
      expect(n, `${n} revalidations in ${elapsed} ms`).to.be.within(5, 8);
      expect(revalidations().every((r) => r.path === '/shared')).to.equal(true);
      expect(h.waymark.registry.size).to.equal(3);
      await b.close();
      await waitFor('b\'s watches dropped', () => h.waymark.registry.size === 1);
      const m = revalidations().length;
      await sleep(1_000);
      // a's own 400 ms period remains: 2-3 more, not 6-7
      expect(revalidations().length - m).to.be.within(1, 4);
      await a.close();
      await waitFor('a\'s watch dropped', () => h.waymark.registry.size === 0);
      const k = revalidations().length;
      await sleep(600);
      expect(revalidations().length).to.be.at.most(k + 1);
    });

    it('publishes nothing unchanged even with WAYMARK_PUSH_UNCHANGED=true, with validators (304) or without (same body)', async function () {
      const h = await use({ ...FAST, WAYMARK_PUSH_UNCHANGED: 'true' });
      const plain = model.handler;
      // /plain answers without validators: every revalidation is a full GET
      api.handler = (req, res) => {
        if (req.url !== '/plain') return plain(req, res);
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"plain":true}');
      };
      const c = await pool.open();
      await c.call(PROC_WATCH, ['/etag', { token: 'a', snapshot: true, revalidateMs: 150 }]);
      await c.call(PROC_WATCH, ['/plain', { token: 'a', snapshot: true, revalidateMs: 150 }]);
      await waitFor('revalidations of both', () => ['/etag', '/plain'].every((p) => revalidations().filter((r) => r.path === p).length >= 3), 3_000);
      expect(c.updates).to.have.length(0);
      expect(revalidations().filter((r) => r.path === '/plain').every((r) => r.headers['if-none-match'] === undefined)).to.equal(true);
      expect(await valueOf(h.waymark.metrics.revalidations, { result: 'unchanged' })).to.be.at.least(2);
      expect(await valueOf(h.waymark.metrics.revalidations, { result: 'not_modified' })).to.be.at.least(1);
    });

    it('refuses a revalidateMs below WAYMARK_MIN_REVALIDATE_MS or not a whole number; WAYMARK_REVALIDATE_MS is the default', async function () {
      const c = await pool.open();
      for (const bad of [1, 4999, -5, 5000.5, '6000', true, 86_400_001]) {
        const e = await c.callError(PROC_WATCH, ['/x', { token: 't', revalidateMs: bad }]);
        expect(e.error, String(bad)).to.equal(ERROR_URIS.invalid_argument);
        expect(String(e.args[0])).to.include('revalidateMs');
      }
      await c.call(PROC_WATCH, ['/x', { token: 't', revalidateMs: 0 }]);
      await c.call(PROC_WATCH, ['/y', { token: 't', revalidateMs: 5000 }]);
      expect(wm.waymark.registry.byPath('/y')[0].revalidateMs).to.equal(5000);
      const h = await use({ WAYMARK_MIN_REVALIDATE_MS: '100', WAYMARK_REVALIDATE_MS: '150' });
      const d = await pool.open();
      await d.call(PROC_WATCH, ['/default', { token: 'd' }]);
      expect(h.waymark.registry.byPath('/default')[0].revalidateMs).to.equal(150);
      await waitFor('a revalidation by default', () => revalidations().some((r) => r.path === '/default'), 2_000);
      expect(() => loadConfig({ ...componentEnv('c', 'http://127.0.0.1:1'), WAYMARK_REVALIDATE_MS: '1000' }))
        .to.throw(/WAYMARK_REVALIDATE_MS: must be 0 \(off\) or at least WAYMARK_MIN_REVALIDATE_MS/);
    });
  });

  describe('11.5 the end of a watch', function () {
    it('publishes a 410 with ended: true and removes the watch; a 404 keeps it', async function () {
      const c = await pool.open();
      const gone = await watch(c, '/gone');
      await watch(c, '/missing');
      model.status.set('/gone', 410);
      model.status.set('/missing', 404);
      await wm.bump(JSON.stringify({ paths: ['/gone', '/missing'], id: 'end' }));
      await c.waitForUpdates(2);
      const byPath = Object.fromEntries(c.updates.map((u) => [u.path, u])) as Record<string, Update>;
      expect(byPath['/gone']).to.include({ watch: gone.watch, status: 410, ended: true });
      expect(byPath['/missing'].status).to.equal(404);
      expect(byPath['/missing']).to.not.have.property('ended');
      expect(wm.waymark.registry.get(gone.watch)).to.equal(undefined);
      expect(wm.waymark.registry.size).to.equal(1);
      // later bumps cost nothing for the ended watch
      await wm.bump(JSON.stringify({ paths: ['/gone', '/missing'], id: 'after' }));
      await waitFor('the 404 refetched', () => fetchedFor('after').length === 1);
      await sleep(100);
      expect(fetchedFor('after')).to.deep.equal([`/missing t${c.id}`]);
      // a snapshot answered 410 ends the watch at once
      model.status.set('/gone-already', 410);
      const r = await watch(c, '/gone-already', { snapshot: true });
      expect(r.snapshot).to.include({ status: 410, ended: true });
      expect(wm.waymark.registry.get(r.watch)).to.equal(undefined);
    });
  });

  describe('11.5 in waymark/client', function () {
    it('hands the ended Update to the callback and forgets the watch (no re-watch after a reconnect)', async function () {
      const client = await connectWaymark({ url: testEnv.routerUrl, realm: testEnv.realm });
      try {
        const got: Update[] = [];
        await client.watch('/soon-gone', { token: 't', revalidateMs: 0 }, (u) => got.push(u));
        model.status.set('/soon-gone', 410);
        await wm.bump('/soon-gone');
        await waitFor('the ended Update', () => got.length === 1);
        expect(got[0]).to.include({ status: 410, ended: true });
        expect((client as unknown as { handles: Set<unknown> }).handles.size).to.equal(0);
      } finally {
        await client.close();
      }
    });
  });

  describe('11.6 trace context from the bump', function () {
    it('sends a valid traceparent on the fetches the bump causes and ignores an invalid one (the bump still counts)', async function () {
      const c = await pool.open();
      await watch(c, '/traced');
      const tp = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
      await wm.bump(JSON.stringify({ paths: ['/traced'], traceparent: tp, id: 'traced' }));
      await waitFor('the traced fetch', () => fetchedFor('traced').length === 1);
      expect(api.requests.find((r) => r.headers['x-waymark'] === 'traced')!.headers.traceparent).to.equal(tp);
      await wm.bump(JSON.stringify({ paths: ['/traced'], traceparent: `00-${'0'.repeat(32)}-00f067aa0ba902b7-01`, id: 'untraced' }));
      await waitFor('the untraced fetch', () => fetchedFor('untraced').length === 1);
      expect(api.requests.find((r) => r.headers['x-waymark'] === 'untraced')!.headers).to.not.have.property('traceparent');
    });

    it('validates W3C Trace Context', function () {
      const ok = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
      expect(parseTraceparent(ok)).to.equal(ok);
      expect(parseTraceparent('01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra')).to.equal('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00');
      for (const bad of [
        'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', // version ff
        `00-${'0'.repeat(32)}-00f067aa0ba902b7-01`, // trace id all zero
        `00-4bf92f3577b34da6a3ce929d0e0e4736-${'0'.repeat(16)}-01`, // parent id all zero
        '00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01', // upper case
        '00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01', // short
        '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x', // version 00 has exactly four fields
        '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx-evil: 1',
        7, null,
      ]) expect(parseTraceparent(bad), String(bad)).to.equal(undefined);
    });
  });

  describe('11.7 and the helpers: waymark bump, createBumper, POST /bump', function () {
    const cli = new CliRunner();
    afterEach(async function () { await cli.killAll(); });

    it('waymark bump [<path>...] --prefix P --tag T --id ID publishes one message with all of them, and refuses a bad one', async function () {
      const channel = randomChannel();
      const sub = new Redis(testEnv.redisUrl);
      const got: string[] = [];
      sub.on('message', (_ch, m: string) => got.push(m));
      await sub.subscribe(channel);
      try {
        const env = cleanEnv({ WAYMARK_REDIS_URL: testEnv.redisUrl, WAYMARK_BUMP_CHANNEL: channel });
        const p = cli.run(['bump', '/a', '--prefix', '/projects/7', '--tag', 'user:1', '--tag', 'org:7', '--id', 'cli-1'], env);
        expect(await p.exited).to.equal(0);
        expect(p.stderr).to.include('1 path, 1 prefix, 2 tags');
        const tagsOnly = cli.run(['bump', '--tag', 'user:2'], env);
        expect(await tagsOnly.exited).to.equal(0);
        await waitFor('two messages', () => got.length === 2);
        expect(JSON.parse(got[0])).to.deep.equal({ paths: ['/a'], prefixes: ['/projects/7'], tags: ['user:1', 'org:7'], id: 'cli-1' });
        expect(JSON.parse(got[1])).to.deep.equal({ tags: ['user:2'] });
        const bad = cli.run(['bump', '--tag', 'a,b'], env);
        expect(await bad.exited).to.equal(2);
        expect(bad.stderr).to.include('not a valid tag');
        const none = cli.run(['bump'], env);
        expect(await none.exited).to.equal(2);
      } finally {
        await sub.quit();
      }
    });

    it('createBumper and POST /bump take prefixes and tags', async function () {
      const secret = 's'.repeat(32);
      const channel = randomChannel();
      const withAdmin = await use({ WAYMARK_BUMP_CHANNEL: channel, WAYMARK_ADMIN_PORT: String(await freeAdminPort()), WAYMARK_BUMP_SECRET: secret });
      model.tags.set('/u/1', { 'waymark-tags': 'user:1' });
      const c = await pool.open();
      await watch(c, '/u/1', { snapshot: true });
      await watch(c, '/proj/7/tasks');
      const bumper = createBumper({ redisUrl: testEnv.redisUrl, channel });
      try {
        expect(await bumper.bump({ tags: ['user:1'] }, { id: 'helper-tag' })).to.equal(1);
        expect(await bumper.bump({ prefixes: ['/proj/7'] }, { id: 'helper-prefix' })).to.equal(1);
        await waitFor('both', () => fetchedFor('helper-tag').length === 1 && fetchedFor('helper-prefix').length === 1);
        // what Waymark would drop is refused before anything is published
        const refused = async (f: () => Promise<number>) => { try { await f(); return 'published'; } catch (err) { return (err as Error).message; } };
        expect(await refused(() => bumper.bump('/u/1', { id: 'x'.repeat(201) }))).to.match(/^bump refused: id must be/);
        expect(await refused(() => bumper.bump(Array.from({ length: 1001 }, (_, i) => `/p/${i}`)))).to.match(/^bump refused: more than 1000/);
        expect(await refused(() => bumper.bump({ paths: ['/ok', '/../admin'] }))).to.match(/^bump refused: /);
        expect(await refused(() => bumper.bump({ tags: ['a b'] }))).to.match(/^bump refused: /);
        expect(await refused(() => bumper.bump([`/${'a'.repeat(40_000)}`, `/${'b'.repeat(40_000)}`]))).to.match(/^bump refused: message is over 65536 bytes/);
      } finally {
        await bumper.close();
      }
      const { port } = withAdmin.waymark.adminAddress!;
      const res = await fetch(`http://127.0.0.1:${port}/bump`, {
        method: 'POST', headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
        body: JSON.stringify({ tags: ['user:1'], prefixes: ['/proj'], id: 'http-1' }),
      });
      expect(res.status).to.equal(202);
      expect(await res.json()).to.deep.equal({ paths: [], prefixes: ['/proj'], tags: ['user:1'], id: 'http-1' });
      await waitFor('both by HTTP', () => fetchedFor('http-1').length === 2);
      const bad = await fetch(`http://127.0.0.1:${port}/bump`, {
        method: 'POST', headers: { authorization: `Bearer ${secret}` }, body: JSON.stringify({ tags: ['a b'] }),
      });
      expect(bad.status).to.equal(400);
    });

    it('the demo API tags its answers and its edit bumps the profile\'s tag', async function () {
      const bumps: unknown[] = [];
      const demo = await startDemoApi({ bump: (t) => { bumps.push(t); } });
      try {
        const one = await fetch(`${demo.url}/users/1`, { headers: { authorization: 'Bearer alice' } });
        expect(one.headers.get('waymark-tags')).to.equal('user:1');
        const list = await fetch(`${demo.url}/users`, { headers: { authorization: 'Bearer bob' } });
        expect(list.headers.get('waymark-tags')).to.equal('user:1 user:2');
        const edit = await fetch(`${demo.url}/users/1`, { method: 'PUT', headers: { authorization: 'Bearer alice' }, body: '{"bio":"x"}' });
        expect(edit.status).to.equal(200);
        expect(bumps).to.deep.equal([{ tags: ['user:1'] }]);
      } finally {
        await demo.close();
      }
    });
  });

  describe('several instances', function () {
    it('a tag or prefix bump reaches every instance, each refetching what it holds, one Update per watch', async function () {
      const channel = randomChannel();
      const a = await use({ WAYMARK_BUMP_CHANNEL: channel });
      const b = await start({ WAYMARK_BUMP_CHANNEL: channel });
      model.tags.set('/doc', { 'waymark-tags': 'doc' });
      const clients = await Promise.all(Array.from({ length: 6 }, () => pool.open()));
      for (const c of clients) await watch(c, '/doc', { snapshot: true });
      const held = [a, b].map((h) => h.waymark.registry.size);
      expect(held[0] + held[1]).to.equal(6);
      expect(held.every((n) => n > 0), `watches spread: ${held.join('/')}`).to.equal(true);
      model.version = 2;
      // (the harness's own bump() publishes on its random channel, not the shared one)
      const bumper = createBumper({ redisUrl: testEnv.redisUrl, channel });
      expect(await bumper.bump({ tags: ['doc'] }, { id: 'everywhere' }), 'subscribers').to.equal(2);
      await bumper.close();
      for (const c of clients) await c.waitForUpdates(1);
      await sleep(200);
      expect(clients.map((c) => c.updates.length)).to.deep.equal([1, 1, 1, 1, 1, 1]);
      expect(fetchedFor('everywhere')).to.have.length(6);
    });
  });
});

/** A free port for the admin server (the harness turns it off by default). */
async function freeAdminPort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

describe('freshness indexes (pure)', function () {
  it('PathIndex: queries of a path, prefixes at segment boundaries, pruned when paths go', function () {
    const idx = new PathIndex();
    const paths = ['/', '/a', '/a?x=1', '/a/', '/a/b', '/a/b?c=d', '/ab', '/b/a'];
    for (const p of paths) idx.add(p);
    expect([...idx.withAnyQuery('/a')].sort()).to.deep.equal(['/a', '/a?x=1']);
    expect([...idx.prefix('/a')].sort()).to.deep.equal(['/a', '/a/', '/a/b', '/a/b?c=d', '/a?x=1']);
    expect([...idx.prefix('/a/')].sort()).to.deep.equal(['/a/', '/a/b', '/a/b?c=d']);
    expect([...idx.prefix('/a?x')]).to.deep.equal(['/a?x=1']);
    expect([...idx.prefix('/')].sort()).to.deep.equal([...paths].sort());
    expect([...idx.prefix('/zz')]).to.deep.equal([]);
    for (const p of paths) idx.remove(p);
    expect(idx.size).to.equal(0);
    expect((idx as unknown as { root: { children?: Map<string, unknown> } }).root.children).to.equal(undefined);
    // a second path on a node and back to one
    idx.add('/s?x=1');
    idx.add('/s?x=2');
    idx.add('/s/t');
    idx.remove('/s?x=1');
    expect([...idx.prefix('/s')].sort()).to.deep.equal(['/s/t', '/s?x=2']);
    idx.remove('/s/t');
    idx.remove('/s?x=2');
    expect((idx as unknown as { root: { children?: Map<string, unknown> } }).root.children).to.equal(undefined);
  });

  it('PathIndex agrees with a brute-force scan over 3,000 random adds and removes', function () {
    let seed = 7;
    const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n; };
    const pick = <T>(xs: T[]) => xs[rnd(xs.length)];
    const randomPath = () => {
      const segs = Array.from({ length: 1 + rnd(3) }, () => pick(['a', 'b', 'ab', '', '7']));
      return `/${segs.join('/')}${pick(['', '', '?x=1', '?y'])}`;
    };
    const idx = new PathIndex();
    const held = new Set<string>();
    const under = (p: string, prefix: string) => {
      if (prefix.includes('?')) return p.startsWith(prefix);
      if (prefix.endsWith('/')) return p.startsWith(prefix);
      const pathname = p.split('?')[0];
      return pathname === prefix || pathname.startsWith(`${prefix}/`);
    };
    for (let step = 0; step < 3000; step += 1) {
      const p = randomPath();
      if (rnd(3) === 0) { idx.remove(p); held.delete(p); } else { idx.add(p); held.add(p); }
      expect(idx.size).to.equal(held.size);
      const q = randomPath();
      const pathname = q.split('?')[0];
      expect([...idx.withAnyQuery(pathname)].sort(), `queries of ${pathname}`).to.deep.equal([...held].filter((h) => h.split('?')[0] === pathname).sort());
      for (const prefix of [pathname, q, pathname.endsWith('/') ? pathname : `${pathname}/`]) {
        expect([...new Set(idx.prefix(prefix))].sort(), `prefix ${prefix}`).to.deep.equal([...held].filter((h) => under(h, prefix)).sort());
      }
    }
    for (const p of held) idx.remove(p);
    expect(idx.size).to.equal(0);
    expect((idx as unknown as { root: { children?: Map<string, unknown> } }).root.children).to.equal(undefined);
  });

  it('matches a hostile bump (1,000 nested prefixes, 1,000 tags) over 10,000 paths in bounded work, each group once', function () {
    const registry = new WatchRegistry(100_000);
    for (let i = 0; i < 10_000; i += 1) registry.upsert(i, `/d${i % 10}/e${i % 100}/f${i}`, {});
    const cred = registry.byPath('/d0/e0/f0')[0].credKey;
    for (let i = 0; i < 10_000; i += 1) registry.tags.set(`/d${i % 10}/e${i % 100}/f${i}`, cred, ['all', `t${i % 1000}`]);
    const prefixes = ['/', ...Array.from({ length: 999 }, (_, i) => `/d${i % 10}/e${i % 100}`)];
    const tags = ['all', ...Array.from({ length: 999 }, (_, i) => `t${i}`)];
    const t0 = process.hrtime.bigint();
    const matched = [...registry.match({ paths: [], prefixes, tags })];
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    expect(matched).to.have.length(10_000);
    expect(new Set(matched.map(([p]) => p)).size).to.equal(10_000);
    expect(ms, `${ms.toFixed(1)} ms`).to.be.below(1_000);
  });

  it('TagIndex: O(tags) per set, forget clears, a tag reaches only its groups', function () {
    const idx = new TagIndex();
    for (let g = 0; g < 1000; g += 1) idx.set(`/p/${g}`, 'c', [`user:${g}`, 'all']);
    expect([...idx.groups('user:7')].map((x) => x.path)).to.deep.equal(['/p/7']);
    expect([...idx.groups('all')]).to.have.length(1000);
    idx.set('/p/7', 'c', ['user:8']);
    expect([...idx.groups('user:7')]).to.deep.equal([]);
    expect([...idx.groups('user:8')]).to.have.length(2);
    for (let g = 0; g < 1000; g += 1) idx.forget(`/p/${g}`, 'c');
    expect(idx.tagCount).to.equal(0);
    expect(idx.groupCount).to.equal(0);
  });

  it('parses combined bump messages: the cap counts paths, prefixes and tags together; bad entries and traceparents are dropped, the bump stays', function () {
    const tp = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    expect(parseBumpMessage(JSON.stringify({ paths: ['/a', '/a'], prefixes: ['/p', '//evil', '/p/../x'], tags: ['t', 'bad tag', 'T'], id: 'c', traceparent: tp }), 2048))
      .to.deep.equal({ ok: true, id: 'c', paths: ['/a'], prefixes: ['/p'], tags: ['t', 'T'], dropped: 3, traceparent: tp, invalid: 'prefix: path must not contain "//"' });
    const capped = parseBumpMessage(JSON.stringify({
      paths: Array.from({ length: 400 }, (_, i) => `/p${i}`), prefixes: Array.from({ length: 400 }, (_, i) => `/x${i}`), tags: Array.from({ length: 400 }, (_, i) => `t${i}`),
    }), 2048);
    expect(capped.ok && [capped.paths.length, capped.prefixes.length, capped.tags.length, capped.dropped]).to.deep.equal([400, 400, 200, 200]);
    const untraced = parseBumpMessage(JSON.stringify({ tags: ['t'], traceparent: 'ff-bad' }), 2048);
    expect(untraced).to.include({ ok: true }).and.not.have.property('traceparent');
    expect(parseBumpMessage('{"tags": "t"}', 2048)).to.include({ ok: false });
    expect(parseBumpMessage('{"prefixes": ["nope"], "tags": [""]}', 2048)).to.include({ ok: false });
  });

  it('parseTags: commas and/or spaces, visible ASCII without comma, the first N kept in order', function () {
    expect(parseTags(['a, b c,,d', ' e\tf'], 64)).to.deep.equal({ tags: ['a', 'b', 'c', 'd', 'e', 'f'], dropped: 0 });
    expect(parseTags(['a b c a'], 2)).to.deep.equal({ tags: ['a', 'b'], dropped: 1 });
    expect(parseTags(['ok bad\x01tag caf\u00e9 ' + 'x'.repeat(257)], 64)).to.deep.equal({ tags: ['ok'], dropped: 3 });
  });

  it('Revalidator: one heap for all groups, the shortest period wins, nothing left after the watches go', async function () {
    const due: string[] = [];
    const r = new Revalidator({ onDue: (path) => due.push(path), random: () => 0.5 });
    const registry = new WatchRegistry(10_000);
    registry.observe(r);
    for (let i = 0; i < 300; i += 1) registry.upsert(i, `/g/${i % 3}`, {}, i % 2 === 0 ? 60 : 200);
    expect(r.size).to.equal(3);
    expect(r.periodOf('/g/0', registry.byPath('/g/0')[0].credKey)).to.equal(60);
    await sleep(250);
    // three groups at 60 ms: about 4 turns each
    expect(due.length).to.be.within(6, 15);
    for (let i = 0; i < 300; i += 1) registry.dropSession(i);
    expect(r.size).to.equal(0);
    const n = due.length;
    await sleep(150);
    expect(due.length).to.equal(n);
    r.stop();
  });
});
