/**
 * A tiny API in a process of its own, so a fault spec can SIGSTOP and SIGCONT it (a hung API).
 * Prints `PORT <n>` once listening. Control (never counted): `POST /__set?path=/x&version=2`,
 * `GET /__hits` (requests that carried X-Waymark, i.e. Waymark's fetches).
 */
import { createServer } from 'node:http';

const versions = new Map<string, number>();
let hits = 0;

const server = createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://x');
  if (url.pathname === '/__set') {
    versions.set(url.searchParams.get('path') ?? '/', Number(url.searchParams.get('version')));
    res.writeHead(204).end();
    return;
  }
  if (url.pathname === '/__hits') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ hits }));
    return;
  }
  if (req.headers['x-waymark'] !== undefined) hits += 1;
  const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
  const path = req.url ?? '/';
  res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ path, token, version: versions.get(path) ?? 1 }));
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`PORT ${(server.address() as { port: number }).port}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
// Never outlive the spec that started it (a crashed mocha leaves no API behind).
const parent = process.ppid;
setInterval(() => { if (process.ppid !== parent) process.exit(0); }, 1_000).unref();
