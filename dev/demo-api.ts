import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * The demo API of `waymark dev` and docker compose: `/users/:id` answers per bearer token, so
 * alice and bob see different data on the same path, and 401 without a known token; `/users`
 * lists them. Responses name the profiles they show in `Waymark-Tags: user:<id>`, and editing a
 * profile (PUT/PATCH/POST) bumps that tag, which is all a backend has to do for live updates.
 * Every answer carries a strong ETag of its exact body; an edit with `If-Match` that no longer
 * matches gets 412 (RFC 9110 13.1.1), so two tabs cannot overwrite each other unseen. A profile's
 * `updatedAt` (ms since the epoch) is when it was last edited, so every page can show how long
 * after the edit it updated.
 * With `page`, it also serves the browser demo (dev/demo/index.html) at `/`, the client bundle
 * it imports, and `/config.json` telling the page where the router is.
 */
export interface DemoApiOptions {
  host?: string;
  port?: number;
  /**
   * called after every edit with what changed: the profile's tag (`user:<id>`), which every
   * response showing that profile declares in `Waymark-Tags`; the CLI wires it to a Redis PUBLISH
   */
  bump?: (target: { tags: string[] }) => Promise<void> | void;
  /** serve the browser demo page; the router URL is what the browser connects to */
  page?: DemoPageOptions;
}

export interface DemoPageOptions {
  routerUrl: string;
  realm: string;
}

export interface DemoApi {
  readonly url: string;
  readonly server: Server;
  close(): Promise<void>;
}

interface Profile {
  id: number;
  name: string;
  bio: string;
  email: string;
  version: number;
  views: number;
  /** ms since the epoch of the last edit */
  updatedAt: number;
}

const TOKENS: Record<string, { viewer: string; userId: number }> = {
  alice: { viewer: 'alice', userId: 1 },
  bob: { viewer: 'bob', userId: 2 },
};

function initialProfiles(): Map<number, Profile> {
  const now = Date.now();
  return new Map([
    [1, { id: 1, name: 'Alice', bio: 'Writes the API.', email: 'alice@example.test', version: 1, views: 0, updatedAt: now }],
    [2, { id: 2, name: 'Bob', bio: 'Watches the API.', email: 'bob@example.test', version: 1, views: 0, updatedAt: now }],
  ]);
}

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers }).end(JSON.stringify(body));
}

/** The profile as `viewer` sees it: the e-mail only for its owner. */
function representation(profile: Profile, viewer: string, own: boolean): string {
  const { email, ...visible } = profile;
  return JSON.stringify({ ...visible, viewer, ...(own ? { email } : {}) });
}

/** A strong validator: the same exact bytes, the same tag (RFC 9110 8.8.3). */
function etagOf(body: string): string {
  return `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`;
}

/** If-Match against the current tag: `*` or any listed tag, compared strongly (RFC 9110 13.1.1). */
function ifMatchFails(header: string | undefined, current: string): boolean {
  if (header === undefined) return false;
  const tags = header.split(',').map((t) => t.trim());
  return !tags.includes('*') && !tags.includes(current);
}

// Relative to dist/dev/demo-api.js: the page stays an HTML file, the bundle is `npm run build`'s.
const PAGE_FILES: Record<string, { file: URL; type: string }> = {
  '/': { file: new URL('../../dev/demo/index.html', import.meta.url), type: 'text/html; charset=utf-8' },
  '/waymark-client.js': { file: new URL('../browser/waymark-client.js', import.meta.url), type: 'text/javascript; charset=utf-8' },
  '/waymark-client.js.map': { file: new URL('../browser/waymark-client.js.map', import.meta.url), type: 'application/json' },
};

/** The page's files are read per request, so a rebuilt bundle is served without a restart. */
async function sendPageFile(res: ServerResponse, pathname: string): Promise<void> {
  const { file, type } = PAGE_FILES[pathname];
  let body: Buffer;
  try {
    body = await readFile(file);
  } catch {
    return send(res, 404, { error: `${pathname} is not built: run 'npm run build' in the waymark checkout` });
  }
  res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' }).end(body);
}

function readJson(req: IncomingMessage, limit = 16 * 1024): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit) { reject(new Error('body too large')); req.destroy(); } else chunks.push(c);
    });
    req.on('end', () => {
      try {
        const v = chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : {};
        resolve(typeof v === 'object' && v !== null && !Array.isArray(v) ? v : {});
      } catch (err) {
        reject(err);
      }
    });
    req.on('error', reject);
  });
}

