import { expect } from 'chai';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { UndiciFetcher } from '../lib/engine/fetcher.js';

/** The fetch layer alone, against a real HTTP server: the deadline covers every phase. */
describe('undici fetcher', function () {
  let server: Server;
  let fetcher: UndiciFetcher;
  const timeoutMs = 300;

  before(async function () {
    server = createServer((req, res) => {
      if (req.url === '/ok') {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
      } else if (req.url === '/slow-headers') {
        setTimeout(() => res.writeHead(200).end('late'), timeoutMs * 3);
      } else if (req.url === '/trickle') {
        // headers at once, then a byte every 100 ms: each chunk is inside any idle timeout,
        // the whole body is not inside the deadline
        res.writeHead(200, { 'content-type': 'text/plain' });
        let n = 0;
        const t = setInterval(() => {
          if (++n > 20 || res.destroyed) { clearInterval(t); res.end(); return; }
          res.write('x');
        }, 100);
        res.on('close', () => clearInterval(t));
      } else if (req.url?.startsWith('/retry-after?')) {
        const value = decodeURIComponent(req.url.slice('/retry-after?'.length));
        res.writeHead(429, { date: 'Sun, 06 Nov 1994 08:49:37 GMT', 'retry-after': value }).end();
      } else if (req.url === '/big-chunked') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write(Buffer.alloc(600, 'a'));
        res.end(Buffer.alloc(600, 'b'));
      }
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    fetcher = new UndiciFetcher({
      apiUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
      responseHeaders: ['content-type'], maxBodyBytes: 1000, timeoutMs, connections: 2,
    });
  });
  after(async function () {
    await fetcher.close();
    server.closeAllConnections();
    server.close();
  });

  const get = (path: string) => fetcher.fetch({ path, headers: {}, reason: 'spec' });

  it('answers timeout at the deadline when headers are late', async function () {
    const t0 = Date.now();
    const r = await get('/slow-headers');
    const took = Date.now() - t0;
    expect(r.error?.code).to.equal('timeout');
    expect(took).to.be.within(timeoutMs - 10, timeoutMs + 250);
  });

  it('answers timeout when the body is still trickling at the deadline', async function () {
    const t0 = Date.now();
    const r = await get('/trickle');
    expect(r.error?.code).to.equal('timeout');
    expect(Date.now() - t0).to.be.within(timeoutMs - 10, timeoutMs + 250);
  });

  it('answers too_large for a chunked body over the cap, without the body', async function () {
    const r = await get('/big-chunked');
    expect(r.status).to.equal(200);
    expect(r.error?.code).to.equal('too_large');
    expect(r.body).to.equal('');
  });

  it('reads Retry-After as delay-seconds or an HTTP-date only (RFC 9110 10.2.3), ignoring anything else', async function () {
    // against the response's Date, Sun, 06 Nov 1994 08:49:37 GMT
    const cases: Array<[string, number | undefined]> = [
      ['120', 120_000], [' 2 ', 2_000], ['0', 0],
      ['Sun, 06 Nov 1994 08:50:37 GMT', 60_000], ['Sunday, 06-Nov-94 08:49:47 GMT', 10_000], ['Sun Nov  6 08:49:57 1994', 20_000],
      ['Sun, 06 Nov 1994 08:40:37 GMT', 0],
      // Date.parse reads these as dates (years 2030, 2001): a garbage value must not pause anything
      ['soon 2030', undefined], ['2030-01-01', undefined], ['-5', undefined], ['1.5', undefined], ['2, 3', undefined], ['+5', undefined],
    ];
    for (const [value, ms] of cases) {
      const r = await fetcher.fetch({ path: `/retry-after?${encodeURIComponent(value)}`, headers: {}, reason: 'spec' });
      expect(r.status, value).to.equal(429);
      expect(r.retryAfterMs, value).to.equal(ms);
    }
  });

  it('keeps serving after timeouts: both connections come back', async function () {
    const rs = await Promise.all([get('/ok'), get('/ok'), get('/ok')]);
    for (const r of rs) expect(r).to.deep.include({ status: 200, body: '{"ok":true}', encoding: 'utf8' });
  });
});
