// The API of the benchmark: ~1 KiB of JSON per token, counting requests per token.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

let version = 'v0';
let total = 0;
let perToken = new Map<string, number>();
let notModified = 0;
const pad = 'x'.repeat(880);

const server = createServer((req, res) => {
  const url = req.url ?? '/';
  if (url.startsWith('/__control/')) {
    const u = new URL(url, 'http://bench.invalid');
    if (u.pathname === '/__control/version') version = u.searchParams.get('v') ?? version;
    if (u.pathname === '/__control/reset') { total = 0; perToken = new Map(); notModified = 0; }
    const counts = [...perToken.values()];
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({
      version, total, tokens: perToken.size, maxPerToken: counts.length ? Math.max(...counts) : 0, notModified,
    }));
    return;
  }
  const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
  if (!token) { res.writeHead(401).end(); return; }
  total += 1;
  perToken.set(token, (perToken.get(token) ?? 0) + 1);
  // /pub/...: the same answer for every credential, marked shareable (contract section 12)
  if (url.startsWith('/pub/')) {
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'public, max-age=60' }).end(JSON.stringify({ path: url, version, pad }));
    return;
  }
  const extra: Record<string, string> = {};
  // g: tagged paths, so one tag bump reaches all of them; h: validators, so revalidations can be 304
  if (url.startsWith('/tg/')) extra['waymark-tags'] = `tg-all tg-${url.slice(4)}`;
  if (url.startsWith('/rv/')) {
    extra.etag = `"${version}"`;
    if (req.headers['if-none-match'] === extra.etag) {
      notModified += 1;
      res.writeHead(304, extra).end();
      return;
    }
  }
  res.writeHead(200, { 'content-type': 'application/json', ...extra }).end(JSON.stringify({ path: url, token, version, pad }));
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => {
  process.send!({ ready: true, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
});
process.on('SIGTERM', () => { server.closeAllConnections(); server.close(() => process.exit(0)); });