export function createDemoApiHandler(opts: Pick<DemoApiOptions, 'bump' | 'page'> = {}) {
  const profiles = initialProfiles();
  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://demo.invalid');
    if (url.pathname === '/healthz') return send(res, 200, { ok: true });
    if (opts.page && req.method === 'GET') {
      if (url.pathname === '/config.json') return send(res, 200, { routerUrl: opts.page.routerUrl, realm: opts.page.realm });
      if (url.pathname === '/index.html') url.pathname = '/';
      if (Object.hasOwn(PAGE_FILES, url.pathname)) return sendPageFile(res, url.pathname);
    }
    if (url.pathname === '/users' && req.method === 'GET') {
      // A list shows every profile, so it depends on each: one edit's tag bump refreshes it too.
      if (!/^Bearer (alice|bob)$/.test(req.headers.authorization ?? '')) return send(res, 401, { error: 'a bearer token is required: try alice or bob' });
      res.setHeader('waymark-tags', [...profiles.keys()].map((id) => `user:${id}`).join(' '));
      return send(res, 200, [...profiles.values()].map(({ id, name }) => ({ id, name })));
    }
    const match = /^\/users\/(\d+)$/.exec(url.pathname);
    if (!match) return send(res, 404, { error: 'not found' });
    const auth = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
    const who = auth ? TOKENS[auth[1]] : undefined;
    if (!who) return send(res, 401, { error: 'a bearer token is required: try alice or bob' });
    const profile = profiles.get(Number(match[1]));
    if (!profile) return send(res, 404, { error: 'no such user' });
    const own = who.userId === profile.id;
    if (req.method === 'GET') {
      // The side effect Waymark's refetches must not cause: they carry X-Waymark.
      if (!req.headers['x-waymark']) profile.views += 1;
      const body = representation(profile, who.viewer, own);
      res.writeHead(200, {
        'content-type': 'application/json', 'cache-control': 'no-store', etag: etagOf(body), vary: 'authorization', 'waymark-tags': `user:${profile.id}`,
      }).end(body);
      return;
    }
    if (req.method === 'PUT' || req.method === 'PATCH' || req.method === 'POST') {
      if (!own) return send(res, 403, { error: `${who.viewer} may only edit their own profile` });
      let body: Record<string, unknown>;
      try {
        body = await readJson(req);
      } catch {
        return send(res, 400, { error: 'body must be a JSON object' });
      }
      const current = etagOf(representation(profile, who.viewer, own));
      if (ifMatchFails(req.headers['if-match'], current)) {
        return send(res, 412, { error: 'the profile changed meanwhile', version: profile.version }, { etag: current });
      }
      if (typeof body.name === 'string') profile.name = body.name.slice(0, 200);
      if (typeof body.bio === 'string') profile.bio = body.bio.slice(0, 2000);
      profile.version += 1;
      profile.updatedAt = Date.now();
      // The edit is saved either way; a bump that fails (Redis down) is said, not a 500 for a saved edit.
      let bumpError: string | undefined;
      try {
        // The backend names what changed, not who shows it: every watch on this profile or a list of it.
        await opts.bump?.({ tags: [`user:${profile.id}`] });
      } catch (err) {
        bumpError = `saved, but the bump failed (${(err as Error).message}): watchers were not told`;
      }
      return send(res, 200, { ok: true, version: profile.version, ...(bumpError ? { bumped: false, bumpError } : {}) }, { etag: etagOf(representation(profile, who.viewer, own)) });
    }
    res.setHeader('allow', 'GET, PUT, PATCH, POST');
    return send(res, 405, { error: 'method not allowed' });
  };
}

export async function startDemoApi(opts: DemoApiOptions = {}): Promise<DemoApi> {
  const handler = createDemoApiHandler(opts);
  const server = createServer((req, res) => {
    handler(req, res).catch(() => { if (!res.headersSent) send(res, 500, { error: 'internal error' }); });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => { server.off('error', reject); resolve(); });
  });
  const { port } = server.address() as AddressInfo;
  const host = opts.host && opts.host !== '0.0.0.0' ? opts.host : '127.0.0.1';
  let closing: Promise<void> | undefined;
  return {
    url: `http://${host}:${port}`,
    server,
    close() {
      closing ??= new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections(); });
      return closing;
    },
  };
}
